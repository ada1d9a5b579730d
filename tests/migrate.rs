//! The handoff under real QEMU, through the `hypervisor-shim migrate` binary: live migration and
//! save + restore, QD1 and QD32, switch points from ten seeds, an owner that asks for the
//! migration itself (a submit racing the switch), a faulty peer, and a destination that dies.
//!
//! Every scenario starts three or four QEMUs; each test has its own working directory, a hard
//! timeout (the shim's `--timeout-secs` plus a kill from the harness), and the shim's guards
//! clean up on failure. The accelerator comes from `BATON_TEST_ACCEL` (`kvm`, `tcg`, `auto`).
//! Workloads are sized for TCG (a few thousand writes, about a second each); on a host whose
//! `/dev/kvm` is software-emulated (PVM, ~400x slower for this guest) they shrink, and on
//! hardware KVM they grow, so the switch still lands while the owner is writing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::time::Duration;

use common::{Output, accel, run_migrate, u};
use serde_json::Value;

/// The shim's own timeout for one scenario.
const SCENARIO_TIMEOUT_SECS: u64 = 150;
/// The harness kills the shim after this.
const HARD_LIMIT: Duration = Duration::from_secs(240);

/// How the workloads scale with the accelerator the tests will get.
fn scale() -> (u64, u64) {
    let loaded = |m: &str| Path::new("/sys/module").join(m).exists();
    let hw_kvm = (loaded("kvm_intel") || loaded("kvm_amd"))
        && std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_ok();
    let pvm = loaded("kvm_pvm") && !loaded("kvm_intel") && !loaded("kvm_amd");
    match accel().as_str() {
        // (multiplier, divisor) of the TCG-sized workloads.
        "kvm" if pvm => (1, 32),
        "kvm" | "auto" if hw_kvm => (4, 1),
        _ => (1, 1),
    }
}

/// `blocks` for a TCG-sized `tcg_blocks`.
fn blocks(tcg_blocks: u64) -> String {
    let (mul, div) = scale();
    (tcg_blocks * mul / div).max(16).to_string()
}

fn migrate(extra: &[&str]) -> (tempfile::TempDir, Output, Value) {
    // The handoff and the migration, one way: these workloads are sized for a switch inside the
    // write phase, not to outlast a failback too (tests/failback.rs sizes its own for that).
    let mut args = vec!["--no-failback"];
    args.extend_from_slice(extra);
    run_migrate("baton-mig-", &args, SCENARIO_TIMEOUT_SECS, HARD_LIMIT)
}

fn f(v: &Value, k: &str) -> f64 {
    v[k].as_f64()
        .unwrap_or_else(|| panic!("report field `{k}` is not a number: {v:#}"))
}

/// Each guest accounted for the first handoff in `guest_steps` (`BATON steps`), with its steps
/// in the order they happen and its clock never going back.
fn assert_guest_steps(rep: &Value, ctx: &dyn Fn() -> String) {
    let lines = rep["guest_steps"]
        .as_array()
        .unwrap_or_else(|| panic!("{}", ctx()));
    for (role, want) in [
        (
            "owner",
            &[
                "redirect",
                "drained",
                "released",
                "port2-open",
                "first-completion",
            ][..],
        ),
        (
            "peer",
            &[
                "disk-attached",
                "pci",
                "transport",
                "disk-up",
                "ring-attached",
                "peer-ready",
            ][..],
        ),
    ] {
        let line = lines
            .iter()
            .find(|l| l["role"] == role && l["kind"] == "handoff" && l["n"] == 1)
            .unwrap_or_else(|| panic!("no {role} handoff steps: {}", ctx()));
        let steps = line["steps"]
            .as_array()
            .unwrap_or_else(|| panic!("{}", ctx()));
        let names: Vec<&str> = steps.iter().filter_map(|s| s["step"].as_str()).collect();
        let mut at = 0;
        for w in want {
            let i = names[at..]
                .iter()
                .position(|n| n == w)
                .unwrap_or_else(|| panic!("{role}: step {w} missing or out of order: {}", ctx()));
            at += i + 1;
        }
        let times: Vec<u64> = steps.iter().filter_map(|s| s["at_us"].as_u64()).collect();
        assert!(times.windows(2).all(|w| w[0] <= w[1]), "{role}: {}", ctx());
        assert!(
            steps
                .iter()
                .all(|s| ["spin", "irq", "tick"].contains(&s["wake"].as_str().unwrap_or(""))),
            "{}",
            ctx()
        );
    }
}

