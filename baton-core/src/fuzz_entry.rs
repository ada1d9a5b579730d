//! Entry points shared by the cargo-fuzz targets (`fuzz/`) and the corpus replay test
//! (`tests/fuzz_corpus.rs`). Each takes arbitrary bytes, must never panic on them, and asserts the
//! invariants the parsers promise; a panic here is a bug found.
//!
//! Not part of the API.

use core::sync::atomic::{AtomicU64, Ordering};

use crate::control::{
    self, Decoder, Endpoint, Event, HandoffGate, HandoffState, MAX_FRAME_LEN, Received, Role,
    SeqTracker, Side,
};
use crate::ring::{
    self, MAX_SLOTS, MIN_REGION_LEN, Op, RingClient, RingError, RingServer, SECTOR_SIZE, SLOT_SIZE,
    SharedRegion, Status, Submission,
};

const WORDS: usize = MIN_REGION_LEN / 8;
const SLOTS: usize = MAX_SLOTS as usize;

/// Bytes a slot copy moves, except for the region's last slot (see [`copy_len`]).
///
/// Every check a slot copy makes before it moves data (slot index, slot state, ownership, length)
/// is the same for any length up to [`SLOT_SIZE`], and no invariant here looks at the data; only
/// the word-by-word copy itself grows with the length, and under the fuzzer's instrumentation a
/// 4 KiB copy cost more than everything else in an input.
const PROBE_LEN: usize = 64;

/// How many bytes to copy to or from `slot`: the whole slot for the last one (the copy that ends
/// at the region's last byte, so the region's bound is still reached), [`PROBE_LEN`] otherwise.
fn copy_len(slot: u32, slot_count: u32) -> usize {
    if slot.checked_add(1) == Some(slot_count) {
        SLOT_SIZE
    } else {
        PROBE_LEN
    }
}

/// Reads fuzz input bytes; yields zeroes once exhausted.
struct Input<'d> {
    data: &'d [u8],
}

impl Input<'_> {
    fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.byte(), self.byte()])
    }

    fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.byte(), self.byte(), self.byte(), self.byte()])
    }

    fn u64(&mut self) -> u64 {
        u64::from(self.u32()) | (u64::from(self.u32()) << 32)
    }
}

/// Copies `bytes` over the region's words starting at byte `offset` (8-aligned; a last partial
/// word is zero-padded), stopping at the region's end.
///
/// These are the hostile writes, so they go straight to the words (as another guest's stores
/// would) rather than through [`SharedRegion`]'s checked accessors, which cost several
/// instrumented comparisons per word under the fuzzer.
fn splat(words: &[AtomicU64], offset: usize, bytes: &[u8]) {
    let dst = words.get(offset / 8..).unwrap_or_default();
    for (word, chunk) in dst.iter().zip(bytes.chunks(8)) {
        let mut le = [0u8; 8];
        let n = chunk.len().min(8);
        if let (Some(d), Some(s)) = (le.get_mut(..n), chunk.get(..n)) {
            d.copy_from_slice(s);
        }
        word.store(u64::from_le_bytes(le), Ordering::Relaxed);
    }
}

/// Checks what the server promises about an accepted submission.
fn check_submission(sub: &Submission, server: &RingServer<'_>, capacity: u64) {
    assert!(sub.slot < server.layout().slot_count());
    match sub.op {
        Op::Flush => assert!(sub.len == 0 && sub.lba == 0),
        Op::Read | Op::Write => {
            assert_eq!(sub.len as usize, SLOT_SIZE);
            let end = sub.lba.checked_add(u64::from(sub.len) / SECTOR_SIZE);
            assert!(end.is_some_and(|end| end <= capacity));
        }
    }
    assert!(server.in_flight() <= server.layout().slot_count());
}

/// Server-side loop over whatever the region holds: accept, touch the slot, complete.
fn serve(region: SharedRegion<'_>, capacity: u64) {
    let Ok(mut server) = RingServer::attach(region, capacity) else {
        return;
    };
    let mut block = [0u8; SLOT_SIZE];
    for _ in 0..2 * SLOTS + 4 {
        let Some(result) = server.poll_submission() else {
            break;
        };
        let Ok(sub) = result else {
            continue;
        };
        check_submission(&sub, &server, capacity);
        let len = copy_len(sub.slot, server.layout().slot_count());
        let chunk = block.get_mut(..len).unwrap_or_default();
        let _ = server.read_slot(&sub, chunk);
        let _ = server.write_slot(&sub, chunk);
        let _ = server.complete(&sub, Status::Ok);
    }
    if server.fault().is_some() {
        assert!(server.poll_submission().is_none());
    }
}

