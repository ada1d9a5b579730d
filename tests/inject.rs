//! Fault injection (`--inject`, issue 9, item 7) under real QEMU, one test per fault armed before
//! the run: ENOSPC from a `blkdebug` rule in the owner's block graph (under `--on-io-error fail`
//! and `wait`) and in the peer's, a 1 MiB /dev/shm in the shim's own mount namespace, a state-file
//! writer that syncs 2 s after QEMU closed the stream. Each asserts the exit status, the cause
//! named where there is one, that the fault fired (the report's `injected` and the progress line
//! `injected WHAT: ...`) and that the disk was verified in full: `verified: true`, lost = stale =
//! duplicated = 0.
//!
//! `shm-full` needs root (a mount namespace and a tmpfs mount): without it its test fails and says
//! so. The accelerator comes from `BATON_TEST_ACCEL`; the workloads are sized for TCG.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use common::{Output, run_migrate, u};
use serde_json::Value;

/// The shim's own timeout for the scenario.
const SCENARIO_TIMEOUT_SECS: u64 = 150;
/// The harness kills the shim after this.
const HARD_LIMIT: Duration = Duration::from_secs(240);
/// A workload that outlasts the fault and the handoff (4096 blocks, 8 passes).
const WORKLOAD: [&str; 4] = ["--blocks", "4096", "--passes", "8"];

/// Runs `migrate --inject <inject>` with the [`WORKLOAD`] and `extra`.
fn inject(inject: &str, extra: &[&str]) -> (tempfile::TempDir, Output, Value) {
    let mut args = vec!["--inject", inject];
    args.extend(WORKLOAD);
    args.extend(extra);
    run_migrate("baton-inject-", &args, SCENARIO_TIMEOUT_SECS, HARD_LIMIT)
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect()
}

/// The fault fired (`injected` in the report, its progress line), nothing timed out, and the
/// disk was verified in full.
fn assert_fired_and_verified(what: &str, out: &Output, rep: &Value) {
    let ctx = || format!("{}\n{rep:#}", out.dump());
    assert_eq!(rep["injected"], what, "{}", ctx());
    assert!(
        out.stderr.contains(&format!("injected {what}: ")),
        "the fault did not fire: {}",
        ctx()
    );
    assert_eq!(rep["verified"], true, "{}", ctx());
    for k in ["lost", "stale", "duplicated", "corrupt_blocks"] {
        assert_eq!(u(rep, k), 0, "{k}: {}", ctx());
    }
    let failures = strings(&rep["failures"]);
    assert!(
        !failures.iter().any(|f| f.contains("timed out")),
        "a timeout: {}",
        ctx()
    );
}

/// The run failed (exit 1) naming `cause` once in the failures, the notes and the progress.
fn assert_failed_naming(cause: &str, out: &Output, rep: &Value) {
    let ctx = || format!("{}\n{rep:#}", out.dump());
    assert_eq!(out.code(), Some(1), "{}", ctx());
    assert_eq!(rep["ok"], false, "{}", ctx());
    let named = |v: &Value| strings(v).iter().filter(|f| f.contains(cause)).count();
    assert_eq!(named(&rep["failures"]), 1, "failures: {}", ctx());
    assert!(out.stderr.contains(cause), "not in the progress: {}", ctx());
}

/// `enospc@owner` under `--on-io-error fail`: the owner's write fails in the guest (QEMU reports
/// it, `werror=report`, instead of pausing the VM); the run fails naming ENOSPC in the owner's
/// QEMU, and every acknowledged write is on disk.
#[test]
fn enospc_at_the_owner_under_fail_is_a_clean_failure_named_and_verified() {
    let (_dir, out, rep) = inject("enospc@owner", &["--mode", "live", "--no-failback"]);
    assert_failed_naming(
        "the owner's QEMU: a write failed: no space left on device (disk.img)",
        &out,
        &rep,
    );
    assert_fired_and_verified("enospc@owner", &out, &rep);
    let ctx = || format!("{}\n{rep:#}", out.dump());
    let notes = strings(&rep["notes"]);
    assert!(
        notes.iter().any(|n| n.contains("a write failed: no space")),
        "{}",
        ctx()
    );
    let reported = rep["qmp_events"].as_array().into_iter().flatten().any(|e| {
        e["name"] == "BLOCK_IO_ERROR" && e["vm"] == "owner" && e["data"]["action"] == "report"
    });
    assert!(reported, "no BLOCK_IO_ERROR (action report): {}", ctx());
}

