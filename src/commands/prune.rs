//! `neuroal prune`: check everything, calibrate, run the top-up and the block pipeline, write
//! the checkpoint and its report, and optionally evaluate before and after. Nothing slow starts
//! before everything checkable is checked: settings, files, the destination (its temporary
//! folder is created first), the token ids, the evaluation text and the memory the run needs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::Instant;

use serde_json::json;

use crate::commands::report::{self, Report, Summary, TopUpReport};
use crate::gpu::device::{self, Choice, Selected};
use crate::io::checkpoint::Checkpoint;
use crate::io::error::{Result, check_input_file};
use crate::io::faults::fault;
use crate::io::named::Named;
use crate::io::provenance;
use crate::io::staging::{Destination, PlotsTarget, Staging, check_plots, write_lock};
use crate::io::tokenizer::{Tokenizer, tokenize_checked_hashed};
use crate::measure::memory;
use crate::measure::perplexity::{Perplexity, default_seqlen, perplexity};
use crate::measure::trace::Trace;
use crate::measure::zeroshot::{Example, Requests, ZeroShot};
use crate::model::config::Config;
use crate::model::{Ends, Model, Specs, check_model_dir};
use crate::prune::calib::{draw_windows, gather_windows};
use crate::prune::mask::{LayerMask, Pattern, Sparsity};
use crate::prune::neuroal::SearchPlan;
use crate::prune::owl::{owl_block_sparsities, owl_outlier_ratios};
use crate::prune::pipeline::{Pipeline, prune_resumable};
use crate::prune::plan::{Work, dense_batch, memory_run};
use crate::prune::resume::{Progress, State};
use crate::prune::settings::{Checked, MoeCalibrate, NeuroalStep, PruneSettings, TopUpKind};
use crate::prune::topup::{Calibrated, TopUp, choose_map};
use crate::prune::writer::{copy_other_files, write_checkpoint};
use crate::{bail, err};

/// One `neuroal prune`: where to read and write, and the settings.
pub struct PruneJob {
    pub model: PathBuf,
    pub calib: PathBuf,
    pub out: PathBuf,
    /// Text for perplexity before and after.
    pub eval: Option<PathBuf>,
    /// Comma-separated JSONL task files for zero-shot accuracy before and after.
    pub zeroshot: Option<String>,
    pub plots: Option<PathBuf>,
    /// Replace an existing output folder.
    pub force: bool,
    /// Continue an interrupted run of the same command from its saved progress.
    pub resume: bool,
    pub settings: PruneSettings,
}

/// Runs the whole job and returns the report (also written as `report.json` in the output).
pub fn run(job: &PruneJob) -> Result<Report> {
    let start = Instant::now();
    let checked = job.settings.check()?;
    let (inputs, checkpoint, hashing) = Inputs::read(job, &checked)?;
    // Every zero-shot request is encoded here, once, so that one that cannot be fails before
    // any work.
    let requests = inputs.zeroshot_requests()?;
    let mut estimate = host_estimate(job, &checked, &inputs, requests.as_ref())?;
    let output = Output::open(job, &checked, &inputs, hashing)?;
    let device = device::select(job.settings.device)?;
    let gpu_peak = device.is_gpu.then(|| memory::GpuPeak::start(&device.device));
    let dtype = device.compute_dtype(job.settings.dtype)?;
    let estimated_peak_mib = device_estimate(job, &inputs, &device, dtype, &mut estimate, &checkpoint)?;
    // Pruning computes no logits: no head, and the embedding table left in the memory map.
    let mut model = Model::load(inputs.config.clone(), checkpoint, &device, dtype, Ends::Hidden)?;
    model.experts_see_every_token = job.settings.moe_calibrate == MoeCalibrate::All;
    let mut pruned = prune_model(job, &checked, &inputs, &model, &output.saved, &estimate)?;
    write_checkpoint(&model.checkpoint, &pruned.masks, &output.staging.dir)?;
    let copied = copy_other_files(&job.model, &model.checkpoint.read, &output.staging.dir)?;
    // SparseGPT's new weights are in the checkpoint now; the report needs only the masks.
    for m in &mut pruned.masks {
        m.values = None;
    }
    let measurer = Measurer { job, inputs: &inputs, requests: requests.as_ref(), device: &device, dtype };
    let measured = measurer.both(&output.staging.dir, estimate.measure.is_some())?;
    let ctx = Ctx { job, checked: &checked, inputs: &inputs, model: &model };
    let mut report = make_report(&ctx, &device, dtype, &pruned, measured)?;
    report.timings.total_s = start.elapsed().as_secs_f64();
    report.memory.peak_gpu_mib = gpu_peak.map(memory::GpuPeak::finish).transpose()?;
    report.memory.estimated_peak_mib = estimated_peak_mib;
    report.memory.search_dense_batch = (job.settings.top_up == TopUpKind::Neuroal).then_some(estimate.dense_batch);
    report.provenance.resumed_from = output.adopted.clone();
    report.provenance.copied = copied.into_iter().collect();
    report.provenance.sha256 = serde_json::from_value(output.saved.state()?["inputs"].clone())
        .map_err(|e| err!("cannot read the input hashes back: {e}"))?;
    let mut plots_beside = None;
    if let Some(target) = &inputs.plots {
        let (plots, staged) = write_plots(&ctx, &output, target, &pruned, &report)?;
        report.plots = Some(plots);
        plots_beside = staged;
    }
    let text = serde_json::to_string_pretty(&report).map_err(|e| err!("cannot encode report.json: {e}"))?;
    {
        let _guard = write_lock();
        std::fs::write(output.staging.dir.join("report.json"), text)
            .map_err(|e| err!("cannot write report.json: {}", crate::io::error::io_words(&e)))?;
    }
    output.staging.commit()?;
    // Plots for a folder outside the output arrive only with it: a failed run leaves none.
    if let Some(staged) = plots_beside {
        staged.move_in()?;
    }
    Ok(report)
}

