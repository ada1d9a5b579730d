//! The peer's ring server with the virtio-blk driver on a fake device, the owner played by a
//! `RingClient` on the same host memory.

use super::*;
use crate::fakes::blk::{DiskHandle, FakeBlkTransport};
use crate::fakes::hal::FakeHal;
use crate::ports::blk::BlkDevice;
use crate::ports::{Status, ring::forward};
use baton_core::ring::{RingClient, SharedRegion};
use std::sync::atomic::AtomicU64;

type Service = RingService<'static, FakeHal, BlkDevice<FakeHal, FakeBlkTransport>>;

const BLOCKS: u64 = 128;

fn now_us() -> u64 {
    0
}

/// The owner's end, the peer's service, and the peer's disk.
fn setup(
    fault_after: Option<u64>,
    region_len: usize,
) -> (RingClient<'static>, Service, DiskHandle) {
    let words: Vec<AtomicU64> = (0..region_len / 8).map(|_| AtomicU64::new(0)).collect();
    let region = SharedRegion::from_words(Box::leak(words.into_boxed_slice()));
    let client = RingClient::format(region).unwrap();
    let server = RingServer::attach(region, BLOCKS * SECTORS_PER_BLOCK).unwrap();
    let (transport, disk) = FakeBlkTransport::new(BLOCKS * SECTORS_PER_BLOCK);
    let service = RingService::new(server, BlkDevice::new(transport).unwrap(), fault_after);
    (client, service, disk)
}

/// Every completion the owner can take now: `(id, status, slot)`.
fn completions(client: &mut RingClient<'static>) -> Vec<(u64, Status, u32)> {
    std::iter::from_fn(|| client.poll_completion())
        .map(|c| c.unwrap())
        .map(|c| (c.id, ports::ring::block_status(c.status), c.slot))
        .collect()
}

#[test]
fn writes_and_reads_are_served_on_the_disk_and_answered_in_order() {
    let (mut client, mut service, disk) = setup(None, ring::MIN_REGION_LEN);
    assert_eq!(service.step(&now_us), Step::Idle);
    for (id, lba) in [(1, 5), (2, 6), (3, 5)] {
        forward(&mut client, id, Op::Write, lba, &[id as u8; BLOCK_BYTES]).unwrap();
    }
    assert_eq!(service.step(&now_us), Step::Busy);
    let done = completions(&mut client);
    let ids: Vec<u64> = done.iter().map(|c| c.0).collect();
    assert_eq!(ids, [1, 2, 3]);
    assert!(done.iter().all(|c| c.1 == Status::Ok));
    for &(_, _, slot) in &done {
        client.release_slot(slot).unwrap();
    }
    let data = disk.borrow().data.clone();
    let block = |lba: usize| &data[lba * 4096..(lba + 1) * 4096];
    assert!(block(5).iter().all(|&b| b == 3), "the later write wins");
    assert!(block(6).iter().all(|&b| b == 2));
    let slot = forward(&mut client, 9, Op::Read, 6, &[0; BLOCK_BYTES]).unwrap();
    service.step(&now_us);
    assert_eq!(completions(&mut client), [(9, Status::Ok, slot)]);
    let mut back = vec![0; BLOCK_BYTES];
    client.read_slot(slot, &mut back).unwrap();
    assert!(back.iter().all(|&b| b == 2));
    assert_eq!(service.completed(), 4);
}

#[test]
fn submissions_wait_in_ring_order_for_free_device_slots() {
    let (mut client, mut service, disk) = setup(None, 4 * ring::MIN_REGION_LEN);
    let n = client.layout().slot_count().min(MAX_INFLIGHT as u32 + 8) as u64;
    assert!(
        n > MAX_INFLIGHT as u64,
        "the ring holds more than the device takes"
    );
    disk.borrow_mut().hold = true;
    for id in 0..n {
        forward(&mut client, id, Op::Write, id % BLOCKS, &[1; BLOCK_BYTES]).unwrap();
    }
    service.step(&now_us);
    assert_eq!(disk.borrow().pending.len(), MAX_INFLIGHT);
    let mut ids = Vec::new();
    while ids.len() < n as usize {
        disk.borrow_mut().complete(usize::MAX);
        service.step(&now_us);
        ids.extend(completions(&mut client).into_iter().map(|c| c.0));
    }
    assert_eq!(ids, (0..n).collect::<Vec<_>>());
}

