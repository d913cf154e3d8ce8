//! `neuroal bench`: forward throughput, optionally a timed NeuroAL prune, and peak host memory
//! (and GPU memory where burn's runtime reports it) per device. Each device runs in a child
//! process so that one device's peak memory does not hide another's. `--synthetic SHAPE` first
//! writes a random checkpoint of a published shape (LLaMA-2-7B's blocks, say) to a temporary
//! folder, so anyone can rerun the numbers without Python or a download.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::gpu::device::{self, Choice, ComputeDtype};
use crate::gpu::timing::{parse_sizes, time_kernel};
use crate::io::error::Result;
use crate::io::named::Named;
use crate::measure::memory::{self, GpuPeak, peak_rss_mib};
use crate::measure::trace::Trace;
use crate::model::{Block, Model};
use crate::prune::neuroal::SearchPlan;
use crate::prune::pipeline::{Pipeline, prune_resumable};
use crate::prune::resume::{Progress, State};
use crate::prune::topup::{Calibrated, choose_map};
use crate::prune::writer::write_checkpoint;
use crate::{bail, err, outln};

#[derive(Debug, Serialize, Deserialize)]
pub struct BenchRow {
    pub device: String,
    pub seqlen: usize,
    pub batch: usize,
    pub tokens_per_s: f64,
    pub ms_per_forward: f64,
    pub peak_rss_mib: f64,
    /// GPUs: the most the runtime's memory pools held during the forward passes, and during the
    /// prune, in MiB (sampled every 10 ms).
    #[serde(default)]
    pub forward_gpu_mib: Option<f64>,
    #[serde(default)]
    pub prune_gpu_mib: Option<f64>,
    /// With `--prune-sparsity`: the prune's up-front memory estimate (f32 throughout), in MiB,
    /// to set beside the measured peaks.
    #[serde(default)]
    pub prune_estimate_mib: Option<f64>,
    /// With `--prune-sparsity`: NeuroAL's search and the final prune, in seconds, and its λs.
    #[serde(default)]
    pub search_s: Option<f64>,
    #[serde(default)]
    pub prune_s: Option<f64>,
    /// With `--prune-sparsity`: writing the pruned checkpoint, in seconds.
    #[serde(default)]
    pub write_s: Option<f64>,
    #[serde(default)]
    pub lambda_block: Option<f64>,
    #[serde(default)]
    pub lambda_row: Option<f64>,
    /// With `--prune-sparsity`: the search's candidates per dense batch.
    #[serde(default)]
    pub dense_batch: Option<usize>,
}

/// A published shape for synthetic checkpoints: its config.json, less the block count (which is
/// `--blocks`) and the dtype (f16). The family's own declaration then says which tensors a
/// checkpoint of it holds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Shape {
    pub name: &'static str,
    pub config: &'static str,
}

