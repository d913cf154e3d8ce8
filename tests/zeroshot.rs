//! Zero-shot: every choice's log-likelihood against transformers (left truncation and the
//! WinoGrande form included) on every device; the converter on one record of each dataset's
//! shape; bad task files; `prune --zeroshot`.

mod common;

use std::path::PathBuf;
use std::process::{Command, Output};

use common::*;
use neuroal::commands::report::Report;
use neuroal::io::tokenizer::Tokenizer;
use neuroal::measure::zeroshot::{Requests, loglikelihoods, read_tasks};
use neuroal::model::Model;

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("neuroal-zeroshot-{}-{name}", std::process::id()));
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

#[test]
fn loglikelihoods_match_transformers_on_every_device() {
    let g = golden("zeroshot");
    let max_len = g["max_len"].as_u64().unwrap() as usize;
    let examples = read_tasks(&[asset("tasks.jsonl")], None).unwrap();
    assert!(examples.iter().any(|e| e.suffix.is_some()), "the WinoGrande form is covered");
    for (dev_name, dev) in devices() {
        for (name, want) in g["models"].as_object().unwrap() {
            let model = Model::open(&asset(name), &dev).unwrap();
            let tok = Tokenizer::open(&asset(name)).unwrap();
            // The long example is cut on the left to max_len tokens.
            let got = loglikelihoods(&model, &Requests::encode(&tok, &examples, max_len).unwrap()).unwrap();
            let want: Vec<Vec<f64>> = want
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect())
                .collect();
            assert_eq!(got.len(), want.len(), "{name}");
            let mut worst = 0f64;
            for (g, w) in got.iter().zip(&want) {
                assert_eq!(g.len(), w.len(), "{name}");
                for (a, b) in g.iter().zip(w) {
                    worst = worst.max((a - b).abs() / b.abs());
                }
            }
            println!("{name} on {dev_name}: worst relative error {worst:.2e}");
            assert!(worst <= 1e-4, "{name} on {dev_name}: relative error {worst:.2e}");
        }
    }
}