/// The model's file hashes, made while the rest is checked (a 7B shard takes seconds).
type Hashing = JoinHandle<Result<BTreeMap<String, String>>>;

/// Everything read and checked before any work: the model without a device, the destination,
/// the token ids of every text, the zero-shot examples.
struct Inputs {
    config: Config,
    specs: Specs,
    dest: Destination,
    plots: Option<PlotsTarget>,
    seqlen: usize,
    tokenizer: Tokenizer,
    ids: Vec<u32>,
    eval_ids: Option<Vec<u32>>,
    zeroshot: Option<(Vec<PathBuf>, Vec<Example>)>,
    zeroshot_len: usize,
    /// (what, SHA-256) of every text as it was read: exactly the bytes the run used.
    text_hashes: Vec<(String, String)>,
}

impl Inputs {
    /// The inputs, the checkpoint (for the model to load) and its hashing, under way.
    fn read(job: &PruneJob, checked: &Checked) -> Result<(Inputs, Checkpoint, Hashing)> {
        check_input_file(&job.calib, "calibration file")?;
        if let Some(e) = &job.eval {
            check_input_file(e, "evaluation file")?;
        }
        // The model, read without a device: config, weights' names and shapes, tokenizer.
        let (config, mut checkpoint) = check_model_dir(&job.model)?;
        let specs = Specs::of(&config);
        check_spec(job, checked, &config, &specs)?;
        let dest = Destination::check(&job.model, &job.out, job.force, job.resume)?;
        // A check that fails below leaves the hashing thread to end with the process.
        let tokenizer = Tokenizer::open(&job.model)?;
        checkpoint.read.insert("tokenizer.json".to_string(), tokenizer.bytes.clone());
        let hashing = {
            let dir = job.model.clone();
            let shards: Vec<String> = checkpoint.shards.iter().map(|s| s.file_name.clone()).collect();
            let read = checkpoint.read.clone();
            std::thread::spawn(move || provenance::model_hashes(&dir, &shards, &read))
        };
        let plots = job.plots.as_ref().map(|p| check_plots(&job.model, &dest, p)).transpose()?;
        if let (Some(PlotsTarget::Outside(dir)), Some(shown)) = (&plots, &job.plots) {
            check_plot_files(dir, shown, job.force)?;
        }
        let seqlen = job.settings.seqlen.unwrap_or_else(|| default_seqlen(&config));
        config.check_seqlen(seqlen)?;
        let (ids, calib_hash) = tokenize_checked_hashed(&tokenizer, &job.model, &job.calib, config.vocab_size)?;
        let mut text_hashes = vec![("calibration text".to_string(), calib_hash)];
        if ids.len() < seqlen + 1 {
            bail!(
                "calibration text has {} tokens, too few for one window of {seqlen} (needs {})",
                ids.len(),
                seqlen + 1
            );
        }
        let eval_ids = match &job.eval {
            Some(text) => {
                let (ids, hash) = eval_tokens(&tokenizer, job, &config, text, seqlen)?;
                text_hashes.push(("evaluation text".to_string(), hash));
                Some(ids)
            }
            None => None,
        };
        let zeroshot = match &job.zeroshot {
            Some(list) => {
                let paths = crate::measure::zeroshot::task_paths(list)?;
                let (examples, hashes) = crate::measure::zeroshot::read_tasks_hashed(&paths, None)?;
                for (p, h) in paths.iter().zip(hashes) {
                    text_hashes.push((format!("task file {}", p.display()), h));
                }
                Some((paths, examples))
            }
            None => None,
        };
        let zeroshot_len = default_seqlen(&config);
        let inputs = Inputs {
            config,
            specs,
            dest,
            plots,
            seqlen,
            tokenizer,
            ids,
            eval_ids,
            zeroshot,
            zeroshot_len,
            text_hashes,
        };
        Ok((inputs, checkpoint, hashing))
    }

