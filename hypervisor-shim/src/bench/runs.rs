//! The benchmark's steps (see the module docs of [`super`]): each makes its runs, reports them on
//! the progress display, records failed runs in [`Ctx::failures`] and returns its figures.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use super::handoff::{self, CHAIN, Common, Disk, HandoffRun, PhaseTimes, Plan};
use super::report::{DepthResult, DirectRuns, HandoffStats, MigrationStats, SideBySide};
use super::stats::{self, Summary, round};
use super::{BenchConfig, BenchError, check_interrupt, idle, plot, redirector};
use crate::migrate::{Mode, Switch};
use crate::progress::Progress;
use crate::report::{MigrateReport, PortStatsReport, RunReport};
use crate::run::{self, RunConfig};
use crate::setup::BackendKind;
use crate::steps;

/// What every step shares: the configuration, the progress display, the failures so far and the
/// QEMU version seen.
pub(super) struct Ctx<'a> {
    pub(super) cfg: &'a BenchConfig,
    pub(super) p: Progress,
    pub(super) failures: Vec<String>,
    pub(super) qemu_version: String,
}

/// Step 1, the direct runs: their figures, the median QEMU start → first I/O, and the fastest
/// IOPS seen (it places the switch of the repeated handoffs).
pub(super) fn direct(
    ctx: &mut Ctx<'_>,
    kernel: &Path,
) -> Result<(DirectRuns, Option<f64>, u64), BenchError> {
    let cfg = ctx.cfg;
    let mut direct = DirectRuns {
        writes_per_run: cfg.blocks.saturating_mul(u64::from(cfg.passes)),
        depths: Vec::new(),
    };
    for &qd in &cfg.depths {
        let mut d = DepthResult {
            qd,
            iops: Vec::new(),
            boot_ms: Vec::new(),
        };
        for i in 0..cfg.runs {
            check_interrupt()?;
            let rc = RunConfig {
                backend: BackendKind::Null,
                accel: cfg.accel,
                vm: 1,
                blocks: cfg.blocks,
                passes: cfg.passes,
                qd,
                seed: u64::from(i) + 1,
                first_lba: 0,
                hotplug_disk: false,
                guest_panic: false,
                timeout: cfg.timeout,
                kernel: Some(kernel.to_path_buf()),
                qemu: cfg.qemu.clone(),
                workdir: None,
                keep: false,
                shared_storage: false,
                restart_storage_after: None,
                device: baton_core::cmdline::DeviceClass::Blk,
                frames: baton_core::cmdline::DEFAULT_FRAMES,
                nic_skip: None,
            };
            let r: RunReport = run::run(&rc)?.report;
            if let Some(v) = &r.qemu_version {
                ctx.qemu_version.clone_from(v);
            }
            if !r.ok {
                ctx.failures
                    .push(format!("direct run qd {qd}: {}", r.failures.join("; ")));
                ctx.p.say(format!(
                    "direct run QD {qd}: FAILED: {}",
                    r.failures.join("; ")
                ));
                continue;
            }
            d.iops.push(r.iops.unwrap_or(0));
            d.boot_ms.push(r.boot_ms.unwrap_or(f64::NAN));
            ctx.p.say(format!(
                "direct run QD {qd} ({}/{}): {} IOPS, QEMU start → first I/O {:.1} ms",
                i + 1,
                cfg.runs,
                r.iops.unwrap_or(0),
                r.boot_ms.unwrap_or(f64::NAN)
            ));
        }
        direct.depths.push(d);
    }
    let boot: Vec<f64> = direct
        .depths
        .iter()
        .flat_map(|d| d.boot_ms.iter().copied())
        .collect();
    let boot_to_first_io_ms = stats::median(&boot).map(|b| round(b, 1));
    // The fastest direct IOPS measured: it places the switch 20 % into a repeated handoff.
    let direct_iops = direct
        .depths
        .iter()
        .flat_map(|d| d.iops.iter().copied())
        .max()
        .filter(|&i| i > 0)
        .unwrap_or(10_000);
    Ok((direct, boot_to_first_io_ms, direct_iops))
}

