//! PNG plots of a pruning run: the NeuroAL score against λ for each step (winner marked), the
//! per-block sparsity of uniform / OWL / the chosen top-up, and histograms of row sparsities per
//! layer type. Text needs a TrueType font: the first system font found is used; with none, one
//! warning line says so and the plots are drawn without labels rather than not at all.

use std::path::Path;

use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::io::error::Result;
use crate::prune::mask::Sparsity;
use crate::prune::spread::Map;
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

/// Registers the first system font found under "sans-serif" (plotters keeps it for the
/// process; a run draws its plots once); whether one was found.
fn register_font() -> bool {
    let found = FONT_CANDIDATES.iter().any(|p| match std::fs::read(p) {
        Ok(bytes) => {
            plotters::style::register_font("sans-serif", FontStyle::Normal, Box::leak(bytes.into_boxed_slice())).is_ok()
        }
        Err(_) => false,
    });
    if !found {
        eprintln!(
            "warning: no TrueType font found (DejaVu Sans, Liberation Sans, Arial or Noto Sans); the plots have no labels"
        );
    }
    found
}

/// Tick labels with as many decimals as the ticks' spacing needs, so that no two neighbouring
/// ticks read the same: `labels` ticks over `span` are at least `span / labels / 2.5` apart
/// (plotters rounds the spacing down to 1, 2 or 5 times a power of ten).
fn tick_decimals(span: f64, labels: usize) -> usize {
    let spacing = span / labels as f64 / 2.5;
    if !(spacing.is_finite() && spacing > 0.0) {
        return 1;
    }
    (-spacing.log10()).ceil().max(0.0) as usize
}

const Y_LABELS: usize = 8;

fn draw_err<E: std::fmt::Debug>(e: E) -> crate::io::error::Error {
    err!("cannot draw plot: {e:?}")
}

