//! Phi-2 (`PhiForCausalLM`, transformers' own tensor names), read top to bottom.
//!
//! One LayerNorm (with bias) feeds attention and the MLP in parallel:
//! h = h + dense(attn(ln(h))) + fc2(gelu_new(fc1(ln(h)))). Rotary embeddings turn only the first
//! `partial_rotary_factor × head_dim` dims of each head. Biases everywhere, a final LayerNorm,
//! and an `lm_head` with bias. `qk_layernorm` is refused with one line.

use std::sync::Arc;

use burn::tensor::{DType, Device, Tensor};
use serde::Deserialize;
use serde_json::Value;

use super::{
    Ends, LayerNorm, LinearSpec, Positions, RopeFreqs, Route, Spec, TokenTable, attention, lm_head, split_heads,
    to_device1_as,
};
use crate::gpu::context::Gpu;
use crate::io::checkpoint::Checkpoint;
use crate::io::error::Result;
use crate::model::sizes::{self, Sizes, need, positive, rope_field};
use crate::{bail, err};

const Q: usize = 0;
const K: usize = 1;
const V: usize = 2;
const DENSE: usize = 3;
const FC1: usize = 4;
const FC2: usize = 5;

#[derive(Clone, Debug)]
pub struct Config {
    pub intermediate_size: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub layer_norm_eps: f64,
    pub rope_theta: f64,
    /// Dims of each head that rotate: ⌊partial_rotary_factor × head_dim⌋.
    pub rotary_dim: usize,
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
    layer_norm_eps: Option<f64>,
    hidden_act: Option<String>,
    qk_layernorm: Option<bool>,
    rope_scaling: Option<Value>,
    tie_word_embeddings: Option<bool>,
    torch_dtype: Option<String>,
    dtype: Option<String>,
}

impl Config {
    pub fn parse(value: &Value) -> Result<(Sizes, Config)> {
        let raw: Raw = serde_json::from_value(value.clone()).map_err(|e| err!("not a valid config.json ({e})"))?;
        let act = raw.hidden_act.as_deref().unwrap_or("gelu_new");
        if act != "gelu_new" {
            bail!("unsupported hidden_act \"{act}\" for Phi (only gelu_new)");
        }
        if raw.qk_layernorm.unwrap_or(false) {
            bail!("Phi with qk_layernorm = true is not supported");
        }
        if raw.rope_scaling.as_ref().is_some_and(|s| !s.is_null()) {
            bail!("Phi with rope_scaling is not supported");
        }
        // transformers 5.x keeps a scaling in rope_parameters, beside rope_theta.
        if let Some(kind) = value.get("rope_parameters").and_then(sizes::rope_type)
            && kind != "default"
        {
            bail!("Phi with rope scaling \"{kind}\" (rope_parameters) is not supported");
        }
        let hidden_size = need(raw.hidden_size, "hidden_size")?;
        let num_heads = need(raw.num_attention_heads, "num_attention_heads")?;
        let num_kv_heads = raw.num_key_value_heads.unwrap_or(num_heads);
        if num_heads == 0 || num_kv_heads == 0 || num_heads % num_kv_heads != 0 {
            bail!(
                "num_attention_heads ({num_heads}) must be a positive multiple of num_key_value_heads ({num_kv_heads})"
            );
        }
        if hidden_size % num_heads != 0 {
            bail!("hidden_size {hidden_size} is not divisible by num_attention_heads {num_heads}");
        }
        let head_dim = hidden_size / num_heads;
        let factor = rope_field(value, "partial_rotary_factor").unwrap_or(0.5);
        if !(factor > 0.0 && factor <= 1.0) {
            bail!("\"partial_rotary_factor\" is {factor}; it must be in (0, 1]");
        }
        let rotary_dim = (factor * head_dim as f64) as usize;
        if rotary_dim == 0 || !rotary_dim.is_multiple_of(2) {
            bail!(
                "partial_rotary_factor {factor} × head_dim {head_dim} gives {rotary_dim} rotary dims; it must be even and positive"
            );
        }
        let intermediate_size = need(raw.intermediate_size, "intermediate_size")?;
        if intermediate_size == 0 {
            bail!("\"intermediate_size\" is 0; it must be at least 1");
        }
        let phi = Config {
            intermediate_size,
            num_heads,
            num_kv_heads,
            head_dim,
            layer_norm_eps: positive(raw.layer_norm_eps.unwrap_or(1e-5), "layer_norm_eps")?,
            rope_theta: positive(rope_field(value, "rope_theta").unwrap_or(10000.0), "rope_theta")?,
            rotary_dim,
        };
        Ok((
            Sizes {
                model_type: "phi",
                vocab_size: need(raw.vocab_size, "vocab_size")?,
                hidden_size,
                embed_dim: hidden_size,
                num_layers: need(raw.num_hidden_layers, "num_hidden_layers")?,
                num_heads,
                num_kv_heads,
                head_dim,
                max_positions: need(raw.max_position_embeddings, "max_position_embeddings")?,
                tie_word_embeddings: raw.tie_word_embeddings.unwrap_or(false),
                dtype: raw.dtype.or(raw.torch_dtype),
            },
            phi,
        ))
    }
}

