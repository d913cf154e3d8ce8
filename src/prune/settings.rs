//! What a prune is asked, typed, with its defaults in one place: the command line's defaults are
//! [`PruneSettings::default`]'s, and a caller that builds settings itself (`bench`'s timed
//! prune) starts from them too.

use crate::bail;
use crate::gpu::device::{Choice, ComputeDtype};
use crate::io::error::Result;
use crate::io::named::Named;
use crate::prune::dsnot::Dsnot;
use crate::prune::magnitude::Magnitude;
use crate::prune::mask::Pattern;
use crate::prune::multiflow::Multiflow;
use crate::prune::pruner::Pruner;
use crate::prune::score::Method;
use crate::prune::sparsegpt::SparseGpt;
use crate::prune::wanda::Wanda;

/// How the target sparsity is spread over blocks and rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TopUpKind {
    Uniform,
    Owl,
    Neuroal,
    /// AlphaPruning (`alpha.rs`): per block, from the heavy tail of its weights' spectra.
    Alpha,
}

impl Named for TopUpKind {
    const ALL: &'static [TopUpKind] = &[TopUpKind::Uniform, TopUpKind::Owl, TopUpKind::Neuroal, TopUpKind::Alpha];

    fn name(self) -> &'static str {
        match self {
            TopUpKind::Uniform => "uniform",
            TopUpKind::Owl => "owl",
            TopUpKind::Neuroal => "neuroal",
            TopUpKind::Alpha => "alpha",
        }
    }
}

/// Which NeuroAL search steps run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NeuroalStep {
    Block,
    Row,
    Both,
}

impl Named for NeuroalStep {
    const ALL: &'static [NeuroalStep] = &[NeuroalStep::Block, NeuroalStep::Row, NeuroalStep::Both];

    fn name(self) -> &'static str {
        match self {
            NeuroalStep::Block => "block",
            NeuroalStep::Row => "row",
            NeuroalStep::Both => "both",
        }
    }
}

/// Which tokens a mixture of experts' experts are calibrated on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MoeCalibrate {
    /// Those the router sends each (an expert sent none takes every token's statistics).
    Routed,
    /// Every calibration token through every expert, for the statistics only.
    All,
}

impl Named for MoeCalibrate {
    const ALL: &'static [MoeCalibrate] = &[MoeCalibrate::Routed, MoeCalibrate::All];

    fn name(self) -> &'static str {
        match self {
            MoeCalibrate::Routed => "routed",
            MoeCalibrate::All => "all",
        }
    }
}

/// What refines the base pruner's masks after the top-up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refine {
    None,
    /// DSnoT (`dsnot.rs`): regrow and prune pairs per row against the expected output change.
    Dsnot,
}

impl Named for Refine {
    const ALL: &'static [Refine] = &[Refine::None, Refine::Dsnot];

    fn name(self) -> &'static str {
        match self {
            Refine::None => "none",
            Refine::Dsnot => "dsnot",
        }
    }
}

/// Which linears DSnoT refines: the attention's (the authors' default: they skip the MLP's),
/// or all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DsnotLinears {
    Attention,
    All,
}

impl Named for DsnotLinears {
    const ALL: &'static [DsnotLinears] = &[DsnotLinears::Attention, DsnotLinears::All];

    fn name(self) -> &'static str {
        match self {
            DsnotLinears::Attention => "attention",
            DsnotLinears::All => "all",
        }
    }
}

