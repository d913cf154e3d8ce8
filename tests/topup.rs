//! NeuroAL's search: the candidate score against an independent computation, shared block
//! loads against one-by-one evaluation, the alignment shader against its twin, overall
//! sparsity, and CPU vs GPU choices. NeuroAL's candidate scores, and OWL's outlier ratios and
//! block sparsities, against the authors' code on the real model.

mod common;

use std::path::Path;

use burn::tensor::{DType, Device, Tensor, TensorData};
use common::*;
use neuroal::gpu::device::Choice;
use neuroal::io::tokenizer::{Tokenizer, tokenize_file};
use neuroal::measure::trace::Trace;
use neuroal::model::Model;
use neuroal::prune::calib::{draw_windows, gather_windows};
use neuroal::prune::mask::{Pattern, Sparsity};
use neuroal::prune::neuroal::{Search, SearchPlan, evaluate, neuroal_block_sparsities};
use neuroal::prune::owl::{owl_block_sparsities, owl_outlier_ratios};
use neuroal::prune::spread::{Map, block_map};
use neuroal::rng::SplitMix64;

fn search_windows(dir: &Path, seqlen: usize, n: usize) -> Vec<u32> {
    let ids = tokenize_file(&Tokenizer::open(dir).unwrap(), &asset("sample.txt")).unwrap();
    gather_windows(&ids, &draw_windows(ids.len(), seqlen, n, 0).unwrap(), seqlen)
}

fn host<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().unwrap()
}

/// The candidate score written out on the host: inputs captured per linear, norms in f64,
/// Wanda row masks by a stable sort, m = ‖a/Σa − b/Σb‖₂ / len summed over all linears.
fn reference_score(model: &Model, windows: &[u32], seqlen: usize, blocks: &[f64]) -> f64 {
    let n = windows.len() / seqlen;
    let rope = model.positions(seqlen);
    let mut h = model.embed(windows, n).unwrap();
    let mut total = 0.0;
    for (b, &s) in blocks.iter().enumerate() {
        let mut block = model.load_block(b).unwrap();
        let nl = model.linears(b).len();
        let mut dense_in: Vec<Vec<f32>> = vec![Vec::new(); nl];
        let mut cap = |li: usize, x: &Tensor<3>| dense_in[li] = host(x.clone());
        block.forward(h.clone(), &rope, Some(&mut cap));
        let mut a_dense = Vec::new();
        for (li, input) in dense_in.iter().enumerate() {
            let weight = block.linears()[li].weight.clone();
            let [rows, cols] = weight.dims();
            let a = channel_norms(input, cols, n);
            let w = host(weight);
            let mask = wanda_row_mask(&w, &a, rows, cols, (cols as f64 * s).floor() as usize);
            let pruned: Vec<f32> = w.iter().zip(&mask).map(|(v, m)| if *m { 0.0 } else { *v }).collect();
            block.set_weight(li, Tensor::from_data(TensorData::new(pruned, [rows, cols]), &model.device));
            a_dense.push(a);
        }
        let mut sparse_in: Vec<Vec<f32>> = vec![Vec::new(); nl];
        let mut cap = |li: usize, x: &Tensor<3>| sparse_in[li] = host(x.clone());
        h = block.forward(h, &rope, Some(&mut cap));
        assert_eq!(a_dense.len(), nl);
        for li in 0..nl {
            let a = &a_dense[li];
            let bn = channel_norms(&sparse_in[li], a.len(), n);
            let (sa, sb): (f64, f64) = (a.iter().sum(), bn.iter().sum());
            let sq: f64 = a.iter().zip(&bn).map(|(x, y)| (x / sa - y / sb).powi(2)).sum();
            total += sq.sqrt() / a.len() as f64;
        }
    }
    total
}

#[test]
fn candidate_score_matches_an_independent_computation() {
    let dev = select(Choice::Cpu);
    let dir = asset("tiny-llama");
    let model = Model::open(&dir, &dev).unwrap();
    let windows = search_windows(&dir, 64, 4);
    for lambda in [0.0, 0.1, 0.25] {
        let blocks = neuroal_block_sparsities(2, lambda, 0.6);
        let ours = evaluate(
            &Search {
                model: &model,
                windows: &windows,
                seqlen: 64,
                pruner: &neuroal::prune::wanda::Wanda,
                plan: SearchPlan::ONE_BY_ONE,
                trace: &Trace::off(),
            },
            &Pattern::Row,
            &[block_map(&blocks, &model.linear_counts())],
            1,
            &|_, _| {},
        )
        .unwrap();
        let want = reference_score(&model, &windows, 64, &blocks);
        let rel = (ours[0].score - want).abs() / want;
        assert!(rel < 1e-4, "λ {lambda}: score {} vs reference {want} (rel {rel:.2e})", ours[0].score);
    }
}

