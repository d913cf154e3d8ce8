//! The pruning engine: Wanda against an independent reference, the written checkpoint, CPU vs
//! GPU masks, and bad input.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use burn::tensor::{Tensor, TensorData};
use common::*;
use neuroal::gpu::device::{Choice, Selected};
use neuroal::io::tokenizer::{Tokenizer, tokenize_file};
use neuroal::measure::trace::Trace;
use neuroal::model::Model;
use neuroal::prune::calib::{draw_windows, gather_windows};
use neuroal::prune::mask::{Pattern, Sparsity};
use neuroal::prune::pipeline::prune;
use neuroal::prune::score::Method;

fn out_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("neuroal-prune-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn calib_windows(model_dir: &Path, seqlen: usize, n: usize) -> Vec<u32> {
    let ids = tokenize_file(&Tokenizer::open(model_dir).unwrap(), &asset("sample.txt")).unwrap();
    let starts = draw_windows(ids.len(), seqlen, n, 0).unwrap();
    gather_windows(&ids, &starts, seqlen)
}

fn host<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().unwrap()
}

/// Wanda written out plainly: inputs captured to the host, ‖X_j‖² summed in f64, scores
/// |W|·sqrt(Σx²/N), each row sorted stably, the ⌊in·s⌋ lowest pruned, then the block re-run
/// with the pruned weights to produce the next block's inputs.
fn wanda_reference(model: &Model, windows: &[u32], seqlen: usize, s: f64) -> Vec<Vec<bool>> {
    let n = windows.len() / seqlen;
    let rope = model.positions(seqlen);
    let mut h = model.embed(windows, n).unwrap();
    let mut masks = Vec::new();
    for b in 0..model.num_blocks() {
        let mut block = model.load_block(b).unwrap();
        let mut inputs: Vec<Vec<f32>> = vec![Vec::new(); model.linears(b).len()];
        let mut capture = |li: usize, x: &Tensor<3>| inputs[li] = host(x.clone());
        block.forward(h.clone(), &rope, Some(&mut capture));
        for (li, input) in inputs.iter().enumerate() {
            let weight = block.linears()[li].weight.clone();
            let [rows, cols] = weight.dims();
            let w = host(weight);
            let norm = channel_norms(input, cols, n);
            let mask = wanda_row_mask(&w, &norm, rows, cols, (cols as f64 * s).floor() as usize);
            let pruned: Vec<f32> = w.iter().zip(&mask).map(|(v, m)| if *m { 0.0 } else { *v }).collect();
            block.set_weight(li, Tensor::from_data(TensorData::new(pruned, [rows, cols]), &model.device));
            masks.push(mask);
        }
        h = block.forward(h, &rope, None);
    }
    masks
}

#[test]
fn wanda_masks_equal_the_reference_including_propagation() {
    let dev = select(Choice::Cpu);
    let dir = asset("tiny-llama");
    let model = Model::open(&dir, &dev).unwrap();
    let windows = calib_windows(&dir, 64, 12);
    let ours =
        prune(&model, &windows, 64, &neuroal::prune::wanda::Wanda, &Pattern::Row, &|_, _| Sparsity::Uniform(0.5))
            .unwrap();
    let reference = wanda_reference(&model, &windows, 64, 0.5);
    assert_eq!(ours.len(), 2 * model.linears(0).len());
    assert_eq!(reference.len(), ours.len());
    for (m, r) in ours.iter().zip(&reference) {
        assert_eq!(m.pruned.len(), r.len(), "{}", m.name);
        assert!(m.pruned.count_ones() > 0, "{}: nothing pruned", m.name);
        let differ = m.pruned.iter().zip(r).filter(|(a, b)| a != *b).count();
        assert_eq!(differ, 0, "{}: {differ} mask entries differ", m.name);
    }
    // Block 1's masks depend on block 0 being pruned first: a dense-propagation run differs.
    let dense_inputs = prune(&model, &windows, 64, &neuroal::prune::wanda::Wanda, &Pattern::Row, &|b, _| {
        Sparsity::Uniform(if b == 0 { 0.0 } else { 0.5 })
    })
    .unwrap();
    let block1_differs =
        (model.linears(0).len()..2 * model.linears(0).len()).any(|i| dense_inputs[i].pruned != ours[i].pruned);
    assert!(block1_differs, "pruned outputs of block 0 must reach block 1");
}

