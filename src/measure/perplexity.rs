//! Perplexity with the pruning papers' protocol: tokenize the whole file once, cut it into
//! ⌊n / seqlen⌋ non-overlapping windows, take each window's mean cross-entropy of tokens
//! 2..seqlen, and report exp(mean over windows).

use std::time::Instant;

use burn::tensor::Tensor;
use serde::Serialize;

use crate::bail;
use crate::io::error::Result;
use crate::io::progress::progress_bar;
use crate::model::{Block, Model, sequence_losses};

#[derive(Debug, Serialize)]
pub struct Perplexity {
    pub ppl: f64,
    pub windows: usize,
    pub seqlen: usize,
    pub tokens_per_s: f64,
    pub seconds: f64,
    pub device: String,
    #[serde(skip)]
    pub window_losses: Vec<f32>,
}

/// The default window: min(2048, max_position_embeddings).
pub fn default_seqlen(config: &crate::model::config::Config) -> usize {
    config.max_positions.min(2048)
}

/// Sequences of `tokens` tokens per forward pass, at most `most`, whose f32 logits stay under
/// ~256 MB: perplexity's windows and zero-shot's requests.
pub fn logits_batch(tokens: usize, vocab: usize, most: usize) -> usize {
    ((64usize << 20) / (tokens * vocab).max(1)).clamp(1, most)
}

/// Windows per forward pass.
pub fn batch_size(seqlen: usize, vocab: usize) -> usize {
    logits_batch(seqlen, vocab, 16)
}

/// Models whose blocks take at most this much in f32 keep them all loaded during evaluation;
/// larger ones are streamed block by block over groups of windows.
pub const RESIDENT_BLOCKS_BYTES: usize = 2 << 30;

/// Hidden states held per group of windows when blocks are streamed.
const STREAM_GROUP_BYTES: usize = 1 << 30;

/// Windows whose hidden states a streamed pass holds at once (as many as fit in
/// [`STREAM_GROUP_BYTES`] in f32).
pub fn stream_group(seqlen: usize, hidden: usize) -> usize {
    (STREAM_GROUP_BYTES / (seqlen * hidden * 4).max(1)).max(1)
}

/// Whether `blocks` blocks of linears `shapes` take at most `budget` bytes in f32.
pub fn blocks_fit(shapes: &[[usize; 2]], blocks: usize, budget: usize) -> bool {
    shapes.iter().map(|s| s[0] as u128 * s[1] as u128 * 4).sum::<u128>() * blocks as u128 <= budget as u128
}

/// Every block loaded, when all of them take at most `budget` bytes in f32; `None` when the
/// model is too large and its blocks must be streamed instead.
pub fn resident_blocks(model: &Model, budget: usize) -> Result<Option<Vec<Block>>> {
    if !blocks_fit(&model.specs.largest().shapes(), model.num_blocks(), budget) {
        return Ok(None);
    }
    Ok(Some(model.blocks().collect::<Result<_>>()?))
}

/// Refuses a window length or window cap that can measure nothing; `eval` asks before it opens
/// the tokenizer and the device, [`window_count`] again once the text is tokenized.
pub fn check_windows(seqlen: usize, max_windows: Option<usize>) -> Result<()> {
    if seqlen < 2 {
        bail!("--seqlen must be at least 2 to predict a token");
    }
    if max_windows == Some(0) {
        bail!("--max-windows must be at least 1");
    }
    Ok(())
}

/// The windows perplexity measures on `tokens` tokens: ⌊tokens / seqlen⌋, at most
/// `max_windows`; refused when that is none. The memory estimate and the measurement both count
/// them here.
pub fn window_count(tokens: usize, seqlen: usize, max_windows: Option<usize>) -> Result<usize> {
    check_windows(seqlen, max_windows)?;
    let windows = tokens / seqlen;
    if windows == 0 {
        bail!("the text has {tokens} tokens, fewer than one window of {seqlen}");
    }
    Ok(windows.min(max_windows.unwrap_or(usize::MAX)))
}

/// Perplexity of `model` on the token stream `ids`.
pub fn perplexity(
    model: &Model,
    ids: &[u32],
    seqlen: usize,
    max_windows: Option<usize>,
    device_name: &str,
) -> Result<Perplexity> {
    perplexity_within(model, ids, seqlen, max_windows, device_name, RESIDENT_BLOCKS_BYTES)
}

