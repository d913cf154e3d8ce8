//! The LLaMA family (LLaMA 1/2/3, Mistral, Qwen2), read top to bottom.
//!
//! One block: pre-RMSNorm attention with rotary embeddings and optional grouped-query heads,
//! then a SwiGLU MLP. The variants differ only in their config: biases (Qwen2's q/k/v; LLaMA's
//! `attention_bias` on q/k/v/o and `mlp_bias` on gate/up/down, which Mistral and Qwen2 ignore, as
//! transformers does), tied embeddings, `llama3` rope scaling, and Mistral's sliding window,
//! which is refused rather than approximated when a window does not fit in it.

use std::sync::Arc;

use burn::tensor::{DType, Device, Tensor};
use serde::Deserialize;
use serde_json::Value;

use super::{
    Ends, LinearSpec, Positions, RopeFreqs, Route, Spec, TokenTable, attention, lm_head, rms_norm, silu, split_heads,
    to_device1,
};
use crate::gpu::context::Gpu;
use crate::io::checkpoint::Checkpoint;
use crate::io::error::Result;
use crate::model::sizes::{self, Sizes, need, positive, rope_field};
use crate::{bail, err};

/// Prunable linears in execution order.
const Q: usize = 0;
const K: usize = 1;
const V: usize = 2;
const O: usize = 3;
const GATE: usize = 4;
const UP: usize = 5;
const DOWN: usize = 6;

/// RoPE frequency scaling; only what changes the forward pass.
#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    None,
    /// Positions divided by `factor` (every frequency divided by it).
    Linear {
        factor: f64,
    },
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_positions: f64,
    },
}

#[derive(Clone, Debug)]
pub struct Config {
    pub intermediate_size: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: RopeScaling,
    /// q/k/v projections carry biases (Qwen2, or LLaMA with `attention_bias`).
    pub qkv_bias: bool,
    /// o_proj carries one (LLaMA with `attention_bias`; never Qwen2 or Mistral).
    pub o_bias: bool,
    /// gate, up and down carry biases (LLaMA with `mlp_bias`).
    pub mlp_bias: bool,
    /// The window of the layers that slide: Mistral's (every layer), or Qwen2's and Qwen3's
    /// with `use_sliding_window` (the layers `layer_types` names, or those from
    /// `max_window_layers` on).
    pub sliding_window: Option<usize>,
    /// Which layers attend over `sliding_window` only (none without a window).
    pub sliding_layers: Vec<bool>,
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
    rope_scaling: Option<Value>,
    rope_parameters: Option<Value>,
    tie_word_embeddings: Option<bool>,
    attention_bias: Option<bool>,
    mlp_bias: Option<bool>,
    sliding_window: Option<Value>,
    use_sliding_window: Option<bool>,
    max_window_layers: Option<usize>,
    layer_types: Option<Vec<String>>,
    torch_dtype: Option<String>,
    dtype: Option<String>,
    hidden_act: Option<String>,
}

