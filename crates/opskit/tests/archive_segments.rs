//! The segmented archive (a month larger than `archive.segment_docs`), on both sources: each
//! segment is appended to the remote file, read back and matched, then purged while the next
//! one is exported. Faults: kill -9 between two segments, during a segment's delete and
//! during the final rename; the backup host lost after some segments were deleted; a remote
//! segment corrupted after its upload. After each, the re-run completes the month: every
//! January document is in exactly one archive file (the main one, or the late pass that
//! archives what the interrupted run had not verified), none is left in the source.
//!
//! On MariaDB the segments are read by the `DELETE … RETURNING` that removes them, committed
//! once verified (`archive.purge.delete_returning`, the default); every scenario also runs
//! with it turned off (`mysql_export_then_purge`): export, then purge by fingerprint.

mod archive_support;

use std::cell::Cell;
use std::collections::BTreeSet;
use std::time::Duration;

use archive_support::sources::{Backend, SourceRig, on_both_sources};
use archive_support::{FILE, MONTH, stderr, stdout};
use opskit_core::config::value::Positive;
use opskit_lab::Component;

const ROWS: u64 = 300;
const SEGMENT: u64 = 100;
const BATCH: u64 = 50;
const LATE1: &str = "test.user_logs.2024-01.late1.bson.gz";

thread_local! {
    /// This test turns `archive.purge.delete_returning` off (each test has its own thread).
    static EXPORT_THEN_PURGE: Cell<bool> = const { Cell::new(false) };
}

fn rig(backend: Backend) -> SourceRig {
    SourceRig::new(backend, ROWS, BATCH, |c| {
        c.archive.segment_docs = Positive::new(SEGMENT);
        c.archive.purge.delete_returning = !EXPORT_THEN_PURGE.get();
    })
}

/// The source reads each segment by deleting it (so its purge is one commit per segment).
fn deletes_as_it_reads(backend: Backend) -> bool {
    backend == Backend::Mysql && !EXPORT_THEN_PURGE.get()
}

/// Documents the first purge batch deletes: a whole segment when the source deletes as it
/// reads, else one batch.
fn first_batch(backend: Backend) -> u64 {
    if deletes_as_it_reads(backend) {
        SEGMENT
    } else {
        BATCH
    }
}

/// The January ids in every final archive file on the backup host; a document in two files
/// fails the test.
fn archived_everywhere(rig: &SourceRig) -> BTreeSet<String> {
    let mut all = BTreeSet::new();
    for name in [FILE, LATE1, "test.user_logs.2024-01.late2.bson.gz"] {
        for id in rig.archived_ids(&rig.remote_file(name)) {
            assert!(all.insert(id.clone()), "{id} is archived twice");
        }
    }
    all
}

/// After the re-run: nothing of January is left in the source, every document is archived
/// exactly once, and no temporary file is left on the backup host.
fn assert_month_complete(rig: &SourceRig) {
    assert!(rig.january_ids().is_empty(), "January documents are left");
    assert_eq!(archived_everywhere(rig), rig.month_ids);
    for name in [FILE, LATE1] {
        assert!(
            !rig.remote_file(&format!("{name}.uploading")).exists(),
            "{name}.uploading is left on the backup host"
        );
    }
}

