//! The sequential block pipeline of the Wanda reference: embed the calibration windows once;
//! for each block, load it alone, run it densely while recording every linear's input
//! statistics, score and mask each linear, zero the pruned weights, run the block again on the
//! same inputs, and hand those pruned outputs to the next block.

use burn::tensor::{DType, Tensor, TensorData};
use rayon::prelude::*;

use crate::bail;
use crate::gpu::tensor::host_f32;
use crate::gpu::tensor::to_dtype;
use crate::io::error::Result;
use crate::io::progress::progress_bar;
use crate::measure::trace::Trace;
use crate::model::{Block, Model, Positions, on_cpu};
use crate::prune::dsnot::{self, Dsnot};
pub use crate::prune::mask::{Bits, LayerMask};
use crate::prune::mask::{Pattern, Sparsity};
use crate::prune::pruner::{Calibration, Expected, Pruned, Pruner};
use crate::prune::score::{InputStats, apply_mask};
use crate::prune::settings::DsnotLinears;

/// Windows per forward pass during calibration.
pub const CHUNK: usize = 8;

/// The sparsity each linear gets: (block, linear index in the family's declared order) → sparsity.
pub type SparsityMap<'a> = &'a dyn Fn(usize, usize) -> Sparsity;

/// Embeds `windows` ([n · seqlen] ids) in chunks of [`CHUNK`] windows.
pub fn embed_windows(model: &Model, windows: &[u32], seqlen: usize) -> Result<Vec<Tensor<3>>> {
    windows.chunks(CHUNK * seqlen).map(|c| model.embed(c, c.len() / seqlen)).collect()
}

/// Runs `block` on every chunk of `hidden`, calibrating each linear on its inputs (with the
/// Hessian when `hessian`); returns the calibrations and the block's outputs. Fails, naming the
/// block and linear, when a statistic is not finite (NaN or infinite inputs, or an overflow).
pub fn run_recording(
    model: &Model,
    block: &Block,
    hidden: &[Tensor<3>],
    pos: &Positions,
    hessian: bool,
) -> Result<(Vec<Calibration>, Vec<Tensor<3>>)> {
    record(model, block, hidden, pos, hessian, true)
}

/// [`run_recording`] for passes that keep only the calibrations: the products that only feed
/// the block's output are skipped.
pub fn calibrate(
    model: &Model,
    block: &Block,
    hidden: &[Tensor<3>],
    pos: &Positions,
    hessian: bool,
) -> Result<Vec<Calibration>> {
    Ok(record(model, block, hidden, pos, hessian, false)?.0)
}

/// [`calibrate`] with up to `at_once` chunks' passes side by side on the CPU backends: a pass
/// has serial stretches (norms, statistics, the products' edges) that leave cores idle. Each
/// chunk's statistics are made alone and merged in chunk order, the same bits as one by one
/// ([`InputStats::merge`]). SparseGPT's Hessians, a running average, and GPUs, which overlap
/// queued work themselves, go one by one.
pub fn calibrate_at_once(
    model: &Model,
    block: &Block,
    hidden: &[Tensor<3>],
    pos: &Positions,
    hessian: bool,
    at_once: usize,
) -> Result<Vec<Calibration>> {
    if at_once <= 1 || hessian || !on_cpu(&model.device) {
        return calibrate(model, block, hidden, pos, hessian);
    }
    let mut stats = new_calibrations(model, block.index, false);
    for group in hidden.chunks(at_once) {
        let chunks: Vec<Vec<Option<InputStats>>> = group
            .par_iter()
            .map(|h| {
                let mut mine: Vec<Option<InputStats>> = stats
                    .iter()
                    .map(|c| c.as_ref().map(|c| InputStats::new(c.stats.sumsq.dims()[0], &model.device)))
                    .collect();
                block.record_inputs(h.clone(), pos, &model.spec(block.index).output_only, &mut |li, x| {
                    if let Some(s) = mine[li].as_mut() {
                        s.add(x, model.gpu.as_deref());
                    }
                });
                mine
            })
            .collect();
        for chunk in chunks {
            for (total, part) in stats.iter_mut().zip(chunk) {
                if let (Some(total), Some(part)) = (total.as_mut(), part) {
                    total.stats.merge(&part);
                }
            }
        }
    }
    let stats = fill_unrouted(model, block, hidden, pos, hessian, per_linear(model, block.index, stats));
    check_finite_stats(model, block.index, &stats)?;
    Ok(stats)
}

