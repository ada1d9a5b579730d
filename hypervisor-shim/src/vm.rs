//! One QEMU guest process as every scenario drives it: the process (killed and reaped on drop), its
//! serial console (COM1, [`crate::console`]), its stderr, its QMP session and the events QEMU sent
//! on it, and how it ended ([`Ending`], [`classify`]: the exit protocol of docs/guest-interface.md,
//! `isa-debug-exit` 0x10 → status 33, 0x11 → 35), and whether its report describes the run it was
//! asked for ([`check_echo`]).
//!
//! Logs go to the scenario's working directory ([`VmLogs`]): the command line, the console with the
//! shim's timestamps, QEMU's stderr.

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::{Duration, Instant, SystemTime};

use baton_core::cmdline::GuestConfig;
use baton_core::report::GuestReport;

use crate::console::{Recv, SerialConsole, StderrCapture};
use crate::cputime::ProcessSample;
use crate::qemu::{EXIT_FAILURE, EXIT_SUCCESS, MachineSpec, QemuError, QemuProcess};
use crate::qmp::{self, Qmp, QmpError};
use crate::report::GuestExit;
use crate::setup::SocketPath;

/// Errors of starting a guest.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// QEMU could not be started
    #[error(transparent)]
    Qemu(#[from] QemuError),
    /// a log file could not be written or QEMU's output could not be taken
    #[error("cannot set up the log {path}")]
    Log {
        /// The log file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Where a guest's logs go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmLogs {
    /// The QEMU command line, one line (not written when `None`).
    pub cmdline: Option<PathBuf>,
    /// The console, each line stamped with seconds since QEMU started.
    pub serial: PathBuf,
    /// QEMU's stderr.
    pub stderr: PathBuf,
}

impl VmLogs {
    /// The logs of a scenario's only guest: `qemu-cmdline.txt`, `serial.log`, `qemu-stderr.log`.
    pub fn single(dir: &Path) -> Self {
        Self {
            cmdline: Some(dir.join("qemu-cmdline.txt")),
            serial: dir.join("serial.log"),
            stderr: dir.join("qemu-stderr.log"),
        }
    }

    /// The logs of guest `label` among several: `qemu-<label>.cmdline`, `serial-<label>.log`,
    /// `qemu-<label>.stderr`.
    pub fn labelled(dir: &Path, label: &str) -> Self {
        Self {
            cmdline: Some(dir.join(format!("qemu-{label}.cmdline"))),
            serial: dir.join(format!("serial-{label}.log")),
            stderr: dir.join(format!("qemu-{label}.stderr")),
        }
    }
}

/// One running guest. Dropping it kills QEMU, then lets its console threads go, then removes its
/// QMP socket.
#[derive(Debug)]
pub struct Vm {
    // Field order is drop order: QEMU is killed before its console threads are let go.
    /// The QEMU process.
    pub qemu: QemuProcess,
    /// Which guest this is, in messages and log names.
    pub label: &'static str,
    /// COM1.
    pub serial: SerialConsole,
    /// Whether COM1 has closed (QEMU exited).
    pub serial_closed: bool,
    /// QEMU's stderr.
    pub stderr: StderrCapture,
    /// The QMP session, once connected and until it breaks.
    pub qmp: Option<Qmp<UnixStream>>,
    /// QMP events received so far, each with when it happened on the shim's clock
    /// ([`event_instant`]).
    pub events: Vec<(Instant, qmp::Event)>,
    /// The exit status, once QEMU exited.
    pub exit: Option<ExitStatus>,
    /// When the shim saw QEMU exit.
    pub exited_at: Option<Instant>,
    /// QEMU's CPU time read from its zombie just before [`Vm::poll_exit`] reaped it (the end of
    /// a `cpu_time` phase may fall after the exit: [`crate::cputime`]).
    pub final_cpu: Option<ProcessSample>,
    /// The QEMU command line, for logs and reports.
    pub command: String,
    /// The console log.
    pub serial_log: PathBuf,
    qmp_socket: SocketPath,
}

impl Vm {
    /// Starts QEMU for `spec`: removes a stale QMP socket, writes the command line, starts the
    /// console and stderr readers. QMP is connected separately ([`Vm::open_qmp`]).
    pub fn start(label: &'static str, spec: &MachineSpec, logs: &VmLogs) -> Result<Self, VmError> {
        let log_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| VmError::Log { path, source }
        };
        let qmp_socket = SocketPath::fresh(spec.qmp_socket.clone());
        let command = spec.display();
        if let Some(p) = &logs.cmdline {
            std::fs::write(p, command.clone() + "\n").map_err(log_err(p))?;
        }
        let mut qemu = spec.spawn()?;
        let t0 = qemu.started();
        let not_piped = |p: &Path| log_err(p)(std::io::Error::other("QEMU output not piped"));
        let stdout = qemu.take_stdout().ok_or_else(|| not_piped(&logs.serial))?;
        let stderr = qemu.take_stderr().ok_or_else(|| not_piped(&logs.stderr))?;
        let serial =
            SerialConsole::start(stdout, &logs.serial, t0).map_err(log_err(&logs.serial))?;
        let stderr = StderrCapture::start(stderr, &logs.stderr).map_err(log_err(&logs.stderr))?;
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
            final_cpu: None,
            command,
            serial_log: logs.serial.clone(),
            qmp_socket,
        })
    }

    /// When QEMU was started.
    pub fn started(&self) -> Instant {
        self.qemu.started()
    }

    /// The QMP socket.
    pub fn qmp_socket(&self) -> &Path {
        &self.qmp_socket.0
    }

    /// Connects QMP (retrying for at most `timeout` while QEMU runs) and handshakes.
    pub fn open_qmp(&mut self, timeout: Duration) -> Result<(), QmpError> {
        let qemu = &mut self.qemu;
        let q = qmp::connect_unix(&self.qmp_socket.0, timeout, || qemu.alive())?;
        self.qmp = Some(q);
        Ok(())
    }

    /// Runs one QMP command, waiting at most `timeout` for its answer; events that arrived meanwhile
    /// move to [`Vm::events`]. [`QmpError::Closed`] when there is no session.
    pub fn execute<C: qmp::Command>(
        &mut self,
        cmd: &C,
        timeout: Duration,
    ) -> Result<C::Ok, QmpError> {
        let Some(q) = self.qmp.as_mut() else {
            return Err(QmpError::Closed);
        };
        let r = q.execute(cmd, timeout);
        self.take_events();
        r
    }

    /// Reads the QMP socket for up to `wait` (zero: only what has arrived, without blocking) and
    /// moves the events into [`Vm::events`]. A closed or
    /// broken session is dropped, and the error that ended it returned (the process checks report
    /// the rest).
    pub fn pump_events(&mut self, wait: Duration) -> Option<QmpError> {
        let q = self.qmp.as_mut()?;
        let r = if wait.is_zero() {
            q.pump_available()
        } else {
            q.pump(wait)
        };
        self.take_events();
        let e = r.err()?;
        self.qmp = None;
        Some(e)
    }

    /// Moves the events the QMP client queued into [`Vm::events`].
    pub fn take_events(&mut self) {
        if let Some(q) = self.qmp.as_mut() {
            let now = Instant::now();
            let wall = SystemTime::now();
            self.events.extend(
                q.take_events()
                    .into_iter()
                    .map(|e| (event_instant(&e, now, wall), e)),
            );
        }
    }

    /// The next console line within `timeout`; notes when the console closed.
    pub fn recv_line(&mut self, timeout: Duration) -> Recv {
        if self.serial_closed {
            return Recv::Closed;
        }
        let r = self.serial.recv(timeout);
        if r == Recv::Closed {
            self.serial_closed = true;
        }
        r
    }

    /// The exit status once QEMU has exited (non-blocking).
    pub fn poll_exit(&mut self) -> Option<ExitStatus> {
        if self.exit.is_some() {
            return self.exit;
        }
        match self.qemu.exited_unreaped() {
            Some(false) => return None,
            Some(true) => self.final_cpu = ProcessSample::of(self.qemu.pid()).ok(),
            None => {}
        }
        if let Ok(Some(st)) = self.qemu.try_wait() {
            self.record_exit(st);
        }
        self.exit
    }

    /// Whether QEMU still runs.
    pub fn alive(&mut self) -> bool {
        self.poll_exit().is_none()
    }

    /// Waits at most `timeout` for QEMU to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<Option<ExitStatus>, QemuError> {
        if let Some(st) = self.exit {
            return Ok(Some(st));
        }
        let st = self.qemu.wait_timeout(timeout)?;
        if let Some(st) = st {
            self.record_exit(st);
        }
        Ok(st)
    }

    /// Kills QEMU (SIGKILL) unless it already exited, and reaps it; the exit status, `None` when
    /// QEMU could not be waited for (the drop guard tries again).
    pub fn kill(&mut self) -> Option<ExitStatus> {
        if let Some(st) = self.poll_exit() {
            return Some(st);
        }
        let st = self.qemu.kill().ok()?;
        self.record_exit(st);
        Some(st)
    }

    fn record_exit(&mut self, st: ExitStatus) {
        self.exit = Some(st);
        self.exited_at = Some(Instant::now());
    }

    /// The last `lines` lines of QEMU's stderr, joined with ` | ` (waits at most `wait` for stderr to
    /// close; empty if it did not).
    pub fn stderr_lines(&self, lines: usize, wait: Duration) -> String {
        tail(&self.stderr.collect(wait), lines)
    }
}

