//! The NIC workload's frames (issue 11) and the framing of QEMU's `-netdev stream` socket.
//!
//! **Numbered frames.** Each direction carries its own numbered sequence: the guest sends frames
//! numbered 0, 1, 2, … to the host (TX), the host sends its own 0, 1, 2, … to the guest (RX), and
//! each receiver checks that every number arrives exactly once and in order. A frame is an
//! Ethernet II frame of [`ETHERTYPE`] whose payload is, little-endian:
//!
//! | offset | bytes | field |
//! |---|---|---|
//! | 0 | 4 | [`MAGIC`] |
//! | 4 | 1 | direction ([`Direction`]) |
//! | 5 | 1 | 0 (reserved) |
//! | 6 | 2 | fill length `n` (bytes after this header, before the CRC) |
//! | 8 | 8 | sequence number |
//! | 16 | `n` | fill: byte `i` is `seq * 31 + i` (mod 256) |
//! | 16 + `n` | 4 | CRC-32 ([`crate::crc32`]) of payload bytes `0 .. 16 + n` |
//!
//! so a frame is [`frame_len`]`(n)` bytes, from [`MIN_FRAME_LEN`] to [`MAX_FRAME_LEN`] (a
//! standard 1514-byte Ethernet frame without its FCS). [`decode`] takes untrusted bytes and
//! never panics.
//!
//! **`-netdev stream` framing** (QEMU 7.2 `net/stream.c`, the same as `-netdev socket`): each
//! frame on the byte stream is a 4-byte big-endian length followed by that many bytes.
//! [`StreamDecoder`] reassembles frames from arbitrary chunks of that stream and rejects a length
//! of 0 or above [`MAX_STREAM_FRAME`] (the stream cannot be resynchronised after one).

use crate::crc32;

/// The frames' EtherType: IEEE 802 "local experimental" 1.
pub const ETHERTYPE: u16 = 0x88b5;
/// Ethernet II header: destination MAC, source MAC, EtherType.
pub const ETH_HEADER_LEN: usize = 14;
/// The payload's first four bytes.
pub const MAGIC: [u8; 4] = *b"BTNF";
/// Payload bytes before the fill.
pub const PAYLOAD_HEADER_LEN: usize = 16;
/// The CRC after the fill.
pub const CRC_LEN: usize = 4;
/// The shortest numbered frame (no fill).
pub const MIN_FRAME_LEN: usize = ETH_HEADER_LEN + PAYLOAD_HEADER_LEN + CRC_LEN;
/// The longest numbered frame: a standard Ethernet frame's 1514 bytes (without FCS).
pub const MAX_FRAME_LEN: usize = 1514;
/// The longest fill.
pub const MAX_FILL: usize = MAX_FRAME_LEN - MIN_FRAME_LEN;
/// The longest frame [`StreamDecoder`] accepts: QEMU's `NET_BUFSIZE` (4096 + 65536) bounds what
/// its stream backend sends; a numbered frame is far shorter.
pub const MAX_STREAM_FRAME: usize = 4096 + 65536;
/// The length prefix of a frame on a `-netdev stream` socket.
pub const STREAM_PREFIX_LEN: usize = 4;

/// The MAC address of the guest's NIC (locally administered, unicast).
pub const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0xba, 0x70, 0x01];
/// The MAC address the host end sends from (locally administered, unicast).
pub const HOST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0xba, 0x70, 0xfe];

/// Which way a numbered frame travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Guest to host (the guest's TX).
    ToHost = 1,
    /// Host to guest (the guest's RX).
    ToGuest = 2,
}

impl Direction {
    fn from_byte(b: u8) -> Option<Self> {
        match b {
            1 => Some(Direction::ToHost),
            2 => Some(Direction::ToGuest),
            _ => None,
        }
    }
}

