//! The shared-memory request ring between the owner guest and the peer guest.
//!
//! After a directed handoff (US 20070204265A1, claim 1: "port 2 forwards the queued requests to the
//! peer that now holds the device") the owner's port 2 is a [`RingClient`] and the peer serves it
//! with a [`RingServer`]. Both sides live in one byte region: the ivshmem-plain BAR2 (4 MiB in
//! practice; any page-multiple length from [`MIN_REGION_LEN`] to [`MAX_REGION_LEN`] works).
//!
//! # Layout (version 1, little-endian, x86_64)
//!
//! Everything is derived from the region length by [`RingLayout::new`]; the header only *records*
//! the numbers, and [`attach`] accepts a header only if every recorded number equals what this
//! code computes for the region it was given. No offset is ever taken from shared memory.
//!
//! | offset | size | field | written by |
//! |---|---|---|---|
//! | 0x000 | u64 | magic `"BATNRING"` ([`RING_MAGIC`]), stored last with Release | owner ([`format`]) |
//! | 0x008 | u32 | version ([`RING_VERSION`]) | owner |
//! | 0x00c | u32 | header length (0x1000) | owner |
//! | 0x010 | u64 | region length | owner |
//! | 0x018 | u32 | ring entries *E* (SQ and CQ; power of two; equals the slot count) | owner |
//! | 0x01c | u32 | data slots *S* (64..=256) | owner |
//! | 0x020 | u32 | submission entry size (32) | owner |
//! | 0x024 | u32 | completion entry size (16) | owner |
//! | 0x028 | u32 | slot size (4096) | owner |
//! | 0x02c | u32 | submission ring offset (0x1000) | owner |
//! | 0x030 | u32 | completion ring offset (0x1000 + 32·E) | owner |
//! | 0x034 | u32 | first slot offset (page-aligned end of the completion ring) | owner |
//! | 0x040 | u32 | owner state ([`SideState`]) | owner |
//! | 0x044 | u32 | owner heartbeat counter | owner |
//! | 0x048 | u32 | owner fault word: [`RingError::code`] of what the owner found wrong with the peer | owner |
//! | 0x080 | u32 | peer state | peer |
//! | 0x084 | u32 | peer heartbeat counter | peer |
//! | 0x088 | u32 | peer fault word: what the peer found wrong with the owner | peer |
//! | 0x0c0 | u32 | SQ tail (free-running; owner produces) | owner |
//! | 0x100 | u32 | SQ head (free-running; peer consumes) | peer |
//! | 0x140 | u32 | CQ tail (free-running; peer produces) | peer |
//! | 0x180 | u32 | CQ head (free-running; owner consumes) | owner |
//! | 0x1000 | 32·E | submission ring | owner |
//! | 0x1000+32·E | 16·E | completion ring | peer |
//! | slots | 4096·S | data slots | owner (writes), peer (reads) |
//!
//! Each side's words sit in their own 64-byte line. With the 4 MiB BAR the layout has E = S = 256:
//! submission ring 0x1000..0x3000, completion ring 0x3000..0x4000, slots 0x4000..0x10_4000.
//!
//! Submission entry (32 bytes): `op: u32` ([`Op`]), `slot: u32`, `id: u64` (the owner's ticket),
//! `lba: u64` (512-byte sectors, as in virtio-blk), `len: u32` (bytes), `flags: u32` (must be 0).
//! Completion entry (16 bytes): `id: u64`, `slot: u32`, `status: u32` ([`Status`]).
//!
//! # Protocol
//!
//! A producer writes the entry, then publishes its index with a Release store; the consumer loads
//! the index with Acquire, copies the entry out once, then validates the copy. Indices are
//! free-running `u32`s masked by `E - 1`. Each side keeps its *own* indices locally and only ever
//! writes the shared copies; it reads only the other side's indices. Every request holds one data
//! slot from [`RingClient::reserve_slot`] until its completion has been consumed and the slot
//! released, so at most S = E requests are in flight and neither ring can overflow when both sides
//! behave.
//!
//! # Threat model
//!
//! The other side is untrusted (invariant I5): the peer may be buggy or hostile towards the owner
//! and vice versa, and either may write any word of the region at any time. Therefore:
//! - every shared-memory access is an atomic access at an aligned, bounds-checked offset (relaxed
//!   for data, Acquire/Release for indices), so a concurrent hostile write yields a garbage value,
//!   never undefined behaviour; nothing is read twice for one decision (copy once, then validate);
//! - indices that run ahead of what the ring can hold, slot numbers out of range or not owned by the
//!   request, lengths that are not a multiple of 4096 or exceed a slot, LBA ranges beyond the disk,
//!   unknown ops and completions for unknown or already completed requests are reported as
//!   [`RingError`]s; no input can make this code panic or access outside the region;
//! - errors that make the ring unusable (the other side broke the protocol) *latch*: the side
//!   records the error code in its fault word and state, and from then on polls return `None` and
//!   submits fail with [`RingError::Faulted`]. The owner then fails its in-flight requests with
//!   [`RingClient::abandon`]. Errors in a single request (bad op, length, LBA range) do not latch:
//!   the server answers that request with an error completion itself.
//!
//! Data slot contents are not validated here (they are the payload); the owner checks block tags.
//! A hostile peer can of course return wrong data or stop answering (heartbeats let the owner notice).
//!
//! Not covered: re-formatting a region a peer is still attached to (the shim creates a fresh region
//! per handoff). The code is exercised by host unit tests, a two-thread stress test, proptests and
//! the `ring_entries` fuzz target; it is not loom-checked because loom cannot model atomics placed
//! in raw memory (the region is not a loom object).

