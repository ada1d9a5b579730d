//! How the costs grow (issue 12, item 4): the handoff blackout against the queue depth and
//! against the requests in flight at the switch, and the live migration's downtime against the
//! owner's guest RAM, as tables (JSON and Markdown) and one SVG ([`svg`]).
//!
//! - **blackout against queue depth**: per depth of [`QDS`], a few `migrate --mode none` runs
//!   (tmpfs file, the owner asks for the handoff 20 % into its workload, no migration);
//! - **blackout against the requests in flight**: every handoff run of the bench (side by side,
//!   repeated, the depth curve), each run's `requests_queued_at_switch` against its blackout, as
//!   points and binned ([`INFLIGHT_BINS`]);
//! - **downtime against guest RAM**: one live cycle per size of [`RAM_SIZES_MIB`] on one host,
//!   through [`hosts::ram_point`] (the same runs `bench-hosts` makes across hosts).

use std::fmt::Write as _;

use serde::Serialize;

use super::handoff::{self, Disk, HandoffRun, Plan};
use super::hosts::{self, HostsBenchConfig, RAM_SIZES_MIB, RamPoint};
use super::runs::Ctx;
use super::stats::Summary;
use super::{BenchError, check_interrupt};
use crate::migrate::{Mode, Switch};

pub use super::curves_svg::svg;

/// The queue depths of the blackout curve.
pub const QDS: [u16; 4] = [1, 8, 32, 64];

/// The bins of requests in flight at the switch: `(from, to)`, both included.
pub const INFLIGHT_BINS: [(u64, u64); 6] =
    [(0, 0), (1, 3), (4, 15), (16, 31), (32, 63), (64, u64::MAX)];

/// The blackout at one queue depth.
#[derive(Debug, Clone, Serialize)]
pub struct QdPoint {
    /// Queue depth.
    pub qd: u16,
    /// Runs made.
    pub runs: usize,
    /// Of which succeeded (the figures are over these).
    pub ok: usize,
    /// The handoff blackout, ms.
    pub blackout_ms: Option<Summary>,
    /// Requests held at port 2 while port 1 drained.
    pub queued_at_switch: Option<Summary>,
}

/// One handoff run: the requests in flight at its switch and its blackout.
#[derive(Debug, Clone, Serialize)]
pub struct InflightPoint {
    /// Requests held at port 2 while port 1 drained (`requests_queued_at_switch`).
    pub queued_at_switch: u64,
    /// The handoff blackout, ms.
    pub blackout_ms: f64,
    /// The run's queue depth.
    pub qd: u16,
    /// `live`, `save` or `none`.
    pub mode: String,
    /// `null-co` or `tmpfs-file`.
    pub disk: String,
}

/// The blackout of the runs whose requests in flight at the switch lie in `from..=to`.
#[derive(Debug, Clone, Serialize)]
pub struct InflightBin {
    /// Smallest count of the bin.
    pub from: u64,
    /// Largest count of the bin (`u64::MAX`: no bound).
    pub to: u64,
    /// The blackout of its runs, ms (null: no run in the bin).
    pub blackout_ms: Option<Summary>,
}

/// The cost curves.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CostCurves {
    /// The handoff blackout per queue depth ([`QDS`]).
    pub blackout_vs_qd: Vec<QdPoint>,
    /// Workload of each run of the depth curve.
    pub qd_workload: String,
    /// Every successful handoff run of the bench: requests in flight at the switch, blackout.
    pub blackout_vs_inflight: Vec<InflightPoint>,
    /// The same, binned ([`INFLIGHT_BINS`]).
    pub blackout_vs_inflight_bins: Vec<InflightBin>,
    /// The live migration on one host per guest RAM size ([`RAM_SIZES_MIB`]).
    pub downtime_vs_ram: Vec<RamPoint>,
}

