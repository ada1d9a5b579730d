//! CPU use of idle guests: QEMU's `utime + stime` (all its threads, from /proc through
//! [`crate::cputime`]) over a few seconds while the guest waits, as a percentage of one host core.
//!
//! Two guests wait at once: a **peer** waiting for its ring (what a standby VM2 does between
//! handoffs: `hello` answered, nothing more), and an **owner** booted without a disk, waiting for
//! one to be hot-plugged (`BATON waiting-for-disk`). Both wait the same way: `hlt` between timer
//! ticks, the tick slowed to 100 Hz after 50 ms without work (kernel `interrupts::idle`).

use std::path::Path;
use std::time::{Duration, Instant};

use baton_core::cmdline::{DiskMode, GuestConfig, Role};
use baton_core::console::GuestLine;
use baton_core::control::Message;
use serde::Serialize;

use crate::channel::{ControlChannel, ControlListener, Received};
use crate::console::Recv;
use crate::cputime::{ProcessSample, clock_ticks_per_sec};
use crate::qemu::{self, Accel};
use crate::setup::{self, Binaries};
use crate::vm::{Vm, VmError, VmLogs};

/// Longest wait for a guest to start waiting.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Time given to a waiting guest to settle (its timer slows down after 50 ms idle).
const SETTLE: Duration = Duration::from_millis(500);

/// Result of the idle measurement.
#[derive(Debug, Clone, Serialize)]
pub struct IdleResult {
    /// The peer waiting for its ring: percent of one core.
    pub peer_waiting_for_ring_percent: f64,
    /// The owner waiting for a hot-plugged disk: percent of one core.
    pub owner_waiting_for_disk_percent: f64,
    /// Length of the sample, in s.
    pub seconds: f64,
    /// Clock ticks per second of `/proc/<pid>/stat` (its resolution, when a thread exited during
    /// the sample; otherwise the threads' ns are used).
    pub clk_tck: u64,
    /// How it was measured.
    pub method: String,
}

