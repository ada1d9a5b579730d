//! Handoff runs for the benchmark: `migrate` scenarios ([`crate::migrate`]) and the figures the
//! benchmark takes from each run's report and its handoff record ([`crate::steps`]).
//!
//! Two uses. **Side by side** (`--mode none`, the handoff only): the switch is directed 20 % into
//! the workload, so one run gives port 1 (direct, virtio-blk) and port 2 (forwarded over the ring
//! through the peer) on the same QEMU processes, one after the other; without a migration in the
//! run, port 2's figures are the forwarded path's alone. **Repeated handoffs** (live and save,
//! alternating): the blackout, each phase, and the migration's downtime and total time.

use std::path::PathBuf;
use std::time::Duration;

use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};

use crate::migrate::{self, DestinationFault, MigrateConfig, MigrateError, Mode, Switch};
use crate::report::{CompletionTimeline, MigrateReport, PortStatsReport};
use crate::setup::{AccelChoice, BackendKind};
use crate::shm::SHM_DIR;
use crate::steps::{self, HandoffRecord, Span};

/// Where the disk lives in a handoff run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disk {
    /// QEMU `null-co`: the I/O path only, nothing stored or verified.
    Null,
    /// A raw image file on tmpfs ([`SHM_DIR`], where the ring lives too), verified on the host
    /// after the run.
    Tmpfs,
}

impl Disk {
    /// Name in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Null => "null-co",
            Self::Tmpfs => "tmpfs-file",
        }
    }
}

/// What is shared by every run of a benchmark.
#[derive(Debug, Clone)]
pub struct Common {
    /// Accelerator.
    pub accel: AccelChoice,
    /// Guest kernel.
    pub kernel: Option<PathBuf>,
    /// QEMU binary.
    pub qemu: PathBuf,
    /// Hard timeout of one run.
    pub timeout: Duration,
}

/// One handoff run to make.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// Live, save or none.
    pub mode: Mode,
    /// The disk.
    pub disk: Disk,
    /// Queue depth.
    pub qd: u16,
    /// Distinct blocks.
    pub blocks: u64,
    /// Passes.
    pub passes: u32,
    /// Who directs the switch, and when.
    pub switch: Switch,
    /// Schedule seed.
    pub seed: u64,
    /// End the cycle with a failback (the disk back to the owner, the ring closed).
    pub failback: bool,
}

impl Plan {
    /// Writes in the workload.
    pub fn writes(&self) -> u64 {
        self.blocks.saturating_mul(u64::from(self.passes))
    }
}

/// The spans the bench reports: those of [`steps::SPANS`] with a bench name, in that order.
pub fn bench_spans() -> impl Iterator<Item = &'static Span> {
    let spans: &'static [Span] = &steps::SPANS;
    spans.iter().filter(|s| s.bench.is_some())
}

/// The consecutive phases from [`steps::Step::Directed`] to [`steps::Step::FirstCompletion`]:
/// each starts where the one before ends (the progress line and the plot's bands).
pub const CHAIN: [Span; 5] = [
    steps::DIRECTED_TO_DRAINED,
    steps::DRAINED_TO_RELEASED,
    steps::RELEASED_TO_ATTACHED,
    steps::PEER_INIT,
    steps::READY_TO_FIRST_COMPLETION,
];

/// What `span` covers, in a few words (empty when its steps' labels say it all).
fn gloss(span: &Span) -> &'static str {
    match *span {
        steps::DIRECTED_TO_DRAINED => "port 1 drains",
        steps::DRAINED_TO_RELEASED => "the device's reset, the owner's frames",
        steps::RELEASED_TO_ATTACHED => "device_add in the peer",
        steps::DRAINED_TO_DRIVE_RELEASED => "QEMU's hot-unplug, off the blackout",
        steps::DRIVE_RELEASED_TO_READY => "device_add, the peer's virtio init",
        steps::SHIM_REACTION => "DEVICE_DELETED → the shim acts",
        steps::TO_ATTACHED => "the shim saw DEVICE_DELETED → disk-attached",
        steps::PEER_INIT => "disk-attached → peer-ready: the peer's virtio init",
        steps::READY_TO_FIRST_COMPLETION => "first forwarded",
        steps::HANDOFF => "the handoff: redirect → forwarding",
        steps::MIGRATION_SETUP => "set-up: forwarding → migrate issued",
        steps::MIGRATION => "migrate issued → the owner runs again",
        _ => "",
    }
}

