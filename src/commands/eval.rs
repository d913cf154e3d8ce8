//! `neuroal eval`: perplexity on a text, the papers' way (non-overlapping windows).

use std::path::Path;

use crate::commands::Compute;
use crate::io::error::{Result, check_input_file, check_model_folder};
use crate::io::tokenizer::{Tokenizer, tokenize_checked};
use crate::measure::perplexity::{check_windows, default_seqlen, perplexity, window_count};
use crate::outln;

/// Checks the folder, the text and the windows before opening a device; prints the perplexity
/// (or its JSON).
pub fn run(
    model: &Path,
    text: &Path,
    seqlen: Option<usize>,
    max_windows: Option<usize>,
    compute: &Compute,
    json: bool,
) -> Result<()> {
    check_model_folder(model)?;
    check_input_file(text, "text file")?;
    let (config, checkpoint) = crate::model::check_model_dir(model)?;
    let seqlen = seqlen.unwrap_or_else(|| default_seqlen(&config));
    config.check_seqlen(seqlen)?;
    check_windows(seqlen, max_windows)?;
    let tokenizer = Tokenizer::open(model)?;
    let ids = tokenize_checked(&tokenizer, model, text, config.vocab_size)?;
    let windows = window_count(ids.len(), seqlen, max_windows)?;
    let measure = crate::measure::memory::Measure { perplexity: Some((windows, seqlen)), zeroshot: None };
    let (m, described) = compute.load(config, checkpoint, &measure)?;
    let result = perplexity(&m, &ids, seqlen, max_windows, &described)?;
    if json {
        return crate::io::error::write_json(&result, true);
    }
    outln!(
        "perplexity {:.4} ({} windows of {} tokens, {:.0} tokens/s, {})",
        result.ppl,
        result.windows,
        result.seqlen,
        result.tokens_per_s,
        result.device
    )
}
