//! Gemma 2 and Gemma 3 (its text model, `gemma3_text`), read top to bottom. A block normalises
//! both sublayers' inputs and outputs (four RMSNorms, each scaling by 1 + w in f32), attends
//! with scores scaled by `query_pre_attn_scalar`^-½ and, where the config caps them,
//! soft-capped (cap · tanh(s / cap)), some layers over a sliding window only (`layer_types`; by
//! default Gemma 2's even layers, and five of every six of Gemma 3's), and runs a GeGLU MLP
//! (gelu, tanh form). The token embeddings are multiplied by √hidden_size, rounded to the compute
//! dtype as transformers rounds it; a tied head's logits may be soft-capped too. Gemma 3 adds
//! per-head q/k norms (1 + w) before the rotation, and rotates its sliding layers with a RoPE
//! base of their own (`rope_local_base_freq`, never scaled), its global ones with `rope_theta`
//! and the config's `linear` scaling.
//!
//! A multimodal `gemma3` folder (Gemma3ForConditionalGeneration) is read as the text model it
//! holds: its `text_config`, its language model's tensors; the vision tower and projector are
//! written back untouched.

use std::sync::Arc;

use burn::tensor::{DType, Device, Tensor};
use serde::Deserialize;
use serde_json::Value;

use super::{
    Ends, Positions, RopeFreqs, Spec, TokenTable, attention_capped, gelu_tanh, llama, lm_head, rms_norm,
    rms_norm_heads, split_heads, to_device1,
};
use crate::gpu::context::Gpu;
use crate::io::checkpoint::Checkpoint;
use crate::io::error::Result;
use crate::model::sizes::{self, Sizes, need, positive, rope_field};
use crate::{bail, err};

/// The linears, in the LLaMA family's declared order (the same names and shapes).
const Q: usize = 0;
const K: usize = 1;
const V: usize = 2;
const O: usize = 3;
const GATE: usize = 4;
const UP: usize = 5;
const DOWN: usize = 6;

#[derive(Clone, Debug)]
pub struct Config {
    pub intermediate_size: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub query_pre_attn_scalar: f64,
    pub attn_softcap: Option<f64>,
    pub final_softcap: Option<f64>,
    pub sliding_window: Option<usize>,
    /// Per layer: whether it attends over the sliding window only.
    pub sliding_layers: Vec<bool>,
    pub attention_bias: bool,
    /// Gemma 3: q and k RMS-normalised per head before the rotation.
    pub qk_norm: bool,
    /// Gemma 3: the sliding layers' RoPE base.
    pub local_rope_theta: Option<f64>,
    /// The global layers' `linear` rope scaling factor (1 where none).
    pub rope_factor: f64,
}

#[derive(Deserialize)]
struct Raw {
    vocab_size: Option<usize>,
    hidden_size: Option<usize>,
    intermediate_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<usize>,
    num_key_value_heads: Option<usize>,
    max_position_embeddings: Option<usize>,
    rms_norm_eps: Option<f64>,
    query_pre_attn_scalar: Option<f64>,
    attn_logit_softcapping: Option<f64>,
    final_logit_softcapping: Option<f64>,
    sliding_window: Option<usize>,
    layer_types: Option<Vec<String>>,
    hidden_activation: Option<String>,
    hidden_act: Option<String>,
    attention_bias: Option<bool>,
    tie_word_embeddings: Option<bool>,
    rope_scaling: Option<Value>,
    rope_parameters: Option<Value>,
    rope_local_base_freq: Option<f64>,
    #[serde(alias = "_sliding_window_pattern")]
    sliding_window_pattern: Option<usize>,
    use_bidirectional_attention: Option<bool>,
    torch_dtype: Option<String>,
    dtype: Option<String>,
}

/// transformers' Gemma3TextConfig defaults (4.57), which a published multimodal config's
/// `text_config` relies on: it lists only what differs (google/gemma-3-4b-it: five fields).
const GEMMA3_TEXT_DEFAULTS: &str = r#"{"vocab_size": 262208, "hidden_size": 2304, "intermediate_size": 9216,
    "num_hidden_layers": 26, "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256,
    "hidden_activation": "gelu_pytorch_tanh", "max_position_embeddings": 131072, "rms_norm_eps": 1e-6,
    "tie_word_embeddings": true, "rope_theta": 1000000.0, "attention_bias": false, "query_pre_attn_scalar": 256,
    "sliding_window": 4096, "rope_local_base_freq": 10000.0}"#;

