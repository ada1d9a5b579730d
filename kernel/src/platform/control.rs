//! The guest end of the control channel: a `baton_core::control::Endpoint` over COM2 (0x2f8).
//!
//! The protocol (framing, acks, one outstanding frame retransmitted every 200 ms until
//! the shim acknowledges it, de-duplication) is the endpoint's, the same code the shim runs; this
//! module moves its bytes through the UART and passes it the guest's clock. Retransmission matters
//! here: QEMU drops what a guest sends while no client is connected to the chardev, e.g. across a
//! migration.
//!
//! Everything runs from the caller's poll loop; nothing here blocks for longer than one frame takes
//! to leave the UART.

use super::clock::{self, Deadline};
use baton_core::control::{
    Endpoint, MAX_FRAME_LEN, Message, RETRANSMIT_US, Received, SendError, Side,
};
use uart_16550::SerialPort;
use x86_64::instructions::port::Port;

/// COM2 I/O base.
const COM2: u16 = 0x2f8;
/// Most messages waiting for the shim's ack.
const QUEUE: usize = 16;

/// Reprograms COM2 after `SerialPort::init` (38400 baud, receive interrupt at 14 bytes in the
/// FIFO) to 115200 baud. QEMU's 16550 (hw/char/serial.c) raises the receive interrupt once the
/// FIFO holds the trigger level, and otherwise after four character times: 1 ms at 38400 baud,
/// 0.35 ms at 115200 (divisor 1). The trigger stays at 14: QEMU offers the socket's bytes to the
/// FIFO only up to the trigger level at a time, so a trigger of 1 moved a frame one byte per
/// round trip between the vCPU and QEMU's main loop (a 27-byte ack took 4-19 ms on a loaded
/// host). The tail of a frame is not left to the timeout either: a guest keeps polling while
/// bytes arrive ([`ControlChannel::receiving`]).
///
/// # Safety
/// COM2 must be present and driven by nobody else.
unsafe fn fast_wakeup() {
    const LCR: u16 = COM2 + 3;
    const FCR: u16 = COM2 + 2;
    // SAFETY: the caller's contract; DLAB on, divisor 1 (DLL = 1, DLM = 0), DLAB off with 8N1,
    // then FIFO on, both FIFOs cleared, trigger level 14 bytes.
    unsafe {
        Port::<u8>::new(LCR).write(0x80);
        Port::<u8>::new(COM2).write(0x01);
        Port::<u8>::new(COM2 + 1).write(0x00);
        Port::<u8>::new(LCR).write(0x03);
        Port::<u8>::new(FCR).write(0xc7);
        // Receive-data interrupt on (IER bit 0; the divisor write above went to DLM, not IER).
        Port::<u8>::new(COM2 + 1).write(0x01);
    }
}

/// The control channel of this guest.
pub struct ControlChannel {
    port: SerialPort,
    endpoint: Endpoint<QUEUE>,
    /// When the last byte came in (guest µs), to keep polling while a frame arrives.
    last_rx_us: u64,
}

/// How long after a byte arrived the channel counts as [`receiving`](ControlChannel::receiving).
const RECEIVING_US: u64 = 400;

impl ControlChannel {
    /// Opens COM2; `None` when the machine has no second UART (no control channel configured).
    pub fn open() -> Option<Self> {
        // SAFETY: probing COM2's scratch register (base + 7): a write and a read with no side
        // effects on other devices; an absent UART reads back 0xff.
        let present = unsafe {
            let mut scratch = Port::<u8>::new(COM2 + 7);
            scratch.write(0x5a);
            let a = scratch.read();
            scratch.write(0xa5);
            a == 0x5a && scratch.read() == 0xa5
        };
        if !present {
            return None;
        }
        // SAFETY: COM2 is present and only this channel drives it.
        let mut port = unsafe { SerialPort::new(COM2) };
        // 8N1, FIFO, receive interrupt enabled: incoming frames wake a halted guest.
        port.init();
        // SAFETY: COM2's divisor latch, line control and FIFO control registers, which only this
        // channel drives; the UART has just been initialised and nothing is in flight.
        unsafe { fast_wakeup() };
        super::interrupts::unmask_wake_irq(super::interrupts::COM2_IRQ);
        super::interrupts::set_wake_uart(COM2);
        Some(ControlChannel {
            port,
            endpoint: Endpoint::new(Side::Guest, RETRANSMIT_US),
            last_rx_us: 0,
        })
    }

    /// Queues `msg` for delivery. Returns `false` if it cannot be queued (the queue is full, or
    /// the message cannot be encoded: logged); the message is then dropped.
    pub fn send(&mut self, msg: Message) -> bool {
        let queued = match self.endpoint.send(msg) {
            Ok(()) => true,
            Err(SendError::QueueFull) => false,
            Err(e) => {
                log::error!("control: cannot send {}: {e}", msg.name());
                false
            }
        };
        self.transmit();
        queued
    }

    /// Whether every queued message was acknowledged.
    pub fn idle(&self) -> bool {
        self.endpoint.idle()
    }

    /// Whether bytes are arriving (one came in the last [`RECEIVING_US`]): the rest of the frame
    /// is on its way, and a guest that halted now would wait for the UART's character timeout
    /// (below 14 bytes in the FIFO) or a tick for it, so it keeps polling instead.
    pub fn receiving(&self) -> bool {
        clock::uptime_us().saturating_sub(self.last_rx_us) < RECEIVING_US
    }

    /// Moves bytes both ways and returns the next new message from the shim, if any.
    pub fn poll(&mut self) -> Option<Message> {
        let mut delivered = None;
        while delivered.is_none() {
            let Ok(byte) = self.port.try_receive() else {
                break;
            };
            self.last_rx_us = clock::uptime_us();
            let Some(received) = self.endpoint.push(byte) else {
                continue;
            };
            // The ack this frame calls for, or the next frame after an ack.
            self.transmit();
            match received {
                Received::Message { msg, .. } => delivered = Some(msg),
                Received::Bad(e) => log::warn!("control: bad frame from the shim: {e}"),
                Received::Duplicate { .. } | Received::Acked { .. } | Received::StrayAck { .. } => {
                }
            }
        }
        self.transmit();
        delivered
    }

    /// Writes every frame the endpoint has due to the UART.
    fn transmit(&mut self) {
        let now = clock::uptime_us();
        let mut frame = [0u8; MAX_FRAME_LEN];
        while let Some(n) = self.endpoint.poll_transmit(now, &mut frame) {
            for &b in frame.get(..n).unwrap_or_default() {
                self.port.send_raw(b);
            }
        }
    }

    /// Polls until a message from the shim satisfies `want`, or the deadline passes. Other
    /// messages are logged and dropped.
    pub fn wait_for(
        &mut self,
        deadline: Deadline,
        mut want: impl FnMut(&Message) -> bool,
    ) -> Option<Message> {
        let waited = clock::Stopwatch::start();
        loop {
            if let Some(msg) = self.poll() {
                if want(&msg) {
                    super::interrupts::busy();
                    return Some(msg);
                }
                log::warn!("control: ignoring {} here", msg.name());
            }
            if deadline.expired() {
                return None;
            }
            if self.receiving() {
                core::hint::spin_loop();
                continue;
            }
            super::interrupts::idle(waited.elapsed_us());
        }
    }
}
