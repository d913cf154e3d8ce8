//! DSnoT (Zhang et al., ICLR 2024), as the NeuroAL authors' `prune_DSnoT` computes it: a
//! training-free refinement of a pruned linear's mask. Per output row, the reconstruction error
//! is the expected change of the row's output, Σ over pruned j of W_ij·E[x_j]; while it is above
//! the threshold, one pruned weight is regrown and one kept weight pruned, each picked to pull
//! the error towards zero, for at most `cycles` cycles.
//!
//! The rules, theirs to the letter: the weight regrown is the next of the pruned ones sorted by
//! W_ij·E[x_j]/Var[x_j] (from the largest when the error is positive, from the smallest
//! otherwise); the weight pruned is the next of the kept ones, those of negative W_ij·E[x_j] in
//! ascending Wanda score, then those of positive W_ij·E[x_j] in descending Wanda score (taken from
//! the front when the error is ≥ 0, from the back when it is negative). A row stops once its error
//! is at most the threshold (their default, without the same-sign condition); every row walks as
//! many cycles as the last row still changing, and a row that stopped goes on setting the weights
//! its walk reaches (pruned for the regrowing side, kept for the pruning side), as their
//! scatters do. A walk that would leave its list ends the row's walk (their code would fail).

use rayon::prelude::*;

/// DSnoT's settings: `--dsnot-cycles`, `--dsnot-threshold`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Dsnot {
    pub cycles: usize,
    pub threshold: f32,
}

/// What one linear's refinement reads: its dense weight [rows · cols] (f32, row-major) and, per
/// input channel, their `sum_metric_row` (Σx / windows), Wanda's `scaler_row` (Σx² / windows)
/// and the inputs' variance (the mean over windows of each window's variance).
pub struct Inputs<'a> {
    pub weight: &'a [f32],
    pub cols: usize,
    pub mean: &'a [f32],
    pub scaler: &'a [f32],
    pub variance: &'a [f32],
}

/// The walks of one row: its lists and pointers, and the error it pulls to zero.
#[derive(Clone)]
struct Row {
    metric: Vec<f32>,
    regrow_order: Vec<usize>,
    prune_order: Vec<usize>,
    regrow_at: [isize; 2],
    prune_at: [isize; 2],
    error: f32,
    updating: bool,
    walking: bool,
}

impl Dsnot {
    /// Refines `pruned` (true = pruned; rows of `x.cols`) in place; returns how many weights
    /// changed state.
    pub fn refine(&self, x: &Inputs, pruned: &mut [bool]) -> usize {
        let cols = x.cols;
        let rows: Vec<Row> = pruned.par_chunks(cols).enumerate().map(|(r, mask)| self.start(x, r, mask)).collect();
        // The cycle at which each row stops changing (`cycles` if it never does): all rows walk
        // as many cycles as the last one.
        let stops: Vec<usize> = rows
            .par_iter()
            .zip(pruned.par_chunks(cols))
            .map(|(row, mask)| {
                let (mut row, mut mask) = (row.clone(), mask.to_vec());
                (1..=self.cycles).find(|_| !self.cycle(&mut row, &mut mask)).unwrap_or(self.cycles)
            })
            .collect();
        let total = stops.iter().copied().max().unwrap_or(0).max(1).min(self.cycles);
        pruned
            .par_chunks_mut(cols)
            .zip(rows)
            .map(|(mask, mut row)| {
                let before = mask.to_vec();
                for _ in 0..total {
                    self.cycle(&mut row, mask);
                }
                mask.iter().zip(&before).filter(|(a, b)| a != b).count()
            })
            .sum()
    }

    /// A row's lists, from its dense weights and base mask.
    fn start(&self, x: &Inputs, r: usize, mask: &[bool]) -> Row {
        let cols = x.cols;
        let w = &x.weight[r * cols..(r + 1) * cols];
        let metric: Vec<f32> = w.iter().zip(x.mean).map(|(&w, &m)| w * m).collect();
        // The error: the pruned weights' metric summed (in f64, rounded to f32).
        let error = metric.iter().zip(mask).filter(|(_, p)| **p).map(|(&m, _)| m as f64).sum::<f64>() as f32;
        let regrowing: Vec<f32> = (0..cols).map(|j| if mask[j] { metric[j] } else { 0.0 } / x.variance[j]).collect();
        let regrow_order = stable_ascending(&regrowing);
        // The kept weights in ascending Wanda score, then reordered by the metric's sign.
        let wanda: Vec<f32> =
            (0..cols).map(|j| if mask[j] { f32::INFINITY } else { w[j].abs() * x.scaler[j].sqrt() }).collect();
        let kept = mask.iter().filter(|p| !**p).count();
        let by_wanda: Vec<usize> = stable_ascending(&wanda).into_iter().take(kept).collect();
        let prune_order = reorder(&by_wanda.iter().map(|&j| metric[j]).collect::<Vec<_>>())
            .into_iter()
            .map(|i| by_wanda[i])
            .collect();
        Row {
            metric,
            regrow_at: [0, cols as isize - 1],
            prune_at: [0, kept as isize - 1],
            regrow_order,
            prune_order,
            error,
            updating: true,
            walking: true,
        }
    }

