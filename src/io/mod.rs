//! Reading and writing files: errors and their one-line messages, checkpoints, the tokenizer,
//! output staging (write to a temporary folder, then rename), provenance and progress bars.

pub mod checkpoint;
pub mod error;
pub mod faults;
pub mod host;
pub mod named;
pub mod progress;
pub mod provenance;
pub mod staging;
pub mod tokenizer;
