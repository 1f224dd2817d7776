//! `opskit archive` end to end against the lab's real MariaDB and real sshd/SFTP: the whole
//! month, late rows, a different file at the remote name, disk full, bad config, an
//! unreachable source, a corrupted archive, a large resumed upload, malformed dates, a delete
//! session chosen as a deadlock victim. Kill -9 in each stage and the backup host down after
//! the upload run on both sources in `archive_sources`.
//!
//! The invariant checked after every fault: each January row that existed before the run is
//! either still in the table or in the archive on the backup host — never neither — and once
//! a run succeeds none is left in the table. The issue-7 cases live in `archive_data_loss`,
//! `archive_preflight` and `archive_operator`.

mod archive_support;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

use archive_support::*;

#[test]
fn run_archives_the_month_to_the_backup_host_and_deletes_exactly_it() {
    let rig = Rig::new(3000, |_| {});
    let plan = rig.archive(&["plan", "--month", MONTH]);
    assert_eq!(plan.status.code(), Some(0));
    let text = stdout(&plan);
    assert!(
        text.contains("3000 documents (index idx_create_on)"),
        "{text}"
    );
    assert!(text.contains("missing 1"), "{text}");
    assert!(text.contains("malformed 1"), "{text}");
    assert!(
        text.contains("2024-01-01 00:00:00 ≤ create_on < 2024-02-01 00:00:00 (Asia/Shanghai)"),
        "{text}"
    );
    assert!(text.contains("2023-12-31T16:00:00+00:00"), "{text}");
    assert!(text.contains("bak.ipo.com answers"), "{text}");

    let out = rig.run();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    rig.assert_month_archived();
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(rig.remote_file(&format!("{FILE}.manifest.json"))).unwrap(),
    )
    .unwrap();
    assert_eq!(manifest["count"], 3000);
    assert_eq!(manifest["bounds"]["zone"], "Asia/Shanghai");
    assert_eq!(manifest["id_field"], "id");
    assert!(manifest["min_date"].as_str().unwrap() >= "2024-01-01 00:00:00");
    assert!(manifest["max_date"].as_str().unwrap() < "2024-02-01 00:00:00");
    let prom = std::fs::read_to_string(
        rig.config
            .general
            .metrics_dir
            .path()
            .join("opskit_archive.prom"),
    )
    .unwrap();
    assert!(
        prom.contains("documents_deleted{runbook=\"archive\"} 3000"),
        "{prom}"
    );
    assert!(
        prom.contains("documents_exported{runbook=\"archive\"} 3000"),
        "{prom}"
    );
    assert!(prom.contains("anomalies{runbook=\"archive\"} 2"), "{prom}");
    assert!(rig.alerts().is_empty());

    // A finished month is not run again.
    let again = rig.run();
    assert_eq!(again.status.code(), Some(0));
    assert!(
        stdout(&again).contains("nothing to do"),
        "{}",
        stdout(&again)
    );

    // verify (local and remote), then restore puts every row back.
    let file = rig.local_file();
    let v = rig.archive(&["verify", "--file", file.to_str().unwrap(), "--remote"]);
    assert_eq!(v.status.code(), Some(0));
    let r = rig.archive(&[
        "restore",
        "--file",
        file.to_str().unwrap(),
        "--target",
        &rig.db.uri(),
    ]);
    assert_eq!(r.status.code(), Some(0));
    assert!(stdout(&r).contains("3000 inserted"), "{}", stdout(&r));
    assert_eq!(rig.january_ids(), rig.january);
}

