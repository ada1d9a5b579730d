//! PCI BAR sizing and placement, and finding functions, on any configuration-space access
//! ([`ConfigurationAccess`]: ports 0xcf8/0xcfc in the guest, `platform::pci_cam`; a fake in the
//! host tests). PCI Local Bus 3.0 §6.2.5 (base address registers).
//!
//! qboot leaves every BAR unprogrammed, and QEMU never programs the BARs of a device hot-added
//! with `device_add`, so the guest sizes and places all of them itself: memory BARs in a window of
//! the PCI hole ([`MMIO_WINDOW`]), I/O BARs from 0xc000 ([`IO_WINDOW`]), both naturally aligned
//! and skipping anything already assigned on bus 0.
//!
//! Space is reused: a guest that takes part in many handoff and failback cycles places a
//! virtio-blk and an ivshmem device per cycle and ejects them again, far more BARs than either
//! window holds. Placement searches forward from where the last BAR went and, when that finds no
//! room, once more from the window's start. What it must stay clear of is the allocator's own
//! record of bus 0 ([`BarAllocator`]): read from the bus once ([`learn_bus`], at boot), then kept
//! by [`setup_device`], which forgets a slot's old BARs when a new function is set up in it (a
//! device is only ever set up in a slot after the one before it was ejected).
//!
//! Why a record and not a fresh read each time: sizing a BAR means writing all-ones to it, and on
//! a function whose decoding is on, each sizing toggles the command register, which makes QEMU
//! rebuild the guest's memory map twice (a memory transaction, about 0.1–0.3 ms each under TCG).
//! Reading the whole bus at every hot-plug cost the peer 3.7 ms of the handoff's blackout, and the
//! transport's own sizing of the new device another 6.3 ms while its decoding was on. So a
//! hot-plugged device is sized with its decoding off, only its own slot is touched, and
//! [`enable`] turns decoding on once the virtio transport has read its BARs (docs/design.md,
//! "Where the blackout goes").

use virtio_drivers::transport::pci::bus::{
    BarInfo, Command, ConfigurationAccess, DeviceFunction, DeviceFunctionInfo, PciError, PciRoot,
};

/// Where memory BARs go, `[start, end)`: part of the PCI hole below the IOAPIC (0xfec0_0000).
pub const MMIO_WINDOW: (u64, u64) = (0xc000_0000, 0xfe00_0000);
/// Where I/O BARs go, `[start, end)`.
pub const IO_WINDOW: (u64, u64) = (0xc000, 0x1_0000);

/// virtio's PCI vendor id.
pub const VIRTIO_VENDOR: u16 = 0x1af4;
/// virtio-blk's device ids: transitional (0x1001) and modern (0x1042).
pub const VIRTIO_BLK_DEVICES: [u16; 2] = [0x1001, 0x1042];

/// BAR placement state: where the next search of each window starts (just after the BAR placed
/// last), and the BAR ranges assigned on bus 0 with the slot of their function. The record starts
/// empty and is filled from the bus by [`learn_bus`] (or the first [`setup_device`]); after that
/// only [`setup_device`] changes it, so the space of an ejected device is reused once a new device
/// is set up in its slot.
#[derive(Debug)]
pub struct BarAllocator {
    next_mmio: u64,
    next_io: u64,
    /// `(slot, range)` of every assigned BAR on bus 0; `None` until the bus was read.
    assigned: Option<heapless::Vec<(u8, Range), MAX_RANGES>>,
}

impl BarAllocator {
    /// Both windows empty, the bus not read yet.
    pub const fn new() -> Self {
        BarAllocator {
            next_mmio: MMIO_WINDOW.0,
            next_io: IO_WINDOW.0,
            assigned: None,
        }
    }
}

impl Default for BarAllocator {
    fn default() -> Self {
        Self::new()
    }
}

/// Errors while setting a device up.
#[derive(Debug, thiserror::Error)]
pub enum PciSetupError {
    /// A BAR could not be read.
    #[error("cannot read a BAR: {0}")]
    Bar(PciError),
    /// The window for this kind of BAR is full.
    #[error("no room left in the BAR window")]
    WindowFull,
    /// Bus 0 has more functions or assigned BARs than the placement keeps track of
    /// ([`MAX_FUNCTIONS`], [`MAX_RANGES`]).
    #[error("too many PCI functions or BARs on bus 0")]
    TooManyBars,
}

