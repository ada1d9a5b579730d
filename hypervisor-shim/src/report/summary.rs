//! The short human summary of one `hypervisor-shim migrate` (what `migrate` prints on stdout;
//! `./qemu-run.sh` ends with it): what happened, the key figures, the verdict, and where the
//! artifacts are. About 20 lines; everything else is in the JSON report (`--report FILE`).
//!
//! Layout: a headline (`baton migrate [MODE]: OK|FAILED`, which scripts and tests match), then
//! four sections, each a heading and lines of `  LABEL  TEXT` ([`summary_line`]):
//!
//! - `what happened`: the workload, the handoff (claim 1's steps, docs/design.md "The handoff"),
//!   the migration or save + restore, the failback (one line, or one per cycle up to a few and
//!   a count) and how the owner ended;
//! - `key figures`: requests held at the switch, the blackout, the handoff's duration, QEMU's
//!   downtime, the writes verified / lost / stale / duplicated;
//! - `verdict`: `OK`, or `FAILED` and every failure;
//! - `where`: the workdir, serial logs and disk image (the report's path and the plot are not in
//!   the report: `main.rs` adds their lines with [`summary_line`]).

use std::fmt;
use std::path::{Path, PathBuf};

use super::{MigrateReport, ms, opt};

/// Width of the label column of a summary line.
const LABEL_WIDTH: usize = 14;
/// Verification problems shown under the verdict (the report has the first few, all of them).
const PROBLEMS_SHOWN: usize = 3;

/// One line of the summary: `  LABEL  TEXT`, the label padded to the summary's column. `main.rs`
/// uses it for the lines that follow the summary (the report's path, the plot).
#[must_use]
pub fn summary_line(label: &str, text: impl fmt::Display) -> String {
    format!("  {label:<LABEL_WIDTH$} {text}")
}

impl MigrateReport {
    /// The files and directories this report points to that do not exist (now): the workdir, the
    /// serial logs and, with a file backend, the disk image. Empty after a run that kept its
    /// artifacts (`artifacts_kept`); the caller checks it once the scenario's guards are gone.
    #[must_use]
    pub fn missing_artifacts(&self) -> Vec<PathBuf> {
        let mut named = vec![PathBuf::from(&self.workdir)];
        named.extend(self.serial_logs.values().map(PathBuf::from));
        named.extend(self.disk_image());
        named.into_iter().filter(|p| !p.exists()).collect()
    }

    /// The disk image in the workdir, for a file backend (`None` for null-co).
    fn disk_image(&self) -> Option<PathBuf> {
        (self.backend == "file")
            .then(|| Path::new(&self.workdir).join(crate::migrate::DISK_IMAGE_FILE))
    }

