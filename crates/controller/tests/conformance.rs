//! openraft's own storage conformance suite, run against the metadata log store and state
//! machine on a fresh tempdir per case.

mod common;

use std::sync::Arc;

use openraft::testing::{StoreBuilder, Suite};
use strom_controller::log_store::{LogStore, LogStoreOptions};
use strom_controller::state_machine::StateMachine;
use strom_controller::types::{StorageError, TypeConfig};
use tempfile::TempDir;

struct TempDirStores {
    options: LogStoreOptions,
}

fn open_failed(e: std::io::Error) -> StorageError {
    StorageError::from_io_error(openraft::ErrorSubject::Store, openraft::ErrorVerb::Read, e)
}

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for TempDirStores {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError> {
        let dir = tempfile::tempdir().map_err(open_failed)?;
        let log = LogStore::open(dir.path(), self.options.clone()).await.map_err(open_failed)?;
        let (sm, _image) = StateMachine::open(dir.path(), Arc::new(common::Recorder::default()))
            .await
            .map_err(open_failed)?;
        Ok((dir, log, sm))
    }
}

#[test]
fn storage_passes_openraft_suite() -> anyhow::Result<()> {
    Suite::test_all(TempDirStores { options: LogStoreOptions::default() })?;
    Ok(())
}

/// Three entries per segment: every case also crosses segment boundaries on append, truncate
/// and purge.
#[test]
fn storage_passes_openraft_suite_with_tiny_segments() -> anyhow::Result<()> {
    Suite::test_all(TempDirStores {
        options: LogStoreOptions { segment_entries_max: 3, segment_bytes_max: 1 << 20 },
    })?;
    Ok(())
}
