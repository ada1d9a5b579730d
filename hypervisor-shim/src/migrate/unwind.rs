//! When a cycle cannot go on (issue 9; docs/design.md, "A handoff taken back" and "Giving a run
//! up"):
//!
//! - **Take-back.** A handoff that fails after `redirect` but before port 2 opened (port 1 did not
//!   drain in time, the ring could not be set up, the peer could not take the disk) goes back to
//!   the owner: the peer is fenced if it may have the disk, `take-back` is sent, and the owner
//!   either reopens port 1 at once (`direct`: its device never left) or, its device already
//!   released, answers `abandoned 0 <held>` and gets the disk back as in a failback
//!   (`device_add` into its QEMU, `disk-attached`, `direct`). The held requests go to port 1 after
//!   those in flight there, in order. A guest is never left redirected with nowhere to send its
//!   I/O. The run then lets the owner finish its workload, and fails naming why the handoff could
//!   not complete.
//! - **Give-up.** Before the shim ends a run that failed with the owner still running, it fences
//!   the peer (SIGKILL: no late write can land) and sends `give-up` over the acknowledged control
//!   channel; the owner counts every request without a completion as failed and prints its report,
//!   so the host can still check every acknowledged write (lost = stale = 0) instead of only the
//!   integrity of each block.

use baton_core::control::HandoffState;

use crate::report::TakeBackReport as TakeBackFacts;

use super::*;

/// How long the owner has to print its report after `give-up`.
const GIVE_UP_TIMEOUT: Duration = Duration::from_secs(10);

