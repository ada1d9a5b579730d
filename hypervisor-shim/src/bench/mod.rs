//! `hypervisor-shim bench`: the figures of issue 4 from one invocation, on one QEMU and one
//! accelerator, with progress on stderr, a table on stdout, a JSON report and a timeline plot.
//!
//! Steps (each reported as it runs):
//! 1. **direct runs** ([`crate::run`], `null-co`): QEMU start → first I/O, and direct-path IOPS
//!    per queue depth (these also calibrate the switch point of step 3);
//! 2. **side by side** ([`handoff`], `migrate --mode none`): per disk (`null-co`, a file on
//!    tmpfs) and queue depth (1, 32) one handoff run with the switch 20 % into the workload:
//!    port 1 = direct, port 2 = forwarded, the same QEMU processes, no migration in between;
//! 3. **repeated handoffs** (`migrate --mode live|save`, alternating; QD 32, a file on tmpfs,
//!    verified): blackout and phases (median, p99, max), migration downtime and total time;
//! 4. **idle guests** ([`idle`]): CPU use of a waiting peer and a waiting owner;
//! 5. **the redirector** ([`redirector`]): `cargo bench -p baton-core --bench redirector`;
//! 6. the targets, the table, the JSON and the plot ([`plot`]) of one live handoff.
//!
//! A failed run is recorded (`failures`, `ok: false`) and the benchmark goes on; only set-up
//! problems (no QEMU, no kernel) stop it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;

use crate::migrate::{MigrateError, Mode, Switch};
use crate::report::{PortStatsReport, RunReport};
use crate::run::{self, AccelChoice, BackendKind, RunConfig, RunError};

pub mod handoff;
pub mod idle;
pub mod plot;
pub mod redirector;
pub mod stats;

use handoff::{Common, Disk, HandoffRun, Plan};
use stats::{Summary, round};

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

/// Figures of one queue depth over the direct runs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DepthResult {
    /// Queue depth.
    pub qd: u16,
    /// Guest IOPS of every run.
    pub iops: Vec<u64>,
    /// QEMU spawn → first I/O of every run, in ms.
    pub boot_ms: Vec<f64>,
}

/// The direct runs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DirectRuns {
    /// Writes per run.
    pub writes_per_run: u64,
    /// Per queue depth.
    pub depths: Vec<DepthResult>,
}

/// Direct vs forwarded: one handoff run per repetition, figures are medians over them.
#[derive(Debug, Clone, Serialize)]
pub struct SideBySide {
    /// `null-co` or `tmpfs-file`.
    pub disk: String,
    /// Queue depth.
    pub qd: u16,
    /// Writes in the run.
    pub writes: u64,
    /// The owner asked for the handoff after this many writes.
    pub switch_after_writes: u64,
    /// Successful repetitions (the figures below are medians over them).
    pub reps: usize,
    /// Port 1: direct (virtio-blk); each field the median over the repetitions.
    pub direct: Option<PortStatsReport>,
    /// Port 2: forwarded over the ring through the peer; medians.
    pub forwarded: Option<PortStatsReport>,
    /// Forwarded IOPS / direct IOPS (median of the repetitions' ratios).
    pub iops_ratio: Option<f64>,
    /// Forwarded p50 latency / direct p50 latency (median of the repetitions' ratios; a p50
    /// below the histogram's 1 µs resolution counts as 1 µs).
    pub p50_latency_ratio: Option<f64>,
    /// Forwarded p99 latency / direct p99 latency (median of the repetitions' ratios).
    pub p99_latency_ratio: Option<f64>,
    /// Smallest and largest IOPS ratio of the repetitions.
    pub iops_ratio_range: Option<(f64, f64)>,
    /// Smallest and largest p50 latency ratio of the repetitions.
    pub p50_latency_ratio_range: Option<(f64, f64)>,
    /// The handoff blackout, ms (median).
    pub blackout_ms: Option<f64>,
    /// Every repetition succeeded.
    pub ok: bool,
    /// Every repetition.
    pub runs: Vec<HandoffRun>,
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
        ok: !runs.is_empty() && good.len() == runs.len(),
        runs,
    }
}

