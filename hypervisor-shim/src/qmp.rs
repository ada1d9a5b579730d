//! A small QMP (QEMU Machine Protocol) client.
//!
//! QMP is line-delimited JSON over a socket (QEMU docs/interop/qmp-spec.rst): QEMU sends a greeting,
//! the client negotiates with `qmp_capabilities`, then sends `{"execute": ..., "arguments": ...,
//! "id": ...}` and receives either `{"return": ..., "id": ...}` or `{"error": {...}, "id": ...}`.
//! Asynchronous `{"event": ...}` messages may arrive at any time; they are queued in arrival order and
//! handed out by [`Qmp::wait_event`] / [`Qmp::take_events`].
//!
//! Every command type implements [`Command`], which names the command and carries its reply type, so
//! a reply is checked against the shape the command promises.
//!
//! The client works over any `Read + Write` stream, so it is unit-tested with an in-memory fake. Every
//! wait has a deadline. A read that returns `WouldBlock`/`TimedOut` is retried until the deadline, so
//! the stream must have a short read timeout (as [`connect_unix`] sets) for deadlines to be honoured.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

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
        /// QMP error class.
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
    /// the arguments of a command could not be encoded
    #[error("cannot encode the arguments of `{command}`")]
    Encode {
        /// Command name.
        command: &'static str,
        /// Encoding error.
        #[source]
        source: serde_json::Error,
    },
}

/// A QMP command: its name, its arguments (the serialized value) and its reply type.
pub trait Command: Serialize {
    /// The command name, e.g. `query-status`.
    const NAME: &'static str;
    /// What the command returns.
    type Ok: DeserializeOwned;
}

/// An empty reply (`{}`).
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
pub struct Empty {}

/// An asynchronous QMP event.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
    /// Event name, e.g. `DEVICE_DELETED`.
    pub name: String,
    /// Event data (`null` when absent).
    pub data: Value,
    /// QEMU's timestamp in microseconds since the epoch (0 when absent).
    pub timestamp_us: u64,
}

