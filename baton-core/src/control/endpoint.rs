//! One end of a control channel, without I/O: the reliability layer both the guest (COM2 UART)
//! and the shim (Unix socket) run.
//!
//! The [`Endpoint`] decodes received bytes ([`Endpoint::push`]), acknowledges every frame but
//! `ack`, delivers each sender frame number once ([`SeqTracker`]), drops messages the other side
//! may not send, keeps the local side's messages in a bounded queue and sends them one at a time,
//! retransmitting the outstanding one every `retransmit_us` until it is acknowledged
//! ([`Endpoint::poll_transmit`]). It owns no transport and reads no clock: the caller passes the
//! time in microseconds (any monotonic origin) and writes the frames it is handed to its
//! transport. Nothing here allocates or panics on the other side's bytes.
//!
//! Caller contract: after every [`Endpoint::push`] that returns `Some` (a frame ended), and after
//! [`Endpoint::send`], drain [`Endpoint::poll_transmit`] until it returns `None`. Pending
//! acknowledgements are bounded ([`ACK_BACKLOG`]); if a caller lets more pile up, the oldest are
//! dropped (the sender retransmits, and the retransmission is acknowledged).

use core::fmt;

use super::MAX_FRAME_LEN;
use super::frame::{Decoder, encode};
use super::message::{ControlError, Message, MessageKind, Side};

/// Most acknowledgements an [`Endpoint`] holds for the caller to send.
pub const ACK_BACKLOG: usize = 4;

/// What a receiver should do with a (non-ack) frame's sequence number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SeqVerdict {
    /// The next frame: act on it and acknowledge it.
    New,
    /// A retransmission of the last frame: acknowledge it again, do not act on it.
    Duplicate,
    /// Neither: the sender restarted or frames were lost. The tracker resynchronises to it; the
    /// caller decides whether that is acceptable in its state (usually: only for `hello`).
    Unexpected,
}

/// Tracks the other side's frame numbers for the stop-and-wait retransmit scheme.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SeqTracker {
    last: Option<u32>,
}

impl SeqTracker {
    /// A tracker that has seen no frame: the first frame is `New` whatever its number.
    pub const fn new() -> SeqTracker {
        SeqTracker { last: None }
    }

    /// Classifies frame number `seq` and records it.
    pub fn check(&mut self, seq: u32) -> SeqVerdict {
        let verdict = match self.last {
            None => SeqVerdict::New,
            Some(last) if seq == last => SeqVerdict::Duplicate,
            Some(last) if seq == last.wrapping_add(1) => SeqVerdict::New,
            Some(_) => SeqVerdict::Unexpected,
        };
        self.last = Some(seq);
        verdict
    }
}

/// Counters of one endpoint; the shim reports them per guest (`control.owner`, `control.peer`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EndpointStats {
    /// Frames decoded (acks included).
    pub frames_in: u64,
    /// Byte runs the decoder rejected (bad checksum, bad syntax, too long, ...), plus valid frames
    /// carrying a message the other side may not send.
    pub bad_frames: u64,
    /// Retransmitted frames of the other side (re-acknowledged, not delivered again).
    pub duplicates: u64,
    /// Frames whose sequence number was neither the next one nor a repeat (delivered).
    pub seq_jumps: u64,
    /// Acks that matched no outstanding frame.
    pub stray_acks: u64,
    /// Own frames sent (first transmissions).
    pub sent: u64,
    /// Own frames sent again: no ack within the retransmit interval, or a new transport.
    pub retransmits: u64,
}

/// Bytes that did not form a frame this endpoint accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BadFrame {
    /// The decoder rejected them.
    Decode(ControlError),
    /// A valid frame carrying a message the sender's side may not send.
    WrongSender {
        /// Who sent it (the endpoint's other side).
        from: Side,
        /// What it sent.
        msg: MessageKind,
    },
}

impl fmt::Display for BadFrame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            BadFrame::Decode(e) => fmt::Display::fmt(&e, f),
            BadFrame::WrongSender { from, msg } => {
                write!(f, "{from} sent `{msg}`, a {}-only message", from.peer())
            }
        }
    }
}

impl core::error::Error for BadFrame {}

/// What one received frame (or rejected byte run) amounted to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Received {
    /// A new message from the other side (not a repeat): act on it. It is acknowledged.
    Message {
        /// The sender's frame number.
        seq: u32,
        /// The message.
        msg: Message,
    },
    /// A retransmission of the last delivered frame: acknowledged again, not delivered.
    Duplicate {
        /// Its frame number.
        seq: u32,
    },
    /// The ack of the outstanding frame: the next queued message can go.
    Acked {
        /// The acknowledged frame number.
        seq: u32,
    },
    /// An ack that matched no outstanding frame (counted, otherwise ignored).
    StrayAck {
        /// The frame number it named.
        seq: u32,
    },
    /// Bytes that did not form an acceptable frame (counted in `bad_frames`).
    Bad(BadFrame),
}

