//! Property tests: arbitrary bytes as the ring header, the submission ring and the completion
//! ring never make either side panic or accept something invalid.
// A test fails by panicking: `unwrap` and `expect` are its assertions (the workspace denies
// them elsewhere).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use baton_core::ring::{
    MAX_REGION_LEN, MAX_SLOTS, MIN_REGION_LEN, MIN_SLOTS, Op, RingClient, RingError, RingLayout,
    RingServer, SECTOR_SIZE, SLOT_SIZE, SharedRegion, Status, Submission, attach, format, offsets,
};
use proptest::collection::vec;
use proptest::prelude::*;
use std::collections::HashSet;
use std::sync::atomic::AtomicU64;

fn words() -> Vec<AtomicU64> {
    (0..MIN_REGION_LEN / 8).map(|_| AtomicU64::new(0)).collect()
}

/// Copies `bytes` into the region at `offset` (8-aligned), zero-padding the last word.
fn splat(region: SharedRegion<'_>, offset: usize, bytes: &[u8]) {
    for (i, chunk) in bytes.chunks(8).enumerate() {
        let mut word = [0u8; 8];
        word[..chunk.len()].copy_from_slice(chunk);
        region
            .write_u64(offset + i * 8, u64::from_le_bytes(word))
            .unwrap();
    }
}