/// What every successful handoff must show.
fn assert_handoff_ok(out: &Output, rep: &Value, mode: &str, qd32: bool) {
    let ctx = || format!("{}\n{rep:#}", out.dump());
    assert_eq!(out.code(), Some(0), "{}", ctx());
    assert_eq!(rep["ok"], true, "{}", ctx());
    assert_eq!(rep["mode"], mode);
    assert_eq!(rep["verified"], true, "{}", ctx());
    assert_eq!(u(rep, "lost"), 0, "{}", ctx());
    assert_eq!(u(rep, "stale"), 0, "{}", ctx());
    assert_eq!(u(rep, "corrupt_blocks"), 0, "{}", ctx());
    assert_eq!(u(rep, "duplicated"), 0, "{}", ctx());
    assert_eq!(u(rep, "control_rejected"), 0, "{}", ctx());
    let total = u(rep, "writes_total");
    assert_eq!(u(rep, "writes_acked"), total, "{}", ctx());
    assert_eq!(u(rep, "writes_verified"), total, "{}", ctx());
    assert_eq!(u(rep, "read_mismatches"), 0, "{}", ctx());
    if qd32 {
        assert!(u(rep, "requests_queued_at_switch") > 0, "{}", ctx());
    }
    assert!(u(rep, "requests_forwarded") > 0, "{}", ctx());
    assert!(u(rep, "port1_requests") > 0, "{}", ctx());
    assert_eq!(rep["guest_exit"], "success", "{}", ctx());
    assert_eq!(rep["owner_finished_at_destination"], true, "{}", ctx());
    let at = if mode == "live" {
        "destination"
    } else {
        "restored"
    };
    assert_eq!(rep["guest_exit_where"], at, "{}", ctx());
    assert_eq!(rep["migration_status"], "completed", "{}", ctx());
    assert_eq!(rep["destination_status"], "running", "{}", ctx());
    assert!(rep["migration_downtime_ms"].as_u64().is_some(), "{}", ctx());
    assert!(f(rep, "blackout_ms") > 0.0, "{}", ctx());
    assert_guest_steps(rep, &ctx);
    let ph = &rep["phases"];
    for k in [
        "directed_to_drained_ms",
        "drained_to_device_deleted_ms",
        "device_deleted_to_attached_ms",
        "attached_to_first_forwarded_ms",
        "handoff_ms",
        "migration_ms",
    ] {
        assert!(ph[k].as_f64().is_some(), "phase {k} missing: {}", ctx());
    }
    if mode == "save" {
        assert!(ph["save_ms"].as_f64().is_some(), "{}", ctx());
        assert!(ph["restore_ms"].as_f64().is_some(), "{}", ctx());
    }
    // The progress display ran, in order.
    let e = &out.stderr;
    let pos = |needle: &str| {
        e.find(needle)
            .unwrap_or_else(|| panic!("progress line `{needle}` missing: {}", ctx()))
    };
    // Each step's line carries the step's name (`steps::Step::label`).
    assert!(pos("directed:") < pos("ring opened:"), "{}", ctx());
    assert!(pos("directed:") < pos("drained:"), "{}", ctx());
    assert!(pos("drained:") < pos("released:"), "{}", ctx());
    assert!(pos("released:") < pos("attached:"), "{}", ctx());
    assert!(pos("attached:") < pos("ready:"), "{}", ctx());
    assert!(pos("ready:") < pos("port open:"), "{}", ctx());
    // QEMU's teardown of the owner's device is waited for off the blackout, after port 2 opened.
    assert!(pos("port open:") < pos("drive released:"), "{}", ctx());
    assert!(e.contains(if mode == "live" {
        "migrated:"
    } else {
        "restored:"
    }));
    // Guards removed the shared-memory file.
    let shm = rep["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["what"].as_str())
        .find_map(|w| w.split_whitespace().find(|x| x.starts_with("/dev/shm/")))
        .expect("the ring file is named in the timeline");
    assert!(!Path::new(shm).exists(), "{shm} left behind");
}

#[test]
fn live_migration_at_qd32() {
    let b = blocks(1024);
    let (_d, out, rep) = migrate(&[
        "--mode",
        "live",
        "--blocks",
        &b,
        "--passes",
        "8",
        "--switch-after-ms",
        "100",
    ]);
    assert_handoff_ok(&out, &rep, "live", true);
    assert_eq!(rep["switch"]["trigger"], "operator");
    assert_eq!(u(&rep["switch"], "after_first_io_ms"), 100);
    assert!(
        out.stdout.contains("baton migrate [live]: OK"),
        "{}",
        out.dump()
    );
}

#[test]
fn save_and_restore_at_qd32() {
    let b = blocks(1024);
    let (_d, out, rep) = migrate(&[
        "--mode",
        "save",
        "--blocks",
        &b,
        "--passes",
        "8",
        "--switch-after-ms",
        "100",
    ]);
    assert_handoff_ok(&out, &rep, "save", true);
}

#[test]
fn live_migration_at_qd1() {
    let b = blocks(256);
    let (_d, out, rep) = migrate(&[
        "--mode",
        "live",
        "--qd",
        "1",
        "--blocks",
        &b,
        "--passes",
        "4",
        "--switch-after-ms",
        "80",
    ]);
    assert_handoff_ok(&out, &rep, "live", false);
    assert!(u(&rep, "requests_queued_at_switch") <= 1, "{rep:#}");
}

#[test]
fn save_and_restore_at_qd1() {
    let b = blocks(256);
    let (_d, out, rep) = migrate(&[
        "--mode",
        "save",
        "--qd",
        "1",
        "--blocks",
        &b,
        "--passes",
        "4",
        "--switch-after-ms",
        "80",
    ]);
    assert_handoff_ok(&out, &rep, "save", false);
}

#[test]
fn switch_points_from_ten_seeds() {
    // One scenario per seed, one after the other; the seed picks both the schedule and the
    // switch point. Even seeds migrate live, odd ones save and restore.
    let b = blocks(1024);
    let mut points = Vec::new();
    for seed in 1..=10u64 {
        let mode = if seed % 2 == 0 { "live" } else { "save" };
        let s = seed.to_string();
        let (_d, out, rep) = migrate(&[
            "--mode", mode, "--blocks", &b, "--passes", "8", "--seed", &s,
        ]);
        assert_handoff_ok(&out, &rep, mode, true);
        assert_eq!(rep["switch"]["trigger"], "seed", "{rep:#}");
        assert_eq!(u(&rep, "seed"), seed);
        points.push(u(&rep["switch"], "after_first_io_ms"));
    }
    let mut distinct = points.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert!(distinct.len() >= 6, "switch points barely vary: {points:?}");
}

#[test]
fn the_owner_asks_for_the_migration_itself() {
    // migrate_at=N: the owner sends `migrate-request` right after submitting write N and keeps
    // submitting, so new requests race the `redirect`.
    let b = blocks(1024);
    let total: u64 = b.parse::<u64>().unwrap() * 8;
    let at = (total / 5).to_string();
    for mode in ["live", "save"] {
        let (_d, out, rep) = migrate(&[
            "--mode",
            mode,
            "--blocks",
            &b,
            "--passes",
            "8",
            "--migrate-at",
            &at,
        ]);
        assert_handoff_ok(&out, &rep, mode, true);
        assert_eq!(rep["switch"]["trigger"], "owner-request", "{rep:#}");
        assert_eq!(u(&rep["switch"], "migrate_at").to_string(), at);
        // The owner had submitted at least N writes before it asked; port 1 took them.
        assert!(
            u(&rep, "port1_requests") >= at.parse::<u64>().unwrap() - 32,
            "{rep:#}"
        );
        assert!(out.stderr.contains("migrate-request:"), "{}", out.dump());
    }
}

#[test]
fn a_faulty_peer_is_detected_and_no_acknowledged_write_is_lost() {
    let b = blocks(1024);
    let (_d, out, rep) = migrate(&[
        "--blocks",
        &b,
        "--passes",
        "8",
        "--switch-after-ms",
        "100",
        "--peer-fault",
        "bad-completion",
    ]);
    let ctx = || format!("{}\n{rep:#}", out.dump());
    assert_eq!(out.code(), Some(1), "{}", ctx());
    assert_eq!(rep["ok"], false);
    assert_eq!(rep["peer_fault"], "bad-completion");
    assert_eq!(rep["peer_fault_detected"], true, "{}", ctx());
    assert!(
        rep["peer_fault_message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{}",
        ctx()
    );
    assert_eq!(rep["guest_exit"], "failure", "{}", ctx());
    assert_eq!(rep["qemu_exit_code"], 35, "{}", ctx());
    // The owner failed its in-flight writes and listed them; the host verified the rest.
    assert_eq!(rep["verified"], true, "{}", ctx());
    assert_eq!(u(&rep, "lost"), 0, "{}", ctx());
    assert_eq!(u(&rep, "stale"), 0, "{}", ctx());
    assert_eq!(u(&rep, "corrupt_blocks"), 0, "{}", ctx());
    assert_eq!(u(&rep, "duplicated"), 0, "{}", ctx());
    assert!(u(&rep, "write_errors") > 0, "{}", ctx());
    assert!(u(&rep, "writes_verified") > 0, "{}", ctx());
    assert!(u(&rep, "requests_queued_at_switch") > 0, "{}", ctx());
    assert!(u(&rep, "requests_forwarded") > 0, "{}", ctx());
    assert_eq!(u(&rep, "control_rejected"), 0, "{}", ctx());
    assert_eq!(
        u(&rep, "writes_verified"),
        u(&rep, "writes_acked"),
        "{}",
        ctx()
    );
    assert!(
        rep["failures"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f.as_str().unwrap().contains("peer fault")),
        "{}",
        ctx()
    );
}

#[test]
fn a_destination_that_dies_is_detected_and_the_source_keeps_running() {
    // Test hook: the destination lacks the ivshmem device, so it cannot take the owner's state.
    // The shim must see it, keep (or resume) the source, let the owner finish there, and fail.
    let b = blocks(1024);
    let (_d, out, rep) = migrate(&[
        "--blocks",
        &b,
        "--passes",
        "8",
        "--switch-after-ms",
        "100",
        "--test-destination-without-ring",
    ]);
    let ctx = || format!("{}\n{rep:#}", out.dump());
    assert_eq!(out.code(), Some(1), "{}", ctx());
    assert_eq!(rep["ok"], false);
    assert!(rep["migration_error"].as_str().is_some(), "{}", ctx());
    assert_ne!(rep["destination_status"], "running", "{}", ctx());
    assert_eq!(rep["guest_exit"], "success", "{}", ctx());
    assert_eq!(rep["guest_exit_where"], "source", "{}", ctx());
    assert_eq!(rep["owner_finished_at_destination"], false, "{}", ctx());
    assert_eq!(u(&rep, "lost"), 0, "{}", ctx());
    assert_eq!(u(&rep, "stale"), 0, "{}", ctx());
    assert_eq!(
        u(&rep, "writes_verified"),
        u(&rep, "writes_total"),
        "{}",
        ctx()
    );
    assert!(out.stderr.contains("migration FAILED"), "{}", out.dump());
}
