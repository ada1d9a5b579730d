//! The owner's workload: the tagged, overwriting write schedule of `baton_core::workload`, kept
//! `qd` requests deep through the resource stack, then a read-back of every block.
//!
//! Two writes to the same block are never outstanding together, so the order in which writes to a
//! block are acknowledged is the order the schedule issued them, and the host can tell exactly
//! which write each block must hold (docs/guest-interface.md).
//!
//! The workload only submits and completes: [`Workload::step`] does one round of each, and the
//! owner's main loop (`roles::owner`) calls it between polls of the handoff. Time comes from a
//! [`Clock`] and the protocol lines go to a `core::fmt::Write`, so the whole owner runs on the
//! host too (`roles/owner_loop_tests.rs`: a handoff in the middle of a verified run).
//!
//! Each switch of the device (a handoff to the peer, a failback to the owner) is measured on its
//! own once the owner arms it ([`Workload::arm_switch`]): the longest completion gap until the
//! first completion on the port that serves the workload afterwards, printed as
//! `BATON switch kind=.. n=.. gap_us=..` ([`SwitchLine`]).

use crate::ports::{BlockPort, MAX_INFLIGHT, Op, Status};
use crate::stack::{Completion, ResourceStack, StackError, Tag};
use baton_core::cmdline::GuestConfig;
use baton_core::console::{GuestLine, SwitchKind, SwitchLine};
use baton_core::guest_steps::StepName;
use baton_core::redirector::Port;
use baton_core::report::GuestReport;
use baton_core::stats::{Histogram, PortStats};
use baton_core::tag;
use baton_core::timeline::Timeline;
use baton_core::workload::Schedule;
use core::fmt::Write;
use virtio_drivers::Hal;

/// Timeline bins (1 ms each): 16 s of a run.
const TIMELINE_BINS: usize = 16_384;
/// A run with no completion for this long is declared stuck (a handoff takes far less).
pub const STALL_US: u64 = 60_000_000;

/// Why the workload stopped early.
#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    /// The disk is smaller than the schedule needs (4 KiB blocks).
    #[error("the disk has {have} blocks, the schedule needs {needed}")]
    DiskTooSmall {
        /// Blocks the schedule touches.
        needed: u64,
        /// Blocks the disk has.
        have: u64,
    },
    /// No completion arrived for [`STALL_US`].
    #[error("no completion for {} s, {outstanding} requests outstanding", STALL_US / 1_000_000)]
    Stalled {
        /// Requests outstanding when the run gave up.
        outstanding: usize,
    },
    /// The stack refused a request.
    #[error("submit: {0}")]
    Submit(StackError),
}

/// The workload's time source: a fine-grained counter (the TSC in the guest) for latencies and
/// gaps, and microseconds since boot for completion times.
pub trait Clock {
    /// A monotonic counter.
    fn ticks(&self) -> u64;
    /// Counter ticks per microsecond (at least 1).
    fn ticks_per_us(&self) -> u64;
    /// Microseconds since boot.
    fn uptime_us(&self) -> u64;
}

/// Tracks the longest gap between two completions (the blackout a handoff causes), in ticks.
/// Every completion ticks it, the read-back's too, so a switch armed then sees the open gap; the
/// report's `max_gap_us` takes `max` when the writes end.
struct GapMeter {
    last: u64,
    max: u64,
}

impl GapMeter {
    fn new(now: u64) -> Self {
        GapMeter { last: now, max: 0 }
    }

    /// A completion at tick `now`; returns the gap it closed, in ticks.
    fn tick(&mut self, now: u64) -> u64 {
        let gap = now.saturating_sub(self.last);
        self.max = self.max.max(gap);
        self.last = now;
        gap
    }
}

/// The blackout of one switch of the device, armed by [`Workload::arm_switch`].
#[derive(Clone, Copy, Debug)]
struct ArmedSwitch {
    kind: SwitchKind,
    n: u32,
    /// The port whose first completion ends the switch.
    port: Port,
    /// The longest gap closed since arming, in ticks.
    max: u64,
}

