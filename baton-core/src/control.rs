//! The control protocol between a guest and the hypervisor shim, over the COM2 serial line.
//!
//! The shim directs the handoff (architecture.md, "The handoff"; US 20070204265A1, claim 1: the
//! redirector switches to port 2, port 1 drains, the device is released and reassigned, then port 2
//! forwards) and the guests report each step. This module defines the messages, their framing, a
//! streaming decoder for the byte-at-a-time serial line, a sequence-number check for the
//! acknowledge/retransmit scheme, and the shim's "is this message allowed now" check (I6).
//!
//! # Frame grammar (version 1)
//!
//! One ASCII line per frame, at most [`MAX_FRAME_LEN`] bytes including the newline:
//!
//! ```text
//! frame    = body " *" crc "\n"
//! body     = "@baton" SP version SP seq SP message
//! version  = dec            ; must be 1 (PROTOCOL_VERSION)
//! seq      = dec            ; u32, the sender's frame number
//! crc      = 8 lowercase hex digits: CRC-32 (crate::crc32) of the body bytes
//! dec      = "0" / %x31-39 *%x30-39   ; no sign, no leading zeros, must fit the field
//! message  = "hello" SP role SP vm SP version       ; guest → shim   role = "owner" / "peer"
//!          / "drained" SP port1_completed SP held   ; guest → shim   u64, u32
//!          / "released" SP slot                     ; guest → shim   PCI slot 0..=31
//!          / "peer-ready" SP capacity_sectors       ; guest → shim   u64
//!          / "forwarding"                           ; guest → shim
//!          / "migrate-request"                      ; guest → shim
//!          / "error" SP code                        ; guest → shim   u32
//!          / "redirect"                             ; shim → guest
//!          / "ring-opened" SP slot                  ; shim → guest
//!          / "disk-attached" SP slot                ; shim → guest
//!          / "open-port2"                           ; shim → guest
//!          / "ack" SP seq                           ; both ways
//! ```
//!
//! Fields are separated by exactly one space; there is nothing else on the line (no `\r`). The
//! character `@` appears only at the start of a frame, so a receiver that lost bytes (COM2 drops
//! guest output while the shim is not connected) resynchronises at the next `@`.
//!
//! Example: `@baton 1 7 drained 1042 17 *00199c43\n` (CRC-32 as zlib computes it).
//!
//! # Reliability
//!
//! Each side numbers its own frames (`seq`, starting anywhere, +1 per frame). Every frame except
//! `ack` is acknowledged with `ack <seq>`; the sender keeps one frame outstanding and retransmits
//! it unchanged until acknowledged. A receiver re-acknowledges but does not re-act on a duplicate
//! ([`SeqTracker`]). The `seq` of an `ack` frame itself is not checked.
//!
//! # Threat model
//!
//! The shim treats guest bytes as hostile (I6): frames are bounded ([`MAX_FRAME_LEN`]), parsed
//! strictly by code that cannot panic (no indexing on untrusted values, checked arithmetic), every
//! number is range-checked, and a message is acted on only if [`accepts_from`] allows it in the
//! current [`HandoffState`]. No message can name a host path or device: slots are small integers
//! the shim itself chose. The guest applies the same parser to the shim's bytes.

use core::fmt::{self, Write as _};

use crate::crc32::crc32;

/// Protocol version carried in every frame.
pub const PROTOCOL_VERSION: u32 = 1;
/// Longest frame, including the trailing newline.
pub const MAX_FRAME_LEN: usize = 128;
/// The start of every frame.
pub const FRAME_PREFIX: &str = "@baton";
/// Highest PCI slot number on the root bus.
pub const MAX_PCI_SLOT: u8 = 31;

/// Length of the `" *" + 8 hex digits` trailer.
const TRAILER_LEN: usize = 10;