use core::fmt;
use core::marker::PhantomData;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// Magic at offset 0 of a formatted region: the bytes `"BATNRING"`.
pub const RING_MAGIC: u64 = u64::from_le_bytes(*b"BATNRING");
/// Layout version written by [`format`] and required by [`attach`].
pub const RING_VERSION: u32 = 1;
/// Size of one data slot (one 4 KiB block per request).
pub const SLOT_SIZE: usize = 4096;
/// Bytes per LBA unit (virtio-blk sector).
pub const SECTOR_SIZE: u64 = 512;
/// Fewest data slots a layout may have.
pub const MIN_SLOTS: u32 = 64;
/// Most data slots a layout uses (more than any queue depth the guests run).
pub const MAX_SLOTS: u32 = 256;
/// Length of the header page.
pub const HEADER_LEN: usize = 0x1000;
/// Size of one submission entry.
pub const SUBMISSION_ENTRY_SIZE: usize = 32;
/// Size of one completion entry.
pub const COMPLETION_ENTRY_SIZE: usize = 16;
/// Required alignment of the region base.
pub const REGION_ALIGN: usize = 8;
/// Largest region accepted (keeps every offset in a `u32`).
pub const MAX_REGION_LEN: usize = 1 << 30;
/// Smallest region accepted: the layout with [`MIN_SLOTS`] slots.
pub const MIN_REGION_LEN: usize = region_end(MIN_SLOTS as usize);

const PAGE: usize = 0x1000;
const MAX_SLOTS_USIZE: usize = MAX_SLOTS as usize;