#[test]
fn shared_block_loads_score_exactly_like_one_by_one() {
    // f32 everywhere, and f16 where the GPU computes in it (CI's Vulkan emulator): other
    // kernels, the same demand.
    let runs = [Choice::Cpu, Choice::Gpu].into_iter().flat_map(|choice| {
        let dev = select(choice);
        let f16 = choice == Choice::Gpu && dev.shader_f16;
        [Some((DType::F32, dev.clone())), f16.then(|| (DType::F16, dev.clone()))]
            .into_iter()
            .flatten()
            .map(move |d| (choice, d))
    });
    for (choice, (dtype, device)) in runs {
        let choice = (choice, dtype);
        let dir = asset("tiny-mistral-gqa");
        let model = Model::open_as(&dir, &device, dtype).unwrap();
        let windows = search_windows(&dir, 32, 2);
        let candidates: Vec<Map> =
            [0.01, 0.1, 0.2].iter().map(|&l| block_map(&neuroal_block_sparsities(2, l, 0.7), &[7, 7])).collect();
        let mut with_rows = candidates.clone();
        let per_row: Vec<Sparsity> = model
            .linear_shapes(0)
            .iter()
            .map(|s| Sparsity::PerRow((0..s[0]).map(|r| 0.3 + r as f64 * 0.005).collect()))
            .collect();
        with_rows.push(vec![per_row; 2]);
        for (pattern, cands) in
            [(Pattern::Row, &candidates), (Pattern::RowsVariable, &vec![with_rows[3].clone(), with_rows[3].clone()])]
        {
            // Shared block loads with all candidates side by side (on the CPU), and with all their
            // dense passes in one batch, or in batches of 2 beside 2 side by side, against one by one.
            let n = cands.len();
            let one_by_one = evaluate(
                &Search {
                    model: &model,
                    windows: &windows,
                    seqlen: 32,
                    pruner: &neuroal::prune::wanda::Wanda,
                    plan: SearchPlan::ONE_BY_ONE,
                    trace: &Trace::off(),
                },
                &pattern,
                cands,
                1,
                &|_, _| {},
            )
            .unwrap();
            assert_eq!(one_by_one.len(), n);
            for plan in [
                SearchPlan { at_once: n, dense_batch: 1 },
                SearchPlan { at_once: 1, dense_batch: n },
                SearchPlan { at_once: 2, dense_batch: 2 },
            ] {
                let shared = evaluate(
                    &Search {
                        model: &model,
                        windows: &windows,
                        seqlen: 32,
                        pruner: &neuroal::prune::wanda::Wanda,
                        plan,
                        trace: &Trace::off(),
                    },
                    &pattern,
                    cands,
                    n,
                    &|_, _| {},
                )
                .unwrap();
                assert_eq!(shared.len(), n);
                for (a, b) in shared.iter().zip(&one_by_one) {
                    assert!(a.score.is_finite() && a.score > 0.0, "{choice:?} {pattern:?} {plan:?}: score {}", a.score);
                    assert_eq!(a.d.len(), 2, "one d set per block");
                    assert_eq!(a.score.to_bits(), b.score.to_bits(), "{choice:?} {pattern:?} {plan:?}");
                    assert_eq!(a.d, b.d, "{choice:?} {pattern:?} {plan:?}");
                }
            }
        }
    }
}

#[test]
fn sparsegpt_hessians_from_a_dense_batch_score_exactly_like_one_by_one() {
    // Each candidate's Hessian is accumulated from its own rows of the batch, chunk by chunk.
    for choice in [Choice::Cpu, Choice::Gpu] {
        let dev = select(choice);
        let dir = asset("tiny-llama");
        let model = Model::open(&dir, &dev).unwrap();
        let windows = search_windows(&dir, 32, 2);
        let cands: Vec<Map> =
            [0.02, 0.2].iter().map(|&l| block_map(&neuroal_block_sparsities(2, l, 0.6), &[7, 7])).collect();
        let pruner = neuroal::prune::sparsegpt::SparseGpt::new(16, 0.01);
        let alone = evaluate(
            &Search {
                model: &model,
                windows: &windows,
                seqlen: 32,
                pruner: &pruner,
                plan: SearchPlan::ONE_BY_ONE,
                trace: &Trace::off(),
            },
            &Pattern::Row,
            &cands,
            2,
            &|_, _| {},
        )
        .unwrap();
        let batched = evaluate(
            &Search {
                model: &model,
                windows: &windows,
                seqlen: 32,
                pruner: &pruner,
                plan: SearchPlan { at_once: 1, dense_batch: 2 },
                trace: &Trace::off(),
            },
            &Pattern::Row,
            &cands,
            2,
            &|_, _| {},
        )
        .unwrap();
        for (a, b) in batched.iter().zip(&alone) {
            assert!(a.score.is_finite() && a.score > 0.0, "{choice:?}: score {}", a.score);
            assert_eq!(a.score.to_bits(), b.score.to_bits(), "{choice:?}");
            assert_eq!(a.d, b.d, "{choice:?}");
        }
    }
}

