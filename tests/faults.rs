//! Faults under real QEMU, through the `hypervisor-shim migrate` binary (issue 9): a save never
//! destroys the last runnable copy of the owner.
//!
//! - a `cat` first on PATH that acknowledges the save before the data is on disk (it reads
//!   everything, exits 0 and writes the file 2 s later): the shim writes the state file itself,
//!   so the save and restore still succeed and the disk is verified;
//! - a state file on a full disk (`/dev/full` behind the state file's name: every write fails
//!   with ENOSPC): the save fails, the source keeps the owner, which finishes its workload there,
//!   and the report names the cause;
//! - a restore QEMU that cannot take the state (started without the ivshmem device, the hidden
//!   `--test-destination-without-ring` hook): the paused source is resumed (`source_resumed`),
//!   the owner finishes there, the disk is verified.
//!
//! Each test has its own working directory and a hard timeout; the accelerator comes from
//! `BATON_TEST_ACCEL`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Output, SHIM, accel, migrate_args, report};
use serde_json::Value;

/// The shim's own timeout for one scenario.
const SCENARIO_TIMEOUT_SECS: u64 = 150;
/// The harness kills the shim after this.
const HARD_LIMIT: Duration = Duration::from_secs(240);

/// A `cat` that acknowledges before the data is on disk: it reads all of stdin, exits 0 at once,
/// and writes what it read 2 s later. With file arguments it is the real `cat`.
const LATE_CAT: &str = r#"#!/bin/sh
if [ "$#" -gt 0 ]; then exec /bin/cat "$@"; fi
tmp=$(mktemp)
/bin/cat > "$tmp"
( sleep 2; /bin/cat "$tmp"; rm -f "$tmp" ) &
exit 0
"#;

/// Distinct blocks: sized for TCG, larger under hardware KVM so the save lands mid-workload.
fn blocks() -> String {
    let hw_kvm = ["kvm_intel", "kvm_amd"]
        .iter()
        .any(|m| Path::new("/sys/module").join(m).exists())
        && std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_ok();
    let mul = if hw_kvm && accel() != "tcg" { 4 } else { 1 };
    (1024 * mul).to_string()
}

/// Runs `migrate --mode save` with `extra` options in a fresh directory; `prepare` sets up the
/// directory first and returns a directory to put first on the shim's PATH, if any.
fn save(
    extra: &[&str],
    prepare: impl FnOnce(&Path) -> Option<std::path::PathBuf>,
) -> (tempfile::TempDir, Output, Value) {
    let dir = tempfile::Builder::new()
        .prefix("baton-faults-")
        .tempdir()
        .unwrap();
    let mut args = migrate_args(dir.path(), &accel(), SCENARIO_TIMEOUT_SECS);
    let b = blocks();
    args.extend(
        [
            "--mode",
            "save",
            "--blocks",
            &b,
            "--passes",
            "8",
            "--switch-after-ms",
            "100",
        ]
        .iter()
        .chain(extra)
        .map(|s| s.to_string()),
    );
    std::fs::create_dir_all(dir.path().join("work")).unwrap();
    let first_on_path = prepare(dir.path());
    let mut cmd = Command::new(SHIM);
    cmd.args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(bin) = first_on_path {
        let path = std::env::var_os("PATH").unwrap_or_default();
        let mut dirs = vec![bin];
        dirs.extend(std::env::split_paths(&path));
        cmd.env("PATH", std::env::join_paths(dirs).unwrap());
    }
    let out = run(cmd);
    let rep = report(&dir.path().join("report.json"), &out);
    (dir, out, rep)
}

/// Runs the shim to its end, killing it after [`HARD_LIMIT`].
fn run(mut cmd: Command) -> Output {
    let start = Instant::now();
    let mut child = cmd.spawn().expect("cannot start the shim binary");
    let drain = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut s = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut s);
            }
            String::from_utf8_lossy(&s).into_owned()
        })
    };
    let out = drain(child.stdout.take().map(|r| Box::new(r) as _));
    let err = drain(child.stderr.take().map(|r| Box::new(r) as _));
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if start.elapsed() > HARD_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "shim still running after {HARD_LIMIT:?}: killed\n{}",
                err.join().unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
        elapsed: start.elapsed(),
    }
}

