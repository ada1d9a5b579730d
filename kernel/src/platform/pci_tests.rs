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
    assert_eq!(
        space.word(4, 0x04) & 0xffff,
        0,
        "decoding stays off until enable"
    );
    enable(&mut root, df(4));
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
    let window = (0x1000, 0x10000);
    let taken = [(false, 0x1000, 0x3000), (true, 0x3000, 0x4000)];
    let mut next = 0x1000;
    assert_eq!(
        place(&mut next, window, 0x1000, false, &taken),
        Some(0x3000)
    );
    assert_eq!(next, 0x4000);
    let mut next = 0x3000;
    assert_eq!(place(&mut next, window, 0x100, false, &taken), Some(0x3000));
    assert_eq!(next, 0x3100);
    let mut next = u64::MAX - 4;
    assert_eq!(
        place(&mut next, (u64::MAX - 8, u64::MAX), 0x1000, false, &[]),
        None
    );
}

#[test]
fn place_wraps_to_the_window_start_once_the_end_is_reached() {
    let window = (0x1000, 0x10000);
    let taken = [(false, 0x1000, 0x3000)];
    // No room after 0xf000 for 0x2000 bytes: the search starts over, clear of what is taken.
    let mut next = 0xf000;
    assert_eq!(
        place(&mut next, window, 0x2000, false, &taken),
        Some(0x4000)
    );
    assert_eq!(next, 0x6000);
    // Taken everywhere but too small gaps: no room at all.
    let taken = [(false, 0x1000, 0x8000), (false, 0x9000, 0x10000)];
    let mut next = 0x9000;
    assert_eq!(place(&mut next, window, 0x2000, false, &taken), None);
    assert_eq!(next, 0x9000, "unchanged on failure");
    assert_eq!(
        place(&mut next, window, 0x1000, false, &taken),
        Some(0x8000)
    );
}

/// Every BAR of the functions in `slots` that is present: `(is_io, address, size)`.
fn bars_of(root: &mut PciRoot<FakeConfigSpace>, slots: &[u8]) -> Vec<(bool, u64, u64)> {
    let mut out = Vec::new();
    for &slot in slots {
        let Ok(bars) = root.bars(df(slot)) else {
            continue;
        };
        for bar in bars.iter().flatten() {
            out.push(match *bar {
                BarInfo::IO { address, size } => (true, u64::from(address), u64::from(size)),
                BarInfo::Memory { address, size, .. } => (false, address, size),
            });
        }
    }
    out
}

/// Every BAR is placed inside its window and clear of every other one of its kind.
fn assert_disjoint_in_windows(bars: &[(bool, u64, u64)]) {
    for (i, &(io, addr, size)) in bars.iter().enumerate() {
        let (start, end) = if io { IO_WINDOW } else { MMIO_WINDOW };
        assert!(addr >= start && addr + size <= end, "{bars:x?}");
        assert_eq!(addr % size, 0, "{bars:x?}");
        for &(io2, addr2, size2) in &bars[i + 1..] {
            assert!(
                io != io2 || !overlaps((addr, size), (addr2, size2)),
                "{bars:x?}"
            );
        }
    }
}

#[test]
fn a_thousand_plug_and_eject_cycles_reuse_the_windows() {
    let space = FakeConfigSpace::new();
    // Firmware's device at the start of the window stays through every cycle.
    space.add(
        2,
        0x8086,
        0x100e,
        &[FakeBar::Mem32(128 * 1024), FakeBar::Io(64)],
    );
    space.set_word(2, 0x10, MMIO_WINDOW.0 as u32);
    space.set_word(2, 0x14, IO_WINDOW.0 as u32 | 1);
    let mut root = PciRoot::new(space.clone());
    let mut alloc = BarAllocator::new();
    let ivshmem = [FakeBar::Mem32(256), FakeBar::None, FakeBar::Mem64(4 << 20)];
    for cycle in 0..1_000u32 {
        // Each cycle one guest's view: the disk arrives, the ring arrives, then both leave, in
        // an order that varies, and sometimes the disk stays for the next cycle.
        if space.word(4, 0) == u32::MAX {
            add_blk(&space, 4);
            setup_device(&mut root, &mut alloc, df(4)).unwrap();
        }
        space.add(6, IVSHMEM.0, IVSHMEM.1, &ivshmem);
        let r = setup_device(&mut root, &mut alloc, df(6));
        assert!(r.is_ok(), "cycle {cycle}: {r:?}");
        assert_disjoint_in_windows(&bars_of(&mut root, &[2, 4, 6]));
        if cycle % 3 == 0 {
            space.remove(4);
        }
        space.remove(6);
    }
    assert_eq!(
        bar(&mut root, 2, 0),
        (MMIO_WINDOW.0, 128 * 1024),
        "left alone"
    );
}

