//! Shared by the kernel benchmarks and `neuroal tune`: size lists as the flags write them, and
//! one kernel's timed runs against a reference.

use std::time::Instant;

use crate::io::error::Result;
use crate::{bail, err};

/// Parses a comma-separated list of N positive sizes joined by `x` (or `×`), as bench's kernel
/// lists and `NEUROAL_MATMUL`'s rules write them; one line naming the `flag` and the `form` on
/// anything else.
pub fn parse_sizes<const N: usize>(list: &str, flag: &str, form: &str) -> Result<Vec<[usize; N]>> {
    list.split(',')
        .map(|s| {
            let dims: Vec<usize> = s
                .trim()
                .split(['x', '×'])
                .map(|d| d.trim().parse::<usize>())
                .collect::<std::result::Result<_, _>>()
                .unwrap_or_default();
            match <[usize; N]>::try_from(dims) {
                Ok(sizes) if sizes.iter().all(|&d| d > 0) => Ok(sizes),
                _ => bail!("{flag} {s:?}: {form}, all sizes positive"),
            }
        })
        .collect()
}

/// One kernel's run in a kernel benchmark, on the GPU `device`: `run` once (its `Err` says why
/// the kernel declined), its error against `reference` (‖y − ref‖ / ‖ref‖ in f32), then `iters`
/// runs between two waits for the device: `(ms per run, error)`.
pub fn time_kernel<const D: usize>(
    device: &burn::tensor::Device,
    iters: usize,
    reference: &burn::tensor::Tensor<D>,
    run: impl Fn() -> std::result::Result<burn::tensor::Tensor<D>, String>,
) -> Result<std::result::Result<(f64, f64), String>> {
    use burn::tensor::{DType, Tensor};
    let first = match run() {
        Ok(y) => y,
        Err(why) => return Ok(Err(why)),
    };
    let reference = reference.clone().cast(DType::F32);
    let diff = (first.cast(DType::F32) - reference.clone()).square().sum();
    let err = crate::gpu::tensor::host_f32(Tensor::cat(vec![diff, reference.square().sum()], 0), "the kernel's error")?;
    let sync =
        || device.sync().map_err(|e| err!("the GPU failed: {}", crate::io::error::device_words(&format!("{e:?}"))));
    sync()?;
    let start = Instant::now();
    // Kept until the device is done: a lazy backend may skip work whose result is gone.
    let outputs: Vec<_> = (0..iters).map(|_| run()).collect();
    sync()?;
    drop(outputs);
    let ms = start.elapsed().as_secs_f64() * 1000.0 / iters as f64;
    Ok(Ok((ms, (err[0] as f64).sqrt() / (err[1] as f64).sqrt().max(f64::MIN_POSITIVE))))
}
