//! A small, fast, seeded pseudo-random generator (SplitMix64) so that every randomised test is
//! reproducible: the seed is printed on use, and `STROM_SEED=<n>` replays a failing run.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};

/// Environment variable that fixes the seed of every randomised test.
pub const SEED_ENV: &str = "STROM_SEED";

/// Returns the seed from `STROM_SEED`, or a fresh one when unset, and prints it together with
/// `test_name` to stderr so that a failure can be replayed.
///
/// # Panics
/// When `STROM_SEED` is set but is not an unsigned 64-bit integer: a typo must not silently
/// turn a replay into a new random run.
pub fn seed_from_env(test_name: &str) -> u64 {
    let seed = match std::env::var(SEED_ENV) {
        Ok(text) => match text.trim().parse::<u64>() {
            Ok(seed) => seed,
            Err(_) => panic!("{SEED_ENV}={text:?} is not an unsigned 64-bit integer"),
        },
        Err(_) => fresh_seed(),
    };
    eprintln!("{test_name}: {SEED_ENV}={seed}");
    seed
}

/// A seed from the process's hash randomisation, so that no clock is read.
fn fresh_seed() -> u64 {
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u64(0x5354_524f_4d00_0000);
    hasher.finish()
}

/// SplitMix64: passes BigCrush, one `u64` of state, trivially seedable. Not cryptographic.
#[derive(Debug, Clone)]
pub struct TestRng {
    state: u64,
}

impl TestRng {
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A value in `0..bound`; `bound` must be positive.
    pub fn below(&mut self, bound: u64) -> u64 {
        assert!(bound > 0, "TestRng::below(0)");
        // Lemire's multiply-shift; the tiny bias is irrelevant for tests.
        ((u128::from(self.next_u64()) * u128::from(bound)) >> 64) as u64
    }

    /// A value in `range` (half-open); the range must not be empty.
    pub fn in_range(&mut self, range: std::ops::Range<usize>) -> usize {
        assert!(range.start < range.end, "TestRng::in_range on empty range {range:?}");
        range.start + self.below((range.end - range.start) as u64) as usize
    }

    /// True with probability `numerator / denominator`.
    pub fn chance(&mut self, numerator: u64, denominator: u64) -> bool {
        self.below(denominator) < numerator
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let word = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
    }

    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut buf = vec![0; len];
        self.fill(&mut buf);
        buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_gives_same_sequence() {
        let mut a = TestRng::new(42);
        let mut b = TestRng::new(42);
        let xs: Vec<u64> = (0..16).map(|_| a.next_u64()).collect();
        let ys: Vec<u64> = (0..16).map(|_| b.next_u64()).collect();
        assert_eq!(xs, ys);
        assert_ne!(TestRng::new(43).next_u64(), xs[0]);
    }

    #[test]
    fn below_stays_in_bounds_and_reaches_both_ends() {
        let mut rng = TestRng::new(7);
        let draws: Vec<u64> = (0..10_000).map(|_| rng.below(10)).collect();
        assert!(draws.iter().all(|&x| x < 10));
        assert!(draws.contains(&0));
        assert!(draws.contains(&9));
    }

    #[test]
    fn fill_covers_lengths_that_are_not_multiples_of_eight() {
        let mut rng = TestRng::new(1);
        let buf = rng.bytes(13);
        assert_eq!(buf.len(), 13);
        assert!(buf.iter().any(|&b| b != 0));
    }
}