/// Why bytes are not a numbered frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// Shorter than [`MIN_FRAME_LEN`], or shorter than its fill length says.
    Truncated,
    /// Longer than [`MAX_FRAME_LEN`], or longer than its fill length says.
    TooLong,
    /// Not of [`ETHERTYPE`] (some other traffic).
    OtherEtherType,
    /// The payload does not start with [`MAGIC`].
    BadMagic,
    /// An unknown direction byte, or a nonzero reserved byte.
    BadHeader,
    /// The CRC does not match.
    BadCrc,
    /// CRC right but the fill is not what the sequence number gives.
    BadFill,
    /// The destination buffer of [`encode`] is too short, or the fill too long.
    NoRoom,
}

impl core::fmt::Display for FrameError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            FrameError::Truncated => "frame truncated",
            FrameError::TooLong => "frame too long",
            FrameError::OtherEtherType => "not a numbered frame (EtherType)",
            FrameError::BadMagic => "bad magic",
            FrameError::BadHeader => "bad direction or reserved byte",
            FrameError::BadCrc => "CRC mismatch",
            FrameError::BadFill => "fill does not match the sequence number",
            FrameError::NoRoom => "no room for the frame",
        })
    }
}

/// A numbered frame's header fields, as [`decode`] found them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Numbered {
    /// Destination MAC.
    pub dst: [u8; 6],
    /// Source MAC.
    pub src: [u8; 6],
    /// Which way it travels.
    pub direction: Direction,
    /// Its number in its direction's sequence.
    pub seq: u64,
    /// Fill bytes.
    pub fill: u16,
}

/// The length in bytes of a numbered frame with `fill` fill bytes.
#[must_use]
pub const fn frame_len(fill: usize) -> usize {
    MIN_FRAME_LEN + fill
}

