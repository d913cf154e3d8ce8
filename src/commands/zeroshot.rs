//! `neuroal zeroshot`: multiple-choice accuracy on local JSONL task files.

use std::path::Path;

use crate::commands::Compute;
use crate::io::error::Result;
use crate::io::tokenizer::Tokenizer;
use crate::measure::perplexity::default_seqlen;
use crate::{bail, outln};

/// Checks the folder and every task file before opening a device; prints each task's accuracy
/// (or the JSON).
pub fn run(
    model: &Path,
    tasks: &str,
    limit: Option<usize>,
    seqlen: Option<usize>,
    compute: &Compute,
    json: bool,
) -> Result<()> {
    if limit == Some(0) {
        bail!("--limit must be at least 1");
    }
    let paths = crate::measure::zeroshot::task_paths(tasks)?;
    let (config, checkpoint) = crate::model::check_model_dir(model)?;
    let max_len = seqlen.unwrap_or_else(|| default_seqlen(&config));
    config.check_seqlen(max_len)?;
    let examples = crate::measure::zeroshot::read_tasks(&paths, limit)?;
    let tokenizer = Tokenizer::open(model)?;
    let requests = crate::measure::zeroshot::Requests::encode(&tokenizer, &examples, max_len)?;
    let measure = crate::measure::memory::Measure { perplexity: None, zeroshot: Some(requests.sizes()) };
    let (m, described) = compute.load(config, checkpoint, &measure)?;
    let r = crate::measure::zeroshot::evaluate(&m, &requests, &described)?;
    if json {
        return crate::io::error::write_json(&r, true);
    }
    for (task, s) in &r.tasks {
        outln!(
            "{task:<20} acc {:.4} ± {:.4}  acc_norm {:.4} ± {:.4}  n {}  (papers quote {})",
            s.acc,
            s.acc_stderr,
            s.acc_norm,
            s.acc_norm_stderr,
            s.n,
            s.quoted
        )?;
    }
    outln!("{:.1} examples/s on {}", r.examples_per_s, r.device)
}
