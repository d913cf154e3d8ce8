//! Pruning, one stage per module: the settings → calibration windows → input statistics and
//! scores → masks (the `pruner` interface: `magnitude`, `wanda`, `sparsegpt`) → the top-up that spreads the sparsity (uniform, `owl`, `neuroal`)
//! → the block pipeline → writing, with resume.

pub mod alpha;
pub mod calib;
pub mod dsnot;
pub mod magnitude;
pub mod mask;
pub mod multiflow;
pub mod neuroal;
pub mod owl;
pub mod pipeline;
pub mod plan;
pub mod pruner;
pub mod resume;
pub mod score;
pub mod settings;
pub mod sparsegpt;
pub mod spread;
pub mod topup;
pub mod wanda;
pub mod writer;
