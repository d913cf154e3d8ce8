//! Decoder-only language models, one file per family (`llama.rs`: LLaMA 1/2/3, Mistral, Qwen2;
//! `opt.rs`: OPT; `phi.rs`: Phi-2). Each family declares, once, its prunable linears in execution
//! order (name, shape, bias), how its blocks and outer weights load, its forward with the
//! recording hook, and NeuroAL's row routing. Everything outside this folder iterates over that
//! declaration and never names a sublayer.
//!
//! Blocks are loaded one at a time from the memory-mapped checkpoint, so the pruner can stream
//! them: `embed` → `Block::forward` for each block of [`Model::blocks`] → `head`.

pub mod config;
mod cpu_attention;
mod cpu_linear;
pub(crate) mod cpu_math;
pub mod gemma;
pub mod llama;
pub mod moe;
pub mod opt;
pub mod phi;
pub mod phi3;
pub mod qwen3;
pub mod sizes;

use std::path::Path;
use std::sync::{Arc, OnceLock};

use burn::tensor::activation::log_softmax;
use burn::tensor::{DType, Device, Int, Tensor, TensorData};
use rayon::prelude::*;

use crate::gpu::context::Gpu;
use crate::gpu::device::Selected;
use crate::gpu::tensor::{host_f32, to_dtype};
use crate::io::checkpoint::{Checkpoint, HostTensor};
use crate::io::error::Result;
use crate::model::config::{Arch, Config};
use crate::{bail, err};

/// One prunable linear as a family declares it.
#[derive(Clone, Debug, PartialEq)]
pub struct LinearSpec {
    /// Name inside the block, e.g. `self_attn.q_proj` (an expert's: `mlp.experts.3.up_proj`).
    pub name: String,
    /// [out, in], as stored by Hugging Face.
    pub shape: [usize; 2],
    pub bias: bool,
    /// A query, key or value projection: under grouped-query attention these keep the block
    /// sparsity in NeuroAL's row step.
    pub qkv: bool,
    /// The linears a fused one stacks (Phi-3's qkv_proj: 3, gate_up_proj: 2; else 1): NeuroAL
    /// counts its alignment once per part, as the parts apart (reading one input) would be.
    pub parts: usize,
    /// The routed expert this linear belongs to: it sees only the tokens sent to it.
    pub expert: Option<usize>,
}

impl LinearSpec {
    /// Part of the attention (`self_attn.*` in every family): DSnoT's default linears.
    pub fn in_attention(&self) -> bool {
        self.name.starts_with("self_attn.")
    }
}

/// Where a linear's output rows are consumed, for NeuroAL's row step: they are input channels
/// of `linear`, in the same block or the next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    pub next_block: bool,
    pub linear: usize,
    /// How many times the consumer's input channels span the rows: 1, or for a fused linear
    /// the parts it stacks (Phi-3's gate_up: gate's rows, then up's, each channel of down).
    pub repeat: usize,
    /// The consumers whose d is averaged: `linear`, `linear + stride`, … (`count` of them; 1
    /// where one linear consumes the rows). A mixture of experts' attention output feeds every
    /// expert, each on its own tokens.
    pub count: usize,
    pub stride: usize,
}

impl Route {
    /// The rows feed `linear` (of the next block where `next_block`), once.
    pub fn to(next_block: bool, linear: usize) -> Route {
        Route { next_block, linear, repeat: 1, count: 1, stride: 0 }
    }
}

/// A family's declaration: where blocks live and what they hold.
#[derive(Clone, Debug)]
pub struct Spec {
    /// Tensor-name prefix of block `b` is `{block_prefix}.{b}`.
    pub block_prefix: &'static str,
    pub linears: Vec<LinearSpec>,
    /// One route per linear; `None` where the family declares none (no row step).
    pub routes: Option<Vec<Route>>,
    /// Linears whose products are only added to the block's output: a pass that wants only
    /// the linears' inputs (a dense calibration pass) skips them.
    pub output_only: Vec<usize>,
    /// For each linear, the first linear in declared order that reads the same input (itself
    /// where none does): q, k and v read one normed input, and so on. Recording keeps one
    /// calibration per input and hands it to every linear that reads it.
    pub input_of: Vec<usize>,
}

/// Each block's declaration: one [`Spec`] serves every block, except where a config makes
/// blocks of two kinds (a mixture of experts that keeps some layers dense).
#[derive(Clone, Debug)]
pub struct Specs {
    kinds: Vec<Spec>,
    /// Index into `kinds` of each block.
    of_block: Vec<usize>,
}

impl Specs {
    pub fn of(config: &Config) -> Specs {
        let one = |spec| Specs { kinds: vec![spec], of_block: vec![0; config.num_layers] };
        match &config.arch {
            Arch::Llama(l) => one(llama::spec(config, l)),
            Arch::Qwen3(q) => one(qwen3::spec(config, q)),
            Arch::Gemma(g) => one(gemma::spec(config, g)),
            Arch::Phi3(p) => one(phi3::spec(config, p)),
            Arch::Moe(m) => {
                let kinds = vec![moe::spec(config, m, false), moe::spec(config, m, true)];
                Specs { kinds, of_block: m.dense_layers.iter().map(|&dense| dense as usize).collect() }
            }
            Arch::Opt(o) => one(opt::spec(config, o)),
            Arch::Phi(p) => one(phi::spec(config, p)),
        }
    }

    /// Block `b`'s declaration.
    pub fn block(&self, b: usize) -> &Spec {
        &self.kinds[self.of_block[b]]
    }

    /// The declarations some block has, each once.
    pub fn kinds(&self) -> impl Iterator<Item = &Spec> {
        self.kinds.iter().enumerate().filter(|(k, _)| self.of_block.contains(k)).map(|(_, s)| s)
    }

    /// The kind of block with the most weights, which sizes a block in memory estimates.
    pub fn largest(&self) -> &Spec {
        let weights = |s: &Spec| s.linears.iter().map(|l| l.shape[0] * l.shape[1]).sum::<usize>();
        self.kinds().max_by_key(|s| weights(s)).unwrap_or(&self.kinds[0])
    }

    /// Tensor-name prefix of the blocks (every kind's).
    pub fn block_prefix(&self) -> &'static str {
        self.kinds[0].block_prefix
    }

    /// The number of linears of each block.
    pub fn counts(&self) -> Vec<usize> {
        self.of_block.iter().map(|&k| self.kinds[k].linears.len()).collect()
    }

    /// Whether every block declares NeuroAL's row routing.
    pub fn routed(&self) -> bool {
        self.kinds().all(|s| s.routes.is_some())
    }
}

impl Spec {
    /// Checkpoint name of a linear's weight.
    pub fn weight_name(&self, block: usize, linear: usize) -> String {
        format!("{}.{block}.{}.weight", self.block_prefix, self.linears[linear].name)
    }

    pub fn bias_name(&self, block: usize, linear: usize) -> String {
        format!("{}.{block}.{}.bias", self.block_prefix, self.linears[linear].name)
    }

    pub fn shapes(&self) -> Vec<[usize; 2]> {
        self.linears.iter().map(|l| l.shape).collect()
    }

    /// The linears of each input that more than one reads ([`Spec::input_of`]), in declared
    /// order, with their stacked weight's shape: what a GPU may multiply as one product
    /// (`src/gpu/fused.rs`).
    pub fn shared_inputs(&self) -> Vec<(Vec<usize>, crate::gpu::fused::Group)> {
        (0..self.linears.len())
            .filter(|&l| self.input_of[l] == l)
            .map(|l| (0..self.linears.len()).filter(|&m| self.input_of[m] == l).collect::<Vec<_>>())
            .filter(|members| members.len() > 1)
            .map(|members| {
                let group = crate::gpu::fused::Group {
                    k: self.linears[members[0]].shape[1],
                    ns: members.iter().map(|&m| self.linears[m].shape[0]).collect(),
                };
                (members, group)
            })
            .collect()
    }

    /// [`Spec::shared_inputs`]' stacked weights' shapes.
    pub fn fused_groups(&self) -> Vec<crate::gpu::fused::Group> {
        self.shared_inputs().into_iter().map(|(_, group)| group).collect()
    }
}

#[derive(Clone)]
pub struct Linear {
    /// [out, in], as stored by Hugging Face.
    pub weight: Tensor<2>,
    pub bias: Option<Tensor<1>>,
}