impl Config {
    /// A multimodal `gemma3` config: its `text_config` (the defaults where it is silent), with
    /// the folder's dtype where the text config names none.
    pub fn parse_multimodal(value: &Value) -> Result<(Sizes, Config)> {
        let mut text = match value.get("text_config") {
            Some(t) if t.is_object() => t.clone(),
            None | Some(Value::Null) => Value::Object(Default::default()),
            Some(_) => bail!("\"text_config\" is not an object"),
        };
        for key in ["dtype", "torch_dtype"] {
            if text.get(key).is_none()
                && let Some(v) = value.get(key)
            {
                text[key] = v.clone();
            }
        }
        let (mut sizes, g) = Config::parse(&text, "gemma3_text")?;
        sizes.model_type = "gemma3";
        Ok((sizes, g))
    }

    pub fn parse(value: &Value, family: &str) -> Result<(Sizes, Config)> {
        let (model_type, gemma3) = if family == "gemma2" { ("gemma2", false) } else { ("gemma3_text", true) };
        let mut value = value.clone();
        if gemma3
            && let (Some(fields), Ok(Value::Object(defaults))) =
                (value.as_object_mut(), serde_json::from_str::<Value>(GEMMA3_TEXT_DEFAULTS))
        {
            for (k, v) in defaults {
                fields.entry(k).or_insert(v);
            }
        }
        let value = &value;
        let raw: Raw = serde_json::from_value(value.clone()).map_err(|e| err!("not a valid config.json ({e})"))?;
        if raw.use_bidirectional_attention == Some(true) {
            bail!("{model_type} with use_bidirectional_attention is an encoder, not a causal LM; it is not supported");
        }
        let act = raw.hidden_activation.as_deref().or(raw.hidden_act.as_deref()).unwrap_or("gelu_pytorch_tanh");
        if act != "gelu_pytorch_tanh" {
            bail!("unsupported hidden_activation \"{act}\" for {model_type} (only gelu_pytorch_tanh)");
        }
        // Gemma 3 scales its global layers' rope linearly (the 4B and larger models, by 8).
        let scaling = raw.rope_scaling.as_ref().or(raw.rope_parameters.as_ref()).filter(|s| s.is_object());
        let rope_factor = match scaling.map(|s| (sizes::rope_type(s).unwrap_or("default"), s)) {
            None | Some(("default", _)) => 1.0,
            Some(("linear", s)) if gemma3 => {
                positive(s.get("factor").and_then(Value::as_f64).unwrap_or(1.0), "rope scaling factor")?
            }
            Some((other, _)) => bail!("{model_type} with rope scaling \"{other}\" is not supported"),
        };
        let hidden_size = need(raw.hidden_size, "hidden_size")?;
        let num_heads = need(raw.num_attention_heads, "num_attention_heads")?;
        let num_kv_heads = raw.num_key_value_heads.unwrap_or(num_heads);
        let head_dim = sizes::head_dim(value, hidden_size, num_heads)?;
        if head_dim % 2 != 0 {
            bail!("head_dim {head_dim} is odd; rotary embeddings need an even head_dim");
        }
        let num_layers = need(raw.num_hidden_layers, "num_hidden_layers")?;
        // transformers' default: every `pattern`-th layer sees everything (Gemma 2: 2, 3: 6),
        // the others slide.
        let pattern = raw.sliding_window_pattern.unwrap_or(if gemma3 { 6 } else { 2 }).max(1);
        let sliding_layers = sizes::sliding_layers(raw.layer_types.as_deref(), num_layers, |i| (i + 1) % pattern != 0)?;
        let softcap = |v: Option<f64>, name: &str| v.map(|c| positive(c, name)).transpose();
        let gemma = Config {
            intermediate_size: need(raw.intermediate_size, "intermediate_size")?,
            num_heads,
            num_kv_heads,
            head_dim,
            rms_norm_eps: positive(raw.rms_norm_eps.unwrap_or(1e-6), "rms_norm_eps")?,
            rope_theta: positive(rope_field(value, "rope_theta").unwrap_or(10000.0), "rope_theta")?,
            query_pre_attn_scalar: positive(
                raw.query_pre_attn_scalar.unwrap_or(head_dim as f64),
                "query_pre_attn_scalar",
            )?,
            attn_softcap: softcap(raw.attn_logit_softcapping, "attn_logit_softcapping")?,
            final_softcap: softcap(raw.final_logit_softcapping, "final_logit_softcapping")?,
            sliding_window: sizes::window(raw.sliding_window)?,
            sliding_layers,
            attention_bias: raw.attention_bias.unwrap_or(false),
            qk_norm: gemma3,
            local_rope_theta: gemma3.then(|| raw.rope_local_base_freq.unwrap_or(10000.0)),
            rope_factor,
        };
        Ok((
            Sizes {
                model_type,
                vocab_size: need(raw.vocab_size, "vocab_size")?,
                hidden_size,
                embed_dim: hidden_size,
                num_layers,
                num_heads,
                num_kv_heads,
                head_dim,
                max_positions: need(raw.max_position_embeddings, "max_position_embeddings")?,
                tie_word_embeddings: raw.tie_word_embeddings.unwrap_or(true),
                dtype: raw.dtype.or(raw.torch_dtype),
            },
            gemma,
        ))
    }

