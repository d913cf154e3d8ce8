//! OPT (`OPTForCausalLM`), read top to bottom.
//!
//! Learned position embeddings with an offset of 2 (position p reads row p + 2); blocks with
//! biases, pre-LayerNorm: h + out_proj(attn(ln(h))), then h + fc2(relu(fc1(ln(h)))); q scaled by
//! head_dim^-0.5 before the scores; the decoder's final LayerNorm; the head tied to the token
//! embeddings. OPT-350m differs in two ways, each its own setting: post-LayerNorm blocks
//! (`do_layer_norm_before: false`: ln(h + out_proj(attn(h))), then ln(h + fc2(relu(fc1(h)))),
//! and no final LayerNorm), and token embeddings narrower than the blocks (`word_embed_proj_dim`),
//! projected in before the positions are added and out before the head.

use std::sync::Arc;

use burn::tensor::activation::relu;
use burn::tensor::{DType, Device, Int, Tensor, TensorData};
use serde::Deserialize;
use serde_json::Value;

use super::{
    Ends, LayerNorm, Linear, LinearSpec, Positions, Route, Spec, TokenTable, attention, lm_head, split_heads,
    to_device2_as,
};
use crate::gpu::context::Gpu;
use crate::io::checkpoint::Checkpoint;
use crate::io::error::Result;
use crate::model::sizes::{Sizes, need};
use crate::{bail, err};

const Q: usize = 0;
const K: usize = 1;
const V: usize = 2;
const OUT: usize = 3;
const FC1: usize = 4;
const FC2: usize = 5;

/// OPT's learned positions start at row 2 (rows 0 and 1 are a fairseq legacy).
const POSITION_OFFSET: usize = 2;

/// torch.nn.LayerNorm's default, which OPT uses.
const LAYER_NORM_EPS: f64 = 1e-5;

#[derive(Clone, Debug)]
pub struct Config {
    pub ffn_dim: usize,
    pub num_heads: usize,
    pub head_dim: usize,
    pub enable_bias: bool,
    /// Each block normalizes after its residual adds (`do_layer_norm_before: false`).
    pub post_layer_norm: bool,
    /// The decoder's final LayerNorm is present (pre-LayerNorm, `_remove_final_layer_norm` false).
    pub final_layer_norm: bool,
}

/// `project_in` / `project_out` exist where the token embeddings are narrower than the blocks
/// (`word_embed_proj_dim` ≠ `hidden_size`).
fn projected(c: &Sizes) -> bool {
    c.embed_dim != c.hidden_size
}

#[derive(Deserialize)]
struct Raw {
    vocab_size: Option<usize>,
    hidden_size: Option<usize>,
    ffn_dim: Option<usize>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<usize>,
    max_position_embeddings: Option<usize>,
    do_layer_norm_before: Option<bool>,
    word_embed_proj_dim: Option<usize>,
    activation_function: Option<String>,
    enable_bias: Option<bool>,
    layer_norm_elementwise_affine: Option<bool>,
    #[serde(rename = "_remove_final_layer_norm")]
    remove_final_layer_norm: Option<bool>,
    tie_word_embeddings: Option<bool>,
    torch_dtype: Option<String>,
    dtype: Option<String>,
}

impl Config {
    pub fn parse(value: &Value) -> Result<(Sizes, Config)> {
        let raw: Raw = serde_json::from_value(value.clone()).map_err(|e| err!("not a valid config.json ({e})"))?;
        let hidden_size = need(raw.hidden_size, "hidden_size")?;
        let num_heads = need(raw.num_attention_heads, "num_attention_heads")?;
        if num_heads == 0 || hidden_size % num_heads != 0 {
            bail!("hidden_size {hidden_size} is not divisible by num_attention_heads {num_heads}");
        }
        let embed_dim = raw.word_embed_proj_dim.unwrap_or(hidden_size);
        if embed_dim == 0 {
            bail!("\"word_embed_proj_dim\" is 0; it must be at least 1");
        }
        let pre_layer_norm = raw.do_layer_norm_before.unwrap_or(true);
        let act = raw.activation_function.as_deref().unwrap_or("relu");
        if act != "relu" {
            bail!("unsupported activation_function \"{act}\" for OPT (only relu)");
        }
        if !raw.layer_norm_elementwise_affine.unwrap_or(true) {
            bail!("OPT with layer_norm_elementwise_affine = false is not supported");
        }
        let ffn_dim = need(raw.ffn_dim, "ffn_dim")?;
        if ffn_dim == 0 {
            bail!("\"ffn_dim\" is 0; it must be at least 1");
        }
        let opt = Config {
            ffn_dim,
            num_heads,
            head_dim: hidden_size / num_heads,
            enable_bias: raw.enable_bias.unwrap_or(true),
            post_layer_norm: !pre_layer_norm,
            final_layer_norm: pre_layer_norm && !raw.remove_final_layer_norm.unwrap_or(false),
        };
        Ok((
            Sizes {
                model_type: "opt",
                vocab_size: need(raw.vocab_size, "vocab_size")?,
                hidden_size,
                embed_dim,
                num_layers: need(raw.num_hidden_layers, "num_hidden_layers")?,
                num_heads,
                num_kv_heads: num_heads,
                head_dim: hidden_size / num_heads,
                max_positions: need(raw.max_position_embeddings, "max_position_embeddings")?,
                tie_word_embeddings: raw.tie_word_embeddings.unwrap_or(true),
                dtype: raw.dtype.or(raw.torch_dtype),
            },
            opt,
        ))
    }
}

