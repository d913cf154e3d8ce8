//! Memory-mapped safetensors checkpoints, single-file or sharded with an index. Tensors are
//! decoded to f32 only when asked for, so the pruner can hold one block at a time.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use burn::tensor::{DType, TensorData};
use memmap2::Mmap;
use rayon::prelude::*;
use safetensors::SafeTensors;
use safetensors::tensor::{Dtype, Metadata, TensorInfo};

use crate::io::error::{Context, Result};
use crate::{bail, err};

/// One mapped `.safetensors` file with its parsed header.
pub struct Shard {
    pub file_name: String,
    pub mmap: Mmap,
    pub header_len: usize,
    pub metadata: Metadata,
}

impl Shard {
    fn open(path: &Path) -> Result<Shard> {
        let file = File::open(path).context(|| format!("cannot open {}", path.display()))?;
        // SAFETY: the checkpoint is only read; a concurrent writer of the same file is the
        // user's error, as with every memory-mapped loader.
        let mmap = unsafe { Mmap::map(&file) }.context(|| format!("cannot map {}", path.display()))?;
        let (header_len, metadata) = SafeTensors::read_metadata(&mmap).map_err(|e| {
            err!("{}: not a valid safetensors file ({})", path.display(), crate::io::error::one_line(&e.to_string()))
        })?;
        let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        Ok(Shard { file_name, mmap, header_len, metadata })
    }

    /// Raw little-endian bytes of a tensor as stored.
    pub fn bytes(&self, info: &TensorInfo) -> &[u8] {
        let start = 8 + self.header_len;
        &self.mmap[start + info.data_offsets.0..start + info.data_offsets.1]
    }

    /// Hands the map's pages under `bytes` (a slice of it, read) back to the kernel. They are
    /// the file's, so the next read faults them in again; otherwise every page read stays
    /// resident, and a run's resident memory (`memory.peak_host_mib`, what an out-of-memory
    /// killer counts) grows to the whole checkpoint's size however little it holds.
    pub fn release(&self, bytes: &[u8]) {
        let offset = (bytes.as_ptr() as usize).wrapping_sub(self.mmap.as_ptr() as usize);
        if bytes.is_empty() || offset.checked_add(bytes.len()).is_none_or(|end| end > self.mmap.len()) {
            return;
        }
        #[cfg(unix)]
        // SAFETY: `Mmap::map` maps the file shared and read-only (MAP_SHARED, PROT_READ), so its
        // pages are the file's page cache and never written: MADV_DONTNEED only unmaps them, a
        // later read faults the same bytes back in, and every slice into the map stays valid.
        // Failing advice changes nothing, so it is ignored.
        unsafe {
            let _ = self.mmap.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, offset, bytes.len());
        }
    }
}

/// A checkpoint folder's weights: every tensor name resolved to its shard.
pub struct Checkpoint {
    pub dir: PathBuf,
    pub shards: Vec<Shard>,
    /// Name → shard index, in name order. Names are the ones the model reads: a tensor stored
    /// under a prefix that [`Checkpoint::read_under`] renamed is listed under its read name.
    pub names: BTreeMap<String, usize>,
    /// Read name → stored name of the renamed tensors (a multimodal folder's language model,
    /// read as the text-only model it holds).
    renamed: BTreeMap<String, String>,
    /// (stored prefix, read prefix) of those renames, to name a missing tensor as stored.
    prefixes: Vec<(String, String)>,
    /// Present when the checkpoint is sharded; the writer reproduces it.
    pub index_json: Option<serde_json::Value>,
    /// The small files read whole to open the model (the index here; the model layer adds
    /// config.json, a prune the tokenizer), by name: the bytes the run used, which the report
    /// hashes and the output copies, whatever the files hold later.
    pub read: BTreeMap<String, Vec<u8>>,
}

/// A tensor decoded to f32, with its on-disk dtype remembered for writing back.
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
    pub dtype: Dtype,
}

/// Name → shard index; a tensor stored in two shards is refused (which copy a reader took
/// would be a guess, and the writer would write both).
fn tensor_shards(dir: &Path, shards: &[Shard]) -> Result<BTreeMap<String, usize>> {
    let mut names = BTreeMap::new();
    for (i, shard) in shards.iter().enumerate() {
        for name in shard.metadata.tensors().keys() {
            if let Some(first) = names.insert(name.clone(), i) {
                bail!(
                    "{}: tensor \"{name}\" is stored in two shards ({} and {}); keep one copy",
                    dir.display(),
                    shards[first].file_name,
                    shard.file_name
                );
            }
        }
    }
    Ok(names)
}

