//! The guest end of the control channel: `baton_core::control` frames over COM2 (0x2f8).
//!
//! Frames are sent one at a time: a frame that needs an acknowledgement stays outstanding and is
//! retransmitted every [`RETRANSMIT_US`] until the shim acknowledges it (QEMU drops what a guest
//! sends while no client is connected to the chardev, e.g. across a migration). Received frames are
//! acknowledged, duplicates are acknowledged again but not delivered twice.
//!
//! Everything runs from the caller's poll loop; nothing here blocks for longer than one frame takes
//! to leave the UART.

use crate::clock::Deadline;
use baton_core::control::{self, Decoder, Frame, MAX_FRAME_LEN, Message, SeqTracker, SeqVerdict};
use uart_16550::SerialPort;
use x86_64::instructions::port::Port;

/// COM2 I/O base.
const COM2: u16 = 0x2f8;
/// Time before an unacknowledged frame is sent again.
const RETRANSMIT_US: u64 = 200_000;

/// The control channel of this guest.
pub struct ControlChannel {
    port: SerialPort,
    decoder: Decoder,
    rx: SeqTracker,
    next_seq: u32,
    /// Frames waiting to be sent, oldest first; the front one is outstanding once sent.
    queue: heapless::Deque<Message, 16>,
    /// Sequence number and retransmit deadline of the outstanding front frame.
    outstanding: Option<(u32, Deadline)>,
    /// Frames the decoder rejected.
    pub bad_frames: u64,
}

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
        // 38400 8N1, FIFO, receive interrupt enabled: incoming frames wake a halted guest.
        port.init();
        crate::interrupts::unmask_wake_irq(crate::interrupts::COM2_IRQ);
        Some(ControlChannel {
            port,
            decoder: Decoder::new(),
            rx: SeqTracker::new(),
            next_seq: 1,
            queue: heapless::Deque::new(),
            outstanding: None,
            bad_frames: 0,
        })
    }

    /// Queues `msg` for delivery. Returns `false` if the queue is full (the message is dropped).
    pub fn send(&mut self, msg: Message) -> bool {
        let queued = self.queue.push_back(msg).is_ok();
        self.pump();
        queued
    }

    /// Whether every queued message was acknowledged.
    pub fn idle(&self) -> bool {
        self.queue.is_empty()
    }

    /// Moves bytes both ways and returns the next new message from the shim, if any.
    pub fn poll(&mut self) -> Option<Message> {
        let mut delivered = None;
        while delivered.is_none() {
            let Ok(byte) = self.port.try_receive() else {
                break;
            };
            match self.decoder.push(byte) {
                None => {}
                Some(Err(e)) => {
                    self.bad_frames += 1;
                    log::warn!("control: bad frame from the shim: {e}");
                }
                Some(Ok(frame)) => delivered = self.accept(frame),
            }
        }
        self.pump();
        delivered
    }

    fn accept(&mut self, frame: Frame) -> Option<Message> {
        if let Message::Ack { seq } = frame.msg {
            if self.outstanding.is_some_and(|(s, _)| s == seq) {
                self.outstanding = None;
                self.queue.pop_front();
            }
            return None;
        }
        if !frame.msg.sent_by_shim() {
            self.bad_frames += 1;
            log::warn!(
                "control: the shim sent a guest message: {}",
                frame.msg.name()
            );
            return None;
        }
        self.write_frame(&Message::Ack { seq: frame.seq }, 0);
        match self.rx.check(frame.seq) {
            SeqVerdict::Duplicate => None,
            SeqVerdict::New | SeqVerdict::Unexpected => Some(frame.msg),
        }
    }

    /// Sends the front frame if nothing is outstanding, or again if its deadline passed.
    fn pump(&mut self) {
        let Some(&msg) = self.queue.front() else {
            return;
        };
        let seq = match self.outstanding {
            Some((_, deadline)) if !deadline.expired() => return,
            Some((seq, _)) => seq,
            None => {
                let seq = self.next_seq;
                self.next_seq = self.next_seq.wrapping_add(1);
                seq
            }
        };
        self.write_frame(&msg, seq);
        self.outstanding = Some((seq, Deadline::after_us(RETRANSMIT_US)));
    }

    fn write_frame(&mut self, msg: &Message, seq: u32) {
        let mut buf = [0u8; MAX_FRAME_LEN];
        match control::encode(msg, seq, &mut buf) {
            Ok(n) => buf[..n].iter().for_each(|&b| self.port.send_raw(b)),
            Err(e) => log::error!("control: cannot encode {}: {e}", msg.name()),
        }
    }

    /// Polls until a message from the shim satisfies `want`, or the deadline passes. Other
    /// messages are logged and dropped.
    pub fn wait_for(
        &mut self,
        deadline: Deadline,
        mut want: impl FnMut(&Message) -> bool,
    ) -> Option<Message> {
        let waited = crate::clock::Stopwatch::start();
        loop {
            if let Some(msg) = self.poll() {
                if want(&msg) {
                    crate::interrupts::busy();
                    return Some(msg);
                }
                log::warn!("control: ignoring {} here", msg.name());
            }
            if deadline.expired() {
                return None;
            }
            crate::interrupts::idle(waited.elapsed_us());
        }
    }
}
