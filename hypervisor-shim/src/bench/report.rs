//! The benchmark's report: its figures by step (direct runs, side by side, repeated handoffs,
//! migration), the targets, the host; written as JSON (field names are what BENCHMARKS.md and the
//! tests read: keep them).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;

use super::curves::CostCurves;
use super::handoff::HandoffRun;
use super::stats::Summary;
use super::{idle, plot, redirector};
use crate::report::PortStatsReport;
use crate::steps::Span;

/// Figures of one queue depth over the direct runs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DepthResult {
    /// Queue depth.
    pub qd: u16,
    /// Guest IOPS of every run.
    pub iops: Vec<u64>,
    /// QEMU spawn → first I/O of every run, in ms.
    pub boot_ms: Vec<f64>,
}

/// The direct runs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DirectRuns {
    /// Writes per run.
    pub writes_per_run: u64,
    /// Per queue depth.
    pub depths: Vec<DepthResult>,
}

/// Direct vs forwarded: one handoff run per repetition, figures are medians over them.
#[derive(Debug, Clone, Serialize)]
pub struct SideBySide {
    /// `null-co` or `tmpfs-file`.
    pub disk: String,
    /// Queue depth.
    pub qd: u16,
    /// Writes in the run.
    pub writes: u64,
    /// The owner asked for the handoff after this many writes.
    pub switch_after_writes: u64,
    /// Successful repetitions (the figures below are medians over them).
    pub reps: usize,
    /// Port 1: direct (virtio-blk); each field the median over the repetitions.
    pub direct: Option<PortStatsReport>,
    /// Port 2: forwarded over the ring through the peer; medians.
    pub forwarded: Option<PortStatsReport>,
    /// Forwarded IOPS / direct IOPS (median of the repetitions' ratios).
    pub iops_ratio: Option<f64>,
    /// Forwarded p50 latency / direct p50 latency (median of the repetitions' ratios; a p50
    /// below the histogram's 1 µs resolution counts as 1 µs).
    pub p50_latency_ratio: Option<f64>,
    /// Forwarded p99 latency / direct p99 latency (median of the repetitions' ratios).
    pub p99_latency_ratio: Option<f64>,
    /// Smallest and largest IOPS ratio of the repetitions.
    pub iops_ratio_range: Option<(f64, f64)>,
    /// Smallest and largest p50 latency ratio of the repetitions.
    pub p50_latency_ratio_range: Option<(f64, f64)>,
    /// The handoff blackout, ms (median).
    pub blackout_ms: Option<f64>,
    /// Host CPU time of the QEMUs (owner and peer) per port-1 request in the direct phase, µs
    /// (median of the repetitions; [`crate::cputime`]).
    pub direct_cpu_us_per_request: Option<f64>,
    /// The same per port-2 request in the forwarded phase, µs (median).
    pub forwarded_cpu_us_per_request: Option<f64>,
    /// The same per port-2 request from the first forwarded completion on (the forwarded path
    /// without the switch), µs (median).
    pub forwarded_after_switch_cpu_us_per_request: Option<f64>,
    /// Cores the QEMUs kept busy in the direct phase, percent of one (median).
    pub direct_cores_percent: Option<f64>,
    /// The same in the forwarded phase (median).
    pub forwarded_cores_percent: Option<f64>,
    /// The same from the first forwarded completion on (median).
    pub forwarded_after_switch_cores_percent: Option<f64>,
    /// Every repetition succeeded.
    pub ok: bool,
    /// Every repetition.
    pub runs: Vec<HandoffRun>,
}

