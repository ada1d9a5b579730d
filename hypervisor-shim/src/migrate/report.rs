//! The `migrate` report: built from the finished scenario and the host's verification.

use super::*;

pub(super) fn failed_setup_report(
    plan: &Plan<'_>,
    why: String,
    progress: Progress,
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
        control_rejected: 0,
        control_rejections: Vec::new(),
        control: BTreeMap::new(),
        writes_submitted: None,
        writes_acked: None,
        write_errors: None,
        verified: false,
        verification: "skipped: the scenario did not start".into(),
        writes_verified: None,
        lost: None,
        stale: None,
        newer_unacked: None,
        corrupt_blocks: None,
        verification_problems: Vec::new(),
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
        elapsed_ms: ms_between(progress.t0, Instant::now()),
        timeline: progress.lines,
        qmp_events: Vec::new(),
        notes: Vec::new(),
        serial_logs: BTreeMap::new(),
        workdir: plan.workdir.path().display().to_string(),
        artifacts_kept: plan.workdir.kept(),
    }
}

fn backend_name(cfg: &MigrateConfig) -> &'static str {
    match cfg.backend {
        run::BackendKind::File => "file",
        run::BackendKind::Null => "null",
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

pub(super) fn build_report(
    mut s: Scenario<'_>,
    plan: &Plan<'_>,
    ending: Ending,
    p: &mut Progress,
) -> MigrateReport {
    let cfg = plan.cfg;
    let guest = plan.guest;
    let lines = std::mem::take(&mut s.owner_lines);
    let (guest_exit, reason, qemu_exit_code) =
        run::classify(&ending, lines.panic.as_ref(), cfg.timeout);
    let mut failures = std::mem::take(&mut s.failures);
    let exited = matches!(ending, Ending::Exited(_));
    let where_ = exited.then(|| {
        if s.owner_is_destination {
            s.owner.label.to_owned()
        } else {
            "source".to_owned()
        }
    });
    let at_destination = exited && s.owner_is_destination;
    if guest_exit != GuestExit::Success {
        failures.push(format!("owner: {reason}"));
    }
    if exited && cfg.mode == Mode::None && s.times.forwarding.is_none() {
        failures.push("the owner finished before the handoff completed (--mode none)".into());
    }
    if exited && !s.owner_is_destination && s.migration.error.is_none() && cfg.mode != Mode::None {
        let why = if lines.peer_fault.is_some() {
            "the owner stopped at the source after detecting a peer fault".to_owned()
        } else if s.times.forwarding.is_some() || s.times.directed.is_some() {
            "the owner finished at the source before the migration: the switch came too late for \
             this workload (use a smaller --switch-after-ms or a larger --blocks/--passes)"
                .to_owned()
        } else {
            "the owner finished at the source before the switch was directed: the switch came too \
             late for this workload (use a smaller --switch-after-ms or a larger --blocks/--passes)"
                .to_owned()
        };
        failures.push(why);
    }
    if let Some(m) = &lines.peer_fault {
        failures.push(format!("the owner detected a peer fault: {m}"));
    }

    let mut guest_report = None;
    let mut guest_report_error = None;
    match lines.result {
        Some(Ok(r)) => match run::check_echo(&r, guest) {
            Ok(()) => guest_report = Some(r),
            Err(e) => guest_report_error = Some(e),
        },
        Some(Err(e)) => guest_report_error = Some(format!("malformed `BATON result` line: {e}")),
        None => guest_report_error = Some("the owner printed no `BATON result` line".into()),
    }
    if let Some(e) = &guest_report_error
        && (guest_exit == GuestExit::Success || lines.result_from.is_some())
    {
        failures.push(e.clone());
    }
    let schedule = guest.schedule();
    let writes_total = schedule.total_writes();
    if let Some(r) = &guest_report {
        failures.extend(crate::report::guest_report_failures(
            r,
            writes_total,
            "owner",
        ));
        if s.times.forwarding.is_some() && r.port2_requests == 0 {
            failures.push("nothing was forwarded over the ring".into());
        }
    }

    // Host-side verification, after the peer quit.
    let mut verification: Option<Verification> = None;
    let note = match guest_report.as_ref().map(Acks::from_report) {
        _ if cfg.backend == run::BackendKind::Null => {
            "skipped: null-co keeps no data (a measurement run)".to_owned()
        }
        None => {
            failures.push("disk not verified: no usable owner report".into());
            "skipped: no usable owner report, so the acknowledged writes are unknown".to_owned()
        }
        Some(None) => {
            failures.push(
                "disk not verified: the owner listed fewer failed writes than it counted".into(),
            );
            "skipped: the owner's report does not name every failed write".to_owned()
        }
        Some(Some(acks)) => match disk::verify_image(plan.image.path(), &schedule, &acks) {
            Ok(v) => {
                failures.extend(v.failures());
                let n = format!(
                    "host read {} blocks of {} after the peer quit and checked every tag and payload against the schedule",
                    v.blocks_checked,
                    plan.image.path().display()
                );
                p.say(format!(
                    "disk verified on the host: {} of {} acknowledged writes found, lost {}, stale {}",
                    v.writes_verified, v.writes_acked, v.lost, v.stale
                ));
                verification = Some(v);
                n
            }
            Err(e) => {
                failures.push(format!("disk verification failed: {}", chain(&e)));
                format!("failed: {}", chain(&e))
            }
        },
    };
    if let (Some(v), Some(r)) = (&verification, &guest_report)
        && v.writes_acked != r.writes_acked
    {
        failures.push(format!(
            "the owner says {} writes acked, its submitted and failed seqs imply {}",
            r.writes_acked, v.writes_acked
        ));
    }
    let rejected = s.handoff.rejected();
    if rejected > 0 {
        s.note(format!(
            "{rejected} control messages were rejected (wrong state or wrong guest)"
        ));
    }

    let g = guest_report.as_ref();
    let t = s.times;
    let mut control = BTreeMap::new();
    control.insert("owner".to_owned(), s.owner_ctl.stats());
    control.insert("peer".to_owned(), s.peer_ctl.stats());
    let queued = g
        .map(|r| r.held_at_switch)
        .or(s.drained.map(|(_, h)| u64::from(h)));
    let directed_at_ms = t.directed.map(|d| ms_between(s.t0, d));
    let timeline = std::mem::take(&mut p.lines);
    let elapsed_ms = ms_between(s.t0, Instant::now());
    let ok = failures.is_empty();
    MigrateReport {
        scenario: "migrate".into(),
        mode: cfg.mode.as_str().into(),
        ok,
        failures,
        accel: plan.accel.into(),
        accel_reason: plan.accel_reason.clone(),
        qemu_version: s.qemu_version.take(),
        qemu_commands: std::mem::take(&mut s.commands),
        backend: backend_name(cfg).into(),
        vm: OWNER_VM,
        peer_vm: PEER_VM,
        blocks: guest.blocks,
        passes: guest.passes,
        qd: guest.qd,
        seed: guest.seed,
        disk_bytes: plan.disk_bytes,
        writes_total,
        switch: switch_report(cfg, s.switch_ms, directed_at_ms),
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
        migration_status: s.migration.status.take(),
        destination_status: s.migration.destination_status.take(),
        migration_downtime_ms: s.migration.downtime_ms,
        migration_total_ms: s.migration.total_ms,
        migration_error: s.migration.error.take(),
        source_resumed: s.migration.source_resumed,
        phases: Phases {
            directed_to_drained_ms: phase(t.directed, t.drained),
            drained_to_device_deleted_ms: phase(t.drained, t.device_deleted),
            device_deleted_to_attached_ms: phase(t.device_deleted, t.peer_ready),
            attached_to_first_forwarded_ms: phase(t.peer_ready, t.first_forwarded),
            first_forwarded_detected_by:
                "host read-only mmap of the ring file: the completion tail (CQ_TAIL) moved".into(),
            handoff_ms: phase(t.directed, t.forwarding),
            migration_setup_ms: phase(t.forwarding, t.migrate_cmd),
            migration_ms: phase(t.migrate_cmd, t.migrated),
            save_ms: phase(t.migrate_cmd, t.save_done),
            restore_ms: phase(t.restore_start, t.restore_done),
        },
        control_rejected: rejected,
        control_rejections: s.handoff.rejections().to_vec(),
        control,
        writes_submitted: g.map(|r| r.writes_submitted),
        writes_acked: verification
            .as_ref()
            .map(|v| v.writes_acked)
            .or(g.map(|r| r.writes_acked)),
        write_errors: g.map(|r| r.write_errors),
        verified: verification.is_some(),
        verification: note,
        writes_verified: verification.as_ref().map(|v| v.writes_verified),
        lost: verification.as_ref().map(|v| v.lost),
        stale: verification.as_ref().map(|v| v.stale),
        newer_unacked: verification.as_ref().map(|v| v.newer_unacked),
        corrupt_blocks: verification.as_ref().map(|v| v.corrupt_blocks),
        verification_problems: verification.map(|v| v.problems).unwrap_or_default(),
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
        elapsed_ms,
        timeline,
        qmp_events: std::mem::take(&mut s.events),
        notes: std::mem::take(&mut s.notes),
        serial_logs: std::mem::take(&mut s.serial_logs),
        workdir: plan.workdir.path().display().to_string(),
        artifacts_kept: plan.workdir.kept(),
    }
}
