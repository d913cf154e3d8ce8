//! An up-front estimate of what a prune run holds at its peak, checked against what the
//! machine has, so a run that cannot fit says so in one line before the work starts instead of
//! aborting in an allocation an hour in; and what a run did hold (peak resident memory, and the
//! GPU pools' bytes, sampled).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::io::error::{Result, human};
use crate::model::config::Config;
use crate::{bail, err};

/// What lowers a part that is the model's own size.
const MODEL_SIZE: &str = "nothing (it is the model's size)";

/// One part of the estimate: what it is, its size, and the flag that lowers it.
#[derive(Clone, Debug)]
pub struct Part {
    pub what: &'static str,
    pub bytes: u128,
    pub lowered_by: &'static str,
}

/// What a run needs: the sizes it was asked for.
#[derive(Clone, Copy)]
pub struct Run {
    /// Calibration windows that go through the model outside the search: 0 for a pruner that
    /// reads none (magnitude, unless OWL's outlier ratios need them).
    pub nsamples: usize,
    pub seqlen: usize,
    /// Windows per forward pass of the engine.
    pub chunk: usize,
    /// NeuroAL: (search windows, candidates carried at once).
    pub search: Option<(usize, usize)>,
    /// Passes run at the same time on the CPU backends, one per core: NeuroAL's candidates in
    /// the search, the calibration chunks in the pruning pass (without SparseGPT's Hessians).
    pub passes_at_once: usize,
    /// NeuroAL candidates whose dense passes through a block run as one batch.
    pub dense_batch: usize,
    /// SparseGPT: a Hessian per linear of a block, and every new weight held until written.
    pub hessians: bool,
    /// Bytes per value of the compute dtype, which weights, hidden states and the linears'
    /// activations are held in; attention scores, statistics and Hessians are f32 whatever it is.
    pub dtype_bytes: u128,
    /// Values of a block's weights stacked for fused products (`src/gpu/fused.rs`; 0 where none
    /// are), held beside the weights they copy.
    pub stacked_params: u128,
    /// AlphaPruning: each block's weights read to the host in f32 and their spectra taken, all
    /// linears of a block side by side, before the pruning pass.
    pub spectra: bool,
    /// DSnoT: a linear's weight, mask and per-row lists on the host while its mask is refined.
    pub refined: bool,
    /// What `--eval` and `--zeroshot` measure once the checkpoint is written; `None` without
    /// them. Only then are an embedding table and LM head on the device (the pruning reads its
    /// windows' rows from the memory map and computes no logits).
    pub measure: Option<Measure>,
}

/// The sizes of the measuring phase: the dense model, then the pruned one, one at a time.
#[derive(Clone, Copy, Debug, Default)]
pub struct Measure {
    /// Perplexity (`--eval`): (windows, tokens a window).
    pub perplexity: Option<(usize, usize)>,
    /// Zero-shot accuracy (`--zeroshot`): (requests, the longest request's tokens).
    pub zeroshot: Option<(usize, usize)>,
}

/// The widest linear output of a block (the MLP's hidden width in every family here).
fn widest(shapes: &[[usize; 2]]) -> u128 {
    shapes.iter().map(|s| s[0]).max().unwrap_or(0) as u128
}

/// The weight count of a block's largest linear.
fn largest_linear(shapes: &[[usize; 2]]) -> u128 {
    shapes.iter().map(|s| (s[0] * s[1]) as u128).max().unwrap_or(0)
}

/// A block's weight count; `shapes` are its linears.
fn block_params(shapes: &[[usize; 2]]) -> u128 {
    shapes.iter().map(|s| (s[0] * s[1]) as u128).sum()
}

/// Activations of one pass of `windows` windows of `t` tokens through a block: attention scores
/// (f32) and the linears' inputs and outputs (`h` bytes a value).
fn activation_bytes(c: &Config, shapes: &[[usize; 2]], windows: u128, t: u128, h: u128) -> u128 {
    let (d, ff) = (c.hidden_size as u128, widest(shapes));
    windows * (3 * c.num_heads as u128 * t * t * 4 + (3 * t * ff + 4 * t * d) * h)
}

/// Every block's mask, a bit a weight: held from the pruning pass to the report.
fn masks(c: &Config, shapes: &[[usize; 2]]) -> Part {
    Part { what: "masks", bytes: block_params(shapes) * c.num_layers as u128 / 8, lowered_by: MODEL_SIZE }
}

/// The parts held at once at the peak of a prune run; `shapes` are a block's linears.
/// A run holds one of three phases at a time: NeuroAL's search, whose candidates carry their own
/// hidden states, is over before the pruning pass embeds the calibration windows, and both are
/// over before `--eval` or `--zeroshot` measure (see [`measuring_parts`]). The peak is the
/// largest phase.
pub fn prune_parts(c: &Config, shapes: &[[usize; 2]], run: &Run) -> Vec<Part> {
    let mut phases = vec![pruning_parts(c, shapes, run)];
    if run.spectra {
        phases.push(spectra_parts(shapes, run));
    }
    phases.extend(run.measure.map(|m| {
        [measuring_parts(c, shapes, run.dtype_bytes, run.stacked_params, &m), vec![masks(c, shapes)]].concat()
    }));
    phases.into_iter().max_by_key(|p| total(p)).unwrap_or_default()
}