/// Score against λ for one search step, the winner circled.
fn score_curve(path: &Path, title: &str, points: &[(f64, f64)], chosen: Option<f64>, text: bool) -> Result<()> {
    let root = BitMapBackend::new(path, (800, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(draw_err)?;
    let (x0, x1) = (0.0, points.iter().map(|p| p.0).fold(0.0, f64::max).max(0.01));
    let y0 = points.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
    let y1 = points.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max);
    let pad = ((y1 - y0) * 0.1).max(y1.abs() * 1e-6).max(1e-12);
    let mut builder = ChartBuilder::on(&root);
    builder.margin(15).x_label_area_size(if text { 40 } else { 5 }).y_label_area_size(if text { 80 } else { 5 });
    if text {
        builder.caption(title, ("sans-serif", 22));
    }
    let mut chart = builder.build_cartesian_2d(x0..x1 * 1.05, (y0 - pad)..(y1 + pad)).map_err(draw_err)?;
    let decimals = tick_decimals(y1 - y0 + 2.0 * pad, Y_LABELS);
    let y_label = |v: &f64| format!("{v:.decimals$}");
    let x_decimals = tick_decimals(x1 * 1.05 - x0, 10);
    let x_label = |v: &f64| format!("{v:.x_decimals$}");
    let mut mesh = chart.configure_mesh();
    if text {
        mesh.x_desc("λ")
            .y_desc("alignment score (lower is better)")
            .y_labels(Y_LABELS)
            .y_label_formatter(&y_label)
            .x_label_formatter(&x_label);
    } else {
        mesh.x_labels(0).y_labels(0);
    }
    mesh.draw().map_err(draw_err)?;
    chart.draw_series(LineSeries::new(points.iter().copied(), &BLUE)).map_err(draw_err)?;
    chart.draw_series(points.iter().map(|&p| Circle::new(p, 3, BLUE.filled()))).map_err(draw_err)?;
    if let Some(l) = chosen
        && let Some(&p) = points.iter().find(|p| p.0 == l)
    {
        chart.draw_series(std::iter::once(Circle::new(p, 8, RED.stroke_width(3)))).map_err(draw_err)?;
    }
    root.present().map_err(draw_err)
}

/// Per-block sparsity, one line per named series.
fn block_lines(path: &Path, series: &[(String, Vec<f64>)], text: bool) -> Result<()> {
    per_block(path, ("sparsity per block", "sparsity"), series, Some((0.0, 1.0)), text)
}

/// Lines of one value per block, the y axis `within` the range given (with a margin) or the
/// values' own.
fn per_block(
    path: &Path,
    (caption, y_desc): (&str, &str),
    series: &[(String, Vec<f64>)],
    within: Option<(f64, f64)>,
    text: bool,
) -> Result<()> {
    let root = BitMapBackend::new(path, (800, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(draw_err)?;
    let blocks = series.iter().map(|s| s.1.len()).max().unwrap_or(1);
    let lo = series.iter().flat_map(|s| s.1.iter().copied()).fold(f64::INFINITY, f64::min);
    let hi = series.iter().flat_map(|s| s.1.iter().copied()).fold(f64::NEG_INFINITY, f64::max);
    let mut builder = ChartBuilder::on(&root);
    builder.margin(15).x_label_area_size(if text { 40 } else { 5 }).y_label_area_size(if text { 60 } else { 5 });
    if text {
        builder.caption(caption, ("sans-serif", 22));
    }
    // Blocks are whole numbers: an integer axis, one tick per block up to twenty.
    let last = blocks.max(2) as i32 - 1;
    let (y0, y1) = match within {
        Some((min, max)) => ((lo - 0.05).max(min), (hi + 0.05).min(max)),
        None => {
            let margin = ((hi - lo) * 0.1).max(0.05);
            (lo - margin, hi + margin)
        }
    };
    let mut chart = builder.build_cartesian_2d(0i32..last, y0..y1).map_err(draw_err)?;
    let decimals = tick_decimals(y1 - y0, Y_LABELS);
    let y_label = |v: &f64| format!("{v:.decimals$}");
    let mut mesh = chart.configure_mesh();
    if text {
        mesh.x_desc("block")
            .y_desc(y_desc)
            .x_labels((last as usize + 1).min(20))
            .y_labels(Y_LABELS)
            .y_label_formatter(&y_label);
    } else {
        mesh.x_labels(0).y_labels(0);
    }
    mesh.draw().map_err(draw_err)?;
    let colors = [BLACK, BLUE, RED, GREEN, MAGENTA];
    for (i, (name, values)) in series.iter().enumerate() {
        let color = colors[i % colors.len()];
        let line = chart
            .draw_series(LineSeries::new(values.iter().enumerate().map(|(b, &v)| (b as i32, v)), color.stroke_width(2)))
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

/// One histogram of row sparsities per layer type, over all blocks (a mixture of experts'
/// experts share one panel per linear: `mlp.experts.*.up_proj`). `names[b]`: block b's
/// linears; four panels to a row.
fn row_histograms(path: &Path, map: &Map, names: &[Vec<&str>], text: bool) -> Result<()> {
    let mut types: Vec<(String, Vec<(usize, usize)>)> = Vec::new();
    for (b, block) in names.iter().enumerate() {
        for (li, name) in block.iter().enumerate() {
            let t = layer_type(name);
            match types.iter_mut().find(|(n, _)| *n == t) {
                Some((_, cells)) => cells.push((b, li)),
                None => types.push((t, vec![(b, li)])),
            }
        }
    }
    let rows = types.len().div_ceil(4).max(1);
    let root = BitMapBackend::new(path, (1400, 350 * rows as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(draw_err)?;
    let panels = root.split_evenly((rows, 4));
    const BINS: usize = 40;
    for ((name, cells), area) in types.iter().zip(&panels) {
        let mut counts = [0u32; BINS];
        // A layer whose every block has one sparsity for all its rows (uniform, OWL, NeuroAL's
        // block step, or a layer the row step keeps) is counted once per block, and says so.
        let per_row = cells.iter().any(|&(b, li)| matches!(map[b][li], Sparsity::PerRow(_)));
        for &(b, li) in cells {
            let rows: Vec<f64> = match &map[b][li] {
                Sparsity::PerRow(v) => v.clone(),
                Sparsity::Uniform(s) => vec![*s],
            };
            for s in rows {
                counts[((s * BINS as f64) as usize).min(BINS - 1)] += 1;
            }
        }
        let (caption, counted) =
            if per_row { (name.clone(), "rows") } else { (format!("{name} (one sparsity per block)"), "blocks") };
        let top = (*counts.iter().max().unwrap_or(&1)).max(1);
        let mut builder = ChartBuilder::on(area);
        builder.margin(10).x_label_area_size(if text { 40 } else { 5 }).y_label_area_size(if text { 60 } else { 5 });
        if text {
            builder.caption(caption, ("sans-serif", 16));
        }
        // Counts on an integer axis: whole-number ticks, none repeated.
        let mut chart = builder.build_cartesian_2d(0f64..1f64, 0u32..top + top.div_ceil(10)).map_err(draw_err)?;
        let mut mesh = chart.configure_mesh();
        if text {
            mesh.x_desc("row sparsity").y_desc(counted).y_labels(Y_LABELS);
        } else {
            mesh.x_labels(0).y_labels(0);
        }
        mesh.draw().map_err(draw_err)?;
        chart
            .draw_series(counts.iter().enumerate().filter(|(_, c)| **c > 0).map(|(i, &c)| {
                let x = i as f64 / BINS as f64;
                Rectangle::new([(x, 0), (x + 1.0 / BINS as f64, c)], BLUE.mix(0.6).filled())
            }))
            .map_err(draw_err)?;
    }
    root.present().map_err(draw_err)
}

/// A linear's name with its expert's number replaced by `*` (`mlp.experts.7.w1` →
/// `mlp.experts.*.w1`).
fn layer_type(name: &str) -> String {
    let parts: Vec<&str> = name.split('.').collect();
    let numbered = |i: usize| i > 0 && parts[i - 1] == "experts" && parts[i].parse::<usize>().is_ok();
    parts.iter().enumerate().map(|(i, p)| if numbered(i) { "*" } else { p }).collect::<Vec<_>>().join(".")
}

/// Every file a run may write into its plots folder.
pub const FILES: [&str; 5] =
    ["neuroal_block_step.png", "neuroal_row_step.png", "block_sparsity.png", "row_sparsity.png", "alpha_per_block.png"];

/// Writes every plot the run has material for into `dir`; returns the files written.
pub fn write_all(
    dir: &Path,
    topup: &crate::commands::report::TopUpReport,
    blocks: &[(String, Vec<f64>)],
    map: &Map,
    names: &[Vec<&str>],
) -> Result<Vec<String>> {
    std::fs::create_dir_all(dir).map_err(|e| err!("cannot create {}: {e}", dir.display()))?;
    if !dir.is_dir() {
        bail!("{}: not a folder", dir.display());
    }
    let text = register_font();
    let mut written = Vec::new();
    for (scores, lambda, file, title) in [
        (&topup.block_scores, topup.lambda_block, "neuroal_block_step.png", "NeuroAL block step"),
        (&topup.row_scores, topup.lambda_row, "neuroal_row_step.png", "NeuroAL row step"),
    ] {
        let points: Vec<(f64, f64)> = scores.iter().map(|p| (p[0], p[1])).collect();
        if !points.is_empty() {
            score_curve(&dir.join(file), title, &points, lambda, text)?;
            written.push(file.to_string());
        }
    }
    block_lines(&dir.join("block_sparsity.png"), blocks, text)?;
    written.push("block_sparsity.png".into());
    if let Some(alphas) = &topup.alphas {
        let series = [("α (mean of the block's linears)".to_string(), alphas.clone())];
        per_block(&dir.join("alpha_per_block.png"), ("AlphaPruning: α per block", "α"), &series, None, text)?;
        written.push("alpha_per_block.png".into());
    }
    row_histograms(&dir.join("row_sparsity.png"), map, names, text)?;
    written.push("row_sparsity.png".into());
    Ok(written)
}
