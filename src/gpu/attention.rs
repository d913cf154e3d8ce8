//! Causal attention on a GPU as one flash kernel (cubek's: scores never stored, f32
//! accumulators) instead of separate product, mask, softmax and product kernels, chosen by
//! `NEUROAL_ATTENTION` or by default where it was measured faster.
//!
//! Burn runs its flash kernels only in an `autotune` build, after timing them against the
//! separate kernels for every new shape; tuning cost more than it saved in the 7B-shaped prune
//! (docs/performance.md). A fixed choice keeps the kernel without the tuning. The separate
//! kernels stay the reference: they compute the scores and softmax in f32, and run wherever the
//! flash kernel declines a shape or the adapter.

use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{DType, Tensor};
use burn_cubecl::kernel::attention::flash_attention;
use cubek::attention::forward::launch::{BlueprintStrategy, Strategy};
use cubek::attention::forward::routines::blackbox_accelerated::BlackboxAcceleratedStrategy;

use crate::io::error::Result;
use crate::{bail, gpu::kernels};

/// The environment variable that names the attention kernel.
pub const VAR: &str = "NEUROAL_ATTENTION";

/// The flash kernel used when `NEUROAL_ATTENTION` is unset, where it was measured: f16
/// computation, heads of at most [`DEFAULT_MAX_HEAD_DIM`], under the SPIR-V compiler on an
/// adapter with f16 cooperative matrices and at least [`DEFAULT_MIN_SHARED`] bytes of workgroup
/// memory. On an H100 (Vulkan) it ran the 0.84 B forward (heads of 64) at 41,814 tokens/s against
/// 31,557 with the separate kernels, and wt2-llama's f16 perplexity (heads of 32) at 82.3060
/// against 82.3059 in f32.
const DEFAULT: &str = "flash-2";
/// Larger heads (or more planes) ask for more workgroup memory than a Vulkan adapter may have:
/// on the H100 `flash-4` with heads of 128 asked for 51,200 bytes and `flash-8` with heads of 64
/// for 57,344, of 49,152, and the run failed at its next read-back (a launch error that the
/// launcher does not report when it is called). [`causal`] now declines such a launch up front
/// ([`flash_workgroup_bytes`]); the default stays where it was timed.
const DEFAULT_MAX_HEAD_DIM: usize = 64;
const DEFAULT_MIN_SHARED: usize = 49_152;

