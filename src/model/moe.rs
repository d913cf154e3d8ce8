//! Mixtures of experts, read top to bottom: Mixtral (`mixtral`), Qwen2-MoE (`qwen2_moe`),
//! Qwen3-MoE (`qwen3_moe`) and OLMoE (`olmoe`). A block is the LLaMA family's attention (with
//! Qwen3's per-head q/k norms, or OLMoE's norms over the whole projections and its optional
//! clipping), then a sparse MLP: a router picks each token's top-k experts from the softmax of
//! its logits (in f32; the k weights renormalised where the config says, always in Mixtral),
//! each expert (a SwiGLU MLP) runs on the tokens sent to it, and their outputs, weighted, are
//! summed in expert order, as transformers' index_add sums them. Qwen2-MoE adds a shared
//! expert that every token passes through, scaled by a sigmoid gate.
//!
//! Every expert's linears are declared as linears of the block, so each expert is calibrated
//! on the rows the router sends it: the forward calls an expert's linears with those rows
//! only, and one product per expert and linear. The routers are not pruned.

use burn::tensor::{DType, Device, IndexingUpdateOp, Int, Tensor, TensorData};
use serde::Deserialize;
use serde_json::Value;

use super::{
    LinearSpec, Positions, Route, Spec, attention, llama, rms_norm, rms_norm_heads, silu, split_heads, to_device1,
};
use crate::gpu::tensor::{host_f32, to_dtype};
use crate::io::checkpoint::Checkpoint;
use crate::io::error::Result;
use crate::model::sizes::{Sizes, need};
use crate::{bail, err};

/// The attention's linears, first in every block.
const Q: usize = 0;
const K: usize = 1;
const V: usize = 2;
const O: usize = 3;
/// The first expert's gate; expert e's gate, up and down follow at `EXPERTS + 3e`.
const EXPERTS: usize = 4;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Mixtral,
    Qwen2Moe,
    Qwen3Moe,
    Olmoe,
}

/// Where queries and keys are RMS-normalised before the rotation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QkNorm {
    None,
    /// Each head's `head_dim` values (Qwen3-MoE).
    PerHead,
    /// The whole projection at once (OLMoE).
    Whole,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub kind: Kind,
    /// The attention, norms, rotation and window, as the LLaMA family reads them.
    pub attn: llama::Config,
    pub num_experts: usize,
    pub top_k: usize,
    /// Each expert's intermediate size.
    pub expert_intermediate: usize,
    /// The top-k weights divided by their sum.
    pub norm_topk_prob: bool,
    /// Qwen2-MoE's shared expert's intermediate size.
    pub shared_intermediate: Option<usize>,
    pub qk_norm: QkNorm,
    /// OLMoE: q, k and v clamped to ±clip after the norms.
    pub clip_qkv: Option<f64>,
    /// Per layer: a dense SwiGLU MLP of `dense_intermediate` in place of the experts (Qwen's
    /// `mlp_only_layers` and `decoder_sparse_step`).
    pub dense_layers: Vec<bool>,
    pub dense_intermediate: usize,
}

#[derive(Deserialize)]
struct Raw {
    num_local_experts: Option<usize>,
    num_experts: Option<usize>,
    num_experts_per_tok: Option<usize>,
    moe_intermediate_size: Option<usize>,
    intermediate_size: Option<usize>,
    norm_topk_prob: Option<bool>,
    shared_expert_intermediate_size: Option<usize>,
    mlp_only_layers: Option<Vec<usize>>,
    decoder_sparse_step: Option<usize>,
    clip_qkv: Option<f64>,
    num_hidden_layers: Option<usize>,
}