/// The segment log of the main pass.
fn segment_log(rig: &SourceRig) -> serde_json::Value {
    let path = rig
        .state_dir()
        .join("archive")
        .join("archive-test.user_logs-2024-01.segments.json");
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

fn manifest(path: &std::path::Path) -> opskit_archive::staged::ArchiveManifest {
    opskit_archive::staged::ArchiveManifest::load(
        &opskit_archive::staged::ArchiveManifest::path_for(path),
    )
    .unwrap()
}

/// The plan says where the point of no return is; the run archives the month in three
/// verified segments whose hashes the manifest lists; both copies verify.
fn segmented_run_archives_the_month_segment_by_segment(backend: Backend) {
    let rig = rig(backend);
    let plan = stdout(&rig.archive(&["plan", "--month", MONTH]));
    assert!(
        plan.contains("Point of no return: the first verified segment"),
        "{plan}"
    );
    let out = rig.run();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        stderr(&out).contains("read by the DELETE that removes it"),
        deletes_as_it_reads(backend),
        "{}",
        stderr(&out)
    );
    rig.assert_month_archived();
    let m = manifest(&rig.local_file());
    let sizes: Vec<u64> = m.segments.iter().map(|s| s.docs).collect();
    if deletes_as_it_reads(backend) {
        // Two lanes (from the 1st and from the 16th) and the row at their split, last.
        assert!(
            sizes.len() > 3 && sizes.iter().all(|&n| n <= SEGMENT) && sizes.last() == Some(&1),
            "{sizes:?}"
        );
        assert_eq!(sizes.iter().sum::<u64>(), ROWS);
    } else {
        assert_eq!(sizes, [SEGMENT; 3]);
    }
    assert_eq!(
        m.segments.iter().map(|s| s.len).sum::<u64>(),
        m.compressed_bytes
    );
    assert_eq!(
        manifest(&rig.remote_file(FILE)),
        m,
        "the manifest on the backup host is the local one"
    );
    assert_eq!(rig.metric("segments"), Some(sizes.len() as f64));
    assert_eq!(rig.metric("documents_deleted"), Some(ROWS as f64));
    assert!(rig.alerts().is_empty(), "{:?}", rig.alerts());
    let v = rig.archive(&[
        "verify",
        "--file",
        rig.local_file().to_str().unwrap(),
        "--remote",
    ]);
    assert_eq!(v.status.code(), Some(0), "{}", stderr(&v));
}

/// kill -9 while the third segment is being cut (two are exported, maybe verified and
/// purged): the re-run closes the archive with what was verified and archives the rest in
/// the late pass, in the same run.
fn kill_between_two_segments_then_rerun_completes_the_month(backend: Backend) {
    let rig = rig(backend);
    rig.run_and_kill_at("export:segment=3");
    let out = rig.run();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_month_complete(&rig);
    assert!(rig.alerts().is_empty(), "{:?}", rig.alerts());
}

/// kill -9 right after a batch of the first segment was deleted, before its checkpoint.
fn kill_during_a_segment_delete_then_rerun_completes_the_month(backend: Backend) {
    let rig = rig(backend);
    rig.run_and_kill_at("purge:deleted=1");
    let left = rig.january_ids();
    assert_eq!(
        left.len() as u64,
        ROWS - first_batch(backend),
        "one batch was deleted"
    );
    let out = rig.run();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_month_complete(&rig);
    assert!(
        stderr(&out).contains("closed with them") || stderr(&out).contains("reusing"),
        "{}",
        stderr(&out)
    );
}

/// kill -9 when the first segment is verified but its purge has not begun (when the source
/// deletes as it reads: its delete is done but not committed): nothing of the month is gone
/// for another session (the uncommitted deletes die with the killed session); the re-run,
/// whose purge of the verified segment waits for their rollback, completes the month.
fn kill_before_a_segment_purge_loses_nothing(backend: Backend) {
    let rig = rig(backend);
    rig.run_and_kill_at("purge:batch=1");
    assert_eq!(rig.january_ids(), rig.month_ids);
    let out = rig.run();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_month_complete(&rig);
}

/// kill -9 just before the whole remote file gets its final name: every segment was verified
/// and purged; the re-run only gives it its name (no late pass is needed).
fn kill_during_the_final_rename_then_rerun_completes_the_month(backend: Backend) {
    let rig = rig(backend);
    rig.run_and_kill_at("upload:link=1");
    // The purger may still be at the last segment: what is gone is in the remote file.
    let tmp = rig.remote_file(&format!("{FILE}.uploading"));
    let in_tmp = rig.archived_ids(&tmp);
    let left = rig.january_ids();
    assert!(
        rig.month_ids
            .iter()
            .all(|id| left.contains(id) || in_tmp.contains(id)),
        "a document is neither in the source nor in {}",
        tmp.display()
    );
    assert!(!rig.remote_file(FILE).exists());
    assert!(rig.remote_file(&format!("{FILE}.uploading")).exists());
    let status = stdout(&rig.archive(&["status", "--month", MONTH]));
    assert!(
        status.contains("unfinished segmented archive") && status.contains(".uploading"),
        "{status}"
    );
    let out = rig.run();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_month_complete(&rig);
    assert_eq!(rig.archived_ids(&rig.remote_file(FILE)), rig.month_ids);
    assert!(!rig.remote_file(LATE1).exists());
}

