//! A full disk (issue 9, items 4 and 7), under real QEMU: the workdir is a 6 MiB tmpfs, mounted in
//! the shim's own mount namespace (`unshare -m`), and the image in it is sparse and larger (8 or
//! 16 MiB), so the owner's workload fills the file system. Under the default policy (`fail`) every
//! virtio-blk reports a failed write to the guest (`werror=report`): the write fails there, the
//! owner finishes and reports, the shim names the cause once and the run fails cleanly with the
//! disk verified in full. Under `wait`, QEMU's default (`werror=enospc`) pauses the VM that holds
//! the disk; the shim resumes it once space was freed. Before,
//! a full disk showed as a 30 s timeout "waiting for the owner's drained" (before the switch) or a
//! 60 s stall of the owner at its destination (after it), and nothing said "no space left on
//! device".
//!
//! Needs root (a mount namespace and a tmpfs mount): without it the test fails and says so. The
//! accelerator comes from `BATON_TEST_ACCEL`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Output, SHIM, accel, migrate_args, report};
use serde_json::Value;

/// The shim's own timeout for the scenario.
const SCENARIO_TIMEOUT_SECS: u64 = 150;
/// The harness kills the shim after this.
const HARD_LIMIT: Duration = Duration::from_secs(240);
/// The handoff's step timeout, which a full disk used to run into: the failure must come well
/// before it.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs `migrate` with `extra` arguments in a new mount namespace whose workdir is a 6 MiB
/// tmpfs; kills it and fails the test after [`HARD_LIMIT`]. Returns the run and its report.
fn migrate_on_a_small_tmpfs(extra: &[&str]) -> (tempfile::TempDir, Output, Value) {
    run_on_a_small_tmpfs(extra, false)
}

/// As [`migrate_on_a_small_tmpfs`]; with `free_space`, a shell in the same namespace grows the
/// tmpfs to 64 MiB one second after the shim says it waits for space (`--on-io-error wait`).
fn run_on_a_small_tmpfs(extra: &[&str], free_space: bool) -> (tempfile::TempDir, Output, Value) {
    assert_eq!(
        std::fs::metadata("/proc/self").map(|m| m.uid()).ok(),
        Some(0),
        "this test needs root: it mounts a 6 MiB tmpfs as the workdir in its own mount \
         namespace (`unshare -m`); run it as root (CI does)"
    );
    let dir = tempfile::Builder::new()
        .prefix("baton-ioerr-")
        .tempdir()
        .unwrap();
    let work = dir.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let mut args = migrate_args(dir.path(), &accel(), SCENARIO_TIMEOUT_SECS);
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    // The report goes next to the workdir, outside the small tmpfs (the tmpfs, and what the
    // shim left in it, go with the namespace).
    let script = if free_space {
        let err = dir.path().join("shim.stderr");
        format!(
            "mount -t tmpfs -o size=6m tmpfs '{w}' || exit 97; \
             ( i=0; while [ $i -lt 1200 ]; do \
                 if grep -q 'waiting up to' '{e}' 2>/dev/null; then \
                   sleep 1; mount -o remount,size=64m '{w}'; exit 0; fi; \
                 sleep 0.1; i=$((i+1)); done ) & \
             \"$0\" \"$@\" 2>'{e}'; st=$?; cat '{e}' >&2; exit $st",
            w = work.display(),
            e = err.display()
        )
    } else {
        format!(
            "mount -t tmpfs -o size=6m tmpfs '{}' || exit 97; exec \"$0\" \"$@\"",
            work.display()
        )
    };
    let start = Instant::now();
    let mut child = Command::new("unshare")
        .args(["-m", "sh", "-c", &script, SHIM])
        .args(&args)
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
        if start.elapsed() > HARD_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "shim still running after {HARD_LIMIT:?}: killed\n--- stdout\n{}\n--- stderr\n{}",
                out.join().unwrap_or_default(),
                err.join().unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
        elapsed: start.elapsed(),
    };
    assert_ne!(
        out.code(),
        Some(97),
        "cannot mount a tmpfs on the workdir: {}",
        out.dump()
    );
    let rep = report(&dir.path().join("report.json"), &out);
    (dir, out, rep)
}

