//! `report.json`: what a prune run did and everything needed to reproduce it, as one typed,
//! serialised struct. Key names are stable; readers (the plots, users' scripts) rely on them.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    pub settings: Settings,
    pub device: String,
    pub dtype: Dtype,
    pub calibration: Calibration,
    pub topup: TopUpReport,
    pub sparsity: SparsityReport,
    pub eval: EvalReport,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub zeroshot: Option<ZeroShotReport>,
    pub timings: Timings,
    #[serde(default)]
    pub memory: MemoryUse,
    pub provenance: Provenance,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub plots: Option<Plots>,
    /// A mixture of experts' calibration.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub experts: Option<ExpertsReport>,
}

/// How a mixture of experts' experts were calibrated.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ExpertsReport {
    /// `routed` (each expert on the tokens its router sent it) or `all` (every token through
    /// every expert, for the statistics only).
    pub calibrate: String,
    /// Per block, per expert: the calibration tokens the router sent it (`routed` only).
    pub tokens: Vec<Vec<usize>>,
    /// The experts sent no token ("block B expert E"), calibrated on every token instead.
    pub every_token: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Settings {
    pub model: PathBuf,
    pub out: PathBuf,
    pub model_type: String,
    pub method: String,
    pub pattern: String,
    pub sparsity: f64,
    pub top_up: String,
    /// The pattern the engine applied (`rows-variable` after NeuroAL's row step).
    pub final_pattern: String,
    /// The refinement after the top-up, with its parameters; absent without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refine: Option<RefineReport>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RefineReport {
    pub method: String,
    pub cycles: usize,
    pub threshold: f64,
    /// Which linears it refines: `attention` or `all`.
    pub linears: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Dtype {
    /// What the arithmetic ran in.
    pub compute: String,
    /// What the checkpoint's config declares; each tensor keeps its own dtype on disk.
    pub checkpoint: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Calibration {
    pub file: PathBuf,
    pub seed: u64,
    pub seqlen: usize,
    pub nsamples: usize,
    pub tokens: usize,
    pub generator: String,
    /// Start offsets of the calibration windows.
    pub windows: Vec<usize>,
    /// NeuroAL's own search windows.
    pub search_windows: Option<Vec<usize>>,
}

/// What the top-up chose and why. λs are `null` where a step did not run; scores are
/// lists of [λ, score].
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct TopUpReport {
    pub name: String,
    pub lambda_block: Option<f64>,
    pub lambda_row: Option<f64>,
    pub block_scores: Vec<[f64; 2]>,
    pub row_scores: Vec<[f64; 2]>,
    pub block_sparsities: Vec<f64>,
    /// AlphaPruning: each block's α and the ε its ratios were spread with.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub alphas: Option<Vec<f64>>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub alpha_epsilon: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub step: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub search_nsamples: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub owl_m: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub owl_lambda: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub outlier_ratios: Option<Vec<f64>>,
    /// Per linear with per-row sparsities: their min, max and mean.
    #[serde(default)]
    pub row_sparsity: BTreeMap<String, Summary>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Summary {
    pub min: f64,
    pub max: f64,
    pub mean: f64,
}

impl Summary {
    pub fn of(v: &[f64]) -> Summary {
        Summary {
            min: v.iter().cloned().fold(f64::INFINITY, f64::min),
            max: v.iter().cloned().fold(f64::NEG_INFINITY, f64::max),
            mean: v.iter().sum::<f64>() / v.len().max(1) as f64,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SparsityReport {
    pub overall: f64,
    pub blocks: Vec<f64>,
    pub layers: BTreeMap<String, f64>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct EvalReport {
    pub file: Option<PathBuf>,
    pub seqlen: Option<usize>,
    pub windows: Option<usize>,
    pub ppl_dense: Option<f64>,
    pub ppl_pruned: Option<f64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Timings {
    pub topup_s: f64,
    pub prune_s: f64,
    pub total_s: f64,
}

/// What the run held at its peak, in MiB: the process's resident memory (Linux), and on a GPU
/// the bytes burn's memory pools held, sampled every 10 ms from the device's opening; beside
/// them the up-front estimate (f32 throughout, meant as an upper bound), to compare.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct MemoryUse {
    pub peak_host_mib: f64,
    pub peak_gpu_mib: Option<f64>,
    #[serde(default)]
    pub estimated_peak_mib: f64,
    /// NeuroAL: candidates whose dense passes shared a batch (`--search-batch`).
    #[serde(default)]
    pub search_dense_batch: Option<usize>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Provenance {
    pub tool: String,
    pub version: String,
    pub git_revision: String,
    pub command_line: String,
    pub device: String,
    /// The interrupted run's folder this run continued, if any.
    pub resumed_from: Option<PathBuf>,
    /// SHA-256 of every input file, by name.
    pub sha256: BTreeMap<String, String>,
    /// The input folder's other files, copied unchanged into the output, with the SHA-256 of
    /// what was copied.
    #[serde(default)]
    pub copied: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Plots {
    pub dir: PathBuf,
    pub files: Vec<String>,
}

/// Zero-shot accuracy before and after pruning (`prune --zeroshot`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ZeroShotReport {
    pub files: Vec<PathBuf>,
    /// Longest sequence; longer ones were cut on the left.
    pub max_len: usize,
    pub dense: BTreeMap<String, crate::measure::zeroshot::TaskScore>,
    pub pruned: BTreeMap<String, crate::measure::zeroshot::TaskScore>,
}