impl Config {
    pub fn parse(value: &Value, model_type: &str) -> Result<(Sizes, Config)> {
        let raw: Raw = serde_json::from_value(value.clone()).map_err(|e| err!("not a valid config.json ({e})"))?;
        if let Some(act) = &raw.hidden_act
            && act != "silu"
        {
            bail!("unsupported hidden_act \"{act}\" (only silu)");
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
        if head_dim % 2 != 0 {
            bail!("head_dim {head_dim} is odd; rotary embeddings need an even head_dim");
        }
        let rope_theta = positive(rope_field(value, "rope_theta").unwrap_or(10000.0), "rope_theta")?;
        let rope_params = raw.rope_parameters.as_ref().filter(|v| v.is_object());
        let rope_scaling = match raw.rope_scaling.as_ref().filter(|v| v.is_object()).or(rope_params) {
            Some(s) => parse_rope_scaling(s)?,
            None => RopeScaling::None,
        };
        // Only LLaMA's modeling code reads attention_bias and mlp_bias; Qwen2's always has q/k/v
        // biases and nothing else, Mistral's none.
        let (attention_bias, mlp_bias) = (raw.attention_bias.unwrap_or(false), raw.mlp_bias.unwrap_or(false));
        let (model_type, qkv_bias, o_bias, mlp_bias) = match model_type {
            "mistral" => ("mistral", false, false, false),
            "qwen2" => ("qwen2", true, false, false),
            // Qwen3 (src/model/qwen3.rs) reads its config here: attention_bias on q, k, v and o.
            "qwen3" => ("qwen3", attention_bias, attention_bias, false),
            _ => ("llama", attention_bias, attention_bias, mlp_bias),
        };
        // transformers: LLaMA has no window; Mistral's covers every layer; Qwen's only with
        // use_sliding_window, and only the layers from max_window_layers (default 28) on.
        let sliding_window = match (model_type, raw.use_sliding_window) {
            ("llama", _) | ("qwen2" | "qwen3", Some(false) | None) => None,
            // transformers' default window where the key is absent (4096), none where it is null.
            _ => match raw.sliding_window.as_ref().filter(|w| !w.is_null()) {
                None if raw.sliding_window.is_none() => Some(4096),
                None => None,
                Some(w) => match w.as_u64() {
                    Some(w) => sizes::window(Some(w as usize))?,
                    None => bail!("\"sliding_window\" is {w}; it must be a positive whole number"),
                },
            },
        };
        let num_layers = need(raw.num_hidden_layers, "num_hidden_layers")?;
        let sliding_layers = match (sliding_window, model_type) {
            (None, _) => vec![false; num_layers],
            (Some(_), "mistral") => vec![true; num_layers],
            (Some(_), _) => {
                let first = raw.max_window_layers.unwrap_or(28);
                sizes::sliding_layers(raw.layer_types.as_deref(), num_layers, |i| i >= first)?
            }
        };
        let intermediate_size = need(raw.intermediate_size, "intermediate_size")?;
        if intermediate_size == 0 {
            bail!("\"intermediate_size\" is 0; it must be at least 1");
        }
        let llama = Config {
            intermediate_size,
            num_heads,
            num_kv_heads,
            head_dim,
            rms_norm_eps: positive(raw.rms_norm_eps.unwrap_or(1e-6), "rms_norm_eps")?,
            rope_theta,
            rope_scaling,
            qkv_bias,
            o_bias,
            mlp_bias,
            sliding_window,
            sliding_layers,
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
                tie_word_embeddings: raw.tie_word_embeddings.unwrap_or(false),
                dtype: raw.dtype.or(raw.torch_dtype),
            },
            llama,
        ))
    }
}

fn parse_rope_scaling(s: &Value) -> Result<RopeScaling> {
    let kind = sizes::rope_type(s).unwrap_or("default");
    let num = |k: &str| -> Result<f64> {
        let v = s.get(k).and_then(Value::as_f64).ok_or_else(|| err!("rope scaling \"{kind}\" lacks \"{k}\""))?;
        positive(v, &format!("rope scaling {k}"))
    };
    match kind {
        "default" => Ok(RopeScaling::None),
        "linear" => Ok(RopeScaling::Linear { factor: num("factor")? }),
        // Dynamic NTK changes the frequencies only for sequences longer than
        // max_position_embeddings, which every command refuses (--seqlen is checked against it).
        "dynamic" => num("factor").map(|_| RopeScaling::None),
        "llama3" => {
            let (low, high) = (num("low_freq_factor")?, num("high_freq_factor")?);
            if high <= low {
                bail!("rope scaling needs high_freq_factor ({high}) above low_freq_factor ({low})");
            }
            Ok(RopeScaling::Llama3 {
                factor: num("factor")?,
                low_freq_factor: low,
                high_freq_factor: high,
                original_max_positions: num("original_max_position_embeddings")?,
            })
        }
        other => bail!("unsupported rope scaling type \"{other}\" (supported: default, linear, dynamic, llama3)"),
    }
}

