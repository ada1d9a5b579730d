//! The failback against the same fakes: `failback` (only while forwarding), the drain of port 2,
//! `disk-attached` (only after that drain; an unusable disk keeps the held requests), `close-ring`,
//! the switches handed to the workload's blackout meter, and any order of the whole cycle's
//! messages.

use super::*;
use crate::fakes::blk::Taken;
use crate::ports::Status;
use baton_core::redirector::Port;

impl Owner {
    /// Redirect (nothing in flight), ring opened, port 2 open: the owner forwards. Returns the
    /// peer's end of the ring.
    fn forwarding(&mut self) -> RingServer<'static> {
        self.shim(Message::Redirect);
        self.shim(Message::RingOpened { slot: 6 });
        self.shim(Message::OpenPort2);
        assert_eq!(self.stack.state(), State::Forwarding);
        RingServer::attach(self.ring.unwrap(), BLOCKS * SECTORS_PER_BLOCK).unwrap()
    }

    /// The peer performs everything on the ring; the owner takes the completions (their tags).
    fn peer_completes(&mut self, server: &mut RingServer<'static>) -> Vec<usize> {
        while let Some(sub) = server.poll_submission() {
            server.complete(&sub.unwrap(), ring::Status::Ok).unwrap();
        }
        self.take_completions(Port::Two)
    }

    /// Every completion the stack has now, all from `port`; their tags, in order.
    fn take_completions(&mut self, port: Port) -> Vec<usize> {
        let done: Vec<_> = std::iter::from_fn(|| self.stack.poll()).collect();
        for c in &done {
            assert_eq!((c.port, c.status), (port, Status::Ok));
            self.stack.release(c.tag);
        }
        done.iter().map(|c| c.tag).collect()
    }

    /// The hypervisor plugs a fresh disk for the failback (`open_disk` finds it).
    fn plug_disk(&self) -> DiskHandle {
        let (transport, disk) = FakeBlkTransport::new(BLOCKS * SECTORS_PER_BLOCK);
        disk.borrow_mut().hold = true;
        *self.slot_disk.borrow_mut() = Some(BlkDevice::new(transport).unwrap());
        disk
    }

    /// The last message the owner sent.
    fn last(&self) -> Message {
        *self.sent().last().unwrap()
    }
}

const UNEXPECTED: Message = Message::Error {
    code: codes::UNEXPECTED_MESSAGE,
};

/// The sectors of the writes of `lbas`, as a device takes them.
fn writes(lbas: &[u64]) -> Vec<Taken> {
    let write = |&lba: &u64| Taken {
        kind: Taken::WRITE,
        sector: lba * SECTORS_PER_BLOCK,
    };
    lbas.iter().map(write).collect()
}

#[test]
fn failback_outside_forwarding_is_unexpected_and_changes_nothing() {
    let mut o = owner(true);
    o.shim(Message::Failback);
    assert_eq!(o.last(), UNEXPECTED, "in Direct");
    assert_eq!(o.stack.state(), State::Direct);
    o.write(1);
    o.shim(Message::Redirect);
    assert_eq!(o.handoff.take_switch().map(|a| a.failback), Some(false));
    o.shim(Message::Failback);
    assert_eq!(o.last(), UNEXPECTED, "while port 1 drains");
    assert_eq!(o.stack.state(), State::Draining);
    o.disk.borrow_mut().complete(usize::MAX);
    o.take_completions(Port::One);
    o.handoff.poll(&mut o.stack);
    assert_eq!(o.stack.state(), State::Released);
    o.shim(Message::Failback);
    assert_eq!(o.last(), UNEXPECTED, "after the release");
    assert_eq!(o.stack.state(), State::Released);
    assert_eq!(o.handoff.failbacks, 0);
    assert_eq!(o.handoff.take_switch(), None);
    assert!(o.opened.borrow().is_empty());
    o.shim(Message::RingOpened { slot: 6 });
    o.shim(Message::OpenPort2);
    o.shim(Message::Failback);
    assert_eq!(o.stack.state(), State::FailbackDrained);
    o.shim(Message::Failback);
    assert_eq!(o.last(), UNEXPECTED, "a second failback");
    assert_eq!(o.stack.state(), State::FailbackDrained);
    assert_eq!(o.handoff.failbacks, 1);
}

