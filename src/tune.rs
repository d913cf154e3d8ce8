//! `neuroal tune`: times every matrix-product kernel on a model's linears and every attention
//! kernel on its attention on this GPU, and keeps the fastest (per weight shape, per head size)
//! in a file for the adapter, which later runs on it read (`gpu_matmul::choose`,
//! `gpu_attention::choose`). A card nobody measured for this project (a Mac's, an AMD or Intel
//! one) so gets the fastest kernel this build has for it, paid for once; and the choice stays
//! fixed, so every run after the tuning computes the same products and repeats its masks
//! (autotune chooses anew in every process).

use std::path::{Path, PathBuf};

use burn::tensor::DType;

use crate::device::{self, ComputeDtype};
use crate::error::{Context, Result};
use crate::gpu_matmul::{MatmulTiming, Rules};
use crate::kernels::{Select, Walk};
use crate::{bail, err, outln};

/// What `neuroal tune` is asked.
pub struct TuneArgs {
    /// A model folder (only its config.json is read) or a published shape (`bench --synthetic`'s
    /// names): whose linears' products are timed.
    pub model: Option<PathBuf>,
    pub synthetic: Option<String>,
    /// Rows of each product (tokens per pass), comma-separated; each weight shape's kernel is
    /// the fastest over all of them.
    pub tokens: String,
    /// Tokens per window of the timed attention.
    pub seqlen: usize,
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
    tuned_dir().map(|d| d.join(format!("kernels-{key}.txt")))
}

/// What `neuroal tune` kept for an adapter: per compute dtype, the matrix products' rules, the
/// attention kernel per head size, and which groups of linears that read one input multiply
/// as one product (`src/fused.rs`); and how the row selection runs (`kernels::Select`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Tuned {
    /// The file it was read from.
    pub path: Option<PathBuf>,
    pub matmul: Vec<(DType, Rules)>,
    pub attention: Vec<(DType, AttentionRules)>,
    pub fuse: Vec<(DType, crate::fused::Rules)>,
    pub select: Option<Select>,
}

/// The attention kernel (one of `gpu_attention::NAMES`) per head size, written `HD=NAME,…`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AttentionRules(pub Vec<(usize, String)>);

impl AttentionRules {
    fn parse(value: &str, source: &str) -> Result<AttentionRules> {
        let mut rules = Vec::new();
        for rule in value.split(',').map(str::trim) {
            let parsed = rule.split_once('=').and_then(|(hd, name)| Some((hd.trim().parse::<usize>().ok().filter(|&h| h > 0)?, name.trim())));
            let Some((head_dim, name)) = parsed else {
                bail!("{source}: {rule:?}: an attention rule is HEAD_SIZE=KERNEL (e.g. 64=flash-2)");
            };
            if !crate::gpu_attention::NAMES.contains(&name) {
                bail!("{source}: no attention kernel is named {name} in this version");
            }
            rules.push((head_dim, name.to_string()));
        }
        Ok(AttentionRules(rules))
    }

    /// `newer`'s head sizes, and this one's that `newer` does not name.
    fn updated_by(self, newer: AttentionRules) -> AttentionRules {
        AttentionRules(merged(self.0, newer.0))
    }
}

impl std::fmt::Display for AttentionRules {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.iter().map(|(hd, name)| format!("{hd}={name}")).collect::<Vec<_>>().join(","))
    }
}

/// A tuned file's rules after a newer tune: `newer`'s, and `older`'s for the keys (weight
/// shapes, head sizes, groups) `newer` does not name; in key order.
pub(crate) fn merged<K: Ord, V: Ord>(older: Vec<(K, V)>, newer: Vec<(K, V)>) -> Vec<(K, V)> {
    let mut rules = newer;
    for (key, value) in older {
        if !rules.iter().any(|(k, _)| *k == key) {
            rules.push((key, value));
        }
    }
    rules.sort();
    rules
}

fn dtype_named(name: &str) -> Option<DType> {
    match name {
        "f32" => Some(DType::F32),
        "f16" => Some(DType::F16),
        "bf16" => Some(DType::BF16),
        _ => None,
    }
}

const AGAIN: &str = "run `neuroal tune` again, or delete the file";

