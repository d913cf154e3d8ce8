//! Pruning masks, exact and deterministic. Every pattern reduces to one primitive: in each row
//! of a score matrix, prune the k lowest scores, ties going to the lower column index first
//! (what a stable ascending sort gives). `row` uses k = ⌊in·s⌋ per row, `layer` one row of the
//! flattened matrix, `rows-variable` one k per row, and N:M each group of M inputs as a row.

use burn::tensor::{Int, Tensor, TensorData};
use rayon::prelude::*;

use crate::bail;
use crate::gpu::context::{Gpu, shaders_for};
use crate::io::error::Result;

/// A packed bit set: masks of every layer are held until the checkpoint is written, one bit
/// per weight (a 7B model's masks take 0.8 GB, not 6.5).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bits {
    words: Vec<u64>,
    len: usize,
}

impl Bits {
    pub fn from_flags(flags: impl ExactSizeIterator<Item = bool>) -> Bits {
        let len = flags.len();
        let mut words = vec![0u64; len.div_ceil(64)];
        for (i, f) in flags.enumerate() {
            words[i / 64] |= (f as u64) << (i % 64);
        }
        Bits { words, len }
    }

    /// Rebuilds a bit set from its words, as [`Bits::words`] gave them.
    pub fn from_words(mut words: Vec<u64>, len: usize) -> Bits {
        words.resize(len.div_ceil(64), 0);
        if !len.is_multiple_of(64)
            && let Some(last) = words.last_mut()
        {
            *last &= (1u64 << (len % 64)) - 1;
        }
        Bits { words, len }
    }

    /// Bits of a 0/1 mask's values (non-zero = set), 64 per word on as many cores as there are.
    pub fn from_nonzero(values: &[f32]) -> Bits {
        let mut words = vec![0u64; values.len().div_ceil(64)];
        words.par_iter_mut().zip(values.par_chunks(64)).for_each(|(w, chunk)| {
            *w = chunk.iter().enumerate().fold(0u64, |acc, (i, &v)| acc | ((v != 0.0) as u64) << i);
        });
        Bits { words, len: values.len() }
    }

    pub fn words(&self) -> &[u64] {
        &self.words
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn count_ones(&self) -> usize {
        self.words.iter().map(|w| w.count_ones() as usize).sum()
    }

    pub fn iter(&self) -> impl Iterator<Item = bool> + '_ {
        (0..self.len).map(|i| self.words[i / 64] >> (i % 64) & 1 == 1)
    }

    /// Indices of the set bits, ascending.
    pub fn ones(&self) -> impl Iterator<Item = usize> + '_ {
        self.words.iter().enumerate().flat_map(|(wi, &w)| {
            let mut w = w;
            std::iter::from_fn(move || {
                if w == 0 {
                    return None;
                }
                let bit = w.trailing_zeros() as usize;
                w &= w - 1;
                Some(wi * 64 + bit)
            })
        })
    }
}

/// Flags per value when a GPU packs a mask for reading back: sums of distinct powers of two
/// below 2^16 are exact in f32, whatever order the device adds them in.
const PACKED: usize = 16;

/// A mask [rows, cols] (non-zero = pruned) read back to the host as bits. On a GPU it is packed
/// there first, 16 flags to a value, so 16 times fewer bytes cross the bus (a 7B block's masks:
/// 51 MB instead of 808 MB); the CPU backends' values are already in host memory.
pub fn read_bits(mask: Tensor<2>, what: &str) -> Result<Bits> {
    pack(mask, what)?.read(what)
}

/// A mask on its way to the host: on a GPU, [`pack`] queues the packing and the copy back and
/// returns at once, so a caller can queue more work before [`PackedMask::read`] waits for it.
pub enum PackedMask {
    /// 16 flags to a value, being copied from the device; `n` flags in all.
    Packed { values: crate::gpu::kernels::Reading, n: usize },
    /// Already read: the CPU backends' values are in host memory (and a size that is not a
    /// multiple of 16 is read unpacked).
    Read(Bits),
}