/// What measuring a model holds (`eval`, `zeroshot`, and `prune --eval` / `--zeroshot` once
/// the checkpoint is written, where the dense and the pruned model are measured one after the
/// other): its table and head; every block when all fit in [`crate::measure::perplexity::RESIDENT_BLOCKS_BYTES`]
/// (f32), else one and the next decoded ahead; and the larger of the two measures' passes: the
/// hidden states held, one pass's activations and its logits with their f32 log-probabilities.
/// `dtype_bytes` and `stacked_params` as in [`Run`].
pub fn measuring_parts(
    c: &Config,
    shapes: &[[usize; 2]],
    dtype_bytes: u128,
    stacked_params: u128,
    m: &Measure,
) -> Vec<Part> {
    let h = dtype_bytes;
    let (d, v, e) = (c.hidden_size as u128, c.vocab_size as u128, c.embed_dim as u128);
    // OPT's projections between a narrower embedding and the blocks (in and out).
    let projections = if e == d { 0 } else { 2 * d * e };
    let resident = all_blocks_resident(c, shapes);
    let block = (block_params(shapes) + stacked_params) * h;
    let mut parts = vec![
        Part {
            what: "embeddings and head",
            bytes: (if c.tie_word_embeddings { 1 } else { 2 } * v * e + projections) * h,
            lowered_by: MODEL_SIZE,
        },
        Part {
            what: "the measured model's blocks",
            bytes: if resident { c.num_layers as u128 } else { 2 } * block,
            lowered_by: MODEL_SIZE,
        },
    ];
    let pass = |p: Pass| {
        let (batch, held, t) = (p.batch as u128, p.held as u128, p.tokens as u128);
        vec![
            Part { what: "measured hidden states", bytes: held * t * d * h, lowered_by: p.lowered_by },
            Part {
                what: "a measuring pass's activations",
                bytes: activation_bytes(c, shapes, batch, t, h),
                lowered_by: p.lowered_by,
            },
            Part {
                what: "logits and their log-probabilities",
                bytes: batch * t * v * (h + 8),
                lowered_by: p.lowered_by,
            },
        ]
    };
    parts.extend(measuring_passes(c, m, resident).into_iter().map(pass).max_by_key(|p| total(p)).unwrap_or_default());
    parts
}

/// Whether measuring holds every block, as `eval` decides.
fn all_blocks_resident(c: &Config, shapes: &[[usize; 2]]) -> bool {
    crate::measure::perplexity::blocks_fit(shapes, c.num_layers, crate::measure::perplexity::RESIDENT_BLOCKS_BYTES)
}

/// One kind of pass of the measuring phase.
struct Pass {
    /// Windows (requests) a forward pass.
    batch: usize,
    /// Windows whose hidden states are held at once.
    held: usize,
    /// Tokens a window.
    tokens: usize,
    lowered_by: &'static str,
}

/// The passes perplexity and zero-shot accuracy run, sized as `eval` and `zeroshot` size them;
/// `resident` when all blocks are held ([`all_blocks_resident`]).
fn measuring_passes(c: &Config, m: &Measure, resident: bool) -> Vec<Pass> {
    let perplexity = m.perplexity.map(|(windows, t)| {
        let batch = crate::measure::perplexity::batch_size(t, c.vocab_size).min(windows);
        // Streamed blocks run a group of windows through each; resident ones a batch at a time.
        // Either way a pass's output is held beside the inputs still to go.
        let held = if resident {
            2 * batch
        } else {
            crate::measure::perplexity::stream_group(t, c.hidden_size).min(windows) + batch
        };
        Pass { batch, held, tokens: t, lowered_by: "--seqlen" }
    });
    let zeroshot = m.zeroshot.map(|(requests, t)| {
        let batch = crate::measure::zeroshot::batch_cap(t, c.vocab_size).min(requests);
        Pass {
            batch,
            held: 2 * batch,
            tokens: t,
            lowered_by: "the zero-shot requests' length (zeroshot's --seqlen cuts them)",
        }
    });
    [perplexity, zeroshot].into_iter().flatten().collect()
}

/// The search's and the pruning pass's parts, whichever is larger.
fn pruning_parts(c: &Config, shapes: &[[usize; 2]], run: &Run) -> Vec<Part> {
    let f = 4u128;
    let h = run.dtype_bytes;
    let d = c.hidden_size as u128;
    let t = run.seqlen as u128;
    let block_params = block_params(shapes);
    // `at_once` passes over chunks of at most `windows` windows each.
    let activations = |at_once: u128, windows: usize| Part {
        what: "attention and MLP activations",
        bytes: at_once * activation_bytes(c, shapes, run.chunk.min(windows) as u128, t, h),
        lowered_by: "--seqlen",
    };
    // The block being pruned, its pruned copy (one per candidate running), and the next block
    // decoded ahead; the stacked weights of the first two.
    let weights = |at_once: u128| Part {
        what: "one block's weights",
        bytes: ((2 + at_once) * block_params + (1 + at_once) * run.stacked_params) * h,
        lowered_by: MODEL_SIZE,
    };
    // One set per candidate running (each records its own in the search). Linears that read one
    // input share a Hessian, so this per-linear count is an upper bound.
    let hessians = |at_once: u128| Part {
        what: "SparseGPT Hessians",
        bytes: at_once * shapes.iter().map(|s| (s[1] * s[1]) as u128).sum::<u128>() * f,
        lowered_by: MODEL_SIZE,
    };
    let chunks = run.nsamples.div_ceil(run.chunk.max(1)).max(1);
    let chunks_at_once = if run.hessians { 1 } else { run.passes_at_once.clamp(1, chunks) as u128 };
    let mut pruning = vec![
        Part {
            what: "calibration hidden states",
            bytes: 2 * run.nsamples as u128 * t * d * h,
            lowered_by: "--nsamples or --seqlen",
        },
        activations(chunks_at_once, run.nsamples),
        weights(1),
        masks(c, shapes),
    ];
    if run.refined {
        // f32 weight, a byte of mask and each row's f32 metric and two usize orders, a weight.
        let bytes = largest_linear(shapes) * (4 + 1 + 4 + 2 * 8);
        pruning.push(Part { what: "DSnoT's host lists", bytes, lowered_by: MODEL_SIZE });
    }
    if run.hessians {
        pruning.push(hessians(1));
        pruning.push(Part {
            what: "SparseGPT's new weights",
            bytes: block_params * c.num_layers as u128 * f,
            lowered_by: MODEL_SIZE,
        });
    }
    let Some((sn, carried)) = run.search else { return pruning };
    let at_once = run.passes_at_once.max(1) as u128;
    // A step of the search holds the dense statistics of `dense_batch` or `at_once` candidates,
    // whichever is more, and the activations of a dense batch's or of the side-by-side passes.
    let step = at_once.max(run.dense_batch.max(1) as u128);
    let mut search = vec![
        Part {
            what: "NeuroAL search hidden states",
            bytes: carried as u128 * 2 * sn as u128 * t * d * h,
            lowered_by: "--search-chunk or --search-nsamples",
        },
        Part { lowered_by: if step > at_once { "--search-batch" } else { "--seqlen" }, ..activations(step, sn) },
        weights(at_once),
    ];
    if run.hessians {
        search.push(hessians(step));
    }
    if total(&search) > total(&pruning) { search } else { pruning }
}