impl Checkpoint {
    pub fn open(dir: &Path) -> Result<Checkpoint> {
        let index_path = dir.join("model.safetensors.index.json");
        let single = dir.join("model.safetensors");
        let mut read = BTreeMap::new();
        let (shards, index_json) = if index_path.exists() {
            let bytes = std::fs::read(&index_path).context(|| format!("cannot read {}", index_path.display()))?;
            let text = String::from_utf8(bytes.clone()).map_err(|_| err!("{}: not UTF-8", index_path.display()))?;
            read.insert("model.safetensors.index.json".to_string(), bytes);
            let json: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| err!("{}: not valid JSON ({e})", index_path.display()))?;
            let map = json
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| err!("{}: missing \"weight_map\"", index_path.display()))?;
            let mut files: Vec<String> = map.values().filter_map(|v| v.as_str().map(String::from)).collect();
            files.sort();
            files.dedup();
            let mut shards = Vec::new();
            for f in &files {
                let plain = matches!(
                    Path::new(f).components().collect::<Vec<_>>().as_slice(),
                    [std::path::Component::Normal(_)]
                );
                if !plain {
                    bail!("{}: names shard \"{f}\", which is outside the model folder", index_path.display());
                }
                let path = dir.join(f);
                if !path.exists() {
                    bail!("{}: names shard {f}, which does not exist", index_path.display());
                }
                shards.push(Shard::open(&path)?);
            }
            (shards, Some(json))
        } else if single.exists() {
            (vec![Shard::open(&single)?], None)
        } else {
            // Hub repositories of older models (OPT among them) often hold only PyTorch's
            // pickled weights, which are not read: say what to do with them.
            let pickled =
                ["pytorch_model.bin", "pytorch_model.bin.index.json"].into_iter().find(|f| dir.join(f).exists());
            if let Some(f) = pickled {
                bail!(
                    "{}: no model.safetensors or model.safetensors.index.json, only {f} (PyTorch pickle, not read); convert the folder first, e.g. with transformers' save_pretrained(OUT, safe_serialization=True)",
                    dir.display()
                );
            }
            bail!("{}: no model.safetensors or model.safetensors.index.json", dir.display());
        };
        let names = tensor_shards(dir, &shards)?;
        Ok(Checkpoint {
            dir: dir.to_path_buf(),
            shards,
            names,
            index_json,
            read,
            renamed: BTreeMap::new(),
            prefixes: Vec::new(),
        })
    }

    /// Reads every tensor stored under `stored` (e.g. `language_model.model.`) as if named
    /// under `read` (`model.`); the written checkpoint keeps the stored names. A read name that
    /// another tensor already has is refused.
    pub fn read_under(&mut self, stored: &str, read: &str) -> Result<()> {
        let moved: Vec<(String, usize)> =
            self.names.iter().filter(|(n, _)| n.starts_with(stored)).map(|(n, &i)| (n.clone(), i)).collect();
        for (name, i) in moved {
            self.names.remove(&name);
            let new = format!("{read}{}", &name[stored.len()..]);
            if self.names.insert(new.clone(), i).is_some() {
                bail!("{}: tensors \"{name}\" and \"{new}\" would both be read as \"{new}\"", self.dir.display());
            }
            self.renamed.insert(new, name);
        }
        self.prefixes.push((stored.to_string(), read.to_string()));
        Ok(())
    }

    /// The name a tensor the model reads as `name` is stored under.
    pub fn stored_name<'a>(&'a self, name: &'a str) -> &'a str {
        self.renamed.get(name).map_or(name, String::as_str)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.names.contains_key(name)
    }

    pub fn info(&self, name: &str) -> Result<(&Shard, &TensorInfo)> {
        let shard = self.names.get(name).map(|&i| &self.shards[i]);
        match shard.and_then(|s| s.metadata.info(self.stored_name(name)).map(|info| (s, info))) {
            Some(found) => Ok(found),
            None => {
                let stored = match self.prefixes.iter().find(|(_, read)| name.starts_with(read.as_str())) {
                    Some((stored, read)) => format!("{stored}{}", &name[read.len()..]),
                    None => name.to_string(),
                };
                bail!("{}: tensor \"{stored}\" not found in the checkpoint", self.dir.display())
            }
        }
    }

    /// Decodes a tensor to f32 and checks its shape.
    pub fn load(&self, name: &str, shape: &[usize]) -> Result<HostTensor> {
        let (shard, bytes, dtype) = self.checked_bytes(name, shape)?;
        let data = decode_f32(bytes, dtype).map_err(|e| err!("tensor \"{name}\": {e}"))?;
        shard.release(bytes);
        Ok(HostTensor { shape: shape.to_vec(), data, dtype })
    }

    /// Checks a tensor's shape and that every value is finite, decoding nothing: what a run
    /// that never reads a tensor whole (a pruning run's embeddings and head) still refuses.
    pub fn check(&self, name: &str, shape: &[usize]) -> Result<()> {
        let (shard, bytes, _) = self.checked_bytes(name, shape)?;
        shard.release(bytes);
        Ok(())
    }

    /// Rows `ids` of the 2-D tensor `name` [rows, cols], decoded to f32, one after another.
    /// The tensor was checked by [`Checkpoint::check`]; an id past its rows is an error.
    pub fn rows(&self, name: &str, ids: &[u32]) -> Result<Vec<f32>> {
        let (shard, info) = self.info(name)?;
        let [rows, cols] = info.shape[..] else {
            bail!("tensor \"{name}\" has shape {:?}, expected two dimensions", info.shape)
        };
        let row = cols * (info.dtype.bitsize() / 8);
        let bytes = shard.bytes(info);
        let mut stored = Vec::with_capacity(ids.len() * row);
        for &id in ids {
            let id = id as usize;
            if id >= rows {
                bail!("token id {id} is outside \"{name}\" ({rows} rows)");
            }
            stored.extend_from_slice(&bytes[id * row..(id + 1) * row]);
        }
        shard.release(bytes);
        decode_f32(&stored, info.dtype).map_err(|e| err!("tensor \"{name}\": {e}"))
    }

    /// A tensor in the compute dtype `dtype`, ready to upload: the stored bytes themselves when
    /// they already are in it (a half-precision checkpoint in a half-precision run), else
    /// decoded and converted on every core. Decoding a 7B block on one core took longer than
    /// the GPU's work on it, which then waited for the next block.
    pub fn load_data(&self, name: &str, shape: &[usize], dtype: DType) -> Result<TensorData> {
        let (shard, bytes, stored) = self.checked_bytes(name, shape)?;
        let same =
            matches!((stored, dtype), (Dtype::F32, DType::F32) | (Dtype::F16, DType::F16) | (Dtype::BF16, DType::BF16));
        if same {
            let mut copy = vec![0u8; bytes.len()];
            copy.par_chunks_mut(1 << 20).zip(bytes.par_chunks(1 << 20)).for_each(|(to, from)| to.copy_from_slice(from));
            shard.release(bytes);
            return Ok(TensorData::from_bytes_vec(copy, shape.to_vec(), dtype));
        }
        let values = decode_f32(bytes, stored).map_err(|e| err!("tensor \"{name}\": {e}"))?;
        shard.release(bytes);
        if let Some(i) = first_out_of_range(&values, dtype) {
            let (what, max) = half_range(dtype);
            bail!(
                "{}: tensor \"{name}\" holds {} (index {i}), beyond {what}'s range (±{max}); use --dtype f32",
                self.dir.display(),
                values[i]
            );
        }
        Ok(match dtype {
            DType::F16 => TensorData::new(par_map(&values, |&v| half::f16::from_f32(v)), shape.to_vec()),
            DType::BF16 => TensorData::new(par_map(&values, |&v| half::bf16::from_f32(v)), shape.to_vec()),
            _ => TensorData::new(values, shape.to_vec()).convert_dtype(dtype),
        })
    }

    /// A tensor's shard, stored bytes and dtype, its shape checked and every value finite.
    fn checked_bytes(&self, name: &str, shape: &[usize]) -> Result<(&Shard, &[u8], Dtype)> {
        let (shard, info) = self.info(name)?;
        if info.shape != shape {
            bail!("tensor \"{name}\" has shape {:?}, expected {shape:?}", info.shape);
        }
        let bytes = shard.bytes(info);
        if let Some(i) = first_non_finite(bytes, info.dtype) {
            let width = info.dtype.bitsize() / 8;
            let value = decode_f32(&bytes[i * width..(i + 1) * width], info.dtype)?[0];
            bail!(
                "{}: tensor \"{name}\" holds a non-finite value ({value} at index {i}); the checkpoint is damaged",
                self.dir.display()
            );
        }
        Ok((shard, bytes, info.dtype))
    }
}

