//! The owner's handoff driver against a fake control link and platform, with the virtio-blk
//! driver on a fake device as port 1 and a real ring in host memory as port 2.

use super::*;
use crate::fakes::blk::{DiskHandle, FakeBlkTransport};
use crate::fakes::hal::FakeHal;
use crate::fakes::owner::{FakeDisk, FakeLink, FakePlatform};
use crate::ports::blk::BlkDevice;
use crate::ports::{Op, SECTORS_PER_BLOCK};
use baton_core::ring::{self, RingServer, SharedRegion};

type Stack = ResourceStack<FakeHal, BlkDevice<FakeHal, FakeBlkTransport>>;
type Driver = OwnerHandoff<FakeLink, FakePlatform>;

const DISK_SLOT: u8 = 4;
const BLOCKS: u64 = 64;

struct Owner {
    stack: Stack,
    disk: DiskHandle,
    link: FakeLink,
    ejected: std::rc::Rc<std::cell::RefCell<Vec<u8>>>,
    ring: Option<SharedRegion<'static>>,
    /// The disk the next `open_disk` returns.
    slot_disk: std::rc::Rc<std::cell::RefCell<Option<FakeDisk>>>,
    opened: std::rc::Rc<std::cell::RefCell<Vec<u8>>>,
    handoff: Driver,
}

fn owner(ring_usable: bool) -> Owner {
    let (transport, disk) = FakeBlkTransport::new(BLOCKS * SECTORS_PER_BLOCK);
    disk.borrow_mut().hold = true;
    let mut stack = Stack::new();
    stack.attach_port1(BlkDevice::new(transport).unwrap());
    let link = FakeLink::default();
    let mut platform = FakePlatform::with_ring(ring::MIN_REGION_LEN);
    if !ring_usable {
        platform.ring = None;
    }
    let ejected = platform.ejected.clone();
    let ring = platform.ring;
    let (slot_disk, opened) = (platform.disk.clone(), platform.opened_disks.clone());
    let handoff = Driver::new(Some(link.clone()), platform, DISK_SLOT, 7);
    Owner {
        stack,
        disk,
        link,
        ejected,
        ring,
        slot_disk,
        opened,
        handoff,
    }
}

impl Owner {
    fn write(&mut self, lba: u64) -> usize {
        let tag = self.stack.alloc().unwrap();
        self.stack.buffer(tag).fill(lba as u8);
        self.stack.submit(tag, Op::Write, lba).unwrap();
        tag
    }

    /// The shim sends `msg`; the driver polls once.
    fn shim(&mut self, msg: Message) {
        self.link.shim_sends(msg);
        self.handoff.poll(&mut self.stack);
    }

    fn sent(&self) -> Vec<Message> {
        self.link.0.borrow().from_guest.clone()
    }

    fn sent_names(&self) -> Vec<&'static str> {
        self.link.0.borrow().sent_names()
    }
}

#[test]
fn hello_names_the_role_and_the_protocol_version() {
    let o = owner(true);
    let hello = Message::Hello {
        role: Role::Owner,
        vm: 7,
        version: PROTOCOL_VERSION,
    };
    assert_eq!(o.sent(), vec![hello]);
}

#[test]
fn redirect_drain_release_then_open_port2_forwards_the_held_requests_in_order() {
    let mut o = owner(true);
    let early = [o.write(0), o.write(1), o.write(2)];
    o.shim(Message::Redirect);
    assert_eq!(o.stack.state(), State::Draining);
    let held = [o.write(10), o.write(11)];
    o.shim(Message::RingOpened { slot: 6 });
    assert!(
        o.stack.has_port2(),
        "the ring is formatted while port 1 drains"
    );
    o.handoff.poll(&mut o.stack);
    assert_eq!(
        o.sent_names(),
        ["hello"],
        "nothing to report before the drain"
    );
    assert!(o.ejected.borrow().is_empty());
    o.disk.borrow_mut().complete(usize::MAX);
    let done: Vec<usize> = std::iter::from_fn(|| o.stack.poll())
        .map(|c| c.tag)
        .collect();
    assert_eq!(done, early);
    let resets = o.disk.borrow().resets;
    o.handoff.poll(&mut o.stack);
    assert_eq!(
        o.disk.borrow().resets,
        resets + 1,
        "the device is reset before the eject"
    );
    assert_eq!(*o.ejected.borrow(), [DISK_SLOT]);
    assert_eq!(o.stack.state(), State::Released);
    assert_eq!(o.handoff.held_at_switch, 2);
    let tail = &o.sent()[1..];
    let drained = Message::Drained {
        completed: 3,
        held: 2,
    };
    assert_eq!(tail, [drained, Message::Released { slot: DISK_SLOT }]);
    let region = o.ring.unwrap();
    let mut server = RingServer::attach(region, BLOCKS * SECTORS_PER_BLOCK).unwrap();
    assert!(server.poll_submission().is_none(), "held until open-port2");
    o.shim(Message::OpenPort2);
    assert_eq!(o.stack.state(), State::Forwarding);
    assert_eq!(o.sent().last(), Some(&Message::Forwarding));
    let ids: Vec<usize> = std::iter::from_fn(|| server.poll_submission())
        .map(|s| s.unwrap().id as usize)
        .collect();
    assert_eq!(ids, held);
}