/// The run failed cleanly (exit 1, no timeout), naming the cause once: `the <vm>'s QEMU: a write
/// failed: no space left on device (disk.img)`. QEMU reported the error to the guest
/// (`BLOCK_IO_ERROR`, action `report`) instead of pausing it, so the owner finished and reported,
/// and every acknowledged write was checked on the host: `verified: true`, lost = stale = 0.
fn assert_named_enospc(out: &Output, rep: &Value) {
    let ctx = || format!("{}\n{rep:#}", out.dump());
    assert_eq!(out.code(), Some(1), "{}", ctx());
    assert_eq!(rep["ok"], false, "{}", ctx());
    let failures: Vec<&str> = rep["failures"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let cause = "QEMU: a write failed: no space left on device (disk.img)";
    assert_eq!(
        failures.iter().filter(|f| f.contains(cause)).count(),
        1,
        "{}",
        ctx()
    );
    assert!(
        !failures.iter().any(|f| f.contains("timed out")),
        "a timeout instead of the cause: {}",
        ctx()
    );
    let notes = rep["notes"].as_array().unwrap();
    assert!(
        notes
            .iter()
            .filter_map(Value::as_str)
            .any(|n| n.contains(cause)),
        "{}",
        ctx()
    );
    assert!(out.stderr.contains(cause), "not in the progress: {}", ctx());
    let reported = rep["qmp_events"].as_array().into_iter().flatten().any(|e| {
        e["name"] == "BLOCK_IO_ERROR"
            && e["data"]["reason"] == "No space left on device"
            && e["data"]["action"] == "report"
    });
    assert!(reported, "no BLOCK_IO_ERROR (ENOSPC, report): {}", ctx());
    let paused = rep["qmp_events"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|e| e["name"] == "BLOCK_IO_ERROR" && e["data"]["action"] == "stop");
    assert!(
        !paused,
        "a VM was paused under --on-io-error fail: {}",
        ctx()
    );
    assert_eq!(rep["verified"], true, "{}", ctx());
    for k in ["lost", "stale", "corrupt_blocks"] {
        assert_eq!(rep[k].as_u64(), Some(0), "{k}: {}", ctx());
    }
    assert!(
        out.elapsed < STEP_TIMEOUT,
        "the failure took {:?}: {}",
        out.elapsed,
        ctx()
    );
}

/// Before the switch (the default 8 MiB image, 2048 blocks): the owner's write fails while its
/// QEMU still holds the disk.
#[test]
fn a_full_disk_before_the_switch_fails_naming_enospc() {
    let (_dir, out, rep) = migrate_on_a_small_tmpfs(&["--mode", "live"]);
    assert_named_enospc(&out, &rep);
}

/// After the switch (16 MiB image, the handoff 40 ms into the workload): whichever QEMU holds the
/// disk when the file system fills (the peer, or the owner's destination after the failback)
/// reports the failed write to its guest, and that one is named.
#[test]
fn a_full_disk_after_the_switch_fails_naming_enospc() {
    let (_dir, out, rep) = migrate_on_a_small_tmpfs(&[
        "--mode",
        "live",
        "--blocks",
        "4096",
        "--switch-after-ms",
        "40",
    ]);
    assert_named_enospc(&out, &rep);
    let ctx = || format!("{}\n{rep:#}", out.dump());
    assert!(rep["phases"]["handoff_ms"].as_f64().is_some(), "{}", ctx());
}

/// `--on-io-error wait`: the owner's QEMU pauses on the full disk, the shim waits, space is freed
/// (the tmpfs grows), `cont` retries the failed write, and the run completes with every
/// acknowledged write on disk.
#[test]
fn a_full_disk_freed_in_time_lets_the_run_complete() {
    let (_dir, out, rep) = run_on_a_small_tmpfs(&["--mode", "live", "--on-io-error", "wait"], true);
    let ctx = || format!("{}\n{rep:#}", out.dump());
    assert!(
        out.stderr
            .contains("waiting up to 20 s for space to be freed"),
        "{}",
        ctx()
    );
    assert!(out.stderr.contains("space freed: the "), "{}", ctx());
    assert_eq!(out.code(), Some(0), "{}", ctx());
    assert_eq!(rep["ok"], true, "{}", ctx());
    assert_eq!(rep["verified"], true, "{}", ctx());
    for k in ["lost", "stale", "corrupt_blocks", "duplicated"] {
        assert_eq!(rep[k].as_u64(), Some(0), "{k}: {}", ctx());
    }
}
