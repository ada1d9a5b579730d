//! Shared storage for a cross-host run (issue 10, "Shared storage"): `qemu-storage-daemon`
//! exporting one raw image over NBD (TCP) from the storage host ([`crate::hosts`]).
//!
//! The daemon runs inside the storage namespace (`ip netns exec`, [`Hosts::wrap`]) with the image
//! as a `file` block node, an NBD server on the storage host's address and one writable export
//! named [`EXPORT_NAME`]. Its QMP monitor is a Unix socket in the run's directory (the mount
//! namespace is shared, so the shim reaches it like any QEMU's). Every QEMU opens the disk with
//! [`StorageDaemon::backend`] (`driver=nbd` with `reconnect-delay`, so a restarted daemon is
//! survived: requests wait for the reconnection instead of failing).
//!
//! The daemon is the only process that writes the image file; the host reads it back only after
//! [`StorageDaemon::stop`] made it flush and exit.

use std::fs::{File, OpenOptions};
use std::net::Ipv4Addr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use qapi::qmp as q;

use crate::hosts::{Host, Hosts};
use crate::qemu::{self, DiskBackend, escape_opt};
use crate::qmp::{self, Qmp};

/// The export's NBD name.
pub const EXPORT_NAME: &str = "disk";
/// The default NBD port (IANA's).
pub const NBD_PORT: u16 = 10809;
/// The daemon's binary (searched on `PATH`).
pub const BINARY: &str = "qemu-storage-daemon";
/// How long the daemon gets to answer on QMP after a start.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a QMP command may take.
const QMP_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the daemon gets to flush and exit after `quit`.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);
/// The block node the export serves.
const NODE: &str = "image";

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// the binary is missing
    #[error("qemu-storage-daemon not found; it comes with QEMU (qemu-system-common)")]
    NotFound,
    /// the daemon could not be started
    #[error("cannot start qemu-storage-daemon")]
    Spawn(#[source] std::io::Error),
    /// its log file could not be created
    #[error("cannot create the storage daemon's log {path}")]
    Log {
        /// The log file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// the daemon exited or did not get ready
    #[error("qemu-storage-daemon {what}; its stderr: {stderr}")]
    Daemon {
        /// What went wrong.
        what: String,
        /// The tail of its stderr.
        stderr: String,
    },
}

/// qemu-storage-daemon exporting one raw image over NBD (TCP) from the storage host. Dropping it
/// kills (SIGKILL) and reaps the daemon if it still runs.
///
/// Like every QEMU the shim starts, the daemon gets SIGKILL when the thread that spawned it
/// exits (`PR_SET_PDEATHSIG`, so it never outlives a killed shim): call [`StorageDaemon::start`]
/// and [`StorageDaemon::restart`] from a thread that lives as long as the export is needed.
#[derive(Debug)]
pub struct StorageDaemon {
    argv: Vec<String>,
    addr: Ipv4Addr,
    port: u16,
    qmp_socket: PathBuf,
    log: PathBuf,
    child: Child,
    qmp: Option<Qmp<UnixStream>>,
}

impl StorageDaemon {
    /// Starts `qemu-storage-daemon` inside `host`, exporting `image` (raw) as [`EXPORT_NAME`] on
    /// `host.addr:port`, with its QMP monitor and stderr log (`storage-daemon.log`) in `dir`;
    /// waits (at most 10 s) until its QMP answers `query-block-exports` with the export.
    ///
    /// Errors: [`StorageError::NotFound`], [`StorageError::Spawn`], [`StorageError::Daemon`]
    /// (the daemon exited or did not get ready, with its stderr).
    pub fn start(host: &Host, image: &Path, port: u16, dir: &Path) -> Result<Self, StorageError> {
        let bin = qemu::locate_qemu(Path::new(BINARY)).map_err(|_| StorageError::NotFound)?;
        let qmp_socket = dir.join("qmp-storage.sock");
        let mut argv = vec![bin.to_string_lossy().into_owned()];
        argv.extend(daemon_args(image, host.addr, port, &qmp_socket));
        let log = dir.join("storage-daemon.log");
        let child = spawn(&Hosts::wrap(host, &argv), &log)?;
        let mut d = Self {
            argv: Hosts::wrap(host, &argv),
            addr: host.addr,
            port,
            qmp_socket,
            log,
            child,
            qmp: None,
        };
        d.wait_ready()?;
        Ok(d)
    }

    /// The backend every QEMU opens the disk with: NBD to this export, `reconnect-delay` set.
    pub fn backend(&self) -> DiskBackend {
        DiskBackend::Nbd {
            host: self.addr,
            port: self.port,
            export: EXPORT_NAME.into(),
        }
    }

    /// The daemon's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the daemon (SIGKILL) and starts it again on the same address; clients reconnect
    /// thanks to `reconnect-delay`. Waits as [`StorageDaemon::start`] does.
    pub fn restart(&mut self) -> Result<(), StorageError> {
        self.qmp = None;
        self.kill();
        let _ = std::fs::remove_file(&self.qmp_socket);
        self.child = spawn(&self.argv, &self.log)?;
        self.wait_ready()
    }

    /// Makes the daemon flush and exit (QMP `quit`; it flushes every node on exit), waiting at
    /// most 20 s; the image is complete on the host only after this. An exit status other than 0
    /// is an error.
    pub fn stop(mut self) -> Result<(), StorageError> {
        let sent = match self.qmp.as_mut() {
            Some(m) => m.execute(&qmp::Quit {}, QMP_TIMEOUT).map(drop),
            None => Err(qmp::QmpError::QemuGone),
        };
        // A `quit` can close the socket before its reply arrives: what counts is the exit.
        let _ = sent;
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            match self.child.try_wait() {
                Ok(Some(st)) if st.success() => return Ok(()),
                Ok(Some(st)) => return Err(self.failed(&format!("exited with {st} on quit"))),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Ok(None) => {
                    return Err(self.failed(&format!(
                        "did not exit within {} s of quit",
                        STOP_TIMEOUT.as_secs()
                    )));
                }
                Err(e) => return Err(self.failed(&format!("cannot be waited for: {e}"))),
            }
        }
    }

    /// Connects to QMP and checks the export is there.
    fn wait_ready(&mut self) -> Result<(), StorageError> {
        let child = &mut self.child;
        let connected = qmp::connect_unix(&self.qmp_socket, READY_TIMEOUT, || {
            matches!(child.try_wait(), Ok(None))
        });
        let mut m = match connected {
            Ok(m) => m,
            Err(e) => return Err(self.failed(&format!("did not answer on QMP: {e}"))),
        };
        match m.execute(&QueryBlockExports, QMP_TIMEOUT) {
            Ok(ids) if ids.iter().any(|id| id == EXPORT_NAME) => {
                self.qmp = Some(m);
                Ok(())
            }
            Ok(_) => Err(self.failed("lists no export named `disk`")),
            Err(e) => Err(self.failed(&format!("query-block-exports failed: {e}"))),
        }
    }

    /// A [`StorageError::Daemon`] with the tail of the log; kills the daemon.
    fn failed(&mut self, what: &str) -> StorageError {
        self.kill();
        StorageError::Daemon {
            what: what.into(),
            stderr: log_tail(&self.log),
        }
    }

    fn kill(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            // ESRCH (exited meanwhile) is fine: wait() reaps it either way.
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

impl Drop for StorageDaemon {
    fn drop(&mut self) {
        self.qmp = None;
        self.kill();
        let _ = std::fs::remove_file(&self.qmp_socket);
    }
}

/// `query-block-exports`: the ids of the daemon's exports.
#[derive(Debug, Clone, Copy)]
struct QueryBlockExports;

impl qmp::Command for QueryBlockExports {
    type Qapi = q::query_block_exports;
    type Ok = Vec<String>;
    fn to_qapi(&self) -> Result<q::query_block_exports, serde_json::Error> {
        Ok(q::query_block_exports {})
    }
    fn reply(ok: Vec<q::BlockExportInfo>) -> Vec<String> {
        ok.into_iter().map(|e| e.id).collect()
    }
}

/// The daemon's arguments (without the program): the image as a `file` node, the NBD server on
/// `addr:port`, the writable export, QMP on `qmp_socket`.
pub fn daemon_args(image: &Path, addr: Ipv4Addr, port: u16, qmp_socket: &Path) -> Vec<String> {
    vec![
        "--blockdev".into(),
        format!(
            "driver=file,node-name={NODE},filename={}",
            escape_opt(&image.to_string_lossy())
        ),
        "--nbd-server".into(),
        format!("addr.type=inet,addr.host={addr},addr.port={port}"),
        "--export".into(),
        format!("type=nbd,id={EXPORT_NAME},node-name={NODE},name={EXPORT_NAME},writable=on"),
        "--chardev".into(),
        format!(
            "socket,id=qmp,path={},server=on,wait=off",
            escape_opt(&qmp_socket.to_string_lossy())
        ),
        "--monitor".into(),
        "chardev=qmp".into(),
    ]
}

/// Spawns `argv` with stdin closed, stdout discarded and stderr appended to `log`; the process
/// gets SIGKILL if the shim dies.
fn spawn(argv: &[String], log: &Path) -> Result<Child, StorageError> {
    let open = || {
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|source| StorageError::Log {
                path: log.to_path_buf(),
                source,
            })
    };
    let (prog, args) = argv.split_first().ok_or(StorageError::NotFound)?;
    let mut cmd = Command::new(prog);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(open()?));
    qemu::kill_with_parent(&mut cmd);
    cmd.spawn().map_err(StorageError::Spawn)
}

