//! `hypervisor-shim bench-hosts`: one host against two (issue 10; docs/design.md, "Across
//! hosts"). The same live cycle — handoff, migration, failback — runs on one host (the migration
//! over a Unix socket, the ring following the owner through /dev/shm) and across hosts
//! (`--cross-host`: network namespaces, the disk over NBD, the migration over TCP, port 2 drained
//! before the owner leaves), repeated and interleaved so that both sides see the same machine
//! load; then the cross-host migration's downtime against the owner's guest RAM. Figures are
//! medians (and max) over the repetitions, in ms, side by side. Not part of the default test suite;
//! BENCHMARKS.md records a run.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use serde::Serialize;

use crate::bench::stats::{Summary, round};
use crate::cli::{AccelArg, accel_choice};
use crate::migrate::{self, MigrateConfig, MigrateError, Mode, Switch};
use crate::report::MigrateReport;
use crate::setup::{AccelChoice, BackendKind, GUEST_MEMORY_MIB};

/// The guest RAM sizes of the downtime curve, in MiB.
pub const RAM_SIZES_MIB: [u32; 3] = [128, 512, 2048];

/// Options of `bench-hosts`.
#[derive(Debug, Args)]
pub struct HostsBenchArgs {
    /// Accelerator.
    #[arg(long, value_enum, default_value_t = AccelArg::Auto)]
    pub accel: AccelArg,
    /// Runs of each side (one host, two hosts), interleaved.
    #[arg(long, default_value_t = 5,
          value_parser = clap::value_parser!(u32).range(1..=50))]
    pub reps: u32,
    /// Write the JSON report here.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Hard timeout of each run, in seconds.
    #[arg(long, default_value_t = 180,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub timeout_secs: u64,
    /// Guest kernel ELF [default: next to the shim's build output].
    #[arg(long)]
    pub kernel: Option<PathBuf>,
    /// QEMU binary (name on PATH or path).
    #[arg(long, default_value = "qemu-system-x86_64")]
    pub qemu: PathBuf,
    /// No progress lines on stderr.
    #[arg(long)]
    pub quiet: bool,
}

/// What `bench-hosts` runs.
#[derive(Debug, Clone)]
pub struct HostsBenchConfig {
    /// Accelerator.
    pub accel: AccelChoice,
    /// Runs of each side.
    pub reps: u32,
    /// Hard timeout of each run.
    pub timeout: Duration,
    /// Guest kernel.
    pub kernel: Option<PathBuf>,
    /// QEMU binary.
    pub qemu: PathBuf,
    /// Progress lines on stderr.
    pub progress: bool,
}

impl HostsBenchArgs {
    /// The configuration these options describe.
    pub fn config(&self) -> HostsBenchConfig {
        HostsBenchConfig {
            accel: accel_choice(self.accel),
            reps: self.reps,
            timeout: Duration::from_secs(self.timeout_secs),
            kernel: self.kernel.clone(),
            qemu: self.qemu.clone(),
            progress: !self.quiet,
        }
    }
}

/// One side's figures over its runs (ms; `None` where no run gave the figure).
#[derive(Debug, Clone, Default, Serialize)]
pub struct SideFigures {
    /// Runs that passed (nothing lost, stale or duplicated; the failback completed).
    pub ok_runs: u32,
    /// The owner's failback blackout (its longest completion gap from `failback` to the first
    /// port-1 completion): on two hosts it spans the drain, the migration and the disk's arrival.
    pub failback_blackout_ms: Option<Summary>,
    /// The handoff's blackout (the owner's `BATON switch kind=handoff` gap).
    pub handoff_blackout_ms: Option<Summary>,
    /// QEMU's stop-and-copy.
    pub migration_downtime_ms: Option<Summary>,
    /// QEMU's whole migration.
    pub migration_total_ms: Option<Summary>,
}

/// The migration at one guest RAM size.
#[derive(Debug, Clone, Serialize)]
pub struct RamPoint {
    /// Guest RAM, MiB.
    pub guest_ram_mib: u32,
    /// The run passed.
    pub ok: bool,
    /// QEMU's stop-and-copy, ms.
    pub migration_downtime_ms: Option<u64>,
    /// QEMU's whole migration, ms.
    pub migration_total_ms: Option<u64>,
    /// The owner's failback blackout, ms.
    pub failback_blackout_ms: Option<f64>,
}

