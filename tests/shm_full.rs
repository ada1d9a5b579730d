//! No room for the ring (issue 9, item 5), under real QEMU: the shim runs in its own mount
//! namespace (`unshare -m`) with a 1 MiB tmpfs on /dev/shm, too small for the 4 MiB ring. The
//! ring's memory is reserved before anything is sent to the owner, so the handoff is never
//! directed: no `device_del`, no `redirect`; the owner keeps port 1 and finishes its workload at
//! the source, the disk is verified (nothing lost or stale), and the run fails (exit 1) naming
//! /dev/shm, the ring's size and ENOSPC. Before the reservation, the owner's QEMU died of SIGBUS
//! after the redirect and the report blamed the switch point. (`--inject shm-full` makes the same
//! constrained /dev/shm from inside the shim: tests/inject.rs.)
//!
//! Needs root (a mount namespace and a tmpfs mount): without it the test fails and says so. The
//! accelerator comes from `BATON_TEST_ACCEL`; the workload is sized for TCG.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Output, SHIM, accel, migrate_args, report};
use serde_json::Value;

/// The shim's own timeout for the scenario.
const SCENARIO_TIMEOUT_SECS: u64 = 150;
/// The harness kills the shim after this.
const HARD_LIMIT: Duration = Duration::from_secs(240);

/// Runs `sh -c script` in a new mount namespace, the shim and its arguments as `$0 "$@"`; kills
/// it and fails the test after `limit`.
fn in_mount_namespace(script: &str, args: &[String], limit: Duration) -> Output {
    let start = Instant::now();
    let mut child = Command::new("unshare")
        .args(["-m", "sh", "-c", script, SHIM])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start `unshare` (util-linux)");
    let drain = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut s = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut s);
            }
            String::from_utf8_lossy(&s).into_owned()
        })
    };
    let out = drain(child.stdout.take().map(|r| Box::new(r) as _));
    let err = drain(child.stderr.take().map(|r| Box::new(r) as _));
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait for the shim") {
            break st;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "shim still running after {limit:?}: killed\n--- stdout\n{}\n--- stderr\n{}",
                out.join().unwrap_or_default(),
                err.join().unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
        elapsed: start.elapsed(),
    }
}

fn u(v: &Value, k: &str) -> u64 {
    v[k].as_u64()
        .unwrap_or_else(|| panic!("report field `{k}` is not a number: {v:#}"))
}

/// `blocks` for a TCG-sized `tcg_blocks` (hardware KVM: 4×; PVM-backed KVM: /32), so that the
/// switch point still lands while the owner is writing.
fn blocks(tcg_blocks: u64) -> String {
    let loaded = |m: &str| Path::new("/sys/module").join(m).exists();
    let hw = loaded("kvm_intel") || loaded("kvm_amd");
    let (mul, div) = match accel().as_str() {
        "kvm" if !hw => (1, 32),
        "kvm" | "auto" if hw => (4, 1),
        _ => (1, 1),
    };
    (tcg_blocks * mul / div).max(16).to_string()
}

/// A live `migrate` switched 100 ms into the owner's workload, the shim in its own mount
/// namespace with a tmpfs of `shm_size` (`mount -o size=`) on /dev/shm. Returns the run, its
/// report and what was left in that /dev/shm afterwards.
fn migrate_with_shm(shm_size: &str) -> (tempfile::TempDir, Output, Value, String) {
    assert_eq!(
        std::fs::metadata("/proc/self").map(|m| m.uid()).ok(),
        Some(0),
        "this test needs root: it mounts a small tmpfs on /dev/shm in its own mount namespace \
         (`unshare -m`); run it as root (CI does)"
    );
    let dir = tempfile::Builder::new()
        .prefix("baton-shm-")
        .tempdir()
        .unwrap();
    let left = dir.path().join("shm-left.txt");
    let mut args = migrate_args(dir.path(), &accel(), SCENARIO_TIMEOUT_SECS);
    let b = blocks(1024);
    args.extend(
        [
            "--mode",
            "live",
            "--blocks",
            &b,
            "--passes",
            "8",
            "--switch-after-ms",
            "100",
        ]
        .map(String::from),
    );
    // After the shim: what it left in the small /dev/shm (nothing, or a leaked ring file).
    let script = format!(
        "mount -t tmpfs -o size={shm_size} tmpfs /dev/shm || exit 97; \"$0\" \"$@\"; rc=$?; \
         ls -A /dev/shm > '{}'; exit $rc",
        left.display()
    );
    let out = in_mount_namespace(&script, &args, HARD_LIMIT);
    assert_ne!(
        out.code(),
        Some(97),
        "cannot mount a tmpfs on /dev/shm: {}",
        out.dump()
    );
    let rep = report(&dir.path().join("report.json"), &out);
    let left =
        std::fs::read_to_string(&left).unwrap_or_else(|e| panic!("{e}: {}\n{rep:#}", out.dump()));
    (dir, out, rep, left)
}

