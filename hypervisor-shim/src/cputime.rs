//! Host CPU time of processes, from /proc (issue 12, item 3: the host CPU time per request of the
//! direct and the forwarded path, so that a CPU-bound miss shows as such).
//!
//! A process's CPU time is its utime + stime, all threads, in two forms:
//! - `/proc/<pid>/task/<tid>/schedstat`, first field: the time each live thread ran, in ns (the
//!   kernel's `sum_exec_runtime`, of which utime and stime are the split). Precise, but a thread
//!   that exited between two samples takes its time with it;
//! - `/proc/<pid>/stat`, fields 14 and 15 (`utime`, `stime`): the whole thread group, exited
//!   threads included, in clock ticks (`sysconf(_SC_CLK_TCK)`, 10 ms on Linux).
//!
//! [`ProcessSample::cpu_since`] takes the difference of two samples from the per-thread ns when
//! every thread of the earlier sample is still there (nothing was lost), else from the ticks.
//!
//! [`Marks`] holds the samples of a `migrate` scenario's QEMUs (owner and peer) at the owner's
//! first I/O, when the handoff is directed and when the owner's workload ends; [`Marks::report`]
//! turns them into the report's `cpu_time` ([`CpuTimeReport`]): per phase, the CPU time of every
//! QEMU of the run divided by the requests the owner completed in it.

use std::collections::BTreeMap;
use std::time::Instant;

use serde::Serialize;

/// Errors of reading a process's CPU time.
#[derive(Debug, thiserror::Error)]
pub enum CpuTimeError {
    /// `/proc/<pid>/stat` could not be read (the process is gone)
    #[error("cannot read /proc/{pid}/stat")]
    Read {
        /// The process.
        pid: u32,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// `/proc/<pid>/stat` did not have the expected fields
    #[error("/proc/{pid}/stat is malformed")]
    Malformed {
        /// The process.
        pid: u32,
    },
}

/// Where a CPU time difference comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CpuSource {
    /// The live threads' `schedstat` run times, ns.
    Schedstat,
    /// `/proc/<pid>/stat` utime + stime, whole process, clock ticks.
    Stat,
}

/// One process's CPU time at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessSample {
    /// The process.
    pub pid: u32,
    /// utime + stime of the whole thread group (exited threads included), µs, at tick resolution.
    pub stat_us: u64,
    /// `(tid, ns run)` of every live thread, sorted by tid (empty when schedstat is unavailable).
    pub threads: Vec<(u32, u64)>,
}

/// Clock ticks per second of `/proc/<pid>/stat` times.
pub fn clock_ticks_per_sec() -> u64 {
    // SAFETY: sysconf only reads a configuration value; it has no memory-safety preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(t).ok().filter(|&t| t > 0).unwrap_or(100)
}

/// `(utime, stime)` in ticks from the text of a `/proc/<pid>/stat` file. The command name
/// (field 2) may hold spaces and parentheses: fields are counted after its last `)`.
pub fn parse_stat(text: &str) -> Option<(u64, u64)> {
    let rest = &text[text.rfind(')')? + 1..];
    // After the name: field 3 (state) is the first; utime and stime are fields 14 and 15.
    let mut f = rest.split_ascii_whitespace().skip(11);
    let utime = f.next()?.parse().ok()?;
    let stime = f.next()?.parse().ok()?;
    Some((utime, stime))
}

/// The run time in ns from the text of a `schedstat` file (its first field).
pub fn parse_schedstat(text: &str) -> Option<u64> {
    text.split_ascii_whitespace().next()?.parse().ok()
}

/// The live threads' run times of `pid`, sorted by tid (empty when unavailable).
fn threads(pid: u32) -> Vec<(u32, u64)> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut out: Vec<(u32, u64)> = dir
        .filter_map(Result::ok)
        .filter_map(|e| {
            let tid: u32 = e.file_name().to_str()?.parse().ok()?;
            let text = std::fs::read_to_string(e.path().join("schedstat")).ok()?;
            Some((tid, parse_schedstat(&text)?))
        })
        .collect();
    out.sort_unstable();
    out
}

