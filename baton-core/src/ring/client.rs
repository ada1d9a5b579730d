//! [`RingClient`]: the owner's side of the ring (port 2 after the handoff): data slots,
//! submissions, completions, the owner's heartbeat and state word.

#[cfg(doc)]
use super::format;
use core::sync::atomic::Ordering;

use super::layout::{MAX_SLOTS_USIZE, format_at};
use super::{
    Completion, RingError, RingLayout, SLOT_SIZE, SharedRegion, SideState, Status, Submission,
    check_shape, offsets,
};

/// The owner's view of one data slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ClientSlot {
    Free,
    /// Handed out by `reserve_slot`, payload being written.
    Reserved,
    /// Submitted as request `id`.
    InFlight(u64),
    /// Completed; payload may be read until released.
    Done,
}

/// Owner side of the ring (port 2): submits requests, consumes completions.
#[derive(Debug)]
pub struct RingClient<'a> {
    region: SharedRegion<'a>,
    layout: RingLayout,
    sq_tail: u32,
    cq_head: u32,
    slots: [ClientSlot; MAX_SLOTS_USIZE],
    next_slot: u32,
    in_flight: u32,
    heartbeat: u32,
    fault: Option<RingError>,
}

impl<'a> RingClient<'a> {
    /// Formats `region` (see [`format`]) and returns its client, with the owner state `Ready`.
    pub fn format(region: SharedRegion<'a>) -> Result<RingClient<'a>, RingError> {
        Self::format_at(region, 0)
    }

    /// [`RingClient::format`] with the ring indices starting at `start` (see [`format_at`]).
    #[doc(hidden)]
    pub fn format_at(region: SharedRegion<'a>, start: u32) -> Result<RingClient<'a>, RingError> {
        let layout = format_at(region, start)?;
        region.store_u32(
            offsets::OWNER_STATE,
            SideState::Ready as u32,
            Ordering::Release,
        )?;
        Ok(RingClient {
            region,
            layout,
            sq_tail: start,
            cq_head: start,
            slots: [ClientSlot::Free; MAX_SLOTS_USIZE],
            next_slot: 0,
            in_flight: 0,
            heartbeat: 0,
            fault: None,
        })
    }

    /// The layout in use.
    pub fn layout(&self) -> &RingLayout {
        &self.layout
    }

    /// Requests submitted and not yet completed.
    pub fn in_flight(&self) -> u32 {
        self.in_flight
    }

    /// The error that faulted the ring, if any.
    pub fn fault(&self) -> Option<RingError> {
        self.fault
    }

    fn faulted(&self) -> Result<(), RingError> {
        match self.fault {
            Some(e) => Err(RingError::Faulted { code: e.code() }),
            None => Ok(()),
        }
    }

    /// Latches `error` as a peer fault: records it in the owner's fault word and state.
    fn latch(&mut self, error: RingError) -> RingError {
        if self.fault.is_none() {
            self.fault = Some(error);
            // Best effort: the header offsets are in bounds for any valid layout.
            let _ = self
                .region
                .store_u32(offsets::OWNER_FAULT, error.code(), Ordering::Relaxed);
            let _ = self.region.store_u32(
                offsets::OWNER_STATE,
                SideState::Faulted as u32,
                Ordering::Release,
            );
        }
        error
    }

    fn slot_mut(&mut self, slot: u32) -> Result<&mut ClientSlot, RingError> {
        if slot >= self.layout.slot_count() {
            return Err(RingError::BadSlot { slot });
        }
        self.slots
            .get_mut(slot as usize)
            .ok_or(RingError::BadSlot { slot })
    }

    fn slot(&self, slot: u32) -> Result<ClientSlot, RingError> {
        if slot >= self.layout.slot_count() {
            return Err(RingError::BadSlot { slot });
        }
        self.slots
            .get(slot as usize)
            .copied()
            .ok_or(RingError::BadSlot { slot })
    }

    /// Hands out a free data slot for the next request.
    pub fn reserve_slot(&mut self) -> Result<u32, RingError> {
        self.faulted()?;
        let count = self.layout.slot_count();
        for step in 0..count {
            let slot = (self.next_slot.wrapping_add(step)) % count;
            let state = self.slot_mut(slot)?;
            if *state == ClientSlot::Free {
                *state = ClientSlot::Reserved;
                self.next_slot = (slot + 1) % count;
                return Ok(slot);
            }
        }
        Err(RingError::NoFreeSlot)
    }

    /// Copies a write payload (a multiple of 8 bytes, at most [`SLOT_SIZE`]) into a reserved slot.
    pub fn write_slot(&mut self, slot: u32, data: &[u8]) -> Result<(), RingError> {
        self.faulted()?;
        if self.slot(slot)? != ClientSlot::Reserved {
            return Err(RingError::SlotState { slot });
        }
        if data.len() > SLOT_SIZE {
            return Err(RingError::BadLength {
                len: data.len() as u64,
            });
        }
        let offset = self
            .layout
            .slot_offset(slot)
            .ok_or(RingError::BadSlot { slot })?;
        self.region.copy_in(offset, data)
    }

    /// Copies a completed slot's payload (a multiple of 8 bytes, at most [`SLOT_SIZE`]) out.
    ///
    /// The bytes come from the peer: validate them (block tags) before trusting them.
    pub fn read_slot(&self, slot: u32, buf: &mut [u8]) -> Result<(), RingError> {
        match self.slot(slot)? {
            ClientSlot::Done | ClientSlot::Reserved => {}
            _ => return Err(RingError::SlotState { slot }),
        }
        if buf.len() > SLOT_SIZE {
            return Err(RingError::BadLength {
                len: buf.len() as u64,
            });
        }
        let offset = self
            .layout
            .slot_offset(slot)
            .ok_or(RingError::BadSlot { slot })?;
        self.region.copy_out(offset, buf)
    }

    /// Returns a reserved or completed slot to the free pool.
    pub fn release_slot(&mut self, slot: u32) -> Result<(), RingError> {
        let state = self.slot_mut(slot)?;
        match *state {
            ClientSlot::Done | ClientSlot::Reserved => {
                *state = ClientSlot::Free;
                Ok(())
            }
            _ => Err(RingError::SlotState { slot }),
        }
    }

    /// Publishes a request. `sub.slot` must be reserved (and hold the payload of a write).
    ///
    /// Errors: [`RingError::Full`] (retry after completions), shape errors, slot state errors, and
    /// [`RingError::IndexJump`] when the peer's head is impossible (latches the fault).
    pub fn submit(&mut self, sub: &Submission) -> Result<(), RingError> {
        self.faulted()?;
        if self.slot(sub.slot)? != ClientSlot::Reserved {
            return Err(RingError::SlotState { slot: sub.slot });
        }
        check_shape(sub.op, sub.lba, sub.len)?;
        let head = self.region.load_u32(offsets::SQ_HEAD, Ordering::Acquire)?;
        let used = self.sq_tail.wrapping_sub(head);
        if used > self.layout.entries() {
            let local = self.sq_tail;
            return Err(self.latch(RingError::IndexJump {
                published: head,
                local,
            }));
        }
        if used == self.layout.entries() {
            return Err(RingError::Full);
        }
        let at = self.layout.sq_entry(self.sq_tail);
        self.region.write_u32(at, sub.op as u32)?;
        self.region.write_u32(at + 4, sub.slot)?;
        self.region.write_u64(at + 8, sub.id)?;
        self.region.write_u64(at + 16, sub.lba)?;
        self.region.write_u32(at + 24, sub.len)?;
        self.region.write_u32(at + 28, 0)?;
        self.sq_tail = self.sq_tail.wrapping_add(1);
        self.region
            .store_u32(offsets::SQ_TAIL, self.sq_tail, Ordering::Release)?;
        *self.slot_mut(sub.slot)? = ClientSlot::InFlight(sub.id);
        self.in_flight += 1;
        Ok(())
    }

    /// Takes the next completion, if one was published.
    ///
    /// On `Ok` the request's slot is `Done`: read its payload, then [`RingClient::release_slot`].
    /// Every `Err` is a peer fault and latches (later polls return `None`).
    pub fn poll_completion(&mut self) -> Option<Result<Completion, RingError>> {
        if self.fault.is_some() {
            return None;
        }
        match self.take_completion() {
            Ok(None) => None,
            Ok(Some(c)) => Some(Ok(c)),
            Err(e) => Some(Err(self.latch(e))),
        }
    }

    fn take_completion(&mut self) -> Result<Option<Completion>, RingError> {
        let tail = self.region.load_u32(offsets::CQ_TAIL, Ordering::Acquire)?;
        let available = tail.wrapping_sub(self.cq_head);
        if available == 0 {
            return Ok(None);
        }
        if available > self.layout.entries() {
            return Err(RingError::IndexJump {
                published: tail,
                local: self.cq_head,
            });
        }
        // Copy the entry once ...
        let at = self.layout.cq_entry(self.cq_head);
        let id = self.region.read_u64(at)?;
        let slot = self.region.read_u32(at + 8)?;
        let status = self.region.read_u32(at + 12)?;
        self.cq_head = self.cq_head.wrapping_add(1);
        self.region
            .store_u32(offsets::CQ_HEAD, self.cq_head, Ordering::Release)?;
        // ... then validate the copy.
        let status = Status::from_raw(status).ok_or(RingError::BadStatus { status })?;
        let state = self.slot_mut(slot)?;
        match *state {
            ClientSlot::InFlight(owner) if owner == id => *state = ClientSlot::Done,
            ClientSlot::InFlight(_) => return Err(RingError::SlotNotOwned { slot, id }),
            _ => return Err(RingError::UnknownRequest { id }),
        }
        self.in_flight = self.in_flight.saturating_sub(1);
        Ok(Some(Completion { id, slot, status }))
    }

    /// Gives up on every in-flight request (after a fault): calls `failed` with each one's id, in
    /// slot order, and frees all slots. The caller completes them to the workload with an error.
    pub fn abandon(&mut self, mut failed: impl FnMut(u64)) {
        for state in self.slots.iter_mut() {
            if let ClientSlot::InFlight(id) = *state {
                failed(id);
            }
            *state = ClientSlot::Free;
        }
        self.in_flight = 0;
    }

    /// Bumps the owner heartbeat counter (call it from the poll loop).
    pub fn heartbeat(&mut self) {
        self.heartbeat = self.heartbeat.wrapping_add(1);
        let _ = self
            .region
            .store_u32(offsets::OWNER_HEARTBEAT, self.heartbeat, Ordering::Relaxed);
    }

    /// The peer's heartbeat counter (untrusted; compare successive values only).
    pub fn peer_heartbeat(&self) -> u32 {
        self.region.read_u32(offsets::PEER_HEARTBEAT).unwrap_or(0)
    }

    /// The peer's state word, `None` if it holds an unknown value.
    pub fn peer_state(&self) -> Option<SideState> {
        SideState::from_raw(
            self.region
                .load_u32(offsets::PEER_STATE, Ordering::Acquire)
                .ok()?,
        )
    }

    /// Marks the owner side closed.
    pub fn close(&mut self) {
        let _ = self.region.store_u32(
            offsets::OWNER_STATE,
            SideState::Closed as u32,
            Ordering::Release,
        );
    }
}
