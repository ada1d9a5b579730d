//! The `migrate` report, assembled from the finished scenario, the host's disk check and the
//! verdict ([`super::verdict`]).

use super::failback::FailbackFacts;
use super::verdict::{self, DiskCheck};
use super::*;
use crate::report::DiskVerification;
use crate::report::{CycleReport, FailbackReport};
use crate::vm::{check_echo, classify};

/// The report of a scenario that could not start its guests.
pub(super) fn failed_setup_report(
    plan: &Plan<'_>,
    why: String,
    mut progress: Progress,
) -> MigrateReport {
    let cfg = plan.cfg;
    let g = plan.guest;
    MigrateReport {
        scenario: "migrate".into(),
        mode: cfg.mode.as_str().into(),
        ok: false,
        failures: vec![format!("set-up: {why}")],
        accel: plan.accel.into(),
        accel_reason: plan.accel_reason.clone(),
        qemu_version: None,
        qemu_commands: BTreeMap::new(),
        backend: backend_name(cfg).into(),
        vm: OWNER_VM,
        peer_vm: PEER_VM,
        blocks: g.blocks,
        passes: g.passes,
        qd: g.qd,
        seed: g.seed,
        disk_bytes: plan.disk_bytes,
        writes_total: g.schedule().total_writes(),
        switch: switch_report(cfg, None, None),
        peer_fault: cfg.peer_fault.as_str().into(),
        peer_fault_detected: false,
        peer_fault_message: None,
        requests_queued_at_switch: None,
        requests_forwarded: None,
        port1_requests: None,
        port_stats: Vec::new(),
        completion_timeline: None,
        duplicated: None,
        blackout_ms: None,
        migration_status: None,
        destination_status: None,
        migration_downtime_ms: None,
        migration_total_ms: None,
        migration_error: None,
        source_resumed: false,
        phases: Phases::default(),
        peer_failures: 0,
        requests_replayed: 0,
        recovery: Vec::new(),
        source_host: None,
        destination_host: None,
        hosts_visited: Vec::new(),
        storage: storage_kind(cfg).into(),
        migration_transport: transport(cfg).into(),
        cross_host: None,
        take_back: None,
        guest_steps: Vec::new(),
        given_up: false,
        injected: cfg.inject.map(|i| i.as_str().to_owned()),
        failback_planned: cfg.failback,
        cycles_planned: cfg.cycles,
        cycles_completed: 0,
        cycles: Vec::new(),
        failback: Vec::new(),
        port1_requests_after_failback: None,
        control_rejected: 0,
        control_rejections: Vec::new(),
        control: BTreeMap::new(),
        writes_submitted: None,
        writes_acked: None,
        write_errors: None,
        disk: DiskVerification::new("skipped: the scenario did not start".into(), None),
        reads_verified: None,
        read_mismatches: None,
        guest_exit: GuestExit::ShimError,
        guest_exit_reason: why,
        guest_exit_where: None,
        owner_finished_at_destination: false,
        qemu_exit_code: None,
        guest_panic_message: None,
        guest_report_error: None,
        iops: None,
        guest_elapsed_us: None,
        cpu_time: None,
        elapsed_ms: ms_between(progress.t0(), Instant::now()),
        timeline: progress.take_lines(),
        qmp_events: Vec::new(),
        notes: Vec::new(),
        serial_logs: BTreeMap::new(),
        workdir: plan.workdir.path().display().to_string(),
        artifacts_kept: plan.workdir.kept(),
    }
}

fn backend_name(cfg: &MigrateConfig) -> &'static str {
    match cfg.backend {
        BackendKind::File => "file",
        BackendKind::Null => "null",
    }
}

