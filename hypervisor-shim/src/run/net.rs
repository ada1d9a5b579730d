//! `hypervisor-shim run --device net` (issue 11, first slice): one owner guest with a virtio-net
//! NIC and no disk; the shim serves the NIC's `-netdev stream` backend ([`crate::nic`]). The
//! guest sends `frames` numbered frames and receives as many from the host; each end checks the
//! other's: every number once and in order. The run is ok when both directions are complete
//! with nothing lost, duplicated, reordered or damaged, and the guest exited with success.

use std::path::PathBuf;
use std::time::Instant;

use baton_core::cmdline::{DeviceClass, GuestConfig, Role};
use baton_core::console::NetResultLine;
use serde::Serialize;

use super::RunConfig;
use super::session::Session;
use crate::nic::{HostEnd, HostEndFacts};
use crate::qemu::NicSpec;
use crate::report::GuestExit;
use crate::setup::{self, Binaries, SetupError, Workdir};
use crate::vm::classify;

/// The report of one `run --device net`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NetRunReport {
    /// `net-direct`.
    pub scenario: String,
    /// Both directions complete and clean, the guest exited with success.
    pub ok: bool,
    /// Why `ok` is false.
    pub failures: Vec<String>,
    /// `kvm` or `tcg`.
    pub accel: String,
    /// Why that accelerator.
    pub accel_reason: String,
    /// QEMU's version from QMP.
    pub qemu_version: Option<String>,
    /// The QEMU command line.
    pub qemu_command: String,
    /// Numbered frames each way.
    pub frames: u64,
    /// Transmits the guest keeps outstanding.
    pub window: u16,
    /// Seed of the frames' sizes.
    pub seed: u64,
    /// Guest's figure: its frames whose transmission completed.
    pub frames_tx_sent: Option<u64>,
    /// Host's figure: distinct frames of the guest's received (numbers reached, less those
    /// skipped over).
    pub frames_tx_received: u64,
    /// Host's figure: frames written to the guest's NIC backend.
    pub frames_rx_sent: u64,
    /// Guest's figure: distinct frames of the host's received (as for `frames_tx_received`).
    pub frames_rx_received: Option<u64>,
    /// Frames that never arrived (either direction; numbers skipped or never reached).
    pub frames_lost: u64,
    /// Frames that arrived more than once.
    pub frames_duplicated: u64,
    /// Frames that arrived ahead of their turn.
    pub frames_reordered: u64,
    /// Frames that did not check (CRC, fill, header).
    pub frames_bad: u64,
    /// Guest's figure: first frame out → last frame in, µs.
    pub guest_elapsed_us: Option<u64>,
    /// Frames both ways per second of `guest_elapsed_us`.
    pub frames_per_s: Option<u64>,
    /// What the host end saw.
    pub host_end: HostEndFacts,
    /// How the guest ended.
    pub guest_exit: GuestExit,
    /// Details on `guest_exit`.
    pub guest_exit_reason: String,
    /// QEMU's exit status.
    pub qemu_exit_code: Option<i32>,
    /// The guest's panic message.
    pub guest_panic_message: Option<String>,
    /// QEMU spawn → `BATON first-io` (receive buffers posted), ms.
    pub boot_ms: Option<f64>,
    /// QEMU spawn → exit, ms.
    pub elapsed_ms: f64,
    /// Protocol oddities.
    pub notes: Vec<String>,
    /// The serial log.
    pub serial_log: String,
    /// The working directory.
    pub workdir: String,
    /// Whether it outlives the run.
    pub artifacts_kept: bool,
}

impl NetRunReport {
    /// Writes the report as pretty JSON to `path`.
    pub fn write_json(&self, path: &std::path::Path) -> std::io::Result<()> {
        crate::report::write_json(self, path)
    }
}

