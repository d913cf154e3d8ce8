//! NeuroAL (Cunegatti et al., TMLR 2025): a zeroth-order search over λ for the sparsity map
//! that keeps the pruned model's neuron activations most like the dense model's. The block
//! step spreads the target over blocks (λ on the schedule t_i = i + 1, early blocks denser); the
//! row step spreads each layer's block sparsity over its rows by the activation difference d
//! measured where its outputs are consumed. Each candidate is scored by Σ over linears of
//! ‖a_dense/Σa_dense − a_sparse/Σa_sparse‖₂ / len(a); the lowest wins.

use burn::tensor::{DType, Tensor};
use rayon::prelude::*;

use crate::bail;
use crate::gpu::context::{Gpu, shaders_for};
use crate::gpu::tensor::{host_f32, to_dtype};
use crate::io::error::Result;
use crate::io::faults::fault;
use crate::io::progress::progress_bar;
use crate::measure::trace::Trace;
use crate::model::{Block, Model, Positions, Spec, on_cpu};
use crate::prune::calib::{draw_windows, gather_windows};
use crate::prune::mask::{Pattern, Sparsity};
use crate::prune::pipeline::{calibrate_together, embed_windows, record_unchecked};
use crate::prune::pruner::{Calibration, Pruner};
use crate::prune::settings::NeuroalStep;
use crate::prune::spread::{Map, block_map, clamp_block, spread_blocks, spread_rows};

/// NeuroAL's block-step candidate: schedule t_i = i + 1, densities sorted descending so early
/// blocks stay denser.
pub fn neuroal_block_sparsities(blocks: usize, lambda: f64, s: f64) -> Vec<f64> {
    let t: Vec<f64> = (0..blocks).map(|i| (i + 1) as f64).collect();
    let mut v = spread_blocks(&t, lambda, s);
    v.sort_by(|a, b| b.partial_cmp(a).unwrap_or(std::cmp::Ordering::Equal));
    v.iter().map(|v| clamp_block(1.0 - v)).collect()
}

/// Row sparsities of a linear with block sparsity b from its row vector r.
pub fn neuroal_row_sparsities(r: &[f32], lambda: f64, b: f64) -> Vec<f64> {
    let r: Vec<f64> = r.iter().map(|&x| x as f64).collect();
    spread_rows(&r, lambda, b).iter().map(|v| (1.0 - v).clamp(0.01, 0.99)).collect()
}

pub fn block_grid(s: f64) -> Vec<f64> {
    let mut g: Vec<f64> = (1..=10).map(|i| i as f64 / 100.0).collect();
    g.extend([0.12, 0.15, 0.20, 0.25]);
    if s >= 0.8 {
        g.pop();
    }
    g
}

pub fn row_grid() -> Vec<f64> {
    let mut g: Vec<f64> = (0..=10).map(|i| i as f64 / 100.0).collect();
    g.extend([0.12, 0.15, 0.20, 0.25]);
    g
}

/// The row-step candidate map for λ from the block map and the d vectors of its evaluation.
/// Each linear's rows are spread by the d of the linear its family routes them to (an output
/// row of one layer is an input channel of the layer that consumes it). The last block keeps
/// its block sparsity, and so do q, k and v under grouped-query attention (`gqa`).
/// `specs` holds each block's declaration.
pub fn row_map(specs: &[&Spec], gqa: bool, blocks: &[f64], d: &[Vec<Vec<f32>>], lambda: f64) -> Result<Map> {
    if specs.iter().any(|s| s.routes.is_none()) {
        bail!("this model family declares no row routing, so NeuroAL's row step cannot run; use --neuroal-step block");
    }
    let last = blocks.len() - 1;
    Ok(blocks
        .iter()
        .enumerate()
        .map(|(bi, &b)| {
            let (spec, routes) = (specs[bi], specs[bi].routes.as_deref().unwrap_or_default());
            spec.linears
                .iter()
                .zip(routes)
                .map(|(linear, route)| {
                    let keep = bi == last || (gqa && linear.qkv);
                    let source = if route.next_block { (bi + 1).min(last) } else { bi };
                    let consumers = (0..route.count.max(1)).map(|k| &d[source][route.linear + k * route.stride]);
                    let r = &mean_of(consumers.collect());
                    let sum: f64 = r.iter().map(|&x| x as f64).sum();
                    if keep || sum == 0.0 {
                        Sparsity::PerRow(vec![b; linear.shape[0]])
                    } else {
                        Sparsity::PerRow(neuroal_row_sparsities(r, lambda, b).repeat(route.repeat.max(1)))
                    }
                })
                .collect()
        })
        .collect())
}

