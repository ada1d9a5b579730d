//! The peer role: receives the disk the owner released and serves the owner's ring on it.
//!
//! Boots with no disk and no shared memory. The shim sends `ring-opened <slot>` (ivshmem plugged)
//! and `disk-attached <slot>` (the owner's virtio-blk plugged here). The peer attaches to the ring
//! the owner formatted, brings the disk up (same driver as the owner's port 1), reports
//! `peer-ready`, then serves: submissions are taken in ring order and submitted to the device in
//! that order, many at a time; completions go back as the device finishes them.
//!
//! Waiting guests must not burn a host core: between polls the peer spins briefly, then halts
//! until the next timer tick (1 ms).

use crate::blk::{BLOCK_BYTES, BlkDevice, MAX_INFLIGHT, Op, Status};
use crate::clock::{Deadline, Stopwatch};
use crate::control::ControlChannel;
use crate::memory::alloc_zeroed;
use crate::pci::{self, PortCam};
use baton_core::cmdline::{Fault, GuestConfig};
use baton_core::control::{Message, Role};
use baton_core::ring::{self, RingServer, SharedRegion, Submission};
use virtio_drivers::transport::pci::bus::PciRoot;

/// How long the peer waits for the shim to plug the ring and the disk.
const SETUP_WAIT_US: u64 = 600_000_000;
/// How long the peer polls without work before it halts until the next tick. Nothing wakes it when
/// a request lands on the ring, so a halt costs the next request up to a tick (1 ms): at queue
/// depth 1 the owner's own work between two requests under TCG exceeded 200 µs often enough to put
/// the forwarded p99 near 1 ms. 2 ms of polling covers those gaps; an idle peer still halts.
const SPIN_BEFORE_HALT_US: u64 = 2_000;
/// With `fault=bad-completion`: good completions before the malformed one.
const GOOD_COMPLETIONS_BEFORE_FAULT: u64 = 8;

/// Runs the peer; never returns (the shim stops this VM).
pub fn run(cfg: &GuestConfig) -> ! {
    let Some(mut ctl) = ControlChannel::open() else {
        panic!("role=peer needs the control channel on COM2");
    };
    ctl.send(Message::hello(Role::Peer, cfg.vm));
    let mut root = pci::root();
    let deadline = Deadline::after_us(SETUP_WAIT_US);
    let mut region: Option<SharedRegion<'static>> = None;
    let mut disk: Option<BlkDevice> = None;
    while region.is_none() || disk.is_none() {
        let Some(msg) = ctl.wait_for(deadline, |m| {
            matches!(m, Message::RingOpened { .. } | Message::DiskAttached { .. })
        }) else {
            panic!("peer: the shim did not plug the ring and the disk in time");
        };
        match msg {
            Message::RingOpened { slot } => match crate::shm::open(&mut root, slot) {
                Ok(r) => region = Some(r),
                Err(e) => panic!("peer: ring in slot {slot}: {e:?}"),
            },
            Message::DiskAttached { slot } => {
                let Some(df) = crate::find_blk(&root, Some(slot)) else {
                    panic!("peer: no virtio-blk in slot {slot}");
                };
                disk = Some(crate::open_blk(&mut root, df));
            }
            _ => {}
        }
    }
    let (Some(region), Some(disk)) = (region, disk) else {
        unreachable!("loop exits only with both set");
    };
    let capacity_sectors = disk.capacity_blocks() * crate::blk::SECTORS_PER_BLOCK;
    let server = attach_when_formatted(region, capacity_sectors, deadline);
    log::info!("peer: serving the ring, disk {capacity_sectors} sectors");
    ctl.send(Message::PeerReady { capacity_sectors });
    serve(cfg, server, disk, ctl, region, root)
}

/// The owner formats the ring when it gets `ring-opened`, which may be after us: retry until the
/// header is valid.
fn attach_when_formatted(
    region: SharedRegion<'static>,
    capacity_sectors: u64,
    deadline: Deadline,
) -> RingServer<'static> {
    loop {
        match RingServer::attach(region, capacity_sectors) {
            Ok(server) => return server,
            Err(e) if deadline.expired() => panic!("peer: ring never became valid: {e}"),
            Err(_) => crate::interrupts::wait_for_interrupt(),
        }
    }
}

/// One accepted submission at the device.
#[derive(Clone, Copy)]
struct InFlight {
    sub: Submission,
    buf: *mut u8,
}

