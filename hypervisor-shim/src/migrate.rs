//! `hypervisor-shim migrate`: the handoff (docs/design.md, "The handoff"; US 20070204265A1,
//! claim 1), then a live migration or a save + restore of the owner.
//!
//! Two guests: the **owner** (VM1: the workload, the disk in slot 4) and the **peer** (VM2: no
//! disk). Each has a control channel on COM2 ([`crate::channel`]). While the owner writes, the
//! handoff is directed — by the operator (`--switch-after-ms`, or a point drawn from `--seed`) or
//! by the owner itself (`migrate_at=N` → `migrate-request`):
//!
//! 1. `redirect` to the owner, `device_del disk0` (the owner completes the ACPI eject itself);
//!    while port 1 drains: a fresh `/dev/shm` file, `object-add` + `device_add ivshmem-plain` into
//!    both guests (owner `master=on`), `ring-opened 6` to both;
//! 2. `drained`, `released` from the owner; the device-level `DEVICE_DELETED`; `blockdev-del` in
//!    the owner; `blockdev-add` + `device_add virtio-blk-pci` (slot 4) in the peer; `disk-attached`;
//! 3. `peer-ready` from the peer; `open-port2` to the owner; `forwarding` back;
//! 4. live: a destination QEMU (the owner's current device set: no disk, the ivshmem device,
//!    `-incoming defer`, its own control socket), `x-ignore-shared` on both sides, the QEMU 7.2
//!    BAR2 workaround (qemu-notes.md), `migrate-incoming` + `migrate` over a Unix socket; the
//!    destination's status decides success, and a failed migration resumes the source.
//!    save: `migrate` to `exec:cat > vm1.state`, `quit` the source, a restore QEMU with
//!    `-incoming defer` + the same workaround, `migrate-incoming exec:cat vm1.state`;
//! 5. the owner finishes its workload at the destination through the peer; the peer is quit over
//!    QMP (which flushes the image) and the host verifies every block ([`crate::disk`]).
//!
//! Every wait has a timeout; every QEMU, socket, shared-memory file and temporary directory is
//! owned by a guard. Guest bytes are untrusted (I6): serial lines are bounded and parsed strictly,
//! control messages pass the [`Handoff`] gate.

use std::collections::{BTreeMap, VecDeque};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use baton_core::cmdline::{DiskMode, Fault, GuestConfig, Role as GuestRole};
use baton_core::control::{HandoffState, Message, Role};
use baton_core::report::{GuestReport, parse_line};
use baton_core::ring::{self, offsets};
use serde_json::Value;

use crate::channel::{ChannelError, ControlChannel, ControlListener, Handoff, Received};
use crate::console::{Recv, SerialConsole, StderrCapture};
use crate::disk::{self, Acks, DiskImage, Verification};
use crate::qemu::{
    self, DISK_ID, DiskBackend, EXIT_SUCCESS, MachineSpec, PEER_DISK_SLOT, QemuProcess,
    RING_DEVICE_ID, RING_MEMDEV_ID, RING_SLOT, RingSpec,
};
use crate::qmp::{
    self, BlockdevAdd, BlockdevDel, Cont, DeviceAdd, DeviceDel, HumanMonitorCommand, Migrate,
    MigrateIncoming, MigrateSetCapabilities, MigrationCapability, MigrationInfo, ObjectAdd, Qmp,
    QueryMigrate, QueryPci, QueryStatus, QueryVersion, Quit,
};
use crate::report::{GuestExit, MigrateReport, Phases, SwitchReport, TimelineEntry, VmEvent};
use crate::run::{self, AccelChoice, Ending, RunError, SocketPath, Workdir};
use crate::shm::{self, RingWatch, SharedFile};

/// Size of the shared ring region (a power of two, as an ivshmem BAR must be).
pub const RING_BYTES: u64 = 4 << 20;
/// The peer's VM id.
pub const PEER_VM: u32 = 2;
/// The owner's VM id.
pub const OWNER_VM: u32 = 1;
/// Default switch point: this long after the owner's first I/O.
pub const DEFAULT_SWITCH_AFTER_MS: u64 = 300;

/// Guest RAM.
const MEMORY_MIB: u32 = 128;
/// Longest wait for a QEMU to connect its control socket and for its QMP socket to answer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// Longest wait for one QMP command.
const QMP_COMMAND_TIMEOUT: Duration = Duration::from_secs(10);
/// Read timeout of the QMP sockets here: bounds how long an event poll blocks.
const QMP_POLL: Duration = Duration::from_millis(2);
/// Longest wait for both guests' `hello`.
const HELLO_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest wait for each handoff step (drained, released, DEVICE_DELETED, peer-ready, forwarding).
const STEP_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait for a migration (or save) to finish.
const MIGRATION_TIMEOUT: Duration = Duration::from_secs(90);
/// Longest wait for the destination to run after the migration completed.
const DEST_RUN_TIMEOUT: Duration = Duration::from_secs(15);
/// Longest wait for a QEMU to exit after `quit`.
const QUIT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long console lines are collected after a QEMU exited.
const EXIT_GRACE: Duration = Duration::from_secs(3);
/// Main loop period.
const TICK: Duration = Duration::from_millis(1);
/// Period of `query-migrate` polls.
const MIGRATE_POLL: Duration = Duration::from_millis(5);
/// Most notes kept.
const MAX_NOTES: usize = 32;

/// Errors that stop `migrate` before it can produce a report.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// set-up shared with `run`: QEMU, kernel, workdir, disk
    #[error(transparent)]
    Setup(#[from] RunError),
    /// cannot listen for a control channel
    #[error(transparent)]
    Channel(#[from] ChannelError),
    /// the options do not describe a usable scenario
    #[error("invalid options: {0}")]
    Config(String),
}

impl From<qemu::QemuError> for MigrateError {
    fn from(e: qemu::QemuError) -> Self {
        Self::Setup(RunError::Qemu(e))
    }
}

impl From<disk::DiskError> for MigrateError {
    fn from(e: disk::DiskError) -> Self {
        Self::Setup(RunError::Disk(e))
    }
}

/// Live migration or save + restore.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Live-migrate the owner to a second QEMU process.
    Live,
    /// Save the owner to a file, quit its QEMU, restore it in a new one.
    Save,
}

impl Mode {
    /// `live` or `save`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Live => "live",
            Self::Save => "save",
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
    /// The destination is started without the ivshmem device: it dies on the unknown savevm
    /// section while the source reports `completed` (qemu-notes.md).
    WithoutRing,
}

/// Everything `migrate` needs.
#[derive(Debug, Clone)]
pub struct MigrateConfig {
    /// Live or save.
    pub mode: Mode,
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
    /// How the handoff is directed.
    pub switch: Switch,
    /// The peer's fault hook.
    pub peer_fault: Fault,
    /// Test hook: break the migration.
    pub destination_fault: DestinationFault,
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

/// A finished scenario: its report and its working directory.
#[derive(Debug)]
pub struct MigrateOutcome {
    /// The report.
    pub report: MigrateReport,
    /// Owns the working directory.
    pub workdir: Workdir,
}

/// The switch point drawn from `seed`: `20 + h(seed) mod span` ms after the owner's first I/O,
/// with `span = writes_total / 32` ms clamped to 10..=1000. Under TCG the owner completes about
/// 8 writes per ms at QD32, so the point lands in the first quarter of the write phase, leaving
/// the handoff and the migration time to happen while the owner still works. (A much faster
/// accelerator needs a larger workload or `--switch-after-ms`; the report says when the owner
/// finished too early.)
pub fn seeded_switch_ms(seed: u64, writes_total: u64) -> u64 {
    let span = (writes_total / 32).clamp(10, 1000);
    20 + splitmix64(seed ^ 0xba70_5717_c4e5_0000) % span
}

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = x;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
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

/// One QEMU process of the scenario with its console, stderr and QMP session.
struct Vm {
    // Field order is drop order: QEMU is killed before its console threads are let go.
    qemu: QemuProcess,
    label: &'static str,
    serial: SerialConsole,
    serial_closed: bool,
    stderr: StderrCapture,
    qmp: Option<Qmp<UnixStream>>,
    events: Vec<(Instant, qmp::Event)>,
    exit: Option<ExitStatus>,
    exited_at: Option<Instant>,
    command: String,
    _qmp_socket: SocketPath,
}

impl Vm {
    fn spawn(label: &'static str, spec: &MachineSpec, dir: &Path) -> Result<Self, MigrateError> {
        let wd = |source| {
            MigrateError::Setup(RunError::Workdir {
                path: dir.to_path_buf(),
                source,
            })
        };
        let _ = std::fs::remove_file(&spec.qmp_socket);
        let sock = SocketPath(spec.qmp_socket.clone());
        let command = spec.display();
        std::fs::write(
            dir.join(format!("qemu-{label}.cmdline")),
            command.clone() + "\n",
        )
        .map_err(wd)?;
        let mut qemu = spec.spawn()?;
        let t0 = qemu.started();
        let stdout = qemu
            .take_stdout()
            .ok_or_else(|| wd(std::io::Error::other("QEMU stdout not piped")))?;
        let stderr = qemu
            .take_stderr()
            .ok_or_else(|| wd(std::io::Error::other("QEMU stderr not piped")))?;
        let serial = SerialConsole::start(stdout, &dir.join(format!("serial-{label}.log")), t0)
            .map_err(wd)?;
        let stderr =
            StderrCapture::start(stderr, &dir.join(format!("qemu-{label}.stderr"))).map_err(wd)?;
        Ok(Self {
            qemu,
            label,
            serial,
            serial_closed: false,
            stderr,
            qmp: None,
            events: Vec::new(),
            exit: None,
            exited_at: None,
            command,
            _qmp_socket: sock,
        })
    }

