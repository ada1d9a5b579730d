//! Every ending is verified (issue 9, item 6), under real QEMU: a `migrate` run whose owner's QEMU
//! dies mid-run (the test SIGKILLs it while the owner forwards through the peer) leaves no
//! `BATON result` line, so the acknowledged writes are unknown. The host must still check every
//! block of the image (a valid tag for its own LBA, the payload CRC, a write of this schedule) and
//! say `verified: "integrity-only"` with the count of intact blocks; the run fails, naming the
//! owner's death. (A run the shim itself gives up while the owner runs gets the owner's report
//! instead: tests/takeback.rs.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{accel, migrate_args, report, shim};

/// The shim's own limit, well above the run's length.
const SCENARIO_TIMEOUT_SECS: u64 = 240;
/// The harness's limit on the whole shim (start-up, the kill, the disk check).
const HARD_LIMIT: Duration = Duration::from_secs(330);
/// How long the killer waits for the owner to forward (slow on a loaded host under TCG).
const FORWARDING_WITHIN: Duration = Duration::from_secs(200);

/// The pid of the QEMU whose QMP socket is `qmp` (its command line names it).
fn qemu_pid(qmp: &Path) -> Option<u32> {
    let want = qmp.display().to_string();
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
        let cmd = String::from_utf8_lossy(&cmd);
        (cmd.contains("qemu-system") && cmd.contains(&want)).then_some(pid)
    })
}

/// Kills the owner's QEMU with SIGKILL once the owner forwards (the peer's serial log shows it
/// serving), from another thread; gives up after [`FORWARDING_WITHIN`] or once the shim wrote
/// its report. Returns whether it killed, and what it saw.
fn kill_the_owner_while_it_forwards(work: &Path) -> std::thread::JoinHandle<(bool, String)> {
    let work = work.to_path_buf();
    std::thread::spawn(move || {
        let start = Instant::now();
        while start.elapsed() < FORWARDING_WITHIN {
            let report = work.join("..").join("report.json");
            if report.exists() {
                return (false, "the shim ended before the owner forwarded".into());
            }
            let forwarding = std::fs::read_to_string(work.join("serial-peer.log"))
                .is_ok_and(|l| l.contains("serving"));
            if forwarding {
                std::thread::sleep(Duration::from_millis(300));
                if let Some(pid) = qemu_pid(&work.join("qmp-owner.sock")) {
                    let ok = std::process::Command::new("kill")
                        .args(["-9", &pid.to_string()])
                        .status()
                        .is_ok_and(|s| s.success());
                    return (ok, format!("kill -9 {pid} after {:?}", start.elapsed()));
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        (
            false,
            format!("the peer did not serve within {FORWARDING_WITHIN:?}"),
        )
    })
}

#[test]
fn a_killed_owner_leaves_an_integrity_checked_disk() {
    let dir = tempfile::Builder::new()
        .prefix("baton-int-")
        .tempdir()
        .unwrap();
    let mut args = migrate_args(dir.path(), &accel(), SCENARIO_TIMEOUT_SECS);
    args.extend(
        [
            "--blocks",
            "16384",
            "--passes",
            "64",
            "--mode",
            "none",
            "--no-failback",
            "--switch-after-ms",
            "200",
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let killer = kill_the_owner_while_it_forwards(&dir.path().join("work"));
    let out = shim(&args, HARD_LIMIT);
    let (killed, how) = killer.join().unwrap();
    let rep = report(&dir.path().join("report.json"), &out);
    let ctx = || format!("{}\n{rep:#}", out.dump());
    assert!(
        killed,
        "the test could not kill the owner's QEMU ({how}): {}",
        ctx()
    );

    assert_eq!(out.code(), Some(1), "{}", ctx());
    assert_eq!(rep["ok"], false, "{}", ctx());
    let failures = rep["failures"].as_array().unwrap();
    assert!(
        failures
            .iter()
            .any(|f| f.as_str().unwrap().contains("signal 9")),
        "the owner's death is named: {}",
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
