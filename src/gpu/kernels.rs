//! Launches of the hand-written WGSL shaders in `shaders/` on burn's wgpu tensors.
//!
//! The shaders are dispatched through wgpu itself, on the very device and queue burn's runtime
//! uses, on the tensors' own buffers. burn's template API cannot do this once cubecl compiles its
//! own kernels natively (SPIR-V on Vulkan, MSL on Metal): it only runs a template whose language
//! is the compiler's. Dispatching ourselves keeps one WGSL source for every backend (naga
//! translates it) while burn's matrix products take the native, tensor-core path. Each shader has
//! a twin in burn tensor ops next to its caller, used on the CPU backends and in the tests.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

use burn::backend::wgpu::CubeTensor;
use burn::backend::{DispatchDevice, Wgpu};
use burn::tensor::wgpu::wgpu;
use burn::tensor::{DType, Shape, Tensor};
use cubecl::wgpu::{AutoCompiler, WgpuServer};
use wgpu::util::DeviceExt;

const WORKGROUP: u32 = 256;
// row_select.wgsl's radix digits have 256 bins, each zeroed by one invocation of its workgroup.
const _: () = assert!(WORKGROUP == 256);
/// Largest workgroup count per dispatch dimension that every wgpu backend accepts.
const MAX_GROUPS: u32 = 65_535;
/// Rows of x each thread of `input_stats.wgsl` sums.
const STATS_ROWS: usize = 64;

/// Whether a tensor lives on a wgpu device (and so takes the WGSL path).
pub fn is_wgpu<const D: usize>(t: &Tensor<D>) -> bool {
    matches!(t.device().as_dispatch(), DispatchDevice::Cube(d) if matches!(d, cubecl::Device::Wgpu(_)))
}

/// The wgpu device and queue burn's runtime was opened on, and the shaders built for it.
/// Which of the scores equal to a row's cut are pruned first. The authors' `row` masks (block
/// step, uniform, OWL: a stable ascending sort) prune the earlier columns; their `neuron` masks
/// (NeuroAL's row step and the prune after it: a stable descending sort that keeps the highest)
/// the later ones. Ties are common under magnitude on half-precision weights (65,536 values),
/// and zero scores tie wherever an input channel stays at zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ties {
    EarlierFirst,
    LaterFirst,
}

/// The shaders' side of one opened GPU: the wgpu device and queue burn's runtime was opened on
/// (the shaders run on its own buffers), the pipelines built for it, and the row selection the
/// shaders that select rows run (`neuroal tune` and `bench --prune-rows` switch it to time
/// each). Made once by `device::select`, held by the [`crate::gpu::context::Gpu`].
pub struct Shaders {
    device: wgpu::Device,
    queue: wgpu::Queue,
    /// Keyed by shader and selection.
    pipelines: Mutex<HashMap<(&'static str, Select), wgpu::ComputePipeline>>,
    /// The selection in one word, so a reader never sees half a switch: its copies, and the
    /// two-level walk as the top bit.
    select: AtomicU32,
}

#[derive(Clone, Copy)]
struct Shader {
    /// The pipeline cache's key: the file, and the weight type where a shader has variants.
    name: &'static str,
    source: &'static str,
    /// What fills `{{ elem }}`: the element type of the buffers a shader reads in the compute
    /// dtype (f32 or f16; f16 also fills `{{ enable }}` with WGSL's `enable f16;`).
    elem: &'static str,
}

macro_rules! shader {
    ($file:literal) => {
        Shader { name: $file, source: include_str!(concat!("../../shaders/", $file)), elem: "f32" }
    };
    ($file:literal, $elem:literal) => {
        Shader {
            name: concat!($file, " (", $elem, ")"),
            source: include_str!(concat!("../../shaders/", $file)),
            elem: $elem,
        }
    };
}

const SELECT_LOWEST: Shader = shader!("select_lowest.wgsl");
const INPUT_STATS: Shader = shader!("input_stats.wgsl", "f32");
const INPUT_STATS_F16: Shader = shader!("input_stats.wgsl", "f16");
const SCORE: Shader = shader!("score.wgsl");
const APPLY_MASK: Shader = shader!("apply_mask.wgsl");
const ALIGNMENT: Shader = shader!("alignment.wgsl");
/// The per-row selection `select_lowest.wgsl` and `prune_rows.wgsl` share (WGSL has no
/// includes: its text goes where they write `{{ row_select }}`).
const ROW_SELECT: &str = include_str!("../../shaders/row_select.wgsl");
const PRUNE_ROWS: Shader = shader!("prune_rows.wgsl", "f32");
const PRUNE_ROWS_F16: Shader = shader!("prune_rows.wgsl", "f16");

/// Every shader wgpu may be given: its name, its text with the template fields filled in, and
/// whether it reads f16 buffers (then wgpu needs the adapter's shader f16); those that include
/// the row selection once per [`Select`]. For the test that has naga validate each one and
/// translate it for every graphics API.
pub fn shader_texts() -> Vec<(String, String, bool)> {
    let mut texts = Vec::new();
    for s in [SELECT_LOWEST, INPUT_STATS, INPUT_STATS_F16, SCORE, APPLY_MASK, ALIGNMENT, PRUNE_ROWS, PRUNE_ROWS_F16] {
        let f16 = s.elem == "f16";
        texts.push((s.name.to_string(), s.text_with(Select::DEFAULT), f16));
        if s.selects() {
            for select in Select::all().into_iter().filter(|&v| v != Select::DEFAULT) {
                texts.push((
                    format!("{} [{}-{}]", s.name, select.walk.name(), select.copies),
                    s.text_with(select),
                    f16,
                ));
            }
        }
    }
    texts
}

/// How `row_select.wgsl` finds each radix digit's bin: one invocation walking up to 256 bins
/// (the default), or 16 invocations summing 16 bins each first, so that the walk takes at
/// most 32 steps for one more barrier.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Walk {
    Serial,
    TwoLevel,
}

