//! The shim's run report: JSON for machines (`--report FILE`), a short summary for people.
//!
//! Every figure comes from the shim's own clock or its own verification, except the fields marked
//! "guest's figure", which are copied from the guest's `BATON result` line.

use std::fmt;
use std::path::Path;

use serde::Serialize;

/// What a guest's own report says went wrong: writes not all submitted, failed writes, duplicate
/// completions, read-back mismatches. `who` names the guest in the messages ("guest", "owner").
pub(crate) fn guest_report_failures(
    r: &baton_core::report::GuestReport,
    writes_total: u64,
    who: &str,
) -> Vec<String> {
    let mut failures = Vec::new();
    if r.writes_submitted != writes_total {
        failures.push(format!(
            "the {who} submitted {} of {writes_total} writes",
            r.writes_submitted
        ));
    }
    if r.write_errors > 0 {
        failures.push(format!("{} writes failed in the {who}", r.write_errors));
    }
    if r.duplicates > 0 {
        failures.push(format!(
            "the {who} saw {} duplicate completions",
            r.duplicates
        ));
    }
    if r.read_mismatches > 0 {
        failures.push(format!(
            "the {who}'s read-back found {} wrong blocks",
            r.read_mismatches
        ));
    }
    failures
}

/// How the guest (and its QEMU) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum GuestExit {
    /// The guest exited through isa-debug-exit with the success value (QEMU status 33).
    Success,
    /// The guest exited through isa-debug-exit with the failure value (QEMU status 35).
    Failure,
    /// The guest printed `BATON panic` and exited with failure.
    Panic,
    /// The hard timeout expired; QEMU was killed.
    Timeout,
    /// QEMU exited with another status, was killed by a signal, or hung after closing its output.
    QemuDied,
    /// The shim gave up on the run (QMP or hotplug failure) and killed QEMU.
    ShimError,
}

impl GuestExit {
    /// The JSON spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Failure => "failure",
            Self::Panic => "panic",
            Self::Timeout => "timeout",
            Self::QemuDied => "qemu-died",
            Self::ShimError => "shim-error",
        }
    }
}

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
    /// Whether the shim verified the disk image.
    pub verified: bool,
    /// What verification did, or why it was skipped.
    pub verification: String,
    /// Acknowledged writes found on disk (null when not verified).
    pub writes_verified: Option<u64>,
    /// Acknowledged writes missing from disk (null when not verified).
    pub lost: Option<u64>,
    /// LBAs not holding their last acknowledged write (null when not verified).
    pub stale: Option<u64>,
    /// LBAs holding a newer, submitted but unacknowledged write (legal).
    pub newer_unacked: Option<u64>,
    /// Non-zero blocks that are no valid write of this run (null when not verified).
    pub corrupt_blocks: Option<u64>,
    /// The first few verification problems.
    pub verification_problems: Vec<String>,
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
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let mut text = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        text.push('\n');
        std::fs::write(path, text)
    }
}

fn opt<T: fmt::Display>(v: &Option<T>) -> String {
    v.as_ref()
        .map_or_else(|| "-".to_owned(), ToString::to_string)
}

fn ms(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v:.1} ms"))
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
        if self.verified {
            writeln!(
                f,
                "  disk       verified {} of {} acked writes; lost {}, stale {}, corrupt blocks {}",
                opt(&self.writes_verified),
                opt(&self.writes_acked),
                opt(&self.lost),
                opt(&self.stale),
                opt(&self.corrupt_blocks),
            )?;
        } else {
            writeln!(f, "  disk       not verified: {}", self.verification)?;
        }
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
        for p in &self.verification_problems {
            writeln!(f, "  problem    {p}")?;
        }
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

/// One port's latency figures, from the guest's `BATON port-stats` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PortStatsReport {
    /// 1 (the device) or 2 (the ring, through the peer).
    pub port: u8,
    /// Requests completed on the port.
    pub completions: u64,
    /// Completions per second between its first and last completion.
    pub iops: u64,
    /// Median latency, submission to completion, in µs.
    pub p50_us: u64,
    /// 99th percentile latency, in µs.
    pub p99_us: u64,
    /// Largest latency, in µs.
    pub max_us: u64,
}

