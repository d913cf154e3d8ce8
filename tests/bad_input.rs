//! Every bad input gets one line on stderr and exit code 2, never a panic.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use safetensors::tensor::{Dtype, TensorView};

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("neuroal-bad-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A copy of a fixture model folder to break.
fn copy_to_break(fixture: &str, name: &str) -> PathBuf {
    model_copy(fixture, &scratch(name))
}

/// Runs `neuroal` and returns its stderr, asserting exit code 2 and a single line.
fn fails(args: &[&str], env: &[(&str, &str)]) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_neuroal"));
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(2), "args {args:?}: expected exit 2, stderr: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "args {args:?}: expected one line, got {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    lines[0].to_string()
}

fn eval_fails(model: &Path, text: &Path, extra: &[&str], expect: &str) {
    let mut args =
        vec!["eval", "--model", model.to_str().unwrap(), "--text", text.to_str().unwrap(), "--device", "cpu"];
    args.extend_from_slice(extra);
    let msg = fails(&args, &[]);
    assert!(msg.contains(expect), "expected \"{expect}\" in: {msg}");
}

/// Rewrites model.safetensors with `edit` applied to its tensor map.
fn rewrite_weights(dir: &Path, edit: impl FnOnce(&mut HashMap<String, (Dtype, Vec<usize>, Vec<u8>)>)) {
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut map: HashMap<String, (Dtype, Vec<usize>, Vec<u8>)> =
        st.tensors().into_iter().map(|(n, v)| (n, (v.dtype(), v.shape().to_vec(), v.data().to_vec()))).collect();
    edit(&mut map);
    let views: Vec<(String, TensorView)> =
        map.iter().map(|(n, (d, s, b))| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap())).collect();
    safetensors::serialize_to_file(views, None, &path).unwrap();
}

