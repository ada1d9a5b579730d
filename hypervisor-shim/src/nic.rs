//! The host end of the guest's NIC (issue 11): the shim listens on a Unix socket that QEMU's
//! `-netdev stream` backend connects to (QEMU 7.2, `net/stream.c`: every frame is a 4-byte
//! big-endian length and the frame), sends the guest its numbered frames (RX, the guest's view)
//! and checks the guest's (TX): every number once, in order ([`baton_core::net`]).
//!
//! The host end starts sending once the guest's first frame arrived (the guest posts its receive
//! buffers before it transmits; QEMU drops frames its NIC cannot take yet), and sends its last
//! frame only once every frame of the guest's arrived: a guest that received all of its frames
//! knows that the host has all of its own, so it may exit without leaving frames in QEMU's
//! queues.
//!
//! One thread per host end; it ends when both directions are complete and QEMU closed the
//! socket, when [`HostEnd::finish`] stops it, or at its deadline. Bytes from QEMU are untrusted:
//! a malformed length ends the stream with the cause named, never a panic.

use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use baton_core::net::{self, Direction, MAX_FRAME_LEN, SeqCheck, StreamDecoder};
use serde::Serialize;

/// How long one `poll(2)` round waits.
const ROUND: Duration = Duration::from_millis(20);

/// What the host end saw, for the report.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct HostEndFacts {
    /// QEMU connected to the socket.
    pub connected: bool,
    /// Frames to the guest written to the socket in full (`frames_rx_sent`).
    pub rx_sent: u64,
    /// The guest's frames as the host checked them (`frames_tx_received` is `tx.next`).
    pub tx_next: u64,
    /// Guest frames seen twice.
    pub tx_duplicated: u64,
    /// Guest frames that skipped ahead.
    pub tx_reordered: u64,
    /// Guest frame numbers skipped over.
    pub tx_skipped: u64,
    /// Guest frames of the workload's EtherType that did not check.
    pub tx_bad: u64,
    /// Guest frames of other EtherTypes (ignored).
    pub tx_other: u64,
    /// Why the stream ended early, if it did (a malformed length, an I/O error, the deadline).
    pub error: Option<String>,
}

/// A running host end; [`HostEnd::finish`] stops it and returns what it saw.
#[derive(Debug)]
pub struct HostEnd {
    thread: Option<JoinHandle<HostEndFacts>>,
    stop: Arc<AtomicBool>,
    path: PathBuf,
}

impl HostEnd {
    /// Listens on `path` (removing a stale socket there) and serves `frames` numbered frames
    /// each way with fill sizes from `seed`, for at most `deadline` from now; `skip` (a test
    /// hook) is a number never sent to the guest. Errors: the socket cannot be bound, or the
    /// thread not started.
    pub fn start(
        path: &Path,
        frames: u64,
        seed: u64,
        deadline: Duration,
        skip: Option<u64>,
    ) -> std::io::Result<Self> {
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path)?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let until = Instant::now() + deadline;
        let thread = std::thread::Builder::new()
            .name("nic-host-end".into())
            .spawn(move || serve(&listener, frames, seed, skip, until, &s))?;
        Ok(HostEnd {
            thread: Some(thread),
            stop,
            path: path.to_path_buf(),
        })
    }

    /// Stops the host end (after at most one round) and returns what it saw.
    pub fn finish(mut self) -> HostEndFacts {
        self.stop.store(true, Ordering::Relaxed);
        let facts = self.thread.take().map(JoinHandle::join);
        match facts {
            Some(Ok(f)) => f,
            _ => HostEndFacts {
                error: Some("the host end's thread panicked".into()),
                ..HostEndFacts::default()
            },
        }
    }
}

impl Drop for HostEnd {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Waits for `fd` to be readable (and writable with `want_write`), at most [`ROUND`]; returns
/// (readable or hung up, writable).
fn wait(fd: i32, want_write: bool) -> (bool, bool) {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN | if want_write { libc::POLLOUT } else { 0 },
        revents: 0,
    };
    let ms = ROUND.as_millis() as libc::c_int;
    // SAFETY: one valid pollfd for the duration of the call.
    let n = unsafe { libc::poll(&raw mut p, 1, ms) };
    if n <= 0 {
        return (false, false);
    }
    let readable = p.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0;
    (readable, p.revents & libc::POLLOUT != 0)
}