/// Everything that can go wrong encoding or decoding a frame. The doc comment is the message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ControlError {
    /// output buffer too small for the frame
    BufferTooSmall,
    /// frame longer than the maximum frame length
    TooLong,
    /// frame cut short by the start of another frame
    Truncated,
    /// byte that may not appear in a frame
    BadByte {
        /// The byte.
        byte: u8,
    },
    /// frame does not follow the grammar
    Syntax,
    /// checksum mismatch
    BadChecksum {
        /// CRC-32 of the received body.
        computed: u32,
        /// CRC-32 in the frame.
        found: u32,
    },
    /// unsupported protocol version
    BadVersion {
        /// The version in the frame.
        found: u32,
    },
    /// malformed or out-of-range number
    BadNumber,
    /// unknown message name
    UnknownMessage,
    /// wrong number of arguments for the message
    WrongArity,
    /// unknown role
    BadRole,
    /// PCI slot out of range
    BadSlot,
}

impl fmt::Display for ControlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ControlError::BufferTooSmall => f.write_str("output buffer too small"),
            ControlError::TooLong => write!(f, "frame longer than {MAX_FRAME_LEN} bytes"),
            ControlError::Truncated => f.write_str("frame cut short"),
            ControlError::BadByte { byte } => write!(f, "byte {byte:#04x} in a frame"),
            ControlError::Syntax => f.write_str("malformed frame"),
            ControlError::BadChecksum { computed, found } => {
                write!(f, "checksum {found:08x}, computed {computed:08x}")
            }
            ControlError::BadVersion { found } => write!(f, "unsupported protocol version {found}"),
            ControlError::BadNumber => f.write_str("malformed or out-of-range number"),
            ControlError::UnknownMessage => f.write_str("unknown message"),
            ControlError::WrongArity => f.write_str("wrong number of arguments"),
            ControlError::BadRole => f.write_str("unknown role"),
            ControlError::BadSlot => f.write_str("PCI slot out of range"),
        }
    }
}

impl core::error::Error for ControlError {}

/// Which part a guest plays.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Runs the workload and hands its disk over.
    Owner,
    /// Receives the disk and serves the ring.
    Peer,
}

impl Role {
    /// The wire name.
    pub const fn name(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Peer => "peer",
        }
    }
}

/// A control message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Message {
    /// Guest → shim: booted, speaking `version`.
    Hello {
        /// The guest's role.
        role: Role,
        /// The guest's VM id.
        vm: u32,
        /// Guest software version.
        version: u32,
    },
    /// Guest → shim: port 1 drained.
    Drained {
        /// Requests port 1 completed in total.
        port1_completed: u64,
        /// Requests held at port 2.
        held: u32,
    },
    /// Guest → shim: device quiesced and ejected from `slot`.
    Released {
        /// PCI slot written to the eject register.
        slot: u8,
    },
    /// Guest (peer) → shim: disk initialised, ring served.
    PeerReady {
        /// Disk capacity in 512-byte sectors.
        capacity_sectors: u64,
    },
    /// Guest (owner) → shim: port 2 is forwarding.
    Forwarding,
    /// Guest (owner) → shim: please migrate me.
    MigrateRequest,
    /// Guest → shim: something failed.
    Error {
        /// Guest-defined error code.
        code: u32,
    },
    /// Either way: frame `seq` received.
    Ack {
        /// The acknowledged frame's sequence number.
        seq: u32,
    },
    /// Shim → owner: switch to port 2 and drain port 1.
    Redirect,
    /// Shim → guest: ivshmem plugged at `slot`.
    RingOpened {
        /// PCI slot of the ivshmem device.
        slot: u8,
    },
    /// Shim → peer: the disk was plugged at `slot`.
    DiskAttached {
        /// PCI slot of the virtio-blk device.
        slot: u8,
    },
    /// Shim → owner: start forwarding over the ring.
    OpenPort2,
}