pub fn spec(c: &Sizes, l: &Config) -> Spec {
    let (d, f) = (c.hidden_size, l.intermediate_size);
    let (q, kv) = (l.num_heads * l.head_dim, l.num_kv_heads * l.head_dim);
    let lin = |name: &str, shape, bias, qkv| LinearSpec { name: name.into(), shape, bias, qkv, parts: 1, expert: None };
    let route = Route::to;
    Spec {
        block_prefix: "model.layers",
        linears: vec![
            lin("self_attn.q_proj", [q, d], l.qkv_bias, true),
            lin("self_attn.k_proj", [kv, d], l.qkv_bias, true),
            lin("self_attn.v_proj", [kv, d], l.qkv_bias, true),
            lin("self_attn.o_proj", [d, q], l.o_bias, false),
            lin("mlp.gate_proj", [f, d], l.mlp_bias, false),
            lin("mlp.up_proj", [f, d], l.mlp_bias, false),
            lin("mlp.down_proj", [d, f], l.mlp_bias, false),
        ],
        // The authors' routing: q, k, v ← o; o ← gate; gate, up ← down; down ← next block's q.
        routes: Some(vec![
            route(false, O),
            route(false, O),
            route(false, O),
            route(false, GATE),
            route(false, DOWN),
            route(false, DOWN),
            route(true, Q),
        ]),
        output_only: vec![DOWN],
        // q, k, v ← the attention norm's output; gate, up ← the MLP norm's.
        input_of: vec![Q, Q, Q, O, GATE, GATE, DOWN],
    }
}

/// Tensors outside the prunable linears, with their shapes. `lm_head_stored`: a tied model's
/// checkpoint may store the head anyway.
pub fn tensors(c: &Sizes, _l: &Config, lm_head_stored: bool) -> Vec<(String, Vec<usize>)> {
    let (v, d) = (c.vocab_size, c.hidden_size);
    let mut t = vec![("model.embed_tokens.weight".to_string(), vec![v, d]), ("model.norm.weight".to_string(), vec![d])];
    if lm_head_stored || !c.tie_word_embeddings {
        t.push(("lm_head.weight".into(), vec![v, d]));
    }
    for b in 0..c.num_layers {
        for n in ["input_layernorm", "post_attention_layernorm"] {
            t.push((format!("model.layers.{b}.{n}.weight"), vec![d]));
        }
    }
    t
}

pub struct Outer {
    embed_tokens: TokenTable,
    final_norm: Tensor<1>,
    /// None when loaded for pruning.
    lm_head: Option<Tensor<2>>,
    eps: f64,
    hidden: usize,
    pub rope: RopeFreqs,
}

impl Outer {
    pub fn load(
        ck: &Arc<Checkpoint>,
        c: &Sizes,
        l: &Config,
        device: &Device,
        dtype: DType,
        ends: Ends,
    ) -> Result<Outer> {
        let (v, d) = (c.vocab_size, c.hidden_size);
        let embed_tokens = TokenTable::load(ck, "model.embed_tokens.weight", [v, d], device, dtype, ends)?;
        Ok(Outer {
            lm_head: lm_head(ck, c, &embed_tokens, device, dtype, ends)?,
            embed_tokens,
            final_norm: to_device1(ck.load("model.norm.weight", &[d])?, device),
            eps: l.rms_norm_eps,
            hidden: d,
            rope: rope_freqs(l),
        })
    }

    pub fn embed(&self, ids: &[u32], batch: usize, t: usize) -> Result<Tensor<3>> {
        Ok(self.embed_tokens.rows(ids)?.reshape([batch, t, self.hidden]))
    }

    pub fn head(&self, hidden: Tensor<3>, gpu: Option<&Gpu>) -> Option<Tensor<3>> {
        let weight = self.lm_head.clone()?;
        let x = rms_norm(hidden, &self.final_norm, self.eps);
        Some(super::Linear { weight, bias: None }.forward(x, gpu))
    }
}

/// A block's norms and the settings its forward needs.
#[derive(Clone)]
pub struct Parts {
    input_norm: Tensor<1>,
    post_attention_norm: Tensor<1>,
    /// This layer attends over the sliding window only.
    sliding: bool,
    cfg: Config,
}