/// The owner's record of what it submitted, to check completions against.
struct Expected {
    ids: [Option<u64>; SLOTS],
}

impl Expected {
    fn submitted(&mut self, slot: u32, id: u64) {
        if let Some(e) = self.ids.get_mut(slot as usize) {
            *e = Some(id);
        }
    }

    fn completed(&mut self, slot: u32, id: u64) {
        let entry = self.ids.get_mut(slot as usize);
        assert!(
            entry.as_ref().is_some_and(|e| **e == Some(id)),
            "completion for a request that was not in flight"
        );
        if let Some(e) = entry {
            *e = None;
        }
    }
}

/// Client-side loop: consume whatever completions the region holds.
fn consume(client: &mut RingClient<'_>, expected: &mut Expected) {
    let mut buf = [0u8; 64];
    for _ in 0..2 * SLOTS + 4 {
        let Some(result) = client.poll_completion() else {
            break;
        };
        let Ok(c) = result else {
            assert!(client.fault().is_some());
            assert!(client.poll_completion().is_none());
            break;
        };
        expected.completed(c.slot, c.id);
        let _ = client.read_slot(c.slot, &mut buf);
        let _ = client.release_slot(c.slot);
    }
}

/// Arbitrary bytes as a ring region, and as a script of client/server actions interleaved with
/// hostile writes to the region.
///
/// Byte 0 selects the mode. Even: the rest is copied over a region and a server attaches and
/// polls it; then the region is formatted, a few requests are submitted, the rest is copied over
/// everything after the magic and version, and both sides poll. Odd: the rest is a script.
pub fn fuzz_ring_entries(data: &[u8]) {
    let words = [const { AtomicU64::new(0) }; WORDS];
    let region = SharedRegion::from_words(&words);
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let capacity = u64::from(mode >> 1) * 64;
    if mode & 1 == 0 {
        splat(&words, 0, rest);
        serve(region, capacity);

        let Ok(mut client) = RingClient::format(region) else {
            return;
        };
        let mut expected = Expected { ids: [None; SLOTS] };
        for id in 0..8u64 {
            let Ok(slot) = client.reserve_slot() else {
                break;
            };
            let sub = Submission {
                op: Op::Read,
                id,
                lba: id * 8,
                len: SLOT_SIZE as u32,
                slot,
            };
            if client.submit(&sub).is_ok() {
                expected.submitted(slot, id);
            }
        }
        splat(&words, ring::offsets::OWNER_STATE, rest);
        consume(&mut client, &mut expected);
        serve(region, capacity);
        consume(&mut client, &mut expected);
    } else {
        script(&words, capacity, rest);
    }
}

