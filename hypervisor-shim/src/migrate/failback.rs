//! The failback: the handoff in reverse once the owner runs at its destination (docs/design.md,
//! "Failback"; US 20070204265A1, claim 1 run the other way). The owner holds new requests while
//! port 2 drains; the peer resets and ejects the disk; the shim moves the disk back into the
//! owner's current QEMU (its block node added early, the device at the peer's drive release); the
//! owner brings it up behind port 1 and sends the held requests first. Then the ring is closed:
//! ivshmem unplugged from both guests, its memory backend deleted, the /dev/shm file unlinked.
//!
//! Each step goes into the cycle's failback [`HandoffRecord`] (direction peer → owner) under the
//! same [`Step`] names as the handoff: `Directed` (`failback` sent), `Drained` (the owner's port 2
//! drained), `DriveReleased` (the peer's QEMU released the drive), `Released` (the peer's
//! `released`), `Attached` (`disk-attached` sent to the owner), `PortOpen` (the owner's `direct`:
//! port 1 open again), `FirstCompletion` (the owner's `BATON switch kind=failback` line, printed
//! at the first port-1 completion after the failback).

use super::*;

/// What one failback did, for the report.
#[derive(Debug, Clone)]
pub(super) struct FailbackFacts {
    /// The steps, peer → owner.
    pub(super) record: HandoffRecord,
    /// Requests the owner held while port 2 drained (its `drained`).
    pub(super) held: Option<u32>,
    /// Requests port 2 had forwarded in total when it drained.
    pub(super) port2_completed: Option<u64>,
    /// The ring is gone: no ivshmem device in either QEMU's `query-pci`, the shm file unlinked.
    pub(super) ring_closed: bool,
    /// Why it did not complete.
    pub(super) error: Option<String>,
    /// An emergency failback: the peer died and the owner replayed what it had forwarded.
    pub(super) emergency: bool,
}

impl FailbackFacts {
    pub(super) fn new() -> Self {
        Self {
            record: HandoffRecord::new(Direction::OWNER_TO_PEER.reversed()),
            held: None,
            port2_completed: None,
            ring_closed: false,
            error: None,
            emergency: false,
        }
    }

    /// The failback completed: the owner is direct again and the ring is closed.
    pub(super) fn ok(&self) -> bool {
        self.error.is_none() && self.record.reached(Step::PortOpen) && self.ring_closed
    }
}

