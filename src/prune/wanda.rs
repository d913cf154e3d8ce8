//! Wanda (Sun et al., 2024): the score of a weight is |W_ij|·‖X_j‖₂, its magnitude times the
//! norm of its input channel over the calibration tokens; the lowest are zeroed per output row.

use burn::tensor::Tensor;

use crate::gpu::context::Gpu;
use crate::io::error::Result;
use crate::prune::magnitude::{prune_by_score, with_mask};
use crate::prune::mask::{Pattern, Sparsity};
use crate::prune::pruner::{Calibration, Pruned, Pruner};

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
