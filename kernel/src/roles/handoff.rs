//! The owner's side of the handoff (US 20070204265A1 claim 1). The sequence diagram in
//! docs/design.md ("The handoff") shows where each of these falls among the shim's and the peer's
//! steps, under the step names the shim records (`Directed`, `RingOpened`, `Drained`, ...).
//!
//! Polled from the owner's main loop, next to the workload:
//! 1. `redirect` from the shim (step `Directed`, sent when the operator directs a save/migrate, or
//!    after this guest asked with `migrate-request`): the redirector switches; new requests are
//!    held for port 2 while port 1 drains.
//! 2. When port 1 has nothing in flight (redirector `Drained`): the device is reset, the
//!    redirector moves to `Released`, and the guest reports `drained` and `released` (steps
//!    `Drained` and `Released`); once the shim acknowledged them, the slot is ejected through the
//!    ACPI hotplug register.
//! 3. `ring-opened <slot>` (step `RingOpened`; may arrive any time after `redirect`): the ivshmem
//!    device is set up and the ring formatted; it becomes port 2.
//! 4. `open-port2`, or before it the peer's `Ready` in the ring (it attaches once the disk is up
//!    behind it): the held requests, then all new ones, are forwarded over the ring in order; the
//!    guest reports `forwarding` (step `PortOpen`) in answer to `open-port2`.
//!
//! The failback (docs/design.md, "Failback"), the same steps in reverse:
//! 5. `failback` (the owner runs at its destination, or asked with `failback-request`): new
//!    requests are held while port 2 drains; once nothing is in flight there (redirector
//!    `FailbackDrained`) the guest reports `drained`.
//! 6. `disk-attached <slot>` (the peer released the disk and the shim plugged it here): the BARs
//!    are placed, virtio-blk initialised, the device goes behind port 1 and the held requests go
//!    to it first, in order; the guest reports `direct`.
//! 7. `close-ring <slot>`: port 2 lets go of the ring and the ivshmem slot is ejected; the next
//!    `redirect` starts another cycle.
//!
//! A handoff that cannot complete (docs/design.md, "A handoff taken back"):
//! 8. `take-back` before port 2 opened: with the device still attached (port 1 draining), port 1
//!    reopens, the held requests go to it after those in flight, and the guest reports `direct`;
//!    with the device already released, the guest reports `abandoned 0 <held>` and takes the disk
//!    back at `disk-attached` (step 6).
//! 9. `give-up` (the shim ends the run): the workload submits nothing more, counts every request
//!    without a completion as failed and reports, so the host can check every acknowledged write.
//!
//! Where the owner is in the handoff is the redirector's own [`State`] (read from the stack), not
//! a second copy of it: `Direct` before `redirect`, `Draining`/`Drained` until the release,
//! `Released` until `open-port2`, `Forwarding` after, `FailbackDraining`/`FailbackDrained` until
//! the disk is back, `Direct` again.
//!
//! This is the owner's half of the protocol; the shim's half, which messages it accepts from
//! which guest in which step, is the transition table of `baton_core::control::handoff`. Every
//! message this driver sends or accepts is a `baton_core::control::Message`, under the same name
//! on both sides.

use super::{ControlLink, OwnerPlatform};
use crate::ports::BlockPort;
use crate::stack::ResourceStack;
use crate::steps;
use baton_core::cmdline::Role as GuestRole;
use baton_core::console::SwitchKind;
use baton_core::control::{Message, PROTOCOL_VERSION, Role};
use baton_core::guest_steps::StepName;
use baton_core::redirector::State;
use baton_core::ring::RingClient;
use virtio_drivers::Hal;

/// Error codes sent in `error` messages.
pub mod codes {
    /// A message arrived in a state where it makes no sense.
    pub const UNEXPECTED_MESSAGE: u32 = 1;
    /// The ivshmem device could not be used.
    pub const RING_UNUSABLE: u32 = 2;
    /// `open-port2` came before the ring or before the release.
    pub const NOT_READY: u32 = 3;
    /// The disk plugged for the failback could not be brought up.
    pub const DISK_UNUSABLE: u32 = 4;
}

