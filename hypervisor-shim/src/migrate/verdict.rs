//! The verdict of a `migrate` run: why it failed, from the facts gathered (the owner's exit and
//! report, the handoff's record, the migration's outcome, the host's disk check). Pure: no I/O, so
//! it is tested without QEMU. The report ([`super::report`]) only assembles.

use super::*;

/// The host's check of the disk image after the peer quit.
#[derive(Debug)]
pub(super) struct DiskCheck {
    /// The verification, when it ran.
    pub(super) verification: Option<Verification>,
    /// What was done, or why not (the report's `verification`).
    pub(super) note: String,
    /// Why the disk could not be verified although it should have been.
    pub(super) problem: Option<String>,
}

/// What the verdict is drawn from.
pub(super) struct Evidence<'a> {
    /// Live, save or none.
    pub(super) mode: Mode,
    /// Failures found while the scenario ran (a failed migration, an abort).
    pub(super) run_failures: Vec<String>,
    /// How the owner ended, and why.
    pub(super) guest_exit: GuestExit,
    pub(super) exit_reason: &'a str,
    /// The owner's QEMU exited (it was not killed by the shim).
    pub(super) exited: bool,
    /// The owner ended in a destination (or restored) QEMU.
    pub(super) owner_is_destination: bool,
    /// The migration failed (and was rolled back).
    pub(super) migration_failed: bool,
    /// The owner's `BATON peer-fault` message.
    pub(super) peer_fault: Option<&'a str>,
    /// The handoff's steps.
    pub(super) record: &'a HandoffRecord,
    /// The owner's `BATON result`, when usable.
    pub(super) guest_report: Option<&'a GuestReport>,
    /// Why there is no usable report.
    pub(super) guest_report_error: Option<&'a str>,
    /// The owner printed a `BATON result` line (usable or not).
    pub(super) result_line_seen: bool,
    /// Writes in the schedule.
    pub(super) writes_total: u64,
    /// The host's disk check.
    pub(super) disk: &'a DiskCheck,
}

/// Every reason the run failed, in the order they are reported (empty: the run is ok).
pub(super) fn failures(e: Evidence<'_>) -> Vec<String> {
    // A failure found while running (e.g. no room for the ring) already says why the owner
    // stayed where it was: no guess about the switch point then.
    let explained = !e.run_failures.is_empty();
    let mut failures = e.run_failures;
    if e.guest_exit != GuestExit::Success {
        failures.push(format!("owner: {}", e.exit_reason));
    }
    let handed_over = e.record.reached(Step::PortOpen);
    if e.exited && e.mode == Mode::None && !handed_over && !explained {
        failures.push("the owner finished before the handoff completed (--mode none)".into());
    }
    if e.exited
        && !e.owner_is_destination
        && !e.migration_failed
        && e.mode != Mode::None
        && !explained
    {
        let why = if e.peer_fault.is_some() {
            "the owner stopped at the source after detecting a peer fault".to_owned()
        } else if handed_over || e.record.reached(Step::Directed) {
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
    if let Some(m) = e.peer_fault {
        failures.push(format!("the owner detected a peer fault: {m}"));
    }
    if let Some(err) = e.guest_report_error
        && (e.guest_exit == GuestExit::Success || e.result_line_seen)
    {
        failures.push(err.to_owned());
    }
    if let Some(r) = e.guest_report {
        failures.extend(crate::report::guest_report_failures(
            r,
            e.writes_total,
            "owner",
        ));
        if handed_over && r.port2_requests == 0 {
            failures.push("nothing was forwarded over the ring".into());
        }
    }
    if let Some(p) = &e.disk.problem {
        failures.push(p.clone());
    }
    if let Some(v) = &e.disk.verification {
        failures.extend(v.failures());
        if let Some(r) = e.guest_report
            && v.writes_acked != r.writes_acked
        {
            failures.push(format!(
                "the owner says {} writes acked, its submitted and failed seqs imply {}",
                r.writes_acked, v.writes_acked
            ));
        }
    }
    failures
}

#[cfg(test)]
mod tests {
    use super::*;

    fn skipped() -> DiskCheck {
        DiskCheck {
            verification: None,
            note: "skipped".into(),
            problem: None,
        }
    }

    fn evidence<'a>(record: &'a HandoffRecord, disk: &'a DiskCheck) -> Evidence<'a> {
        Evidence {
            mode: Mode::Live,
            run_failures: Vec::new(),
            guest_exit: GuestExit::Success,
            exit_reason: "exited",
            exited: true,
            owner_is_destination: true,
            migration_failed: false,
            peer_fault: None,
            record,
            guest_report: None,
            guest_report_error: None,
            result_line_seen: false,
            writes_total: 8,
            disk,
        }
    }

    #[test]
    fn a_clean_run_passes() {
        let r = HandoffRecord::new(Direction::OWNER_TO_PEER);
        let d = skipped();
        assert!(failures(evidence(&r, &d)).is_empty());
    }

    #[test]
    fn finishing_at_the_source_fails_and_says_why() {
        let mut r = HandoffRecord::new(Direction::OWNER_TO_PEER);
        let d = skipped();
        let e = Evidence {
            owner_is_destination: false,
            ..evidence(&r, &d)
        };
        assert!(failures(e)[0].contains("before the switch was directed"));
        r.record(Step::Directed, Instant::now());
        let e = Evidence {
            owner_is_destination: false,
            ..evidence(&r, &d)
        };
        assert!(failures(e)[0].contains("before the migration"));
        let e = Evidence {
            owner_is_destination: false,
            mode: Mode::None,
            ..evidence(&r, &d)
        };
        assert_eq!(
            failures(e),
            ["the owner finished before the handoff completed (--mode none)"]
        );
        r.record(Step::PortOpen, Instant::now());
        let e = Evidence {
            owner_is_destination: false,
            mode: Mode::None,
            ..evidence(&r, &d)
        };
        assert!(failures(e).is_empty());
    }

    #[test]
    fn a_known_cause_is_not_blamed_on_the_switch_point() {
        let r = HandoffRecord::new(Direction::OWNER_TO_PEER);
        let d = skipped();
        let cause = "the handoff was not directed: no room for the 4 MiB ring in /dev/shm: ENOSPC";
        for mode in [Mode::Live, Mode::None] {
            let e = Evidence {
                mode,
                owner_is_destination: false,
                run_failures: vec![cause.into()],
                ..evidence(&r, &d)
            };
            assert_eq!(failures(e), [cause]);
        }
    }

    #[test]
    fn run_failures_come_first_then_the_owner_and_the_disk() {
        let r = HandoffRecord::new(Direction::OWNER_TO_PEER);
        let d = DiskCheck {
            problem: Some("disk not verified: no usable owner report".into()),
            ..skipped()
        };
        let e = Evidence {
            run_failures: vec!["migration failed: x".into()],
            guest_exit: GuestExit::Failure,
            exit_reason: "failure exit",
            guest_report_error: Some("the owner printed no `BATON result` line"),
            result_line_seen: true,
            peer_fault: Some("bad tag"),
            ..evidence(&r, &d)
        };
        assert_eq!(
            failures(e),
            [
                "migration failed: x",
                "owner: failure exit",
                "the owner detected a peer fault: bad tag",
                "the owner printed no `BATON result` line",
                "disk not verified: no usable owner report",
            ]
        );
    }
}
