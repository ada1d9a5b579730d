//! Command-line interface (clap derive). `main.rs` only parses and dispatches to here.

use std::path::PathBuf;
use std::time::Duration;

use baton_core::cmdline::{MAX_BLOCKS, MAX_PASSES, MAX_QD};
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::run::{AccelChoice, BackendKind, RunConfig};

/// Host side of baton: boots baton guests under QEMU, drives them over QMP and verifies their disks.
#[derive(Debug, Parser)]
#[command(name = "hypervisor-shim", version, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Cmd,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Boot one owner guest doing direct virtio-blk I/O, then verify its disk on the host.
    ///
    /// Exits 0 when the guest succeeded and no acknowledged write is lost or stale; 1 when the run
    /// failed (see the report); 2 when it could not be set up.
    Run(RunArgs),
    /// Measure direct-path IOPS (4 KiB writes on null-co) per queue depth and boot to first I/O.
    Bench(BenchArgs),
    /// Check the host: QEMU, its firmware, KVM, and the guest kernel.
    Check(CheckArgs),
}

/// Disk backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Backend {
    /// Raw image file created by the shim; verified on the host afterwards.
    File,
    /// QEMU `null-co` (discards writes, reads zeroes): measures the I/O path; no verification.
    Null,
}

/// Accelerator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AccelArg {
    /// KVM if /dev/kvm can be opened read-write, else TCG.
    Auto,
    /// KVM (fails if /dev/kvm is unusable).
    Kvm,
    /// TCG software emulation.
    Tcg,
}

/// Options of `run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Disk backend.
    #[arg(long, value_enum, default_value_t = Backend::File)]
    pub backend: Backend,
    /// Accelerator.
    #[arg(long, value_enum, default_value_t = AccelArg::Auto)]
    pub accel: AccelArg,
    /// Distinct 4 KiB blocks the workload writes.
    #[arg(long, default_value_t = 256,
          value_parser = clap::value_parser!(u64).range(1..=MAX_BLOCKS))]
    pub blocks: u64,
    /// Times each block is written.
    #[arg(long, default_value_t = 4,
          value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_PASSES)))]
    pub passes: u32,
    /// Requests in flight.
    #[arg(long, default_value_t = 32,
          value_parser = clap::value_parser!(u16).range(1..=i64::from(MAX_QD)))]
    pub qd: u16,
    /// Seed of the write schedule and payloads.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// VM id written into every block tag.
    #[arg(long, default_value_t = 1)]
    pub vm: u32,
    /// First 4 KiB block used on the disk.
    #[arg(long, default_value_t = 0,
          value_parser = clap::value_parser!(u64).range(0..=1 << 32))]
    pub first_lba: u64,
    /// Boot without a disk; hot-add it over QMP when the guest prints `BATON waiting-for-disk`.
    #[arg(long)]
    pub hotplug_disk: bool,
    /// Test hook: the guest panics right after boot (the run must be reported as failed).
    #[arg(long)]
    pub guest_panic: bool,
    /// Hard timeout for the guest run, in seconds.
    #[arg(long, default_value_t = 120,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub timeout_secs: u64,
    /// Guest kernel ELF [default: <shim dir>/../x86_64-unknown-none/release/baton-kernel].
    #[arg(long)]
    pub kernel: Option<PathBuf>,
    /// Working directory for the disk image, QMP socket and logs [default: a fresh temp dir].
    #[arg(long)]
    pub workdir: Option<PathBuf>,
    /// Keep the disk image, QMP socket and temporary workdir after the run.
    #[arg(long)]
    pub keep: bool,
    /// Write the JSON report to this file.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// QEMU binary (name on PATH or a path).
    #[arg(long, default_value = "qemu-system-x86_64")]
    pub qemu: PathBuf,
}

