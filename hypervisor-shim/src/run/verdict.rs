//! The verdict of a direct run: the facts the shim gathered go in, the list of failures comes out
//! (an empty list is a pass). No I/O, so every rule is unit-tested here.

use baton_core::report::GuestReport;

use crate::disk::Verification;
use crate::report::GuestExit;

/// What became of the host's check of the disk.
#[derive(Debug)]
pub(super) enum DiskCheck {
    /// `null-co` keeps no data.
    NullBackend,
    /// There is no image to read.
    NoImage,
    /// No usable guest report, so the acknowledged writes are unknown.
    NoUsableReport,
    /// The guest counted more failed writes than it listed.
    IncompleteErrorSeqs,
    /// The image was read and checked.
    Verified(Verification),
    /// Reading the image failed, for this reason.
    Failed(String),
}

/// Everything the verdict depends on.
#[derive(Debug)]
pub(super) struct Facts<'a> {
    /// How the guest ended.
    pub(super) guest_exit: GuestExit,
    /// Why, in words.
    pub(super) exit_reason: &'a str,
    /// A QMP failure (connect, handshake), if any.
    pub(super) qmp_error: Option<&'a str>,
    /// The guest's report, when it was well-formed and described this run.
    pub(super) guest_report: Option<&'a GuestReport>,
    /// Why there is no usable guest report, if there is none.
    pub(super) guest_report_error: Option<&'a str>,
    /// Whether the guest printed a `BATON result` line at all.
    pub(super) result_line_seen: bool,
    /// `--guest-panic` was given.
    pub(super) panic_requested: bool,
    /// Writes in the schedule.
    pub(super) writes_total: u64,
    /// The host's check of the disk.
    pub(super) disk: &'a DiskCheck,
    /// `--hotplug-disk` was given.
    pub(super) hotplug_requested: bool,
    /// The disk was hot-added.
    pub(super) hotplug_done: bool,
}

/// The failures of a run, in the order the report lists them.
pub(super) fn failures(f: &Facts<'_>) -> Vec<String> {
    let success = f.guest_exit == GuestExit::Success;
    let mut failures = Vec::new();
    if !success {
        failures.push(format!("guest exit: {}", f.exit_reason));
    }
    // Secondary when QEMU died (the report keeps it as a note then).
    if let Some(e) = f.qmp_error
        && success
    {
        failures.push(e.to_owned());
    }
    // A guest that failed explains the missing report itself; a malformed or foreign report, or a
    // "successful" guest without one, is a failure of its own.
    if let Some(e) = f.guest_report_error
        && (success || f.result_line_seen)
    {
        failures.push(e.to_owned());
    }
    if f.panic_requested {
        failures.push("a guest panic was requested (--guest-panic)".into());
    }
    if let Some(r) = f.guest_report {
        failures.extend(crate::report::guest_report_failures(
            r,
            f.writes_total,
            "guest",
        ));
    }
    match f.disk {
        DiskCheck::NullBackend | DiskCheck::NoImage => {}
        DiskCheck::NoUsableReport => {
            if success {
                failures.push("disk not verified: no usable guest report".into());
            }
        }
        DiskCheck::IncompleteErrorSeqs => failures
            .push("disk not verified: the guest listed fewer failed writes than it counted".into()),
        DiskCheck::Verified(v) => failures.extend(v.failures()),
        DiskCheck::Failed(e) => failures.push(format!("disk verification failed: {e}")),
    }
    if let (DiskCheck::Verified(v), Some(r)) = (f.disk, f.guest_report)
        && v.writes_acked != r.writes_acked
    {
        failures.push(format!(
            "guest says {} writes acked, its submitted and failed seqs imply {}",
            r.writes_acked, v.writes_acked
        ));
    }
    if f.hotplug_requested && !f.hotplug_done && !f.panic_requested {
        failures.push("the guest never asked for the hot-added disk".into());
    }
    failures
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_core::cmdline::GuestConfig;

    fn clean<'a>(r: &'a GuestReport) -> Facts<'a> {
        Facts {
            guest_exit: GuestExit::Success,
            exit_reason: "guest exited with success (QEMU status 33)",
            qmp_error: None,
            guest_report: Some(r),
            guest_report_error: None,
            result_line_seen: true,
            panic_requested: false,
            writes_total: r.writes_submitted,
            disk: &DiskCheck::NullBackend,
            hotplug_requested: false,
            hotplug_done: false,
        }
    }

    fn report() -> GuestReport {
        let mut r = GuestReport::new(&GuestConfig::default());
        r.writes_submitted = 1024;
        r.writes_acked = 1024;
        r
    }

    #[test]
    fn a_clean_run_passes() {
        let r = report();
        assert!(failures(&clean(&r)).is_empty());
    }

    #[test]
    fn a_failed_guest_explains_its_missing_report() {
        let r = report();
        let f = Facts {
            guest_exit: GuestExit::Failure,
            exit_reason: "guest exited with failure (QEMU status 35)",
            qmp_error: Some("QMP: gone"),
            guest_report: None,
            guest_report_error: Some("the guest printed no `BATON result` line"),
            result_line_seen: false,
            disk: &DiskCheck::NoUsableReport,
            ..clean(&r)
        };
        assert_eq!(
            failures(&f),
            ["guest exit: guest exited with failure (QEMU status 35)"]
        );
        let f = Facts {
            guest_exit: GuestExit::Success,
            ..f
        };
        assert_eq!(
            failures(&f),
            [
                "QMP: gone",
                "the guest printed no `BATON result` line",
                "disk not verified: no usable guest report"
            ]
        );
    }

    #[test]
    fn guest_figures_and_hotplug_are_checked() {
        let mut r = report();
        r.write_errors = 2;
        let f = Facts {
            hotplug_requested: true,
            disk: &DiskCheck::IncompleteErrorSeqs,
            ..clean(&r)
        };
        assert_eq!(
            failures(&f),
            [
                "2 writes failed in the guest",
                "disk not verified: the guest listed fewer failed writes than it counted",
                "the guest never asked for the hot-added disk"
            ]
        );
        let f = Facts {
            panic_requested: true,
            disk: &DiskCheck::Failed("short read".into()),
            ..f
        };
        let got = failures(&f);
        assert_eq!(got[0], "a guest panic was requested (--guest-panic)");
        assert_eq!(got.last().unwrap(), "disk verification failed: short read");
    }
}
