//! Causal attention for the CPU backends in f32, on host slices: per (window, head), the scores
//! Q·Kᵀ and the product P·V are matrix products (gemm), and the scale, max, exp, sum and divide
//! run only over each query's visible keys (the lower triangle), so half the exps are never
//! taken; the softmax is vectorized (`cpu_math`). Grouped-query heads read their shared key/value head directly. Heads run in parallel.
//! The burn-ops path in `super::attention` (used on GPUs) is its reference in the tests.

use burn::tensor::{Tensor, TensorData};
use gemm::Parallelism;
use rayon::prelude::*;

use super::cpu_values;

/// softmax(Q·Kᵀ·scale + causal mask)·V for f32 q [b, nh, t, hd] and k, v [b, nkv, t, hd] on a
/// CPU backend.
pub fn causal(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, scale: f32) -> Tensor<4> {
    let [b, nh, t, hd] = q.dims();
    let nkv = k.dims()[1];
    let device = q.device();
    let (q, k, v) = (cpu_values(q), cpu_values(k), cpu_values(v));
    let groups = nh / nkv;
    let head = t * hd;
    let mut out = vec![0f32; b * nh * head];
    out.par_chunks_exact_mut(head).enumerate().for_each_init(
        || vec![0f32; t * t],
        |scores, (i, o)| {
            let (w, h) = (i / nh, i % nh);
            let kv = (w * nkv + h / groups) * head;
            one_head(&q[i * head..(i + 1) * head], &k[kv..kv + head], &v[kv..kv + head], o, scores, t, hd, scale);
        },
    );
    Tensor::from_data(TensorData::new(out, [b, nh, t, hd]), &device)
}

#[allow(clippy::too_many_arguments)]
fn one_head(q: &[f32], k: &[f32], v: &[f32], out: &mut [f32], scores: &mut [f32], t: usize, hd: usize, scale: f32) {
    // SAFETY: every matrix is a row-major slice of exactly the size its strides and dimensions
    // reach (q, k, v and out: t × hd; scores: t × t), and dst does not alias an operand.
    unsafe {
        // scores[i][j] = scale · Σ_d q[i][d]·k[j][d]
        gemm::gemm(t, t, hd, scores.as_mut_ptr(), 1, t as isize, false, q.as_ptr(), 1, hd as isize, k.as_ptr(), hd as isize, 1, 0.0, scale, false, false, false, Parallelism::None);
    }
    super::cpu_math::causal_softmax(scores, t);
    unsafe {
        // out[i][d] = Σ_j p[i][j]·v[j][d]
        gemm::gemm(t, hd, t, out.as_mut_ptr(), 1, hd as isize, false, scores.as_ptr(), 1, t as isize, v.as_ptr(), 1, hd as isize, 0.0, 1.0, false, false, false, Parallelism::None);
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Device, Tensor, TensorData};

    use crate::calib::SplitMix64;
    use crate::model::{attention, attention_ops};

    fn random(rng: &mut SplitMix64, shape: [usize; 4], d: &Device) -> Tensor<4> {
        let n = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| (rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32 * 6.0 - 3.0).collect();
        Tensor::from_data(TensorData::new(v, shape), d)
    }

    /// Against the burn-ops path (full scores, additive mask, softmax), with grouped-query
    /// heads, odd lengths and no scale, on both CPU backends.
    #[test]
    fn equals_the_burn_ops_attention() {
        #[allow(deprecated)] // the NdArray backend is kept on request
        let devices = [Device::flex(), Device::ndarray()];
        let mut rng = SplitMix64::new(3);
        for d in &devices {
            for (b, nh, nkv, t, hd, divide_by) in [(2, 4, 2, 37, 8, Some(8f64.sqrt())), (1, 3, 3, 64, 16, Some(4.0)), (3, 2, 1, 5, 4, None)] {
                let (q, k, v) = (random(&mut rng, [b, nh, t, hd], d), random(&mut rng, [b, nkv, t, hd], d), random(&mut rng, [b, nkv, t, hd], d));
                let fast = attention(q.clone(), k.clone(), v.clone(), divide_by).into_data().try_to_vec::<f32>().unwrap();
                let reference = attention_ops(q, k, v, divide_by).into_data().try_to_vec::<f32>().unwrap();
                let err = fast.iter().zip(&reference).map(|(a, r)| ((a - r) as f64).powi(2)).sum::<f64>().sqrt();
                let norm = reference.iter().map(|r| (*r as f64).powi(2)).sum::<f64>().sqrt();
                assert!(err / norm < 1e-6, "b {b} nh {nh} nkv {nkv} t {t}: relative L2 {}", err / norm);
            }
        }
    }
}