impl Scenario<'_> {
    /// Waits for the failback's moment: `--failback-after-ms` after the owner runs at its
    /// destination (at once by default), or earlier when the owner asks (`failback-request`).
    pub(super) fn wait_for_failback(&mut self, p: &mut Progress) -> Result<(), Abort> {
        let after = self.cfg.failback_after_ms;
        if after > 0 {
            p.say(format!(
                "failback in {after} ms (--failback-after-ms), or when the owner asks"
            ));
        }
        let at = Instant::now() + Duration::from_millis(after);
        let asked = self.wait_until(p, "the failback point", Duration::MAX, |s| {
            if s.take_msg(Role::Owner, |m| matches!(m, Message::FailbackRequest))
                .is_some()
            {
                return Ok(Some(true));
            }
            Ok((Instant::now() >= at).then_some(false))
        })?;
        if asked {
            p.say("failback-request: the owner asked for its disk back");
        }
        Ok(())
    }

    /// The failback and the ring's closing; an error stops the scenario (its facts say why).
    /// A QMP command that fails because the owner's QEMU exited (its workload ended just as the
    /// failback began) is reported as that exit.
    pub(super) fn fail_back(&mut self, p: &mut Progress) -> Result<(), Abort> {
        self.failback = Some(FailbackFacts::new());
        let mut r = self.fail_back_steps(p);
        if let Err(Abort::Qmp { .. } | Abort::Channel { .. }) = &r
            && let Some(st) = self.owner_gone()
        {
            r = Err(Abort::OwnerExited(format!(
                "{} during the failback",
                describe_exit(st)
            )));
        }
        if let Err(e) = &r
            && let Some(f) = self.failback.as_mut()
        {
            f.error = Some(chain(e));
        }
        // A `failback-request` that arrived after the failback was directed belongs to this one.
        while self
            .take_msg(Role::Owner, |m| matches!(m, Message::FailbackRequest))
            .is_some()
        {}
        r
    }

    /// Records `step` of the running failback (its record, direction peer → owner).
    pub(super) fn fb_record(&mut self, step: Step, at: Instant) {
        if let Some(f) = self.failback.as_mut() {
            f.record.record(step, at);
        }
    }

    fn fail_back_steps(&mut self, p: &mut Progress) -> Result<(), Abort> {
        // The owner's block node first: `blockdev-add` takes no permission, so it succeeds while
        // the peer still holds the image's write lock (only `device_add` needs it).
        self.add_owner_disk_node()?;
        self.fb_direct(p)?;
        let mark = self.fb_release_disk()?;
        // The peer's `released` (device reset, slot ejected: it no longer writes) is what the
        // owner's `device_add` waits for; every virtio-blk shares the image's write permission
        // (`share-rw=on`), so QEMU's teardown of the peer's device stays off the blackout
        // (docs/design.md, "Where the blackout goes").
        self.fb_wait_peer_released(p)?;
        let attempts = self.add_disk(p, Role::Owner, qemu::BOOT_DISK_SLOT)?;
        self.fb_attach(p, attempts)?;
        self.fb_wait_direct(p)?;
        self.fb_wait_drive_released(p, mark)?;
        self.fb_del_peer_node()?;
        self.close_ring(p)
    }

    /// The peer's block node goes, once its QEMU released the drive.
    pub(super) fn fb_del_peer_node(&mut self) -> Result<(), Abort> {
        self.vms.peer.exec(&BlockdevDel {
            node_name: DISK_ID.into(),
        })?;
        Ok(())
    }

    /// The disk's block node in the owner's current QEMU, unless it is there.
    pub(super) fn add_owner_disk_node(&mut self) -> Result<(), Abort> {
        if !self.vms.owner_disk_node {
            self.vms
                .owner
                .exec(&BlockdevAdd(self.vms.backend.blockdev_options(DISK_ID)))?;
            self.vms.owner_disk_node = true;
        }
        Ok(())
    }

    /// `failback` to the owner, then its `drained`: port 2 drained, new requests held (steps
    /// `Directed`, `Drained`).
    pub(super) fn fb_direct(&mut self, p: &mut Progress) -> Result<(), Abort> {
        let state = self.ctl.handoff.state();
        if let Err(why) = self.ctl.handoff.act(ShimAction::Failback) {
            return Err(Abort::Other(format!(
                "cannot direct the failback in state {state:?}: {why}"
            )));
        }
        self.fb_record(Step::Directed, Instant::now());
        self.send(Role::Owner, Message::Failback)?;
        p.fb_step(
            Step::Directed,
            "failback sent: the owner holds new requests while port 2 drains",
        );
        self.maybe_inject(p, recovery::Inject::PeerCrashFailback);
        let (msg, at) = self.wait_msg(p, Role::Owner, "the owner's failback `drained`", |m| {
            matches!(m, Message::Drained { .. })
        })?;
        if let Message::Drained { completed, held } = msg {
            if let Some(f) = self.failback.as_mut() {
                f.held = Some(held);
                f.port2_completed = Some(completed);
            }
            self.fb_record(Step::Drained, at);
            p.fb_step(
                Step::Drained,
                format!("port 2 completed {completed} requests, {held} held for port 1"),
            );
        }
        Ok(())
    }

    /// The peer gives the disk up: `device_del` marks the slot, `release-disk` makes the peer
    /// reset the device and eject it. Returns the peer's event mark for the drive's release.
    pub(super) fn fb_release_disk(&mut self) -> Result<usize, Abort> {
        let mark = self.vms.peer.events.len();
        self.vms.peer.exec(&DeviceDel { id: DISK_ID.into() })?;
        self.send(Role::Peer, Message::ReleaseDisk)?;
        Ok(mark)
    }

    /// The peer's QEMU released the drive (its events after `mark`): step `DriveReleased`.
    pub(super) fn fb_wait_drive_released(
        &mut self,
        p: &mut Progress,
        mark: usize,
    ) -> Result<(), Abort> {
        let (at, what) = self.wait_device_deleted(p, Role::Peer, mark, DISK_ID, true)?;
        self.fb_record(Step::DriveReleased, at);
        self.fb_record(Step::DriveReleaseSeen, Instant::now());
        p.fb_step(
            Step::DriveReleased,
            format!("DEVICE_DELETED {what} from the peer's QEMU (its device gone)"),
        );
        Ok(())
    }

    /// The peer's `released` (step `Released`).
    pub(super) fn fb_wait_peer_released(&mut self, p: &mut Progress) -> Result<(), Abort> {
        let (msg, at) = self.wait_msg(p, Role::Peer, "the peer's `released`", |m| {
            matches!(m, Message::Released { .. })
        })?;
        if let Message::Released { slot } = msg {
            if slot != PEER_DISK_SLOT {
                return Err(Abort::Other(format!(
                    "the peer released slot {slot}, but the disk is in slot {PEER_DISK_SLOT}"
                )));
            }
            self.fb_record(Step::Released, at);
            p.fb_step(
                Step::Released,
                format!("the peer reset the device in slot {slot} (its eject follows)"),
            );
        }
        Ok(())
    }

    /// The disk was plugged into the owner's QEMU (`attempts` `device_add`s): `disk-attached`
    /// to the owner (step `Attached`). The peer's block node goes later
    /// ([`Scenario::fb_del_peer_node`]), once its QEMU released the drive.
    pub(super) fn fb_attach(&mut self, p: &mut Progress, attempts: u32) -> Result<(), Abort> {
        self.send(
            Role::Owner,
            Message::DiskAttached {
                slot: qemu::BOOT_DISK_SLOT,
            },
        )?;
        self.fb_record(Step::Attached, Instant::now());
        self.vms.owner_spec.boot_disk = Some(self.vms.backend.clone());
        let retried = if attempts > 1 {
            format!(" after {attempts} attempts (image still locked)")
        } else {
            String::new()
        };
        p.fb_step(
            Step::Attached,
            format!(
                "device_add virtio-blk-pci (slot {}) in the owner{retried}, disk-attached sent",
                qemu::BOOT_DISK_SLOT
            ),
        );
        Ok(())
    }

    /// The owner's `direct`: port 1 open again, the held requests went first (steps `Ready`,
    /// `PortOpen`).
    pub(super) fn fb_wait_direct(&mut self, p: &mut Progress) -> Result<(), Abort> {
        let (_, at) = self.wait_msg(p, Role::Owner, "the owner's `direct`", |m| {
            matches!(m, Message::Direct)
        })?;
        self.fb_record(Step::Ready, at);
        self.fb_record(Step::PortOpen, at);
        let took = self
            .failback
            .as_ref()
            .and_then(|f| f.record.span_ms(&steps::HANDOFF))
            .unwrap_or(0.0);
        p.fb_step(
            Step::PortOpen,
            format!(
                "the owner's disk is behind port 1 again, held requests first (failback took {took:.1} ms)"
            ),
        );
        Ok(())
    }

    /// Unplugs the ring from the guests that have it — both, or only the owner once the peer was
    /// lost (each completes its eject after `close-ring`) — deletes the memory backends and
    /// unlinks the shm file; then checks that it is gone.
    pub(super) fn close_ring(&mut self, p: &mut Progress) -> Result<(), Abort> {
        let roles: &[Role] = if self.vms.peer_lost {
            &[Role::Owner]
        } else {
            &[Role::Owner, Role::Peer]
        };
        let mut marks = Vec::with_capacity(roles.len());
        for &role in roles {
            let vm = self.vms.of(role);
            marks.push(vm.events.len());
            vm.exec(&DeviceDel {
                id: RING_DEVICE_ID.into(),
            })?;
        }
        for &role in roles {
            self.send(role, Message::CloseRing { slot: RING_SLOT })?;
        }
        // The unplugs run at once: each QEMU's device-level event comes only after its RCU
        // thread finalised the device (tens of ms).
        self.wait_until(p, "DEVICE_DELETED of the ring", STEP_TIMEOUT, |s| {
            let mut gone = true;
            for (&role, &mark) in roles.iter().zip(&marks) {
                let vm = s.vms.of(role);
                vm.pump_events(QMP_POLL);
                gone &= vm.events.iter().skip(mark).any(|(_, e)| {
                    e.device_deleted()
                        .is_some_and(|d| d.device.as_deref() == Some(RING_DEVICE_ID))
                });
            }
            Ok(gone.then_some(()))
        })?;
        let mut left = Vec::new();
        for &role in roles {
            let vm = self.vms.of(role);
            vm.exec(&ObjectDel {
                id: RING_MEMDEV_ID.into(),
            })?;
            if Self::has_ring(vm)? {
                left.push(role.name());
            }
        }
        self.ring.watch = None;
        self.ring.cq_base = None;
        let path = self.ring.shm.as_ref().map(|s| s.path().to_path_buf());
        self.ring.shm = None;
        self.vms.owner_spec.ring = None;
        let file_gone = path.as_deref().is_none_or(|p| !p.exists());
        let closed = file_gone && left.is_empty();
        if let Some(f) = self.failback.as_mut() {
            f.ring_closed = closed;
        }
        if closed {
            let from = if roles.len() == 2 {
                "both guests"
            } else {
                "the owner (the peer is gone)"
            };
            p.say(format!(
                "ring closed: ivshmem unplugged from {from}, {RING_MEMDEV_ID} deleted, shm file unlinked"
            ));
            Ok(())
        } else {
            Err(Abort::Other(format!(
                "the ring is not closed (shm file gone: {file_gone}, ivshmem still in: {left:?})"
            )))
        }
    }

    /// Whether `vm`'s `query-pci` shows a device in the ring's slot.
    fn has_ring(vm: &mut Vm) -> Result<bool, Abort> {
        let buses = vm.exec(&QueryPci {})?;
        Ok(buses
            .iter()
            .filter(|b| b.bus == 0)
            .flat_map(|b| b.devices.iter())
            .any(|d| d.slot == u32::from(RING_SLOT)))
    }
}