fn script(words: &[AtomicU64], capacity: u64, data: &[u8]) {
    let region = SharedRegion::from_words(words);
    let mut input = Input { data };
    let start = input.u32();
    let Ok(mut client) = RingClient::format_at(region, start) else {
        return;
    };
    let Ok(mut server) = RingServer::attach(region, capacity) else {
        return;
    };
    let layout = *client.layout();
    let mut expected = Expected { ids: [None; SLOTS] };
    let mut pending: [Option<Submission>; SLOTS] = [None; SLOTS];
    let mut next_id = 0u64;
    let mut page = [0u8; SLOT_SIZE];
    let mut steps = 0u32;
    // Set when `reserve_slot` found every slot taken. Only the client's own calls in ops 1 and 7
    // give slots back (op 8 is counted too, to be safe), so until one runs another reservation
    // would scan all the slots again for the same answer: skip it.
    let mut no_free_slot = false;
    while !input.is_empty() && steps < 4096 {
        steps += 1;
        match input.byte() % 10 {
            0 => {
                if no_free_slot {
                    continue;
                }
                let slot = match client.reserve_slot() {
                    Ok(slot) => slot,
                    Err(e) => {
                        no_free_slot = matches!(e, RingError::NoFreeSlot);
                        continue;
                    }
                };
                let op = match input.byte() % 4 {
                    0 => Op::Flush,
                    1 => Op::Read,
                    _ => Op::Write,
                };
                let (lba, len) = match op {
                    Op::Flush => (0, 0),
                    _ => (u64::from(input.u16()), SLOT_SIZE as u32),
                };
                if op == Op::Write {
                    let chunk = page
                        .get_mut(..copy_len(slot, layout.slot_count()))
                        .unwrap_or_default();
                    chunk.fill(input.byte());
                    let _ = client.write_slot(slot, chunk);
                }
                let sub = Submission {
                    op,
                    id: next_id,
                    lba,
                    len,
                    slot,
                };
                if client.submit(&sub).is_ok() {
                    expected.submitted(slot, next_id);
                    next_id += 1;
                } else {
                    let _ = client.release_slot(slot);
                }
            }
            1 => {
                no_free_slot = false;
                consume(&mut client, &mut expected);
            }
            2 => {
                if let Some(Ok(sub)) = server.poll_submission() {
                    check_submission(&sub, &server, capacity);
                    if let Some(p) = pending.iter_mut().find(|p| p.is_none()) {
                        *p = Some(sub);
                    }
                }
            }
            3 | 4 => {
                let which = usize::from(input.byte()) % SLOTS;
                let status =
                    Status::from_raw(u32::from(input.byte() % 4) + 1).unwrap_or(Status::Ok);
                if let Some(p) = pending.get_mut(which)
                    && let Some(sub) = *p
                {
                    let len = copy_len(sub.slot, layout.slot_count());
                    let chunk = page.get_mut(..len).unwrap_or_default();
                    if sub.op == Op::Read {
                        let _ = server.write_slot(&sub, chunk);
                    } else if sub.op == Op::Write {
                        let _ = server.read_slot(&sub, chunk);
                    }
                    if server.complete(&sub, status).is_ok() {
                        *p = None;
                    }
                }
            }
            5 => {
                let offset = (usize::from(input.u16()) * 4) % layout.slots_offset();
                let _ = region.write_u32(offset, input.u32());
            }
            6 => {
                let offset = (usize::from(input.u16()) * 8) % layout.slots_offset();
                let _ = region.write_u64(offset, input.u64());
            }
            7 => {
                no_free_slot = false;
                if client.fault().is_some() {
                    client.abandon(|_| {});
                    expected.ids = [None; SLOTS];
                }
            }
            8 => {
                no_free_slot = false;
                client.heartbeat();
                server.heartbeat();
                let _ = (client.peer_state(), server.owner_state());
                let _ = (client.peer_heartbeat(), server.owner_heartbeat());
            }
            _ => {
                // A raw burst over the rings (entries and indices are fair game).
                let len = usize::from(input.byte());
                let offset = (usize::from(input.u16()) * 8) % layout.slots_offset();
                let (burst, rest) = input.data.split_at(len.min(input.data.len()));
                splat(words, offset, burst);
                input.data = rest;
            }
        }
        assert!(client.in_flight() <= layout.slot_count());
        assert!(server.in_flight() <= layout.slot_count());
    }
}

/// Feeds bytes to a [`Decoder`] and to a shim-side [`Endpoint`], and checks every frame they
/// accept.
struct Feeder {
    decoder: Decoder,
    seqs: SeqTracker,
    endpoint: Endpoint<4>,
    gate: HandoffGate,
    /// The fuzzer's clock for the endpoint's retransmissions, in microseconds.
    now_us: u64,
    /// The bytes since the last `@` (the frame being received).
    current: [u8; MAX_FRAME_LEN],
    current_len: usize,
    accepted: u32,
    /// The last distinct messages whose transition-table checks ran in this input (see
    /// [`Feeder::check_table`]).
    checked: [Option<control::Message>; CHECKED_MESSAGES],
    checked_next: usize,
}

/// How many distinct messages [`Feeder`] remembers as already checked against the table.
const CHECKED_MESSAGES: usize = 8;

impl Feeder {
    fn new() -> Feeder {
        let mut endpoint = Endpoint::new(Side::Shim, 1_000);
        // One message outstanding, so acks in the input have something to match.
        let _ = endpoint.send(control::Message::Redirect);
        Feeder {
            decoder: Decoder::new(),
            seqs: SeqTracker::new(),
            endpoint,
            gate: HandoffGate::new(1, 2),
            now_us: 0,
            current: [0; MAX_FRAME_LEN],
            current_len: 0,
            accepted: 0,
            checked: [None; CHECKED_MESSAGES],
            checked_next: 0,
        }
    }