fn switch_report(
    cfg: &MigrateConfig,
    after_ms: Option<u64>,
    directed_at_ms: Option<f64>,
) -> SwitchReport {
    let (trigger, migrate_at) = match cfg.switch {
        Switch::AfterMs(_) => ("operator", None),
        Switch::Seeded => ("seed", None),
        Switch::OwnerRequest(n) => ("owner-request", Some(n)),
    };
    SwitchReport {
        trigger: trigger.into(),
        after_first_io_ms: after_ms,
        migrate_at,
        directed_at_ms,
    }
}

/// The host's check of the image, after the peer quit (it flushed the image): the full check
/// when the owner's report names the acknowledged writes, else the integrity-only check
/// ([`disk::check_integrity_image`]: every block a valid write of its own LBA), whose report block
/// comes back beside the check (issue 9: every ending is verified).
fn check_disk(
    plan: &Plan<'_>,
    guest_report: Option<&GuestReport>,
    p: &mut Progress,
) -> (DiskCheck, Option<DiskVerification>) {
    let skipped = |note: &str, problem: Option<&str>| DiskCheck {
        verification: None,
        note: note.to_owned(),
        problem: problem.map(str::to_owned),
    };
    if plan.cfg.backend == BackendKind::Null {
        return (
            skipped("skipped: null-co keeps no data (a measurement run)", None),
            None,
        );
    }
    let schedule = plan.guest.schedule();
    let acks = match guest_report.map(Acks::from_report) {
        Some(Some(acks)) => acks,
        missing => {
            let (why, problem) = match missing {
                None => (
                    "no usable owner report, so the acknowledged writes are unknown",
                    None,
                ),
                _ => (
                    "the owner's report does not name every failed write",
                    Some(
                        "disk not fully verified: the owner listed fewer failed writes than it counted",
                    ),
                ),
            };
            return integrity_only(plan, &schedule, why, problem, p);
        }
    };
    let check = match disk::verify_image(plan.image.path(), &schedule, &acks) {
        Ok(v) => {
            p.say(format!(
                "disk verified on the host: {} of {} acknowledged writes found, lost {}, stale {}",
                v.writes_verified, v.writes_acked, v.lost, v.stale
            ));
            DiskCheck {
                note: format!(
                    "host read {} blocks of {} after the peer quit and checked every tag and payload against the schedule",
                    v.blocks_checked,
                    plan.image.path().display()
                ),
                verification: Some(v),
                problem: None,
            }
        }
        Err(e) => DiskCheck {
            verification: None,
            note: format!("failed: {}", chain(&e)),
            problem: Some(format!("disk verification failed: {}", chain(&e))),
        },
    };
    (check, None)
}

/// The integrity-only check, for an ending whose acknowledged writes are unknown (`why`):
/// corrupt blocks are the check's problem (beside `problem`, the reason the full check could
/// not run, when that is itself a failure).
fn integrity_only(
    plan: &Plan<'_>,
    schedule: &baton_core::workload::Schedule,
    why: &str,
    problem: Option<&str>,
    p: &mut Progress,
) -> (DiskCheck, Option<DiskVerification>) {
    match disk::check_integrity_image(plan.image.path(), schedule) {
        Ok(i) => {
            p.say(format!(
                "disk checked on the host (integrity only: {why}): {} blocks intact, {} corrupt",
                i.blocks_intact, i.corrupt_blocks
            ));
            let note = format!(
                "integrity only ({why}): host read {} blocks of {} after the peer quit and checked each block's tag, LBA and payload against the schedule",
                i.blocks_checked,
                plan.image.path().display()
            );
            let problems: Vec<String> = problem
                .map(str::to_owned)
                .into_iter()
                .chain(i.failures())
                .collect();
            let check = DiskCheck {
                verification: None,
                note: note.clone(),
                problem: (!problems.is_empty()).then(|| problems.join("; ")),
            };
            (check, Some(DiskVerification::integrity_only(note, i)))
        }
        Err(e) => (
            DiskCheck {
                verification: None,
                note: format!("failed: {}", chain(&e)),
                problem: Some(format!(
                    "disk not verified ({why}) and its integrity check failed: {}",
                    chain(&e)
                )),
            },
            None,
        ),
    }
}

