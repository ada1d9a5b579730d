//! `hypervisor-shim migrate`: the handoff (docs/design.md, "The handoff"; US 20070204265A1,
//! claim 1), then a live migration or a save + restore of the owner.
//!
//! Two guests: the **owner** (VM1: the workload, the disk in slot 4) and the **peer** (VM2: no
//! disk). Each has a control channel on COM2 ([`crate::channel`]). While the owner writes, the
//! handoff is directed — by the operator (`--switch-after-ms`, or a point drawn from `--seed`) or
//! by the owner itself (`migrate_at=N` → `migrate-request`):
//!
//! 1. the handoff (`handoff`): the steps from [`Step::Directed`] to [`Step::FirstCompletion`], in
//!    the order and under the names of the sequence diagram in docs/design.md ("The handoff"),
//!    which this module does not repeat;
//! 2. live: a destination QEMU (the owner's current device set: no disk, the ivshmem device,
//!    `-incoming defer`, its own control socket), `x-ignore-shared` on both sides, the QEMU 7.2
//!    BAR2 workaround (docs/design.md, "Migration (QEMU 7.2)"), `migrate-incoming` + `migrate`
//!    over a Unix socket; the destination's status decides success, and a failed migration
//!    resumes the source.
//!    save: `migrate` to a Unix socket the shim writes to `vm1.state` (synced and checked,
//!    `savefile`), a restore QEMU with `-incoming defer` + the same workaround, `migrate-incoming`
//!    on a socket the shim sends the file to, and only then `quit` of the paused source
//!    ([`Step::MigrationStarted`] → [`Step::Migrated`]; save also [`Step::Saved`],
//!    [`Step::RestoreStarted`], [`Step::Restored`]);
//! 3. the owner finishes its workload at the destination through the peer; the peer is quit over
//!    QMP (which flushes the image) and the host verifies every block ([`crate::disk`]).
//!
//! Every wait has a timeout; every QEMU, socket, shared-memory file and temporary directory is
//! owned by a guard. Guest bytes are untrusted (I6): serial lines are bounded and parsed strictly,
//! control messages pass the [`Handoff`] gate.
//!
//! Each step is recorded in the scenario's [`HandoffRecord`] (the shim's monotonic time, where it
//! happens) and shown on the progress display under its [`Step`] name; the report's `phases` are
//! computed from that record ([`crate::steps::SPANS`]).
//!
//! Layout: this file holds the configuration, the entry point and small helpers; `vm` one QEMU
//! process (console, QMP, exit); `scenario` the running scenario's state, the order of the steps
//! and the clean-up; `handoff` the handoff's steps (1); `migration` the migration (2); `events`
//! the control messages, consoles, QMP events and the waits built on them; `verdict` the failures
//! from the facts; `report` the JSON report.

use std::collections::{BTreeMap, VecDeque};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use baton_core::cmdline::{DiskMode, Fault, GuestConfig, Role as GuestRole};
use baton_core::control::{Message, Role, ShimAction};
use baton_core::report::GuestReport;
use baton_core::ring::{self, offsets};

use crate::channel::{ChannelError, ControlChannel, ControlListener, Handoff, Received};
use crate::console::Recv;
use crate::disk::{self, Acks, DiskImage, Verification};
use crate::progress::Progress;
use crate::qemu::{
    self, DISK_ID, DiskBackend, EXIT_SUCCESS, MachineSpec, PEER_DISK_SLOT, RING_DEVICE_ID,
    RING_MEMDEV_ID, RING_SLOT, RingSpec,
};
use crate::qmp::{
    self, BlockdevAdd, BlockdevDel, Cont, DeviceAdd, DeviceDel, HumanMonitorCommand, Migrate,
    MigrateIncoming, MigrateSetCapabilities, MigrationCapability, MigrationInfo, ObjectAdd,
    ObjectDel, QueryMigrate, QueryPci, QueryStatus, QueryVersion, Quit,
};
use crate::report::{GuestExit, MigrateReport, Phases, SwitchReport, VmEvent};
use crate::setup::{
    self, AccelChoice, BackendKind, EXIT_GRACE, MAX_NOTES, QMP_COMMAND_TIMEOUT, SetupError,
    SocketPath, Workdir,
};
use crate::shm::{self, RingWatch, SharedFile};
use crate::steps::{self, Direction, HandoffRecord, Step, ms_between};
use crate::vm::Ending;