#[test]
fn bad_inputs_are_rejected_with_one_line() {
    let text = asset("sample.txt");
    let good = asset("tiny-llama");

    eval_fails(Path::new("/nonexistent/model"), &text, &[], "model folder not found");
    eval_fails(&good, Path::new("/nonexistent/text.txt"), &[], "text file not found");
    // A loop of links is said to be one, not a missing file.
    #[cfg(unix)]
    {
        let looped = scratch("loop").join("looped.txt");
        let _ = std::fs::remove_file(&looped);
        std::os::unix::fs::symlink(&looped, &looped).unwrap();
        eval_fails(&good, &looped, &[], "text file is a loop of symbolic links");
    }
    // A folder, or a pipe or device, named as a file (or a file as the model): each its own line.
    eval_fails(&text, &text, &[], "the model folder is a file; name the folder that holds config.json");
    eval_fails(&good, &good, &[], "the text file is a folder; name a file");
    eval_fails(
        &good,
        Path::new("/dev/null"),
        &[],
        "/dev/null: the text file is not a regular file (a pipe or a device)",
    );

    let d = copy_to_break("tiny-llama", "notjson");
    std::fs::write(d.join("config.json"), "{ not json").unwrap();
    eval_fails(&d, &text, &[], "not a valid config.json");

    let d = copy_to_break("tiny-llama", "nofield");
    let cfg = std::fs::read_to_string(d.join("config.json")).unwrap().replace("\"hidden_size\"", "\"hidden_sizeX\"");
    std::fs::write(d.join("config.json"), cfg).unwrap();
    eval_fails(&d, &text, &[], "missing field \"hidden_size\"");

    let d = copy_to_break("tiny-llama", "modeltype");
    let cfg = std::fs::read_to_string(d.join("config.json")).unwrap().replace("\"llama\"", "\"gpt_neox\"");
    std::fs::write(d.join("config.json"), cfg).unwrap();
    eval_fails(
        &d,
        &text,
        &[],
        "unsupported model_type \"gpt_neox\" (supported: llama, mistral, qwen2, qwen3, gemma2, gemma3_text, gemma3 (its text model), phi3, mixtral, qwen2_moe, qwen3_moe, olmoe, opt, phi)",
    );

    let d = copy_to_break("tiny-llama", "truncated");
    let bytes = std::fs::read(d.join("model.safetensors")).unwrap();
    std::fs::write(d.join("model.safetensors"), &bytes[..bytes.len() - 100]).unwrap();
    eval_fails(&d, &text, &[], "not a valid safetensors file");

    let d = copy_to_break("tiny-llama", "badheader");
    let mut bytes = std::fs::read(d.join("model.safetensors")).unwrap();
    bytes[8] = b'#';
    std::fs::write(d.join("model.safetensors"), &bytes).unwrap();
    eval_fails(&d, &text, &[], "not a valid safetensors file");

    let d = copy_to_break("tiny-llama", "missingtensor");
    rewrite_weights(&d, |m| {
        m.remove("model.layers.1.mlp.up_proj.weight");
    });
    eval_fails(&d, &text, &[], "tensor \"model.layers.1.mlp.up_proj.weight\" not found");

    let d = copy_to_break("tiny-llama", "wrongshape");
    rewrite_weights(&d, |m| {
        let e = m.get_mut("model.layers.0.self_attn.q_proj.weight").unwrap();
        e.1 = vec![32, 128];
    });
    eval_fails(&d, &text, &[], "has shape [32, 128], expected [64, 64]");

    // Only PyTorch's pickled weights (the bytes are not read): what to do, in the one line.
    let d = copy_to_break("tiny-llama", "pickled");
    std::fs::remove_file(d.join("model.safetensors")).unwrap();
    std::fs::write(d.join("pytorch_model.bin"), b"PK").unwrap();
    eval_fails(
        &d,
        &text,
        &[],
        "no model.safetensors or model.safetensors.index.json, only pytorch_model.bin (PyTorch pickle, not read); convert the folder first",
    );
    std::fs::remove_file(d.join("pytorch_model.bin")).unwrap();
    eval_fails(&d, &text, &[], "no model.safetensors or model.safetensors.index.json");

    let d = copy_to_break("tiny-mistral-gqa", "missingshard");
    std::fs::remove_file(d.join("model-00002-of-00002.safetensors")).unwrap();
    eval_fails(&d, &text, &[], "names shard model-00002-of-00002.safetensors, which does not exist");

    let s = scratch("texts");
    std::fs::write(s.join("empty.txt"), "").unwrap();
    eval_fails(&good, &s.join("empty.txt"), &[], "the text file is empty");
    std::fs::write(s.join("short.txt"), "ka lo mi").unwrap();
    eval_fails(&good, &s.join("short.txt"), &["--seqlen", "64"], "fewer than one window of 64");

    eval_fails(&good, &text, &["--seqlen", "0"], "--seqlen must be at least 1");
    eval_fails(&good, &text, &["--seqlen", "257"], "exceeds the model's max_position_embeddings (256)");

    let msg =
        fails(&["eval", "--model", good.to_str().unwrap(), "--text", text.to_str().unwrap(), "--device", "tpu"], &[]);
    assert!(
        msg.contains("invalid value 'tpu' for '--device <DEVICE>'")
            && msg.contains("possible values: auto, gpu, cpu, ndarray"),
        "{msg}"
    );

    // No Vulkan driver visible: --device gpu must say so, not crash.
    let msg = fails(
        &["eval", "--model", good.to_str().unwrap(), "--text", text.to_str().unwrap(), "--device", "gpu"],
        &[("VK_ICD_FILENAMES", "/nonexistent.json"), ("VK_DRIVER_FILES", "/nonexistent.json")],
    );
    assert!(msg.contains("no GPU adapter"), "{msg}");
}