impl Walk {
    pub const ALL: [Walk; 2] = [Walk::Serial, Walk::TwoLevel];

    pub fn name(self) -> &'static str {
        match self {
            Walk::Serial => "serial",
            Walk::TwoLevel => "two-level",
        }
    }

    pub fn named(name: &str) -> Option<Walk> {
        Walk::ALL.into_iter().find(|w| w.name() == name)
    }
}

/// How `row_select.wgsl` runs: its digit [`Walk`], and how many copies of the first digit's
/// histogram its invocations count into (the first digit sees every key of a row, and the
/// scores' few exponents crowd its counts into a few bins, where a GPU serializes the atomic
/// adds of one bin). Every choice gives the same masks (tested); which is fastest is a question
/// for each GPU (the emulator runs atomics and barriers as loops on the CPU), so `neuroal tune`
/// times them all and keeps the fastest for the adapter, and `NEUROAL_SELECT_WALK` and
/// `NEUROAL_SELECT_COPIES` fix either part. One per adapter, not per dtype: the selection counts
/// the f32 bits of the scores, whatever the weights' dtype.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Select {
    pub walk: Walk,
    pub copies: u32,
}

impl Select {
    pub const DEFAULT: Select = Select { walk: Walk::Serial, copies: 1 };
    /// The histogram copies there may be: 8 take 8 KiB of the 16 KiB of workgroup memory every
    /// wgpu backend offers.
    pub const COPIES: [u32; 4] = [1, 2, 4, 8];

    /// Every walk with every number of copies.
    pub fn all() -> Vec<Select> {
        Walk::ALL
            .into_iter()
            .flat_map(|walk| Select::COPIES.into_iter().map(move |copies| Select { walk, copies }))
            .collect()
    }

    /// The copies `value` names, if it is one of [`Select::COPIES`].
    pub fn copies_named(value: &str) -> Option<u32> {
        value.parse::<u32>().ok().filter(|c| Select::COPIES.contains(c))
    }
}

impl std::fmt::Display for Select {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = if self.copies == 1 { "" } else { "s" };
        write!(f, "{} walk, {} histogram{s}", self.walk.name(), self.copies)
    }
}

/// The variables that fix the [`Select`]'s parts.
pub const WALK_VAR: &str = "NEUROAL_SELECT_WALK";
pub const COPIES_VAR: &str = "NEUROAL_SELECT_COPIES";

const TWO_LEVEL_BIT: u32 = 1 << 31;

