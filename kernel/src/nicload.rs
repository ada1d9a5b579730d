//! The NIC workload (issue 11), hardware-independent: numbered frames out through any
//! [`NicPort`], numbered frames from the host checked as they come in
//! ([`baton_core::net`]).
//!
//! - **TX**: frames `0 .. frames` to the host, in order, at most `window` transmits outstanding;
//!   frame `seq` carries `fill_for(seed, seq)` fill bytes, so every size from 34 to 1514 bytes
//!   travels. A transmit completes once the device took the frame.
//! - **RX**: every receive slot holds a posted buffer; each frame that arrives is checked
//!   ([`SeqCheck`]: numbered, addressed to the guest, exactly once, in order) and its buffer posted
//!   again at once.
//! - **Done** when every transmit completed and the host's `frames` frames all arrived in order.
//!   The host end sends its last frame only after it has every frame of the guest's, so a guest
//!   that is done knows its own frames arrived too (nothing is lost in QEMU's queues when the
//!   guest then exits).

use crate::ports::dma::DmaPages;
use crate::ports::nic::{NIC_BUF_BYTES, NIC_SLOTS, NicError, NicOp, NicPort};
use baton_core::console::NetResultLine;
use baton_core::net::{self, Direction, SeqCheck};
use virtio_drivers::{Hal, PAGE_SIZE};

/// Receive anomalies logged, at most (each is counted either way).
const MAX_LOGGED: u64 = 4;

/// Buffers per page.
const PER_PAGE: usize = PAGE_SIZE / NIC_BUF_BYTES;

/// The numbered-frame workload over one NIC.
pub struct NicWorkload<H: Hal> {
    frames: u64,
    window: usize,
    seed: u64,
    mac: [u8; 6],
    tx_pages: DmaPages<H>,
    rx_pages: DmaPages<H>,
    tx_busy: [bool; NIC_SLOTS],
    tx_inflight: usize,
    next_seq: u64,
    tx_done: u64,
    tx_errors: u64,
    rx: SeqCheck,
    rx_errors: u64,
    started_us: Option<u64>,
    last_us: u64,
}

impl<H: Hal> NicWorkload<H> {
    /// `frames` frames each way, at most `window` (1..=[`NIC_SLOTS`]) transmits outstanding,
    /// fill sizes from `seed`, sent from `mac` (the NIC's address).
    pub fn new(frames: u64, window: usize, seed: u64, mac: [u8; 6]) -> Self {
        let pages = NIC_SLOTS.div_ceil(PER_PAGE);
        NicWorkload {
            frames,
            window: window.clamp(1, NIC_SLOTS),
            seed,
            mac,
            tx_pages: DmaPages::new(pages),
            rx_pages: DmaPages::new(pages),
            tx_busy: [false; NIC_SLOTS],
            tx_inflight: 0,
            next_seq: 0,
            tx_done: 0,
            tx_errors: 0,
            rx: SeqCheck::default(),
            rx_errors: 0,
            started_us: None,
            last_us: 0,
        }
    }

    fn tx_buf(&self, slot: usize) -> *mut u8 {
        // SAFETY: slot < NIC_SLOTS, and NIC_SLOTS buffers of NIC_BUF_BYTES fit in the pages.
        unsafe { self.tx_pages.as_ptr().add(slot * NIC_BUF_BYTES) }
    }

    fn rx_buf(&self, slot: usize) -> *mut u8 {
        // SAFETY: as for `tx_buf`.
        unsafe { self.rx_pages.as_ptr().add(slot * NIC_BUF_BYTES) }
    }

    /// Posts every receive buffer. Errors: the port's.
    pub fn start<P: NicPort>(&mut self, port: &mut P, now_us: u64) -> Result<(), NicError> {
        for slot in 0..NIC_SLOTS {
            // SAFETY: the slot's buffer is this workload's DMA memory, which outlives the port's
            // use of it: the caller releases the port before dropping the workload, and nothing
            // here touches a posted buffer until the port returns it.
            unsafe { port.submit_rx(slot, self.rx_buf(slot))? };
        }
        self.started_us = Some(now_us);
        self.last_us = now_us;
        Ok(())
    }

