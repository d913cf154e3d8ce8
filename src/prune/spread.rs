//! Sparsity maps, and the spreads that OWL and NeuroAL share: a vector of block or row values
//! turned into sparsities around the target, in the authors' operation order (numpy's pairwise
//! sums), so that their sparsities come out to the bit.

use crate::prune::mask::Sparsity;

/// [block][linear in the family's declared order] → sparsity.
pub type Map = Vec<Vec<Sparsity>>;

/// `s` on every linear (`linears[b]` of block b).
pub fn uniform_map(linears: &[usize], s: f64) -> Map {
    linears.iter().map(|&n| vec![Sparsity::Uniform(s); n]).collect()
}

/// OWL's and NeuroAL's clamp of block sparsities: ≤ 0 → 0.01, ≥ 1 → 0.99.
pub(crate) fn clamp_block(s: f64) -> f64 {
    if s <= 0.0 {
        0.01
    } else if s >= 1.0 {
        0.99
    } else {
        s
    }
}

/// Σx as numpy sums a float64 array (pairwise: eight running sums over blocks of at most 128
/// values, halves above that), so that the authors' sparsities come out to the bit: a
/// sequential sum differs in the last bits, and where in·s lands on an integer (λ 0.2 at 70%
/// on six blocks gives block 0 the sparsity 0.5, which their arithmetic makes
/// 0.4999999999999999) every row's count ⌊in·s⌋ then differs by one.
pub(crate) fn numpy_sum(x: &[f64]) -> f64 {
    const BLOCK: usize = 128;
    let n = x.len();
    if n < 8 {
        x.iter().fold(0.0, |sum, &v| sum + v)
    } else if n <= BLOCK {
        let mut r: [f64; 8] = x[..8].try_into().expect("eight values");
        let whole = n - n % 8;
        for chunk in x[8..whole].chunks_exact(8) {
            for (r, &v) in r.iter_mut().zip(chunk) {
                *r += v;
            }
        }
        let mut sum = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        for &v in &x[whole..] {
            sum += v;
        }
        sum
    } else {
        let half = n / 2 - (n / 2) % 8;
        numpy_sum(&x[..half]) + numpy_sum(&x[half..])
    }
}

pub(crate) fn numpy_mean(x: &[f64]) -> f64 {
    numpy_sum(x) / x.len().max(1) as f64
}

pub(crate) fn min_max(x: &[f64]) -> (f64, f64) {
    (x.iter().cloned().fold(f64::INFINITY, f64::min), x.iter().cloned().fold(f64::NEG_INFINITY, f64::max))
}

/// The block step's and OWL's spread, in the authors' operation order (their
/// get_distribution_block and get_sparsity_owl): v = (x − min x) · (1/(max x − min x) · λ · 2),
/// then v − mean v + (1 − s). A constant x gives v = 1 − s everywhere (no spread to make;
/// theirs divides by zero).
pub(crate) fn spread_blocks(x: &[f64], lambda: f64, s: f64) -> Vec<f64> {
    let (min, max) = min_max(x);
    let v: Vec<f64> = if max > min {
        let scale = 1.0 / (max - min) * lambda * 2.0;
        x.iter().map(|&o| (o - min) * scale).collect()
    } else {
        vec![0.0; x.len()]
    };
    let mean = numpy_mean(&v);
    v.iter().map(|&vi| vi - mean + (1.0 - s)).collect()
}

/// The row step's spread, in the authors' operation order (their get_distribution_row):
/// v = (x − min x)/(max x − min x) · λ · 2, then v − (mean v − (1 − b)).
pub(crate) fn spread_rows(x: &[f64], lambda: f64, b: f64) -> Vec<f64> {
    let (min, max) = min_max(x);
    let v: Vec<f64> = if max > min {
        x.iter().map(|&o| (o - min) / (max - min) * lambda * 2.0).collect()
    } else {
        vec![0.0; x.len()]
    };
    let shift = numpy_mean(&v) - (1.0 - b);
    v.iter().map(|&vi| vi - shift).collect()
}

/// Each block's sparsity on every one of its linears (`linears[b]` of block b).
pub fn block_map(block_sparsities: &[f64], linears: &[usize]) -> Map {
    block_sparsities.iter().zip(linears).map(|(&b, &n)| vec![Sparsity::Uniform(b); n]).collect()
}

/// Helpers for the top-ups' tests.
#[cfg(test)]
pub(crate) mod testing {
    /// `a` equals `b` to 1e-12, value by value.
    pub fn close(a: &[f64], b: &[f64]) {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() < 1e-12, "{a:?} vs {b:?}");
        }
    }
}
