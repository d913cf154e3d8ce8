//! Phi-3, Phi-3.5 and Phi-4-mini, read top to bottom: a LLaMA-shaped block whose q, k and v come
//! from one fused `qkv_proj` and whose gate and up come from one fused `gate_up_proj`, each
//! pruned as the one linear it is. Rotary embeddings may cover only part of each head
//! (`partial_rotary_factor`, Phi-4-mini's 0.75) and may be `longrope` (`su`) scaled: per-frequency
//! short or long factors, by whether a window is longer than `original_max_position_embeddings`,
//! and cos and sin multiplied by √(1 + ln(max / original) / ln(original)). A `sliding_window`
//! applies in every layer.

use burn::tensor::{Device, Tensor};
use serde::Deserialize;
use serde_json::Value;

use super::{LinearSpec, Positions, RopeFreqs, Route, Spec, attention, llama, rms_norm, silu, split_heads, to_device1};
use crate::io::checkpoint::Checkpoint;
use crate::io::error::Result;
use crate::model::sizes::{self, Sizes, need, positive, rope_field};
use crate::{bail, err};

/// Prunable linears in execution order.
const QKV: usize = 0;
const O: usize = 1;
const GATE_UP: usize = 2;
const DOWN: usize = 3;

/// `longrope` scaling: the per-frequency factors and the attention factor.
#[derive(Clone, Debug)]
pub struct LongRope {
    pub short_factor: Vec<f64>,
    pub long_factor: Vec<f64>,
    pub original_max_positions: usize,
    pub attention_factor: f64,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub intermediate_size: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rotary_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub longrope: Option<LongRope>,
    pub sliding_window: Option<usize>,
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
    original_max_position_embeddings: Option<usize>,
    rms_norm_eps: Option<f64>,
    partial_rotary_factor: Option<f64>,
    rope_scaling: Option<Value>,
    rope_parameters: Option<Value>,
    sliding_window: Option<usize>,
    hidden_act: Option<String>,
    tie_word_embeddings: Option<bool>,
    torch_dtype: Option<String>,
    dtype: Option<String>,
}

impl Config {
    pub fn parse(value: &Value) -> Result<(Sizes, Config)> {
        let raw: Raw = serde_json::from_value(value.clone()).map_err(|e| err!("not a valid config.json ({e})"))?;
        if let Some(act) = &raw.hidden_act
            && act != "silu"
        {
            bail!("unsupported hidden_act \"{act}\" for Phi-3 (only silu)");
        }
        let hidden_size = need(raw.hidden_size, "hidden_size")?;
        let num_heads = need(raw.num_attention_heads, "num_attention_heads")?;
        let num_kv_heads = raw.num_key_value_heads.unwrap_or(num_heads);
        if num_heads == 0 || num_kv_heads == 0 || num_heads % num_kv_heads != 0 {
            bail!(
                "num_attention_heads ({num_heads}) must be a positive multiple of num_key_value_heads ({num_kv_heads})"
            );
        }
        let head_dim = sizes::head_dim(value, hidden_size, num_heads)?;
        let partial = raw
            .partial_rotary_factor
            .or_else(|| raw.rope_parameters.as_ref().and_then(|r| r.get("partial_rotary_factor")?.as_f64()))
            .unwrap_or(1.0);
        let rotary_dim = (head_dim as f64 * partial) as usize;
        if rotary_dim == 0 || !rotary_dim.is_multiple_of(2) || rotary_dim > head_dim {
            bail!(
                "partial_rotary_factor {partial} gives a rotary dimension of {rotary_dim}; it must be even and positive"
            );
        }
        let max_positions = need(raw.max_position_embeddings, "max_position_embeddings")?;
        let scaling = raw.rope_scaling.as_ref().or(raw.rope_parameters.as_ref()).filter(|s| s.is_object());
        let longrope = match scaling.map(|s| (sizes::rope_type(s).unwrap_or("default"), s)) {
            None | Some(("default", _)) => None,
            Some(("longrope" | "su", s)) => Some(parse_longrope(s, &raw, max_positions, rotary_dim)?),
            Some((other, _)) => bail!("Phi-3 with rope scaling \"{other}\" is not supported (default, longrope, su)"),
        };
        let phi3 = Config {
            intermediate_size: need(raw.intermediate_size, "intermediate_size")?,
            num_heads,
            num_kv_heads,
            head_dim,
            rotary_dim,
            rms_norm_eps: positive(raw.rms_norm_eps.unwrap_or(1e-5), "rms_norm_eps")?,
            rope_theta: positive(rope_field(value, "rope_theta").unwrap_or(10000.0), "rope_theta")?,
            longrope,
            sliding_window: sizes::window(raw.sliding_window)?,
        };
        Ok((
            Sizes {
                model_type: "phi3",
                vocab_size: need(raw.vocab_size, "vocab_size")?,
                hidden_size,
                embed_dim: hidden_size,
                num_layers: need(raw.num_hidden_layers, "num_hidden_layers")?,
                num_heads,
                num_kv_heads,
                head_dim,
                max_positions,
                tie_word_embeddings: raw.tie_word_embeddings.unwrap_or(false),
                dtype: raw.dtype.or(raw.torch_dtype),
            },
            phi3,
        ))
    }
}

