//! The failback under real QEMU, through the `hypervisor-shim migrate` binary: after a live
//! migration and after a save + restore, with a full queue held (QD32) and with nothing held
//! (QD1), an owner that asks for its disk back itself, and three mixed cycles in one run. Each
//! scenario checks the disk on the host (every acknowledged write present, last one per block
//! wins), that the ring is gone from both QEMUs and from /dev/shm, and that the owner did direct
//! I/O again after getting its disk back.
//!
//! The accelerator comes from `BATON_TEST_ACCEL`; workloads are sized for TCG and scaled like
//! those of `tests/migrate.rs`, with enough passes that the owner still writes after the failback.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::time::Duration;

use common::{Output, accel, run_migrate, u};
use serde_json::Value;

/// The shim's own timeout for one scenario.
const SCENARIO_TIMEOUT_SECS: u64 = 200;
/// The harness kills the shim after this.
const HARD_LIMIT: Duration = Duration::from_secs(300);

/// `blocks` for a TCG-sized `tcg_blocks` (hardware KVM: 4×; PVM-backed KVM: /32).
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

fn migrate(extra: &[&str]) -> (tempfile::TempDir, Output, Value) {
    run_migrate("baton-fb-", extra, SCENARIO_TIMEOUT_SECS, HARD_LIMIT)
}

/// What every run with `cycles` completed failbacks must show; returns the failback entries.
fn assert_cycles_ok(out: &Output, rep: &Value, cycles: u64) -> Vec<Value> {
    let ctx = || format!("{}\n{rep:#}", out.dump());
    assert_eq!(out.code(), Some(0), "{}", ctx());
    assert_eq!(rep["ok"], true, "{}", ctx());
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
    assert_eq!(u(rep, "control_rejected"), 0, "{}", ctx());
    let total = u(rep, "writes_total");
    assert_eq!(u(rep, "writes_verified"), total, "{}", ctx());
    assert_eq!(u(rep, "cycles_completed"), cycles, "{}", ctx());
    assert_eq!(rep["guest_exit"], "success", "{}", ctx());
    assert!(
        u(rep, "port1_requests_after_failback") > 0,
        "the owner did no direct I/O after the failback: {}",
        ctx()
    );
    let fbs = rep["failback"].as_array().unwrap().clone();
    assert_eq!(fbs.len() as u64, cycles, "{}", ctx());
    for (i, fb) in fbs.iter().enumerate() {
        assert_eq!(u(fb, "cycle"), i as u64 + 1, "{}", ctx());
        assert_eq!(fb["ok"], true, "{}", ctx());
        assert_eq!(fb["ring_closed"], true, "{}", ctx());
        assert!(fb["error"].is_null(), "{}", ctx());
        for k in [
            "directed_to_drained_ms",
            "drained_to_released_ms",
            "released_to_attached_ms",
            "attached_to_port1_open_ms",
            "failback_ms",
        ] {
            assert!(fb[k].as_f64().is_some(), "failback {k} missing: {}", ctx());
        }
    }
    // In order, for each cycle: the failback's steps, then the ring closed.
    let e = &out.stderr;
    let mut from = 0;
    for _ in 0..cycles {
        for needle in [
            "failback directed:",
            "failback drained:",
            "failback released:",
            "failback attached:",
            "failback port open:",
            "failback drive released:",
            "ring closed:",
        ] {
            let at = e[from..]
                .find(needle)
                .unwrap_or_else(|| panic!("progress line `{needle}` missing: {}", ctx()));
            from += at + needle.len();
        }
    }
    // No ring file survives any cycle.
    for w in rep["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["what"].as_str())
    {
        if let Some(shm) = w.split_whitespace().find(|x| x.starts_with("/dev/shm/")) {
            assert!(!Path::new(shm).exists(), "{shm} left behind");
        }
    }
    fbs
}

#[test]
fn failback_after_a_live_migration_with_a_full_queue_held() {
    let b = blocks(1024);
    let (_d, out, rep) = migrate(&[
        "--mode",
        "live",
        "--blocks",
        &b,
        "--passes",
        "16",
        "--switch-after-ms",
        "100",
    ]);
    let fbs = assert_cycles_ok(&out, &rep, 1);
    assert_eq!(rep["guest_exit_where"], "destination", "{}", out.dump());
    // QD32: the workload keeps submitting while port 2 drains, so the queue fills up.
    let held = u(&fbs[0], "requests_held_at_failback");
    assert!(held >= 16, "only {held} requests held at QD32: {rep:#}");
}

#[test]
fn failback_after_save_and_restore_with_nothing_held() {
    let b = blocks(256);
    let (_d, out, rep) = migrate(&[
        "--mode",
        "save",
        "--qd",
        "1",
        "--blocks",
        &b,
        "--passes",
        "12",
        "--switch-after-ms",
        "100",
    ]);
    let fbs = assert_cycles_ok(&out, &rep, 1);
    assert_eq!(rep["guest_exit_where"], "restored", "{}", out.dump());
    // QD1: the one outstanding request is the one port 2 drains; nothing waits behind it.
    assert_eq!(u(&fbs[0], "requests_held_at_failback"), 0, "{rep:#}");
}

#[test]
fn the_owner_asks_for_its_disk_back() {
    let b = blocks(1024);
    // The shim would wait a minute after the migration; the owner's `failback-request` (sent as
    // soon as it forwards) makes it direct the failback right after the migration instead.
    let (_d, out, rep) = migrate(&[
        "--mode",
        "live",
        "--blocks",
        &b,
        "--passes",
        "16",
        "--switch-after-ms",
        "100",
        "--failback-after-ms",
        "60000",
        "--failback-request-at",
        "1",
    ]);
    assert_cycles_ok(&out, &rep, 1);
    assert!(
        out.stderr.contains("failback-request: the owner asked"),
        "{}",
        out.dump()
    );
}

#[test]
fn three_mixed_cycles_in_one_run() {
    // 2048 blocks × 16 passes: the workload outlasts three cycles with room to spare.
    let b = blocks(2048);
    let (_d, out, rep) = migrate(&["--mode", "mixed", "--cycles", "3", "--blocks", &b]);
    assert_cycles_ok(&out, &rep, 3);
    let modes: Vec<&str> = rep["cycles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["mode"].as_str().unwrap())
        .collect();
    assert_eq!(modes, ["live", "save", "live"], "{rep:#}");
    for c in rep["cycles"].as_array().unwrap() {
        assert_eq!(c["migration_status"], "completed", "{rep:#}");
        assert_eq!(c["failback_ok"], true, "{rep:#}");
    }
}

#[test]
fn a_one_way_run_keeps_forwarding() {
    let b = blocks(1024);
    let (_d, out, rep) = migrate(&[
        "--mode",
        "live",
        "--no-failback",
        "--blocks",
        &b,
        "--switch-after-ms",
        "100",
    ]);
    assert_eq!(out.code(), Some(0), "{}", out.dump());
    assert_eq!(rep["ok"], true, "{rep:#}");
    assert_eq!(rep["failback"].as_array().unwrap().len(), 0, "{rep:#}");
    assert!(rep["port1_requests_after_failback"].is_null(), "{rep:#}");
    assert_eq!(u(&rep, "cycles_completed"), 1, "{rep:#}");
    assert!(!out.stderr.contains("failback directed:"), "{}", out.dump());
}