impl Config {
    pub fn parse(value: &Value, family: &str) -> Result<(Sizes, Config)> {
        let raw: Raw = serde_json::from_value(value.clone()).map_err(|e| err!("not a valid config.json ({e})"))?;
        let (kind, attention_as, model_type) = match family {
            "mixtral" => (Kind::Mixtral, "mistral", "mixtral"),
            "qwen2_moe" => (Kind::Qwen2Moe, "qwen2", "qwen2_moe"),
            "qwen3_moe" => (Kind::Qwen3Moe, "qwen3", "qwen3_moe"),
            _ => (Kind::Olmoe, "llama", "olmoe"),
        };
        let (mut sizes, attn) = llama::Config::parse(value, attention_as)?;
        sizes.model_type = model_type;
        let num_experts = match kind {
            Kind::Mixtral => need(raw.num_local_experts, "num_local_experts")?,
            _ => need(raw.num_experts, "num_experts")?,
        };
        let top_k = need(raw.num_experts_per_tok, "num_experts_per_tok")?;
        if num_experts == 0 || top_k == 0 || top_k > num_experts {
            bail!("num_experts_per_tok ({top_k}) must be between 1 and the number of experts ({num_experts})");
        }
        // Qwen's MoE models may keep some layers dense, as transformers picks them: those in
        // mlp_only_layers, and those whose number (from 1) decoder_sparse_step does not divide.
        let layers = need(raw.num_hidden_layers, "num_hidden_layers")?;
        let dense_layers: Vec<bool> = match kind {
            Kind::Qwen2Moe | Kind::Qwen3Moe => {
                let step = raw.decoder_sparse_step.unwrap_or(1);
                if step == 0 {
                    bail!("\"decoder_sparse_step\" is 0; it must be at least 1");
                }
                let only = raw.mlp_only_layers.unwrap_or_default();
                if let Some(&l) = only.iter().find(|&&l| l >= layers) {
                    bail!("\"mlp_only_layers\" names layer {l}, but the model has {layers} (num_hidden_layers)");
                }
                (0..layers).map(|i| only.contains(&i) || (i + 1) % step != 0).collect()
            }
            _ => vec![false; layers],
        };
        let dense_intermediate = if dense_layers.contains(&true) {
            need(raw.intermediate_size, "intermediate_size")?
        } else {
            raw.intermediate_size.unwrap_or(0)
        };
        if dense_layers.contains(&true) && dense_intermediate == 0 {
            bail!("the dense layers' intermediate size is 0; it must be at least 1");
        }
        let expert_intermediate = match kind {
            Kind::Mixtral | Kind::Olmoe => need(raw.intermediate_size, "intermediate_size")?,
            _ => need(raw.moe_intermediate_size, "moe_intermediate_size")?,
        };
        let shared_intermediate = match kind {
            Kind::Qwen2Moe => Some(need(raw.shared_expert_intermediate_size, "shared_expert_intermediate_size")?),
            _ => None,
        };
        for (name, v) in [
            ("expert intermediate size", expert_intermediate),
            ("shared expert size", shared_intermediate.unwrap_or(1)),
        ] {
            if v == 0 {
                bail!("the {name} is 0; it must be at least 1");
            }
        }
        let clip_qkv = match (kind, raw.clip_qkv) {
            (Kind::Olmoe, Some(c)) if !(c.is_finite() && c > 0.0) => bail!("\"clip_qkv\" is {c}; it must be positive"),
            (Kind::Olmoe, c) => c,
            _ => None,
        };
        let moe = Config {
            kind,
            num_experts,
            top_k,
            expert_intermediate,
            // transformers: Mixtral always renormalises; the others where the config says
            // (default false).
            norm_topk_prob: kind == Kind::Mixtral || raw.norm_topk_prob.unwrap_or(false),
            shared_intermediate,
            qk_norm: match kind {
                Kind::Qwen3Moe => QkNorm::PerHead,
                Kind::Olmoe => QkNorm::Whole,
                _ => QkNorm::None,
            },
            clip_qkv,
            dense_layers,
            dense_intermediate,
            attn,
        };
        Ok((sizes, moe))
    }

