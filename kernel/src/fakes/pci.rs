//! A PCI configuration space (bus 0 only) with real BAR semantics: each BAR keeps its read-only
//! type bits and only its size-aligned address bits are writable, so writing all ones and
//! reading back gives the size (PCI Local Bus 3.0 §6.2.5.1). Functions can be added while a
//! [`PciRoot`](virtio_drivers::transport::pci::bus::PciRoot) owns the space (a hot-add).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use virtio_drivers::transport::pci::bus::{ConfigurationAccess, DeviceFunction};

/// A BAR of a fake function.
#[derive(Clone, Copy, Debug)]
pub enum FakeBar {
    /// Not implemented (reads 0).
    None,
    /// I/O space of `size` bytes.
    Io(u32),
    /// 32-bit memory of `size` bytes.
    Mem32(u32),
    /// 64-bit memory of `size` bytes (takes this BAR and the next).
    Mem64(u64),
}

/// One function: its 64 configuration words and the writable mask of each BAR register.
#[derive(Clone, Debug)]
struct Function {
    regs: [u32; 64],
    masks: [u32; 6],
}

/// The shared state behind [`FakeConfigSpace`].
#[derive(Debug, Default)]
pub struct Space {
    functions: BTreeMap<u8, Function>,
    /// Every configuration write, in order: `(slot, offset, data)`.
    writes: Vec<(u8, u8, u32)>,
}

/// A configuration space; clones share it (the test keeps one to hot-add devices).
#[derive(Clone, Debug, Default)]
pub struct FakeConfigSpace(pub Rc<RefCell<Space>>);

impl FakeConfigSpace {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Plugs function 0 of a device into `slot` with the given ids and BARs.
    pub fn add(&self, slot: u8, vendor: u16, device: u16, bars: &[FakeBar]) {
        let mut f = Function {
            regs: [0; 64],
            masks: [0; 6],
        };
        f.regs[0] = u32::from(vendor) | (u32::from(device) << 16);
        f.regs[2] = 0x0100_0000; // class: mass storage (unused by the code under test)
        let mut i = 0;
        for bar in bars {
            match *bar {
                FakeBar::None => {}
                FakeBar::Io(size) => {
                    f.regs[4 + i] = 1;
                    f.masks[i] = !(size - 1) & !0b11;
                }
                FakeBar::Mem32(size) => f.masks[i] = !(size - 1) & !0b1111,
                FakeBar::Mem64(size) => {
                    f.regs[4 + i] = 0b100;
                    f.masks[i] = !((size - 1) as u32) & !0b1111;
                    i += 1;
                    f.masks[i] = !((size - 1) >> 32) as u32;
                }
            }
            i += 1;
        }
        self.0.borrow_mut().functions.insert(slot, f);
    }

    /// Removes the device in `slot` (an eject).
    pub fn remove(&self, slot: u8) {
        self.0.borrow_mut().functions.remove(&slot);
    }

    /// Configuration word `offset` of the function in `slot` (all ones when absent).
    pub fn word(&self, slot: u8, offset: u8) -> u32 {
        let space = self.0.borrow();
        space
            .functions
            .get(&slot)
            .map_or(u32::MAX, |f| f.regs[usize::from(offset / 4)])
    }

    /// Every configuration write so far, in order: `(slot, offset, data)`.
    pub fn writes(&self) -> Vec<(u8, u8, u32)> {
        self.0.borrow().writes.clone()
    }

    /// Sets configuration word `offset` of the function in `slot` directly (firmware's doing).
    pub fn set_word(&self, slot: u8, offset: u8, value: u32) {
        if let Some(f) = self.0.borrow_mut().functions.get_mut(&slot) {
            f.regs[usize::from(offset / 4)] = value;
        }
    }
}

impl ConfigurationAccess for FakeConfigSpace {
    fn read_word(&self, df: DeviceFunction, offset: u8) -> u32 {
        if df.bus != 0 || df.function != 0 {
            return u32::MAX;
        }
        self.word(df.device, offset)
    }

    fn write_word(&mut self, df: DeviceFunction, offset: u8, data: u32) {
        if df.bus != 0 || df.function != 0 {
            return;
        }
        let mut space = self.0.borrow_mut();
        space.writes.push((df.device, offset, data));
        let Some(f) = space.functions.get_mut(&df.device) else {
            return;
        };
        let reg = usize::from(offset / 4);
        match reg {
            4..=9 => {
                let mask = f.masks[reg - 4];
                let fixed = if mask == 0 { 0 } else { f.regs[reg] & !mask };
                f.regs[reg] = (data & mask) | fixed;
            }
            0 | 2 => {}
            _ => f.regs[reg] = data,
        }
    }

    unsafe fn unsafe_clone(&self) -> Self {
        self.clone()
    }
}
