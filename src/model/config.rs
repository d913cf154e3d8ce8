//! `config.json` of a Hugging Face causal LM, as transformers 4.x (`rope_theta`, `torch_dtype`)
//! and 5.x (`rope_parameters`, `dtype`) write it. `model_type` picks the family; each family
//! reads its own fields with its own serde struct (see `model/*.rs`) and fills the sizes every
//! pipeline stage needs here.

use std::path::Path;

use serde_json::Value;

use crate::io::error::{Context, Result};
use crate::model::sizes::Sizes;
use crate::model::{gemma, llama, opt, phi, phi3, qwen3};
use crate::{bail, err};

pub const SUPPORTED: &str = "llama, mistral, qwen2, qwen3, gemma2, gemma3_text, phi3, opt, phi";

/// The family and its own settings.
#[derive(Clone, Debug)]
pub enum Arch {
    Llama(llama::Config),
    Qwen3(qwen3::Config),
    Gemma(gemma::Config),
    Phi3(phi3::Config),
    Opt(opt::Config),
    Phi(phi::Config),
}

/// A model's configuration: the sizes every stage reads (`config.hidden_size` and the like
/// reach them), and the family with its own settings.
#[derive(Clone, Debug)]
pub struct Config {
    pub arch: Arch,
    pub sizes: Sizes,
}

impl std::ops::Deref for Config {
    type Target = Sizes;

    fn deref(&self) -> &Sizes {
        &self.sizes
    }
}

