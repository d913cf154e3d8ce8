//! Input statistics of each linear, and the base pruners' scores. Each function takes the WGSL
//! path on a wgpu device and its burn-ops twin (`*_reference`) elsewhere; `score` and
//! `apply_mask` take a host loop with the twin's exact arithmetic on the CPU backends in f32.

use burn::tensor::{DType, Tensor, TensorData};

use crate::gpu::context::{Gpu, shaders_for};
use crate::gpu::tensor::to_dtype;
use crate::io::named::Named;
use crate::model::{cpu_values, on_cpu_in_f32};

/// Running statistics of one linear's input, per input channel j.
#[derive(Clone)]
pub struct InputStats {
    pub sumsq: Tensor<1>,
    pub sum: Tensor<1>,
    pub tokens: usize,
}

impl InputStats {
    pub fn new(cols: usize, device: &burn::tensor::Device) -> Self {
        InputStats { sumsq: Tensor::zeros([cols], device), sum: Tensor::zeros([cols], device), tokens: 0 }
    }

    /// Adds the rows of x [.., cols] (one row per token), on the `gpu` where x lives there.
    pub fn add(&mut self, x: &Tensor<3>, gpu: Option<&Gpu>) {
        let [b, t, cols] = x.dims();
        let x2 = x.clone().reshape([b * t, cols]);
        // The shader reads x in the compute dtype and sums in f32, as the twin does on a copy.
        let on_host = || {
            crate::model::with_cpu_rows(&x2, |x| {
                let (mut sumsq, mut sum) = (vec![0f32; cols], vec![0f32; cols]);
                if cols > 0 {
                    crate::model::cpu_math::column_sums(x, cols, &mut sumsq, &mut sum);
                }
                (sumsq, sum)
            })
        };
        let (sumsq, sum) = if let Some(shaders) = shaders_for(gpu, &x2) {
            shaders.input_stats(x2, self.sumsq.clone(), self.sum.clone())
        } else if let Some((sq, s)) = on_host() {
            // The twin's arithmetic in one pass over x, without its squared copy.
            let device = x2.device();
            (
                self.sumsq.clone() + Tensor::from_data(TensorData::new(sq, [cols]), &device),
                self.sum.clone() + Tensor::from_data(TensorData::new(s, [cols]), &device),
            )
        } else {
            input_stats_reference(
                crate::gpu::tensor::to_dtype(x2, burn::tensor::DType::F32),
                self.sumsq.clone(),
                self.sum.clone(),
            )
        };
        self.sumsq = sumsq;
        self.sum = sum;
        self.tokens += b * t;
    }

    /// Adds the sums of `chunk`, a later chunk's statistics made alone. On the CPU backends the
    /// same bits as [`InputStats::add`] of that chunk here (which sums the chunk alone, then
    /// adds the sums), so chunks recorded side by side and merged in order give what recording
    /// them one by one does.
    pub fn merge(&mut self, chunk: &InputStats) {
        self.sumsq = self.sumsq.clone() + chunk.sumsq.clone();
        self.sum = self.sum.clone() + chunk.sum.clone();
        self.tokens += chunk.tokens;
    }

    /// Wanda's `scaler_row`: Σ_tokens x_j² / N, N the number of calibration windows;
    /// ‖X_j‖₂ is its square root.
    pub fn scaler_row(&self, nsamples: usize) -> Tensor<1> {
        self.sumsq.clone().div_scalar(nsamples as f64)
    }

    pub fn mean(&self) -> Tensor<1> {
        self.sum.clone().div_scalar(self.tokens.max(1) as f64)
    }

    /// Population variance per channel.
    pub fn variance(&self) -> Tensor<1> {
        let n = self.tokens.max(1) as f64;
        self.sumsq.clone().div_scalar(n) - self.mean().square()
    }
}

pub fn input_stats_reference(x: Tensor<2>, sumsq: Tensor<1>, sum: Tensor<1>) -> (Tensor<1>, Tensor<1>) {
    let cols = x.dims()[1];
    let sq = x.clone().square().sum_dim(0).reshape([cols]);
    let s = x.sum_dim(0).reshape([cols]);
    (sumsq + sq, sum + s)
}

/// `--method`: the base pruner.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Magnitude,
    Wanda,
    Sparsegpt,
    Multiflow,
}

impl Named for Method {
    const ALL: &'static [Method] = &[Method::Magnitude, Method::Wanda, Method::Sparsegpt, Method::Multiflow];

    fn name(self) -> &'static str {
        match self {
            Method::Magnitude => "magnitude",
            Method::Wanda => "wanda",
            Method::Sparsegpt => "sparsegpt",
            Method::Multiflow => "multiflow",
        }
    }
}