fn accept(
    listener: &UnixListener,
    until: Instant,
    stop: &AtomicBool,
) -> Result<UnixStream, String> {
    loop {
        match listener.accept() {
            Ok((s, _)) => return Ok(s),
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(e) => return Err(format!("accept: {e}")),
        }
        if stop.load(Ordering::Relaxed) {
            return Err("QEMU never connected to the NIC's socket".into());
        }
        if Instant::now() >= until {
            return Err("QEMU did not connect to the NIC's socket before the deadline".into());
        }
        wait(listener.as_raw_fd(), false);
    }
}

fn serve(
    listener: &UnixListener,
    frames: u64,
    seed: u64,
    skip: Option<u64>,
    until: Instant,
    stop: &AtomicBool,
) -> HostEndFacts {
    let mut facts = HostEndFacts::default();
    let stream = match accept(listener, until, stop) {
        Ok(s) => s,
        Err(e) => {
            facts.error = Some(e);
            return facts;
        }
    };
    facts.connected = true;
    let mut tx = SeqCheck::default();
    if let Err(e) = pump(
        &stream, frames, seed, skip, until, stop, &mut facts, &mut tx,
    ) {
        facts.error = Some(e);
    }
    facts.tx_next = tx.next;
    facts.tx_duplicated = tx.duplicated;
    facts.tx_reordered = tx.reordered;
    facts.tx_skipped = tx.skipped;
    facts.tx_bad = tx.bad;
    facts.tx_other = tx.other;
    facts
}

