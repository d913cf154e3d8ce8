//! neuroal: prune Hugging Face LLaMA-family checkpoints with magnitude, Wanda and the NeuroAL
//! sparsity top-up, on any wgpu GPU or on the CPU.

pub mod config;
pub mod device;
pub mod error;
pub mod eval;
pub mod model;
pub mod tokenizer;
pub mod topup;
pub mod weights;
pub mod bench;
pub mod calib;
pub mod kernels;
pub mod gpu_matmul;
pub mod gpu_attention;
pub mod mask;
pub mod pipeline;
pub mod plots;
pub mod prune;
pub mod inspect;
pub mod writer;
pub mod staging;
pub mod resume;
pub mod provenance;
pub mod progress;
pub mod report;
pub mod pruner;
pub mod zeroshot;
pub mod memory;
pub mod score;
pub mod trace;
pub mod tune;
pub mod fused;
