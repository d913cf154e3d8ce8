//! Measuring a model: perplexity, zero-shot accuracy, memory (estimates and peaks) and the
//! optional stage timings.

pub mod memory;
pub mod perplexity;
pub mod trace;
pub mod zeroshot;
