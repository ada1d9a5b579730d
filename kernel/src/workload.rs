//! The owner's workload: the tagged, overwriting write schedule of `baton_core::workload`, kept
//! `qd` requests deep through the resource stack, then a read-back of every block.
//!
//! Two writes to the same block are never outstanding together, so the order in which writes to a
//! block are acknowledged is the order the schedule issued them, and the host can tell exactly
//! which write each block must hold (docs/guest-interface.md).

use crate::blk::{MAX_INFLIGHT, Op, Status};
use crate::clock::{self, Deadline};
use crate::stack::{ResourceStack, Tag};
use baton_core::cmdline::GuestConfig;
use baton_core::report::{GuestReport, MAX_ERROR_SEQS};
use baton_core::tag;
use baton_core::workload::Schedule;

/// A run with no completion for this long is declared stuck.
const STALL_US: u64 = 30_000_000;

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

/// Runs the schedule of `cfg` and returns the report to print.
pub fn run(cfg: &GuestConfig, stack: &mut ResourceStack) -> Result<GuestReport, WorkloadError> {
    let sched = cfg.schedule();
    let needed = cfg.first_lba + cfg.blocks;
    let have = stack.capacity_blocks().unwrap_or(0);
    if have < needed {
        return Err(WorkloadError::DiskTooSmall { needed, have });
    }
    let mut report = GuestReport {
        role: cfg.role,
        vm: cfg.vm,
        seed: cfg.seed,
        blocks: cfg.blocks,
        passes: cfg.passes,
        qd: cfg.qd,
        first_lba: cfg.first_lba,
        writes_submitted: 0,
        writes_acked: 0,
        write_errors: 0,
        error_seqs: [0; MAX_ERROR_SEQS],
        error_seq_count: 0,
        reads_verified: 0,
        read_mismatches: 0,
        elapsed_us: 0,
        iops: 0,
        port1_requests: 0,
        port2_requests: 0,
    };
    let qd = usize::from(cfg.qd).clamp(1, MAX_INFLIGHT);
    let total = sched.total_writes();

    // Write phase.
    let mut seq_of_tag = [0u64; MAX_INFLIGHT];
    let mut next_seq = 1u64;
    let mut done = 0u64;
    let mut stall = Deadline::after_us(STALL_US);
    let start = clock::rdtsc();
    let mut first = true;
    while done < total {
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
            next_seq += 1;
            report.writes_submitted += 1;
        }
        match stack.poll() {
            Some(c) => {
                let seq = seq_of_tag[c.tag];
                seq_of_tag[c.tag] = 0;
                stack.release(c.tag);
                done += 1;
                if c.status == Status::Ok {
                    report.writes_acked += 1;
                } else {
                    log::warn!("write seq {seq} lba {} failed: {:?}", c.lba, c.status);
                    note_error(&mut report, seq);
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

    if cfg.verify {
        verify(cfg, &sched, stack, &mut report)?;
    }
    report.port1_requests = stack.port1_requests;
    report.port2_requests = stack.port2_requests;
    Ok(report)
}

/// Whether a write to `lba` is outstanding.
fn lba_busy(seq_of_tag: &[u64], stack: &ResourceStack, sched: &Schedule, lba: u64) -> bool {
    stack.outstanding() > 0
        && seq_of_tag
            .iter()
            .any(|&s| s != 0 && sched.lba_of(s) == Some(lba))
}

fn note_error(report: &mut GuestReport, seq: u64) {
    report.write_errors += 1;
    let n = usize::from(report.error_seq_count);
    if n < MAX_ERROR_SEQS {
        report.error_seqs[n] = seq;
        report.error_seq_count += 1;
    }
}

/// The write block `lba` must hold: the last acknowledged one (errors are never acknowledged).
fn expected_seq(cfg: &GuestConfig, sched: &Schedule, report: &GuestReport, lba: u64) -> u64 {
    let errors = &report.error_seqs[..usize::from(report.error_seq_count)];
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
    report: &mut GuestReport,
) -> Result<(), WorkloadError> {
    let qd = usize::from(cfg.qd).clamp(1, MAX_INFLIGHT);
    let end = cfg.first_lba + cfg.blocks;
    let mut next = cfg.first_lba;
    let mut done = cfg.first_lba;
    let mut stall = Deadline::after_us(STALL_US);
    while done < end {
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
