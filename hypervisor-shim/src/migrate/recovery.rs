//! Recovery from a peer that died while the owner forwarded through it (issue 9; docs/design.md,
//! "A peer that dies"): an emergency failback. The peer's QEMU has exited and been reaped, so
//! nothing it had in flight can still reach the disk (it is fenced); the disk goes back to the
//! owner, which replays every forwarded request that got no completion on port 1, in forward
//! order, before the requests it held; the ring is closed on the owner's side.
//!
//! Fault injection (`--inject`, a test hook) kills the peer with SIGKILL at a chosen step; the
//! faults armed before the run (a full disk, /dev/shm, a slow save writer) are in `inject`.

use super::failback::FailbackFacts;
use super::*;

/// A fault the shim injects, by a real mechanism (test hook, `--inject WHAT@WHEN`; the
/// mechanisms that are armed before the run are in [`super::inject`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inject {
    /// SIGKILL the peer's QEMU right after the first handoff was directed (`redirect` sent,
    /// the ring being opened), before the disk moved: the handoff is taken back.
    PeerCrashHandoff,
    /// SIGKILL the peer's QEMU right after the first handoff's first forwarded completion.
    PeerCrashForwarding,
    /// SIGKILL the peer's QEMU right after the first failback was directed.
    PeerCrashFailback,
    /// Stop the peer's vCPU (QMP `stop`) right after the first handoff's first forwarded
    /// completion: a peer that hangs, alive but serving nothing.
    PeerHangForwarding,
    /// ENOSPC on one early write of the owner, while it still holds the disk before the handoff:
    /// a `blkdebug` filter under its boot virtio-blk with a one-shot `inject-error` rule (errno 28)
    /// on the sector of its 16th write (the first pass writes each block once; at the default
    /// queue depth the write is in the first batch, submitted as the workload starts).
    EnospcOwner,
    /// ENOSPC on the peer's first write while it serves the ring: the same rule, without a
    /// sector, in the peer's block node only (its `blockdev-add` at the first handoff).
    EnospcPeer,
    /// No room for the ring: the shim (as root) moves itself into its own mount namespace at
    /// start-up and mounts a 1 MiB tmpfs on /dev/shm there, which its QEMUs inherit; the ring's
    /// 4 MiB cannot be reserved at the first handoff.
    ShmFull,
    /// A slow state-file writer: at the first save, the shim's writer holds what QEMU sent for
    /// 2 s after QEMU closed the stream before it writes and syncs the file.
    SaveWriterLate,
    /// `--cross-host`: SIGKILL the storage daemon right after the first forwarded completion and
    /// start it again on the same address; the QEMUs' NBD clients reconnect (`reconnect-delay`)
    /// and retry what was in flight.
    StorageRestartForwarding,
    /// `--cross-host`: SIGKILL the destination QEMU on host B once the pre-copy runs: the
    /// migration fails and is rolled back at host A, where the disk goes back to the owner.
    DestinationCrashMigration,
}

impl Inject {
    /// Every fault, in `--inject`'s order.
    pub const ALL: [Inject; 10] = [
        Inject::PeerCrashHandoff,
        Inject::PeerCrashForwarding,
        Inject::PeerCrashFailback,
        Inject::PeerHangForwarding,
        Inject::EnospcOwner,
        Inject::EnospcPeer,
        Inject::ShmFull,
        Inject::SaveWriterLate,
        Inject::StorageRestartForwarding,
        Inject::DestinationCrashMigration,
    ];

    /// The `WHAT@WHEN` spelling.
    pub const fn as_str(self) -> &'static str {
        match self {
            Inject::PeerCrashHandoff => "peer-crash@handoff",
            Inject::PeerCrashForwarding => "peer-crash@forwarding",
            Inject::PeerCrashFailback => "peer-crash@failback",
            Inject::PeerHangForwarding => "peer-hang@forwarding",
            Inject::EnospcOwner => "enospc@owner",
            Inject::EnospcPeer => "enospc@peer",
            Inject::ShmFull => "shm-full",
            Inject::SaveWriterLate => "save-writer-late",
            Inject::StorageRestartForwarding => "storage-restart@forwarding",
            Inject::DestinationCrashMigration => "destination-crash@migration",
        }
    }

    /// Parses `WHAT@WHEN`.
    pub fn parse(s: &str) -> Option<Inject> {
        Inject::ALL.into_iter().find(|i| i.as_str() == s)
    }
}

/// Most peer failures one run recovers from.
const MAX_PEER_FAILURES: u32 = 3;
/// A peer whose heartbeat in the ring has not moved for this long while the owner forwards is
/// hung: it is fenced (SIGKILL) and recovered from like a peer that died. The owner watches the
/// same word with a shorter limit while its requests wait (`peer-stalled`), so it usually speaks
/// first; this watch covers an owner that cannot. A serving peer beats on
/// every round of its loop, at least once per timer tick (≤ 10 ms) when idle.
pub(super) const PEER_HANG_TIMEOUT: Duration = Duration::from_secs(5);