/// Step 2, side by side: per disk and queue depth, `side_reps` handoff runs (`--mode none`).
pub(super) fn side_by_side_runs(
    ctx: &mut Ctx<'_>,
    common: &Common,
) -> Result<Vec<SideBySide>, BenchError> {
    let cfg = ctx.cfg;
    let mut side = Vec::new();
    for disk in [Disk::Null, Disk::Tmpfs] {
        for qd in [1u16, 32] {
            let (blocks, passes) = cfg.side_workload(qd);
            let mut reps = Vec::new();
            for rep in 0..cfg.side_reps {
                check_interrupt()?;
                let plan = Plan {
                    mode: Mode::None,
                    disk,
                    qd,
                    blocks,
                    passes,
                    switch: Switch::OwnerRequest(blocks * u64::from(passes) / 5),
                    seed: u64::from(rep) + 1,
                    failback: false,
                };
                let o = handoff::run(&plan, common)?;
                if let Some(v) = &o.report.qemu_version {
                    ctx.qemu_version.clone_from(v);
                }
                let r = o.run;
                if !r.ok {
                    ctx.failures.push(format!(
                        "side-by-side {} QD {qd}: {}",
                        disk.as_str(),
                        r.failures.join("; ")
                    ));
                }
                let port = |x: &Option<PortStatsReport>| {
                    x.map_or_else(
                        || "-".to_owned(),
                        |p| {
                            format!(
                                "{} IOPS, p50/p99/max {}/{}/{} µs",
                                p.iops, p.p50_us, p.p99_us, p.max_us
                            )
                        },
                    )
                };
                let cpu = |d: Option<f64>, f: Option<f64>| match (d, f) {
                    (Some(d), Some(f)) => format!("; host CPU {d:.1} / {f:.1} µs per request"),
                    _ => String::new(),
                };
                ctx.p.say(format!(
                    "side by side {} QD {qd} ({}/{}){}: direct {}; forwarded {}; blackout {} ms{}",
                    disk.as_str(),
                    rep + 1,
                    cfg.side_reps,
                    if r.ok { "" } else { " (FAILED)" },
                    port(&r.port1),
                    port(&r.port2),
                    r.blackout_ms.map_or("-".into(), |b| format!("{b:.1}")),
                    cpu(
                        cpu_phase(&r, CpuPath::Direct).and_then(|p| p.cpu_us_per_request),
                        cpu_phase(&r, CpuPath::Forwarded).and_then(|p| p.cpu_us_per_request)
                    )
                ));
                reps.push(r);
            }
            side.push(side_by_side(disk, qd, blocks * u64::from(passes), reps));
        }
    }
    Ok(side)
}

/// What the repeated handoffs give.
pub(super) struct Repeated {
    /// Blackout and phases.
    pub(super) stats: HandoffStats,
    /// Migration figures by mode.
    pub(super) migration: BTreeMap<String, MigrationStats>,
    /// The successful live runs' reports with their blackout and phases (for the plot).
    pub(super) plot_candidates: Vec<(f64, PhaseTimes, MigrateReport)>,
}

