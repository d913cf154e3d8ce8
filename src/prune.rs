//! `neuroal prune`: validate everything, calibrate, run the block pipeline, write the checkpoint
//! and its report, optionally evaluate before and after.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use serde_json::{json, Value};

use crate::calib::{draw_windows, gather_windows};
use crate::device::Selected;
use crate::error::Result;
use crate::eval::{default_seqlen, perplexity};
use crate::mask::{Pattern, Sparsity};
use crate::model::{Model, LINEARS};
use crate::pipeline::prune;
use crate::score::Method;
use crate::tokenizer::{tokenize_file, Tokenizer};
use crate::eval::progress_bar;
use crate::topup::{
    block_grid, block_map, evaluate, neuroal_block_sparsities, owl_block_sparsities, owl_outlier_ratios, row_grid,
    row_map, uniform_map, winner, Evaluation, Map,
};
use crate::writer::{check_destination, write_checkpoint, Staging};
use crate::bail;

pub struct PruneArgs {
    pub model: PathBuf,
    pub calib: PathBuf,
    pub out: PathBuf,
    pub method: String,
    pub sparsity: Option<f64>,
    pub pattern: String,
    pub nsamples: usize,
    pub seqlen: Option<usize>,
    pub seed: u64,
    pub force: bool,
    pub eval: Option<PathBuf>,
    pub top_up: String,
    pub owl_m: f64,
    pub owl_lambda: f64,
    pub neuroal_step: String,
    pub search_nsamples: usize,
    /// Candidates evaluated per pass over the blocks (0: all of a step at once).
    pub search_chunk: usize,
    pub plots: Option<PathBuf>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum TopUpKind {
    Uniform,
    Owl,
    Neuroal,
}

impl TopUpKind {
    fn parse(s: &str) -> Result<TopUpKind> {
        match s {
            "uniform" => Ok(TopUpKind::Uniform),
            "owl" => Ok(TopUpKind::Owl),
            "neuroal" => Ok(TopUpKind::Neuroal),
            other => bail!("unknown --top-up \"{other}\" (expected uniform, owl or neuroal)"),
        }
    }
}

/// The sparsity map a top-up chose, with what the report says about the choice.
struct TopUp {
    map: Map,
    pattern: Pattern,
    block_sparsities: Vec<f64>,
    /// NeuroAL's own calibration windows (start offsets).
    search_windows: Option<Vec<usize>>,
    report: Value,
}

fn summary(v: &[f64]) -> Value {
    let min = v.iter().cloned().fold(f64::INFINITY, f64::min);
    let max = v.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    json!({ "min": min, "max": max, "mean": v.iter().sum::<f64>() / v.len().max(1) as f64 })
}

#[allow(clippy::too_many_arguments)]
fn choose_map(
    kind: TopUpKind,
    args: &PruneArgs,
    model: &Model,
    ids: &[u32],
    windows: &[u32],
    seqlen: usize,
    method: Method,
    pattern: &Pattern,
    s: f64,
) -> Result<TopUp> {
    let blocks = model.num_blocks();
    match kind {
        TopUpKind::Uniform => Ok(TopUp {
            map: uniform_map(blocks, s),
            pattern: pattern.clone(),
            block_sparsities: vec![s; blocks],
            search_windows: None,
            report: json!({ "name": "uniform", "lambda_block": null, "lambda_row": null,
                            "block_scores": [], "row_scores": [], "block_sparsities": vec![s; blocks] }),
        }),
        TopUpKind::Owl => {
            let ratios = owl_outlier_ratios(model, windows, seqlen, args.owl_m)?;
            let sparsities = owl_block_sparsities(&ratios, args.owl_lambda, s);
            Ok(TopUp {
                map: block_map(&sparsities),
                pattern: Pattern::Row,
                report: json!({ "name": "owl", "owl_m": args.owl_m, "owl_lambda": args.owl_lambda,
                                "outlier_ratios": ratios, "lambda_block": null, "lambda_row": null,
                                "block_scores": [], "row_scores": [], "block_sparsities": sparsities }),
                block_sparsities: sparsities,
                search_windows: None,
            })
        }
        TopUpKind::Neuroal => neuroal(args, model, ids, seqlen, method, s),
    }
}

fn neuroal(args: &PruneArgs, model: &Model, ids: &[u32], seqlen: usize, method: Method, s: f64) -> Result<TopUp> {
    let (do_block, do_row) = match args.neuroal_step.as_str() {
        "block" => (true, false),
        "row" => (false, true),
        "both" => (true, true),
        other => bail!("unknown --neuroal-step \"{other}\" (expected block, row or both)"),
    };
    if args.search_nsamples == 0 {
        bail!("--search-nsamples must be at least 1");
    }
    let starts = draw_windows(ids.len(), seqlen, args.search_nsamples, args.seed)?;
    let search = gather_windows(ids, &starts, seqlen);
    let blocks = model.num_blocks();
    let bar = progress_bar(0, "NeuroAL");
    let run = |step: &str, candidates: &[Map], pattern: &Pattern| -> Result<Vec<Evaluation>> {
        let chunk = if args.search_chunk == 0 { candidates.len() } else { args.search_chunk };
        bar.set_length((candidates.len() * blocks) as u64);
        bar.set_position(0);
        let progress = |done: usize, b: usize| {
            bar.set_message(format!("{step} step: candidates {}-{} of {}, block {}/{blocks}", done + 1, (done + chunk).min(candidates.len()), candidates.len(), b + 1));
            bar.inc(chunk.min(candidates.len() - done) as u64);
        };
        evaluate(model, &search, seqlen, method, pattern, candidates, chunk, &progress)
    };

    let mut report = json!({ "name": "neuroal", "step": args.neuroal_step, "search_nsamples": args.search_nsamples,
                             "lambda_block": null, "lambda_row": null, "block_scores": [], "row_scores": [] });
    let (block_sparsities, d) = if do_block {
        let grid = block_grid(s);
        let candidates: Vec<Map> = grid.iter().map(|&l| block_map(&neuroal_block_sparsities(blocks, l, s))).collect();
        let evals = run("block", &candidates, &Pattern::Row)?;
        let w = winner(&evals);
        report["lambda_block"] = json!(grid[w]);
        report["block_scores"] = json!(grid.iter().zip(&evals).map(|(l, e)| [*l, e.score]).collect::<Vec<_>>());
        (neuroal_block_sparsities(blocks, grid[w], s), evals[w].d.clone())
    } else {
        let uniform = neuroal_block_sparsities(blocks, 0.0, s);
        let evals = run("uniform", &[block_map(&uniform)], &Pattern::Row)?;
        (uniform, evals[0].d.clone())
    };
    report["block_sparsities"] = json!(block_sparsities);
    let search_windows = Some(starts);
    let result = if do_row {
        let grid = row_grid();
        let gqa = model.config.num_kv_heads < model.config.num_heads;
        let rows = model.linear_shapes().map(|s| s[0]);
        let candidates: Vec<Map> = grid.iter().map(|&l| row_map(gqa, rows, &block_sparsities, &d, l)).collect();
        let evals = run("row", &candidates, &Pattern::RowsVariable)?;
        let w = winner(&evals);
        report["lambda_row"] = json!(grid[w]);
        report["row_scores"] = json!(grid.iter().zip(&evals).map(|(l, e)| [*l, e.score]).collect::<Vec<_>>());
        TopUp { map: candidates[w].clone(), pattern: Pattern::RowsVariable, block_sparsities, search_windows, report }
    } else {
        TopUp { map: block_map(&block_sparsities), pattern: Pattern::Row, block_sparsities, search_windows, report }
    };
    bar.finish_and_clear();
    Ok(result)
}

/// Runs the whole job and returns the report (also written as `report.json` in the output).
pub fn run(args: &PruneArgs, device: &Selected) -> Result<Value> {
    let start = Instant::now();
    let method = Method::parse(&args.method)?;
    let pattern = Pattern::parse(&args.pattern)?;
    if pattern == Pattern::RowsVariable {
        bail!("--pattern rows-variable needs per-row sparsities, which only a top-up provides");
    }
    let kind = TopUpKind::parse(&args.top_up)?;
    if kind != TopUpKind::Uniform && pattern != Pattern::Row {
        bail!("--top-up {} chooses its own sparsities and needs --pattern row", args.top_up);
    }
    let sparsity = match (&pattern, args.sparsity) {
        (Pattern::NM { n, m }, None) => *n as f64 / *m as f64,
        (Pattern::NM { n, m }, Some(s)) if (s - *n as f64 / *m as f64).abs() > 1e-9 => {
            bail!("--sparsity {s} contradicts --pattern {n}:{m} (which prunes {})", *n as f64 / *m as f64)
        }
        (_, Some(s)) => s,
        (_, None) => bail!("--sparsity is required (a fraction in [0, 1))"),
    };
    if !(0.0..1.0).contains(&sparsity) {
        bail!("--sparsity {sparsity} is outside [0, 1)");
    }
    if args.nsamples == 0 {
        bail!("--nsamples must be at least 1");
    }
    if !args.calib.exists() {
        bail!("{}: calibration file not found", args.calib.display());
    }
    if let Some(e) = &args.eval {
        if !e.exists() {
            bail!("{}: evaluation file not found", e.display());
        }
    }
    let model = Model::open(&args.model, &device.device)?;
    check_destination(&args.model, &args.out, args.force)?;
    let seqlen = args.seqlen.unwrap_or_else(|| default_seqlen(&model));
    model.check_seqlen(seqlen)?;
    let tokenizer = Tokenizer::open(&args.model)?;
    let ids = tokenize_file(&tokenizer, &args.calib)?;
    let starts = draw_windows(ids.len(), seqlen, args.nsamples, args.seed)?;
    let windows = gather_windows(&ids, &starts, seqlen);

    let t_topup = Instant::now();
    let topup = choose_map(kind, args, &model, &ids, &windows, seqlen, method, &pattern, sparsity)?;
    let topup_s = t_topup.elapsed().as_secs_f64();

    let t_prune = Instant::now();
    let map = &topup.map;
    let masks = prune(&model, &windows, seqlen, method, &topup.pattern, &|b, l| map[b][l].clone())?;
    let prune_s = t_prune.elapsed().as_secs_f64();
    let row_sparsity: BTreeMap<String, Value> = map
        .iter()
        .enumerate()
        .flat_map(|(b, layers)| layers.iter().enumerate().map(move |(l, sp)| (b, l, sp)))
        .filter_map(|(b, l, sp)| match sp {
            Sparsity::PerRow(v) => Some((Model::linear_name(b, l), summary(v))),
            Sparsity::Uniform(_) => None,
        })
        .collect();
    let mut topup_report = topup.report;
    topup_report["row_sparsity"] = json!(row_sparsity);

    let staging = Staging::new(&args.out)?;
    write_checkpoint(&model.checkpoint, &masks, &staging.dir)?;

    let mut eval = json!({ "ppl_dense": null, "ppl_pruned": null });
    if let Some(text) = &args.eval {
        let eval_ids = tokenize_file(&tokenizer, text)?;
        let dense = perplexity(&model, &eval_ids, seqlen, None, &device.description)?;
        let pruned_model = Model::open(&staging.dir, &device.device)?;
        let pruned = perplexity(&pruned_model, &eval_ids, seqlen, None, &device.description)?;
        eval = json!({ "file": text, "seqlen": seqlen, "windows": dense.windows,
                       "ppl_dense": dense.ppl, "ppl_pruned": pruned.ppl });
    }

    let layers: BTreeMap<String, f64> = masks.iter().map(|m| (m.name.clone(), m.fraction())).collect();
    let total: usize = masks.iter().map(|m| m.pruned.len()).sum();
    let zeros: usize = masks.iter().map(|m| m.pruned.count_ones()).sum();
    let blocks: Vec<f64> = masks
        .chunks(LINEARS.len())
        .map(|c| {
            let n: usize = c.iter().map(|m| m.pruned.len()).sum();
            c.iter().map(|m| m.pruned.count_ones()).sum::<usize>() as f64 / n as f64
        })
        .collect();
    let mut report = json!({
        "settings": {
            "model": args.model, "out": args.out, "method": method.name(), "pattern": pattern.name(),
            "sparsity": sparsity, "top_up": args.top_up, "final_pattern": topup.pattern.name(),
        },
        "device": device.description,
        "calibration": {
            "file": args.calib, "seed": args.seed, "seqlen": seqlen, "nsamples": args.nsamples,
            "tokens": ids.len(), "generator": "splitmix64, start = (next_u64 * (n - seqlen)) >> 64",
            "windows": starts, "search_windows": topup.search_windows,
        },
        "topup": topup_report,
        "sparsity": { "overall": zeros as f64 / total.max(1) as f64, "blocks": blocks.clone(), "layers": layers },
        "eval": eval,
        "timings": { "topup_s": topup_s, "prune_s": prune_s, "total_s": start.elapsed().as_secs_f64() },
    });
    if let Some(dir) = &args.plots {
        let mut series = vec![("uniform".to_string(), vec![sparsity; model.num_blocks()])];
        if pattern == Pattern::Row {
            let owl = match kind {
                TopUpKind::Owl => topup.block_sparsities.clone(),
                _ => owl_block_sparsities(&owl_outlier_ratios(&model, &windows, seqlen, args.owl_m)?, args.owl_lambda, sparsity),
            };
            series.push(("OWL".to_string(), owl));
        }
        series.push((format!("{} (as pruned)", args.top_up), blocks.clone()));
        let files = crate::plots::write_all(dir, &report["topup"], &series, &topup.map)?;
        report["plots"] = json!({ "dir": dir, "files": files });
    }
    let text = serde_json::to_string_pretty(&report).unwrap_or_default();
    std::fs::write(staging.dir.join("report.json"), text).map_err(|e| crate::err!("cannot write report.json: {e}"))?;
    staging.commit()?;
    Ok(report)
}
