//! Ring protocol: layout, header validation, the request round trip, and how each side reacts
//! to a misbehaving other side (the hostile side is simulated by poking the region directly).//!
//! One test binary in files by concern: `layout.rs` (layout and header validation),
//! `requests.rs` (well-behaved sides), `hostile_owner.rs` (the server's reactions),
//! `hostile_peer.rs` (the client's reactions); the shared helpers and the error table are here.
// A test fails by panicking: `unwrap` and `expect` are its assertions (the workspace denies
// them elsewhere).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod hostile_owner;
mod hostile_peer;
mod layout;
mod requests;

use baton_core::ring::{
    COMPLETION_ENTRY_SIZE, Completion, MAX_SLOTS, MIN_REGION_LEN, Op, RING_MAGIC, RingClient,
    RingError, RingLayout, RingServer, SLOT_SIZE, SUBMISSION_ENTRY_SIZE, SharedRegion, SideState,
    Status, Submission, attach, format, offsets,
};
use std::sync::atomic::AtomicU64;

const MIB4: usize = 4 << 20;
/// Capacity of the simulated disk: 1 MiB.
const CAPACITY: u64 = 2048;

fn words(len: usize) -> Vec<AtomicU64> {
    (0..len / 8).map(|_| AtomicU64::new(0)).collect()
}

fn pattern(id: u64) -> Vec<u8> {
    (0..SLOT_SIZE / 8)
        .flat_map(|i| (id ^ (i as u64) << 20).to_le_bytes())
        .collect()
}

fn submit(
    client: &mut RingClient<'_>,
    op: Op,
    id: u64,
    lba: u64,
    data: Option<&[u8]>,
) -> Result<u32, RingError> {
    let slot = client.reserve_slot()?;
    if let Some(data) = data {
        client.write_slot(slot, data)?;
    }
    let len = if op == Op::Flush { 0 } else { SLOT_SIZE as u32 };
    client.submit(&Submission {
        op,
        id,
        lba,
        len,
        slot,
    })?;
    Ok(slot)
}

/// A raw submission entry: op, slot, id, lba, len, flags.
type RawSubmission = (u32, u32, u64, u64, u32, u32);

/// Writes a raw submission entry at ring index `index` (each field with its own access size, as
/// the real owner does) and publishes `index + 1` as the SQ tail.
fn poke_submission(
    region: SharedRegion<'_>,
    layout: &RingLayout,
    index: u32,
    raw: RawSubmission,
) -> u32 {
    let at = layout.sq_offset() + (index % layout.entries()) as usize * SUBMISSION_ENTRY_SIZE;
    let (op, slot, id, lba, len, flags) = raw;
    region.write_u32(at, op).unwrap();
    region.write_u32(at + 4, slot).unwrap();
    region.write_u64(at + 8, id).unwrap();
    region.write_u64(at + 16, lba).unwrap();
    region.write_u32(at + 24, len).unwrap();
    region.write_u32(at + 28, flags).unwrap();
    region.write_u32(offsets::SQ_TAIL, index + 1).unwrap();
    index + 1
}

fn raw_submission(op: u32, slot: u32, id: u64, lba: u64, len: u32, flags: u32) -> RawSubmission {
    (op, slot, id, lba, len, flags)
}

/// Writes a raw completion entry at ring index `index` and publishes `index + 1` as the CQ tail.
fn poke_completion(
    region: SharedRegion<'_>,
    layout: &RingLayout,
    index: u32,
    id: u64,
    slot: u32,
    status: u32,
) {
    let at = layout.cq_offset() + (index % layout.entries()) as usize * COMPLETION_ENTRY_SIZE;
    region.write_u64(at, id).unwrap();
    region.write_u32(at + 8, slot).unwrap();
    region.write_u32(at + 12, status).unwrap();
    region.write_u32(offsets::CQ_TAIL, index + 1).unwrap();
}

#[test]
fn errors_have_distinct_codes_and_messages() {
    let errors = [
        RingError::BadRegionLength { len: 1 },
        RingError::RegionTooSmall { len: 1 },
        RingError::RegionTooLarge { len: 1 },
        RingError::RegionMisaligned,
        RingError::OutOfBounds { offset: 1 },
        RingError::NotFormatted,
        RingError::BadMagic { found: 1 },
        RingError::BadVersion { found: 1 },
        RingError::HeaderMismatch { offset: 1 },
        RingError::IndexJump {
            published: 1,
            local: 0,
        },
        RingError::BadSlot { slot: 1 },
        RingError::SlotBusy { slot: 1 },
        RingError::SlotState { slot: 1 },
        RingError::SlotNotOwned { slot: 1, id: 1 },
        RingError::UnknownRequest { id: 1 },
        RingError::BadOp { op: 1 },
        RingError::BadStatus { status: 1 },
        RingError::BadFlags { flags: 1 },
        RingError::BadLength { len: 1 },
        RingError::OutOfRange { lba: 1, len: 1 },
        RingError::Full,
        RingError::NoFreeSlot,
        RingError::Faulted { code: 1 },
    ];
    let mut codes: Vec<u32> = errors.iter().map(RingError::code).collect();
    assert!(codes.iter().all(|&c| c != 0));
    codes.sort_unstable();
    codes.dedup();
    assert_eq!(codes.len(), errors.len());
    for e in errors {
        assert!(!e.to_string().is_empty());
    }
}
