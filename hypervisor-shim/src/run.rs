//! `hypervisor-shim run`: one owner guest doing direct I/O on one virtio-blk disk (issue 2).
//!
//! The scenario: create the disk, boot the guest under QEMU, hold a QMP session (capabilities,
//! version, status, events), follow the guest's `BATON` lines on COM1 (docs/guest-interface.md),
//! hot-add the disk when the guest asks for it (`--hotplug-disk`), wait for the guest's exit under a
//! hard timeout, then verify the disk on the host ([`crate::disk`]) and build the [`RunReport`].
//!
//! Guest lines are untrusted (invariant I6): each is accepted only once and only in the state where it
//! makes sense; a malformed `BATON result` line is an error in the report, never a panic.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use baton_core::cmdline::{DiskMode, GuestConfig, Role};
use baton_core::console::{GuestLine, Kind, LineError};
use baton_core::report::GuestReport;
use baton_core::workload::Schedule;
use serde_json::Value;

use crate::console::{Recv, SerialConsole, StderrCapture};
use crate::disk::{self, Acks, DiskImage, Verification};
use crate::qemu::{
    self, Accel, DISK_ID, DiskBackend, EXIT_FAILURE, EXIT_SUCCESS, HOTPLUG_DISK_SLOT, MachineSpec,
    QemuProcess,
};
use crate::qmp::{self, BlockdevAdd, DeviceAdd, Qmp, QueryStatus, QueryVersion};
use crate::report::{EventRecord, GuestExit, RunReport};

/// Longest wait for QEMU's QMP socket to accept and answer.
const QMP_CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// Longest wait for one QMP command.
const QMP_COMMAND_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for QEMU to exit after it closed its stdout, and for late output after it exited.
const EXIT_GRACE: Duration = Duration::from_secs(5);
/// How often QMP events are collected while the guest runs.
const EVENT_POLL: Duration = Duration::from_millis(100);
/// At most this many protocol notes are kept.
const MAX_NOTES: usize = 16;
/// Guest RAM.
const MEMORY_MIB: u32 = 128;

/// Errors that stop a run before it can produce a report.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// QEMU is missing or cannot be used
    #[error(transparent)]
    Qemu(#[from] qemu::QemuError),
    /// the guest kernel image is missing
    #[error("guest kernel {0} not found; build it with `cargo kbuild` (or pass --kernel)")]
    NoKernel(PathBuf),
    /// the path of the shim's own executable is unknown
    #[error("cannot locate the shim's executable to find the default kernel; pass --kernel")]
    NoExe(#[source] std::io::Error),
    /// cannot set up the working directory
    #[error("cannot set up the working directory {path}")]
    Workdir {
        /// Directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// cannot create the disk
    #[error(transparent)]
    Disk(#[from] disk::DiskError),
    /// the workload parameters are invalid
    #[error("invalid workload: {0}")]
    Config(String),
}

/// Which accelerator to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccelChoice {
    /// KVM when /dev/kvm can be opened read-write, else TCG.
    Auto,
    /// KVM or fail.
    Kvm,
    /// TCG.
    Tcg,
}

impl AccelChoice {
    /// Resolves the choice on this host: the accelerator and why it was chosen.
    pub fn resolve(self) -> Result<(Accel, String), qemu::QemuError> {
        match self {
            Self::Tcg => Ok((Accel::Tcg, "--accel tcg".into())),
            Self::Kvm => qemu::kvm_usable()
                .map(|()| (Accel::Kvm, "--accel kvm".into()))
                .map_err(qemu::QemuError::NoKvm),
            Self::Auto => Ok(match (qemu::kvm_usable(), qemu::kvm_is_software()) {
                (Ok(()), None) => (Accel::Kvm, "auto: /dev/kvm is usable".into()),
                (Ok(()), Some(module)) => (
                    Accel::Tcg,
                    format!(
                        "auto: /dev/kvm is software-emulated ({module}), slower than TCG for this \
                         guest; --accel kvm forces it"
                    ),
                ),
                (Err(e), _) => (Accel::Tcg, format!("auto: /dev/kvm unusable ({e})")),
            }),
        }
    }
}

/// Disk backend kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    /// A raw image the shim creates and verifies.
    File,
    /// `null-co` (no data kept; for measuring the I/O path).
    Null,
}

/// Everything `run` needs.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// Disk backend.
    pub backend: BackendKind,
    /// Accelerator.
    pub accel: AccelChoice,
    /// VM id.
    pub vm: u32,
    /// Distinct blocks.
    pub blocks: u64,
    /// Passes.
    pub passes: u32,
    /// Queue depth.
    pub qd: u16,
    /// Schedule seed.
    pub seed: u64,
    /// First LBA.
    pub first_lba: u64,
    /// Boot without a disk and hot-add it when the guest waits for it.
    pub hotplug_disk: bool,
    /// Ask the guest to panic right after boot (test hook).
    pub guest_panic: bool,
    /// Hard timeout for the whole guest run.
    pub timeout: Duration,
    /// Guest kernel; default: next to the shim's build output.
    pub kernel: Option<PathBuf>,
    /// QEMU binary (name on PATH or path).
    pub qemu: PathBuf,
    /// Working directory; default: a fresh temporary directory.
    pub workdir: Option<PathBuf>,
    /// Keep the disk image, socket and (temporary) workdir after the run.
    pub keep: bool,
}