impl From<baton_core::stats::PortStats> for PortStatsReport {
    fn from(s: baton_core::stats::PortStats) -> Self {
        Self {
            port: s.port,
            completions: s.completions,
            iops: s.iops(),
            p50_us: s.p50_us,
            p99_us: s.p99_us,
            max_us: s.max_us,
        }
    }
}

/// Completions per time bin of the guest's workload (its `BATON timeline` lines, reassembled):
/// the data of the handoff plot. Bin `i` covers guest time `start_us + i * bin_us` on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CompletionTimeline {
    /// Guest time (µs since boot) of bin 0: the first submission.
    pub start_us: u64,
    /// Bin width in µs.
    pub bin_us: u64,
    /// Completions per bin.
    pub counts: Vec<u16>,
}

impl CompletionTimeline {
    /// Most bins kept (a day of 1 ms bins would be far more than any run).
    pub const MAX_BINS: u64 = 1 << 20;

    /// Adds one `BATON timeline` line. Lines must agree on `start_us` and `bin_us`; bins beyond
    /// [`Self::MAX_BINS`] are refused.
    pub fn add_line(this: &mut Option<Self>, line: &str) -> Result<(), String> {
        let l = baton_core::timeline::parse_line(line).map_err(|e| e.to_string())?;
        let t = this.get_or_insert_with(|| Self {
            start_us: l.start_us,
            bin_us: l.bin_us,
            counts: Vec::new(),
        });
        if (t.start_us, t.bin_us) != (l.start_us, l.bin_us) {
            return Err("timeline lines disagree on start_us/bin_us".into());
        }
        let end = l
            .from
            .checked_add(l.len as u64)
            .filter(|&e| e <= Self::MAX_BINS)
            .ok_or("timeline bins out of range")?;
        let (from, end) = (l.from as usize, end as usize);
        if t.counts.len() < end {
            t.counts.resize(end, 0);
        }
        if let Some(dst) = t.counts.get_mut(from..end) {
            dst.copy_from_slice(l.counts());
        }
        Ok(())
    }

    /// The longest run of empty bins, in ms (the blackout at bin resolution).
    pub fn longest_gap_ms(&self) -> f64 {
        let mut best = 0u64;
        let mut run = 0u64;
        for &c in &self.counts {
            run = if c == 0 { run + 1 } else { 0 };
            best = best.max(run);
        }
        (best * self.bin_us) as f64 / 1000.0
    }
}

/// A QMP event of one of the handoff's QEMUs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VmEvent {
    /// Which QEMU: `owner`, `peer`, `destination` (live) or `restored` (save).
    pub vm: String,
    /// Event name.
    pub name: String,
    /// Milliseconds since the scenario started, by the shim's clock when it read the event.
    pub at_ms: f64,
    /// Event data.
    pub data: serde_json::Value,
}

/// One line of the handoff's progress display.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TimelineEntry {
    /// Milliseconds since the scenario started.
    pub at_ms: f64,
    /// What happened.
    pub what: String,
}

/// How the handoff was directed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SwitchReport {
    /// `operator` (`--switch-after-ms`, or the default), `seed` (a point drawn from `--seed`) or
    /// `owner-request` (`--migrate-at`: the owner sent `migrate-request`).
    pub trigger: String,
    /// For `operator` and `seed`: the switch was directed this long after the owner's first I/O.
    pub after_first_io_ms: Option<u64>,
    /// For `owner-request`: the owner asked after submitting this many writes.
    pub migrate_at: Option<u64>,
    /// When the switch was directed (`redirect` sent), ms since the scenario started.
    pub directed_at_ms: Option<f64>,
}