#[test]
fn alignment_shader_equals_its_twin() {
    let selected = select(Choice::Gpu);
    let (gpu, shaders) = (selected.device.clone(), &selected.gpu.as_deref().expect("a GPU's kernels").shaders);
    let cpu = Device::flex();
    let mut rng = SplitMix64::new(3);
    for n in [5usize, 256, 1000, 4099] {
        let a: Vec<f32> = (0..n).map(|_| (rng.below(1000) + 1) as f32 / 100.0).collect();
        let b: Vec<f32> = (0..n).map(|_| (rng.below(1000) + 1) as f32 / 100.0).collect();
        let t = |v: &Vec<f32>, d: &Device| Tensor::<1>::from_data(TensorData::new(v.clone(), [n]), d);
        let (mg, dg) = shaders.alignment(t(&a, &gpu), t(&b, &gpu));
        let (mc, dc) = neuroal::prune::neuroal::alignment_reference(t(&a, &cpu), t(&b, &cpu));
        let (mg, mc) = (host(mg)[0], host(mc)[0]);
        assert!((mg - mc).abs() <= 1e-6 * mc.abs(), "n {n}: {mg} vs {mc}");
        assert_eq!(host(dg), host(dc));
        // And against f64 by hand.
        let (sa, sb): (f64, f64) = (a.iter().map(|&x| x as f64).sum(), b.iter().map(|&x| x as f64).sum());
        let want =
            a.iter().zip(&b).map(|(&x, &y)| (x as f64 / sa - y as f64 / sb).powi(2)).sum::<f64>().sqrt() / n as f64;
        assert!(((mc as f64) - want).abs() <= 1e-5 * want, "n {n}: {mc} vs f64 {want}");
    }
}

fn neuroal_cli(device: &str, out: &Path, extra: &[&str]) -> serde_json::Value {
    let plots = out.with_extension("plots");
    let mut args = vec!["--device", device, "--dtype", "f32", "--plots", plots.to_str().unwrap()];
    args.extend(extra);
    serde_json::from_str(&tiny_neuroal_prune(out, &args)).unwrap()
}

