//! The owner role: find (or wait for) the disk, put it behind port 1, run the workload while
//! polling the handoff, report (docs/guest-interface.md). This is the owner's main loop; the
//! workload only submits and completes, the handoff driver only moves the disk.

use super::disk::{self, GuestBlk};
use super::handoff::OwnerHandoff;
use super::owner_loop;
use super::{ControlLink, OwnerPlatform};
use crate::platform::control::ControlChannel;
use crate::platform::exit::{ExitCode, exit};
use crate::platform::hal::BatonHal;
use crate::platform::pci_cam::{self, PortCam};
use crate::platform::{clock, interrupts, serial, shm};
use crate::ports::BlockPort;
use crate::stack::ResourceStack;
use crate::workload::{Clock, Workload};
use baton_core::cmdline::{DiskMode, GuestConfig};
use baton_core::console::GuestLine;
use baton_core::control::Message;
use baton_core::ring::SharedRegion;
use virtio_drivers::transport::pci::bus::PciRoot;

/// The owner's resource stack: request buffers from the guest's Hal, the virtio-blk port.
pub type GuestStack = ResourceStack<BatonHal, GuestBlk>;

impl ControlLink for ControlChannel {
    fn send(&mut self, msg: Message) -> bool {
        ControlChannel::send(self, msg)
    }

    fn poll(&mut self) -> Option<Message> {
        ControlChannel::poll(self)
    }

    fn idle(&self) -> bool {
        ControlChannel::idle(self)
    }

    fn arrived(&mut self) -> bool {
        crate::platform::interrupts::take_wake()
    }

    fn receiving(&self) -> bool {
        ControlChannel::receiving(self)
    }
}

/// The guest's clock for the workload: the TSC, calibrated at boot.
pub struct GuestClock;

impl Clock for GuestClock {
    fn ticks(&self) -> u64 {
        clock::rdtsc()
    }

    fn ticks_per_us(&self) -> u64 {
        clock::tsc_per_us()
    }

    fn uptime_us(&self) -> u64 {
        clock::uptime_us()
    }
}

/// The machine as the owner's handoff sees it.
pub struct GuestPlatform {
    root: PciRoot<PortCam>,
}

impl OwnerPlatform for GuestPlatform {
    type Disk = GuestBlk;

    fn now_us(&self) -> u64 {
        clock::uptime_us()
    }

    fn eject(&mut self, slot: u8) {
        pci_cam::hotplug::eject(slot);
    }

    fn open_ring(&mut self, slot: u8) -> Option<SharedRegion<'static>> {
        shm::open(&mut self.root, slot)
            .map_err(|e| log::error!("handoff: ring in slot {slot}: {e:?}"))
            .ok()
    }

    fn open_disk(&mut self, slot: u8) -> Option<GuestBlk> {
        let Some(df) = disk::find_blk(&self.root, Some(slot)) else {
            log::error!("handoff: no virtio-blk in slot {slot}");
            return None;
        };
        Some(disk::open_blk(&mut self.root, df))
    }
}

/// Runs the owner; ends the VM with success when every write was acknowledged and read back
/// intact, with failure otherwise.
pub fn run(cfg: &GuestConfig) -> ! {
    let mut root = pci_cam::root();
    pci_cam::learn_bus(&mut root);
    let df = match cfg.disk {
        DiskMode::Boot => {
            disk::find_blk(&root, None).unwrap_or_else(|| panic!("no virtio-blk disk"))
        }
        DiskMode::Hotplug => disk::wait_for_hotplugged_blk(&root),
    };
    let dev = disk::open_blk(&mut root, df);
    log::info!(
        "pci {df}: virtio-blk, {} blocks of 4 KiB",
        dev.capacity_blocks()
    );
    let mut stack = GuestStack::new();
    stack.attach_port1(dev);
    let platform = GuestPlatform { root };
    let mut handoff = OwnerHandoff::new(ControlChannel::open(), platform, df.device, cfg.vm);
    let mut workload = match Workload::new(cfg, &stack, GuestClock, serial::Console) {
        Ok(w) => w,
        Err(e) => panic!("workload failed: {e:?}"),
    };
    loop {
        match owner_loop::round(cfg, &mut handoff, &mut workload, &mut stack) {
            Ok(true) => break,
            Ok(false) => {}
            Err(e) => panic!("workload failed: {e:?}"),
        }
        // No port can complete anything while the device is away and port 2 not yet open (or,
        // in a failback, once `drained` went and until the disk is back): unless a frame is
        // arriving, halt until the shim's next frame (COM2's interrupt) or the next tick,
        // leaving the host CPU to the QEMUs, the shim and the peer, which have the handoff's
        // work to do.
        if handoff.awaiting_shim(stack.state()) && !handoff.link_receiving() {
            interrupts::wait_for_interrupt();
        }
    }
    let mut report = workload.into_report();
    report.held_at_switch = handoff.held_at_switch;
    handoff.flush(2_000_000);
    serial::print_line(&GuestLine::Result(report));
    let clean = report.write_errors == 0
        && report.read_mismatches == 0
        && report.duplicates == 0
        && stack.ring_fault.is_none();
    exit(if clean {
        ExitCode::Success
    } else {
        ExitCode::Failure
    })
}
