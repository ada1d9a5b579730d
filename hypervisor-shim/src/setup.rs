//! What every scenario (`run`, `migrate`, `bench`) sets up before its first QEMU starts, once: the
//! accelerator and why it was chosen, the working directory, socket paths, the guest kernel, QEMU
//! and its firmware, the machine every guest gets, the signal handler that ends a scenario cleanly,
//! and the one set of limits the scenarios share.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::disk;
use crate::qemu::{self, Accel, MachineSpec};

/// Guest RAM of every baton guest, in MiB (the value every scenario used; a live migration copies
/// all of it, so it stays small).
pub const GUEST_MEMORY_MIB: u32 = 128;
/// Longest wait for QEMU to exit after it closed its stdout (COM1), and for late console output
/// after it exited. 5 s, the longer of the two values the scenarios used (`run` 5 s, `migrate`
/// 3 s): the wait ends as soon as QEMU is gone or its console closes, so the longer value costs
/// nothing when all is well and leaves room for a slow exit on a loaded TCG host.
pub const EXIT_GRACE: Duration = Duration::from_secs(5);
/// Longest wait for QEMU's QMP socket to accept and answer.
pub const QMP_CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// Longest wait for one QMP command.
pub const QMP_COMMAND_TIMEOUT: Duration = Duration::from_secs(10);
/// Most protocol notes a report keeps. 32: a handoff has two guests and a dozen steps that can
/// each add one; a direct run rarely has more than a few.
pub const MAX_NOTES: usize = 32;

