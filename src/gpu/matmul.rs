//! The linears' matrix products on a GPU with one fixed kernel, named by `NEUROAL_MATMUL` the way
//! cubecl's autotune names its candidates (`scripts/autotune_summary.py` prints them per shape).
//! Unset, the kernels `neuroal tune` kept for this adapter run its tuned dtypes' products
//! (`src/commands/tune.rs`), and the kernel measured fastest runs where it was measured (half-precision
//! products under the SPIR-V compiler, on adapters with f16 cooperative matrices); elsewhere burn
//! chooses: cubek's default kernel, or autotune's pick in an autotune build.
//! `NEUROAL_MATMUL=burn` always lets burn choose. A fixed kernel keeps a tuned choice without
//! paying for tuning in every run.

use std::sync::Mutex;

use burn::backend::cubecl::dtype_to_storage_type;
use burn::tensor::{DType, Shape, Tensor};
use cubek::matmul::definition::{MatmulElems, MatmulGlobalElems};
use cubek::matmul::multi_level::Strategy as Kernel;
use cubek::matmul::multi_level::components::tile::TileMatmulKind;
use cubek::matmul::multi_level::routines::TileSizeSelection;
use cubek::matmul::multi_level::routines::batch::double_buffering::DoubleBufferingArgs;
use cubek::matmul::multi_level::routines::batch::double_unit::DoubleUnitSelectionArgs;
use cubek::matmul::multi_level::routines::batch::ordered_double_buffering::OrderedSelectionArgs;
use cubek::matmul::multi_level::routines::batch::simple::SimpleArgs;
use cubek::matmul::multi_level::routines::batch::simple_unit::SimpleUnitSelectionArgs;
use cubek::matmul::routine::BlueprintStrategy;
use cubek::matmul::strategy::Strategy;
use cubek::std::InputBinding;

use crate::io::error::Result;
use crate::{bail, gpu::kernels};

/// The environment variable that names the kernel.
pub const VAR: &str = "NEUROAL_MATMUL";

/// The kernels a fixed choice can name: autotune's tensor-core candidates (cooperative or
/// plain matrix-multiply-accumulate tiles) and its per-thread ones; then the ordered
/// double-buffered cooperative kernel over a grid of its three tiling knobs (k tiles per
/// partition, planes' row count, rows per plane), which autotune does not try but which
/// `bench --matmul` can time on a card. cubek checks each blueprint's workgroup memory before
/// launch, so a setting too large for the adapter declines instead of failing.
fn kernels() -> Vec<Kernel> {
    let simple = |multi_rows, tile_matmul| BlueprintStrategy::Inferred(SimpleArgs { multi_rows, tile_matmul });
    let double =
        |specialized, tile_matmul| BlueprintStrategy::Inferred(DoubleBufferingArgs { specialized, tile_matmul });
    let ordered = |row_count, tile_matmul| {
        BlueprintStrategy::Inferred(OrderedSelectionArgs {
            partition_k: Some(2),
            row_count: Some(row_count),
            rows_per_plane: Some(2),
            tile_matmul,
        })
    };
    let (cmma, mma) = (TileMatmulKind::Cmma, TileMatmulKind::Mma);
    let (max, min) = (TileSizeSelection::MaxTileSize, TileSizeSelection::MinTileSize);
    let knobs = |partition_k, row_count, rows_per_plane| {
        BlueprintStrategy::Inferred(OrderedSelectionArgs {
            partition_k: Some(partition_k),
            row_count: Some(row_count),
            rows_per_plane: Some(rows_per_plane),
            tile_matmul: cmma,
        })
    };
    let grid = [1, 2, 4].into_iter().flat_map(|k| {
        [4, 8, 16].into_iter().flat_map(move |rows| [1, 2, 4].into_iter().map(move |per_plane| (k, rows, per_plane)))
    });
    // autotune's two ordered candidates are in the list already.
    let grid = grid.filter(|&(k, rows, per_plane)| !(k == 2 && per_plane == 2 && (rows == 4 || rows == 8)));
    let mut list = vec![
        Kernel::SimpleCyclicCmma(simple(false, cmma)),
        Kernel::SimpleCyclicCmma(simple(true, cmma)),
        Kernel::DoubleCyclicCmma(double(false, cmma)),
        Kernel::DoubleCyclicCmma(double(true, cmma)),
        Kernel::OrderedDoubleCmma(ordered(4, cmma)),
        Kernel::OrderedDoubleCmma(ordered(8, cmma)),
        Kernel::SpecializedCyclicCmma(BlueprintStrategy::Inferred(().into())),
        Kernel::SimpleCyclicMma(simple(false, mma)),
        Kernel::SimpleCyclicMma(simple(true, mma)),
        Kernel::DoubleCyclicMma(double(false, mma)),
        Kernel::DoubleCyclicMma(double(true, mma)),
        Kernel::OrderedDoubleMma(ordered(4, mma)),
        Kernel::OrderedDoubleMma(ordered(8, mma)),
        Kernel::SpecializedCyclicMma(BlueprintStrategy::Inferred(().into())),
        Kernel::SimpleUnit(BlueprintStrategy::Inferred(SimpleUnitSelectionArgs { tile_size: max })),
        Kernel::DoubleUnit(BlueprintStrategy::Inferred(DoubleUnitSelectionArgs { tile_size: max })),
        Kernel::SimpleUnit(BlueprintStrategy::Inferred(SimpleUnitSelectionArgs { tile_size: min })),
        Kernel::DoubleUnit(BlueprintStrategy::Inferred(DoubleUnitSelectionArgs { tile_size: min })),
    ];
    list.extend(grid.map(|(k, rows, per_plane)| Kernel::OrderedDoubleCmma(knobs(k, rows, per_plane))));
    list
}