pub const SHAPES: [Shape; 13] = [
    Shape {
        name: "llama2-7b",
        config: r#"{"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": 32000, "hidden_size": 4096,
            "intermediate_size": 11008, "num_attention_heads": 32, "num_key_value_heads": 32, "max_position_embeddings": 4096,
            "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": false}"#,
    },
    Shape {
        name: "llama3-8b",
        config: r#"{"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": 128256, "hidden_size": 4096,
            "intermediate_size": 14336, "num_attention_heads": 32, "num_key_value_heads": 8, "max_position_embeddings": 8192,
            "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": false}"#,
    },
    Shape {
        name: "llama-0.8b",
        config: r#"{"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": 32000, "hidden_size": 2048,
            "intermediate_size": 5632, "num_attention_heads": 32, "num_key_value_heads": 4, "max_position_embeddings": 2048,
            "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": false}"#,
    },
    Shape {
        name: "opt-6.7b",
        config: r#"{"model_type": "opt", "architectures": ["OPTForCausalLM"], "vocab_size": 50272, "hidden_size": 4096,
            "ffn_dim": 16384, "num_attention_heads": 32, "max_position_embeddings": 2048, "do_layer_norm_before": true,
            "word_embed_proj_dim": 4096, "enable_bias": true, "activation_function": "relu", "tie_word_embeddings": true}"#,
    },
    Shape {
        name: "phi-2",
        config: r#"{"model_type": "phi", "architectures": ["PhiForCausalLM"], "vocab_size": 51200, "hidden_size": 2560,
            "intermediate_size": 10240, "num_attention_heads": 32, "num_key_value_heads": 32, "max_position_embeddings": 2048,
            "partial_rotary_factor": 0.4, "layer_norm_eps": 1e-5, "rope_theta": 10000.0, "hidden_act": "gelu_new",
            "tie_word_embeddings": false}"#,
    },
    Shape {
        name: "qwen3-0.6b",
        config: r#"{"model_type": "qwen3", "architectures": ["Qwen3ForCausalLM"], "vocab_size": 151936, "hidden_size": 1024,
            "intermediate_size": 3072, "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 128,
            "max_position_embeddings": 40960, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "hidden_act": "silu",
            "attention_bias": false, "use_sliding_window": false, "tie_word_embeddings": true}"#,
    },
    Shape {
        name: "qwen3-4b",
        config: r#"{"model_type": "qwen3", "architectures": ["Qwen3ForCausalLM"], "vocab_size": 151936, "hidden_size": 2560,
            "intermediate_size": 9728, "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128,
            "max_position_embeddings": 40960, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "hidden_act": "silu",
            "attention_bias": false, "use_sliding_window": false, "tie_word_embeddings": true}"#,
    },
    Shape {
        name: "gemma3-1b",
        config: r#"{"model_type": "gemma3_text", "architectures": ["Gemma3ForCausalLM"], "vocab_size": 262144,
            "hidden_size": 1152, "intermediate_size": 6912, "num_attention_heads": 4, "num_key_value_heads": 1,
            "head_dim": 256, "max_position_embeddings": 32768, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
            "rope_local_base_freq": 10000.0, "sliding_window": 512, "sliding_window_pattern": 6,
            "query_pre_attn_scalar": 256, "hidden_activation": "gelu_pytorch_tanh", "rope_scaling": null,
            "attn_logit_softcapping": null, "final_logit_softcapping": null, "tie_word_embeddings": true}"#,
    },
    // Phi-4-mini's sizes; its longrope factors (two lists of 48) change no work, so none are
    // given.
    Shape {
        name: "phi-4-mini",
        config: r#"{"model_type": "phi3", "architectures": ["Phi3ForCausalLM"], "vocab_size": 200064, "hidden_size": 3072,
            "intermediate_size": 8192, "num_attention_heads": 24, "num_key_value_heads": 8,
            "max_position_embeddings": 131072, "partial_rotary_factor": 0.75, "rope_theta": 10000.0,
            "rms_norm_eps": 1e-5, "hidden_act": "silu", "sliding_window": 262144, "tie_word_embeddings": true}"#,
    },
    // Qwen3-30B-A3B: 128 experts of 768, 8 a token; one block holds 0.62 B weights.
    Shape {
        name: "qwen3-30b-a3b",
        config: r#"{"model_type": "qwen3_moe", "architectures": ["Qwen3MoeForCausalLM"], "vocab_size": 151936,
            "hidden_size": 2048, "intermediate_size": 6144, "moe_intermediate_size": 768, "num_experts": 128,
            "num_experts_per_tok": 8, "norm_topk_prob": true, "decoder_sparse_step": 1, "mlp_only_layers": [],
            "num_attention_heads": 32, "num_key_value_heads": 4, "head_dim": 128, "max_position_embeddings": 40960,
            "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "hidden_act": "silu", "attention_bias": false,
            "use_sliding_window": false, "tie_word_embeddings": false}"#,
    },
    Shape {
        name: "tiny",
        config: r#"{"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": 384, "hidden_size": 64,
            "intermediate_size": 172, "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 256,
            "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": false}"#,
    },
    Shape {
        name: "tiny-opt",
        config: r#"{"model_type": "opt", "architectures": ["OPTForCausalLM"], "vocab_size": 384, "hidden_size": 64,
            "ffn_dim": 256, "num_attention_heads": 4, "max_position_embeddings": 256, "do_layer_norm_before": true,
            "word_embed_proj_dim": 64, "enable_bias": true, "activation_function": "relu", "tie_word_embeddings": true}"#,
    },
    Shape {
        name: "tiny-phi",
        config: r#"{"model_type": "phi", "architectures": ["PhiForCausalLM"], "vocab_size": 384, "hidden_size": 64,
            "intermediate_size": 256, "num_attention_heads": 4, "num_key_value_heads": 4, "max_position_embeddings": 256,
            "partial_rotary_factor": 0.5, "layer_norm_eps": 1e-5, "rope_theta": 10000.0, "hidden_act": "gelu_new",
            "tie_word_embeddings": false}"#,
    },
];

pub fn shape(name: &str) -> Result<Shape> {
    match SHAPES.iter().find(|s| s.name == name) {
        Some(s) => Ok(*s),
        None => bail!(
            "unknown --synthetic shape \"{name}\" (known: {})",
            SHAPES.iter().map(|s| s.name).collect::<Vec<_>>().join(", ")
        ),
    }
}

/// The project's own small BPE tokenizer (`scripts/make_fixtures.py`, 384 ids, within every
/// shape's vocabulary), written beside a synthetic checkpoint so `prune` and `eval` take it.
const TOKENIZER: &str = include_str!("../../assets/tokenizer.json");

