//! Per-layer and overall sparsity (zeros / numel) of the prunable linears of any checkpoint.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use crate::error::Result;
use crate::model::LINEARS;
use crate::weights::{decode_f32, Checkpoint};

#[derive(Debug, Serialize)]
pub struct Inspection {
    pub overall: f64,
    pub layers: BTreeMap<String, f64>,
    pub numel: usize,
    pub zeros: usize,
}

/// Whether a tensor name is one of the block linears the pruner touches.
pub fn is_prunable(name: &str) -> bool {
    name.starts_with("model.layers.") && LINEARS.iter().any(|l| name.ends_with(&format!(".{l}.weight")))
}

pub fn inspect(dir: &Path) -> Result<Inspection> {
    if !dir.is_dir() {
        crate::bail!("{}: model folder not found", dir.display());
    }
    let ck = Checkpoint::open(dir)?;
    let mut layers = BTreeMap::new();
    let (mut numel, mut zeros) = (0usize, 0usize);
    for name in ck.names.keys().filter(|n| is_prunable(n)) {
        let (shard, info) = ck.info(name)?;
        let values = decode_f32(shard.bytes(info), info.dtype)?;
        let z = values.iter().filter(|&&v| v == 0.0).count();
        layers.insert(name.clone(), z as f64 / values.len().max(1) as f64);
        numel += values.len();
        zeros += z;
    }
    Ok(Inspection { overall: zeros as f64 / numel.max(1) as f64, layers, numel, zeros })
}
