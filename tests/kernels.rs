//! Every WGSL shader against its CPU twin (burn ops on flex) on random data, and the CPU
//! backends' host paths against the same twins.

mod common;

use burn::tensor::{DType, Device, Tensor, TensorData};
use common::*;
use neuroal::gpu::device::Choice;
use neuroal::prune::mask::Ties;
use neuroal::rng::SplitMix64;
use neuroal::{prune::mask, prune::score};

fn random(rng: &mut SplitMix64, n: usize, levels: Option<u64>) -> Vec<f32> {
    (0..n)
        .map(|_| match levels {
            // Few distinct values: many ties.
            Some(l) => rng.below(l) as f32 * 0.25,
            None => rng.uniform(-2.0, 2.0),
        })
        .collect()
}

fn t2(v: Vec<f32>, shape: [usize; 2], d: &Device) -> Tensor<2> {
    Tensor::from_data(TensorData::new(v, shape), d)
}

fn host<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().unwrap()
}

#[test]
fn select_lowest_shader_and_host_path_equal_their_twin() {
    let gpu = select(Choice::Gpu);
    // Which compiler cubecl runs beside the shaders here (CI runs this file with both), and
    // how the selection runs (CI runs it with the default and with the other walk and 8
    // histogram copies).
    let kernels = gpu.gpu.clone().expect("a GPU's kernels");
    println!("{}; {}", gpu.description, kernels.shaders.select());
    let gpu = gpu.device;
    let cpu = Device::flex();
    let mut rng = SplitMix64::new(42);
    // Rows wider than a workgroup (256), odd widths, all-tie rows, k = 0 and k = cols, a k
    // that ends a run of ties (every value ≤ 0.25 pruned: the selection's pass without
    // ranking), where a random k mostly splits one (the pass that ranks them), and a k that
    // ends at the zeros, whose first radix digit (0x80) is the last bin of a group of 16 with
    // any keys in it (the two-level walk's boundary; the values above start at 0xBE); rows of
    // over 1,024 columns all ties, and of spread values.
    for (rows, cols, levels) in [
        (3, 1000, None),
        (5, 300, Some(4)),
        (4, 7, Some(2)),
        (2, 4099, Some(50)),
        (6, 256, Some(1)),
        (4, 1500, Some(1)),
        (4, 2100, None),
    ] {
        let s = random(&mut rng, rows * cols, levels);
        let k: Vec<usize> = (0..rows)
            .map(|r| match r {
                0 => 0,
                1 => cols,
                2 => s[r * cols..(r + 1) * cols].iter().filter(|&&v| v <= 0.25).count(),
                3 => s[r * cols..(r + 1) * cols].iter().filter(|&&v| v <= 0.0).count(),
                _ => rng.below(cols as u64 + 1) as usize,
            })
            .collect();
        for ties in [Ties::EarlierFirst, Ties::LaterFirst] {
            let at = format!("rows {rows} cols {cols}, {ties:?}");
            let a = host(mask::select_lowest(Some(&kernels), t2(s.clone(), [rows, cols], &gpu), &k, ties).unwrap());
            let b = host(mask::select_lowest_reference(t2(s.clone(), [rows, cols], &cpu), &k, ties));
            assert_eq!(a, b, "{at}");
            // The CPU backends' selection path equals the twin too.
            let c = host(mask::select_lowest_host(t2(s.clone(), [rows, cols], &cpu), &k, ties).unwrap());
            assert_eq!(c, b, "host path, {at}");
            // And both against the definition: exactly k per row, equal values by column, lower
            // first or higher first.
            for r in 0..rows {
                let row = &s[r * cols..(r + 1) * cols];
                let mut order: Vec<usize> = (0..cols).collect();
                order.sort_by(|&i, &j| {
                    let by_column = if ties == Ties::EarlierFirst { i.cmp(&j) } else { j.cmp(&i) };
                    row[i].partial_cmp(&row[j]).unwrap().then(by_column)
                });
                let mut want = vec![0f32; cols];
                for &i in &order[..k[r]] {
                    want[i] = 1.0;
                }
                assert_eq!(&b[r * cols..(r + 1) * cols], &want[..], "row {r} of {at}");
            }
        }
    }
}