fn u(v: &Value, k: &str) -> u64 {
    v[k].as_u64()
        .unwrap_or_else(|| panic!("report field `{k}` is not a number: {v:#}"))
}

/// Every write the owner had acknowledged is on disk, none stale, none lost.
fn assert_disk_verified(out: &Output, rep: &Value) {
    let ctx = || format!("{}\n{rep:#}", out.dump());
    assert_eq!(rep["guest_exit"], "success", "{}", ctx());
    assert_eq!(u(rep, "lost"), 0, "{}", ctx());
    assert_eq!(u(rep, "stale"), 0, "{}", ctx());
    assert!(u(rep, "writes_total") > 0, "{}", ctx());
    assert_eq!(
        u(rep, "writes_verified"),
        u(rep, "writes_total"),
        "{}",
        ctx()
    );
}

/// A failed save or restore: the owner finished at the source, the report names `cause`.
fn assert_kept_at_source(out: &Output, rep: &Value, cause: &str) {
    let ctx = || format!("{}\n{rep:#}", out.dump());
    assert_eq!(out.code(), Some(1), "{}", ctx());
    assert_eq!(rep["ok"], false, "{}", ctx());
    let err = rep["migration_error"]
        .as_str()
        .unwrap_or_else(|| panic!("{}", ctx()));
    assert!(err.contains(cause), "`{cause}` not in `{err}`\n{}", ctx());
    assert_eq!(rep["guest_exit_where"], "source", "{}", ctx());
    assert_eq!(rep["owner_finished_at_destination"], false, "{}", ctx());
    assert!(out.stderr.contains("migration FAILED"), "{}", ctx());
    assert_disk_verified(out, rep);
}

#[test]
fn a_cat_that_acknowledges_before_the_data_is_on_disk_changes_nothing() {
    let (_d, out, rep) = save(&[], |dir| {
        let bin = dir.join("bin");
        std::fs::create_dir(&bin).unwrap();
        let cat = bin.join("cat");
        std::fs::write(&cat, LATE_CAT).unwrap();
        std::fs::set_permissions(&cat, std::fs::Permissions::from_mode(0o755)).unwrap();
        Some(bin)
    });
    let ctx = || format!("{}\n{rep:#}", out.dump());
    assert_eq!(out.code(), Some(0), "{}", ctx());
    assert_eq!(rep["ok"], true, "{}", ctx());
    assert_eq!(rep["verified"], true, "{}", ctx());
    assert_eq!(rep["migration_error"], Value::Null, "{}", ctx());
    assert_eq!(rep["destination_status"], "running", "{}", ctx());
    assert_eq!(rep["owner_finished_at_destination"], true, "{}", ctx());
    assert!(
        out.stderr.contains("written, synced and checked"),
        "{}",
        ctx()
    );
    assert_disk_verified(&out, &rep);
}

#[test]
fn a_save_to_a_full_disk_keeps_the_owner_at_the_source() {
    let full = Path::new("/dev/full");
    assert!(full.exists(), "this test needs /dev/full");
    let (_d, out, rep) = save(&[], |dir| {
        std::os::unix::fs::symlink(full, dir.join("work/vm1.state")).unwrap();
        None
    });
    assert_kept_at_source(&out, &rep, "No space left on device");
}

#[test]
fn a_restore_that_fails_resumes_the_paused_source() {
    let (_d, out, rep) = save(&["--test-destination-without-ring"], |_| None);
    assert_kept_at_source(&out, &rep, "restore");
    let ctx = || format!("{}\n{rep:#}", out.dump());
    assert_eq!(rep["source_resumed"], true, "{}", ctx());
    assert_ne!(rep["destination_status"], "running", "{}", ctx());
}
