//! A run's progress, kept in its staging folder as each unit of work finishes: the settings
//! and input hashes it started with, every NeuroAL candidate group's scores, OWL's ratios and
//! each pruned block's masks. `prune --resume` replays it and continues; since every saved value
//! is stored bit for bit, the result is byte-identical to a run that was never stopped.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde_json::Value;

use crate::io::error::{Context, Result};
use crate::io::staging::{RESUME_DIR, write_whole};
use crate::prune::mask::{Bits, LayerMask};
use crate::prune::neuroal::{Evaluation, SavedScores};
use crate::{bail, err};

pub struct Progress {
    dir: PathBuf,
    state: Mutex<State>,
}

/// A run's state (settings and input hashes), or the work that makes it: hashing a checkpoint's
/// largest shard takes seconds on one core (LLaMA-2-7B's 10 GB: about 7 s), so a run starts
/// without waiting for it, and the state is written before the first unit of progress: no
/// progress is ever saved without the state a resume checks it against.
pub enum State {
    Ready(Value),
    Pending(Box<dyn FnOnce() -> Result<Value> + Send>),
    Failed(String),
}

/// The first key (as `section.key`) whose value differs between two states.
fn first_difference(a: &Value, b: &Value, at: &str) -> Option<(String, String, String)> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            keys.into_iter().find_map(|k| {
                let path = if at.is_empty() { k.clone() } else { format!("{at}.{k}") };
                first_difference(x.get(k).unwrap_or(&Value::Null), y.get(k).unwrap_or(&Value::Null), &path)
            })
        }
        _ if a == b => None,
        _ => Some((at.to_string(), a.to_string(), b.to_string())),
    }
}

impl Progress {
    /// Checks that the state an interrupted run recorded in `staging` is the one this run
    /// would record: same settings, same input bytes.
    pub fn verify(staging: &Path, state: &Value) -> Result<()> {
        let path = staging.join(RESUME_DIR).join("state.json");
        {
            let text =
                std::fs::read_to_string(&path).context(|| format!("--resume: cannot read {}", path.display()))?;
            let saved: Value = serde_json::from_str(&text)
                .map_err(|e| err!("--resume: {} is damaged ({e}); rerun without --resume", path.display()))?;
            if let Some((key, was, now)) = first_difference(&saved, state, "") {
                if let Some(input) = key.strip_prefix("inputs.") {
                    bail!(
                        "--resume: {input} changed since the interrupted run (SHA-256 {was} then, {now} now); rerun without --resume to start over"
                    );
                }
                bail!(
                    "--resume: the interrupted run used {key} = {was}, this one {now}; rerun with the same settings, or without --resume to start over"
                );
            }
        }
        Ok(())
    }

    /// Starts recording into `staging`, or, when `resumed` (its state verified, and so
    /// [`State::Ready`]), continues. A ready state is written at once, a pending one when it is
    /// first needed.
    pub fn open(staging: &Path, state: State, resumed: bool) -> Result<Progress> {
        let dir = staging.join(RESUME_DIR);
        if !resumed {
            std::fs::create_dir_all(&dir).context(|| format!("cannot create {}", dir.display()))?;
            if let State::Ready(v) = &state {
                write_state(&dir, v)?;
            }
        }
        Ok(Progress { dir, state: Mutex::new(state) })
    }

