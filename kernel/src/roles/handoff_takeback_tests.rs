//! A handoff taken back before port 2 opened, or after it opened early as the peer attached (`take-back`), a run given up (`give-up`), and the
//! owner's watch of the peer's heartbeat (`peer-stalled`), against the same fakes: nothing held is
//! lost, nothing reaches port 2 after a take-back, and the held requests go to port 1 after those
//! already in flight there.

use super::*;
use crate::fakes::blk::Taken;
use crate::ports::Status;
use baton_core::redirector::Port;
use baton_core::ring::RingServer;

/// The sectors of the writes of `lbas`, as a device takes them.
fn writes(lbas: &[u64]) -> Vec<Taken> {
    let write = |&lba: &u64| Taken {
        kind: Taken::WRITE,
        sector: lba * SECTORS_PER_BLOCK,
    };
    lbas.iter().map(write).collect()
}

const UNEXPECTED: Message = Message::Error {
    code: codes::UNEXPECTED_MESSAGE,
};

impl Owner {
    /// The hypervisor plugs the disk again (`open_disk` finds it).
    fn plug_again(&self) -> DiskHandle {
        let (transport, disk) = FakeBlkTransport::new(BLOCKS * SECTORS_PER_BLOCK);
        disk.borrow_mut().hold = true;
        *self.slot_disk.borrow_mut() = Some(BlkDevice::new(transport).unwrap());
        disk
    }

    /// Every completion the stack has now, all from port 1 and good; their tags, in order.
    fn port1_completions(&mut self) -> Vec<usize> {
        let done: Vec<_> = std::iter::from_fn(|| self.stack.poll()).collect();
        for c in &done {
            assert_eq!((c.port, c.status), (Port::One, Status::Ok));
            self.stack.release(c.tag);
        }
        done.iter().map(|c| c.tag).collect()
    }
}

#[test]
fn taken_back_while_port_1_drains_the_held_requests_follow_the_in_flight_ones() {
    let mut o = owner(true);
    let early = [o.write(0), o.write(1)];
    o.shim(Message::Redirect);
    o.shim(Message::RingOpened { slot: 6 });
    let held = [o.write(10), o.write(11)];
    assert_eq!(o.stack.state(), State::Draining);
    o.shim(Message::TakeBack);
    assert_eq!(o.sent().last(), Some(&Message::Direct));
    assert_eq!(o.stack.state(), State::Direct);
    assert!(o.ejected.borrow().is_empty(), "the device stays");
    // The device took the early writes first, then the held ones, in order.
    assert_eq!(o.disk.borrow().taken, writes(&[0, 1, 10, 11]));
    o.disk.borrow_mut().complete(usize::MAX);
    let done = o.port1_completions();
    assert_eq!(done, [early, held].concat());
    // New requests go straight to port 1; `close-ring` ejects the unused ring's slot.
    o.write(12);
    assert_eq!(o.disk.borrow().taken.len(), 5);
    o.shim(Message::CloseRing { slot: 6 });
    assert_eq!(*o.ejected.borrow(), [6]);
    assert!(!o.stack.has_port2());
    // The next handoff can start.
    o.disk.borrow_mut().complete(usize::MAX);
    o.port1_completions();
    o.shim(Message::Redirect);
    assert_eq!(
        o.stack.state(),
        State::Released,
        "drained at once and released"
    );
}

#[test]
fn taken_back_after_the_release_the_disk_comes_back_with_the_held_requests() {
    let mut o = owner(true);
    o.write(0);
    o.shim(Message::Redirect);
    o.disk.borrow_mut().complete(usize::MAX);
    o.port1_completions();
    o.handoff.poll(&mut o.stack);
    assert_eq!(o.stack.state(), State::Released);
    assert_eq!(*o.ejected.borrow(), [DISK_SLOT]);
    let held = [o.write(20), o.write(21)];
    o.shim(Message::TakeBack);
    assert_eq!(
        o.sent().last(),
        Some(&Message::Abandoned { replay: 0, held: 2 })
    );
    assert_eq!(o.stack.state(), State::FailbackDrained);
    let disk = o.plug_again();
    o.shim(Message::DiskAttached { slot: DISK_SLOT });
    assert_eq!(o.sent().last(), Some(&Message::Direct));
    assert_eq!(disk.borrow().taken, writes(&[20, 21]));
    disk.borrow_mut().complete(usize::MAX);
    assert_eq!(o.port1_completions(), held);
}

#[test]
fn take_back_once_port_2_is_open_is_unexpected_and_changes_nothing() {
    let mut o = owner(true);
    o.shim(Message::TakeBack);
    assert_eq!(o.sent().last(), Some(&UNEXPECTED), "in Direct");
    o.shim(Message::Redirect);
    o.shim(Message::RingOpened { slot: 6 });
    o.shim(Message::OpenPort2);
    assert_eq!(o.stack.state(), State::Forwarding);
    o.shim(Message::TakeBack);
    assert_eq!(o.sent().last(), Some(&UNEXPECTED));
    assert_eq!(o.stack.state(), State::Forwarding);
}

