//! `neuroal prune`: validate everything, calibrate, run the block pipeline, write the checkpoint
//! and its report, optionally evaluate before and after.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::json;

use crate::calib::{draw_windows, gather_windows};
use crate::device::{self, Choice};
use crate::error::{check_input_file, Result};
use crate::eval::perplexity;
use crate::progress::progress_bar;
use crate::mask::{Pattern, Sparsity};
use crate::report::{self, Report, Summary, TopUpReport};
use crate::memory;
use crate::model::{check_model_dir, Ends, Model, Spec};
use crate::pipeline::prune_resumable;
use crate::provenance;
use crate::resume::{Progress, State};
use crate::pruner::Pruner;
use crate::score::Method;
use crate::staging::{check_plots, fault, write_lock, Destination, PlotsTarget, Staging};
use crate::tokenizer::{tokenize_checked, Tokenizer};
use crate::topup::{
    block_grid, block_map, evaluate, neuroal_block_sparsities, owl_block_sparsities, owl_outlier_ratios, row_grid,
    row_map, uniform_map, winner, Evaluation, Map, SearchPlan,
};
use crate::writer::write_checkpoint;
use crate::{bail, err};

pub struct PruneArgs {
    pub model: PathBuf,
    pub calib: PathBuf,
    pub out: PathBuf,
    pub method: Method,
    /// SparseGPT: columns per block, and the dampening as a fraction of mean(diag H).
    pub blocksize: usize,
    pub percdamp: f64,
    pub sparsity: Option<f64>,
    pub pattern: Pattern,
    pub nsamples: usize,
    pub seqlen: Option<usize>,
    pub seed: u64,
    pub force: bool,
    pub eval: Option<PathBuf>,
    /// Comma-separated JSONL task files for zero-shot accuracy before and after.
    pub zeroshot: Option<String>,
    pub top_up: TopUpKind,
    pub owl_m: f64,
    pub owl_lambda: f64,
    pub neuroal_step: NeuroalStep,
    pub search_nsamples: usize,
    /// Candidates evaluated per pass over the blocks (0: all of a step at once).
    pub search_chunk: usize,
    /// Candidates whose dense passes share one batch (0: as many as fit without raising the
    /// run's estimated peak memory).
    pub search_batch: usize,
    pub plots: Option<PathBuf>,
    pub device: Choice,
    pub dtype: crate::device::ComputeDtype,
    /// Continue an interrupted run of the same command from its saved progress.
    pub resume: bool,
}

/// How the target sparsity is spread over blocks and rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TopUpKind {
    Uniform,
    Owl,
    Neuroal,
}

impl TopUpKind {
    pub fn name(self) -> &'static str {
        match self {
            TopUpKind::Uniform => "uniform",
            TopUpKind::Owl => "owl",
            TopUpKind::Neuroal => "neuroal",
        }
    }
}

/// Which NeuroAL search steps run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum NeuroalStep {
    Block,
    Row,
    Both,
}

impl NeuroalStep {
    pub fn name(self) -> &'static str {
        match self {
            NeuroalStep::Block => "block",
            NeuroalStep::Row => "row",
            NeuroalStep::Both => "both",
        }
    }
}

/// The sparsity map a top-up chose, with what the report says about the choice.
struct TopUp {
    map: Map,
    pattern: Pattern,
    block_sparsities: Vec<f64>,
    /// NeuroAL's own calibration windows (start offsets).
    search_windows: Option<Vec<usize>>,
    report: TopUpReport,
}