/// Errors that stop a scenario before it can produce a report.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
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
    /// the simulated hosts could not be set up
    #[error(transparent)]
    Hosts(#[from] crate::hosts::HostsError),
    /// the shared storage could not be set up
    #[error(transparent)]
    Storage(#[from] crate::storage::StorageError),
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

/// The files a guest needs from the host: QEMU, its firmware and the guest kernel.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// The QEMU binary.
    pub qemu: PathBuf,
    /// The qboot firmware.
    pub bios: PathBuf,
    /// The guest kernel ELF.
    pub kernel: PathBuf,
}

impl Binaries {
    /// Finds QEMU (`qemu`: a path, or a name on `PATH`), the firmware and the kernel (`kernel`, or
    /// [`default_kernel`]), and checks that each exists.
    pub fn locate(qemu_bin: &Path, kernel: Option<&Path>) -> Result<Self, SetupError> {
        let qemu = qemu::locate_qemu(qemu_bin)?;
        let bios = qemu::locate_bios()?;
        let kernel = match kernel {
            Some(k) => k.to_path_buf(),
            None => default_kernel()?,
        };
        if !kernel.is_file() {
            return Err(SetupError::NoKernel(kernel));
        }
        Ok(Self { qemu, bios, kernel })
    }

    /// The machine every baton guest gets ([`GUEST_MEMORY_MIB`], `accel`), running the kernel with
    /// command line `append` and QMP on `qmp_socket`; no disk, control channel or ring (callers add
    /// them with struct update syntax).
    pub fn machine(&self, accel: Accel, append: String, qmp_socket: PathBuf) -> MachineSpec {
        MachineSpec {
            qemu: self.qemu.clone(),
            accel,
            memory_mib: GUEST_MEMORY_MIB,
            bios: self.bios.clone(),
            kernel: self.kernel.clone(),
            append,
            qmp_socket,
            boot_disk: None,
            control_socket: None,
            ring: None,
            incoming: false,
            disk_errors: qemu::DiskErrors::default(),
            disk_fault: None,
            netns: None,
            nic: None,
        }
    }
}

/// The default kernel: `<exe dir>/../x86_64-unknown-none/release/baton-kernel`.
pub fn default_kernel() -> Result<PathBuf, SetupError> {
    let exe = std::env::current_exe().map_err(SetupError::NoExe)?;
    let dir = exe.parent().and_then(Path::parent).ok_or_else(|| {
        SetupError::NoExe(std::io::Error::other(
            "executable has no grandparent directory",
        ))
    })?;
    Ok(dir.join("x86_64-unknown-none/release/baton-kernel"))
}

/// A scenario's working directory. A temporary one is removed on drop unless kept; a directory the
/// user named is never removed.
#[derive(Debug)]
pub enum Workdir {
    /// Removed on drop.
    Temp(tempfile::TempDir),
    /// Left alone.
    Kept(PathBuf),
}

impl Workdir {
    /// `dir` (created if needed), or a fresh temporary directory `baton-run-XXXXXX`.
    pub fn create(dir: Option<&Path>, keep: bool) -> Result<Self, SetupError> {
        Self::create_with_prefix(dir, keep, "baton-run-")
    }

    /// As [`Workdir::create`], naming a temporary directory `<prefix>XXXXXX`.
    pub fn create_with_prefix(
        dir: Option<&Path>,
        keep: bool,
        prefix: &str,
    ) -> Result<Self, SetupError> {
        match dir {
            Some(d) => {
                std::fs::create_dir_all(d).map_err(|source| SetupError::Workdir {
                    path: d.to_path_buf(),
                    source,
                })?;
                Ok(Self::Kept(d.to_path_buf()))
            }
            None => {
                let t = tempfile::Builder::new()
                    .prefix(prefix)
                    .tempdir()
                    .map_err(|source| SetupError::Workdir {
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

    /// Whether the directory outlives the scenario.
    pub fn kept(&self) -> bool {
        matches!(self, Self::Kept(_))
    }
}

/// The QMP socket of a guest in `dir`: `qmp.sock` for the only guest of a scenario, else
/// `qmp-<label>.sock`.
pub fn qmp_socket(dir: &Path, label: Option<&str>) -> PathBuf {
    match label {
        None => dir.join("qmp.sock"),
        Some(l) => dir.join(format!("qmp-{l}.sock")),
    }
}

/// The control-channel socket (COM2) of guest `label` in `dir`: `ctl-<label>.sock`.
pub fn control_socket(dir: &Path, label: &str) -> PathBuf {
    dir.join(format!("ctl-{label}.sock"))
}

/// Removes a path (a socket, or another file the scenario owns) when dropped.
#[derive(Debug)]
pub struct SocketPath(pub PathBuf);

impl SocketPath {
    /// Removes a stale file at `path` (left by an earlier run in a kept workdir) and owns the path.
    pub fn fresh(path: PathBuf) -> Self {
        let _ = std::fs::remove_file(&path);
        Self(path)
    }
}

impl Drop for SocketPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_sig: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Makes SIGINT, SIGTERM and SIGHUP end a scenario cleanly (QEMU killed, report written, temporary
/// files removed) instead of killing the shim outright.
pub fn install_interrupt_handler() {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: `on_signal` only stores to an atomic, which is async-signal-safe; it has the
        // `extern "C" fn(c_int)` signature signal(2) expects.
        unsafe {
            libc::signal(sig, on_signal as *const () as libc::sighandler_t);
        }
    }
}

/// Whether a signal asked the scenario to stop.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accel_choice_resolves() {
        assert_eq!(AccelChoice::Tcg.resolve().unwrap().0, Accel::Tcg);
        let (auto, why) = AccelChoice::Auto.resolve().unwrap();
        let hw_kvm = qemu::kvm_usable().is_ok() && qemu::kvm_is_software().is_none();
        assert_eq!(auto == Accel::Kvm, hw_kvm, "{why}");
    }

    #[test]
    fn socket_names() {
        let d = Path::new("/w");
        assert_eq!(qmp_socket(d, None), Path::new("/w/qmp.sock"));
        assert_eq!(qmp_socket(d, Some("peer")), Path::new("/w/qmp-peer.sock"));
        assert_eq!(control_socket(d, "owner"), Path::new("/w/ctl-owner.sock"));
    }

    #[test]
    fn workdirs_are_removed_unless_kept() {
        let t = Workdir::create(None, false).unwrap();
        let p = t.path().to_path_buf();
        assert!(p.is_dir() && !t.kept());
        drop(t);
        assert!(!p.exists());
        let k = Workdir::create_with_prefix(None, true, "baton-test-").unwrap();
        let p = k.path().to_path_buf();
        assert!(k.kept());
        drop(k);
        assert!(p.is_dir());
        std::fs::remove_dir(&p).unwrap();
        let s = SocketPath::fresh(p.with_extension("sock"));
        std::fs::write(&s.0, b"").unwrap();
        let sp = s.0.clone();
        drop(s);
        assert!(!sp.exists());
    }
}
