//! Control protocol: exact encodings, strict parsing, decoder resynchronisation, sequence
//! tracking and the shim's state check.
// A test fails by panicking: `unwrap` and `expect` are its assertions (the workspace denies
// them elsewhere).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use baton_core::control::{
    ControlError, Decoder, Frame, HandoffState, MAX_FRAME_LEN, Message, Role, SeqTracker,
    SeqVerdict, accepts, accepts_from, decode_line, encode,
};
use baton_core::crc32::crc32;

fn all_messages() -> Vec<Message> {
    vec![
        Message::Hello {
            role: Role::Owner,
            vm: 1,
            version: 1,
        },
        Message::Hello {
            role: Role::Peer,
            vm: u32::MAX,
            version: 0,
        },
        Message::Drained {
            completed: u64::MAX,
            held: u32::MAX,
        },
        Message::Released { slot: 31 },
        Message::PeerReady {
            capacity_sectors: 2048,
        },
        Message::Forwarding,
        Message::MigrateRequest,
        Message::Error { code: 7 },
        Message::Ack { seq: 0 },
        Message::Redirect,
        Message::RingOpened { slot: 5 },
        Message::DiskAttached { slot: 0 },
        Message::OpenPort2,
    ]
}

fn frame_bytes(msg: &Message, seq: u32) -> Vec<u8> {
    let mut buf = [0u8; MAX_FRAME_LEN];
    let n = encode(msg, seq, &mut buf).unwrap();
    buf[..n].to_vec()
}

/// Builds a line with a correct checksum around an arbitrary body.
fn with_crc(body: &str) -> Vec<u8> {
    format!("{body} *{:08x}\n", crc32(body.as_bytes())).into_bytes()
}

fn decode_all(bytes: &[u8]) -> Vec<Result<Frame, ControlError>> {
    let mut d = Decoder::new();
    bytes.iter().filter_map(|&b| d.push(b)).collect()
}

#[test]
fn exact_encoding() {
    let bytes = frame_bytes(
        &Message::Drained {
            completed: 1042,
            held: 17,
        },
        7,
    );
    // The example in the module docs.
    assert_eq!(bytes, b"@baton 1 7 drained 1042 17 *00199c43\n");
    assert_eq!(
        String::from_utf8(frame_bytes(
            &Message::Hello {
                role: Role::Owner,
                vm: 1,
                version: 1
            },
            0
        ))
        .unwrap(),
        format!(
            "@baton 1 0 hello owner 1 1 *{:08x}\n",
            crc32(b"@baton 1 0 hello owner 1 1")
        )
    );
}

#[test]
fn every_message_round_trips_and_fits() {
    for msg in all_messages() {
        for seq in [0, 1, u32::MAX] {
            let bytes = frame_bytes(&msg, seq);
            assert!(bytes.len() <= MAX_FRAME_LEN);
            assert_eq!(bytes.last(), Some(&b'\n'));
            let frames = decode_all(&bytes);
            assert_eq!(
                frames,
                vec![Ok(Frame {
                    version: 1,
                    seq,
                    msg
                })]
            );
            assert_eq!(
                decode_line(&bytes[..bytes.len() - 1]),
                Ok(Frame {
                    version: 1,
                    seq,
                    msg
                })
            );
        }
    }
}

#[test]
fn encode_rejects_bad_slots_and_small_buffers() {
    let mut buf = [0u8; MAX_FRAME_LEN];
    assert_eq!(
        encode(&Message::Released { slot: 32 }, 0, &mut buf),
        Err(ControlError::BadSlot)
    );
    let mut small = [0u8; 20];
    assert_eq!(
        encode(&Message::Forwarding, 0, &mut small),
        Err(ControlError::BufferTooSmall)
    );
    let n = encode(&Message::Forwarding, 0, &mut buf).unwrap();
    let mut exact = vec![0u8; n];
    assert_eq!(encode(&Message::Forwarding, 0, &mut exact), Ok(n));
}

