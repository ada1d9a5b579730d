//! The handoff timeline plot: completions per millisecond across one handoff, with the phases
//! shaded, drawn as a self-contained SVG with `plotters`.
//!
//! Only plotters' SVG backend is used: its text is SVG `<text>` (the viewer picks the font), so
//! drawing needs no font files or system font libraries; a PNG would need plotters' `ttf` feature
//! and with it fontconfig/freetype, which a fresh CI machine lacks.
//!
//! Data: one `migrate` run's `completion_timeline` (the owner's completions in 1 ms bins of guest
//! time; bin 0 = its first submission, `BATON first-io`) and its phases from the run's handoff
//! record ([`PhaseTimes`], the bench's spans of [`crate::steps::SPANS`]). The two
//! clocks are aligned at the owner's first I/O: the shim knows when the `BATON first-io` line
//! arrived and directs an operator switch exactly `after_first_io_ms` later, so a phase at host
//! time `t` sits at bin `t − (directed_at_ms − after_first_io_ms)`. A paused guest's clock stops,
//! so after the migration's stop-and-copy the bins run behind the shim's clock by the downtime.

use plotters::prelude::*;
use plotters::style::FontStyle;
use serde::Serialize;

use crate::report::MigrateReport;
use crate::steps;

use super::handoff::{CHAIN, PhaseTimes, span_label, switch_bins};

/// Picture size in pixels.
const W: u32 = 1000;
const H: u32 = 460;
/// Left edge of the plot area (the y labels' width).
const LEFT: u32 = 60;
/// Right margin.
const RIGHT: u32 = 20;
/// Top of the plot area (title and subtitle above).
const TOP: u32 = 56;
/// Height of the plot area.
const PLOT_H: u32 = 250;
/// Height of the x labels and caption below the plot area.
const X_LABELS: u32 = 40;
/// Bar colour.
const BAR: RGBColor = RGBColor(0x31, 0x82, 0xbd);

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
    colour: RGBColor,
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

/// The colours of the bands of [`CHAIN`], in order.
const CHAIN_COLOURS: [RGBColor; CHAIN.len()] = [
    RGBColor(0x9e, 0xca, 0xe1),
    RGBColor(0xfd, 0xae, 0x6b),
    RGBColor(0xbc, 0xbd, 0xdc),
    RGBColor(0xfd, 0xd0, 0xa2),
    RGBColor(0xc7, 0xe9, 0xc0),
];