    /// The run's state, made (and written) first if still pending.
    pub fn state(&self) -> Result<Value> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        *state = match std::mem::replace(&mut *state, State::Failed(String::new())) {
            State::Pending(make) => match make().and_then(|v| write_state(&self.dir, &v).map(|_| v)) {
                Ok(v) => State::Ready(v),
                Err(e) => State::Failed(e.to_string()),
            },
            other => other,
        };
        match &*state {
            State::Ready(v) => Ok(v.clone()),
            State::Failed(e) => Err(err!("{e}")),
            State::Pending(_) => Err(err!("the run's state was not made")),
        }
    }

    fn read(&self, name: &str) -> Result<Option<Vec<u8>>> {
        let path = self.dir.join(name);
        match std::fs::read(&path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(err!("--resume: cannot read {}: {}", path.display(), crate::io::error::io_words(&e))),
        }
    }

    pub fn block_masks(&self, block: usize) -> Result<Option<Vec<LayerMask>>> {
        let Some(bytes) = self.read(&format!("block-{block}.masks"))? else { return Ok(None) };
        let mut r = Reader::new(&bytes, &self.dir);
        let n = r.u64()? as usize;
        let mut masks = Vec::with_capacity(n);
        for _ in 0..n {
            let name = String::from_utf8(r.bytes()?.to_vec()).map_err(|_| r.damaged())?;
            let shape = [r.u64()? as usize, r.u64()? as usize];
            let len = r.u64()? as usize;
            let words = (0..len.div_ceil(64)).map(|_| r.u64()).collect::<Result<Vec<u64>>>()?;
            let values = match r.u64()? {
                0 => None,
                _ => Some(r.f32s()?),
            };
            let routed_tokens = match r.u64()? {
                0 => None,
                n => Some(n as usize - 1),
            };
            masks.push(LayerMask { name, shape, pruned: Bits::from_words(words, len), values, routed_tokens });
        }
        r.end()?;
        Ok(Some(masks))
    }

    pub fn save_block_masks(&self, block: usize, masks: &[LayerMask]) -> Result<()> {
        self.state()?;
        let mut w = Vec::new();
        put(&mut w, masks.len() as u64);
        for m in masks {
            put_bytes(&mut w, m.name.as_bytes());
            put(&mut w, m.shape[0] as u64);
            put(&mut w, m.shape[1] as u64);
            put(&mut w, m.pruned.len() as u64);
            for &word in m.pruned.words() {
                put(&mut w, word);
            }
            match &m.values {
                None => put(&mut w, 0),
                Some(v) => {
                    put(&mut w, 1);
                    put(&mut w, v.len() as u64);
                    w.extend(v.iter().flat_map(|x| x.to_le_bytes()));
                }
            }
            put(&mut w, m.routed_tokens.map_or(0, |n| n as u64 + 1));
        }
        write_whole(&self.dir.join(format!("block-{block}.masks")), &w)
    }

    /// A group of NeuroAL candidates' results, saved by [`Progress::save_evaluations`].
    pub fn evaluations(&self, key: &str) -> Result<Option<Vec<Evaluation>>> {
        let Some(bytes) = self.read(&format!("search-{key}.evals"))? else { return Ok(None) };
        let mut r = Reader::new(&bytes, &self.dir);
        let n = r.u64()? as usize;
        let mut evals = Vec::with_capacity(n);
        for _ in 0..n {
            let score = f64::from_bits(r.u64()?);
            let blocks = r.u64()? as usize;
            let mut d = Vec::with_capacity(blocks);
            for _ in 0..blocks {
                let linears = r.u64()? as usize;
                let mut per = Vec::with_capacity(linears);
                for _ in 0..linears {
                    per.push(r.f32s()?);
                }
                d.push(per);
            }
            evals.push(Evaluation { score, d });
        }
        r.end()?;
        Ok(Some(evals))
    }

    pub fn save_evaluations(&self, key: &str, evals: &[Evaluation]) -> Result<()> {
        self.state()?;
        let mut w = Vec::new();
        put(&mut w, evals.len() as u64);
        for e in evals {
            put(&mut w, e.score.to_bits());
            put(&mut w, e.d.len() as u64);
            for block in &e.d {
                put(&mut w, block.len() as u64);
                for v in block {
                    put(&mut w, v.len() as u64);
                    w.extend(v.iter().flat_map(|x| x.to_le_bytes()));
                }
            }
        }
        write_whole(&self.dir.join(format!("search-{key}.evals")), &w)
    }

    pub fn floats(&self, key: &str) -> Result<Option<Vec<f64>>> {
        let Some(bytes) = self.read(&format!("{key}.f64"))? else { return Ok(None) };
        let mut r = Reader::new(&bytes, &self.dir);
        let n = r.u64()? as usize;
        let v = (0..n).map(|_| r.u64().map(f64::from_bits)).collect::<Result<Vec<f64>>>()?;
        r.end()?;
        Ok(Some(v))
    }

    pub fn save_floats(&self, key: &str, values: &[f64]) -> Result<()> {
        self.state()?;
        let mut w = Vec::new();
        put(&mut w, values.len() as u64);
        for v in values {
            put(&mut w, v.to_bits());
        }
        write_whole(&self.dir.join(format!("{key}.f64")), &w)
    }
}