#[test]
fn rows_inserted_after_the_export_are_kept_and_taken_by_the_next_run() {
    let rig = Rig::new(1000, |_| {});
    let paused = rig.run_paused("purge:batch=1", "4");
    // Exported, uploaded and verified: now late January rows arrive.
    rig.sql(
        "INSERT INTO test.user_logs (create_on, user_id, action, payload) VALUES
           ('2024-01-10 12:00:00', 9, 'late', 'a'), ('2024-01-31 23:59:59', 9, 'late', 'b')",
    );
    assert!(paused.finish().success());
    let late: BTreeSet<i64> = rig.january_ids();
    assert_eq!(late.len(), 2, "the late rows must not be deleted");
    assert_eq!(archived_ids(&rig.remote_file(FILE)), rig.january);

    // The monthly cron job runs without --month (for the previous calendar month): it
    // takes the late January rows first.
    let out = rig.archive(&["run"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(stderr(&out).contains("late pass 1"), "{}", stderr(&out));
    assert!(rig.january_ids().is_empty());
    assert_eq!(
        archived_ids(&rig.remote_file("test.user_logs.2024-01.late1.bson.gz")),
        late
    );
    let again = rig.run();
    assert!(stdout(&again).contains("nothing to do"));
    assert_eq!(
        rig.total(),
        rig.others,
        "only the rows outside January are left"
    );
}

#[test]
fn a_different_file_at_the_remote_name_is_never_overwritten() {
    let rig = Rig::new(500, |_| {});
    let remote = rig.remote_file(FILE);
    std::fs::create_dir_all(remote.parent().unwrap()).unwrap();
    std::fs::write(&remote, b"someone else's archive").unwrap();
    let out = rig.run();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("refusing to overwrite"),
        "{}",
        stderr(&out)
    );
    assert_eq!(std::fs::read(&remote).unwrap(), b"someone else's archive");
    assert_eq!(rig.january_ids(), rig.january);
    assert_eq!(rig.alerts().len(), 1);
}

#[test]
fn disk_full_deletes_nothing_leaves_no_partial_and_a_too_small_disk_is_refused() {
    if !can_unshare() {
        panic!("this test needs `unshare -m` (mount namespaces) and root");
    }
    // 1. The estimate says it fits (ratio 1000 assumed) but the disk fills up: exit 1, alert,
    //    and the unfinished archive is gone.
    let rig = Rig::new(3000, |c| {
        c.archive.expected_compression_ratio = opskit_core::config::value::Positive::new(1000);
    });
    let out = run_in_small_tmpfs(&rig);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).to_lowercase().contains("no space"),
        "{}",
        stderr(&out)
    );
    assert!(
        stdout(&out).contains("STAGING: .test.user_logs.2024-01.lock\n")
            && !stdout(&out).contains(".partial"),
        "only the month's lock file may stay on the full disk: {}",
        stdout(&out)
    );
    assert_eq!(rig.january_ids(), rig.january);
    let alerts = rig.alerts();
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0]["step"], "export");
    drop(rig);

    // 2. The estimate (ratio 4) does not fit: refused before anything, exit 3.
    let rig = Rig::new(3000, |_| {});
    let out = run_in_small_tmpfs(&rig);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("not enough free space"),
        "{}",
        stderr(&out)
    );
    assert_eq!(rig.january_ids(), rig.january);
}

/// `opskit archive run` in a private mount namespace with a 96 KiB private tmpfs as staging
/// dir; prints what is left in it as `STAGING: <name>` lines.
fn run_in_small_tmpfs(rig: &Rig) -> std::process::Output {
    let staging = rig.staging_dir();
    std::fs::create_dir_all(&staging).unwrap();
    run_in_namespace(
        rig,
        &format!(
            "mount -t tmpfs -o size=96k,mode=0700 opskit-test {}",
            staging.display()
        ),
        &["archive", "run", "--month", MONTH],
        &format!("ls -A {} | sed 's/^/STAGING: /'", staging.display()),
    )
}

