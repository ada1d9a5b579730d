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
        (&["run", "--device", "nic"], "nic"),
        (&["run", "--device", "net", "--frames", "0"], "--frames"),
        (
            &["run", "--device", "net", "--hotplug-disk"],
            "a NIC run has no disk",
        ),
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
fn cross_host_options_are_checked_before_anything_starts() {
    common::require_qemu();
    let kernel = common::kernel();
    let kernel = kernel.to_str().unwrap();
    for (extra, says) in [
        (
            &["--inject", "destination-crash@migration"][..],
            "needs --cross-host",
        ),
        (
            &["--inject", "storage-restart@forwarding"][..],
            "needs --cross-host",
        ),
        (
            &["--cross-host", "--mode", "save"][..],
            "--cross-host runs live cycles",
        ),
        (&["--cross-host", "--backend", "null"][..], "--backend file"),
    ] {
        let mut args = vec!["migrate", "--kernel", kernel, "--accel", "tcg"];
        args.extend_from_slice(extra);
        let out = shim(&args, LIMIT);
        assert_eq!(out.code(), Some(2), "{extra:?}: {}", out.dump());
        assert!(out.stderr.contains(says), "{extra:?}: {}", out.dump());
    }
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

/// The one test here that boots guests: what `migrate` leaves behind and prints. With `--workdir`
/// the report's `artifacts_kept` holds for everything it names (the disk image, the serial logs),
/// the timeline plot is drawn there, and stdout is the short summary (not the JSON report), ending
/// with where those files are.
#[test]
fn migrate_with_a_workdir_keeps_what_its_report_names_and_prints_a_short_summary() {
    common::require_qemu();
    let dir = tempfile::tempdir().unwrap();
    let mut args = common::migrate_args(dir.path(), "tcg", 150);
    args.extend(["--mode", "live", "--quiet"].map(String::from));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = shim(&args, Duration::from_secs(240));
    let report_path = dir.path().join("report.json");
    let rep = common::report(&report_path, &out);
    let ctx = || format!("{}\n{rep:#}", out.dump());
    assert_eq!(out.code(), Some(0), "{}", ctx());
    assert_eq!(rep["artifacts_kept"], true, "{}", ctx());
    let work = dir.path().join("work");
    assert_eq!(rep["workdir"].as_str(), work.to_str(), "{}", ctx());
    assert!(work.join("disk.img").is_file(), "{}", ctx());
    let logs = rep["serial_logs"].as_object().unwrap();
    assert!(logs.len() >= 3, "{}", ctx());
    for log in logs.values() {
        assert!(
            std::path::Path::new(log.as_str().unwrap()).is_file(),
            "{}",
            ctx()
        );
    }
    let plot = work.join("handoff-timeline.svg");
    assert!(
        std::fs::read_to_string(&plot).unwrap().contains("<svg"),
        "{}",
        ctx()
    );

    let lines: Vec<&str> = out.stdout.lines().collect();
    assert!((15..=25).contains(&lines.len()), "{}", ctx());
    assert!(
        out.stdout.starts_with("baton migrate [live]: OK"),
        "{}",
        ctx()
    );
    assert!(!out.stdout.contains('{'), "no JSON on stdout: {}", ctx());
    for needle in [
        "what happened",
        "held at switch",
        "blackout",
        "downtime",
        "lost 0, stale 0",
        "verdict: OK",
        "disk.img",
        "serial-owner.log",
    ] {
        assert!(out.stdout.contains(needle), "{needle}: {}", ctx());
    }
    let tail = &lines[lines.len() - 2..];
    assert!(tail[0].contains(report_path.to_str().unwrap()), "{}", ctx());
    assert!(tail[1].contains(plot.to_str().unwrap()), "{}", ctx());
}

/// `--inject`: each fault parses to its own value (one case per value); an unknown one is refused,
/// listing every known spelling.
#[test]
fn every_inject_value_parses() {
    use clap::Parser as _;
    use hypervisor_shim::cli::{Cli, Cmd};
    use hypervisor_shim::migrate::Inject;

    let parse = |v: &str| match Cli::try_parse_from(["hypervisor-shim", "migrate", "--inject", v]) {
        Ok(Cli {
            command: Cmd::Migrate(a),
            ..
        }) => Ok(a.inject),
        Ok(_) => panic!("not a migrate command"),
        Err(e) => Err(e.to_string()),
    };
    assert_eq!(
        parse("peer-crash@forwarding"),
        Ok(Some(Inject::PeerCrashForwarding))
    );
    assert_eq!(
        parse("peer-crash@handoff"),
        Ok(Some(Inject::PeerCrashHandoff))
    );
    assert_eq!(parse("enospc@owner"), Ok(Some(Inject::EnospcOwner)));
    assert_eq!(parse("enospc@peer"), Ok(Some(Inject::EnospcPeer)));
    assert_eq!(parse("shm-full"), Ok(Some(Inject::ShmFull)));
    assert_eq!(parse("save-writer-late"), Ok(Some(Inject::SaveWriterLate)));
    let e = parse("enospc@disk").unwrap_err();
    for i in Inject::ALL {
        assert!(e.contains(i.as_str()), "{e}");
    }
}
