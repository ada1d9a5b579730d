//! A DMA `Hal` over the host allocator: page-aligned zeroed memory, physical address = host
//! address, so a fake device reads and writes the driver's buffers directly. Live allocations are
//! counted per thread (each test runs on its own thread) so tests can check that nothing leaks.

use core::ptr::NonNull;
use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::cell::Cell;
use virtio_drivers::{BufferDirection, Hal, PAGE_SIZE, PhysAddr};

thread_local! {
    static LIVE_PAGES: Cell<isize> = const { Cell::new(0) };
}

/// The host's DMA Hal.
pub struct FakeHal;

impl FakeHal {
    /// Pages allocated and not yet freed on this thread.
    pub fn live_pages() -> isize {
        LIVE_PAGES.with(Cell::get)
    }
}

fn layout(pages: usize) -> Layout {
    match Layout::from_size_align(pages * PAGE_SIZE, PAGE_SIZE) {
        Ok(l) => l,
        Err(e) => panic!("bad DMA layout for {pages} pages: {e}"),
    }
}

// SAFETY: `dma_alloc` returns zeroed, page-aligned memory owned by nobody else until
// `dma_dealloc`; physical addresses are host addresses, valid for as long as the memory is; there
// is no bounce buffering, so `share`/`unshare` copy nothing.
unsafe impl Hal for FakeHal {
    fn dma_alloc(pages: usize, _direction: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        // SAFETY: the layout has a non-zero size (callers ask for at least one page).
        let ptr = unsafe { alloc_zeroed(layout(pages)) };
        let Some(vaddr) = NonNull::new(ptr) else {
            panic!("host out of memory");
        };
        LIVE_PAGES.with(|n| n.set(n.get() + pages as isize));
        (ptr as PhysAddr, vaddr)
    }

    unsafe fn dma_dealloc(_paddr: PhysAddr, vaddr: NonNull<u8>, pages: usize) -> i32 {
        LIVE_PAGES.with(|n| n.set(n.get() - pages as isize));
        // SAFETY: `vaddr` came from `dma_alloc` with the same page count (the caller's contract).
        unsafe { dealloc(vaddr.as_ptr(), layout(pages)) };
        0
    }

    unsafe fn mmio_phys_to_virt(paddr: PhysAddr, _size: usize) -> NonNull<u8> {
        NonNull::new(paddr as *mut u8).unwrap_or(NonNull::dangling())
    }

    unsafe fn share(buffer: NonNull<[u8]>, _direction: BufferDirection) -> PhysAddr {
        buffer.as_ptr() as *mut u8 as PhysAddr
    }

    unsafe fn unshare(_paddr: PhysAddr, _buffer: NonNull<[u8]>, _direction: BufferDirection) {}
}
