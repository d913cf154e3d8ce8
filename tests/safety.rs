//! Nothing lost, nothing silent: each test reproduces one way a run used to destroy data,
//! report success for a model it did not prune, or leave debris, and asserts the exit code,
//! the one line, the input byte-identical, the previous output intact and no temp folder left.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;
use serde_json::Value;
use sha2::{Digest, Sha256};

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("neuroal-safety-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Every file under `dir` with its bytes, by relative path.
fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(p.strip_prefix(dir).unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

/// Names in `parent` that a run of `out` may leave: `.NAME.tmp-TOKEN`, `.NAME.old-TOKEN` and
/// its claim `.NAME.run-TOKEN`.
fn leftovers(out: &Path) -> Vec<String> {
    let prefix = format!(".{}.", out.file_name().unwrap().to_string_lossy());
    std::fs::read_dir(out.parent().unwrap())
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .filter(|n| n.starts_with(&prefix))
        .collect()
}

fn neuroal(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_neuroal"));
    cmd.args(args).env("XDG_RUNTIME_DIR", std::env::temp_dir());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

/// A small, fast prune of `model` into `out`; `extra` adds flags or overrides the defaults.
fn prune_args(model: &Path, out: &Path, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> =
        ["prune", "--model", model.to_str().unwrap(), "--out", out.to_str().unwrap(), "--device", "cpu"]
            .iter()
            .map(|s| s.to_string())
            .collect();
    let calib = asset("sample.txt");
    for (flag, value) in
        [("--calib", calib.to_str().unwrap()), ("--seqlen", "32"), ("--nsamples", "4"), ("--sparsity", "0.5")]
    {
        if !extra.contains(&flag) {
            a.extend([flag.to_string(), value.to_string()]);
        }
    }
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

fn run_prune(model: &Path, out: &Path, extra: &[&str], env: &[(&str, &str)]) -> Output {
    let a = prune_args(model, out, extra);
    neuroal(&a.iter().map(String::as_str).collect::<Vec<_>>(), env)
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Exit 2 with exactly one line on stderr, containing `expect`.
fn one_line_error(o: &Output, expect: &str) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(2), "expected exit 2: {err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line: {err}");
    assert!(lines[0].contains(expect), "expected \"{expect}\" in: {err}");
    assert!(!err.contains("panicked") && !err.contains("Os {") && !err.contains("Error("), "{err}");
    assert!(!err.contains("(os error"), "a system error number in the message: {err}");
}

/// A failure found once the work has started: the device line, then exactly one error line.
fn run_error(o: &Output, expect: &str) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(2), "expected exit 2: {err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 2, "expected the device line and one error line: {err}");
    assert!(lines[0].starts_with("device "), "{err}");
    assert!(lines[1].contains(expect), "expected \"{expect}\" in: {err}");
    assert!(!err.contains("(os error"), "a system error number in the message: {err}");
}

#[cfg(unix)]
#[cfg(feature = "test-hooks")] // fault injection (NEUROAL_FAULT, NEUROAL_PAUSE)
fn killed(o: &Output) {
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(o.status.signal(), Some(9), "expected a kill: {:?} {}", o.status, stderr(o));
}

#[test]
#[cfg(unix)] // kills, signals and symlinks as Unix has them
fn force_never_replaces_the_input_or_an_alias_of_it() {
    let s = scratch("alias");
    let model = model_copy("tiny-llama", &s.join("model"));
    let before = snapshot(&model);

    // A symlink to the input: same folder on disk.
    let link = s.join("link");
    std::os::unix::fs::symlink(&model, &link).unwrap();
    one_line_error(&run_prune(&model, &link, &["--force"], &[]), "is the input folder");
    // A folder of hard links to the input's files (what a bind mount looks like from inside).
    let hard = s.join("hard");
    std::fs::create_dir_all(&hard).unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::hard_link(model.join(f), hard.join(f)).unwrap();
    }
    one_line_error(&run_prune(&model, &hard, &["--force"], &[]), "which is the input's");
    // A folder that contains the input, and one inside it.
    one_line_error(&run_prune(&model, &s, &["--force"], &[]), "contains the input folder");
    one_line_error(&run_prune(&model, &model.join("pruned"), &["--force"], &[]), "is inside the input folder");
    // A mount point is never replaced (it could only be emptied, not renamed).
    one_line_error(&run_prune(&model, Path::new("/proc"), &["--force"], &[]), "is a mount point");

    assert_eq!(snapshot(&model), before, "the input must be byte-identical");
    assert_eq!(snapshot(&hard).len(), 3);
    for out in [&link, &hard, &s] {
        assert!(leftovers(out).is_empty(), "{:?}", leftovers(out));
    }
    let _ = std::fs::remove_dir_all(&s);
}

#[test]
#[cfg(unix)] // kills, signals and symlinks as Unix has them
#[cfg(feature = "test-hooks")] // fault injection (NEUROAL_FAULT, NEUROAL_PAUSE)
fn a_kill_between_the_rename_steps_loses_nothing() {
    let s = scratch("renames");
    let model = model_copy("tiny-llama", &s.join("model"));
    let out = s.join("out");
    assert!(run_prune(&model, &out, &[], &[]).status.success());
    let first = snapshot(&out);

    // Killed after the old output was moved aside, before the new one was moved in.
    killed(&run_prune(&model, &out, &["--force", "--sparsity", "0.6"], &[("NEUROAL_FAULT", "after-aside")]));
    assert!(!out.exists());
    let aside: Vec<String> = leftovers(&out).into_iter().filter(|n| n.contains(".old-")).collect();
    assert_eq!(aside.len(), 1, "{:?}", leftovers(&out));
    assert_eq!(snapshot(&s.join(&aside[0])), first, "the previous output is intact aside");
    // The next run puts it back (then refuses to replace it without --force) and clears the rest.
    let o = run_prune(&model, &out, &[], &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("restored") && stderr(&o).contains("already exists"), "{}", stderr(&o));
    assert_eq!(snapshot(&out), first);
    assert!(leftovers(&out).is_empty(), "{:?}", leftovers(&out));

    // Killed after the new output was moved in, before the old one was removed.
    killed(&run_prune(&model, &out, &["--force", "--sparsity", "0.6"], &[("NEUROAL_FAULT", "after-rename-in")]));
    let second = snapshot(&out);
    assert_ne!(second, first);
    // The old output aside, and the dead run's claim file (see src/io/staging.rs).
    let left = leftovers(&out);
    assert_eq!(left.iter().filter(|n| n.contains(".old-")).count(), 1, "{left:?}");
    assert_eq!(left.iter().filter(|n| n.contains(".run-")).count(), 1, "{left:?}");
    let o = run_prune(&model, &out, &[], &[]);
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(snapshot(&out), second, "the completed replacement stays");
    assert!(leftovers(&out).is_empty(), "{:?}", leftovers(&out));
    let _ = std::fs::remove_dir_all(&s);
}

#[test]
#[cfg(feature = "test-hooks")] // fault injection (NEUROAL_FAULT, NEUROAL_PAUSE)
fn an_output_that_appears_during_the_run_is_not_replaced_without_force() {
    let s = scratch("race");
    let model = model_copy("tiny-llama", &s.join("model"));
    let out = s.join("out");
    let o = run_prune(&model, &out, &[], &[("NEUROAL_FAULT", "appear-before-commit")]);
    run_error(&o, "appeared while this run was working");
    assert_eq!(std::fs::read_to_string(out.join("other-run.txt")).unwrap(), "written by another run");
    assert_eq!(snapshot(&out).len(), 1, "the other run's output is untouched");
    assert!(leftovers(&out).is_empty(), "{:?}", leftovers(&out));

    // Two real runs at once on the same --out: exactly one wins, the other says so.
    let out2 = s.join("out2");
    let spawn = || {
        let a = prune_args(&model, &out2, &[]);
        Command::new(env!("CARGO_BIN_EXE_neuroal"))
            .args(&a)
            .stderr(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    let codes = [a.status.code(), b.status.code()];
    assert!(codes.contains(&Some(0)) && codes.contains(&Some(2)), "{codes:?}: {} / {}", stderr(&a), stderr(&b));
    assert!(out2.join("report.json").exists());
    assert!(leftovers(&out2).is_empty(), "{:?}", leftovers(&out2));
    let _ = std::fs::remove_dir_all(&s);
}

/// A leftover's name proves nothing: a model folder named like an interrupted run's staging
/// folder, or like an old output moved aside, is read, and never removed or renamed.
#[test]
fn inputs_named_like_leftovers_are_never_cleaned_up() {
    let s = scratch("leftover-names");
    for (model_name, out_name) in [(".victim.tmp-999999", "victim"), (".victim2.old-999999", "victim2")] {
        let model = model_copy("tiny-llama", &s.join(model_name));
        let before = snapshot(&model);
        let out = s.join(out_name);
        let o = run_prune(&model, &out, &[], &[]);
        assert!(o.status.success(), "{model_name}: {}", stderr(&o));
        assert_eq!(snapshot(&model), before, "{model_name}: the input changed");
        assert!(out.join("report.json").exists(), "{model_name}: no output");
    }
    let _ = std::fs::remove_dir_all(&s);
}

/// The input bind-mounted ten folders deep inside the old output: `--force` refuses to replace
/// that output, whatever the depth. Needs root to mount (CI runs as root).
#[test]
#[cfg(target_os = "linux")]
fn force_never_empties_the_input_through_a_deep_bind_mount() {
    let s = scratch("deep-mount");
    let model = model_copy("tiny-llama", &s.join("model"));
    let out = s.join("out");
    let deep = (0..10).fold(out.clone(), |p, i| p.join(format!("d{i}")));
    std::fs::create_dir_all(&deep).unwrap();
    let mounted = Command::new("mount").arg("--bind").arg(&model).arg(&deep).status().expect("mount");
    assert!(mounted.success(), "the test bind-mounts the model (as root, as CI runs)");
    let before = snapshot(&model);
    let o = run_prune(&model, &out, &["--force"], &[]);
    let unmounted = Command::new("umount").arg(&deep).status().expect("umount");
    assert!(unmounted.success());
    one_line_error(&o, "which is the input's");
    assert_eq!(snapshot(&model), before);
    assert!(deep.is_dir(), "the old output was touched");
    let _ = std::fs::remove_dir_all(&s);
}

#[test]
fn plots_are_checked_like_the_output_and_kept_with_it() {
    let s = scratch("plots");
    let model = model_copy("tiny-llama", &s.join("model"));
    let before = snapshot(&model);
    let out = s.join("out");
    one_line_error(&run_prune(&model, &out, &["--plots", model.to_str().unwrap()], &[]), "is the input folder");
    one_line_error(
        &run_prune(&model, &out, &["--plots", model.join("p").to_str().unwrap()], &[]),
        "is inside the input folder",
    );
    assert_eq!(snapshot(&model), before);
    assert!(!out.exists() && leftovers(&out).is_empty());

    let plots = out.join("plots");
    let o = run_prune(&model, &out, &["--plots", plots.to_str().unwrap(), "--top-up", "owl"], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let report: Value = serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    let dir = PathBuf::from(report["plots"]["dir"].as_str().unwrap());
    let files = report["plots"]["files"].as_array().unwrap();
    assert!(!files.is_empty());
    for f in files {
        let p = dir.join(f.as_str().unwrap());
        assert!(p.starts_with(&out) || p.starts_with(out.canonicalize().unwrap()), "{}", p.display());
        assert!(std::fs::read(&p).unwrap().starts_with(b"\x89PNG"), "{} listed but missing", p.display());
    }
    let _ = std::fs::remove_dir_all(&s);
}

/// An outside plots folder holding a hard link and a symbolic link to input files under plot
/// names: refused without `--force`; with it, the links are replaced and the input's files keep
/// their bytes. A plot already there is never overwritten without `--force`.
#[test]
#[cfg(unix)]
fn plots_never_write_through_links_into_the_input() {
    let s = scratch("plot-links");
    let model = model_copy("tiny-llama", &s.join("model"));
    let before = snapshot(&model);
    let plots = s.join("p");
    std::fs::create_dir_all(&plots).unwrap();
    std::fs::hard_link(model.join("config.json"), plots.join("block_sparsity.png")).unwrap();
    std::os::unix::fs::symlink(model.join("tokenizer.json"), plots.join("row_sparsity.png")).unwrap();
    let args = ["--plots", plots.to_str().unwrap()];
    one_line_error(&run_prune(&model, &s.join("o1"), &args, &[]), "exists already (use --force to replace it)");
    assert!(!s.join("o1").exists() && leftovers(&s.join("o1")).is_empty());
    let o = run_prune(&model, &s.join("o2"), &[&args[..], &["--force"]].concat(), &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(snapshot(&model), before, "the input changed through a link");
    for f in ["block_sparsity.png", "row_sparsity.png"] {
        let meta = std::fs::symlink_metadata(plots.join(f)).unwrap();
        assert!(meta.is_file() && !meta.file_type().is_symlink(), "{f}");
        assert!(std::fs::read(plots.join(f)).unwrap().starts_with(b"\x89PNG"), "{f}");
    }
    let names: Vec<String> =
        std::fs::read_dir(&plots).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(names.iter().all(|n| !n.starts_with('.')), "a staged plots folder was left: {names:?}");
    let _ = std::fs::remove_dir_all(&s);
}

#[test]
fn nothing_silent_bad_numbers_configs_and_weights_stop_the_run() {
    let s = scratch("silent");
    let out = s.join("out");
    let good = model_copy("tiny-llama", &s.join("good"));
    let flag_cases: [(&[&str], &str); 9] = [
        (&["--top-up", "owl", "--owl-lambda", "NaN"], "--owl-lambda NaN must be a number in [0, 1)"),
        (&["--top-up", "owl", "--owl-m", "0"], "--owl-m 0 must be a positive number"),
        (&["--sparsity", "NaN"], "outside [0, 1)"),
        // An N:M pattern fixes the sparsity (2:4 prunes 0.5): another value, or NaN, is refused.
        (&["--pattern", "2:4", "--sparsity", "0.6"], "--sparsity 0.6 contradicts --pattern 2:4 (which prunes 0.5)"),
        (&["--pattern", "2:4", "--sparsity", "NaN"], "--sparsity NaN contradicts --pattern 2:4 (which prunes 0.5)"),
        (&["--nsamples", "100000000"], "lower --nsamples or --seqlen"),
        // Magnitude runs no window through the model, but the windows are still drawn and held.
        (&["--nsamples", "1000000000", "--method", "magnitude"], "lower --nsamples or --seqlen"),
        (&["--nsamples", "18446744073709551615", "--method", "magnitude"], "lower --nsamples or --seqlen"),
        (&["--sparsity", "-0.5"], "outside [0, 1)"),
    ];
    for (extra, expect) in flag_cases {
        one_line_error(&run_prune(&good, &out, extra, &[]), expect);
    }

    type Edit = Box<dyn Fn(&Path)>;
    let cases: Vec<(&str, Edit, &str)> = vec![
        ("theta", Box::new(|d| edit_config(d, "rope_theta", 0.into())), "\"rope_theta\" is 0"),
        ("eps", Box::new(|d| edit_config(d, "rms_norm_eps", (-1).into())), "\"rms_norm_eps\" is -1"),
        ("layers0", Box::new(|d| edit_config(d, "num_hidden_layers", 0.into())), "\"num_hidden_layers\" is 0"),
        (
            "layers1",
            Box::new(|d| edit_config(d, "num_hidden_layers", 1.into())),
            "num_hidden_layers = 1, but the weights hold 2 blocks",
        ),
        (
            "layers3",
            Box::new(|d| edit_config(d, "num_hidden_layers", 3.into())),
            "num_hidden_layers = 3, but the weights hold 2 blocks",
        ),
        (
            "nan",
            Box::new(|d| edit_tensor(d, "model.layers.1.self_attn.q_proj.weight", |v| v[17] = f32::NAN)),
            "tensor \"model.layers.1.self_attn.q_proj.weight\" holds a non-finite value (NaN at index 17)",
        ),
        // A pruning run reads neither whole (no logits): both are still checked.
        (
            "nan-embeddings",
            Box::new(|d| edit_tensor(d, "model.embed_tokens.weight", |v| v[5] = f32::INFINITY)),
            "tensor \"model.embed_tokens.weight\" holds a non-finite value (inf at index 5)",
        ),
        (
            "nan-head",
            Box::new(|d| edit_tensor(d, "lm_head.weight", |v| v[3] = f32::NAN)),
            "tensor \"lm_head.weight\" holds a non-finite value (NaN at index 3)",
        ),
        (
            "vocab",
            Box::new(|d| {
                let p = d.join("tokenizer.json");
                let mut t: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
                t["post_processor"]["special_tokens"]["<s>"]["ids"] = serde_json::json!([5000]);
                std::fs::write(&p, serde_json::to_string(&t).unwrap()).unwrap();
            }),
            "gives token id 5000",
        ),
    ];
    for (name, edit, expect) in cases {
        let m = model_copy("tiny-llama", &s.join(name));
        edit(&m);
        let before = snapshot(&m);
        let o = run_prune(&m, &out, &[], &[]);
        if name.starts_with("nan") {
            run_error(&o, expect);
        } else {
            one_line_error(&o, expect);
        }
        assert_eq!(snapshot(&m), before);
        assert!(!out.exists() && leftovers(&out).is_empty(), "{name}: {:?}", leftovers(&out));
    }

    // A tensor stored in two shards: which copy to read would be a guess.
    let m = model_copy("tiny-mistral-gqa", &s.join("twice"));
    let index = m.join("model.safetensors.index.json");
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&index).unwrap()).unwrap();
    let first = v["weight_map"].as_object().unwrap().values().next().unwrap().as_str().unwrap().to_string();
    std::fs::copy(m.join(&first), m.join("extra.safetensors")).unwrap();
    v["weight_map"]["extra.marker"] = "extra.safetensors".into();
    std::fs::write(&index, serde_json::to_string(&v).unwrap()).unwrap();
    let before = snapshot(&m);
    one_line_error(&run_prune(&m, &out, &[], &[]), "is stored in two shards");
    assert_eq!(snapshot(&m), before);
    assert!(!out.exists() && leftovers(&out).is_empty(), "twice: {:?}", leftovers(&out));

    // Outputs that overflow: a NaN perplexity is an error, not `null` in a report.
    let m = model_copy("tiny-llama", &s.join("overflow"));
    edit_tensor(&m, "model.norm.weight", |v| v.iter_mut().for_each(|x| *x = 3e38));
    let o = neuroal(
        &[
            "eval",
            "--model",
            m.to_str().unwrap(),
            "--text",
            asset("sample.txt").to_str().unwrap(),
            "--device",
            "cpu",
            "--seqlen",
            "32",
        ],
        &[],
    );
    run_error(&o, "perplexity is not finite");
    // ... and inside the pruning pass the block and linear are named.
    let m = model_copy("tiny-llama", &s.join("overflow2"));
    edit_tensor(&m, "model.layers.0.mlp.gate_proj.weight", |v| v.iter_mut().for_each(|x| *x = 1e25));
    run_error(&run_prune(&m, &out, &[], &[]), "block 0 mlp.down_proj: its input holds NaN or infinite values");
    assert!(!out.exists() && leftovers(&out).is_empty());
    // NeuroAL's search reads back once per candidate group; the metric check there names them.
    run_error(
        &run_prune(&m, &out, &["--top-up", "neuroal"], &[]),
        "NeuroAL: block 0 mlp.down_proj: the alignment metric is NaN",
    );
    assert!(!out.exists() && leftovers(&out).is_empty());

    // The engine checks what it pruned against what the map asked for.
    // q_proj of block 0 is [64, 64]: 64 rows × ⌊64 · 0.5⌋.
    #[cfg(feature = "test-hooks")] // a mask bit dropped by fault injection
    run_error(
        &run_prune(&good, &out, &[], &[("NEUROAL_FAULT", "drop-one-mask-bit")]),
        "model.layers.0.self_attn.q_proj.weight: pruned 2047 weights where the sparsity map asks for 2048",
    );
    assert!(!out.exists() && leftovers(&out).is_empty());
    let _ = std::fs::remove_dir_all(&s);
}

#[test]
fn late_failures_are_caught_before_the_work_starts() {
    let s = scratch("late");
    let model = model_copy("tiny-llama", &s.join("model"));
    let before = snapshot(&model);
    let file = s.join("a-file");
    std::fs::write(&file, "not a folder").unwrap();
    let o = run_prune(&model, &file, &["--force"], &[]);
    one_line_error(&o, "exists and is a file, not a folder");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "not a folder");
    // A destination whose temporary folder cannot be created: fails before the device opens.
    let o = run_prune(&model, Path::new("/proc/neuroal-out"), &[], &[]);
    one_line_error(&o, "cannot create the temporary folder");
    // An evaluation text too short for one window.
    let short = s.join("short.txt");
    std::fs::write(&short, "ka lo mi").unwrap();
    one_line_error(
        &run_prune(&model, &s.join("out"), &["--eval", short.to_str().unwrap()], &[]),
        "fewer than one window of 32",
    );
    // Windows of one token leave nothing to predict: said so, not "fewer than one window of 1".
    let sample = asset("sample.txt");
    one_line_error(
        &run_prune(&model, &s.join("out"), &["--eval", sample.to_str().unwrap(), "--seqlen", "1"], &[]),
        "--eval needs windows of 2 tokens or more",
    );
    assert!(!s.join("out").exists() && leftovers(&s.join("out")).is_empty());
    // Errors are words, and the missing parent is named.
    one_line_error(&run_prune(&model, &s.join("no/such/out"), &[], &[]), "the parent folder");
    // An index that names a shard outside the model folder.
    let m = model_copy("tiny-mistral-gqa", &s.join("mistral"));
    let idx = m.join("model.safetensors.index.json");
    let text = std::fs::read_to_string(&idx)
        .unwrap()
        .replace("\"model-00002-of-00002.safetensors\"", "\"../model-00002-of-00002.safetensors\"");
    std::fs::write(&idx, text).unwrap();
    one_line_error(&run_prune(&m, &s.join("out"), &[], &[]), "which is outside the model folder");
    // A damaged safetensors header is explained in words.
    let m = model_copy("tiny-llama", &s.join("damaged"));
    let mut bytes = std::fs::read(m.join("model.safetensors")).unwrap();
    bytes[8] = b'#';
    std::fs::write(m.join("model.safetensors"), &bytes).unwrap();
    let o = run_prune(&m, &s.join("out"), &[], &[]);
    one_line_error(&o, "not a valid safetensors file (invalid");
    assert!(!stderr(&o).contains("InvalidHeader"), "{}", stderr(&o));
    assert_eq!(snapshot(&model), before);
    let _ = std::fs::remove_dir_all(&s);
}

/// Starts a prune that pauses at `point`, waits until it says so, and sends it `signal`.
#[cfg(unix)]
#[cfg(feature = "test-hooks")] // fault injection (NEUROAL_FAULT, NEUROAL_PAUSE)
fn signal_at(model: &Path, out: &Path, point: &str, signal: i32) -> (Option<i32>, String) {
    use std::io::{BufRead, BufReader};
    let a = prune_args(model, out, &[]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_neuroal"))
        .args(&a)
        .env("NEUROAL_PAUSE", point)
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = String::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        seen.push_str(&line);
        seen.push('\n');
        if line.starts_with("paused at") {
            break;
        }
    }
    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(child.id() as i32, signal) };
    for line in lines {
        seen.push_str(&line.unwrap());
        seen.push('\n');
    }
    (child.wait().unwrap().code(), seen)
}

#[test]
#[cfg(unix)] // kills, signals and symlinks as Unix has them
#[cfg(feature = "test-hooks")] // fault injection (NEUROAL_FAULT, NEUROAL_PAUSE)
fn interrupted_runs_clean_up_and_the_next_run_removes_what_a_kill_left() {
    let s = scratch("interrupt");
    let model = model_copy("tiny-llama", &s.join("model"));
    let out = s.join("out");
    for (sig, code, name) in
        [(libc::SIGTERM, 143, "SIGTERM"), (libc::SIGINT, 130, "SIGINT"), (libc::SIGHUP, 129, "SIGHUP")]
    {
        let (status, err) = signal_at(&model, &out, "after-block-0", sig);
        assert_eq!(status, Some(code), "{err}");
        let last: Vec<&str> = err
            .lines()
            .filter(|l| !l.starts_with("paused at") && !l.starts_with("device ") && !l.starts_with("note:"))
            .collect();
        assert_eq!(last.len(), 1, "{err}");
        assert!(last[0].starts_with(&format!("interrupted by {name}: progress kept in")), "{err}");
        // Only the small progress is kept, no staged checkpoint.
        let tmp = leftovers(&out);
        assert_eq!(tmp.len(), 1, "{tmp:?}");
        let kept = snapshot(&s.join(&tmp[0]));
        assert!(kept.keys().all(|k| k.starts_with(".resume")), "{kept:?}");
        assert!(!out.exists());
    }
    // A SIGKILL after a shard was written leaves it; the next run removes it and says so.
    killed(&run_prune(&model, &out, &[], &[("NEUROAL_FAULT", "after-shard-0")]));
    let o = run_prune(&model, &out, &[], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("note: removed"), "{}", stderr(&o));
    assert!(leftovers(&out).is_empty(), "{:?}", leftovers(&out));
    let _ = std::fs::remove_dir_all(&s);
}

fn report(dir: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).unwrap()).unwrap()
}