#[allow(clippy::too_many_arguments)]
fn choose_map(
    kind: TopUpKind,
    args: &PruneArgs,
    model: &Model,
    ids: &[u32],
    windows: &[u32],
    seqlen: usize,
    pruner: &dyn Pruner,
    step: NeuroalStep,
    pattern: &Pattern,
    s: f64,
    progress: &Progress,
    plan: SearchPlan,
) -> Result<TopUp> {
    let blocks = model.num_blocks();
    match kind {
        TopUpKind::Uniform => Ok(TopUp {
            map: uniform_map(blocks, model.linears().len(), s),
            pattern: pattern.clone(),
            block_sparsities: vec![s; blocks],
            search_windows: None,
            report: TopUpReport { name: "uniform".into(), block_sparsities: vec![s; blocks], ..Default::default() },
        }),
        TopUpKind::Owl => {
            let ratios = match progress.floats("owl-ratios")? {
                Some(r) => r,
                None => {
                    let r = owl_outlier_ratios(model, windows, seqlen, args.owl_m)?;
                    progress.save_floats("owl-ratios", &r)?;
                    fault("after-owl");
                    r
                }
            };
            let sparsities = owl_block_sparsities(&ratios, args.owl_lambda, s);
            Ok(TopUp {
                map: block_map(&sparsities, model.linears().len()),
                pattern: Pattern::Row,
                report: TopUpReport {
                    name: "owl".into(),
                    owl_m: Some(args.owl_m),
                    owl_lambda: Some(args.owl_lambda),
                    outlier_ratios: Some(ratios),
                    block_sparsities: sparsities.clone(),
                    ..Default::default()
                },
                block_sparsities: sparsities,
                search_windows: None,
            })
        }
        TopUpKind::Neuroal => neuroal(args, model, ids, seqlen, pruner, step, s, progress, plan),
    }
}

#[allow(clippy::too_many_arguments)]
fn neuroal(args: &PruneArgs, model: &Model, ids: &[u32], seqlen: usize, pruner: &dyn Pruner, step: NeuroalStep, s: f64, saved: &Progress, plan: SearchPlan) -> Result<TopUp> {
    let (do_block, do_row) = match step {
        NeuroalStep::Block => (true, false),
        NeuroalStep::Row => (false, true),
        NeuroalStep::Both => (true, true),
    };
    let starts = draw_windows(ids.len(), seqlen, args.search_nsamples, args.seed)?;
    let search = gather_windows(ids, &starts, seqlen);
    let blocks = model.num_blocks();
    let linears = model.linears().len();
    // One bar for the whole search, in candidate-blocks passed (each step's candidates times the
    // blocks), so that its ETA is the search's, not the current step's.
    let block_candidates = if do_block { block_grid(s).len() } else { 1 };
    let row_candidates = if do_row { row_grid().len() } else { 0 };
    let bar = progress_bar((block_candidates + row_candidates) * blocks, "NeuroAL");
    // Candidates are scored a group at a time; each finished group is saved, so an interrupted
    // search continues with the next group.
    let run = |step: &str, candidates: &[Map], pattern: &Pattern| -> Result<Vec<Evaluation>> {
        let chunk = if args.search_chunk == 0 { candidates.len() } else { args.search_chunk };
        let mut evals = Vec::with_capacity(candidates.len());
        for (gi, group) in candidates.chunks(chunk.max(1)).enumerate() {
            let key = format!("{step}-{gi}");
            let done = evals.len();
            let passed = bar.position();
            if let Some(e) = saved.evaluations(&key)? {
                if e.len() != group.len() {
                    bail!("--resume: the saved NeuroAL scores of the {step} step do not fit this run; rerun without --resume");
                }
                bar.inc((group.len() * blocks) as u64);
                evals.extend(e);
                continue;
            }
            // Called as block b starts: the group's candidates have passed b blocks.
            let progress = |_: usize, b: usize| {
                bar.set_message(format!("{step} step: candidates {}-{} of {}, block {}/{blocks}", done + 1, done + group.len(), candidates.len(), b + 1));
                bar.set_position(passed + (group.len() * b) as u64);
            };
            let e = evaluate(model, &search, seqlen, pruner, pattern, group, group.len(), plan, &progress)?;
            bar.set_position(passed + (group.len() * blocks) as u64);
            saved.save_evaluations(&key, &e)?;
            fault(&format!("after-search-{key}"));
            evals.extend(e);
        }
        Ok(evals)
    };

    let mut report = TopUpReport {
        name: "neuroal".into(),
        step: Some(if step == args.neuroal_step {
            step.name().into()
        } else {
            format!("{} (--neuroal-step {}: the row step is not offered with {})", step.name(), args.neuroal_step.name(), pruner.name())
        }),
        search_nsamples: Some(args.search_nsamples),
        ..Default::default()
    };
    let (block_sparsities, d) = if do_block {
        let grid = block_grid(s);
        let candidates: Vec<Map> = grid.iter().map(|&l| block_map(&neuroal_block_sparsities(blocks, l, s), linears)).collect();
        let evals = run("block", &candidates, &Pattern::Row)?;
        let w = winner(&evals);
        report.lambda_block = Some(grid[w]);
        report.block_scores = grid.iter().zip(&evals).map(|(l, e)| [*l, e.score]).collect();
        (neuroal_block_sparsities(blocks, grid[w], s), evals[w].d.clone())
    } else {
        let uniform = neuroal_block_sparsities(blocks, 0.0, s);
        let evals = run("uniform", &[block_map(&uniform, linears)], &Pattern::Row)?;
        (uniform, evals[0].d.clone())
    };
    report.block_sparsities = block_sparsities.clone();
    let search_windows = Some(starts);
    let result = if do_row {
        let grid = row_grid();
        let gqa = model.config.num_kv_heads < model.config.num_heads;
        let candidates: Vec<Map> = grid.iter().map(|&l| row_map(&model.spec, gqa, &block_sparsities, &d, l)).collect::<Result<_>>()?;
        let evals = run("row", &candidates, &Pattern::RowsVariable)?;
        let w = winner(&evals);
        report.lambda_row = Some(grid[w]);
        report.row_scores = grid.iter().zip(&evals).map(|(l, e)| [*l, e.score]).collect();
        TopUp { map: candidates[w].clone(), pattern: Pattern::RowsVariable, block_sparsities, search_windows, report }
    } else {
        TopUp { map: block_map(&block_sparsities, linears), pattern: Pattern::Row, block_sparsities, search_windows, report }
    };
    bar.finish_and_clear();
    Ok(result)
}