/// `enospc@owner` under `--on-io-error wait`: QEMU pauses the owner's VM, the shim's `cont`
/// retries the write (the one-shot rule is gone), and the run completes.
#[test]
fn enospc_at_the_owner_under_wait_resumes_and_completes() {
    let (_dir, out, rep) = inject(
        "enospc@owner",
        &["--mode", "live", "--no-failback", "--on-io-error", "wait"],
    );
    let ctx = || format!("{}\n{rep:#}", out.dump());
    assert!(
        out.stderr
            .contains("the owner's QEMU paused: no space left on device (disk.img)"),
        "{}",
        ctx()
    );
    assert!(
        out.stderr.contains("space freed: the owner's QEMU resumed"),
        "{}",
        ctx()
    );
    assert_eq!(out.code(), Some(0), "{}", ctx());
    assert_eq!(rep["ok"], true, "{}", ctx());
    assert_fired_and_verified("enospc@owner", &out, &rep);
}

/// `enospc@peer` under `--on-io-error fail`: the peer's first write fails; the peer passes the
/// error back over the ring, the owner finishes and reports, the run fails naming ENOSPC in the
/// peer's QEMU.
#[test]
fn enospc_at_the_peer_under_fail_is_a_clean_failure_named_and_verified() {
    let (_dir, out, rep) = inject("enospc@peer", &["--mode", "live", "--no-failback"]);
    assert_failed_naming(
        "the peer's QEMU: a write failed: no space left on device (disk.img)",
        &out,
        &rep,
    );
    assert_fired_and_verified("enospc@peer", &out, &rep);
    let ctx = || format!("{}\n{rep:#}", out.dump());
    assert!(rep["phases"]["handoff_ms"].as_f64().is_some(), "{}", ctx());
}

/// `shm-full`: the shim's own /dev/shm (1 MiB, its own mount namespace) cannot hold the 4 MiB
/// ring; the handoff is not directed, the owner keeps port 1 and finishes, the run fails naming
/// ENOSPC.
#[test]
fn shm_full_leaves_the_owner_on_port_1_and_fails_naming_enospc() {
    assert_eq!(
        std::fs::metadata("/proc/self").map(|m| m.uid()).ok(),
        Some(0),
        "this test needs root: `--inject shm-full` mounts a 1 MiB tmpfs on /dev/shm in the \
         shim's own mount namespace; run it as root (CI does)"
    );
    let (_dir, out, rep) = inject("shm-full", &["--mode", "live", "--no-failback"]);
    assert_failed_naming(
        "the handoff was not directed: no room for the 4 MiB ring in /dev/shm: ENOSPC",
        &out,
        &rep,
    );
    assert_fired_and_verified("shm-full", &out, &rep);
    let ctx = || format!("{}\n{rep:#}", out.dump());
    assert!(
        !out.stderr.contains("directed: disk0 device_del"),
        "{}",
        ctx()
    );
    assert_eq!(rep["requests_forwarded"].as_u64(), Some(0), "{}", ctx());
}

/// `save-writer-late`: the state file is written and synced 2 s after QEMU said `completed`;
/// the shim quits the source only after the file was checked, and the run completes.
#[test]
fn a_late_save_writer_still_ends_with_a_checked_file_and_a_verified_disk() {
    let (_dir, out, rep) = inject("save-writer-late", &["--mode", "save", "--no-failback"]);
    let ctx = || format!("{}\n{rep:#}", out.dump());
    assert_eq!(out.code(), Some(0), "{}", ctx());
    assert_eq!(rep["ok"], true, "{}", ctx());
    assert!(out.stderr.contains("synced and checked"), "{}", ctx());
    let saved = out.stderr.find("saved: ").expect("saved");
    let quit = out.stderr.find("the source QEMU quit").expect("quit");
    assert!(
        saved < quit,
        "the source quit before the file was checked: {}",
        ctx()
    );
    assert_fired_and_verified("save-writer-late", &out, &rep);
}

/// `shm-full` without root is a clear error before anything starts (exit 2). Run as root, the
/// test drops to `nobody` with `setpriv` (util-linux) for a copy of the shim that `nobody` can
/// run (the build directory may not be open to it).
#[test]
fn shm_full_without_root_is_a_clear_error() {
    assert_eq!(
        std::fs::metadata("/proc/self").map(|m| m.uid()).ok(),
        Some(0),
        "this test needs root, to run the shim as `nobody` (setpriv); run it as root (CI does)"
    );
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::Builder::new()
        .prefix("baton-inject-")
        .tempdir()
        .unwrap();
    let shim = dir.path().join("hypervisor-shim");
    std::fs::copy(common::SHIM, &shim).unwrap();
    for p in [dir.path(), shim.as_path()] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&shim)
        .args(["migrate", "--inject", "shm-full"])
        .output()
        .expect("cannot start `setpriv` (util-linux)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--inject shm-full needs root"), "{stderr}");
}