#[test]
#[cfg(unix)] // kills, signals and symlinks as Unix has them
#[cfg(feature = "test-hooks")] // fault injection (NEUROAL_FAULT, NEUROAL_PAUSE)
fn resume_after_a_kill_is_byte_identical() {
    let s = scratch("resume");
    let model = model_copy("tiny-llama", &s.join("model"));
    let calib = s.join("calib.txt");
    std::fs::copy(asset("sample.txt"), &calib).unwrap();
    let flags = [
        "--top-up",
        "neuroal",
        "--search-nsamples",
        "2",
        "--search-chunk",
        "4",
        "--sparsity",
        "0.6",
        "--calib",
        calib.to_str().unwrap(),
    ];
    let reference = s.join("reference");
    assert!(run_prune(&model, &reference, &flags, &[]).status.success());
    let want = snapshot(&reference);
    let want_report = report(&reference);

    let out = s.join("out");
    for point in ["after-search-block-1", "after-search-row-2", "after-block-0", "after-shard-0"] {
        killed(&run_prune(&model, &out, &flags, &[("NEUROAL_FAULT", point)]));
        assert!(!out.exists());
        let mut resumed = flags.to_vec();
        resumed.push("--resume");
        let o = run_prune(&model, &out, &resumed, &[]);
        assert!(o.status.success(), "{point}: {}", stderr(&o));
        assert!(stderr(&o).contains("resuming the interrupted run"), "{point}: {}", stderr(&o));
        let got = snapshot(&out);
        assert_eq!(got.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>(), "{point}");
        for (k, v) in &want {
            if k != "report.json" {
                assert!(got[k] == *v, "{point}: {k} differs from the uninterrupted run");
            }
        }
        let r = report(&out);
        for key in ["topup", "sparsity", "calibration", "settings"] {
            let (mut a, b) = (r[key].clone(), &want_report[key]);
            if key == "settings" {
                a["out"] = b["out"].clone();
            }
            assert_eq!(&a, b, "{point}: report {key}");
        }
        assert!(leftovers(&out).is_empty(), "{point}: {:?}", leftovers(&out));
        std::fs::remove_dir_all(&out).unwrap();
    }

    // SparseGPT changes the kept weights: its resume replays the saved values, not masks.
    let sgpt = ["--method", "sparsegpt", "--sparsity", "0.6", "--calib", calib.to_str().unwrap()];
    let reference = s.join("reference-sparsegpt");
    assert!(run_prune(&model, &reference, &sgpt, &[]).status.success());
    killed(&run_prune(&model, &out, &sgpt, &[("NEUROAL_FAULT", "after-block-0")]));
    let mut resumed = sgpt.to_vec();
    resumed.push("--resume");
    let o = run_prune(&model, &out, &resumed, &[]);
    assert!(o.status.success() && stderr(&o).contains("resuming"), "{}", stderr(&o));
    let (got, want) = (snapshot(&out), snapshot(&reference));
    assert_eq!(got.len(), want.len());
    for (k, v) in &want {
        if k != "report.json" {
            assert!(got[k] == *v, "sparsegpt: {k} differs from the uninterrupted run");
        }
    }
    std::fs::remove_dir_all(&out).unwrap();

    // AlphaPruning's α saved as fitted, DSnoT's refined masks as pruned: either kill resumes to
    // the same bytes.
    let alpha = [
        "--top-up",
        "alpha",
        "--refine",
        "dsnot",
        "--dsnot-cycles",
        "10",
        "--sparsity",
        "0.5",
        "--calib",
        calib.to_str().unwrap(),
    ];
    let reference = s.join("reference-alpha");
    assert!(run_prune(&model, &reference, &alpha, &[]).status.success());
    let want = snapshot(&reference);
    for point in ["after-alpha", "after-block-0"] {
        killed(&run_prune(&model, &out, &alpha, &[("NEUROAL_FAULT", point)]));
        let mut resumed = alpha.to_vec();
        resumed.push("--resume");
        let o = run_prune(&model, &out, &resumed, &[]);
        assert!(o.status.success() && stderr(&o).contains("resuming"), "{point}: {}", stderr(&o));
        let got = snapshot(&out);
        assert_eq!(got.len(), want.len(), "{point}");
        for (k, v) in &want {
            if k != "report.json" {
                assert!(got[k] == *v, "alpha + dsnot, {point}: {k} differs from the uninterrupted run");
            }
        }
        std::fs::remove_dir_all(&out).unwrap();
    }

    // Other settings or changed inputs are refused with one line.
    killed(&run_prune(&model, &out, &flags, &[("NEUROAL_FAULT", "after-block-0")]));
    let mut other = flags.to_vec();
    other[7] = "0.7";
    other.push("--resume");
    one_line_error(
        &run_prune(&model, &out, &other, &[]),
        "the interrupted run used settings.sparsity = 0.6, this one 0.7",
    );
    std::fs::write(&calib, std::fs::read_to_string(asset("sample.txt")).unwrap() + " more").unwrap();
    let mut same = flags.to_vec();
    same.push("--resume");
    one_line_error(&run_prune(&model, &out, &same, &[]), "calibration text changed since the interrupted run");
    let _ = std::fs::remove_dir_all(&s);
}

