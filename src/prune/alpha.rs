//! AlphaPruning (Lu et al., NeurIPS 2024), as the NeuroAL authors' `--top_up alpha` computes it
//! (`get_alpha_sparsity_distribution`, `ww_sparsity`, `net_esd_estimator` with `xmin_peak`):
//! each weight matrix's empirical spectral density, the eigenvalues of WᵀW, has a power-law
//! tail whose exponent α (Hill estimator, the xmin picked by the best Kolmogorov–Smirnov fit
//! around the density's peak) says how well trained the matrix is: a heavier tail (smaller α),
//! a denser layer. α is averaged per block, mapped linearly onto [1 − ε, 1 + ε] and rescaled so
//! that the weights pruned add up to the target.
//!
//! The arithmetic is theirs, in f32 as torch runs it; the singular values come from faer (f32),
//! torch's from LAPACK, so α can differ in the last digits.

use faer::MatRef;

use crate::bail;
use crate::io::error::Result;
use crate::prune::spread::numpy_mean;

/// The histogram's bins over log10 of the eigenvalues, as theirs.
const BINS: usize = 100;

/// α of a weight [rows, cols] (row-major f32), from its singular values squared.
pub fn alpha_peak(weight: &[f32], rows: usize, cols: usize) -> Result<f64> {
    let w = MatRef::from_row_major_slice(weight, rows, cols);
    let singular = w.singular_values().map_err(|e| crate::err!("AlphaPruning: the SVD did not converge ({e:?})"))?;
    let mut eigs: Vec<f32> = singular.iter().map(|s| s * s).collect();
    eigs.sort_by(f32::total_cmp);
    alpha_of_eigenvalues(&eigs)
}

/// Their Hill estimate over ascending eigenvalues `eigs`: for each candidate xmin from the
/// smallest up to 1.5 times the density's peak, α = 1 + n / (Σ log λ_i≥xmin − n log xmin) and the
/// KS distance D of the fitted tail; the α of the least D (the first on a tie). Their lower bound
/// compares eigenvalues with log10(0.95 · peak), a log against a value, which keeps every
/// candidate below the peak: kept, as it decides which α they report.
pub fn alpha_of_eigenvalues(eigs: &[f32]) -> Result<f64> {
    let n_all = eigs.len();
    if n_all < 2 {
        bail!("AlphaPruning: a weight with {n_all} singular value has no spectral tail to fit");
    }
    if eigs.iter().any(|&e| !(e.is_finite() && e > 0.0)) {
        bail!("AlphaPruning: a weight has a zero or non-finite singular value; its spectrum has no power-law tail");
    }
    let logs: Vec<f32> = eigs.iter().map(|e| e.ln()).collect();
    let log10: Vec<f32> = eigs.iter().map(|e| e.log10()).collect();
    let (min_e, max_e) = (log10[0], log10[n_all - 1]);
    let peak_bin = peak(&log10, min_e, max_e);
    let boundary = linspace(min_e, max_e, BINS + 1)[peak_bin];
    let xmin2 = 10f32.powf(boundary);
    let xmin_min = (0.95f32 * xmin2).log10();
    let xmin_max = 1.5f32 * xmin2;
    let mut alphas = vec![0f32; n_all - 1];
    let mut ds = vec![1f32; n_all - 1];
    for (i, &xmin) in eigs[..n_all - 1].iter().enumerate() {
        if xmin < xmin_min {
            continue;
        }
        if xmin > xmin_max {
            break;
        }
        let n = (n_all - i) as f32;
        let tail_logs: f32 = logs[i..].iter().sum();
        let alpha = 1.0 + n / (tail_logs - n * logs[i]);
        alphas[i] = alpha;
        if alpha > 1.0 {
            ds[i] = eigs[i..]
                .iter()
                .enumerate()
                .map(|(k, &e)| (1.0 - (e / xmin).powf(-alpha + 1.0) - k as f32 / n).abs())
                .fold(f32::NEG_INFINITY, f32::max);
        }
    }
    let best = (0..ds.len()).fold(0, |best, i| if ds[i] < ds[best] { i } else { best });
    Ok(alphas[best] as f64)
}