/// A switch of ports whose blackout the workload should measure (the owner's main loop passes it
/// on): handoff `n` (to port 2) or failback `n` (back to port 1), counted from 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SwitchArm {
    /// `true`: a failback (the first port-1 completion ends it); `false`: a handoff (the first
    /// port-2 completion ends it).
    pub failback: bool,
    /// Which handoff or failback of this guest's life it is.
    pub n: u32,
}

/// Control-channel polls are spaced this far apart (port I/O is a VM exit).
pub const POLL_INTERVAL_US: u64 = 500;

/// A peer whose heartbeat in the ring has not moved for this long while forwarded requests wait
/// for it has stopped serving: the owner says `peer-stalled` (once per handoff). A serving peer
/// beats on every round of its loop; the shim's own watch of the same word waits 5 s, so the
/// owner, which sees its requests wait, usually speaks first.
pub const PEER_STALL_US: u64 = 3_000_000;

/// The owner's handoff driver, over control link `C` and platform `P`.
pub struct OwnerHandoff<C: ControlLink, P: OwnerPlatform> {
    ctl: Option<C>,
    platform: P,
    disk_slot: u8,
    migrate_asked: bool,
    failback_asked: bool,
    /// `drained` was sent for the failback under way.
    failback_drained_sent: bool,
    next_poll_us: u64,
    /// A switch that just began, for the workload's blackout meter.
    armed: Option<SwitchArm>,
    /// The ring's ivshmem device is plugged (from `ring-opened` to `close-ring`), whether or not
    /// port 2 still uses it (a lost peer's ring stays plugged until `close-ring`).
    ring_plugged: bool,
    /// Handoffs directed so far.
    pub handoffs: u32,
    /// Failbacks directed so far.
    pub failbacks: u32,
    /// Requests held at port 2 when port 1 finished draining (the first handoff).
    pub held_at_switch: u64,
    /// Requests held while port 2 drained, at the last failback.
    pub held_at_failback: u64,
    /// Forwarded requests replayed on port 1 because the peer died.
    pub replayed: u64,
    /// The shim sent `give-up`: the workload stops and reports.
    given_up: bool,
    /// The peer's last heartbeat value and when it was first seen (µs), while requests wait.
    peer_beat: Option<(u32, u64)>,
    /// `peer-stalled` was sent in this handoff.
    stall_reported: bool,
    /// The slot of a released disk whose eject waits until the shim acknowledged `released`.
    eject_pending: Option<u8>,
    /// Port 2 was opened when the peer attached to the ring, before `open-port2` came; the
    /// `forwarding` report waits for it.
    opened_early: bool,
}

impl<C: ControlLink, P: OwnerPlatform> OwnerHandoff<C, P> {
    /// A driver for the disk in PCI slot `disk_slot`; says hello on `ctl` (`None`: the guest has
    /// no control channel, so no handoff can be directed).
    pub fn new(ctl: Option<C>, platform: P, disk_slot: u8, vm: u32) -> Self {
        let mut ctl = ctl;
        if let Some(ctl) = ctl.as_mut() {
            ctl.send(Message::Hello {
                role: Role::Owner,
                vm,
                version: PROTOCOL_VERSION,
            });
        }
        OwnerHandoff {
            ctl,
            platform,
            disk_slot,
            migrate_asked: false,
            failback_asked: false,
            failback_drained_sent: false,
            next_poll_us: 0,
            armed: None,
            ring_plugged: false,
            handoffs: 0,
            failbacks: 0,
            held_at_switch: 0,
            held_at_failback: 0,
            replayed: 0,
            given_up: false,
            peer_beat: None,
            stall_reported: false,
            eject_pending: None,
            opened_early: false,
        }
    }

    /// Whether the shim gave the run up (`give-up`): the workload must stop and report.
    pub fn given_up(&self) -> bool {
        self.given_up
    }