/// Blackout and phases over the repeated handoffs.
#[derive(Debug, Clone, Serialize)]
pub struct HandoffStats {
    /// Handoffs run.
    pub count: usize,
    /// Of which succeeded.
    pub ok: usize,
    /// Disk, queue depth and writes of each.
    pub workload: String,
    /// The blackout (last port-1 → first port-2 completion), ms.
    pub blackout_ms: Option<Summary>,
    /// The failback's blackout (from `failback` to the first port-1 completion), ms.
    pub failback_blackout_ms: Option<Summary>,
    /// The longest gap anywhere in each run (the guest's `max_gap_us`), ms.
    pub max_gap_ms: Option<Summary>,
    /// Each phase reached by a successful run, ms, under its bench name
    /// ([`super::handoff::bench_spans`]).
    pub phases: BTreeMap<String, Summary>,
    /// Every run.
    pub runs: Vec<HandoffRun>,
}

impl HandoffStats {
    /// The summary of `span` over the handoffs, found under its bench name (`None`: no run
    /// reached it, or it is not a bench span).
    pub fn phase(&self, span: &Span) -> Option<&Summary> {
        self.phases.get(span.bench?)
    }
}

/// Migration figures of one mode.
#[derive(Debug, Clone, Serialize)]
pub struct MigrationStats {
    /// Runs with figures.
    pub runs: usize,
    /// QEMU's `downtime`, ms.
    pub downtime_ms: Option<Summary>,
    /// QEMU's `total-time`, ms.
    pub total_ms: Option<Summary>,
    /// `migrate` issued → the owner runs again (destination or restored QEMU), ms.
    pub migrate_to_running_ms: Option<Summary>,
}

/// A target of issue 4 and how this run compares.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    /// The figure.
    pub name: String,
    /// The target, as text.
    pub target: String,
    /// The measured value.
    pub value: Option<f64>,
    /// Whether it is met (`null`: not measurable on this host).
    pub met: Option<bool>,
    /// What bounds it, when missed (or why it cannot be measured).
    pub note: String,
}

/// The host.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// CPUs available.
    pub nproc: usize,
    /// `/proc/cpuinfo` model name.
    pub cpu_model: String,
    /// Host kernel release.
    pub host_kernel: String,
    /// `/proc/loadavg` when the benchmark started.
    pub loadavg_before: String,
    /// `/proc/loadavg` when it ended.
    pub loadavg_after: String,
}

/// The benchmark's report.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// `bench`.
    pub scenario: &'static str,
    /// Every run succeeded and every headline figure was obtained.
    pub ok: bool,
    /// Why not.
    pub failures: Vec<String>,
    /// Quick mode.
    pub quick: bool,
    /// Handoff blackout, median over the repeated handoffs, ms.
    pub blackout_ms_p50: Option<f64>,
    /// Handoff blackout, p99 (nearest rank), ms.
    pub blackout_ms_p99: Option<f64>,
    /// Handoff blackout, max, ms.
    pub blackout_ms_max: Option<f64>,
    /// Failback blackout, median over the repeated handoffs' failbacks, ms.
    pub failback_blackout_ms_p50: Option<f64>,
    /// Failback blackout, max, ms.
    pub failback_blackout_ms_max: Option<f64>,
    /// Forwarded / direct IOPS at QD 32 (`null-co`).
    pub forwarded_over_direct_iops_qd32: Option<f64>,
    /// Forwarded / direct p50 latency at QD 1 (`null-co`).
    pub forwarded_over_direct_latency_qd1: Option<f64>,
    /// Host CPU time of the QEMUs per request at QD 32 (`null-co`), µs: `{"direct",
    /// "forwarded"}` (medians of the side-by-side runs).
    pub cpu_us_per_request_qd32: Option<Value>,
    /// The same at QD 1.
    pub cpu_us_per_request_qd1: Option<Value>,
    /// Live migration downtime of the owner ([`crate::setup::GUEST_MEMORY_MIB`]), median, ms.
    pub migration_downtime_ms: Option<f64>,
    /// QEMU start → the guest's first I/O, median of the direct runs, ms.
    pub boot_to_first_io_ms: Option<f64>,
    /// An idle guest (the peer waiting for its ring) in percent of one core.
    pub idle_cpu_percent: Option<f64>,
    /// The redirector vs the `Mutex<VecDeque>` design (`mutex ns / baton ns`,
    /// `{"direct", "forwarding"}`): the worse over the bench's 1 and 2 threads since issue 12
    /// (the field keeps its issue-4 name).
    pub redirector_vs_mutex_4_threads: Option<Value>,
    /// The targets.
    pub targets: Vec<Target>,
    /// Accelerator.
    pub accel: String,
    /// Why.
    pub accel_reason: String,
    /// QEMU version.
    pub qemu_version: String,
    /// Guest machine.
    pub guest: String,
    /// Host.
    pub machine: Machine,
    /// Direct vs forwarded.
    pub side_by_side: Vec<SideBySide>,
    /// How the costs grow: blackout against queue depth and requests in flight, downtime
    /// against guest RAM.
    pub curves: CostCurves,
    /// The repeated handoffs.
    pub handoffs: HandoffStats,
    /// Migration figures by mode (`live`, `save`).
    pub migration: BTreeMap<String, MigrationStats>,
    /// The direct runs.
    pub direct: DirectRuns,
    /// Idle guests.
    pub idle: Option<idle::IdleResult>,
    /// Why the idle measurement failed.
    pub idle_error: Option<String>,
    /// The redirector bench.
    pub redirector: Option<redirector::RedirectorResult>,
    /// The plot: what it shows.
    pub plot: Option<plot::PlotInfo>,
    /// Why there is no plot.
    pub plot_error: Option<String>,
    /// Where the plot was written.
    pub plot_file: Option<String>,
    /// Where the cost curves' SVG was written.
    pub curves_file: Option<String>,
    /// Wall time, s.
    pub elapsed_s: f64,
    /// The plot's SVG text (written to a file by the caller).
    #[serde(skip)]
    pub plot_svg: Option<String>,
}

