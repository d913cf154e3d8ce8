//! The sequential block pipeline of the Wanda reference: embed the calibration windows once;
//! for each block, load it alone, run it densely while recording every linear's input
//! statistics, score and mask each linear, zero the pruned weights, run the block again on the
//! same inputs, and hand those pruned outputs to the next block.

use burn::tensor::Tensor;

use crate::error::Result;
use crate::eval::progress_bar;
use crate::mask::{mask, Pattern, Sparsity};
use crate::model::{Block, Model, Rope, LINEARS};
use crate::score::{apply_mask, score, InputStats, Method};

/// Windows per forward pass during calibration.
const CHUNK: usize = 8;

/// The sparsity each linear gets: (block, linear index in [`LINEARS`]) → sparsity.
pub type SparsityMap<'a> = &'a dyn Fn(usize, usize) -> Sparsity;

/// A packed bit set: masks of every layer are held until the checkpoint is written, one bit
/// per weight (a 7B model's masks take 0.8 GB, not 6.5).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bits {
    words: Vec<u64>,
    len: usize,
}

impl Bits {
    pub fn from_flags(flags: impl ExactSizeIterator<Item = bool>) -> Bits {
        let len = flags.len();
        let mut words = vec![0u64; len.div_ceil(64)];
        for (i, f) in flags.enumerate() {
            words[i / 64] |= (f as u64) << (i % 64);
        }
        Bits { words, len }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn count_ones(&self) -> usize {
        self.words.iter().map(|w| w.count_ones() as usize).sum()
    }

    pub fn iter(&self) -> impl Iterator<Item = bool> + '_ {
        (0..self.len).map(|i| self.words[i / 64] >> (i % 64) & 1 == 1)
    }

    /// Indices of the set bits, ascending.
    pub fn ones(&self) -> impl Iterator<Item = usize> + '_ {
        self.words.iter().enumerate().flat_map(|(wi, &w)| {
            let mut w = w;
            std::iter::from_fn(move || {
                if w == 0 {
                    return None;
                }
                let bit = w.trailing_zeros() as usize;
                w &= w - 1;
                Some(wi * 64 + bit)
            })
        })
    }
}

/// One pruned linear: its checkpoint name, shape and which weights were zeroed (row-major).
pub struct LayerMask {
    pub name: String,
    pub shape: [usize; 2],
    pub pruned: Bits,
}

impl LayerMask {
    pub fn fraction(&self) -> f64 {
        self.pruned.count_ones() as f64 / self.pruned.len().max(1) as f64
    }
}

/// Embeds `windows` ([n · seqlen] ids) in chunks of [`CHUNK`] windows.
pub fn embed_windows(model: &Model, windows: &[u32], seqlen: usize) -> Vec<Tensor<3>> {
    windows.chunks(CHUNK * seqlen).map(|c| model.embed(c, c.len() / seqlen)).collect()
}

/// Runs `block` on every chunk of `hidden`, recording each linear's input statistics; returns
/// the statistics and the block's outputs.
pub fn run_recording(model: &Model, block: &Block, hidden: &[Tensor<3>], rope: &Rope) -> (Vec<InputStats>, Vec<Tensor<3>>) {
    let mut stats: Vec<InputStats> = model.linear_shapes().iter().map(|s| InputStats::new(s[1], &model.device)).collect();
    let outputs = hidden
        .iter()
        .map(|h| {
            let mut record = |li: usize, x: &Tensor<3>| stats[li].add(x);
            block.forward(h.clone(), rope, &model.config, Some(&mut record))
        })
        .collect();
    (stats, outputs)
}

/// The base pruner on one linear: its weight with the masked entries zeroed, and the mask.
pub fn prune_linear(
    weight: Tensor<2>,
    stats: &InputStats,
    nsamples: usize,
    method: Method,
    pattern: &Pattern,
    sparsity: &Sparsity,
) -> Result<(Tensor<2>, Tensor<2>)> {
    let scaler = match method {
        Method::Wanda => Some(stats.scaler_row(nsamples)),
        Method::Magnitude => None,
    };
    let m = mask(score(weight.clone(), scaler), pattern, sparsity)?;
    Ok((apply_mask(weight, m.clone()), m))
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
        // Wanda's order: statistics from the dense block; its outputs are not kept.
        let (stats, _) = run_recording(model, &block, &hidden, &rope);
        for (li, linear) in block.linears.iter_mut().enumerate() {
            let (pruned, m) = prune_linear(linear.weight.clone(), &stats[li], nsamples, method, pattern, &sparsity(b, li))?;
            linear.weight = pruned;
            let host = m.into_data().try_to_vec::<f32>().unwrap_or_default();
            masks.push(LayerMask {
                name: Model::linear_name(b, li),
                shape: shapes[li],
                pruned: Bits::from_flags(host.iter().map(|&v| v != 0.0)),
            });
        }
        hidden = hidden.into_iter().map(|h| block.forward(h, &rope, &model.config, None)).collect();
        bar.inc(1);
    }
    bar.finish_and_clear();
    debug_assert_eq!(masks.len(), model.num_blocks() * LINEARS.len());
    Ok(masks)
}

#[cfg(test)]
mod tests {
    use super::Bits;

    #[test]
    fn bits_round_trip() {
        let flags: Vec<bool> = (0..200).map(|i| i % 3 == 0 || i == 127 || i == 128).collect();
        let b = Bits::from_flags(flags.iter().copied());
        assert_eq!(b.iter().collect::<Vec<_>>(), flags);
        assert_eq!(b.count_ones(), flags.iter().filter(|&&f| f).count());
        let want: Vec<usize> = (0..200).filter(|&i| flags[i]).collect();
        assert_eq!(b.ones().collect::<Vec<_>>(), want);
    }
}