/// A span's name for people, from its steps' labels ([`steps::Step::label`]) and what it covers:
/// e.g. `drive released → ready (device_add, the peer's virtio init)`. The table's rows and the
/// plot's bands are named this way.
pub fn span_label(span: &Span) -> String {
    match gloss(span) {
        "" => format!("{} → {}", span.from, span.to),
        g => format!("{} → {} ({g})", span.from, span.to),
    }
}

/// The handoff's phases of one run, in ms, from the run's [`HandoffRecord`]: one value per span
/// of [`bench_spans`], serialized (a JSON object) under the span's bench name, in that order.
/// The first seven are the `migrate` report's `phases` under the bench's shorter names (e.g.
/// `drained_to_deleted_ms` is the report's `drained_to_device_deleted_ms`); the last three lie
/// inside [`steps::DRIVE_RELEASED_TO_READY`].
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PhaseTimes([Option<f64>; steps::SPANS.len()]);

impl PhaseTimes {
    /// The phases of `record` (all null without one).
    pub fn from_record(record: Option<&HandoffRecord>) -> Self {
        Self(steps::SPANS.map(|s| s.bench.and(record).and_then(|r| r.span_ms(&s))))
    }

    /// The duration of `span` in ms (`None`: not reached, or not a bench span).
    pub fn get(&self, span: &Span) -> Option<f64> {
        span.bench?;
        let i = steps::SPANS.iter().position(|s| s == span)?;
        self.0.get(i).copied().flatten()
    }

    /// `(bench name, value)` pairs, in [`bench_spans`] order.
    pub fn named(&self) -> impl Iterator<Item = (&'static str, Option<f64>)> + '_ {
        bench_spans().filter_map(|s| Some((s.bench?, self.get(s))))
    }
}

impl Serialize for PhaseTimes {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut m = serializer.serialize_map(Some(bench_spans().count()))?;
        for (name, v) in self.named() {
            m.serialize_entry(name, &v)?;
        }
        m.end()
    }
}

/// The figures of one handoff run.
#[derive(Debug, Clone, Serialize)]
pub struct HandoffRun {
    /// `live`, `save` or `none`.
    pub mode: String,
    /// `null-co` or `tmpfs-file`.
    pub disk: String,
    /// Queue depth.
    pub qd: u16,
    /// Writes in the workload.
    pub writes: u64,
    /// The run's verdict (the `migrate` report's `ok`).
    pub ok: bool,
    /// Why not.
    pub failures: Vec<String>,
    /// The handoff's blackout: from the owner's last completion on port 1 to its first one on
    /// port 2, in ms.
    pub blackout_ms: Option<f64>,
    /// How `blackout_ms` was obtained: the owner's `BATON switch kind=handoff` line, else
    /// [`handoff_blackout`].
    pub blackout_from: &'static str,
    /// The failback's blackout: the owner's longest completion gap from `failback` to its first
    /// port-1 completion, in ms (the `migrate` report's `failback[0].blackout_ms`; null without
    /// a failback).
    pub failback_blackout_ms: Option<f64>,
    /// The longest gap between two completions anywhere in the run (the guest's `max_gap_us`):
    /// the handoff's, unless the host stalled the guest elsewhere.
    pub max_gap_ms: Option<f64>,
    /// Phases.
    pub phases: PhaseTimes,
    /// QEMU's migration `downtime`.
    pub migration_downtime_ms: Option<u64>,
    /// QEMU's migration `total-time`.
    pub migration_total_ms: Option<u64>,
    /// Port 1 (direct) figures.
    pub port1: Option<PortStatsReport>,
    /// Port 2 (forwarded) figures.
    pub port2: Option<PortStatsReport>,
    /// Requests held at port 2 while port 1 drained.
    pub queued_at_switch: Option<u64>,
    /// Host CPU time of the QEMUs in the direct and the forwarded phase (the `migrate` report's
    /// `cpu_time`).
    pub cpu_time: Option<crate::cputime::CpuTimeReport>,
    /// Wall time of the run, in ms.
    pub elapsed_ms: f64,
}

/// One run's figures and its full report (kept for the plot).
#[derive(Debug)]
pub struct Outcome {
    /// The figures.
    pub run: HandoffRun,
    /// The `migrate` report.
    pub report: MigrateReport,
}