/// The elementwise mean of the consumers' d vectors (the one vector where one consumes).
fn mean_of(ds: Vec<&Vec<f32>>) -> std::borrow::Cow<'_, [f32]> {
    match ds.as_slice() {
        [one] => std::borrow::Cow::Borrowed(one.as_slice()),
        _ => {
            let n = ds.len() as f64;
            let len = ds.first().map_or(0, |d| d.len());
            let mean = (0..len).map(|j| (ds.iter().map(|d| d[j] as f64).sum::<f64>() / n) as f32).collect();
            std::borrow::Cow::Owned(mean)
        }
    }
}

/// One candidate's result: Σ m over all linears, and every linear's d = a_dense − a_sparse.
#[derive(Clone, Debug)]
pub struct Evaluation {
    pub score: f64,
    pub d: Vec<Vec<Vec<f32>>>,
}

/// m and d of one linear: on the device in WGSL on wgpu, else the burn-ops twin.
pub fn alignment(gpu: Option<&Gpu>, dense: Tensor<1>, sparse: Tensor<1>) -> Result<(f32, Vec<f32>)> {
    let n = dense.dims()[0];
    let (m, d) = alignment_on_device(gpu, dense, sparse);
    let m = host_f32(m, "alignment metric")?;
    let d = host_f32(d, "alignment difference")?;
    if m.len() != 1 || d.len() != n {
        bail!("alignment: the device returned {} and {} values, expected 1 and {n}", m.len(), d.len());
    }
    Ok((m[0], d))
}

/// m [1] and d of one linear, left on the device (read back once a candidate group ends).
pub fn alignment_on_device(gpu: Option<&Gpu>, dense: Tensor<1>, sparse: Tensor<1>) -> (Tensor<1>, Tensor<1>) {
    match shaders_for(gpu, &dense) {
        Some(shaders) => shaders.alignment(dense, sparse),
        None => alignment_reference(dense, sparse),
    }
}

/// The twin computes in f64, so it is the accurate side of the shader comparison.
pub fn alignment_reference(dense: Tensor<1>, sparse: Tensor<1>) -> (Tensor<1>, Tensor<1>) {
    let n = dense.dims()[0] as f64;
    let (a64, b64) = (dense.clone().cast(DType::F64), sparse.clone().cast(DType::F64));
    let a = a64.clone() / a64.sum();
    let b = b64.clone() / b64.sum();
    let m = (a - b).square().sum().sqrt().div_scalar(n).cast(DType::F32);
    (m, dense - sparse)
}

/// How the search spreads its work: candidates whose passes run side by side (CPU backends),
/// and candidates whose dense passes through a block share one batch.
#[derive(Clone, Copy, Debug)]
pub struct SearchPlan {
    /// On the CPU backends up to this many candidates run side by side: a pass has serial
    /// stretches that leave cores idle. On a GPU, which overlaps queued work itself, one.
    pub at_once: usize,
    /// Candidates whose dense passes through a block run as one batch: the dense block's
    /// weights are the same for all of them, so their windows go through each product together,
    /// in fewer and larger launches (what a GPU's matrix kernels run fastest).
    pub dense_batch: usize,
}

impl SearchPlan {
    /// One candidate at a time, each dense pass alone.
    pub const ONE_BY_ONE: SearchPlan = SearchPlan { at_once: 1, dense_batch: 1 };
}

/// Index of the lowest score; the earlier candidate on ties.
pub fn winner(evals: &[Evaluation]) -> usize {
    let mut best = 0;
    for (i, e) in evals.iter().enumerate() {
        if e.score < evals[best].score {
            best = i;
        }
    }
    best
}