/// `block` on every chunk of `hidden`, up to `at_once` chunks side by side on the CPU backends
/// (as [`calibrate_at_once`]; each chunk's output is the same either way).
pub fn forward_at_once(
    model: &Model,
    block: &Block,
    hidden: Vec<Tensor<3>>,
    pos: &Positions,
    at_once: usize,
) -> Vec<Tensor<3>> {
    if at_once <= 1 || !on_cpu(&model.device) {
        return hidden.into_iter().map(|h| block.forward(h, pos, None)).collect();
    }
    let mut out = Vec::with_capacity(hidden.len());
    let mut rest = hidden.into_iter();
    loop {
        // Taken a group at a time, so that inputs already run are dropped.
        let group: Vec<Tensor<3>> = rest.by_ref().take(at_once).collect();
        if group.is_empty() {
            return out;
        }
        out.extend(group.into_par_iter().map(|h| block.forward(h, pos, None)).collect::<Vec<_>>());
    }
}

/// Both of the above: the block's outputs only when `outputs`.
fn record(
    model: &Model,
    block: &Block,
    hidden: &[Tensor<3>],
    pos: &Positions,
    hessian: bool,
    outputs: bool,
) -> Result<(Vec<Calibration>, Vec<Tensor<3>>)> {
    let (stats, out) = record_unchecked(model, block, hidden, pos, hessian, outputs);
    check_finite_stats(model, block.index, &stats)?;
    Ok((stats, out))
}

/// [`record`] without its finiteness check, which reads a value back and so waits for a GPU to
/// finish. For the NeuroAL search: it reads back once per candidate group, and its alignment
/// metric, finite only when the statistics are, is checked there, naming block and linear.
///
/// Linears that read the same input (the family's [`Spec::input_of`]) share one calibration:
/// the statistics, and SparseGPT's Hessian, are made once per input.
pub fn record_unchecked(
    model: &Model,
    block: &Block,
    hidden: &[Tensor<3>],
    pos: &Positions,
    hessian: bool,
    outputs: bool,
) -> (Vec<Calibration>, Vec<Tensor<3>>) {
    let (stats, out) = record_routed(model, block, hidden, pos, hessian, outputs);
    (fill_unrouted(model, block, hidden, pos, hessian, stats), out)
}

/// An expert the router sent no calibration token takes the statistics of every token
/// instead: a second pass sends every token through those experts, for the statistics only.
/// Without windows (a pruner that reads no calibration) there is nothing to fill.
fn fill_unrouted(
    model: &Model,
    block: &Block,
    hidden: &[Tensor<3>],
    pos: &Positions,
    hessian: bool,
    mut stats: Vec<Calibration>,
) -> Vec<Calibration> {
    let linears = model.linears(block.index);
    let unrouted: Vec<usize> =
        (0..stats.len()).filter(|&li| linears[li].expert.is_some() && stats[li].stats.tokens == 0).collect();
    if unrouted.is_empty() || hidden.is_empty() {
        return stats;
    }
    let experts: Vec<usize> = unrouted.iter().filter_map(|&li| linears[li].expert).collect();
    let mut all = block.clone();
    all.route_all_tokens(|e| experts.contains(&e));
    let (every_token, _) = record_routed(model, &all, hidden, pos, hessian, false);
    for li in unrouted {
        stats[li] = Calibration { every_token: true, ..every_token[li].clone() };
    }
    stats
}

