//! Ring protocol: layout, header validation, the request round trip, and how each side reacts
//! to a misbehaving other side (the hostile side is simulated by poking the region directly).

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
fn layout_of_the_4mib_bar() {
    let l = RingLayout::new(MIB4).unwrap();
    assert_eq!(l.entries(), MAX_SLOTS);
    assert_eq!(l.slot_count(), 256);
    assert_eq!(l.sq_offset(), 0x1000);
    assert_eq!(l.cq_offset(), 0x3000);
    assert_eq!(l.slots_offset(), 0x4000);
    assert_eq!(l.slot_offset(255), Some(0x4000 + 255 * 4096));
    assert_eq!(l.slot_offset(256), None);
    assert!(l.slot_offset(255).unwrap() + SLOT_SIZE <= MIB4);
}

#[test]
fn layout_limits() {
    assert_eq!(MIN_REGION_LEN, 0x42000);
    let min = RingLayout::new(MIN_REGION_LEN).unwrap();
    assert_eq!(min.slot_count(), 64);
    assert_eq!(min.cq_offset(), 0x1800);
    assert_eq!(min.slots_offset(), 0x2000);
    assert_eq!(
        RingLayout::new(MIN_REGION_LEN - 4096),
        Err(RingError::RegionTooSmall {
            len: MIN_REGION_LEN - 4096
        })
    );
    assert_eq!(
        RingLayout::new(0),
        Err(RingError::BadRegionLength { len: 0 })
    );
    assert_eq!(
        RingLayout::new(MIB4 + 8),
        Err(RingError::BadRegionLength { len: MIB4 + 8 })
    );
    assert_eq!(
        RingLayout::new(2 << 30),
        Err(RingError::RegionTooLarge { len: 2 << 30 })
    );
    // Between the power-of-two steps the slot count rounds down.
    assert_eq!(RingLayout::new(1 << 20).unwrap().slot_count(), 128);
}

#[test]
fn attach_validates_the_header() {
    let buf = words(MIN_REGION_LEN);
    let region = SharedRegion::from_words(&buf);
    assert_eq!(attach(region), Err(RingError::NotFormatted));
    let layout = format(region).unwrap();
    assert_eq!(attach(region), Ok(layout));

    region.write_u64(offsets::MAGIC, 0x1234).unwrap();
    assert_eq!(attach(region), Err(RingError::BadMagic { found: 0x1234 }));
    region.write_u64(offsets::MAGIC, RING_MAGIC).unwrap();

    region.write_u32(offsets::VERSION, 2).unwrap();
    assert_eq!(attach(region), Err(RingError::BadVersion { found: 2 }));
    region.write_u32(offsets::VERSION, 1).unwrap();

    for offset in [
        offsets::HEADER_LEN,
        offsets::ENTRIES,
        offsets::SLOTS,
        offsets::SQ_ENTRY_SIZE,
        offsets::CQ_ENTRY_SIZE,
        offsets::SLOT_SIZE,
        offsets::SQ_OFFSET,
        offsets::CQ_OFFSET,
        offsets::SLOTS_OFFSET,
    ] {
        let good = region.read_u32(offset).unwrap();
        region.write_u32(offset, good ^ 0x10).unwrap();
        assert_eq!(attach(region), Err(RingError::HeaderMismatch { offset }));
        region.write_u32(offset, good).unwrap();
    }
    assert_eq!(attach(region), Ok(layout));
}

#[test]
fn attach_rejects_a_region_of_another_length() {
    // Formatted as 4 MiB, but this side maps only 2 MiB of it.
    let buf = words(MIB4);
    format(SharedRegion::from_words(&buf)).unwrap();
    let half = SharedRegion::from_words(&buf[..buf.len() / 2]);
    assert!(matches!(
        attach(half),
        Err(RingError::HeaderMismatch { .. })
    ));
}

#[test]
fn from_raw_checks_alignment() {
    let buf = words(4096);
    let base = buf.as_ptr() as *mut u8;
    // SAFETY: the pointer is into `buf`, which outlives the region, and is misaligned on purpose.
    let misaligned = unsafe { SharedRegion::from_raw(base.wrapping_add(4), 4096) };
    assert_eq!(misaligned.unwrap_err(), RingError::RegionMisaligned);
    // SAFETY: null is rejected before any access.
    let null = unsafe { SharedRegion::from_raw(std::ptr::null_mut(), 4096) };
    assert_eq!(null.unwrap_err(), RingError::RegionMisaligned);
    // SAFETY: `buf` is 4096 bytes of atomics that outlive the region.
    let ok = unsafe { SharedRegion::from_raw(base, 4096) }.unwrap();
    assert_eq!(ok.len(), 4096);
    assert_eq!(
        ok.read_u32(4094),
        Err(RingError::OutOfBounds { offset: 4094 })
    );
    assert_eq!(
        ok.read_u64(4096),
        Err(RingError::OutOfBounds { offset: 4096 })
    );
    assert_eq!(
        ok.read_u32(usize::MAX - 3),
        Err(RingError::OutOfBounds {
            offset: usize::MAX - 3
        })
    );
}

