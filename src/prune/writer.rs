//! Writes a pruned checkpoint in the input's layout: same shards, tensor names, dtypes and
//! index; pruned weights zeroed in their on-disk bytes (so kept weights are bit-identical in any
//! dtype), or, where the pruner changed kept weights too, the new values re-encoded into the
//! tensor's dtype with pruned entries exact zeros; every other tensor copied byte for byte. Written into the staging folder (see
//! `staging.rs`), so a failure never leaves a half-written output.
//!
//! Every tensor keeps its dtype and shape, so each output shard has its input's header and
//! offsets: the header is copied as stored, and the data is written in chunks at their offsets,
//! on every core. (safetensors' serializer took one core and a copy of each pruned tensor: a
//! 7B-shaped stack of 8 blocks, 3.6 GB, took 9.9 s to write on 2 cores.)

use std::fs::File;
use std::path::Path;

use rayon::prelude::*;
use safetensors::tensor::Dtype;

use crate::io::checkpoint::{Checkpoint, Shard};
use crate::io::error::{Context, Result};
use crate::io::faults::fault;
use crate::io::staging::write_lock;
use crate::prune::mask::LayerMask;
use crate::{bail, err};

/// Endings of files that hold weights: the shards are rewritten, and another format's copy
/// of the weights must not ride along dense in a pruned folder.
const WEIGHT_ENDINGS: [&str; 9] = [".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf", ".onnx"];

/// Elements per chunk: a multiple of 64, so each chunk starts at a mask word (2-4 MB of data).
const CHUNK: usize = 1 << 20;

fn element_size(dtype: Dtype) -> Result<usize> {
    match dtype {
        Dtype::F32 => Ok(4),
        Dtype::F16 | Dtype::BF16 => Ok(2),
        other => bail!("cannot prune a tensor of dtype {other}"),
    }
}

/// What a tensor's bytes become.
#[derive(Clone, Copy)]
enum Edit<'a> {
    /// Copied as stored.
    Keep,
    /// Stored bytes with the pruned elements zeroed.
    Zero(&'a LayerMask),
    /// New values (SparseGPT) in the tensor's dtype, pruned elements exact zeros.
    Replace(&'a LayerMask, &'a [f32]),
}

/// A run of one tensor's elements, written at `offset` in the output file.
struct Piece<'a> {
    stored: &'a [u8],
    dtype: Dtype,
    size: usize,
    first: usize,
    edit: Edit<'a>,
    offset: u64,
}

/// Writes the checkpoint with `masks` applied into `dir` (the staging folder).
pub fn write_checkpoint(input: &Checkpoint, masks: &[LayerMask], dir: &Path) -> Result<()> {
    write_shards(input, masks, dir, CHUNK)
}

fn write_shards(input: &Checkpoint, masks: &[LayerMask], dir: &Path, chunk: usize) -> Result<()> {
    // Masks name tensors as the model reads them; the shards, as they are stored.
    let by_name: std::collections::HashMap<String, &LayerMask> =
        masks.iter().map(|m| (input.stored_name(&m.name).to_string(), m)).collect();
    for (si, shard) in input.shards.iter().enumerate() {
        let pieces = shard_pieces(shard, &by_name, chunk)?;
        let path = dir.join(&shard.file_name);
        {
            let _guard = write_lock();
            write_shard(shard, &pieces, &path)
                .map_err(|e| err!("cannot write {}: {}", path.display(), crate::io::error::io_words(&e)))?;
        }
        fault(&format!("after-shard-{si}"));
    }
    if let Some(index) = &input.index_json {
        let text = serde_json::to_string_pretty(index).map_err(|e| err!("cannot encode the index: {e}"))?;
        let _guard = write_lock();
        std::fs::write(dir.join("model.safetensors.index.json"), text).context(|| "cannot write the index".into())?;
    }
    Ok(())
}