    /// One round: transmits what the window allows, then takes every completion. Returns whether
    /// anything moved. Errors: the port's.
    pub fn step<P: NicPort>(&mut self, port: &mut P, now_us: u64) -> Result<bool, NicError> {
        let mut moved = false;
        while self.tx_inflight < self.window && self.next_seq < self.frames {
            let Some(slot) = self.tx_busy.iter().position(|b| !b) else {
                break;
            };
            let off = port.frame_offset();
            let buf = self.tx_buf(slot);
            // SAFETY: the slot is free, so its buffer is not the device's; `off` is at most the
            // header length, far below NIC_BUF_BYTES.
            let frame =
                unsafe { core::slice::from_raw_parts_mut(buf.add(off), NIC_BUF_BYTES - off) };
            let fill = net::fill_for(self.seed, self.next_seq);
            let len = net::encode(
                frame,
                net::HOST_MAC,
                self.mac,
                Direction::ToHost,
                self.next_seq,
                fill,
            )
            .map_err(|_| NicError::BadSlot)?;
            // SAFETY: as in `start`: the buffer is this workload's and untouched until the port
            // returns the slot.
            unsafe { port.submit_tx(slot, buf, len)? };
            self.tx_busy[slot] = true;
            self.tx_inflight += 1;
            self.next_seq += 1;
            moved = true;
        }
        while let Some(c) = port.poll() {
            moved = true;
            match c.op {
                NicOp::Tx => {
                    self.tx_busy[c.slot] = false;
                    self.tx_inflight -= 1;
                    match c.len {
                        Some(_) => self.tx_done += 1,
                        None => self.tx_errors += 1,
                    }
                }
                NicOp::Rx => {
                    let off = port.frame_offset();
                    match c.len {
                        Some(len) if off + len <= NIC_BUF_BYTES => {
                            // SAFETY: the port returned the slot: the buffer is ours again, and
                            // the frame lies inside it.
                            let frame = unsafe {
                                core::slice::from_raw_parts(self.rx_buf(c.slot).add(off), len)
                            };
                            let expected = self.rx.next;
                            let r = self.rx.take_frame(frame, Direction::ToGuest);
                            let anomalies = self.rx.duplicated + self.rx.reordered + self.rx.bad;
                            if r != Ok(expected) && anomalies <= MAX_LOGGED {
                                log::warn!("net: frame {r:?} received, {expected} expected");
                            }
                        }
                        _ => self.rx_errors += 1,
                    }
                    // SAFETY: as in `start`.
                    unsafe { port.submit_rx(c.slot, self.rx_buf(c.slot))? };
                }
            }
        }
        if moved {
            self.last_us = now_us;
        }
        Ok(moved)
    }

    /// Every transmit completed and every frame of the host arrived.
    pub fn done(&self) -> bool {
        self.tx_done + self.tx_errors == self.frames && self.rx.next >= self.frames
    }

    /// Whether everything went right: all sent, all received once and in order, nothing bad.
    pub fn clean(&self) -> bool {
        self.tx_done == self.frames
            && self.rx.next == self.frames
            && self.rx.clean()
            && self.rx_errors == 0
    }

    /// When anything last moved (µs, the caller's clock).
    pub fn last_progress_us(&self) -> u64 {
        self.last_us
    }

    /// The `BATON net-result` line of what happened so far.
    pub fn result(&self) -> NetResultLine {
        NetResultLine {
            tx_sent: self.tx_done,
            rx_received: self.rx.next,
            rx_bad: self.rx.bad + self.rx_errors,
            rx_duplicated: self.rx.duplicated,
            rx_reordered: self.rx.reordered,
            rx_skipped: self.rx.skipped,
            elapsed_us: self.last_us - self.started_us.unwrap_or(self.last_us),
        }
    }
}

#[cfg(test)]
#[path = "nicload_tests.rs"]
mod tests;
