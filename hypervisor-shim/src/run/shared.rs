//! `run --shared-storage` (a test hook for issue 10): the disk image is exported over NBD by
//! `qemu-storage-daemon` in a simulated storage host and the guest's QEMU runs in host A
//! ([`crate::hosts`], [`crate::storage`]); optionally the daemon is restarted mid-run
//! (`--restart-storage-ms`), which the guest survives thanks to the disk's `reconnect-delay`.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::hosts::Hosts;
use crate::setup::SetupError;
use crate::storage::{NBD_PORT, StorageDaemon};

/// The simulated hosts and the export of one run; the restarter, while one is armed, owns the
/// daemon.
pub(super) struct SharedStorage {
    /// Dropped last: removes the namespaces (and kills whatever is left in them).
    pub(super) hosts: Hosts,
    daemon: Option<StorageDaemon>,
    restarter: Option<Restarter>,
}

/// The thread that owns the daemon once a restart is armed: it restarts it, then stops it when
/// the run ends. It must be the same thread throughout, since the daemon gets SIGKILL when the
/// thread that spawned it exits (`PR_SET_PDEATHSIG`).
struct Restarter {
    cancel: Arc<AtomicBool>,
    thread: JoinHandle<(Option<String>, Option<String>)>,
}

impl SharedStorage {
    /// Creates the hosts and starts the export of `image` (files in `dir`).
    pub(super) fn start(image: &Path, dir: &Path) -> Result<Self, SetupError> {
        let hosts = Hosts::create()?;
        let daemon = StorageDaemon::start(hosts.storage(), image, NBD_PORT, dir)?;
        Ok(Self {
            hosts,
            daemon: Some(daemon),
            restarter: None,
        })
    }

    /// The backend the guest's QEMU opens.
    pub(super) fn backend(&self) -> Option<crate::qemu::DiskBackend> {
        self.daemon.as_ref().map(StorageDaemon::backend)
    }

    /// Restarts the daemon `after` from now, on a thread (unless the run ends first).
    pub(super) fn restart_after(&mut self, after: Duration) {
        let Some(mut daemon) = self.daemon.take() else {
            return;
        };
        let cancel = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&cancel);
        let thread = std::thread::spawn(move || {
            let at = Instant::now() + after;
            let mut note = None;
            while !flag.load(Ordering::SeqCst) {
                if note.is_none() && Instant::now() >= at {
                    note = Some(match daemon.restart() {
                        Ok(()) => format!(
                            "storage daemon restarted {} ms into the run (pid {})",
                            after.as_millis(),
                            daemon.pid()
                        ),
                        Err(e) => format!("storage daemon restart failed: {e}"),
                    });
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let failure = stop(daemon);
            let failure = failure.or_else(|| note.clone().filter(|n| n.contains("failed")));
            (note, failure)
        });
        self.restarter = Some(Restarter { cancel, thread });
    }

    /// Ends the export: waits for a pending restart, then stops the daemon so the image is
    /// flushed. Returns the restart's note (if it happened) and a failure, if any.
    pub(super) fn finish(&mut self) -> (Option<String>, Option<String>) {
        if let Some(r) = self.restarter.take() {
            r.cancel.store(true, Ordering::SeqCst);
            return match r.thread.join() {
                Ok(outcome) => outcome,
                Err(_) => (None, Some("the storage restarter panicked".into())),
            };
        }
        match self.daemon.take() {
            Some(d) => (None, stop(d)),
            None => (None, Some("storage daemon missing".into())),
        }
    }
}

/// Stops the daemon; a failure as the report words it.
fn stop(daemon: StorageDaemon) -> Option<String> {
    daemon
        .stop()
        .err()
        .map(|e| format!("storage daemon did not stop cleanly: {e}"))
}