#[test]
fn two_bars_of_one_device_never_overlap_after_a_wrap() {
    let space = FakeConfigSpace::new();
    // 256 MiB BARs already at 0xd000_0000 and 0xe000_0000.
    space.add(
        2,
        0x8086,
        0x100e,
        &[FakeBar::Mem32(1 << 28), FakeBar::Mem32(1 << 28)],
    );
    space.set_word(2, 0x10, 0xd000_0000);
    space.set_word(2, 0x14, 0xe000_0000);
    let mut root = PciRoot::new(space.clone());
    // Earlier devices took the window up to 0xf800_0000 (and were ejected since).
    let mut alloc = BarAllocator::new();
    alloc.next_mmio = 0xf800_0000;
    // BAR0 (128 MiB) does not fit before the end and wraps to 0xc000_0000; BAR2 (256 MiB) has
    // no room after BAR0 either, and wrapping must not put it on BAR0.
    let bars = [
        FakeBar::Mem32(1 << 27),
        FakeBar::None,
        FakeBar::Mem64(1 << 28),
    ];
    space.add(5, VIRTIO_VENDOR, 0x1042, &bars);
    let r = setup_device(&mut root, &mut alloc, df(5));
    assert!(matches!(r, Err(PciSetupError::WindowFull)), "{r:?}");
    assert_eq!(bar(&mut root, 5, 0), (0xc000_0000, 1 << 27));
    assert_eq!(bar(&mut root, 5, 2).0, 0, "BAR2 stays unassigned");
    // With smaller BARs after it, the wrap places each clear of the others.
    space.remove(5);
    alloc.next_mmio = 0xfdff_f000;
    let bars = [
        FakeBar::Mem32(8192),
        FakeBar::Mem32(4096),
        FakeBar::Mem64(16 * 1024),
        FakeBar::None,
        FakeBar::Mem32(4096),
    ];
    space.add(5, VIRTIO_VENDOR, 0x1042, &bars);
    setup_device(&mut root, &mut alloc, df(5)).unwrap();
    let placed = bars_of(&mut root, &[2, 5]);
    assert_eq!(placed.len(), 6);
    assert_disjoint_in_windows(&placed);
    assert_eq!(bar(&mut root, 5, 0).0, MMIO_WINDOW.0, "BAR0 wrapped");
}

#[test]
fn a_bus_with_more_bars_than_tracked_is_refused() {
    let space = FakeConfigSpace::new();
    let six = [FakeBar::Mem32(4096); 6];
    for slot in 0..32u8 {
        space.add(slot, 0x8086, 0x100e, &six);
        for i in 0..6u8 {
            let addr = 0x8000_0000 + (u32::from(slot) * 6 + u32::from(i)) * 4096;
            space.set_word(slot, 0x10 + 4 * i, addr);
        }
    }
    space.add(31, VIRTIO_VENDOR, 0x1042, &[FakeBar::Mem32(4096)]);
    let mut root = PciRoot::new(space.clone());
    let r = setup_device(&mut root, &mut BarAllocator::new(), df(31));
    assert!(matches!(r, Err(PciSetupError::TooManyBars)), "{r:?}");
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

#[test]
fn setup_returns_the_placed_bars() {
    let space = FakeConfigSpace::new();
    add_blk(&space, 4);
    let mut root = PciRoot::new(space.clone());
    let placed = setup_device(&mut root, &mut BarAllocator::new(), df(4)).unwrap();
    let (addr, size) = bar(&mut root, 4, 4);
    assert_eq!(placed[4], Some((false, addr, addr + size)));
    assert_eq!(placed[0].map(|r| r.0), Some(true));
    assert_eq!(placed[2], None);
}

#[test]
fn after_learning_the_bus_a_hot_plug_touches_only_its_own_slot() {
    let space = FakeConfigSpace::new();
    space.add(2, 0x8086, 0x100e, &[FakeBar::Mem32(128 * 1024)]);
    space.set_word(2, 0x10, MMIO_WINDOW.0 as u32);
    add_blk(&space, 4);
    let mut root = PciRoot::new(space.clone());
    let mut alloc = BarAllocator::new();
    learn_bus(&mut root, &mut alloc).unwrap();
    setup_device(&mut root, &mut alloc, df(4)).unwrap();
    enable(&mut root, df(4));
    let before = space.writes();
    let ivshmem = [FakeBar::Mem32(256), FakeBar::None, FakeBar::Mem64(4 << 20)];
    space.add(6, IVSHMEM.0, IVSHMEM.1, &ivshmem);
    setup_device(&mut root, &mut alloc, df(6)).unwrap();
    let slots: Vec<u8> = space.writes()[before.len()..].iter().map(|w| w.0).collect();
    assert!(!slots.is_empty());
    assert!(
        slots.iter().all(|&s| s == 6),
        "config writes went to {slots:?}"
    );
    assert_disjoint_in_windows(&bars_of(&mut root, &[2, 4, 6]));
}

#[test]
fn a_slot_set_up_again_frees_what_its_ejected_device_had() {
    let space = FakeConfigSpace::new();
    let mut root = PciRoot::new(space.clone());
    let mut alloc = BarAllocator::new();
    learn_bus(&mut root, &mut alloc).unwrap();
    // A BAR as large as half the window, placed again and again in the same slot: without
    // forgetting the old one the third placement would not fit.
    let half = (MMIO_WINDOW.1 - MMIO_WINDOW.0).next_power_of_two() / 4;
    for _ in 0..4 {
        space.add(6, IVSHMEM.0, IVSHMEM.1, &[FakeBar::Mem64(half)]);
        setup_device(&mut root, &mut alloc, df(6)).unwrap();
        space.remove(6);
    }
}
