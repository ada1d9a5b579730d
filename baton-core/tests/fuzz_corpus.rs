//! Replays the checked-in fuzz corpus (`fuzz/corpus/<target>/*`) through the same entry points the
//! cargo-fuzz targets use, so every seed and every fixed crash stays covered on stable.
//!
//! `cargo test -p baton-core --test fuzz_corpus -- --ignored regenerate` rewrites the seeds.
// A test fails by panicking: `unwrap` and `expect` are its assertions (the workspace denies
// them elsewhere).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use baton_core::cmdline::{GuestConfig, Role as GuestRole};
use baton_core::console::{GuestLine, SwitchKind, SwitchLine};
use baton_core::control::{MAX_FRAME_LEN, Message, Role, encode};
use baton_core::fuzz_entry::{
    fuzz_control_decoder, fuzz_guest_lines, fuzz_net_frames, fuzz_ring_entries,
};
use baton_core::net;
use baton_core::report::GuestReport;
use baton_core::ring::{
    MIN_REGION_LEN, Op, RingClient, RingLayout, SharedRegion, Submission, offsets,
};
use baton_core::stats::PortStats;
use baton_core::timeline::TimelineLine;
use std::fs;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;

fn corpus_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target)
}

fn replay(target: &str, run: fn(&[u8])) -> usize {
    let dir = corpus_dir(target);
    let mut count = 0;
    for entry in fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.is_file() {
            let data = fs::read(&path).unwrap();
            // A panic names the file through the message below.
            let result = std::panic::catch_unwind(|| run(&data));
            assert!(result.is_ok(), "{} panicked", path.display());
            count += 1;
        }
    }
    count
}

#[test]
fn replay_ring_entries() {
    assert!(replay("ring_entries", fuzz_ring_entries) >= 5);
}

#[test]
fn replay_guest_lines() {
    assert!(replay("guest_lines", fuzz_guest_lines) >= 5);
}

#[test]
fn replay_control_decoder() {
    assert!(replay("control_decoder", fuzz_control_decoder) >= 5);
}

#[test]
fn replay_net_frames() {
    assert!(replay("net_frames", fuzz_net_frames) >= 5);
}

/// A `-netdev stream` byte stream of numbered frames `seqs` (fill from the seed), chunked by the
/// first byte (`chunk - 1`).
fn net_stream(chunk: u8, seqs: &[u64], dir: net::Direction) -> Vec<u8> {
    let mut s = vec![chunk];
    for &seq in seqs {
        let mut f = [0u8; net::MAX_FRAME_LEN];
        let n = net::encode(
            &mut f,
            net::HOST_MAC,
            net::GUEST_MAC,
            dir,
            seq,
            net::fill_for(1, seq),
        )
        .unwrap();
        s.extend_from_slice(&net::stream_prefix(n));
        s.extend_from_slice(&f[..n]);
    }
    s
}

fn net_seeds() -> Vec<(String, Vec<u8>)> {
    let to_host = net::Direction::ToHost;
    let mut seeds = vec![
        ("in-order".into(), net_stream(255, &[0, 1, 2, 3], to_host)),
        ("byte-by-byte".into(), net_stream(0, &[0, 1], to_host)),
        (
            "dup-and-gap".into(),
            net_stream(16, &[0, 1, 1, 4, 2], to_host),
        ),
        (
            "wrong-direction".into(),
            net_stream(64, &[0, 1], net::Direction::ToGuest),
        ),
    ];
    let mut bad_crc = net_stream(255, &[0], to_host);
    let last = bad_crc.len() - 1;
    bad_crc[last] ^= 0xff;
    seeds.push(("bad-crc".into(), bad_crc));
    let mut zero_len = net_stream(255, &[0], to_host);
    zero_len.extend_from_slice(&[0, 0, 0, 0, 1, 2, 3]);
    seeds.push(("zero-length-then-garbage".into(), zero_len));
    let mut huge = vec![7u8];
    huge.extend_from_slice(&net::stream_prefix(70_000));
    huge.extend_from_slice(&[0xaa; 64]);
    seeds.push(("oversized".into(), huge));
    let mut other = vec![255u8];
    let mut arp = [0u8; 42];
    arp[12] = 0x08;
    arp[13] = 0x06;
    other.extend_from_slice(&net::stream_prefix(arp.len()));
    other.extend_from_slice(&arp);
    seeds.push(("other-ethertype".into(), other));
    seeds
}

fn frame(msg: Message, seq: u32) -> Vec<u8> {
    let mut buf = [0u8; MAX_FRAME_LEN];
    let n = encode(&msg, seq, &mut buf).unwrap();
    buf[..n].to_vec()
}