/// Phase bands of a run, in ms since the owner's first I/O, and the alignment used: the
/// consecutive phases of [`CHAIN`] (named by [`span_label`]), then the migration.
fn bands(r: &MigrateReport, ph: &PhaseTimes) -> Result<(Vec<Band>, String), String> {
    let directed_at = r
        .switch
        .directed_at_ms
        .ok_or("the run has no directed time")?;
    let after = r
        .switch
        .after_first_io_ms
        .ok_or("the run's switch was not an operator switch at a known time after the first I/O")?;
    let first_io = directed_at - after as f64;
    let directed = directed_at - first_io;
    let mut out = Vec::new();
    let mut at = directed;
    for (span, colour) in CHAIN.iter().zip(CHAIN_COLOURS) {
        let Some(d) = ph.get(span) else { break };
        out.push(Band {
            name: span_label(span),
            from_ms: at,
            to_ms: at + d.max(0.0),
            colour,
        });
        at += d.max(0.0);
    }
    if let (Some(h), Some(setup), Some(m)) = (
        ph.get(&steps::HANDOFF),
        ph.get(&steps::MIGRATION_SETUP),
        ph.get(&steps::MIGRATION),
    ) {
        let cmd = directed + h + setup;
        out.push(Band {
            name: format!(
                "migration ({} ms downtime)",
                r.migration_downtime_ms.unwrap_or(0)
            ),
            from_ms: cmd,
            to_ms: cmd + m,
            colour: RGBColor(0xda, 0xda, 0xeb),
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

/// What one picture shows: the window, the bins in it and the bands.
struct Scene<'a> {
    title: String,
    subtitle: String,
    /// Window shown, ms since the owner's first I/O.
    x: (f64, f64),
    bin_ms: f64,
    /// Index of the first bin of `window`.
    first_bin: usize,
    window: &'a [u16],
    bands: &'a [Band],
}

/// The SVG of `r`'s handoff, its phases `phases` (from the run's handoff record), and what it
/// shows.
pub fn svg(r: &MigrateReport, phases: &PhaseTimes) -> Result<(String, PlotInfo), String> {
    let t = r
        .completion_timeline
        .as_ref()
        .ok_or("the run has no completion timeline")?;
    if t.counts.is_empty() || t.bin_us == 0 {
        return Err("the run's completion timeline is empty".into());
    }
    let (bands, alignment) = bands(r, phases)?;
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
    let scene = Scene {
        title: format!(
            "baton handoff: owner completions per {bin_ms} ms ({} mode, QD {}, {} writes, {}, accel {})",
            r.mode, r.qd, r.writes_total, r.backend, r.accel
        ),
        subtitle: format!(
            "blackout {:.1} ms (the handoff's longest gap), handoff {:.1} ms; switch {} ms after the first I/O",
            r.cycles
                .first()
                .and_then(|c| c.handoff_blackout_ms)
                .or(r.blackout_ms)
                .unwrap_or(f64::NAN),
            phases.get(&steps::HANDOFF).unwrap_or(f64::NAN),
            r.switch.after_first_io_ms.unwrap_or(0)
        ),
        x: (x0, x1),
        bin_ms,
        first_bin,
        window: t.counts.get(first_bin..last_bin).unwrap_or(&[]),
        bands: &bands,
    };
    let mut s = String::new();
    draw(&scene, &mut s).map_err(|e| format!("drawing the plot: {e}"))?;
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

/// Draws `scene` into `out` as SVG: title, the phase bands behind the completion bars, axes, and a
/// legend with each phase's length below.
fn draw(scene: &Scene<'_>, out: &mut String) -> Result<(), Box<dyn std::error::Error>> {
    // plotters writes a font size of `size / 1.24` into the SVG: sizes here are the SVG's, in px.
    let font = |px: f64| ("sans-serif", px * 1.24).into_font();
    let root = SVGBackend::with_string(out, (W, H)).into_drawing_area();
    root.fill(&WHITE)?;
    let left = i32::try_from(LEFT)?;
    root.draw(&Text::new(
        scene.title.clone(),
        (left, 8),
        font(15.0).style(FontStyle::Bold),
    ))?;
    root.draw(&Text::new(scene.subtitle.clone(), (left, 30), font(12.0)))?;

    let (x0, x1) = scene.x;
    let ymax_raw = f64::from(scene.window.iter().copied().max().unwrap_or(1).max(1));
    let ystep = nice_step(ymax_raw, 5.0);
    let ymax = (ymax_raw / ystep).ceil() * ystep;
    let xstep = nice_step(x1 - x0, 10.0);
    let plot = root.margin(TOP, 0, 0, RIGHT);
    let (plot, below) = plot.split_vertically(PLOT_H + X_LABELS);
    let mut chart = ChartBuilder::on(&plot)
        .x_label_area_size(X_LABELS)
        .y_label_area_size(LEFT)
        .build_cartesian_2d(x0..x1, 0.0..ymax)?;
    chart
        .configure_mesh()
        .disable_mesh()
        .x_labels(((x1 - x0) / xstep) as usize + 1)
        .y_labels((ymax / ystep) as usize + 1)
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| format!("{v:.0}"))
        .x_desc("ms since the owner's first I/O (guest time)")
        .y_desc("completions per bin")
        .label_style(font(12.0))
        .axis_desc_style(font(12.0))
        .draw()?;
    // Phase bands behind the bars.
    chart.draw_series(scene.bands.iter().filter_map(|b| {
        let (a, z) = (b.from_ms.max(x0), b.to_ms.min(x1));
        (z > a).then(|| Rectangle::new([(a, 0.0), (z, ymax)], b.colour.mix(0.8).filled()))
    }))?;
    // One bar per non-empty bin, 90 % of the bin wide.
    let bin_ms = scene.bin_ms;
    chart.draw_series(
        scene
            .window
            .iter()
            .enumerate()
            .filter(|&(_, &c)| c > 0)
            .map(|(k, &c)| {
                let ms = (scene.first_bin + k) as f64 * bin_ms;
                Rectangle::new([(ms, 0.0), (ms + bin_ms * 0.9, f64::from(c))], BAR.filled())
            }),
    )?;

    // Legend: two columns, each phase with its length.
    let half = i32::try_from((W - LEFT - RIGHT) / 2)?;
    let mut y = 12;
    for (i, b) in scene.bands.iter().enumerate() {
        let x = left + if i % 2 == 0 { 0 } else { half };
        below.draw(&Rectangle::new(
            [(x, y), (x + 14, y + 10)],
            b.colour.filled(),
        ))?;
        let label = format!("{} — {:.1} ms", b.name, b.to_ms - b.from_ms);
        below.draw(&Text::new(label, (x + 20, y - 1), font(12.0)))?;
        if i % 2 == 1 {
            y += 18;
        }
    }
    if scene.bands.len() % 2 == 1 {
        y += 18;
    }
    let note = "Phases from the shim's clock, aligned at the owner's first I/O; the guest's clock stops while it is paused, so bins after the migration lag by its downtime.";
    below.draw(&Text::new(
        note,
        (left, y),
        font(10.0).color(&RGBColor(0x55, 0x55, 0x55)),
    ))?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tick_steps_are_round() {
        assert_eq!(nice_step(300.0, 10.0), 50.0);
        assert_eq!(nice_step(95.0, 10.0), 10.0);
        assert_eq!(nice_step(7.0, 5.0), 2.0);
    }

    /// A handoff at 100 ms: bars before, a gap while the bands run, bars after.
    pub(super) fn scene_svg() -> String {
        let counts: Vec<u16> = (0..300u16)
            .map(|ms| {
                if (100..150).contains(&ms) {
                    0
                } else {
                    20 + ms % 7
                }
            })
            .collect();
        let band = |name: &str, from_ms, to_ms, colour| Band {
            name: name.into(),
            from_ms,
            to_ms,
            colour,
        };
        let bands = [
            band(
                &span_label(&steps::DIRECTED_TO_DRAINED),
                100.0,
                104.0,
                RGBColor(1, 2, 3),
            ),
            band(
                &span_label(&steps::READY_TO_FIRST_COMPLETION),
                104.0,
                150.0,
                RGBColor(4, 5, 6),
            ),
            band("migration (3 ms downtime)", 160.0, 240.0, RGBColor(7, 8, 9)),
        ];
        let scene = Scene {
            title: "baton handoff: <test> & more".into(),
            subtitle: "blackout 50.0 ms".into(),
            x: (60.0, 290.0),
            bin_ms: 1.0,
            first_bin: 60,
            window: &counts[60..290],
            bands: &bands,
        };
        let mut s = String::new();
        draw(&scene, &mut s).unwrap();
        s
    }

    #[test]
    fn the_plot_is_one_svg_with_bars_bands_axes_and_legend() {
        let s = scene_svg();
        assert!(s.starts_with("<svg"), "{}", &s[..s.len().min(200)]);
        assert!(s.trim_end().ends_with("</svg>"));
        assert_eq!(s.matches("<svg").count(), 1);
        // 180 non-empty bins, 3 bands, 3 legend swatches, the background.
        assert_eq!(s.matches("<rect").count(), 180 + 3 + 3 + 1, "{s}");
        for text in [
            "baton handoff: &lt;test&gt; &amp; more",
            "blackout 50.0 ms",
            "ready → first completion (first forwarded) — 46.0 ms",
            "migration (3 ms downtime) — 80.0 ms",
            "completions per bin",
            "ms since the owner&apos;s first I/O (guest time)",
            "\n150\n",
        ] {
            assert!(s.contains(text), "{text} missing from {s}");
        }
        // The bands' colours, drawn behind the bars.
        assert!(s.contains(r##"opacity="0.8" fill="#010203"##));
    }
}