    fn zeroshot_requests(&self) -> Result<Option<Requests<'_>>> {
        match &self.zeroshot {
            Some((_, examples)) => Ok(Some(Requests::encode(&self.tokenizer, examples, self.zeroshot_len)?)),
            None => Ok(None),
        }
    }
}

/// What the family's declaration refuses before any work: an N:M group wider than a linear
/// (the masks would refuse it at that linear), NeuroAL's row step without declared routes.
fn check_spec(job: &PruneJob, checked: &Checked, config: &Config, specs: &Specs) -> Result<()> {
    if let Pattern::NM { n, m } = job.settings.pattern {
        for b in 0..config.num_layers {
            let spec = specs.block(b);
            for (i, l) in spec.linears.iter().enumerate() {
                crate::prune::mask::check_group_width(n, m, l.shape[1])
                    .map_err(|e| err!("{}: {e}", spec.weight_name(b, i)))?;
            }
        }
    }
    let experts = specs.kinds().any(|s| s.linears.iter().any(|l| l.expert.is_some()));
    if job.settings.moe_calibrate != MoeCalibrate::Routed && !experts {
        bail!(
            "--moe-calibrate {} applies to mixtures of experts; {} is a dense {} model",
            job.settings.moe_calibrate.name(),
            job.model.display(),
            config.model_type
        );
    }
    if job.settings.top_up == TopUpKind::Neuroal && checked.step != NeuroalStep::Block && !specs.routed() {
        bail!(
            "{}: the {} family declares no row routing, so NeuroAL's row step cannot run; use --neuroal-step block",
            job.model.display(),
            config.model_type
        );
    }
    Ok(())
}

/// Plots already in an outside plots folder are replaced only with `--force`.
fn check_plot_files(dir: &Path, shown: &Path, force: bool) -> Result<()> {
    let existing = crate::commands::plots::FILES.iter().find(|f| std::fs::symlink_metadata(dir.join(f)).is_ok());
    match existing {
        Some(f) if !force => bail!("--plots {}: {f} exists already (use --force to replace it)", shown.display()),
        _ => Ok(()),
    }
}

/// The evaluation text's token ids: at least one window of `seqlen`.
fn eval_tokens(
    tokenizer: &Tokenizer,
    job: &PruneJob,
    config: &Config,
    text: &Path,
    seqlen: usize,
) -> Result<(Vec<u32>, String)> {
    if seqlen < 2 {
        bail!("--eval needs windows of 2 tokens or more (one to predict from), not --seqlen {seqlen}");
    }
    let (e, hash) = tokenize_checked_hashed(tokenizer, &job.model, text, config.vocab_size)?;
    if e.len() < seqlen {
        bail!("{}: the evaluation text has {} tokens, fewer than one window of {seqlen}", text.display(), e.len());
    }
    Ok((e, hash))
}

