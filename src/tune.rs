//! `neuroal tune`: times every matrix-product kernel on a model's linears on this GPU, and keeps
//! the fastest per weight shape in a file for the adapter, which later runs on it read
//! (`gpu_matmul::choose`). A card nobody measured for this project (a Mac's, an AMD or Intel
//! one) so gets the fastest kernel this build has for it, paid for once; and the choice stays
//! fixed, so every run after the tuning computes the same products and repeats its masks
//! (autotune chooses anew in every process).

use std::path::{Path, PathBuf};

use burn::tensor::DType;

use crate::device::{self, ComputeDtype};
use crate::error::{Context, Result};
use crate::gpu_matmul::{MatmulTiming, Rules};
use crate::{bail, err};

/// What `neuroal tune` is asked.
pub struct TuneArgs {
    /// A model folder (only its config.json is read) or a published shape (`bench --synthetic`'s
    /// names): whose linears' products are timed.
    pub model: Option<PathBuf>,
    pub synthetic: Option<String>,
    /// Rows of each product (tokens per pass), comma-separated; each weight shape's kernel is
    /// the fastest over all of them.
    pub tokens: String,
    pub dtype: ComputeDtype,
    pub iters: usize,
}

/// The folder the tuned files live in: the user's cache folder (`$XDG_CACHE_HOME` or
/// `~/.cache` on Linux, `~/Library/Caches` on macOS, `%LOCALAPPDATA%` on Windows), `neuroal`
/// inside it. `None` where none is known.
pub fn tuned_dir() -> Option<PathBuf> {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    let base = if cfg!(windows) {
        var("LOCALAPPDATA")
    } else if cfg!(target_os = "macos") {
        var("HOME").map(|h| h.join("Library").join("Caches"))
    } else {
        var("XDG_CACHE_HOME").or_else(|| var("HOME").map(|h| h.join(".cache")))
    };
    base.map(|b| b.join("neuroal"))
}

/// An adapter's key, as a file name can hold it: its name, graphics API and compiler (a driver's
/// kernels are compiled per API and compiler, so each pair is tuned apart).
pub fn adapter_key(name: &str, api: &str, compiler: &str) -> String {
    let raw = format!("{name} {api} {compiler}");
    let mut key = String::new();
    for c in raw.chars() {
        let c = if c.is_ascii_alphanumeric() || c == '.' || c == '_' { c } else { '-' };
        if !(c == '-' && key.ends_with('-')) {
            key.push(c);
        }
    }
    key.trim_matches('-').to_string()
}

/// The tuned file of the adapter `key`.
pub fn tuned_path(key: &str) -> Option<PathBuf> {
    tuned_dir().map(|d| d.join(format!("matmul-{key}.txt")))
}

fn dtype_named(name: &str) -> Option<DType> {
    match name {
        "f32" => Some(DType::F32),
        "f16" => Some(DType::F16),
        "bf16" => Some(DType::BF16),
        _ => None,
    }
}

/// A tuned file's lines: `DTYPE RULES`, one per dtype tuned; `#` begins a comment.
fn parse_file(text: &str, path: &Path) -> Result<Vec<(DType, Rules)>> {
    let mut entries: Vec<(DType, Rules)> = Vec::new();
    for (i, line) in text.lines().enumerate().map(|(i, l)| (i + 1, l.trim())) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let source = format!("{}, line {i}", path.display());
        let (name, rules) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        let Some(dtype) = dtype_named(name) else {
            bail!("{source}: expected `f32|f16|bf16 RULES`, found {line:?} (run `neuroal tune` again, or delete the file)");
        };
        if entries.iter().any(|(d, _)| *d == dtype) {
            bail!("{source}: a second {name} line (run `neuroal tune` again, or delete the file)");
        }
        let rules = Rules::parse(rules.trim(), &source).map_err(|e| err!("{e} (run `neuroal tune` again, or delete the file)"))?;
        entries.push((dtype, rules));
    }
    Ok(entries)
}

/// The rules `neuroal tune` wrote for the adapter `key`, each with its dtype and the file: none
/// where it was not tuned; a one-line error where the file cannot be read or understood.
pub fn read_tuned(key: &str) -> Result<Vec<(DType, Rules, PathBuf)>> {
    let Some(path) = tuned_path(key) else { return Ok(Vec::new()) };
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => bail!("{}: cannot read the tuned kernels: {}", path.display(), crate::error::io_words(&e)),
    };
    Ok(parse_file(&text, &path)?.into_iter().map(|(d, r)| (d, r, path.clone())).collect())
}