/// A tuned file's lines: `matmul DTYPE RULES`, `attention DTYPE RULES` and `fuse DTYPE RULES`,
/// one of each per dtype tuned, and one `select serial|two-level COPIES`; `#` begins a comment.
fn parse_file(text: &str, path: &Path) -> Result<Tuned> {
    let mut tuned = Tuned { path: Some(path.to_path_buf()), ..Tuned::default() };
    for (i, line) in text.lines().enumerate().map(|(i, l)| (i + 1, l.trim())) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let source = format!("{}, line {i}", path.display());
        let words: Vec<&str> = line.split_whitespace().collect();
        if let ["select", walk, copies] = words[..] {
            let Some(walk) = Walk::named(walk) else {
                bail!("{source}: no digit walk is named {walk} (serial or two-level) ({AGAIN})");
            };
            let Some(copies) = Select::copies_named(copies) else {
                bail!("{source}: {copies} histogram copies: expected 1, 2, 4 or 8 ({AGAIN})");
            };
            if tuned.select.replace(Select { walk, copies }).is_some() {
                bail!("{source}: a second select line ({AGAIN})");
            }
            continue;
        }
        let words: Vec<&str> = line.splitn(3, char::is_whitespace).collect();
        let (kind, dtype, rules) = match words[..] {
            [kind @ ("matmul" | "attention" | "fuse"), dtype, rules] if dtype_named(dtype).is_some() => (kind, dtype_named(dtype).unwrap_or(DType::F32), rules.trim()),
            _ => bail!("{source}: expected `matmul|attention|fuse f32|f16|bf16 RULES` or `select serial|two-level COPIES`, found {line:?} ({AGAIN})"),
        };
        let again = |e: crate::error::Error| err!("{e} ({AGAIN})");
        let twice = || err!("{source}: a second {kind} {} line ({AGAIN})", device::dtype_name(dtype));
        match kind {
            "matmul" => add_line(&mut tuned.matmul, dtype, twice, || Rules::parse(rules, &source).map_err(again))?,
            "fuse" => add_line(&mut tuned.fuse, dtype, twice, || crate::fused::Rules::parse(rules, &source).map_err(again))?,
            _ => add_line(&mut tuned.attention, dtype, twice, || AttentionRules::parse(rules, &source).map_err(again))?,
        }
    }
    Ok(tuned)
}

/// Adds a tuned file's line for `dtype` to its kind's `lines`: `twice`'s error where that dtype
/// has one already, else what `parse` makes of it.
fn add_line<T>(lines: &mut Vec<(DType, T)>, dtype: DType, twice: impl FnOnce() -> crate::error::Error, parse: impl FnOnce() -> Result<T>) -> Result<()> {
    if lines.iter().any(|(d, _)| *d == dtype) {
        return Err(twice());
    }
    lines.push((dtype, parse()?));
    Ok(())
}

/// What `neuroal tune` kept for the adapter `key`: nothing where it was not tuned (or while
/// `tune` itself runs); a one-line error where the file cannot be read or understood.
pub fn read_tuned(key: &str) -> Result<Tuned> {
    if tuning() {
        return Ok(Tuned::default());
    }
    let Some(path) = tuned_path(key) else { return Ok(Tuned::default()) };
    match std::fs::read_to_string(&path) {
        Ok(text) => parse_file(&text, &path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Tuned::default()),
        Err(e) => bail!("{}: cannot read the tuned kernels: {}", path.display(), crate::error::io_words(&e)),
    }
}

/// Set by `neuroal tune` before it opens the GPU: it measures against the defaults, not what it
/// kept before.
static TUNING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether this process is `neuroal tune`.
pub fn tuning() -> bool {
    TUNING.load(std::sync::atomic::Ordering::Relaxed)
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
        match counted(r.ms, r.rel_err, max_err) {
            Some(ms) => {
                e.0 += ms;
                e.1 += 1;
            }
            None => e.2 = true,
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

/// A timing's milliseconds where the kernel ran and its error is within `max_err`; `None`
/// where it is no candidate.
fn counted(ms: Option<f64>, rel_err: Option<f64>, max_err: f64) -> Option<f64> {
    ms.filter(|_| rel_err.is_some_and(|e| e <= max_err))
}

/// The fastest of one shape's timings (ms, error, kernel) that count; on a tie the earlier name.
fn quickest<'a>(timings: impl Iterator<Item = (Option<f64>, Option<f64>, &'a str)>, max_err: f64) -> Option<(f64, &'a str)> {
    best(timings.filter_map(|(ms, err, kernel)| Some((counted(ms, err, max_err)?, kernel))).collect())
}