/// The selection when a GPU is opened: each part from its variable (a bad value is one line),
/// else from what `neuroal tune` kept for the adapter (`tuned`), else the default; with, for
/// the device line, where it came from (nothing for the default).
pub fn choose_select(tuned: Option<Select>) -> Result<(Select, Option<String>), String> {
    let (walk_var, copies_var) = (variable(WALK_VAR), variable(COPIES_VAR));
    let base = tuned.unwrap_or(Select::DEFAULT);
    let walk = match walk_var.as_str() {
        "" => base.walk,
        name => Walk::named(name).ok_or_else(|| format!("{WALK_VAR}={name}: expected serial or two-level"))?,
    };
    let copies = match copies_var.as_str() {
        "" => base.copies,
        value => Select::copies_named(value).ok_or_else(|| format!("{COPIES_VAR}={value}: expected 1, 2, 4 or 8"))?,
    };
    let chosen = Select { walk, copies };
    let mut sources = Vec::new();
    if tuned.is_some() && (walk_var.is_empty() || copies_var.is_empty()) {
        sources.push("tuned".to_string());
    }
    for (name, value) in [(WALK_VAR, &walk_var), (COPIES_VAR, &copies_var)] {
        if !value.is_empty() {
            sources.push(format!("{name}={value}"));
        }
    }
    Ok((chosen, (!sources.is_empty()).then(|| format!("select {chosen} ({})", sources.join(", ")))))
}

/// A variable's value, trimmed; empty where it is unset.
fn variable(name: &str) -> String {
    std::env::var(name).unwrap_or_default().trim().to_string()
}

/// The variants a timing may switch to: all of them, but for a part a variable fixed when the
/// GPU was opened (`chosen`), only that.
pub fn selects_left_open(chosen: Select) -> Vec<Select> {
    let (walk_open, copies_open) = (variable(WALK_VAR).is_empty(), variable(COPIES_VAR).is_empty());
    Select::all()
        .into_iter()
        .filter(|v| (walk_open || v.walk == chosen.walk) && (copies_open || v.copies == chosen.copies))
        .collect()
}

fn select_word(select: Select) -> u32 {
    let walk = if select.walk == Walk::TwoLevel { TWO_LEVEL_BIT } else { 0 };
    walk | select.copies
}

impl Shaders {
    /// The shaders of the GPU whose `device` and `queue` burn's runtime was opened on, running
    /// the row selection `select`.
    pub fn new(device: wgpu::Device, queue: wgpu::Queue, select: Select) -> Shaders {
        let pipelines = Mutex::new(HashMap::new());
        Shaders { device, queue, pipelines, select: AtomicU32::new(select_word(select)) }
    }

    /// Switches the selection of the shaders launched from now on (`neuroal tune` and `bench
    /// --prune-rows` time each).
    pub fn set_select(&self, select: Select) {
        self.select.store(select_word(select), Ordering::Relaxed);
    }

    /// The selection the shaders run now.
    pub fn select(&self) -> Select {
        let word = self.select.load(Ordering::Relaxed);
        let walk = if word & TWO_LEVEL_BIT != 0 { Walk::TwoLevel } else { Walk::Serial };
        Select { walk, copies: word & !TWO_LEVEL_BIT }
    }
}

impl Shader {
    /// Whether the shader includes the row selection (and so has a text per [`Select`]).
    fn selects(self) -> bool {
        self.source.contains("{{ row_select }}")
    }

    fn text_with(self, select: Select) -> String {
        let enable = if self.elem == "f16" { "enable f16;" } else { "" };
        self.source
            .replace("{{ row_select }}", ROW_SELECT)
            .replace("{{ two_level_walk }}", if select.walk == Walk::TwoLevel { "true" } else { "false" })
            .replace("{{ hist_copies }}", &select.copies.to_string())
            .replace("{{ hist_len }}", &(256 * select.copies).to_string())
            .replace("{{ workgroup_size }}", &WORKGROUP.to_string())
            .replace("{{ elem }}", self.elem)
            .replace("{{ enable }}", enable)
    }

    fn pipeline(self, shared: &Shaders) -> wgpu::ComputePipeline {
        let mut cache = shared.pipelines.lock().unwrap_or_else(|e| e.into_inner());
        // Shaders without the selection have one text.
        let select = if self.selects() { shared.select() } else { Select::DEFAULT };
        cache
            .entry((self.name, select))
            .or_insert_with(|| {
                let module = shared.device.create_shader_module(wgpu::ShaderModuleDescriptor {
                    label: Some(self.name),
                    source: wgpu::ShaderSource::Wgsl(self.text_with(select).into()),
                });
                shared.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                    label: Some(self.name),
                    layout: None,
                    module: &module,
                    entry_point: Some("main"),
                    compilation_options: Default::default(),
                    cache: None,
                })
            })
            .clone()
    }
}