    /// Name prefix of the sparse MLP's tensors inside a block.
    fn mlp(&self) -> &'static str {
        match self.kind {
            Kind::Mixtral => "block_sparse_moe",
            _ => "mlp",
        }
    }

    /// Names of an expert's gate, up and down projections.
    fn expert_names(&self, e: usize) -> [String; 3] {
        let p = format!("{}.experts.{e}", self.mlp());
        match self.kind {
            Kind::Mixtral => [format!("{p}.w1"), format!("{p}.w3"), format!("{p}.w2")],
            _ => [format!("{p}.gate_proj"), format!("{p}.up_proj"), format!("{p}.down_proj")],
        }
    }

    /// The first of the shared expert's linears (Qwen2-MoE), after every routed expert's.
    fn shared(&self) -> usize {
        EXPERTS + 3 * self.num_experts
    }
}

/// The linears: q, k, v, o; each expert's gate, up and down; the shared expert's (a `dense`
/// layer: its MLP's gate, up and down instead). NeuroAL's row routing is the LLaMA rule with
/// each expert a dense MLP: q, k, v ← o; an expert's (and the shared expert's) gate and up ←
/// its down; every down ← the next block's q; o, whose rows every expert reads on its own
/// tokens, ← the mean of the routed experts' gates (a dense layer's: its gate's).
pub fn spec(c: &Sizes, m: &Config, dense: bool) -> Spec {
    let a = &m.attn;
    let (d, f) = (c.hidden_size, m.expert_intermediate);
    let (q, kv) = (a.num_heads * a.head_dim, a.num_kv_heads * a.head_dim);
    let lin = |name: String, shape, bias, qkv| LinearSpec { name, shape, bias, qkv, parts: 1, expert: None };
    let mut linears = vec![
        lin("self_attn.q_proj".into(), [q, d], a.qkv_bias, true),
        lin("self_attn.k_proj".into(), [kv, d], a.qkv_bias, true),
        lin("self_attn.v_proj".into(), [kv, d], a.qkv_bias, true),
        lin("self_attn.o_proj".into(), [d, q], a.o_bias, false),
    ];
    let mut input_of = vec![Q, Q, Q, O];
    let experts = match dense {
        true => Route::to(false, EXPERTS),
        false => Route { count: m.num_experts, stride: 3, ..Route::to(false, EXPERTS) },
    };
    let mut routes = vec![Route::to(false, O), Route::to(false, O), Route::to(false, O), experts];
    let mut mlp = |linears: &mut Vec<LinearSpec>, [gate, up, down]: [String; 3], f: usize, expert: Option<usize>| {
        let first = linears.len();
        let parts = [lin(gate, [f, d], false, false), lin(up, [f, d], false, false), lin(down, [d, f], false, false)];
        linears.extend(parts.map(|l| LinearSpec { expert, ..l }));
        input_of.extend([first, first, first + 2]);
        routes.extend([Route::to(false, first + 2), Route::to(false, first + 2), Route::to(true, Q)]);
    };
    if dense {
        let names = ["gate_proj", "up_proj", "down_proj"].map(|n| format!("mlp.{n}"));
        mlp(&mut linears, names, m.dense_intermediate, None);
        return Spec { block_prefix: "model.layers", linears, routes: Some(routes), output_only: Vec::new(), input_of };
    }
    for e in 0..m.num_experts {
        mlp(&mut linears, m.expert_names(e), f, Some(e));
    }
    if let Some(fs) = m.shared_intermediate {
        mlp(&mut linears, ["gate_proj", "up_proj", "down_proj"].map(|n| format!("mlp.shared_expert.{n}")), fs, None);
    }
    // Every product feeds the output through the routing: none is skipped in a calibration pass.
    Spec { block_prefix: "model.layers", linears, routes: Some(routes), output_only: Vec::new(), input_of }
}