/// `inputs` mapped by `one` on every core, in blocks whose plain loops the compiler vectorizes.
fn par_map<I: Sync, O: Copy + Default + Send>(inputs: &[I], one: impl Fn(&I) -> O + Sync) -> Vec<O> {
    let mut out = vec![O::default(); inputs.len()];
    out.par_chunks_mut(BLOCK).zip(inputs.par_chunks(BLOCK)).for_each(|(out, inputs)| {
        for (o, i) in out.iter_mut().zip(inputs) {
            *o = one(i);
        }
    });
    out
}

/// Index of the first finite value that `dtype` (f16 or bf16) cannot hold: it would round to
/// infinity there. Found on every core; none for other dtypes.
pub fn first_out_of_range(values: &[f32], dtype: DType) -> Option<usize> {
    match dtype {
        DType::F16 => first_index(values, |v| v.is_finite() && half::f16::from_f32(*v).is_infinite()),
        DType::BF16 => first_index(values, |v| v.is_finite() && half::bf16::from_f32(*v).is_infinite()),
        _ => None,
    }
}

/// A half dtype's name and largest finite value, for messages.
pub fn half_range(dtype: DType) -> (&'static str, f32) {
    match dtype {
        DType::BF16 => ("bf16", half::bf16::MAX.to_f32()),
        _ => ("f16", half::f16::MAX.to_f32()),
    }
}

