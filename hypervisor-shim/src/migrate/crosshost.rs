//! The owner's migration to another host (issue 10; docs/design.md, "Across hosts"). Hosts are
//! network namespaces joined on one segment ([`crate::hosts`]); the disk is an NBD export of
//! `qemu-storage-daemon` on the storage host ([`crate::storage`]), which every QEMU opens with
//! `driver=nbd`; QEMU's own migration stream crosses over TCP. Nothing else crosses a host:
//!
//! 1. On host A the handoff moves the disk to the peer as on one host; the owner forwards.
//! 2. A destination QEMU starts on host B with the owner's device set, its ivshmem region in its
//!    own RAM (`memory-backend-ram`: the source's shared file does not exist there), and the
//!    pre-copy starts over TCP with a downtime limit of 0, so it cannot converge while the owner
//!    runs (it always dirties memory).
//! 3. Meanwhile the failback's first half runs on A: `failback` (the owner holds new requests,
//!    port 2 drains), then the peer resets and ejects the disk (`release-disk`, `released`).
//! 4. The downtime limit goes back up: the migration converges; the ring's pages travel with the
//!    owner's RAM (the owner reads nothing from it any more: port 2 drained before the
//!    switchover), and the destination runs the owner.
//! 5. On B the disk is plugged into the owner (a failback at the destination): `blockdev-add` of
//!    the NBD export, `device_add`, `disk-attached`; port 1 opens and the held requests go first,
//!    in order (`direct`). The ring is then unplugged from both guests.
//!
//! A migration that fails (B's QEMU dies, the stream breaks) is rolled back at A: the source runs
//! on, and the disk comes back to the owner there instead (the same step 5 on A). One writer at
//! a time is the sequence's doing, not a lock's: an NBD client holds no lock on the image, and the
//! disk is plugged into a QEMU only after the previous holder reset and ejected it.

use super::failback::FailbackFacts;
use super::*;
use crate::hosts::{Host, Hosts};
use crate::storage::StorageDaemon;

/// The TCP port the destination listens on for the migration stream (on host B's address; each
/// run has its own namespaces, so runs never share it).
const MIGRATION_PORT: u16 = 4444;
/// The NBD export's port on the storage host.
pub(super) const NBD_PORT: u16 = 10809;

/// The hosts and the storage of a cross-host run; dropping it removes them.
pub(super) struct CrossHost {
    pub(super) hosts: Hosts,
    /// Stopped (flushed) before the host verifies the image.
    pub(super) storage: Option<StorageDaemon>,
    /// The owner runs on host B now (it starts on A; each completed cycle moves it).
    pub(super) owner_on_b: bool,
    /// The hosts the owner ran on, in order (the report's `hosts_visited`).
    pub(super) visited: Vec<&'static str>,
}

impl CrossHost {
    /// The host the owner runs on now.
    pub(super) fn here(&self) -> &Host {
        if self.owner_on_b {
            self.hosts.destination()
        } else {
            self.hosts.source()
        }
    }

    /// The host the owner's next migration goes to.
    pub(super) fn there(&self) -> &Host {
        if self.owner_on_b {
            self.hosts.source()
        } else {
            self.hosts.destination()
        }
    }
}

/// When the cross-host switchover's steps happened (for the report).
#[derive(Debug, Clone, Default)]
pub(super) struct CrossHostFacts {
    /// `migrate` issued, once port 2 drained.
    pub(super) migrate_at: Option<Instant>,
    /// The owner's QEMU on the other host runs.
    pub(super) running_at: Option<Instant>,
    /// The migration was rolled back: the disk went back to the owner on the source host.
    pub(super) rolled_back: bool,
}

/// Sets up the hosts and the NBD export for `--cross-host` (none otherwise): the image in `image`
/// served from the storage host; returns them with the backend every QEMU opens.
pub(super) fn prepare(
    cfg: &MigrateConfig,
    image: &Path,
    dir: &Path,
) -> Result<Option<(CrossHost, DiskBackend)>, MigrateError> {
    if !cfg.cross_host {
        return Ok(None);
    }
    let hosts = Hosts::create().map_err(|e| MigrateError::Config(chain(&e)))?;
    let storage = StorageDaemon::start(hosts.storage(), image, NBD_PORT, dir)
        .map_err(|e| MigrateError::Config(chain(&e)))?;
    let backend = storage.backend();
    let first = hosts.source().name;
    Ok(Some((
        CrossHost {
            hosts,
            storage: Some(storage),
            owner_on_b: false,
            visited: vec![first],
        },
        backend,
    )))
}