    /// `what happened`: the workload, the handoff, the migration, the failback, the owner's end.
    fn fmt_story(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "what happened")?;
        line(
            f,
            "workload",
            format!(
                "{} writes by the owner (VM {}): {} blocks × {} passes, QD {}, seed {}",
                self.writes_total, self.vm, self.blocks, self.passes, self.qd, self.seed
            ),
        )?;
        let when = match (
            self.switch.trigger.as_str(),
            self.switch.after_first_io_ms,
            self.switch.migrate_at,
        ) {
            ("owner-request", _, Some(n)) => format!("requested by the owner after {n} writes"),
            ("seed", Some(ms), _) => {
                format!("directed {ms} ms after the first I/O (from the seed)")
            }
            (_, Some(ms), _) => format!("directed {ms} ms after the first I/O"),
            (t, _, _) => format!("trigger {t}"),
        };
        let outcome = if self.phases.handoff_ms.is_some() {
            format!(
                "the disk moved to the peer (VM {}), I/O forwarded over the ring",
                self.peer_vm
            )
        } else if let Some(tb) = &self.take_back {
            let how = if tb.ok {
                "the owner's port 1 reopened, the held requests went to it"
            } else {
                "the take-back failed"
            };
            format!("taken back in {} ({}): {how}", tb.from_state, tb.why)
        } else if self.switch.directed_at_ms.is_some() {
            "not completed".to_owned()
        } else {
            "never directed (the run stopped first)".to_owned()
        };
        let when = if self.switch.directed_at_ms.is_none() {
            when.replacen("directed", "planned", 1)
        } else {
            when
        };
        line(f, "handoff", format!("{when}: {outcome}"))?;
        line(f, "migration", self.migration_story())?;
        if let (Some(from), Some(to), Some(x)) =
            (&self.source_host, &self.destination_host, &self.cross_host)
        {
            let ms = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.1} ms"));
            line(
                f,
                "hosts",
                format!(
                    "{from} → {to}{}; disk over {}, migration over {}; drain {}, peer release {}, migration {}, disk arrival {}",
                    if x.rolled_back {
                        " (rolled back to the source)"
                    } else {
                        ""
                    },
                    self.storage,
                    self.migration_transport,
                    ms(x.port2_drain_ms),
                    ms(x.peer_release_ms),
                    ms(x.migration_ms),
                    ms(x.disk_arrival_ms),
                ),
            )?;
        }
        self.fmt_failbacks(f)?;
        if self.peer_failures > 0 || self.injected.is_some() {
            let injected = self
                .injected
                .as_ref()
                .map_or_else(String::new, |i| format!(" (injected: {i})"));
            line(
                f,
                "peer lost",
                format!(
                    "{} time(s){injected}; {} forwarded requests replayed on port 1; {}",
                    self.peer_failures,
                    self.requests_replayed,
                    if self.recovery.is_empty() {
                        "no recovery".to_owned()
                    } else {
                        self.recovery.join("; ")
                    }
                ),
            )?;
        }
        let owner = if self.owner_finished_at_destination {
            "finished its workload at the destination".to_owned()
        } else {
            format!(
                "exit {} at {}: {}",
                self.guest_exit.as_str(),
                opt(&self.guest_exit_where),
                self.guest_exit_reason
            )
        };
        line(f, "owner", owner)?;
        if self.peer_fault != "none" || self.peer_fault_detected {
            line(
                f,
                "peer fault",
                format!(
                    "{} injected; detected by the owner: {}{}",
                    self.peer_fault,
                    if self.peer_fault_detected {
                        "yes"
                    } else {
                        "no"
                    },
                    self.peer_fault_message
                        .as_ref()
                        .map_or_else(String::new, |m| format!(" ({m})"))
                ),
            )?;
        }
        Ok(())
    }

    /// The failback lines: one per cycle for a few cycles, else the count and the worst one.
    fn fmt_failbacks(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const SHOWN: usize = 3;
        if self.cycles_planned > 1 {
            line(
                f,
                "cycles",
                format!(
                    "{} of {} completed (handoff → {} → failback)",
                    self.cycles_completed,
                    self.cycles_planned,
                    if self.mode == "mixed" {
                        "live or save, alternating"
                    } else {
                        self.mode.as_str()
                    }
                ),
            )?;
        }
        if self.failback.is_empty() {
            if self.failback_planned {
                line(
                    f,
                    "failback",
                    "not directed: the run stopped before the owner's migration was over",
                )?;
            } else if self.mode != "none" {
                line(
                    f,
                    "failback",
                    "none (--no-failback): the owner keeps forwarding",
                )?;
            }
            return Ok(());
        }
        let one = |fb: &super::FailbackReport| {
            if fb.ok {
                format!(
                    "disk back at port 1 in {}, {} held requests sent first, blackout {}; ring closed",
                    ms(fb.failback_ms),
                    opt(&fb.requests_held_at_failback),
                    ms(fb.blackout_ms)
                )
            } else {
                format!(
                    "FAILED: {}",
                    fb.error.as_deref().unwrap_or("did not complete")
                )
            }
        };
        if self.failback.len() <= SHOWN {
            for fb in &self.failback {
                let label = if self.failback.len() == 1 {
                    "failback".to_owned()
                } else {
                    format!("failback {}", fb.cycle)
                };
                line(f, &label, one(fb))?;
            }
        } else {
            let ok = self.failback.iter().filter(|fb| fb.ok).count();
            let worst = self
                .failback
                .iter()
                .filter_map(|fb| fb.blackout_ms)
                .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x))));
            line(
                f,
                "failbacks",
                format!(
                    "{ok} of {} completed, longest blackout {}",
                    self.failback.len(),
                    ms(worst)
                ),
            )?;
            if let Some(bad) = self.failback.iter().find(|fb| !fb.ok) {
                line(f, &format!("failback {}", bad.cycle), one(bad))?;
            }
        }
        if let Some(n) = self.port1_requests_after_failback {
            line(
                f,
                "direct again",
                format!("{n} requests through port 1 after the last failback"),
            )?;
        }
        Ok(())
    }

    /// The migration's line: mode and outcome.
    fn migration_story(&self) -> String {
        let status = opt(&self.migration_status);
        let dest = opt(&self.destination_status);
        let mut s = match self.mode.as_str() {
            "none" if self.failback_planned => {
                "none (--mode none): the owner stayed at the source".to_owned()
            }
            "none" => "none (--mode none): the owner stayed at the source, forwarding".to_owned(),
            _ if self.migration_status.is_none() && self.migration_error.is_none() => {
                format!("{}: not started", self.mode)
            }
            "save" => {
                format!("saved to a file and restored: {status}; the restored QEMU is {dest}")
            }
            "mixed" => format!(
                "mixed, live and save alternating; the last: {status}; its destination is {dest}"
            ),
            m => format!("{m}: {status}; the destination is {dest}"),
        };
        if let Some(e) = &self.migration_error {
            s.push_str(&format!("; failed: {e}"));
        }
        if self.source_resumed {
            s.push_str("; the source was resumed");
        }
        s
    }

    /// `key figures`: held at switch, blackout, handoff, downtime, writes.
    fn fmt_figures(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "key figures")?;
        line(
            f,
            "held at switch",
            format!("{} requests", opt(&self.requests_queued_at_switch)),
        )?;
        line(
            f,
            "blackout",
            format!(
                "{} (the longest gap between two completions)",
                ms(self.blackout_ms)
            ),
        )?;
        line(
            f,
            "handoff",
            format!("{} (directed → port 2 open)", ms(self.phases.handoff_ms)),
        )?;
        if self.mode != "none" {
            let what = if self.mode == "save" {
                "save"
            } else {
                "migration"
            };
            let text = match self.migration_downtime_ms {
                Some(d) => format!(
                    "{d} ms (QEMU's; the {what} took {} ms)",
                    opt(&self.migration_total_ms)
                ),
                None => format!("- (no {what} completed)"),
            };
            line(f, "downtime", text)?;
        }
        let disk = self.disk.on_disk();
        let bad_reads = match self.read_mismatches {
            Some(n) if n > 0 => format!(", read back bad {n}"),
            _ => String::new(),
        };
        line(
            f,
            "writes",
            format!(
                "{} acked; {disk}; duplicated {}{bad_reads}",
                opt(&self.writes_acked),
                opt(&self.duplicated),
            ),
        )
    }

    /// `verdict`: OK, or FAILED and why.
    fn fmt_verdict(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.ok {
            writeln!(f, "verdict: OK")?;
        } else {
            writeln!(f, "verdict: FAILED")?;
            for why in &self.failures {
                writeln!(f, "  - {why}")?;
            }
        }
        let problems = &self.disk.verification_problems;
        for p in problems.iter().take(PROBLEMS_SHOWN) {
            writeln!(f, "  - disk: {p}")?;
        }
        if problems.len() > PROBLEMS_SHOWN {
            writeln!(
                f,
                "  - disk: {} more problems in the report",
                problems.len() - PROBLEMS_SHOWN
            )?;
        }
        if !self.notes.is_empty() {
            writeln!(f, "  ({} notes in the report)", self.notes.len())?;
        }
        Ok(())
    }

    /// `where`: the workdir, serial logs and disk image (no newline after the last line).
    fn fmt_places(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "where")?;
        if !self.artifacts_kept {
            let why = if Path::new(&self.workdir).exists() {
                "not all that this report names is still there: see its notes"
            } else {
                "removed with its logs and disk image: keep them with --keep or --workdir"
            };
            return write!(
                f,
                "{}",
                summary_line("workdir", format!("{} ({why})", self.workdir))
            );
        }
        line(f, "workdir", &self.workdir)?;
        let dir = Path::new(&self.workdir);
        let logs: Vec<&Path> = self.serial_logs.values().map(Path::new).collect();
        let text = if !logs.is_empty() && logs.iter().all(|p| p.parent() == Some(dir)) {
            let names: Vec<String> = logs
                .iter()
                .filter_map(|p| p.file_name())
                .map(|n| n.to_string_lossy().into_owned())
                .collect();
            format!("{} (in the workdir)", names.join(", "))
        } else if logs.is_empty() {
            "none (no guest started)".to_owned()
        } else {
            let paths: Vec<String> = logs.iter().map(|p| p.display().to_string()).collect();
            paths.join(", ")
        };
        match self.disk_image() {
            Some(img) => {
                line(f, "serial logs", text)?;
                write!(f, "{}", summary_line("disk image", img.display()))
            }
            None => write!(f, "{}", summary_line("serial logs", text)),
        }
    }
}

/// Writes one summary line and its newline.
fn line(f: &mut fmt::Formatter<'_>, label: &str, text: impl fmt::Display) -> fmt::Result {
    writeln!(f, "{}", summary_line(label, text))
}

/// The summary (see the module's doc); no newline after its last line.
impl fmt::Display for MigrateReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verdict = if self.ok { "OK" } else { "FAILED" };
        // QEMU's version without its distribution suffix (the report has it all).
        let qemu = self
            .qemu_version
            .as_deref()
            .and_then(|v| v.split_whitespace().next())
            .unwrap_or("-");
        writeln!(
            f,
            "baton migrate [{}]: {verdict}  (accel {}, QEMU {qemu}, ran {:.1} s)",
            self.mode,
            self.accel,
            self.elapsed_ms / 1000.0
        )?;
        self.fmt_story(f)?;
        self.fmt_figures(f)?;
        self.fmt_verdict(f)?;
        self.fmt_places(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_lines_share_one_column() {
        let a = summary_line("report", "r.json");
        let b = summary_line("held at switch", 3);
        assert_eq!(a.find("r.json"), b.find('3'));
        assert!(a.starts_with("  report "));
    }
}
