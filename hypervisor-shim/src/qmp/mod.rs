//! The shim's QMP (QEMU Machine Protocol) client, on the `qapi` crates' types.
//!
//! QMP is line-delimited JSON over a socket (QEMU docs/interop/qmp-spec.rst): QEMU sends a greeting,
//! the client negotiates with `qmp_capabilities`, then sends `{"execute": ..., "arguments": ...,
//! "id": ...}` and receives either `{"return": ..., "id": ...}` or `{"error": {...}, "id": ...}`.
//! Asynchronous `{"event": ...}` messages may arrive at any time; they are queued in arrival order and
//! handed out by [`Qmp::wait_event`] / [`Qmp::take_events`].
//!
//! What goes on the wire is typed by `qapi-qmp`, which is generated from QEMU's QAPI schema: each
//! command of [`commands`] is sent as the schema's command type (`qapi::qmp::device_add`, ...),
//! framed by `qapi::Execute`, and its reply is decoded as that command's reply type (`type Ok`);
//! rejections decode as `qapi::Error`, events as `qapi::qmp::Event` ([`Event::typed`]). The command
//! types the callers build keep the shapes the shim uses (see [`commands`]); they are checked against
//! the schema before anything is sent. The crate's schema is QEMU 9.1's; the QEMU here is 7.2, whose
//! replies and events the schema's types decode (unit tests replay 7.2 transcripts,
//! `testdata/qemu-7.2.txt`).
//!
//! The transport is this module's, not `qapi::Qmp`: the crate's blocking client has no deadline
//! (with a socket read timeout, a timeout in the middle of a line drops the bytes already read), sends
//! no command ids (a late reply to a timed-out command would be taken as the next command's),
//! panics when QEMU closes before its greeting, and fails a command's whole reply when an event the
//! schema does not know arrives before it. Here every wait has a deadline, replies are matched by
//! id, and an event the schema does not describe is kept as raw JSON.
//!
//! The client works over any `Read + Write` stream, so it is unit-tested without QEMU. A read that
//! returns `WouldBlock`/`TimedOut` is retried until the deadline, so the stream must have a short
//! read timeout (as [`connect_unix`] sets) for deadlines to be honoured.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{Map, Value};

pub mod commands;
#[cfg(test)]
mod tests;

pub use commands::*;

/// Longest QMP message accepted (QEMU's own replies are far shorter).
const MAX_MESSAGE: usize = 1 << 20;
/// Read timeout set on the socket; bounds how late a deadline can be noticed.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Errors of the QMP client.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    /// I/O error on the QMP socket
    #[error("I/O error on the QMP socket")]
    Io(#[from] std::io::Error),
    /// could not connect to the QMP socket before the deadline
    #[error("could not connect to the QMP socket {path} within {waited:?}")]
    Connect {
        /// Socket path.
        path: String,
        /// How long we tried.
        waited: Duration,
        /// Last connection error.
        #[source]
        source: std::io::Error,
    },
    /// QEMU went away before the QMP socket could be connected
    #[error("QEMU exited before its QMP socket could be connected")]
    QemuGone,
    /// QEMU closed the QMP connection
    #[error("QEMU closed the QMP connection")]
    Closed,
    /// timed out waiting on QMP
    #[error("timed out after {waited:?} waiting for {what}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long we waited.
        waited: Duration,
    },
    /// a QMP message was longer than the limit
    #[error("QMP message longer than {MAX_MESSAGE} bytes")]
    TooLong,
    /// a QMP message was not valid JSON
    #[error("malformed QMP message")]
    Malformed(#[source] serde_json::Error),
    /// the QMP greeting was missing or malformed
    #[error("unexpected QMP greeting: {0}")]
    Greeting(String),
    /// QEMU rejected a command
    #[error("QEMU rejected `{command}`: {class}: {desc}")]
    Rejected {
        /// Command name.
        command: &'static str,
        /// QMP error class (`GenericError`, `DeviceNotFound`, ...).
        class: String,
        /// QMP error description.
        desc: String,
    },
    /// a reply did not have the shape its command promises
    #[error("unexpected reply to `{command}`")]
    Reply {
        /// Command name.
        command: &'static str,
        /// Why the reply did not fit.
        #[source]
        source: serde_json::Error,
    },
    /// the arguments of a command could not be encoded, or do not fit QEMU's schema
    #[error("cannot encode the arguments of `{command}`")]
    Encode {
        /// Command name.
        command: &'static str,
        /// Encoding error.
        #[source]
        source: serde_json::Error,
    },
}