impl Event {
    fn from_message(msg: &Map<String, Value>) -> Option<Self> {
        let name = msg.get("event")?.as_str()?.to_owned();
        let data = msg.get("data").cloned().unwrap_or(Value::Null);
        let ts = msg.get("timestamp");
        let secs = ts
            .and_then(|t| t.get("seconds"))
            .and_then(Value::as_u64)
            .unwrap_or(0);
        let usecs = ts
            .and_then(|t| t.get("microseconds"))
            .and_then(Value::as_u64)
            .unwrap_or(0);
        Some(Self {
            name,
            data,
            timestamp_us: secs.saturating_mul(1_000_000).saturating_add(usecs),
        })
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
        let greeting = qmp.read_message(deadline, "the QMP greeting")?;
        match greeting.get("QMP") {
            Some(g) if g.is_object() => qmp.greeting = g.clone(),
            _ => return Err(QmpError::Greeting(Value::Object(greeting).to_string())),
        }
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
    /// queued.
    pub fn execute<C: Command>(&mut self, cmd: &C, timeout: Duration) -> Result<C::Ok, QmpError> {
        let ret = self.execute_raw(C::NAME, cmd, timeout)?;
        serde_json::from_value(ret).map_err(|source| QmpError::Reply {
            command: C::NAME,
            source,
        })
    }

    fn execute_raw<A: Serialize>(
        &mut self,
        name: &'static str,
        args: &A,
        timeout: Duration,
    ) -> Result<Value, QmpError> {
        let deadline = Instant::now() + timeout;
        let id = self.next_id;
        self.next_id += 1;
        let args = serde_json::to_value(args).map_err(|source| QmpError::Encode {
            command: name,
            source,
        })?;
        let mut req = Map::new();
        req.insert("execute".into(), Value::from(name));
        match args {
            Value::Object(m) if m.is_empty() => {}
            Value::Null => {}
            other => {
                req.insert("arguments".into(), other);
            }
        }
        req.insert("id".into(), Value::from(id));
        let mut line = Value::Object(req).to_string().into_bytes();
        line.extend_from_slice(b"\r\n");
        self.stream.write_all(&line)?;
        self.stream.flush()?;
        loop {
            let msg = self.read_message(deadline, name)?;
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
            if let Some(ret) = msg.get("return") {
                return Ok(ret.clone());
            }
            let err = msg.get("error");
            let field = |k: &str| {
                err.and_then(|e| e.get(k))
                    .and_then(Value::as_str)
                    .unwrap_or("?")
                    .to_owned()
            };
            return Err(QmpError::Rejected {
                command: name,
                class: field("class"),
                desc: field("desc"),
            });
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

    /// Reads one JSON object, waiting at most until `deadline`.
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
                let text = trim_ascii(&line);
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

fn trim_ascii(b: &[u8]) -> &[u8] {
    let start = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &b[start..end.max(start)]
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

// ---- commands -------------------------------------------------------------------------------------

/// `qmp_capabilities`: leave capabilities negotiation mode.
#[derive(Debug, Serialize)]
pub struct QmpCapabilities {}
impl Command for QmpCapabilities {
    const NAME: &'static str = "qmp_capabilities";
    type Ok = Empty;
}

/// `query-status`.
#[derive(Debug, Serialize)]
pub struct QueryStatus {}
/// Reply of `query-status`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
pub struct StatusInfo {
    /// Run state, e.g. `running`, `paused`, `inmigrate`.
    pub status: String,
    /// Whether the VCPUs run.
    pub running: bool,
}
impl Command for QueryStatus {
    const NAME: &'static str = "query-status";
    type Ok = StatusInfo;
}

/// `query-version`.
#[derive(Debug, Serialize)]
pub struct QueryVersion {}
/// Reply of `query-version`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct VersionInfo {
    /// Numeric version.
    pub qemu: VersionTriple,
    /// Distribution package string, e.g. `Debian 1:7.2+dfsg-7`.
    #[serde(default)]
    pub package: String,
}
/// QEMU's major.minor.micro.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct VersionTriple {
    /// Major version.
    pub major: u32,
    /// Minor version.
    pub minor: u32,
    /// Micro version.
    pub micro: u32,
}
impl std::fmt::Display for VersionInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let v = &self.qemu;
        write!(f, "{}.{}.{}", v.major, v.minor, v.micro)?;
        let pkg = self.package.trim();
        if !pkg.is_empty() {
            write!(f, " ({pkg})")?;
        }
        Ok(())
    }
}
impl Command for QueryVersion {
    const NAME: &'static str = "query-version";
    type Ok = VersionInfo;
}

/// `query-pci`.
#[derive(Debug, Serialize)]
pub struct QueryPci {}
/// One PCI bus in the `query-pci` reply.
#[derive(Debug, Clone, Deserialize)]
pub struct PciBus {
    /// Bus number.
    pub bus: u32,
    /// Devices on the bus.
    pub devices: Vec<PciDevice>,
}
/// One PCI function in the `query-pci` reply.
#[derive(Debug, Clone, Deserialize)]
pub struct PciDevice {
    /// Slot number.
    pub slot: u32,
    /// Function number.
    pub function: u32,
    /// The qdev id (`""` when none).
    #[serde(default)]
    pub qdev_id: String,
    /// BARs.
    #[serde(default)]
    pub regions: Vec<PciRegion>,
}
/// One BAR in the `query-pci` reply.
#[derive(Debug, Clone, Deserialize)]
pub struct PciRegion {
    /// BAR index.
    pub bar: u32,
    /// `io` or `memory`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Address; QEMU reports all-ones (or -1) for an unmapped BAR.
    pub address: serde_json::Number,
    /// Size in bytes.
    pub size: u64,
}
impl PciRegion {
    /// The BAR's address, or `None` when QEMU reports it unmapped (-1 / all ones).
    pub fn mapped_address(&self) -> Option<u64> {
        self.address
            .as_u64()
            .filter(|&a| a != u64::MAX && a != u64::from(u32::MAX))
    }
}
impl Command for QueryPci {
    const NAME: &'static str = "query-pci";
    type Ok = Vec<PciBus>;
}

/// `device_add` with a driver, an id and further properties.
#[derive(Debug, Serialize)]
pub struct DeviceAdd {
    /// Device model, e.g. `virtio-blk-pci`.
    pub driver: String,
    /// qdev id.
    pub id: String,
    /// Further properties (`drive`, `addr`, ...).
    #[serde(flatten)]
    pub props: Map<String, Value>,
}
impl Command for DeviceAdd {
    const NAME: &'static str = "device_add";
    type Ok = Empty;
}

/// `device_del`: asks the guest to release a device (see qemu-notes: completes on the guest's eject).
#[derive(Debug, Serialize)]
pub struct DeviceDel {
    /// qdev id.
    pub id: String,
}
impl Command for DeviceDel {
    const NAME: &'static str = "device_del";
    type Ok = Empty;
}

/// `blockdev-add` with the node's options as a JSON object.
#[derive(Debug, Serialize)]
#[serde(transparent)]
pub struct BlockdevAdd(pub Map<String, Value>);
impl Command for BlockdevAdd {
    const NAME: &'static str = "blockdev-add";
    type Ok = Empty;
}

/// `blockdev-del`.
#[derive(Debug, Serialize)]
pub struct BlockdevDel {
    /// Node name.
    #[serde(rename = "node-name")]
    pub node_name: String,
}
impl Command for BlockdevDel {
    const NAME: &'static str = "blockdev-del";
    type Ok = Empty;
}

/// `object-add` (e.g. a `memory-backend-file` for a shared ring).
#[derive(Debug, Serialize)]
pub struct ObjectAdd {
    /// QOM type.
    #[serde(rename = "qom-type")]
    pub qom_type: String,
    /// Object id.
    pub id: String,
    /// Further properties.
    #[serde(flatten)]
    pub props: Map<String, Value>,
}
impl Command for ObjectAdd {
    const NAME: &'static str = "object-add";
    type Ok = Empty;
}

/// `migrate` to a URI (e.g. `unix:/path`).
#[derive(Debug, Serialize)]
pub struct Migrate {
    /// Destination URI.
    pub uri: String,
}
impl Command for Migrate {
    const NAME: &'static str = "migrate";
    type Ok = Empty;
}

/// `migrate-incoming` on a destination started with `-incoming defer`.
#[derive(Debug, Serialize)]
pub struct MigrateIncoming {
    /// Listening URI.
    pub uri: String,
}
impl Command for MigrateIncoming {
    const NAME: &'static str = "migrate-incoming";
    type Ok = Empty;
}

/// `query-migrate`.
#[derive(Debug, Serialize)]
pub struct QueryMigrate {}
/// Reply of `query-migrate` (the fields baton uses; all absent before a migration).
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
pub struct MigrationInfo {
    /// `setup`, `active`, `completed`, `failed`, `cancelled`, ...
    #[serde(default)]
    pub status: Option<String>,
    /// Milliseconds from start to completion (source side).
    #[serde(default, rename = "total-time")]
    pub total_time: Option<u64>,
    /// Milliseconds the guest was stopped for the final copy (source side).
    #[serde(default)]
    pub downtime: Option<u64>,
    /// Why a migration failed.
    #[serde(default, rename = "error-desc")]
    pub error_desc: Option<String>,
}
impl MigrationInfo {
    /// Whether the migration reached a final state.
    pub fn finished(&self) -> bool {
        matches!(
            self.status.as_deref(),
            Some("completed" | "failed" | "cancelled")
        )
    }
}
impl Command for QueryMigrate {
    const NAME: &'static str = "query-migrate";
    type Ok = MigrationInfo;
}

/// One migration capability and its state.
#[derive(Debug, Serialize)]
pub struct MigrationCapability {
    /// Capability name, e.g. `x-ignore-shared`.
    pub capability: String,
    /// On or off.
    pub state: bool,
}

/// `migrate-set-capabilities`.
#[derive(Debug, Serialize)]
pub struct MigrateSetCapabilities {
    /// Capabilities to set.
    pub capabilities: Vec<MigrationCapability>,
}
impl Command for MigrateSetCapabilities {
    const NAME: &'static str = "migrate-set-capabilities";
    type Ok = Empty;
}

/// `human-monitor-command`: one HMP command line (used only for the QEMU 7.2 BAR2 workaround).
#[derive(Debug, Serialize)]
pub struct HumanMonitorCommand {
    /// The HMP command line.
    #[serde(rename = "command-line")]
    pub command_line: String,
}
impl Command for HumanMonitorCommand {
    const NAME: &'static str = "human-monitor-command";
    type Ok = String;
}

/// `cont`: resume the VCPUs.
#[derive(Debug, Serialize)]
pub struct Cont {}
impl Command for Cont {
    const NAME: &'static str = "cont";
    type Ok = Empty;
}

/// `quit`: terminate QEMU.
#[derive(Debug, Serialize)]
pub struct Quit {}
impl Command for Quit {
    const NAME: &'static str = "quit";
    type Ok = Empty;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    /// A scripted QMP peer: reads come from `input` (then `WouldBlock`), writes are recorded.
    #[derive(Debug)]
    struct Fake {
        input: Cursor<Vec<u8>>,
        written: Vec<u8>,
        eof: bool,
    }

