//! The report of one `hypervisor-shim migrate`, and its handoff phases (computed from the
//! handoff's record through the span table of [`crate::steps`]). Its human summary (`Display`)
//! is in `summary.rs`.

use std::path::Path;

use serde::Serialize;

use crate::steps::{self, HandoffRecord, Span};

use super::{CompletionTimeline, DiskVerification, GuestExit, PortStatsReport, TimelineEntry};

/// One cycle: handoff → migration (or save + restore) → failback.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CycleReport {
    /// From 1.
    pub cycle: u32,
    /// `live`, `save` or `none` (a `mixed` run alternates).
    pub mode: String,
    /// Requests held at port 2 when port 1 drained.
    pub requests_held_at_handoff: Option<u32>,
    /// `redirect` sent → the owner's `forwarding`, in ms.
    pub handoff_ms: Option<f64>,
    /// The longest completion gap around the handoff (the owner's `BATON switch` line), in ms.
    pub handoff_blackout_ms: Option<f64>,
    /// The source's final `query-migrate` status.
    pub migration_status: Option<String>,
    /// QEMU's downtime of the migration (save: of the save), in ms.
    pub migration_downtime_ms: Option<u64>,
    /// `migrate` issued → the guest runs again, in ms.
    pub migration_ms: Option<f64>,
    /// Why the migration failed, if it did.
    pub migration_error: Option<String>,
    /// Whether this cycle's failback completed (null: none was directed).
    pub failback_ok: Option<bool>,
}

/// One failback (docs/design.md, "Failback"): the disk back to the owner, the ring closed. Step
/// times in ms by the shim's clock (null when not reached).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FailbackReport {
    /// The cycle, from 1.
    pub cycle: u32,
    /// The owner has its disk behind port 1 again and the ring is closed.
    pub ok: bool,
    /// Requests the owner held while port 2 drained (sent to port 1 first).
    pub requests_held_at_failback: Option<u32>,
    /// The longest completion gap around the failback, in ms (the owner's `BATON switch
    /// kind=failback` line: from `failback` to the first port-1 completion).
    pub blackout_ms: Option<f64>,
    /// `failback` sent → the owner's `drained` (port 2 drained).
    pub directed_to_drained_ms: Option<f64>,
    /// Port 2 drained → the peer's `released` (disk reset and ejected).
    pub drained_to_released_ms: Option<f64>,
    /// Port 2 drained → the peer's QEMU released the drive (`DEVICE_DELETED`, by QEMU's stamp);
    /// it overlaps `drained_to_released_ms` and may end before or after it.
    pub drained_to_drive_released_ms: Option<f64>,
    /// `released` → `disk-attached` sent to the owner (its `device_add` done).
    pub released_to_attached_ms: Option<f64>,
    /// `disk-attached` → the owner's `direct` (disk initialised, port 1 reopened, held requests
    /// sent).
    pub attached_to_port1_open_ms: Option<f64>,
    /// Port 1 reopened → the first port-1 completion seen (the owner's `BATON switch` line).
    pub port1_open_to_first_completion_ms: Option<f64>,
    /// `failback` sent → port 1 reopened.
    pub failback_ms: Option<f64>,
    /// When `failback` was sent, ms since the scenario started.
    pub directed_at_ms: Option<f64>,
    /// No ivshmem device left in either QEMU's `query-pci`, and the /dev/shm file unlinked.
    pub ring_closed: bool,
    /// Why the failback did not complete.
    pub error: Option<String>,
    /// An emergency failback: the peer died; the owner abandoned port 2 and replayed on port 1
    /// what it had forwarded without a completion.
    pub emergency: bool,
}

impl FailbackReport {
    /// The step times of a failback's record (direction peer → owner).
    pub fn times(record: &HandoffRecord) -> [Option<f64>; 7] {
        use steps::Step as S;
        [
            record.ms(S::Directed, S::Drained),
            record.ms(S::Drained, S::Released),
            record.ms(S::Drained, S::DriveReleased),
            record.ms(S::Released, S::Attached),
            record.ms(S::Attached, S::PortOpen),
            record.ms(S::PortOpen, S::FirstCompletion),
            record.ms(S::Directed, S::PortOpen),
        ]
    }
}