/// Wall times of the handoff's phases, in ms, by the shim's clock (null when not reached).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Phases {
    /// `redirect` sent → the owner's `drained` arrived.
    pub directed_to_drained_ms: Option<f64>,
    /// `drained` → QMP `DEVICE_DELETED` for the disk (device level) arrived.
    pub drained_to_device_deleted_ms: Option<f64>,
    /// `DEVICE_DELETED` → the peer's `peer-ready` (disk moved, initialised, ring attached).
    pub device_deleted_to_attached_ms: Option<f64>,
    /// `peer-ready` → the first forwarded completion (the ring's completion tail moved).
    pub attached_to_first_forwarded_ms: Option<f64>,
    /// How the first forwarded completion was detected.
    pub first_forwarded_detected_by: String,
    /// `redirect` sent → the owner's `forwarding` arrived: the whole handoff.
    pub handoff_ms: Option<f64>,
    /// `forwarding` → the migration (or save) command was issued: destination set-up.
    pub migration_setup_ms: Option<f64>,
    /// Live: `migrate` issued → the destination runs. Save: `migrate` to the file issued → the
    /// restored QEMU runs (save + quit + restore).
    pub migration_ms: Option<f64>,
    /// Save mode: `migrate` to the file issued → `completed`.
    pub save_ms: Option<f64>,
    /// Save mode: the restore QEMU was started → it runs the guest.
    pub restore_ms: Option<f64>,
}

/// The report of one `hypervisor-shim migrate`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MigrateReport {
    /// Always `migrate`.
    pub scenario: String,
    /// `live` or `save`.
    pub mode: String,
    /// Nothing lost, stale or duplicated, the owner succeeded and finished at the destination,
    /// and the migration succeeded.
    pub ok: bool,
    /// Why `ok` is false (empty when ok).
    pub failures: Vec<String>,
    /// `kvm` or `tcg`.
    pub accel: String,
    /// Why that accelerator was chosen.
    pub accel_reason: String,
    /// QEMU's version (from the owner's QEMU).
    pub qemu_version: Option<String>,
    /// The QEMU command lines, by role.
    pub qemu_commands: std::collections::BTreeMap<String, String>,
    /// Always `file`: a raw image, verified on the host.
    pub backend: String,
    /// The owner's VM id.
    pub vm: u32,
    /// The peer's VM id.
    pub peer_vm: u32,
    /// Distinct blocks written.
    pub blocks: u64,
    /// Passes over the blocks.
    pub passes: u32,
    /// Queue depth.
    pub qd: u16,
    /// Schedule seed.
    pub seed: u64,
    /// Disk size in bytes.
    pub disk_bytes: u64,
    /// Writes in the schedule (`blocks * passes`).
    pub writes_total: u64,
    /// How and when the handoff was directed.
    pub switch: SwitchReport,
    /// `none` or `bad-completion` (the peer's fault hook).
    pub peer_fault: String,
    /// The owner detected a peer fault (`BATON peer-fault`).
    pub peer_fault_detected: bool,
    /// What the owner said about it.
    pub peer_fault_message: Option<String>,
    /// Requests held at port 2 while port 1 drained (guest's `held_at_switch`, else `drained`).
    pub requests_queued_at_switch: Option<u64>,
    /// Guest's figure: requests forwarded over the ring (port 2).
    pub requests_forwarded: Option<u64>,
    /// Guest's figure: requests completed through port 1 (the device, before the handoff).
    pub port1_requests: Option<u64>,
    /// Guest's figures: per-port latency (`BATON port-stats` lines): port 1 direct, port 2
    /// forwarded through the peer.
    pub port_stats: Vec<PortStatsReport>,
    /// Guest's figures: completions per ms of the owner's workload (`BATON timeline` lines), for
    /// the handoff plot.
    pub completion_timeline: Option<CompletionTimeline>,
    /// Completions for requests that were not outstanding (the guest's count; must be 0).
    pub duplicated: Option<u64>,
    /// Guest's figure: the longest gap between two completions its workload saw, in ms.
    pub blackout_ms: Option<f64>,
    /// The source's final `query-migrate` status (`completed`, `failed`, ...).
    pub migration_status: Option<String>,
    /// The destination's (restored QEMU's) `query-status` after the migration.
    pub destination_status: Option<String>,
    /// QEMU's `downtime` of the migration (save: of the save), in ms.
    pub migration_downtime_ms: Option<u64>,
    /// QEMU's `total-time` of the migration (save: of the save), in ms.
    pub migration_total_ms: Option<u64>,
    /// Why the migration failed, if it did.
    pub migration_error: Option<String>,
    /// Whether the source was resumed (`cont`) after a failed migration.
    pub source_resumed: bool,
    /// Phase wall times.
    pub phases: Phases,
    /// Guest control messages rejected because they arrived in the wrong state or from the wrong
    /// guest (must be 0 in a normal run).
    pub control_rejected: u64,
    /// The first rejections, described.
    pub control_rejections: Vec<String>,
    /// Control channel counters, by role.
    pub control: std::collections::BTreeMap<String, crate::channel::ChannelStats>,
    /// Guest's figure: writes submitted.
    pub writes_submitted: Option<u64>,
    /// Writes acknowledged: host-computed from the schedule and the guest's failed-write list.
    pub writes_acked: Option<u64>,
    /// Guest's figure: writes that failed.
    pub write_errors: Option<u64>,
    /// Whether the shim verified the disk image.
    pub verified: bool,
    /// What verification did, or why it was skipped.
    pub verification: String,
    /// Acknowledged writes found on disk (null when not verified).
    pub writes_verified: Option<u64>,
    /// Acknowledged writes missing from disk (null when not verified).
    pub lost: Option<u64>,
    /// LBAs not holding their last acknowledged write (null when not verified).
    pub stale: Option<u64>,
    /// LBAs holding a newer, submitted but unacknowledged write (legal).
    pub newer_unacked: Option<u64>,
    /// Non-zero blocks that are no valid write of this run (null when not verified).
    pub corrupt_blocks: Option<u64>,
    /// The first few verification problems.
    pub verification_problems: Vec<String>,
    /// Guest's figure: blocks it read back (through the peer) and found correct.
    pub reads_verified: Option<u64>,
    /// Guest's figure: blocks it read back and found wrong.
    pub read_mismatches: Option<u64>,
    /// How the owner ended.
    pub guest_exit: GuestExit,
    /// Details on `guest_exit`.
    pub guest_exit_reason: String,
    /// Where the owner ended: `destination`, `restored`, `source` or null (still running when the
    /// shim gave up).
    pub guest_exit_where: Option<String>,
    /// The owner finished its workload at the destination (or the restored QEMU).
    pub owner_finished_at_destination: bool,
    /// The owner's QEMU exit status.
    pub qemu_exit_code: Option<i32>,
    /// The message of `BATON panic`, if the owner panicked.
    pub guest_panic_message: Option<String>,
    /// Why the owner's `BATON result` line was rejected, if it was.
    pub guest_report_error: Option<String>,
    /// Guest's figure: completed writes per second.
    pub iops: Option<u64>,
    /// Guest's figure: first submission → last completion, in µs.
    pub guest_elapsed_us: Option<u64>,
    /// Wall time of the whole scenario, in ms.
    pub elapsed_ms: f64,
    /// The progress display, timestamped.
    pub timeline: Vec<TimelineEntry>,
    /// QMP events of all QEMUs.
    pub qmp_events: Vec<VmEvent>,
    /// Oddities worth a look (unexpected guest lines, control frames, ...).
    pub notes: Vec<String>,
    /// The timestamped serial logs, by QEMU.
    pub serial_logs: std::collections::BTreeMap<String, String>,
    /// The scenario's working directory.
    pub workdir: String,
    /// Whether the working directory outlives the run.
    pub artifacts_kept: bool,
}