/// A finished run: its report and its working directory (removed when this is dropped, unless kept).
#[derive(Debug)]
pub struct RunOutcome {
    /// The report.
    pub report: RunReport,
    /// Owns the working directory.
    pub workdir: Workdir,
}

/// The run's working directory. A temporary one is removed on drop unless kept; a directory the user
/// named is never removed.
#[derive(Debug)]
pub enum Workdir {
    /// Removed on drop.
    Temp(tempfile::TempDir),
    /// Left alone.
    Kept(PathBuf),
}

impl Workdir {
    pub(crate) fn create(dir: Option<&Path>, keep: bool) -> Result<Self, RunError> {
        Self::create_with_prefix(dir, keep, "baton-run-")
    }

    /// As [`Workdir::create`], naming a temporary directory `<prefix>XXXXXX`.
    pub(crate) fn create_with_prefix(
        dir: Option<&Path>,
        keep: bool,
        prefix: &str,
    ) -> Result<Self, RunError> {
        match dir {
            Some(d) => {
                std::fs::create_dir_all(d).map_err(|source| RunError::Workdir {
                    path: d.to_path_buf(),
                    source,
                })?;
                Ok(Self::Kept(d.to_path_buf()))
            }
            None => {
                let t = tempfile::Builder::new()
                    .prefix(prefix)
                    .tempdir()
                    .map_err(|source| RunError::Workdir {
                        path: std::env::temp_dir(),
                        source,
                    })?;
                Ok(if keep {
                    Self::Kept(t.keep())
                } else {
                    Self::Temp(t)
                })
            }
        }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        match self {
            Self::Temp(t) => t.path(),
            Self::Kept(p) => p,
        }
    }

    /// Whether the directory outlives the run.
    pub fn kept(&self) -> bool {
        matches!(self, Self::Kept(_))
    }
}

/// Removes a path (a socket, or another file the scenario owns) when dropped.
pub(crate) struct SocketPath(pub(crate) PathBuf);

impl Drop for SocketPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_sig: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Makes SIGINT, SIGTERM and SIGHUP end a run cleanly (QEMU killed, report written, temporary files
/// removed) instead of killing the shim outright.
pub fn install_interrupt_handler() {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: `on_signal` only stores to an atomic, which is async-signal-safe; it has the
        // `extern "C" fn(c_int)` signature signal(2) expects.
        unsafe {
            libc::signal(sig, on_signal as *const () as libc::sighandler_t);
        }
    }
}

pub(crate) fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// The default kernel: `<exe dir>/../x86_64-unknown-none/release/baton-kernel`.
pub fn default_kernel() -> Result<PathBuf, RunError> {
    let exe = std::env::current_exe().map_err(RunError::NoExe)?;
    let dir = exe.parent().and_then(Path::parent).ok_or_else(|| {
        RunError::NoExe(std::io::Error::other(
            "executable has no grandparent directory",
        ))
    })?;
    Ok(dir.join("x86_64-unknown-none/release/baton-kernel"))
}

