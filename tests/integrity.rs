//! Every ending is verified (issue 9, item 6), under real QEMU: a `migrate` run whose owner is
//! killed mid-run (the shim gives up at `--timeout-secs` and kills the owner's QEMU) leaves no
//! `BATON result` line, so the acknowledged writes are unknown. The host must still check every
//! block of the image (a valid tag for its own LBA, the payload CRC, a write of this schedule) and
//! say `verified: "integrity-only"` with the count of intact blocks; the run fails, naming the
//! timeout.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{accel, migrate_args, report, shim};

/// The shim's own limit: far too short for the workload below, so it gives up mid-run.
const SCENARIO_TIMEOUT_SECS: u64 = 2;
/// The harness's limit on the whole shim (start-up, the kill, the disk check).
const HARD_LIMIT: Duration = Duration::from_secs(180);

#[test]
fn a_killed_owner_leaves_an_integrity_checked_disk() {
    let dir = tempfile::Builder::new()
        .prefix("baton-int-")
        .tempdir()
        .unwrap();
    let mut args = migrate_args(dir.path(), &accel(), SCENARIO_TIMEOUT_SECS);
    args.extend(
        ["--blocks", "16384", "--passes", "64"]
            .iter()
            .map(|s| s.to_string()),
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = shim(&args, HARD_LIMIT);
    let rep = report(&dir.path().join("report.json"), &out);
    let ctx = || format!("{}\n{rep:#}", out.dump());

    assert_eq!(out.code(), Some(1), "{}", ctx());
    assert_eq!(rep["ok"], false, "{}", ctx());
    let failures = rep["failures"].as_array().unwrap();
    assert!(
        failures
            .iter()
            .any(|f| f.as_str().unwrap().contains("within 2s")),
        "the timeout is named: {}",
        ctx()
    );
    assert!(rep["guest_report_error"].is_string(), "{}", ctx());

    assert_eq!(rep["verified"], "integrity-only", "{}", ctx());
    let intact = rep["blocks_intact"].as_u64().unwrap();
    assert!(intact > 0, "{}", ctx());
    assert!(intact <= 16384, "{}", ctx());
    assert_eq!(rep["corrupt_blocks"], 0, "{}", ctx());
    assert!(rep["highest_seq_on_disk"].as_u64().unwrap() >= intact.min(16384));
    // Without the acknowledged writes nothing is called lost or stale.
    assert!(rep["lost"].is_null() && rep["stale"].is_null(), "{}", ctx());
    assert!(
        rep["verification"]
            .as_str()
            .unwrap()
            .starts_with("integrity only"),
        "{}",
        ctx()
    );
    assert!(
        out.stdout.contains("integrity-only:") || out.stderr.contains("integrity-only:"),
        "the summary names the check: {}",
        ctx()
    );
}
