//! Endings that used to lose the guest or its evidence (issue 9, items 2 and 6), under real QEMU:
//!
//! - a handoff that cannot complete is taken back: the peer's QEMU is SIGKILLed right after the
//!   handoff was directed (`--inject peer-crash@handoff`), so it cannot take the disk; the owner
//!   gets `take-back`, its port 1 reopens (the disk plugged into its QEMU again when it had
//!   already released it), the requests it held go there in order, and it finishes its whole
//!   workload. The run fails, naming why the handoff could not complete, and the host finds every
//!   acknowledged write;
//! - a run the shim gives up (here: its own deadline passes while the owner forwards) first fences
//!   the peer and sends `give-up`; the owner counts what it had in flight as failed and reports,
//!   so the host still checks every acknowledged write (`verified: true`, not "integrity-only").
//!
//! The accelerator comes from `BATON_TEST_ACCEL`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{Output, run_migrate, u};
use serde_json::Value;

fn migrate(extra: &[&str], timeout_secs: u64) -> (tempfile::TempDir, Output, Value) {
    run_migrate(
        "baton-tb-",
        extra,
        timeout_secs,
        Duration::from_secs(timeout_secs + 120),
    )
}

/// The run failed with a report, and the disk holds every acknowledged write.
fn assert_failed_but_verified(out: &Output, rep: &Value) {
    let ctx = || format!("{}\n{rep:#}", out.dump());
    assert!(
        out.code().is_some_and(|c| c != 0),
        "a run that did not migrate fails: {}",
        ctx()
    );
    assert_eq!(rep["ok"], false, "{}", ctx());
    assert_eq!(rep["verified"], true, "{}", ctx());
    for k in ["lost", "stale", "corrupt_blocks", "duplicated"] {
        assert_eq!(u(rep, k), 0, "{k}: {}", ctx());
    }
    assert_eq!(
        u(rep, "writes_verified"),
        u(rep, "writes_acked"),
        "{}",
        ctx()
    );
    assert!(u(rep, "writes_acked") > 0, "{}", ctx());
}

#[test]
fn a_peer_that_dies_during_the_handoff_leaves_the_owner_on_port_1() {
    let (_dir, out, rep) = migrate(
        &[
            "--mode",
            "live",
            "--blocks",
            "4096",
            "--passes",
            "6",
            "--switch-after-ms",
            "150",
            "--inject",
            "peer-crash@handoff",
        ],
        150,
    );
    assert_failed_but_verified(&out, &rep);
    let ctx = || format!("{}\n{rep:#}", out.dump());
    let tb = &rep["take_back"];
    assert_eq!(tb["ok"], true, "{}", ctx());
    assert!(
        tb["why"]
            .as_str()
            .unwrap()
            .contains("the peer's QEMU exited"),
        "{}",
        ctx()
    );
    assert_eq!(u(&rep, "peer_failures"), 1, "{}", ctx());
    assert_eq!(rep["injected"], "peer-crash@handoff", "{}", ctx());
    // The owner wrote its whole workload, all of it through port 1.
    assert_eq!(
        u(&rep, "writes_acked"),
        u(&rep, "writes_total"),
        "{}",
        ctx()
    );
    assert_eq!(u(&rep, "requests_forwarded"), 0, "{}", ctx());
    assert_eq!(rep["guest_exit"], "success", "{}", ctx());
    assert!(
        rep["failures"][0]
            .as_str()
            .unwrap()
            .starts_with("the handoff was taken back")
    );
    assert!(
        out.stderr
            .contains("taken back: the owner's port 1 is open again")
    );
    // The migration never started: a guest holding no ring is not migrated half-way.
    assert!(rep["migration_status"].is_null(), "{}", ctx());
}

#[test]
fn a_run_given_up_still_checks_every_acknowledged_write() {
    // The shim's own deadline (6 s) passes long before 400 passes are written.
    let (_dir, out, rep) = migrate(
        &[
            "--mode",
            "none",
            "--no-failback",
            "--blocks",
            "4096",
            "--passes",
            "400",
            "--switch-after-ms",
            "200",
        ],
        6,
    );
    assert_failed_but_verified(&out, &rep);
    let ctx = || format!("{}\n{rep:#}", out.dump());
    assert_eq!(rep["given_up"], true, "{}", ctx());
    assert!(
        out.stderr.contains("giving up: the owner reported"),
        "{}",
        ctx()
    );
    assert!(
        u(&rep, "requests_forwarded") > 0,
        "it was forwarding: {}",
        ctx()
    );
    assert!(u(&rep, "writes_acked") < u(&rep, "writes_total"));
}