impl Message {
    /// The wire name.
    pub const fn name(&self) -> &'static str {
        match self {
            Message::Hello { .. } => "hello",
            Message::Drained { .. } => "drained",
            Message::Released { .. } => "released",
            Message::PeerReady { .. } => "peer-ready",
            Message::Forwarding => "forwarding",
            Message::MigrateRequest => "migrate-request",
            Message::Error { .. } => "error",
            Message::Ack { .. } => "ack",
            Message::Redirect => "redirect",
            Message::RingOpened { .. } => "ring-opened",
            Message::DiskAttached { .. } => "disk-attached",
            Message::OpenPort2 => "open-port2",
        }
    }

    /// Whether a guest may send this message (`Ack` goes both ways).
    pub const fn sent_by_guest(&self) -> bool {
        !matches!(
            self,
            Message::Redirect
                | Message::RingOpened { .. }
                | Message::DiskAttached { .. }
                | Message::OpenPort2
        )
    }

    /// Whether the shim may send this message (`Ack` goes both ways).
    pub const fn sent_by_shim(&self) -> bool {
        matches!(self, Message::Ack { .. }) || !self.sent_by_guest()
    }

    /// Whether the receiver acknowledges this message.
    pub const fn needs_ack(&self) -> bool {
        !matches!(self, Message::Ack { .. })
    }
}

/// A decoded frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Frame {
    /// Protocol version (always [`PROTOCOL_VERSION`] once decoded).
    pub version: u32,
    /// The sender's frame number.
    pub seq: u32,
    /// The message.
    pub msg: Message,
}

/// A `fmt::Write` over a fixed buffer that fails instead of truncating.
struct Cursor<'b> {
    buf: &'b mut [u8],
    len: usize,
}

impl Cursor<'_> {
    fn written(&self) -> &[u8] {
        self.buf.get(..self.len).unwrap_or_default()
    }
}

impl fmt::Write for Cursor<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let end = self.len.checked_add(s.len()).ok_or(fmt::Error)?;
        let dst = self.buf.get_mut(self.len..end).ok_or(fmt::Error)?;
        dst.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

fn write_body(w: &mut Cursor<'_>, msg: &Message, seq: u32) -> fmt::Result {
    write!(w, "{FRAME_PREFIX} {PROTOCOL_VERSION} {seq} {}", msg.name())?;
    match *msg {
        Message::Hello { role, vm, version } => write!(w, " {} {vm} {version}", role.name()),
        Message::Drained {
            port1_completed,
            held,
        } => write!(w, " {port1_completed} {held}"),
        Message::Released { slot }
        | Message::RingOpened { slot }
        | Message::DiskAttached { slot } => write!(w, " {slot}"),
        Message::PeerReady { capacity_sectors } => write!(w, " {capacity_sectors}"),
        Message::Error { code } => write!(w, " {code}"),
        Message::Ack { seq } => write!(w, " {seq}"),
        Message::Forwarding | Message::MigrateRequest | Message::Redirect | Message::OpenPort2 => {
            Ok(())
        }
    }
}

/// Encodes `msg` as frame number `seq` into `out`; returns the frame length (newline included).
///
/// Fails with [`ControlError::BadSlot`] for a slot above [`MAX_PCI_SLOT`] (the decoder would
/// reject it) and [`ControlError::BufferTooSmall`] if `out` cannot hold the frame.
pub fn encode(msg: &Message, seq: u32, out: &mut [u8]) -> Result<usize, ControlError> {
    if let Message::Released { slot }
    | Message::RingOpened { slot }
    | Message::DiskAttached { slot } = *msg
        && slot > MAX_PCI_SLOT
    {
        return Err(ControlError::BadSlot);
    }
    let mut frame = [0u8; MAX_FRAME_LEN];
    let mut w = Cursor {
        buf: &mut frame,
        len: 0,
    };
    write_body(&mut w, msg, seq).map_err(|_| ControlError::TooLong)?;
    let crc = crc32(w.written());
    writeln!(w, " *{crc:08x}").map_err(|_| ControlError::TooLong)?;
    let len = w.len;
    let src = frame.get(..len).ok_or(ControlError::TooLong)?;
    let dst = out.get_mut(..len).ok_or(ControlError::BufferTooSmall)?;
    dst.copy_from_slice(src);
    Ok(len)
}

