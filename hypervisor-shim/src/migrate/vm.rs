//! One QEMU process of the handoff: its console, stderr, QMP session and exit.

use super::*;

/// One QEMU process of the scenario with its console, stderr and QMP session.
pub(super) struct Vm {
    // Field order is drop order: QEMU is killed before its console threads are let go.
    pub(super) qemu: QemuProcess,
    pub(super) label: &'static str,
    pub(super) serial: SerialConsole,
    pub(super) serial_closed: bool,
    pub(super) stderr: StderrCapture,
    pub(super) qmp: Option<Qmp<UnixStream>>,
    pub(super) events: Vec<(Instant, qmp::Event)>,
    pub(super) exit: Option<ExitStatus>,
    pub(super) exited_at: Option<Instant>,
    pub(super) command: String,
    pub(super) _qmp_socket: SocketPath,
}

impl Vm {
    pub(super) fn spawn(
        label: &'static str,
        spec: &MachineSpec,
        dir: &Path,
    ) -> Result<Self, MigrateError> {
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

    pub(super) fn serial_log(&self, dir: &Path) -> PathBuf {
        dir.join(format!("serial-{}.log", self.label))
    }

    pub(super) fn connect_qmp(&mut self, path: &Path) -> Result<(), Abort> {
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

    pub(super) fn exec<C: qmp::Command>(&mut self, cmd: &C) -> Result<C::Ok, Abort> {
        self.exec_timeout(cmd, QMP_COMMAND_TIMEOUT)
    }

    pub(super) fn exec_timeout<C: qmp::Command>(
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

    pub(super) fn hmp(&mut self, line: String) -> Result<(), Abort> {
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
    pub(super) fn pump_events(&mut self, wait: Duration) {
        if let Some(q) = self.qmp.as_mut() {
            let r = q.pump(wait);
            self.take_events();
            if r.is_err() {
                // Closed or broken: the process checks report the rest.
                self.qmp = None;
            }
        }
    }

    pub(super) fn take_events(&mut self) {
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
    pub(super) fn poll_exit(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none()
            && let Ok(Some(st)) = self.qemu.try_wait()
        {
            self.exit = Some(st);
            self.exited_at = Some(Instant::now());
        }
        self.exit
    }

    pub(super) fn alive(&mut self) -> bool {
        self.poll_exit().is_none()
    }

    /// `quit` over QMP (which flushes the disk), then wait; kill if it does not exit in time.
    pub(super) fn quit(&mut self) -> Result<ExitStatus, String> {
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

    pub(super) fn kill(&mut self) {
        if self.poll_exit().is_none()
            && let Ok(st) = self.qemu.kill()
        {
            self.exit = Some(st);
            self.exited_at = Some(Instant::now());
        }
    }

    pub(super) fn stderr_tail(&self) -> String {
        let all = self.stderr.collect(Duration::from_millis(500));
        let mut tail: Vec<&str> = all.lines().rev().take(3).collect();
        tail.reverse();
        tail.join(" | ")
    }
}

/// When an event happened on the shim's clock: QEMU stamps events with its wall clock, so the
/// event's age is subtracted from `now` (`wall` is the wall clock at `now`). Events whose stamp is
/// missing, in the future or more than a minute old get `now` (when the shim read them).
pub(super) fn event_instant(e: &qmp::Event, now: Instant, wall: std::time::SystemTime) -> Instant {
    let stamp = std::time::UNIX_EPOCH + Duration::from_micros(e.timestamp_us);
    match wall.duration_since(stamp) {
        Ok(age) if e.timestamp_us > 0 && age < Duration::from_secs(60) => {
            now.checked_sub(age).unwrap_or(now)
        }
        _ => now,
    }
}

pub(super) fn describe_exit(st: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (st.code(), st.signal()) {
        (Some(c), _) => format!("status {c}"),
        (None, Some(s)) => format!("signal {s}"),
        _ => "unknown status".into(),
    }
}