/// Tensors outside the prunable linears: the LLaMA family's, each block's q/k norms, and each
/// sparse block's router and shared-expert gate.
pub fn tensors(c: &Sizes, m: &Config, lm_head_stored: bool) -> Vec<(String, Vec<usize>)> {
    let a = &m.attn;
    let mut t = llama::tensors(c, a, lm_head_stored);
    for b in 0..c.num_layers {
        let p = format!("model.layers.{b}");
        let sparse = !m.dense_layers[b];
        if sparse {
            t.push((format!("{p}.{}.gate.weight", m.mlp()), vec![m.num_experts, c.hidden_size]));
        }
        let (q, k) = match m.qk_norm {
            QkNorm::None => (0, 0),
            QkNorm::PerHead => (a.head_dim, a.head_dim),
            QkNorm::Whole => (a.num_heads * a.head_dim, a.num_kv_heads * a.head_dim),
        };
        if q > 0 {
            t.push((format!("{p}.self_attn.q_norm.weight"), vec![q]));
            t.push((format!("{p}.self_attn.k_norm.weight"), vec![k]));
        }
        if sparse && m.shared_intermediate.is_some() {
            t.push((format!("{p}.mlp.shared_expert_gate.weight"), vec![1, c.hidden_size]));
        }
    }
    t
}

impl Parts {
    pub fn num_experts(&self) -> usize {
        self.cfg.num_experts
    }

    /// Whether this block sends its tokens to experts (not a dense layer).
    pub fn routes_tokens(&self) -> bool {
        self.router.is_some()
    }
}

/// A block's norms, router and the settings its forward needs.
#[derive(Clone)]
pub struct Parts {
    input_norm: Tensor<1>,
    post_attention_norm: Tensor<1>,
    qk_norms: Option<[Tensor<1>; 2]>,
    /// [experts, hidden], in the compute dtype; `None` in a dense layer.
    router: Option<Tensor<2>>,
    /// [1, hidden], in the compute dtype (Qwen2-MoE).
    shared_gate: Option<Tensor<2>>,
    /// This layer attends over the sliding window only.
    sliding: bool,
    /// The experts that see every token, for the statistics only (each output still takes the
    /// routed rows): `Block::route_all_tokens`; empty: none.
    pub all_tokens: Vec<bool>,
    cfg: Config,
}

impl Parts {
    pub fn load(
        ck: &Checkpoint,
        prefix: &str,
        index: usize,
        c: &Sizes,
        m: &Config,
        device: &Device,
        dtype: DType,
    ) -> Result<Parts> {
        let d = c.hidden_size;
        let vector =
            |name: &str, n: usize| ck.load(&format!("{prefix}.{name}.weight"), &[n]).map(|t| to_device1(t, device));
        let matrix = |name: &str, rows: usize| -> Result<Tensor<2>> {
            let t = ck.load(&format!("{prefix}.{name}.weight"), &[rows, d])?;
            Ok(Tensor::from_data(TensorData::new(t.data, [rows, d]), (device, dtype)))
        };
        let a = &m.attn;
        let qk_norms = match m.qk_norm {
            QkNorm::None => None,
            QkNorm::PerHead => Some([vector("self_attn.q_norm", a.head_dim)?, vector("self_attn.k_norm", a.head_dim)?]),
            QkNorm::Whole => Some([
                vector("self_attn.q_norm", a.num_heads * a.head_dim)?,
                vector("self_attn.k_norm", a.num_kv_heads * a.head_dim)?,
            ]),
        };
        let sparse = !m.dense_layers.get(index).copied().unwrap_or(false);
        Ok(Parts {
            input_norm: vector("input_layernorm", d)?,
            post_attention_norm: vector("post_attention_layernorm", d)?,
            qk_norms,
            router: sparse.then(|| matrix(&format!("{}.gate", m.mlp()), m.num_experts)).transpose()?,
            shared_gate: m
                .shared_intermediate
                .filter(|_| sparse)
                .map(|_| matrix("mlp.shared_expert_gate", 1))
                .transpose()?,
            sliding: a.sliding_layers.get(index).copied().unwrap_or(false),
            all_tokens: Vec::new(),
            cfg: m.clone(),
        })
    }
}

