//! Top-ups decide how the target sparsity s is spread over blocks and rows; they only build
//! sparsity maps, which the engine applies. Uniform: s everywhere. OWL: per block, from the
//! outlier ratio of Wanda scores. NeuroAL: a zeroth-order search over λ maximising the neuron
//! alignment between dense and sparse activations, first per block, then per row.

use burn::tensor::{DType, Tensor};
use rayon::prelude::*;

use crate::error::Result;
use crate::kernels;
use crate::model::{host_f32, on_cpu, to_dtype};
use crate::trace::stage;
use crate::bail;
use crate::mask::{Pattern, Sparsity};
use crate::model::{Model, Spec};
use crate::pipeline::{calibrate_together, embed_windows, record_unchecked, run_recording};
use crate::pruner::Calibration;
use crate::pruner::Pruner;
use crate::score::score;

/// [block][linear in the family's declared order] → sparsity.
pub type Map = Vec<Vec<Sparsity>>;

pub fn uniform_map(blocks: usize, linears: usize, s: f64) -> Map {
    vec![vec![Sparsity::Uniform(s); linears]; blocks]
}

/// OWL's and NeuroAL's clamp of block sparsities: ≤ 0 → 0.01, ≥ 1 → 0.99.
fn clamp_block(s: f64) -> f64 {
    if s <= 0.0 {
        0.01
    } else if s >= 1.0 {
        0.99
    } else {
        s
    }
}

/// Σx as numpy sums a float64 array (pairwise: eight running sums over blocks of at most 128
/// values, halves above that), so that the authors' sparsities come out to the bit: a
/// sequential sum differs in the last bits, and where in·s lands on an integer (λ 0.2 at 70%
/// on six blocks gives block 0 the sparsity 0.5, which their arithmetic makes
/// 0.4999999999999999) every row's count ⌊in·s⌋ then differs by one.
fn numpy_sum(x: &[f64]) -> f64 {
    const BLOCK: usize = 128;
    let n = x.len();
    if n < 8 {
        x.iter().fold(0.0, |sum, &v| sum + v)
    } else if n <= BLOCK {
        let mut r: [f64; 8] = x[..8].try_into().expect("eight values");
        let whole = n - n % 8;
        for chunk in x[8..whole].chunks_exact(8) {
            for (r, &v) in r.iter_mut().zip(chunk) {
                *r += v;
            }
        }
        let mut sum = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        for &v in &x[whole..] {
            sum += v;
        }
        sum
    } else {
        let half = n / 2 - (n / 2) % 8;
        numpy_sum(&x[..half]) + numpy_sum(&x[half..])
    }
}

fn numpy_mean(x: &[f64]) -> f64 {
    numpy_sum(x) / x.len().max(1) as f64
}

fn min_max(x: &[f64]) -> (f64, f64) {
    (x.iter().cloned().fold(f64::INFINITY, f64::min), x.iter().cloned().fold(f64::NEG_INFINITY, f64::max))
}

/// The block step's and OWL's spread, in the authors' operation order (their
/// get_distribution_block and get_sparsity_owl): v = (x − min x) · (1/(max x − min x) · λ · 2),
/// then v − mean v + (1 − s). A constant x gives v = 1 − s everywhere (no spread to make;
/// theirs divides by zero).
fn spread_blocks(x: &[f64], lambda: f64, s: f64) -> Vec<f64> {
    let (min, max) = min_max(x);
    let v: Vec<f64> = if max > min {
        let scale = 1.0 / (max - min) * lambda * 2.0;
        x.iter().map(|&o| (o - min) * scale).collect()
    } else {
        vec![0.0; x.len()]
    };
    let mean = numpy_mean(&v);
    v.iter().map(|&vi| vi - mean + (1.0 - s)).collect()
}

