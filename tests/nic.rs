//! The NIC (issue 11, first slice): `run --device net` boots a guest with a virtio-net NIC whose
//! backend is a `-netdev stream` socket the shim serves, sends numbered frames both ways and
//! checks each direction on the receiving end. Real QEMU, real virtio-net.
//!
//! The accelerator comes from `BATON_TEST_ACCEL` (default auto).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{Output, accel, report, run_args, shim, u};
use serde_json::Value;

const GUEST_TIMEOUT_SECS: u64 = 90;
const HARD_LIMIT: Duration = Duration::from_secs(150);

fn run_net(extra: &[&str]) -> (tempfile::TempDir, Output, Value) {
    let dir = tempfile::Builder::new()
        .prefix("baton-nic-test-")
        .tempdir()
        .unwrap();
    let mut args = run_args(dir.path(), &accel(), GUEST_TIMEOUT_SECS);
    args.extend(["--device", "net"].map(String::from));
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = shim(&args, HARD_LIMIT);
    let rep = report(&dir.path().join("report.json"), &out);
    (dir, out, rep)
}

#[test]
fn numbered_frames_cross_both_ways_once_and_in_order() {
    let (dir, out, rep) = run_net(&["--frames", "3000", "--qd", "16", "--seed", "7"]);
    assert_eq!(out.code(), Some(0), "{}\n{rep:#}", out.dump());
    assert_eq!(rep["ok"], true, "{rep:#}");
    assert_eq!(rep["scenario"], "net-direct");
    assert_eq!(rep["guest_exit"], "success", "{rep:#}");
    for k in [
        "frames_tx_sent",
        "frames_tx_received",
        "frames_rx_sent",
        "frames_rx_received",
    ] {
        assert_eq!(u(&rep, k), 3000, "{k}: {rep:#}");
    }
    for k in [
        "frames_lost",
        "frames_duplicated",
        "frames_reordered",
        "frames_bad",
    ] {
        assert_eq!(u(&rep, k), 0, "{k}: {rep:#}");
    }
    assert_eq!(rep["host_end"]["connected"], true, "{rep:#}");
    assert!(rep["host_end"]["error"].is_null(), "{rep:#}");
    assert!(u(&rep, "frames_per_s") > 0, "{rep:#}");
    let cmd = rep["qemu_command"].as_str().unwrap();
    assert!(
        cmd.contains("-netdev stream,id=net0,server=off,addr.type=unix")
            && cmd.contains("virtio-net-pci,netdev=net0"),
        "{cmd}"
    );
    // The socket belongs to the run and is gone with it.
    assert!(!dir.path().join("work/nic.sock").exists());
}

#[test]
fn a_frame_the_host_never_sent_is_named_lost() {
    // The host end leaves frame 100 out: the guest sees the gap, exits with failure, and the run
    // fails naming one frame lost; the other direction stays clean.
    let (_dir, out, rep) = run_net(&["--frames", "400", "--nic-skip-frame", "100"]);
    assert_eq!(out.code(), Some(1), "{}\n{rep:#}", out.dump());
    assert_eq!(rep["ok"], false);
    assert_eq!(rep["guest_exit"], "failure", "{rep:#}");
    assert_eq!(u(&rep, "frames_lost"), 1, "{rep:#}");
    assert_eq!(u(&rep, "frames_rx_sent"), 399, "{rep:#}");
    assert_eq!(u(&rep, "frames_rx_received"), 399, "{rep:#}");
    assert_eq!(u(&rep, "frames_tx_received"), 400, "{rep:#}");
    let failures = rep["failures"].to_string();
    assert!(failures.contains("1 frames lost"), "{failures}");
}
