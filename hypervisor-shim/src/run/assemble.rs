//! The report of a finished direct run: how the guest ended, its report checked against the run,
//! the host's check of the disk, the verdict ([`super::verdict`]) and every figure, in one
//! [`RunReport`].

use std::path::Path;
use std::time::{Duration, Instant};

use baton_core::cmdline::GuestConfig;
use baton_core::workload::Schedule;
use serde_json::Value;

use super::RunConfig;
use super::session::Session;
use super::verdict::{self, DiskCheck, Facts};
use crate::disk::{self, Acks, DiskImage};
use crate::qemu::{DiskBackend, MachineSpec};
use crate::report::{DiskVerification, EventRecord, GuestExit, RunReport};
use crate::setup::Workdir;
use crate::vm::{Ending, check_echo, classify};

/// What the run was set up to do.
pub(super) struct Plan<'a> {
    pub(super) cfg: &'a RunConfig,
    pub(super) spec: &'a MachineSpec,
    pub(super) guest: &'a GuestConfig,
    pub(super) schedule: Schedule,
    pub(super) backend: &'a DiskBackend,
    pub(super) disk_bytes: u64,
    pub(super) accel_reason: String,
    pub(super) workdir: &'a Workdir,
    pub(super) image: Option<&'a DiskImage>,
}

/// The guest's `BATON result` checked against the run: the report, or why there is none usable.
fn guest_report(
    s: &mut Session,
    guest: &GuestConfig,
) -> (Option<baton_core::report::GuestReport>, Option<String>) {
    match s.lines.result.take() {
        Some(Ok(r)) => match check_echo(&r, guest) {
            Ok(()) => (Some(r), None),
            Err(e) => (None, Some(e)),
        },
        Some(Err(e)) => (None, Some(format!("malformed `BATON result` line: {e}"))),
        None if guest.panic => (None, None),
        None => (
            None,
            Some("the guest printed no `BATON result` line".into()),
        ),
    }
}

/// Reads the image back when that makes sense: the outcome and the report's `verification` note.
fn check_disk(
    backend: &DiskBackend,
    image: Option<&DiskImage>,
    acks: Option<&Option<Acks>>,
    schedule: &Schedule,
) -> (DiskCheck, String) {
    let skipped = |c: DiskCheck, note: &str| (c, note.to_owned());
    if let DiskBackend::Null { .. } = backend {
        return skipped(
            DiskCheck::NullBackend,
            "skipped: the null-co backend keeps no data (guest read-back was off too)",
        );
    }
    // A file, or an NBD export of one (the image is read after its daemon flushed and exited).
    match (image, acks) {
        (None, _) => skipped(DiskCheck::NoImage, "skipped: no image"),
        (Some(_), None) => skipped(
            DiskCheck::NoUsableReport,
            "skipped: no usable guest report, so the acknowledged writes are unknown",
        ),
        (Some(_), Some(None)) => skipped(
            DiskCheck::IncompleteErrorSeqs,
            "skipped: the guest report does not name every failed write",
        ),
        (Some(img), Some(Some(acks))) => match disk::verify_image(img.path(), schedule, acks) {
            Ok(v) => {
                let n = format!(
                    "host read {} blocks of {} and checked every tag and payload against the schedule",
                    v.blocks_checked,
                    img.path().display()
                );
                (DiskCheck::Verified(v), n)
            }
            Err(e) => (DiskCheck::Failed(e.to_string()), format!("failed: {e}")),
        },
    }
}

/// The integrity-only check ([`disk::check_integrity_image`]) when the full one could not run
/// for want of the acknowledged writes (issue 9: every ending is verified): the check and the
/// report's `verification` note. `None` when the full check ran or no image was kept, or when the
/// image cannot be read (the note then stays the full check's reason).
fn integrity_only(
    disk: &DiskCheck,
    image: Option<&DiskImage>,
    schedule: &Schedule,
    why: &str,
) -> Option<(disk::Integrity, String)> {
    if !matches!(
        disk,
        DiskCheck::NoUsableReport | DiskCheck::IncompleteErrorSeqs
    ) {
        return None;
    }
    let img = image?;
    let i = disk::check_integrity_image(img.path(), schedule).ok()?;
    let note = format!(
        "integrity only ({}): host read {} blocks of {} and checked each block's tag, LBA and payload against the schedule",
        why.trim_start_matches("skipped: "),
        i.blocks_checked,
        img.path().display()
    );
    Some((i, note))
}

