//! The [`virtio_drivers::Hal`] of the guest: DMA memory from the frame allocator, identity mapping.

use core::ptr::NonNull;
use virtio_drivers::{BufferDirection, Hal, PhysAddr};

/// Platform hooks for virtio-drivers.
pub struct BatonHal;

// SAFETY: `dma_alloc` hands out zeroed, page-aligned, identity-mapped frames owned by nobody else
// until `dma_dealloc`; `share` returns the identity physical address of memory the caller keeps
// alive; there is no IOMMU or bounce buffering, so `unshare` has nothing to copy back.
unsafe impl Hal for BatonHal {
    fn dma_alloc(pages: usize, _direction: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        let Some(paddr) = super::memory::alloc_zeroed(pages) else {
            panic!("out of DMA memory ({pages} pages)");
        };
        let Some(vaddr) = NonNull::new(paddr as *mut u8) else {
            panic!("frame allocator returned address 0");
        };
        (paddr, vaddr)
    }

    unsafe fn dma_dealloc(paddr: PhysAddr, _vaddr: NonNull<u8>, pages: usize) -> i32 {
        super::memory::free(paddr, pages);
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