    fn feed(&mut self, byte: u8) {
        self.feed_endpoint(byte);
        if byte == b'@' {
            self.current_len = 0;
        }
        if let Some(slot) = self.current.get_mut(self.current_len) {
            *slot = byte;
        }
        self.current_len = self.current_len.saturating_add(1);
        let Some(Ok(frame)) = self.decoder.push(byte) else {
            return;
        };
        self.accepted += 1;
        let mut out = [0u8; MAX_FRAME_LEN];
        let n = control::encode(&frame.msg, frame.seq, &mut out)
            .unwrap_or_else(|e| panic!("decoded frame does not re-encode: {e}"));
        assert_eq!(
            out.get(..n),
            self.current.get(..self.current_len),
            "accepted a non-canonical frame"
        );
        let _ = self.seqs.check(frame.seq);
        self.check_table(frame.msg);
    }

    /// [`control::step`] and [`control::accepts_from`] agree on `msg` from either guest in every
    /// state, and [`HandoffState::after`] takes it without panicking.
    ///
    /// These are pure functions of the message and the state, so a message equal to one already
    /// checked in this input is skipped: the check costs 14 states x 2 senders x 3 table scans,
    /// and the fuzzer's inputs often repeat a frame.
    fn check_table(&mut self, msg: control::Message) {
        if self.checked.contains(&Some(msg)) {
            return;
        }
        for state in HandoffState::ALL {
            for from in [Role::Owner, Role::Peer] {
                let stepped = control::step(state, Event::Guest { from, msg });
                assert_eq!(stepped.is_ok(), control::accepts_from(from, state, &msg));
            }
            let _ = state.after(&msg);
        }
        if let Some(slot) = self.checked.get_mut(self.checked_next) {
            *slot = Some(msg);
        }
        self.checked_next = (self.checked_next + 1) % CHECKED_MESSAGES;
    }

    /// The endpoint must count what it is fed, hand out only frames that decode, and deliver
    /// only messages a guest may send.
    fn feed_endpoint(&mut self, byte: u8) {
        let before = self.endpoint.stats();
        let Some(received) = self.endpoint.push(byte) else {
            return;
        };
        let after = self.endpoint.stats();
        match received {
            Received::Message { msg, .. } => {
                assert!(msg.sent_by_guest());
                let from = if self.accepted.is_multiple_of(2) {
                    Role::Owner
                } else {
                    Role::Peer
                };
                let state = self.gate.state();
                if self.gate.offer(from, &msg).is_err() {
                    assert_eq!(self.gate.state(), state, "a rejection moved the handoff");
                }
            }
            Received::Bad(_) => assert_eq!(after.bad_frames, before.bad_frames + 1),
            Received::Duplicate { .. } => assert_eq!(after.duplicates, before.duplicates + 1),
            Received::StrayAck { .. } => assert_eq!(after.stray_acks, before.stray_acks + 1),
            Received::Acked { .. } => assert!(self.endpoint.idle()),
        }
        self.now_us = self.now_us.saturating_add(u64::from(byte));
        let mut out = [0u8; MAX_FRAME_LEN];
        let mut frames = 0;
        while let Some(n) = self.endpoint.poll_transmit(self.now_us, &mut out) {
            let line = out.get(..n.saturating_sub(1)).unwrap_or_default();
            assert!(
                control::decode_line(line).is_ok(),
                "sent an undecodable frame"
            );
            frames += 1;
            assert!(frames <= control::ACK_BACKLOG + 1, "transmit did not stop");
        }
    }
}

/// Arbitrary bytes through the control [`Decoder`] (and [`control::decode_line`]).
///
/// If byte 0 is odd, the rest is split at newlines and each line gets a correct ` *<crc>`
/// trailer before it is fed, so the fuzzer reaches the grammar behind the checksum; otherwise
/// (every seed starting with `@`) all bytes are fed as they are.
///
/// The same bytes also go to a shim-side [`Endpoint`] whose accepted messages are offered to a
/// [`HandoffGate`].
///
/// Invariants: no panic; every accepted frame is exactly the canonical encoding of what it
/// decoded to (the parser is strict) and fits [`MAX_FRAME_LEN`]; [`control::step`] and
/// [`control::accepts_from`] agree; the endpoint counts what it reports, delivers only guest
/// messages and sends only frames that decode; a rejected message leaves the handoff's state.
pub fn fuzz_control_decoder(data: &[u8]) {
    let mut feeder = Feeder::new();
    match data.split_first() {
        Some((&mode, rest)) if mode & 1 == 1 => {
            for line in rest.split(|&b| b == b'\n') {
                for &b in line {
                    feeder.feed(b);
                }
                let mut hex = [0u8; 8];
                let crc = crate::crc32::crc32(line);
                for (i, h) in hex.iter_mut().enumerate() {
                    let nibble = (crc >> (28 - 4 * i)) & 0xf;
                    *h = b"0123456789abcdef"
                        .get(nibble as usize)
                        .copied()
                        .unwrap_or(b'0');
                }
                for &b in b" *".iter().chain(hex.iter()).chain(b"\n") {
                    feeder.feed(b);
                }
            }
        }
        _ => {
            for &b in data {
                feeder.feed(b);
            }
        }
    }
    let mut out = [0u8; MAX_FRAME_LEN];
    if let Ok(frame) = control::decode_line(data) {
        let n = control::encode(&frame.msg, frame.seq, &mut out).unwrap_or(0);
        assert_eq!(out.get(..n.saturating_sub(1)), Some(data));
    }
}