/// The least time of `candidates`; on a tie the earlier name.
fn best(candidates: Vec<(f64, &str)>) -> Option<(f64, &str)> {
    candidates.into_iter().min_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(b.1)))
}

/// What `neuroal tune` times for a model: its config; its linears', LM head's and stacked
/// groups' weight shapes [K, N] (the products); its groups of linears that read one input; and
/// its prunable linears' weights [rows, cols] (the row pruning).
struct Shapes {
    config: crate::config::Config,
    products: Vec<[usize; 2]>,
    groups: Vec<crate::fused::Group>,
    pruned: Vec<[usize; 2]>,
}

/// The [`Shapes`] of the model or published shape asked for.
fn weight_shapes(args: &TuneArgs) -> Result<Shapes> {
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
    // The blocks' linears and the LM head (evaluations and zero-shot runs multiply by it).
    let head = crate::model::head_shape(&config);
    let spec = crate::model::Spec::of(&config);
    let groups = spec.fused_groups();
    let stacked = groups.iter().map(|g| [g.n(), g.k]);
    let mut products: Vec<[usize; 2]> = spec.shapes().into_iter().chain(head).chain(stacked).map(|[out, inp]| [inp, out]).collect();
    products.sort();
    products.dedup();
    let mut pruned = spec.shapes();
    pruned.sort();
    pruned.dedup();
    Ok(Shapes { config, products, groups, pruned })
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
    let Shapes { config, products: shapes, groups, pruned } = weight_shapes(args)?;
    if args.seqlen == 0 {
        bail!("--seqlen must be at least 1");
    }
    let tokens: Vec<usize> = crate::bench::parse_sizes::<1>(&args.tokens, "--tokens", "a list of token counts, e.g. 2048,4096")?.into_iter().map(|[m]| m).collect();
    TUNING.store(true, std::sync::atomic::Ordering::Relaxed);
    let selected = device::select(device::Choice::Gpu).map_err(|e| err!("tune times the GPU's kernels: {e}"))?;
    let dtype = selected.compute_dtype(args.dtype)?;
    let dtype_name = device::dtype_name(dtype);
    let key = selected.adapter_key.clone().ok_or_else(|| err!("tune: the GPU's adapter has no key"))?;
    let Some(path) = tuned_path(&key) else {
        bail!("tune: no cache folder to keep the result in (set XDG_CACHE_HOME or HOME)");
    };
    // Shape by shape, each over every token count: a shape's rule is known once its last
    // product is timed.
    let products: Vec<[usize; 3]> = shapes.iter().flat_map(|&[k, n]| tokens.iter().map(move |&m| [m, k, n])).collect();
    // The attention of the first token count's windows of --seqlen tokens, every query head.
    let t = args.seqlen.min(config.max_positions);
    let attention = [(tokens[0] / t).max(1), config.num_heads, t, config.head_dim];
    eprintln!(
        "{} ({dtype_name}): timing {} matrix-product kernels and burn's on {} products, {} attention kernels on {}×{}×{}×{}, and {} variants of the row selection on {} weight shapes",
        selected.description,
        crate::gpu_matmul::names().len(),
        products.len(),
        crate::gpu_attention::NAMES.len(),
        attention[0],
        attention[1],
        attention[2],
        attention[3],
        Select::all().len(),
        pruned.len()
    );
    // What an earlier tune kept: other dtypes' lines stay, this dtype's are updated (other
    // models' shapes kept).
    let mut kept = match std::fs::read_to_string(&path) {
        Ok(text) => parse_file(&text, &path).unwrap_or_else(|e| {
            eprintln!("replacing an unreadable tuned file ({e})");
            Tuned::default()
        }),
        Err(_) => Tuned::default(),
    };
    // This dtype's rules so far; the new ones are written over them shape by shape, so a run
    // stopped part-way keeps what it timed.
    let old = kept.matmul.iter().position(|(d, _)| *d == dtype).map(|i| kept.matmul.remove(i).1).unwrap_or_default();
    let save = |kept: &Tuned, rules: Rules| -> Result<Rules> {
        let rules = old.clone().updated_by(rules);
        let mut now = kept.clone();
        now.matmul.push((dtype, rules.clone()));
        write_tuned(&path, &selected.description, &now)?;
        Ok(rules)
    };
    let mut rows: Vec<MatmulTiming> = Vec::new();
    let mut rules = old.clone();
    for (i, &product) in products.iter().enumerate() {
        let mut timed = Vec::new();
        crate::gpu_matmul::time_kernels(&selected.device, &[product], dtype, args.iters, false, &mut |r| {
            timed.push(r);
            Ok(())
        })?;
        // Its winner is said as it is timed (a long sweep shows where it is).
        if let Some((ms, kernel)) = quickest(timed.iter().map(|t| (t.ms, t.rel_err, t.kernel.as_str())), max_err(dtype)) {
            let [m, k, n] = product;
            let burn = timed.iter().find(|t| t.kernel == "burn").and_then(|t| t.ms).map_or("-".into(), |b| format!("{b:.3} ms"));
            eprintln!("{m}×{k}×{n}: {kernel} {ms:.3} ms (burn's {burn})");
        }
        rows.extend(timed);
        // A shape's last product: its rule is kept (after the last shape, all of them).
        if (i + 1).is_multiple_of(tokens.len()) {
            rules = save(&kept, fastest(&rows, max_err(dtype)).0)?;
        }
    }
    let (_, found) = fastest(&rows, max_err(dtype));
    if found.len() != shapes.len() {
        bail!("tune: no kernel, burn's included, ran every product of some weight shape on this GPU");
    }
    kept.matmul.push((dtype, rules.clone()));
    // Each group fused where its stacked product beats its members' together.
    let ms_of = |shape: [usize; 2]| found.iter().find(|f| f.shape == shape).map(|f| f.ms);
    let verdicts: Vec<(crate::fused::Group, crate::fused::Verdict)> = groups.iter().filter_map(|g| Some((g.clone(), crate::fused::verdict(g, &ms_of)?))).collect();
    let old = kept.fuse.iter().position(|(d, _)| *d == dtype).map(|i| kept.fuse.remove(i).1).unwrap_or_default();
    let fuse = old.updated_by(crate::fused::Rules(verdicts.iter().map(|(g, v)| (g.clone(), v.fused)).collect()));
    if !fuse.0.is_empty() {
        kept.fuse.push((dtype, fuse.clone()));
    }
    let mut timed = Vec::new();
    crate::gpu_attention::time_kernels(&selected.device, &[attention], dtype, args.iters, &mut |r| {
        timed.push(r);
        Ok(())
    })?;
    let Some((attention_ms, attention_kernel)) = quickest(timed.iter().map(|t| (t.ms, t.rel_err, t.kernel.as_str())), max_err(dtype)) else {
        bail!("tune: no attention kernel, the separate ones included, ran on this GPU");
    };
    let ops_ms = timed.iter().find(|r| r.kernel == "ops").and_then(|r| r.ms);
    let old = kept.attention.iter().position(|(d, _)| *d == dtype).map(|i| kept.attention.remove(i).1).unwrap_or_default();
    let heads = old.updated_by(AttentionRules(vec![(config.head_dim, attention_kernel.to_string())]));
    kept.attention.push((dtype, heads.clone()));
    let selects = time_selects(&selected.device, &pruned, dtype, args.iters)?;
    // The fastest whose weights were the default's; an equal time keeps the earlier (the
    // default first).
    let fastest_select = selects.iter().filter_map(|&(v, ms)| Some((ms?, v))).min_by(|a, b| a.0.total_cmp(&b.0));
    if let Some((_, select)) = fastest_select {
        kept.select = Some(select);
    }
    write_tuned(&path, &selected.description, &kept)?;
    outln!("{:<14} {:<66} {:>10} {:>10}", "K×N", "fastest kernel", "ms", "burn's ms")?;
    for f in &found {
        let burn = f.burn_ms.map_or("-".to_string(), |b| format!("{b:.3}"));
        outln!("{:<14} {:<66} {:>10.3} {burn:>10}", format!("{}×{}", f.shape[0], f.shape[1]), f.kernel, f.ms)?;
    }
    let ops = ops_ms.map_or("-".to_string(), |b| format!("{b:.3}"));
    outln!("{:<14} {:<66} {attention_ms:>10.3} {ops:>10}", format!("heads of {}", config.head_dim), attention_kernel)?;
    for (g, v) in &verdicts {
        let said = if v.fused { "fused (ms: stacked, apart)" } else { "apart (ms: stacked, apart)" };
        outln!("{:<14} {said:<66} {:>10.3} {:>10.3}", g.to_string(), v.stacked_ms, v.apart_ms)?;
    }
    let default_ms = selects.iter().find(|(v, _)| *v == Select::DEFAULT).and_then(|(_, ms)| *ms).map_or("-".to_string(), |ms| format!("{ms:.3}"));
    match fastest_select {
        Some((ms, select)) => outln!("{:<14} {:<66} {ms:>10.3} {default_ms:>10}", "row pruning", format!("{select} (ms: it, the default)"))?,
        None => outln!("{:<14} {:<66}", "row pruning", "not tuned: a variant declined or differed")?,
    }
    let fused_said = if fuse.0.is_empty() { String::new() } else { format!(", fusion {fuse}") };
    let select_said = kept.select.map_or(String::new(), |v| format!(", the row selection's {v}"));
    outln!(
        "wrote {}: {dtype_name} products on this GPU now use {rules}, attentions {heads}{fused_said}{select_said} (NEUROAL_MATMUL, NEUROAL_ATTENTION, NEUROAL_FUSE, NEUROAL_SELECT_WALK and NEUROAL_SELECT_COPIES override it; delete the file to undo)",
        path.display()
    )?;
    Ok(())
}

