//! The metadata log store on real files: truncation, purge and torn tails hold across reopen.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;

use openraft::storage::{RaftLogStorage, RaftLogStorageExt};
use openraft::{CommittedLeaderId, EntryPayload, RaftLogReader};
use strom_controller::log_store::{LogStore, LogStoreOptions};
use strom_controller::types::{Entry, LogId, Vote};
use strom_metadata::records::{
    metadata_record::Record, FeatureRecord, MetadataBatch, MetadataRecord,
};

fn options() -> LogStoreOptions {
    LogStoreOptions { segment_entries_max: 4, segment_bytes_max: 1 << 20 }
}

fn log_id(term: u64, index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

fn entry(term: u64, index: u64) -> Entry {
    let batch = MetadataBatch {
        records: vec![MetadataRecord {
            record: Some(Record::Feature(FeatureRecord {
                name: format!("f{index}"),
                feature_level: term as i32,
            })),
        }],
    };
    Entry { log_id: log_id(term, index), payload: EntryPayload::Normal(batch) }
}

async fn all(store: &mut LogStore) -> anyhow::Result<Vec<Entry>> {
    Ok(store.try_get_log_entries(..).await?)
}

fn segments(dir: &Path) -> anyhow::Result<Vec<String>> {
    let mut names: Vec<String> = std::fs::read_dir(dir)?
        .map(|d| d.map(|d| d.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_, _>>()?;
    names.retain(|n| n.ends_with(".log"));
    names.sort();
    Ok(names)
}

#[tokio::test]
async fn appended_entries_and_vote_survive_reopen() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut store = LogStore::open(dir.path(), options()).await?;
    store.blocking_append((0..10).map(|i| entry(1, i))).await?;
    store.save_vote(&Vote::new_committed(1, 1)).await?;
    store.save_committed(Some(log_id(1, 7))).await?;
    drop(store);

    let mut store = LogStore::open(dir.path(), options()).await?;
    assert_eq!(all(&mut store).await?, (0..10).map(|i| entry(1, i)).collect::<Vec<_>>());
    assert_eq!(store.read_vote().await?, Some(Vote::new_committed(1, 1)));
    assert_eq!(store.read_committed().await?, Some(log_id(1, 7)));
    assert_eq!(segments(dir.path())?.len(), 3, "4 entries per segment");
    Ok(())
}

#[tokio::test]
async fn truncated_suffix_stays_gone_after_reopen() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut store = LogStore::open(dir.path(), options()).await?;
    store.blocking_append((0..10).map(|i| entry(1, i))).await?;
    // Cut mid-segment: index 5 is the second entry of the segment starting at 4.
    store.truncate(log_id(1, 5)).await?;
    store.blocking_append((5..7).map(|i| entry(2, i))).await?;
    drop(store);

    let mut store = LogStore::open(dir.path(), options()).await?;
    let want: Vec<Entry> = (0..5).map(|i| entry(1, i)).chain((5..7).map(|i| entry(2, i))).collect();
    assert_eq!(all(&mut store).await?, want);
    assert_eq!(store.get_log_state().await?.last_log_id, Some(log_id(2, 6)));
    assert_eq!(segments(dir.path())?, ["00000000000000000000.log", "00000000000000000004.log"]);

    // Cut at a segment's first entry: the segment is emptied and appends continue in it.
    store.truncate(log_id(1, 4)).await?;
    store.blocking_append([entry(3, 4)]).await?;
    drop(store);
    let mut store = LogStore::open(dir.path(), options()).await?;
    let want: Vec<Entry> = (0..4).map(|i| entry(1, i)).chain([entry(3, 4)]).collect();
    assert_eq!(all(&mut store).await?, want);
    Ok(())
}

#[tokio::test]
async fn purge_deletes_whole_segments_and_is_remembered() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut store = LogStore::open(dir.path(), options()).await?;
    store.blocking_append((0..10).map(|i| entry(1, i))).await?;
    store.purge(log_id(1, 5)).await?;
    // Segment 0..=3 is gone; 4..=7 still holds 6 and 7.
    assert_eq!(segments(dir.path())?, ["00000000000000000004.log", "00000000000000000008.log"]);
    drop(store);

    let mut store = LogStore::open(dir.path(), options()).await?;
    let state = store.get_log_state().await?;
    assert_eq!(state.last_purged_log_id, Some(log_id(1, 5)));
    assert_eq!(state.last_log_id, Some(log_id(1, 9)));
    assert_eq!(all(&mut store).await?, (6..10).map(|i| entry(1, i)).collect::<Vec<_>>());

    // A purge past the end (an installed snapshot): the log is empty, appends resume after.
    store.purge(log_id(2, 20)).await?;
    store.blocking_append([entry(2, 21)]).await?;
    drop(store);
    let mut store = LogStore::open(dir.path(), options()).await?;
    let state = store.get_log_state().await?;
    assert_eq!(state.last_purged_log_id, Some(log_id(2, 20)));
    assert_eq!(state.last_log_id, Some(log_id(2, 21)));
    assert_eq!(all(&mut store).await?, vec![entry(2, 21)]);
    Ok(())
}