/// Writes a random f16 checkpoint of `shape` with `blocks` blocks into `dir`: config.json, one
/// shard per block plus one for the tensors outside the blocks, the index and a tokenizer. Matrices are
/// uniform with a unit-variance-preserving scale (±√(3/fan_in)), norm weights 1, biases 0;
/// seeded, so every run measures the same model.
pub fn write_synthetic(dir: &Path, shape: &Shape, blocks: usize) -> Result<()> {
    use safetensors::tensor::{Dtype, TensorView};
    let (text, parsed) = synthetic_config(shape, blocks)?;
    if let Some(free) = crate::io::staging::free_bytes(dir) {
        let need = synthetic_bytes(&parsed);
        if need > free {
            bail!(
                "a random {} checkpoint with {blocks} blocks needs {:.1} GB, and {} has {:.1} GB free",
                shape.name,
                need as f64 / 1e9,
                dir.parent().unwrap_or(dir).display(),
                free as f64 / 1e9
            );
        }
    }
    std::fs::create_dir_all(dir).map_err(|e| err!("cannot create {}: {e}", dir.display()))?;
    std::fs::write(dir.join("config.json"), text).map_err(|e| err!("cannot write config.json: {e}"))?;
    std::fs::write(dir.join("tokenizer.json"), TOKENIZER).map_err(|e| err!("cannot write tokenizer.json: {e}"))?;
    // Shard 0 holds what lies outside the blocks, shard b + 1 block b.
    let prefix = format!("{}.", crate::model::Specs::of(&parsed).block_prefix());
    let mut shards: Vec<Vec<(String, Vec<usize>)>> = vec![Vec::new(); blocks + 1];
    for (name, dims) in crate::model::checkpoint_tensors(&parsed, false) {
        let block = name.strip_prefix(&prefix).and_then(|r| r.split('.').next()?.parse::<usize>().ok());
        shards[block.map_or(0, |b| b + 1)].push((name, dims));
    }
    // Matrices draw from one seeded stream, in the order the shards list them.
    let random = |name: &str, dims: &[usize]| dims.len() != 1 && !name.ends_with(".bias");
    let values = |name: &str, dims: &[usize], first: u64| -> Vec<u8> {
        let n: usize = dims.iter().product();
        if !random(name, dims) {
            let v = if name.ends_with(".bias") { half::f16::ZERO } else { half::f16::ONE };
            return (0..n).flat_map(|_| v.to_le_bytes()).collect();
        }
        uniform_f16(first, n, (3.0 / dims[1] as f64).sqrt(), 1 << 16)
    };
    let mut drawn = 0u64;
    let mut weight_map = serde_json::Map::new();
    for (k, tensors) in shards.iter().enumerate() {
        let file = format!("model-{:05}-of-{:05}.safetensors", k + 1, shards.len());
        let data: Vec<Vec<u8>> = tensors
            .iter()
            .map(|(n, dims)| {
                let first = drawn;
                if random(n, dims) {
                    drawn += dims.iter().product::<usize>() as u64;
                }
                values(n, dims, first)
            })
            .collect();
        let views = tensors
            .iter()
            .zip(&data)
            .map(|((n, dims), b)| TensorView::new(Dtype::F16, dims.clone(), b).map(|v| (n.clone(), v)))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| err!("cannot build tensor views: {e}"))?;
        for (n, _) in tensors {
            weight_map.insert(n.clone(), serde_json::Value::String(file.clone()));
        }
        // The header's format tag, which transformers 4.x demands of a checkpoint it loads.
        let format = Some(std::collections::HashMap::from([("format".to_string(), "pt".to_string())]));
        safetensors::serialize_to_file(views, format, &dir.join(&file))
            .map_err(|e| err!("cannot write {file}: {e}"))?;
    }
    let index = serde_json::json!({ "metadata": {}, "weight_map": weight_map });
    std::fs::write(dir.join("model.safetensors.index.json"), serde_json::to_string_pretty(&index).unwrap_or_default())
        .map_err(|e| err!("cannot write the index: {e}"))
}

/// The config.json of a synthetic checkpoint of `shape` with `blocks` blocks, as written and as
/// read: the run's arguments are checked against it before gigabytes are written.
pub fn synthetic_config(shape: &Shape, blocks: usize) -> Result<(String, crate::model::config::Config)> {
    if blocks == 0 {
        bail!("--blocks must be at least 1");
    }
    let mut config: serde_json::Value =
        serde_json::from_str(shape.config).map_err(|e| err!("shape {}: {e}", shape.name))?;
    config["num_hidden_layers"] = blocks.into();
    config["torch_dtype"] = "float16".into();
    let text = serde_json::to_string_pretty(&config).map_err(|e| err!("shape {}: {e}", shape.name))?;
    let parsed = crate::model::config::Config::from_json(&text)?;
    Ok((text, parsed))
}

/// Bytes of a synthetic checkpoint's tensors (f16).
fn synthetic_bytes(config: &crate::model::config::Config) -> u64 {
    crate::model::checkpoint_tensors(config, false)
        .iter()
        .map(|(_, dims)| 2 * dims.iter().product::<usize>() as u64)
        .sum()
}

/// What each measuring child would refuse before it measures anything (devices, sizes, dtype,
/// the window against the model's positions), checked once before a synthetic checkpoint is
/// written for them.
pub fn check_run(
    config: &crate::model::config::Config,
    devices: &str,
    dtype: ComputeDtype,
    seqlen: usize,
    batch: usize,
    iters: usize,
) -> Result<()> {
    check_sizes(batch, iters)?;
    config.check_seqlen(seqlen)?;
    for d in devices.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let choice: Choice = d.parse().map_err(crate::io::error::Error)?;
        device::refuse_dtype(choice == Choice::Ndarray, choice == Choice::Gpu, dtype)
            .map_err(|e| err!("bench on {d}: {e}"))?;
    }
    Ok(())
}

fn check_sizes(batch: usize, iters: usize) -> Result<()> {
    if batch == 0 || iters == 0 {
        bail!("--batch and --iters must be at least 1");
    }
    Ok(())
}

/// The synthetic checkpoints' seed.
const SEED: u64 = 0x5eed;

/// Draws `first..first + n` of the seeded stream as f16 bytes uniform in ±`a`, made in pieces of
/// `piece` values on every core, each piece's generator started where the stream is at its
/// first value: the same bytes as drawing them in order, in a fraction of the time.
fn uniform_f16(first: u64, n: usize, a: f64, piece: usize) -> Vec<u8> {
    let mut out = vec![0u8; n * 2];
    out.par_chunks_mut(2 * piece).enumerate().for_each(|(i, bytes)| {
        let mut rng = crate::rng::SplitMix64::after(SEED, first + (i * piece) as u64);
        for v in bytes.chunks_exact_mut(2) {
            let u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
            v.copy_from_slice(&half::f16::from_f64((2.0 * u - 1.0) * a).to_le_bytes());
        }
    });
    out
}

/// What one device's measurement runs: the compute dtype, windows of `seqlen` tokens, `batch`
/// windows per forward pass, `iters` timed passes (after one warm-up), and the timed prune.
#[derive(Clone, Copy, Debug)]
pub struct ForwardBench {
    pub dtype: ComputeDtype,
    pub seqlen: usize,
    pub batch: usize,
    pub iters: usize,
    pub prune: Option<PruneBench>,
}