/// Step 3, the repeated handoffs (live and save alternating).
pub(super) fn repeated_handoffs(
    ctx: &mut Ctx<'_>,
    common: &Common,
    direct_iops: u64,
) -> Result<Repeated, BenchError> {
    let cfg = ctx.cfg;
    let (blocks, passes) = cfg.handoff_workload();
    let writes = blocks * u64::from(passes);
    let switch_ms = (writes as f64 * 0.2 / direct_iops as f64 * 1000.0)
        .round()
        .max(20.0) as u64;
    ctx.p.say(format!(
        "{} handoffs (live and save alternating, each with a failback), QD 32, {writes} writes on a tmpfs file, switch {switch_ms} ms after the first I/O (~20 % in at {direct_iops} IOPS)",
        cfg.handoffs
    ));
    let mut runs = Vec::new();
    let mut plot_candidates = Vec::new();
    for i in 0..cfg.handoffs {
        check_interrupt()?;
        let mode = if i % 2 == 0 { Mode::Live } else { Mode::Save };
        let plan = Plan {
            mode,
            disk: Disk::Tmpfs,
            qd: 32,
            blocks,
            passes,
            switch: Switch::AfterMs(switch_ms),
            seed: u64::from(i) + 1,
            failback: true,
        };
        let o = handoff::run(&plan, common)?;
        let r = &o.run;
        if !r.ok {
            ctx.failures.push(format!(
                "handoff {} ({}): {}",
                i + 1,
                mode.as_str(),
                r.failures.join("; ")
            ));
        }
        let f = |x: Option<f64>| x.map_or("-".into(), |v| format!("{v:.1}"));
        let chain: Vec<String> = CHAIN
            .iter()
            .map(|s| format!("{} → {} {}", s.from, s.to, f(r.phases.get(s))))
            .collect();
        ctx.p.say(format!(
            "handoff {}/{} {}{}: blackout {} ms, failback {} ms ({} → {} {} ms: {}); migration downtime {} ms, total {} ms",
            i + 1,
            cfg.handoffs,
            mode.as_str(),
            if r.ok { "" } else { " (FAILED)" },
            f(r.blackout_ms),
            f(r.failback_blackout_ms),
            steps::HANDOFF.from,
            steps::HANDOFF.to,
            f(r.phases.get(&steps::HANDOFF)),
            chain.join(", "),
            r.migration_downtime_ms.map_or("-".into(), |v| v.to_string()),
            r.migration_total_ms.map_or("-".into(), |v| v.to_string()),
        ));
        if mode == Mode::Live && r.ok {
            plot_candidates.push((
                r.blackout_ms.unwrap_or(f64::NAN),
                r.phases,
                o.report.clone(),
            ));
        }
        runs.push(o.run);
    }
    let good: Vec<&HandoffRun> = runs.iter().filter(|r| r.ok).collect();
    let collect = |f: &dyn Fn(&HandoffRun) -> Option<f64>| -> Vec<f64> {
        good.iter().filter_map(|r| f(r)).collect()
    };
    let blackout = Summary::of(&collect(&|r| r.blackout_ms));
    let phases = phase_summaries(&good.iter().map(|r| r.phases).collect::<Vec<_>>());
    let mut migration = BTreeMap::new();
    for mode in [Mode::Live, Mode::Save] {
        let of: Vec<&&HandoffRun> = good.iter().filter(|r| r.mode == mode.as_str()).collect();
        let v = |f: &dyn Fn(&HandoffRun) -> Option<f64>| -> Vec<f64> {
            of.iter().filter_map(|r| f(r)).collect()
        };
        migration.insert(
            mode.as_str().to_owned(),
            MigrationStats {
                runs: of.len(),
                downtime_ms: Summary::of(&v(&|r| r.migration_downtime_ms.map(|x| x as f64))),
                total_ms: Summary::of(&v(&|r| r.migration_total_ms.map(|x| x as f64))),
                migrate_to_running_ms: Summary::of(&v(&|r| r.phases.get(&steps::MIGRATION))),
            },
        );
    }
    let handoffs = HandoffStats {
        count: runs.len(),
        ok: good.len(),
        workload: format!("{} QD 32, {writes} writes", Disk::Tmpfs.as_str()),
        blackout_ms: blackout,
        failback_blackout_ms: Summary::of(&collect(&|r| r.failback_blackout_ms)),
        max_gap_ms: Summary::of(&collect(&|r| r.max_gap_ms)),
        phases,
        runs: runs.clone(),
    };
    Ok(Repeated {
        stats: handoffs,
        migration,
        plot_candidates,
    })
}

/// Each bench phase ([`handoff::bench_spans`]) summarised over `runs`, under its bench name (a
/// phase no run reached is left out).
pub(super) fn phase_summaries(runs: &[PhaseTimes]) -> BTreeMap<String, Summary> {
    let mut out = BTreeMap::new();
    for span in handoff::bench_spans() {
        let v: Vec<f64> = runs.iter().filter_map(|p| p.get(span)).collect();
        if let (Some(name), Some(s)) = (span.bench, Summary::of(&v)) {
            out.insert(name.to_owned(), s);
        }
    }
    out
}

