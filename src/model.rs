//! The LLaMA-family decoder (LLaMA 1/2/3, Mistral, Qwen2), read top to bottom.
//!
//! The three families share one block: pre-norm attention with rotary embeddings and optional
//! grouped-query heads, then a SwiGLU MLP. Their declared differences are all in [`Config`]:
//! q/k/v biases (Qwen2), tied embeddings, rope scaling (`llama3`), and Mistral's sliding window,
//! which is refused rather than approximated when a sequence does not fit in it.
//!
//! Blocks are loaded one at a time from the memory-mapped checkpoint, so the pruner can stream
//! them: `embed` → `Block::forward` for each block → `head`.

use std::path::Path;

use burn::tensor::activation::{log_softmax, silu, softmax};
use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::config::{Config, RopeScaling};
use crate::error::Result;
use crate::weights::{Checkpoint, HostTensor};
use crate::{bail, err};

/// Reads a tensor back to the host as f32; a failed readback is an error naming `what`, never
/// an empty vector.
pub fn host_f32<const D: usize>(t: Tensor<D>, what: &str) -> Result<Vec<f32>> {
    let n = t.shape().num_elements();
    let data = t.try_into_data().map_err(|e| err!("{what}: reading the result back from the device failed: {}", crate::error::one_line(&e.to_string())))?;
    let v = data.try_into_vec::<f32>().map_err(|e| err!("{what}: the device returned unreadable data: {}", crate::error::one_line(&e.to_string())))?;
    if v.len() != n {
        bail!("{what}: the device returned {} values, expected {n}", v.len());
    }
    Ok(v)
}

/// Canonical names of a block's linear layers, in execution order.
pub const LINEARS: [&str; 7] = [
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
];

pub const Q: usize = 0;
pub const K: usize = 1;
pub const V: usize = 2;
pub const O: usize = 3;
pub const GATE: usize = 4;
pub const UP: usize = 5;
pub const DOWN: usize = 6;

pub struct Linear {
    /// [out, in], as stored by Hugging Face.
    pub weight: Tensor<2>,
    pub bias: Option<Tensor<1>>,
}

impl Linear {
    /// x [.., in] → [.., out]
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let [b, t, d_in] = x.dims();
        let y = x.reshape([b * t, d_in]).matmul(self.weight.clone().transpose());
        let y = match &self.bias {
            Some(bias) => y + bias.clone().unsqueeze::<2>(),
            None => y,
        };
        let d_out = y.dims()[1];
        y.reshape([b, t, d_out])
    }
}

pub struct Block {
    pub index: usize,
    pub input_norm: Tensor<1>,
    pub post_attention_norm: Tensor<1>,
    /// In [`LINEARS`] order.
    pub linears: Vec<Linear>,
}

/// Called with (linear index, that linear's input) before each linear runs; q/k/v and gate/up
/// share their input, so the hook sees it once per linear, which is what statistics need.
pub type InputHook<'a> = &'a mut dyn FnMut(usize, &Tensor<3>);

pub struct Model {
    pub config: Config,
    pub checkpoint: Checkpoint,
    pub device: Device,
    pub embed_tokens: Tensor<2>,
    pub final_norm: Tensor<1>,
    pub lm_head: Tensor<2>,
    rope_inv_freq: Vec<f32>,
}

impl Model {
    /// Opens a model folder and loads what every pass needs (embeddings, final norm, head);
    /// blocks stay on disk until [`Model::load_block`].
    pub fn open(dir: &Path, device: &Device) -> Result<Model> {
        let (config, checkpoint) = check_model_dir(dir)?;
        let (v, d) = (config.vocab_size, config.hidden_size);
        let embed = checkpoint.load("model.embed_tokens.weight", &[v, d])?;
        let embed_tokens = to_device2(embed, device);
        let final_norm = to_device1(checkpoint.load("model.norm.weight", &[d])?, device);
        let lm_head = if checkpoint.contains("lm_head.weight") {
            to_device2(checkpoint.load("lm_head.weight", &[v, d])?, device)
        } else if config.tie_word_embeddings {
            embed_tokens.clone()
        } else {
            bail!("{}: tensor \"lm_head.weight\" not found and tie_word_embeddings is false", dir.display());
        };
        let rope_inv_freq = rope_inv_freq(&config);
        Ok(Model { config, checkpoint, device: device.clone(), embed_tokens, final_norm, lm_head, rope_inv_freq })
    }

    pub fn num_blocks(&self) -> usize {
        self.config.num_layers
    }