#[test]
fn report_records_provenance_checked_with_sha256sum() {
    let s = scratch("provenance");
    let model = model_copy("tiny-mistral-gqa", &s.join("model"));
    let out = s.join("out");
    let o = run_prune(&model, &out, &["--eval", asset("sample.txt").to_str().unwrap()], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let r = report(&out);
    let p = &r["provenance"];
    assert_eq!(p["version"], env!("CARGO_PKG_VERSION"));
    assert!(p["git_revision"].as_str().is_some_and(|g| !g.is_empty()));
    assert!(p["command_line"].as_str().unwrap().contains("--sparsity 0.5"));
    assert_eq!(r["dtype"]["compute"], "f32");
    assert_eq!(r["calibration"]["seed"], 0);
    let sha256sum = |path: &Path| -> String {
        let o = Command::new("sha256sum").arg(path).output().expect("sha256sum (coreutils)");
        String::from_utf8_lossy(&o.stdout).split_whitespace().next().unwrap().to_string()
    };
    let files = [
        "config.json",
        "tokenizer.json",
        "model.safetensors.index.json",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ];
    for f in files {
        assert_eq!(p["sha256"][f].as_str().unwrap(), sha256sum(&model.join(f)), "{f}");
    }
    assert_eq!(p["sha256"]["calibration text"].as_str().unwrap(), sha256sum(&asset("sample.txt")));
    assert_eq!(p["sha256"]["evaluation text"].as_str().unwrap(), sha256sum(&asset("sample.txt")));
    let _ = std::fs::remove_dir_all(&s);
}

/// Every other file of the input folder arrives unchanged (an instruction model's chat
/// template, its generation config, the model card…), listed with its SHA-256; weights in
/// another format and folders do not.
#[test]
fn the_output_keeps_every_other_file_of_the_input() {
    let s = scratch("other-files");
    let model = model_copy("tiny-llama", &s.join("model"));
    let others = [
        ("chat_template.jinja", "{% for m in messages %}{{ m.content }}{% endfor %}"),
        ("generation_config.json", "{\"do_sample\": false}"),
        ("special_tokens_map.json", "{}"),
        ("README.md", "# a model card"),
    ];
    for (f, text) in others {
        std::fs::write(model.join(f), text).unwrap();
    }
    std::fs::write(model.join("pytorch_model.bin"), b"dense weights").unwrap();
    std::fs::create_dir(model.join("original")).unwrap();
    let out = s.join("out");
    let o = run_prune(&model, &out, &[], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let copied = report(&out)["provenance"]["copied"].clone();
    for (f, text) in others.into_iter().chain([("config.json", ""), ("tokenizer.json", "")]) {
        let bytes = std::fs::read(out.join(f)).unwrap_or_else(|_| panic!("{f} was not copied"));
        assert_eq!(bytes, std::fs::read(model.join(f)).unwrap(), "{f}");
        assert!(text.is_empty() || bytes == text.as_bytes());
        let hex: String = Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(copied[f].as_str(), Some(hex.as_str()), "{f} in the report");
    }
    assert!(!out.join("pytorch_model.bin").exists() && !out.join("original").exists());
    assert!(copied.get("pytorch_model.bin").is_none());
    let _ = std::fs::remove_dir_all(&s);
}

/// Runs `neuroal` with `args` until it says "paused at" (it was started with NEUROAL_PAUSE),
/// then calls `meanwhile` and waits for it to end.
#[cfg(feature = "test-hooks")]
fn while_paused(cmd: &mut Command, meanwhile: impl FnOnce(u32)) -> (Option<i32>, String) {
    use std::io::{BufRead, BufReader};
    let mut child = cmd.stderr(std::process::Stdio::piped()).stdout(std::process::Stdio::null()).spawn().unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = String::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        seen.push_str(&line);
        seen.push('\n');
        if line.starts_with("paused at") {
            break;
        }
    }
    assert!(seen.contains("paused at"), "never paused: {seen}");
    meanwhile(child.id());
    for line in lines {
        seen.push_str(&line.unwrap());
        seen.push('\n');
    }
    (child.wait().unwrap().code(), seen)
}

/// Liveness is a lock, not a process id: a run in another PID namespace (a container sharing
/// the folder) leaves a live run's staging folder alone, and a resumed run that gets the same
/// process id as the interrupted one (both second in a fresh namespace) resumes instead of
/// discarding the progress as its own. Needs root for the namespaces (CI runs as root).
#[test]
#[cfg(target_os = "linux")]
#[cfg(feature = "test-hooks")] // NEUROAL_PAUSE, NEUROAL_FAULT
fn staging_liveness_holds_across_pid_namespaces() {
    let s = scratch("namespaces");
    let model = model_copy("tiny-llama", &s.join("model"));
    let out = s.join("out");
    let bin = env!("CARGO_BIN_EXE_neuroal");
    // `sh` is the namespace's first process, so neuroal is always its second: pid 2.
    let in_namespace = |args: &[String], env: &[(&str, &str)]| -> Output {
        let mut cmd = Command::new("unshare");
        cmd.args(["--pid", "--fork", "sh", "-c", "\"$0\" \"$@\"; exit $?", bin]).args(args);
        cmd.env("XDG_RUNTIME_DIR", std::env::temp_dir());
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().expect("unshare (util-linux)")
    };
    let probe = in_namespace(&["--version".into()], &[]);
    assert!(probe.status.success(), "the test needs PID namespaces (root, as CI runs): {}", stderr(&probe));

    // A live run, paused with its staging folder in place; another run of the same output from
    // another namespace must leave that folder alone.
    let mut live = Command::new(bin);
    live.args(prune_args(&model, &out, &[]))
        .env("XDG_RUNTIME_DIR", std::env::temp_dir())
        .env("NEUROAL_PAUSE", "after-block-0")
        .env("NEUROAL_PAUSE_SECS", "30");
    let (code, err) = while_paused(&mut live, |pid| {
        let staged: Vec<String> = leftovers(&out).into_iter().filter(|n| n.contains(".tmp-")).collect();
        assert_eq!(staged.len(), 1, "{staged:?}");
        let other = in_namespace(&prune_args(&model, &s.join("other"), &[]), &[]);
        assert!(other.status.success(), "{}", stderr(&other));
        let rival = in_namespace(&prune_args(&model, &out, &[]), &[]);
        assert!(!stderr(&rival).contains("note: removed"), "{}", stderr(&rival));
        assert!(s.join(&staged[0]).is_dir(), "a live run's staging folder was removed from another namespace");
        // SAFETY: signalling our own child.
        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    });
    assert_eq!(code, Some(143), "{err}");
    std::fs::remove_dir_all(&out).unwrap();

    // Killed second in one namespace, resumed second in another: same pid, progress kept.
    let out = s.join("resumed");
    let flags = ["--top-up", "neuroal", "--search-nsamples", "2", "--sparsity", "0.6"];
    let killed_run = in_namespace(&prune_args(&model, &out, &flags), &[("NEUROAL_FAULT", "after-block-0")]);
    assert_eq!(killed_run.status.code(), Some(137), "{}", stderr(&killed_run));
    let kept = leftovers(&out);
    assert!(kept.iter().any(|n| n.starts_with(".resumed.tmp-2-")), "{kept:?}");
    let o = in_namespace(&prune_args(&model, &out, &[&flags[..], &["--resume"]].concat()), &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("resuming the interrupted run"), "{}", stderr(&o));
    assert!(leftovers(&out).is_empty(), "{:?}", leftovers(&out));
    let _ = std::fs::remove_dir_all(&s);
}

/// `--force` over an old output holding an immutable file: refused before any work, the old
/// output whole, nothing left beside it, and the next run not blocked. Needs root for chattr.
#[test]
#[cfg(target_os = "linux")]
fn force_over_an_output_that_cannot_be_removed_is_refused_up_front() {
    let s = scratch("immutable");
    let model = model_copy("tiny-llama", &s.join("model"));
    let out = s.join("out");
    assert!(run_prune(&model, &out, &[], &[]).status.success());
    std::fs::write(out.join("keep.txt"), "mine").unwrap();
    let chattr = |flag: &str| Command::new("chattr").arg(flag).arg(out.join("keep.txt")).status().expect("chattr");
    assert!(chattr("+i").success(), "the test sets an immutable file (as root, as CI runs)");
    let before = snapshot(&out);
    let o = run_prune(&model, &out, &["--force"], &[]);
    let _ = chattr("-i");
    one_line_error(&o, "which is immutable, so the old output cannot be removed; not replaced");
    assert_eq!(snapshot(&out), before);
    assert!(leftovers(&out).is_empty(), "{:?}", leftovers(&out));
    let o = run_prune(&model, &out, &["--force"], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(leftovers(&out).is_empty(), "{:?}", leftovers(&out));
    let _ = std::fs::remove_dir_all(&s);
}

/// A run that fails after drawing its plots (here: the output appeared meanwhile) leaves no
/// plot in the outside plots folder, and not the folder it made for them.
#[test]
#[cfg(feature = "test-hooks")] // NEUROAL_FAULT
fn a_failed_run_leaves_no_plots() {
    let s = scratch("failed-plots");
    let model = model_copy("tiny-llama", &s.join("model"));
    let out = s.join("out");
    let plots = s.join("plots");
    let o =
        run_prune(&model, &out, &["--plots", plots.to_str().unwrap()], &[("NEUROAL_FAULT", "appear-before-commit")]);
    run_error(&o, "appeared while this run was working");
    assert!(!plots.exists(), "the plots folder was left: {:?}", std::fs::read_dir(&plots).map(|d| d.count()));
    std::fs::create_dir(&plots).unwrap();
    std::fs::remove_dir_all(&out).unwrap();
    let o =
        run_prune(&model, &out, &["--plots", plots.to_str().unwrap()], &[("NEUROAL_FAULT", "appear-before-commit")]);
    run_error(&o, "appeared while this run was working");
    assert_eq!(std::fs::read_dir(&plots).unwrap().count(), 0, "a failed run left plots");
    let _ = std::fs::remove_dir_all(&s);
}

/// Config and tokenizer changed while the run works: the report hashes, and the output holds,
/// the bytes the run read at its start.
#[test]
#[cfg(feature = "test-hooks")] // NEUROAL_PAUSE
fn files_changed_during_the_run_are_recorded_as_read() {
    let s = scratch("changed");
    let model = model_copy("tiny-llama", &s.join("model"));
    let out = s.join("out");
    let original: Vec<(&str, Vec<u8>)> =
        ["config.json", "tokenizer.json"].iter().map(|f| (*f, std::fs::read(model.join(f)).unwrap())).collect();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_neuroal"));
    cmd.args(prune_args(&model, &out, &[]))
        .env("XDG_RUNTIME_DIR", std::env::temp_dir())
        .env("NEUROAL_PAUSE", "after-block-0")
        .env("NEUROAL_PAUSE_SECS", "1");
    let (code, err) = while_paused(&mut cmd, |_| {
        for (f, bytes) in &original {
            let mut changed = bytes.clone();
            changed.extend_from_slice(b"\n\n");
            std::fs::write(model.join(f), changed).unwrap();
        }
    });
    assert_eq!(code, Some(0), "{err}");
    let r = report(&out);
    for (f, bytes) in &original {
        let want: String = Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(r["provenance"]["sha256"][f], want.as_str(), "{f}: the report hashes a file the run did not use");
        assert_eq!(r["provenance"]["copied"][f], want.as_str(), "{f}");
        assert!(std::fs::read(out.join(f)).unwrap() == *bytes, "{f}: the output holds other bytes than the run read");
    }
    let _ = std::fs::remove_dir_all(&s);
}
