//! The handoff timeline plot: completions per millisecond across one handoff, with the phases
//! shaded, as a self-contained SVG written by hand.
//!
//! Data: one `migrate` run's `completion_timeline` (the owner's completions in 1 ms bins of guest
//! time; bin 0 = its first submission, `BATON first-io`) and the shim's phase times. The two
//! clocks are aligned at the owner's first I/O: the shim knows when the `BATON first-io` line
//! arrived and directs an operator switch exactly `after_first_io_ms` later, so a phase at host
//! time `t` sits at bin `t − (directed_at_ms − after_first_io_ms)`. A paused guest's clock stops,
//! so after the migration's stop-and-copy the bins run behind the shim's clock by the downtime.

use std::fmt::Write as _;

use serde::Serialize;

use crate::report::MigrateReport;

use super::handoff::switch_bins;

const W: f64 = 1000.0;
const H: f64 = 460.0;
const LEFT: f64 = 60.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 56.0;
const PLOT_H: f64 = 250.0;

/// A shaded phase: name, colour, start and end in ms since the owner's first I/O.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Band {
    /// Phase name.
    pub name: String,
    /// Start, ms since the owner's first I/O.
    pub from_ms: f64,
    /// End.
    pub to_ms: f64,
    #[serde(skip)]
    colour: &'static str,
}

/// What the plot shows, for the report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PlotInfo {
    /// The run plotted: mode, queue depth, disk.
    pub run: String,
    /// Window shown, ms since the owner's first I/O.
    pub window_ms: (f64, f64),
    /// The shaded phases.
    pub bands: Vec<Band>,
    /// How host and guest times were aligned.
    pub alignment: String,
    /// Host `drained` time minus the end of the bin holding the last port-1 completion: how well
    /// the alignment holds (ideally about 0; the `drained` message takes a little while).
    pub alignment_check_ms: Option<f64>,
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Phase bands of a run, in ms since the owner's first I/O, and the alignment used.
fn bands(r: &MigrateReport) -> Result<(Vec<Band>, String), String> {
    let directed_at = r
        .switch
        .directed_at_ms
        .ok_or("the run has no directed time")?;
    let after = r
        .switch
        .after_first_io_ms
        .ok_or("the run's switch was not an operator switch at a known time after the first I/O")?;
    let first_io = directed_at - after as f64;
    let ph = &r.phases;
    let directed = directed_at - first_io;
    let mut out = Vec::new();
    let mut at = directed;
    for (name, dur, colour) in [
        (
            "directed → drained (port 1 drains)",
            ph.directed_to_drained_ms,
            "#9ecae1",
        ),
        (
            "drained → drive released (QEMU hot-unplug)",
            ph.drained_to_device_deleted_ms,
            "#fdae6b",
        ),
        (
            "released → peer ready (device_add, peer's virtio init)",
            ph.device_deleted_to_attached_ms,
            "#fdd0a2",
        ),
        (
            "peer ready → first forwarded",
            ph.attached_to_first_forwarded_ms,
            "#c7e9c0",
        ),
    ] {
        let Some(d) = dur else { break };
        out.push(Band {
            name: name.into(),
            from_ms: at,
            to_ms: at + d.max(0.0),
            colour,
        });
        at += d.max(0.0);
    }
    if let (Some(h), Some(setup), Some(m)) = (ph.handoff_ms, ph.migration_setup_ms, ph.migration_ms)
    {
        let cmd = directed + h + setup;
        out.push(Band {
            name: format!(
                "migration ({} ms downtime)",
                r.migration_downtime_ms.unwrap_or(0)
            ),
            from_ms: cmd,
            to_ms: cmd + m,
            colour: "#dadaeb",
        });
    }
    let how = format!(
        "bin 0 = the owner's first I/O = the shim's directed time ({directed_at:.1} ms) minus the operator switch point ({after} ms)"
    );
    Ok((out, how))
}

fn nice_step(span: f64, target_ticks: f64) -> f64 {
    let raw = (span / target_ticks).max(1e-9);
    let mag = 10f64.powf(raw.log10().floor());
    for m in [1.0, 2.0, 5.0, 10.0] {
        if m * mag >= raw {
            return m * mag;
        }
    }
    10.0 * mag
}

