//! SparseGPT against an independent f64 implementation written here from the paper's
//! algorithm, the checkpoint it writes (re-encoded values in f32, f16 and bf16), CPU vs GPU, and
//! NeuroAL's block step over it.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use burn::tensor::{Tensor, TensorData};
use common::*;
use neuroal::commands::report::Report;
use neuroal::gpu::device::Choice;
use neuroal::io::checkpoint::{decode_f32, encode_f32};
use neuroal::io::tokenizer::{Tokenizer, tokenize_file};
use neuroal::model::Model;
use neuroal::prune::calib::{draw_windows, gather_windows};
use neuroal::prune::mask::{Pattern, Sparsity};
use neuroal::prune::pipeline::prune;
use neuroal::prune::pruner::{Calibration, Pruner};
use neuroal::prune::sparsegpt::SparseGpt;
use neuroal::rng::SplitMix64;

// ---------------------------------------------------------------------------------------------
// The reference, in f64 with plain loops: H = 2/N·Σ x xᵀ; dead columns; dampening; the upper
// Cholesky factor U of H⁻¹ (H⁻¹ = UᵀU); the blocked column sweep with error compensation.

fn cholesky_lower(a: &[f64], n: usize) -> Option<Vec<f64>> {
    let mut l = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..=i {
            let mut sum = a[i * n + j];
            for k in 0..j {
                sum -= l[i * n + k] * l[j * n + k];
            }
            if i == j {
                if sum <= 0.0 {
                    return None;
                }
                l[i * n + i] = sum.sqrt();
            } else {
                l[i * n + j] = sum / l[j * n + j];
            }
        }
    }
    Some(l)
}

/// H⁻¹ from H = LLᵀ, column by column: solve L y = e_c, then Lᵀ x = y.
fn inverse_from_cholesky(l: &[f64], n: usize) -> Vec<f64> {
    let mut inv = vec![0.0; n * n];
    for c in 0..n {
        let mut y = vec![0.0; n];
        for i in 0..n {
            let mut s = if i == c { 1.0 } else { 0.0 };
            for k in 0..i {
                s -= l[i * n + k] * y[k];
            }
            y[i] = s / l[i * n + i];
        }
        let mut x = vec![0.0; n];
        for i in (0..n).rev() {
            let mut s = y[i];
            for k in i + 1..n {
                s -= l[k * n + i] * x[k];
            }
            x[i] = s / l[i * n + i];
        }
        for i in 0..n {
            inv[i * n + c] = x[i];
        }
    }
    inv
}

fn reference(
    w: &[f32],
    rows: usize,
    cols: usize,
    h: &[f64],
    s: f64,
    nm: Option<(usize, usize)>,
) -> (Vec<f64>, Vec<bool>) {
    let (blocksize, percdamp) = (128usize, 0.01);
    let mut w: Vec<f64> = w.iter().map(|&v| v as f64).collect();
    let mut h = h.to_vec();
    for i in 0..cols {
        if h[i * cols + i] == 0.0 {
            h[i * cols + i] = 1.0;
            for r in 0..rows {
                w[r * cols + i] = 0.0;
            }
        }
    }
    let damp = percdamp * (0..cols).map(|i| h[i * cols + i]).sum::<f64>() / cols as f64;
    for i in 0..cols {
        h[i * cols + i] += damp;
    }
    let hinv_full = inverse_from_cholesky(&cholesky_lower(&h, cols).expect("H positive definite"), cols);
    let l = cholesky_lower(&hinv_full, cols).expect("H⁻¹ positive definite");
    let u = |i: usize, j: usize| l[j * cols + i]; // U = Lᵀ
    let mut mask = vec![false; rows * cols];
    let score = |w: &Vec<f64>, r: usize, c: usize| w[r * cols + c].powi(2) / u(c, c).powi(2);
    for i1 in (0..cols).step_by(blocksize) {
        let i2 = (i1 + blocksize).min(cols);
        if nm.is_none() {
            let mut tmp: Vec<f64> =
                (0..rows).flat_map(|r| (i1..i2).map(move |c| (r, c))).map(|(r, c)| score(&w, r, c)).collect();
            let all = tmp.clone();
            tmp.sort_by(|a, b| a.partial_cmp(b).unwrap());
            let thresh = tmp[(tmp.len() as f64 * s) as usize];
            for (k, v) in all.iter().enumerate() {
                mask[(k / (i2 - i1)) * cols + i1 + k % (i2 - i1)] = *v <= thresh;
            }
        }
        let mut err = vec![0.0; rows * (i2 - i1)];
        for i in i1..i2 {
            if let Some((n, m)) = nm
                && (i - i1) % m == 0
            {
                for r in 0..rows {
                    let mut group: Vec<usize> = (i..(i + m).min(i2)).collect();
                    group.sort_by(|&a, &b| score(&w, r, a).partial_cmp(&score(&w, r, b)).unwrap());
                    for &c in &group[..n] {
                        mask[r * cols + c] = true;
                    }
                }
            }
            for r in 0..rows {
                let v = w[r * cols + i];
                let q = if mask[r * cols + i] { 0.0 } else { v };
                let e = (v - q) / u(i, i);
                for j in i..i2 {
                    w[r * cols + j] -= e * u(i, j);
                }
                w[r * cols + i] = q;
                err[r * (i2 - i1) + i - i1] = e;
            }
        }
        for r in 0..rows {
            for j in i2..cols {
                let mut sum = 0.0;
                for k in i1..i2 {
                    sum += err[r * (i2 - i1) + k - i1] * u(k, j);
                }
                w[r * cols + j] -= sum;
            }
        }
    }
    (w, mask)
}

