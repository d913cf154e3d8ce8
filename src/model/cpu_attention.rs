//! Causal attention for the CPU backends in f32, on host slices. Per (window, head), the scores
//! Q·Kᵀ and the product P·V are matrix products (gemm), taken in blocks of query rows so that
//! each block reads only the keys it can see: the products above the diagonal, and their exps,
//! are never computed. The softmax is vectorized (`cpu_math`). q, k and v are read, and the
//! output written, in the [b, t, heads, hd] layout the projections produce and consume, so no
//! head is transposed. Grouped-query heads read their shared key/value head directly, and heads
//! run in parallel. The burn-ops path in `super::attention` (used on GPUs) is its reference in
//! the tests.

use burn::tensor::{Tensor, TensorData};
use gemm::Parallelism;
use rayon::prelude::*;

use super::cpu_values;

/// Query rows per block. Smaller blocks skip more of the upper triangle (t = 256: 62.5% of the
/// full products; t = 2048: 52%), larger ones make better products.
const ROWS: usize = 64;

/// The output buffer, written by all heads at once: each writes only its own columns.
struct Out(*mut f32);
// SAFETY: the heads write disjoint elements (see `causal`), and the buffer outlives them.
unsafe impl Sync for Out {}
impl Out {
    fn at(&self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
}

/// softmax(Q·Kᵀ·scale + causal mask)·V → [b, t, nh·hd], for f32 q [b, nh, t, hd] and k, v
/// [b, nkv, t, hd] on a CPU backend. They are usually views of [b, t, heads, hd] buffers
/// (`split_heads`), which are read in place; other layouts are copied first.
pub fn causal(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, scale: f32) -> Tensor<3> {
    let [b, nh, t, hd] = q.dims();
    let nkv = k.dims()[1];
    let device = q.device();
    if t == 0 || hd == 0 {
        return Tensor::zeros([b, t, nh * hd], &device);
    }
    let (q, k, v) = (cpu_values(q.swap_dims(1, 2)), cpu_values(k.swap_dims(1, 2)), cpu_values(v.swap_dims(1, 2)));
    let (q_rs, kv_rs) = (nh * hd, nkv * hd);
    let groups = nh / nkv;
    let mut out = vec![0f32; b * t * nh * hd];
    let dst = Out(out.as_mut_ptr());
    (0..b * nh).into_par_iter().for_each_init(
        || vec![0f32; ROWS * t],
        |scores, i| {
            let (w, h) = (i / nh, i % nh);
            let qh = &q[w * t * q_rs + h * hd..][..(t - 1) * q_rs + hd];
            let kv = w * t * kv_rs + (h / groups) * hd;
            let (kh, vh) = (&k[kv..][..(t - 1) * kv_rs + hd], &v[kv..][..(t - 1) * kv_rs + hd]);
            // Head (w, h) owns columns h·hd..(h+1)·hd of window w's t rows, and nothing else.
            let head = Head { q: qh, q_rs, k: kh, v: vh, kv_rs, t, hd, scale };
            one_head(&head, &dst, w * t * q_rs + h * hd, scores);
        },
    );
    Tensor::from_data(TensorData::new(out, [b, t, nh * hd]), &device)
}

/// One head's operands: t rows of hd values, q's rows `q_rs` apart, k's and v's `kv_rs` apart;
/// the scores are scaled by `scale`.
struct Head<'a> {
    q: &'a [f32],
    q_rs: usize,
    k: &'a [f32],
    v: &'a [f32],
    kv_rs: usize,
    t: usize,
    hd: usize,
    scale: f32,
}

