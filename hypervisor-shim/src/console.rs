//! The guest's serial console (COM1 on QEMU's stdout) and QEMU's stderr.
//!
//! A reader thread splits the byte stream into lines, writes each one to `serial.log` prefixed with the
//! shim's own timestamp (seconds since QEMU was spawned), and sends it, with the instant it arrived,
//! over a channel to the scenario. Guest output is untrusted (architecture invariant I6): lines are
//! bounded in length, invalid UTF-8 is replaced, and nothing here interprets them.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::Path;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Longest serial line kept; the rest of an overlong line is dropped.
pub const MAX_LINE: usize = 4096;

/// One line of guest output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// When the shim read it.
    pub at: Instant,
    /// The text, without the line ending.
    pub text: String,
}

/// Splits a byte stream into bounded lines (`\n`, optional `\r` before it).
#[derive(Debug, Default)]
pub struct LineSplitter {
    cur: Vec<u8>,
    overlong: bool,
}

impl LineSplitter {
    /// Feeds bytes; calls `emit` for every completed line.
    pub fn feed(&mut self, bytes: &[u8], mut emit: impl FnMut(String)) {
        for &b in bytes {
            if b == b'\n' {
                emit(self.finish_line());
            } else if self.cur.len() < MAX_LINE {
                self.cur.push(b);
            } else {
                self.overlong = true;
            }
        }
    }

    /// The partial line left at end of stream, if any.
    pub fn flush(&mut self) -> Option<String> {
        if self.cur.is_empty() && !self.overlong {
            None
        } else {
            Some(self.finish_line())
        }
    }

    fn finish_line(&mut self) -> String {
        if self.cur.last() == Some(&b'\r') {
            self.cur.pop();
        }
        let mut s = String::from_utf8_lossy(&self.cur).into_owned();
        if self.overlong {
            s.push_str(" [...line truncated]");
        }
        self.cur.clear();
        self.overlong = false;
        s
    }
}

/// The receiving end of the serial reader thread.
#[derive(Debug)]
pub struct SerialConsole {
    rx: Receiver<Line>,
    thread: Option<JoinHandle<()>>,
}

/// What [`SerialConsole::recv`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Recv {
    /// A line.
    Line(Line),
    /// Nothing within the timeout.
    Idle,
    /// The stream ended (QEMU closed stdout, i.e. exited).
    Closed,
}

impl SerialConsole {
    /// Starts the reader thread: reads `stream`, tees timestamped lines to `log` (created), and
    /// forwards them. `t0` is the reference instant for the log's timestamps.
    pub fn start<R: Read + Send + 'static>(
        stream: R,
        log: &Path,
        t0: Instant,
    ) -> std::io::Result<Self> {
        let file = BufWriter::new(File::create(log)?);
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("serial".into())
            .spawn(move || read_loop(stream, file, t0, tx))?;
        Ok(Self {
            rx,
            thread: Some(thread),
        })
    }

    /// Waits at most `timeout` for the next line.
    pub fn recv(&self, timeout: Duration) -> Recv {
        match self.rx.recv_timeout(timeout) {
            Ok(l) => Recv::Line(l),
            Err(RecvTimeoutError::Timeout) => Recv::Idle,
            Err(RecvTimeoutError::Disconnected) => Recv::Closed,
        }
    }
}

impl Drop for SerialConsole {
    fn drop(&mut self) {
        // The thread ends when QEMU's stdout closes; QEMU is killed by its own guard, which the
        // scenario drops first. Only join once the thread is known to be done, never block here.
        if let Some(t) = self.thread.take()
            && t.is_finished()
        {
            let _ = t.join();
        }
    }
}