fn control_seeds() -> Vec<(String, Vec<u8>)> {
    let messages = [
        Message::Hello {
            role: Role::Owner,
            vm: 1,
            version: 1,
        },
        Message::Hello {
            role: Role::Peer,
            vm: 2,
            version: 1,
        },
        Message::Drained {
            completed: 1042,
            held: 17,
        },
        Message::Released { slot: 4 },
        Message::PeerReady {
            capacity_sectors: 2_097_152,
        },
        Message::Forwarding,
        Message::MigrateRequest,
        Message::Error { code: 3 },
        Message::Ack { seq: 7 },
        Message::Redirect,
        Message::RingOpened { slot: 6 },
        Message::DiskAttached { slot: 5 },
        Message::OpenPort2,
        Message::Failback,
        Message::ReleaseDisk,
        Message::Direct,
        Message::FailbackRequest,
        Message::CloseRing { slot: 6 },
        Message::PeerLost,
        Message::Abandoned {
            replay: 32,
            held: 3,
        },
        Message::TakeBack,
        Message::GiveUp,
        Message::PeerStalled { ms: 3000 },
    ];
    let mut seeds: Vec<(String, Vec<u8>)> = messages
        .iter()
        .enumerate()
        .map(|(i, m)| (format!("valid-{i:02}-{}", m.name()), frame(*m, i as u32)))
        .collect();
    let mut stream = b"boot noise\r\n\0\xff".to_vec();
    for (i, m) in messages.iter().enumerate() {
        stream.extend_from_slice(&frame(*m, 100 + i as u32));
        stream.extend_from_slice(b"~");
    }
    seeds.push(("stream-with-garbage".into(), stream));
    let full = frame(Message::Forwarding, 9);
    let mut truncated = full[..12].to_vec();
    truncated.extend_from_slice(&full);
    seeds.push(("truncated-then-valid".into(), truncated));
    let mut long = b"@baton 1 0 error ".to_vec();
    long.extend(std::iter::repeat_n(b'9', 150));
    long.extend_from_slice(b"\n");
    long.extend_from_slice(&full);
    seeds.push(("too-long-then-valid".into(), long));
    let mut bad_crc = full.clone();
    let star = bad_crc.iter().position(|&b| b == b'*').unwrap();
    bad_crc[star + 1] = if bad_crc[star + 1] == b'0' {
        b'1'
    } else {
        b'0'
    };
    seeds.push(("bad-checksum".into(), bad_crc));
    let crlf = String::from_utf8(full.clone())
        .unwrap()
        .replace('\n', "\r\n");
    seeds.push(("crlf".into(), crlf.into_bytes()));
    // Odd byte 0: lines get their checksum added by the entry point.
    let mut fixup = vec![0x01];
    for (i, m) in messages.iter().enumerate() {
        let f = frame(*m, i as u32);
        fixup.extend_from_slice(&f[..f.len() - 11]);
        fixup.push(b'\n');
    }
    seeds.push(("fixup-all-messages".into(), fixup));
    let edges = [
        "@baton 1 4294967295 drained 18446744073709551615 4294967295",
        "@baton 1 0 released 31",
        "@baton 1 0 released 32",
        "@baton 1 01 ack 1",
        "@baton 2 0 forwarding",
        "@baton 1 0 hello peer 0 0 0",
    ];
    let mut fixup = vec![0x01];
    fixup.extend_from_slice(edges.join("\n").as_bytes());
    seeds.push(("fixup-edges".into(), fixup));
    seeds.push((
        "line-without-newline".into(),
        full[..full.len() - 1].to_vec(),
    ));
    seeds
}

/// The bytes of the region's header and rings.
fn dump(words: &[AtomicU64], layout: &RingLayout) -> Vec<u8> {
    let region = SharedRegion::from_words(words);
    (0..layout.slots_offset() / 8)
        .flat_map(|i| region.read_u64(i * 8).unwrap().to_le_bytes())
        .collect()
}