    /// The switch that began since the last call, if any (at most one begins per poll).
    pub fn take_switch(&mut self) -> Option<SwitchArm> {
        self.armed.take()
    }

    /// Whether a frame from the shim is arriving (its first bytes came in).
    pub fn link_receiving(&self) -> bool {
        self.ctl.as_ref().is_some_and(|c| c.receiving())
    }

    /// Whether the owner has nothing to do until the shim (or the peer's side of the ring)
    /// moves: the device is released and port 2 not open, or port 2 drained in a failback and
    /// `drained` sent. The guest may halt then; before `drained` went it must not (the shim
    /// would wait for the owner's next tick).
    pub fn awaiting_shim(&self, state: State) -> bool {
        match state {
            State::Released => true,
            State::FailbackDrained => self.failback_drained_sent,
            _ => false,
        }
    }

    /// The control link, for tests and diagnostics.
    pub fn link(&mut self) -> Option<&mut C> {
        self.ctl.as_mut()
    }

    /// Asks the shim to migrate this guest (once).
    pub fn request_migration(&mut self) {
        if !self.migrate_asked {
            self.migrate_asked = true;
            if let Some(ctl) = self.ctl.as_mut() {
                log::info!("handoff: asking to be migrated");
                ctl.send(Message::MigrateRequest);
            }
        }
    }

    /// Asks the shim to give the disk back (once per handoff; only while forwarding).
    pub fn request_failback(&mut self, state: State) {
        // Not before `forwarding` was reported: the shim takes the request only once it knows
        // port 2 is open.
        if !self.failback_asked && state == State::Forwarding && !self.opened_early {
            self.failback_asked = true;
            if let Some(ctl) = self.ctl.as_mut() {
                log::info!("handoff: asking for the disk back");
                ctl.send(Message::FailbackRequest);
            }
        }
    }

    /// One step: finish a drain if it is done, and act on at most one control message (the link
    /// is read when its interrupt says bytes arrived, and at least every [`POLL_INTERVAL_US`]).
    pub fn poll<H: Hal>(&mut self, stack: &mut ResourceStack<H, P::Disk>) {
        match stack.state() {
            State::Drained => self.release_device(stack),
            State::FailbackDrained if !self.failback_drained_sent => self.failback_drained(stack),
            _ => {}
        }
        self.eject_released();
        self.open_when_peer_attached(stack);
        let now = self.platform.now_us();
        self.watch_peer(stack, now);
        let Some(ctl) = self.ctl.as_mut() else {
            return;
        };
        // Bytes that arrived are read at once; otherwise the link is polled every
        // POLL_INTERVAL_US (acks, retransmissions).
        if now < self.next_poll_us && !ctl.arrived() {
            return;
        }
        self.next_poll_us = now + POLL_INTERVAL_US;
        let msg = ctl.poll();
        // The poll may have brought the acknowledgement the eject waits for.
        self.eject_released();
        if let Some(msg) = msg {
            self.on_message(stack, msg);
        }
    }