pub fn spec(c: &Sizes, o: &Config) -> Spec {
    let (d, f, b) = (c.hidden_size, o.ffn_dim, o.enable_bias);
    let lin = |name: &str, shape, qkv| LinearSpec { name: name.into(), shape, bias: b, qkv, parts: 1, expert: None };
    let route = Route::to;
    Spec {
        block_prefix: "model.decoder.layers",
        linears: vec![
            lin("self_attn.q_proj", [d, d], true),
            lin("self_attn.k_proj", [d, d], true),
            lin("self_attn.v_proj", [d, d], true),
            lin("self_attn.out_proj", [d, d], false),
            lin("fc1", [f, d], false),
            lin("fc2", [d, f], false),
        ],
        // The authors' routing: q, k, v ← out_proj; out_proj ← fc1; fc1 ← fc2; fc2 ← next q.
        routes: Some(vec![
            route(false, OUT),
            route(false, OUT),
            route(false, OUT),
            route(false, FC1),
            route(false, FC2),
            route(true, Q),
        ]),
        output_only: vec![FC2],
        // q, k, v ← the attention LayerNorm's output.
        input_of: vec![Q, Q, Q, OUT, FC1, FC2],
    }
}

/// Tensors outside the prunable linears, with their shapes. `lm_head_stored`: a tied model's
/// checkpoint may store the head anyway.
pub fn tensors(c: &Sizes, o: &Config, lm_head_stored: bool) -> Vec<(String, Vec<usize>)> {
    let (v, d, e) = (c.vocab_size, c.hidden_size, c.embed_dim);
    let mut t = vec![
        ("model.decoder.embed_tokens.weight".to_string(), vec![v, e]),
        ("model.decoder.embed_positions.weight".to_string(), vec![c.max_positions + POSITION_OFFSET, d]),
    ];
    if projected(c) {
        t.push(("model.decoder.project_in.weight".into(), vec![d, e]));
        t.push(("model.decoder.project_out.weight".into(), vec![e, d]));
    }
    if o.final_layer_norm {
        t.push(("model.decoder.final_layer_norm.weight".into(), vec![d]));
        t.push(("model.decoder.final_layer_norm.bias".into(), vec![d]));
    }
    if lm_head_stored || !c.tie_word_embeddings {
        t.push(("lm_head.weight".into(), vec![v, e]));
    }
    for b in 0..c.num_layers {
        for n in ["self_attn_layer_norm", "final_layer_norm"] {
            for p in ["weight", "bias"] {
                t.push((format!("model.decoder.layers.{b}.{n}.{p}"), vec![d]));
            }
        }
    }
    t
}

pub struct Outer {
    embed_tokens: TokenTable,
    /// [hidden, embed_dim], where the embeddings are narrower than the blocks.
    project_in: Option<Linear>,
    embed_positions: Tensor<2>,
    final_norm: Option<LayerNorm>,
    /// [embed_dim, hidden], likewise; None when loaded for pruning.
    project_out: Option<Linear>,
    /// None when loaded for pruning.
    lm_head: Option<Tensor<2>>,
    embed_dim: usize,
}

impl Outer {
    pub fn load(
        ck: &Arc<Checkpoint>,
        c: &Sizes,
        o: &Config,
        device: &Device,
        dtype: DType,
        ends: Ends,
    ) -> Result<Outer> {
        let (v, d, e) = (c.vocab_size, c.hidden_size, c.embed_dim);
        let embed_tokens = TokenTable::load(ck, "model.decoder.embed_tokens.weight", [v, e], device, dtype, ends)?;
        let projection = |name: &str, shape: [usize; 2]| {
            ck.load(&format!("model.decoder.{name}.weight"), &shape)
                .map(|w| Linear { weight: to_device2_as(w, device, dtype), bias: None })
        };
        let project_in = if projected(c) { Some(projection("project_in", [d, e])?) } else { None };
        // Pruning computes no logits, but refuses a bad project_out as it does a bad head.
        let project_out = match (projected(c), ends) {
            (true, Ends::Logits) => Some(projection("project_out", [e, d])?),
            (true, Ends::Hidden) => ck.check("model.decoder.project_out.weight", &[e, d]).map(|_| None)?,
            (false, _) => None,
        };
        let embed_positions = to_device2_as(
            ck.load("model.decoder.embed_positions.weight", &[c.max_positions + POSITION_OFFSET, d])?,
            device,
            dtype,
        );
        let final_norm = if o.final_layer_norm {
            Some(LayerNorm::load(ck, "model.decoder.final_layer_norm", d, LAYER_NORM_EPS, device)?)
        } else {
            None
        };
        let lm_head = lm_head(ck, c, &embed_tokens, device, dtype, ends)?;
        Ok(Outer { embed_tokens, project_in, embed_positions, final_norm, project_out, lm_head, embed_dim: e })
    }

