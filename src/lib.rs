//! neuroal: prune Hugging Face causal LMs with magnitude, Wanda or SparseGPT and the uniform, OWL
//! or NeuroAL sparsity top-ups, on any wgpu GPU or on the CPU.
//!
//! The crate is layered; each layer imports only from the layers listed before it
//! (`tests/architecture.rs` holds the code to this):
//! - [`rng`]: the seeded random stream every run draws from.
//! - [`io`]: errors, safetensors reading, tokenizer, atomic output staging, provenance.
//! - [`gpu`]: adapter choice, the WGSL kernels and the kernel choices; knows no model.
//! - [`model`]: the families' configs and forward passes.
//! - [`measure`]: perplexity, zero-shot accuracy, memory, tracing.
//! - [`prune`]: calibration, scores, masks, pruners, top-ups, the block pipeline, writing.
//! - [`commands`]: what the binary's subcommands run, with their reports and plots.

pub mod commands;
pub mod gpu;
pub mod io;
pub mod measure;
pub mod model;
pub mod prune;
pub mod rng;
