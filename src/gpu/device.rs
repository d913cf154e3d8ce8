//! `--device auto|gpu|cpu|ndarray`.
//!
//! `auto` takes a real GPU (discrete, integrated or virtual) when wgpu reports one and the
//! CPU (burn-flex) otherwise: a Vulkan CPU emulator such as lavapipe is slower than flex, so
//! `auto` never picks it, while `gpu` accepts it (the test suite reaches the GPU path that way).

use burn::tensor::wgpu::{WgpuBackend, wgpu};
use burn::tensor::{Device, DeviceKind};

use std::sync::Arc;

use crate::gpu::context::Gpu;
use crate::gpu::kernels::Shaders;
use crate::io::error::Result;
use crate::io::named::Named;
use crate::{bail, err};

/// `--device`: which backend computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Choice {
    Auto,
    Gpu,
    Cpu,
    Ndarray,
}

impl Named for Choice {
    const ALL: &'static [Choice] = &[Choice::Auto, Choice::Gpu, Choice::Cpu, Choice::Ndarray];

    fn name(self) -> &'static str {
        match self {
            Choice::Auto => "auto",
            Choice::Gpu => "gpu",
            Choice::Cpu => "cpu",
            Choice::Ndarray => "ndarray",
        }
    }
}

impl std::str::FromStr for Choice {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Choice::named(s).ok_or_else(|| format!("unknown device \"{s}\" (expected auto, gpu, cpu or ndarray)"))
    }
}

/// A device ready for tensors, with the words that describe it to the user.
#[derive(Clone, Debug)]
pub struct Selected {
    pub device: Device,
    pub description: String,
    pub is_gpu: bool,
    /// The largest single buffer burn's runtime can allocate, in bytes (GPUs only).
    pub max_buffer: Option<u64>,
    /// Whether shaders can compute in f16 (GPUs only).
    pub shader_f16: bool,
    /// The adapter's key for the kernels `neuroal tune` keeps (GPUs only).
    pub adapter_key: Option<String>,
    /// The GPU's kernels (GPUs only), which models on this device run.
    pub gpu: Option<Arc<Gpu>>,
}

/// `--dtype`: what weights, activations and matrix products are computed in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ComputeDtype {
    /// f16 on a GPU whose shaders support it, f32 elsewhere.
    Auto,
    F32,
    F16,
    Bf16,
}

impl Selected {
    /// The dtype `--dtype` resolves to on this device, or one line saying why it cannot.
    pub fn compute_dtype(&self, asked: ComputeDtype) -> Result<burn::tensor::DType> {
        use burn::tensor::DType;
        let ndarray = self.description.starts_with("ndarray");
        refuse_dtype(ndarray, self.is_gpu, asked)?;
        match asked {
            ComputeDtype::Auto if self.is_gpu && self.shader_f16 => Ok(DType::F16),
            ComputeDtype::Auto | ComputeDtype::F32 => Ok(DType::F32),
            ComputeDtype::F16 if self.is_gpu && !self.shader_f16 => {
                bail!("--dtype f16: the adapter has no shader f16 support (use --dtype f32)")
            }
            ComputeDtype::F16 => Ok(DType::F16),
            ComputeDtype::Bf16 => Ok(DType::BF16),
        }
    }
}

/// The dtypes a device refuses whatever its adapter: ndarray computes in f32 only, and wgpu's
/// shaders have no bf16. Known before any device is opened (`bench` checks them before it
/// writes a synthetic checkpoint).
pub fn refuse_dtype(ndarray: bool, gpu: bool, asked: ComputeDtype) -> Result<()> {
    match asked {
        ComputeDtype::F16 | ComputeDtype::Bf16 if ndarray => {
            bail!("--dtype {} is not supported on ndarray (use --device cpu or gpu)", asked.name())
        }
        ComputeDtype::Bf16 if gpu => {
            bail!("--dtype bf16 is not supported on wgpu, whose shaders have no bf16 (use f16)")
        }
        _ => Ok(()),
    }
}

impl Named for ComputeDtype {
    const ALL: &'static [ComputeDtype] =
        &[ComputeDtype::Auto, ComputeDtype::F32, ComputeDtype::F16, ComputeDtype::Bf16];

