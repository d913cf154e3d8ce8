//! One opened GPU and the kernels chosen for it, as one value: `device::select` makes it once
//! (from the adapter, the variables and what `neuroal tune` kept) and the model holds it, so
//! every kernel choice is explicit and two GPUs in one process could each have their own.

use burn::tensor::Tensor;

use crate::gpu::{attention, fused, kernels, matmul};

pub struct Gpu {
    /// The WGSL shaders: the device's wgpu handles, their pipelines and the row selection.
    pub shaders: kernels::Shaders,
    /// The linears' matrix-product kernels.
    pub matmul: matmul::Chosen,
    /// The causal attention's kernel.
    pub attention: attention::Chosen,
    /// Which linears that read one input multiply as one product.
    pub fused: fused::Choice,
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Gpu {{ select: {} }}", self.shaders.select())
    }
}

/// The shaders, where there is a GPU and `t` lives on it; `None` sends the caller to its CPU twin.
pub fn shaders_for<'a, const D: usize>(gpu: Option<&'a Gpu>, t: &Tensor<D>) -> Option<&'a kernels::Shaders> {
    gpu.filter(|_| kernels::is_wgpu(t)).map(|g| &g.shaders)
}
