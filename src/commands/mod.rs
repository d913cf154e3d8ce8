//! What the binary's subcommands run (`main.rs` parses the command line), with the prune
//! command's report and plots.

pub mod bench;
pub mod eval;
pub mod inspect;
pub mod plots;
pub mod prune;
pub mod report;
pub mod tune;
pub mod zeroshot;

use crate::gpu::device::{self, Choice, ComputeDtype};
use crate::io::error::Result;
use crate::model::Model;

/// Where a measured model runs and in which dtype (`eval`, `zeroshot`).
pub struct Compute {
    pub device: Choice,
    pub dtype: ComputeDtype,
}

impl Compute {
    /// Opens the device (its line goes to stderr) and loads the model on it; returns the model
    /// and the device's description with the dtype, for the results.
    /// What `measure` will hold is checked against the device's memory first.
    pub fn load(
        &self,
        config: crate::model::config::Config,
        checkpoint: crate::io::checkpoint::Checkpoint,
        measure: &crate::measure::memory::Measure,
    ) -> Result<(Model, String)> {
        let selected = device::select(self.device)?;
        let dtype = selected.compute_dtype(self.dtype)?;
        eprintln!("device {}", selected.description);
        crate::measure::memory::check_measuring(&config, measure, &selected, dtype)?;
        let described = format!("{} ({})", selected.description, crate::gpu::tensor::dtype_name(dtype));
        Ok((Model::load(config, checkpoint, &selected, dtype, crate::model::Ends::Logits)?, described))
    }
}