/// Byte offsets of the header fields.
pub mod offsets {
    /// Magic (u64).
    pub const MAGIC: usize = 0x000;
    /// Version (u32).
    pub const VERSION: usize = 0x008;
    /// Header length (u32).
    pub const HEADER_LEN: usize = 0x00c;
    /// Region length (u64).
    pub const REGION_LEN: usize = 0x010;
    /// Ring entries (u32).
    pub const ENTRIES: usize = 0x018;
    /// Slot count (u32).
    pub const SLOTS: usize = 0x01c;
    /// Submission entry size (u32).
    pub const SQ_ENTRY_SIZE: usize = 0x020;
    /// Completion entry size (u32).
    pub const CQ_ENTRY_SIZE: usize = 0x024;
    /// Slot size (u32).
    pub const SLOT_SIZE: usize = 0x028;
    /// Submission ring offset (u32).
    pub const SQ_OFFSET: usize = 0x02c;
    /// Completion ring offset (u32).
    pub const CQ_OFFSET: usize = 0x030;
    /// First slot offset (u32).
    pub const SLOTS_OFFSET: usize = 0x034;
    /// Owner state (u32).
    pub const OWNER_STATE: usize = 0x040;
    /// Owner heartbeat (u32).
    pub const OWNER_HEARTBEAT: usize = 0x044;
    /// Owner fault word (u32).
    pub const OWNER_FAULT: usize = 0x048;
    /// Peer state (u32).
    pub const PEER_STATE: usize = 0x080;
    /// Peer heartbeat (u32).
    pub const PEER_HEARTBEAT: usize = 0x084;
    /// Peer fault word (u32).
    pub const PEER_FAULT: usize = 0x088;
    /// Submission ring tail, owner-written (u32).
    pub const SQ_TAIL: usize = 0x0c0;
    /// Submission ring head, peer-written (u32).
    pub const SQ_HEAD: usize = 0x100;
    /// Completion ring tail, peer-written (u32).
    pub const CQ_TAIL: usize = 0x140;
    /// Completion ring head, owner-written (u32).
    pub const CQ_HEAD: usize = 0x180;
}

const fn align_up(x: usize, a: usize) -> usize {
    x.div_ceil(a) * a
}

const fn sq_offset() -> usize {
    HEADER_LEN
}

const fn cq_offset(slots: usize) -> usize {
    sq_offset() + slots * SUBMISSION_ENTRY_SIZE
}

const fn slots_offset(slots: usize) -> usize {
    align_up(cq_offset(slots) + slots * COMPLETION_ENTRY_SIZE, PAGE)
}

const fn region_end(slots: usize) -> usize {
    slots_offset(slots) + slots * SLOT_SIZE
}

/// Everything that can go wrong with the ring. The doc comment of each variant is its message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RingError {
    /// region length is not a non-zero multiple of 4096
    BadRegionLength {
        /// The length given.
        len: usize,
    },
    /// region is too small for the minimum number of slots
    RegionTooSmall {
        /// The length given.
        len: usize,
    },
    /// region is larger than the maximum region length
    RegionTooLarge {
        /// The length given.
        len: usize,
    },
    /// region base is null or not 8-byte aligned
    RegionMisaligned,
    /// access outside the region
    OutOfBounds {
        /// Offset of the access.
        offset: usize,
    },
    /// region is not formatted yet (magic is zero)
    NotFormatted,
    /// bad magic in the ring header
    BadMagic {
        /// The magic found.
        found: u64,
    },
    /// unsupported ring layout version
    BadVersion {
        /// The version found.
        found: u32,
    },
    /// header field does not match the layout for this region
    HeaderMismatch {
        /// Offset of the first mismatching field.
        offset: usize,
    },
    /// ring index ran past the ring size
    IndexJump {
        /// Index published by the other side.
        published: u32,
        /// This side's own index.
        local: u32,
    },
    /// slot number out of range
    BadSlot {
        /// The slot number.
        slot: u32,
    },
    /// slot is already used by another in-flight request
    SlotBusy {
        /// The slot number.
        slot: u32,
    },
    /// slot is not in the state this call needs
    SlotState {
        /// The slot number.
        slot: u32,
    },
    /// completion names a slot that belongs to a different request
    SlotNotOwned {
        /// The slot number.
        slot: u32,
        /// The request id in the completion.
        id: u64,
    },
    /// completion for an unknown or already completed request
    UnknownRequest {
        /// The request id.
        id: u64,
    },
    /// unknown operation code
    BadOp {
        /// The raw op code.
        op: u32,
    },
    /// unknown completion status
    BadStatus {
        /// The raw status.
        status: u32,
    },
    /// reserved entry flags are not zero
    BadFlags {
        /// The raw flags.
        flags: u32,
    },
    /// length is not a multiple of 4096 within one slot (or not 0 for flush)
    BadLength {
        /// The length in bytes.
        len: u64,
    },
    /// LBA range lies beyond the disk capacity
    OutOfRange {
        /// First sector.
        lba: u64,
        /// Length in bytes.
        len: u32,
    },
    /// ring is full; retry after completions
    Full,
    /// no free data slot
    NoFreeSlot,
    /// the ring is faulted and no longer used
    Faulted {
        /// Code of the error that faulted it.
        code: u32,
    },
}