impl Linear {
    /// x [.., in] → [.., out], the product with the `gpu`'s kernel where there is one.
    pub fn forward(&self, x: Tensor<3>, gpu: Option<&Gpu>) -> Tensor<3> {
        let [b, t, d_in] = x.dims();
        let x = x.reshape([b * t, d_in]);
        let on_flex = if on_cpu_in_f32(&x) { cpu_linear::linear(&x, &self.weight) } else { None };
        let y = on_flex.unwrap_or_else(|| {
            let w_t = self.weight.clone().transpose();
            match gpu {
                Some(gpu) => gpu.matmul.linear(x, w_t),
                None => x.matmul(w_t),
            }
        });
        let y = match &self.bias {
            Some(bias) => y + bias.clone().unsqueeze::<2>(),
            None => y,
        };
        let d_out = y.dims()[1];
        y.reshape([b, t, d_out])
    }
}

/// Called with (linear index, that linear's input) before each linear runs; linears that share
/// an input (q/k/v, gate/up, Phi's fc1) each see it, which is what statistics need.
pub type InputHook<'a> = &'a mut dyn FnMut(usize, &Tensor<3>);

/// The family-specific rest of a block (its norms and settings). A few KiB at most, one per
/// loaded block, so the variants stay unboxed.
#[derive(Clone)]
#[allow(clippy::large_enum_variant)]
enum Parts {
    Llama(llama::Parts),
    Qwen3(qwen3::Parts),
    Gemma(gemma::Parts),
    Phi3(phi3::Parts),
    Moe(Box<moe::Parts>),
    Opt(opt::Parts),
    Phi(phi::Parts),
}

/// One decoder block: its prunable linears in declared order, and the rest. A clone shares
/// the tensors.
#[derive(Clone)]
pub struct Block {
    pub index: usize,
    linears: Vec<Linear>,
    parts: Parts,
    /// The family's [`Spec::shared_inputs`], each with its stacked weight's shape.
    shared_inputs: Arc<Vec<(Vec<usize>, crate::gpu::fused::Group)>>,
    /// Per shared input, its linears' weights stacked into one linear where that group runs
    /// fused (`src/gpu/fused.rs`); made at the first pass that needs them, and dropped with any
    /// change of a weight.
    stacked: Arc<OnceLock<Vec<Option<Linear>>>>,
    /// The model's GPU kernels (`None` off a GPU).
    gpu: Option<Arc<Gpu>>,
}

impl Block {
    /// The prunable linears, in the family's declared order.
    pub fn linears(&self) -> &[Linear] {
        &self.linears
    }

    /// Replaces linear `li`'s weight (its pruned copy).
    pub fn set_weight(&mut self, li: usize, weight: Tensor<2>) {
        self.linears[li].weight = weight;
        self.stacked = Arc::new(OnceLock::new());
    }

    /// Per shared input, the stacked linear where its group runs fused on this device.
    fn stacked(&self) -> &[Option<Linear>] {
        self.stacked.get_or_init(|| {
            self.shared_inputs
                .iter()
                .map(|(members, group)| {
                    let first = &self.linears[members[0]].weight;
                    let fuses = self.gpu.as_ref().is_some_and(|gpu| gpu.fused.fuses(first.dtype(), group));
                    if !crate::gpu::kernels::is_wgpu(first) || !fuses {
                        return None;
                    }
                    // A stack larger than the device's largest buffer runs apart.
                    if (group.k * group.n() * first.dtype().size()) as u64
                        > crate::gpu::kernels::max_allocation(&first.device())
                    {
                        return None;
                    }
                    let weight = Tensor::cat(members.iter().map(|&m| self.linears[m].weight.clone()).collect(), 0);
                    let biased = members.iter().any(|&m| self.linears[m].bias.is_some());
                    let bias = biased.then(|| {
                        let parts = members.iter().map(|&m| {
                            let l = &self.linears[m];
                            l.bias.clone().unwrap_or_else(|| {
                                Tensor::zeros([l.weight.dims()[0]], (&l.weight.device(), l.weight.dtype()))
                            })
                        });
                        Tensor::cat(parts.collect(), 0)
                    });
                    Some(Linear { weight, bias })
                })
                .collect()
        })
    }

    /// Sends every token through the experts `which` names (by expert index) of a
    /// mixture-of-experts block, for the hook's statistics only (each output still takes the
    /// routed rows); no change elsewhere.
    pub(crate) fn route_all_tokens(&mut self, which: impl Fn(usize) -> bool) {
        if let Parts::Moe(p) = &mut self.parts {
            p.all_tokens = (0..p.num_experts()).map(which).collect();
        }
    }

    /// Whether this block routes tokens to experts: its linears' inputs are then not all
    /// [windows, tokens, cols] of the pass.
    pub fn routes_tokens(&self) -> bool {
        matches!(&self.parts, Parts::Moe(p) if p.routes_tokens())
    }

    /// hidden [b, t, d] → hidden [b, t, d]. `hook` sees each linear's input.
    pub fn forward(&self, h: Tensor<3>, pos: &Positions, hook: Option<InputHook>) -> Tensor<3> {
        self.run(h, pos, hook, &[])
    }

    /// Shows `hook` every linear's input, as [`Block::forward`] does, but skips the products
    /// of `output_only` (the family's [`Spec::output_only`]; zeros stand in), so what it
    /// returns is not the block's output. For calibration passes that keep only the statistics.
    pub fn record_inputs(&self, h: Tensor<3>, pos: &Positions, output_only: &[usize], hook: InputHook) {
        self.run(h, pos, Some(hook), output_only);
    }

    fn run(&self, h: Tensor<3>, pos: &Positions, hook: Option<InputHook>, skip: &[usize]) -> Tensor<3> {
        let mut hook = hook;
        let stacked = self.stacked();
        // Outputs of a fused group's other linears, made with the first one the forward ran.
        let mut made: Vec<Option<Tensor<3>>> = vec![None; self.linears.len()];
        let mut run = |i: usize, x: &Tensor<3>| {
            if let Some(hook) = hook.as_mut() {
                hook(i, x);
            }
            if skip.contains(&i) {
                // Broadcast by the residual add that consumes it.
                let w = &self.linears[i].weight;
                return Tensor::zeros([1, 1, w.dims()[0]], (&w.device(), w.dtype()));
            }
            if let Some(y) = made[i].take() {
                return y;
            }
            // The family calls every linear of a shared input with that input. A group with a
            // skipped product runs apart.
            let group = self
                .shared_inputs
                .iter()
                .position(|(g, _)| g.contains(&i))
                .filter(|&g| !self.shared_inputs[g].0.iter().any(|m| skip.contains(m)));
            // So does one whose output would not fit in a buffer.
            let fits = |fused: &Linear| {
                let [b, t, _] = x.dims();
                let w = &fused.weight;
                (b * t * w.dims()[0] * w.dtype().size()) as u64 <= crate::gpu::kernels::max_allocation(&w.device())
            };
            if let Some(g) = group
                && let Some(fused) = &stacked[g]
                && fits(fused)
            {
                let y = fused.forward(x.clone(), self.gpu.as_deref());
                let (members, shape) = &self.shared_inputs[g];
                let mut at = 0;
                for (&m, &n) in members.iter().zip(&shape.ns) {
                    made[m] = Some(y.clone().narrow(2, at, n));
                    at += n;
                }
                if let Some(y) = made[i].take() {
                    return y;
                }
            }
            self.linears[i].forward(x.clone(), self.gpu.as_deref())
        };
        match &self.parts {
            Parts::Llama(p) => llama::forward(p, h, pos, &mut run),
            Parts::Qwen3(p) => qwen3::forward(p, h, pos, &mut run),
            Parts::Gemma(p) => gemma::forward(p, h, pos, &mut run),
            Parts::Phi3(p) => phi3::forward(p, h, pos, &mut run),
            Parts::Moe(p) => moe::forward(p, h, pos, &mut run),
            Parts::Opt(p) => opt::forward(p, h, pos, &mut run),
            Parts::Phi(p) => phi::forward(p, h, pos, &mut run),
        }
    }
}

/// The weights outside the blocks.
/// What a model's passes end in. Logits (perplexity, zero-shot, the forward benchmark) need
/// the final norm, the LM head and the embedding table on the device. Pruning ends in hidden
/// states: it loads no head and embeds its windows from rows of the memory-mapped table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ends {
    Logits,
    Hidden,
}

