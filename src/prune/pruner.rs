//! The base pruners behind one interface, as llm-compressor's modifiers are: calibrate a linear
//! (record what its inputs tell), then turn its weight, that calibration and a sparsity into new
//! weights and a mask. Magnitude and Wanda only zero weights; SparseGPT also updates the weights
//! it keeps. The engine, OWL and NeuroAL's candidate evaluation call this trait, not a `match`.

use std::sync::{Arc, Mutex};

use burn::tensor::{DType, Device, Tensor, TensorData};
use faer::{Mat, Side};
use rayon::prelude::*;

use crate::bail;
use crate::gpu::context::{Gpu, shaders_for};
use crate::gpu::tensor::host_f32;
use crate::gpu::tensor::to_dtype;
use crate::io::error::Result;
use crate::model::{cpu_values, on_cpu};
use crate::prune::mask::{Pattern, Sparsity, Ties, expected_pruned, mask, row_prune_counts, row_threshold};
use crate::prune::score::{InputStats, Method, apply_mask, cpu_norms, score, score_row_in_place};

/// What a pruner learns from one linear's calibration inputs.
#[derive(Clone)]
pub struct Calibration {
    /// Per-channel Σx² and Σx (Wanda's norms; NeuroAL's activations).
    pub stats: InputStats,
    /// SparseGPT's H = 2/N · Σ XᵀX, when the pruner asked for it.
    pub hessian: Option<Hessian>,
}

impl Calibration {
    pub fn new(cols: usize, device: &Device, hessian: bool) -> Calibration {
        Calibration { stats: InputStats::new(cols, device), hessian: hessian.then(|| Hessian::new(cols, device)) }
    }

    /// Adds a chunk of inputs x [windows, tokens, cols], on the `gpu` where x lives there.
    pub fn add(&mut self, x: &Tensor<3>, gpu: Option<&Gpu>) {
        self.stats.add(x, gpu);
        if let Some(h) = self.hessian.as_mut() {
            h.add(x);
        }
    }
}

/// The reference's running Hessian: with k more windows, H ← H·n/(n+k), n ← n + k, then
/// H += (√(2/n)·X)ᵀ(√(2/n)·X), X the chunk's [tokens, cols] inputs, in f32 on the device.
#[derive(Clone)]
pub struct Hessian {
    pub h: Tensor<2>,
    pub windows: usize,
    /// SparseGPT's factor of this H (see [`Hessian::factor`]), shared by the clones that the
    /// linears reading one input get.
    factor: Arc<Mutex<Option<KeptFactor>>>,
}

/// A factor with the `percdamp` (its bits) it was made at.
type KeptFactor = (u64, Arc<Factor>);

/// H⁻¹'s upper Cholesky factor (f64) and the dead columns (H_ii = 0).
pub type Factor = (Mat<f64>, Vec<bool>);

impl Hessian {
    pub fn new(cols: usize, device: &Device) -> Hessian {
        Hessian { h: Tensor::zeros([cols, cols], device), windows: 0, factor: Arc::default() }
    }

    pub fn add(&mut self, x: &Tensor<3>) {
        let [b, t, cols] = x.dims();
        let x = &crate::gpu::tensor::to_dtype(x.clone(), burn::tensor::DType::F32);
        let h = self.h.clone().mul_scalar(self.windows as f64 / (self.windows + b) as f64);
        self.windows += b;
        let xs = x.clone().reshape([b * t, cols]).mul_scalar((2.0 / self.windows as f64).sqrt());
        self.h = h + xs.clone().transpose().matmul(xs);
        self.factor = Arc::default();
    }

    /// SparseGPT's factor of this H at `percdamp`, made by `make` once for every linear that
    /// reads this input (q, k and v; gate and up: the factorization is most of SparseGPT's
    /// time on a large linear) and kept until [`Hessian::forget_factor`] or the last clone goes.
    pub fn factor(&self, percdamp: f64, make: impl FnOnce() -> Result<Factor>) -> Result<Arc<Factor>> {
        let mut kept = self.factor.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((key, f)) = kept.as_ref()
            && *key == percdamp.to_bits()
        {
            return Ok(f.clone());
        }
        let f = Arc::new(make()?);
        *kept = Some((percdamp.to_bits(), f.clone()));
        Ok(f)
    }

