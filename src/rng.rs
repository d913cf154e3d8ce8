//! SplitMix64: a seeded, documented, portable stream, so that the same seed draws the same
//! windows, candidates and test data on every machine.

pub struct SplitMix64(u64);

/// What each draw adds to SplitMix64's state.
const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    /// The generator seeded with `seed` after `draws` draws. Each draw adds one constant to the
    /// state, so a long stream can be made in pieces, side by side, equal to the one drawn in order.
    pub fn after(seed: u64, draws: u64) -> Self {
        SplitMix64(seed.wrapping_add(draws.wrapping_mul(GAMMA)))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(GAMMA);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, bound).
    pub fn below(&mut self, bound: u64) -> u64 {
        ((self.next_u64() as u128 * bound as u128) >> 64) as u64
    }

    /// Uniform f32 in [lo, hi), from the top 24 bits (the tests' random data).
    pub fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32 * (hi - lo) + lo
    }
}