impl Scenario<'_> {
    /// Steps 2-5 (see the module docs): the owner migrates to host B while port 2 drains, and
    /// gets the disk back there — or, the migration rolled back, on host A.
    pub(super) fn cross_host_migrate(&mut self, p: &mut Progress) -> Result<(), Abort> {
        let Some((b, there)) = self
            .cross
            .as_ref()
            .map(|c| (c.there().addr, c.there().name))
        else {
            return Err(Abort::Other("--cross-host without hosts".into()));
        };
        let connected = match self.launch_destination(self.cycle_label("destination")) {
            Ok(pd) => Self::connect_destination(pd),
            Err(e) => return self.cross_host_rolled_back(p, e, None),
        };
        let (mut dest, listener, stream) = match connected {
            Ok(d) => d,
            Err(b) => {
                let (e, vm) = *b;
                return self.cross_host_rolled_back(p, e, Some(vm));
            }
        };
        let uri = format!("tcp:{b}:{MIGRATION_PORT}");
        if let Err(e) = dest.exec(&MigrateIncoming { uri: uri.clone() }) {
            return self.cross_host_rolled_back(p, e, Some(dest));
        }
        p.say(format!(
            "destination QEMU on {there} (pid {}, the ring in its own RAM) listens on {uri}",
            dest.qemu.pid()
        ));
        // Port 2 drains first: nothing may be in flight on the ring when the owner leaves it.
        self.failback = Some(FailbackFacts::new());
        if let Err(e) = self.fb_direct(p) {
            return self.cross_host_stopped(dest, e);
        }
        if let Err(e) = self.vms.owner.exec(&Migrate { uri: uri.clone() }) {
            return self.cross_host_attach_after(p, Err((chain(&e), dest)));
        }
        let now = Instant::now();
        self.record.record(Step::MigrationStarted, now);
        // The report's `cross_host` block describes the first cycle.
        self.facts.cross.migrate_at.get_or_insert(now);
        p.say(format!(
            "migrate {uri}: the owner, holding its requests, goes to {there} over TCP"
        ));
        self.maybe_kill_destination(p, &mut dest);
        // The peer lets the disk go while the migration runs.
        let released = (|| -> Result<(), Abort> {
            let mark = self.fb_release_disk()?;
            self.fb_wait_drive_released(p, mark)?;
            self.fb_wait_peer_released(p)
        })();
        if let Err(e) = released {
            return self.cross_host_stopped(dest, e);
        }
        let info = match self.poll_migration(p) {
            Ok(i) => i,
            Err(Abort::Interrupted) => return self.cross_host_stopped(dest, Abort::Interrupted),
            Err(e) => return self.cross_host_attach_after(p, Err((chain(&e), dest))),
        };
        self.facts.migration.status = info.status.clone();
        self.facts.migration.downtime_ms = info.downtime;
        self.facts.migration.total_ms = info.total_time;
        if info.status.as_deref() != Some("completed") {
            let why = format!(
                "the source says `{}`{}",
                info.status.as_deref().unwrap_or("?"),
                info.error_desc
                    .map_or_else(String::new, |d| format!(": {d}"))
            );
            return self.cross_host_attach_after(p, Err((why, dest)));
        }
        match self.wait_running(p, &mut dest) {
            Ok(status) => {
                let now = Instant::now();
                self.record.record(Step::Migrated, now);
                self.facts.cross.running_at.get_or_insert(now);
                self.facts.migration.destination_status = Some(status);
                p.step(
                    Step::Migrated,
                    format!(
                        "completed, downtime {} ms, total {} ms; {there} runs the owner",
                        info.downtime.map_or_else(|| "?".into(), |d| d.to_string()),
                        info.total_time
                            .map_or_else(|| "?".into(), |d| d.to_string()),
                    ),
                );
                self.take_over(p, dest, stream);
                drop(listener);
                if let Some(c) = self.cross.as_mut() {
                    c.owner_on_b = !c.owner_on_b;
                    let here = c.here().name;
                    c.visited.push(here);
                }
                self.cross_host_attach_after(p, Ok(()))
            }
            Err(why) => {
                self.facts.migration.destination_status = Some("dead".into());
                self.cross_host_attach_after(
                    p,
                    Err((format!("the source reported `completed` but {why}"), dest)),
                )
            }
        }
    }

    /// Before cross-host cycle 2 and later: the peer must share the owner's host (the ring is
    /// shared memory), so the last cycle's peer (idle: it released the disk and the ring) quits
    /// and a fresh one starts on the owner's current host.
    pub(super) fn peer_to_owner_host(&mut self, p: &mut Progress) -> Result<(), Abort> {
        let Some(here) = self
            .cross
            .as_ref()
            .map(|c| (c.here().netns.clone(), c.here().name))
        else {
            return Ok(());
        };
        if self.vms.peer_spec.netns.as_deref() == Some(here.0.as_str()) && !self.vms.peer_lost {
            return Ok(());
        }
        if !self.vms.peer_lost {
            self.vms.peer_lost = true;
            match self.vms.peer.quit() {
                Ok(_) => p.say("the last cycle's peer quit: the next one runs on the owner's host"),
                Err(e) => self.note(format!("peer: {e}")),
            }
        }
        self.vms.peer_spec.netns = Some(here.0);
        self.replace_peer(p)?;
        p.say(format!("the peer for this cycle runs on {}", here.1));
        Ok(())
    }

    /// `--inject destination-crash@migration`: B's QEMU killed once the migration runs.
    fn maybe_kill_destination(&mut self, p: &mut Progress, dest: &mut Vm) {
        if self.cfg.inject == Some(recovery::Inject::DestinationCrashMigration)
            && !self.facts.injected
        {
            self.facts.injected = true;
            let pid = dest.qemu.pid();
            dest.kill();
            p.say(format!(
                "injected destination-crash@migration: SIGKILL to the destination QEMU on host B (pid {pid})"
            ));
        }
    }

    /// The failback's first half failed (`e`): the destination goes, the run stops with `e`.
    fn cross_host_stopped(&mut self, mut dest: Vm, e: Abort) -> Result<(), Abort> {
        dest.kill();
        self.vms.retired.push(dest);
        if let Some(f) = self.failback.as_mut() {
            f.error = Some(chain(&e));
        }
        Err(e)
    }

    /// Step 5 on whichever host runs the owner now: after a migration that completed (`Ok`), on
    /// B; after one that failed (`Err`: why, and the destination QEMU), rolled back, on A.
    fn cross_host_attach_after(
        &mut self,
        p: &mut Progress,
        migrated: Result<(), (String, Vm)>,
    ) -> Result<(), Abort> {
        if let Err((why, dest)) = migrated {
            self.facts.cross.rolled_back = true;
            self.roll_back(p, why, Some(dest));
            if self.vms.owner.poll_exit().is_some() {
                return Err(Abort::OwnerExited(
                    "the owner's QEMU exited during the cross-host migration".into(),
                ));
            }
            p.say("the disk goes back to the owner on host A");
        }
        self.add_owner_disk_node()?;
        let attempts = self.add_disk(p, Role::Owner, qemu::BOOT_DISK_SLOT)?;
        self.fb_attach(p, attempts)?;
        self.fb_del_peer_node()?;
        self.fb_wait_direct(p)?;
        self.close_ring(p)
    }

    /// The migration could not even start (the destination did not come up, a QMP step failed):
    /// rolled back at A, where the owner still forwards; the failback then runs there as on one
    /// host.
    fn cross_host_rolled_back(
        &mut self,
        p: &mut Progress,
        e: Abort,
        dest: Option<Vm>,
    ) -> Result<(), Abort> {
        self.facts.cross.rolled_back = true;
        self.migration_failed(p, e, dest)?;
        self.wait_for_failback(p)?;
        self.fail_back(p)
    }

    /// The report's `cross_host` block (`None` on one host), from the first cycle's failback.
    pub(super) fn cross_host_report(&self) -> Option<crate::report::CrossHostReport> {
        let hosts = &self.cross.as_ref()?.hosts;
        let namespaces = [hosts.source(), hosts.destination(), hosts.storage()]
            .iter()
            .map(|h| h.netns.clone())
            .collect();
        let c = &self.facts.cross;
        let fb = self.cycles.first().and_then(|c| c.failback.as_ref());
        let at = |step| fb.and_then(|f| f.record.at(step));
        let between = |a: Option<Instant>, b: Option<Instant>| match (a, b) {
            (Some(a), Some(b)) => Some(ms_between(a, b)),
            _ => None,
        };
        Some(crate::report::CrossHostReport {
            namespaces,
            rolled_back: c.rolled_back,
            port2_drain_ms: between(at(Step::Directed), at(Step::Drained)),
            peer_release_ms: between(at(Step::Drained), at(Step::Released)),
            migration_ms: between(c.migrate_at, c.running_at),
            downtime_ms: self.cycles.first().and_then(|c| c.migration.downtime_ms),
            disk_arrival_ms: between(c.running_at, at(Step::PortOpen)),
            blackout_ms: self.switch_gap_ms(true, 1),
        })
    }

    /// `--inject storage-restart@forwarding`: the storage daemon killed and started again.
    pub(super) fn restart_storage(&mut self, p: &mut Progress) {
        let Some(daemon) = self.cross.as_mut().and_then(|c| c.storage.as_mut()) else {
            self.note("storage-restart@forwarding needs --cross-host: nothing injected".into());
            return;
        };
        let old = daemon.pid();
        match daemon.restart() {
            Ok(()) => p.say(format!(
                "injected storage-restart@forwarding: the storage daemon (pid {old}) killed and started again (pid {})",
                daemon.pid()
            )),
            Err(e) => {
                let e = format!("storage daemon restart: {}", chain(&e));
                p.say(e.clone());
                self.out.failures.push(e);
            }
        }
    }

    /// Stops the storage daemon (it flushes the image and exits) before the host reads the image;
    /// what went wrong goes to the failures (the image may then be stale).
    pub(super) fn stop_storage(&mut self, p: &mut Progress) {
        let Some(daemon) = self.cross.as_mut().and_then(|c| c.storage.take()) else {
            return;
        };
        match daemon.stop() {
            Ok(()) => p.say("the storage daemon flushed the image and exited"),
            Err(e) => {
                let e = format!("storage daemon: {}", chain(&e));
                p.say(e.clone());
                self.out.failures.push(e);
            }
        }
    }
}