/// What one search scores candidates with: the model, its search windows (token ids, windows
/// of `seqlen` one after another), the pruner each candidate prunes with, and how the work is
/// spread.
pub struct Search<'a> {
    pub model: &'a Model,
    pub windows: &'a [u32],
    pub seqlen: usize,
    pub pruner: &'a dyn Pruner,
    pub plan: SearchPlan,
    /// Where the stages' times go (`NEUROAL_TRACE`).
    pub trace: &'a Trace,
}

/// Scores candidate maps with the search windows. All candidates of a chunk share each block
/// load (each carries its own hidden states); `chunk` = 1 evaluates them one by one. The plan
/// says how many run side by side and how many share a dense pass; each candidate's arithmetic
/// is the same either way (a test demands the same bits). `progress(done, block)` is called as
/// each group enters a block, `done` candidates before it.
pub fn evaluate(
    search: &Search,
    pattern: &Pattern,
    candidates: &[Map],
    chunk: usize,
    progress: &dyn Fn(usize, usize),
) -> Result<Vec<Evaluation>> {
    let mut results = Vec::with_capacity(candidates.len());
    for group in candidates.chunks(chunk.max(1)) {
        let done = results.len();
        let pending = through_blocks(search, pattern, group, &|b| progress(done, b))?;
        results.extend(read_back(search.model, pending, search.trace)?);
    }
    Ok(results)
}

/// Every linear's m and d of one candidate, in (block, linear) order, kept on the device.
type Pending = Vec<(Tensor<1>, Tensor<1>)>;

/// One group of candidates through every block, from one embedding of the windows.
fn through_blocks(search: &Search, pattern: &Pattern, group: &[Map], progress: &dyn Fn(usize)) -> Result<Vec<Pending>> {
    let model = search.model;
    let embedded = embed_windows(model, search.windows, search.seqlen)?;
    let mut hidden: Vec<Vec<Tensor<3>>> = group.iter().map(|_| embedded.clone()).collect();
    let mut pending: Vec<Pending> = group.iter().map(|_| Vec::new()).collect();
    let pos = model.positions(search.seqlen);
    let mut blocks = model.blocks();
    while let Some(block) = search.trace.stage("search: load block", &model.device, || blocks.next()) {
        let block = block?;
        progress(block.index);
        let names: Vec<&str> = model.linears(block.index).iter().map(|l| l.name.as_str()).collect();
        let pass = BlockPass { search, pattern, block: &block, pos: &pos, names: &names };
        for (c, r) in pass.run(group, &mut hidden).into_iter().enumerate() {
            pending[c].extend(r?);
        }
    }
    Ok(pending)
}

/// One block of a group's pass.
struct BlockPass<'a> {
    search: &'a Search<'a>,
    pattern: &'a Pattern,
    block: &'a Block,
    pos: &'a Positions,
    names: &'a [&'a str],
}