/// Scores of w [out, in]: |W| for magnitude, |W|·sqrt(scaler_row) for Wanda.
pub fn score(gpu: Option<&Gpu>, w: Tensor<2>, scaler_row: Option<Tensor<1>>) -> Tensor<2> {
    if let Some(shaders) = shaders_for(gpu, &w) {
        return shaders.score(w, scaler_row);
    }
    if on_cpu_in_f32(&w) {
        return score_on_cpu(w, scaler_row);
    }
    score_reference(w, scaler_row)
}

/// The CPU backends' path: one host loop with the twin's arithmetic (|w|·√s), so the same bits.
fn score_on_cpu(w: Tensor<2>, scaler_row: Option<Tensor<1>>) -> Tensor<2> {
    let ([rows, cols], device) = (w.dims(), w.device());
    let mut v = cpu_values(w);
    let norms = scaler_row.map(cpu_norms);
    for row in v.chunks_exact_mut(cols) {
        score_row_in_place(row, norms.as_deref());
    }
    Tensor::from_data(TensorData::new(v, [rows, cols]), &device)
}

/// √scaler on the host: the per-column factor of Wanda's score.
pub(crate) fn cpu_norms(scaler_row: Tensor<1>) -> Vec<f32> {
    cpu_values(to_dtype(scaler_row, DType::F32)).iter().map(|x| x.sqrt()).collect()
}

/// One row of weights turned into its scores, |w| or |w|·√s (`norms`), in f32: the host paths'
/// one definition (a loop the compiler vectorizes), the twin's bits.
pub(crate) fn score_row_in_place(row: &mut [f32], norms: Option<&[f32]>) {
    match norms {
        Some(n) => row.iter_mut().zip(n).for_each(|(x, n)| *x = x.abs() * n),
        None => row.iter_mut().for_each(|x| *x = x.abs()),
    }
}

pub fn score_reference(w: Tensor<2>, scaler_row: Option<Tensor<1>>) -> Tensor<2> {
    match scaler_row {
        Some(s) => w.abs() * s.sqrt().unsqueeze::<2>(),
        None => w.abs(),
    }
}

/// w with the entries where mask ≠ 0 set to zero.
pub fn apply_mask(gpu: Option<&Gpu>, w: Tensor<2>, mask: Tensor<2>) -> Tensor<2> {
    if let Some(shaders) = shaders_for(gpu, &w) {
        return shaders.apply_mask(w, mask);
    }
    if on_cpu_in_f32(&w) && on_cpu_in_f32(&mask) {
        let (dims, device) = (w.dims(), w.device());
        let mut v = cpu_values(w);
        for (x, m) in v.iter_mut().zip(cpu_values(mask)) {
            if m != 0.0 {
                *x = 0.0;
            }
        }
        return Tensor::from_data(TensorData::new(v, dims), &device);
    }
    apply_mask_reference(w, mask)
}

pub fn apply_mask_reference(w: Tensor<2>, mask: Tensor<2>) -> Tensor<2> {
    let zeros = w.zeros_like();
    w.mask_where(mask.not_equal_elem(0.0), zeros)
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Device, Tensor, TensorData};

    use super::{InputStats, input_stats_reference};
    use crate::rng::SplitMix64;

    /// The one-pass host sums equal the burn-ops twin bit for bit on both CPU backends, over
    /// several chunks (so the running sums are added to), odd widths and views at an offset.
    #[test]
    fn host_statistics_equal_the_twin() {
        #[allow(deprecated)] // the NdArray backend is kept on request
        let devices = [Device::flex(), Device::ndarray()];
        let mut rng = SplitMix64::new(11);
        for device in &devices {
            for &(windows, tokens, cols) in &[(2, 5, 3), (3, 17, 37), (1, 1, 1), (4, 64, 129)] {
                let mut stats = InputStats::new(cols, device);
                let (mut sumsq, mut sum) = (Tensor::<1>::zeros([cols], device), Tensor::<1>::zeros([cols], device));
                for _ in 0..3 {
                    let v: Vec<f32> = (0..(windows + 1) * tokens * cols).map(|_| rng.uniform(-40.0, 40.0)).collect();
                    let x = Tensor::<3>::from_data(TensorData::new(v, [windows + 1, tokens, cols]), device)
                        .narrow(0, 1, windows);
                    stats.add(&x, None);
                    (sumsq, sum) = input_stats_reference(x.reshape([windows * tokens, cols]), sumsq, sum);
                }
                let host = |t: Tensor<1>| {
                    t.into_data().try_to_vec::<f32>().unwrap().iter().map(|v| v.to_bits()).collect::<Vec<_>>()
                };
                assert_eq!(host(stats.sumsq.clone()), host(sumsq), "Σx² of {windows} × {tokens} × {cols}");
                assert_eq!(host(stats.sum.clone()), host(sum), "Σx of {windows} × {tokens} × {cols}");
                assert_eq!(stats.tokens, 3 * windows * tokens);
            }
        }
    }
}