/// Runs one handoff scenario.
pub fn run(plan: &Plan, common: &Common) -> Result<Outcome, MigrateError> {
    // A tmpfs image lives in a directory this guard owns (`migrate` never removes a directory it
    // was given).
    let tmpfs = match plan.disk {
        Disk::Tmpfs => Some(
            tempfile::Builder::new()
                .prefix("baton-bench-")
                .tempdir_in(SHM_DIR)
                .map_err(|e| MigrateError::Config(format!("cannot use {SHM_DIR}: {e}")))?,
        ),
        Disk::Null => None,
    };
    let cfg = MigrateConfig {
        mode: plan.mode,
        backend: match plan.disk {
            Disk::Null => BackendKind::Null,
            Disk::Tmpfs => BackendKind::File,
        },
        accel: common.accel,
        blocks: plan.blocks,
        passes: plan.passes,
        qd: plan.qd,
        seed: plan.seed,
        switch: plan.switch,
        failback: plan.failback,
        failback_after_ms: 0,
        failback_request_at: 0,
        cycles: 1,
        peer_fault: baton_core::cmdline::Fault::None,
        destination_fault: DestinationFault::None,
        inject: None,
        cross_host: false,
        guest_memory_mib: crate::setup::GUEST_MEMORY_MIB,
        on_io_error: crate::migrate::IoErrorPolicy::Fail,
        timeout: common.timeout,
        kernel: common.kernel.clone(),
        qemu: common.qemu.clone(),
        workdir: tmpfs.as_ref().map(|d| d.path().to_path_buf()),
        keep: false,
        progress: false,
    };
    let outcome = migrate::migrate(&cfg)?;
    let report = outcome.report;
    drop(outcome.workdir);
    drop(tmpfs);
    let run = figures(plan, &report, outcome.handoffs.first());
    Ok(Outcome { run, report })
}

/// The figures of one run: its report's, and its handoff's phases from the record.
fn figures(plan: &Plan, r: &MigrateReport, record: Option<&HandoffRecord>) -> HandoffRun {
    let port = |n: u8| r.port_stats.iter().find(|p| p.port == n).copied();
    let max_gap_ms = r.blackout_ms;
    let switch_line = r.cycles.first().and_then(|c| c.handoff_blackout_ms);
    let (blackout_ms, blackout_from) = match (switch_line, &r.completion_timeline, r.port1_requests)
    {
        (Some(ms), _, _) => (
            Some(ms),
            "guest: the owner's `BATON switch kind=handoff` gap",
        ),
        (None, Some(t), Some(p1)) => match handoff_blackout(t, p1, max_gap_ms) {
            Some((ms, from)) => (Some(ms), from),
            None => (None, "unavailable: no port-2 completion in the timeline"),
        },
        _ => (None, "unavailable: no completion timeline or port-1 count"),
    };
    HandoffRun {
        mode: plan.mode.as_str().into(),
        disk: plan.disk.as_str().into(),
        qd: plan.qd,
        writes: plan.writes(),
        ok: r.ok,
        failures: r.failures.clone(),
        blackout_ms,
        blackout_from,
        failback_blackout_ms: r.failback.first().and_then(|f| f.blackout_ms),
        max_gap_ms,
        phases: PhaseTimes::from_record(record),
        migration_downtime_ms: r.migration_downtime_ms,
        migration_total_ms: r.migration_total_ms,
        port1: port(1),
        port2: port(2),
        queued_at_switch: r.requests_queued_at_switch,
        cpu_time: r.cpu_time.clone(),
        elapsed_ms: r.elapsed_ms,
    }
}

/// Bins of the last port-1 completion and of the first port-2 completion: port 1 completes
/// `port1` requests, all before any port-2 completion (I2), so the last port-1 completion is in
/// the bin where the running count reaches `port1`, and the first forwarded one in the next
/// non-empty bin (the same bin when the gap is shorter than a bin).
pub fn switch_bins(t: &CompletionTimeline, port1: u64) -> Option<(usize, usize)> {
    if port1 == 0 {
        return None;
    }
    let mut cum = 0u64;
    for (i, &c) in t.counts.iter().enumerate() {
        cum += u64::from(c);
        if cum > port1 {
            return Some((i, i));
        }
        if cum == port1 {
            let next = t.counts.iter().skip(i + 1).position(|&c| c > 0)?;
            return Some((i, i + 1 + next));
        }
    }
    None
}