/// Runs the scenario. Guest failures end up in the report (`ok: false`); only set-up problems are
/// errors.
pub fn run(cfg: &RunConfig) -> Result<RunOutcome, RunError> {
    let qemu_bin = qemu::locate_qemu(&cfg.qemu)?;
    let bios = qemu::locate_bios()?;
    let kernel = match &cfg.kernel {
        Some(k) => k.clone(),
        None => default_kernel()?,
    };
    if !kernel.is_file() {
        return Err(RunError::NoKernel(kernel));
    }
    let (accel, accel_reason) = cfg.accel.resolve()?;
    let guest = GuestConfig {
        role: Role::Owner,
        vm: cfg.vm,
        blocks: cfg.blocks,
        passes: cfg.passes,
        qd: cfg.qd,
        seed: cfg.seed,
        first_lba: cfg.first_lba,
        disk: if cfg.hotplug_disk {
            DiskMode::Hotplug
        } else {
            DiskMode::Boot
        },
        // null-co reads zeroes: a read-back check there can only fail.
        verify: cfg.backend == BackendKind::File,
        panic: cfg.guest_panic,
        ..GuestConfig::default()
    };
    // Validate with the guest's own parser, so the guest cannot reject what we send.
    let append = guest.to_string();
    GuestConfig::parse(&append).map_err(|e| RunError::Config(e.to_string()))?;

    let workdir = Workdir::create(cfg.workdir.as_deref(), cfg.keep)?;
    let dir = workdir.path().to_path_buf();
    let disk_bytes = disk::image_size(cfg.first_lba, cfg.blocks)?;
    let mut image = None;
    let backend = match cfg.backend {
        BackendKind::File => {
            let img = DiskImage::create(&dir.join("disk.img"), disk_bytes)?;
            let b = DiskBackend::File(img.path().to_path_buf());
            image = Some(img);
            b
        }
        BackendKind::Null => DiskBackend::Null { size: disk_bytes },
    };
    if cfg.keep
        && let Some(img) = image.as_mut()
    {
        img.keep();
    }
    let qmp_socket = dir.join("qmp.sock");
    let _ = std::fs::remove_file(&qmp_socket);
    let _socket_guard = SocketPath(qmp_socket.clone());
    let spec = MachineSpec {
        qemu: qemu_bin,
        accel,
        memory_mib: MEMORY_MIB,
        bios,
        kernel,
        append,
        qmp_socket,
        boot_disk: (!cfg.hotplug_disk).then(|| backend.clone()),
        control_socket: None,
        ring: None,
        incoming: false,
    };

    let mut session = Session::start(&spec, &dir, cfg.timeout)?;
    let outcome = session.drive(cfg.hotplug_disk.then_some(&backend));
    let plan = Plan {
        cfg,
        spec: &spec,
        guest: &guest,
        schedule: guest.schedule(),
        backend: &backend,
        disk_bytes,
        accel_reason,
        workdir: &workdir,
        image: image.as_ref(),
    };
    let report = build_report(&plan, session, outcome);
    drop(image);
    Ok(RunOutcome { report, workdir })
}

/// How the wait for the guest ended.
#[derive(Debug)]
pub(crate) enum Ending {
    Exited(std::process::ExitStatus),
    Timeout,
    Hung,
    Aborted(String),
}

/// What the guest said on COM1, accepted once each.
#[derive(Debug, Default)]
struct GuestLines {
    ready: Option<Instant>,
    waiting_for_disk: Option<Instant>,
    first_io: Option<Instant>,
    result: Option<Result<GuestReport, String>>,
    panic: Option<String>,
    port_stats: Vec<crate::report::PortStatsReport>,
    notes: Vec<String>,
}

impl GuestLines {
    fn note(&mut self, n: String) {
        if self.notes.len() < MAX_NOTES {
            self.notes.push(n);
        }
    }

    /// The first `BATON result` line, well-formed or not, is the one the report uses.
    fn on_result(&mut self, r: Result<GuestReport, String>) {
        if self.result.is_some() {
            self.note("repeated `BATON result` ignored".into());
        } else {
            self.result = Some(r);
        }
    }
}

/// A running guest: QEMU, its console, its QMP session.
struct Session {
    // Field order is drop order: QEMU is killed before the console threads are let go.
    qemu: QemuProcess,
    serial: SerialConsole,
    stderr: StderrCapture,
    qmp: Option<Qmp<std::os::unix::net::UnixStream>>,
    qmp_error: Option<String>,
    qemu_version: Option<String>,
    events: Vec<EventRecord>,
    lines: GuestLines,
    hotplug_done: Option<Instant>,
    deadline: Instant,
    ended_at: Option<Instant>,
    serial_log: PathBuf,
    qmp_socket: PathBuf,
}

