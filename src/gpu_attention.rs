//! Causal attention on a GPU as one flash kernel (cubek's: scores never stored, f32
//! accumulators) instead of separate product, mask, softmax and product kernels, chosen by
//! `NEUROAL_ATTENTION` or by default where it was measured faster.
//!
//! Burn runs its flash kernels only in an `autotune` build, after timing them against the
//! separate kernels for every new shape; tuning cost more than it saved in the 7B-shaped prune
//! (README, "Speed"). A fixed choice keeps the kernel without the tuning. The separate
//! kernels stay the reference: they compute the scores and softmax in f32, and run wherever the
//! flash kernel declines a shape or the adapter.

use std::sync::OnceLock;

use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{DType, Tensor};
use burn_cubecl::kernel::attention::flash_attention;
use cubek::attention::forward::launch::{BlueprintStrategy, Strategy};
use cubek::attention::forward::routines::blackbox_accelerated::BlackboxAcceleratedStrategy;

use crate::error::Result;
use crate::{bail, kernels};

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
/// launcher does not report when it is called).
const DEFAULT_MAX_HEAD_DIM: usize = 64;
const DEFAULT_MIN_SHARED: usize = 49_152;

/// What a process uses; `explicit` when the user named it (it then applies to every dtype and
/// says when a shape is declined).
#[derive(Clone, Copy, PartialEq)]
struct Choice {
    name: &'static str,
    explicit: bool,
}

/// The names `NEUROAL_ATTENTION` accepts: `ops` (separate kernels), `flash-N` (the tensor-core
/// flash kernel with N planes per cube, autotune's candidates), `flash-unit` (per-thread). A
/// named kernel runs as asked: see [`DEFAULT_MAX_HEAD_DIM`] for what the H100 could not launch.
pub const NAMES: [&str; 5] = ["ops", "flash-2", "flash-4", "flash-8", "flash-unit"];

static CHOSEN: OnceLock<Choice> = OnceLock::new();

/// Reads `NEUROAL_ATTENTION` when a GPU is opened: the kernel it names, else the default for
/// this adapter; a one-line error when it names none. Returns, for the device line, the flash
/// kernel's name when one runs, with what the default covers.
pub fn choose(device: &burn::tensor::Device) -> Result<Option<String>> {
    let asked = std::env::var(VAR).unwrap_or_default();
    let asked = asked.trim();
    let choice = if asked.is_empty() {
        let name = default_for(kernels::compiler(device), kernels::has_f16_cooperative_matrices(device), kernels::workgroup_memory(device));
        Choice { name, explicit: false }
    } else {
        match NAMES.iter().find(|n| **n == asked) {
            Some(name) => Choice { name, explicit: true },
            None => bail!("{VAR}={asked}: no such attention kernel; one of: {}", NAMES.join(", ")),
        }
    };
    let chosen = CHOSEN.get_or_init(|| choice);
    if *chosen != choice {
        bail!("{VAR} changed after the GPU was opened; a process uses one kernel");
    }
    Ok(match (chosen.name, chosen.explicit) {
        ("ops", _) => None,
        (name, true) => Some(name.to_string()),
        (name, false) => Some(format!("{name} for f16 heads ≤ {DEFAULT_MAX_HEAD_DIM}")),
    })
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

/// Whether `NEUROAL_ATTENTION` named a kernel (an autotune build then runs it, not its tuner).
pub fn named() -> bool {
    CHOSEN.get().is_some_and(|c| c.explicit)
}

/// softmax(q·kᵀ/√hd + causal mask)·v with the chosen flash kernel: q, k, v [b, heads, t, hd]
/// (k and v already repeated per query head) → [b, heads, t, hd]. `None` where the separate
/// kernels are to run: no flash kernel chosen, a dtype the default does not cover, or a shape
/// the kernel declines.
pub fn causal(q: &Tensor<4>, k: &Tensor<4>, v: &Tensor<4>) -> Option<Tensor<4>> {
    let choice = CHOSEN.get()?;
    let strategy = match choice.name {
        "flash-2" => blackbox(2),
        "flash-4" => blackbox(4),
        "flash-8" => blackbox(8),
        "flash-unit" => Strategy::Unit(BlueprintStrategy::Inferred(())),
        _ => return None,
    };
    // The tensor-core kernel multiplies f16 fragments: by default only f16 runs take it, and
    // only with the head sizes it was measured on.
    if !kernels::is_wgpu(q) || (!choice.explicit && !default_covers(q.dtype(), q.dims()[3])) {
        return None;
    }
    let options = AttentionModuleOptions { scale: None, softcap: None, is_causal: true };
    let (q, k, v) = (kernels::cube_strided(q.clone()), kernels::cube_strided(k.clone()), kernels::cube_strided(v.clone()));
    match flash_attention(q, k, v, None, None, options, strategy) {
        Ok(out) => Some(kernels::from_cube(out)),
        Err(why) => {
            if choice.explicit {
                let why = crate::error::one_line(&format!("{why:?}"));
                warn_once(&format!("warning: {VAR}={}: {why}; the separate kernels run where it declines", choice.name));
            }
            None
        }
    }
}

fn blackbox(num_planes: u8) -> Strategy {
    Strategy::BlackboxAccelerated(BlueprintStrategy::Inferred(BlackboxAcceleratedStrategy { num_planes, seq_q: 1, seq_kv: 1 }))
}

fn warn_once(line: &str) {
    static SAID: OnceLock<()> = OnceLock::new();
    SAID.get_or_init(|| eprintln!("{line}"));
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
}
