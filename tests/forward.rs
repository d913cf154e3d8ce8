//! The forward pass against transformers' goldens, on every device.

mod common;

use burn::tensor::{Tensor, TensorData};
use common::*;
use neuroal::io::tokenizer::{Tokenizer, tokenize_file};
use neuroal::measure::perplexity::perplexity;
use neuroal::model::Model;

fn ids_of(g: &serde_json::Value) -> (Vec<u32>, usize) {
    let ids: Vec<u32> = g["ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
    let batch = g["ids_shape"][0].as_u64().unwrap() as usize;
    (ids, batch)
}

#[test]
fn logits_match_transformers_on_every_device() {
    for (dev_name, dev) in devices() {
        for name in fixtures() {
            let g = golden(name);
            let (ids, batch) = ids_of(&g);
            let model = Model::open(&asset(name), &dev).unwrap();
            let logits = model.forward(&ids, batch).unwrap().into_data().try_to_vec::<f32>().unwrap();
            let err = rel_l2(&logits, &floats(&g["logits"]));
            println!("{name} on {dev_name}: logits relative L2 error {err:.3e}");
            assert!(err < 1e-4, "{name} on {dev_name}: relative L2 error {err:.3e}");
        }
    }
}

/// tiny-llama's weights under transformers' other rope scalings (`linear`, also under the old
/// `type` key, and `dynamic`, which changes nothing within max_position_embeddings): the first
/// two windows' losses equal theirs on every device.
#[test]
fn rope_scalings_match_transformers() {
    let g = golden("tiny-llama-rope");
    let seqlen = g["seqlen"].as_u64().unwrap() as usize;
    let ids = tokenize_file(&Tokenizer::open(&asset("tiny-llama")).unwrap(), &asset("sample.txt")).unwrap();
    for (i, variant) in g["variants"].as_array().unwrap().iter().enumerate() {
        let dir = std::env::temp_dir().join(format!("neuroal-rope-{}-{i}", std::process::id()));
        let model_dir = model_copy("tiny-llama", &dir);
        edit_config(&model_dir, "rope_scaling", variant["rope_scaling"].clone());
        let want = floats(&variant["window_losses"]);
        for (dev_name, dev) in devices() {
            let model = Model::open(&model_dir, &dev).unwrap();
            let r = perplexity(&model, &ids, seqlen, Some(want.len()), &dev.description).unwrap();
            assert_eq!(r.window_losses.len(), want.len());
            for (w, (a, b)) in r.window_losses.iter().zip(&want).enumerate() {
                assert!(
                    (a - b).abs() <= 1e-4 * b.abs(),
                    "{} on {dev_name}: window {w} loss {a} vs {b}",
                    variant["rope_scaling"]
                );
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn block_by_block_equals_whole_forward() {
    for (dev_name, dev) in devices() {
        let g = golden("tiny-mistral-gqa");
        let (ids, batch) = ids_of(&g);
        let model = Model::open(&asset("tiny-mistral-gqa"), &dev).unwrap();
        let whole = model.forward(&ids, batch).unwrap().into_data().try_to_vec::<f32>().unwrap();
        // Each block alone, its hidden states taken to the host and back in between, and the
        // block dropped before the next one is loaded: what the streaming pruner does.
        let t = ids.len() / batch;
        let rope = model.positions(t);
        let mut h = model.embed(&ids, batch).unwrap();
        for i in 0..model.num_blocks() {
            let block = model.load_block(i).unwrap();
            let dims = h.dims();
            let host = h.into_data().try_to_vec::<f32>().unwrap();
            let back: Tensor<3> = Tensor::from_data(TensorData::new(host, dims), &dev.device);
            h = block.forward(back, &rope, None);
        }
        let staged = model.head(h).unwrap().into_data().try_to_vec::<f32>().unwrap();
        let err = rel_l2(&staged, &whole);
        assert!(err < 1e-6, "{dev_name}: block-by-block differs from whole forward by {err:.3e}");
    }
}

#[test]
fn perplexity_matches_transformers_on_fixtures() {
    for (dev_name, dev) in devices() {
        for name in fixtures() {
            let g = golden(name);
            let model = Model::open(&asset(name), &dev).unwrap();
            let tok = Tokenizer::open(&asset(name)).unwrap();
            let ids = tokenize_file(&tok, &asset("sample.txt")).unwrap();
            assert_eq!(
                ids.len() as u64,
                g["text_tokens"].as_u64().unwrap(),
                "tokenization differs from the tokenizers library"
            );
            // The GPU path runs on a CPU emulator here: a few windows are enough for it.
            let max = if dev.is_gpu { Some(6) } else { None };
            let seqlen = g["seqlen"].as_u64().unwrap() as usize;
            let r = perplexity(&model, &ids, seqlen, max, &dev.description).unwrap();
            let want = floats(&g["window_losses"]);
            assert_eq!(
                r.window_losses.len(),
                max.unwrap_or(want.len()).min(want.len()),
                "{name} on {dev_name}: window count"
            );
            assert!(
                r.ppl.is_finite() && r.window_losses.iter().all(|l| l.is_finite()),
                "{name} on {dev_name}: not finite"
            );
            for (w, (a, b)) in r.window_losses.iter().zip(&want).enumerate() {
                assert!((a - b).abs() <= 1e-4 * b.abs(), "{name} on {dev_name}: window {w} loss {a} vs {b}");
            }
            if max.is_none() {
                let golden_ppl = g["ppl"].as_f64().unwrap();
                assert_eq!(r.windows, want.len());
                assert!((r.ppl - golden_ppl).abs() <= 1e-4 * golden_ppl, "{name}: ppl {} vs {golden_ppl}", r.ppl);
            }
        }
    }
}

#[test]
fn streamed_blocks_give_the_same_perplexity_as_resident_blocks() {
    let dev = select(neuroal::gpu::device::Choice::Cpu);
    let model = Model::open(&asset("tiny-mistral-gqa"), &dev).unwrap();
    let ids = tokenize_file(&Tokenizer::open(&asset("tiny-mistral-gqa")).unwrap(), &asset("sample.txt")).unwrap();
    let resident = neuroal::measure::perplexity::perplexity_within(&model, &ids, 64, None, "cpu", usize::MAX).unwrap();
    let streamed = neuroal::measure::perplexity::perplexity_within(&model, &ids, 64, None, "cpu", 0).unwrap();
    assert_eq!(resident.windows, streamed.windows);
    assert_eq!(resident.window_losses.len(), streamed.window_losses.len());
    assert_eq!(resident.window_losses.len(), resident.windows);
    for (a, b) in resident.window_losses.iter().zip(&streamed.window_losses) {
        assert!((a - b).abs() <= 1e-6 * b.abs(), "{a} vs {b}");
    }
    let g = golden("tiny-mistral-gqa");
    let want = g["ppl"].as_f64().unwrap();
    assert!((streamed.ppl - want).abs() <= 1e-4 * want);
}

/// transformers' perplexity of tiny-llama's first two windows, and the windows' length.
fn two_window_golden() -> (f64, String) {
    let g = golden("tiny-llama");
    let losses = floats(&g["window_losses"]);
    (((losses[0] as f64 + losses[1] as f64) / 2.0).exp(), g["seqlen"].as_u64().unwrap().to_string())
}

/// The perplexity the CLI printed (on stdout or stderr).
fn printed_perplexity(o: &std::process::Output, what: &str) -> f64 {
    let line = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    line.split("perplexity ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{what}: {line}"))
}

/// The CLI's perplexity of tiny-llama's first two windows on the GPU in f32, with the kernel
/// variable `var` (and only it) set to `kernel`.
fn eval_two_windows_with(seqlen: &str, var: &str, kernel: &str) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_neuroal"))
        .args(["eval", "--model"])
        .arg(asset("tiny-llama"))
        .arg("--text")
        .arg(asset("sample.txt"))
        .args(["--device", "gpu", "--max-windows", "2", "--seqlen", seqlen, "--dtype", "f32"])
        .env("XDG_RUNTIME_DIR", std::env::temp_dir())
        .env_remove("NEUROAL_MATMUL")
        .env_remove("NEUROAL_ATTENTION")
        .env(var, kernel)
        .output()
        .unwrap()
}

/// `NEUROAL_MATMUL` names a fixed kernel for the linears' products on a GPU (or one per weight
/// shape): with either per-thread kernel, or both by shape, the CLI gives transformers'
/// perplexity of the first two windows; so does a
/// tensor-core kernel, which lavapipe declines (burn's kernel then runs, after one warning
/// line); an unknown name gets one line and exit code 2.
#[test]
fn a_fixed_matmul_kernel_gives_transformers_perplexity() {
    let (want, seqlen) = two_window_golden();
    let eval = |kernel: &str| eval_two_windows_with(&seqlen, "NEUROAL_MATMUL", kernel);
    // Runs the kernel; returns its stderr after checking its perplexity against transformers.
    let check = |kernel: &str| -> String {
        let o = eval(kernel);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{kernel}: {err}");
        assert!(err.contains(&format!("[{kernel}]")), "{kernel}: the device line names it: {err}");
        let ppl = printed_perplexity(&o, kernel);
        assert!((ppl - want).abs() <= 1e-4 * want, "{kernel}: perplexity {ppl} vs transformers {want}");
        err.into_owned()
    };
    // Each per-thread kernel for every product; then rules by weight shape (tiny-llama: q, k,
    // v, o 64×64, gate and up 64 → 172, down 172 → 64), as `bench --matmul` sweeps suggest them.
    for kernel in [
        "matmul_simple_unit_max_tile_size",
        "matmul_double_unit_min_tile_size",
        "64x64=matmul_simple_unit_max_tile_size,172x64=burn,matmul_double_unit_min_tile_size",
    ] {
        let err = check(kernel);
        assert!(!err.contains("warning"), "{kernel} ran without falling back: {err}");
    }
    let err = check("matmul_simple_cyclic_cmma");
    assert!(err.lines().filter(|l| l.contains("warning")).count() <= 1, "at most one fallback warning: {err}");
    let o = eval("no_such_kernel");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(
        err.contains(
            "NEUROAL_MATMUL=no_such_kernel: no such matrix-product kernel; one of: burn, matmul_simple_cyclic_cmma"
        ),
        "{err}"
    );
    // `burn` leaves every product to burn: no kernel on the device line.
    let o = eval("burn");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success() && !err.contains("[matmul"), "{err}");
}

/// Listing GPU adapters loads Mesa's Vulkan driver (lavapipe here, as on many CPU machines),
/// which complains twice on stderr when XDG_RUNTIME_DIR is unset; a `--device auto` run sets
/// it to a private folder first, so it starts with nothing but its device line.
#[test]
fn the_gpu_probe_is_quiet_without_xdg_runtime_dir() {
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_neuroal"))
        .args(["eval", "--model"])
        .arg(asset("tiny-llama"))
        .arg("--text")
        .arg(asset("sample.txt"))
        .args(["--max-windows", "1"])
        .env_remove("XDG_RUNTIME_DIR")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        !err.contains("XDG_RUNTIME_DIR") && err.lines().all(|l| l.starts_with("device ") || l.starts_with("note: ")),
        "{err}"
    );
}

/// `neuroal tune` on the GPU (lavapipe here) times every kernel on tiny-llama's linears and
/// attention and keeps the fastest per weight shape and head size in the adapter's file, with
/// the fastest variant of the row selection; a later evaluation on that GPU uses them (its
/// device line gives the rules) and still gives transformers' perplexity; `NEUROAL_MATMUL`,
/// `NEUROAL_ATTENTION` and `NEUROAL_SELECT_*` override the file; a file
/// it cannot understand stops the run with one line naming it, until tune writes it anew; a
/// second tune keeps the other dtypes' lines.
#[test]
fn tuned_kernels_are_kept_and_used() {
    let (want, seqlen) = two_window_golden();
    let cache = std::env::temp_dir().join(format!("neuroal-tune-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&cache);
    let run = |args: &[&str], vars: &[(&str, &str)]| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_neuroal"));
        cmd.args(args)
            .env("XDG_RUNTIME_DIR", std::env::temp_dir())
            .env("XDG_CACHE_HOME", &cache)
            .env_remove("NEUROAL_MATMUL")
            .env_remove("NEUROAL_ATTENTION")
            .env_remove("NEUROAL_FUSE")
            .env_remove("NEUROAL_SELECT_WALK")
            .env_remove("NEUROAL_SELECT_COPIES");
        cmd.envs(vars.iter().copied());
        cmd.output().unwrap()
    };
    let (model, text) = (asset("tiny-llama"), asset("sample.txt"));
    let tune = [
        "tune",
        "--model",
        model.to_str().unwrap(),
        "--tokens",
        "64",
        "--seqlen",
        "32",
        "--iters",
        "1",
        "--dtype",
        "f32",
    ];
    let eval = [
        "eval",
        "--model",
        model.to_str().unwrap(),
        "--text",
        text.to_str().unwrap(),
        "--device",
        "gpu",
        "--max-windows",
        "2",
        "--seqlen",
        &seqlen,
        "--dtype",
        "f32",
    ];
    let o = run(&tune, &[]);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(o.status.success(), "{out}{}", String::from_utf8_lossy(&o.stderr));
    // One file for the adapter: a rule for each of q/k/v/o (64x64), gate/up (64x172), down
    // (172x64), the LM head (64x384) and the stacked q+k+v (64x192) and gate+up (64x344), then
    // the kernel for other products; the kernel for heads of 16; whether the two groups fuse.
    let files: Vec<_> = std::fs::read_dir(cache.join("neuroal")).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let text = std::fs::read_to_string(&files[0]).unwrap();
    let line = |kind: &str| {
        text.lines()
            .find(|l| l.starts_with(kind))
            .unwrap_or_else(|| panic!("{kind} in {text}"))
            .trim_start_matches(kind)
            .to_string()
    };
    let (rules, heads, fuse) = (line("matmul f32 "), line("attention f32 "), line("fuse f32 "));
    for shape in ["64x64=", "64x172=", "172x64=", "64x384=", "64x192=", "64x344="] {
        assert!(rules.contains(shape), "{shape} in {rules}");
    }
    assert!(heads.starts_with("16=") && !heads.contains(','), "{heads}");
    let verdicts: Vec<&str> = fuse.split(',').collect();
    assert_eq!(verdicts.len(), 2, "{fuse}");
    assert!(verdicts[0].starts_with("64x64+64+64=") && verdicts[1].starts_with("64x172+172="), "{fuse}");
    let select = line("select ");
    let (walk, copies) = select.split_once(' ').unwrap_or_else(|| panic!("{select}"));
    assert!(["serial", "two-level"].contains(&walk) && ["1", "2", "4", "8"].contains(&copies), "{select}");
    let histograms = if copies == "1" { "1 histogram".to_string() } else { format!("{copies} histograms") };
    let chosen = format!("{walk} walk, {histograms}");
    assert!(out.lines().any(|l| l.starts_with("row pruning") && l.contains(&chosen)), "{out}");
    assert!(out.contains(&format!("wrote {}", files[0].display())), "{out}");
    // The evaluation uses them (and says which groups it fuses, if any won).
    let o = run(&eval, &[]);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{err}");
    let on: Vec<&str> = verdicts.iter().filter_map(|v| v.strip_suffix("=on")).collect();
    let fused = if on.is_empty() { String::new() } else { format!(", fused {} for f32", on.join(",")) };
    assert!(
        err.contains(&format!(
            "[matmul tuned for f32: {rules}, attention tuned for f32: {heads}{fused}, select {chosen} (tuned)]"
        )),
        "the device line gives the rules: {err}"
    );
    let ppl = printed_perplexity(&o, "tuned");
    assert!((ppl - want).abs() <= 1e-4 * want, "tuned: perplexity {ppl} vs transformers {want}");
    // The variables override them.
    let other = if walk == "serial" { "two-level" } else { "serial" };
    let o = run(
        &eval,
        &[
            ("NEUROAL_MATMUL", "burn"),
            ("NEUROAL_ATTENTION", "ops"),
            ("NEUROAL_SELECT_WALK", other),
            ("NEUROAL_SELECT_COPIES", "2"),
        ],
    );
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    let said = format!("select {other} walk, 2 histograms (NEUROAL_SELECT_WALK={other}, NEUROAL_SELECT_COPIES=2)");
    assert!(o.status.success() && !err.contains("tuned") && err.contains(&said), "{err}");
    // Another dtype's line is kept by the next tune; a broken line stops runs with one line.
    std::fs::write(&files[0], format!("{text}matmul bf16 matmul_no_such_kernel\n")).unwrap();
    let o = run(&eval, &[]);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(
        err.contains(&files[0].display().to_string())
            && err.contains("no matrix-product kernel is named matmul_no_such_kernel")
            && err.contains("run `neuroal tune` again"),
        "{err}"
    );
    // The five variables decide everything: the file is not read, broken or not.
    let o = run(
        &eval,
        &[
            ("NEUROAL_MATMUL", "burn"),
            ("NEUROAL_ATTENTION", "ops"),
            ("NEUROAL_FUSE", "none"),
            ("NEUROAL_SELECT_WALK", "serial"),
            ("NEUROAL_SELECT_COPIES", "1"),
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    std::fs::write(&files[0], format!("{text}matmul bf16 burn\n")).unwrap();
    assert!(run(&tune, &[]).status.success());
    let text = std::fs::read_to_string(&files[0]).unwrap();
    assert!(
        text.lines().any(|l| l == "matmul bf16 burn") && text.lines().any(|l| l.starts_with("matmul f32 64x")),
        "{text}"
    );
    // A file that is not rules at all: one line, then tune replaces it.
    std::fs::write(&files[0], "not a tuned file\n").unwrap();
    let o = run(&eval, &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("expected `matmul|attention|fuse f32|f16|bf16 RULES`"));
    let o = run(&tune, &[]);
    assert!(o.status.success() && String::from_utf8_lossy(&o.stderr).contains("replacing an unreadable tuned file"));
    assert!(run(&eval, &[]).status.success());
    let _ = std::fs::remove_dir_all(&cache);
}

/// `NEUROAL_ATTENTION` names the attention kernel on a GPU: the per-thread flash kernel (one
/// kernel, online softmax) gives transformers' perplexity of the first two windows, as the
/// separate kernels (`ops`) do; the tensor-core flash kernel, which lavapipe declines, falls back
/// to them after at most one warning line; an unknown name gets one line and exit code 2.
#[test]
fn a_fixed_attention_kernel_gives_transformers_perplexity() {
    let (want, seqlen) = two_window_golden();
    let eval = |kernel: &str| eval_two_windows_with(&seqlen, "NEUROAL_ATTENTION", kernel);
    for kernel in ["flash-unit", "ops", "flash-4"] {
        let o = eval(kernel);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{kernel}: {err}");
        assert_eq!(
            err.contains(&format!("{kernel}]")),
            kernel != "ops",
            "{kernel}: the device line names a flash kernel: {err}"
        );
        let warnings = err.lines().filter(|l| l.contains("warning")).count();
        assert!(warnings <= usize::from(kernel == "flash-4"), "{kernel}: {err}");
        let ppl = printed_perplexity(&o, kernel);
        assert!((ppl - want).abs() <= 1e-4 * want, "{kernel}: perplexity {ppl} vs transformers {want}");
    }
    let o = eval("flash");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("NEUROAL_ATTENTION=flash: no such attention kernel; one of: ops, flash-2"), "{err}");
}

/// `NEUROAL_FUSE=all` multiplies the linears that read one input (q, k and v; gate and up;
/// Phi's q, k, v and fc1) as one product with their weights stacked, biases included: every
/// family still gives transformers' perplexity of the first two windows. `none` fuses nothing; any
/// other value gets one line and exit code 2.
#[test]
fn fused_products_give_transformers_perplexity_in_every_family() {
    let eval = |name: &str, fuse: &str| {
        let g = golden(name);
        let seqlen = g["seqlen"].as_u64().unwrap().to_string();
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_neuroal"))
            .args(["eval", "--model"])
            .arg(asset(name))
            .arg("--text")
            .arg(asset("sample.txt"))
            .args(["--device", "gpu", "--max-windows", "2", "--seqlen", &seqlen, "--dtype", "f32", "--json"])
            .env("XDG_RUNTIME_DIR", std::env::temp_dir())
            .env_remove("NEUROAL_MATMUL")
            .env_remove("NEUROAL_ATTENTION")
            .env("NEUROAL_FUSE", fuse)
            .output()
            .unwrap();
        (g, o)
    };
    for name in fixtures() {
        let (g, o) = eval(name, "all");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{name}: {err}");
        assert!(err.contains("fused products per shared input]"), "{name}: the device line says so: {err}");
        let r: serde_json::Value = serde_json::from_slice(&o.stdout)
            .unwrap_or_else(|e| panic!("{name}: {e}: {}", String::from_utf8_lossy(&o.stdout)));
        let losses = floats(&g["window_losses"]);
        let want = ((losses[0] as f64 + losses[1] as f64) / 2.0).exp();
        let ppl = r["ppl"].as_f64().unwrap();
        assert_eq!(r["windows"].as_u64(), Some(2), "{name}");
        assert!((ppl - want).abs() <= 1e-4 * want, "{name} fused: perplexity {ppl} vs transformers {want}");
    }
    let (_, o) = eval("tiny-llama", "none");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success() && !err.contains("fused"), "{err}");
    let (_, o) = eval("tiny-llama", "some");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("NEUROAL_FUSE=some: expected all or none"), "{err}");
}

#[test]
fn a_model_loaded_to_prune_embeds_the_same_bits_and_computes_no_logits() {
    use burn::tensor::DType;
    use neuroal::model::{Ends, check_model_dir};
    for (dev_name, dev) in devices() {
        let dtypes: &[DType] =
            if dev.shader_f16 && dev_name == "gpu" { &[DType::F32, DType::F16] } else { &[DType::F32] };
        for name in fixtures() {
            for &dtype in dtypes {
                let g = golden(name);
                let (ids, batch) = ids_of(&g);
                let load = |ends| {
                    let (config, checkpoint) = check_model_dir(&asset(name)).unwrap();
                    Model::load(config, checkpoint, &dev, dtype, ends).unwrap()
                };
                let (logits, hidden) = (load(Ends::Logits), load(Ends::Hidden));
                // Rows read from the memory map are the rows of the uploaded table, bit for bit.
                let host =
                    |m: &Model| m.embed(&ids, batch).unwrap().cast(DType::F32).into_data().try_to_vec::<f32>().unwrap();
                let (a, b) = (host(&logits), host(&hidden));
                assert!(
                    !a.is_empty() && a.iter().map(|x| x.to_bits()).eq(b.iter().map(|x| x.to_bits())),
                    "{name} on {dev_name} in {dtype:?}"
                );
                // The pruning model has no head: asking it for logits is an error, not a panic.
                let e = hidden.forward(&ids, batch).unwrap_err().to_string();
                assert!(e.contains("without its LM head"), "{e}");
                assert!(logits.forward(&ids, batch).is_ok());
            }
        }
    }
}

/// tiny-mistral-swa's 24-token sliding window is shorter than the 64-token windows its golden
/// perplexity was measured on (`perplexity_matches_transformers_on_fixtures` checks those on
/// every device): here the window is shown to matter, since the same weights without it give
/// other losses; so does Qwen's window, which only the layers from `max_window_layers` on apply.
#[test]
fn the_sliding_window_is_applied_not_ignored() {
    let tmp = std::env::temp_dir().join(format!("neuroal-swa-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let full = model_copy("tiny-mistral-swa", &tmp.join("full"));
    let path = full.join("config.json");
    let mut cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    cfg["sliding_window"] = serde_json::Value::Null;
    std::fs::write(&path, cfg.to_string()).unwrap();
    let dev = select(neuroal::gpu::device::Choice::Cpu);
    let ids = tokenize_file(&Tokenizer::open(&full).unwrap(), &asset("sample.txt")).unwrap();
    let want = floats(&golden("tiny-mistral-swa")["window_losses"]);
    let r = perplexity(&Model::open(&full, &dev).unwrap(), &ids, 64, Some(2), &dev.description).unwrap();
    for (a, b) in r.window_losses.iter().zip(&want) {
        assert!((a - b).abs() > 1e-3 * b.abs(), "without the window the loss {a} is still {b}");
    }

    // Qwen2 and Qwen3 whose second layer alone slides: without use_sliding_window the losses
    // are no longer transformers' (with it, they are: perplexity_matches_transformers_on_fixtures).
    for fixture in ["tiny-qwen2-swa", "tiny-qwen3-swa"] {
        let dir = model_copy(fixture, &tmp.join(fixture));
        edit_config(&dir, "use_sliding_window", false.into());
        let want = floats(&golden(fixture)["window_losses"]);
        let r = perplexity(&Model::open(&dir, &dev).unwrap(), &ids, 64, Some(2), &dev.description).unwrap();
        for (a, b) in r.window_losses.iter().zip(&want) {
            assert!((a - b).abs() > 1e-3 * b.abs(), "{fixture}: without the window the loss {a} is still {b}");
        }
    }
    let _ = std::fs::remove_dir_all(&tmp);
}
