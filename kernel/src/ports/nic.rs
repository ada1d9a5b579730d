//! A NIC as a port (issue 11): a virtio-net device (virtio 1.2 §5.1) behind the same shape as a
//! [`super::BlockPort`] — numbered request slots, buffers owned by the caller, completions by
//! polling — so that the NIC can later sit behind the redirector as the disk does. A transmit is a
//! request that completes once the device took the frame; a receive is a posted buffer that
//! completes with a frame.
//!
//! Every buffer is [`NIC_BUF_BYTES`] long and starts with room for the virtio-net header: the
//! frame itself starts at [`NicPort::frame_offset`], so nothing is copied on either path.
//!
//! [`VirtioNic`] owns its transport and both virtqueues, as the blk driver does (virtio-drivers'
//! raw net driver keeps the transport to itself, so it could not reset the device at release).
//! It negotiates `VIRTIO_F_VERSION_1` and `VIRTIO_NET_F_MAC` only: no offloads, no mergeable
//! receive buffers, so every received frame is one buffer behind a 12-byte header (§5.1.6).

use virtio_drivers::Hal;
use virtio_drivers::queue::VirtQueue;
use virtio_drivers::transport::{DeviceStatus, Transport};

/// Bytes of one NIC buffer: the virtio-net header and a 1514-byte Ethernet frame fit, and two
/// buffers share a 4 KiB page.
pub const NIC_BUF_BYTES: usize = 2048;
/// Receive buffers and transmit requests outstanding at once, each (the virtqueues' size).
pub const NIC_SLOTS: usize = 64;

/// A transmit or a receive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NicOp {
    /// Memory to the wire.
    Tx,
    /// The wire to memory.
    Rx,
}

/// One finished request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NicCompletion {
    /// Its slot (`0..NIC_SLOTS`, per op).
    pub slot: usize,
    /// Which queue it was on.
    pub op: NicOp,
    /// For a receive, the frame's length in bytes (it starts at the frame offset); for a
    /// transmit, 0. `None`: the device completed it with an error.
    pub len: Option<usize>,
}

/// Errors of a NIC port.
#[derive(Debug, thiserror::Error)]
pub enum NicError {
    /// The queue refused the request or the device misbehaved.
    #[error("virtio-net: {0}")]
    Virtio(virtio_drivers::Error),
    /// The slot is out of range or busy, or the frame does not fit a buffer.
    #[error("NIC slot out of range or busy, or frame too long")]
    BadSlot,
}

/// A NIC with up to [`NIC_SLOTS`] transmits and [`NIC_SLOTS`] receive buffers outstanding.
pub trait NicPort {
    /// Where a frame starts in its buffer (after the virtio-net header).
    fn frame_offset(&self) -> usize;
    /// The device's MAC address.
    fn mac(&self) -> [u8; 6];
    /// Starts transmitting the `len`-byte frame at [`frame_offset`](Self::frame_offset) of `buf`
    /// from transmit slot `slot`; the port writes the header in front of it. Errors:
    /// [`NicError::BadSlot`], [`NicError::Virtio`].
    ///
    /// # Safety
    /// `buf` must point to [`NIC_BUF_BYTES`] bytes of DMA-able memory that stay valid and
    /// untouched by the caller until [`poll`](Self::poll) returns this slot.
    unsafe fn submit_tx(&mut self, slot: usize, buf: *mut u8, len: usize) -> Result<(), NicError>;
    /// Posts `buf` as receive slot `slot`. Errors as [`submit_tx`](Self::submit_tx).
    ///
    /// # Safety
    /// As for [`submit_tx`](Self::submit_tx).
    unsafe fn submit_rx(&mut self, slot: usize, buf: *mut u8) -> Result<(), NicError>;
    /// Takes one finished request, transmits first.
    fn poll(&mut self) -> Option<NicCompletion>;
    /// Quiesces the device (virtio reset: no DMA after this returns) and gives it up.
    fn release(self);
}

