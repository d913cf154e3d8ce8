//! `neuroal tune`: times every matrix-product kernel on a model's linears and every attention
//! kernel on its attention on this GPU, and keeps the fastest (per weight shape, per head size)
//! in a file for the adapter, which later runs on it read (`gpu_matmul::choose`,
//! `gpu_attention::choose`). A card nobody measured for this project (a Mac's, an AMD or Intel
//! one) so gets the fastest kernel this build has for it, paid for once; and the choice stays
//! fixed, so every run after the tuning computes the same products and repeats its masks
//! (autotune chooses anew in every process).

use std::path::PathBuf;

use burn::tensor::DType;

use crate::gpu::attention::AttentionRules;
use crate::gpu::device::{self, ComputeDtype};
use crate::gpu::kernels::Select;
use crate::gpu::matmul::{MatmulTiming, Rules};
use crate::gpu::tuned::{Tuned, parse_file, tuned_path, write_tuned};
use crate::io::error::Result;
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
fn quickest<'a>(
    timings: impl Iterator<Item = (Option<f64>, Option<f64>, &'a str)>,
    max_err: f64,
) -> Option<(f64, &'a str)> {
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
    config: crate::model::config::Config,
    products: Vec<[usize; 2]>,
    groups: Vec<crate::gpu::fused::Group>,
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
            crate::model::config::Config::from_file(&path)?
        }
        (None, Some(name)) => {
            let shape = crate::commands::bench::shape(name)?;
            let mut raw: serde_json::Value =
                serde_json::from_str(shape.config).map_err(|e| err!("shape {name}: {e}"))?;
            raw["num_hidden_layers"] = 1.into();
            crate::model::config::Config::from_json(&raw.to_string())?
        }
        (None, None) => bail!("--model or --synthetic is required"),
    };
    // The blocks' linears and the LM head (evaluations and zero-shot runs multiply by it).
    let head = crate::model::head_shape(&config);
    let specs = crate::model::Specs::of(&config);
    let groups: Vec<_> = specs.kinds().flat_map(|s| s.fused_groups()).collect();
    let stacked = groups.iter().map(|g| [g.n(), g.k]);
    let shapes: Vec<[usize; 2]> = specs.kinds().flat_map(|s| s.shapes()).collect();
    let mut products: Vec<[usize; 2]> =
        shapes.iter().copied().chain(head).chain(stacked).map(|[out, inp]| [inp, out]).collect();
    products.sort();
    products.dedup();
    let mut pruned = shapes;
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
    let tokens: Vec<usize> =
        crate::gpu::timing::parse_sizes::<1>(&args.tokens, "--tokens", "a list of token counts, e.g. 2048,4096")?
            .into_iter()
            .map(|[m]| m)
            .collect();
    let selected = device::select_untuned_gpu().map_err(|e| err!("tune times the GPU's kernels: {e}"))?;
    let dtype = selected.compute_dtype(args.dtype)?;
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
        "{} ({}): timing {} matrix-product kernels and burn's on {} products, {} attention kernels on {}×{}×{}×{}, and {} variants of the row selection on {} weight shapes",
        selected.description,
        crate::gpu::tensor::dtype_name(dtype),
        crate::gpu::matmul::names().len(),
        products.len(),
        crate::gpu::attention::NAMES.len(),
        attention[0],
        attention[1],
        attention[2],
        attention[3],
        Select::all().len(),
        pruned.len()
    );
    let mut tuning = Tuning { selected: &selected, dtype, iters: args.iters, kept: kept_before(&path), path };
    let (rules, found) = tuning.products(&products, tokens.len(), shapes.len())?;
    let (fuse, verdicts) = tuning.fusion(&groups, &found);
    let (heads, attention_ms, ops_ms) = tuning.attention(attention)?;
    let selects = time_selects(&selected, &pruned, dtype, args.iters)?;
    // The fastest whose weights were the default's; an equal time keeps the earlier (the
    // default first).
    let fastest_select = selects.iter().filter_map(|&(v, ms)| Some((ms?, v))).min_by(|a, b| a.0.total_cmp(&b.0));
    if let Some((_, select)) = fastest_select {
        tuning.kept.select = Some(select);
    }
    write_tuned(&tuning.path, &selected.description, &tuning.kept)?;
    outln!("{:<14} {:<66} {:>10} {:>10}", "K×N", "fastest kernel", "ms", "burn's ms")?;
    for f in &found {
        let burn = f.burn_ms.map_or("-".to_string(), |b| format!("{b:.3}"));
        outln!("{:<14} {:<66} {:>10.3} {burn:>10}", format!("{}×{}", f.shape[0], f.shape[1]), f.kernel, f.ms)?;
    }
    let ops = ops_ms.map_or("-".to_string(), |b| format!("{b:.3}"));
    let attention_kernel = heads.0.iter().find(|(hd, _)| *hd == config.head_dim).map_or("", |(_, k)| k.as_str());
    outln!("{:<14} {:<66} {attention_ms:>10.3} {ops:>10}", format!("heads of {}", config.head_dim), attention_kernel)?;
    for (g, v) in &verdicts {
        let said = if v.fused { "fused (ms: stacked, apart)" } else { "apart (ms: stacked, apart)" };
        outln!("{:<14} {said:<66} {:>10.3} {:>10.3}", g.to_string(), v.stacked_ms, v.apart_ms)?;
    }
    print_selection(&selects, fastest_select)?;
    let fused_said = if fuse.0.is_empty() { String::new() } else { format!(", fusion {fuse}") };
    let select_said = tuning.kept.select.map_or(String::new(), |v| format!(", the row selection's {v}"));
    outln!(
        "wrote {}: {} products on this GPU now use {rules}, attentions {heads}{fused_said}{select_said} (NEUROAL_MATMUL, NEUROAL_ATTENTION, NEUROAL_FUSE, NEUROAL_SELECT_WALK and NEUROAL_SELECT_COPIES override it; delete the file to undo)",
        tuning.path.display(),
        crate::gpu::tensor::dtype_name(dtype)
    )?;
    Ok(())
}

