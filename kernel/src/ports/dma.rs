//! DMA memory owned by a value: [`DmaPages`] takes pages from [`Hal::dma_alloc`] and gives them
//! back with [`Hal::dma_dealloc`] when dropped, so no path (error, release, drop of a device)
//! frees a request page by hand or leaks one.

use core::marker::PhantomData;
use core::ptr::NonNull;
use virtio_drivers::{BufferDirection, Hal, PAGE_SIZE, PhysAddr};

/// `pages` contiguous, zeroed pages of DMA memory from `H`, freed on drop.
pub struct DmaPages<H: Hal> {
    paddr: PhysAddr,
    vaddr: NonNull<u8>,
    pages: usize,
    _hal: PhantomData<H>,
}

impl<H: Hal> DmaPages<H> {
    /// Allocates `pages` (at least 1) zeroed pages for transfers in both directions. `H` decides
    /// what happens when memory is exhausted (the guest's Hal panics).
    pub fn new(pages: usize) -> Self {
        let pages = pages.max(1);
        let (paddr, vaddr) = H::dma_alloc(pages, BufferDirection::Both);
        DmaPages {
            paddr,
            vaddr,
            pages,
            _hal: PhantomData,
        }
    }

    /// Physical address of the first byte, as the device sees it.
    pub fn paddr(&self) -> PhysAddr {
        self.paddr
    }

    /// Pointer to the first byte, valid for [`len`](Self::len) bytes while `self` lives.
    pub fn as_ptr(&self) -> *mut u8 {
        self.vaddr.as_ptr()
    }

    /// Size in bytes.
    pub fn len(&self) -> usize {
        self.pages * PAGE_SIZE
    }

    /// Always `false`: at least one page is allocated.
    pub fn is_empty(&self) -> bool {
        false
    }
}

impl<H: Hal> Drop for DmaPages<H> {
    fn drop(&mut self) {
        // SAFETY: these exact values came from `H::dma_alloc` in `new` and are freed only here,
        // once; whoever lent the memory to a device got it back before dropping its owner.
        let err = unsafe { H::dma_dealloc(self.paddr, self.vaddr, self.pages) };
        if err != 0 {
            log::error!(
                "dma: freeing {} pages at {:#x} failed ({err})",
                self.pages,
                self.paddr
            );
        }
    }
}