    /// Drops the kept factor (n² f64: 970 MB for an 11008-wide input) once no linear needs it.
    pub fn forget_factor(&self) {
        *self.factor.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

/// A pruned linear: its new weight [out, in] (in the dtype it came in, or f32) and the mask
/// (1.0 = pruned; f32).
pub struct Pruned {
    pub weight: Tensor<2>,
    pub mask: Tensor<2>,
}

/// How many weights a pruner's mask must hold.
#[derive(Debug, PartialEq, Eq)]
pub enum Expected {
    Exactly(usize),
    AtLeast(usize),
}

pub trait Pruner: Sync {
    fn name(&self) -> &'static str;

    /// Whether [`Pruner::prune`] reads the calibration at all: a pruner that does not (magnitude)
    /// is given an empty one, and the pruning pass runs no window through the model.
    fn needs_calibration(&self) -> bool {
        true
    }

    /// Whether [`Pruner::prune`] needs the Hessian recorded.
    fn needs_hessian(&self) -> bool {
        false
    }

    /// Whether kept weights change (then the writer re-encodes them).
    fn changes_kept_weights(&self) -> bool {
        false
    }

    /// Refuses patterns and sparsities this pruner does not implement, before any work.
    fn check(&self, _pattern: &Pattern, _per_row: bool) -> Result<()> {
        Ok(())
    }

    /// `weight` comes in the compute dtype; a pruner computes its scores and choices in f32
    /// whatever that is. `nsamples`: calibration windows (Wanda's normaliser).
    fn prune(
        &self,
        gpu: Option<&Gpu>,
        weight: Tensor<2>,
        calib: &Calibration,
        nsamples: usize,
        pattern: &Pattern,
        sparsity: &Sparsity,
    ) -> Result<Pruned>;

    /// [`Pruner::prune`]'s weight alone, for NeuroAL's candidates, which never read a mask: a
    /// pruner that can skip making one (magnitude, Wanda) does.
    fn prune_weight(
        &self,
        gpu: Option<&Gpu>,
        weight: Tensor<2>,
        calib: &Calibration,
        nsamples: usize,
        pattern: &Pattern,
        sparsity: &Sparsity,
    ) -> Result<Tensor<2>> {
        Ok(self.prune(gpu, weight, calib, nsamples, pattern, sparsity)?.weight)
    }

    /// The count of pruned weights the engine checks after pruning.
    fn expected(&self, pattern: &Pattern, sparsity: &Sparsity, shape: [usize; 2]) -> Expected {
        Expected::Exactly(expected_pruned(pattern, sparsity, shape))
    }
}

/// |W|: the weights alone.
pub struct Magnitude;

impl Pruner for Magnitude {
    fn name(&self) -> &'static str {
        "magnitude"
    }

    fn needs_calibration(&self) -> bool {
        false
    }

    fn prune(
        &self,
        gpu: Option<&Gpu>,
        weight: Tensor<2>,
        _calib: &Calibration,
        _nsamples: usize,
        pattern: &Pattern,
        sparsity: &Sparsity,
    ) -> Result<Pruned> {
        with_mask(prune_by_score(gpu, weight, None, pattern, sparsity, true)?)
    }

    fn prune_weight(
        &self,
        gpu: Option<&Gpu>,
        weight: Tensor<2>,
        _calib: &Calibration,
        _nsamples: usize,
        pattern: &Pattern,
        sparsity: &Sparsity,
    ) -> Result<Tensor<2>> {
        Ok(prune_by_score(gpu, weight, None, pattern, sparsity, false)?.0)
    }
}

/// |W|·‖X_j‖₂ per output row.
pub struct Wanda;

impl Pruner for Wanda {
    fn name(&self) -> &'static str {
        "wanda"
    }

