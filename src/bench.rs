//! `neuroal bench`: forward throughput and peak host memory per device. Each device runs in a
//! child process so that one device's peak memory does not hide another's.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::device::{self, Choice};
use crate::error::Result;
use crate::model::{Block, Model};
use crate::{bail, err};

#[derive(Debug, Serialize, Deserialize)]
pub struct BenchRow {
    pub device: String,
    pub seqlen: usize,
    pub batch: usize,
    pub tokens_per_s: f64,
    pub ms_per_forward: f64,
    pub peak_rss_mib: f64,
}

/// Peak resident set size of this process (Linux `VmHWM`), in MiB; 0 where unknown.
pub fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|kb| kb.parse::<f64>().ok()))
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

pub fn measure(model_dir: &Path, choice: Choice, seqlen: usize, batch: usize, iters: usize) -> Result<BenchRow> {
    if batch == 0 || iters == 0 {
        bail!("--batch and --iters must be at least 1");
    }
    let selected = device::select(choice)?;
    let model = Model::open(model_dir, &selected.device)?;
    model.check_seqlen(seqlen)?;
    let blocks: Vec<Block> = model.blocks().collect::<Result<_>>()?;
    let rope = model.positions(seqlen);
    let vocab = model.config.vocab_size as u32;
    // Deterministic pseudo-random ids: throughput does not depend on which tokens they are.
    let ids: Vec<u32> = (0..batch * seqlen).map(|i| (i as u32).wrapping_mul(2_654_435_761) % vocab).collect();
    let forward = || -> Result<()> {
        let mut h = model.embed(&ids, batch);
        for block in &blocks {
            h = block.forward(h, &rope, None);
        }
        // Reading one value back waits for the device to finish the whole pass.
        crate::model::host_f32(model.head(h).sum(), "forward pass")?;
        Ok(())
    };
    forward()?;
    let start = Instant::now();
    for _ in 0..iters {
        forward()?;
    }
    let secs = start.elapsed().as_secs_f64();
    Ok(BenchRow {
        device: selected.description,
        seqlen,
        batch,
        tokens_per_s: (iters * batch * seqlen) as f64 / secs,
        ms_per_forward: secs * 1000.0 / iters as f64,
        peak_rss_mib: peak_rss_mib(),
    })
}

pub fn measure_in_child(model_dir: &Path, device: &str, seqlen: usize, batch: usize, iters: usize) -> Result<BenchRow> {
    let exe = std::env::current_exe().map_err(|e| err!("cannot find own executable: {e}"))?;
    let out = Command::new(exe)
        .args(["bench", "--single", "--devices", device, "--seqlen", &seqlen.to_string()])
        .args(["--batch", &batch.to_string(), "--iters", &iters.to_string(), "--model"])
        .arg(model_dir)
        .output()
        .map_err(|e| err!("cannot run the benchmark child: {e}"))?;
    if !out.status.success() {
        let msg = String::from_utf8_lossy(&out.stderr);
        bail!("bench on {device}: {}", msg.lines().last().unwrap_or("failed").trim_start_matches("error: "));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).map_err(|e| err!("bench on {device}: unreadable result ({e})"))
}

pub fn print_table(rows: &[BenchRow]) {
    println!("{:<48} {:>7} {:>6} {:>12} {:>12} {:>10}", "device", "seqlen", "batch", "tokens/s", "ms/forward", "peak MiB");
    for r in rows {
        println!(
            "{:<48} {:>7} {:>6} {:>12.0} {:>12.1} {:>10.0}",
            r.device, r.seqlen, r.batch, r.tokens_per_s, r.ms_per_forward, r.peak_rss_mib
        );
    }
}