/// Measures the model in `model_dir` on the device `choice`, in this process.
pub fn measure(model_dir: &Path, choice: Choice, run: &ForwardBench) -> Result<BenchRow> {
    let ForwardBench { dtype, seqlen, batch, iters, prune } = *run;
    check_sizes(batch, iters)?;
    let selected = device::select(choice)?;
    let dtype = selected.compute_dtype(dtype)?;
    let model = Model::open_as(model_dir, &selected, dtype)?;
    model.check_seqlen(seqlen)?;
    let gpu = selected.is_gpu.then(|| GpuPeak::start(&selected.device));
    let blocks: Vec<Block> = model.blocks().collect::<Result<_>>()?;
    let rope = model.positions(seqlen);
    let vocab = model.config.vocab_size as u32;
    // Deterministic pseudo-random ids: throughput does not depend on which tokens they are.
    let ids: Vec<u32> = (0..batch * seqlen).map(|i| (i as u32).wrapping_mul(2_654_435_761) % vocab).collect();
    let forward = || -> Result<()> {
        let mut h = model.embed(&ids, batch)?;
        for block in &blocks {
            h = block.forward(h, &rope, None);
        }
        // Reading one value back waits for the device to finish the whole pass.
        crate::gpu::tensor::host_f32(model.head(h)?.sum(), "forward pass")?;
        Ok(())
    };
    forward()?;
    let start = Instant::now();
    for _ in 0..iters {
        forward()?;
    }
    let secs = start.elapsed().as_secs_f64();
    drop(blocks);
    drop(model);
    let forward_gpu_mib = gpu.map(GpuPeak::finish).transpose()?;
    let (mut pruned, mut prune_gpu_mib) = (None, None);
    if let Some(p) = prune {
        // The forward held every block at once; the prune's peak is measured from empty pools.
        let gpu = if selected.is_gpu {
            crate::gpu::kernels::release_unused(&selected.device)
                .map_err(|e| err!("cannot release the GPU pools: {e}"))?;
            Some(GpuPeak::start(&selected.device))
        } else {
            None
        };
        // Random calibration tokens: the cost does not depend on which tokens they are.
        let mut rng = crate::rng::SplitMix64::new(7);
        let n = (p.nsamples.max(p.search_nsamples) + 1) * seqlen + 1;
        let ids: Vec<u32> = (0..n).map(|_| rng.below(vocab as u64) as u32).collect();
        let scratch = crate::io::staging::Scratch::new(
            std::env::temp_dir().join(format!("neuroal-bench-{}", std::process::id())),
        );
        // Loaded as `prune` loads it without --eval: no head, the table left in the map.
        let (config, checkpoint) = crate::model::check_model_dir(model_dir)?;
        let model = Model::load(config, checkpoint, &selected, dtype, crate::model::Ends::Hidden)?;
        pruned = Some(bench_neuroal(&model, &ids, seqlen, &p, scratch.path())?);
        prune_gpu_mib = gpu.map(GpuPeak::finish).transpose()?;
    }
    Ok(BenchRow {
        device: format!("{} ({})", selected.description, crate::gpu::tensor::dtype_name(dtype)),
        seqlen,
        batch,
        tokens_per_s: (iters * batch * seqlen) as f64 / secs,
        ms_per_forward: secs * 1000.0 / iters as f64,
        peak_rss_mib: peak_rss_mib(),
        forward_gpu_mib,
        prune_gpu_mib,
        prune_estimate_mib: pruned.as_ref().map(|p| p.estimate_mib),
        search_s: pruned.as_ref().map(|p| p.search_s),
        prune_s: pruned.as_ref().map(|p| p.prune_s),
        write_s: pruned.as_ref().map(|p| p.write_s),
        lambda_block: pruned.as_ref().and_then(|p| p.lambda_block),
        lambda_row: pruned.as_ref().and_then(|p| p.lambda_row),
        dense_batch: pruned.as_ref().map(|p| p.dense_batch),
    })
}

/// [`measure`] in a child process of this executable, so that one device's peak memory does
/// not hide another's.
pub fn measure_in_child(model_dir: &Path, device: &str, run: &ForwardBench) -> Result<BenchRow> {
    let ForwardBench { dtype, seqlen, batch, iters, prune } = *run;
    let exe = std::env::current_exe().map_err(|e| err!("cannot find own executable: {e}"))?;
    let mut cmd = Command::new(exe);
    cmd.args(["bench", "--single", "--devices", device, "--seqlen", &seqlen.to_string()])
        .args(["--batch", &batch.to_string(), "--iters", &iters.to_string(), "--model"])
        .arg(model_dir)
        .args(["--dtype", dtype.name()]);
    if let Some(p) = prune {
        cmd.args(["--prune-sparsity", &p.sparsity.to_string(), "--nsamples", &p.nsamples.to_string()]).args([
            "--search-nsamples",
            &p.search_nsamples.to_string(),
            "--search-batch",
            &p.search_batch.to_string(),
        ]);
    }
    let out = crate::io::staging::child_output(&mut cmd).map_err(|e| err!("cannot run the benchmark child: {e}"))?;
    if !out.status.success() {
        let msg = String::from_utf8_lossy(&out.stderr);
        bail!("bench on {device}: {}", msg.lines().last().unwrap_or("failed").trim_start_matches("error: "));
    }
    // NEUROAL_TRACE's stage times, which the child writes to its stderr.
    for line in String::from_utf8_lossy(&out.stderr).lines().filter(|l| l.starts_with("trace:")) {
        eprintln!("{line}");
    }
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).map_err(|e| err!("bench on {device}: unreadable result ({e})"))
}

