//! The real trained model in ../shared against transformers' perplexity on unseen text.

mod common;

use common::*;
use neuroal::gpu::device::Choice;
use neuroal::io::tokenizer::{Tokenizer, tokenize_file};
use neuroal::measure::perplexity::perplexity;
use neuroal::model::Model;

fn run(choice: Choice, max_windows: Option<usize>, key: &str) {
    let dir = shared("models/wt2-llama");
    let g = golden("wt2-llama");
    let dev = select(choice);
    let model = Model::open(&dir, &dev).unwrap();
    let ids = tokenize_file(&Tokenizer::open(&dir).unwrap(), &shared("data/wikitext-2/test.txt")).unwrap();
    assert_eq!(ids.len() as u64, g["tokens"].as_u64().unwrap());
    let r = perplexity(&model, &ids, 256, max_windows, &dev.description).unwrap();
    let want = g[key].as_f64().unwrap();
    let rel = (r.ppl - want).abs() / want;
    println!(
        "wt2-llama on {}: ppl {:.4} vs transformers {want:.4} (rel {rel:.2e}, {:.0} tok/s)",
        dev.description, r.ppl, r.tokens_per_s
    );
    assert!(rel < 1e-3, "ppl {} vs transformers {want}", r.ppl);
}

#[test]
fn wt2_llama_perplexity_on_cpu_matches_transformers() {
    run(Choice::Cpu, None, "ppl");
}

#[test]
fn wt2_llama_perplexity_on_gpu_matches_transformers() {
    run(Choice::Gpu, Some(4), "ppl_first4");
}
