//! Top-ups decide how the target sparsity s is spread over blocks and rows; they only build the
//! sparsity map that the block pipeline applies. Uniform: s everywhere. OWL (`owl.rs`): per
//! block, from the outlier ratio of Wanda scores. NeuroAL (`neuroal.rs`): a zeroth-order search
//! over λ maximising the neuron alignment between dense and sparse activations, first per
//! block, then per row.

use crate::bail;
use crate::io::error::Result;
use crate::io::faults::fault;
use crate::measure::trace::Trace;
use crate::model::Model;
use crate::prune::alpha::{alpha_block_sparsities, alpha_peak, block_alpha};
use crate::prune::mask::Pattern;
use crate::prune::neuroal::{self, Asked, SearchPlan};
use crate::prune::owl::{owl_block_sparsities, owl_outlier_ratios};
use crate::prune::resume::Progress;
use crate::prune::settings::{Checked, PruneSettings, TopUpKind};
use crate::prune::spread::{Map, block_map, uniform_map};

/// The sparsity map a top-up chose, with what the report says about the choice.
pub struct TopUp {
    pub map: Map,
    /// The mask pattern the map is applied with: the settings', or `rows-variable` after
    /// NeuroAL's row step.
    pub pattern: Pattern,
    pub block_sparsities: Vec<f64>,
    /// OWL's outlier ratio per block.
    pub outlier_ratios: Option<Vec<f64>>,
    /// AlphaPruning's α per block (the mean of its linears').
    pub alphas: Option<Vec<f64>>,
    /// NeuroAL's search: its windows, λs and scores.
    pub search: Option<neuroal::Found>,
}

/// The calibration a top-up reads: the model, the calibration text's token ids and the windows
/// drawn from them, `seqlen` tokens each, one after another.
pub struct Calibrated<'a> {
    pub model: &'a Model,
    pub ids: &'a [u32],
    pub windows: &'a [u32],
    pub seqlen: usize,
    /// Where the search's stage times go (`NEUROAL_TRACE`).
    pub trace: &'a Trace,
}

/// The map the settings' top-up chooses. OWL's ratios and NeuroAL's scores are saved in
/// `saved` as they are made, so an interrupted run continues from them.
pub fn choose_map(
    calibrated: &Calibrated,
    settings: &PruneSettings,
    checked: &Checked,
    saved: &Progress,
    plan: SearchPlan,
) -> Result<TopUp> {
    let model = calibrated.model;
    let (blocks, linears, s) = (model.num_blocks(), model.linear_counts(), checked.sparsity);
    match settings.top_up {
        TopUpKind::Uniform => Ok(TopUp {
            map: uniform_map(&linears, s),
            pattern: settings.pattern.clone(),
            block_sparsities: vec![s; blocks],
            outlier_ratios: None,
            alphas: None,
            search: None,
        }),
        TopUpKind::Alpha => {
            let alphas = match saved.floats("alpha-per-block")? {
                Some(a) => a,
                None => {
                    let a = block_alphas(model)?;
                    saved.save_floats("alpha-per-block", &a)?;
                    fault("after-alpha");
                    a
                }
            };
            let params: Vec<f64> =
                (0..blocks).map(|b| model.linear_shapes(b).iter().map(|s| (s[0] * s[1]) as f64).sum()).collect();
            let epsilon = checked.alpha_epsilon.unwrap_or(0.3);
            let sparsities = alpha_block_sparsities(&alphas, &params, s, epsilon);
            if let Some((b, r)) = sparsities.iter().enumerate().find(|(_, r)| !(**r >= 0.0 && **r < 1.0)) {
                bail!(
                    "AlphaPruning gives block {b} the sparsity {r:.4}, outside [0, 1): lower --alpha-epsilon ({epsilon}) or --sparsity"
                );
            }
            Ok(TopUp {
                map: block_map(&sparsities, &linears),
                pattern: Pattern::Row,
                block_sparsities: sparsities,
                outlier_ratios: None,
                alphas: Some(alphas),
                search: None,
            })
        }
        TopUpKind::Owl => {
            let ratios = match saved.floats("owl-ratios")? {
                Some(r) => r,
                None => {
                    let r = owl_outlier_ratios(model, calibrated.windows, calibrated.seqlen, settings.owl_m)?;
                    saved.save_floats("owl-ratios", &r)?;
                    fault("after-owl");
                    r
                }
            };
            let sparsities = owl_block_sparsities(&ratios, settings.owl_lambda, s);
            Ok(TopUp {
                map: block_map(&sparsities, &linears),
                pattern: Pattern::Row,
                block_sparsities: sparsities,
                outlier_ratios: Some(ratios),
                alphas: None,
                search: None,
            })
        }
        TopUpKind::Neuroal => {
            let asked = Asked {
                sparsity: s,
                step: checked.step,
                search_nsamples: settings.search_nsamples,
                seed: settings.seed,
                chunk: settings.search_chunk,
                plan,
            };
            let pruner = checked.pruner.as_ref();
            let (ids, seqlen, trace) = (calibrated.ids, calibrated.seqlen, calibrated.trace);
            let found = neuroal::search(model, ids, seqlen, pruner, &asked, saved, trace)?;
            Ok(TopUp {
                map: found.map.clone(),
                pattern: found.pattern.clone(),
                block_sparsities: found.block_sparsities.clone(),
                outlier_ratios: None,
                alphas: None,
                search: Some(found),
            })
        }
    }
}

/// Each block's α: every linear's weight read back to the host in f32, its spectrum fitted
/// (the linears of a block side by side), the mean taken.
fn block_alphas(model: &Model) -> Result<Vec<f64>> {
    use rayon::prelude::*;
    let bar = crate::io::progress::progress_bar(model.num_blocks(), "AlphaPruning spectra");
    let mut alphas = Vec::with_capacity(model.num_blocks());
    for block in model.blocks() {
        let block = block?;
        let weights = block
            .linears()
            .iter()
            .map(|l| {
                let [rows, cols] = l.weight.dims();
                let w = crate::gpu::tensor::to_dtype(l.weight.clone(), burn::tensor::DType::F32);
                crate::gpu::tensor::host_f32(w, "AlphaPruning weight").map(|w| (w, rows, cols))
            })
            .collect::<Result<Vec<_>>>()?;
        let per_linear = weights
            .par_iter()
            .map(|(w, rows, cols)| alpha_peak(w, *rows, *cols))
            .collect::<Result<Vec<f64>>>()
            .map_err(|e| crate::err!("block {}: {e}", block.index))?;
        alphas.push(block_alpha(&per_linear));
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(alphas)
}