    fn serial_log(&self, dir: &Path) -> PathBuf {
        dir.join(format!("serial-{}.log", self.label))
    }

    fn connect_qmp(&mut self, path: &Path) -> Result<(), Abort> {
        let qemu = &mut self.qemu;
        let q = qmp::connect_unix(path, CONNECT_TIMEOUT, || qemu.alive()).map_err(|source| {
            Abort::Qmp {
                vm: self.label.into(),
                command: "connect",
                source,
            }
        })?;
        // Short reads, so event polls don't block the loop.
        let _ = q.stream().set_read_timeout(Some(QMP_POLL));
        self.qmp = Some(q);
        Ok(())
    }

    fn exec<C: qmp::Command>(&mut self, cmd: &C) -> Result<C::Ok, Abort> {
        self.exec_timeout(cmd, QMP_COMMAND_TIMEOUT)
    }

    fn exec_timeout<C: qmp::Command>(
        &mut self,
        cmd: &C,
        timeout: Duration,
    ) -> Result<C::Ok, Abort> {
        let label = self.label;
        let Some(q) = self.qmp.as_mut() else {
            return Err(Abort::Other(format!("{label}: no QMP session")));
        };
        let r = q.execute(cmd, timeout).map_err(|source| Abort::Qmp {
            vm: label.into(),
            command: C::NAME,
            source,
        });
        self.take_events();
        r
    }

    fn hmp(&mut self, line: String) -> Result<(), Abort> {
        let out = self.exec(&HumanMonitorCommand { command_line: line })?;
        if out.trim().is_empty() {
            Ok(())
        } else {
            Err(Abort::Other(format!(
                "{}: HMP said: {}",
                self.label,
                out.trim()
            )))
        }
    }

    /// Reads the QMP socket for up to `wait` and moves the events into `events`.
    fn pump_events(&mut self, wait: Duration) {
        if let Some(q) = self.qmp.as_mut() {
            let r = q.pump(wait);
            self.take_events();
            if r.is_err() {
                // Closed or broken: the process checks report the rest.
                self.qmp = None;
            }
        }
    }

    fn take_events(&mut self) {
        if let Some(q) = self.qmp.as_mut() {
            let now = Instant::now();
            let wall = std::time::SystemTime::now();
            self.events.extend(
                q.take_events()
                    .into_iter()
                    .map(|e| (event_instant(&e, now, wall), e)),
            );
        }
    }

    /// The exit status once QEMU has exited.
    fn poll_exit(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none()
            && let Ok(Some(st)) = self.qemu.try_wait()
        {
            self.exit = Some(st);
            self.exited_at = Some(Instant::now());
        }
        self.exit
    }

    fn alive(&mut self) -> bool {
        self.poll_exit().is_none()
    }

    /// `quit` over QMP (which flushes the disk), then wait; kill if it does not exit in time.
    fn quit(&mut self) -> Result<ExitStatus, String> {
        if let Some(st) = self.poll_exit() {
            return Ok(st);
        }
        let sent = self.exec(&Quit {});
        match self.qemu.wait_timeout(QUIT_TIMEOUT) {
            Ok(Some(st)) => {
                self.exit = Some(st);
                self.exited_at = Some(Instant::now());
                Ok(st)
            }
            _ => {
                let st = self.qemu.kill().map_err(|e| e.to_string())?;
                self.exit = Some(st);
                self.exited_at = Some(Instant::now());
                Err(format!(
                    "{} did not exit within {QUIT_TIMEOUT:?} of `quit` ({}); killed",
                    self.label,
                    sent.err().map_or_else(|| "sent".into(), |e| chain(&e))
                ))
            }
        }
    }

    fn kill(&mut self) {
        if self.poll_exit().is_none()
            && let Ok(st) = self.qemu.kill()
        {
            self.exit = Some(st);
            self.exited_at = Some(Instant::now());
        }
    }

    fn stderr_tail(&self) -> String {
        let all = self.stderr.collect(Duration::from_millis(500));
        let mut tail: Vec<&str> = all.lines().rev().take(3).collect();
        tail.reverse();
        tail.join(" | ")
    }
}

/// When an event happened on the shim's clock: QEMU stamps events with its wall clock, so the
/// event's age is subtracted from `now` (`wall` is the wall clock at `now`). Events whose stamp is
/// missing, in the future or more than a minute old get `now` (when the shim read them).
fn event_instant(e: &qmp::Event, now: Instant, wall: std::time::SystemTime) -> Instant {
    let stamp = std::time::UNIX_EPOCH + Duration::from_micros(e.timestamp_us);
    match wall.duration_since(stamp) {
        Ok(age) if e.timestamp_us > 0 && age < Duration::from_secs(60) => {
            now.checked_sub(age).unwrap_or(now)
        }
        _ => now,
    }
}

fn describe_exit(st: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (st.code(), st.signal()) {
        (Some(c), _) => format!("status {c}"),
        (None, Some(s)) => format!("signal {s}"),
        _ => "unknown status".into(),
    }
}

/// What the owner said on COM1 (source and destination together), each accepted once.
#[derive(Debug, Default)]
struct OwnerLines {
    first_io: Option<Instant>,
    result: Option<Result<GuestReport, String>>,
    result_from: Option<&'static str>,
    peer_fault: Option<String>,
    panic: Option<String>,
    port_stats: Vec<crate::report::PortStatsReport>,
    timeline: Option<crate::report::CompletionTimeline>,
}

/// A destination QEMU that was started but is not connected yet.
struct PendingDest {
    vm: Vm,
    listener: ControlListener,
    qmp_socket: PathBuf,
}

/// When each step happened.
#[derive(Debug, Default, Clone, Copy)]
struct Times {
    directed: Option<Instant>,
    drained: Option<Instant>,
    device_deleted: Option<Instant>,
    peer_ready: Option<Instant>,
    first_forwarded: Option<Instant>,
    forwarding: Option<Instant>,
    migrate_cmd: Option<Instant>,
    migrated: Option<Instant>,
    save_done: Option<Instant>,
    restore_start: Option<Instant>,
    restore_done: Option<Instant>,
}

#[derive(Debug, Default)]
struct MigrationOutcome {
    status: Option<String>,
    destination_status: Option<String>,
    downtime_ms: Option<u64>,
    total_ms: Option<u64>,
    error: Option<String>,
    source_resumed: bool,
}

/// The running scenario.
struct Scenario<'a> {
    cfg: &'a MigrateConfig,
    dir: PathBuf,
    t0: Instant,
    deadline: Instant,
    /// The owner's current QEMU: the source until a migration succeeds, then the destination.
    owner: Vm,
    /// The peer's QEMU.
    peer: Vm,
    /// Earlier QEMUs of the owner (the source after a migration, a failed destination).
    retired: Vec<Vm>,
    owner_is_destination: bool,
    owner_ctl: ControlChannel,
    peer_ctl: ControlChannel,
    handoff: Handoff,
    inbox: VecDeque<(Role, Message, Instant)>,
    owner_lines: OwnerLines,
    owner_spec: MachineSpec,
    backend: DiskBackend,
    shm: Option<SharedFile>,
    watch: Option<RingWatch>,
    cq_base: Option<u32>,
    times: Times,
    migration: MigrationOutcome,
    drained: Option<(u64, u32)>,
    switch_ms: Option<u64>,
    notes: Vec<String>,
    failures: Vec<String>,
    qemu_version: Option<String>,
    commands: BTreeMap<String, String>,
    serial_logs: BTreeMap<String, String>,
    events: Vec<VmEvent>,
    guest_error: Option<String>,
    peer_fault_injected: bool,
    /// Live mode: the destination, started while the disk moves.
    pending_dest: Option<Result<PendingDest, Abort>>,
}

