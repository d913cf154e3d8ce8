//! `--dtype f16`: the same model in half precision (norms, softmax, statistics and losses in
//! f32), against f32 and transformers' perplexity, and NeuroAL's choice of λ.

mod common;

use burn::tensor::DType;
use common::*;
use neuroal::commands::report::Report;
use neuroal::gpu::device::{Choice, ComputeDtype};
use neuroal::io::tokenizer::{Tokenizer, tokenize_file};
use neuroal::measure::perplexity::perplexity;
use neuroal::model::Model;

#[test]
fn wt2_llama_in_f16_is_within_0_3_percent_of_f32() {
    let dir = shared("models/wt2-llama");
    let g = golden("wt2-llama");
    let ids = tokenize_file(&Tokenizer::open(&dir).unwrap(), &shared("data/wikitext-2/test.txt")).unwrap();
    for (choice, windows) in [(Choice::Cpu, 40), (Choice::Gpu, 4)] {
        let dev = select(choice);
        if choice == Choice::Gpu && !dev.shader_f16 {
            // An adapter without shader f16 (the default build's emulator, opened through
            // OpenGL) cannot compute in f16: the refusal must be the one-line one. CI's Vulkan
            // emulator has f16, and runs the comparison.
            let e = dev.compute_dtype(ComputeDtype::F16).unwrap_err().to_string();
            assert!(e.contains("no shader f16 support"), "{e}");
            continue;
        }
        let f32m = Model::open(&dir, &dev).unwrap();
        let f16m = Model::open_as(&dir, &dev, DType::F16).unwrap();
        let a = perplexity(&f32m, &ids, 256, Some(windows), "f32").unwrap();
        let b = perplexity(&f16m, &ids, 256, Some(windows), "f16").unwrap();
        let rel = (b.ppl - a.ppl).abs() / a.ppl;
        println!("{choice:?}, {windows} windows: f32 {:.4}, f16 {:.4} (rel {rel:.2e})", a.ppl, b.ppl);
        assert!(rel < 3e-3, "{choice:?}: f16 {} vs f32 {}", b.ppl, a.ppl);
        if windows == 4 {
            let want = g["ppl_first4"].as_f64().unwrap();
            assert!((b.ppl - want).abs() / want < 3e-3, "f16 {} vs transformers {want}", b.ppl);
        }
    }
}

#[test]
fn dtype_resolution_and_refusals() {
    let cpu = select(Choice::Cpu);
    assert_eq!(cpu.compute_dtype(ComputeDtype::Auto).unwrap(), DType::F32);
    assert_eq!(cpu.compute_dtype(ComputeDtype::F16).unwrap(), DType::F16);
    let nd = select(Choice::Ndarray);
    assert!(nd.compute_dtype(ComputeDtype::F16).unwrap_err().to_string().contains("not supported on ndarray"));
    let gpu = select(Choice::Gpu);
    assert!(gpu.compute_dtype(ComputeDtype::Bf16).is_err());
    let auto = gpu.compute_dtype(ComputeDtype::Auto).unwrap();
    assert_eq!(auto, if gpu.shader_f16 { DType::F16 } else { DType::F32 });
}

fn neuroal(dtype: &str, out: &std::path::Path) -> Report {
    serde_json::from_str(&tiny_neuroal_prune(out, &["--device", "cpu", "--dtype", dtype])).unwrap()
}

#[test]
fn neuroal_in_f16_chooses_the_f32_lambdas_or_a_tie() {
    let tmp = std::env::temp_dir().join(format!("neuroal-dtype-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let (a, b) = (neuroal("f32", &tmp.join("f32")), neuroal("f16", &tmp.join("f16")));
    assert_eq!((a.dtype.compute.as_str(), b.dtype.compute.as_str()), ("f32", "f16"));
    // Same λ, or the λ f16 chose scores within 0.1% of the f32 winner in f32's own curve.
    for (scores, la, lb) in [
        (&a.topup.block_scores, a.topup.lambda_block, b.topup.lambda_block),
        (&a.topup.row_scores, a.topup.lambda_row, b.topup.lambda_row),
    ] {
        let (la, lb) = (la.unwrap(), lb.unwrap());
        let score = |l: f64| scores.iter().find(|p| p[0] == l).unwrap()[1];
        println!("λ f32 {la} ({}), f16 {lb} ({})", score(la), score(lb));
        assert!(la == lb || (score(lb) - score(la)).abs() <= 1e-3 * score(la), "f32 λ {la}, f16 λ {lb}");
    }
    assert!((a.sparsity.overall - b.sparsity.overall).abs() < 0.01);
    let _ = std::fs::remove_dir_all(&tmp);
}

/// A stored value that the compute dtype cannot hold (1e6 in a bf16 checkpoint, past f16's
/// 65504) is refused in one line naming the tensor, where it became infinity in the weights and
/// NaN in the outputs; in f32 the same checkpoint runs.
#[test]
fn a_weight_beyond_the_compute_dtypes_range_is_refused_in_one_line() {
    let tmp = std::env::temp_dir().join(format!("neuroal-dtype-range-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let model = model_copy("tiny-qwen2", &tmp);
    edit_tensor(&model, "model.layers.0.mlp.up_proj.weight", |v| v[197] = 1.0e6);
    let eval = |dtype: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_neuroal"))
            .args(["eval", "--model", model.to_str().unwrap(), "--text", asset("sample.txt").to_str().unwrap()])
            .args(["--device", "cpu", "--seqlen", "64", "--max-windows", "1", "--dtype", dtype])
            .output()
            .unwrap()
    };
    let o = eval("f16");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.starts_with("device ")).collect();
    assert_eq!(lines.len(), 1, "{err}");
    // bf16 holds 1e6 as 999424.
    assert!(lines[0].contains("tensor \"model.layers.0.mlp.up_proj.weight\" holds 999424 (index 197), beyond f16's range (±65504); use --dtype f32"), "{err}");
    let o = eval("f32");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let _ = std::fs::remove_dir_all(&tmp);
}