#[test]
fn write_read_flush_round_trip() {
    let buf = words(MIN_REGION_LEN);
    let region = SharedRegion::from_words(&buf);
    let mut client = RingClient::format(region).unwrap();
    let mut server = RingServer::attach(region, CAPACITY).unwrap();
    assert_eq!(client.peer_state(), Some(SideState::Ready));
    assert_eq!(server.owner_state(), Some(SideState::Ready));

    let data = pattern(7);
    let wslot = submit(&mut client, Op::Write, 7, 16, Some(&data)).unwrap();
    let rslot = submit(&mut client, Op::Read, 8, 16, None).unwrap();
    let fslot = submit(&mut client, Op::Flush, 9, 0, None).unwrap();
    assert_eq!(client.in_flight(), 3);
    assert!(client.poll_completion().is_none());

    // Peer: a one-block disk at sector 16.
    let w = server.poll_submission().unwrap().unwrap();
    assert_eq!(
        w,
        Submission {
            op: Op::Write,
            id: 7,
            lba: 16,
            len: 4096,
            slot: wslot
        }
    );
    let mut block = vec![0u8; SLOT_SIZE];
    server.read_slot(&w, &mut block).unwrap();
    assert_eq!(block, data);
    server.complete(&w, Status::Ok).unwrap();

    let r = server.poll_submission().unwrap().unwrap();
    assert_eq!((r.op, r.id, r.slot), (Op::Read, 8, rslot));
    server.write_slot(&r, &block).unwrap();
    server.complete(&r, Status::Ok).unwrap();

    let f = server.poll_submission().unwrap().unwrap();
    assert_eq!((f.op, f.id, f.len, f.slot), (Op::Flush, 9, 0, fslot));
    server.complete(&f, Status::IoError).unwrap();
    assert!(server.poll_submission().is_none());
    assert_eq!(server.in_flight(), 0);
    // A completed request cannot be completed again.
    assert_eq!(
        server.complete(&f, Status::Ok),
        Err(RingError::UnknownRequest { id: 9 })
    );

    let c = client.poll_completion().unwrap().unwrap();
    assert_eq!(
        c,
        Completion {
            id: 7,
            slot: wslot,
            status: Status::Ok
        }
    );
    client.release_slot(c.slot).unwrap();
    let c = client.poll_completion().unwrap().unwrap();
    assert_eq!((c.id, c.status), (8, Status::Ok));
    let mut back = vec![0u8; SLOT_SIZE];
    client.read_slot(c.slot, &mut back).unwrap();
    assert_eq!(back, data);
    client.release_slot(c.slot).unwrap();
    let c = client.poll_completion().unwrap().unwrap();
    assert_eq!((c.id, c.status), (9, Status::IoError));
    client.release_slot(c.slot).unwrap();
    assert!(client.poll_completion().is_none());
    assert_eq!(client.in_flight(), 0);
    assert_eq!(client.fault(), None);
    assert_eq!(server.fault(), None);
}

#[test]
fn client_checks_its_own_requests() {
    let buf = words(MIN_REGION_LEN);
    let region = SharedRegion::from_words(&buf);
    let mut client = RingClient::format(region).unwrap();
    let slot = client.reserve_slot().unwrap();
    let mut sub = Submission {
        op: Op::Read,
        id: 1,
        lba: 0,
        len: 512,
        slot,
    };
    assert_eq!(client.submit(&sub), Err(RingError::BadLength { len: 512 }));
    sub.len = 8192;
    assert_eq!(client.submit(&sub), Err(RingError::BadLength { len: 8192 }));
    sub.len = 0;
    assert_eq!(client.submit(&sub), Err(RingError::BadLength { len: 0 }));
    sub = Submission {
        op: Op::Flush,
        len: 4096,
        ..sub
    };
    assert_eq!(client.submit(&sub), Err(RingError::BadLength { len: 4096 }));
    sub = Submission {
        op: Op::Read,
        len: 4096,
        lba: u64::MAX - 3,
        ..sub
    };
    assert!(matches!(
        client.submit(&sub),
        Err(RingError::OutOfRange { .. })
    ));
    // Unreserved / out-of-range slots.
    let other = Submission {
        slot: slot + 1,
        lba: 0,
        ..sub
    };
    assert_eq!(
        client.submit(&other),
        Err(RingError::SlotState { slot: slot + 1 })
    );
    assert_eq!(
        client.submit(&Submission { slot: 64, ..other }),
        Err(RingError::BadSlot { slot: 64 })
    );
    assert_eq!(
        client.write_slot(slot, &[0u8; 4097]),
        Err(RingError::BadLength { len: 4097 })
    );
    assert_eq!(
        client.write_slot(slot, &[0u8; 7]),
        Err(RingError::BadLength { len: 7 })
    );
    let mut small = [0u8; 8];
    assert_eq!(
        client.read_slot(slot + 1, &mut small),
        Err(RingError::SlotState { slot: slot + 1 })
    );
    // Nothing above was published or faulted anything.
    assert_eq!(region.read_u32(offsets::SQ_TAIL).unwrap(), 0);
    assert_eq!(client.fault(), None);
    client.release_slot(slot).unwrap();
    assert_eq!(
        client.release_slot(slot),
        Err(RingError::SlotState { slot })
    );
}