/// The tensor's buffer on burn's runtime, contiguous (what the shaders index).
fn cube<const D: usize>(t: Tensor<D>) -> CubeTensor {
    burn::backend::wgpu::into_contiguous(cube_strided(t))
}

/// The tensor on burn's runtime as it is laid out (a transposed view stays one), for kernels
/// that read strides, such as the matrix products of `gpu_matmul`.
#[cfg(not(feature = "fusion"))]
pub(crate) fn cube_strided<const D: usize>(t: Tensor<D>) -> CubeTensor {
    t.try_into_primitive::<Wgpu>().expect("a wgpu tensor")
}

/// A kernel's output as a burn tensor.
#[cfg(not(feature = "fusion"))]
pub(crate) fn from_cube<const D: usize>(t: CubeTensor) -> Tensor<D> {
    Tensor::from_primitive::<Wgpu>(t)
}

/// Under fusion a tensor may still be a queued expression: resolving it runs the fused work
/// queued before it, so the shader reads finished values (and is a fusion boundary).
#[cfg(feature = "fusion")]
pub(crate) fn cube_strided<const D: usize>(t: Tensor<D>) -> CubeTensor {
    use burn::backend::wgpu::CubeBackend;
    let t = t.try_into_primitive::<Wgpu>().expect("a wgpu tensor");
    let client = t.client.clone();
    client.resolve_tensor_float::<CubeBackend>(t)
}

/// A shader's output handed to fusion as an initialized tensor, as burn does for uploaded data.
#[cfg(feature = "fusion")]
pub(crate) fn from_cube<const D: usize>(t: CubeTensor) -> Tensor<D> {
    use burn::backend::fusion::{NoOp, get_client, stream::StreamId};
    use burn::backend::ir::{BackendIr, InitOperationIr, OperationIr, OperationOutput};
    use burn::backend::wgpu::CubeBackend;
    let client = get_client::<CubeBackend>(&t.device);
    let (shape, dtype) = (t.meta.shape().clone(), t.dtype);
    let handle = CubeBackend::float_tensor_handle(t);
    let desc = InitOperationIr::create(shape, dtype, || client.register_tensor_handle(handle));
    let out = client.register(StreamId::current(), OperationIr::Init(desc), NoOp::<CubeBackend>::new()).output();
    Tensor::from_primitive::<Wgpu>(out)
}

/// A new f32 buffer of `shape` on `t`'s runtime.
fn empty_like(t: &CubeTensor, shape: Shape) -> CubeTensor {
    empty_as(t, shape, DType::F32)
}

/// A new buffer of `shape` in `dtype` on `t`'s runtime (a kernel's output).
pub(crate) fn empty_as(t: &CubeTensor, shape: Shape, dtype: DType) -> CubeTensor {
    let handle = t.client.empty(shape.num_elements() * dtype.size());
    CubeTensor::new_contiguous(t.client.clone(), t.device.clone(), shape, handle, dtype)
}

/// Each row's count `k` as u32s on `t`'s runtime, for the selection shaders.
fn row_counts(t: &CubeTensor, k: &[usize]) -> CubeTensor {
    let k: Vec<u32> = k.iter().map(|&k| k as u32).collect();
    let handle = t.client.create_from_slice(bytemuck::cast_slice(&k));
    CubeTensor::new_contiguous(t.client.clone(), t.device.clone(), Shape::new([k.len()]), handle, DType::U32)
}

/// Workgroups for `groups` units of work, folded into two dimensions past the per-dimension cap.
fn grid(groups: u32) -> (u32, u32) {
    let groups = groups.max(1);
    let x = groups.min(MAX_GROUPS);
    (x, groups.div_ceil(x))
}