/// Each selection's milliseconds pruning random weights of the `shapes` [rows, cols] at half of
/// each row as NeuroAL's candidates do (`prune_rows.wgsl`: Wanda's scores, no mask, in both tie
/// orders), summed; `None` for one that declined a shape or whose weights were not the
/// default's. The default is switched on again when it returns.
fn time_selects(device: &burn::tensor::Device, shapes: &[[usize; 2]], dtype: DType, iters: usize) -> Result<Vec<(Select, Option<f64>)>> {
    let mut total: Vec<(Select, Option<f64>)> = Select::all().into_iter().map(|v| (v, Some(0.0))).collect();
    for &shape in shapes {
        let case = crate::bench::RowPruningCase::random(device, shape, dtype);
        for ties in [crate::mask::Ties::EarlierFirst, crate::mask::Ties::LaterFirst] {
            let run = || case.prune(true, false, ties);
            crate::kernels::set_select(Select::DEFAULT);
            let reference = run().map_err(|e| err!("tune: {e}"))?;
            for (select, sum) in total.iter_mut() {
                crate::kernels::set_select(*select);
                *sum = match (*sum, crate::bench::time_kernel(device, iters, &reference, run)?) {
                    (Some(sum), Ok((ms, 0.0))) => Some(sum + ms),
                    _ => None,
                };
            }
        }
    }
    crate::kernels::set_select(Select::DEFAULT);
    Ok(total)
}