/// Queues the packing of `mask` on a GPU, and its copy to the host right behind it; elsewhere
/// reads it (see [`read_bits`]).
pub fn pack(mask: Tensor<2>, what: &str) -> Result<PackedMask> {
    let n = mask.shape().num_elements();
    let device = mask.device();
    if !crate::gpu::kernels::is_wgpu(&mask) || !n.is_multiple_of(PACKED) {
        return Ok(PackedMask::Read(Bits::from_nonzero(&crate::gpu::tensor::host_f32(mask, what)?)));
    }
    let weights: Vec<f32> = (0..PACKED).map(|i| (1u32 << i) as f32).collect();
    let weights = Tensor::<2>::from_data(TensorData::new(weights, [1, PACKED]), &device);
    let flags = crate::gpu::tensor::to_dtype(mask, burn::tensor::DType::F32)
        .reshape([n / PACKED, PACKED])
        .not_equal_elem(0.0)
        .float();
    Ok(PackedMask::Packed {
        values: crate::gpu::kernels::start_read((flags * weights).sum_dim(1).reshape([n / PACKED])),
        n,
    })
}

impl PackedMask {
    /// The mask as bits, waiting for the device where it is still there.
    pub fn read(self, what: &str) -> Result<Bits> {
        let (values, n) = match self {
            PackedMask::Read(bits) => return Ok(bits),
            PackedMask::Packed { values, n } => (values, n),
        };
        // `finish` checks the count against the packed tensor, and `unpack` against `n`.
        let packed = values.finish().map_err(|e| {
            crate::err!(
                "{what}: reading the result back from the device failed: {}",
                crate::io::error::device_words(&e)
            )
        })?;
        Ok(Bits::from_words(unpack(&packed, n, what)?, n))
    }
}

/// Packed values (16 flags each) as 64-bit words, checked as they are unpacked, on every core:
/// a value that is not 16 flags (a fraction, out of range, NaN) is refused, naming the first.
/// Checking in the unpacking pass instead of a pass of its own on one core took a 7B block's
/// check from about 30 ms to a share of the unpacking (12.6 M values).
fn unpack(packed: &[f32], n: usize, what: &str) -> Result<Vec<u64>> {
    // An integer below 2^16 survives the round trip through u32 (NaN, negatives, fractions and
    // large values do not; -0.0 is 0): no trunc, which is a library call on the SSE2 baseline.
    let flags = |v: f32| {
        let u = v as u32;
        (u < 1 << PACKED && u as f32 == v, u as u64)
    };
    let mut words = vec![0u64; n.div_ceil(64)];
    let bad = words.par_iter_mut().zip(packed.par_chunks(64 / PACKED)).any(|(w, four)| {
        let mut ok = true;
        *w = four.iter().enumerate().fold(0u64, |acc, (i, &v)| {
            let (fine, u) = flags(v);
            ok &= fine;
            acc | u << (PACKED * i)
        });
        !ok
    });
    if bad || packed.len() * PACKED < n {
        match packed.iter().find(|&&v| !flags(v).0) {
            Some(v) => bail!("{what}: the device packed a mask value {v}, not 16 flags"),
            None => bail!("{what}: the device packed {} values for {n} flags", packed.len()),
        }
    }
    Ok(words)
}

/// One pruned linear: its checkpoint name, shape and which weights were zeroed (row-major);
/// `values` holds the new weights (f32, row-major) when the pruner changed the kept ones too.
pub struct LayerMask {
    pub name: String,
    pub shape: [usize; 2],
    pub pruned: Bits,
    pub values: Option<Vec<f32>>,
    /// An expert's linear: the calibration tokens its router sent it (0: none, so it was
    /// calibrated on every token). `None` for the other linears, and where every token went
    /// through every expert (`--moe-calibrate all`).
    pub routed_tokens: Option<usize>,
}