#[test]
fn bad_config_exits_2_and_an_unreachable_source_exits_3() {
    let rig = Rig::new(100, |_| {});
    // A password in the URI is a config error (exit 2), and the message says where.
    let bad = rig.config_path.with_file_name("bad.toml");
    let text = std::fs::read_to_string(&rig.config_path)
        .unwrap()
        .replace("mysql://root@", "mysql://root:secret@");
    std::fs::write(&bad, text).unwrap();
    let out = Command::new(opskit_bin())
        .args([
            "--config",
            bad.to_str().unwrap(),
            "archive",
            "run",
            "--month",
            MONTH,
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("archive.source_uri"),
        "{}",
        stderr(&out)
    );

    // A world-readable password file: exit 2.
    let pw = rig.config_path.with_file_name("pw");
    std::fs::write(&pw, "x\n").unwrap();
    let mut c = rig.config.clone();
    c.archive.source_password_file = Some(pw.to_str().unwrap().parse().unwrap());
    std::fs::write(&bad, c.to_toml()).unwrap();
    let out = Command::new(opskit_bin())
        .args([
            "--config",
            bad.to_str().unwrap(),
            "archive",
            "run",
            "--month",
            MONTH,
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("0600"), "{}", stderr(&out));

    // Nothing listens on the source port: exit 3, with the server named, and an alert.
    let mut c = rig.config.clone();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    c.archive.source_uri = format!("mysql://root@127.0.0.1:{port}/");
    std::fs::write(&bad, c.to_toml()).unwrap();
    let out = Command::new(opskit_bin())
        .args([
            "--config",
            bad.to_str().unwrap(),
            "archive",
            "run",
            "--month",
            MONTH,
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("127.0.0.1:{port}")),
        "{}",
        stderr(&out)
    );
    assert_eq!(rig.alerts().len(), 1);
    assert_eq!(rig.january_ids(), rig.january);
}

#[test]
fn verify_detects_a_corrupted_archive() {
    let rig = Rig::new(300, |_| {});
    assert_eq!(rig.run().status.code(), Some(0));
    let copy = rig.config_path.with_file_name(FILE);
    let mut bytes = std::fs::read(rig.local_file()).unwrap();
    std::fs::copy(
        PathBuf::from(format!("{}.manifest.json", rig.local_file().display())),
        PathBuf::from(format!("{}.manifest.json", copy.display())),
    )
    .unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    std::fs::write(&copy, &bytes).unwrap();
    let out = rig.archive(&["verify", "--file", copy.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("does not match its manifest"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_resumed_purge_refuses_an_archive_that_changed_since_it_was_verified() {
    let rig = Rig::new(1000, |_| {});
    rig.run_and_kill_at("purge:batch=2");
    let left = rig.january_ids();
    assert_eq!(left.len(), 1000 - 250);
    // Someone truncates the staged archive: its ids can no longer be trusted.
    let local = rig.local_file();
    let bytes = std::fs::read(&local).unwrap();
    std::fs::write(&local, &bytes[..bytes.len() / 2]).unwrap();
    let out = rig.run();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("is not the archive the commit step verified"),
        "{}",
        stderr(&out)
    );
    assert_eq!(rig.january_ids(), left, "nothing more may be deleted");
    rig.assert_nothing_lost();
    assert_eq!(rig.alerts().len(), 1);
}

#[test]
fn kill_in_the_middle_of_a_large_upload_then_rerun_resumes_it() {
    // About 1.3 MB compressed: the kill comes after the first 1 MiB block. The month is
    // uploaded in one piece (the classic path: segments have their own tests).
    let rig = Rig::new(25_000, |c| {
        c.archive.segment_docs = opskit_core::config::value::Positive::new(100_000);
        c.archive.purge.batch_size = opskit_core::config::value::Positive::new(5000);
        c.archive.purge.min_batch_size = opskit_core::config::value::Positive::new(5000);
        c.archive.purge.max_batch_size = opskit_core::config::value::Positive::new(5000);
    });
    rig.run_and_kill_at("upload:bytes=1");
    let partial = rig.remote_file(&format!("{FILE}.uploading"));
    let kept = std::fs::metadata(&partial).unwrap().len();
    let full = std::fs::metadata(rig.local_file()).unwrap().len();
    assert!(
        kept > 0 && kept < full,
        "a partial upload: {kept} of {full} bytes"
    );
    assert_eq!(rig.january_ids(), rig.january);
    let out = rig.run();
    assert_eq!(out.status.code(), Some(0));
    assert!(
        stderr(&out).contains(&format!(
            "resuming the upload of user_logs/{FILE}.uploading at byte {kept}"
        )),
        "{}",
        stderr(&out)
    );
    rig.assert_month_archived();
}

#[test]
fn a_malformed_date_inside_the_month_is_reported_and_never_archived_nor_deleted() {
    let rig = Rig::new(300, |_| {});
    // Both sort inside January's string range, yet neither has the writers' exact shape.
    rig.db
        .sql(
            "INSERT INTO test.user_logs (create_on, user_id, action, payload) VALUES
               ('2024-01-05T03:03:11', 1, 'anomaly', 'iso T'),
               ('2024-01-05 03:03:11.5', 1, 'anomaly', 'fraction');",
        )
        .unwrap();
    let plan = rig.archive(&["plan", "--month", MONTH]);
    assert_eq!(plan.status.code(), Some(0));
    assert!(stdout(&plan).contains("300 documents"), "{}", stdout(&plan));
    assert!(stdout(&plan).contains("malformed 3"), "{}", stdout(&plan));
    let run = rig.run();
    assert_eq!(run.status.code(), Some(0), "{}", stderr(&run));
    let kept = rig.sql("SELECT COUNT(*) FROM test.user_logs WHERE action = 'anomaly'");
    assert_eq!(kept.trim(), "4", "every anomaly is still there");
    let archived = archived_ids(&rig.local_file());
    assert_eq!(archived.len(), 300);
    assert_eq!(archived, rig.january);
}

#[test]
fn a_delete_session_chosen_as_deadlock_victim_retries_its_part_and_the_month_completes() {
    // 250 documents per batch over 2 sessions: batch 1's second part is ids[125..250].
    let rig = Rig::new(1000, |_| {});
    let ids: Vec<i64> = rig.january.iter().copied().collect();
    let (a, b) = (ids[130], ids[200]);
    rig.sql("CREATE TABLE test.ballast (n INT PRIMARY KEY) ENGINE=InnoDB");
    let paused = rig.run_paused("purge:batch=1", "2");
    // A heavy transaction (20,000 undo records, so InnoDB picks the purge's session as the
    // victim) locks B; the purge's second session then locks A.. and waits for B; then the
    // heavy one asks for A: a deadlock, which rolls the purge's part back.
    let db = rig.db.clone();
    let blocker = std::thread::spawn(move || {
        db.sql(&format!(
            "USE test;
             SET SESSION innodb_lock_wait_timeout = 60;
             START TRANSACTION;
             INSERT INTO test.ballast SELECT seq FROM seq_1_to_20000;
             SELECT id FROM test.user_logs WHERE id = {b} FOR UPDATE;
             SELECT SLEEP(4);
             SELECT id FROM test.user_logs WHERE id = {a} FOR UPDATE;
             ROLLBACK;"
        ))
    });
    let (status, _, err) = paused.finish_with_output();
    blocker.join().unwrap().unwrap();
    assert!(
        err.contains("Deadlock found") && err.contains("retrying it (1/5)"),
        "the deadlock happened and the part was sent again: {err}"
    );
    assert_eq!(status.code(), Some(0), "{err}");
    rig.assert_month_archived();
    assert_eq!(rig.metric("documents_deleted"), Some(1000.0));
    assert_eq!(rig.metric("documents_already_gone"), Some(0.0));
    assert!(rig.alerts().is_empty());
}