    fn name(self) -> &'static str {
        match self {
            ComputeDtype::Auto => "auto",
            ComputeDtype::F32 => "f32",
            ComputeDtype::F16 => "f16",
            ComputeDtype::Bf16 => "bf16",
        }
    }
}

/// A wgpu adapter as the runtime will find it again: its kind and index among adapters of
/// that kind on the same graphics API.
struct Adapter {
    info: wgpu::AdapterInfo,
    shader_f16: bool,
    kind: DeviceKind,
    api: WgpuBackend,
}

fn adapters(apis: &[(wgpu::Backend, WgpuBackend)]) -> Vec<Adapter> {
    let mut found = Vec::new();
    for &(backend, api) in apis {
        let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
            backends: backend.into(),
            ..wgpu::InstanceDescriptor::new_without_display_handle()
        });
        let listed: Vec<(wgpu::AdapterInfo, bool)> = pollster::block_on(instance.enumerate_adapters(backend.into()))
            .iter()
            .map(|a| (a.get_info(), a.features().contains(wgpu::Features::SHADER_F16)))
            .collect();
        let infos: Vec<wgpu::AdapterInfo> = listed.iter().map(|(i, _)| i.clone()).collect();
        for (i, info) in infos.iter().enumerate() {
            let same = infos[..i].iter().filter(|o| o.device_type == info.device_type).count();
            let kind = match info.device_type {
                wgpu::DeviceType::DiscreteGpu => DeviceKind::DiscreteGpu(same),
                wgpu::DeviceType::IntegratedGpu => DeviceKind::IntegratedGpu(same),
                wgpu::DeviceType::VirtualGpu => DeviceKind::VirtualGpu(same),
                wgpu::DeviceType::Cpu => DeviceKind::Cpu,
                wgpu::DeviceType::Other => continue,
            };
            found.push(Adapter { info: info.clone(), shader_f16: listed[i].1, kind, api });
        }
        if !found.is_empty() {
            break;
        }
    }
    found
}

fn rank(kind: &DeviceKind) -> usize {
    match kind {
        DeviceKind::DiscreteGpu(_) => 0,
        DeviceKind::IntegratedGpu(_) => 1,
        DeviceKind::VirtualGpu(_) => 2,
        _ => 3,
    }
}

const NATIVE_APIS: [(wgpu::Backend, WgpuBackend); 3] = [
    (wgpu::Backend::Vulkan, WgpuBackend::Vulkan),
    (wgpu::Backend::Metal, WgpuBackend::Metal),
    (wgpu::Backend::Dx12, WgpuBackend::Dx12),
];

