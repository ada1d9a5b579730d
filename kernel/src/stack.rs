//! The resource stack: the block API the workload sees (allocate a request, fill its buffer,
//! submit, poll for completions), on top of the port redirector and its two ports.
//!
//! Port 1 is any [`BlockPort`] (in the guest the assigned virtio-blk device,
//! [`crate::ports::blk::BlkDevice`]); port 2 is the shared-memory ring to the peer guest
//! ([`RingClient`]). [`Redirector`] decides per request (US 20070204265A1 claim 1):
//! port 1 until the switch, then requests are held while port 1 drains, and after the device was
//! released and the ring opened they are forwarded in submission order.
//!
//! Each request owns one 4 KiB DMA buffer ([`DmaPages`]) for its whole life: port 1 transfers
//! straight from it, port 2 copies it into a ring slot (and back, for reads).
//!
//! Hardware-independent: generic over the DMA [`Hal`] and the port-1 [`BlockPort`], unit-tested on
//! the host (`stack_tests.rs`) with a fake port 1 and a real ring over host memory.

use crate::ports::dma::DmaPages;
use crate::ports::{self, BLOCK_BYTES, BlkError, BlockPort, MAX_INFLIGHT, Op, Status};
use baton_core::redirector::{Port, RedirectError, Redirector, Route, State};
use baton_core::ring::{RingClient, RingError};
use virtio_drivers::Hal;

/// Identifies one outstanding request (an index into the stack's request table).
pub type Tag = usize;

/// Queue capacity of the redirector (holds up to `N - 1` requests).
const REDIRECTOR_SLOTS: usize = 2 * MAX_INFLIGHT;

/// Why a submission was refused.
#[derive(Debug, thiserror::Error)]
pub enum StackError {
    /// No device behind the port the redirector chose.
    #[error("no device behind port 1")]
    NoDevice,
    /// Port 1 refused the request.
    #[error("port 1: {0}")]
    Port1(BlkError),
    /// The redirector refused the request.
    #[error("redirector: {0}")]
    Redirect(RedirectError),
}

/// A finished request.
#[derive(Clone, Copy, Debug)]
pub struct Completion {
    /// The request.
    pub tag: Tag,
    /// The port that performed it.
    pub port: Port,
    /// Its 4 KiB block.
    pub lba: u64,
    /// How it ended.
    pub status: Status,
}

#[derive(Clone, Copy)]
struct Entry {
    op: Op,
    lba: u64,
    /// Ring slot while the request is at port 2.
    ring_slot: Option<u32>,
}

/// The block API over the redirector's ports.
pub struct ResourceStack<H: Hal, P: BlockPort> {
    redirector: Redirector<REDIRECTOR_SLOTS>,
    port1: Option<P>,
    port2: Option<RingClient<'static>>,
    entries: [Entry; MAX_INFLIGHT],
    /// Request `tag`'s block buffer.
    bufs: [DmaPages<H>; MAX_INFLIGHT],
    free: heapless::Vec<u8, MAX_INFLIGHT>,
    /// Completions decided by the stack itself (port failures), delivered by `poll`.
    failed: heapless::Deque<(Tag, Port, Status), MAX_INFLIGHT>,
    /// Requests at port 2 without a completion, in the order they were forwarded.
    forwarded: heapless::Vec<u8, MAX_INFLIGHT>,
    /// Requests abandoned at port 2 (the peer died), in forward order: replayed on port 1 first
    /// when the device is back.
    replay: heapless::Vec<u8, MAX_INFLIGHT>,
    /// Requests sent to port 1 so far.
    pub port1_requests: u64,
    /// Requests sent to port 2 so far.
    pub port2_requests: u64,
    /// The first ring fault seen (the peer broke the protocol).
    pub ring_fault: Option<RingError>,
}

impl<H: Hal, P: BlockPort> Default for ResourceStack<H, P> {
    fn default() -> Self {
        Self::new()
    }
}

impl<H: Hal, P: BlockPort> ResourceStack<H, P> {
    /// A stack with no device yet and [`MAX_INFLIGHT`] request buffers from `H`.
    pub fn new() -> Self {
        let entries = [Entry {
            op: Op::Read,
            lba: 0,
            ring_slot: None,
        }; MAX_INFLIGHT];
        let bufs = core::array::from_fn(|_| DmaPages::new(BLOCK_BYTES.div_ceil(4096)));
        let mut free = heapless::Vec::new();
        for tag in (0..MAX_INFLIGHT as u8).rev() {
            let _ = free.push(tag);
        }
        ResourceStack {
            redirector: Redirector::new(),
            port1: None,
            port2: None,
            entries,
            bufs,
            free,
            failed: heapless::Deque::new(),
            forwarded: heapless::Vec::new(),
            replay: heapless::Vec::new(),
            port1_requests: 0,
            port2_requests: 0,
            ring_fault: None,
        }
    }

