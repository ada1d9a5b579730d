//! The shim's reports: JSON for machines (`--report FILE`), a short summary for people.
//! [`RunReport`] (`run`, in `run.rs`) and [`MigrateReport`] (`migrate`, in `migrate.rs`) share the
//! types here: how a guest ended, its per-port figures, its completion timeline.
//!
//! Every figure comes from the shim's own clock or its own verification, except the fields marked
//! "guest's figure", which are copied from the guest's `BATON result` line.

use std::fmt;
use std::path::Path;

use serde::Serialize;

mod migrate;
mod run;
mod summary;

pub use migrate::{
    CrossHostReport, CycleReport, FailbackReport, MigrateReport, Phases, SwitchReport,
    TakeBackReport, VmEvent,
};
pub use run::{EventRecord, RunReport};
pub use summary::summary_line;

/// How far the host could check the disk image: the report's `verified`, serialized as `true`
/// (every acknowledged write checked), `"integrity-only"` (the owner's report is missing, so only
/// each block's own integrity was checked: [`crate::disk::check_integrity`]) or `false` (nothing
/// checked). A plain boolean for the two old cases, so `verified == true` keeps its meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verified {
    /// Every acknowledged write checked against the schedule ([`crate::disk::verify`]).
    Full,
    /// Every block checked on its own, the acknowledged writes unknown.
    IntegrityOnly,
    /// Not checked (skipped, or the image could not be read).
    No,
}

impl Verified {
    /// Whether the full check ran.
    #[must_use]
    pub fn is_full(self) -> bool {
        self == Verified::Full
    }
}

impl Serialize for Verified {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Verified::Full => s.serialize_bool(true),
            Verified::IntegrityOnly => s.serialize_str("integrity-only"),
            Verified::No => s.serialize_bool(false),
        }
    }
}

/// The host's check of the disk image, as both reports carry it (flattened into their JSON: the
/// fields `verified` … `verification_problems` sit at the top level of each report).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DiskVerification {
    /// Whether (and how far) the shim verified the disk image.
    pub verified: Verified,
    /// What verification did, or why it was skipped.
    pub verification: String,
    /// Acknowledged writes found on disk (null unless fully verified).
    pub writes_verified: Option<u64>,
    /// Acknowledged writes missing from disk (null unless fully verified).
    pub lost: Option<u64>,
    /// LBAs not holding their last acknowledged write (null unless fully verified).
    pub stale: Option<u64>,
    /// LBAs holding a newer, submitted but unacknowledged write (legal).
    pub newer_unacked: Option<u64>,
    /// Non-zero blocks that are no valid write of this run (null when not verified).
    pub corrupt_blocks: Option<u64>,
    /// Non-zero blocks holding a valid write of this run for their own LBA (integrity-only
    /// check; null otherwise).
    pub blocks_intact: Option<u64>,
    /// The highest seq found intact (integrity-only check; null otherwise): a lower bound of how
    /// far the owner's writes got.
    pub highest_seq_on_disk: Option<u64>,
    /// The first few verification problems.
    pub verification_problems: Vec<String>,
}

impl DiskVerification {
    /// The report's block for a check that ran (`Some`) or was skipped (`None`), with `note`
    /// saying what it did or why not.
    #[must_use]
    pub fn new(note: String, verification: Option<crate::disk::Verification>) -> Self {
        let v = verification.as_ref();
        DiskVerification {
            verified: if v.is_some() {
                Verified::Full
            } else {
                Verified::No
            },
            writes_verified: v.map(|v| v.writes_verified),
            lost: v.map(|v| v.lost),
            stale: v.map(|v| v.stale),
            newer_unacked: v.map(|v| v.newer_unacked),
            corrupt_blocks: v.map(|v| v.corrupt_blocks),
            blocks_intact: None,
            highest_seq_on_disk: None,
            verification_problems: verification.map(|v| v.problems).unwrap_or_default(),
            verification: note,
        }
    }

    /// The report's block for an integrity-only check (`verified: "integrity-only"`), with `note`
    /// saying why the full check could not run.
    #[must_use]
    pub fn integrity_only(note: String, i: crate::disk::Integrity) -> Self {
        DiskVerification {
            verified: Verified::IntegrityOnly,
            verification: note,
            writes_verified: None,
            lost: None,
            stale: None,
            newer_unacked: None,
            corrupt_blocks: Some(i.corrupt_blocks),
            blocks_intact: Some(i.blocks_intact),
            highest_seq_on_disk: Some(i.highest_seq),
            verification_problems: i.problems,
        }
    }

