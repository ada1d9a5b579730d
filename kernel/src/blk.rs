//! Port 1: a virtio-blk device driven through virtio-drivers' PCI transport and `VirtQueue`, with
//! up to [`MAX_INFLIGHT`] requests outstanding (virtio 1.2 §5.2, block device).
//!
//! virtio-drivers' own `VirtIOBlk` caps its queue at 16 entries, too few for queue depth 32 with
//! three descriptors per request, so this driver owns a 256-entry queue and one request slot
//! (header and status byte in a DMA page) per outstanding request. Data buffers belong to the
//! caller (the resource stack), which keeps them alive until the request completes.

use crate::hal::BatonHal;
use crate::memory::alloc_zeroed;
use virtio_drivers::device::common::Feature;
use virtio_drivers::queue::VirtQueue;
use virtio_drivers::transport::Transport;
use virtio_drivers::transport::pci::PciTransport;

/// Descriptors in the request queue.
const QUEUE_SIZE: usize = 256;
/// Requests outstanding at once (three descriptors each).
pub const MAX_INFLIGHT: usize = 64;
/// Bytes per request: one 4 KiB block.
pub const BLOCK_BYTES: usize = 4096;
/// 512-byte sectors per block.
pub const SECTORS_PER_BLOCK: u64 = 8;

const REQ_IN: u32 = 0;
const REQ_OUT: u32 = 1;
const REQ_FLUSH: u32 = 4;

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

/// Errors of the block port (reported through `Debug` in panic messages).
#[derive(Debug)]
#[allow(dead_code)]
pub enum BlkError {
    /// The queue refused the request or the device misbehaved.
    Virtio(virtio_drivers::Error),
    /// No DMA memory left for request slots.
    OutOfMemory,
    /// The request slot is out of range or busy.
    BadSlot,
    /// The LBA is beyond the disk.
    OutOfRange,
}

#[repr(C)]
struct Header {
    kind: u32,
    reserved: u32,
    sector: u64,
}

/// One outstanding request's bookkeeping.
struct Slot {
    /// Header (16 bytes) at offset 0, status byte at offset 16, of one DMA page.
    meta: *mut u8,
    /// The caller's data buffer ([`BLOCK_BYTES`], DMA-able) while a request is outstanding.
    data: *mut u8,
    /// Queue token while the request is outstanding.
    token: Option<u16>,
    op: Op,
}

/// A virtio-blk device in use as port 1.
pub struct BlkDevice {
    transport: PciTransport,
    queue: VirtQueue<BatonHal, QUEUE_SIZE>,
    capacity_sectors: u64,
    slots: [Slot; MAX_INFLIGHT],
    /// Queue token → slot index.
    by_token: [u8; QUEUE_SIZE],
    inflight: usize,
}

impl BlkDevice {
    /// Initialises the device (virtio 1.2 §3.1.1) and allocates the request slots.
    pub fn new(mut transport: PciTransport) -> Result<Self, BlkError> {
        transport.begin_init(Feature::VERSION_1);
        let capacity_sectors = transport
            .read_consistent(|| {
                let lo: u32 = transport.read_config_space(0)?;
                let hi: u32 = transport.read_config_space(4)?;
                Ok(u64::from(lo) | (u64::from(hi) << 32))
            })
            .map_err(BlkError::Virtio)?;
        let queue = VirtQueue::new(&mut transport, 0, false, false).map_err(BlkError::Virtio)?;
        transport.finish_init();
        let mut slots: [Slot; MAX_INFLIGHT] = core::array::from_fn(|_| Slot {
            meta: core::ptr::null_mut(),
            data: core::ptr::null_mut(),
            token: None,
            op: Op::Read,
        });
        for slot in &mut slots {
            slot.meta = alloc_zeroed(1).ok_or(BlkError::OutOfMemory)? as *mut u8;
        }
        Ok(BlkDevice {
            transport,
            queue,
            capacity_sectors,
            slots,
            by_token: [0; QUEUE_SIZE],
            inflight: 0,
        })
    }

    /// Disk size in 4 KiB blocks.
    pub fn capacity_blocks(&self) -> u64 {
        self.capacity_sectors / SECTORS_PER_BLOCK
    }