impl RingError {
    /// Non-zero code of this error, written to the fault word of the side that detected it.
    pub const fn code(&self) -> u32 {
        match self {
            RingError::BadRegionLength { .. } => 1,
            RingError::RegionTooSmall { .. } => 2,
            RingError::RegionTooLarge { .. } => 3,
            RingError::RegionMisaligned => 4,
            RingError::OutOfBounds { .. } => 5,
            RingError::NotFormatted => 6,
            RingError::BadMagic { .. } => 7,
            RingError::BadVersion { .. } => 8,
            RingError::HeaderMismatch { .. } => 9,
            RingError::IndexJump { .. } => 10,
            RingError::BadSlot { .. } => 11,
            RingError::SlotBusy { .. } => 12,
            RingError::SlotState { .. } => 13,
            RingError::SlotNotOwned { .. } => 14,
            RingError::UnknownRequest { .. } => 15,
            RingError::BadOp { .. } => 16,
            RingError::BadStatus { .. } => 17,
            RingError::BadFlags { .. } => 18,
            RingError::BadLength { .. } => 19,
            RingError::OutOfRange { .. } => 20,
            RingError::Full => 21,
            RingError::NoFreeSlot => 22,
            RingError::Faulted { .. } => 23,
        }
    }

    /// The completion status the server answers a rejected (but addressable) request with.
    const fn reject_status(&self) -> Status {
        match self {
            RingError::BadOp { .. } => Status::Unsupported,
            RingError::OutOfRange { .. } => Status::IoError,
            _ => Status::Malformed,
        }
    }
}

impl fmt::Display for RingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            RingError::BadRegionLength { len } => {
                write!(f, "region length {len:#x} is not a page multiple")
            }
            RingError::RegionTooSmall { len } => write!(f, "region of {len:#x} bytes is too small"),
            RingError::RegionTooLarge { len } => write!(f, "region of {len:#x} bytes is too large"),
            RingError::RegionMisaligned => f.write_str("region base is null or misaligned"),
            RingError::OutOfBounds { offset } => {
                write!(f, "access at {offset:#x} outside the region")
            }
            RingError::NotFormatted => f.write_str("ring is not formatted"),
            RingError::BadMagic { found } => write!(f, "bad ring magic {found:#x}"),
            RingError::BadVersion { found } => write!(f, "unsupported ring version {found}"),
            RingError::HeaderMismatch { offset } => write!(
                f,
                "ring header field at {offset:#x} does not match the region"
            ),
            RingError::IndexJump { published, local } => {
                write!(
                    f,
                    "ring index {published} jumped past the ring (own index {local})"
                )
            }
            RingError::BadSlot { slot } => write!(f, "slot {slot} out of range"),
            RingError::SlotBusy { slot } => write!(f, "slot {slot} is already in flight"),
            RingError::SlotState { slot } => write!(f, "slot {slot} is not in the required state"),
            RingError::SlotNotOwned { slot, id } => {
                write!(f, "slot {slot} does not belong to request {id}")
            }
            RingError::UnknownRequest { id } => write!(f, "completion for unknown request {id}"),
            RingError::BadOp { op } => write!(f, "unknown op {op}"),
            RingError::BadStatus { status } => write!(f, "unknown status {status}"),
            RingError::BadFlags { flags } => write!(f, "reserved flags {flags:#x} set"),
            RingError::BadLength { len } => write!(f, "bad length {len}"),
            RingError::OutOfRange { lba, len } => write!(f, "sectors {lba}+{len}B beyond the disk"),
            RingError::Full => f.write_str("ring full"),
            RingError::NoFreeSlot => f.write_str("no free data slot"),
            RingError::Faulted { code } => write!(f, "ring faulted (code {code})"),
        }
    }
}

