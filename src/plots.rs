//! PNG plots of a pruning run: the NeuroAL score against λ for each step (winner marked), the
//! per-block sparsity of uniform / OWL / the chosen top-up, and histograms of row sparsities per
//! layer type. Text needs a TrueType font: the first system font found is used; with none, the
//! plots are drawn without labels rather than not at all.

use std::path::Path;
use std::sync::OnceLock;

use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::error::Result;
use crate::mask::Sparsity;
use crate::topup::Map;
use crate::{bail, err};

const FONT_CANDIDATES: [&str; 8] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/System/Library/Fonts/Supplemental/Arial.ttf",
    "/Library/Fonts/Arial.ttf",
    "C:\\Windows\\Fonts\\arial.ttf",
    "/usr/share/fonts/noto/NotoSans-Regular.ttf",
];

/// Registers a system font under "sans-serif" once; whether one was found.
fn has_font() -> bool {
    static FOUND: OnceLock<bool> = OnceLock::new();
    *FOUND.get_or_init(|| {
        FONT_CANDIDATES.iter().any(|p| match std::fs::read(p) {
            Ok(bytes) => plotters::style::register_font("sans-serif", FontStyle::Normal, Box::leak(bytes.into_boxed_slice())).is_ok(),
            Err(_) => false,
        })
    })
}

fn draw_err<E: std::fmt::Debug>(e: E) -> crate::error::Error {
    err!("cannot draw plot: {e:?}")
}