/// h + attn(norm(h)), then + moe(norm(·)); `run(i, x)` runs linear i on x (and records x).
pub fn forward(
    p: &Parts,
    h: Tensor<3>,
    pos: &Positions,
    run: &mut dyn FnMut(usize, &Tensor<3>) -> Tensor<3>,
) -> Tensor<3> {
    let m = &p.cfg;
    let a = &m.attn;
    let (nh, nkv, hd, eps) = (a.num_heads, a.num_kv_heads, a.head_dim, a.rms_norm_eps);
    let pos = &pos.for_layer(p.sliding);
    let rope = pos.rope.as_ref().expect("MoE families rotate q and k");
    let clip = |y: Tensor<3>| match m.clip_qkv {
        Some(c) => y.clamp(-c, c),
        None => y,
    };

    let x = rms_norm(h.clone(), &p.input_norm, eps);
    let (q, k) = (run(Q, &x), run(K, &x));
    let (q, k) = match (&p.qk_norms, m.qk_norm) {
        (Some([qn, kn]), QkNorm::PerHead) => (rms_norm_heads(q, qn, nh, hd, eps), rms_norm_heads(k, kn, nkv, hd, eps)),
        (Some([qn, kn]), QkNorm::Whole) => {
            (split_heads(clip(rms_norm(q, qn, eps)), nh, hd), split_heads(clip(rms_norm(k, kn, eps)), nkv, hd))
        }
        _ => (split_heads(q, nh, hd), split_heads(k, nkv, hd)),
    };
    let (q, k) = (rope.apply(q), rope.apply(k));
    let v = split_heads(clip(run(V, &x)), nkv, hd);
    let attn = attention(q, k, v, Some((hd as f64).sqrt()), pos);
    let h = h + run(O, &attn);

    let x = rms_norm(h.clone(), &p.post_attention_norm, eps);
    match &p.router {
        Some(router) => h + sparse_mlp(p, router, x, run),
        // A dense layer's MLP is declared where the first expert's would be.
        None => h + swiglu(EXPERTS, &x, run),
    }
}

/// The routed experts' weighted sum (and the shared expert's, gated): x [b, t, d] → [b, t, d].
fn sparse_mlp(
    p: &Parts,
    router: &Tensor<2>,
    x: Tensor<3>,
    run: &mut dyn FnMut(usize, &Tensor<3>) -> Tensor<3>,
) -> Tensor<3> {
    let m = &p.cfg;
    let [b, t, d] = x.dims();
    let (device, dtype) = (x.device(), x.dtype());
    let rows = x.clone().reshape([b * t, d]);
    // Routing is decided on the host: one read back per block and pass.
    let logits = host_f32(rows.clone().matmul(router.clone().transpose()), "router logits")
        .expect("router logits read back from the device");
    let routed = route(&logits, m.num_experts, m.top_k, m.norm_topk_prob, dtype);
    let mut out = Tensor::<2>::zeros([b * t, d], (&device, dtype));
    for (e, (tokens, weights)) in routed.into_iter().enumerate() {
        let n = tokens.len();
        let first = EXPERTS + 3 * e;
        // Each row of a product depends on its own token only: the routed rows of the
        // all-token outputs are the routed tokens' outputs.
        let all = p
            .all_tokens
            .get(e)
            .copied()
            .unwrap_or(false)
            .then(|| swiglu(first, &rows.clone().reshape([1, b * t, d]), run).reshape([b * t, d]));
        if n == 0 {
            continue;
        }
        let index = Tensor::<1, Int>::from_data(TensorData::new(tokens, [n]), &device);
        let ye = if let Some(y) = all {
            y.select(0, index.clone())
        } else {
            swiglu(first, &rows.clone().select(0, index.clone()).reshape([1, n, d]), run).reshape([n, d])
        };
        let w = Tensor::<2>::from_data(TensorData::new(weights, [n, 1]), (&device, DType::F32));
        out = out.select_assign(0, index, ye * to_dtype(w, dtype), IndexingUpdateOp::Add);
    }
    let out = out.reshape([b, t, d]);
    match &p.shared_gate {
        Some(gate) => {
            let shared = swiglu(m.shared(), &x, run);
            let g = burn::tensor::activation::sigmoid(rows.matmul(gate.clone().transpose())).reshape([b, t, 1]);
            out + g * shared
        }
        None => out,
    }
}

/// One expert (or the shared one): down(silu(gate(x)) · up(x)), its linears at `first`, `first +
/// 1` and `first + 2`.
fn swiglu(first: usize, x: &Tensor<3>, run: &mut dyn FnMut(usize, &Tensor<3>) -> Tensor<3>) -> Tensor<3> {
    let gated = silu(run(first, x)) * run(first + 1, x);
    run(first + 2, &gated)
}

