//! The owner's surroundings for the handoff driver: a control link whose shim side is a pair of
//! queues, and a platform with a settable clock, a record of ejects and a ring region in host
//! memory.

use crate::fakes::blk::FakeBlkTransport;
use crate::fakes::hal::FakeHal;
use crate::ports::blk::BlkDevice;
use crate::roles::{ControlLink, OwnerPlatform};
use baton_core::control::Message;
use baton_core::ring::SharedRegion;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::atomic::AtomicU64;

/// The shim's side of a [`FakeLink`].
#[derive(Debug, Default)]
pub struct Shim {
    /// Messages the shim sent, not yet read by the guest.
    pub to_guest: VecDeque<Message>,
    /// Messages the guest sent, in order.
    pub from_guest: Vec<Message>,
    /// Messages the guest sent that are not acknowledged yet (cleared by `ack_all`).
    pub unacked: usize,
    /// Acknowledge nothing by itself: by default the shim acknowledges every frame by the
    /// guest's next poll, as the real one does within a round trip.
    pub withhold_acks: bool,
}

impl Shim {
    /// Acknowledges everything the guest sent.
    pub fn ack_all(&mut self) {
        self.unacked = 0;
    }

    /// The names of the messages the guest sent, in order.
    pub fn sent_names(&self) -> Vec<&'static str> {
        self.from_guest.iter().map(Message::name).collect()
    }
}

/// A control link; clones share the shim side.
#[derive(Clone, Debug, Default)]
pub struct FakeLink(pub Rc<RefCell<Shim>>);

impl FakeLink {
    /// The shim sends `msg`.
    pub fn shim_sends(&self, msg: Message) {
        self.0.borrow_mut().to_guest.push_back(msg);
    }
}

impl ControlLink for FakeLink {
    fn send(&mut self, msg: Message) -> bool {
        let mut shim = self.0.borrow_mut();
        shim.from_guest.push(msg);
        shim.unacked += 1;
        true
    }

    fn poll(&mut self) -> Option<Message> {
        let mut shim = self.0.borrow_mut();
        if !shim.withhold_acks {
            shim.ack_all();
        }
        shim.to_guest.pop_front()
    }

    fn idle(&self) -> bool {
        self.0.borrow().unacked == 0
    }
}

/// The owner's disk in the host tests: the virtio-blk driver on a fake device.
pub type FakeDisk = BlkDevice<FakeHal, FakeBlkTransport>;

/// The machine: a clock that advances 1 ms per reading, ejected slots, ring memory, and the disk
/// a failback plugs.
pub struct FakePlatform {
    /// Microseconds; every `now_us` adds [`FakePlatform::TICK_US`].
    pub now: Cell<u64>,
    /// Slots ejected, in order.
    pub ejected: Rc<RefCell<Vec<u8>>>,
    /// The memory behind the ivshmem device (`None`: the device is unusable).
    pub ring: Option<SharedRegion<'static>>,
    /// The disk the next `open_disk` returns (`None`: the slot is empty or the disk unusable).
    pub disk: Rc<RefCell<Option<FakeDisk>>>,
    /// Slots `open_disk` was called for, in order.
    pub opened_disks: Rc<RefCell<Vec<u8>>>,
}

impl FakePlatform {
    /// Time that passes between two clock readings.
    pub const TICK_US: u64 = 1_000;

    /// A platform whose ivshmem device has `bytes` of shared memory (leaked for the test's life).
    pub fn with_ring(bytes: usize) -> Self {
        let words: Vec<AtomicU64> = (0..bytes / 8).map(|_| AtomicU64::new(0)).collect();
        let words: &'static [AtomicU64] = Box::leak(words.into_boxed_slice());
        FakePlatform {
            now: Cell::new(0),
            ejected: Rc::default(),
            ring: Some(SharedRegion::from_words(words)),
            disk: Rc::default(),
            opened_disks: Rc::default(),
        }
    }
}

impl OwnerPlatform for FakePlatform {
    type Disk = FakeDisk;

    fn now_us(&self) -> u64 {
        self.now.set(self.now.get() + Self::TICK_US);
        self.now.get()
    }

    fn eject(&mut self, slot: u8) {
        self.ejected.borrow_mut().push(slot);
    }

    fn open_ring(&mut self, _slot: u8) -> Option<SharedRegion<'static>> {
        self.ring
    }

    fn open_disk(&mut self, slot: u8) -> Option<FakeDisk> {
        self.opened_disks.borrow_mut().push(slot);
        self.disk.borrow_mut().take()
    }
}