fn index_strategy() -> impl Strategy<Value = u32> {
    prop_oneof![0u32..=80, any::<u32>()]
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![Just(Op::Read), Just(Op::Write), Just(Op::Flush)]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn layout_never_panics_and_fits(len in prop_oneof![any::<usize>(), (0usize..4096).prop_map(|p| p * 4096)]) {
        match RingLayout::new(len) {
            Ok(l) => {
                prop_assert!(len.is_multiple_of(4096) && len <= MAX_REGION_LEN);
                prop_assert!(l.slot_count().is_power_of_two());
                prop_assert!((MIN_SLOTS..=MAX_SLOTS).contains(&l.slot_count()));
                prop_assert_eq!(l.entries(), l.slot_count());
                prop_assert!(l.cq_offset() >= l.sq_offset() + 32 * l.entries() as usize);
                prop_assert!(l.slots_offset() >= l.cq_offset() + 16 * l.entries() as usize);
                let last = l.slot_offset(l.slot_count() - 1).unwrap();
                prop_assert!(last + SLOT_SIZE <= len);
                prop_assert_eq!(l.slot_offset(l.slot_count()), None);
                // The largest that fits: twice the slots would not (unless capped).
                if l.slot_count() < MAX_SLOTS {
                    prop_assert!(RingLayout::new(len).unwrap().slot_count() == l.slot_count());
                }
            }
            Err(e) => {
                let expected = matches!(
                    e,
                    RingError::BadRegionLength { .. }
                        | RingError::RegionTooSmall { .. }
                        | RingError::RegionTooLarge { .. }
                );
                prop_assert!(expected, "{e:?}");
            }
        }
    }

    #[test]
    fn arbitrary_header_bytes(bytes in vec(any::<u8>(), 0..512), fix_magic in any::<bool>()) {
        let buf = words();
        let region = SharedRegion::from_words(&buf);
        splat(region, 0, &bytes);
        if fix_magic {
            region.write_u64(offsets::MAGIC, u64::from_le_bytes(*b"BATNRING")).unwrap();
            region.write_u32(offsets::VERSION, 1).unwrap();
        }
        if let Ok(layout) = attach(region) {
            // Accepted only if it is exactly what format writes.
            let reference = words();
            let reference_region = SharedRegion::from_words(&reference);
            prop_assert_eq!(format(reference_region).unwrap(), layout);
            for offset in (0..0x38).step_by(4) {
                prop_assert_eq!(region.read_u32(offset), reference_region.read_u32(offset));
            }
        }
    }

    #[test]
    fn one_changed_header_word_is_caught(word in 2usize..14, value in any::<u32>()) {
        let buf = words();
        let region = SharedRegion::from_words(&buf);
        format(region).unwrap();
        let offset = word * 4;
        let original = region.read_u32(offset).unwrap();
        region.write_u32(offset, value).unwrap();
        prop_assert_eq!(attach(region).is_ok(), value == original);
    }

    #[test]
    fn server_survives_arbitrary_submissions(
        entries in vec(any::<u8>(), 64 * 32),
        tail in index_strategy(),
        capacity in prop_oneof![0u64..4096, any::<u64>()],
        complete_every in 1usize..4,
    ) {
        let buf = words();
        let region = SharedRegion::from_words(&buf);
        let layout = format(region).unwrap();
        let mut server = RingServer::attach(region, capacity).unwrap();
        splat(region, layout.sq_offset(), &entries);
        region.write_u32(offsets::SQ_TAIL, tail).unwrap();
        let mut accepted = Vec::new();
        let mut taken = 0u32;
        let mut busy = HashSet::new();
        for n in 0..200 {
            let Some(result) = server.poll_submission() else { break };
            taken += 1;
            match result {
                Ok(sub) => {
                    prop_assert!(sub.slot < layout.slot_count());
                    prop_assert!(busy.insert(sub.slot), "slot handed out twice");
                    match sub.op {
                        Op::Flush => prop_assert!(sub.len == 0 && sub.lba == 0),
                        _ => {
                            prop_assert_eq!(sub.len as usize, SLOT_SIZE);
                            prop_assert!(sub.lba + u64::from(sub.len) / SECTOR_SIZE <= capacity);
                        }
                    }
                    accepted.push(sub);
                    if n % complete_every == 0 {
                        let sub = accepted.remove(0);
                        server.complete(&sub, Status::Ok).unwrap();
                        busy.remove(&sub.slot);
                    }
                }
                Err(e) => {
                    if server.fault().is_some() {
                        prop_assert_eq!(server.poll_submission(), None);
                        break;
                    }
                    // Rejected requests were answered in the completion ring.
                    let rejected = matches!(
                        e,
                        RingError::BadOp { .. }
                            | RingError::BadFlags { .. }
                            | RingError::BadLength { .. }
                            | RingError::OutOfRange { .. }
                    );
                    prop_assert!(rejected, "{e:?}");
                }
            }
        }
        if tail > layout.entries() {
            let jumped = matches!(server.fault(), Some(RingError::IndexJump { .. }));
            prop_assert!(jumped);
            prop_assert_eq!(taken, 1);
        } else {
            prop_assert!(taken <= tail);
        }
        prop_assert!(server.in_flight() as usize == accepted.len());
    }

    #[test]
    fn client_survives_arbitrary_completions(
        submitted in 0u64..64,
        entries in vec(any::<u8>(), 64 * 16),
        tail in index_strategy(),
        plant_valid in any::<bool>(),
    ) {
        let buf = words();
        let region = SharedRegion::from_words(&buf);
        let mut client = RingClient::format(region).unwrap();
        let layout = *client.layout();
        let mut in_flight = std::collections::HashMap::new();
        for id in 0..submitted {
            let slot = client.reserve_slot().unwrap();
            client
                .submit(&Submission { op: Op::Read, id: 1000 + id, lba: 0, len: 4096, slot })
                .unwrap();
            in_flight.insert(1000 + id, slot);
        }
        splat(region, layout.cq_offset(), &entries);
        if plant_valid && submitted > 0 {
            // Make the first entry a genuine completion so deeper paths are reached.
            region.write_u64(layout.cq_offset(), 1000).unwrap();
            region.write_u32(layout.cq_offset() + 8, in_flight[&1000]).unwrap();
            region.write_u32(layout.cq_offset() + 12, 1).unwrap();
        }
        region.write_u32(offsets::CQ_TAIL, tail).unwrap();
        let mut seen = 0u32;
        while let Some(result) = client.poll_completion() {
            seen += 1;
            prop_assert!(seen <= 64);
            match result {
                Ok(c) => {
                    let slot = in_flight.remove(&c.id);
                    prop_assert_eq!(slot, Some(c.slot), "completion for a request not in flight");
                    client.release_slot(c.slot).unwrap();
                }
                Err(_) => {
                    prop_assert!(client.fault().is_some());
                }
            }
        }
        prop_assert_eq!(client.in_flight() as usize, in_flight.len());
        if plant_valid && submitted > 0 && tail > 0 && tail <= layout.entries() {
            prop_assert!(!in_flight.contains_key(&1000));
        }
    }

    #[test]
    fn valid_requests_arrive_unchanged(
        reqs in vec((op_strategy(), any::<u64>(), 0u64..1 << 40), 1..200),
        start in any::<u32>(),
    ) {
        let buf = words();
        let region = SharedRegion::from_words(&buf);
        let mut client = RingClient::format_at(region, start).unwrap();
        let mut server = RingServer::attach(region, 1 << 41).unwrap();
        for (op, id, lba) in reqs {
            let slot = client.reserve_slot().unwrap();
            let (lba, len) = if op == Op::Flush { (0, 0) } else { (lba, 4096) };
            let sub = Submission { op, id, lba, len, slot };
            client.submit(&sub).unwrap();
            prop_assert_eq!(server.poll_submission(), Some(Ok(sub)));
            server.complete(&sub, Status::Ok).unwrap();
            let c = client.poll_completion().unwrap().unwrap();
            prop_assert_eq!((c.id, c.slot, c.status), (id, slot, Status::Ok));
            client.release_slot(slot).unwrap();
        }
    }
}