    fn prune(
        &self,
        gpu: Option<&Gpu>,
        weight: Tensor<2>,
        calib: &Calibration,
        nsamples: usize,
        pattern: &Pattern,
        sparsity: &Sparsity,
    ) -> Result<Pruned> {
        with_mask(prune_by_score(gpu, weight, Some(calib.stats.scaler_row(nsamples)), pattern, sparsity, true)?)
    }

    fn prune_weight(
        &self,
        gpu: Option<&Gpu>,
        weight: Tensor<2>,
        calib: &Calibration,
        nsamples: usize,
        pattern: &Pattern,
        sparsity: &Sparsity,
    ) -> Result<Tensor<2>> {
        Ok(prune_by_score(gpu, weight, Some(calib.stats.scaler_row(nsamples)), pattern, sparsity, false)?.0)
    }
}

/// Magnitude's or Wanda's pruning: the lowest scores (|W|, or |W|·√scaler) zeroed under
/// `pattern`, and their mask when `masked`. On a GPU the row patterns take one shader
/// (`kernels::prune_rows`) on the weight as it is stored; otherwise the score, the mask and the
/// zeroing are separate steps, in f32.
///
/// Equal scores at a row's cut are pruned in the order of the authors' masks for the pattern
/// ([`Pattern::ties`]): the earlier columns first, the later ones under `rows-variable`.
fn prune_by_score(
    gpu: Option<&Gpu>,
    weight: Tensor<2>,
    scaler: Option<Tensor<1>>,
    pattern: &Pattern,
    sparsity: &Sparsity,
    masked: bool,
) -> Result<(Tensor<2>, Option<Tensor<2>>)> {
    if let Some(k) = row_prune_counts(pattern, sparsity, weight.dims())? {
        if on_cpu(&weight.device()) {
            return Ok(prune_rows_on_cpu(to_dtype(weight, DType::F32), scaler, &k, masked, pattern.ties()));
        }
        if let Some(shaders) = shaders_for(gpu, &weight)
            && let Some(pruned) = shaders.prune_rows(weight.clone(), scaler.clone(), &k, masked, pattern.ties())
        {
            return Ok(pruned);
        }
    }
    let weight = to_dtype(weight, DType::F32);
    let m = mask(gpu, score(gpu, weight.clone(), scaler), pattern, sparsity)?;
    Ok((apply_mask(gpu, weight, m.clone()), masked.then_some(m)))
}

/// [`prune_by_score`]'s result when it was asked for the mask.
fn with_mask((weight, mask): (Tensor<2>, Option<Tensor<2>>)) -> Result<Pruned> {
    let Some(mask) = mask else { bail!("internal: the pruning made no mask where one was asked for") };
    Ok(Pruned { weight, mask })
}