/// Step 4, idle guests: the result, or why it failed.
pub(super) fn idle_guests(
    ctx: &mut Ctx<'_>,
    qemu_bin: &Path,
    kernel: &Path,
    accel: crate::qemu::Accel,
) -> (Option<idle::IdleResult>, Option<String>) {
    let cfg = ctx.cfg;
    ctx.p.say(format!(
        "idle guests: a peer waiting for its ring and an owner waiting for a disk, sampled over {:?}",
        cfg.idle
    ));
    match tempfile::Builder::new()
        .prefix("baton-bench-idle-")
        .tempdir()
    {
        Ok(dir) => match idle::measure(qemu_bin, kernel, accel, cfg.idle, dir.path()) {
            Ok(r) => {
                ctx.p.say(format!(
                    "idle: peer {:.2} %, owner {:.2} % of one core",
                    r.peer_waiting_for_ring_percent, r.owner_waiting_for_disk_percent
                ));
                (Some(r), None)
            }
            Err(e) => {
                ctx.p.say(format!("idle: FAILED: {e}"));
                (None, Some(e.to_string()))
            }
        },
        Err(e) => (None, Some(format!("temporary directory: {e}"))),
    }
}

/// Step 5, the redirector's host bench (`None` when not asked for).
pub(super) fn redirector_bench(ctx: &mut Ctx<'_>) -> Option<redirector::RedirectorResult> {
    let cfg = ctx.cfg;
    if cfg.redirector {
        ctx.p.say(format!(
            "redirector: cargo bench -p baton-core --bench redirector{}",
            if cfg.quick {
                " (BATON_BENCH_QUICK=1)"
            } else {
                " (~80 s)"
            }
        ));
        let timeout = Duration::from_secs(if cfg.quick { 300 } else { 900 });
        let r = match tempfile::Builder::new()
            .prefix("baton-bench-redir-")
            .tempdir()
        {
            Ok(dir) => redirector::run(cfg.quick, timeout, dir.path()),
            Err(e) => redirector::RedirectorResult {
                available: false,
                error: Some(format!("temporary directory: {e}")),
                command: String::new(),
                quick: cfg.quick,
                vs_mutex_4_threads: None,
                summary: None,
                seconds: 0.0,
            },
        };
        match (&r.vs_mutex_4_threads, &r.error) {
            (Some(v), None) => ctx.p.say(format!(
                "redirector vs Mutex (the worse of 1 and 2 threads): {v}"
            )),
            (_, e) => ctx.p.say(format!(
                "redirector: unavailable: {}",
                e.as_deref().unwrap_or("?")
            )),
        }
        Some(r)
    } else {
        None
    }
}

/// Step 6, the plot of the live run whose blackout is nearest the median: (what it shows, why
/// there is none, its SVG).
pub(super) fn plot_nearest(
    mut candidates: Vec<(f64, PhaseTimes, MigrateReport)>,
    median_blackout: f64,
) -> (Option<plot::PlotInfo>, Option<String>, Option<String>) {
    let (mut plot_info, mut plot_error, mut plot_svg) = (None, None, None);
    let med = median_blackout;
    candidates.sort_by(|a, b| (a.0 - med).abs().total_cmp(&(b.0 - med).abs()));
    match candidates.first() {
        Some((_, phases, rep)) => match plot::svg(rep, phases) {
            Ok((svg, info)) => {
                plot_svg = Some(svg);
                plot_info = Some(info);
            }
            Err(e) => plot_error = Some(e),
        },
        None => plot_error = Some("no successful live handoff to plot".into()),
    }

    (plot_info, plot_error, plot_svg)
}

/// Medians of a port's figures over runs.
fn median_port(ports: &[PortStatsReport]) -> Option<PortStatsReport> {
    let m = |f: &dyn Fn(&PortStatsReport) -> u64| {
        let v: Vec<f64> = ports.iter().map(|p| f(p) as f64).collect();
        stats::median(&v).map(|x| x.round() as u64)
    };
    Some(PortStatsReport {
        port: ports.first()?.port,
        completions: m(&|p| p.completions)?,
        iops: m(&|p| p.iops)?,
        p50_us: m(&|p| p.p50_us)?,
        p99_us: m(&|p| p.p99_us)?,
        max_us: m(&|p| p.max_us)?,
    })
}

