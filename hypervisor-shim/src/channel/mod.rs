//! The shim's end of the guests' control channels (COM2), and the handoff state gate.
//!
//! Transport ([`ControlChannel`]): each guest's COM2 is a QEMU `socket` chardev that connects, as
//! a client, to a Unix socket the shim listens on ([`ControlListener`]) — QEMU drops what a guest
//! sends while nobody is connected, so the shim must listen first. Frames are
//! [`baton_core::control`] lines. Every non-ack frame is acknowledged (`ack <seq>`); a
//! retransmitted frame is re-acknowledged but delivered once ([`SeqTracker`]); the shim's own
//! frames go one at a time and are retransmitted every [`RETRANSMIT`] until acknowledged. A
//! channel outlives its connection: after a migration the owner's channel is re-attached to the
//! destination QEMU's connection and the protocol state (sequence numbers, the unacknowledged
//! frame) carries on.
//!
//! Policy ([`Handoff`]): guest bytes are untrusted (invariant I6). The decoder bounds and checks
//! every frame; a decoded message is acted on only if [`accepts_from`] allows it from that guest in
//! the current [`HandoffState`]. A message in the wrong state or from the wrong guest is rejected,
//! counted and logged, and does not move the handoff.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use baton_core::control::{
    ControlError, Decoder, HandoffState, MAX_FRAME_LEN, Message, PROTOCOL_VERSION, Role,
    SeqTracker, SeqVerdict, accepts_from, encode,
};

/// Time before an unacknowledged shim frame is sent again (the guest uses the same period).
pub const RETRANSMIT: Duration = Duration::from_millis(200);
/// Most shim messages waiting to be sent to one guest.
const MAX_QUEUE: usize = 32;
/// Most unsent bytes buffered for one guest (acks and frames).
const MAX_OUT: usize = 64 * 1024;
/// Most bytes read from one guest per poll (so one chatty guest cannot starve the others).
const MAX_READ_PER_POLL: usize = 16 * 1024;
/// Most rejection descriptions kept.
const MAX_LOG: usize = 32;