impl BlockPass<'_> {
    fn nsamples(&self) -> usize {
        self.search.windows.len() / self.search.seqlen
    }

    /// The group through this block a step at a time: the step's dense statistics (shared at
    /// block 0, where every candidate enters with the same embeddings; else in batches of
    /// `dense_batch`), then each candidate's pruning and sparse pass, `at_once` of them side
    /// by side. Only one step's statistics are held (SparseGPT's Hessians are large).
    fn run(&self, group: &[Map], hidden: &mut [Vec<Tensor<3>>]) -> Vec<Result<Pending>> {
        let (model, plan) = (self.search.model, self.search.plan);
        let at_once = if on_cpu(&model.device) { plan.at_once.max(1) } else { 1 };
        let dense_batch = plan.dense_batch.max(1);
        let shared = (self.block.index == 0).then(|| {
            self.search.trace.stage("search: dense pass", &model.device, || {
                let needs_hessian = self.search.pruner.needs_hessian();
                record_unchecked(model, self.block, &hidden[0], self.pos, needs_hessian, false).0
            })
        });
        let step = dense_batch.max(at_once);
        let mut per: Vec<Result<Pending>> = Vec::with_capacity(group.len());
        for (maps, hs) in group.chunks(step).zip(hidden.chunks_mut(step)) {
            let dense: Vec<Vec<Calibration>> = match &shared {
                Some(s) => vec![s.clone(); maps.len()],
                None => self.dense_stats(hs, at_once, dense_batch),
            };
            for ((maps, hs), dense) in maps.chunks(at_once).zip(hs.chunks_mut(at_once)).zip(dense.chunks(at_once)) {
                if at_once == 1 {
                    per.extend(
                        maps.iter().zip(hs.iter_mut()).zip(dense).map(|((map, h), d)| self.candidate(map, d, h)),
                    );
                } else {
                    per.extend(
                        maps.par_iter()
                            .zip(hs.par_iter_mut())
                            .zip(dense.par_iter())
                            .map(|((map, h), d)| self.candidate(map, d, h))
                            .collect::<Vec<_>>(),
                    );
                }
            }
        }
        per
    }

    /// The dense statistics of each candidate's inputs, `dense_batch` candidates a batch.
    fn dense_stats(&self, hs: &[Vec<Tensor<3>>], at_once: usize, dense_batch: usize) -> Vec<Vec<Calibration>> {
        let model = self.search.model;
        self.search.trace.stage("search: dense pass", &model.device, || {
            let batch = |hs: &[Vec<Tensor<3>>]| {
                let sets: Vec<&[Tensor<3>]> = hs.iter().map(|h| h.as_slice()).collect();
                calibrate_together(model, self.block, &sets, self.pos, self.search.pruner.needs_hessian())
            };
            let batches: Vec<_> = if at_once == 1 {
                hs.chunks(dense_batch).map(batch).collect()
            } else {
                hs.par_chunks(dense_batch).map(batch).collect()
            };
            batches.into_iter().flatten().collect()
        })
    }

    /// One candidate through this block, given its dense statistics: its pruned copy of the
    /// block (sharing the other tensors), its sparse pass; its hidden states move on.
    fn candidate(&self, map: &Map, stats_dense: &[Calibration], hidden: &mut Vec<Tensor<3>>) -> Result<Pending> {
        let (model, b) = (self.search.model, self.block.index);
        let dev = &model.device;
        let mut sparse = self.block.clone();
        self.search.trace.stage("search: prune linears", dev, || -> Result<()> {
            for li in 0..self.names.len() {
                let pruned = self
                    .search
                    .pruner
                    .prune_weight(
                        model.gpu.as_deref(),
                        self.block.linears()[li].weight.clone(),
                        &stats_dense[li],
                        self.nsamples(),
                        self.pattern,
                        &map[b][li],
                    )
                    .map_err(|e| crate::err!("NeuroAL: block {b} {}: {e}", self.names[li]))?;
                sparse.set_weight(li, to_dtype(pruned, model.dtype));
            }
            Ok(())
        })?;
        // The statistics stay for the metric; SparseGPT's factors (n² f64 each) do not.
        for c in stats_dense {
            if let Some(h) = &c.hessian {
                h.forget_factor();
            }
        }
        // Neither pass reads back: the search waits for the device once per group. The last
        // block's outputs would feed nothing: only its statistics are recorded.
        let (stats_sparse, outputs) = self.search.trace.stage("search: sparse pass", dev, || {
            record_unchecked(model, &sparse, hidden, self.pos, false, b + 1 < model.num_blocks())
        });
        *hidden = outputs;
        Ok(self.search.trace.stage("search: alignment", dev, || self.alignments(stats_dense, &stats_sparse)))
    }

    /// m and d of every linear; linears that read one input have the same activations, and
    /// one metric.
    fn alignments(&self, stats_dense: &[Calibration], stats_sparse: &[Calibration]) -> Pending {
        let input_of = &self.search.model.spec(self.block.index).input_of;
        let nsamples = self.nsamples();
        let mut per_linear: Pending = Vec::with_capacity(self.names.len());
        for li in 0..self.names.len() {
            let md = if input_of[li] != li {
                per_linear[input_of[li]].clone()
            } else {
                let a_dense = stats_dense[li].stats.scaler_row(nsamples).sqrt();
                let a_sparse = stats_sparse[li].stats.scaler_row(nsamples).sqrt();
                alignment_on_device(self.search.model.gpu.as_deref(), a_dense, a_sparse)
            };
            per_linear.push(md);
        }
        per_linear
    }
}

