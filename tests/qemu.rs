//! QEMU integration tests: real guests booted through the `hypervisor-shim` binary.
//!
//! Each test has its own temporary directory (disk image, QMP socket, logs, report), a hard timeout
//! (the shim's `--timeout-secs` plus a kill from the test harness), and cleans up on failure. The
//! accelerator comes from `BATON_TEST_ACCEL` (`kvm`, `tcg`, `auto`; default `auto`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{Output, accel, report, run_args, shim};
use serde_json::Value;

/// The shim's own timeout for a guest run.
const GUEST_TIMEOUT_SECS: u64 = 90;
/// The harness kills the shim after this.
const HARD_LIMIT: Duration = Duration::from_secs(150);

fn run(extra: &[&str]) -> (tempfile::TempDir, Output, Value) {
    run_with(&accel(), extra)
}

fn run_with(accel: &str, extra: &[&str]) -> (tempfile::TempDir, Output, Value) {
    let dir = tempfile::Builder::new()
        .prefix("baton-test-")
        .tempdir()
        .unwrap();
    let mut args = run_args(dir.path(), accel, GUEST_TIMEOUT_SECS);
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = shim(&args, HARD_LIMIT);
    let rep = report(&dir.path().join("report.json"), &out);
    (dir, out, rep)
}

fn u(v: &Value, k: &str) -> u64 {
    v[k].as_u64()
        .unwrap_or_else(|| panic!("report field `{k}` is not a number: {v:#}"))
}

/// The guest succeeded and the host verified every acknowledged write.
fn assert_verified(out: &Output, rep: &Value, writes: u64) {
    assert_eq!(out.code(), Some(0), "{}\n{rep:#}", out.dump());
    assert_eq!(rep["ok"], true, "{rep:#}");
    assert_eq!(rep["guest_exit"], "success", "{rep:#}");
    assert_eq!(rep["verified"], true, "{rep:#}");
    assert_eq!(u(rep, "lost"), 0, "{rep:#}");
    assert_eq!(u(rep, "stale"), 0, "{rep:#}");
    assert_eq!(u(rep, "corrupt_blocks"), 0, "{rep:#}");
    assert_eq!(u(rep, "writes_acked"), writes, "{rep:#}");
    assert_eq!(u(rep, "writes_verified"), writes, "{rep:#}");
    assert_eq!(u(rep, "read_mismatches"), 0, "{rep:#}");
    assert!(
        rep["qemu_version"]
            .as_str()
            .is_some_and(|v| v.starts_with(char::is_numeric))
    );
    assert!(rep["boot_ms"].as_f64().is_some_and(|b| b > 0.0), "{rep:#}");
}

#[test]
fn boots_and_exits_cleanly() {
    let (_dir, out, rep) = run(&["--blocks", "8", "--passes", "1", "--qd", "4"]);
    assert_verified(&out, &rep, 8);
    assert_eq!(rep["qemu_exit_code"], 33, "{rep:#}");
    assert!(rep["ready_ms"].as_f64().is_some(), "{rep:#}");
    let log = std::fs::read_to_string(rep["serial_log"].as_str().unwrap()).unwrap();
    assert!(log.contains("BATON ready role=owner vm=1"), "{log}");
    assert!(out.stdout.contains(": OK"), "{}", out.dump());
}

#[test]
fn direct_io_is_verified_on_the_host() {
    // Overwrites (3 passes), many requests in flight, a non-zero first LBA and a VM id other than 1,
    // so a misplaced, reordered or foreign write would show.
    let (_dir, out, rep) = run(&[
        "--blocks",
        "200",
        "--passes",
        "3",
        "--qd",
        "32",
        "--seed",
        "20240607",
        "--vm",
        "7",
        "--first-lba",
        "3",
    ]);
    assert_verified(&out, &rep, 600);
    assert_eq!(rep["scenario"], "direct");
    assert_eq!(rep["backend"], "file");
    assert_eq!(u(&rep, "writes_submitted"), 600);
    assert!(u(&rep, "iops") > 0, "{rep:#}");
    assert!(u(&rep, "port1_requests") >= 600, "{rep:#}");
}