/// [`record_unchecked`] as the block routes its tokens, unrouted experts left empty.
fn record_routed(
    model: &Model,
    block: &Block,
    hidden: &[Tensor<3>],
    pos: &Positions,
    hessian: bool,
    outputs: bool,
) -> (Vec<Calibration>, Vec<Tensor<3>>) {
    let mut stats = new_calibrations(model, block.index, hessian);
    let mut out = Vec::new();
    for h in hidden {
        let mut record = |li: usize, x: &Tensor<3>| {
            if let Some(c) = stats[li].as_mut() {
                c.add(x, model.gpu.as_deref());
            }
        };
        if outputs {
            out.push(block.forward(h.clone(), pos, Some(&mut record)));
        } else {
            block.record_inputs(h.clone(), pos, &model.spec(block.index).output_only, &mut record);
        }
    }
    (per_linear(model, block.index, stats), out)
}

/// An empty calibration for each linear of block `b` that records its input, `None` for those
/// that share another's (the family's [`Spec::input_of`](crate::model::Spec)).
fn new_calibrations(model: &Model, b: usize, hessian: bool) -> Vec<Option<Calibration>> {
    let input_of = &model.spec(b).input_of;
    model
        .linear_shapes(b)
        .iter()
        .enumerate()
        .map(|(li, s)| (input_of[li] == li).then(|| Calibration::new(s[1], &model.device, hessian)))
        .collect()
}

/// Each linear's calibration from [`new_calibrations`]' recorded ones: its own, or the one of
/// the linear that reads the same input.
fn per_linear(model: &Model, b: usize, stats: Vec<Option<Calibration>>) -> Vec<Calibration> {
    let input_of = &model.spec(b).input_of;
    // Every family's `input_of` names a recording linear (a test checks the declarations).
    (0..stats.len()).map(|li| stats[input_of[li]].clone().expect("input_of names a linear that records")).collect()
}

/// The calibrations of several sets of hidden states through the same (dense) block, as
/// [`record_unchecked`] without outputs gives for each set alone, from one pass: chunk i of
/// every set goes through the block as one batch, so every product multiplies the sets' rows
/// with one launch, and each set's calibrations are recorded from its own rows of that batch,
/// chunk by chunk as alone. Each row of a product, a norm or an attention depends only on its own
/// window, so the statistics are the same. The sets hold chunks of equal sizes.
pub fn calibrate_together(
    model: &Model,
    block: &Block,
    sets: &[&[Tensor<3>]],
    pos: &Positions,
    hessian: bool,
) -> Vec<Vec<Calibration>> {
    // Experts see only the rows routed to them, which are not split by set.
    if sets.len() == 1 || block.routes_tokens() {
        return sets.iter().map(|set| record_unchecked(model, block, set, pos, hessian, false).0).collect();
    }
    let mut stats: Vec<Vec<Option<Calibration>>> =
        sets.iter().map(|_| new_calibrations(model, block.index, hessian)).collect();
    let chunks = sets.first().map_or(0, |s| s.len());
    for i in 0..chunks {
        let windows = sets[0][i].dims()[0];
        let batch = Tensor::cat(sets.iter().map(|s| s[i].clone()).collect(), 0);
        let mut record = |li: usize, x: &Tensor<3>| {
            for (c, set) in stats.iter_mut().enumerate() {
                if let Some(cal) = set[li].as_mut() {
                    cal.add(&x.clone().narrow(0, c * windows, windows), model.gpu.as_deref());
                }
            }
        };
        block.record_inputs(batch, pos, &model.spec(block.index).output_only, &mut record);
    }
    stats.into_iter().map(|set| per_linear(model, block.index, set)).collect()
}