/// [`perplexity`] with the resident-blocks budget as a parameter. Under the budget, blocks are
/// loaded once and each batch of windows runs through all of them; over it, each block is
/// loaded once per group of windows (as many as fit in [`STREAM_GROUP_BYTES`] of hidden
/// states), so memory stays near one block plus the group's hidden states.
pub fn perplexity_within(
    model: &Model,
    ids: &[u32],
    seqlen: usize,
    max_windows: Option<usize>,
    device_name: &str,
    resident_budget: usize,
) -> Result<Perplexity> {
    model.check_seqlen(seqlen)?;
    model.check_ids(ids)?;
    let windows = window_count(ids.len(), seqlen, max_windows)?;
    let resident_blocks = resident_blocks(model, resident_budget)?;
    let resident = resident_blocks.is_some();
    let blocks: Vec<Block> = resident_blocks.unwrap_or_default();
    let pos = model.positions(seqlen);
    let through = |hidden: Vec<Tensor<3>>, block: &Block| -> Vec<Tensor<3>> {
        hidden.into_iter().map(|h| block.forward(h, &pos, None)).collect()
    };
    let batch = batch_size(seqlen, model.config.vocab_size);
    let group = if resident { batch } else { stream_group(seqlen, model.config.hidden_size) };
    let bar = progress_bar(windows, "perplexity");
    let start = Instant::now();
    let mut losses = Vec::with_capacity(windows);
    for first in (0..windows).step_by(group) {
        let n = group.min(windows - first);
        let span = &ids[first * seqlen..(first + n) * seqlen];
        let mut hidden: Vec<Tensor<3>> =
            span.chunks(batch * seqlen).map(|c| model.embed(c, c.len() / seqlen)).collect::<Result<_>>()?;
        if resident {
            for block in &blocks {
                hidden = through(hidden, block);
            }
        } else {
            for block in model.blocks() {
                hidden = through(hidden, &block?);
            }
        }
        for (h, c) in hidden.into_iter().zip(span.chunks(batch * seqlen)) {
            losses.extend(sequence_losses(model.head(h)?, c)?);
        }
        bar.inc(n as u64);
    }
    bar.finish_and_clear();
    let seconds = start.elapsed().as_secs_f64();
    if losses.len() != windows {
        bail!("perplexity: {} window losses for {windows} windows", losses.len());
    }
    if let Some((w, l)) = losses.iter().enumerate().find(|(_, l)| !l.is_finite()) {
        bail!("perplexity is not finite: window {w} has loss {l} (the model's outputs hold NaN or overflow)");
    }
    let mean = losses.iter().map(|&l| l as f64).sum::<f64>() / losses.len() as f64;
    let ppl = finite_ppl(mean, &losses)?;
    Ok(Perplexity {
        ppl,
        windows,
        seqlen,
        tokens_per_s: (windows * seqlen) as f64 / seconds,
        seconds,
        device: device_name.to_string(),
        window_losses: losses,
    })
}

/// exp(`mean`), or one line naming the window with the largest loss where it overflows: an
/// infinite perplexity is no result (JSON cannot even hold it).
fn finite_ppl(mean: f64, losses: &[f32]) -> Result<f64> {
    let ppl = mean.exp();
    if ppl.is_finite() {
        return Ok(ppl);
    }
    let (w, worst) = losses.iter().enumerate().fold((0, f32::MIN), |a, (i, &l)| if l > a.1 { (i, l) } else { a });
    bail!(
        "perplexity overflows: the mean loss is {mean:.1} nats per token, exp of which is beyond f64 (window {w} has the largest, {worst:.1})"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_overflowing_perplexity_is_an_error_naming_the_window() {
        assert_eq!(finite_ppl(0.0, &[0.0]).unwrap(), 1.0);
        let e = finite_ppl(800.0, &[790.0, 810.0, 800.0]).unwrap_err().to_string();
        assert!(e.contains("perplexity overflows") && e.contains("window 1 has the largest, 810.0"), "{e}");
        assert!(!e.contains('\n'));
    }

    #[test]
    fn windows_are_whole_and_capped() {
        // 1000 tokens in windows of 256: three whole windows, the last 232 tokens unused.
        assert_eq!(window_count(1000, 256, None).unwrap(), 3);
        assert_eq!(window_count(1000, 256, Some(2)).unwrap(), 2);
        assert_eq!(window_count(1000, 256, Some(9)).unwrap(), 3);
        assert_eq!(window_count(256, 256, None).unwrap(), 1);
        let refused = |tokens, seqlen, cap| window_count(tokens, seqlen, cap).unwrap_err().to_string();
        assert!(refused(255, 256, None).contains("the text has 255 tokens, fewer than one window of 256"));
        assert!(refused(1000, 256, Some(0)).contains("--max-windows must be at least 1"));
        assert!(refused(1000, 1, None).contains("--seqlen must be at least 2"));
    }
}