impl Session {
    fn start(spec: &MachineSpec, dir: &Path, timeout: Duration) -> Result<Self, RunError> {
        let wd = |source| RunError::Workdir {
            path: dir.to_path_buf(),
            source,
        };
        std::fs::write(dir.join("qemu-cmdline.txt"), spec.display() + "\n").map_err(wd)?;
        let mut qemu = spec.spawn()?;
        let t0 = qemu.started();
        let serial_log = dir.join("serial.log");
        let stdout = qemu
            .take_stdout()
            .ok_or_else(|| wd(std::io::Error::other("QEMU stdout not piped")))?;
        let stderr = qemu
            .take_stderr()
            .ok_or_else(|| wd(std::io::Error::other("QEMU stderr not piped")))?;
        let serial = SerialConsole::start(stdout, &serial_log, t0).map_err(wd)?;
        let stderr = StderrCapture::start(stderr, &dir.join("qemu-stderr.log")).map_err(wd)?;
        Ok(Self {
            qemu,
            serial,
            stderr,
            qmp: None,
            qmp_error: None,
            qemu_version: None,
            events: Vec::new(),
            lines: GuestLines::default(),
            hotplug_done: None,
            deadline: t0 + timeout,
            ended_at: None,
            serial_log,
            qmp_socket: spec.qmp_socket.clone(),
        })
    }

    fn ms_since_start(&self, at: Instant) -> f64 {
        let d = at.saturating_duration_since(self.qemu.started());
        (d.as_secs_f64() * 1e6).round() / 1e3
    }

    fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    /// Connects QMP, follows the guest until QEMU exits, the deadline passes, or the run is aborted.
    fn drive(&mut self, hotplug: Option<&DiskBackend>) -> Ending {
        let ending = self.drive_inner(hotplug);
        self.ended_at = Some(Instant::now());
        if !matches!(ending, Ending::Exited(_)) {
            // Timeout, hang or abort: make sure QEMU is gone (the guard would do it too).
            let _ = self.qemu.kill();
        }
        self.drain_after_exit();
        ending
    }

    fn drive_inner(&mut self, hotplug: Option<&DiskBackend>) -> Ending {
        let connect_timeout = QMP_CONNECT_TIMEOUT.min(self.remaining());
        let qemu = &mut self.qemu;
        match qmp::connect_unix(&self.qmp_socket, connect_timeout, || qemu.alive()) {
            Ok(q) => self.qmp = Some(q),
            Err(e) => {
                if let Ok(Some(st)) = self.qemu.wait_timeout(Duration::from_millis(200)) {
                    self.qmp_error = Some(format!("QMP: {e}"));
                    return Ending::Exited(st);
                }
                return Ending::Aborted(format!("QMP: {e}"));
            }
        }
        if let Err(e) = self.query_basics() {
            return Ending::Aborted(format!("QMP: {e}"));
        }
        let mut last_pump = Instant::now();
        loop {
            match self.qemu.try_wait() {
                Ok(Some(st)) => return Ending::Exited(st),
                Ok(None) => {}
                Err(e) => return Ending::Aborted(e.to_string()),
            }
            let remaining = self.remaining();
            if remaining.is_zero() {
                return Ending::Timeout;
            }
            if interrupted() {
                return Ending::Aborted("interrupted by a signal".into());
            }
            match self.serial.recv(remaining.min(Duration::from_millis(50))) {
                Recv::Line(line) => {
                    if let Err(why) = self.on_line(&line.text, line.at, hotplug) {
                        return Ending::Aborted(why);
                    }
                }
                Recv::Idle => {}
                Recv::Closed => {
                    // QEMU closed COM1: it is exiting.
                    let wait = EXIT_GRACE.min(self.remaining());
                    return match self.qemu.wait_timeout(wait) {
                        Ok(Some(st)) => Ending::Exited(st),
                        Ok(None) if self.remaining().is_zero() => Ending::Timeout,
                        Ok(None) => Ending::Hung,
                        Err(e) => Ending::Aborted(e.to_string()),
                    };
                }
            }
            if last_pump.elapsed() >= EVENT_POLL {
                last_pump = Instant::now();
                self.pump_events(Duration::from_millis(1));
            }
        }
    }

