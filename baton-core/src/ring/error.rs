//! [`RingError`]: everything that can go wrong with the ring, with the code each side writes to
//! its fault word.

use core::fmt;

use super::Status;

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
    pub(super) const fn reject_status(&self) -> Status {
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
