//! What makes a run reproducible, for report.json: the tool's version and git revision, the
//! command line, and the SHA-256 of every input file.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use rayon::prelude::*;
use sha2::{Digest, Sha256};

use crate::io::error::{Context, Result};

/// The git revision this binary was built from ("unknown" outside a git checkout).
pub const GIT_REVISION: &str = env!("NEUROAL_GIT_REVISION");

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Hex SHA-256 of bytes already read (what a run used, not what the file holds later).
pub fn sha256_bytes(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// Hex SHA-256 of a file, streamed.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).context(|| format!("cannot read {}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// SHA-256 of the files a run reads, keyed by file name: the shards, hashed here from disk,
/// and the small files already read whole (`read`: config, tokenizer, index), hashed from the
/// bytes the run used. The files are hashed side by side, one per core: SHA-256 runs at about
/// 1.4 GB/s on a core with SHA instructions (far less without), so a 7B checkpoint's 13.5 GB
/// take about 10 s on one core, and its shards are hashed at once instead. On threads of its
/// own, not rayon's global pool: a prune runs beside it, and a worker of that pool waiting in a
/// join could pick up a file's hash and hold the prune for seconds.
pub fn model_hashes(
    dir: &Path,
    shard_names: &[String],
    read: &BTreeMap<String, Vec<u8>>,
) -> Result<BTreeMap<String, String>> {
    let names: Vec<String> = shard_names.to_vec();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(names.len().clamp(1, cores))
        .thread_name(|i| format!("neuroal-hash-{i}"))
        .build()
        .map_err(|e| crate::err!("cannot start the hashing threads: {e}"))?;
    let hashes: Vec<Option<Result<String>>> = pool.install(|| {
        names
            .par_iter()
            .map(|f| {
                let p = dir.join(f);
                p.exists().then(|| sha256_file(&p))
            })
            .collect()
    });
    let mut out: BTreeMap<String, String> = read.iter().map(|(f, b)| (f.clone(), sha256_bytes(b))).collect();
    for (f, h) in names.into_iter().zip(hashes) {
        if let Some(h) = h {
            out.insert(f, h?);
        }
    }
    Ok(out)
}

/// The command line as run, arguments joined by spaces.
pub fn command_line() -> String {
    std::env::args().collect::<Vec<_>>().join(" ")
}
