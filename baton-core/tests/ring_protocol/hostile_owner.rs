//! The server against a misbehaving owner: bad requests are answered, protocol breaks fault.

use super::*;

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