/// `VIRTIO_NET_F_MAC` (§5.1.3): the device has a MAC address in its configuration space.
const F_MAC: u64 = 1 << 5;
/// `VIRTIO_F_VERSION_1` (§6): the modern header layout.
const F_VERSION_1: u64 = 1 << 32;
/// `struct virtio_net_hdr` with `num_buffers`, as a VERSION_1 device uses it (§5.1.6).
const HDR_LEN: usize = 12;
/// receiveq1 and transmitq1 (§5.1.2).
const RX_QUEUE: u16 = 0;
const TX_QUEUE: u16 = 1;

/// Per-slot bookkeeping of one queue: the buffer, its length and token while outstanding.
struct Slots {
    buf: [*mut u8; NIC_SLOTS],
    len: [usize; NIC_SLOTS],
    token: [Option<u16>; NIC_SLOTS],
}

impl Slots {
    const fn new() -> Self {
        Slots {
            buf: [core::ptr::null_mut(); NIC_SLOTS],
            len: [0; NIC_SLOTS],
            token: [None; NIC_SLOTS],
        }
    }

    fn by_token(&self, token: u16) -> Option<usize> {
        self.token.iter().position(|&t| t == Some(token))
    }

    fn free(&self, slot: usize) -> bool {
        self.token.get(slot).is_some_and(Option::is_none)
    }

    /// The slot's buffer as the slice the queue was given.
    fn slice<'a>(&self, slot: usize) -> &'a mut [u8] {
        // SAFETY: `buf[slot]` is the caller's buffer of at least `len[slot]` bytes, lent to the
        // device from submit until the completion is popped (`NicPort`'s contract); the slice is
        // only handed to the queue.
        unsafe { core::slice::from_raw_parts_mut(self.buf[slot], self.len[slot]) }
    }
}

/// A virtio-net device as a [`NicPort`].
///
/// Field order is drop order: the transport (a `PciTransport` resets the device when dropped)
/// goes before the queues' memory.
pub struct VirtioNic<H: Hal, T: Transport> {
    transport: T,
    rxq: VirtQueue<H, NIC_SLOTS>,
    txq: VirtQueue<H, NIC_SLOTS>,
    mac: [u8; 6],
    tx: Slots,
    rx: Slots,
}

impl<H: Hal, T: Transport> VirtioNic<H, T> {
    /// Initialises the device (§3.1.1), reads its MAC and sets up both queues. Errors:
    /// [`NicError::Virtio`] when the transport or a queue fails, or the device does not offer
    /// VERSION_1.
    pub fn new(mut transport: T) -> Result<Self, NicError> {
        // virtio-drivers' `begin_init` keeps only the bits its flag type knows, which for the
        // common flags drops VIRTIO_NET_F_MAC: the same steps, with this driver's bits.
        transport.set_status(DeviceStatus::empty());
        transport.set_status(DeviceStatus::ACKNOWLEDGE | DeviceStatus::DRIVER);
        let offered = transport.read_device_features();
        if offered & F_VERSION_1 == 0 {
            return Err(NicError::Virtio(virtio_drivers::Error::Unsupported));
        }
        transport.write_driver_features(offered & (F_VERSION_1 | F_MAC));
        transport.set_status(
            DeviceStatus::ACKNOWLEDGE | DeviceStatus::DRIVER | DeviceStatus::FEATURES_OK,
        );
        transport.set_guest_page_size(virtio_drivers::PAGE_SIZE as u32);
        if !transport.get_status().contains(DeviceStatus::FEATURES_OK) {
            return Err(NicError::Virtio(virtio_drivers::Error::Unsupported));
        }
        let mut mac = [0u8; 6];
        if offered & F_MAC != 0 {
            for (i, b) in mac.iter_mut().enumerate() {
                *b = transport
                    .read_config_space::<u8>(i)
                    .map_err(NicError::Virtio)?;
            }
        }
        let rxq =
            VirtQueue::new(&mut transport, RX_QUEUE, false, false).map_err(NicError::Virtio)?;
        let txq =
            VirtQueue::new(&mut transport, TX_QUEUE, false, false).map_err(NicError::Virtio)?;
        transport.finish_init();
        Ok(VirtioNic {
            transport,
            rxq,
            txq,
            mac,
            tx: Slots::new(),
            rx: Slots::new(),
        })
    }
}