/// The pruning pass with calibration chunks side by side (CPU backends): every chunk's
/// statistics, output and so every mask are the same bits as one chunk at a time, with a
/// partial last group (5 chunks of 8 windows, 2 or 3 at once).
#[test]
fn chunks_side_by_side_equal_one_by_one() {
    use neuroal::prune::pipeline::{
        Pipeline, calibrate, calibrate_at_once, embed_windows, forward_at_once, prune_resumable,
    };
    let dir = asset("tiny-llama");
    for choice in [Choice::Cpu, Choice::Ndarray] {
        let dev = select(choice);
        let model = Model::open(&dir, &dev).unwrap();
        let windows = calib_windows(&dir, 32, 36);
        let (pos, block) = (model.positions(32), model.load_block(0).unwrap());
        let hidden = embed_windows(&model, &windows, 32).unwrap();
        assert_eq!(hidden.len(), 5);
        let one = calibrate(&model, &block, &hidden, &pos, false).unwrap();
        let outputs: Vec<Vec<f32>> =
            forward_at_once(&model, &block, hidden.clone(), &pos, 1).into_iter().map(host).collect();
        for at_once in [2, 3] {
            let side = calibrate_at_once(&model, &block, &hidden, &pos, false, at_once).unwrap();
            for (li, (a, b)) in one.iter().zip(&side).enumerate() {
                assert_eq!(a.stats.tokens, b.stats.tokens);
                for (x, y) in [(&a.stats.sumsq, &b.stats.sumsq), (&a.stats.sum, &b.stats.sum)] {
                    let (x, y) = (host(x.clone()), host(y.clone()));
                    assert!(
                        x.iter().zip(&y).all(|(p, q)| p.to_bits() == q.to_bits()),
                        "{choice:?} linear {li}, {at_once} at once: statistics differ"
                    );
                }
            }
            let side: Vec<Vec<f32>> =
                forward_at_once(&model, &block, hidden.clone(), &pos, at_once).into_iter().map(host).collect();
            assert!(
                side.iter().flatten().zip(outputs.iter().flatten()).all(|(p, q)| p.to_bits() == q.to_bits()),
                "{choice:?}, {at_once} at once: outputs differ"
            );
        }
        let masks = |at_once| {
            let pipeline = Pipeline {
                model: &model,
                windows: &windows,
                seqlen: 32,
                pruner: &neuroal::prune::wanda::Wanda,
                pattern: &Pattern::Row,
                sparsity: &|_, _| Sparsity::Uniform(0.5),
                at_once,
                refine: None,
                trace: &Trace::off(),
            };
            prune_resumable(&pipeline, Vec::new(), &mut |_, _| Ok(())).unwrap()
        };
        let (one, three) = (masks(1), masks(3));
        assert!(one.iter().zip(&three).all(|(a, b)| a.pruned == b.pruned), "{choice:?}: masks differ");
    }
}

fn run_cli(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_neuroal"))
        .args(args)
        .env("XDG_RUNTIME_DIR", std::env::temp_dir())
        .output()
        .unwrap()
}

fn prune_cli(model: &str, out: &Path, extra: &[&str]) {
    let (dir, sample) = (asset(model), asset("sample.txt"));
    let mut args = vec!["prune", "--model", dir.to_str().unwrap(), "--calib", sample.to_str().unwrap()];
    args.extend_from_slice(&["--out", out.to_str().unwrap(), "--seqlen", "64", "--nsamples", "8", "--device", "cpu"]);
    args.extend_from_slice(extra);
    let o = run_cli(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

fn tensors(dir: &Path) -> Vec<(String, String, Vec<u8>)> {
    let mut all = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "safetensors") {
            let bytes = std::fs::read(&p).unwrap();
            let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
            for (n, v) in st.tensors() {
                all.push((
                    format!("{}:{n}", p.file_name().unwrap().to_string_lossy()),
                    format!("{:?}{:?}", v.dtype(), v.shape()),
                    v.data().to_vec(),
                ));
            }
        }
    }
    all.sort();
    all
}