pub fn spec(c: &Sizes, p: &Config) -> Spec {
    let (d, f) = (c.hidden_size, p.intermediate_size);
    let (q, kv) = (p.num_heads * p.head_dim, p.num_kv_heads * p.head_dim);
    let lin = |name: &str, shape, qkv| LinearSpec { name: name.into(), shape, bias: true, qkv, parts: 1, expert: None };
    let route = Route::to;
    Spec {
        block_prefix: "model.layers",
        linears: vec![
            lin("self_attn.q_proj", [q, d], true),
            lin("self_attn.k_proj", [kv, d], true),
            lin("self_attn.v_proj", [kv, d], true),
            lin("self_attn.dense", [d, q], false),
            lin("mlp.fc1", [f, d], false),
            lin("mlp.fc2", [d, f], false),
        ],
        // The authors' routing: q, k, v ← dense; dense ← fc1; fc1 ← fc2; fc2 ← next block's q.
        routes: Some(vec![
            route(false, DENSE),
            route(false, DENSE),
            route(false, DENSE),
            route(false, FC1),
            route(false, FC2),
            route(true, Q),
        ]),
        // Attention and MLP run in parallel off the same input; both only add to the output.
        output_only: vec![DENSE, FC2],
        // q, k, v and fc1 ← the one LayerNorm's output.
        input_of: vec![Q, Q, Q, DENSE, Q, FC2],
    }
}

/// Tensors outside the prunable linears, with their shapes.
pub fn tensors(c: &Sizes, _p: &Config) -> Vec<(String, Vec<usize>)> {
    let (v, d) = (c.vocab_size, c.hidden_size);
    let mut t = vec![
        ("model.embed_tokens.weight".to_string(), vec![v, d]),
        ("model.final_layernorm.weight".to_string(), vec![d]),
        ("model.final_layernorm.bias".to_string(), vec![d]),
        ("lm_head.bias".to_string(), vec![v]),
    ];
    if !c.tie_word_embeddings {
        t.push(("lm_head.weight".into(), vec![v, d]));
    }
    for b in 0..c.num_layers {
        for p in ["weight", "bias"] {
            t.push((format!("model.layers.{b}.input_layernorm.{p}"), vec![d]));
        }
    }
    t
}

pub struct Outer {
    embed_tokens: TokenTable,
    final_norm: LayerNorm,
    /// None when loaded for pruning.
    lm_head: Option<super::Linear>,
    hidden: usize,
    pub rope: RopeFreqs,
}

impl Outer {
    pub fn load(
        ck: &Arc<Checkpoint>,
        c: &Sizes,
        p: &Config,
        device: &Device,
        dtype: DType,
        ends: Ends,
    ) -> Result<Outer> {
        let (v, d) = (c.vocab_size, c.hidden_size);
        let embed_tokens = TokenTable::load(ck, "model.embed_tokens.weight", [v, d], device, dtype, ends)?;
        let weight = lm_head(ck, c, &embed_tokens, device, dtype, ends)?;
        let bias = ck.load("lm_head.bias", &[v])?;
        Ok(Outer {
            embed_tokens,
            final_norm: LayerNorm::load(ck, "model.final_layernorm", d, p.layer_norm_eps, device)?,
            lm_head: weight.map(|weight| super::Linear { weight, bias: Some(to_device1_as(bias, device, dtype)) }),
            hidden: d,
            rope: RopeFreqs::new(p.rope_theta, p.rotary_dim),
        })
    }

