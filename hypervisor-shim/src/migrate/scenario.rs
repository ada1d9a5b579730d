//! The running scenario: the handoff steps, the migration (live or save + restore), the wait
//! for the owner, and the clean-up.

use super::*;

/// What the owner said on COM1 (source and destination together), each accepted once.
#[derive(Debug, Default)]
pub(super) struct OwnerLines {
    pub(super) first_io: Option<Instant>,
    pub(super) result: Option<Result<GuestReport, String>>,
    pub(super) result_from: Option<&'static str>,
    pub(super) peer_fault: Option<String>,
    pub(super) panic: Option<String>,
    pub(super) port_stats: Vec<crate::report::PortStatsReport>,
    pub(super) timeline: Option<crate::report::CompletionTimeline>,
}

/// A destination QEMU that was started but is not connected yet.
pub(super) struct PendingDest {
    pub(super) vm: Vm,
    pub(super) listener: ControlListener,
    pub(super) qmp_socket: PathBuf,
}

/// When each step happened.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Times {
    pub(super) directed: Option<Instant>,
    pub(super) drained: Option<Instant>,
    pub(super) device_deleted: Option<Instant>,
    pub(super) peer_ready: Option<Instant>,
    pub(super) first_forwarded: Option<Instant>,
    pub(super) forwarding: Option<Instant>,
    pub(super) migrate_cmd: Option<Instant>,
    pub(super) migrated: Option<Instant>,
    pub(super) save_done: Option<Instant>,
    pub(super) restore_start: Option<Instant>,
    pub(super) restore_done: Option<Instant>,
}

#[derive(Debug, Default)]
pub(super) struct MigrationOutcome {
    pub(super) status: Option<String>,
    pub(super) destination_status: Option<String>,
    pub(super) downtime_ms: Option<u64>,
    pub(super) total_ms: Option<u64>,
    pub(super) error: Option<String>,
    pub(super) source_resumed: bool,
}

/// The running scenario.
pub(super) struct Scenario<'a> {
    pub(super) cfg: &'a MigrateConfig,
    pub(super) dir: PathBuf,
    pub(super) t0: Instant,
    pub(super) deadline: Instant,
    /// The owner's current QEMU: the source until a migration succeeds, then the destination.
    pub(super) owner: Vm,
    /// The peer's QEMU.
    pub(super) peer: Vm,
    /// Earlier QEMUs of the owner (the source after a migration, a failed destination).
    pub(super) retired: Vec<Vm>,
    pub(super) owner_is_destination: bool,
    pub(super) owner_ctl: ControlChannel,
    pub(super) peer_ctl: ControlChannel,
    pub(super) handoff: Handoff,
    pub(super) inbox: VecDeque<(Role, Message, Instant)>,
    pub(super) owner_lines: OwnerLines,
    pub(super) owner_spec: MachineSpec,
    pub(super) backend: DiskBackend,
    pub(super) shm: Option<SharedFile>,
    pub(super) watch: Option<RingWatch>,
    pub(super) cq_base: Option<u32>,
    pub(super) times: Times,
    pub(super) migration: MigrationOutcome,
    pub(super) drained: Option<(u64, u32)>,
    pub(super) switch_ms: Option<u64>,
    pub(super) notes: Vec<String>,
    pub(super) failures: Vec<String>,
    pub(super) qemu_version: Option<String>,
    pub(super) commands: BTreeMap<String, String>,
    pub(super) serial_logs: BTreeMap<String, String>,
    pub(super) events: Vec<VmEvent>,
    pub(super) guest_error: Option<String>,
    pub(super) peer_fault_injected: bool,
}

/// Starts both guests and connects everything.
#[allow(clippy::too_many_arguments)]
pub(super) fn start<'a>(
    cfg: &'a MigrateConfig,
    dir: &Path,
    t0: Instant,
    owner_spec: &MachineSpec,
    peer_spec: &MachineSpec,
    owner_listener: &ControlListener,
    peer_listener: &ControlListener,
    backend: &DiskBackend,
    progress: &mut Progress,
) -> Result<Scenario<'a>, Abort> {
    let setup = |e: MigrateError| Abort::Other(chain(&e));
    let mut peer = Vm::spawn("peer", peer_spec, dir).map_err(setup)?;
    let mut owner = Vm::spawn("owner", owner_spec, dir).map_err(setup)?;
    progress.say(format!(
        "started the peer (pid {}) and the owner (pid {}) under {}",
        peer.qemu.pid(),
        owner.qemu.pid(),
        owner_spec.accel.as_str()
    ));
    let accept = |l: &ControlListener, vm: &mut Vm| {
        let label = vm.label;
        l.accept(CONNECT_TIMEOUT, || vm.alive())
            .map_err(|source| Abort::Channel {
                vm: label.into(),
                source,
            })
    };
    let peer_stream = accept(peer_listener, &mut peer)?;
    let owner_stream = accept(owner_listener, &mut owner)?;
    peer.connect_qmp(&peer_spec.qmp_socket)?;
    owner.connect_qmp(&owner_spec.qmp_socket)?;
    let version = owner.exec(&QueryVersion {})?;
    let mut commands = BTreeMap::new();
    commands.insert("owner".to_owned(), owner.command.clone());
    commands.insert("peer".to_owned(), peer.command.clone());
    let mut serial_logs = BTreeMap::new();
    for vm in [&owner, &peer] {
        serial_logs.insert(
            vm.label.to_owned(),
            vm.serial_log(dir).display().to_string(),
        );
    }
    Ok(Scenario {
        cfg,
        dir: dir.to_path_buf(),
        t0,
        deadline: t0 + cfg.timeout,
        owner,
        peer,
        retired: Vec::new(),
        owner_is_destination: false,
        owner_ctl: ControlChannel::new("owner", owner_stream),
        peer_ctl: ControlChannel::new("peer", peer_stream),
        handoff: Handoff::new(OWNER_VM, PEER_VM),
        inbox: VecDeque::new(),
        owner_lines: OwnerLines::default(),
        owner_spec: owner_spec.clone(),
        backend: backend.clone(),
        shm: None,
        watch: None,
        cq_base: None,
        times: Times::default(),
        migration: MigrationOutcome::default(),
        drained: None,
        switch_ms: None,
        notes: Vec::new(),
        failures: Vec::new(),
        qemu_version: Some(version.to_string()),
        commands,
        serial_logs,
        events: Vec::new(),
        guest_error: None,
        peer_fault_injected: false,
    })
}