impl RunArgs {
    /// The scenario configuration these options describe.
    pub fn config(&self) -> RunConfig {
        RunConfig {
            backend: match self.backend {
                Backend::File => BackendKind::File,
                Backend::Null => BackendKind::Null,
            },
            accel: accel_choice(self.accel),
            vm: self.vm,
            blocks: self.blocks,
            passes: self.passes,
            qd: self.qd,
            seed: self.seed,
            first_lba: self.first_lba,
            hotplug_disk: self.hotplug_disk,
            guest_panic: self.guest_panic,
            timeout: Duration::from_secs(self.timeout_secs),
            kernel: self.kernel.clone(),
            qemu: self.qemu.clone(),
            workdir: self.workdir.clone(),
            keep: self.keep,
        }
    }
}

/// Options of `bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Accelerator.
    #[arg(long, value_enum, default_value_t = AccelArg::Auto)]
    pub accel: AccelArg,
    /// Queue depths to measure (comma-separated).
    #[arg(long, value_delimiter = ',', default_values_t = [1u16, 32],
          value_parser = clap::value_parser!(u16).range(1..=i64::from(MAX_QD)))]
    pub qd: Vec<u16>,
    /// Runs per queue depth (the median is reported).
    #[arg(long, default_value_t = 5,
          value_parser = clap::value_parser!(u32).range(1..=100))]
    pub runs: u32,
    /// Distinct blocks per run.
    #[arg(long, default_value_t = 4096,
          value_parser = clap::value_parser!(u64).range(1..=MAX_BLOCKS))]
    pub blocks: u64,
    /// Passes per run.
    #[arg(long, default_value_t = 4,
          value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_PASSES)))]
    pub passes: u32,
    /// Hard timeout of each run, in seconds.
    #[arg(long, default_value_t = 300,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub timeout_secs: u64,
    /// Guest kernel ELF [default: <shim dir>/../x86_64-unknown-none/release/baton-kernel].
    #[arg(long)]
    pub kernel: Option<PathBuf>,
    /// QEMU binary (name on PATH or a path).
    #[arg(long, default_value = "qemu-system-x86_64")]
    pub qemu: PathBuf,
    /// Write the results as JSON to this file.
    #[arg(long)]
    pub report: Option<PathBuf>,
}

impl BenchArgs {
    /// The run configuration every benchmark run starts from.
    pub fn base(&self) -> RunConfig {
        RunConfig {
            backend: BackendKind::Null,
            accel: accel_choice(self.accel),
            vm: 1,
            blocks: self.blocks,
            passes: self.passes,
            qd: 1,
            seed: 1,
            first_lba: 0,
            hotplug_disk: false,
            guest_panic: false,
            timeout: Duration::from_secs(self.timeout_secs),
            kernel: self.kernel.clone(),
            qemu: self.qemu.clone(),
            workdir: None,
            keep: false,
        }
    }
}

fn accel_choice(a: AccelArg) -> AccelChoice {
    match a {
        AccelArg::Auto => AccelChoice::Auto,
        AccelArg::Kvm => AccelChoice::Kvm,
        AccelArg::Tcg => AccelChoice::Tcg,
    }
}

/// Options of `check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// QEMU binary (name on PATH or a path).
    #[arg(long, default_value = "qemu-system-x86_64")]
    pub qemu: PathBuf,
    /// Guest kernel ELF [default: <shim dir>/../x86_64-unknown-none/release/baton-kernel].
    #[arg(long)]
    pub kernel: Option<PathBuf>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn ranges_are_enforced() {
        let ok = Cli::try_parse_from(["s", "run", "--qd", "64", "--blocks", "1"]);
        assert!(ok.is_ok());
        for bad in [
            &["s", "run", "--qd", "0"][..],
            &["s", "run", "--qd", "65"],
            &["s", "run", "--blocks", "0"],
            &["s", "run", "--passes", "65"],
            &["s", "run", "--backend", "nvme"],
            &["s", "run", "--accel", "hvf"],
            &["s", "run", "--timeout-secs", "0"],
            &["s", "run", "--bogus"],
            &["s", "frobnicate"],
        ] {
            assert!(Cli::try_parse_from(bad).is_err(), "{bad:?} accepted");
        }
    }
}