/// Nothing lost or stale, every write acknowledged and found on the disk.
fn assert_verified(rep: &Value, ctx: &dyn Fn() -> String) {
    assert_eq!(rep["guest_exit"], "success", "{}", ctx());
    assert_eq!(rep["verified"], true, "{}", ctx());
    for k in [
        "lost",
        "stale",
        "corrupt_blocks",
        "duplicated",
        "read_mismatches",
    ] {
        assert_eq!(u(rep, k), 0, "{k}: {}", ctx());
    }
    let total = u(rep, "writes_total");
    assert_eq!(u(rep, "writes_acked"), total, "{}", ctx());
    assert_eq!(u(rep, "writes_verified"), total, "{}", ctx());
}

#[test]
fn no_room_for_the_ring_keeps_the_owner_on_port_1() {
    let (_dir, out, rep, left) = migrate_with_shm("1m");
    let ctx = || format!("{}\n{rep:#}", out.dump());

    // The run fails, naming the cause: /dev/shm, the ring's size, ENOSPC.
    assert_eq!(out.code(), Some(1), "{}", ctx());
    assert_eq!(rep["ok"], false, "{}", ctx());
    let failures: Vec<&str> = rep["failures"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        failures
            .iter()
            .any(|f| f.contains("no room for the 4 MiB ring in /dev/shm: ENOSPC")),
        "{}",
        ctx()
    );
    assert!(
        !failures.iter().any(|f| f.contains("switch came too late")),
        "the switch point is blamed: {}",
        ctx()
    );

    // Nothing was redirected: no handoff, nothing forwarded, no device_del.
    assert!(rep["phases"]["handoff_ms"].is_null(), "{}", ctx());
    assert_eq!(u(&rep, "requests_forwarded"), 0, "{}", ctx());
    assert!(!out.stderr.contains("redirect sent"), "{}", ctx());
    let deleted = rep["qmp_events"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|e| e["name"] == "DEVICE_DELETED");
    assert!(!deleted, "a device was deleted: {}", ctx());

    // The owner finished its workload at the source, over port 1, and the disk is verified.
    assert_eq!(rep["guest_exit_where"], "source", "{}", ctx());
    assert_eq!(rep["owner_finished_at_destination"], false, "{}", ctx());
    assert!(u(&rep, "port1_requests") > 0, "{}", ctx());
    assert_verified(&rep, &ctx);
    // The failed reservation left nothing in /dev/shm.
    assert!(
        left.trim().is_empty(),
        "left in /dev/shm: {left}: {}",
        ctx()
    );
}

/// A /dev/shm exactly the ring's size is enough for the whole cycle: the file is reserved once,
/// and both QEMUs (and the destination after the migration) only map it (`share=on`, `prealloc`
/// off) and need no more room.
#[test]
fn a_dev_shm_of_the_rings_size_is_enough() {
    let (_dir, out, rep, left) = migrate_with_shm("4m");
    let ctx = || format!("{}\n{rep:#}", out.dump());
    assert_eq!(out.code(), Some(0), "{}", ctx());
    assert_eq!(rep["ok"], true, "{}", ctx());
    assert!(rep["phases"]["handoff_ms"].as_f64().is_some(), "{}", ctx());
    assert!(u(&rep, "requests_forwarded") > 0, "{}", ctx());
    assert_eq!(rep["owner_finished_at_destination"], true, "{}", ctx());
    assert_verified(&rep, &ctx);
    assert!(
        left.trim().is_empty(),
        "left in /dev/shm: {left}: {}",
        ctx()
    );
}