/// The handoff's blackout in ms, and how it was obtained. From the timeline it is known to a bin
/// either way: `(first port-2 bin − last port-1 bin)` bins, ± 1. When the guest's own longest gap
/// (`max_gap_ms`, µs-exact) lies in that bracket, it is the handoff's and is used; otherwise the
/// longest gap was elsewhere (the host stalled the guest) and the bin estimate is used.
pub fn handoff_blackout(
    t: &CompletionTimeline,
    port1: u64,
    max_gap_ms: Option<f64>,
) -> Option<(f64, &'static str)> {
    let (last1, first2) = switch_bins(t, port1)?;
    let bin_ms = t.bin_us as f64 / 1000.0;
    let bins = (first2 - last1) as f64;
    let (lo, hi) = ((bins - 1.0).max(0.0) * bin_ms, (bins + 1.0) * bin_ms);
    match max_gap_ms {
        Some(g) if g >= lo && g <= hi => Some((g, "guest: longest gap between completions")),
        _ => Some((
            bins * bin_ms,
            "timeline: last port-1 bin to first port-2 bin (±1 bin)",
        )),
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    fn tl(counts: &[u16]) -> CompletionTimeline {
        CompletionTimeline {
            start_us: 0,
            bin_us: 1000,
            counts: counts.to_vec(),
        }
    }

    /// A record with every step, 10 ms apart.
    pub(in crate::bench) fn full_record() -> HandoffRecord {
        use crate::steps::{Direction, Step};
        use std::time::{Duration, Instant};
        let t = Instant::now();
        let mut r = HandoffRecord::new(Direction::OWNER_TO_PEER);
        for (i, s) in Step::ALL.iter().enumerate() {
            r.record(*s, t + Duration::from_millis(10 * i as u64));
        }
        r
    }

    /// The bench's phases carry exactly the spans the table gives a bench name, in its order,
    /// each with its value.
    #[test]
    fn phase_names_are_the_span_tables_bench_names() {
        let p = PhaseTimes::from_record(Some(&full_record()));
        let named: Vec<&str> = p.named().map(|(n, _)| n).collect();
        let table: Vec<&str> = steps::SPANS.iter().filter_map(|s| s.bench).collect();
        assert_eq!(named, table);
        let v = serde_json::to_value(p).unwrap();
        let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        let mut sorted = table.clone();
        keys.sort_unstable();
        sorted.sort_unstable();
        assert_eq!(keys, sorted);
        // Written in the table's order.
        let text = serde_json::to_string(&p).unwrap();
        let at: Vec<usize> = table
            .iter()
            .map(|n| text.find(&format!("\"{n}\"")).unwrap())
            .collect();
        assert!(at.windows(2).all(|w| w[0] < w[1]), "{text}");
        for s in bench_spans() {
            let n = s.bench.unwrap();
            assert_eq!(v[n].as_f64(), p.get(s), "{n}");
            assert!(p.get(s).is_some(), "{n}");
        }
        // Not reached: null, not absent.
        let v = serde_json::to_value(PhaseTimes::default()).unwrap();
        assert_eq!(v.as_object().unwrap().len(), table.len());
        assert!(v["handoff_ms"].is_null());
        // A span without a bench name has no bench value.
        assert_eq!(p.get(&steps::SAVE), None);
    }

    #[test]
    fn chain_is_consecutive_and_labels_use_step_names() {
        for w in CHAIN.windows(2) {
            assert_eq!(w[0].to, w[1].from);
        }
        assert_eq!(
            span_label(&steps::DRIVE_RELEASED_TO_READY),
            "drive released → ready (device_add, the peer's virtio init)"
        );
        let labels: Vec<String> = bench_spans().map(span_label).collect();
        let mut unique = labels.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), labels.len(), "{labels:?}");
    }

    #[test]
    fn phases_come_from_the_record() {
        let p = PhaseTimes::from_record(Some(&full_record()));
        assert_eq!(p.get(&steps::DIRECTED_TO_DRAINED), Some(20.0));
        assert_eq!(p.get(&steps::SHIM_REACTION), Some(10.0));
        assert_eq!(p.get(&steps::PEER_INIT), Some(10.0));
        assert_eq!(PhaseTimes::from_record(None), PhaseTimes::default());
    }

    #[test]
    fn blackout_from_the_timeline() {
        // 6 completions on port 1 (bins 0..=2), then 4 empty bins, then port 2.
        let t = tl(&[2, 2, 2, 0, 0, 0, 0, 3, 3]);
        assert_eq!(switch_bins(&t, 6), Some((2, 7)));
        // The guest's gap fits the bracket [4, 6] ms: used.
        assert_eq!(handoff_blackout(&t, 6, Some(4.6)).unwrap().0, 4.6);
        // A longer gap elsewhere: the bin estimate.
        assert_eq!(handoff_blackout(&t, 6, Some(90.0)).unwrap().0, 5.0);
        // Port 2 starts in the same bin.
        assert_eq!(switch_bins(&t, 5), Some((2, 2)));
        assert_eq!(handoff_blackout(&t, 5, None).unwrap().0, 0.0);
        // Nothing forwarded.
        assert_eq!(switch_bins(&tl(&[2, 2, 0]), 4), None);
        assert_eq!(switch_bins(&t, 0), None);
    }
}