impl LayerMask {
    pub fn fraction(&self) -> f64 {
        self.pruned.count_ones() as f64 / self.pruned.len().max(1) as f64
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Pattern {
    Row,
    Layer,
    RowsVariable,
    NM { n: usize, m: usize },
}

impl Pattern {
    pub fn parse(s: &str) -> Result<Pattern> {
        match s {
            "row" => Ok(Pattern::Row),
            "layer" => Ok(Pattern::Layer),
            "rows-variable" => Ok(Pattern::RowsVariable),
            _ => {
                let parts: Vec<&str> = s.split(':').collect();
                match parts.as_slice() {
                    [n, m] => match (n.parse::<usize>(), m.parse::<usize>()) {
                        (Ok(n), Ok(m)) if n < m && n > 0 => Ok(Pattern::NM { n, m }),
                        _ => bail!("bad --pattern \"{s}\": N:M needs 0 < N < M (e.g. 2:4, 4:8)"),
                    },
                    _ => bail!("bad --pattern \"{s}\" (expected row, layer, or N:M such as 2:4)"),
                }
            }
        }
    }

    /// The `--pattern` value parser: `row`, `layer` or N:M (rows-variable comes from top-ups).
    pub fn from_arg(s: &str) -> std::result::Result<Pattern, String> {
        Pattern::parse(s).map_err(|e| e.0)
    }

    pub fn name(&self) -> String {
        match self {
            Pattern::Row => "row".into(),
            Pattern::Layer => "layer".into(),
            Pattern::RowsVariable => "rows-variable".into(),
            Pattern::NM { n, m } => format!("{n}:{m}"),
        }
    }

    /// The tie order of the authors' masks for this pattern.
    pub fn ties(&self) -> Ties {
        match self {
            Pattern::RowsVariable => Ties::LaterFirst,
            _ => Ties::EarlierFirst,
        }
    }
}

impl std::fmt::Display for Pattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name())
    }
}

pub use crate::gpu::kernels::Ties;

/// How much of one layer to prune: one fraction, or one per output row.
#[derive(Clone, Debug, PartialEq)]
pub enum Sparsity {
    Uniform(f64),
    PerRow(Vec<f64>),
}

/// Pruned count per row under `rows-variable`: row r keeps ⌊(1 − s_r)·in⌋ in f64, as the
/// authors' row step counts: its row sparsities are numpy float64 values, which `torch.tensor`
/// keeps in float64 (a list of Python floats would have been float32). One case is theirs in
/// float32: a layer that keeps a block sparsity their block step clamped (a Python 0.01 or
/// 0.99) on every row; the counts then differ only where in·0.01 or in·0.99 falls within
/// float32 rounding of an integer (in a multiple of 100), which no supported family's width is.
pub fn rows_variable_prune_counts(per_row: &[f64], cols: usize) -> Vec<usize> {
    per_row
        .iter()
        .map(|&s| {
            let keep = ((1.0 - s) * cols as f64).floor() as usize;
            cols - keep.min(cols)
        })
        .collect()
}

/// How many of each row's lowest scores `pattern` at `sparsity` prunes, for the patterns that
/// choose within each row of a weight [rows, cols] (`row`, `rows-variable`); `None` for those
/// that choose across rows (`layer`) or within groups of a row (N:M).
pub fn row_prune_counts(
    pattern: &Pattern,
    sparsity: &Sparsity,
    [rows, cols]: [usize; 2],
) -> Result<Option<Vec<usize>>> {
    Ok(match (pattern, sparsity) {
        (Pattern::Row, Sparsity::Uniform(s)) => Some(vec![(cols as f64 * s).floor() as usize; rows]),
        (Pattern::RowsVariable | Pattern::Row, Sparsity::PerRow(v)) => {
            if v.len() != rows {
                bail!("per-row sparsity has {} entries for {rows} rows", v.len());
            }
            Some(rows_variable_prune_counts(v, cols))
        }
        (Pattern::RowsVariable, Sparsity::Uniform(s)) => Some(rows_variable_prune_counts(&vec![*s; rows], cols)),
        _ => None,
    })
}

/// N:M groups tile each row: an input width that M does not divide is refused.
pub fn check_group_width(n: usize, m: usize, cols: usize) -> Result<()> {
    if !cols.is_multiple_of(m) {
        bail!("{n}:{m} pattern needs the input width ({cols}) to be a multiple of {m}");
    }
    Ok(())
}

/// Mask (1.0 = prune) of `scores` [out, in] under `pattern` at `sparsity`.
pub fn mask(gpu: Option<&Gpu>, scores: Tensor<2>, pattern: &Pattern, sparsity: &Sparsity) -> Result<Tensor<2>> {
    let [rows, cols] = scores.dims();
    if let Some(k) = row_prune_counts(pattern, sparsity, [rows, cols])? {
        return select_lowest(gpu, scores, &k, pattern.ties());
    }
    Ok(match (pattern, sparsity) {
        (Pattern::Layer, Sparsity::Uniform(s)) => {
            let k = ((rows * cols) as f64 * s).floor() as usize;
            select_lowest(gpu, scores.reshape([1, rows * cols]), &[k], Ties::EarlierFirst)?.reshape([rows, cols])
        }
        (Pattern::NM { n, m }, _) => {
            check_group_width(*n, *m, cols)?;
            let groups = rows * cols / m;
            let groups_k = vec![*n; groups];
            select_lowest(gpu, scores.reshape([groups, *m]), &groups_k, Ties::EarlierFirst)?.reshape([rows, cols])
        }
        // The row patterns returned above: what is left is `layer` with one sparsity per row.
        (other, _) => bail!("pattern {} takes one sparsity per layer", other.name()),
    })
}

