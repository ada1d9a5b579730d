//! Command-line interface (clap derive). `main.rs` only parses and dispatches to here.

use std::path::PathBuf;
use std::time::Duration;

use baton_core::cmdline::{
    DEFAULT_FRAMES, DeviceClass, MAX_BLOCKS, MAX_FRAMES, MAX_PASSES, MAX_QD,
};
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::bench::BenchConfig;
use crate::migrate::{
    DEFAULT_SWITCH_AFTER_MS, DestinationFault, Inject, IoErrorPolicy, MigrateConfig, Mode, Switch,
};
use crate::run::RunConfig;
use crate::setup::{AccelChoice, BackendKind};

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
    /// The handoff under load, a live migration or a save + restore of the owner, the failback.
    ///
    /// Boots the owner (VM1, workload on its disk) and a peer (VM2, no disk). During the workload
    /// the handoff is directed: the owner drains port 1 and releases the disk, the disk moves to
    /// the peer, the owner's I/O is forwarded over a shared-memory ring; then the owner is
    /// live-migrated (or saved and restored), gets its disk back at the destination (the
    /// failback; --no-failback keeps forwarding) and finishes its workload there; --cycles N
    /// repeats the cycle. The disk is verified on the host. Exits 0 when nothing was lost, stale
    /// or duplicated, the owner succeeded at the destination, the migration succeeded and every
    /// failback completed; 1 otherwise (see the report); 2 when it could not be set up.
    Migrate(MigrateArgs),
    /// Many full cycles in one run (default 100): handoff → live migration or save + restore
    /// (alternating) → failback, at switch points drawn from the seed, the disk verified at the
    /// end; prints the failback's and the handoff's blackout distribution.
    ///
    /// Exits 0 when every cycle completed and nothing was lost, stale or duplicated; 1 otherwise;
    /// 2 when it could not be set up.
    Soak(crate::soak::SoakArgs),
    /// Measure the handoff and both I/O paths in one run: direct vs forwarded IOPS and latency,
    /// blackout and phases over repeated handoffs, migration downtime, QEMU start to first I/O,
    /// idle guest CPU, and the redirector's host bench; a table, JSON and a timeline plot.
    Bench(BenchArgs),
    /// One host against two: the same live cycle (handoff, migration, failback) on one host and
    /// across hosts (`--cross-host`, as root), repeated and interleaved, then the cross-host
    /// migration's downtime against guest RAM (128 MiB, 512 MiB, 2 GiB); a table and JSON.
    ///
    /// Exits 0 when every run succeeded; 1 otherwise; 2 when it could not be set up.
    BenchHosts(crate::bench::hosts::HostsBenchArgs),
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
    /// KVM if /dev/kvm can be opened read-write and is hardware-backed (VMX/SVM), else TCG; the
    /// report's `accel_reason` says which and why.
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
    /// Guest kernel ELF [default: `<shim dir>/../x86_64-unknown-none/release/baton-kernel`].
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
    /// Test hook: the disk over NBD from a storage namespace, QEMU in host A's (root only).
    #[arg(long, hide = true)]
    pub shared_storage: bool,
    /// Test hook: restart the storage daemon this many ms after QEMU started.
    #[arg(long, hide = true, requires = "shared_storage")]
    pub restart_storage_ms: Option<u64>,
    /// The owner's device: a virtio-blk disk, or a virtio-net NIC whose numbered frames the shim
    /// sends and checks (issue 11; --qd is then the transmit window, the disk options are
    /// unused).
    #[arg(long, value_enum, default_value_t = DeviceArg::Blk)]
    pub device: DeviceArg,
    /// Numbered frames each way (--device net).
    #[arg(long, default_value_t = DEFAULT_FRAMES,
          value_parser = clap::value_parser!(u64).range(1..=MAX_FRAMES))]
    pub frames: u64,
    /// Test hook (--device net): the host end never sends the guest this frame (the run must
    /// fail, naming one frame lost).
    #[arg(long, hide = true)]
    pub nic_skip_frame: Option<u64>,
}

/// The owner's device class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DeviceArg {
    /// A virtio-blk disk.
    Blk,
    /// A virtio-net NIC.
    Net,
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
            shared_storage: self.shared_storage,
            restart_storage_after: self.restart_storage_ms.map(Duration::from_millis),
            device: match self.device {
                DeviceArg::Blk => DeviceClass::Blk,
                DeviceArg::Net => DeviceClass::Net,
            },
            frames: self.frames,
            nic_skip: self.nic_skip_frame,
        }
    }
}

