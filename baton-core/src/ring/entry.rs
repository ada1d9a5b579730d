//! The entries both sides exchange: ops, statuses, side states, and the validated
//! [`Submission`] / [`Completion`] copies, with the shape check both sides apply to a request.

#[cfg(doc)]
use super::format;
use super::{RingError, SECTOR_SIZE, SLOT_SIZE};

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
pub(super) fn check_shape(op: Op, lba: u64, len: u32) -> Result<(), RingError> {
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