/// Runs the scenario. Failures of the handoff, the migration or the guests end up in the report
/// (`ok: false`); only set-up problems are errors.
pub fn migrate(cfg: &MigrateConfig) -> Result<MigrateOutcome, MigrateError> {
    let qemu_bin = qemu::locate_qemu(&cfg.qemu)?;
    let bios = qemu::locate_bios()?;
    let kernel = match &cfg.kernel {
        Some(k) => k.clone(),
        None => run::default_kernel()?,
    };
    if !kernel.is_file() {
        return Err(RunError::NoKernel(kernel).into());
    }
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
        verify: true,
        panic: false,
        migrate_at: match cfg.switch {
            Switch::OwnerRequest(n) => n,
            _ => 0,
        },
        fault: Fault::None,
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
    if cfg.destination_fault != DestinationFault::None && cfg.mode != Mode::Live {
        return Err(MigrateError::Config(
            "the destination fault hook needs --mode live".into(),
        ));
    }
    let owner_append = owner_guest.to_string();
    let peer_append = peer_guest.to_string();
    for a in [&owner_append, &peer_append] {
        GuestConfig::parse(a).map_err(|e| MigrateError::Config(e.to_string()))?;
    }

    let workdir = Workdir::create(cfg.workdir.as_deref(), cfg.keep)?;
    let dir = workdir.path().to_path_buf();
    let disk_bytes = disk::image_size(0, cfg.blocks)?;
    let mut image = DiskImage::create(&dir.join("disk.img"), disk_bytes)?;
    if cfg.keep {
        image.keep();
    }
    let backend = DiskBackend::File(image.path().to_path_buf());
    let t0 = Instant::now();
    let mut progress = Progress::new(t0, cfg.progress);

    // The shim listens before QEMU starts: COM2 output without a listener is dropped.
    let owner_listener = ControlListener::bind(&dir.join("ctl-owner.sock"))?;
    let peer_listener = ControlListener::bind(&dir.join("ctl-peer.sock"))?;
    let base = MachineSpec {
        qemu: qemu_bin,
        accel,
        memory_mib: MEMORY_MIB,
        bios,
        kernel,
        append: String::new(),
        qmp_socket: PathBuf::new(),
        boot_disk: None,
        control_socket: None,
        ring: None,
        incoming: false,
    };
    let peer_spec = MachineSpec {
        append: peer_append,
        qmp_socket: dir.join("qmp-peer.sock"),
        control_socket: Some(peer_listener.path().to_path_buf()),
        ..base.clone()
    };
    let owner_spec = MachineSpec {
        append: owner_append,
        qmp_socket: dir.join("qmp-owner.sock"),
        control_socket: Some(owner_listener.path().to_path_buf()),
        boot_disk: Some(backend.clone()),
        ..base
    };

    let plan = Plan {
        cfg,
        guest: &owner_guest,
        accel: accel.as_str(),
        accel_reason,
        disk_bytes,
        workdir: &workdir,
        image: &image,
    };
    let started = start(
        cfg,
        &dir,
        t0,
        &owner_spec,
        &peer_spec,
        &owner_listener,
        &peer_listener,
        &backend,
        &mut progress,
    );
    let report = match started {
        Ok(mut s) => {
            let result = s.drive(&mut progress);
            s.finish(result, &mut progress, &plan)
        }
        Err(e) => {
            let why = chain(&e);
            progress.say(format!("set-up failed: {why}"));
            failed_setup_report(&plan, why, progress)
        }
    };
    drop(owner_listener);
    drop(peer_listener);
    drop(image);
    Ok(MigrateOutcome { report, workdir })
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

/// The progress display: timestamped lines on stderr, kept for the report.
struct Progress {
    t0: Instant,
    print: bool,
    lines: Vec<TimelineEntry>,
}

impl Progress {
    fn new(t0: Instant, print: bool) -> Self {
        Self {
            t0,
            print,
            lines: Vec::new(),
        }
    }

    fn say(&mut self, what: String) {
        let at_ms = ms_between(self.t0, Instant::now());
        if self.print {
            eprintln!("[{at_ms:8.1} ms] {what}");
        }
        self.lines.push(TimelineEntry { at_ms, what });
    }
}

fn ms_between(a: Instant, b: Instant) -> f64 {
    let d = if b >= a {
        (b - a).as_secs_f64()
    } else {
        -(a - b).as_secs_f64()
    };
    (d * 1e4).round() / 10.0
}

fn phase(a: Option<Instant>, b: Option<Instant>) -> Option<f64> {
    Some(ms_between(a?, b?))
}

/// Starts both guests and connects everything.
#[allow(clippy::too_many_arguments)]
fn start<'a>(
    cfg: &'a MigrateConfig,
    dir: &Path,
    t0: Instant,
    owner_spec: &MachineSpec,
    peer_spec: &MachineSpec,
    owner_listener: &ControlListener,
    peer_listener: &ControlListener,
    backend: &DiskBackend,
    progress: &mut Progress,
) -> Result<Scenario<'a>, Abort> {
    let setup = |e: MigrateError| Abort::Other(chain(&e));
    let mut peer = Vm::spawn("peer", peer_spec, dir).map_err(setup)?;
    let mut owner = Vm::spawn("owner", owner_spec, dir).map_err(setup)?;
    progress.say(format!(
        "started the peer (pid {}) and the owner (pid {}) under {}",
        peer.qemu.pid(),
        owner.qemu.pid(),
        owner_spec.accel.as_str()
    ));
    let accept = |l: &ControlListener, vm: &mut Vm| {
        let label = vm.label;
        l.accept(CONNECT_TIMEOUT, || vm.alive())
            .map_err(|source| Abort::Channel {
                vm: label.into(),
                source,
            })
    };
    let peer_stream = accept(peer_listener, &mut peer)?;
    let owner_stream = accept(owner_listener, &mut owner)?;
    peer.connect_qmp(&peer_spec.qmp_socket)?;
    owner.connect_qmp(&owner_spec.qmp_socket)?;
    let version = owner.exec(&QueryVersion {})?;
    let mut commands = BTreeMap::new();
    commands.insert("owner".to_owned(), owner.command.clone());
    commands.insert("peer".to_owned(), peer.command.clone());
    let mut serial_logs = BTreeMap::new();
    for vm in [&owner, &peer] {
        serial_logs.insert(
            vm.label.to_owned(),
            vm.serial_log(dir).display().to_string(),
        );
    }
    Ok(Scenario {
        cfg,
        dir: dir.to_path_buf(),
        t0,
        deadline: t0 + cfg.timeout,
        owner,
        peer,
        retired: Vec::new(),
        owner_is_destination: false,
        owner_ctl: ControlChannel::new("owner", owner_stream),
        peer_ctl: ControlChannel::new("peer", peer_stream),
        handoff: Handoff::new(OWNER_VM, PEER_VM),
        inbox: VecDeque::new(),
        owner_lines: OwnerLines::default(),
        owner_spec: owner_spec.clone(),
        backend: backend.clone(),
        shm: None,
        watch: None,
        cq_base: None,
        times: Times::default(),
        migration: MigrationOutcome::default(),
        drained: None,
        switch_ms: None,
        notes: Vec::new(),
        failures: Vec::new(),
        qemu_version: Some(version.to_string()),
        commands,
        serial_logs,
        events: Vec::new(),
        guest_error: None,
        peer_fault_injected: false,
        pending_dest: None,
    })
}

