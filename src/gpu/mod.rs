//! The GPU: adapter and device choice, the WGSL shaders and their launches, and which matrix
//! product, attention and fusion kernels run (defaults, user variables and `neuroal tune`'s
//! file). It knows nothing of models or masks: it takes plain dtypes, shapes and tensors.

pub mod attention;
pub mod context;
pub mod device;
pub mod fused;
pub mod kernels;
pub mod matmul;
pub mod rules;
pub mod tensor;
pub mod timing;
pub mod tuned;