#[test]
fn give_up_is_taken_in_any_state() {
    let mut o = owner(true);
    assert!(!o.handoff.given_up());
    o.shim(Message::Redirect);
    o.shim(Message::GiveUp);
    assert!(o.handoff.given_up());
    assert_ne!(o.sent().last(), Some(&UNEXPECTED));
}

#[test]
fn a_peer_whose_heartbeat_froze_while_requests_wait_is_reported_once() {
    let mut o = owner(true);
    o.shim(Message::Redirect);
    o.shim(Message::RingOpened { slot: 6 });
    o.shim(Message::OpenPort2);
    let mut server = RingServer::attach(o.ring.unwrap(), BLOCKS * SECTORS_PER_BLOCK).unwrap();
    let stalled = |o: &Owner| {
        o.sent()
            .iter()
            .filter(|m| matches!(m, Message::PeerStalled { .. }))
            .count()
    };
    // Nothing waits: an idle peer's frozen heartbeat is no news (the fake clock moves 1 ms per
    // reading).
    for _ in 0..4_000 {
        o.handoff.poll(&mut o.stack);
    }
    assert_eq!(stalled(&o), 0);
    // A request waits and the peer beats: no news either.
    o.write(3);
    for _ in 0..4_000 {
        server.heartbeat();
        o.handoff.poll(&mut o.stack);
    }
    assert_eq!(stalled(&o), 0);
    // It stops beating: after 3 s, one `peer-stalled`.
    for _ in 0..2_900 {
        o.handoff.poll(&mut o.stack);
    }
    assert_eq!(stalled(&o), 0, "not before {PEER_STALL_US} µs");
    for _ in 0..4_000 {
        o.handoff.poll(&mut o.stack);
    }
    assert_eq!(stalled(&o), 1, "once: {:?}", o.sent_names());
    match o
        .sent()
        .iter()
        .rev()
        .find(|m| matches!(m, Message::PeerStalled { .. }))
    {
        Some(Message::PeerStalled { ms }) => assert!((3_000..3_100).contains(ms), "{ms}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn port_2_opens_when_the_peer_attaches_and_a_take_back_then_replays_what_was_forwarded() {
    let mut o = owner(true);
    o.shim(Message::Redirect);
    o.shim(Message::RingOpened { slot: 6 });
    assert_eq!(o.stack.state(), State::Released);
    let held = [o.write(30), o.write(31)];
    // The peer's side of the ring turns ready: port 2 opens without waiting for `open-port2`,
    // and nothing is reported yet (`forwarding` answers `open-port2`).
    let mut server = RingServer::attach(o.ring.unwrap(), BLOCKS * SECTORS_PER_BLOCK).unwrap();
    o.handoff.poll(&mut o.stack);
    assert_eq!(o.stack.state(), State::Forwarding);
    assert_eq!(
        o.sent().last(),
        Some(&Message::Released { slot: DISK_SLOT })
    );
    // The held requests went to the ring, and so does the next one; the peer takes one and
    // completes nothing.
    let _taken = server.poll_submission().unwrap().unwrap();
    let later = o.write(32);
    // The shim fenced the peer and takes the handoff back: everything forwarded and not
    // completed is replayed on port 1, in the order the workload submitted it.
    o.shim(Message::TakeBack);
    assert_eq!(
        o.sent().last(),
        Some(&Message::Abandoned { replay: 3, held: 0 })
    );
    assert_eq!(o.handoff.replayed, 3);
    assert_eq!(o.stack.state(), State::FailbackDrained);
    let disk = o.plug_again();
    o.shim(Message::DiskAttached { slot: DISK_SLOT });
    assert_eq!(o.sent().last(), Some(&Message::Direct));
    assert_eq!(disk.borrow().taken, writes(&[30, 31, 32]));
    disk.borrow_mut().complete(usize::MAX);
    assert_eq!(o.port1_completions(), [held[0], held[1], later]);
}

#[test]
fn open_port2_after_an_early_open_only_reports_forwarding() {
    let mut o = owner(true);
    o.shim(Message::Redirect);
    o.shim(Message::RingOpened { slot: 6 });
    let _server = RingServer::attach(o.ring.unwrap(), BLOCKS * SECTORS_PER_BLOCK).unwrap();
    o.handoff.poll(&mut o.stack);
    assert_eq!(o.stack.state(), State::Forwarding);
    // No failback request before the shim heard `forwarding`.
    o.handoff.request_failback(State::Forwarding);
    assert_ne!(o.sent().last(), Some(&Message::FailbackRequest));
    o.shim(Message::OpenPort2);
    assert_eq!(o.sent().last(), Some(&Message::Forwarding));
    assert_eq!(o.stack.state(), State::Forwarding);
    // A second `open-port2` is out of turn; a take-back once the shim heard `forwarding` too.
    o.shim(Message::OpenPort2);
    assert_eq!(
        o.sent().last(),
        Some(&Message::Error {
            code: codes::NOT_READY
        })
    );
    o.shim(Message::TakeBack);
    assert_eq!(o.sent().last(), Some(&UNEXPECTED));
    o.handoff.request_failback(State::Forwarding);
    assert_eq!(o.sent().last(), Some(&Message::FailbackRequest));
}
