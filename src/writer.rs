//! Writes a pruned checkpoint in the input's layout: same shards, tensor names, dtypes and
//! index; pruned weights zeroed in their on-disk bytes (so kept weights are bit-identical in any
//! dtype), every other tensor copied byte for byte. Written into a temporary folder beside the
//! destination and renamed at the end, so a failure never leaves a half-written output.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, TensorView};

use crate::error::{Context, Result};
use crate::pipeline::LayerMask;
use crate::weights::Checkpoint;
use crate::{bail, err};

/// Files copied next to the weights when present.
const SIDE_FILES: [&str; 5] =
    ["config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"];

/// Refuses destinations that would overwrite the input or an existing folder (without force).
pub fn check_destination(input: &Path, out: &Path, force: bool) -> Result<()> {
    let input_abs = input.canonicalize().context(|| format!("{}", input.display()))?;
    let parent = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let parent_abs = parent.canonicalize().map_err(|_| err!("{}: the output's parent folder does not exist", out.display()))?;
    let out_abs = parent_abs.join(out.file_name().ok_or_else(|| err!("{}: not a folder name", out.display()))?);
    if out_abs.starts_with(&input_abs) {
        bail!("{}: the output must not be inside the input folder {}", out.display(), input.display());
    }
    if input_abs.starts_with(&out_abs) {
        bail!("{}: the output must not contain the input folder", out.display());
    }
    if out.exists() && !force {
        bail!("{}: already exists (use --force to replace it)", out.display());
    }
    Ok(())
}

/// A temporary folder beside `out`, removed on drop unless [`Staging::commit`] renamed it.
pub struct Staging {
    pub dir: PathBuf,
    out: PathBuf,
    done: bool,
}

impl Staging {
    pub fn new(out: &Path) -> Result<Staging> {
        let name = out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let parent = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let dir = parent.join(format!(".{name}.tmp-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).context(|| format!("cannot create {}", dir.display()))?;
        Ok(Staging { dir, out: out.to_path_buf(), done: false })
    }

    /// Replaces `out` (if any) with the staged folder.
    pub fn commit(mut self) -> Result<()> {
        if self.out.exists() {
            std::fs::remove_dir_all(&self.out).context(|| format!("cannot replace {}", self.out.display()))?;
        }
        std::fs::rename(&self.dir, &self.out).context(|| format!("cannot rename to {}", self.out.display()))?;
        self.done = true;
        Ok(())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn element_size(dtype: Dtype) -> Result<usize> {
    match dtype {
        Dtype::F32 => Ok(4),
        Dtype::F16 | Dtype::BF16 => Ok(2),
        other => bail!("cannot prune a tensor of dtype {other:?}"),
    }
}

/// Writes the checkpoint with `masks` applied into `dir` (the staging folder).
pub fn write_checkpoint(input: &Checkpoint, masks: &[LayerMask], dir: &Path) -> Result<()> {
    let by_name: HashMap<&str, &LayerMask> = masks.iter().map(|m| (m.name.as_str(), m)).collect();
    for shard in &input.shards {
        let mut tensors: Vec<(String, Dtype, Vec<usize>, Cow<[u8]>)> = Vec::new();
        for (name, info) in shard.metadata.tensors() {
            let bytes = shard.bytes(info);
            let data = match by_name.get(name.as_str()) {
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
            .map_err(|e| err!("cannot build tensor views: {e:?}"))?;
        let path = dir.join(&shard.file_name);
        safetensors::serialize_to_file(views, shard.metadata.metadata().clone(), &path)
            .map_err(|e| err!("cannot write {}: {e:?}", path.display()))?;
    }
    if let Some(index) = &input.index_json {
        let text = serde_json::to_string_pretty(index).unwrap_or_default();
        std::fs::write(dir.join("model.safetensors.index.json"), text).context(|| "cannot write the index".into())?;
    }
    for f in SIDE_FILES {
        let src = input.dir.join(f);
        if src.exists() {
            std::fs::copy(&src, dir.join(f)).context(|| format!("cannot copy {f}"))?;
        }
    }
    Ok(())
}
