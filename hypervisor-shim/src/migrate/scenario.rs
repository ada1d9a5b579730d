//! The running scenario: its state (grouped by concern), the start of both guests, the order of
//! the steps (handoff, migration, the wait for the owner) and the clean-up.

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
    /// `BATON switch` lines (each switch's blackout), in arrival order, with their arrival time.
    pub(super) switches: Vec<(baton_core::console::SwitchLine, Instant)>,
}

/// What QEMU's migration said, and what became of the destination.
#[derive(Debug, Default, Clone)]
pub(super) struct MigrationOutcome {
    pub(super) status: Option<String>,
    pub(super) destination_status: Option<String>,
    pub(super) downtime_ms: Option<u64>,
    pub(super) total_ms: Option<u64>,
    pub(super) error: Option<String>,
    pub(super) source_resumed: bool,
}

/// The QEMU processes and what is needed to start the owner's next one.
pub(super) struct Vms {
    /// The owner's current QEMU: the source until a migration succeeds, then the destination.
    pub(super) owner: Vm,
    /// The peer's QEMU.
    pub(super) peer: Vm,
    /// Earlier QEMUs of the owner (the source after a migration, a failed destination).
    pub(super) retired: Vec<Vm>,
    /// Whether `owner` is a destination (or restored) QEMU.
    pub(super) owner_is_destination: bool,
    /// The owner's current device set (a destination is started with it).
    pub(super) owner_spec: MachineSpec,
    /// The disk's backend (the peer's `blockdev-add`).
    pub(super) backend: DiskBackend,
    /// Whether the owner's current QEMU has the disk's block node (`disk0`).
    pub(super) owner_disk_node: bool,
    /// The peer's machine (a dead peer's successor is started with it).
    pub(super) peer_spec: MachineSpec,
    /// The current peer was lost (exited or fenced) and not yet replaced.
    pub(super) peer_lost: bool,
    /// Peers started so far (the first one included).
    pub(super) peers_started: u32,
}

/// The guests' control channels and the handoff gate.
pub(super) struct Control {
    pub(super) owner: ControlChannel,
    pub(super) peer: ControlChannel,
    /// Which guest message is accepted in which state (I6).
    pub(super) handoff: Handoff,
    /// Accepted messages not yet taken by a wait, with their arrival time.
    pub(super) inbox: VecDeque<(Role, Message, Instant)>,
    /// A guest's `error`, which stops the scenario.
    pub(super) guest_error: Option<String>,
}

/// The shared-memory ring, once opened.
#[derive(Default)]
pub(super) struct Ring {
    pub(super) shm: Option<SharedFile>,
    /// A read-only map of the ring, to see the first forwarded completion.
    pub(super) watch: Option<RingWatch>,
    /// The completion tail when the watch was armed.
    pub(super) cq_base: Option<u32>,
    /// The peer's last heartbeat value and when it last moved.
    pub(super) peer_beat: Option<(u32, Instant)>,
}

/// What the scenario observed, for the verdict and the report (besides the handoff's record).
#[derive(Debug, Default)]
pub(super) struct Facts {
    pub(super) owner_lines: OwnerLines,
    pub(super) migration: MigrationOutcome,
    /// The owner's `drained`: (port 1 completed, held at port 2).
    pub(super) drained: Option<(u64, u32)>,
    /// The operator's (or seeded) switch point, ms after the first I/O.
    pub(super) switch_ms: Option<u64>,
    pub(super) peer_fault_injected: bool,
    /// `--inject` fired.
    pub(super) injected: bool,
    /// Peers whose QEMU exited while the owner forwarded.
    pub(super) peer_failures: u32,
    /// Forwarded requests the owner replayed on port 1 after a peer died.
    pub(super) requests_replayed: u64,
    /// How each peer failure was handled.
    pub(super) recoveries: Vec<String>,
    /// Why a peer was declared hung (its heartbeat froze), until its recovery.
    pub(super) peer_hang: Option<String>,
    /// QMP events of every QEMU, collected at the end.
    pub(super) events: Vec<VmEvent>,
    /// What the watch of the QEMUs found ([`super::watch`]).
    pub(super) watch: super::watch::WatchState,
    /// A handoff that could not complete and was taken back ([`super::unwind`]).
    pub(super) take_back: Option<crate::report::TakeBackReport>,
    /// The shim gave the run up and the owner reported after `give-up`.
    pub(super) given_up: bool,
    /// The cross-host switchover's times ([`super::crosshost`]).
    pub(super) cross: super::crosshost::CrossHostFacts,
    /// The guests' `BATON steps` lines, in arrival order (at most `MAX_STEPS_LINES`).
    pub(super) guest_steps: Vec<baton_core::guest_steps::StepsLine>,
    /// The QEMUs' CPU time at the first cycle's phase boundaries (the report's `cpu_time`).
    pub(super) cpu: crate::cputime::Marks,
}