mod crosshost;
mod events;
mod failback;
mod handoff;
mod inject;
mod migration;
mod recovery;
mod report;
mod savefile;
mod scenario;
mod unwind;
mod verdict;
mod vm;
mod watch;

pub use inject::SHM_FULL_BYTES;
pub use recovery::Inject;
use report::{build_report, failed_setup_report};
use scenario::{GuestSetup, Scenario, start};
#[cfg(test)]
use vm::event_instant;
use vm::{Vm, describe_exit};

/// Size of the shared ring region (a power of two, as an ivshmem BAR must be).
pub const RING_BYTES: u64 = 4 << 20;
/// The peer's VM id.
pub const PEER_VM: u32 = 2;
/// The owner's VM id.
pub const OWNER_VM: u32 = 1;
/// Default switch point: this long after the owner's first I/O.
pub const DEFAULT_SWITCH_AFTER_MS: u64 = 300;
/// The owner's disk image, in the scenario's working directory (the summary names it).
pub const DISK_IMAGE_FILE: &str = "disk.img";

/// Longest wait for a QEMU to connect its control socket and for its QMP socket to answer.
const CONNECT_TIMEOUT: Duration = setup::QMP_CONNECT_TIMEOUT;
/// Read timeout of the QMP sockets here: bounds how long a blocking event read waits.
const QMP_READ_TIMEOUT: Duration = Duration::from_millis(2);
/// How long a wait's own event poll blocks: not at all. The waits take in what has arrived and
/// then sleep in `poll(2)` on every socket at once ([`Scenario::wait_io`]), so a QMP event or a
/// control frame ends the sleep as it arrives.
const QMP_POLL: Duration = Duration::ZERO;
/// Longest wait for both guests' `hello`.
const HELLO_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest wait for each handoff step (drained, released, DEVICE_DELETED, peer-ready, forwarding).
const STEP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the peer's `device_add` is retried while the image is still locked.
const LOCK_RETRY_FOR: Duration = Duration::from_secs(5);
/// Pause between those attempts.
const LOCK_RETRY_EVERY: Duration = Duration::from_millis(2);
/// Longest wait for a migration (or save) to finish.
const MIGRATION_TIMEOUT: Duration = Duration::from_secs(90);
/// Longest wait for the destination to run after the migration completed.
const DEST_RUN_TIMEOUT: Duration = Duration::from_secs(15);
/// Longest wait for a QEMU to exit after `quit`.
const QUIT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest sleep of a wait between rounds when nothing arrives on a socket (the ring watch and
/// the consoles are checked at least this often).
const TICK: Duration = Duration::from_millis(1);
/// Period of `query-migrate` polls.
const MIGRATE_POLL: Duration = Duration::from_millis(5);

/// Errors that stop `migrate` before it can produce a report.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// set-up shared with `run`: QEMU, kernel, workdir, disk
    #[error(transparent)]
    Setup(#[from] SetupError),
    /// cannot listen for a control channel
    #[error(transparent)]
    Channel(#[from] ChannelError),
    /// the options do not describe a usable scenario
    #[error("invalid options: {0}")]
    Config(String),
}

impl From<qemu::QemuError> for MigrateError {
    fn from(e: qemu::QemuError) -> Self {
        Self::Setup(SetupError::Qemu(e))
    }
}

impl From<disk::DiskError> for MigrateError {
    fn from(e: disk::DiskError) -> Self {
        Self::Setup(SetupError::Disk(e))
    }
}

/// Live migration or save + restore.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Live-migrate the owner to a second QEMU process.
    Live,
    /// Save the owner to a file, quit its QEMU, restore it in a new one.
    Save,
    /// The handoff only, no migration: the owner stays at the source, forwarding through the
    /// peer (measures the forwarded path without a migration inside it).
    None,
    /// Cycles alternate: live in odd cycles, save + restore in even ones.
    Mixed,
}

impl Mode {
    /// `live`, `save`, `none` or `mixed`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Live => "live",
            Self::Save => "save",
            Self::None => "none",
            Self::Mixed => "mixed",
        }
    }

    /// What cycle `n` (from 1) does: `Mixed` is live in odd cycles and save in even ones.
    pub fn for_cycle(self, n: u32) -> Mode {
        match self {
            Self::Mixed if n % 2 == 1 => Self::Live,
            Self::Mixed => Self::Save,
            m => m,
        }
    }
}

