//! `tokenizer.json` through the `tokenizers` crate, with its post-processor (e.g. BOS) applied.

use std::path::Path;

use crate::error::Result;
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
}

/// Reads a UTF-8 text file and tokenizes it once.
pub fn tokenize_file(tokenizer: &Tokenizer, path: &Path) -> Result<Vec<u32>> {
    let text = std::fs::read_to_string(path).map_err(|e| err!("cannot read {}: {e}", path.display()))?;
    if text.trim().is_empty() {
        bail!("{}: the text file is empty", path.display());
    }
    tokenizer.encode(&text)
}