#[test]
fn written_checkpoints_keep_layout_and_report_true_numbers() {
    for model in fixtures() {
        let out = out_dir(&format!("out-{model}"));
        prune_cli(model, &out, &["--sparsity", "0.6", "--eval", asset("sample.txt").to_str().unwrap()]);
        let before = tensors(&asset(model));
        let after = tensors(&out);
        assert_eq!(before.len(), after.len());
        let prunable_names = neuroal::commands::inspect::prunable_names(&asset(model)).unwrap();
        let counts = Model::open(&asset(model), &select(Choice::Cpu)).unwrap().linear_counts();
        assert_eq!(prunable_names.len(), counts.iter().sum::<usize>());
        for ((n0, m0, b0), (n1, m1, b1)) in before.iter().zip(&after) {
            assert_eq!((n0, m0), (n1, m1), "same shard, name, dtype and shape");
            let prunable = prunable_names.contains(n0.split(':').nth(1).unwrap());
            if !prunable {
                assert_eq!(b0, b1, "{n0} must be byte-identical");
            }
        }
        if asset(model).join("model.safetensors.index.json").exists() {
            assert!(out.join("model.safetensors.index.json").exists());
        }
        // inspect sees the requested sparsity: ⌊in·0.6⌋ per row.
        let m = Model::open(&asset(model), &select(Choice::Cpu)).unwrap();
        let ins = neuroal::commands::inspect::inspect(&out).unwrap();
        assert_eq!(ins.layers.len(), prunable_names.len());
        for (name, frac) in &ins.layers {
            // Blocks may declare different linears (a mixture of experts' dense layers).
            let (b, li) = (0..m.num_blocks())
                .flat_map(|b| (0..m.linears(b).len()).map(move |li| (b, li)))
                .find(|&(b, li)| name.ends_with(&format!("layers.{b}.{}.weight", m.linears(b)[li].name)))
                .unwrap();
            let cols = m.linear_shapes(b)[li][1];
            let want = (cols as f64 * 0.6).floor() / cols as f64;
            assert!((frac - want).abs() < 1e-12, "{name}: {frac} vs {want}");
        }
        // The report's pruned perplexity is what evaluating the written checkpoint gives.
        let report: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
        let dev = select(Choice::Cpu);
        let ids = tokenize_file(&Tokenizer::open(&out).unwrap(), &asset("sample.txt")).unwrap();
        let reloaded = Model::open(&out, &dev).unwrap();
        let ppl = neuroal::measure::perplexity::perplexity(&reloaded, &ids, 64, None, "cpu").unwrap().ppl;
        let reported = report["eval"]["ppl_pruned"].as_f64().unwrap();
        assert!((ppl - reported).abs() <= 1e-9 * reported, "{model}: {ppl} vs reported {reported}");
        assert_eq!(report["calibration"]["windows"].as_array().unwrap().len(), 8);
        assert!((report["sparsity"]["overall"].as_f64().unwrap() - ins.overall).abs() < 1e-12);
        let _ = std::fs::remove_dir_all(&out);
    }
}

#[test]
fn sparsity_zero_reproduces_the_input_byte_for_byte() {
    for model in ["tiny-llama", "tiny-qwen2"] {
        let out = out_dir(&format!("zero-{model}"));
        prune_cli(model, &out, &["--sparsity", "0"]);
        assert_eq!(tensors(&asset(model)), tensors(&out));
        let _ = std::fs::remove_dir_all(&out);
    }
}