impl core::error::Error for RingError {}

/// A request operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Op {
    /// Read `len` bytes at `lba` into the slot.
    Read = 1,
    /// Write the slot's `len` bytes at `lba`.
    Write = 2,
    /// Flush the device's write cache (`len` and `lba` are 0).
    Flush = 3,
}

impl Op {
    /// Decodes a raw op code.
    pub const fn from_raw(raw: u32) -> Option<Op> {
        match raw {
            1 => Some(Op::Read),
            2 => Some(Op::Write),
            3 => Some(Op::Flush),
            _ => None,
        }
    }
}

/// A completion status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Status {
    /// Done.
    Ok = 1,
    /// The device reported an error (or the range lies beyond the disk).
    IoError = 2,
    /// The operation is not supported.
    Unsupported = 3,
    /// The submission entry was malformed.
    Malformed = 4,
}

impl Status {
    /// Decodes a raw status.
    pub const fn from_raw(raw: u32) -> Option<Status> {
        match raw {
            1 => Some(Status::Ok),
            2 => Some(Status::IoError),
            3 => Some(Status::Unsupported),
            4 => Some(Status::Malformed),
            _ => None,
        }
    }
}

/// State word of one side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum SideState {
    /// Not attached (zero after [`format`]).
    Absent = 0,
    /// Attached and serving / submitting.
    Ready = 1,
    /// Closed in an orderly way.
    Closed = 2,
    /// Stopped because the other side broke the protocol (see the fault word).
    Faulted = 3,
}

impl SideState {
    /// Decodes a raw state word.
    pub const fn from_raw(raw: u32) -> Option<SideState> {
        match raw {
            0 => Some(SideState::Absent),
            1 => Some(SideState::Ready),
            2 => Some(SideState::Closed),
            3 => Some(SideState::Faulted),
            _ => None,
        }
    }
}

/// A validated submission (owner → peer).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Submission {
    /// What to do.
    pub op: Op,
    /// The owner's ticket, echoed in the completion.
    pub id: u64,
    /// First sector (512 bytes).
    pub lba: u64,
    /// Length in bytes: a multiple of 4096 up to [`SLOT_SIZE`]; 0 for flush.
    pub len: u32,
    /// Data slot holding the payload.
    pub slot: u32,
}

/// A validated completion (peer → owner).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Completion {
    /// The request's ticket.
    pub id: u64,
    /// The request's data slot.
    pub slot: u32,
    /// Outcome.
    pub status: Status,
}

/// Checks op-dependent length and LBA shape, independent of the disk capacity.
fn check_shape(op: Op, lba: u64, len: u32) -> Result<(), RingError> {
    match op {
        Op::Flush => {
            if len != 0 {
                return Err(RingError::BadLength { len: len.into() });
            }
            if lba != 0 {
                return Err(RingError::OutOfRange { lba, len });
            }
        }
        Op::Read | Op::Write => {
            let ok = len != 0 && len.is_multiple_of(SLOT_SIZE as u32) && len as usize <= SLOT_SIZE;
            if !ok {
                return Err(RingError::BadLength { len: len.into() });
            }
            if lba.checked_add(u64::from(len) / SECTOR_SIZE).is_none() {
                return Err(RingError::OutOfRange { lba, len });
            }
        }
    }
    Ok(())
}

/// A byte region shared with another guest, accessed only atomically at checked offsets.
///
/// In the guest this wraps the ivshmem BAR2 mapping ([`SharedRegion::from_raw`]); host tests use a
/// `[AtomicU64]` buffer ([`SharedRegion::from_words`]). The same ring code runs on both.
#[derive(Clone, Copy, Debug)]
pub struct SharedRegion<'a> {
    base: NonNull<u8>,
    len: usize,
    _memory: PhantomData<&'a [AtomicU64]>,
}