/// Every name `NEUROAL_MATMUL` accepts.
pub fn names() -> Vec<String> {
    kernels().iter().map(|k| k.to_string()).collect()
}

/// The kernel used when `NEUROAL_MATMUL` is unset: on an H100 (Vulkan, f16) it beat burn's
/// default, `matmul_simple_cyclic_cmma`, by 1.15–1.32× on every large product of the 7B- and
/// 0.84 B-shaped models (docs/performance.md).
const DEFAULT: &str = "matmul_simple_cyclic_cmma_multi_rows";

/// Rules as written: a kernel name (`burn`: burn's own choice) per weight shape [K, N], and
/// at most one for the other products (none: burn chooses them). `NEUROAL_MATMUL` and the
/// files `neuroal tune` writes hold them as `KxN=NAME,…,NAME`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Rules {
    pub by_shape: Vec<([usize; 2], String)>,
    pub others: Option<String>,
}

impl Rules {
    /// Parses rules; `source` begins each error line (the variable, or the tuned file).
    pub fn parse(value: &str, source: &str) -> Result<Rules> {
        let mut rules = Rules::default();
        let mut others_named = false;
        for rule in value.split(',').map(str::trim) {
            match rule.split_once('=') {
                Some((shape, name)) => {
                    // The rule's one shape, its sizes positive (the list parser's error is
                    // replaced by the rules' own).
                    let Some(&[k, n]) =
                        crate::gpu::timing::parse_sizes::<2>(shape, source, "").ok().as_deref().and_then(|s| s.first())
                    else {
                        bail!(
                            "{source}: {rule:?}: a rule is KxN=KERNEL, K and N the weight's positive input and output sizes (e.g. 4096x11008=matmul_simple_cyclic_cmma)"
                        );
                    };
                    rules.by_shape.push(([k, n], name.trim().to_string()));
                }
                None if others_named => bail!("{source}: {value:?} names two kernels for the other products"),
                None => {
                    others_named = true;
                    rules.others = (rule != "burn").then(|| rule.to_string());
                }
            }
        }
        Ok(rules)
    }