/// What a process uses: the kernel `NEUROAL_ATTENTION` named (every attention; it says when a
/// shape is declined), else `neuroal tune`'s per compute dtype and head size, else this
/// adapter's default for f16 heads of at most [`DEFAULT_MAX_HEAD_DIM`].
#[derive(Clone, PartialEq)]
struct Choice {
    named: Option<&'static str>,
    tuned: Vec<(DType, usize, &'static str)>,
    default: &'static str,
}

impl Choice {
    /// The kernel for an attention in `dtype` with heads of `head_dim`, and whether it is fixed
    /// (named or tuned: an autotune build then runs it instead of timing its own).
    fn kernel(&self, dtype: DType, head_dim: usize) -> (&'static str, bool) {
        if let Some(name) = self.named {
            return (name, true);
        }
        if let Some(&(_, _, name)) = self.tuned.iter().find(|(d, hd, _)| *d == dtype && *hd == head_dim) {
            return (name, true);
        }
        (if default_covers(dtype, head_dim) { self.default } else { "ops" }, false)
    }
}

/// The names `NEUROAL_ATTENTION` accepts: `ops` (separate kernels), `flash-N` (the tensor-core
/// flash kernel with N planes per cube, autotune's candidates), `flash-unit` (per-thread). A
/// named kernel runs as asked where it fits (see [`DEFAULT_MAX_HEAD_DIM`]).
pub const NAMES: [&str; 5] = ["ops", "flash-2", "flash-4", "flash-8", "flash-unit"];

/// What the flash kernels' workgroup memory is checked against: the adapter's workgroup memory
/// in bytes and its f16 cooperative-matrix tiles (see [`flash_workgroup_bytes`]).
struct Adapter {
    workgroup_memory: usize,
    tiles: Vec<(u32, u32, u32)>,
}

impl Adapter {
    fn of(device: &burn::tensor::Device) -> Adapter {
        Adapter { workgroup_memory: kernels::workgroup_memory(device), tiles: kernels::f16_cooperative_tiles(device) }
    }
}

/// What [`choose`] settled on for one GPU, with what the flash kernels are checked against; a
/// named kernel that declines says so once.
pub struct Chosen {
    choice: Choice,
    adapter: Adapter,
    warned: std::sync::atomic::AtomicBool,
}

/// Reads `NEUROAL_ATTENTION` when a GPU is opened: the kernel it names, else what `neuroal
/// tune` kept for this adapter (`tuned`) and the default for the rest; a one-line error when it
/// names none. Returns the choice, and for the device line what runs other than the separate
/// kernels.
pub fn choose(device: &burn::tensor::Device, tuned: &[(DType, AttentionRules)]) -> Result<(Chosen, Option<String>)> {
    let asked = std::env::var(VAR).unwrap_or_default();
    let asked = asked.trim();
    let named = match asked {
        "" => None,
        _ => match NAMES.iter().find(|n| **n == asked) {
            Some(name) => Some(*name),
            None => bail!("{VAR}={asked}: no such attention kernel; one of: {}", NAMES.join(", ")),
        },
    };
    let mut kept = Vec::new();
    for (dtype, rules) in tuned.iter().filter(|_| named.is_none()) {
        for (head_dim, name) in &rules.0 {
            // The file's names were checked when it was read.
            let name = NAMES.iter().find(|n| *n == name).copied().unwrap_or("ops");
            kept.push((*dtype, *head_dim, name));
        }
    }
    let default = default_for(
        kernels::compiler(device),
        kernels::has_f16_cooperative_matrices(device),
        kernels::workgroup_memory(device),
    );
    let chosen = Choice { named, tuned: kept, default };
    let mut said = Vec::new();
    match chosen.named {
        Some("ops") => {}
        Some(name) => said.push(name.to_string()),
        None => {
            for (dtype, rules) in tuned {
                said.push(format!("attention tuned for {}: {rules}", crate::gpu::tensor::dtype_name(*dtype)));
            }
            if chosen.default != "ops" {
                said.push(format!("{} for f16 heads ≤ {DEFAULT_MAX_HEAD_DIM}", chosen.default));
            }
        }
    }
    let said = (!said.is_empty()).then(|| said.join(", "));
    Ok((Chosen { choice: chosen, adapter: Adapter::of(device), warned: Default::default() }, said))
}

/// The attention kernel when `NEUROAL_ATTENTION` is unset, given the compiler burn's runtime
/// reports, whether the adapter has f16 cooperative matrices, and its workgroup memory in bytes:
/// [`DEFAULT`] where it was measured, else the separate kernels; those in an autotune build too,
/// which times the flash kernels itself (src/model/mod.rs).
fn default_for(compiler: &str, f16_cooperative_matrices: bool, workgroup_memory: usize) -> &'static str {
    let measured = compiler.contains("spirv") && f16_cooperative_matrices && workgroup_memory >= DEFAULT_MIN_SHARED;
    if measured && !cfg!(feature = "autotune") { DEFAULT } else { "ops" }
}

/// Whether the default flash kernel takes an attention in `dtype` with heads of `head_dim`.
fn default_covers(dtype: DType, head_dim: usize) -> bool {
    dtype == DType::F16 && head_dim <= DEFAULT_MAX_HEAD_DIM
}

impl Chosen {
    /// Whether a kernel is fixed for an attention in `dtype` with heads of `head_dim`, named or
    /// tuned (an autotune build then runs it, not its tuner).
    pub fn fixed(&self, dtype: DType, head_dim: usize) -> bool {
        self.choice.kernel(dtype, head_dim).1
    }