#[test]
fn disk_attached_before_port_2_drained_is_refused() {
    let mut o = owner(true);
    let mut server = o.forwarding();
    let disk = o.plug_disk();
    let forwarded = [o.write(0), o.write(1)];
    o.shim(Message::DiskAttached { slot: DISK_SLOT });
    assert_eq!(o.last(), UNEXPECTED, "no failback yet");
    o.shim(Message::Failback);
    assert_eq!(o.stack.state(), State::FailbackDraining);
    let held = [o.write(10), o.write(11)];
    assert_eq!(o.stack.held(), 2);
    o.shim(Message::DiskAttached { slot: DISK_SLOT });
    assert_eq!(o.last(), UNEXPECTED, "port 2 still has requests");
    assert_eq!(o.stack.state(), State::FailbackDraining);
    assert!(o.opened.borrow().is_empty(), "the disk was not touched");
    assert!(o.slot_disk.borrow().is_some());
    assert_eq!(o.peer_completes(&mut server), forwarded);
    assert_eq!(o.stack.state(), State::FailbackDrained);
    assert!(
        !o.handoff.awaiting_shim(o.stack.state()),
        "`drained` is not sent yet: the guest must not halt"
    );
    o.handoff.poll(&mut o.stack);
    let drained = Message::Drained {
        completed: 2,
        held: 2,
    };
    assert_eq!(o.last(), drained);
    assert!(o.handoff.awaiting_shim(o.stack.state()));
    assert_eq!(o.handoff.held_at_failback, 2);
    o.shim(Message::DiskAttached { slot: DISK_SLOT });
    assert_eq!(o.last(), Message::Direct);
    assert_eq!(o.stack.state(), State::Direct);
    assert_eq!(*o.opened.borrow(), [DISK_SLOT]);
    assert_eq!(disk.borrow().taken, writes(&[10, 11]), "held, in order");
    disk.borrow_mut().complete(usize::MAX);
    assert_eq!(o.take_completions(Port::One), held);
    assert_eq!(o.stack.port2_requests, 2);
}

#[test]
fn an_unusable_disk_is_reported_and_the_held_requests_wait_for_the_next() {
    let mut o = owner(true);
    let mut server = o.forwarding();
    o.write(0);
    o.shim(Message::Failback);
    let held = [o.write(20), o.write(21), o.write(22)];
    o.peer_completes(&mut server);
    o.handoff.poll(&mut o.stack);
    o.shim(Message::DiskAttached { slot: DISK_SLOT });
    let unusable = Message::Error {
        code: codes::DISK_UNUSABLE,
    };
    assert_eq!(o.last(), unusable);
    assert_eq!(*o.opened.borrow(), [DISK_SLOT], "it looked");
    assert_eq!(o.stack.state(), State::FailbackDrained);
    assert_eq!(o.stack.held(), 3, "nothing lost");
    assert!(o.take_completions(Port::One).is_empty());
    let disk = o.plug_disk();
    o.shim(Message::DiskAttached { slot: DISK_SLOT });
    assert_eq!(o.last(), Message::Direct);
    assert_eq!(disk.borrow().taken, writes(&[20, 21, 22]));
    disk.borrow_mut().complete(usize::MAX);
    assert_eq!(o.take_completions(Port::One), held);
    let names = o.sent_names();
    assert_eq!(names.iter().filter(|n| **n == "drained").count(), 2);
}