/// Who directs the handoff, and when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Switch {
    /// The operator: this many ms after the owner's first I/O.
    AfterMs(u64),
    /// A point drawn from the seed (see [`seeded_switch_ms`]).
    Seeded,
    /// The owner asks (`migrate_at=N`) after submitting N writes.
    OwnerRequest(u64),
}

/// A deliberate failure of the migration itself, to exercise its detection (test hook).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DestinationFault {
    /// None.
    None,
    /// The destination (or the restore QEMU of a save) is started without the ivshmem device: it
    /// dies on the unknown savevm section while the source reports `completed` (seen with QEMU 7.2; the migration facts
    /// this rests on are in docs/design.md, "QEMU 7.2 facts the design rests on").
    WithoutRing,
}

/// Everything `migrate` needs.
#[derive(Debug, Clone)]
pub struct MigrateConfig {
    /// Live, save, or none (the handoff only).
    pub mode: Mode,
    /// The disk: a raw image (verified on the host) or `null-co` (the I/O path only; nothing kept,
    /// nothing verified).
    pub backend: BackendKind,
    /// Accelerator.
    pub accel: AccelChoice,
    /// Distinct blocks.
    pub blocks: u64,
    /// Passes.
    pub passes: u32,
    /// Queue depth.
    pub qd: u16,
    /// Schedule seed.
    pub seed: u64,
    /// How the (first) handoff is directed. Later cycles start at a point drawn from the seed
    /// after the previous failback ([`cycle_pause_ms`]).
    pub switch: Switch,
    /// Give the disk back to the owner after its migration (the failback), and close the ring.
    pub failback: bool,
    /// Wait this long after the owner runs at its destination before directing the failback
    /// (the owner's `failback-request` directs it earlier).
    pub failback_after_ms: u64,
    /// The owner asks for its disk back after this many writes (`failback_at=`; 0: never).
    pub failback_request_at: u64,
    /// Full cycles (handoff → migration → failback) to run; more than one needs `failback`.
    pub cycles: u32,
    /// The peer's fault hook.
    pub peer_fault: Fault,
    /// Test hook: break the migration.
    pub destination_fault: DestinationFault,
    /// Test hook: a fault the shim injects (`--inject WHAT@WHEN`).
    pub inject: Option<Inject>,
    /// Migrate the owner to another host (network namespaces, the disk over NBD, the migration
    /// over TCP; [`crosshost`]).
    pub cross_host: bool,
    /// The owner's guest RAM in MiB (the peer keeps [`setup::GUEST_MEMORY_MIB`]).
    pub guest_memory_mib: u32,
    /// What to do when a VM pauses on an I/O error (a full disk).
    pub on_io_error: IoErrorPolicy,
    /// Hard timeout of the whole scenario.
    pub timeout: Duration,
    /// Guest kernel; default: next to the shim's build output.
    pub kernel: Option<PathBuf>,
    /// QEMU binary (name on PATH or path).
    pub qemu: PathBuf,
    /// Working directory; default: a fresh temporary directory.
    pub workdir: Option<PathBuf>,
    /// Keep the disk image, logs and (temporary) workdir.
    pub keep: bool,
    /// Print the progress display on stderr.
    pub progress: bool,
}

