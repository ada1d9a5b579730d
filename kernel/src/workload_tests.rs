//! The per-switch blackout meter: the pure [`SwitchMeter`], then the workload on a fake
//! virtio-blk whose completions the test holds back to open a gap around a (fake) switch.

use super::*;
use crate::fakes::blk::{DiskHandle, FakeBlkTransport};
use crate::fakes::hal::FakeHal;
use crate::ports::SECTORS_PER_BLOCK;
use crate::ports::blk::BlkDevice;
use std::cell::Cell;
use std::rc::Rc;
use std::string::String;

type Stack = ResourceStack<FakeHal, BlkDevice<FakeHal, FakeBlkTransport>>;

/// Ticks per microsecond of [`RoundClock`].
const PER_US: u64 = 10;

/// A clock the test moves: one microsecond per round, however often the workload reads it.
#[derive(Clone, Default)]
struct RoundClock(Rc<Cell<u64>>);

impl RoundClock {
    fn advance_us(&self, us: u64) {
        self.0.set(self.0.get() + us * PER_US);
    }
}

impl Clock for RoundClock {
    fn ticks(&self) -> u64 {
        self.0.get()
    }

    fn ticks_per_us(&self) -> u64 {
        PER_US
    }

    fn uptime_us(&self) -> u64 {
        self.0.get() / PER_US
    }
}

#[test]
fn the_meter_keeps_the_longest_gap_until_the_armed_port_completes() {
    let mut m = SwitchMeter::default();
    assert_eq!(m.completion(Port::One, 500, PER_US), None, "nothing armed");
    m.arm(SwitchKind::Handoff, 1, Port::Two);
    for gap in [50, 300, 20] {
        assert_eq!(m.completion(Port::One, gap, PER_US), None);
    }
    let line = m.completion(Port::Two, 70, PER_US).unwrap();
    assert_eq!(
        line,
        SwitchLine {
            kind: SwitchKind::Handoff,
            n: 1,
            gap_us: 30
        }
    );
    assert_eq!(m.completion(Port::Two, 900, PER_US), None, "printed once");
}

#[test]
fn arming_again_replaces_the_armed_switch() {
    let mut m = SwitchMeter::default();
    m.arm(SwitchKind::Handoff, 1, Port::Two);
    assert_eq!(m.completion(Port::One, 9_000, 1), None);
    m.arm(SwitchKind::Failback, 2, Port::One);
    let line = m.completion(Port::One, 40, 1).unwrap();
    assert_eq!(
        (line.kind, line.n, line.gap_us),
        (SwitchKind::Failback, 2, 40)
    );
}

/// What the test does in one round of the run.
enum Act {
    /// The device completes its oldest request.
    Complete,
    /// The device completes nothing (the switch's blackout).
    Hold,
}