/// The fastest kernel for one weight shape, with what it and burn's choice took.
#[derive(Debug, PartialEq)]
pub struct Fastest {
    /// [K, N]: the weight's input and output sizes.
    pub shape: [usize; 2],
    pub kernel: String,
    /// Milliseconds over every product of the shape timed.
    pub ms: f64,
    pub burn_ms: Option<f64>,
}

/// From a kernel sweep's rows (the linears' own layout), per weight shape the kernel that took
/// the least time over every product of that shape it ran (a kernel that declined one of them,
/// or whose error against burn's product is above `max_err`, is not a candidate); and for the
/// other products the kernel fastest over all. Ties go to the earlier name in sort order.
pub fn fastest(rows: &[MatmulTiming], max_err: f64) -> (Rules, Vec<Fastest>) {
    use std::collections::BTreeMap;
    // (shape [k, n]) → kernel → (total ms, products run, a product declined or off)
    type Totals = (f64, usize, bool);
    let mut by_shape: BTreeMap<[usize; 2], BTreeMap<&str, Totals>> = BTreeMap::new();
    let mut products: BTreeMap<[usize; 2], std::collections::BTreeSet<[usize; 3]>> = BTreeMap::new();
    for r in rows.iter().filter(|r| r.layout == "weight_t") {
        let shape = [r.shape[1], r.shape[2]];
        products.entry(shape).or_default().insert(r.shape);
        let e = by_shape.entry(shape).or_default().entry(r.kernel.as_str()).or_insert((0.0, 0, false));
        match (r.ms, r.rel_err) {
            (Some(ms), Some(err)) if err <= max_err => {
                e.0 += ms;
                e.1 += 1;
            }
            _ => e.2 = true,
        }
    }
    let ran_all = |shape: &[usize; 2], (_, n, failed): &Totals| !failed && *n == products[shape].len();
    let mut found = Vec::new();
    for (shape, kernels) in &by_shape {
        let candidates = kernels.iter().filter(|(_, t)| ran_all(shape, t)).map(|(k, t)| (t.0, *k)).collect();
        if let Some((ms, kernel)) = best(candidates) {
            let burn_ms = kernels.get("burn").filter(|t| ran_all(shape, t)).map(|t| t.0);
            found.push(Fastest { shape: *shape, kernel: kernel.to_string(), ms, burn_ms });
        }
    }
    // The other products: the kernel with the least time over every shape, among those that ran
    // them all.
    let names: std::collections::BTreeSet<&str> = by_shape.values().flat_map(|k| k.keys().copied()).collect();
    let overall = names
        .into_iter()
        .filter_map(|name| {
            let mut total = 0.0;
            for (shape, kernels) in &by_shape {
                let t = kernels.get(name).filter(|t| ran_all(shape, t))?;
                total += t.0;
            }
            Some((total, name))
        })
        .collect();
    let others = best(overall).map(|(_, k)| k).filter(|k| *k != "burn").map(str::to_string);
    let rules = Rules { by_shape: found.iter().map(|f| (f.shape, f.kernel.clone())).collect(), others };
    (rules, found)
}

/// The least time of `candidates`; on a tie the earlier name.
fn best(candidates: Vec<(f64, &str)>) -> Option<(f64, &str)> {
    candidates.into_iter().min_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(b.1)))
}

/// The weight shapes [K, N] of the linears of the model or published shape asked for.
fn weight_shapes(args: &TuneArgs) -> Result<Vec<[usize; 2]>> {
    let config = match (&args.model, &args.synthetic) {
        (Some(dir), _) => {
            let path = dir.join("config.json");
            if !path.is_file() {
                bail!("{}: no config.json", dir.display());
            }
            crate::config::Config::from_file(&path)?
        }
        (None, Some(name)) => {
            let shape = crate::bench::shape(name)?;
            let mut raw: serde_json::Value = serde_json::from_str(shape.config).map_err(|e| err!("shape {name}: {e}"))?;
            raw["num_hidden_layers"] = 1.into();
            crate::config::Config::from_json(&raw.to_string())?
        }
        (None, None) => bail!("--model or --synthetic is required"),
    };
    let mut shapes: Vec<[usize; 2]> = crate::model::Spec::of(&config).shapes().into_iter().map(|[out, inp]| [inp, out]).collect();
    shapes.sort();
    shapes.dedup();
    Ok(shapes)
}

