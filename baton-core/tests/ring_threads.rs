//! Two threads over one region: the owner submits thousands of requests, the peer serves them
//! from a simulated disk. Checks I1 (each request completed once, with the right data) and I3
//! (the peer sees requests in submission order).
// A test fails by panicking: `unwrap` and `expect` are its assertions (the workspace denies
// them elsewhere).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use baton_core::ring::{
    MIN_REGION_LEN, Op, RingClient, RingServer, SLOT_SIZE, SharedRegion, Status, Submission,
};
use std::collections::VecDeque;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

const BLOCKS: u64 = 32;
const SECTORS_PER_BLOCK: u64 = (SLOT_SIZE / 512) as u64;
const TIMEOUT: Duration = Duration::from_secs(120);

fn pattern(tag: u64) -> Vec<u8> {
    (0..SLOT_SIZE / 8)
        .flat_map(|i| (tag.rotate_left(17) ^ i as u64).to_le_bytes())
        .collect()
}

/// Deterministic op choice for request `id`: mostly writes and reads, some flushes.
fn op_for(id: u64) -> Op {
    match id.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 61 {
        0 => Op::Flush,
        1..=3 => Op::Read,
        _ => Op::Write,
    }
}

fn block_for(id: u64) -> u64 {
    id.wrapping_mul(0x2545_f491_4f6c_dd1d) % BLOCKS
}

fn run(requests: u64, region_len: usize, start: u32, complete_in_batches: usize) {
    let buf: Vec<AtomicU64> = (0..region_len / 8).map(|_| AtomicU64::new(0)).collect();
    let region = SharedRegion::from_words(&buf);
    let mut client = RingClient::format_at(region, start).unwrap();
    let capacity = BLOCKS * SECTORS_PER_BLOCK;

    std::thread::scope(|s| {
        let server_thread = s.spawn(move || {
            let mut server = RingServer::attach(region, capacity).unwrap();
            let deadline = Instant::now() + TIMEOUT;
            let mut disk = vec![vec![0u8; SLOT_SIZE]; BLOCKS as usize];
            let mut expected_id = 0u64;
            let mut held: VecDeque<Submission> = VecDeque::new();
            let mut data = vec![0u8; SLOT_SIZE];
            while expected_id < requests || !held.is_empty() {
                assert!(
                    Instant::now() < deadline,
                    "server timed out at {expected_id}"
                );
                if let Some(result) = server.poll_submission() {
                    let sub = result.expect("valid submission");
                    assert_eq!(sub.id, expected_id, "ring order");
                    expected_id += 1;
                    let block = (sub.lba / SECTORS_PER_BLOCK) as usize;
                    match sub.op {
                        Op::Write => {
                            server.read_slot(&sub, &mut data).unwrap();
                            disk[block].copy_from_slice(&data);
                        }
                        Op::Read => server.write_slot(&sub, &disk[block]).unwrap(),
                        Op::Flush => {}
                    }
                    held.push_back(sub);
                    server.heartbeat();
                }
                // Complete in batches, newest first, to show completions need not be in order;
                // batch size 1 completes in order.
                let drain = held.len() >= complete_in_batches || expected_id == requests;
                while drain && let Some(sub) = held.pop_back() {
                    loop {
                        match server.complete(&sub, Status::Ok) {
                            Ok(()) => break,
                            Err(baton_core::ring::RingError::Full) => std::thread::yield_now(),
                            Err(e) => panic!("complete: {e}"),
                        }
                        assert!(Instant::now() < deadline, "server timed out completing");
                    }
                }
                if held.is_empty() {
                    std::hint::spin_loop();
                }
            }
            assert!(server.poll_submission().is_none());
            assert_eq!(server.in_flight(), 0);
            assert_eq!(server.fault(), None);
        });

        // Owner: a model of the disk as of each submission (the peer performs in ring order).
        let deadline = Instant::now() + TIMEOUT;
        let mut model: Vec<Option<u64>> = vec![None; BLOCKS as usize];
        // Per read request: the write tag it must return (inner None = never written: zeroes).
        let mut expect: Vec<Option<Option<u64>>> = vec![None; requests as usize];
        let mut completed = vec![false; requests as usize];
        let mut next = 0u64;
        let mut done = 0u64;
        let mut buf = vec![0u8; SLOT_SIZE];
        let mut in_order = true;
        let mut last_done: Option<u64> = None;
        while done < requests {
            assert!(Instant::now() < deadline, "client timed out: {done} done");
            // Submit as much as the slots allow.
            while next < requests {
                let Ok(slot) = client.reserve_slot() else {
                    break;
                };
                let op = op_for(next);
                let block = block_for(next);
                let (lba, len) = match op {
                    Op::Flush => (0, 0),
                    _ => (block * SECTORS_PER_BLOCK, SLOT_SIZE as u32),
                };
                if op == Op::Write {
                    client.write_slot(slot, &pattern(next)).unwrap();
                    model[block as usize] = Some(next);
                }
                if op == Op::Read {
                    expect[next as usize] = Some(model[block as usize]);
                }
                client
                    .submit(&Submission {
                        op,
                        id: next,
                        lba,
                        len,
                        slot,
                    })
                    .unwrap();
                next += 1;
            }
            client.heartbeat();
            while let Some(result) = client.poll_completion() {
                let c = result.expect("valid completion");
                assert_eq!(c.status, Status::Ok);
                let idx = c.id as usize;
                assert!(!completed[idx], "request {} completed twice", c.id);
                completed[idx] = true;
                if last_done.is_some_and(|l| c.id != l + 1) || (last_done.is_none() && c.id != 0) {
                    in_order = false;
                }
                last_done = Some(c.id);
                if let Some(want) = expect[idx] {
                    client.read_slot(c.slot, &mut buf).unwrap();
                    let want = want.map_or_else(|| vec![0u8; SLOT_SIZE], pattern);
                    assert!(buf == want, "read {} returned the wrong data", c.id);
                }
                client.release_slot(c.slot).unwrap();
                done += 1;
            }
            std::hint::spin_loop();
        }
        assert!(completed.iter().all(|&c| c));
        assert_eq!(client.in_flight(), 0);
        assert_eq!(client.fault(), None);
        assert!(client.peer_heartbeat() > 0);
        if complete_in_batches == 1 {
            assert!(in_order, "batch size 1 completes in submission order");
        }
        server_thread.join().unwrap();
    });
}

#[test]
fn two_threads_in_order() {
    run(10_000, MIN_REGION_LEN, 0, 1);
}

#[test]
fn two_threads_out_of_order_completions_across_wraparound() {
    run(10_000, 4 << 20, u32::MAX - 5_000, 7);
}