/// One readback for the whole block; the slow search for the culprit only when it fails.
fn check_finite_stats(model: &Model, block: usize, stats: &[Calibration]) -> Result<()> {
    let total = stats.iter().map(|s| s.stats.sumsq.clone().sum()).reduce(|a, b| a + b);
    let Some(total) = total else { return Ok(()) };
    if host_f32(total, "input statistics")?.iter().all(|v| v.is_finite()) {
        return Ok(());
    }
    for (li, s) in stats.iter().enumerate() {
        if !host_f32(s.stats.sumsq.clone().sum(), "input statistics")?.iter().all(|v| v.is_finite()) {
            bail!(
                "block {block} {}: its input holds NaN or infinite values (the previous layers' outputs overflowed or hold NaN)",
                model.linears(block)[li].name
            );
        }
    }
    Ok(())
}

/// A mask tensor (1.0 = pruned) from its packed bits.
pub fn mask_tensor(m: &LayerMask, device: &burn::tensor::Device) -> Tensor<2> {
    let flags: Vec<f32> = m.pruned.iter().map(|b| if b { 1.0 } else { 0.0 }).collect();
    Tensor::from_data(TensorData::new(flags, m.shape), device)
}

/// Prunes every block in order and returns the masks, block by block.
pub fn prune(
    model: &Model,
    windows: &[u32],
    seqlen: usize,
    pruner: &dyn Pruner,
    pattern: &Pattern,
    sparsity: SparsityMap,
) -> Result<Vec<LayerMask>> {
    let pipeline =
        Pipeline { model, windows, seqlen, pruner, pattern, sparsity, at_once: 1, refine: None, trace: &Trace::off() };
    prune_resumable(&pipeline, Vec::new(), &mut |_, _| Ok(()))
}

/// What the block pipeline prunes: the model over its calibration windows (`seqlen` tokens
/// each, one after another) with a pruner, a mask pattern and a sparsity per (block, linear).
/// On the CPU backends up to `at_once` chunks' passes run side by side, with the same results.
pub struct Pipeline<'a> {
    pub model: &'a Model,
    pub windows: &'a [u32],
    pub seqlen: usize,
    pub pruner: &'a dyn Pruner,
    pub pattern: &'a Pattern,
    pub sparsity: SparsityMap<'a>,
    pub at_once: usize,
    /// DSnoT after the pruner, on the linears named.
    pub refine: Option<(Dsnot, DsnotLinears)>,
    /// Where the stages' times go (`NEUROAL_TRACE`).
    pub trace: &'a Trace,
}

/// A linear pruned on the device, its mask on its way back to the host.
struct Queued {
    shape: [usize; 2],
    name: String,
    sparsity: Sparsity,
    /// New kept weights (SparseGPT's), read back already.
    values: Option<Vec<f32>>,
    /// An expert's calibration tokens ([`LayerMask::routed_tokens`]).
    routed_tokens: Option<usize>,
    /// A mask DSnoT refined: its count as refined (the pruner's was checked before), which
    /// the copy read back must have.
    refined: Option<usize>,
    packed: crate::prune::mask::PackedMask,
}