/// Errors of the control channel.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    /// cannot listen on the control socket
    #[error("cannot listen on the control socket {path}")]
    Listen {
        /// Socket path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// QEMU did not connect to the control socket in time
    #[error("QEMU did not connect to the control socket {path} within {waited:?}")]
    AcceptTimeout {
        /// Socket path.
        path: PathBuf,
        /// How long the shim waited.
        waited: Duration,
    },
    /// QEMU exited before it connected to the control socket
    #[error("QEMU exited before connecting to the control socket")]
    QemuGone,
    /// I/O error on a control socket
    #[error("I/O error on the control socket")]
    Io(#[from] std::io::Error),
    /// a message could not be encoded
    #[error("cannot encode `{name}`")]
    Encode {
        /// Message name.
        name: &'static str,
        /// Why.
        #[source]
        source: ControlError,
    },
    /// too many messages queued for a guest
    #[error("control send queue full ({MAX_QUEUE} messages unacknowledged)")]
    QueueFull,
    /// too many unsent bytes for a guest (it does not read its COM2)
    #[error("control output buffer full ({MAX_OUT} bytes): the guest does not read COM2")]
    OutputFull,
}

/// A listening control socket; the socket file is removed when this is dropped.
#[derive(Debug)]
pub struct ControlListener {
    listener: UnixListener,
    path: PathBuf,
}

impl ControlListener {
    /// Listens on `path` (a stale socket file there is removed first).
    pub fn bind(path: &Path) -> Result<Self, ChannelError> {
        let _ = std::fs::remove_file(path);
        let err = |source| ChannelError::Listen {
            path: path.to_path_buf(),
            source,
        };
        let listener = UnixListener::bind(path).map_err(err)?;
        let guard = Self {
            listener,
            path: path.to_path_buf(),
        };
        guard.listener.set_nonblocking(true).map_err(err)?;
        Ok(guard)
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Waits at most `timeout` for QEMU to connect; gives up early when `alive` says QEMU is gone.
    pub fn accept(
        &self,
        timeout: Duration,
        mut alive: impl FnMut() -> bool,
    ) -> Result<UnixStream, ChannelError> {
        let start = Instant::now();
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    stream.set_nonblocking(true)?;
                    return Ok(stream);
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {}
                Err(e) => return Err(ChannelError::Io(e)),
            }
            if !alive() {
                return Err(ChannelError::QemuGone);
            }
            if start.elapsed() >= timeout {
                return Err(ChannelError::AcceptTimeout {
                    path: self.path.clone(),
                    waited: start.elapsed(),
                });
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

impl Drop for ControlListener {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Counters of one control channel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ChannelStats {
    /// Frames decoded (acks included).
    pub frames_in: u64,
    /// Byte runs the decoder rejected (bad checksum, bad syntax, too long, ...), plus valid frames
    /// carrying a message only the shim may send.
    pub bad_frames: u64,
    /// Retransmitted guest frames (re-acknowledged, not acted on again).
    pub duplicates: u64,
    /// Frames whose sequence number was neither the next one nor a repeat.
    pub seq_jumps: u64,
    /// Acks that matched no outstanding shim frame.
    pub stray_acks: u64,
    /// Shim frames sent (first transmissions).
    pub sent: u64,
    /// Shim frames sent again because no ack came within [`RETRANSMIT`].
    pub retransmits: u64,
}

/// What one poll found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    /// A new guest message (not a repeat), with its frame number and arrival time.
    Message {
        /// The guest's frame number.
        seq: u32,
        /// The message.
        msg: Message,
        /// When the shim read it.
        at: Instant,
    },
    /// Bytes that did not form a valid guest frame.
    Bad(String),
}

/// The shim's end of one guest's control channel.
#[derive(Debug)]
pub struct ControlChannel {
    name: String,
    stream: Option<UnixStream>,
    decoder: Decoder,
    rx: SeqTracker,
    next_seq: u32,
    queue: VecDeque<Message>,
    /// Frame number and last transmission of the outstanding front frame.
    outstanding: Option<(u32, Instant)>,
    out: Vec<u8>,
    /// The connection ended (EOF or error); cleared by [`ControlChannel::attach`].
    disconnected: bool,
    stats: ChannelStats,
}

impl ControlChannel {
    /// A channel named `name` (for logs) over `stream`, which must be non-blocking.
    pub fn new(name: &str, stream: UnixStream) -> Self {
        Self {
            name: name.to_owned(),
            stream: Some(stream),
            decoder: Decoder::new(),
            rx: SeqTracker::new(),
            next_seq: 1,
            queue: VecDeque::new(),
            outstanding: None,
            out: Vec::new(),
            disconnected: false,
            stats: ChannelStats::default(),
        }
    }

    /// The channel's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Counters so far.
    pub fn stats(&self) -> ChannelStats {
        self.stats
    }

    /// Whether the current connection ended.
    pub fn disconnected(&self) -> bool {
        self.disconnected
    }

    /// Whether every queued shim message was acknowledged.
    pub fn idle(&self) -> bool {
        self.queue.is_empty()
    }

    /// Moves the channel onto a new connection (the owner's destination QEMU after a migration).
    /// A partly received frame and unsent bytes of the old connection are dropped; the
    /// outstanding frame, if any, is sent again at once.
    pub fn attach(&mut self, stream: UnixStream) {
        self.stream = Some(stream);
        self.decoder = Decoder::new();
        self.out.clear();
        self.disconnected = false;
        if let Some((seq, _)) = self.outstanding
            && let Some(msg) = self.queue.front().copied()
        {
            // Write errors surface on the next poll.
            let _ = self.write_frame(&msg, seq);
            self.outstanding = Some((seq, Instant::now()));
            self.stats.retransmits += 1;
        }
    }

    /// Queues `msg` for the guest and sends it when everything before it was acknowledged.
    pub fn send(&mut self, msg: Message) -> Result<(), ChannelError> {
        if self.queue.len() >= MAX_QUEUE {
            return Err(ChannelError::QueueFull);
        }
        // Refuse to queue what the guest's parser would reject.
        let mut buf = [0u8; MAX_FRAME_LEN];
        encode(&msg, self.next_seq, &mut buf).map_err(|source| ChannelError::Encode {
            name: msg.name(),
            source,
        })?;
        self.queue.push_back(msg);
        self.transmit(Instant::now())
    }

    /// Reads what the guest sent, acknowledges it, and (re)transmits shim frames as due. Returns
    /// the new guest messages and the bad frames, in arrival order.
    pub fn poll(&mut self) -> Result<Vec<Received>, ChannelError> {
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        let mut read = 0;
        while read < MAX_READ_PER_POLL && !self.disconnected {
            let Some(stream) = self.stream.as_mut() else {
                break;
            };
            match stream.read(&mut buf) {
                Ok(0) => self.disconnected = true,
                Ok(n) => {
                    read += n;
                    let at = Instant::now();
                    for &b in buf.get(..n).unwrap_or_default() {
                        match self.decoder.push(b) {
                            None => {}
                            Some(Ok(frame)) => self.on_frame(frame.seq, frame.msg, at, &mut got)?,
                            Some(Err(e)) => {
                                self.stats.bad_frames += 1;
                                got.push(Received::Bad(e.to_string()));
                            }
                        }
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe) =>
                {
                    self.disconnected = true;
                }
                Err(e) => return Err(ChannelError::Io(e)),
            }
        }
        self.transmit(Instant::now())?;
        Ok(got)
    }

    fn on_frame(
        &mut self,
        seq: u32,
        msg: Message,
        at: Instant,
        got: &mut Vec<Received>,
    ) -> Result<(), ChannelError> {
        self.stats.frames_in += 1;
        if let Message::Ack { seq: acked } = msg {
            if self.outstanding.is_some_and(|(s, _)| s == acked) {
                self.outstanding = None;
                self.queue.pop_front();
            } else {
                self.stats.stray_acks += 1;
            }
            return Ok(());
        }
        // Acknowledge whatever decoded, so the guest's stop-and-wait queue moves on; what the
        // message may do is decided below and by the handoff gate.
        self.queue_bytes(&Message::Ack { seq }, 0)?;
        if !msg.sent_by_guest() {
            self.stats.bad_frames += 1;
            got.push(Received::Bad(format!(
                "guest sent `{}`, a shim-only message",
                msg.name()
            )));
            return Ok(());
        }
        match self.rx.check(seq) {
            SeqVerdict::Duplicate => self.stats.duplicates += 1,
            verdict => {
                if verdict == SeqVerdict::Unexpected {
                    self.stats.seq_jumps += 1;
                }
                got.push(Received::Message { seq, msg, at });
            }
        }
        Ok(())
    }

    /// Sends the front frame if nothing is outstanding, again if its ack is overdue; flushes.
    fn transmit(&mut self, now: Instant) -> Result<(), ChannelError> {
        if let Some(msg) = self.queue.front().copied() {
            match self.outstanding {
                None => {
                    let seq = self.next_seq;
                    self.next_seq = self.next_seq.wrapping_add(1);
                    self.queue_bytes(&msg, seq)?;
                    self.outstanding = Some((seq, now));
                    self.stats.sent += 1;
                }
                Some((seq, sent)) if now.saturating_duration_since(sent) >= RETRANSMIT => {
                    self.queue_bytes(&msg, seq)?;
                    self.outstanding = Some((seq, now));
                    self.stats.retransmits += 1;
                }
                Some(_) => {}
            }
        }
        self.flush()
    }

    fn write_frame(&mut self, msg: &Message, seq: u32) -> Result<(), ChannelError> {
        self.queue_bytes(msg, seq)?;
        self.flush()
    }

    fn queue_bytes(&mut self, msg: &Message, seq: u32) -> Result<(), ChannelError> {
        let mut buf = [0u8; MAX_FRAME_LEN];
        let n = encode(msg, seq, &mut buf).map_err(|source| ChannelError::Encode {
            name: msg.name(),
            source,
        })?;
        if self.out.len() + n > MAX_OUT {
            return Err(ChannelError::OutputFull);
        }
        self.out.extend_from_slice(buf.get(..n).unwrap_or_default());
        Ok(())
    }

    fn flush(&mut self) -> Result<(), ChannelError> {
        let Some(stream) = self.stream.as_mut() else {
            return Ok(());
        };
        if self.disconnected {
            // Nobody to send to until a new connection is attached; the outstanding frame is
            // retransmitted then.
            self.out.clear();
            return Ok(());
        }
        while !self.out.is_empty() {
            match stream.write(&self.out) {
                Ok(0) => break,
                Ok(n) => {
                    self.out.drain(..n);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(e.kind(), ErrorKind::BrokenPipe | ErrorKind::ConnectionReset) =>
                {
                    self.disconnected = true;
                    self.out.clear();
                    break;
                }
                Err(e) => return Err(ChannelError::Io(e)),
            }
        }
        Ok(())
    }
}

/// Why the handoff gate refused a guest message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// Who sent it.
    pub from: Role,
    /// The message's name.
    pub msg: &'static str,
    /// The shim's state when it arrived.
    pub state: HandoffState,
    /// Why.
    pub why: String,
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "rejected `{}` from the {} in state {:?}: {}",
            self.msg,
            self.from.name(),
            self.state,
            self.why
        )
    }
}

/// The shim's handoff state and its gate on guest messages.
#[derive(Debug, Clone)]
pub struct Handoff {
    state: HandoffState,
    owner_vm: u32,
    peer_vm: u32,
    hello: [bool; 2],
    rejected: u64,
    log: Vec<String>,
}

impl Handoff {
    /// A handoff between owner VM `owner_vm` and peer VM `peer_vm`, in state `Booting`.
    pub fn new(owner_vm: u32, peer_vm: u32) -> Self {
        Self {
            state: HandoffState::Booting,
            owner_vm,
            peer_vm,
            hello: [false; 2],
            rejected: 0,
            log: Vec::new(),
        }
    }

    /// The current state.
    pub fn state(&self) -> HandoffState {
        self.state
    }

    /// Messages rejected so far.
    pub fn rejected(&self) -> u64 {
        self.rejected
    }

    /// Descriptions of the first rejections.
    pub fn rejections(&self) -> &[String] {
        &self.log
    }

    /// Whether both guests said hello.
    pub fn both_hello(&self) -> bool {
        self.hello == [true, true]
    }

    fn role_index(role: Role) -> usize {
        match role {
            Role::Owner => 0,
            Role::Peer => 1,
        }
    }

    /// Offers a guest message to the gate. Accepted: the state moves on and is returned.
    /// Rejected: counted and logged; the state does not change.
    pub fn offer(&mut self, from: Role, msg: &Message) -> Result<HandoffState, Rejection> {
        let reject = |this: &mut Self, why: String| {
            let r = Rejection {
                from,
                msg: msg.name(),
                state: this.state,
                why,
            };
            this.rejected += 1;
            if this.log.len() < MAX_LOG {
                this.log.push(r.to_string());
            }
            Err(r)
        };
        if !accepts_from(from, self.state, msg) {
            return reject(self, "not acceptable from this guest in this state".into());
        }
        if let Message::Hello { vm, version, .. } = *msg {
            let want = match from {
                Role::Owner => self.owner_vm,
                Role::Peer => self.peer_vm,
            };
            if vm != want {
                return reject(self, format!("vm {vm}, expected {want}"));
            }
            if version != PROTOCOL_VERSION {
                return reject(self, format!("guest version {version} unsupported"));
            }
            let seen = &mut self.hello[Self::role_index(from)];
            if *seen {
                return reject(self, "second hello (did the guest restart?)".into());
            }
            *seen = true;
        }
        match self.state.after(msg) {
            Some(next) => {
                self.state = next;
                Ok(next)
            }
            None => reject(self, "no transition".into()),
        }
    }

    /// A step the shim takes itself: `Direct → Redirecting` (redirect sent),
    /// `Forwarding → Migrating` and back. Any other move is refused (returns false).
    pub fn shim_moves_to(&mut self, next: HandoffState) -> bool {
        use HandoffState as S;
        let ok = matches!(
            (self.state, next),
            (S::Direct, S::Redirecting)
                | (S::Forwarding, S::Migrating)
                | (S::Migrating, S::Forwarding)
        );
        if ok {
            self.state = next;
        }
        ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_core::control::{Frame, decode_line};

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
            port1_completed: 10,
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
}