impl Config {
    /// What the LLaMA family's embeddings, final norm and head read of a config: Phi-3's are
    /// theirs (its rotation is its own: [`rope_freqs`]).
    pub fn outside_blocks(&self) -> llama::Config {
        llama::Config {
            intermediate_size: self.intermediate_size,
            num_heads: self.num_heads,
            num_kv_heads: self.num_kv_heads,
            head_dim: self.head_dim,
            rms_norm_eps: self.rms_norm_eps,
            rope_theta: self.rope_theta,
            rope_scaling: llama::RopeScaling::None,
            qkv_bias: false,
            o_bias: false,
            mlp_bias: false,
            sliding_window: self.sliding_window,
            sliding_layers: Vec::new(),
        }
    }
}

/// transformers' longrope: the factor is max / original positions where the config names the
/// original, and the attention factor √(1 + ln factor / ln original) unless given.
fn parse_longrope(s: &Value, raw: &Raw, max_positions: usize, rotary_dim: usize) -> Result<LongRope> {
    let list = |k: &str| -> Result<Vec<f64>> {
        let v: Vec<f64> = s
            .get(k)
            .and_then(Value::as_array)
            .ok_or_else(|| err!("rope scaling \"longrope\" lacks \"{k}\""))?
            .iter()
            .filter_map(Value::as_f64)
            .collect();
        if v.len() != rotary_dim / 2 {
            bail!(
                "rope scaling \"{k}\" has {} factors, the rotary dimension {rotary_dim} needs {}",
                v.len(),
                rotary_dim / 2
            );
        }
        Ok(v)
    };
    let original = raw
        .original_max_position_embeddings
        .or_else(|| s.get("original_max_position_embeddings").and_then(Value::as_u64).map(|v| v as usize));
    let (factor, original) = match original {
        Some(o) => (max_positions as f64 / o as f64, o),
        None => (s.get("factor").and_then(Value::as_f64).unwrap_or(1.0), max_positions),
    };
    let attention_factor = match s.get("attention_factor").and_then(Value::as_f64) {
        Some(a) => a,
        None if factor <= 1.0 => 1.0,
        None => (1.0 + factor.ln() / (original as f64).ln()).sqrt(),
    };
    Ok(LongRope {
        short_factor: list("short_factor")?,
        long_factor: list("long_factor")?,
        original_max_positions: original,
        attention_factor,
    })
}

pub fn spec(c: &Sizes, p: &Config) -> Spec {
    let (d, f) = (c.hidden_size, p.intermediate_size);
    let (q, kv) = (p.num_heads * p.head_dim, p.num_kv_heads * p.head_dim);
    let lin =
        |name: &str, shape, qkv, parts| LinearSpec { name: name.into(), shape, bias: false, qkv, parts, expert: None };
    Spec {
        block_prefix: "model.layers",
        linears: vec![
            lin("self_attn.qkv_proj", [q + 2 * kv, d], true, 3),
            lin("self_attn.o_proj", [d, q], false, 1),
            lin("mlp.gate_up_proj", [2 * f, d], false, 2),
            lin("mlp.down_proj", [d, f], false, 1),
        ],
        // The authors' LLaMA rule on the fused linears, each part keeping its meaning: q, k, v
        // rows ← o (under multi-head attention each part spans o's channels once; under GQA
        // they keep the block sparsity); o ← gate_up; gate and up rows ← down, each part
        // spanning down's channels once; down ← the next block's qkv.
        routes: Some(vec![
            Route { repeat: 3, ..Route::to(false, O) },
            Route::to(false, GATE_UP),
            Route { repeat: 2, ..Route::to(false, DOWN) },
            Route::to(true, QKV),
        ]),
        output_only: vec![DOWN],
        input_of: vec![QKV, O, GATE_UP, DOWN],
    }
}