/// AlphaPruning's phase: the block whose spectra are taken, its weights' f32 copies on the host
/// and, as every linear's SVD runs side by side, a working copy of each.
fn spectra_parts(shapes: &[[usize; 2]], run: &Run) -> Vec<Part> {
    let block_params = block_params(shapes);
    vec![
        Part { what: "one block's weights", bytes: block_params * run.dtype_bytes, lowered_by: MODEL_SIZE },
        Part { what: "AlphaPruning's host copies and SVDs", bytes: 2 * block_params * 4, lowered_by: MODEL_SIZE },
    ]
}

/// The parts' sum in bytes.
pub fn total(parts: &[Part]) -> u128 {
    parts.iter().map(|p| p.bytes).sum()
}

/// The parts' sum in MiB.
pub fn total_mib(parts: &[Part]) -> f64 {
    total(parts) as f64 / (1u128 << 20) as f64
}

/// A block's weight count from which the CPU backends run one pass at a time.
pub const CPU_ONE_PASS_FROM: u128 = 32 << 20;

/// Passes (NeuroAL candidates, calibration chunks) the CPU backends run side by side before
/// memory is counted: one per core where a block (its linears' `shapes`) has fewer than
/// [`CPU_ONE_PASS_FROM`] weights, else one, with every core in its products. Side by side, each pass allocates its pruned
/// weights and activations on a worker thread, where glibc maps every block above 64 MiB afresh
/// and the kernel faults and clears it page by page, and holds a pruned block more. Measured on
/// 2 cores, NeuroAL 50%, 8 search windows of 256 tokens, one pass against two side by side:
/// 7B-shaped blocks (202 M weights) 376 s against 397 s; 0.84 B-shaped (45 M) 79.5 against
/// 79.4 s; wt2-llama (0.7 M) 10.5 against 9.4 s. The pruning pass of 32 windows on the 7B
/// shape: 49.7 against 50.5 s.
pub fn cpu_passes_at_once(shapes: &[[usize; 2]]) -> usize {
    if block_params(shapes) >= CPU_ONE_PASS_FROM { 1 } else { rayon::current_num_threads() }
}

/// The most passes (NeuroAL candidates, calibration chunks), up to `run.passes_at_once`, that can run side by side within
/// `available` bytes; 1 when even that does not fit (the caller's check then says what to lower).
pub fn passes_that_fit(c: &Config, shapes: &[[usize; 2]], run: &Run, available: u128) -> usize {
    let need = |at_once: usize| total(&prune_parts(c, shapes, &Run { passes_at_once: at_once, ..*run }));
    (1..=run.passes_at_once.max(1)).rev().find(|&k| need(k) <= available).unwrap_or(1)
}

/// The most NeuroAL candidates, up to those carried at once, whose dense passes can share a
/// batch without raising the run's estimated peak (a larger batch may still be asked for).
pub fn free_dense_batch(c: &Config, shapes: &[[usize; 2]], run: &Run) -> usize {
    let Some((_, carried)) = run.search else { return 1 };
    let need = |k: usize| total(&prune_parts(c, shapes, &Run { dense_batch: k, ..*run }));
    let budget = need(1);
    (1..=carried.max(1)).rev().find(|&k| need(k) <= budget).unwrap_or(1)
}

/// The largest single buffer of a prune run, as a part (what, bytes, what lowers it): what a GPU
/// adapter's buffer limit must allow. The embedding table is uploaded only to measure
/// (`--eval`, `--zeroshot`); scores, statistics, log-probabilities and the pruners' weight
/// copies are f32.
pub fn largest_buffer(c: &Config, shapes: &[[usize; 2]], run: &Run) -> Part {
    let chunk = (run.chunk.min(run.nsamples).max(1)) as u128;
    let t = run.seqlen as u128;
    let widest_input = shapes.iter().map(|s| s[1] as u128).max().unwrap_or(0);
    let mut parts = vec![
        Part { what: "attention scores", bytes: chunk * c.num_heads as u128 * t * t * 4, lowered_by: "--seqlen" },
        Part { what: "MLP activations", bytes: chunk * t * widest(shapes) * 4, lowered_by: "--seqlen" },
        Part { what: "a linear's f32 copy for pruning", bytes: largest_linear(shapes) * 4, lowered_by: MODEL_SIZE },
    ];
    if let Some(m) = run.measure {
        parts.push(table_buffer(c, run.dtype_bytes));
        parts.extend(measuring_buffers(c, shapes, &m));
    }
    if run.hessians {
        parts.push(Part {
            what: "a SparseGPT Hessian",
            bytes: widest_input * widest_input * 4,
            lowered_by: MODEL_SIZE,
        });
    }
    parts.into_iter().max_by_key(|p| p.bytes).unwrap_or(Part { what: "nothing", bytes: 0, lowered_by: "nothing" })
}

