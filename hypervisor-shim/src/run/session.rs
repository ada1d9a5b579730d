//! Following the guest of a direct run: QMP basics and events, its `BATON` lines (each accepted
//! once, in the state where it makes sense), the hot-add of its disk, and the wait for its exit.

use std::path::Path;
use std::time::{Duration, Instant};

use baton_core::console::{GuestLine, Kind, LineError, NetResultLine};
use baton_core::report::GuestReport;

use crate::console::Recv;
use crate::qemu::{self, DISK_ID, DiskBackend, HOTPLUG_DISK_SLOT, MachineSpec};
use crate::qmp::{self, BlockdevAdd, DeviceAdd, QueryStatus, QueryVersion};
use crate::report::PortStatsReport;
use crate::setup::{
    EXIT_GRACE, MAX_NOTES, QMP_COMMAND_TIMEOUT, QMP_CONNECT_TIMEOUT, SetupError, interrupted,
};
use crate::vm::{Ending, Vm, VmError, VmLogs};

/// How often QMP events are collected while the guest runs.
const EVENT_POLL: Duration = Duration::from_millis(100);

/// What the guest said on COM1, accepted once each.
#[derive(Debug, Default)]
pub(super) struct GuestLines {
    pub(super) ready: Option<Instant>,
    pub(super) waiting_for_disk: Option<Instant>,
    pub(super) first_io: Option<Instant>,
    pub(super) result: Option<Result<GuestReport, String>>,
    /// The NIC workload's `BATON net-result` (`run --device net`).
    pub(super) net_result: Option<NetResultLine>,
    pub(super) panic: Option<String>,
    pub(super) port_stats: Vec<PortStatsReport>,
    pub(super) notes: Vec<String>,
}