#[test]
fn direct_io_under_tcg() {
    // Whatever BATON_TEST_ACCEL says, the TCG fallback is exercised too.
    let (_dir, out, rep) = run_with("tcg", &["--blocks", "64", "--passes", "2"]);
    assert_verified(&out, &rep, 128);
    assert_eq!(rep["accel"], "tcg");
}

#[test]
fn direct_io_under_kvm_or_a_clear_refusal() {
    // Whatever BATON_TEST_ACCEL says, KVM is exercised too where /dev/kvm can be opened (even a
    // software KVM such as PVM, hence the tiny workload); where it cannot, `--accel kvm` must be
    // refused with a clear error instead of silently falling back.
    let kvm_usable = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    let (_dir, out, rep) = run_with("kvm", &["--blocks", "8", "--passes", "2", "--qd", "4"]);
    if kvm_usable {
        assert_verified(&out, &rep, 16);
        assert_eq!(rep["accel"], "kvm");
    } else {
        assert_ne!(out.code(), Some(0), "{}", out.dump());
        assert!(out.stderr.contains("kvm"), "{}", out.dump());
    }
}

#[test]
fn a_guest_panic_is_a_failure_not_a_hang() {
    let (_dir, out, rep) = run(&["--guest-panic"]);
    assert_eq!(out.code(), Some(1), "{}", out.dump());
    assert_eq!(rep["ok"], false);
    assert_eq!(rep["guest_exit"], "panic", "{rep:#}");
    assert_eq!(rep["qemu_exit_code"], 35, "{rep:#}");
    assert!(
        rep["guest_panic_message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{rep:#}"
    );
    // Reported as soon as the guest exits, far from the 90 s timeout.
    assert!(out.elapsed < Duration::from_secs(30), "{}", out.dump());
    assert!(out.stdout.contains("FAILED"), "{}", out.dump());
}

#[test]
fn a_hot_added_disk_is_found_programmed_and_used() {
    let (_dir, out, rep) = run(&["--hotplug-disk", "--blocks", "64", "--passes", "2"]);
    assert_verified(&out, &rep, 128);
    assert_eq!(rep["scenario"], "hotplug");
    let hot = rep["hotplug_ms"].as_f64().expect("hotplug_ms");
    let first_io = rep["boot_ms"].as_f64().unwrap();
    assert!(
        hot <= first_io,
        "first I/O before the disk was added: {rep:#}"
    );
    let log = std::fs::read_to_string(rep["serial_log"].as_str().unwrap()).unwrap();
    assert!(log.contains("BATON waiting-for-disk"), "{log}");
}

#[test]
fn null_backend_measures_without_verifying() {
    let (_dir, out, rep) = run(&["--backend", "null", "--qd", "1", "--blocks", "64"]);
    assert_eq!(out.code(), Some(0), "{}", out.dump());
    assert_eq!(rep["backend"], "null");
    assert_eq!(rep["verified"], false);
    assert!(
        rep["lost"].is_null() && rep["writes_verified"].is_null(),
        "{rep:#}"
    );
    assert!(
        rep["verification"].as_str().unwrap().contains("null-co"),
        "{rep:#}"
    );
    assert_eq!(u(&rep, "writes_acked"), 256);
    assert!(u(&rep, "iops") > 0);
}

#[test]
fn the_hard_timeout_kills_a_run_that_does_not_finish() {
    let dir = tempfile::tempdir().unwrap();
    let mut args = run_args(dir.path(), &accel(), 2);
    // Far more work than fits in 2 s under any accelerator.
    args.extend(["--blocks", "262144", "--passes", "64", "--backend", "null"].map(String::from));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = shim(&args, Duration::from_secs(60));
    let rep = report(&dir.path().join("report.json"), &out);
    assert_eq!(out.code(), Some(1), "{}", out.dump());
    assert_eq!(rep["guest_exit"], "timeout", "{rep:#}");
    assert!(out.elapsed < Duration::from_secs(20), "{}", out.dump());
}