/// In each row r, marks the `k[r]` lowest scores (equal ones in the order `ties` gives) with
/// 1.0. On a wgpu device this runs the radix-select shader; on the CPU backends a host selection
/// (`select_lowest_host`). Both are tested against the twin in burn ops.
pub fn select_lowest(gpu: Option<&Gpu>, scores: Tensor<2>, k: &[usize], ties: Ties) -> Result<Tensor<2>> {
    if let Some(shaders) = shaders_for(gpu, &scores) {
        return Ok(shaders.select_lowest(scores, k, ties));
    }
    select_lowest_host(scores, k, ties)
}

/// The CPU backends' path: their tensors live in host memory, so each row's k-th smallest
/// score comes from a linear-time selection instead of the twin's full sort (the sort was
/// a tenth of a CPU prune). Same rule as the twin and the shader, tested against both.
pub fn select_lowest_host(scores: Tensor<2>, k: &[usize], ties: Ties) -> Result<Tensor<2>> {
    let [rows, cols] = scores.dims();
    let device = scores.device();
    let values = crate::gpu::tensor::host_f32(scores, "pruning scores")?;
    let mut mask = vec![0f32; rows * cols];
    // Rows are independent: each is selected on its own core, with the same result in any order.
    mask.par_chunks_exact_mut(cols).zip(values.par_chunks_exact(cols)).enumerate().for_each_init(
        || Vec::with_capacity(cols),
        |scratch, (r, (out, row))| {
            let k = k[r].min(cols);
            if k == 0 {
                return;
            }
            let (tau, bound) = row_threshold(row.iter().copied(), k, scratch, ties);
            let (out_head, out_tail) = out.split_at_mut(bound);
            let (head_ties, tail_ties) = (ties == Ties::EarlierFirst, ties == Ties::LaterFirst);
            for (o, &v) in out_head.iter_mut().zip(&row[..bound]) {
                *o = if v < tau || (head_ties && v == tau) { 1.0 } else { 0.0 };
            }
            for (o, &v) in out_tail.iter_mut().zip(&row[bound..]) {
                *o = if v < tau || (tail_ties && v == tau) { 1.0 } else { 0.0 };
            }
        },
    );
    Ok(Tensor::from_data(TensorData::new(mask, [rows, cols]), &device))
}

/// A row's k-th lowest score τ (k ≥ 1, in `f32::total_cmp` order) and the column bound of
/// the scores equal to τ that are pruned: every score below τ goes, and those equal to it in
/// columns below the bound, the first by column, as many as make k. So a row's verdicts are
/// `score <= τ` below the bound and `score < τ` from it: two loops without branches, where a
/// branch per column (a row is pruned at random, so about half of them mispredict) took most
/// of a CPU row pruning. Where every score equal to τ is pruned (scores of distinct values),
/// the bound is the row's length.
///
/// With [`Ties::LaterFirst`] the ties pruned are the last ones by column: the verdicts are
/// `score < τ` below the bound and `score <= τ` from it, and where every tie is pruned the bound
/// is 0.
///
/// Scores are selected by their bits as u32 keys: for scores whose sign bit is clear (every
/// score |w|·√s, and +NaN), that order is `total_cmp`'s, and integer comparisons make the
/// selection faster. A row with a sign bit set takes `total_cmp` itself.
pub(crate) fn row_threshold(
    scores: impl Iterator<Item = f32> + Clone,
    k: usize,
    scratch: &mut Vec<u32>,
    ties_order: Ties,
) -> (f32, usize) {
    let later_first = ties_order == Ties::LaterFirst;
    scratch.clear();
    scratch.extend(scores.clone().map(f32::to_bits));
    let tau = if scratch.iter().all(|&b| b >> 31 == 0) {
        f32::from_bits(*scratch.select_nth_unstable(k - 1).1)
    } else {
        let mut values: Vec<f32> = scores.clone().collect();
        *values.select_nth_unstable_by(k - 1, f32::total_cmp).1
    };
    let (below, equal) = scores.clone().fold((0, 0), |(b, e), v| (b + usize::from(v < tau), e + usize::from(v == tau)));
    let ties = k - below;
    if ties == equal {
        return (tau, if later_first { 0 } else { scratch.len() });
    }
    if later_first {
        // The column of the first tie pruned, after the equal − ties kept (none where τ is NaN).
        let first = equal.checked_sub(ties).and_then(|kept| scores.enumerate().filter(|&(_, v)| v == tau).nth(kept));
        return (tau, first.map_or(scratch.len(), |(c, _)| c));
    }
    // The column of the last tie pruned (none where τ is NaN, which equals nothing: the callers
    // refuse non-finite weights and statistics before they select).
    // `ties` is at least 1: τ is the k-th lowest, so fewer than k scores lie below it.
    let last = scores.enumerate().filter(|&(_, v)| v == tau).nth(ties - 1);
    (tau, last.map_or(0, |(c, _)| c + 1))
}