/// The token embeddings. For logits the table is on the device, where a tied head is the same
/// tensor. A pruning run reads only its windows' rows from the memory map: the table is a
/// model's largest tensor (LLaMA-3's 128,256 × 4,096 is 2 GiB in f32, 1 GiB in f16), and a row
/// is a copy whichever way it is taken, so the hidden states are the same bits.
pub enum TokenTable {
    OnDevice(Box<Tensor<2>>),
    Mapped { checkpoint: Arc<Checkpoint>, name: String, hidden: usize, device: Device, dtype: DType },
}

impl TokenTable {
    /// The table `name` [vocab, hidden]: uploaded in `dtype` for logits, else checked (shape,
    /// every value finite, as a loaded one is) and left in the map.
    pub fn load(
        ck: &Arc<Checkpoint>,
        name: &str,
        shape: [usize; 2],
        device: &Device,
        dtype: DType,
        ends: Ends,
    ) -> Result<TokenTable> {
        Ok(match ends {
            Ends::Logits => TokenTable::OnDevice(Box::new(to_device2_as(ck.load(name, &shape)?, device, dtype))),
            Ends::Hidden => {
                ck.check(name, &shape)?;
                TokenTable::Mapped {
                    checkpoint: ck.clone(),
                    name: name.to_string(),
                    hidden: shape[1],
                    device: device.clone(),
                    dtype,
                }
            }
        })
    }

    /// The rows of `ids`, [ids, hidden], in the compute dtype.
    pub fn rows(&self, ids: &[u32]) -> Result<Tensor<2>> {
        Ok(match self {
            TokenTable::OnDevice(table) => {
                let device = table.device();
                let idx = Tensor::<1, Int>::from_data(
                    TensorData::new(ids.iter().map(|&i| i as i64).collect::<Vec<_>>(), [ids.len()]),
                    &device,
                );
                table.clone().select(0, idx)
            }
            TokenTable::Mapped { checkpoint, name, hidden, device, dtype } => {
                let rows = checkpoint.rows(name, ids)?;
                Tensor::from_data(TensorData::new(rows, [ids.len(), *hidden]).convert_dtype(*dtype), (device, *dtype))
            }
        })
    }

    /// The table on the device (logits only): what a tied head multiplies by.
    pub fn on_device(&self) -> Option<Tensor<2>> {
        match self {
            TokenTable::OnDevice(table) => Some(*table.clone()),
            TokenTable::Mapped { .. } => None,
        }
    }
}

/// The LM head's weight for `ends`: the tied table where `tie_word_embeddings` is set (even if
/// the checkpoint stores a head: transformers ties it to the table after loading, so a stored
/// one that differs is not what it computes), else the stored `lm_head.weight`; none when
/// pruning (a stored head is still checked, as a loaded one is).
pub fn lm_head(
    ck: &Checkpoint,
    c: &sizes::Sizes,
    table: &TokenTable,
    device: &Device,
    dtype: DType,
    ends: Ends,
) -> Result<Option<Tensor<2>>> {
    let shape = [c.vocab_size, c.embed_dim];
    let stored = ck.contains("lm_head.weight");
    if !stored && !c.tie_word_embeddings {
        bail!("{}: tensor \"lm_head.weight\" not found and tie_word_embeddings is false", ck.dir.display());
    }
    match ends {
        Ends::Hidden if stored => ck.check("lm_head.weight", &shape).map(|_| None),
        Ends::Hidden => Ok(None),
        Ends::Logits if c.tie_word_embeddings => Ok(table.on_device()),
        Ends::Logits => Ok(Some(to_device2_as(ck.load("lm_head.weight", &shape)?, device, dtype))),
    }
}

enum Outer {
    Llama(Box<llama::Outer>),
    Gemma(Box<gemma::Outer>),
    Opt(Box<opt::Outer>),
    Phi(Box<phi::Outer>),
}

/// What every pass over windows of one length shares: rotary cos/sin where the family
/// rotates, the causal mask, and the GPU's attention kernel.
#[derive(Clone)]
pub struct Positions {
    pub rope: Option<Rope>,
    /// The additive causal mask [1, 1, t, t] of the burn-ops attention, made once per length
    /// (it was made on the host and uploaded for every block of every pass: at 2,048 tokens,
    /// 16 MiB each time); `None` where that attention does not run (`cpu` in f32).
    pub causal: Option<Tensor<4>>,
    /// Sliding-window attention: the most keys a query sees (itself and those before it),
    /// where fewer than the window's tokens; `causal` then holds that band.
    pub window: Option<usize>,
    /// The band of the layers that attend over a sliding window while others do not (Gemma's
    /// local layers, Qwen's from max_window_layers on), where the window is shorter than the
    /// windows' tokens; `local_window` is that window.
    pub local: Option<Tensor<4>>,
    pub local_window: Option<usize>,
    /// The rotation of those local layers where it has a base of its own (Gemma 3).
    pub local_rope: Option<Rope>,
    /// The model's GPU kernels (`None` off a GPU).
    pub gpu: Option<Arc<Gpu>>,
}

impl Positions {
    /// What one layer sees: a `sliding` layer attends over the local band (where the window is
    /// shorter than the tokens) and rotates with the local base (where it has one of its own).
    pub fn for_layer(&self, sliding: bool) -> std::borrow::Cow<'_, Positions> {
        use std::borrow::Cow;
        if !sliding || (self.local.is_none() && self.local_rope.is_none()) {
            return Cow::Borrowed(self);
        }
        let mut layer = self.clone();
        if self.local.is_some() {
            (layer.causal, layer.window) = (self.local.clone(), self.local_window);
        }
        if self.local_rope.is_some() {
            layer.rope = self.local_rope.clone();
        }
        Cow::Owned(layer)
    }
}

pub struct Model {
    pub config: Config,
    pub specs: Specs,
    /// Shared with the thread that decodes the next block while this one computes.
    pub checkpoint: Arc<Checkpoint>,
    pub device: Device,
    /// The GPU's kernels, which every pass runs (`None` off a GPU).
    pub gpu: Option<Arc<Gpu>>,
    /// What weights, activations and products are computed in (norms, softmax, statistics and
    /// losses stay f32).
    pub dtype: DType,
    /// A mixture of experts' calibration sends every token through every expert, for the
    /// statistics only (`--moe-calibrate all`); by default each expert sees its routed tokens.
    pub experts_see_every_token: bool,
    outer: Outer,
}

impl Model {
    /// Opens a model folder and loads what every pass needs (embeddings, final norm, head);
    /// blocks stay on disk until [`Model::load_block`].
    pub fn open(dir: &Path, device: &Selected) -> Result<Model> {
        Model::open_as(dir, device, DType::F32)
    }

    /// [`Model::open`] computing in `dtype` (F32, F16 or BF16).
    pub fn open_as(dir: &Path, device: &Selected, dtype: DType) -> Result<Model> {
        let (config, checkpoint) = check_model_dir(dir)?;
        Model::load(config, checkpoint, device, dtype, Ends::Logits)
    }

    /// A model from what [`check_model_dir`] already read and checked (no second pass over
    /// the folder), for passes that end in `ends`.
    pub fn load(
        config: Config,
        checkpoint: Checkpoint,
        selected: &Selected,
        dtype: DType,
        ends: Ends,
    ) -> Result<Model> {
        let (device, gpu) = (&selected.device, selected.gpu.clone());
        if ends == Ends::Logits && !on_cpu(device) {
            check_table_fits(&config, dtype.size(), crate::gpu::kernels::max_allocation(device))?;
        }
        let specs = Specs::of(&config);
        let checkpoint = Arc::new(checkpoint);
        let ck = &checkpoint;
        let outer = match &config.arch {
            Arch::Llama(l) => Outer::Llama(Box::new(llama::Outer::load(ck, &config, l, device, dtype, ends)?)),
            // Qwen3's embeddings, final norm, head and rotation are the LLaMA family's.
            Arch::Qwen3(q) => Outer::Llama(Box::new(llama::Outer::load(ck, &config, &q.base, device, dtype, ends)?)),
            Arch::Gemma(g) => Outer::Gemma(Box::new(gemma::Outer::load(ck, &config, g, device, dtype, ends)?)),
            // Phi-3's embeddings, final norm and head are the LLaMA family's.
            Arch::Phi3(p) => {
                Outer::Llama(Box::new(llama::Outer::load(ck, &config, &p.outside_blocks(), device, dtype, ends)?))
            }
            // A mixture of experts' embeddings, final norm and head are the LLaMA family's.
            Arch::Moe(m) => Outer::Llama(Box::new(llama::Outer::load(ck, &config, &m.attn, device, dtype, ends)?)),
            Arch::Opt(o) => Outer::Opt(Box::new(opt::Outer::load(ck, &config, o, device, dtype, ends)?)),
            Arch::Phi(p) => Outer::Phi(Box::new(phi::Outer::load(ck, &config, p, device, dtype, ends)?)),
        };
        Ok(Model {
            config,
            specs,
            checkpoint,
            device: device.clone(),
            gpu,
            dtype,
            experts_see_every_token: false,
            outer,
        })
    }

