//! OPT (pre- and post-LayerNorm) and Phi-2 on the same engine as the LLaMA family: NeuroAL end to end on each fixture,
//! the written checkpoint's layout, and each family's bad configs refused in one line.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;
use neuroal::commands::report::Report;
use neuroal::gpu::device::Choice;
use neuroal::io::tokenizer::{Tokenizer, tokenize_file};
use neuroal::model::Model;
use neuroal::prune::neuroal::{block_grid, row_grid};

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("neuroal-families-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn neuroal(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_neuroal"))
        .args(args)
        .env("XDG_RUNTIME_DIR", std::env::temp_dir())
        .output()
        .unwrap()
}

fn names_and_shapes(dir: &Path) -> Vec<(String, Vec<usize>, String)> {
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut v: Vec<_> =
        st.tensors().into_iter().map(|(n, t)| (n, t.shape().to_vec(), format!("{:?}", t.dtype()))).collect();
    v.sort();
    v
}

#[test]
fn wanda_and_neuroal_at_70_percent_on_every_family() {
    let s = scratch("neuroal");
    for fixture in ["tiny-opt", "tiny-phi", "tiny-llama", "tiny-opt-post-ln"] {
        let out = s.join(fixture);
        let model = asset(fixture);
        let o = neuroal(&[
            "prune",
            "--model",
            model.to_str().unwrap(),
            "--calib",
            asset("sample.txt").to_str().unwrap(),
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
            "--top-up",
            "neuroal",
            "--device",
            "cpu",
        ]);
        assert!(o.status.success(), "{fixture}: {}", String::from_utf8_lossy(&o.stderr));
        let r: Report = serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
        let (lb, lr) = (r.topup.lambda_block.unwrap(), r.topup.lambda_row.unwrap());
        println!(
            "{fixture}: λ block {lb}, λ row {lr}, overall {:.4}, blocks {:?}",
            r.sparsity.overall, r.sparsity.blocks
        );
        assert!(block_grid(0.7).contains(&lb) && row_grid().contains(&lr), "{fixture}: λ {lb} / {lr}");
        assert_eq!(r.topup.block_scores.len(), 14);
        assert_eq!(r.topup.row_scores.len(), 15);
        assert!(r.topup.block_scores.iter().chain(&r.topup.row_scores).all(|p| p[1].is_finite() && p[1] > 0.0));
        // Rows prune ⌊(1 − s_r)·in⌋-rounded counts: at most one weight per row off, ≤ 1/64 here.
        assert!((r.sparsity.overall - 0.7).abs() < 1.0 / 64.0, "{fixture}: overall {}", r.sparsity.overall);
        assert!(
            r.sparsity.blocks[0] < r.sparsity.blocks[1],
            "{fixture}: early blocks stay denser: {:?}",
            r.sparsity.blocks
        );
        // The written checkpoint: same names, shapes and dtypes; what inspect counts is the report.
        assert_eq!(names_and_shapes(&out), names_and_shapes(&model));
        let ins = neuroal::commands::inspect::inspect(&out).unwrap();
        let m = Model::open(&model, &select(Choice::Cpu)).unwrap();
        assert_eq!(ins.layers.len(), m.linear_counts().iter().sum::<usize>());
        assert!((ins.overall - r.sparsity.overall).abs() < 1e-12);
        // And it runs: a finite perplexity, worse than the dense model's.
        let dev = select(Choice::Cpu);
        let ids = tokenize_file(&Tokenizer::open(&out).unwrap(), &asset("sample.txt")).unwrap();
        let dense = neuroal::measure::perplexity::perplexity(&m, &ids, 64, Some(8), "cpu").unwrap().ppl;
        let pruned =
            neuroal::measure::perplexity::perplexity(&Model::open(&out, &dev).unwrap(), &ids, 64, Some(8), "cpu")
                .unwrap()
                .ppl;
        assert!(pruned.is_finite() && pruned != dense, "{fixture}: {pruned} vs dense {dense}");
    }
    let _ = std::fs::remove_dir_all(&s);
}