/// The GPU and compute dtype a kernel benchmark (`--matmul`, `--attention`) runs on.
fn kernel_bench_device(
    devices: &str,
    dtype: ComputeDtype,
    iters: usize,
    what: &str,
) -> Result<(device::Selected, burn::tensor::DType)> {
    if iters == 0 {
        bail!("--iters must be at least 1");
    }
    if devices != "gpu" {
        bail!("--{what} times the GPU's kernels: use --devices gpu");
    }
    let selected = device::select(Choice::Gpu)?;
    let dtype = selected.compute_dtype(dtype)?;
    Ok((selected, dtype))
}

/// `bench --matmul`: every kernel's time on each product, on the GPU, in this process.
pub fn matmul(list: &str, devices: &str, dtype: ComputeDtype, iters: usize, json: bool) -> Result<()> {
    let shapes = parse_sizes::<3>(list, "--matmul", "a product is MxKxN, e.g. 4096x4096x11008")?;
    let (selected, dtype) = kernel_bench_device(devices, dtype, iters, "matmul")?;
    if !json {
        outln!("{} ({})", selected.description, crate::gpu::tensor::dtype_name(dtype))?;
        outln!("{:<20} {:<9} {:<66} {:>9} {:>8} {:>9}", "M×K×N", "rhs", "kernel", "ms", "TFLOP/s", "rel. err")?;
    }
    let mut print = |r: crate::gpu::matmul::MatmulTiming| -> Result<()> {
        if json {
            return crate::io::error::write_json(&r, false);
        }
        let shape = format!("{}×{}×{}", r.shape[0], r.shape[1], r.shape[2]);
        match (r.ms, r.tflops, r.rel_err) {
            (Some(ms), Some(t), Some(e)) => {
                outln!("{shape:<20} {:<9} {:<66} {ms:>9.3} {t:>8.2} {e:>9.1e}", r.layout, r.kernel)?
            }
            _ => outln!(
                "{shape:<20} {:<9} {:<66} declined: {}",
                r.layout,
                r.kernel,
                r.declined.as_deref().unwrap_or("")
            )?,
        }
        Ok(())
    };
    crate::gpu::matmul::time_kernels(&selected.device, &shapes, dtype, iters, true, &mut print)
}

/// `bench --attention`: the separate kernels' and every flash kernel's time on each causal
/// attention, on the GPU, in this process.
pub fn attention(list: &str, devices: &str, dtype: ComputeDtype, iters: usize, json: bool) -> Result<()> {
    let shapes = parse_sizes::<4>(
        list,
        "--attention",
        "an attention is BxHxTxHD (windows, heads, tokens, head size), e.g. 8x32x512x128",
    )?;
    let (selected, dtype) = kernel_bench_device(devices, dtype, iters, "attention")?;
    if !json {
        outln!("{} ({})", selected.description, crate::gpu::tensor::dtype_name(dtype))?;
        outln!("{:<20} {:<12} {:>9} {:>9}", "B×H×T×HD", "kernel", "ms", "rel. err")?;
    }
    let mut print = |r: crate::gpu::attention::AttentionTiming| -> Result<()> {
        if json {
            return crate::io::error::write_json(&r, false);
        }
        let shape = format!("{}×{}×{}×{}", r.shape[0], r.shape[1], r.shape[2], r.shape[3]);
        match (r.ms, r.rel_err) {
            (Some(ms), Some(e)) => outln!("{shape:<20} {:<12} {ms:>9.3} {e:>9.1e}", r.kernel)?,
            _ => outln!("{shape:<20} {:<12} declined: {}", r.kernel, r.declined.as_deref().unwrap_or(""))?,
        }
        Ok(())
    };
    crate::gpu::attention::time_kernels(
        &selected.device,
        &shapes,
        dtype,
        iters,
        &crate::model::attention_separate,
        &mut print,
    )
}

/// One row-pruning path's time on one weight in `bench --prune-rows`.
#[derive(Debug, Serialize, Deserialize)]
pub struct PruneRowsTiming {
    /// [rows, cols] of the weight.
    pub shape: [usize; 2],
    /// `magnitude` (|w|) or `wanda` (|w|·√scaler).
    pub score: String,
    /// Which of the scores equal to a row's cut go first: `earlier` (`row`) or `later`
    /// (`rows-variable`, NeuroAL's row step).
    pub ties: String,
    /// The selection's digit walk (`NEUROAL_SELECT_WALK`): `serial` or `two-level`.
    pub walk: String,
    /// Copies of the selection's first-digit histogram (`NEUROAL_SELECT_COPIES`).
    pub copies: u32,
    /// `prune_rows` (the one shader, the weight only: NeuroAL's candidates), `prune_rows+mask`
    /// (the final prune's), `score+select+mask` (the three shaders it fuses, in f32).
    pub kernel: String,
    pub ms: Option<f64>,
    /// One read and one write of the weight as stored, per second.
    pub gb_per_s: Option<f64>,
    /// ‖w − w_3‖ / ‖w_3‖ against the three shaders' pruned weight with the default selection:
    /// 0 where the paths and selections agree.
    pub rel_err: Option<f64>,
    pub declined: Option<String>,
}

/// The row pruning's timed case (`bench --prune-rows`, `neuroal tune`): a random weight
/// [rows, cols] in the compute dtype, a random Wanda scaler, and half of each row to prune.
pub(crate) struct RowPruningCase {
    pub w: burn::tensor::Tensor<2>,
    pub scaler: burn::tensor::Tensor<1>,
    pub k: Vec<usize>,
}

impl RowPruningCase {
    pub(crate) fn random(
        device: &burn::tensor::Device,
        [rows, cols]: [usize; 2],
        dtype: burn::tensor::DType,
    ) -> RowPruningCase {
        use burn::tensor::{Distribution, Tensor};
        let w = Tensor::<2>::random([rows, cols], Distribution::Uniform(-1.0, 1.0), device).cast(dtype);
        let scaler = Tensor::<1>::random([cols], Distribution::Uniform(0.0, 4.0), device);
        RowPruningCase { w, scaler, k: vec![cols / 2; rows] }
    }

