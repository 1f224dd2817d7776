//! Issue 7, "data loss": each way a careless operator or a hostile reviewer made the archive
//! delete a row the backup host does not hold, tried on the lab's real MariaDB and sshd.
//!
//! 1. a purge from a local archive other than the one the commit verified;
//! 2. two runs of one month with different state directories; an undo removing another
//!    run's files;
//! 3. a month that has not ended;
//! 4. a restored month purged again by the next scheduled run;
//! 5. a row changed between the export and the purge;
//! 6. TIMESTAMP, DATETIME and string date columns;
//! 7. symlinks planted in the staging directory, and a staging directory others can write.

mod archive_support;

use std::os::unix::fs::PermissionsExt as _;
use std::time::Duration;

use archive_support::*;
use opskit_archive::bounds::MonthBounds;
use opskit_archive::source::Source as _;
use opskit_archive::source::mysql::MysqlSource;
use opskit_archive::staged::{ArchiveIdentity, ArchiveWriter};
use opskit_core::config::value::TimeZoneName;

/// Writes a fresh export of January from the lab's table to `path` (and its manifest), as an
/// operator restaging "the same month" by hand would.
fn export_january_to(rig: &Rig, path: &std::path::Path) {
    let mut source = MysqlSource::new(
        &rig.db.uri(),
        None,
        "test",
        "user_logs",
        "create_on",
        "Asia/Shanghai",
        Duration::from_secs(30),
    )
    .unwrap();
    let tz = "Asia/Shanghai".parse::<TimeZoneName>().unwrap().tz();
    let bounds = MonthBounds::new(MONTH.parse().unwrap(), tz).unwrap();
    let mut writer = ArchiveWriter::create(
        path,
        1,
        1,
        ArchiveIdentity {
            source: source.describe(),
            database: "test".into(),
            collection: "user_logs".into(),
            date_field: "create_on".into(),
            id_field: "id".into(),
            pass: 0,
            bounds: bounds.clone(),
        },
    )
    .unwrap();
    source.export(&bounds, &mut writer).unwrap();
    writer.finish().unwrap();
}

#[test]
fn item1_a_purge_refuses_a_local_archive_other_than_the_one_the_commit_verified() {
    let rig = Rig::new(1000, |_| {});
    rig.run_and_kill_at("purge:batch=2");
    assert_eq!(rig.january_ids().len(), 1000 - 250, "one batch deleted");
    // Rows that are in no uploaded archive arrive, and someone restages "the same month"
    // with a bigger export: archive and manifest agree with each other, not with the commit.
    rig.sql(
        "INSERT INTO test.user_logs (create_on, user_id, action, payload)
           SELECT '2024-01-20 10:00:00', seq, 'late', 'only in the table' FROM test.seq_0_to_99",
    );
    let before = rig.january_ids();
    export_january_to(&rig, &rig.local_file());
    let out = rig.run();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("is not the archive the commit step verified"),
        "{}",
        stderr(&out)
    );
    assert_eq!(rig.january_ids(), before, "nothing more may be deleted");
    let late = rig.sql("SELECT COUNT(*) FROM test.user_logs WHERE payload = 'only in the table'");
    assert_eq!(late.trim(), "100");
    let alerts = rig.alerts();
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(alerts[0]["step"], "purge");
    // What was deleted so far is all on the backup host.
    rig.assert_nothing_lost();
}

#[test]
fn item2_two_runs_of_one_month_never_overlap_whatever_their_state_directory() {
    let rig = Rig::new(1000, |_| {});
    let a = rig.run_paused("upload:bytes=1", "6");
    let other_state = rig.dir.path().join("other-state");
    let b = run_logged(
        rig.opskit()
            .arg("--state-dir")
            .arg(&other_state)
            .args(["archive", "run", "--month", MONTH]),
        &["run B"],
    );
    assert_eq!(b.status.code(), Some(3), "{}", stderr(&b));
    let text = stderr(&b);
    assert!(text.contains("holds"), "{text}");
    assert!(text.contains(&format!("pid {}", a.child.id())), "{text}");
    assert!(
        !other_state.join("journal").exists(),
        "the refused run recorded nothing"
    );
    assert!(a.finish().success(), "run A is not disturbed");
    rig.assert_month_archived();
    let alerts = rig.alerts();
    assert_eq!(alerts.len(), 1, "run B's refusal is alerted: {alerts:?}");
}

#[test]
fn item2_an_undo_removes_only_the_files_its_own_run_created() {
    let rig = Rig::new(500, |_| {});
    let paused = rig.run_paused("upload:start=1", "4");
    // Another process puts its own archive at the staged name (a new file, not ours).
    let theirs = rig.staging_dir().join("theirs.tmp");
    std::fs::write(&theirs, b"another run's archive").unwrap();
    std::fs::rename(&theirs, rig.local_file()).unwrap();
    let status = paused.finish();
    assert_eq!(status.code(), Some(1), "the upload sees a changed archive");
    assert_eq!(
        std::fs::read(rig.local_file()).unwrap(),
        b"another run's archive",
        "the undo removed a file it did not create"
    );
    assert!(
        !opskit_archive::staged::ArchiveManifest::path_for(&rig.local_file()).exists(),
        "the manifest this run wrote is removed"
    );
    assert_eq!(rig.january_ids(), rig.january);
}

