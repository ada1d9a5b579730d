//! The shim's end of the guests' control channels (COM2), and the handoff state gate.
//!
//! Transport ([`ControlChannel`]): each guest's COM2 is a QEMU `socket` chardev that connects, as
//! a client, to a Unix socket the shim listens on ([`ControlListener`]) — QEMU drops what a guest
//! sends while nobody is connected, so the shim must listen first. The protocol itself (framing,
//! acks, retransmission every [`RETRANSMIT`], de-duplication, counters) is
//! [`baton_core::control::Endpoint`], the same code the guest runs; this module only moves its
//! bytes over the socket and stamps arrivals with the host's clock. A channel outlives its
//! connection: after a migration the owner's channel is re-attached to the destination QEMU's
//! connection and the protocol state (sequence numbers, the unacknowledged frame) carries on.
//!
//! Policy ([`Handoff`]): guest bytes are untrusted (invariant I6). The decoder bounds and checks
//! every frame; a decoded message is acted on only if the handoff's transition table
//! ([`baton_core::control::TRANSITIONS`], through [`HandoffGate`]) accepts it from that guest in
//! the current [`HandoffState`](baton_core::control::HandoffState). A message in the wrong state
//! or from the wrong guest is rejected, counted and logged, and does not move the handoff.

mod handoff;
#[cfg(test)]
mod tests;

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use baton_core::control::{
    self, ControlError, Endpoint, EndpointStats, MAX_FRAME_LEN, Message, RETRANSMIT_US, SendError,
    Side,
};

#[cfg(doc)]
use baton_core::control::HandoffGate;
pub use handoff::{Handoff, Rejection};

/// Time before an unacknowledged shim frame is sent again (the guest uses the same period).
pub const RETRANSMIT: Duration = Duration::from_micros(RETRANSMIT_US);
/// Most shim messages waiting to be sent to one guest.
const MAX_QUEUE: usize = 32;
/// Most unsent bytes buffered for one guest (acks and frames).
const MAX_OUT: usize = 64 * 1024;
/// Most bytes read from one guest per poll (so one chatty guest cannot starve the others).
const MAX_READ_PER_POLL: usize = 16 * 1024;

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
    /// the shim does not queue this message (a guest message, or an ack)
    #[error("`{name}` is not a message the shim queues")]
    NotShims {
        /// Message name.
        name: &'static str,
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

/// Counters of one control channel: [`EndpointStats`] as the report serialises them
/// (`control.owner`, `control.peer`).
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
    /// Shim frames sent again because no ack came within [`RETRANSMIT`] (or on a new connection).
    pub retransmits: u64,
}

impl From<EndpointStats> for ChannelStats {
    fn from(s: EndpointStats) -> Self {
        Self {
            frames_in: s.frames_in,
            bad_frames: s.bad_frames,
            duplicates: s.duplicates,
            seq_jumps: s.seq_jumps,
            stray_acks: s.stray_acks,
            sent: s.sent,
            retransmits: s.retransmits,
        }
    }
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

/// The shim's end of one guest's control channel: an [`Endpoint`] over a Unix socket.
#[derive(Debug)]
pub struct ControlChannel {
    name: String,
    stream: Option<UnixStream>,
    endpoint: Endpoint<MAX_QUEUE>,
    /// The origin of the endpoint's clock.
    epoch: Instant,
    /// Encoded bytes not yet written to the socket.
    out: Vec<u8>,
    /// The connection ended (EOF or error); cleared by [`ControlChannel::attach`].
    disconnected: bool,
}

impl ControlChannel {
    /// A channel named `name` (for logs) over `stream`, which must be non-blocking.
    pub fn new(name: &str, stream: UnixStream) -> Self {
        Self {
            name: name.to_owned(),
            stream: Some(stream),
            endpoint: Endpoint::new(Side::Shim, RETRANSMIT_US),
            epoch: Instant::now(),
            out: Vec::new(),
            disconnected: false,
        }
    }

    /// The channel's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Counters so far.
    pub fn stats(&self) -> ChannelStats {
        self.endpoint.stats().into()
    }

    /// The socket's descriptor while connected, to wait on with `poll(2)`.
    pub fn raw_fd(&self) -> Option<std::os::fd::RawFd> {
        use std::os::fd::AsRawFd;
        self.stream
            .as_ref()
            .filter(|_| !self.disconnected)
            .map(AsRawFd::as_raw_fd)
    }

    /// Whether the current connection ended.
    pub fn disconnected(&self) -> bool {
        self.disconnected
    }

    /// Whether every queued shim message was acknowledged.
    pub fn idle(&self) -> bool {
        self.endpoint.idle()
    }

    /// Moves the channel onto a new connection (the owner's destination QEMU after a migration).
    /// A partly received frame and unsent bytes of the old connection are dropped; the
    /// outstanding frame, if any, is sent again at once.
    pub fn attach(&mut self, stream: UnixStream) {
        self.stream = Some(stream);
        self.out.clear();
        self.disconnected = false;
        self.endpoint.reconnect();
        // Write errors surface on the next poll.
        let _ = self.transmit();
    }

    /// Queues `msg` for the guest and sends it when everything before it was acknowledged.
    pub fn send(&mut self, msg: Message) -> Result<(), ChannelError> {
        self.endpoint.send(msg).map_err(|e| match e {
            SendError::QueueFull => ChannelError::QueueFull,
            SendError::Encode(source) => ChannelError::Encode {
                name: msg.name(),
                source,
            },
            SendError::WrongSide(kind) => ChannelError::NotShims { name: kind.name() },
            SendError::Ack => ChannelError::NotShims { name: msg.name() },
        })?;
        self.transmit()
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
                        let Some(r) = self.endpoint.push(b) else {
                            continue;
                        };
                        // The ack this frame calls for.
                        self.take_output()?;
                        match r {
                            control::Received::Message { seq, msg } => {
                                got.push(Received::Message { seq, msg, at });
                            }
                            control::Received::Bad(why) => got.push(Received::Bad(why.to_string())),
                            control::Received::Duplicate { .. }
                            | control::Received::Acked { .. }
                            | control::Received::StrayAck { .. } => {}
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
        self.transmit()?;
        Ok(got)
    }

    /// Microseconds on the endpoint's clock.
    fn now_us(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    /// Moves the frames the endpoint has due (acks, a first transmission, a retransmission) into
    /// the output buffer.
    fn take_output(&mut self) -> Result<(), ChannelError> {
        let now = self.now_us();
        let mut frame = [0u8; MAX_FRAME_LEN];
        while let Some(n) = self.endpoint.poll_transmit(now, &mut frame) {
            if self.out.len() + n > MAX_OUT {
                return Err(ChannelError::OutputFull);
            }
            self.out
                .extend_from_slice(frame.get(..n).unwrap_or_default());
        }
        Ok(())
    }

    /// Takes what is due from the endpoint and writes as much as the socket takes.
    fn transmit(&mut self) -> Result<(), ChannelError> {
        self.take_output()?;
        self.flush()
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
