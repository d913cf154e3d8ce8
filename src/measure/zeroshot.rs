//! Zero-shot multiple-choice accuracy from local task files, the way the pruning papers report
//! it through lm-evaluation-harness, offline and exactly specified.
//!
//! A task file is JSONL, one example a line: `{"context": "...", "choices": ["...", ...],
//! "label": k}` with an optional `"task"`. Each choice is a continuation scored after the context.
//! With a `"suffix"` (WinoGrande's partial scoring) each choice instead completes the context and
//! the shared suffix is what is scored: request i = (context + choice_i, suffix).
//!
//! Tokenization: trailing whitespace of the context moves to the front of the continuation; the
//! context is encoded with the tokenizer's post-processor (e.g. BOS), the continuation without
//! it, and the two are concatenated; a sequence longer than the model's window + 1 is cut on the
//! left. The log-likelihood of a request is the sum of log p(token) over the continuation.
//! acc: argmax of the log-likelihoods; acc_norm: argmax of log-likelihood / continuation length in
//! UTF-8 bytes; ties go to the first choice (numpy's argmax). Standard errors are the sample
//! standard deviation of the 0/1 outcomes over √n, as the harness reports them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::io::error::Result;
use crate::io::progress::rate_bar;
use crate::io::tokenizer::Tokenizer;
use crate::measure::perplexity::{RESIDENT_BLOCKS_BYTES, resident_blocks};
use crate::model::{Model, token_log_probs};
use crate::{bail, err};

/// One multiple-choice example.
#[derive(Clone, Debug, PartialEq)]
pub struct Example {
    pub task: String,
    pub context: String,
    pub choices: Vec<String>,
    pub suffix: Option<String>,
    pub label: usize,
}

impl Example {
    /// (context, continuation) of each choice, before tokenization.
    pub fn requests(&self) -> Vec<(String, String)> {
        match &self.suffix {
            Some(s) => self.choices.iter().map(|c| (format!("{}{c}", self.context), s.clone())).collect(),
            None => self.choices.iter().map(|c| (self.context.clone(), c.clone())).collect(),
        }
    }
}

/// Reads task files; a bad line is one error naming the file and line. `limit` caps each task,
/// whichever files its examples come from.
pub fn read_tasks(paths: &[PathBuf], limit: Option<usize>) -> Result<Vec<Example>> {
    Ok(read_tasks_hashed(paths, limit)?.0)
}

/// [`read_tasks`], with the SHA-256 of exactly the bytes read of each file, in order.
pub fn read_tasks_hashed(paths: &[PathBuf], limit: Option<usize>) -> Result<(Vec<Example>, Vec<String>)> {
    let mut all = Vec::new();
    let mut hashes = Vec::new();
    let mut per_task: BTreeMap<String, usize> = BTreeMap::new();
    for path in paths {
        let bytes = std::fs::read(path)
            .map_err(|e| err!("cannot read {}: {}", path.display(), crate::io::error::io_words(&e)))?;
        hashes.push(crate::io::provenance::sha256_bytes(&bytes));
        let text = String::from_utf8(bytes).map_err(|_| err!("{}: not UTF-8 text", path.display()))?;
        let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let at = || format!("{}:{}", path.display(), i + 1);
            let v: Value = serde_json::from_str(line).map_err(|e| err!("{}: not a JSON object ({e})", at()))?;
            let str_field = |k: &str| -> Result<Option<String>> {
                match v.get(k) {
                    None | Some(Value::Null) => Ok(None),
                    Some(Value::String(s)) => Ok(Some(s.clone())),
                    Some(_) => bail!("{}: \"{k}\" must be a string", at()),
                }
            };
            let context = str_field("context")?.ok_or_else(|| err!("{}: missing \"context\"", at()))?;
            let choices: Vec<String> = match v.get("choices") {
                Some(Value::Array(a)) if !a.is_empty() => a
                    .iter()
                    .map(|c| match c.as_str() {
                        Some("") => bail!("{}: a choice is empty; every choice must be a non-empty string", at()),
                        Some(s) => Ok(s.to_string()),
                        None => bail!("{}: every choice must be a string", at()),
                    })
                    .collect::<Result<_>>()?,
                Some(Value::Array(_)) => bail!("{}: \"choices\" is empty", at()),
                _ => bail!("{}: missing \"choices\" (a list of strings)", at()),
            };
            let label = match v.get("label") {
                None | Some(Value::Null) => bail!("{}: missing \"label\" (the index of the right choice)", at()),
                Some(l) => match l.as_u64() {
                    Some(l) if (l as usize) < choices.len() => l as usize,
                    Some(l) => bail!("{}: label {l} is out of range for {} choices", at(), choices.len()),
                    None => bail!("{}: label {l} must be a whole number from 0 (the index of the right choice)", at()),
                },
            };
            let suffix = str_field("suffix")?;
            let task = str_field("task")?.unwrap_or_else(|| stem.clone());
            let n = per_task.entry(task.clone()).or_default();
            if limit.is_some_and(|l| *n >= l) {
                continue;
            }
            *n += 1;
            all.push(Example { task, context, choices, suffix, label });
        }
    }
    if all.is_empty() {
        bail!("the task files hold no examples");
    }
    Ok((all, hashes))
}