/// An asynchronous QMP event, as QEMU sent it.
///
/// The name and data stay raw JSON so that reports keep exactly what QEMU said, including events
/// the schema does not describe; [`Event::typed`] decodes it as the schema's `qapi::qmp::Event`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
    /// Event name, e.g. `DEVICE_DELETED`.
    pub name: String,
    /// Event data (`null` when absent).
    pub data: Value,
    /// QEMU's timestamp (its wall clock when it emitted the event) in microseconds since the Unix
    /// epoch; 0 when absent.
    pub timestamp_us: u64,
}

impl Event {
    fn from_message(msg: &Map<String, Value>) -> Option<Self> {
        let name = msg.get("event")?.as_str()?.to_owned();
        let data = msg.get("data").cloned().unwrap_or(Value::Null);
        let ts = msg.get("timestamp");
        let field = |k: &str| ts.and_then(|t| t.get(k)).and_then(Value::as_u64);
        let timestamp_us = field("seconds")
            .unwrap_or(0)
            .saturating_mul(1_000_000)
            .saturating_add(field("microseconds").unwrap_or(0));
        Some(Self {
            name,
            data,
            timestamp_us,
        })
    }

    /// The event as the schema types it, or `None` when the schema does not describe it (an event
    /// of another QEMU version, or data of another shape).
    pub fn typed(&self) -> Option<qapi::qmp::Event> {
        let mut msg = Map::new();
        msg.insert("event".into(), Value::from(self.name.as_str()));
        if !self.data.is_null() {
            msg.insert("data".into(), self.data.clone());
        }
        let stamp = serde_json::json!({
            "seconds": self.timestamp_us / 1_000_000,
            "microseconds": self.timestamp_us % 1_000_000,
        });
        msg.insert("timestamp".into(), stamp);
        serde_json::from_value(Value::Object(msg)).ok()
    }

    /// The data of a `BLOCK_IO_ERROR` event: the block backend (`device`, empty for a
    /// `-blockdev` node), the node name, the operation (`read`/`write`), the action QEMU took
    /// (`stop` pauses the VM: its `werror`/`rerror` policy; `report` passes the error to the guest;
    /// `ignore`), `nospace` (ENOSPC) and the host's error text (`reason`, e.g. `No space left on
    /// device`). `None` for any other event.
    pub fn block_io_error(&self) -> Option<qapi::qmp::BLOCK_IO_ERROR> {
        match self.typed()? {
            qapi::qmp::Event::BLOCK_IO_ERROR { data, .. } => Some(data),
            _ => None,
        }
    }

    /// The data of a `DEVICE_DELETED` event: the qdev id (`None` for a device without one, such as
    /// a virtio proxy's backend) and the QOM path. `None` for any other event.
    pub fn device_deleted(&self) -> Option<qapi::qmp::DEVICE_DELETED> {
        match self.typed()? {
            qapi::qmp::Event::DEVICE_DELETED { data, .. } => Some(data),
            _ => None,
        }
    }
}

/// A QMP session over a stream.
#[derive(Debug)]
pub struct Qmp<S> {
    stream: S,
    buf: Vec<u8>,
    /// Bytes of `buf` already known to hold no newline.
    scanned: usize,
    events: VecDeque<Event>,
    next_id: u64,
    greeting: Value,
}