#[test]
fn stats_score_and_mask_shaders_equal_their_twins() {
    let selected = select(Choice::Gpu);
    let gpu = selected.device.clone();
    let kernels = selected.gpu.clone().expect("a GPU's kernels");
    let shaders = &kernels.shaders;
    let cpu = Device::flex();
    let mut rng = SplitMix64::new(7);
    // Rows over several of the shader's 64-row slices, the last one short.
    let (n, cols, rows) = (200, 300, 9);
    let x = random(&mut rng, n * cols, None);
    let acc = random(&mut rng, cols, None).iter().map(|v| v.abs()).collect::<Vec<_>>();
    let run = |d: &Device, gpu_path: bool| {
        let xt = t2(x.clone(), [n, cols], d);
        let a = Tensor::<1>::from_data(TensorData::new(acc.clone(), [cols]), d);
        if gpu_path { shaders.input_stats(xt, a.clone(), a) } else { score::input_stats_reference(xt, a.clone(), a) }
    };
    let (gs, gm) = run(&gpu, true);
    let (cs, cm) = run(&cpu, false);
    let close = |a: &[f32], b: &[f32]| {
        !a.is_empty() && a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() <= 1e-5 * y.abs().max(1.0))
    };
    assert!(close(&host(gs.clone()), &host(cs.clone())), "sum of squares");
    assert!(close(&host(gm), &host(cm)), "sum");
    // f16 activations are read as stored and summed in f32: the twin sums the same values in f32.
    if selected.shader_f16 {
        let half = |d: &Device| neuroal::gpu::tensor::to_dtype(t2(x.clone(), [n, cols], d), DType::F16);
        let a = |d: &Device| Tensor::<1>::from_data(TensorData::new(acc.clone(), [cols]), d);
        let (hs, hm) = shaders.input_stats(half(&gpu), a(&gpu), a(&gpu));
        let (rs, rm) =
            score::input_stats_reference(neuroal::gpu::tensor::to_dtype(half(&cpu), DType::F32), a(&cpu), a(&cpu));
        assert!(close(&host(hs), &host(rs)), "sum of squares of f16 inputs");
        assert!(close(&host(hm), &host(rm)), "sum of f16 inputs");
    }

    let w = random(&mut rng, rows * cols, None);
    let gscore = host(score::score(Some(&kernels), t2(w.clone(), [rows, cols], &gpu), Some(gs)));
    let cscore = host(score::score_reference(t2(w.clone(), [rows, cols], &cpu), Some(cs.clone())));
    assert!(close(&gscore, &cscore), "wanda score");
    // The CPU backends' host loop computes the twin's arithmetic: the same bits.
    let hscore = host(score::score(None, t2(w.clone(), [rows, cols], &cpu), Some(cs)));
    assert_eq!(hscore, cscore, "wanda score, host path");
    assert_eq!(
        host(score::score(None, t2(w.clone(), [rows, cols], &cpu), None)),
        w.iter().map(|v| v.abs()).collect::<Vec<_>>(),
        "magnitude score, host path"
    );
    let gmag = host(score::score(Some(&kernels), t2(w.clone(), [rows, cols], &gpu), None));
    assert_eq!(gmag, w.iter().map(|v| v.abs()).collect::<Vec<_>>(), "magnitude score");

    let m: Vec<f32> = (0..rows * cols).map(|_| (rng.below(2)) as f32).collect();
    let gw =
        host(score::apply_mask(Some(&kernels), t2(w.clone(), [rows, cols], &gpu), t2(m.clone(), [rows, cols], &gpu)));
    let cw = host(score::apply_mask_reference(t2(w.clone(), [rows, cols], &cpu), t2(m.clone(), [rows, cols], &cpu)));
    assert_eq!(gw, cw);
    let hw = host(score::apply_mask(None, t2(w.clone(), [rows, cols], &cpu), t2(m.clone(), [rows, cols], &cpu)));
    assert_eq!(hw, cw, "apply_mask, host path");
    assert_eq!(gw.iter().filter(|v| **v == 0.0).count(), m.iter().filter(|v| **v == 1.0).count());
}

