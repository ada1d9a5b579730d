//! The control channel's endpoint, both sides at once: acks, retransmission, de-duplication,
//! counters, a new transport, and (property) exactly-once in-order delivery over a link that
//! drops, duplicates and corrupts frames.
// A test fails by panicking: `unwrap` and `expect` are its assertions (the workspace denies
// them elsewhere).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use baton_core::control::{
    ACK_BACKLOG, BadFrame, ControlError, Endpoint, MAX_FRAME_LEN, Message, MessageKind, Received,
    Role, SendError, Side, decode_line, encode,
};
use proptest::collection::vec;
use proptest::prelude::*;

const RETRANSMIT_US: u64 = 200_000;

type Guest = Endpoint<16>;
type Shim = Endpoint<32>;

/// Everything `ep` has to send at `now_us`, as frames (newline included).
fn drain<const Q: usize>(ep: &mut Endpoint<Q>, now_us: u64) -> Vec<Vec<u8>> {
    let mut out = [0u8; MAX_FRAME_LEN];
    let mut frames = Vec::new();
    while let Some(n) = ep.poll_transmit(now_us, &mut out) {
        frames.push(out[..n].to_vec());
        assert!(frames.len() < 100, "poll_transmit does not stop");
    }
    frames
}

/// Feeds `bytes` to `ep`; returns what it reported.
fn feed<const Q: usize>(ep: &mut Endpoint<Q>, bytes: &[u8]) -> Vec<Received> {
    bytes.iter().filter_map(|&b| ep.push(b)).collect()
}

fn messages(r: &[Received]) -> Vec<Message> {
    r.iter()
        .filter_map(|r| match r {
            Received::Message { msg, .. } => Some(*msg),
            _ => None,
        })
        .collect()
}

fn decoded(frame: &[u8]) -> (u32, Message) {
    let f = decode_line(&frame[..frame.len() - 1]).unwrap();
    (f.seq, f.msg)
}

#[test]
fn one_frame_outstanding_retransmitted_until_acked() {
    let mut shim = Shim::new(Side::Shim, RETRANSMIT_US);
    shim.send(Message::Redirect).unwrap();
    shim.send(Message::RingOpened { slot: 6 }).unwrap();
    assert_eq!(shim.queued(), 2);
    let first = drain(&mut shim, 1_000);
    assert_eq!(first.len(), 1, "one frame at a time");
    assert_eq!(decoded(&first[0]), (1, Message::Redirect));
    assert_eq!(shim.retransmit_due_us(), Some(1_000 + RETRANSMIT_US));
    assert!(drain(&mut shim, 1_000 + RETRANSMIT_US - 1).is_empty());
    let again = drain(&mut shim, 1_000 + RETRANSMIT_US);
    assert_eq!(again, first, "retransmitted unchanged");
    assert_eq!(shim.stats().sent, 1);
    assert_eq!(shim.stats().retransmits, 1);

    // The guest acknowledges; the shim's next frame carries the next number.
    let mut guest = Guest::new(Side::Guest, RETRANSMIT_US);
    let got = feed(&mut guest, &first[0]);
    assert_eq!(messages(&got), [Message::Redirect]);
    let got = feed(&mut guest, &again[0]);
    assert_eq!(got, [Received::Duplicate { seq: 1 }]);
    assert_eq!(guest.stats().duplicates, 1);
    let acks = drain(&mut guest, 0);
    assert_eq!(acks.len(), 2, "a duplicate is acknowledged again");
    assert_eq!(decoded(&acks[0]), (0, Message::Ack { seq: 1 }));
    assert_eq!(feed(&mut shim, &acks[0]), [Received::Acked { seq: 1 }]);
    assert_eq!(feed(&mut shim, &acks[1]), [Received::StrayAck { seq: 1 }]);
    assert_eq!(shim.stats().stray_acks, 1);
    let next = drain(&mut shim, 2_000_000);
    assert_eq!(decoded(&next[0]), (2, Message::RingOpened { slot: 6 }));
    assert_eq!(shim.stats().frames_in, 2);
    assert!(!shim.idle());
}