/// The fill length of frame `seq` in a workload seeded with `seed`: 0 ..= [`MAX_FILL`], so
/// frames of every size travel (deterministic: both ends can recompute it).
#[must_use]
pub fn fill_for(seed: u64, seq: u64) -> u16 {
    let x = crate::tag::mix64(seed ^ seq.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    (x % (MAX_FILL as u64 + 1)) as u16
}

fn fill_byte(seq: u64, i: usize) -> u8 {
    (seq.wrapping_mul(31).wrapping_add(i as u64)) as u8
}

/// Writes numbered frame `seq` with `fill` fill bytes into the front of `out`; returns its
/// length ([`frame_len`]). Errors: [`FrameError::NoRoom`] if `out` is shorter than that or
/// `fill` exceeds [`MAX_FILL`].
pub fn encode(
    out: &mut [u8],
    dst: [u8; 6],
    src: [u8; 6],
    direction: Direction,
    seq: u64,
    fill: u16,
) -> Result<usize, FrameError> {
    let fill = usize::from(fill);
    let len = frame_len(fill);
    if fill > MAX_FILL || out.len() < len {
        return Err(FrameError::NoRoom);
    }
    let f = &mut out[..len];
    f[0..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&src);
    f[12..14].copy_from_slice(&ETHERTYPE.to_be_bytes());
    let p = &mut f[ETH_HEADER_LEN..];
    p[0..4].copy_from_slice(&MAGIC);
    p[4] = direction as u8;
    p[5] = 0;
    p[6..8].copy_from_slice(&(fill as u16).to_le_bytes());
    p[8..16].copy_from_slice(&seq.to_le_bytes());
    for (i, b) in p[PAYLOAD_HEADER_LEN..PAYLOAD_HEADER_LEN + fill]
        .iter_mut()
        .enumerate()
    {
        *b = fill_byte(seq, i);
    }
    let body = PAYLOAD_HEADER_LEN + fill;
    let crc = crc32::crc32(&p[..body]);
    p[body..body + CRC_LEN].copy_from_slice(&crc.to_le_bytes());
    Ok(len)
}

/// Parses a numbered frame from untrusted bytes: exactly one frame, no trailing bytes except
/// zero padding up to Ethernet's 60-byte minimum (a NIC may pad short frames). Never panics.
pub fn decode(frame: &[u8]) -> Result<Numbered, FrameError> {
    if frame.len() < MIN_FRAME_LEN {
        return Err(FrameError::Truncated);
    }
    if frame.len() > MAX_FRAME_LEN {
        return Err(FrameError::TooLong);
    }
    let ethertype = u16::from_be_bytes([frame[12], frame[13]]);
    if ethertype != ETHERTYPE {
        return Err(FrameError::OtherEtherType);
    }
    let p = &frame[ETH_HEADER_LEN..];
    if p[0..4] != MAGIC {
        return Err(FrameError::BadMagic);
    }
    let direction = Direction::from_byte(p[4]).ok_or(FrameError::BadHeader)?;
    if p[5] != 0 {
        return Err(FrameError::BadHeader);
    }
    let fill = u16::from_le_bytes([p[6], p[7]]);
    let body = PAYLOAD_HEADER_LEN + usize::from(fill);
    let end = body + CRC_LEN;
    if p.len() < end {
        return Err(FrameError::Truncated);
    }
    // Bytes after the CRC: only the zero padding of a frame shorter than 60 bytes.
    let padded_to = 60usize.saturating_sub(ETH_HEADER_LEN);
    if p.len() > end && (p.len() > padded_to || p[end..].iter().any(|&b| b != 0)) {
        return Err(FrameError::TooLong);
    }
    let crc = u32::from_le_bytes([p[body], p[body + 1], p[body + 2], p[body + 3]]);
    if crc32::crc32(&p[..body]) != crc {
        return Err(FrameError::BadCrc);
    }
    let mut seq_bytes = [0u8; 8];
    seq_bytes.copy_from_slice(&p[8..16]);
    let seq = u64::from_le_bytes(seq_bytes);
    let fill_ok = p[PAYLOAD_HEADER_LEN..body]
        .iter()
        .enumerate()
        .all(|(i, &b)| b == fill_byte(seq, i));
    if !fill_ok {
        return Err(FrameError::BadFill);
    }
    let mut dst = [0u8; 6];
    let mut src = [0u8; 6];
    dst.copy_from_slice(&frame[0..6]);
    src.copy_from_slice(&frame[6..12]);
    Ok(Numbered {
        dst,
        src,
        direction,
        seq,
        fill,
    })
}

/// What a receiver makes of the numbered frames of one direction: every number once, in order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SeqCheck {
    /// The next number expected (= frames received in order so far).
    pub next: u64,
    /// Frames whose number was below `next` (seen already).
    pub duplicated: u64,
    /// Frames whose number was above `next` (some were skipped: lost, or still to come out of
    /// order); `next` moves past them.
    pub reordered: u64,
    /// Numbers skipped over by a frame above `next` (a lower bound of the frames lost).
    pub skipped: u64,
    /// Frames of [`ETHERTYPE`] that were not valid numbered frames of this direction.
    pub bad: u64,
    /// Frames of another EtherType (not part of the workload: e.g. the RARP announcements QEMU
    /// sends after a migration), ignored.
    pub other: u64,
}

impl SeqCheck {
    /// Takes one received frame's number.
    pub fn take(&mut self, seq: u64) {
        if seq == self.next {
            self.next += 1;
        } else if seq < self.next {
            self.duplicated += 1;
        } else {
            self.reordered += 1;
            self.skipped += seq - self.next;
            self.next = seq + 1;
        }
    }

    /// Takes one received frame: decoded, of `direction`, and its number checked.
    pub fn take_frame(&mut self, frame: &[u8], direction: Direction) -> Result<u64, FrameError> {
        match decode(frame) {
            Ok(n) if n.direction == direction => {
                self.take(n.seq);
                Ok(n.seq)
            }
            Ok(_) => {
                self.bad += 1;
                Err(FrameError::BadHeader)
            }
            Err(FrameError::OtherEtherType) => {
                self.other += 1;
                Err(FrameError::OtherEtherType)
            }
            Err(e) => {
                self.bad += 1;
                Err(e)
            }
        }
    }

