//! The owner migrated to another host (issue 10), under real QEMU, as root: hosts are network
//! namespaces on one segment (198.18.0.0/15), the disk an NBD export of `qemu-storage-daemon` on the
//! storage host, the migration QEMU's stream over TCP. Each run must end with every acknowledged
//! write on the image (read on the host after the storage daemon flushed and exited) and no
//! namespace left behind:
//! - the cross-host cycle: handoff on A, pre-copy to B while port 2 drains, the disk plugged into
//!   the owner at B (the failback at the destination);
//! - the storage daemon restarted while the owner forwards (the NBD clients reconnect);
//! - the destination QEMU killed during the migration: rolled back at A, the disk back there;
//! - three cycles: the owner moves A → B → A → B, each cycle's peer on the owner's host.
//!
//! The accelerator comes from `BATON_TEST_ACCEL`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::MetadataExt;
use std::process::Command;
use std::time::Duration;

use common::{Output, run_migrate, u};
use serde_json::Value;

const SCENARIO_TIMEOUT_SECS: u64 = 200;
const HARD_LIMIT: Duration = Duration::from_secs(300);

fn cross_host(extra: &[&str]) -> (tempfile::TempDir, Output, Value) {
    assert_eq!(
        std::fs::metadata("/proc/self").map(|m| m.uid()).ok(),
        Some(0),
        "this test needs root: it creates network namespaces and veth links (run it as root; CI does)"
    );
    let mut args = vec![
        "--cross-host",
        "--mode",
        "live",
        "--blocks",
        "4096",
        "--passes",
        "16",
        "--switch-after-ms",
        "150",
    ];
    args.extend_from_slice(extra);
    run_migrate("baton-xh-", &args, SCENARIO_TIMEOUT_SECS, HARD_LIMIT)
}

/// Nothing acknowledged was lost, the image was read after the storage daemon exited, and the
/// run's namespaces are gone.
fn assert_verified_and_clean(out: &Output, rep: &Value) {
    let ctx = || format!("{}\n{rep:#}", out.dump());
    assert_eq!(rep["verified"], true, "{}", ctx());
    for k in ["lost", "stale", "corrupt_blocks", "duplicated"] {
        assert_eq!(u(rep, k), 0, "{k}: {}", ctx());
    }
    assert_eq!(rep["storage"], "nbd", "{}", ctx());
    assert_eq!(rep["migration_transport"], "tcp", "{}", ctx());
    assert!(
        out.stderr
            .contains("the storage daemon flushed the image and exited"),
        "{}",
        ctx()
    );
    let left = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let left = String::from_utf8_lossy(&left.stdout);
    let ours = rep["cross_host"]["namespaces"].as_array().unwrap();
    assert_eq!(ours.len(), 3, "{}", ctx());
    for ns in ours {
        let ns = ns.as_str().unwrap();
        assert!(
            !left
                .lines()
                .any(|l| l.split_whitespace().next() == Some(ns)),
            "namespace {ns} left behind: {left}"
        );
    }
}

#[test]
fn the_disk_comes_back_to_the_owner_on_the_other_host() {
    let (_dir, out, rep) = cross_host(&[]);
    let ctx = || format!("{}\n{rep:#}", out.dump());
    assert_eq!(out.code(), Some(0), "{}", ctx());
    assert_eq!(rep["ok"], true, "{}", ctx());
    assert_eq!(rep["source_host"], "host-a", "{}", ctx());
    assert_eq!(rep["destination_host"], "host-b", "{}", ctx());
    assert_eq!(rep["failback"][0]["ok"], true, "{}", ctx());
    assert_eq!(rep["cross_host"]["rolled_back"], false, "{}", ctx());
    assert_eq!(rep["owner_finished_at_destination"], true, "{}", ctx());
    assert!(u(&rep, "port1_requests_after_failback") > 0, "{}", ctx());
    for k in [
        "port2_drain_ms",
        "peer_release_ms",
        "migration_ms",
        "disk_arrival_ms",
    ] {
        assert!(
            rep["cross_host"][k].as_f64().is_some_and(|v| v >= 0.0),
            "{k}: {}",
            ctx()
        );
    }
    assert_verified_and_clean(&out, &rep);
}

#[test]
fn a_restarted_storage_daemon_loses_nothing() {
    let (_dir, out, rep) = cross_host(&["--inject", "storage-restart@forwarding"]);
    let ctx = || format!("{}\n{rep:#}", out.dump());
    assert_eq!(out.code(), Some(0), "{}", ctx());
    assert_eq!(rep["injected"], "storage-restart@forwarding", "{}", ctx());
    assert!(
        out.stderr
            .contains("injected storage-restart@forwarding: the storage daemon"),
        "{}",
        ctx()
    );
    assert_verified_and_clean(&out, &rep);
}

#[test]
fn a_destination_killed_mid_migration_is_rolled_back_at_the_source() {
    let (_dir, out, rep) = cross_host(&["--inject", "destination-crash@migration"]);
    let ctx = || format!("{}\n{rep:#}", out.dump());
    // The migration failed: the run says so, but the owner keeps its disk and finishes on A.
    assert_eq!(out.code(), Some(1), "{}", ctx());
    assert_eq!(rep["cross_host"]["rolled_back"], true, "{}", ctx());
    assert_eq!(rep["failback"][0]["ok"], true, "{}", ctx());
    assert_eq!(rep["owner_finished_at_destination"], false, "{}", ctx());
    assert_eq!(rep["guest_exit"], "success", "{}", ctx());
    assert_eq!(
        u(&rep, "writes_verified"),
        u(&rep, "writes_total"),
        "{}",
        ctx()
    );
    assert_verified_and_clean(&out, &rep);
}

#[test]
fn three_cycles_move_the_owner_back_and_forth() {
    let (_dir, out, rep) = cross_host(&["--cycles", "3"]);
    let ctx = || format!("{}\n{rep:#}", out.dump());
    assert_eq!(out.code(), Some(0), "{}", ctx());
    assert_eq!(u(&rep, "cycles_completed"), 3, "{}", ctx());
    let visited: Vec<&str> = rep["hosts_visited"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h.as_str().unwrap())
        .collect();
    assert_eq!(
        visited,
        ["host-a", "host-b", "host-a", "host-b"],
        "{}",
        ctx()
    );
    for f in rep["failback"].as_array().unwrap() {
        assert_eq!(f["ok"], true, "{}", ctx());
    }
    assert!(
        out.stderr
            .contains("the peer for this cycle runs on host-b"),
        "{}",
        ctx()
    );
    assert_verified_and_clean(&out, &rep);
}