/// Runs `cfg` on a fake disk, one completion per round unless `script` holds it; `script` sees
/// the round number and the workload (to arm switches). Returns the console.
fn run(
    cfg: &GuestConfig,
    mut script: impl FnMut(u64, &mut Workload<'_, RoundClock, String>) -> Act,
) -> String {
    let (transport, disk): (_, DiskHandle) =
        FakeBlkTransport::new((cfg.first_lba + cfg.blocks) * SECTORS_PER_BLOCK);
    disk.borrow_mut().hold = true;
    let mut stack = Stack::new();
    stack.attach_port1(BlkDevice::new(transport).unwrap());
    let clock = RoundClock::default();
    let mut workload = Workload::new(cfg, &stack, clock.clone(), String::new()).unwrap();
    for round in 0..100_000 {
        if workload.step(&mut stack).unwrap() {
            let report = workload.report();
            assert_eq!(report.writes_acked, cfg.blocks * u64::from(cfg.passes));
            assert_eq!(report.reads_verified, cfg.blocks);
            return workload.console().clone();
        }
        if let Act::Complete = script(round, &mut workload) {
            disk.borrow_mut().complete(1);
        }
        clock.advance_us(1);
    }
    panic!("the run did not finish");
}

fn config() -> GuestConfig {
    GuestConfig {
        blocks: 16,
        passes: 2,
        qd: 4,
        seed: 5,
        ..GuestConfig::default()
    }
}

fn switch_lines(console: &str) -> Vec<&str> {
    console
        .lines()
        .filter(|l| l.starts_with("BATON switch "))
        .collect()
}

#[test]
fn a_gap_across_a_switch_is_printed_once_at_the_armed_ports_completion() {
    let cfg = config();
    // Completions stop at round 20; the switch is armed 30 rounds into the gap (the open gap
    // counts), and completions resume at round 80.
    let console = run(&cfg, |round, w| {
        if round == 50 {
            w.arm_switch(SwitchKind::Failback, 3, Port::One);
        }
        if (20..80).contains(&round) {
            Act::Hold
        } else {
            Act::Complete
        }
    });
    let lines = switch_lines(&console);
    assert_eq!(lines.len(), 1, "{console}");
    let line = match GuestLine::parse(lines[0]) {
        Some(Ok(GuestLine::Switch(s))) => s,
        other => panic!("{other:?}"),
    };
    assert_eq!((line.kind, line.n), (SwitchKind::Failback, 3));
    // 60 rounds without a completion, one microsecond each (the step of round 80 completes).
    assert!((60..=62).contains(&line.gap_us), "{line}");
}

#[test]
fn nothing_is_printed_without_a_completion_on_the_armed_port() {
    let cfg = config();
    let console = run(&cfg, |round, w| {
        if round == 10 {
            w.arm_switch(SwitchKind::Handoff, 1, Port::Two);
        }
        Act::Complete
    });
    assert!(switch_lines(&console).is_empty(), "{console}");
}

#[test]
fn a_switch_during_the_read_back_is_measured_too() {
    let cfg = config();
    let writes = cfg.blocks * u64::from(cfg.passes);
    let mut armed = false;
    let console = run(&cfg, |_, w| {
        if !armed && w.report().writes_acked == writes {
            armed = true;
            w.arm_switch(SwitchKind::Handoff, 7, Port::One);
            return Act::Hold;
        }
        Act::Complete
    });
    let lines = switch_lines(&console);
    assert_eq!(lines.len(), 1, "{console}");
    assert!(lines[0].starts_with("BATON switch kind=handoff n=7 gap_us="));
    let result = console.find("BATON result").unwrap_or(console.len());
    let timeline = console.find("BATON timeline").unwrap();
    let at = console.find("BATON switch").unwrap();
    assert!(timeline < at && at < result, "printed during the read-back");
}

#[test]
fn the_first_failed_write_stops_the_submissions_and_the_rest_is_verified() {
    let cfg = config();
    let total = cfg.blocks * u64::from(cfg.passes);
    let (transport, disk): (_, DiskHandle) =
        FakeBlkTransport::new((cfg.first_lba + cfg.blocks) * SECTORS_PER_BLOCK);
    disk.borrow_mut().hold = true;
    let mut stack = Stack::new();
    stack.attach_port1(BlkDevice::new(transport).unwrap());
    let clock = RoundClock::default();
    let mut workload = Workload::new(&cfg, &stack, clock.clone(), String::new()).unwrap();
    let mut failed_at = None;
    for round in 0..100_000 {
        if workload.step(&mut stack).unwrap() {
            let r = workload.report();
            let submitted_then = failed_at.unwrap();
            // Nothing after the failure was submitted beyond what was already in flight.
            assert!(r.writes_submitted <= submitted_then + 1, "{r:?}");
            assert!(r.writes_submitted < total);
            assert_eq!(r.write_errors, 1);
            assert_eq!(r.writes_acked + r.write_errors, r.writes_submitted);
            assert_eq!((r.reads_verified, r.read_mismatches), (cfg.blocks, 0));
            return;
        }
        if round == 10 {
            failed_at = Some(workload.writes_submitted());
            disk.borrow_mut().fail_next = 1;
        }
        disk.borrow_mut().complete(1);
        clock.advance_us(1);
    }
    panic!("the run did not finish");
}

#[test]
fn a_run_given_up_counts_what_had_no_completion_as_failed() {
    let cfg = config();
    let (transport, disk): (_, DiskHandle) =
        FakeBlkTransport::new((cfg.first_lba + cfg.blocks) * SECTORS_PER_BLOCK);
    disk.borrow_mut().hold = true;
    let mut stack = Stack::new();
    stack.attach_port1(BlkDevice::new(transport).unwrap());
    let clock = RoundClock::default();
    let mut workload = Workload::new(&cfg, &stack, clock.clone(), String::new()).unwrap();
    for _ in 0..10 {
        assert!(!workload.step(&mut stack).unwrap());
        disk.borrow_mut().complete(1);
        clock.advance_us(1);
    }
    // The device stops completing; the shim gives up with requests in flight.
    assert!(!workload.step(&mut stack).unwrap());
    let in_flight = stack.outstanding() as u64;
    assert!(in_flight > 0);
    workload.give_up(&stack);
    assert!(workload.step(&mut stack).unwrap(), "the report is final");
    let r = workload.report();
    assert_eq!(r.write_errors, in_flight);
    assert_eq!(r.error_seq_count as u64, in_flight);
    assert_eq!(r.writes_acked + r.write_errors, r.writes_submitted);
    assert_eq!(r.reads_verified, 0, "no read-back");
    // Late completions change nothing.
    disk.borrow_mut().complete(64);
    assert!(workload.step(&mut stack).unwrap());
    assert_eq!(workload.report().write_errors, in_flight);
}