    /// Whether everything seen so far arrived once and in order.
    #[must_use]
    pub fn clean(&self) -> bool {
        self.duplicated == 0 && self.reordered == 0 && self.skipped == 0 && self.bad == 0
    }
}

/// Why a `-netdev stream` byte stream cannot be read on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamError {
    /// A length prefix of 0 or above [`MAX_STREAM_FRAME`]; the stream has no way to resync.
    BadLength(u32),
}

impl core::fmt::Display for StreamError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            StreamError::BadLength(n) => write!(f, "stream frame length {n} out of range"),
        }
    }
}

/// Reassembles frames from a `-netdev stream` byte stream. Its buffer holds one frame of at most
/// [`MAX_STREAM_FRAME`] bytes, provided by the caller (no allocation).
#[derive(Debug)]
pub struct StreamDecoder<'b> {
    buf: &'b mut [u8],
    prefix: [u8; STREAM_PREFIX_LEN],
    have_prefix: usize,
    want: usize,
    have: usize,
    failed: Option<StreamError>,
}

impl<'b> StreamDecoder<'b> {
    /// A decoder that reassembles into `buf`; a frame longer than `buf` (up to
    /// [`MAX_STREAM_FRAME`]) is rejected as [`StreamError::BadLength`].
    pub fn new(buf: &'b mut [u8]) -> Self {
        StreamDecoder {
            buf,
            prefix: [0; STREAM_PREFIX_LEN],
            have_prefix: 0,
            want: 0,
            have: 0,
            failed: None,
        }
    }

    /// Feeds bytes; calls `on_frame` with each complete frame, in order. Returns how many bytes
    /// of `data` were consumed (all of them unless the stream broke). Once it returned an error
    /// the stream is unusable and every later call returns the same error.
    pub fn push(
        &mut self,
        mut data: &[u8],
        mut on_frame: impl FnMut(&[u8]),
    ) -> Result<usize, StreamError> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        let total = data.len();
        while !data.is_empty() {
            if self.have_prefix < STREAM_PREFIX_LEN {
                let n = (STREAM_PREFIX_LEN - self.have_prefix).min(data.len());
                self.prefix[self.have_prefix..self.have_prefix + n].copy_from_slice(&data[..n]);
                self.have_prefix += n;
                data = &data[n..];
                if self.have_prefix < STREAM_PREFIX_LEN {
                    break;
                }
                let len = u32::from_be_bytes(self.prefix);
                let ok = len != 0
                    && (len as usize) <= MAX_STREAM_FRAME
                    && (len as usize) <= self.buf.len();
                if !ok {
                    let e = StreamError::BadLength(len);
                    self.failed = Some(e);
                    return Err(e);
                }
                self.want = len as usize;
                self.have = 0;
                continue;
            }
            let n = (self.want - self.have).min(data.len());
            self.buf[self.have..self.have + n].copy_from_slice(&data[..n]);
            self.have += n;
            data = &data[n..];
            if self.have == self.want {
                on_frame(&self.buf[..self.want]);
                self.have_prefix = 0;
                self.want = 0;
                self.have = 0;
            }
        }
        Ok(total - data.len())
    }

    /// Whether the decoder sits between frames (no partial prefix or frame held).
    #[must_use]
    pub fn at_boundary(&self) -> bool {
        self.failed.is_none() && self.have_prefix == 0
    }
}

/// The 4-byte length prefix of a `len`-byte frame on a `-netdev stream` socket.
#[must_use]
pub fn stream_prefix(len: usize) -> [u8; STREAM_PREFIX_LEN] {
    (len as u32).to_be_bytes()
}

#[cfg(test)]
#[path = "net_tests.rs"]
mod tests;
