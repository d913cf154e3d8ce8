use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use neuroal::device::{self, Choice};
use neuroal::error::Result;
use neuroal::eval::{default_seqlen, perplexity};
use neuroal::model::Model;
use neuroal::tokenizer::{tokenize_file, Tokenizer};
use neuroal::{bail, bench};

#[derive(Parser)]
#[command(name = "neuroal", version, about = "Prune Hugging Face LLMs with Wanda/magnitude and the NeuroAL top-up, on wgpu or the CPU")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Perplexity of a model on a text file (non-overlapping windows, as the pruning papers do).
    Eval {
        /// Hugging Face model folder (config.json, *.safetensors, tokenizer.json).
        #[arg(long)]
        model: PathBuf,
        /// UTF-8 text file, read and tokenized whole.
        #[arg(long)]
        text: PathBuf,
        /// Window length in tokens [default: min(2048, max_position_embeddings)].
        #[arg(long)]
        seqlen: Option<usize>,
        /// Evaluate only the first K windows.
        #[arg(long)]
        max_windows: Option<usize>,
        /// auto | gpu | cpu | ndarray
        #[arg(long, default_value = "auto")]
        device: String,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Forward throughput (tokens/s) and peak host memory of each device on a model.
    Bench {
        #[arg(long)]
        model: PathBuf,
        /// Comma-separated devices, each measured in its own process.
        #[arg(long, default_value = "cpu,ndarray,gpu")]
        devices: String,
        #[arg(long, default_value_t = 256)]
        seqlen: usize,
        /// Windows per forward pass.
        #[arg(long, default_value_t = 4)]
        batch: usize,
        /// Timed forward passes (after one warm-up).
        #[arg(long, default_value_t = 5)]
        iters: usize,
        /// Internal: measure one device in this process and print one JSON line.
        #[arg(long, hide = true)]
        single: bool,
        #[arg(long)]
        json: bool,
    },
}

fn parse_device(s: &str) -> Result<Choice> {
    s.parse::<Choice>().map_err(neuroal::error::Error)
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Eval { model, text, seqlen, max_windows, device, json } => {
            let choice = parse_device(&device)?;
            if !text.exists() {
                bail!("{}: text file not found", text.display());
            }
            let selected = device::select(choice)?;
            eprintln!("device {}", selected.description);
            let m = Model::open(&model, &selected.device)?;
            let tokenizer = Tokenizer::open(&model)?;
            let ids = tokenize_file(&tokenizer, &text)?;
            let seqlen = seqlen.unwrap_or_else(|| default_seqlen(&m));
            let result = perplexity(&m, &ids, seqlen, max_windows, &selected.description)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&result).unwrap_or_default());
            } else {
                println!(
                    "perplexity {:.4} ({} windows of {} tokens, {:.0} tokens/s, {})",
                    result.ppl, result.windows, result.seqlen, result.tokens_per_s, result.device
                );
            }
            Ok(())
        }
        Command::Bench { model, devices, seqlen, batch, iters, single, json } => {
            if single {
                let choice = parse_device(&devices)?;
                let r = bench::measure(&model, choice, seqlen, batch, iters)?;
                println!("{}", serde_json::to_string(&r).unwrap_or_default());
                return Ok(());
            }
            let mut rows = Vec::new();
            for d in devices.split(',').map(str::trim).filter(|d| !d.is_empty()) {
                parse_device(d)?;
                rows.push(bench::measure_in_child(&model, d, seqlen, batch, iters)?);
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&rows).unwrap_or_default());
            } else {
                bench::print_table(&rows);
            }
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            // clap's message without its usage block: one line, like every other error here.
            let text = e.to_string();
            let line: Vec<&str> = text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with("Usage:") && !l.starts_with("For more information"))
                .collect();
            eprintln!("{}", line.join(" "));
            return ExitCode::from(2);
        }
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}
