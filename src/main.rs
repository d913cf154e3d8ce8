use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use neuroal::commands::prune::PruneJob;
use neuroal::gpu::device::{Choice, ComputeDtype};
use neuroal::io::error::Result;
use neuroal::io::named::Named;
use neuroal::prune::mask::Pattern;
use neuroal::prune::score::Method;
use neuroal::prune::settings::{DsnotLinears, MoeCalibrate, NeuroalStep, PruneSettings, Refine, TopUpKind};
use neuroal::{bail, commands::bench, outln};

#[derive(Parser)]
#[command(
    name = "neuroal",
    version,
    about = "Prune Hugging Face LLMs with magnitude, Wanda or SparseGPT and a uniform, OWL or NeuroAL top-up, on wgpu or the CPU"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Perplexity of a model on a text file (non-overlapping windows, as the pruning papers do).
    Eval {
        /// Hugging Face model folder (config.json, *.safetensors, tokenizer.json).
        #[arg(long)]
        model: PathBuf,
        /// UTF-8 text file, read and tokenized whole.
        #[arg(long)]
        text: PathBuf,
        /// Window length in tokens [default: min(2048, max_position_embeddings)].
        #[arg(long)]
        seqlen: Option<usize>,
        /// Evaluate only the first K windows.
        #[arg(long)]
        max_windows: Option<usize>,
        #[command(flatten)]
        compute: Compute,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Prune a model (magnitude, Wanda or SparseGPT; uniform, OWL or NeuroAL sparsities) and write the pruned checkpoint.
    Prune(PruneFlags),
    /// Zero-shot multiple-choice accuracy (acc, acc_norm) on local JSONL task files.
    Zeroshot {
        /// Hugging Face model folder (config.json, *.safetensors, tokenizer.json).
        #[arg(long)]
        model: PathBuf,
        /// Comma-separated JSONL task files: {"context", "choices", "label"[, "task", "suffix"]}.
        #[arg(long)]
        tasks: String,
        /// At most N examples of each task.
        #[arg(long)]
        limit: Option<usize>,
        /// Longest sequence in tokens; longer ones are cut on the left
        /// [default: min(2048, max_position_embeddings)].
        #[arg(long)]
        seqlen: Option<usize>,
        #[command(flatten)]
        compute: Compute,
        #[arg(long)]
        json: bool,
    },
    /// Per-layer and overall sparsity of a checkpoint.
    Inspect {
        dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Forward throughput (tokens/s) and peak host memory of each device on a model.
    Bench(BenchFlags),
    /// Time this GPU's kernels on a model's shapes and keep the fastest for later runs on it
    ///
    /// The fastest matrix-product kernel for each of the model's linears, the fastest attention
    /// kernel for its heads and the fastest variant of the row selection, kept in a file per
    /// adapter in the user's cache folder.
    Tune {
        /// Model folder whose linears are timed (only its config.json is read).
        #[arg(long, required_unless_present = "synthetic")]
        model: Option<PathBuf>,
        /// Instead of a model: a published shape (llama2-7b, llama3-8b, llama-0.8b, opt-6.7b, phi-2, qwen3-0.6b, qwen3-4b, gemma3-1b, phi-4-mini, qwen3-30b-a3b; tiny, tiny-opt, tiny-phi).
        #[arg(long, conflicts_with = "model")]
        synthetic: Option<String>,
        /// Rows of each timed product (tokens per pass: windows × seqlen; NeuroAL's search
        /// passes 8 × seqlen), comma-separated; each shape's kernel is the fastest over all.
        #[arg(long, default_value = "4096")]
        tokens: String,
        /// Tokens per window of the timed attention (its windows: the first --tokens value over it).
        #[arg(long, default_value_t = 512)]
        seqlen: usize,
        /// Compute dtype whose products are tuned: auto = f16 on a GPU whose shaders support it, else f32.
        #[arg(long, value_parser = named::<ComputeDtype>(), default_value = PruneSettings::default().dtype.name())]
        dtype: ComputeDtype,
        /// Timed runs per kernel and shape (after one warm-up).
        #[arg(long, default_value_t = 5)]
        iters: usize,
    },
}

/// `neuroal prune`'s flags; their defaults are `PruneSettings::default()`'s.
#[derive(clap::Args)]
struct PruneFlags {
    /// Hugging Face model folder (config.json, *.safetensors, tokenizer.json).
    #[arg(long)]
    model: PathBuf,
    /// Calibration text file.
    #[arg(long)]
    calib: PathBuf,
    /// Output folder (written atomically; refused if it exists, unless --force).
    #[arg(long)]
    out: PathBuf,
    /// Base pruner.
    #[arg(long, value_parser = named::<Method>(), default_value = PruneSettings::default().method.name())]
    method: Method,
    /// SparseGPT: columns pruned and compensated together.
    #[arg(long, default_value_t = PruneSettings::default().blocksize)]
    blocksize: usize,
    /// SparseGPT: dampening added to diag(H), as a fraction of its mean.
    #[arg(long, default_value_t = PruneSettings::default().percdamp)]
    percdamp: f64,
    /// Fraction of each linear's weights to prune, in [0, 1) (implied by an N:M pattern).
    #[arg(long, allow_hyphen_values = true)]
    sparsity: Option<f64>,
    /// row | layer | N:M (e.g. 2:4, 4:8)
    #[arg(long, default_value_t = PruneSettings::default().pattern, value_parser = Pattern::from_arg)]
    pattern: Pattern,
    /// Calibration windows, drawn from the file at random positions (seeded by --seed).
    #[arg(long, default_value_t = PruneSettings::default().nsamples)]
    nsamples: usize,
    /// Calibration window length [default: min(2048, max_position_embeddings)].
    #[arg(long)]
    seqlen: Option<usize>,
    /// Seed of the windows' draw (SplitMix64: the same seed draws the same windows).
    #[arg(long, default_value_t = PruneSettings::default().seed)]
    seed: u64,
    #[command(flatten)]
    compute: Compute,
    /// Replace an existing output folder.
    #[arg(long)]
    force: bool,
    /// Text file for perplexity before and after pruning (in the report).
    #[arg(long)]
    eval: Option<PathBuf>,
    /// Comma-separated JSONL task files for zero-shot accuracy before and after pruning.
    #[arg(long)]
    zeroshot: Option<String>,
    /// How sparsity is spread over blocks and rows.
    #[arg(long, value_parser = named::<TopUpKind>(), default_value = PruneSettings::default().top_up.name())]
    top_up: TopUpKind,
    /// OWL: outlier threshold M (× mean score).
    #[arg(long, default_value_t = PruneSettings::default().owl_m)]
    owl_m: f64,
    /// OWL: λ, the largest deviation from the target sparsity.
    #[arg(long, default_value_t = PruneSettings::default().owl_lambda)]
    owl_lambda: f64,
    /// NeuroAL: which search steps run.
    #[arg(long, value_parser = named::<NeuroalStep>(), default_value = PruneSettings::default().neuroal_step.name())]
    neuroal_step: NeuroalStep,
    /// NeuroAL: windows of the search's own calibration set.
    #[arg(long, default_value_t = PruneSettings::default().search_nsamples)]
    search_nsamples: usize,
    /// NeuroAL: candidates evaluated per pass over the blocks (0: a whole step at once).
    #[arg(long, default_value_t = PruneSettings::default().search_chunk)]
    search_chunk: usize,
    /// NeuroAL: candidates whose dense passes through a block run as one batch (0: as many
    /// as fit without raising the run's estimated peak memory).
    #[arg(long, default_value_t = PruneSettings::default().search_batch)]
    search_batch: usize,
    /// Mixtures of experts: calibrate each expert on the tokens its router sends it (routed; an
    /// expert sent none takes every token's statistics), or send every calibration token
    /// through every expert for the statistics only (all; the outputs still follow the router).
    #[arg(long, value_parser = named::<MoeCalibrate>(), default_value = PruneSettings::default().moe_calibrate.name())]
    moe_calibrate: MoeCalibrate,
    /// AlphaPruning: ε, the largest deviation of a block's sparsity ratio from 1 (default: the
    /// paper's for the method: magnitude 0.5, sparsegpt 0.2, wanda and multiflow 0.3).
    #[arg(long)]
    alpha_epsilon: Option<f64>,
    /// A refinement of the base pruner's masks after the top-up: DSnoT regrows and prunes
    /// pairs of weights per row against the expected change of the row's output.
    #[arg(long, value_parser = named::<Refine>(), default_value = PruneSettings::default().refine.name())]
    refine: Refine,
    /// DSnoT: cycles per linear at most [default: 50].
    #[arg(long)]
    dsnot_cycles: Option<usize>,
    /// DSnoT: a row stops once its error is at most this [default: 0.1].
    #[arg(long)]
    dsnot_threshold: Option<f64>,
    /// DSnoT: the linears it refines (attention: the authors' choice, which skips the MLP's)
    /// [default: attention].
    #[arg(long, value_parser = named::<DsnotLinears>())]
    dsnot_linears: Option<DsnotLinears>,
    /// Folder for PNG plots of the search and the sparsity distribution (a folder inside
    /// --out is written with the output).
    #[arg(long)]
    plots: Option<PathBuf>,
    /// Continue an interrupted run of the same command (same settings and inputs) from the
    /// progress it saved beside --out.
    #[arg(long)]
    resume: bool,
}

/// `neuroal bench`'s flags.
#[derive(clap::Args)]
struct BenchFlags {
    /// Model folder to measure (or --synthetic; or --matmul, --attention, --prune-rows).
    #[arg(long, required_unless_present_any = ["synthetic", "matmul", "attention", "prune_rows", "save"])]
    model: Option<PathBuf>,
    /// Instead of a model: time each matrix-product kernel (burn's choice and every name
    /// NEUROAL_MATMUL accepts) on the GPU on these products, M×K×N comma-separated: x [M, K]
    /// times the transpose of a weight [N, K], as the linears multiply.
    #[arg(long, conflicts_with_all = ["model", "synthetic", "attention"])]
    matmul: Option<String>,
    /// Instead of a model: time the separate attention kernels and every flash kernel
    /// (NEUROAL_ATTENTION's names) on the GPU on these causal attentions, B×H×T×HD
    /// comma-separated (windows, heads, tokens, head size).
    #[arg(long, conflicts_with_all = ["model", "synthetic"])]
    attention: Option<String>,
    /// Instead of a model: time the GPU's row pruning (magnitude and Wanda, half of each row,
    /// both tie orders: the shader NeuroAL's search runs per linear and candidate, the final
    /// prune's, and the three shaders they fuse; each variant of the selection that
    /// NEUROAL_SELECT_WALK and NEUROAL_SELECT_COPIES leave) on random weights, ROWSxCOLS
    /// comma-separated.
    #[arg(long, conflicts_with_all = ["model", "synthetic", "matmul", "attention"])]
    prune_rows: Option<String>,
    /// Write a random f16 checkpoint of this shape (llama2-7b, llama3-8b, llama-0.8b, opt-6.7b, phi-2, qwen3-0.6b, qwen3-4b, gemma3-1b, phi-4-mini, qwen3-30b-a3b; tiny, tiny-opt, tiny-phi)
    /// to a temporary folder and measure it.
    #[arg(long, conflicts_with = "model")]
    synthetic: Option<String>,
    /// Blocks of the synthetic checkpoint.
    #[arg(long, default_value_t = 8)]
    blocks: usize,
    /// Instead of measuring: write the synthetic checkpoint into this new folder and keep it
    /// (for `prune` and `eval`, whose tokenizer it holds: the project's own, 384 ids).
    #[arg(long, conflicts_with_all = ["model", "prune_sparsity", "matmul", "attention", "prune_rows"])]
    save: Option<PathBuf>,
    /// Also time a NeuroAL prune (Wanda, block and row steps) at this sparsity on random tokens.
    #[arg(long)]
    prune_sparsity: Option<f64>,
    /// Calibration windows of the timed prune.
    #[arg(long, default_value_t = 64)]
    nsamples: usize,
    /// NeuroAL search windows of the timed prune.
    #[arg(long, default_value_t = 8)]
    search_nsamples: usize,
    /// NeuroAL candidates whose dense passes share one batch in the timed prune (0: as many
    /// as fit without raising its estimated peak memory).
    #[arg(long, default_value_t = 0)]
    search_batch: usize,
    /// Comma-separated devices, each measured in its own process.
    #[arg(long, default_value = "cpu,ndarray,gpu")]
    devices: String,
    #[arg(long, default_value_t = 256)]
    seqlen: usize,
    /// Windows per forward pass.
    #[arg(long, default_value_t = 4)]
    batch: usize,
    /// Timed forward passes (after one warm-up).
    #[arg(long, default_value_t = 5)]
    iters: usize,
    /// Compute dtype: auto = f16 on a GPU whose shaders support it, else f32.
    #[arg(long, value_parser = named::<ComputeDtype>(), default_value = PruneSettings::default().dtype.name())]
    dtype: ComputeDtype,
    /// Internal: measure one device in this process and print one JSON line.
    #[arg(long, hide = true)]
    single: bool,
    #[arg(long)]
    json: bool,
}

/// Where the model runs and in which dtype (eval, prune, zeroshot).
#[derive(clap::Args)]
struct Compute {
    /// auto: the best GPU adapter wgpu finds (discrete, then integrated; a CPU emulator is skipped), else cpu. gpu: that adapter, or an emulator. cpu: burn-flex. ndarray: burn-ndarray.
    #[arg(long, value_parser = named::<Choice>(), default_value = PruneSettings::default().device.name())]
    device: Choice,
    /// Compute dtype: auto = f16 on a GPU whose shaders support it, else f32.
    #[arg(long, value_parser = named::<ComputeDtype>(), default_value = PruneSettings::default().dtype.name())]
    dtype: ComputeDtype,
}

impl From<Compute> for neuroal::commands::Compute {
    fn from(c: Compute) -> Self {
        neuroal::commands::Compute { device: c.device, dtype: c.dtype }
    }
}

/// glibc hands every allocation above its mmap threshold (at most 32 MiB) back to the kernel when
/// it is freed, so a CPU run that allocates, say, 134 MB of logits per batch page-faults it in
/// afresh each time: a third of a CPU `eval` (kernel time). Up to 1 GiB, freed memory is kept
/// for reuse instead: wt2-llama's `eval` went from 30 s to 21 s for 4% more peak memory (256 MiB
/// left half of the faults).
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}

