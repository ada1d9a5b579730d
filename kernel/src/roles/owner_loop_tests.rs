//! The owner's main loop on the host, end to end: the workload writes and reads back its
//! schedule through the stack while the test plays the shim (control messages), the hypervisor
//! (moving the disk's contents to the peer's device) and the peer (a [`RingService`] on its own
//! fake virtio-blk). A handoff in the middle of the run must lose, duplicate and reorder nothing:
//! the read-back, which runs over port 2, finds every block's last acknowledged write.

use super::*;
use crate::fakes::blk::{DiskHandle, FakeBlkTransport};
use crate::fakes::hal::FakeHal;
use crate::fakes::owner::{FakeLink, FakePlatform};
use crate::ports::SECTORS_PER_BLOCK;
use crate::ports::blk::BlkDevice;
use crate::roles::serve::RingService;
use baton_core::control::Message;
use baton_core::report::GuestReport;
use baton_core::ring::{self, RingServer};
use std::cell::Cell;

type Dev = BlkDevice<FakeHal, FakeBlkTransport>;

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

/// What a run left behind.
struct Run {
    report: GuestReport,
    console: String,
    sent: Vec<&'static str>,
    port2_requests: u64,
}

/// Runs `cfg` with the shim directing the handoff once `switch_at` writes were submitted (never
/// when `None`). The owner's device completes at most `per_round` requests per round, so port 1
/// has requests in flight when the switch comes.
fn run(cfg: &GuestConfig, switch_at: Option<u64>, per_round: usize) -> Run {
    let sectors = (cfg.first_lba + cfg.blocks) * SECTORS_PER_BLOCK;
    let (transport, owner_disk) = FakeBlkTransport::new(sectors);
    owner_disk.borrow_mut().hold = true;
    let mut stack: ResourceStack<FakeHal, Dev> = ResourceStack::new();
    stack.attach_port1(BlkDevice::new(transport).unwrap());
    let link = FakeLink::default();
    let platform = FakePlatform::with_ring(ring::MIN_REGION_LEN);
    let region = platform.ring.unwrap();
    let mut handoff = OwnerHandoff::new(Some(link.clone()), platform, 4, cfg.vm);
    let clock = TestClock(Cell::new(0));
    let mut workload = Workload::new(cfg, &stack, clock, String::new()).unwrap();
    let mut peer: Option<(RingService<'static, FakeHal, Dev>, DiskHandle)> = None;
    let mut directed = false;
    for _ in 0..10_000_000 {
        if round(cfg, &mut handoff, &mut workload, &mut stack).unwrap() {
            let mut report = *workload.report();
            report.held_at_switch = handoff.held_at_switch;
            let shim = link.0.borrow();
            return Run {
                report,
                console: workload.console().clone(),
                sent: shim.sent_names(),
                port2_requests: stack.port2_requests,
            };
        }
        owner_disk.borrow_mut().complete(per_round);
        if !directed && switch_at.is_some_and(|n| workload.writes_submitted() >= n) {
            directed = true;
            link.shim_sends(Message::Redirect);
            link.shim_sends(Message::RingOpened { slot: 6 });
        }
        let released = link.0.borrow().sent_names().contains(&"released");
        if peer.is_none() && released && stack.has_port2() {
            // The hypervisor moves the disk: the peer's device holds what the owner's held.
            let (transport, peer_disk) = FakeBlkTransport::new(sectors);
            peer_disk.borrow_mut().data = owner_disk.borrow().data.clone();
            let server = RingServer::attach(region, sectors).unwrap();
            let service = RingService::new(server, BlkDevice::new(transport).unwrap(), None);
            peer = Some((service, peer_disk));
            link.shim_sends(Message::OpenPort2);
        }
        if let Some((service, _)) = peer.as_mut() {
            service.step(&|| 0);
        }
        link.0.borrow_mut().ack_all();
    }
    panic!("the run did not finish");
}

fn config(qd: u16) -> GuestConfig {
    GuestConfig {
        blocks: 48,
        passes: 3,
        qd,
        seed: 11,
        ..GuestConfig::default()
    }
}

fn assert_clean(run: &Run, cfg: &GuestConfig) {
    let r = &run.report;
    let writes = cfg.blocks * u64::from(cfg.passes);
    assert_eq!((r.writes_submitted, r.writes_acked), (writes, writes));
    assert_eq!((r.write_errors, r.duplicates, r.read_mismatches), (0, 0, 0));
    assert_eq!(r.reads_verified, cfg.blocks);
    assert!(
        run.console.starts_with("BATON first-io\n"),
        "{}",
        run.console
    );
    assert!(run.console.contains("BATON timeline "));
    assert!(run.console.contains("BATON port-stats port=1 "));
}

#[test]
fn without_a_handoff_everything_stays_on_port_1() {
    let cfg = config(8);
    let run = run(&cfg, None, 2);
    assert_clean(&run, &cfg);
    assert_eq!(run.report.port2_requests, 0);
    assert_eq!(run.sent, ["hello"]);
}

#[test]
fn a_handoff_in_the_middle_of_the_writes_loses_nothing_at_qd32() {
    let cfg = config(32);
    let run = run(&cfg, Some(70), 3);
    assert_clean(&run, &cfg);
    assert!(run.report.port1_requests > 0 && run.port2_requests > cfg.blocks);
    assert_eq!(run.report.port2_requests, run.port2_requests);
    assert!(
        run.report.held_at_switch > 0,
        "requests were held during the drain"
    );
    assert!(run.console.contains("BATON port-stats port=2 "));
    assert_eq!(run.sent, ["hello", "drained", "released", "forwarding"]);
}

#[test]
fn a_handoff_at_qd1_and_an_owner_that_asks_for_it() {
    let cfg = GuestConfig {
        migrate_at: 20,
        ..config(1)
    };
    let run = run(&cfg, Some(25), 1);
    assert_clean(&run, &cfg);
    assert!(run.report.port2_requests > 0);
    let names = [
        "hello",
        "migrate-request",
        "drained",
        "released",
        "forwarding",
    ];
    assert_eq!(run.sent, names);
}
