//! The virtio-blk port against a fake device that serves the virtqueue from memory.

use super::*;
use crate::fakes::blk::{DiskHandle, FakeBlkTransport};
use crate::fakes::hal::FakeHal;

type Dev = BlkDevice<FakeHal, FakeBlkTransport>;

/// A device with a disk of `blocks` 4 KiB blocks.
fn device(blocks: u64) -> (Dev, DiskHandle) {
    let (transport, disk) = FakeBlkTransport::new(blocks * SECTORS_PER_BLOCK);
    match BlkDevice::new(transport) {
        Ok(dev) => (dev, disk),
        Err(e) => panic!("init failed: {e:?}"),
    }
}

fn buffer() -> DmaPages<FakeHal> {
    DmaPages::new(1)
}

fn fill(buf: &DmaPages<FakeHal>, byte: u8) {
    // SAFETY: the page is ours and not lent to the device.
    unsafe { buf.as_ptr().write_bytes(byte, BLOCK_BYTES) };
}

fn contents(buf: &DmaPages<FakeHal>) -> Vec<u8> {
    // SAFETY: the page is ours and the device finished with it.
    unsafe { core::slice::from_raw_parts(buf.as_ptr(), BLOCK_BYTES) }.to_vec()
}

#[test]
fn init_negotiates_and_reads_the_capacity() {
    let (dev, disk) = device(100);
    assert_eq!(dev.capacity_blocks(), 100);
    assert_eq!(dev.inflight(), 0);
    assert!(
        disk.borrow().resets >= 1,
        "begin_init resets the device first"
    );
}

#[test]
fn a_write_then_a_read_round_trips_through_the_disk() {
    let (mut dev, disk) = device(16);
    let out = buffer();
    fill(&out, 0xa5);
    // SAFETY: `out` outlives the request, which completes before it is touched again.
    unsafe { dev.submit(0, Op::Write, 3, out.as_ptr()) }.unwrap();
    assert_eq!(dev.poll(), Some((0, Status::Ok)));
    assert!(
        disk.borrow().data[3 * 4096..4 * 4096]
            .iter()
            .all(|&b| b == 0xa5)
    );
    assert!(disk.borrow().data[..3 * 4096].iter().all(|&b| b == 0));
    let back = buffer();
    // SAFETY: as above.
    unsafe { dev.submit(5, Op::Read, 3, back.as_ptr()) }.unwrap();
    assert_eq!(dev.poll(), Some((5, Status::Ok)));
    assert_eq!(contents(&back), vec![0xa5; BLOCK_BYTES]);
    assert_eq!(dev.poll(), None);
}

#[test]
fn sixty_four_requests_in_flight_complete_once_each_in_any_order() {
    let (mut dev, disk) = device(MAX_INFLIGHT as u64);
    disk.borrow_mut().hold = true;
    let bufs: Vec<_> = (0..MAX_INFLIGHT).map(|_| buffer()).collect();
    for (slot, buf) in bufs.iter().enumerate() {
        fill(buf, slot as u8);
        // SAFETY: the buffers outlive the requests.
        unsafe { dev.submit(slot, Op::Write, slot as u64, buf.as_ptr()) }.unwrap();
    }
    assert_eq!(dev.inflight(), MAX_INFLIGHT);
    assert_eq!(dev.poll(), None, "nothing completes before the device does");
    disk.borrow_mut().complete_newest();
    assert_eq!(dev.poll(), Some((MAX_INFLIGHT - 1, Status::Ok)));
    disk.borrow_mut().complete(usize::MAX);
    let mut seen = [false; MAX_INFLIGHT];
    seen[MAX_INFLIGHT - 1] = true;
    while let Some((slot, status)) = dev.poll() {
        assert_eq!(status, Status::Ok);
        assert!(!seen[slot], "slot {slot} completed twice");
        seen[slot] = true;
    }
    assert!(seen.iter().all(|&s| s));
    assert_eq!(dev.inflight(), 0);
    for slot in 0..MAX_INFLIGHT {
        let block = &disk.borrow().data[slot * 4096..(slot + 1) * 4096];
        assert!(block.iter().all(|&b| b == slot as u8), "block {slot}");
    }
}

#[test]
fn bad_slots_and_lbas_are_refused_without_reaching_the_device() {
    let (mut dev, disk) = device(8);
    disk.borrow_mut().hold = true;
    let buf = buffer();
    // SAFETY: `buf` outlives every request.
    let r = unsafe { dev.submit(MAX_INFLIGHT, Op::Read, 0, buf.as_ptr()) };
    assert!(matches!(r, Err(BlkError::BadSlot)));
    // SAFETY: as above.
    let r = unsafe { dev.submit(0, Op::Read, 8, buf.as_ptr()) };
    assert!(matches!(r, Err(BlkError::OutOfRange)));
    // SAFETY: as above.
    let r = unsafe { dev.submit(0, Op::Read, u64::MAX, buf.as_ptr()) };
    assert!(matches!(r, Err(BlkError::OutOfRange)));
    // SAFETY: as above.
    unsafe { dev.submit(0, Op::Read, 7, buf.as_ptr()) }.unwrap();
    // SAFETY: as above.
    let r = unsafe { dev.submit(0, Op::Read, 6, buf.as_ptr()) };
    assert!(matches!(r, Err(BlkError::BadSlot)), "slot 0 is busy");
    assert_eq!(disk.borrow().pending.len(), 1);
    disk.borrow_mut().complete(1);
    assert_eq!(dev.poll(), Some((0, Status::Ok)));
}

#[test]
fn flushes_and_device_errors_reach_the_caller() {
    let (mut dev, disk) = device(8);
    let buf = buffer();
    // SAFETY: `buf` outlives the requests.
    unsafe { dev.submit(1, Op::Flush, 0, buf.as_ptr()) }.unwrap();
    assert_eq!(dev.poll(), Some((1, Status::Ok)));
    assert_eq!(disk.borrow().flushes, 1);
    disk.borrow_mut().fail_next = 1;
    // SAFETY: as above.
    unsafe { dev.submit(2, Op::Write, 0, buf.as_ptr()) }.unwrap();
    assert_eq!(dev.poll(), Some((2, Status::IoError)));
}

#[test]
fn release_resets_the_device_and_frees_every_dma_page() {
    let before = FakeHal::live_pages();
    let (mut dev, disk) = device(8);
    assert!(FakeHal::live_pages() > before + MAX_INFLIGHT as isize);
    let buf = buffer();
    // SAFETY: `buf` outlives the request.
    unsafe { dev.submit(0, Op::Write, 1, buf.as_ptr()) }.unwrap();
    assert_eq!(dev.poll(), Some((0, Status::Ok)));
    drop(buf);
    let resets = disk.borrow().resets;
    dev.release();
    assert_eq!(disk.borrow().resets, resets + 1);
    assert_eq!(
        FakeHal::live_pages(),
        before,
        "queue and request pages are all freed"
    );
}