#[test]
fn close_ring_ejects_the_slot_and_the_next_cycle_formats_the_ring_again() {
    let mut o = owner(true);
    let mut server = o.forwarding();
    o.shim(Message::CloseRing { slot: 6 });
    assert_eq!(o.last(), UNEXPECTED, "not while forwarding");
    assert!(o.stack.has_port2());
    o.write(3);
    o.shim(Message::Failback);
    o.peer_completes(&mut server);
    o.handoff.poll(&mut o.stack);
    let disk = o.plug_disk();
    o.shim(Message::DiskAttached { slot: DISK_SLOT });
    assert_eq!(*o.ejected.borrow(), [DISK_SLOT]);
    o.shim(Message::CloseRing { slot: 6 });
    assert!(!o.stack.has_port2(), "port 2 let go of the ring");
    assert_eq!(*o.ejected.borrow(), [DISK_SLOT, 6]);
    let tag = o.write(5);
    disk.borrow_mut().complete(usize::MAX);
    assert_eq!(o.take_completions(Port::One), [tag]);
    // The next cycle: the returned disk is released, the same memory formatted again.
    let resets = disk.borrow().resets;
    let mut server = o.forwarding();
    assert_eq!(*o.ejected.borrow(), [DISK_SLOT, 6, DISK_SLOT]);
    assert_eq!(
        disk.borrow().resets,
        resets + 1,
        "quiesced before the eject"
    );
    let tag = o.write(7);
    assert_eq!(o.peer_completes(&mut server), [tag]);
    let names = o.sent_names();
    let cycle = ["drained", "released", "forwarding"];
    let expected: Vec<&str> = ["hello"]
        .into_iter()
        .chain(cycle)
        .chain(["error", "drained", "direct"])
        .chain(cycle)
        .collect();
    assert_eq!(names, expected);
}

#[test]
fn take_switch_yields_each_handoff_and_failback_once() {
    let mut o = owner(true);
    assert_eq!(o.handoff.take_switch(), None);
    for n in 1..=2 {
        o.shim(Message::Redirect);
        let handoff = SwitchArm { failback: false, n };
        assert_eq!(o.handoff.take_switch(), Some(handoff));
        assert_eq!(o.handoff.take_switch(), None);
        o.shim(Message::RingOpened { slot: 6 });
        o.shim(Message::OpenPort2);
        o.shim(Message::Redirect);
        assert_eq!(
            o.handoff.take_switch(),
            None,
            "a refused message arms nothing"
        );
        o.shim(Message::Failback);
        let failback = SwitchArm { failback: true, n };
        assert_eq!(o.handoff.take_switch(), Some(failback));
        o.plug_disk();
        o.shim(Message::DiskAttached { slot: DISK_SLOT });
        o.shim(Message::CloseRing { slot: 6 });
        assert_eq!(o.handoff.take_switch(), None);
    }
    assert_eq!((o.handoff.handoffs, o.handoff.failbacks), (2, 2));
}

#[test]
fn failback_is_requested_once_per_handoff_and_only_while_forwarding() {
    let mut o = owner(true);
    o.handoff.request_failback(State::Direct);
    assert_eq!(o.sent_names(), ["hello"]);
    o.forwarding();
    o.handoff.request_failback(o.stack.state());
    o.handoff.request_failback(o.stack.state());
    assert_eq!(o.last(), Message::FailbackRequest);
    let asked = |o: &Owner| {
        let names = o.sent_names();
        names.iter().filter(|n| **n == "failback-request").count()
    };
    assert_eq!(asked(&o), 1);
    o.shim(Message::Failback);
    o.plug_disk();
    o.shim(Message::DiskAttached { slot: DISK_SLOT });
    o.shim(Message::CloseRing { slot: 6 });
    o.forwarding();
    o.handoff.request_failback(o.stack.state());
    assert_eq!(asked(&o), 2, "asked again after the next handoff");
}

#[test]
fn close_ring_or_redirect_out_of_turn_is_unexpected_and_changes_nothing() {
    let mut o = owner(true);
    o.shim(Message::CloseRing { slot: 6 });
    assert_eq!(o.last(), UNEXPECTED, "no ring to close");
    assert!(o.ejected.borrow().is_empty(), "nothing ejected");
    let mut server = o.forwarding();
    o.shim(Message::Failback);
    o.plug_disk();
    o.shim(Message::DiskAttached { slot: DISK_SLOT });
    assert_eq!(o.stack.state(), State::Direct);
    o.shim(Message::Redirect);
    assert_eq!(o.last(), UNEXPECTED, "the last cycle's ring is still open");
    assert_eq!(o.stack.state(), State::Direct);
    assert_eq!(o.handoff.take_switch().map(|a| a.failback), Some(true));
    o.shim(Message::CloseRing { slot: 6 });
    o.shim(Message::CloseRing { slot: 6 });
    assert_eq!(o.last(), UNEXPECTED, "closed once");
    assert_eq!(*o.ejected.borrow(), [DISK_SLOT, 6]);
    assert!(server.poll_submission().is_none());
}

