//! Event and console handling: the guests' control messages (through the [`Handoff`] gate, I6),
//! their serial lines, QEMU exits and QMP events, the ring watch; and the waits built on them.
//! Every wait is bounded by its own timeout and the scenario deadline.

use baton_core::console::{GuestLine, Kind, LineError, SwitchKind, SwitchLine};

use std::os::fd::AsRawFd;

use super::*;

use crate::report::CompletionTimeline;

/// Most `BATON steps` lines kept (two per guest and cycle; `soak` runs 100 cycles).
const MAX_STEPS_LINES: usize = 512;
/// How long [`Scenario::drain_owner_console`] waits for an exited owner's console to close.
const CONSOLE_DRAIN: Duration = Duration::from_millis(500);

impl Scenario<'_> {
    pub(super) fn send(&mut self, to: Role, msg: Message) -> Result<(), Abort> {
        let ch = match to {
            Role::Owner => &mut self.ctl.owner,
            Role::Peer => &mut self.ctl.peer,
        };
        ch.send(msg).map_err(|source| Abort::Channel {
            vm: to.name().into(),
            source,
        })
    }

    /// One round: control channels, consoles, the ring watch, process exits.
    pub(super) fn step(&mut self, p: &mut Progress) -> Result<(), Abort> {
        for role in [Role::Owner, Role::Peer] {
            let ch = match role {
                Role::Owner => &mut self.ctl.owner,
                Role::Peer => &mut self.ctl.peer,
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
        if let (Some(w), Some(base)) = (&self.ring.watch, self.ring.cq_base)
            && !self.record.reached(Step::FirstCompletion)
            && w.read_u32(offsets::CQ_TAIL).is_some_and(|t| t != base)
        {
            self.record.record(Step::FirstCompletion, Instant::now());
            p.step(
                Step::FirstCompletion,
                "the peer moved the ring's completion tail (a forwarded request completed)",
            );
        }
        self.watch_peer_heartbeat(p);
        for vm in [&mut self.vms.owner, &mut self.vms.peer] {
            vm.poll_exit();
            // What QEMU sent so far, without blocking: a socket left readable would end every
            // `wait_io` at once and turn the wait into a busy loop.
            vm.pump_events(Duration::ZERO);
        }
        self.watch_vms(p)?;
        Ok(())
    }

    pub(super) fn on_message(&mut self, p: &mut Progress, from: Role, msg: Message, at: Instant) {
        match self.ctl.handoff.offer(from, &msg) {
            Ok(_) => {
                if let Message::Error { code } = msg {
                    let e = format!("the {} sent `error {code}`", from.name());
                    p.say(e.clone());
                    self.ctl.guest_error = Some(e);
                }
                self.ctl.inbox.push_back((from, msg, at));
            }
            Err(rej) => p.say(rej.to_string()),
        }
    }

    /// Reads the owner's console until it closed (its QEMU exited, so the reader thread gets
    /// the pipe's end soon), for at most [`CONSOLE_DRAIN`].
    pub(super) fn drain_owner_console(&mut self, p: &mut Progress) {
        let deadline = Instant::now() + CONSOLE_DRAIN;
        loop {
            self.read_consoles(p);
            if self.vms.owner.serial_closed || Instant::now() >= deadline {
                return;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    pub(super) fn read_consoles(&mut self, p: &mut Progress) {
        let mut lines = Vec::new();
        for vm in std::iter::once(&mut self.vms.owner).chain(self.vms.retired.iter_mut()) {
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
        while !self.vms.peer.serial_closed {
            match self.vms.peer.serial.recv(Duration::ZERO) {
                Recv::Line(l) => peer_lines.push(l.text),
                Recv::Idle => break,
                Recv::Closed => self.vms.peer.serial_closed = true,
            }
        }
        for text in peer_lines {
            match GuestLine::parse(&text) {
                Some(Ok(GuestLine::FaultInjected)) if !self.facts.peer_fault_injected => {
                    self.facts.peer_fault_injected = true;
                    p.say("the peer injected a malformed completion (fault hook)");
                }
                Some(Ok(GuestLine::Panic(m))) => {
                    let m: String = m.chars().take(200).collect();
                    p.say(format!("the peer panicked: {m}"));
                    self.note(format!("peer panic: {m}"));
                }
                Some(Ok(GuestLine::Steps(l))) => self.on_steps_line(l),
                _ => {}
            }
        }
    }

    /// One line of the owner's console (source, destination or restored QEMU), through the one
    /// typed parser of `BATON` lines ([`GuestLine`]); each fact is accepted once.
    pub(super) fn on_owner_line(
        &mut self,
        p: &mut Progress,
        from: &'static str,
        text: &str,
        at: Instant,
    ) {
        let Some(parsed) = GuestLine::parse(text) else {
            return;
        };
        let lines = &mut self.facts.owner_lines;
        match parsed {
            Ok(GuestLine::Ready { .. }) => {}
            Ok(GuestLine::FirstIo) => {
                if lines.first_io.is_none() {
                    lines.first_io = Some(at);
                }
            }
            Ok(GuestLine::Result(r)) => self.on_result(from, Ok(r)),
            Err(LineError::Result(e)) => self.on_result(from, Err(e.to_string())),
            Ok(GuestLine::PortStats(ps)) if lines.port_stats.len() < 2 => {
                lines.port_stats.push(ps.into());
            }
            Ok(GuestLine::PortStats(_)) => {
                self.note("extra `BATON port-stats` line ignored".into())
            }
            Ok(GuestLine::Timeline(l)) => {
                if let Err(e) = CompletionTimeline::add(&mut lines.timeline, &l) {
                    self.note(format!("`BATON timeline` line rejected: {e}"));
                }
            }
            Err(LineError::Timeline(e)) => {
                self.note(format!("`BATON timeline` line rejected: {e}"));
            }
            Ok(GuestLine::PeerFault(m)) => {
                if lines.peer_fault.is_none() {
                    let m: String = m.chars().take(200).collect();
                    p.say(format!("the owner detected a peer fault: {m}"));
                    lines.peer_fault = Some(m);
                }
            }
            Ok(GuestLine::Panic(m)) => {
                if lines.panic.is_none() {
                    let m: String = m.chars().take(500).collect();
                    p.say(format!("the owner panicked: {m}"));
                    lines.panic = Some(m);
                }
            }
            // The per-switch blackout; the report does not carry it yet.
            Ok(GuestLine::Switch(l)) => self.on_switch_line(p, l, at),
            Ok(GuestLine::Steps(l)) => self.on_steps_line(l),
            Ok(
                l
                @ (GuestLine::WaitingForDisk | GuestLine::FaultInjected | GuestLine::NetResult(_)),
            ) => {
                let word = l.kind().map_or("", Kind::word);
                self.note(format!("unexpected owner line `BATON {word}`"));
            }
            Ok(GuestLine::Unknown(rest)) => {
                self.note(format!(
                    "unknown owner line `BATON {}`",
                    crate::console::unknown_word(rest)
                ));
            }
            Err(e) => self.note(format!("malformed `BATON {}` line: {e}", e.kind())),
        }
    }

    /// A switch's blackout, measured by the owner at the first completion on its new port. For
    /// the running failback it also marks [`Step::FirstCompletion`] (the line's arrival).
    fn on_switch_line(&mut self, p: &mut Progress, l: SwitchLine, at: Instant) {
        const MAX_SWITCH_LINES: usize = 4096;
        let lines = &mut self.facts.owner_lines.switches;
        if lines.iter().any(|(s, _)| s.kind == l.kind && s.n == l.n) {
            self.note(format!(
                "repeated `BATON switch kind={} n={}` ignored",
                l.kind.word(),
                l.n
            ));
            return;
        }
        if lines.len() >= MAX_SWITCH_LINES {
            return;
        }
        lines.push((l, at));
        if l.kind == SwitchKind::Failback
            && let Some(f) = self.failback.as_mut()
            && f.record.record(Step::FirstCompletion, at)
        {
            p.fb_step(
                Step::FirstCompletion,
                format!(
                    "the owner's first port-1 completion after the failback (blackout {:.1} ms)",
                    l.gap_us as f64 / 1000.0
                ),
            );
        }
    }

    /// A guest's account of a switch ([`baton_core::guest_steps`]), kept for the report.
    fn on_steps_line(&mut self, l: baton_core::guest_steps::StepsLine) {
        if self.facts.guest_steps.len() < MAX_STEPS_LINES {
            self.facts.guest_steps.push(l);
        }
    }

    /// The first `BATON result` line, well-formed or not, is the one the report uses.
    fn on_result(&mut self, from: &'static str, r: Result<GuestReport, String>) {
        let lines = &mut self.facts.owner_lines;
        if lines.result.is_none() {
            lines.result = Some(r);
            lines.result_from = Some(from);
        } else {
            self.note("repeated `BATON result` ignored".into());
        }
    }

    /// Stops the wait when something went wrong that makes it pointless.
    pub(super) fn check(&mut self) -> Result<(), Abort> {
        if setup::interrupted() {
            return Err(Abort::Interrupted);
        }
        if let Some(e) = &self.ctl.guest_error {
            return Err(Abort::GuestError(e.clone()));
        }
        if let Some(st) = self.vms.owner.poll_exit() {
            return Err(Abort::OwnerExited(format!(
                "{} before the cycle's steps were done",
                describe_exit(st)
            )));
        }
        // A peer already lost (and recovered from) is no news.
        if !self.vms.peer_lost
            && let Some(st) = self.vms.peer.poll_exit()
        {
            return Err(Abort::PeerExited(describe_exit(st)));
        }
        Ok(())
    }

    /// Runs rounds until `f` yields a value, the timeout or the scenario deadline passes, or
    /// [`Scenario::check`] fails.
    pub(super) fn wait_until<T>(
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
            self.wait_io(TICK);
        }
    }

    /// Sleeps until a control frame or a QMP message arrives from either guest, or `max` passes
    /// (`poll(2)` on the sockets; no fixed poll period in the handoff's path).
    pub(super) fn wait_io(&self, max: Duration) {
        let mut fds: Vec<libc::pollfd> = [&self.ctl.owner, &self.ctl.peer]
            .into_iter()
            .filter_map(|c| c.raw_fd())
            .chain(
                [&self.vms.owner, &self.vms.peer]
                    .into_iter()
                    .filter_map(|vm| vm.qmp.as_ref().map(|q| q.stream().as_raw_fd())),
            )
            .map(|fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        let ts = libc::timespec {
            tv_sec: max.as_secs() as libc::time_t,
            tv_nsec: libc::c_long::from(max.subsec_nanos() as i32),
        };
        // SAFETY: `fds` is a live, exclusively borrowed array of `fds.len()` pollfd structs and
        // `ts` a valid timespec; ppoll only writes the `revents` fields. An error (EINTR) just ends
        // the sleep early.
        unsafe {
            libc::ppoll(
                fds.as_mut_ptr(),
                fds.len() as libc::nfds_t,
                &ts,
                std::ptr::null(),
            );
        }
    }

    /// Waits for a message from `from` that `want` accepts (it passed the gate when it arrived).
    pub(super) fn wait_msg(
        &mut self,
        p: &mut Progress,
        from: Role,
        what: &str,
        want: impl Fn(&Message) -> bool,
    ) -> Result<(Message, Instant), Abort> {
        self.wait_until(p, what, STEP_TIMEOUT, |s| Ok(s.take_msg(from, &want)))
    }

    /// Takes the first message from `from` that `want` accepts out of the inbox.
    pub(super) fn take_msg(
        &mut self,
        from: Role,
        want: impl Fn(&Message) -> bool,
    ) -> Option<(Message, Instant)> {
        self.ctl
            .inbox
            .iter()
            .position(|(r, m, _)| *r == from && want(m))
            .and_then(|i| self.ctl.inbox.remove(i))
            .map(|(_, m, at)| (m, at))
    }
}