/// The row patterns on the CPU backends in one pass over the rows, on every core: each row's
/// scores (|w|, or |w|·√scaler, in f32 as `score` computes them), the selection of its k[r]
/// lowest (equal ones in the order `ties` gives, as `mask::select_lowest_host`), the row written
/// pruned (as `apply_mask`) and, when `masked`, its mask. The same bits as those three steps,
/// which made three host copies of the weight and ran two of them on one core (NeuroAL's search
/// prunes every linear once per candidate; at the 0.84 B shape that took a third of its CPU
/// time).
///
/// The weight is read where it lies and the pruned one written once into a new buffer: the
/// search's weights are shared with the dense block, and taking their values out copied them
/// three times (burn's tensor data, its alignment, the vector), each copy into fresh pages the
/// kernel had to fault in and clear.
fn prune_rows_on_cpu(
    weight: Tensor<2>,
    scaler: Option<Tensor<1>>,
    k: &[usize],
    masked: bool,
    ties: Ties,
) -> (Tensor<2>, Option<Tensor<2>>) {
    let ([rows, cols], device) = (weight.dims(), weight.device());
    let norms = scaler.map(cpu_norms);
    // One row: its scores once, its selection, the pruned row written to `dst` and its flags to
    // `out`.
    let prune_row =
        |(scores, keys): &mut (Vec<f32>, Vec<u32>), r: usize, src: &[f32], dst: &mut [f32], out: Option<&mut [f32]>| {
            let k = k[r].min(cols);
            if k == 0 {
                dst.copy_from_slice(src);
                return;
            }
            scores.clear();
            scores.extend_from_slice(src);
            score_row_in_place(scores, norms.as_deref());
            let (tau, bound) = row_threshold(scores.iter().copied(), k, keys, ties);
            // Columns below the bound are pruned at ≤ τ, the rest at < τ (the other way round when
            // the later ties go first): two loops that vectorize.
            let ((src_head, src_tail), (dst_head, dst_tail)) = (src.split_at(bound), dst.split_at_mut(bound));
            let (head, tail) = scores.split_at(bound);
            let (out_head, out_tail) = out.map(|o| o.split_at_mut(bound)).unzip();
            if ties == Ties::LaterFirst {
                write_row(src_head, dst_head, out_head, head, |v| v < tau);
                write_row(src_tail, dst_tail, out_tail, tail, |v| v <= tau);
            } else {
                write_row(src_head, dst_head, out_head, head, |v| v <= tau);
                write_row(src_tail, dst_tail, out_tail, tail, |v| v < tau);
            }
        };
    let buffers = || (Vec::with_capacity(cols), Vec::with_capacity(cols));
    let prune = |src: &[f32]| {
        let mut pruned = vec![0f32; rows * cols];
        let rows_of = src.par_chunks_exact(cols).zip(pruned.par_chunks_exact_mut(cols)).enumerate();
        let mask = if masked {
            let mut mask = vec![0f32; rows * cols];
            rows_of
                .zip(mask.par_chunks_exact_mut(cols))
                .for_each_init(buffers, |buf, ((r, (src, dst)), out)| prune_row(buf, r, src, dst, Some(out)));
            Some(mask)
        } else {
            rows_of.for_each_init(buffers, |buf, (r, (src, dst))| prune_row(buf, r, src, dst, None));
            None
        };
        (pruned, mask)
    };
    // burn-flex's row-major weights are read in place; other layouts and backends once copied.
    let (pruned, mask) = crate::model::with_cpu_rows(&weight, prune).unwrap_or_else(|| prune(&cpu_values(weight)));
    let tensor = |v: Vec<f32>| Tensor::from_data(TensorData::new(v, [rows, cols]), &device);
    (tensor(pruned), mask.map(tensor))
}

/// `src` written to `dst` with the weights whose score is `pruned` zeroed, and those flagged in
/// `out`. Bit masks, with every value stored: `if pruned { 0.0 } else { *x }` compiles to a
/// conditional store, which without AVX's masked stores is a branch per column.
#[inline(always)]
fn write_row(src: &[f32], dst: &mut [f32], out: Option<&mut [f32]>, scores: &[f32], pruned: impl Fn(f32) -> bool) {
    // All ones where kept, zero where pruned.
    let keep = |v: f32| u32::from(!pruned(v)).wrapping_neg();
    match out {
        Some(out) => {
            for (((x, y), o), &v) in src.iter().zip(dst.iter_mut()).zip(out.iter_mut()).zip(scores) {
                let keep = keep(v);
                *y = f32::from_bits(x.to_bits() & keep);
                *o = f32::from_bits(!keep & 1f32.to_bits());
            }
        }
        None => {
            for ((x, y), &v) in src.iter().zip(dst.iter_mut()).zip(scores) {
                *y = f32::from_bits(x.to_bits() & keep(v));
            }
        }
    }
}

/// SparseGPT (Frantar & Alistarh), as the reference implementation runs it: the inverse
/// Hessian's upper Cholesky factor drives column-by-column pruning with error compensation,
/// in blocks of `blocksize` columns. The factorisations and each block's column sweep run in
/// f64 on the host (faer); the weights stay on the device, where each block's error reaches
/// the later columns as one matrix product.
pub struct SparseGpt {
    pub blocksize: usize,
    pub percdamp: f64,
}

