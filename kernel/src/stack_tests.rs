//! The resource stack's routing (claim 1) with the virtio-blk driver on a fake device as port 1
//! and a real ring in host memory as port 2, served by `baton_core::ring::RingServer`.

use super::*;
use crate::fakes::blk::{DiskHandle, FakeBlkTransport};
use crate::fakes::hal::FakeHal;
use crate::ports::SECTORS_PER_BLOCK;
use crate::ports::blk::BlkDevice;
use baton_core::ring::{self, RingServer, SharedRegion};
use std::sync::atomic::AtomicU64;

type Stack = ResourceStack<FakeHal, BlkDevice<FakeHal, FakeBlkTransport>>;

const BLOCKS: u64 = 256;

/// A stack with a fresh disk behind port 1.
fn stack() -> (Stack, DiskHandle) {
    let (transport, disk) = FakeBlkTransport::new(BLOCKS * SECTORS_PER_BLOCK);
    let mut stack = Stack::new();
    stack.attach_port1(BlkDevice::new(transport).unwrap());
    (stack, disk)
}

/// Ring memory for the test's life.
fn region(bytes: usize) -> SharedRegion<'static> {
    let words: Vec<AtomicU64> = (0..bytes / 8).map(|_| AtomicU64::new(0)).collect();
    SharedRegion::from_words(Box::leak(words.into_boxed_slice()))
}

/// Submits a write of `lba` whose block is filled with `byte`.
fn write(stack: &mut Stack, lba: u64, byte: u8) -> Tag {
    let tag = stack.alloc().unwrap();
    stack.buffer(tag).fill(byte);
    stack.submit(tag, Op::Write, lba).unwrap();
    tag
}

/// Takes every completion available now.
fn drain(stack: &mut Stack) -> Vec<Completion> {
    std::iter::from_fn(|| stack.poll()).collect()
}

/// Moves the stack through the whole switch: port 1 released, ring attached, port 2 open.
/// Returns the peer's end of the ring and the ring memory.
fn switch_to_ring(
    stack: &mut Stack,
    disk: &DiskHandle,
) -> (RingServer<'static>, SharedRegion<'static>) {
    stack.direct_switch().unwrap();
    disk.borrow_mut().complete(usize::MAX);
    for c in drain(stack) {
        stack.release(c.tag);
    }
    assert_eq!(stack.state(), State::Drained);
    stack.detach_port1().unwrap().release();
    stack.device_released().unwrap();
    let region = region(ring::MIN_REGION_LEN);
    stack.attach_port2(RingClient::format(region).unwrap());
    let server = RingServer::attach(region, BLOCKS * SECTORS_PER_BLOCK).unwrap();
    stack.open_port2().unwrap();
    (server, region)
}

#[test]
fn before_the_switch_requests_go_to_the_device() {
    let (mut stack, disk) = stack();
    assert_eq!(stack.capacity_blocks(), Some(BLOCKS));
    let tag = write(&mut stack, 7, 0x5a);
    let c = stack.poll().unwrap();
    assert_eq!(
        (c.tag, c.port, c.lba, c.status),
        (tag, Port::One, 7, Status::Ok)
    );
    assert!(
        disk.borrow().data[7 * 4096..8 * 4096]
            .iter()
            .all(|&b| b == 0x5a)
    );
    assert_eq!((stack.port1_requests, stack.port2_requests), (1, 0));
    stack.release(tag);
    assert_eq!(stack.outstanding(), 0);
}