    /// Acts on one message from the shim in the redirector's current state.
    fn on_message<H: Hal>(&mut self, stack: &mut ResourceStack<H, P::Disk>, msg: Message) {
        let state = stack.state();
        match (msg, state) {
            (Message::Redirect, State::Direct) if !self.ring_plugged => {
                match stack.direct_switch() {
                    Ok(state) => log::info!("handoff: redirect directed, redirector {state:?}"),
                    Err(e) => panic!("handoff: {e}"),
                }
                self.handoffs += 1;
                steps::begin(GuestRole::Owner, SwitchKind::Handoff, self.handoffs);
                steps::mark(StepName::Redirect);
                self.failback_asked = false;
                self.stall_reported = false;
                self.armed = Some(SwitchArm {
                    failback: false,
                    n: self.handoffs,
                });
                if stack.state() == State::Drained {
                    self.release_device(stack);
                }
            }
            (Message::Failback, State::Forwarding) if !self.opened_early => {
                match stack.begin_failback() {
                    Ok(state) => log::info!("handoff: failback directed, redirector {state:?}"),
                    Err(e) => panic!("handoff: {e}"),
                }
                self.failbacks += 1;
                steps::begin(GuestRole::Owner, SwitchKind::Failback, self.failbacks);
                steps::mark(StepName::Failback);
                self.failback_drained_sent = false;
                self.armed = Some(SwitchArm {
                    failback: true,
                    n: self.failbacks,
                });
                if stack.state() == State::FailbackDrained {
                    self.failback_drained(stack);
                }
            }
            (
                Message::PeerLost,
                State::Forwarding | State::FailbackDraining | State::FailbackDrained,
            ) => {
                if state == State::Forwarding {
                    self.failbacks += 1;
                    self.armed = Some(SwitchArm {
                        failback: true,
                        n: self.failbacks,
                    });
                }
                self.abandon_port2(stack, "the peer is gone");
            }
            (Message::TakeBack, State::Draining | State::Drained | State::Released) => {
                self.take_back(stack, state);
            }
            (Message::TakeBack, State::Forwarding) if self.opened_early => {
                // Port 2 opened on the ring before the shim gave up on the handoff (it fenced
                // the peer first): as for a lost peer, what was forwarded is replayed on port 1
                // once the disk is back, after the held requests.
                self.opened_early = false;
                self.abandon_port2(stack, "taken back after port 2 opened");
            }
            (Message::GiveUp, _) => {
                log::warn!("handoff: the shim gave the run up in state {state:?}");
                self.given_up = true;
            }
            (Message::DiskAttached { slot }, State::FailbackDrained)
                if self.failback_drained_sent =>
            {
                self.reattach(stack, slot);
            }
            (Message::CloseRing { slot }, State::Direct) if self.ring_plugged => {
                self.ring_plugged = false;
                if stack.detach_port2().is_some() {
                    log::info!("handoff: port 2 closed, ejecting the ring's slot {slot}");
                }
                self.platform.eject(slot);
            }
            (Message::RingOpened { slot }, State::Draining | State::Drained | State::Released)
                if !self.ring_plugged =>
            {
                // Plugged, usable or not: `close-ring` ejects it either way.
                self.ring_plugged = true;
                let client = self.platform.open_ring(slot).and_then(|region| {
                    RingClient::format(region)
                        .map_err(|e| log::error!("handoff: cannot format the ring: {e}"))
                        .ok()
                });
                match client {
                    Some(client) => {
                        log::info!(
                            "handoff: ring formatted, {} slots",
                            client.layout().slot_count()
                        );
                        stack.attach_port2(client);
                    }
                    None => self.send(Message::Error {
                        code: codes::RING_UNUSABLE,
                    }),
                }
            }
            (Message::OpenPort2, State::Forwarding) if self.opened_early => {
                self.opened_early = false;
                self.send(Message::Forwarding);
            }
            (Message::OpenPort2, State::Released) if stack.has_port2() => {
                match stack.open_port2() {
                    Ok(state) => {
                        steps::mark(StepName::Port2Open);
                        self.send(Message::Forwarding);
                        log::info!("handoff: port 2 open, redirector {state:?}");
                    }
                    Err(e) => panic!("handoff: {e}"),
                }
            }
            (Message::OpenPort2, _) => {
                log::warn!("handoff: open-port2 in state {state:?}");
                self.send(Message::Error {
                    code: codes::NOT_READY,
                });
            }
            (msg, state) => {
                log::warn!("handoff: unexpected {} in state {state:?}", msg.name());
                self.send(Message::Error {
                    code: codes::UNEXPECTED_MESSAGE,
                });
            }
        }
    }