/// One readback of m and one of d per candidate; scores summed in (block, linear) order.
fn read_back(model: &Model, pending: Vec<Pending>, trace: &Trace) -> Result<Vec<Evaluation>> {
    // (block, linear) of each pending metric, in order.
    let cells: Vec<(usize, usize)> =
        model.linear_counts().iter().enumerate().flat_map(|(b, &n)| (0..n).map(move |li| (b, li))).collect();
    let mut evals = Vec::with_capacity(pending.len());
    for per in pending {
        let lens: Vec<usize> = per.iter().map(|(_, d)| d.dims()[0]).collect();
        let (ms, ds): (Vec<Tensor<1>>, Vec<Tensor<1>>) = per.into_iter().unzip();
        let (m, d) = trace.stage("search: read back", &model.device, || -> Result<_> {
            Ok((
                host_f32(Tensor::cat(ms, 0), "alignment metric")?,
                host_f32(Tensor::cat(ds, 0), "alignment difference")?,
            ))
        })?;
        if m.len() != lens.len() || m.len() != cells.len() || d.len() != lens.iter().sum::<usize>() {
            bail!(
                "alignment: the device returned {} and {} values, expected {} and {}",
                m.len(),
                d.len(),
                lens.len(),
                lens.iter().sum::<usize>()
            );
        }
        let mut e = Evaluation { score: 0.0, d: Vec::new() };
        let mut at = 0;
        for ((mk, n), &(b, li)) in m.iter().zip(&lens).zip(&cells) {
            let linear = &model.linears(b)[li];
            if !mk.is_finite() {
                bail!(
                    "NeuroAL: block {b} {}: the alignment metric is {mk} (all activations zero or not finite)",
                    linear.name
                );
            }
            // A fused linear counts once per linear it stacks (Phi-3's qkv: 3), as the split
            // model's q, k and v, which read the same input, each count it.
            e.score += linear.parts as f64 * *mk as f64;
            if li == 0 {
                e.d.push(Vec::with_capacity(model.linears(b).len()));
            }
            if let Some(last) = e.d.last_mut() {
                last.push(d[at..at + n].to_vec());
            }
            at += n;
        }
        evals.push(e);
    }
    Ok(evals)
}

/// Where the search keeps each finished group of candidates' results, so that an interrupted
/// search continues with the next group (`resume::Progress` on disk).
pub trait SavedScores {
    fn scores(&self, key: &str) -> Result<Option<Vec<Evaluation>>>;
    fn save_scores(&self, key: &str, evals: &[Evaluation]) -> Result<()>;
}

/// What the search asks: the target sparsity, the steps that run, the search's own windows
/// (drawn from the calibration text's `ids` with `seed`), groups of `chunk` candidates (0: a
/// whole step at once), and how each group's work is spread.
pub struct Asked {
    pub sparsity: f64,
    pub step: NeuroalStep,
    pub search_nsamples: usize,
    pub seed: u64,
    pub chunk: usize,
    pub plan: SearchPlan,
}

/// What the search found: the map the prune applies, and what the report says of it.
pub struct Found {
    pub map: Map,
    pub pattern: Pattern,
    pub block_sparsities: Vec<f64>,
    /// The search windows' starts.
    pub search_windows: Vec<usize>,
    pub lambda_block: Option<f64>,
    pub lambda_row: Option<f64>,
    /// [λ, score] of every candidate of each step.
    pub block_scores: Vec<[f64; 2]>,
    pub row_scores: Vec<[f64; 2]>,
}