/// How the owner moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ModeArg {
    /// Live migration to a second QEMU process.
    Live,
    /// Save to a file, quit, restore in a new QEMU process.
    Save,
    /// The handoff only, no migration: the owner stays at the source, forwarding through the
    /// peer (measures the forwarded path; `bench` uses it). No failback unless --failback.
    None,
    /// Cycles alternate: live migration in odd cycles, save + restore in even ones.
    Mixed,
}

/// What to do when a VM pauses on an I/O error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum IoErrorArg {
    /// Stop the run at once, naming the cause.
    Fail,
    /// Retry until space was freed (bounded by --io-error-wait-secs).
    Wait,
}

/// The peer's fault hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PeerFaultArg {
    /// The peer behaves.
    None,
    /// After 8 good completions the peer publishes a malformed one and stops serving; the owner
    /// must detect it, fail its in-flight writes and lose no acknowledged write (the run fails).
    BadCompletion,
}

/// Options of `migrate`.
#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// Live migration, save + restore, mixed (alternating, with --cycles), or none (the handoff
    /// only).
    #[arg(long, value_enum, default_value_t = ModeArg::Live)]
    pub mode: ModeArg,
    /// Full cycles (handoff → migration or save/restore → failback), each started at a point
    /// drawn from the seed; the owner's workload runs through all of them.
    #[arg(long, default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=250))]
    pub cycles: u32,
    /// Give the disk back to the owner after the migration and close the ring (the default for
    /// live, save and mixed).
    #[arg(long, conflicts_with = "no_failback")]
    pub failback: bool,
    /// One-way run: the owner keeps forwarding through the peer after the migration (the default
    /// for --mode none).
    #[arg(long)]
    pub no_failback: bool,
    /// Direct the failback this many ms after the owner runs at its destination [default: at
    /// once].
    #[arg(long, default_value_t = 0,
          value_parser = clap::value_parser!(u64).range(0..=3_600_000))]
    pub failback_after_ms: u64,
    /// The owner asks for its disk back itself (`failback-request`) once it forwards and has
    /// submitted this many writes (`failback_at=N`); the shim directs the failback then, or once
    /// the migration is over.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub failback_request_at: Option<u64>,
    /// Disk backend (`null`: the I/O path only, nothing verified).
    #[arg(long, value_enum, default_value_t = Backend::File)]
    pub backend: Backend,
    /// Accelerator.
    #[arg(long, value_enum, default_value_t = AccelArg::Auto)]
    pub accel: AccelArg,
    /// Distinct 4 KiB blocks the owner writes.
    #[arg(long, default_value_t = 2048,
          value_parser = clap::value_parser!(u64).range(1..=MAX_BLOCKS))]
    pub blocks: u64,
    /// Times each block is written [default: 8; with --cycles N, 4 × N + 4, so that the
    /// workload outlasts the cycles].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_PASSES)))]
    pub passes: Option<u32>,
    /// Requests in flight.
    #[arg(long, default_value_t = 32,
          value_parser = clap::value_parser!(u16).range(1..=i64::from(MAX_QD)))]
    pub qd: u16,
    /// Seed of the write schedule. Without --switch-after-ms and --migrate-at, it also picks the
    /// switch point (a time after the first I/O, inside the workload).
    #[arg(long)]
    pub seed: Option<u64>,
    /// The operator directs the handoff this many ms after the owner's first I/O
    /// [default: 300, or drawn from --seed].
    #[arg(long, conflicts_with = "migrate_at",
          value_parser = clap::value_parser!(u64).range(0..=3_600_000))]
    pub switch_after_ms: Option<u64>,
    /// The owner asks to be migrated itself after submitting this many writes (`migrate_at=N`);
    /// the shim directs the handoff when the owner's `migrate-request` arrives.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub migrate_at: Option<u64>,
    /// Fault hook of the peer (the run is then expected to fail without losing a write).
    #[arg(long, value_enum, default_value_t = PeerFaultArg::None)]
    pub peer_fault: PeerFaultArg,
    /// What a write that fails on the host (a full disk) does: `fail` reports it to the guest
    /// (virtio-blk `werror=report`), whose workload stops, reports and is verified, and the run
    /// fails naming the cause; `wait` lets QEMU pause the VM on a full disk and retries (`cont`)
    /// until the operator freed space, for at most --io-error-wait-secs.
    #[arg(long, value_enum, default_value_t = IoErrorArg::Fail)]
    pub on_io_error: IoErrorArg,
    /// With --on-io-error wait: the longest wait for space, in seconds.
    #[arg(long, default_value_t = 20,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub io_error_wait_secs: u64,
    /// Inject a fault by a real mechanism, `WHAT@WHEN`: `peer-crash@handoff` (SIGKILL the peer's
    /// QEMU right after the handoff was directed: it is taken back), `peer-crash@forwarding` (SIGKILL the
    /// peer's QEMU once the owner forwards through it), `peer-crash@failback` (once the failback
    /// was directed) or `peer-hang@forwarding` (the peer's vCPU stopped: its heartbeat freezes,
    /// the shim fences it): the owner survives, the disk comes back to it, its forwarded requests
    /// without a completion are replayed, nothing acknowledged is lost. `enospc@owner` (a blkdebug
    /// rule fails one of the owner's early writes with ENOSPC, before the handoff),
    /// `enospc@peer` (the peer's first write), under --on-io-error fail a clean failure naming
    /// ENOSPC, under wait a pause resumed at once; `shm-full` (as root: a 1 MiB /dev/shm in the
    /// shim's own mount namespace, so the handoff is not directed); `save-writer-late` (the
    /// state-file writer syncs 2 s after QEMU closed the stream); with --cross-host,
    /// `storage-restart@forwarding` and `destination-crash@migration`. Every ending is verified.
    #[arg(long, value_parser = parse_inject)]
    pub inject: Option<Inject>,
    /// Migrate the owner to another host (as root): hosts are network namespaces, the disk an
    /// NBD export of qemu-storage-daemon, the migration QEMU's stream over TCP; the disk comes
    /// back to the owner at the destination.
    #[arg(long)]
    pub cross_host: bool,
    /// The owner's guest RAM, in MiB (the migration copies it).
    #[arg(long, default_value_t = 128,
          value_parser = clap::value_parser!(u32).range(64..=4096))]
    pub guest_ram_mib: u32,
    /// Test hook: start the live-migration destination without the ivshmem device, so it dies on
    /// the unknown device state while the source says `completed`.
    #[arg(long, hide = true)]
    pub test_destination_without_ring: bool,
    /// Hard timeout for the whole scenario, in seconds.
    #[arg(long, default_value_t = 180,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub timeout_secs: u64,
    /// Guest kernel ELF [default: `<shim dir>/../x86_64-unknown-none/release/baton-kernel`].
    #[arg(long)]
    pub kernel: Option<PathBuf>,
    /// Working directory for the disk image, sockets, logs and saved state [default: a fresh
    /// temp dir].
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