/// What goes into the report as it is: notes, failures found while running, the QEMUs.
#[derive(Debug, Default)]
pub(super) struct Output {
    pub(super) notes: Vec<String>,
    /// Failures found while running (the verdict adds those found at the end).
    pub(super) failures: Vec<String>,
    pub(super) qemu_version: Option<String>,
    pub(super) commands: BTreeMap<String, String>,
    pub(super) serial_logs: BTreeMap<String, String>,
}

/// One finished (or interrupted) cycle: handoff → migration → failback.
#[derive(Debug, Clone)]
pub(super) struct CycleFacts {
    /// From 1.
    pub(super) n: u32,
    /// What the cycle's migration did (`Mixed` resolved).
    pub(super) mode: Mode,
    /// The handoff's steps.
    pub(super) handoff: HandoffRecord,
    /// Requests held at port 2 when port 1 drained.
    pub(super) held_at_handoff: Option<u32>,
    /// Requests port 1 had completed in total when it drained (the owner's `drained`).
    pub(super) port1_at_handoff: Option<u64>,
    /// The migration's outcome.
    pub(super) migration: MigrationOutcome,
    /// The failback, when one was directed.
    pub(super) failback: Option<failback::FailbackFacts>,
}

/// The running scenario.
pub(super) struct Scenario<'a> {
    pub(super) cfg: &'a MigrateConfig,
    pub(super) dir: PathBuf,
    pub(super) t0: Instant,
    pub(super) deadline: Instant,
    pub(super) vms: Vms,
    pub(super) ctl: Control,
    pub(super) ring: Ring,
    /// The running cycle's handoff steps, as they happen.
    pub(super) record: HandoffRecord,
    /// The running cycle (from 1; 0 before the first handoff).
    pub(super) cycle: u32,
    /// The running cycle's handoff `drained`: (port 1 completed, held at port 2).
    pub(super) handoff_drained: Option<(u64, u32)>,
    /// How many events the owner's QEMU had when the running handoff was directed.
    pub(super) handoff_mark: usize,
    /// The running cycle's failback, once directed.
    pub(super) failback: Option<failback::FailbackFacts>,
    /// Finished cycles, in order.
    pub(super) cycles: Vec<CycleFacts>,
    pub(super) facts: Facts,
    pub(super) out: Output,
    /// `--cross-host`: the hosts and the storage daemon (dropped: removed).
    pub(super) cross: Option<super::crosshost::CrossHost>,
}

/// One guest to start: its machine and the control socket it connects to.
#[derive(Clone, Copy)]
pub(super) struct GuestSetup<'g> {
    /// Its QEMU machine.
    pub(super) spec: &'g MachineSpec,
    /// The shim's end of its control channel (COM2).
    pub(super) listener: &'g ControlListener,
}