#[test]
fn slots_run_out_and_come_back() {
    let buf = words(MIN_REGION_LEN);
    let region = SharedRegion::from_words(&buf);
    let mut client = RingClient::format(region).unwrap();
    let mut server = RingServer::attach(region, CAPACITY).unwrap();
    for id in 0..64 {
        submit(&mut client, Op::Read, id, id * 8, None).unwrap();
    }
    assert_eq!(client.reserve_slot(), Err(RingError::NoFreeSlot));
    let sub = server.poll_submission().unwrap().unwrap();
    server.complete(&sub, Status::Ok).unwrap();
    let c = client.poll_completion().unwrap().unwrap();
    client.release_slot(c.slot).unwrap();
    assert_eq!(client.reserve_slot(), Ok(c.slot));
}

#[test]
fn server_answers_bad_requests_and_stays_up() {
    let buf = words(MIN_REGION_LEN);
    let region = SharedRegion::from_words(&buf);
    let mut client = RingClient::format(region).unwrap();
    let layout = *client.layout();
    let mut server = RingServer::attach(region, CAPACITY).unwrap();

    // A well-behaved client cannot produce these, so write them straight into the ring,
    // using slots the client reserved so that its completions are accepted.
    let cases: [(u32, u64, u32, u32, RingError, Status); 5] = [
        (
            9,
            0,
            4096,
            0,
            RingError::BadOp { op: 9 },
            Status::Unsupported,
        ),
        (
            1,
            0,
            4096,
            1,
            RingError::BadFlags { flags: 1 },
            Status::Malformed,
        ),
        (
            2,
            0,
            100,
            0,
            RingError::BadLength { len: 100 },
            Status::Malformed,
        ),
        (
            1,
            CAPACITY - 7,
            4096,
            0,
            RingError::OutOfRange {
                lba: CAPACITY - 7,
                len: 4096,
            },
            Status::IoError,
        ),
        (
            3,
            5,
            0,
            0,
            RingError::OutOfRange { lba: 5, len: 0 },
            Status::IoError,
        ),
    ];
    let mut tail = 0;
    for (i, (op, lba, len, flags, error, status)) in cases.into_iter().enumerate() {
        let id = 100 + i as u64;
        // Reserve and submit through the client so it knows the request, then corrupt the entry.
        let slot = submit(&mut client, Op::Read, id, 0, None).unwrap();
        tail = poke_submission(
            region,
            &layout,
            tail,
            raw_submission(op, slot, id, lba, len, flags),
        );
        assert_eq!(server.poll_submission(), Some(Err(error)), "case {i}");
        assert_eq!(server.fault(), None);
        let c = client.poll_completion().unwrap().unwrap();
        assert_eq!(c, Completion { id, slot, status }, "case {i}");
        client.release_slot(slot).unwrap();
    }
    // Still serving: the edge of the disk is fine.
    submit(&mut client, Op::Write, 1, CAPACITY - 8, Some(&pattern(1))).unwrap();
    let sub = server.poll_submission().unwrap().unwrap();
    assert_eq!(sub.lba, CAPACITY - 8);
    server.complete(&sub, Status::Ok).unwrap();
    assert_eq!(client.poll_completion().unwrap().unwrap().id, 1);
    assert_eq!(region.read_u32(offsets::PEER_FAULT).unwrap(), 0);
}

