//! `tokenizer.json` through the `tokenizers` crate, with its post-processor (e.g. BOS) applied.

use std::path::Path;

use crate::io::error::Result;
use crate::{bail, err};

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// tokenizer.json as read: what the report hashes and the output copies.
    pub bytes: Vec<u8>,
}

impl Tokenizer {
    pub fn open(model_dir: &Path) -> Result<Tokenizer> {
        let path = model_dir.join("tokenizer.json");
        if !path.exists() {
            bail!("{}: no tokenizer.json", model_dir.display());
        }
        let bytes = std::fs::read(&path)
            .map_err(|e| err!("cannot read {}: {}", path.display(), crate::io::error::io_words(&e)))?;
        let inner = tokenizers::Tokenizer::from_bytes(&bytes).map_err(|e| err!("{}: {e}", path.display()))?;
        Ok(Tokenizer { inner, bytes })
    }

    /// The whole text as one sequence, special tokens added as the post-processor says. A text
    /// over [`PIECE_BYTES`] is tokenized in pieces ([`Tokenizer::encode_in_pieces`]): the
    /// tokenizer's bookkeeping takes about 12 bytes per byte of text at once.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        if text.len() > PIECE_BYTES {
            return self.encode_in_pieces(text, PIECE_BYTES);
        }
        let enc = self.inner.encode(text, true).map_err(|e| err!("tokenization failed: {e}"))?;
        Ok(enc.get_ids().to_vec())
    }

    /// [`Tokenizer::encode`] piece by piece, pieces of about `piece` bytes cut after a line break
    /// that a word follows, where byte-level tokenizers always end a token: the ids equal the
    /// whole text's. Each cut is checked (the text around it tokenized whole and in two must
    /// agree), so a tokenizer that would tokenize pieces differently (one that prefixes every
    /// sequence with a space marker) is refused rather than trusted. The special tokens the
    /// post-processor adds go once around the whole.
    pub fn encode_in_pieces(&self, text: &str, piece: usize) -> Result<Vec<u32>> {
        let with = self.inner.encode("a", true).map_err(|e| err!("tokenization failed: {e}"))?.get_ids().to_vec();
        let plain = self.encode_plain("a")?;
        let at = (0..=with.len().saturating_sub(plain.len()))
            .find(|&i| with[i..].starts_with(&plain))
            .ok_or_else(|| err!("the tokenizer's special tokens cannot be told apart from the text's"))?;
        let (prefix, suffix) = (&with[..at], &with[at + plain.len()..]);
        let mut ids = prefix.to_vec();
        let mut start = 0;
        while start < text.len() {
            let end = next_cut(text, start + piece).unwrap_or(text.len());
            if end < text.len() {
                let (lo, hi) =
                    (floor_char(text, end.saturating_sub(1024)), floor_char(text, (end + 1024).min(text.len())));
                let mut split = self.encode_plain(&text[lo..end])?;
                split.extend(self.encode_plain(&text[end..hi])?);
                if split != self.encode_plain(&text[lo..hi])? {
                    bail!(
                        "the text is too large to tokenize whole here, and this tokenizer does not tokenize it the same in pieces; use a shorter text"
                    );
                }
            }
            ids.extend(self.encode_plain(&text[start..end])?);
            start = end;
        }
        ids.extend_from_slice(suffix);
        Ok(ids)
    }

    /// Text without special tokens (a continuation appended to an encoded context).
    pub fn encode_plain(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.inner.encode(text, false).map_err(|e| err!("tokenization failed: {e}"))?;
        Ok(enc.get_ids().to_vec())
    }
}

/// Texts longer than this are tokenized in pieces of about this size.
pub const PIECE_BYTES: usize = 32 << 20;

/// The first place at or after `from` just past a line break that a word follows.
fn next_cut(text: &str, from: usize) -> Option<usize> {
    let bytes = text.as_bytes();
    let mut i = from;
    while i + 1 < bytes.len() {
        if bytes[i] == b'\n' && !bytes[i + 1].is_ascii_whitespace() && bytes[i + 1] != b'\n' {
            return Some(i + 1);
        }
        i += 1;
    }
    None
}

/// The nearest char boundary at or before `i`.
fn floor_char(text: &str, mut i: usize) -> usize {
    while !text.is_char_boundary(i) {
        i -= 1;
    }
    i
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
    // The text, its ids (a token per byte at worst, twice while the list grows), and one
    // piece's bookkeeping.
    let need = size + size * 8 + size.min(PIECE_BYTES as u128) * TOKENIZE_BYTES_PER_BYTE;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference is the whole text tokenized at once.
    #[test]
    fn pieces_give_the_whole_texts_ids() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let tok = Tokenizer::open(&root.join("assets/tiny-llama")).unwrap();
        let text = std::fs::read_to_string(root.join("assets/sample.txt")).unwrap();
        let whole = tok.encode(&text).unwrap();
        for piece in [1, 64, 300, 1000] {
            assert_eq!(tok.encode_in_pieces(&text, piece).unwrap(), whole, "pieces of {piece}");
        }
        let shared = root.join("../shared");
        let tok = Tokenizer::open(&shared.join("models/wt2-llama")).unwrap();
        let text = std::fs::read_to_string(shared.join("data/wikitext-2/valid.txt")).unwrap();
        let whole = tok.encode(&text).unwrap();
        assert_eq!(tok.encode_in_pieces(&text, 64 << 10).unwrap(), whole);
    }

    /// A tokenizer that marks the start of every sequence would tokenize pieces differently:
    /// refused, not trusted.
    #[test]
    fn a_tokenizer_that_marks_every_sequence_is_refused() {
        let json = r#"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],"normalizer":null,
            "pre_tokenizer":{"type":"Metaspace","replacement":"▁","prepend_scheme":"always","split":true},
            "post_processor":null,"decoder":null,
            "model":{"type":"WordLevel","vocab":{"[UNK]":0,"▁a":1},"unk_token":"[UNK]"}}"#;
        let inner = tokenizers::Tokenizer::from_bytes(json.as_bytes()).unwrap();
        let tok = Tokenizer { inner, bytes: json.as_bytes().to_vec() };
        let text = "a b\nb a\na b\nb a\n".repeat(50);
        let e = tok.encode_in_pieces(&text, 10).unwrap_err().to_string();
        assert!(e.contains("does not tokenize it the same in pieces"), "{e}");
    }
}
