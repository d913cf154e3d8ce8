//! Writes a pruned checkpoint in the input's layout: same shards, tensor names, dtypes and
//! index; pruned weights zeroed in their on-disk bytes (so kept weights are bit-identical in any
//! dtype), or, where the pruner changed kept weights too, the new values re-encoded into the
//! tensor's dtype with pruned entries exact zeros; every other tensor copied byte for byte. Written into the staging folder (see
//! `staging.rs`), so a failure never leaves a half-written output.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;

use safetensors::tensor::{Dtype, TensorView};

use crate::error::{Context, Result};
use crate::mask::LayerMask;
use crate::staging::{fault, write_lock};
use crate::weights::{encode_f32, Checkpoint};
use crate::{bail, err};

/// Files copied next to the weights when present.
const SIDE_FILES: [&str; 5] =
    ["config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"];

fn element_size(dtype: Dtype) -> Result<usize> {
    match dtype {
        Dtype::F32 => Ok(4),
        Dtype::F16 | Dtype::BF16 => Ok(2),
        other => bail!("cannot prune a tensor of dtype {other}"),
    }
}

/// One output tensor: name, dtype, shape and its bytes (borrowed from the input's map where
/// unchanged).
type Entry<'a> = (String, Dtype, Vec<usize>, Cow<'a, [u8]>);

/// Writes the checkpoint with `masks` applied into `dir` (the staging folder).
pub fn write_checkpoint(input: &Checkpoint, masks: &[LayerMask], dir: &Path) -> Result<()> {
    let by_name: HashMap<&str, &LayerMask> = masks.iter().map(|m| (m.name.as_str(), m)).collect();
    for (si, shard) in input.shards.iter().enumerate() {
        let mut tensors: Vec<Entry> = Vec::new();
        for (name, info) in shard.metadata.tensors() {
            let bytes = shard.bytes(info);
            let data = match by_name.get(name.as_str()) {
                // New values (SparseGPT): re-encoded into the tensor's own dtype; pruned
                // entries are exact zeros.
                Some(m) if m.values.is_some() => {
                    let values = m.values.as_deref().unwrap_or_default();
                    if values.len() * element_size(info.dtype)? != bytes.len() || m.pruned.len() != values.len() {
                        bail!("new values of {name} do not match its tensor");
                    }
                    let mut owned = encode_f32(values, info.dtype)?;
                    let size = element_size(info.dtype)?;
                    for i in m.pruned.ones() {
                        owned[i * size..(i + 1) * size].fill(0);
                    }
                    Cow::Owned(owned)
                }
                Some(m) if m.pruned.count_ones() > 0 => {
                    let size = element_size(info.dtype)?;
                    if m.pruned.len() * size != bytes.len() {
                        bail!("mask of {name} does not match its tensor");
                    }
                    let mut owned = bytes.to_vec();
                    for i in m.pruned.ones() {
                        owned[i * size..(i + 1) * size].fill(0);
                    }
                    Cow::Owned(owned)
                }
                _ => Cow::Borrowed(bytes),
            };
            tensors.push((name, info.dtype, info.shape.clone(), data));
        }
        let views = tensors
            .iter()
            .map(|(n, d, s, b)| TensorView::new(*d, s.clone(), b).map(|v| (n.clone(), v)))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| err!("cannot build tensor views: {e}"))?;
        let path = dir.join(&shard.file_name);
        {
            let _guard = write_lock();
            safetensors::serialize_to_file(views, shard.metadata.metadata().clone(), &path)
                .map_err(|e| err!("cannot write {}: {}", path.display(), crate::error::one_line(&e.to_string())))?;
        }
        fault(&format!("after-shard-{si}"));
    }
    if let Some(index) = &input.index_json {
        let text = serde_json::to_string_pretty(index).map_err(|e| err!("cannot encode the index: {e}"))?;
        let _guard = write_lock();
        std::fs::write(dir.join("model.safetensors.index.json"), text).context(|| "cannot write the index".into())?;
    }
    for f in SIDE_FILES {
        let src = input.dir.join(f);
        if src.exists() {
            let _guard = write_lock();
            std::fs::copy(&src, dir.join(f)).context(|| format!("cannot copy {f}"))?;
        }
    }
    Ok(())
}