impl Scenario<'_> {
    /// Whether the handoff that failed with `e` can be taken back: the switch was directed, port
    /// 2 has not opened, the owner's QEMU runs and the owner itself reported no error.
    pub(super) fn can_take_back(&mut self, e: &Abort) -> bool {
        let state = self.ctl.handoff.state();
        matches!(
            state,
            HandoffState::Redirecting | HandoffState::Drained | HandoffState::Released
        ) && !matches!(
            e,
            Abort::Interrupted | Abort::OwnerExited(_) | Abort::GuestError(_)
        ) && self.vms.owner.alive()
    }

    /// Takes the failed handoff back (`e`: why it failed); see the module docs. Ends with the
    /// owner's exit ([`Abort::OwnerExited`]) once it finished its workload on port 1, the cause
    /// recorded as the run's failure, or with the error that stopped the take-back.
    pub(super) fn take_back(&mut self, p: &mut Progress, e: Abort) -> Result<(), Abort> {
        let state = self.ctl.handoff.state();
        // A peer that died is the cause, whatever the step that ran into it reports (a QMP
        // socket's broken pipe, a timeout).
        let why = match self.vms.peer.poll_exit() {
            Some(st) if !self.vms.peer_lost => {
                self.facts.peer_failures += 1;
                let why = format!("the peer's QEMU exited ({})", describe_exit(st));
                self.facts
                    .recoveries
                    .push(format!("{why} during the handoff: taken back by the owner"));
                why
            }
            _ => chain(&e),
        };
        p.say(format!(
            "the handoff cannot complete ({why}): taking it back in state {state:?}"
        ));
        let mut facts = TakeBackFacts {
            why: why.clone(),
            from_state: format!("{state:?}"),
            ..TakeBackFacts::default()
        };
        let r = self.take_back_steps(p, &mut facts);
        facts.ok = r.is_ok();
        facts.error = r.as_ref().err().map(|e| chain(e));
        self.facts.take_back = Some(facts);
        self.out
            .failures
            .push(format!("the handoff was taken back: {why}"));
        r?;
        self.owner_finishes_on_port1(p)
    }

    fn take_back_steps(
        &mut self,
        p: &mut Progress,
        facts: &mut TakeBackFacts,
    ) -> Result<(), Abort> {
        // The peer may have the disk (its `device_add` went through) or may be about to use it:
        // fenced, nothing of it can reach the disk. Its QEMU held the image's lock, which goes
        // with the process.
        if !self.vms.peer_lost {
            facts.peer_fenced = self.vms.peer.alive();
            self.vms.peer.kill();
            self.vms.peer_lost = true;
            p.say("the peer is fenced (SIGKILL): nothing of it can reach the disk");
        }
        if let Err(why) = self.ctl.handoff.act(ShimAction::TakeBack) {
            return Err(Abort::Other(format!("cannot take the handoff back: {why}")));
        }
        self.send(Role::Owner, Message::TakeBack)?;
        let (msg, _) = self.wait_msg(p, Role::Owner, "the owner's answer to `take-back`", |m| {
            matches!(m, Message::Direct | Message::Abandoned { .. })
        })?;
        if let Message::Abandoned { replay, held } = msg {
            facts.held = Some(held);
            facts.replayed = Some(replay);
            facts.disk_replugged = true;
            self.facts.requests_replayed += u64::from(replay);
            p.say(format!(
                "the owner had released its device; {replay} forwarded requests to replay, \
                 {held} held: the disk goes back to it"
            ));
            self.replug_owner_disk(p)?;
            self.wait_msg(p, Role::Owner, "the owner's `direct`", |m| {
                matches!(m, Message::Direct)
            })?;
        }
        p.say(
            "taken back: the owner's port 1 is open again, the held requests went to it in order",
        );
        // The ring, if the owner was told of it, is unplugged from the owner alone.
        if self.record.reached(Step::RingOpened) {
            self.close_ring(p)?;
        }
        Ok(())
    }

    /// Plugs the disk into the owner's current QEMU again after a take-back: its block node
    /// (deleted when the peer's `device_add` went through), the device once QEMU released the
    /// old one, then `disk-attached`.
    fn replug_owner_disk(&mut self, p: &mut Progress) -> Result<(), Abort> {
        if !self.record.reached(Step::DriveReleased) {
            let mark = self.handoff_mark;
            self.wait_drive_released(p, mark)?;
        }
        self.add_owner_disk_node()?;
        let what = self.plug_owner_disk(p)?;
        p.say(what);
        Ok(())
    }

    /// Before a failed run ends: fences the peer and asks a running owner for its report
    /// (`give-up`), waiting at most [`GIVE_UP_TIMEOUT`] for its `BATON result` line. Whatever
    /// happens goes to the progress display and the notes; nothing here fails the run further.
    pub(super) fn give_up(&mut self, p: &mut Progress) {
        if !self.vms.peer_lost && self.vms.peer.alive() {
            self.vms.peer.kill();
            self.vms.peer_lost = true;
            p.say("giving up: the peer is fenced (SIGKILL)");
        }
        if !self.vms.owner.alive() || self.facts.owner_lines.result.is_some() {
            return;
        }
        match self.vms.owner.exec(&QueryStatus {}) {
            Ok(s) if s.running => {}
            Ok(s) => {
                self.note(format!(
                    "giving up: the owner's QEMU is {:?}, so it cannot report",
                    s.status
                ));
                return;
            }
            Err(e) => {
                self.note(format!("giving up: query-status: {}", chain(&e)));
                return;
            }
        }
        self.ctl.handoff.act(ShimAction::GiveUp).ok();
        if let Err(e) = self.send(Role::Owner, Message::GiveUp) {
            self.note(format!("giving up: {}", chain(&e)));
            return;
        }
        p.say("giving up: give-up sent; the owner fails what is in flight and reports");
        let until = Instant::now() + GIVE_UP_TIMEOUT;
        while Instant::now() < until
            && self.facts.owner_lines.result.is_none()
            && self.vms.owner.poll_exit().is_none()
        {
            // Control frames still need their acks; guest errors no longer matter here.
            let _ = self.ctl.owner.poll();
            self.read_consoles(p);
            std::thread::sleep(TICK);
        }
        if self.facts.owner_lines.result.is_some() {
            self.facts.given_up = true;
            p.say("giving up: the owner reported; every acknowledged write can be checked");
        } else {
            self.note(format!(
                "giving up: no report from the owner within {} s",
                GIVE_UP_TIMEOUT.as_secs()
            ));
        }
    }
}
