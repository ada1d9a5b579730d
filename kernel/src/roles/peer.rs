//! The peer role: receives the disk the owner released and serves the owner's ring on it.
//!
//! Boots with no disk and no shared memory. The shim sends `ring-opened <slot>` (ivshmem plugged;
//! step `RingOpened` of the sequence diagram in docs/design.md, "The handoff") and `disk-attached
//! <slot>` (the owner's virtio-blk plugged here; step `Attached`). The peer attaches to the ring
//! the owner formatted, brings the disk up (same driver as the owner's port 1), reports
//! `peer-ready` (step `Ready`), then serves: submissions are taken in ring order and submitted to
//! the device in that order, many at a time; completions go back as the device finishes them
//! ([`super::serve`]).
//!
//! Waiting guests must not burn a host core: between polls the peer spins 2 ms, then halts until
//! the next timer tick (1 ms, 10 ms once the guest has been idle a while).

use super::disk::{self, GuestBlk};
use super::serve::{RingService, Step};
use crate::platform::clock::{self, Deadline, Stopwatch};
use crate::platform::control::ControlChannel;
use crate::platform::hal::BatonHal;
use crate::platform::pci_cam::{self, PortCam};
use crate::platform::{interrupts, shm};
use crate::ports::{BlockPort, SECTORS_PER_BLOCK};
use baton_core::cmdline::{Fault, GuestConfig};
use baton_core::console::GuestLine;
use baton_core::control::{Message, PROTOCOL_VERSION, Role};
use baton_core::ring::{self, RingServer, SharedRegion};
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
    ctl.send(Message::Hello {
        role: Role::Peer,
        vm: cfg.vm,
        version: PROTOCOL_VERSION,
    });
    let mut root = pci_cam::root();
    let deadline = Deadline::after_us(SETUP_WAIT_US);
    let mut region: Option<SharedRegion<'static>> = None;
    let mut disk: Option<GuestBlk> = None;
    while region.is_none() || disk.is_none() {
        let Some(msg) = ctl.wait_for(deadline, |m| {
            matches!(m, Message::RingOpened { .. } | Message::DiskAttached { .. })
        }) else {
            panic!("peer: the shim did not plug the ring and the disk in time");
        };
        match msg {
            Message::RingOpened { slot } => match shm::open(&mut root, slot) {
                Ok(r) => region = Some(r),
                Err(e) => panic!("peer: ring in slot {slot}: {e:?}"),
            },
            Message::DiskAttached { slot } => {
                let Some(df) = disk::find_blk(&root, Some(slot)) else {
                    panic!("peer: no virtio-blk in slot {slot}");
                };
                disk = Some(disk::open_blk(&mut root, df));
            }
            _ => {}
        }
    }
    let (Some(region), Some(disk)) = (region, disk) else {
        unreachable!("loop exits only with both set");
    };
    let capacity_sectors = disk.capacity_blocks() * SECTORS_PER_BLOCK;
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
            Err(_) => interrupts::wait_for_interrupt(),
        }
    }
}

fn serve(
    cfg: &GuestConfig,
    server: RingServer<'static>,
    disk: GuestBlk,
    mut ctl: ControlChannel,
    region: SharedRegion<'static>,
    _root: PciRoot<PortCam>,
) -> ! {
    let fault_after = (cfg.fault == Fault::BadCompletion).then_some(GOOD_COMPLETIONS_BEFORE_FAULT);
    let mut service: RingService<'_, BatonHal, GuestBlk> =
        RingService::new(server, disk, fault_after);
    let now_us = clock::uptime_us;
    let mut idle = Stopwatch::start();
    loop {
        if let Some(msg) = ctl.poll() {
            log::warn!("peer: ignoring {}", msg.name());
        }
        let busy = match service.step(&now_us) {
            Step::FaultDue => inject_bad_completion(region),
            Step::Busy => true,
            Step::Idle => false,
        };
        if busy {
            if idle.elapsed_us() > SPIN_BEFORE_HALT_US {
                interrupts::busy();
            }
            idle = Stopwatch::start();
        } else {
            let idle_us = idle.elapsed_us();
            if idle_us > SPIN_BEFORE_HALT_US {
                interrupts::idle(idle_us);
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
    crate::platform::serial::print_line(&GuestLine::FaultInjected);
    loop {
        interrupts::wait_for_interrupt();
    }
}