/// At most one armed switch; each completion either widens its gap or, on the armed port, ends it.
#[derive(Debug, Default)]
struct SwitchMeter {
    armed: Option<ArmedSwitch>,
}

impl SwitchMeter {
    /// Measures switch `n` of `kind` until the first completion on `port` (replaces an armed one).
    fn arm(&mut self, kind: SwitchKind, n: u32, port: Port) {
        self.armed = Some(ArmedSwitch {
            kind,
            n,
            port,
            max: 0,
        });
    }

    /// A completion on `port` that closed a gap of `gap` ticks (since the completion before it,
    /// which may precede the arming). Returns the line to print when it ends the armed switch.
    fn completion(&mut self, port: Port, gap: u64, ticks_per_us: u64) -> Option<SwitchLine> {
        let armed = self.armed.as_mut()?;
        armed.max = armed.max.max(gap);
        if port != armed.port {
            return None;
        }
        let ArmedSwitch { kind, n, max, .. } = *armed;
        self.armed = None;
        Some(SwitchLine {
            kind,
            n,
            gap_us: max / ticks_per_us.max(1),
        })
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

    fn record(&mut self, latency_us: u64, now: u64) {
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

/// Where the run is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    /// Writing the schedule.
    Write,
    /// Reading every block back: next block to read, blocks done.
    Verify { next: u64, done: u64 },
    /// The report is ready.
    Done,
}

/// One run of the schedule of a [`GuestConfig`], timed by `C`, printing its lines to `W`.
pub struct Workload<'a, C: Clock, W: Write> {
    cfg: &'a GuestConfig,
    clock: C,
    out: W,
    sched: Schedule,
    report: GuestReport,
    qd: usize,
    total: u64,
    stage: Stage,
    /// Schedule sequence number of the write outstanding under each tag (0: none).
    seq_of_tag: [u64; MAX_INFLIGHT],
    next_seq: u64,
    done: u64,
    /// Tick after which a run without completions is stuck.
    stall_at: u64,
    start: u64,
    first: bool,
    gaps: GapMeter,
    switch: SwitchMeter,
    submitted_at: [u64; MAX_INFLIGHT],
    meters: [PortMeter; 2],
    timeline: Timeline<TIMELINE_BINS>,
}

impl<'a, C: Clock, W: Write> Workload<'a, C, W> {
    /// A run of `cfg`'s schedule on the stack's disk. Errors: [`WorkloadError::DiskTooSmall`].
    pub fn new<H: Hal, P: BlockPort>(
        cfg: &'a GuestConfig,
        stack: &ResourceStack<H, P>,
        clock: C,
        out: W,
    ) -> Result<Self, WorkloadError> {
        let sched = cfg.schedule();
        let needed = cfg.first_lba + cfg.blocks;
        let have = stack.capacity_blocks().unwrap_or(0);
        if have < needed {
            return Err(WorkloadError::DiskTooSmall { needed, have });
        }
        let total = sched.total_writes();
        let now = clock.ticks();
        let stall_at = now.saturating_add(STALL_US.saturating_mul(clock.ticks_per_us()));
        let timeline = Timeline::new(clock.uptime_us(), 1000);
        Ok(Workload {
            cfg,
            clock,
            out,
            sched,
            report: GuestReport::new(cfg),
            qd: usize::from(cfg.qd).clamp(1, MAX_INFLIGHT),
            total,
            stage: Stage::Write,
            seq_of_tag: [0; MAX_INFLIGHT],
            next_seq: 1,
            done: 0,
            stall_at,
            start: now,
            first: true,
            gaps: GapMeter::new(now),
            switch: SwitchMeter::default(),
            submitted_at: [0; MAX_INFLIGHT],
            meters: [PortMeter::new(), PortMeter::new()],
            timeline,
        })
    }