/// The last `n` lines of `text`, joined with ` | `.
pub fn tail(text: &str, n: usize) -> String {
    let mut t: Vec<&str> = text.lines().rev().take(n).collect();
    t.reverse();
    t.join(" | ")
}

/// When an event happened on the shim's clock: QEMU stamps events with its wall clock, so the
/// event's age is subtracted from `now` (`wall` is the wall clock at `now`). Events whose stamp is
/// missing, in the future or more than a minute old get `now` (when the shim read them).
pub fn event_instant(e: &qmp::Event, now: Instant, wall: SystemTime) -> Instant {
    let stamp = std::time::UNIX_EPOCH + Duration::from_micros(e.timestamp_us);
    match wall.duration_since(stamp) {
        Ok(age) if e.timestamp_us > 0 && age < Duration::from_secs(60) => {
            now.checked_sub(age).unwrap_or(now)
        }
        _ => now,
    }
}

/// `status N` or `signal N`.
pub fn describe_exit(st: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (st.code(), st.signal()) {
        (Some(c), _) => format!("status {c}"),
        (None, Some(s)) => format!("signal {s}"),
        _ => "unknown status".into(),
    }
}

/// How the wait for a guest ended.
#[derive(Debug)]
pub enum Ending {
    /// QEMU exited with this status.
    Exited(ExitStatus),
    /// The scenario's hard timeout passed.
    Timeout,
    /// QEMU closed its output but did not exit within the grace period.
    Hung,
    /// The shim gave up (a QMP failure, a signal, ...), for this reason.
    Aborted(String),
}

