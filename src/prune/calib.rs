//! Calibration windows. Starts are drawn with SplitMix64 (seeded, documented, portable):
//! `start = (next_u64() as u128 * (n − L) as u128) >> 64`, i.e. uniform over [0, n − L − 1]
//! (Wanda's `randint(0, n − L − 1)`), so anyone can replay the windows from the report.

use crate::bail;
use crate::io::error::Result;

use crate::rng::SplitMix64;

/// `count` window starts over a stream of `n_tokens`, each window `seqlen` long.
pub fn draw_windows(n_tokens: usize, seqlen: usize, count: usize, seed: u64) -> Result<Vec<usize>> {
    if n_tokens < seqlen + 1 {
        bail!("calibration text has {n_tokens} tokens, too few for one window of {seqlen} (needs {})", seqlen + 1);
    }
    // What a caller that skipped the memory check would ask: refused, not a capacity overflow.
    if count.checked_mul(seqlen.max(1)).and_then(|n| n.checked_mul(8)).is_none() {
        bail!("{count} windows of {seqlen} tokens do not fit in memory; lower --nsamples or --seqlen");
    }
    let mut rng = SplitMix64::new(seed);
    Ok((0..count).map(|_| rng.below((n_tokens - seqlen) as u64) as usize).collect())
}

/// The token ids of the windows, concatenated: [count · seqlen].
pub fn gather_windows(ids: &[u32], starts: &[usize], seqlen: usize) -> Vec<u32> {
    starts.iter().flat_map(|&s| ids[s..s + seqlen].iter().copied()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix64_matches_the_published_reference() {
        // First outputs of SplitMix64 seeded with 1234567 (Vigna's reference implementation).
        let mut r = SplitMix64::new(1234567);
        let want = [6457827717110365317u64, 3203168211198807973, 9817491932198370423];
        for w in want {
            assert_eq!(r.next_u64(), w);
        }
    }

    #[test]
    fn a_generator_after_n_draws_continues_the_stream() {
        let mut r = SplitMix64::new(1234567);
        let stream: Vec<u64> = (0..1000).map(|_| r.next_u64()).collect();
        for n in [0usize, 1, 2, 17, 999] {
            assert_eq!(SplitMix64::after(1234567, n as u64).next_u64(), stream[n], "after {n} draws");
        }
        // The state wraps around u64 as the stream does.
        let mut far = SplitMix64::new(u64::MAX - 3);
        let _ = (0..5).map(|_| far.next_u64()).count();
        assert_eq!(SplitMix64::after(u64::MAX - 3, 5).next_u64(), far.next_u64());
    }

    #[test]
    fn windows_stay_inside_the_stream() {
        let starts = draw_windows(100, 10, 1000, 0).unwrap();
        assert!(starts.iter().all(|&s| s <= 89));
        assert!(starts.contains(&0) && starts.contains(&89));
        assert!(draw_windows(10, 10, 1, 0).is_err());
    }
}