/// Parses a strict decimal number: no sign, no leading zeros, at most `max`.
fn parse_dec(token: &[u8], max: u64) -> Result<u64, ControlError> {
    match token {
        [] => return Err(ControlError::BadNumber),
        [b'0'] => return Ok(0),
        [b'0', ..] => return Err(ControlError::BadNumber),
        _ => {}
    }
    let mut value: u64 = 0;
    for &b in token {
        if !b.is_ascii_digit() {
            return Err(ControlError::BadNumber);
        }
        value = value
            .checked_mul(10)
            .and_then(|v| v.checked_add(u64::from(b - b'0')))
            .ok_or(ControlError::BadNumber)?;
    }
    if value > max {
        return Err(ControlError::BadNumber);
    }
    Ok(value)
}

fn parse_u32(token: &[u8]) -> Result<u32, ControlError> {
    u32::try_from(parse_dec(token, u32::MAX.into())?).map_err(|_| ControlError::BadNumber)
}

fn parse_u64(token: &[u8]) -> Result<u64, ControlError> {
    parse_dec(token, u64::MAX)
}

fn parse_slot(token: &[u8]) -> Result<u8, ControlError> {
    let slot = parse_dec(token, u64::MAX)?;
    if slot > u64::from(MAX_PCI_SLOT) {
        return Err(ControlError::BadSlot);
    }
    u8::try_from(slot).map_err(|_| ControlError::BadSlot)
}

fn parse_hex32(token: &[u8]) -> Result<u32, ControlError> {
    if token.len() != 8 {
        return Err(ControlError::Syntax);
    }
    let mut value: u32 = 0;
    for &b in token {
        let digit = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            _ => return Err(ControlError::Syntax),
        };
        value = (value << 4) | u32::from(digit);
    }
    Ok(value)
}

/// Parses the arguments of message `name`.
fn parse_message(name: &[u8], args: &[&[u8]]) -> Result<Message, ControlError> {
    let arity = |n: usize| {
        if args.len() == n {
            Ok(())
        } else {
            Err(ControlError::WrongArity)
        }
    };
    let arg = |i: usize| args.get(i).copied().ok_or(ControlError::WrongArity);
    let msg = match name {
        b"hello" => {
            arity(3)?;
            let role = match arg(0)? {
                b"owner" => Role::Owner,
                b"peer" => Role::Peer,
                _ => return Err(ControlError::BadRole),
            };
            Message::Hello {
                role,
                vm: parse_u32(arg(1)?)?,
                version: parse_u32(arg(2)?)?,
            }
        }
        b"drained" => {
            arity(2)?;
            Message::Drained {
                port1_completed: parse_u64(arg(0)?)?,
                held: parse_u32(arg(1)?)?,
            }
        }
        b"released" => {
            arity(1)?;
            Message::Released {
                slot: parse_slot(arg(0)?)?,
            }
        }
        b"peer-ready" => {
            arity(1)?;
            Message::PeerReady {
                capacity_sectors: parse_u64(arg(0)?)?,
            }
        }
        b"forwarding" => {
            arity(0)?;
            Message::Forwarding
        }
        b"migrate-request" => {
            arity(0)?;
            Message::MigrateRequest
        }
        b"error" => {
            arity(1)?;
            Message::Error {
                code: parse_u32(arg(0)?)?,
            }
        }
        b"ack" => {
            arity(1)?;
            Message::Ack {
                seq: parse_u32(arg(0)?)?,
            }
        }
        b"redirect" => {
            arity(0)?;
            Message::Redirect
        }
        b"ring-opened" => {
            arity(1)?;
            Message::RingOpened {
                slot: parse_slot(arg(0)?)?,
            }
        }
        b"disk-attached" => {
            arity(1)?;
            Message::DiskAttached {
                slot: parse_slot(arg(0)?)?,
            }
        }
        b"open-port2" => {
            arity(0)?;
            Message::OpenPort2
        }
        _ => return Err(ControlError::UnknownMessage),
    };
    Ok(msg)
}