fn masks_on(dev: &Selected, pattern: &Pattern, method: Method) -> Vec<Vec<bool>> {
    let dir = asset("tiny-mistral-gqa");
    let model = Model::open(&dir, dev).unwrap();
    let windows = calib_windows(&dir, 32, 4);
    prune(&model, &windows, 32, method.pruner(128, 0.01).as_ref(), pattern, &|_, _| Sparsity::Uniform(0.5))
        .unwrap()
        .into_iter()
        .map(|m| m.pruned.iter().collect())
        .collect()
}

#[test]
fn gpu_ndarray_and_cpu_prune_to_identical_masks() {
    let cpu = select(Choice::Cpu);
    for (pattern, method) in [
        (Pattern::Row, Method::Wanda),
        (Pattern::NM { n: 2, m: 4 }, Method::Wanda),
        (Pattern::Layer, Method::Magnitude),
    ] {
        let a = masks_on(&cpu, &pattern, method);
        assert_eq!(a.len(), 14);
        for other in [Choice::Gpu, Choice::Ndarray] {
            let b = masks_on(&select(other), &pattern, method);
            assert_eq!(a.len(), b.len(), "{other:?}: mask count");
            for (i, (x, y)) in a.iter().zip(&b).enumerate() {
                assert_eq!(x.len(), y.len(), "{other:?}: linear {i} mask length");
                assert!(x.iter().any(|&f| f), "linear {i}: nothing pruned");
                let differ = x.iter().zip(y).filter(|(p, q)| p != q).count();
                assert_eq!(
                    differ, 0,
                    "{other:?} vs cpu, {pattern:?} {method:?}: linear {i} differs in {differ} entries"
                );
            }
        }
    }
}

#[test]
fn bad_prune_input_is_rejected_and_leaves_nothing() {
    let model = asset("tiny-llama");
    let sample = asset("sample.txt");
    let short = std::env::temp_dir().join(format!("neuroal-short-{}.txt", std::process::id()));
    std::fs::write(&short, "ka lo mi ne").unwrap();
    let inside = model.join("pruned");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--sparsity", "1.0"], "outside [0, 1)"),
        (vec!["--sparsity", "-0.1"], "outside [0, 1)"),
        (vec!["--sparsity", "0.5", "--pattern", "3:2"], "bad --pattern"),
        (vec!["--sparsity", "0.5", "--pattern", "diagonal"], "bad --pattern"),
        (vec!["--sparsity", "0.5", "--method", "sparsegpt2"], "invalid value 'sparsegpt2' for '--method <METHOD>'"),
    ];
    let out = out_dir("bad");
    for (extra, expect) in &cases {
        let mut args = vec!["prune", "--model", model.to_str().unwrap(), "--calib", sample.to_str().unwrap()];
        args.extend_from_slice(&["--out", out.to_str().unwrap(), "--device", "cpu", "--seqlen", "64"]);
        args.extend(extra.iter().copied());
        check_fails(&args, expect, &out);
    }
    let base = ["prune", "--model", model.to_str().unwrap(), "--device", "cpu", "--seqlen", "64", "--sparsity", "0.5"];
    let mut a = base.to_vec();
    a.extend_from_slice(&["--calib", sample.to_str().unwrap(), "--out", inside.to_str().unwrap()]);
    check_fails(&a, "is inside the input folder", &inside);
    let mut a = base.to_vec();
    a.extend_from_slice(&["--calib", short.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    check_fails(&a, "too few for one window of 64", &out);

    // An existing output is refused without --force and left as it was.
    let existing = out_dir("existing");
    std::fs::create_dir_all(&existing).unwrap();
    std::fs::write(existing.join("keep.txt"), "mine").unwrap();
    let mut a = base.to_vec();
    a.extend_from_slice(&["--calib", sample.to_str().unwrap(), "--out", existing.to_str().unwrap()]);
    let o = run_cli(&a);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("already exists (use --force to replace it)"));
    assert_eq!(std::fs::read_to_string(existing.join("keep.txt")).unwrap(), "mine");
    let _ = std::fs::remove_dir_all(&existing);
}

