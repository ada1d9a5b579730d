//! Frame encoding and decoding: [`encode`], [`decode_line`] and the streaming [`Decoder`].
//!
//! The grammar is in the [module docs](super). Every function here takes untrusted bytes and
//! cannot panic: no indexing on untrusted values, checked arithmetic, bounded buffers.

use core::fmt::{self, Write as _};

use super::message::{ControlError, Frame, Message, Role};
use super::{FRAME_PREFIX, MAX_FRAME_LEN, MAX_PCI_SLOT, PROTOCOL_VERSION};
use crate::crc32::crc32;

/// Length of the `" *" + 8 hex digits` trailer.
const TRAILER_LEN: usize = 10;

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
        Message::Drained { completed, held } => write!(w, " {completed} {held}"),
        Message::Abandoned { replay, held } => write!(w, " {replay} {held}"),
        Message::Released { slot }
        | Message::RingOpened { slot }
        | Message::DiskAttached { slot }
        | Message::CloseRing { slot } => write!(w, " {slot}"),
        Message::PeerReady { capacity_sectors } => write!(w, " {capacity_sectors}"),
        Message::Error { code } => write!(w, " {code}"),
        Message::PeerStalled { ms } => write!(w, " {ms}"),
        Message::Ack { seq } => write!(w, " {seq}"),
        Message::Forwarding
        | Message::MigrateRequest
        | Message::FailbackRequest
        | Message::Direct
        | Message::Redirect
        | Message::OpenPort2
        | Message::Failback
        | Message::ReleaseDisk
        | Message::PeerLost
        | Message::TakeBack
        | Message::GiveUp => Ok(()),
    }
}

/// Encodes `msg` as frame number `seq` into `out`; returns the frame length (newline included).
///
/// Fails with [`ControlError::BadSlot`] for a slot above [`MAX_PCI_SLOT`] (the decoder would
/// reject it) and [`ControlError::BufferTooSmall`] if `out` cannot hold the frame.
pub fn encode(msg: &Message, seq: u32, out: &mut [u8]) -> Result<usize, ControlError> {
    if let Message::Released { slot }
    | Message::RingOpened { slot }
    | Message::DiskAttached { slot }
    | Message::CloseRing { slot } = *msg
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
                completed: parse_u64(arg(0)?)?,
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
        b"failback-request" => {
            arity(0)?;
            Message::FailbackRequest
        }
        b"direct" => {
            arity(0)?;
            Message::Direct
        }
        b"abandoned" => {
            arity(2)?;
            Message::Abandoned {
                replay: parse_u32(arg(0)?)?,
                held: parse_u32(arg(1)?)?,
            }
        }
        b"peer-stalled" => {
            arity(1)?;
            Message::PeerStalled {
                ms: parse_u32(arg(0)?)?,
            }
        }
        b"peer-lost" => {
            arity(0)?;
            Message::PeerLost
        }
        b"take-back" => {
            arity(0)?;
            Message::TakeBack
        }
        b"give-up" => {
            arity(0)?;
            Message::GiveUp
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
        b"failback" => {
            arity(0)?;
            Message::Failback
        }
        b"release-disk" => {
            arity(0)?;
            Message::ReleaseDisk
        }
        b"close-ring" => {
            arity(1)?;
            Message::CloseRing {
                slot: parse_slot(arg(0)?)?,
            }
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