    /// Starts `op` on 4 KiB block `lba` in request slot `slot`, with `data` as the block buffer.
    ///
    /// # Safety
    /// `data` must point to [`BLOCK_BYTES`] bytes of identity-mapped memory that stay valid and
    /// untouched by the caller until [`poll`](Self::poll) returns this slot.
    pub unsafe fn submit(
        &mut self,
        slot: usize,
        op: Op,
        lba: u64,
        data: *mut u8,
    ) -> Result<(), BlkError> {
        let s = self.slots.get_mut(slot).ok_or(BlkError::BadSlot)?;
        if s.token.is_some() {
            return Err(BlkError::BadSlot);
        }
        let sector = lba
            .checked_mul(SECTORS_PER_BLOCK)
            .ok_or(BlkError::OutOfRange)?;
        if op != Op::Flush && sector + SECTORS_PER_BLOCK > self.capacity_sectors {
            return Err(BlkError::OutOfRange);
        }
        let header = Header {
            kind: match op {
                Op::Read => REQ_IN,
                Op::Write => REQ_OUT,
                Op::Flush => REQ_FLUSH,
            },
            reserved: 0,
            sector: if op == Op::Flush { 0 } else { sector },
        };
        s.data = data;
        // SAFETY: `meta` is this slot's DMA page, not in use by the device (no token).
        unsafe {
            (s.meta as *mut Header).write_volatile(header);
            s.meta.add(16).write_volatile(0xff);
        }
        let (hdr, data, status) = slot_buffers(s);
        // SAFETY: the buffers are this slot's DMA pages; they stay allocated and untouched by the
        // driver until `poll` pops the token and passes the same buffers back.
        let token = unsafe {
            match op {
                Op::Write => self.queue.add(&[hdr, data], &mut [status]),
                Op::Read => self.queue.add(&[hdr], &mut [data, status]),
                Op::Flush => self.queue.add(&[hdr], &mut [status]),
            }
        }
        .map_err(BlkError::Virtio)?;
        s.token = Some(token);
        s.op = op;
        self.by_token[usize::from(token)] = slot as u8;
        self.inflight += 1;
        if self.queue.should_notify() {
            self.transport.notify(0);
        }
        Ok(())
    }

    /// Takes one completed request, if any: `(slot, status)`.
    pub fn poll(&mut self) -> Option<(usize, Status)> {
        let token = self.queue.peek_used()?;
        let slot = usize::from(self.by_token[usize::from(token)]);
        let s = &mut self.slots[slot];
        if s.token != Some(token) {
            // The device returned a token we did not issue: nothing to pair it with.
            log::error!("virtio-blk: used ring returned unknown token {token}");
            return None;
        }
        let op = s.op;
        let (hdr, data, status) = slot_buffers(s);
        // SAFETY: the same buffers that were passed to `add` for this token.
        let popped = unsafe {
            match op {
                Op::Write => self.queue.pop_used(token, &[hdr, data], &mut [status]),
                Op::Read => self.queue.pop_used(token, &[hdr], &mut [data, status]),
                Op::Flush => self.queue.pop_used(token, &[hdr], &mut [status]),
            }
        };
        s.token = None;
        self.inflight -= 1;
        // SAFETY: the device has finished with the slot; the status byte is at offset 16 of `meta`.
        let status_byte = unsafe { s.meta.add(16).read_volatile() };
        let status = match (popped, status_byte) {
            (Err(e), _) => {
                log::error!("virtio-blk: pop_used failed: {e:?}");
                Status::DriverError
            }
            (Ok(_), 0) => Status::Ok,
            (Ok(_), 1) => Status::IoError,
            (Ok(_), 2) => Status::Unsupported,
            (Ok(_), _) => Status::DriverError,
        };
        Some((slot, status))
    }

    /// Quiesces the device and gives it up: a virtio reset (virtio 1.2 §2.4: the device stops
    /// using the queue; virtio-drivers' `PciTransport` resets on drop and waits until the status
    /// reads back 0), then the queue memory and request slots are freed. Only valid with nothing
    /// outstanding, which the redirector's drain guarantees.
    pub fn release(self) {
        debug_assert_eq!(self.inflight, 0);
        let metas: heapless::Vec<u64, MAX_INFLIGHT> =
            self.slots.iter().map(|s| s.meta as u64).collect();
        drop(self);
        for meta in metas {
            crate::memory::free(meta, 1);
        }
    }
}

/// The three buffers of a slot as the slices the queue wants.
fn slot_buffers<'a>(s: &Slot) -> (&'a [u8], &'a mut [u8], &'a mut [u8]) {
    // SAFETY: `meta` is the slot's DMA page for the device's lifetime (never freed); `data` is the
    // caller's buffer, valid until the request completes (`submit`'s contract); header, status and
    // data do not overlap. The slices are only handed to the queue.
    unsafe {
        (
            core::slice::from_raw_parts(s.meta, 16),
            core::slice::from_raw_parts_mut(s.data, BLOCK_BYTES),
            core::slice::from_raw_parts_mut(s.meta.add(16), 1),
        )
    }
}