impl Config {
    pub fn from_file(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).context(|| format!("cannot read {}", path.display()))?;
        Config::from_json(&text).map_err(|e| err!("{}: {e}", path.display()))
    }

    pub fn from_json(text: &str) -> Result<Config> {
        let raw: Value = serde_json::from_str(text).map_err(|e| err!("not a valid config.json ({e})"))?;
        if !raw.is_object() {
            bail!("not a valid config.json (not a JSON object)");
        }
        let model_type = raw.get("model_type").and_then(Value::as_str);
        let architecture = raw.get("architectures").and_then(|a| a.get(0)).and_then(Value::as_str);
        let family = match (model_type, architecture) {
            (Some(t), _) => t.to_string(),
            (None, Some(a)) => match a {
                "LlamaForCausalLM" => "llama".into(),
                "MistralForCausalLM" => "mistral".into(),
                "Qwen2ForCausalLM" => "qwen2".into(),
                "Qwen3ForCausalLM" => "qwen3".into(),
                "Gemma2ForCausalLM" => "gemma2".into(),
                "Gemma3ForCausalLM" => "gemma3_text".into(),
                "Phi3ForCausalLM" => "phi3".into(),
                "OPTForCausalLM" => "opt".into(),
                "PhiForCausalLM" => "phi".into(),
                other => bail!("unsupported architecture \"{other}\" (supported: {SUPPORTED})"),
            },
            (None, None) => bail!("missing field \"model_type\""),
        };
        let config = match family.as_str() {
            "llama" | "mistral" | "qwen2" => {
                llama::Config::parse(&raw, &family).map(|(sizes, l)| Config { arch: Arch::Llama(l), sizes })?
            }
            "qwen3" => qwen3::Config::parse(&raw).map(|(sizes, q)| Config { arch: Arch::Qwen3(q), sizes })?,
            "gemma2" | "gemma3_text" => {
                gemma::Config::parse(&raw, &family).map(|(sizes, g)| Config { arch: Arch::Gemma(g), sizes })?
            }
            "phi3" => phi3::Config::parse(&raw).map(|(sizes, p)| Config { arch: Arch::Phi3(p), sizes })?,
            "opt" => opt::Config::parse(&raw).map(|(sizes, o)| Config { arch: Arch::Opt(o), sizes })?,
            "phi" => phi::Config::parse(&raw).map(|(sizes, p)| Config { arch: Arch::Phi(p), sizes })?,
            other => bail!("unsupported model_type \"{other}\" (supported: {SUPPORTED})"),
        };
        config.validate()?;
        Ok(config)
    }

    /// Sizes that parse but cannot describe a working model are refused here, before they turn
    /// into NaN activations and a silently under-pruned result.
    fn validate(&self) -> Result<()> {
        for (name, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_layers),
            ("num_attention_heads", self.num_heads),
            ("max_position_embeddings", self.max_positions),
            ("head_dim", self.head_dim),
        ] {
            if v == 0 {
                bail!("\"{name}\" is 0; it must be at least 1");
            }
        }
        if self.num_kv_heads == 0 || !self.num_heads.is_multiple_of(self.num_kv_heads) {
            bail!(
                "num_attention_heads ({}) must be a positive multiple of num_key_value_heads ({})",
                self.num_heads,
                self.num_kv_heads
            );
        }
        Ok(())
    }

    /// Mistral's sliding window, which every layer applies (implemented); Qwen2's and Qwen3's
    /// apply only from `max_window_layers` on, which is not, so windows longer are refused.
    pub fn sliding_window(&self) -> Option<usize> {
        match &self.arch {
            Arch::Llama(l) if self.model_type == "mistral" => l.sliding_window,
            Arch::Phi3(p) => p.sliding_window,
            _ => None,
        }
    }

    /// The window of the layers that slide while others do not (Gemma's local layers).
    pub fn local_window(&self) -> Option<usize> {
        match &self.arch {
            Arch::Gemma(g) if g.sliding_layers.iter().any(|&s| s) => g.sliding_window,
            _ => None,
        }
    }

    /// Whether the family's attention takes explicit masks on every device (Gemma 2's soft-capped
    /// scores run in burn ops, never in the causal-only CPU and flash kernels).
    pub fn masks_attention(&self) -> bool {
        matches!(self.arch, Arch::Gemma(_))
    }

    /// Checks that windows of `t` tokens run exactly on this model.
    pub fn check_seqlen(&self, t: usize) -> Result<()> {
        if t == 0 {
            bail!("--seqlen must be at least 1");
        }
        if t > self.max_positions {
            bail!("--seqlen {t} exceeds the model's max_position_embeddings ({})", self.max_positions);
        }
        let sliding_window = match &self.arch {
            Arch::Llama(l) if self.model_type != "mistral" => l.sliding_window,
            Arch::Qwen3(q) => q.base.sliding_window,
            _ => None,
        };
        if let Some(w) = sliding_window
            && t > w
        {
            bail!(
                "--seqlen {t} exceeds the sliding window ({w}); {}'s sliding-window attention (from max_window_layers on) is not implemented",
                self.model_type
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::llama::RopeScaling;

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
            let Arch::Llama(l) = &c.arch else { panic!("llama") };
            assert_eq!(l.rope_theta, 500000.0);
            assert_eq!(c.dtype.as_deref(), Some("bfloat16"));
            assert_eq!(c.head_dim, 4);
            assert!(matches!(l.rope_scaling, RopeScaling::Llama3 { factor, .. } if factor == 8.0));
        }
    }

    #[test]
    fn phi_reads_partial_rotary_from_either_generation() {
        let base = r#""model_type":"phi","vocab_size":10,"hidden_size":16,"intermediate_size":32,
            "num_hidden_layers":1,"num_attention_heads":2,"max_position_embeddings":32,
            "hidden_act":"gelu_new""#;
        let v4 = format!("{{{base},\"partial_rotary_factor\":0.5,\"rope_theta\":100.0,\"torch_dtype\":\"float16\"}}");
        let v5 = format!(
            "{{{base},\"rope_parameters\":{{\"rope_type\":\"default\",\"partial_rotary_factor\":0.5,\"rope_theta\":100.0}},\"dtype\":\"float16\"}}"
        );
        for text in [v4, v5] {
            let c = Config::from_json(&text).unwrap();
            let Arch::Phi(p) = &c.arch else { panic!("phi") };
            assert_eq!((p.rotary_dim, p.rope_theta), (4, 100.0));
            assert_eq!(c.dtype.as_deref(), Some("float16"));
        }
    }
}