/// The report of a finished scenario: the owner's lines, the host's disk check and the verdict
/// ([`verdict::failures`]), the handoff's phases from its record.
pub(super) fn build_report(
    mut s: Scenario<'_>,
    plan: &Plan<'_>,
    ending: Ending,
    p: &mut Progress,
) -> MigrateReport {
    let cfg = plan.cfg;
    let guest = plan.guest;
    // Before the owner's lines are taken: the blackouts come from its `BATON switch` lines.
    let cycle_reports = cycle_reports(&s);
    let failback_reports = failback_reports(&s);
    let cross_host = s.cross_host_report();
    // The top-level migration fields: the last migration attempted (a later cycle that stopped
    // before its migration does not blank them).
    let mut migration = s
        .cycles
        .iter()
        .rev()
        .map(|c| &c.migration)
        .find(|m| m.status.is_some() || m.error.is_some())
        .cloned()
        .unwrap_or_else(|| s.facts.migration.clone());
    let any_migration_failed =
        s.cycles.iter().any(|c| c.migration.error.is_some()) || s.facts.migration.error.is_some();
    let lines = std::mem::take(&mut s.facts.owner_lines);
    let (guest_exit, mut reason, qemu_exit_code) =
        classify(&ending, lines.panic.as_ref(), cfg.timeout);
    if s.facts.given_up {
        reason.push_str(" (it had reported first, after `give-up`)");
    }
    let exited = matches!(ending, Ending::Exited(_));
    let where_ = exited.then(|| {
        if s.vms.owner_is_destination {
            s.vms.owner.label.to_owned()
        } else {
            "source".to_owned()
        }
    });
    let at_destination = exited && s.vms.owner_is_destination;

    let mut guest_report = None;
    let mut guest_report_error = None;
    match lines.result {
        Some(Ok(r)) => match check_echo(&r, guest) {
            Ok(()) => guest_report = Some(r),
            Err(e) => guest_report_error = Some(e),
        },
        Some(Err(e)) => guest_report_error = Some(format!("malformed `BATON result` line: {e}")),
        None => guest_report_error = Some("the owner printed no `BATON result` line".into()),
    }
    let writes_total = guest.schedule().total_writes();
    let (disk, integrity) = check_disk(plan, guest_report.as_ref(), p);
    let first = s.first_record();
    let cycles_completed = cycle_reports
        .iter()
        .filter(|c| {
            c.failback_ok
                .unwrap_or(!cfg.failback && c.migration_error.is_none() && c.handoff_ms.is_some())
        })
        .count() as u32;
    let port1_after = port1_after_failback(&s, guest_report.as_ref());
    let mut failures = verdict::failures(verdict::Evidence {
        mode: cfg.mode,
        run_failures: std::mem::take(&mut s.out.failures),
        guest_exit,
        exit_reason: &reason,
        exited,
        owner_is_destination: s.vms.owner_is_destination,
        migration_failed: any_migration_failed,
        peer_fault: lines.peer_fault.as_deref(),
        record: &first,
        guest_report: guest_report.as_ref(),
        guest_report_error: guest_report_error.as_deref(),
        result_line_seen: lines.result_from.is_some(),
        writes_total,
        disk: &disk,
    });
    for f in &failback_reports {
        if !f.ok {
            failures.push(format!(
                "failback of cycle {} did not complete: {}",
                f.cycle,
                f.error.as_deref().unwrap_or(if f.ring_closed {
                    "the owner never reported port 1 open"
                } else {
                    "the ring was not closed"
                })
            ));
        }
    }
    if failures.is_empty() && cycles_completed < cfg.cycles {
        failures.push(format!(
            "{cycles_completed} of {} cycles completed: the owner's workload ended first (raise --passes or --blocks)",
            cfg.cycles
        ));
    }
    let rejected = s.ctl.handoff.rejected();
    if rejected > 0 {
        s.note(format!(
            "{rejected} control messages were rejected (wrong state or wrong guest)"
        ));
    }

    let g = guest_report.as_ref();
    let mut control = BTreeMap::new();
    control.insert("owner".to_owned(), s.ctl.owner.stats());
    control.insert("peer".to_owned(), s.ctl.peer.stats());
    let queued = g
        .map(|r| r.held_at_switch)
        .or(s.facts.drained.map(|(_, h)| u64::from(h)));
    let directed_at_ms = first.since(s.t0, Step::Directed);
    let timeline = p.take_lines();
    let elapsed_ms = ms_between(s.t0, Instant::now());
    let ok = failures.is_empty();
    let verification = disk.verification;
    MigrateReport {
        scenario: "migrate".into(),
        mode: cfg.mode.as_str().into(),
        ok,
        failures,
        accel: plan.accel.into(),
        accel_reason: plan.accel_reason.clone(),
        qemu_version: s.out.qemu_version.take(),
        qemu_commands: std::mem::take(&mut s.out.commands),
        backend: backend_name(cfg).into(),
        vm: OWNER_VM,
        peer_vm: PEER_VM,
        blocks: guest.blocks,
        passes: guest.passes,
        qd: guest.qd,
        seed: guest.seed,
        disk_bytes: plan.disk_bytes,
        writes_total,
        switch: switch_report(cfg, s.facts.switch_ms, directed_at_ms),
        peer_fault: cfg.peer_fault.as_str().into(),
        peer_fault_detected: lines.peer_fault.is_some(),
        peer_fault_message: lines.peer_fault,
        requests_queued_at_switch: queued,
        requests_forwarded: g.map(|r| r.port2_requests),
        port1_requests: g.map(|r| r.port1_requests),
        port_stats: lines.port_stats,
        completion_timeline: lines.timeline,
        duplicated: g.map(|r| r.duplicates),
        blackout_ms: g.map(|r| r.max_gap_us as f64 / 1000.0),
        migration_status: migration.status.take(),
        destination_status: migration.destination_status.take(),
        migration_downtime_ms: migration.downtime_ms,
        migration_total_ms: migration.total_ms,
        migration_error: migration.error.take(),
        source_resumed: migration.source_resumed,
        phases: Phases::from_record(Some(&first)),
        peer_failures: s.facts.peer_failures,
        requests_replayed: s.facts.requests_replayed,
        recovery: std::mem::take(&mut s.facts.recoveries),
        source_host: s.cross.as_ref().map(|c| c.hosts.source().name.to_owned()),
        destination_host: s
            .cross
            .as_ref()
            .map(|c| c.hosts.destination().name.to_owned()),
        hosts_visited: s
            .cross
            .as_ref()
            .map(|c| c.visited.iter().map(|h| (*h).to_owned()).collect())
            .unwrap_or_default(),
        storage: storage_kind(cfg).into(),
        migration_transport: transport(cfg).into(),
        cross_host,
        take_back: s.facts.take_back.take(),
        guest_steps: s.facts.guest_steps.iter().map(Into::into).collect(),
        given_up: s.facts.given_up,
        injected: cfg.inject.map(|i| i.as_str().to_owned()),
        failback_planned: cfg.failback,
        cycles_planned: cfg.cycles,
        cycles_completed,
        cycles: cycle_reports,
        failback: failback_reports,
        port1_requests_after_failback: port1_after,
        control_rejected: rejected,
        control_rejections: s.ctl.handoff.rejections().to_vec(),
        control,
        writes_submitted: g.map(|r| r.writes_submitted),
        writes_acked: verification
            .as_ref()
            .map(|v| v.writes_acked)
            .or(g.map(|r| r.writes_acked)),
        write_errors: g.map(|r| r.write_errors),
        disk: integrity.unwrap_or_else(|| DiskVerification::new(disk.note, verification)),
        reads_verified: g.map(|r| r.reads_verified),
        read_mismatches: g.map(|r| r.read_mismatches),
        guest_exit,
        guest_exit_reason: reason,
        guest_exit_where: where_,
        owner_finished_at_destination: at_destination && qemu_exit_code == Some(EXIT_SUCCESS),
        qemu_exit_code,
        guest_panic_message: lines.panic,
        guest_report_error,
        iops: g.map(|r| r.iops),
        guest_elapsed_us: g.map(|r| r.elapsed_us),
        cpu_time: Some(
            s.facts
                .cpu
                .report(s.facts.drained.map(|(c, _)| c), g.map(|r| r.port2_requests)),
        ),
        elapsed_ms,
        timeline,
        qmp_events: std::mem::take(&mut s.facts.events),
        notes: std::mem::take(&mut s.out.notes),
        serial_logs: std::mem::take(&mut s.out.serial_logs),
        workdir: plan.workdir.path().display().to_string(),
        artifacts_kept: plan.workdir.kept(),
    }
}

