//! What a family's `config.json` reader fills for every stage (`Sizes`), and the helpers the
//! readers share; `config.rs` wraps it with the family's own settings.

use serde_json::Value;

use crate::io::error::Result;
use crate::{bail, err};

/// The sizes every stage reads, whatever the family.
#[derive(Clone, Debug)]
pub struct Sizes {
    /// `model_type` as the user knows it (llama, mistral, qwen2, opt, phi).
    pub model_type: &'static str,
    pub vocab_size: usize,
    pub hidden_size: usize,
    /// Width of the token embeddings and of the LM head's input: `hidden_size`, except in OPT
    /// models whose `word_embed_proj_dim` is narrower (OPT-350m), projected in and out.
    pub embed_dim: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub max_positions: usize,
    pub tie_word_embeddings: bool,
    /// The dtype the checkpoint declares (`torch_dtype` or `dtype`), for the report only:
    /// the writer keeps each tensor's own on-disk dtype.
    pub dtype: Option<String>,
}

/// A required field, or one line naming it.
pub fn need<T>(v: Option<T>, name: &str) -> Result<T> {
    v.ok_or_else(|| err!("missing field \"{name}\""))
}

/// Positive finite number, or one line naming it.
pub fn positive(v: f64, name: &str) -> Result<f64> {
    if !(v.is_finite() && v > 0.0) {
        bail!("\"{name}\" is {v}; it must be a positive number");
    }
    Ok(v)
}

/// `rope_theta` and the other rope settings: top level in 4.x, inside `rope_parameters` in 5.x.
pub fn rope_field(raw: &Value, key: &str) -> Option<f64> {
    raw.get(key).and_then(Value::as_f64).or_else(|| {
        raw.get("rope_parameters").filter(|v| v.is_object()).and_then(|p| p.get(key)).and_then(Value::as_f64)
    })
}

/// A rope scaling's type, as transformers names it: `rope_type`, or the older `type`.
pub fn rope_type(scaling: &Value) -> Option<&str> {
    scaling.get("rope_type").or_else(|| scaling.get("type")).and_then(Value::as_str)
}

/// A sliding window's size: none, or at least one token.
pub fn window(w: Option<usize>) -> Result<Option<usize>> {
    match w {
        Some(0) => bail!("\"sliding_window\" is 0; it must be at least 1"),
        w => Ok(w),
    }
}

/// Which layers attend over a sliding window: `layer_types` as transformers writes it (one
/// `sliding_attention` or `full_attention` per layer), else `default(layer)`.
pub fn sliding_layers(
    types: Option<&[String]>,
    num_layers: usize,
    default: impl Fn(usize) -> bool,
) -> Result<Vec<bool>> {
    match types {
        Some(types) if types.len() == num_layers => types
            .iter()
            .map(|t| match t.as_str() {
                "sliding_attention" => Ok(true),
                "full_attention" => Ok(false),
                other => bail!("unsupported layer type \"{other}\" (full_attention, sliding_attention)"),
            })
            .collect(),
        Some(types) => bail!("\"layer_types\" has {} entries for {num_layers} layers", types.len()),
        None => Ok((0..num_layers).map(default).collect()),
    }
}

/// Head dimension from `head_dim` or hidden / heads, checked.
pub fn head_dim(raw: &Value, hidden: usize, heads: usize) -> Result<usize> {
    match raw.get("head_dim").and_then(Value::as_u64) {
        Some(d) => Ok(d as usize),
        None if heads > 0 && hidden.is_multiple_of(heads) => Ok(hidden / heads),
        None => bail!("hidden_size {hidden} is not divisible by num_attention_heads {heads}"),
    }
}