/// Starts both guests and connects everything.
pub(super) fn start<'a>(
    cfg: &'a MigrateConfig,
    dir: &Path,
    t0: Instant,
    owner: GuestSetup<'_>,
    peer: GuestSetup<'_>,
    backend: &DiskBackend,
    progress: &mut Progress,
) -> Result<Scenario<'a>, Abort> {
    let (owner_spec, owner_listener) = (owner.spec, owner.listener);
    let (peer_spec, peer_listener) = (peer.spec, peer.listener);
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
    peer.connect_qmp()?;
    owner.connect_qmp()?;
    let version = owner.exec(&QueryVersion {})?;
    let mut commands = BTreeMap::new();
    commands.insert("owner".to_owned(), owner.command.clone());
    commands.insert("peer".to_owned(), peer.command.clone());
    let mut serial_logs = BTreeMap::new();
    for vm in [&owner, &peer] {
        serial_logs.insert(vm.label.to_owned(), vm.serial_log.display().to_string());
    }
    Ok(Scenario {
        cfg,
        dir: dir.to_path_buf(),
        t0,
        deadline: t0 + cfg.timeout,
        vms: Vms {
            owner,
            peer,
            retired: Vec::new(),
            owner_is_destination: false,
            owner_spec: owner_spec.clone(),
            backend: backend.clone(),
            owner_disk_node: true,
            peer_spec: peer_spec.clone(),
            peer_lost: false,
            peers_started: 1,
        },
        ctl: Control {
            owner: ControlChannel::new("owner", owner_stream),
            peer: ControlChannel::new("peer", peer_stream),
            handoff: Handoff::new(OWNER_VM, PEER_VM),
            inbox: VecDeque::new(),
            guest_error: None,
        },
        ring: Ring::default(),
        record: HandoffRecord::new(Direction::OWNER_TO_PEER),
        cycle: 0,
        handoff_drained: None,
        handoff_mark: 0,
        failback: None,
        cycles: Vec::new(),
        facts: Facts::default(),
        cross: None,
        out: Output {
            qemu_version: Some(version.to_string()),
            commands,
            serial_logs,
            ..Output::default()
        },
    })
}

impl Vms {
    /// The QEMU of the guest in `role`.
    pub(super) fn of(&mut self, role: Role) -> &mut Vm {
        match role {
            Role::Owner => &mut self.owner,
            Role::Peer => &mut self.peer,
        }
    }
}