impl<S: Read + Write> Qmp<S> {
    /// Reads the greeting and negotiates capabilities (leaves capabilities negotiation mode).
    pub fn handshake(stream: S, timeout: Duration) -> Result<Self, QmpError> {
        let mut qmp = Self {
            stream,
            buf: Vec::new(),
            scanned: 0,
            events: VecDeque::new(),
            next_id: 1,
            greeting: Value::Null,
        };
        let deadline = Instant::now() + timeout;
        let greeting = Value::Object(qmp.read_message(deadline, "the QMP greeting")?);
        // The schema's greeting type: `{"QMP": {"version": ..., "capabilities": [...]}}`.
        if serde_json::from_value::<qapi::qmp::QapiCapabilities>(greeting.clone()).is_err() {
            return Err(QmpError::Greeting(greeting.to_string()));
        }
        qmp.greeting = greeting.get("QMP").cloned().unwrap_or(Value::Null);
        qmp.execute(&QmpCapabilities {}, timeout)?;
        Ok(qmp)
    }

    /// The `QMP` object of the greeting.
    pub fn greeting(&self) -> &Value {
        &self.greeting
    }

    /// The underlying stream (e.g. to shorten its read timeout for tighter polling).
    pub fn stream(&self) -> &S {
        &self.stream
    }

    /// Runs a command and waits (at most `timeout`) for its reply. Events that arrive meanwhile are
    /// queued; replies to earlier commands (that timed out) are skipped by id.
    pub fn execute<C: Command>(&mut self, cmd: &C, timeout: Duration) -> Result<C::Ok, QmpError> {
        let name = C::NAME;
        let deadline = Instant::now() + timeout;
        let wire = cmd.to_qapi().map_err(|source| QmpError::Encode {
            command: name,
            source,
        })?;
        let id = self.next_id;
        self.next_id += 1;
        let request = qapi::Execute::<&C::Qapi, u64>::with_id(&wire, id);
        let mut line = serde_json::to_vec(&request).map_err(|source| QmpError::Encode {
            command: name,
            source,
        })?;
        line.extend_from_slice(b"\r\n");
        self.stream.write_all(&line)?;
        self.stream.flush()?;
        loop {
            let mut msg = self.read_message(deadline, name)?;
            if msg.contains_key("event") {
                if let Some(ev) = Event::from_message(&msg) {
                    self.events.push_back(ev);
                }
                continue;
            }
            if msg.get("id").and_then(Value::as_u64) != Some(id) {
                // A reply to something else (e.g. a command that timed out earlier): ignore it.
                continue;
            }
            if let Some(ret) = msg.remove("return") {
                let reply = serde_json::from_value::<<C::Qapi as qapi::Command>::Ok>(ret).map_err(
                    |source| QmpError::Reply {
                        command: name,
                        source,
                    },
                )?;
                return Ok(C::reply(reply));
            }
            return Err(rejection(name, msg));
        }
    }

    /// Waits (at most `timeout`) for the first event, queued or new, that `pred` accepts, and removes
    /// it from the queue. Events it passes over stay queued.
    pub fn wait_event(
        &mut self,
        what: &str,
        timeout: Duration,
        mut pred: impl FnMut(&Event) -> bool,
    ) -> Result<Event, QmpError> {
        if let Some(pos) = self.events.iter().position(&mut pred)
            && let Some(ev) = self.events.remove(pos)
        {
            return Ok(ev);
        }
        let deadline = Instant::now() + timeout;
        loop {
            let msg = self.read_message(deadline, what)?;
            if let Some(ev) = Event::from_message(&msg) {
                if pred(&ev) {
                    return Ok(ev);
                }
                self.events.push_back(ev);
            }
        }
    }

    /// Reads whatever messages arrive within `timeout` (queueing events) and returns when the stream
    /// is idle, at the deadline, or when QEMU closed the connection.
    pub fn pump(&mut self, timeout: Duration) -> Result<(), QmpError> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.read_message(deadline, "events") {
                Ok(msg) => {
                    if let Some(ev) = Event::from_message(&msg) {
                        self.events.push_back(ev);
                    }
                }
                Err(QmpError::Timeout { .. }) => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    }

    /// Removes and returns every queued event.
    pub fn take_events(&mut self) -> Vec<Event> {
        self.events.drain(..).collect()
    }