/// Everything that decides a prune's masks, and where it computes.
#[derive(Clone, Debug, PartialEq)]
pub struct PruneSettings {
    pub method: Method,
    /// SparseGPT: columns pruned and compensated together.
    pub blocksize: usize,
    /// SparseGPT: dampening added to diag(H), as a fraction of its mean.
    pub percdamp: f64,
    /// Fraction of each linear's weights to prune, in [0, 1); implied by an N:M pattern.
    pub sparsity: Option<f64>,
    pub pattern: Pattern,
    /// Calibration windows.
    pub nsamples: usize,
    /// Window length; `None`: min(2048, max_position_embeddings).
    pub seqlen: Option<usize>,
    /// Seed of the windows' draw.
    pub seed: u64,
    pub top_up: TopUpKind,
    /// OWL: outlier threshold M (× mean score) and λ, the largest deviation from the target.
    pub owl_m: f64,
    pub owl_lambda: f64,
    pub neuroal_step: NeuroalStep,
    /// NeuroAL: windows of the search's own calibration set.
    pub search_nsamples: usize,
    /// NeuroAL: candidates evaluated per pass over the blocks (0: a whole step at once).
    pub search_chunk: usize,
    /// NeuroAL: candidates whose dense passes share one batch (0: as many as fit without
    /// raising the run's estimated peak memory).
    pub search_batch: usize,
    pub moe_calibrate: MoeCalibrate,
    /// AlphaPruning: ε, the largest deviation of a block's ratio from 1; `None`: the
    /// AlphaPruning paper's value for the method (magnitude 0.5, SparseGPT 0.2, else 0.3).
    pub alpha_epsilon: Option<f64>,
    pub refine: Refine,
    /// DSnoT: cycles per linear at most, the error below which a row stops, and its linears.
    pub dsnot_cycles: usize,
    pub dsnot_threshold: f64,
    pub dsnot_linears: DsnotLinears,
    pub device: Choice,
    pub dtype: ComputeDtype,
}

impl Default for PruneSettings {
    fn default() -> PruneSettings {
        PruneSettings {
            method: Method::Wanda,
            blocksize: 128,
            percdamp: 0.01,
            sparsity: None,
            pattern: Pattern::Row,
            nsamples: 128,
            seqlen: None,
            seed: 0,
            top_up: TopUpKind::Uniform,
            owl_m: 5.0,
            owl_lambda: 0.08,
            neuroal_step: NeuroalStep::Both,
            search_nsamples: 8,
            search_chunk: 0,
            search_batch: 0,
            moe_calibrate: MoeCalibrate::Routed,
            alpha_epsilon: None,
            refine: Refine::None,
            dsnot_cycles: 50,
            dsnot_threshold: 0.1,
            dsnot_linears: DsnotLinears::Attention,
            device: Choice::Auto,
            dtype: ComputeDtype::Auto,
        }
    }
}

/// Settings once checked: the pruner they name, the sparsity they imply, and the NeuroAL step
/// that runs with that pruner.
pub struct Checked {
    pub pruner: Box<dyn Pruner>,
    pub sparsity: f64,
    pub step: NeuroalStep,
    /// The refinement after the base pruner, with the linears it applies to.
    pub refine: Option<(Dsnot, DsnotLinears)>,
    /// AlphaPruning's ε (under `--top-up alpha`).
    pub alpha_epsilon: Option<f64>,
}

impl PruneSettings {
    /// Refuses, in one line, settings that cannot run together, before anything is read.
    pub fn check(&self) -> Result<Checked> {
        let (pattern, kind) = (&self.pattern, self.top_up);
        if self.blocksize == 0 {
            bail!("--blocksize must be at least 1");
        }
        if !(self.percdamp.is_finite() && self.percdamp >= 0.0) {
            bail!("--percdamp {} must be a number ≥ 0", self.percdamp);
        }
        let pruner = self.method.pruner(self.blocksize, self.percdamp);
        pruner.check(pattern, false)?;
        let step = self.neuroal_step_with(pruner.as_ref())?;
        if *pattern == Pattern::RowsVariable {
            bail!("--pattern rows-variable needs per-row sparsities, which only a top-up provides");
        }
        if kind != TopUpKind::Uniform && *pattern != Pattern::Row {
            bail!("--top-up {} chooses its own sparsities and needs --pattern row", kind.name());
        }
        let sparsity = self.target_sparsity()?;
        self.check_counts_and_owl()?;
        let refine = self.checked_refine(pruner.as_ref())?;
        let alpha_epsilon = self.checked_epsilon()?;
        Ok(Checked { pruner, sparsity, step, refine, alpha_epsilon })
    }

    /// ε in (0, 1), asked or the paper's for the method; only under `--top-up alpha`.
    fn checked_epsilon(&self) -> Result<Option<f64>> {
        if self.top_up != TopUpKind::Alpha {
            if self.alpha_epsilon.is_some() {
                bail!("--alpha-epsilon applies to --top-up alpha");
            }
            return Ok(None);
        }
        let e = self.alpha_epsilon.unwrap_or(match self.method {
            Method::Magnitude => 0.5,
            Method::Sparsegpt => 0.2,
            Method::Wanda | Method::Multiflow => 0.3,
        });
        if !(e.is_finite() && e > 0.0 && e < 1.0) {
            bail!("--alpha-epsilon {e} must be a number in (0, 1)");
        }
        Ok(Some(e))
    }

