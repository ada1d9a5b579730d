//! The benchmark's table on stdout (Markdown): the targets, direct vs forwarded, the handoff
//! phases (each row a span of [`crate::steps::SPANS`], named by its steps' labels and found under
//! its bench name), migration and the direct runs.

use std::fmt::Write as _;

use super::handoff::{bench_spans, span_label};
use super::report::{BenchReport, HandoffStats};
use super::stats::Summary;
use crate::report::PortStatsReport;
use crate::steps::{self, Span};

/// The handoff table's rows in reading order: each bench span ([`bench_spans`]), and whether it
/// is a part of the row above (`… of which:`). Rows are named by [`span_label`] and their figures
/// found under the span's bench name; a bench span missing here still gets a row, at the end.
const PHASE_ROWS: [(Span, bool); 12] = [
    (steps::DIRECTED_TO_DRAINED, false),
    (steps::DRAINED_TO_RELEASED, false),
    (steps::RELEASED_TO_ATTACHED, false),
    (steps::PEER_INIT, false),
    (steps::READY_TO_FIRST_COMPLETION, false),
    (steps::DRAINED_TO_DRIVE_RELEASED, false),
    (steps::DRIVE_RELEASED_TO_READY, false),
    (steps::SHIM_REACTION, true),
    (steps::TO_ATTACHED, true),
    (steps::HANDOFF, false),
    (steps::MIGRATION_SETUP, false),
    (steps::MIGRATION, false),
];

/// `x` with one decimal, or `–`.
fn f1(x: Option<f64>) -> String {
    x.map_or("–".into(), |v| format!("{v:.1}"))
}

/// The repeated handoffs' table: the blackout, each phase and the longest gap (median, p99, max).
fn handoff_table(t: &mut String, h: &HandoffStats) {
    let _ = writeln!(
        t,
        "Handoffs: {} of {} succeeded ({}), ms:",
        h.ok, h.count, h.workload
    );
    let _ = writeln!(t);
    let _ = writeln!(t, "| phase | median | p99 | max |");
    let _ = writeln!(t, "|---|---:|---:|---:|");
    let row = |t: &mut String, name: &str, s: Option<&Summary>| {
        let _ = writeln!(
            t,
            "| {name} | {} | {} | {} |",
            f1(s.map(|s| s.p50)),
            f1(s.map(|s| s.p99)),
            f1(s.map(|s| s.max))
        );
    };
    row(
        t,
        "**blackout** (last port-1 → first port-2 completion)",
        h.blackout_ms.as_ref(),
    );
    if h.failback_blackout_ms.is_some() {
        row(
            t,
            "**failback blackout** (`failback` → first port-1 completion)",
            h.failback_blackout_ms.as_ref(),
        );
    }
    let listed = |s: &Span| PHASE_ROWS.iter().any(|(r, _)| r == s);
    let rows = PHASE_ROWS
        .iter()
        .filter(|(s, _)| s.bench.is_some())
        .copied()
        .chain(bench_spans().filter(|s| !listed(s)).map(|s| (*s, false)));
    for (span, part) in rows {
        let label = span_label(&span);
        let label = if part {
            format!("… of which: {label}")
        } else {
            label
        };
        row(t, &label, h.phase(&span));
    }
    row(t, "longest gap anywhere in the run", h.max_gap_ms.as_ref());
    let _ = writeln!(t);
}

