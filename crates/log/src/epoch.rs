//! Leader epoch cache: which leader epoch started at which offset, persisted as Kafka's
//! `leader-epoch-checkpoint`, answering OffsetsForLeaderEpoch for follower truncation.

use std::path::{Path, PathBuf};

use crate::checkpoint::{read_versioned_lines, write_atomically};
use crate::LogError;

pub const LEADER_EPOCH_CHECKPOINT: &str = "leader-epoch-checkpoint";

#[derive(Debug)]
pub struct LeaderEpochCache {
    path: PathBuf,
    /// `(epoch, start_offset)`, both strictly increasing.
    entries: Vec<(i32, i64)>,
}

impl LeaderEpochCache {
    pub fn load(dir: &Path) -> Result<LeaderEpochCache, LogError> {
        let path = dir.join(LEADER_EPOCH_CHECKPOINT);
        let mut entries: Vec<(i32, i64)> = Vec::new();
        for (line, text) in read_versioned_lines(&path)?.unwrap_or_default() {
            let parse = |reason| LogError::CheckpointParse { path: path.clone(), line, reason };
            let mut fields = text.split_whitespace();
            let (Some(epoch), Some(offset), None) = (fields.next(), fields.next(), fields.next())
            else {
                return Err(parse("expected `<epoch> <start_offset>`"));
            };
            let epoch: i32 = epoch.parse().map_err(|_| parse("epoch is not an i32"))?;
            let offset: i64 = offset.parse().map_err(|_| parse("offset is not an i64"))?;
            if entries.last().is_some_and(|&(e, o)| epoch <= e || offset < o) {
                return Err(parse("entries are not increasing"));
            }
            entries.push((epoch, offset));
        }
        Ok(LeaderEpochCache { path, entries })
    }

    pub fn entries(&self) -> &[(i32, i64)] {
        &self.entries
    }

    pub fn latest_epoch(&self) -> Option<i32> {
        self.entries.last().map(|&(epoch, _)| epoch)
    }

    /// Records that `epoch` starts at `start_offset` if it is newer than the latest epoch.
    pub fn assign(&mut self, epoch: i32, start_offset: i64) -> Result<(), LogError> {
        if self.latest_epoch().is_some_and(|latest| latest >= epoch) {
            return Ok(());
        }
        self.entries.push((epoch, start_offset));
        self.persist()
    }

    /// Drops epochs that start at or after `end_offset` (the log was cut there).
    pub fn truncate_from_end(&mut self, end_offset: i64) -> Result<(), LogError> {
        let keep = self.entries.partition_point(|&(_, start)| start < end_offset);
        if keep == self.entries.len() {
            return Ok(());
        }
        self.entries.truncate(keep);
        self.persist()
    }

    /// Drops epochs wholly before `start_offset`; the epoch still current there is kept and
    /// moved to start at `start_offset`, as Kafka does.
    pub fn truncate_from_start(&mut self, start_offset: i64) -> Result<(), LogError> {
        let below = self.entries.partition_point(|&(_, start)| start < start_offset);
        if below == 0 {
            return Ok(());
        }
        let covering = below - 1;
        let unchanged = covering == 0 && self.entries[0].1 == start_offset;
        if unchanged {
            return Ok(());
        }
        self.entries.drain(..covering);
        self.entries[0].1 = start_offset;
        self.persist()
    }

    /// Kafka's OffsetsForLeaderEpoch: the largest epoch <= `epoch` known here and the offset
    /// where the next epoch starts (the log end offset for the latest epoch). `None` stands
    /// for Kafka's UNDEFINED_EPOCH / UNDEFINED_EPOCH_OFFSET.
    pub fn end_offset_for(&self, epoch: i32, log_end_offset: i64) -> Option<(i32, i64)> {
        if epoch < 0 {
            return None;
        }
        if self.latest_epoch() == Some(epoch) {
            return Some((epoch, log_end_offset));
        }
        let higher = self.entries.partition_point(|&(e, _)| e <= epoch);
        let &(_, next_start) = self.entries.get(higher)?;
        match higher.checked_sub(1) {
            Some(floor) => Some((self.entries[floor].0, next_start)),
            None => Some((epoch, next_start)),
        }
    }

    fn persist(&self) -> Result<(), LogError> {
        let mut text = format!("0\n{}\n", self.entries.len());
        for (epoch, offset) in &self.entries {
            text.push_str(&format!("{epoch} {offset}\n"));
        }
        write_atomically(&self.path, text.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(entries: &[(i32, i64)]) -> LeaderEpochCache {
        LeaderEpochCache { path: PathBuf::from("/nonexistent"), entries: entries.to_vec() }
    }

    #[test]
    fn end_offset_for_epoch_follows_kafka() {
        let cache = cache(&[(1, 0), (3, 100), (4, 150)]);
        assert_eq!(cache.end_offset_for(4, 200), Some((4, 200)));
        assert_eq!(cache.end_offset_for(3, 200), Some((3, 150)));
        // An epoch this replica never saw ends where the next known one starts.
        assert_eq!(cache.end_offset_for(2, 200), Some((1, 100)));
        assert_eq!(cache.end_offset_for(0, 200), Some((0, 0)));
        assert_eq!(cache.end_offset_for(5, 200), None);
        assert_eq!(cache.end_offset_for(-1, 200), None);
        assert_eq!(LeaderEpochCache::cache_for_tests().end_offset_for(0, 0), None);
    }

    impl LeaderEpochCache {
        fn cache_for_tests() -> LeaderEpochCache {
            cache(&[])
        }
    }
}
