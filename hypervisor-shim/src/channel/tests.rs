//! The channel over a socketpair with a fake guest, and the gate as the scenario drives it.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use baton_core::control::{
    Decoder, Frame, HandoffState, MAX_FRAME_LEN, Message, Role, decode_line, encode,
};

use super::{ControlChannel, Handoff, RETRANSMIT, Received};

/// The guest's end of a socketpair: sends frames, reads the shim's.
struct FakeGuest {
    stream: UnixStream,
    decoder: Decoder,
    seq: u32,
}

impl FakeGuest {
    fn send_seq(&mut self, seq: u32, msg: Message) {
        let mut buf = [0u8; MAX_FRAME_LEN];
        let n = encode(&msg, seq, &mut buf).unwrap();
        self.stream.write_all(&buf[..n]).unwrap();
    }
    fn send(&mut self, msg: Message) -> u32 {
        self.seq += 1;
        self.send_seq(self.seq, msg);
        self.seq
    }
    fn recv(&mut self) -> Vec<Frame> {
        let mut out = Vec::new();
        let mut buf = [0u8; 512];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    for &b in &buf[..n] {
                        if let Some(r) = self.decoder.push(b) {
                            out.push(r.unwrap());
                        }
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => panic!("{e}"),
            }
        }
        out
    }
}

fn pair(name: &str) -> (ControlChannel, FakeGuest) {
    let (a, b) = UnixStream::pair().unwrap();
    a.set_nonblocking(true).unwrap();
    b.set_nonblocking(true).unwrap();
    (
        ControlChannel::new(name, a),
        FakeGuest {
            stream: b,
            decoder: Decoder::new(),
            seq: 10,
        },
    )
}

fn messages(r: Vec<Received>) -> Vec<Message> {
    r.into_iter()
        .filter_map(|r| match r {
            Received::Message { msg, .. } => Some(msg),
            Received::Bad(_) => None,
        })
        .collect()
}

const HELLO_OWNER: Message = Message::Hello {
    role: Role::Owner,
    vm: 1,
    version: 1,
};

#[test]
fn frames_are_acked_deduplicated_and_retransmitted() {
    let (mut ch, mut g) = pair("owner");
    let s = g.send(HELLO_OWNER);
    // A retransmission of the same frame: acked again, delivered once.
    g.send_seq(s, HELLO_OWNER);
    let got = messages(ch.poll().unwrap());
    assert_eq!(got, [HELLO_OWNER]);
    assert_eq!(ch.stats().duplicates, 1);
    let acks = g.recv();
    assert_eq!(acks.len(), 2);
    assert!(acks.iter().all(|f| f.msg == Message::Ack { seq: s }));

    // Shim → guest: one outstanding frame at a time, retransmitted until acked.
    ch.send(Message::Redirect).unwrap();
    ch.send(Message::RingOpened { slot: 6 }).unwrap();
    let f = g.recv();
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].msg, Message::Redirect);
    std::thread::sleep(RETRANSMIT + Duration::from_millis(20));
    ch.poll().unwrap();
    let again = g.recv();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0], f[0], "retransmitted unchanged");
    assert_eq!(ch.stats().retransmits, 1);
    // The ack releases the next frame, with the next frame number.
    g.send_seq(0, Message::Ack { seq: f[0].seq });
    ch.poll().unwrap();
    let next = g.recv();
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].msg, Message::RingOpened { slot: 6 });
    assert_eq!(next[0].seq, f[0].seq.wrapping_add(1));
    g.send_seq(0, Message::Ack { seq: next[0].seq });
    ch.poll().unwrap();
    assert!(ch.idle());
    // A stray ack is counted, nothing else happens.
    g.send_seq(0, Message::Ack { seq: 999 });
    ch.poll().unwrap();
    assert_eq!(ch.stats().stray_acks, 1);
}

#[test]
fn garbage_is_bounded_and_counted() {
    let (mut ch, mut g) = pair("peer");
    let mut noise = vec![b'@'; 10];
    noise.extend(std::iter::repeat_n(b'x', 5000));
    noise.extend_from_slice(b"\n@baton 1 1 hello owner 1 1 *00000000\n");
    g.stream.write_all(&noise).unwrap();
    // A shim-only message from a guest is not delivered.
    g.send(Message::OpenPort2);
    let got = ch.poll().unwrap();
    assert!(messages(got.clone()).is_empty(), "{got:?}");
    assert!(ch.stats().bad_frames >= 3, "{:?}", ch.stats());
    // The channel still works afterwards.
    g.send(HELLO_OWNER);
    assert_eq!(messages(ch.poll().unwrap()), [HELLO_OWNER]);
}