/// [`prune`], continuing after the blocks whose masks `done` holds (an interrupted run's):
/// those are replayed, their saved masks (or new values, for pruners that change kept weights)
/// applied and the block run once to rebuild the next block's inputs, exactly as the pruning
/// pass had computed them. `finished` is told each newly pruned block's masks.
pub fn prune_resumable(
    p: &Pipeline,
    done: Vec<Vec<LayerMask>>,
    finished: &mut dyn FnMut(usize, &[LayerMask]) -> Result<()>,
) -> Result<Vec<LayerMask>> {
    let model = p.model;
    let pos = model.positions(p.seqlen);
    // A pruner that reads no calibration (magnitude) gets the statistics of no windows: no
    // window is embedded, so its dense passes and forwards run over nothing.
    let mut hidden = if p.pruner.needs_calibration() { embed_windows(model, p.windows, p.seqlen)? } else { Vec::new() };
    let bar = progress_bar(model.num_blocks(), "pruning blocks");
    let mut masks = Vec::new();
    let replay = done.len();
    let mut done = done.into_iter();
    let dev = &model.device;
    let mut blocks = model.blocks();
    while let Some(block) = p.trace.stage("prune: load block", dev, || blocks.next()) {
        let mut block = block?;
        let b = block.index;
        // A replayed block's saved masks, or a new block's masks still on their way from the device.
        let (saved, queued) = if b < replay {
            let saved = done.next().unwrap_or_default();
            replay_block(p, &mut block, &saved)?;
            (Some(saved), Vec::new())
        } else {
            (None, prune_block(p, &mut block, &hidden, &pos)?)
        };
        // The next block's inputs (the last block's outputs would feed nothing), queued before any
        // mask is waited for: the masks' copies were queued behind their packing, so the host
        // unpacks and checks them while the device runs the forward.
        if b + 1 < model.num_blocks() {
            hidden =
                p.trace.stage("prune: block forward", dev, || forward_at_once(model, &block, hidden, &pos, p.at_once));
        }
        let block_masks = match saved {
            Some(saved) => saved,
            None => {
                let block_masks = queued.into_iter().map(|q| read_mask(p, q)).collect::<Result<Vec<_>>>()?;
                finished(b, &block_masks)?;
                block_masks
            }
        };
        masks.extend(block_masks);
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(masks)
}

/// Applies a replayed block's saved masks (or new values) to its weights, once they are shown
/// to fit this model.
fn replay_block(p: &Pipeline, block: &mut Block, saved: &[LayerMask]) -> Result<()> {
    let (model, b) = (p.model, block.index);
    let shapes = model.linear_shapes(b);
    let fits = |li: usize, m: &LayerMask| {
        let n = shapes[li][0] * shapes[li][1];
        m.name == model.linear_name(b, li)
            && m.shape == shapes[li]
            && m.pruned.len() == n
            && m.values.as_ref().is_none_or(|v| v.len() == n)
    };
    if saved.len() != shapes.len() || saved.iter().enumerate().any(|(li, m)| !fits(li, m)) {
        bail!("--resume: the saved masks of block {b} do not fit this model; rerun without --resume");
    }
    for (li, m) in saved.iter().enumerate() {
        let weight = match &m.values {
            Some(v) => to_dtype(Tensor::from_data(TensorData::new(v.clone(), m.shape), &model.device), model.dtype),
            None => to_dtype(
                apply_mask(
                    model.gpu.as_deref(),
                    to_dtype(block.linears()[li].weight.clone(), DType::F32),
                    mask_tensor(m, &model.device),
                ),
                model.dtype,
            ),
        };
        block.set_weight(li, weight);
    }
    Ok(())
}

/// Wanda's order: statistics from the dense block (its outputs are not kept), then every
/// linear pruned. On a GPU every linear's pruning is queued before any mask is read back: the
/// device works through them while the host unpacks the masks that are done.
fn prune_block(p: &Pipeline, block: &mut Block, hidden: &[Tensor<3>], pos: &Positions) -> Result<Vec<Queued>> {
    let (model, b, dev) = (p.model, block.index, &p.model.device);
    let nsamples = p.windows.len() / p.seqlen;
    let calib = p.trace.stage("prune: dense pass", dev, || {
        calibrate_at_once(model, block, hidden, pos, p.pruner.needs_hessian(), p.at_once)
    })?;
    let variances = match p.refine {
        Some(_) => p.trace.stage("prune: dense pass", dev, || input_variances(model, block, hidden, pos))?,
        None => Vec::new(),
    };
    let mut queued = Vec::with_capacity(calib.len());
    // Each calibration goes with its linear: a SparseGPT factor shared by the linears of one
    // input is freed after the last of them.
    for (li, calib) in calib.into_iter().enumerate() {
        let s = (p.sparsity)(b, li);
        let name = model.linear_name(b, li);
        // Pruners compute in f32 whatever the compute dtype (see `Pruner::prune`).
        let weight = block.linears()[li].weight.clone();
        let gpu = model.gpu.as_deref();
        let pruned = p
            .trace
            .stage("prune: prune linears", dev, || p.pruner.prune(gpu, weight.clone(), &calib, nsamples, p.pattern, &s))
            .map_err(|e| crate::err!("{name}: {e}"))?;
        let refine = match p.refine {
            Some((dsnot, linears)) if linears == DsnotLinears::All || model.linears(b)[li].in_attention() => {
                variances.get(model.spec(b).input_of[li]).cloned().flatten().map(|v| (dsnot, v))
            }
            _ => None,
        };
        let (pruned, refined) = match refine {
            Some((dsnot, variance)) => p.trace.stage("prune: refine masks", dev, || {
                let linear = Refined { weight, calib: &calib, variance: &variance, nsamples, name: &name };
                refine_linear(p, dsnot, &linear, pruned, &s).map(|(pruned, count)| (pruned, Some(count)))
            })?,
            None => (pruned, None),
        };
        let values = if p.pruner.changes_kept_weights() {
            Some(p.trace.stage("prune: read masks", dev, || host_f32(pruned.weight.clone(), &name))?)
        } else {
            None
        };
        if let Some(v) = &values {
            fits_stored_dtype(model, &name, v)?;
        }
        block.set_weight(li, to_dtype(pruned.weight, model.dtype));
        let packed = p.trace.stage("prune: pack masks", dev, || crate::prune::mask::pack(pruned.mask, &name))?;
        let counted = p.pruner.needs_calibration() && !model.experts_see_every_token;
        let routed_tokens = match model.linears(b)[li].expert {
            Some(_) if counted => Some(if calib.every_token { 0 } else { calib.stats.tokens }),
            _ => None,
        };
        let shape = model.linear_shapes(b)[li];
        queued.push(Queued { shape, name, sparsity: s, values, packed, routed_tokens, refined });
    }
    Ok(queued)
}

/// Per linear that records its input (the family's `input_of`), the variance of each input
/// channel: each window's variance over its tokens, averaged over the windows, as DSnoT's
/// authors keep it. `None` for the others, and for an expert sent no token.
fn input_variances(
    model: &Model,
    block: &Block,
    hidden: &[Tensor<3>],
    pos: &Positions,
) -> Result<Vec<Option<Vec<f32>>>> {
    let input_of = &model.spec(block.index).input_of;
    let mut sums: Vec<Option<(Tensor<1>, usize)>> = vec![None; input_of.len()];
    for h in hidden {
        block.record_inputs(h.clone(), pos, &model.spec(block.index).output_only, &mut |li, x| {
            if input_of[li] != li {
                return;
            }
            let x = to_dtype(x.clone(), DType::F32);
            let [b, _, c] = x.dims();
            let centred = x.clone() - x.mean_dim(1);
            let var = centred.square().mean_dim(1).sum_dim(0).reshape([c]);
            sums[li] = Some(match sums[li].take() {
                Some((sum, n)) => (sum + var, n + b),
                None => (var, b),
            });
        });
    }
    sums.into_iter()
        .map(|s| match s {
            Some((sum, n)) if n > 0 => Ok(Some(host_f32(sum.div_scalar(n as f64), "input variance")?)),
            _ => Ok(None),
        })
        .collect()
}

/// What DSnoT reads of one linear: its dense weight (compute dtype), its calibration and its
/// inputs' variance.
struct Refined<'a> {
    weight: Tensor<2>,
    calib: &'a Calibration,
    variance: &'a [f32],
    nsamples: usize,
    name: &'a str,
}

