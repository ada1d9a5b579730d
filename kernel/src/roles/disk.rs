//! The guest's disks: finding a virtio-blk function (at boot, or hot-plugged by the shim),
//! placing its BARs and bringing it up as a [`GuestBlk`] behind virtio-drivers' `PciTransport`.

use crate::platform::clock::{self, Deadline};
use crate::platform::hal::BatonHal;
use crate::platform::pci;
use crate::platform::pci_cam::{self, PortCam};
use crate::platform::{interrupts, serial};
use crate::ports::BlockPort;
use crate::ports::blk::BlkDevice;
use baton_core::console::GuestLine;
use baton_core::guest_steps::StepName;
use virtio_drivers::transport::pci::PciTransport;
use virtio_drivers::transport::pci::bus::{DeviceFunction, PciRoot};

/// The guest's virtio-blk port: the generic driver on the guest's Hal and the PCI transport.
pub type GuestBlk = BlkDevice<BatonHal, PciTransport>;

/// How long `disk=hotplug` waits for the host to plug a disk.
const HOTPLUG_WAIT_US: u64 = 120_000_000;

/// The first virtio-blk function on bus 0 (in `slot` if given: then only that slot's
/// configuration space is read).
pub fn find_blk(root: &PciRoot<PortCam>, slot: Option<u8>) -> Option<DeviceFunction> {
    let Some(slot) = slot else {
        return pci::find_blk(root, None);
    };
    if slot >= 32 {
        return None;
    }
    let (vendor, device) = pci_cam::ids_in_slot(slot);
    let blk = vendor == pci::VIRTIO_VENDOR && pci::VIRTIO_BLK_DEVICES.contains(&device);
    blk.then_some(DeviceFunction {
        bus: 0,
        device: slot,
        function: 0,
    })
}

/// Waits, sleeping between polls, for the ACPI hotplug register to report a new virtio-blk.
pub fn wait_for_hotplugged_blk(root: &PciRoot<PortCam>) -> DeviceFunction {
    serial::print_line(&GuestLine::WaitingForDisk);
    let deadline = Deadline::after_us(HOTPLUG_WAIT_US);
    let waited = clock::Stopwatch::start();
    loop {
        if let Some(df) = pci::hotplugged_blk(root, pci_cam::hotplug::take_up()) {
            interrupts::busy();
            return df;
        }
        if deadline.expired() {
            panic!(
                "no disk was hot-plugged within {} s",
                HOTPLUG_WAIT_US / 1_000_000
            );
        }
        interrupts::idle(waited.elapsed_us());
    }
}

/// Programs the BARs of `df` and brings the virtio-blk device up; panics (the run fails) when
/// the device is unusable.
pub fn open_blk(root: &mut PciRoot<PortCam>, df: DeviceFunction) -> GuestBlk {
    if let Err(e) = pci_cam::setup_device(root, df) {
        panic!("pci {df}: cannot place BARs: {e:?}");
    }
    crate::steps::mark(StepName::Pci);
    // The transport sizes the BARs again: with decoding still off that costs QEMU no remapping.
    let transport = match PciTransport::new::<BatonHal, _>(root, df) {
        Ok(t) => t,
        Err(e) => panic!("pci {df}: not a usable virtio device: {e:?}"),
    };
    pci_cam::enable(root, df);
    crate::steps::mark(StepName::Transport);
    match BlkDevice::new(transport) {
        Ok(dev) => {
            crate::steps::mark(StepName::DiskUp);
            // Debug only: a hot-plugged disk is brought up inside a blackout, where a console line
            // (a VM exit per byte) costs time; the roles log the disk once they have reported.
            log::debug!(
                "pci {df}: virtio-blk, {} blocks of 4 KiB",
                dev.capacity_blocks()
            );
            dev
        }
        Err(e) => panic!("pci {df}: virtio-blk init failed: {e:?}"),
    }
}