/// Writes the tuned file whole or not at all (`staging::write_whole`).
fn write_tuned(path: &Path, adapter: &str, tuned: &Tuned) -> Result<()> {
    let dir = path.parent().ok_or_else(|| err!("{}: no parent folder", path.display()))?;
    std::fs::create_dir_all(dir).context(|| format!("cannot create {}", dir.display()))?;
    let mut text = format!(
        "# neuroal tune: on {adapter}, per compute dtype, the fastest matrix-product kernel per weight shape\n# KxN (input x output size), attention kernel per head size, and whether the linears that read\n# one input (KxN1+N2+...) multiply as one product; and the row selection's fastest digit walk\n# and first-digit histogram copies. NEUROAL_MATMUL, NEUROAL_ATTENTION, NEUROAL_FUSE,\n# NEUROAL_SELECT_WALK and NEUROAL_SELECT_COPIES override it; delete this file to undo.\n"
    );
    let mut lines: Vec<String> = tuned.matmul.iter().map(|(d, r)| format!("matmul {} {r}", device::dtype_name(*d))).collect();
    lines.extend(tuned.attention.iter().map(|(d, r)| format!("attention {} {r}", device::dtype_name(*d))));
    lines.extend(tuned.fuse.iter().map(|(d, r)| format!("fuse {} {r}", device::dtype_name(*d))));
    lines.extend(tuned.select.map(|v| format!("select {} {}", v.walk.name(), v.copies)));
    lines.sort();
    for line in lines {
        text.push_str(&line);
        text.push('\n');
    }
    crate::staging::write_whole(path, text.as_bytes())
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
        let path = Path::new("/x/kernels-gpu.txt");
        let text = "# comment\nmatmul f16 4096x4096=a,4096x11008=burn,b\n\nmatmul f32 burn\nattention f16 64=flash-2,128=ops\nfuse f16 4096x4096+4096+4096=off,4096x11008+11008=on\nselect  two-level 8 \n";
        let t = parse_file(text, path).unwrap();
        assert_eq!(t.matmul.len(), 2);
        assert_eq!(t.matmul[0].0, DType::F16);
        assert_eq!(t.matmul[0].1.to_string(), "4096x4096=a,4096x11008=burn,b");
        assert_eq!(t.matmul[1], (DType::F32, Rules::default()));
        assert_eq!(t.attention, vec![(DType::F16, AttentionRules(vec![(64, "flash-2".into()), (128, "ops".into())]))]);
        assert_eq!(t.fuse.len(), 1);
        assert_eq!(t.fuse[0].1.to_string(), "4096x4096+4096+4096=off,4096x11008+11008=on");
        assert_eq!(t.select, Some(Select { walk: Walk::TwoLevel, copies: 8 }));
        assert_eq!(parse_file("select serial 1", path).unwrap().select, Some(Select::DEFAULT));
        assert_eq!(parse_file("matmul f32 burn", path).unwrap().select, None);
        let dir = std::env::temp_dir().join(format!("neuroal-tuned-unit-{}", std::process::id()));
        let file = dir.join("kernels-gpu.txt");
        write_tuned(&file, "a GPU", &t).unwrap();
        let back = parse_file(&std::fs::read_to_string(&file).unwrap(), &file).unwrap();
        assert_eq!((back.matmul.len(), back.attention, back.fuse, back.select), (2, t.attention.clone(), t.fuse.clone(), t.select));
        let _ = std::fs::remove_dir_all(&dir);
        for (bad, says) in [
            ("f16 a", "expected `matmul|attention|fuse f32|f16|bf16 RULES`"),
            ("matmul f64 a", "expected `matmul|attention|fuse f32|f16|bf16 RULES`"),
            ("fuse f16 64x64+16=on\nfuse f16 64x64+16=off", "a second fuse f16 line"),
            ("fuse f16 64x64=on", "a group is KxN1+N2"),
            ("matmul f16 a\nmatmul f16 b", "a second matmul f16 line"),
            ("matmul f16 0x64=a", "a rule is KxN=KERNEL"),
            ("matmul f16 a,b", "names two kernels"),
            ("attention f16 64", "an attention rule is HEAD_SIZE=KERNEL"),
            ("attention f16 0=ops", "an attention rule is HEAD_SIZE=KERNEL"),
            ("attention f16 64=flash-3", "no attention kernel is named flash-3"),
            ("select serial", "or `select serial|two-level COPIES`"),
            ("select f16 serial 1", "or `select serial|two-level COPIES`"),
            ("select radix 1", "no digit walk is named radix"),
            ("select serial 16", "16 histogram copies: expected 1, 2, 4 or 8"),
            ("select serial 1\nselect two-level 2", "a second select line"),
        ] {
            let msg = parse_file(bad, path).unwrap_err().to_string();
            assert!(msg.starts_with("/x/kernels-gpu.txt, line") && msg.contains(says) && msg.contains(AGAIN) && !msg.contains('\n'), "{bad}: {msg}");
        }
    }

    #[test]
    fn newer_rules_replace_a_shape_and_keep_the_others() {
        let old = Rules::parse("64x64=a,64x172=b,c", "t").unwrap();
        let new = Rules::parse("64x172=d,128x64=e,burn", "t").unwrap();
        assert_eq!(old.updated_by(new).to_string(), "64x64=a,64x172=d,128x64=e,burn");
        let old = AttentionRules::parse("64=ops,128=flash-2", "t").unwrap();
        assert_eq!(old.updated_by(AttentionRules(vec![(64, "flash-4".into())])).to_string(), "64=flash-4,128=flash-2");
    }

    #[test]
    fn adapter_keys_are_file_names() {
        assert_eq!(adapter_key("NVIDIA H100 80GB HBM3", "Vulkan", "wgpu<spirv>"), "NVIDIA-H100-80GB-HBM3-Vulkan-wgpu-spirv");
        assert_eq!(adapter_key("llvmpipe (LLVM 15.0.7, 256 bits)", "Gl", "wgpu<wgsl>"), "llvmpipe-LLVM-15.0.7-256-bits-Gl-wgpu-wgsl");
    }
}