/// A finished scenario: its report, the record of its handoff and its working directory.
#[derive(Debug)]
pub struct MigrateOutcome {
    /// The report.
    pub report: MigrateReport,
    /// When each step of each handoff happened, in order: each cycle's handoff (owner → peer),
    /// then its failback (peer → owner) if one was directed; none when the scenario could not
    /// start. The report's `phases` are computed from the first.
    pub handoffs: Vec<HandoffRecord>,
    /// Owns the working directory.
    pub workdir: Workdir,
}

/// The switch point drawn from `seed`: `20 + h(seed) mod span` ms after the owner's first I/O,
/// with `span = writes_total / 32` ms clamped to 50..=1000. Under TCG the owner completes about
/// 8 writes per ms at QD32, so the point lands in the first quarter of the write phase, leaving
/// the handoff and the migration time to happen while the owner still works. (A much faster
/// accelerator needs a larger workload or `--switch-after-ms`; the report says when the owner
/// finished too early.)
pub fn seeded_switch_ms(seed: u64, writes_total: u64) -> u64 {
    let span = (writes_total / 32).clamp(50, 1000);
    20 + splitmix64(seed ^ 0xba70_5717_c4e5_0000) % span
}

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = x;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The pause before cycle `cycle`'s handoff (cycles after the first), drawn from `seed`: 20..120
/// ms after the previous failback ended, while the owner does direct I/O.
pub fn cycle_pause_ms(seed: u64, cycle: u32) -> u64 {
    20 + splitmix64(seed ^ (u64::from(cycle) << 32) ^ 0xc7c1_e000) % 100
}

/// What the shim does when QEMU pauses a VM on an I/O error (`BLOCK_IO_ERROR`, action `stop`:
/// a full disk, with virtio-blk's default `werror=enospc`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoErrorPolicy {
    /// Stop the run at once, naming the cause.
    Fail,
    /// Try `cont` until the VM stays running (the operator freed space), for at most this long;
    /// then stop the run, naming the cause.
    Wait(Duration),
}

/// Why the scenario stopped early.
#[derive(Debug, thiserror::Error)]
enum Abort {
    #[error("timed out after {waited:?} waiting for {what}")]
    Timeout { what: String, waited: Duration },
    #[error("the owner's QEMU exited ({0})")]
    OwnerExited(String),
    #[error("the peer's QEMU exited ({0})")]
    PeerExited(String),
    #[error("{0} reported an error over the control channel")]
    GuestError(String),
    #[error("{vm}: QMP `{command}` failed: {source}")]
    Qmp {
        vm: String,
        command: &'static str,
        #[source]
        source: qmp::QmpError,
    },
    #[error("control channel of the {vm}: {source}")]
    Channel {
        vm: String,
        #[source]
        source: ChannelError,
    },
    #[error("interrupted by a signal")]
    Interrupted,
    #[error("{0}")]
    Other(String),
}

/// Renders an error with its sources.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