    /// The same linears as the LLaMA family's, for its declaration.
    fn linears(&self) -> llama::Config {
        llama::Config {
            intermediate_size: self.intermediate_size,
            num_heads: self.num_heads,
            num_kv_heads: self.num_kv_heads,
            head_dim: self.head_dim,
            rms_norm_eps: self.rms_norm_eps,
            rope_theta: self.rope_theta,
            rope_scaling: llama::RopeScaling::None,
            qkv_bias: self.attention_bias,
            o_bias: self.attention_bias,
            mlp_bias: false,
            sliding_window: None,
            sliding_layers: Vec::new(),
        }
    }
}

/// The linears and the authors' routing rule, as for LLaMA: q, k, v ← o; o ← gate; gate, up ←
/// down; down ← the next block's q.
pub fn spec(c: &Sizes, g: &Config) -> Spec {
    llama::spec(c, &g.linears())
}

/// Tensors outside the prunable linears, with their shapes.
pub fn tensors(c: &Sizes, g: &Config, lm_head_stored: bool) -> Vec<(String, Vec<usize>)> {
    let (v, d) = (c.vocab_size, c.hidden_size);
    let mut t = vec![("model.embed_tokens.weight".to_string(), vec![v, d]), ("model.norm.weight".to_string(), vec![d])];
    if lm_head_stored || !c.tie_word_embeddings {
        t.push(("lm_head.weight".into(), vec![v, d]));
    }
    for b in 0..c.num_layers {
        for n in NORMS {
            t.push((format!("model.layers.{b}.{n}.weight"), vec![d]));
        }
        if g.qk_norm {
            for n in QK_NORMS {
                t.push((format!("model.layers.{b}.{n}.weight"), vec![g.head_dim]));
            }
        }
    }
    t
}

const QK_NORMS: [&str; 2] = ["self_attn.q_norm", "self_attn.k_norm"];

/// The global layers' RoPE frequencies: `rope_theta`, divided by a `linear` factor.
fn global_rope(g: &Config) -> RopeFreqs {
    let mut freqs = RopeFreqs::new(g.rope_theta, g.head_dim);
    for f in freqs.inv_freq.iter_mut() {
        *f /= g.rope_factor as f32;
    }
    freqs
}

/// Gemma 3's sliding layers' RoPE frequencies (`rope_local_base_freq`, unscaled).
pub fn local_rope(g: &Config) -> Option<RopeFreqs> {
    g.local_rope_theta.map(|theta| RopeFreqs::new(theta, g.head_dim))
}

const NORMS: [&str; 4] =
    ["input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm", "post_feedforward_layernorm"];

/// A Gemma RMSNorm's weight as the multiplier it is: 1 + w.
fn norm_weight(ck: &Checkpoint, name: &str, d: usize, device: &Device) -> Result<Tensor<1>> {
    Ok(to_device1(ck.load(name, &[d])?, device).add_scalar(1.0))
}

pub struct Outer {
    embed_tokens: TokenTable,
    final_norm: Tensor<1>,
    /// None when loaded for pruning.
    lm_head: Option<Tensor<2>>,
    /// √hidden_size rounded to the compute dtype.
    normalizer: f64,
    eps: f64,
    hidden: usize,
    final_softcap: Option<f64>,
    pub rope: RopeFreqs,
}