impl Scenario<'_> {
    pub(super) fn note(&mut self, n: String) {
        if self.out.notes.len() < MAX_NOTES {
            self.out.notes.push(n);
        }
    }

    /// Takes the shim's own step `action` in the handoff's transition table
    /// ([`baton_core::control::TRANSITIONS`]). A refusal leaves the state as it was and goes into
    /// the report as a note; it does not end the run (a failure path may try a move the table
    /// refuses, e.g. after a guest's `error` moved the handoff to `Failed`). Returns whether the
    /// table took it.
    pub(super) fn shim_acts(&mut self, action: ShimAction) -> bool {
        let state = self.ctl.handoff.state();
        match self.ctl.handoff.act(action) {
            Ok(_) => true,
            Err(why) => {
                self.note(format!(
                    "handoff: the shim's `{}` was refused in state {state:?}: {why}",
                    action.name()
                ));
                false
            }
        }
    }

    /// The cycles — each the handoff, the migration, the failback — then the wait for the owner
    /// to finish its workload.
    pub(super) fn drive(&mut self, p: &mut Progress) -> Result<(), Abort> {
        self.wait_until(p, "both guests' hello", HELLO_TIMEOUT, |s| {
            Ok(s.ctl.handoff.both_hello().then_some(()))
        })?;
        p.say("both guests said hello over COM2 (owner: port 1 = virtio-blk in slot 4)");
        for n in 1..=self.cfg.cycles {
            self.begin_cycle(p, n)?;
            match self.run_cycle(p, n) {
                Ok(()) => {}
                Err(Abort::PeerExited(why)) if self.peer_loss_recoverable() => {
                    self.recover_peer_loss(p, why)?;
                    if self.cross.is_some() {
                        // The ring cannot follow the owner to the other host, and its disk is
                        // back: this cycle's migration is off (a fresh handoff would be needed).
                        self.out.failures.push(format!(
                            "cycle {n}: the peer was lost before the owner left its host; the disk went back to the owner, which stayed there (no cross-host migration in this cycle)"
                        ));
                    }
                }
                Err(e) => return Err(e),
            }
            self.end_cycle();
            if n < self.cfg.cycles {
                if self.cross.is_some() {
                    self.peer_to_owner_host(p)?;
                } else if self.vms.peer_lost {
                    self.replace_peer(p)?;
                }
            }
        }
        self.wait_owner_exit(p)
    }

    /// One cycle's steps after its switch point: handoff, migration, failback.
    fn run_cycle(&mut self, p: &mut Progress, n: u32) -> Result<(), Abort> {
        self.maybe_inject(p, recovery::Inject::ShmFull);
        self.mark_cpu(crate::cputime::Boundary::Directed);
        match self.hand_over(p) {
            Ok(()) => {}
            Err(e) if self.can_take_back(&e) => return self.take_back(p, e),
            Err(e) => return Err(e),
        }
        self.await_first_completion(p)?;
        self.mark_cpu(crate::cputime::Boundary::FirstForwarded);
        self.maybe_inject(p, recovery::Inject::PeerCrashForwarding);
        self.maybe_inject(p, recovery::Inject::PeerHangForwarding);
        self.maybe_inject(p, recovery::Inject::StorageRestartForwarding);
        match self.cfg.mode.for_cycle(n) {
            Mode::Live if self.cross.is_some() => return self.cross_host_migrate(p),
            Mode::Live | Mode::Mixed => self.live_migrate(p)?,
            Mode::Save => self.save_restore(p)?,
            Mode::None => p.say("no migration (--mode none): the owner stays at the source"),
        }
        if self.cfg.failback {
            self.wait_for_failback(p)?;
            self.fail_back(p)?;
        }
        Ok(())
    }

    /// Starts cycle `n`: the first waits for its switch point; a later one starts a fresh
    /// record and pauses a seeded 20..120 ms of direct I/O after the previous failback.
    fn begin_cycle(&mut self, p: &mut Progress, n: u32) -> Result<(), Abort> {
        self.cycle = n;
        if n == 1 {
            // The owner's first I/O starts the direct phase of the report's `cpu_time`.
            self.wait_until(p, "the owner's first I/O", HELLO_TIMEOUT, |s| {
                Ok(s.facts.owner_lines.first_io)
            })?;
            self.mark_cpu(crate::cputime::Boundary::FirstIo);
            return self.wait_for_switch(p);
        }
        self.record = HandoffRecord::new(Direction::OWNER_TO_PEER);
        self.handoff_drained = None;
        self.facts.migration = MigrationOutcome::default();
        let pause = cycle_pause_ms(self.cfg.seed, n);
        p.say(format!(
            "cycle {n} of {}: handoff in {pause} ms ({})",
            self.cfg.cycles,
            self.cfg.mode.for_cycle(n).as_str()
        ));
        let at = Instant::now() + Duration::from_millis(pause);
        self.wait_until(p, "the next cycle's switch point", Duration::MAX, |_| {
            Ok((Instant::now() >= at).then_some(()))
        })
    }

    /// Files the running cycle (once) with what it reached.
    pub(super) fn end_cycle(&mut self) {
        if self.cycle == 0 || self.cycles.last().is_some_and(|c| c.n == self.cycle) {
            return;
        }
        self.cycles.push(CycleFacts {
            n: self.cycle,
            mode: self.cfg.mode.for_cycle(self.cycle),
            handoff: self.record,
            held_at_handoff: self.handoff_drained.map(|(_, h)| h),
            port1_at_handoff: self.handoff_drained.map(|(c, _)| c),
            migration: self.facts.migration.clone(),
            failback: self.failback.take(),
        });
    }

    /// The blackout the owner measured around handoff (`failback`: failback) `n`, in ms: its
    /// `BATON switch` line.
    pub(super) fn switch_gap_ms(&self, failback: bool, n: u32) -> Option<f64> {
        let kind = if failback {
            baton_core::console::SwitchKind::Failback
        } else {
            baton_core::console::SwitchKind::Handoff
        };
        self.facts
            .owner_lines
            .switches
            .iter()
            .find(|(l, _)| l.kind == kind && l.n == n)
            .map(|(l, _)| l.gap_us as f64 / 1000.0)
    }

    /// Samples the owner's and the peer's QEMU at `b`, once ([`crate::cputime`]).
    fn mark_cpu(&mut self, b: crate::cputime::Boundary) {
        let (o, p) = (self.vms.owner.qemu.pid(), self.vms.peer.qemu.pid());
        let last: Vec<_> = [&self.vms.owner, &self.vms.peer]
            .iter()
            .filter_map(|vm| vm.final_cpu.clone())
            .collect();
        self.facts
            .cpu
            .mark_or(b, &[("owner", o), ("peer", p)], &last);
    }

    /// Every cycle's handoff record, each followed by its failback's (directions say which).
    pub(super) fn records(&self) -> Vec<HandoffRecord> {
        self.cycles
            .iter()
            .flat_map(|c| std::iter::once(c.handoff).chain(c.failback.as_ref().map(|f| f.record)))
            .collect()
    }

    /// The first cycle's handoff record (the report's `phases`).
    pub(super) fn first_record(&self) -> HandoffRecord {
        self.cycles.first().map_or(self.record, |c| c.handoff)
    }

    /// A QEMU label for this cycle: `base` in the first, `base-N` after (leaked: one short
    /// string per cycle for the life of the process, since labels are `&'static str`).
    pub(super) fn cycle_label(&self, base: &'static str) -> &'static str {
        if self.cycle <= 1 {
            base
        } else {
            Box::leak(format!("{base}-{}", self.cycle).into_boxed_str())
        }
    }

    /// Step 5: the owner finishes its workload (at the destination, normally).
    pub(super) fn wait_owner_exit(&mut self, p: &mut Progress) -> Result<(), Abort> {
        let where_ = if self.vms.owner_is_destination {
            self.vms.owner.label
        } else {
            "source"
        };
        p.say(format!(
            "waiting for the owner to finish its workload ({where_} QEMU)"
        ));
        let start = Instant::now();
        loop {
            self.step(p)?;
            if self.facts.owner_lines.result.is_some() {
                self.mark_cpu(crate::cputime::Boundary::End);
            }
            if self.vms.owner.poll_exit().is_some() {
                // Its console's last lines (the result among them) may reach the shim after
                // QEMU's exit: the workload's end is then sampled from its zombie.
                self.drain_owner_console(p);
                if self.facts.owner_lines.result.is_some() {
                    self.mark_cpu(crate::cputime::Boundary::End);
                }
                return Ok(());
            }
            if setup::interrupted() {
                return Err(Abort::Interrupted);
            }
            if !self.vms.peer_lost
                && let Some(st) = self.vms.peer.poll_exit()
            {
                let why = describe_exit(st);
                if self.peer_loss_recoverable() {
                    self.recover_peer_loss(p, why)?;
                } else if self.ctl.handoff.state() == baton_core::control::HandoffState::Direct {
                    self.facts.peer_failures += 1;
                    self.vms.peer_lost = true;
                    self.facts.recoveries.push(format!(
                        "the peer's QEMU exited ({why}) while the owner held its disk: nothing to recover"
                    ));
                } else {
                    return Err(Abort::PeerExited(why));
                }
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
                    self.out.failures.push(why);
                }
            }
        }
        // The owner: exited, or asked for its report (the peer fenced first), then killed.
        if ending.is_some() {
            self.give_up(p);
            self.vms.owner.kill();
        }
        let owner_status = self.vms.owner.poll_exit().or_else(|| {
            self.vms.owner.kill();
            self.vms.owner.exit
        });
        // Late console lines (the result line races the exit).
        let until = Instant::now() + EXIT_GRACE;
        while Instant::now() < until && !self.vms.owner.serial_closed {
            self.read_consoles(p);
            std::thread::sleep(TICK);
        }
        self.read_consoles(p);
        if let Some(st) = owner_status {
            let where_ = if self.vms.owner_is_destination {
                self.vms.owner.label
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
        let peer_quit = self.vms.peer.quit();
        match &peer_quit {
            Ok(_) if self.vms.peer_lost => {
                p.say("the peer's QEMU had exited earlier (lost or fenced)")
            }
            Ok(_) => p.say("the peer quit over QMP (image flushed)"),
            Err(e) => {
                let e = format!("peer: {e}");
                self.note(e);
            }
        }
        // Everything else.
        for vm in std::iter::once(&mut self.vms.owner)
            .chain(std::iter::once(&mut self.vms.peer))
            .chain(self.vms.retired.iter_mut())
        {
            vm.kill();
        }
        self.end_cycle();
        self.collect_events();
        // The image is read only once the storage daemon flushed it and exited.
        self.stop_storage(p);
        self.ring.watch = None;
        self.ring.shm = None;
        build_report(self, plan, ending, p)
    }

    pub(super) fn collect_events(&mut self) {
        let t0 = self.t0;
        let mut all = Vec::new();
        for vm in std::iter::once(&mut self.vms.owner)
            .chain(std::iter::once(&mut self.vms.peer))
            .chain(self.vms.retired.iter_mut())
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
        self.facts.events = all;
    }
}
