//! The owner's main loop on the host, end to end: the workload writes and reads back its
//! schedule through the stack while the test plays the shim, the hypervisor and the peer
//! ([`harness`]). Handoffs and failbacks in the middle of the run must lose, duplicate and
//! reorder nothing: the read-back finds every block's last acknowledged write, every write was
//! performed once on some device, and the requests held during a failback reach the returned
//! disk first, in submission order.

use super::*;
use crate::fakes::blk::Taken;
use baton_core::control::Message;

#[path = "owner_loop_harness.rs"]
mod harness;

use harness::{Cycle, DISK_SLOT, Options, RING_SLOT, Run, run};

/// Only when the owner asks (or never, for a failback nobody asks for).
const ASKED: u64 = u64::MAX;

fn config(qd: u16) -> GuestConfig {
    GuestConfig {
        blocks: 48,
        passes: 3,
        qd,
        seed: 11,
        ..GuestConfig::default()
    }
}

fn options(cycles: &[(u64, u64)], per_round: usize) -> Options {
    Options {
        cycles: cycles
            .iter()
            .map(|&(redirect_at, failback_at)| Cycle {
                redirect_at,
                failback_at,
            })
            .collect(),
        per_round,
        failback_when_idle: false,
    }
}

fn assert_clean(run: &Run, cfg: &GuestConfig) {
    let r = &run.report;
    let writes = cfg.blocks * u64::from(cfg.passes);
    assert_eq!((r.writes_submitted, r.writes_acked), (writes, writes));
    assert_eq!((r.write_errors, r.duplicates, r.read_mismatches), (0, 0, 0));
    assert_eq!(r.reads_verified, cfg.blocks);
    assert_eq!(
        run.performed(Taken::WRITE) as u64,
        writes,
        "every write performed once, on one device or another"
    );
    assert_eq!(run.performed(Taken::READ) as u64, cfg.blocks);
    assert!(
        run.console.starts_with("BATON first-io\n"),
        "{}",
        run.console
    );
    assert!(run.console.contains("BATON timeline "));
    assert!(run.console.contains("BATON port-stats port=1 "));
}

/// Every failback of `run` came back whole: the peer was idle when the owner's port 2 drained,
/// and the held requests reached the returned disk first, in order.
fn assert_failbacks_in_order(run: &Run) {
    for (i, f) in run.failbacks.iter().enumerate() {
        assert!(f.drained.is_some(), "failback {i}: no drained");
        assert!(f.peer_idle, "failback {i}: the peer still had requests");
        let expected = f
            .expected_first
            .as_ref()
            .expect("the failback came during the writes");
        assert_eq!(expected.len(), f.held, "failback {i}");
        assert_eq!(
            &f.first_taken, expected,
            "failback {i}: held requests out of order"
        );
    }
}

#[test]
fn without_a_handoff_everything_stays_on_port_1() {
    let cfg = config(8);
    let run = run(&cfg, &options(&[], 2));
    assert_clean(&run, &cfg);
    assert_eq!(run.report.port2_requests, 0);
    assert_eq!(run.sent, ["hello"]);
    assert_eq!(run.disks.len(), 1);
}

