//! The owner's workload: the tagged, overwriting write schedule of `baton_core::workload`, kept
//! `qd` requests deep through the resource stack, then a read-back of every block.
//!
//! Two writes to the same block are never outstanding together, so the order in which writes to a
//! block are acknowledged is the order the schedule issued them, and the host can tell exactly
//! which write each block must hold (docs/guest-interface.md).

use crate::blk::{MAX_INFLIGHT, Op, Status};
use crate::clock::{self, Deadline};
use crate::handoff::OwnerHandoff;
use crate::stack::{Completion, ResourceStack, Tag};
use baton_core::cmdline::GuestConfig;
use baton_core::redirector::Port;
use baton_core::report::GuestReport;
use baton_core::stats::{Histogram, PortStats};
use baton_core::timeline::Timeline;

/// Timeline bins (1 ms each): 16 s of a run.
const TIMELINE_BINS: usize = 16_384;
use baton_core::tag;
use baton_core::workload::Schedule;

/// A run with no completion for this long is declared stuck (a handoff takes far less).
const STALL_US: u64 = 60_000_000;

/// Why the workload stopped early (reported through `Debug`).
#[derive(Debug)]
#[allow(dead_code)]
pub enum WorkloadError {
    /// The disk is smaller than the schedule needs.
    DiskTooSmall { needed: u64, have: u64 },
    /// No completion arrived for [`STALL_US`].
    Stalled { outstanding: usize },
    /// The stack refused a request.
    Submit(crate::stack::StackError),
}

/// Tracks the longest gap between two completions (the blackout a handoff causes).
struct GapMeter {
    last: u64,
    max: u64,
}

impl GapMeter {
    fn new() -> Self {
        GapMeter {
            last: clock::rdtsc(),
            max: 0,
        }
    }

    fn tick(&mut self) {
        let now = clock::rdtsc();
        self.max = self.max.max(now - self.last);
        self.last = now;
    }

    fn max_us(&self) -> u64 {
        self.max / clock::tsc_per_us()
    }
}

/// Write latencies and completion times of one port.
struct PortMeter {
    hist: Histogram,
    first_us: u64,
    last_us: u64,
}

impl PortMeter {
    const fn new() -> Self {
        PortMeter {
            hist: Histogram::new(),
            first_us: 0,
            last_us: 0,
        }
    }

    fn record(&mut self, latency_us: u64) {
        let now = clock::uptime_us();
        if self.hist.count() == 0 {
            self.first_us = now;
        }
        self.last_us = now;
        self.hist.record(latency_us);
    }

    fn stats(&self, port: u8) -> PortStats {
        PortStats::from_histogram(port, &self.hist, self.first_us, self.last_us)
    }
}

/// Runs the schedule of `cfg` and returns the report to print. `handoff` is polled all along, so
/// the shim can move the disk away in the middle of the run.
pub fn run(
    cfg: &GuestConfig,
    stack: &mut ResourceStack,
    handoff: &mut OwnerHandoff,
) -> Result<GuestReport, WorkloadError> {
    let sched = cfg.schedule();
    let needed = cfg.first_lba + cfg.blocks;
    let have = stack.capacity_blocks().unwrap_or(0);
    if have < needed {
        return Err(WorkloadError::DiskTooSmall { needed, have });
    }
    let mut report = GuestReport::new(cfg);
    let qd = usize::from(cfg.qd).clamp(1, MAX_INFLIGHT);
    let mut total = sched.total_writes();

    // Write phase.
    let mut seq_of_tag = [0u64; MAX_INFLIGHT];
    let mut next_seq = 1u64;
    let mut done = 0u64;
    let mut stall = Deadline::after_us(STALL_US);
    let start = clock::rdtsc();
    let mut first = true;
    let mut gaps = GapMeter::new();
    let mut submitted_at = [0u64; MAX_INFLIGHT];
    let mut meters = [PortMeter::new(), PortMeter::new()];
    let mut timeline: Timeline<TIMELINE_BINS> = Timeline::new(clock::uptime_us(), 1000);
    while done < total {
        handoff.poll(stack);
        if cfg.migrate_at != 0 && next_seq > cfg.migrate_at {
            handoff.request_migration();
        }
        if stack.ring_fault.is_some() && next_seq <= total {
            // The peer broke the ring protocol: nothing more can be written safely. Let what is
            // in flight fail and report.
            log::error!(
                "workload: stopping after seq {} (port 2 faulted)",
                next_seq - 1
            );
            total = next_seq - 1;
        }
        while stack.outstanding() < qd && next_seq <= total {
            let Some(lba) = sched.lba_of(next_seq) else {
                break;
            };
            if lba_busy(&seq_of_tag, stack, &sched, lba) {
                break;
            }
            let Some(tag) = stack.alloc() else { break };
            sched.fill(next_seq, stack.buffer(tag));
            if first {
                crate::baton_line!("first-io");
                first = false;
            }
            stack
                .submit(tag, Op::Write, lba)
                .map_err(WorkloadError::Submit)?;
            seq_of_tag[tag] = next_seq;
            submitted_at[tag] = clock::rdtsc();
            next_seq += 1;
            report.writes_submitted += 1;
        }
        match stack.poll() {
            Some(c) => {
                if first_completion(&mut gaps, &mut report, &seq_of_tag, c) {
                    continue;
                }
                let latency_us = (clock::rdtsc() - submitted_at[c.tag]) / clock::tsc_per_us();
                meters[usize::from(c.port == Port::Two)].record(latency_us);
                timeline.record(clock::uptime_us());
                let seq = seq_of_tag[c.tag];
                seq_of_tag[c.tag] = 0;
                stack.release(c.tag);
                done += 1;
                if c.status == Status::Ok {
                    report.writes_acked += 1;
                } else {
                    log::warn!("write seq {seq} lba {} failed: {:?}", c.lba, c.status);
                    report.record_write_error(seq);
                }
                stall = Deadline::after_us(STALL_US);
            }
            None if stall.expired() => {
                return Err(WorkloadError::Stalled {
                    outstanding: stack.outstanding(),
                });
            }
            None => core::hint::spin_loop(),
        }
    }
    report.elapsed_us = (clock::rdtsc() - start) / clock::tsc_per_us();
    report.iops = report.writes_acked * 1_000_000 / report.elapsed_us.max(1);

    report.max_gap_us = gaps.max_us();
    let _ = timeline.write_lines(&mut crate::serial::Console);
    for (i, meter) in meters.iter().enumerate() {
        if meter.hist.count() > 0 {
            crate::serial::write_fmt(format_args!("{}\n", meter.stats(i as u8 + 1)));
        }
    }
    if let Some(e) = stack.ring_fault {
        crate::baton_line!("peer-fault {e}");
    } else if cfg.verify {
        verify(cfg, &sched, stack, handoff, &mut report)?;
    }
    report.held_at_switch = handoff.held_at_switch;
    report.port1_requests = stack.port1_requests;
    report.port2_requests = stack.port2_requests;
    Ok(report)
}