/// Random inputs [windows, tokens, cols] (channels in `dead` all zero) and weights [rows, cols].
fn problem(seed: u64, windows: usize, tokens: usize, rows: usize, cols: usize, dead: &[usize]) -> (Vec<f32>, Vec<f32>) {
    let mut rng = SplitMix64::new(seed);
    let mut uniform = || (rng.below(2_000_001) as f32 / 1_000_000.0) - 1.0;
    let mut x: Vec<f32> = (0..windows * tokens * cols).map(|_| uniform()).collect();
    for (i, v) in x.iter_mut().enumerate() {
        if dead.contains(&(i % cols)) {
            *v = 0.0;
        }
    }
    let w: Vec<f32> = (0..rows * cols).map(|_| uniform()).collect();
    (x, w)
}

#[test]
fn sparsegpt_equals_an_independent_f64_implementation() {
    let dev = select(Choice::Cpu).device;
    let (rows, cols) = (8, 300);
    // (windows of 32 tokens, dead channels, pattern): 512 tokens give a full-rank H; 96 tokens
    // a singular one that only the dampening makes positive definite.
    let cases: Vec<(usize, Vec<usize>, Pattern, f64)> = vec![
        (16, vec![], Pattern::Row, 0.5),
        (16, vec![3, 200], Pattern::Row, 0.7),
        (16, vec![5], Pattern::NM { n: 2, m: 4 }, 0.5),
        (3, vec![], Pattern::Row, 0.5),
    ];
    for (case, (windows, dead, pattern, s)) in cases.into_iter().enumerate() {
        let (x, w) = problem(case as u64 + 11, windows, 32, rows, cols, &dead);
        let mut calib = Calibration::new(cols, &dev, true);
        for chunk in x.chunks(2 * 32 * cols) {
            let b = chunk.len() / (32 * cols);
            calib.add(&Tensor::<3>::from_data(TensorData::new(chunk.to_vec(), [b, 32, cols]), &dev), None);
        }
        let mut h = vec![0f64; cols * cols];
        for t in x.chunks(cols) {
            for i in 0..cols {
                for j in 0..cols {
                    h[i * cols + j] += 2.0 * t[i] as f64 * t[j] as f64 / windows as f64;
                }
            }
        }
        let nm = match pattern {
            Pattern::NM { n, m } => Some((n, m)),
            _ => None,
        };
        let (want_w, want_m) = reference(&w, rows, cols, &h, s, nm);
        let sgpt = SparseGpt::new(128, 0.01);
        let weight = Tensor::<2>::from_data(TensorData::new(w.clone(), [rows, cols]), &dev);
        let got = sgpt.prune(None, weight, &calib, windows, &pattern, &Sparsity::Uniform(s)).unwrap();
        let got_w = got.weight.into_data().try_to_vec::<f32>().unwrap();
        let got_m: Vec<bool> = got.mask.into_data().try_to_vec::<f32>().unwrap().iter().map(|&v| v != 0.0).collect();
        assert_eq!(got_m.len(), want_m.len());
        assert_eq!(got_m, want_m, "case {case}: masks differ");
        let scale = want_w.iter().fold(0f64, |a, b| a.max(b.abs()));
        let worst = got_w.iter().zip(&want_w).map(|(a, b)| (*a as f64 - b).abs()).fold(0f64, f64::max);
        println!(
            "case {case}: {} of {} pruned, max |Δw| / max |w| = {:.2e}",
            got_m.iter().filter(|m| **m).count(),
            got_m.len(),
            worst / scale
        );
        assert!(worst <= 1e-5 * scale, "case {case}: weights differ by {worst} (scale {scale})");
        for (k, m) in got_m.iter().enumerate() {
            if *m || dead.contains(&(k % cols)) {
                assert_eq!(got_w[k], 0.0, "case {case}: pruned and dead entries are exact zeros");
            }
        }
        // At least ⌊numel·s⌋ + 1 per block unstructured; exactly n of m for N:M.
        let count = got_m.iter().filter(|m| **m).count();
        match nm {
            Some((n, m)) => assert_eq!(count, rows * cols / m * n),
            None => assert!(
                count >= [128, 128, 44].iter().map(|c| (rows as f64 * *c as f64 * s) as usize + 1).sum::<usize>()
            ),
        }
    }
}