/// Checks every flag and input, then runs the whole job and returns the report (also written
/// as `report.json` in the output). Nothing slow starts before everything checkable is checked:
/// flags, files, the destination (its temporary folder is created first), the token ids, the
/// evaluation text and the memory the run needs.
pub fn run(args: &PruneArgs) -> Result<Report> {
    let start = Instant::now();
    let (method, pattern, kind) = (args.method, args.pattern.clone(), args.top_up);
    if args.blocksize == 0 {
        bail!("--blocksize must be at least 1");
    }
    if !(args.percdamp.is_finite() && args.percdamp >= 0.0) {
        bail!("--percdamp {} must be a number ≥ 0", args.percdamp);
    }
    let pruner = method.pruner(args.blocksize, args.percdamp);
    let pruner = pruner.as_ref();
    pruner.check(&pattern, false)?;
    // NeuroAL's row step gives per-row sparsities, which SparseGPT does not take (the authors
    // run only the block step over it): `both` means the block step, `row` is refused.
    let step = match (pruner.changes_kept_weights(), args.neuroal_step) {
        (true, NeuroalStep::Row) if kind == TopUpKind::Neuroal => {
            bail!("--neuroal-step row is not offered with --method {}; use --neuroal-step block", pruner.name())
        }
        (true, NeuroalStep::Both) => NeuroalStep::Block,
        (_, s) => s,
    };
    if pattern == Pattern::RowsVariable {
        bail!("--pattern rows-variable needs per-row sparsities, which only a top-up provides");
    }
    if kind != TopUpKind::Uniform && pattern != Pattern::Row {
        bail!("--top-up {} chooses its own sparsities and needs --pattern row", kind.name());
    }
    let sparsity = match (&pattern, args.sparsity) {
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
    if args.nsamples == 0 {
        bail!("--nsamples must be at least 1");
    }
    if !(args.owl_m.is_finite() && args.owl_m > 0.0) {
        bail!("--owl-m {} must be a positive number", args.owl_m);
    }
    if !(args.owl_lambda.is_finite() && (0.0..1.0).contains(&args.owl_lambda)) {
        bail!("--owl-lambda {} must be a number in [0, 1)", args.owl_lambda);
    }
    if kind == TopUpKind::Neuroal && args.search_nsamples == 0 {
        bail!("--search-nsamples must be at least 1");
    }
    check_input_file(&args.calib, "calibration file")?;
    if let Some(e) = &args.eval {
        check_input_file(e, "evaluation file")?;
    }

    // The model, read without a device: config, weights' names and shapes, tokenizer.
    let (config, checkpoint) = check_model_dir(&args.model)?;
    let spec = Spec::of(&config);
    // Before any work, as the masks would refuse it at that linear (SparseGPT's reference would
    // prune a partial last group whole).
    if let Pattern::NM { n, m } = pattern {
        for (i, l) in spec.linears.iter().enumerate() {
            crate::mask::check_group_width(n, m, l.shape[1]).map_err(|e| crate::err!("{}: {e}", spec.weight_name(0, i)))?;
        }
    }
    if kind == TopUpKind::Neuroal && step != NeuroalStep::Block && spec.routes.is_none() {
        bail!("{}: the {} family declares no row routing, so NeuroAL's row step cannot run; use --neuroal-step block", args.model.display(), config.model_type);
    }
    let dest = Destination::check(&args.model, &args.out, args.force, args.resume)?;
    // The checkpoint's hashes (for the report and --resume) are made while the text is
    // tokenized, the rest is checked and (unless --resume must check them first) the run works:
    // hashing a 7B checkpoint's largest shard takes seconds. A check that fails below leaves the
    // thread to end with the process.
    let hashing = {
        let dir = args.model.clone();
        let shards: Vec<String> = checkpoint.shards.iter().map(|s| s.file_name.clone()).collect();
        std::thread::spawn(move || provenance::model_hashes(&dir, &shards))
    };
    let plots = match &args.plots {
        Some(p) => Some(check_plots(&args.model, &dest, p)?),
        None => None,
    };
    let seqlen = args.seqlen.unwrap_or_else(|| crate::eval::default_seqlen(&config));
    config.check_seqlen(seqlen)?;
    let tokenizer = Tokenizer::open(&args.model)?;
    let ids = tokenize_checked(&tokenizer, &args.model, &args.calib, config.vocab_size)?;
    if ids.len() < seqlen + 1 {
        bail!("calibration text has {} tokens, too few for one window of {seqlen} (needs {})", ids.len(), seqlen + 1);
    }
    let eval_ids = match &args.eval {
        Some(text) => {
            let e = tokenize_checked(&tokenizer, &args.model, text, config.vocab_size)?;
            if seqlen < 2 || e.len() < seqlen {
                bail!("{}: the evaluation text has {} tokens, fewer than one window of {seqlen}", text.display(), e.len());
            }
            Some(e)
        }
        None => None,
    };
    let zeroshot = match &args.zeroshot {
        Some(list) => {
            let paths = crate::zeroshot::task_paths(list)?;
            let examples = crate::zeroshot::read_tasks(&paths, None)?;
            Some((paths, examples))
        }
        None => None,
    };
    // Every zero-shot request is encoded here, once, so one that cannot be fails before any
    // work; what --eval and --zeroshot will measure goes into the memory estimate.
    let zeroshot_len = crate::eval::default_seqlen(&config);
    let requests = zeroshot.as_ref().map(|(_, examples)| crate::zeroshot::Requests::encode(&tokenizer, examples, zeroshot_len)).transpose()?;
    let measure = (eval_ids.is_some() || requests.is_some()).then(|| memory::Measure {
        perplexity: eval_ids.as_ref().map(|e| (e.len() / seqlen, seqlen)),
        zeroshot: requests.as_ref().map(|r| r.sizes()),
    });
    // OWL's outlier ratios take a dense pass over the calibration windows whatever the pruner.
    let windows_run = pruner.needs_calibration() || kind == TopUpKind::Owl;
    let mut estimate = memory::Run { measure, ..memory_run(args, kind, step, sparsity, seqlen, pruner.needs_hessian(), args.device != Choice::Gpu, &spec.shapes(), windows_run) };
    if args.device != Choice::Gpu && let Some(avail) = memory::available_host() {
        estimate.passes_at_once = memory::passes_that_fit(&config, &spec.shapes(), &estimate, avail);
        memory::check(&memory::prune_parts(&config, &spec.shapes(), &estimate), avail, "this machine")?;
    }

    // Provenance and the progress of an interrupted run. The run starts while the inputs are
    // still being hashed, unless --resume must check them first (see `resume::State`).
    let settings = json!({
        "method": method.name(), "pattern": pattern.name(), "sparsity": sparsity, "nsamples": args.nsamples,
        "seqlen": seqlen, "seed": args.seed, "top_up": kind.name(), "owl_m": args.owl_m, "owl_lambda": args.owl_lambda,
        "neuroal_step": args.neuroal_step.name(), "blocksize": args.blocksize, "percdamp": args.percdamp, "search_nsamples": args.search_nsamples, "search_chunk": args.search_chunk,
        "device": format!("{:?}", args.device).to_lowercase(), "dtype": args.dtype.name(),
    });
    let texts: Vec<(String, PathBuf)> = std::iter::once(("calibration text".to_string(), args.calib.clone()))
        .chain(args.eval.iter().map(|e| ("evaluation text".to_string(), e.clone())))
        .chain(zeroshot.iter().flat_map(|(paths, _)| paths.iter().map(|p| (format!("task file {}", p.display()), p.clone()))))
        .collect();
    let make_state = move || -> Result<serde_json::Value> {
        let mut inputs = hashing.join().map_err(|_| crate::err!("hashing the model's files failed"))??;
        for (what, path) in &texts {
            inputs.insert(what.clone(), provenance::sha256_file(path)?);
        }
        Ok(json!({ "version": provenance::VERSION, "settings": settings, "inputs": inputs }))
    };
    let (state, (staging, adopted)) = if dest.resumes() {
        let state = make_state()?;
        let created = Staging::create(&dest, &|dir| Progress::verify(dir, &state))?;
        (State::Ready(state), created)
    } else {
        (State::Pending(Box::new(make_state)), Staging::create(&dest, &|_| Ok(()))?)
    };
    if args.resume {
        match &adopted {
            Some(p) => eprintln!("resuming the interrupted run saved in {}", p.display()),
            None => eprintln!("--resume: no interrupted run of {} to continue; starting from the beginning", args.out.display()),
        }
    }
    let saved = Progress::open(&staging.dir, state, adopted.is_some())?;

    let device = device::select(args.device)?;
    let gpu_peak = device.is_gpu.then(|| memory::GpuPeak::start(&device.device));
    let dtype = device.compute_dtype(args.dtype)?;
    estimate.dtype_bytes = dtype.size() as u128;
    estimate.stacked_params = crate::fused::stacked_params(&spec.fused_groups(), dtype, device.is_gpu);
    estimate.dense_batch = dense_batch(args, device.is_gpu, &config, &spec.shapes(), &estimate);
    let parts = memory::prune_parts(&config, &spec.shapes(), &estimate);
    let estimated_peak_mib = memory::total_mib(&parts);
    eprintln!("device {}", device.description);
    if let Some(cap) = device.is_gpu.then(|| crate::kernels::capacity(&device.device)).flatten()
        && let Some(warning) = memory::gpu_check(&parts, cap as u128)?
    {
        eprintln!("{warning}");
    }
    if let Some(limit) = device.max_buffer {
        memory::check_buffer(&memory::largest_buffer(&config, &spec.shapes(), &estimate), limit)?;
    }
    // Pruning computes no logits: no head, and the embedding table left in the memory map.
    let model = Model::load(config, checkpoint, &device.device, dtype, Ends::Hidden)?;
    let starts = draw_windows(ids.len(), seqlen, args.nsamples, args.seed)?;
    let windows = gather_windows(&ids, &starts, seqlen);

    let t_topup = Instant::now();
    let plan = SearchPlan { at_once: estimate.passes_at_once, dense_batch: estimate.dense_batch };
    let topup = choose_map(kind, args, &model, &ids, &windows, seqlen, pruner, step, &pattern, sparsity, &saved, plan)?;
    let topup_s = t_topup.elapsed().as_secs_f64();

    let t_prune = Instant::now();
    let map = &topup.map;
    let mut done = Vec::new();
    while let Some(m) = saved.block_masks(done.len())? {
        done.push(m);
    }
    let mut finished = |b: usize, masks: &[crate::mask::LayerMask]| -> Result<()> {
        saved.save_block_masks(b, masks)?;
        fault(&format!("after-block-{b}"));
        Ok(())
    };
    let mut masks = prune_resumable(&model, &windows, seqlen, pruner, &topup.pattern, &|b, l| map[b][l].clone(), estimate.passes_at_once, done, &mut finished)?;
    crate::trace::report("prune");
    let prune_s = t_prune.elapsed().as_secs_f64();
    let mut topup_report = topup.report;
    topup_report.row_sparsity = map
        .iter()
        .enumerate()
        .flat_map(|(b, layers)| layers.iter().enumerate().map(move |(l, sp)| (b, l, sp)))
        .filter_map(|(b, l, sp)| match sp {
            Sparsity::PerRow(v) => Some((model.linear_name(b, l), Summary::of(v))),
            Sparsity::Uniform(_) => None,
        })
        .collect();

    write_checkpoint(&model.checkpoint, &masks, &staging.dir)?;

    // SparseGPT's new weights are in the checkpoint now; the report needs only the masks.
    for m in &mut masks {
        m.values = None;
    }

    // --eval and --zeroshot measure the dense model, opened again with the head and table that
    // the pruning did not hold, then what was written, read back: one model at a time.
    let measure_model = |dir: &Path| -> Result<(Option<crate::eval::Perplexity>, Option<crate::zeroshot::ZeroShot>)> {
        let m = Model::open_as(dir, &device.device, dtype)?;
        let ppl = eval_ids.as_ref().map(|ids| perplexity(&m, ids, seqlen, None, &device.description)).transpose()?;
        let zs = requests.as_ref().map(|r| crate::zeroshot::evaluate(&m, r, &device.description)).transpose()?;
        Ok((ppl, zs))
    };
    let ((ppl_dense, zs_dense), (ppl_pruned, zs_pruned)) =
        if estimate.measure.is_some() { (measure_model(&args.model)?, measure_model(&staging.dir)?) } else { ((None, None), (None, None)) };
    let eval = match (&args.eval, ppl_dense, ppl_pruned) {
        (Some(text), Some(dense), Some(pruned)) => report::EvalReport {
            file: Some(text.clone()),
            seqlen: Some(seqlen),
            windows: Some(dense.windows),
            ppl_dense: Some(dense.ppl),
            ppl_pruned: Some(pruned.ppl),
        },
        _ => report::EvalReport::default(),
    };
    let zeroshot_report = match (&zeroshot, zs_dense, zs_pruned) {
        (Some((paths, _)), Some(dense), Some(pruned)) => {
            Some(report::ZeroShotReport { files: paths.clone(), max_len: zeroshot_len, dense: dense.tasks, pruned: pruned.tasks })
        }
        _ => None,
    };

    let layers: BTreeMap<String, f64> = masks.iter().map(|m| (m.name.clone(), m.fraction())).collect();
    let total: usize = masks.iter().map(|m| m.pruned.len()).sum();
    let zeros: usize = masks.iter().map(|m| m.pruned.count_ones()).sum();
    let blocks: Vec<f64> = masks
        .chunks(model.linears().len())
        .map(|c| {
            let n: usize = c.iter().map(|m| m.pruned.len()).sum();
            c.iter().map(|m| m.pruned.count_ones()).sum::<usize>() as f64 / n as f64
        })
        .collect();
    let mut report = Report {
        settings: report::Settings {
            model: args.model.clone(),
            out: args.out.clone(),
            model_type: model.config.model_type.into(),
            method: method.name().into(),
            pattern: pattern.name(),
            sparsity,
            top_up: kind.name().into(),
            final_pattern: topup.pattern.name(),
        },
        device: device.description.clone(),
        dtype: report::Dtype { compute: crate::device::dtype_name(dtype).into(), checkpoint: model.config.dtype.clone() },
        calibration: report::Calibration {
            file: args.calib.clone(),
            seed: args.seed,
            seqlen,
            nsamples: args.nsamples,
            tokens: ids.len(),
            generator: "splitmix64, start = (next_u64 * (n - seqlen)) >> 64".into(),
            windows: starts,
            search_windows: topup.search_windows.clone(),
        },
        topup: topup_report,
        sparsity: report::SparsityReport { overall: zeros as f64 / total.max(1) as f64, blocks: blocks.clone(), layers },
        eval,
        zeroshot: zeroshot_report,
        timings: report::Timings { topup_s, prune_s, total_s: start.elapsed().as_secs_f64() },
        memory: report::MemoryUse {
            peak_host_mib: memory::peak_rss_mib(),
            peak_gpu_mib: gpu_peak.map(memory::GpuPeak::finish).transpose()?,
            estimated_peak_mib,
            search_dense_batch: (kind == TopUpKind::Neuroal).then_some(estimate.dense_batch),
        },
        provenance: report::Provenance {
            tool: "neuroal".into(),
            version: provenance::VERSION.into(),
            git_revision: provenance::GIT_REVISION.into(),
            command_line: provenance::command_line(),
            device: device.description.clone(),
            resumed_from: adopted,
            sha256: serde_json::from_value(saved.state()?["inputs"].clone()).map_err(|e| crate::err!("cannot read the input hashes back: {e}"))?,
        },
        plots: None,
    };
    if let Some(target) = &plots {
        let mut series = vec![("uniform".to_string(), vec![sparsity; model.num_blocks()])];
        if pattern == Pattern::Row {
            let owl = match kind {
                TopUpKind::Owl => topup.block_sparsities.clone(),
                _ => owl_block_sparsities(&owl_outlier_ratios(&model, &windows, seqlen, args.owl_m)?, args.owl_lambda, sparsity),
            };
            series.push(("OWL".to_string(), owl));
        }
        series.push((format!("{} (as pruned)", kind.name()), blocks.clone()));
        let (write_to, listed) = match target {
            PlotsTarget::Outside(dir) => (dir.clone(), dir.clone()),
            PlotsTarget::InsideOutput(rel) => (staging.dir.join(rel), dest.path().join(rel)),
        };
        let files = {
            let _guard = write_lock();
            let names: Vec<&str> = model.linears().iter().map(|l| l.name).collect();
            crate::plots::write_all(&write_to, &report.topup, &series, &topup.map, &names)?
        };
        report.plots = Some(report::Plots { dir: listed, files });
    }
    let text = serde_json::to_string_pretty(&report).map_err(|e| err!("cannot encode report.json: {e}"))?;
    {
        let _guard = write_lock();
        std::fs::write(staging.dir.join("report.json"), text).map_err(|e| err!("cannot write report.json: {}", crate::error::io_words(&e)))?;
    }
    staging.commit()?;
    Ok(report)
}

/// The sizes the memory estimate needs of a run. On the CPU backends (`on_cpu`) NeuroAL's
/// candidates, and the calibration chunks, run side by side, one per core, where a block is
/// small ([`memory::cpu_passes_at_once`] of its linears' `shapes`); on a GPU one at a
/// time. `windows_run`: whether the calibration windows go through the model outside
/// NeuroAL's search (not for magnitude's pruning pass, unless OWL's ratios need them).
#[allow(clippy::too_many_arguments)]
fn memory_run(args: &PruneArgs, kind: TopUpKind, step: NeuroalStep, sparsity: f64, seqlen: usize, hessians: bool, on_cpu: bool, shapes: &[[usize; 2]], windows_run: bool) -> memory::Run {
    let search_grid = if step == NeuroalStep::Row { row_grid().len() } else { block_grid(sparsity).len().max(row_grid().len()) };
    let carried = if args.search_chunk == 0 { search_grid } else { args.search_chunk.min(search_grid) };
    memory::Run {
        nsamples: if windows_run { args.nsamples } else { 0 },
        seqlen,
        chunk: crate::pipeline::CHUNK,
        hessians,
        search: (kind == TopUpKind::Neuroal).then_some((args.search_nsamples, carried)),
        passes_at_once: if on_cpu { memory::cpu_passes_at_once(shapes).min(carried) } else { 1 },
        // Auto (0) is settled by [`dense_batch`] once the run's other sizes are known.
        dense_batch: args.search_batch.clamp(1, carried.max(1)),
        // What a CPU backend computes in (auto: f32); a GPU run sets its own once it knows.
        dtype_bytes: match args.dtype {
            crate::device::ComputeDtype::F16 | crate::device::ComputeDtype::Bf16 => 2,
            _ => 4,
        },
        // The CPU backends stack nothing; a GPU run sets its own once it knows.
        stacked_params: 0,
        // Set by the caller, which has read what is measured.
        measure: None,
    }
}

/// Candidates per dense batch: as asked (`memory_run` clamped it to those carried at once), or
/// by default on a GPU as many as fit without raising the run's estimated peak. On the CPU
/// backends one by default: their candidates already run side by side, one per core, which the
/// batches would serialize (wt2-llama at 70% on 2 cores: search 3.7 s alone, 4.2 s in batches
/// of 2; the same masks).
fn dense_batch(args: &PruneArgs, gpu: bool, config: &crate::config::Config, shapes: &[[usize; 2]], run: &memory::Run) -> usize {
    if args.search_batch == 0 && gpu { memory::free_dense_batch(config, shapes, run) } else { run.dense_batch }
}

/// What `bench`'s timed NeuroAL prune reports.
pub struct BenchPrune {
    pub search_s: f64,
    pub prune_s: f64,
    /// Writing the pruned checkpoint.
    pub write_s: f64,
    pub lambda_block: Option<f64>,
    pub lambda_row: Option<f64>,
    /// The run's up-front memory estimate, in MiB.
    pub estimate_mib: f64,
    /// Candidates whose dense passes shared a batch.
    pub dense_batch: usize,
}

/// NeuroAL (block and row steps) over Wanda on token ids, timed, then the pruned checkpoint's
/// writing: what `bench --prune-sparsity` measures. `scratch` receives the search's progress
/// files and the checkpoint.
pub fn bench_neuroal(
    model: &Model,
    ids: &[u32],
    seqlen: usize,
    p: &crate::bench::PruneBench,
    scratch: &std::path::Path,
) -> Result<BenchPrune> {
    let (sparsity, nsamples, search_nsamples) = (p.sparsity, p.nsamples, p.search_nsamples);
    let args = PruneArgs {
        model: PathBuf::new(),
        calib: PathBuf::new(),
        out: PathBuf::new(),
        method: Method::Wanda,
        blocksize: 128,
        percdamp: 0.01,
        sparsity: Some(sparsity),
        pattern: Pattern::Row,
        nsamples,
        seqlen: Some(seqlen),
        seed: 0,
        force: false,
        eval: None,
        zeroshot: None,
        top_up: TopUpKind::Neuroal,
        owl_m: 5.0,
        owl_lambda: 0.08,
        neuroal_step: NeuroalStep::Both,
        search_nsamples,
        search_chunk: 0,
        search_batch: p.search_batch,
        plots: None,
        device: Choice::Cpu,
        dtype: crate::device::ComputeDtype::F32,
        resume: false,
    };
    let saved = Progress::open(scratch, State::Ready(json!({ "bench": true })), false)?;
    crate::staging::fault("bench-prune-started");
    let starts = draw_windows(ids.len(), seqlen, nsamples, 0)?;
    let windows = gather_windows(ids, &starts, seqlen);
    let pruner = crate::pruner::Wanda;
    let mut estimate = memory::Run {
        dtype_bytes: model.dtype.size() as u128,
        stacked_params: crate::fused::stacked_params(&model.spec.fused_groups(), model.dtype, !crate::model::on_cpu(&model.device)),
        ..memory_run(&args, TopUpKind::Neuroal, NeuroalStep::Both, sparsity, seqlen, false, crate::model::on_cpu(&model.device), &model.linear_shapes(), true)
    };
    estimate.dense_batch = dense_batch(&args, !crate::model::on_cpu(&model.device), &model.config, &model.linear_shapes(), &estimate);
    let plan = SearchPlan { at_once: estimate.passes_at_once, dense_batch: estimate.dense_batch };
    let t = Instant::now();
    let topup = choose_map(TopUpKind::Neuroal, &args, model, ids, &windows, seqlen, &pruner, NeuroalStep::Both, &Pattern::Row, sparsity, &saved, plan)?;
    let search_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let map = &topup.map;
    let masks = prune_resumable(model, &windows, seqlen, &pruner, &topup.pattern, &|b, l| map[b][l].clone(), plan.at_once, Vec::new(), &mut |_, _| Ok(()))?;
    let prune_s = t.elapsed().as_secs_f64();
    crate::trace::report("bench prune");
    // What a user waits for after the prune: the pruned checkpoint written (into `scratch`).
    let t = Instant::now();
    let written = scratch.join("checkpoint");
    std::fs::create_dir_all(&written).map_err(|e| crate::err!("cannot create {}: {}", written.display(), crate::error::io_words(&e)))?;
    write_checkpoint(&model.checkpoint, &masks, &written)?;
    let write_s = t.elapsed().as_secs_f64();
    Ok(BenchPrune {
        dense_batch: estimate.dense_batch,
        search_s,
        prune_s,
        write_s,
        lambda_block: topup.report.lambda_block,
        lambda_row: topup.report.lambda_row,
        estimate_mib: memory::total_mib(&memory::prune_parts(&model.config, &model.linear_shapes(), &estimate)),
    })
}