#[test]
fn zeroshot_command_prints_the_documented_json() {
    let model = asset("tiny-llama");
    let o = neuroal(&[
        "zeroshot",
        "--model",
        model.to_str().unwrap(),
        "--tasks",
        asset("tasks.jsonl").to_str().unwrap(),
        "--device",
        "cpu",
        "--json",
        "--limit",
        "5",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    for task in ["next_sentence", "fill_blank"] {
        let t = &v["tasks"][task];
        for k in ["acc", "acc_stderr", "acc_norm", "acc_norm_stderr"] {
            assert!(t[k].as_f64().is_some_and(|x| (0.0..=1.0).contains(&x)), "{task} {k}: {t}");
        }
        assert!(t["n"].as_u64().unwrap() <= 5);
    }
    assert_eq!(v["tasks"]["fill_blank"]["n"], 3);
}

#[test]
fn bad_task_files_get_one_line_naming_file_and_line() {
    let s = scratch("bad");
    let good = r#"{"context": "a", "choices": [" b", " c"], "label": 0}"#;
    let cases = [
        ("notjson", "{ oops", "notjson.jsonl:2: not a JSON object"),
        (
            "label",
            r#"{"context": "a", "choices": [" b"], "label": 3}"#,
            "label.jsonl:2: label 3 is out of range for 1 choices",
        ),
        ("empty", r#"{"context": "a", "choices": [], "label": 0}"#, "empty.jsonl:2: \"choices\" is empty"),
        ("nolabel", r#"{"context": "a", "choices": [" b"]}"#, "nolabel.jsonl:2: missing \"label\""),
        (
            "negative",
            r#"{"context": "a", "choices": [" b"], "label": -1}"#,
            "negative.jsonl:2: label -1 must be a whole",
        ),
        ("float", r#"{"context": "a", "choices": [" b"], "label": 1.0}"#, "float.jsonl:2: label 1.0 must be a whole"),
        ("text", r#"{"context": "a", "choices": [" b"], "label": "1"}"#, "text.jsonl:2: label \"1\" must be a whole"),
        ("blank", r#"{"context": "a", "choices": [" b", ""], "label": 0}"#, "blank.jsonl:2: a choice is empty"),
    ];
    for (name, line, expect) in cases {
        let f = s.join(format!("{name}.jsonl"));
        std::fs::write(&f, format!("{good}\n{line}\n")).unwrap();
        let o = neuroal(&[
            "zeroshot",
            "--model",
            asset("tiny-llama").to_str().unwrap(),
            "--tasks",
            f.to_str().unwrap(),
            "--device",
            "cpu",
        ]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(expect), "expected \"{expect}\" in {err}");
    }
    let _ = std::fs::remove_dir_all(&s);
}

/// A file named twice would count its examples twice; one example has no standard error;
/// `--limit` caps a task across the files that hold it.
#[test]
fn tasks_count_each_example_once_and_need_two() {
    let s = scratch("counts");
    let line = |task: &str| format!(r#"{{"task": "{task}", "context": "a", "choices": [" b", " c"], "label": 0}}"#);
    let (a, b, one) = (s.join("a.jsonl"), s.join("b.jsonl"), s.join("one.jsonl"));
    std::fs::write(&a, [line("t"), line("t")].join("\n")).unwrap();
    std::fs::write(&b, [line("t"), line("t"), line("t")].join("\n")).unwrap();
    std::fs::write(&one, line("alone")).unwrap();
    let run = |tasks: String, extra: &[&str]| {
        let model = asset("tiny-llama");
        let mut args = vec!["zeroshot", "--model", model.to_str().unwrap(), "--tasks", &tasks, "--device", "cpu"];
        args.extend_from_slice(extra);
        neuroal(&args)
    };
    let refused = |o: std::process::Output, expect: &str| {
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        assert_eq!((o.status.code(), err.lines().count()), (Some(2), 1), "{err}");
        assert!(err.contains(expect), "expected \"{expect}\" in {err}");
    };
    let (a_s, b_s) = (a.to_str().unwrap(), b.to_str().unwrap());
    refused(run(format!("{a_s},{b_s},{a_s}"), &[]), "names");
    refused(run(format!("{a_s},{b_s},{a_s}"), &[]), "twice");
    refused(run(one.to_str().unwrap().to_string(), &[]), "task alone has 1 example");
    let o = run(format!("{a_s},{b_s}"), &["--limit", "3", "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["tasks"]["t"]["n"], 3, "--limit 3 over both files' task t");
    let _ = std::fs::remove_dir_all(&s);
}

#[test]
fn converter_gives_the_harness_prompts() {
    let s = scratch("convert");
    let cases: [(&str, &str, &str); 7] = [
        (
            "boolq",
            r#"{"question": "is it blue", "passage": "The sky.", "answer": true}"#,
            r#"{"task": "boolq", "context": "The sky.\nQuestion: is it blue?\nAnswer:", "choices": [" no", " yes"], "label": 1}"#,
        ),
        (
            "rte",
            r#"{"premise": "A cat sat.", "hypothesis": "A cat is sitting.", "label": 0}"#,
            r#"{"task": "rte", "context": "A cat sat.\nQuestion: A cat is sitting. True or False?\nAnswer:", "choices": [" True", " False"], "label": 0}"#,
        ),
        (
            "hellaswag",
            r#"{"activity_label": "Baking", "ctx_a": "She mixes flour.", "ctx_b": "then she", "endings": ["bakes it [title] now.", "sings."], "label": "0"}"#,
            r#"{"task": "hellaswag", "context": "Baking: She mixes flour. Then she", "choices": [" bakes it. now.", " sings."], "label": 0}"#,
        ),
        (
            "winogrande",
            r#"{"sentence": "The cup fit in the box because _ was small.", "option1": "the cup", "option2": "the box", "answer": "1"}"#,
            r#"{"task": "winogrande", "context": "The cup fit in the box because ", "choices": ["the cup", "the box"], "suffix": " was small.", "label": 0}"#,
        ),
        (
            "arc_easy",
            r#"{"question": "What is hot?", "choices": {"text": ["ice", "fire"], "label": ["A", "B"]}, "answerKey": "B"}"#,
            r#"{"task": "arc_easy", "context": "Question: What is hot?\nAnswer:", "choices": [" ice", " fire"], "label": 1}"#,
        ),
        (
            "arc_challenge",
            r#"{"question": {"stem": "Which is a gas?", "choices": [{"text": "steam", "label": "1"}, {"text": "rock", "label": "2"}]}, "answerKey": "1"}"#,
            r#"{"task": "arc_challenge", "context": "Question: Which is a gas?\nAnswer:", "choices": [" steam", " rock"], "label": 0}"#,
        ),
        (
            "openbookqa",
            r#"{"question_stem": "The sun is a", "choices": {"text": ["star", "moon"], "label": ["A", "B"]}, "answerKey": "A"}"#,
            r#"{"task": "openbookqa", "context": "The sun is a", "choices": [" star", " moon"], "label": 0}"#,
        ),
    ];
    for (task, record, want) in cases {
        let (input, output) = (s.join(format!("{task}.jsonl")), s.join(format!("{task}.out.jsonl")));
        std::fs::write(&input, format!("{record}\n")).unwrap();
        let o = Command::new("python3")
            .args([
                root().join("scripts/convert_tasks.py").to_str().unwrap(),
                "--task",
                task,
                "--input",
                input.to_str().unwrap(),
                "--output",
                output.to_str().unwrap(),
            ])
            .output()
            .expect("python3");
        assert!(o.status.success(), "{task}: {}", String::from_utf8_lossy(&o.stderr));
        let got: serde_json::Value = serde_json::from_str(std::fs::read_to_string(&output).unwrap().trim()).unwrap();
        let want: serde_json::Value = serde_json::from_str(want).unwrap();
        assert_eq!(got, want, "{task}");
        // And neuroal reads what the converter wrote.
        assert_eq!(read_tasks(&[output], None).unwrap().len(), 1);
    }
    let _ = std::fs::remove_dir_all(&s);
}

#[test]
fn prune_reports_zero_shot_accuracy_before_and_after() {
    let s = scratch("prune");
    let out = s.join("out");
    let o = neuroal(&[
        "prune",
        "--model",
        asset("tiny-qwen2").to_str().unwrap(),
        "--calib",
        asset("sample.txt").to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--sparsity",
        "0.5",
        "--seqlen",
        "64",
        "--nsamples",
        "8",
        "--device",
        "cpu",
        "--zeroshot",
        asset("tasks.jsonl").to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r: Report = serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    let z = r.zeroshot.unwrap();
    assert_eq!(z.dense.keys().collect::<Vec<_>>(), vec!["fill_blank", "next_sentence"]);
    assert_eq!(z.dense["next_sentence"].n, 12);
    assert_eq!(z.pruned["fill_blank"].n, 3);
    assert!(r.provenance.sha256.keys().any(|k| k.starts_with("task file")));
    let _ = std::fs::remove_dir_all(&s);
}