#[test]
fn a_redirect_with_nothing_in_flight_releases_at_once() {
    let mut o = owner(true);
    o.shim(Message::Redirect);
    assert_eq!(o.stack.state(), State::Released);
    assert_eq!(o.sent_names(), ["hello", "drained", "released"]);
    assert!(
        o.ejected.borrow().is_empty(),
        "the eject waits until the shim has `released`"
    );
    o.handoff.poll(&mut o.stack);
    assert_eq!(*o.ejected.borrow(), [DISK_SLOT]);
}

#[test]
fn open_port2_before_the_release_or_the_ring_is_not_ready() {
    let mut o = owner(true);
    o.shim(Message::OpenPort2);
    let not_ready = Message::Error {
        code: codes::NOT_READY,
    };
    assert_eq!(o.sent().last(), Some(&not_ready));
    o.shim(Message::Redirect);
    assert_eq!(o.stack.state(), State::Released);
    o.shim(Message::OpenPort2);
    assert_eq!(
        o.sent().last(),
        Some(&not_ready),
        "released, but no ring yet"
    );
    assert_eq!(o.stack.state(), State::Released);
}

#[test]
fn messages_out_of_turn_are_answered_with_an_error_and_change_nothing() {
    let mut o = owner(true);
    let unexpected = Message::Error {
        code: codes::UNEXPECTED_MESSAGE,
    };
    o.shim(Message::RingOpened { slot: 6 });
    assert_eq!(
        o.sent().last(),
        Some(&unexpected),
        "no ring before redirect"
    );
    assert!(!o.stack.has_port2());
    o.shim(Message::Redirect);
    o.shim(Message::Redirect);
    assert_eq!(o.sent().last(), Some(&unexpected));
    assert_eq!(o.ejected.borrow().len(), 1);
}

#[test]
fn an_unusable_ring_is_reported() {
    let mut o = owner(false);
    o.shim(Message::Redirect);
    o.shim(Message::RingOpened { slot: 6 });
    let unusable = Message::Error {
        code: codes::RING_UNUSABLE,
    };
    assert_eq!(o.sent().last(), Some(&unusable));
    assert!(!o.stack.has_port2());
}

#[test]
fn migration_is_requested_once_and_flush_waits_for_the_acknowledgements() {
    let mut o = owner(true);
    o.link.0.borrow_mut().withhold_acks = true;
    o.handoff.request_migration();
    o.handoff.request_migration();
    assert_eq!(o.sent_names(), ["hello", "migrate-request"]);
    o.handoff.flush(10_000);
    assert!(
        o.link.0.borrow().unacked > 0,
        "gave up after 10 ms without acknowledgements"
    );
    o.link.0.borrow_mut().ack_all();
    o.handoff.flush(10_000);
    assert!(o.handoff.link().is_some_and(|l| l.idle()));
}

/// A small deterministic generator (xorshift), so every seed replays the same sequence.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[test]
fn any_order_of_shim_messages_and_completions_keeps_the_protocol() {
    let mut forwarded = 0;
    for seed in 1..=300u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let mut o = owner(seed % 7 != 0);
        let mut submitted = 0;
        for _ in 0..60 {
            match rng.below(6) {
                0 => o.shim(Message::Redirect),
                1 => o.shim(Message::RingOpened { slot: 6 }),
                2 => o.shim(Message::OpenPort2),
                3 => o.shim(Message::DiskAttached { slot: 4 }),
                4 if o.stack.outstanding() < 8 => {
                    o.write(submitted % BLOCKS);
                    submitted += 1;
                }
                _ => {
                    o.disk.borrow_mut().complete(rng.below(3) as usize);
                    while let Some(c) = o.stack.poll() {
                        o.stack.release(c.tag);
                    }
                    o.handoff.poll(&mut o.stack);
                }
            }
        }
        let names = o.sent_names();
        let at = |name: &str| names.iter().position(|n| *n == name);
        let count = |name: &str| names.iter().filter(|n| **n == name).count();
        assert_eq!(names[0], "hello", "seed {seed}");
        for once in ["drained", "released", "forwarding"] {
            assert!(count(once) <= 1, "seed {seed}: {once} twice in {names:?}");
        }
        assert!(o.ejected.borrow().len() <= 1, "seed {seed}");
        // The handoff's steps come in claim 1's order: drained, released, then forwarding.
        if let Some(f) = at("forwarding") {
            assert!(
                at("released").is_some_and(|r| r < f),
                "seed {seed}: {names:?}"
            );
            assert_eq!(o.stack.state(), State::Forwarding, "seed {seed}");
            forwarded += 1;
        }
        if let Some(r) = at("released") {
            assert_eq!(at("drained"), Some(r - 1), "seed {seed}: {names:?}");
            assert_eq!(*o.ejected.borrow(), [DISK_SLOT], "seed {seed}");
        }
        let held = o.stack.held();
        if o.stack.state() != State::Forwarding {
            assert_eq!(
                o.stack.port2_requests, 0,
                "seed {seed}: forwarded before open-port2"
            );
        } else {
            assert_eq!(
                held, 0,
                "seed {seed}: held requests left behind after open-port2"
            );
        }
    }
    assert!(
        forwarded > 30,
        "only {forwarded} of 300 sequences reached forwarding"
    );
}

#[path = "handoff_failback_tests.rs"]
mod failback;

#[path = "handoff_takeback_tests.rs"]
mod takeback;