fn expect_server_fault(server: &mut RingServer<'_>, region: SharedRegion<'_>, error: RingError) {
    assert_eq!(server.poll_submission(), Some(Err(error)));
    assert_eq!(server.fault(), Some(error));
    assert_eq!(server.poll_submission(), None);
    assert_eq!(region.read_u32(offsets::PEER_FAULT).unwrap(), error.code());
    assert_eq!(
        region.read_u32(offsets::PEER_STATE).unwrap(),
        SideState::Faulted as u32
    );
}

#[test]
fn server_faults_on_an_index_jump() {
    let buf = words(MIN_REGION_LEN);
    let region = SharedRegion::from_words(&buf);
    format(region).unwrap();
    let mut server = RingServer::attach(region, CAPACITY).unwrap();
    region.write_u32(offsets::SQ_TAIL, 65).unwrap();
    expect_server_fault(
        &mut server,
        region,
        RingError::IndexJump {
            published: 65,
            local: 0,
        },
    );
}

#[test]
fn server_faults_on_bad_and_busy_slots() {
    let buf = words(MIN_REGION_LEN);
    let region = SharedRegion::from_words(&buf);
    let layout = format(region).unwrap();
    let mut server = RingServer::attach(region, CAPACITY).unwrap();
    poke_submission(region, &layout, 0, raw_submission(1, 64, 1, 0, 4096, 0));
    expect_server_fault(&mut server, region, RingError::BadSlot { slot: 64 });

    let buf = words(MIN_REGION_LEN);
    let region = SharedRegion::from_words(&buf);
    let layout = format(region).unwrap();
    let mut server = RingServer::attach(region, CAPACITY).unwrap();
    poke_submission(region, &layout, 0, raw_submission(1, 3, 1, 0, 4096, 0));
    let first = server.poll_submission().unwrap().unwrap();
    poke_submission(region, &layout, 1, raw_submission(1, 3, 2, 8, 4096, 0));
    expect_server_fault(&mut server, region, RingError::SlotBusy { slot: 3 });
    assert!(matches!(
        server.complete(&first, Status::Ok),
        Err(RingError::Faulted { .. })
    ));
}

#[test]
fn server_complete_waits_for_a_slow_client() {
    // A client that never consumes completions but keeps submitting fills the CQ.
    let buf = words(MIN_REGION_LEN);
    let region = SharedRegion::from_words(&buf);
    let layout = format(region).unwrap();
    let mut server = RingServer::attach(region, CAPACITY).unwrap();
    let mut tail = 0;
    for round in 0..2u64 {
        for slot in 0..64u32 {
            let id = round * 64 + u64::from(slot);
            tail = poke_submission(
                region,
                &layout,
                tail,
                raw_submission(1, slot, id, 0, 4096, 0),
            );
            let sub = server.poll_submission().unwrap().unwrap();
            let result = server.complete(&sub, Status::Ok);
            if round == 0 {
                result.unwrap();
            } else {
                assert_eq!(result, Err(RingError::Full));
                return;
            }
        }
    }
}

fn expect_client_fault(client: &mut RingClient<'_>, region: SharedRegion<'_>, error: RingError) {
    assert_eq!(client.poll_completion(), Some(Err(error)));
    assert_eq!(client.fault(), Some(error));
    assert_eq!(client.poll_completion(), None);
    assert_eq!(region.read_u32(offsets::OWNER_FAULT).unwrap(), error.code());
    assert!(matches!(
        client.reserve_slot(),
        Err(RingError::Faulted { .. })
    ));
}

/// A client with three reads in flight (ids 10, 11, 12 in slots 0, 1, 2).
fn client_with_three(buf: &[AtomicU64]) -> (SharedRegion<'_>, RingClient<'_>, RingLayout) {
    let region = SharedRegion::from_words(buf);
    let mut client = RingClient::format(region).unwrap();
    for id in 10..13 {
        submit(&mut client, Op::Read, id, 0, None).unwrap();
    }
    let layout = *client.layout();
    (region, client, layout)
}

#[test]
fn client_faults_on_unknown_and_duplicate_completions() {
    let buf = words(MIN_REGION_LEN);
    let (region, mut client, layout) = client_with_three(&buf);
    poke_completion(region, &layout, 0, 11, 1, 1);
    assert_eq!(client.poll_completion().unwrap().unwrap().id, 11);
    // The same completion again.
    poke_completion(region, &layout, 1, 11, 1, 1);
    expect_client_fault(&mut client, region, RingError::UnknownRequest { id: 11 });
    let mut failed = Vec::new();
    client.abandon(|id| failed.push(id));
    assert_eq!(failed, vec![10, 12]);
    assert_eq!(client.in_flight(), 0);

    let buf = words(MIN_REGION_LEN);
    let (region, mut client, layout) = client_with_three(&buf);
    poke_completion(region, &layout, 0, 99, 5, 1);
    expect_client_fault(&mut client, region, RingError::UnknownRequest { id: 99 });
}

