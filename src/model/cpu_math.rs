//! Elementwise f32 math for the CPU backends, on host slices, written so that the compiler
//! vectorizes it: the causal softmax of `cpu_attention` and SiLU. Both need exp, and the scalar
//! libm `expf` they called before was an eighth of a CPU prune (burn-flex's sigmoid calls it per
//! element too).
//!
//! `exp` is branch-free (Cody–Waite range reduction, a degree-7 Taylor polynomial, the power of
//! two built from its bits), so a loop over it becomes vector code. Each public function is
//! compiled for AVX-512, for AVX2 and for the baseline, and picks the widest the CPU has. None of
//! them uses fused multiply-adds and every reduction has a fixed lane order, so all three copies
//! give the same bits.

/// Defines `pub fn $name` running `$generic` compiled for the widest vector unit this CPU has.
/// `$generic` must be `#[inline(always)]` so that each copy is vectorized for its own unit.
macro_rules! widest {
    ($(#[$doc:meta])* pub fn $name:ident($($arg:ident: $ty:ty),*) = $generic:ident) => {
        widest! { $(#[$doc])* pub fn $name($($arg: $ty),*) -> () = $generic }
    };
    ($(#[$doc:meta])* pub fn $name:ident($($arg:ident: $ty:ty),*) -> $ret:ty = $generic:ident) => {
        $(#[$doc])*
        pub fn $name($($arg: $ty),*) -> $ret {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                fn avx512($($arg: $ty),*) -> $ret {
                    $generic($($arg),*)
                }
                #[target_feature(enable = "avx2")]
                fn avx2($($arg: $ty),*) -> $ret {
                    $generic($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: this CPU has the feature the function was compiled for.
                    return unsafe { avx512($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2") {
                    // SAFETY: as above.
                    return unsafe { avx2($($arg),*) };
                }
            }
            $generic($($arg),*)
        }
    };
}

/// Lanes of the reductions: one AVX-512 register of f32.
const LANES: usize = 16;

/// eˣ within 2 ulp for x ≥ −88; +∞ above 88.72; 0 below −88 (where eˣ < 6.1e-39, a subnormal).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 = LN2_HI + LN2_LO, LN2_HI with 9 significant bits, so n·LN2_HI is exact.
    const LN2_HI: f32 = 355.0 / 512.0;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // 1.5·2²³: adding it rounds to an integer (ties to even), held in the low mantissa bits.
    const SHIFTER: f32 = 12_582_912.0;
    let xc = x.clamp(-88.0, 88.8);
    let shifted = xc * LOG2E + SHIFTER;
    let n = shifted - SHIFTER;
    // n ∈ [−127, 128], from the low bits of `shifted`.
    let ni = shifted.to_bits().wrapping_sub(SHIFTER.to_bits()) as i32;
    let r = (xc - n * LN2_HI) - n * LN2_LO;
    // eʳ for |r| ≤ ln2/2: Taylor to r⁷ (truncation below 6e-9 relative).
    let p = 1.0
        + r * (1.0
            + r * (1.0 / 2.0
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    // 2ⁿ as two normal factors, so n = −127 (subnormal) and n = 128 (overflow to ∞) come out right.
    let half = ni >> 1;
    let two_a = f32::from_bits(((half + 127) as u32) << 23);
    let two_b = f32::from_bits(((ni - half + 127) as u32) << 23);
    let y = p * two_a * two_b;
    if x < -88.0 { 0.0 } else { y }
}

#[inline(always)]
fn lane_sum(lanes: [f32; LANES]) -> f32 {
    // A fixed pairwise order: the same bits whatever the vector width.
    let mut w = lanes;
    let mut n = LANES;
    while n > 1 {
        n /= 2;
        for i in 0..n {
            w[i] += w[i + n];
        }
    }
    w[0]
}

/// The largest value of `row` (−∞ for an empty one), lanes in a fixed order.
#[inline(always)]
fn max_of(row: &[f32]) -> f32 {
    let (chunks, tail) = row.as_chunks::<LANES>();
    let mut lanes = [f32::NEG_INFINITY; LANES];
    for c in chunks {
        for j in 0..LANES {
            lanes[j] = if c[j] > lanes[j] { c[j] } else { lanes[j] };
        }
    }
    tail.iter().chain(lanes.iter()).fold(f32::NEG_INFINITY, |m, &s| if s > m { s } else { m })
}

/// softmax over `row` in place.
#[inline(always)]
fn softmax(row: &mut [f32]) {
    let max = max_of(row);
    let (chunks, tail) = row.as_chunks_mut::<LANES>();
    let mut sums = [0f32; LANES];
    for c in chunks.iter_mut() {
        for j in 0..LANES {
            c[j] = exp(c[j] - max);
            sums[j] += c[j];
        }
    }
    let mut sum = lane_sum(sums);
    for s in tail.iter_mut() {
        *s = exp(*s - max);
        sum += *s;
    }
    for s in row.iter_mut() {
        *s /= sum;
    }
}

#[inline(always)]
fn causal_softmax_generic(scores: &mut [f32], width: usize, first: usize) {
    for (i, row) in scores.chunks_exact_mut(width).enumerate() {
        let (visible, hidden) = row.split_at_mut((first + i + 1).min(width));
        softmax(visible);
        hidden.fill(0.0);
    }
}

widest! {
    /// `scores` holds rows of `width` keys, the first being query `first`: query q sees keys
    /// 0..=q. A softmax over those in place, zeros after them.
    pub fn causal_softmax(scores: &mut [f32], width: usize, first: usize) = causal_softmax_generic
}

#[inline(always)]
fn log_sum_exp_generic(row: &[f32]) -> f32 {
    let max = max_of(row);
    let (chunks, tail) = row.as_chunks::<LANES>();
    let mut sums = [0f32; LANES];
    for c in chunks {
        for j in 0..LANES {
            sums[j] += exp(c[j] - max);
        }
    }
    let sum = tail.iter().fold(lane_sum(sums), |s, &x| s + exp(x - max));
    max + sum.ln()
}

widest! {
    /// ln Σ eˣ over `row`, taken after its maximum so nothing overflows: the normaliser of a
    /// log-softmax (log p(i) = row[i] − log_sum_exp(row)).
    pub fn log_sum_exp(row: &[f32]) -> f32 = log_sum_exp_generic
}

#[inline(always)]
fn silu_generic(x: &mut [f32]) {
    for v in x.iter_mut() {
        *v /= 1.0 + exp(-*v);
    }
}

widest! {
    /// x·σ(x) = x / (1 + e⁻ˣ) in place.
    pub fn silu(x: &mut [f32]) = silu_generic
}

#[inline(always)]
fn column_sums_generic(x: &[f32], cols: usize, sumsq: &mut [f32], sum: &mut [f32]) {
    let (sumsq, sum) = (&mut sumsq[..cols], &mut sum[..cols]);
    for row in x.chunks_exact(cols) {
        for ((q, s), &v) in sumsq.iter_mut().zip(sum.iter_mut()).zip(row) {
            *q += v * v;
            *s += v;
        }
    }
}

widest! {
    /// Adds Σ x² and Σ x over the rows of `x` (rows of `cols` values) to `sumsq` and `sum`,
    /// row after row: the order, and so the bits, of burn-flex's x.square().sum_dim(0) and
    /// x.sum_dim(0).
    pub fn column_sums(x: &[f32], cols: usize, sumsq: &mut [f32], sum: &mut [f32]) = column_sums_generic
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ulps(a: f32, b: f64) -> f64 {
        let b32 = b as f32;
        let ulp = (f32::from_bits(b32.abs().to_bits() + 1) - b32.abs()) as f64;
        (a as f64 - b).abs() / ulp
    }

    /// Against f64's exp on a dense grid over the whole normal range and at the edges.
    #[test]
    fn exp_is_within_two_ulp() {
        let mut worst = (0.0, 0.0f32);
        let n = 2_000_000;
        for i in 0..=n {
            let x = -87.9 + 176.6 * i as f32 / n as f32;
            let u = ulps(exp(x), (x as f64).exp());
            if u > worst.0 {
                worst = (u, x);
            }
        }
        assert!(worst.0 <= 2.0, "{} ulp at x = {}", worst.0, worst.1);
        for x in [0.0f32, -0.0, 1.0, -1.0, 0.5 * std::f32::consts::LN_2, 88.7, -87.33, -87.9] {
            assert!(ulps(exp(x), (x as f64).exp()) <= 2.0, "x = {x}");
        }
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(88.8), f32::INFINITY);
        assert_eq!(exp(1e30), f32::INFINITY);
        assert_eq!(exp(f32::INFINITY), f32::INFINITY);
        assert_eq!(exp(-88.1), 0.0);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert!(exp(f32::NAN).is_nan());
        // −88 ≤ x < −87.33: subnormal results, within 2e-6 relative of the true value.
        let (x, want) = (-87.9f32, (-87.9f64).exp());
        assert!((exp(x) as f64 - want).abs() / want < 2e-6);
    }

    #[test]
    fn causal_softmax_by_hand_and_against_f64() {
        // t = 2: row 0 sees one key (p = 1); row 1 sees [0, ln 3] → [1/4, 3/4].
        let mut s = vec![5.0, 7.0, 0.0, 3f32.ln()];
        causal_softmax(&mut s, 2, 0);
        let want = [1.0, 0.0, 0.25, 0.75];
        for (g, w) in s.iter().zip(want) {
            assert!((g - w).abs() < 1e-7, "{s:?}");
        }
        // A block of rows starting at query 2, 4 keys wide: query 2 sees 3 keys, query 3 all 4.
        let mut s = vec![0.0, 0.0, 0.0, 9.0, 0.0, 2f32.ln(), 0.0, 0.0];
        causal_softmax(&mut s, 4, 2);
        let want = [1.0 / 3.0, 1.0 / 3.0, 1.0 / 3.0, 0.0, 0.2, 0.4, 0.2, 0.2];
        for (g, w) in s.iter().zip(want) {
            assert!((g - w).abs() < 1e-7, "{s:?}");
        }
        // Rows longer than a lane group and with a tail, against an f64 softmax.
        let t = 53;
        let mut rng = crate::rng::SplitMix64::new(7);
        let raw: Vec<f32> = (0..t * t).map(|_| rng.uniform(-20.0, 20.0)).collect();
        let mut s = raw.clone();
        causal_softmax(&mut s, t, 0);
        for i in 0..t {
            let row = &raw[i * t..i * t + i + 1];
            let max = row.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x as f64));
            let sum: f64 = row.iter().map(|&x| (x as f64 - max).exp()).sum();
            for j in 0..t {
                let x = raw[i * t + j] as f64 - max;
                let want = if j <= i { x.exp() / sum } else { 0.0 };
                // x − max is rounded to f32 first (as in every f32 softmax): |x − max|·2⁻²⁴ more.
                let tol = (4e-7 + x.abs() * 6e-8) * want;
                assert!((s[i * t + j] as f64 - want).abs() <= tol, "row {i} key {j}: {} vs {want}", s[i * t + j]);
            }
        }
    }

    #[test]
    fn log_sum_exp_by_hand_and_against_f64() {
        // ln(e⁰ + e^(ln 3)) = ln 4; a constant row of n: c + ln n; values that would overflow
        // exp on their own.
        assert!((log_sum_exp(&[0.0, 3f32.ln()]) - 4f32.ln()).abs() < 1e-7);
        assert!((log_sum_exp(&[1000.0; 37]) - (1000.0 + 37f32.ln())).abs() < 1e-4);
        assert_eq!(log_sum_exp(&[-5.0]), -5.0);
        // Widths around the lane group, spread like logits, against f64.
        let mut rng = crate::rng::SplitMix64::new(3);
        for n in [1, 15, 16, 17, 100, 4096, 32_000] {
            let row: Vec<f32> = (0..n).map(|_| rng.uniform(-30.0, 30.0)).collect();
            let max = row.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x as f64));
            let want = max + row.iter().map(|&x| (x as f64 - max).exp()).sum::<f64>().ln();
            assert!(
                (log_sum_exp(&row) as f64 - want).abs() <= 4e-7 * want.abs().max(1.0),
                "n {n}: {} vs {want}",
                log_sum_exp(&row)
            );
        }
    }

    #[test]
    fn silu_against_f64() {
        let xs: Vec<f32> =
            (0..=4000).map(|i| -100.0 + 0.05 * i as f32).chain([0.0, -0.0, 1e-30, 1e30, -1e30]).collect();
        let mut y = xs.clone();
        silu(&mut y);
        for (&x, &g) in xs.iter().zip(&y) {
            let want = x as f64 / (1.0 + (-(x as f64)).exp());
            // Below x ≈ −88.7, e⁻ˣ overflows f32 and the result is −0 (as x·σ(x) in f32 is);
            // the true value there is under 1e-36.
            assert!((g as f64 - want).abs() <= 4e-7 * want.abs() + 1e-36, "silu({x}) = {g}, want {want}");
        }
    }
}