/// Most space-separated fields a valid frame has: prefix, version, seq, name, 3 arguments.
const MAX_FIELDS: usize = 7;

/// Decodes one complete frame without its newline (`@baton ... *crc`).
///
/// This is what [`Decoder`] calls per line; it is public for tests and tools that already have
/// whole lines.
pub fn decode_line(line: &[u8]) -> Result<Frame, ControlError> {
    if line.len() >= MAX_FRAME_LEN {
        return Err(ControlError::TooLong);
    }
    // The '@' that starts the frame is checked with the prefix below.
    if let Some(&byte) = line.iter().skip(1).find(|&&b| !is_frame_byte(b)) {
        return Err(ControlError::BadByte { byte });
    }
    let split = line
        .len()
        .checked_sub(TRAILER_LEN)
        .ok_or(ControlError::Syntax)?;
    let (body, trailer) = line.split_at_checked(split).ok_or(ControlError::Syntax)?;
    let crc_hex = trailer.strip_prefix(b" *").ok_or(ControlError::Syntax)?;
    let found = parse_hex32(crc_hex)?;
    let computed = crc32(body);
    if computed != found {
        return Err(ControlError::BadChecksum { computed, found });
    }

    let mut fields: [&[u8]; MAX_FIELDS] = [&[]; MAX_FIELDS];
    let mut count = 0;
    for field in body.split(|&b| b == b' ') {
        if field.is_empty() {
            return Err(ControlError::Syntax);
        }
        let slot = fields.get_mut(count).ok_or(ControlError::WrongArity)?;
        *slot = field;
        count += 1;
    }
    let fields = fields.get(..count).ok_or(ControlError::Syntax)?;
    let [prefix, version, seq, name, args @ ..] = fields else {
        return Err(ControlError::Syntax);
    };
    if *prefix != FRAME_PREFIX.as_bytes() {
        return Err(ControlError::Syntax);
    }
    let version = parse_u32(version)?;
    if version != PROTOCOL_VERSION {
        return Err(ControlError::BadVersion { found: version });
    }
    let seq = parse_u32(seq)?;
    let msg = parse_message(name, args)?;
    Ok(Frame { version, seq, msg })
}

/// Bytes allowed inside a frame (before the newline): printable ASCII other than `@`.
fn is_frame_byte(b: u8) -> bool {
    (0x20..=0x7e).contains(&b) && b != b'@'
}