// SAFETY: the region is memory that is shared between threads (and guests) by design, and every
// access this type makes is an atomic access at an aligned in-bounds offset, so handing copies of
// it to other threads cannot introduce data races.
unsafe impl Send for SharedRegion<'_> {}
// SAFETY: as for `Send`: `&SharedRegion` only offers atomic accesses.
unsafe impl Sync for SharedRegion<'_> {}

impl<'a> SharedRegion<'a> {
    /// A region over a buffer of atomic words (host tests, fuzzing).
    pub fn from_words(words: &'a [AtomicU64]) -> SharedRegion<'a> {
        SharedRegion {
            base: NonNull::from(words).cast::<u8>(),
            len: core::mem::size_of_val(words),
            _memory: PhantomData,
        }
    }

    /// A region over raw memory, e.g. the mapped ivshmem BAR2.
    ///
    /// Fails if `base` is null or not [`REGION_ALIGN`]-aligned.
    ///
    /// # Safety
    ///
    /// `base..base + len` must be mapped, readable and writable memory for all of `'a`, and within
    /// this address space it must only be accessed atomically (through this type or other atomics)
    /// while any copy of the returned region is in use. Other guests may write it at any time.
    pub unsafe fn from_raw(base: *mut u8, len: usize) -> Result<SharedRegion<'a>, RingError> {
        let base = NonNull::new(base).ok_or(RingError::RegionMisaligned)?;
        if !(base.as_ptr() as usize).is_multiple_of(REGION_ALIGN) {
            return Err(RingError::RegionMisaligned);
        }
        Ok(SharedRegion {
            base,
            len,
            _memory: PhantomData,
        })
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the region has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn check(&self, offset: usize, size: usize) -> Result<(), RingError> {
        let in_bounds = offset.is_multiple_of(size)
            && offset.checked_add(size).is_some_and(|end| end <= self.len);
        if in_bounds {
            Ok(())
        } else {
            Err(RingError::OutOfBounds { offset })
        }
    }

    fn atomic_u32(&self, offset: usize) -> Result<&'a AtomicU32, RingError> {
        self.check(offset, 4)?;
        // SAFETY: `check` proved `offset..offset + 4` lies inside the region and `offset` is a
        // multiple of 4; the base is 8-aligned, so the pointer is aligned for `AtomicU32`. The
        // memory is valid for `'a` (constructor contracts) and only accessed atomically, and
        // `AtomicU32` has the size and alignment of `u32` with no invalid bit patterns.
        Ok(unsafe { &*self.base.as_ptr().add(offset).cast::<AtomicU32>() })
    }

