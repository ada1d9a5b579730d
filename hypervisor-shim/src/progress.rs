//! The progress display of `migrate` and `bench`: timestamped lines on stderr (when asked for),
//! and for `migrate` also kept for its report's `timeline`.
//!
//! The lines are for people. Figures are taken from typed records ([`crate::steps`]), never parsed
//! back from these lines.

use std::fmt;
use std::time::Instant;

use crate::report::TimelineEntry;
use crate::steps::{Step, ms_between};

/// How the time of a line is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Clock {
    /// `[   533.3 ms] ...`, lines kept (`migrate`).
    Millis,
    /// `[bench    12.3 s] ...`, nothing kept (`bench`: long runs of whole scenarios).
    BenchSeconds,
}

/// Timestamped progress lines: the time since `t0`, then what happened.
#[derive(Debug)]
pub struct Progress {
    t0: Instant,
    print: bool,
    clock: Clock,
    lines: Vec<TimelineEntry>,
}

impl Progress {
    /// Lines in ms since `t0`, printed when `print`, kept for [`Progress::take_lines`].
    pub fn new(t0: Instant, print: bool) -> Self {
        Self {
            t0,
            print,
            clock: Clock::Millis,
            lines: Vec::new(),
        }
    }

    /// The benchmark's display: seconds since `t0`, tagged `bench`, not kept.
    pub fn bench(t0: Instant, print: bool) -> Self {
        Self {
            t0,
            print,
            clock: Clock::BenchSeconds,
            lines: Vec::new(),
        }
    }

    /// The display's start.
    pub fn t0(&self) -> Instant {
        self.t0
    }

    /// One line.
    pub fn say(&mut self, what: impl Into<String>) {
        let what = what.into();
        match self.clock {
            Clock::Millis => {
                let at_ms = ms_between(self.t0, Instant::now());
                if self.print {
                    eprintln!("[{at_ms:8.1} ms] {what}");
                }
                self.lines.push(TimelineEntry { at_ms, what });
            }
            Clock::BenchSeconds => {
                if self.print {
                    eprintln!("[bench {:7.1} s] {what}", self.t0.elapsed().as_secs_f64());
                }
            }
        }
    }

    /// The line of a handoff step: `"{step}: {detail}"`, under the step's own name.
    pub fn step(&mut self, step: Step, detail: impl fmt::Display) {
        self.say(format!("{}: {detail}", step.label()));
    }

    /// The line of a failback step: `"failback {step}: {detail}"`.
    pub fn fb_step(&mut self, step: Step, detail: impl fmt::Display) {
        self.say(format!("failback {}: {detail}", step.label()));
    }

    /// The lines kept so far (emptied).
    pub fn take_lines(&mut self) -> Vec<TimelineEntry> {
        std::mem::take(&mut self.lines)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_kept_under_the_step_name() {
        let mut p = Progress::new(Instant::now(), false);
        p.step(Step::Drained, "port 1 completed 3 requests");
        p.say("plain");
        let l = p.take_lines();
        assert_eq!(l.len(), 2);
        assert_eq!(l[0].what, "drained: port 1 completed 3 requests");
        assert!(l[0].at_ms >= 0.0 && l[1].at_ms >= l[0].at_ms);
        assert!(p.take_lines().is_empty());
        let mut b = Progress::bench(Instant::now(), false);
        b.say("x");
        assert!(b.take_lines().is_empty());
    }
}