/// One entry per cycle started.
fn cycle_reports(s: &Scenario<'_>) -> Vec<CycleReport> {
    s.cycles
        .iter()
        .map(|c| CycleReport {
            cycle: c.n,
            mode: c.mode.as_str().into(),
            requests_held_at_handoff: c.held_at_handoff,
            handoff_ms: c.handoff.span_ms(&steps::HANDOFF),
            handoff_blackout_ms: s.switch_gap_ms(false, c.n),
            migration_status: c.migration.status.clone(),
            migration_downtime_ms: c.migration.downtime_ms,
            migration_ms: c.handoff.span_ms(&steps::MIGRATION),
            migration_error: c.migration.error.clone(),
            failback_ok: c.failback.as_ref().map(FailbackFacts::ok),
        })
        .collect()
}

/// One entry per failback directed.
fn failback_reports(s: &Scenario<'_>) -> Vec<FailbackReport> {
    s.cycles
        .iter()
        .filter_map(|c| Some((c.n, c.failback.as_ref()?)))
        .map(|(n, f)| {
            let [
                directed_to_drained_ms,
                drained_to_released_ms,
                drained_to_drive_released_ms,
                released_to_attached_ms,
                attached_to_port1_open_ms,
                port1_open_to_first_completion_ms,
                failback_ms,
            ] = FailbackReport::times(&f.record);
            FailbackReport {
                cycle: n,
                ok: f.ok(),
                requests_held_at_failback: f.held,
                blackout_ms: s.switch_gap_ms(true, n),
                directed_to_drained_ms,
                drained_to_released_ms,
                drained_to_drive_released_ms,
                released_to_attached_ms,
                attached_to_port1_open_ms,
                port1_open_to_first_completion_ms,
                failback_ms,
                directed_at_ms: f.record.since(s.t0, Step::Directed),
                ring_closed: f.ring_closed,
                error: f.error.clone(),
                emergency: f.emergency,
            }
        })
        .collect()
}

/// Requests the owner sent to port 1 after its last completed failback: its total port-1
/// requests less those it had made when that cycle's handoff drained port 1.
fn port1_after_failback(s: &Scenario<'_>, g: Option<&GuestReport>) -> Option<u64> {
    let last = s
        .cycles
        .iter()
        .rev()
        .find(|c| c.failback.as_ref().is_some_and(FailbackFacts::ok))?;
    let before = last.port1_at_handoff?;
    Some(g?.port1_requests.saturating_sub(before))
}

/// How the disk is reached: over NBD across hosts, else the local image (or null-co).
fn storage_kind(cfg: &MigrateConfig) -> &'static str {
    match (cfg.cross_host, cfg.backend) {
        (true, _) => "nbd",
        (false, BackendKind::File) => "file",
        (false, BackendKind::Null) => "null-co",
    }
}

/// How the migration stream travels.
fn transport(cfg: &MigrateConfig) -> &'static str {
    if cfg.cross_host { "tcp" } else { "unix" }
}
