//! `config.json` of a Hugging Face causal LM, as transformers 4.x (`rope_theta`, `rope_scaling`,
//! `torch_dtype`) and 5.x (`rope_parameters`, `dtype`) write it.

use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use crate::error::{Context, Result};
use crate::{bail, err};

/// The architectures this crate runs; they share one block layout (see `model.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    Llama,
    Mistral,
    Qwen2,
}

pub const SUPPORTED: &str = "llama, mistral, qwen2";

impl Arch {
    pub fn name(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Mistral => "mistral",
            Arch::Qwen2 => "qwen2",
        }
    }
}

/// RoPE frequency scaling; only what changes the forward pass of the supported families.
#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    None,
    Llama3 { factor: f64, low_freq_factor: f64, high_freq_factor: f64, original_max_positions: f64 },
}

#[derive(Clone, Debug)]
pub struct Config {
    pub arch: Arch,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub max_positions: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: RopeScaling,
    pub tie_word_embeddings: bool,
    /// q/k/v projections carry biases (Qwen2, or LLaMA with `attention_bias`).
    pub qkv_bias: bool,
    /// Mistral's sliding window; attention is exact only while sequences fit inside it.
    pub sliding_window: Option<usize>,
    /// The dtype the checkpoint declares (`torch_dtype` or `dtype`), for the report only:
    /// the writer keeps each tensor's own on-disk dtype.
    pub dtype: Option<String>,
}

#[derive(Deserialize)]
struct Raw {
    model_type: Option<String>,
    #[serde(default)]
    architectures: Vec<String>,
    vocab_size: Option<usize>,
    hidden_size: Option<usize>,
    intermediate_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<usize>,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    max_position_embeddings: Option<usize>,
    rms_norm_eps: Option<f64>,
    rope_theta: Option<f64>,
    rope_scaling: Option<Value>,
    rope_parameters: Option<Value>,
    tie_word_embeddings: Option<bool>,
    attention_bias: Option<bool>,
    sliding_window: Option<Value>,
    use_sliding_window: Option<bool>,
    torch_dtype: Option<String>,
    dtype: Option<String>,
    hidden_act: Option<String>,
}

impl Config {
    pub fn from_file(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).context(|| format!("cannot read {}", path.display()))?;
        Config::from_json(&text).map_err(|e| err!("{}: {e}", path.display()))
    }

    pub fn from_json(text: &str) -> Result<Config> {
        let raw: Raw = serde_json::from_str(text).map_err(|e| err!("not a valid config.json ({e})"))?;
        let arch = match (raw.model_type.as_deref(), raw.architectures.first().map(String::as_str)) {
            (Some("llama"), _) | (None, Some("LlamaForCausalLM")) => Arch::Llama,
            (Some("mistral"), _) | (None, Some("MistralForCausalLM")) => Arch::Mistral,
            (Some("qwen2"), _) | (None, Some("Qwen2ForCausalLM")) => Arch::Qwen2,
            (Some(other), _) => bail!("unsupported model_type \"{other}\" (supported: {SUPPORTED})"),
            (None, Some(other)) => bail!("unsupported architecture \"{other}\" (supported: {SUPPORTED})"),
            (None, None) => bail!("missing field \"model_type\""),
        };
        fn need<T>(v: Option<T>, name: &str) -> Result<T> {
            v.ok_or_else(|| err!("missing field \"{name}\""))
        }
        if let Some(act) = &raw.hidden_act {
            if act != "silu" {
                bail!("unsupported hidden_act \"{act}\" (only silu)");
            }
        }
        let hidden_size = need(raw.hidden_size, "hidden_size")?;
        let num_heads = need(raw.num_attention_heads, "num_attention_heads")?;
        let num_kv_heads = raw.num_key_value_heads.unwrap_or(num_heads);
        if num_heads == 0 || num_kv_heads == 0 || num_heads % num_kv_heads != 0 {
            bail!("num_attention_heads ({num_heads}) must be a positive multiple of num_key_value_heads ({num_kv_heads})");
        }
        let head_dim = match raw.head_dim {
            Some(d) => d,
            None if hidden_size % num_heads == 0 => hidden_size / num_heads,
            None => bail!("hidden_size {hidden_size} is not divisible by num_attention_heads {num_heads}"),
        };
        // 5.x moves rope_theta and the scaling into rope_parameters.
        let rope_params = raw.rope_parameters.as_ref().filter(|v| v.is_object());
        let rope_theta = raw
            .rope_theta
            .or_else(|| rope_params.and_then(|p| p.get("rope_theta")).and_then(Value::as_f64))
            .unwrap_or(10000.0);
        let scaling_value = raw.rope_scaling.as_ref().filter(|v| v.is_object()).or(rope_params);
        let rope_scaling = match scaling_value {
            Some(s) => parse_rope_scaling(s)?,
            None => RopeScaling::None,
        };
        let sliding_window = match (arch, raw.use_sliding_window) {
            (Arch::Qwen2, Some(false) | None) => None,
            _ => raw.sliding_window.as_ref().and_then(Value::as_u64).map(|w| w as usize),
        };
        let config = Config {
            arch,
            vocab_size: need(raw.vocab_size, "vocab_size")?,
            hidden_size,
            intermediate_size: need(raw.intermediate_size, "intermediate_size")?,
            num_layers: need(raw.num_hidden_layers, "num_hidden_layers")?,
            num_heads,
            num_kv_heads,
            head_dim,
            max_positions: need(raw.max_position_embeddings, "max_position_embeddings")?,
            rms_norm_eps: raw.rms_norm_eps.unwrap_or(1e-6),
            rope_theta,
            rope_scaling,
            tie_word_embeddings: raw.tie_word_embeddings.unwrap_or(false),
            qkv_bias: arch == Arch::Qwen2 || raw.attention_bias.unwrap_or(false),
            sliding_window,
            dtype: raw.dtype.or(raw.torch_dtype),
        };
        config.validate()?;
        Ok(config)
    }

    /// Values that parse but cannot describe a working model are refused here, before they
    /// turn into NaN activations and a silently under-pruned result.
    fn validate(&self) -> Result<()> {
        for (name, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_layers),
            ("max_position_embeddings", self.max_positions),
            ("head_dim", self.head_dim),
        ] {
            if v == 0 {
                bail!("\"{name}\" is 0; it must be at least 1");
            }
        }
        if self.head_dim % 2 != 0 {
            bail!("head_dim {} is odd; rotary embeddings need an even head_dim", self.head_dim);
        }
        if !(self.rms_norm_eps.is_finite() && self.rms_norm_eps > 0.0) {
            bail!("\"rms_norm_eps\" is {}; it must be a positive number", self.rms_norm_eps);
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 0.0) {
            bail!("\"rope_theta\" is {}; it must be a positive number", self.rope_theta);
        }
        if let RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_positions } = self.rope_scaling {
            for (name, v) in [("factor", factor), ("low_freq_factor", low_freq_factor), ("high_freq_factor", high_freq_factor), ("original_max_position_embeddings", original_max_positions)] {
                if !(v.is_finite() && v > 0.0) {
                    bail!("rope scaling \"{name}\" is {v}; it must be a positive number");
                }
            }
            if high_freq_factor <= low_freq_factor {
                bail!("rope scaling needs high_freq_factor ({high_freq_factor}) above low_freq_factor ({low_freq_factor})");
            }
        }
        Ok(())
    }

    /// Checks that windows of `t` tokens run exactly on this model.
    pub fn check_seqlen(&self, t: usize) -> Result<()> {
        if t == 0 {
            bail!("--seqlen must be at least 1");
        }
        if t > self.max_positions {
            bail!("--seqlen {t} exceeds the model's max_position_embeddings ({})", self.max_positions);
        }
        if let Some(w) = self.sliding_window {
            if t > w {
                bail!("--seqlen {t} exceeds the sliding window ({w}); sliding-window attention is not implemented");
            }
        }
        Ok(())
    }
}