/// Runs the scenario. Failures of the handoff, the migration or the guests end up in the report
/// (`ok: false`); only set-up problems are errors.
pub fn migrate(cfg: &MigrateConfig) -> Result<MigrateOutcome, MigrateError> {
    let bins = setup::Binaries::locate(&cfg.qemu, cfg.kernel.as_deref())?;
    let (accel, accel_reason) = cfg.accel.resolve()?;
    let owner_guest = GuestConfig {
        role: GuestRole::Owner,
        vm: OWNER_VM,
        blocks: cfg.blocks,
        passes: cfg.passes,
        qd: cfg.qd,
        seed: cfg.seed,
        first_lba: 0,
        disk: DiskMode::Boot,
        // null-co reads zeroes: a read-back check there can only fail.
        verify: cfg.backend == BackendKind::File,
        panic: false,
        migrate_at: match cfg.switch {
            Switch::OwnerRequest(n) => n,
            _ => 0,
        },
        failback_at: cfg.failback_request_at,
        fault: Fault::None,
        ..GuestConfig::default()
    };
    let peer_guest = GuestConfig {
        role: GuestRole::Peer,
        vm: PEER_VM,
        fault: cfg.peer_fault,
        ..GuestConfig::default()
    };
    let writes_total = owner_guest.schedule().total_writes();
    if let Switch::OwnerRequest(n) = cfg.switch
        && (n == 0 || n >= writes_total)
    {
        return Err(MigrateError::Config(format!(
            "--migrate-at {n} must lie in 1..{writes_total} (the workload's writes)"
        )));
    }
    if cfg.cycles == 0 {
        return Err(MigrateError::Config("--cycles must be at least 1".into()));
    }
    let no_failback = |what: &str| {
        MigrateError::Config(format!(
            "{what} needs the failback (on by default for live, save and mixed; --failback for \
             --mode none; not with --no-failback)"
        ))
    };
    if cfg.cycles > 1 && !cfg.failback {
        return Err(no_failback(&format!("--cycles {}", cfg.cycles)));
    }
    if cfg.failback_request_at != 0 && !cfg.failback {
        return Err(no_failback("--failback-request-at"));
    }
    if cfg.failback_after_ms != 0 && !cfg.failback {
        return Err(no_failback("--failback-after-ms"));
    }
    if cfg.cross_host && (cfg.mode != Mode::Live || !cfg.failback) {
        return Err(MigrateError::Config(
            "--cross-host runs live cycles, each with its failback (--mode live)".into(),
        ));
    }
    if !cfg.cross_host
        && matches!(
            cfg.inject,
            Some(Inject::StorageRestartForwarding | Inject::DestinationCrashMigration)
        )
    {
        return Err(MigrateError::Config(format!(
            "--inject {} needs --cross-host",
            cfg.inject.map_or("", Inject::as_str)
        )));
    }
    if cfg.cross_host && cfg.backend != BackendKind::File {
        return Err(MigrateError::Config(
            "--cross-host needs --backend file (the image is exported over NBD)".into(),
        ));
    }
    if cfg.destination_fault != DestinationFault::None
        && !matches!(cfg.mode, Mode::Live | Mode::Save)
    {
        return Err(MigrateError::Config(
            "the destination fault hook needs --mode live or save".into(),
        ));
    }
    let owner_append = owner_guest.to_string();
    let peer_append = peer_guest.to_string();
    for a in [&owner_append, &peer_append] {
        GuestConfig::parse(a).map_err(|e| MigrateError::Config(e.to_string()))?;
    }

    let workdir = Workdir::create_with_prefix(cfg.workdir.as_deref(), cfg.keep, "baton-migrate-")?;
    let dir = workdir.path().to_path_buf();
    let disk_bytes = disk::image_size(0, cfg.blocks)?;
    let mut image = DiskImage::create(&dir.join(DISK_IMAGE_FILE), disk_bytes)?;
    // The image lives as long as the workdir: with `--keep`, and also with `--workdir` (a
    // directory the user named is never removed, and whoever names one wants what the report
    // points to in it: the report's `artifacts_kept` then holds for the image too).
    if workdir.kept() {
        image.keep();
    }
    let mut backend = match cfg.backend {
        BackendKind::File => DiskBackend::File(image.path().to_path_buf()),
        BackendKind::Null => DiskBackend::Null { size: disk_bytes },
    };
    // `--cross-host`: the hosts and the NBD export first; every QEMU opens the export.
    let mut cross = crosshost::prepare(cfg, image.path(), &dir)?.map(|(c, nbd)| {
        backend = nbd;
        c
    });
    let host_a = cross.as_ref().map(|c| c.hosts.source().netns.clone());
    let t0 = Instant::now();
    let mut progress = Progress::new(t0, cfg.progress);

    // The shim listens before QEMU starts: COM2 output without a listener is dropped.
    let owner_listener = ControlListener::bind(&dir.join("ctl-owner.sock"))?;
    let peer_listener = ControlListener::bind(&dir.join("ctl-peer.sock"))?;
    let base = bins.machine(accel, String::new(), PathBuf::new());
    let mut peer_spec = MachineSpec {
        append: peer_append,
        qmp_socket: dir.join("qmp-peer.sock"),
        control_socket: Some(peer_listener.path().to_path_buf()),
        netns: host_a.clone(),
        ..base.clone()
    };
    let mut owner_spec = MachineSpec {
        append: owner_append,
        qmp_socket: dir.join("qmp-owner.sock"),
        control_socket: Some(owner_listener.path().to_path_buf()),
        boot_disk: Some(backend.clone()),
        netns: host_a,
        memory_mib: cfg.guest_memory_mib,
        ..base
    };
    inject::prepare_machines(cfg, &owner_guest, &mut owner_spec, &mut peer_spec);

    let plan = Plan {
        cfg,
        guest: &owner_guest,
        accel: accel.as_str(),
        accel_reason,
        disk_bytes,
        workdir: &workdir,
        image: &image,
    };
    let owner = GuestSetup {
        spec: &owner_spec,
        listener: &owner_listener,
    };
    let peer = GuestSetup {
        spec: &peer_spec,
        listener: &peer_listener,
    };
    let started = start(cfg, &dir, t0, owner, peer, &backend, &mut progress);
    let (report, handoffs) = match started {
        Ok(mut s) => {
            s.cross = cross.take();
            let result = s.drive(&mut progress);
            s.end_cycle();
            let records = s.records();
            (s.finish(result, &mut progress, &plan), records)
        }
        Err(e) => {
            let why = chain(&e);
            progress.say(format!("set-up failed: {why}"));
            (failed_setup_report(&plan, why, progress), Vec::new())
        }
    };
    drop(owner_listener);
    drop(peer_listener);
    drop(cross);
    drop(image);
    Ok(MigrateOutcome {
        report,
        handoffs,
        workdir,
    })
}