/// Blackout and phases over the repeated handoffs.
#[derive(Debug, Clone, Serialize)]
pub struct HandoffStats {
    /// Handoffs run.
    pub count: usize,
    /// Of which succeeded.
    pub ok: usize,
    /// Disk, queue depth and writes of each.
    pub workload: String,
    /// The blackout (last port-1 → first port-2 completion), ms.
    pub blackout_ms: Option<Summary>,
    /// The longest gap anywhere in each run (the guest's `max_gap_us`), ms.
    pub max_gap_ms: Option<Summary>,
    /// Each phase, ms.
    pub phases: BTreeMap<String, Summary>,
    /// Every run.
    pub runs: Vec<HandoffRun>,
}

/// Migration figures of one mode.
#[derive(Debug, Clone, Serialize)]
pub struct MigrationStats {
    /// Runs with figures.
    pub runs: usize,
    /// QEMU's `downtime`, ms.
    pub downtime_ms: Option<Summary>,
    /// QEMU's `total-time`, ms.
    pub total_ms: Option<Summary>,
    /// `migrate` issued → the owner runs again (destination or restored QEMU), ms.
    pub migrate_to_running_ms: Option<Summary>,
}

/// A target of issue 4 and how this run compares.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    /// The figure.
    pub name: String,
    /// The target, as text.
    pub target: String,
    /// The measured value.
    pub value: Option<f64>,
    /// Whether it is met (`null`: not measurable on this host).
    pub met: Option<bool>,
    /// What bounds it, when missed (or why it cannot be measured).
    pub note: String,
}

/// The host.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// CPUs available.
    pub nproc: usize,
    /// `/proc/cpuinfo` model name.
    pub cpu_model: String,
    /// Host kernel release.
    pub host_kernel: String,
    /// `/proc/loadavg` when the benchmark started.
    pub loadavg_before: String,
    /// `/proc/loadavg` when it ended.
    pub loadavg_after: String,
}

/// The benchmark's report.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// `bench`.
    pub scenario: &'static str,
    /// Every run succeeded and every headline figure was obtained.
    pub ok: bool,
    /// Why not.
    pub failures: Vec<String>,
    /// Quick mode.
    pub quick: bool,
    /// Handoff blackout, median over the repeated handoffs, ms.
    pub blackout_ms_p50: Option<f64>,
    /// Handoff blackout, p99 (nearest rank), ms.
    pub blackout_ms_p99: Option<f64>,
    /// Handoff blackout, max, ms.
    pub blackout_ms_max: Option<f64>,
    /// Forwarded / direct IOPS at QD 32 (`null-co`).
    pub forwarded_over_direct_iops_qd32: Option<f64>,
    /// Forwarded / direct p50 latency at QD 1 (`null-co`).
    pub forwarded_over_direct_latency_qd1: Option<f64>,
    /// Live migration downtime of the owner (128 MiB), median, ms.
    pub migration_downtime_ms: Option<f64>,
    /// QEMU start → the guest's first I/O, median of the direct runs, ms.
    pub boot_to_first_io_ms: Option<f64>,
    /// An idle guest (the peer waiting for its ring) in percent of one core.
    pub idle_cpu_percent: Option<f64>,
    /// The redirector vs the `Mutex<VecDeque>` design at 4 threads (`{"direct", "forwarding"}`).
    pub redirector_vs_mutex_4_threads: Option<Value>,
    /// The targets.
    pub targets: Vec<Target>,
    /// Accelerator.
    pub accel: String,
    /// Why.
    pub accel_reason: String,
    /// QEMU version.
    pub qemu_version: String,
    /// Guest machine.
    pub guest: String,
    /// Host.
    pub machine: Machine,
    /// Direct vs forwarded.
    pub side_by_side: Vec<SideBySide>,
    /// The repeated handoffs.
    pub handoffs: HandoffStats,
    /// Migration figures by mode (`live`, `save`).
    pub migration: BTreeMap<String, MigrationStats>,
    /// The direct runs.
    pub direct: DirectRuns,
    /// Idle guests.
    pub idle: Option<idle::IdleResult>,
    /// Why the idle measurement failed.
    pub idle_error: Option<String>,
    /// The redirector bench.
    pub redirector: Option<redirector::RedirectorResult>,
    /// The plot: what it shows.
    pub plot: Option<plot::PlotInfo>,
    /// Why there is no plot.
    pub plot_error: Option<String>,
    /// Where the plot was written.
    pub plot_file: Option<String>,
    /// Wall time, s.
    pub elapsed_s: f64,
    /// The plot's SVG text (written to a file by the caller).
    #[serde(skip)]
    pub plot_svg: Option<String>,
}