/// A file's text, trimmed (empty when unreadable).
pub(super) fn read_trim(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// The host, as the benchmark starts.
pub(super) fn machine() -> Machine {
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_owned())
        })
        .unwrap_or_default();
    Machine {
        nproc: std::thread::available_parallelism().map_or(0, usize::from),
        cpu_model,
        host_kernel: read_trim("/proc/sys/kernel/osrelease"),
        loadavg_before: read_trim("/proc/loadavg"),
        loadavg_after: String::new(),
    }
}

/// Writes the plot to `plot` (default: `handoff-timeline.svg` next to `json`), the cost curves
/// to `cost-curves.svg` next to the plot, and the report as JSON to `json`; returns the plot's
/// path, if one was written.
pub fn write_outputs(
    report: &mut BenchReport,
    json: Option<&Path>,
    plot: Option<&Path>,
) -> std::io::Result<Option<PathBuf>> {
    let plot_path = plot.map(Path::to_path_buf).or_else(|| {
        json.map(|j| {
            j.parent()
                .unwrap_or_else(|| Path::new("."))
                .join("handoff-timeline.svg")
        })
    });
    let mut written = None;
    if let Some(p) = &plot_path {
        let curves = p
            .parent()
            .unwrap_or_else(|| Path::new("."))
            .join("cost-curves.svg");
        let subtitle = format!(
            "accel {}, QEMU {}, {} CPUs ({}){}",
            report.accel,
            report.qemu_version,
            report.machine.nproc,
            report.machine.cpu_model,
            if report.quick { ", quick" } else { "" }
        );
        std::fs::write(&curves, super::curves::svg(&report.curves, &subtitle))?;
        report.curves_file = Some(curves.display().to_string());
    }
    if let (Some(svg), Some(p)) = (&report.plot_svg, plot_path) {
        std::fs::write(&p, svg)?;
        report.plot_file = Some(p.display().to_string());
        written = Some(p);
    }
    if let Some(path) = json {
        let text = serde_json::to_string_pretty(report).map_err(std::io::Error::other)?;
        std::fs::write(path, text + "\n")?;
    }
    Ok(written)
}