impl BenchReport {
    /// The table printed on stdout (Markdown).
    pub fn markdown(&self) -> String {
        let mut t = String::new();
        let f3 = |x: Option<f64>| x.map_or("–".into(), |v| format!("{v:.3}"));
        let span =
            |x: Option<(f64, f64)>| x.map_or(String::new(), |(a, b)| format!("[{a:.2}–{b:.2}]"));
        let _ = writeln!(
            t,
            "baton bench{}: accel {} ({}), QEMU {}; host {} CPUs, {}, Linux {}; guest {}",
            if self.quick { " (quick)" } else { "" },
            self.accel,
            self.accel_reason,
            self.qemu_version,
            self.machine.nproc,
            self.machine.cpu_model,
            self.machine.host_kernel,
            self.guest
        );
        let _ = writeln!(t);
        let _ = writeln!(t, "| figure | target | measured | met |");
        let _ = writeln!(t, "|---|---|---:|---|");
        for x in &self.targets {
            let met = match x.met {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "n/a",
            };
            let _ = writeln!(t, "| {} | {} | {} | {met} |", x.name, x.target, f3(x.value));
        }
        let _ = writeln!(
            t,
            "| QEMU start → first I/O (median) | – | {} ms | – |",
            f1(self.boot_to_first_io_ms)
        );
        let _ = writeln!(t);
        let _ = writeln!(
            t,
            "Direct (port 1) vs forwarded (port 2) on the same QEMU processes: `migrate --mode none` runs, switch 20 % into the workload; medians over the runs:"
        );
        let _ = writeln!(t);
        let _ = writeln!(
            t,
            "| disk | QD | runs × writes | direct IOPS | forwarded IOPS | IOPS ratio [runs' range] | host CPU µs/request direct / forwarded (after the switch) | cores busy % direct / forwarded (after the switch) | direct p50/p99/max µs | forwarded p50/p99/max µs | p50 ratio [range] | blackout ms |"
        );
        let _ = writeln!(
            t,
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        let lat = |p: &Option<PortStatsReport>| {
            p.map_or("–".into(), |p| {
                format!("{}/{}/{}", p.p50_us, p.p99_us, p.max_us)
            })
        };
        let iops = |p: &Option<PortStatsReport>| p.map_or("–".into(), |p| p.iops.to_string());
        for s in &self.side_by_side {
            let _ = writeln!(
                t,
                "| {} | {} | {} × {} | {} | {} | {} {} | {} / {} ({}) | {} / {} ({}) | {} | {} | {} {} | {} |",
                s.disk,
                s.qd,
                s.reps,
                s.writes,
                iops(&s.direct),
                iops(&s.forwarded),
                f3(s.iops_ratio),
                span(s.iops_ratio_range),
                f1(s.direct_cpu_us_per_request),
                f1(s.forwarded_cpu_us_per_request),
                f1(s.forwarded_after_switch_cpu_us_per_request),
                f1(s.direct_cores_percent),
                f1(s.forwarded_cores_percent),
                f1(s.forwarded_after_switch_cores_percent),
                lat(&s.direct),
                lat(&s.forwarded),
                f3(s.p50_latency_ratio),
                span(s.p50_latency_ratio_range),
                f1(s.blackout_ms)
            );
        }
        let _ = writeln!(t);
        handoff_table(&mut t, &self.handoffs);
        self.curves.markdown(&mut t);
        let _ = writeln!(
            t,
            "| migration | runs | downtime median [max] ms | total median [max] ms |"
        );
        let _ = writeln!(t, "|---|---:|---:|---:|");
        for (mode, m) in &self.migration {
            let _ = writeln!(
                t,
                "| {mode} | {} | {} [{}] | {} [{}] |",
                m.runs,
                f1(m.downtime_ms.map(|s| s.p50)),
                f1(m.downtime_ms.map(|s| s.max)),
                f1(m.total_ms.map(|s| s.p50)),
                f1(m.total_ms.map(|s| s.max))
            );
        }
        let _ = writeln!(t);
        let _ = writeln!(
            t,
            "| direct run QD | runs | IOPS median [min–max] | QEMU start → first I/O median [min–max] |"
        );
        let _ = writeln!(t, "|---:|---:|---:|---:|");
        for d in &self.direct.depths {
            let fl: Vec<f64> = d.iops.iter().map(|&x| x as f64).collect();
            let i = Summary::of(&fl);
            let b = Summary::of(&d.boot_ms);
            let _ = writeln!(
                t,
                "| {} | {} | {:.0} [{:.0}–{:.0}] | {:.0} ms [{:.0}–{:.0}] |",
                d.qd,
                d.iops.len(),
                i.map_or(f64::NAN, |s| s.p50),
                i.map_or(f64::NAN, |s| s.min),
                i.map_or(f64::NAN, |s| s.max),
                b.map_or(f64::NAN, |s| s.p50),
                b.map_or(f64::NAN, |s| s.min),
                b.map_or(f64::NAN, |s| s.max),
            );
        }
        let _ = writeln!(t);
        for x in &self.targets {
            if x.met != Some(true) && !x.note.is_empty() {
                let _ = writeln!(t, "- {}: {}", x.name, x.note);
            }
        }
        if !self.failures.is_empty() {
            let _ = writeln!(t);
            let _ = writeln!(t, "FAILURES:");
            for f in &self.failures {
                let _ = writeln!(t, "- {f}");
            }
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::handoff::PhaseTimes;
    use crate::bench::handoff::tests::full_record;
    use crate::bench::runs::phase_summaries;

    /// Every bench span has exactly one row, named by its steps' labels, with its figures: a span
    /// renamed in [`steps::SPANS`] cannot turn a row into `–`.
    #[test]
    fn every_bench_phase_has_a_row_with_its_figures() {
        let phases = PhaseTimes::from_record(Some(&full_record()));
        let h = HandoffStats {
            count: 1,
            ok: 1,
            workload: "tmpfs-file QD 32, 8 writes".into(),
            blackout_ms: None,
            failback_blackout_ms: None,
            max_gap_ms: None,
            phases: phase_summaries(&[phases]),
            runs: Vec::new(),
        };
        let mut t = String::new();
        handoff_table(&mut t, &h);
        let mut n = 0;
        for span in bench_spans() {
            let label = span_label(span);
            let v = f1(phases.get(span));
            assert_ne!(v, "–", "{label}");
            let prefix = if PHASE_ROWS.iter().any(|(s, part)| s == span && *part) {
                "… of which: "
            } else {
                ""
            };
            let line = format!("| {prefix}{label} | {v} | {v} | {v} |");
            assert_eq!(t.lines().filter(|l| *l == line).count(), 1, "{line}\n{t}");
            n += 1;
        }
        // The blackout, the phases, the longest gap; nothing else.
        assert_eq!(t.lines().filter(|l| l.starts_with("| ")).count(), n + 3);
        assert!(t.contains("| drive released → ready (device_add, the peer's virtio init) |"));
        // Every listed row is a bench span.
        assert!(PHASE_ROWS.iter().all(|(s, _)| s.bench.is_some()));
    }
}