    /// Gives port 2 up (the peer is gone, or the handoff was taken back after port 2 opened):
    /// the redirector counts what was forwarded and not completed (replayed on port 1, first,
    /// once the disk is back) and what is held, and the shim hears `abandoned` with both counts.
    /// `why` heads the log line.
    fn abandon_port2<H: Hal>(&mut self, stack: &mut ResourceStack<H, P::Disk>, why: &str) {
        let (replay, held) = match stack.peer_lost() {
            Ok(counts) => counts,
            Err(e) => panic!("handoff: {e}"),
        };
        log::warn!(
            "handoff: {why}; port 2 abandoned, {replay} forwarded requests to replay, {held} held"
        );
        self.held_at_failback = u64::from(held);
        self.replayed += u64::from(replay);
        self.failback_drained_sent = true;
        self.send(Message::Abandoned {
            replay: u32::from(replay),
            held: u32::from(held),
        });
    }

    /// Watches the peer's heartbeat while forwarded requests wait for it (port 2 in use, in
    /// `Forwarding` or `FailbackDraining`); says `peer-stalled` once when it froze for
    /// [`PEER_STALL_US`].
    fn watch_peer<H: Hal>(&mut self, stack: &ResourceStack<H, P::Disk>, now: u64) {
        let watching = matches!(stack.state(), State::Forwarding | State::FailbackDraining);
        let beat = stack
            .peer_heartbeat()
            .filter(|&(_, waiting)| waiting && watching);
        let Some((beat, _)) = beat else {
            self.peer_beat = None;
            return;
        };
        match self.peer_beat {
            Some((last, since)) if last == beat => {
                let frozen = now.saturating_sub(since);
                if frozen >= PEER_STALL_US && !self.stall_reported {
                    self.stall_reported = true;
                    log::warn!(
                        "handoff: the peer's heartbeat froze for {} ms with requests waiting",
                        frozen / 1000
                    );
                    self.send(Message::PeerStalled {
                        ms: u32::try_from(frozen / 1000).unwrap_or(u32::MAX),
                    });
                }
            }
            _ => self.peer_beat = Some((beat, now)),
        }
    }

    /// The handoff is taken back in `from` (`Draining`, `Drained` or `Released`): port 1 reopens
    /// at once if the device is still here (`direct`), or once the shim plugs it again
    /// (`abandoned 0 <held>`, then `disk-attached`).
    fn take_back<H: Hal>(&mut self, stack: &mut ResourceStack<H, P::Disk>, from: State) {
        let held = stack.held();
        match stack.take_back() {
            Ok(State::Direct) => {
                log::warn!(
                    "handoff: taken back in {from:?}; port 1 reopened, {held} held requests sent to it"
                );
                self.send(Message::Direct);
            }
            Ok(state) => {
                log::warn!(
                    "handoff: taken back after the release; {held} requests held until the disk is back ({state:?})"
                );
                self.held_at_failback = u64::from(held);
                self.failback_drained_sent = true;
                self.send(Message::Abandoned {
                    replay: 0,
                    held: u32::from(held),
                });
            }
            Err(e) => panic!("handoff: {e}"),
        }
    }

    /// Port 2 drained during a failback: tell the shim, which moves the disk back.
    fn failback_drained<H: Hal>(&mut self, stack: &mut ResourceStack<H, P::Disk>) {
        steps::mark(StepName::Drained);
        let held = stack.held();
        self.held_at_failback = u64::from(held);
        self.failback_drained_sent = true;
        self.send(Message::Drained {
            completed: stack.port2_requests,
            held: u32::from(held),
        });
        log::info!(
            "handoff: port 2 drained ({} requests forwarded), {held} held for port 1",
            stack.port2_requests
        );
    }

    /// The failback's disk arrived in `slot`: bring it up behind port 1, send the held requests
    /// to it first, tell the shim.
    fn reattach<H: Hal>(&mut self, stack: &mut ResourceStack<H, P::Disk>, slot: u8) {
        steps::mark(StepName::DiskAttached);
        let Some(dev) = self.platform.open_disk(slot) else {
            self.send(Message::Error {
                code: codes::DISK_UNUSABLE,
            });
            return;
        };
        stack.attach_port1(dev);
        self.disk_slot = slot;
        self.failback_drained_sent = false;
        // `direct` goes out before the held requests do, so that the shim hears of port 1's
        // reopening before the first port-1 completion is reported on the console.
        self.send(Message::Direct);
        steps::mark(StepName::Direct);
        match stack.device_attached() {
            Ok(state) => log::info!(
                "handoff: disk back in slot {slot}, {} held requests sent to port 1, redirector {state:?}",
                self.held_at_failback
            ),
            Err(e) => panic!("handoff: {e}"),
        }
    }