    /// `prune_rows.wgsl` on it (Wanda's scores where `wanda`, else magnitude's): the pruned
    /// weight, or why it declined.
    pub(crate) fn prune(
        &self,
        shaders: &crate::gpu::kernels::Shaders,
        wanda: bool,
        masked: bool,
        ties: crate::gpu::kernels::Ties,
    ) -> std::result::Result<burn::tensor::Tensor<2>, String> {
        shaders
            .prune_rows(self.w.clone(), wanda.then(|| self.scaler.clone()), &self.k, masked, ties)
            .map(|(pruned, _)| pruned)
            .ok_or_else(|| {
                format!("no row-pruning shader for {} weights", crate::gpu::tensor::dtype_name(self.w.dtype()))
            })
    }
}

/// `bench --prune-rows`: the GPU's row pruning (magnitude and Wanda, both tie orders) at half
/// of each row, on random weights of each shape, in this process: the shader the search runs
/// once per linear and candidate, the final prune's (with its mask) and the three separate
/// shaders it fuses; with each variant of the selection (`kernels::Select`), or those
/// `NEUROAL_SELECT_WALK` and `NEUROAL_SELECT_COPIES` leave.
pub fn prune_rows(list: &str, devices: &str, dtype: ComputeDtype, iters: usize, json: bool) -> Result<()> {
    use crate::gpu::kernels::Ties;
    use burn::tensor::DType;
    let shapes = parse_sizes::<2>(list, "--prune-rows", "a weight is ROWSxCOLS, e.g. 11008x4096")?;
    let (selected, dtype) = kernel_bench_device(devices, dtype, iters, "prune-rows")?;
    use crate::gpu::kernels::Select;
    let shaders = &selected.gpu.as_deref().ok_or_else(|| err!("--prune-rows: the device is no GPU"))?.shaders;
    let selects = crate::gpu::kernels::selects_left_open(shaders.select());
    if !json {
        outln!("{} ({})", selected.description, crate::gpu::tensor::dtype_name(dtype))?;
        outln!(
            "{:<14} {:<10} {:<8} {:<10} {:>6} {:<18} {:>9} {:>8} {:>9}",
            "rows×cols",
            "score",
            "ties",
            "walk",
            "copies",
            "kernel",
            "ms",
            "GB/s",
            "rel. err"
        )?;
    }
    let device = &selected.device;
    for &[rows, cols] in &shapes {
        let case = RowPruningCase::random(device, [rows, cols], dtype);
        let bytes = 2.0 * (rows * cols * dtype.size()) as f64;
        for (score, wanda) in [("magnitude", false), ("wanda", true)] {
            let case = &case;
            for (ties, name) in [(Ties::EarlierFirst, "earlier"), (Ties::LaterFirst, "later")] {
                let three = || {
                    let w32 = case.w.clone().cast(DType::F32);
                    let scaler = wanda.then(|| case.scaler.clone());
                    let mask = shaders.select_lowest(shaders.score(w32.clone(), scaler), &case.k, ties);
                    shaders.apply_mask(w32, mask)
                };
                shaders.set_select(Select::DEFAULT);
                let reference = three();
                for &select in &selects {
                    shaders.set_select(select);
                    for kernel in ["prune_rows", "prune_rows+mask", "score+select+mask"] {
                        let run = || match kernel {
                            "score+select+mask" => Ok(three()),
                            _ => case.prune(shaders, wanda, kernel == "prune_rows+mask", ties),
                        };
                        let timing = |ms: Option<f64>, rel_err, declined| PruneRowsTiming {
                            shape: [rows, cols],
                            score: score.into(),
                            ties: name.into(),
                            walk: select.walk.name().into(),
                            copies: select.copies,
                            kernel: kernel.into(),
                            ms,
                            gb_per_s: ms.map(|ms| bytes / ms / 1e6),
                            rel_err,
                            declined,
                        };
                        let r = match time_kernel(device, iters, &reference, run)? {
                            Ok((ms, rel_err)) => timing(Some(ms), Some(rel_err), None),
                            Err(why) => timing(None, None, Some(why)),
                        };
                        print_prune_rows(&r, json)?;
                    }
                }
            }
        }
    }
    Ok(())
}