impl MigrateArgs {
    /// The scenario configuration these options describe.
    pub fn config(&self) -> MigrateConfig {
        let switch = match (self.migrate_at, self.switch_after_ms, self.seed) {
            (Some(n), _, _) => Switch::OwnerRequest(n),
            (None, Some(ms), _) => Switch::AfterMs(ms),
            (None, None, Some(_)) => Switch::Seeded,
            (None, None, None) => Switch::AfterMs(DEFAULT_SWITCH_AFTER_MS),
        };
        let mode = match self.mode {
            ModeArg::Live => Mode::Live,
            ModeArg::Save => Mode::Save,
            ModeArg::None => Mode::None,
            ModeArg::Mixed => Mode::Mixed,
        };
        let passes = self.passes.unwrap_or(if self.cycles > 1 {
            (4 * self.cycles + 4).min(MAX_PASSES)
        } else {
            8
        });
        MigrateConfig {
            mode,
            failback: self.failback || (!self.no_failback && mode != Mode::None),
            failback_after_ms: self.failback_after_ms,
            failback_request_at: self.failback_request_at.unwrap_or(0),
            cycles: self.cycles,
            backend: match self.backend {
                Backend::File => BackendKind::File,
                Backend::Null => BackendKind::Null,
            },
            accel: accel_choice(self.accel),
            blocks: self.blocks,
            passes,
            qd: self.qd,
            seed: self.seed.unwrap_or(1),
            switch,
            peer_fault: match self.peer_fault {
                PeerFaultArg::None => baton_core::cmdline::Fault::None,
                PeerFaultArg::BadCompletion => baton_core::cmdline::Fault::BadCompletion,
            },
            inject: self.inject,
            cross_host: self.cross_host,
            guest_memory_mib: self.guest_ram_mib,
            on_io_error: match self.on_io_error {
                IoErrorArg::Fail => IoErrorPolicy::Fail,
                IoErrorArg::Wait => {
                    IoErrorPolicy::Wait(Duration::from_secs(self.io_error_wait_secs))
                }
            },
            destination_fault: if self.test_destination_without_ring {
                DestinationFault::WithoutRing
            } else {
                DestinationFault::None
            },
            timeout: Duration::from_secs(self.timeout_secs),
            kernel: self.kernel.clone(),
            qemu: self.qemu.clone(),
            workdir: self.workdir.clone(),
            keep: self.keep,
            progress: !self.quiet,
        }
    }
}