/// Runs `shader` over `buffers` (bound in order, then `info` last) with `groups` workgroups.
///
/// burn's pending work is flushed to the shared queue first, so the shader sees every write
/// queued before it; work burn queues afterwards is submitted after it, and wgpu orders
/// submissions on one queue. The buffers stay claimed (not reused by burn's allocator) until
/// the submission is recorded, and wgpu keeps them alive until it completes.
fn launch(shared: &Shaders, shader: Shader, groups: (u32, u32), buffers: &[&CubeTensor], info: &[u32]) {
    let client = &buffers[0].client;
    let resources: Vec<_> = buffers
        .iter()
        .map(|t| {
            client
                .get_resource::<WgpuServer<AutoCompiler>>(t.handle.clone())
                .expect("a wgpu tensor's buffer is reachable on its own runtime")
        })
        .collect();
    let info = shared.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: Some("info"),
        contents: bytemuck::cast_slice(info),
        usage: wgpu::BufferUsages::STORAGE,
    });
    let pipeline = shader.pipeline(shared);
    let mut entries: Vec<wgpu::BindGroupEntry> = resources
        .iter()
        .enumerate()
        .map(|(i, r)| wgpu::BindGroupEntry { binding: i as u32, resource: r.resource().as_wgpu_bind_resource() })
        .collect();
    entries.push(wgpu::BindGroupEntry { binding: resources.len() as u32, resource: info.as_entire_binding() });
    let bind_group = shared.device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: Some(shader.name),
        layout: &pipeline.get_bind_group_layout(0),
        entries: &entries,
    });
    client.flush().expect("burn's queued work reaches the device");
    let mut encoder =
        shared.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some(shader.name) });
    {
        let mut pass = encoder
            .begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some(shader.name), timestamp_writes: None });
        pass.set_pipeline(&pipeline);
        pass.set_bind_group(0, &bind_group, &[]);
        pass.dispatch_workgroups(groups.0, groups.1, 1);
    }
    shared.queue.submit([encoder.finish()]);
}

/// An f32 tensor on its way to the host. burn's reads copy lazily, when the bytes are first
/// touched, so a copy queues behind everything submitted before that moment. This one is
/// queued and submitted when it starts, right behind the work that makes the tensor: the host
/// can queue more work (the next block's forward) and wait for the copy while the device runs it.
pub struct Reading {
    copy: Copy,
    len: usize,
}

type Copied = Result<Vec<cubecl::bytes::Bytes>, cubecl::server::ServerError>;

enum Copy {
    Pending(std::pin::Pin<Box<dyn std::future::Future<Output = Copied> + Send>>),
    Done(Copied),
}

/// Starts reading `t` (cast to f32 first) back to the host.
pub fn start_read(t: Tensor<1>) -> Reading {
    use std::future::Future;
    use std::task::{Context, Poll, Waker};
    let t = cube(crate::gpu::tensor::to_dtype(t, DType::F32));
    let len = t.meta.shape().num_elements();
    let descriptor = cubecl::server::CopyDescriptor::new(
        t.handle.binding(),
        t.meta.shape().clone(),
        t.meta.strides().clone(),
        DType::F32.size(),
    );
    let client = t.client.clone();
    let mut copy = Box::pin(async move { client.read_tensor_async(vec![descriptor]).await });
    // The first poll queues and submits the copy (cubecl does that eagerly when the read is
    // made); what is left is waiting for it.
    let copy = match copy.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(copied) => Copy::Done(copied),
        Poll::Pending => Copy::Pending(copy),
    };
    Reading { copy, len }
}

impl Reading {
    /// Waits for the copy; the values, or the device's error in words.
    pub fn finish(self) -> Result<Vec<f32>, String> {
        let copied = match self.copy {
            Copy::Pending(copy) => pollster::block_on(copy),
            Copy::Done(copied) => copied,
        };
        let mut bytes = copied.map_err(|e| e.to_string())?;
        if bytes.len() != 1 {
            return Err(format!("{} buffers came back for one", bytes.len()));
        }
        let bytes = bytes.remove(0);
        if bytes.len() != self.len * 4 {
            return Err(format!("{} bytes came back for {} values", bytes.len(), self.len));
        }
        Ok(bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
    }
}

impl Shaders {
    /// `select_lowest.wgsl`: mask [rows, cols] of the k[r] lowest scores per row, equal ones in the
    /// order `ties` gives.
    pub fn select_lowest(&self, scores: Tensor<2>, k: &[usize], ties: Ties) -> Tensor<2> {
        let [rows, cols] = scores.dims();
        let scores = cube(scores);
        let kth = row_counts(&scores, k);
        let mask = empty_like(&scores, Shape::new([rows, cols]));
        launch(
            self,
            SELECT_LOWEST,
            grid(rows as u32),
            &[&scores, &kth, &mask],
            &[rows as u32, cols as u32, later_first(ties)],
        );
        from_cube(mask)
    }