    /// One cycle of one row; whether the row is still changing.
    fn cycle(&self, row: &mut Row, mask: &mut [bool]) -> bool {
        if !row.walking {
            return false;
        }
        let grow_side = (row.error > 0.0) as usize;
        let prune_side = (row.error < 0.0) as usize;
        let (g, p) = (row.regrow_at[grow_side], row.prune_at[prune_side]);
        if g < 0 || g as usize >= row.regrow_order.len() || p < 0 || p as usize >= row.prune_order.len() {
            row.walking = false;
            row.updating = false;
            return false;
        }
        let (grow, prune) = (row.regrow_order[g as usize], row.prune_order[p as usize]);
        let step = [1, -1];
        row.regrow_at[grow_side] += step[grow_side];
        row.prune_at[prune_side] += step[prune_side];
        row.updating = row.updating && row.error.abs() > self.threshold;
        mask[prune] = row.updating;
        mask[grow] = !row.updating;
        if row.updating {
            row.error += row.metric[prune];
            row.error -= row.metric[grow];
        }
        row.updating
    }
}

/// Indices in ascending order of `v`, equal values in index order, NaN last (torch's stable sort).
fn stable_ascending(v: &[f32]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..v.len()).collect();
    order.sort_by(|&a, &b| match (v[a].is_nan(), v[b].is_nan()) {
        (false, false) => v[a].partial_cmp(&v[b]).unwrap_or(std::cmp::Ordering::Equal),
        (x, y) => x.cmp(&y),
    });
    order
}

/// Their `return_reorder_indice` of one row: the positions of the negative values ascending,
/// from the front, and of the positive values descending, at the back; positions left between
/// them (values exactly 0) are 0.
fn reorder(v: &[f32]) -> Vec<usize> {
    let n = v.len();
    let negative: Vec<usize> = (0..n).filter(|&i| v[i] < 0.0).collect();
    let positive: Vec<usize> = (0..n).filter(|&i| v[i] > 0.0).collect();
    let mut out = vec![0; n];
    for (i, &j) in negative.iter().enumerate() {
        out[i] += j;
    }
    for (i, &j) in positive.iter().rev().enumerate() {
        out[n - positive.len() + i] += j;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reorder_is_theirs() {
        // Negatives' positions ascending at the front, positives' descending at the back.
        assert_eq!(reorder(&[1.0, -2.0, 3.0]), vec![1, 2, 0]);
        assert_eq!(reorder(&[-2.0, 2.0, -4.0]), vec![0, 2, 1]);
        // A zero leaves position 0 between them.
        assert_eq!(reorder(&[-1.0, 0.0, 5.0, 2.0]), vec![0, 0, 3, 2]);
    }

    /// One row by hand. W = [4, −1, 2, 1], E[x] = [1, 1, 1, 1], Var = 1, ‖x‖ = 1, base mask
    /// prunes columns 1 and 3 (metric −1 and 1): error 0 + … = −1 + 1 = 0 → at most the
    /// threshold at once: nothing changes.
    #[test]
    fn a_row_within_the_threshold_is_left_alone() {
        let d = Dsnot { cycles: 5, threshold: 0.1 };
        let ones = [1f32; 4];
        let x = Inputs { weight: &[4.0, -1.0, 2.0, 1.0], cols: 4, mean: &ones, scaler: &ones, variance: &ones };
        let mut mask = [false, true, false, true];
        assert_eq!(d.refine(&x, &mut mask), 0);
        assert_eq!(mask, [false, true, false, true]);
    }

    /// W = [3, 2, −0.5, 1], E[x] = 1, Var = 1, base mask pruning columns 2 and 3: error −0.5 + 1
    /// = 0.5 > 0.1. The pruned weights by metric/Var, ascending: [2 (−0.5), 0 (0), 1 (0), 3 (1)];
    /// a positive error regrows from the top: column 3. The kept ones in ascending Wanda score
    /// [1, 0], both positive, reordered [0, 1]; an error ≥ 0 prunes from the front: column 0.
    #[test]
    fn a_row_follows_the_rules_cycle_by_cycle() {
        let d = Dsnot { cycles: 1, threshold: 0.1 };
        let ones = [1f32; 4];
        let x = Inputs { weight: &[3.0, 2.0, -0.5, 1.0], cols: 4, mean: &ones, scaler: &ones, variance: &ones };
        let mut mask = [false, false, true, true];
        // One cycle: column 3 regrown, column 0 pruned.
        assert_eq!(d.refine(&x, &mut mask), 2);
        assert_eq!(mask, [true, false, true, false]);
    }
}