    pub fn num_blocks(&self) -> usize {
        self.config.num_layers
    }

    /// Block `block`'s declaration.
    pub fn spec(&self, block: usize) -> &Spec {
        self.specs.block(block)
    }

    /// The prunable linears of block `block`, in execution order.
    pub fn linears(&self, block: usize) -> &[LinearSpec] {
        &self.spec(block).linears
    }

    /// Shape [out, in] of each linear of block `block`, in declared order.
    pub fn linear_shapes(&self, block: usize) -> Vec<[usize; 2]> {
        self.spec(block).shapes()
    }

    /// The number of linears of each block.
    pub fn linear_counts(&self) -> Vec<usize> {
        self.specs.counts()
    }

    /// Checkpoint name of a linear's weight.
    pub fn linear_name(&self, block: usize, linear: usize) -> String {
        self.spec(block).weight_name(block, linear)
    }

    pub fn load_block(&self, index: usize) -> Result<Block> {
        let host = decode_linears(&self.checkpoint, &self.linear_names(index), self.dtype)?;
        self.upload_block(index, host)
    }

    /// (weight name, shape, bias name) of each linear of block `index`.
    fn linear_names(&self, index: usize) -> Vec<(String, [usize; 2], Option<String>)> {
        let spec = self.spec(index);
        spec.linears
            .iter()
            .enumerate()
            .map(|(i, l)| (spec.weight_name(index, i), l.shape, l.bias.then(|| spec.bias_name(index, i))))
            .collect()
    }

    /// A block from its decoded linears; the small tensors (norms) are read here.
    fn upload_block(&self, index: usize, host: Vec<(TensorData, Option<TensorData>)>) -> Result<Block> {
        let ck = &self.checkpoint;
        let on = (&self.device, self.dtype);
        let linears = host
            .into_iter()
            .map(|(w, b)| Linear { weight: Tensor::from_data(w, on), bias: b.map(|b| Tensor::from_data(b, on)) })
            .collect();
        let spec = self.spec(index);
        let prefix = format!("{}.{index}", spec.block_prefix);
        let parts = match &self.config.arch {
            Arch::Llama(l) => Parts::Llama(llama::Parts::load(ck, &prefix, index, &self.config, l, &self.device)?),
            Arch::Qwen3(q) => Parts::Qwen3(qwen3::Parts::load(ck, &prefix, index, &self.config, q, &self.device)?),
            Arch::Gemma(g) => Parts::Gemma(gemma::Parts::load(ck, &prefix, index, &self.config, g, &self.device)?),
            Arch::Phi3(p) => Parts::Phi3(phi3::Parts::load(ck, &prefix, &self.config, p, &self.device)?),
            Arch::Moe(m) => {
                Parts::Moe(Box::new(moe::Parts::load(ck, &prefix, index, &self.config, m, &self.device, self.dtype)?))
            }
            Arch::Opt(o) => Parts::Opt(opt::Parts::load(ck, &prefix, &self.config, o, &self.device)?),
            Arch::Phi(p) => Parts::Phi(phi::Parts::load(ck, &prefix, &self.config, p, &self.device)?),
        };
        let mut block = Block {
            index,
            linears,
            parts,
            shared_inputs: Arc::new(spec.shared_inputs()),
            stacked: Arc::new(OnceLock::new()),
            gpu: self.gpu.clone(),
        };
        block.route_all_tokens(|_| self.experts_see_every_token);
        Ok(block)
    }

    /// The block walker: every block in order. While the caller computes with block b, a
    /// thread decodes block b + 1's linears from the memory map, so at most two blocks are on
    /// the host at once and the decode (f16/bf16 → f32, finiteness check) overlaps compute.
    pub fn blocks(&self) -> impl Iterator<Item = Result<Block>> + '_ {
        let n = self.num_blocks();
        let decode = move |b: usize| {
            let ck = Arc::clone(&self.checkpoint);
            let (names, dtype) = (self.linear_names(b), self.dtype);
            std::thread::spawn(move || decode_linears(&ck, &names, dtype))
        };
        let mut next = None;
        (0..n).map(move |b| {
            let current = next.take().unwrap_or_else(|| decode(b));
            if b + 1 < n {
                next = Some(decode(b + 1));
            }
            let host =
                current.join().unwrap_or_else(|_| Err(crate::err!("block {b}: the decoding thread panicked")))?;
            self.upload_block(b, host)
        })
    }

    /// Token ids [b, t] → hidden states [b, t, d].
    pub fn embed(&self, ids: &[u32], batch: usize) -> Result<Tensor<3>> {
        let t = ids.len() / batch;
        Ok(match &self.outer {
            Outer::Llama(o) => o.embed(ids, batch, t)?,
            Outer::Gemma(o) => o.embed(ids, batch, t)?,
            Outer::Opt(o) => o.embed(ids, batch, t, &self.device, self.gpu.as_deref())?,
            Outer::Phi(o) => o.embed(ids, batch, t)?,
        })
    }

    /// Final norm and LM head: hidden [b, t, d] → logits [b, t, vocab]. An error for a model
    /// loaded for [`Ends::Hidden`].
    pub fn head(&self, hidden: Tensor<3>) -> Result<Tensor<3>> {
        let logits = match &self.outer {
            Outer::Llama(o) => o.head(hidden, self.gpu.as_deref()),
            Outer::Gemma(o) => o.head(hidden, self.gpu.as_deref()),
            Outer::Opt(o) => o.head(hidden, self.gpu.as_deref()),
            Outer::Phi(o) => o.head(hidden, self.gpu.as_deref()),
        };
        logits.ok_or_else(|| err!("this model was loaded for pruning, without its LM head: it computes no logits"))
    }

    /// Positional tables for windows of `t` tokens.
    pub fn positions(&self, t: usize) -> Positions {
        let rope = match (&self.config.arch, &self.outer) {
            // longrope's factors depend on the windows' length.
            (Arch::Phi3(p), _) => Some(phi3::rope_freqs(p, t).tables(t, &self.device)),
            (_, Outer::Llama(o)) => Some(o.rope.tables(t, &self.device)),
            (_, Outer::Gemma(o)) => Some(o.rope.tables(t, &self.device)),
            (_, Outer::Opt(_)) => None,
            (_, Outer::Phi(o)) => Some(o.rope.tables(t, &self.device)),
        };
        let window = self.config.sliding_window().filter(|&w| w < t);
        let masked = window.is_some() || self.config.masks_attention() || !cpu_in_f32(&self.device, self.dtype);
        let causal = masked.then(|| band_mask(t, window, &self.device));
        let local_window = self.config.local_window().filter(|&w| w < t);
        let local = local_window.map(|w| band_mask(t, Some(w), &self.device));
        let local_rope = match &self.config.arch {
            Arch::Gemma(g) => gemma::local_rope(g).map(|f| f.tables(t, &self.device)),
            _ => None,
        };
        Positions { rope, causal, window, local, local_window, local_rope, gpu: self.gpu.clone() }
    }

    /// Checks that windows of `t` tokens run exactly on this model.
    pub fn check_seqlen(&self, t: usize) -> Result<()> {
        self.config.check_seqlen(t)
    }

    /// Checks that every token id has a row in the embeddings (a tokenizer that does not
    /// belong to the model gives larger ids).
    pub fn check_ids(&self, ids: &[u32]) -> Result<()> {
        match ids.iter().max() {
            Some(&m) if m as usize >= self.config.vocab_size => {
                bail!("token id {m} is outside the model's vocabulary (vocab_size {})", self.config.vocab_size)
            }
            _ => Ok(()),
        }
    }

    /// Whole forward pass: ids [b, t] → logits [b, t, vocab], with every block loaded in turn.
    pub fn forward(&self, ids: &[u32], batch: usize) -> Result<Tensor<3>> {
        let pos = self.positions(ids.len() / batch);
        let mut h = self.embed(ids, batch)?;
        for block in self.blocks() {
            h = block?.forward(h, &pos, None);
        }
        self.head(h)
    }
}