impl SparseGpt {
    pub fn new(blocksize: usize, percdamp: f64) -> SparseGpt {
        SparseGpt { blocksize, percdamp }
    }

    /// H⁻¹'s upper Cholesky factor, in f64, from H [cols, cols] (row-major f32): dead columns
    /// (H_ii = 0) get H_ii = 1 and are returned; then H_ii += percdamp·mean(diag H).
    ///
    /// The reference factors H, inverts it and factors H⁻¹. The same factor comes from one
    /// factorization and one triangular inverse: with J the reversal of rows and columns,
    /// J·H·J = L·Lᵀ gives H = U·Uᵀ with U = J·L·J upper triangular, so H⁻¹ = U⁻ᵀ·U⁻¹ and H⁻¹'s
    /// upper factor is U⁻¹ = J·L⁻¹·J. About half the arithmetic (faer, 2 cores: 2.14 → 1.21 s
    /// at 4096 columns, 24.1 → 11.7 s at 11008; the factors within 4e-14 of each other).
    pub fn inverse_factor(&self, h: &[f32], cols: usize) -> Result<Factor> {
        let n = cols;
        let r = |i: usize| n - 1 - i;
        // J·H·J in f64, from H's lower triangle (what the reference's Cholesky reads; the
        // recorded H need not be symmetric to the bit): entry (i, j), i ≥ j, is H[r(j)][r(i)],
        // read along H's rows as faer fills its columns.
        let mut hr = Mat::<f64>::from_fn(n, n, |i, j| if i >= j { h[r(j) * n + r(i)] as f64 } else { 0.0 });
        let mut dead = vec![false; n];
        for (i, d) in dead.iter_mut().enumerate() {
            if hr[(r(i), r(i))] == 0.0 {
                hr[(r(i), r(i))] = 1.0;
                *d = true;
            }
        }
        let damp = self.percdamp * (0..n).map(|i| hr[(r(i), r(i))]).sum::<f64>() / n as f64;
        for i in 0..n {
            hr[(i, i)] += damp;
        }
        let not_pd = || {
            crate::err!(
                "the Hessian is not positive definite after damping (--percdamp {}); raise --percdamp",
                self.percdamp
            )
        };
        let lower = hr.llt(Side::Lower).map_err(|_| not_pd())?;
        drop(hr);
        let mut lower_inv = Mat::<f64>::zeros(n, n);
        faer::linalg::triangular_inverse::invert_lower_triangular(
            lower_inv.as_mut(),
            lower.L(),
            faer::get_global_parallelism(),
        );
        drop(lower);
        Ok((Mat::from_fn(n, n, |i, j| lower_inv[(r(i), r(j))]), dead))
    }

