//! Port 1: a virtio-blk device driven through any virtio-drivers [`Transport`] and a `VirtQueue`,
//! with up to [`MAX_INFLIGHT`] requests outstanding (virtio 1.2 §5.2, block device; §2.7 split
//! virtqueues).
//!
//! virtio-drivers' own `VirtIOBlk` caps its queue at 16 entries, too few for queue depth 32 with
//! three descriptors per request, so this driver owns a 256-entry queue and one request slot
//! (header and status byte in a DMA page, [`DmaPages`]) per outstanding request. Data buffers
//! belong to the caller (the resource stack), which keeps them alive until the request completes.
//!
//! Generic over the platform's [`Hal`] and the [`Transport`]: the guest uses its identity-mapping
//! Hal and virtio-drivers' `PciTransport`; the host tests use `crate::fakes`, whose transport plays
//! the device.

use super::dma::DmaPages;
use super::{BLOCK_BYTES, BlkError, BlockPort, MAX_INFLIGHT, Op, SECTORS_PER_BLOCK, Status};
use virtio_drivers::Hal;
use virtio_drivers::device::common::Feature;
use virtio_drivers::queue::VirtQueue;
use virtio_drivers::transport::{DeviceStatus, Transport};

/// Descriptors in the request queue.
pub const QUEUE_SIZE: usize = 256;

const REQ_IN: u32 = 0;
const REQ_OUT: u32 = 1;
const REQ_FLUSH: u32 = 4;
/// Offset of the status byte in a slot's DMA page (after the 16-byte header).
const STATUS_OFFSET: usize = 16;

#[repr(C)]
struct Header {
    kind: u32,
    reserved: u32,
    sector: u64,
}

/// One outstanding request's bookkeeping.
struct Slot<H: Hal> {
    /// Header (16 bytes) at offset 0, status byte at [`STATUS_OFFSET`].
    meta: DmaPages<H>,
    /// The caller's data buffer ([`BLOCK_BYTES`], DMA-able) while a request is outstanding.
    data: *mut u8,
    /// Queue token while the request is outstanding.
    token: Option<u16>,
    op: Op,
}

/// A virtio-blk device in use as port 1.
///
/// Field order is drop order: the transport (a `PciTransport` resets the device when dropped)
/// goes before the queue memory and the request pages.
pub struct BlkDevice<H: Hal, T: Transport> {
    transport: T,
    queue: VirtQueue<H, QUEUE_SIZE>,
    capacity_sectors: u64,
    slots: [Slot<H>; MAX_INFLIGHT],
    /// Queue token → slot index.
    by_token: [u8; QUEUE_SIZE],
    inflight: usize,
}

impl<H: Hal, T: Transport> BlkDevice<H, T> {
    /// Initialises the device (virtio 1.2 §3.1.1), reads its capacity and allocates the queue and
    /// the request slots. Errors: [`BlkError::Virtio`] when the transport or the queue set-up fails.
    pub fn new(mut transport: T) -> Result<Self, BlkError> {
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
        let slots = core::array::from_fn(|_| Slot {
            meta: DmaPages::new(1),
            data: core::ptr::null_mut(),
            token: None,
            op: Op::Read,
        });
        Ok(BlkDevice {
            transport,
            queue,
            capacity_sectors,
            slots,
            by_token: [0; QUEUE_SIZE],
            inflight: 0,
        })
    }

    /// Requests outstanding at the device.
    pub fn inflight(&self) -> usize {
        self.inflight
    }
}

impl<H: Hal, T: Transport> BlockPort for BlkDevice<H, T> {
    fn capacity_blocks(&self) -> u64 {
        self.capacity_sectors / SECTORS_PER_BLOCK
    }

    unsafe fn submit(
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
        if op != Op::Flush
            && sector
                .checked_add(SECTORS_PER_BLOCK)
                .is_none_or(|end| end > self.capacity_sectors)
        {
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
        let meta = s.meta.as_ptr();
        // SAFETY: `meta` is this slot's DMA page, not in use by the device (no token); the header
        // and the status byte fit in it.
        unsafe {
            (meta as *mut Header).write_volatile(header);
            meta.add(STATUS_OFFSET).write_volatile(0xff);
        }
        let (hdr, data, status) = slot_buffers(s);
        // SAFETY: the buffers are this slot's DMA page and the caller's buffer; they stay
        // allocated and untouched by the driver until `poll` pops the token and passes the same
        // buffers back (`submit`'s contract for `data`, ownership of `meta` for the rest).
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

    fn poll(&mut self) -> Option<(usize, Status)> {
        let token = self.queue.peek_used()?;
        let slot = usize::from(*self.by_token.get(usize::from(token))?);
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
        // SAFETY: the device has finished with the slot; the status byte is inside `meta`.
        let status_byte = unsafe { s.meta.as_ptr().add(STATUS_OFFSET).read_volatile() };
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

    /// A virtio reset (virtio 1.2 §2.4: writing 0 to the status stops the device using the
    /// queue; a `PciTransport` also resets on drop and waits until the status reads back 0),
    /// then the queue memory and the request pages are freed by their owners' drops.
    fn release(mut self) {
        debug_assert_eq!(self.inflight, 0);
        self.transport.set_status(DeviceStatus::empty());
    }
}

/// The three buffers of a slot as the slices the queue wants.
fn slot_buffers<'a, H: Hal>(s: &Slot<H>) -> (&'a [u8], &'a mut [u8], &'a mut [u8]) {
    let meta = s.meta.as_ptr();
    // SAFETY: `meta` is the slot's DMA page, owned by the device until it is dropped after the
    // queue; `data` is the caller's buffer, valid until the request completes (`submit`'s
    // contract); header, status and data do not overlap. The slices are only handed to the queue.
    unsafe {
        (
            core::slice::from_raw_parts(meta, STATUS_OFFSET),
            core::slice::from_raw_parts_mut(s.data, BLOCK_BYTES),
            core::slice::from_raw_parts_mut(meta.add(STATUS_OFFSET), 1),
        )
    }
}

#[cfg(test)]
#[path = "blk_tests.rs"]
mod tests;