/// The blackout curve against the queue depth: its points and every run (for the in-flight
/// curve).
pub(super) fn blackout_vs_qd(
    ctx: &mut Ctx<'_>,
    common: &handoff::Common,
) -> Result<(Vec<QdPoint>, String, Vec<HandoffRun>), BenchError> {
    let (blocks, passes, reps): (u64, u32, u32) = if ctx.cfg.quick {
        (512, 4, 1)
    } else {
        (1024, 8, 3)
    };
    let writes = blocks * u64::from(passes);
    let workload = format!(
        "{} `--mode none`, {writes} writes, the owner asks for the handoff after {}",
        Disk::Tmpfs.as_str(),
        writes / 5
    );
    ctx.p.say(format!(
        "blackout against queue depth {QDS:?}: {reps} run(s) each, {workload}"
    ));
    let (mut points, mut all) = (Vec::new(), Vec::new());
    for qd in QDS {
        let mut runs = Vec::new();
        for rep in 0..reps {
            check_interrupt()?;
            let plan = Plan {
                mode: Mode::None,
                disk: Disk::Tmpfs,
                qd,
                blocks,
                passes,
                switch: Switch::OwnerRequest(writes / 5),
                seed: u64::from(rep) + 1,
                failback: false,
            };
            let r = handoff::run(&plan, common)?.run;
            if !r.ok {
                ctx.failures
                    .push(format!("blackout curve QD {qd}: {}", r.failures.join("; ")));
            }
            ctx.p.say(format!(
                "QD {qd} ({}/{reps}){}: blackout {} ms, {} in flight at the switch",
                rep + 1,
                if r.ok { "" } else { " (FAILED)" },
                r.blackout_ms.map_or("-".into(), |b| format!("{b:.1}")),
                r.queued_at_switch.map_or("-".into(), |q| q.to_string())
            ));
            runs.push(r);
        }
        let good: Vec<&HandoffRun> = runs.iter().filter(|r| r.ok).collect();
        let of = |f: &dyn Fn(&HandoffRun) -> Option<f64>| {
            Summary::of(&good.iter().filter_map(|r| f(r)).collect::<Vec<_>>())
        };
        points.push(QdPoint {
            qd,
            runs: runs.len(),
            ok: good.len(),
            blackout_ms: of(&|r| r.blackout_ms),
            queued_at_switch: of(&|r| r.queued_at_switch.map(|q| q as f64)),
        });
        all.extend(runs);
    }
    Ok((points, workload, all))
}

/// The in-flight curve of `runs` (the successful ones with both figures): points, and bins.
pub(super) fn blackout_vs_inflight<'a>(
    runs: impl IntoIterator<Item = &'a HandoffRun>,
) -> (Vec<InflightPoint>, Vec<InflightBin>) {
    let points: Vec<InflightPoint> = runs
        .into_iter()
        .filter(|r| r.ok)
        .filter_map(|r| {
            Some(InflightPoint {
                queued_at_switch: r.queued_at_switch?,
                blackout_ms: r.blackout_ms?,
                qd: r.qd,
                mode: r.mode.clone(),
                disk: r.disk.clone(),
            })
        })
        .collect();
    let bins = INFLIGHT_BINS
        .iter()
        .map(|&(from, to)| InflightBin {
            from,
            to,
            blackout_ms: Summary::of(
                &points
                    .iter()
                    .filter(|p| (from..=to).contains(&p.queued_at_switch))
                    .map(|p| p.blackout_ms)
                    .collect::<Vec<_>>(),
            ),
        })
        .collect();
    (points, bins)
}

/// The downtime curve: one live cycle per guest RAM size, on one host.
pub(super) fn downtime_vs_ram(ctx: &mut Ctx<'_>, common: &handoff::Common) -> Vec<RamPoint> {
    let cfg = HostsBenchConfig {
        accel: common.accel,
        reps: 1,
        timeout: common.timeout,
        kernel: common.kernel.clone(),
        qemu: common.qemu.clone(),
        progress: false,
    };
    let mut out = Vec::new();
    for mib in RAM_SIZES_MIB {
        if check_interrupt().is_err() {
            break;
        }
        let (point, failure) = hosts::ram_point(&cfg, false, mib);
        ctx.p.say(format!(
            "live migration, {mib} MiB guest, one host{}: downtime {} ms, total {} ms",
            if point.ok { "" } else { " (FAILED)" },
            point
                .migration_downtime_ms
                .map_or("-".into(), |v| v.to_string()),
            point
                .migration_total_ms
                .map_or("-".into(), |v| v.to_string()),
        ));
        ctx.failures.extend(failure);
        out.push(point);
    }
    out
}

/// `from–to` of a bin (`64+` when unbounded).
pub(super) fn bin_label(from: u64, to: u64) -> String {
    match (from, to) {
        (f, u64::MAX) => format!("{f}+"),
        (f, t) if f == t => f.to_string(),
        (f, t) => format!("{f}–{t}"),
    }
}

