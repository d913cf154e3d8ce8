//! Qwen3, read top to bottom: a LLaMA-shaped block (pre-RMSNorm attention with rotary
//! embeddings and grouped-query heads, then a SwiGLU MLP) whose queries and keys are each
//! RMS-normalised per head (`q_norm`, `k_norm`, over `head_dim`) before the rotation. `head_dim`
//! is explicit (it need not be hidden / heads); `attention_bias` puts biases on q, k, v and o;
//! the head may be tied. The config is read as the LLaMA family reads its own, so the sizes,
//! rope settings, linears and routes are the same; only the block's forward differs.

use burn::tensor::{Device, Tensor};
use serde_json::Value;

use super::{Positions, Spec, attention, llama, rms_norm, rms_norm_heads, silu, split_heads, to_device1};
use crate::io::checkpoint::Checkpoint;
use crate::io::error::Result;
use crate::model::sizes::Sizes;

/// The linears, in the LLaMA family's declared order.
const Q: usize = 0;
const K: usize = 1;
const V: usize = 2;
const O: usize = 3;
const GATE: usize = 4;
const UP: usize = 5;
const DOWN: usize = 6;

#[derive(Clone, Debug)]
pub struct Config {
    /// Everything but the q/k norms, as the LLaMA family reads it.
    pub base: llama::Config,
}

impl Config {
    pub fn parse(value: &Value) -> Result<(Sizes, Config)> {
        let (sizes, base) = llama::Config::parse(value, "qwen3")?;
        Ok((sizes, Config { base }))
    }
}

/// The linears and the authors' routing: those of the LLaMA family, whose block Qwen3's is.
pub fn spec(c: &Sizes, q: &Config) -> Spec {
    llama::spec(c, &q.base)
}

/// Tensors outside the prunable linears: the LLaMA family's, and each block's q/k norms.
pub fn tensors(c: &Sizes, q: &Config, lm_head_stored: bool) -> Vec<(String, Vec<usize>)> {
    let mut t = llama::tensors(c, &q.base, lm_head_stored);
    for b in 0..c.num_layers {
        for n in ["self_attn.q_norm", "self_attn.k_norm"] {
            t.push((format!("model.layers.{b}.{n}.weight"), vec![q.base.head_dim]));
        }
    }
    t
}

/// A block's norms and the settings its forward needs.
#[derive(Clone)]
pub struct Parts {
    input_norm: Tensor<1>,
    post_attention_norm: Tensor<1>,
    q_norm: Tensor<1>,
    k_norm: Tensor<1>,
    /// This layer attends over the sliding window only.
    sliding: bool,
    cfg: llama::Config,
}

impl Parts {
    pub fn load(ck: &Checkpoint, prefix: &str, index: usize, c: &Sizes, q: &Config, device: &Device) -> Result<Parts> {
        let norm =
            |name: &str, n: usize| ck.load(&format!("{prefix}.{name}.weight"), &[n]).map(|t| to_device1(t, device));
        let (d, hd) = (c.hidden_size, q.base.head_dim);
        Ok(Parts {
            input_norm: norm("input_layernorm", d)?,
            post_attention_norm: norm("post_attention_layernorm", d)?,
            q_norm: norm("self_attn.q_norm", hd)?,
            k_norm: norm("self_attn.k_norm", hd)?,
            sliding: q.base.sliding_layers.get(index).copied().unwrap_or(false),
            cfg: q.base.clone(),
        })
    }
}

/// h + attn(norm(h)) with per-head q/k norms, then + mlp(norm(·)); `run(i, x)` runs linear i on
/// x (and records x).
pub fn forward(
    p: &Parts,
    h: Tensor<3>,
    pos: &Positions,
    run: &mut dyn FnMut(usize, &Tensor<3>) -> Tensor<3>,
) -> Tensor<3> {
    let c = &p.cfg;
    let (nh, nkv, hd, eps) = (c.num_heads, c.num_kv_heads, c.head_dim, c.rms_norm_eps);
    let pos = &pos.for_layer(p.sliding);
    let rope = pos.rope.as_ref().expect("Qwen3 rotates q and k");

    let x = rms_norm(h.clone(), &p.input_norm, eps);
    let q = rope.apply(rms_norm_heads(run(Q, &x), &p.q_norm, nh, hd, eps));
    let k = rope.apply(rms_norm_heads(run(K, &x), &p.k_norm, nkv, hd, eps));
    let v = split_heads(run(V, &x), nkv, hd);
    let attn = attention(q, k, v, Some((hd as f64).sqrt()), pos);
    let h = h + run(O, &attn);

    let x = rms_norm(h.clone(), &p.post_attention_norm, eps);
    let gated = silu(run(GATE, &x)) * run(UP, &x);
    h + run(DOWN, &gated)
}

#[cfg(test)]
mod tests {
    #[test]
    fn declared_routing_is_the_llama_rule() {
        let json = r#"{"model_type":"qwen3","vocab_size":10,"hidden_size":8,"intermediate_size":16,"head_dim":4,
            "num_hidden_layers":1,"num_attention_heads":4,"num_key_value_heads":2,"max_position_embeddings":32}"#;
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
        // head_dim explicit: q is 4 heads × 4 = 16 rows of an 8-wide input.
        let s = super::super::testing::spec(json);
        assert_eq!(s.linears[0].shape, [16, 8]);
    }
}