#[test]
fn a_handoff_in_the_middle_of_the_writes_loses_nothing_at_qd32() {
    let cfg = config(32);
    let run = run(&cfg, &options(&[(70, ASKED)], 3));
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
    let run = run(&cfg, &options(&[(25, ASKED)], 1));
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

#[test]
fn a_failback_in_the_middle_of_the_writes_loses_nothing_at_qd32() {
    let cfg = config(32);
    let run = run(&cfg, &options(&[(40, 90)], 3));
    assert_clean(&run, &cfg);
    assert_eq!(run.cycles_completed, 1);
    assert_eq!(run.directed, (1, 1));
    let f = &run.failbacks[0];
    assert!(f.waited_for_port2, "port 2 had requests in flight");
    assert!(f.held > 0, "requests were held while port 2 drained");
    let (completed, held) = f.drained.unwrap();
    assert!(held > 0);
    assert!(completed > 0 && completed <= run.port2_requests);
    assert_failbacks_in_order(&run);
    assert!(
        run.port1_after_failback >= cfg.blocks,
        "the read-back ran on the returned disk"
    );
    assert_eq!(run.ejected, [DISK_SLOT, RING_SLOT]);
    assert_eq!(run.opened_disks, [DISK_SLOT]);
    let names = [
        "hello",
        "drained",
        "released",
        "forwarding",
        "drained",
        "direct",
    ];
    assert_eq!(run.sent, names);
    let last = run.disks.last().unwrap().borrow();
    let reads = last.taken.iter().filter(|t| t.kind == Taken::READ).count();
    assert_eq!(
        reads as u64, cfg.blocks,
        "the read-back ran on the returned disk"
    );
}

#[test]
fn a_failback_with_nothing_in_flight_at_port_2_is_drained_at_once() {
    let cfg = config(1);
    let opts = Options {
        failback_when_idle: true,
        ..options(&[(20, 40)], 1)
    };
    let run = run(&cfg, &opts);
    assert_clean(&run, &cfg);
    assert_eq!(run.cycles_completed, 1);
    let f = &run.failbacks[0];
    assert!(!f.waited_for_port2, "nothing was in flight at port 2");
    assert_eq!(f.drained.map(|d| d.1), Some(0), "nothing held at the drain");
    assert_failbacks_in_order(&run);
    assert!(run.port1_after_failback > 0);
}

#[test]
fn a_failback_during_the_read_back_loses_nothing() {
    let cfg = config(8);
    let writes = cfg.blocks * u64::from(cfg.passes);
    let run = run(&cfg, &options(&[(30, writes + 10)], 2));
    assert_clean(&run, &cfg);
    assert_eq!(run.cycles_completed, 1);
    assert!(run.failbacks[0].expected_first.is_none(), "reads were held");
    let reads = |d: usize| {
        let disk = run.disks[d].borrow();
        disk.taken.iter().filter(|t| t.kind == Taken::READ).count()
    };
    assert_eq!(run.disks.len(), 3);
    assert!(
        reads(1) >= 10 && reads(2) > 0,
        "the read-back ran on the peer's disk, then on the returned one"
    );
    assert!(run.port1_after_failback > 0);
}

#[test]
fn three_cycles_in_one_run() {
    let cfg = GuestConfig {
        blocks: 64,
        passes: 4,
        ..config(16)
    };
    let cycles = [(20, 50), (90, 120), (160, 200)];
    let run = run(&cfg, &options(&cycles, 2));
    assert_clean(&run, &cfg);
    assert_eq!(run.cycles_completed, 3);
    assert_eq!(run.directed, (3, 3));
    assert_failbacks_in_order(&run);
    assert!(run.failbacks.iter().any(|f| f.held > 0));
    let cycle = [DISK_SLOT, RING_SLOT];
    assert_eq!(run.ejected, cycle.repeat(3));
    assert_eq!(run.opened_disks, [DISK_SLOT; 3]);
    assert_eq!(
        run.disks.len(),
        7,
        "the boot disk, then a peer's and a returned one per cycle"
    );
    let one = ["drained", "released", "forwarding", "drained", "direct"];
    let mut names = vec!["hello"];
    for _ in 0..3 {
        names.extend(one);
    }
    assert_eq!(run.sent, names);
    assert!(run.port1_after_failback > 0);
    // The owner's `drained` at each failback counts every request forwarded so far.
    let counts: Vec<u64> = run.failbacks.iter().map(|f| f.drained.unwrap().0).collect();
    assert!(counts.is_sorted() && counts[0] > 0, "{counts:?}");
}

#[test]
fn an_owner_that_asks_for_its_disk_back_each_cycle() {
    let cfg = GuestConfig {
        migrate_at: 20,
        failback_at: 50,
        ..config(4)
    };
    // The first cycle runs on the owner's requests; the second handoff is the shim's, and the
    // owner asks again for the disk as soon as it forwards.
    let run = run(&cfg, &options(&[(ASKED, ASKED), (80, ASKED)], 1));
    assert_clean(&run, &cfg);
    assert_eq!(run.cycles_completed, 2);
    let mut names = vec!["hello", "migrate-request"];
    for _ in 0..2 {
        names.extend([
            "drained",
            "released",
            "forwarding",
            "failback-request",
            "drained",
            "direct",
        ]);
    }
    assert_eq!(run.sent, names);
    assert_failbacks_in_order(&run);
    let released = Message::Released { slot: DISK_SLOT };
    assert_eq!(
        run.messages.iter().filter(|m| **m == released).count(),
        2,
        "the returned disk is released from the slot it came back in"
    );
}

#[test]
fn cycles_at_switch_points_from_twenty_seeds() {
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut below = |n: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % n
    };
    for seed in 1..=20 {
        let cfg = GuestConfig {
            seed,
            qd: [1, 4, 16, 32][below(4) as usize],
            ..config(1)
        };
        let writes = cfg.blocks * u64::from(cfg.passes);
        let mut at = 0;
        let mut points = Vec::new();
        for _ in 0..1 + below(3) {
            let redirect = at + 1 + below(30);
            let failback = redirect + 1 + below(30);
            points.push((redirect, failback));
            at = failback;
        }
        let per_round = 1 + below(4) as usize;
        let run = run(&cfg, &options(&points, per_round));
        assert_clean(&run, &cfg);
        let due = points.iter().filter(|p| p.1 < writes).count();
        assert!(
            run.cycles_completed >= due,
            "seed {seed}: {points:?}: {} cycles",
            run.cycles_completed
        );
        for f in &run.failbacks {
            assert!(f.peer_idle, "seed {seed}");
            if let Some(expected) = &f.expected_first {
                assert_eq!(&f.first_taken, expected, "seed {seed}: {points:?}");
            }
        }
    }
}