impl CostCurves {
    /// The curves' tables (Markdown), appended to `t`.
    pub fn markdown(&self, t: &mut String) {
        let f1 = |x: Option<f64>| x.map_or("–".into(), |v| format!("{v:.1}"));
        let s = |x: &Option<Summary>| {
            x.map_or("–".into(), |s| {
                format!("{:.1} [{:.1}–{:.1}]", s.p50, s.min, s.max)
            })
        };
        let _ = writeln!(
            t,
            "How the costs grow: blackout against queue depth ({}):",
            self.qd_workload
        );
        let _ = writeln!(t);
        let _ = writeln!(
            t,
            "| QD | runs ok | blackout ms median [min–max] | in flight at the switch median [min–max] |"
        );
        let _ = writeln!(t, "|---:|---:|---:|---:|");
        for p in &self.blackout_vs_qd {
            let q = p.queued_at_switch.map_or("–".into(), |s| {
                format!("{:.0} [{:.0}–{:.0}]", s.p50, s.min, s.max)
            });
            let _ = writeln!(
                t,
                "| {} | {}/{} | {} | {q} |",
                p.qd,
                p.ok,
                p.runs,
                s(&p.blackout_ms)
            );
        }
        let _ = writeln!(t);
        let _ = writeln!(
            t,
            "Blackout against the requests in flight at the switch ({} handoff runs of this bench):",
            self.blackout_vs_inflight.len()
        );
        let _ = writeln!(t);
        let _ = writeln!(t, "| in flight | runs | blackout ms median [min–max] |");
        let _ = writeln!(t, "|---:|---:|---:|");
        for b in &self.blackout_vs_inflight_bins {
            let _ = writeln!(
                t,
                "| {} | {} | {} |",
                bin_label(b.from, b.to),
                b.blackout_ms.map_or(0, |s| s.n),
                s(&b.blackout_ms)
            );
        }
        let _ = writeln!(t);
        let _ = writeln!(
            t,
            "Live migration against guest RAM (one host, one live cycle each):"
        );
        let _ = writeln!(t);
        let _ = writeln!(
            t,
            "| guest RAM MiB | downtime ms | total ms | failback blackout ms | ok |"
        );
        let _ = writeln!(t, "|---:|---:|---:|---:|---|");
        for p in &self.downtime_vs_ram {
            let _ = writeln!(
                t,
                "| {} | {} | {} | {} | {} |",
                p.guest_ram_mib,
                f1(p.migration_downtime_ms.map(|v| v as f64)),
                f1(p.migration_total_ms.map(|v| v as f64)),
                f1(p.failback_blackout_ms),
                if p.ok { "yes" } else { "**no**" }
            );
        }
        let _ = writeln!(t);
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::bench::handoff::PhaseTimes;

    pub(in crate::bench) fn run(qd: u16, queued: u64, blackout: f64) -> HandoffRun {
        HandoffRun {
            mode: "none".into(),
            disk: "tmpfs-file".into(),
            qd,
            writes: 100,
            ok: true,
            failures: Vec::new(),
            blackout_ms: Some(blackout),
            blackout_from: "test",
            failback_blackout_ms: None,
            max_gap_ms: None,
            phases: PhaseTimes::default(),
            migration_downtime_ms: None,
            migration_total_ms: None,
            port1: None,
            port2: None,
            queued_at_switch: Some(queued),
            cpu_time: None,
            elapsed_ms: 1.0,
        }
    }

    #[test]
    fn inflight_points_fall_in_one_bin_each() {
        let mut failed = run(8, 5, 99.0);
        failed.ok = false;
        let runs = [
            run(1, 0, 3.0),
            run(8, 5, 4.0),
            run(64, 64, 9.0),
            run(32, 20, 6.0),
            failed,
        ];
        let (points, bins) = blackout_vs_inflight(&runs);
        assert_eq!(points.len(), 4);
        assert_eq!(bins.len(), INFLIGHT_BINS.len());
        let n: usize = bins.iter().filter_map(|b| b.blackout_ms).map(|s| s.n).sum();
        assert_eq!(n, 4);
        assert_eq!(bins[2].blackout_ms.map(|s| s.p50), Some(4.0));
        assert!(bins[1].blackout_ms.is_none());
        assert_eq!(bin_label(64, u64::MAX), "64+");
        assert_eq!(bin_label(1, 3), "1–3");
        assert_eq!(bin_label(0, 0), "0");
        // Every count lies in exactly one bin.
        for q in 0..200u64 {
            let k = INFLIGHT_BINS
                .iter()
                .filter(|(f, t)| (*f..=*t).contains(&q))
                .count();
            assert_eq!(k, 1, "{q}");
        }
    }
}