    /// The report so far (complete once [`step`](Self::step) returned `true`).
    pub fn report(&self) -> &GuestReport {
        &self.report
    }

    /// Where the lines went (the test's buffer on the host).
    pub fn console(&self) -> &W {
        &self.out
    }

    /// Restarts the stall timer: a completion arrived.
    fn progress(&mut self) {
        let now = self.clock.ticks();
        self.stall_at = now.saturating_add(STALL_US.saturating_mul(self.clock.ticks_per_us()));
    }

    fn stalled(&self) -> bool {
        self.clock.ticks() >= self.stall_at
    }

    /// Prints one protocol line.
    fn print(&mut self, line: &GuestLine<'_>) {
        let _ = writeln!(self.out, "{line}");
    }

    /// Starts measuring switch `n` of `kind`: from now until the first completion that port `port`
    /// delivers, the longest gap between two consecutive completions (the gap already open now,
    /// since the last completion before this call, counts). At that completion the workload
    /// prints `BATON switch kind=.. n=.. gap_us=..` ([`SwitchLine`], gap in µs) on its console.
    /// Arming again replaces an armed meter; a switch after the workload's last completion prints
    /// nothing.
    pub fn arm_switch(&mut self, kind: SwitchKind, n: u32, port: Port) {
        self.switch.arm(kind, n, port);
    }

    /// Times a completion on `port`: the write phase's blackout meter and the armed switch.
    fn completed(&mut self, port: Port) {
        let gap = self.gaps.tick(self.clock.ticks());
        let per_us = self.clock.ticks_per_us();
        if let Some(line) = self.switch.completion(port, gap, per_us) {
            crate::steps::mark(StepName::FirstCompletion);
            self.print(&GuestLine::Switch(line));
            if let Some(steps) = crate::steps::take() {
                self.print(&GuestLine::Steps(steps));
            }
        }
    }

    /// Writes of the schedule submitted so far.
    pub fn writes_submitted(&self) -> u64 {
        self.next_seq - 1
    }

    /// One round: submit up to the queue depth, take at most one completion. Returns `true` once
    /// the run is over ([`into_report`](Self::into_report) then gives the report).
    /// Errors: [`WorkloadError::Stalled`], [`WorkloadError::Submit`].
    pub fn step<H: Hal, P: BlockPort>(
        &mut self,
        stack: &mut ResourceStack<H, P>,
    ) -> Result<bool, WorkloadError> {
        match self.stage {
            Stage::Write => self.write_step(stack)?,
            Stage::Verify { .. } => self.verify_step(stack)?,
            Stage::Done => {}
        }
        if self.stage == Stage::Done {
            self.report.port1_requests = stack.port1_requests;
            self.report.port2_requests = stack.port2_requests;
            return Ok(true);
        }
        Ok(false)
    }

    /// The report of the run (the caller adds what only it knows, e.g. `held_at_switch`).
    pub fn into_report(self) -> GuestReport {
        self.report
    }