impl Parts {
    pub fn load(ck: &Checkpoint, prefix: &str, index: usize, c: &Sizes, l: &Config, device: &Device) -> Result<Parts> {
        let norm =
            |name: &str| ck.load(&format!("{prefix}.{name}.weight"), &[c.hidden_size]).map(|t| to_device1(t, device));
        Ok(Parts {
            input_norm: norm("input_layernorm")?,
            post_attention_norm: norm("post_attention_layernorm")?,
            sliding: l.sliding_layers.get(index).copied().unwrap_or(false),
            cfg: l.clone(),
        })
    }
}

/// h + attn(norm(h)), then + mlp(norm(·)); `run(i, x)` runs linear i on x (and records x).
pub fn forward(
    p: &Parts,
    h: Tensor<3>,
    pos: &Positions,
    run: &mut dyn FnMut(usize, &Tensor<3>) -> Tensor<3>,
) -> Tensor<3> {
    let c = &p.cfg;
    let (nh, nkv, hd) = (c.num_heads, c.num_kv_heads, c.head_dim);
    let pos = &pos.for_layer(p.sliding);
    let rope = pos.rope.as_ref().expect("the LLaMA family rotates q and k");

    let x = rms_norm(h.clone(), &p.input_norm, c.rms_norm_eps);
    let q = rope.apply(split_heads(run(Q, &x), nh, hd));
    let k = rope.apply(split_heads(run(K, &x), nkv, hd));
    let v = split_heads(run(V, &x), nkv, hd);
    let attn = attention(q, k, v, Some((hd as f64).sqrt()), pos);
    let h = h + run(O, &attn);

    let x = rms_norm(h.clone(), &p.post_attention_norm, c.rms_norm_eps);
    let gated = silu(run(GATE, &x)) * run(UP, &x);
    h + run(DOWN, &gated)
}

/// Inverse RoPE frequencies, in f32 like transformers, with `linear` or `llama3` scaling when
/// configured.
fn rope_freqs(c: &Config) -> RopeFreqs {
    let mut freqs = RopeFreqs::new(c.rope_theta, c.head_dim);
    if let RopeScaling::Linear { factor } = c.rope_scaling {
        for f in freqs.inv_freq.iter_mut() {
            *f /= factor as f32;
        }
    }
    if let RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_positions } = c.rope_scaling {
        let (factor, low, high, old) =
            (factor as f32, low_freq_factor as f32, high_freq_factor as f32, original_max_positions as f32);
        let low_wavelen = old / low;
        let high_wavelen = old / high;
        for f in freqs.inv_freq.iter_mut() {
            let wavelen = 2.0 * std::f32::consts::PI / *f;
            let scaled = if wavelen > low_wavelen { *f / factor } else { *f };
            let medium = (high_wavelen..=low_wavelen).contains(&wavelen);
            *f = if medium {
                let smooth = (old / wavelen - low) / (high - low);
                (1.0 - smooth) * scaled / factor + smooth * scaled
            } else {
                scaled
            };
        }
    }
    freqs
}

#[cfg(test)]
mod tests {
    #[test]
    fn declared_routing_is_the_authors_table() {
        let json = r#"{"model_type":"llama","vocab_size":10,"hidden_size":8,"intermediate_size":16,
            "num_hidden_layers":1,"num_attention_heads":2,"max_position_embeddings":32}"#;
        assert_eq!(
            super::super::testing::routed(json),
            vec![
                ("self_attn.q_proj", false, "self_attn.o_proj"),
                ("self_attn.k_proj", false, "self_attn.o_proj"),
                ("self_attn.v_proj", false, "self_attn.o_proj"),
                ("self_attn.o_proj", false, "mlp.gate_proj"),
                ("mlp.gate_proj", false, "mlp.down_proj"),
                ("mlp.up_proj", false, "mlp.down_proj"),
                ("mlp.down_proj", true, "self_attn.q_proj"),
            ]
        );
        let s = super::super::testing::spec(json);
        assert_eq!(s.linears.iter().filter(|l| l.qkv).count(), 3);
    }
}