    impl Fake {
        fn new(lines: &[&str], eof: bool) -> Self {
            let mut input = Vec::new();
            for l in lines {
                input.extend_from_slice(l.as_bytes());
                input.extend_from_slice(b"\r\n");
            }
            Self {
                input: Cursor::new(input),
                written: Vec::new(),
                eof,
            }
        }
    }

    impl Read for Fake {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            // Hand out a few bytes at a time to exercise reassembly.
            let n = buf.len().min(7);
            let got = self.input.read(&mut buf[..n])?;
            if got == 0 && !self.eof {
                return Err(ErrorKind::WouldBlock.into());
            }
            Ok(got)
        }
    }

    impl Write for Fake {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.written.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    const GREETING: &str = r#"{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "Debian"}, "capabilities": ["oob"]}}"#;
    const T: Duration = Duration::from_millis(200);

    fn sent(fake: &Fake) -> Vec<Value> {
        String::from_utf8(fake.written.clone())
            .unwrap()
            .split("\r\n")
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn handshake_and_typed_replies() {
        let fake = Fake::new(
            &[
                GREETING,
                r#"{"return": {}, "id": 1}"#,
                r#"{"timestamp": {"seconds": 1, "microseconds": 5}, "event": "RESUME"}"#,
                r#"{"return": {"status": "running", "singlestep": false, "running": true}, "id": 2}"#,
                r#"{"return": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "Debian 1:7.2"}, "id": 3}"#,
            ],
            false,
        );
        let mut qmp = Qmp::handshake(fake, T).unwrap();
        let st = qmp.execute(&QueryStatus {}, T).unwrap();
        assert_eq!(
            st,
            StatusInfo {
                status: "running".into(),
                running: true
            }
        );
        let v = qmp.execute(&QueryVersion {}, T).unwrap();
        assert_eq!(v.to_string(), "7.2.22 (Debian 1:7.2)");
        let evs = qmp.take_events();
        assert_eq!(evs.len(), 1);
        assert_eq!(evs[0].name, "RESUME");
        assert_eq!(evs[0].timestamp_us, 1_000_005);
        let cmds = sent(&qmp.stream);
        assert_eq!(cmds[0]["execute"], "qmp_capabilities");
        assert!(cmds[0].get("arguments").is_none());
        assert_eq!(cmds[1]["execute"], "query-status");
        assert_eq!(cmds[2]["id"], 3);
    }

    #[test]
    fn arguments_are_encoded() {
        let fake = Fake::new(
            &[
                GREETING,
                r#"{"return": {}, "id": 1}"#,
                r#"{"return": {}, "id": 2}"#,
                r#"{"return": {}, "id": 3}"#,
            ],
            false,
        );
        let mut qmp = Qmp::handshake(fake, T).unwrap();
        let mut props = Map::new();
        props.insert("drive".into(), "disk0".into());
        props.insert("addr".into(), "0x5".into());
        qmp.execute(
            &DeviceAdd {
                driver: "virtio-blk-pci".into(),
                id: "disk0".into(),
                props,
            },
            T,
        )
        .unwrap();
        qmp.execute(
            &BlockdevDel {
                node_name: "disk0".into(),
            },
            T,
        )
        .unwrap();
        let cmds = sent(&qmp.stream);
        assert_eq!(
            cmds[1]["arguments"],
            serde_json::json!({"driver": "virtio-blk-pci", "id": "disk0", "drive": "disk0", "addr": "0x5"})
        );
        assert_eq!(
            cmds[2]["arguments"],
            serde_json::json!({"node-name": "disk0"})
        );
    }

    #[test]
    fn errors_are_reported_with_class_and_desc() {
        let fake = Fake::new(
            &[
                GREETING,
                r#"{"return": {}, "id": 1}"#,
                r#"{"error": {"class": "GenericError", "desc": "Failed to get \"write\" lock"}, "id": 2}"#,
            ],
            false,
        );
        let mut qmp = Qmp::handshake(fake, T).unwrap();
        let err = qmp
            .execute(&DeviceDel { id: "disk0".into() }, T)
            .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("device_del"), "{msg}");
        assert!(msg.contains("write\" lock"), "{msg}");
    }