/// The owner's migration to another host (`--cross-host`; docs/design.md, "Across hosts"): the
/// first cycle's switchover steps, in ms (`hosts_visited` lists every cycle's host). The blackout spans them all: from `failback` (port 2 starts to
/// drain while the pre-copy runs) to the first port-1 completion at the destination.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CrossHostReport {
    /// The network namespaces that stood for the hosts (A, B, storage); all removed at the end.
    pub namespaces: Vec<String>,
    /// The migration failed and was rolled back: the disk went back to the owner on the source
    /// host.
    pub rolled_back: bool,
    /// `failback` sent → the owner's port 2 drained (new requests held from then on).
    pub port2_drain_ms: Option<f64>,
    /// Port 2 drained → the peer released the disk (`released`), while the migration runs.
    pub peer_release_ms: Option<f64>,
    /// `migrate` issued (at the drain's end) → the destination runs the owner: the pre-copy
    /// and the stop-and-copy.
    pub migration_ms: Option<f64>,
    /// The stop-and-copy, as QEMU measured it (`downtime`).
    pub downtime_ms: Option<u64>,
    /// The destination runs → the owner's port 1 open there (`direct`): the disk's arrival.
    pub disk_arrival_ms: Option<f64>,
    /// The owner's blackout (its longest completion gap from `failback` to the first port-1
    /// completion at the destination).
    pub blackout_ms: Option<f64>,
}

/// A handoff that could not complete and was taken back by the owner (issue 9; docs/design.md,
/// "A handoff taken back"): the report's `take_back`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct TakeBackReport {
    /// Why the handoff could not complete.
    pub why: String,
    /// The handoff's state when it was taken back (`Redirecting`, `Drained` or `Released`).
    pub from_state: String,
    /// The owner had already released the device, so the disk was plugged into its QEMU again.
    pub disk_replugged: bool,
    /// Requests the owner held at port 2, now sent to port 1 (known when the device had left).
    pub held: Option<u32>,
    /// Forwarded requests the owner replays on port 1, before the held ones (known when port 2
    /// had opened early, as the peer's side of the ring turned ready: the owner gives port 2 up
    /// as for a lost peer).
    pub replayed: Option<u32>,
    /// The peer was fenced (SIGKILL) because it might have had the disk.
    pub peer_fenced: bool,
    /// The owner reopened port 1 (`direct`).
    pub ok: bool,
    /// Why the take-back itself failed, if it did.
    pub error: Option<String>,
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
///
/// Each field is one span of [`crate::steps::SPANS`] (its `report` name); the doc names the steps
/// ([`steps::Step`]) it lies between. Field names are kept as reports have always spelt them: "device
/// deleted" is [`Step::DriveReleased`](steps::Step::DriveReleased) and "attached" is [`Step::Ready`](steps::Step::Ready).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Phases {
    /// [`Step::Directed`](steps::Step::Directed) → [`Step::Drained`](steps::Step::Drained): `redirect` sent → the owner's `drained` arrived.
    pub directed_to_drained_ms: Option<f64>,
    /// [`Step::Drained`](steps::Step::Drained) → [`Step::DriveReleased`](steps::Step::DriveReleased): `drained` → QEMU's `DEVICE_DELETED` stamp of
    /// the disk's virtio backend (the drive released).
    pub drained_to_device_deleted_ms: Option<f64>,
    /// [`Step::DriveReleased`](steps::Step::DriveReleased) → [`Step::Ready`](steps::Step::Ready): the drive released → the peer's `peer-ready`
    /// (disk moved, initialised, ring attached).
    pub device_deleted_to_attached_ms: Option<f64>,
    /// [`Step::Ready`](steps::Step::Ready) → [`Step::FirstCompletion`](steps::Step::FirstCompletion): `peer-ready` → the first forwarded completion
    /// (the ring's completion tail moved).
    pub attached_to_first_forwarded_ms: Option<f64>,
    /// How the first forwarded completion was detected.
    pub first_forwarded_detected_by: String,
    /// [`Step::Directed`](steps::Step::Directed) → [`Step::PortOpen`](steps::Step::PortOpen): `redirect` sent → the owner's `forwarding`
    /// arrived: the whole handoff.
    pub handoff_ms: Option<f64>,
    /// [`Step::PortOpen`](steps::Step::PortOpen) → [`Step::MigrationStarted`](steps::Step::MigrationStarted): `forwarding` → the migration (or save)
    /// command was issued: destination set-up.
    pub migration_setup_ms: Option<f64>,
    /// [`Step::MigrationStarted`](steps::Step::MigrationStarted) → [`Step::Migrated`](steps::Step::Migrated). Live: `migrate` issued → the destination
    /// runs. Save: `migrate` to the file issued → the restored QEMU runs (save + quit + restore).
    pub migration_ms: Option<f64>,
    /// Save mode, [`Step::MigrationStarted`](steps::Step::MigrationStarted) → [`Step::Saved`](steps::Step::Saved): `migrate` to the file issued →
    /// `completed`.
    pub save_ms: Option<f64>,
    /// Save mode, [`Step::RestoreStarted`](steps::Step::RestoreStarted) → [`Step::Restored`](steps::Step::Restored): the restore QEMU was started →
    /// it runs the guest.
    pub restore_ms: Option<f64>,
}

