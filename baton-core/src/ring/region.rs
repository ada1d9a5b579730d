//! [`SharedRegion`]: the shared bytes, accessed only atomically at aligned, bounds-checked
//! offsets (the first rule of the threat model in the [module docs](super)).

use core::marker::PhantomData;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use super::{REGION_ALIGN, RingError};

/// A byte region shared with another guest, accessed only atomically at checked offsets.
///
/// In the guest this wraps the ivshmem BAR2 mapping ([`SharedRegion::from_raw`]); host tests use a
/// `[AtomicU64]` buffer ([`SharedRegion::from_words`]). The same ring code runs on both.
#[derive(Clone, Copy, Debug)]
pub struct SharedRegion<'a> {
    base: NonNull<u8>,
    len: usize,
    _memory: PhantomData<&'a [AtomicU64]>,
}

// SAFETY: the region is memory that is shared between threads (and guests) by design, and every
// access this type makes is an atomic access at an aligned in-bounds offset, so handing copies of
// it to other threads cannot introduce data races.
unsafe impl Send for SharedRegion<'_> {}
// SAFETY: as for `Send`: `&SharedRegion` only offers atomic accesses.
unsafe impl Sync for SharedRegion<'_> {}

impl<'a> SharedRegion<'a> {
    /// A region over a buffer of atomic words (host tests, fuzzing).
    pub fn from_words(words: &'a [AtomicU64]) -> SharedRegion<'a> {
        SharedRegion {
            base: NonNull::from(words).cast::<u8>(),
            len: core::mem::size_of_val(words),
            _memory: PhantomData,
        }
    }

    /// A region over raw memory, e.g. the mapped ivshmem BAR2.
    ///
    /// Fails if `base` is null or not [`REGION_ALIGN`]-aligned.
    ///
    /// # Safety
    ///
    /// `base..base + len` must be mapped, readable and writable memory for all of `'a`, and within
    /// this address space it must only be accessed atomically (through this type or other atomics)
    /// while any copy of the returned region is in use. Other guests may write it at any time.
    pub unsafe fn from_raw(base: *mut u8, len: usize) -> Result<SharedRegion<'a>, RingError> {
        let base = NonNull::new(base).ok_or(RingError::RegionMisaligned)?;
        if !(base.as_ptr() as usize).is_multiple_of(REGION_ALIGN) {
            return Err(RingError::RegionMisaligned);
        }
        Ok(SharedRegion {
            base,
            len,
            _memory: PhantomData,
        })
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the region has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn check(&self, offset: usize, size: usize) -> Result<(), RingError> {
        let in_bounds = offset.is_multiple_of(size)
            && offset.checked_add(size).is_some_and(|end| end <= self.len);
        if in_bounds {
            Ok(())
        } else {
            Err(RingError::OutOfBounds { offset })
        }
    }

    fn atomic_u32(&self, offset: usize) -> Result<&'a AtomicU32, RingError> {
        self.check(offset, 4)?;
        // SAFETY: `check` proved `offset..offset + 4` lies inside the region and `offset` is a
        // multiple of 4; the base is 8-aligned, so the pointer is aligned for `AtomicU32`. The
        // memory is valid for `'a` (constructor contracts) and only accessed atomically, and
        // `AtomicU32` has the size and alignment of `u32` with no invalid bit patterns.
        Ok(unsafe { &*self.base.as_ptr().add(offset).cast::<AtomicU32>() })
    }

    pub(super) fn atomic_u64(&self, offset: usize) -> Result<&'a AtomicU64, RingError> {
        self.check(offset, 8)?;
        // SAFETY: as in `atomic_u32`, with 8-byte size and alignment (the base is 8-aligned).
        Ok(unsafe { &*self.base.as_ptr().add(offset).cast::<AtomicU64>() })
    }

    /// Reads the u32 at `offset` (relaxed).
    pub fn read_u32(&self, offset: usize) -> Result<u32, RingError> {
        Ok(self.atomic_u32(offset)?.load(Ordering::Relaxed))
    }

    /// Writes the u32 at `offset` (relaxed).
    pub fn write_u32(&self, offset: usize, value: u32) -> Result<(), RingError> {
        self.atomic_u32(offset)?.store(value, Ordering::Relaxed);
        Ok(())
    }

    /// Reads the u64 at `offset` (relaxed).
    pub fn read_u64(&self, offset: usize) -> Result<u64, RingError> {
        Ok(self.atomic_u64(offset)?.load(Ordering::Relaxed))
    }

    /// Writes the u64 at `offset` (relaxed).
    pub fn write_u64(&self, offset: usize, value: u64) -> Result<(), RingError> {
        self.atomic_u64(offset)?.store(value, Ordering::Relaxed);
        Ok(())
    }

    pub(super) fn load_u32(&self, offset: usize, order: Ordering) -> Result<u32, RingError> {
        Ok(self.atomic_u32(offset)?.load(order))
    }

    pub(super) fn store_u32(
        &self,
        offset: usize,
        value: u32,
        order: Ordering,
    ) -> Result<(), RingError> {
        self.atomic_u32(offset)?.store(value, order);
        Ok(())
    }

    /// Copies `buf.len()` bytes (a multiple of 8) out of the region at `offset` (8-aligned).
    pub(super) fn copy_out(&self, offset: usize, buf: &mut [u8]) -> Result<(), RingError> {
        if !buf.len().is_multiple_of(8) {
            return Err(RingError::BadLength {
                len: buf.len() as u64,
            });
        }
        let mut at = offset;
        for chunk in buf.chunks_exact_mut(8) {
            let word = self.atomic_u64(at)?.load(Ordering::Relaxed);
            chunk.copy_from_slice(&word.to_le_bytes());
            at = at
                .checked_add(8)
                .ok_or(RingError::OutOfBounds { offset: at })?;
        }
        Ok(())
    }

    /// Copies `data` (a multiple of 8 bytes) into the region at `offset` (8-aligned).
    pub(super) fn copy_in(&self, offset: usize, data: &[u8]) -> Result<(), RingError> {
        if !data.len().is_multiple_of(8) {
            return Err(RingError::BadLength {
                len: data.len() as u64,
            });
        }
        let mut at = offset;
        for chunk in data.chunks_exact(8) {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.atomic_u64(at)?
                .store(u64::from_le_bytes(word), Ordering::Relaxed);
            at = at
                .checked_add(8)
                .ok_or(RingError::OutOfBounds { offset: at })?;
        }
        Ok(())
    }
}
