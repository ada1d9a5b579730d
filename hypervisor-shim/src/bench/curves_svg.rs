//! The cost curves ([`super::curves`]) as one SVG, written by hand: three panels side by side,
//! the handoff blackout against the queue depth (median, min–max whisker), against the requests
//! in flight at the switch (one dot per run, coloured by mode), and the live migration's downtime
//! against the guest RAM (bars, each labelled with its value).

use std::fmt::Write as _;

use super::curves::CostCurves;

const W: f64 = 1200.0;
const H: f64 = 400.0;
const PANEL_W: f64 = 340.0;
const PANEL_H: f64 = 250.0;
const TOP: f64 = 90.0;
const LEFTS: [f64; 3] = [60.0, 460.0, 860.0];

/// The colour of a run's mode in the scatter.
fn mode_colour(mode: &str) -> &'static str {
    match mode {
        "live" => "#1f77b4",
        "save" => "#d62728",
        _ => "#2ca02c",
    }
}

/// A round upper bound for an axis showing values up to `max`, and its tick step.
fn axis(max: f64) -> (f64, f64) {
    let max = if max.is_finite() && max > 0.0 {
        max
    } else {
        1.0
    };
    let raw = max / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    ((max / step).ceil() * step, step)
}

/// One panel: its left edge, its y range and its x labels' positions.
struct Panel {
    left: f64,
    ymax: f64,
}

impl Panel {
    /// SVG y of value `v`.
    fn y(&self, v: f64) -> f64 {
        TOP + PANEL_H - (v / self.ymax).clamp(0.0, 1.05) * PANEL_H
    }

    /// The frame, title, y axis with ticks and the axes' names.
    fn frame(&self, s: &mut String, title: &str, xname: &str, yname: &str, step: f64) {
        let (l, b) = (self.left, TOP + PANEL_H);
        let _ = writeln!(
            s,
            r#"<text x="{l}" y="{}" font-size="13" font-weight="bold">{title}</text>"#,
            TOP - 14.0
        );
        let _ = writeln!(
            s,
            r##"<rect x="{l}" y="{TOP}" width="{PANEL_W}" height="{PANEL_H}" fill="none" stroke="#444"/>"##
        );
        let mut v = 0.0;
        while v <= self.ymax + step / 2.0 {
            let y = self.y(v);
            let _ = writeln!(
                s,
                r##"<line x1="{}" y1="{y:.1}" x2="{l}" y2="{y:.1}" stroke="#444"/><line x1="{l}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#eee"/><text x="{}" y="{:.1}" font-size="11" text-anchor="end">{}</text>"##,
                l - 4.0,
                l + PANEL_W,
                l - 6.0,
                y + 4.0,
                trim(v)
            );
            v += step;
        }
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" font-size="12" text-anchor="middle">{xname}</text>"#,
            l + PANEL_W / 2.0,
            b + 38.0
        );
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" font-size="12" text-anchor="middle" transform="rotate(-90 {} {})">{yname}</text>"#,
            l - 42.0,
            TOP + PANEL_H / 2.0,
            l - 42.0,
            TOP + PANEL_H / 2.0
        );
    }

    /// An x tick with its label at SVG x `x`.
    fn xtick(&self, s: &mut String, x: f64, label: &str) {
        let b = TOP + PANEL_H;
        let _ = writeln!(
            s,
            r##"<line x1="{x:.1}" y1="{b}" x2="{x:.1}" y2="{}" stroke="#444"/><text x="{x:.1}" y="{}" font-size="11" text-anchor="middle">{label}</text>"##,
            b + 4.0,
            b + 17.0
        );
    }
}

/// `v` without trailing zeros.
fn trim(v: f64) -> String {
    let t = format!("{v:.2}");
    t.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// The curves' SVG; `subtitle` names the run (accelerator, QEMU, host).
pub fn svg(c: &CostCurves, subtitle: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif">"#
    );
    let _ = writeln!(s, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="20" font-size="15" font-weight="bold">baton: how the costs grow</text><text x="{}" y="38" font-size="12">{}</text>"#,
        LEFTS[0],
        LEFTS[0],
        escape(subtitle)
    );
    qd_panel(&mut s, c);
    inflight_panel(&mut s, c);
    ram_panel(&mut s, c);
    s.push_str("</svg>\n");
    s
}