/// `prune_rows.wgsl` (score, selection and zeroing in one shader, on the weight as stored)
/// against the twins: the three-step path on the same GPU exactly (Wanda with any scaler), and
/// the CPU twins exactly where √scaler is exact on both (magnitude, and scalers that are
/// squares). Widths over a workgroup, odd widths, many ties (pruned lower or higher column
/// first), k = 0 and k = cols; f32, and f16 where the adapter has shader f16 (the stored f16
/// values then go through the twins in f32).
#[test]
fn fused_row_prune_equals_score_select_and_zero() {
    let selected = select(Choice::Gpu);
    let gpu = selected.device.clone();
    let shaders = &selected.gpu.as_deref().expect("a GPU's kernels").shaders;
    let cpu = Device::flex();
    let mut rng = SplitMix64::new(23);
    let mut dtypes = vec![DType::F32];
    if selected.shader_f16 {
        dtypes.push(DType::F16);
    }
    println!("{}: {dtypes:?}", selected.description);
    let as_dtype = |t: Tensor<2>, dt: DType| neuroal::gpu::tensor::to_dtype(t, dt);
    let f32_host = |t: Tensor<2>| host(neuroal::gpu::tensor::to_dtype(t, DType::F32));
    for dt in dtypes {
        for (rows, cols, levels) in [
            (3, 1000, None),
            (5, 300, Some(4)),
            (4, 7, Some(2)),
            (2, 4099, Some(50)),
            (6, 256, Some(1)),
            (4, 1500, Some(1)),
            (4, 2100, None),
        ] {
            // The weights as the dtype stores them, so every path starts from the same values.
            let w = f32_host(as_dtype(t2(random(&mut rng, rows * cols, levels), [rows, cols], &cpu), dt));
            // k = 0, k = cols, the zero weights (a radix boundary: see the selection's test) and
            // random counts.
            let k: Vec<usize> = (0..rows)
                .map(|r| match r {
                    0 => 0,
                    1 => cols,
                    2 => w[r * cols..(r + 1) * cols].iter().filter(|&&v| v == 0.0).count(),
                    _ => rng.below(cols as u64 + 1) as usize,
                })
                .collect();
            let any_scaler: Vec<f32> = (0..cols).map(|_| rng.uniform(0.0, 3.0)).collect();
            let square_scaler: Vec<f32> =
                (0..cols).map(|_| [0.0, 0.25, 1.0, 2.25, 4.0][rng.below(5) as usize]).collect();
            let vector = |v: &[f32], d: &Device| Tensor::<1>::from_data(TensorData::new(v.to_vec(), [cols]), d);
            let cases =
                [("magnitude", None), ("wanda", Some(&any_scaler)), ("wanda, square scalers", Some(&square_scaler))];
            for ((what, scaler), ties) in
                cases.into_iter().flat_map(|c| [(c, Ties::EarlierFirst), (c, Ties::LaterFirst)])
            {
                let at = format!("{what}, {dt:?}, {rows}x{cols}, {ties:?}");
                let wg = as_dtype(t2(w.clone(), [rows, cols], &gpu), dt);
                let (fw, fm) = shaders
                    .prune_rows(wg.clone(), scaler.map(|s| vector(s, &gpu)), &k, true, ties)
                    .expect("f32 and f16 weights");
                assert_eq!(fw.dtype(), dt, "{at}: the weight keeps its dtype");
                let (fw, fm) = (f32_host(fw), host(fm.expect("asked for")));
                // Without the mask (NeuroAL's candidates): the same weight, and no mask.
                let (alone, none) = shaders
                    .prune_rows(wg.clone(), scaler.map(|s| vector(s, &gpu)), &k, false, ties)
                    .expect("f32 and f16 weights");
                assert!(none.is_none(), "{at}: a mask nobody asked for");
                assert_eq!(f32_host(alone), fw, "{at}: weights without the mask");
                // The three launches on the same GPU, in f32.
                let w32 = as_dtype(wg, DType::F32);
                let m3 = shaders.select_lowest(shaders.score(w32.clone(), scaler.map(|s| vector(s, &gpu))), &k, ties);
                let w3 = host(shaders.apply_mask(w32, m3.clone()));
                assert_eq!(fm, host(m3), "{at}: mask against the three shaders");
                assert_eq!(fw, w3, "{at}: weights against the three shaders");
                assert_eq!(fm.iter().filter(|&&v| v == 1.0).count(), k.iter().sum::<usize>(), "{at}: k per row");
                if what != "wanda" {
                    let wc = t2(w.clone(), [rows, cols], &cpu);
                    let mc = mask::select_lowest_reference(
                        score::score_reference(wc.clone(), scaler.map(|s| vector(s, &cpu))),
                        &k,
                        ties,
                    );
                    assert_eq!(fm, host(mc.clone()), "{at}: mask against the CPU twins");
                    assert_eq!(fw, host(score::apply_mask_reference(wc, mc)), "{at}: weights against the CPU twins");
                }
            }
        }
    }
}

