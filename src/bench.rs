//! `neuroal bench`: forward throughput, optionally a timed NeuroAL prune, and peak host memory
//! (and GPU memory where burn's runtime reports it) per device. Each device runs in a child
//! process so that one device's peak memory does not hide another's. `--synthetic SHAPE` first
//! writes a random checkpoint of a published shape (LLaMA-2-7B's blocks, say) to a temporary
//! folder, so anyone can rerun the numbers without Python or a download.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::device::{self, Choice, ComputeDtype};
use crate::memory::{peak_rss_mib, GpuPeak};
use crate::error::Result;
use crate::model::{Block, Model};
use crate::{bail, err};

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
    /// With `--prune-sparsity`: NeuroAL's search and the final prune, in seconds, and its λs.
    #[serde(default)]
    pub search_s: Option<f64>,
    #[serde(default)]
    pub prune_s: Option<f64>,
    #[serde(default)]
    pub lambda_block: Option<f64>,
    #[serde(default)]
    pub lambda_row: Option<f64>,
}

/// What `--prune-sparsity` times: NeuroAL over Wanda at this sparsity on random tokens.
#[derive(Clone, Copy, Debug)]
pub struct PruneBench {
    pub sparsity: f64,
    pub nsamples: usize,
    pub search_nsamples: usize,
}

/// A published LLaMA-family shape for synthetic checkpoints.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Shape {
    pub name: &'static str,
    pub hidden: usize,
    pub intermediate: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub vocab: usize,
    pub max_positions: usize,
}

pub const SHAPES: [Shape; 4] = [
    Shape { name: "llama2-7b", hidden: 4096, intermediate: 11008, heads: 32, kv_heads: 32, vocab: 32000, max_positions: 4096 },
    Shape { name: "llama3-8b", hidden: 4096, intermediate: 14336, heads: 32, kv_heads: 8, vocab: 128256, max_positions: 8192 },
    Shape { name: "llama-0.8b", hidden: 2048, intermediate: 5632, heads: 32, kv_heads: 4, vocab: 32000, max_positions: 2048 },
    Shape { name: "tiny", hidden: 64, intermediate: 172, heads: 4, kv_heads: 2, vocab: 384, max_positions: 256 },
];

pub fn shape(name: &str) -> Result<Shape> {
    match SHAPES.iter().find(|s| s.name == name) {
        Some(s) => Ok(*s),
        None => bail!("unknown --synthetic shape \"{name}\" (known: {})", SHAPES.iter().map(|s| s.name).collect::<Vec<_>>().join(", ")),
    }
}

