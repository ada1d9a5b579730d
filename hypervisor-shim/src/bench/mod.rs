//! `hypervisor-shim bench`: the figures of issues 4 and 12 from one invocation, on one QEMU and
//! one accelerator, with progress on stderr, a table on stdout, a JSON report, a timeline plot
//! and the cost curves' SVG (`cost-curves.svg`, next to the plot).
//!
//! Steps (each reported as it runs):
//! 1. **direct runs** ([`crate::run`], `null-co`): QEMU start → first I/O, and direct-path IOPS
//!    per queue depth (these also calibrate the switch point of step 3);
//! 2. **side by side** ([`handoff`], `migrate --mode none`): per disk (`null-co`, a file on
//!    tmpfs) and queue depth (1, 32) one handoff run with the switch 20 % into the workload:
//!    port 1 = direct, port 2 = forwarded, the same QEMU processes, no migration in between.
//!    Each run also gives the host CPU time of both QEMUs per request of each path
//!    ([`crate::cputime`]: first I/O → handoff directed → the owner's workload ended);
//! 3. **repeated handoffs** (`migrate --mode live|save`, alternating, each with a failback; QD 32,
//!    a file on tmpfs, verified): handoff and failback blackout and phases (median, p99, max),
//!    migration downtime and total time;
//! 4. **how the costs grow** ([`curves`]): the blackout against queue depth (1, 8, 32, 64) and
//!    against the requests in flight at the switch, the live migration's downtime against guest
//!    RAM (128 MiB, 512 MiB, 2 GiB);
//! 5. **idle guests** ([`idle`]): CPU use of a waiting peer and a waiting owner;
//! 6. **the redirector** ([`redirector`]): `cargo bench -p baton-core --bench redirector`;
//! 7. the targets of issue 12 (`targets`: under KVM the blackout target is 2 ms), the table, the
//!    JSON, the plot ([`plot`]) of one live handoff and the cost curves' SVG.
//!
//! A failed run is recorded (`failures`, `ok: false`) and the benchmark goes on; only set-up
//! problems (no QEMU, no kernel) stop it.
//!
//! Layout: this file holds the configuration and the order of the steps; `runs` the steps
//! (the curves' in [`curves`], their SVG in `curves_svg`), [`handoff`] one handoff run and its figures (its phases from the run's handoff record,
//! [`crate::steps`]), [`report`] the report's types, `targets` the targets, `table` the
//! table on stdout, [`stats`] medians and percentiles.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::migrate::MigrateError;
use crate::progress::Progress;
use crate::setup::{self, AccelChoice, GUEST_MEMORY_MIB, SetupError};

pub mod curves;
mod curves_svg;
pub mod handoff;
pub mod hosts;
pub mod idle;
pub mod plot;
pub mod redirector;
pub mod report;
mod runs;
pub mod stats;
mod table;
mod targets;

pub use report::{
    BenchReport, DepthResult, DirectRuns, HandoffStats, Machine, MigrationStats, SideBySide,
    Target, write_outputs,
};

use handoff::{Common, Disk};
use runs::Ctx;
use stats::round;

/// Everything `bench` needs.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// Accelerator.
    pub accel: AccelChoice,
    /// Quick mode: tiny workloads, few handoffs, the quick redirector bench (a smoke check).
    pub quick: bool,
    /// Queue depths of the direct runs.
    pub depths: Vec<u16>,
    /// Direct runs per queue depth.
    pub runs: u32,
    /// Blocks per direct run.
    pub blocks: u64,
    /// Passes per direct run.
    pub passes: u32,
    /// Repeated handoffs (live and save alternating).
    pub handoffs: u32,
    /// Repetitions of each side-by-side run (disk × queue depth).
    pub side_reps: u32,
    /// Length of the idle CPU sample.
    pub idle: Duration,
    /// Run the redirector bench.
    pub redirector: bool,
    /// Hard timeout of each run.
    pub timeout: Duration,
    /// Guest kernel.
    pub kernel: Option<PathBuf>,
    /// QEMU binary.
    pub qemu: PathBuf,
    /// Print progress on stderr.
    pub progress: bool,
}

