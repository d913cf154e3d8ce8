//! The base pruners' one interface, as llm-compressor's modifiers are: calibrate a linear
//! (record what its inputs tell), then turn its weight, that calibration and a sparsity into new
//! weights and a mask. Magnitude (`magnitude.rs`) and Wanda (`wanda.rs`) only zero weights;
//! SparseGPT (`sparsegpt.rs`) also updates the weights it keeps. The engine, OWL and NeuroAL's
//! candidate evaluation call this trait, not a `match`.

use std::sync::{Arc, Mutex};

use burn::tensor::{Device, Tensor};
use faer::Mat;

use crate::gpu::context::Gpu;
use crate::io::error::Result;
use crate::prune::mask::{Pattern, Sparsity, expected_pruned};
use crate::prune::score::InputStats;

/// What a pruner learns from one linear's calibration inputs.
#[derive(Clone)]
pub struct Calibration {
    /// Per-channel Σx² and Σx (Wanda's norms; NeuroAL's activations).
    pub stats: InputStats,
    /// SparseGPT's H = 2/N · Σ XᵀX, when the pruner asked for it.
    pub hessian: Option<Hessian>,
    /// An expert the router sent no calibration token: these are every token's statistics.
    pub every_token: bool,
}

impl Calibration {
    pub fn new(cols: usize, device: &Device, hessian: bool) -> Calibration {
        Calibration {
            stats: InputStats::new(cols, device),
            hessian: hessian.then(|| Hessian::new(cols, device)),
            every_token: false,
        }
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