impl std::fmt::Display for NetRunReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let verdict = if self.ok { "OK" } else { "FAILED" };
        writeln!(
            f,
            "baton run [{}]: {verdict}  (accel {}, QEMU {})",
            self.scenario,
            self.accel,
            self.qemu_version.as_deref().unwrap_or("?")
        )?;
        let opt = |v: Option<u64>| v.map_or_else(|| "-".to_owned(), |v| v.to_string());
        writeln!(
            f,
            "  frames     {} each way, window {}: TX sent {} received {}; RX sent {} received {}",
            self.frames,
            self.window,
            opt(self.frames_tx_sent),
            self.frames_tx_received,
            self.frames_rx_sent,
            opt(self.frames_rx_received)
        )?;
        writeln!(
            f,
            "  checks     lost {} duplicated {} reordered {} bad {}; {} frames/s",
            self.frames_lost,
            self.frames_duplicated,
            self.frames_reordered,
            self.frames_bad,
            opt(self.frames_per_s)
        )?;
        writeln!(f, "  guest      {}", self.guest_exit_reason)?;
        for x in &self.failures {
            writeln!(f, "  FAILURE    {x}")?;
        }
        write!(f, "  workdir    {}", self.workdir)
    }
}

/// A finished net run: its report and its working directory.
#[derive(Debug)]
pub struct NetRunOutcome {
    /// The report.
    pub report: NetRunReport,
    /// Owns the working directory.
    pub workdir: Workdir,
}

/// Runs the NIC scenario. Guest failures end up in the report; only set-up problems are errors.
pub fn run(cfg: &RunConfig) -> Result<NetRunOutcome, SetupError> {
    if cfg.hotplug_disk || cfg.shared_storage {
        return Err(SetupError::Config(
            "--hotplug-disk and --shared-storage are disk options: a NIC run has no disk".into(),
        ));
    }
    let bins = Binaries::locate(&cfg.qemu, cfg.kernel.as_deref())?;
    let (accel, accel_reason) = cfg.accel.resolve()?;
    let guest = GuestConfig {
        role: Role::Owner,
        vm: cfg.vm,
        qd: cfg.qd,
        seed: cfg.seed,
        panic: cfg.guest_panic,
        device: DeviceClass::Net,
        frames: cfg.frames,
        ..GuestConfig::default()
    };
    let append = guest.to_string();
    GuestConfig::parse(&append).map_err(|e| SetupError::Config(e.to_string()))?;
    let workdir = Workdir::create(cfg.workdir.as_deref(), cfg.keep)?;
    let dir = workdir.path().to_path_buf();
    let socket: PathBuf = dir.join("nic.sock");
    let host = HostEnd::start(&socket, cfg.frames, cfg.seed, cfg.timeout, cfg.nic_skip).map_err(
        |source| SetupError::Workdir {
            path: socket.clone(),
            source,
        },
    )?;
    let spec = crate::qemu::MachineSpec {
        nic: Some(NicSpec { socket }),
        ..bins.machine(accel, append, setup::qmp_socket(&dir, None))
    };
    let mut session = Session::start(&spec, &dir, cfg.timeout)?;
    let ending = session.drive(None);
    let host = host.finish();
    let (guest_exit, reason, qemu_exit_code) =
        classify(&ending, session.lines.panic.as_ref(), cfg.timeout);
    let g = session.lines.net_result;
    let counts = Counts::of(cfg.frames, g.as_ref(), &host);
    let mut failures = counts.failures(cfg.frames, g.as_ref(), &host);
    if guest_exit != GuestExit::Success {
        failures.insert(0, reason.clone());
    }
    let ended = session.ended_at.unwrap_or_else(Instant::now);
    let elapsed_us = g.map(|r| r.elapsed_us);
    let report = NetRunReport {
        scenario: "net-direct".into(),
        ok: failures.is_empty(),
        failures,
        accel: spec.accel.as_str().into(),
        accel_reason,
        qemu_version: session.qemu_version.take(),
        qemu_command: spec.display(),
        frames: cfg.frames,
        window: cfg.qd,
        seed: cfg.seed,
        frames_tx_sent: g.map(|r| r.tx_sent),
        frames_tx_received: host.tx_next.saturating_sub(host.tx_skipped),
        frames_rx_sent: host.rx_sent,
        // The guest's figures are its word: never trusted to be consistent.
        frames_rx_received: g.map(|r| r.rx_received.saturating_sub(r.rx_skipped)),
        frames_lost: counts.lost,
        frames_duplicated: counts.duplicated,
        frames_reordered: counts.reordered,
        frames_bad: counts.bad,
        guest_elapsed_us: elapsed_us,
        frames_per_s: elapsed_us
            .filter(|&us| us > 0)
            .map(|us| (2 * cfg.frames).saturating_mul(1_000_000) / us),
        host_end: host,
        guest_exit,
        guest_exit_reason: reason,
        qemu_exit_code,
        guest_panic_message: session.lines.panic.take(),
        boot_ms: session.lines.first_io.map(|t| session.ms_since_start(t)),
        elapsed_ms: session.ms_since_start(ended),
        notes: std::mem::take(&mut session.lines.notes),
        serial_log: session.vm.serial_log.display().to_string(),
        workdir: dir.display().to_string(),
        artifacts_kept: workdir.kept(),
    };
    Ok(NetRunOutcome { report, workdir })
}

