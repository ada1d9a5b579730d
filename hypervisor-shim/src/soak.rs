//! `hypervisor-shim soak`: many full cycles in one run — handoff → live migration or save + restore
//! (alternating, `--mode mixed`) → failback — at switch points drawn from the seed, the owner's
//! workload running through all of them, the disk verified on the host at the end. Not part of
//! the default test suite (100 cycles take a few minutes under TCG); BENCHMARKS.md records its
//! result.
//!
//! It is one `migrate` scenario ([`crate::migrate::migrate`]) with many cycles; the soak adds the
//! summary a long run needs: cycles completed, lost / stale / duplicated, and the distribution of
//! the failback's and the handoff's blackout, of the failback's duration and of the migration
//! downtime over the cycles.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use crate::bench::stats::Summary;
use crate::cli::{AccelArg, accel_choice};
use crate::migrate::{self, MigrateConfig, MigrateError, Mode, Switch};
use crate::report::MigrateReport;
use crate::setup::{AccelChoice, BackendKind};

/// What a soak runs.
#[derive(Debug, Clone)]
pub struct SoakConfig {
    /// Full cycles.
    pub cycles: u32,
    /// Seed of the schedule and of every switch point.
    pub seed: u64,
    /// Distinct blocks of the owner's workload.
    pub blocks: u64,
    /// Passes (the workload must outlast the cycles).
    pub passes: u32,
    /// Queue depth.
    pub qd: u16,
    /// Accelerator.
    pub accel: AccelChoice,
    /// Hard timeout of the whole run.
    pub timeout: Duration,
    /// Guest kernel; default: next to the shim's build output.
    pub kernel: Option<PathBuf>,
    /// QEMU binary.
    pub qemu: PathBuf,
    /// Working directory; default: a fresh temporary directory.
    pub workdir: Option<PathBuf>,
    /// Keep the disk image, logs and workdir.
    pub keep: bool,
    /// Print the progress display on stderr.
    pub progress: bool,
}

impl SoakConfig {
    /// The `migrate` scenario this soak is.
    pub fn migrate_config(&self) -> MigrateConfig {
        MigrateConfig {
            mode: Mode::Mixed,
            backend: BackendKind::File,
            accel: self.accel,
            blocks: self.blocks,
            passes: self.passes,
            qd: self.qd,
            seed: self.seed,
            switch: Switch::Seeded,
            failback: true,
            failback_after_ms: 0,
            failback_request_at: 0,
            cycles: self.cycles,
            peer_fault: baton_core::cmdline::Fault::None,
            destination_fault: migrate::DestinationFault::None,
            inject: None,
            cross_host: false,
            guest_memory_mib: crate::setup::GUEST_MEMORY_MIB,
            on_io_error: migrate::IoErrorPolicy::Fail,
            timeout: self.timeout,
            kernel: self.kernel.clone(),
            qemu: self.qemu.clone(),
            workdir: self.workdir.clone(),
            keep: self.keep,
            progress: self.progress,
        }
    }
}

/// Options of `soak`.
#[derive(Debug, clap::Args)]
pub struct SoakArgs {
    /// Full cycles (handoff → migration or save/restore → failback), live and save alternating.
    #[arg(long, default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(1..=250))]
    pub cycles: u32,
    /// Seed of the schedule, of the first switch point and of the pauses between cycles.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Distinct 4 KiB blocks the owner writes.
    #[arg(long, default_value_t = 1024,
          value_parser = clap::value_parser!(u64).range(16..=baton_core::cmdline::MAX_BLOCKS))]
    pub blocks: u64,
    /// Times each block is written [default: 4 × cycles + 4, at most the guest's limit].
    #[arg(long, value_parser = clap::value_parser!(u32)
          .range(1..=i64::from(baton_core::cmdline::MAX_PASSES)))]
    pub passes: Option<u32>,
    /// Requests in flight.
    #[arg(long, default_value_t = 32,
          value_parser = clap::value_parser!(u16).range(1..=i64::from(baton_core::cmdline::MAX_QD)))]
    pub qd: u16,
    /// Accelerator.
    #[arg(long, value_enum, default_value_t = AccelArg::Auto)]
    pub accel: AccelArg,
    /// Hard timeout for the whole run, in seconds.
    #[arg(long, default_value_t = 3600,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub timeout_secs: u64,
    /// Guest kernel ELF [default: `<shim dir>/../x86_64-unknown-none/release/baton-kernel`].
    #[arg(long)]
    pub kernel: Option<PathBuf>,
    /// Working directory [default: a fresh temp dir].
    #[arg(long)]
    pub workdir: Option<PathBuf>,
    /// Keep the disk image, logs and temporary workdir after the run.
    #[arg(long)]
    pub keep: bool,
    /// Write the JSON report to this file.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Do not print the progress display on stderr.
    #[arg(long)]
    pub quiet: bool,
    /// QEMU binary (name on PATH or a path).
    #[arg(long, default_value = "qemu-system-x86_64")]
    pub qemu: PathBuf,
}

