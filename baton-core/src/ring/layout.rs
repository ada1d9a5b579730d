//! Where everything lives in a region: the sizes, the header offsets ([`offsets`]), the
//! [`RingLayout`] computed from the region length, and the owner's [`format`] / the peer's
//! [`attach`] of the header (see the layout table in the [module docs](super)).

use core::sync::atomic::Ordering;

use super::{RingError, SharedRegion};

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
pub(super) const MAX_SLOTS_USIZE: usize = MAX_SLOTS as usize;

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

    pub(super) fn sq_entry(&self, index: u32) -> usize {
        self.sq_offset() + self.mask(index) * SUBMISSION_ENTRY_SIZE
    }

    pub(super) fn cq_entry(&self, index: u32) -> usize {
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