/// Options of `bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Accelerator.
    #[arg(long, value_enum, default_value_t = AccelArg::Auto)]
    pub accel: AccelArg,
    /// Smoke check: tiny workloads, 2 handoffs, 2 s idle sample, the quick redirector bench
    /// (under half a minute once that bench is built; its first build takes a minute or two).
    #[arg(long)]
    pub quick: bool,
    /// Queue depths of the direct runs (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "1,32",
          value_parser = clap::value_parser!(u16).range(1..=i64::from(MAX_QD)))]
    pub qd: Vec<u16>,
    /// Direct runs per queue depth (the median is reported) [default: 3, quick 1].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub runs: Option<u32>,
    /// Distinct blocks per direct run [default: 4096, quick 1024].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=MAX_BLOCKS))]
    pub blocks: Option<u64>,
    /// Passes per direct run [default: 4, quick 2].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_PASSES)))]
    pub passes: Option<u32>,
    /// Repeated handoffs, live and save alternating [default: 20, quick 2].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub handoffs: Option<u32>,
    /// Repetitions of each side-by-side run (disk × queue depth; medians reported) [default: 5,
    /// quick 1].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub side_reps: Option<u32>,
    /// Seconds of the idle-guest CPU sample [default: 5, quick 2].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub idle_secs: Option<u64>,
    /// Do not run the redirector's host bench (`cargo bench`).
    #[arg(long)]
    pub no_redirector: bool,
    /// Hard timeout of each run, in seconds.
    #[arg(long, default_value_t = 300,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub timeout_secs: u64,
    /// Guest kernel ELF [default: `<shim dir>/../x86_64-unknown-none/release/baton-kernel`].
    #[arg(long)]
    pub kernel: Option<PathBuf>,
    /// QEMU binary (name on PATH or a path).
    #[arg(long, default_value = "qemu-system-x86_64")]
    pub qemu: PathBuf,
    /// Write the results as JSON to this file.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Write the handoff timeline plot (SVG) to this file [default: handoff-timeline.svg next to
    /// the report].
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Do not print progress on stderr.
    #[arg(long)]
    pub quiet: bool,
}

impl BenchArgs {
    /// The benchmark configuration these options describe.
    pub fn config(&self) -> BenchConfig {
        let q = self.quick;
        BenchConfig {
            accel: accel_choice(self.accel),
            quick: q,
            depths: self.qd.clone(),
            runs: self.runs.unwrap_or(if q { 1 } else { 3 }),
            blocks: self.blocks.unwrap_or(if q { 1024 } else { 4096 }),
            passes: self.passes.unwrap_or(if q { 2 } else { 4 }),
            handoffs: self.handoffs.unwrap_or(if q { 2 } else { 20 }),
            side_reps: self.side_reps.unwrap_or(if q { 1 } else { 5 }),
            idle: Duration::from_secs(self.idle_secs.unwrap_or(if q { 2 } else { 5 })),
            redirector: !self.no_redirector,
            timeout: Duration::from_secs(self.timeout_secs),
            kernel: self.kernel.clone(),
            qemu: self.qemu.clone(),
            progress: !self.quiet,
        }
    }
}

fn parse_inject(s: &str) -> Result<Inject, String> {
    Inject::parse(s).ok_or_else(|| {
        format!(
            "unknown fault `{s}`; known: {}",
            Inject::ALL.map(Inject::as_str).join(", ")
        )
    })
}

pub(crate) fn accel_choice(a: AccelArg) -> AccelChoice {
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
    /// Guest kernel ELF [default: `<shim dir>/../x86_64-unknown-none/release/baton-kernel`].
    #[arg(long)]
    pub kernel: Option<PathBuf>,
}

#[cfg(test)]
#[path = "cli_tests.rs"]
mod tests;
