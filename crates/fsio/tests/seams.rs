//! The debug-build seams, in a process of their own (they read the environment once): the
//! sync journal records what each sync made durable, an injected fault fails syncs of the paths
//! it names, and renames carry durability to the new name.

use std::io::Write;

#[test]
fn the_journal_records_synced_lengths_and_renames_and_faults_fail_chosen_paths() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().canonicalize().unwrap();
    let journal = root.join("journal");
    let fault = root.join("fault");
    // Set before the first sync of this process: the seams read the environment once.
    std::env::set_var("STROM_SYNC_JOURNAL", &journal);
    std::env::set_var("STROM_FAULT_FILE", &fault);

    let data = root.join("data.log");
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(&data).unwrap();
    file.write_all(b"0123456789").unwrap();
    strom_fsio::sync_data(&file).unwrap();
    file.write_all(b"unsynced").unwrap();
    strom_fsio::write_atomically(&root.join("state"), b"whole").unwrap();

    std::fs::write(&fault, "data.log").unwrap();
    let error = strom_fsio::sync_data(&file).unwrap_err();
    assert_eq!(error.raw_os_error(), Some(5), "EIO: {error}");
    strom_fsio::write_atomically(&root.join("other"), b"x").unwrap();
    std::fs::remove_file(&fault).unwrap();
    strom_fsio::sync_data(&file).unwrap();

    let text = std::fs::read_to_string(&journal).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let d = data.display();
    let (tmp, state) = (root.join("state.tmp"), root.join("state"));
    assert_eq!(
        lines,
        vec![
            format!("sync\t10\t{d}"),
            format!("sync\t5\t{}", tmp.display()),
            format!("rename\t{}\t{}", tmp.display(), state.display()),
            format!("sync\t1\t{}", root.join("other.tmp").display()),
            format!(
                "rename\t{}\t{}",
                root.join("other.tmp").display(),
                root.join("other").display()
            ),
            format!("sync\t18\t{d}"),
        ],
        "the failed sync journals nothing"
    );
}