/// Copies every other file directly in the input folder (config, tokenizer files, chat
/// template, generation config, model card…) into `dir` unchanged: each read once, hashed and
/// written; those the run read at its start (`read`: config, tokenizer) as they were then. Not
/// the weights (see [`WEIGHT_ENDINGS`]), the index (rewritten), a report of an earlier run, or
/// folders. Returns (name, SHA-256) of each file copied, in name order.
pub fn copy_other_files(
    input: &Path,
    read: &std::collections::BTreeMap<String, Vec<u8>>,
    dir: &Path,
) -> Result<Vec<(String, String)>> {
    let entries = std::fs::read_dir(input)
        .map_err(|e| err!("cannot read {}: {}", input.display(), crate::io::error::io_words(&e)))?;
    let mut names: Vec<String> = entries
        .flatten()
        // Through links: a Hugging Face cache's snapshot folder holds links to its blobs.
        .filter(|e| std::fs::metadata(e.path()).is_ok_and(|m| m.is_file()))
        .filter_map(|e| e.file_name().to_str().map(String::from))
        .filter(|n| !WEIGHT_ENDINGS.iter().any(|w| n.ends_with(w)))
        .filter(|n| n != "model.safetensors.index.json" && n != "report.json")
        .collect();
    // What the run read is copied even if it has gone from the input since.
    names.extend(read.keys().filter(|n| *n != "model.safetensors.index.json").cloned());
    names.sort();
    names.dedup();
    let mut copied = Vec::with_capacity(names.len());
    for name in names {
        let bytes = match read.get(&name) {
            Some(b) => b.clone(),
            None => std::fs::read(input.join(&name))
                .map_err(|e| err!("cannot read {}: {}", input.join(&name).display(), crate::io::error::io_words(&e)))?,
        };
        let _guard = write_lock();
        std::fs::write(dir.join(&name), &bytes).context(|| format!("cannot copy {name}"))?;
        copied.push((name, crate::io::provenance::sha256_bytes(&bytes)));
    }
    Ok(copied)
}

/// Splits a shard's tensors into pieces of at most `chunk` elements, checking each mask and
/// each set of new values against its tensor.
fn shard_pieces<'a>(
    shard: &'a Shard,
    by_name: &std::collections::HashMap<String, &'a LayerMask>,
    chunk: usize,
) -> Result<Vec<Piece<'a>>> {
    let data_start = (8 + shard.header_len) as u64;
    let mut pieces = Vec::new();
    for (name, info) in shard.metadata.tensors() {
        let stored = shard.bytes(info);
        let (edit, size) = match by_name.get(name.as_str()) {
            Some(m) if m.values.is_some() => {
                let size = element_size(info.dtype)?;
                let values = m.values.as_deref().unwrap_or_default();
                if values.len() * size != stored.len() || m.pruned.len() != values.len() {
                    bail!("new values of {name} do not match its tensor");
                }
                (Edit::Replace(m, values), size)
            }
            Some(m) if m.pruned.count_ones() > 0 => {
                let size = element_size(info.dtype)?;
                if m.pruned.len() * size != stored.len() {
                    bail!("mask of {name} does not match its tensor");
                }
                (Edit::Zero(m), size)
            }
            // Copied as bytes: any dtype, chunked as single bytes.
            _ => (Edit::Keep, 1),
        };
        let elements = stored.len() / size;
        for first in (0..elements.max(1)).step_by(chunk) {
            let end = (first + chunk).min(elements);
            pieces.push(Piece {
                stored: &stored[first * size..end * size],
                dtype: info.dtype,
                size,
                first,
                edit,
                offset: data_start + (info.data_offsets.0 + first * size) as u64,
            });
        }
    }
    Ok(pieces)
}

/// The input's header as stored, then every piece at its offset, side by side.
fn write_shard(shard: &Shard, pieces: &[Piece], path: &Path) -> std::io::Result<()> {
    let file = File::create(path)?;
    file.set_len(shard.mmap.len() as u64)?;
    write_at(&file, &shard.mmap[..8 + shard.header_len], 0)?;
    pieces.par_iter().try_for_each_init(Vec::new, |buf: &mut Vec<u8>, p| {
        write_piece(&file, buf, p)?;
        shard.release(p.stored);
        Ok(())
    })
}