#[test]
fn strict_parsing() {
    let cases: &[(&str, ControlError)] = &[
        (
            "@baton 2 0 forwarding",
            ControlError::BadVersion { found: 2 },
        ),
        ("@baton 01 0 forwarding", ControlError::BadNumber),
        ("@baton 1 00 forwarding", ControlError::BadNumber),
        ("@baton 1 +1 forwarding", ControlError::BadNumber),
        ("@baton 1 4294967296 forwarding", ControlError::BadNumber),
        ("@baton 1 0 forwarding 1", ControlError::WrongArity),
        ("@baton 1 0 error", ControlError::WrongArity),
        ("@baton 1 0 hello owner 1", ControlError::WrongArity),
        ("@baton 1 0 hello owner 1 1 1", ControlError::WrongArity),
        ("@baton 1 0 hello Owner 1 1", ControlError::BadRole),
        ("@baton 1 0 hello owner -1 1", ControlError::BadNumber),
        ("@baton 1 0 released 32", ControlError::BadSlot),
        (
            "@baton 1 0 ring-opened 99999999999999999999999",
            ControlError::BadNumber,
        ),
        ("@baton 1 0 Forwarding", ControlError::UnknownMessage),
        ("@baton 1 0 shutdown", ControlError::UnknownMessage),
        ("@baton 1 0  forwarding", ControlError::Syntax),
        ("@baton 1 0 forwarding ", ControlError::Syntax),
        ("@baton  1 0 forwarding", ControlError::Syntax),
        ("@batonx 1 0 forwarding", ControlError::Syntax),
        ("@baton 1 0", ControlError::Syntax),
        ("@baton", ControlError::Syntax),
        (
            "@baton 1 0 drained 1 18446744073709551616",
            ControlError::BadNumber,
        ),
        (
            "@baton 1 0 drained 18446744073709551616 1",
            ControlError::BadNumber,
        ),
    ];
    for (body, error) in cases {
        let line = with_crc(body);
        assert_eq!(decode_all(&line), vec![Err(*error)], "{body}");
    }
    // Largest values are fine.
    let line = with_crc("@baton 1 4294967295 peer-ready 18446744073709551615");
    assert_eq!(
        decode_line(line.strip_suffix(b"\n").unwrap()),
        Ok(Frame {
            version: 1,
            seq: u32::MAX,
            msg: Message::PeerReady {
                capacity_sectors: u64::MAX
            }
        })
    );
}

#[test]
fn checksum_and_trailer_are_strict() {
    let good = frame_bytes(&Message::Redirect, 3);
    let text = String::from_utf8(good.clone()).unwrap();
    // Uppercase hex.
    let upper = text
        .to_uppercase()
        .replace("@BATON 1 3 REDIRECT", "@baton 1 3 redirect");
    if upper != text {
        assert_eq!(
            decode_all(upper.as_bytes()),
            vec![Err(ControlError::Syntax)]
        );
    }
    // A changed body.
    let changed = text.replace("redirect", "rediRect");
    assert!(matches!(
        decode_all(changed.as_bytes())[..],
        [Err(ControlError::BadChecksum { .. })]
    ));
    // A missing checksum, a short one, a missing star.
    assert_eq!(
        decode_all(b"@baton 1 3 redirect\n"),
        vec![Err(ControlError::Syntax)]
    );
    let crc = &text[text.len() - 9..text.len() - 1];
    let short = format!("@baton 1 3 redirect *{}\n", &crc[1..]);
    assert_eq!(
        decode_all(short.as_bytes()),
        vec![Err(ControlError::Syntax)]
    );
    let long = format!("@baton 1 3 redirect *0{crc}\n");
    assert_eq!(decode_all(long.as_bytes()), vec![Err(ControlError::Syntax)]);
    let nostar = text.replace(" *", "  ");
    assert_eq!(
        decode_all(nostar.as_bytes()),
        vec![Err(ControlError::Syntax)]
    );
    // Carriage return before the newline.
    let crlf = text.replace('\n', "\r\n");
    assert_eq!(
        decode_all(crlf.as_bytes()),
        vec![Err(ControlError::BadByte { byte: b'\r' })]
    );
}

#[test]
fn decoder_skips_garbage_and_resynchronises() {
    let a = frame_bytes(&Message::Forwarding, 1);
    let b = frame_bytes(&Message::Ack { seq: 1 }, 9);
    let mut stream = b"\0\xff garbage\n\n".to_vec();
    stream.extend_from_slice(&a);
    stream.extend_from_slice(b"noise between frames");
    stream.extend_from_slice(&b);
    let mut d = Decoder::new();
    let out: Vec<_> = stream.iter().filter_map(|&x| d.push(x)).collect();
    assert_eq!(
        out,
        vec![
            Ok(Frame {
                version: 1,
                seq: 1,
                msg: Message::Forwarding
            }),
            Ok(Frame {
                version: 1,
                seq: 9,
                msg: Message::Ack { seq: 1 }
            }),
        ]
    );
    assert_eq!(d.skipped(), 12 + 20);
}

#[test]
fn decoder_reports_a_truncated_frame_and_keeps_the_next() {
    // The first frame lost its tail (bytes dropped while the host was not connected).
    let a = frame_bytes(&Message::MigrateRequest, 4);
    let b = frame_bytes(&Message::MigrateRequest, 5);
    let mut stream = a[..15].to_vec();
    stream.extend_from_slice(&b);
    assert_eq!(
        decode_all(&stream),
        vec![
            Err(ControlError::Truncated),
            Ok(Frame {
                version: 1,
                seq: 5,
                msg: Message::MigrateRequest
            })
        ]
    );
    // Lost head: the tail alone is skipped silently.
    let mut stream = a[10..].to_vec();
    stream.extend_from_slice(&b);
    assert_eq!(decode_all(&stream).len(), 1);
}