/// Values per block of the parallel loops.
const BLOCK: usize = 1 << 16;

/// Index of the first item that is `bad`, found on every core: each block is scanned without
/// branching first, and searched only where that finds one.
fn first_index<T: Sync>(items: &[T], bad: impl Fn(&T) -> bool + Sync) -> Option<usize> {
    items.par_chunks(BLOCK).enumerate().find_map_first(|(bi, block)| {
        if !block.iter().fold(false, |any, v| any | bad(v)) {
            return None;
        }
        block.iter().position(&bad).map(|i| bi * BLOCK + i)
    })
}

/// Index of the first NaN or infinity (all exponent bits set).
fn first_non_finite(bytes: &[u8], dtype: Dtype) -> Option<usize> {
    match dtype {
        Dtype::F32 => first_index(bytes.as_chunks::<4>().0, |b| u32::from_le_bytes(*b) & 0x7F80_0000 == 0x7F80_0000),
        Dtype::F16 => first_index(bytes.as_chunks::<2>().0, |b| u16::from_le_bytes(*b) & 0x7C00 == 0x7C00),
        Dtype::BF16 => first_index(bytes.as_chunks::<2>().0, |b| u16::from_le_bytes(*b) & 0x7F80 == 0x7F80),
        _ => None,
    }
}

/// Stored values as f32, decoded on every core.
pub fn decode_f32(bytes: &[u8], dtype: Dtype) -> Result<Vec<f32>> {
    Ok(match dtype {
        Dtype::F32 => par_map(bytes.as_chunks::<4>().0, |b| f32::from_le_bytes(*b)),
        Dtype::F16 => par_map(bytes.as_chunks::<2>().0, |b| half::f16::from_le_bytes(*b).to_f32()),
        Dtype::BF16 => par_map(bytes.as_chunks::<2>().0, |b| half::bf16::from_le_bytes(*b).to_f32()),
        other => bail!("unsupported dtype {other} (supported: F32, F16, BF16)"),
    })
}