/// One piece into the output file: its stored bytes, with the pruned elements zeroed or the
/// new values encoded.
fn write_piece(file: &File, buf: &mut Vec<u8>, p: &Piece) -> std::io::Result<()> {
    match p.edit {
        Edit::Keep => write_at(file, p.stored, p.offset),
        Edit::Zero(mask) => {
            buf.clear();
            buf.extend_from_slice(p.stored);
            zero_pruned(buf, p.size, mask, p.first);
            write_at(file, buf, p.offset)
        }
        Edit::Replace(mask, values) => {
            buf.clear();
            let values = &values[p.first..p.first + p.stored.len() / p.size];
            match p.dtype {
                Dtype::F32 => buf.extend(values.iter().flat_map(|v| v.to_le_bytes())),
                Dtype::F16 => buf.extend(values.iter().flat_map(|&v| half::f16::from_f32(v).to_le_bytes())),
                _ => buf.extend(values.iter().flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())),
            }
            zero_pruned(buf, p.size, mask, p.first);
            write_at(file, buf, p.offset)
        }
    }
}

/// Zeros the elements of `bytes` (elements of `size` bytes, the first being element `first` of
/// the tensor, a multiple of 64) that `mask` prunes.
fn zero_pruned(bytes: &mut [u8], size: usize, mask: &LayerMask, first: usize) {
    let words = &mask.pruned.words()[first / 64..];
    for (group, &word) in bytes.chunks_mut(64 * size).zip(words) {
        match (word, size) {
            (0, _) => {}
            (u64::MAX, _) => group.fill(0),
            (_, 2) => zero_group::<2>(group, word),
            _ => zero_group::<4>(group, word),
        }
    }
}

/// Zeros the elements of one group of 64 (or fewer, at a tensor's end) whose bit is set, with
/// an AND per element: a branch on each random bit (which LLVM made of a byte loop) took most of
/// the writer's time.
fn zero_group<const S: usize>(group: &mut [u8], word: u64) {
    for (j, element) in group.as_chunks_mut::<S>().0.iter_mut().enumerate() {
        // All ones where kept, zero where pruned.
        let keep = ((word >> j) & 1).wrapping_sub(1) as u32;
        let mut bytes = [0u8; 4];
        bytes[..S].copy_from_slice(element);
        let value = u32::from_le_bytes(bytes) & keep;
        element.copy_from_slice(&value.to_le_bytes()[..S]);
    }
}

#[cfg(unix)]
fn write_at(file: &File, bytes: &[u8], offset: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::write_all_at(file, bytes, offset)
}

#[cfg(windows)]
fn write_at(file: &File, mut bytes: &[u8], mut offset: u64) -> std::io::Result<()> {
    while !bytes.is_empty() {
        let n = std::os::windows::fs::FileExt::seek_write(file, bytes, offset)?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        bytes = &bytes[n..];
        offset += n as u64;
    }
    Ok(())
}