impl GuestLines {
    pub(super) fn note(&mut self, n: String) {
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

/// A running guest and what the shim learnt about it.
pub(super) struct Session {
    pub(super) vm: Vm,
    pub(super) qmp_error: Option<String>,
    pub(super) qemu_version: Option<String>,
    pub(super) lines: GuestLines,
    pub(super) hotplug_done: Option<Instant>,
    deadline: Instant,
    pub(super) ended_at: Option<Instant>,
}

impl Session {
    /// Starts QEMU for `spec`, its logs in `dir`; the run ends at the latest `timeout` after this.
    pub(super) fn start(
        spec: &MachineSpec,
        dir: &Path,
        timeout: Duration,
    ) -> Result<Self, SetupError> {
        let vm = Vm::start("guest", spec, &VmLogs::single(dir)).map_err(|e| match e {
            VmError::Qemu(e) => SetupError::Qemu(e),
            VmError::Log { source, .. } => SetupError::Workdir {
                path: dir.to_path_buf(),
                source,
            },
        })?;
        let deadline = vm.started() + timeout;
        Ok(Self {
            vm,
            qmp_error: None,
            qemu_version: None,
            lines: GuestLines::default(),
            hotplug_done: None,
            deadline,
            ended_at: None,
        })
    }

    /// Milliseconds from QEMU's start to `at`, rounded to µs.
    pub(super) fn ms_since_start(&self, at: Instant) -> f64 {
        let d = at.saturating_duration_since(self.vm.started());
        (d.as_secs_f64() * 1e6).round() / 1e3
    }

    fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    /// Connects QMP, follows the guest until QEMU exits, the deadline passes, or the run is aborted.
    pub(super) fn drive(&mut self, hotplug: Option<&DiskBackend>) -> Ending {
        let ending = self.drive_inner(hotplug);
        self.ended_at = Some(Instant::now());
        if !matches!(ending, Ending::Exited(_)) {
            // Timeout, hang or abort: make sure QEMU is gone (the guard would do it too).
            self.vm.kill();
        }
        self.drain_after_exit();
        ending
    }

    fn drive_inner(&mut self, hotplug: Option<&DiskBackend>) -> Ending {
        let connect_timeout = QMP_CONNECT_TIMEOUT.min(self.remaining());
        if let Err(e) = self.vm.open_qmp(connect_timeout) {
            if let Ok(Some(st)) = self.vm.wait_exit(Duration::from_millis(200)) {
                self.qmp_error = Some(format!("QMP: {e}"));
                return Ending::Exited(st);
            }
            return Ending::Aborted(format!("QMP: {e}"));
        }
        if let Err(e) = self.query_basics() {
            return Ending::Aborted(format!("QMP: {e}"));
        }
        let mut last_pump = Instant::now();
        loop {
            if let Some(st) = self.vm.poll_exit() {
                return Ending::Exited(st);
            }
            let remaining = self.remaining();
            if remaining.is_zero() {
                return Ending::Timeout;
            }
            if interrupted() {
                return Ending::Aborted("interrupted by a signal".into());
            }
            match self.vm.recv_line(remaining.min(Duration::from_millis(50))) {
                Recv::Line(line) => {
                    if let Err(why) = self.on_line(&line.text, line.at, hotplug) {
                        return Ending::Aborted(why);
                    }
                }
                Recv::Idle => {}
                Recv::Closed => {
                    // QEMU closed COM1: it is exiting.
                    let wait = EXIT_GRACE.min(self.remaining());
                    return match self.vm.wait_exit(wait) {
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
        if self.vm.qmp.is_none() {
            return Ok(());
        }
        let version = self.vm.execute(&QueryVersion {}, QMP_COMMAND_TIMEOUT)?;
        self.qemu_version = Some(version.to_string());
        let status = self.vm.execute(&QueryStatus {}, QMP_COMMAND_TIMEOUT)?;
        if !status.running {
            let msg = format!(
                "QMP query-status: guest is `{}`, not running",
                status.status
            );
            self.lines.note(msg);
        }
        Ok(())
    }

    fn pump_events(&mut self, timeout: Duration) {
        // QEMU closing QMP as it exits is normal; anything else is worth a note.
        if let Some(e) = self.vm.pump_events(timeout)
            && !matches!(e, qmp::QmpError::Closed)
        {
            self.lines.note(format!("QMP: {e}"));
        }
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
            Ok(GuestLine::NetResult(r)) => {
                if lines.net_result.is_some() {
                    lines.note("repeated `BATON net-result` ignored".into());
                } else {
                    lines.net_result = Some(r);
                }
            }
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
            Ok(
                l @ (GuestLine::PeerFault(_)
                | GuestLine::FaultInjected
                | GuestLine::Switch(_)
                | GuestLine::Steps(_)),
            ) => {
                let word = l.kind().map_or("", Kind::word);
                lines.note(format!(
                    "unexpected guest line `BATON {word}` (no peer in this run)"
                ));
            }
            Ok(GuestLine::Unknown(rest)) => {
                lines.note(format!(
                    "unknown guest line `BATON {}`",
                    crate::console::unknown_word(rest)
                ));
            }
            Err(e) => lines.note(format!("malformed `BATON {}` line: {e}", e.kind())),
        }
        Ok(())
    }

    /// `blockdev-add` + `device_add` of the workload disk at the hotplug slot.
    fn hot_add_disk(&mut self, backend: &DiskBackend) -> Result<(), String> {
        if self.vm.qmp.is_none() {
            return Err("hotplug requested but the QMP session is gone".into());
        }
        self.vm
            .execute(
                &BlockdevAdd(backend.blockdev_options(DISK_ID)),
                QMP_COMMAND_TIMEOUT,
            )
            .map_err(|e| format!("hotplug: {e}"))?;
        self.vm
            .execute(
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
            match self.vm.recv_line(left) {
                Recv::Line(l) => {
                    // No actions after exit: a hotplug request now can't be served.
                    let _ = self.on_line(&l.text, l.at, None);
                }
                Recv::Idle | Recv::Closed => break,
            }
        }
        if self.vm.qmp.is_some() {
            self.pump_events(Duration::from_millis(100));
        }
        self.vm.qmp = None;
    }
}
