//! The redirector's ports, hardware-independent: port 1 is any [`BlockPort`] (in the guest the
//! virtio-blk driver of [`blk`]), port 2 is `baton_core::ring::RingClient` over the shared-memory
//! ring ([`ring`] holds the stack's glue to it). [`nic`] is a NIC in the same shape (issue 11).
//!
//! Everything here builds for the host and is unit-tested there against fakes (`crate::fakes`):
//! a virtio transport that plays the device, and a DMA `Hal` over the host allocator.

pub mod blk;
pub mod dma;
pub mod nic;
pub mod ring;

/// Bytes per request: one 4 KiB block.
pub const BLOCK_BYTES: usize = 4096;
/// 512-byte sectors per block.
pub const SECTORS_PER_BLOCK: u64 = 8;
/// Requests outstanding at once at one port (and request buffers of the resource stack).
pub const MAX_INFLIGHT: usize = 64;

/// A block request kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Device to memory.
    Read,
    /// Memory to device.
    Write,
    /// Make earlier writes durable.
    Flush,
}

/// How a request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Done.
    Ok,
    /// VIRTIO_BLK_S_IOERR.
    IoError,
    /// VIRTIO_BLK_S_UNSUPP.
    Unsupported,
    /// The driver could not complete the request (queue error or unknown status byte).
    DriverError,
}

/// Errors of a block port.
#[derive(Debug, thiserror::Error)]
pub enum BlkError {
    /// The queue refused the request or the device misbehaved.
    #[error("virtio: {0}")]
    Virtio(virtio_drivers::Error),
    /// The request slot is out of range or busy.
    #[error("request slot out of range or busy")]
    BadSlot,
    /// The LBA is beyond the disk.
    #[error("block beyond the disk")]
    OutOfRange,
}

/// A block device that takes up to [`MAX_INFLIGHT`] requests at once, each in a numbered request
/// slot, and reports their completions by polling (claim 1's "first port").
pub trait BlockPort {
    /// Disk size in 4 KiB blocks.
    fn capacity_blocks(&self) -> u64;

    /// Starts `op` on 4 KiB block `lba` in request slot `slot` (`0..MAX_INFLIGHT`), with `data`
    /// as the block buffer. Errors: [`BlkError::BadSlot`] (slot busy or out of range),
    /// [`BlkError::OutOfRange`] (beyond the disk), [`BlkError::Virtio`] (queue refused it).
    ///
    /// # Safety
    /// `data` must point to [`BLOCK_BYTES`] bytes of DMA-able memory that stay valid and untouched
    /// by the caller until [`poll`](Self::poll) returns this slot.
    unsafe fn submit(
        &mut self,
        slot: usize,
        op: Op,
        lba: u64,
        data: *mut u8,
    ) -> Result<(), BlkError>;

    /// Takes one completed request, if any: `(slot, status)`.
    fn poll(&mut self) -> Option<(usize, Status)>;

    /// Quiesces the device and gives it up (no DMA after this returns). Only valid with nothing
    /// outstanding, which the redirector's drain guarantees.
    fn release(self);
}
