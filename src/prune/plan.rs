//! How a prune's work is laid out, as its memory estimate sees it: the windows that go through
//! the model, the NeuroAL candidates carried at once and run side by side, and the candidates
//! whose dense passes share a batch.

use crate::gpu::device::ComputeDtype;
use crate::measure::memory;
use crate::model::config::Config;
use crate::prune::neuroal::{block_grid, row_grid};
use crate::prune::settings::{NeuroalStep, PruneSettings, Refine, TopUpKind};

/// What the estimate needs beyond the settings: the NeuroAL step that runs, the target
/// sparsity, the window length, whether the pruner keeps Hessians, whether the run is on a CPU
/// backend, and whether the calibration windows go through the model outside NeuroAL's search
/// (not for magnitude's pruning pass, unless OWL's ratios need them).
pub struct Work<'a> {
    pub step: NeuroalStep,
    pub sparsity: f64,
    pub seqlen: usize,
    pub hessians: bool,
    pub on_cpu: bool,
    /// The linears' [out, in] shapes.
    pub shapes: &'a [[usize; 2]],
    pub windows_run: bool,
}

/// The sizes the memory estimate needs of a run. On the CPU backends NeuroAL's candidates, and
/// the calibration chunks, run side by side, one per core, where a block is small
/// ([`memory::cpu_passes_at_once`]); on a GPU one at a time.
pub fn memory_run(settings: &PruneSettings, work: &Work) -> memory::Run {
    let search_grid = if work.step == NeuroalStep::Row {
        row_grid().len()
    } else {
        block_grid(work.sparsity).len().max(row_grid().len())
    };
    let carried = if settings.search_chunk == 0 { search_grid } else { settings.search_chunk.min(search_grid) };
    memory::Run {
        nsamples: if work.windows_run { settings.nsamples } else { 0 },
        seqlen: work.seqlen,
        chunk: crate::prune::pipeline::CHUNK,
        hessians: work.hessians,
        search: (settings.top_up == TopUpKind::Neuroal).then_some((settings.search_nsamples, carried)),
        passes_at_once: if work.on_cpu { memory::cpu_passes_at_once(work.shapes).min(carried) } else { 1 },
        // Auto (0) is settled by [`dense_batch`] once the run's other sizes are known.
        dense_batch: settings.search_batch.clamp(1, carried.max(1)),
        // What a CPU backend computes in (auto: f32); a GPU run sets its own once it knows.
        dtype_bytes: match settings.dtype {
            ComputeDtype::F16 | ComputeDtype::Bf16 => 2,
            _ => 4,
        },
        // The CPU backends stack nothing; a GPU run sets its own once it knows.
        stacked_params: 0,
        spectra: settings.top_up == TopUpKind::Alpha,
        refined: settings.refine == Refine::Dsnot,
        // Set by the caller, which has read what is measured.
        measure: None,
    }
}

/// Candidates per dense batch: as asked (`memory_run` clamped it to those carried at once), or
/// by default on a GPU as many as fit without raising the run's estimated peak. On the CPU
/// backends one by default: their candidates already run side by side, one per core, which the
/// batches would serialize (wt2-llama at 70% on 2 cores: search 3.7 s alone, 4.2 s in batches
/// of 2; the same masks).
pub fn dense_batch(
    settings: &PruneSettings,
    gpu: bool,
    config: &Config,
    shapes: &[[usize; 2]],
    run: &memory::Run,
) -> usize {
    if settings.search_batch == 0 && gpu { memory::free_dense_batch(config, shapes, run) } else { run.dense_batch }
}