fn read_loop<R: Read>(mut stream: R, mut log: BufWriter<File>, t0: Instant, tx: Sender<Line>) {
    let mut splitter = LineSplitter::default();
    let mut buf = [0u8; 4096];
    let emit = |text: String, log: &mut BufWriter<File>| {
        let at = Instant::now();
        let t = at.saturating_duration_since(t0).as_secs_f64();
        // A failing log write must not stop the console; the line still reaches the scenario.
        let _ = writeln!(log, "[{t:10.6}] {text}");
        let _ = log.flush();
        // The scenario may have stopped listening; keep draining so QEMU never blocks on stdout.
        let _ = tx.send(Line { at, text });
    };
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let mut lines = Vec::new();
                splitter.feed(&buf[..n], |l| lines.push(l));
                for l in lines {
                    emit(l, &mut log);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    if let Some(l) = splitter.flush() {
        emit(l, &mut log);
    }
}

/// Copies QEMU's stderr to a file in a thread and keeps its tail for error messages.
#[derive(Debug)]
pub struct StderrCapture {
    rx: Receiver<String>,
}

impl StderrCapture {
    /// Starts copying `stream` to `log`.
    pub fn start<R: Read + Send + 'static>(mut stream: R, log: &Path) -> std::io::Result<Self> {
        let mut file = File::create(log)?;
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("qemu-stderr".into())
            .spawn(move || {
                let mut all = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    match stream.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => {
                            let _ = file.write_all(&buf[..n]);
                            if all.len() < 64 * 1024 {
                                all.extend_from_slice(&buf[..n]);
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(_) => break,
                    }
                }
                let _ = tx.send(String::from_utf8_lossy(&all).into_owned());
            })?;
        Ok(Self { rx })
    }

    /// QEMU's stderr once it closed (waits at most `timeout`); empty if it did not close in time.
    pub fn collect(&self, timeout: Duration) -> String {
        self.rx.recv_timeout(timeout).unwrap_or_default()
    }
}

/// The word of an unknown `BATON <word> ...` line (`GuestLine::Unknown`'s text), cut to 32
/// characters, for a report note: guest bytes are untrusted (I6), so a note never carries more.
pub fn unknown_word(rest: &str) -> String {
    rest.split(' ')
        .next()
        .unwrap_or("")
        .chars()
        .take(32)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_lines_and_strips_cr() {
        let mut s = LineSplitter::default();
        let mut out = Vec::new();
        s.feed(b"BATON ready\r\n[INFO ] x\nBATON fir", |l| out.push(l));
        s.feed(b"st-io\n", |l| out.push(l));
        assert_eq!(out, ["BATON ready", "[INFO ] x", "BATON first-io"]);
        assert_eq!(s.flush(), None);
        s.feed(b"partial", |l| out.push(l));
        assert_eq!(s.flush().as_deref(), Some("partial"));
    }

    #[test]
    fn bounds_overlong_lines_and_replaces_bad_utf8() {
        let mut s = LineSplitter::default();
        let mut out = Vec::new();
        let long = vec![b'a'; MAX_LINE * 3];
        s.feed(&long, |l| out.push(l));
        s.feed(b"\n\xff\xfeok\n", |l| out.push(l));
        assert_eq!(out.len(), 2);
        assert!(out[0].starts_with(&"a".repeat(MAX_LINE)));
        assert!(out[0].ends_with("[...line truncated]"));
        assert!(out[0].len() < MAX_LINE + 32);
        assert!(out[1].ends_with("ok"));
    }

    #[test]
    fn console_tees_to_log_and_reports_close() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("serial.log");
        let input: &'static [u8] = b"hello\nBATON first-io\ntail";
        let con = SerialConsole::start(input, &log, Instant::now()).unwrap();
        let mut lines = Vec::new();
        loop {
            match con.recv(Duration::from_secs(5)) {
                Recv::Line(l) => lines.push(l.text),
                Recv::Closed => break,
                Recv::Idle => panic!("console stalled"),
            }
        }
        assert_eq!(lines, ["hello", "BATON first-io", "tail"]);
        drop(con);
        let text = std::fs::read_to_string(&log).unwrap();
        assert_eq!(text.lines().count(), 3);
        assert!(text.lines().nth(1).unwrap().ends_with("] BATON first-io"));
        assert!(text.starts_with("[  0."));
    }
}