fn ring_seeds() -> Vec<(String, Vec<u8>)> {
    let mut seeds = Vec::new();
    // Raw mode (even byte 0; capacity = (byte0 >> 1) * 64 sectors): a formatted, idle region.
    let words: Vec<AtomicU64> = (0..MIN_REGION_LEN / 8).map(|_| AtomicU64::new(0)).collect();
    let region = SharedRegion::from_words(&words);
    let mut client = RingClient::format(region).unwrap();
    let layout = *client.layout();
    let mut raw = vec![0x40];
    raw.extend(dump(&words, &layout));
    seeds.push(("raw-formatted-idle".into(), raw));
    // ... with three published submissions, one of them beyond the disk.
    for (id, op, lba) in [(1, Op::Write, 0), (2, Op::Read, 8), (3, Op::Read, 4096)] {
        let slot = client.reserve_slot().unwrap();
        client
            .submit(&Submission {
                op,
                id,
                lba,
                len: 4096,
                slot,
            })
            .unwrap();
    }
    let mut raw = vec![0x40];
    raw.extend(dump(&words, &layout));
    seeds.push(("raw-three-submissions".into(), raw.clone()));
    // ... and with an impossible SQ tail.
    region.write_u32(offsets::SQ_TAIL, 1000).unwrap();
    let mut raw = vec![0x40];
    raw.extend(dump(&words, &layout));
    seeds.push(("raw-index-jump".into(), raw));
    seeds.push(("raw-garbage".into(), vec![0x02, 0xde, 0xad, 0xbe, 0xef]));

    // Script mode (odd byte 0), start index, then ops (see fuzz_entry::script).
    let submit = |op: u8, lba: u16, fill: u8| {
        let mut v = vec![0, op];
        if !op.is_multiple_of(4) {
            v.extend_from_slice(&lba.to_le_bytes());
        }
        if op % 4 >= 2 {
            v.push(fill);
        }
        v
    };
    let mut script = vec![0x41];
    script.extend_from_slice(&0u32.to_le_bytes());
    for i in 0..4u8 {
        script.extend(submit(2 + (i % 2), u16::from(i) * 8, i));
    }
    script.extend(submit(0, 0, 0));
    script.extend([2, 2, 2, 2, 2]);
    script.extend([3, 0, 0, 3, 1, 1, 4, 2, 2, 3, 3, 0, 3, 4, 0]);
    script.extend([1, 8, 1]);
    seeds.push(("script-round-trip".into(), script.clone()));
    let mut wrap = vec![0x41];
    wrap.extend_from_slice(&(u32::MAX - 2).to_le_bytes());
    wrap.extend_from_slice(&script[5..]);
    wrap.extend_from_slice(&script[5..]);
    seeds.push(("script-wraparound".into(), wrap));
    // Hostile pokes: the SQ tail (offset 0xc0 = 48 * 4) and a completion entry, then polls.
    let mut hostile = script[..5].to_vec();
    hostile.extend(submit(3, 8, 1));
    hostile.extend([5, 48, 0, 0xff, 0xff, 0, 0]);
    hostile.extend([2, 2]);
    hostile.extend([
        9, 16, 0x00, 0x03, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0,
    ]);
    hostile.extend([6, 0x28, 0, 5, 0, 0, 0, 0, 0, 0, 0]);
    hostile.extend([1, 7, 0, 2, 1]);
    seeds.push(("script-hostile".into(), hostile));
    seeds
}

#[test]
#[ignore = "rewrites fuzz/corpus; run by hand"]
fn regenerate() {
    for (target, seeds) in [
        ("control_decoder", control_seeds()),
        ("ring_entries", ring_seeds()),
        ("guest_lines", guest_seeds()),
        ("net_frames", net_seeds()),
    ] {
        let dir = corpus_dir(target);
        fs::create_dir_all(&dir).unwrap();
        for (name, data) in seeds {
            fs::write(dir.join(format!("seed-{name}")), data).unwrap();
        }
    }
}

/// Console lines as the guest prints them (each seed one kind, one seed all of them with log
/// output between), printed by the same formatters the kernel uses.
fn guest_seeds() -> Vec<(String, Vec<u8>)> {
    let mut report = GuestReport::new(&GuestConfig::default());
    report.writes_submitted = 4096;
    report.writes_acked = 4095;
    report.record_write_error(17);
    let stats = PortStats {
        port: 2,
        completions: 3000,
        first_us: 120,
        last_us: 480_000,
        p50_us: 38,
        p99_us: 910,
        max_us: 4_200,
    };
    let lines = [
        (
            "ready",
            GuestLine::Ready {
                role: GuestRole::Owner,
                vm: 1,
            },
        ),
        ("first-io", GuestLine::FirstIo),
        (
            "switch",
            GuestLine::Switch(SwitchLine {
                kind: SwitchKind::Failback,
                n: 3,
                gap_us: 12_345,
            }),
        ),
        ("port-stats", GuestLine::PortStats(stats)),
        (
            "timeline",
            GuestLine::Timeline(TimelineLine::new(5, 1000, 0, &[4, 0, 0, 0, 2, 9]).unwrap()),
        ),
        ("result", GuestLine::Result(report)),
        (
            "peer-fault",
            GuestLine::PeerFault("completion for slot 3 never submitted"),
        ),
        (
            "panic",
            GuestLine::Panic("panicked at src/main.rs:1:1: boom"),
        ),
    ];
    let mut all = String::new();
    let mut seeds: Vec<(String, Vec<u8>)> = lines
        .iter()
        .map(|(name, line)| {
            all.push_str(&format!("[INFO ] log line\r\n{line}\r\n"));
            ((*name).to_string(), format!("{line}\n").into_bytes())
        })
        .collect();
    seeds.push(("all-with-log".to_string(), all.into_bytes()));
    seeds
}

#[test]
fn fixup_seed_lines_become_valid_frames() {
    let (_, seed) = control_seeds()
        .into_iter()
        .find(|(name, _)| name == "fixup-all-messages")
        .unwrap();
    let mut decoder = baton_core::control::Decoder::new();
    let mut ok = 0;
    for line in seed[1..].split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let full = format!(
            "{} *{:08x}\n",
            std::str::from_utf8(line).unwrap(),
            baton_core::crc32::crc32(line)
        );
        ok += full
            .bytes()
            .filter_map(|b| decoder.push(b))
            .filter(Result::is_ok)
            .count();
    }
    assert_eq!(ok, 23);
}

#[test]
fn seeds_run_clean() {
    for (_, data) in control_seeds() {
        fuzz_control_decoder(&data);
    }
    for (_, data) in ring_seeds() {
        fuzz_ring_entries(&data);
    }
    for (_, data) in net_seeds() {
        fuzz_net_frames(&data);
    }
}
