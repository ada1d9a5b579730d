//! A peer that dies or hangs while the owner forwards through it (issue 9), under real QEMU: the
//! shim SIGKILLs the peer's QEMU (`--inject`) once the owner forwards, or once the failback was
//! directed, in a live and a save run and in a one-way run; or stops its vCPU, and must notice the
//! frozen heartbeat and fence it. The owner must survive: the disk comes
//! back to it (an emergency failback), every forwarded request without a completion is replayed on
//! port 1 before anything newer, and the host finds every acknowledged write (lost = stale =
//! duplicated = 0).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{Output, run_migrate, u};
use serde_json::Value;

const SCENARIO_TIMEOUT_SECS: u64 = 200;
const HARD_LIMIT: Duration = Duration::from_secs(300);

fn migrate(extra: &[&str]) -> (tempfile::TempDir, Output, Value) {
    run_migrate("baton-pc-", extra, SCENARIO_TIMEOUT_SECS, HARD_LIMIT)
}

/// The owner survived the peer's loss and nothing acknowledged was lost.
fn assert_survived(out: &Output, rep: &Value, inject: &str) {
    let ctx = || format!("{}\n{rep:#}", out.dump());
    assert_eq!(out.code(), Some(0), "{}", ctx());
    assert_eq!(rep["ok"], true, "{}", ctx());
    assert_eq!(rep["injected"], inject, "{}", ctx());
    assert_eq!(u(rep, "peer_failures"), 1, "{}", ctx());
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
    assert_eq!(
        u(rep, "writes_verified"),
        u(rep, "writes_total"),
        "{}",
        ctx()
    );
    assert_eq!(rep["guest_exit"], "success", "{}", ctx());
    assert!(
        out.stderr.contains(&format!("injected {inject}: SIGKILL")),
        "{}",
        ctx()
    );
    assert!(out.stderr.contains("emergency failback"), "{}", ctx());
    assert!(
        rep["recovery"][0]
            .as_str()
            .unwrap()
            .contains("emergency failback")
    );
    let fb = rep["failback"].as_array().unwrap();
    assert_eq!(fb.len(), 1, "{}", ctx());
    assert_eq!(fb[0]["ok"], true, "{}", ctx());
    assert_eq!(fb[0]["emergency"], true, "{}", ctx());
    assert_eq!(fb[0]["ring_closed"], true, "{}", ctx());
    assert!(u(rep, "port1_requests_after_failback") > 0, "{}", ctx());
}

#[test]
fn a_peer_killed_while_the_owner_forwards_loses_nothing() {
    let (_d, out, rep) = migrate(&[
        "--mode",
        "live",
        "--switch-after-ms",
        "100",
        "--inject",
        "peer-crash@forwarding",
    ]);
    assert_survived(&out, &rep, "peer-crash@forwarding");
    // QD 32, every slot in flight over the ring when the peer died: all replayed.
    assert!(u(&rep, "requests_replayed") > 0, "{rep:#}");
}

#[test]
fn a_peer_killed_during_the_failback_loses_nothing() {
    let (_d, out, rep) = migrate(&[
        "--mode",
        "live",
        "--switch-after-ms",
        "100",
        "--inject",
        "peer-crash@failback",
    ]);
    assert_survived(&out, &rep, "peer-crash@failback");
}

#[test]
fn a_peer_killed_before_a_save_loses_nothing() {
    let (_d, out, rep) = migrate(&[
        "--mode",
        "save",
        "--switch-after-ms",
        "100",
        "--inject",
        "peer-crash@forwarding",
    ]);
    assert_survived(&out, &rep, "peer-crash@forwarding");
    assert_eq!(rep["guest_exit_where"], "restored", "{rep:#}");
}

#[test]
fn a_one_way_run_survives_its_peer() {
    let (_d, out, rep) = migrate(&[
        "--mode",
        "live",
        "--no-failback",
        "--switch-after-ms",
        "100",
        "--inject",
        "peer-crash@forwarding",
    ]);
    assert_survived(&out, &rep, "peer-crash@forwarding");
}

#[test]
fn a_peer_that_hangs_is_fenced_and_loses_nothing() {
    let (_d, out, rep) = migrate(&[
        "--mode",
        "live",
        "--switch-after-ms",
        "100",
        "--inject",
        "peer-hang@forwarding",
    ]);
    let ctx = || format!("{}\n{rep:#}", out.dump());
    assert!(
        out.stderr
            .contains("injected peer-hang@forwarding: the peer's vCPU stopped"),
        "{}",
        ctx()
    );
    assert!(
        out.stderr.contains("heartbeat in the ring froze"),
        "{}",
        ctx()
    );
    assert_eq!(out.code(), Some(0), "{}", ctx());
    assert_eq!(rep["ok"], true, "{}", ctx());
    assert_eq!(u(&rep, "peer_failures"), 1, "{}", ctx());
    assert_eq!(rep["verified"], true, "{}", ctx());
    for k in [
        "lost",
        "stale",
        "corrupt_blocks",
        "duplicated",
        "read_mismatches",
    ] {
        assert_eq!(u(&rep, k), 0, "{k}: {}", ctx());
    }
    assert_eq!(rep["failback"][0]["emergency"], true, "{}", ctx());
}

#[test]
fn a_fresh_peer_serves_the_cycles_after_a_lost_one() {
    let (_d, out, rep) = migrate(&[
        "--mode",
        "mixed",
        "--cycles",
        "3",
        "--inject",
        "peer-crash@forwarding",
    ]);
    let ctx = || format!("{}\n{rep:#}", out.dump());
    assert_eq!(out.code(), Some(0), "{}", ctx());
    assert_eq!(rep["ok"], true, "{}", ctx());
    assert_eq!(u(&rep, "peer_failures"), 1, "{}", ctx());
    assert_eq!(u(&rep, "cycles_completed"), 3, "{}", ctx());
    assert!(out.stderr.contains("a fresh peer (peer-2"), "{}", ctx());
    let fb = rep["failback"].as_array().unwrap();
    let emergency: Vec<bool> = fb.iter().map(|f| f["emergency"] == true).collect();
    assert_eq!(emergency, [true, false, false], "{}", ctx());
    for k in [
        "lost",
        "stale",
        "corrupt_blocks",
        "duplicated",
        "read_mismatches",
    ] {
        assert_eq!(u(&rep, k), 0, "{k}: {}", ctx());
    }
    assert_eq!(rep["verified"], true, "{}", ctx());
}