/// One row of `bench --prune-rows`: a JSON line, or a line of the table.
fn print_prune_rows(r: &PruneRowsTiming, json: bool) -> Result<()> {
    if json {
        return crate::io::error::write_json(r, false);
    }
    let shape = format!("{}×{}", r.shape[0], r.shape[1]);
    let (score, name, walk, copies, kernel) = (&r.score, &r.ties, &r.walk, r.copies, &r.kernel);
    match (r.ms, r.gb_per_s, r.rel_err) {
        (Some(ms), Some(g), Some(e)) => {
            outln!("{shape:<14} {score:<10} {name:<8} {walk:<10} {copies:>6} {kernel:<18} {ms:>9.3} {g:>8.1} {e:>9.1e}")
        }
        _ => outln!(
            "{shape:<14} {score:<10} {name:<8} {walk:<10} {copies:>6} {kernel:<18} declined: {}",
            r.declined.as_deref().unwrap_or("")
        ),
    }
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

/// What `--prune-sparsity` times: NeuroAL over Wanda at this sparsity on random tokens.
#[derive(Clone, Copy, Debug)]
pub struct PruneBench {
    pub sparsity: f64,
    pub nsamples: usize,
    pub search_nsamples: usize,
    /// Candidates whose dense passes share a batch (0: the prune's own choice).
    pub search_batch: usize,
}

/// NeuroAL (block and row steps) over Wanda on token ids, timed, then the pruned checkpoint's
/// writing: what `bench --prune-sparsity` measures. `scratch` receives the search's progress
/// files and the checkpoint.
pub fn bench_neuroal(model: &Model, ids: &[u32], seqlen: usize, p: &PruneBench, scratch: &Path) -> Result<BenchPrune> {
    use crate::prune::plan::{Work, dense_batch, memory_run};
    use crate::prune::settings::{PruneSettings, TopUpKind};
    let settings = PruneSettings {
        sparsity: Some(p.sparsity),
        nsamples: p.nsamples,
        seqlen: Some(seqlen),
        top_up: TopUpKind::Neuroal,
        search_nsamples: p.search_nsamples,
        search_batch: p.search_batch,
        device: Choice::Cpu,
        dtype: ComputeDtype::F32,
        ..PruneSettings::default()
    };
    let checked = settings.check()?;
    let saved = Progress::open(scratch, State::Ready(serde_json::json!({ "bench": true })), false)?;
    crate::io::faults::fault("bench-prune-started");
    let starts = crate::prune::calib::draw_windows(ids.len(), seqlen, p.nsamples, 0)?;
    let windows = crate::prune::calib::gather_windows(ids, &starts, seqlen);
    let (on_cpu, shapes) = (crate::model::on_cpu(&model.device), model.specs.largest().shapes());
    let work = Work {
        step: checked.step,
        sparsity: checked.sparsity,
        seqlen,
        hessians: false,
        on_cpu,
        shapes: &shapes,
        windows_run: true,
    };
    let mut estimate = memory::Run {
        dtype_bytes: model.dtype.size() as u128,
        stacked_params: crate::gpu::fused::stacked_params(
            &model.specs.largest().fused_groups(),
            model.dtype,
            model.gpu.as_ref().map(|g| &g.fused),
        ),
        ..memory_run(&settings, &work)
    };
    estimate.dense_batch = dense_batch(&settings, !on_cpu, &model.config, &shapes, &estimate);
    let plan = SearchPlan { at_once: estimate.passes_at_once, dense_batch: estimate.dense_batch };
    let t = Instant::now();
    let trace = Trace::from_env();
    let calibrated = Calibrated { model, ids, windows: &windows, seqlen, trace: &trace };
    let topup = choose_map(&calibrated, &settings, &checked, &saved, plan)?;
    let search_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let map = &topup.map;
    let map_of = |b: usize, l: usize| map[b][l].clone();
    let pipeline = Pipeline {
        model,
        windows: &windows,
        seqlen,
        pruner: checked.pruner.as_ref(),
        pattern: &topup.pattern,
        sparsity: &map_of,
        at_once: plan.at_once,
        refine: checked.refine,
        trace: &trace,
    };
    let masks = prune_resumable(&pipeline, Vec::new(), &mut |_, _| Ok(()))?;
    let prune_s = t.elapsed().as_secs_f64();
    trace.report("bench prune");
    // What a user waits for after the prune: the pruned checkpoint written (into `scratch`).
    let t = Instant::now();
    let written = scratch.join("checkpoint");
    std::fs::create_dir_all(&written)
        .map_err(|e| err!("cannot create {}: {}", written.display(), crate::io::error::io_words(&e)))?;
    write_checkpoint(&model.checkpoint, &masks, &written)?;
    let write_s = t.elapsed().as_secs_f64();
    let search = topup.search.as_ref();
    Ok(BenchPrune {
        dense_batch: estimate.dense_batch,
        search_s,
        prune_s,
        write_s,
        lambda_block: search.and_then(|s| s.lambda_block),
        lambda_row: search.and_then(|s| s.lambda_row),
        estimate_mib: memory::total_mib(&memory::prune_parts(&model.config, &shapes, &estimate)),
    })
}

pub fn print_table(rows: &[BenchRow]) -> Result<()> {
    outln!(
        "{:<48} {:>7} {:>6} {:>12} {:>12} {:>10} {:>16} {:>9} {:>9} {:>9} {:>9} {:>7} {:>7} {:>6}",
        "device",
        "seqlen",
        "batch",
        "tokens/s",
        "ms/forward",
        "host MiB",
        "GPU MiB fwd/prn",
        "est. MiB",
        "search s",
        "prune s",
        "write s",
        "λ blk",
        "λ row",
        "dense"
    )?;
    let opt = |v: Option<f64>, p: usize| v.map_or("-".to_string(), |x| format!("{x:.p$}"));
    for r in rows {
        let gpu = match (r.forward_gpu_mib, r.prune_gpu_mib) {
            (None, None) => "-".to_string(),
            (f, p) => format!("{} / {}", opt(f, 0), opt(p, 0)),
        };
        outln!(
            "{:<48} {:>7} {:>6} {:>12.0} {:>12.1} {:>10.0} {:>16} {:>9} {:>9} {:>9} {:>9} {:>7} {:>7} {:>6}",
            r.device,
            r.seqlen,
            r.batch,
            r.tokens_per_s,
            r.ms_per_forward,
            r.peak_rss_mib,
            gpu,
            opt(r.prune_estimate_mib, 0),
            opt(r.search_s, 1),
            opt(r.prune_s, 1),
            opt(r.write_s, 1),
            opt(r.lambda_block, 2),
            opt(r.lambda_row, 2),
            r.dense_batch.map_or("-".to_string(), |k| k.to_string())
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::checkpoint::decode_f32;

    #[test]
    fn random_matrices_made_in_pieces_equal_the_stream_drawn_in_order() {
        // The reference: the stream drawn one value at a time from its seed, skipping `first`.
        let (first, n, a) = (5u64, 1000usize, 0.25f64);
        let mut rng = crate::rng::SplitMix64::new(SEED);
        for _ in 0..first {
            rng.next_u64();
        }
        let want: Vec<u8> = (0..n)
            .flat_map(|_| {
                let u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
                half::f16::from_f64((2.0 * u - 1.0) * a).to_le_bytes()
            })
            .collect();
        for piece in [1, 7, 999, 1000, 1 << 16] {
            assert_eq!(uniform_f16(first, n, a, piece), want, "pieces of {piece}");
        }
        let values: Vec<f32> = want.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect();
        assert!(
            values.iter().all(|v| v.abs() <= 0.25)
                && values.iter().any(|&v| v > 0.2)
                && values.iter().any(|&v| v < -0.2)
        );
    }

    #[test]
    fn kernel_bench_sizes_parse_or_get_one_line() {
        assert_eq!(
            parse_sizes::<3>("4096x4096x11008, 2048×2048×32000", "--matmul", "MxKxN").unwrap(),
            vec![[4096, 4096, 11008], [2048, 2048, 32000]]
        );
        assert_eq!(parse_sizes::<4>("8x32x512x128", "--attention", "BxHxTxHD").unwrap(), vec![[8, 32, 512, 128]]);
        for bad in ["4096x4096", "0x1x2", "ax1x2", "1x2x3x4", "", "1x2x3,"] {
            let e = parse_sizes::<3>(bad, "--matmul", "a product is MxKxN").unwrap_err().to_string();
            assert!(e.starts_with("--matmul") && e.contains("MxKxN") && !e.contains('\n'), "{bad}: {e}");
        }
    }

    #[test]
    fn synthetic_checkpoints_hold_what_each_family_declares() {
        // Every shape is a config the families accept.
        let parse = |s: &Shape| synthetic_config(s, 1).unwrap().1;
        for s in &SHAPES {
            assert_eq!(parse(s).num_layers, 1, "{}", s.name);
        }
        // The published shapes' prunable linears per block, by hand: LLaMA-2-7B 202 M,
        // OPT-6.7B 201 M, Phi-2 78.6 M.
        for (name, per_block) in [
            ("llama2-7b", 4 * 4096 * 4096 + 3 * 4096 * 11008),
            ("opt-6.7b", 4 * 4096 * 4096 + 2 * 4096 * 16384),
            ("phi-2", 4 * 2560 * 2560 + 2 * 2560 * 10240),
            // Qwen3-0.6B 15.7 M and 4B 101 M (head_dim 128: q is wider than hidden), Gemma 3 1B
            // 26.8 M (4 heads of 256, one kv head), Phi-4-mini 101 M (fused qkv 5120 and
            // gate_up 16384 rows).
            ("qwen3-0.6b", 2 * 2048 * 1024 + 2 * 1024 * 1024 + 3 * 3072 * 1024),
            ("qwen3-4b", 2 * 4096 * 2560 + 2 * 1024 * 2560 + 3 * 9728 * 2560),
            ("gemma3-1b", 2 * 1024 * 1152 + 2 * 256 * 1152 + 3 * 6912 * 1152),
            ("phi-4-mini", (5120 + 3072 + 16384 + 8192) * 3072),
            // Qwen3-30B-A3B 623 M: attention 18.9 M, 128 experts of 3 × 768 × 2048.
            ("qwen3-30b-a3b", 2 * 4096 * 2048 + 2 * 512 * 2048 + 128 * 3 * 768 * 2048),
        ] {
            let n: usize = crate::model::Specs::of(&parse(&shape(name).unwrap()))
                .largest()
                .shapes()
                .iter()
                .map(|s| s[0] * s[1])
                .sum();
            assert_eq!(n, per_block, "{name}");
        }
        for name in ["tiny", "tiny-opt", "tiny-phi"] {
            let dir = std::env::temp_dir().join(format!("neuroal-synthetic-test-{}-{name}", std::process::id()));
            write_synthetic(&dir, &shape(name).unwrap(), 2).unwrap();
            // The up-front check passes: every tensor the forward loads, with its shape.
            let (config, ck) = crate::model::check_model_dir(&dir).unwrap();
            assert_eq!(config.num_layers, 2);
            assert_eq!(config.dtype.as_deref(), Some("float16"));
            assert_eq!(ck.shards.len(), 3, "{name}: one shard outside the blocks, one per block");
            for shard in &ck.shards {
                assert_eq!(
                    shard.metadata.metadata().as_ref().and_then(|m| m.get("format")).map(String::as_str),
                    Some("pt"),
                    "{name}: the format tag transformers 4.x asks for"
                );
            }
            for (t, dims) in crate::model::checkpoint_tensors(&config, false) {
                let (shard, info) = ck.info(&t).unwrap();
                assert_eq!(info.dtype, safetensors::Dtype::F16);
                let v = decode_f32(shard.bytes(info), info.dtype).unwrap();
                if t.ends_with(".bias") {
                    assert!(v.iter().all(|&x| x == 0.0), "{t}");
                } else if dims.len() == 1 {
                    assert!(v.iter().all(|&x| x == 1.0), "{t}");
                } else {
                    // Uniform on ±√(3/fan_in): inside the bound, variance 1/fan_in.
                    let a = (3.0 / dims[1] as f64).sqrt();
                    assert!(v.iter().all(|&x| (x as f64).abs() <= a * 1.001), "{t}");
                    let var = v.iter().map(|&x| (x as f64).powi(2)).sum::<f64>() / v.len() as f64;
                    assert!(
                        (var * dims[1] as f64 - 1.0).abs() < 0.1,
                        "{t}: variance × fan_in = {}",
                        var * dims[1] as f64
                    );
                }
            }
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }
}
