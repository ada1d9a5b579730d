//! The layout computed from the region length, and header validation on attach.

use super::*;

#[test]
fn layout_of_the_4mib_bar() {
    let l = RingLayout::new(MIB4).unwrap();
    assert_eq!(l.entries(), MAX_SLOTS);
    assert_eq!(l.slot_count(), 256);
    assert_eq!(l.sq_offset(), 0x1000);
    assert_eq!(l.cq_offset(), 0x3000);
    assert_eq!(l.slots_offset(), 0x4000);
    assert_eq!(l.slot_offset(255), Some(0x4000 + 255 * 4096));
    assert_eq!(l.slot_offset(256), None);
    assert!(l.slot_offset(255).unwrap() + SLOT_SIZE <= MIB4);
}

#[test]
fn layout_limits() {
    assert_eq!(MIN_REGION_LEN, 0x42000);
    let min = RingLayout::new(MIN_REGION_LEN).unwrap();
    assert_eq!(min.slot_count(), 64);
    assert_eq!(min.cq_offset(), 0x1800);
    assert_eq!(min.slots_offset(), 0x2000);
    assert_eq!(
        RingLayout::new(MIN_REGION_LEN - 4096),
        Err(RingError::RegionTooSmall {
            len: MIN_REGION_LEN - 4096
        })
    );
    assert_eq!(
        RingLayout::new(0),
        Err(RingError::BadRegionLength { len: 0 })
    );
    assert_eq!(
        RingLayout::new(MIB4 + 8),
        Err(RingError::BadRegionLength { len: MIB4 + 8 })
    );
    assert_eq!(
        RingLayout::new(2 << 30),
        Err(RingError::RegionTooLarge { len: 2 << 30 })
    );
    // Between the power-of-two steps the slot count rounds down.
    assert_eq!(RingLayout::new(1 << 20).unwrap().slot_count(), 128);
}

#[test]
fn attach_validates_the_header() {
    let buf = words(MIN_REGION_LEN);
    let region = SharedRegion::from_words(&buf);
    assert_eq!(attach(region), Err(RingError::NotFormatted));
    let layout = format(region).unwrap();
    assert_eq!(attach(region), Ok(layout));

    region.write_u64(offsets::MAGIC, 0x1234).unwrap();
    assert_eq!(attach(region), Err(RingError::BadMagic { found: 0x1234 }));
    region.write_u64(offsets::MAGIC, RING_MAGIC).unwrap();

    region.write_u32(offsets::VERSION, 2).unwrap();
    assert_eq!(attach(region), Err(RingError::BadVersion { found: 2 }));
    region.write_u32(offsets::VERSION, 1).unwrap();

    for offset in [
        offsets::HEADER_LEN,
        offsets::ENTRIES,
        offsets::SLOTS,
        offsets::SQ_ENTRY_SIZE,
        offsets::CQ_ENTRY_SIZE,
        offsets::SLOT_SIZE,
        offsets::SQ_OFFSET,
        offsets::CQ_OFFSET,
        offsets::SLOTS_OFFSET,
    ] {
        let good = region.read_u32(offset).unwrap();
        region.write_u32(offset, good ^ 0x10).unwrap();
        assert_eq!(attach(region), Err(RingError::HeaderMismatch { offset }));
        region.write_u32(offset, good).unwrap();
    }
    assert_eq!(attach(region), Ok(layout));
}

#[test]
fn attach_rejects_a_region_of_another_length() {
    // Formatted as 4 MiB, but this side maps only 2 MiB of it.
    let buf = words(MIB4);
    format(SharedRegion::from_words(&buf)).unwrap();
    let half = SharedRegion::from_words(&buf[..buf.len() / 2]);
    assert!(matches!(
        attach(half),
        Err(RingError::HeaderMismatch { .. })
    ));
}

#[test]
fn from_raw_checks_alignment() {
    let buf = words(4096);
    let base = buf.as_ptr() as *mut u8;
    // SAFETY: the pointer is into `buf`, which outlives the region, and is misaligned on purpose.
    let misaligned = unsafe { SharedRegion::from_raw(base.wrapping_add(4), 4096) };
    assert_eq!(misaligned.unwrap_err(), RingError::RegionMisaligned);
    // SAFETY: null is rejected before any access.
    let null = unsafe { SharedRegion::from_raw(std::ptr::null_mut(), 4096) };
    assert_eq!(null.unwrap_err(), RingError::RegionMisaligned);
    // SAFETY: `buf` is 4096 bytes of atomics that outlive the region.
    let ok = unsafe { SharedRegion::from_raw(base, 4096) }.unwrap();
    assert_eq!(ok.len(), 4096);
    assert_eq!(
        ok.read_u32(4094),
        Err(RingError::OutOfBounds { offset: 4094 })
    );
    assert_eq!(
        ok.read_u64(4096),
        Err(RingError::OutOfBounds { offset: 4096 })
    );
    assert_eq!(
        ok.read_u32(usize::MAX - 3),
        Err(RingError::OutOfBounds {
            offset: usize::MAX - 3
        })
    );
}