impl Scenario<'_> {
    fn note(&mut self, n: String) {
        if self.notes.len() < MAX_NOTES {
            self.notes.push(n);
        }
    }

    /// The handoff itself, then the migration, then the wait for the owner at the destination.
    fn drive(&mut self, p: &mut Progress) -> Result<(), Abort> {
        self.wait_until(p, "both guests' hello", HELLO_TIMEOUT, |s| {
            Ok(s.handoff.both_hello().then_some(()))
        })?;
        p.say("both guests said hello over COM2 (owner: port 1 = virtio-blk in slot 4)".into());
        self.wait_for_switch(p)?;
        self.direct(p)?;
        let (msg, at) = self.wait_msg(p, Role::Owner, "the owner's `drained`", |m| {
            matches!(m, Message::Drained { .. })
        })?;
        if let Message::Drained {
            port1_completed,
            held,
        } = msg
        {
            self.drained = Some((port1_completed, held));
            self.times.drained = Some(at);
            p.say(format!(
                "drained: port 1 completed {port1_completed} requests, {held} held at port 2"
            ));
        }
        let (msg, _) = self.wait_msg(p, Role::Owner, "the owner's `released`", |m| {
            matches!(m, Message::Released { .. })
        })?;
        if let Message::Released { slot } = msg {
            if slot != qemu::BOOT_DISK_SLOT {
                return Err(Abort::Other(format!(
                    "the owner released slot {slot}, but the disk is in slot {}",
                    qemu::BOOT_DISK_SLOT
                )));
            }
            p.say(format!(
                "released: the owner reset the device and ejected slot {slot}"
            ));
        }
        self.wait_device_deleted(p)?;
        self.move_disk(p)?;
        if self.cfg.mode == Mode::Live {
            // The owner's device set is final now (no disk, the ivshmem device): start the
            // destination while the peer brings the disk up.
            let pd = self.launch_destination("destination");
            if let Ok(d) = &pd {
                p.say(format!(
                    "destination QEMU started (pid {}) with the owner's current device set",
                    d.vm.qemu.pid()
                ));
            }
            self.pending_dest = Some(pd);
        }
        let (msg, at) = self.wait_msg(p, Role::Peer, "the peer's `peer-ready`", |m| {
            matches!(m, Message::PeerReady { .. })
        })?;
        self.times.peer_ready = Some(at);
        if let Message::PeerReady { capacity_sectors } = msg {
            p.say(format!(
                "peer ready: disk initialised ({capacity_sectors} sectors), ring attached"
            ));
        }
        self.arm_ring_watch();
        self.send(Role::Owner, Message::OpenPort2)?;
        p.say("open-port2 sent to the owner".into());
        let (_, at) = self.wait_msg(p, Role::Owner, "the owner's `forwarding`", |m| {
            matches!(m, Message::Forwarding)
        })?;
        self.times.forwarding = Some(at);
        p.say(format!(
            "forwarding: port 2 forwards over the ring (handoff took {:.1} ms)",
            phase(self.times.directed, Some(at)).unwrap_or(0.0)
        ));
        if self.watch.is_some() {
            let seen = self.wait_until(p, "the first forwarded completion", STEP_TIMEOUT, |s| {
                Ok(s.times.first_forwarded.map(|_| ()))
            });
            match seen {
                Ok(()) => {}
                Err(Abort::Timeout { .. }) => {
                    self.note("no forwarded completion seen on the ring".into());
                }
                Err(e) => return Err(e),
            }
        }
        match self.cfg.mode {
            Mode::Live => self.live_migrate(p)?,
            Mode::Save => self.save_restore(p)?,
        }
        self.wait_owner_exit(p)
    }

    /// Waits until the switch point, or for the owner's `migrate-request`.
    fn wait_for_switch(&mut self, p: &mut Progress) -> Result<(), Abort> {
        let after_ms = match self.cfg.switch {
            Switch::OwnerRequest(n) => {
                // However long the owner takes to submit n writes: the scenario deadline bounds it.
                self.wait_until(p, "the owner's `migrate-request`", Duration::MAX, |s| {
                    Ok(s.take_msg(Role::Owner, |m| matches!(m, Message::MigrateRequest)))
                })?;
                p.say(format!(
                    "migrate-request: the owner asked to be migrated after {n} writes"
                ));
                return Ok(());
            }
            Switch::AfterMs(ms) => ms,
            Switch::Seeded => {
                let total = u64::from(self.cfg.passes).saturating_mul(self.cfg.blocks);
                seeded_switch_ms(self.cfg.seed, total)
            }
        };
        self.switch_ms = Some(after_ms);
        let first_io = self.wait_until(p, "the owner's first I/O", HELLO_TIMEOUT, |s| {
            Ok(s.owner_lines.first_io)
        })?;
        p.say(format!(
            "the owner's workload started; switch in {after_ms} ms"
        ));
        let at = first_io + Duration::from_millis(after_ms);
        self.wait_until(p, "the switch point", Duration::MAX, |_| {
            Ok((Instant::now() >= at).then_some(()))
        })
    }

    /// Step 1: `redirect` + `device_del`; the ring opened in both guests while port 1 drains.
    fn direct(&mut self, p: &mut Progress) -> Result<(), Abort> {
        if !self.handoff.shim_moves_to(HandoffState::Redirecting) {
            return Err(Abort::Other(format!(
                "cannot direct the switch in state {:?}",
                self.handoff.state()
            )));
        }
        self.send(Role::Owner, Message::Redirect)?;
        self.times.directed = Some(Instant::now());
        self.owner.exec(&DeviceDel { id: DISK_ID.into() })?;
        p.say(format!("directed: redirect sent, {DISK_ID} device_del"));
        let shm = SharedFile::create(Path::new(shm::SHM_DIR), RING_BYTES)
            .map_err(|e| Abort::Other(chain(&e)))?;
        let ring = RingSpec {
            mem_path: shm.path().to_path_buf(),
            size: RING_BYTES,
            master: true,
            slot: RING_SLOT,
        };
        self.shm = Some(shm);
        for (vm, master) in [(&mut self.owner, true), (&mut self.peer, false)] {
            let r = RingSpec {
                master,
                ..ring.clone()
            };
            vm.exec(&ObjectAdd {
                qom_type: "memory-backend-file".into(),
                id: RING_MEMDEV_ID.into(),
                props: r.backend_props(),
            })?;
            vm.exec(&DeviceAdd {
                driver: "ivshmem-plain".into(),
                id: RING_DEVICE_ID.into(),
                props: r.device_props(),
            })?;
        }
        let slot = RING_SLOT;
        self.send(Role::Owner, Message::RingOpened { slot })?;
        self.send(Role::Peer, Message::RingOpened { slot })?;
        p.say(format!(
            "ring opened while port 1 drains: {} ({} MiB), ivshmem-plain in slot {slot} of both (owner master=on)",
            ring.mem_path.display(),
            RING_BYTES >> 20
        ));
        self.owner_spec.boot_disk = None;
        self.owner_spec.ring = Some(ring);
        Ok(())
    }

    /// Waits for the device-level `DEVICE_DELETED` of the disk (the second one; qemu-notes.md).
    fn wait_device_deleted(&mut self, p: &mut Progress) -> Result<(), Abort> {
        let at = self.wait_until(p, "DEVICE_DELETED of disk0", STEP_TIMEOUT, |s| {
            s.owner.pump_events(QMP_POLL);
            Ok(s.owner
                .events
                .iter()
                .find(|(_, e)| {
                    e.name == "DEVICE_DELETED"
                        && e.data.get("device").and_then(Value::as_str) == Some(DISK_ID)
                })
                .map(|(at, _)| *at))
        })?;
        self.times.device_deleted = Some(at);
        p.say(format!(
            "device deleted: DEVICE_DELETED {DISK_ID} from the owner's QEMU (image unlocked)"
        ));
        Ok(())
    }

    /// Step 2: the disk moves from the owner's QEMU to the peer's.
    fn move_disk(&mut self, p: &mut Progress) -> Result<(), Abort> {
        self.owner.exec(&BlockdevDel {
            node_name: DISK_ID.into(),
        })?;
        self.peer
            .exec(&BlockdevAdd(self.backend.blockdev_options(DISK_ID)))?;
        self.peer.exec(&DeviceAdd {
            driver: "virtio-blk-pci".into(),
            id: DISK_ID.into(),
            props: qemu::virtio_blk_device_props(DISK_ID, PEER_DISK_SLOT),
        })?;
        self.send(
            Role::Peer,
            Message::DiskAttached {
                slot: PEER_DISK_SLOT,
            },
        )?;
        p.say(format!(
            "disk moved: blockdev-del in the owner; blockdev-add + device_add virtio-blk-pci (slot {PEER_DISK_SLOT}) in the peer; disk-attached sent"
        ));
        Ok(())
    }

    /// Maps the ring read-only and remembers the completion tail, to see the first forwarded
    /// completion.
    fn arm_ring_watch(&mut self) {
        let Some(shm) = &self.shm else { return };
        match RingWatch::open(shm.path(), ring::HEADER_LEN) {
            Ok(w) => {
                self.cq_base = w.read_u32(offsets::CQ_TAIL);
                self.watch = Some(w);
            }
            Err(e) => self.note(format!("ring watch unavailable: {}", chain(&e))),
        }
    }

    fn send(&mut self, to: Role, msg: Message) -> Result<(), Abort> {
        let ch = match to {
            Role::Owner => &mut self.owner_ctl,
            Role::Peer => &mut self.peer_ctl,
        };
        ch.send(msg).map_err(|source| Abort::Channel {
            vm: to.name().into(),
            source,
        })
    }

    /// One round: control channels, consoles, the ring watch, process exits.
    fn step(&mut self, p: &mut Progress) -> Result<(), Abort> {
        for role in [Role::Owner, Role::Peer] {
            let ch = match role {
                Role::Owner => &mut self.owner_ctl,
                Role::Peer => &mut self.peer_ctl,
            };
            let got = ch.poll().map_err(|source| Abort::Channel {
                vm: role.name().into(),
                source,
            })?;
            for r in got {
                match r {
                    Received::Message { msg, at, .. } => self.on_message(p, role, msg, at),
                    Received::Bad(why) => {
                        let n = format!("bad control frame from the {}: {why}", role.name());
                        p.say(n.clone());
                        self.note(n);
                    }
                }
            }
        }
        self.read_consoles(p);
        if let (Some(w), Some(base), None) = (&self.watch, self.cq_base, self.times.first_forwarded)
            && w.read_u32(offsets::CQ_TAIL).is_some_and(|t| t != base)
        {
            let now = Instant::now();
            self.times.first_forwarded = Some(now);
            p.say("first forwarded completion: the peer moved the ring's completion tail".into());
        }
        for vm in [&mut self.owner, &mut self.peer] {
            vm.poll_exit();
            vm.take_events();
        }
        Ok(())
    }

    fn on_message(&mut self, p: &mut Progress, from: Role, msg: Message, at: Instant) {
        match self.handoff.offer(from, &msg) {
            Ok(_) => {
                if let Message::Error { code } = msg {
                    let e = format!("the {} sent `error {code}`", from.name());
                    p.say(e.clone());
                    self.guest_error = Some(e);
                }
                self.inbox.push_back((from, msg, at));
            }
            Err(rej) => p.say(rej.to_string()),
        }
    }

    fn read_consoles(&mut self, p: &mut Progress) {
        let mut lines = Vec::new();
        for vm in std::iter::once(&mut self.owner).chain(self.retired.iter_mut()) {
            while !vm.serial_closed {
                match vm.serial.recv(Duration::ZERO) {
                    Recv::Line(l) => lines.push((vm.label, l)),
                    Recv::Idle => break,
                    Recv::Closed => vm.serial_closed = true,
                }
            }
        }
        for (label, l) in lines {
            self.on_owner_line(p, label, &l.text, l.at);
        }
        let mut peer_lines = Vec::new();
        while !self.peer.serial_closed {
            match self.peer.serial.recv(Duration::ZERO) {
                Recv::Line(l) => peer_lines.push(l.text),
                Recv::Idle => break,
                Recv::Closed => self.peer.serial_closed = true,
            }
        }
        for text in peer_lines {
            if text == "BATON fault-injected" && !self.peer_fault_injected {
                self.peer_fault_injected = true;
                p.say("the peer injected a malformed completion (fault hook)".into());
            } else if let Some(m) = text.strip_prefix("BATON panic ") {
                let m: String = m.chars().take(200).collect();
                p.say(format!("the peer panicked: {m}"));
                self.note(format!("peer panic: {m}"));
            }
        }
    }

    fn on_owner_line(&mut self, p: &mut Progress, from: &'static str, text: &str, at: Instant) {
        let Some(rest) = text.strip_prefix("BATON ") else {
            return;
        };
        let (word, args) = rest.split_once(' ').unwrap_or((rest, ""));
        let lines = &mut self.owner_lines;
        match word {
            "ready" => {}
            "first-io" => {
                if lines.first_io.is_none() {
                    lines.first_io = Some(at);
                }
            }
            "result" => {
                if lines.result.is_none() {
                    lines.result = Some(parse_line(text).map_err(|e| e.to_string()));
                    lines.result_from = Some(from);
                } else {
                    self.note("repeated `BATON result` ignored".into());
                }
            }
            "port-stats" => match baton_core::stats::parse_line(text) {
                Ok(ps) if lines.port_stats.len() < 2 => lines.port_stats.push(ps.into()),
                Ok(_) => self.note("extra `BATON port-stats` line ignored".into()),
                Err(e) => self.note(format!("malformed `BATON port-stats` line: {e}")),
            },
            "timeline" => {
                if let Err(e) =
                    crate::report::CompletionTimeline::add_line(&mut lines.timeline, text)
                {
                    self.note(format!("`BATON timeline` line rejected: {e}"));
                }
            }
            "peer-fault" => {
                if lines.peer_fault.is_none() {
                    let m: String = args.chars().take(200).collect();
                    p.say(format!("the owner detected a peer fault: {m}"));
                    lines.peer_fault = Some(m);
                }
            }
            "panic" => {
                if lines.panic.is_none() {
                    let m: String = args.chars().take(500).collect();
                    p.say(format!("the owner panicked: {m}"));
                    lines.panic = Some(m);
                }
            }
            other => {
                let w: String = other.chars().take(32).collect();
                self.note(format!("unknown owner line `BATON {w}`"));
            }
        }
    }

    /// Stops the wait when something went wrong that makes it pointless.
    fn check(&mut self) -> Result<(), Abort> {
        if run::interrupted() {
            return Err(Abort::Interrupted);
        }
        if let Some(e) = &self.guest_error {
            return Err(Abort::GuestError(e.clone()));
        }
        if let Some(st) = self.owner.poll_exit() {
            return Err(Abort::OwnerExited(format!(
                "{} during the handoff",
                describe_exit(st)
            )));
        }
        if let Some(st) = self.peer.poll_exit() {
            return Err(Abort::PeerExited(describe_exit(st)));
        }
        Ok(())
    }

    /// Runs rounds until `f` yields a value, the timeout or the scenario deadline passes, or
    /// [`Scenario::check`] fails.
    fn wait_until<T>(
        &mut self,
        p: &mut Progress,
        what: &str,
        timeout: Duration,
        mut f: impl FnMut(&mut Self) -> Result<Option<T>, Abort>,
    ) -> Result<T, Abort> {
        let start = Instant::now();
        let until = start
            .checked_add(timeout)
            .map_or(self.deadline, |u| u.min(self.deadline));
        loop {
            self.step(p)?;
            if let Some(v) = f(self)? {
                return Ok(v);
            }
            self.check()?;
            if Instant::now() >= until {
                return Err(Abort::Timeout {
                    what: what.into(),
                    waited: start.elapsed(),
                });
            }
            std::thread::sleep(TICK);
        }
    }

    /// Waits for a message from `from` that `want` accepts (it passed the gate when it arrived).
    fn wait_msg(
        &mut self,
        p: &mut Progress,
        from: Role,
        what: &str,
        want: impl Fn(&Message) -> bool,
    ) -> Result<(Message, Instant), Abort> {
        self.wait_until(p, what, STEP_TIMEOUT, |s| Ok(s.take_msg(from, &want)))
    }

    /// Takes the first message from `from` that `want` accepts out of the inbox.
    fn take_msg(
        &mut self,
        from: Role,
        want: impl Fn(&Message) -> bool,
    ) -> Option<(Message, Instant)> {
        self.inbox
            .iter()
            .position(|(r, m, _)| *r == from && want(m))
            .and_then(|i| self.inbox.remove(i))
            .map(|(_, m, at)| (m, at))
    }

    /// Starts a destination (or restore) QEMU with the owner's current device set; it connects
    /// its control channel and QMP later ([`Scenario::connect_destination`]).
    fn launch_destination(&mut self, label: &'static str) -> Result<PendingDest, Abort> {
        let listener = ControlListener::bind(&self.dir.join(format!("ctl-{label}.sock"))).map_err(
            |source| Abort::Channel {
                vm: label.into(),
                source,
            },
        )?;
        let mut spec = MachineSpec {
            qmp_socket: self.dir.join(format!("qmp-{label}.sock")),
            control_socket: Some(listener.path().to_path_buf()),
            incoming: true,
            ..self.owner_spec.clone()
        };
        if self.cfg.destination_fault == DestinationFault::WithoutRing {
            spec.ring = None;
        }
        let vm = Vm::spawn(label, &spec, &self.dir).map_err(|e| Abort::Other(chain(&e)))?;
        self.commands.insert(label.to_owned(), vm.command.clone());
        self.serial_logs.insert(
            label.to_owned(),
            vm.serial_log(&self.dir).display().to_string(),
        );
        Ok(PendingDest {
            vm,
            listener,
            qmp_socket: spec.qmp_socket,
        })
    }

    /// Accepts a started destination's control connection and connects its QMP.
    fn connect_destination(
        pending: PendingDest,
    ) -> Result<(Vm, ControlListener, UnixStream), Box<(Abort, Vm)>> {
        let PendingDest {
            mut vm,
            listener,
            qmp_socket,
        } = pending;
        let label = vm.label;
        let stream = match listener.accept(CONNECT_TIMEOUT, || vm.alive()) {
            Ok(s) => s,
            Err(source) => {
                return Err(Box::new((
                    Abort::Channel {
                        vm: label.into(),
                        source,
                    },
                    vm,
                )));
            }
        };
        if let Err(e) = vm.connect_qmp(&qmp_socket) {
            return Err(Box::new((e, vm)));
        }
        Ok((vm, listener, stream))
    }

    /// The source's ivshmem BAR0 and BAR2 addresses.
    fn ring_bars(&mut self) -> Result<(u64, u64), Abort> {
        let buses = self.owner.exec(&QueryPci {})?;
        let dev = buses
            .iter()
            .filter(|b| b.bus == 0)
            .flat_map(|b| b.devices.iter())
            .find(|d| d.slot == u32::from(RING_SLOT) && d.function == 0)
            .ok_or_else(|| Abort::Other("query-pci: no ivshmem device in the source".into()))?;
        let bar = |n: u32| {
            dev.regions
                .iter()
                .find(|r| r.bar == n)
                .and_then(qmp::PciRegion::mapped_address)
        };
        match (bar(0), bar(2)) {
            (Some(b0), Some(b2)) => Ok((b0, b2)),
            _ => Err(Abort::Other(
                "query-pci: the owner has not programmed the ivshmem BARs".into(),
            )),
        }
    }

    /// `x-ignore-shared` on a QEMU.
    fn ignore_shared(vm: &mut Vm) -> Result<(), Abort> {
        vm.exec(&MigrateSetCapabilities {
            capabilities: vec![MigrationCapability {
                capability: "x-ignore-shared".into(),
                state: true,
            }],
        })
        .map(drop)
    }

    /// The QEMU 7.2 workaround: the destination's ivshmem BARs and COMMAND, as the source has
    /// them, written into its config space over HMP before `migrate-incoming`.
    fn program_destination_bars(dest: &mut Vm, bar0: u64, bar2: u64) -> Result<(), Abort> {
        let cfg = 0x8000_0000u32 | (u32::from(RING_SLOT) << 11);
        let writes = [
            (0x10u32, (bar0 & 0xffff_ffff) as u32),
            (0x18, (bar2 & 0xffff_ffff) as u32),
            (0x1c, (bar2 >> 32) as u32),
            (0x04, 0x7),
        ];
        for (off, val) in writes {
            dest.hmp(format!("o /w 0xcf8 {:#x}", cfg | off))?;
            dest.hmp(format!("o /w 0xcfc {val:#x}"))?;
        }
        Ok(())
    }

    /// Polls `query-migrate` on `vm` until the migration finishes, serving the guests meanwhile.
    fn poll_migration(&mut self, p: &mut Progress) -> Result<MigrationInfo, Abort> {
        let start = Instant::now();
        loop {
            self.step(p)?;
            let info = self.owner.exec(&QueryMigrate {})?;
            if info.finished() {
                return Ok(info);
            }
            if run::interrupted() {
                return Err(Abort::Interrupted);
            }
            if start.elapsed() >= MIGRATION_TIMEOUT || Instant::now() >= self.deadline {
                return Err(Abort::Timeout {
                    what: "the migration".into(),
                    waited: start.elapsed(),
                });
            }
            std::thread::sleep(MIGRATE_POLL);
        }
    }

    /// Waits until `dest` runs the guest; `Err` says why not.
    fn wait_running(&mut self, p: &mut Progress, dest: &mut Vm) -> Result<String, String> {
        let start = Instant::now();
        loop {
            if self.step(p).is_err() {
                // Control channel trouble is reported by the next waits; keep checking QEMU.
            }
            if let Some(st) = dest.poll_exit() {
                return Err(format!(
                    "the {} QEMU exited ({}): {}",
                    dest.label,
                    describe_exit(st),
                    dest.stderr_tail()
                ));
            }
            match dest.exec(&QueryStatus {}) {
                Ok(s) if s.running => return Ok(s.status),
                Ok(s)
                    if matches!(
                        s.status.as_str(),
                        "inmigrate" | "paused" | "prelaunch" | "restore-vm"
                    ) && start.elapsed() < DEST_RUN_TIMEOUT => {}
                Ok(s) => {
                    return Err(format!(
                        "the {} QEMU is `{}`, not running",
                        dest.label, s.status
                    ));
                }
                Err(e) => {
                    if let Some(st) = dest.poll_exit() {
                        return Err(format!(
                            "the {} QEMU exited ({}): {}",
                            dest.label,
                            describe_exit(st),
                            dest.stderr_tail()
                        ));
                    }
                    if start.elapsed() >= DEST_RUN_TIMEOUT {
                        return Err(chain(&e));
                    }
                }
            }
            if run::interrupted() {
                return Err("interrupted by a signal".into());
            }
            std::thread::sleep(MIGRATE_POLL);
        }
    }

    /// The destination takes over: the owner's channel moves to its connection, the source quits.
    fn take_over(&mut self, p: &mut Progress, dest: Vm, stream: UnixStream) {
        // Whatever the source sent last is still in its socket: read it before moving on.
        let _ = self.step(p);
        self.owner_ctl.attach(stream);
        let mut source = std::mem::replace(&mut self.owner, dest);
        self.owner_is_destination = true;
        match source.quit() {
            Ok(st) => p.say(format!("the source QEMU quit ({})", describe_exit(st))),
            Err(e) => self.note(e),
        }
        source.take_events();
        self.retired.push(source);
    }

    /// A migration that failed: resume the source so the owner keeps running there.
    fn roll_back(&mut self, p: &mut Progress, why: String, dest: Option<Vm>) {
        self.migration.error = Some(why.clone());
        self.failures.push(format!("migration failed: {why}"));
        p.say(format!("migration FAILED: {why}"));
        if let Some(mut d) = dest {
            let status = match d.poll_exit() {
                Some(st) => {
                    let tail = d.stderr_tail();
                    if !tail.is_empty() {
                        self.note(format!("{} QEMU stderr: {tail}", d.label));
                    }
                    format!("exited ({})", describe_exit(st))
                }
                None => match d.exec(&QueryStatus {}) {
                    Ok(s) => s.status,
                    Err(_) => "unknown".into(),
                },
            };
            p.say(format!("the {} QEMU is {status}; stopping it", d.label));
            self.migration.destination_status.get_or_insert(status);
            d.kill();
            d.take_events();
            self.retired.push(d);
        }
        let running = self.owner.exec(&QueryStatus {}).map(|s| s.running);
        match running {
            Ok(true) => p.say("the source still runs the owner".into()),
            Ok(false) => match self.owner.exec(&Cont {}) {
                Ok(_) => {
                    self.migration.source_resumed = true;
                    p.say(
                        "rolled back: `cont` resumed the source; the owner continues there".into(),
                    );
                }
                Err(e) => {
                    let e = format!("cannot resume the source: {}", chain(&e));
                    p.say(e.clone());
                    self.failures.push(e);
                }
            },
            Err(e) => self.note(format!("source status unknown: {}", chain(&e))),
        }
        let _ = self.handoff.shim_moves_to(HandoffState::Forwarding);
    }

    /// Whether the owner's QEMU exited (waits briefly: its sockets close just before it is
    /// reaped). Used when a QMP command to it failed.
    fn owner_gone(&mut self) -> Option<ExitStatus> {
        let until = Instant::now() + Duration::from_millis(500);
        loop {
            if let Some(st) = self.owner.poll_exit() {
                return Some(st);
            }
            if Instant::now() >= until {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// A failed migration step: the owner exited (its workload ended, or it failed), or the
    /// migration failed and is rolled back.
    fn migration_failed(
        &mut self,
        p: &mut Progress,
        e: Abort,
        dest: Option<Vm>,
    ) -> Result<(), Abort> {
        if let Abort::Interrupted = e {
            return Err(e);
        }
        if let Some(st) = self.owner_gone() {
            if let Some(mut d) = dest {
                d.kill();
                self.retired.push(d);
            }
            return Err(Abort::OwnerExited(format!(
                "{} while it was being migrated",
                describe_exit(st)
            )));
        }
        self.roll_back(p, chain(&e), dest);
        Ok(())
    }

    /// Step 4, live: migrate the owner to a second QEMU.
    fn live_migrate(&mut self, p: &mut Progress) -> Result<(), Abort> {
        let _ = self.handoff.shim_moves_to(HandoffState::Migrating);
        let pending = match self.pending_dest.take() {
            Some(p) => p,
            None => self.launch_destination("destination"),
        };
        let connected = match pending {
            Ok(pd) => Self::connect_destination(pd),
            Err(e) => return self.migration_failed(p, e, None),
        };
        let (mut dest, listener, stream) = match connected {
            Ok(d) => d,
            Err(b) => {
                let (e, vm) = *b;
                return self.migration_failed(p, e, Some(vm));
            }
        };
        p.say(format!(
            "destination connected (pid {}, -incoming defer, no disk, ivshmem in slot {RING_SLOT})",
            dest.qemu.pid()
        ));
        let mig_sock = self.dir.join("migrate.sock");
        let _mig_sock_guard = SocketPath(mig_sock.clone());
        let uri = format!("unix:{}", mig_sock.display());
        let setup = (|| -> Result<(), Abort> {
            Self::ignore_shared(&mut self.owner)?;
            Self::ignore_shared(&mut dest)?;
            let (bar0, bar2) = self.ring_bars()?;
            Self::program_destination_bars(&mut dest, bar0, bar2)?;
            dest.exec(&MigrateIncoming { uri: uri.clone() })?;
            Ok(())
        })();
        if let Err(e) = setup {
            return self.migration_failed(p, e, Some(dest));
        }
        self.times.migrate_cmd = Some(Instant::now());
        p.say("x-ignore-shared on both sides, BAR2 workaround applied; migrate".into());
        if let Err(e) = self.owner.exec(&Migrate { uri }) {
            return self.migration_failed(p, e, Some(dest));
        }
        let info = match self.poll_migration(p) {
            Ok(i) => i,
            Err(e) => return self.migration_failed(p, e, Some(dest)),
        };
        self.migration.status = info.status.clone();
        self.migration.downtime_ms = info.downtime;
        self.migration.total_ms = info.total_time;
        if info.status.as_deref() != Some("completed") {
            let why = format!(
                "the source says `{}`{}",
                info.status.as_deref().unwrap_or("?"),
                info.error_desc
                    .map_or_else(String::new, |d| format!(": {d}"))
            );
            self.roll_back(p, why, Some(dest));
            return Ok(());
        }
        // The source's word is not enough: the destination must run the guest.
        match self.wait_running(p, &mut dest) {
            Ok(status) => {
                self.times.migrated = Some(Instant::now());
                self.migration.destination_status = Some(status);
                p.say(format!(
                    "migrated: completed, downtime {} ms, total {} ms; the destination runs the owner",
                    info.downtime.map_or_else(|| "?".into(), |d| d.to_string()),
                    info.total_time.map_or_else(|| "?".into(), |d| d.to_string()),
                ));
                self.take_over(p, dest, stream);
                drop(listener);
                let _ = self.handoff.shim_moves_to(HandoffState::Forwarding);
                Ok(())
            }
            Err(why) => {
                self.migration.destination_status = Some("dead".into());
                self.roll_back(
                    p,
                    format!("the source reported `completed` but {why}"),
                    Some(dest),
                );
                Ok(())
            }
        }
    }

    /// Step 4, save: save the owner to a file, quit its QEMU, restore it in a new one.
    fn save_restore(&mut self, p: &mut Progress) -> Result<(), Abort> {
        let _ = self.handoff.shim_moves_to(HandoffState::Migrating);
        let state = self.dir.join("vm1.state");
        let _ = std::fs::remove_file(&state);
        let setup = (|| -> Result<(u64, u64), Abort> {
            Self::ignore_shared(&mut self.owner)?;
            self.ring_bars()
        })();
        let (bar0, bar2) = match setup {
            Ok(b) => b,
            Err(e) => return self.migration_failed(p, e, None),
        };
        self.times.migrate_cmd = Some(Instant::now());
        let uri = format!("exec:cat > {}", shell_quote(&state.to_string_lossy()));
        p.say(format!("saving the owner: migrate to {}", state.display()));
        if let Err(e) = self.owner.exec(&Migrate { uri }) {
            return self.migration_failed(p, e, None);
        }
        let info = match self.poll_migration(p) {
            Ok(i) => i,
            Err(e) => return self.migration_failed(p, e, None),
        };
        self.migration.status = info.status.clone();
        self.migration.downtime_ms = info.downtime;
        self.migration.total_ms = info.total_time;
        if info.status.as_deref() != Some("completed") {
            let why = format!(
                "save: the source says `{}`{}",
                info.status.as_deref().unwrap_or("?"),
                info.error_desc
                    .map_or_else(String::new, |d| format!(": {d}"))
            );
            self.roll_back(p, why, None);
            return Ok(());
        }
        self.times.save_done = Some(Instant::now());
        let size = std::fs::metadata(&state).map_or(0, |m| m.len());
        p.say(format!(
            "saved: {} KiB, downtime {} ms; quitting the source QEMU",
            size >> 10,
            info.downtime.map_or_else(|| "?".into(), |d| d.to_string())
        ));
        // Whatever the source sent last is still in its socket.
        let _ = self.step(p);
        match self.owner.quit() {
            Ok(st) => p.say(format!("the source QEMU quit ({})", describe_exit(st))),
            Err(e) => self.note(e),
        }
        // From here on there is no source to fall back to.
        self.times.restore_start = Some(Instant::now());
        let restored = match self.launch_destination("restored") {
            Ok(pd) => match Self::connect_destination(pd) {
                Ok((vm, listener, stream)) => {
                    self.restore(p, vm, listener, stream, &state, bar0, bar2)
                }
                Err(b) => {
                    let (e, vm) = *b;
                    Err(Box::new((chain(&e), Some(vm))))
                }
            },
            Err(e) => Err(Box::new((chain(&e), None))),
        };
        match restored {
            Ok(vm) => {
                let source = std::mem::replace(&mut self.owner, vm);
                self.retired.push(source);
                self.owner_is_destination = true;
                if !self.cfg.keep {
                    let _ = std::fs::remove_file(&state);
                }
                let _ = self.handoff.shim_moves_to(HandoffState::Forwarding);
                Ok(())
            }
            Err(b) => {
                let (why, vm) = *b;
                self.migration.error = Some(why.clone());
                p.say(format!("restore FAILED: {why}"));
                if let Some(mut vm) = vm {
                    vm.kill();
                    self.retired.push(vm);
                }
                Err(Abort::Other(format!(
                    "restore failed (the source was already gone): {why}"
                )))
            }
        }
    }

    /// Restores the saved owner into `vm`; on success the owner's channel moves to it.
    #[allow(clippy::too_many_arguments)]
    fn restore(
        &mut self,
        p: &mut Progress,
        mut vm: Vm,
        listener: ControlListener,
        stream: UnixStream,
        state: &Path,
        bar0: u64,
        bar2: u64,
    ) -> Result<Vm, Box<(String, Option<Vm>)>> {
        let r = (|| -> Result<(), Abort> {
            Self::ignore_shared(&mut vm)?;
            Self::program_destination_bars(&mut vm, bar0, bar2)?;
            vm.exec(&MigrateIncoming {
                uri: format!("exec:cat {}", shell_quote(&state.to_string_lossy())),
            })?;
            Ok(())
        })();
        if let Err(e) = r {
            return Err(Box::new((chain(&e), Some(vm))));
        }
        match self.wait_running(p, &mut vm) {
            Ok(status) => {
                let now = Instant::now();
                self.times.restore_done = Some(now);
                self.times.migrated = Some(now);
                self.migration.destination_status = Some(status);
                p.say(format!(
                    "restored: a new QEMU (pid {}) runs the owner",
                    vm.qemu.pid()
                ));
                let _ = self.step(p);
                self.owner_ctl.attach(stream);
                drop(listener);
                Ok(vm)
            }
            Err(why) => {
                self.migration.destination_status = Some("dead".into());
                Err(Box::new((why, Some(vm))))
            }
        }
    }

    /// Step 5: the owner finishes its workload (at the destination, normally).
    fn wait_owner_exit(&mut self, p: &mut Progress) -> Result<(), Abort> {
        let where_ = if self.owner_is_destination {
            self.owner.label
        } else {
            "source"
        };
        p.say(format!(
            "waiting for the owner to finish its workload ({where_} QEMU)"
        ));
        let start = Instant::now();
        loop {
            self.step(p)?;
            if self.owner.poll_exit().is_some() {
                return Ok(());
            }
            if run::interrupted() {
                return Err(Abort::Interrupted);
            }
            if let Some(st) = self.peer.poll_exit() {
                return Err(Abort::PeerExited(describe_exit(st)));
            }
            if Instant::now() >= self.deadline {
                return Err(Abort::Timeout {
                    what: "the owner to finish".into(),
                    waited: start.elapsed(),
                });
            }
            std::thread::sleep(TICK);
        }
    }

    /// After the drive: settle every QEMU, verify the disk, build the report.
    fn finish(
        mut self,
        result: Result<(), Abort>,
        p: &mut Progress,
        plan: &Plan<'_>,
    ) -> MigrateReport {
        let mut ending = None;
        match &result {
            Ok(()) => {}
            Err(Abort::OwnerExited(_)) => {}
            Err(Abort::Timeout { .. }) => ending = Some(Ending::Timeout),
            Err(e) => ending = Some(Ending::Aborted(chain(e))),
        }
        if let Err(e) = &result {
            let why = chain(e);
            match e {
                Abort::OwnerExited(_) => p.say(format!("stopped: {why}")),
                _ => {
                    p.say(format!("FAILED: {why}"));
                    self.failures.push(why);
                }
            }
        }
        // The owner: exited, or killed now.
        if ending.is_some() {
            self.owner.kill();
        }
        let owner_status = self.owner.poll_exit().or_else(|| {
            self.owner.kill();
            self.owner.exit
        });
        // Late console lines (the result line races the exit).
        let until = Instant::now() + EXIT_GRACE;
        while Instant::now() < until && !self.owner.serial_closed {
            self.read_consoles(p);
            std::thread::sleep(TICK);
        }
        self.read_consoles(p);
        if let Some(st) = owner_status {
            let where_ = if self.owner_is_destination {
                self.owner.label
            } else {
                "source"
            };
            p.say(format!(
                "the owner's QEMU exited ({where_} QEMU, {})",
                describe_exit(st)
            ));
        }
        let ending = ending.unwrap_or_else(|| match owner_status {
            Some(st) => Ending::Exited(st),
            None => Ending::Aborted("owner still running".into()),
        });
        // The peer: quit over QMP, which flushes the image.
        let peer_quit = self.peer.quit();
        match &peer_quit {
            Ok(_) => p.say("the peer quit over QMP (image flushed)".into()),
            Err(e) => {
                let e = format!("peer: {e}");
                self.note(e);
            }
        }
        // Everything else.
        for vm in std::iter::once(&mut self.owner)
            .chain(std::iter::once(&mut self.peer))
            .chain(self.retired.iter_mut())
        {
            vm.kill();
        }
        self.collect_events();
        self.watch = None;
        self.shm = None;
        build_report(self, plan, ending, p)
    }

    fn collect_events(&mut self) {
        let t0 = self.t0;
        let mut all = Vec::new();
        for vm in std::iter::once(&mut self.owner)
            .chain(std::iter::once(&mut self.peer))
            .chain(self.retired.iter_mut())
        {
            vm.take_events();
            for (at, e) in vm.events.drain(..) {
                all.push(VmEvent {
                    vm: vm.label.into(),
                    name: e.name,
                    at_ms: ms_between(t0, at),
                    data: e.data,
                });
            }
        }
        all.sort_by(|a, b| a.at_ms.total_cmp(&b.at_ms));
        self.events = all;
    }
}

/// Single-quotes `s` for /bin/sh (QEMU runs `exec:` URIs through the shell).
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn failed_setup_report(plan: &Plan<'_>, why: String, progress: Progress) -> MigrateReport {
    let cfg = plan.cfg;
    let g = plan.guest;
    MigrateReport {
        scenario: "migrate".into(),
        mode: cfg.mode.as_str().into(),
        ok: false,
        failures: vec![format!("set-up: {why}")],
        accel: plan.accel.into(),
        accel_reason: plan.accel_reason.clone(),
        qemu_version: None,
        qemu_commands: BTreeMap::new(),
        backend: "file".into(),
        vm: OWNER_VM,
        peer_vm: PEER_VM,
        blocks: g.blocks,
        passes: g.passes,
        qd: g.qd,
        seed: g.seed,
        disk_bytes: plan.disk_bytes,
        writes_total: g.schedule().total_writes(),
        switch: switch_report(cfg, None, None),
        peer_fault: cfg.peer_fault.as_str().into(),
        peer_fault_detected: false,
        peer_fault_message: None,
        requests_queued_at_switch: None,
        requests_forwarded: None,
        port1_requests: None,
        port_stats: Vec::new(),
        completion_timeline: None,
        duplicated: None,
        blackout_ms: None,
        migration_status: None,
        destination_status: None,
        migration_downtime_ms: None,
        migration_total_ms: None,
        migration_error: None,
        source_resumed: false,
        phases: Phases::default(),
        control_rejected: 0,
        control_rejections: Vec::new(),
        control: BTreeMap::new(),
        writes_submitted: None,
        writes_acked: None,
        write_errors: None,
        verified: false,
        verification: "skipped: the scenario did not start".into(),
        writes_verified: None,
        lost: None,
        stale: None,
        newer_unacked: None,
        corrupt_blocks: None,
        verification_problems: Vec::new(),
        reads_verified: None,
        read_mismatches: None,
        guest_exit: GuestExit::ShimError,
        guest_exit_reason: why,
        guest_exit_where: None,
        owner_finished_at_destination: false,
        qemu_exit_code: None,
        guest_panic_message: None,
        guest_report_error: None,
        iops: None,
        guest_elapsed_us: None,
        elapsed_ms: ms_between(progress.t0, Instant::now()),
        timeline: progress.lines,
        qmp_events: Vec::new(),
        notes: Vec::new(),
        serial_logs: BTreeMap::new(),
        workdir: plan.workdir.path().display().to_string(),
        artifacts_kept: plan.workdir.kept(),
    }
}

fn switch_report(
    cfg: &MigrateConfig,
    after_ms: Option<u64>,
    directed_at_ms: Option<f64>,
) -> SwitchReport {
    let (trigger, migrate_at) = match cfg.switch {
        Switch::AfterMs(_) => ("operator", None),
        Switch::Seeded => ("seed", None),
        Switch::OwnerRequest(n) => ("owner-request", Some(n)),
    };
    SwitchReport {
        trigger: trigger.into(),
        after_first_io_ms: after_ms,
        migrate_at,
        directed_at_ms,
    }
}

fn build_report(
    mut s: Scenario<'_>,
    plan: &Plan<'_>,
    ending: Ending,
    p: &mut Progress,
) -> MigrateReport {
    let cfg = plan.cfg;
    let guest = plan.guest;
    let lines = std::mem::take(&mut s.owner_lines);
    let (guest_exit, reason, qemu_exit_code) =
        run::classify(&ending, lines.panic.as_ref(), cfg.timeout);
    let mut failures = std::mem::take(&mut s.failures);
    let exited = matches!(ending, Ending::Exited(_));
    let where_ = exited.then(|| {
        if s.owner_is_destination {
            s.owner.label.to_owned()
        } else {
            "source".to_owned()
        }
    });
    let at_destination = exited && s.owner_is_destination;
    if guest_exit != GuestExit::Success {
        failures.push(format!("owner: {reason}"));
    }
    if exited && !s.owner_is_destination && s.migration.error.is_none() {
        let why = if lines.peer_fault.is_some() {
            "the owner stopped at the source after detecting a peer fault".to_owned()
        } else if s.times.forwarding.is_some() || s.times.directed.is_some() {
            "the owner finished at the source before the migration: the switch came too late for \
             this workload (use a smaller --switch-after-ms or a larger --blocks/--passes)"
                .to_owned()
        } else {
            "the owner finished at the source before the switch was directed: the switch came too \
             late for this workload (use a smaller --switch-after-ms or a larger --blocks/--passes)"
                .to_owned()
        };
        failures.push(why);
    }
    if let Some(m) = &lines.peer_fault {
        failures.push(format!("the owner detected a peer fault: {m}"));
    }

    let mut guest_report = None;
    let mut guest_report_error = None;
    match lines.result {
        Some(Ok(r)) => match run::check_echo(&r, guest) {
            Ok(()) => guest_report = Some(r),
            Err(e) => guest_report_error = Some(e),
        },
        Some(Err(e)) => guest_report_error = Some(format!("malformed `BATON result` line: {e}")),
        None => guest_report_error = Some("the owner printed no `BATON result` line".into()),
    }
    if let Some(e) = &guest_report_error
        && (guest_exit == GuestExit::Success || lines.result_from.is_some())
    {
        failures.push(e.clone());
    }
    let schedule = guest.schedule();
    let writes_total = schedule.total_writes();
    if let Some(r) = &guest_report {
        if r.writes_submitted != writes_total {
            failures.push(format!(
                "the owner submitted {} of {writes_total} writes",
                r.writes_submitted
            ));
        }
        if r.write_errors > 0 {
            failures.push(format!("{} writes failed in the owner", r.write_errors));
        }
        if r.duplicates > 0 {
            failures.push(format!(
                "the owner saw {} duplicate completions",
                r.duplicates
            ));
        }
        if r.read_mismatches > 0 {
            failures.push(format!(
                "the owner's read-back found {} wrong blocks",
                r.read_mismatches
            ));
        }
        if s.times.forwarding.is_some() && r.port2_requests == 0 {
            failures.push("nothing was forwarded over the ring".into());
        }
    }

    // Host-side verification, after the peer quit.
    let mut verification: Option<Verification> = None;
    let note = match guest_report.as_ref().map(Acks::from_report) {
        None => {
            failures.push("disk not verified: no usable owner report".into());
            "skipped: no usable owner report, so the acknowledged writes are unknown".to_owned()
        }
        Some(None) => {
            failures.push(
                "disk not verified: the owner listed fewer failed writes than it counted".into(),
            );
            "skipped: the owner's report does not name every failed write".to_owned()
        }
        Some(Some(acks)) => match disk::verify_image(plan.image.path(), &schedule, &acks) {
            Ok(v) => {
                if !v.clean() {
                    failures.push(format!(
                        "disk verification: {} lost, {} stale, {} corrupt blocks",
                        v.lost, v.stale, v.corrupt_blocks
                    ));
                }
                if v.writes_verified == 0 {
                    failures.push("disk verification: no acknowledged write to verify".into());
                }
                let n = format!(
                    "host read {} blocks of {} after the peer quit and checked every tag and payload against the schedule",
                    v.blocks_checked,
                    plan.image.path().display()
                );
                p.say(format!(
                    "disk verified on the host: {} of {} acknowledged writes found, lost {}, stale {}",
                    v.writes_verified, v.writes_acked, v.lost, v.stale
                ));
                verification = Some(v);
                n
            }
            Err(e) => {
                failures.push(format!("disk verification failed: {}", chain(&e)));
                format!("failed: {}", chain(&e))
            }
        },
    };
    if let (Some(v), Some(r)) = (&verification, &guest_report)
        && v.writes_acked != r.writes_acked
    {
        failures.push(format!(
            "the owner says {} writes acked, its submitted and failed seqs imply {}",
            r.writes_acked, v.writes_acked
        ));
    }
    let rejected = s.handoff.rejected();
    if rejected > 0 {
        s.note(format!(
            "{rejected} control messages were rejected (wrong state or wrong guest)"
        ));
    }

    let g = guest_report.as_ref();
    let t = s.times;
    let mut control = BTreeMap::new();
    control.insert("owner".to_owned(), s.owner_ctl.stats());
    control.insert("peer".to_owned(), s.peer_ctl.stats());
    let queued = g
        .map(|r| r.held_at_switch)
        .or(s.drained.map(|(_, h)| u64::from(h)));
    let directed_at_ms = t.directed.map(|d| ms_between(s.t0, d));
    let timeline = std::mem::take(&mut p.lines);
    let elapsed_ms = ms_between(s.t0, Instant::now());
    let ok = failures.is_empty();
    MigrateReport {
        scenario: "migrate".into(),
        mode: cfg.mode.as_str().into(),
        ok,
        failures,
        accel: plan.accel.into(),
        accel_reason: plan.accel_reason.clone(),
        qemu_version: s.qemu_version.take(),
        qemu_commands: std::mem::take(&mut s.commands),
        backend: "file".into(),
        vm: OWNER_VM,
        peer_vm: PEER_VM,
        blocks: guest.blocks,
        passes: guest.passes,
        qd: guest.qd,
        seed: guest.seed,
        disk_bytes: plan.disk_bytes,
        writes_total,
        switch: switch_report(cfg, s.switch_ms, directed_at_ms),
        peer_fault: cfg.peer_fault.as_str().into(),
        peer_fault_detected: lines.peer_fault.is_some(),
        peer_fault_message: lines.peer_fault,
        requests_queued_at_switch: queued,
        requests_forwarded: g.map(|r| r.port2_requests),
        port1_requests: g.map(|r| r.port1_requests),
        port_stats: lines.port_stats,
        completion_timeline: lines.timeline,
        duplicated: g.map(|r| r.duplicates),
        blackout_ms: g.map(|r| r.max_gap_us as f64 / 1000.0),
        migration_status: s.migration.status.take(),
        destination_status: s.migration.destination_status.take(),
        migration_downtime_ms: s.migration.downtime_ms,
        migration_total_ms: s.migration.total_ms,
        migration_error: s.migration.error.take(),
        source_resumed: s.migration.source_resumed,
        phases: Phases {
            directed_to_drained_ms: phase(t.directed, t.drained),
            drained_to_device_deleted_ms: phase(t.drained, t.device_deleted),
            device_deleted_to_attached_ms: phase(t.device_deleted, t.peer_ready),
            attached_to_first_forwarded_ms: phase(t.peer_ready, t.first_forwarded),
            first_forwarded_detected_by:
                "host read-only mmap of the ring file: the completion tail (CQ_TAIL) moved".into(),
            handoff_ms: phase(t.directed, t.forwarding),
            migration_setup_ms: phase(t.forwarding, t.migrate_cmd),
            migration_ms: phase(t.migrate_cmd, t.migrated),
            save_ms: phase(t.migrate_cmd, t.save_done),
            restore_ms: phase(t.restore_start, t.restore_done),
        },
        control_rejected: rejected,
        control_rejections: s.handoff.rejections().to_vec(),
        control,
        writes_submitted: g.map(|r| r.writes_submitted),
        writes_acked: verification
            .as_ref()
            .map(|v| v.writes_acked)
            .or(g.map(|r| r.writes_acked)),
        write_errors: g.map(|r| r.write_errors),
        verified: verification.is_some(),
        verification: note,
        writes_verified: verification.as_ref().map(|v| v.writes_verified),
        lost: verification.as_ref().map(|v| v.lost),
        stale: verification.as_ref().map(|v| v.stale),
        newer_unacked: verification.as_ref().map(|v| v.newer_unacked),
        corrupt_blocks: verification.as_ref().map(|v| v.corrupt_blocks),
        verification_problems: verification.map(|v| v.problems).unwrap_or_default(),
        reads_verified: g.map(|r| r.reads_verified),
        read_mismatches: g.map(|r| r.read_mismatches),
        guest_exit,
        guest_exit_reason: reason,
        guest_exit_where: where_,
        owner_finished_at_destination: at_destination && qemu_exit_code == Some(EXIT_SUCCESS),
        qemu_exit_code,
        guest_panic_message: lines.panic,
        guest_report_error,
        iops: g.map(|r| r.iops),
        guest_elapsed_us: g.map(|r| r.elapsed_us),
        elapsed_ms,
        timeline,
        qmp_events: std::mem::take(&mut s.events),
        notes: std::mem::take(&mut s.notes),
        serial_logs: std::mem::take(&mut s.serial_logs),
        workdir: plan.workdir.path().display().to_string(),
        artifacts_kept: plan.workdir.kept(),
    }
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
        assert!(seeded_switch_ms(1, 1) < 30);
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
            data: Value::Null,
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

    #[test]
    fn shell_quoting() {
        assert_eq!(shell_quote("/a b/c"), "'/a b/c'");
        assert_eq!(shell_quote("x'y"), r"'x'\''y'");
    }

    #[test]
    fn phase_times_are_signed_ms() {
        let a = Instant::now();
        let b = a + Duration::from_micros(1500);
        assert_eq!(phase(Some(a), Some(b)), Some(1.5));
        assert_eq!(phase(Some(b), Some(a)), Some(-1.5));
        assert_eq!(phase(None, Some(a)), None);
    }
}
