//! The targets of issue 4 against a benchmark report, each with what bounds it when missed.

use serde_json::Value;

use super::handoff::Disk;
use super::report::{BenchReport, Target};
use super::stats::round;
use crate::setup::GUEST_MEMORY_MIB;
use crate::steps::{self, Span};

/// The targets against the report.
pub(super) fn targets(r: &BenchReport) -> Vec<Target> {
    let ph = |s: &Span| r.handoffs.phase(s).map(|s| s.p50);
    let f = |x: Option<f64>| x.map_or("?".into(), |v| format!("{v:.1}"));
    let tcg = r.accel == "tcg";
    let mut out = Vec::new();
    let breakdown = format!(
        "medians: port-1 drain {} ms (before the blackout); in it: QEMU releases the drive {} ms \
         after `drained`, the shim acts {} ms later, device_add ∥ the owner's `released` {} ms, \
         the peer's PCI + virtio-blk bring-up {} ms, peer ready → first forwarded {} ms",
        f(ph(&steps::DIRECTED_TO_DRAINED)),
        f(ph(&steps::DRAINED_TO_DRIVE_RELEASED)),
        f(ph(&steps::SHIM_REACTION)),
        f(ph(&steps::TO_ATTACHED)),
        f(ph(&steps::PEER_INIT)),
        f(ph(&steps::READY_TO_FIRST_COMPLETION)),
    );
    out.push(Target {
        name: "handoff blackout, max".into(),
        target: "≤ 5 ms under KVM".into(),
        value: r.blackout_ms_max,
        met: if tcg {
            None
        } else {
            r.blackout_ms_max.map(|v| v <= 5.0)
        },
        note: if tcg {
            format!(
                "measured under TCG ({}); the target is for KVM. {breakdown}",
                r.accel_reason
            )
        } else {
            breakdown
        },
    });
    out.push(Target {
        name: "forwarded / direct IOPS, QD 32 (null-co)".into(),
        target: "≥ 0.9".into(),
        value: r.forwarded_over_direct_iops_qd32,
        met: r.forwarded_over_direct_iops_qd32.map(|v| v >= 0.9),
        note: format!(
            "port 1 before the switch, port 2 after it, same QEMU processes; forwarding keeps \
             three threads busy (the owner's vCPU, the peer's vCPU, the peer QEMU's I/O thread) \
             where direct I/O keeps two, on {} host CPUs; runs' range {}",
            r.machine.nproc,
            r.side_by_side
                .iter()
                .find(|s| s.disk == Disk::Null.as_str() && s.qd == 32)
                .and_then(|s| s.iops_ratio_range)
                .map_or("?".into(), |(a, b)| format!("{a:.2}–{b:.2}"))
        ),
    });
    out.push(Target {
        name: "forwarded / direct p50 latency, QD 1 (null-co)".into(),
        target: "≤ 1.5".into(),
        value: r.forwarded_over_direct_latency_qd1,
        met: r.forwarded_over_direct_latency_qd1.map(|v| v <= 1.5),
        note: format!(
            "a forwarded request crosses the ring twice and goes through the peer's virtio queue; \
             at QD 1 the owner's vCPU, the peer's vCPU and the peer QEMU's I/O thread all want a \
             core ({} CPUs here); p99 ratio {}",
            r.machine.nproc,
            f(r.side_by_side
                .iter()
                .find(|s| s.disk == Disk::Null.as_str() && s.qd == 1)
                .and_then(|s| s.p99_latency_ratio))
        ),
    });
    out.push(Target {
        name: format!("live migration downtime, {GUEST_MEMORY_MIB} MiB guest (median)"),
        target: "≤ 20 ms".into(),
        value: r.migration_downtime_ms,
        met: r.migration_downtime_ms.map(|v| v <= 20.0),
        note: format!(
            "QEMU's `downtime` of the live migration (x-ignore-shared; max {})",
            f(r.migration
                .get("live")
                .and_then(|m| m.downtime_ms)
                .map(|s| s.max))
        ),
    });
    out.push(Target {
        name: "idle guest CPU (peer waiting for its ring)".into(),
        target: "≤ 5 % of a core".into(),
        value: r.idle_cpu_percent,
        met: r.idle_cpu_percent.map(|v| v <= 5.0),
        note: r.idle.as_ref().map_or_else(
            || r.idle_error.clone().unwrap_or_default(),
            |i| {
                format!(
                    "owner waiting for a disk: {:.2} %",
                    i.owner_waiting_for_disk_percent
                )
            },
        ),
    });
    let red = |k: &str| {
        r.redirector_vs_mutex_4_threads
            .as_ref()
            .and_then(|v| v.get(k))
            .and_then(Value::as_f64)
    };
    let worst = match (red("direct"), red("forwarding")) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    out.push(Target {
        name: "redirector vs Mutex<VecDeque>, 4 threads (worse of direct, forwarding)".into(),
        target: "≥ 3×".into(),
        value: worst.map(|v| round(v, 2)),
        met: worst.map(|v| v >= 3.0),
        note: match (red("direct"), red("forwarding")) {
            (Some(a), Some(b)) => format!(
                "direct {a:.2}×, forwarding {b:.2}×; {} CPUs for 4 threads{}",
                r.machine.nproc,
                if r.machine.nproc < 4 {
                    " (time-sliced, not 4-way contention)"
                } else {
                    ""
                }
            ),
            _ => r
                .redirector
                .as_ref()
                .and_then(|x| x.error.clone())
                .unwrap_or_else(|| "not run".into()),
        },
    });
    out
}