/// Score against λ for one search step, the winner circled.
fn score_curve(path: &Path, title: &str, points: &[(f64, f64)], chosen: Option<f64>) -> Result<()> {
    let root = BitMapBackend::new(path, (800, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(draw_err)?;
    let (x0, x1) = (0.0, points.iter().map(|p| p.0).fold(0.0, f64::max).max(0.01));
    let y0 = points.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
    let y1 = points.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max);
    let pad = ((y1 - y0) * 0.1).max(y1.abs() * 1e-6).max(1e-12);
    let text = has_font();
    let mut builder = ChartBuilder::on(&root);
    builder.margin(15).x_label_area_size(if text { 40 } else { 5 }).y_label_area_size(if text { 80 } else { 5 });
    if text {
        builder.caption(title, ("sans-serif", 22));
    }
    let mut chart = builder.build_cartesian_2d(x0..x1 * 1.05, (y0 - pad)..(y1 + pad)).map_err(draw_err)?;
    // Enough decimals that neighbouring ticks (about ten over the range) read differently.
    let step = (y1 - y0 + 2.0 * pad) / 10.0;
    let decimals = (-step.log10()).ceil().max(0.0) as usize + 1;
    let y_label = |v: &f64| format!("{v:.decimals$}");
    let mut mesh = chart.configure_mesh();
    if text {
        mesh.x_desc("λ").y_desc("alignment score (lower is better)").y_label_formatter(&y_label);
    } else {
        mesh.x_labels(0).y_labels(0);
    }
    mesh.draw().map_err(draw_err)?;
    chart.draw_series(LineSeries::new(points.iter().copied(), &BLUE)).map_err(draw_err)?;
    chart.draw_series(points.iter().map(|&p| Circle::new(p, 3, BLUE.filled()))).map_err(draw_err)?;
    if let Some(l) = chosen && let Some(&p) = points.iter().find(|p| p.0 == l) {
        chart.draw_series(std::iter::once(Circle::new(p, 8, RED.stroke_width(3)))).map_err(draw_err)?;
    }
    root.present().map_err(draw_err)
}

/// Per-block sparsity, one line per named series.
fn block_lines(path: &Path, series: &[(String, Vec<f64>)]) -> Result<()> {
    let root = BitMapBackend::new(path, (800, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(draw_err)?;
    let blocks = series.iter().map(|s| s.1.len()).max().unwrap_or(1);
    let lo = series.iter().flat_map(|s| s.1.iter().copied()).fold(1.0, f64::min);
    let hi = series.iter().flat_map(|s| s.1.iter().copied()).fold(0.0, f64::max);
    let text = has_font();
    let mut builder = ChartBuilder::on(&root);
    builder.margin(15).x_label_area_size(if text { 40 } else { 5 }).y_label_area_size(if text { 60 } else { 5 });
    if text {
        builder.caption("sparsity per block", ("sans-serif", 22));
    }
    let mut chart = builder.build_cartesian_2d(0f64..(blocks.max(2) - 1) as f64, (lo - 0.05).max(0.0)..(hi + 0.05).min(1.0)).map_err(draw_err)?;
    let mut mesh = chart.configure_mesh();
    if text {
        mesh.x_desc("block").y_desc("sparsity");
    } else {
        mesh.x_labels(0).y_labels(0);
    }
    mesh.draw().map_err(draw_err)?;
    let colors = [BLACK, BLUE, RED, GREEN, MAGENTA];
    for (i, (name, values)) in series.iter().enumerate() {
        let color = colors[i % colors.len()];
        let line = chart
            .draw_series(LineSeries::new(values.iter().enumerate().map(|(b, &v)| (b as f64, v)), color.stroke_width(2)))
            .map_err(draw_err)?;
        if text {
            line.label(name.as_str()).legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        }
    }
    if text {
        chart.configure_series_labels().background_style(WHITE).border_style(BLACK).draw().map_err(draw_err)?;
    }
    root.present().map_err(draw_err)
}

/// One histogram of row sparsities per layer type, over all blocks.
/// `names`: the family's linears, one panel each, four panels to a row.
fn row_histograms(path: &Path, map: &Map, names: &[&str]) -> Result<()> {
    let rows = names.len().div_ceil(4).max(1);
    let root = BitMapBackend::new(path, (1400, 350 * rows as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(draw_err)?;
    let text = has_font();
    let panels = root.split_evenly((rows, 4));
    const BINS: usize = 40;
    for (li, area) in panels.iter().take(names.len()).enumerate() {
        let mut counts = [0u32; BINS];
        for block in map {
            let rows: Vec<f64> = match &block[li] {
                Sparsity::PerRow(v) => v.clone(),
                Sparsity::Uniform(s) => vec![*s],
            };
            for s in rows {
                counts[((s * BINS as f64) as usize).min(BINS - 1)] += 1;
            }
        }
        let top = *counts.iter().max().unwrap_or(&1) as f64;
        let mut builder = ChartBuilder::on(area);
        builder.margin(10).x_label_area_size(if text { 40 } else { 5 }).y_label_area_size(if text { 60 } else { 5 });
        if text {
            builder.caption(names[li], ("sans-serif", 16));
        }
        let mut chart = builder.build_cartesian_2d(0f64..1f64, 0f64..top * 1.1).map_err(draw_err)?;
        let mut mesh = chart.configure_mesh();
        if text {
            mesh.x_desc("row sparsity").y_desc("rows").y_label_formatter(&|v| format!("{v:.0}"));
        } else {
            mesh.x_labels(0).y_labels(0);
        }
        mesh.draw().map_err(draw_err)?;
        chart
            .draw_series(counts.iter().enumerate().filter(|(_, c)| **c > 0).map(|(i, &c)| {
                let x = i as f64 / BINS as f64;
                Rectangle::new([(x, 0.0), (x + 1.0 / BINS as f64, c as f64)], BLUE.mix(0.6).filled())
            }))
            .map_err(draw_err)?;
    }
    root.present().map_err(draw_err)
}


/// Writes every plot the run has material for into `dir`; returns the files written.
pub fn write_all(dir: &Path, topup: &crate::report::TopUpReport, blocks: &[(String, Vec<f64>)], map: &Map, names: &[&str]) -> Result<Vec<String>> {
    std::fs::create_dir_all(dir).map_err(|e| err!("cannot create {}: {e}", dir.display()))?;
    if !dir.is_dir() {
        bail!("{}: not a folder", dir.display());
    }
    let mut written = Vec::new();
    for (scores, lambda, file, title) in [
        (&topup.block_scores, topup.lambda_block, "neuroal_block_step.png", "NeuroAL block step"),
        (&topup.row_scores, topup.lambda_row, "neuroal_row_step.png", "NeuroAL row step"),
    ] {
        let points: Vec<(f64, f64)> = scores.iter().map(|p| (p[0], p[1])).collect();
        if !points.is_empty() {
            score_curve(&dir.join(file), title, &points, lambda)?;
            written.push(file.to_string());
        }
    }
    block_lines(&dir.join("block_sparsity.png"), blocks)?;
    written.push("block_sparsity.png".into());
    row_histograms(&dir.join("row_sparsity.png"), map, names)?;
    written.push("row_sparsity.png".into());
    Ok(written)
}