    /// `prune_rows.wgsl`: w [rows, cols] with the k[r] lowest scores of each row r zeroed, and, when
    /// `masked`, the mask of those (1.0; f32), where a score is |w| or, given the scaler,
    /// |w|·√scaler[col]: what [`Shaders::score`], [`Shaders::select_lowest`] and [`Shaders::apply_mask`] give in three launches,
    /// in one, without a score matrix, reading and writing w in its own dtype (f32, or f16 where the
    /// adapter has shader f16). Equal scores in the order `ties` gives. `None` for another dtype.
    pub fn prune_rows(
        &self,
        w: Tensor<2>,
        scaler: Option<Tensor<1>>,
        k: &[usize],
        masked: bool,
        ties: Ties,
    ) -> Option<(Tensor<2>, Option<Tensor<2>>)> {
        let shader = match w.dtype() {
            DType::F32 => PRUNE_ROWS,
            DType::F16 => PRUNE_ROWS_F16,
            _ => return None,
        };
        let [rows, cols] = w.dims();
        let w = cube(w);
        let use_scaler = scaler.is_some() as u32;
        let scaler = match scaler {
            Some(s) => cube(crate::gpu::tensor::to_dtype(s, DType::F32)),
            None => empty_like(&w, Shape::new([1])),
        };
        let kth = row_counts(&w, k);
        let out = empty_as(&w, Shape::new([rows, cols]), w.dtype);
        // Without a mask to write, the binding takes a one-value placeholder.
        let mask = empty_like(&w, Shape::new(if masked { [rows, cols] } else { [1, 1] }));
        launch(
            self,
            shader,
            grid(rows as u32),
            &[&w, &scaler, &kth, &out, &mask],
            &[rows as u32, cols as u32, later_first(ties), use_scaler, masked as u32],
        );
        Some((from_cube(out), masked.then(|| from_cube(mask))))
    }

    /// `input_stats.wgsl`: the accumulators plus the per-channel sum of squares and sum of
    /// x [n, cols], summed per slice of rows on the device, then over the slices.
    pub fn input_stats(&self, x: Tensor<2>, sumsq: Tensor<1>, sum: Tensor<1>) -> (Tensor<1>, Tensor<1>) {
        let [n, cols] = x.dims();
        // x as computed (f32 or f16: read as stored, summed in f32), else an f32 copy.
        let (shader, x) = match x.dtype() {
            DType::F16 => (INPUT_STATS_F16, x),
            _ => (INPUT_STATS, crate::gpu::tensor::to_dtype(x, DType::F32)),
        };
        let x = cube(x);
        // Short slices fill the GPU; at most MAX_GROUPS of them.
        let rows_per_slice = STATS_ROWS.max(n.div_ceil(MAX_GROUPS as usize));
        let slices = n.div_ceil(rows_per_slice).max(1);
        let (sq_part, s_part) =
            (empty_like(&x, Shape::new([slices, cols])), empty_like(&x, Shape::new([slices, cols])));
        let groups = (cols as u32).div_ceil(WORKGROUP);
        launch(
            self,
            shader,
            (groups, slices as u32),
            &[&x, &sq_part, &s_part],
            &[n as u32, cols as u32, rows_per_slice as u32],
        );
        let total = |part: CubeTensor| from_cube::<2>(part).sum_dim(0).reshape([cols]);
        (sumsq + total(sq_part), sum + total(s_part))
    }

    /// `score.wgsl`: |w|, or |w|·sqrt(scaler[col]) when a scaler is given.
    pub fn score(&self, w: Tensor<2>, scaler: Option<Tensor<1>>) -> Tensor<2> {
        let [rows, cols] = w.dims();
        let w = cube(w);
        let use_scaler = scaler.is_some() as u32;
        let scaler = match scaler {
            Some(s) => cube(s),
            None => empty_like(&w, Shape::new([1])),
        };
        let out = empty_like(&w, Shape::new([rows, cols]));
        let total = (rows * cols) as u32;
        launch(self, SCORE, grid(total.div_ceil(WORKGROUP)), &[&w, &scaler, &out], &[total, cols as u32, use_scaler]);
        from_cube(out)
    }

    /// `apply_mask.wgsl`: w with every masked entry set to zero.
    pub fn apply_mask(&self, w: Tensor<2>, mask: Tensor<2>) -> Tensor<2> {
        let [rows, cols] = w.dims();
        let (w, mask) = (cube(w), cube(mask));
        let out = empty_like(&w, Shape::new([rows, cols]));
        let total = (rows * cols) as u32;
        launch(self, APPLY_MASK, grid(total.div_ceil(WORKGROUP)), &[&w, &mask, &out], &[total]);
        from_cube(out)
    }