    /// `newer`'s rules, and this one's for the shapes `newer` does not name; `newer`'s kernel
    /// for the other products.
    pub fn updated_by(self, newer: Rules) -> Rules {
        Rules { by_shape: crate::gpu::rules::merged(self.by_shape, newer.by_shape), others: newer.others }
    }
}

impl std::fmt::Display for Rules {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts: Vec<String> = self.by_shape.iter().map(|([k, n], name)| format!("{k}x{n}={name}")).collect();
        parts.push(self.others.clone().unwrap_or_else(|| "burn".into()));
        f.write_str(&parts.join(","))
    }
}

/// Kernels for the products with a weight of [K, N] (`None`: burn's choice).
type ByShape = Vec<([usize; 2], Option<Kernel>)>;

/// One source of kernels and the products it covers: `NEUROAL_MATMUL` (every product), a
/// tuned file's line (its dtype's products), or the default (half-precision products).
struct Choice {
    /// For the device line.
    label: String,
    /// Kernels for the products with a weight of [K, N], then the kernel for the other products.
    by_shape: ByShape,
    others: Option<Kernel>,
    /// The compute dtypes whose products it takes; `None`: all.
    dtypes: Option<Vec<DType>>,
    /// Named by `NEUROAL_MATMUL`: a kernel that declines a shape says so.
    explicit: bool,
}

impl Choice {
    /// The rules' kernels; `source` names them in errors.
    fn from_rules(rules: &Rules, source: &str) -> Result<(ByShape, Option<Kernel>)> {
        let by_shape = rules
            .by_shape
            .iter()
            .map(|(shape, name)| Ok((*shape, kernel_named(name, source)?)))
            .collect::<Result<_>>()?;
        let others = match &rules.others {
            Some(name) => kernel_named(name, source)?,
            None => None,
        };
        Ok((by_shape, others))
    }

    /// The kernel for a product with a weight of [k, n]; `None`: burn chooses.
    fn kernel(&self, k: usize, n: usize) -> Option<&Kernel> {
        match self.by_shape.iter().find(|(shape, _)| *shape == [k, n]) {
            Some((_, kernel)) => kernel.as_ref(),
            None => self.others.as_ref(),
        }
    }

    fn covers(&self, dtype: DType) -> bool {
        self.dtypes.as_ref().is_none_or(|d| d.contains(&dtype))
    }
}

/// What [`choose`] settled on for one GPU: its sources of kernels, the first covering a
/// product's dtype deciding (none: burn chooses), and the shapes ([m, k, n], dtype) a kernel
/// declined, which burn's kernel then runs without asking again.
pub struct Chosen {
    choices: Vec<Choice>,
    declined: Mutex<Vec<([usize; 3], DType)>>,
}

/// A kernel by name, `burn` being burn's own choice (`None`); a one-line error listing the
/// names for any other.
fn kernel_named(name: &str, source: &str) -> Result<Option<Kernel>> {
    if name == "burn" {
        return Ok(None);
    }
    match kernels().into_iter().find(|k| k.to_string() == name) {
        Some(kernel) => Ok(Some(kernel)),
        None if source == VAR => {
            bail!("{VAR}={name}: no such matrix-product kernel; one of: burn, {}", names().join(", "))
        }
        None => bail!(
            "{source}: no matrix-product kernel is named {name} in this version (run `neuroal tune` again, or delete the file)"
        ),
    }
}

/// `NEUROAL_MATMUL`'s value: one kernel name for every product, or comma-separated rules
/// `KxN=NAME` for the products with a weight of [K, N] (the sizes of `bench --matmul`'s K and
/// N), with at most one bare NAME for the others (else burn chooses them). What a per-product
/// sweep of `bench --matmul` finds can so be run as it is.
fn parse_choice(value: &str) -> Result<Choice> {
    let (by_shape, others) = Choice::from_rules(&Rules::parse(value, VAR)?, VAR)?;
    Ok(Choice { label: value.to_string(), by_shape, others, dtypes: None, explicit: true })
}