/// Moves frames both ways until QEMU closes the socket, `stop`, or the deadline.
#[allow(clippy::too_many_arguments)]
fn pump(
    mut stream: &UnixStream,
    frames: u64,
    seed: u64,
    skip: Option<u64>,
    until: Instant,
    stop: &AtomicBool,
    facts: &mut HostEndFacts,
    tx: &mut SeqCheck,
) -> Result<(), String> {
    stream
        .set_nonblocking(true)
        .map_err(|e| format!("socket: {e}"))?;
    let mut rbuf = vec![0u8; 64 * 1024];
    let mut frame_buf = vec![0u8; net::MAX_STREAM_FRAME];
    let mut dec = StreamDecoder::new(&mut frame_buf);
    // The frame being written: its stream bytes and how many went.
    let mut out: Vec<u8> = Vec::with_capacity(4 + MAX_FRAME_LEN);
    let mut out_at = 0;
    let mut next_rx: u64 = 0;
    loop {
        // Nothing goes to the guest before its first frame arrived: the guest posts its receive
        // buffers before it transmits, and QEMU 7.2 drops what it cannot deliver to a NIC whose
        // driver is not ready (45 of the first frames were lost when the host end sent at once).
        // The last frame waits until every frame of the guest's arrived.
        if out_at == out.len() && skip == Some(next_rx) {
            next_rx += 1;
        }
        if out_at == out.len() && next_rx < frames && tx.next > 0 {
            let last = next_rx + 1 == frames;
            if !last || tx.next >= frames {
                out.clear();
                out_at = 0;
                let mut f = [0u8; MAX_FRAME_LEN];
                let fill = net::fill_for(seed, next_rx);
                let n = net::encode(
                    &mut f,
                    net::GUEST_MAC,
                    net::HOST_MAC,
                    Direction::ToGuest,
                    next_rx,
                    fill,
                )
                .map_err(|e| format!("encode: {e}"))?;
                out.extend_from_slice(&net::stream_prefix(n));
                out.extend_from_slice(&f[..n]);
                next_rx += 1;
            }
        }
        let want_write = out_at < out.len();
        let (readable, writable) = wait(stream.as_raw_fd(), want_write);
        if writable && want_write {
            match stream.write(&out[out_at..]) {
                Ok(n) => {
                    out_at += n;
                    if out_at == out.len() {
                        facts.rx_sent += 1;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => return Err(format!("write to QEMU: {e}")),
            }
        }
        if readable {
            match stream.read(&mut rbuf) {
                Ok(0) => return Ok(()),
                Ok(n) => {
                    dec.push(&rbuf[..n], |f| {
                        let _ = tx.take_frame(f, Direction::ToHost);
                    })
                    .map_err(|e| format!("stream from QEMU: {e}"))?;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => return Err(format!("read from QEMU: {e}")),
            }
        }
        if stop.load(Ordering::Relaxed) {
            return Ok(());
        }
        if Instant::now() >= until {
            return Err("the host end's deadline passed".into());
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Plays QEMU's side of the stream on one connection.
    struct FakeQemu {
        s: UnixStream,
        dec_buf: Vec<u8>,
        pending: Vec<u64>,
    }

    impl FakeQemu {
        fn connect(path: &Path) -> Self {
            let s = UnixStream::connect(path).unwrap();
            s.set_read_timeout(Some(Duration::from_millis(300)))
                .unwrap();
            FakeQemu {
                s,
                dec_buf: vec![0u8; net::MAX_STREAM_FRAME],
                pending: Vec::new(),
            }
        }

        /// The guest transmits its frame `seq`.
        fn send(&mut self, seq: u64) {
            let mut f = [0u8; MAX_FRAME_LEN];
            let fill = net::fill_for(3, seq);
            let n = net::encode(
                &mut f,
                net::HOST_MAC,
                net::GUEST_MAC,
                Direction::ToHost,
                seq,
                fill,
            )
            .unwrap();
            self.s.write_all(&net::stream_prefix(n)).unwrap();
            self.s.write_all(&f[..n]).unwrap();
        }

        /// The numbers of the frames the host end sent within the read timeout.
        fn receive(&mut self) -> Vec<u64> {
            let mut dec = StreamDecoder::new(&mut self.dec_buf);
            let mut got = Vec::new();
            let mut chunk = [0u8; 4096];
            while let Ok(n) = self.s.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                dec.push(&chunk[..n], |f| got.push(net::decode(f).unwrap().seq))
                    .unwrap();
            }
            assert!(dec.at_boundary(), "a frame came in part");
            self.pending.extend(&got);
            got
        }
    }

    #[test]
    fn both_directions_complete_and_the_last_frame_waits_for_the_guests() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nic.sock");
        let end = HostEnd::start(&path, 5, 3, Duration::from_secs(10), None).unwrap();
        let mut q = FakeQemu::connect(&path);
        for seq in 0..4 {
            q.send(seq);
        }
        assert_eq!(q.receive(), [0, 1, 2, 3], "the last frame is held back");
        q.send(4);
        assert_eq!(q.receive(), [4]);
        drop(q);
        std::thread::sleep(Duration::from_millis(100));
        let f = end.finish();
        assert!(f.connected && f.error.is_none(), "{f:?}");
        assert_eq!((f.rx_sent, f.tx_next, f.tx_bad), (5, 5, 0));
    }

    #[test]
    fn a_guest_frame_lost_or_repeated_is_counted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nic.sock");
        let end = HostEnd::start(&path, 4, 3, Duration::from_secs(10), None).unwrap();
        let mut q = FakeQemu::connect(&path);
        for seq in [0, 0, 2, 3] {
            q.send(seq);
        }
        q.receive();
        drop(q);
        std::thread::sleep(Duration::from_millis(100));
        let f = end.finish();
        assert_eq!(
            (f.tx_next, f.tx_duplicated, f.tx_reordered, f.tx_skipped),
            (4, 1, 1, 1)
        );
    }

    #[test]
    fn a_malformed_length_from_qemu_ends_the_stream_with_its_cause() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nic.sock");
        let end = HostEnd::start(&path, 2, 3, Duration::from_secs(10), None).unwrap();
        let mut s = UnixStream::connect(&path).unwrap();
        s.write_all(&[0, 0, 0, 0]).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        let f = end.finish();
        assert!(f.error.unwrap().contains("length 0"));
    }

    #[test]
    fn no_connection_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let end = HostEnd::start(
            &dir.path().join("nic.sock"),
            2,
            3,
            Duration::from_millis(100),
            None,
        )
        .unwrap();
        std::thread::sleep(Duration::from_millis(300));
        let f = end.finish();
        assert!(!f.connected);
        assert!(f.error.unwrap().contains("did not connect"));
    }
}