impl Scenario<'_> {
    /// Kills the peer now if `--inject` asks for it at `when` (once per run).
    pub(super) fn maybe_inject(&mut self, p: &mut Progress, when: Inject) {
        if self.cfg.inject != Some(when) || self.facts.injected {
            return;
        }
        self.facts.injected = true;
        if let Some(how) = when.armed_before() {
            p.say(format!("injected {}: {how}", when.as_str()));
            return;
        }
        if when == Inject::StorageRestartForwarding {
            self.restart_storage(p);
            return;
        }
        let pid = self.vms.peer.qemu.pid();
        if when == Inject::PeerHangForwarding {
            match self.vms.peer.hmp("stop".into()) {
                Ok(()) => p.say(format!(
                    "injected {}: the peer's vCPU stopped (QMP stop, pid {pid})",
                    when.as_str()
                )),
                Err(e) => self.note(format!("injecting {}: {}", when.as_str(), chain(&e))),
            }
            return;
        }
        self.vms.peer.kill();
        p.say(format!(
            "injected {}: SIGKILL to the peer's QEMU (pid {pid})",
            when.as_str()
        ));
    }

    /// Watches the peer's heartbeat in the ring while the owner forwards through it; a peer
    /// whose heartbeat froze for [`PEER_HANG_TIMEOUT`] is fenced (SIGKILL), so that the next wait
    /// sees it gone and recovers.
    pub(super) fn watch_peer_heartbeat(&mut self, p: &mut Progress) {
        use baton_core::control::HandoffState as S;
        // The owner watches the same word, and says so when requests wait for a frozen peer.
        if let Some((Message::PeerStalled { ms }, _)) =
            self.take_msg(Role::Owner, |m| matches!(m, Message::PeerStalled { .. }))
            && !self.vms.peer_lost
            && self.vms.peer.alive()
        {
            self.vms.peer.kill();
            let why = format!(
                "the owner reports its heartbeat in the ring froze for {ms} ms with requests waiting: fenced with SIGKILL"
            );
            p.say(format!("the peer stopped serving: {why}"));
            self.facts.peer_hang = Some(why);
        }
        let watching = matches!(
            self.ctl.handoff.state(),
            S::Forwarding | S::Migrating | S::FailingBack
        );
        let Some(w) = self.ring.watch.as_ref().filter(|_| watching) else {
            self.ring.peer_beat = None;
            return;
        };
        let Some(beat) = w.read_u32(ring::offsets::PEER_HEARTBEAT) else {
            return;
        };
        let now = Instant::now();
        match self.ring.peer_beat {
            Some((last, since)) if last == beat => {
                let frozen = now - since;
                if frozen >= PEER_HANG_TIMEOUT && self.vms.peer.alive() {
                    self.vms.peer.kill();
                    let why = format!(
                        "its heartbeat in the ring froze for {} ms: fenced with SIGKILL",
                        frozen.as_millis()
                    );
                    p.say(format!("the peer stopped serving: {why}"));
                    self.facts.peer_hang = Some(why);
                }
            }
            _ => self.ring.peer_beat = Some((beat, now)),
        }
    }

    /// Whether a peer that died now can be recovered from: the owner forwards (or fails back)
    /// and runs.
    pub(super) fn peer_loss_recoverable(&mut self) -> bool {
        use baton_core::control::HandoffState as S;
        matches!(
            self.ctl.handoff.state(),
            S::Forwarding | S::FailingBack | S::FailbackDrained
        ) && self.facts.peer_failures < MAX_PEER_FAILURES
            && self.vms.owner.alive()
    }

    /// The emergency failback after the peer's QEMU exited (`why`).
    pub(super) fn recover_peer_loss(&mut self, p: &mut Progress, why: String) -> Result<(), Abort> {
        self.facts.peer_failures += 1;
        self.vms.peer_lost = true;
        let why = match self.facts.peer_hang.take() {
            Some(hang) => format!("{why}; {hang}"),
            None => why,
        };
        p.say(format!(
            "the peer's QEMU exited ({why}) while the owner forwarded: emergency failback"
        ));
        // Fenced: its process is gone and reaped, so no write of it can land any more.
        self.vms.peer.kill();
        let mut facts = self.failback.take().unwrap_or_else(FailbackFacts::new);
        facts.error = None;
        facts.emergency = true;
        self.failback = Some(facts);
        let r = self.recover_steps(p);
        if let Err(e) = &r
            && let Some(f) = self.failback.as_mut()
        {
            f.error = Some(chain(e));
        }
        let how = match &r {
            Ok(()) => {
                "disk back to the owner (emergency failback), forwarded requests replayed on port 1"
                    .to_owned()
            }
            Err(e) => format!("recovery failed: {}", chain(e)),
        };
        self.facts.recoveries.push(how);
        // After its cycle was filed (a one-way run whose peer died while the owner finished its
        // workload), the emergency failback joins that cycle.
        if let Some(c) = self.cycles.last_mut()
            && c.n == self.cycle
            && c.failback.is_none()
        {
            c.failback = self.failback.take();
        }
        r
    }

    fn recover_steps(&mut self, p: &mut Progress) -> Result<(), Abort> {
        // The owner's block node (it may exist already: a failback was under way).
        self.add_owner_disk_node()?;
        let state = self.ctl.handoff.state();
        if let Err(why) = self.ctl.handoff.act(ShimAction::PeerLost) {
            return Err(Abort::Other(format!(
                "cannot recover from the peer's loss in state {state:?}: {why}"
            )));
        }
        self.fb_record(Step::Directed, Instant::now());
        self.send(Role::Owner, Message::PeerLost)?;
        p.fb_step(Step::Directed, "peer-lost sent: the owner abandons port 2");
        // The owner answers `abandoned` (or had already sent its failback `drained`).
        let (msg, at) = self.wait_msg(p, Role::Owner, "the owner's `abandoned`", |m| {
            matches!(m, Message::Abandoned { .. } | Message::Drained { .. })
        })?;
        match msg {
            Message::Abandoned { replay, held } => {
                self.facts.requests_replayed += u64::from(replay);
                if let Some(f) = self.failback.as_mut() {
                    f.held = Some(held);
                }
                self.fb_record(Step::Drained, at);
                p.fb_step(
                    Step::Drained,
                    format!(
                        "the owner abandoned port 2: {replay} forwarded requests to replay, {held} held"
                    ),
                );
            }
            Message::Drained { .. } => {
                self.note("the owner had drained port 2 before the peer died".into());
            }
            _ => {}
        }
        // The dead peer's QEMU held the image's lock; it is gone with the process.
        let what = self.plug_owner_disk(p)?;
        self.fb_record(Step::Attached, Instant::now());
        p.fb_step(Step::Attached, what);
        let (_, at) = self.wait_msg(p, Role::Owner, "the owner's `direct`", |m| {
            matches!(m, Message::Direct)
        })?;
        self.fb_record(Step::Ready, at);
        self.fb_record(Step::PortOpen, at);
        p.fb_step(
            Step::PortOpen,
            "the owner's disk is behind port 1 again: the abandoned requests replayed first, then the held ones",
        );
        self.close_ring(p)
    }

    /// The disk plugged into the owner's current QEMU whose previous holder is gone (a lost
    /// peer, or a handoff taken back): `device_add` (retried while the image is still locked),
    /// then `disk-attached`. Returns what was done, for the progress line.
    pub(super) fn plug_owner_disk(&mut self, p: &mut Progress) -> Result<String, Abort> {
        let attempts = self.add_disk(p, Role::Owner, qemu::BOOT_DISK_SLOT)?;
        self.send(
            Role::Owner,
            Message::DiskAttached {
                slot: qemu::BOOT_DISK_SLOT,
            },
        )?;
        self.vms.owner_spec.boot_disk = Some(self.vms.backend.clone());
        Ok(format!(
            "device_add virtio-blk-pci (slot {}) in the owner ({attempts} attempt(s)), disk-attached sent",
            qemu::BOOT_DISK_SLOT
        ))
    }

    /// Starts a fresh peer in place of the lost one, for the cycles still to come: a new QEMU
    /// with the peer's machine, its own control socket, QMP and logs (`peer-N`), and waits for its
    /// `hello`. The dead peer's QEMU is kept with the retired ones (its events and logs).
    pub(super) fn replace_peer(&mut self, p: &mut Progress) -> Result<(), Abort> {
        self.vms.peers_started += 1;
        let label: &'static str =
            Box::leak(format!("peer-{}", self.vms.peers_started).into_boxed_str());
        let listener = ControlListener::bind(&self.dir.join(format!("ctl-{label}.sock"))).map_err(
            |source| Abort::Channel {
                vm: label.into(),
                source,
            },
        )?;
        let spec = MachineSpec {
            qmp_socket: self.dir.join(format!("qmp-{label}.sock")),
            control_socket: Some(listener.path().to_path_buf()),
            ..self.vms.peer_spec.clone()
        };
        let mut vm = Vm::spawn(label, &spec, &self.dir).map_err(|e| Abort::Other(chain(&e)))?;
        self.out
            .commands
            .insert(label.to_owned(), vm.command.clone());
        self.out
            .serial_logs
            .insert(label.to_owned(), vm.serial_log.display().to_string());
        let stream = listener
            .accept(CONNECT_TIMEOUT, || vm.alive())
            .map_err(|source| Abort::Channel {
                vm: label.into(),
                source,
            })?;
        vm.connect_qmp()?;
        let mut old = std::mem::replace(&mut self.vms.peer, vm);
        old.take_events();
        self.vms.retired.push(old);
        self.ctl.peer = ControlChannel::new("peer", stream);
        self.ctl.handoff.replaced(Role::Peer);
        self.vms.peer_lost = false;
        p.say(format!(
            "a fresh peer ({label}, pid {}) for the cycles still to come",
            self.vms.peer.qemu.pid()
        ));
        self.wait_until(p, "the fresh peer's hello", HELLO_TIMEOUT, |s| {
            Ok(s.ctl.handoff.both_hello().then_some(()))
        })?;
        drop(listener);
        Ok(())
    }
}