#[test]
fn item3_the_current_and_future_months_exit_2_and_change_nothing() {
    let rig = Rig::new(100, |_| {});
    let tz = "Asia/Shanghai".parse::<TimeZoneName>().unwrap().tz();
    let now = chrono::Utc::now().with_timezone(&tz);
    let current = now.format("%Y-%m").to_string();
    let next = (now + chrono::Duration::days(32))
        .format("%Y-%m")
        .to_string();
    // Live rows of the current month.
    rig.sql(&format!(
        "INSERT INTO test.user_logs (create_on, user_id, action, payload) VALUES
           ('{}', 7, 'live', 'now')",
        now.format("%Y-%m-%d %H:%M:%S")
    ));
    let live = || rig.sql("SELECT COUNT(*) FROM test.user_logs WHERE action = 'live'");
    for month in [current.as_str(), next.as_str(), "9999-12"] {
        for args in [
            &["run", "--month", month][..],
            &["plan", "--month", month][..],
            &["run", "--month", month, "--dry-run"][..],
        ] {
            let out = rig.archive(args);
            assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
            assert!(
                stderr(&out).contains("has not ended")
                    || stderr(&out).contains("outside the range"),
                "{}",
                stderr(&out)
            );
        }
    }
    assert_eq!(live().trim(), "1", "live rows are never purged");
    assert!(
        !rig.state_dir().join("journal").exists(),
        "no month was recorded, let alone marked done"
    );
    let staged: Vec<_> = std::fs::read_dir(rig.staging_dir())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".gz"))
        .collect();
    assert!(staged.is_empty(), "{staged:?}");
}

#[test]
fn item4_a_restored_month_is_locked_while_restoring_skipped_by_scheduled_runs_and_rearchived_only_on_request()
 {
    let rig = Rig::new(600, |_| {});
    // A restore takes the month's run lock: not while a run of the month holds it.
    let paused = rig.run_paused("purge:batch=2", "5");
    let file = rig.local_file();
    let f = file.to_str().unwrap();
    let r = rig.archive(&["restore", "--file", f, "--target", &rig.db.uri()]);
    assert_eq!(r.status.code(), Some(3), "{}", stderr(&r));
    assert!(stderr(&r).contains("holds"), "{}", stderr(&r));
    assert!(paused.finish().success());
    rig.assert_month_archived();

    let r = rig.archive(&["restore", "--file", f, "--target", &rig.db.uri()]);
    assert_eq!(r.status.code(), Some(0), "{}", stderr(&r));
    assert!(stdout(&r).contains("marked restored"), "{}", stdout(&r));
    assert_eq!(rig.january_ids(), rig.january);

    // The scheduled run (no --month) sees the month has rows again, and leaves it alone.
    let sched = rig.archive(&["run"]);
    assert_eq!(sched.status.code(), Some(0), "{}", stderr(&sched));
    assert!(
        stdout(&sched).contains("skipped: it was restored"),
        "{}",
        stdout(&sched)
    );
    assert_eq!(
        rig.january_ids(),
        rig.january,
        "restored rows are not purged"
    );
    // An explicit run of the month without --rearchive is refused.
    let again = rig.run();
    assert_eq!(again.status.code(), Some(3), "{}", stderr(&again));
    assert!(stderr(&again).contains("--rearchive"), "{}", stderr(&again));
    assert_eq!(rig.january_ids(), rig.january);
    let status = rig.archive(&["status", "--month", MONTH]);
    assert!(stdout(&status).contains("restored "), "{}", stdout(&status));
    // Archiving it again is the operator's explicit command.
    let re = rig.archive(&["run", "--month", MONTH, "--rearchive"]);
    assert_eq!(re.status.code(), Some(0), "{}", stderr(&re));
    assert!(rig.january_ids().is_empty());
    assert_eq!(
        archived_ids(&rig.remote_file("test.user_logs.2024-01.late1.bson.gz")),
        rig.january
    );
}