/// transformers' routing of each token (one row of `logits` [tokens · experts], f32): softmax,
/// the top k (the larger weight first, the lower expert on a tie), renormalised when `norm`,
/// rounded to the compute dtype. Per expert: the tokens sent to it, ascending, and their weights.
pub fn route(logits: &[f32], experts: usize, k: usize, norm: bool, dtype: DType) -> Vec<(Vec<i64>, Vec<f32>)> {
    let mut per_expert = vec![(Vec::new(), Vec::new()); experts];
    for (token, row) in logits.chunks(experts).enumerate() {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let exp: Vec<f32> = row.iter().map(|&l| (l - max).exp()).collect();
        let sum: f32 = exp.iter().sum();
        let probs: Vec<f32> = exp.iter().map(|&e| e / sum).collect();
        let mut order: Vec<usize> = (0..experts).collect();
        order.sort_by(|&i, &j| probs[j].total_cmp(&probs[i]).then(i.cmp(&j)));
        let top = &order[..k];
        let total: f32 = top.iter().map(|&e| probs[e]).sum();
        for &e in top {
            let w = if norm { probs[e] / total } else { probs[e] };
            per_expert[e].0.push(token as i64);
            per_expert[e].1.push(round_to(w, dtype));
        }
    }
    per_expert
}