/// The CPU twin, in burn tensor ops: the k-th smallest value τ of each row comes from a sort of
/// values (deterministic whatever the sort's stability); everything below τ is pruned, and of
/// the scores equal to τ the first k − #{< τ} by column index; with [`Ties::LaterFirst`], the
/// same on the columns reversed.
pub fn select_lowest_reference(scores: Tensor<2>, k: &[usize], ties: Ties) -> Tensor<2> {
    if ties == Ties::LaterFirst {
        return select_lowest_reference(scores.flip([1]), k, Ties::EarlierFirst).flip([1]);
    }
    let [rows, cols] = scores.dims();
    let device = scores.device();
    let kth: Vec<i64> = k.iter().map(|&k| k.clamp(1, cols) as i64 - 1).collect();
    let any: Vec<f32> = k.iter().map(|&k| if k > 0 { 1.0 } else { 0.0 }).collect();
    let kth = Tensor::<2, Int>::from_data(TensorData::new(kth, [rows, 1]), &device);
    let k_t = Tensor::<2, Int>::from_data(
        TensorData::new(k.iter().map(|&k| k as i64).collect::<Vec<_>>(), [rows, 1]),
        &device,
    );
    let tau = scores.clone().sort(1).gather(1, kth).expand([rows, cols]);
    let below = scores.clone().lower(tau.clone());
    let equal = scores.equal(tau);
    let ties_allowed = k_t - below.clone().int().sum_dim(1);
    let tie_rank = equal.clone().int().cumsum(1);
    let tie_pruned = equal.bool_and(tie_rank.lower_equal(ties_allowed.expand([rows, cols])));
    let any = Tensor::<2>::from_data(TensorData::new(any, [rows, 1]), &device);
    below.bool_or(tie_pruned).float() * any
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Words by hand from packed values, and every kind of value that is not 16 flags refused
    /// with the first one named, wherever it lies.
    #[test]
    fn packed_masks_unpack_to_words_and_bad_values_are_named() {
        // 96 flags: 6 values, words of 4 values each (the last word half full).
        let packed = [1.0, 0.0, 32768.0, 65535.0, 3.0, 0.0];
        let words = unpack(&packed, 96, "l").unwrap();
        assert_eq!(words, vec![1 | 32768 << 32 | 65535 << 48, 3]);
        let bits = Bits::from_words(words, 96);
        assert_eq!(
            bits.ones().collect::<Vec<_>>(),
            [&[0usize, 47][..], &(48..64).collect::<Vec<_>>(), &[64, 65]].concat()
        );
        for bad in [0.5f32, -1.0, 65536.0, f32::NAN, f32::INFINITY] {
            for at in [0, 3, 5] {
                let mut p = packed.to_vec();
                p[at] = bad;
                if at == 0 {
                    p[5] = 2.5; // a second bad value: the first is named
                }
                let e = unpack(&p, 96, "l").unwrap_err().to_string();
                let first = p.iter().find(|&&v| !((0.0..65536.0).contains(&v) && v.fract() == 0.0)).unwrap();
                assert_eq!(e, format!("l: the device packed a mask value {first}, not 16 flags"));
            }
        }
        // A large mask, a bad value deep in it.
        let mut big = vec![7.0f32; 1 << 20];
        big[777_777] = 1.5;
        assert!(unpack(&big, 16 << 20, "l").unwrap_err().to_string().contains("value 1.5"));
        big[777_777] = 7.0;
        assert_eq!(Bits::from_words(unpack(&big, 16 << 20, "l").unwrap(), 16 << 20).count_ones(), 3 << 20);
        assert!(unpack(&big, (16 << 20) + 16, "l").unwrap_err().to_string().contains("packed 1048576 values for"));
        // -0.0 is no flag set, as 0.0.
        assert_eq!(unpack(&[-0.0, 0.0, -0.0, 1.0], 64, "l").unwrap(), vec![1 << 48]);
    }

    /// The k-th lowest in `total_cmp` order and the ties to take, whether the row's keys are
    /// compared as integers (no sign bit set) or as floats (a negative score, or -0.0).
    #[test]
    fn row_thresholds_follow_total_order() {
        let mut scratch = Vec::new();
        let mut check = |row: &[f32], k: usize, want: (f32, usize)| {
            let (tau, bound) = row_threshold(row.iter().copied(), k, &mut scratch, Ties::EarlierFirst);
            assert_eq!((tau.to_bits(), bound), (want.0.to_bits(), want.1), "{row:?} k {k}");
        };
        check(&[0.5, 0.25, 0.25, 1.0, 0.0], 3, (0.25, 5));
        check(&[0.5, 0.25, 0.25, 1.0, 0.0], 2, (0.25, 2));
        check(&[0.25, 0.5, 0.25, 1.0, 0.25, 0.0, 0.25], 3, (0.25, 3));
        check(&[0.5, 0.25, 0.75, 1.0, 0.0], 2, (0.25, 5));
        // A NaN threshold compares with nothing (no score is below or equal to it): the callers
        // refuse non-finite weights and statistics before they select.
        check(&[3.0, f32::NAN, 1.0, f32::INFINITY], 4, (f32::NAN, 0));
        check(&[3.0, f32::NAN, 1.0, f32::INFINITY], 3, (f32::INFINITY, 4));
        // -0.0 and 0.0 are equal as floats: both count as ties of either.
        check(&[0.5, -0.25, 0.0, -0.0, 2.0], 2, (-0.0, 3));
        check(&[0.5, -0.25, 0.0, -0.0, 2.0], 3, (0.0, 5));
        check(&[0.5, -0.25, 0.0, -1.0, 2.0], 1, (-1.0, 5));
        // The last ties first: `< τ` below the bound, `<= τ` from it.
        let mut later = |row: &[f32], k: usize, want: (f32, usize)| {
            let (tau, bound) = row_threshold(row.iter().copied(), k, &mut scratch, Ties::LaterFirst);
            assert_eq!((tau.to_bits(), bound), (want.0.to_bits(), want.1), "{row:?} k {k}, later ties first");
        };
        later(&[0.25, 0.5, 0.25, 1.0, 0.25, 0.0, 0.25], 3, (0.25, 4));
        later(&[0.25, 0.5, 0.25, 1.0, 0.25, 0.0, 0.25], 2, (0.25, 6));
        later(&[0.5, 0.25, 0.25, 1.0, 0.0], 3, (0.25, 0));
        later(&[3.0, f32::NAN, 1.0, f32::INFINITY], 4, (f32::NAN, 4));
    }
    use burn::tensor::Device;

    fn run(scores: Vec<f32>, shape: [usize; 2], p: &Pattern, s: Sparsity) -> Vec<f32> {
        let d = Device::flex();
        let t = Tensor::<2>::from_data(TensorData::new(scores, shape), &d);
        mask(None, t, p, &s).unwrap().into_data().try_to_vec::<f32>().unwrap()
    }

    #[test]
    fn row_masks_prune_floor_of_in_times_s_with_ties_to_the_lower_index() {
        // Row 0 all ties: the first two columns go. Row 1: the two lowest.
        let m = run(vec![1., 1., 1., 1., 1., 4., 3., 2., 9., 0.5], [2, 5], &Pattern::Row, Sparsity::Uniform(0.5));
        assert_eq!(m, vec![1., 1., 0., 0., 0., 0., 0., 1., 0., 1.]);
        // ⌊5·0.39⌋ = 1 per row.
        let m = run(vec![3., 1., 1., 2., 5., 2., 2., 2., 2., 2.], [2, 5], &Pattern::Row, Sparsity::Uniform(0.39));
        assert_eq!(m, vec![0., 1., 0., 0., 0., 1., 0., 0., 0., 0.]);
    }

    #[test]
    fn layer_masks_use_one_threshold() {
        let m = run(vec![5., 6., 7., 8., 1., 2., 3., 4.], [2, 4], &Pattern::Layer, Sparsity::Uniform(0.5));
        assert_eq!(m, vec![0., 0., 0., 0., 1., 1., 1., 1.]);
    }

    #[test]
    fn n_m_prunes_n_of_every_m() {
        let m = run(vec![4., 3., 2., 1., 1., 1., 1., 1.], [1, 8], &Pattern::NM { n: 2, m: 4 }, Sparsity::Uniform(0.5));
        assert_eq!(m, vec![0., 0., 1., 1., 1., 1., 0., 0.]);
    }

    #[test]
    fn rows_variable_rounds_in_f64() {
        // The authors' count, run in torch 2.5.1 on numpy float64 sparsities:
        // (torch.tensor([1 - x for x in s]) * in).long() keeps [7, 10, 0, 7, 1] of 10 and 59 of
        // 100 for s = 0.41. In f32 (a list of Python floats) it would keep 2 of 10 for s = 0.8
        // (f32(f32(0.2)·10) = 2.0, where f64 gives 1.9999999999999996) and 58 of 100 for 0.41.
        assert_eq!(rows_variable_prune_counts(&[0.3, 0.0, 0.99, 0.25, 0.8], 10), vec![3, 0, 10, 3, 9]);
        assert_eq!(rows_variable_prune_counts(&[0.41], 100), vec![41]);
        let m = run(
            vec![1., 2., 3., 4., 4., 3., 2., 1.],
            [2, 4],
            &Pattern::RowsVariable,
            Sparsity::PerRow(vec![0.25, 0.75]),
        );
        assert_eq!(m, vec![1., 0., 0., 0., 0., 1., 1., 1.]);
    }

    #[test]
    fn patterns_parse_or_explain() {
        assert_eq!(Pattern::parse("2:4").unwrap(), Pattern::NM { n: 2, m: 4 });
        assert!(Pattern::parse("4:2").is_err());
        assert!(Pattern::parse("diagonal").is_err());
    }
}