fn put(w: &mut Vec<u8>, v: u64) {
    w.extend_from_slice(&v.to_le_bytes());
}

fn put_bytes(w: &mut Vec<u8>, b: &[u8]) {
    put(w, b.len() as u64);
    w.extend_from_slice(b);
}

/// Little-endian reader over a progress file; any short read means the file is damaged.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
    dir: &'a Path,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8], dir: &'a Path) -> Self {
        Reader { bytes, at: 0, dir }
    }

    fn damaged(&self) -> crate::io::error::Error {
        err!("--resume: the progress in {} is damaged; rerun without --resume to start over", self.dir.display())
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len()).ok_or_else(|| self.damaged())?;
        let s = &self.bytes[self.at..end];
        self.at = end;
        Ok(s)
    }

    fn u64(&mut self) -> Result<u64> {
        let b = self.take(8)?;
        Ok(u64::from_le_bytes(b.try_into().map_err(|_| self.damaged())?))
    }

    fn bytes(&mut self) -> Result<&'a [u8]> {
        let n = self.u64()? as usize;
        self.take(n)
    }

    fn f32s(&mut self) -> Result<Vec<f32>> {
        let n = self.u64()? as usize;
        let b = self.take(n.checked_mul(4).ok_or_else(|| self.damaged())?)?;
        Ok(b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
    }

    fn end(&self) -> Result<()> {
        if self.at != self.bytes.len() {
            return Err(self.damaged());
        }
        Ok(())
    }
}

fn write_state(dir: &Path, state: &Value) -> Result<()> {
    let text = serde_json::to_string_pretty(state).map_err(|e| err!("cannot encode the run state: {e}"))?;
    write_whole(&dir.join("state.json"), text.as_bytes())
}

impl SavedScores for Progress {
    fn scores(&self, key: &str) -> Result<Option<Vec<Evaluation>>> {
        self.evaluations(key)
    }

    fn save_scores(&self, key: &str, evals: &[Evaluation]) -> Result<()> {
        self.save_evaluations(key, evals)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pending state is made once, and written before the first progress it guards; one that
    /// fails to be made lets no progress be saved.
    #[test]
    fn a_pending_state_is_written_before_the_first_progress() {
        let staging = std::env::temp_dir().join(format!("neuroal-resume-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&staging);
        std::fs::create_dir_all(&staging).unwrap();
        let made = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = made.clone();
        let state = State::Pending(Box::new(move || {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(serde_json::json!({ "inputs": { "model.safetensors": "ab" } }))
        }));
        let progress = Progress::open(&staging, state, false).unwrap();
        let state_file = staging.join(RESUME_DIR).join("state.json");
        assert!(!state_file.exists());
        progress.save_floats("owl", &[0.5]).unwrap();
        let written: Value = serde_json::from_str(&std::fs::read_to_string(&state_file).unwrap()).unwrap();
        assert_eq!(written["inputs"]["model.safetensors"], "ab");
        Progress::verify(&staging, &written).unwrap();
        progress.save_floats("owl2", &[0.25]).unwrap();
        assert_eq!(progress.state().unwrap(), written);
        assert_eq!(made.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert_eq!(progress.floats("owl").unwrap(), Some(vec![0.5]));

        let failing = staging.join("failing");
        std::fs::create_dir_all(&failing).unwrap();
        let progress =
            Progress::open(&failing, State::Pending(Box::new(|| Err(err!("cannot read model.safetensors")))), false)
                .unwrap();
        for _ in 0..2 {
            let e = progress.save_floats("owl", &[0.5]).unwrap_err().to_string();
            assert!(e.contains("cannot read model.safetensors"), "{e}");
        }
        assert!(!failing.join(RESUME_DIR).join("state.json").exists());
        assert!(!failing.join(RESUME_DIR).join("owl.f64").exists());
        let _ = std::fs::remove_dir_all(&staging);
    }
}