/// Escapes text for SVG.
fn escape(t: &str) -> String {
    t.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn qd_panel(s: &mut String, c: &CostCurves) {
    let ymax_raw = c
        .blackout_vs_qd
        .iter()
        .filter_map(|p| p.blackout_ms.map(|b| b.max))
        .fold(0.0, f64::max);
    let (ymax, step) = axis(ymax_raw);
    let p = Panel {
        left: LEFTS[0],
        ymax,
    };
    p.frame(
        s,
        "handoff blackout vs queue depth",
        "queue depth",
        "blackout, ms",
        step,
    );
    let n = c.blackout_vs_qd.len().max(1) as f64;
    for (i, q) in c.blackout_vs_qd.iter().enumerate() {
        let x = p.left + PANEL_W * (i as f64 + 0.5) / n;
        p.xtick(s, x, &q.qd.to_string());
        if let Some(b) = q.blackout_ms {
            let _ = writeln!(
                s,
                r##"<line x1="{x:.1}" y1="{:.1}" x2="{x:.1}" y2="{:.1}" stroke="#1f77b4" stroke-width="2"/><circle cx="{x:.1}" cy="{:.1}" r="5" fill="#1f77b4"><title>QD {}: median {:.1} ms, min {:.1}, max {:.1} ({} runs)</title></circle><text x="{:.1}" y="{:.1}" font-size="11">{:.1}</text>"##,
                p.y(b.min),
                p.y(b.max),
                p.y(b.p50),
                q.qd,
                b.p50,
                b.min,
                b.max,
                b.n,
                x + 8.0,
                p.y(b.p50) + 4.0,
                b.p50
            );
        }
    }
}

fn inflight_panel(s: &mut String, c: &CostCurves) {
    let pts = &c.blackout_vs_inflight;
    let (ymax, ystep) = axis(pts.iter().map(|p| p.blackout_ms).fold(0.0, f64::max));
    let (xmax, xstep) = axis(
        pts.iter()
            .map(|p| p.queued_at_switch as f64)
            .fold(8.0, f64::max),
    );
    let p = Panel {
        left: LEFTS[1],
        ymax,
    };
    p.frame(
        s,
        "blackout vs requests in flight at the switch",
        "requests held at port 2 while port 1 drained",
        "blackout, ms",
        ystep,
    );
    let x_of = |v: f64| p.left + PANEL_W * (v / xmax).clamp(0.0, 1.0);
    let mut v = 0.0;
    while v <= xmax + xstep / 2.0 {
        p.xtick(s, x_of(v), &trim(v));
        v += xstep;
    }
    for q in pts {
        let _ = writeln!(
            s,
            r#"<circle cx="{:.1}" cy="{:.1}" r="3.5" fill="{}" fill-opacity="0.7"><title>{} QD {} {}: {} in flight, {:.1} ms</title></circle>"#,
            x_of(q.queued_at_switch as f64),
            p.y(q.blackout_ms),
            mode_colour(&q.mode),
            q.mode,
            q.qd,
            q.disk,
            q.queued_at_switch,
            q.blackout_ms
        );
    }
    for (i, mode) in ["none", "live", "save"].iter().enumerate() {
        let y = TOP + 12.0 + 16.0 * i as f64;
        let _ = writeln!(
            s,
            r#"<circle cx="{:.1}" cy="{y:.1}" r="4" fill="{}"/><text x="{:.1}" y="{:.1}" font-size="11">{mode}</text>"#,
            p.left + PANEL_W - 50.0,
            mode_colour(mode),
            p.left + PANEL_W - 42.0,
            y + 4.0
        );
    }
}

fn ram_panel(s: &mut String, c: &CostCurves) {
    let pts = &c.downtime_vs_ram;
    let (ymax, step) = axis(
        pts.iter()
            .filter_map(|p| p.migration_downtime_ms)
            .fold(0.0_f64, |a, d| a.max(d as f64))
            * 1.15,
    );
    let p = Panel {
        left: LEFTS[2],
        ymax,
    };
    p.frame(
        s,
        "live migration downtime vs guest RAM",
        "guest RAM, MiB (one host)",
        "downtime, ms",
        step,
    );
    let n = pts.len().max(1) as f64;
    for (i, q) in pts.iter().enumerate() {
        let x = p.left + PANEL_W * (i as f64 + 0.5) / n;
        p.xtick(s, x, &q.guest_ram_mib.to_string());
        let label = match (q.migration_downtime_ms, q.migration_total_ms) {
            (Some(d), Some(t)) => format!("{d} ms (total {t})"),
            (Some(d), None) => format!("{d} ms"),
            _ => "failed".to_owned(),
        };
        let d = q.migration_downtime_ms.unwrap_or(0) as f64;
        let (y, bw) = (p.y(d), PANEL_W / n * 0.5);
        let _ = writeln!(
            s,
            r##"<rect x="{:.1}" y="{y:.1}" width="{bw:.1}" height="{:.1}" fill="#9467bd"><title>{} MiB: downtime {label}; total {} ms</title></rect><text x="{x:.1}" y="{:.1}" font-size="11" text-anchor="middle">{label}</text>"##,
            x - bw / 2.0,
            TOP + PANEL_H - y,
            q.guest_ram_mib,
            q.migration_total_ms.map_or("-".into(), |t| t.to_string()),
            y - 5.0
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::curves::{QdPoint, blackout_vs_inflight, tests::run};
    use crate::bench::hosts::RamPoint;
    use crate::bench::stats::Summary;

    #[test]
    fn axes_are_round() {
        assert_eq!(axis(7.3), (8.0, 2.0));
        let (m, st) = axis(0.0);
        assert!(
            (m - 1.0).abs() < 1e-9 && (st - 0.2).abs() < 1e-9,
            "{m} {st}"
        );
        assert_eq!(axis(64.0), (80.0, 20.0));
        assert_eq!(trim(2.50), "2.5");
        assert_eq!(trim(10.0), "10");
    }

    #[test]
    fn one_svg_with_every_point() {
        let runs = [run(1, 0, 3.0), run(64, 60, 9.0)];
        let (pts, bins) = blackout_vs_inflight(&runs);
        let c = CostCurves {
            blackout_vs_qd: vec![QdPoint {
                qd: 8,
                runs: 1,
                ok: 1,
                blackout_ms: Summary::of(&[4.0]),
                queued_at_switch: Summary::of(&[7.0]),
            }],
            qd_workload: String::new(),
            blackout_vs_inflight: pts,
            blackout_vs_inflight_bins: bins,
            downtime_vs_ram: vec![RamPoint {
                guest_ram_mib: 128,
                ok: true,
                migration_downtime_ms: Some(3),
                migration_total_ms: Some(90),
                failback_blackout_ms: None,
            }],
        };
        let text = svg(&c, "accel tcg <x>");
        assert!(text.starts_with("<svg") && text.trim_end().ends_with("</svg>"));
        assert_eq!(text.matches("<svg").count(), 1);
        assert!(text.contains("&lt;x&gt;"));
        // One dot per QD point, one per run, one bar per RAM size (plus legend dots).
        assert_eq!(text.matches("<title>QD 8").count(), 1);
        assert_eq!(text.matches("in flight,").count(), 2);
        assert_eq!(text.matches("128 MiB: downtime 3 ms (total 90)").count(), 1);
        let mut md = String::new();
        c.markdown(&mut md);
        assert!(md.contains("| 8 | 1/1 | 4.0 [4.0–4.0] | 7 [7–7] |"), "{md}");
        assert!(md.contains("| 128 | 3.0 | 90.0 | – | yes |"), "{md}");
    }
}