impl ProcessSample {
    /// Samples `pid` now.
    pub fn of(pid: u32) -> Result<Self, CpuTimeError> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map_err(|source| CpuTimeError::Read { pid, source })?;
        let (u, s) = parse_stat(&text).ok_or(CpuTimeError::Malformed { pid })?;
        let stat_us = (u + s).saturating_mul(1_000_000) / clock_ticks_per_sec();
        Ok(Self {
            pid,
            stat_us,
            threads: threads(pid),
        })
    }

    /// The CPU time the process used since `earlier` (a sample of the same process), in µs, and
    /// where it was taken from: the threads' ns when every thread of `earlier` is still live,
    /// else the whole process's ticks. `None` for another process.
    pub fn cpu_since(&self, earlier: &Self) -> Option<(f64, CpuSource)> {
        if self.pid != earlier.pid {
            return None;
        }
        let now: BTreeMap<u32, u64> = self.threads.iter().copied().collect();
        let kept = !earlier.threads.is_empty()
            && earlier
                .threads
                .iter()
                .all(|(tid, ns)| now.get(tid).is_some_and(|n| n >= ns));
        if kept {
            let before: u64 = earlier.threads.iter().map(|t| t.1).sum();
            let after: u64 = now.values().sum();
            Some(((after - before) as f64 / 1000.0, CpuSource::Schedstat))
        } else {
            let d = self.stat_us.saturating_sub(earlier.stat_us);
            Some((d as f64, CpuSource::Stat))
        }
    }
}