    /// One block of columns, on the host in f64: `w` holds the block's [rows × count] values
    /// row by row. Picks the block's mask (unstructured at `s` over the whole slice, or N:M per
    /// row as columns are reached), then prunes column by column, spreading each column's error
    /// over the block's later columns. `w` becomes the block's final values; returns the mask
    /// and the per-column errors (row by row) for the update of the columns after the block.
    pub fn sweep_block(
        &self,
        w: &mut [f64],
        hinv1: faer::MatRef<'_, f64>,
        s: f64,
        n_m: Option<(usize, usize)>,
    ) -> (Vec<bool>, Vec<f64>) {
        let count = hinv1.ncols();
        let mut mask1 = vec![false; w.len()];
        // A row-major copy of the block's H⁻¹ factor: each row's sweep below walks it by rows.
        let h: Vec<f64> = (0..count * count).map(|k| hinv1[(k / count, k % count)]).collect();
        // The pruning key of column c of a row: w²/diag(H⁻¹)².
        let key = |row: &[f64], c: usize| row[c] * row[c] / (h[c * count + c] * h[c * count + c]);
        if n_m.is_none() {
            // Lowest key over the [rows × block] slice; ≤ the value at index ⌊numel·s⌋ of the
            // sorted slice is pruned (that value found by selection, not a sort).
            let tmp: Vec<f64> = w.chunks_exact(count).flat_map(|row| (0..count).map(move |c| key(row, c))).collect();
            let mut order = tmp.clone();
            let at = ((tmp.len() as f64 * s) as usize).min(tmp.len() - 1);
            let thresh = *order.select_nth_unstable_by(at, |a, b| a.total_cmp(b)).1;
            for (m, t) in mask1.iter_mut().zip(&tmp) {
                *m = *t <= thresh;
            }
        }
        // Rows are independent: each row's sweep reads only its own values and H⁻¹, so rows run
        // in parallel, with every row's arithmetic in the order of the reference (the same bits).
        let mut err = vec![0f64; w.len()];
        w.par_chunks_mut(count).zip(mask1.par_chunks_mut(count)).zip(err.par_chunks_mut(count)).for_each(
            |((w, mask), err)| {
                for i in 0..count {
                    if let Some((n, m)) = n_m
                        && i % m == 0
                    {
                        let end = (i + m).min(count);
                        let mut order: Vec<usize> = (i..end).collect();
                        order.sort_by(|&a, &b| key(w, a).total_cmp(&key(w, b)));
                        for &c in order.iter().take(n) {
                            mask[c] = true;
                        }
                    }
                    let d = h[i * count + i];
                    let wv = w[i];
                    let q = if mask[i] { 0.0 } else { wv };
                    let e = (wv - q) / d;
                    // Zipped slices: no bounds check per value, so the loop is vectorized.
                    for (wj, hj) in w[i..].iter_mut().zip(&h[i * count + i..(i + 1) * count]) {
                        *wj -= e * hj;
                    }
                    // The kept (or zeroed) value of column i, as the reference's Q1 holds it.
                    w[i] = q;
                    err[i] = e;
                }
            },
        );
        (mask1, err)
    }
}

/// A host f64 matrix as an f32 device tensor. faer keeps columns, the tensor rows: the copy
/// goes in 64 × 64 tiles, rows of tiles on every core, so neither side is read a cache line
/// per value.
fn to_device(m: &Mat<f64>, device: &Device) -> Tensor<2> {
    const TILE: usize = 64;
    let (r, c) = (m.nrows(), m.ncols());
    let mut v = vec![0f32; r * c];
    v.par_chunks_mut(TILE * c.max(1)).enumerate().for_each(|(ti, rows)| {
        let i0 = ti * TILE;
        let height = rows.len() / c.max(1);
        for j0 in (0..c).step_by(TILE) {
            for j in j0..(j0 + TILE).min(c) {
                let col = m.col(j);
                for di in 0..height {
                    rows[di * c + j] = col[i0 + di] as f32;
                }
            }
        }
    });
    Tensor::from_data(TensorData::new(v, [r, c]), device)
}

/// Row-major f64 values as an f32 device tensor [rows, cols].
fn rows_to_device(v: &[f64], rows: usize, cols: usize, device: &Device) -> Tensor<2> {
    Tensor::from_data(TensorData::new(v.iter().map(|&x| x as f32).collect::<Vec<f32>>(), [rows, cols]), device)
}