#[test]
fn a_channel_moves_to_a_new_connection() {
    let (mut ch, mut g) = pair("owner");
    g.send(HELLO_OWNER);
    ch.poll().unwrap();
    ch.send(Message::OpenPort2).unwrap();
    let f = g.recv();
    assert_eq!(f.last().unwrap().msg, Message::OpenPort2);
    // The old connection goes away (source QEMU quit) before the ack arrives.
    drop(g.stream);
    ch.poll().unwrap();
    assert!(ch.disconnected());
    let (a, b) = UnixStream::pair().unwrap();
    a.set_nonblocking(true).unwrap();
    b.set_nonblocking(true).unwrap();
    ch.attach(a);
    let mut g2 = FakeGuest {
        stream: b,
        decoder: Decoder::new(),
        seq: g.seq,
    };
    // The outstanding frame is sent again at once, same number.
    let again = g2.recv();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].msg, Message::OpenPort2);
    assert_eq!(again[0].seq, f.last().unwrap().seq);
    // The guest's retransmitted frame from before the move is still a duplicate.
    let last = g2.seq;
    g2.send_seq(last, HELLO_OWNER);
    assert!(messages(ch.poll().unwrap()).is_empty());
    g2.send(Message::Forwarding);
    assert_eq!(messages(ch.poll().unwrap()), [Message::Forwarding]);
}

#[test]
fn the_gate_follows_the_handoff_and_rejects_wrong_state_messages() {
    use HandoffState as S;
    let mut h = Handoff::new(1, 2);
    let peer_hello = Message::Hello {
        role: Role::Peer,
        vm: 2,
        version: 1,
    };
    // Out of order: `forwarding` while still booting.
    assert!(h.offer(Role::Owner, &Message::Forwarding).is_err());
    assert_eq!(h.state(), S::Booting);
    // A peer claiming to be the owner, and a wrong VM id.
    assert!(h.offer(Role::Peer, &HELLO_OWNER).is_err());
    let wrong_vm = Message::Hello {
        role: Role::Owner,
        vm: 9,
        version: 1,
    };
    assert!(h.offer(Role::Owner, &wrong_vm).is_err());
    assert_eq!(h.offer(Role::Owner, &HELLO_OWNER), Ok(S::Direct));
    assert!(!h.both_hello());
    assert_eq!(h.offer(Role::Peer, &peer_hello), Ok(S::Direct));
    assert!(h.both_hello());
    assert!(h.offer(Role::Owner, &HELLO_OWNER).is_err(), "second hello");
    // `drained` before `redirect` was sent.
    let drained = Message::Drained {
        completed: 10,
        held: 3,
    };
    assert!(h.offer(Role::Owner, &drained).is_err());
    assert!(!h.shim_moves_to(S::Migrating));
    assert!(h.shim_moves_to(S::Redirecting));
    // From the wrong guest.
    assert!(h.offer(Role::Peer, &drained).is_err());
    assert_eq!(h.offer(Role::Owner, &drained), Ok(S::Drained));
    // `peer-ready` before the release.
    let ready = Message::PeerReady {
        capacity_sectors: 8,
    };
    assert!(h.offer(Role::Peer, &ready).is_err());
    assert_eq!(
        h.offer(Role::Owner, &Message::Released { slot: 4 }),
        Ok(S::Released)
    );
    assert!(h.offer(Role::Owner, &Message::Forwarding).is_err());
    assert_eq!(h.offer(Role::Peer, &ready), Ok(S::PeerReady));
    assert_eq!(
        h.offer(Role::Owner, &Message::Forwarding),
        Ok(S::Forwarding)
    );
    assert!(h.shim_moves_to(S::Migrating));
    assert!(h.offer(Role::Owner, &Message::MigrateRequest).is_err());
    assert!(h.shim_moves_to(S::Forwarding));
    assert_eq!(h.rejected(), 9);
    assert_eq!(h.rejections().len(), 9);
    assert!(h.rejections()[0].contains("`forwarding` from the owner in state Booting"));
    // An error stops the handoff.
    assert_eq!(
        h.offer(Role::Peer, &Message::Error { code: 2 }),
        Ok(S::Failed)
    );
}

#[test]
fn a_fake_guest_over_a_socketpair_cannot_skip_a_step() {
    // Transport and gate together, as the scenario drives them.
    let (mut ch, mut g) = pair("owner");
    let mut h = Handoff::new(1, 2);
    g.send(HELLO_OWNER);
    g.send(Message::Released { slot: 4 });
    g.send(Message::Forwarding);
    let mut accepted = Vec::new();
    for m in messages(ch.poll().unwrap()) {
        if h.offer(Role::Owner, &m).is_ok() {
            accepted.push(m);
        }
    }
    assert_eq!(accepted, [HELLO_OWNER]);
    assert_eq!(h.state(), HandoffState::Direct);
    assert_eq!(h.rejected(), 2);
    // Every frame was acknowledged all the same (the guest's queue must not jam).
    let acks: Vec<Frame> = g.recv();
    assert_eq!(acks.len(), 3);
    let line = b"@baton 1 7 drained 1042 17 *00199c43";
    assert!(decode_line(line).is_ok());
}