impl MigrateReport {
    /// Writes the report as pretty JSON to `path` (creating parent directories).
    pub fn write_json(&self, path: &Path) -> std::io::Result<()> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let mut text = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        text.push('\n');
        std::fs::write(path, text)
    }
}

fn ms_f(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v:.1} ms"))
}

impl fmt::Display for MigrateReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verdict = if self.ok { "OK" } else { "FAILED" };
        writeln!(
            f,
            "baton migrate [{}]: {verdict}  (accel {}, QEMU {})",
            self.mode,
            self.accel,
            opt(&self.qemu_version)
        )?;
        writeln!(
            f,
            "  workload   blocks {} passes {} qd {} seed {}; switch: {}{}",
            self.blocks,
            self.passes,
            self.qd,
            self.seed,
            self.switch.trigger,
            match (self.switch.after_first_io_ms, self.switch.migrate_at) {
                (Some(ms), _) => format!(" {ms} ms after the first I/O"),
                (None, Some(n)) => format!(" after {n} writes"),
                _ => String::new(),
            }
        )?;
        writeln!(
            f,
            "  handoff    held at switch {}, forwarded {}, duplicated {}, blackout {}, rejected control messages {}",
            opt(&self.requests_queued_at_switch),
            opt(&self.requests_forwarded),
            opt(&self.duplicated),
            ms_f(self.blackout_ms),
            self.control_rejected
        )?;
        let p = &self.phases;
        writeln!(
            f,
            "  phases     directed→drained {}, drained→deleted {}, deleted→attached {}, attached→first forwarded {}, handoff {}",
            ms_f(p.directed_to_drained_ms),
            ms_f(p.drained_to_device_deleted_ms),
            ms_f(p.device_deleted_to_attached_ms),
            ms_f(p.attached_to_first_forwarded_ms),
            ms_f(p.handoff_ms),
        )?;
        writeln!(
            f,
            "  migration  {} (destination {}); downtime {} ms, total {} ms; wall {}{}",
            opt(&self.migration_status),
            opt(&self.destination_status),
            opt(&self.migration_downtime_ms),
            opt(&self.migration_total_ms),
            ms_f(p.migration_ms),
            match (p.save_ms, p.restore_ms) {
                (Some(s), Some(r)) => format!(" (save {s:.1} ms, restore {r:.1} ms)"),
                (Some(s), None) => format!(" (save {s:.1} ms)"),
                _ => String::new(),
            }
        )?;
        writeln!(
            f,
            "  owner      exit {} at {} ({}); writes submitted {} / {}, acked {}, errors {}; read-back ok {} bad {}",
            self.guest_exit.as_str(),
            opt(&self.guest_exit_where),
            self.guest_exit_reason,
            opt(&self.writes_submitted),
            self.writes_total,
            opt(&self.writes_acked),
            opt(&self.write_errors),
            opt(&self.reads_verified),
            opt(&self.read_mismatches),
        )?;
        for ps in &self.port_stats {
            writeln!(
                f,
                "  port {}     {} completions, {} IOPS, latency p50 {} µs p99 {} µs max {} µs",
                ps.port, ps.completions, ps.iops, ps.p50_us, ps.p99_us, ps.max_us
            )?;
        }
        if self.peer_fault != "none" || self.peer_fault_detected {
            writeln!(
                f,
                "  peer fault {} injected; detected by the owner: {}{}",
                self.peer_fault,
                self.peer_fault_detected,
                self.peer_fault_message
                    .as_ref()
                    .map_or_else(String::new, |m| format!(" ({m})"))
            )?;
        }
        if self.verified {
            writeln!(
                f,
                "  disk       verified {} of {} acked writes; lost {}, stale {}, corrupt blocks {}",
                opt(&self.writes_verified),
                opt(&self.writes_acked),
                opt(&self.lost),
                opt(&self.stale),
                opt(&self.corrupt_blocks),
            )?;
        } else {
            writeln!(f, "  disk       not verified: {}", self.verification)?;
        }
        for p in &self.verification_problems {
            writeln!(f, "  problem    {p}")?;
        }
        for n in &self.notes {
            writeln!(f, "  note       {n}")?;
        }
        for why in &self.failures {
            writeln!(f, "  failure    {why}")?;
        }
        write!(f, "  workdir    {}", self.workdir)?;
        if !self.artifacts_kept {
            write!(f, " (removed; use --keep or --workdir)")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeline_lines_are_reassembled_and_bounded() {
        let mut t = None;
        CompletionTimeline::add_line(
            &mut t,
            "BATON timeline start_us=5 bin_us=1000 from=2 counts=4,0*3,2",
        )
        .unwrap();
        CompletionTimeline::add_line(
            &mut t,
            "BATON timeline start_us=5 bin_us=1000 from=0 counts=1,1",
        )
        .unwrap();
        let tl = t.clone().unwrap();
        assert_eq!(tl.counts, [1, 1, 4, 0, 0, 0, 2]);
        assert_eq!(tl.longest_gap_ms(), 3.0);
        assert!(
            CompletionTimeline::add_line(
                &mut t,
                "BATON timeline start_us=6 bin_us=1000 from=0 counts=1"
            )
            .is_err()
        );
        assert!(
            CompletionTimeline::add_line(
                &mut t,
                "BATON timeline start_us=5 bin_us=1000 from=18446744073709551615 counts=1"
            )
            .is_err()
        );
        assert!(CompletionTimeline::add_line(&mut t, "BATON timeline garbage").is_err());
        assert_eq!(t.unwrap().counts.len(), 7);
    }
}
