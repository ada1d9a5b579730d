//! The world around the owner's main loop in the end-to-end host tests: the test plays the shim
//! (it directs each cycle's `redirect` and `failback`, and answers the owner's `migrate-request`
//! and `failback-request`), the hypervisor (it moves the disk's contents to the peer's device at
//! the release, and back to a fresh owner device at the failback) and the peer (a
//! [`RingService`] on its own fake virtio-blk, quiesced and released when the owner's port 2
//! drained). Every device of the run keeps its log of taken requests, so the tests can count
//! what was performed where, and in which order.

use crate::fakes::blk::{DiskHandle, FakeBlkTransport, Taken};
use crate::fakes::hal::FakeHal;
use crate::fakes::owner::{FakeLink, FakePlatform};
use crate::ports::blk::BlkDevice;
use crate::ports::{BlockPort, SECTORS_PER_BLOCK};
use crate::roles::handoff::OwnerHandoff;
use crate::roles::owner_loop::round;
use crate::roles::serve::RingService;
use crate::stack::ResourceStack;
use crate::workload::{Clock, Workload};
use baton_core::cmdline::GuestConfig;
use baton_core::control::Message;
use baton_core::redirector::State;
use baton_core::report::GuestReport;
use baton_core::ring::{self, RingServer};
use std::cell::Cell;

/// A virtio-blk driver on a fake device (the owner's port 1, or the peer's disk).
pub type Dev = BlkDevice<FakeHal, FakeBlkTransport>;

/// The PCI slot of the owner's disk (at boot and after every failback).
pub const DISK_SLOT: u8 = 4;
/// The PCI slot of the ivshmem device of every cycle.
pub const RING_SLOT: u8 = 6;

/// One tick per reading, one tick per microsecond.
struct TestClock(Cell<u64>);

impl Clock for TestClock {
    fn ticks(&self) -> u64 {
        self.0.set(self.0.get() + 1);
        self.0.get()
    }

    fn ticks_per_us(&self) -> u64 {
        1
    }

    fn uptime_us(&self) -> u64 {
        self.0.get()
    }
}

/// When the shim directs the two switches of one cycle: once the owner's progress (writes
/// submitted, plus blocks read back once the writes are done) reached this, or when the owner
/// asks (`u64::MAX`: only when it asks).
#[derive(Clone, Copy, Debug)]
pub struct Cycle {
    /// Progress before `redirect` (or the owner's `migrate-request`).
    pub redirect_at: u64,
    /// Progress before `failback` (or the owner's `failback-request`).
    pub failback_at: u64,
}

/// How the run is played.
#[derive(Clone, Debug)]
pub struct Options {
    /// The cycles, in order; after the last the owner keeps its disk (or keeps forwarding, when
    /// the last cycle's failback never comes).
    pub cycles: Vec<Cycle>,
    /// Requests each device (the owner's and the peer's) completes per round, so requests are in
    /// flight at both ports when the switches come.
    pub per_round: usize,
    /// `failback` goes out only after a round that ended with nothing outstanding, so the owner
    /// reads it with nothing in flight at port 2.
    pub failback_when_idle: bool,
}

/// What one failback looked like.
#[derive(Clone, Debug, Default)]
pub struct Failback {
    /// The owner's `drained` (requests forwarded so far, requests held).
    pub drained: Option<(u64, u32)>,
    /// The redirector was seen in `FailbackDraining` after a round (port 2 had requests left).
    pub waited_for_port2: bool,
    /// The peer's ring service had nothing at its device when the owner's port 2 drained.
    pub peer_idle: bool,
    /// Requests that were held when the disk came back (they went to it first).
    pub held: usize,
    /// What the held requests were: writes of the last `held` sequence numbers, in order
    /// (`None` when the held requests may include read-back reads).
    pub expected_first: Option<Vec<Taken>>,
    /// What the fresh disk took first (its first `held` requests).
    pub first_taken: Vec<Taken>,
}

