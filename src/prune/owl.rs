//! OWL (Yin et al., 2024): each block's sparsity from its outlier ratio, the share of its Wanda
//! scores above M times their mean over the dense model; more outliers, a denser block.

use burn::tensor::{DType, Tensor};

use crate::bail;
use crate::gpu::tensor::{host_f32, to_dtype};
use crate::io::error::Result;
use crate::model::Model;
use crate::prune::pipeline::{embed_windows, run_recording};
use crate::prune::score::score;
use crate::prune::spread::{clamp_block, spread_blocks};

/// OWL block sparsities from outlier ratios (no sorting).
pub fn owl_block_sparsities(outlier_ratios: &[f64], lambda: f64, s: f64) -> Vec<f64> {
    spread_blocks(outlier_ratios, lambda, s).iter().map(|v| clamp_block(1.0 - v)).collect()
}

/// OWL outlier ratio of each block over the dense model: 100 × #(score > M·mean) / #scores,
/// with the Wanda scores of all the block's linears taken together.
pub fn owl_outlier_ratios(model: &Model, windows: &[u32], seqlen: usize, m: f64) -> Result<Vec<f64>> {
    let nsamples = windows.len() / seqlen;
    let pos = model.positions(seqlen);
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
            .map(|(l, st)| {
                let weight = to_dtype(l.weight.clone(), DType::F32);
                score(model.gpu.as_deref(), weight, Some(st.stats.scaler_row(nsamples)))
            })
            .collect();
        let count: usize = model.linear_shapes(b).iter().map(|s| s[0] * s[1]).sum();
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
            outliers += s.clone().greater_elem(threshold).int().sum().try_into_scalar::<i64>().map_err(|e| {
                crate::err!(
                    "OWL scores: reading the result back from the device failed: {}",
                    crate::io::error::device_words(&e.to_string())
                )
            })?;
        }
        ratios.push(100.0 * outliers as f64 / count as f64);
    }
    Ok(ratios)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prune::spread::testing::close;

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
}