/// Why [`Endpoint::send`] refused a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendError {
    /// The send queue is full (too many messages unacknowledged).
    QueueFull,
    /// The message cannot be encoded (e.g. a slot the receiver would reject).
    Encode(ControlError),
    /// This side may not send this kind of message.
    WrongSide(MessageKind),
    /// Acks are the endpoint's own (sent for every received frame, never queued).
    Ack,
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            SendError::QueueFull => f.write_str("send queue full"),
            SendError::Encode(e) => write!(f, "cannot encode: {e}"),
            SendError::WrongSide(kind) => write!(f, "`{kind}` is not ours to send"),
            SendError::Ack => f.write_str("acks are sent by the endpoint itself"),
        }
    }
}

impl core::error::Error for SendError {}

/// The local side's frame awaiting its ack.
#[derive(Clone, Copy, Debug)]
struct Outstanding {
    seq: u32,
    /// When it was last transmitted; `None`: transmit again at the next poll.
    sent_us: Option<u64>,
}

/// A fixed ring of pending items, oldest first.
#[derive(Clone, Copy, Debug)]
struct Fifo<T: Copy, const N: usize> {
    items: [Option<T>; N],
    head: usize,
    len: usize,
}

impl<T: Copy, const N: usize> Fifo<T, N> {
    const fn new() -> Self {
        Fifo {
            items: [None; N],
            head: 0,
            len: 0,
        }
    }

    fn front(&self) -> Option<T> {
        if self.len == 0 {
            return None;
        }
        self.items.get(self.head).copied().flatten()
    }

    fn push_back(&mut self, item: T) -> bool {
        if self.len >= N {
            return false;
        }
        let at = (self.head + self.len) % N;
        if let Some(slot) = self.items.get_mut(at) {
            *slot = Some(item);
            self.len += 1;
            return true;
        }
        false
    }

    fn pop_front(&mut self) -> Option<T> {
        let item = self.front()?;
        if let Some(slot) = self.items.get_mut(self.head) {
            *slot = None;
        }
        self.head = (self.head + 1) % N;
        self.len -= 1;
        Some(item)
    }

    fn clear(&mut self) {
        *self = Self::new();
    }
}

/// One end of a control channel (sans I/O): framing, sequence numbers, one outstanding frame
/// retransmitted every `retransmit_us`, acknowledgements, de-duplication and counters.
///
/// `QUEUE` is the most local messages waiting for delivery (the outstanding one included). See
/// the [module docs](self) for the caller contract.
#[derive(Clone, Debug)]
pub struct Endpoint<const QUEUE: usize> {
    local: Side,
    retransmit_us: u64,
    decoder: Decoder,
    rx: SeqTracker,
    next_seq: u32,
    queue: Fifo<Message, QUEUE>,
    outstanding: Option<Outstanding>,
    acks: Fifo<u32, ACK_BACKLOG>,
    stats: EndpointStats,
}

impl<const QUEUE: usize> Endpoint<QUEUE> {
    /// The `local` side's end of a channel that retransmits an unacknowledged frame every
    /// `retransmit_us` microseconds. Its first frame is number 1.
    pub const fn new(local: Side, retransmit_us: u64) -> Self {
        Endpoint {
            local,
            retransmit_us,
            decoder: Decoder::new(),
            rx: SeqTracker::new(),
            next_seq: 1,
            queue: Fifo::new(),
            outstanding: None,
            acks: Fifo::new(),
            stats: EndpointStats {
                frames_in: 0,
                bad_frames: 0,
                duplicates: 0,
                seq_jumps: 0,
                stray_acks: 0,
                sent: 0,
                retransmits: 0,
            },
        }
    }

    /// Which side this endpoint speaks for.
    pub const fn side(&self) -> Side {
        self.local
    }

    /// The retransmit interval in microseconds.
    pub const fn retransmit_us(&self) -> u64 {
        self.retransmit_us
    }

    /// Counters so far.
    pub const fn stats(&self) -> EndpointStats {
        self.stats
    }

    /// Whether every queued message was acknowledged.
    pub const fn idle(&self) -> bool {
        self.queue.len == 0
    }

    /// Messages queued and not yet acknowledged (the outstanding one included).
    pub const fn queued(&self) -> usize {
        self.queue.len
    }