impl Scenario<'_> {
    pub(super) fn note(&mut self, n: String) {
        if self.notes.len() < MAX_NOTES {
            self.notes.push(n);
        }
    }

    /// The handoff itself, then the migration, then the wait for the owner at the destination.
    pub(super) fn drive(&mut self, p: &mut Progress) -> Result<(), Abort> {
        self.wait_until(p, "both guests' hello", HELLO_TIMEOUT, |s| {
            Ok(s.handoff.both_hello().then_some(()))
        })?;
        p.say("both guests said hello over COM2 (owner: port 1 = virtio-blk in slot 4)".into());
        self.wait_for_switch(p)?;
        self.direct(p)?;
        let (msg, at) = self.wait_msg(p, Role::Owner, "the owner's `drained`", |m| {
            matches!(m, Message::Drained { .. })
        })?;
        if let Message::Drained {
            port1_completed,
            held,
        } = msg
        {
            self.drained = Some((port1_completed, held));
            self.times.drained = Some(at);
            p.say(format!(
                "drained: port 1 completed {port1_completed} requests, {held} held at port 2"
            ));
        }
        // QEMU's DEVICE_DELETED (the drive released) usually comes before the owner's
        // `released` frame: the peer's `device_add` overlaps the wait for it.
        self.wait_device_deleted(p)?;
        let attempts = self.add_peer_disk(p)?;
        let (msg, _) = self.wait_msg(p, Role::Owner, "the owner's `released`", |m| {
            matches!(m, Message::Released { .. })
        })?;
        if let Message::Released { slot } = msg {
            if slot != qemu::BOOT_DISK_SLOT {
                return Err(Abort::Other(format!(
                    "the owner released slot {slot}, but the disk is in slot {}",
                    qemu::BOOT_DISK_SLOT
                )));
            }
            p.say(format!(
                "released: the owner reset the device and ejected slot {slot}"
            ));
        }
        self.move_disk(p, attempts)?;
        let (msg, at) = self.wait_msg(p, Role::Peer, "the peer's `peer-ready`", |m| {
            matches!(m, Message::PeerReady { .. })
        })?;
        self.times.peer_ready = Some(at);
        if let Message::PeerReady { capacity_sectors } = msg {
            p.say(format!(
                "peer ready: disk initialised ({capacity_sectors} sectors), ring attached"
            ));
        }
        self.arm_ring_watch();
        self.send(Role::Owner, Message::OpenPort2)?;
        p.say("open-port2 sent to the owner".into());
        let (_, at) = self.wait_msg(p, Role::Owner, "the owner's `forwarding`", |m| {
            matches!(m, Message::Forwarding)
        })?;
        self.times.forwarding = Some(at);
        p.say(format!(
            "forwarding: port 2 forwards over the ring (handoff took {:.1} ms)",
            phase(self.times.directed, Some(at)).unwrap_or(0.0)
        ));
        if self.watch.is_some() {
            let seen = self.wait_until(p, "the first forwarded completion", STEP_TIMEOUT, |s| {
                Ok(s.times.first_forwarded.map(|_| ()))
            });
            match seen {
                Ok(()) => {}
                Err(Abort::Timeout { .. }) => {
                    self.note("no forwarded completion seen on the ring".into());
                }
                Err(e) => return Err(e),
            }
        }
        match self.cfg.mode {
            Mode::Live => self.live_migrate(p)?,
            Mode::Save => self.save_restore(p)?,
            Mode::None => {
                p.say("no migration (--mode none): the owner finishes at the source".into())
            }
        }
        self.wait_owner_exit(p)
    }

    /// Waits until the switch point, or for the owner's `migrate-request`.
    fn wait_for_switch(&mut self, p: &mut Progress) -> Result<(), Abort> {
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
        self.switch_ms = Some(after_ms);
        let first_io = self.wait_until(p, "the owner's first I/O", HELLO_TIMEOUT, |s| {
            Ok(s.owner_lines.first_io)
        })?;
        p.say(format!(
            "the owner's workload started; switch in {after_ms} ms"
        ));
        let at = first_io + Duration::from_millis(after_ms);
        self.wait_until(p, "the switch point", Duration::MAX, |_| {
            Ok((Instant::now() >= at).then_some(()))
        })
    }

    /// Step 1: `device_del` + `redirect`; the ring opened in both guests while port 1 drains.
    fn direct(&mut self, p: &mut Progress) -> Result<(), Abort> {
        if !self.handoff.shim_moves_to(HandoffState::Redirecting) {
            return Err(Abort::Other(format!(
                "cannot direct the switch in state {:?}",
                self.handoff.state()
            )));
        }
        // `device_del` first: it only marks the slot for removal, and nothing is removed before
        // the owner ejects it. Sent after `redirect`, it raced the owner: with little in flight the
        // owner drains and ejects at once, QEMU removes the device on the eject alone, and the
        // late `device_del` fails with DeviceNotFound (seen at QD 1).
        self.times.directed = Some(Instant::now());
        self.owner.exec(&DeviceDel { id: DISK_ID.into() })?;
        self.send(Role::Owner, Message::Redirect)?;
        p.say(format!("directed: {DISK_ID} device_del, redirect sent"));
        let shm = SharedFile::create(Path::new(shm::SHM_DIR), RING_BYTES)
            .map_err(|e| Abort::Other(chain(&e)))?;
        let ring = RingSpec {
            mem_path: shm.path().to_path_buf(),
            size: RING_BYTES,
            master: true,
            slot: RING_SLOT,
        };
        self.shm = Some(shm);
        for (vm, master) in [(&mut self.owner, true), (&mut self.peer, false)] {
            let r = RingSpec {
                master,
                ..ring.clone()
            };
            vm.exec(&ObjectAdd {
                qom_type: "memory-backend-file".into(),
                id: RING_MEMDEV_ID.into(),
                props: r.backend_props(),
            })?;
            vm.exec(&DeviceAdd {
                driver: "ivshmem-plain".into(),
                id: RING_DEVICE_ID.into(),
                props: r.device_props(),
            })?;
        }
        let slot = RING_SLOT;
        self.send(Role::Owner, Message::RingOpened { slot })?;
        self.send(Role::Peer, Message::RingOpened { slot })?;
        p.say(format!(
            "ring opened while port 1 drains: {} ({} MiB), ivshmem-plain in slot {slot} of both (owner master=on)",
            ring.mem_path.display(),
            RING_BYTES >> 20
        ));
        self.owner_spec.boot_disk = None;
        self.owner_spec.ring = Some(ring);
        // The peer's block node now, while port 1 drains: `blockdev-add` takes no permission on
        // the image, so it succeeds while the owner still holds the write lock (only the peer's
        // `device_add` needs it).
        self.peer
            .exec(&BlockdevAdd(self.backend.blockdev_options(DISK_ID)))?;
        Ok(())
    }

    /// Waits until the owner's QEMU released the disk's drive: the `DEVICE_DELETED` of the
    /// virtio backend (`.../disk0/virtio-backend`, the first of the two; qemu-notes.md), or of
    /// `disk0` itself. QOM's `object_finalize` releases the backend's `drive` property (the
    /// BlockBackend and with it the image's write lock) just before `device_finalize` sends its
    /// event; the proxy's own event follows ~60 ms later only because its memory regions are
    /// freed by QEMU's RCU thread, which waits up to 5 × 10 ms for callbacks to pile up
    /// (util/rcu.c, `call_rcu_thread`). `device_add` in the peer is retried if the lock is still
    /// held ([`Scenario::add_peer_disk`]).
    fn wait_device_deleted(&mut self, p: &mut Progress) -> Result<(), Abort> {
        let backend = format!("/machine/peripheral/{DISK_ID}/virtio-backend");
        let (at, what) = self.wait_until(p, "DEVICE_DELETED of disk0", STEP_TIMEOUT, |s| {
            s.owner.pump_events(QMP_POLL);
            Ok(s.owner.events.iter().find_map(|(at, e)| {
                if e.name != "DEVICE_DELETED" {
                    None
                } else if e.data.get("device").and_then(Value::as_str) == Some(DISK_ID) {
                    Some((*at, DISK_ID.to_owned()))
                } else if e.data.get("path").and_then(Value::as_str) == Some(backend.as_str()) {
                    Some((*at, format!("{DISK_ID}/virtio-backend")))
                } else {
                    None
                }
            }))
        })?;
        self.times.device_deleted = Some(at);
        p.say(format!(
            "device deleted: DEVICE_DELETED {what} from the owner's QEMU (drive released, image unlocked)"
        ));
        Ok(())
    }

    /// `device_add` of the disk into the peer, retried for a while if QEMU says the image is still
    /// locked (the owner's QEMU not yet through releasing it). Returns the attempts made.
    fn add_peer_disk(&mut self, p: &mut Progress) -> Result<u32, Abort> {
        let start = Instant::now();
        let mut attempts = 0;
        loop {
            attempts += 1;
            let r = self.peer.exec(&DeviceAdd {
                driver: "virtio-blk-pci".into(),
                id: DISK_ID.into(),
                props: qemu::virtio_blk_device_props(DISK_ID, PEER_DISK_SLOT),
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
    /// handoff was directed, device after `attempts` `device_add`s): `disk-attached` to the peer;
    /// the owner's node goes once the peer has the disk.
    fn move_disk(&mut self, p: &mut Progress, attempts: u32) -> Result<(), Abort> {
        self.send(
            Role::Peer,
            Message::DiskAttached {
                slot: PEER_DISK_SLOT,
            },
        )?;
        self.owner.exec(&BlockdevDel {
            node_name: DISK_ID.into(),
        })?;
        let retried = if attempts > 1 {
            format!(" after {attempts} attempts (image still locked)")
        } else {
            String::new()
        };
        p.say(format!(
            "disk moved: device_add virtio-blk-pci (slot {PEER_DISK_SLOT}) in the peer{retried}, disk-attached sent; blockdev-del in the owner"
        ));
        Ok(())
    }

    /// Maps the ring read-only and remembers the completion tail, to see the first forwarded
    /// completion.
    fn arm_ring_watch(&mut self) {
        let Some(shm) = &self.shm else { return };
        match RingWatch::open(shm.path(), ring::HEADER_LEN) {
            Ok(w) => {
                self.cq_base = w.read_u32(offsets::CQ_TAIL);
                self.watch = Some(w);
            }
            Err(e) => self.note(format!("ring watch unavailable: {}", chain(&e))),
        }
    }

    fn send(&mut self, to: Role, msg: Message) -> Result<(), Abort> {
        let ch = match to {
            Role::Owner => &mut self.owner_ctl,
            Role::Peer => &mut self.peer_ctl,
        };
        ch.send(msg).map_err(|source| Abort::Channel {
            vm: to.name().into(),
            source,
        })
    }

    /// One round: control channels, consoles, the ring watch, process exits.
    fn step(&mut self, p: &mut Progress) -> Result<(), Abort> {
        for role in [Role::Owner, Role::Peer] {
            let ch = match role {
                Role::Owner => &mut self.owner_ctl,
                Role::Peer => &mut self.peer_ctl,
            };
            let got = ch.poll().map_err(|source| Abort::Channel {
                vm: role.name().into(),
                source,
            })?;
            for r in got {
                match r {
                    Received::Message { msg, at, .. } => self.on_message(p, role, msg, at),
                    Received::Bad(why) => {
                        let n = format!("bad control frame from the {}: {why}", role.name());
                        p.say(n.clone());
                        self.note(n);
                    }
                }
            }
        }
        self.read_consoles(p);
        if let (Some(w), Some(base), None) = (&self.watch, self.cq_base, self.times.first_forwarded)
            && w.read_u32(offsets::CQ_TAIL).is_some_and(|t| t != base)
        {
            let now = Instant::now();
            self.times.first_forwarded = Some(now);
            p.say("first forwarded completion: the peer moved the ring's completion tail".into());
        }
        for vm in [&mut self.owner, &mut self.peer] {
            vm.poll_exit();
            vm.take_events();
        }
        Ok(())
    }

    fn on_message(&mut self, p: &mut Progress, from: Role, msg: Message, at: Instant) {
        match self.handoff.offer(from, &msg) {
            Ok(_) => {
                if let Message::Error { code } = msg {
                    let e = format!("the {} sent `error {code}`", from.name());
                    p.say(e.clone());
                    self.guest_error = Some(e);
                }
                self.inbox.push_back((from, msg, at));
            }
            Err(rej) => p.say(rej.to_string()),
        }
    }

    fn read_consoles(&mut self, p: &mut Progress) {
        let mut lines = Vec::new();
        for vm in std::iter::once(&mut self.owner).chain(self.retired.iter_mut()) {
            while !vm.serial_closed {
                match vm.serial.recv(Duration::ZERO) {
                    Recv::Line(l) => lines.push((vm.label, l)),
                    Recv::Idle => break,
                    Recv::Closed => vm.serial_closed = true,
                }
            }
        }
        for (label, l) in lines {
            self.on_owner_line(p, label, &l.text, l.at);
        }
        let mut peer_lines = Vec::new();
        while !self.peer.serial_closed {
            match self.peer.serial.recv(Duration::ZERO) {
                Recv::Line(l) => peer_lines.push(l.text),
                Recv::Idle => break,
                Recv::Closed => self.peer.serial_closed = true,
            }
        }
        for text in peer_lines {
            if text == "BATON fault-injected" && !self.peer_fault_injected {
                self.peer_fault_injected = true;
                p.say("the peer injected a malformed completion (fault hook)".into());
            } else if let Some(m) = text.strip_prefix("BATON panic ") {
                let m: String = m.chars().take(200).collect();
                p.say(format!("the peer panicked: {m}"));
                self.note(format!("peer panic: {m}"));
            }
        }
    }

    fn on_owner_line(&mut self, p: &mut Progress, from: &'static str, text: &str, at: Instant) {
        let Some(rest) = text.strip_prefix("BATON ") else {
            return;
        };
        let (word, args) = rest.split_once(' ').unwrap_or((rest, ""));
        let lines = &mut self.owner_lines;
        match word {
            "ready" => {}
            "first-io" => {
                if lines.first_io.is_none() {
                    lines.first_io = Some(at);
                }
            }
            "result" => {
                if lines.result.is_none() {
                    lines.result = Some(parse_line(text).map_err(|e| e.to_string()));
                    lines.result_from = Some(from);
                } else {
                    self.note("repeated `BATON result` ignored".into());
                }
            }
            "port-stats" => match baton_core::stats::parse_line(text) {
                Ok(ps) if lines.port_stats.len() < 2 => lines.port_stats.push(ps.into()),
                Ok(_) => self.note("extra `BATON port-stats` line ignored".into()),
                Err(e) => self.note(format!("malformed `BATON port-stats` line: {e}")),
            },
            "timeline" => {
                if let Err(e) =
                    crate::report::CompletionTimeline::add_line(&mut lines.timeline, text)
                {
                    self.note(format!("`BATON timeline` line rejected: {e}"));
                }
            }
            "peer-fault" => {
                if lines.peer_fault.is_none() {
                    let m: String = args.chars().take(200).collect();
                    p.say(format!("the owner detected a peer fault: {m}"));
                    lines.peer_fault = Some(m);
                }
            }
            "panic" => {
                if lines.panic.is_none() {
                    let m: String = args.chars().take(500).collect();
                    p.say(format!("the owner panicked: {m}"));
                    lines.panic = Some(m);
                }
            }
            other => {
                let w: String = other.chars().take(32).collect();
                self.note(format!("unknown owner line `BATON {w}`"));
            }
        }
    }

    /// Stops the wait when something went wrong that makes it pointless.
    fn check(&mut self) -> Result<(), Abort> {
        if run::interrupted() {
            return Err(Abort::Interrupted);
        }
        if let Some(e) = &self.guest_error {
            return Err(Abort::GuestError(e.clone()));
        }
        if let Some(st) = self.owner.poll_exit() {
            return Err(Abort::OwnerExited(format!(
                "{} during the handoff",
                describe_exit(st)
            )));
        }
        if let Some(st) = self.peer.poll_exit() {
            return Err(Abort::PeerExited(describe_exit(st)));
        }
        Ok(())
    }

    /// Runs rounds until `f` yields a value, the timeout or the scenario deadline passes, or
    /// [`Scenario::check`] fails.
    fn wait_until<T>(
        &mut self,
        p: &mut Progress,
        what: &str,
        timeout: Duration,
        mut f: impl FnMut(&mut Self) -> Result<Option<T>, Abort>,
    ) -> Result<T, Abort> {
        let start = Instant::now();
        let until = start
            .checked_add(timeout)
            .map_or(self.deadline, |u| u.min(self.deadline));
        loop {
            self.step(p)?;
            if let Some(v) = f(self)? {
                return Ok(v);
            }
            self.check()?;
            if Instant::now() >= until {
                return Err(Abort::Timeout {
                    what: what.into(),
                    waited: start.elapsed(),
                });
            }
            std::thread::sleep(TICK);
        }
    }

    /// Waits for a message from `from` that `want` accepts (it passed the gate when it arrived).
    fn wait_msg(
        &mut self,
        p: &mut Progress,
        from: Role,
        what: &str,
        want: impl Fn(&Message) -> bool,
    ) -> Result<(Message, Instant), Abort> {
        self.wait_until(p, what, STEP_TIMEOUT, |s| Ok(s.take_msg(from, &want)))
    }

    /// Takes the first message from `from` that `want` accepts out of the inbox.
    fn take_msg(
        &mut self,
        from: Role,
        want: impl Fn(&Message) -> bool,
    ) -> Option<(Message, Instant)> {
        self.inbox
            .iter()
            .position(|(r, m, _)| *r == from && want(m))
            .and_then(|i| self.inbox.remove(i))
            .map(|(_, m, at)| (m, at))
    }

    /// Starts a destination (or restore) QEMU with the owner's current device set; it connects
    /// its control channel and QMP later ([`Scenario::connect_destination`]).
    fn launch_destination(&mut self, label: &'static str) -> Result<PendingDest, Abort> {
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
            ..self.owner_spec.clone()
        };
        if self.cfg.destination_fault == DestinationFault::WithoutRing {
            spec.ring = None;
        }
        let vm = Vm::spawn(label, &spec, &self.dir).map_err(|e| Abort::Other(chain(&e)))?;
        self.commands.insert(label.to_owned(), vm.command.clone());
        self.serial_logs.insert(
            label.to_owned(),
            vm.serial_log(&self.dir).display().to_string(),
        );
        Ok(PendingDest {
            vm,
            listener,
            qmp_socket: spec.qmp_socket,
        })
    }

    /// Accepts a started destination's control connection and connects its QMP.
    fn connect_destination(
        pending: PendingDest,
    ) -> Result<(Vm, ControlListener, UnixStream), Box<(Abort, Vm)>> {
        let PendingDest {
            mut vm,
            listener,
            qmp_socket,
        } = pending;
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
        if let Err(e) = vm.connect_qmp(&qmp_socket) {
            return Err(Box::new((e, vm)));
        }
        Ok((vm, listener, stream))
    }

    /// The source's ivshmem BAR0 and BAR2 addresses.
    fn ring_bars(&mut self) -> Result<(u64, u64), Abort> {
        let buses = self.owner.exec(&QueryPci {})?;
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
    fn ignore_shared(vm: &mut Vm) -> Result<(), Abort> {
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
    fn program_destination_bars(dest: &mut Vm, bar0: u64, bar2: u64) -> Result<(), Abort> {
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
    fn poll_migration(&mut self, p: &mut Progress) -> Result<MigrationInfo, Abort> {
        let start = Instant::now();
        loop {
            self.step(p)?;
            let info = self.owner.exec(&QueryMigrate {})?;
            if info.finished() {
                return Ok(info);
            }
            if run::interrupted() {
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
    fn wait_running(&mut self, p: &mut Progress, dest: &mut Vm) -> Result<String, String> {
        let start = Instant::now();
        loop {
            if self.step(p).is_err() {
                // Control channel trouble is reported by the next waits; keep checking QEMU.
            }
            if let Some(st) = dest.poll_exit() {
                return Err(format!(
                    "the {} QEMU exited ({}): {}",
                    dest.label,
                    describe_exit(st),
                    dest.stderr_tail()
                ));
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
                        return Err(format!(
                            "the {} QEMU exited ({}): {}",
                            dest.label,
                            describe_exit(st),
                            dest.stderr_tail()
                        ));
                    }
                    if start.elapsed() >= DEST_RUN_TIMEOUT {
                        return Err(chain(&e));
                    }
                }
            }
            if run::interrupted() {
                return Err("interrupted by a signal".into());
            }
            std::thread::sleep(MIGRATE_POLL);
        }
    }

    /// The destination takes over: the owner's channel moves to its connection, the source quits.
    fn take_over(&mut self, p: &mut Progress, dest: Vm, stream: UnixStream) {
        // Whatever the source sent last is still in its socket: read it before moving on.
        let _ = self.step(p);
        self.owner_ctl.attach(stream);
        let mut source = std::mem::replace(&mut self.owner, dest);
        self.owner_is_destination = true;
        match source.quit() {
            Ok(st) => p.say(format!("the source QEMU quit ({})", describe_exit(st))),
            Err(e) => self.note(e),
        }
        source.take_events();
        self.retired.push(source);
    }

    /// A migration that failed: resume the source so the owner keeps running there.
    fn roll_back(&mut self, p: &mut Progress, why: String, dest: Option<Vm>) {
        self.migration.error = Some(why.clone());
        self.failures.push(format!("migration failed: {why}"));
        p.say(format!("migration FAILED: {why}"));
        if let Some(mut d) = dest {
            let status = match d.poll_exit() {
                Some(st) => {
                    let tail = d.stderr_tail();
                    if !tail.is_empty() {
                        self.note(format!("{} QEMU stderr: {tail}", d.label));
                    }
                    format!("exited ({})", describe_exit(st))
                }
                None => match d.exec(&QueryStatus {}) {
                    Ok(s) => s.status,
                    Err(_) => "unknown".into(),
                },
            };
            p.say(format!("the {} QEMU is {status}; stopping it", d.label));
            self.migration.destination_status.get_or_insert(status);
            d.kill();
            d.take_events();
            self.retired.push(d);
        }
        let running = self.owner.exec(&QueryStatus {}).map(|s| s.running);
        match running {
            Ok(true) => p.say("the source still runs the owner".into()),
            Ok(false) => match self.owner.exec(&Cont {}) {
                Ok(_) => {
                    self.migration.source_resumed = true;
                    p.say(
                        "rolled back: `cont` resumed the source; the owner continues there".into(),
                    );
                }
                Err(e) => {
                    let e = format!("cannot resume the source: {}", chain(&e));
                    p.say(e.clone());
                    self.failures.push(e);
                }
            },
            Err(e) => self.note(format!("source status unknown: {}", chain(&e))),
        }
        let _ = self.handoff.shim_moves_to(HandoffState::Forwarding);
    }

    /// Whether the owner's QEMU exited (waits briefly: its sockets close just before it is
    /// reaped). Used when a QMP command to it failed.
    fn owner_gone(&mut self) -> Option<ExitStatus> {
        let until = Instant::now() + Duration::from_millis(500);
        loop {
            if let Some(st) = self.owner.poll_exit() {
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
    fn migration_failed(
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
                self.retired.push(d);
            }
            return Err(Abort::OwnerExited(format!(
                "{} while it was being migrated",
                describe_exit(st)
            )));
        }
        self.roll_back(p, chain(&e), dest);
        Ok(())
    }

    /// Step 4, live: migrate the owner to a second QEMU.
    fn live_migrate(&mut self, p: &mut Progress) -> Result<(), Abort> {
        let _ = self.handoff.shim_moves_to(HandoffState::Migrating);
        // Started only now: a QEMU starting up during the handoff would compete for the CPU with
        // the guests while the owner's I/O is stalled.
        let connected = match self.launch_destination("destination") {
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
            Self::ignore_shared(&mut self.owner)?;
            Self::ignore_shared(&mut dest)?;
            let (bar0, bar2) = self.ring_bars()?;
            Self::program_destination_bars(&mut dest, bar0, bar2)?;
            dest.exec(&MigrateIncoming { uri: uri.clone() })?;
            Ok(())
        })();
        if let Err(e) = setup {
            return self.migration_failed(p, e, Some(dest));
        }
        self.times.migrate_cmd = Some(Instant::now());
        p.say("x-ignore-shared on both sides, BAR2 workaround applied; migrate".into());
        if let Err(e) = self.owner.exec(&Migrate { uri }) {
            return self.migration_failed(p, e, Some(dest));
        }
        let info = match self.poll_migration(p) {
            Ok(i) => i,
            Err(e) => return self.migration_failed(p, e, Some(dest)),
        };
        self.migration.status = info.status.clone();
        self.migration.downtime_ms = info.downtime;
        self.migration.total_ms = info.total_time;
        if info.status.as_deref() != Some("completed") {
            let why = format!(
                "the source says `{}`{}",
                info.status.as_deref().unwrap_or("?"),
                info.error_desc
                    .map_or_else(String::new, |d| format!(": {d}"))
            );
            self.roll_back(p, why, Some(dest));
            return Ok(());
        }
        // The source's word is not enough: the destination must run the guest.
        match self.wait_running(p, &mut dest) {
            Ok(status) => {
                self.times.migrated = Some(Instant::now());
                self.migration.destination_status = Some(status);
                p.say(format!(
                    "migrated: completed, downtime {} ms, total {} ms; the destination runs the owner",
                    info.downtime.map_or_else(|| "?".into(), |d| d.to_string()),
                    info.total_time.map_or_else(|| "?".into(), |d| d.to_string()),
                ));
                self.take_over(p, dest, stream);
                drop(listener);
                let _ = self.handoff.shim_moves_to(HandoffState::Forwarding);
                Ok(())
            }
            Err(why) => {
                self.migration.destination_status = Some("dead".into());
                self.roll_back(
                    p,
                    format!("the source reported `completed` but {why}"),
                    Some(dest),
                );
                Ok(())
            }
        }
    }

    /// Step 4, save: save the owner to a file, quit its QEMU, restore it in a new one.
    fn save_restore(&mut self, p: &mut Progress) -> Result<(), Abort> {
        let _ = self.handoff.shim_moves_to(HandoffState::Migrating);
        let state = self.dir.join("vm1.state");
        let _ = std::fs::remove_file(&state);
        // The saved state goes when the scenario ends, however it ends (unless --keep).
        let _state_guard = (!self.cfg.keep).then(|| SocketPath(state.clone()));
        let setup = (|| -> Result<(u64, u64), Abort> {
            Self::ignore_shared(&mut self.owner)?;
            self.ring_bars()
        })();
        let (bar0, bar2) = match setup {
            Ok(b) => b,
            Err(e) => return self.migration_failed(p, e, None),
        };
        self.times.migrate_cmd = Some(Instant::now());
        let uri = format!("exec:cat > {}", shell_quote(&state.to_string_lossy()));
        p.say(format!("saving the owner: migrate to {}", state.display()));
        if let Err(e) = self.owner.exec(&Migrate { uri }) {
            return self.migration_failed(p, e, None);
        }
        let info = match self.poll_migration(p) {
            Ok(i) => i,
            Err(e) => return self.migration_failed(p, e, None),
        };
        self.migration.status = info.status.clone();
        self.migration.downtime_ms = info.downtime;
        self.migration.total_ms = info.total_time;
        if info.status.as_deref() != Some("completed") {
            let why = format!(
                "save: the source says `{}`{}",
                info.status.as_deref().unwrap_or("?"),
                info.error_desc
                    .map_or_else(String::new, |d| format!(": {d}"))
            );
            self.roll_back(p, why, None);
            return Ok(());
        }
        self.times.save_done = Some(Instant::now());
        let size = std::fs::metadata(&state).map_or(0, |m| m.len());
        p.say(format!(
            "saved: {} KiB, downtime {} ms; quitting the source QEMU",
            size >> 10,
            info.downtime.map_or_else(|| "?".into(), |d| d.to_string())
        ));
        // Whatever the source sent last is still in its socket.
        let _ = self.step(p);
        match self.owner.quit() {
            Ok(st) => p.say(format!("the source QEMU quit ({})", describe_exit(st))),
            Err(e) => self.note(e),
        }
        // From here on there is no source to fall back to.
        self.times.restore_start = Some(Instant::now());
        let restored = match self.launch_destination("restored") {
            Ok(pd) => match Self::connect_destination(pd) {
                Ok((vm, listener, stream)) => {
                    self.restore(p, vm, listener, stream, &state, bar0, bar2)
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
                let source = std::mem::replace(&mut self.owner, vm);
                self.retired.push(source);
                self.owner_is_destination = true;
                let _ = self.handoff.shim_moves_to(HandoffState::Forwarding);
                Ok(())
            }
            Err(b) => {
                let (why, vm) = *b;
                self.migration.error = Some(why.clone());
                p.say(format!("restore FAILED: {why}"));
                if let Some(mut vm) = vm {
                    vm.kill();
                    self.retired.push(vm);
                }
                Err(Abort::Other(format!(
                    "restore failed (the source was already gone): {why}"
                )))
            }
        }
    }

    /// Restores the saved owner into `vm`; on success the owner's channel moves to it.
    #[allow(clippy::too_many_arguments)]
    fn restore(
        &mut self,
        p: &mut Progress,
        mut vm: Vm,
        listener: ControlListener,
        stream: UnixStream,
        state: &Path,
        bar0: u64,
        bar2: u64,
    ) -> Result<Vm, Box<(String, Option<Vm>)>> {
        let r = (|| -> Result<(), Abort> {
            Self::ignore_shared(&mut vm)?;
            Self::program_destination_bars(&mut vm, bar0, bar2)?;
            vm.exec(&MigrateIncoming {
                uri: format!("exec:cat {}", shell_quote(&state.to_string_lossy())),
            })?;
            Ok(())
        })();
        if let Err(e) = r {
            return Err(Box::new((chain(&e), Some(vm))));
        }
        match self.wait_running(p, &mut vm) {
            Ok(status) => {
                let now = Instant::now();
                self.times.restore_done = Some(now);
                self.times.migrated = Some(now);
                self.migration.destination_status = Some(status);
                p.say(format!(
                    "restored: a new QEMU (pid {}) runs the owner",
                    vm.qemu.pid()
                ));
                let _ = self.step(p);
                self.owner_ctl.attach(stream);
                drop(listener);
                Ok(vm)
            }
            Err(why) => {
                self.migration.destination_status = Some("dead".into());
                Err(Box::new((why, Some(vm))))
            }
        }
    }

    /// Step 5: the owner finishes its workload (at the destination, normally).
    fn wait_owner_exit(&mut self, p: &mut Progress) -> Result<(), Abort> {
        let where_ = if self.owner_is_destination {
            self.owner.label
        } else {
            "source"
        };
        p.say(format!(
            "waiting for the owner to finish its workload ({where_} QEMU)"
        ));
        let start = Instant::now();
        loop {
            self.step(p)?;
            if self.owner.poll_exit().is_some() {
                return Ok(());
            }
            if run::interrupted() {
                return Err(Abort::Interrupted);
            }
            if let Some(st) = self.peer.poll_exit() {
                return Err(Abort::PeerExited(describe_exit(st)));
            }
            if Instant::now() >= self.deadline {
                return Err(Abort::Timeout {
                    what: "the owner to finish".into(),
                    waited: start.elapsed(),
                });
            }
            std::thread::sleep(TICK);
        }
    }

    /// After the drive: settle every QEMU, verify the disk, build the report.
    pub(super) fn finish(
        mut self,
        result: Result<(), Abort>,
        p: &mut Progress,
        plan: &Plan<'_>,
    ) -> MigrateReport {
        let mut ending = None;
        match &result {
            Ok(()) => {}
            Err(Abort::OwnerExited(_)) => {}
            Err(Abort::Timeout { .. }) => ending = Some(Ending::Timeout),
            Err(e) => ending = Some(Ending::Aborted(chain(e))),
        }
        if let Err(e) = &result {
            let why = chain(e);
            match e {
                Abort::OwnerExited(_) => p.say(format!("stopped: {why}")),
                _ => {
                    p.say(format!("FAILED: {why}"));
                    self.failures.push(why);
                }
            }
        }
        // The owner: exited, or killed now.
        if ending.is_some() {
            self.owner.kill();
        }
        let owner_status = self.owner.poll_exit().or_else(|| {
            self.owner.kill();
            self.owner.exit
        });
        // Late console lines (the result line races the exit).
        let until = Instant::now() + EXIT_GRACE;
        while Instant::now() < until && !self.owner.serial_closed {
            self.read_consoles(p);
            std::thread::sleep(TICK);
        }
        self.read_consoles(p);
        if let Some(st) = owner_status {
            let where_ = if self.owner_is_destination {
                self.owner.label
            } else {
                "source"
            };
            p.say(format!(
                "the owner's QEMU exited ({where_} QEMU, {})",
                describe_exit(st)
            ));
        }
        let ending = ending.unwrap_or_else(|| match owner_status {
            Some(st) => Ending::Exited(st),
            None => Ending::Aborted("owner still running".into()),
        });
        // The peer: quit over QMP, which flushes the image.
        let peer_quit = self.peer.quit();
        match &peer_quit {
            Ok(_) => p.say("the peer quit over QMP (image flushed)".into()),
            Err(e) => {
                let e = format!("peer: {e}");
                self.note(e);
            }
        }
        // Everything else.
        for vm in std::iter::once(&mut self.owner)
            .chain(std::iter::once(&mut self.peer))
            .chain(self.retired.iter_mut())
        {
            vm.kill();
        }
        self.collect_events();
        self.watch = None;
        self.shm = None;
        build_report(self, plan, ending, p)
    }

    fn collect_events(&mut self) {
        let t0 = self.t0;
        let mut all = Vec::new();
        for vm in std::iter::once(&mut self.owner)
            .chain(std::iter::once(&mut self.peer))
            .chain(self.retired.iter_mut())
        {
            vm.take_events();
            for (at, e) in vm.events.drain(..) {
                all.push(VmEvent {
                    vm: vm.label.into(),
                    name: e.name,
                    at_ms: ms_between(t0, at),
                    data: e.data,
                });
            }
        }
        all.sort_by(|a, b| a.at_ms.total_cmp(&b.at_ms));
        self.events = all;
    }
}