fn check_fails(args: &[&str], expect: &str, out: &Path) {
    let o = run_cli(args);
    let stderr = String::from_utf8_lossy(&o.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(o.status.code(), Some(2), "{args:?}: {stderr}");
    assert_eq!(lines.len(), 1, "{args:?}: {stderr}");
    assert!(lines[0].contains(expect), "{args:?}: expected \"{expect}\" in {}", lines[0]);
    assert!(!out.exists(), "{args:?}: left {} behind", out.display());
    let parent = out.parent().unwrap();
    let name = out.file_name().unwrap().to_string_lossy().to_string();
    let leftovers = std::fs::read_dir(parent)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with(&format!(".{name}.tmp")))
        .count();
    assert_eq!(leftovers, 0, "temporary folder left behind");
}

/// Equal scores, as the authors' masks break them: `row` (a stable ascending sort, the first k
/// pruned) prunes the lower columns; `rows-variable` (NeuroAL's row step and the prune after it:
/// a stable descending sort, the first n − k kept) prunes the higher ones. The same on every
/// backend, in magnitude's and Wanda's paths (each of its rows' scores ties at 1: |w| = 1, or
/// Wanda's scaler 1 on every channel).
#[test]
fn equal_scores_are_pruned_as_the_authors_masks_prune_them() {
    use neuroal::prune::magnitude::Magnitude;
    use neuroal::prune::pruner::{Calibration, Pruner};
    use neuroal::prune::wanda::Wanda;
    let w = vec![1f32, -1., 1., 1., 2., -2., 2., 2., 3., 1., 1., 3., 1., 1., 3., 3.];
    let ([rows, cols], nsamples) = ([2, 8], 1);
    // 2 of 8 pruned in row 0, 3 of 8 in row 1.
    let per_row = Sparsity::PerRow(vec![0.25, 0.375]);
    for choice in [Choice::Cpu, Choice::Ndarray, Choice::Gpu] {
        let dev = select(choice);
        let weight = || Tensor::<2>::from_data(TensorData::new(w.clone(), [rows, cols]), &dev.device);
        let mut calib = Calibration::new(cols, &dev.device, false);
        let gpu = dev.gpu.as_deref();
        calib.stats.add(&Tensor::<3>::ones([1, 1, cols], &dev.device), gpu);
        let pruners: [&dyn Pruner; 2] = [&Magnitude, &Wanda];
        for pruner in pruners {
            for (pattern, sparsity, want) in [
                // Row 0's ties at 1 are columns 0-3, row 1's at 1 columns 1, 2, 4, 5.
                (Pattern::RowsVariable, per_row.clone(), [vec![2, 3], vec![2, 4, 5]]),
                (Pattern::Row, Sparsity::Uniform(0.25), [vec![0, 1], vec![1, 2]]),
            ] {
                let pruned = pruner.prune(gpu, weight(), &calib, nsamples, &pattern, &sparsity).unwrap();
                let mask = host(pruned.mask);
                let got: Vec<Vec<usize>> =
                    (0..rows).map(|r| (0..cols).filter(|&c| mask[r * cols + c] == 1.0).collect()).collect();
                assert_eq!(got, want, "{} {} on {}", pruner.name(), pattern.name(), dev.description);
                let kept = host(pruned.weight);
                // The search's path, without a mask: the same weights.
                let alone = host(pruner.prune_weight(gpu, weight(), &calib, nsamples, &pattern, &sparsity).unwrap());
                assert_eq!(alone, kept, "{} {} on {}: prune_weight", pruner.name(), pattern.name(), dev.description);
                for (i, (&k, &m)) in kept.iter().zip(&mask).enumerate() {
                    assert_eq!(
                        k,
                        if m == 1.0 { 0.0 } else { w[i] },
                        "{} {} on {}: weight {i}",
                        pruner.name(),
                        pattern.name(),
                        dev.description
                    );
                }
            }
        }
    }
}