// ---------------------------------------------------------------------------------------------
// Pieces the families share.

/// Rotary embedding frequencies of a family; `dim` ≤ head_dim dims of each head rotate.
#[derive(Clone, Debug)]
pub struct RopeFreqs {
    pub inv_freq: Vec<f32>,
    pub dim: usize,
    /// cos and sin are multiplied by it (longrope's attention factor; 1 elsewhere).
    pub scale: f32,
}

impl RopeFreqs {
    /// inv_freq_i = 1 / θ^(2i/dim), computed in f32 as transformers does.
    pub fn new(theta: f64, dim: usize) -> RopeFreqs {
        let base = theta as f32;
        let inv_freq = (0..dim / 2).map(|i| 1.0 / base.powf((2 * i) as f32 / dim as f32)).collect();
        RopeFreqs { inv_freq, dim, scale: 1.0 }
    }

    /// cos and sin tables [t, dim] for positions 0..t.
    pub fn tables(&self, t: usize, device: &Device) -> Rope {
        let dim = self.dim;
        let mut cos = Vec::with_capacity(t * dim);
        let mut sin = Vec::with_capacity(t * dim);
        for pos in 0..t {
            for j in 0..dim {
                let angle = pos as f32 * self.inv_freq[j % (dim / 2)];
                cos.push(angle.cos() * self.scale);
                sin.push(angle.sin() * self.scale);
            }
        }
        Rope {
            cos: Tensor::from_data(TensorData::new(cos.clone(), [t, dim]), device),
            sin: Tensor::from_data(TensorData::new(sin.clone(), [t, dim]), device),
            cos_host: cos.into(),
            sin_host: sin.into(),
            dim,
        }
    }
}

#[derive(Clone)]
pub struct Rope {
    cos: Tensor<2>,
    sin: Tensor<2>,
    /// The same tables for the CPU path.
    cos_host: Arc<[f32]>,
    sin_host: Arc<[f32]>,
    dim: usize,
}

impl Rope {
    /// x [b, heads, t, hd] with its first `dim` dims of each head rotated (transformers'
    /// `rotate_half` convention); the rest pass through (partial rotary).
    pub fn apply(&self, x: Tensor<4>) -> Tensor<4> {
        if on_cpu_in_f32(&x) {
            return self.apply_on_cpu(x);
        }
        self.apply_ops(x)
    }

    /// [`Rope::apply`] in burn ops: the GPU path, and the CPU path's reference in the tests.
    fn apply_ops(&self, x: Tensor<4>) -> Tensor<4> {
        let dt = x.dtype();
        let x = to_dtype(x, DType::F32);
        let [b, h, t, hd] = x.dims();
        let (rot, pass) = if self.dim == hd {
            (x, None)
        } else {
            (x.clone().slice([0..b, 0..h, 0..t, 0..self.dim]), Some(x.slice([0..b, 0..h, 0..t, self.dim..hd])))
        };
        let half = self.dim / 2;
        let x1 = rot.clone().slice([0..b, 0..h, 0..t, 0..half]);
        let x2 = rot.clone().slice([0..b, 0..h, 0..t, half..self.dim]);
        let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
        let cos = self.cos.clone().unsqueeze::<4>();
        let sin = self.sin.clone().unsqueeze::<4>();
        let out = rot * cos + rotated * sin;
        let out = match pass {
            Some(p) => Tensor::cat(vec![out, p], 3),
            None => out,
        };
        to_dtype(out, dt)
    }

    /// [`Rope::apply`] as one host loop: the same products and sums in the same order (x₁·cos +
    /// (−x₂)·sin, x₂·cos + x₁·sin), so the same bits, without the ops' six temporaries. It works
    /// in the [b, t, heads, hd] layout that `split_heads` views, so that needs no copy.
    fn apply_on_cpu(&self, x: Tensor<4>) -> Tensor<4> {
        let [b, h, t, hd] = x.dims();
        let device = x.device();
        let (dim, half) = (self.dim, self.dim / 2);
        let mut v = cpu_values(x.swap_dims(1, 2));
        v.par_chunks_exact_mut(hd).enumerate().for_each(|(r, head)| {
            let at = (r / h % t) * dim;
            let (cos, sin) = (&self.cos_host[at..at + dim], &self.sin_host[at..at + dim]);
            for i in 0..half {
                let (x1, x2) = (head[i], head[i + half]);
                head[i] = x1 * cos[i] + -x2 * sin[i];
                head[i + half] = x2 * cos[i + half] + x1 * sin[i + half];
            }
        });
        Tensor::<4>::from_data(TensorData::new(v, [b, t, h, hd]), &device).swap_dims(1, 2)
    }
}

/// RMSNorm, computed in f32 whatever the compute dtype (as PyTorch's half path does).
pub fn rms_norm(x: Tensor<3>, weight: &Tensor<1>, eps: f64) -> Tensor<3> {
    let dt = x.dtype();
    let x = to_dtype(x, DType::F32);
    let inv_rms = x.clone().square().mean_dim(2).add_scalar(eps).sqrt().recip();
    to_dtype(x * inv_rms * weight.clone().unsqueeze::<3>(), dt)
}

/// LayerNorm over the last dim with weight and bias (population variance, as torch does).
#[derive(Clone)]
pub struct LayerNorm {
    pub weight: Tensor<1>,
    pub bias: Tensor<1>,
    pub eps: f64,
}

impl LayerNorm {
    pub fn load(ck: &Checkpoint, name: &str, d: usize, eps: f64, device: &Device) -> Result<LayerNorm> {
        Ok(LayerNorm {
            weight: to_device1(ck.load(&format!("{name}.weight"), &[d])?, device),
            bias: to_device1(ck.load(&format!("{name}.bias"), &[d])?, device),
            eps,
        })
    }

    /// In f32 whatever the compute dtype.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let dt = x.dtype();
        let x = to_dtype(x, DType::F32);
        let mean = x.clone().mean_dim(2);
        let centered = x - mean;
        let var = centered.clone().square().mean_dim(2);
        let y = centered * var.add_scalar(self.eps).sqrt().recip() * self.weight.clone().unsqueeze::<3>()
            + self.bias.clone().unsqueeze::<3>();
        to_dtype(y, dt)
    }
}

/// Whether `t` is f32 on a CPU backend. There its values are in host memory, and host loops
/// (`cpu_attention`, `cpu_math`, and the CPU paths of `score` and `mask`) beat chains of burn
/// ops, each of which allocates its output.
pub fn on_cpu_in_f32<const D: usize>(t: &Tensor<D>) -> bool {
    cpu_in_f32(&t.device(), t.dtype())
}

/// [`on_cpu_in_f32`] for tensors not made yet: where `cpu_attention` runs.
fn cpu_in_f32(device: &Device, dtype: DType) -> bool {
    dtype == DType::F32 && on_cpu(device)
}

/// Whether `device` is one of the CPU backends (flex, ndarray), not a GPU or its emulator.
pub fn on_cpu(device: &Device) -> bool {
    !matches!(device.as_dispatch(), burn::backend::DispatchDevice::Cube(_))
}

/// The values of an f32 tensor of a CPU backend in logical order ([`on_cpu_in_f32`] checked by
/// the caller; then nothing can fail). No copy when `t` is contiguous and not shared.
pub fn cpu_values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_into_vec::<f32>().expect("an f32 tensor in host memory")
}

/// `f` on the values of an f32 burn-flex tensor [rows, cols] stored row by row (a view at an
/// offset included), read in place: no copy even when the tensor is shared. `None` for other
/// tensors and layouts.
pub fn with_cpu_rows<R>(t: &Tensor<2>, f: impl FnOnce(&[f32]) -> R) -> Option<R> {
    if t.dtype() != DType::F32 {
        return None;
    }
    let [rows, cols] = t.dims();
    let flex: burn::backend::flex::FlexTensor = t.clone().try_into_primitive::<burn::backend::Flex>().ok()?;
    let (layout, data) = (flex.layout(), flex.storage::<f32>());
    let row_major = layout.strides() == [cols as isize, 1] || rows <= 1 && layout.strides().get(1) == Some(&1);
    let end = layout.start_offset() + rows * cols;
    if !row_major || end > data.len() {
        return None;
    }
    Some(f(&data[layout.start_offset()..end]))
}

