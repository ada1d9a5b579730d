//! Hosts as network namespaces and the disk over NBD (issue 10, items 1, 2 and 5), as root:
//! the hosts' segment carries TCP and is removed without a trace (also after a panic); a guest
//! in host A does its direct-I/O workload on an NBD export served by `qemu-storage-daemon` in the
//! storage host, and the image is verified on the host after the daemon flushed and exited; the
//! daemon restarted mid-run is survived (`reconnect-delay`); without root, a clear error.
//!
//! Every test needs root (network namespaces; the last one drops to `nobody` itself): without it
//! they fail and say so. The accelerator comes from `BATON_TEST_ACCEL`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use common::{Output, accel, report, run_args, shim, u};
use hypervisor_shim::hosts::{Host, Hosts, netns_exists};
use hypervisor_shim::qemu::DiskBackend;
use hypervisor_shim::storage::{StorageDaemon, StorageError};
use serde_json::Value;

/// The shim's own timeout for a guest run.
const GUEST_TIMEOUT_SECS: u64 = 120;
/// The harness kills the shim after this.
const HARD_LIMIT: Duration = Duration::from_secs(200);

fn require_root() {
    assert_eq!(
        std::fs::metadata("/proc/self").map(|m| m.uid()).ok(),
        Some(0),
        "this test needs root (network namespaces, `ip netns add`); run it as root (CI does)"
    );
}

/// The links of the shim's own network namespace, one name per line.
fn root_links() -> Vec<String> {
    let out = Command::new("ip")
        .args(["-o", "link", "show"])
        .output()
        .unwrap();
    let mut v: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(':').nth(1).map(|n| n.trim().to_owned()))
        .collect();
    v.sort();
    v
}