impl<H: Hal, T: Transport> NicPort for VirtioNic<H, T> {
    fn frame_offset(&self) -> usize {
        HDR_LEN
    }

    fn mac(&self) -> [u8; 6] {
        self.mac
    }

    unsafe fn submit_tx(&mut self, slot: usize, buf: *mut u8, len: usize) -> Result<(), NicError> {
        let total = HDR_LEN + len;
        if !self.tx.free(slot) || total > NIC_BUF_BYTES || len == 0 {
            return Err(NicError::BadSlot);
        }
        // SAFETY: `buf` is the caller's NIC_BUF_BYTES of DMA memory, not in use by the device
        // (the slot is free); the header is its first HDR_LEN bytes. All zero: no offloads.
        unsafe { core::ptr::write_bytes(buf, 0, HDR_LEN) };
        self.tx.buf[slot] = buf;
        self.tx.len[slot] = total;
        let b = self.tx.slice(slot);
        // SAFETY: the buffer stays allocated and untouched until `poll` pops the token and passes
        // the same slice back (the contract of `submit_tx`).
        let token = unsafe { self.txq.add(&[b], &mut []) }.map_err(NicError::Virtio)?;
        self.tx.token[slot] = Some(token);
        if self.txq.should_notify() {
            self.transport.notify(TX_QUEUE);
        }
        Ok(())
    }

    unsafe fn submit_rx(&mut self, slot: usize, buf: *mut u8) -> Result<(), NicError> {
        if !self.rx.free(slot) {
            return Err(NicError::BadSlot);
        }
        self.rx.buf[slot] = buf;
        self.rx.len[slot] = NIC_BUF_BYTES;
        let b = self.rx.slice(slot);
        // SAFETY: as in `submit_tx`: the whole buffer is the device's until `poll` returns it.
        let token = unsafe { self.rxq.add(&[], &mut [b]) }.map_err(NicError::Virtio)?;
        self.rx.token[slot] = Some(token);
        if self.rxq.should_notify() {
            self.transport.notify(RX_QUEUE);
        }
        Ok(())
    }

    fn poll(&mut self) -> Option<NicCompletion> {
        if let Some(token) = self.txq.peek_used() {
            let Some(slot) = self.tx.by_token(token) else {
                log::error!("virtio-net: used ring returned unknown TX token {token}");
                return None;
            };
            let b = self.tx.slice(slot);
            // SAFETY: the slice given to `add` for this token.
            let r = unsafe { self.txq.pop_used(token, &[b], &mut []) };
            self.tx.token[slot] = None;
            return Some(NicCompletion {
                slot,
                op: NicOp::Tx,
                len: r.ok().map(|_| 0),
            });
        }
        let token = self.rxq.peek_used()?;
        let Some(slot) = self.rx.by_token(token) else {
            log::error!("virtio-net: used ring returned unknown RX token {token}");
            return None;
        };
        let b = self.rx.slice(slot);
        // SAFETY: the slice given to `add` for this token.
        let r = unsafe { self.rxq.pop_used(token, &[], &mut [b]) };
        self.rx.token[slot] = None;
        // The used length counts the header; a device that claims more than the buffer, or less
        // than a header, completed nothing usable.
        let len = r
            .ok()
            .map(|n| n as usize)
            .filter(|&n| n > HDR_LEN && n <= NIC_BUF_BYTES)
            .map(|n| n - HDR_LEN);
        Some(NicCompletion {
            slot,
            op: NicOp::Rx,
            len,
        })
    }

    fn release(mut self) {
        // Reset (§2.1.2): the device stops using the queues before their memory goes, and any
        // posted receive buffer is the device's no more.
        self.transport.set_status(DeviceStatus::empty());
    }
}