    fn atomic_u64(&self, offset: usize) -> Result<&'a AtomicU64, RingError> {
        self.check(offset, 8)?;
        // SAFETY: as in `atomic_u32`, with 8-byte size and alignment (the base is 8-aligned).
        Ok(unsafe { &*self.base.as_ptr().add(offset).cast::<AtomicU64>() })
    }

    /// Reads the u32 at `offset` (relaxed).
    pub fn read_u32(&self, offset: usize) -> Result<u32, RingError> {
        Ok(self.atomic_u32(offset)?.load(Ordering::Relaxed))
    }

    /// Writes the u32 at `offset` (relaxed).
    pub fn write_u32(&self, offset: usize, value: u32) -> Result<(), RingError> {
        self.atomic_u32(offset)?.store(value, Ordering::Relaxed);
        Ok(())
    }

    /// Reads the u64 at `offset` (relaxed).
    pub fn read_u64(&self, offset: usize) -> Result<u64, RingError> {
        Ok(self.atomic_u64(offset)?.load(Ordering::Relaxed))
    }

    /// Writes the u64 at `offset` (relaxed).
    pub fn write_u64(&self, offset: usize, value: u64) -> Result<(), RingError> {
        self.atomic_u64(offset)?.store(value, Ordering::Relaxed);
        Ok(())
    }

    fn load_u32(&self, offset: usize, order: Ordering) -> Result<u32, RingError> {
        Ok(self.atomic_u32(offset)?.load(order))
    }

    fn store_u32(&self, offset: usize, value: u32, order: Ordering) -> Result<(), RingError> {
        self.atomic_u32(offset)?.store(value, order);
        Ok(())
    }

    /// Copies `buf.len()` bytes (a multiple of 8) out of the region at `offset` (8-aligned).
    fn copy_out(&self, offset: usize, buf: &mut [u8]) -> Result<(), RingError> {
        if !buf.len().is_multiple_of(8) {
            return Err(RingError::BadLength {
                len: buf.len() as u64,
            });
        }
        let mut at = offset;
        for chunk in buf.chunks_exact_mut(8) {
            let word = self.atomic_u64(at)?.load(Ordering::Relaxed);
            chunk.copy_from_slice(&word.to_le_bytes());
            at = at
                .checked_add(8)
                .ok_or(RingError::OutOfBounds { offset: at })?;
        }
        Ok(())
    }

    /// Copies `data` (a multiple of 8 bytes) into the region at `offset` (8-aligned).
    fn copy_in(&self, offset: usize, data: &[u8]) -> Result<(), RingError> {
        if !data.len().is_multiple_of(8) {
            return Err(RingError::BadLength {
                len: data.len() as u64,
            });
        }
        let mut at = offset;
        for chunk in data.chunks_exact(8) {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.atomic_u64(at)?
                .store(u64::from_le_bytes(word), Ordering::Relaxed);
            at = at
                .checked_add(8)
                .ok_or(RingError::OutOfBounds { offset: at })?;
        }
        Ok(())
    }
}

/// Where everything lives in a region of a given length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingLayout {
    region_len: usize,
    slots: u32,
}

impl RingLayout {
    /// The layout for a region of `region_len` bytes: the largest power-of-two slot count up to
    /// [`MAX_SLOTS`] that fits. Fails if the length is not a page multiple or out of bounds.
    pub fn new(region_len: usize) -> Result<RingLayout, RingError> {
        if region_len == 0 || !region_len.is_multiple_of(PAGE) {
            return Err(RingError::BadRegionLength { len: region_len });
        }
        if region_len > MAX_REGION_LEN {
            return Err(RingError::RegionTooLarge { len: region_len });
        }
        let mut slots = MAX_SLOTS;
        while slots >= MIN_SLOTS {
            if region_end(slots as usize) <= region_len {
                return Ok(RingLayout { region_len, slots });
            }
            slots /= 2;
        }
        Err(RingError::RegionTooSmall { len: region_len })
    }

    /// Region length the layout was made for.
    pub fn region_len(&self) -> usize {
        self.region_len
    }

    /// Entries in each ring (equals [`RingLayout::slot_count`]).
    pub fn entries(&self) -> u32 {
        self.slots
    }

    /// Number of data slots.
    pub fn slot_count(&self) -> u32 {
        self.slots
    }

    /// Offset of the submission ring.
    pub fn sq_offset(&self) -> usize {
        sq_offset()
    }

    /// Offset of the completion ring.
    pub fn cq_offset(&self) -> usize {
        cq_offset(self.slots as usize)
    }

    /// Offset of data slot 0.
    pub fn slots_offset(&self) -> usize {
        slots_offset(self.slots as usize)
    }

    /// Offset of data slot `slot`, if it exists.
    pub fn slot_offset(&self, slot: u32) -> Option<usize> {
        if slot >= self.slots {
            return None;
        }
        Some(self.slots_offset() + slot as usize * SLOT_SIZE)
    }

    fn mask(&self, index: u32) -> usize {
        (index & (self.slots - 1)) as usize
    }

    fn sq_entry(&self, index: u32) -> usize {
        self.sq_offset() + self.mask(index) * SUBMISSION_ENTRY_SIZE
    }

    fn cq_entry(&self, index: u32) -> usize {
        self.cq_offset() + self.mask(index) * COMPLETION_ENTRY_SIZE
    }