#[tokio::test]
async fn torn_tail_is_cut_back_to_the_last_whole_entry() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut store = LogStore::open(dir.path(), options()).await?;
    store.blocking_append((0..6).map(|i| entry(1, i))).await?;
    drop(store);
    let last = dir.path().join("00000000000000000004.log");
    let good_len = std::fs::metadata(&last)?.len();
    let mut file = OpenOptions::new().append(true).open(&last)?;
    file.write_all(b"\x07\x00\x00\x00garbage-after-a-crash")?;
    drop(file);

    let mut store = LogStore::open(dir.path(), options()).await?;
    assert_eq!(std::fs::metadata(&last)?.len(), good_len, "tail not cut");
    assert_eq!(all(&mut store).await?, (0..6).map(|i| entry(1, i)).collect::<Vec<_>>());
    store.blocking_append([entry(1, 6)]).await?;
    drop(store);
    let mut store = LogStore::open(dir.path(), options()).await?;
    assert_eq!(all(&mut store).await?.len(), 7);
    Ok(())
}

#[tokio::test]
async fn damage_inside_an_older_segment_refuses_to_open() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut store = LogStore::open(dir.path(), options()).await?;
    store.blocking_append((0..6).map(|i| entry(1, i))).await?;
    drop(store);
    let first = dir.path().join("00000000000000000000.log");
    let mut bytes = std::fs::read(&first)?;
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&first, bytes)?;

    let opened = LogStore::open(dir.path(), options()).await;
    let err = opened.err().expect("a corrupt closed segment must not open");
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData, "{err}");
    Ok(())
}

#[tokio::test]
async fn a_flipped_byte_in_a_committed_entry_of_the_last_segment_refuses_to_open(
) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut store = LogStore::open(dir.path(), options()).await?;
    store.blocking_append((0..6).map(|i| entry(1, i))).await?;
    store.save_committed(Some(log_id(1, 5))).await?;
    drop(store);
    // Entries 4 and 5 sit in the last segment; damage the last one, which was committed.
    let last = dir.path().join("00000000000000000004.log");
    let mut bytes = std::fs::read(&last)?;
    let at = bytes.len() - 3;
    bytes[at] ^= 0x01;
    std::fs::write(&last, &bytes)?;

    let opened = LogStore::open(dir.path(), options()).await;
    let err = opened.err().expect("a corrupt committed entry must not be cut as a torn tail");
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData, "{err}");
    assert!(err.to_string().contains("committed entry 5"), "{err}");
    assert!(err.to_string().contains("00000000000000000004.log"), "names the file: {err}");
    assert_eq!(std::fs::read(&last)?, bytes, "nothing was cut");

    // The same damage past the committed index is a torn append: cut, as before.
    let store_dir = tempfile::tempdir()?;
    let mut store = LogStore::open(store_dir.path(), options()).await?;
    store.blocking_append((0..6).map(|i| entry(1, i))).await?;
    store.save_committed(Some(log_id(1, 4))).await?;
    drop(store);
    let last = store_dir.path().join("00000000000000000004.log");
    let mut bytes = std::fs::read(&last)?;
    let at = bytes.len() - 3;
    bytes[at] ^= 0x01;
    std::fs::write(&last, &bytes)?;
    let mut store = LogStore::open(store_dir.path(), options()).await?;
    assert_eq!(all(&mut store).await?, (0..5).map(|i| entry(1, i)).collect::<Vec<_>>());
    Ok(())
}