/// Both steps of the search on `model`, with its own windows drawn from the calibration `ids`:
/// the block step (or, without it, the uniform map's d vectors), then the row step.
pub fn search(
    model: &Model,
    ids: &[u32],
    seqlen: usize,
    pruner: &dyn Pruner,
    asked: &Asked,
    saved: &dyn SavedScores,
    trace: &Trace,
) -> Result<Found> {
    let (do_block, do_row) = match asked.step {
        NeuroalStep::Block => (true, false),
        NeuroalStep::Row => (false, true),
        NeuroalStep::Both => (true, true),
    };
    let starts = draw_windows(ids.len(), seqlen, asked.search_nsamples, asked.seed)?;
    let windows = gather_windows(ids, &starts, seqlen);
    let scoring = Search { model, windows: &windows, seqlen, pruner, plan: asked.plan, trace };
    let (s, blocks, linears) = (asked.sparsity, model.num_blocks(), model.linear_counts());
    // One bar for the whole search, in candidate-blocks passed (each step's candidates times the
    // blocks), so that its ETA is the search's, not the current step's.
    let block_candidates = if do_block { block_grid(s).len() } else { 1 };
    let row_candidates = if do_row { row_grid().len() } else { 0 };
    let steps = Steps {
        scoring: &scoring,
        chunk: asked.chunk,
        saved,
        bar: progress_bar((block_candidates + row_candidates) * blocks, "NeuroAL"),
    };
    let mut found = Found {
        map: Vec::new(),
        pattern: Pattern::Row,
        block_sparsities: Vec::new(),
        search_windows: starts,
        lambda_block: None,
        lambda_row: None,
        block_scores: Vec::new(),
        row_scores: Vec::new(),
    };
    let d = if do_block {
        let grid = block_grid(s);
        let candidates: Vec<Map> =
            grid.iter().map(|&l| block_map(&neuroal_block_sparsities(blocks, l, s), &linears)).collect();
        let evals = steps.score("block", &candidates, &Pattern::Row)?;
        let w = winner(&evals);
        found.lambda_block = Some(grid[w]);
        found.block_scores = grid.iter().zip(&evals).map(|(l, e)| [*l, e.score]).collect();
        found.block_sparsities = neuroal_block_sparsities(blocks, grid[w], s);
        evals[w].d.clone()
    } else {
        found.block_sparsities = neuroal_block_sparsities(blocks, 0.0, s);
        let evals = steps.score("uniform", &[block_map(&found.block_sparsities, &linears)], &Pattern::Row)?;
        evals[0].d.clone()
    };
    if do_row {
        let grid = row_grid();
        let gqa = model.config.num_kv_heads < model.config.num_heads;
        let specs: Vec<&Spec> = (0..blocks).map(|b| model.spec(b)).collect();
        let candidates: Vec<Map> =
            grid.iter().map(|&l| row_map(&specs, gqa, &found.block_sparsities, &d, l)).collect::<Result<_>>()?;
        let evals = steps.score("row", &candidates, &Pattern::RowsVariable)?;
        let w = winner(&evals);
        found.lambda_row = Some(grid[w]);
        found.row_scores = grid.iter().zip(&evals).map(|(l, e)| [*l, e.score]).collect();
        found.map = candidates[w].clone();
        found.pattern = Pattern::RowsVariable;
    } else {
        found.map = block_map(&found.block_sparsities, &linears);
    }
    steps.bar.finish_and_clear();
    Ok(found)
}

/// The steps' candidates, scored a group at a time; each finished group is saved.
struct Steps<'a> {
    scoring: &'a Search<'a>,
    chunk: usize,
    saved: &'a dyn SavedScores,
    bar: indicatif::ProgressBar,
}

