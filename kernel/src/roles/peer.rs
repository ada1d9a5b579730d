//! The peer role: receives the disk the owner released and serves the owner's ring on it.
//!
//! Boots with no disk and no shared memory, and serves one handoff after another (each ended by a
//! failback: `release-disk`, then `close-ring`; docs/design.md, "Failback"). The shim sends `ring-opened <slot>` (ivshmem plugged;
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
use crate::steps;
use baton_core::cmdline::Role as GuestRole;
use baton_core::cmdline::{Fault, GuestConfig};
use baton_core::console::{GuestLine, SwitchKind};
use baton_core::control::{Message, PROTOCOL_VERSION, Role};
use baton_core::guest_steps::StepName;
use baton_core::ring::{self, RingServer, SharedRegion};
use virtio_drivers::transport::pci::bus::PciRoot;

/// How long the peer waits for the shim to plug the ring and the disk.
const SETUP_WAIT_US: u64 = 600_000_000;
/// How long the peer polls without work before it halts until the next tick. Nothing wakes it when
/// a request lands on the ring, so a halt costs the next request up to a tick (1 ms): at queue
/// depth 1 the owner's own work between two requests under TCG exceeded 200 µs often enough to put
/// the forwarded p99 near 1 ms. 2 ms of polling covers those gaps; an idle peer still halts.
const SPIN_BEFORE_HALT_US: u64 = 2_000;
/// How long the peer polls without halting after it attached to the ring, waiting for the
/// owner's first forwarded request.
const FIRST_REQUEST_SPIN_US: u64 = 20_000;
/// How long `release-disk` waits for requests still at the device (none are, once the owner's
/// port 2 drained).
const RELEASE_WAIT_US: u64 = 10_000_000;
/// With `fault=bad-completion`: good completions before the malformed one.
const GOOD_COMPLETIONS_BEFORE_FAULT: u64 = 8;

/// Runs the peer; never returns (the shim stops this VM). Each cycle: wait for the ring and the
/// disk, serve the ring until the failback's `release-disk`, give the disk up, let go of the ring
/// at `close-ring`, and wait for the next handoff.
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
    pci_cam::learn_bus(&mut root);
    for cycle in 1u32.. {
        let deadline = Deadline::after_us(SETUP_WAIT_US);
        steps::begin(GuestRole::Peer, SwitchKind::Handoff, cycle);
        let (region, ring_slot, disk, disk_slot) =
            wait_for_ring_and_disk(&mut ctl, &mut root, deadline, cycle);
        let capacity_sectors = disk.capacity_blocks() * SECTORS_PER_BLOCK;
        let server = attach_when_formatted(region, capacity_sectors, deadline);
        steps::mark(StepName::RingAttached);
        ctl.send(Message::PeerReady { capacity_sectors });
        steps::mark(StepName::PeerReady);
        // Debug only: the owner forwards within a millisecond or so, and a console line (a VM
        // exit per byte) would keep the peer from seeing it; `serve` says it once it served.
        log::debug!(
            "peer: serving the ring, disk in slot {disk_slot}, {capacity_sectors} sectors (cycle {cycle})"
        );
        let disk = serve(cfg, server, disk, &mut ctl, region, cycle);
        // The failback: the owner's port 2 drained, so nothing is at the device; reset it (no DMA
        // after this) and complete the removal the shim's `device_del` asked for.
        disk.release();
        // `released` first: its bytes leave before QEMU tears the device down inside the eject.
        ctl.send(Message::Released { slot: disk_slot });
        steps::mark(StepName::PeerReleased);
        pci_cam::hotplug::eject(disk_slot);
        steps::mark(StepName::PeerEjected);
        print_steps();
        log::info!("peer: disk reset, slot {disk_slot} ejected");
        close_ring(&mut ctl, ring_slot);
    }
    unreachable!("a peer serves cycles until the shim stops it")
}