/// The `bench-hosts` report.
#[derive(Debug, Clone, Serialize)]
pub struct HostsBenchReport {
    /// Every run passed.
    pub ok: bool,
    /// What went wrong, per run.
    pub failures: Vec<String>,
    /// Accelerator used.
    pub accel: String,
    /// QEMU's version.
    pub qemu_version: Option<String>,
    /// Runs per side.
    pub reps: u32,
    /// The live cycle on one host.
    pub same_host: SideFigures,
    /// The same cycle across hosts.
    pub cross_host: SideFigures,
    /// Cross-host blackout over same-host blackout (medians).
    pub cross_over_same_blackout: Option<f64>,
    /// The cross-host migration against guest RAM.
    pub downtime_vs_ram: Vec<RamPoint>,
}

/// The live cycle both sides run: 2048 blocks × 8 passes at QD 32, the handoff 200 ms after the
/// first I/O, the failback at once after the migration.
fn cycle(cfg: &HostsBenchConfig, cross_host: bool, ram_mib: u32, seed: u64) -> MigrateConfig {
    MigrateConfig {
        mode: Mode::Live,
        backend: BackendKind::File,
        accel: cfg.accel,
        blocks: 2048,
        passes: 8,
        qd: 32,
        seed,
        switch: Switch::AfterMs(200),
        failback: true,
        failback_after_ms: 0,
        failback_request_at: 0,
        cycles: 1,
        peer_fault: baton_core::cmdline::Fault::None,
        destination_fault: migrate::DestinationFault::None,
        inject: None,
        cross_host,
        guest_memory_mib: ram_mib,
        on_io_error: migrate::IoErrorPolicy::Fail,
        timeout: cfg.timeout,
        kernel: cfg.kernel.clone(),
        qemu: cfg.qemu.clone(),
        workdir: None,
        keep: false,
        progress: false,
    }
}

/// One run's report, or why it failed.
fn one(cfg: &MigrateConfig) -> Result<MigrateReport, String> {
    let outcome = migrate::migrate(cfg).map_err(|e: MigrateError| e.to_string())?;
    Ok(outcome.report)
}

fn failback_blackout(r: &MigrateReport) -> Option<f64> {
    r.failback.first().and_then(|f| f.blackout_ms)
}

fn handoff_blackout(r: &MigrateReport) -> Option<f64> {
    r.cycles.first().and_then(|c| c.handoff_blackout_ms)
}

/// One live cycle with `mib` MiB of guest RAM (`cross_host`: across hosts, else on one host):
/// its migration figures, and what went wrong if the run failed. `bench` draws its downtime
/// curve (one host) with this too.
pub fn ram_point(cfg: &HostsBenchConfig, cross_host: bool, mib: u32) -> (RamPoint, Option<String>) {
    let where_ = if cross_host {
        "across hosts"
    } else {
        "on one host"
    };
    match one(&cycle(cfg, cross_host, mib, 1)) {
        Ok(r) => (
            RamPoint {
                guest_ram_mib: mib,
                ok: r.ok,
                migration_downtime_ms: r.migration_downtime_ms,
                migration_total_ms: r.migration_total_ms,
                failback_blackout_ms: failback_blackout(&r),
            },
            (!r.ok).then(|| format!("{mib} MiB {where_}: {:?}", r.failures)),
        ),
        Err(e) => (
            RamPoint {
                guest_ram_mib: mib,
                ok: false,
                migration_downtime_ms: None,
                migration_total_ms: None,
                failback_blackout_ms: None,
            },
            Some(format!("{mib} MiB {where_}: {e}")),
        ),
    }
}

/// Collects one side's reports into its figures.
fn figures(reports: &[MigrateReport]) -> SideFigures {
    let pick = |f: &dyn Fn(&MigrateReport) -> Option<f64>| {
        let v: Vec<f64> = reports.iter().filter_map(f).collect();
        Summary::of(&v)
    };
    SideFigures {
        ok_runs: reports.iter().filter(|r| r.ok).count() as u32,
        failback_blackout_ms: pick(&failback_blackout),
        handoff_blackout_ms: pick(&handoff_blackout),
        migration_downtime_ms: pick(&|r| r.migration_downtime_ms.map(|d| d as f64)),
        migration_total_ms: pick(&|r| r.migration_total_ms.map(|d| d as f64)),
    }
}

