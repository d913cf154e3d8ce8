//! The sequential block pipeline of the Wanda reference: embed the calibration windows once;
//! for each block, load it alone, run it densely while recording every linear's input
//! statistics, score and mask each linear, zero the pruned weights, run the block again on the
//! same inputs, and hand those pruned outputs to the next block.

use burn::tensor::Tensor;

use crate::error::Result;
use crate::eval::progress_bar;
use crate::mask::{mask, Pattern, Sparsity};
use crate::model::{Model, LINEARS};
use crate::score::{apply_mask, score, InputStats, Method};

/// Windows per forward pass during calibration.
const CHUNK: usize = 8;

/// The sparsity each linear gets: (block, linear index in [`LINEARS`]) → sparsity.
pub type SparsityMap<'a> = &'a dyn Fn(usize, usize) -> Sparsity;

/// One pruned linear: its checkpoint name, shape and which weights were zeroed (row-major).
pub struct LayerMask {
    pub name: String,
    pub shape: [usize; 2],
    pub pruned: Vec<bool>,
}

impl LayerMask {
    pub fn fraction(&self) -> f64 {
        self.pruned.iter().filter(|&&p| p).count() as f64 / self.pruned.len().max(1) as f64
    }
}

/// Embeds `windows` ([n · seqlen] ids) in chunks of [`CHUNK`] windows.
pub fn embed_windows(model: &Model, windows: &[u32], seqlen: usize) -> Vec<Tensor<3>> {
    windows.chunks(CHUNK * seqlen).map(|c| model.embed(c, c.len() / seqlen)).collect()
}

/// Prunes every block in order and returns the masks, block by block.
pub fn prune(
    model: &Model,
    windows: &[u32],
    seqlen: usize,
    method: Method,
    pattern: &Pattern,
    sparsity: SparsityMap,
) -> Result<Vec<LayerMask>> {
    let nsamples = windows.len() / seqlen;
    let rope = model.rope(seqlen);
    let mut hidden = embed_windows(model, windows, seqlen);
    let shapes = model.linear_shapes();
    let bar = progress_bar(model.num_blocks(), "pruning blocks");
    let mut masks = Vec::new();
    for b in 0..model.num_blocks() {
        let mut block = model.load_block(b)?;
        let mut stats: Vec<InputStats> = shapes.iter().map(|s| InputStats::new(s[1], &model.device)).collect();
        for h in &hidden {
            let mut record = |li: usize, x: &Tensor<3>| stats[li].add(x);
            block.forward(h.clone(), &rope, &model.config, Some(&mut record));
        }
        for (li, linear) in block.linears.iter_mut().enumerate() {
            let scaler = match method {
                Method::Wanda => Some(stats[li].scaler_row(nsamples)),
                Method::Magnitude => None,
            };
            let scores = score(linear.weight.clone(), scaler);
            let m = mask(scores, pattern, &sparsity(b, li))?;
            linear.weight = apply_mask(linear.weight.clone(), m.clone());
            let host = m.into_data().try_to_vec::<f32>().unwrap_or_default();
            masks.push(LayerMask {
                name: Model::linear_name(b, li),
                shape: shapes[li],
                pruned: host.iter().map(|&v| v != 0.0).collect(),
            });
        }
        hidden = hidden.into_iter().map(|h| block.forward(h, &rope, &model.config, None)).collect();
        bar.inc(1);
    }
    bar.finish_and_clear();
    debug_assert_eq!(masks.len(), model.num_blocks() * LINEARS.len());
    Ok(masks)
}