#[test]
fn decoder_enforces_the_length_limit() {
    let mut long = b"@baton 1 0 error ".to_vec();
    long.extend(std::iter::repeat_n(b'9', 200));
    long.push(b'\n');
    let next = frame_bytes(&Message::Error { code: 3 }, 1);
    long.extend_from_slice(&next);
    assert_eq!(
        decode_all(&long),
        vec![
            Err(ControlError::TooLong),
            Ok(Frame {
                version: 1,
                seq: 1,
                msg: Message::Error { code: 3 }
            })
        ]
    );
    // Exactly MAX_FRAME_LEN bytes including the newline is allowed by the decoder (the frame
    // itself is then rejected by the parser for its content, not its length).
    let mut exact = b"@".to_vec();
    exact.extend(std::iter::repeat_n(b'x', MAX_FRAME_LEN - 2));
    exact.push(b'\n');
    assert_eq!(decode_all(&exact), vec![Err(ControlError::Syntax)]);
    let mut over = b"@".to_vec();
    over.extend(std::iter::repeat_n(b'x', MAX_FRAME_LEN - 1));
    over.push(b'\n');
    assert_eq!(decode_all(&over), vec![Err(ControlError::TooLong)]);
    assert_eq!(
        decode_line(&over[..over.len() - 1]),
        Err(ControlError::TooLong)
    );
}

#[test]
fn seq_tracker_for_retransmits() {
    let mut t = SeqTracker::new();
    assert_eq!(t.check(41), SeqVerdict::New);
    assert_eq!(t.check(41), SeqVerdict::Duplicate);
    assert_eq!(t.check(42), SeqVerdict::New);
    assert_eq!(t.check(44), SeqVerdict::Unexpected);
    assert_eq!(t.check(45), SeqVerdict::New);
    let mut t = SeqTracker::new();
    assert_eq!(t.check(u32::MAX), SeqVerdict::New);
    assert_eq!(t.check(0), SeqVerdict::New);
}

#[test]
fn the_handoff_in_order_is_accepted() {
    use HandoffState as S;
    let owner = |s, m| accepts_from(Role::Owner, s, &m);
    let peer = |s, m| accepts_from(Role::Peer, s, &m);
    let hello_o = Message::Hello {
        role: Role::Owner,
        vm: 1,
        version: 1,
    };
    let hello_p = Message::Hello {
        role: Role::Peer,
        vm: 2,
        version: 1,
    };
    assert!(owner(S::Booting, hello_o));
    assert!(peer(S::Direct, hello_p));
    assert!(
        !owner(S::Booting, hello_p),
        "a guest claims its own role only"
    );
    assert!(owner(S::Direct, Message::MigrateRequest));
    let drained = Message::Drained {
        completed: 10,
        held: 2,
    };
    assert!(owner(S::Redirecting, drained));
    assert!(!peer(S::Redirecting, drained));
    assert!(owner(S::Drained, Message::Released { slot: 4 }));
    let ready = Message::PeerReady {
        capacity_sectors: 8,
    };
    assert!(peer(S::Released, ready));
    assert!(!owner(S::Released, ready));
    assert!(owner(S::PeerReady, Message::Forwarding));

    // The state walk.
    let mut s = S::Redirecting;
    for m in [
        drained,
        Message::Released { slot: 4 },
        ready,
        Message::Forwarding,
    ] {
        s = s.after(&m).unwrap();
    }
    assert_eq!(s, S::Forwarding);
    assert_eq!(s.after(&Message::Error { code: 1 }), Some(S::Failed));
}

#[test]
fn messages_in_the_wrong_state_are_rejected() {
    use HandoffState as S;
    let states = [
        S::Booting,
        S::Direct,
        S::Redirecting,
        S::Drained,
        S::Released,
        S::PeerReady,
        S::Forwarding,
        S::Migrating,
        S::Failed,
    ];
    for state in states {
        for msg in all_messages() {
            let ok = accepts(state, &msg);
            if !msg.sent_by_guest() {
                assert!(!ok, "{msg:?} never comes from a guest");
                assert!(msg.sent_by_shim());
                continue;
            }
            let expected = match msg {
                Message::Ack { .. } | Message::Error { .. } => true,
                Message::Hello { .. } => matches!(state, S::Booting | S::Direct),
                Message::MigrateRequest => state == S::Direct,
                Message::Drained { .. } => state == S::Redirecting,
                Message::Released { .. } => state == S::Drained,
                Message::PeerReady { .. } => state == S::Released,
                Message::Forwarding => state == S::PeerReady,
                _ => unreachable!(),
            };
            assert_eq!(ok, expected, "{msg:?} in {state:?}");
        }
    }
    assert!(!Message::Ack { seq: 1 }.needs_ack());
    assert!(Message::Forwarding.needs_ack());
}

#[test]
fn errors_have_messages() {
    for e in [
        ControlError::BufferTooSmall,
        ControlError::TooLong,
        ControlError::Truncated,
        ControlError::BadByte { byte: 0 },
        ControlError::Syntax,
        ControlError::BadChecksum {
            computed: 1,
            found: 2,
        },
        ControlError::BadVersion { found: 2 },
        ControlError::BadNumber,
        ControlError::UnknownMessage,
        ControlError::WrongArity,
        ControlError::BadRole,
        ControlError::BadSlot,
    ] {
        assert!(!e.to_string().is_empty());
    }
}