/// Runs `f` on a thread that has entered `host`'s network namespace (setns affects only the
/// calling thread).
fn in_netns<T: Send + 'static>(host: &Host, f: impl FnOnce() -> T + Send + 'static) -> T {
    let file = std::fs::File::open(format!("/run/netns/{}", host.netns)).unwrap();
    std::thread::spawn(move || {
        // SAFETY: setns(2) with an open namespace file descriptor and CLONE_NEWNET changes only
        // this thread's network namespace; `file` outlives the call.
        let r = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(r, 0, "setns: {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .unwrap()
}

/// `ip netns list` names none of `names`.
fn assert_gone(names: &[String]) {
    for n in names {
        assert!(!netns_exists(n), "namespace {n} is still there");
    }
}

/// A listener in the storage host accepts a TCP connection from host A and one from host B over
/// the segment; `remove` then leaves no namespace, and no link in the shim's own namespace.
#[test]
fn hosts_reach_the_storage_host_and_leave_nothing_behind() {
    require_root();
    let links_before = root_links();
    let hosts = Hosts::create().unwrap();
    let names: Vec<String> = [hosts.source(), hosts.destination(), hosts.storage()]
        .iter()
        .map(|h| h.netns.clone())
        .collect();
    assert_eq!(hosts.source().addr.to_string(), "198.18.0.1");
    assert_eq!(hosts.destination().addr.to_string(), "198.18.0.2");
    assert_eq!(hosts.storage().addr.to_string(), "198.18.0.3");
    for n in &names {
        assert!(netns_exists(n), "{n} missing");
    }
    let storage_addr = SocketAddr::from((hosts.storage().addr, 7000));
    let listener = in_netns(hosts.storage(), move || {
        TcpListener::bind(storage_addr).unwrap()
    });
    for (host, msg) in [
        (hosts.source(), b"from a"),
        (hosts.destination(), b"from b"),
    ] {
        in_netns(host, move || {
            let mut c = TcpStream::connect_timeout(&storage_addr, Duration::from_secs(5)).unwrap();
            c.write_all(msg).unwrap();
        });
        let (mut s, peer) = listener.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        assert_eq!(&got, msg);
        assert_eq!(peer.ip(), std::net::IpAddr::V4(host.addr));
    }
    drop(listener);
    // A process left inside a namespace is killed by the removal.
    let mut sleeper = Command::new("ip")
        .args(["netns", "exec", &names[0], "sleep", "600"])
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    hosts.remove().unwrap();
    assert!(
        sleeper.wait().unwrap().code().is_none(),
        "the sleeper was not killed"
    );
    assert_gone(&names);
    assert_eq!(root_links(), links_before);
}

/// A panic with hosts alive unwinds through their `Drop`, which removes them.
#[test]
fn hosts_are_removed_after_a_panic() {
    require_root();
    let names = Mutex::new(Vec::new());
    let r = std::panic::catch_unwind(|| {
        let hosts = Hosts::create().unwrap();
        *names.lock().unwrap() = vec![
            hosts.source().netns.clone(),
            hosts.destination().netns.clone(),
            hosts.storage().netns.clone(),
        ];
        panic!("a scenario failed");
    });
    assert!(r.is_err());
    let names = names.into_inner().unwrap();
    assert_eq!(names.len(), 3);
    assert_gone(&names);
}

/// The daemon alone: a missing image is an error carrying its stderr; a good one is exported,
/// restarted under a new pid on the same address, and stopped cleanly.
#[test]
fn storage_daemon_starts_restarts_and_stops() {
    require_root();
    let hosts = Hosts::create().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let e = StorageDaemon::start(
        hosts.storage(),
        &dir.path().join("missing.img"),
        10809,
        dir.path(),
    )
    .unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, StorageError::Daemon { .. }), "{msg}");
    assert!(msg.contains("missing.img"), "no stderr in: {msg}");
    let image = dir.path().join("disk.img");
    std::fs::write(&image, vec![0u8; 1 << 20]).unwrap();
    let mut d = StorageDaemon::start(hosts.storage(), &image, 10809, dir.path()).unwrap();
    assert_eq!(
        d.backend(),
        DiskBackend::Nbd {
            host: hosts.storage().addr,
            port: 10809,
            export: "disk".into()
        }
    );
    let before = d.pid();
    d.restart().unwrap();
    assert_ne!(d.pid(), before);
    let addr = SocketAddr::from((hosts.storage().addr, 10809));
    in_netns(hosts.source(), move || {
        TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    });
    d.stop().unwrap();
    hosts.remove().unwrap();
}

/// `run --shared-storage` with `extra`: its temporary directory, output and report.
fn shared_run(extra: &[&str]) -> (tempfile::TempDir, Output, Value) {
    let dir = tempfile::Builder::new()
        .prefix("baton-hosts-")
        .tempdir()
        .unwrap();
    let mut args = run_args(dir.path(), &accel(), GUEST_TIMEOUT_SECS);
    args.push("--shared-storage".into());
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = shim(&args, HARD_LIMIT);
    let rep = report(&dir.path().join("report.json"), &out);
    (dir, out, rep)
}

/// The run succeeded over NBD from a QEMU in host A, the image was verified (lost = stale = 0)
/// and the namespaces are gone.
fn assert_verified_over_nbd(out: &Output, rep: &Value, writes: u64) {
    let ctx = || format!("{}\n{rep:#}", out.dump());
    assert_eq!(out.code(), Some(0), "{}", ctx());
    assert_eq!(rep["ok"], true, "{}", ctx());
    assert_eq!(rep["backend"], "nbd", "{}", ctx());
    assert_eq!(rep["verified"], true, "{}", ctx());
    assert_eq!(u(rep, "lost"), 0, "{}", ctx());
    assert_eq!(u(rep, "stale"), 0, "{}", ctx());
    assert_eq!(u(rep, "writes_verified"), writes, "{}", ctx());
    let cmd = rep["qemu_command"].as_str().unwrap();
    assert!(cmd.starts_with("ip netns exec baton-"), "{cmd}");
    // A disk present at boot is on the command line; a hot-added one went through QMP.
    assert!(
        cmd.contains("disk=hotplug")
            || cmd.contains("driver=nbd,server.type=inet,server.host=198.18.0.3,server.port=10809"),
        "{cmd}"
    );
    let ns = cmd.split_whitespace().nth(3).unwrap();
    assert!(ns.ends_with("-a"), "QEMU runs in host A: {cmd}");
    let storage_ns = format!("{}s", ns.trim_end_matches('a'));
    assert_gone(&[ns.to_owned(), storage_ns]);
}

/// The guest in host A writes and reads back its disk over NBD; the host verifies the image
/// after the storage daemon flushed and exited.
#[test]
fn direct_io_over_nbd_from_host_a_is_verified() {
    require_root();
    common::require_qemu();
    let (_dir, out, rep) = shared_run(&["--blocks", "256", "--passes", "2"]);
    assert_verified_over_nbd(&out, &rep, 512);
}

/// A disk hot-added over QMP (`blockdev-add` with the NBD options) works the same way.
#[test]
fn a_hot_added_nbd_disk_is_verified() {
    require_root();
    common::require_qemu();
    let (_dir, out, rep) = shared_run(&["--hotplug-disk", "--blocks", "128", "--passes", "2"]);
    assert_verified_over_nbd(&out, &rep, 256);
    assert!(!rep["hotplug_ms"].is_null(), "{rep:#}");
}

/// The storage daemon is killed and restarted while the guest writes: the NBD client reconnects
/// (`reconnect-delay`), the run completes and the image verifies.
#[test]
fn a_restarted_storage_daemon_is_survived() {
    require_root();
    common::require_qemu();
    let (_dir, out, rep) = shared_run(&[
        "--blocks",
        "4096",
        "--passes",
        "8",
        "--restart-storage-ms",
        "1500",
    ]);
    assert_verified_over_nbd(&out, &rep, 4096 * 8);
    let notes: Vec<&str> = rep["notes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        notes.iter().any(|n| n.contains("storage daemon restarted")),
        "{notes:?}\n{}",
        out.dump()
    );
    // The restart hit the workload: requests waited for the reconnection.
    assert!(
        u(&rep, "max_gap_us") >= 50_000,
        "no stall seen: the restart missed the workload\n{rep:#}"
    );
}

/// `run --shared-storage` as `nobody` (via `setpriv`) fails at once saying root is needed.
#[test]
fn shared_storage_without_root_is_a_clear_error() {
    require_root();
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::Builder::new()
        .prefix("baton-hosts-")
        .tempdir()
        .unwrap();
    let bin = dir.path().join("hypervisor-shim");
    std::fs::copy(common::SHIM, &bin).unwrap();
    for p in [dir.path(), bin.as_path()] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&bin)
        .args(["run", "--shared-storage"])
        .output()
        .expect("cannot start `setpriv` (util-linux)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("simulated hosts need root"), "{stderr}");
}
