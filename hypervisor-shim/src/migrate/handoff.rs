//! The handoff's steps, in the order of the sequence diagram in docs/design.md ("The handoff";
//! US 20070204265A1, claim 1): wait for the switch point, direct the handoff (`device_del`,
//! `redirect`, the ring opened in both guests while port 1 drains), move the device to the peer
//! when QEMU released the drive, open port 2. Each step is recorded in the scenario's
//! [`HandoffRecord`] where it happens, and shown under its [`Step`] name.

use super::*;

impl Scenario<'_> {
    /// Steps 1-3 (claim 1): direct the handoff, let port 1 drain, move the device to the peer,
    /// open port 2. Each step is recorded in [`Scenario::record`] where it happens.
    pub(super) fn hand_over(&mut self, p: &mut Progress) -> Result<(), Abort> {
        let mark = self.vms.owner.events.len();
        self.handoff_mark = mark;
        self.direct(p)?;
        self.maybe_inject(p, recovery::Inject::PeerCrashHandoff);
        let (msg, at) = self.wait_msg(p, Role::Owner, "the owner's `drained`", |m| {
            matches!(m, Message::Drained { .. })
        })?;
        if let Message::Drained { completed, held } = msg {
            if self.facts.drained.is_none() {
                self.facts.drained = Some((completed, held));
            }
            self.handoff_drained = Some((completed, held));
            self.record.record(Step::Drained, at);
            p.step(
                Step::Drained,
                format!("port 1 completed {completed} requests, {held} held at port 2"),
            );
        }
        // The owner's `released` (device reset, slot ejected: it no longer writes) is what the
        // peer's `device_add` waits for; every virtio-blk shares the image's write permission
        // (`share-rw=on`), so QEMU's teardown of the owner's device (`DEVICE_DELETED`, which
        // came 1-10 ms after the eject) stays off the blackout (docs/design.md, "Where the
        // blackout goes").
        let (msg, at) = self.wait_msg(p, Role::Owner, "the owner's `released`", |m| {
            matches!(m, Message::Released { .. })
        })?;
        if let Message::Released { slot } = msg {
            if slot != qemu::BOOT_DISK_SLOT {
                return Err(Abort::Other(format!(
                    "the owner released slot {slot}, but the disk is in slot {}",
                    qemu::BOOT_DISK_SLOT
                )));
            }
            self.record.record(Step::Released, at);
            p.step(
                Step::Released,
                format!("the owner reset the device in slot {slot} (its eject follows)"),
            );
        }
        let attempts = self.add_disk(p, Role::Peer, PEER_DISK_SLOT)?;
        self.move_disk(p, attempts)?;
        let (msg, at) = self.wait_msg(p, Role::Peer, "the peer's `peer-ready`", |m| {
            matches!(m, Message::PeerReady { .. })
        })?;
        self.record.record(Step::Ready, at);
        if let Message::PeerReady { capacity_sectors } = msg {
            p.step(
                Step::Ready,
                format!(
                    "the peer initialised its disk ({capacity_sectors} sectors), ring attached"
                ),
            );
        }
        self.send(Role::Owner, Message::OpenPort2)?;
        p.say("open-port2 sent to the owner");
        let (_, at) = self.wait_msg(p, Role::Owner, "the owner's `forwarding`", |m| {
            matches!(m, Message::Forwarding)
        })?;
        self.record.record(Step::PortOpen, at);
        p.step(
            Step::PortOpen,
            format!(
                "the owner forwards over the ring at port 2 (handoff took {:.1} ms)",
                self.record.span_ms(&steps::HANDOFF).unwrap_or(0.0)
            ),
        );
        // Off the blackout: the owner's QEMU finishes tearing the device down; its block node
        // goes after that.
        self.wait_drive_released(p, mark)?;
        self.vms.owner.exec(&BlockdevDel {
            node_name: DISK_ID.into(),
        })?;
        self.vms.owner_disk_node = false;
        Ok(())
    }

    /// Waits (bounded) for the first completion over the ring; a note if none comes.
    pub(super) fn await_first_completion(&mut self, p: &mut Progress) -> Result<(), Abort> {
        if self.ring.watch.is_some() {
            let seen = self.wait_until(p, "the first forwarded completion", STEP_TIMEOUT, |s| {
                Ok(s.record.reached(Step::FirstCompletion).then_some(()))
            });
            match seen {
                Ok(()) => {}
                Err(Abort::Timeout { .. }) => {
                    self.note("no forwarded completion seen on the ring".into());
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Waits until the switch point, or for the owner's `migrate-request`.
    pub(super) fn wait_for_switch(&mut self, p: &mut Progress) -> Result<(), Abort> {
        let after_ms = match self.cfg.switch {
            Switch::OwnerRequest(n) => {
                // However long the owner takes to submit n writes: the scenario deadline bounds it.
                self.wait_until(p, "the owner's `migrate-request`", Duration::MAX, |s| {
                    Ok(s.take_msg(Role::Owner, |m| matches!(m, Message::MigrateRequest)))
                })?;
                p.say(format!(
                    "migrate-request: the owner asked to be migrated after {n} writes"
                ));
                return Ok(());
            }
            Switch::AfterMs(ms) => ms,
            Switch::Seeded => {
                let total = u64::from(self.cfg.passes).saturating_mul(self.cfg.blocks);
                seeded_switch_ms(self.cfg.seed, total)
            }
        };
        self.facts.switch_ms = Some(after_ms);
        let first_io = self.wait_until(p, "the owner's first I/O", HELLO_TIMEOUT, |s| {
            Ok(s.facts.owner_lines.first_io)
        })?;
        p.say(format!(
            "the owner's workload started; switch in {after_ms} ms"
        ));
        let at = first_io + Duration::from_millis(after_ms);
        self.wait_until(p, "the switch point", Duration::MAX, |_| {
            Ok((Instant::now() >= at).then_some(()))
        })
    }

    /// Step 1: the ring's memory reserved, then `device_del` + `redirect`; the ring opened in
    /// both guests while port 1 drains. Nothing irreversible happens before the ring's file holds
    /// all its memory (issue 9, item 5): without room for it, nothing is sent to the owner, which
    /// keeps port 1 ([`Scenario::handoff_not_directed`]).
    pub(super) fn direct(&mut self, p: &mut Progress) -> Result<(), Abort> {
        // The ring's file first, every page allocated: a sparse one in a full /dev/shm maps fine
        // and kills the QEMU that first touches a missing page (SIGBUS), after the redirect.
        let shm = match SharedFile::create(Path::new(shm::SHM_DIR), RING_BYTES) {
            Ok(shm) => shm,
            Err(e) => return self.handoff_not_directed(p, &e),
        };
        // Both guests said hello, so the table is in `Direct`; anything else (a guest's `error`
        // moved it to `Failed`) leaves nothing to direct: the run ends here, as before (the file
        // goes with `shm`).
        let state = self.ctl.handoff.state();
        if let Err(why) = self.ctl.handoff.act(ShimAction::Redirect) {
            return Err(Abort::Other(format!(
                "cannot direct the switch in state {state:?}: {why}"
            )));
        }
        // `device_del` first: it only marks the slot for removal, and nothing is removed before
        // the owner ejects it. Sent after `redirect`, it raced the owner: with little in flight the
        // owner drains and ejects at once, QEMU removes the device on the eject alone, and the
        // late `device_del` fails with DeviceNotFound (seen at QD 1).
        self.record.record(Step::Directed, Instant::now());
        self.vms.owner.exec(&DeviceDel { id: DISK_ID.into() })?;
        self.send(Role::Owner, Message::Redirect)?;
        p.step(
            Step::Directed,
            format!("{DISK_ID} device_del, redirect sent"),
        );
        let ring = RingSpec {
            mem_path: shm.path().to_path_buf(),
            size: RING_BYTES,
            master: true,
            slot: RING_SLOT,
            private: false,
        };
        self.ring.shm = Some(shm);
        // Port 1 drains meanwhile, and its `drained` may come while these commands run: a round
        // after each one acknowledges it at once, so that the owner's `released` is not held
        // back behind the ring's set-up.
        for role in [Role::Owner, Role::Peer] {
            let r = RingSpec {
                master: role == Role::Owner,
                ..ring.clone()
            };
            self.vms.of(role).exec(&ObjectAdd {
                qom_type: "memory-backend-file".into(),
                id: RING_MEMDEV_ID.into(),
                props: r.backend_props(),
            })?;
            self.step(p)?;
            self.vms.of(role).exec(&DeviceAdd {
                driver: "ivshmem-plain".into(),
                id: RING_DEVICE_ID.into(),
                props: r.device_props(),
            })?;
            self.step(p)?;
        }
        let slot = RING_SLOT;
        self.send(Role::Owner, Message::RingOpened { slot })?;
        self.send(Role::Peer, Message::RingOpened { slot })?;
        self.record.record(Step::RingOpened, Instant::now());
        p.step(
            Step::RingOpened,
            format!(
                "{} ({} MiB), ivshmem-plain in slot {slot} of both (owner master=on), while port 1 drains",
                ring.mem_path.display(),
                RING_BYTES >> 20
            ),
        );
        self.vms.owner_spec.boot_disk = None;
        self.vms.owner_spec.ring = Some(ring);
        // The peer's block node now, while port 1 drains: `blockdev-add` takes no permission on
        // the image, so it succeeds while the owner still holds the write lock (only the peer's
        // `device_add` needs it).
        let node = self.vms.peer_block_node();
        self.vms.peer.exec(&BlockdevAdd(node))?;
        Ok(())
    }

    /// The ring could not be created (`e`) before anything was sent: the handoff is not directed,
    /// the owner keeps port 1 and finishes its workload where it is, so that its report and the
    /// disk are still verified. The run fails with `e` as its cause; returns
    /// [`Abort::OwnerExited`] once the owner's QEMU exited (the scenario stops there).
    pub(super) fn handoff_not_directed(
        &mut self,
        p: &mut Progress,
        e: &shm::ShmError,
    ) -> Result<(), Abort> {
        let why = format!("the handoff was not directed: {}", chain(e));
        p.say(format!(
            "{why}; nothing was sent to the owner, which keeps port 1"
        ));
        self.out.failures.push(why);
        self.owner_finishes_on_port1(p)
    }

    /// A cycle that ended with the owner on port 1 (the handoff not directed, or taken back):
    /// the owner finishes its workload there, and the scenario stops with its exit
    /// ([`Abort::OwnerExited`]); the failure was recorded by the caller.
    pub(super) fn owner_finishes_on_port1(&mut self, p: &mut Progress) -> Result<(), Abort> {
        self.wait_owner_exit(p)?;
        let status = self
            .vms
            .owner
            .poll_exit()
            .map_or_else(|| "exited".to_owned(), describe_exit);
        Err(Abort::OwnerExited(status))
    }

    /// Waits until the owner's QEMU released the disk's drive (events after `mark`; see
    /// [`Scenario::wait_device_deleted`]) and records it.
    pub(super) fn wait_drive_released(
        &mut self,
        p: &mut Progress,
        mark: usize,
    ) -> Result<(), Abort> {
        let (at, what) = self.wait_device_deleted(p, Role::Owner, mark, DISK_ID, true)?;
        self.record.record(Step::DriveReleased, at);
        self.record.record(Step::DriveReleaseSeen, Instant::now());
        p.step(
            Step::DriveReleased,
            format!("DEVICE_DELETED {what} from the owner's QEMU (its device gone)"),
        );
        Ok(())
    }

    /// Waits for the `DEVICE_DELETED` of device `id` from `role`'s QEMU among its events after
    /// the first `mark`; with `backend`, the event of its virtio backend
    /// (`.../<id>/virtio-backend`, the first of the two; docs/design.md, "QEMU 7.2 facts the
    /// design rests on") counts too. That one marks the drive released: QOM's `object_finalize`
    /// releases the backend's `drive` property (the BlockBackend and with it the image's write
    /// lock) just before `device_finalize` sends its event; the proxy's own event follows ~60 ms
    /// later only because its memory regions are freed by QEMU's RCU thread, which waits up to 5 ×
    /// 10 ms for callbacks to pile up (util/rcu.c, `call_rcu_thread`). A `device_add` elsewhere
    /// is retried if the lock is still held ([`Scenario::add_disk`]). Returns the event's time and
    /// what it named.
    pub(super) fn wait_device_deleted(
        &mut self,
        p: &mut Progress,
        role: Role,
        mark: usize,
        id: &str,
        backend: bool,
    ) -> Result<(Instant, String), Abort> {
        let backend_path = format!("/machine/peripheral/{id}/virtio-backend");
        let what = format!("DEVICE_DELETED of {id} in the {}'s QEMU", role.name());
        self.wait_until(p, &what, STEP_TIMEOUT, |s| {
            let vm = s.vms.of(role);
            vm.pump_events(QMP_POLL);
            Ok(vm.events.iter().skip(mark).find_map(|(at, e)| {
                let deleted = e.device_deleted()?;
                if deleted.device.as_deref() == Some(id) {
                    Some((*at, id.to_owned()))
                } else if backend && deleted.path == backend_path {
                    Some((*at, format!("{id}/virtio-backend")))
                } else {
                    None
                }
            }))
        })
    }

    /// `device_add` of the disk into `role`'s QEMU in `slot`, retried for a while if QEMU says
    /// the image is still locked (the other QEMU not yet through releasing it). Returns the
    /// attempts made.
    pub(super) fn add_disk(
        &mut self,
        p: &mut Progress,
        role: Role,
        slot: u8,
    ) -> Result<u32, Abort> {
        let start = Instant::now();
        let mut attempts = 0;
        loop {
            attempts += 1;
            let vm = self.vms.of(role);
            let r = vm.exec(&DeviceAdd {
                driver: "virtio-blk-pci".into(),
                id: DISK_ID.into(),
                props: qemu::virtio_blk_device_props(DISK_ID, slot),
            });
            match r {
                Ok(_) => return Ok(attempts),
                Err(Abort::Qmp {
                    source: qmp::QmpError::Rejected { ref desc, .. },
                    ..
                }) if desc.contains("lock") && start.elapsed() < LOCK_RETRY_FOR => {
                    self.step(p)?;
                    std::thread::sleep(LOCK_RETRY_EVERY);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Step 2: the disk has moved from the owner's QEMU to the peer's (block node added when the
    /// handoff was directed, device after `attempts` `device_add`s): `disk-attached` to the peer.
    /// The owner's node goes once port 2 is open and its QEMU released the drive.
    pub(super) fn move_disk(&mut self, p: &mut Progress, attempts: u32) -> Result<(), Abort> {
        // Before the peer has its disk, so before anything can complete: the owner opens port 2
        // as soon as the peer's side of the ring turns ready, which may be before the shim has
        // the peer's `peer-ready`.
        self.arm_ring_watch();
        self.send(
            Role::Peer,
            Message::DiskAttached {
                slot: PEER_DISK_SLOT,
            },
        )?;
        self.record.record(Step::Attached, Instant::now());
        let retried = if attempts > 1 {
            format!(" after {attempts} attempts (image still locked)")
        } else {
            String::new()
        };
        p.step(
            Step::Attached,
            format!(
                "device_add virtio-blk-pci (slot {PEER_DISK_SLOT}) in the peer{retried}, disk-attached sent"
            ),
        );
        Ok(())
    }

    /// Maps the ring read-only and remembers the completion tail, to see the first forwarded
    /// completion (the ring's file is fresh for each handoff, so the tail read before the
    /// owner formats the ring is the same 0).
    pub(super) fn arm_ring_watch(&mut self) {
        let Some(shm) = &self.ring.shm else { return };
        match RingWatch::open(shm.path(), ring::HEADER_LEN) {
            Ok(w) => {
                self.ring.cq_base = w.read_u32(offsets::CQ_TAIL);
                self.ring.watch = Some(w);
            }
            Err(e) => self.note(format!("ring watch unavailable: {}", chain(&e))),
        }
    }
}