impl Outer {
    pub fn load(
        ck: &Arc<Checkpoint>,
        c: &Sizes,
        g: &Config,
        device: &Device,
        dtype: DType,
        ends: Ends,
    ) -> Result<Outer> {
        let (v, d) = (c.vocab_size, c.hidden_size);
        let embed_tokens = TokenTable::load(ck, "model.embed_tokens.weight", [v, d], device, dtype, ends)?;
        let root = (d as f32).sqrt();
        let normalizer = match dtype {
            DType::F16 => half::f16::from_f32(root).to_f32(),
            DType::BF16 => half::bf16::from_f32(root).to_f32(),
            _ => root,
        } as f64;
        Ok(Outer {
            lm_head: lm_head(ck, c, &embed_tokens, device, dtype, ends)?,
            embed_tokens,
            final_norm: norm_weight(ck, "model.norm.weight", d, device)?,
            normalizer,
            eps: g.rms_norm_eps,
            hidden: d,
            final_softcap: g.final_softcap,
            rope: global_rope(g),
        })
    }

    pub fn embed(&self, ids: &[u32], batch: usize, t: usize) -> Result<Tensor<3>> {
        Ok(self.embed_tokens.rows(ids)?.reshape([batch, t, self.hidden]).mul_scalar(self.normalizer))
    }

    pub fn head(&self, hidden: Tensor<3>, gpu: Option<&Gpu>) -> Option<Tensor<3>> {
        let weight = self.lm_head.clone()?;
        let x = rms_norm(hidden, &self.final_norm, self.eps);
        let logits = super::Linear { weight, bias: None }.forward(x, gpu);
        Some(match self.final_softcap {
            Some(cap) => logits.div_scalar(cap).tanh().mul_scalar(cap),
            None => logits,
        })
    }
}

/// A block's norms and the settings its forward needs.
#[derive(Clone)]
pub struct Parts {
    norms: [Tensor<1>; 4],
    /// Gemma 3's per-head q and k norms (1 + w).
    qk_norms: Option<[Tensor<1>; 2]>,
    /// Whether this layer attends over the sliding window only.
    sliding: bool,
    cfg: Config,
}

impl Parts {
    pub fn load(ck: &Checkpoint, prefix: &str, index: usize, c: &Sizes, g: &Config, device: &Device) -> Result<Parts> {
        let norm = |n: &str, d: usize| norm_weight(ck, &format!("{prefix}.{n}.weight"), d, device);
        let d = c.hidden_size;
        let qk_norms = match g.qk_norm {
            true => Some([norm(QK_NORMS[0], g.head_dim)?, norm(QK_NORMS[1], g.head_dim)?]),
            false => None,
        };
        Ok(Parts {
            norms: [norm(NORMS[0], d)?, norm(NORMS[1], d)?, norm(NORMS[2], d)?, norm(NORMS[3], d)?],
            qk_norms,
            sliding: g.sliding_layers.get(index).copied().unwrap_or(false),
            cfg: g.clone(),
        })
    }
}

/// h + norm(attn(norm(h))), then + norm(mlp(norm(·))); `run(i, x)` runs linear i on x (and
/// records x).
pub fn forward(
    p: &Parts,
    h: Tensor<3>,
    pos: &Positions,
    run: &mut dyn FnMut(usize, &Tensor<3>) -> Tensor<3>,
) -> Tensor<3> {
    let c = &p.cfg;
    let (nh, nkv, hd, eps) = (c.num_heads, c.num_kv_heads, c.head_dim, c.rms_norm_eps);
    let [input_norm, post_attention_norm, pre_feedforward_norm, post_feedforward_norm] = &p.norms;
    let pos = pos.for_layer(p.sliding);
    let rope = pos.rope.as_ref().expect("Gemma rotates q and k");
    let mask = pos.causal.as_ref().expect("Gemma's attention takes its mask from the positions");
    let heads = |y: Tensor<3>, n: usize, norm: Option<&Tensor<1>>| match norm {
        Some(w) => rms_norm_heads(y, w, n, hd, eps),
        None => split_heads(y, n, hd),
    };

    let x = rms_norm(h.clone(), input_norm, eps);
    let q = rope.apply(heads(run(Q, &x), nh, p.qk_norms.as_ref().map(|n| &n[0])));
    let k = rope.apply(heads(run(K, &x), nkv, p.qk_norms.as_ref().map(|n| &n[1])));
    let v = split_heads(run(V, &x), nkv, hd);
    let attn = attention_capped(q, k, v, c.query_pre_attn_scalar.powf(-0.5), c.attn_softcap, mask.clone());
    let h = h + rms_norm(run(O, &attn), post_attention_norm, eps);

    let x = rms_norm(h.clone(), pre_feedforward_norm, eps);
    let gated = gelu_tanh(run(GATE, &x)) * run(UP, &x);
    h + rms_norm(run(DOWN, &gated), post_feedforward_norm, eps)
}