#[test]
fn client_faults_on_wrong_slot_status_and_index() {
    let buf = words(MIN_REGION_LEN);
    let (region, mut client, layout) = client_with_three(&buf);
    poke_completion(region, &layout, 0, 10, 1, 1);
    expect_client_fault(
        &mut client,
        region,
        RingError::SlotNotOwned { slot: 1, id: 10 },
    );

    let buf = words(MIN_REGION_LEN);
    let (region, mut client, layout) = client_with_three(&buf);
    poke_completion(region, &layout, 0, 10, 64, 1);
    expect_client_fault(&mut client, region, RingError::BadSlot { slot: 64 });

    let buf = words(MIN_REGION_LEN);
    let (region, mut client, layout) = client_with_three(&buf);
    poke_completion(region, &layout, 0, 10, 0, 0);
    expect_client_fault(&mut client, region, RingError::BadStatus { status: 0 });

    let buf = words(MIN_REGION_LEN);
    let (region, mut client, _) = client_with_three(&buf);
    region.write_u32(offsets::CQ_TAIL, u32::MAX).unwrap();
    expect_client_fault(
        &mut client,
        region,
        RingError::IndexJump {
            published: u32::MAX,
            local: 0,
        },
    );
}

#[test]
fn client_detects_a_peer_that_completes_without_consuming() {
    // The peer answers every request but never advances the SQ head: once the slots are
    // recycled, the SQ is full (not overwritten). A head that runs backwards is a fault.
    let buf = words(MIN_REGION_LEN);
    let region = SharedRegion::from_words(&buf);
    let mut client = RingClient::format(region).unwrap();
    let layout = *client.layout();
    for id in 0..64 {
        let slot = submit(&mut client, Op::Read, id, 0, None).unwrap();
        poke_completion(region, &layout, id as u32, id, slot, 1);
        let c = client.poll_completion().unwrap().unwrap();
        client.release_slot(c.slot).unwrap();
    }
    assert_eq!(
        submit(&mut client, Op::Read, 64, 0, None),
        Err(RingError::Full)
    );
    assert_eq!(client.fault(), None);
    region.write_u32(offsets::SQ_HEAD, 100).unwrap();
    let slot = client.reserve_slot().unwrap_or(0);
    let sub = Submission {
        op: Op::Read,
        id: 65,
        lba: 0,
        len: 4096,
        slot,
    };
    assert_eq!(
        client.submit(&sub),
        Err(RingError::IndexJump {
            published: 100,
            local: 64
        })
    );
    assert!(client.fault().is_some());
}

#[test]
fn indices_wrap_around_u32() {
    let buf = words(MIN_REGION_LEN);
    let region = SharedRegion::from_words(&buf);
    let mut client = RingClient::format_at(region, u32::MAX - 100).unwrap();
    let mut server = RingServer::attach(region, CAPACITY).unwrap();
    for round in 0..10u64 {
        for k in 0..30u64 {
            let id = round * 1000 + k;
            submit(&mut client, Op::Write, id, k * 8, Some(&pattern(id))).unwrap();
        }
        for k in 0..30u64 {
            let sub = server.poll_submission().unwrap().unwrap();
            assert_eq!(sub.id, round * 1000 + k);
            server.complete(&sub, Status::Ok).unwrap();
        }
        for k in 0..30u64 {
            let c = client.poll_completion().unwrap().unwrap();
            assert_eq!(c.id, round * 1000 + k);
            client.release_slot(c.slot).unwrap();
        }
    }
    assert!(region.read_u32(offsets::SQ_TAIL).unwrap() < 1000);
    assert_eq!(client.fault(), None);
    assert_eq!(server.fault(), None);
}

#[test]
fn heartbeats_and_close() {
    let buf = words(MIN_REGION_LEN);
    let region = SharedRegion::from_words(&buf);
    let mut client = RingClient::format(region).unwrap();
    let mut server = RingServer::attach(region, CAPACITY).unwrap();
    client.heartbeat();
    client.heartbeat();
    server.heartbeat();
    assert_eq!(server.owner_heartbeat(), 2);
    assert_eq!(client.peer_heartbeat(), 1);
    server.close();
    assert_eq!(client.peer_state(), Some(SideState::Closed));
    region.write_u32(offsets::PEER_STATE, 77).unwrap();
    assert_eq!(client.peer_state(), None);
    client.close();
    assert_eq!(server.owner_state(), Some(SideState::Closed));
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