/// Errors that stop the benchmark.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// a direct run could not be set up
    #[error(transparent)]
    Run(#[from] RunError),
    /// a handoff run could not be set up
    #[error(transparent)]
    Migrate(#[from] MigrateError),
    /// interrupted
    #[error("interrupted by a signal")]
    Interrupted,
}

struct Progress {
    t0: Instant,
    print: bool,
}

impl Progress {
    fn say(&self, what: impl AsRef<str>) {
        if self.print {
            eprintln!(
                "[bench {:7.1} s] {}",
                self.t0.elapsed().as_secs_f64(),
                what.as_ref()
            );
        }
    }
}

fn ratio(num: Option<u64>, den: Option<u64>) -> Option<f64> {
    match (num, den) {
        (Some(n), Some(d)) if d > 0 => Some(round(n as f64 / d as f64, 3)),
        _ => None,
    }
}

fn read_trim(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

fn machine() -> Machine {
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_owned())
        })
        .unwrap_or_default();
    Machine {
        nproc: std::thread::available_parallelism().map_or(0, usize::from),
        cpu_model,
        host_kernel: read_trim("/proc/sys/kernel/osrelease"),
        loadavg_before: read_trim("/proc/loadavg"),
        loadavg_after: String::new(),
    }
}

fn check_interrupt() -> Result<(), BenchError> {
    if run::interrupted() {
        Err(BenchError::Interrupted)
    } else {
        Ok(())
    }
}