#[test]
fn new_flags_refuse_bad_values_in_one_line() {
    let model = asset("tiny-llama");
    let (m, text) = (model.to_str().unwrap(), asset("sample.txt"));
    let t = text.to_str().unwrap();
    let out = scratch("newflags").join("out");
    let o = out.to_str().unwrap();
    let prune = |extra: &[&'static str]| -> Vec<&str> {
        let mut a = vec![
            "prune",
            "--model",
            m,
            "--calib",
            t,
            "--out",
            o,
            "--seqlen",
            "32",
            "--nsamples",
            "2",
            "--sparsity",
            "0.5",
            "--device",
            "cpu",
        ];
        a.extend_from_slice(extra);
        a
    };
    let tasks = asset("tasks.jsonl");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (prune(&["--method", "sparsegpt", "--blocksize", "0"]), "--blocksize must be at least 1"),
        // DSnoT: no cycle, a negative threshold, a pruner that rewrites kept weights, a mask
        // that is not per row, unknown linears, its parameters without it, an unknown refinement.
        (prune(&["--refine", "dsnot", "--dsnot-cycles", "0"]), "--dsnot-cycles must be at least 1"),
        (prune(&["--refine", "dsnot", "--dsnot-threshold=-1"]), "--dsnot-threshold -1 must be a number ≥ 0"),
        (
            prune(&["--refine", "dsnot", "--method", "sparsegpt"]),
            "--refine dsnot swaps pruned and kept weights, but --method sparsegpt rewrites the weights it keeps",
        ),
        (
            prune(&["--refine", "dsnot", "--pattern", "2:4"]),
            "--refine dsnot refines per-row masks and needs --pattern row (not 2:4)",
        ),
        (
            prune(&["--refine", "dsnot", "--dsnot-linears", "mlp"]),
            "invalid value 'mlp' for '--dsnot-linears <DSNOT_LINEARS>'",
        ),
        (prune(&["--dsnot-cycles", "10"]), "--dsnot-cycles applies to --refine dsnot"),
        (prune(&["--dsnot-linears", "all"]), "--dsnot-linears applies to --refine dsnot"),
        (prune(&["--refine", "sparsefinetune"]), "invalid value 'sparsefinetune' for '--refine <REFINE>'"),
        (prune(&["--method", "multiflo"]), "invalid value 'multiflo' for '--method <METHOD>'"),
        // AlphaPruning's ε: in (0, 1), and only with its top-up.
        (prune(&["--top-up", "alpha", "--alpha-epsilon", "0"]), "--alpha-epsilon 0 must be a number in (0, 1)"),
        (prune(&["--top-up", "alpha", "--alpha-epsilon", "1.5"]), "--alpha-epsilon 1.5 must be a number in (0, 1)"),
        (prune(&["--top-up", "owl", "--alpha-epsilon", "0.3"]), "--alpha-epsilon applies to --top-up alpha"),
        (prune(&["--dtype", "f8"]), "invalid value 'f8' for '--dtype <DTYPE>'"),
        (prune(&["--zeroshot", "/nonexistent/tasks.jsonl"]), "/nonexistent/tasks.jsonl: task file not found"),
        (prune(&["--zeroshot", "/dev/null"]), "/dev/null: the task file is not a regular file (a pipe or a device)"),
        (
            vec!["prune", "--model", m, "--calib", m, "--out", o, "--sparsity", "0.5"],
            "the calibration file is a folder; name a file",
        ),
        (prune(&["--eval", "/dev/null"]), "/dev/null: the evaluation file is not a regular file"),
        (
            vec!["eval", "--model", m, "--text", t, "--device", "ndarray", "--dtype", "f16"],
            "--dtype f16 is not supported on ndarray",
        ),
        (
            vec!["zeroshot", "--model", m, "--tasks", tasks.to_str().unwrap(), "--limit", "0"],
            "--limit must be at least 1",
        ),
        (vec!["zeroshot", "--model", m, "--tasks", ","], "--tasks names no file"),
        (vec!["bench", "--synthetic", "gpt5"], "unknown --synthetic shape \"gpt5\""),
        (vec!["bench", "--synthetic", "tiny", "--blocks", "0", "--devices", "cpu"], "--blocks must be at least 1"),
        (
            vec!["bench", "--model", m, "--devices", "cpu", "--prune-sparsity", "1.5"],
            "--prune-sparsity 1.5 is outside [0, 1)",
        ),
        (
            prune(&["--top-up", "neuroal", "--search-batch", "two"]),
            "invalid value 'two' for '--search-batch <SEARCH_BATCH>'",
        ),
        (vec!["bench", "--matmul", "64x48x80", "--devices", "gpu", "--iters", "0"], "--iters must be at least 1"),
        (
            vec!["bench", "--attention", "2x4x64x16", "--devices", "cpu"],
            "--attention times the GPU's kernels: use --devices gpu",
        ),
        (
            vec!["bench", "--prune-rows", "64x64", "--devices", "cpu"],
            "--prune-rows times the GPU's kernels: use --devices gpu",
        ),
        (vec!["bench", "--prune-rows", "64x", "--devices", "gpu"], "--prune-rows \"64x\": a weight is ROWSxCOLS"),
        (
            vec!["bench", "--attention", "2x4x0x16", "--devices", "gpu"],
            "--attention \"2x4x0x16\": an attention is BxHxTxHD",
        ),
        (vec!["tune", "--model", "/nonexistent"], "/nonexistent: no config.json"),
        (vec!["tune", "--synthetic", "gpt5"], "unknown --synthetic shape \"gpt5\""),
        (vec!["tune", "--model", m, "--tokens", "64,0"], "--tokens \"0\": a list of token counts"),
        (vec!["tune", "--model", m, "--iters", "0"], "--iters must be at least 1"),
        (vec!["tune", "--model", m, "--seqlen", "0"], "--seqlen must be at least 1"),
        (
            vec!["tune", "--model", m, "--synthetic", "tiny"],
            "the argument '--model <MODEL>' cannot be used with '--synthetic <SYNTHETIC>'",
        ),
    ];
    for (args, expect) in cases {
        let msg = fails(&args, &[]);
        assert!(msg.contains(expect), "{args:?}: expected \"{expect}\" in: {msg}");
        assert!(!out.exists(), "{args:?}: nothing may be written");
    }
    // AlphaPruning's ratios beyond 1 (tiny-llama's two blocks at ε 0.9 and 70%: 0.07 and
    // 1.33), found once the spectra are fitted: one line after the device's, exit 2.
    let alpha = prune(&["--top-up", "alpha", "--alpha-epsilon", "0.9"]);
    let alpha: Vec<&str> = alpha.into_iter().map(|a| if a == "0.5" { "0.7" } else { a }).collect();
    let run = Command::new(env!("CARGO_BIN_EXE_neuroal")).args(&alpha).output().unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(2), "{stderr}");
    assert_eq!(
        stderr.lines().last(),
        Some(
            "error: AlphaPruning gives block 0 the sparsity 1.3300, outside [0, 1): lower --alpha-epsilon (0.9) or --sparsity"
        )
    );
    assert!(!stderr.contains("panicked") && !out.exists(), "{stderr}");
    // An N:M pattern over a linear whose width M does not divide (tiny-opt-post-ln's fc2 reads
    // 172 channels), with every method and on a GPU too: refused before any work, where
    // SparseGPT had pruned a partial last group whole and then failed its own count check.
    let narrow = asset("tiny-opt-post-ln");
    for (method, device) in [("magnitude", "cpu"), ("wanda", "cpu"), ("sparsegpt", "cpu"), ("sparsegpt", "gpu")] {
        let args = vec![
            "prune",
            "--model",
            narrow.to_str().unwrap(),
            "--calib",
            t,
            "--out",
            o,
            "--pattern",
            "4:8",
            "--method",
            method,
            "--device",
            device,
        ];
        let msg = fails(&args, &[("XDG_RUNTIME_DIR", std::env::temp_dir().to_str().unwrap())]);
        assert!(
            msg.contains(
                "model.decoder.layers.0.fc2.weight: 4:8 pattern needs the input width (172) to be a multiple of 8"
            ),
            "{method} on {device}: {msg}"
        );
        assert!(!out.exists(), "{method} on {device}: nothing may be written");
    }
    // NEUROAL_MATMUL's rules, read when the GPU opens: a size of zero or a stray letter.
    let gpu_prune = vec![
        "prune",
        "--model",
        m,
        "--calib",
        t,
        "--out",
        o,
        "--seqlen",
        "32",
        "--nsamples",
        "2",
        "--sparsity",
        "0.5",
        "--device",
        "gpu",
    ];
    for rule in ["0x64=burn", "64xax64=burn"] {
        let msg =
            fails(&gpu_prune, &[("NEUROAL_MATMUL", rule), ("XDG_RUNTIME_DIR", std::env::temp_dir().to_str().unwrap())]);
        assert!(msg.contains("a rule is KxN=KERNEL"), "{rule}: {msg}");
        assert!(!out.exists(), "{rule}: nothing may be written");
    }
    // NEUROAL_FUSE, read there too: all or none.
    let msg =
        fails(&gpu_prune, &[("NEUROAL_FUSE", "qkv"), ("XDG_RUNTIME_DIR", std::env::temp_dir().to_str().unwrap())]);
    assert!(msg.contains("NEUROAL_FUSE=qkv: expected all or none"), "{msg}");
    assert!(!out.exists(), "NEUROAL_FUSE: nothing may be written");
    // NEUROAL_SELECT_WALK, read there too: serial or two-level.
    let msg = fails(
        &gpu_prune,
        &[("NEUROAL_SELECT_WALK", "parallel"), ("XDG_RUNTIME_DIR", std::env::temp_dir().to_str().unwrap())],
    );
    assert!(msg.contains("NEUROAL_SELECT_WALK=parallel: expected serial or two-level"), "{msg}");
    assert!(!out.exists(), "NEUROAL_SELECT_WALK: nothing may be written");
    // NEUROAL_SELECT_COPIES: 1, 2, 4 or 8 (16 would pass the workgroup memory every backend has).
    for bad in ["16", "3", "eight"] {
        let msg = fails(
            &gpu_prune,
            &[("NEUROAL_SELECT_COPIES", bad), ("XDG_RUNTIME_DIR", std::env::temp_dir().to_str().unwrap())],
        );
        assert!(msg.contains(&format!("NEUROAL_SELECT_COPIES={bad}: expected 1, 2, 4 or 8")), "{msg}");
        assert!(!out.exists(), "NEUROAL_SELECT_COPIES: nothing may be written");
    }
}