/// What a run left behind.
pub struct Run {
    /// The workload's report (with `held_at_switch` from the handoff driver).
    pub report: GuestReport,
    /// The workload's console lines.
    pub console: String,
    /// Every message the owner sent, in order.
    pub messages: Vec<Message>,
    /// Their names.
    pub sent: Vec<&'static str>,
    /// Requests the stack forwarded over the ring.
    pub port2_requests: u64,
    /// Requests the stack sent to port 1 after the last failback's `direct`.
    pub port1_after_failback: u64,
    /// Cycles that reached `direct` (the shim then closed the ring).
    pub cycles_completed: usize,
    /// The failbacks, in order.
    pub failbacks: Vec<Failback>,
    /// The handoff driver's counts: handoffs and failbacks directed.
    pub directed: (u32, u32),
    /// Slots the owner ejected, in order.
    pub ejected: Vec<u8>,
    /// Slots the owner opened a disk in, in order.
    pub opened_disks: Vec<u8>,
    /// Every device of the run (owner's and peer's), in the order they appeared.
    pub disks: Vec<DiskHandle>,
}

impl Run {
    /// Requests of `kind` the devices of the run performed, all together.
    pub fn performed(&self, kind: u32) -> usize {
        let disks = self.disks.iter().map(|d| d.borrow());
        disks
            .map(|d| d.taken.iter().filter(|t| t.kind == kind).count())
            .sum()
    }
}

/// Where the shim is in the current cycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// The disk is behind the owner's port 1; the next cycle's `redirect` comes when due.
    Direct,
    /// `redirect` and `ring-opened` went out; waiting for the release.
    Redirected,
    /// `open-port2` went out: the peer serves the ring.
    Forwarding,
    /// `failback` went out; waiting for the owner's `drained`.
    FailingBack,
    /// `disk-attached` went out; waiting for `direct`.
    Attached,
}

/// The peer guest: its ring service and its device.
struct Peer {
    service: RingService<'static, FakeHal, Dev>,
    disk: DiskHandle,
}

/// A fresh device holding `data`, whose completions wait for the test.
fn device(data: &[u8]) -> (Dev, DiskHandle) {
    let (transport, disk) = FakeBlkTransport::new(data.len() as u64 / 512);
    disk.borrow_mut().data = data.to_vec();
    disk.borrow_mut().hold = true;
    (BlkDevice::new(transport).unwrap(), disk)
}