/// Writes a random f16 checkpoint of `shape` with `blocks` blocks into `dir`: config.json, one
/// shard per block plus one for the embeddings, norm and head, and the index. Weights are
/// uniform with unit-variance-preserving scale (±√(3/fan_in)), norms 1; seeded, so every run
/// measures the same model.
pub fn write_synthetic(dir: &Path, shape: &Shape, blocks: usize) -> Result<()> {
    use safetensors::tensor::{Dtype, TensorView};
    if blocks == 0 {
        bail!("--blocks must be at least 1");
    }
    std::fs::create_dir_all(dir).map_err(|e| err!("cannot create {}: {e}", dir.display()))?;
    let (d, f, hd) = (shape.hidden, shape.intermediate, shape.hidden / shape.heads);
    let config = serde_json::json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": shape.vocab,
        "hidden_size": d, "intermediate_size": f, "num_hidden_layers": blocks,
        "num_attention_heads": shape.heads, "num_key_value_heads": shape.kv_heads,
        "max_position_embeddings": shape.max_positions, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "tie_word_embeddings": false, "torch_dtype": "float16",
    });
    std::fs::write(dir.join("config.json"), serde_json::to_string_pretty(&config).unwrap_or_default())
        .map_err(|e| err!("cannot write config.json: {e}"))?;
    let mut rng = crate::calib::SplitMix64::new(0x5eed);
    let mut random = |n: usize, fan_in: usize| -> Vec<u8> {
        let a = (3.0 / fan_in as f64).sqrt();
        let mut out = Vec::with_capacity(n * 2);
        for _ in 0..n {
            let u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
            out.extend_from_slice(&half::f16::from_f64((2.0 * u - 1.0) * a).to_le_bytes());
        }
        out
    };
    let ones = |n: usize| -> Vec<u8> { (0..n).flat_map(|_| half::f16::ONE.to_le_bytes()).collect() };
    let shards = blocks + 1;
    let mut weight_map = serde_json::Map::new();
    let mut write_shard = |k: usize, tensors: Vec<(String, Vec<usize>, Vec<u8>)>| -> Result<()> {
        let file = format!("model-{:05}-of-{shards:05}.safetensors", k + 1);
        let views = tensors
            .iter()
            .map(|(n, s, b)| TensorView::new(Dtype::F16, s.clone(), b).map(|v| (n.clone(), v)))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| err!("cannot build tensor views: {e}"))?;
        for (n, _, _) in &tensors {
            weight_map.insert(n.clone(), serde_json::Value::String(file.clone()));
        }
        safetensors::serialize_to_file(views, None, &dir.join(&file)).map_err(|e| err!("cannot write {file}: {e}"))
    };
    write_shard(
        0,
        vec![
            ("model.embed_tokens.weight".into(), vec![shape.vocab, d], random(shape.vocab * d, d)),
            ("model.norm.weight".into(), vec![d], ones(d)),
            ("lm_head.weight".into(), vec![shape.vocab, d], random(shape.vocab * d, d)),
        ],
    )?;
    for b in 0..blocks {
        let p = format!("model.layers.{b}");
        let (q, kv) = (shape.heads * hd, shape.kv_heads * hd);
        write_shard(
            b + 1,
            vec![
                (format!("{p}.input_layernorm.weight"), vec![d], ones(d)),
                (format!("{p}.post_attention_layernorm.weight"), vec![d], ones(d)),
                (format!("{p}.self_attn.q_proj.weight"), vec![q, d], random(q * d, d)),
                (format!("{p}.self_attn.k_proj.weight"), vec![kv, d], random(kv * d, d)),
                (format!("{p}.self_attn.v_proj.weight"), vec![kv, d], random(kv * d, d)),
                (format!("{p}.self_attn.o_proj.weight"), vec![d, q], random(d * q, q)),
                (format!("{p}.mlp.gate_proj.weight"), vec![f, d], random(f * d, d)),
                (format!("{p}.mlp.up_proj.weight"), vec![f, d], random(f * d, d)),
                (format!("{p}.mlp.down_proj.weight"), vec![d, f], random(d * f, f)),
            ],
        )?;
    }
    let index = serde_json::json!({ "metadata": {}, "weight_map": weight_map });
    std::fs::write(dir.join("model.safetensors.index.json"), serde_json::to_string_pretty(&index).unwrap_or_default())
        .map_err(|e| err!("cannot write the index: {e}"))
}