/// Builds the report of a finished run.
pub(super) fn build_report(plan: &Plan<'_>, mut s: Session, ending: Ending) -> RunReport {
    let Plan {
        cfg,
        spec,
        guest,
        backend,
        disk_bytes,
        workdir,
        image,
        ..
    } = *plan;
    let schedule = &plan.schedule;
    let (guest_exit, mut reason, qemu_exit_code) =
        classify(&ending, s.lines.panic.as_ref(), cfg.timeout);
    if matches!(guest_exit, GuestExit::QemuDied | GuestExit::ShimError) {
        let tail = s.vm.stderr_lines(5, Duration::from_secs(2));
        if !tail.is_empty() {
            reason = format!("{reason}; QEMU stderr: {tail}");
        }
    }
    let qmp_error = s.qmp_error.take();
    if let Some(e) = &qmp_error
        && guest_exit != GuestExit::Success
    {
        // Secondary when QEMU died; the note keeps it visible.
        s.lines.note(e.clone());
    }
    let writes_total = schedule.total_writes();
    let result_line_seen = s.lines.result.is_some();
    let (guest_report, guest_report_error) = guest_report(&mut s, guest);
    let acks = guest_report.as_ref().map(Acks::from_report);
    let (disk, note) = check_disk(backend, image, acks.as_ref(), schedule);
    let integrity = integrity_only(&disk, image, schedule, &note);

    let ended = s.ended_at.unwrap_or_else(Instant::now);
    let elapsed_ms = s.ms_since_start(ended);
    let ready_ms = s.lines.ready.map(|t| s.ms_since_start(t));
    let boot_ms = s.lines.first_io.map(|t| s.ms_since_start(t));
    let hotplug_ms = s.hotplug_done.map(|t| s.ms_since_start(t));
    let mut failures = verdict::failures(&Facts {
        guest_exit,
        exit_reason: &reason,
        qmp_error: qmp_error.as_deref(),
        guest_report: guest_report.as_ref(),
        guest_report_error: guest_report_error.as_deref(),
        result_line_seen,
        panic_requested: guest.panic,
        writes_total,
        disk: &disk,
        hotplug_requested: cfg.hotplug_disk,
        hotplug_done: hotplug_ms.is_some(),
    });
    if let Some((i, _)) = &integrity {
        failures.extend(i.failures());
    }
    let events: Vec<EventRecord> = std::mem::take(&mut s.vm.events)
        .into_iter()
        .map(|(at, e)| EventRecord {
            name: e.name,
            at_ms: s.ms_since_start(at),
            data: e.data,
        })
        .collect();
    write_events_log(&s.vm.serial_log.with_file_name("qmp-events.log"), &events);

    let g = guest_report.as_ref();
    let verification = match disk {
        DiskCheck::Verified(v) => Some(v),
        _ => None,
    };
    RunReport {
        scenario: if cfg.hotplug_disk {
            "hotplug"
        } else {
            "direct"
        }
        .into(),
        ok: failures.is_empty(),
        failures,
        accel: spec.accel.as_str().into(),
        accel_reason: plan.accel_reason.clone(),
        qemu_version: s.qemu_version.take(),
        qemu_command: spec.display(),
        backend: backend.kind().into(),
        vm: guest.vm,
        blocks: guest.blocks,
        passes: guest.passes,
        qd: guest.qd,
        seed: guest.seed,
        first_lba: guest.first_lba,
        disk_bytes,
        writes_total,
        writes_submitted: g.map(|r| r.writes_submitted),
        writes_acked: verification
            .as_ref()
            .map(|v| v.writes_acked)
            .or(g.map(|r| r.writes_acked)),
        write_errors: g.map(|r| r.write_errors),
        disk: match integrity {
            Some((i, note)) => DiskVerification::integrity_only(note, i),
            None => DiskVerification::new(note, verification),
        },
        reads_verified: g.map(|r| r.reads_verified),
        read_mismatches: g.map(|r| r.read_mismatches),
        guest_exit,
        guest_exit_reason: reason,
        qemu_exit_code,
        guest_panic_message: s.lines.panic.take(),
        guest_report_error,
        ready_ms,
        boot_ms,
        hotplug_ms,
        iops: g.map(|r| r.iops),
        guest_elapsed_us: g.map(|r| r.elapsed_us),
        elapsed_ms,
        port1_requests: g.map(|r| r.port1_requests),
        port2_requests: g.map(|r| r.port2_requests),
        held_at_switch: g.map(|r| r.held_at_switch),
        max_gap_us: g.map(|r| r.max_gap_us),
        duplicates: g.map(|r| r.duplicates),
        port_stats: std::mem::take(&mut s.lines.port_stats),
        qmp_events: events,
        notes: std::mem::take(&mut s.lines.notes),
        serial_log: s.vm.serial_log.display().to_string(),
        workdir: workdir.path().display().to_string(),
        artifacts_kept: workdir.kept(),
    }
}

fn write_events_log(path: &Path, events: &[EventRecord]) {
    let mut text = String::new();
    for e in events {
        let v = serde_json::json!({"at_ms": e.at_ms, "event": e.name, "data": e.data});
        text.push_str(&Value::to_string(&v));
        text.push('\n');
    }
    // The events are in the report too; a failed log write loses nothing.
    let _ = std::fs::write(path, text);
}