/// Runs `cfg`'s workload on the owner through the cycles of `opts`.
pub fn run(cfg: &GuestConfig, opts: &Options) -> Run {
    let sectors = (cfg.first_lba + cfg.blocks) * SECTORS_PER_BLOCK;
    let sched = cfg.schedule();
    let (dev, mut owner_disk) = device(&vec![0; sectors as usize * 512]);
    let mut disks = vec![owner_disk.clone()];
    let mut stack: ResourceStack<FakeHal, Dev> = ResourceStack::new();
    stack.attach_port1(dev);
    let link = FakeLink::default();
    let platform = FakePlatform::with_ring(ring::MIN_REGION_LEN);
    let region = platform.ring.unwrap();
    let (slot_disk, ejected, opened) = (
        platform.disk.clone(),
        platform.ejected.clone(),
        platform.opened_disks.clone(),
    );
    let mut handoff = OwnerHandoff::new(Some(link.clone()), platform, DISK_SLOT, cfg.vm);
    let clock = TestClock(Cell::new(0));
    let mut workload = Workload::new(cfg, &stack, clock, String::new()).unwrap();
    let mut peer: Option<Peer> = None;
    let (mut phase, mut cycle, mut seen) = (Phase::Direct, 0, 0);
    let (mut asked_migration, mut asked_failback, mut released) = (false, false, false);
    let mut failbacks: Vec<Failback> = Vec::new();
    let mut port1_base = None;
    // The held requests and the writes submitted at the end of the previous round.
    let (mut prev_held, mut prev_writes) = (0, 0);
    for _ in 0..10_000_000 {
        if round(cfg, &mut handoff, &mut workload, &mut stack).unwrap() {
            let mut report = *workload.report();
            report.held_at_switch = handoff.held_at_switch;
            let shim = link.0.borrow();
            return Run {
                report,
                console: workload.console().clone(),
                messages: shim.from_guest.clone(),
                sent: shim.sent_names(),
                port2_requests: stack.port2_requests,
                port1_after_failback: port1_base.map_or(0, |b| stack.port1_requests - b),
                cycles_completed: cycle,
                failbacks,
                directed: (handoff.handoffs, handoff.failbacks),
                ejected: ejected.borrow().clone(),
                opened_disks: opened.borrow().clone(),
                disks,
            };
        }
        owner_disk.borrow_mut().complete(opts.per_round);
        if stack.state() == State::FailbackDraining {
            failbacks.last_mut().unwrap().waited_for_port2 = true;
        }
        let new: Vec<Message> = link.0.borrow().from_guest[seen..].to_vec();
        seen += new.len();
        for msg in new {
            match (msg, phase) {
                (Message::MigrateRequest, _) => asked_migration = true,
                (Message::FailbackRequest, _) => asked_failback = true,
                (Message::Released { .. }, Phase::Redirected) => released = true,
                (Message::Drained { completed, held }, Phase::FailingBack) => {
                    // The peer quiesces and releases its disk; the hypervisor plugs the disk,
                    // with what the peer wrote, into the owner's slot.
                    let p = peer.take().unwrap();
                    let f = failbacks.last_mut().unwrap();
                    f.drained = Some((completed, held));
                    f.peer_idle = p.service.idle();
                    p.service.into_disk().release();
                    let (dev, disk) = device(&p.disk.borrow().data);
                    *slot_disk.borrow_mut() = Some(dev);
                    disks.push(disk.clone());
                    owner_disk = disk;
                    link.shim_sends(Message::DiskAttached { slot: DISK_SLOT });
                    phase = Phase::Attached;
                }
                (Message::Direct, Phase::Attached) => {
                    // The held requests went to the fresh disk when it came back, before this
                    // round's new ones.
                    let f = failbacks.last_mut().unwrap();
                    f.held = prev_held;
                    let taken = &owner_disk.borrow().taken;
                    f.first_taken = taken[..prev_held.min(taken.len())].to_vec();
                    f.expected_first = (prev_writes < sched.total_writes()).then(|| {
                        let seqs = prev_writes + 1 - prev_held as u64..=prev_writes;
                        let sector = |seq| sched.lba_of(seq).unwrap() * SECTORS_PER_BLOCK;
                        let write = |seq| Taken {
                            kind: Taken::WRITE,
                            sector: sector(seq),
                        };
                        seqs.map(write).collect()
                    });
                    port1_base = Some(stack.port1_requests);
                    link.shim_sends(Message::CloseRing { slot: RING_SLOT });
                    (phase, cycle, asked_failback) = (Phase::Direct, cycle + 1, false);
                }
                _ => {}
            }
        }
        if released && stack.has_port2() {
            // The hypervisor moves the disk: the peer's device holds what the owner's held.
            released = false;
            let (dev, disk) = device(&owner_disk.borrow().data);
            disks.push(disk.clone());
            let server = RingServer::attach(region, sectors).unwrap();
            let service = RingService::new(server, dev, None);
            peer = Some(Peer { service, disk });
            link.shim_sends(Message::OpenPort2);
            phase = Phase::Forwarding;
        }
        let writes = workload.writes_submitted() + workload.report().reads_verified;
        let due = opts.cycles.get(cycle);
        let quiet = link.0.borrow().to_guest.is_empty();
        if phase == Phase::Direct
            && quiet
            && due.is_some_and(|c| asked_migration || writes >= c.redirect_at)
        {
            asked_migration = false;
            link.shim_sends(Message::Redirect);
            link.shim_sends(Message::RingOpened { slot: RING_SLOT });
            phase = Phase::Redirected;
        }
        if phase == Phase::Forwarding
            && quiet
            && due.is_some_and(|c| asked_failback || writes >= c.failback_at)
            && (!opts.failback_when_idle || stack.outstanding() == 0)
        {
            link.shim_sends(Message::Failback);
            failbacks.push(Failback::default());
            phase = Phase::FailingBack;
        }
        if let Some(p) = peer.as_mut() {
            p.disk.borrow_mut().complete(opts.per_round);
            p.service.step(&|| 0);
        }
        (prev_held, prev_writes) = (usize::from(stack.held()), workload.writes_submitted());
        link.0.borrow_mut().ack_all();
    }
    panic!("the run did not finish");
}