    pub fn embed(&self, ids: &[u32], batch: usize, t: usize) -> Result<Tensor<3>> {
        Ok(self.embed_tokens.rows(ids)?.reshape([batch, t, self.hidden]))
    }

    pub fn head(&self, hidden: Tensor<3>, gpu: Option<&Gpu>) -> Option<Tensor<3>> {
        Some(self.lm_head.as_ref()?.forward(self.final_norm.forward(hidden), gpu))
    }
}

/// A block's one LayerNorm and the settings its forward needs.
#[derive(Clone)]
pub struct Parts {
    input_layernorm: LayerNorm,
    cfg: Config,
}

impl Parts {
    pub fn load(ck: &Checkpoint, prefix: &str, c: &Sizes, p: &Config, device: &Device) -> Result<Parts> {
        Ok(Parts {
            input_layernorm: LayerNorm::load(
                ck,
                &format!("{prefix}.input_layernorm"),
                c.hidden_size,
                p.layer_norm_eps,
                device,
            )?,
            cfg: p.clone(),
        })
    }
}

/// gelu_new, the tanh form.
fn gelu_new(x: Tensor<3>) -> Tensor<3> {
    super::gelu_tanh(x)
}

/// h + dense(attn(ln(h))) + fc2(gelu_new(fc1(ln(h)))); `run(i, x)` runs linear i on x.
pub fn forward(
    p: &Parts,
    h: Tensor<3>,
    pos: &Positions,
    run: &mut dyn FnMut(usize, &Tensor<3>) -> Tensor<3>,
) -> Tensor<3> {
    let c = &p.cfg;
    let (nh, nkv, hd) = (c.num_heads, c.num_kv_heads, c.head_dim);
    let rope = pos.rope.as_ref().expect("Phi rotates part of q and k");

    let x = p.input_layernorm.forward(h.clone());
    let q = rope.apply(split_heads(run(Q, &x), nh, hd));
    let k = rope.apply(split_heads(run(K, &x), nkv, hd));
    let v = split_heads(run(V, &x), nkv, hd);
    let attn = run(DENSE, &attention(q, k, v, Some((hd as f64).sqrt()), pos));
    let hidden = gelu_new(run(FC1, &x));
    let mlp = run(FC2, &hidden);
    h + attn + mlp
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#""model_type":"phi","vocab_size":10,"hidden_size":16,"intermediate_size":32,
        "num_hidden_layers":1,"num_attention_heads":2,"max_position_embeddings":32"#;

    #[test]
    fn declared_routing_is_the_authors_table() {
        assert_eq!(
            super::super::testing::routed(&format!("{{{BASE}}}")),
            vec![
                ("self_attn.q_proj", false, "self_attn.dense"),
                ("self_attn.k_proj", false, "self_attn.dense"),
                ("self_attn.v_proj", false, "self_attn.dense"),
                ("self_attn.dense", false, "mlp.fc1"),
                ("mlp.fc1", false, "mlp.fc2"),
                ("mlp.fc2", true, "self_attn.q_proj"),
            ]
        );
        let s = super::super::testing::spec(&format!("{{{BASE}}}"));
        assert!(s.linears.iter().all(|l| l.bias));
    }

    #[test]
    fn unsupported_variants_are_refused_in_one_line() {
        super::super::testing::refused(
            BASE,
            &[
                (r#","qk_layernorm":true"#, "qk_layernorm"),
                (r#","hidden_act":"relu""#, "unsupported hidden_act \"relu\""),
                (r#","partial_rotary_factor":0.1"#, "rotary dims"),
            ],
        );
    }

    #[test]
    fn gelu_new_by_hand() {
        let d = Device::flex();
        let x = Tensor::<3>::from_data(burn::tensor::TensorData::new(vec![-1.0f32, 0.0, 0.5, 2.0], [1, 1, 4]), &d);
        let got = super::super::host_f32(gelu_new(x), "gelu").unwrap();
        // 0.5·x·(1 + tanh(√(2/π)(x + 0.044715x³))), evaluated with Python's math module.
        let want = [-0.15880800939172324f64, 0.0, 0.34571400982514394, 1.954597694087775];
        for (g, w) in got.iter().zip(want) {
            assert!((*g as f64 - w).abs() < 1e-6, "{got:?}");
        }
        assert_eq!(got.len(), 4);
    }
}