/// Where the shim stands in the random sequences below: the ring's server end (while the owner
/// has one) and the disks the owner was given, the one behind port 1 last.
struct World {
    server: Option<RingServer<'static>>,
    disks: Vec<DiskHandle>,
    plugged: Option<DiskHandle>,
}

impl World {
    /// Requests the owner's disks took, all together.
    fn taken(&self) -> usize {
        self.disks.iter().map(|d| d.borrow().taken.len()).sum()
    }
}

#[test]
fn any_order_of_cycle_messages_and_completions_loses_nothing() {
    let cycle = ["drained", "released", "forwarding", "drained", "direct"];
    let mut cycles = 0;
    for seed in 1..=300u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let mut o = owner(true);
        let mut w = World {
            server: None,
            disks: vec![o.disk.clone()],
            plugged: None,
        };
        let mut outstanding = std::collections::BTreeSet::new();
        let mut submitted = 0;
        for _ in 0..200 {
            let (taken, port2) = (w.taken(), o.stack.port2_requests);
            match rng.below(9) {
                0 => o.shim(Message::Redirect),
                1 => o.shim(Message::RingOpened { slot: 6 }),
                2 => o.shim(Message::OpenPort2),
                3 => o.shim(Message::Failback),
                4 => {
                    if rng.below(4) != 0 {
                        w.plugged = Some(o.plug_disk());
                    }
                    o.shim(Message::DiskAttached { slot: DISK_SLOT });
                }
                5 => o.shim(Message::CloseRing { slot: 6 }),
                6 if o.stack.outstanding() < 8 => {
                    assert!(outstanding.insert(o.write(submitted % BLOCKS)));
                    submitted += 1;
                }
                7 => {
                    let n = rng.below(3) as usize;
                    w.disks.iter().for_each(|d| d.borrow_mut().complete(n));
                }
                _ => {
                    for _ in 0..rng.below(3) {
                        let server = w.server.as_mut();
                        let Some(sub) = server.and_then(|s| s.poll_submission()) else {
                            break;
                        };
                        let sub = sub.unwrap();
                        let server = w.server.as_mut().unwrap();
                        server.complete(&sub, ring::Status::Ok).unwrap();
                    }
                }
            }
            while let Some(c) = o.stack.poll() {
                assert_eq!(c.status, Status::Ok, "seed {seed}");
                assert!(outstanding.remove(&c.tag), "seed {seed}: {} twice", c.tag);
                o.stack.release(c.tag);
            }
            o.handoff.poll(&mut o.stack);
            if o.stack.has_port2() != w.server.is_some() {
                w.server = o
                    .stack
                    .has_port2()
                    .then(|| RingServer::attach(o.ring.unwrap(), BLOCKS * SECTORS_PER_BLOCK))
                    .map(Result::unwrap);
            }
            if w.plugged.is_some() && o.slot_disk.borrow().is_none() {
                w.disks.extend(w.plugged.take());
            }
            let state = o.stack.state();
            if state != State::Direct {
                // Claim 1 both ways: nothing reaches port 1 after the switch until the disk
                // is back, and nothing crosses the ring except while forwarding.
                assert_eq!(w.taken(), taken, "seed {seed}: port 1 in {state:?}");
            }
            if state != State::Forwarding {
                assert_eq!(
                    o.stack.port2_requests, port2,
                    "seed {seed}: port 2 in {state:?}"
                );
            }
        }
        assert_eq!(outstanding.len(), o.stack.outstanding(), "seed {seed}");
        let names: Vec<&str> = o.sent_names().into_iter().skip(1).collect();
        let names: Vec<&str> = names
            .into_iter()
            .filter(|n| !["error", "failback-request"].contains(n))
            .collect();
        let expected = cycle.iter().cycle().take(names.len());
        assert!(names.iter().eq(expected), "seed {seed}: {names:?}");
        let ejects = [DISK_SLOT, 6].into_iter().cycle();
        let ejected = o.ejected.borrow();
        assert!(
            ejected.iter().copied().eq(ejects.take(ejected.len())),
            "seed {seed}: {ejected:?}"
        );
        cycles += names.iter().filter(|n| **n == "direct").count();
    }
    assert!(cycles > 30, "only {cycles} cycles in 300 sequences");
}