/// Largest relative error against burn's product a tuned kernel may have: f32 products must be
/// f32 products (a tensor-core kernel in TF32 would change f32 runs' results by ~1e-3); half ones
/// may differ in their rounding.
fn max_err(dtype: DType) -> f64 {
    if dtype == DType::F32 { 1e-5 } else { 1e-2 }
}

/// `neuroal tune`: the sweep, the choice, the file; prints what was chosen and where it went.
pub fn run(args: &TuneArgs) -> Result<()> {
    if args.iters == 0 {
        bail!("--iters must be at least 1");
    }
    let shapes = weight_shapes(args)?;
    let tokens: Vec<usize> = crate::bench::parse_sizes::<1>(&args.tokens, "--tokens", "a list of token counts, e.g. 2048,4096")?.into_iter().map(|[m]| m).collect();
    crate::gpu_matmul::ignore_tuned();
    let selected = device::select(device::Choice::Gpu).map_err(|e| err!("tune times the GPU's kernels: {e}"))?;
    let dtype = selected.compute_dtype(args.dtype)?;
    let dtype_name = device::dtype_name(dtype);
    let key = selected.adapter_key.clone().ok_or_else(|| err!("tune: the GPU's adapter has no key"))?;
    let Some(path) = tuned_path(&key) else {
        bail!("tune: no cache folder to keep the result in (set XDG_CACHE_HOME or HOME)");
    };
    let products: Vec<[usize; 3]> = tokens.iter().flat_map(|&m| shapes.iter().map(move |&[k, n]| [m, k, n])).collect();
    eprintln!("{} ({dtype_name}): timing {} kernels and burn's on {} products", selected.description, crate::gpu_matmul::names().len(), products.len());
    let mut rows = Vec::new();
    crate::gpu_matmul::time_kernels(&selected.device, &products, dtype, args.iters, false, &mut |r| {
        rows.push(r);
        Ok(())
    })?;
    let (rules, found) = fastest(&rows, max_err(dtype));
    if found.len() != shapes.len() {
        bail!("tune: no kernel, burn's included, ran every product of some weight shape on this GPU");
    }
    // The other dtypes' lines stay; this dtype's rules are updated (shapes of other models kept).
    let mut entries = match std::fs::read_to_string(&path) {
        Ok(text) => match parse_file(&text, &path) {
            Ok(e) => e,
            Err(e) => {
                eprintln!("replacing an unreadable tuned file ({e})");
                Vec::new()
            }
        },
        Err(_) => Vec::new(),
    };
    let kept = entries.iter().position(|(d, _)| *d == dtype).map(|i| entries.remove(i).1).unwrap_or_default();
    let rules = kept.updated_by(rules);
    entries.push((dtype, rules.clone()));
    entries.sort_by_key(|(d, _)| device::dtype_name(*d));
    write_tuned(&path, &selected.description, &entries)?;
    println!("{:<14} {:<66} {:>10} {:>10}", "K×N", "fastest kernel", "ms", "burn's ms");
    for f in &found {
        let burn = f.burn_ms.map_or("-".to_string(), |b| format!("{b:.3}"));
        println!("{:<14} {:<66} {:>10.3} {burn:>10}", format!("{}×{}", f.shape[0], f.shape[1]), f.kernel, f.ms);
    }
    println!("wrote {}: {dtype_name} products on this GPU now use {rules} (NEUROAL_MATMUL overrides it; delete the file to undo)", path.display());
    Ok(())
}