/// torch.histc's fullest bin (the first of equal counts) over [min, max].
fn peak(values: &[f32], min: f32, max: f32) -> usize {
    let mut counts = [0usize; BINS];
    for &v in values {
        let pos = if max > min { ((v - min) * BINS as f32 / (max - min)) as usize } else { 0 };
        counts[pos.min(BINS - 1)] += 1;
    }
    (0..BINS).fold(0, |best, i| if counts[i] > counts[best] { i } else { best })
}

/// torch.linspace in f32: the first half from the start, the second from the end.
fn linspace(start: f32, end: f32, steps: usize) -> Vec<f32> {
    let step = (end - start) / (steps - 1) as f32;
    let half = steps / 2;
    (0..steps).map(|i| if i < half { start + step * i as f32 } else { end - step * (steps - i - 1) as f32 }).collect()
}

/// Block sparsities from each block's α (the mean of its linears'), `params[b]` weights in
/// block b, target `s` and ε: α mapped linearly onto [1 − ε, 1 + ε] (the largest α, the
/// sparsest block), then all scaled so that Σ params·ratio = s · Σ params, in f64 as theirs
/// (whose Σ params · s is rounded to f32 first).
pub fn alpha_block_sparsities(alphas: &[f64], params: &[f64], s: f64, epsilon: f64) -> Vec<f64> {
    let (s1, s2) = (1.0 - epsilon, 1.0 + epsilon);
    let (min, max) = crate::prune::spread::min_max(alphas);
    let ratios: Vec<f64> =
        alphas.iter().map(|&a| if max > min { (a - min) / (max - min) * (s2 - s1) + s1 } else { 1.0 }).collect();
    let total: f64 = params.iter().sum();
    let weighted: f64 = params.iter().zip(&ratios).map(|(p, r)| p * r).sum();
    let scaler = ((total as f32) * (s as f32)) as f64 / weighted;
    ratios.iter().map(|r| r * scaler).collect()
}

/// A block's α: the mean of its linears' (numpy's mean, as theirs).
pub fn block_alpha(linear_alphas: &[f64]) -> f64 {
    numpy_mean(linear_alphas)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// By hand: blocks of α 2, 3, 4 and 1, 1, 2 M weights, s = 0.5, ε = 0.2: ratios 0.8, 1.0, 1.2
    /// → Σ p·r = 0.8 + 1.0 + 2.4 = 4.2, scaler 0.5 · 4 / 4.2 → 0.38095…, 0.47619…, 0.57142….
    #[test]
    fn block_sparsities_by_hand() {
        let got = alpha_block_sparsities(&[2.0, 3.0, 4.0], &[1e6, 1e6, 2e6], 0.5, 0.2);
        let want = [0.8 * 2.0 / 4.2, 2.0 / 4.2, 1.2 * 2.0 / 4.2];
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-12, "{got:?}");
        }
        let weighted: f64 = got.iter().zip([1e6, 1e6, 2e6]).map(|(r, p)| r * p).sum();
        assert!((weighted / 4e6 - 0.5).abs() < 1e-12);
    }

    /// A pure power law: eigenvalues x_k = (1 − k/N)^(−1/(α−1)) for α = 3 (a Pareto sample by its
    /// quantiles): the estimate is near 3.
    #[test]
    fn a_power_law_gives_its_exponent() {
        let n = 2000;
        let mut eigs: Vec<f32> = (0..n).map(|k| (1.0 - k as f64 / n as f64).powf(-0.5) as f32).collect();
        eigs.sort_by(f32::total_cmp);
        let a = alpha_of_eigenvalues(&eigs).unwrap();
        assert!((a - 3.0).abs() < 0.15, "{a}");
        assert!(alpha_of_eigenvalues(&[1.0]).is_err());
        assert!(alpha_of_eigenvalues(&[0.0, 1.0, 2.0]).is_err());
    }

    #[test]
    fn linspace_and_histogram_follow_torch() {
        let l = linspace(0.0, 1.0, 11);
        assert_eq!(l[0], 0.0);
        assert_eq!(l[10], 1.0);
        assert!((l[3] - 0.3).abs() < 1e-7);
        // The maximum falls in the last bin; the fullest bin wins, the first on a tie.
        assert_eq!(peak(&[0.0, 0.5, 0.5, 1.0], 0.0, 1.0), 50);
        assert_eq!(peak(&[0.0, 1.0], 0.0, 1.0), 0);
    }
}