impl Steps<'_> {
    fn score(&self, step: &str, candidates: &[Map], pattern: &Pattern) -> Result<Vec<Evaluation>> {
        let blocks = self.scoring.model.num_blocks();
        let chunk = if self.chunk == 0 { candidates.len() } else { self.chunk };
        let mut evals = Vec::with_capacity(candidates.len());
        for (gi, group) in candidates.chunks(chunk.max(1)).enumerate() {
            let key = format!("{step}-{gi}");
            let (done, passed) = (evals.len(), self.bar.position());
            if let Some(e) = self.saved.scores(&key)? {
                if e.len() != group.len() {
                    bail!(
                        "--resume: the saved NeuroAL scores of the {step} step do not fit this run; rerun without --resume"
                    );
                }
                self.bar.inc((group.len() * blocks) as u64);
                evals.extend(e);
                continue;
            }
            // Called as block b starts: the group's candidates have passed b blocks.
            let progress = |_: usize, b: usize| {
                self.bar.set_message(format!(
                    "{step} step: candidates {}-{} of {}, block {}/{blocks}",
                    done + 1,
                    done + group.len(),
                    candidates.len(),
                    b + 1
                ));
                self.bar.set_position(passed + (group.len() * b) as u64);
            };
            let e = evaluate(self.scoring, pattern, group, group.len(), &progress)?;
            self.bar.set_position(passed + (group.len() * blocks) as u64);
            self.saved.save_scores(&key, &e)?;
            fault(&format!("after-search-{key}"));
            evals.extend(e);
        }
        Ok(evals)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prune::spread::numpy_sum;
    use crate::prune::spread::testing::close;

    #[test]
    fn neuroal_block_map_by_hand() {
        // 4 blocks, λ = 0.06, s = 0.5: t = 1..4 → v = [0, .04, .08, .12] → − .06 + .5 =
        // [.44, .48, .52, .56], sorted descending [.56, .52, .48, .44] → [.44, .48, .52, .56].
        close(&neuroal_block_sparsities(4, 0.06, 0.5), &[0.44, 0.48, 0.52, 0.56]);
        assert_eq!(block_grid(0.7).len(), 14);
        assert_eq!(block_grid(0.8).len(), 13);
        assert_eq!(*block_grid(0.8).last().unwrap(), 0.20);
        assert_eq!(row_grid()[0], 0.0);
    }

    #[test]
    fn row_map_routes_d_vectors_and_keeps_block_sparsity_where_declared() {
        // Two blocks, one row per linear except where noted; d of every linear is its index
        // pattern below. Block 0: q/k/v take o's d, o takes gate's, gate/up take down's, down
        // takes block 1's q. The last block keeps its block sparsity everywhere.
        let c = crate::model::config::Config::from_json(
            r#"{"model_type":"llama","vocab_size":10,"hidden_size":8,"intermediate_size":16,
            "num_hidden_layers":2,"num_attention_heads":2,"max_position_embeddings":32}"#,
        )
        .unwrap();
        let mut spec = crate::model::Specs::of(&c).block(0).clone();
        for l in spec.linears.iter_mut() {
            l.shape[0] = 2;
        }
        let (q, k, v, o, gate, up, down) = (0, 1, 2, 3, 4, 5, 6);
        let dv = |a: f32| vec![0.0, a];
        let mut d0: Vec<Vec<f32>> = (0..7).map(|i| dv(i as f32 + 1.0)).collect();
        d0[gate] = vec![0.0, 0.0]; // sums to zero: o_proj keeps the block sparsity
        let d1: Vec<Vec<f32>> = (0..7).map(|i| dv(10.0 + i as f32)).collect();
        let d = vec![d0, d1];
        let m = row_map(&[&spec, &spec], false, &[0.5, 0.7], &d, 0.1).unwrap();
        // A vector [0, a] with a > 0 spreads to [.5 + .1, .5 − .1] at b = .5, λ = .1.
        let spread = [0.6, 0.4];
        let rows = |s: &Sparsity| match s {
            Sparsity::PerRow(r) => r.clone(),
            other => panic!("{other:?}"),
        };
        for li in [q, k, v, up, gate, down] {
            close(&rows(&m[0][li]), &spread);
        }
        assert_eq!(m[0][o], Sparsity::PerRow(vec![0.5, 0.5]));
        for (li, s) in m[1].iter().enumerate() {
            assert_eq!(*s, Sparsity::PerRow(vec![0.7, 0.7]), "linear {li}");
        }
        // Under GQA q, k and v keep the block sparsity.
        let m = row_map(&[&spec, &spec], true, &[0.5, 0.7], &d, 0.1).unwrap();
        for li in [q, k, v] {
            assert_eq!(m[0][li], Sparsity::PerRow(vec![0.5, 0.5]));
        }
        close(&rows(&m[0][down]), &spread);
        // A family without declared routes cannot take the row step.
        spec.routes = None;
        assert!(
            row_map(&[&spec, &spec], false, &[0.5, 0.7], &d, 0.1)
                .unwrap_err()
                .to_string()
                .contains("declares no row routing")
        );
    }

    /// Phi-3's fused linears: each part of qkv (q, k, v) and of gate_up (gate, up) takes the
    /// consumer's spread once, in order.
    #[test]
    fn fused_linears_repeat_their_consumers_spread_per_part() {
        let c = crate::model::config::Config::from_json(
            r#"{"model_type":"phi3","vocab_size":10,"hidden_size":2,"intermediate_size":2,
            "num_hidden_layers":2,"num_attention_heads":1,"max_position_embeddings":32}"#,
        )
        .unwrap();
        let spec = crate::model::Specs::of(&c).block(0).clone();
        assert_eq!(spec.linears[0].shape, [6, 2]);
        assert_eq!(spec.linears[2].shape, [4, 2]);
        let (qkv, o, gate_up, down) = (0, 1, 2, 3);
        // d of o's inputs and of down's: [0, a], which spreads to [.6, .4] at b = .5, λ = .1.
        let d0: Vec<Vec<f32>> = (0..4).map(|i| vec![0.0, i as f32 + 1.0]).collect();
        let d = vec![d0.clone(), d0];
        let m = row_map(&[&spec, &spec], false, &[0.5, 0.7], &d, 0.1).unwrap();
        let rows = |s: &Sparsity| match s {
            Sparsity::PerRow(r) => r.clone(),
            other => panic!("{other:?}"),
        };
        close(&rows(&m[0][qkv]), &[0.6, 0.4, 0.6, 0.4, 0.6, 0.4]);
        close(&rows(&m[0][gate_up]), &[0.6, 0.4, 0.6, 0.4]);
        close(&rows(&m[0][o]), &[0.6, 0.4]);
        close(&rows(&m[0][down]), &[0.6, 0.4]);
    }

    #[test]
    fn sums_and_spreads_follow_numpy_and_the_authors_operation_order() {
        // numpy.add.reduce of x_i = sqrt(i + 1)/7 (numpy 2.4.6), bit for bit; from 100 values
        // on, a sequential sum differs.
        for (n, bits) in [
            (9, 0x4006106257e9021c_u64),
            (100, 0x4057fb16fd44fe25),
            (300, 0x407f01459119e388),
            (11008, 0x40fadb2901a21fa6),
        ] {
            let x: Vec<f64> = (0..n).map(|i| (i as f64 + 1.0).sqrt() / 7.0).collect();
            assert_eq!(numpy_sum(&x).to_bits(), bits, "{n} values");
        }
        // The authors' block step at λ 0.2, s 0.7 on six blocks gives block 0 the sparsity
        // 0.4999999999999999 (their get_distribution_block, run in Python), so a row of 256
        // prunes 127; the spread written as (x − min)/(max − min)·λ·2 gave 0.5 and 128.
        let b = neuroal_block_sparsities(6, 0.2, 0.7);
        assert_eq!(b[0], 0.4999999999999999);
        assert_eq!((256.0 * b[0]).floor(), 127.0);
    }

    #[test]
    fn neuroal_row_map_by_hand() {
        // r = [0, 2, 1, 1], λ = .1, b = .6: v = [0, .2, .1, .1] − .1 + .4 = [.3, .5, .4, .4]
        // → [.7, .5, .6, .6].
        close(&neuroal_row_sparsities(&[0.0, 2.0, 1.0, 1.0], 0.1, 0.6), &[0.7, 0.5, 0.6, 0.6]);
        // λ = 0 keeps the block sparsity on every row.
        close(&neuroal_row_sparsities(&[5.0, -1.0, 2.0], 0.0, 0.6), &[0.6, 0.6, 0.6]);
        // Clamped to [.01, .99]: v = [0, .5] − .25 + .02 = [−.23, .27] → [1.23 → .99, .73].
        close(&neuroal_row_sparsities(&[0.0, 1.0], 0.25, 0.98), &[0.99, 0.73]);
    }
}