    /// Queues `msg` for the other side; it goes out from [`poll_transmit`](Self::poll_transmit)
    /// once everything before it was acknowledged.
    ///
    /// Errors: [`SendError::Ack`] for an `ack` (the endpoint acknowledges by itself),
    /// [`SendError::WrongSide`] for a message this side may not send,
    /// [`SendError::Encode`] for one the receiver's parser would reject (a slot above
    /// [`MAX_PCI_SLOT`](super::MAX_PCI_SLOT)), [`SendError::QueueFull`] with `QUEUE` messages
    /// waiting. Nothing is queued on error.
    pub fn send(&mut self, msg: Message) -> Result<(), SendError> {
        if !msg.needs_ack() {
            return Err(SendError::Ack);
        }
        if !msg.kind().sent_by(self.local) {
            return Err(SendError::WrongSide(msg.kind()));
        }
        // The longest frame number, so that every later number encodes too.
        let mut buf = [0u8; MAX_FRAME_LEN];
        encode(&msg, u32::MAX, &mut buf).map_err(SendError::Encode)?;
        if self.queue.push_back(msg) {
            Ok(())
        } else {
            Err(SendError::QueueFull)
        }
    }

    /// Feeds one received byte. Returns what a frame amounted to when one ends (or a byte run
    /// was rejected); acknowledgements it calls for are then pending in
    /// [`poll_transmit`](Self::poll_transmit).
    pub fn push(&mut self, byte: u8) -> Option<Received> {
        let frame = match self.decoder.push(byte)? {
            Ok(frame) => frame,
            Err(e) => {
                self.stats.bad_frames += 1;
                return Some(Received::Bad(BadFrame::Decode(e)));
            }
        };
        self.stats.frames_in += 1;
        let seq = frame.seq;
        if let Message::Ack { seq: acked } = frame.msg {
            return Some(self.on_ack(acked));
        }
        // Acknowledge whatever decoded, so the sender's stop-and-wait queue moves on; what the
        // message may do is the receiver's business.
        if !self.acks.push_back(seq) {
            let _ = self.acks.pop_front();
            let _ = self.acks.push_back(seq);
        }
        let from = self.local.peer();
        if !frame.msg.kind().sent_by(from) {
            self.stats.bad_frames += 1;
            return Some(Received::Bad(BadFrame::WrongSender {
                from,
                msg: frame.msg.kind(),
            }));
        }
        match self.rx.check(seq) {
            SeqVerdict::Duplicate => {
                self.stats.duplicates += 1;
                Some(Received::Duplicate { seq })
            }
            verdict => {
                if verdict == SeqVerdict::Unexpected {
                    self.stats.seq_jumps += 1;
                }
                Some(Received::Message {
                    seq,
                    msg: frame.msg,
                })
            }
        }
    }

    fn on_ack(&mut self, acked: u32) -> Received {
        match self.outstanding {
            Some(o) if o.seq == acked => {
                self.outstanding = None;
                let _ = self.queue.pop_front();
                Received::Acked { seq: acked }
            }
            _ => {
                self.stats.stray_acks += 1;
                Received::StrayAck { seq: acked }
            }
        }
    }

    /// The next frame to send at time `now_us`, encoded into `out`; returns its length (newline
    /// included), or `None` when nothing is due. Pending acks come first, then the front queued
    /// message: sent when nothing is outstanding, sent again (same number) when its ack is
    /// `retransmit_us` overdue. Call until it returns `None`.
    pub fn poll_transmit(&mut self, now_us: u64, out: &mut [u8; MAX_FRAME_LEN]) -> Option<usize> {
        while let Some(seq) = self.acks.pop_front() {
            if let Ok(n) = encode(&Message::Ack { seq }, 0, out) {
                return Some(n);
            }
        }
        let msg = self.queue.front()?;
        let seq = match self.outstanding {
            None => {
                let seq = self.next_seq;
                self.next_seq = seq.wrapping_add(1);
                self.stats.sent += 1;
                seq
            }
            Some(Outstanding { seq, sent_us }) => {
                let due = sent_us.is_none_or(|t| now_us.saturating_sub(t) >= self.retransmit_us);
                if !due {
                    return None;
                }
                self.stats.retransmits += 1;
                seq
            }
        };
        self.outstanding = Some(Outstanding {
            seq,
            sent_us: Some(now_us),
        });
        // `send` checked that the message encodes with any frame number.
        encode(&msg, seq, out).ok()
    }

    /// When the outstanding frame is due again (microseconds, the caller's clock), if one is
    /// outstanding; `Some(0)` when it is due at once.
    pub fn retransmit_due_us(&self) -> Option<u64> {
        let o = self.outstanding?;
        Some(
            o.sent_us
                .map_or(0, |t| t.saturating_add(self.retransmit_us)),
        )
    }

    /// The transport was replaced (the shim's channel re-attached to a new connection after a
    /// migration). A partly received frame and the pending acks belong to the old connection and
    /// are dropped; the sequence numbers carry on, and the outstanding frame, if any, is due at
    /// once (counted as a retransmission).
    pub fn reconnect(&mut self) {
        self.decoder = Decoder::new();
        self.acks.clear();
        if let Some(o) = self.outstanding.as_mut() {
            o.sent_us = None;
        }
    }
}