/// Classifies QEMU's end: the guest's exit, a sentence saying why, and QEMU's exit code. `panic` is
/// the guest's `BATON panic` message, if it printed one; `timeout` the scenario's hard timeout.
pub fn classify(
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

/// Checks that the guest's report describes the run the shim asked for (its role and the figures
/// of its command line); `Err` says what differs. Both scenarios' verdicts use it.
pub fn check_echo(r: &GuestReport, g: &GuestConfig) -> Result<(), String> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

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
        assert_eq!(describe_exit(ExitStatus::from_raw(33 << 8)), "status 33");
        assert_eq!(describe_exit(ExitStatus::from_raw(9)), "signal 9");
    }

    #[test]
    fn event_times_come_from_qemus_stamp() {
        let now = Instant::now();
        let wall = SystemTime::now();
        let at = |us: u64| {
            let e = qmp::Event {
                name: "X".into(),
                data: serde_json::Value::Null,
                timestamp_us: us,
            };
            event_instant(&e, now, wall)
        };
        let wall_us = wall
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_micros() as u64;
        assert_eq!(at(0), now);
        assert_eq!(at(wall_us + 1_000_000), now);
        assert_eq!((now - at(wall_us - 20_000)).as_millis(), 20);
        assert_eq!(at(wall_us - 120_000_000), now);
    }

    #[test]
    fn logs_are_named_per_guest() {
        let d = Path::new("/w");
        assert_eq!(VmLogs::single(d).serial, Path::new("/w/serial.log"));
        let l = VmLogs::labelled(d, "peer");
        assert_eq!(
            l.cmdline.as_deref(),
            Some(Path::new("/w/qemu-peer.cmdline"))
        );
        assert_eq!(l.stderr, Path::new("/w/qemu-peer.stderr"));
        assert_eq!(tail("a\nb\nc\n", 2), "b | c");
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
}
