//! BAR placement and device discovery against a fake configuration space.

use super::*;
use crate::fakes::pci::{FakeBar, FakeConfigSpace};

const IVSHMEM: (u16, u16) = (0x1af4, 0x1110);

fn df(slot: u8) -> DeviceFunction {
    DeviceFunction {
        bus: 0,
        device: slot,
        function: 0,
    }
}

/// `(address, size)` of BAR `index` of the function in `slot`.
fn bar(root: &mut PciRoot<FakeConfigSpace>, slot: u8, index: u8) -> (u64, u64) {
    match root.bar_info(df(slot), index) {
        Ok(Some(BarInfo::Memory { address, size, .. })) => (address, size),
        Ok(Some(BarInfo::IO { address, size })) => (u64::from(address), u64::from(size)),
        other => panic!("slot {slot} BAR{index}: {other:?}"),
    }
}

fn overlaps(a: (u64, u64), b: (u64, u64)) -> bool {
    a.0 < b.0 + b.1 && b.0 < a.0 + a.1
}

/// A modern virtio-blk as QEMU builds it: BAR1 32-bit MMIO (MSI-X), BAR4 64-bit MMIO.
fn add_blk(space: &FakeConfigSpace, slot: u8) {
    let bars = [
        FakeBar::Io(128),
        FakeBar::Mem32(4096),
        FakeBar::None,
        FakeBar::None,
        FakeBar::Mem64(16 * 1024),
    ];
    space.add(slot, VIRTIO_VENDOR, 0x1042, &bars);
}

#[test]
fn every_bar_of_a_boot_device_is_sized_aligned_and_placed_in_its_window() {
    let space = FakeConfigSpace::new();
    add_blk(&space, 4);
    let mut root = PciRoot::new(space.clone());
    let mut alloc = BarAllocator::new();
    setup_device(&mut root, &mut alloc, df(4)).unwrap();
    let io = bar(&mut root, 4, 0);
    assert_eq!(io, (IO_WINDOW.0, 128));
    assert_eq!(space.word(4, 0x10) & 1, 1, "I/O BARs keep their type bit");
    let mmio = bar(&mut root, 4, 1);
    let wide = bar(&mut root, 4, 4);
    assert_eq!(mmio.1, 4096);
    assert_eq!(wide.1, 16 * 1024);
    for (addr, size) in [mmio, wide] {
        assert_eq!(addr % size, 0, "naturally aligned");
        assert!(addr >= MMIO_WINDOW.0 && addr + size <= MMIO_WINDOW.1);
    }
    assert!(!overlaps(mmio, wide));
    assert_eq!(
        space.word(4, 0x20) & 0b110,
        0b100,
        "BAR4 stays a 64-bit BAR"
    );
    assert_eq!(space.word(4, 0x24), 0, "upper half below 4 GiB");
    let command = space.word(4, 0x04) & 0xffff;
    let want = Command::IO_SPACE | Command::MEMORY_SPACE | Command::BUS_MASTER;
    assert_eq!(command, u32::from(want.bits()));
}

#[test]
fn a_hot_added_device_is_placed_clear_of_every_assigned_bar() {
    let space = FakeConfigSpace::new();
    add_blk(&space, 4);
    // A device the firmware placed at the window's start.
    space.add(2, 0x8086, 0x100e, &[FakeBar::Mem32(128 * 1024)]);
    space.set_word(2, 0x10, MMIO_WINDOW.0 as u32);
    let mut root = PciRoot::new(space.clone());
    let mut alloc = BarAllocator::new();
    setup_device(&mut root, &mut alloc, df(4)).unwrap();
    // Plugged while the guest runs: ivshmem-plain, BAR0 registers, BAR2 64-bit shared memory.
    let bars = [FakeBar::Mem32(256), FakeBar::None, FakeBar::Mem64(4 << 20)];
    space.add(6, IVSHMEM.0, IVSHMEM.1, &bars);
    setup_device(&mut root, &mut alloc, df(6)).unwrap();
    let firmware = bar(&mut root, 2, 0);
    assert_eq!(
        firmware,
        (MMIO_WINDOW.0, 128 * 1024),
        "assigned BARs are left alone"
    );
    let placed = [
        bar(&mut root, 4, 1),
        bar(&mut root, 4, 4),
        bar(&mut root, 6, 0),
        bar(&mut root, 6, 2),
    ];
    assert_eq!(placed[3].1, 4 << 20);
    assert_eq!(placed[3].0 % (4 << 20), 0);
    for (i, a) in placed.iter().enumerate() {
        assert!(
            !overlaps(*a, firmware),
            "{a:x?} overlaps the firmware's BAR"
        );
        for b in &placed[i + 1..] {
            assert!(!overlaps(*a, *b), "{a:x?} overlaps {b:x?}");
        }
    }
}

#[test]
fn a_full_window_is_an_error() {
    let space = FakeConfigSpace::new();
    space.add(3, VIRTIO_VENDOR, 0x1042, &[FakeBar::Mem64(1 << 30)]);
    let mut root = PciRoot::new(space.clone());
    let mut alloc = BarAllocator::new();
    // 0xc000_0000 + 1 GiB = 0x1_0000_0000, beyond the window's end (0xfe00_0000).
    let r = setup_device(&mut root, &mut alloc, df(3));
    assert!(matches!(r, Err(PciSetupError::WindowFull)));
}

#[test]
fn place_skips_taken_ranges_of_the_same_kind_only() {
    let taken = [(false, 0x1000, 0x3000), (true, 0x3000, 0x4000)];
    let mut next = 0x1000;
    assert_eq!(
        place(&mut next, 0x10000, 0x1000, false, &taken),
        Some(0x3000)
    );
    assert_eq!(next, 0x4000);
    let mut next = 0x3000;
    assert_eq!(
        place(&mut next, 0x10000, 0x100, false, &taken),
        Some(0x3000)
    );
    let mut next = 0xf000;
    assert_eq!(place(&mut next, 0x10000, 0x2000, false, &taken), None);
    let mut next = u64::MAX - 4;
    assert_eq!(place(&mut next, u64::MAX, 0x1000, false, &[]), None);
}

#[test]
fn the_hotplug_register_finds_the_new_disk_among_the_added_slots() {
    let space = FakeConfigSpace::new();
    add_blk(&space, 4);
    let root = PciRoot::new(space.clone());
    assert_eq!(hotplugged_blk(&root, 0), None);
    assert_eq!(find_blk(&root, None), Some(df(4)));
    assert_eq!(find_blk(&root, Some(5)), None);
    // Two devices plugged since the last read: ivshmem in 5, a transitional virtio-blk in 9.
    space.add(5, IVSHMEM.0, IVSHMEM.1, &[FakeBar::Mem32(256)]);
    space.add(9, VIRTIO_VENDOR, 0x1001, &[FakeBar::Io(64)]);
    assert_eq!(hotplugged_blk(&root, (1 << 5) | (1 << 9)), Some(df(9)));
    assert_eq!(hotplugged_blk(&root, 1 << 5), None, "ivshmem is not a disk");
    space.remove(9);
    assert_eq!(hotplugged_blk(&root, 1 << 9), None, "gone again");
}