/// The samples of a run's QEMUs at one moment: `(label, sample)` per process, and when.
#[derive(Debug, Clone)]
pub struct Point {
    /// When the samples were taken.
    pub at: Instant,
    /// One per QEMU (`owner`, `peer`); a QEMU that could not be read is left out.
    pub processes: Vec<(&'static str, ProcessSample)>,
}

impl Point {
    /// Samples `pids` (`(label, pid)`) now.
    pub fn take(pids: &[(&'static str, u32)]) -> Self {
        Self::take_or(pids, &[])
    }

    /// Samples `pids` now; a process that cannot be read (it exited and was reaped) is taken
    /// from `last`, the samples read from the zombies of those that exited, by pid.
    pub fn take_or(pids: &[(&'static str, u32)], last: &[ProcessSample]) -> Self {
        Self {
            at: Instant::now(),
            processes: pids
                .iter()
                .filter_map(|&(l, pid)| {
                    let s = ProcessSample::of(pid)
                        .ok()
                        .or_else(|| last.iter().find(|s| s.pid == pid).cloned())?;
                    Some((l, s))
                })
                .collect(),
        }
    }
}

/// A phase boundary of a `migrate` scenario (the first cycle's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Boundary {
    /// The shim saw the owner's first I/O.
    FirstIo,
    /// The handoff is about to be directed.
    Directed,
    /// The shim saw the first forwarded completion.
    FirstForwarded,
    /// The shim saw the owner's result (its workload ended).
    End,
}

/// The samples of a `migrate` scenario's QEMUs at the phase boundaries (each taken once).
#[derive(Debug, Clone, Default)]
pub struct Marks {
    /// At [`Boundary::FirstIo`].
    pub first_io: Option<Point>,
    /// At [`Boundary::Directed`].
    pub directed: Option<Point>,
    /// At [`Boundary::FirstForwarded`].
    pub first_forwarded: Option<Point>,
    /// At [`Boundary::End`].
    pub end: Option<Point>,
}

/// One QEMU's CPU time in a phase.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProcessCpu {
    /// `owner` or `peer`.
    pub label: String,
    /// Its pid.
    pub pid: u32,
    /// CPU time (utime + stime, all threads), µs.
    pub cpu_us: f64,
    /// Where it was read.
    pub source: CpuSource,
}

/// The host CPU time of a run's QEMUs in one phase.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CpuPhase {
    /// Wall time of the phase, ms.
    pub wall_ms: f64,
    /// Each QEMU sampled at both ends of the phase.
    pub processes: Vec<ProcessCpu>,
    /// The sum over the QEMUs, µs (null when a QEMU of the run was not sampled at both ends: a
    /// migration replaced the owner's process).
    pub cpu_us: Option<f64>,
    /// The owner's requests completed in the phase.
    pub requests: Option<u64>,
    /// `cpu_us / requests`, µs per request.
    pub cpu_us_per_request: Option<f64>,
    /// `cpu_us / wall_ms / 10`: cores kept busy, in percent of one.
    pub cores_percent: Option<f64>,
}

/// The report's `cpu_time`: the host CPU time of every QEMU of the run (owner and peer) in the
/// direct and the forwarded phase.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CpuTimeReport {
    /// How the figures are taken.
    pub method: String,
    /// The owner's first I/O → the handoff directed: requests are port 1's completions.
    pub direct: Option<CpuPhase>,
    /// The handoff directed → the owner's workload ended: requests are port 2's completions (the
    /// blackout and the peer's bring-up included).
    pub forwarded: Option<CpuPhase>,
    /// The first forwarded completion → the owner's workload ended: the forwarded path without
    /// the switch (requests: port 2's completions).
    pub forwarded_after_switch: Option<CpuPhase>,
}

/// The phase from `a` to `b` with `requests` completed in it.
fn phase(a: &Point, b: &Point, requests: Option<u64>) -> CpuPhase {
    let processes: Vec<ProcessCpu> = b
        .processes
        .iter()
        .filter_map(|(label, s)| {
            let (_, earlier) = a
                .processes
                .iter()
                .find(|(l, e)| l == label && e.pid == s.pid)?;
            let (cpu_us, source) = s.cpu_since(earlier)?;
            Some(ProcessCpu {
                label: (*label).to_owned(),
                pid: s.pid,
                cpu_us: (cpu_us * 10.0).round() / 10.0,
                source,
            })
        })
        .collect();
    let complete = !processes.is_empty()
        && processes.len() == a.processes.len()
        && processes.len() == b.processes.len();
    let cpu_us =
        complete.then(|| (processes.iter().map(|p| p.cpu_us).sum::<f64>() * 10.0).round() / 10.0);
    let wall_ms = b.at.saturating_duration_since(a.at).as_secs_f64() * 1000.0;
    let round = |x: f64, d: f64| (x * d).round() / d;
    CpuPhase {
        wall_ms: round(wall_ms, 10.0),
        processes,
        cpu_us,
        requests,
        cpu_us_per_request: cpu_us
            .zip(requests.filter(|&r| r > 0))
            .map(|(c, r)| round(c / r as f64, 100.0)),
        cores_percent: cpu_us
            .filter(|_| wall_ms > 0.0)
            .map(|c| round(c / wall_ms / 10.0, 10.0)),
    }
}

impl Marks {
    /// Samples `pids` (`(label, pid)`) as boundary `b`, unless `b` was sampled already.
    pub fn mark(&mut self, b: Boundary, pids: &[(&'static str, u32)]) {
        self.mark_or(b, pids, &[]);
    }

    /// As [`Marks::mark`], a process already reaped taken from `last` ([`Point::take_or`]).
    pub fn mark_or(&mut self, b: Boundary, pids: &[(&'static str, u32)], last: &[ProcessSample]) {
        let slot = match b {
            Boundary::FirstIo => &mut self.first_io,
            Boundary::Directed => &mut self.directed,
            Boundary::FirstForwarded => &mut self.first_forwarded,
            Boundary::End => &mut self.end,
        };
        if slot.is_none() {
            *slot = Some(Point::take_or(pids, last));
        }
    }

    /// The report's `cpu_time`, with `port1` and `port2` the owner's completions on each port.
    pub fn report(&self, port1: Option<u64>, port2: Option<u64>) -> CpuTimeReport {
        let between = |a: &Option<Point>, b: &Option<Point>, n| match (a, b) {
            (Some(a), Some(b)) => Some(phase(a, b, n)),
            _ => None,
        };
        CpuTimeReport {
            method: format!(
                "utime + stime of every thread of each QEMU, from /proc/<pid>/task/*/schedstat \
                 (ns) or, when a thread exited, /proc/<pid>/stat ({} ticks/s)",
                clock_ticks_per_sec()
            ),
            direct: between(&self.first_io, &self.directed, port1),
            forwarded: between(&self.directed, &self.end, port2),
            forwarded_after_switch: between(&self.first_forwarded, &self.end, port2),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::time::Duration;

    fn spin(d: Duration) {
        let t = Instant::now();
        let mut x = 0u64;
        while t.elapsed() < d {
            x = std::hint::black_box(x.wrapping_add(1));
        }
    }

    #[test]
    fn stat_fields_after_a_name_with_spaces_and_parentheses() {
        let text = "42 (a b) c)) R 1 42 42 0 -1 4194304 96 0 0 0 17 5 0 0 20 0 1 0 301 3133440";
        assert_eq!(parse_stat(text), Some((17, 5)));
        assert_eq!(parse_stat("42 (x) R 1 2"), None);
        assert_eq!(parse_stat("no name"), None);
        assert_eq!(parse_schedstat("56300232 25260824 171\n"), Some(56_300_232));
        assert_eq!(parse_schedstat(""), None);
    }

    /// The shim's own process: its time grows with work (other tests' threads come and go, so
    /// either source may be used).
    #[test]
    fn own_process_cpu_time_grows_with_work() {
        let pid = std::process::id();
        let a = ProcessSample::of(pid).unwrap();
        assert!(!a.threads.is_empty(), "no /proc/{pid}/task/*/schedstat");
        spin(Duration::from_millis(60));
        let b = ProcessSample::of(pid).unwrap();
        let (us, _) = b.cpu_since(&a).unwrap();
        assert!(us > 0.0, "{us}");
        assert!(b.stat_us >= a.stat_us);
        assert!(b.cpu_since(&ProcessSample { pid: 1, ..a }).is_none());
        assert!(clock_ticks_per_sec() > 0);
    }

    /// The threads' ns while every earlier thread lives on (a new one counts in full); the
    /// whole process's ticks once one exited.
    #[test]
    fn threads_ns_unless_a_thread_exited() {
        let at = |stat_us, threads: &[(u32, u64)]| ProcessSample {
            pid: 7,
            stat_us,
            threads: threads.to_vec(),
        };
        let a = at(10_000, &[(7, 1_000_000), (8, 2_000_000)]);
        let b = at(20_000, &[(7, 1_500_000), (8, 2_250_000), (9, 250_000)]);
        assert_eq!(b.cpu_since(&a), Some((1000.0, CpuSource::Schedstat)));
        let c = at(40_000, &[(7, 1_600_000)]);
        assert_eq!(c.cpu_since(&b), Some((20_000.0, CpuSource::Stat)));
        assert_eq!(
            at(5, &[]).cpu_since(&at(3, &[])),
            Some((2.0, CpuSource::Stat))
        );
    }

    #[test]
    fn a_process_reaped_before_the_end_is_taken_from_its_zombie_sample() {
        // A child that exited: sampled while it is a zombie, then reaped.
        let mut child = std::process::Command::new("sh")
            .args(["-c", "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done"])
            .spawn()
            .unwrap();
        let pid = child.id();
        let start = Point::take(&[("owner", pid)]);
        assert_eq!(start.processes.len(), 1);
        // SAFETY: siginfo_t is plain data; waitid writes only into it (WNOWAIT: not reaped).
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: as above; this blocks until the child exited.
        let r = unsafe {
            libc::waitid(
                libc::P_PID,
                pid,
                &raw mut info,
                libc::WEXITED | libc::WNOWAIT,
            )
        };
        assert_eq!(r, 0);
        let zombie = ProcessSample::of(pid).unwrap();
        child.wait().unwrap();
        assert!(ProcessSample::of(pid).is_err(), "reaped: /proc has nothing");
        assert_eq!(Point::take(&[("owner", pid)]).processes.len(), 0);
        let end = Point::take_or(&[("owner", pid)], std::slice::from_ref(&zombie));
        assert_eq!(end.processes, [("owner", zombie)]);
        let p = phase(&start, &end, Some(10));
        assert!(
            p.cpu_us.is_some() && p.cpu_us_per_request.is_some(),
            "{p:?}"
        );
    }

    #[test]
    fn phases_per_request_and_a_replaced_process() {
        let pid = std::process::id();
        let a = Point::take(&[("owner", pid), ("peer", pid)]);
        spin(Duration::from_millis(20));
        let b = Point::take(&[("owner", pid), ("peer", pid)]);
        let mut marks = Marks {
            first_io: Some(a.clone()),
            directed: Some(b.clone()),
            ..Marks::default()
        };
        // Each boundary is sampled once.
        marks.mark(Boundary::Directed, &[("owner", 1)]);
        assert_eq!(marks.directed.as_ref().unwrap().processes.len(), 2);
        marks.mark(Boundary::FirstForwarded, &[("owner", pid)]);
        assert!(marks.first_forwarded.is_some() && marks.end.is_none());
        let r = marks.report(Some(100), Some(5));
        let d = r.direct.clone().unwrap();
        assert_eq!(d.processes.len(), 2);
        let cpu = d.cpu_us.unwrap();
        assert!(cpu > 0.0);
        assert!((d.cpu_us_per_request.unwrap() - cpu / 100.0).abs() < 0.01);
        assert!(r.forwarded.is_none());
        // The owner's process changed (a migration): no total.
        let c = Point::take(&[("owner", 1), ("peer", pid)]);
        let p = phase(&b, &c, Some(3));
        assert!(p.cpu_us.is_none() && p.cpu_us_per_request.is_none());
        assert_eq!(p.processes.len(), 1);
        assert!(phase(&a, &b, Some(0)).cpu_us_per_request.is_none());
        assert!(serde_json::to_value(&r).unwrap()["direct"]["cpu_us"].is_number());
    }
}