impl Pruner for SparseGpt {
    fn name(&self) -> &'static str {
        "sparsegpt"
    }

    fn needs_hessian(&self) -> bool {
        true
    }

    fn changes_kept_weights(&self) -> bool {
        true
    }

    fn check(&self, pattern: &Pattern, per_row: bool) -> Result<()> {
        if per_row || matches!(pattern, Pattern::RowsVariable) {
            bail!(
                "sparsegpt takes one sparsity per layer; per-row sparsities (NeuroAL's row step) are not offered with it"
            );
        }
        if matches!(pattern, Pattern::Layer) {
            bail!(
                "sparsegpt selects weights per block of --blocksize columns; use --pattern row (its unstructured selection) or N:M"
            );
        }
        Ok(())
    }

    fn prune(
        &self,
        _gpu: Option<&Gpu>,
        weight: Tensor<2>,
        calib: &Calibration,
        _nsamples: usize,
        pattern: &Pattern,
        sparsity: &Sparsity,
    ) -> Result<Pruned> {
        let weight = to_dtype(weight, DType::F32);
        let [rows, cols] = weight.dims();
        let device = weight.device();
        let Some(hessian) = &calib.hessian else { bail!("sparsegpt needs the Hessian, which was not recorded") };
        let (s, n_m) = match (pattern, sparsity) {
            (Pattern::NM { n, m }, _) => (*n as f64 / *m as f64, Some((*n, *m))),
            (Pattern::Row, Sparsity::Uniform(s)) => (*s, None),
            _ => {
                self.check(pattern, matches!(sparsity, Sparsity::PerRow(_)))?;
                bail!("sparsegpt: pattern {} is not supported", pattern.name())
            }
        };
        let factor = hessian
            .factor(self.percdamp, || self.inverse_factor(&host_f32(hessian.h.clone(), "SparseGPT Hessian")?, cols))?;
        let (hinv, dead) = (&factor.0, &factor.1);
        let hinv_dev = to_device(hinv, &device);
        // W stays on the device: dead columns zeroed, then each block's columns come to the
        // host for the column-by-column sweep, and the block's error reaches the later columns
        // as one matrix product on the device.
        let keep: Vec<f32> = dead.iter().map(|&d| if d { 0.0 } else { 1.0 }).collect();
        let mut w = weight * Tensor::<1>::from_data(TensorData::new(keep, [cols]), &device).unsqueeze::<2>();
        let mut mask = vec![false; rows * cols];
        for i1 in (0..cols).step_by(self.blocksize.max(1)) {
            let i2 = (i1 + self.blocksize.max(1)).min(cols);
            let count = i2 - i1;
            let slice = host_f32(w.clone().slice([0..rows, i1..i2]), "SparseGPT weight")?;
            let mut w1: Vec<f64> = slice.iter().map(|&v| v as f64).collect();
            let (mask1, err1) = self.sweep_block(&mut w1, hinv.submatrix(i1, i1, count, count), s, n_m);
            for r in 0..rows {
                for c in 0..count {
                    mask[r * cols + i1 + c] = mask1[r * count + c];
                }
            }
            w = w.slice_assign([0..rows, i1..i2], rows_to_device(&w1, rows, count, &device));
            if i2 < cols {
                let update =
                    rows_to_device(&err1, rows, count, &device).matmul(hinv_dev.clone().slice([i1..i2, i2..cols]));
                let rest = w.clone().slice([0..rows, i2..cols]) - update;
                w = w.slice_assign([0..rows, i2..cols], rest);
            }
        }
        let values = host_f32(w.clone(), "SparseGPT weight")?;
        if let Some(k) = values.iter().position(|v| !v.is_finite()) {
            bail!("SparseGPT produced a non-finite weight at row {}, column {}", k / cols, k % cols);
        }
        let flags: Vec<f32> = mask.iter().map(|&m| if m { 1.0 } else { 0.0 }).collect();
        Ok(Pruned { weight: w, mask: Tensor::from_data(TensorData::new(flags, [rows, cols]), &device) })
    }

    fn expected(&self, pattern: &Pattern, sparsity: &Sparsity, [rows, cols]: [usize; 2]) -> Expected {
        match (pattern, sparsity) {
            (Pattern::NM { n, m }, _) => Expected::Exactly(rows * cols / m * n),
            (_, Sparsity::Uniform(s)) => {
                // Each block prunes index ⌊numel·s⌋ of its sorted slice and everything below it.
                let bs = self.blocksize.max(1);
                let per_block = |i1: usize| {
                    let numel = rows * ((i1 + bs).min(cols) - i1);
                    ((numel as f64 * s) as usize + 1).min(numel)
                };
                Expected::AtLeast((0..cols).step_by(bs).map(per_block).sum())
            }
            (_, Sparsity::PerRow(_)) => Expected::AtLeast(0),
        }
    }
}