/// The memory estimate as far as it is known before a device is opened, checked against the
/// host's free memory on the CPU backends. OWL's outlier ratios take a dense pass over the
/// calibration windows whatever the pruner.
fn host_estimate(
    job: &PruneJob,
    checked: &Checked,
    inputs: &Inputs,
    requests: Option<&Requests>,
) -> Result<memory::Run> {
    let settings = &job.settings;
    let measure = (inputs.eval_ids.is_some() || requests.is_some()).then(|| memory::Measure {
        perplexity: inputs.eval_ids.as_ref().map(|e| (e.len() / inputs.seqlen, inputs.seqlen)),
        zeroshot: requests.map(|r| r.sizes()),
    });
    let pruner = checked.pruner.as_ref();
    // Every block is sized as the largest kind (a mixture of experts' dense layers are smaller).
    let shapes = inputs.specs.largest().shapes();
    let work = Work {
        step: checked.step,
        sparsity: checked.sparsity,
        seqlen: inputs.seqlen,
        hessians: pruner.needs_hessian(),
        on_cpu: settings.device != Choice::Gpu,
        shapes: &shapes,
        windows_run: pruner.needs_calibration() || settings.top_up == TopUpKind::Owl,
    };
    let mut estimate = memory::Run { measure, ..memory_run(settings, &work) };
    // The windows' starts and token ids are held on the host whatever the pruner and device.
    let windows = memory::Part {
        what: "calibration windows' token ids",
        bytes: windows_bytes(job, inputs),
        lowered_by: "--nsamples or --seqlen",
    };
    let Some(avail) = memory::available_host() else { return Ok(estimate) };
    memory::check(std::slice::from_ref(&windows), avail, "this machine")?;
    if settings.device != Choice::Gpu {
        estimate.passes_at_once = memory::passes_that_fit(&inputs.config, &shapes, &estimate, avail);
        let parts = [memory::prune_parts(&inputs.config, &shapes, &estimate), vec![windows]].concat();
        memory::check(&parts, avail, "this machine")?;
    }
    Ok(estimate)
}

/// The staged output folder and the progress saved in it (an interrupted run's, adopted with
/// `--resume`).
struct Output {
    staging: Staging,
    adopted: Option<PathBuf>,
    saved: Progress,
}

impl Output {
    /// Provenance and the progress of an interrupted run. The run starts while the inputs are
    /// still being hashed, unless --resume must check them first (see `resume::State`).
    fn open(job: &PruneJob, checked: &Checked, inputs: &Inputs, hashing: Hashing) -> Result<Output> {
        let state_settings = state_settings(&job.settings, checked, inputs.seqlen);
        let texts = inputs.text_hashes.clone();
        let make_state = move || -> Result<serde_json::Value> {
            let mut inputs = hashing.join().map_err(|_| err!("hashing the model's files failed"))??;
            inputs.extend(texts);
            Ok(json!({ "version": provenance::VERSION, "settings": state_settings, "inputs": inputs }))
        };
        let (state, (staging, adopted)) = if inputs.dest.resumes() {
            let state = make_state()?;
            let created = Staging::create(&inputs.dest, &|dir| Progress::verify(dir, &state))?;
            (State::Ready(state), created)
        } else {
            (State::Pending(Box::new(make_state)), Staging::create(&inputs.dest, &|_| Ok(()))?)
        };
        if job.resume {
            match &adopted {
                Some(p) => eprintln!("resuming the interrupted run saved in {}", p.display()),
                None => eprintln!(
                    "--resume: no interrupted run of {} to continue; starting from the beginning",
                    job.out.display()
                ),
            }
        }
        let saved = Progress::open(&staging.dir, state, adopted.is_some())?;
        Ok(Output { staging, adopted, saved })
    }
}

/// The settings an interrupted run must share with the one that resumes it.
fn state_settings(settings: &PruneSettings, checked: &Checked, seqlen: usize) -> serde_json::Value {
    json!({
        "method": settings.method.name(), "pattern": settings.pattern.name(), "sparsity": checked.sparsity,
        "nsamples": settings.nsamples, "seqlen": seqlen, "seed": settings.seed, "top_up": settings.top_up.name(),
        "owl_m": settings.owl_m, "owl_lambda": settings.owl_lambda, "neuroal_step": settings.neuroal_step.name(),
        "blocksize": settings.blocksize, "percdamp": settings.percdamp, "search_nsamples": settings.search_nsamples,
        "search_chunk": settings.search_chunk, "moe_calibrate": settings.moe_calibrate.name(),
        "alpha_epsilon": checked.alpha_epsilon,
        "refine": settings.refine.name(), "dsnot_cycles": settings.dsnot_cycles,
        "dsnot_threshold": settings.dsnot_threshold, "dsnot_linears": settings.dsnot_linears.name(),
        "device": format!("{:?}", settings.device).to_lowercase(), "dtype": settings.dtype.name(),
    })
}