    fn write_step<H: Hal, P: BlockPort>(
        &mut self,
        stack: &mut ResourceStack<H, P>,
    ) -> Result<(), WorkloadError> {
        if self.done >= self.total {
            self.finish_writes(stack);
            return Ok(());
        }
        if stack.ring_fault.is_some() {
            // The peer broke the ring protocol: nothing more can be written safely.
            self.stop_submitting("port 2 faulted");
        }
        while stack.outstanding() < self.qd && self.next_seq <= self.total {
            let Some(lba) = self.sched.lba_of(self.next_seq) else {
                break;
            };
            if self.lba_busy(stack, lba) {
                break;
            }
            let Some(tag) = stack.alloc() else { break };
            self.sched.fill(self.next_seq, stack.buffer(tag));
            if self.first {
                self.print(&GuestLine::FirstIo);
                self.first = false;
            }
            stack
                .submit(tag, Op::Write, lba)
                .map_err(WorkloadError::Submit)?;
            self.seq_of_tag[tag] = self.next_seq;
            self.submitted_at[tag] = self.clock.ticks();
            self.next_seq += 1;
            self.report.writes_submitted += 1;
        }
        match stack.poll() {
            Some(c) => {
                if self.first_completion(c) {
                    return Ok(());
                }
                let latency_us =
                    (self.clock.ticks() - self.submitted_at[c.tag]) / self.clock.ticks_per_us();
                let now_us = self.clock.uptime_us();
                self.meters[usize::from(c.port == Port::Two)].record(latency_us, now_us);
                self.timeline.record(now_us);
                let seq = self.seq_of_tag[c.tag];
                self.seq_of_tag[c.tag] = 0;
                stack.release(c.tag);
                self.done += 1;
                if c.status == Status::Ok {
                    self.report.writes_acked += 1;
                } else {
                    log::warn!("write seq {seq} lba {} failed: {:?}", c.lba, c.status);
                    self.report.record_write_error(seq);
                    self.stop_submitting("a write failed");
                }
                self.progress();
            }
            None if self.stalled() => {
                return Err(WorkloadError::Stalled {
                    outstanding: stack.outstanding(),
                });
            }
            None => core::hint::spin_loop(),
        }
        if self.done >= self.total {
            self.finish_writes(stack);
        }
        Ok(())
    }

    /// The write phase is over: figures, the timeline and per-port lines, then the read-back.
    fn finish_writes<H: Hal, P: BlockPort>(&mut self, stack: &ResourceStack<H, P>) {
        let per_us = self.clock.ticks_per_us();
        let report = &mut self.report;
        report.elapsed_us = (self.clock.ticks() - self.start) / per_us;
        report.iops = report.writes_acked * 1_000_000 / report.elapsed_us.max(1);
        report.max_gap_us = self.gaps.max / per_us;
        let _ = self.timeline.write_lines(&mut self.out);
        for i in 0..self.meters.len() {
            if self.meters[i].hist.count() > 0 {
                let stats = self.meters[i].stats(i as u8 + 1);
                self.print(&GuestLine::PortStats(stats));
            }
        }
        self.stage = if let Some(e) = stack.ring_fault {
            let mut message = heapless::String::<128>::new();
            let _ = write!(message, "{e}");
            self.print(&GuestLine::PeerFault(&message));
            Stage::Done
        } else if self.cfg.verify {
            self.progress();
            Stage::Verify {
                next: self.cfg.first_lba,
                done: self.cfg.first_lba,
            }
        } else {
            Stage::Done
        };
    }

    /// The shim gave the run up (`give-up`; issue 9, "every ending is verified"): nothing more is
    /// submitted, every write without a completion counts as failed (it may still reach the disk,
    /// but it was never acknowledged), the read-back is skipped, and the next
    /// [`step`](Self::step) returns `true` with the final report. Does nothing once the run is
    /// over.
    pub fn give_up<H: Hal, P: BlockPort>(&mut self, stack: &ResourceStack<H, P>) {
        if self.stage == Stage::Done {
            return;
        }
        self.stop_submitting("the shim gave up");
        if self.stage == Stage::Write {
            for tag in 0..MAX_INFLIGHT {
                let seq = core::mem::take(&mut self.seq_of_tag[tag]);
                if seq != 0 {
                    self.report.record_write_error(seq);
                }
            }
            self.finish_writes(stack);
        }
        self.stage = Stage::Done;
    }

    /// Submits nothing more: the write phase ends once what is in flight completed (each may
    /// still fail), and the report lists every failed write. A storage workload stops at its first
    /// error (a full disk, a broken ring): writing on would only pile up failures whose sequence
    /// numbers the report could no longer all name, and the host could then not tell acknowledged
    /// writes from failed ones (issue 9, "every ending is verified").
    fn stop_submitting(&mut self, why: &str) {
        if self.next_seq <= self.total {
            log::error!("workload: stopping after seq {} ({why})", self.next_seq - 1);
            self.total = self.next_seq - 1;
        }
    }