    fn query_basics(&mut self) -> Result<(), qmp::QmpError> {
        let Some(q) = self.qmp.as_mut() else {
            return Ok(());
        };
        let version = q.execute(&QueryVersion {}, QMP_COMMAND_TIMEOUT)?;
        self.qemu_version = Some(version.to_string());
        let status = q.execute(&QueryStatus {}, QMP_COMMAND_TIMEOUT)?;
        if !status.running {
            let msg = format!(
                "QMP query-status: guest is `{}`, not running",
                status.status
            );
            self.lines.note(msg);
        }
        self.collect_events();
        Ok(())
    }

    fn collect_events(&mut self) {
        let Some(q) = self.qmp.as_mut() else {
            return;
        };
        let now = Instant::now();
        let evs = q.take_events();
        for ev in evs {
            let at_ms = self.ms_since_start(now);
            self.events.push(EventRecord {
                name: ev.name,
                at_ms,
                data: ev.data,
            });
        }
    }

    fn pump_events(&mut self, timeout: Duration) {
        if let Some(q) = self.qmp.as_mut()
            && let Err(e) = q.pump(timeout)
        {
            // QEMU closing QMP as it exits is normal; anything else is worth a note.
            if !matches!(e, qmp::QmpError::Closed) {
                self.lines.note(format!("QMP: {e}"));
            }
            self.collect_events();
            self.qmp = None;
            return;
        }
        self.collect_events();
    }

    /// Handles one guest line. An error aborts the run.
    fn on_line(
        &mut self,
        text: &str,
        at: Instant,
        hotplug: Option<&DiskBackend>,
    ) -> Result<(), String> {
        let Some(parsed) = GuestLine::parse(text) else {
            return Ok(());
        };
        let lines = &mut self.lines;
        match parsed {
            Ok(GuestLine::Ready { .. }) => {
                if lines.ready.is_some() {
                    lines.note("repeated `BATON ready`".into());
                } else {
                    lines.ready = Some(at);
                }
            }
            Ok(GuestLine::WaitingForDisk) => match hotplug {
                Some(backend) if lines.waiting_for_disk.is_none() => {
                    lines.waiting_for_disk = Some(at);
                    self.hot_add_disk(backend)?;
                    self.hotplug_done = Some(Instant::now());
                }
                Some(_) => lines.note("repeated `BATON waiting-for-disk`".into()),
                None => {
                    lines.note("`BATON waiting-for-disk` but the disk was present at boot".into())
                }
            },
            Ok(GuestLine::FirstIo) => {
                if lines.first_io.is_none() {
                    lines.first_io = Some(at);
                }
            }
            Ok(GuestLine::Result(r)) => lines.on_result(Ok(r)),
            Err(e @ LineError::Result(_)) => lines.on_result(Err(e.to_string())),
            Ok(GuestLine::Panic(message)) => {
                if lines.panic.is_none() {
                    lines.panic = Some(message.to_owned());
                }
            }
            Ok(GuestLine::PortStats(ps)) if lines.port_stats.len() < 2 => {
                lines.port_stats.push(ps.into())
            }
            Ok(GuestLine::PortStats(_)) => {
                lines.note("extra `BATON port-stats` line ignored".into())
            }
            // The completion timeline is for the handoff plot (`migrate`); a direct run has none
            // to show.
            Ok(GuestLine::Timeline(_)) | Err(LineError::Timeline(_)) => {}
            Ok(l @ (GuestLine::PeerFault(_) | GuestLine::FaultInjected)) => {
                let word = l.kind().map_or("", Kind::word);
                lines.note(format!(
                    "unexpected guest line `BATON {word}` (no peer in this run)"
                ));
            }
            Ok(GuestLine::Unknown(rest)) => {
                let w: String = rest
                    .split(' ')
                    .next()
                    .unwrap_or("")
                    .chars()
                    .take(32)
                    .collect();
                lines.note(format!("unknown guest line `BATON {w}`"));
            }
            Err(e) => lines.note(format!("malformed `BATON {}` line: {e}", e.kind())),
        }
        Ok(())
    }