    #[test]
    fn stale_replies_are_skipped_and_events_waited_for() {
        let fake = Fake::new(
            &[
                GREETING,
                r#"{"return": {}, "id": 1}"#,
                r#"{"return": {}, "id": 99}"#,
                r#"{"event": "DEVICE_DELETED", "data": {"path": "/machine/peripheral/disk0/virtio-backend"}}"#,
                r#"{"return": {}, "id": 2}"#,
                r#"{"event": "DEVICE_DELETED", "data": {"device": "disk0", "path": "/machine/peripheral/disk0"}}"#,
            ],
            false,
        );
        let mut qmp = Qmp::handshake(fake, T).unwrap();
        qmp.execute(&Cont {}, T).unwrap();
        let ev = qmp
            .wait_event("DEVICE_DELETED disk0", T, |e| {
                e.name == "DEVICE_DELETED" && e.data.get("device") == Some(&Value::from("disk0"))
            })
            .unwrap();
        assert_eq!(ev.data["path"], "/machine/peripheral/disk0");
        // The child's event was passed over and stays queued.
        let rest = qmp.take_events();
        assert_eq!(rest.len(), 1);
        assert!(rest[0].data.get("device").is_none());
    }

    #[test]
    fn waits_time_out() {
        let fake = Fake::new(&[GREETING, r#"{"return": {}, "id": 1}"#], false);
        let mut qmp = Qmp::handshake(fake, T).unwrap();
        let start = Instant::now();
        let err = qmp
            .execute(&QueryStatus {}, Duration::from_millis(50))
            .unwrap_err();
        assert!(matches!(err, QmpError::Timeout { .. }), "{err}");
        assert!(start.elapsed() < Duration::from_secs(2));
        let err = qmp
            .wait_event("SHUTDOWN", Duration::from_millis(50), |e| {
                e.name == "SHUTDOWN"
            })
            .unwrap_err();
        assert!(matches!(err, QmpError::Timeout { .. }), "{err}");
        qmp.pump(Duration::from_millis(20)).unwrap();
    }

    #[test]
    fn closed_and_garbage_are_errors() {
        let fake = Fake::new(&[GREETING, r#"{"return": {}, "id": 1}"#], true);
        let mut qmp = Qmp::handshake(fake, T).unwrap();
        assert!(matches!(
            qmp.execute(&QueryStatus {}, T),
            Err(QmpError::Closed)
        ));

        let fake = Fake::new(&["not json"], false);
        assert!(matches!(
            Qmp::handshake(fake, T),
            Err(QmpError::Malformed(_))
        ));

        let fake = Fake::new(&[r#"{"hello": 1}"#], false);
        assert!(matches!(
            Qmp::handshake(fake, T),
            Err(QmpError::Greeting(_))
        ));

        let fake = Fake::new(
            &[
                GREETING,
                r#"{"return": {}, "id": 1}"#,
                r#"{"return": {"status": 5}, "id": 2}"#,
            ],
            false,
        );
        let mut qmp = Qmp::handshake(fake, T).unwrap();
        assert!(matches!(
            qmp.execute(&QueryStatus {}, T),
            Err(QmpError::Reply { .. })
        ));
    }

    #[test]
    fn migration_replies_are_typed() {
        let fake = Fake::new(
            &[
                GREETING,
                r#"{"return": {}, "id": 1}"#,
                r#"{"return": {"status": "completed", "downtime": 2, "total-time": 33, "ram": {}}, "id": 2}"#,
                r#"{"return": {}, "id": 3}"#,
                r#"{"return": "", "id": 4}"#,
                r#"{"return": [{"bus": 0, "devices": [{"slot": 6, "function": 0, "qdev_id": "ivshmem", "regions": [{"bar": 0, "type": "memory", "address": 4273930240, "size": 256}, {"bar": 2, "type": "memory", "address": -1, "size": 4194304}]}]}], "id": 5}"#,
            ],
            false,
        );
        let mut qmp = Qmp::handshake(fake, T).unwrap();
        let m = qmp.execute(&QueryMigrate {}, T).unwrap();
        assert!(m.finished());
        assert_eq!((m.downtime, m.total_time), (Some(2), Some(33)));
        qmp.execute(
            &MigrateSetCapabilities {
                capabilities: vec![MigrationCapability {
                    capability: "x-ignore-shared".into(),
                    state: true,
                }],
            },
            T,
        )
        .unwrap();
        let out = qmp
            .execute(
                &HumanMonitorCommand {
                    command_line: "o /w 0xcf8 0x80003018".into(),
                },
                T,
            )
            .unwrap();
        assert_eq!(out, "");
        let pci = qmp.execute(&QueryPci {}, T).unwrap();
        let regions = &pci[0].devices[0].regions;
        assert_eq!(regions[0].mapped_address(), Some(4273930240));
        assert_eq!(regions[1].mapped_address(), None);
        let cmds = sent(&qmp.stream);
        assert_eq!(
            cmds[2]["arguments"],
            serde_json::json!({"capabilities": [{"capability": "x-ignore-shared", "state": true}]})
        );
        assert_eq!(
            cmds[3]["arguments"],
            serde_json::json!({"command-line": "o /w 0xcf8 0x80003018"})
        );
    }

    #[test]
    fn overlong_message_is_rejected() {
        let long = "x".repeat(MAX_MESSAGE + 10);
        let mut fake = Fake::new(&[], false);
        fake.input = Cursor::new(long.into_bytes());
        // Reads hand out 7 bytes at a time; give a generous deadline.
        let err = Qmp::handshake(fake, Duration::from_secs(30)).unwrap_err();
        assert!(matches!(err, QmpError::TooLong), "{err}");
    }
}