/// The pruner's mask, checked, then refined by DSnoT on the host; the dense weight zeroed by
/// the refined mask.
fn refine_linear(p: &Pipeline, dsnot: Dsnot, linear: &Refined, base: Pruned, s: &Sparsity) -> Result<(Pruned, usize)> {
    let name = linear.name;
    let weight = to_dtype(linear.weight.clone(), DType::F32);
    let ([rows, cols], device) = (weight.dims(), weight.device());
    let mut pruned: Vec<bool> = host_f32(base.mask, name)?.iter().map(|&m| m != 0.0).collect();
    // The base pruner's count is checked before DSnoT moves weights.
    let got = pruned.iter().filter(|&&m| m).count();
    if let Expected::Exactly(want) = p.pruner.expected(p.pattern, s, [rows, cols])
        && got != want
    {
        bail!(
            "{name}: pruned {got} weights where the sparsity map asks for {want}; refusing to write a wrongly pruned model"
        );
    }
    let per_window = |t: Tensor<1>| -> Result<Vec<f32>> { host_f32(t.div_scalar(linear.nsamples as f64), name) };
    let w = host_f32(weight, name)?;
    let mean = per_window(linear.calib.stats.sum.clone())?;
    let scaler = per_window(linear.calib.stats.sumsq.clone())?;
    let inputs = dsnot::Inputs { weight: &w, cols, mean: &mean, scaler: &scaler, variance: linear.variance };
    dsnot.refine(&inputs, &mut pruned);
    let kept: Vec<f32> = w.iter().zip(&pruned).map(|(&v, &m)| if m { 0.0 } else { v }).collect();
    let flags: Vec<f32> = pruned.iter().map(|&m| if m { 1.0 } else { 0.0 }).collect();
    let count = pruned.iter().filter(|&&m| m).count();
    let refined = Pruned {
        weight: Tensor::from_data(TensorData::new(kept, [rows, cols]), &device),
        mask: Tensor::from_data(TensorData::new(flags, [rows, cols]), &device),
    };
    Ok((refined, count))
}