/// The backup host goes away after the first segment was verified and deleted: the run fails
/// (exit 1) and its alert names the remote file that holds the deleted documents; once the
/// host is back the re-run completes the month.
fn backup_host_lost_after_a_segment_was_deleted_then_rerun_completes(backend: Backend) {
    let rig = rig(backend);
    let mut paused = rig.run_paused("upload:segment=2", "8");
    // Segment 1 is verified; wait for its purge.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while rig.january_ids().len() as u64 > ROWS - SEGMENT {
        assert!(
            std::time::Instant::now() < deadline,
            "segment 1 was never purged"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let sshd = rig.lab.state().server("sshd").unwrap().identity();
    opskit_lab::daemon::stop(&sshd, Duration::from_secs(5)).unwrap();
    let status = paused.wait().unwrap();
    assert_eq!(status.code(), Some(1));
    let alerts = rig.alerts();
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    let text = alerts[0].to_string();
    assert!(
        text.contains(&format!("{FILE}.uploading")) && text.contains("verified segments"),
        "the alert names the remote file: {text}"
    );
    assert_eq!(rig.january_ids().len() as u64, ROWS - SEGMENT);
    opskit_lab::lab::up(
        rig.lab.dir(),
        &[Component::Sshd],
        Some(archive_support::opskit_bin()),
    )
    .unwrap();
    let out = rig.run();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_month_complete(&rig);
}

/// A byte of segment 2 changes on the backup host between its upload and its read-back: the
/// run fails before any of segment 2's documents is deleted; `verify --remote` of the
/// unfinished file checks the verified segment; the re-run completes the month.
fn corrupted_remote_segment_is_caught_before_its_documents_are_deleted(backend: Backend) {
    let rig = rig(backend);
    let mut paused = rig.run_paused("upload:segment=2", "4");
    let tmp = rig.remote_file(&format!("{FILE}.uploading"));
    let mut bytes = std::fs::read(&tmp).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&tmp, &bytes).unwrap();
    let status = paused.wait().unwrap();
    assert_eq!(status.code(), Some(1));
    let left = rig.january_ids();
    assert!(
        left.len() as u64 >= ROWS - SEGMENT,
        "only segment 1 may be deleted: {} left",
        left.len()
    );
    let log = segment_log(&rig);
    assert_eq!(log["segments"].as_array().unwrap().len(), 1, "{log}");
    let alerts = rig.alerts();
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert!(alerts[0].to_string().contains("segment 2"), "{alerts:?}");
    // The export may have finished the local file before segment 2 was checked remotely.
    let partial = rig.staging_dir().join(format!("{FILE}.partial"));
    let local = if partial.exists() {
        partial
    } else {
        rig.local_file()
    };
    let v = rig.archive(&["verify", "--file", local.to_str().unwrap(), "--remote"]);
    assert_eq!(v.status.code(), Some(0), "{}", stderr(&v));
    assert!(stdout(&v).contains("1 verified segments"), "{}", stdout(&v));
    let out = rig.run();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_month_complete(&rig);
    assert_eq!(
        rig.archived_ids(&rig.remote_file(FILE)).len() as u64,
        SEGMENT,
        "the main file is closed with the one verified segment"
    );
}

/// Every scenario, on one source kind.
macro_rules! scenarios {
    ($m:ident) => {
        $m!(
            segmented_run_archives_the_month_segment_by_segment,
            kill_between_two_segments_then_rerun_completes_the_month,
            kill_during_a_segment_delete_then_rerun_completes_the_month,
            kill_before_a_segment_purge_loses_nothing,
            kill_during_the_final_rename_then_rerun_completes_the_month,
            backup_host_lost_after_a_segment_was_deleted_then_rerun_completes,
            corrupted_remote_segment_is_caught_before_its_documents_are_deleted,
        );
    };
}

scenarios!(on_both_sources);

/// The MySQL scenarios with `archive.purge.delete_returning = false`.
macro_rules! export_then_purge {
    ($($scenario:ident),* $(,)?) => {
        mod mysql_export_then_purge {
            $( #[test] fn $scenario() {
                super::EXPORT_THEN_PURGE.set(true);
                super::$scenario(super::Backend::Mysql)
            } )*
        }
    };
}

scenarios!(export_then_purge);
