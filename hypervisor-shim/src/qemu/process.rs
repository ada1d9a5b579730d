//! Starting QEMU and owning the process: stdout (the guest's COM1) and stderr piped, killed when
//! the shim dies, killed and reaped when the guard is dropped.

use std::process::{Child, ChildStderr, ChildStdout, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::{MachineSpec, QemuError};

impl MachineSpec {
    /// Starts QEMU with stdin closed and stdout (the guest's COM1) and stderr piped.
    /// Inside [`MachineSpec::netns`] when set (`ip netns exec` execs QEMU: the pid is QEMU's).
    pub fn spawn(&self) -> Result<QemuProcess, QemuError> {
        let argv = self.argv();
        let (prog, args) = argv.split_first().ok_or_else(|| QemuError::Spawn {
            qemu: self.qemu.display().to_string(),
            source: std::io::Error::other("empty command line"),
        })?;
        let mut cmd = Command::new(prog);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        kill_with_parent(&mut cmd);
        let mut child = cmd.spawn().map_err(|source| QemuError::Spawn {
            qemu: self.qemu.display().to_string(),
            source,
        })?;
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        Ok(QemuProcess {
            child,
            exited: None,
            stdout,
            stderr,
            started: Instant::now(),
        })
    }
}

/// Makes the child get SIGKILL when the thread that spawned it dies, so a QEMU never outlives a shim
/// that was killed outright (SIGKILL skips the RAII guard).
pub(crate) fn kill_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    let hook = || {
        // SAFETY: prctl(PR_SET_PDEATHSIG) takes a plain signal number, no pointers, and is
        // async-signal-safe.
        if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    };
    // SAFETY: `hook` runs in the forked child before exec; it only calls prctl(2), allocates
    // nothing and touches no state shared with the parent, as pre_exec requires.
    unsafe {
        cmd.pre_exec(hook);
    }
}

/// A running QEMU process. Dropping it kills and reaps QEMU.
#[derive(Debug)]
pub struct QemuProcess {
    child: Child,
    exited: Option<ExitStatus>,
    stdout: Option<ChildStdout>,
    stderr: Option<ChildStderr>,
    started: Instant,
}

impl QemuProcess {
    /// When QEMU was spawned.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// OS process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Takes the guest's COM1 stream (QEMU's stdout).
    pub fn take_stdout(&mut self) -> Option<ChildStdout> {
        self.stdout.take()
    }

    /// Takes QEMU's stderr.
    pub fn take_stderr(&mut self) -> Option<ChildStderr> {
        self.stderr.take()
    }

    /// The exit status if QEMU has exited (non-blocking).
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>, QemuError> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().map_err(QemuError::Wait)?;
        }
        Ok(self.exited)
    }

    /// Whether QEMU has exited and is not reaped yet (`waitid` with `WNOWAIT`): its
    /// `/proc/<pid>` still holds what it used. `None` when that cannot be told (reaped already,
    /// or `waitid` failed).
    pub fn exited_unreaped(&self) -> Option<bool> {
        if self.exited.is_some() {
            return None;
        }
        // SAFETY: siginfo_t is plain data for which all zeroes is a valid value.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: waitid writes only into `info`, which lives for the call; WNOWAIT leaves the
        // child waitable, so the reaping `try_wait` still gets its status.
        let r = unsafe {
            libc::waitid(
                libc::P_PID,
                self.pid(),
                &raw mut info,
                libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
            )
        };
        // SAFETY: after a successful waitid, si_pid is set (0 when no child changed state).
        (r == 0).then(|| unsafe { info.si_pid() } != 0)
    }

    /// Whether QEMU still runs (an error counts as not running).
    pub fn alive(&mut self) -> bool {
        matches!(self.try_wait(), Ok(None))
    }

    /// Waits at most `timeout` for QEMU to exit.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<ExitStatus>, QemuError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.try_wait()? {
                return Ok(Some(st));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Kills QEMU (SIGKILL) and reaps it.
    pub fn kill(&mut self) -> Result<ExitStatus, QemuError> {
        if let Some(st) = self.try_wait()? {
            return Ok(st);
        }
        // ESRCH races (it exited meanwhile) are fine: wait() below reaps it either way.
        let _ = self.child.kill();
        let st = self.child.wait().map_err(QemuError::Wait)?;
        self.exited = Some(st);
        Ok(st)
    }
}

impl Drop for QemuProcess {
    fn drop(&mut self) {
        // Errors cannot be reported from drop; kill() reaps whenever the kill succeeded.
        let _ = self.kill();
    }
}
