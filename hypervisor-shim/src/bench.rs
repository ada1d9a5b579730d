//! `hypervisor-shim bench`: direct-path IOPS at several queue depths and boot to first I/O, measured
//! with repeated [`crate::run`] runs on the `null-co` backend (4 KiB writes; no data kept, so the
//! figure is the virtio/VMM path, not the host's storage).

use std::fmt::Write as _;

use serde::Serialize;

use crate::report::RunReport;
use crate::run::{self, BackendKind, RunConfig, RunError};

/// Figures of one queue depth over all runs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DepthResult {
    /// Queue depth.
    pub qd: u16,
    /// Guest IOPS of every run.
    pub iops: Vec<u64>,
    /// QEMU spawn → first I/O of every run, in ms.
    pub boot_ms: Vec<f64>,
}

/// Result of a benchmark.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BenchReport {
    /// Accelerator used.
    pub accel: String,
    /// Why it was chosen.
    pub accel_reason: String,
    /// QEMU version.
    pub qemu_version: String,
    /// Machine type, memory and firmware.
    pub machine: String,
    /// Writes per run.
    pub writes_per_run: u64,
    /// Per queue depth.
    pub depths: Vec<DepthResult>,
}

/// Errors of a benchmark.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// a run could not be set up
    #[error(transparent)]
    Run(#[from] RunError),
    /// a run failed
    #[error("benchmark run at qd {qd} failed: {why}")]
    Failed {
        /// Queue depth.
        qd: u16,
        /// The report's failures.
        why: String,
    },
}

/// Runs `runs` null-backend runs of `base` at each queue depth.
pub fn bench(base: &RunConfig, depths: &[u16], runs: u32) -> Result<BenchReport, BenchError> {
    let mut out = BenchReport {
        accel: String::new(),
        accel_reason: String::new(),
        qemu_version: String::new(),
        machine: "pc, 128 MiB, qboot, 1 vCPU, virtio-blk-pci on null-co".into(),
        writes_per_run: base.blocks.saturating_mul(u64::from(base.passes)),
        depths: Vec::new(),
    };
    for &qd in depths {
        let mut d = DepthResult {
            qd,
            iops: Vec::new(),
            boot_ms: Vec::new(),
        };
        for _ in 0..runs {
            let cfg = RunConfig {
                backend: BackendKind::Null,
                qd,
                hotplug_disk: false,
                guest_panic: false,
                ..base.clone()
            };
            let r: RunReport = run::run(&cfg)?.report;
            if !r.ok {
                return Err(BenchError::Failed {
                    qd,
                    why: r.failures.join("; "),
                });
            }
            out.accel = r.accel.clone();
            out.accel_reason = r.accel_reason.clone();
            out.qemu_version = r.qemu_version.clone().unwrap_or_default();
            d.iops.push(r.iops.unwrap_or(0));
            d.boot_ms.push(r.boot_ms.unwrap_or(f64::NAN));
        }
        out.depths.push(d);
    }
    Ok(out)
}

fn median_u64(v: &[u64]) -> u64 {
    let mut s = v.to_vec();
    s.sort_unstable();
    s.get(s.len() / 2).copied().unwrap_or(0)
}

fn median_f64(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s.get(s.len() / 2).copied().unwrap_or(f64::NAN)
}

impl BenchReport {
    /// A Markdown table of medians (min–max in brackets).
    pub fn markdown(&self) -> String {
        let mut t = String::new();
        let _ = writeln!(
            t,
            "accel {} ({}), QEMU {}, {}; {} × 4 KiB writes per run",
            self.accel, self.accel_reason, self.qemu_version, self.machine, self.writes_per_run
        );
        let _ = writeln!(t);
        let _ = writeln!(
            t,
            "| QD | runs | IOPS median [min–max] | boot → first I/O median [min–max] |"
        );
        let _ = writeln!(t, "|---:|---:|---:|---:|");
        for d in &self.depths {
            let (imin, imax) = (
                d.iops.iter().min().copied().unwrap_or(0),
                d.iops.iter().max().copied().unwrap_or(0),
            );
            let bmin = d.boot_ms.iter().copied().fold(f64::INFINITY, f64::min);
            let bmax = d.boot_ms.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let _ = writeln!(
                t,
                "| {} | {} | {} [{imin}–{imax}] | {:.0} ms [{bmin:.0}–{bmax:.0}] |",
                d.qd,
                d.iops.len(),
                median_u64(&d.iops),
                median_f64(&d.boot_ms),
            );
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_shows_medians() {
        let r = BenchReport {
            accel: "tcg".into(),
            accel_reason: "--accel tcg".into(),
            qemu_version: "7.2.22".into(),
            machine: "pc".into(),
            writes_per_run: 100,
            depths: vec![DepthResult {
                qd: 32,
                iops: vec![30, 10, 20],
                boot_ms: vec![90.0, 100.0, 80.0],
            }],
        };
        let md = r.markdown();
        assert!(
            md.contains("| 32 | 3 | 20 [10–30] | 90 ms [80–100] |"),
            "{md}"
        );
    }
}