/// Listing GPU adapters loads the Vulkan drivers, and Mesa's (lavapipe, installed on many CPU
/// machines) prints "error: XDG_RUNTIME_DIR is invalid or not set" twice where that variable is
/// missing, as in containers and CI: a `--device auto` run on a CPU box began with two error
/// lines about nothing it did. Where it is unset or not a folder, it points at a private folder
/// of this user's in the temporary folder (created 0700), for this process and its children.
fn quiet_gpu_probe() {
    #[cfg(all(unix, not(target_os = "macos")))]
    {
        use std::os::unix::fs::{DirBuilderExt, MetadataExt};
        if std::env::var_os("XDG_RUNTIME_DIR").is_some_and(|d| std::path::Path::new(&d).is_dir()) {
            return;
        }
        // SAFETY: getuid cannot fail and has no side effects.
        let uid = unsafe { libc::getuid() };
        let dir = std::env::temp_dir().join(format!("neuroal-runtime-{uid}"));
        let _ = std::fs::DirBuilder::new().mode(0o700).create(&dir);
        // Only a folder of this user's that no one else can enter.
        let own = std::fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir() && m.uid() == uid && m.mode() & 0o077 == 0);
        if own {
            // SAFETY: called first in main, before any other thread exists that could read the
            // environment.
            unsafe { std::env::set_var("XDG_RUNTIME_DIR", &dir) };
        }
    }
}