    /// `blockdev-add` + `device_add` of the workload disk at the hotplug slot.
    fn hot_add_disk(&mut self, backend: &DiskBackend) -> Result<(), String> {
        let Some(q) = self.qmp.as_mut() else {
            return Err("hotplug requested but the QMP session is gone".into());
        };
        q.execute(
            &BlockdevAdd(backend.blockdev_options(DISK_ID)),
            QMP_COMMAND_TIMEOUT,
        )
        .map_err(|e| format!("hotplug: {e}"))?;
        q.execute(
            &DeviceAdd {
                driver: "virtio-blk-pci".into(),
                id: DISK_ID.into(),
                props: qemu::virtio_blk_device_props(DISK_ID, HOTPLUG_DISK_SLOT),
            },
            QMP_COMMAND_TIMEOUT,
        )
        .map_err(|e| format!("hotplug: {e}"))?;
        Ok(())
    }

    /// After QEMU is gone: read the rest of COM1 and QMP.
    fn drain_after_exit(&mut self) {
        let until = Instant::now() + EXIT_GRACE;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match self.serial.recv(left) {
                Recv::Line(l) => {
                    // No actions after exit: a hotplug request now can't be served.
                    let _ = self.on_line(&l.text, l.at, None);
                }
                Recv::Idle | Recv::Closed => break,
            }
        }
        if self.qmp.is_some() {
            self.pump_events(Duration::from_millis(100));
        }
        self.qmp = None;
    }
}

/// Classifies QEMU's end.
pub(crate) fn classify(
    ending: &Ending,
    panic: Option<&String>,
    timeout: Duration,
) -> (GuestExit, String, Option<i32>) {
    match ending {
        Ending::Exited(st) => match st.code() {
            Some(EXIT_SUCCESS) => (
                GuestExit::Success,
                "guest exited with success (QEMU status 33)".into(),
                Some(EXIT_SUCCESS),
            ),
            Some(EXIT_FAILURE) if panic.is_some() => (
                GuestExit::Panic,
                "guest panicked and exited with failure (QEMU status 35)".into(),
                Some(EXIT_FAILURE),
            ),
            Some(EXIT_FAILURE) => (
                GuestExit::Failure,
                "guest exited with failure (QEMU status 35)".into(),
                Some(EXIT_FAILURE),
            ),
            Some(c) => (
                GuestExit::QemuDied,
                format!("QEMU exited with status {c} (not a guest exit)"),
                Some(c),
            ),
            None => {
                use std::os::unix::process::ExitStatusExt;
                let sig = st.signal().unwrap_or(0);
                (
                    GuestExit::QemuDied,
                    format!("QEMU was killed by signal {sig}"),
                    None,
                )
            }
        },
        Ending::Timeout => (
            GuestExit::Timeout,
            format!("no guest exit within {}s; QEMU killed", timeout.as_secs()),
            None,
        ),
        Ending::Hung => (
            GuestExit::QemuDied,
            "QEMU closed its output but did not exit; killed".into(),
            None,
        ),
        Ending::Aborted(why) => (GuestExit::ShimError, format!("{why}; QEMU killed"), None),
    }
}

/// Checks that the guest's report describes the run the shim asked for.
pub(crate) fn check_echo(r: &GuestReport, g: &GuestConfig) -> Result<(), String> {
    let mismatches: Vec<String> = [
        ("vm", u64::from(r.vm), u64::from(g.vm)),
        ("seed", r.seed, g.seed),
        ("blocks", r.blocks, g.blocks),
        ("passes", u64::from(r.passes), u64::from(g.passes)),
        ("qd", u64::from(r.qd), u64::from(g.qd)),
        ("first_lba", r.first_lba, g.first_lba),
    ]
    .iter()
    .filter(|(_, got, want)| got != want)
    .map(|(k, got, want)| format!("{k}={got} (asked {want})"))
    .collect();
    if r.role != g.role {
        return Err(format!("guest report has role {}", r.role));
    }
    if mismatches.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "guest report describes another run: {}",
            mismatches.join(", ")
        ))
    }
}

/// What the run was set up to do.
struct Plan<'a> {
    cfg: &'a RunConfig,
    spec: &'a MachineSpec,
    guest: &'a GuestConfig,
    schedule: Schedule,
    backend: &'a DiskBackend,
    disk_bytes: u64,
    accel_reason: String,
    workdir: &'a Workdir,
    image: Option<&'a DiskImage>,
}