#[test]
fn item5_a_row_changed_between_export_and_purge_stays_and_the_next_late_pass_archives_it() {
    let rig = Rig::new(1000, |_| {});
    let changed = *rig.january.iter().next_back().unwrap();
    let paused = rig.run_paused("purge:batch=1", "4");
    // Exported, uploaded and verified; the purge is about to start: a writer edits a row.
    rig.sql(&format!(
        "UPDATE test.user_logs SET payload = 'edited after the export' WHERE id = {changed}"
    ));
    assert!(paused.finish().success());
    let left = rig.january_ids();
    assert_eq!(
        left.into_iter().collect::<Vec<_>>(),
        [changed],
        "only the changed row stays"
    );
    let archived = archived_rows(&rig.remote_file(FILE));
    let old = archived.iter().find(|(id, _)| *id == changed).unwrap();
    assert_ne!(
        old.1, "edited after the export",
        "the archive has the old version"
    );
    assert_eq!(rig.metric("documents_changed_since_export"), Some(1.0));
    assert_eq!(rig.metric("documents_deleted"), Some(999.0));
    // The next scheduled run archives the new version in a late pass.
    let out = rig.archive(&["run"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(rig.january_ids().is_empty());
    let late = archived_rows(&rig.remote_file("test.user_logs.2024-01.late1.bson.gz"));
    assert_eq!(late, [(changed, "edited after the export".to_string())]);
}

/// A table whose `create_on` is `sql_type`, seeded at the month's edges in the writers' zone
/// (Asia/Shanghai, UTC+8): the first 8 hours of January are still December in UTC.
fn date_column_case(sql_type: &str) {
    let create = format!(
        "CREATE TABLE test.user_logs (id BIGINT AUTO_INCREMENT PRIMARY KEY, create_on {sql_type} NULL, \
         user_id INT NOT NULL, action VARCHAR(32) NOT NULL, payload VARCHAR(200) NOT NULL, \
         KEY idx_create_on (create_on)) ENGINE=InnoDB"
    );
    let rig = Rig::with_table(&create, 200, |_| {});
    if sql_type == "TIMESTAMP" {
        // The writers' zone must be known to the server for TIMESTAMP columns.
        let sql = std::process::Command::new("mariadb-tzinfo-to-sql")
            .args(["/usr/share/zoneinfo/Asia/Shanghai", "Asia/Shanghai"])
            .output()
            .unwrap();
        assert!(sql.status.success());
        rig.sql(&format!(
            "USE mysql;\n{}",
            String::from_utf8_lossy(&sql.stdout)
        ));
    }
    let zone = if sql_type == "TIMESTAMP" {
        "SET time_zone = 'Asia/Shanghai';"
    } else {
        ""
    };
    rig.sql(&format!(
        "{zone}
         INSERT INTO test.user_logs (create_on, user_id, action, payload) VALUES
           ('2024-01-01 00:00:00', 1, 'edge', 'first second'), ('2024-01-01 03:00:00', 1, 'edge', 'early'),
           ('2024-01-01 07:59:59', 1, 'edge', 'still UTC December'), ('2024-01-31 23:59:59', 1, 'edge', 'last second'),
           ('2023-12-31 23:59:59', 1, 'edge', 'december'), ('2024-02-01 00:00:00', 1, 'edge', 'february')"
    ));
    let january = rig.january_ids();
    let edges = rig.sql("SELECT id FROM test.user_logs WHERE payload IN ('first second', 'early', 'still UTC December', 'last second')");
    for id in edges.lines() {
        assert!(
            january.contains(&id.trim().parse().unwrap()),
            "{sql_type}: edge row {id} is in January"
        );
    }
    let total = rig.total();
    let out = rig.run();
    assert_eq!(out.status.code(), Some(0), "{sql_type}: {}", stderr(&out));
    assert!(
        rig.january_ids().is_empty(),
        "{sql_type}: January rows were archived but not deleted: {:?}",
        rig.january_ids()
    );
    assert_eq!(archived_ids(&rig.remote_file(FILE)), january, "{sql_type}");
    assert_eq!(
        rig.total(),
        total - january.len() as u64,
        "{sql_type}: the neighbours stay"
    );
    let again = rig.run();
    assert!(
        stdout(&again).contains("nothing to do"),
        "{sql_type}: the month must not be archived again: {}",
        stdout(&again)
    );
}

#[test]
fn item6_timestamp_columns_use_the_writers_zone_in_every_session() {
    date_column_case("TIMESTAMP");
}

#[test]
fn item6_datetime_columns() {
    date_column_case("DATETIME");
}

#[test]
fn item6_string_columns() {
    date_column_case("VARCHAR(32)");
}

#[test]
fn item7_planted_symlinks_are_never_followed_and_an_open_staging_dir_is_refused() {
    let rig = Rig::new(300, |_| {});
    let staging = rig.staging_dir();
    // Anyone may write into it: refused before anything (exit 3).
    std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let out = rig.run();
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("others can write"),
        "{}",
        stderr(&out)
    );
    rig.assert_untouched();
    std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(0o700)).unwrap();

    // A symlink planted at the partial name points at a file worth keeping.
    let victim = rig.dir.path().join("victim");
    std::fs::write(&victim, b"precious").unwrap();
    let partial = opskit_archive::staged::partial_path(&rig.local_file());
    std::os::unix::fs::symlink(&victim, &partial).unwrap();
    let out = rig.run();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    let meta = std::fs::symlink_metadata(rig.local_file()).unwrap();
    assert!(
        meta.file_type().is_file(),
        "the archive must be a regular file"
    );
    rig.assert_month_archived();
}