/// What the scenario was set up to do (for the report).
struct Plan<'a> {
    cfg: &'a MigrateConfig,
    guest: &'a GuestConfig,
    accel: &'static str,
    accel_reason: String,
    disk_bytes: u64,
    workdir: &'a Workdir,
    image: &'a DiskImage,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_switch_points_spread_inside_the_window() {
        let pts: Vec<u64> = (0..10).map(|s| seeded_switch_ms(s, 4096)).collect();
        assert!(pts.iter().all(|&p| (20..20 + 128).contains(&p)), "{pts:?}");
        let mut uniq = pts.clone();
        uniq.sort_unstable();
        uniq.dedup();
        assert!(uniq.len() >= 8, "{pts:?}");
        assert_eq!(seeded_switch_ms(7, 2048), seeded_switch_ms(7, 2048));
        assert!(seeded_switch_ms(1, 16384) < 20 + 512);
        assert!(seeded_switch_ms(1, 1 << 30) < 1020);
        assert!(seeded_switch_ms(1, 1) < 70);
        let small: Vec<u64> = (1..=10).map(|s| seeded_switch_ms(s, 256)).collect();
        assert!(small.iter().all(|&p| (20..70).contains(&p)), "{small:?}");
    }

    #[test]
    fn event_times_come_from_qemus_stamp() {
        let now = Instant::now();
        let wall = std::time::SystemTime::now();
        let us = |t: std::time::SystemTime| {
            t.duration_since(std::time::UNIX_EPOCH).unwrap().as_micros() as u64
        };
        let ev = |timestamp_us| qmp::Event {
            name: "DEVICE_DELETED".into(),
            data: serde_json::Value::Null,
            timestamp_us,
        };
        let old = ev(us(wall - Duration::from_millis(40)));
        let at = event_instant(&old, now, wall);
        assert!((now - at).as_millis().abs_diff(40) <= 1);
        assert_eq!(event_instant(&ev(0), now, wall), now);
        let future = ev(us(wall + Duration::from_secs(5)));
        assert_eq!(event_instant(&future, now, wall), now);
        let ancient = ev(us(wall - Duration::from_secs(3600)));
        assert_eq!(event_instant(&ancient, now, wall), now);
    }
}