/// Tensors outside the prunable linears: the LLaMA family's (embeddings, final norm, head,
/// each block's two norms).
pub fn tensors(c: &Sizes, p: &Config, lm_head_stored: bool) -> Vec<(String, Vec<usize>)> {
    llama::tensors(c, &p.outside_blocks(), lm_head_stored)
}

/// The rotation's frequencies: plain, or longrope's for windows of `t` tokens (short factors
/// up to the original length, long ones past it), computed in f32 as transformers does.
pub fn rope_freqs(p: &Config, t: usize) -> RopeFreqs {
    let mut freqs = RopeFreqs::new(p.rope_theta, p.rotary_dim);
    if let Some(l) = &p.longrope {
        let factors = if t > l.original_max_positions { &l.long_factor } else { &l.short_factor };
        let (base, dim) = (p.rope_theta as f32, p.rotary_dim as f32);
        for (i, f) in freqs.inv_freq.iter_mut().enumerate() {
            *f = 1.0 / (factors[i] as f32 * base.powf((2 * i) as f32 / dim));
        }
        freqs.scale = l.attention_factor as f32;
    }
    freqs
}

/// A block's norms and the settings its forward needs.
#[derive(Clone)]
pub struct Parts {
    input_norm: Tensor<1>,
    post_attention_norm: Tensor<1>,
    cfg: Config,
}

impl Parts {
    pub fn load(ck: &Checkpoint, prefix: &str, c: &Sizes, p: &Config, device: &Device) -> Result<Parts> {
        let norm =
            |name: &str| ck.load(&format!("{prefix}.{name}.weight"), &[c.hidden_size]).map(|t| to_device1(t, device));
        Ok(Parts {
            input_norm: norm("input_layernorm")?,
            post_attention_norm: norm("post_attention_layernorm")?,
            cfg: p.clone(),
        })
    }
}

/// h + o(attn(split(qkv(norm(h))))), then + down(silu(gate) · up) of gate_up(norm(·)).
pub fn forward(
    p: &Parts,
    h: Tensor<3>,
    pos: &Positions,
    run: &mut dyn FnMut(usize, &Tensor<3>) -> Tensor<3>,
) -> Tensor<3> {
    let c = &p.cfg;
    let (nh, nkv, hd) = (c.num_heads, c.num_kv_heads, c.head_dim);
    let (q_width, kv_width) = (nh * hd, nkv * hd);
    let rope = pos.rope.as_ref().expect("Phi-3 rotates q and k");

    let x = rms_norm(h.clone(), &p.input_norm, c.rms_norm_eps);
    let qkv = run(QKV, &x);
    let [b, t, _] = qkv.dims();
    let q = qkv.clone().slice([0..b, 0..t, 0..q_width]);
    let k = qkv.clone().slice([0..b, 0..t, q_width..q_width + kv_width]);
    let v = qkv.slice([0..b, 0..t, q_width + kv_width..q_width + 2 * kv_width]);
    let q = rope.apply(split_heads(q, nh, hd));
    let k = rope.apply(split_heads(k, nkv, hd));
    let attn = attention(q, k, split_heads(v, nkv, hd), Some((hd as f64).sqrt()), pos);
    let h = h + run(O, &attn);

    let x = rms_norm(h.clone(), &p.post_attention_norm, c.rms_norm_eps);
    let gate_up = run(GATE_UP, &x);
    let f = c.intermediate_size;
    let gate = gate_up.clone().slice([0..b, 0..t, 0..f]);
    let up = gate_up.slice([0..b, 0..t, f..2 * f]);
    h + run(DOWN, &(up * silu(gate)))
}