/// The estimate completed on the opened device (its dtype, its stacked products, NeuroAL's
/// dense batches) and checked against its memory and buffer limit; the estimated peak in MiB.
fn device_estimate(
    job: &PruneJob,
    inputs: &Inputs,
    device: &Selected,
    dtype: burn::tensor::DType,
    estimate: &mut memory::Run,
    checkpoint: &Checkpoint,
) -> Result<f64> {
    let (config, shapes) = (&inputs.config, inputs.specs.largest().shapes());
    estimate.dtype_bytes = dtype.size() as u128;
    let fused = device.gpu.as_ref().map(|g| &g.fused);
    estimate.stacked_params = crate::gpu::fused::stacked_params(&inputs.specs.largest().fused_groups(), dtype, fused);
    estimate.dense_batch = dense_batch(&job.settings, device.is_gpu, config, &shapes, estimate);
    let parts = memory::prune_parts(config, &shapes, estimate);
    eprintln!("device {}", device.description);
    if let Some(cap) = device.is_gpu.then(|| crate::gpu::kernels::capacity(&device.device)).flatten()
        && let Some(warning) = memory::gpu_check(&parts, cap as u128)?
    {
        eprintln!("{warning}");
    }
    if let Some(limit) = device.max_buffer {
        memory::check_buffer(&memory::largest_buffer(config, &shapes, estimate), limit)?;
    }
    if device.is_gpu {
        return Ok(memory::total_mib(&parts));
    }
    // On the CPU the report's estimate bounds the measured peak (the process's resident set):
    // the parts, plus what the process already holds, and the checkpoints' pages that the run
    // reads through memory maps (the input's, and with --eval or --zeroshot the output's too),
    // which the system may drop again, so the check above leaves them out.
    let mapped: u128 = checkpoint.shards.iter().map(|s| s.mmap.len() as u128).sum();
    let extra = [
        // Freed memory that the allocator keeps for reuse (an arena per thread).
        memory::Part { what: "allocator slack, 1/8 of the parts", bytes: memory::total(&parts) / 8, lowered_by: "" },
        memory::Part { what: "calibration windows' token ids", bytes: windows_bytes(job, inputs), lowered_by: "" },
        memory::Part { what: "the process so far", bytes: memory::peak_rss_bytes(), lowered_by: "" },
        memory::Part {
            what: "checkpoint pages read through memory maps",
            bytes: mapped * if estimate.measure.is_some() { 2 } else { 1 },
            lowered_by: "",
        },
    ];
    Ok(memory::total_mib(&[parts, extra.to_vec()].concat()))
}

/// The calibration windows' starts and token ids, held on the host whatever the device.
fn windows_bytes(job: &PruneJob, inputs: &Inputs) -> u128 {
    job.settings.nsamples as u128 * (inputs.seqlen as u128 * 4 + 8)
}

/// What the prune made: the top-up's choice, the masks, the calibration windows and the times.
struct Pruned {
    topup: TopUp,
    masks: Vec<LayerMask>,
    starts: Vec<usize>,
    windows: Vec<u32>,
    topup_s: f64,
    prune_s: f64,
}

/// The top-up, then the block pipeline over the calibration windows, each finished block's
/// masks saved so an interrupted run continues after it.
fn prune_model(
    job: &PruneJob,
    checked: &Checked,
    inputs: &Inputs,
    model: &Model,
    saved: &Progress,
    estimate: &memory::Run,
) -> Result<Pruned> {
    let (settings, seqlen) = (&job.settings, inputs.seqlen);
    let starts = draw_windows(inputs.ids.len(), seqlen, settings.nsamples, settings.seed)?;
    let windows = gather_windows(&inputs.ids, &starts, seqlen);
    let t_topup = Instant::now();
    let plan = SearchPlan { at_once: estimate.passes_at_once, dense_batch: estimate.dense_batch };
    let trace = Trace::from_env();
    let calibrated = Calibrated { model, ids: &inputs.ids, windows: &windows, seqlen, trace: &trace };
    let topup = choose_map(&calibrated, settings, checked, saved, plan)?;
    let topup_s = t_topup.elapsed().as_secs_f64();
    let t_prune = Instant::now();
    let map = &topup.map;
    let mut done = Vec::new();
    while let Some(m) = saved.block_masks(done.len())? {
        done.push(m);
    }
    let mut finished = |b: usize, masks: &[LayerMask]| -> Result<()> {
        saved.save_block_masks(b, masks)?;
        fault(&format!("after-block-{b}"));
        Ok(())
    };
    let map_of = |b: usize, l: usize| map[b][l].clone();
    let pipeline = Pipeline {
        model,
        windows: &windows,
        seqlen,
        pruner: checked.pruner.as_ref(),
        pattern: &topup.pattern,
        sparsity: &map_of,
        at_once: estimate.passes_at_once,
        refine: checked.refine,
        trace: &trace,
    };
    let masks = prune_resumable(&pipeline, done, &mut finished)?;
    trace.report("prune");
    Ok(Pruned { topup, masks, starts, windows, topup_s, prune_s: t_prune.elapsed().as_secs_f64() })
}

/// Perplexity and zero-shot accuracy of one model.
type Measured = (Option<Perplexity>, Option<ZeroShot>);

