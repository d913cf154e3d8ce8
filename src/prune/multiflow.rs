//! multiflow, as the NeuroAL authors' `prune_multiflow` scores: a weight's magnitude times the
//! importance of its output neuron and of its input channel, each the mean of Wanda's scores
//! |W|·‖X_j‖₂ over that row or that column: s_ij = |W_ij| · I_out(i) · I_in(j). A weight between
//! busy neurons survives where Wanda, which sees only its input channel, might cut it.

use burn::tensor::{DType, Tensor};

use crate::gpu::context::Gpu;
use crate::gpu::tensor::to_dtype;
use crate::io::error::Result;
use crate::prune::mask::{Pattern, Sparsity, mask};
use crate::prune::pruner::{Calibration, Pruned, Pruner};
use crate::prune::score::{apply_mask, score};

/// |W_ij| · mean_j'(|W_ij'|·‖X_j'‖) · mean_i'(|W_i'j|·‖X_j‖), pruned like Wanda's scores.
pub struct Multiflow;

impl Pruner for Multiflow {
    fn name(&self) -> &'static str {
        "multiflow"
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
        let weight = to_dtype(weight, DType::F32);
        let scores = multiflow_scores(gpu, weight.clone(), calib.stats.scaler_row(nsamples));
        let m = mask(gpu, scores, pattern, sparsity)?;
        Ok(Pruned { weight: apply_mask(gpu, weight, m.clone()), mask: m })
    }
}

/// The scores of w [out, in] (f32) given each input channel's Σx²/N, in the authors' order of
/// operations: the outer product of the two importances first, then |W| times it.
pub fn multiflow_scores(gpu: Option<&Gpu>, w: Tensor<2>, scaler_row: Tensor<1>) -> Tensor<2> {
    let wanda = score(gpu, w.clone(), Some(scaler_row));
    let per_output = wanda.clone().mean_dim(1);
    let per_input = wanda.mean_dim(0);
    w.abs() * (per_output * per_input)
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Device, Tensor, TensorData};

    use super::multiflow_scores;

    /// By hand: W = [[1, −2], [3, 0]], ‖X‖ = [1, 2] (Σx²/N = [1, 4]). Wanda's scores [[1, 4],
    /// [3, 0]]: row means [2.5, 1.5], column means [2, 2] → s = |W| · [[5, 5], [3, 3]] = [[5,
    /// 10], [9, 0]].
    #[test]
    fn scores_by_hand() {
        let dev = Device::default();
        let w = Tensor::<2>::from_data(TensorData::new(vec![1f32, -2.0, 3.0, 0.0], [2, 2]), &dev);
        let s = Tensor::<1>::from_data(TensorData::new(vec![1f32, 4.0], [2]), &dev);
        let got = multiflow_scores(None, w, s).into_data().try_to_vec::<f32>().unwrap();
        assert_eq!(got, vec![5.0, 10.0, 9.0, 0.0]);
    }
}