/// Functions on bus 0 whose BARs placement looks at (32 slots of up to 8 functions).
pub const MAX_FUNCTIONS: usize = 256;
/// Assigned BAR ranges placement keeps clear of, those of the device being set up included.
pub const MAX_RANGES: usize = 128;

/// A BAR range in use: `(is_io, start, end)`, end exclusive.
type Range = (bool, u64, u64);

/// Ranges of BARs in use.
type Taken = heapless::Vec<Range, MAX_RANGES>;

/// Every assigned (non-zero) BAR range on bus 0 with its function's slot, to keep new BARs clear
/// of them. Sizes every BAR of every function: slow on a running guest (see the module's docs),
/// so it runs once. Errors: [`PciSetupError::TooManyBars`] (some could not be recorded, so none
/// may be placed).
fn assigned_ranges<C: ConfigurationAccess>(
    root: &mut PciRoot<C>,
) -> Result<heapless::Vec<(u8, Range), MAX_RANGES>, PciSetupError> {
    let mut out = heapless::Vec::new();
    let mut devices = heapless::Vec::<DeviceFunction, MAX_FUNCTIONS>::new();
    for (df, _) in root.enumerate_bus(0) {
        devices.push(df).map_err(|_| PciSetupError::TooManyBars)?;
    }
    for df in devices {
        if let Ok(bars) = root.bars(df) {
            for bar in bars.iter().flatten() {
                let (io, addr, size) = match *bar {
                    BarInfo::IO { address, size } => (true, u64::from(address), u64::from(size)),
                    BarInfo::Memory { address, size, .. } => (false, address, size),
                };
                if addr != 0 && size != 0 {
                    let end = addr.saturating_add(size);
                    out.push((df.device, (io, addr, end)))
                        .map_err(|_| PciSetupError::TooManyBars)?;
                }
            }
        }
    }
    Ok(out)
}

/// Where `size` bytes of a BAR go in `window` (`[start, end)`), clear of `taken`: the first fit
/// at or after `*next`, else the first fit from the window's start (space freed by removed
/// devices); advances `*next` past it. `None`: no room anywhere in the window.
fn place(next: &mut u64, window: (u64, u64), size: u64, io: bool, taken: &[Range]) -> Option<u64> {
    let addr = first_fit(*next, window.1, size, io, taken)
        .or_else(|| first_fit(window.0, window.1, size, io, taken))?;
    *next = addr + size;
    Some(addr)
}

/// The first address at or after `from` where `size` bytes fit, naturally aligned (at least 4
/// bytes for I/O, a page for memory), below `window_end` and clear of `taken`.
fn first_fit(from: u64, window_end: u64, size: u64, io: bool, taken: &[Range]) -> Option<u64> {
    let align = size.max(if io { 4 } else { 4096 });
    let mut addr = from.checked_add(align - 1)? & !(align - 1);
    loop {
        let end = addr.checked_add(size)?;
        if end > window_end {
            return None;
        }
        match taken
            .iter()
            .find(|&&(kind, s, e)| kind == io && s < end && addr < e)
        {
            Some(&(_, _, e)) => addr = e.checked_add(align - 1)? & !(align - 1),
            None => return Some(addr),
        }
    }
}

/// Reads which BAR ranges bus 0 has assigned into `alloc`'s record, once (later calls do
/// nothing). Call it at boot, before any hot-plug, so that no handoff pays for it. Errors:
/// [`PciSetupError::TooManyBars`].
pub fn learn_bus<C: ConfigurationAccess>(
    root: &mut PciRoot<C>,
    alloc: &mut BarAllocator,
) -> Result<(), PciSetupError> {
    if alloc.assigned.is_none() {
        alloc.assigned = Some(assigned_ranges(root)?);
    }
    Ok(())
}

/// The BARs of a function after [`setup_device`]: `(is_io, address, size)` per BAR index (the
/// second entry of a 64-bit BAR is `None`).
pub type PlacedBars = [Option<Range>; 6];