/// A `core::fmt::Write` into a fixed buffer; reports overflow instead of panicking.
struct LineBuf {
    buf: [u8; GUEST_LINE_BUF],
    len: usize,
}

const GUEST_LINE_BUF: usize = 2048;

impl core::fmt::Write for LineBuf {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let end = self.len.checked_add(s.len()).ok_or(core::fmt::Error)?;
        let dst = self.buf.get_mut(self.len..end).ok_or(core::fmt::Error)?;
        dst.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// Arbitrary bytes through the guest's console-line parser ([`crate::console::GuestLine::parse`]),
/// one line per `\n`-separated piece that is UTF-8 (the shim reads COM1 the same way).
///
/// Invariants: no panic; every line that parses prints back (its `Display`) as a line that parses
/// to the same value (the formatter and the parser agree, so what the guest prints the shim reads).
pub fn fuzz_guest_lines(data: &[u8]) {
    use core::fmt::Write;
    for piece in data.split(|&b| b == b'\n') {
        let Ok(line) = core::str::from_utf8(piece) else {
            continue;
        };
        let Some(Ok(parsed)) = crate::console::GuestLine::parse(line) else {
            continue;
        };
        let mut out = LineBuf {
            buf: [0; GUEST_LINE_BUF],
            len: 0,
        };
        if write!(out, "{parsed}").is_err() {
            continue;
        }
        let printed = out
            .buf
            .get(..out.len)
            .and_then(|b| core::str::from_utf8(b).ok());
        let Some(printed) = printed else {
            panic!("a guest line printed as invalid UTF-8: {parsed:?}");
        };
        match crate::console::GuestLine::parse(printed) {
            Some(Ok(again)) => assert_eq!(again, parsed, "{printed:?} parsed differently"),
            other => panic!("{printed:?} (printed from {parsed:?}) does not parse: {other:?}"),
        }
    }
}

/// Arbitrary bytes as a `-netdev stream` socket's byte stream (issue 11): the first input byte
/// sets the chunk size the stream arrives in (1..=256), the rest is the stream. Every frame the
/// [`crate::net::StreamDecoder`] puts out is at most its buffer, goes through
/// [`crate::net::decode`] and a [`crate::net::SeqCheck`]; a frame that decodes re-encodes to the
/// same bytes, and the check's counts add up to the frames seen.
pub fn fuzz_net_frames(data: &[u8]) {
    use crate::net::{self, Direction, SeqCheck, StreamDecoder};
    let Some((&chunk, stream)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk) + 1;
    let mut buf = [0u8; 2048];
    let mut dec = StreamDecoder::new(&mut buf);
    let mut check = SeqCheck::default();
    let mut frames = 0u64;
    let mut good = 0u64;
    for piece in stream.chunks(chunk) {
        let r = dec.push(piece, |f| {
            assert!(!f.is_empty() && f.len() <= 2048);
            frames += 1;
            if check.take_frame(f, Direction::ToHost).is_ok() {
                good += 1;
                let n = net::decode(f).unwrap_or_else(|e| panic!("decoded once, then {e}"));
                let mut again = [0u8; net::MAX_FRAME_LEN];
                let len = net::encode(&mut again, n.dst, n.src, n.direction, n.seq, n.fill)
                    .unwrap_or_else(|e| panic!("a decoded frame does not encode: {e}"));
                assert_eq!(&f[..len], &again[..len]);
            }
        });
        match r {
            Ok(n) => assert_eq!(n, piece.len()),
            Err(_) => {
                // Broken for good: the next push says so too.
                assert!(
                    dec.push(piece, |_| panic!("a frame after the break"))
                        .is_err()
                );
                break;
            }
        }
    }
    assert_eq!(check.bad + check.other + good, frames);
}