/// Context and continuation token ids of a request, as the harness builds them.
pub fn encode_request(tok: &Tokenizer, context: &str, continuation: &str) -> Result<(Vec<u32>, Vec<u32>)> {
    let trimmed = context.trim_end();
    let moved = &context[trimmed.len()..];
    let continuation = format!("{moved}{continuation}");
    let ctx = tok.encode(trimmed)?;
    let cont = tok.encode_plain(&continuation)?;
    if cont.is_empty() {
        bail!("a continuation tokenizes to nothing: {continuation:?}");
    }
    if ctx.is_empty() {
        bail!("an empty context with a tokenizer that adds no BOS token leaves nothing to condition on");
    }
    Ok((ctx, cont))
}

/// Every task needs two examples or more: the standard error of one outcome is undefined.
fn check_counts(examples: &[Example]) -> Result<()> {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for ex in examples {
        *counts.entry(ex.task.as_str()).or_default() += 1;
    }
    match counts.into_iter().find(|(_, n)| *n < 2) {
        Some((task, n)) => bail!(
            "task {task} has {n} example; its accuracy's standard error needs at least 2 (raise --limit or add examples)"
        ),
        None => Ok(()),
    }
}

/// Requests per forward pass of `tokens` tokens each.
pub fn batch_cap(tokens: usize, vocab: usize) -> usize {
    crate::measure::perplexity::logits_batch(tokens, vocab, 32)
}

/// Every request of a list of examples, encoded once before any work: the memory estimate is
/// sized from them, and `prune --zeroshot` scores them on the dense and the pruned model.
pub struct Requests<'a> {
    examples: &'a [Example],
    /// In the examples' order: (input ids cut on the left to `max_len`, the continuation's ids
    /// that the input predicts).
    seqs: Vec<(Vec<u32>, Vec<u32>)>,
}