/// A reader of stdout that has gone (`neuroal inspect DIR | head` after its lines) stops the
/// command without a panic or a word, with the shell's code for SIGPIPE; a stdout that cannot
/// take the lines (a full disk) is one line and exit code 2.
#[test]
fn a_closed_or_full_stdout_is_no_panic() {
    let model = asset("tiny-llama");
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let o = Command::new(env!("CARGO_BIN_EXE_neuroal"))
        .args(["inspect", model.to_str().unwrap()])
        .stdout(writer)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(141), "{err}");
    assert!(err.is_empty(), "{err}");
    if Path::new("/dev/full").exists() {
        let full = std::fs::OpenOptions::new().write(true).open("/dev/full").unwrap();
        let o = Command::new(env!("CARGO_BIN_EXE_neuroal"))
            .args(["inspect", model.to_str().unwrap(), "--json"])
            .stdout(full)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{err}");
        assert_eq!(err.trim(), "error: cannot write to stdout: No space left on device");
    }
}

/// A tensor in a dtype neuroal does not read is named before any work, not when its block loads.
#[test]
fn an_unsupported_dtype_is_named_up_front() {
    use safetensors::SafeTensors;
    let d = model_copy("tiny-llama", &scratch("f64"));
    let path = d.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let name = "model.layers.1.mlp.up_proj.weight";
    let owned: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| {
            let data = if n == name {
                v.data()
                    .chunks_exact(4)
                    .flat_map(|b| (f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64).to_le_bytes())
                    .collect()
            } else {
                v.data().to_vec()
            };
            let dtype = if n == name { Dtype::F64 } else { v.dtype() };
            (n, dtype, v.shape().to_vec(), data)
        })
        .collect();
    let views: Vec<(String, TensorView)> =
        owned.iter().map(|(n, t, s, b)| (n.clone(), TensorView::new(*t, s.clone(), b).unwrap())).collect();
    safetensors::serialize_to_file(views, None, &path).unwrap();
    let text = asset("sample.txt");
    eval_fails(
        &d,
        &text,
        &[],
        "tensor \"model.layers.1.mlp.up_proj.weight\" is stored as F64; neuroal reads F32, F16 and BF16",
    );
}

/// A text too large to tokenize in the memory this machine has free is refused before it is
/// read (a 2 GB file of NUL bytes had the tokenizer ask for 17 GB and abort).
#[test]
#[cfg(target_os = "linux")]
fn a_text_too_large_to_tokenize_is_refused_before_it_is_read() {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:")).unwrap();
    let free_kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    let path = scratch("huge").join("nul.txt");
    // Sparse (no disk taken), and nine times its size (text and ids) is more than what is free.
    std::fs::File::create(&path).unwrap().set_len(free_kib * 1024 / 8).unwrap();
    eval_fails(&asset("tiny-llama"), &path, &[], "tokenizing it needs about");
    let _ = std::fs::remove_file(&path);
}
