//! Port 2's glue: turns a block request into a `baton_core::ring` submission (the data travels
//! in a ring data slot) and ring statuses back into block statuses. The ring itself (layout,
//! bounds checks, fault latching) is `baton_core::ring`; this only maps types and orders the
//! steps (claim 1: the second port forwards the held requests, in order, to the peer).

use super::{BLOCK_BYTES, Op, SECTORS_PER_BLOCK, Status};
use baton_core::ring::{self, RingClient, RingError, Submission};

/// The ring's name for `op`.
pub fn ring_op(op: Op) -> ring::Op {
    match op {
        Op::Read => ring::Op::Read,
        Op::Write => ring::Op::Write,
        Op::Flush => ring::Op::Flush,
    }
}

/// The block status a ring status stands for (`Malformed` is the driver's failure).
pub fn block_status(status: ring::Status) -> Status {
    match status {
        ring::Status::Ok => Status::Ok,
        ring::Status::IoError => Status::IoError,
        ring::Status::Unsupported => Status::Unsupported,
        ring::Status::Malformed => Status::DriverError,
    }
}

/// The ring status the peer reports for a block status (errors of its driver are I/O errors).
pub fn ring_status(status: Status) -> ring::Status {
    match status {
        Status::Ok => ring::Status::Ok,
        Status::Unsupported => ring::Status::Unsupported,
        Status::IoError | Status::DriverError => ring::Status::IoError,
    }
}

/// Forwards request `id` (`op` on 4 KiB block `lba`) over the ring: reserves a data slot, copies
/// a write's data into it and publishes the submission. Returns the data slot, which the
/// completion names; on error nothing stays reserved.
pub fn forward(
    client: &mut RingClient<'_>,
    id: u64,
    op: Op,
    lba: u64,
    data: &[u8; BLOCK_BYTES],
) -> Result<u32, RingError> {
    let slot = client.reserve_slot()?;
    if op == Op::Write
        && let Err(err) = client.write_slot(slot, data)
    {
        let _ = client.release_slot(slot);
        return Err(err);
    }
    let (lba, len) = match op {
        Op::Flush => (0, 0),
        _ => (lba * SECTORS_PER_BLOCK, BLOCK_BYTES as u32),
    };
    let sub = Submission {
        op: ring_op(op),
        id,
        lba,
        len,
        slot,
    };
    if let Err(err) = client.submit(&sub) {
        let _ = client.release_slot(slot);
        return Err(err);
    }
    Ok(slot)
}