/// Accepts exactly the names of `T`'s values, and lists them in the help.
fn named<T: Named>() -> impl clap::builder::TypedValueParser<Value = T> {
    use clap::builder::TypedValueParser;
    clap::builder::PossibleValuesParser::new(T::names()).map(|name| T::named(&name).unwrap_or(T::ALL[0]))
}

fn prune(flags: PruneFlags) -> Result<()> {
    let PruneFlags {
        model,
        calib,
        out,
        method,
        blocksize,
        percdamp,
        sparsity,
        pattern,
        nsamples,
        seqlen,
        seed,
        compute: Compute { device, dtype },
        force,
        eval,
        zeroshot,
        top_up,
        owl_m,
        owl_lambda,
        neuroal_step,
        search_nsamples,
        search_chunk,
        search_batch,
        moe_calibrate,
        alpha_epsilon,
        refine,
        dsnot_cycles,
        dsnot_threshold,
        dsnot_linears,
        plots,
        resume,
    } = flags;
    // DSnoT's parameters asked without DSnoT would be ignored silently.
    let dsnot_flags = [
        ("--dsnot-cycles", dsnot_cycles.is_some()),
        ("--dsnot-threshold", dsnot_threshold.is_some()),
        ("--dsnot-linears", dsnot_linears.is_some()),
    ];
    if let Some((flag, _)) = dsnot_flags.iter().find(|(_, given)| *given && refine == Refine::None) {
        bail!("{flag} applies to --refine dsnot");
    }
    let defaults = PruneSettings::default();
    let settings = PruneSettings {
        method,
        blocksize,
        percdamp,
        sparsity,
        pattern,
        nsamples,
        seqlen,
        seed,
        top_up,
        owl_m,
        owl_lambda,
        neuroal_step,
        search_nsamples,
        search_chunk,
        search_batch,
        moe_calibrate,
        alpha_epsilon,
        refine,
        dsnot_cycles: dsnot_cycles.unwrap_or(defaults.dsnot_cycles),
        dsnot_threshold: dsnot_threshold.unwrap_or(defaults.dsnot_threshold),
        dsnot_linears: dsnot_linears.unwrap_or(defaults.dsnot_linears),
        device,
        dtype,
    };
    let job = PruneJob { model, calib, out, eval, zeroshot, plots, force, resume, settings };
    let report = neuroal::commands::prune::run(&job)?;
    outln!(
        "pruned to {:.4} overall sparsity in {:.1} s; written to {}",
        report.sparsity.overall,
        report.timings.total_s,
        job.out.display()
    )?;
    if let (Some(d), Some(p)) = (report.eval.ppl_dense, report.eval.ppl_pruned) {
        outln!("perplexity dense {d:.4}, pruned {p:.4}")?;
    }
    Ok(())
}

