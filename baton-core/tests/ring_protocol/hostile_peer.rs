//! The client against a misbehaving peer: every broken completion faults the ring.

use super::*;

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
