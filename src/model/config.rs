//! `config.json` of a Hugging Face causal LM, as transformers 4.x (`rope_theta`, `torch_dtype`)
//! and 5.x (`rope_parameters`, `dtype`) write it. `model_type` picks the family; each family
//! reads its own fields with its own serde struct (see `model/*.rs`) and fills the sizes every
//! pipeline stage needs here.

use std::path::Path;

use serde_json::Value;

use crate::io::error::{Context, Result};
use crate::model::sizes::Sizes;
use crate::model::{gemma, llama, moe, opt, phi, phi3, qwen3};
use crate::{bail, err};

pub const SUPPORTED: &str = "llama, mistral, qwen2, qwen3, gemma2, gemma3_text, gemma3 (its text model), phi3, mixtral, qwen2_moe, qwen3_moe, olmoe, opt, phi";

/// The family and its own settings.
#[derive(Clone, Debug)]
pub enum Arch {
    Llama(llama::Config),
    Qwen3(qwen3::Config),
    Gemma(gemma::Config),
    Phi3(phi3::Config),
    Moe(moe::Config),
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
                "Gemma3ForConditionalGeneration" => "gemma3".into(),
                "Phi3ForCausalLM" => "phi3".into(),
                "MixtralForCausalLM" => "mixtral".into(),
                "Qwen2MoeForCausalLM" => "qwen2_moe".into(),
                "Qwen3MoeForCausalLM" => "qwen3_moe".into(),
                "OlmoeForCausalLM" => "olmoe".into(),
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
            "gemma3" => {
                gemma::Config::parse_multimodal(&raw).map(|(sizes, g)| Config { arch: Arch::Gemma(g), sizes })?
            }
            "phi3" => phi3::Config::parse(&raw).map(|(sizes, p)| Config { arch: Arch::Phi3(p), sizes })?,
            "mixtral" | "qwen2_moe" | "qwen3_moe" | "olmoe" => {
                moe::Config::parse(&raw, &family).map(|(sizes, m)| Config { arch: Arch::Moe(m), sizes })?
            }
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

    /// The sliding window where every layer applies it (Mistral; Qwen's with max_window_layers
    /// 0; Phi-3's).
    pub fn sliding_window(&self) -> Option<usize> {
        match &self.arch {
            Arch::Llama(l) if l.sliding_layers.iter().all(|&s| s) => l.sliding_window,
            Arch::Qwen3(q) if q.base.sliding_layers.iter().all(|&s| s) => q.base.sliding_window,
            Arch::Moe(m) if m.attn.sliding_layers.iter().all(|&s| s) => m.attn.sliding_window,
            Arch::Phi3(p) => p.sliding_window,
            _ => None,
        }
    }

    /// The window of the layers that slide while others do not (Gemma's local layers, Qwen's
    /// from max_window_layers on).
    pub fn local_window(&self) -> Option<usize> {
        let some = |layers: &[bool]| layers.iter().any(|&s| s) && !layers.iter().all(|&s| s);
        match &self.arch {
            Arch::Gemma(g) if g.sliding_layers.iter().any(|&s| s) => g.sliding_window,
            Arch::Llama(l) if some(&l.sliding_layers) => l.sliding_window,
            Arch::Qwen3(q) if some(&q.base.sliding_layers) => q.base.sliding_window,
            Arch::Moe(m) if some(&m.attn.sliding_layers) => m.attn.sliding_window,
            _ => None,
        }
    }

    /// A multimodal folder read as the text model it holds (`gemma3`): the language model's
    /// tensors are stored under a prefix of their own.
    pub fn is_text_of_multimodal(&self) -> bool {
        self.model_type == "gemma3"
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

    /// Llama 3.2 1B's and SmolLM2 135M's config.json as published on the Hub (their fields,
    /// transformers 4.45 and 4.40 writing): tied heads, Llama 3.2's llama3 scaling and explicit
    /// head_dim, SmolLM2's integer rope_theta and its extra keys, read as transformers reads them.
    #[test]
    fn published_llama_3_2_and_smollm2_configs_are_read() {
        let llama32 = r#"{"architectures": ["LlamaForCausalLM"], "attention_bias": false, "attention_dropout": 0.0,
            "bos_token_id": 128000, "eos_token_id": 128001, "head_dim": 64, "hidden_act": "silu", "hidden_size": 2048,
            "initializer_range": 0.02, "intermediate_size": 8192, "max_position_embeddings": 131072, "mlp_bias": false,
            "model_type": "llama", "num_attention_heads": 32, "num_hidden_layers": 16, "num_key_value_heads": 8,
            "pretraining_tp": 1, "rms_norm_eps": 1e-05, "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0,
            "low_freq_factor": 1.0, "original_max_position_embeddings": 8192, "rope_type": "llama3"},
            "rope_theta": 500000.0, "tie_word_embeddings": true, "torch_dtype": "bfloat16",
            "transformers_version": "4.45.0.dev0", "use_cache": true, "vocab_size": 128256}"#;
        let c = Config::from_json(llama32).unwrap();
        let Arch::Llama(l) = &c.arch else { panic!("llama") };
        assert_eq!((c.hidden_size, c.num_layers, c.num_heads, c.num_kv_heads, c.head_dim), (2048, 16, 32, 8, 64));
        assert_eq!((c.vocab_size, c.max_positions, l.intermediate_size), (128256, 131072, 8192));
        assert!(c.tie_word_embeddings && !l.qkv_bias && !l.mlp_bias && l.sliding_window.is_none());
        assert_eq!(l.rope_theta, 500000.0);
        assert_eq!(
            l.rope_scaling,
            RopeScaling::Llama3 {
                factor: 32.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_positions: 8192.0
            }
        );
        let names: Vec<String> = crate::model::checkpoint_tensors(&c, false).into_iter().map(|(n, _)| n).collect();
        assert!(!names.iter().any(|n| n == "lm_head.weight"), "a tied head is not stored");
        assert_eq!(crate::model::head_shape(&c), Some([128256, 2048]));