    /// Token embeddings (projected to the blocks' width where narrower) plus the learned
    /// embeddings of positions 0..t (rows 2..t + 2).
    pub fn embed(&self, ids: &[u32], batch: usize, t: usize, device: &Device, gpu: Option<&Gpu>) -> Result<Tensor<3>> {
        let tokens = self.embed_tokens.rows(ids)?.reshape([batch, t, self.embed_dim]);
        let tokens = match &self.project_in {
            Some(p) => p.forward(tokens, gpu),
            None => tokens,
        };
        let rows: Vec<i64> = (0..t).map(|p| (p + POSITION_OFFSET) as i64).collect();
        let rows = Tensor::<1, Int>::from_data(TensorData::new(rows, [t]), device);
        let positions = self.embed_positions.clone().select(0, rows).unsqueeze::<3>();
        Ok(tokens + positions)
    }

    pub fn head(&self, hidden: Tensor<3>, gpu: Option<&Gpu>) -> Option<Tensor<3>> {
        let weight = self.lm_head.clone()?;
        let x = match &self.final_norm {
            Some(n) => n.forward(hidden),
            None => hidden,
        };
        let x = match &self.project_out {
            Some(p) => p.forward(x, gpu),
            None => x,
        };
        Some(Linear { weight, bias: None }.forward(x, gpu))
    }
}

/// A block's two LayerNorms and the settings its forward needs.
#[derive(Clone)]
pub struct Parts {
    self_attn_layer_norm: LayerNorm,
    final_layer_norm: LayerNorm,
    cfg: Config,
}

impl Parts {
    pub fn load(ck: &Checkpoint, prefix: &str, c: &Sizes, o: &Config, device: &Device) -> Result<Parts> {
        let d = c.hidden_size;
        Ok(Parts {
            self_attn_layer_norm: LayerNorm::load(
                ck,
                &format!("{prefix}.self_attn_layer_norm"),
                d,
                LAYER_NORM_EPS,
                device,
            )?,
            final_layer_norm: LayerNorm::load(ck, &format!("{prefix}.final_layer_norm"), d, LAYER_NORM_EPS, device)?,
            cfg: o.clone(),
        })
    }
}

/// Pre-LayerNorm: h + out_proj(attn(ln(h))), then + fc2(relu(fc1(ln(·)))). Post-LayerNorm:
/// ln(h + out_proj(attn(h))), then ln(· + fc2(relu(fc1(·)))). `run(i, x)` runs linear i on x.
pub fn forward(
    p: &Parts,
    h: Tensor<3>,
    pos: &Positions,
    run: &mut dyn FnMut(usize, &Tensor<3>) -> Tensor<3>,
) -> Tensor<3> {
    let (nh, hd, post) = (p.cfg.num_heads, p.cfg.head_dim, p.cfg.post_layer_norm);

    let x = if post { h.clone() } else { p.self_attn_layer_norm.forward(h.clone()) };
    let q = split_heads(run(Q, &x).mul_scalar((hd as f64).powf(-0.5)), nh, hd);
    let k = split_heads(run(K, &x), nh, hd);
    let v = split_heads(run(V, &x), nh, hd);
    let attn = attention(q, k, v, None, pos);
    let h = h + run(OUT, &attn);
    let h = if post { p.self_attn_layer_norm.forward(h) } else { h };

    let x = if post { h.clone() } else { p.final_layer_norm.forward(h.clone()) };
    let hidden = relu(run(FC1, &x));
    let h = h + run(FC2, &hidden);
    if post { p.final_layer_norm.forward(h) } else { h }
}

#[cfg(test)]
mod tests {
    const BASE: &str = r#""model_type":"opt","vocab_size":10,"hidden_size":8,"ffn_dim":16,
        "num_hidden_layers":1,"num_attention_heads":2,"max_position_embeddings":32"#;

    #[test]
    fn declared_routing_is_the_authors_table() {
        assert_eq!(
            super::super::testing::routed(&format!("{{{BASE}}}")),
            vec![
                ("self_attn.q_proj", false, "self_attn.out_proj"),
                ("self_attn.k_proj", false, "self_attn.out_proj"),
                ("self_attn.v_proj", false, "self_attn.out_proj"),
                ("self_attn.out_proj", false, "fc1"),
                ("fc1", false, "fc2"),
                ("fc2", true, "self_attn.q_proj"),
            ]
        );
        let s = super::super::testing::spec(&format!("{{{BASE}}}"));
        assert!(s.linears.iter().all(|l| l.bias));
        assert_eq!(s.block_prefix, "model.decoder.layers");
    }

    #[test]
    fn unsupported_variants_are_refused_in_one_line() {
        super::super::testing::refused(
            BASE,
            &[
                (r#","word_embed_proj_dim":0"#, "\"word_embed_proj_dim\" is 0"),
                (r#","activation_function":"gelu""#, "unsupported activation_function \"gelu\""),
            ],
        );
    }
}