    /// Reads one JSON object, waiting at most until `deadline`. Bytes of a line not yet complete at
    /// the deadline stay buffered for the next read.
    fn read_message(
        &mut self,
        deadline: Instant,
        what: &str,
    ) -> Result<Map<String, Value>, QmpError> {
        let start = Instant::now();
        loop {
            while let Some(off) = self.buf[self.scanned..].iter().position(|&b| b == b'\n') {
                let nl = self.scanned + off;
                let line: Vec<u8> = self.buf.drain(..=nl).collect();
                self.scanned = 0;
                let text = line.trim_ascii();
                if text.is_empty() {
                    continue;
                }
                let value: Value = serde_json::from_slice(text).map_err(QmpError::Malformed)?;
                return match value {
                    Value::Object(m) => Ok(m),
                    other => Err(QmpError::Greeting(other.to_string())),
                };
            }
            self.scanned = self.buf.len();
            if self.buf.len() > MAX_MESSAGE {
                return Err(QmpError::TooLong);
            }
            if Instant::now() >= deadline {
                return Err(QmpError::Timeout {
                    what: what.to_owned(),
                    waited: start.elapsed(),
                });
            }
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err(QmpError::Closed),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                    ) =>
                {
                    if matches!(e.kind(), ErrorKind::WouldBlock) {
                        // A non-blocking stream without a timeout: don't spin hot.
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
                Err(e) => return Err(QmpError::Io(e)),
            }
        }
    }
}

impl Qmp<UnixStream> {
    /// Takes in what QEMU has sent so far without waiting: reads the socket until it would block,
    /// then queues the events among the complete messages (a partial one stays buffered). For
    /// loops that wait on the socket with `poll(2)` themselves and must not sit out a read timeout.
    /// Errors: [`QmpError::Closed`], [`QmpError::Io`], and those of the messages' parsing.
    pub fn pump_available(&mut self) -> Result<(), QmpError> {
        self.stream.set_nonblocking(true).map_err(QmpError::Io)?;
        let read = self.read_available();
        self.stream.set_nonblocking(false).map_err(QmpError::Io)?;
        read?;
        // The deadline has passed already: only complete buffered messages are taken.
        self.pump(Duration::ZERO)
    }

    fn read_available(&mut self) -> Result<(), QmpError> {
        let mut chunk = [0u8; 4096];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err(QmpError::Closed),
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    if self.buf.len() > MAX_MESSAGE {
                        return Err(QmpError::TooLong);
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(QmpError::Io(e)),
            }
        }
    }
}

/// The error reply `msg` to `command`, decoded as the schema's `qapi::Error` (class and
/// description); an error whose class the schema does not list keeps QEMU's strings.
fn rejection(command: &'static str, msg: Map<String, Value>) -> QmpError {
    let msg = Value::Object(msg);
    if let Ok(e) = serde_json::from_value::<qapi::Error>(msg.clone()) {
        return QmpError::Rejected {
            command,
            class: format!("{:?}", e.class),
            desc: e.desc,
        };
    }
    let field = |k: &str| {
        msg.get("error")
            .and_then(|e| e.get(k))
            .and_then(Value::as_str)
            .unwrap_or("?")
            .to_owned()
    };
    QmpError::Rejected {
        command,
        class: field("class"),
        desc: field("desc"),
    }
}

/// Connects to QEMU's QMP Unix socket, retrying until `timeout` elapses or `qemu_alive` says QEMU is
/// gone, then performs the handshake.
pub fn connect_unix(
    path: &Path,
    timeout: Duration,
    mut qemu_alive: impl FnMut() -> bool,
) -> Result<Qmp<UnixStream>, QmpError> {
    let start = Instant::now();
    let deadline = start + timeout;
    let stream = loop {
        match UnixStream::connect(path) {
            Ok(s) => break s,
            Err(source) => {
                if !qemu_alive() {
                    return Err(QmpError::QemuGone);
                }
                if Instant::now() >= deadline {
                    return Err(QmpError::Connect {
                        path: path.display().to_string(),
                        waited: start.elapsed(),
                        source,
                    });
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    };
    stream.set_read_timeout(Some(POLL_INTERVAL))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    let remaining = deadline.saturating_duration_since(Instant::now());
    Qmp::handshake(stream, remaining.max(Duration::from_secs(1)))
}