impl BenchConfig {
    /// Workload of a side-by-side run at `qd`: (blocks, passes).
    fn side_workload(&self, qd: u16) -> (u64, u32) {
        match (self.quick, qd) {
            (true, 1) => (512, 4),
            (true, _) => (512, 8),
            (false, 1) => (2048, 4),
            (false, _) => (2048, 8),
        }
    }

    /// Workload of a repeated handoff: (blocks, passes).
    fn handoff_workload(&self) -> (u64, u32) {
        if self.quick { (1024, 16) } else { (2048, 16) }
    }
}

/// Errors that stop the benchmark.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// a direct run could not be set up
    #[error(transparent)]
    Run(#[from] SetupError),
    /// a handoff run could not be set up
    #[error(transparent)]
    Migrate(#[from] MigrateError),
    /// interrupted
    #[error("interrupted by a signal")]
    Interrupted,
}

fn check_interrupt() -> Result<(), BenchError> {
    if setup::interrupted() {
        Err(BenchError::Interrupted)
    } else {
        Ok(())
    }
}

/// Runs the benchmark.
pub fn bench(cfg: &BenchConfig) -> Result<BenchReport, BenchError> {
    let mut ctx = Ctx {
        cfg,
        p: Progress::bench(Instant::now(), cfg.progress),
        failures: Vec::new(),
        qemu_version: String::new(),
    };
    let (accel, accel_reason) = cfg.accel.resolve().map_err(SetupError::Qemu)?;
    let qemu_bin = crate::qemu::locate_qemu(&cfg.qemu).map_err(SetupError::Qemu)?;
    let kernel = match &cfg.kernel {
        Some(k) => k.clone(),
        None => setup::default_kernel()?,
    };
    if !kernel.is_file() {
        return Err(SetupError::NoKernel(kernel).into());
    }
    let mut machine = report::machine();
    ctx.p.say(format!(
        "accel {} ({accel_reason}); {} CPUs ({}), load {}{}",
        accel.as_str(),
        machine.nproc,
        machine.cpu_model,
        machine.loadavg_before,
        if cfg.quick { "; quick mode" } else { "" }
    ));

    // 1. Direct runs.
    let (direct, boot_to_first_io_ms, direct_iops) = runs::direct(&mut ctx, &kernel)?;
    let common = Common {
        accel: cfg.accel,
        kernel: Some(kernel.clone()),
        qemu: cfg.qemu.clone(),
        timeout: cfg.timeout,
    };
    // 2. Side by side.
    let side = runs::side_by_side_runs(&mut ctx, &common)?;
    let pick = |qd: u16| {
        side.iter()
            .find(|s| s.disk == Disk::Null.as_str() && s.qd == qd)
    };
    let forwarded_over_direct_iops_qd32 = pick(32).and_then(|s| s.iops_ratio);
    let forwarded_over_direct_latency_qd1 = pick(1).and_then(|s| s.p50_latency_ratio);
    let cpu_per_request = |qd: u16| {
        let s = pick(qd)?;
        let (d, f) = (
            s.direct_cpu_us_per_request?,
            s.forwarded_cpu_us_per_request?,
        );
        Some(serde_json::json!({"direct": d, "forwarded": f}))
    };
    let (cpu_us_per_request_qd32, cpu_us_per_request_qd1) =
        (cpu_per_request(32), cpu_per_request(1));
    // 3. Repeated handoffs.
    let runs::Repeated {
        stats: handoffs,
        migration,
        plot_candidates,
    } = runs::repeated_handoffs(&mut ctx, &common, direct_iops)?;
    let blackout = handoffs.blackout_ms;
    let failback = handoffs.failback_blackout_ms;
    // 4. How the costs grow.
    let (blackout_vs_qd, qd_workload, qd_runs) = curves::blackout_vs_qd(&mut ctx, &common)?;
    let (blackout_vs_inflight, blackout_vs_inflight_bins) = curves::blackout_vs_inflight(
        side.iter()
            .flat_map(|s| s.runs.iter())
            .chain(handoffs.runs.iter())
            .chain(qd_runs.iter()),
    );
    let downtime_vs_ram = curves::downtime_vs_ram(&mut ctx, &common);
    let curves = curves::CostCurves {
        blackout_vs_qd,
        qd_workload,
        blackout_vs_inflight,
        blackout_vs_inflight_bins,
        downtime_vs_ram,
    };
    let migration_downtime_ms = migration
        .get("live")
        .and_then(|m| m.downtime_ms)
        .map(|s| s.p50);
    // 5. Idle guests.
    check_interrupt()?;
    let (idle, idle_error) = runs::idle_guests(&mut ctx, &qemu_bin, &kernel, accel);
    let idle_cpu_percent = idle.as_ref().map(|r| r.peer_waiting_for_ring_percent);
    // 6. The redirector.
    check_interrupt()?;
    let redirector = runs::redirector_bench(&mut ctx);
    let redirector_vs_mutex_4_threads = redirector
        .as_ref()
        .and_then(|r| r.vs_mutex_4_threads.clone());
    // 7. The plot: the live run whose blackout is nearest the median.
    let (plot_info, plot_error, plot_svg) =
        runs::plot_nearest(plot_candidates, blackout.map_or(0.0, |b| b.p50));

    machine.loadavg_after = report::read_trim("/proc/loadavg");
    let mut report = BenchReport {
        scenario: "bench",
        ok: false,
        failures: std::mem::take(&mut ctx.failures),
        quick: cfg.quick,
        blackout_ms_p50: blackout.map(|b| round(b.p50, 1)),
        blackout_ms_p99: blackout.map(|b| round(b.p99, 1)),
        blackout_ms_max: blackout.map(|b| round(b.max, 1)),
        failback_blackout_ms_p50: failback.map(|b| round(b.p50, 1)),
        failback_blackout_ms_max: failback.map(|b| round(b.max, 1)),
        forwarded_over_direct_iops_qd32,
        forwarded_over_direct_latency_qd1,
        cpu_us_per_request_qd32,
        cpu_us_per_request_qd1,
        migration_downtime_ms,
        boot_to_first_io_ms,
        idle_cpu_percent,
        redirector_vs_mutex_4_threads,
        targets: Vec::new(),
        accel: accel.as_str().into(),
        accel_reason,
        qemu_version: std::mem::take(&mut ctx.qemu_version),
        guest: format!("-machine pc, {GUEST_MEMORY_MIB} MiB, qboot, 1 vCPU; 4 KiB writes"),
        machine,
        side_by_side: side,
        curves,
        handoffs,
        migration,
        direct,
        idle,
        idle_error,
        redirector,
        plot: plot_info,
        plot_error,
        plot_file: None,
        curves_file: None,
        elapsed_s: round(ctx.p.t0().elapsed().as_secs_f64(), 1),
        plot_svg,
    };
    report.targets = targets::targets(&report);
    for (name, v) in [
        ("blackout_ms_p50", report.blackout_ms_p50),
        ("failback_blackout_ms_p50", report.failback_blackout_ms_p50),
        (
            "forwarded_over_direct_iops_qd32",
            report.forwarded_over_direct_iops_qd32,
        ),
        (
            "forwarded_over_direct_latency_qd1",
            report.forwarded_over_direct_latency_qd1,
        ),
        ("migration_downtime_ms", report.migration_downtime_ms),
        ("boot_to_first_io_ms", report.boot_to_first_io_ms),
        ("idle_cpu_percent", report.idle_cpu_percent),
    ] {
        if v.is_none() {
            report.failures.push(format!("no figure for {name}"));
        }
    }
    report.ok = report.failures.is_empty();
    ctx.p.say(format!(
        "done in {:.1} s{}",
        report.elapsed_s,
        if report.ok { "" } else { " (with failures)" }
    ));
    Ok(report)
}
