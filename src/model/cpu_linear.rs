//! The linears' products on burn-flex in f32, written straight into their output. burn-flex's
//! matmul makes each output as a zeroed byte vector and then copies it into an aligned one:
//! a memset and a memcpy per product, about 6% of a CPU prune (perf, wt2-llama at 70%). This is
//! the same gemm call with the same operands, strides and threading, so the same bits.

use burn::backend::Flex;
use burn::backend::flex::FlexTensor;
use burn::tensor::{DType, Tensor, TensorData};
use gemm::Parallelism;

/// burn-flex's threshold (m·n·k) for running a product on every core: the same split.
const PARALLEL_OPS: usize = 192 * 192 * 192;

/// x [m, k] · wᵀ for w [n, k] → [m, n] when both are f32 burn-flex tensors; `None` elsewhere.
pub fn linear(x: &Tensor<2>, w: &Tensor<2>) -> Option<Tensor<2>> {
    if x.dtype() != DType::F32 || w.dtype() != DType::F32 {
        return None;
    }
    let device = x.device();
    let ([m, k], [n, _]) = (x.dims(), w.dims());
    let lhs: FlexTensor = x.clone().try_into_primitive::<Flex>().ok()?;
    let rhs: FlexTensor = w.clone().transpose().try_into_primitive::<Flex>().ok()?;
    let (ls, rs) = (lhs.layout().strides(), rhs.layout().strides());
    let (lhs_data, rhs_data) = (lhs.storage::<f32>(), rhs.storage::<f32>());
    let (lhs_at, rhs_at) = (lhs.layout().start_offset(), rhs.layout().start_offset());
    // Every element the strides reach must be inside the operand's buffer.
    let fits = |len: usize, at: usize, rows: usize, cols: usize, s: &[isize]| {
        s.len() == 2
            && s.iter().all(|&v| v >= 0)
            && (rows == 0 || cols == 0 || at + (rows - 1) * s[0] as usize + (cols - 1) * (s[1] as usize) < len)
    };
    if !fits(lhs_data.len(), lhs_at, m, k, ls) || !fits(rhs_data.len(), rhs_at, k, n, rs) {
        return None;
    }
    let mut out: Vec<f32> = Vec::with_capacity(m * n);
    if k == 0 {
        out.resize(m * n, 0.0);
    } else if m * n > 0 {
        let parallelism = if m * n * k >= PARALLEL_OPS { Parallelism::Rayon(0) } else { Parallelism::None };
        // SAFETY: the operands' strided extents were checked against their buffers above, the
        // output has room for m·n values at row stride n, and gemm writes every one of them
        // (it does not read the destination: `read_dst` is false), so all are initialized
        // before `set_len`. No operand aliases the new output.
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                out.as_mut_ptr(),
                1,
                n as isize,
                false,
                lhs_data.as_ptr().add(lhs_at),
                ls[1],
                ls[0],
                rhs_data.as_ptr().add(rhs_at),
                rs[1],
                rs[0],
                0.0,
                1.0,
                false,
                false,
                false,
                parallelism,
            );
            out.set_len(m * n);
        }
    }
    Some(Tensor::from_data(TensorData::new(out, [m, n]), &device))
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Device, Tensor, TensorData};

    use crate::rng::SplitMix64;

    /// The same bits as burn-flex's own matmul, on shapes below and above the threshold for
    /// threads, a strided view (a row range of a larger input) and k = 0; on ndarray, none.
    #[test]
    fn equals_burn_flex_bit_for_bit() {
        let device = Device::flex();
        let mut rng = SplitMix64::new(3);
        let mut random = |shape: [usize; 2]| {
            let v: Vec<f32> = (0..shape[0] * shape[1]).map(|_| rng.uniform(-1.0, 1.0)).collect();
            Tensor::<2>::from_data(TensorData::new(v, shape), &device)
        };
        for &(m, k, n) in &[(5, 7, 3), (300, 256, 200), (1, 64, 1), (64, 0, 8)] {
            let (x, w) = (random([m + 2, k]), random([n, k]));
            let x = x.narrow(0, 1, m);
            let ours = super::linear(&x, &w).expect("f32 flex tensors").into_data().try_to_vec::<f32>().unwrap();
            let theirs = x.matmul(w.transpose()).into_data().try_to_vec::<f32>().unwrap();
            assert_eq!(ours.len(), m * n);
            assert!(ours.iter().zip(&theirs).all(|(a, b)| a.to_bits() == b.to_bits()), "{m} × {k} × {n}");
        }
        #[allow(deprecated)] // the NdArray backend is kept on request
        let nd = Device::ndarray();
        let x = Tensor::<2>::zeros([2, 2], &nd);
        assert!(super::linear(&x, &x).is_none());
    }
}