/// What an earlier tune kept: other dtypes' lines stay, this dtype's are updated (other
/// models' shapes kept).
fn kept_before(path: &std::path::Path) -> Tuned {
    match std::fs::read_to_string(path) {
        Ok(text) => parse_file(&text, path).unwrap_or_else(|e| {
            eprintln!("replacing an unreadable tuned file ({e})");
            Tuned::default()
        }),
        Err(_) => Tuned::default(),
    }
}

/// One tune on one GPU in one dtype, and what it keeps so far.
struct Tuning<'a> {
    selected: &'a device::Selected,
    dtype: DType,
    iters: usize,
    path: PathBuf,
    kept: Tuned,
}

impl Tuning<'_> {
    /// Times every matrix-product kernel on each product (`per_shape` products per weight
    /// shape, `shapes` shapes), keeping the rules in the file after each shape, so a run stopped
    /// part-way keeps what it timed. Returns this dtype's rules and each shape's fastest.
    fn products(&mut self, products: &[[usize; 3]], per_shape: usize, shapes: usize) -> Result<(Rules, Vec<Fastest>)> {
        let dtype = self.dtype;
        // This dtype's rules so far; the new ones are written over them shape by shape.
        let old = self.kept.matmul.iter().position(|(d, _)| *d == dtype).map(|i| self.kept.matmul.remove(i).1);
        let old = old.unwrap_or_default();
        let mut rows: Vec<MatmulTiming> = Vec::new();
        let mut rules = old.clone();
        for (i, &product) in products.iter().enumerate() {
            let mut timed = Vec::new();
            crate::gpu::matmul::time_kernels(&self.selected.device, &[product], dtype, self.iters, false, &mut |r| {
                timed.push(r);
                Ok(())
            })?;
            say_fastest(product, &timed, max_err(dtype));
            rows.extend(timed);
            // A shape's last product: its rule is kept (after the last shape, all of them).
            if (i + 1).is_multiple_of(per_shape) {
                rules = old.clone().updated_by(fastest(&rows, max_err(dtype)).0);
                let mut now = self.kept.clone();
                now.matmul.push((dtype, rules.clone()));
                write_tuned(&self.path, &self.selected.description, &now)?;
            }
        }
        let (_, found) = fastest(&rows, max_err(dtype));
        if found.len() != shapes {
            bail!("tune: no kernel, burn's included, ran every product of some weight shape on this GPU");
        }
        self.kept.matmul.push((dtype, rules.clone()));
        Ok((rules, found))
    }

    /// Each group fused where its stacked product beats its members' together.
    fn fusion(
        &mut self,
        groups: &[crate::gpu::fused::Group],
        found: &[Fastest],
    ) -> (crate::gpu::fused::Rules, Vec<(crate::gpu::fused::Group, crate::gpu::fused::Verdict)>) {
        let dtype = self.dtype;
        let ms_of = |shape: [usize; 2]| found.iter().find(|f| f.shape == shape).map(|f| f.ms);
        let verdicts: Vec<(crate::gpu::fused::Group, crate::gpu::fused::Verdict)> =
            groups.iter().filter_map(|g| Some((g.clone(), crate::gpu::fused::verdict(g, &ms_of)?))).collect();
        let old = self.kept.fuse.iter().position(|(d, _)| *d == dtype).map(|i| self.kept.fuse.remove(i).1);
        let new = crate::gpu::fused::Rules(verdicts.iter().map(|(g, v)| (g.clone(), v.fused)).collect());
        let fuse = old.unwrap_or_default().updated_by(new);
        if !fuse.0.is_empty() {
            self.kept.fuse.push((dtype, fuse.clone()));
        }
        (fuse, verdicts)
    }

    /// The fastest attention kernel on `shape` (B×H×T×HD): this dtype's rules, its time and the
    /// separate kernels'.
    fn attention(&mut self, shape: [usize; 4]) -> Result<(AttentionRules, f64, Option<f64>)> {
        let dtype = self.dtype;
        let mut timed = Vec::new();
        let separate = &crate::model::attention_separate;
        crate::gpu::attention::time_kernels(&self.selected.device, &[shape], dtype, self.iters, separate, &mut |r| {
            timed.push(r);
            Ok(())
        })?;
        let Some((ms, kernel)) = quickest(timed.iter().map(|t| (t.ms, t.rel_err, t.kernel.as_str())), max_err(dtype))
        else {
            bail!("tune: no attention kernel, the separate ones included, ran on this GPU");
        };
        let ops_ms = timed.iter().find(|r| r.kernel == "ops").and_then(|r| r.ms);
        let old = self.kept.attention.iter().position(|(d, _)| *d == dtype).map(|i| self.kept.attention.remove(i).1);
        let heads = old.unwrap_or_default().updated_by(AttentionRules(vec![(shape[3], kernel.to_string())]));
        self.kept.attention.push((dtype, heads.clone()));
        Ok((heads, ms, ops_ms))
    }
}