    /// Shape [out, in] of each linear of a block, in [`LINEARS`] order.
    pub fn linear_shapes(&self) -> [[usize; 2]; 7] {
        linear_shapes(&self.config)
    }

    pub fn linear_name(block: usize, linear: usize) -> String {
        format!("model.layers.{block}.{}.weight", LINEARS[linear])
    }

    pub fn load_block(&self, index: usize) -> Result<Block> {
        let ck = &self.checkpoint;
        let d = self.config.hidden_size;
        let prefix = format!("model.layers.{index}");
        let norm = |name: &str| ck.load(&format!("{prefix}.{name}.weight"), &[d]).map(|t| to_device1(t, &self.device));
        let mut linears = Vec::with_capacity(LINEARS.len());
        for (i, shape) in self.linear_shapes().iter().enumerate() {
            let weight = to_device2(ck.load(&Model::linear_name(index, i), shape)?, &self.device);
            let bias = if self.config.qkv_bias && i <= V {
                let name = format!("{prefix}.{}.bias", LINEARS[i]);
                Some(to_device1(ck.load(&name, &[shape[0]])?, &self.device))
            } else {
                None
            };
            linears.push(Linear { weight, bias });
        }
        Ok(Block {
            index,
            input_norm: norm("input_layernorm")?,
            post_attention_norm: norm("post_attention_layernorm")?,
            linears,
        })
    }

    /// Token ids [b, t] → hidden states [b, t, d].
    pub fn embed(&self, ids: &[u32], batch: usize) -> Tensor<3> {
        let t = ids.len() / batch;
        let idx = Tensor::<1, Int>::from_data(
            TensorData::new(ids.iter().map(|&i| i as i64).collect::<Vec<_>>(), [ids.len()]),
            &self.device,
        );
        self.embed_tokens.clone().select(0, idx).reshape([batch, t, self.config.hidden_size])
    }

    /// Final norm and LM head: hidden [b, t, d] → logits [b, t, vocab].
    pub fn head(&self, hidden: Tensor<3>) -> Tensor<3> {
        let x = rms_norm(hidden, &self.final_norm, self.config.rms_norm_eps);
        Linear { weight: self.lm_head.clone(), bias: None }.forward(x)
    }