    /// Puts `dev` behind port 1.
    pub fn attach_port1(&mut self, dev: P) {
        self.port1 = Some(dev);
    }

    /// Takes the device away from port 1 (after the drain) so it can be quiesced and ejected.
    pub fn detach_port1(&mut self) -> Option<P> {
        self.port1.take()
    }

    /// Takes the ring client away from port 2 (after a failback, before the ring is unplugged).
    pub fn detach_port2(&mut self) -> Option<RingClient<'static>> {
        self.port2.take()
    }

    /// Puts the ring client behind port 2.
    pub fn attach_port2(&mut self, client: RingClient<'static>) {
        self.port2 = Some(client);
    }

    /// Whether port 2 has a ring.
    pub fn has_port2(&self) -> bool {
        self.port2.is_some()
    }

    /// Whether the peer has attached to port 2's ring: its state word says `Ready`, which the
    /// peer writes only once the disk is up behind it (untrusted, like every word of the ring:
    /// it only lets the owner open port 2 early, and a peer that lies serves nothing).
    pub fn peer_attached(&self) -> bool {
        self.port2
            .as_ref()
            .is_some_and(|c| c.peer_state() == Some(baton_core::ring::SideState::Ready))
    }

    /// The peer's heartbeat counter in the ring (untrusted: compare successive values only) and
    /// whether forwarded requests wait for it; `None` without port 2.
    pub fn peer_heartbeat(&self) -> Option<(u32, bool)> {
        let waiting = self.redirector.snapshot().port2_inflight > 0;
        self.port2.as_ref().map(|c| (c.peer_heartbeat(), waiting))
    }

    /// The redirector's state.
    pub fn state(&self) -> State {
        self.redirector.state()
    }

    /// Requests held at port 2 (queued, not yet forwarded).
    pub fn held(&self) -> u16 {
        self.redirector.snapshot().queued
    }

    /// Directs the switch: new requests are held for port 2 while port 1 drains.
    pub fn direct_switch(&mut self) -> Result<State, RedirectError> {
        self.redirector.direct_switch()
    }

    /// Port 1's device was quiesced and released.
    pub fn device_released(&mut self) -> Result<State, RedirectError> {
        self.redirector.device_released()
    }

    /// Opens port 2 and forwards what was held, in order.
    pub fn open_port2(&mut self) -> Result<State, RedirectError> {
        let state = self.redirector.open_port2()?;
        self.dispatch_queued();
        Ok(state)
    }

    /// Takes back a handoff that could not complete, before port 2 opened (the redirector's
    /// [`take_back`](baton_core::redirector::Redirector::take_back)): with the device still
    /// attached, the held requests go to port 1 now, in order, after those in flight there;
    /// after its release they wait for [`device_attached`](Self::device_attached).
    pub fn take_back(&mut self) -> Result<State, RedirectError> {
        let state = self.redirector.take_back()?;
        self.dispatch_queued();
        Ok(state)
    }

    /// Directs the failback: new requests are held while port 2 drains.
    pub fn begin_failback(&mut self) -> Result<State, RedirectError> {
        self.redirector.begin_failback()
    }

    /// The device is behind port 1 again: the requests abandoned at port 2 (if the peer died)
    /// are replayed on it first, in the order they were forwarded, then the held requests go, in
    /// order.
    pub fn device_attached(&mut self) -> Result<State, RedirectError> {
        let state = self.redirector.device_attached()?;
        let replay = core::mem::take(&mut self.replay);
        for tag in replay.into_iter().map(usize::from) {
            if let Err(e) = self.redirector.resubmit_port1() {
                log::error!("stack: replay of request {tag}: {e}");
                let _ = self.failed.push_back((tag, Port::One, Status::DriverError));
                continue;
            }
            if self.send_port1(tag).is_err() {
                self.completed(Port::One);
                let _ = self.failed.push_back((tag, Port::One, Status::DriverError));
            }
        }
        self.dispatch_queued();
        Ok(state)
    }

    /// The peer is gone (its QEMU exited: nothing it had will complete or reach the disk any
    /// more): port 2 is given up and every forwarded request without a completion is kept, in
    /// forward order, for replay on port 1 ([`device_attached`](Self::device_attached)); new
    /// requests are held. Returns (requests to replay, requests held). Errors: the redirector's
    /// (not forwarding or failing back).
    pub fn peer_lost(&mut self) -> Result<(u16, u16), RedirectError> {
        self.redirector.abandon_port2()?;
        self.port2 = None;
        for &tag in &self.forwarded {
            self.entries[usize::from(tag)].ring_slot = None;
            let _ = self.replay.push(tag);
        }
        self.forwarded.clear();
        Ok((self.replay.len() as u16, self.held()))
    }

    /// Size of the port-1 disk in 4 KiB blocks.
    pub fn capacity_blocks(&self) -> Option<u64> {
        self.port1.as_ref().map(P::capacity_blocks)
    }

    /// Takes a free request; `None` when [`MAX_INFLIGHT`] are outstanding.
    pub fn alloc(&mut self) -> Option<Tag> {
        self.free.pop().map(usize::from)
    }

    /// Returns a request taken by [`alloc`](Self::alloc) after its completion was handled.
    pub fn release(&mut self, tag: Tag) {
        let _ = self.free.push(tag as u8);
    }

    /// Requests allocated and not yet released.
    pub fn outstanding(&self) -> usize {
        MAX_INFLIGHT - self.free.len()
    }

    /// The buffer of request `tag`: fill it before a write, read it after a read completed.
    pub fn buffer(&mut self, tag: Tag) -> &mut [u8; BLOCK_BYTES] {
        // SAFETY: each request owns its DMA page (at least BLOCK_BYTES); the caller only asks for
        // the buffer of a request it holds and that is not outstanding at a port, and `&mut self`
        // makes it unique.
        unsafe { &mut *(self.bufs[tag].as_ptr() as *mut [u8; BLOCK_BYTES]) }
    }

    /// Sends request `tag` to the port the redirector chooses (or holds it there).
    pub fn submit(&mut self, tag: Tag, op: Op, lba: u64) -> Result<(), StackError> {
        let entry = &mut self.entries[tag];
        entry.op = op;
        entry.lba = lba;
        entry.ring_slot = None;
        match self
            .redirector
            .submit(tag as u64)
            .map_err(StackError::Redirect)?
        {
            Route::Port1 => {
                if let Err(e) = self.send_port1(tag) {
                    // Not accepted by the device: undo the in-flight count and fail it.
                    self.completed(Port::One);
                    return Err(e);
                }
            }
            Route::Held(_) | Route::Port2(_) => self.dispatch_queued(),
        }
        Ok(())
    }

    fn send_port1(&mut self, tag: Tag) -> Result<(), StackError> {
        let e = self.entries[tag];
        let buf = self.bufs[tag].as_ptr();
        let dev = self.port1.as_mut().ok_or(StackError::NoDevice)?;
        // SAFETY: the request's buffer is a DMA page that stays allocated for the stack's lifetime
        // and is not handed out again until the completion for `tag` has been returned.
        unsafe { dev.submit(tag, e.op, e.lba, buf) }.map_err(StackError::Port1)?;
        self.port1_requests += 1;
        Ok(())
    }

    /// Sends request `tag` over the ring; on failure the request fails with an error completion.
    fn send_port2(&mut self, tag: Tag) {
        let Some(client) = self.port2.as_mut() else {
            self.fail(tag, Status::DriverError);
            return;
        };
        let e = self.entries[tag];
        // SAFETY: the request's own buffer, not at any port (it was held by the redirector).
        let data = unsafe { &*(self.bufs[tag].as_ptr() as *const [u8; BLOCK_BYTES]) };
        let result = ports::ring::forward(client, tag as u64, e.op, e.lba, data);
        match result {
            Ok(slot) => {
                self.entries[tag].ring_slot = Some(slot);
                let _ = self.forwarded.push(tag as u8);
                self.port2_requests += 1;
            }
            Err(err) => {
                log::error!("port 2: cannot forward request {tag}: {err}");
                self.note_ring_fault(err);
                self.fail(tag, Status::DriverError);
            }
        }
    }

    /// Tells the redirector a request left `port`. An error means the stack's bookkeeping and
    /// the redirector's disagree (a completion with nothing in flight): a bug, logged loudly.
    fn completed(&mut self, port: Port) {
        let result = match port {
            Port::One => self.redirector.complete_port1(),
            Port::Two => self.redirector.complete_port2(),
        };
        if let Err(e) = result {
            log::error!("stack: {e}");
        }
    }

    /// Fails `tag` (already counted in flight at its port by the redirector).
    fn fail(&mut self, tag: Tag, status: Status) {
        self.completed(Port::Two);
        let _ = self.failed.push_back((tag, Port::Two, status));
    }

    fn note_ring_fault(&mut self, err: RingError) {
        if self.ring_fault.is_none() {
            self.ring_fault = Some(err);
        }
    }

    /// Hands queued requests to whichever port is open, in ticket order.
    fn dispatch_queued(&mut self) {
        let Some(mut releaser) = self.redirector.releaser() else {
            return;
        };
        let mut out: heapless::Vec<(Port, Tag), MAX_INFLIGHT> = heapless::Vec::new();
        while let Some(d) = releaser.dispatch() {
            let _ = out.push((d.port, d.token as Tag));
        }
        drop(releaser);
        for (port, tag) in out {
            match port {
                Port::One => {
                    if self.send_port1(tag).is_err() {
                        self.completed(Port::One);
                        let _ = self.failed.push_back((tag, Port::One, Status::DriverError));
                    }
                }
                Port::Two => self.send_port2(tag),
            }
        }
    }

    /// Takes one completion, if any port has one.
    pub fn poll(&mut self) -> Option<Completion> {
        if let Some((tag, port, status)) = self.failed.pop_front() {
            return Some(self.completion(tag, port, status));
        }
        if let Some((tag, status)) = self.port1.as_mut().and_then(P::poll) {
            self.completed(Port::One);
            return Some(self.completion(tag, Port::One, status));
        }
        if self.port2.is_some() {
            return self.poll_port2();
        }
        None
    }

    fn poll_port2(&mut self) -> Option<Completion> {
        let client = self.port2.as_mut()?;
        client.heartbeat();
        match client.poll_completion()? {
            Ok(c) => {
                let tag = c.id as Tag;
                let valid = tag < MAX_INFLIGHT && self.entries[tag].ring_slot == Some(c.slot);
                if !valid {
                    // The ring checks ids against what is in flight; this is a second line.
                    self.note_ring_fault(RingError::UnknownRequest { id: c.id });
                    return self.abandon_port2();
                }
                let e = self.entries[tag];
                let mut status = ports::ring::block_status(c.status);
                if e.op == Op::Read && status == Status::Ok {
                    // SAFETY: the request's own buffer; the request is complete at port 2.
                    let buf = unsafe {
                        core::slice::from_raw_parts_mut(self.bufs[tag].as_ptr(), BLOCK_BYTES)
                    };
                    if client.read_slot(c.slot, buf).is_err() {
                        status = Status::DriverError;
                    }
                }
                let _ = client.release_slot(c.slot);
                self.entries[tag].ring_slot = None;
                self.forget_forwarded(tag);
                self.completed(Port::Two);
                self.dispatch_queued();
                Some(self.completion(tag, Port::Two, status))
            }
            Err(err) => {
                log::error!("port 2: the peer broke the ring protocol: {err}");
                self.note_ring_fault(err);
                self.abandon_port2()
            }
        }
    }

    /// After a ring fault: every request in flight at port 2 fails.
    fn abandon_port2(&mut self) -> Option<Completion> {
        let mut ids: heapless::Vec<u64, 256> = heapless::Vec::new();
        if let Some(client) = self.port2.as_mut() {
            client.abandon(|id| {
                let _ = ids.push(id);
            });
        }
        for id in ids {
            let tag = id as Tag;
            if tag < MAX_INFLIGHT && self.entries[tag].ring_slot.take().is_some() {
                self.forget_forwarded(tag);
                self.fail(tag, Status::DriverError);
            }
        }
        self.failed
            .pop_front()
            .map(|(tag, port, status)| self.completion(tag, port, status))
    }

    /// `tag` left port 2 (completed or failed).
    fn forget_forwarded(&mut self, tag: Tag) {
        if let Some(i) = self.forwarded.iter().position(|&t| usize::from(t) == tag) {
            self.forwarded.remove(i);
        }
    }

    fn completion(&self, tag: Tag, port: Port, status: Status) -> Completion {
        let e = self.entries[tag];
        Completion {
            tag,
            port,
            lba: e.lba,
            status,
        }
    }
}

#[cfg(test)]
#[path = "stack_tests.rs"]
mod tests;