impl Phases {
    /// How [`Step::FirstCompletion`](steps::Step::FirstCompletion) is detected.
    pub const FIRST_FORWARDED_DETECTED_BY: &'static str =
        "host read-only mmap of the ring file: the completion tail (CQ_TAIL) moved";

    /// The phases of `record` (all null without one).
    pub fn from_record(record: Option<&HandoffRecord>) -> Self {
        let ms = |s: &Span| record.and_then(|r| r.span_ms(s));
        Self {
            directed_to_drained_ms: ms(&steps::DIRECTED_TO_DRAINED),
            drained_to_device_deleted_ms: ms(&steps::DRAINED_TO_DRIVE_RELEASED),
            device_deleted_to_attached_ms: ms(&steps::DRIVE_RELEASED_TO_READY),
            attached_to_first_forwarded_ms: ms(&steps::READY_TO_FIRST_COMPLETION),
            first_forwarded_detected_by: Self::FIRST_FORWARDED_DETECTED_BY.into(),
            handoff_ms: ms(&steps::HANDOFF),
            migration_setup_ms: ms(&steps::MIGRATION_SETUP),
            migration_ms: ms(&steps::MIGRATION),
            save_ms: ms(&steps::SAVE),
            restore_ms: ms(&steps::RESTORE),
        }
    }
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
    /// Phase wall times (the first cycle's handoff).
    pub phases: Phases,
    /// Peers whose QEMU exited while the owner forwarded through them (issue 9).
    pub peer_failures: u32,
    /// Forwarded requests without a completion that the owner replayed on port 1 after a peer
    /// died (in forward order, before anything newer).
    pub requests_replayed: u64,
    /// How each peer failure was handled.
    pub recovery: Vec<String>,
    /// `--cross-host`: the host the owner started on (a network namespace), e.g. `host-a`.
    pub source_host: Option<String>,
    /// `--cross-host`: the host the owner was migrated to, e.g. `host-b`.
    pub destination_host: Option<String>,
    /// `--cross-host`: every host the owner ran on, in order (`--cycles N` moves it A → B → A …).
    pub hosts_visited: Vec<String>,
    /// How the disk is reached: `file` (a local image) or `nbd` (the storage host's export).
    pub storage: String,
    /// How the migration stream travels: `unix` (same host) or `tcp` (across hosts).
    pub migration_transport: String,
    /// `--cross-host`: the switchover's steps.
    pub cross_host: Option<CrossHostReport>,
    /// The handoff taken back, when one could not complete before port 2 opened.
    pub take_back: Option<TakeBackReport>,
    /// Each guest's own account of each switch (`BATON steps`, in the order the lines came): when,
    /// by its clock, it took each step and how it got there (issue 12, item 1).
    pub guest_steps: Vec<GuestStepsReport>,
    /// The shim gave the failed run up and the owner reported after `give-up` (what it had in
    /// flight counted as failed), so every acknowledged write could still be checked.
    pub given_up: bool,
    /// The fault injected (`--inject`), if any.
    pub injected: Option<String>,
    /// Whether each cycle was to end with a failback (`--failback`, the default for live, save
    /// and mixed).
    pub failback_planned: bool,
    /// Full cycles planned (`--cycles`).
    pub cycles_planned: u32,
    /// Cycles whose failback completed (or, without failback, whose migration did).
    pub cycles_completed: u32,
    /// One entry per cycle started: its mode, handoff and migration.
    pub cycles: Vec<CycleReport>,
    /// One entry per failback directed, in cycle order.
    pub failback: Vec<FailbackReport>,
    /// Guest-and-shim figure: requests the owner sent to port 1 after its last completed failback
    /// (its disk back); > 0 when it did direct I/O again. Null without a completed failback.
    pub port1_requests_after_failback: Option<u64>,
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
    /// The host's check of the image (`verified` … `verification_problems` in the JSON).
    #[serde(flatten)]
    pub disk: DiskVerification,
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
    /// Host CPU time of the QEMUs (owner and peer) in the direct phase (first I/O → the first
    /// handoff directed) and the forwarded one (→ the owner's workload ended), per request
    /// completed in each ([`crate::cputime`]); null when the scenario did not start.
    pub cpu_time: Option<crate::cputime::CpuTimeReport>,
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
        super::write_json(self, path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The report's `phases` carry exactly the spans the table gives a report name, in its order.
    #[test]
    fn phases_fields_are_the_span_tables_report_names() {
        let v = serde_json::to_value(Phases::default()).unwrap();
        let keys: Vec<&str> = v
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .filter(|k| *k != "first_forwarded_detected_by")
            .collect();
        let mut table: Vec<&str> = steps::SPANS.iter().filter_map(|s| s.report).collect();
        let mut keys_sorted = keys.clone();
        keys_sorted.sort_unstable();
        table.sort_unstable();
        assert_eq!(keys_sorted, table);
    }
}

/// One guest's steps in one switch, from its `BATON steps` line ([`baton_core::guest_steps`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct GuestStepsReport {
    /// `owner` or `peer`.
    pub role: &'static str,
    /// `handoff` or `failback`.
    pub kind: &'static str,
    /// Which switch of that kind, as the guest counts them (from 1; the peer counts cycles).
    pub n: u32,
    /// The steps in the order taken.
    pub steps: Vec<GuestStepReport>,
}

/// One step of a [`GuestStepsReport`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct GuestStepReport {
    /// The step's word (docs/guest-interface.md, `BATON steps`).
    pub step: &'static str,
    /// The guest's clock at the step, µs since its boot.
    pub at_us: u64,
    /// µs since the guest's previous step of the switch (0 for the first).
    pub after_us: u64,
    /// How the guest got there: `spin` (running since the step before), `irq` (woken from `hlt`
    /// by the control channel: it waited for a frame), `tick` (woken by the timer: it waited for
    /// a tick).
    pub wake: &'static str,
}

impl From<&baton_core::guest_steps::StepsLine> for GuestStepsReport {
    fn from(l: &baton_core::guest_steps::StepsLine) -> Self {
        let mut prev = None;
        let steps = l
            .steps()
            .map(|s| {
                let after_us = prev.map_or(0, |p: u64| s.at_us.saturating_sub(p));
                prev = Some(s.at_us);
                GuestStepReport {
                    step: s.name.word(),
                    at_us: s.at_us,
                    after_us,
                    wake: s.wake.word(),
                }
            })
            .collect();
        GuestStepsReport {
            role: l.role.as_str(),
            kind: l.kind.word(),
            n: l.n,
            steps,
        }
    }
}