/// The embedding table as one buffer, in the compute dtype (`dtype_bytes` a value).
fn table_buffer(c: &Config, dtype_bytes: u128) -> Part {
    Part {
        what: "embedding table",
        bytes: c.vocab_size as u128 * c.embed_dim as u128 * dtype_bytes,
        lowered_by: if dtype_bytes > 2 { "--dtype f16" } else { MODEL_SIZE },
    }
}

/// The largest buffers of a measuring pass: its attention scores and log-probabilities, both f32.
fn measuring_buffers(c: &Config, shapes: &[[usize; 2]], m: &Measure) -> Vec<Part> {
    measuring_passes(c, m, all_blocks_resident(c, shapes))
        .into_iter()
        .flat_map(|p| {
            let (batch, t) = (p.batch as u128, p.tokens as u128);
            [
                Part {
                    what: "a measuring pass's attention scores",
                    bytes: batch * c.num_heads as u128 * t * t * 4,
                    lowered_by: p.lowered_by,
                },
                Part {
                    what: "a measuring pass's log-probabilities",
                    bytes: batch * t * c.vocab_size as u128 * 4,
                    lowered_by: p.lowered_by,
                },
            ]
        })
        .collect()
}

/// Fails with one line when the buffer `need` is larger than the adapter's `limit`.
pub fn check_buffer(need: &Part, limit: u64) -> Result<()> {
    if need.bytes <= limit as u128 {
        return Ok(());
    }
    let advice = match need.lowered_by {
        "--dtype f16" => "use --dtype f16".to_string(),
        MODEL_SIZE => "use --device cpu".to_string(),
        flag => format!("lower {flag}"),
    };
    bail!(
        "this run needs a {} buffer ({}), more than the adapter's limit of {}; {advice}",
        human(need.bytes),
        need.what,
        human(limit as u128)
    );
}

/// Fails with one line when the parts exceed `available` bytes.
pub fn check(parts: &[Part], available: u128, of_what: &str) -> Result<()> {
    let need = total(parts);
    if need <= available {
        return Ok(());
    }
    let Some(big) = parts.iter().max_by_key(|p| p.bytes) else { return Ok(()) };
    bail!(
        "this run needs about {} of memory ({} {}), more than the {} {of_what} has available; {}",
        human(need),
        big.what,
        human(big.bytes),
        human(available),
        remedy(big, None)
    );
}

/// What lowers part `p`, or that nothing does; `other` (another device) where there is one.
fn remedy(p: &Part, other: Option<&str>) -> String {
    match (p.lowered_by == MODEL_SIZE, other) {
        (false, None) => format!("lower {}", p.lowered_by),
        (false, Some(other)) => format!("lower {} or {other}", p.lowered_by),
        (true, None) => "that part is the model's own size, which no flag lowers".to_string(),
        (true, Some(other)) => format!("that part is the model's own size: {other}"),
    }
}

/// `eval` and `zeroshot`'s check before the model is loaded: what measuring `m` holds, in
/// `dtype`, against this machine's available memory on the CPU backends, or the GPU's (a
/// warning, or beyond [`GPU_ESTIMATE_SLACK`] an error, as for a prune).
pub fn check_measuring(
    c: &Config,
    m: &Measure,
    device: &crate::gpu::device::Selected,
    dtype: burn::tensor::DType,
) -> Result<()> {
    // Every block is sized as the largest kind.
    let specs = crate::model::Specs::of(c);
    let spec = specs.largest();
    let stacked = crate::gpu::fused::stacked_params(&spec.fused_groups(), dtype, device.gpu.as_ref().map(|g| &g.fused));
    let parts = measuring_parts(c, &spec.shapes(), dtype.size() as u128, stacked, m);
    if !device.is_gpu {
        return match available_host() {
            Some(available) => check(&parts, available, "this machine"),
            None => Ok(()),
        };
    }
    if let Some(capacity) = crate::gpu::kernels::capacity(&device.device)
        && let Some(warning) = gpu_check(&parts, capacity as u128)?
    {
        eprintln!("{warning}");
    }
    // The table is checked as it is loaded, with its own message.
    let passes = measuring_buffers(c, &spec.shapes(), m);
    match (device.max_buffer, passes.into_iter().max_by_key(|p| p.bytes)) {
        (Some(limit), Some(need)) => check_buffer(&need, limit),
        _ => Ok(()),
    }
}

/// How far above a run's measured GPU peak the estimate may be: it ran 1.2–1.35× above what an
/// H100's pools held (docs/performance.md), so 1.5 leaves a margin.
const GPU_ESTIMATE_SLACK: f64 = 1.5;

/// Checks the estimate against the GPU's memory `capacity`. Over capacity the run may still fit
/// (the estimate is an upper bound): a warning. Over capacity × [`GPU_ESTIMATE_SLACK`] even the
/// lowest need the estimate allows does not fit: a one-line error before any work, instead of
/// an allocation failing when the device is full.
pub fn gpu_check(parts: &[Part], capacity: u128) -> Result<Option<String>> {
    let need = total(parts);
    let Some(big) = parts.iter().max_by_key(|p| p.bytes) else { return Ok(None) };
    if need as f64 > capacity as f64 * GPU_ESTIMATE_SLACK {
        bail!(
            "this run needs about {} of GPU memory ({} {}), more than the GPU's {} can hold; {}",
            human(need),
            big.what,
            human(big.bytes),
            human(capacity),
            remedy(big, Some("use --device cpu"))
        );
    }
    Ok((need > capacity).then(|| {
        format!(
            "warning: this run may not fit on the GPU: it is estimated to need about {} ({} {}), and the GPU has {}; if it runs out of memory, {}",
            human(need),
            big.what,
            human(big.bytes),
            human(capacity),
            remedy(big, Some("use --device cpu"))
        )
    }))
}

pub use crate::io::host::available_host;