/// The SVG of `r`'s handoff, and what it shows.
pub fn svg(r: &MigrateReport) -> Result<(String, PlotInfo), String> {
    let t = r
        .completion_timeline
        .as_ref()
        .ok_or("the run has no completion timeline")?;
    if t.counts.is_empty() || t.bin_us == 0 {
        return Err("the run's completion timeline is empty".into());
    }
    let (bands, alignment) = bands(r)?;
    let bin_ms = t.bin_us as f64 / 1000.0;
    let first = bands.first().map_or(0.0, |b| b.from_ms);
    let last = bands.iter().map(|b| b.to_ms).fold(first, f64::max);
    let total_ms = t.counts.len() as f64 * bin_ms;
    let x0 = (first - 40.0).max(0.0);
    let x1 = (last + 60.0).min(total_ms).max(x0 + bin_ms);
    let drained_ms = bands.first().map(|b| b.to_ms);
    let alignment_check_ms = match (r.port1_requests.and_then(|p| switch_bins(t, p)), drained_ms) {
        (Some((last1, _)), Some(d)) => {
            Some(super::stats::round(d - (last1 + 1) as f64 * bin_ms, 1))
        }
        _ => None,
    };

    let first_bin = (x0 / bin_ms).floor() as usize;
    let last_bin = ((x1 / bin_ms).ceil() as usize).min(t.counts.len());
    let window = t.counts.get(first_bin..last_bin).unwrap_or(&[]);
    let ymax_raw = f64::from(window.iter().copied().max().unwrap_or(1).max(1));
    let ystep = nice_step(ymax_raw, 5.0);
    let ymax = (ymax_raw / ystep).ceil() * ystep;
    let pw = W - LEFT - RIGHT;
    let xs = |ms: f64| LEFT + (ms - x0) / (x1 - x0) * pw;
    let ys = |c: f64| TOP + PLOT_H - c / ymax * PLOT_H;

    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        s,
        r#"<rect x="0" y="0" width="{W}" height="{H}" fill="white"/>"#
    );
    let title = format!(
        "baton handoff: owner completions per {bin_ms} ms ({} mode, QD {}, {} writes, {}, accel {})",
        r.mode, r.qd, r.writes_total, r.backend, r.accel
    );
    let _ = writeln!(
        s,
        r#"<text x="{LEFT}" y="22" font-size="15" font-weight="bold">{}</text>"#,
        esc(&title)
    );
    let sub = format!(
        "blackout {:.1} ms (longest gap), handoff {:.1} ms; switch {} ms after the first I/O",
        r.blackout_ms.unwrap_or(f64::NAN),
        r.phases.handoff_ms.unwrap_or(f64::NAN),
        r.switch.after_first_io_ms.unwrap_or(0)
    );
    let _ = writeln!(s, r#"<text x="{LEFT}" y="40">{}</text>"#, esc(&sub));
    // Phase bands behind the bars.
    for b in &bands {
        let (a, z) = (b.from_ms.max(x0), b.to_ms.min(x1));
        if z <= a {
            continue;
        }
        let _ = writeln!(
            s,
            r#"<rect x="{:.2}" y="{TOP}" width="{:.2}" height="{PLOT_H}" fill="{}" opacity="0.8"><title>{}: {:.1} ms</title></rect>"#,
            xs(a),
            (xs(z) - xs(a)).max(0.5),
            b.colour,
            esc(&b.name),
            b.to_ms - b.from_ms
        );
    }
    // Bars.
    let bw = (pw * bin_ms / (x1 - x0)).max(0.5);
    for (k, &c) in window.iter().enumerate() {
        if c == 0 {
            continue;
        }
        let ms = (first_bin + k) as f64 * bin_ms;
        let y = ys(f64::from(c));
        let _ = writeln!(
            s,
            r##"<rect x="{:.2}" y="{y:.2}" width="{:.2}" height="{:.2}" fill="#3182bd"/>"##,
            xs(ms),
            (bw * 0.9).max(0.4),
            TOP + PLOT_H - y
        );
    }
    // Axes.
    let (bottom, right) = (TOP + PLOT_H, LEFT + pw);
    let _ = writeln!(
        s,
        r#"<line x1="{LEFT}" y1="{bottom}" x2="{right}" y2="{bottom}" stroke="black"/>"#
    );
    let _ = writeln!(
        s,
        r#"<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{bottom}" stroke="black"/>"#
    );
    let xstep = nice_step(x1 - x0, 10.0);
    let mut tick = (x0 / xstep).ceil() * xstep;
    while tick <= x1 + 1e-9 {
        let x = xs(tick);
        let _ = writeln!(
            s,
            r#"<line x1="{x:.2}" y1="{bottom}" x2="{x:.2}" y2="{:.2}" stroke="black"/><text x="{x:.2}" y="{:.2}" text-anchor="middle">{tick:.0}</text>"#,
            bottom + 4.0,
            bottom + 17.0
        );
        tick += xstep;
    }
    let _ = writeln!(
        s,
        r#"<text x="{:.2}" y="{:.2}" text-anchor="middle">ms since the owner's first I/O (guest time)</text>"#,
        LEFT + pw / 2.0,
        bottom + 34.0
    );
    let mut yt = 0.0;
    while yt <= ymax + 1e-9 {
        let y = ys(yt);
        let _ = writeln!(
            s,
            r#"<line x1="{:.2}" y1="{y:.2}" x2="{LEFT}" y2="{y:.2}" stroke="black"/><text x="{:.2}" y="{:.2}" text-anchor="end">{yt:.0}</text>"#,
            LEFT - 4.0,
            LEFT - 6.0,
            y + 4.0
        );
        yt += ystep;
    }
    let _ = writeln!(
        s,
        r#"<text x="16" y="{:.2}" transform="rotate(-90 16 {:.2})" text-anchor="middle">completions per bin</text>"#,
        TOP + PLOT_H / 2.0,
        TOP + PLOT_H / 2.0
    );
    // Legend.
    let mut ly = bottom + 52.0;
    for (i, b) in bands.iter().enumerate() {
        let lx = LEFT + if i % 2 == 0 { 0.0 } else { pw / 2.0 };
        let _ = writeln!(
            s,
            r#"<rect x="{lx:.2}" y="{:.2}" width="14" height="10" fill="{}"/><text x="{:.2}" y="{ly:.2}">{} — {:.1} ms</text>"#,
            ly - 9.0,
            b.colour,
            lx + 20.0,
            esc(&b.name),
            b.to_ms - b.from_ms
        );
        if i % 2 == 1 {
            ly += 18.0;
        }
    }
    if bands.len() % 2 == 1 {
        ly += 18.0;
    }
    let _ = writeln!(
        s,
        r##"<text x="{LEFT}" y="{:.2}" font-size="10" fill="#555">{}</text>"##,
        ly + 4.0,
        esc(
            "Phases from the shim's clock, aligned at the owner's first I/O; the guest's clock stops while it is paused, so bins after the migration lag by its downtime."
        )
    );
    s.push_str("</svg>\n");
    let info = PlotInfo {
        run: format!("{} mode, QD {}, {}", r.mode, r.qd, r.backend),
        window_ms: (super::stats::round(x0, 1), super::stats::round(x1, 1)),
        bands: bands
            .into_iter()
            .map(|mut b| {
                b.from_ms = super::stats::round(b.from_ms, 1);
                b.to_ms = super::stats::round(b.to_ms, 1);
                b
            })
            .collect(),
        alignment,
        alignment_check_ms,
    };
    Ok((s, info))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tick_steps_are_round() {
        assert_eq!(nice_step(300.0, 10.0), 50.0);
        assert_eq!(nice_step(95.0, 10.0), 10.0);
        assert_eq!(nice_step(7.0, 5.0), 2.0);
        assert_eq!(esc("a<b & c>"), "a&lt;b &amp; c&gt;");
    }
}