/// What `--eval` and `--zeroshot` measure, on which device.
struct Measurer<'a> {
    job: &'a PruneJob,
    inputs: &'a Inputs,
    requests: Option<&'a Requests<'a>>,
    device: &'a Selected,
    dtype: burn::tensor::DType,
}

impl Measurer<'_> {
    /// The dense model, opened again with the head and table that the pruning did not hold,
    /// then what was written, read back: one model at a time. Nothing unless `any`.
    fn both(&self, written: &Path, any: bool) -> Result<(Measured, Measured)> {
        if any { Ok((self.one(&self.job.model)?, self.one(written)?)) } else { Ok(((None, None), (None, None))) }
    }

    fn one(&self, dir: &Path) -> Result<Measured> {
        let (device, inputs) = (self.device, self.inputs);
        let m = Model::open_as(dir, device, self.dtype)?;
        let ppl = inputs
            .eval_ids
            .as_ref()
            .map(|ids| perplexity(&m, ids, inputs.seqlen, None, &device.description))
            .transpose()?;
        let zs = self.requests.map(|r| crate::measure::zeroshot::evaluate(&m, r, &device.description)).transpose()?;
        Ok((ppl, zs))
    }
}

/// What the report and the plots read of a run.
struct Ctx<'a> {
    job: &'a PruneJob,
    checked: &'a Checked,
    inputs: &'a Inputs,
    model: &'a Model,
}

/// The report's parts that the run's results fill; memory, timings' total and provenance's
/// hashes are completed by the caller.
fn make_report(
    ctx: &Ctx,
    device: &Selected,
    dtype: burn::tensor::DType,
    pruned: &Pruned,
    ((ppl_dense, zs_dense), (ppl_pruned, zs_pruned)): (Measured, Measured),
) -> Result<Report> {
    let Ctx { job, checked, inputs, model } = *ctx;
    let eval = match (&job.eval, ppl_dense, ppl_pruned) {
        (Some(text), Some(dense), Some(pruned)) => report::EvalReport {
            file: Some(text.clone()),
            seqlen: Some(inputs.seqlen),
            windows: Some(dense.windows),
            ppl_dense: Some(dense.ppl),
            ppl_pruned: Some(pruned.ppl),
        },
        _ => report::EvalReport::default(),
    };
    let zeroshot = match (&inputs.zeroshot, zs_dense, zs_pruned) {
        (Some((paths, _)), Some(dense), Some(pruned)) => Some(report::ZeroShotReport {
            files: paths.clone(),
            max_len: inputs.zeroshot_len,
            dense: dense.tasks,
            pruned: pruned.tasks,
        }),
        _ => None,
    };
    let settings = &job.settings;
    Ok(Report {
        settings: report::Settings {
            model: job.model.clone(),
            out: job.out.clone(),
            model_type: model.config.model_type.into(),
            method: settings.method.name().into(),
            pattern: settings.pattern.name(),
            sparsity: checked.sparsity,
            top_up: settings.top_up.name().into(),
            final_pattern: pruned.topup.pattern.name(),
            refine: checked.refine.map(|(dsnot, linears)| report::RefineReport {
                method: settings.refine.name().into(),
                cycles: dsnot.cycles,
                threshold: settings.dsnot_threshold,
                linears: linears.name().into(),
            }),
        },
        device: device.description.clone(),
        dtype: report::Dtype {
            compute: crate::gpu::tensor::dtype_name(dtype).into(),
            checkpoint: model.config.dtype.clone(),
        },
        calibration: report::Calibration {
            file: job.calib.clone(),
            seed: settings.seed,
            seqlen: inputs.seqlen,
            nsamples: settings.nsamples,
            tokens: inputs.ids.len(),
            generator: "splitmix64, start = (next_u64 * (n - seqlen)) >> 64".into(),
            windows: pruned.starts.clone(),
            search_windows: pruned.topup.search.as_ref().map(|s| s.search_windows.clone()),
        },
        topup: topup_report(settings, checked, model, &pruned.topup),
        experts: experts_report(settings, checked, model, &pruned.masks),
        sparsity: sparsity_report(&pruned.masks, &model.linear_counts()),
        eval,
        zeroshot,
        timings: report::Timings { topup_s: pruned.topup_s, prune_s: pruned.prune_s, total_s: 0.0 },
        memory: report::MemoryUse {
            peak_host_mib: memory::peak_rss_mib(),
            peak_gpu_mib: None,
            estimated_peak_mib: 0.0,
            search_dense_batch: None,
        },
        provenance: report::Provenance {
            tool: "neuroal".into(),
            version: provenance::VERSION.into(),
            git_revision: provenance::GIT_REVISION.into(),
            command_line: provenance::command_line(),
            device: device.description.clone(),
            resumed_from: None,
            sha256: BTreeMap::new(),
            copied: BTreeMap::new(),
        },
        plots: None,
    })
}