/// A queued linear's mask, read back and checked against the count its sparsity asks for.
fn read_mask(p: &Pipeline, q: Queued) -> Result<LayerMask> {
    let (shape, name) = (q.shape, q.name);
    let mut bits = p.trace.stage("prune: read masks", &p.model.device, || q.packed.read(&name))?;
    if bits.len() != shape[0] * shape[1] {
        bail!(
            "{name}: the mask read back from the device has {} entries, expected {}",
            bits.len(),
            shape[0] * shape[1]
        );
    }
    if crate::io::faults::fault_point("drop-one-mask-bit") {
        let first = bits.ones().next();
        let flags: Vec<bool> = bits.iter().enumerate().map(|(i, f)| f && Some(i) != first).collect();
        bits = Bits::from_flags(flags.into_iter());
    }
    let lm = LayerMask { name, shape, pruned: bits, values: q.values, routed_tokens: q.routed_tokens };
    let got = lm.pruned.count_ones();
    let expected = match q.refined {
        Some(count) => Expected::Exactly(count),
        None => p.pruner.expected(p.pattern, &q.sparsity, shape),
    };
    match expected {
        Expected::Exactly(want) if got != want => {
            bail!(
                "{}: pruned {got} weights where the sparsity map asks for {want}; refusing to write a wrongly pruned model",
                lm.name
            )
        }
        Expected::AtLeast(want) if got < want => {
            bail!(
                "{}: pruned {got} weights where the sparsity map asks for at least {want}; refusing to write a wrongly pruned model",
                lm.name
            )
        }
        _ => {}
    }
    Ok(lm)
}

/// New kept weights (SparseGPT's) must fit the dtype the checkpoint stores them in: a value
/// past f16's range would be written as infinity.
fn fits_stored_dtype(model: &Model, name: &str, values: &[f32]) -> Result<()> {
    let (_, info) = model.checkpoint.info(name)?;
    let stored = match info.dtype {
        safetensors::Dtype::F16 => DType::F16,
        safetensors::Dtype::BF16 => DType::BF16,
        _ => return Ok(()),
    };
    if let Some(i) = crate::io::checkpoint::first_out_of_range(values, stored) {
        let (what, max) = crate::io::checkpoint::half_range(stored);
        let cols = info.shape[1];
        bail!(
            "{name}: the pruned weight at row {}, column {} is {}, beyond {what}'s range (±{max}), the checkpoint's dtype; refusing to write it as infinity (store the checkpoint in f32 first, or use another --method)",
            i / cols,
            i % cols,
            values[i]
        );
    }
    Ok(())
}