#[test]
fn send_refuses_what_cannot_go() {
    let mut guest = Endpoint::<2>::new(Side::Guest, RETRANSMIT_US);
    assert_eq!(
        guest.send(Message::OpenPort2),
        Err(SendError::WrongSide(MessageKind::OpenPort2))
    );
    assert_eq!(
        guest.send(Message::Released { slot: 32 }),
        Err(SendError::Encode(ControlError::BadSlot))
    );
    guest.send(Message::hello(Role::Owner, 1)).unwrap();
    guest.send(Message::MigrateRequest).unwrap();
    assert_eq!(guest.send(Message::Forwarding), Err(SendError::QueueFull));
    assert_eq!(guest.queued(), 2);
    let mut shim = Shim::new(Side::Shim, RETRANSMIT_US);
    assert_eq!(
        shim.send(Message::Forwarding),
        Err(SendError::WrongSide(MessageKind::Forwarding))
    );
    assert_eq!(shim.send(Message::Ack { seq: 3 }), Err(SendError::Ack));
    assert!(shim.idle());
}

#[test]
fn wrong_direction_and_garbage_are_counted_and_acknowledged() {
    let mut shim = Shim::new(Side::Shim, RETRANSMIT_US);
    let mut buf = [0u8; MAX_FRAME_LEN];
    let n = encode(&Message::OpenPort2, 7, &mut buf).unwrap();
    let got = feed(&mut shim, &buf[..n]);
    let bad = BadFrame::WrongSender {
        from: Side::Guest,
        msg: MessageKind::OpenPort2,
    };
    assert_eq!(got, [Received::Bad(bad)]);
    assert_eq!(
        bad.to_string(),
        "guest sent `open-port2`, a shim-only message"
    );
    // Acknowledged all the same, so the sender's queue does not jam.
    assert_eq!(drain(&mut shim, 0).len(), 1);
    let got = feed(&mut shim, b"@baton 1 1 hello owner 1 1 *00000000\n");
    assert!(matches!(
        got[..],
        [Received::Bad(BadFrame::Decode(
            ControlError::BadChecksum { .. }
        ))]
    ));
    assert_eq!(shim.stats().bad_frames, 2);
    assert_eq!(shim.stats().frames_in, 1);
    // A frame that was not acted on does not count as seen: the same number is new afterwards.
    let n = encode(&Message::hello(Role::Owner, 1), 7, &mut buf).unwrap();
    assert_eq!(messages(&feed(&mut shim, &buf[..n])).len(), 1);
}

#[test]
fn a_new_transport_resends_the_outstanding_frame_at_once() {
    let mut shim = Shim::new(Side::Shim, RETRANSMIT_US);
    let mut guest = Guest::new(Side::Guest, RETRANSMIT_US);
    guest.send(Message::hello(Role::Owner, 1)).unwrap();
    let hello = drain(&mut guest, 0);
    feed(&mut shim, &hello[0]);
    shim.send(Message::OpenPort2).unwrap();
    let sent = drain(&mut shim, 10);
    assert_eq!(sent.len(), 2, "the ack, then the frame");
    // Half a frame arrives, then the connection is replaced.
    feed(&mut shim, &hello[0][..5]);
    shim.reconnect();
    assert_eq!(shim.retransmit_due_us(), Some(0));
    let again = drain(&mut shim, 20);
    assert_eq!(
        again,
        [sent[1].clone()],
        "same frame, same number; old acks dropped"
    );
    assert_eq!(shim.stats().retransmits, 1);
    // The guest's retransmission from before the move is still a duplicate.
    assert_eq!(feed(&mut shim, &hello[0]), [Received::Duplicate { seq: 1 }]);
}

#[test]
fn piled_up_acks_keep_the_newest() {
    let mut shim = Shim::new(Side::Shim, RETRANSMIT_US);
    let mut buf = [0u8; MAX_FRAME_LEN];
    let total = ACK_BACKLOG as u32 + 3;
    for seq in 1..=total {
        let n = encode(&Message::MigrateRequest, seq, &mut buf).unwrap();
        feed(&mut shim, &buf[..n]);
    }
    let acks: Vec<u32> = drain(&mut shim, 0)
        .iter()
        .map(|f| match decoded(f).1 {
            Message::Ack { seq } => seq,
            m => panic!("{m:?}"),
        })
        .collect();
    let want: Vec<u32> = (total + 1 - ACK_BACKLOG as u32..=total).collect();
    assert_eq!(acks, want);
}