/// What the report says of the top-up's choice.
fn topup_report(settings: &PruneSettings, checked: &Checked, model: &Model, topup: &TopUp) -> TopUpReport {
    let kind = settings.top_up;
    let mut report = TopUpReport {
        name: kind.name().into(),
        block_sparsities: topup.block_sparsities.clone(),
        outlier_ratios: topup.outlier_ratios.clone(),
        alphas: topup.alphas.clone(),
        alpha_epsilon: checked.alpha_epsilon,
        ..Default::default()
    };
    if kind == TopUpKind::Owl {
        (report.owl_m, report.owl_lambda) = (Some(settings.owl_m), Some(settings.owl_lambda));
    }
    if let Some(found) = &topup.search {
        report.step = Some(if checked.step == settings.neuroal_step {
            checked.step.name().into()
        } else {
            format!(
                "{} (--neuroal-step {}: the row step is not offered with {})",
                checked.step.name(),
                settings.neuroal_step.name(),
                checked.pruner.name()
            )
        });
        report.search_nsamples = Some(settings.search_nsamples);
        (report.lambda_block, report.lambda_row) = (found.lambda_block, found.lambda_row);
        (report.block_scores, report.row_scores) = (found.block_scores.clone(), found.row_scores.clone());
    }
    report.row_sparsity = topup
        .map
        .iter()
        .enumerate()
        .flat_map(|(b, layers)| layers.iter().enumerate().map(move |(l, sp)| (b, l, sp)))
        .filter_map(|(b, l, sp)| match sp {
            Sparsity::PerRow(v) => Some((model.linear_name(b, l), Summary::of(v))),
            Sparsity::Uniform(_) => None,
        })
        .collect();
    report
}

/// A mixture of experts' calibration tokens per block and expert, from each expert's first
/// linear's mask; `None` for a dense model, and where the pruner reads no calibration.
fn experts_report(
    settings: &PruneSettings,
    checked: &Checked,
    model: &Model,
    masks: &[LayerMask],
) -> Option<report::ExpertsReport> {
    // Each block's experts, by their first linear.
    let firsts = |b: usize| -> Vec<(usize, usize)> {
        let linears = model.linears(b);
        linears
            .iter()
            .enumerate()
            .filter_map(|(li, l)| l.expert.map(|e| (li, e)))
            .filter(|&(li, e)| li == 0 || linears[li - 1].expert != Some(e))
            .collect()
    };
    let any = (0..model.num_blocks()).any(|b| !firsts(b).is_empty());
    if !any || !checked.pruner.needs_calibration() {
        return None;
    }
    let routed = settings.moe_calibrate == MoeCalibrate::Routed;
    let mut tokens = Vec::new();
    let mut every_token = Vec::new();
    // A dense layer's row is empty.
    for (b, block) in by_block(masks, &model.linear_counts()).into_iter().enumerate() {
        let experts = firsts(b);
        let counts: Vec<usize> = experts.iter().map(|&(li, _)| block[li].routed_tokens.unwrap_or(0)).collect();
        every_token.extend(
            experts
                .iter()
                .zip(&counts)
                .filter(|&(_, &n)| routed && n == 0)
                .map(|(&(_, e), _)| format!("block {b} expert {e}")),
        );
        tokens.push(counts);
    }
    Some(report::ExpertsReport {
        calibrate: settings.moe_calibrate.name().into(),
        tokens: if routed { tokens } else { Vec::new() },
        every_token,
    })
}

/// The masks of each block, block b holding `linears[b]`.
fn by_block<'a>(masks: &'a [LayerMask], linears: &[usize]) -> Vec<&'a [LayerMask]> {
    let mut rest = masks;
    linears
        .iter()
        .map(|&n| {
            let (block, after) = rest.split_at(n.min(rest.len()));
            rest = after;
            block
        })
        .collect()
}