fn parse_device(s: &str) -> Result<Choice> {
    s.parse::<Choice>().map_err(neuroal::io::error::Error)
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Eval { model, text, seqlen, max_windows, compute, json } => {
            neuroal::commands::eval::run(&model, &text, seqlen, max_windows, &compute.into(), json)
        }
        Command::Prune(flags) => prune(flags),
        Command::Zeroshot { model, tasks, limit, seqlen, compute, json } => {
            neuroal::commands::zeroshot::run(&model, &tasks, limit, seqlen, &compute.into(), json)
        }
        Command::Inspect { dir, json } => neuroal::commands::inspect::run(&dir, json),
        Command::Tune { model, synthetic, tokens, seqlen, dtype, iters } => {
            neuroal::commands::tune::run(&neuroal::commands::tune::TuneArgs {
                model,
                synthetic,
                tokens,
                seqlen,
                dtype,
                iters,
            })
        }
        Command::Bench(flags) => bench(flags),
    }
}

fn bench(flags: BenchFlags) -> Result<()> {
    let (devices, dtype, iters, json) = (&flags.devices, flags.dtype, flags.iters, flags.json);
    if let Some(list) = &flags.matmul {
        return bench::matmul(list, devices, dtype, iters, json);
    }
    if let Some(list) = &flags.attention {
        return bench::attention(list, devices, dtype, iters, json);
    }
    if let Some(list) = &flags.prune_rows {
        return bench::prune_rows(list, devices, dtype, iters, json);
    }
    let prune = match flags.prune_sparsity {
        Some(s) if !(0.0..1.0).contains(&s) => bail!("--prune-sparsity {s} is outside [0, 1)"),
        Some(_) if flags.nsamples == 0 || flags.search_nsamples == 0 => {
            bail!("--nsamples and --search-nsamples must be at least 1")
        }
        Some(sparsity) => Some(bench::PruneBench {
            sparsity,
            nsamples: flags.nsamples,
            search_nsamples: flags.search_nsamples,
            search_batch: flags.search_batch,
        }),
        None => None,
    };
    let run = bench::ForwardBench { dtype, seqlen: flags.seqlen, batch: flags.batch, iters, prune };
    if flags.single {
        let choice = parse_device(devices)?;
        let model = flags.model.as_ref().ok_or_else(|| neuroal::err!("--model is required"))?;
        return neuroal::io::error::write_json(&bench::measure(model, choice, &run)?, false);
    }
    if flags.save.is_some() && flags.synthetic.is_none() {
        bail!(
            "--save keeps the random checkpoint that --synthetic SHAPE writes; add --synthetic (e.g. --synthetic llama2-7b --blocks 8)"
        );
    }
    let (model, temp) = match (&flags.model, &flags.synthetic) {
        (Some(m), _) => (m.clone(), None),
        (None, Some(name)) => {
            if let Some(dir) = &flags.save {
                return save_synthetic(name, flags.blocks, dir);
            }
            let scratch = synthetic_for(name, flags.blocks, devices, &run)?;
            (scratch.path().to_path_buf(), Some(scratch))
        }
        (None, None) => bail!("--model or --synthetic is required"),
    };
    let mut rows = Vec::new();
    for d in devices.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        rows.push(parse_device(d).and_then(|_| bench::measure_in_child(&model, d, &run))?);
    }
    drop(temp);
    if json { neuroal::io::error::write_json(&rows, true) } else { bench::print_table(&rows) }
}

