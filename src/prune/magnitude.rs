//! Magnitude pruning: the weights of least |W| are zeroed, by row, layer or N:M group. Wanda
//! (`wanda.rs`) prunes the same way on scores scaled by the input norms, so the pruning by
//! score both share lives here.

use rayon::prelude::*;

use burn::tensor::{DType, Tensor, TensorData};

use crate::bail;
use crate::gpu::context::{Gpu, shaders_for};
use crate::gpu::tensor::to_dtype;
use crate::io::error::Result;
use crate::model::{cpu_values, on_cpu};
use crate::prune::mask::{Pattern, Sparsity, Ties, mask, row_prune_counts, row_threshold};
use crate::prune::pruner::{Calibration, Pruned, Pruner};
use crate::prune::score::{apply_mask, cpu_norms, score, score_row_in_place};

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

/// Magnitude's or Wanda's pruning: the lowest scores (|W|, or |W|·√scaler) zeroed under
/// `pattern`, and their mask when `masked`. On a GPU the row patterns take one shader
/// (`kernels::prune_rows`) on the weight as it is stored; otherwise the score, the mask and the
/// zeroing are separate steps, in f32.
///
/// Equal scores at a row's cut are pruned in the order of the authors' masks for the pattern
/// ([`Pattern::ties`]): the earlier columns first, the later ones under `rows-variable`.
pub(crate) fn prune_by_score(
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
pub(crate) fn with_mask((weight, mask): (Tensor<2>, Option<Tensor<2>>)) -> Result<Pruned> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prune::mask::select_lowest_reference;
    use crate::prune::score::{apply_mask_reference, score_reference};
    use burn::tensor::Device;

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
