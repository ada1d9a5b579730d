//! The migration of the owner once the handoff is done (docs/design.md, "The handoff": the steps
//! `MigrationStarted` to `Migrated`), live (to a second QEMU) or save + restore (through a file),
//! with the QEMU 7.2 ivshmem BAR workaround (docs/design.md, "Migration (QEMU 7.2)"); a failed
//! migration resumes the source.

use super::savefile::{self, SaveFileError, StateFeeder, StateWriter};
use super::*;

/// How long the save's writer waits for QEMU to connect and, between two reads, for more data.
const SAVE_IDLE: Duration = Duration::from_secs(30);
/// How long the writer may take, after QEMU says `completed`, to see the stream's end and sync.
const SAVE_FLUSH_TIMEOUT: Duration = Duration::from_secs(10);

/// How a `migrate` of the owner's QEMU ended short of `completed`.
enum Unfinished {
    /// A QMP step failed (or the wait for the end did).
    Failed(Abort),
    /// The source ended the migration with another status; why, in words.
    NotCompleted(String),
}

/// A destination QEMU that was started but is not connected yet.
pub(super) struct PendingDest {
    pub(super) vm: Vm,
    pub(super) listener: ControlListener,
}

impl Scenario<'_> {
    /// Starts a destination (or restore) QEMU with the owner's current device set; it connects
    /// its control channel and QMP later ([`Scenario::connect_destination`]).
    pub(super) fn launch_destination(&mut self, label: &'static str) -> Result<PendingDest, Abort> {
        let listener = ControlListener::bind(&self.dir.join(format!("ctl-{label}.sock"))).map_err(
            |source| Abort::Channel {
                vm: label.into(),
                source,
            },
        )?;
        let mut spec = MachineSpec {
            qmp_socket: self.dir.join(format!("qmp-{label}.sock")),
            control_socket: Some(listener.path().to_path_buf()),
            incoming: true,
            ..self.vms.owner_spec.clone()
        };
        if self.cfg.destination_fault == DestinationFault::WithoutRing {
            spec.ring = None;
        }
        // Across hosts: the destination runs on host B, its ring in its own RAM.
        if let Some(c) = &self.cross {
            spec.netns = Some(c.there().netns.clone());
            if let Some(r) = spec.ring.as_mut() {
                r.private = true;
            }
        }
        let vm = Vm::spawn(label, &spec, &self.dir).map_err(|e| Abort::Other(chain(&e)))?;
        self.out
            .commands
            .insert(label.to_owned(), vm.command.clone());
        self.out
            .serial_logs
            .insert(label.to_owned(), vm.serial_log.display().to_string());
        Ok(PendingDest { vm, listener })
    }

    /// Accepts a started destination's control connection and connects its QMP.
    pub(super) fn connect_destination(
        pending: PendingDest,
    ) -> Result<(Vm, ControlListener, UnixStream), Box<(Abort, Vm)>> {
        let PendingDest { mut vm, listener } = pending;
        let label = vm.label;
        let stream = match listener.accept(CONNECT_TIMEOUT, || vm.alive()) {
            Ok(s) => s,
            Err(source) => {
                return Err(Box::new((
                    Abort::Channel {
                        vm: label.into(),
                        source,
                    },
                    vm,
                )));
            }
        };
        if let Err(e) = vm.connect_qmp() {
            return Err(Box::new((e, vm)));
        }
        Ok((vm, listener, stream))
    }

    /// The source's ivshmem BAR0 and BAR2 addresses.
    pub(super) fn ring_bars(&mut self) -> Result<(u64, u64), Abort> {
        let buses = self.vms.owner.exec(&QueryPci {})?;
        let dev = buses
            .iter()
            .filter(|b| b.bus == 0)
            .flat_map(|b| b.devices.iter())
            .find(|d| d.slot == u32::from(RING_SLOT) && d.function == 0)
            .ok_or_else(|| Abort::Other("query-pci: no ivshmem device in the source".into()))?;
        let bar = |n: u32| {
            dev.regions
                .iter()
                .find(|r| r.bar == n)
                .and_then(qmp::PciRegion::mapped_address)
        };
        match (bar(0), bar(2)) {
            (Some(b0), Some(b2)) => Ok((b0, b2)),
            _ => Err(Abort::Other(
                "query-pci: the owner has not programmed the ivshmem BARs".into(),
            )),
        }
    }

    /// `x-ignore-shared` on a QEMU.
    pub(super) fn ignore_shared(vm: &mut Vm) -> Result<(), Abort> {
        vm.exec(&MigrateSetCapabilities {
            capabilities: vec![MigrationCapability {
                capability: "x-ignore-shared".into(),
                state: true,
            }],
        })
        .map(drop)
    }

    /// The QEMU 7.2 workaround: the destination's ivshmem BARs and COMMAND, as the source has
    /// them, written into its config space over HMP before `migrate-incoming`.
    pub(super) fn program_destination_bars(
        dest: &mut Vm,
        bar0: u64,
        bar2: u64,
    ) -> Result<(), Abort> {
        let cfg = 0x8000_0000u32 | (u32::from(RING_SLOT) << 11);
        let writes = [
            (0x10u32, (bar0 & 0xffff_ffff) as u32),
            (0x18, (bar2 & 0xffff_ffff) as u32),
            (0x1c, (bar2 >> 32) as u32),
            (0x04, 0x7),
        ];
        for (off, val) in writes {
            dest.hmp(format!("o /w 0xcf8 {:#x}", cfg | off))?;
            dest.hmp(format!("o /w 0xcfc {val:#x}"))?;
        }
        Ok(())
    }

    /// Polls `query-migrate` on `vm` until the migration finishes, serving the guests meanwhile.
    pub(super) fn poll_migration(&mut self, p: &mut Progress) -> Result<MigrationInfo, Abort> {
        let start = Instant::now();
        loop {
            self.step(p)?;
            let info = self.vms.owner.exec(&QueryMigrate {})?;
            if info.finished() {
                return Ok(info);
            }
            if setup::interrupted() {
                return Err(Abort::Interrupted);
            }
            if start.elapsed() >= MIGRATION_TIMEOUT || Instant::now() >= self.deadline {
                return Err(Abort::Timeout {
                    what: "the migration".into(),
                    waited: start.elapsed(),
                });
            }
            std::thread::sleep(MIGRATE_POLL);
        }
    }

    /// Waits until `dest` runs the guest; `Err` says why not.
    pub(super) fn wait_running(
        &mut self,
        p: &mut Progress,
        dest: &mut Vm,
    ) -> Result<String, String> {
        let start = Instant::now();
        loop {
            if self.step(p).is_err() {
                // Control channel trouble is reported by the next waits; keep checking QEMU.
            }
            if let Some(st) = dest.poll_exit() {
                return Err(exited(dest, st));
            }
            match dest.exec(&QueryStatus {}) {
                Ok(s) if s.running => return Ok(s.status),
                Ok(s)
                    if matches!(
                        s.status.as_str(),
                        "inmigrate" | "paused" | "prelaunch" | "restore-vm"
                    ) && start.elapsed() < DEST_RUN_TIMEOUT => {}
                Ok(s) => {
                    return Err(format!(
                        "the {} QEMU is `{}`, not running",
                        dest.label, s.status
                    ));
                }
                Err(e) => {
                    if let Some(st) = dest.poll_exit() {
                        return Err(exited(dest, st));
                    }
                    if start.elapsed() >= DEST_RUN_TIMEOUT {
                        return Err(chain(&e));
                    }
                }
            }
            if setup::interrupted() {
                return Err("interrupted by a signal".into());
            }
            std::thread::sleep(MIGRATE_POLL);
        }
    }

    /// The destination takes over: the owner's channel moves to its connection, the source quits.
    pub(super) fn take_over(&mut self, p: &mut Progress, dest: Vm, stream: UnixStream) {
        // Whatever the source sent last is still in its socket: read it before moving on.
        let _ = self.step(p);
        self.ctl.owner.attach(stream);
        let mut source = std::mem::replace(&mut self.vms.owner, dest);
        self.vms.owner_is_destination = true;
        match source.quit() {
            Ok(st) => p.say(format!("the source QEMU quit ({})", describe_exit(st))),
            Err(e) => self.note(e),
        }
        source.take_events();
        self.vms.retired.push(source);
    }

    /// Whether the owner's QEMU exited (waits briefly: its sockets close just before it is
    /// reaped). Used when a QMP command to it failed.
    pub(super) fn owner_gone(&mut self) -> Option<ExitStatus> {
        let until = Instant::now() + Duration::from_millis(500);
        loop {
            if let Some(st) = self.vms.owner.poll_exit() {
                return Some(st);
            }
            if Instant::now() >= until {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// A failed migration step: the owner exited (its workload ended, or it failed), or the
    /// migration failed and is rolled back.
    pub(super) fn migration_failed(
        &mut self,
        p: &mut Progress,
        e: Abort,
        dest: Option<Vm>,
    ) -> Result<(), Abort> {
        if let Abort::Interrupted = e {
            return Err(e);
        }
        if let Some(st) = self.owner_gone() {
            if let Some(mut d) = dest {
                d.kill();
                self.vms.retired.push(d);
            }
            return Err(Abort::OwnerExited(format!(
                "{} while it was being migrated",
                describe_exit(st)
            )));
        }
        self.roll_back(p, chain(&e), dest);
        Ok(())
    }

    /// `migrate` of the owner's QEMU to `uri`, polled to its end; the figures go into the
    /// report's facts. `Ok`: the source says `completed`. `what` prefixes the reason of a
    /// migration that ended otherwise (`"save: "` for a save).
    fn migrate_owner(
        &mut self,
        p: &mut Progress,
        uri: String,
        what: &str,
    ) -> Result<MigrationInfo, Unfinished> {
        self.vms
            .owner
            .exec(&Migrate { uri })
            .map_err(Unfinished::Failed)?;
        let info = self.poll_migration(p).map_err(Unfinished::Failed)?;
        self.facts.migration.status = info.status.clone();
        self.facts.migration.downtime_ms = info.downtime;
        self.facts.migration.total_ms = info.total_time;
        if info.status.as_deref() != Some("completed") {
            return Err(Unfinished::NotCompleted(format!(
                "{what}the source says `{}`{}",
                info.status.as_deref().unwrap_or("?"),
                info.error_desc
                    .map_or_else(String::new, |d| format!(": {d}"))
            )));
        }
        Ok(info)
    }

    /// A migration that did not complete: a failed step ([`Self::migration_failed`]) or a status
    /// other than `completed` (rolled back). `dest`: the destination QEMU, if one was started.
    fn unfinished(
        &mut self,
        p: &mut Progress,
        u: Unfinished,
        dest: Option<Vm>,
    ) -> Result<(), Abort> {
        match u {
            Unfinished::Failed(e) => self.migration_failed(p, e, dest),
            Unfinished::NotCompleted(why) => {
                self.roll_back(p, why, dest);
                Ok(())
            }
        }
    }

    /// Step 4, live: migrate the owner to a second QEMU.
    pub(super) fn live_migrate(&mut self, p: &mut Progress) -> Result<(), Abort> {
        // Not expected to be refused: the handoff waited for the owner's `forwarding`, so the
        // table is in `Forwarding`, unless a guest's `error` since then moved it to `Failed`.
        self.shim_acts(ShimAction::BeginMigration);
        // Started only now: a QEMU starting up during the handoff would compete for the CPU with
        // the guests while the owner's I/O is stalled.
        let connected = match self.launch_destination(self.cycle_label("destination")) {
            Ok(pd) => Self::connect_destination(pd),
            Err(e) => return self.migration_failed(p, e, None),
        };
        let (mut dest, listener, stream) = match connected {
            Ok(d) => d,
            Err(b) => {
                let (e, vm) = *b;
                return self.migration_failed(p, e, Some(vm));
            }
        };
        p.say(format!(
            "destination QEMU started (pid {}, -incoming defer, the owner's current device set: no disk, ivshmem in slot {RING_SLOT})",
            dest.qemu.pid()
        ));
        let mig_sock = self.dir.join("migrate.sock");
        let _mig_sock_guard = SocketPath(mig_sock.clone());
        let uri = format!("unix:{}", mig_sock.display());
        let setup = (|| -> Result<(), Abort> {
            Self::ignore_shared(&mut self.vms.owner)?;
            Self::ignore_shared(&mut dest)?;
            let (bar0, bar2) = self.ring_bars()?;
            Self::program_destination_bars(&mut dest, bar0, bar2)?;
            dest.exec(&MigrateIncoming { uri: uri.clone() })?;
            Ok(())
        })();
        if let Err(e) = setup {
            return self.migration_failed(p, e, Some(dest));
        }
        self.record.record(Step::MigrationStarted, Instant::now());
        p.say("x-ignore-shared on both sides, BAR2 workaround applied; migrate");
        let info = match self.migrate_owner(p, uri, "") {
            Ok(i) => i,
            Err(u) => return self.unfinished(p, u, Some(dest)),
        };
        // The source's word is not enough: the destination must run the guest.
        match self.wait_running(p, &mut dest) {
            Ok(status) => {
                self.record.record(Step::Migrated, Instant::now());
                self.facts.migration.destination_status = Some(status);
                p.step(
                    Step::Migrated,
                    format!(
                        "completed, downtime {} ms, total {} ms; the destination runs the owner",
                        info.downtime.map_or_else(|| "?".into(), |d| d.to_string()),
                        info.total_time
                            .map_or_else(|| "?".into(), |d| d.to_string()),
                    ),
                );
                self.take_over(p, dest, stream);
                drop(listener);
                // Refused only if the migration never began in the table or a guest's `error`
                // came during it; either is in the notes.
                self.shim_acts(ShimAction::EndMigration);
                Ok(())
            }
            Err(why) => {
                self.facts.migration.destination_status = Some("dead".into());
                self.roll_back(
                    p,
                    format!("the source reported `completed` but {why}"),
                    Some(dest),
                );
                Ok(())
            }
        }
    }

    /// Step 4, save: save the owner to a file the shim writes and checks, restore it in a new
    /// QEMU, and only once that runs quit the source (paused in `postmigrate` meanwhile). A save
    /// that does not reach the disk whole, or a restore that does not run, resumes the source
    /// (docs/design.md, "Save and restore").
    pub(super) fn save_restore(&mut self, p: &mut Progress) -> Result<(), Abort> {
        // As for a live migration: not expected to be refused after the owner's `forwarding`,
        // unless a guest's `error` since then moved the table to `Failed`.
        self.shim_acts(ShimAction::BeginMigration);
        let state = self.dir.join(format!("{}.state", self.cycle_label("vm1")));
        // A file left by an earlier run in a kept workdir is truncated when the writer creates it.
        // The saved state goes when the scenario ends, however it ends (unless --keep).
        let _state_guard = (!self.cfg.keep).then(|| SocketPath(state.clone()));
        let setup = (|| -> Result<(u64, u64), Abort> {
            Self::ignore_shared(&mut self.vms.owner)?;
            self.ring_bars()
        })();
        let (bar0, bar2) = match setup {
            Ok(b) => b,
            Err(e) => return self.migration_failed(p, e, None),
        };
        let hold = self.save_writer_hold(p);
        let writer = match StateWriter::start(&self.dir.join("save.sock"), &state, SAVE_IDLE, hold)
        {
            Ok(w) => w,
            // Nothing was sent to QEMU: the source runs on; no need to ask whether it exited.
            Err(e) => {
                return self.unfinished(p, Unfinished::NotCompleted(format!("save: {e}")), None);
            }
        };
        self.record.record(Step::MigrationStarted, Instant::now());
        p.say(format!(
            "saving the owner: migrate to the shim's socket, written to {}",
            state.display()
        ));
        let info = match self.migrate_owner(p, writer.uri(), "save: ") {
            Ok(i) => i,
            Err(u) => {
                // The writer's own failure (a full disk, say) is the cause of QEMU's; it has
                // already ended then.
                return match writer.finish(Duration::from_secs(1)) {
                    Err(e @ SaveFileError::Write { .. })
                        if !matches!(u, Unfinished::Failed(Abort::Interrupted)) =>
                    {
                        // QEMU's migration failed cleanly on the closed socket: roll back at once
                        // (not after waiting to see whether the owner's QEMU exited).
                        self.unfinished(p, Unfinished::NotCompleted(format!("save: {e}")), None)
                    }
                    _ => self.unfinished(p, u, None),
                };
            }
        };
        let checked = writer
            .finish(SAVE_FLUSH_TIMEOUT)
            .and_then(|w| savefile::check_saved(&state, w).map(|()| w));
        let written = match checked {
            Ok(w) => w,
            Err(e) => {
                self.roll_back(
                    p,
                    format!("save: the source reported `completed` but {e}"),
                    None,
                );
                return Ok(());
            }
        };
        self.record.record(Step::Saved, Instant::now());
        p.step(
            Step::Saved,
            format!(
                "{} KiB written, synced and checked, downtime {} ms; the source stays paused until the restore runs",
                written.bytes >> 10,
                info.downtime.map_or_else(|| "?".into(), |d| d.to_string())
            ),
        );
        self.record.record(Step::RestoreStarted, Instant::now());
        let restored = match self.launch_destination(self.cycle_label("restored")) {
            Ok(pd) => match Self::connect_destination(pd) {
                Ok((vm, listener, stream)) => {
                    self.restore(p, vm, listener, stream, &state, (bar0, bar2))
                }
                Err(b) => {
                    let (e, vm) = *b;
                    Err(Box::new((chain(&e), Some(vm))))
                }
            },
            Err(e) => Err(Box::new((chain(&e), None))),
        };
        match restored {
            Ok(vm) => {
                // Only now, with the restored QEMU running the owner, does the source go.
                let mut source = std::mem::replace(&mut self.vms.owner, vm);
                self.vms.owner_is_destination = true;
                match source.quit() {
                    Ok(st) => p.say(format!("the source QEMU quit ({})", describe_exit(st))),
                    Err(e) => self.note(e),
                }
                source.take_events();
                self.vms.retired.push(source);
                // As after a live migration: refused only if the save never began in the table
                // or a guest's `error` came during it.
                self.shim_acts(ShimAction::EndMigration);
                Ok(())
            }
            Err(b) => {
                let (why, vm) = *b;
                self.roll_back(p, format!("restore: {why}"), vm);
                Ok(())
            }
        }
    }

    /// Restores the saved owner (`state`, the checked file of the save) into `vm`, whose BAR0 and
    /// BAR2 are placed at the source's (`bars`, [`Self::ring_bars`]): `migrate-incoming` on a
    /// Unix socket the shim sends the file to. On success the owner's channel moves to `vm`; the
    /// source is untouched either way.
    pub(super) fn restore(
        &mut self,
        p: &mut Progress,
        mut vm: Vm,
        listener: ControlListener,
        stream: UnixStream,
        state: &Path,
        (bar0, bar2): (u64, u64),
    ) -> Result<Vm, Box<(String, Option<Vm>)>> {
        let sock = self.dir.join(format!("{}-incoming.sock", vm.label));
        let _sock_guard = SocketPath::fresh(sock.clone());
        let r = (|| -> Result<(), Abort> {
            Self::ignore_shared(&mut vm)?;
            Self::program_destination_bars(&mut vm, bar0, bar2)?;
            vm.exec(&MigrateIncoming {
                uri: format!("unix:{}", sock.display()),
            })?;
            Ok(())
        })();
        if let Err(e) = r {
            return Err(Box::new((chain(&e), Some(vm))));
        }
        let feeder = StateFeeder::start(&sock, state, CONNECT_TIMEOUT);
        match self.wait_running(p, &mut vm) {
            Ok(status) => {
                let now = Instant::now();
                self.record.record(Step::Restored, now);
                self.record.record(Step::Migrated, now);
                self.facts.migration.destination_status = Some(status);
                p.step(
                    Step::Restored,
                    format!("a new QEMU (pid {}) runs the owner", vm.qemu.pid()),
                );
                if let Some(Err(e)) = feeder.result(Duration::ZERO) {
                    self.note(format!("restore: the state feeder: {e}"));
                }
                let _ = self.step(p);
                self.ctl.owner.attach(stream);
                drop(listener);
                Ok(vm)
            }
            Err(why) => {
                self.facts.migration.destination_status = Some("dead".into());
                let why = match feeder.result(Duration::from_millis(200)) {
                    Some(Err(e)) => format!("{why} (sending the state: {e})"),
                    _ => why,
                };
                Err(Box::new((why, Some(vm))))
            }
        }
    }
}

/// Why a destination (or restored) QEMU that exited cannot run the guest: its exit and the tail of
/// its stderr.
fn exited(dest: &Vm, st: std::process::ExitStatus) -> String {
    format!(
        "the {} QEMU exited ({}): {}",
        dest.label,
        describe_exit(st),
        dest.stderr_tail()
    )
}