/// The most GPU memory burn's pools hold while it runs: a thread reads their reserved bytes
/// every 10 ms (wgpu itself reports no usage).
pub struct GpuPeak {
    stop: Arc<AtomicBool>,
    sampler: Option<std::thread::JoinHandle<u64>>,
}

impl GpuPeak {
    pub fn start(device: &burn::tensor::Device) -> GpuPeak {
        let stop = Arc::new(AtomicBool::new(false));
        let (flag, read) = (stop.clone(), crate::gpu::kernels::reserved_bytes(device));
        let sampler = std::thread::spawn(move || {
            let mut peak = 0;
            loop {
                peak = peak.max(read());
                if flag.load(Ordering::Relaxed) {
                    return peak;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        });
        GpuPeak { stop, sampler: Some(sampler) }
    }

    /// The peak in MiB, with one last reading taken now.
    pub fn finish(mut self) -> Result<f64> {
        self.stop.store(true, Ordering::Relaxed);
        let Some(sampler) = self.sampler.take() else { return Ok(0.0) };
        let bytes = sampler.join().map_err(|_| err!("the GPU memory sampler failed"))?;
        Ok(bytes as f64 / (1024.0 * 1024.0))
    }
}

/// A run that fails before [`GpuPeak::finish`] stops its sampler too.
impl Drop for GpuPeak {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Peak resident set size of this process (Linux `VmHWM`), in MiB; 0 where unknown.
pub fn peak_rss_mib() -> f64 {
    peak_rss_bytes() as f64 / (1u128 << 20) as f64
}

/// [`peak_rss_mib`] in bytes.
pub fn peak_rss_bytes() -> u128 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|kb| kb.parse::<u128>().ok()))
        })
        .map_or(0, |kb| kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A LLaMA config 8 wide with an MLP of 16, and a block's linear shapes.
    fn tiny() -> (Config, Vec<[usize; 2]>) {
        let c = Config::from_json(
            r#"{"model_type":"llama","vocab_size":10,"hidden_size":8,"intermediate_size":16,
            "num_hidden_layers":2,"num_attention_heads":2,"max_position_embeddings":32}"#,
        )
        .unwrap();
        let shapes = crate::model::Specs::of(&c).largest().shapes();
        (c, shapes)
    }

    /// 4 windows of 16 tokens in chunks of 8, in f32, one pass at a time: no search, no Hessian,
    /// no fused stacks, no AlphaPruning or DSnoT, nothing measured.
    fn base_run() -> Run {
        Run {
            nsamples: 4,
            seqlen: 16,
            chunk: 8,
            search: None,
            passes_at_once: 1,
            dense_batch: 1,
            hessians: false,
            dtype_bytes: 4,
            stacked_params: 0,
            spectra: false,
            refined: false,
            measure: None,
        }
    }

    /// The bytes of the part named `what`, if the estimate has one.
    fn bytes(parts: &[Part], what: &str) -> Option<u128> {
        parts.iter().find(|p| p.what == what).map(|p| p.bytes)
    }

    #[test]
    fn alpha_pruning_and_dsnot_host_copies_by_hand() {
        let (c, shapes) = tiny();
        let run = |nsamples, spectra, refined| Run { nsamples, spectra, refined, ..base_run() };
        // A block's 640 weights (q, k, v, o 4 × 64; gate, up, down 3 × 128). AlphaPruning holds
        // the block (2560 bytes), its f32 host copies and the SVDs' copies: 2 × 640 × 4. With no
        // window run (magnitude), that phase (7680) stays under the pruning pass's 7680 + 160.
        let alpha = prune_parts(&c, &shapes, &run(0, true, false));
        assert_eq!(bytes(&alpha, "AlphaPruning's host copies and SVDs"), None);
        assert_eq!(total(&alpha), 7680 + 160);
        let alpha = spectra_parts(&shapes, &run(0, true, false));
        assert_eq!(total(&alpha), 640 * 4 + 2 * 640 * 4);
        // DSnoT: the largest linear (gate, up or down: 128 weights) × (4 + 1 + 4 + 16) bytes,
        // beside the pruning pass.
        let dsnot = prune_parts(&c, &shapes, &run(4, false, true));
        let plain = prune_parts(&c, &shapes, &run(4, false, false));
        assert_eq!(bytes(&dsnot, "DSnoT's host lists"), Some(128 * 25));
        assert_eq!(total(&dsnot), total(&plain) + 128 * 25);
        // A block this small at bf16 with no window: the spectra phase (f32 copies) is the peak.
        let half = Run { dtype_bytes: 2, ..run(0, true, false) };
        let parts = prune_parts(&c, &shapes, &half);
        assert_eq!(bytes(&parts, "AlphaPruning's host copies and SVDs"), Some(5120));
        assert_eq!(total(&parts), 1280 + 5120);
    }

    #[test]
    fn parts_by_hand_and_the_message_names_the_flag() {
        let (c, shapes) = tiny();
        let run = |search, at_once, hessians| Run { search, passes_at_once: at_once, hessians, ..base_run() };
        // The pruning pass: 4 windows of 16 tokens, 8 wide. Attention and MLP of all 4 windows
        // in one chunk: 4 × (3·2·16² + 3·16·16 + 4·16·8) × 4 = 45,056 bytes. A block's linears:
        // q, k, v, o 4 × 64 and gate, up, down 3 × 128 → 640 weights, held with the pruned copy
        // and the next block. No embeddings or head: the pruning computes no logits.
        let parts = prune_parts(&c, &shapes, &run(None, 1, false));
        assert_eq!(bytes(&parts, "calibration hidden states"), Some(2 * 4 * 16 * 8 * 4));
        assert_eq!(bytes(&parts, "attention and MLP activations"), Some(45_056));
        assert_eq!(bytes(&parts, "one block's weights"), Some(3 * 640 * 4));
        assert_eq!(bytes(&parts, "embeddings and head"), None);
        assert_eq!(bytes(&parts, "masks"), Some(640 * 2 / 8));
        assert_eq!(total(&parts), 4096 + 45_056 + 7680 + 160);
        assert!(check(&parts, total(&parts), "this machine").is_ok());
        let e = check(&parts, total(&parts) - 1, "this machine").unwrap_err().to_string();
        assert!(e.contains("(attention and MLP activations 44.0 KiB)") && e.ends_with("lower --seqlen"), "{e}");
        assert_eq!(human(3 << 30), "3.0 GiB");
        // Magnitude's pruning pass runs no window (nsamples 0): no hidden states, no activations.
        let weights_only = prune_parts(&c, &shapes, &Run { nsamples: 0, ..run(None, 1, false) });
        assert_eq!(bytes(&weights_only, "calibration hidden states"), Some(0));
        assert_eq!(bytes(&weights_only, "attention and MLP activations"), Some(0));
        assert_eq!(total(&weights_only), 7680 + 160);
        // On a GPU the same estimate warns, naming the same part and flag, up to 1.5 × the
        // GPU's memory (the estimate runs up to 1.35× above measured peaks); beyond, it refuses.
        let need = total(&parts);
        assert_eq!(gpu_check(&parts, need).unwrap(), None);
        let w = gpu_check(&parts, need - 1).unwrap().unwrap();
        assert!(
            w.starts_with("warning: ")
                && w.contains("(attention and MLP activations 44.0 KiB)")
                && w.ends_with("if it runs out of memory, lower --seqlen or use --device cpu"),
            "{w}"
        );
        assert!(gpu_check(&parts, need * 2 / 3 + 1).unwrap().is_some());
        let e = gpu_check(&parts, need * 2 / 3 - 1).unwrap_err().to_string();
        assert!(
            e.contains("(attention and MLP activations 44.0 KiB)")
                && e.ends_with("lower --seqlen or use --device cpu")
                && !e.contains('\n'),
            "{e}"
        );
        // NeuroAL with 2 search windows and 3 candidates carried: the search holds 3 × 2 copies ×
        // 2 windows × 16 × 8 × 4 = 6144 bytes of hidden states and activations of 2 windows
        // (22,528), 36,352 in all with the weights, less than the pruning pass, which stays the
        // peak.
        assert_eq!(total(&prune_parts(&c, &shapes, &run(Some((2, 3)), 1, false))), 56_992);
        // 30 candidates carried: 61,440 bytes of hidden states make the search the peak.
        let search = prune_parts(&c, &shapes, &run(Some((2, 30)), 1, false));
        assert_eq!(bytes(&search, "NeuroAL search hidden states"), Some(61_440));
        assert_eq!(bytes(&search, "attention and MLP activations"), Some(22_528));
        assert_eq!(bytes(&search, "calibration hidden states"), None);
        assert_eq!(total(&search), 61_440 + 22_528 + 7680);
        // Two candidates side by side (CPU): two passes' activations and two pruned copies in the
        // search; the pruning pass has one chunk of 4 windows, which runs alone.
        let two = prune_parts(&c, &shapes, &run(Some((2, 3)), 2, false));
        assert_eq!(bytes(&two, "attention and MLP activations"), Some(2 * 22_528));
        assert_eq!(bytes(&two, "one block's weights"), Some(4 * 640 * 4));
        assert_eq!(total(&two), 6144 + 45_056 + 10_240);
        assert_eq!(total(&prune_parts(&c, &shapes, &run(None, 2, false))), total(&parts));
        // 16 windows are two chunks of 8, whose passes run side by side: 2 × 8 × (3·2·16²·4 +
        // (3·16·16 + 4·16·8)·4) bytes of activations; with SparseGPT's Hessians one at a time.
        let chunks = |at_once, hessians| {
            bytes(
                &prune_parts(&c, &shapes, &Run { nsamples: 16, ..run(None, at_once, hessians) }),
                "attention and MLP activations",
            )
        };
        assert_eq!(chunks(1, false), Some(90_112));
        assert_eq!(chunks(2, false), Some(180_224));
        assert_eq!(chunks(3, false), Some(180_224));
        assert_eq!(chunks(2, true), Some(90_112));
        // SparseGPT: a Hessian per linear of a block per candidate running; q, k, v, o and
        // gate, up take 8 inputs, down 16: 6·64 + 256 = 640 values. The pruning pass also keeps
        // every new weight (2 blocks × 640).
        let sparsegpt = prune_parts(&c, &shapes, &run(None, 2, true));
        assert_eq!(bytes(&sparsegpt, "SparseGPT Hessians"), Some(640 * 4));
        assert_eq!(bytes(&sparsegpt, "SparseGPT's new weights"), Some(2 * 640 * 4));
        let search = prune_parts(&c, &shapes, &run(Some((2, 30)), 2, true));
        assert_eq!(bytes(&search, "SparseGPT Hessians"), Some(2 * 640 * 4));
        // In f16 the hidden states, weights and the linears' activations take 2 bytes a value;
        // the attention scores stay f32: 4 × (3·2·16²·4 + (3·16·16 + 4·16·8)·2) = 34,816 bytes
        // of activations, 2048 of hidden states, 3840 of weights.
        let half = prune_parts(&c, &shapes, &Run { dtype_bytes: 2, ..run(None, 1, false) });
        assert_eq!(bytes(&half, "attention and MLP activations"), Some(34_816));
        assert_eq!(total(&half), 2048 + 34_816 + 3840 + 160);
        let half_search = prune_parts(&c, &shapes, &Run { dtype_bytes: 2, ..run(Some((2, 30)), 1, false) });
        assert_eq!(bytes(&half_search, "NeuroAL search hidden states"), Some(30_720));
        // The largest single buffer: 4 windows' f32 attention scores, 4·2·16²·4 = 8192 bytes
        // (MLP 4·16·16·4 = 4096, gate's f32 copy 16·8·4 = 512).
        let one = |seqlen, hessians| Run { seqlen, hessians, dtype_bytes: 2, ..base_run() };
        let big = largest_buffer(&c, &shapes, &one(16, false));
        assert_eq!((big.what, big.bytes, big.lowered_by), ("attention scores", 8192, "--seqlen"));
        // One token per window: down's 16 × 16 Hessian (1024 bytes) when SparseGPT records it,
        // else gate's f32 copy.
        assert_eq!(largest_buffer(&c, &shapes, &one(1, true)).bytes, 1024);
        assert_eq!(largest_buffer(&c, &shapes, &one(1, false)).what, "a linear's f32 copy for pruning");
        // Side by side only as far as memory allows: 8 wanted, room for exactly 3. With 8
        // carried, k at once hold 16,384 + k · 22,528 + (2 + k) · 2560 bytes: 96,768 for k = 3
        // (k = 1 stays under the pruning pass's 56,992).
        let side = |k| run(Some((2, 8)), k, false);
        let need = |k| total(&prune_parts(&c, &shapes, &side(k)));
        assert_eq!((need(1), need(3)), (56_992, 96_768));
        assert_eq!(passes_that_fit(&c, &shapes, &side(8), need(3)), 3);
        assert_eq!(passes_that_fit(&c, &shapes, &side(8), need(3) - 1), 2);
        assert_eq!(passes_that_fit(&c, &shapes, &side(8), need(8)), 8);
        assert_eq!(passes_that_fit(&c, &shapes, &side(8), 0), 1);
        // Dense passes in batches of k: the search holds k candidates' activations, 24,064 +
        // k · 22,528 bytes with 8 carried. With 8 calibration windows the pruning pass holds
        // 8192 + 8 · 11,264 + 7680 + 160 = 106,144: batches of 3 fit under it (91,648), 4 would
        // not (114,176), and then the activations name the flag.
        let batched = |k| Run { nsamples: 8, dense_batch: k, ..run(Some((2, 8)), 1, false) };
        let need = |k| total(&prune_parts(&c, &shapes, &batched(k)));
        assert_eq!((need(1), need(3), need(4)), (106_144, 106_144, 114_176));
        assert_eq!(free_dense_batch(&c, &shapes, &batched(1)), 3);
        let over = prune_parts(&c, &shapes, &batched(4));
        assert_eq!(
            over.iter().max_by_key(|p| p.bytes).map(|p| (p.what, p.lowered_by)),
            Some(("attention and MLP activations", "--search-batch"))
        );
        // The issue's 7B case in f16 (8 blocks, 64 calibration and 8 search windows of 512, 15
        // candidates carried): its search (3.43 GB with 15 candidates' hidden states) is already
        // above the pruning pass (3.16 GB), so no batch comes free; one of 2 would add 1.2 GB.
        let llama7b = Config::from_json(
            r#"{"model_type":"llama","vocab_size":32000,"hidden_size":4096,"intermediate_size":11008,
            "num_hidden_layers":8,"num_attention_heads":32,"max_position_embeddings":4096}"#,
        )
        .unwrap();
        let shapes7b = crate::model::Specs::of(&llama7b).largest().shapes();
        let case = Run { nsamples: 64, seqlen: 512, search: Some((8, 15)), dtype_bytes: 2, ..base_run() };
        assert_eq!(free_dense_batch(&llama7b, &shapes7b, &case), 1);
        let gb = |k| total(&prune_parts(&llama7b, &shapes7b, &Run { dense_batch: k, ..case })) as f64 / 1e9;
        assert!((gb(1) - 3.43).abs() < 0.01 && (gb(2) - gb(1) - 1.21).abs() < 0.01, "{} {}", gb(1), gb(2));
        let pruning = total(&prune_parts(&llama7b, &shapes7b, &Run { search: None, ..case })) as f64 / 1e9;
        assert!((pruning - 3.16).abs() < 0.01, "{pruning}");

        // Measuring (--eval, --zeroshot), by hand on the small config: 5 windows of 16 tokens.
        // Its 2 blocks fit the resident budget: 2 × 640 × 4 bytes of weights, beside the table
        // and head (640). The 5 windows run as one pass (up to 16 do: 16 × 16 × 10 logits are
        // far below 64 Mi), holding 2 × 5 windows' hidden states (5120), one pass's activations
        // 5 × 11,264 = 56,320, and 5 × 16 × 10 logits at 4 bytes with 8 of f32 log-probabilities
        // (9600). With the masks 76,960 in all: above the pruning pass's 56,992, so the peak.
        let measured = |m: Measure| Run { measure: Some(m), ..run(None, 1, false) };
        let ppl = Measure { perplexity: Some((5, 16)), zeroshot: None };
        let parts = prune_parts(&c, &shapes, &measured(ppl));
        assert_eq!(bytes(&parts, "embeddings and head"), Some(640));
        assert_eq!(bytes(&parts, "the measured model's blocks"), Some(5120));
        assert_eq!(bytes(&parts, "measured hidden states"), Some(5120));
        assert_eq!(bytes(&parts, "a measuring pass's activations"), Some(56_320));
        assert_eq!(bytes(&parts, "logits and their log-probabilities"), Some(9600));
        assert_eq!(bytes(&parts, "calibration hidden states"), None);
        assert_eq!(total(&parts), 76_960);
        // 40 zero-shot requests of at most 16 tokens run 32 at a time: 64 held (32,768 bytes),
        // 32 × 11,264 of activations and 32 × 16 × 10 × 12 of logits, above perplexity's pass,
        // which they replace (the two measures run one after the other).
        let both = Measure { perplexity: Some((5, 16)), zeroshot: Some((40, 16)) };
        let parts = prune_parts(&c, &shapes, &measured(both));
        assert_eq!(bytes(&parts, "measured hidden states"), Some(32_768));
        assert_eq!(total(&parts), 640 + 5120 + 32_768 + 360_448 + 61_440 + 160);
        let e = check(&parts, 1000, "this machine").unwrap_err().to_string();
        assert!(
            e.contains("(a measuring pass's activations 352.0 KiB)")
                && e.ends_with("lower the zero-shot requests' length (zeroshot's --seqlen cuts them)"),
            "{e}"
        );
        // The 7B case measured in f16 on 100 windows of 512: its blocks (6.5 GB in f32) are
        // streamed, two at a time (2 × 202,375,168 × 2 bytes); 4 windows a pass (4 × 512 ×
        // 32,000 logits under 64 Mi), a streamed group of 1 GiB / (512 × 4096 × 4) = 128
        // windows, cut to the 100 there are, plus a pass's output: 104 windows' hidden states.
        let case_ppl = Run { measure: Some(Measure { perplexity: Some((100, 512)), zeroshot: None }), ..case };
        let parts = measuring_parts(&llama7b, &shapes7b, 2, 0, &case_ppl.measure.unwrap());
        let (d, v, t) = (4096u128, 32_000u128, 512u128);
        assert_eq!(bytes(&parts, "embeddings and head"), Some(2 * v * d * 2));
        assert_eq!(bytes(&parts, "the measured model's blocks"), Some(2 * 202_375_168 * 2));
        assert_eq!(bytes(&parts, "measured hidden states"), Some(104 * t * d * 2));
        assert_eq!(
            bytes(&parts, "a measuring pass's activations"),
            Some(4 * (3 * 32 * t * t * 4 + (3 * t * 11_008 + 4 * t * d) * 2))
        );
        assert_eq!(bytes(&parts, "logits and their log-probabilities"), Some(4 * t * v * 10));
        // 3.03 GB; with the masks (0.2 GB) still under the search's 3.43 GB, which stays the peak.
        assert!((total(&parts) as f64 / 1e9 - 3.03).abs() < 0.01, "{}", total(&parts));
        assert_eq!(
            total(&prune_parts(&llama7b, &shapes7b, &case_ppl)),
            total(&prune_parts(&llama7b, &shapes7b, &case))
        );
        // The largest buffer: without measuring (at 128 tokens a window) up's f32 copy for
        // pruning (180 MB); measuring, the f16 table (262,144,000 bytes), or as much of f32
        // log-probabilities, 16 windows × 128 × 32,000 × 4 (the later of equals is named).
        let short = |run: Run| largest_buffer(&llama7b, &shapes7b, &Run { seqlen: 128, ..run });
        assert_eq!((short(case).what, short(case).bytes), ("a linear's f32 copy for pruning", 11_008 * 4096 * 4));
        let short_ppl = Run { measure: Some(Measure { perplexity: Some((100, 128)), zeroshot: None }), ..case };
        assert_eq!(
            (short(short_ppl).what, short(short_ppl).bytes),
            ("a measuring pass's log-probabilities", 262_144_000)
        );
        let with_table = Run { measure: Some(Measure { perplexity: Some((2, 128)), zeroshot: None }), ..case };
        assert_eq!((short(with_table).what, short(with_table).bytes), ("embedding table", 262_144_000));
        // Without room to spare (the search is the peak), or without a search, one at a time.
        assert_eq!(free_dense_batch(&c, &shapes, &run(Some((2, 30)), 1, false)), 1);
        assert_eq!(free_dense_batch(&c, &shapes, &run(None, 1, false)), 1);
    }

    #[test]
    fn measuring_is_checked_before_the_model_loads() {
        let config = |vocab: u64| {
            Config::from_json(&format!(
                r#"{{"model_type":"llama","vocab_size":{vocab},"hidden_size":8,"intermediate_size":16,
                "num_hidden_layers":2,"num_attention_heads":2,"max_position_embeddings":32}}"#
            ))
            .unwrap()
        };
        let cpu = crate::gpu::device::select(crate::gpu::device::Choice::Cpu).unwrap();
        let m = Measure { perplexity: Some((1, 2)), zeroshot: None };
        check_measuring(&config(10), &m, &cpu, burn::tensor::DType::F32).unwrap();
        // 2^50 tokens of vocabulary: the table and head alone are 2 × 2^50 × 8 × 4 bytes (64
        // PiB), more than any machine has, and named in one line.
        if available_host().is_some() {
            let e = check_measuring(&config(1 << 50), &m, &cpu, burn::tensor::DType::F32).unwrap_err().to_string();
            assert!(
                e.starts_with("this run needs about ")
                    && e.contains("(embeddings and head 64.0 PiB)")
                    && !e.contains('\n'),
                "{e}"
            );
            assert!(e.ends_with("; that part is the model's own size, which no flag lowers"), "{e}");
        }
        // An adapter's buffer limit: the advice names what lowers the part, and a table
        // already in f16 has nothing left to lower.
        let scores = Part { what: "a measuring pass's attention scores", bytes: 2 << 20, lowered_by: "--seqlen" };
        check_buffer(&scores, 2 << 20).unwrap();
        let e = check_buffer(&scores, 1 << 20).unwrap_err().to_string();
        assert_eq!(
            e,
            "this run needs a 2.0 MiB buffer (a measuring pass's attention scores), more than the adapter's limit of 1.0 MiB; lower --seqlen"
        );
        let table = |dtype_bytes| table_buffer(&config(1 << 20), dtype_bytes);
        assert!(
            check_buffer(&table(4), 1 << 20)
                .unwrap_err()
                .to_string()
                .ends_with("(embedding table), more than the adapter's limit of 1.0 MiB; use --dtype f16")
        );
        assert!(check_buffer(&table(2), 1 << 20).unwrap_err().to_string().ends_with("; use --device cpu"));
    }
}