/// The row step's spread, in the authors' operation order (their get_distribution_row):
/// v = (x − min x)/(max x − min x) · λ · 2, then v − (mean v − (1 − b)).
fn spread_rows(x: &[f64], lambda: f64, b: f64) -> Vec<f64> {
    let (min, max) = min_max(x);
    let v: Vec<f64> = if max > min { x.iter().map(|&o| (o - min) / (max - min) * lambda * 2.0).collect() } else { vec![0.0; x.len()] };
    let shift = numpy_mean(&v) - (1.0 - b);
    v.iter().map(|&vi| vi - shift).collect()
}

/// OWL block sparsities from outlier ratios (no sorting).
pub fn owl_block_sparsities(outlier_ratios: &[f64], lambda: f64, s: f64) -> Vec<f64> {
    spread_blocks(outlier_ratios, lambda, s).iter().map(|v| clamp_block(1.0 - v)).collect()
}

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

pub fn block_map(block_sparsities: &[f64], linears: usize) -> Map {
    block_sparsities.iter().map(|&b| vec![Sparsity::Uniform(b); linears]).collect()
}

/// The row-step candidate map for λ from the block map and the d vectors of its evaluation.
/// Each linear's rows are spread by the d of the linear its family routes them to (an output
/// row of one layer is an input channel of the layer that consumes it). The last block keeps
/// its block sparsity, and so do q, k and v under grouped-query attention (`gqa`).
pub fn row_map(spec: &Spec, gqa: bool, blocks: &[f64], d: &[Vec<Vec<f32>>], lambda: f64) -> Result<Map> {
    let Some(routes) = &spec.routes else {
        bail!("this model family declares no row routing, so NeuroAL's row step cannot run; use --neuroal-step block");
    };
    let last = blocks.len() - 1;
    Ok(blocks
        .iter()
        .enumerate()
        .map(|(bi, &b)| {
            spec.linears
                .iter()
                .zip(routes)
                .map(|(linear, route)| {
                    let keep = bi == last || (gqa && linear.qkv);
                    let source = if route.next_block { (bi + 1).min(last) } else { bi };
                    let r = &d[source][route.linear];
                    let sum: f64 = r.iter().map(|&x| x as f64).sum();
                    if keep || sum == 0.0 {
                        Sparsity::PerRow(vec![b; linear.shape[0]])
                    } else {
                        Sparsity::PerRow(neuroal_row_sparsities(r, lambda, b))
                    }
                })
                .collect()
        })
        .collect())
}

/// One candidate's result: Σ m over all linears, and every linear's d = a_dense − a_sparse.
#[derive(Clone, Debug)]
pub struct Evaluation {
    pub score: f64,
    pub d: Vec<Vec<Vec<f32>>>,
}

/// m and d of one linear: on the device in WGSL on wgpu, else the burn-ops twin.
pub fn alignment(dense: Tensor<1>, sparse: Tensor<1>) -> Result<(f32, Vec<f32>)> {
    let n = dense.dims()[0];
    let (m, d) = alignment_on_device(dense, sparse);
    let m = host_f32(m, "alignment metric")?;
    let d = host_f32(d, "alignment difference")?;
    if m.len() != 1 || d.len() != n {
        bail!("alignment: the device returned {} and {} values, expected 1 and {n}", m.len(), d.len());
    }
    Ok((m[0], d))
}

