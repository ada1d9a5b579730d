//! Command-line behaviour of the shim that needs no guest: help, bad input, missing QEMU.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::shim;

const LIMIT: Duration = Duration::from_secs(30);

#[test]
fn every_subcommand_has_help() {
    for (args, needle) in [
        (&["--help"][..], "run"),
        (&["run", "--help"], "--hotplug-disk"),
        (&["check", "--help"], "--qemu"),
        (&["bench", "--help"], "--runs"),
        (&["migrate", "--help"], "--switch-after-ms"),
        (&["migrate", "--help"], "--failback-after-ms"),
        (&["soak", "--help"], "--cycles"),
        (&["help", "migrate"], "--peer-fault"),
        (&["help", "run"], "--timeout-secs"),
    ] {
        let out = shim(args, LIMIT);
        assert_eq!(out.code(), Some(0), "{args:?}: {}", out.dump());
        assert!(out.stdout.contains(needle), "{args:?}: {}", out.dump());
    }
}

#[test]
fn bad_input_is_a_clear_error() {
    for (args, needle) in [
        (&["run", "--qd", "0"][..], "--qd"),
        (&["run", "--qd", "65"], "--qd"),
        (&["run", "--blocks", "lots"], "--blocks"),
        (&["run", "--backend", "nvme"], "nvme"),
        (&["run", "--accel", "hvf"], "hvf"),
        (&["run", "--no-such-flag"], "--no-such-flag"),
        (&["bench", "--qd", "1,99"], "--qd"),
        (&["migrate", "--mode", "teleport"], "teleport"),
        (
            &["migrate", "--switch-after-ms", "5", "--migrate-at", "9"],
            "--migrate-at",
        ),
        (&["migrate", "--peer-fault", "sometimes"], "sometimes"),
        (&["frobnicate"], "frobnicate"),
        (&[], "Usage"),
    ] {
        let out = shim(args, LIMIT);
        assert_eq!(out.code(), Some(2), "{args:?}: {}", out.dump());
        assert!(out.stderr.contains(needle), "{args:?}: {}", out.dump());
        assert!(out.stdout.is_empty(), "{args:?}: {}", out.dump());
    }
}

#[test]
fn missing_qemu_says_how_to_install_it() {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("r.json");
    let out = shim(
        &[
            "run",
            "--qemu",
            "/nonexistent/qemu-system-x86_64",
            "--report",
            report.to_str().unwrap(),
        ],
        LIMIT,
    );
    assert_eq!(out.code(), Some(2), "{}", out.dump());
    assert!(
        out.stderr.contains("/nonexistent/qemu-system-x86_64"),
        "{}",
        out.dump()
    );
    assert!(
        out.stderr.contains("apt-get install qemu-system-x86"),
        "{}",
        out.dump()
    );
    assert!(!report.exists(), "no report for a run that never started");
    let out = shim(&["check", "--qemu", "no-such-qemu-binary"], LIMIT);
    assert_eq!(out.code(), Some(2), "{}", out.dump());
    assert!(
        out.stderr.contains("apt-get install qemu-system-x86"),
        "{}",
        out.dump()
    );
}

#[test]
fn migrate_rejects_a_migrate_at_outside_the_workload() {
    common::require_qemu();
    let kernel = common::kernel();
    let out = shim(
        &[
            "migrate",
            "--kernel",
            kernel.to_str().unwrap(),
            "--accel",
            "tcg",
            "--blocks",
            "16",
            "--passes",
            "1",
            "--migrate-at",
            "16",
        ],
        LIMIT,
    );
    assert_eq!(out.code(), Some(2), "{}", out.dump());
    assert!(out.stderr.contains("--migrate-at 16"), "{}", out.dump());
}

#[test]
fn missing_kernel_says_how_to_build_it() {
    common::require_qemu();
    let out = shim(
        &[
            "run",
            "--kernel",
            "/nonexistent/baton-kernel",
            "--accel",
            "tcg",
        ],
        LIMIT,
    );
    assert_eq!(out.code(), Some(2), "{}", out.dump());
    assert!(out.stderr.contains("cargo kbuild"), "{}", out.dump());
}