#[test]
fn a_misaligned_request_is_answered_with_an_io_error() {
    let (mut client, mut service, disk) = setup(None, ring::MIN_REGION_LEN);
    let slot = client.reserve_slot().unwrap();
    let sub = Submission {
        op: ring::Op::Write,
        id: 4,
        lba: 3,
        len: BLOCK_BYTES as u32,
        slot,
    };
    client.submit(&sub).unwrap();
    service.step(&now_us);
    assert_eq!(completions(&mut client), [(4, Status::IoError, slot)]);
    assert_eq!(disk.borrow().notifications, 0, "never reached the device");
}

#[test]
fn with_a_fault_planned_the_service_stops_after_the_good_completions() {
    let (mut client, mut service, _disk) = setup(Some(2), ring::MIN_REGION_LEN);
    for id in 0..3 {
        forward(&mut client, id, Op::Write, id, &[0; BLOCK_BYTES]).unwrap();
    }
    assert_eq!(service.step(&now_us), Step::FaultDue);
    assert_eq!(completions(&mut client).len(), 2);
}

#[test]
fn idle_only_with_nothing_at_the_device_and_nothing_waiting_for_it() {
    let (mut client, mut service, disk) = setup(None, ring::MIN_REGION_LEN);
    disk.borrow_mut().hold = true;
    assert!(service.idle());
    forward(&mut client, 1, Op::Write, 3, &[7; BLOCK_BYTES]).unwrap();
    assert!(
        service.idle(),
        "on the ring, not taken yet: the device has nothing"
    );
    service.step(&now_us);
    assert!(!service.idle(), "at the device");
    disk.borrow_mut().complete(usize::MAX);
    assert!(!service.idle(), "done at the device, not passed back yet");
    service.step(&now_us);
    assert!(service.idle());
    let done: Vec<u64> = completions(&mut client).iter().map(|c| c.0).collect();
    assert_eq!(done, [1]);
}

#[test]
fn a_submission_waiting_for_a_device_slot_is_not_idle() {
    let (mut client, mut service, disk) = setup(None, 4 * ring::MIN_REGION_LEN);
    disk.borrow_mut().hold = true;
    let n = MAX_INFLIGHT as u64 + 1;
    for id in 0..n {
        forward(&mut client, id, Op::Write, id % BLOCKS, &[2; BLOCK_BYTES]).unwrap();
    }
    service.step(&now_us);
    assert_eq!(disk.borrow().pending.len(), MAX_INFLIGHT);
    disk.borrow_mut().complete(usize::MAX);
    service.step(&now_us);
    // Every device slot came back, but the last submission still waits to be started.
    assert!(disk.borrow().pending.is_empty());
    assert!(!service.idle(), "a submission waits for a device slot");
    let mut ids: Vec<u64> = completions(&mut client).iter().map(|c| c.0).collect();
    while ids.len() < n as usize {
        disk.borrow_mut().complete(usize::MAX);
        service.step(&now_us);
        ids.extend(completions(&mut client).iter().map(|c| c.0));
    }
    assert!(service.idle());
    assert_eq!(ids, (0..n).collect::<Vec<_>>());
}

#[test]
fn into_disk_gives_the_disk_back_with_what_the_ring_wrote() {
    let (mut client, mut service, disk) = setup(None, ring::MIN_REGION_LEN);
    forward(&mut client, 1, Op::Write, 9, &[0xab; BLOCK_BYTES]).unwrap();
    service.step(&now_us);
    let slot = completions(&mut client)[0].2;
    client.release_slot(slot).unwrap();
    assert!(service.idle());
    let mut dev = service.into_disk();
    assert_eq!(dev.capacity_blocks(), BLOCKS);
    // Whoever holds the disk next reads the ring's write straight from it.
    let buf = DmaPages::<FakeHal>::new(1);
    // SAFETY: `buf` is a DMA page of BLOCK_BYTES that outlives the request, untouched until the
    // device returns slot 0.
    unsafe { dev.submit(0, Op::Read, 9, buf.as_ptr()) }.unwrap();
    assert_eq!(dev.poll(), Some((0, Status::Ok)));
    // SAFETY: the read completed; the page is ours again.
    let data = unsafe { core::slice::from_raw_parts(buf.as_ptr(), BLOCK_BYTES) };
    assert!(data.iter().all(|&b| b == 0xab));
    let resets = disk.borrow().resets;
    dev.release();
    assert_eq!(disk.borrow().resets, resets + 1, "quiesced");
}