/// Gives every unprogrammed BAR of `df` an address, clear of every BAR recorded for bus 0 and of
/// each other, with the function's decoding off; returns all its BARs. Touches only `df`'s
/// configuration space once the bus was learnt ([`learn_bus`], done here if it was not). Decoding
/// stays off until [`enable`], so that the virtio transport can size the BARs again without QEMU
/// remapping them each time. Errors: [`PciSetupError::Bar`] (a BAR reads back malformed),
/// [`PciSetupError::WindowFull`], [`PciSetupError::TooManyBars`].
pub fn setup_device<C: ConfigurationAccess>(
    root: &mut PciRoot<C>,
    alloc: &mut BarAllocator,
    df: DeviceFunction,
) -> Result<PlacedBars, PciSetupError> {
    learn_bus(root, alloc)?;
    let assigned = alloc.assigned.get_or_insert_with(heapless::Vec::new);
    // Whatever was in this slot before was ejected: its space is free again.
    assigned.retain(|&(slot, _)| slot != df.device);
    let mut taken: Taken = assigned.iter().map(|&(_, r)| r).collect();
    root.set_command(df, Command::empty());
    let bars = root.bars(df).map_err(PciSetupError::Bar)?;
    let mut placed: PlacedBars = [None; 6];
    for (index, bar) in bars.iter().enumerate() {
        let Some(bar) = bar else { continue };
        let (io, address, size) = match *bar {
            BarInfo::IO { address, size } => (true, u64::from(address), u64::from(size)),
            BarInfo::Memory { address, size, .. } => (false, address, size),
        };
        if size == 0 {
            continue;
        }
        let addr = if address != 0 {
            address
        } else if io {
            place(&mut alloc.next_io, IO_WINDOW, size, true, &taken)
                .ok_or(PciSetupError::WindowFull)?
        } else {
            place(&mut alloc.next_mmio, MMIO_WINDOW, size, false, &taken)
                .ok_or(PciSetupError::WindowFull)?
        };
        let range = (io, addr, addr + size);
        taken.push(range).map_err(|_| PciSetupError::TooManyBars)?;
        assigned
            .push((df.device, range))
            .map_err(|_| PciSetupError::TooManyBars)?;
        placed[index] = Some(range);
        if address != 0 {
            continue;
        }
        let index = index as u8;
        if io {
            root.set_bar_32(df, index, addr as u32 | 1);
            log::debug!("pci {df}: BAR{index} I/O {addr:#x} +{size:#x}");
        } else {
            if bar.takes_two_entries() {
                root.set_bar_64(df, index, addr);
            } else {
                root.set_bar_32(df, index, addr as u32);
            }
            log::debug!("pci {df}: BAR{index} memory {addr:#x} +{size:#x}");
        }
    }
    Ok(placed)
}

/// Turns on `df`'s I/O and memory decoding and bus mastering (after [`setup_device`]).
pub fn enable<C: ConfigurationAccess>(root: &mut PciRoot<C>, df: DeviceFunction) {
    root.set_command(
        df,
        Command::IO_SPACE | Command::MEMORY_SPACE | Command::BUS_MASTER,
    );
}

/// Finds the first function on bus 0 for which `pred` holds.
pub fn find<C: ConfigurationAccess>(
    root: &PciRoot<C>,
    mut pred: impl FnMut(DeviceFunction, &DeviceFunctionInfo) -> bool,
) -> Option<(DeviceFunction, DeviceFunctionInfo)> {
    root.enumerate_bus(0).find(|(df, info)| pred(*df, info))
}

/// virtio-net's device ids: transitional (0x1000) and modern (0x1041).
pub const VIRTIO_NET_DEVICES: [u16; 2] = [0x1000, 0x1041];

/// The first virtio-net function on bus 0.
pub fn find_net<C: ConfigurationAccess>(root: &PciRoot<C>) -> Option<DeviceFunction> {
    find(root, |_, i| {
        i.vendor_id == VIRTIO_VENDOR && VIRTIO_NET_DEVICES.contains(&i.device_id)
    })
    .map(|(df, _)| df)
}

/// The first virtio-blk function on bus 0 (in `slot` if given).
pub fn find_blk<C: ConfigurationAccess>(
    root: &PciRoot<C>,
    slot: Option<u8>,
) -> Option<DeviceFunction> {
    find(root, |df, i| {
        i.vendor_id == VIRTIO_VENDOR
            && VIRTIO_BLK_DEVICES.contains(&i.device_id)
            && slot.is_none_or(|s| s == df.device)
    })
    .map(|(df, _)| df)
}

/// The virtio-blk function among the slots the PIIX4 hotplug register reported added (`up`, bit
/// `n` = slot `n`; hw/acpi/pcihp.c), lowest slot first.
pub fn hotplugged_blk<C: ConfigurationAccess>(
    root: &PciRoot<C>,
    up: u32,
) -> Option<DeviceFunction> {
    (0..32u8).filter(|s| up & (1 << s) != 0).find_map(|slot| {
        log::info!("hotplug: device added in slot {slot}");
        find_blk(root, Some(slot))
    })
}

#[cfg(test)]
#[path = "pci_tests.rs"]
mod tests;