    /// softmax(q·kᵀ/√hd + causal mask)·v with the chosen flash kernel: q, k, v [b, heads, t, hd]
    /// (k and v already repeated per query head) → [b, heads, t, hd]. `None` where the separate
    /// kernels are to run: no flash kernel chosen, a dtype the default does not cover, or a shape
    /// the kernel declines.
    pub fn causal(&self, q: &Tensor<4>, k: &Tensor<4>, v: &Tensor<4>) -> Option<Tensor<4>> {
        // The tensor-core kernel multiplies f16 fragments: by default only f16 runs take it, and
        // only with the head sizes it was measured on.
        let (name, _) = self.choice.kernel(q.dtype(), q.dims()[3]);
        if name == "ops" || !kernels::is_wgpu(q) {
            return None;
        }
        match flash(name, q, k, v, &self.adapter) {
            Ok(out) => Some(out),
            Err(why) => {
                if self.choice.named.is_some() && !self.warned.swap(true, std::sync::atomic::Ordering::Relaxed) {
                    eprintln!("warning: {VAR}={name}: {why}; the separate kernels run where it declines");
                }
                None
            }
        }
    }
}

/// The flash kernel `name` (one of [`NAMES`] but `ops`) on q, k, v [b, heads, t, hd], or why it
/// declines, in one line. A tensor-core kernel that would ask for more workgroup memory than
/// the adapter has fails only at the next read-back, which ends the run: it is declined here.
fn flash(
    name: &str,
    q: &Tensor<4>,
    k: &Tensor<4>,
    v: &Tensor<4>,
    adapter: &Adapter,
) -> std::result::Result<Tensor<4>, String> {
    let strategy = match name {
        "flash-unit" => Strategy::Unit(BlueprintStrategy::Inferred(())),
        _ => {
            let planes = name
                .strip_prefix("flash-")
                .and_then(|p| p.parse::<u8>().ok())
                .ok_or_else(|| format!("{name}: no such flash kernel"))?;
            let [_, _, seq, head_dim] = q.dims();
            if let Some(need) = flash_workgroup_bytes(planes as usize, seq, head_dim, q.dtype().size(), &adapter.tiles)
                && need > adapter.workgroup_memory
            {
                return Err(format!(
                    "heads of {head_dim} need {need} bytes of workgroup memory, more than the adapter's {}",
                    adapter.workgroup_memory
                ));
            }
            blackbox(planes)
        }
    };
    let options = AttentionModuleOptions { scale: None, softcap: None, is_causal: true };
    let (q, k, v) =
        (kernels::cube_strided(q.clone()), kernels::cube_strided(k.clone()), kernels::cube_strided(v.clone()));
    flash_attention(q, k, v, None, None, options, strategy)
        .map(kernels::from_cube)
        .map_err(|why| crate::io::error::one_line(&format!("{why:?}")))
}

/// One attention kernel's time on one shape in `bench --attention`.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct AttentionTiming {
    /// [windows, heads, tokens, head size].
    pub shape: [usize; 4],
    /// `ops` (the separate kernels) or a flash kernel's name.
    pub kernel: String,
    pub ms: Option<f64>,
    /// ‖y − y_ops‖ / ‖y_ops‖ in f32, against the separate kernels on the same q, k, v.
    pub rel_err: Option<f64>,
    /// Why the kernel did not run this shape.
    pub declined: Option<String>,
}

/// The separate kernels' attention (the model's): `separate(q, k, v, scale divisor)`, heads
/// merged into `[B, T, H·HD]`.
pub type Separate<'a> = &'a dyn Fn(Tensor<4>, Tensor<4>, Tensor<4>, Option<f64>) -> Tensor<3>;

/// Times the separate kernels (`separate`) and every flash kernel on causal attentions of each
/// shape in `dtype` on the GPU `device` (`timing::time_kernel`: `iters` runs after one
/// warm-up), each row to `row` as soon as it is measured.
pub fn time_kernels(
    device: &burn::tensor::Device,
    shapes: &[[usize; 4]],
    dtype: DType,
    iters: usize,
    separate: Separate,
    row: &mut dyn FnMut(AttentionTiming) -> Result<()>,
) -> Result<()> {
    let adapter = Adapter::of(device);
    use burn::tensor::Distribution;
    for &[b, h, t, hd] in shapes {
        let random = || Tensor::<4>::random([b, h, t, hd], Distribution::Uniform(-1.0, 1.0), device).cast(dtype);
        let (q, k, v) = (random(), random(), random());
        let ops = || separate(q.clone(), k.clone(), v.clone(), Some((hd as f64).sqrt()));
        let reference = ops();
        for name in NAMES {
            let run = || match name {
                "ops" => Ok(ops()),
                _ => flash(name, &q, &k, &v, &adapter).map(|o| o.swap_dims(1, 2).reshape([b, t, h * hd])),
            };
            let timing = |ms, rel_err, declined| AttentionTiming {
                shape: [b, h, t, hd],
                kernel: name.into(),
                ms,
                rel_err,
                declined,
            };
            row(match crate::gpu::timing::time_kernel(device, iters, &reference, run)? {
                Ok((ms, rel_err)) => timing(Some(ms), Some(rel_err), None),
                Err(why) => timing(None, None, Some(why)),
            })?;
        }
    }
    Ok(())
}