    /// Counts the completion for the blackout meter; returns `true` (and counts a duplicate) when
    /// `c` is for a request that is not outstanding, which must then be ignored.
    fn first_completion(&mut self, c: Completion) -> bool {
        self.completed(c.port);
        if self.seq_of_tag[c.tag] == 0 {
            log::error!("duplicate completion for request {}", c.tag);
            self.report.duplicates += 1;
            return true;
        }
        false
    }

    /// Whether a write to `lba` is outstanding.
    fn lba_busy<H: Hal, P: BlockPort>(&self, stack: &ResourceStack<H, P>, lba: u64) -> bool {
        stack.outstanding() > 0
            && self
                .seq_of_tag
                .iter()
                .any(|&s| s != 0 && self.sched.lba_of(s) == Some(lba))
    }

    /// One round of the read-back, `qd` deep: every block must hold its last acknowledged write.
    fn verify_step<H: Hal, P: BlockPort>(
        &mut self,
        stack: &mut ResourceStack<H, P>,
    ) -> Result<(), WorkloadError> {
        let Stage::Verify { mut next, mut done } = self.stage else {
            return Ok(());
        };
        let end = self.cfg.first_lba + self.cfg.blocks;
        if done < end {
            while stack.outstanding() < self.qd && next < end {
                let Some(tag) = stack.alloc() else { break };
                stack
                    .submit(tag, Op::Read, next)
                    .map_err(WorkloadError::Submit)?;
                next += 1;
            }
            match stack.poll() {
                Some(c) => {
                    self.completed(c.port);
                    done += 1;
                    let ok = c.status == Status::Ok && self.block_matches(stack, c.tag, c.lba);
                    stack.release(c.tag);
                    if ok {
                        self.report.reads_verified += 1;
                    } else {
                        self.report.read_mismatches += 1;
                    }
                    self.progress();
                }
                None if self.stalled() => {
                    return Err(WorkloadError::Stalled {
                        outstanding: stack.outstanding(),
                    });
                }
                None => core::hint::spin_loop(),
            }
        }
        self.stage = if done < end {
            Stage::Verify { next, done }
        } else {
            Stage::Done
        };
        Ok(())
    }

    /// The write block `lba` must hold: the last acknowledged one (errors are never acknowledged,
    /// writes never submitted, after the workload stopped early, neither); 0 when none was.
    fn expected_seq(&self, lba: u64) -> u64 {
        let errors = self.report.error_seqs();
        let submitted = self.report.writes_submitted;
        (0..self.cfg.passes)
            .rev()
            .filter_map(|p| self.sched.seq_of(p, lba))
            .find(|&s| s <= submitted && !errors.contains(&s))
            .unwrap_or(0)
    }

    fn block_matches<H: Hal, P: BlockPort>(
        &self,
        stack: &mut ResourceStack<H, P>,
        tag: Tag,
        lba: u64,
    ) -> bool {
        let want = self.expected_seq(lba);
        // A write that failed may still have reached the disk: newer than the last acknowledged
        // one, it is no loss.
        let failed_later = |seq: u64| seq > want && self.report.error_seqs().contains(&seq);
        if want == 0 && stack.buffer(tag).iter().all(|&b| b == 0) {
            // Never written (acknowledged), and it holds nothing.
            return true;
        }
        match tag::check_block(stack.buffer(tag)) {
            Ok(t)
                if t.lba == lba
                    && t.vm == self.cfg.vm
                    && (t.seq == want || failed_later(t.seq)) =>
            {
                true
            }
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
}

#[cfg(test)]
#[path = "workload_tests.rs"]
mod tests;