/// Errors of the idle measurement.
#[derive(Debug, thiserror::Error)]
pub enum IdleError {
    /// QEMU could not be started
    #[error(transparent)]
    Qemu(#[from] qemu::QemuError),
    /// set-up
    #[error("{0}")]
    Setup(String),
}

impl From<VmError> for IdleError {
    fn from(e: VmError) -> Self {
        match e {
            VmError::Qemu(e) => Self::Qemu(e),
            VmError::Log { path, source } => {
                Self::Setup(format!("log {}: {source}", path.display()))
            }
        }
    }
}

/// Drains the guest's console (so QEMU never blocks on it); whether the guest printed
/// `BATON waiting-for-disk` meanwhile.
fn drain_console(vm: &mut Vm) -> bool {
    let mut seen = false;
    while let Recv::Line(l) = vm.recv_line(Duration::ZERO) {
        seen |= matches!(
            GuestLine::parse(&l.text),
            Some(Ok(GuestLine::WaitingForDisk))
        );
    }
    seen
}

/// Boots both idle guests, waits until each waits, and samples their CPU use over `sample`.
pub fn measure(
    qemu_bin: &Path,
    kernel: &Path,
    accel: Accel,
    sample: Duration,
    dir: &Path,
) -> Result<IdleResult, IdleError> {
    let bins = Binaries {
        qemu: qemu_bin.to_path_buf(),
        bios: qemu::locate_bios()?,
        kernel: kernel.to_path_buf(),
    };
    let listener = ControlListener::bind(&setup::control_socket(dir, "idle-peer"))
        .map_err(|e| IdleError::Setup(format!("control socket: {e}")))?;
    let peer_append = GuestConfig {
        role: Role::Peer,
        vm: 2,
        ..GuestConfig::default()
    }
    .to_string();
    let peer_spec = qemu::MachineSpec {
        control_socket: Some(listener.path().to_path_buf()),
        ..bins.machine(
            accel,
            peer_append,
            setup::qmp_socket(dir, Some("idle-peer")),
        )
    };
    let owner_append = GuestConfig {
        role: Role::Owner,
        vm: 1,
        disk: DiskMode::Hotplug,
        ..GuestConfig::default()
    }
    .to_string();
    let owner_spec = bins.machine(
        accel,
        owner_append,
        setup::qmp_socket(dir, Some("idle-owner")),
    );
    let mut peer = Vm::start("idle-peer", &peer_spec, &VmLogs::labelled(dir, "idle-peer"))?;
    let mut owner = Vm::start(
        "idle-owner",
        &owner_spec,
        &VmLogs::labelled(dir, "idle-owner"),
    )?;
    let stream = listener
        .accept(READY_TIMEOUT, || peer.alive())
        .map_err(|e| IdleError::Setup(format!("the idle peer's control channel: {e}")))?;
    let mut ctl = ControlChannel::new("peer", stream);

    // Both waiting: the peer said hello (and was acknowledged), the owner asked for a disk.
    let start = Instant::now();
    let (mut peer_ready, mut owner_ready) = (false, false);
    while !(peer_ready && owner_ready) {
        let got = ctl
            .poll()
            .map_err(|e| IdleError::Setup(format!("the idle peer's control channel: {e}")))?;
        peer_ready |= got.iter().any(|r| {
            matches!(
                r,
                Received::Message {
                    msg: Message::Hello { .. },
                    ..
                }
            )
        });
        owner_ready |= drain_console(&mut owner);
        drain_console(&mut peer);
        for (g, name) in [(&mut peer, "peer"), (&mut owner, "owner")] {
            if !g.alive() {
                return Err(IdleError::Setup(format!(
                    "the idle {name}'s QEMU exited before it waited"
                )));
            }
        }
        if start.elapsed() >= READY_TIMEOUT {
            return Err(IdleError::Setup(format!(
                "idle guests not waiting after {READY_TIMEOUT:?} (peer hello: {peer_ready}, owner waiting-for-disk: {owner_ready})"
            )));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let settle_until = Instant::now() + SETTLE;
    while Instant::now() < settle_until {
        let _ = ctl.poll();
        std::thread::sleep(Duration::from_millis(20));
    }

    let (pp, op) = (peer.qemu.pid(), owner.qemu.pid());
    let cpu = |pid| ProcessSample::of(pid).map_err(|e| IdleError::Setup(e.to_string()));
    let (p0, o0, t0) = (cpu(pp)?, cpu(op)?, Instant::now());
    let until = t0 + sample;
    while Instant::now() < until {
        // Keep the channel served (acks), as the shim does between handoffs.
        let _ = ctl.poll();
        drain_console(&mut peer);
        drain_console(&mut owner);
        std::thread::sleep(Duration::from_millis(20));
    }
    let (p1, o1, secs) = (cpu(pp)?, cpu(op)?, t0.elapsed().as_secs_f64());
    let hz = clock_ticks_per_sec();
    let pct = |a: &ProcessSample, b: &ProcessSample| {
        let us = b.cpu_since(a).map_or(0.0, |(us, _)| us);
        super::stats::round(us / 1e6 / secs * 100.0, 2)
    };
    let r = IdleResult {
        peer_waiting_for_ring_percent: pct(&p0, &p1),
        owner_waiting_for_disk_percent: pct(&o0, &o1),
        seconds: super::stats::round(secs, 2),
        clk_tck: hz,
        method: format!(
            "utime+stime of the QEMU process (all threads; crate::cputime: the threads' schedstat \
             ns, or /proc/<pid>/stat at {hz} ticks/s when a thread exited) over {secs:.1} s, \
             {SETTLE:?} after the guest began to wait"
        ),
    };
    drop(ctl);
    drop(peer);
    drop(owner);
    drop(listener);
    Ok(r)
}