    /// DSnoT swaps pruned and kept weights of the pruner's per-row masks: a pruner that rewrites
    /// the weights it keeps (SparseGPT) or a mask that is not per row cannot be refined.
    fn checked_refine(&self, pruner: &dyn Pruner) -> Result<Option<(Dsnot, DsnotLinears)>> {
        if self.refine == Refine::None {
            return Ok(None);
        }
        if pruner.changes_kept_weights() {
            bail!(
                "--refine dsnot swaps pruned and kept weights, but --method {} rewrites the weights it keeps; use magnitude, wanda or multiflow",
                pruner.name()
            );
        }
        if self.pattern != Pattern::Row {
            bail!("--refine dsnot refines per-row masks and needs --pattern row (not {})", self.pattern.name());
        }
        if self.dsnot_cycles == 0 {
            bail!("--dsnot-cycles must be at least 1");
        }
        if !(self.dsnot_threshold.is_finite() && self.dsnot_threshold >= 0.0) {
            bail!("--dsnot-threshold {} must be a number ≥ 0", self.dsnot_threshold);
        }
        let dsnot = Dsnot { cycles: self.dsnot_cycles, threshold: self.dsnot_threshold as f32 };
        Ok(Some((dsnot, self.dsnot_linears)))
    }

    /// NeuroAL's row step gives per-row sparsities, which SparseGPT does not take (the authors
    /// run only the block step over it): `both` means the block step, `row` is refused.
    fn neuroal_step_with(&self, pruner: &dyn Pruner) -> Result<NeuroalStep> {
        Ok(match (pruner.changes_kept_weights(), self.neuroal_step) {
            (true, NeuroalStep::Row) if self.top_up == TopUpKind::Neuroal => {
                bail!("--neuroal-step row is not offered with --method {}; use --neuroal-step block", pruner.name())
            }
            (true, NeuroalStep::Both) => NeuroalStep::Block,
            (_, s) => s,
        })
    }

    /// The sparsity asked, or the one an N:M pattern implies; in [0, 1).
    fn target_sparsity(&self) -> Result<f64> {
        let sparsity = match (&self.pattern, self.sparsity) {
            (Pattern::NM { n, m }, None) => *n as f64 / *m as f64,
            (Pattern::NM { n, m }, Some(s)) if s.is_nan() || (s - *n as f64 / *m as f64).abs() > 1e-9 => {
                bail!("--sparsity {s} contradicts --pattern {n}:{m} (which prunes {})", *n as f64 / *m as f64)
            }
            (_, Some(s)) => s,
            (_, None) => bail!("--sparsity is required (a fraction in [0, 1))"),
        };
        if !(0.0..1.0).contains(&sparsity) {
            bail!("--sparsity {sparsity} is outside [0, 1)");
        }
        // -0.0 is 0 (and is reported as 0, not "-0.0").
        Ok(sparsity + 0.0)
    }

    fn check_counts_and_owl(&self) -> Result<()> {
        if self.nsamples == 0 {
            bail!("--nsamples must be at least 1");
        }
        if !(self.owl_m.is_finite() && self.owl_m > 0.0) {
            bail!("--owl-m {} must be a positive number", self.owl_m);
        }
        if !(self.owl_lambda.is_finite() && (0.0..1.0).contains(&self.owl_lambda)) {
            bail!("--owl-lambda {} must be a number in [0, 1)", self.owl_lambda);
        }
        if self.top_up == TopUpKind::Neuroal && self.search_nsamples == 0 {
            bail!("--search-nsamples must be at least 1");
        }
        Ok(())
    }
}

impl Method {
    /// The pruner behind a `--method`.
    pub fn pruner(self, blocksize: usize, percdamp: f64) -> Box<dyn Pruner> {
        match self {
            Method::Magnitude => Box::new(Magnitude),
            Method::Wanda => Box::new(Wanda),
            Method::Sparsegpt => Box::new(SparseGpt::new(blocksize, percdamp)),
            Method::Multiflow => Box::new(Multiflow),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negative_zero_is_zero() {
        let settings = PruneSettings { sparsity: Some(-0.0), ..PruneSettings::default() };
        let s = settings.check().unwrap().sparsity;
        assert!(s == 0.0 && s.is_sign_positive(), "{s}");
        assert_eq!(serde_json::json!(s).to_string(), "0.0");
    }
}
