//! One QEMU process of the handoff: the shared [`crate::vm::Vm`] (console, stderr, QMP session,
//! exit), used with the handoff's errors ([`Abort`]), timeouts and log names
//! (`serial-<label>.log`, `qemu-<label>.stderr`, `qemu-<label>.cmdline`).

use super::*;
#[cfg(test)]
pub(super) use crate::vm::event_instant;
pub(super) use crate::vm::{Vm, describe_exit};
use crate::vm::{VmError, VmLogs};

impl Vm {
    /// Starts guest `label` of `spec`, its logs in `dir`.
    pub(super) fn spawn(
        label: &'static str,
        spec: &MachineSpec,
        dir: &Path,
    ) -> Result<Self, MigrateError> {
        Vm::start(label, spec, &VmLogs::labelled(dir, label)).map_err(|e| match e {
            VmError::Qemu(e) => e.into(),
            VmError::Log { source, .. } => MigrateError::Setup(SetupError::Workdir {
                path: dir.to_path_buf(),
                source,
            }),
        })
    }

    /// Connects QMP on the guest's socket (the one of its [`MachineSpec`]) with short reads, so
    /// event polls don't block the loop.
    pub(super) fn connect_qmp(&mut self) -> Result<(), Abort> {
        self.open_qmp(CONNECT_TIMEOUT)
            .map_err(|source| Abort::Qmp {
                vm: self.label.into(),
                command: "connect",
                source,
            })?;
        if let Some(q) = &self.qmp {
            let _ = q.stream().set_read_timeout(Some(QMP_READ_TIMEOUT));
        }
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
        if self.qmp.is_none() {
            return Err(Abort::Other(format!("{label}: no QMP session")));
        }
        self.execute(cmd, timeout).map_err(|source| Abort::Qmp {
            vm: label.into(),
            command: C::NAME,
            source,
        })
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

    /// `quit` over QMP (which flushes the disk), then wait; kill if it does not exit in time.
    pub(super) fn quit(&mut self) -> Result<ExitStatus, String> {
        if let Some(st) = self.poll_exit() {
            return Ok(st);
        }
        let sent = self.exec(&Quit {});
        if let Ok(Some(st)) = self.wait_exit(QUIT_TIMEOUT) {
            return Ok(st);
        }
        self.kill()
            .ok_or_else(|| format!("{}: QEMU could not be killed", self.label))?;
        Err(format!(
            "{} did not exit within {QUIT_TIMEOUT:?} of `quit` ({}); killed",
            self.label,
            sent.err().map_or_else(|| "sent".into(), |e| chain(&e))
        ))
    }

    /// The last lines of QEMU's stderr, for a failure message.
    pub(super) fn stderr_tail(&self) -> String {
        self.stderr_lines(3, Duration::from_millis(500))
    }
}