/// One head, its output rows `q_rs` apart from `dst.at(at)`.
fn one_head(head: &Head, dst: &Out, at: usize, scores: &mut [f32]) {
    let Head { q, q_rs, k, v, kv_rs, t, hd, scale } = *head;
    for r0 in (0..t).step_by(ROWS) {
        // Query rows r0..r1 see keys 0..r1 at most.
        let r1 = (r0 + ROWS).min(t);
        let (m, n) = (r1 - r0, r1);
        // SAFETY: q, k and v hold t rows of hd values at their row strides (sliced so by the
        // caller); scores holds ROWS · t ≥ m · n values; the output rows r0..r1 of this head
        // are inside `out` and written by no other head; no destination aliases an operand.
        unsafe {
            // scores[i][j] = scale · Σ_d q[r0 + i][d]·k[j][d]
            gemm::gemm(
                m,
                n,
                hd,
                scores.as_mut_ptr(),
                1,
                n as isize,
                false,
                q.as_ptr().add(r0 * q_rs),
                1,
                q_rs as isize,
                k.as_ptr(),
                kv_rs as isize,
                1,
                0.0,
                scale,
                false,
                false,
                false,
                Parallelism::None,
            );
        }
        super::cpu_math::causal_softmax(&mut scores[..m * n], n, r0);
        unsafe {
            // out[r0 + i][d] = Σ_j p[i][j]·v[j][d]
            gemm::gemm(
                m,
                hd,
                n,
                dst.at(at + r0 * q_rs),
                1,
                q_rs as isize,
                false,
                scores.as_ptr(),
                1,
                n as isize,
                v.as_ptr(),
                1,
                kv_rs as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                Parallelism::None,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Device, Tensor, TensorData};

    use crate::model::{attention, attention_ops};
    use crate::rng::SplitMix64;

    fn random(rng: &mut SplitMix64, shape: [usize; 4], d: &Device) -> Tensor<4> {
        let n = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| rng.uniform(-3.0, 3.0)).collect();
        Tensor::from_data(TensorData::new(v, shape), d)
    }

    /// Against the burn-ops path (full scores, additive mask, softmax), with grouped-query
    /// heads, odd lengths, several blocks of query rows and no scale, on both CPU backends.
    #[test]
    fn equals_the_burn_ops_attention() {
        #[allow(deprecated)] // the NdArray backend is kept on request
        let devices = [Device::flex(), Device::ndarray()];
        let mut rng = SplitMix64::new(3);
        for d in &devices {
            // One block of query rows, exactly one, and three with a short last one; inputs as
            // contiguous tensors and as the views `split_heads` makes.
            for (b, nh, nkv, t, hd, divide_by, views) in [
                (2, 4, 2, 37, 8, Some(8f64.sqrt()), false),
                (1, 3, 3, 64, 16, Some(4.0), true),
                (3, 2, 1, 5, 4, None, false),
                (2, 4, 2, 150, 8, Some(2.0), true),
            ] {
                let mut make = |heads: usize| {
                    if views {
                        random(&mut rng, [b, t, heads, hd], d).swap_dims(1, 2)
                    } else {
                        random(&mut rng, [b, heads, t, hd], d)
                    }
                };
                let (q, k, v) = (make(nh), make(nkv), make(nkv));
                let fast = attention(
                    q.clone(),
                    k.clone(),
                    v.clone(),
                    divide_by,
                    &crate::model::Positions {
                        rope: None,
                        causal: None,
                        window: None,
                        local: None,
                        local_window: None,
                        local_rope: None,
                        gpu: None,
                    },
                )
                .into_data()
                .try_to_vec::<f32>()
                .unwrap();
                let reference = attention_ops(q, k, v, divide_by).into_data().try_to_vec::<f32>().unwrap();
                let err = fast.iter().zip(&reference).map(|(a, r)| ((a - r) as f64).powi(2)).sum::<f64>().sqrt();
                let norm = reference.iter().map(|r| (*r as f64).powi(2)).sum::<f64>().sqrt();
                assert!(err / norm < 1e-6, "b {b} nh {nh} nkv {nkv} t {t}: relative L2 {}", err / norm);
            }
        }
    }
}
