#![allow(dead_code)]
//! Shared helpers of the integration tests: fixture paths, golden files, devices.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use neuroal::gpu::device::{self, Choice, Selected};
use serde_json::Value;

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn asset(name: &str) -> PathBuf {
    root().join("assets").join(name)
}

pub fn shared(rel: &str) -> PathBuf {
    root().join("..").join("shared").join(rel)
}

pub fn golden(name: &str) -> Value {
    let path = asset("golden").join(format!("{name}.json"));
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

pub fn floats(v: &Value) -> Vec<f32> {
    doubles(v).into_iter().map(|x| x as f32).collect()
}

pub fn doubles(v: &Value) -> Vec<f64> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
}

pub fn rel_l2(ours: &[f32], reference: &[f32]) -> f64 {
    assert_eq!(ours.len(), reference.len());
    let num: f64 = ours.iter().zip(reference).map(|(a, b)| ((a - b) as f64).powi(2)).sum();
    let den: f64 = reference.iter().map(|b| (*b as f64).powi(2)).sum();
    (num / den).sqrt()
}

/// The devices every numerical test runs on: flex, ndarray and the wgpu GPU path (lavapipe here).
pub fn devices() -> Vec<(&'static str, Selected)> {
    vec![("cpu", select(Choice::Cpu)), ("ndarray", select(Choice::Ndarray)), ("gpu", select(Choice::Gpu))]
}

pub fn select(choice: Choice) -> Selected {
    static GPU: OnceLock<Selected> = OnceLock::new();
    match choice {
        Choice::Gpu => GPU
            .get_or_init(|| {
                device::select(Choice::Gpu)
                    .expect("the GPU path needs a wgpu adapter (lavapipe: apt-get install mesa-vulkan-drivers)")
            })
            .clone(),
        other => device::select(other).unwrap(),
    }
}

pub fn fixtures() -> [&'static str; 19] {
    [
        "tiny-llama",
        "tiny-mistral-gqa",
        "tiny-qwen2",
        "tiny-opt",
        "tiny-phi",
        "tiny-llama-bias",
        "tiny-opt-post-ln",
        "tiny-qwen3",
        "tiny-mistral-swa",
        "tiny-gemma2",
        "tiny-gemma3",
        "tiny-phi3",
        "tiny-qwen2-swa",
        "tiny-qwen3-swa",
        "tiny-gemma3-mm",
        "tiny-mixtral",
        "tiny-qwen2-moe",
        "tiny-qwen3-moe",
        "tiny-olmoe",
    ]
}

/// Per-channel input norms ‖X_j‖₂ = sqrt(Σ_tokens x_j² / n) of row-major inputs, summed in f64.
pub fn channel_norms(inputs: &[f32], cols: usize, n: usize) -> Vec<f64> {
    let mut sq = vec![0f64; cols];
    for (i, v) in inputs.iter().enumerate() {
        sq[i % cols] += (*v as f64).powi(2);
    }
    sq.iter().map(|v| (v / n as f64).sqrt()).collect()
}

/// Wanda's row mask written plainly: in each row, the k lowest |W|·norm by a stable sort.
pub fn wanda_row_mask(w: &[f32], norm: &[f64], rows: usize, cols: usize, k: usize) -> Vec<bool> {
    let mut mask = vec![false; rows * cols];
    for r in 0..rows {
        let score: Vec<f32> = (0..cols).map(|j| w[r * cols + j].abs() * norm[j] as f32).collect();
        let mut order: Vec<usize> = (0..cols).collect();
        order.sort_by(|&a, &b| score[a].partial_cmp(&score[b]).unwrap());
        for &j in &order[..k] {
            mask[r * cols + j] = true;
        }
    }
    mask
}

/// Wanda + NeuroAL (both steps) at 70% on tiny-llama through the CLI: 8 windows of 64 tokens,
/// 4 search windows, `extra` flags (device, dtype, …) added. Returns report.json's text.
pub fn tiny_neuroal_prune(out: &std::path::Path, extra: &[&str]) -> String {
    tiny_neuroal_prune_with(out, extra, &[])
}

/// [`tiny_neuroal_prune`] with environment variables `vars` set.
pub fn tiny_neuroal_prune_with(out: &std::path::Path, extra: &[&str], vars: &[(&str, &str)]) -> String {
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_neuroal"))
        .args([
            "prune",
            "--model",
            asset("tiny-llama").to_str().unwrap(),
            "--calib",
            asset("sample.txt").to_str().unwrap(),
        ])
        .args([
            "--out",
            out.to_str().unwrap(),
            "--sparsity",
            "0.7",
            "--seqlen",
            "64",
            "--nsamples",
            "8",
            "--search-nsamples",
            "4",
        ])
        .args(["--top-up", "neuroal", "--force"])
        .args(extra)
        .env("XDG_RUNTIME_DIR", std::env::temp_dir())
        .envs(vars.iter().copied())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    std::fs::read_to_string(out.join("report.json")).unwrap()
}

/// A private copy of a fixture in `dir` (tests must not risk the real assets).
pub fn model_copy(fixture: &str, dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    for entry in std::fs::read_dir(asset(fixture)).unwrap() {
        let p = entry.unwrap().path();
        std::fs::copy(&p, dir.join(p.file_name().unwrap())).unwrap();
    }
    dir.to_path_buf()
}

/// Rewrites tensor `name` of the checkpoint in `dir` (one file or shards) through `edit` on its
/// values as f32, stored back in the tensor's dtype.
pub fn edit_tensor(dir: &Path, name: &str, edit: impl Fn(&mut [f32])) {
    use safetensors::tensor::TensorView;
    let index = dir.join("model.safetensors.index.json");
    let file = match std::fs::read_to_string(&index) {
        Ok(text) => serde_json::from_str::<Value>(&text).unwrap()["weight_map"][name].as_str().unwrap().to_string(),
        Err(_) => "model.safetensors".to_string(),
    };
    let path = dir.join(file);
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut map: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> =
        st.tensors().into_iter().map(|(n, v)| (n, v.dtype(), v.shape().to_vec(), v.data().to_vec())).collect();
    let e = map.iter_mut().find(|e| e.0 == name).unwrap();
    let mut vals = neuroal::io::checkpoint::decode_f32(&e.3, e.1).unwrap();
    edit(&mut vals);
    e.3 = neuroal::io::checkpoint::encode_f32(&vals, e.1).unwrap();
    let views: Vec<(String, TensorView)> =
        map.iter().map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap())).collect();
    safetensors::serialize_to_file(views, None, &path).unwrap();
}

/// Sets `key` of `dir/config.json` to `value` (`Null` removes it).
pub fn edit_config(dir: &Path, key: &str, value: Value) {
    let p = dir.join("config.json");
    let mut c: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    match value {
        Value::Null => {
            c.as_object_mut().unwrap().remove(key);
        }
        v => c[key] = v,
    }
    std::fs::write(&p, serde_json::to_string(&c).unwrap()).unwrap();
}

/// Every tensor of a folder's shards: name → (dtype, bytes).
pub fn shard_tensors(dir: &Path) -> std::collections::BTreeMap<String, (safetensors::Dtype, Vec<u8>)> {
    let mut all = std::collections::BTreeMap::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "safetensors") {
            let bytes = std::fs::read(&p).unwrap();
            for (n, v) in safetensors::SafeTensors::deserialize(&bytes).unwrap().tensors() {
                all.insert(n, (v.dtype(), v.data().to_vec()));
            }
        }
    }
    all
}
