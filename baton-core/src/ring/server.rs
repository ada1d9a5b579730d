//! [`RingServer`]: the peer's side of the ring: takes and validates submissions, answers malformed
//! ones itself, publishes completions, the peer's heartbeat and state word.

use core::sync::atomic::Ordering;

use super::layout::{MAX_SLOTS_USIZE, attach};
use super::{
    Op, RingError, RingLayout, SECTOR_SIZE, SLOT_SIZE, SharedRegion, SideState, Status, Submission,
    check_shape, offsets,
};

/// Outcome of taking one submission entry.
enum Taken {
    Nothing,
    Accepted(Submission),
    /// Answered with an error completion already.
    Rejected(RingError),
}

/// Peer side of the ring: consumes submissions, performs them, publishes completions.
#[derive(Debug)]
pub struct RingServer<'a> {
    region: SharedRegion<'a>,
    layout: RingLayout,
    capacity_sectors: u64,
    sq_head: u32,
    cq_tail: u32,
    /// Request id holding each slot, if in flight.
    slots: [Option<u64>; MAX_SLOTS_USIZE],
    in_flight: u32,
    heartbeat: u32,
    fault: Option<RingError>,
}

impl<'a> RingServer<'a> {
    /// Attaches to a region the owner formatted (see [`attach`]) to serve a disk of
    /// `capacity_sectors` 512-byte sectors; sets the peer state `Ready`.
    pub fn attach(
        region: SharedRegion<'a>,
        capacity_sectors: u64,
    ) -> Result<RingServer<'a>, RingError> {
        let layout = attach(region)?;
        // The starting indices: the owner formatted both to the same value and only the peer
        // writes them from now on, so whatever is read here is as good a start as any.
        let sq_head = region.read_u32(offsets::SQ_HEAD)?;
        let cq_tail = region.read_u32(offsets::CQ_TAIL)?;
        region.store_u32(
            offsets::PEER_STATE,
            SideState::Ready as u32,
            Ordering::Release,
        )?;
        Ok(RingServer {
            region,
            layout,
            capacity_sectors,
            sq_head,
            cq_tail,
            slots: [None; MAX_SLOTS_USIZE],
            in_flight: 0,
            heartbeat: 0,
            fault: None,
        })
    }

    /// The layout in use.
    pub fn layout(&self) -> &RingLayout {
        &self.layout
    }

    /// Accepted submissions not yet completed.
    pub fn in_flight(&self) -> u32 {
        self.in_flight
    }

    /// The error that faulted the ring, if any.
    pub fn fault(&self) -> Option<RingError> {
        self.fault
    }

    fn latch(&mut self, error: RingError) -> RingError {
        if self.fault.is_none() {
            self.fault = Some(error);
            let _ = self
                .region
                .store_u32(offsets::PEER_FAULT, error.code(), Ordering::Relaxed);
            let _ = self.region.store_u32(
                offsets::PEER_STATE,
                SideState::Faulted as u32,
                Ordering::Release,
            );
        }
        error
    }

    fn slot_entry(&mut self, slot: u32) -> Result<&mut Option<u64>, RingError> {
        if slot >= self.layout.slot_count() {
            return Err(RingError::BadSlot { slot });
        }
        self.slots
            .get_mut(slot as usize)
            .ok_or(RingError::BadSlot { slot })
    }

    fn owns(&self, sub: &Submission) -> Result<usize, RingError> {
        if sub.slot >= self.layout.slot_count() {
            return Err(RingError::BadSlot { slot: sub.slot });
        }
        match self.slots.get(sub.slot as usize) {
            Some(Some(id)) if *id == sub.id => {}
            _ => return Err(RingError::UnknownRequest { id: sub.id }),
        }
        self.layout
            .slot_offset(sub.slot)
            .ok_or(RingError::BadSlot { slot: sub.slot })
    }

    /// Takes the next submission, if one was published, and validates it.
    ///
    /// - `Some(Ok(sub))`: perform it, then [`RingServer::complete`] it.
    /// - `Some(Err(e))` for a bad op, flags, length or LBA range: the server already answered the
    ///   request with an error completion; the ring stays usable (report `e`).
    /// - `Some(Err(e))` otherwise (impossible index, bad or busy slot): the owner broke the
    ///   protocol; the fault latches and later polls return `None`.
    pub fn poll_submission(&mut self) -> Option<Result<Submission, RingError>> {
        if self.fault.is_some() {
            return None;
        }
        match self.take_submission() {
            Ok(Taken::Nothing) => None,
            Ok(Taken::Accepted(sub)) => Some(Ok(sub)),
            Ok(Taken::Rejected(e)) => Some(Err(e)),
            Err(e) => Some(Err(self.latch(e))),
        }
    }

    fn take_submission(&mut self) -> Result<Taken, RingError> {
        let tail = self.region.load_u32(offsets::SQ_TAIL, Ordering::Acquire)?;
        let available = tail.wrapping_sub(self.sq_head);
        if available == 0 {
            return Ok(Taken::Nothing);
        }
        if available > self.layout.entries() {
            return Err(RingError::IndexJump {
                published: tail,
                local: self.sq_head,
            });
        }
        // Copy the entry once ...
        let at = self.layout.sq_entry(self.sq_head);
        let op = self.region.read_u32(at)?;
        let slot = self.region.read_u32(at + 4)?;
        let id = self.region.read_u64(at + 8)?;
        let lba = self.region.read_u64(at + 16)?;
        let len = self.region.read_u32(at + 24)?;
        let flags = self.region.read_u32(at + 28)?;
        self.sq_head = self.sq_head.wrapping_add(1);
        self.region
            .store_u32(offsets::SQ_HEAD, self.sq_head, Ordering::Release)?;
        // ... then validate the copy. Slot errors make the request unaddressable: protocol fault.
        if self.slot_entry(slot)?.is_some() {
            return Err(RingError::SlotBusy { slot });
        }
        match self.check_request(op, lba, len, flags) {
            Ok(op) => {
                *self.slot_entry(slot)? = Some(id);
                self.in_flight += 1;
                Ok(Taken::Accepted(Submission {
                    op,
                    id,
                    lba,
                    len,
                    slot,
                }))
            }
            Err(rejected) => {
                // Answer the request with an error; only a failure to do so is a protocol fault.
                self.post(id, slot, rejected.reject_status())?;
                Ok(Taken::Rejected(rejected))
            }
        }
    }

    fn check_request(&self, op: u32, lba: u64, len: u32, flags: u32) -> Result<Op, RingError> {
        let op = Op::from_raw(op).ok_or(RingError::BadOp { op })?;
        if flags != 0 {
            return Err(RingError::BadFlags { flags });
        }
        check_shape(op, lba, len)?;
        let end = lba.checked_add(u64::from(len) / SECTOR_SIZE);
        if end.is_none_or(|end| end > self.capacity_sectors) {
            return Err(RingError::OutOfRange { lba, len });
        }
        Ok(op)
    }

    /// Writes one completion entry and publishes it.
    fn post(&mut self, id: u64, slot: u32, status: Status) -> Result<(), RingError> {
        let head = self.region.load_u32(offsets::CQ_HEAD, Ordering::Acquire)?;
        let used = self.cq_tail.wrapping_sub(head);
        if used > self.layout.entries() {
            return Err(RingError::IndexJump {
                published: head,
                local: self.cq_tail,
            });
        }
        if used == self.layout.entries() {
            return Err(RingError::Full);
        }
        let at = self.layout.cq_entry(self.cq_tail);
        self.region.write_u64(at, id)?;
        self.region.write_u32(at + 8, slot)?;
        self.region.write_u32(at + 12, status as u32)?;
        self.cq_tail = self.cq_tail.wrapping_add(1);
        self.region
            .store_u32(offsets::CQ_TAIL, self.cq_tail, Ordering::Release)
    }

    /// Copies an accepted write's payload (a multiple of 8 bytes, at most [`SLOT_SIZE`]) out of its
    /// slot. The bytes come from the owner and are copied once; the disk is theirs to write.
    pub fn read_slot(&self, sub: &Submission, buf: &mut [u8]) -> Result<(), RingError> {
        let offset = self.owns(sub)?;
        if buf.len() > SLOT_SIZE {
            return Err(RingError::BadLength {
                len: buf.len() as u64,
            });
        }
        self.region.copy_out(offset, buf)
    }

    /// Copies an accepted read's data (a multiple of 8 bytes, at most [`SLOT_SIZE`]) into its slot.
    pub fn write_slot(&self, sub: &Submission, data: &[u8]) -> Result<(), RingError> {
        let offset = self.owns(sub)?;
        if data.len() > SLOT_SIZE {
            return Err(RingError::BadLength {
                len: data.len() as u64,
            });
        }
        self.region.copy_in(offset, data)
    }

    /// Publishes the completion of an accepted submission.
    ///
    /// [`RingError::Full`] means the owner has not consumed completions yet: retry. An impossible
    /// owner head ([`RingError::IndexJump`]) latches the fault.
    pub fn complete(&mut self, sub: &Submission, status: Status) -> Result<(), RingError> {
        if let Some(e) = self.fault {
            return Err(RingError::Faulted { code: e.code() });
        }
        self.owns(sub)?;
        match self.post(sub.id, sub.slot, status) {
            Ok(()) => {}
            Err(RingError::Full) => return Err(RingError::Full),
            Err(e) => return Err(self.latch(e)),
        }
        *self.slot_entry(sub.slot)? = None;
        self.in_flight = self.in_flight.saturating_sub(1);
        Ok(())
    }

    /// Bumps the peer heartbeat counter (call it from the serve loop).
    pub fn heartbeat(&mut self) {
        self.heartbeat = self.heartbeat.wrapping_add(1);
        let _ = self
            .region
            .store_u32(offsets::PEER_HEARTBEAT, self.heartbeat, Ordering::Relaxed);
    }

    /// The owner's heartbeat counter (untrusted; compare successive values only).
    pub fn owner_heartbeat(&self) -> u32 {
        self.region.read_u32(offsets::OWNER_HEARTBEAT).unwrap_or(0)
    }

    /// The owner's state word, `None` if it holds an unknown value.
    pub fn owner_state(&self) -> Option<SideState> {
        SideState::from_raw(
            self.region
                .load_u32(offsets::OWNER_STATE, Ordering::Acquire)
                .ok()?,
        )
    }

    /// Marks the peer side closed.
    pub fn close(&mut self) {
        let _ = self.region.store_u32(
            offsets::PEER_STATE,
            SideState::Closed as u32,
            Ordering::Release,
        );
    }
}
