//! PCI on the `pc` machine: configuration access through ports 0xcf8/0xcfc, BAR sizing and
//! programming, and the PIIX4 ACPI PCI-hotplug registers.
//!
//! qboot leaves every BAR unprogrammed, and QEMU never programs the BARs of a device hot-added
//! with `device_add`, so the guest sizes and places all of them itself: memory BARs in a window of
//! the PCI hole, I/O BARs from 0xc000, both skipping anything already assigned.

use spin::Mutex;
use virtio_drivers::transport::pci::bus::{
    BarInfo, Command, ConfigurationAccess, DeviceFunction, DeviceFunctionInfo, PciRoot,
};
use x86_64::instructions::port::Port;

/// Serialises the address/data port pair.
static CONFIG_LOCK: Mutex<()> = Mutex::new(());

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

/// The root bus.
pub fn root() -> PciRoot<PortCam> {
    PciRoot::new(PortCam)
}

/// Where memory BARs go: part of the PCI hole below the IOAPIC (0xfec0_0000).
const MMIO_WINDOW: (u64, u64) = (0xc000_0000, 0xfe00_0000);
/// Where I/O BARs go.
const IO_WINDOW: (u64, u64) = (0xc000, 0x1_0000);

struct BarAllocator {
    next_mmio: u64,
    next_io: u64,
}

static BARS: Mutex<BarAllocator> = Mutex::new(BarAllocator {
    next_mmio: MMIO_WINDOW.0,
    next_io: IO_WINDOW.0,
});

/// Errors while setting a device up.
#[derive(Debug)]
pub enum PciSetupError {
    /// A BAR could not be read.
    Bar(virtio_drivers::transport::pci::bus::PciError),
    /// The window for this kind of BAR is full.
    WindowFull,
}

/// Every assigned (non-zero) BAR range on bus 0, to keep new BARs clear of them.
fn assigned_ranges(root: &mut PciRoot<PortCam>) -> heapless::Vec<(bool, u64, u64), 64> {
    let mut out = heapless::Vec::new();
    let devices: heapless::Vec<DeviceFunction, 64> =
        root.enumerate_bus(0).map(|(df, _)| df).collect();
    for df in devices {
        if let Ok(bars) = root.bars(df) {
            for bar in bars.iter().flatten() {
                let (io, addr, size) = match *bar {
                    BarInfo::IO { address, size } => (true, u64::from(address), u64::from(size)),
                    BarInfo::Memory { address, size, .. } => (false, address, size),
                };
                if addr != 0 && size != 0 {
                    let _ = out.push((io, addr, addr + size));
                }
            }
        }
    }
    out
}

fn place(
    next: &mut u64,
    window_end: u64,
    size: u64,
    io: bool,
    taken: &[(bool, u64, u64)],
) -> Option<u64> {
    let align = size.max(if io { 4 } else { 4096 });
    let mut addr = (*next + align - 1) & !(align - 1);
    loop {
        let end = addr.checked_add(size)?;
        if end > window_end {
            return None;
        }
        match taken
            .iter()
            .find(|&&(kind, s, e)| kind == io && s < end && addr < e)
        {
            Some(&(_, _, e)) => addr = (e + align - 1) & !(align - 1),
            None => {
                *next = end;
                return Some(addr);
            }
        }
    }
}

/// Gives every unprogrammed BAR of `df` an address, then enables I/O, memory decoding and bus
/// mastering.
pub fn setup_device(root: &mut PciRoot<PortCam>, df: DeviceFunction) -> Result<(), PciSetupError> {
    let taken = assigned_ranges(root);
    let bars = root.bars(df).map_err(PciSetupError::Bar)?;
    let mut alloc = BARS.lock();
    let alloc = &mut *alloc;
    for (index, bar) in bars.iter().enumerate() {
        let Some(bar) = bar else { continue };
        let index = index as u8;
        match *bar {
            BarInfo::IO { address: 0, size } if size > 0 => {
                let addr = place(&mut alloc.next_io, IO_WINDOW.1, size.into(), true, &taken)
                    .ok_or(PciSetupError::WindowFull)?;
                root.set_bar_32(df, index, addr as u32 | 1);
                log::debug!("pci {df}: BAR{index} I/O {addr:#x} +{size:#x}");
            }
            BarInfo::Memory {
                address: 0, size, ..
            } if size > 0 => {
                let addr = place(&mut alloc.next_mmio, MMIO_WINDOW.1, size, false, &taken)
                    .ok_or(PciSetupError::WindowFull)?;
                if bar.takes_two_entries() {
                    root.set_bar_64(df, index, addr);
                } else {
                    root.set_bar_32(df, index, addr as u32);
                }
                log::debug!("pci {df}: BAR{index} memory {addr:#x} +{size:#x}");
            }
            _ => {}
        }
    }
    root.set_command(
        df,
        Command::IO_SPACE | Command::MEMORY_SPACE | Command::BUS_MASTER,
    );
    Ok(())
}

/// Finds the first function on bus 0 for which `pred` holds.
pub fn find(
    root: &PciRoot<PortCam>,
    mut pred: impl FnMut(DeviceFunction, &DeviceFunctionInfo) -> bool,
) -> Option<(DeviceFunction, DeviceFunctionInfo)> {
    root.enumerate_bus(0).find(|(df, info)| pred(*df, info))
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