/// Encodes f32 values back to a floating dtype; the inverse of [`decode_f32`] for values that
/// came from it, so untouched weights round-trip bit for bit.
pub fn encode_f32(values: &[f32], dtype: Dtype) -> Result<Vec<u8>> {
    Ok(match dtype {
        Dtype::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        Dtype::F16 => values.iter().flat_map(|&v| half::f16::from_f32(v).to_le_bytes()).collect(),
        Dtype::BF16 => values.iter().flat_map(|&v| half::bf16::from_f32(v).to_le_bytes()).collect(),
        other => bail!("unsupported dtype {other} (supported: F32, F16, BF16)"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use safetensors::tensor::TensorView;

    /// A one-tensor checkpoint of `values` stored as `dtype`, in a fresh folder.
    fn checkpoint(values: &[f32], dtype: Dtype, tag: &str) -> Checkpoint {
        let dir = std::env::temp_dir().join(format!("neuroal-weights-{}-{tag}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let bytes = encode_f32(values, dtype).unwrap();
        let view = TensorView::new(dtype, vec![values.len()], &bytes).unwrap();
        safetensors::serialize_to_file([("w", view)], None, &dir.join("model.safetensors")).unwrap();
        Checkpoint::open(&dir).unwrap()
    }

    /// The upload path (stored bytes, or decoded and converted on every core) gives the bits of
    /// the plain path: decode to f32, then burn's conversion. Lengths cross the parallel blocks.
    #[test]
    fn load_data_equals_decode_then_convert() {
        let n = (1 << 16) * 2 + 37;
        let values: Vec<f32> =
            (0..n).map(|i| ((i as f32) * 0.618).sin() * 3.0 + if i % 97 == 0 { 1e-6 } else { 0.0 }).collect();
        for (si, stored) in [Dtype::F32, Dtype::F16, Dtype::BF16].into_iter().enumerate() {
            let ck = checkpoint(&values, stored, &format!("s{si}"));
            for dtype in [DType::F32, DType::F16, DType::BF16] {
                let plain = TensorData::new(ck.load("w", &[n]).unwrap().data, [n]).convert_dtype(dtype);
                let fast = ck.load_data("w", &[n], dtype).unwrap();
                assert_eq!(fast.dtype(), dtype);
                assert_eq!(fast.as_bytes(), plain.as_bytes(), "{stored:?} stored, {dtype:?} computed");
            }
            let _ = std::fs::remove_dir_all(&ck.dir);
        }
    }

    /// The first non-finite value is the one reported, also past the first parallel block.
    #[test]
    fn the_first_non_finite_value_is_named() {
        let n = (1 << 16) * 3;
        for (si, stored) in [Dtype::F32, Dtype::F16, Dtype::BF16].into_iter().enumerate() {
            let mut values = vec![0.5f32; n];
            values[70_001] = f32::INFINITY;
            values[150_000] = f32::NAN;
            let ck = checkpoint(&values, stored, &format!("nf{si}"));
            let e = ck.load_data("w", &[n], DType::F32).unwrap_err().to_string();
            assert!(e.contains("holds a non-finite value (inf at index 70001)"), "{e}");
            let _ = std::fs::remove_dir_all(&ck.dir);
        }
    }

    /// KiB of this process's memory resident in the mapping that holds `ptr` (Linux's smaps).
    #[cfg(target_os = "linux")]
    fn resident_kib(ptr: *const u8) -> u64 {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut inside = false;
        for line in smaps.lines() {
            let range = line
                .split_whitespace()
                .next()
                .and_then(|r| r.split_once('-'))
                .and_then(|(a, b)| Some((usize::from_str_radix(a, 16).ok()?, usize::from_str_radix(b, 16).ok()?)));
            if let Some((start, end)) = range.filter(|_| !line.starts_with(|c: char| c.is_ascii_uppercase())) {
                inside = (start..end).contains(&(ptr as usize));
            } else if inside && let Some(kib) = line.strip_prefix("Rss:") {
                return kib.trim().trim_end_matches("kB").trim().parse().unwrap();
            }
        }
        panic!("no mapping holds {ptr:?}");
    }

    /// A tensor read through any of the readers leaves none of its pages resident in this
    /// process; read through the map directly, they all are (what the readers used to leave).
    #[cfg(target_os = "linux")]
    #[test]
    fn read_tensors_leave_no_pages_resident() {
        let n = 1 << 20;
        let values: Vec<f32> = (0..n).map(|i| (i % 1000) as f32).collect();
        let ck = checkpoint(&values, Dtype::F32, "resident");
        let ptr = ck.shards[0].mmap.as_ptr();
        // The header's page is read at opening; 4 MiB of values are not.
        let touch = |ck: &Checkpoint| {
            let (shard, info) = ck.info("w").unwrap();
            shard.bytes(info).iter().step_by(4096).map(|&b| b as u64).sum::<u64>()
        };
        // Kept, so that the reads are not optimized away.
        std::hint::black_box(touch(&ck));
        assert!(resident_kib(ptr) >= 4096, "{} KiB", resident_kib(ptr));
        ck.check("w", &[n]).unwrap();
        assert!(resident_kib(ptr) <= 8, "after check: {} KiB", resident_kib(ptr));
        let loaded = ck.load("w", &[n]).unwrap();
        assert_eq!(loaded.data, values);
        assert!(resident_kib(ptr) <= 8, "after load: {} KiB", resident_kib(ptr));
        ck.load_data("w", &[n], DType::F16).unwrap();
        ck.load_data("w", &[n], DType::F32).unwrap();
        assert!(resident_kib(ptr) <= 8, "after load_data: {} KiB", resident_kib(ptr));
        let _ = std::fs::remove_dir_all(&ck.dir);
    }
}