    /// cos and sin tables [t, head_dim] for positions 0..t, computed in f32 as transformers does.
    pub fn rope(&self, t: usize) -> Rope {
        let hd = self.config.head_dim;
        let mut cos = Vec::with_capacity(t * hd);
        let mut sin = Vec::with_capacity(t * hd);
        for pos in 0..t {
            for j in 0..hd {
                let angle = pos as f32 * self.rope_inv_freq[j % (hd / 2)];
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
        Rope {
            cos: Tensor::from_data(TensorData::new(cos, [t, hd]), &self.device),
            sin: Tensor::from_data(TensorData::new(sin, [t, hd]), &self.device),
        }
    }

    /// Checks that windows of `t` tokens run exactly on this model.
    pub fn check_seqlen(&self, t: usize) -> Result<()> {
        self.config.check_seqlen(t)
    }

    /// Checks that every token id has a row in the embeddings (a tokenizer that does not
    /// belong to the model gives larger ids).
    pub fn check_ids(&self, ids: &[u32]) -> Result<()> {
        match ids.iter().max() {
            Some(&m) if m as usize >= self.config.vocab_size => {
                bail!("token id {m} is outside the model's vocabulary (vocab_size {})", self.config.vocab_size)
            }
            _ => Ok(()),
        }
    }

    /// Whole forward pass: ids [b, t] → logits [b, t, vocab], with every block loaded in turn.
    pub fn forward(&self, ids: &[u32], batch: usize) -> Result<Tensor<3>> {
        let t = ids.len() / batch;
        let rope = self.rope(t);
        let mut h = self.embed(ids, batch);
        for i in 0..self.num_blocks() {
            h = self.load_block(i)?.forward(h, &rope, &self.config, None);
        }
        Ok(self.head(h))
    }
}

pub struct Rope {
    cos: Tensor<2>,
    sin: Tensor<2>,
}

impl Rope {
    /// x [b, heads, t, hd] rotated as transformers' `rotate_half` convention.
    fn apply(&self, x: Tensor<4>) -> Tensor<4> {
        let [b, h, t, hd] = x.dims();
        let half = hd / 2;
        let x1 = x.clone().slice([0..b, 0..h, 0..t, 0..half]);
        let x2 = x.clone().slice([0..b, 0..h, 0..t, half..hd]);
        let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
        let cos = self.cos.clone().unsqueeze::<4>();
        let sin = self.sin.clone().unsqueeze::<4>();
        x * cos + rotated * sin
    }
}

impl Block {
    /// hidden [b, t, d] → hidden [b, t, d]. `hook` sees each linear's input.
    pub fn forward(&self, h: Tensor<3>, rope: &Rope, c: &Config, mut hook: Option<InputHook>) -> Tensor<3> {
        let [b, t, _] = h.dims();
        let (nh, nkv, hd) = (c.num_heads, c.num_kv_heads, c.head_dim);
        let mut run = |i: usize, x: &Tensor<3>| {
            if let Some(hook) = hook.as_mut() {
                hook(i, x);
            }
            self.linears[i].forward(x.clone())
        };

        let x = rms_norm(h.clone(), &self.input_norm, c.rms_norm_eps);
        let heads = |y: Tensor<3>, n: usize| y.reshape([b, t, n, hd]).swap_dims(1, 2);
        let q = rope.apply(heads(run(Q, &x), nh));
        let k = rope.apply(heads(run(K, &x), nkv));
        let v = heads(run(V, &x), nkv);
        let (k, v) = (repeat_kv(k, nh / nkv), repeat_kv(v, nh / nkv));
        let scores = q.matmul(k.swap_dims(2, 3)).div_scalar((hd as f64).sqrt());
        let probs = softmax(scores + causal_mask(t, &h.device()), 3);
        let attn = probs.matmul(v).swap_dims(1, 2).reshape([b, t, nh * hd]);
        let h = h + run(O, &attn);

        let x = rms_norm(h.clone(), &self.post_attention_norm, c.rms_norm_eps);
        let gated = silu(run(GATE, &x)) * run(UP, &x);
        h + run(DOWN, &gated)
    }
}

fn rms_norm(x: Tensor<3>, weight: &Tensor<1>, eps: f64) -> Tensor<3> {
    let inv_rms = x.clone().square().mean_dim(2).add_scalar(eps).sqrt().recip();
    x * inv_rms * weight.clone().unsqueeze::<3>()
}

/// [b, kv, t, hd] → [b, kv·groups, t, hd], each kv head repeated for its group of q heads.
fn repeat_kv(x: Tensor<4>, groups: usize) -> Tensor<4> {
    if groups == 1 {
        return x;
    }
    let [b, kv, t, hd] = x.dims();
    x.unsqueeze_dim::<5>(2).expand([b, kv, groups, t, hd]).reshape([b, kv * groups, t, hd])
}

/// Additive mask [1, 1, t, t]: 0 on and below the diagonal, a large negative above.
fn causal_mask(t: usize, device: &Device) -> Tensor<4> {
    let mut m = vec![0f32; t * t];
    for i in 0..t {
        for j in i + 1..t {
            m[i * t + j] = -1e9;
        }
    }
    Tensor::<2>::from_data(TensorData::new(m, [t, t]), device).unsqueeze::<4>()
}

/// Inverse RoPE frequencies, in f32 like transformers, with `llama3` scaling when configured.
fn rope_inv_freq(c: &Config) -> Vec<f32> {
    let hd = c.head_dim;
    let base = c.rope_theta as f32;
    let inv: Vec<f32> = (0..hd / 2).map(|i| 1.0 / base.powf((2 * i) as f32 / hd as f32)).collect();
    match c.rope_scaling {
        RopeScaling::None => inv,
        RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_positions } => {
            let (factor, low, high, old) =
                (factor as f32, low_freq_factor as f32, high_freq_factor as f32, original_max_positions as f32);
            let low_wavelen = old / low;
            let high_wavelen = old / high;
            inv.iter()
                .map(|&f| {
                    let wavelen = 2.0 * std::f32::consts::PI / f;
                    let scaled = if wavelen > low_wavelen { f / factor } else { f };
                    let medium = !(wavelen < high_wavelen) && !(wavelen > low_wavelen);
                    if medium {
                        let smooth = (old / wavelen - low) / (high - low);
                        (1.0 - smooth) * scaled / factor + smooth * scaled
                    } else {
                        scaled
                    }
                })
                .collect()
        }
    }
}

/// Mean cross-entropy per sequence of predicting tokens 2..t from their prefixes:
/// logits [b, t, vocab], ids [b·t] → [b].
pub fn sequence_losses(logits: Tensor<3>, ids: &[u32], device: &Device) -> Result<Vec<f32>> {
    let [b, t, vocab] = logits.dims();
    let logp = log_softmax(logits.slice([0..b, 0..t - 1, 0..vocab]), 2);
    let targets: Vec<i64> = (0..b).flat_map(|s| ids[s * t + 1..(s + 1) * t].iter().map(|&i| i as i64)).collect();
    let targets = Tensor::<1, Int>::from_data(TensorData::new(targets, [b * (t - 1)]), device).reshape([b, t - 1, 1]);
    let picked = logp.gather(2, targets).reshape([b, t - 1]);
    host_f32(picked.mean_dim(1).neg(), "sequence losses")
}

/// Reads a model folder without a device and checks everything that can be checked cheaply:
/// the config, the weights' headers, the block count, and that every tensor the forward pass
/// loads is present with its shape. Errors surface here, before any device is opened.
pub fn check_model_dir(dir: &Path) -> Result<(Config, Checkpoint)> {
    if !dir.is_dir() {
        bail!("{}: model folder not found", dir.display());
    }
    let config_path = dir.join("config.json");
    if !config_path.exists() {
        bail!("{}: no config.json", dir.display());
    }
    let config = Config::from_file(&config_path)?;
    let checkpoint = Checkpoint::open(dir)?;
    check_layers(&config, &checkpoint)?;
    let (v, d) = (config.vocab_size, config.hidden_size);
    let mut required: Vec<(String, Vec<usize>)> = vec![("model.embed_tokens.weight".into(), vec![v, d]), ("model.norm.weight".into(), vec![d])];
    if checkpoint.contains("lm_head.weight") || !config.tie_word_embeddings {
        required.push(("lm_head.weight".into(), vec![v, d]));
    }
    let shapes = linear_shapes(&config);
    for b in 0..config.num_layers {
        for norm in ["input_layernorm", "post_attention_layernorm"] {
            required.push((format!("model.layers.{b}.{norm}.weight"), vec![d]));
        }
        for (i, shape) in shapes.iter().enumerate() {
            required.push((Model::linear_name(b, i), shape.to_vec()));
            if config.qkv_bias && i <= V {
                required.push((format!("model.layers.{b}.{}.bias", LINEARS[i]), vec![shape[0]]));
            }
        }
    }
    for (name, shape) in &required {
        let (_, info) = checkpoint.info(name)?;
        if info.shape != *shape {
            bail!("tensor \"{name}\" has shape {:?}, expected {shape:?}", info.shape);
        }
    }
    Ok((config, checkpoint))
}

/// Shape [out, in] of each linear of a block, in [`LINEARS`] order.
fn linear_shapes(c: &Config) -> [[usize; 2]; 7] {
    let (d, f) = (c.hidden_size, c.intermediate_size);
    let (q, kv) = (c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim);
    [[q, d], [kv, d], [kv, d], [d, q], [f, d], [f, d], [d, f]]
}

/// The block count the weights hold must be the config's `num_hidden_layers`: fewer would fail
/// half-way, more would leave blocks unpruned while the report says otherwise.
pub fn check_layers(config: &Config, checkpoint: &Checkpoint) -> Result<()> {
    let mut present: Vec<usize> = checkpoint
        .names
        .keys()
        .filter_map(|n| n.strip_prefix("model.layers.")?.split('.').next()?.parse::<usize>().ok())
        .collect();
    present.dedup();
    present.sort_unstable();
    present.dedup();
    let n = config.num_layers;
    let held = present.last().map(|&m| m + 1).unwrap_or(0);
    if held != n || present.len() != held {
        let what = match (present.first(), present.last()) {
            (Some(a), Some(b)) if present.len() == held => format!("{held} blocks (model.layers.{a} to {b})"),
            (Some(_), Some(_)) => format!("blocks {}", present.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(", ")),
            _ => "no blocks".to_string(),
        };
        bail!("{}: config.json says num_hidden_layers = {n}, but the weights hold {what}", checkpoint.dir.display());
    }
    Ok(())
}

fn to_device1(t: HostTensor, device: &Device) -> Tensor<1> {
    let n = t.data.len();
    Tensor::from_data(TensorData::new(t.data, [n]), device)
}

fn to_device2(t: HostTensor, device: &Device) -> Tensor<2> {
    let shape = [t.shape[0], t.shape[1]];
    Tensor::from_data(TensorData::new(t.data, shape), device)
}