#[allow(clippy::too_many_arguments)]
pub fn measure(model_dir: &Path, choice: Choice, dtype: ComputeDtype, seqlen: usize, batch: usize, iters: usize, prune: Option<PruneBench>) -> Result<BenchRow> {
    if batch == 0 || iters == 0 {
        bail!("--batch and --iters must be at least 1");
    }
    let selected = device::select(choice)?;
    let dtype = selected.compute_dtype(dtype)?;
    let model = Model::open_as(model_dir, &selected.device, dtype)?;
    model.check_seqlen(seqlen)?;
    let gpu = selected.is_gpu.then(|| GpuPeak::start(&selected.device));
    let blocks: Vec<Block> = model.blocks().collect::<Result<_>>()?;
    let rope = model.positions(seqlen);
    let vocab = model.config.vocab_size as u32;
    // Deterministic pseudo-random ids: throughput does not depend on which tokens they are.
    let ids: Vec<u32> = (0..batch * seqlen).map(|i| (i as u32).wrapping_mul(2_654_435_761) % vocab).collect();
    let forward = || -> Result<()> {
        let mut h = model.embed(&ids, batch);
        for block in &blocks {
            h = block.forward(h, &rope, None);
        }
        // Reading one value back waits for the device to finish the whole pass.
        crate::model::host_f32(model.head(h).sum(), "forward pass")?;
        Ok(())
    };
    forward()?;
    let start = Instant::now();
    for _ in 0..iters {
        forward()?;
    }
    let secs = start.elapsed().as_secs_f64();
    drop(blocks);
    let forward_gpu_mib = gpu.map(GpuPeak::finish).transpose()?;
    let (mut search_s, mut prune_s, mut lambda_block, mut lambda_row, mut prune_gpu_mib) = (None, None, None, None, None);
    if let Some(p) = prune {
        // The forward held every block at once; the prune's peak is measured from empty pools.
        let gpu = if selected.is_gpu {
            crate::kernels::release_unused(&selected.device).map_err(|e| err!("cannot release the GPU pools: {e}"))?;
            Some(GpuPeak::start(&selected.device))
        } else {
            None
        };
        // Random calibration tokens: the cost does not depend on which tokens they are.
        let mut rng = crate::calib::SplitMix64::new(7);
        let n = (p.nsamples.max(p.search_nsamples) + 1) * seqlen + 1;
        let ids: Vec<u32> = (0..n).map(|_| rng.below(vocab as u64) as u32).collect();
        let scratch = std::env::temp_dir().join(format!("neuroal-bench-{}", std::process::id()));
        let r = crate::prune::bench_neuroal(&model, &ids, seqlen, p.sparsity, p.nsamples, p.search_nsamples, &scratch);
        let _ = std::fs::remove_dir_all(&scratch);
        let (s, pr, lb, lr) = r?;
        (search_s, prune_s, lambda_block, lambda_row) = (Some(s), Some(pr), lb, lr);
        prune_gpu_mib = gpu.map(GpuPeak::finish).transpose()?;
    }
    Ok(BenchRow {
        device: format!("{} ({})", selected.description, crate::device::dtype_name(dtype)),
        seqlen,
        batch,
        tokens_per_s: (iters * batch * seqlen) as f64 / secs,
        ms_per_forward: secs * 1000.0 / iters as f64,
        peak_rss_mib: peak_rss_mib(),
        forward_gpu_mib,
        prune_gpu_mib,
        search_s,
        prune_s,
        lambda_block,
        lambda_row,
    })
}

#[allow(clippy::too_many_arguments)]
pub fn measure_in_child(model_dir: &Path, device: &str, dtype: ComputeDtype, seqlen: usize, batch: usize, iters: usize, prune: Option<PruneBench>) -> Result<BenchRow> {
    let exe = std::env::current_exe().map_err(|e| err!("cannot find own executable: {e}"))?;
    let mut cmd = Command::new(exe);
    cmd.args(["bench", "--single", "--devices", device, "--seqlen", &seqlen.to_string()])
        .args(["--batch", &batch.to_string(), "--iters", &iters.to_string(), "--model"])
        .arg(model_dir)
        .args(["--dtype", dtype.name()]);
    if let Some(p) = prune {
        cmd.args(["--prune-sparsity", &p.sparsity.to_string(), "--nsamples", &p.nsamples.to_string()])
            .args(["--search-nsamples", &p.search_nsamples.to_string()]);
    }
    let out = cmd
        .output()
        .map_err(|e| err!("cannot run the benchmark child: {e}"))?;
    if !out.status.success() {
        let msg = String::from_utf8_lossy(&out.stderr);
        bail!("bench on {device}: {}", msg.lines().last().unwrap_or("failed").trim_start_matches("error: "));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).map_err(|e| err!("bench on {device}: unreadable result ({e})"))
}

pub fn print_table(rows: &[BenchRow]) {
    println!(
        "{:<48} {:>7} {:>6} {:>12} {:>12} {:>10} {:>16} {:>9} {:>9} {:>7} {:>7}",
        "device", "seqlen", "batch", "tokens/s", "ms/forward", "host MiB", "GPU MiB fwd/prn", "search s", "prune s", "λ blk", "λ row"
    );
    let opt = |v: Option<f64>, p: usize| v.map_or("-".to_string(), |x| format!("{x:.p$}"));
    for r in rows {
        let gpu = match (r.forward_gpu_mib, r.prune_gpu_mib) {
            (None, None) => "-".to_string(),
            (f, p) => format!("{} / {}", opt(f, 0), opt(p, 0)),
        };
        println!(
            "{:<48} {:>7} {:>6} {:>12.0} {:>12.1} {:>10.0} {:>16} {:>9} {:>9} {:>7} {:>7}",
            r.device, r.seqlen, r.batch, r.tokens_per_s, r.ms_per_forward, r.peak_rss_mib, gpu,
            opt(r.search_s, 1), opt(r.prune_s, 1), opt(r.lambda_block, 2), opt(r.lambda_row, 2)
        );
    }
}