#[test]
fn sequence_numbers_wrap_and_jumps_are_delivered() {
    let mut guest = Guest::new(Side::Guest, RETRANSMIT_US);
    let mut buf = [0u8; MAX_FRAME_LEN];
    for (seq, jump) in [(u32::MAX, false), (0, false), (5, true)] {
        let n = encode(&Message::Redirect, seq, &mut buf).unwrap();
        assert_eq!(messages(&feed(&mut guest, &buf[..n])).len(), 1);
        assert_eq!(guest.stats().seq_jumps, u64::from(jump));
    }
}

/// What the lossy link does to one frame.
#[derive(Clone, Copy, Debug)]
enum Fate {
    Deliver,
    Drop,
    Twice,
    Corrupt(usize),
}

fn fate() -> impl Strategy<Value = Fate> {
    prop_oneof![
        4 => Just(Fate::Deliver),
        2 => Just(Fate::Drop),
        1 => Just(Fate::Twice),
        1 => (0usize..MAX_FRAME_LEN).prop_map(Fate::Corrupt),
    ]
}

fn through(frame: &[u8], fate: Fate) -> Vec<u8> {
    match fate {
        Fate::Deliver => frame.to_vec(),
        Fate::Drop => Vec::new(),
        Fate::Twice => [frame, frame].concat(),
        Fate::Corrupt(at) => {
            let mut f = frame.to_vec();
            let at = at % f.len();
            f[at] ^= 0x01;
            f
        }
    }
}

fn guest_message() -> impl Strategy<Value = Message> {
    prop_oneof![
        (0u32..4).prop_map(|vm| Message::hello(Role::Peer, vm)),
        (any::<u64>(), any::<u32>())
            .prop_map(|(completed, held)| Message::Drained { completed, held }),
        Just(Message::Forwarding),
        any::<u32>().prop_map(|code| Message::Error { code }),
    ]
}

fn shim_message() -> impl Strategy<Value = Message> {
    prop_oneof![
        Just(Message::Redirect),
        Just(Message::OpenPort2),
        (0u8..=31).prop_map(|slot| Message::DiskAttached { slot }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Both directions at once over a link that drops, duplicates and corrupts frames: every
    /// message arrives exactly once, in order, and the counters add up.
    #[test]
    fn exactly_once_in_order_over_a_lossy_link(
        up in vec(guest_message(), 0..10),
        down in vec(shim_message(), 0..10),
        fates in vec(fate(), 64),
    ) {
        let mut guest = Guest::new(Side::Guest, RETRANSMIT_US);
        let mut shim = Shim::new(Side::Shim, RETRANSMIT_US);
        for m in &up {
            guest.send(*m).unwrap();
        }
        for m in &down {
            shim.send(*m).unwrap();
        }
        let (mut at_shim, mut at_guest) = (Vec::new(), Vec::new());
        let mut fates = fates.iter().copied().cycle();
        let mut now = 0u64;
        for _ in 0..2_000 {
            if guest.idle() && shim.idle() {
                break;
            }
            for frame in drain(&mut guest, now) {
                let bytes = through(&frame, fates.next().unwrap_or(Fate::Deliver));
                for r in feed(&mut shim, &bytes) {
                    if let Received::Message { msg, .. } = r {
                        at_shim.push(msg);
                    }
                }
            }
            for frame in drain(&mut shim, now) {
                let bytes = through(&frame, fates.next().unwrap_or(Fate::Deliver));
                for r in feed(&mut guest, &bytes) {
                    if let Received::Message { msg, .. } = r {
                        at_guest.push(msg);
                    }
                }
            }
            now += RETRANSMIT_US / 2;
        }
        prop_assert!(guest.idle() && shim.idle(), "stalled");
        prop_assert_eq!(&at_shim, &up);
        prop_assert_eq!(&at_guest, &down);
        prop_assert_eq!(guest.stats().sent, up.len() as u64);
        prop_assert_eq!(shim.stats().sent, down.len() as u64);
        prop_assert_eq!(shim.stats().seq_jumps, 0);
        prop_assert_eq!(guest.stats().seq_jumps, 0);
    }
}