/// The last 2 KiB of the log, trimmed (`(empty)` when there is nothing).
fn log_tail(log: &Path) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let mut s = String::new();
    if let Ok(mut f) = File::open(log) {
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        let _ = f.seek(SeekFrom::Start(len.saturating_sub(2048)));
        let mut b = Vec::new();
        let _ = f.read_to_end(&mut b);
        s = String::from_utf8_lossy(&b).trim().to_owned();
    }
    if s.is_empty() { "(empty)".into() } else { s }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn daemon_exports_the_image_on_the_storage_address() {
        let a = daemon_args(
            Path::new("/w,x/disk.img"),
            Ipv4Addr::new(198, 18, 0, 3),
            NBD_PORT,
            Path::new("/w/qmp-storage.sock"),
        );
        assert_eq!(
            a,
            [
                "--blockdev",
                "driver=file,node-name=image,filename=/w,,x/disk.img",
                "--nbd-server",
                "addr.type=inet,addr.host=198.18.0.3,addr.port=10809",
                "--export",
                "type=nbd,id=disk,node-name=image,name=disk,writable=on",
                "--chardev",
                "socket,id=qmp,path=/w/qmp-storage.sock,server=on,wait=off",
                "--monitor",
                "chardev=qmp",
            ]
        );
    }

    #[test]
    fn a_missing_log_directory_is_an_error_not_a_panic() {
        let e = spawn(&["true".into()], Path::new("/nonexistent/dir/log")).unwrap_err();
        assert!(matches!(e, StorageError::Log { .. }), "{e}");
        assert_eq!(log_tail(Path::new("/nonexistent/log")), "(empty)");
    }
}