/// The pruned fraction of each layer, of each block (block b of `linears[b]` layers) and overall.
fn sparsity_report(masks: &[LayerMask], linears: &[usize]) -> report::SparsityReport {
    let layers: BTreeMap<String, f64> = masks.iter().map(|m| (m.name.clone(), m.fraction())).collect();
    let total: usize = masks.iter().map(|m| m.pruned.len()).sum();
    let zeros: usize = masks.iter().map(|m| m.pruned.count_ones()).sum();
    let blocks: Vec<f64> = by_block(masks, linears)
        .into_iter()
        .map(|c| {
            let n: usize = c.iter().map(|m| m.pruned.len()).sum();
            c.iter().map(|m| m.pruned.count_ones()).sum::<usize>() as f64 / n as f64
        })
        .collect();
    report::SparsityReport { overall: zeros as f64 / total.max(1) as f64, blocks, layers }
}

/// The plots, written into the staged output (then they arrive with it), or drawn for a folder
/// beside it (moved in once the output is in place: [`StagedPlots::move_in`]).
fn write_plots(
    ctx: &Ctx,
    output: &Output,
    target: &PlotsTarget,
    pruned: &Pruned,
    report: &Report,
) -> Result<(report::Plots, Option<StagedPlots>)> {
    let Ctx { job, checked, inputs, model } = *ctx;
    let (settings, sparsity) = (&job.settings, checked.sparsity);
    let mut series = vec![("uniform".to_string(), vec![sparsity; model.num_blocks()])];
    if settings.pattern == Pattern::Row {
        let owl = match settings.top_up {
            TopUpKind::Owl => report.topup.block_sparsities.clone(),
            _ => {
                let ratios = owl_outlier_ratios(model, &pruned.windows, inputs.seqlen, settings.owl_m)?;
                owl_block_sparsities(&ratios, settings.owl_lambda, sparsity)
            }
        };
        series.push(("OWL".to_string(), owl));
    }
    series.push((format!("{} (as pruned)", settings.top_up.name()), report.sparsity.blocks.clone()));
    let names: Vec<Vec<&str>> =
        (0..model.num_blocks()).map(|b| model.linears(b).iter().map(|l| l.name.as_str()).collect()).collect();
    let write = |dir: &Path| crate::commands::plots::write_all(dir, &report.topup, &series, &pruned.topup.map, &names);
    match target {
        PlotsTarget::InsideOutput(rel) => {
            let _guard = write_lock();
            let files = write(&output.staging.dir.join(rel))?;
            Ok((report::Plots { dir: inputs.dest.path().join(rel), files }, None))
        }
        PlotsTarget::Outside(dir) => {
            let staged = StagedPlots::draw(dir, &write)?;
            Ok((report::Plots { dir: dir.clone(), files: staged.files.clone() }, Some(staged)))
        }
    }
}

/// Plots for an outside folder, drawn into a new folder of this run's inside it; each is renamed
/// into place only once the output is, so no plot is ever written through an entry already
/// there (a link into the input stays a link, its target untouched) and a failed run leaves none
/// (the folder goes with the run, as a [`crate::io::staging::Scratch`]).
struct StagedPlots {
    dir: PathBuf,
    files: Vec<String>,
    /// Declared before `created`: dropped first, so the folder made for the plots is empty when
    /// its own drop removes it.
    staged: crate::io::staging::Scratch,
    created: Option<CreatedFolder>,
}

/// A folder this run made, removed again (if still empty) unless the run got as far as using it.
struct CreatedFolder(Option<PathBuf>);

impl Drop for CreatedFolder {
    fn drop(&mut self) {
        if let Some(dir) = self.0.take() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

impl StagedPlots {
    fn draw(dir: &Path, write: &dyn Fn(&Path) -> Result<Vec<String>>) -> Result<StagedPlots> {
        let created = (!dir.exists()).then(|| CreatedFolder(Some(dir.to_path_buf())));
        std::fs::create_dir_all(dir)
            .map_err(|e| err!("cannot create {}: {}", dir.display(), crate::io::error::io_words(&e)))?;
        let staged = crate::io::staging::Scratch::new(dir.join(format!(".neuroal-plots-{}", std::process::id())));
        std::fs::create_dir(staged.path())
            .map_err(|e| err!("cannot create {}: {}", staged.path().display(), crate::io::error::io_words(&e)))?;
        let files = write(staged.path())?;
        Ok(StagedPlots { dir: dir.to_path_buf(), files, staged, created })
    }

    fn move_in(mut self) -> Result<()> {
        if let Some(c) = &mut self.created {
            c.0 = None;
        }
        for f in &self.files {
            std::fs::rename(self.staged.path().join(f), self.dir.join(f)).map_err(|e| {
                err!(
                    "the output is in place, but plot {f} cannot be moved into {}: {}",
                    self.dir.display(),
                    crate::io::error::io_words(&e)
                )
            })?;
        }
        Ok(())
    }
}