fn serve(
    cfg: &GuestConfig,
    mut server: RingServer<'static>,
    mut disk: BlkDevice,
    mut ctl: ControlChannel,
    region: SharedRegion<'static>,
    _root: PciRoot<PortCam>,
) -> ! {
    let mut bufs = [core::ptr::null_mut::<u8>(); MAX_INFLIGHT];
    for b in &mut bufs {
        *b = match alloc_zeroed(BLOCK_BYTES / 4096) {
            Some(p) => p as *mut u8,
            None => panic!("peer: no memory for buffers"),
        };
    }
    let mut free: heapless::Vec<usize, MAX_INFLIGHT> = (0..MAX_INFLIGHT).rev().collect();
    let mut inflight: [Option<InFlight>; MAX_INFLIGHT] = [None; MAX_INFLIGHT];
    // A submission taken off the ring that found no free device slot waits here (keeps order).
    let mut pending: Option<Submission> = None;
    let mut completed: u64 = 0;
    let mut idle = Stopwatch::start();
    loop {
        let mut busy = false;
        if let Some(msg) = ctl.poll() {
            log::warn!("peer: ignoring {}", msg.name());
        }
        // Take submissions in ring order while device slots are free.
        loop {
            let sub = match pending.take() {
                Some(sub) => sub,
                None => match server.poll_submission() {
                    None => break,
                    Some(Ok(sub)) => sub,
                    Some(Err(e)) => {
                        busy = true;
                        if server.fault().is_some() {
                            log::error!("peer: the owner broke the ring protocol: {e}");
                        } else {
                            log::warn!("peer: rejected a submission: {e}");
                        }
                        continue;
                    }
                },
            };
            let Some(i) = free.pop() else {
                pending = Some(sub);
                break;
            };
            busy = true;
            start(
                &mut server,
                &mut disk,
                sub,
                i,
                bufs[i],
                &mut inflight,
                &mut free,
            );
        }
        // Completions from the device back to the ring.
        while let Some((i, status)) = disk.poll() {
            busy = true;
            let Some(f) = inflight[i].take() else {
                continue;
            };
            let mut status = match status {
                Status::Ok => ring::Status::Ok,
                Status::Unsupported => ring::Status::Unsupported,
                Status::IoError | Status::DriverError => ring::Status::IoError,
            };
            if f.sub.op == ring::Op::Read && status == ring::Status::Ok {
                // SAFETY: the buffer is ours and the device finished with it.
                let data = unsafe { core::slice::from_raw_parts(f.buf, BLOCK_BYTES) };
                if server.write_slot(&f.sub, data).is_err() {
                    status = ring::Status::IoError;
                }
            }
            completed += 1;
            if cfg.fault == Fault::BadCompletion && completed > GOOD_COMPLETIONS_BEFORE_FAULT {
                inject_bad_completion(region);
            }
            complete(&mut server, &f.sub, status);
            let _ = free.push(i);
        }
        server.heartbeat();
        if busy {
            if idle.elapsed_us() > SPIN_BEFORE_HALT_US {
                crate::interrupts::busy();
            }
            idle = Stopwatch::start();
        } else {
            let idle_us = idle.elapsed_us();
            if idle_us > SPIN_BEFORE_HALT_US {
                crate::interrupts::idle(idle_us);
            }
        }
    }
}

/// Submits `sub` to the device with buffer `i`, or answers it with an error completion.
fn start(
    server: &mut RingServer<'static>,
    disk: &mut BlkDevice,
    sub: Submission,
    i: usize,
    buf: *mut u8,
    inflight: &mut [Option<InFlight>; MAX_INFLIGHT],
    free: &mut heapless::Vec<usize, MAX_INFLIGHT>,
) {
    // SAFETY: `buf` is buffer `i`, not at the device (it was on the free list).
    let data = unsafe { core::slice::from_raw_parts_mut(buf, BLOCK_BYTES) };
    let (op, lba) = match sub.op {
        ring::Op::Read => (Op::Read, sub.lba / crate::blk::SECTORS_PER_BLOCK),
        ring::Op::Write => (Op::Write, sub.lba / crate::blk::SECTORS_PER_BLOCK),
        ring::Op::Flush => (Op::Flush, 0),
    };
    let aligned = sub.lba.is_multiple_of(crate::blk::SECTORS_PER_BLOCK)
        && (sub.op == ring::Op::Flush || sub.len as usize == BLOCK_BYTES);
    let copied = sub.op != ring::Op::Write || server.read_slot(&sub, data).is_ok();
    // SAFETY: `buf` stays allocated and untouched until the device returns slot `i`.
    let started = aligned && copied && unsafe { disk.submit(i, op, lba, buf) }.is_ok();
    if started {
        inflight[i] = Some(InFlight { sub, buf });
    } else {
        let _ = free.push(i);
        complete(server, &sub, ring::Status::IoError);
    }
}

/// Publishes a completion, waiting (bounded) while the owner has not consumed earlier ones.
fn complete(server: &mut RingServer<'static>, sub: &Submission, status: ring::Status) {
    let deadline = Deadline::after_us(10_000_000);
    loop {
        match server.complete(sub, status) {
            Ok(()) => return,
            Err(ring::RingError::Full) if !deadline.expired() => core::hint::spin_loop(),
            Err(e) => {
                log::error!("peer: cannot complete request {}: {e}", sub.id);
                return;
            }
        }
    }
}

/// Test hook (`fault=bad-completion`): publishes a completion entry naming a slot that does not
/// exist, then stops serving, so the owner's defences can be exercised.
fn inject_bad_completion(region: SharedRegion<'static>) -> ! {
    let Ok(layout) = ring::RingLayout::new(region.len()) else {
        panic!("peer: bad region");
    };
    let tail = region.read_u32(ring::offsets::CQ_TAIL).unwrap_or(0);
    let index = (tail & (layout.entries() - 1)) as usize;
    let entry = layout.cq_offset() + index * ring::COMPLETION_ENTRY_SIZE;
    let _ = region.write_u64(entry, 0xdead_beef);
    let _ = region.write_u32(entry + 8, u32::MAX);
    let _ = region.write_u32(entry + 12, ring::Status::Ok as u32);
    core::sync::atomic::fence(core::sync::atomic::Ordering::Release);
    let _ = region.write_u32(ring::offsets::CQ_TAIL, tail.wrapping_add(1));
    log::warn!("peer: injected a malformed completion (fault=bad-completion); serving stops");
    crate::baton_line!("fault-injected");
    loop {
        crate::interrupts::wait_for_interrupt();
    }
}