/// The workgroup memory, in bytes, that cubek 0.3.1's tensor-core flash kernel asks for with
/// `planes` planes on a causal attention of `seq` tokens and heads of `head_dim`, in a dtype of
/// `elem` bytes, given the adapter's f16 × f16 → f32 cooperative tiles; `None` where cubek
/// finds no tile (it then declines the launch itself). For the cube: one stage of key and of
/// value rows (f16). Per plane: its query tile's staging and its output tile (the attention's
/// dtype), its score tile (f32) and softmax tile (f16), and its output accumulators, one row of
/// tiles across the head (f32). The tiles are the ones cubek picks (`find_instruction_size`, as
/// its `BlackboxAcceleratedRoutine` calls it). With the H100's 16 × 16 × 16 tiles this gives
/// the 51,200 bytes that flash-4 asked for with heads of 128 and the 57,344 of flash-8 with
/// heads of 64, which its Vulkan driver reported.
fn flash_workgroup_bytes(
    planes: usize,
    seq: usize,
    head_dim: usize,
    elem: usize,
    tiles: &[(u32, u32, u32)],
) -> Option<usize> {
    use cubek::matmul::multi_level::find_instruction_size;
    let supported = |m, n, k| tiles.contains(&(m, n, k));
    let fallback = || tiles.iter().map(|&t| t.into()).collect();
    let (seq, hd) = (seq as u32, head_dim as u32);
    let score = find_instruction_size((seq, seq, hd).into(), (None, None, None), supported, fallback)?;
    let value =
        find_instruction_size((seq, hd, seq).into(), (Some(score.m), None, Some(score.n)), supported, fallback)?;
    let (m, n, k, vn) = (score.m as usize, score.n as usize, score.k as usize, value.n as usize);
    let stage = 2 * n * head_dim * 2;
    let plane = m * k * elem + m * n * 4 + m * n * 2 + m * head_dim * 4 + m * vn * elem;
    Some(stage + planes * plane)
}

fn blackbox(num_planes: u8) -> Strategy {
    Strategy::BlackboxAccelerated(BlueprintStrategy::Inferred(BlackboxAcceleratedStrategy {
        num_planes,
        seq_q: 1,
        seq_kv: 1,
    }))
}

/// The attention kernel (one of `gpu_attention::NAMES`) per head size, written `HD=NAME,…`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AttentionRules(pub Vec<(usize, String)>);

impl AttentionRules {
    pub fn parse(value: &str, source: &str) -> Result<AttentionRules> {
        let mut rules = Vec::new();
        for rule in value.split(',').map(str::trim) {
            let parsed = rule
                .split_once('=')
                .and_then(|(hd, name)| Some((hd.trim().parse::<usize>().ok().filter(|&h| h > 0)?, name.trim())));
            let Some((head_dim, name)) = parsed else {
                bail!("{source}: {rule:?}: an attention rule is HEAD_SIZE=KERNEL (e.g. 64=flash-2)");
            };
            if !NAMES.contains(&name) {
                bail!("{source}: no attention kernel is named {name} in this version");
            }
            rules.push((head_dim, name.to_string()));
        }
        Ok(AttentionRules(rules))
    }

    /// `newer`'s head sizes, and this one's that `newer` does not name.
    pub fn updated_by(self, newer: AttentionRules) -> AttentionRules {
        AttentionRules(crate::gpu::rules::merged(self.0, newer.0))
    }
}