/// A product's winner, said as it is timed (a long sweep shows where it is).
fn say_fastest(product: [usize; 3], timed: &[MatmulTiming], max_err: f64) {
    if let Some((ms, kernel)) = quickest(timed.iter().map(|t| (t.ms, t.rel_err, t.kernel.as_str())), max_err) {
        let [m, k, n] = product;
        let burn =
            timed.iter().find(|t| t.kernel == "burn").and_then(|t| t.ms).map_or("-".into(), |b| format!("{b:.3} ms"));
        eprintln!("{m}×{k}×{n}: {kernel} {ms:.3} ms (burn's {burn})");
    }
}

/// The row selection's line of the summary.
fn print_selection(selects: &[(Select, Option<f64>)], fastest: Option<(f64, Select)>) -> Result<()> {
    let default_ms = selects
        .iter()
        .find(|(v, _)| *v == Select::DEFAULT)
        .and_then(|(_, ms)| *ms)
        .map_or("-".to_string(), |ms| format!("{ms:.3}"));
    match fastest {
        Some((ms, select)) => outln!(
            "{:<14} {:<66} {ms:>10.3} {default_ms:>10}",
            "row pruning",
            format!("{select} (ms: it, the default)")
        ),
        None => outln!("{:<14} {:<66}", "row pruning", "not tuned: a variant declined or differed"),
    }
}

/// Each selection's milliseconds pruning random weights of the `shapes` [rows, cols] at half of
/// each row as NeuroAL's candidates do (`prune_rows.wgsl`: Wanda's scores, no mask, in both tie
/// orders), summed; `None` for one that declined a shape or whose weights were not the
/// default's. The default is switched on again when it returns.
fn time_selects(
    selected: &device::Selected,
    shapes: &[[usize; 2]],
    dtype: DType,
    iters: usize,
) -> Result<Vec<(Select, Option<f64>)>> {
    let device = &selected.device;
    let shaders = &selected.gpu.as_deref().ok_or_else(|| err!("tune: the device is no GPU"))?.shaders;
    let mut total: Vec<(Select, Option<f64>)> = Select::all().into_iter().map(|v| (v, Some(0.0))).collect();
    for &shape in shapes {
        let case = crate::commands::bench::RowPruningCase::random(device, shape, dtype);
        for ties in [crate::gpu::kernels::Ties::EarlierFirst, crate::gpu::kernels::Ties::LaterFirst] {
            let run = || case.prune(shaders, true, false, ties);
            shaders.set_select(Select::DEFAULT);
            let reference = run().map_err(|e| err!("tune: {e}"))?;
            for (select, sum) in total.iter_mut() {
                shaders.set_select(*select);
                *sum = match (*sum, crate::gpu::timing::time_kernel(device, iters, &reference, run)?) {
                    (Some(sum), Ok((ms, 0.0))) => Some(sum + ms),
                    _ => None,
                };
            }
        }
    }
    shaders.set_select(Select::DEFAULT);
    Ok(total)
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
        assert_eq!(
            found,
            vec![
                Fastest { shape: [64, 64], kernel: "b".into(), ms: 4.5, burn_ms: Some(8.0) },
                Fastest { shape: [64, 172], kernel: "burn".into(), ms: 2.0, burn_ms: Some(2.0) },
            ]
        );
        // Over every product only burn ran them all (a declined one, b never ran 64x172).
        assert_eq!(rules.to_string(), "64x64=b,64x172=burn,burn");
        // The k_by_n layout is not the linears' and does not count.
        let mut other = row(8, 64, 64, "c", Some(0.01), 0.0);
        other.layout = "k_by_n".into();
        let (_, found2) = fastest(&[rows.clone(), vec![other]].concat(), 1e-2);
        assert_eq!(found2[0].kernel, "b");
    }
}
