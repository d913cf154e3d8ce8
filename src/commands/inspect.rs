//! Per-layer and overall sparsity (zeros / numel) of the prunable linears of any checkpoint.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::Serialize;

use crate::io::checkpoint::{Checkpoint, decode_f32};
use crate::io::error::Result;
use crate::model::config::Config;
use crate::model::{Specs, check_model_dir};
use crate::outln;

#[derive(Debug, Serialize)]
pub struct Inspection {
    pub overall: f64,
    pub layers: BTreeMap<String, f64>,
    pub numel: usize,
    pub zeros: usize,
}

/// Names of the weights the pruner touches in a model folder, as stored: every declared linear
/// of every block of its family.
pub fn prunable_names(dir: &Path) -> Result<BTreeSet<String>> {
    let (config, ck) = check_model_dir(dir)?;
    Ok(read_and_stored_names(&config, &ck).into_iter().map(|(_, stored)| stored).collect())
}

/// (name as read, name as stored) of every prunable weight.
fn read_and_stored_names(config: &Config, ck: &Checkpoint) -> Vec<(String, String)> {
    let specs = Specs::of(config);
    (0..config.num_layers)
        .flat_map(|b| (0..specs.block(b).linears.len()).map(move |l| (b, l)))
        .map(|(b, l)| specs.block(b).weight_name(b, l))
        .map(|read| {
            let stored = ck.stored_name(&read).to_string();
            (read, stored)
        })
        .collect()
}

pub fn inspect(dir: &Path) -> Result<Inspection> {
    let (config, ck) = check_model_dir(dir)?;
    let mut layers = BTreeMap::new();
    let (mut numel, mut zeros) = (0usize, 0usize);
    for (name, stored) in read_and_stored_names(&config, &ck) {
        let (shard, info) = ck.info(&name)?;
        let values = decode_f32(shard.bytes(info), info.dtype)?;
        let z = values.iter().filter(|&&v| v == 0.0).count();
        layers.insert(stored, z as f64 / values.len().max(1) as f64);
        numel += values.len();
        zeros += z;
    }
    Ok(Inspection { overall: zeros as f64 / numel.max(1) as f64, layers, numel, zeros })
}

/// `neuroal inspect`: the table, or JSON.
pub fn run(dir: &Path, json: bool) -> Result<()> {
    let r = inspect(dir)?;
    if json {
        return crate::io::error::write_json(&r, true);
    }
    for (name, f) in &r.layers {
        outln!("{name:<48} {f:.4}")?;
    }
    outln!("{:<48} {:.4}  ({} of {} weights are zero)", "overall", r.overall, r.zeros, r.numel)
}