/// Runs the comparison, then the RAM curve.
pub fn bench_hosts(cfg: &HostsBenchConfig) -> Result<HostsBenchReport, MigrateError> {
    let say = |s: String| {
        if cfg.progress {
            eprintln!("bench-hosts: {s}");
        }
    };
    let mut failures = Vec::new();
    let mut qemu_version = None;
    let mut accel = String::new();
    let (mut same, mut cross) = (Vec::new(), Vec::new());
    for rep in 0..cfg.reps {
        for (cross_host, into) in [(false, &mut same), (true, &mut cross)] {
            let label = if cross_host { "two hosts" } else { "one host" };
            match one(&cycle(
                cfg,
                cross_host,
                GUEST_MEMORY_MIB,
                u64::from(rep) + 1,
            )) {
                Ok(r) => {
                    say(format!(
                        "run {} on {label}: failback blackout {:?} ms, downtime {:?} ms{}",
                        rep + 1,
                        failback_blackout(&r),
                        r.migration_downtime_ms,
                        if r.ok { "" } else { " (FAILED)" }
                    ));
                    if !r.ok {
                        failures.push(format!("{label}, run {}: {:?}", rep + 1, r.failures));
                    }
                    qemu_version = qemu_version.or_else(|| r.qemu_version.clone());
                    accel.clone_from(&r.accel);
                    into.push(r);
                }
                // A run that cannot be set up (no root for the hosts, say) stops the bench.
                Err(e) if into.is_empty() && rep == 0 => {
                    return Err(MigrateError::Config(format!("{label}: {e}")));
                }
                Err(e) => failures.push(format!("{label}, run {}: {e}", rep + 1)),
            }
            if crate::setup::interrupted() {
                return Err(MigrateError::Config("interrupted by a signal".into()));
            }
        }
    }
    let mut downtime_vs_ram = Vec::new();
    for mib in RAM_SIZES_MIB {
        let (point, failure) = ram_point(cfg, true, mib);
        failures.extend(failure);
        say(format!(
            "{mib} MiB across hosts: downtime {:?} ms, migration {:?} ms",
            point.migration_downtime_ms, point.migration_total_ms
        ));
        downtime_vs_ram.push(point);
    }
    let (same_host, cross_host) = (figures(&same), figures(&cross));
    let cross_over_same_blackout = match (
        &same_host.failback_blackout_ms,
        &cross_host.failback_blackout_ms,
    ) {
        (Some(s), Some(c)) if s.p50 > 0.0 => Some(round(c.p50 / s.p50, 2)),
        _ => None,
    };
    Ok(HostsBenchReport {
        ok: failures.is_empty(),
        failures,
        accel,
        qemu_version,
        reps: cfg.reps,
        same_host,
        cross_host,
        cross_over_same_blackout,
        downtime_vs_ram,
    })
}

impl fmt::Display for HostsBenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = |v: &Option<Summary>| {
            v.as_ref().map_or_else(
                || "-".to_owned(),
                |s| format!("{:.1} ({:.1}–{:.1})", s.p50, s.min, s.max),
            )
        };
        writeln!(
            f,
            "one host vs two ({} runs each, interleaved; accel {}, QEMU {}); ms, median (min–max)",
            self.reps,
            self.accel,
            self.qemu_version.as_deref().unwrap_or("?")
        )?;
        writeln!(f, "{:<26} {:>24} {:>24}", "", "one host", "two hosts")?;
        let (a, b) = (&self.same_host, &self.cross_host);
        let rows = [
            (
                "failback blackout",
                s(&a.failback_blackout_ms),
                s(&b.failback_blackout_ms),
            ),
            (
                "handoff blackout",
                s(&a.handoff_blackout_ms),
                s(&b.handoff_blackout_ms),
            ),
            (
                "migration downtime",
                s(&a.migration_downtime_ms),
                s(&b.migration_downtime_ms),
            ),
            (
                "migration total",
                s(&a.migration_total_ms),
                s(&b.migration_total_ms),
            ),
        ];
        for (name, one, two) in rows {
            writeln!(f, "{name:<26} {one:>24} {two:>24}")?;
        }
        writeln!(
            f,
            "{:<26} {:>24} {:>24}",
            "runs ok", self.same_host.ok_runs, self.cross_host.ok_runs
        )?;
        writeln!(f, "cross-host migration against guest RAM:")?;
        for p in &self.downtime_vs_ram {
            writeln!(
                f,
                "  {:>5} MiB: downtime {} ms, migration {} ms, failback blackout {} ms{}",
                p.guest_ram_mib,
                p.migration_downtime_ms
                    .map_or_else(|| "-".into(), |v| v.to_string()),
                p.migration_total_ms
                    .map_or_else(|| "-".into(), |v| v.to_string()),
                p.failback_blackout_ms
                    .map_or_else(|| "-".into(), |v| format!("{v:.1}")),
                if p.ok { "" } else { " (FAILED)" }
            )?;
        }
        if !self.failures.is_empty() {
            writeln!(f, "failures:")?;
            for e in &self.failures {
                writeln!(f, "  - {e}")?;
            }
        }
        Ok(())
    }
}
