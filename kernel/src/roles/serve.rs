//! The peer's ring server: submissions are taken off the owner's ring in ring order and submitted
//! to the device (any [`BlockPort`]) in that order, many at a time; completions go back to the
//! ring as the device finishes them (claim 1: the second port's requests are performed on the
//! released device by the guest that now holds it; invariant I3, order).
//!
//! Hardware-independent: the peer's main loop (`roles::peer`) calls [`RingService::step`] and
//! decides when to halt; the host tests drive it against a fake virtio-blk device and a ring in
//! host memory whose client end plays the owner.

use crate::ports::dma::DmaPages;
use crate::ports::{self, BLOCK_BYTES, BlockPort, MAX_INFLIGHT, Op, SECTORS_PER_BLOCK};
use baton_core::ring::{self, RingServer, Submission};
use virtio_drivers::Hal;

/// How long a completion waits (µs) for the owner to make room in a full completion queue.
pub const COMPLETE_WAIT_US: u64 = 10_000_000;

/// What one [`RingService::step`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Nothing to do: no submission, no completion.
    Idle,
    /// Work was moved.
    Busy,
    /// `fault_after` completions were published; the next one was held back (the caller injects
    /// its malformed entry instead).
    FaultDue,
}

/// The peer's end of the ring, serving it on `disk`.
pub struct RingService<'r, H: Hal, P: BlockPort> {
    server: RingServer<'r>,
    disk: P,
    /// One block buffer per device request slot.
    bufs: [DmaPages<H>; MAX_INFLIGHT],
    free: heapless::Vec<usize, MAX_INFLIGHT>,
    /// The submission at the device in each slot.
    inflight: [Option<Submission>; MAX_INFLIGHT],
    /// A submission taken off the ring that found no free device slot (keeps ring order).
    pending: Option<Submission>,
    completed: u64,
    /// With `fault=bad-completion`: good completions before the malformed one.
    fault_after: Option<u64>,
}

impl<'r, H: Hal, P: BlockPort> RingService<'r, H, P> {
    /// Serves `server` on `disk`; with `fault_after`, stops after that many good completions.
    pub fn new(server: RingServer<'r>, disk: P, fault_after: Option<u64>) -> Self {
        RingService {
            server,
            disk,
            bufs: core::array::from_fn(|_| DmaPages::new(BLOCK_BYTES.div_ceil(4096))),
            free: (0..MAX_INFLIGHT).rev().collect(),
            inflight: [None; MAX_INFLIGHT],
            pending: None,
            completed: 0,
            fault_after,
        }
    }

    /// Completions published so far.
    pub fn completed(&self) -> u64 {
        self.completed
    }

    /// Whether nothing is at the device and no submission is waiting for a device slot.
    pub fn idle(&self) -> bool {
        self.pending.is_none() && self.free.len() == MAX_INFLIGHT
    }

    /// Stops serving and hands the disk back (the failback: the caller quiesces and ejects it).
    /// Call it when [`idle`](Self::idle): requests still at the device are abandoned.
    pub fn into_disk(self) -> P {
        self.disk
    }

    /// One round: take submissions while device slots are free, pass device completions back,
    /// beat the heartbeat. `now_us` bounds the wait for room in the completion queue.
    pub fn step(&mut self, now_us: &dyn Fn() -> u64) -> Step {
        let mut busy = self.take_submissions(now_us);
        while let Some((i, status)) = self.disk.poll() {
            busy = true;
            let Some(sub) = self.inflight[i].take() else {
                continue;
            };
            let mut status = ports::ring::ring_status(status);
            if sub.op == ring::Op::Read && status == ring::Status::Ok {
                // SAFETY: buffer `i` is ours and the device finished with it.
                let data =
                    unsafe { core::slice::from_raw_parts(self.bufs[i].as_ptr(), BLOCK_BYTES) };
                if self.server.write_slot(&sub, data).is_err() {
                    status = ring::Status::IoError;
                }
            }
            self.completed += 1;
            if self.fault_after.is_some_and(|n| self.completed > n) {
                return Step::FaultDue;
            }
            complete(&mut self.server, &sub, status, now_us);
            let _ = self.free.push(i);
        }
        self.server.heartbeat();
        if busy { Step::Busy } else { Step::Idle }
    }

    /// Takes submissions in ring order while device slots are free; whether any work was done.
    fn take_submissions(&mut self, now_us: &dyn Fn() -> u64) -> bool {
        let mut busy = false;
        loop {
            let sub = match self.pending.take() {
                Some(sub) => sub,
                None => match self.server.poll_submission() {
                    None => break,
                    Some(Ok(sub)) => sub,
                    Some(Err(e)) => {
                        busy = true;
                        if self.server.fault().is_some() {
                            log::error!("peer: the owner broke the ring protocol: {e}");
                        } else {
                            log::warn!("peer: rejected a submission: {e}");
                        }
                        continue;
                    }
                },
            };
            let Some(i) = self.free.pop() else {
                self.pending = Some(sub);
                break;
            };
            busy = true;
            self.start(sub, i, now_us);
        }
        busy
    }

    /// Submits `sub` to the device in slot `i`, or answers it with an error completion.
    fn start(&mut self, sub: Submission, i: usize, now_us: &dyn Fn() -> u64) {
        let buf = self.bufs[i].as_ptr();
        // SAFETY: buffer `i` is not at the device (its slot was on the free list).
        let data = unsafe { core::slice::from_raw_parts_mut(buf, BLOCK_BYTES) };
        let (op, lba) = match sub.op {
            ring::Op::Read => (Op::Read, sub.lba / SECTORS_PER_BLOCK),
            ring::Op::Write => (Op::Write, sub.lba / SECTORS_PER_BLOCK),
            ring::Op::Flush => (Op::Flush, 0),
        };
        let aligned = sub.lba.is_multiple_of(SECTORS_PER_BLOCK)
            && (sub.op == ring::Op::Flush || sub.len as usize == BLOCK_BYTES);
        let copied = sub.op != ring::Op::Write || self.server.read_slot(&sub, data).is_ok();
        // SAFETY: buffer `i` stays allocated (owned by `self`) and untouched until the device
        // returns slot `i`.
        let started = aligned && copied && unsafe { self.disk.submit(i, op, lba, buf) }.is_ok();
        if started {
            self.inflight[i] = Some(sub);
        } else {
            let _ = self.free.push(i);
            complete(&mut self.server, &sub, ring::Status::IoError, now_us);
        }
    }
}

/// Publishes a completion, waiting (at most [`COMPLETE_WAIT_US`]) while the owner has not
/// consumed earlier ones.
fn complete(
    server: &mut RingServer<'_>,
    sub: &Submission,
    status: ring::Status,
    now_us: &dyn Fn() -> u64,
) {
    let deadline = now_us().saturating_add(COMPLETE_WAIT_US);
    loop {
        match server.complete(sub, status) {
            Ok(()) => return,
            Err(ring::RingError::Full) if now_us() < deadline => core::hint::spin_loop(),
            Err(e) => {
                log::error!("peer: cannot complete request {}: {e}", sub.id);
                return;
            }
        }
    }
}

#[cfg(test)]
#[path = "serve_tests.rs"]
mod tests;