    /// `alignment.wgsl`: (‖a/Σa − b/Σb‖₂ / len, a − b) for dense and sparse input norms.
    pub fn alignment(&self, dense: Tensor<1>, sparse: Tensor<1>) -> (Tensor<1>, Tensor<1>) {
        let [n] = dense.dims();
        let (a, b) = (cube(dense), cube(sparse));
        let d = empty_like(&a, Shape::new([n]));
        let out = empty_like(&a, Shape::new([1]));
        launch(self, ALIGNMENT, (1, 1), &[&a, &b, &d, &out], &[n as u32]);
        (from_cube(out), from_cube(d))
    }
}

/// The selection's tie order as `row_select.wgsl` reads it (info[2]).
fn later_first(ties: Ties) -> u32 {
    u32::from(ties == Ties::LaterFirst)
}

/// A reader of what the runtime's memory pools hold on the GPU `device`, in bytes: in use,
/// padding, and pages kept for reuse (what the driver has handed to burn), from cubecl's memory
/// report. The client is taken once, so a reading allocates nothing on the device.
pub fn reserved_bytes(device: &burn::tensor::Device) -> impl Fn() -> u64 + Send + 'static {
    let client = client(device);
    move || client.memory_report(cubecl::MemoryScope::Device).usage().bytes_reserved
}

/// Returns the pools' unused pages on the GPU `device` to the driver, so that a later peak of
/// [`reserved_bytes`] is that later work's own.
pub fn release_unused(device: &burn::tensor::Device) -> Result<(), String> {
    client(device).memory_cleanup().map_err(|e| format!("{e:?}"))
}

/// The shader compiler burn's runtime chose for `device`: `wgpu<spirv>` (Vulkan), `wgpu<msl>`
/// (Metal) or `wgpu<wgsl>` (elsewhere, and where the adapter lacks what the native ones need).
pub fn compiler(device: &burn::tensor::Device) -> &'static str {
    client(device).name()
}

/// The largest single buffer burn's runtime can allocate on the GPU `device`, in bytes: the
/// smaller of the adapter's buffer and storage-binding limits, as the runtime opened it (on
/// Vulkan with 64-bit indexing the binding limit is lifted).
pub fn max_allocation(device: &burn::tensor::Device) -> u64 {
    client(device).properties().memory.max_page_size
}

/// The GPU's memory as the native compilers' runtimes read it (SPIR-V on Vulkan: the largest
/// device-local heap; MSL on Metal: the recommended working set), in bytes; `None` under the
/// WGSL compiler (DX12, OpenGL, a `--no-default-features` build), which reads none.
pub fn capacity(device: &burn::tensor::Device) -> Option<u64> {
    client(device).properties().memory.max_memory()
}

/// Whether the GPU `device` multiplies f16 tiles with cooperative (simdgroup) matrices: what
/// the tensor-core matrix-product and flash-attention kernels need.
pub fn has_f16_cooperative_matrices(device: &burn::tensor::Device) -> bool {
    use cubecl::ir::{ElemType, FloatKind};
    let f16 = ElemType::Float(FloatKind::F16);
    client(device).properties().features.matmul.cmma.iter().any(|c| c.a_type == f16 && c.b_type == f16)
}

/// The (m, n, k) tile shapes in which the GPU `device` multiplies f16 by f16 into f32 with
/// cooperative matrices.
pub fn f16_cooperative_tiles(device: &burn::tensor::Device) -> Vec<(u32, u32, u32)> {
    use cubecl::ir::{ElemType, FloatKind};
    let (f16, f32) = (ElemType::Float(FloatKind::F16), ElemType::Float(FloatKind::F32));
    client(device)
        .properties()
        .features
        .matmul
        .cmma
        .iter()
        .filter(|c| c.a_type == f16 && c.b_type == f16 && c.cd_type == f32)
        .map(|c| (c.m, c.n, c.k))
        .collect()
}

/// The workgroup (shared) memory one cube may use on the GPU `device`, in bytes.
pub fn workgroup_memory(device: &burn::tensor::Device) -> usize {
    client(device).properties().hardware.max_shared_memory_size
}

/// burn's compute client for the GPU `device` (taken from a one-element tensor on it).
fn client(device: &burn::tensor::Device) -> cubecl::client::Client {
    cube(Tensor::<1>::zeros([1], device)).client
}