    /// The header words this layout records, as (offset, value, is_u64).
    fn header_fields(&self) -> [(usize, u64, bool); 11] {
        [
            (offsets::VERSION, RING_VERSION.into(), false),
            (offsets::HEADER_LEN, HEADER_LEN as u64, false),
            (offsets::REGION_LEN, self.region_len as u64, true),
            (offsets::ENTRIES, self.entries().into(), false),
            (offsets::SLOTS, self.slots.into(), false),
            (offsets::SQ_ENTRY_SIZE, SUBMISSION_ENTRY_SIZE as u64, false),
            (offsets::CQ_ENTRY_SIZE, COMPLETION_ENTRY_SIZE as u64, false),
            (offsets::SLOT_SIZE, SLOT_SIZE as u64, false),
            (offsets::SQ_OFFSET, self.sq_offset() as u64, false),
            (offsets::CQ_OFFSET, self.cq_offset() as u64, false),
            (offsets::SLOTS_OFFSET, self.slots_offset() as u64, false),
        ]
    }
}

/// Owner-side initialisation: writes the header for `region`'s length, zeroes the state words
/// and indices, and publishes the magic last (Release). Ring entries and data slots are not
/// cleared (only published entries are read).
///
/// Only call it on a region no peer is using (the shim creates a fresh one per handoff).
pub fn format(region: SharedRegion<'_>) -> Result<RingLayout, RingError> {
    format_at(region, 0)
}

/// [`format`] with all four ring indices starting at `start` instead of 0 (tests use it to cross
/// the `u32` wrap-around; any start is valid because the indices are free-running).
#[doc(hidden)]
pub fn format_at(region: SharedRegion<'_>, start: u32) -> Result<RingLayout, RingError> {
    let layout = RingLayout::new(region.len())?;
    region
        .atomic_u64(offsets::MAGIC)?
        .store(0, Ordering::Release);
    // Every word is written with its own access size (as both sides later access it); ring
    // entries need no clearing because only published entries are ever read.
    for offset in [
        offsets::OWNER_STATE,
        offsets::OWNER_HEARTBEAT,
        offsets::OWNER_FAULT,
        offsets::PEER_STATE,
        offsets::PEER_HEARTBEAT,
        offsets::PEER_FAULT,
    ] {
        region.write_u32(offset, 0)?;
    }
    for (offset, value, wide) in layout.header_fields() {
        if wide {
            region.write_u64(offset, value)?;
        } else {
            region.write_u32(offset, value as u32)?;
        }
    }
    for index in [
        offsets::SQ_TAIL,
        offsets::SQ_HEAD,
        offsets::CQ_TAIL,
        offsets::CQ_HEAD,
    ] {
        region.write_u32(index, start)?;
    }
    region
        .atomic_u64(offsets::MAGIC)?
        .store(RING_MAGIC, Ordering::Release);
    Ok(layout)
}

/// Validates the header of a region formatted by the other side: magic, version, and every
/// recorded size and offset against [`RingLayout::new`] of this region's length.
///
/// [`RingError::NotFormatted`] means "not yet": retry later.
pub fn attach(region: SharedRegion<'_>) -> Result<RingLayout, RingError> {
    let magic = region.atomic_u64(offsets::MAGIC)?.load(Ordering::Acquire);
    if magic == 0 {
        return Err(RingError::NotFormatted);
    }
    if magic != RING_MAGIC {
        return Err(RingError::BadMagic { found: magic });
    }
    let version = region.read_u32(offsets::VERSION)?;
    if version != RING_VERSION {
        return Err(RingError::BadVersion { found: version });
    }
    let layout = RingLayout::new(region.len())?;
    for (offset, value, wide) in layout.header_fields() {
        let found = if wide {
            region.read_u64(offset)?
        } else {
            region.read_u32(offset)?.into()
        };
        if found != value {
            return Err(RingError::HeaderMismatch { offset });
        }
    }
    Ok(layout)
}

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
