//! Requests between two well-behaved sides: the round trip, the client's checks of its own
//! requests, slots, index wrap-around, heartbeats and close.

use super::*;

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
