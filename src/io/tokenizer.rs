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
    Ok(tokenize_hashed(tokenizer, path)?.0)
}

/// [`tokenize_file`], with the SHA-256 of exactly the bytes tokenized (the file is read once: a
/// file changed during a run cannot give the report another text's hash).
pub fn tokenize_hashed(tokenizer: &Tokenizer, path: &Path) -> Result<(Vec<u32>, String)> {
    check_fits(path)?;
    let bytes =
        std::fs::read(path).map_err(|e| err!("cannot read {}: {}", path.display(), crate::io::error::io_words(&e)))?;
    let hash = crate::io::provenance::sha256_bytes(&bytes);
    let text = String::from_utf8(bytes).map_err(|_| err!("{}: not UTF-8 text", path.display()))?;
    if text.trim().is_empty() {
        bail!("{}: the text file is empty", path.display());
    }
    Ok((tokenizer.encode(&text)?, hash))
}

/// [`tokenize_file`], refusing ids the model has no embedding for: a tokenizer.json that does
/// not belong to the model would otherwise index past the embedding table.
pub fn tokenize_checked(tokenizer: &Tokenizer, model_dir: &Path, path: &Path, vocab_size: usize) -> Result<Vec<u32>> {
    Ok(tokenize_checked_hashed(tokenizer, model_dir, path, vocab_size)?.0)
}

/// Bytes of memory the tokenizer takes per byte of text, at most (a 2 GB file of NUL bytes
/// asked for 17 GB): a text that cannot fit is refused before it is read.
const TOKENIZE_BYTES_PER_BYTE: u128 = 12;

fn check_fits(path: &Path) -> Result<()> {
    let size = std::fs::metadata(path).map(|m| m.len() as u128).unwrap_or(0);
    let need = size * TOKENIZE_BYTES_PER_BYTE;
    match crate::io::host::available_host() {
        Some(free) if need > free => bail!(
            "{}: {} of text; tokenizing it needs about {}, more than the {} this machine has free; use a shorter text",
            path.display(),
            crate::io::error::human(size),
            crate::io::error::human(need),
            crate::io::error::human(free)
        ),
        _ => Ok(()),
    }
}

/// [`tokenize_checked`] with [`tokenize_hashed`]'s hash.
pub fn tokenize_checked_hashed(
    tokenizer: &Tokenizer,
    model_dir: &Path,
    path: &Path,
    vocab_size: usize,
) -> Result<(Vec<u32>, String)> {
    let (ids, hash) = tokenize_hashed(tokenizer, path)?;
    if let Some(&max) = ids.iter().max()
        && max as usize >= vocab_size
    {
        bail!(
            "{}: gives token id {max} for {}, but the model's vocab_size is {vocab_size}; the tokenizer does not belong to this model",
            model_dir.join("tokenizer.json").display(),
            path.display()
        );
    }
    Ok((ids, hash))
}