/// `w` rounded to the compute dtype, as transformers casts the routing weights.
fn round_to(w: f32, dtype: DType) -> f32 {
    match dtype {
        DType::F16 => half::f16::from_f32(w).to_f32(),
        DType::BF16 => half::bf16::from_f32(w).to_f32(),
        _ => w,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn experts_are_routed_as_dense_mlps_and_o_by_every_experts_gate() {
        let json = r#"{"model_type":"qwen2_moe","vocab_size":10,"hidden_size":8,"intermediate_size":16,
            "moe_intermediate_size":4,"shared_expert_intermediate_size":6,"num_experts":2,"num_experts_per_tok":1,
            "num_hidden_layers":1,"num_attention_heads":2,"max_position_embeddings":32}"#;
        assert_eq!(
            super::super::testing::routed(json),
            vec![
                ("self_attn.q_proj", false, "self_attn.o_proj"),
                ("self_attn.k_proj", false, "self_attn.o_proj"),
                ("self_attn.v_proj", false, "self_attn.o_proj"),
                ("self_attn.o_proj", false, "mlp.experts.0.gate_proj"),
                ("mlp.experts.0.gate_proj", false, "mlp.experts.0.down_proj"),
                ("mlp.experts.0.up_proj", false, "mlp.experts.0.down_proj"),
                ("mlp.experts.0.down_proj", true, "self_attn.q_proj"),
                ("mlp.experts.1.gate_proj", false, "mlp.experts.1.down_proj"),
                ("mlp.experts.1.up_proj", false, "mlp.experts.1.down_proj"),
                ("mlp.experts.1.down_proj", true, "self_attn.q_proj"),
                ("mlp.shared_expert.gate_proj", false, "mlp.shared_expert.down_proj"),
                ("mlp.shared_expert.up_proj", false, "mlp.shared_expert.down_proj"),
                ("mlp.shared_expert.down_proj", true, "self_attn.q_proj"),
            ]
        );
        // o's rows take the mean d of both experts' gates (linears 4 and 7).
        let s = super::super::testing::spec(json);
        let o = s.routes.as_ref().unwrap()[O];
        assert_eq!((o.linear, o.count, o.stride), (4, 2, 3));
    }

    #[test]
    fn bad_expert_counts_are_refused() {
        let base = r#""model_type":"mixtral","vocab_size":10,"hidden_size":8,"intermediate_size":16,
            "num_hidden_layers":2,"num_attention_heads":2,"max_position_embeddings":32"#;
        super::super::testing::refused(
            base,
            &[
                (
                    r#","num_local_experts":4,"num_experts_per_tok":5"#,
                    "num_experts_per_tok (5) must be between 1 and the number of experts (4)",
                ),
                (r#","num_local_experts":4"#, "missing field \"num_experts_per_tok\""),
            ],
        );
        let qwen = r#""model_type":"qwen3_moe","vocab_size":10,"hidden_size":8,"intermediate_size":16,
            "moe_intermediate_size":4,"num_experts":4,"num_experts_per_tok":2,
            "num_hidden_layers":2,"num_attention_heads":2,"max_position_embeddings":32"#;
        super::super::testing::refused(
            qwen,
            &[
                (r#","decoder_sparse_step":0"#, "\"decoder_sparse_step\" is 0"),
                (r#","mlp_only_layers":[2]"#, "\"mlp_only_layers\" names layer 2, but the model has 2"),
            ],
        );
    }

    #[test]
    fn dense_layers_are_where_transformers_puts_them() {
        let qwen = r#""model_type":"qwen3_moe","vocab_size":10,"hidden_size":8,"intermediate_size":16,
            "moe_intermediate_size":4,"num_experts":4,"num_experts_per_tok":2,
            "num_hidden_layers":4,"num_attention_heads":2,"max_position_embeddings":32"#;
        let dense = |extra: &str| {
            let c = crate::model::config::Config::from_json(&format!("{{{qwen}{extra}}}")).unwrap();
            let specs = super::super::Specs::of(&c);
            (0..4).map(|b| specs.block(b).linears.len() == 7).collect::<Vec<_>>()
        };
        assert_eq!(dense(""), [false; 4]);
        // transformers: sparse where (layer + 1) % step == 0 and the layer is not mlp_only.
        assert_eq!(dense(r#","decoder_sparse_step":2"#), [true, false, true, false]);
        assert_eq!(dense(r#","mlp_only_layers":[1,3]"#), [false, true, false, true]);
        assert_eq!(dense(r#","decoder_sparse_step":3,"mlp_only_layers":[2]"#), [true, true, true, true]);
        let c = crate::model::config::Config::from_json(&format!("{{{qwen},\"mlp_only_layers\":[1]}}")).unwrap();
        let specs = super::super::Specs::of(&c);
        let names: Vec<&str> = specs.block(1).linears.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "self_attn.q_proj",
                "self_attn.k_proj",
                "self_attn.v_proj",
                "self_attn.o_proj",
                "mlp.gate_proj",
                "mlp.up_proj",
                "mlp.down_proj"
            ]
        );
        assert_eq!(specs.block(1).linears[4].shape, [16, 8], "the dense MLP is intermediate_size wide");
        // A dense layer's o takes its gate's d, like LLaMA's.
        let o = specs.block(1).routes.as_ref().unwrap()[O];
        assert_eq!((o.linear, o.count), (4, 1));
        assert_eq!(specs.block(0).linears.len(), 4 + 3 * 4);
    }

    #[test]
    fn routing_is_softmax_then_top_k_renormalised_where_asked() {
        // Two tokens over three experts: logits ln 1, ln 2, ln 3 give 1/6, 2/6, 3/6.
        let l = [1f32.ln(), 2f32.ln(), 3f32.ln(), 3f32.ln(), 1f32.ln(), 2f32.ln()];
        let r = route(&l, 3, 2, false, DType::F32);
        assert_eq!(r[0].0, vec![1]);
        assert_eq!(r[1].0, vec![0]);
        assert_eq!(r[2].0, vec![0, 1]);
        assert!((r[2].1[0] - 0.5).abs() < 1e-6 && (r[1].1[0] - 2.0 / 6.0).abs() < 1e-6);
        let r = route(&l, 3, 2, true, DType::F32);
        assert!((r[2].1[0] - 0.6).abs() < 1e-6 && (r[1].1[0] - 0.4).abs() < 1e-6);
        // A tie goes to the lower expert.
        let r = route(&[0.0, 0.0, 0.0], 3, 1, false, DType::F32);
        assert_eq!((r[0].0.len(), r[1].0.len(), r[2].0.len()), (1, 0, 0));
    }
}
