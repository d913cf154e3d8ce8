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
}

/// Runs the whole job and returns the report (also written as `report.json` in the output).
pub fn run(args: &PruneArgs, device: &Selected) -> Result<Value> {
    let start = Instant::now();
    let method = Method::parse(&args.method)?;
    let pattern = Pattern::parse(&args.pattern)?;
    if pattern == Pattern::RowsVariable {
        bail!("--pattern rows-variable needs per-row sparsities, which only a top-up provides");
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

    let t_prune = Instant::now();
    let masks = prune(&model, &windows, seqlen, method, &pattern, &|_, _| Sparsity::Uniform(sparsity))?;
    let prune_s = t_prune.elapsed().as_secs_f64();

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
    let zeros: usize = masks.iter().map(|m| m.pruned.iter().filter(|&&p| p).count()).sum();
    let blocks: Vec<f64> = masks
        .chunks(LINEARS.len())
        .map(|c| {
            let n: usize = c.iter().map(|m| m.pruned.len()).sum();
            c.iter().map(|m| m.pruned.iter().filter(|&&p| p).count()).sum::<usize>() as f64 / n as f64
        })
        .collect();
    let report = json!({
        "settings": {
            "model": args.model, "out": args.out, "method": method.name(), "pattern": pattern.name(),
            "sparsity": sparsity, "top_up": "uniform",
        },
        "device": device.description,
        "calibration": {
            "file": args.calib, "seed": args.seed, "seqlen": seqlen, "nsamples": args.nsamples,
            "tokens": ids.len(), "generator": "splitmix64, start = (next_u64 * (n - seqlen)) >> 64",
            "windows": starts,
        },
        "sparsity": { "overall": zeros as f64 / total.max(1) as f64, "blocks": blocks, "layers": layers },
        "eval": eval,
        "timings": { "prune_s": prune_s, "total_s": start.elapsed().as_secs_f64() },
    });
    let text = serde_json::to_string_pretty(&report).unwrap_or_default();
    std::fs::write(staging.dir.join("report.json"), text).map_err(|e| crate::err!("cannot write report.json: {e}"))?;
    staging.commit()?;
    Ok(report)
}