/// The checks of both directions, summed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Counts {
    lost: u64,
    duplicated: u64,
    reordered: u64,
    bad: u64,
}

impl Counts {
    /// From the guest's line (`None`: it printed none) and the host end's facts. Lost: numbers
    /// skipped over plus those never reached, in each direction.
    fn of(frames: u64, g: Option<&NetResultLine>, h: &HostEndFacts) -> Self {
        // The guest's figures are untrusted numbers: saturating sums only.
        let tx_lost = frames
            .saturating_sub(h.tx_next)
            .saturating_add(h.tx_skipped);
        let rx_lost = g.map_or(0, |g| {
            frames
                .saturating_sub(g.rx_received)
                .saturating_add(g.rx_skipped)
        });
        let guest = |f: fn(&NetResultLine) -> u64| g.map_or(0, f);
        Counts {
            lost: tx_lost.saturating_add(rx_lost),
            duplicated: h.tx_duplicated.saturating_add(guest(|g| g.rx_duplicated)),
            reordered: h.tx_reordered.saturating_add(guest(|g| g.rx_reordered)),
            bad: h.tx_bad.saturating_add(guest(|g| g.rx_bad)),
        }
    }

    fn failures(&self, frames: u64, g: Option<&NetResultLine>, h: &HostEndFacts) -> Vec<String> {
        let mut f = Vec::new();
        match g {
            None => f.push("the guest printed no `BATON net-result` line".into()),
            Some(g) if g.tx_sent != frames => {
                f.push(format!("the guest sent {} of {frames} frames", g.tx_sent));
            }
            Some(_) => {}
        }
        if let Some(e) = &h.error {
            f.push(format!("host end: {e}"));
        }
        for (n, what) in [
            (self.lost, "lost"),
            (self.duplicated, "duplicated"),
            (self.reordered, "reordered"),
            (self.bad, "damaged or malformed"),
        ] {
            if n > 0 {
                f.push(format!("{n} frames {what}"));
            }
        }
        f
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_of_miss_is_a_failure_and_a_clean_run_has_none() {
        let host = HostEndFacts {
            connected: true,
            rx_sent: 10,
            tx_next: 10,
            ..HostEndFacts::default()
        };
        let g = NetResultLine {
            tx_sent: 10,
            rx_received: 10,
            ..NetResultLine::default()
        };
        let c = Counts::of(10, Some(&g), &host);
        assert_eq!(c.failures(10, Some(&g), &host), Vec::<String>::new());
        let short = HostEndFacts {
            tx_next: 8,
            tx_skipped: 1,
            tx_duplicated: 1,
            ..host.clone()
        };
        let c = Counts::of(10, Some(&g), &short);
        assert_eq!((c.lost, c.duplicated), (3, 1));
        let f = c.failures(10, Some(&g), &short);
        assert!(f.iter().any(|x| x == "3 frames lost"), "{f:?}");
        let f = Counts::of(10, None, &host).failures(10, None, &host);
        assert!(f[0].contains("no `BATON net-result`"));
    }
}