fn build_report(plan: &Plan<'_>, mut s: Session, ending: Ending) -> RunReport {
    let Plan {
        cfg,
        spec,
        guest,
        schedule,
        backend,
        disk_bytes,
        workdir,
        image,
        ..
    } = *plan;
    let schedule = &schedule;
    let (guest_exit, mut reason, qemu_exit_code) =
        classify(&ending, s.lines.panic.as_ref(), cfg.timeout);
    let stderr = s.stderr.collect(Duration::from_secs(2));
    if matches!(guest_exit, GuestExit::QemuDied | GuestExit::ShimError) {
        let mut tail: Vec<&str> = stderr.lines().rev().take(5).collect();
        tail.reverse();
        if !tail.is_empty() {
            reason = format!("{reason}; QEMU stderr: {}", tail.join(" | "));
        }
    }
    let mut failures = Vec::new();
    if !matches!(guest_exit, GuestExit::Success) {
        failures.push(format!("guest exit: {reason}"));
    }
    if let Some(e) = s.qmp_error.take() {
        if guest_exit == GuestExit::Success {
            failures.push(e);
        } else {
            // Secondary when QEMU died; the note keeps it visible.
            s.lines.note(e);
        }
    }
    let writes_total = schedule.total_writes();
    let mut guest_report = None;
    let mut guest_report_error = None;
    let result_line_seen = s.lines.result.is_some();
    match s.lines.result.take() {
        Some(Ok(r)) => match check_echo(&r, guest) {
            Ok(()) => guest_report = Some(r),
            Err(e) => guest_report_error = Some(e),
        },
        Some(Err(e)) => guest_report_error = Some(format!("malformed `BATON result` line: {e}")),
        None => {
            if !guest.panic {
                guest_report_error = Some("the guest printed no `BATON result` line".into());
            }
        }
    }
    // A guest that failed explains the missing report itself; a malformed or foreign report, or a
    // "successful" guest without one, is a failure of its own.
    if let Some(e) = &guest_report_error
        && (guest_exit == GuestExit::Success || result_line_seen)
    {
        failures.push(e.clone());
    }
    if guest.panic {
        failures.push("a guest panic was requested (--guest-panic)".into());
    }

    let acks = guest_report.as_ref().map(Acks::from_report);
    if let Some(r) = &guest_report {
        failures.extend(crate::report::guest_report_failures(
            r,
            writes_total,
            "guest",
        ));
    }

    // Host-side verification.
    let mut verification: Option<Verification> = None;
    let note = match (backend, image, &acks) {
        (DiskBackend::Null { .. }, _, _) => {
            "skipped: the null-co backend keeps no data (guest read-back was off too)".to_owned()
        }
        (DiskBackend::File(_), None, _) => "skipped: no image".to_owned(),
        (DiskBackend::File(_), Some(_), None) => {
            if guest_exit == GuestExit::Success {
                failures.push("disk not verified: no usable guest report".into());
            }
            "skipped: no usable guest report, so the acknowledged writes are unknown".to_owned()
        }
        (DiskBackend::File(_), Some(_), Some(None)) => {
            failures.push(
                "disk not verified: the guest listed fewer failed writes than it counted".into(),
            );
            "skipped: the guest report does not name every failed write".to_owned()
        }
        (DiskBackend::File(_), Some(img), Some(Some(acks))) => {
            match disk::verify_image(img.path(), schedule, acks) {
                Ok(v) => {
                    failures.extend(v.failures());
                    let n = format!(
                        "host read {} blocks of {} and checked every tag and payload against the schedule",
                        v.blocks_checked,
                        img.path().display()
                    );
                    verification = Some(v);
                    n
                }
                Err(e) => {
                    failures.push(format!("disk verification failed: {e}"));
                    format!("failed: {e}")
                }
            }
        }
    };
    if let (Some(v), Some(r)) = (&verification, &guest_report)
        && v.writes_acked != r.writes_acked
    {
        failures.push(format!(
            "guest says {} writes acked, its submitted and failed seqs imply {}",
            r.writes_acked, v.writes_acked
        ));
    }

    let ended = s.ended_at.unwrap_or_else(Instant::now);
    let elapsed_ms = s.ms_since_start(ended);
    let ready_ms = s.lines.ready.map(|t| s.ms_since_start(t));
    let boot_ms = s.lines.first_io.map(|t| s.ms_since_start(t));
    let hotplug_ms = s.hotplug_done.map(|t| s.ms_since_start(t));
    if cfg.hotplug_disk && hotplug_ms.is_none() && !guest.panic {
        failures.push("the guest never asked for the hot-added disk".into());
    }
    write_events_log(&s.serial_log.with_file_name("qmp-events.log"), &s.events);

    let g = guest_report.as_ref();
    let verified = verification.is_some();
    RunReport {
        scenario: if cfg.hotplug_disk {
            "hotplug"
        } else {
            "direct"
        }
        .into(),
        ok: failures.is_empty(),
        failures,
        accel: spec.accel.as_str().into(),
        accel_reason: plan.accel_reason.clone(),
        qemu_version: s.qemu_version.take(),
        qemu_command: spec.display(),
        backend: backend.kind().into(),
        vm: guest.vm,
        blocks: guest.blocks,
        passes: guest.passes,
        qd: guest.qd,
        seed: guest.seed,
        first_lba: guest.first_lba,
        disk_bytes,
        writes_total,
        writes_submitted: g.map(|r| r.writes_submitted),
        writes_acked: verification
            .as_ref()
            .map(|v| v.writes_acked)
            .or(g.map(|r| r.writes_acked)),
        write_errors: g.map(|r| r.write_errors),
        verified,
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
        qemu_exit_code,
        guest_panic_message: s.lines.panic.take(),
        guest_report_error,
        ready_ms,
        boot_ms,
        hotplug_ms,
        iops: g.map(|r| r.iops),
        guest_elapsed_us: g.map(|r| r.elapsed_us),
        elapsed_ms,
        port1_requests: g.map(|r| r.port1_requests),
        port2_requests: g.map(|r| r.port2_requests),
        held_at_switch: g.map(|r| r.held_at_switch),
        max_gap_us: g.map(|r| r.max_gap_us),
        duplicates: g.map(|r| r.duplicates),
        port_stats: std::mem::take(&mut s.lines.port_stats),
        qmp_events: std::mem::take(&mut s.events),
        notes: std::mem::take(&mut s.lines.notes),
        serial_log: s.serial_log.display().to_string(),
        workdir: workdir.path().display().to_string(),
        artifacts_kept: workdir.kept(),
    }
}

