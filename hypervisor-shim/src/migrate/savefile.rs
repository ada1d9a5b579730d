//! The owner's saved state on the host (docs/design.md, "Save and restore"): the shim itself is
//! the writer of the state file and the reader that feeds it to the restore, so it knows when the
//! file is complete, synced and as long as what QEMU sent.
//!
//! - Save: the shim listens on a Unix socket ([`StateWriter`]); the source QEMU's `migrate
//!   unix:<socket>` connects to it; a thread copies every byte into the file, counting them, until
//!   QEMU closes its end (QEMU closes the migration stream only once it has written all of it), then
//!   `fsync`s the file and its directory.
//! - Check ([`check_saved`]): the file's length on disk equals the byte count, and the stream is
//!   whole by its own framing ([`check_stream`]): QEMU's header (`QEVM`, version 3) at the start,
//!   and at the end the `QEMU_VM_EOF` byte, then the VM description section whose length field
//!   covers exactly the rest of the file and whose text is one JSON object.
//! - Restore: the restore QEMU listens (`migrate-incoming unix:<socket>`); [`StateFeeder`] connects
//!   and sends the checked file.
//!
//! No external process (`exec:cat`) writes or reads the state: a writer that reports success
//! before its data is on disk cannot make the shim quit the last runnable copy.