/// Runs the benchmark.
pub fn bench(cfg: &BenchConfig) -> Result<BenchReport, BenchError> {
    let p = Progress {
        t0: Instant::now(),
        print: cfg.progress,
    };
    let (accel, accel_reason) = cfg.accel.resolve().map_err(RunError::Qemu)?;
    let qemu_bin = crate::qemu::locate_qemu(&cfg.qemu).map_err(RunError::Qemu)?;
    let kernel = match &cfg.kernel {
        Some(k) => k.clone(),
        None => run::default_kernel()?,
    };
    if !kernel.is_file() {
        return Err(RunError::NoKernel(kernel).into());
    }
    let mut failures = Vec::new();
    let mut machine = machine();
    p.say(format!(
        "accel {} ({accel_reason}); {} CPUs ({}), load {}{}",
        accel.as_str(),
        machine.nproc,
        machine.cpu_model,
        machine.loadavg_before,
        if cfg.quick { "; quick mode" } else { "" }
    ));
    let mut qemu_version = String::new();

    // 1. Direct runs.
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
                kernel: Some(kernel.clone()),
                qemu: cfg.qemu.clone(),
                workdir: None,
                keep: false,
            };
            let r: RunReport = run::run(&rc)?.report;
            if let Some(v) = &r.qemu_version {
                qemu_version.clone_from(v);
            }
            if !r.ok {
                failures.push(format!("direct run qd {qd}: {}", r.failures.join("; ")));
                p.say(format!(
                    "direct run QD {qd}: FAILED: {}",
                    r.failures.join("; ")
                ));
                continue;
            }
            d.iops.push(r.iops.unwrap_or(0));
            d.boot_ms.push(r.boot_ms.unwrap_or(f64::NAN));
            p.say(format!(
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

    let common = Common {
        accel: cfg.accel,
        kernel: Some(kernel.clone()),
        qemu: cfg.qemu.clone(),
        timeout: cfg.timeout,
    };

    // 2. Side by side.
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
                };
                let o = handoff::run(&plan, &common)?;
                if let Some(v) = &o.report.qemu_version {
                    qemu_version.clone_from(v);
                }
                let r = o.run;
                if !r.ok {
                    failures.push(format!(
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
                p.say(format!(
                    "side by side {} QD {qd} ({}/{}){}: direct {}; forwarded {}; blackout {} ms",
                    disk.as_str(),
                    rep + 1,
                    cfg.side_reps,
                    if r.ok { "" } else { " (FAILED)" },
                    port(&r.port1),
                    port(&r.port2),
                    r.blackout_ms.map_or("-".into(), |b| format!("{b:.1}"))
                ));
                reps.push(r);
            }
            side.push(side_by_side(disk, qd, blocks * u64::from(passes), reps));
        }
    }
    let pick = |qd: u16| {
        side.iter()
            .find(|s| s.disk == Disk::Null.as_str() && s.qd == qd)
    };
    let forwarded_over_direct_iops_qd32 = pick(32).and_then(|s| s.iops_ratio);
    let forwarded_over_direct_latency_qd1 = pick(1).and_then(|s| s.p50_latency_ratio);

    // 3. Repeated handoffs.
    let (blocks, passes) = cfg.handoff_workload();
    let writes = blocks * u64::from(passes);
    let switch_ms = (writes as f64 * 0.2 / direct_iops as f64 * 1000.0)
        .round()
        .max(20.0) as u64;
    p.say(format!(
        "{} handoffs (live and save alternating), QD 32, {writes} writes on a tmpfs file, switch {switch_ms} ms after the first I/O (~20 % in at {direct_iops} IOPS)",
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
        };
        let o = handoff::run(&plan, &common)?;
        let r = &o.run;
        if !r.ok {
            failures.push(format!(
                "handoff {} ({}): {}",
                i + 1,
                mode.as_str(),
                r.failures.join("; ")
            ));
        }
        let f = |x: Option<f64>| x.map_or("-".into(), |v| format!("{v:.1}"));
        p.say(format!(
            "handoff {}/{} {}{}: blackout {} ms (handoff {} ms: drain {}, release {}, to peer ready {}, to first forwarded {}); migration downtime {} ms, total {} ms",
            i + 1,
            cfg.handoffs,
            mode.as_str(),
            if r.ok { "" } else { " (FAILED)" },
            f(r.blackout_ms),
            f(r.phases.handoff_ms),
            f(r.phases.directed_to_drained_ms),
            f(r.phases.drained_to_deleted_ms),
            f(r.phases.deleted_to_attached_ms),
            f(r.phases.attached_to_first_forwarded_ms),
            r.migration_downtime_ms.map_or("-".into(), |v| v.to_string()),
            r.migration_total_ms.map_or("-".into(), |v| v.to_string()),
        ));
        if mode == Mode::Live && r.ok {
            plot_candidates.push((r.blackout_ms.unwrap_or(f64::NAN), o.report.clone()));
        }
        runs.push(o.run);
    }
    let good: Vec<&HandoffRun> = runs.iter().filter(|r| r.ok).collect();
    let collect = |f: &dyn Fn(&HandoffRun) -> Option<f64>| -> Vec<f64> {
        good.iter().filter_map(|r| f(r)).collect()
    };
    let blackout = Summary::of(&collect(&|r| r.blackout_ms));
    let mut phases = BTreeMap::new();
    for (k, _) in handoff::PhaseTimes::default().named() {
        let v = collect(&|r| {
            r.phases
                .named()
                .iter()
                .find(|(n, _)| *n == k)
                .and_then(|(_, v)| *v)
        });
        if let Some(s) = Summary::of(&v) {
            phases.insert(k.to_owned(), s);
        }
    }
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
                migrate_to_running_ms: Summary::of(&v(&|r| r.phases.migration_ms)),
            },
        );
    }
    let migration_downtime_ms = migration
        .get("live")
        .and_then(|m| m.downtime_ms)
        .map(|s| s.p50);
    let handoffs = HandoffStats {
        count: runs.len(),
        ok: good.len(),
        workload: format!("{} QD 32, {writes} writes", Disk::Tmpfs.as_str()),
        blackout_ms: blackout,
        max_gap_ms: Summary::of(&collect(&|r| r.max_gap_ms)),
        phases,
        runs: runs.clone(),
    };

    // 4. Idle guests.
    check_interrupt()?;
    p.say(format!(
        "idle guests: a peer waiting for its ring and an owner waiting for a disk, sampled over {:?}",
        cfg.idle
    ));
    let (idle, idle_error) = match tempfile::Builder::new()
        .prefix("baton-bench-idle-")
        .tempdir()
    {
        Ok(dir) => match idle::measure(&qemu_bin, &kernel, accel, cfg.idle, dir.path()) {
            Ok(r) => {
                p.say(format!(
                    "idle: peer {:.2} %, owner {:.2} % of one core",
                    r.peer_waiting_for_ring_percent, r.owner_waiting_for_disk_percent
                ));
                (Some(r), None)
            }
            Err(e) => {
                p.say(format!("idle: FAILED: {e}"));
                (None, Some(e.to_string()))
            }
        },
        Err(e) => (None, Some(format!("temporary directory: {e}"))),
    };
    let idle_cpu_percent = idle.as_ref().map(|r| r.peer_waiting_for_ring_percent);

    // 5. The redirector.
    check_interrupt()?;
    let redirector = if cfg.redirector {
        p.say(format!(
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
            (Some(v), None) => p.say(format!("redirector vs Mutex at 4 threads: {v}")),
            (_, e) => p.say(format!(
                "redirector: unavailable: {}",
                e.as_deref().unwrap_or("?")
            )),
        }
        Some(r)
    } else {
        None
    };
    let redirector_vs_mutex_4_threads = redirector
        .as_ref()
        .and_then(|r| r.vs_mutex_4_threads.clone());

    // 6. The plot: the live run whose blackout is nearest the median.
    let (mut plot_info, mut plot_error, mut plot_svg) = (None, None, None);
    let med = blackout.map_or(0.0, |b| b.p50);
    plot_candidates.sort_by(|a, b| (a.0 - med).abs().total_cmp(&(b.0 - med).abs()));
    match plot_candidates.first() {
        Some((_, rep)) => match plot::svg(rep) {
            Ok((svg, info)) => {
                plot_svg = Some(svg);
                plot_info = Some(info);
            }
            Err(e) => plot_error = Some(e),
        },
        None => plot_error = Some("no successful live handoff to plot".into()),
    }

    machine.loadavg_after = read_trim("/proc/loadavg");
    let mut report = BenchReport {
        scenario: "bench",
        ok: false,
        failures,
        quick: cfg.quick,
        blackout_ms_p50: blackout.map(|b| round(b.p50, 1)),
        blackout_ms_p99: blackout.map(|b| round(b.p99, 1)),
        blackout_ms_max: blackout.map(|b| round(b.max, 1)),
        forwarded_over_direct_iops_qd32,
        forwarded_over_direct_latency_qd1,
        migration_downtime_ms,
        boot_to_first_io_ms,
        idle_cpu_percent,
        redirector_vs_mutex_4_threads,
        targets: Vec::new(),
        accel: accel.as_str().into(),
        accel_reason,
        qemu_version,
        guest: "-machine pc, 128 MiB, qboot, 1 vCPU; 4 KiB writes".into(),
        machine,
        side_by_side: side,
        handoffs,
        migration,
        direct,
        idle,
        idle_error,
        redirector,
        plot: plot_info,
        plot_error,
        plot_file: None,
        elapsed_s: round(p.t0.elapsed().as_secs_f64(), 1),
        plot_svg,
    };
    report.targets = targets(&report);
    for (name, v) in [
        ("blackout_ms_p50", report.blackout_ms_p50),
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
    p.say(format!(
        "done in {:.1} s{}",
        report.elapsed_s,
        if report.ok { "" } else { " (with failures)" }
    ));
    Ok(report)
}

/// The targets against the report.
fn targets(r: &BenchReport) -> Vec<Target> {
    let ph = |k: &str| r.handoffs.phases.get(k).map(|s| s.p50);
    let f = |x: Option<f64>| x.map_or("?".into(), |v| format!("{v:.1}"));
    let tcg = r.accel == "tcg";
    let mut out = Vec::new();
    let breakdown = format!(
        "medians: port-1 drain {} ms (before the blackout); in it: QEMU releases the drive {} ms \
         after `drained`, the shim acts {} ms later, device_add ∥ the owner's `released` {} ms, \
         the peer's PCI + virtio-blk bring-up {} ms, peer ready → first forwarded {} ms",
        f(ph("directed_to_drained_ms")),
        f(ph("drained_to_deleted_ms")),
        f(ph("shim_reaction_ms")),
        f(ph("to_disk_attached_ms")),
        f(ph("peer_init_ms")),
        f(ph("attached_to_first_forwarded_ms")),
    );
    out.push(Target {
        name: "handoff blackout, max".into(),
        target: "≤ 5 ms under KVM".into(),
        value: r.blackout_ms_max,
        met: if tcg {
            None
        } else {
            r.blackout_ms_max.map(|v| v <= 5.0)
        },
        note: if tcg {
            format!(
                "measured under TCG ({}); the target is for KVM. {breakdown}",
                r.accel_reason
            )
        } else {
            breakdown
        },
    });
    out.push(Target {
        name: "forwarded / direct IOPS, QD 32 (null-co)".into(),
        target: "≥ 0.9".into(),
        value: r.forwarded_over_direct_iops_qd32,
        met: r.forwarded_over_direct_iops_qd32.map(|v| v >= 0.9),
        note: format!(
            "port 1 before the switch, port 2 after it, same QEMU processes; forwarding keeps \
             three threads busy (the owner's vCPU, the peer's vCPU, the peer QEMU's I/O thread) \
             where direct I/O keeps two, on {} host CPUs; runs' range {}",
            r.machine.nproc,
            r.side_by_side
                .iter()
                .find(|s| s.disk == Disk::Null.as_str() && s.qd == 32)
                .and_then(|s| s.iops_ratio_range)
                .map_or("?".into(), |(a, b)| format!("{a:.2}–{b:.2}"))
        ),
    });
    out.push(Target {
        name: "forwarded / direct p50 latency, QD 1 (null-co)".into(),
        target: "≤ 1.5".into(),
        value: r.forwarded_over_direct_latency_qd1,
        met: r.forwarded_over_direct_latency_qd1.map(|v| v <= 1.5),
        note: format!(
            "a forwarded request crosses the ring twice and goes through the peer's virtio queue; \
             at QD 1 the owner's vCPU, the peer's vCPU and the peer QEMU's I/O thread all want a \
             core ({} CPUs here); p99 ratio {}",
            r.machine.nproc,
            f(r.side_by_side
                .iter()
                .find(|s| s.disk == Disk::Null.as_str() && s.qd == 1)
                .and_then(|s| s.p99_latency_ratio))
        ),
    });
    out.push(Target {
        name: "live migration downtime, 128 MiB guest (median)".into(),
        target: "≤ 20 ms".into(),
        value: r.migration_downtime_ms,
        met: r.migration_downtime_ms.map(|v| v <= 20.0),
        note: format!(
            "QEMU's `downtime` of the live migration (x-ignore-shared; max {})",
            f(r.migration
                .get("live")
                .and_then(|m| m.downtime_ms)
                .map(|s| s.max))
        ),
    });
    out.push(Target {
        name: "idle guest CPU (peer waiting for its ring)".into(),
        target: "≤ 5 % of a core".into(),
        value: r.idle_cpu_percent,
        met: r.idle_cpu_percent.map(|v| v <= 5.0),
        note: r.idle.as_ref().map_or_else(
            || r.idle_error.clone().unwrap_or_default(),
            |i| {
                format!(
                    "owner waiting for a disk: {:.2} %",
                    i.owner_waiting_for_disk_percent
                )
            },
        ),
    });
    let red = |k: &str| {
        r.redirector_vs_mutex_4_threads
            .as_ref()
            .and_then(|v| v.get(k))
            .and_then(Value::as_f64)
    };
    let worst = match (red("direct"), red("forwarding")) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    out.push(Target {
        name: "redirector vs Mutex<VecDeque>, 4 threads (worse of direct, forwarding)".into(),
        target: "≥ 3×".into(),
        value: worst.map(|v| round(v, 2)),
        met: worst.map(|v| v >= 3.0),
        note: match (red("direct"), red("forwarding")) {
            (Some(a), Some(b)) => format!(
                "direct {a:.2}×, forwarding {b:.2}×; {} CPUs for 4 threads{}",
                r.machine.nproc,
                if r.machine.nproc < 4 {
                    " (time-sliced, not 4-way contention)"
                } else {
                    ""
                }
            ),
            _ => r
                .redirector
                .as_ref()
                .and_then(|x| x.error.clone())
                .unwrap_or_else(|| "not run".into()),
        },
    });
    out
}

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

/// Writes the plot to `plot` (default: `handoff-timeline.svg` next to `json`) and the report as
/// JSON to `json`; returns the plot's path, if one was written.
pub fn write_outputs(
    report: &mut BenchReport,
    json: Option<&Path>,
    plot: Option<&Path>,
) -> std::io::Result<Option<PathBuf>> {
    let plot_path = plot.map(Path::to_path_buf).or_else(|| {
        json.map(|j| {
            j.parent()
                .unwrap_or_else(|| Path::new("."))
                .join("handoff-timeline.svg")
        })
    });
    let mut written = None;
    if let (Some(svg), Some(p)) = (&report.plot_svg, plot_path) {
        std::fs::write(&p, svg)?;
        report.plot_file = Some(p.display().to_string());
        written = Some(p);
    }
    if let Some(path) = json {
        let text = serde_json::to_string_pretty(report).map_err(std::io::Error::other)?;
        std::fs::write(path, text + "\n")?;
    }
    Ok(written)
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
}
