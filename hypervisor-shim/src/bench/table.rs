//! The benchmark's table on stdout (Markdown): the targets, direct vs forwarded, the handoff
//! phases (under the bench's phase names, [`crate::steps::SPANS`]), migration and the direct runs.

use std::fmt::Write as _;

use super::report::BenchReport;
use super::stats::Summary;
use crate::report::PortStatsReport;

impl BenchReport {
    /// The table printed on stdout (Markdown).
    pub fn markdown(&self) -> String {
        let mut t = String::new();
        let f1 = |x: Option<f64>| x.map_or("–".into(), |v| format!("{v:.1}"));
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
            "| disk | QD | runs × writes | direct IOPS | forwarded IOPS | IOPS ratio [runs' range] | direct p50/p99/max µs | forwarded p50/p99/max µs | p50 ratio [range] | blackout ms |"
        );
        let _ = writeln!(t, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        let lat = |p: &Option<PortStatsReport>| {
            p.map_or("–".into(), |p| {
                format!("{}/{}/{}", p.p50_us, p.p99_us, p.max_us)
            })
        };
        let iops = |p: &Option<PortStatsReport>| p.map_or("–".into(), |p| p.iops.to_string());
        for s in &self.side_by_side {
            let _ = writeln!(
                t,
                "| {} | {} | {} × {} | {} | {} | {} {} | {} | {} | {} {} | {} |",
                s.disk,
                s.qd,
                s.reps,
                s.writes,
                iops(&s.direct),
                iops(&s.forwarded),
                f3(s.iops_ratio),
                span(s.iops_ratio_range),
                lat(&s.direct),
                lat(&s.forwarded),
                f3(s.p50_latency_ratio),
                span(s.p50_latency_ratio_range),
                f1(s.blackout_ms)
            );
        }
        let _ = writeln!(t);
        let h = &self.handoffs;
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
            &mut t,
            "**blackout** (last port-1 → first port-2 completion)",
            h.blackout_ms.as_ref(),
        );
        for (k, label) in [
            ("directed_to_drained_ms", "directed → drained"),
            ("drained_to_deleted_ms", "drained → drive released"),
            ("deleted_to_attached_ms", "released → peer ready"),
            (
                "shim_reaction_ms",
                "… of which: DEVICE_DELETED → the shim acts",
            ),
            (
                "to_disk_attached_ms",
                "… of which: device_add in the peer ∥ the owner's `released` → disk-attached",
            ),
            (
                "peer_init_ms",
                "… of which: disk-attached → peer-ready (peer's virtio init)",
            ),
            (
                "attached_to_first_forwarded_ms",
                "peer ready → first forwarded",
            ),
            ("handoff_ms", "handoff (directed → forwarding)"),
            ("migration_setup_ms", "forwarding → migrate issued (set-up)"),
            ("migration_ms", "migrate issued → owner runs again"),
        ] {
            row(&mut t, label, h.phases.get(k));
        }
        row(
            &mut t,
            "longest gap anywhere in the run",
            h.max_gap_ms.as_ref(),
        );
        let _ = writeln!(t);
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