#[cfg(not(any(unix, windows)))]
fn write_at(file: &File, bytes: &[u8], offset: u64) -> std::io::Result<()> {
    use std::io::{Seek, SeekFrom, Write};
    // Without a positional write on this system, seek and write must not interleave between
    // the threads that write one file; the file handle is shared, so the lock is too.
    static AT: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = AT.lock().unwrap_or_else(|e| e.into_inner());
    let mut f = file;
    f.seek(SeekFrom::Start(offset))?;
    f.write_all(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prune::mask::Bits;
    use crate::rng::SplitMix64;
    use safetensors::tensor::TensorView;

    /// Random bytes of `n` elements of `size` bytes, none of them zero.
    fn random_bytes(rng: &mut SplitMix64, n: usize, size: usize) -> Vec<u8> {
        (0..n * size).map(|_| (rng.next_u64() % 255 + 1) as u8).collect()
    }

    /// The chunked writer against safetensors' own serializer fed the expected tensors: the same
    /// file, byte for byte, for chunks smaller and larger than the tensors, ragged lengths,
    /// every dtype, masks all zero, all one and random, new values, and an untouched tensor.
    #[test]
    fn chunked_shards_equal_the_serializers_file() {
        let mut rng = SplitMix64::new(7);
        // (name, dtype, shape, mask density in %: None = no mask, new values?)
        type Spec = (&'static str, Dtype, [usize; 2], Option<u64>, bool);
        let specs: [Spec; 7] = [
            ("a.f16", Dtype::F16, [7, 143], Some(50), false),
            ("b.bf16", Dtype::BF16, [3, 64], Some(100), false),
            ("c.f32", Dtype::F32, [5, 77], Some(30), false),
            ("d.f32", Dtype::F32, [4, 50], Some(0), false),
            ("e.f16", Dtype::F16, [9, 31], Some(60), true),
            ("f.bf16", Dtype::BF16, [2, 200], Some(40), true),
            ("g.i64", Dtype::I64, [3, 11], None, false),
        ];
        let stored: Vec<Vec<u8>> =
            specs.iter().map(|(_, d, s, ..)| random_bytes(&mut rng, s[0] * s[1], d.bitsize() / 8)).collect();
        let dir = std::env::temp_dir().join(format!("neuroal-writer-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let views: Vec<(String, TensorView)> = specs
            .iter()
            .zip(&stored)
            .map(|((n, d, s, ..), b)| (n.to_string(), TensorView::new(*d, s.to_vec(), b).unwrap()))
            .collect();
        let meta = Some(std::collections::HashMap::from([("format".to_string(), "pt".to_string())]));
        safetensors::serialize_to_file(views, meta.clone(), &dir.join("model.safetensors")).unwrap();
        let input = Checkpoint::open(&dir).unwrap();

        let mut masks = Vec::new();
        let mut expected = stored.clone();
        for ((name, dtype, shape, density, new_values), bytes) in specs.iter().zip(expected.iter_mut()) {
            let Some(density) = density else { continue };
            let n = shape[0] * shape[1];
            let size = dtype.bitsize() / 8;
            let flags: Vec<bool> = (0..n).map(|_| rng.next_u64() % 100 < *density).collect();
            let values =
                new_values.then(|| (0..n).map(|_| (rng.next_u64() % 2001) as f32 / 1000.0 - 1.0).collect::<Vec<f32>>());
            for i in 0..n {
                let element = &mut bytes[i * size..(i + 1) * size];
                if flags[i] {
                    element.fill(0);
                } else if let Some(v) = &values {
                    match dtype {
                        Dtype::F16 => element.copy_from_slice(&half::f16::from_f32(v[i]).to_le_bytes()),
                        _ => element.copy_from_slice(&half::bf16::from_f32(v[i]).to_le_bytes()),
                    }
                }
            }
            masks.push(LayerMask {
                name: name.to_string(),
                shape: *shape,
                pruned: Bits::from_flags(flags.into_iter()),
                values,
                routed_tokens: None,
            });
        }
        let views: Vec<(String, TensorView)> = specs
            .iter()
            .zip(&expected)
            .map(|((n, d, s, ..), b)| (n.to_string(), TensorView::new(*d, s.to_vec(), b).unwrap()))
            .collect();
        let want = safetensors::serialize(views, meta).unwrap();

        for chunk in [64, 128, 1 << 20] {
            let out = dir.join(format!("out-{chunk}"));
            std::fs::create_dir_all(&out).unwrap();
            write_shards(&input, &masks, &out, chunk).unwrap();
            assert!(std::fs::read(out.join("model.safetensors")).unwrap() == want, "chunk {chunk}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