/// Streaming frame decoder: feed it serial bytes one at a time.
///
/// Bytes outside a frame are skipped (counted in [`Decoder::skipped`]). A frame starts at `@`
/// and ends at `\n`. A frame that grows past [`MAX_FRAME_LEN`], contains a control byte, or is
/// interrupted by another `@` yields an error, and decoding resumes at the next `@`.
#[derive(Clone, Debug)]
pub struct Decoder {
    buf: [u8; MAX_FRAME_LEN],
    len: usize,
    in_frame: bool,
    skipped: u64,
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Decoder {
    /// A decoder waiting for the start of a frame.
    pub const fn new() -> Decoder {
        Decoder {
            buf: [0; MAX_FRAME_LEN],
            len: 0,
            in_frame: false,
            skipped: 0,
        }
    }

    /// Bytes skipped outside frames so far (line noise, lost frame tails).
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    fn start(&mut self) {
        self.in_frame = true;
        self.len = 0;
        self.append(b'@');
    }

    /// Appends a byte to the frame; false if the frame is full.
    fn append(&mut self, byte: u8) -> bool {
        match self.buf.get_mut(self.len) {
            Some(slot) => {
                *slot = byte;
                self.len += 1;
                true
            }
            None => false,
        }
    }

    /// Feeds one byte; returns a frame or an error when one ends.
    pub fn push(&mut self, byte: u8) -> Option<Result<Frame, ControlError>> {
        if !self.in_frame {
            if byte == b'@' {
                self.start();
            } else {
                self.skipped = self.skipped.saturating_add(1);
            }
            return None;
        }
        match byte {
            b'\n' => {
                self.in_frame = false;
                let line = self.buf.get(..self.len).unwrap_or_default();
                Some(decode_line(line))
            }
            b'@' => {
                self.start();
                Some(Err(ControlError::Truncated))
            }
            b if !is_frame_byte(b) => {
                self.in_frame = false;
                Some(Err(ControlError::BadByte { byte: b }))
            }
            // Leave room for the newline: the whole frame is at most MAX_FRAME_LEN bytes.
            _ if self.len + 1 >= MAX_FRAME_LEN => {
                self.in_frame = false;
                Some(Err(ControlError::TooLong))
            }
            _ => {
                self.append(byte);
                None
            }
        }
    }
}

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

/// The shim's view of one handoff (one owner, one peer).
///
/// The shim moves the state itself when it acts (`Direct → Redirecting` when it sends
/// `redirect`, `Forwarding → Migrating → Forwarding` around a migration); the guests' messages move
/// it through [`HandoffState::after`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HandoffState {
    /// Guests starting; waiting for their `hello`s.
    Booting,
    /// The owner does I/O through port 1.
    Direct,
    /// `redirect` sent, `device_del` issued, ring being opened; port 1 draining.
    Redirecting,
    /// The owner reported port 1 drained.
    Drained,
    /// The owner released the device; the shim moves it to the peer.
    Released,
    /// The peer has the disk and serves the ring; `open-port2` is next.
    PeerReady,
    /// Port 2 forwards over the ring.
    Forwarding,
    /// The owner is being saved or migrated (still forwarding).
    Migrating,
    /// A guest reported an error; the handoff is stopped.
    Failed,
}

impl HandoffState {
    /// The state after an accepted guest message, or `None` if the message is not acceptable now.
    pub fn after(self, msg: &Message) -> Option<HandoffState> {
        use HandoffState as S;
        let next = match (self, msg) {
            (_, Message::Ack { .. }) => self,
            (_, Message::Error { .. }) => S::Failed,
            (S::Booting | S::Direct, Message::Hello { .. }) => S::Direct,
            (S::Direct, Message::MigrateRequest) => S::Direct,
            (S::Redirecting, Message::Drained { .. }) => S::Drained,
            (S::Drained, Message::Released { .. }) => S::Released,
            (S::Released, Message::PeerReady { .. }) => S::PeerReady,
            (S::PeerReady, Message::Forwarding) => S::Forwarding,
            _ => return None,
        };
        Some(next)
    }
}

/// Whether the shim accepts `msg` from a guest in `state` (ignoring who sent it).
pub fn accepts(state: HandoffState, msg: &Message) -> bool {
    msg.sent_by_guest() && state.after(msg).is_some()
}

/// Whether the shim accepts `msg` from a guest of role `role` in `state`: as [`accepts`], and
/// owner-only steps must come from the owner, `peer-ready` from the peer.
pub fn accepts_from(role: Role, state: HandoffState, msg: &Message) -> bool {
    let role_ok = match msg {
        Message::Drained { .. }
        | Message::Released { .. }
        | Message::Forwarding
        | Message::MigrateRequest => role == Role::Owner,
        Message::PeerReady { .. } => role == Role::Peer,
        Message::Hello { role: claimed, .. } => *claimed == role,
        _ => true,
    };
    role_ok && accepts(state, msg)
}
