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

use serde::Serialize;

use crate::migrate::{self, DestinationFault, MigrateConfig, MigrateError, Mode, Switch};
use crate::report::{CompletionTimeline, MigrateReport, PortStatsReport};
use crate::run::{AccelChoice, BackendKind};
use crate::steps::{self, HandoffRecord, Span};

/// Where the disk lives in a handoff run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disk {
    /// QEMU `null-co`: the I/O path only, nothing stored or verified.
    Null,
    /// A raw image file on tmpfs (`/dev/shm`), verified on the host after the run.
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

/// Directory for tmpfs images.
const TMPFS_DIR: &str = "/dev/shm";

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
}

impl Plan {
    /// Writes in the workload.
    pub fn writes(&self) -> u64 {
        self.blocks.saturating_mul(u64::from(self.passes))
    }
}

/// The handoff's phases of one run, in ms, from the run's [`HandoffRecord`]. Each field is one
/// span of [`crate::steps::SPANS`] (its `bench` name; the first seven are the `migrate` report's
/// `phases` under the bench's shorter names, e.g. `drained_to_deleted_ms` is the report's
/// `drained_to_device_deleted_ms`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct PhaseTimes {
    /// `redirect` sent → the owner's `drained` ([`steps::DIRECTED_TO_DRAINED`]).
    pub directed_to_drained_ms: Option<f64>,
    /// `drained` → the owner's QEMU released the drive (`DEVICE_DELETED`)
    /// ([`steps::DRAINED_TO_DRIVE_RELEASED`]).
    pub drained_to_deleted_ms: Option<f64>,
    /// Released → the peer's `peer-ready` (disk moved and initialised, ring attached)
    /// ([`steps::DRIVE_RELEASED_TO_READY`]).
    pub deleted_to_attached_ms: Option<f64>,
    /// `peer-ready` → the first forwarded completion on the ring
    /// ([`steps::READY_TO_FIRST_COMPLETION`]).
    pub attached_to_first_forwarded_ms: Option<f64>,
    /// `redirect` sent → the owner's `forwarding` ([`steps::HANDOFF`]).
    pub handoff_ms: Option<f64>,
    /// `forwarding` → `migrate` issued (destination started and connected, capabilities)
    /// ([`steps::MIGRATION_SETUP`]).
    pub migration_setup_ms: Option<f64>,
    /// `migrate` issued → the owner runs at the destination (or restored) ([`steps::MIGRATION`]).
    pub migration_ms: Option<f64>,
    /// Inside released → peer ready: QEMU's `DEVICE_DELETED` stamp → the shim acting on it
    /// ([`steps::SHIM_REACTION`]).
    pub shim_reaction_ms: Option<f64>,
    /// Inside released → peer ready: the shim acted on `DEVICE_DELETED` → `disk-attached` sent:
    /// the peer's `device_add`, overlapping the wait for the owner's `released` frame
    /// ([`steps::TO_ATTACHED`]).
    pub to_disk_attached_ms: Option<f64>,
    /// Inside released → peer ready: `disk-attached` sent → `peer-ready` received: the peer's
    /// PCI and virtio-blk bring-up, and COM2 both ways ([`steps::PEER_INIT`]).
    pub peer_init_ms: Option<f64>,
}

impl PhaseTimes {
    /// The phases of `record` (all null without one).
    pub fn from_record(record: Option<&HandoffRecord>) -> Self {
        let ms = |s: &Span| record.and_then(|r| r.span_ms(s));
        Self {
            directed_to_drained_ms: ms(&steps::DIRECTED_TO_DRAINED),
            drained_to_deleted_ms: ms(&steps::DRAINED_TO_DRIVE_RELEASED),
            deleted_to_attached_ms: ms(&steps::DRIVE_RELEASED_TO_READY),
            attached_to_first_forwarded_ms: ms(&steps::READY_TO_FIRST_COMPLETION),
            handoff_ms: ms(&steps::HANDOFF),
            migration_setup_ms: ms(&steps::MIGRATION_SETUP),
            migration_ms: ms(&steps::MIGRATION),
            shim_reaction_ms: ms(&steps::SHIM_REACTION),
            to_disk_attached_ms: ms(&steps::TO_ATTACHED),
            peer_init_ms: ms(&steps::PEER_INIT),
        }
    }

    /// `(name, value)` pairs, in order.
    pub fn named(&self) -> [(&'static str, Option<f64>); 10] {
        [
            ("directed_to_drained_ms", self.directed_to_drained_ms),
            ("drained_to_deleted_ms", self.drained_to_deleted_ms),
            ("deleted_to_attached_ms", self.deleted_to_attached_ms),
            (
                "attached_to_first_forwarded_ms",
                self.attached_to_first_forwarded_ms,
            ),
            ("handoff_ms", self.handoff_ms),
            ("migration_setup_ms", self.migration_setup_ms),
            ("migration_ms", self.migration_ms),
            ("shim_reaction_ms", self.shim_reaction_ms),
            ("to_disk_attached_ms", self.to_disk_attached_ms),
            ("peer_init_ms", self.peer_init_ms),
        ]
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
    /// How `blackout_ms` was obtained (see [`handoff_blackout`]).
    pub blackout_from: &'static str,
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
                .tempdir_in(TMPFS_DIR)
                .map_err(|e| MigrateError::Config(format!("cannot use {TMPFS_DIR}: {e}")))?,
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
        peer_fault: baton_core::cmdline::Fault::None,
        destination_fault: DestinationFault::None,
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
    let (blackout_ms, blackout_from) = match (&r.completion_timeline, r.port1_requests) {
        (Some(t), Some(p1)) => match handoff_blackout(t, p1, max_gap_ms) {
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
        max_gap_ms,
        phases: PhaseTimes::from_record(record),
        migration_downtime_ms: r.migration_downtime_ms,
        migration_total_ms: r.migration_total_ms,
        port1: port(1),
        port2: port(2),
        queued_at_switch: r.requests_queued_at_switch,
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
mod tests {
    use super::*;

    fn tl(counts: &[u16]) -> CompletionTimeline {
        CompletionTimeline {
            start_us: 0,
            bin_us: 1000,
            counts: counts.to_vec(),
        }
    }

    /// The bench's phases carry exactly the spans the table gives a bench name, in its order.
    #[test]
    fn phase_names_are_the_span_tables_bench_names() {
        let named: Vec<&str> = PhaseTimes::default()
            .named()
            .iter()
            .map(|(n, _)| *n)
            .collect();
        let table: Vec<&str> = steps::SPANS.iter().filter_map(|s| s.bench).collect();
        assert_eq!(named, table);
        let v = serde_json::to_value(PhaseTimes::default()).unwrap();
        assert_eq!(v.as_object().unwrap().len(), table.len());
        for n in table {
            assert!(v.get(n).is_some(), "{n}");
        }
    }

    #[test]
    fn phases_come_from_the_record() {
        use crate::steps::{Direction, Step};
        use std::time::{Duration, Instant};
        let t = Instant::now();
        let mut r = HandoffRecord::new(Direction::OWNER_TO_PEER);
        for (i, s) in Step::ALL.iter().enumerate() {
            r.record(*s, t + Duration::from_millis(10 * i as u64));
        }
        let p = PhaseTimes::from_record(Some(&r));
        assert_eq!(p.directed_to_drained_ms, Some(20.0));
        assert_eq!(p.shim_reaction_ms, Some(10.0));
        assert_eq!(p.peer_init_ms, Some(10.0));
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