/// Waits for `ring-opened` and `disk-attached` (in either order), maps the ring and brings the
/// disk up. A first cycle that waits past `deadline` fails the peer; later cycles wait on (an idle
/// peer between handoffs).
fn wait_for_ring_and_disk(
    ctl: &mut ControlChannel,
    root: &mut PciRoot<PortCam>,
    mut deadline: Deadline,
    cycle: u32,
) -> (SharedRegion<'static>, u8, GuestBlk, u8) {
    let mut region: Option<(SharedRegion<'static>, u8)> = None;
    let mut disk: Option<(GuestBlk, u8)> = None;
    loop {
        if let (Some((r, rs)), Some((d, ds))) = (region, disk.take()) {
            return (r, rs, d, ds);
        }
        let Some(msg) = ctl.wait_for(deadline, |m| {
            matches!(m, Message::RingOpened { .. } | Message::DiskAttached { .. })
        }) else {
            if cycle == 1 {
                panic!("peer: the shim did not plug the ring and the disk in time");
            }
            deadline = Deadline::after_us(SETUP_WAIT_US);
            continue;
        };
        match msg {
            Message::RingOpened { slot } => {
                steps::mark(StepName::RingOpened);
                match shm::open(root, slot) {
                    Ok(r) => region = Some((r, slot)),
                    Err(e) => panic!("peer: ring in slot {slot}: {e:?}"),
                }
            }
            Message::DiskAttached { slot } => {
                steps::mark(StepName::DiskAttached);
                let Some(df) = disk::find_blk(root, Some(slot)) else {
                    panic!("peer: no virtio-blk in slot {slot}");
                };
                disk = Some((disk::open_blk(root, df), slot));
            }
            _ => {}
        }
    }
}

/// After the release: waits for `close-ring`, then ejects the ring's slot (the region is no
/// longer used).
fn close_ring(ctl: &mut ControlChannel, ring_slot: u8) {
    loop {
        let deadline = Deadline::after_us(SETUP_WAIT_US);
        match ctl.wait_for(deadline, |m| matches!(m, Message::CloseRing { .. })) {
            Some(Message::CloseRing { slot }) => {
                if slot != ring_slot {
                    log::warn!("peer: close-ring names slot {slot}, the ring is in {ring_slot}");
                }
                pci_cam::hotplug::eject(slot);
                log::info!("peer: ring closed, slot {slot} ejected; waiting for the next handoff");
                return;
            }
            _ => log::warn!("peer: still waiting for close-ring"),
        }
    }
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

/// Serves the ring until the shim's `release-disk` (the failback) finds the service idle; returns
/// the disk.
fn serve(
    cfg: &GuestConfig,
    server: RingServer<'static>,
    disk: GuestBlk,
    ctl: &mut ControlChannel,
    region: SharedRegion<'static>,
    cycle: u32,
) -> GuestBlk {
    let fault_after = (cfg.fault == Fault::BadCompletion).then_some(GOOD_COMPLETIONS_BEFORE_FAULT);
    let mut service: RingService<'_, BatonHal, GuestBlk> =
        RingService::new(server, disk, fault_after);
    let now_us = clock::uptime_us;
    let mut idle = Stopwatch::start();
    let mut release: Option<Deadline> = None;
    let (mut requested, mut served) = (false, false);
    loop {
        match ctl.poll() {
            Some(Message::ReleaseDisk) => {
                // The handoff's steps first, if the peer was never idle to print them.
                print_steps();
                steps::begin(GuestRole::Peer, SwitchKind::Failback, cycle);
                steps::mark(StepName::ReleaseDisk);
                release = Some(Deadline::after_us(RELEASE_WAIT_US));
            }
            Some(msg) => log::warn!("peer: ignoring {} while serving", msg.name()),
            None => {}
        }
        let busy = match service.step(&now_us) {
            Step::FaultDue => inject_bad_completion(region),
            Step::Busy => true,
            Step::Idle => false,
        };
        if busy && !requested && release.is_none() {
            requested = true;
            steps::mark(StepName::FirstRequest);
        }
        if !served && service.completed() > 0 && release.is_none() {
            served = true;
            steps::mark(StepName::FirstServed);
            // After the first completion is in the ring: the owner's blackout is over.
            log::info!("peer: serving the ring (cycle {cycle})");
        }
        // The handoff's steps go out once the peer has nothing to do, off the owner's blackout.
        if served && !busy && release.is_none() && steps::current().is_some() {
            print_steps();
        }
        if let Some(deadline) = release {
            if service.idle() {
                log::info!(
                    "peer: release-disk after {} completions",
                    service.completed()
                );
                interrupts::busy();
                return service.into_disk();
            }
            if deadline.expired() {
                log::error!("peer: requests still at the device at release-disk; releasing anyway");
                return service.into_disk();
            }
        }
        if busy {
            if idle.elapsed_us() > SPIN_BEFORE_HALT_US {
                interrupts::busy();
            }
            idle = Stopwatch::start();
        } else {
            let idle_us = idle.elapsed_us();
            // Until the first request came, work is due at any moment: the owner forwards as soon
            // as it sees this side of the ring `Ready` (at most a tick), so halting would add up
            // to a tick of the peer's too to the blackout.
            let awaiting_first = !requested && idle_us < FIRST_REQUEST_SPIN_US;
            if idle_us > SPIN_BEFORE_HALT_US && !awaiting_first {
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

/// Prints the `BATON steps` line of the switch under way, if any, and ends it.
fn print_steps() {
    if let Some(line) = steps::take() {
        log::info!("peer: {} {} done", line.kind, line.n);
        crate::platform::serial::print_line(&GuestLine::Steps(line));
    }
}