/// m [1] and d of one linear, left on the device (read back once a candidate group ends).
pub fn alignment_on_device(dense: Tensor<1>, sparse: Tensor<1>) -> (Tensor<1>, Tensor<1>) {
    if kernels::is_wgpu(&dense) {
        kernels::alignment(dense, sparse)
    } else {
        alignment_reference(dense, sparse)
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

/// Scores candidate maps with the search windows. All candidates of a chunk share each block
/// load (each carries its own hidden states); `chunk` = 1 evaluates them one by one. `plan`
/// says how many run side by side and how many share a dense pass; each candidate's arithmetic
/// is the same either way (a test demands the same bits).
#[allow(clippy::too_many_arguments)]
pub fn evaluate(
    model: &Model,
    windows: &[u32],
    seqlen: usize,
    pruner: &dyn Pruner,
    pattern: &Pattern,
    candidates: &[Map],
    chunk: usize,
    plan: SearchPlan,
    progress: &dyn Fn(usize, usize),
) -> Result<Vec<Evaluation>> {
    let at_once = if on_cpu(&model.device) { plan.at_once.max(1) } else { 1 };
    let dense_batch = plan.dense_batch.max(1);
    let dev = &model.device;
    let nsamples = windows.len() / seqlen;
    let pos = model.positions(seqlen);
    let names: Vec<&str> = model.linears().iter().map(|l| l.name).collect();
    let mut results = Vec::with_capacity(candidates.len());
    for group in candidates.chunks(chunk.max(1)) {
        // One embedding of the windows, which each candidate carries on from.
        let embedded = embed_windows(model, windows, seqlen)?;
        let mut hidden: Vec<Vec<Tensor<3>>> = group.iter().map(|_| embedded.clone()).collect();
        // Per candidate, every linear's m and d in (block, linear) order, kept on the device.
        let mut pending: Vec<Vec<(Tensor<1>, Tensor<1>)>> = group.iter().map(|_| Vec::new()).collect();
        let mut blocks = model.blocks();
        while let Some(block) = stage("search: load block", dev, || blocks.next()) {
            let block = block?;
            let b = block.index;
            progress(results.len(), b);
            // Every candidate enters block 0 with the same embeddings: one dense pass serves all.
            let shared = (b == 0).then(|| stage("search: dense pass", dev, || record_unchecked(model, &block, &hidden[0], &pos, pruner.needs_hessian(), false).0));
            // One candidate through this block, given its dense statistics: its pruned copy of
            // the block (sharing the other tensors), its sparse pass; its hidden states move on.
            let one = |map: &Map, stats_dense: &[Calibration], hidden: &mut Vec<Tensor<3>>| -> Result<Vec<(Tensor<1>, Tensor<1>)>> {
                let mut sparse = block.clone();
                stage("search: prune linears", dev, || -> Result<()> {
                    for li in 0..names.len() {
                        let pruned = pruner
                            .prune_weight(block.linears()[li].weight.clone(), &stats_dense[li], nsamples, pattern, &map[b][li])
                            .map_err(|e| crate::err!("NeuroAL: block {b} {}: {e}", names[li]))?;
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
                // Neither pass reads back: the search waits for the device once per group. The
                // last block's outputs would feed nothing: only its statistics are recorded.
                let (stats_sparse, outputs) = stage("search: sparse pass", dev, || record_unchecked(model, &sparse, hidden, &pos, false, b + 1 < model.num_blocks()));
                *hidden = outputs;
                // Linears that read one input have the same activations: one metric each.
                let input_of = &model.spec.input_of;
                let per_linear = stage("search: alignment", dev, || {
                    let mut per_linear: Vec<(Tensor<1>, Tensor<1>)> = Vec::with_capacity(names.len());
                    for li in 0..names.len() {
                        let md = if input_of[li] != li {
                            per_linear[input_of[li]].clone()
                        } else {
                            let a_dense = stats_dense[li].stats.scaler_row(nsamples).sqrt();
                            let a_sparse = stats_sparse[li].stats.scaler_row(nsamples).sqrt();
                            alignment_on_device(a_dense, a_sparse)
                        };
                        per_linear.push(md);
                    }
                    per_linear
                });
                Ok(per_linear)
            };
            // The candidates a step at a time: their dense statistics (shared at block 0, else in
            // batches of `dense_batch`), then each one's pruning and sparse pass, `at_once` of
            // them side by side. Only one step's statistics are held (SparseGPT's Hessians are
            // large).
            let step = dense_batch.max(at_once);
            let mut per: Vec<Result<_>> = Vec::with_capacity(group.len());
            for (maps, hs) in group.chunks(step).zip(hidden.chunks_mut(step)) {
                let dense: Vec<Vec<Calibration>> = match &shared {
                    Some(s) => vec![s.clone(); maps.len()],
                    None => stage("search: dense pass", dev, || {
                        let batch = |hs: &[Vec<Tensor<3>>]| {
                            let sets: Vec<&[Tensor<3>]> = hs.iter().map(|h| h.as_slice()).collect();
                            calibrate_together(model, &block, &sets, &pos, pruner.needs_hessian())
                        };
                        let batches: Vec<_> = if at_once == 1 { hs.chunks(dense_batch).map(batch).collect() } else { hs.par_chunks(dense_batch).map(batch).collect() };
                        batches.into_iter().flatten().collect()
                    }),
                };
                for ((maps, hs), dense) in maps.chunks(at_once).zip(hs.chunks_mut(at_once)).zip(dense.chunks(at_once)) {
                    if at_once == 1 {
                        per.extend(maps.iter().zip(hs.iter_mut()).zip(dense).map(|((map, h), d)| one(map, d, h)));
                    } else {
                        per.extend(maps.par_iter().zip(hs.par_iter_mut()).zip(dense.par_iter()).map(|((map, h), d)| one(map, d, h)).collect::<Vec<_>>());
                    }
                }
            }
            for (c, r) in per.into_iter().enumerate() {
                pending[c].extend(r?);
            }
        }
        // One readback of m and one of d per candidate; scores summed in (block, linear) order.
        let mut evals = Vec::with_capacity(group.len());
        for per in pending {
            let lens: Vec<usize> = per.iter().map(|(_, d)| d.dims()[0]).collect();
            let (ms, ds): (Vec<Tensor<1>>, Vec<Tensor<1>>) = per.into_iter().unzip();
            let (m, d) = stage("search: read back", dev, || -> Result<_> {
                Ok((host_f32(Tensor::cat(ms, 0), "alignment metric")?, host_f32(Tensor::cat(ds, 0), "alignment difference")?))
            })?;
            if m.len() != lens.len() || d.len() != lens.iter().sum::<usize>() {
                bail!("alignment: the device returned {} and {} values, expected {} and {}", m.len(), d.len(), lens.len(), lens.iter().sum::<usize>());
            }
            let mut e = Evaluation { score: 0.0, d: Vec::new() };
            let mut at = 0;
            for (k, (mk, n)) in m.iter().zip(&lens).enumerate() {
                let (b, li) = (k / names.len(), k % names.len());
                if !mk.is_finite() {
                    bail!("NeuroAL: block {b} {}: the alignment metric is {mk} (all activations zero or not finite)", names[li]);
                }
                e.score += *mk as f64;
                if li == 0 {
                    e.d.push(Vec::with_capacity(names.len()));
                }
                if let Some(last) = e.d.last_mut() {
                    last.push(d[at..at + n].to_vec());
                }
                at += n;
            }
            evals.push(e);
        }
        results.extend(evals);
    }
    Ok(results)
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

/// OWL outlier ratio of each block over the dense model: 100 × #(score > M·mean) / #scores,
/// with the Wanda scores of all the block's linears taken together.
pub fn owl_outlier_ratios(model: &Model, windows: &[u32], seqlen: usize, m: f64) -> Result<Vec<f64>> {
    let nsamples = windows.len() / seqlen;
    let pos = model.positions(seqlen);
    let shapes = model.linear_shapes();
    let mut hidden = embed_windows(model, windows, seqlen)?;
    let mut ratios = Vec::new();
    for block in model.blocks() {
        let block = block?;
        let b = block.index;
        let (stats, outputs) = run_recording(model, &block, &hidden, &pos, false)?;
        hidden = outputs;
        let scores: Vec<Tensor<2>> = block
            .linears()
            .iter()
            .zip(&stats)
            .map(|(l, st)| score(to_dtype(l.weight.clone(), DType::F32), Some(st.stats.scaler_row(nsamples))))
            .collect();
        let count: usize = shapes.iter().map(|s| s[0] * s[1]).sum();
        let read = |t: Tensor<1>| -> Result<f64> { Ok(host_f32(t, "OWL scores")?[0] as f64) };
        let mut total = 0.0;
        for s in &scores {
            total += read(s.clone().sum())?;
        }
        if !total.is_finite() {
            bail!("OWL: block {b}: the Wanda scores are not finite");
        }
        let threshold = m * total / count as f64;
        let mut outliers: i64 = 0;
        for s in &scores {
            outliers += s
                .clone()
                .greater_elem(threshold)
                .int()
                .sum()
                .try_into_scalar::<i64>()
                .map_err(|e| crate::err!("OWL scores: reading the result back from the device failed: {}", crate::error::device_words(&e.to_string())))?;
        }
        ratios.push(100.0 * outliers as f64 / count as f64);
    }
    Ok(ratios)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: &[f64], b: &[f64]) {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() < 1e-12, "{a:?} vs {b:?}");
        }
    }

    #[test]
    fn owl_map_by_hand() {
        // o = [1, 3, 2], λ = 0.08, s = 0.7: v = [0, .16, .08] → mean .08 → v = [.22, .38, .30]
        // → sparsity [.78, .62, .70].
        close(&owl_block_sparsities(&[1.0, 3.0, 2.0], 0.08, 0.7), &[0.78, 0.62, 0.70]);
        // Clamping: λ = 0.5, s = 0.98: v = [0, 1] − .5 + .02 = [−.48, .52] → [1.48 → .99, .48].
        close(&owl_block_sparsities(&[0.0, 1.0], 0.5, 0.98), &[0.99, 0.48]);
        // λ = 0.5, s = 0.3: v = [0, 1] − .5 + .7 = [.2, 1.2] → [.8, −.2 → .01].
        close(&owl_block_sparsities(&[0.0, 1.0], 0.5, 0.3), &[0.8, 0.01]);
    }

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
        let c = crate::config::Config::from_json(
            r#"{"model_type":"llama","vocab_size":10,"hidden_size":8,"intermediate_size":16,
            "num_hidden_layers":2,"num_attention_heads":2,"max_position_embeddings":32}"#,
        )
        .unwrap();
        let mut spec = Spec::of(&c);
        for l in spec.linears.iter_mut() {
            l.shape[0] = 2;
        }
        let (q, k, v, o, gate, up, down) = (0, 1, 2, 3, 4, 5, 6);
        let dv = |a: f32| vec![0.0, a];
        let mut d0: Vec<Vec<f32>> = (0..7).map(|i| dv(i as f32 + 1.0)).collect();
        d0[gate] = vec![0.0, 0.0]; // sums to zero: o_proj keeps the block sparsity
        let d1: Vec<Vec<f32>> = (0..7).map(|i| dv(10.0 + i as f32)).collect();
        let d = vec![d0, d1];
        let m = row_map(&spec, false, &[0.5, 0.7], &d, 0.1).unwrap();
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
        let m = row_map(&spec, true, &[0.5, 0.7], &d, 0.1).unwrap();
        for li in [q, k, v] {
            assert_eq!(m[0][li], Sparsity::PerRow(vec![0.5, 0.5]));
        }
        close(&rows(&m[0][down]), &spread);
        // A family without declared routes cannot take the row step.
        spec.routes = None;
        assert!(row_map(&spec, false, &[0.5, 0.7], &d, 0.1).unwrap_err().to_string().contains("declares no row routing"));
    }

    #[test]
    fn sums_and_spreads_follow_numpy_and_the_authors_operation_order() {
        // numpy.add.reduce of x_i = sqrt(i + 1)/7 (numpy 2.4.6), bit for bit; from 100 values
        // on, a sequential sum differs.
        for (n, bits) in [(9, 0x4006106257e9021c_u64), (100, 0x4057fb16fd44fe25), (300, 0x407f01459119e388), (11008, 0x40fadb2901a21fa6)] {
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
