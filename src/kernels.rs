//! Launches of the hand-written WGSL shaders in `shaders/` on burn-wgpu tensors (the template
//! API: the source is WGSL text, run by wgpu on Vulkan, Metal or DX12). Each shader has a twin
//! in burn tensor ops next to its caller, used on the CPU backends and in the tests.

use burn::backend::wgpu::{CubeTensor, KernelSource, SourceKernel, SourceTemplate};
use burn::backend::{DispatchDevice, Wgpu};
use burn::tensor::{DType, Shape, Tensor};
use cubecl::prelude::KernelId;
use cubecl::server::KernelArguments;
use cubecl::{CubeCount, CubeDim};

const WORKGROUP: u32 = 256;
/// Largest workgroup count per dispatch dimension that every wgpu backend accepts.
const MAX_GROUPS: u32 = 65_535;

/// Whether a tensor lives on a wgpu device (and so takes the WGSL path).
pub fn is_wgpu<const D: usize>(t: &Tensor<D>) -> bool {
    matches!(t.device().as_dispatch(), DispatchDevice::Cube(d) if matches!(d, cubecl::Device::Wgpu(_)))
}

macro_rules! wgsl_kernel {
    ($name:ident, $file:literal) => {
        struct $name;
        impl KernelSource for $name {
            fn source(&self) -> SourceTemplate {
                SourceTemplate::new(include_str!(concat!("../shaders/", $file)))
                    .register("workgroup_size", WORKGROUP.to_string())
            }
            fn id(&self) -> KernelId {
                KernelId::new::<Self>()
            }
            fn lang(&self) -> &'static str {
                "wgsl"
            }
        }
    };
}

wgsl_kernel!(SelectLowest, "select_lowest.wgsl");
wgsl_kernel!(InputStats, "input_stats.wgsl");
wgsl_kernel!(Score, "score.wgsl");
wgsl_kernel!(ApplyMask, "apply_mask.wgsl");
wgsl_kernel!(Alignment, "alignment.wgsl");

fn cube<const D: usize>(t: Tensor<D>) -> CubeTensor {
    let t = t.try_into_primitive::<Wgpu>().expect("a wgpu tensor");
    burn::backend::wgpu::into_contiguous(t)
}

fn from_cube<const D: usize>(t: CubeTensor) -> Tensor<D> {
    Tensor::from_primitive::<Wgpu>(t)
}

fn empty_like(t: &CubeTensor, shape: Shape) -> CubeTensor {
    let handle = t.client.empty(shape.num_elements() * DType::F32.size());
    CubeTensor::new_contiguous(t.client.clone(), t.device.clone(), shape, handle, DType::F32)
}

/// Workgroups for `groups` units of work, folded into two dimensions past the per-dimension cap.
fn grid(groups: u32) -> CubeCount {
    let groups = groups.max(1);
    let x = groups.min(MAX_GROUPS);
    CubeCount::Static(x, groups.div_ceil(x), 1)
}

fn launch(kernel: impl KernelSource, on: &CubeTensor, count: CubeCount, buffers: Vec<&CubeTensor>, info: &[u32]) {
    let info = on.client.create_from_slice(bytemuck::cast_slice(info));
    let mut bindings: Vec<_> = buffers.iter().map(|t| t.handle.clone().binding()).collect();
    bindings.push(info.binding());
    on.client.launch(
        Box::new(SourceKernel::new(kernel, CubeDim::new_1d(WORKGROUP))),
        count,
        KernelArguments::new().with_buffers(bindings),
    );
}

/// `select_lowest.wgsl`: mask [rows, cols] of the k[r] lowest scores per row.
pub fn select_lowest(scores: Tensor<2>, k: &[usize]) -> Tensor<2> {
    let [rows, cols] = scores.dims();
    let scores = cube(scores);
    let k: Vec<u32> = k.iter().map(|&k| k as u32).collect();
    let kth = scores.client.create_from_slice(bytemuck::cast_slice(&k));
    let kth = CubeTensor::new_contiguous(
        scores.client.clone(),
        scores.device.clone(),
        Shape::new([rows]),
        kth,
        DType::U32,
    );
    let mask = empty_like(&scores, Shape::new([rows, cols]));
    launch(SelectLowest, &scores, grid(rows as u32), vec![&scores, &kth, &mask], &[rows as u32, cols as u32]);
    from_cube(mask)
}

/// `input_stats.wgsl`: the accumulators plus the per-channel sum of squares and sum of
/// x [n, cols].
pub fn input_stats(x: Tensor<2>, sumsq: Tensor<1>, sum: Tensor<1>) -> (Tensor<1>, Tensor<1>) {
    let [n, cols] = x.dims();
    let (x, sumsq, sum) = (cube(x), cube(sumsq), cube(sum));
    let (sumsq_out, sum_out) = (empty_like(&x, Shape::new([cols])), empty_like(&x, Shape::new([cols])));
    let groups = (cols as u32).div_ceil(WORKGROUP);
    launch(
        InputStats,
        &x,
        CubeCount::Static(groups, 1, 1),
        vec![&x, &sumsq, &sum, &sumsq_out, &sum_out],
        &[n as u32, cols as u32],
    );
    (from_cube(sumsq_out), from_cube(sum_out))
}

/// `score.wgsl`: |w|, or |w|·sqrt(scaler[col]) when a scaler is given.
pub fn score(w: Tensor<2>, scaler: Option<Tensor<1>>) -> Tensor<2> {
    let [rows, cols] = w.dims();
    let w = cube(w);
    let use_scaler = scaler.is_some() as u32;
    let scaler = match scaler {
        Some(s) => cube(s),
        None => empty_like(&w, Shape::new([1])),
    };
    let out = empty_like(&w, Shape::new([rows, cols]));
    let total = (rows * cols) as u32;
    launch(Score, &w, grid(total.div_ceil(WORKGROUP)), vec![&w, &scaler, &out], &[total, cols as u32, use_scaler]);
    from_cube(out)
}

/// `apply_mask.wgsl`: w with every masked entry set to zero.
pub fn apply_mask(w: Tensor<2>, mask: Tensor<2>) -> Tensor<2> {
    let [rows, cols] = w.dims();
    let (w, mask) = (cube(w), cube(mask));
    let out = empty_like(&w, Shape::new([rows, cols]));
    let total = (rows * cols) as u32;
    launch(ApplyMask, &w, grid(total.div_ceil(WORKGROUP)), vec![&w, &mask, &out], &[total]);
    from_cube(out)
}

/// `alignment.wgsl`: (‖a/Σa − b/Σb‖₂ / len, a − b) for dense and sparse input norms.
pub fn alignment(dense: Tensor<1>, sparse: Tensor<1>) -> (Tensor<1>, Tensor<1>) {
    let [n] = dense.dims();
    let (a, b) = (cube(dense), cube(sparse));
    let d = empty_like(&a, Shape::new([n]));
    let out = empty_like(&a, Shape::new([1]));
    launch(Alignment, &a, CubeCount::Static(1, 1, 1), vec![&a, &b, &d, &out], &[n as u32]);
    (from_cube(out), from_cube(d))
}