/// SiLU, x·σ(x). On the CPU backends in f32 a vectorized host loop (`cpu_math`): burn-flex's
/// sigmoid calls the scalar libm exp per element.
pub fn silu(x: Tensor<3>) -> Tensor<3> {
    if !on_cpu_in_f32(&x) {
        return burn::tensor::activation::silu(x);
    }
    let (dims, device) = (x.dims(), x.device());
    let mut v = cpu_values(x);
    // Elementwise: split over the cores, the same values in any order.
    v.par_chunks_mut(1 << 14).for_each(cpu_math::silu);
    Tensor::from_data(TensorData::new(v, dims), &device)
}

/// Causal multi-head attention: q [b, nh, t, hd], k and v [b, nkv, t, hd] → [b, t, nh·hd].
/// The scores are divided by `divide_by` where given (OPT scales q beforehand instead); `pos`
/// holds the mask for t tokens.
pub fn attention(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, divide_by: Option<f64>, pos: &Positions) -> Tensor<3> {
    // On the CPU backends in f32, `cpu_attention`: only the visible (lower-triangle) scores
    // are computed, grouped-query heads are not repeated, and heads are not transposed. The
    // mask and softmax passes below took a fifth of a CPU prune.
    // A sliding window takes the masked burn-ops path everywhere: the CPU and flash kernels
    // know only the causal triangle.
    if pos.window.is_none() && on_cpu_in_f32(&v) {
        let scale = divide_by.map_or(1.0, |d| 1.0 / d) as f32;
        return cpu_attention::causal(q, k, v, scale);
    }
    let t = q.dims()[2];
    let (gpu, banded) = (pos.gpu.as_deref(), pos.window.is_some());
    match &pos.causal {
        Some(mask) if mask.dims()[2] == t => attention_masked(q, k, v, divide_by, mask.clone(), gpu, banded),
        _ => {
            let mask = band_mask(t, pos.window, &v.device());
            attention_masked(q, k, v, divide_by, mask, gpu, banded)
        }
    }
}

/// [`attention`] in burn tensor ops, on every backend: the GPU path, and the CPU path's
/// reference in the tests.
pub fn attention_ops(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, divide_by: Option<f64>) -> Tensor<3> {
    let mask = causal_mask(q.dims()[2], &v.device());
    attention_masked(q, k, v, divide_by, mask, None, false)
}

/// [`attention_ops`] with its mask [1, 1, t, t] given: causal, or `banded` by a sliding window.
fn attention_masked(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    divide_by: Option<f64>,
    mask: Tensor<4>,
    gpu: Option<&Gpu>,
    banded: bool,
) -> Tensor<3> {
    let [b, nh, t, hd] = q.dims();
    let groups = nh / k.dims()[1];
    let dt = v.dtype();
    let (k, v) = (repeat_kv(k, groups), repeat_kv(v, groups));
    // One flash kernel (src/gpu/attention.rs) where chosen; it applies 1/√hd itself, so only a
    // family that divides by √hd takes it. With the `autotune` feature and no kernel named,
    // cubecl times burn's flash kernels against the separate kernels below and keeps the faster.
    // A sliding window's band in `mask`: only the separate kernels apply it.
    let flash_fits = !banded && !on_cpu(&v.device()) && divide_by == Some((hd as f64).sqrt());
    let chosen = gpu.map(|gpu| &gpu.attention);
    if flash_fits && let Some(out) = chosen.and_then(|c| c.causal(&q, &k, &v)) {
        return out.swap_dims(1, 2).reshape([b, t, nh * hd]);
    }
    #[cfg(feature = "autotune")]
    if flash_fits && !chosen.is_some_and(|c| c.fixed(dt, hd)) {
        let options = burn::tensor::ops::AttentionModuleOptions { scale: None, softcap: None, is_causal: true };
        return burn::tensor::module::attention(q, k, v, None, None, options).swap_dims(1, 2).reshape([b, t, nh * hd]);
    }
    separate(q, k, v, divide_by, mask, dt)
}

/// Causal attention as separate kernels, whatever flash kernel is chosen: q, k, v [b, heads,
/// t, hd] (k and v repeated per query head) → [b, t, heads·hd]. What `bench --attention`
/// times the flash kernels against.
pub fn attention_separate(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, divide_by: Option<f64>) -> Tensor<3> {
    let (mask, dt) = (causal_mask(q.dims()[2], &v.device()), v.dtype());
    separate(q, k, v, divide_by, mask, dt)
}

fn separate(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, divide_by: Option<f64>, mask: Tensor<4>, dt: DType) -> Tensor<3> {
    let [b, nh, t, hd] = q.dims();
    // Scores, mask and softmax in f32; the two products in the compute dtype.
    let scores = to_dtype(q.matmul(k.swap_dims(2, 3)), DType::F32);
    let scores = match divide_by {
        Some(d) => scores.div_scalar(d),
        None => scores,
    };
    let probs = burn::tensor::activation::softmax(scores + mask, 3);
    to_dtype(probs, dt).matmul(v).swap_dims(1, 2).reshape([b, t, nh * hd])
}

/// Attention with the scores multiplied by `scale` and, where `softcap` is given, soft-capped
/// (cap · tanh(s / cap)) before the `mask` [1, 1, t, t] is added, as transformers' eager
/// attention does (Gemma 2): q [b, nh, t, hd], k and v [b, nkv, t, hd] → [b, t, nh·hd]. Scores
/// and softmax in f32, the products in the compute dtype.
pub fn attention_capped(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    scale: f64,
    softcap: Option<f64>,
    mask: Tensor<4>,
) -> Tensor<3> {
    let [b, nh, t, hd] = q.dims();
    let groups = nh / k.dims()[1];
    let dt = v.dtype();
    let (k, v) = (repeat_kv(k, groups), repeat_kv(v, groups));
    let scores = to_dtype(q.matmul(k.swap_dims(2, 3)), DType::F32).mul_scalar(scale);
    let scores = match softcap {
        Some(cap) => scores.div_scalar(cap).tanh().mul_scalar(cap),
        None => scores,
    };
    let probs = burn::tensor::activation::softmax(scores + mask, 3);
    to_dtype(probs, dt).matmul(v).swap_dims(1, 2).reshape([b, t, nh * hd])
}

/// gelu in its tanh form (transformers' gelu_new and gelu_pytorch_tanh):
/// 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))).
pub fn gelu_tanh(x: Tensor<3>) -> Tensor<3> {
    let inner =
        (x.clone() + x.clone().powi_scalar(3).mul_scalar(0.044715)).mul_scalar((2.0 / std::f64::consts::PI).sqrt());
    x.mul_scalar(0.5) * inner.tanh().add_scalar(1.0)
}

/// RMSNorm of each head's `hd` values (Qwen3's and Gemma 3's q/k norms): [b, t, n·hd] →
/// [b, n, t, hd].
pub fn rms_norm_heads(y: Tensor<3>, weight: &Tensor<1>, n: usize, hd: usize, eps: f64) -> Tensor<4> {
    let [b, t, _] = y.dims();
    let normed = rms_norm(y.reshape([b, t * n, hd]), weight, eps);
    split_heads(normed.reshape([b, t, n * hd]), n, hd)
}

/// [b, t, n·hd] → [b, n, t, hd]
pub fn split_heads(y: Tensor<3>, n: usize, hd: usize) -> Tensor<4> {
    let [b, t, _] = y.dims();
    y.reshape([b, t, n, hd]).swap_dims(1, 2)
}

/// [b, kv, t, hd] → [b, kv·groups, t, hd], each kv head repeated for its group of q heads.
fn repeat_kv(x: Tensor<4>, groups: usize) -> Tensor<4> {
    if groups == 1 {
        return x;
    }
    let [b, kv, t, hd] = x.dims();
    x.unsqueeze_dim::<5>(2).expand([b, kv, groups, t, hd]).reshape([b, kv * groups, t, hd])
}

/// Additive mask [1, 1, t, t]: 0 on and below the diagonal, a large negative above.
///
/// On the CPU backends "large negative" is −∞: every finite value that far down makes glibc's
/// `expf` take its underflow path (which sets errno), and that was a fifth of a CPU prune.
/// GPUs keep −1e9, as shader compilers may assume finite floats. Both give exactly 0 after the
/// softmax's exp, as transformers' most negative finite value does.
fn causal_mask(t: usize, device: &Device) -> Tensor<4> {
    band_mask(t, None, device)
}