#[test]
fn bad_configs_of_each_family_get_one_line() {
    let s = scratch("bad");
    let window_0 = "\"sliding_window\" is 0; it must be at least 1";
    let cases: [(&str, &str, serde_json::Value, &str); 31] = [
        ("tiny-opt", "ffn_dim", serde_json::Value::Null, "missing field \"ffn_dim\""),
        (
            "tiny-opt",
            "activation_function",
            "gelu".into(),
            "unsupported activation_function \"gelu\" for OPT (only relu)",
        ),
        ("tiny-opt-post-ln", "word_embed_proj_dim", 0.into(), "\"word_embed_proj_dim\" is 0; it must be at least 1"),
        (
            "tiny-opt",
            "word_embed_proj_dim",
            32.into(),
            "tensor \"model.decoder.embed_tokens.weight\" has shape [384, 64], expected [384, 32]",
        ),
        ("tiny-phi", "intermediate_size", serde_json::Value::Null, "missing field \"intermediate_size\""),
        ("tiny-phi", "hidden_act", "relu".into(), "unsupported hidden_act \"relu\" for Phi (only gelu_new)"),
        ("tiny-phi", "qk_layernorm", true.into(), "Phi with qk_layernorm = true is not supported"),
        (
            "tiny-llama",
            "rope_scaling",
            serde_json::json!({"rope_type": "linear", "factor": 0.0}),
            "\"rope scaling factor\" is 0; it must be a positive number",
        ),
        (
            "tiny-llama",
            "rope_scaling",
            serde_json::json!({"type": "dynamic"}),
            "rope scaling \"dynamic\" lacks \"factor\"",
        ),
        (
            "tiny-llama",
            "mlp_bias",
            "yes".into(),
            "not a valid config.json (invalid type: string \"yes\", expected a boolean)",
        ),
        (
            "tiny-phi",
            "rope_parameters",
            serde_json::json!({"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0, "partial_rotary_factor": 0.5}),
            "Phi with rope scaling \"linear\" (rope_parameters) is not supported",
        ),
        ("tiny-qwen3", "hidden_act", "gelu".into(), "unsupported hidden_act \"gelu\" (only silu)"),
        (
            "tiny-gemma2",
            "hidden_activation",
            "relu".into(),
            "unsupported hidden_activation \"relu\" for gemma2 (only gelu_pytorch_tanh)",
        ),
        (
            "tiny-gemma2",
            "layer_types",
            serde_json::json!(["sliding_attention"]),
            "\"layer_types\" has 1 entries for 2 layers",
        ),
        (
            "tiny-gemma2",
            "layer_types",
            serde_json::json!(["sliding_attention", "chunked_attention"]),
            "unsupported layer type \"chunked_attention\" (full_attention, sliding_attention)",
        ),
        (
            "tiny-gemma2",
            "attn_logit_softcapping",
            0.0.into(),
            "\"attn_logit_softcapping\" is 0; it must be a positive number",
        ),
        (
            "tiny-gemma3",
            "rope_scaling",
            serde_json::json!({"rope_type": "yarn", "factor": 2.0}),
            "gemma3_text with rope scaling \"yarn\" is not supported",
        ),
        (
            "tiny-phi3",
            "rope_scaling",
            serde_json::json!({"type": "longrope", "short_factor": [1.0], "long_factor": [1.0]}),
            "rope scaling \"short_factor\" has 1 factors, the rotary dimension 12 needs 6",
        ),
        (
            "tiny-phi3",
            "partial_rotary_factor",
            0.01.into(),
            "partial_rotary_factor 0.01 gives a rotary dimension of 0; it must be even and positive",
        ),
        // A window of 0 tokens, in every family that has one.
        ("tiny-mistral-swa", "sliding_window", 0.into(), window_0),
        ("tiny-qwen2-swa", "sliding_window", 0.into(), window_0),
        ("tiny-gemma2", "sliding_window", 0.into(), window_0),
        ("tiny-phi3", "sliding_window", 0.into(), window_0),
        (
            "tiny-qwen3-swa",
            "layer_types",
            serde_json::json!(["full_attention"]),
            "\"layer_types\" has 1 entries for 2 layers",
        ),
        // A multimodal Gemma 3 folder: its text config is what is read (the defaults where
        // silent, as transformers fills them).
        ("tiny-gemma3-mm", "text_config", "gemma".into(), "\"text_config\" is not an object"),
        (
            "tiny-gemma3-mm",
            "text_config",
            serde_json::json!({"hidden_activation": "relu"}),
            "unsupported hidden_activation \"relu\" for gemma3_text (only gelu_pytorch_tanh)",
        ),
        // Mixtures of experts: more experts a token than there are, none; dense layers that the
        // weights do not hold, or that do not exist.
        (
            "tiny-mixtral",
            "num_experts_per_tok",
            5.into(),
            "num_experts_per_tok (5) must be between 1 and the number of experts (4)",
        ),
        (
            "tiny-olmoe",
            "num_experts_per_tok",
            0.into(),
            "num_experts_per_tok (0) must be between 1 and the number of experts (4)",
        ),
        (
            "tiny-qwen3-moe",
            "mlp_only_layers",
            serde_json::json!([1]),
            "tensor \"model.layers.1.mlp.gate_proj.weight\" not found in the checkpoint",
        ),
        (
            "tiny-qwen3-moe",
            "mlp_only_layers",
            serde_json::json!([5]),
            "\"mlp_only_layers\" names layer 5, but the model has 2 (num_hidden_layers)",
        ),
        ("tiny-qwen3-moe", "decoder_sparse_step", 0.into(), "\"decoder_sparse_step\" is 0; it must be at least 1"),
    ];
    for (i, (fixture, key, value, expect)) in cases.into_iter().enumerate() {
        let dir = model_copy(fixture, &s.join(format!("{i}")));
        edit_config(&dir, key, value);
        for args in [
            vec![
                "eval",
                "--model",
                dir.to_str().unwrap(),
                "--text",
                asset("sample.txt").to_str().unwrap(),
                "--device",
                "cpu",
            ],
            vec!["inspect", dir.to_str().unwrap()],
        ] {
            let o = neuroal(&args);
            let err = String::from_utf8_lossy(&o.stderr);
            assert_eq!(o.status.code(), Some(2), "{fixture} {key}: {err}");
            let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
            assert_eq!(lines.len(), 1, "{fixture} {key}: {err}");
            assert!(lines[0].contains(expect), "{fixture} {key}: expected \"{expect}\" in {err}");
        }
    }
    let _ = std::fs::remove_dir_all(&s);
}

/// A norm, router or expert tensor missing from a checkpoint of each new family is named as
/// stored, in one line, before any work (a multimodal folder's under its language model's
/// prefix).
#[test]
fn a_missing_tensor_of_each_family_is_named() {
    let s = scratch("missing-norm");
    for (i, (fixture, missing)) in [
        ("tiny-qwen3", "model.layers.1.self_attn.k_norm.weight"),
        ("tiny-qwen2-swa", "model.layers.1.post_attention_layernorm.weight"),
        ("tiny-gemma2", "model.layers.0.post_feedforward_layernorm.weight"),
        ("tiny-gemma3", "model.layers.1.self_attn.q_norm.weight"),
        ("tiny-gemma3-mm", "language_model.model.layers.1.pre_feedforward_layernorm.weight"),
        ("tiny-phi3", "model.layers.1.input_layernorm.weight"),
        ("tiny-mixtral", "model.layers.1.block_sparse_moe.experts.3.w2.weight"),
        ("tiny-qwen2-moe", "model.layers.0.mlp.shared_expert_gate.weight"),
        ("tiny-qwen3-moe", "model.layers.1.mlp.gate.weight"),
        ("tiny-olmoe", "model.layers.0.self_attn.k_norm.weight"),
    ]
    .into_iter()
    .enumerate()
    {
        let dir = model_copy(fixture, &s.join(format!("{i}")));
        let path = dir.join("model.safetensors");
        let bytes = std::fs::read(&path).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let kept: Vec<(String, safetensors::tensor::TensorView)> =
            st.tensors().into_iter().filter(|(n, _)| n != missing).collect();
        assert_eq!(kept.len() + 1, st.len(), "{fixture}: {missing} is in the fixture");
        safetensors::serialize_to_file(kept, None, &path).unwrap();
        for args in [
            vec!["eval", "--model", dir.to_str().unwrap(), "--text", asset("sample.txt").to_str().unwrap()],
            vec!["inspect", dir.to_str().unwrap()],
        ] {
            let o = neuroal(&args);
            let err = String::from_utf8_lossy(&o.stderr);
            assert_eq!(o.status.code(), Some(2), "{fixture}: {err}");
            assert_eq!(err.trim_end().lines().count(), 1, "{fixture}: {err}");
            assert!(err.contains(&format!("tensor \"{missing}\" not found")), "{fixture}: {err}");
        }
    }
    let _ = std::fs::remove_dir_all(&s);
}

/// Which bias flags a family reads is its modeling code's choice in transformers: LLaMA reads
/// `attention_bias` (q, k, v and o) and `mlp_bias` (gate, up, down); Qwen2 always has q/k/v
/// biases and nothing else; Mistral has none. A flag the family ignores changes nothing (the
/// perplexity is transformers' on the unchanged fixture), one it reads asks for the tensors.
#[test]
fn bias_flags_are_read_as_each_familys_modeling_code_reads_them() {
    let s = scratch("bias-flags");
    let with = |i: usize, fixture: &str, edits: &[(&str, bool)]| -> PathBuf {
        let dir = model_copy(fixture, &s.join(format!("{i}")));
        for (key, value) in edits {
            edit_config(&dir, key, (*value).into());
        }
        dir
    };
    let eval = |dir: &Path| {
        neuroal(&[
            "eval",
            "--model",
            dir.to_str().unwrap(),
            "--text",
            asset("sample.txt").to_str().unwrap(),
            "--device",
            "cpu",
            "--seqlen",
            "64",
            "--max-windows",
            "2",
            "--json",
        ])
    };
    let ignored = [
        ("tiny-mistral-gqa", [("attention_bias", true), ("mlp_bias", true)]),
        ("tiny-qwen2", [("attention_bias", false), ("mlp_bias", true)]),
    ];
    for (i, (fixture, edits)) in ignored.into_iter().enumerate() {
        let o = eval(&with(i, fixture, &edits));
        assert!(o.status.success(), "{fixture}: {}", String::from_utf8_lossy(&o.stderr));
        let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let losses = floats(&golden(fixture)["window_losses"]);
        let want = ((losses[0] as f64 + losses[1] as f64) / 2.0).exp();
        let ppl = r["ppl"].as_f64().unwrap();
        assert!((ppl - want).abs() <= 1e-4 * want, "{fixture} {edits:?}: perplexity {ppl}, transformers {want}");
    }
    for (i, (edit, missing)) in
        [("attention_bias", "model.layers.0.self_attn.q_proj.bias"), ("mlp_bias", "model.layers.0.mlp.gate_proj.bias")]
            .into_iter()
            .enumerate()
    {
        let o = eval(&with(10 + i, "tiny-llama", &[(edit, true)]));
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{edit}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{edit}: {err}");
        assert!(err.contains(&format!("tensor \"{missing}\" not found")), "{edit}: {err}");
    }
    let _ = std::fs::remove_dir_all(&s);
}

/// A calibration-only pass skips the products that only feed a block's output (each family
/// declares them); every linear's statistics must be exactly those of the full forward, on
/// every family and on the CPU and GPU paths. Also checks the declared products really are
/// output-only: were one of them an input of another linear, its statistics would differ.
#[test]
fn calibration_pass_records_what_the_full_forward_records() {
    for (device, choice) in [("cpu", Choice::Cpu), ("gpu", Choice::Gpu)] {
        let selected = select(choice);
        let dev = selected.device.clone();
        for fixture in ["tiny-llama", "tiny-opt", "tiny-phi", "tiny-mistral-gqa", "tiny-opt-post-ln", "tiny-qwen2-moe"]
        {
            let model = Model::open(&asset(fixture), &selected).unwrap();
            let tok = Tokenizer::open(&asset(fixture)).unwrap();
            let ids = tokenize_file(&tok, &asset("sample.txt")).unwrap();
            let windows: Vec<u32> = ids[..4 * 32].to_vec();
            let hidden = neuroal::prune::pipeline::embed_windows(&model, &windows, 32).unwrap();
            let pos = model.positions(32);
            for block in model.blocks() {
                let block = block.unwrap();
                let (full, _) = neuroal::prune::pipeline::run_recording(&model, &block, &hidden, &pos, true).unwrap();
                let only = neuroal::prune::pipeline::calibrate(&model, &block, &hidden, &pos, true).unwrap();
                // Every linear recorded on its own input, with no sharing: the family's
                // `input_of` must give the same calibrations.
                let mut own: Vec<neuroal::prune::pruner::Calibration> = model
                    .linear_shapes(block.index)
                    .iter()
                    .map(|s| neuroal::prune::pruner::Calibration::new(s[1], &dev, true))
                    .collect();
                for h in &hidden {
                    block.forward(
                        h.clone(),
                        &pos,
                        Some(&mut |li: usize, x: &burn::tensor::Tensor<3>| own[li].add(x, model.gpu.as_deref())),
                    );
                }
                for (li, ((a, b), c)) in full.iter().zip(&only).zip(&own).enumerate() {
                    let v = |t: &burn::tensor::Tensor<1>| t.clone().into_data().try_to_vec::<f32>().unwrap();
                    let h = |c: &neuroal::prune::pruner::Calibration| {
                        c.hessian.as_ref().unwrap().h.clone().into_data().try_to_vec::<f32>().unwrap()
                    };
                    let what = format!("{fixture} on {device}, block {}, linear {li}", block.index);
                    assert_eq!(v(&a.stats.sumsq), v(&b.stats.sumsq), "{what}");
                    assert_eq!(v(&a.stats.sum), v(&b.stats.sum), "{what}");
                    assert_eq!(a.stats.tokens, b.stats.tokens, "{what}");
                    assert_eq!(h(a), h(b), "{what}");
                    assert_eq!(v(&a.stats.sumsq), v(&c.stats.sumsq), "{what}, shared vs own input");
                    assert_eq!(v(&a.stats.sum), v(&c.stats.sum), "{what}, shared vs own input");
                    assert_eq!(h(a), h(c), "{what}, shared vs own input");
                }
            }
        }
    }
}

/// Each expert of a mixture of experts is calibrated on the tokens its router sends it: on
/// block 0 of every MoE fixture, each expert's token count and the per-channel Σx² of its
/// gate's and down's inputs equal transformers' (hooks on the expert's own linears, in
/// scripts/make_fixtures.py), on the CPU and the GPU path. With 3 tokens some experts get
/// none: those take the statistics of every token instead (the router's input for the gate,
/// every token through the expert for the down).
#[test]
fn experts_are_calibrated_on_the_tokens_routed_to_them() {
    let close = |a: &[f32], b: &[f32], what: &str| {
        let (num, den) = a
            .iter()
            .zip(b)
            .fold((0f64, 0f64), |(n, d), (&x, &y)| (n + (x as f64 - y as f64).powi(2), d + (y as f64).powi(2)));
        assert_eq!(a.len(), b.len(), "{what}");
        assert!((num / den.max(1e-30)).sqrt() < 1e-4, "{what}: relative error {:.2e}", (num / den).sqrt());
    };
    for (device, choice) in [("cpu", Choice::Cpu), ("gpu", Choice::Gpu)] {
        let selected = select(choice);
        for fixture in ["tiny-mixtral", "tiny-qwen2-moe", "tiny-qwen3-moe", "tiny-olmoe"] {
            let g = golden(fixture);
            let model = Model::open(&asset(fixture), &selected).unwrap();
            let ids = tokenize_file(&Tokenizer::open(&asset(fixture)).unwrap(), &asset("sample.txt")).unwrap();
            let block = model.blocks().next().unwrap().unwrap();
            let mut unrouted = 0;
            for (case, windows, seqlen) in [("windows", 2, 64), ("three_tokens", 1, 3)] {
                let want = &g["expert_stats"][case];
                let hidden = neuroal::prune::pipeline::embed_windows(&model, &ids[..windows * seqlen], seqlen).unwrap();
                let pos = model.positions(seqlen);
                let stats = neuroal::prune::pipeline::calibrate(&model, &block, &hidden, &pos, false).unwrap();
                let experts = want["experts"].as_array().unwrap();
                for (e, w) in experts.iter().enumerate() {
                    let (gate, down) = (4 + 3 * e, 6 + 3 * e);
                    let what = |l: usize| format!("{fixture} on {device}, {case}: {}", model.linears(0)[l].name);
                    let sumsq = |l: usize| stats[l].stats.sumsq.clone().into_data().try_to_vec::<f32>().unwrap();
                    let tokens = w["tokens"].as_u64().unwrap() as usize;
                    if tokens > 0 {
                        assert_eq!(stats[gate].stats.tokens, tokens, "{}", what(gate));
                        close(&sumsq(gate), &floats(&w["gate_sumsq"]), &what(gate));
                        close(&sumsq(down), &floats(&w["down_sumsq"]), &what(down));
                    } else {
                        unrouted += 1;
                        assert_eq!(stats[gate].stats.tokens, windows * seqlen, "{}", what(gate));
                        close(&sumsq(gate), &floats(&want["router_sumsq"]), &what(gate));
                        close(&sumsq(down), &floats(&w["down_sumsq_every_token"]), &what(down));
                    }
                }
            }
            assert!(unrouted > 0, "{fixture}: 3 tokens reach every expert");
        }
    }
}

/// `--moe-calibrate all` sends every calibration token through every expert for the
/// statistics: where the routing is uneven (tiny-qwen3-moe's expert 7 gets few tokens or none)
/// its experts' masks differ from the routed calibration's, while block 0's attention, which
/// sees the same tokens either way, keeps the same masks. The report lists each expert's
/// routed tokens (each token counted once per expert it goes to) and those sent none.
#[test]
fn moe_calibrate_all_changes_the_experts_masks_not_the_attentions() {
    let s = scratch("moe-calibrate");
    // tiny-qwen3-moe at 50% on the CPU into s/NAME, with `extra` flags.
    let run = |name: &str, extra: &[&str]| {
        let out = s.join(name);
        let (model, calib) = (asset("tiny-qwen3-moe"), asset("sample.txt"));
        let mut args = vec!["prune", "--model", model.to_str().unwrap(), "--calib", calib.to_str().unwrap()];
        args.extend(["--out", out.to_str().unwrap(), "--sparsity", "0.5", "--device", "cpu"]);
        args.extend(extra);
        let o = neuroal(&args);
        assert!(o.status.success(), "{name}: {}", String::from_utf8_lossy(&o.stderr));
        out
    };
    let prune = |mode: &str| {
        let out = run(mode, &["--seqlen", "64", "--nsamples", "4", "--moe-calibrate", mode]);
        let r: Report = serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
        (shard_tensors(&out), r)
    };
    let ((routed, r), (all, a)) = (prune("routed"), prune("all"));
    let zeros = |t: &(safetensors::Dtype, Vec<u8>)| -> Vec<bool> {
        neuroal::io::checkpoint::decode_f32(&t.1, t.0).unwrap().iter().map(|&v| v == 0.0).collect()
    };
    let same = |name: &str| zeros(&routed[name]) == zeros(&all[name]);
    for l in ["q_proj", "k_proj", "v_proj", "o_proj"] {
        assert!(same(&format!("model.layers.0.self_attn.{l}.weight")), "{l}");
    }
    let differing = (0..8).filter(|e| !same(&format!("model.layers.0.mlp.experts.{e}.gate_proj.weight"))).count();
    assert!(differing > 0, "no expert's mask changed");
    let experts = r.experts.expect("a report of the experts' calibration");
    assert_eq!(experts.calibrate, "routed");
    assert_eq!(experts.tokens.len(), 2);
    for (b, counts) in experts.tokens.iter().enumerate() {
        assert_eq!(counts.len(), 8);
        assert_eq!(counts.iter().sum::<usize>(), 4 * 64 * 2, "block {b}: each token goes to 2 experts");
        for (e, &n) in counts.iter().enumerate() {
            assert_eq!(n == 0, experts.every_token.contains(&format!("block {b} expert {e}")), "block {b} expert {e}");
        }
    }
    let all_experts = a.experts.unwrap();
    assert_eq!((all_experts.calibrate.as_str(), all_experts.tokens.len()), ("all", 0));
    // Magnitude reads no calibration: no expert was counted, none is reported as sent none.
    let out = run("magnitude", &["--method", "magnitude"]);
    let r: Report = serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert!(r.experts.is_none(), "{:?}", r.experts);
    let _ = std::fs::remove_dir_all(&s);
}
