//! PCI on the `pc` machine: configuration mechanism #1 (ports 0xcf8/0xcfc), the guest's one BAR
//! allocator, and the PIIX4 ACPI PCI-hotplug registers. The placement logic itself is
//! [`super::pci`], which works on any configuration access.

use super::pci::{self, BarAllocator, PciSetupError};
use spin::Mutex;
use virtio_drivers::transport::pci::bus::{ConfigurationAccess, DeviceFunction, PciRoot};
use x86_64::instructions::port::Port;

/// Serialises the address/data port pair.
static CONFIG_LOCK: Mutex<()> = Mutex::new(());

/// Where the next BARs go, for every device this guest sets up.
static BARS: Mutex<BarAllocator> = Mutex::new(BarAllocator::new());

/// Configuration mechanism #1 (ports 0xcf8/0xcfc).
pub struct PortCam;

fn config_address(df: DeviceFunction, offset: u8) -> u32 {
    0x8000_0000
        | (u32::from(df.bus) << 16)
        | (u32::from(df.device) << 11)
        | (u32::from(df.function) << 8)
        | u32::from(offset & 0xfc)
}

impl ConfigurationAccess for PortCam {
    fn read_word(&self, df: DeviceFunction, offset: u8) -> u32 {
        let _guard = CONFIG_LOCK.lock();
        // SAFETY: the config address/data ports; the lock keeps the pair atomic.
        unsafe {
            Port::<u32>::new(0xcf8).write(config_address(df, offset));
            Port::<u32>::new(0xcfc).read()
        }
    }

    fn write_word(&mut self, df: DeviceFunction, offset: u8, data: u32) {
        let _guard = CONFIG_LOCK.lock();
        // SAFETY: as in `read_word`.
        unsafe {
            Port::<u32>::new(0xcf8).write(config_address(df, offset));
            Port::<u32>::new(0xcfc).write(data);
        }
    }

    unsafe fn unsafe_clone(&self) -> Self {
        PortCam
    }
}

/// Vendor and device id of function 0 in `slot` of bus 0 (`0xffff` vendor: nothing there), read
/// from that function's configuration space alone: a hot-plug is told its slot, so finding the
/// device need not walk the bus.
pub fn ids_in_slot(slot: u8) -> (u16, u16) {
    let df = DeviceFunction {
        bus: 0,
        device: slot,
        function: 0,
    };
    let word = PortCam.read_word(df, 0);
    (word as u16, (word >> 16) as u16)
}

/// The root bus.
pub fn root() -> PciRoot<PortCam> {
    PciRoot::new(PortCam)
}

/// Places the unprogrammed BARs of `df` from the guest's allocator, decoding left off
/// ([`pci::setup_device`]); returns its BARs. Turn decoding on with [`enable`].
pub fn setup_device(
    root: &mut PciRoot<PortCam>,
    df: DeviceFunction,
) -> Result<pci::PlacedBars, PciSetupError> {
    pci::setup_device(root, &mut BARS.lock(), df)
}

/// Turns on `df`'s decoding and bus mastering ([`pci::enable`]).
pub fn enable(root: &mut PciRoot<PortCam>, df: DeviceFunction) {
    pci::enable(root, df);
}

/// Records the BARs bus 0 has assigned ([`pci::learn_bus`]): at boot, so that no hot-plug later
/// sizes another device's BARs. A failure is logged; the first [`setup_device`] then tries again.
pub fn learn_bus(root: &mut PciRoot<PortCam>) {
    if let Err(e) = pci::learn_bus(root, &mut BARS.lock()) {
        log::warn!("pci: cannot record bus 0's BARs: {e}");
    }
}

/// PIIX4 ACPI PCI hotplug registers (hw/acpi/pcihp.c): 32-bit accesses only.
pub mod hotplug {
    use x86_64::instructions::port::Port;

    const BASE: u16 = 0xae00;

    fn read(offset: u16) -> u32 {
        // SAFETY: the hotplug register block of the `pc` machine; reads have no memory effects.
        unsafe { Port::<u32>::new(BASE + offset).read() }
    }

    /// Slots hot-added since the last read (clear-on-read).
    pub fn take_up() -> u32 {
        read(0x00)
    }

    /// Completes the removal of `slot`: QEMU unplugs the device.
    pub fn eject(slot: u8) {
        // SAFETY: writing a slot bit to EJ only unplugs that slot's device, which the caller has
        // quiesced and no longer uses.
        unsafe { Port::<u32>::new(BASE + 0x08).write(1 << slot) };
    }
}