/// The side-by-side figures of `runs` (repetitions of one disk and queue depth).
fn side_by_side(disk: Disk, qd: u16, writes: u64, runs: Vec<HandoffRun>) -> SideBySide {
    let good: Vec<&HandoffRun> = runs.iter().filter(|r| r.ok).collect();
    let ports = |n: u8| -> Vec<PortStatsReport> {
        good.iter()
            .filter_map(|r| if n == 1 { r.port1 } else { r.port2 })
            .collect()
    };
    let ratios = |f: &dyn Fn(&PortStatsReport) -> u64| -> Option<Summary> {
        let v: Vec<f64> = good
            .iter()
            .filter_map(|r| ratio(r.port2.map(|p| f(&p)), r.port1.map(|p| f(&p).max(1))))
            .collect();
        Summary::of(&v)
    };
    let med_ratio = |f: &dyn Fn(&PortStatsReport) -> u64| ratios(f).map(|s| s.p50);
    let range = |f: &dyn Fn(&PortStatsReport) -> u64| ratios(f).map(|s| (s.min, s.max));
    let blackouts: Vec<f64> = good.iter().filter_map(|r| r.blackout_ms).collect();
    let cpu = |path: CpuPath, f: &dyn Fn(&crate::cputime::CpuPhase) -> Option<f64>| {
        let v: Vec<f64> = good
            .iter()
            .filter_map(|r| cpu_phase(r, path).and_then(f))
            .collect();
        stats::median(&v)
    };
    SideBySide {
        disk: disk.as_str().into(),
        qd,
        writes,
        switch_after_writes: writes / 5,
        reps: good.len(),
        direct: median_port(&ports(1)),
        forwarded: median_port(&ports(2)),
        iops_ratio: med_ratio(&|p| p.iops),
        p50_latency_ratio: med_ratio(&|p| p.p50_us),
        p99_latency_ratio: med_ratio(&|p| p.p99_us),
        iops_ratio_range: range(&|p| p.iops),
        p50_latency_ratio_range: range(&|p| p.p50_us),
        blackout_ms: stats::median(&blackouts),
        direct_cpu_us_per_request: cpu(CpuPath::Direct, &|p| p.cpu_us_per_request),
        forwarded_cpu_us_per_request: cpu(CpuPath::Forwarded, &|p| p.cpu_us_per_request),
        forwarded_after_switch_cpu_us_per_request: cpu(CpuPath::AfterSwitch, &|p| {
            p.cpu_us_per_request
        }),
        direct_cores_percent: cpu(CpuPath::Direct, &|p| p.cores_percent),
        forwarded_cores_percent: cpu(CpuPath::Forwarded, &|p| p.cores_percent),
        forwarded_after_switch_cores_percent: cpu(CpuPath::AfterSwitch, &|p| p.cores_percent),
        ok: !runs.is_empty() && good.len() == runs.len(),
        runs,
    }
}

/// A phase of a side-by-side run's `cpu_time`.
#[derive(Clone, Copy)]
enum CpuPath {
    /// First I/O → directed.
    Direct,
    /// Directed → the workload's end.
    Forwarded,
    /// First forwarded completion → the workload's end.
    AfterSwitch,
}

/// A run's CPU time in phase `path`.
fn cpu_phase(r: &HandoffRun, path: CpuPath) -> Option<&crate::cputime::CpuPhase> {
    let c = r.cpu_time.as_ref()?;
    match path {
        CpuPath::Direct => c.direct.as_ref(),
        CpuPath::Forwarded => c.forwarded.as_ref(),
        CpuPath::AfterSwitch => c.forwarded_after_switch.as_ref(),
    }
}

fn ratio(num: Option<u64>, den: Option<u64>) -> Option<f64> {
    match (num, den) {
        (Some(n), Some(d)) if d > 0 => Some(round(n as f64 / d as f64, 3)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios() {
        assert_eq!(ratio(Some(9), Some(10)), Some(0.9));
        assert_eq!(ratio(Some(9), Some(0)), None);
        assert_eq!(ratio(None, Some(3)), None);
    }

    /// The report's `handoffs.phases` holds every bench span under its bench name.
    #[test]
    fn phase_summaries_name_every_bench_span() {
        let p = PhaseTimes::from_record(Some(&handoff::tests::full_record()));
        let m = phase_summaries(&[p, p]);
        let mut names: Vec<&str> = handoff::bench_spans().filter_map(|s| s.bench).collect();
        names.sort_unstable();
        assert_eq!(m.keys().map(String::as_str).collect::<Vec<_>>(), names);
        for span in handoff::bench_spans() {
            let s = m[span.bench.unwrap()];
            assert_eq!(Some(s.p50), p.get(span));
        }
        assert!(phase_summaries(&[PhaseTimes::default()]).is_empty());
    }
}
