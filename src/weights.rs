//! Memory-mapped safetensors checkpoints, single-file or sharded with an index. Tensors are
//! decoded to f32 only when asked for, so the pruner can hold one block at a time.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::tensor::{Dtype, Metadata, TensorInfo};
use safetensors::SafeTensors;

use crate::error::{Context, Result};
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
        let (header_len, metadata) = SafeTensors::read_metadata(&mmap)
            .map_err(|e| err!("{}: not a valid safetensors file ({})", path.display(), crate::error::one_line(&e.to_string())))?;
        let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        Ok(Shard { file_name, mmap, header_len, metadata })
    }

    /// Raw little-endian bytes of a tensor as stored.
    pub fn bytes(&self, info: &TensorInfo) -> &[u8] {
        let start = 8 + self.header_len;
        &self.mmap[start + info.data_offsets.0..start + info.data_offsets.1]
    }
}

/// A checkpoint folder's weights: every tensor name resolved to its shard.
pub struct Checkpoint {
    pub dir: PathBuf,
    pub shards: Vec<Shard>,
    /// Name → shard index, in name order.
    pub names: BTreeMap<String, usize>,
    /// Present when the checkpoint is sharded; the writer reproduces it.
    pub index_json: Option<serde_json::Value>,
}

/// A tensor decoded to f32, with its on-disk dtype remembered for writing back.
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
    pub dtype: Dtype,
}

impl Checkpoint {
    pub fn open(dir: &Path) -> Result<Checkpoint> {
        let index_path = dir.join("model.safetensors.index.json");
        let single = dir.join("model.safetensors");
        let (shards, index_json) = if index_path.exists() {
            let text = std::fs::read_to_string(&index_path).context(|| format!("cannot read {}", index_path.display()))?;
            let json: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| err!("{}: not valid JSON ({e})", index_path.display()))?;
            let map = json
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| err!("{}: missing \"weight_map\"", index_path.display()))?;
            let mut files: Vec<String> = map.values().filter_map(|v| v.as_str().map(String::from)).collect();
            files.sort();
            files.dedup();
            let mut shards = Vec::new();
            for f in &files {
                let plain = matches!(Path::new(f).components().collect::<Vec<_>>().as_slice(), [std::path::Component::Normal(_)]);
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
            bail!("{}: no model.safetensors or model.safetensors.index.json", dir.display());
        };
        let mut names = BTreeMap::new();
        for (i, shard) in shards.iter().enumerate() {
            for name in shard.metadata.tensors().keys() {
                names.insert(name.clone(), i);
            }
        }
        Ok(Checkpoint { dir: dir.to_path_buf(), shards, names, index_json })
    }

    pub fn contains(&self, name: &str) -> bool {
        self.names.contains_key(name)
    }

    pub fn info(&self, name: &str) -> Result<(&Shard, &TensorInfo)> {
        let shard = self.names.get(name).map(|&i| &self.shards[i]);
        match shard.and_then(|s| s.metadata.info(name).map(|info| (s, info))) {
            Some(found) => Ok(found),
            None => bail!("{}: tensor \"{name}\" not found in the checkpoint", self.dir.display()),
        }
    }

    /// Decodes a tensor to f32 and checks its shape.
    pub fn load(&self, name: &str, shape: &[usize]) -> Result<HostTensor> {
        let (shard, info) = self.info(name)?;
        if info.shape != shape {
            bail!("tensor \"{name}\" has shape {:?}, expected {shape:?}", info.shape);
        }
        let data = decode_f32(shard.bytes(info), info.dtype).map_err(|e| err!("tensor \"{name}\": {e}"))?;
        if let Some(i) = data.iter().position(|v| !v.is_finite()) {
            bail!("{}: tensor \"{name}\" holds a non-finite value ({} at index {i}); the checkpoint is damaged", self.dir.display(), data[i]);
        }
        Ok(HostTensor { shape: info.shape.clone(), data, dtype: info.dtype })
    }
}

pub fn decode_f32(bytes: &[u8], dtype: Dtype) -> Result<Vec<f32>> {
    Ok(match dtype {
        Dtype::F32 => bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
        Dtype::F16 => bytes.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        Dtype::BF16 => bytes.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
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
