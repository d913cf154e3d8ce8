//! `bench --synthetic`: a random checkpoint of a published shape, forward and a timed NeuroAL
//! prune on each device, and nothing left behind.

use std::process::{Command, Output};

fn bench(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_neuroal"))
        .arg("bench")
        .args(args)
        .env("XDG_RUNTIME_DIR", std::env::temp_dir())
        .output()
        .unwrap()
}

#[test]
fn synthetic_bench_runs_on_cpu_and_gpu_and_cleans_up() {
    let o = bench(&[
        "--synthetic",
        "tiny",
        "--blocks",
        "2",
        "--devices",
        "cpu,gpu",
        "--seqlen",
        "64",
        "--iters",
        "1",
        "--dtype",
        "f32",
        "--prune-sparsity",
        "0.5",
        "--nsamples",
        "8",
        "--search-nsamples",
        "2",
        "--json",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(rows.len(), 2);
    for r in &rows {
        for k in ["tokens_per_s", "ms_per_forward", "search_s", "prune_s", "write_s"] {
            assert!(r[k].as_f64().is_some_and(|v| v > 0.0), "{k}: {r}");
        }
    }
    // GPU memory where the runtime reports it: at least the f32 weights the pass holds (the
    // forward: embeddings, head and the two blocks' linears of the tiny shape, 139,776 values,
    // 0.53 MiB; the prune, which loads no head nor table: a block's linears, 45,312); none on cpu.
    assert!(rows[0]["forward_gpu_mib"].is_null() && rows[0]["prune_gpu_mib"].is_null(), "{}", rows[0]);
    for (k, values) in [("forward_gpu_mib", 139_776.0), ("prune_gpu_mib", 45_312.0)] {
        assert!(
            rows[1][k].as_f64().is_some_and(|v| v >= values * 4.0 / (1 << 20) as f64 && v < 4096.0),
            "{k}: {}",
            rows[1]
        );
    }
    // The prune's memory estimate by hand (the tiny shape: 64 wide, 4 heads, 2 kv heads, MLP
    // 172, 384 tokens, 45,312 weights a block). The pruning pass is the peak: 8 windows' hidden
    // states twice 262,144 + activations 8 × (3·4·64² + 3·64·172 + 4·64·64) × 4 = 3,153,920 +
    // three blocks 543,744 + masks 11,328 bytes; no embeddings or head (a prune without --eval
    // computes no logits). The CPU row runs candidates side by side, one per core: at least that.
    let est = |r: &serde_json::Value| r["prune_estimate_mib"].as_f64().unwrap() * (1u64 << 20) as f64;
    assert_eq!(est(&rows[1]), (262_144 + 3_153_920 + 543_744 + 11_328) as f64, "{}", rows[1]);
    assert!(est(&rows[0]) >= est(&rows[1]), "{}", rows[0]);
    // The same random model and tokens: both devices choose the same λs.
    assert_eq!(rows[0]["lambda_block"], rows[1]["lambda_block"]);
    assert_eq!(rows[0]["lambda_row"], rows[1]["lambda_row"]);
    assert!(rows[0]["lambda_block"].as_f64().is_some());
    let dir = err.lines().find_map(|l| l.split(" to ").nth(1)).expect("the temporary folder is named");
    assert!(!std::path::Path::new(dir.trim()).exists(), "{dir} must be removed");
}

#[test]
fn synthetic_opt_and_phi_shapes_prune_alike_on_cpu_and_gpu() {
    for shape in ["tiny-opt", "tiny-phi"] {
        let o = bench(&[
            "--synthetic",
            shape,
            "--blocks",
            "2",
            "--devices",
            "cpu,gpu",
            "--seqlen",
            "64",
            "--iters",
            "1",
            "--dtype",
            "f32",
            "--prune-sparsity",
            "0.5",
            "--nsamples",
            "8",
            "--search-nsamples",
            "2",
            "--json",
        ]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{shape}: {err}");
        assert!(err.contains(&format!("wrote a random {shape} checkpoint")), "{err}");
        let rows: Vec<serde_json::Value> = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(rows.len(), 2);
        // The same random model and tokens: both devices choose the same λs.
        assert!(rows[0]["lambda_block"].as_f64().is_some() && rows[0]["lambda_row"].as_f64().is_some(), "{}", rows[0]);
        assert_eq!(rows[0]["lambda_block"], rows[1]["lambda_block"], "{shape}");
        assert_eq!(rows[0]["lambda_row"], rows[1]["lambda_row"], "{shape}");
    }
}

/// LLaMA-0.8B's embedding table in f32 (250 MiB) is over lavapipe's 128 MiB per buffer: one
/// line before any work, naming what helps (a GPU with a larger limit runs it instead).
#[test]
fn a_table_over_the_gpu_buffer_limit_is_refused_up_front() {
    let o = bench(&[
        "--synthetic",
        "llama-0.8b",
        "--blocks",
        "1",
        "--devices",
        "gpu",
        "--seqlen",
        "16",
        "--batch",
        "1",
        "--iters",
        "1",
        "--dtype",
        "f32",
        "--json",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    if o.status.success() {
        let rows: Vec<serde_json::Value> = serde_json::from_slice(&o.stdout).unwrap();
        assert!(
            !rows[0]["device"].as_str().unwrap().contains("llvmpipe"),
            "lavapipe cannot hold the table: {}",
            rows[0]
        );
    } else {
        assert_eq!(o.status.code(), Some(2), "{err}");
        let last = err.lines().last().unwrap();
        assert!(
            last.starts_with("error: bench on gpu: the embedding table (32000 × 2048 in f32) takes 250.0 MiB, more than the GPU's limit per buffer (")
                && last.ends_with("); use --dtype f16 or --device cpu"),
            "{err}"
        );
    }
}

/// `NEUROAL_TRACE`: every stage of the search and the prune, counted by hand. The tiny shape at
/// 50% searches 14 block and 15 row candidates over 2 blocks: each candidate prunes and runs
/// each block sparse (58), and records its own dense pass from block 1 on, block 0's being
/// shared per group (1 + 14 + 1 + 15 = 31); m and d are read once per candidate (29); each
/// group loads 2 blocks and finds no third (6). The final prune: 7 linears in each of 2 blocks,
/// and only block 0 is run again to feed the next (the last block's outputs feed nothing).
#[test]
fn the_trace_counts_every_stage() {
    let o = Command::new(env!("CARGO_BIN_EXE_neuroal"))
        .args([
            "bench",
            "--synthetic",
            "tiny",
            "--blocks",
            "2",
            "--devices",
            "gpu",
            "--seqlen",
            "32",
            "--iters",
            "1",
            "--dtype",
            "f32",
        ])
        .args(["--prune-sparsity", "0.5", "--nsamples", "4", "--search-nsamples", "2"])
        .env("XDG_RUNTIME_DIR", std::env::temp_dir())
        .env("NEUROAL_TRACE", "1")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("trace: bench prune: "), "{err}");
    let count = |stage: &str| -> usize {
        let line = err
            .lines()
            .find(|l| l.starts_with("trace:") && l.contains(&format!(" {stage} ")))
            .unwrap_or_else(|| panic!("no {stage} in {err}"));
        let words: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(words.last(), Some(&"times"), "{line}");
        words[words.len() - 2].parse().unwrap()
    };
    let want = [
        ("search: load block", 6),
        ("search: dense pass", 31),
        ("search: prune linears", 58),
        ("search: sparse pass", 58),
        ("search: alignment", 58),
        ("search: read back", 29),
        ("prune: load block", 3),
        ("prune: dense pass", 2),
        ("prune: prune linears", 14),
        ("prune: pack masks", 14),
        ("prune: read masks", 14),
        ("prune: block forward", 1),
    ];
    for (stage, n) in want {
        assert_eq!(count(stage), n, "{stage}");
    }
    // Untraced, nothing of it is printed.
    let o = Command::new(env!("CARGO_BIN_EXE_neuroal"))
        .args(["bench", "--synthetic", "tiny", "--blocks", "1", "--devices", "cpu", "--seqlen", "32", "--iters", "1"])
        .args(["--prune-sparsity", "0.5", "--nsamples", "2", "--search-nsamples", "2"])
        .env_remove("NEUROAL_TRACE")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success() && !err.contains("trace:"), "{err}");
}

#[test]
fn matmul_bench_times_every_kernel_that_computes_the_product() {
    // f32 on the emulator: burn's own choice, and the per-thread kernels (it has no cooperative
    // matrices, so the tensor-core kernels decline, each with its reason).
    let o = bench(&["--matmul", "33x17x9", "--devices", "gpu", "--dtype", "f32", "--iters", "2", "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let rows: Vec<serde_json::Value> =
        String::from_utf8_lossy(&o.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    // The product with the weight's transposed view, then with a row-major [K, N] copy.
    let kernels = rows.len() / 2;
    assert!(rows.len() == 2 * kernels && kernels >= 2, "{rows:?}");
    for (i, r) in rows.iter().enumerate() {
        let shape: Vec<u64> = r["shape"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
        assert_eq!(shape, vec![33, 17, 9], "{r}");
        assert_eq!(r["layout"], if i < kernels { "weight_t" } else { "k_by_n" }, "{r}");
        match r["rel_err"].as_f64() {
            // Ran: the same product as burn's kernel, to f32 rounding.
            Some(e) => {
                assert!(e < 1e-5 && r["ms"].as_f64().is_some_and(|ms| ms > 0.0) && r["declined"].is_null(), "{r}")
            }
            None => assert!(r["declined"].as_str().is_some_and(|w| !w.is_empty() && !w.contains('\n')), "{r}"),
        }
    }
    for first in [0, kernels] {
        assert_eq!(rows[first]["kernel"], "burn");
        assert_eq!(rows[first]["rel_err"].as_f64(), Some(0.0));
    }
    let ran = rows.iter().filter(|r| r["kernel"] != "burn" && r["rel_err"].is_number()).count();
    assert!(ran >= 4, "the per-thread kernels run on any adapter, on both layouts: {rows:?}");
    // Bad shapes and devices: one line, exit 2.
    for args in [&["--matmul", "64x48", "--devices", "gpu"][..], &["--matmul", "64x48x80", "--devices", "cpu"][..]] {
        let o = bench(args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
    }
}

#[test]
fn attention_bench_times_the_flash_kernels_against_the_separate_ones() {
    // f32 on the emulator: the separate kernels and the per-thread flash kernel run (it has no
    // cooperative matrices for the tensor-core ones, which decline with their reason).
    let o = bench(&["--attention", "2x4x64x16", "--devices", "gpu", "--dtype", "f32", "--iters", "2", "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let rows: Vec<serde_json::Value> =
        String::from_utf8_lossy(&o.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let kernels: Vec<&str> = rows.iter().map(|r| r["kernel"].as_str().unwrap()).collect();
    assert_eq!(kernels, ["ops", "flash-2", "flash-4", "flash-8", "flash-unit"]);
    assert_eq!(rows[0]["rel_err"].as_f64(), Some(0.0));
    // The per-thread flash kernel: the separate kernels' attention, to f32 rounding.
    assert!(
        rows[4]["rel_err"].as_f64().is_some_and(|e| e < 1e-5) && rows[4]["ms"].as_f64().is_some_and(|ms| ms > 0.0),
        "{}",
        rows[4]
    );
    for r in &rows[1..4] {
        assert!(
            r["ms"].is_number() || r["declined"].as_str().is_some_and(|w| !w.is_empty() && !w.contains('\n')),
            "{r}"
        );
    }
    let o = bench(&["--attention", "2x4x64", "--devices", "gpu"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("BxHxTxHD") && err.trim().lines().count() == 1, "{err}");
}

#[test]
fn prune_rows_bench_times_the_fused_shader_against_the_three_it_fuses() {
    // Rows over a workgroup and an odd width; the compute dtype the emulator takes (f16 where its
    // shaders have it: the fused shader prunes the stored f16 weights, the three in f32, with the
    // same result); every variant of the selection in one process, each against the default's
    // three shaders.
    let run = |walk: &str, copies: &str| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_neuroal"));
        cmd.args(["bench", "--prune-rows", "37x300,3x1001", "--devices", "gpu", "--iters", "2", "--json"])
            .env("XDG_RUNTIME_DIR", std::env::temp_dir());
        let o = cmd.env("NEUROAL_SELECT_WALK", walk).env("NEUROAL_SELECT_COPIES", copies).output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect::<Vec<serde_json::Value>>()
    };
    let rows = run("", "");
    assert_eq!(rows.len(), 2 * 2 * 2 * 8 * 3, "shapes × scores × tie orders × selections × paths");
    let mut seen = std::collections::BTreeSet::new();
    for r in &rows {
        let field = |name: &str| r[name].as_str().unwrap().to_string();
        seen.insert((
            r["shape"].to_string(),
            field("score"),
            field("ties"),
            field("walk"),
            r["copies"].to_string(),
            field("kernel"),
        ));
        // Every path prunes the same weights: the fused shader's equal the three shaders'.
        assert_eq!(r["rel_err"].as_f64(), Some(0.0), "{r}");
        assert!(r["ms"].as_f64().is_some_and(|ms| ms > 0.0) && r["gb_per_s"].as_f64().is_some_and(|g| g > 0.0), "{r}");
    }
    assert_eq!(seen.len(), rows.len(), "each combination once");
    let kernels: std::collections::BTreeSet<&str> = rows.iter().map(|r| r["kernel"].as_str().unwrap()).collect();
    assert_eq!(kernels, ["prune_rows", "prune_rows+mask", "score+select+mask"].into_iter().collect());
    let walks: std::collections::BTreeSet<&str> = rows.iter().map(|r| r["walk"].as_str().unwrap()).collect();
    assert_eq!(walks, ["serial", "two-level"].into_iter().collect());
    let copies: std::collections::BTreeSet<u64> = rows.iter().map(|r| r["copies"].as_u64().unwrap()).collect();
    assert_eq!(copies, [1, 2, 4, 8].into_iter().collect());
    // The variables time the one they name.
    let rows = run("two-level", "4");
    assert!(
        rows.len() == 2 * 2 * 2 * 3
            && rows.iter().all(|r| r["walk"] == "two-level" && r["copies"] == 4 && r["rel_err"].as_f64() == Some(0.0)),
        "{rows:?}"
    );
}

/// A fused group whose stacked weight, or whose output, would pass the GPU's largest buffer runs
/// apart instead (lavapipe: 128 MiB per buffer). First gate and up are 5,000 × 4,096 in f32, 78
/// MiB each, 156 MiB stacked (q, k and v stack to 48 MiB and fuse); then gate and up are 8,192 ×
/// 64, and 5 windows of 512 tokens give each an output of 80 MiB, 160 MiB stacked. The forward
/// runs, fused or not.
#[test]
fn a_stack_over_the_gpu_buffer_limit_runs_apart() {
    let dir = std::env::temp_dir().join(format!("neuroal-wide-stack-{}", std::process::id()));
    let wide_weights = r#"{"model_type": "llama", "vocab_size": 384, "hidden_size": 4096, "intermediate_size": 5000,
        "num_attention_heads": 32, "num_key_value_heads": 8, "max_position_embeddings": 64, "rms_norm_eps": 1e-5,
        "tie_word_embeddings": false}"#;
    let wide_outputs = r#"{"model_type": "llama", "vocab_size": 384, "hidden_size": 64, "intermediate_size": 8192,
        "num_attention_heads": 4, "max_position_embeddings": 512, "rms_norm_eps": 1e-5, "tie_word_embeddings": false}"#;
    for (config, seqlen, batch) in [(wide_weights, "16", "1"), (wide_outputs, "512", "5")] {
        let _ = std::fs::remove_dir_all(&dir);
        neuroal::commands::bench::write_synthetic(&dir, &neuroal::commands::bench::Shape { name: "wide", config }, 1)
            .unwrap();
        check_runs_fused_or_not(&dir, seqlen, batch);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn check_runs_fused_or_not(dir: &std::path::Path, seqlen: &str, batch: &str) {
    for fuse in ["all", "none"] {
        let o = Command::new(env!("CARGO_BIN_EXE_neuroal"))
            .args([
                "bench",
                "--model",
                dir.to_str().unwrap(),
                "--devices",
                "gpu",
                "--seqlen",
                seqlen,
                "--batch",
                batch,
                "--iters",
                "1",
                "--dtype",
                "f32",
                "--json",
            ])
            .env("XDG_RUNTIME_DIR", std::env::temp_dir())
            .env("NEUROAL_FUSE", fuse)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "NEUROAL_FUSE={fuse}: {err}");
        let rows: Vec<serde_json::Value> = serde_json::from_slice(&o.stdout).unwrap();
        assert!(rows[0]["tokens_per_s"].as_f64().is_some_and(|t| t > 0.0), "{}", rows[0]);
    }
}

/// `--save` keeps the synthetic checkpoint in a new folder, with a tokenizer, so `prune` takes
/// it as it is; an existing folder is refused in one line and left as it was.
#[test]
fn a_saved_synthetic_checkpoint_prunes_and_an_existing_folder_is_refused() {
    let root = std::env::temp_dir().join(format!("neuroal-bench-save-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    let dir = root.join("tiny");
    let o = bench(&["--synthetic", "tiny", "--blocks", "2", "--save", dir.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // Written beside its name, then renamed in: nothing else is left in the parent.
    assert_eq!(entries(&root), vec!["tiny".to_string()]);
    let out = root.join("pruned");
    let sample = concat!(env!("CARGO_MANIFEST_DIR"), "/assets/sample.txt");
    let p = Command::new(env!("CARGO_BIN_EXE_neuroal"))
        .args([
            "prune",
            "--model",
            dir.to_str().unwrap(),
            "--calib",
            sample,
            "--sparsity",
            "0.5",
            "--seqlen",
            "32",
            "--nsamples",
            "4",
            "--device",
            "cpu",
            "--out",
            out.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(p.status.success(), "{}", String::from_utf8_lossy(&p.stderr));
    assert!(out.join("model.safetensors.index.json").is_file() && out.join("tokenizer.json").is_file());

    let mine = root.join("mine");
    std::fs::create_dir_all(&mine).unwrap();
    std::fs::write(mine.join("notes.txt"), "keep me").unwrap();
    let o = bench(&["--synthetic", "tiny", "--blocks", "2", "--save", mine.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.code() == Some(2) && err.trim().lines().count() == 1 && err.contains("already exists"), "{err}");
    assert_eq!(std::fs::read_dir(&mine).unwrap().count(), 1);
    assert_eq!(std::fs::read_to_string(mine.join("notes.txt")).unwrap(), "keep me");
    let _ = std::fs::remove_dir_all(&root);
}

fn entries(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

/// A folder of the test's own for `TMPDIR`, where bench makes its random checkpoint and its
/// timed prune's folder.
fn own_tmp(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("neuroal-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// What a measuring child would refuse is refused before gigabytes are written, in one line.
#[test]
fn bad_bench_arguments_are_refused_before_the_checkpoint_is_written() {
    let tmp = own_tmp("bench-refusals");
    let mut cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--synthetic", "tiny", "--devices", "cpu", "--seqlen", "0"], "--seqlen must be at least 1"),
        (
            vec!["--synthetic", "tiny", "--devices", "cpu", "--seqlen", "100000"],
            "exceeds the model's max_position_embeddings (256)",
        ),
        (vec!["--synthetic", "tiny", "--devices", "cpu", "--batch", "0"], "--batch and --iters must be at least 1"),
        (vec!["--synthetic", "tiny", "--devices", "cpu", "--iters", "0"], "--batch and --iters must be at least 1"),
        (vec!["--synthetic", "tiny", "--devices", "cpu,nope"], "unknown device \"nope\""),
        (
            vec!["--synthetic", "tiny", "--devices", "ndarray", "--dtype", "f16"],
            "bench on ndarray: --dtype f16 is not supported on ndarray",
        ),
        (
            vec!["--synthetic", "tiny", "--devices", "gpu", "--dtype", "bf16"],
            "bench on gpu: --dtype bf16 is not supported on wgpu",
        ),
        // --save without --synthetic: there is nothing to save.
        (vec!["--save", "saved"], "--save keeps the random checkpoint that --synthetic SHAPE writes; add --synthetic"),
    ];
    // A checkpoint larger than the disk (LLaMA-2-7B's blocks, 400,000 of them: 162 TB).
    if cfg!(unix) {
        cases.push((vec!["--synthetic", "llama2-7b", "--devices", "cpu", "--blocks", "400000"], "needs 161"));
    }
    for (args, words) in cases {
        let o = Command::new(env!("CARGO_BIN_EXE_neuroal"))
            .arg("bench")
            .args(&args)
            .current_dir(&tmp)
            .env("TMPDIR", &tmp)
            .env("XDG_RUNTIME_DIR", std::env::temp_dir())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.trim().lines().count() == 1 && err.contains(words), "{args:?}: {err}");
        assert!(entries(&tmp).is_empty(), "{args:?} wrote {:?}", entries(&tmp));
    }
    let _ = std::fs::remove_dir_all(&tmp);
}

/// A stopped bench leaves nothing behind: its random checkpoint, the timed prune's folder and
/// the child measuring a device all go with it; a stopped `--save` leaves no folder.
#[cfg(unix)]
#[test]
#[cfg(feature = "test-hooks")] // fault injection (NEUROAL_FAULT, NEUROAL_PAUSE)
fn a_stopped_bench_removes_its_checkpoint_and_stops_its_child() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    use std::time::{Duration, Instant};
    let tmp = own_tmp("bench-stopped");
    let mut parent = Command::new(env!("CARGO_BIN_EXE_neuroal"))
        .args(["bench", "--synthetic", "tiny", "--blocks", "2", "--devices", "cpu", "--seqlen", "32", "--iters", "1"])
        .args(["--prune-sparsity", "0.5", "--nsamples", "4", "--search-nsamples", "1"])
        .env("TMPDIR", &tmp)
        .env("NEUROAL_PAUSE", "bench-prune-started")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The child pauses once its timed prune has a folder: neuroal-bench-<its pid>.
    let start = Instant::now();
    let child = loop {
        let found =
            entries(&tmp).iter().find_map(|n| n.strip_prefix("neuroal-bench-").and_then(|p| p.parse::<i32>().ok()));
        if let Some(pid) = found {
            break pid;
        }
        assert!(start.elapsed() < Duration::from_secs(120), "no timed prune started: {:?}", entries(&tmp));
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(entries(&tmp).iter().any(|n| n.starts_with("neuroal-synthetic-")), "{:?}", entries(&tmp));
    // SAFETY: signals to the test's own child, and a probe (signal 0) of its child.
    unsafe { libc::kill(parent.id() as i32, libc::SIGTERM) };
    let mut err = String::new();
    for line in BufReader::new(parent.stderr.take().unwrap()).lines() {
        err.push_str(&line.unwrap());
        err.push('\n');
    }
    assert_eq!(parent.wait().unwrap().code(), Some(143), "{err}");
    assert_eq!(err.lines().last(), Some("interrupted by SIGTERM; nothing half-written was left"), "{err}");
    let start = Instant::now();
    while !(entries(&tmp).is_empty() && unsafe { libc::kill(child, 0) } != 0) {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "left behind: {:?}; child {child} running: {}",
            entries(&tmp),
            unsafe { libc::kill(child, 0) } == 0
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // --save, stopped once the checkpoint is written and before it is renamed in.
    let saved = tmp.join("saved");
    let mut run = Command::new(env!("CARGO_BIN_EXE_neuroal"))
        .args(["bench", "--synthetic", "tiny", "--blocks", "2", "--save", saved.to_str().unwrap()])
        .env("NEUROAL_PAUSE", "synthetic-written")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(run.stderr.take().unwrap()).lines();
    assert!(lines.by_ref().map(|l| l.unwrap()).any(|l| l.starts_with("paused at")));
    assert_eq!(entries(&tmp).len(), 1, "the checkpoint is written beside its name first");
    unsafe { libc::kill(run.id() as i32, libc::SIGINT) };
    assert_eq!(run.wait().unwrap().code(), Some(130));
    assert!(entries(&tmp).is_empty(), "{:?}", entries(&tmp));
    let _ = std::fs::remove_dir_all(&tmp);
}