/// [`causal_mask`], and with a sliding `window` also every key `window` or more tokens before
/// the query (transformers' rule: key j is seen from query i when i − window < j ≤ i).
fn band_mask(t: usize, window: Option<usize>, device: &Device) -> Tensor<4> {
    let masked = if on_cpu(device) { f32::NEG_INFINITY } else { -1e9 };
    let w = window.unwrap_or(t).max(1);
    let mut m = vec![0f32; t * t];
    for i in 0..t {
        for j in 0..t {
            if j > i || i - j >= w {
                m[i * t + j] = masked;
            }
        }
    }
    Tensor::<2>::from_data(TensorData::new(m, [t, t]), device).unsqueeze::<4>()
}

/// Mean cross-entropy per sequence of predicting tokens 2..t from their prefixes:
/// logits [b, t, vocab], ids [b·t] → [b].
pub fn sequence_losses(logits: Tensor<3>, ids: &[u32]) -> Result<Vec<f32>> {
    let [b, t, vocab] = logits.dims();
    let targets: Vec<u32> = (0..b).flat_map(|s| ids[s * t + 1..(s + 1) * t].iter().copied()).collect();
    let logp = token_log_probs(logits.slice([0..b, 0..t - 1, 0..vocab]), &targets, "sequence losses")?;
    Ok(logp.chunks(t - 1).map(|w| (-w.iter().map(|&l| l as f64).sum::<f64>() / (t - 1) as f64) as f32).collect())
}

/// log p(targets[i]) at each position i of logits [b, t, vocab] (targets [b·t]), in f32. On the
/// CPU backends a host loop over rows, which holds no [b, t, vocab] log-softmax beside the
/// logits (a GiB per window for a 128k vocabulary at 2048 tokens); elsewhere burn's ops.
pub fn token_log_probs(logits: Tensor<3>, targets: &[u32], what: &str) -> Result<Vec<f32>> {
    let ([b, t, vocab], device) = (logits.dims(), logits.device());
    if targets.len() != b * t {
        bail!("{what}: {} targets for {} positions", targets.len(), b * t);
    }
    if let Some(&bad) = targets.iter().find(|&&x| x as usize >= vocab) {
        bail!("{what}: token {bad} is outside the vocabulary of {vocab}");
    }
    if on_cpu(&device) {
        let x = host_f32(logits, what)?;
        return Ok(x
            .par_chunks(vocab)
            .zip(targets.par_iter())
            .map(|(row, &k)| row[k as usize] - cpu_math::log_sum_exp(row))
            .collect());
    }
    let logp = log_softmax(to_dtype(logits, DType::F32), 2);
    let targets: Vec<i64> = targets.iter().map(|&k| k as i64).collect();
    let targets = Tensor::<1, Int>::from_data(TensorData::new(targets, [b * t]), &device).reshape([b, t, 1]);
    host_f32(logp.gather(2, targets).reshape([b * t]), what)
}

/// Every tensor the forward pass loads from a checkpoint of `config`, with its shape: the
/// family's tensors outside the linears, then each block's linears (and their biases) in
/// declared order. `lm_head_stored`: a tied model's checkpoint may store the head anyway.
pub fn checkpoint_tensors(config: &Config, lm_head_stored: bool) -> Vec<(String, Vec<usize>)> {
    let specs = Specs::of(config);
    let mut all = match &config.arch {
        Arch::Llama(l) => llama::tensors(config, l, lm_head_stored),
        Arch::Qwen3(q) => qwen3::tensors(config, q, lm_head_stored),
        Arch::Gemma(g) => gemma::tensors(config, g, lm_head_stored),
        Arch::Phi3(p) => phi3::tensors(config, p, lm_head_stored),
        Arch::Moe(m) => moe::tensors(config, m, lm_head_stored),
        Arch::Opt(o) => opt::tensors(config, o, lm_head_stored),
        Arch::Phi(p) => phi::tensors(config, p),
    };
    for b in 0..config.num_layers {
        let spec = specs.block(b);
        for (i, l) in spec.linears.iter().enumerate() {
            all.push((spec.weight_name(b, i), l.shape.to_vec()));
            if l.bias {
                all.push((spec.bias_name(b, i), vec![l.shape[0]]));
            }
        }
    }
    all
}

/// The LM head's weight shape [vocab, input] as the family declares it (stored or tied).
pub fn head_shape(config: &Config) -> Option<[usize; 2]> {
    checkpoint_tensors(config, true)
        .into_iter()
        .find(|(name, _)| name == "lm_head.weight")
        .and_then(|(_, s)| <[usize; 2]>::try_from(s).ok())
}

/// The embedding table is the largest tensor a GPU holds in one buffer for `eval`, `zeroshot`
/// and `bench` (the prune checks its own buffers up front): over the runtime's per-buffer limit,
/// say so before loading, with what helps.
pub fn check_table_fits(config: &Config, dtype_bytes: usize, limit: u64) -> Result<()> {
    let table = (config.vocab_size * config.embed_dim * dtype_bytes) as u128;
    if table > limit as u128 {
        let advice = if dtype_bytes > 2 { "use --dtype f16 or --device cpu" } else { "use --device cpu" };
        bail!(
            "the embedding table ({} × {} in {}) takes {}, more than the GPU's limit per buffer ({}); {advice}",
            config.vocab_size,
            config.embed_dim,
            if dtype_bytes > 2 { "f32" } else { "f16" },
            crate::io::error::human(table),
            crate::io::error::human(limit as u128)
        );
    }
    Ok(())
}

/// Reads a model folder without a device and checks everything that can be checked cheaply:
/// the config, the weights' headers, the block count, and that every tensor the forward pass
/// loads is present with its shape. Errors surface here, before any device is opened.
pub fn check_model_dir(dir: &Path) -> Result<(Config, Checkpoint)> {
    crate::io::error::check_model_folder(dir)?;
    let config_path = dir.join("config.json");
    if !config_path.exists() {
        bail!("{}: no config.json", dir.display());
    }
    let bytes = std::fs::read(&config_path)
        .map_err(|e| err!("cannot read {}: {}", config_path.display(), crate::io::error::io_words(&e)))?;
    let text = std::str::from_utf8(&bytes).map_err(|_| err!("{}: not UTF-8", config_path.display()))?;
    let config = Config::from_json(text).map_err(|e| err!("{}: {e}", config_path.display()))?;
    let mut checkpoint = open_checkpoint(dir, &config)?;
    checkpoint.read.insert("config.json".to_string(), bytes);
    check_layers(&config, Specs::of(&config).block_prefix(), &checkpoint)?;
    for (name, shape) in &checkpoint_tensors(&config, checkpoint.contains("lm_head.weight")) {
        let (_, info) = checkpoint.info(name)?;
        if info.shape != *shape {
            bail!("tensor \"{}\" has shape {:?}, expected {shape:?}", checkpoint.stored_name(name), info.shape);
        }
        // Checked here, before any work, not when the tensor's block loads.
        if !matches!(info.dtype, safetensors::Dtype::F32 | safetensors::Dtype::F16 | safetensors::Dtype::BF16) {
            bail!(
                "tensor \"{}\" is stored as {}; neuroal reads F32, F16 and BF16",
                checkpoint.stored_name(name),
                info.dtype
            );
        }
    }
    Ok((config, checkpoint))
}

/// The checkpoint of a model folder, its tensors named as the family reads them: a multimodal
/// folder's language model is stored under `language_model.` (as transformers 4.x writes it:
/// `language_model.model.*`, `language_model.lm_head.*`) or `model.language_model.` (5.x, whose
/// head is `lm_head`); the other tensors (vision tower, projector) keep their names.
pub fn open_checkpoint(dir: &Path, config: &Config) -> Result<Checkpoint> {
    let mut checkpoint = Checkpoint::open(dir)?;
    if config.is_text_of_multimodal() {
        if checkpoint.names.keys().any(|n| n.starts_with("language_model.")) {
            checkpoint.read_under("language_model.", "")?;
        } else {
            checkpoint.read_under("model.language_model.", "model.")?;
        }
    }
    Ok(checkpoint)
}