impl std::fmt::Display for AttentionRules {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.iter().map(|(hd, name)| format!("{hd}={name}")).collect::<Vec<_>>().join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_flash_kernel_runs_only_where_it_was_measured() {
        assert!(NAMES.contains(&DEFAULT));
        let flash = if cfg!(feature = "autotune") { "ops" } else { DEFAULT };
        assert_eq!(default_for("wgpu<spirv>", true, 49_152), flash, "the H100's Vulkan adapter");
        assert_eq!(default_for("wgpu<spirv>", true, 32_768), "ops", "less workgroup memory than measured");
        assert_eq!(default_for("wgpu<spirv>", false, 65_536), "ops", "no cooperative matrices");
        assert_eq!(default_for("wgpu<wgsl>", true, 65_536), "ops");
        assert_eq!(default_for("wgpu<msl>", true, 65_536), "ops", "Metal was not measured");
        // Heads of 32 (wt2-llama) and 64 (the 0.84 B shape) launched; 128 asked too much of
        // the H100 with flash-4, and flash-2 has not been tried there.
        assert!(default_covers(DType::F16, 32) && default_covers(DType::F16, 64));
        assert!(!default_covers(DType::F16, 128));
        assert!(!default_covers(DType::F32, 64) && !default_covers(DType::BF16, 64), "f16 fragments: f16 runs only");
    }

    #[test]
    fn a_named_kernel_comes_before_a_tuned_one_before_the_default() {
        let tuned = vec![(DType::F16, 128, "flash-2"), (DType::F32, 64, "flash-unit"), (DType::F16, 32, "ops")];
        let c = Choice { named: None, tuned: tuned.clone(), default: DEFAULT };
        assert_eq!(c.kernel(DType::F16, 128), ("flash-2", true), "tuned, where the default does not go");
        assert_eq!(c.kernel(DType::F32, 64), ("flash-unit", true));
        assert_eq!(c.kernel(DType::F16, 32), ("ops", true), "tuned to the separate kernels: autotune stays out");
        assert_eq!(c.kernel(DType::F16, 64), (DEFAULT, false), "not tuned: the default");
        assert_eq!(c.kernel(DType::F32, 128), ("ops", false));
        let c = Choice { named: Some("flash-4"), tuned, default: DEFAULT };
        assert_eq!(c.kernel(DType::F16, 32), ("flash-4", true), "the variable overrides the file");
    }

    #[test]
    fn flash_workgroup_memory_is_what_the_h100_reported() {
        // The H100's Vulkan driver offers 16 × 16 × 16 f16 tiles (among others cubek prefers
        // less for square products); the 0.84 B shape's and the 7B shape's windows of 512.
        let h100 = [(16, 16, 16), (16, 8, 16), (16, 8, 8)];
        let need = |planes, head_dim, elem| flash_workgroup_bytes(planes, 512, head_dim, elem, &h100).unwrap();
        // What the run reported when it failed: 51,200 and 57,344 bytes of 49,152.
        assert_eq!(need(4, 128, 2), 51_200);
        assert_eq!(need(8, 64, 2), 57_344);
        // By hand, 16 × 16 tiles: 2 · 16 · 128 · 2 = 8192 for key and value; per plane 512
        // (query) + 1024 (scores) + 512 (softmax) + 16 · 128 · 4 (accumulators) + 512 (output).
        assert_eq!(need(2, 128, 2), 8192 + 2 * (512 + 1024 + 512 + 8192 + 512));
        // What launched there: flash-2 and flash-4 with heads of 64 (and of 32, wt2-llama).
        for (planes, head_dim) in [(2, 64), (4, 64), (2, 32), (4, 32)] {
            assert!(need(planes, head_dim, 2) <= 49_152, "flash-{planes}, heads of {head_dim}");
        }
        // f32 attention stages its query and output tiles in f32.
        assert_eq!(need(2, 64, 4) - need(2, 64, 2), 2 * (512 + 512));
        // 8 × 8 × 8 tiles only (as Apple's simdgroup matrices): a quarter of the tiles' bytes.
        assert_eq!(
            flash_workgroup_bytes(2, 512, 128, 2, &[(8, 8, 8)]),
            Some(2 * 8 * 128 * 2 + 2 * (128 + 256 + 128 + 8 * 128 * 4 + 128))
        );
        // No f16 tile at all: cubek declines by itself.
        assert_eq!(flash_workgroup_bytes(2, 512, 128, 2, &[]), None);
    }
}