#[cfg(test)]
mod bits_tests {
    use super::*;

    #[test]
    fn bits_round_trip() {
        let flags: Vec<bool> = (0..200).map(|i| i % 3 == 0 || i == 127 || i == 128).collect();
        let b = Bits::from_flags(flags.iter().copied());
        assert_eq!(b.iter().collect::<Vec<_>>(), flags);
        assert_eq!(b.count_ones(), flags.iter().filter(|&&f| f).count());
        let want: Vec<usize> = (0..200).filter(|&i| flags[i]).collect();
        assert_eq!(b.ones().collect::<Vec<_>>(), want);
    }
}

/// How many weights of a [rows, cols] layer `mask` prunes under `pattern` at `sparsity`: the
/// exact count the engine must achieve, with the same rounding as [`mask`].
pub fn expected_pruned(pattern: &Pattern, sparsity: &Sparsity, [rows, cols]: [usize; 2]) -> usize {
    match (pattern, sparsity) {
        (Pattern::Row, Sparsity::Uniform(s)) => rows * (cols as f64 * s).floor() as usize,
        (Pattern::Layer, Sparsity::Uniform(s)) => ((rows * cols) as f64 * s).floor() as usize,
        (Pattern::RowsVariable, Sparsity::Uniform(s)) => rows_variable_prune_counts(&vec![*s; rows], cols).iter().sum(),
        (_, Sparsity::PerRow(v)) if !matches!(pattern, Pattern::NM { .. }) => {
            rows_variable_prune_counts(v, cols).iter().sum()
        }
        (Pattern::NM { n, m }, _) => rows * cols / m * n,
        (_, Sparsity::PerRow(v)) => rows_variable_prune_counts(v, cols).iter().sum(),
    }
}