#[test]
fn neuroal_prunes_to_the_target_and_cpu_and_gpu_choose_the_same_lambdas() {
    let tmp = std::env::temp_dir().join(format!("neuroal-topup-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    // The GPU run's dense passes in batches of 4 candidates: the same λs all the same.
    let (cpu, gpu) =
        (neuroal_cli("cpu", &tmp.join("cpu"), &[]), neuroal_cli("gpu", &tmp.join("gpu"), &["--search-batch", "4"]));
    assert_eq!(
        (cpu["memory"]["search_dense_batch"].as_u64(), gpu["memory"]["search_dense_batch"].as_u64()),
        (Some(1), Some(4))
    );
    for key in ["lambda_block", "lambda_row"] {
        assert!(cpu["topup"][key].as_f64().is_some(), "{key}: {}", cpu["topup"][key]);
        assert_eq!(cpu["topup"][key], gpu["topup"][key], "{key}");
    }
    assert_eq!(cpu["topup"]["block_scores"].as_array().unwrap().len(), 14);
    assert_eq!(cpu["topup"]["row_scores"].as_array().unwrap().len(), 15);
    // Overall sparsity: the rows-variable counts of the chosen map, and near s; the gap is
    // rounding (each row prunes at most one extra weight: ≤ 1/64 here) and clamping.
    let ins = neuroal::commands::inspect::inspect(&tmp.join("cpu")).unwrap();
    assert!((ins.overall - 0.7).abs() < 1.0 / 64.0, "overall {}", ins.overall);
    assert!((cpu["sparsity"]["overall"].as_f64().unwrap() - ins.overall).abs() < 1e-12);
    let blocks: Vec<f64> =
        cpu["topup"]["block_sparsities"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    assert!(blocks[0] < blocks[1], "early blocks stay denser: {blocks:?}");
    // The plots: score vs λ for both steps, per-block sparsity, row-sparsity histograms.
    for f in ["neuroal_block_step.png", "neuroal_row_step.png", "block_sparsity.png", "row_sparsity.png"] {
        let bytes = std::fs::read(tmp.join("cpu.plots").join(f)).unwrap();
        assert!(bytes.len() > 1000 && bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "{f} is not a PNG");
    }
    assert_eq!(cpu["plots"]["files"].as_array().unwrap().len(), 4);
    // Peak memory: the process's on both; the GPU pools' only on the GPU, at least the f32
    // weights of one block's linears (tiny-llama: 7 linears, 49,408 values).
    for r in [&cpu, &gpu] {
        assert!(r["memory"]["peak_host_mib"].as_f64().is_some_and(|m| m > 1.0), "{}", r["memory"]);
    }
    assert!(cpu["memory"]["peak_gpu_mib"].is_null(), "{}", cpu["memory"]);
    assert!(
        gpu["memory"]["peak_gpu_mib"].as_f64().is_some_and(|m| m * (1 << 20) as f64 >= 49_408.0 * 4.0),
        "{}",
        gpu["memory"]
    );
    // The estimate, by hand (tiny-llama: 64 wide, 4 heads, MLP 172, 384 tokens; 64-token
    // windows; one candidate at a time on the GPU). The search is the larger phase: 15 carried
    // candidates × 2 copies × 4 windows × 64 × 64 × 4 bytes = 1,966,080; activations of 4
    // windows 4 × (3·4·64² + 3·64·172 + 4·64·64) × 4 = 1,576,960, for each of the 4 candidates
    // of a dense batch; the block, its pruned copy and the next 3 × 49,408 × 4 = 592,896; no
    // embeddings or head (without --eval the run computes no logits). (The pruning pass:
    // 262,144 + 3,153,920 + 592,896 + 12,352 masks = 4,021,312.)
    let est = |r: &serde_json::Value| r["memory"]["estimated_peak_mib"].as_f64().unwrap() * (1u64 << 20) as f64;
    assert_eq!(est(&gpu), (1_966_080 + 4 * 1_576_960 + 592_896) as f64);
    // On the CPU, candidates side by side as memory allows: at least one batch's worth.
    assert!(est(&cpu) >= (1_966_080 + 1_576_960 + 592_896) as f64, "{}", est(&cpu));
    let _ = std::fs::remove_dir_all(&tmp);
}

/// With `NEUROAL_FUSE=all` a GPU run multiplies q/k/v and gate/up as one product each, from
/// weights stacked anew after every pruning: the search scores each candidate as the products
/// apart do (a stale stack, the dense weights, would score every candidate near 0), picks the
/// same λs, and its estimate counts the stacked copies.
#[test]
fn fused_products_score_the_search_as_apart() {
    let tmp = std::env::temp_dir().join(format!("neuroal-fused-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let run = |fuse: &str| -> serde_json::Value {
        let args = ["--device", "gpu", "--dtype", "f32", "--search-batch", "1"];
        serde_json::from_str(&tiny_neuroal_prune_with(&tmp.join(fuse), &args, &[("NEUROAL_FUSE", fuse)])).unwrap()
    };
    let (apart, fused) = (run("none"), run("all"));
    assert!(fused["device"].as_str().unwrap().contains("fused products per shared input"), "{}", fused["device"]);
    assert!(!apart["device"].as_str().unwrap().contains("fused"), "{}", apart["device"]);
    for key in ["block_scores", "row_scores"] {
        let (a, f) = (apart["topup"][key].as_array().unwrap(), fused["topup"][key].as_array().unwrap());
        assert_eq!(a.len(), f.len(), "{key}");
        for (a, f) in a.iter().zip(f) {
            let (sa, sf) = (a[1].as_f64().unwrap(), f[1].as_f64().unwrap());
            assert!(sa > 0.0 && (sa - sf).abs() <= 1e-4 * sa, "{key} at λ {}: apart {sa}, fused {sf}", a[0]);
        }
    }
    for key in ["lambda_block", "lambda_row"] {
        assert_eq!(apart["topup"][key], fused["topup"][key], "{key}");
    }
    // tiny-llama stacks q+k+v (64 × 192) and gate+up (64 × 344): 34,304 values, f32, for the
    // block being pruned and its pruned copy.
    let est = |r: &serde_json::Value| r["memory"]["estimated_peak_mib"].as_f64().unwrap() * (1u64 << 20) as f64;
    assert_eq!(est(&fused) - est(&apart), (2 * 34_304 * 4) as f64);
    let _ = std::fs::remove_dir_all(&tmp);
}

/// OWL on the real model of ../shared against the authors' code (their OWL baseline, which
/// follows OWL's own), run by scripts/owl_golden.py on the same windows: each block's outlier
/// ratio (100 × #(|W|·‖X‖ > M·mean) / #weights over the dense model) and the block sparsities
/// λ spreads from them, clamped to [0.01, 0.99]. A ratio may differ by the few scores within
/// rounding of the threshold: two weights each (one is 100 / 724,992 ≈ 1.4e-4 here); the
/// sparsities then by what such ratios can move them (16λε / the ratios' range for ratios
/// within ε), while the mapping from their ratios gives their sparsities to rounding.
fn owl_matches_the_authors_code(choice: Choice) {
    let g = golden("wt2-llama-owl");
    let dir = shared("models/wt2-llama");
    let seqlen = g["seqlen"].as_u64().unwrap() as usize;
    let ids = tokenize_file(&Tokenizer::open(&dir).unwrap(), &shared(g["calib"].as_str().unwrap())).unwrap();
    let starts: Vec<usize> = g["windows"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
    let windows = gather_windows(&ids, &starts, seqlen);
    let model = Model::open(&dir, &select(choice)).unwrap();
    let per_weight = 100.0 / model.linear_shapes(0).iter().map(|s| (s[0] * s[1]) as f64).sum::<f64>();
    for case in g["cases"].as_array().unwrap() {
        let num = |k: &str| case[k].as_f64().unwrap();
        let ratios = owl_outlier_ratios(&model, &windows, seqlen, num("owl_m")).unwrap();
        let (want_ratios, want_sparsities) = (doubles(&case["outlier_ratios"]), doubles(&case["block_sparsities"]));
        assert_eq!(ratios.len(), want_ratios.len());
        for (b, (r, w)) in ratios.iter().zip(&want_ratios).enumerate() {
            assert!(
                (r - w).abs() <= 2.0 * per_weight + 1e-12,
                "{choice:?} M {}: block {b} outlier ratio {r} vs the authors' {w}",
                num("owl_m")
            );
        }
        let range = want_ratios.iter().cloned().fold(f64::NEG_INFINITY, f64::max)
            - want_ratios.iter().cloned().fold(f64::INFINITY, f64::min);
        let tolerance = 16.0 * num("owl_lambda") * 2.0 * per_weight / range + 1e-12;
        // The mapping alone, from their ratios: their arithmetic, to rounding.
        let from_theirs = owl_block_sparsities(&want_ratios, num("owl_lambda"), num("sparsity"));
        for (b, (s, w)) in from_theirs.iter().zip(&want_sparsities).enumerate() {
            assert!((s - w).abs() <= 1e-12, "{case}: block {b} sparsity {s} from the authors' ratios vs theirs {w}");
        }
        let sparsities = owl_block_sparsities(&ratios, num("owl_lambda"), num("sparsity"));
        for (b, (s, w)) in sparsities.iter().zip(&want_sparsities).enumerate() {
            assert!((s - w).abs() <= tolerance, "{choice:?} {case}: block {b} sparsity {s} vs the authors' {w}");
        }
        println!("OWL on {choice:?}, M {}: ratios {ratios:?}, the authors' {want_ratios:?}", num("owl_m"));
    }
}

#[test]
fn owl_matches_the_authors_code_on_cpu() {
    owl_matches_the_authors_code(Choice::Cpu);
}

#[test]
fn owl_matches_the_authors_code_on_gpu() {
    owl_matches_the_authors_code(Choice::Gpu);
}

/// NeuroAL's whole search on the real model of ../shared against the authors' code run by
/// `scripts/time_authors_code.py --golden` on the same search windows (Wanda, both steps, 70%):
/// the same block λ, every candidate's score within 1e-4 (block step) and 1e-3 (row step) of
/// theirs, and a row λ whose score under their code is within 0.1% of their best (a tie). The
/// scores are sums of small norm differences, so one weight that f32 rounding puts on the
/// other side of a row's cut moves a candidate by up to about 6e-4 (measured: 4.4e-5 at most in
/// the block step, 5.8e-4 in the row step).
#[test]
fn neuroal_search_matches_the_authors_code() {
    let (model, calib) = (shared("models/wt2-llama"), shared("data/wikitext-2/valid.txt"));
    search_matches_the_authors_code("wt2-llama-neuroal", &model, &calib, &["--seqlen", "256", "--nsamples", "4"]);
}

/// The same on fixtures of the other families, against the authors' code for each
/// (`time_authors_code.py` on the report of the command below, `--method` as named):
/// post-LayerNorm OPT and Phi under Wanda; pre-LayerNorm OPT and grouped-query Mistral under
/// magnitude, whose f16 weights repeat |w| values, so that rows hold equal scores at their cut.
/// There the authors' row step keeps the earlier columns (a stable descending sort), their
/// block step the later ones; pruning the earlier ones in both had put every row-step score on
/// tiny-opt about 1% off theirs (measured on its golden before the fix). Each golden also holds
/// the zero pattern of their pruned model, which ours must equal weight for weight (on tiny-opt
/// 28 of 76,800 entries had differed).
#[test]
fn neuroal_search_matches_the_authors_code_on_every_family() {
    let calib = asset("sample.txt");
    for (golden, fixture, method) in [
        ("tiny-opt-post-ln-neuroal", "tiny-opt-post-ln", "wanda"),
        ("tiny-opt-magnitude-neuroal", "tiny-opt", "magnitude"),
        ("tiny-phi-neuroal", "tiny-phi", "wanda"),
        ("tiny-mistral-gqa-magnitude-neuroal", "tiny-mistral-gqa", "magnitude"),
        // Qwen3 (per-head q/k norms, explicit head_dim), with transformers 4.57.1 under their code.
        ("tiny-qwen3-neuroal", "tiny-qwen3", "wanda"),
        // Mistral over a 24-token sliding window (every layer slides, so their loop, which
        // hands every layer the first layer's mask, replays it faithfully).
        ("tiny-mistral-swa-neuroal", "tiny-mistral-swa", "wanda"),
        // Gemma 2 and 3: their loop is handed each layer's own mask and rotation (local or
        // global; authors_code.py), as transformers' model would give them.
        ("tiny-gemma2-neuroal", "tiny-gemma2", "wanda"),
        ("tiny-gemma3-neuroal", "tiny-gemma3", "wanda"),
        // Phi-3: their code runs on the same model with its fused qkv_proj and gate_up_proj
        // split into the LLaMA layout (authors_code.py), which neuroal's fused linears must
        // equal: the same masks, and each fused linear's alignment counted once per part.
        ("tiny-phi3-neuroal", "tiny-phi3", "wanda"),
        // Qwen2 and Qwen3 whose second layer only slides (max_window_layers 1): their loop is
        // handed each layer's own mask, as for Gemma.
        ("tiny-qwen2-swa-neuroal", "tiny-qwen2-swa", "wanda"),
        ("tiny-qwen3-swa-neuroal", "tiny-qwen3-swa", "wanda"),
        // A multimodal Gemma 3 folder: their code runs on its language model (torch_model.py);
        // neuroal reads the same tensors under their stored language_model.* names.
        ("tiny-gemma3-mm-neuroal", "tiny-gemma3-mm", "wanda"),
        // multiflow (their prune_multiflow's score) under NeuroAL, both steps. (On tiny-phi its
        // λs and zero patterns are theirs too, but one row-step score is 1.4e-3 off theirs,
        // beyond this test's 1e-3: measured, not tested.)
        ("tiny-llama-multiflow-neuroal", "tiny-llama", "multiflow"),
        ("tiny-opt-multiflow-neuroal", "tiny-opt", "multiflow"),
        ("tiny-mistral-gqa-multiflow-neuroal", "tiny-mistral-gqa", "multiflow"),
    ] {
        search_matches_the_authors_code(
            golden,
            &asset(fixture),
            &calib,
            &["--seqlen", "64", "--nsamples", "16", "--method", method],
        );
    }
}

/// DSnoT over a uniform prune against the authors' prune_DSnoT (`time_authors_code.py --top-up
/// dsnot` on the report of the same command): their rules, their default linears (the
/// attention's; they skip the MLP's), the same zero pattern weight for weight. On the fixtures
/// (LLaMA, OPT, Phi-2, Mistral) with 10 cycles: with 50, their walks leave their lists on 64-column rows and their code
/// fails (ours ends such a walk). On wt2-llama, 50 cycles at 70%: every refined linear's mask
/// equals theirs; downstream of them, f32 rounding of the next blocks' inputs has put 2 of
/// 176,128 entries of block 5's up_proj on the other side of a tie (measured), so the MLP's
/// are allowed one weight whose mask differs.
#[test]
fn dsnot_matches_the_authors_code() {
    let calib = asset("sample.txt");
    let tiny = ["--seqlen", "64", "--nsamples", "16", "--dsnot-cycles", "10"];
    for (golden, fixture, sparsity, method) in [
        ("tiny-llama-dsnot", "tiny-llama", "0.5", "wanda"),
        ("tiny-opt-dsnot", "tiny-opt", "0.5", "wanda"),
        ("tiny-phi-dsnot", "tiny-phi", "0.5", "wanda"),
        ("tiny-mistral-gqa-multiflow-dsnot", "tiny-mistral-gqa", "0.6", "multiflow"),
    ] {
        let extra: Vec<&str> = tiny.iter().copied().chain(["--sparsity", sparsity, "--method", method]).collect();
        refinement_matches_the_authors_code(golden, &asset(fixture), &calib, &extra, 0);
    }
    let (model, calib) = (shared("models/wt2-llama"), shared("data/wikitext-2/valid.txt"));
    let extra = ["--seqlen", "256", "--nsamples", "16", "--sparsity", "0.7"];
    refinement_matches_the_authors_code("wt2-llama-dsnot", &model, &calib, &extra, 1);
}

/// AlphaPruning against the authors' `--top_up alpha` (`time_authors_code.py --top-up alpha`,
/// ε 0.3, on the report of the same command): each block's α (the mean of its linears' Hill
/// estimates; faer's singular values against LAPACK's: measured within 1e-5 relative) and
/// sparsity (within 1e-5), and the same zero patterns, on wt2-llama at 70% and on the OPT, Phi-2
/// and grouped-query Mistral fixtures at 60%.
#[test]
fn alpha_pruning_matches_the_authors_code() {
    let wt2 = (shared("models/wt2-llama"), shared("data/wikitext-2/valid.txt"), ["256", "16", "0.7"]);
    let fixtures =
        ["tiny-opt", "tiny-phi", "tiny-mistral-gqa"].map(|f| (asset(f), asset("sample.txt"), ["64", "16", "0.6"]));
    let goldens = ["wt2-llama-alpha", "tiny-opt-alpha", "tiny-phi-alpha", "tiny-mistral-gqa-alpha"];
    for (golden_name, (model, calib, [seqlen, nsamples, sparsity])) in
        goldens.into_iter().zip(std::iter::once(wt2).chain(fixtures))
    {
        let g = golden(golden_name);
        let plots = std::env::temp_dir().join(format!("neuroal-alpha-plots-{}-{golden_name}", std::process::id()));
        let args = ["--top-up", "alpha", "--seqlen", seqlen, "--nsamples", nsamples, "--sparsity", sparsity, "--plots"];
        let args: Vec<&str> = args.into_iter().chain([plots.to_str().unwrap()]).collect();
        let (r, ours) = prune_for_golden(golden_name, &model, &calib, &args);
        // α per block is drawn beside the sparsities.
        let png = std::fs::read(plots.join("alpha_per_block.png")).unwrap();
        assert!(png.starts_with(b"\x89PNG"), "{golden_name}: alpha_per_block.png");
        let _ = std::fs::remove_dir_all(&plots);
        assert_eq!(r["topup"]["alpha_epsilon"], 0.3, "{golden_name}");
        for (key, tolerance) in [("alphas", 1e-5), ("block_sparsities", 1e-5)] {
            let (got, want) = (doubles(&r["topup"][key]), doubles(&g[key]));
            assert_eq!(got.len(), want.len(), "{golden_name}: {key}");
            for (b, (x, y)) in got.iter().zip(&want).enumerate() {
                assert!((x - y).abs() <= tolerance * y.abs(), "{golden_name}: block {b}'s {key}: ours {x}, theirs {y}");
            }
        }
        for (name, hash) in g["mask_sha256"].as_object().unwrap() {
            assert_eq!(ours.get(name).map(String::as_str), hash.as_str(), "{golden_name}: {name}'s mask");
        }
    }
}

/// `extra`'s prune with `--refine dsnot` against the golden's zero patterns: the attention's
/// (the refined linears) equal, at most `differing` of the others' different.
fn refinement_matches_the_authors_code(
    golden_name: &str,
    model: &Path,
    calib: &Path,
    extra: &[&str],
    differing: usize,
) {
    let g = golden(golden_name);
    let args: Vec<&str> = ["--refine", "dsnot"].iter().chain(extra).copied().collect();
    let (r, ours) = prune_for_golden(golden_name, model, calib, &args);
    assert_eq!(r["settings"]["refine"]["method"], "dsnot", "{golden_name}");
    assert_eq!(r["settings"]["refine"]["linears"], "attention", "{golden_name}");
    let theirs = g["mask_sha256"].as_object().unwrap();
    assert_eq!(ours.len(), theirs.len(), "{golden_name}: prunable weights");
    let mut other = 0;
    for (name, hash) in theirs {
        let sha = ours.get(name).map(String::as_str);
        if name.contains(".self_attn.") {
            assert_eq!(sha, hash.as_str(), "{golden_name}: {name}'s refined mask differs from the authors'");
        } else if sha != hash.as_str() {
            other += 1;
            assert!(other <= differing, "{golden_name}: {name}'s mask differs from the authors'");
        }
    }
}

/// `neuroal prune` of `model` on `calib` with `args`, on the CPU, into a folder of its own
/// (removed after): its report and each written weight's zero pattern ([`zero_pattern_hashes`]).
fn prune_for_golden(
    golden_name: &str,
    model: &Path,
    calib: &Path,
    args: &[&str],
) -> (serde_json::Value, std::collections::BTreeMap<String, String>) {
    let out = std::env::temp_dir().join(format!("neuroal-vs-authors-{}-{golden_name}", std::process::id()));
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_neuroal"))
        .args(["prune", "--model", model.to_str().unwrap(), "--calib", calib.to_str().unwrap()])
        .args(["--out", out.to_str().unwrap(), "--device", "cpu", "--force"])
        .args(args)
        .output()
        .unwrap();
    assert!(o.status.success(), "{golden_name}: {}", String::from_utf8_lossy(&o.stderr));
    let r = serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    let masks = zero_pattern_hashes(&out);
    let _ = std::fs::remove_dir_all(&out);
    (r, masks)
}

/// SHA-256 of each block weight's zero pattern in a written checkpoint (one byte per entry, 1
/// where the value is ±0, row-major): what `time_authors_code.py --golden` keeps of their
/// pruned model.
fn zero_pattern_hashes(dir: &Path) -> std::collections::BTreeMap<String, String> {
    use sha2::{Digest, Sha256};
    // The blocks' two-dimensional tensors (not their biases and norms), as the script picks them;
    // their shapes as the family declares them.
    let config = neuroal::model::config::Config::from_file(&dir.join("config.json")).unwrap();
    let weights: std::collections::BTreeSet<String> = neuroal::model::checkpoint_tensors(&config, false)
        .into_iter()
        .filter(|(n, s)| n.contains(".layers.") && s.len() == 2)
        .map(|(n, _)| n)
        .collect();
    // A multimodal folder's language model is stored under language_model.*; the script names
    // its text model's weights as the family reads them.
    let read_name = |stored: String| match config.is_text_of_multimodal() {
        true => stored.strip_prefix("language_model.").map(String::from).unwrap_or(stored),
        false => stored,
    };
    shard_tensors(dir)
        .into_iter()
        .map(|(name, t)| (read_name(name), t))
        .filter(|(name, _)| weights.contains(name))
        .map(|(name, (dtype, bytes))| {
            let zeros: Vec<u8> = neuroal::io::checkpoint::decode_f32(&bytes, dtype)
                .unwrap()
                .iter()
                .map(|&v| u8::from(v == 0.0))
                .collect();
            (name, Sha256::digest(&zeros).iter().map(|b| format!("{b:02x}")).collect())
        })
        .collect()
}

fn search_matches_the_authors_code(
    golden_name: &str,
    model: &std::path::Path,
    calib: &std::path::Path,
    extra: &[&str],
) {
    let g = golden(golden_name);
    let args: Vec<&str> = ["--sparsity", "0.7", "--top-up", "neuroal"].iter().chain(extra).copied().collect();
    let (r, ours) = prune_for_golden(golden_name, model, calib, &args);
    // The written masks against the authors' pruned model, where the golden has its hashes.
    if let Some(theirs) = g.get("mask_sha256").and_then(|m| m.as_object()) {
        assert_eq!(ours.len(), theirs.len(), "{golden_name}: prunable weights");
        for (name, hash) in theirs {
            assert_eq!(
                ours.get(name).map(String::as_str),
                hash.as_str(),
                "{golden_name}: {name}'s mask differs from the authors'"
            );
        }
    }
    assert_eq!(
        r["calibration"]["search_windows"], g["search_windows"],
        "{golden_name}: the golden was made on other windows"
    );
    assert_eq!(r["topup"]["lambda_block"], g["lambda_block"], "{golden_name}");
    for (key, tolerance) in [("block_scores", 1e-4), ("row_scores", 1e-3)] {
        let ours = r["topup"][key].as_array().unwrap();
        let want = doubles(&g[key]);
        assert_eq!(ours.len(), want.len(), "{golden_name}: {key}");
        for (pair, w) in ours.iter().zip(&want) {
            let (lambda, score) = (pair[0].as_f64().unwrap(), pair[1].as_f64().unwrap());
            assert!(
                (score - w).abs() <= tolerance * w,
                "{golden_name}: {key} at λ {lambda}: ours {score}, the authors' {w}"
            );
        }
    }
    let rows = doubles(&g["row_scores"]);
    let ours_at =
        r["topup"]["row_scores"].as_array().unwrap().iter().position(|p| p[0] == r["topup"]["lambda_row"]).unwrap();
    let best = rows.iter().cloned().fold(f64::INFINITY, f64::min);
    assert!(
        rows[ours_at] <= best * (1.0 + 1e-3),
        "{golden_name}: row λ {}: their score {} against their best {best}",
        r["topup"]["lambda_row"],
        rows[ours_at]
    );
}