fn open_gpu(allow_cpu_emulation: bool, read_tuned: bool) -> Result<Option<Selected>> {
    let mut all = adapters(&NATIVE_APIS);
    all.sort_by_key(|a| rank(&a.kind));
    let Some(mut best) = all.into_iter().find(|a| allow_cpu_emulation || rank(&a.kind) < 3) else {
        return Ok(None);
    };
    // lavapipe's LLVM crashes compiling cubecl's SPIR-V matrix product, so a CPU emulator is
    // opened through OpenGL, where cubecl writes WGSL.
    // NEUROAL_EMULATOR_VULKAN=1 keeps Vulkan anyway: CI runs the shader tests (which need no
    // matrix product) that way, to check the shaders beside cubecl's SPIR-V kernels.
    let keep_vulkan = std::env::var_os("NEUROAL_EMULATOR_VULKAN").is_some_and(|v| v == "1");
    let spirv = cfg!(all(feature = "vulkan", not(target_os = "macos")));
    if spirv && !keep_vulkan && best.api == WgpuBackend::Vulkan && rank(&best.kind) == 3 {
        match adapters(&[(wgpu::Backend::Gl, WgpuBackend::Gl)]).into_iter().find(|a| rank(&a.kind) == 3) {
            Some(gl) => best = gl,
            None => bail!(
                "--device gpu: the only adapter is the CPU emulator \"{}\", whose Vulkan driver cannot run this build's SPIR-V kernels, and it has no OpenGL driver (install libegl-mesa0, use --device cpu, or build with --no-default-features)",
                best.info.name
            ),
        }
    }
    let (device, setup) = Device::wgpu_options()
        .device_kind(best.kind.clone())
        .graphics_api(best.api)
        .init_with_setup()
        .map_err(|e| err!("cannot open GPU adapter \"{}\": {e}", best.info.name))?;
    let compiler = crate::gpu::kernels::compiler(&device);
    let key = crate::gpu::tuned::adapter_key(&best.info.name, &format!("{:?}", best.info.backend), compiler);
    // What `neuroal tune` kept for this adapter, unless the variables decide everything it
    // could (then not even an unreadable file stops the run).
    let named: Vec<bool> = [
        crate::gpu::matmul::VAR,
        crate::gpu::attention::VAR,
        crate::gpu::fused::VAR,
        crate::gpu::kernels::WALK_VAR,
        crate::gpu::kernels::COPIES_VAR,
    ]
    .iter()
    .map(|v| std::env::var(v).is_ok_and(|v| !v.trim().is_empty()))
    .collect();
    let tuned = if !read_tuned || named.iter().all(|&n| n) {
        crate::gpu::tuned::Tuned::default()
    } else {
        crate::gpu::tuned::read_tuned(&key)?
    };
    // A real GPU that was never tuned: say once per run how to find its fastest kernels (the
    // defaults were measured on one card).
    if rank(&best.kind) < 3 && tuned.path.is_none() && !named.contains(&true) && read_tuned {
        eprintln!(
            "note: `neuroal tune --model DIR` times this GPU's kernels once and keeps the fastest for later runs (docs/gpu-kernels.md)"
        );
    }
    let (matmul, matmul_said) = crate::gpu::matmul::choose(&device, &tuned.matmul, tuned.path.as_deref())?;
    let (attention, attention_said) = crate::gpu::attention::choose(&device, &tuned.attention)?;
    let (fused, fused_said) = crate::gpu::fused::choose(&tuned.fuse)?;
    let (select, select_said) = crate::gpu::kernels::choose_select(tuned.select).map_err(|e| err!("{e}"))?;
    let shaders = Shaders::new(setup.device, setup.queue, select);
    let gpu = Gpu { shaders, matmul, attention, fused };
    let mut description =
        format!("gpu: {} ({:?}, {:?}, {compiler})", best.info.name, best.info.device_type, best.info.backend);
    // The fixed kernels, as their variables name them (the defaults say what they cover).
    let fixed: Vec<String> =
        matmul_said.into_iter().chain(attention_said).chain(fused_said).chain(select_said).collect();
    if !fixed.is_empty() {
        description.push_str(&format!(" [{}]", fixed.join(", ")));
    }
    // The runtime's own limit: the smaller of the buffer and storage-binding limits (lavapipe:
    // 2 GiB and 128 MiB), not the adapter's buffer limit alone.
    let max_buffer = Some(crate::gpu::kernels::max_allocation(&device));
    Ok(Some(Selected {
        device,
        description,
        is_gpu: true,
        max_buffer,
        shader_f16: best.shader_f16,
        adapter_key: Some(key),
        gpu: Some(Arc::new(gpu)),
    }))
}

/// The device `choice` names, with the kernels `neuroal tune` kept for it (if any).
pub fn select(choice: Choice) -> Result<Selected> {
    select_with(choice, true)
}

/// The GPU with the default kernels (or those the variables name), not the ones `neuroal tune`
/// kept: what `tune` measures against.
pub fn select_untuned_gpu() -> Result<Selected> {
    select_with(Choice::Gpu, false)
}

fn select_with(choice: Choice, read_tuned: bool) -> Result<Selected> {
    let cpu = || Selected {
        device: Device::flex(),
        description: "cpu: burn-flex".into(),
        is_gpu: false,
        max_buffer: None,
        shader_f16: false,
        adapter_key: None,
        gpu: None,
    };
    Ok(match choice {
        Choice::Cpu => cpu(),
        #[allow(deprecated)] // users asked for the NdArray fallback by name
        Choice::Ndarray => Selected {
            device: Device::ndarray(),
            description: "ndarray: burn-ndarray".into(),
            is_gpu: false,
            max_buffer: None,
            shader_f16: false,
            adapter_key: None,
            gpu: None,
        },
        Choice::Gpu => match open_gpu(true, read_tuned)? {
            Some(s) => s,
            None => bail!("--device gpu: wgpu found no GPU adapter (Vulkan, Metal or DX12)"),
        },
        Choice::Auto => open_gpu(false, read_tuned)?.unwrap_or_else(cpu),
    })
}