/// Counts the completion for the blackout meter; returns `true` (and counts a duplicate) when
/// `c` is for a request that is not outstanding, which must then be ignored.
fn first_completion(
    gaps: &mut GapMeter,
    report: &mut GuestReport,
    seq_of_tag: &[u64],
    c: Completion,
) -> bool {
    gaps.tick();
    if seq_of_tag[c.tag] == 0 {
        log::error!("duplicate completion for request {}", c.tag);
        report.duplicates += 1;
        return true;
    }
    false
}

/// Whether a write to `lba` is outstanding.
fn lba_busy(seq_of_tag: &[u64], stack: &ResourceStack, sched: &Schedule, lba: u64) -> bool {
    stack.outstanding() > 0
        && seq_of_tag
            .iter()
            .any(|&s| s != 0 && sched.lba_of(s) == Some(lba))
}

/// The write block `lba` must hold: the last acknowledged one (errors are never acknowledged).
fn expected_seq(cfg: &GuestConfig, sched: &Schedule, report: &GuestReport, lba: u64) -> u64 {
    let errors = report.error_seqs();
    (0..cfg.passes)
        .rev()
        .filter_map(|p| sched.seq_of(p, lba))
        .find(|s| !errors.contains(s))
        .unwrap_or(0)
}

/// Reads every block back, `qd` deep, and checks it holds its last acknowledged write.
fn verify(
    cfg: &GuestConfig,
    sched: &Schedule,
    stack: &mut ResourceStack,
    handoff: &mut OwnerHandoff,
    report: &mut GuestReport,
) -> Result<(), WorkloadError> {
    let qd = usize::from(cfg.qd).clamp(1, MAX_INFLIGHT);
    let end = cfg.first_lba + cfg.blocks;
    let mut next = cfg.first_lba;
    let mut done = cfg.first_lba;
    let mut stall = Deadline::after_us(STALL_US);
    while done < end {
        handoff.poll(stack);
        while stack.outstanding() < qd && next < end {
            let Some(tag) = stack.alloc() else { break };
            stack
                .submit(tag, Op::Read, next)
                .map_err(WorkloadError::Submit)?;
            next += 1;
        }
        match stack.poll() {
            Some(c) => {
                done += 1;
                let ok = c.status == Status::Ok
                    && block_matches(cfg, sched, report, stack, c.tag, c.lba);
                stack.release(c.tag);
                if ok {
                    report.reads_verified += 1;
                } else {
                    report.read_mismatches += 1;
                }
                stall = Deadline::after_us(STALL_US);
            }
            None if stall.expired() => {
                return Err(WorkloadError::Stalled {
                    outstanding: stack.outstanding(),
                });
            }
            None => core::hint::spin_loop(),
        }
    }
    Ok(())
}

fn block_matches(
    cfg: &GuestConfig,
    sched: &Schedule,
    report: &GuestReport,
    stack: &mut ResourceStack,
    tag: Tag,
    lba: u64,
) -> bool {
    let want = expected_seq(cfg, sched, report, lba);
    match tag::check_block(stack.buffer(tag)) {
        Ok(t) if t.lba == lba && t.vm == cfg.vm && t.seq == want => true,
        Ok(t) => {
            log::warn!(
                "lba {lba}: holds vm {} seq {} lba {}, want seq {want}",
                t.vm,
                t.seq,
                t.lba
            );
            false
        }
        Err(e) => {
            log::warn!("lba {lba}: bad block ({e:?}), want seq {want}");
            false
        }
    }
}
