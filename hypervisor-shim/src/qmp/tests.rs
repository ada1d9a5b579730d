//! The client against QEMU 7.2: a session recorded from `qemu-system-x86_64` 7.2.22 is replayed by a
//! thread playing QEMU over a `UnixStream` pair, and the client's requests are checked against the
//! recorded ones; plus framing, timeouts and errors over a scripted in-memory stream.

use std::io::{BufRead, BufReader, Cursor};
use std::thread::JoinHandle;

use qapi::Enum as _;
use serde_json::json;

use super::*;

/// A QEMU 7.2.22 session (two QEMUs, `src` and `dst`, migrating from one to the other), recorded
/// with `-qmp unix:...,server=on,wait=off -machine pc -nodefaults -display none`. Each line is
/// `<vm> -> <request>` or `<vm> <- <what QEMU sent>`.
const TRANSCRIPT: &str = include_str!("testdata/qemu-7.2.txt");
const T: Duration = Duration::from_secs(5);

fn obj(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

/// Plays `vm`'s side of the transcript on a socket: sends what QEMU sent, and at each recorded
/// request reads the client's, checks its command and arguments, and answers with the recorded
/// reply under the client's id.
fn play_qemu(vm: &str) -> (UnixStream, JoinHandle<Result<usize, String>>) {
    let script: Vec<(bool, Value)> = TRANSCRIPT
        .lines()
        .filter_map(|l| l.strip_prefix(vm)?.strip_prefix(' '))
        .map(|l| {
            let (dir, json) = l.split_at(3);
            let v: Value = serde_json::from_str(json).unwrap();
            (dir == "-> ", v)
        })
        .collect();
    let (client, qemu) = UnixStream::pair().unwrap();
    client.set_read_timeout(Some(POLL_INTERVAL)).unwrap();
    let thread = std::thread::spawn(move || {
        let mut reader = BufReader::new(qemu.try_clone().map_err(|e| e.to_string())?);
        let mut writer = qemu;
        let mut client_id = Value::Null;
        let mut requests = 0;
        for (is_request, mut v) in script {
            if is_request {
                let mut line = String::new();
                reader.read_line(&mut line).map_err(|e| e.to_string())?;
                let got: Value = serde_json::from_str(&line).map_err(|e| format!("{e}: {line}"))?;
                let args = |v: &Value| v.get("arguments").cloned().unwrap_or(json!({}));
                if got["execute"] != v["execute"] || args(&got) != args(&v) {
                    return Err(format!("expected {v}, got {got}"));
                }
                client_id = got["id"].clone();
                requests += 1;
                continue;
            }
            if v.get("id").is_some() {
                v["id"] = client_id.clone();
            }
            writeln!(writer, "{v}").map_err(|e| e.to_string())?;
        }
        Ok(requests)
    });
    (client, thread)
}

#[test]
fn a_recorded_qemu_7_2_session_replays() {
    let (src_sock, src_qemu) = play_qemu("src");
    let (dst_sock, dst_qemu) = play_qemu("dst");
    let mut src = Qmp::handshake(src_sock, T).unwrap();
    assert_eq!(src.greeting()["version"]["qemu"]["major"], 7);
    let v = src.execute(&QueryVersion {}, T).unwrap();
    assert_eq!(v.to_string(), "7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)");
    let st = src.execute(&QueryStatus {}, T).unwrap();
    assert_eq!((st.status.as_str(), st.running), ("prelaunch", false));
    let m = src.execute(&QueryMigrate {}, T).unwrap();
    assert_eq!(m, MigrationInfo::default());
    let file = |node: &str| {
        BlockdevAdd(obj(json!({
            "driver": "file", "filename": "/tmp/qmpcap/disk.img", "node-name": node
        })))
    };
    let disk = |id: &str, addr: &str| DeviceAdd {
        driver: "virtio-blk-pci".into(),
        id: id.into(),
        props: obj(json!({"drive": id, "addr": addr})),
    };
    src.execute(&file("disk0"), T).unwrap();
    src.execute(&disk("disk0", "0x4"), T).unwrap();
    let null =
        json!({"driver": "null-co", "size": 1_048_576, "read-zeroes": true, "node-name": "null0"});
    src.execute(&BlockdevAdd(obj(null)), T).unwrap();
    src.execute(&file("disk1"), T).unwrap();
    // The image is still locked by disk0: the error the handoff retries on.
    match src.execute(&disk("disk1", "0x5"), T) {
        Err(QmpError::Rejected {
            command: "device_add",
            class,
            desc,
        }) => assert_eq!(
            (class.as_str(), desc.as_str()),
            ("GenericError", "Failed to get \"write\" lock")
        ),
        other => panic!("{other:?}"),
    }
    src.execute(
        &ObjectAdd {
            qom_type: "memory-backend-file".into(),
            id: "ringmem".into(),
            props: obj(
                json!({"mem-path": "/dev/shm/qmpcap-ring", "size": 4_194_304, "share": true}),
            ),
        },
        T,
    )
    .unwrap();
    src.execute(
        &DeviceAdd {
            driver: "ivshmem-plain".into(),
            id: "ring".into(),
            props: obj(json!({"memdev": "ringmem", "master": "on", "addr": "0x6"})),
        },
        T,
    )
    .unwrap();
    let pci = src.execute(&QueryPci {}, T).unwrap();
    let ring = pci[0].devices.iter().find(|d| d.qdev_id == "ring").unwrap();
    assert_eq!((ring.slot, ring.function), (6, 0));
    let bar2 = ring.regions.iter().find(|r| r.bar == 2).unwrap();
    assert_eq!((bar2.kind.as_str(), bar2.size), ("memory", 4_194_304));
    // Before the guest programs it, QEMU 7.2 reports the BAR as -1.
    assert_eq!(bar2.mapped_address(), None);
    let kbd = DeviceAdd {
        driver: "usb-kbd".into(),
        id: "kbd".into(),
        props: Map::new(),
    };
    src.execute(&kbd, T).unwrap();
    src.execute(&DeviceDel { id: "kbd".into() }, T).unwrap();
    let ev = src
        .wait_event("DEVICE_DELETED kbd", T, |e| e.name == "DEVICE_DELETED")
        .unwrap();
    let data = ev.device_deleted().unwrap();
    assert_eq!(data.device.as_deref(), Some("kbd"));
    assert_eq!(data.path, "/machine/peripheral/kbd");
    assert_eq!(ev.timestamp_us / 1_000_000, 1_796_078_483);
    let e = src
        .execute(
            &DeviceDel {
                id: "nosuch".into(),
            },
            T,
        )
        .unwrap_err();
    assert!(e.to_string().contains("DeviceNotFound"), "{e}");
    src.execute(
        &BlockdevDel {
            node_name: "null0".into(),
        },
        T,
    )
    .unwrap();
    let hmp = HumanMonitorCommand {
        command_line: "o /w 0xcf8 0x80003018".into(),
    };
    assert_eq!(src.execute(&hmp, T).unwrap(), "");
    let events = MigrateSetCapabilities {
        capabilities: vec![MigrationCapability {
            capability: "events".into(),
            state: true,
        }],
    };
    src.execute(&events, T).unwrap();
    src.execute(&Cont {}, T).unwrap();
    assert!(matches!(
        src.take_events()[0].typed(),
        Some(qapi::qmp::Event::RESUME { .. })
    ));

    let mut dst = Qmp::handshake(dst_sock, T).unwrap();
    assert_eq!(dst.execute(&QueryStatus {}, T).unwrap().status, "inmigrate");
    dst.execute(&events, T).unwrap();
    let uri = "unix:/tmp/qmpcap/mig.sock".to_owned();
    dst.execute(&MigrateIncoming { uri: uri.clone() }, T)
        .unwrap();
    src.execute(&Migrate { uri }, T).unwrap();
    let info = loop {
        let info = src.execute(&QueryMigrate {}, T).unwrap();
        if info.finished() {
            break info;
        }
    };
    assert_eq!(info.status.as_deref(), Some("completed"));
    assert_eq!((info.downtime, info.total_time), (Some(4), Some(47)));
    let statuses: Vec<String> = src
        .take_events()
        .iter()
        .filter_map(|e| match e.typed()? {
            qapi::qmp::Event::MIGRATION { data, .. } => Some(data.status.name().to_owned()),
            _ => None,
        })
        .collect();
    assert_eq!(statuses, ["setup", "active", "completed"]);
    assert!(dst.execute(&QueryStatus {}, T).unwrap().running);
    let st = src.execute(&QueryStatus {}, T).unwrap();
    assert_eq!((st.status.as_str(), st.running), ("postmigrate", false));
    src.execute(&Quit {}, T).unwrap();
    dst.execute(&Quit {}, T).unwrap();
    let shutdown = dst
        .wait_event("SHUTDOWN", T, |e| e.name == "SHUTDOWN")
        .unwrap();
    assert!(matches!(
        shutdown.typed(),
        Some(qapi::qmp::Event::SHUTDOWN { data, .. }) if !data.guest
    ));
    assert_eq!(src_qemu.join().unwrap(), Ok(24));
    assert_eq!(dst_qemu.join().unwrap(), Ok(6));
}

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
const SHORT: Duration = Duration::from_millis(200);

fn sent(fake: &Fake) -> Vec<Value> {
    String::from_utf8(fake.written.clone())
        .unwrap()
        .split("\r\n")
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn requests_are_the_schema_commands_with_ids() {
    let fake = Fake::new(
        &[
            GREETING,
            r#"{"return": {}, "id": 1}"#,
            r#"{"return": {}, "id": 2}"#,
            r#"{"return": {}, "id": 3}"#,
        ],
        false,
    );
    let mut qmp = Qmp::handshake(fake, SHORT).unwrap();
    let add = DeviceAdd {
        driver: "virtio-blk-pci".into(),
        id: "disk0".into(),
        props: obj(json!({"drive": "disk0", "addr": "0x5"})),
    };
    qmp.execute(&add, SHORT).unwrap();
    qmp.execute(
        &Migrate {
            uri: "unix:/m".into(),
        },
        SHORT,
    )
    .unwrap();
    let cmds = sent(&qmp.stream);
    assert_eq!(
        cmds[0],
        json!({"execute": "qmp_capabilities", "arguments": {}, "id": 1})
    );
    assert_eq!(
        cmds[1]["arguments"],
        json!({"driver": "virtio-blk-pci", "id": "disk0", "drive": "disk0", "addr": "0x5"})
    );
    // Only what QEMU 7.2 knows: none of the schema's newer optional arguments.
    assert_eq!(
        cmds[2],
        json!({"execute": "migrate", "arguments": {"uri": "unix:/m"}, "id": 3})
    );
}

#[test]
fn arguments_outside_the_schema_are_refused_before_sending() {
    let fake = Fake::new(&[GREETING, r#"{"return": {}, "id": 1}"#], false);
    let mut qmp = Qmp::handshake(fake, SHORT).unwrap();
    let bad_driver = BlockdevAdd(obj(json!({"driver": "no-such", "node-name": "d"})));
    let bad_size = BlockdevAdd(obj(
        json!({"driver": "null-co", "size": "big", "node-name": "d"}),
    ));
    let bad_cap = MigrateSetCapabilities {
        capabilities: vec![MigrationCapability {
            capability: "x-no-such".into(),
            state: true,
        }],
    };
    let no_path = ObjectAdd {
        qom_type: "memory-backend-file".into(),
        id: "m".into(),
        props: obj(json!({"size": 4096})),
    };
    for e in [
        qmp.execute(&bad_driver, SHORT).unwrap_err(),
        qmp.execute(&bad_size, SHORT).unwrap_err(),
        qmp.execute(&no_path, SHORT).unwrap_err(),
    ] {
        assert!(matches!(e, QmpError::Encode { .. }), "{e}");
    }
    let e = qmp.execute(&bad_cap, SHORT).unwrap_err();
    assert!(
        matches!(
            e,
            QmpError::Encode {
                command: "migrate-set-capabilities",
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(sent(&qmp.stream).len(), 1);
}

/// The two `DEVICE_DELETED` events are QEMU 7.2's, as the owner's QEMU sent them during a handoff
/// (`migrate --mode none`; the backend's first, the proxy's 52 ms later).
#[test]
fn stale_replies_are_skipped_and_events_waited_for() {
    let fake = Fake::new(
        &[
            GREETING,
            r#"{"return": {}, "id": 1}"#,
            r#"{"return": {}, "id": 99}"#,
            r#"{"timestamp": {"seconds": 1796080050, "microseconds": 147581}, "event": "DEVICE_DELETED", "data": {"path": "/machine/peripheral/disk0/virtio-backend"}}"#,
            r#"{"return": {}, "id": 2}"#,
            r#"{"timestamp": {"seconds": 1796080050, "microseconds": 199858}, "event": "DEVICE_DELETED", "data": {"device": "disk0", "path": "/machine/peripheral/disk0"}}"#,
        ],
        false,
    );
    let mut qmp = Qmp::handshake(fake, SHORT).unwrap();
    qmp.execute(&Cont {}, SHORT).unwrap();
    let ev = qmp
        .wait_event("DEVICE_DELETED disk0", SHORT, |e| {
            e.device_deleted().and_then(|d| d.device).as_deref() == Some("disk0")
        })
        .unwrap();
    assert_eq!(ev.data["path"], "/machine/peripheral/disk0");
    assert_eq!(ev.timestamp_us, 1_796_080_050_199_858);
    // The backend's event (no qdev id) was passed over and stays queued.
    let rest = qmp.take_events();
    assert_eq!(rest.len(), 1);
    let backend = rest[0].device_deleted().unwrap();
    assert_eq!(
        (backend.device, backend.path.as_str()),
        (None, "/machine/peripheral/disk0/virtio-backend")
    );
}

#[test]
fn events_the_schema_does_not_know_are_kept_raw() {
    let fake = Fake::new(
        &[
            GREETING,
            r#"{"return": {}, "id": 1}"#,
            r#"{"timestamp": {"seconds": 1, "microseconds": 5}, "event": "X_NEWER_EVENT", "data": {"a": 1}}"#,
            r#"{"event": "STOP"}"#,
        ],
        false,
    );
    let mut qmp = Qmp::handshake(fake, SHORT).unwrap();
    qmp.pump(Duration::from_millis(50)).unwrap();
    let evs = qmp.take_events();
    assert_eq!(evs.len(), 2);
    assert_eq!(
        (evs[0].name.as_str(), evs[0].timestamp_us),
        ("X_NEWER_EVENT", 1_000_005)
    );
    assert_eq!(evs[0].data, json!({"a": 1}));
    assert!(evs[0].typed().is_none() && evs[0].device_deleted().is_none());
    assert_eq!(evs[1].timestamp_us, 0);
    assert!(matches!(
        evs[1].typed(),
        Some(qapi::qmp::Event::STOP { .. })
    ));
}

#[test]
fn waits_time_out_and_keep_a_partial_line() {
    let mut fake = Fake::new(&[GREETING, r#"{"return": {}, "id": 1}"#], false);
    let mut rest = fake.input.get_ref().clone();
    rest.extend_from_slice(br#"{"return": {"status": "run"#);
    fake.input = Cursor::new(rest);
    let mut qmp = Qmp::handshake(fake, SHORT).unwrap();
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
    // The rest of the line arrives late: the part read before the deadlines was kept, and the
    // late reply (id 2) is skipped as stale while id 3 is awaited.
    let mut input = qmp.stream.input.get_ref().clone();
    input.extend_from_slice(b"ning\", \"running\": true}, \"id\": 2}\r\n");
    input.extend_from_slice(
        b"{\"return\": {\"status\": \"paused\", \"running\": false}, \"id\": 3}\r\n",
    );
    let pos = qmp.stream.input.position();
    qmp.stream.input = Cursor::new(input);
    qmp.stream.input.set_position(pos);
    let st = qmp.execute(&QueryStatus {}, SHORT).unwrap();
    assert_eq!(
        st,
        StatusInfo {
            status: "paused".into(),
            running: false
        }
    );
}

#[test]
fn closed_and_garbage_are_errors() {
    let fake = Fake::new(&[GREETING, r#"{"return": {}, "id": 1}"#], true);
    let mut qmp = Qmp::handshake(fake, SHORT).unwrap();
    assert!(matches!(
        qmp.execute(&QueryStatus {}, SHORT),
        Err(QmpError::Closed)
    ));
    // QEMU gone before its greeting: an error, not a panic.
    assert!(matches!(
        Qmp::handshake(Fake::new(&[], true), SHORT),
        Err(QmpError::Closed)
    ));
    let fake = Fake::new(&["not json"], false);
    assert!(matches!(
        Qmp::handshake(fake, SHORT),
        Err(QmpError::Malformed(_))
    ));
    let fake = Fake::new(&[r#"{"hello": 1}"#], false);
    assert!(matches!(
        Qmp::handshake(fake, SHORT),
        Err(QmpError::Greeting(_))
    ));
    let fake = Fake::new(
        &[
            GREETING,
            r#"{"return": {}, "id": 1}"#,
            r#"{"return": {"status": 5}, "id": 2}"#,
            r#"{"return": {"status": "no-such-state", "running": true}, "id": 3}"#,
            r#"{"error": {"class": "NewClass", "desc": "odd"}, "id": 4}"#,
        ],
        false,
    );
    let mut qmp = Qmp::handshake(fake, SHORT).unwrap();
    for _ in 0..2 {
        assert!(matches!(
            qmp.execute(&QueryStatus {}, SHORT),
            Err(QmpError::Reply {
                command: "query-status",
                ..
            })
        ));
    }
    let e = qmp.execute(&Quit {}, SHORT).unwrap_err();
    assert_eq!(e.to_string(), "QEMU rejected `quit`: NewClass: odd");
}

#[test]
fn a_mapped_bar_has_an_address() {
    let fake = Fake::new(
        &[
            GREETING,
            r#"{"return": {}, "id": 1}"#,
            r#"{"return": [{"bus": 0, "devices": [{"irq_pin": 0, "bus": 0, "qdev_id": "ivshmem", "slot": 6, "class_info": {"class": 1280, "desc": "RAM controller"}, "id": {"device": 4368, "subsystem-vendor": 6900, "vendor": 6900, "subsystem": 4352}, "function": 0, "regions": [{"prefetch": false, "mem_type_64": false, "bar": 0, "size": 256, "address": 3221225472, "type": "memory"}, {"prefetch": true, "mem_type_64": true, "bar": 2, "size": 4194304, "address": 3225419776, "type": "memory"}]}]}], "id": 2}"#,
        ],
        false,
    );
    let mut qmp = Qmp::handshake(fake, SHORT).unwrap();
    let pci = qmp.execute(&QueryPci {}, SHORT).unwrap();
    let regions = &pci[0].devices[0].regions;
    assert_eq!(regions[0].mapped_address(), Some(0xc000_0000));
    assert_eq!(regions[1].mapped_address(), Some(0xc040_0000));
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

/// `migrate_cancel` goes out with no arguments; `in_progress` holds for every state but none and the final
/// ones; a `BLOCK_IO_ERROR` as QEMU 7.2 sent it on a full tmpfs decodes.
#[test]
fn migrate_cancel_and_a_block_io_error() {
    let fake = Fake::new(
        &[
            GREETING,
            r#"{"return": {}, "id": 1}"#,
            r#"{"timestamp": {"seconds": 1796091714, "microseconds": 1}, "event": "BLOCK_IO_ERROR", "data": {"device": "", "nospace": true, "node-name": "disk0", "reason": "No space left on device", "operation": "write", "action": "stop"}}"#,
            r#"{"return": {}, "id": 2}"#,
        ],
        false,
    );
    let mut qmp = Qmp::handshake(fake, SHORT).unwrap();
    qmp.execute(&MigrateCancel {}, SHORT).unwrap();
    assert_eq!(
        sent(&qmp.stream)[1],
        json!({"execute": "migrate_cancel", "arguments": {}, "id": 2})
    );
    let evs = qmp.take_events();
    let e = evs[0].block_io_error().unwrap();
    assert_eq!(
        (e.reason.as_str(), e.nospace, e.node_name.as_deref()),
        ("No space left on device", Some(true), Some("disk0"))
    );
    assert_eq!(e.action.name(), "stop");
    let info = |s: Option<&str>| MigrationInfo {
        status: s.map(String::from),
        ..MigrationInfo::default()
    };
    for s in ["setup", "active", "cancelling", "device", "pre-switchover"] {
        assert!(info(Some(s)).in_progress(), "{s}");
    }
    for s in [None, Some("completed"), Some("failed"), Some("cancelled")] {
        assert!(!info(s).in_progress(), "{s:?}");
    }
}