impl SoakArgs {
    /// The soak these options describe.
    pub fn config(&self) -> SoakConfig {
        SoakConfig {
            cycles: self.cycles,
            seed: self.seed,
            blocks: self.blocks,
            passes: self.passes.unwrap_or(
                self.cycles
                    .saturating_mul(4)
                    .saturating_add(4)
                    .min(baton_core::cmdline::MAX_PASSES),
            ),
            qd: self.qd,
            accel: accel_choice(self.accel),
            timeout: Duration::from_secs(self.timeout_secs),
            kernel: self.kernel.clone(),
            qemu: self.qemu.clone(),
            workdir: self.workdir.clone(),
            keep: self.keep,
            progress: !self.quiet,
        }
    }
}

/// The soak's verdict and figures; the whole `migrate` report is inside.
#[derive(Debug, Clone, Serialize)]
pub struct SoakReport {
    /// `soak`.
    pub scenario: String,
    /// Every cycle completed, nothing lost, stale or duplicated, the disk verified.
    pub ok: bool,
    /// Cycles asked for.
    pub cycles_planned: u32,
    /// Cycles whose failback completed.
    pub cycles_completed: u32,
    /// Acknowledged writes missing from the image (null: not verified).
    pub lost: Option<u64>,
    /// Blocks not holding their last acknowledged write.
    pub stale: Option<u64>,
    /// Completions for requests that were not outstanding (the owner's count).
    pub duplicated: Option<u64>,
    /// The failback's blackout over the cycles, ms (the owner's `BATON switch kind=failback`).
    pub failback_blackout_ms: Option<Summary>,
    /// The handoff's blackout over the cycles, ms.
    pub handoff_blackout_ms: Option<Summary>,
    /// `failback` sent → port 1 open again, ms.
    pub failback_ms: Option<Summary>,
    /// QEMU's migration downtime (save: of the save), ms.
    pub downtime_ms: Option<Summary>,
    /// The scenario's own report.
    pub migrate: MigrateReport,
}

impl SoakReport {
    /// The soak's figures from a finished scenario's report.
    pub fn from_migrate(r: MigrateReport) -> Self {
        let summary = |v: Vec<f64>| Summary::of(&v);
        let failback_blackout_ms =
            summary(r.failback.iter().filter_map(|f| f.blackout_ms).collect());
        let failback_ms = summary(r.failback.iter().filter_map(|f| f.failback_ms).collect());
        let handoff_blackout_ms = summary(
            r.cycles
                .iter()
                .filter_map(|c| c.handoff_blackout_ms)
                .collect(),
        );
        let downtime_ms = summary(
            r.cycles
                .iter()
                .filter_map(|c| c.migration_downtime_ms.map(|d| d as f64))
                .collect(),
        );
        let (lost, stale) = (r.disk.lost, r.disk.stale);
        let ok = r.ok
            && r.cycles_completed == r.cycles_planned
            && lost == Some(0)
            && stale == Some(0)
            && r.duplicated == Some(0);
        Self {
            scenario: "soak".into(),
            ok,
            cycles_planned: r.cycles_planned,
            cycles_completed: r.cycles_completed,
            lost,
            stale,
            duplicated: r.duplicated,
            failback_blackout_ms,
            handoff_blackout_ms,
            failback_ms,
            downtime_ms,
            migrate: r,
        }
    }

    /// Writes the report as pretty JSON to `path`.
    pub fn write_json(&self, path: &std::path::Path) -> std::io::Result<()> {
        crate::report::write_json(self, path)
    }
}

impl fmt::Display for SoakReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = &self.migrate;
        let verdict = if self.ok { "OK" } else { "FAILED" };
        writeln!(
            f,
            "baton soak: {verdict}  ({}/{} cycles, mixed live/save; accel {}, QEMU {})",
            self.cycles_completed,
            self.cycles_planned,
            r.accel,
            r.qemu_version.as_deref().unwrap_or("?")
        )?;
        let n = |v: Option<u64>| v.map_or_else(|| "?".into(), |x| x.to_string());
        writeln!(
            f,
            "  disk       lost {}, stale {}, duplicated {}; {} writes verified",
            n(self.lost),
            n(self.stale),
            n(self.duplicated),
            n(r.disk.writes_verified),
        )?;
        let s = |x: &Option<Summary>| {
            x.map_or_else(
                || "none".into(),
                |s| {
                    format!(
                        "median {:.1} ms, p99 {:.1} ms, max {:.1} ms (n={})",
                        s.p50, s.p99, s.max, s.n
                    )
                },
            )
        };
        writeln!(f, "  failback   blackout {}", s(&self.failback_blackout_ms))?;
        writeln!(f, "  failback   duration {}", s(&self.failback_ms))?;
        writeln!(f, "  handoff    blackout {}", s(&self.handoff_blackout_ms))?;
        writeln!(f, "  migration  downtime {}", s(&self.downtime_ms))?;
        for why in &r.failures {
            writeln!(f, "  failure    {why}")?;
        }
        write!(f, "  workdir    {}", r.workdir)
    }
}

/// Runs the soak. Errors: only set-up problems ([`MigrateError`]); a failed cycle is in the
/// report (`ok: false`).
pub fn soak(cfg: &SoakConfig) -> Result<SoakReport, MigrateError> {
    let outcome = migrate::migrate(&cfg.migrate_config())?;
    drop(outcome.workdir);
    Ok(SoakReport::from_migrate(outcome.report))
}