#[test]
fn requests_after_the_switch_are_held_until_port_2_opens_then_forwarded_in_order() {
    let (mut stack, disk) = stack();
    disk.borrow_mut().hold = true;
    let early = [write(&mut stack, 0, 1), write(&mut stack, 1, 2)];
    assert_eq!(stack.direct_switch().unwrap(), State::Draining);
    let held: Vec<Tag> = (0..5)
        .map(|i| write(&mut stack, 10 + i, 10 + i as u8))
        .collect();
    assert_eq!(stack.held(), 5);
    assert_eq!(
        disk.borrow().pending.len(),
        2,
        "nothing new reaches port 1 after the switch"
    );
    assert!(stack.poll().is_none());
    disk.borrow_mut().complete(usize::MAX);
    let done: Vec<Tag> = drain(&mut stack).iter().map(|c| c.tag).collect();
    assert_eq!(done, early);
    assert_eq!(stack.state(), State::Drained);
    assert!(
        stack.open_port2().is_err(),
        "port 2 stays shut before the release"
    );
    stack.detach_port1().unwrap().release();
    assert_eq!(stack.device_released().unwrap(), State::Released);
    let region = region(ring::MIN_REGION_LEN);
    stack.attach_port2(RingClient::format(region).unwrap());
    let mut server = RingServer::attach(region, BLOCKS * SECTORS_PER_BLOCK).unwrap();
    assert!(
        server.poll_submission().is_none(),
        "nothing forwarded before open-port2"
    );
    assert_eq!(stack.open_port2().unwrap(), State::Forwarding);
    let mut forwarded = Vec::new();
    while let Some(sub) = server.poll_submission() {
        let sub = sub.unwrap();
        let mut data = vec![0; BLOCK_BYTES];
        server.read_slot(&sub, &mut data).unwrap();
        let lba = sub.lba / SECTORS_PER_BLOCK;
        assert!(
            data.iter().all(|&b| u64::from(b) == lba),
            "data of lba {lba}"
        );
        forwarded.push(sub);
    }
    let ids: Vec<Tag> = forwarded.iter().map(|s| s.id as Tag).collect();
    assert_eq!(ids, held, "held requests leave in submission order");
    for sub in &forwarded {
        server.complete(sub, ring::Status::Ok).unwrap();
    }
    let done = drain(&mut stack);
    assert_eq!(done.iter().map(|c| c.tag).collect::<Vec<_>>(), held);
    assert!(
        done.iter()
            .all(|c| c.port == Port::Two && c.status == Status::Ok)
    );
    assert_eq!((stack.port1_requests, stack.port2_requests), (2, 5));
}

#[test]
fn reads_over_the_ring_bring_the_peers_data_back() {
    let (mut stack, disk) = stack();
    let (mut server, _) = switch_to_ring(&mut stack, &disk);
    let tag = stack.alloc().unwrap();
    stack.submit(tag, Op::Read, 42).unwrap();
    let sub = server.poll_submission().unwrap().unwrap();
    assert_eq!(
        (sub.op, sub.lba, sub.id),
        (ring::Op::Read, 42 * 8, tag as u64)
    );
    server.write_slot(&sub, &[0xc3; BLOCK_BYTES]).unwrap();
    server.complete(&sub, ring::Status::IoError).unwrap();
    let c = stack.poll().unwrap();
    assert_eq!((c.port, c.status), (Port::Two, Status::IoError));
    stack.release(tag);
    let tag = stack.alloc().unwrap();
    stack.submit(tag, Op::Read, 43).unwrap();
    let sub = server.poll_submission().unwrap().unwrap();
    server.write_slot(&sub, &[0xc3; BLOCK_BYTES]).unwrap();
    server.complete(&sub, ring::Status::Ok).unwrap();
    let c = stack.poll().unwrap();
    assert_eq!((c.tag, c.lba, c.status), (tag, 43, Status::Ok));
    assert_eq!(stack.buffer(tag), &[0xc3; BLOCK_BYTES]);
}

#[test]
fn a_completion_for_a_request_the_ring_never_carried_faults_port_2() {
    let (mut stack, disk) = stack();
    let (mut server, region) = switch_to_ring(&mut stack, &disk);
    let tags = [write(&mut stack, 1, 1), write(&mut stack, 2, 2)];
    assert!(server.poll_submission().is_some() && server.poll_submission().is_some());
    // A completion entry naming a request and a slot that are not in flight, written the way a
    // broken peer would (RingServer itself refuses to).
    let layout = ring::RingLayout::new(region.len()).unwrap();
    let tail = region.read_u32(ring::offsets::CQ_TAIL).unwrap();
    let entry = layout.cq_offset() + (tail & (layout.entries() - 1)) as usize * 16;
    region.write_u64(entry, 63).unwrap();
    region.write_u32(entry + 8, u32::MAX).unwrap();
    region
        .write_u32(entry + 12, ring::Status::Ok as u32)
        .unwrap();
    region.write_u32(ring::offsets::CQ_TAIL, tail + 1).unwrap();
    let done = drain(&mut stack);
    assert!(stack.ring_fault.is_some());
    let mut failed: Vec<Tag> = done.iter().map(|c| c.tag).collect();
    failed.sort();
    assert_eq!(failed, tags, "every request in flight at port 2 fails");
    assert!(done.iter().all(|c| c.status == Status::DriverError));
}