    /// Port 1 drained: quiesce the device, tell the shim, eject it once the shim has the frames.
    fn release_device<H: Hal>(&mut self, stack: &mut ResourceStack<H, P::Disk>) {
        steps::mark(StepName::Drained);
        let held = stack.held();
        if self.handoffs <= 1 {
            self.held_at_switch = u64::from(held);
        }
        let completed = stack.port1_requests;
        // `drained` first: it says only that port 1 has nothing in flight, and its round trip
        // through the shim overlaps the device's reset (about 1.4 ms under TCG), which
        // `released` must wait for.
        self.send(Message::Drained {
            completed,
            held: u32::from(held),
        });
        if let Some(dev) = stack.detach_port1() {
            dev.release();
        }
        if let Err(e) = stack.device_released() {
            panic!("handoff: {e}");
        }
        // The device is reset (no request at it, no DMA): `released` may go. The eject waits
        // until the shim has the frame: QEMU tears the device down inside the eject's port write,
        // holding its big lock for milliseconds, and the frames' bytes need that lock too
        // (docs/design.md, "Where the blackout goes"). A console line costs a VM exit per byte,
        // so it comes after the frames.
        self.send(Message::Released {
            slot: self.disk_slot,
        });
        steps::mark(StepName::Released);
        self.eject_pending = Some(self.disk_slot);
        self.eject_released();
        log::info!(
            "handoff: port 1 drained ({completed} requests), {held} held, slot {} released",
            self.disk_slot
        );
    }

    /// Opens port 2 as soon as the peer attached to the ring after the device was released: the
    /// peer attaches only once the disk is up behind it, which is what `open-port2` would say a
    /// frame's round trip through the shim later (docs/design.md, "Where the blackout goes").
    /// The `forwarding` report still answers `open-port2`, so the shim's view of the handoff
    /// keeps its order (I2).
    fn open_when_peer_attached<H: Hal>(&mut self, stack: &mut ResourceStack<H, P::Disk>) {
        if stack.state() != State::Released || !stack.peer_attached() {
            return;
        }
        match stack.open_port2() {
            Ok(_) => {
                self.opened_early = true;
                steps::mark(StepName::Port2Open);
            }
            Err(e) => panic!("handoff: {e}"),
        }
    }

    /// Ejects the released disk's slot once the shim acknowledged every frame (`released` among
    /// them), or at once without a control channel.
    fn eject_released(&mut self) {
        let Some(slot) = self.eject_pending else {
            return;
        };
        if self.ctl.as_ref().is_none_or(|c| c.idle()) {
            self.eject_pending = None;
            self.platform.eject(slot);
            steps::mark(StepName::Ejected);
        }
    }

    fn send(&mut self, msg: Message) {
        if let Some(ctl) = self.ctl.as_mut()
            && !ctl.send(msg)
        {
            log::error!("control: send queue full, {} dropped", msg.name());
        }
    }

    /// Keeps the control channel moving until everything queued was acknowledged or `us` passed.
    pub fn flush(&mut self, us: u64) {
        let deadline = self.platform.now_us().saturating_add(us);
        if let Some(ctl) = self.ctl.as_mut() {
            while !ctl.idle() && self.platform.now_us() < deadline {
                if let Some(msg) = ctl.poll() {
                    log::warn!("handoff: ignoring {} after the workload", msg.name());
                }
                core::hint::spin_loop();
            }
        }
    }
}

#[cfg(test)]
#[path = "handoff_tests.rs"]
mod tests;