        let smollm2 = r#"{"architectures": ["LlamaForCausalLM"], "attention_bias": false, "attention_dropout": 0.0,
            "bos_token_id": 0, "eos_token_id": 0, "hidden_act": "silu", "hidden_size": 576,
            "initializer_range": 0.041666666666666664, "intermediate_size": 1536, "is_llama_config": true,
            "max_position_embeddings": 8192, "model_type": "llama", "num_attention_heads": 9, "num_hidden_layers": 30,
            "num_key_value_heads": 3, "pretraining_tp": 1, "rms_norm_eps": 1e-05, "rope_interleaved": false,
            "rope_scaling": null, "rope_theta": 100000, "tie_word_embeddings": true, "torch_dtype": "bfloat16",
            "transformers_version": "4.40.1", "use_cache": true, "vocab_size": 49152}"#;
        let c = Config::from_json(smollm2).unwrap();
        let Arch::Llama(l) = &c.arch else { panic!("llama") };
        assert_eq!((c.hidden_size, c.num_layers, c.num_heads, c.num_kv_heads, c.head_dim), (576, 30, 9, 3, 64));
        assert_eq!((c.vocab_size, l.intermediate_size, c.dtype.as_deref()), (49152, 1536, Some("bfloat16")));
        assert!(c.tie_word_embeddings);
        assert_eq!((l.rope_theta, &l.rope_scaling), (100000.0, &RopeScaling::None));
    }

    /// Qwen2's and Qwen3's sliding layers as transformers 4.57 picks them: none without
    /// use_sliding_window; with it, `layer_types` where written, else the layers from
    /// max_window_layers (default 28) on, over sliding_window (default 4096).
    #[test]
    fn qwen_sliding_layers_follow_max_window_layers() {
        let base = r#""vocab_size":10,"hidden_size":8,"intermediate_size":16,"num_hidden_layers":4,
            "num_attention_heads":2,"max_position_embeddings":64"#;
        let layers = |family: &str, extra: &str| {
            let c = Config::from_json(&format!("{{\"model_type\":\"{family}\",{base}{extra}}}")).unwrap();
            let l = match &c.arch {
                Arch::Llama(l) => l.clone(),
                Arch::Qwen3(q) => q.base.clone(),
                _ => panic!("{family}"),
            };
            (l.sliding_window, l.sliding_layers, c.sliding_window(), c.local_window())
        };
        for family in ["qwen2", "qwen3"] {
            let none = (None, vec![false; 4], None, None);
            assert_eq!(layers(family, r#","sliding_window":8"#), none);
            assert_eq!(layers(family, r#","use_sliding_window":false,"sliding_window":8"#), none);
            assert_eq!(
                layers(family, r#","use_sliding_window":true,"sliding_window":8,"max_window_layers":2"#),
                (Some(8), vec![false, false, true, true], None, Some(8))
            );
            assert_eq!(
                layers(family, r#","use_sliding_window":true,"max_window_layers":0"#),
                (Some(4096), vec![true; 4], Some(4096), None)
            );
            // Fewer than 28 layers and no max_window_layers: none slide.
            assert_eq!(
                layers(family, r#","use_sliding_window":true,"sliding_window":8"#),
                (Some(8), vec![false; 4], None, None)
            );
            assert_eq!(
                layers(
                    family,
                    r#","use_sliding_window":true,"sliding_window":8,"max_window_layers":3,
                    "layer_types":["sliding_attention","full_attention","sliding_attention","full_attention"]"#
                ),
                (Some(8), vec![true, false, true, false], None, Some(8))
            );
        }
        // Mistral's window covers every layer; LLaMA has none.
        assert_eq!(layers("mistral", r#","sliding_window":8"#), (Some(8), vec![true; 4], Some(8), None));
        assert_eq!(layers("llama", r#","sliding_window":8"#), (None, vec![false; 4], None, None));
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