/// `bench --synthetic NAME --save DIR`: the random checkpoint written beside its name and
/// renamed in whole; an interruption removes it.
fn save_synthetic(name: &str, blocks: usize, dir: &Path) -> Result<()> {
    let shape = bench::shape(name)?;
    bench::synthetic_config(&shape, blocks)?;
    if std::fs::symlink_metadata(dir).is_ok() {
        bail!("--save {}: already exists; name a new folder", dir.display());
    }
    let Some(file) = dir.file_name() else { bail!("--save {}: name a new folder", dir.display()) };
    let partial = dir.with_file_name(format!(".{}.partial-{}", file.to_string_lossy(), std::process::id()));
    let scratch = neuroal::io::staging::Scratch::new(partial);
    bench::write_synthetic(scratch.path(), &shape, blocks)?;
    neuroal::io::faults::fault("synthetic-written");
    scratch.keep_as(dir).map_err(|e| neuroal::err!("--save {e}"))?;
    eprintln!("wrote a random {name} checkpoint with {blocks} blocks to {}", dir.display());
    Ok(())
}

/// A random checkpoint of the shape `name` in a temporary folder, removed when dropped; what
/// the measuring children would refuse is refused before gigabytes are written.
fn synthetic_for(
    name: &str,
    blocks: usize,
    devices: &str,
    run: &bench::ForwardBench,
) -> Result<neuroal::io::staging::Scratch> {
    let shape = bench::shape(name)?;
    let (_, config) = bench::synthetic_config(&shape, blocks)?;
    bench::check_run(&config, devices, run.dtype, run.seqlen, run.batch, run.iters)?;
    let scratch = neuroal::io::staging::Scratch::new(
        std::env::temp_dir().join(format!("neuroal-synthetic-{}-{name}-{blocks}", std::process::id())),
    );
    bench::write_synthetic(scratch.path(), &shape, blocks)?;
    eprintln!("wrote a random {name} checkpoint with {blocks} blocks to {}", scratch.path().display());
    Ok(scratch)
}

fn main() -> ExitCode {
    // Both change process-wide settings: before any other thread exists.
    keep_freed_memory();
    quiet_gpu_probe();
    neuroal::io::staging::install_interrupt_handler();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            // clap's message without its usage block: one line, like every other error here.
            let text = e.to_string();
            let line: Vec<&str> = text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with("Usage:") && !l.starts_with("For more information"))
                .collect();
            eprintln!("{}", line.join(" "));
            return ExitCode::from(2);
        }
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        // The reader of stdout has gone (`| head`): the command stopped where it would have
        // written, with nothing to say to anyone; 141 is what a shell reports for SIGPIPE.
        Err(e) if neuroal::io::error::stdout_closed(&e) => ExitCode::from(141),
        Err(e) => {
            // One line, whatever a library wrote into it.
            let text = neuroal::io::error::one_line(&neuroal::io::error::without_os_codes(&e.to_string()));
            eprintln!("error: {text}");
            ExitCode::from(2)
        }
    }
}