/// Reads `NEUROAL_MATMUL` when a GPU is opened: the kernels it names, or a one-line error.
/// Unset or empty: the kernels `neuroal tune` found fastest on this adapter (`tuned`, per dtype,
/// read from `file`) for the dtypes it tuned, and this adapter's default for the other
/// half-precision products. Returns the choice, and for the device line what is fixed, with
/// what each part covers.
pub fn choose(
    device: &burn::tensor::Device,
    tuned: &[(DType, Rules)],
    file: Option<&std::path::Path>,
) -> Result<(Chosen, Option<String>)> {
    let value = std::env::var(VAR).unwrap_or_default();
    let value = value.trim();
    let mut found = Vec::new();
    match value {
        "burn" => {}
        "" => {
            let file = file.map(|p| p.display().to_string()).unwrap_or_default();
            for (dtype, rules) in tuned {
                let source = format!("{file} (matmul {})", crate::gpu::tensor::dtype_name(*dtype));
                let (by_shape, others) = Choice::from_rules(rules, &source)?;
                let label = format!("matmul tuned for {}: {rules}", crate::gpu::tensor::dtype_name(*dtype));
                found.push(Choice { label, by_shape, others, dtypes: Some(vec![*dtype]), explicit: false });
            }
            let half: Vec<DType> =
                [DType::F16, DType::BF16].into_iter().filter(|d| !tuned.iter().any(|(t, _)| t == d)).collect();
            let default = default_for(kernels::compiler(device), kernels::has_f16_cooperative_matrices(device));
            if let (Some(name), false) = (default, half.is_empty()) {
                let (_, others) = Choice::from_rules(&Rules { by_shape: Vec::new(), others: Some(name.into()) }, VAR)?;
                let covers = if half.len() == 2 {
                    "half-precision".to_string()
                } else {
                    crate::gpu::tensor::dtype_name(half[0]).to_string()
                };
                found.push(Choice {
                    label: format!("{name} for {covers} products"),
                    by_shape: Vec::new(),
                    others,
                    dtypes: Some(half),
                    explicit: false,
                });
            }
        }
        _ => found.push(parse_choice(value)?),
    }
    let labels: Vec<String> = found.iter().map(|c| c.label.clone()).collect();
    let said = (!labels.is_empty()).then(|| labels.join(", "));
    Ok((Chosen { choices: found, declined: Mutex::new(Vec::new()) }, said))
}

/// The kernel the linears' products use when `NEUROAL_MATMUL` is unset, given the compiler
/// burn's runtime reports and whether the adapter has f16 cooperative matrices: [`DEFAULT`]
/// where it was measured (SPIR-V with them), none elsewhere; none in an autotune build, which
/// tunes every product itself.
fn default_for(compiler: &str, f16_cooperative_matrices: bool) -> Option<&'static str> {
    (compiler.contains("spirv") && f16_cooperative_matrices && !cfg!(feature = "autotune")).then_some(DEFAULT)
}

impl Chosen {
    /// x [m, k] · wᵀ, wᵀ being the transposed view of a linear's weight [n, k].
    pub fn linear(&self, x: Tensor<2>, w_t: Tensor<2>) -> Tensor<2> {
        if !kernels::is_wgpu(&x) {
            return x.matmul(w_t);
        }
        let Some(choice) = self.choices.iter().find(|c| c.covers(x.dtype())) else { return x.matmul(w_t) };
        let [m, k] = x.dims();
        let n = w_t.dims()[1];
        let Some(kernel) = choice.kernel(k, n) else { return x.matmul(w_t) };
        let shape = ([m, k, n], x.dtype());
        if self.declined.lock().unwrap_or_else(|e| e.into_inner()).contains(&shape) {
            return x.matmul(w_t);
        }
        match launch(&x, &w_t, kernel) {
            Ok(y) => y,
            Err(why) => self.decline(choice, shape, &why, x.matmul(w_t)),
        }
    }