/// A mask read back through the GPU's packing, or the CPU backends' values, gives the bits of
/// its non-zero entries: widths around the 16 flags per packed value and the 64 per word.
#[test]
fn masks_read_back_as_their_bits_on_every_backend() {
    let mut rng = SplitMix64::new(11);
    for (_, selected) in devices() {
        let d = &selected.device;
        for shape in [[3, 16], [5, 48], [2, 7], [7, 64], [33, 1000], [1, 1]] {
            let n = shape[0] * shape[1];
            // Mostly 0/1, with other non-zero values (which count as pruned) and all-set runs.
            let v: Vec<f32> = (0..n)
                .map(|i| match rng.below(5) {
                    0 | 1 => 0.0,
                    2 if i % 7 == 0 => 2.5,
                    _ => 1.0,
                })
                .collect();
            let got = mask::read_bits(t2(v.clone(), shape, d), "test mask").unwrap();
            let want = mask::Bits::from_flags(v.iter().map(|&x| x != 0.0));
            assert_eq!(got, want, "{shape:?} on {}", selected.description);
        }
    }
}

/// The GPU's memory, which a prune compares its estimate with: the native compilers' runtimes
/// read it (SPIR-V: the largest device-local heap; CI runs this file on lavapipe's Vulkan that
/// way too); the WGSL runtime reads none.
#[test]
fn native_runtimes_report_the_gpus_memory() {
    let gpu = select(Choice::Gpu);
    let capacity = neuroal::gpu::kernels::capacity(&gpu.device);
    if gpu.description.contains("wgpu<spirv>") || gpu.description.contains("wgpu<msl>") {
        assert!(capacity.is_some_and(|c| c >= 1 << 20), "{}: {capacity:?}", gpu.description);
    } else {
        assert_eq!(capacity, None, "{}", gpu.description);
    }
}

/// Every shader as wgpu receives it validates under naga (wgpu's translator, the same version)
/// and translates to HLSL for DX12: shader model 5.1 (FXC's, wgpu's lowest) for f32, 6.2 (the
/// first with 16-bit types) for f16. No test machine has DX12; the emulator runs the Vulkan
/// (SPIR-V) and OpenGL translations. An f16 shader is refused without the shader-f16
/// capability, so the validation can fail.
#[test]
fn every_shader_validates_and_translates_for_dx12() {
    use naga::back::hlsl;
    use naga::valid::{Capabilities, ValidationFlags, Validator};
    let shaders = neuroal::gpu::kernels::shader_texts();
    // Every file in shaders/ is given to wgpu, but the selection that two of them include.
    for entry in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/shaders")).unwrap() {
        let file = entry.unwrap().file_name().into_string().unwrap();
        assert!(
            file == "row_select.wgsl" || shaders.iter().any(|(name, _, _)| name.starts_with(file.as_str())),
            "{file} is not among the shaders"
        );
    }
    let hlsl = |module: &naga::Module, info: &naga::valid::ModuleInfo, model| {
        let options = hlsl::Options { shader_model: model, ..Default::default() };
        let mut out = String::new();
        hlsl::Writer::new(&mut out, &options, &hlsl::PipelineOptions { entry_point: None })
            .write(module, info, None)
            .map(|_| out)
    };
    // NEUROAL_WRITE_SHADERS=DIR keeps the texts, for translators this build lacks (Metal's:
    // docs/gpu-kernels.md, "Devices and dtypes").
    let keep = std::env::var_os("NEUROAL_WRITE_SHADERS").map(std::path::PathBuf::from);
    for (name, text, f16) in shaders {
        if let Some(dir) = &keep {
            std::fs::create_dir_all(dir).unwrap();
            let file =
                name.replace(".wgsl", "").replace(" (", "-").replace(" [", "-").replace([')', ']'], "") + ".wgsl";
            std::fs::write(dir.join(file), &text).unwrap();
        }
        let module =
            naga::front::wgsl::parse_str(&text).unwrap_or_else(|e| panic!("{name}: {}", e.emit_to_string(&text)));
        let validate =
            |caps| Validator::new(ValidationFlags::all(), caps).validate(&module).map_err(|e| e.emit_to_string(&text));
        let caps = if f16 { Capabilities::SHADER_FLOAT16 } else { Capabilities::empty() };
        let info = validate(caps).unwrap_or_else(|e| panic!("{name}: {e}"));
        let model = if f16 { hlsl::ShaderModel::V6_2 } else { hlsl::ShaderModel::V5_1 };
        let out = hlsl(&module, &info, model).unwrap_or_else(|e| panic!("{name}: HLSL: {e}"));
        assert!(out.contains("[numthreads(256, 1, 1)]"), "{name}: HLSL has no 256-wide entry point");
        if f16 {
            assert!(validate(Capabilities::empty()).is_err(), "{name} validated without shader f16");
            assert!(out.contains("half"), "{name}: HLSL has no 16-bit floats");
        }
    }
}