/// The block count the weights hold must be the config's `num_hidden_layers`: fewer would fail
/// half-way, more would leave blocks unpruned while the report says otherwise.
pub fn check_layers(config: &Config, block_prefix: &str, checkpoint: &Checkpoint) -> Result<()> {
    let prefix = format!("{block_prefix}.");
    let mut present: Vec<usize> = checkpoint
        .names
        .keys()
        .filter_map(|n| n.strip_prefix(&prefix)?.split('.').next()?.parse::<usize>().ok())
        .collect();
    present.sort_unstable();
    present.dedup();
    let n = config.num_layers;
    let held = present.last().map(|&m| m + 1).unwrap_or(0);
    if held != n || present.len() != held {
        let what = match (present.first(), present.last()) {
            (Some(a), Some(b)) if present.len() == held => format!("{held} blocks ({prefix}{a} to {b})"),
            (Some(_), Some(_)) => {
                format!("blocks {}", present.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(", "))
            }
            _ => "no blocks".to_string(),
        };
        bail!("{}: config.json says num_hidden_layers = {n}, but the weights hold {what}", checkpoint.dir.display());
    }
    Ok(())
}

/// Decodes the named linears (weight, bias) of one block to host data in the compute dtype,
/// so a half-precision run uploads half the bytes.
fn decode_linears(
    ck: &Checkpoint,
    names: &[(String, [usize; 2], Option<String>)],
    dtype: DType,
) -> Result<Vec<(TensorData, Option<TensorData>)>> {
    names
        .iter()
        .map(|(w, shape, b)| {
            let weight = ck.load_data(w, shape, dtype)?;
            let bias = b.as_ref().map(|b| ck.load_data(b, &[shape[0]], dtype)).transpose()?;
            Ok((weight, bias))
        })
        .collect()
}

pub fn to_device1(t: HostTensor, device: &Device) -> Tensor<1> {
    let n = t.data.len();
    Tensor::from_data(TensorData::new(t.data, [n]), device)
}

/// [`to_device1`] in `dtype`, converted on the host: a half-precision run uploads half the
/// bytes, and no f32 buffer of the whole tensor is needed on the device (an embedding table can
/// exceed an adapter's buffer limit in f32 and fit in f16).
pub fn to_device1_as(t: HostTensor, device: &Device, dtype: DType) -> Tensor<1> {
    let n = t.data.len();
    Tensor::from_data(TensorData::new(t.data, [n]).convert_dtype(dtype), (device, dtype))
}

/// A [v, d] table in `dtype`, converted on the host (see [`to_device1_as`]).
pub fn to_device2_as(t: HostTensor, device: &Device, dtype: DType) -> Tensor<2> {
    let shape = [t.shape[0], t.shape[1]];
    Tensor::from_data(TensorData::new(t.data, shape).convert_dtype(dtype), (device, dtype))
}

/// Helpers for the families' declaration tests.
#[cfg(test)]
pub(crate) mod testing {
    use super::{Spec, Specs};
    use crate::model::config::Config;

    /// (linear, next block?, linear whose d its rows take) for every declared linear.
    pub fn routed(config_json: &str) -> Vec<(&'static str, bool, &'static str)> {
        let s = spec(config_json);
        // Leaked: a test's few names, so the expectations can be written as literals.
        let names: Vec<&'static str> = s.linears.iter().map(|l| &*Box::leak(l.name.clone().into_boxed_str())).collect();
        s.routes.as_ref().unwrap().iter().zip(&names).map(|(r, n)| (*n, r.next_block, names[r.linear])).collect()
    }

    /// The declaration of the first block of the model `config_json` describes.
    pub fn spec(config_json: &str) -> Spec {
        Specs::of(&Config::from_json(config_json).unwrap()).block(0).clone()
    }

    /// Each (extra config fields, expected message) is refused with that message.
    pub fn refused(base: &str, cases: &[(&str, &str)]) {
        for (extra, expect) in cases {
            let e = Config::from_json(&format!("{{{base}{extra}}}")).unwrap_err().to_string();
            assert!(e.contains(expect), "{e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SplitMix64;

    /// `input_of` points at or before each linear, at a linear that records itself (the
    /// recording relies on it); which inputs are shared is checked against recording every
    /// linear on its own in tests/families.rs.
    /// Each route's consumers exist, and their input channels span the routed linear's rows
    /// `repeat` times (q, k and v under grouped-query attention keep the block sparsity).
    #[test]
    fn shared_inputs_are_declared_consistently() {
        for fixture in [
            "tiny-llama",
            "tiny-mistral-gqa",
            "tiny-qwen2",
            "tiny-opt",
            "tiny-phi",
            "tiny-llama-bias",
            "tiny-opt-post-ln",
            "tiny-qwen3",
            "tiny-gemma2",
            "tiny-gemma3-mm",
            "tiny-phi3",
            "tiny-mixtral",
            "tiny-qwen2-moe",
            "tiny-qwen3-moe",
            "tiny-olmoe",
        ] {
            let c = Config::from_file(
                &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets").join(fixture).join("config.json"),
            )
            .unwrap();
            let specs = Specs::of(&c);
            for s in specs.kinds() {
                assert_eq!(s.input_of.len(), s.linears.len(), "{fixture}");
                for (i, &j) in s.input_of.iter().enumerate() {
                    assert!(j <= i && s.input_of[j] == j, "{fixture}: linear {i} reads linear {j}'s input");
                    assert_eq!(
                        s.linears[i].shape[1], s.linears[j].shape[1],
                        "{fixture}: linear {i} and {j} share an input of one width"
                    );
                }
                let gqa = c.num_kv_heads < c.num_heads;
                for (i, r) in s.routes.iter().flatten().enumerate() {
                    for k in 0..r.count.max(1) {
                        let consumer = &s.linears[r.linear + k * r.stride];
                        if !(gqa && s.linears[i].qkv) {
                            assert_eq!(
                                consumer.shape[1] * r.repeat,
                                s.linears[i].shape[0],
                                "{fixture}: {} routed to {}",
                                s.linears[i].name,
                                consumer.name
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn an_embedding_table_over_the_buffer_limit_is_refused_with_what_helps() {
        // LLaMA-0.8B's table: 32000 × 2048 = 65.5 M values, 250 MiB in f32, 125 MiB in f16,
        // against lavapipe's 128 MiB.
        let c = Config::from_json(
            r#"{"model_type": "llama", "vocab_size": 32000, "hidden_size": 2048, "intermediate_size": 5632,
            "num_hidden_layers": 1, "num_attention_heads": 32, "max_position_embeddings": 2048}"#,
        )
        .unwrap();
        let limit = 128 << 20;
        let e = check_table_fits(&c, 4, limit).unwrap_err().to_string();
        assert_eq!(
            e,
            "the embedding table (32000 × 2048 in f32) takes 250.0 MiB, more than the GPU's limit per buffer (128.0 MiB); use --dtype f16 or --device cpu"
        );
        assert!(check_table_fits(&c, 2, limit).is_ok());
        assert!(check_table_fits(&c, 2, 125 << 20).is_ok(), "exactly at the limit fits");
        let e = check_table_fits(&c, 2, (125 << 20) - 1).unwrap_err().to_string();
        assert!(
            e.ends_with("in f16) takes 125.0 MiB, more than the GPU's limit per buffer (125.0 MiB); use --device cpu"),
            "{e}"
        );
    }

    /// The CPU host loop against the burn-ops rotation (checked against transformers through
    /// the forward tests), full and partial rotary, on both CPU backends: the same bits.
    #[test]
    fn rope_on_cpu_equals_the_ops_path() {
        #[allow(deprecated)] // the NdArray backend is kept on request
        let devices = [Device::flex(), Device::ndarray()];
        let mut rng = SplitMix64::new(11);
        for d in &devices {
            for (b, h, t, hd, dim) in [(2, 3, 17, 8, 8), (1, 2, 9, 12, 4)] {
                let n = b * h * t * hd;
                let v: Vec<f32> = (0..n).map(|_| rng.uniform(-4.0, 4.0)).collect();
                let x = Tensor::<4>::from_data(TensorData::new(v.clone(), [b, h, t, hd]), d);
                let rope = RopeFreqs::new(10000.0, dim).tables(t, d);
                let fast = rope.apply(x.clone()).into_data().try_to_vec::<f32>().unwrap();
                let reference = rope.apply_ops(x).into_data().try_to_vec::<f32>().unwrap();
                assert_eq!(fast, reference, "b {b} h {h} t {t} hd {hd} dim {dim}");
                // Position 0 is the identity.
                assert_eq!(&fast[..hd], &v[..hd]);
            }
        }
    }
}
