//! Physical memory: a page-frame allocator over the usable RAM the PVH memory map reports.
//!
//! Everything is identity-mapped ([`super::boot`]), so a frame's physical address is also its virtual
//! address. Allocation is a bump pointer over the free ranges; freed runs go on a small list and are
//! reused for requests of the same size (the DMA pages of a released device, returned by their
//! owners' drops, are the only memory ever freed).

use spin::Mutex;

/// Page size.
pub const PAGE_SIZE: u64 = 4096;

unsafe extern "C" {
    static __kernel_start: u8;
    static __kernel_end: u8;
}

struct FrameAllocator {
    ranges: heapless::Vec<(u64, u64), 32>,
    freed: heapless::Vec<(u64, usize), 256>,
}

static FRAMES: Mutex<FrameAllocator> = Mutex::new(FrameAllocator {
    ranges: heapless::Vec::new(),
    freed: heapless::Vec::new(),
});

/// Takes the usable RAM ranges, minus the first MiB and the kernel image.
pub fn init(ram: &[(u64, u64)]) {
    let kernel_start = core::ptr::addr_of!(__kernel_start) as u64;
    let kernel_end = core::ptr::addr_of!(__kernel_end) as u64;
    let mut frames = FRAMES.lock();
    for &(start, end) in ram {
        // Keep below 4 GiB: only that much is mapped.
        let end = end.min(1 << 32);
        for (s, e) in [(start, end.min(kernel_start)), (start.max(kernel_end), end)] {
            let s = align_up(s.max(0x10_0000));
            let e = e & !(PAGE_SIZE - 1);
            if s < e {
                let _ = frames.ranges.push((s, e));
            }
        }
    }
}

/// Allocates `pages` contiguous zeroed frames; `None` when memory is exhausted.
pub fn alloc_zeroed(pages: usize) -> Option<u64> {
    let bytes = pages as u64 * PAGE_SIZE;
    let paddr = {
        let mut frames = FRAMES.lock();
        if let Some(i) = frames.freed.iter().position(|&(_, n)| n == pages) {
            frames.freed.swap_remove(i).0
        } else {
            let range = frames.ranges.iter_mut().find(|(s, e)| e - s >= bytes)?;
            let p = range.0;
            range.0 += bytes;
            p
        }
    };
    // SAFETY: the frames were free RAM, identity-mapped, and now belong to the caller alone.
    unsafe { core::ptr::write_bytes(paddr as *mut u8, 0, bytes as usize) };
    Some(paddr)
}

/// Returns frames from [`alloc_zeroed`]. If the free list is full they are leaked.
pub fn free(paddr: u64, pages: usize) {
    let _ = FRAMES.lock().freed.push((paddr, pages));
}

/// Free bytes left in the bump ranges.
pub fn free_bytes() -> u64 {
    FRAMES.lock().ranges.iter().map(|(s, e)| e - s).sum()
}

fn align_up(x: u64) -> u64 {
    (x + PAGE_SIZE - 1) & !(PAGE_SIZE - 1)
}