#[test]
fn dropping_the_stack_returns_every_dma_page() {
    let before = FakeHal::live_pages();
    let (mut stack, _disk) = stack();
    let tag = write(&mut stack, 3, 3);
    assert!(stack.poll().is_some());
    stack.release(tag);
    assert!(FakeHal::live_pages() > before);
    drop(stack);
    assert_eq!(FakeHal::live_pages(), before);
}

/// The peer performs every write on the ring; the stack takes the completions (their tags).
fn peer_completes(stack: &mut Stack, server: &mut RingServer<'static>) -> Vec<Tag> {
    while let Some(sub) = server.poll_submission() {
        server.complete(&sub.unwrap(), ring::Status::Ok).unwrap();
    }
    let done = drain(stack);
    assert!(done.iter().all(|c| c.port == Port::Two));
    done.iter().map(|c| c.tag).collect()
}

#[test]
fn after_a_failback_the_held_requests_reach_the_returned_disk_first_in_order() {
    let (mut stack, disk) = stack();
    let (mut server, _) = switch_to_ring(&mut stack, &disk);
    let forwarded = [write(&mut stack, 1, 1), write(&mut stack, 2, 2)];
    assert_eq!(stack.begin_failback().unwrap(), State::FailbackDraining);
    let held: Vec<Tag> = (0..4)
        .map(|i| write(&mut stack, 20 + i, 20 + i as u8))
        .collect();
    assert_eq!(stack.held(), 4);
    let (transport, back) = FakeBlkTransport::new(BLOCKS * SECTORS_PER_BLOCK);
    back.borrow_mut().hold = true;
    stack.attach_port1(BlkDevice::new(transport).unwrap());
    assert!(
        stack.device_attached().is_err(),
        "port 1 stays shut while port 2 drains"
    );
    assert!(back.borrow().taken.is_empty());
    assert_eq!(peer_completes(&mut stack, &mut server), forwarded);
    assert_eq!(stack.state(), State::FailbackDrained);
    assert!(
        server.poll_submission().is_none(),
        "nothing is forwarded after the failback"
    );
    assert_eq!(stack.device_attached().unwrap(), State::Direct);
    let sectors: Vec<u64> = back.borrow().taken.iter().map(|t| t.sector).collect();
    assert_eq!(sectors, [20, 21, 22, 23].map(|lba| lba * SECTORS_PER_BLOCK));
    let next = write(&mut stack, 30, 30);
    back.borrow_mut().complete(usize::MAX);
    let done = drain(&mut stack);
    let tags: Vec<Tag> = done.iter().map(|c| c.tag).collect();
    assert_eq!(tags, [held, vec![next]].concat());
    assert!(
        done.iter()
            .all(|c| c.port == Port::One && c.status == Status::Ok)
    );
    let data = &back.borrow().data;
    assert!(data[23 * 4096..24 * 4096].iter().all(|&b| b == 23));
    assert_eq!((stack.port1_requests, stack.port2_requests), (5, 2));
    assert!(stack.detach_port2().is_some() && !stack.has_port2());
}

#[test]
fn a_failback_with_nothing_at_port_2_is_drained_at_once() {
    let (mut stack, disk) = stack();
    let (mut server, _) = switch_to_ring(&mut stack, &disk);
    write(&mut stack, 4, 4);
    peer_completes(&mut stack, &mut server);
    assert_eq!(stack.begin_failback().unwrap(), State::FailbackDrained);
    assert!(stack.begin_failback().is_err(), "once");
    let tag = write(&mut stack, 5, 5);
    assert_eq!(stack.held(), 1);
    assert!(server.poll_submission().is_none(), "held, not forwarded");
    let (transport, back) = FakeBlkTransport::new(BLOCKS * SECTORS_PER_BLOCK);
    stack.attach_port1(BlkDevice::new(transport).unwrap());
    stack.device_attached().unwrap();
    let done = drain(&mut stack);
    assert_eq!((done[0].tag, done[0].port), (tag, Port::One));
    assert_eq!(back.borrow().taken.len(), 1);
}