fn neuroal_cli(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_neuroal"))
        .args(args)
        .env("XDG_RUNTIME_DIR", std::env::temp_dir())
        .output()
        .unwrap()
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("neuroal-sparsegpt-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// SparseGPT moves kept weights: where one leaves the range of the checkpoint's dtype (f16
/// weights near its 65504 limit), the prune stops with one line naming the weight rather than
/// writing it as infinity.
#[test]
fn a_new_weight_beyond_the_checkpoints_dtype_is_refused() {
    let s = scratch("range");
    let model = model_copy("tiny-opt", &s.join("model"));
    edit_tensor(&model, "model.decoder.layers.1.fc2.weight", |v| {
        for (i, x) in v.iter_mut().enumerate() {
            let sign = if (i as u64 * 2654435761) % 7 < 4 { 1.0 } else { -1.0 };
            *x = sign * (50000 + (i * 7919) % 15000) as f32;
        }
    });
    let out = s.join("out");
    let o = neuroal_cli(&[
        "prune",
        "--model",
        model.to_str().unwrap(),
        "--calib",
        asset("sample.txt").to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--device",
        "cpu",
        "--dtype",
        "f32",
        "--seqlen",
        "64",
        "--nsamples",
        "4",
        "--sparsity",
        "0.5",
        "--method",
        "sparsegpt",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.starts_with("device ")).collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(
        lines[0].contains("model.decoder.layers.1.fc2.weight: the pruned weight at row ")
            && lines[0].contains("beyond f16's range (±65504), the checkpoint's dtype"),
        "{err}"
    );
    assert!(!out.exists(), "nothing written");
    let _ = std::fs::remove_dir_all(&s);
}

#[test]
fn written_checkpoints_hold_the_new_values_in_every_dtype() {
    let s = scratch("roundtrip");
    for fixture in ["tiny-llama", "tiny-mistral-gqa", "tiny-qwen2"] {
        let out = s.join(fixture);
        let dir = asset(fixture);
        let o = neuroal_cli(&[
            "prune",
            "--model",
            dir.to_str().unwrap(),
            "--calib",
            asset("sample.txt").to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--method",
            "sparsegpt",
            "--sparsity",
            "0.5",
            "--seqlen",
            "64",
            "--nsamples",
            "8",
            "--device",
            "cpu",
            "--eval",
            asset("sample.txt").to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{fixture}: {}", String::from_utf8_lossy(&o.stderr));
        // The same run in process: its new f32 values, encoded into each tensor's dtype.
        let dev = select(Choice::Cpu);
        let model = Model::open(&dir, &dev).unwrap();
        let ids = tokenize_file(&Tokenizer::open(&dir).unwrap(), &asset("sample.txt")).unwrap();
        let windows = gather_windows(&ids, &draw_windows(ids.len(), 64, 8, 0).unwrap(), 64);
        let masks =
            prune(&model, &windows, 64, &SparseGpt::new(128, 0.01), &Pattern::Row, &|_, _| Sparsity::Uniform(0.5))
                .unwrap();
        let (before, after) = (shard_tensors(&dir), shard_tensors(&out));
        assert_eq!(before.keys().collect::<Vec<_>>(), after.keys().collect::<Vec<_>>());
        let mut changed = 0;
        for m in &masks {
            let (dtype, bytes) = &after[&m.name];
            assert_eq!(*dtype, before[&m.name].0);
            let want = encode_f32(m.values.as_ref().unwrap(), *dtype).unwrap();
            assert!(bytes == &want, "{fixture} {}: written bytes are not the new values in {dtype:?}", m.name);
            let decoded = decode_f32(bytes, *dtype).unwrap();
            assert!(
                m.pruned.ones().all(|i| decoded[i] == 0.0 && decoded[i].is_sign_positive()),
                "{}: pruned entries are exact zeros",
                m.name
            );
            assert!(m.pruned.count_ones() * 2 > m.pruned.len(), "{}: at least half pruned", m.name);
            changed += (bytes != &before[&m.name].1) as usize;
        }
        assert_eq!(changed, masks.len(), "{fixture}: SparseGPT changes every linear's kept weights");
        for (name, (_, bytes)) in &before {
            if !masks.iter().any(|m| &m.name == name) {
                assert!(bytes == &after[name].1, "{fixture} {name}: untouched tensors stay byte-identical");
            }
        }
        // --eval measured what was written.
        let r: Report = serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
        let written =
            neuroal::measure::perplexity::perplexity(&Model::open(&out, &dev).unwrap(), &ids, 64, None, "cpu")
                .unwrap()
                .ppl;
        assert!(
            (r.eval.ppl_pruned.unwrap() - written).abs() <= 1e-9 * written,
            "{fixture}: report {:?} vs {written}",
            r.eval.ppl_pruned
        );
        assert_eq!(r.settings.method, "sparsegpt");
    }
    let _ = std::fs::remove_dir_all(&s);
}

#[test]
fn cpu_and_gpu_give_the_same_masks_and_weights() {
    let run = |choice: Choice| {
        let dev = select(choice);
        let dir = asset("tiny-mistral-gqa");
        let model = Model::open(&dir, &dev).unwrap();
        let ids = tokenize_file(&Tokenizer::open(&dir).unwrap(), &asset("sample.txt")).unwrap();
        let windows = gather_windows(&ids, &draw_windows(ids.len(), 32, 4, 0).unwrap(), 32);
        prune(&model, &windows, 32, &SparseGpt::new(128, 0.01), &Pattern::NM { n: 2, m: 4 }, &|_, _| {
            Sparsity::Uniform(0.5)
        })
        .unwrap()
    };
    let (cpu, gpu) = (run(Choice::Cpu), run(Choice::Gpu));
    assert_eq!(cpu.len(), 14);
    assert_eq!(cpu.len(), gpu.len());
    for (a, b) in cpu.iter().zip(&gpu) {
        assert_eq!(a.pruned, b.pruned, "{}: masks differ", a.name);
        let (va, vb) = (a.values.as_ref().unwrap(), b.values.as_ref().unwrap());
        assert_eq!(va.len(), vb.len());
        // Relative L2 error, the measure the forward tests use.
        let err = rel_l2(vb, va);
        println!("{}: relative L2 {err:.2e}", a.name);
        assert!(err <= 1e-5, "{}: weights differ, relative L2 {err:.2e}", a.name);
    }
}

#[test]
fn neuroal_runs_its_block_step_over_sparsegpt() {
    let s = scratch("neuroal");
    let dir = asset("tiny-llama");
    let base = |out: &Path, extra: &[&str]| {
        let mut a: Vec<String> =
            ["prune", "--model", dir.to_str().unwrap(), "--calib", asset("sample.txt").to_str().unwrap()]
                .iter()
                .map(|s| s.to_string())
                .collect();
        a.extend(
            [
                "--out",
                out.to_str().unwrap(),
                "--method",
                "sparsegpt",
                "--seqlen",
                "64",
                "--nsamples",
                "8",
                "--search-nsamples",
                "4",
                "--device",
                "cpu",
            ]
            .iter()
            .map(|s| s.to_string()),
        );
        a.extend(extra.iter().map(|s| s.to_string()));
        neuroal_cli(&a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let out = s.join("out");
    let o = base(&out, &["--sparsity", "0.7", "--top-up", "neuroal"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r: Report = serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert!(r.topup.lambda_block.is_some() && r.topup.lambda_row.is_none());
    assert_eq!(r.topup.block_scores.len(), 14);
    assert!(r.topup.step.as_deref().unwrap().contains("the row step is not offered with sparsegpt"));
    assert!(r.sparsity.blocks[0] < r.sparsity.blocks[1], "{:?}", r.sparsity.blocks);
    for (extra, expect) in [
        (
            vec!["--sparsity", "0.7", "--top-up", "neuroal", "--neuroal-step", "row"],
            "--neuroal-step row is not offered with --method sparsegpt",
        ),
        (vec!["--sparsity", "0.5", "--pattern", "layer"], "sparsegpt selects weights per block"),
        (vec!["--sparsity", "0.5", "--percdamp", "NaN"], "--percdamp NaN must be a number ≥ 0"),
    ] {
        let o = base(&s.join("bad"), &extra);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(expect), "{err}");
    }
    let _ = std::fs::remove_dir_all(&s);
}