/// Writes the tuned file whole or not at all (a `.part` file, then renamed).
fn write_tuned(path: &Path, adapter: &str, entries: &[(DType, Rules)]) -> Result<()> {
    let dir = path.parent().ok_or_else(|| err!("{}: no parent folder", path.display()))?;
    std::fs::create_dir_all(dir).context(|| format!("cannot create {}", dir.display()))?;
    let mut text = format!(
        "# neuroal tune: the fastest matrix-product kernel per weight shape KxN (input x output size)\n# on {adapter}, per compute dtype. NEUROAL_MATMUL overrides it; delete this file to undo.\n"
    );
    for (dtype, rules) in entries {
        text.push_str(&format!("{} {rules}\n", device::dtype_name(*dtype)));
    }
    let part = path.with_extension("part");
    std::fs::write(&part, text).context(|| format!("cannot write {}", part.display()))?;
    std::fs::rename(&part, path).context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(m: usize, k: usize, n: usize, kernel: &str, ms: Option<f64>, err: f64) -> MatmulTiming {
        MatmulTiming {
            shape: [m, k, n],
            layout: "weight_t".into(),
            kernel: kernel.into(),
            ms,
            tflops: None,
            rel_err: ms.map(|_| err),
            declined: ms.is_none().then(|| "declined".into()),
        }
    }

    #[test]
    fn the_fastest_kernel_per_shape_over_every_product_it_ran() {
        let rows = vec![
            // 64x64: a is fastest at M 8, b at M 16; over both, b (2 + 2.5 < 1 + 4).
            row(8, 64, 64, "burn", Some(4.0), 0.0),
            row(8, 64, 64, "a", Some(1.0), 1e-3),
            row(8, 64, 64, "b", Some(2.0), 1e-3),
            row(16, 64, 64, "burn", Some(4.0), 0.0),
            row(16, 64, 64, "a", Some(4.0), 1e-3),
            row(16, 64, 64, "b", Some(2.5), 1e-3),
            // 64x172: a declines one product, c is too far off burn's: burn wins.
            row(8, 64, 172, "burn", Some(1.0), 0.0),
            row(8, 64, 172, "a", Some(0.5), 1e-3),
            row(8, 64, 172, "c", Some(0.1), 0.5),
            row(16, 64, 172, "burn", Some(1.0), 0.0),
            row(16, 64, 172, "a", None, 0.0),
            row(16, 64, 172, "c", Some(0.1), 0.5),
        ];
        let (rules, found) = fastest(&rows, 1e-2);
        assert_eq!(found, vec![
            Fastest { shape: [64, 64], kernel: "b".into(), ms: 4.5, burn_ms: Some(8.0) },
            Fastest { shape: [64, 172], kernel: "burn".into(), ms: 2.0, burn_ms: Some(2.0) },
        ]);
        // Over every product only burn ran them all (a declined one, b never ran 64x172).
        assert_eq!(rules.to_string(), "64x64=b,64x172=burn,burn");
        // The k_by_n layout is not the linears' and does not count.
        let mut other = row(8, 64, 64, "c", Some(0.01), 0.0);
        other.layout = "k_by_n".into();
        let (_, found2) = fastest(&[rows.clone(), vec![other]].concat(), 1e-2);
        assert_eq!(found2[0].kernel, "b");
    }

    #[test]
    fn tuned_files_round_trip_and_bad_ones_get_one_line() {
        let path = Path::new("/x/matmul-gpu.txt");
        let text = "# comment\nf16 4096x4096=a,4096x11008=burn,b\n\nf32 burn\n";
        let e = parse_file(text, path).unwrap();
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].0, DType::F16);
        assert_eq!(e[0].1.to_string(), "4096x4096=a,4096x11008=burn,b");
        assert_eq!(e[1], (DType::F32, Rules::default()));
        for (bad, says) in [
            ("f64 a", "expected `f32|f16|bf16 RULES`"),
            ("f16 a\nf16 b", "a second f16 line"),
            ("f16 0x64=a", "a rule is KxN=KERNEL"),
            ("f16 a,b", "names two kernels"),
        ] {
            let msg = parse_file(bad, path).unwrap_err().to_string();
            assert!(msg.starts_with("/x/matmul-gpu.txt, line") && msg.contains(says) && !msg.contains('\n'), "{bad}: {msg}");
        }
    }

    #[test]
    fn newer_rules_replace_a_shape_and_keep_the_others() {
        let old = Rules::parse("64x64=a,64x172=b,c", "t").unwrap();
        let new = Rules::parse("64x172=d,128x64=e,burn", "t").unwrap();
        assert_eq!(old.updated_by(new).to_string(), "64x64=a,64x172=d,128x64=e,burn");
    }

    #[test]
    fn adapter_keys_are_file_names() {
        assert_eq!(adapter_key("NVIDIA H100 80GB HBM3", "Vulkan", "wgpu<spirv>"), "NVIDIA-H100-80GB-HBM3-Vulkan-wgpu-spirv");
        assert_eq!(adapter_key("llvmpipe (LLVM 15.0.7, 256 bits)", "Gl", "wgpu<wgsl>"), "llvmpipe-LLVM-15.0.7-256-bits-Gl-wgpu-wgsl");
    }
}
