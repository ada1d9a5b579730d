//! The report of one `hypervisor-shim run`.

use std::fmt;
use std::path::Path;

use serde::Serialize;

use super::{DiskVerification, GuestExit, PortStatsReport, ms, opt};

/// One QMP event seen during the run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EventRecord {
    /// Event name.
    pub name: String,
    /// Milliseconds since QEMU was spawned, by the shim's clock when it read the event.
    pub at_ms: f64,
    /// Event data.
    pub data: serde_json::Value,
}

/// The report of one `hypervisor-shim run`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunReport {
    /// `direct` (disk present at boot) or `hotplug` (disk hot-added after boot).
    pub scenario: String,
    /// Everything went right: the guest succeeded and the disk verified (or verification was not
    /// applicable), with no lost or stale write.
    pub ok: bool,
    /// Why `ok` is false (empty when ok).
    pub failures: Vec<String>,
    /// `kvm` or `tcg`.
    pub accel: String,
    /// Why that accelerator was chosen.
    pub accel_reason: String,
    /// QEMU's version from QMP `query-version` (null when QMP never answered).
    pub qemu_version: Option<String>,
    /// The QEMU command line.
    pub qemu_command: String,
    /// `file` or `null`.
    pub backend: String,
    /// VM id.
    pub vm: u32,
    /// Distinct blocks written.
    pub blocks: u64,
    /// Passes over the blocks.
    pub passes: u32,
    /// Queue depth.
    pub qd: u16,
    /// Schedule seed.
    pub seed: u64,
    /// First LBA.
    pub first_lba: u64,
    /// Disk size in bytes.
    pub disk_bytes: u64,
    /// Writes in the schedule (`blocks * passes`).
    pub writes_total: u64,
    /// Guest's figure: writes submitted.
    pub writes_submitted: Option<u64>,
    /// Writes acknowledged: host-computed from the schedule and the guest's failed-write list.
    pub writes_acked: Option<u64>,
    /// Guest's figure: writes that failed.
    pub write_errors: Option<u64>,
    /// The host's check of the image (`verified` … `verification_problems` in the JSON).
    #[serde(flatten)]
    pub disk: DiskVerification,
    /// Guest's figure: blocks it read back and found correct.
    pub reads_verified: Option<u64>,
    /// Guest's figure: blocks it read back and found wrong.
    pub read_mismatches: Option<u64>,
    /// How the guest ended.
    pub guest_exit: GuestExit,
    /// Details on `guest_exit`.
    pub guest_exit_reason: String,
    /// QEMU's exit status (null when killed by a signal).
    pub qemu_exit_code: Option<i32>,
    /// The message of `BATON panic`, if the guest panicked.
    pub guest_panic_message: Option<String>,
    /// Why the guest's `BATON result` line was rejected, if it was.
    pub guest_report_error: Option<String>,
    /// QEMU spawn → `BATON ready`, in ms.
    pub ready_ms: Option<f64>,
    /// QEMU spawn → `BATON first-io` (the first request submitted to the device), in ms.
    pub boot_ms: Option<f64>,
    /// QEMU spawn → hot-added disk's `device_add` returned, in ms (hotplug scenario).
    pub hotplug_ms: Option<f64>,
    /// Guest's figure: completed writes per second.
    pub iops: Option<u64>,
    /// Guest's figure: first submission → last completion, in µs.
    pub guest_elapsed_us: Option<u64>,
    /// Wall time from QEMU spawn to QEMU exit, in ms.
    pub elapsed_ms: f64,
    /// Guest's figure: requests through port 1 (the device).
    pub port1_requests: Option<u64>,
    /// Guest's figure: requests through port 2 (the ring).
    pub port2_requests: Option<u64>,
    /// Guest's figure: requests held at port 2 while port 1 drained (0 without a handoff).
    pub held_at_switch: Option<u64>,
    /// Guest's figure: longest gap between two completions, in µs.
    pub max_gap_us: Option<u64>,
    /// Guest's figure: completions for requests that were not outstanding (must be 0).
    pub duplicates: Option<u64>,
    /// Guest's figures: per-port latency (`BATON port-stats` lines).
    pub port_stats: Vec<PortStatsReport>,
    /// QMP events in arrival order.
    pub qmp_events: Vec<EventRecord>,
    /// Protocol oddities the guest showed (unexpected or repeated `BATON` lines).
    pub notes: Vec<String>,
    /// The timestamped serial log.
    pub serial_log: String,
    /// The run's working directory.
    pub workdir: String,
    /// Whether the working directory outlives the run.
    pub artifacts_kept: bool,
}

impl RunReport {
    /// Writes the report as pretty JSON to `path` (creating parent directories).
    pub fn write_json(&self, path: &Path) -> std::io::Result<()> {
        super::write_json(self, path)
    }
}

impl fmt::Display for RunReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verdict = if self.ok { "OK" } else { "FAILED" };
        writeln!(
            f,
            "baton run [{}]: {verdict}  (accel {}, QEMU {}, backend {})",
            self.scenario,
            self.accel,
            opt(&self.qemu_version),
            self.backend
        )?;
        writeln!(f, "  accel      {}: {}", self.accel, self.accel_reason)?;
        writeln!(
            f,
            "  workload   vm {} blocks {} passes {} qd {} seed {} first_lba {}",
            self.vm, self.blocks, self.passes, self.qd, self.seed, self.first_lba
        )?;
        writeln!(
            f,
            "  guest      exit {} ({}); writes submitted {} / {}, acked {}, errors {}; read-back ok {} bad {}",
            self.guest_exit.as_str(),
            self.guest_exit_reason,
            opt(&self.writes_submitted),
            self.writes_total,
            opt(&self.writes_acked),
            opt(&self.write_errors),
            opt(&self.reads_verified),
            opt(&self.read_mismatches),
        )?;
        if let Some(p) = &self.guest_panic_message {
            writeln!(f, "  panic      {p}")?;
        }
        self.disk.fmt_lines(f, self.writes_acked)?;
        writeln!(
            f,
            "  timing     ready {}, first I/O {}, total {:.1} ms; guest IOPS {}",
            ms(self.ready_ms),
            ms(self.boot_ms),
            self.elapsed_ms,
            opt(&self.iops)
        )?;
        if let Some(h) = self.hotplug_ms {
            writeln!(f, "  hotplug    disk added at {h:.1} ms")?;
        }
        self.disk.fmt_problems(f)?;
        for n in &self.notes {
            writeln!(f, "  note       {n}")?;
        }
        for why in &self.failures {
            writeln!(f, "  failure    {why}")?;
        }
        write!(f, "  serial log {}", self.serial_log)?;
        if !self.artifacts_kept {
            write!(
                f,
                " (removed with the temporary workdir; use --keep or --workdir)"
            )?;
        }
        Ok(())
    }
}
