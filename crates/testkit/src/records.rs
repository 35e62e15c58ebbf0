//! Deterministic record fixtures: keyed records with headers, tombstones, empty and binary
//! values, all derived from a seed so that a test can regenerate what it expects to read back.

use crate::rng::TestRng;

/// One record as a client would produce it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordFixture {
    /// Position in the generated sequence (also written into the `index` header).
    pub index: usize,
    pub key: Vec<u8>,
    /// `None` is a null value (a tombstone).
    pub value: Option<Vec<u8>>,
    /// Header order is significant in Kafka; values may be null.
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

/// Generates [`RecordFixture`]s from a seed.
#[derive(Debug, Clone)]
pub struct RecordFixtures {
    rng: TestRng,
    next_index: usize,
    /// Number of distinct keys; records with the same key land on the same partition.
    pub key_count: usize,
    /// Largest value length generated.
    pub value_len_max: usize,
    /// Values are text that compresses well instead of random bytes (codecs fall back to no
    /// compression when it does not pay).
    pub compressible: bool,
}

/// Every this many records the value is null.
pub const TOMBSTONE_EVERY: usize = 997;
/// Every this many records the value is empty (present, zero length).
pub const EMPTY_VALUE_EVERY: usize = 991;

impl RecordFixtures {
    pub fn new(seed: u64) -> Self {
        Self {
            rng: TestRng::new(seed),
            next_index: 0,
            key_count: 1000,
            value_len_max: 200,
            compressible: false,
        }
    }

    pub fn next_record(&mut self) -> RecordFixture {
        let index = self.next_index;
        self.next_index += 1;
        let key = format!("key-{}", self.rng.below(self.key_count as u64)).into_bytes();
        let value = if index % TOMBSTONE_EVERY == TOMBSTONE_EVERY - 1 {
            None
        } else if index % EMPTY_VALUE_EVERY == EMPTY_VALUE_EVERY - 1 {
            Some(Vec::new())
        } else {
            let len = self.rng.in_range(1..self.value_len_max + 1);
            if self.compressible {
                let word = format!("value-{}-", self.rng.below(10));
                Some(word.bytes().cycle().take(len).collect())
            } else {
                Some(self.rng.bytes(len))
            }
        };
        let mut headers = vec![("index".to_owned(), Some(index.to_string().into_bytes()))];
        match self.rng.below(3) {
            0 => {}
            1 => headers.push(("null-header".to_owned(), None)),
            _ => {
                let len = self.rng.in_range(0..32);
                headers.push(("binary".to_owned(), Some(self.rng.bytes(len))));
            }
        }
        RecordFixture { index, key, value, headers }
    }

    pub fn take(&mut self, count: usize) -> Vec<RecordFixture> {
        (0..count).map(|_| self.next_record()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixtures_are_reproducible_from_the_seed() {
        assert_eq!(RecordFixtures::new(9).take(50), RecordFixtures::new(9).take(50));
        assert_ne!(RecordFixtures::new(9).take(50), RecordFixtures::new(10).take(50));
    }

    #[test]
    fn compressible_values_repeat_a_short_word() {
        let mut fixtures = RecordFixtures::new(5);
        fixtures.compressible = true;
        let value = fixtures.take(3).pop().and_then(|r| r.value).expect("a value");
        assert!(value.starts_with(b"value-"), "{value:?}");
    }

    #[test]
    fn fixtures_include_tombstones_empty_values_and_null_headers() {
        let records = RecordFixtures::new(3).take(2000);
        assert!(records.iter().any(|r| r.value.is_none()));
        assert!(records.iter().any(|r| r.value.as_deref() == Some(&[][..])));
        assert!(records.iter().any(|r| r.headers.iter().any(|(_, v)| v.is_none())));
        assert!(records.iter().enumerate().all(|(i, r)| r.index == i));
    }
}