    /// A kernel may decline a shape (or this adapter); burn's choice then runs (`instead`),
    /// said once, at the first shape declined.
    fn decline(&self, choice: &Choice, shape: ([usize; 3], DType), why: &str, instead: Tensor<2>) -> Tensor<2> {
        {
            let mut declined = self.declined.lock().unwrap_or_else(|e| e.into_inner());
            if declined.is_empty() && choice.explicit {
                eprintln!("warning: {VAR}={}: {why}; burn's own kernel runs where it declines", choice.label);
            }
            declined.push(shape);
        }
        instead
    }
}

fn launch(x: &Tensor<2>, w_t: &Tensor<2>, kernel: &Kernel) -> std::result::Result<Tensor<2>, String> {
    let [m, _] = x.dims();
    let [_, n] = w_t.dims();
    let lhs = kernels::cube_strided(x.clone());
    let rhs = kernels::cube_strided(w_t.clone());
    let dtype = lhs.dtype;
    if rhs.dtype != dtype {
        return Err(format!("operands in {dtype:?} and {:?}", rhs.dtype));
    }
    let out = kernels::empty_as(&lhs, Shape::new([m, n]), dtype);
    let client = lhs.client.clone();
    let storage = dtype_to_storage_type(dtype);
    let mut elems = MatmulElems::from_globals(&MatmulGlobalElems { lhs: storage, rhs: storage, out: storage });
    let strategy = Strategy::MultiLevel(kernel.clone());
    cubek::matmul::launch::launch_ref(
        &strategy,
        &client,
        InputBinding::new(lhs.binding(), storage),
        InputBinding::new(rhs.binding(), storage),
        out.clone().binding(),
        &mut elems,
    )
    .map_err(|e| crate::io::error::one_line(&format!("{e:?}")))?;
    Ok(kernels::from_cube(out))
}

/// One kernel's time on one product in `bench --matmul`.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct MatmulTiming {
    /// [m, k, n]: x [m, k] times a [k, n] right-hand side.
    pub shape: [usize; 3],
    /// The right-hand side: `weight_t`, the transposed view of a weight [n, k], as the linears
    /// multiply; or `k_by_n`, a row-major [k, n] tensor (what a weight transposed once when
    /// loaded would be).
    pub layout: String,
    /// `burn` (burn's own choice), or a name `NEUROAL_MATMUL` accepts.
    pub kernel: String,
    pub ms: Option<f64>,
    pub tflops: Option<f64>,
    /// ‖y − y_burn‖ / ‖y_burn‖, in f32, against burn's own choice on the same operands.
    pub rel_err: Option<f64>,
    /// Why the kernel did not run this shape.
    pub declined: Option<String>,
}