fn parse_rope_scaling(s: &Value) -> Result<RopeScaling> {
    let kind = s.get("rope_type").or_else(|| s.get("type")).and_then(Value::as_str).unwrap_or("default");
    let num = |k: &str| -> Result<f64> {
        s.get(k).and_then(Value::as_f64).ok_or_else(|| err!("rope scaling \"{kind}\" lacks \"{k}\""))
    };
    match kind {
        "default" => Ok(RopeScaling::None),
        "llama3" => Ok(RopeScaling::Llama3 {
            factor: num("factor")?,
            low_freq_factor: num("low_freq_factor")?,
            high_freq_factor: num("high_freq_factor")?,
            original_max_positions: num("original_max_position_embeddings")?,
        }),
        other => bail!("unsupported rope scaling type \"{other}\" (supported: default, llama3)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_both_config_generations() {
        let v4 = r#"{"model_type":"llama","vocab_size":10,"hidden_size":8,"intermediate_size":16,
            "num_hidden_layers":1,"num_attention_heads":2,"max_position_embeddings":32,
            "rope_theta":500000.0,"torch_dtype":"bfloat16",
            "rope_scaling":{"rope_type":"llama3","factor":8.0,"low_freq_factor":1.0,
            "high_freq_factor":4.0,"original_max_position_embeddings":8192}}"#;
        let v5 = r#"{"model_type":"llama","vocab_size":10,"hidden_size":8,"intermediate_size":16,
            "num_hidden_layers":1,"num_attention_heads":2,"max_position_embeddings":32,
            "dtype":"bfloat16","rope_parameters":{"rope_type":"llama3","rope_theta":500000.0,
            "factor":8.0,"low_freq_factor":1.0,"high_freq_factor":4.0,
            "original_max_position_embeddings":8192}}"#;
        for text in [v4, v5] {
            let c = Config::from_json(text).unwrap();
            assert_eq!(c.rope_theta, 500000.0);
            assert_eq!(c.dtype.as_deref(), Some("bfloat16"));
            assert_eq!(c.head_dim, 4);
            assert!(matches!(c.rope_scaling, RopeScaling::Llama3 { factor, .. } if factor == 8.0));
        }
    }
}
