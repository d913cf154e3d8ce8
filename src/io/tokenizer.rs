//! `tokenizer.json` through the `tokenizers` crate, with its post-processor (e.g. BOS) applied.

use std::path::Path;

use crate::io::error::Result;
use crate::{bail, err};

pub struct Tokenizer(tokenizers::Tokenizer);

impl Tokenizer {
    pub fn open(model_dir: &Path) -> Result<Tokenizer> {
        let path = model_dir.join("tokenizer.json");
        if !path.exists() {
            bail!("{}: no tokenizer.json", model_dir.display());
        }
        let inner = tokenizers::Tokenizer::from_file(&path).map_err(|e| err!("{}: {e}", path.display()))?;
        Ok(Tokenizer(inner))
    }

    /// The whole text as one sequence, special tokens added as the post-processor says.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.0.encode(text, true).map_err(|e| err!("tokenization failed: {e}"))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Text without special tokens (a continuation appended to an encoded context).
    pub fn encode_plain(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.0.encode(text, false).map_err(|e| err!("tokenization failed: {e}"))?;
        Ok(enc.get_ids().to_vec())
    }
}

/// Reads a UTF-8 text file and tokenizes it once.
pub fn tokenize_file(tokenizer: &Tokenizer, path: &Path) -> Result<Vec<u32>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| err!("cannot read {}: {}", path.display(), crate::io::error::io_words(&e)))?;
    if text.trim().is_empty() {
        bail!("{}: the text file is empty", path.display());
    }
    tokenizer.encode(&text)
}

/// [`tokenize_file`], refusing ids the model has no embedding for: a tokenizer.json that does
/// not belong to the model would otherwise index past the embedding table.
pub fn tokenize_checked(tokenizer: &Tokenizer, model_dir: &Path, path: &Path, vocab_size: usize) -> Result<Vec<u32>> {
    let ids = tokenize_file(tokenizer, path)?;
    if let Some(&max) = ids.iter().max()
        && max as usize >= vocab_size
    {
        bail!(
            "{}: gives token id {max} for {}, but the model's vocab_size is {vocab_size}; the tokenizer does not belong to this model",
            model_dir.join("tokenizer.json").display(),
            path.display()
        );
    }
    Ok(ids)
}