    /// The `writes` figure of the summaries: what the check found on disk.
    #[must_use]
    pub fn on_disk(&self) -> String {
        match self.verified {
            Verified::Full => format!(
                "on disk {} verified, lost {}, stale {}",
                opt(&self.writes_verified),
                opt(&self.lost),
                opt(&self.stale)
            ),
            Verified::IntegrityOnly => format!(
                "integrity-only: {} blocks intact, {} corrupt",
                opt(&self.blocks_intact),
                opt(&self.corrupt_blocks)
            ),
            Verified::No => format!("disk not verified ({})", self.verification),
        }
    }

    /// The summary's `disk` line (`writes_acked`: the report's acknowledged writes) and one
    /// `problem` line per verification problem.
    fn fmt_lines(&self, f: &mut fmt::Formatter<'_>, writes_acked: Option<u64>) -> fmt::Result {
        if self.verified == Verified::IntegrityOnly {
            writeln!(f, "  disk       {} ({})", self.on_disk(), self.verification)?;
        } else if self.verified.is_full() {
            writeln!(
                f,
                "  disk       verified {} of {} acked writes; lost {}, stale {}, corrupt blocks {}",
                opt(&self.writes_verified),
                opt(&writes_acked),
                opt(&self.lost),
                opt(&self.stale),
                opt(&self.corrupt_blocks),
            )?;
        } else {
            writeln!(f, "  disk       not verified: {}", self.verification)?;
        }
        Ok(())
    }

    /// The summary's `problem` lines.
    fn fmt_problems(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for p in &self.verification_problems {
            writeln!(f, "  problem    {p}")?;
        }
        Ok(())
    }
}

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

/// Writes `report` as pretty JSON to `path` (creating parent directories).
pub(crate) fn write_json(report: &impl Serialize, path: &Path) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut text = serde_json::to_string_pretty(report).map_err(std::io::Error::other)?;
    text.push('\n');
    std::fs::write(path, text)
}

fn opt<T: fmt::Display>(v: &Option<T>) -> String {
    v.as_ref()
        .map_or_else(|| "-".to_owned(), ToString::to_string)
}

fn ms(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v:.1} ms"))
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

    /// Adds one `BATON timeline` line (parsed here). See [`CompletionTimeline::add`].
    pub fn add_line(this: &mut Option<Self>, line: &str) -> Result<(), String> {
        let l = baton_core::timeline::parse_line(line).map_err(|e| e.to_string())?;
        Self::add(this, &l)
    }

    /// Adds one parsed `BATON timeline` line. Lines must agree on `start_us` and `bin_us`; bins
    /// beyond [`Self::MAX_BINS`] are refused.
    pub fn add(
        this: &mut Option<Self>,
        l: &baton_core::timeline::TimelineLine,
    ) -> Result<(), String> {
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

/// One line of the handoff's progress display.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TimelineEntry {
    /// Milliseconds since the scenario started.
    pub at_ms: f64,
    /// What happened.
    pub what: String,
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

    #[test]
    fn verified_is_a_bool_or_integrity_only() {
        let full = DiskVerification::new("n".into(), Some(crate::disk::Verification::default()));
        let none = DiskVerification::new("skipped".into(), None);
        let i = crate::disk::Integrity {
            blocks_intact: 7,
            corrupt_blocks: 1,
            ..Default::default()
        };
        let only = DiskVerification::integrity_only("no report".into(), i);
        let json = |d: &DiskVerification| serde_json::to_value(d).unwrap();
        assert_eq!(json(&full)["verified"], true);
        assert_eq!(json(&none)["verified"], false);
        assert_eq!(json(&only)["verified"], "integrity-only");
        assert_eq!(json(&only)["blocks_intact"], 7);
        assert_eq!(json(&only)["corrupt_blocks"], 1);
        assert!(json(&only)["lost"].is_null());
        assert_eq!(only.on_disk(), "integrity-only: 7 blocks intact, 1 corrupt");
        assert!(none.on_disk().starts_with("disk not verified"));
    }
}