use std::fs::File;
use std::io::{ErrorKind, Read, Seek, SeekFrom, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use crate::setup::SocketPath;

/// QEMU's migration stream magic (`QEMU_VM_FILE_MAGIC`, "QEVM") and version (3).
const STREAM_HEADER: [u8; 8] = *b"QEVM\0\0\0\x03";
/// `QEMU_VM_EOF`: the byte that ends the device sections.
const SECTION_EOF: u8 = 0x00;
/// `QEMU_VM_VMDESCRIPTION`: the JSON description of the devices that follows `QEMU_VM_EOF`.
const SECTION_VMDESC: u8 = 0x06;
/// How much of the file's end is searched for the VM description (QEMU's is ~100 KiB).
const TAIL_WINDOW: u64 = 8 << 20;
/// How long a read or accept waits before the writer looks at its stop flag again.
const POLL: Duration = Duration::from_millis(100);
/// Copy buffer size.
const CHUNK: usize = 1 << 20;

/// What went wrong with the saved state.
#[derive(Debug, thiserror::Error)]
pub enum SaveFileError {
    /// The state file could not be created, written or synced.
    #[error("cannot write the state file {path}: {source}")]
    Write {
        /// The state file.
        path: PathBuf,
        /// The cause (e.g. no space left on device).
        source: std::io::Error,
    },
    /// The state file could not be read back.
    #[error("cannot read the state file {path}: {source}")]
    Read {
        /// The state file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The migration socket failed.
    #[error("migration socket {path}: {source}")]
    Socket {
        /// The socket.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// QEMU never connected, or stopped sending without closing the stream.
    #[error("{0}")]
    Timeout(String),
    /// The file on disk is not what QEMU sent.
    #[error("the state file holds {on_disk} bytes, QEMU sent {sent}")]
    Size {
        /// Bytes received from QEMU and written.
        sent: u64,
        /// The file's length after `fsync`.
        on_disk: u64,
    },
    /// The stream is not whole by its own framing.
    #[error("the saved stream is incomplete: {0}")]
    Stream(&'static str),
    /// The writer or feeder thread ended without a result.
    #[error("the {0} thread ended without a result")]
    Lost(&'static str),
}

/// The state file as written: every byte QEMU sent, synced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    /// Bytes received from QEMU (and written to the file).
    pub bytes: u64,
}

/// The shim's end of `migrate unix:<socket>`: a thread that writes what QEMU sends into the state
/// file. Dropping it stops the thread (within [`POLL`]) and removes the socket.
pub(super) struct StateWriter {
    socket: SocketPath,
    stop: Arc<AtomicBool>,
    done: Receiver<Result<Written, SaveFileError>>,
}

impl StateWriter {
    /// Listens on `socket` and creates (truncates) `file`; the thread waits up to `idle` for QEMU
    /// to connect and, between two reads, for more data. With `hold` (`--inject
    /// save-writer-late`), the thread keeps what QEMU sends in memory and writes it only `hold`
    /// after QEMU closed the stream, as a slow disk would: QEMU has long said `completed` by then,
    /// and the shim still quits the source only after [`StateWriter::finish`] and [`check_saved`].
    pub(super) fn start(
        socket: &Path,
        file: &Path,
        idle: Duration,
        hold: Option<Duration>,
    ) -> Result<Self, SaveFileError> {
        let socket = SocketPath::fresh(socket.to_path_buf());
        let sock_err = |source| SaveFileError::Socket {
            path: socket.0.clone(),
            source,
        };
        let listener = UnixListener::bind(&socket.0).map_err(sock_err)?;
        listener.set_nonblocking(true).map_err(sock_err)?;
        let out = File::create(file).map_err(|source| SaveFileError::Write {
            path: file.to_path_buf(),
            source,
        })?;
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, done) = mpsc::channel();
        let (flag, path, sock) = (stop.clone(), file.to_path_buf(), socket.0.clone());
        std::thread::Builder::new()
            .name("state-writer".into())
            .spawn(move || {
                let _ = tx.send(write_state(&listener, &sock, out, &path, &flag, idle, hold));
            })
            .map_err(|source| SaveFileError::Socket {
                path: socket.0.clone(),
                source,
            })?;
        Ok(Self { socket, stop, done })
    }

    /// The URI to give the source's `migrate`.
    pub(super) fn uri(&self) -> String {
        format!("unix:{}", self.socket.0.display())
    }

    /// Waits up to `timeout` for the writer to see the end of the stream and sync the file.
    pub(super) fn finish(self, timeout: Duration) -> Result<Written, SaveFileError> {
        match self.done.recv_timeout(timeout) {
            Ok(r) => r,
            Err(RecvTimeoutError::Timeout) => Err(SaveFileError::Timeout(format!(
                "QEMU had not closed the migration stream {timeout:?} after `completed`"
            ))),
            Err(RecvTimeoutError::Disconnected) => Err(SaveFileError::Lost("state writer")),
        }
    }
}

impl Drop for StateWriter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The writer thread: accept QEMU's connection, copy to `out` until EOF (with `hold`: gather in
/// memory until EOF, wait `hold`, then write), fsync file and directory.
fn write_state(
    listener: &UnixListener,
    sock: &Path,
    mut out: File,
    path: &Path,
    stop: &AtomicBool,
    idle: Duration,
    hold: Option<Duration>,
) -> Result<Written, SaveFileError> {
    let sock_err = |source| SaveFileError::Socket {
        path: sock.to_path_buf(),
        source,
    };
    let write_err = |source| SaveFileError::Write {
        path: path.to_path_buf(),
        source,
    };
    let start = Instant::now();
    let mut conn = loop {
        match listener.accept() {
            Ok((c, _)) => break c,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(e) => return Err(sock_err(e)),
        }
        if stop.load(Ordering::Relaxed) || start.elapsed() >= idle {
            return Err(SaveFileError::Timeout(format!(
                "QEMU did not connect to the migration socket within {:?}",
                start.elapsed()
            )));
        }
        std::thread::sleep(POLL / 10);
    };
    conn.set_nonblocking(false).map_err(sock_err)?;
    conn.set_read_timeout(Some(POLL)).map_err(sock_err)?;
    let mut buf = vec![0u8; CHUNK];
    let mut held = Vec::new();
    let mut bytes = 0u64;
    let mut last = Instant::now();
    loop {
        match conn.read(&mut buf) {
            Ok(0) => break,
            Ok(n) if hold.is_some() => {
                held.extend_from_slice(&buf[..n]);
                bytes += n as u64;
                last = Instant::now();
            }
            Ok(n) => {
                out.write_all(&buf[..n]).map_err(write_err)?;
                bytes += n as u64;
                last = Instant::now();
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                if stop.load(Ordering::Relaxed) || last.elapsed() >= idle {
                    return Err(SaveFileError::Timeout(format!(
                        "QEMU sent nothing for {:?} and did not close the stream ({bytes} bytes so far)",
                        last.elapsed()
                    )));
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(sock_err(e)),
        }
    }
    if let Some(hold) = hold {
        let until = Instant::now() + hold;
        while Instant::now() < until {
            if stop.load(Ordering::Relaxed) {
                return Err(SaveFileError::Timeout(format!(
                    "the state writer was stopped while it held {bytes} bytes back"
                )));
            }
            std::thread::sleep(POLL);
        }
        out.write_all(&held).map_err(write_err)?;
    }
    out.sync_all().map_err(write_err)?;
    if let Some(dir) = path.parent() {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(write_err)?;
    }
    Ok(Written { bytes })
}

/// Checks the synced state file against what QEMU sent: its length, then its framing
/// ([`check_stream`]).
pub(super) fn check_saved(path: &Path, written: Written) -> Result<(), SaveFileError> {
    let read_err = |source| SaveFileError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut f = File::open(path).map_err(read_err)?;
    let on_disk = f.metadata().map_err(read_err)?.len();
    if on_disk != written.bytes {
        return Err(SaveFileError::Size {
            sent: written.bytes,
            on_disk,
        });
    }
    let mut head = [0u8; STREAM_HEADER.len()];
    let got = read_up_to(&mut f, &mut head).map_err(read_err)?;
    let tail_len = on_disk.min(TAIL_WINDOW);
    f.seek(SeekFrom::Start(on_disk - tail_len))
        .map_err(read_err)?;
    let mut tail = Vec::with_capacity(usize::try_from(tail_len).unwrap_or(0));
    f.take(tail_len).read_to_end(&mut tail).map_err(read_err)?;
    check_stream(&head[..got], &tail).map_err(SaveFileError::Stream)
}

/// Reads until `buf` is full or the file ends; the count read.
fn read_up_to(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Whether a migration stream is whole by its framing: `head` is its first bytes, `tail` its last
/// (up to [`TAIL_WINDOW`]). The end must be `QEMU_VM_EOF`, `QEMU_VM_VMDESCRIPTION`, a big-endian
/// u32 length `n`, then exactly `n` bytes of one JSON object; a stream cut anywhere cannot end so
/// (the length field is written before the text it counts). `Err` says what is missing.
pub fn check_stream(head: &[u8], tail: &[u8]) -> Result<(), &'static str> {
    if head.len() < STREAM_HEADER.len() {
        return Err("shorter than QEMU's stream header");
    }
    if head[..STREAM_HEADER.len()] != STREAM_HEADER {
        return Err("no QEMU stream header (QEVM, version 3) at the start");
    }
    if tail.last() != Some(&b'}') {
        return Err("it does not end with the VM description's closing brace");
    }
    // Candidates: every `EOF VMDESC len` whose length covers exactly the rest.
    for at in (0..tail.len().saturating_sub(5)).rev() {
        if tail[at] != SECTION_EOF || tail[at + 1] != SECTION_VMDESC {
            continue;
        }
        let Some(len) = tail.get(at + 2..at + 6) else {
            continue;
        };
        let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
        let text = &tail[at + 6..];
        if len == text.len()
            && text.first() == Some(&b'{')
            && serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(text).is_ok()
        {
            return Ok(());
        }
    }
    Err("no end-of-sections marker followed by a VM description that ends the file")
}

/// The shim's end of `migrate-incoming unix:<socket>`: a thread that sends the checked state file
/// to the restore QEMU.
pub(super) struct StateFeeder {
    done: Receiver<Result<u64, SaveFileError>>,
}

impl StateFeeder {
    /// Connects to the restore QEMU's `socket` (retrying up to `connect` while it starts
    /// listening) and sends `file` in a thread.
    pub(super) fn start(socket: &Path, file: &Path, connect: Duration) -> Self {
        let (tx, done) = mpsc::channel();
        let (socket, file) = (socket.to_path_buf(), file.to_path_buf());
        let spawned = std::thread::Builder::new()
            .name("state-feeder".into())
            .spawn({
                let tx = tx.clone();
                move || {
                    let _ = tx.send(feed_state(&socket, &file, connect));
                }
            });
        if spawned.is_err() {
            let _ = tx.send(Err(SaveFileError::Lost("state feeder")));
        }
        Self { done }
    }

    /// The bytes sent, once the thread is done (`None` while it still sends).
    pub(super) fn result(&self, timeout: Duration) -> Option<Result<u64, SaveFileError>> {
        match self.done.recv_timeout(timeout) {
            Ok(r) => Some(r),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => Some(Err(SaveFileError::Lost("state feeder"))),
        }
    }
}

/// The feeder thread.
fn feed_state(socket: &Path, file: &Path, connect: Duration) -> Result<u64, SaveFileError> {
    let start = Instant::now();
    let mut conn = loop {
        match UnixStream::connect(socket) {
            Ok(c) => break c,
            Err(e) if start.elapsed() >= connect => {
                return Err(SaveFileError::Socket {
                    path: socket.to_path_buf(),
                    source: e,
                });
            }
            Err(_) => std::thread::sleep(POLL / 10),
        }
    };
    let mut f = File::open(file).map_err(|source| SaveFileError::Read {
        path: file.to_path_buf(),
        source,
    })?;
    let n = std::io::copy(&mut f, &mut conn).map_err(|source| SaveFileError::Socket {
        path: socket.to_path_buf(),
        source,
    })?;
    let _ = conn.shutdown(std::net::Shutdown::Write);
    Ok(n)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A minimal stream: header, one byte of sections, EOF, the VM description.
    fn stream(desc: &str) -> Vec<u8> {
        let mut s = STREAM_HEADER.to_vec();
        s.extend_from_slice(&[0x04, 0x7e, 0, 0, 0, 1]);
        s.push(SECTION_EOF);
        s.push(SECTION_VMDESC);
        s.extend_from_slice(&u32::try_from(desc.len()).unwrap().to_be_bytes());
        s.extend_from_slice(desc.as_bytes());
        s
    }

    #[test]
    fn a_whole_stream_passes_and_every_cut_fails() {
        let s = stream(r#"{"page_size": 4096, "devices": [{"name": "x"}]}"#);
        assert_eq!(check_stream(&s, &s), Ok(()));
        for cut in 0..s.len() {
            let t = &s[..cut];
            assert!(check_stream(t, t).is_err(), "cut at {cut} passed");
        }
    }

    #[test]
    fn a_description_whose_length_does_not_cover_the_rest_fails() {
        let mut s = stream(r#"{"a": 1}"#);
        s.extend_from_slice(b"}");
        assert!(check_stream(&s, &s).is_err());
        assert!(check_stream(b"QEVM\0\0\0\x02", &stream("{}")).is_err());
    }

    #[test]
    fn writer_counts_syncs_and_the_check_matches() {
        let dir = tempfile::tempdir().unwrap();
        let (sock, file) = (dir.path().join("m.sock"), dir.path().join("s.state"));
        let w = StateWriter::start(&sock, &file, Duration::from_secs(5), None).unwrap();
        let s = stream(r#"{"devices": []}"#);
        let mut c = UnixStream::connect(&sock).unwrap();
        c.write_all(&s).unwrap();
        drop(c);
        let written = w.finish(Duration::from_secs(5)).unwrap();
        assert_eq!(written.bytes, s.len() as u64);
        check_saved(&file, written).unwrap();
        // A file that lost its end afterwards is refused on length.
        let f = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
        f.set_len(s.len() as u64 - 3).unwrap();
        assert!(matches!(
            check_saved(&file, written),
            Err(SaveFileError::Size { .. })
        ));
        assert!(!sock.exists(), "the writer removes its socket");
    }

    #[test]
    fn a_late_writer_holds_the_data_back_and_the_check_still_passes() {
        let dir = tempfile::tempdir().unwrap();
        let (sock, file) = (dir.path().join("m.sock"), dir.path().join("s.state"));
        let hold = Duration::from_millis(400);
        let w = StateWriter::start(&sock, &file, Duration::from_secs(5), Some(hold)).unwrap();
        let s = stream(r#"{"devices": []}"#);
        let mut c = UnixStream::connect(&sock).unwrap();
        c.write_all(&s).unwrap();
        drop(c);
        let closed = Instant::now();
        std::thread::sleep(Duration::from_millis(150));
        assert_eq!(std::fs::metadata(&file).unwrap().len(), 0, "held back");
        let written = w.finish(Duration::from_secs(5)).unwrap();
        assert!(closed.elapsed() >= hold);
        assert_eq!(written.bytes, s.len() as u64);
        check_saved(&file, written).unwrap();
    }

    #[test]
    fn writer_reports_a_full_disk_and_a_silent_peer() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("m.sock");
        let full = Path::new("/dev/full");
        if full.exists() {
            let w = StateWriter::start(&sock, full, Duration::from_secs(5), None).unwrap();
            let mut c = UnixStream::connect(&sock).unwrap();
            let _ = c.write_all(&stream("{}"));
            drop(c);
            let e = w.finish(Duration::from_secs(5)).unwrap_err();
            assert!(e.to_string().contains("No space left"), "{e}");
        }
        let w = StateWriter::start(
            &sock,
            &dir.path().join("s"),
            Duration::from_millis(300),
            None,
        )
        .unwrap();
        assert!(matches!(
            w.finish(Duration::from_secs(5)),
            Err(SaveFileError::Timeout(_))
        ));
    }

    #[test]
    fn feeder_sends_the_whole_file() {
        let dir = tempfile::tempdir().unwrap();
        let (sock, file) = (dir.path().join("in.sock"), dir.path().join("s.state"));
        std::fs::write(&file, stream("{}")).unwrap();
        let l = UnixListener::bind(&sock).unwrap();
        let f = StateFeeder::start(&sock, &file, Duration::from_secs(5));
        let (mut c, _) = l.accept().unwrap();
        let mut got = Vec::new();
        c.read_to_end(&mut got).unwrap();
        assert_eq!(got, stream("{}"));
        let sent = f.result(Duration::from_secs(5)).unwrap().unwrap();
        assert_eq!(sent, got.len() as u64);
    }
}