impl<'a> Requests<'a> {
    /// Encodes every choice of every example; one that cannot be is an error here, and so is a
    /// task of fewer than two examples.
    pub fn encode(tok: &Tokenizer, examples: &'a [Example], max_len: usize) -> Result<Requests<'a>> {
        check_counts(examples)?;
        let mut seqs = Vec::new();
        for ex in examples {
            for (ctx, cont) in ex.requests() {
                let (c, k) = encode_request(tok, &ctx, &cont)?;
                let mut seq = c;
                seq.extend_from_slice(&k);
                let start = seq.len().saturating_sub(max_len + 1);
                let seq = &seq[start..];
                let input = seq[..seq.len() - 1].to_vec();
                let n = k.len().min(input.len());
                seqs.push((input, seq[seq.len() - n..].to_vec()));
            }
        }
        Ok(Requests { examples, seqs })
    }

    /// (requests, the longest input's tokens): what the memory estimate needs.
    pub fn sizes(&self) -> (usize, usize) {
        (self.seqs.len(), self.seqs.iter().map(|r| r.0.len()).max().unwrap_or(0))
    }
}

/// Log-likelihood of every request, grouped by example, in order.
pub fn loglikelihoods(model: &Model, requests: &Requests<'_>) -> Result<Vec<Vec<f64>>> {
    let reqs = &requests.seqs;
    if let Some(&max) = reqs.iter().flat_map(|r| r.0.iter().chain(&r.1)).max() {
        model.check_ids(&[max])?;
    }
    // Longest first, batched by length so padding stays small.
    let mut order: Vec<usize> = (0..reqs.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(reqs[i].0.len()));
    let vocab = model.config.vocab_size;
    let blocks = resident_blocks(model, RESIDENT_BLOCKS_BYTES)?;
    let mut out = vec![0f64; reqs.len()];
    let examples = requests.examples.len();
    let bar = rate_bar(examples, "zero-shot", "examples");
    let per_example = reqs.len() as f64 / examples as f64;
    let mut done_reqs = 0usize;
    let mut i = 0;
    while i < order.len() {
        let t = reqs[order[i]].0.len();
        let cap = batch_cap(t, vocab);
        let batch: Vec<usize> = order[i..(i + cap).min(order.len())].to_vec();
        i += batch.len();
        let ids: Vec<u32> = batch
            .iter()
            .flat_map(|&r| {
                let mut v = reqs[r].0.clone();
                v.resize(t, 0); // right padding: causal attention never looks at it
                v
            })
            .collect();
        let b = batch.len();
        let pos = model.positions(t);
        let mut h = model.embed(&ids, b)?;
        match &blocks {
            Some(bs) => {
                for block in bs {
                    h = block.forward(h, &pos, None);
                }
            }
            None => {
                for block in model.blocks() {
                    h = block?.forward(h, &pos, None);
                }
            }
        }
        // Target of position p is the input's token p + 1 (or the last target).
        let mut targets = vec![0u32; b * t];
        for (row, &r) in batch.iter().enumerate() {
            let (input, cont) = &reqs[r];
            let first = input.len() - cont.len();
            for (j, &tok) in cont.iter().enumerate() {
                targets[row * t + first + j] = tok;
            }
        }
        let picked = token_log_probs(model.head(h)?, &targets, "zero-shot log-likelihoods")?;
        for (row, &r) in batch.iter().enumerate() {
            let (input, cont) = &reqs[r];
            let first = input.len() - cont.len();
            out[r] = (0..cont.len()).map(|j| picked[row * t + first + j] as f64).sum();
            if !out[r].is_finite() {
                bail!("a log-likelihood is not finite ({}); the model's outputs hold NaN or overflow", out[r]);
            }
        }
        done_reqs += b;
        bar.set_position((done_reqs as f64 / per_example) as u64);
    }
    bar.finish_and_clear();
    let mut it = out.into_iter();
    Ok(requests
        .examples
        .iter()
        .map(|ex| (0..ex.choices.len()).map(|_| it.next().unwrap_or(f64::NAN)).collect())
        .collect())
}

/// First index of the largest value (numpy's argmax).
pub fn argmax(v: &[f64]) -> usize {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best
}

/// Sample standard deviation of 0/1 outcomes over √n, as the harness's `mean_stderr`.
pub fn stderr_of(hits: &[bool]) -> f64 {
    let n = hits.len() as f64;
    if n < 2.0 {
        return f64::NAN;
    }
    let p = hits.iter().filter(|h| **h).count() as f64 / n;
    (hits.iter().map(|&h| (h as u8 as f64 - p).powi(2)).sum::<f64>() / (n - 1.0)).sqrt() / n.sqrt()
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TaskScore {
    pub acc: f64,
    pub acc_stderr: f64,
    pub acc_norm: f64,
    pub acc_norm_stderr: f64,
    pub n: usize,
    /// The metric the pruning papers quote for this task.
    pub quoted: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ZeroShot {
    pub tasks: BTreeMap<String, TaskScore>,
    pub examples_per_s: f64,
    pub device: String,
}

/// The papers quote acc_norm for HellaSwag, ARC-challenge and OpenBookQA, acc elsewhere.
pub fn quoted_metric(task: &str) -> &'static str {
    match task.to_ascii_lowercase().as_str() {
        "hellaswag" | "arc_challenge" | "arc-challenge" | "openbookqa" => "acc_norm",
        _ => "acc",
    }
}

/// acc and acc_norm per task from each example's log-likelihoods.
pub fn score(examples: &[Example], lls: &[Vec<f64>]) -> BTreeMap<String, TaskScore> {
    let mut hits: BTreeMap<String, (Vec<bool>, Vec<bool>)> = BTreeMap::new();
    for (ex, ll) in examples.iter().zip(lls) {
        let lens: Vec<f64> = ex.requests().iter().map(|(_, cont)| cont.len().max(1) as f64).collect();
        let norm: Vec<f64> = ll.iter().zip(&lens).map(|(l, n)| l / n).collect();
        let e = hits.entry(ex.task.clone()).or_default();
        e.0.push(argmax(ll) == ex.label);
        e.1.push(argmax(&norm) == ex.label);
    }
    hits.into_iter()
        .map(|(task, (acc, norm))| {
            let mean = |v: &[bool]| v.iter().filter(|h| **h).count() as f64 / v.len() as f64;
            let quoted = quoted_metric(&task).to_string();
            (
                task,
                TaskScore {
                    acc: mean(&acc),
                    acc_stderr: stderr_of(&acc),
                    acc_norm: mean(&norm),
                    acc_norm_stderr: stderr_of(&norm),
                    n: acc.len(),
                    quoted,
                },
            )
        })
        .collect()
}

/// The whole evaluation of a model on task files.
pub fn evaluate(model: &Model, requests: &Requests<'_>, device: &str) -> Result<ZeroShot> {
    let (start, examples) = (Instant::now(), requests.examples);
    let lls = loglikelihoods(model, requests)?;
    Ok(ZeroShot {
        tasks: score(examples, &lls),
        examples_per_s: examples.len() as f64 / start.elapsed().as_secs_f64(),
        device: device.to_string(),
    })
}

/// `--tasks a.jsonl,b.jsonl` → paths, each checked to exist, none named twice (its examples
/// would count twice).
pub fn task_paths(list: &str) -> Result<Vec<PathBuf>> {
    let paths: Vec<PathBuf> = list.split(',').map(str::trim).filter(|s| !s.is_empty()).map(PathBuf::from).collect();
    if paths.is_empty() {
        bail!("--tasks names no file");
    }
    let mut seen = Vec::new();
    for p in &paths {
        crate::io::error::check_input_file(Path::new(p), "task file")?;
        let same = std::fs::canonicalize(p).unwrap_or_else(|_| p.clone());
        if seen.contains(&same) {
            bail!("--tasks names {} twice; its examples would count twice", p.display());
        }
        seen.push(same);
    }
    Ok(paths)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(choices: &[&str], label: usize, task: &str) -> Example {
        Example {
            task: task.into(),
            context: "c".into(),
            choices: choices.iter().map(|s| s.to_string()).collect(),
            suffix: None,
            label,
        }
    }

    #[test]
    fn acc_acc_norm_and_stderr_by_hand() {
        // Example 1: ll [-4, -2] → acc picks 1 (right); lengths 1 and 4 bytes → norm [-4, -0.5]
        // picks 1. Example 2: ll [-3, -3] tie → first (0) is right for acc; norm [-3, -1] → 1,
        // wrong. Example 3: ll [-1, -5, -9] label 2 → acc wrong; norm by lengths 1, 2, 9 →
        // [-1, -2.5, -1] tie between 0 and 2 → first (0), wrong.
        let exs = vec![ex(&["a", "bbbb"], 1, "t"), ex(&["a", "bbb"], 0, "t"), ex(&["a", "bb", "ccccccccc"], 2, "t")];
        let lls = vec![vec![-4.0, -2.0], vec![-3.0, -3.0], vec![-1.0, -5.0, -9.0]];
        let s = &score(&exs, &lls)["t"];
        assert_eq!(s.n, 3);
        assert!((s.acc - 2.0 / 3.0).abs() < 1e-15);
        assert!((s.acc_norm - 1.0 / 3.0).abs() < 1e-15);
        // Outcomes [1, 1, 0]: p = 2/3, sample variance (2·(1/3)² + (2/3)²)/2 = 1/3, stderr √(1/9).
        assert!((s.acc_stderr - (1.0f64 / 9.0).sqrt()).abs() < 1e-15);
        assert!((s.acc_norm_stderr - (1.0f64 / 9.0).sqrt()).abs() < 1e-15);
        assert_eq!(argmax(&[1.0, 3.0, 3.0]), 1);
        assert_eq!(quoted_metric("hellaswag"), "acc_norm");
        assert_eq!(quoted_metric("boolq"), "acc");
    }

    #[test]
    fn winogrande_requests_share_the_suffix() {
        let e = Example {
            task: "w".into(),
            context: "The cup was in the ".into(),
            choices: vec!["box".into(), "bag".into()],
            suffix: Some(" because it was big.".into()),
            label: 0,
        };
        assert_eq!(
            e.requests(),
            vec![
                ("The cup was in the box".to_string(), " because it was big.".to_string()),
                ("The cup was in the bag".to_string(), " because it was big.".to_string())
            ]
        );
    }
}