impl Method {
    /// The pruner behind a `--method`.
    pub fn pruner(self, blocksize: usize, percdamp: f64) -> Box<dyn Pruner> {
        match self {
            Method::Magnitude => Box::new(Magnitude),
            Method::Wanda => Box::new(Wanda),
            Method::Sparsegpt => Box::new(SparseGpt::new(blocksize, percdamp)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prune::mask::select_lowest_reference;
    use crate::prune::score::{apply_mask_reference, score_reference};

    /// The one-pass CPU row pruning gives the bits of the three steps it replaces, computed by
    /// their burn-ops twins: scores, the k lowest per row (ties to the lower column; the later
    /// ties first is the twin on the columns reversed), the weight masked. Rows of repeated
    /// values and zeros make ties; k runs from 0 to the whole row. The weight comes in every
    /// layout the search hands it: shared with the dense block (read in place, and left as it
    /// was), a view some rows into a larger tensor, a transposed one and ndarray's (both copied
    /// first).
    #[test]
    fn one_pass_row_pruning_is_the_three_steps() {
        let (rows, cols) = (9, 37);
        let mut rng = crate::rng::SplitMix64::new(7);
        let mut unit = || (rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32;
        let w: Vec<f32> = (0..rows * cols)
            .map(|i| match i % 5 {
                0 => 0.25,
                1 => -0.25,
                2 => 0.0,
                _ => unit() * 2.0 - 1.0,
            })
            .collect();
        let scaler: Vec<f32> = (0..cols).map(|c| if c % 7 == 0 { 0.0 } else { unit() * 4.0 }).collect();
        let k: Vec<usize> = (0..rows).map(|r| [0, 1, 5, 18, 19, 30, 36, 37, 12][r]).collect();
        let bits = |t: Tensor<2>| cpu_values(t).iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        let flex = Device::flex();
        let plain = Tensor::<2>::from_data(TensorData::new(w.clone(), [rows, cols]), &flex);
        let padded =
            Tensor::cat(vec![Tensor::ones([2, cols], &flex), plain.clone(), Tensor::ones([1, cols], &flex)], 0)
                .narrow(0, 2, rows);
        let by_columns: Vec<f32> = (0..rows * cols).map(|i| w[(i % rows) * cols + i / rows]).collect();
        let transposed = Tensor::<2>::from_data(TensorData::new(by_columns, [cols, rows]), &flex).transpose();
        #[allow(deprecated)]
        let nd = Device::ndarray();
        let on_ndarray = Tensor::<2>::from_data(TensorData::new(w.clone(), [rows, cols]), &nd);
        for (layout, weight) in
            [("shared", plain), ("a view", padded), ("transposed", transposed), ("ndarray", on_ndarray)]
        {
            let device = weight.device();
            let before = bits(weight.clone());
            assert_eq!(before, w.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), "{layout}: the test's own layout");
            for (scaler, ties) in [None, Some(Tensor::<1>::from_data(TensorData::new(scaler.clone(), [cols]), &device))]
                .into_iter()
                .flat_map(|s| [(s.clone(), Ties::EarlierFirst), (s, Ties::LaterFirst)])
            {
                let (got_weight, got_mask) = prune_rows_on_cpu(weight.clone(), scaler.clone(), &k, true, ties);
                let m = select_lowest_reference(score_reference(weight.clone(), scaler.clone()), &k, ties);
                let want = apply_mask_reference(weight.clone(), m.clone());
                let what = format!("{layout}, {ties:?}");
                assert_eq!(bits(got_mask.expect("asked for")), bits(m), "{what}: mask");
                assert_eq!(bits(got_weight), bits(want.clone()), "{what}: weight");
                // Without its mask (NeuroAL's candidates), the same weight.
                let (weight_alone, none) = prune_rows_on_cpu(weight.clone(), scaler, &k, false, ties);
                assert!(none.is_none());
                assert_eq!(bits(weight_alone), bits(want), "{what}: weight without a mask");
                assert_eq!(bits(weight.clone()), before, "{what}: the weight pruned from changed");
            }
        }
    }
}