/// Times every kernel a fixed choice can name, and burn's own choice, on each product in
/// `dtype` on the GPU `device`, with the weight as the linears hold it and as a row-major
/// [k, n] copy when `k_by_n` (`bench::time_kernel`: `iters` products after one warm-up each). The fastest
/// way to compare kernels on a card (a product of the 7B shape takes milliseconds, a prune tens
/// of seconds); `rel_err` says that a kernel computes the product. Each row goes to `row` as
/// soon as it is measured, so a run stopped early keeps what it did.
pub fn time_kernels(
    device: &burn::tensor::Device,
    shapes: &[[usize; 3]],
    dtype: DType,
    iters: usize,
    k_by_n: bool,
    row: &mut dyn FnMut(MatmulTiming) -> Result<()>,
) -> Result<()> {
    use burn::tensor::Distribution;
    for &[m, k, n] in shapes {
        let x = Tensor::<2>::random([m, k], Distribution::Uniform(-1.0, 1.0), device).cast(dtype);
        let scale = (3.0 / k as f64).sqrt();
        let w = Tensor::<2>::random([n, k], Distribution::Uniform(-1.0, 1.0), device).mul_scalar(scale).cast(dtype);
        let mut layouts = vec![("weight_t", w.transpose())];
        if k_by_n {
            layouts.push((
                "k_by_n",
                Tensor::<2>::random([k, n], Distribution::Uniform(-1.0, 1.0), device).mul_scalar(scale).cast(dtype),
            ));
        }
        let flops = 2.0 * (m * k * n) as f64;
        for (layout, rhs) in layouts {
            let reference = x.clone().matmul(rhs.clone());
            let candidates = std::iter::once(("burn".to_string(), None))
                .chain(kernels().into_iter().map(|k| (k.to_string(), Some(k))));
            for (name, kernel) in candidates {
                let run = || match &kernel {
                    None => Ok(x.clone().matmul(rhs.clone())),
                    Some(kernel) => launch(&x, &rhs, kernel),
                };
                let timing = |ms, tflops, rel_err, declined| MatmulTiming {
                    shape: [m, k, n],
                    layout: layout.into(),
                    kernel: name.clone(),
                    ms,
                    tflops,
                    rel_err,
                    declined,
                };
                row(match crate::gpu::timing::time_kernel(device, iters, &reference, run)? {
                    Ok((ms, rel_err)) => timing(Some(ms), Some(flops / ms / 1e9), Some(rel_err), None),
                    Err(why) => timing(None, None, None, Some(why)),
                })?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_kernel_is_a_real_one_and_only_where_it_was_measured() {
        assert!(names().iter().any(|n| n == DEFAULT), "{DEFAULT} is one of the names");
        let on_spirv = default_for("wgpu<spirv>", true);
        assert_eq!(on_spirv, (!cfg!(feature = "autotune")).then_some(DEFAULT));
        assert_eq!(default_for("wgpu<spirv>", false), None, "no cooperative matrices");
        assert_eq!(default_for("wgpu<wgsl>", true), None, "WGSL (DX12, OpenGL) was not measured");
        assert_eq!(default_for("wgpu<msl>", true), None, "Metal was not measured");
    }

    #[test]
    fn rules_pick_a_kernel_per_weight_shape() {
        let (a, b) = ("matmul_simple_cyclic_cmma", "matmul_double_unit_min_tile_size");
        let name = |k: Option<&Kernel>| k.map(|k| k.to_string());
        let c = parse_choice(&format!("4096x11008={a}, 11008×4096=burn, {b}")).unwrap();
        assert_eq!(name(c.kernel(4096, 11008)), Some(a.to_string()));
        assert_eq!(name(c.kernel(11008, 4096)), None, "burn's choice for down_proj");
        assert_eq!(name(c.kernel(4096, 4096)), Some(b.to_string()), "the others");
        // Without a bare name, burn takes the others; one name alone takes everything.
        assert_eq!(name(parse_choice(&format!("64x172={a}")).unwrap().kernel(64, 64)), None);
        assert_eq!(name(parse_choice(a).unwrap().kernel(7, 9)), Some(a.to_string()));
        for (bad, says) in [
            (format!("64={a}"), "a rule is KxN=KERNEL"),
            (format!("64x64x64={a}"), "a rule is KxN=KERNEL"),
            (format!("0x64={a}"), "a rule is KxN=KERNEL"),
            (format!("64xax64={a}"), "a rule is KxN=KERNEL"),
            (format!("{a},{b}"), "names two kernels for the other products"),
            ("64x64=nope".to_string(), "NEUROAL_MATMUL=nope: no such matrix-product kernel"),
        ] {
            let e = parse_choice(&bad).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(e.contains(says) && !e.contains('\n'), "{bad}: {e}");
        }
    }

    #[test]
    fn every_kernel_has_its_own_name() {
        let names = names();
        let unique: std::collections::BTreeSet<&String> = names.iter().collect();
        assert_eq!(unique.len(), names.len(), "{names:?}");
        // autotune's 18 candidates and the ordered grid's 27 settings, 2 of them autotune's.
        assert_eq!(names.len(), 18 + 25);
        assert!(
            names.iter().any(|n| n == "matmul_ordered_double_cmma_partition_k4_row_count16_rows_per_plane1"),
            "{names:?}"
        );
    }
}