fn write_events_log(path: &Path, events: &[EventRecord]) {
    let mut text = String::new();
    for e in events {
        let v = serde_json::json!({"at_ms": e.at_ms, "event": e.name, "data": e.data});
        text.push_str(&Value::to_string(&v));
        text.push('\n');
    }
    // The events are in the report too; a failed log write loses nothing.
    let _ = std::fs::write(path, text);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;
    use std::process::ExitStatus;

    #[test]
    fn exit_statuses_are_classified() {
        let t = Duration::from_secs(9);
        let st = |code: i32| Ending::Exited(ExitStatus::from_raw(code << 8));
        assert_eq!(classify(&st(33), None, t).0, GuestExit::Success);
        assert_eq!(classify(&st(35), None, t).0, GuestExit::Failure);
        let p = "boom".to_string();
        assert_eq!(classify(&st(35), Some(&p), t).0, GuestExit::Panic);
        let (e, why, code) = classify(&st(1), None, t);
        assert_eq!((e, code), (GuestExit::QemuDied, Some(1)));
        assert!(why.contains("status 1"));
        let (e, why, code) = classify(&Ending::Exited(ExitStatus::from_raw(9)), None, t);
        assert_eq!((e, code), (GuestExit::QemuDied, None));
        assert!(why.contains("signal 9"));
        let (e, why, _) = classify(&Ending::Timeout, None, t);
        assert_eq!(e, GuestExit::Timeout);
        assert!(why.contains("9s"));
        assert_eq!(classify(&Ending::Hung, None, t).0, GuestExit::QemuDied);
        assert_eq!(
            classify(&Ending::Aborted("x".into()), None, t).0,
            GuestExit::ShimError
        );
    }

    #[test]
    fn report_echo_is_checked() {
        let g = GuestConfig::default();
        let mut r = GuestReport::new(&g);
        assert!(check_echo(&r, &g).is_ok());
        r.seed = 99;
        let e = check_echo(&r, &g).unwrap_err();
        assert!(e.contains("seed=99 (asked 1)"), "{e}");
    }

    #[test]
    fn accel_choice_resolves() {
        assert_eq!(AccelChoice::Tcg.resolve().unwrap().0, Accel::Tcg);
        let (auto, why) = AccelChoice::Auto.resolve().unwrap();
        let hw_kvm = qemu::kvm_usable().is_ok() && qemu::kvm_is_software().is_none();
        assert_eq!(auto == Accel::Kvm, hw_kvm, "{why}");
    }
}
