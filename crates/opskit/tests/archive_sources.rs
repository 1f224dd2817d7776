//! The archive end to end on both sources, one scenario per function, each run as
//! `mysql::<scenario>` (the lab's MariaDB) and `mongodb_secantusdb::<scenario>` (the lab's
//! MongoDB-compatible server, SecantusDB — not MongoDB: it proves the queries and commands
//! work against real storage, not how MongoDB behaves or performs). Small months (hundreds of
//! documents): SecantusDB deletes a few hundred documents a second.
//!
//! Scenarios: plan, run, verify, restore, re-run (no-op), bad dates kept; kill -9 in the
//! export, the upload and the purge, then resume; the backup host down after the upload, then
//! re-run. Tests named `secantusdb_…` are about a way SecantusDB differs from MongoDB (see
//! `docs/runbooks/archive.md`, "Rehearsing the MongoDB path").

mod archive_support;

use std::time::Duration;

use archive_support::sources::{Backend, SourceRig, on_both_sources};
use archive_support::{FILE, MONTH, stderr, stdout};
use opskit_core::config::value::Positive;
use opskit_lab::Component;

const ROWS: u64 = 300;
const BATCH: u64 = 100;

fn rig(backend: Backend) -> SourceRig {
    SourceRig::new(backend, ROWS, BATCH, |_| {})
}

/// Plan, run, verify, restore; a re-run does nothing; documents with bad dates stay.
fn plan_run_verify_restore_rerun_and_bad_dates_stay(backend: Backend) {
    let rig = rig(backend);
    let plan = rig.archive(&["plan", "--month", MONTH]);
    assert_eq!(plan.status.code(), Some(0));
    let text = stdout(&plan);
    assert!(
        text.contains(&format!("{ROWS} documents (index ")),
        "{text}"
    );
    // The seed's four bad dates: MariaDB has NULL, unpadded, ISO `T` and ''; SecantusDB has a
    // missing field, a BSON date, unpadded and ISO `T`.
    let anomalies = match backend {
        Backend::Mysql => {
            "4 documents no month will ever match (missing 1, other type 0, malformed 3)"
        }
        Backend::Mongodb => {
            "4 documents no month will ever match (missing 1, other type 1, malformed 2)"
        }
    };
    assert!(text.contains(anomalies), "{text}");

    let out = rig.run();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    rig.assert_month_archived();
    assert_eq!(rig.metric("documents_exported"), Some(ROWS as f64));
    assert_eq!(rig.metric("documents_deleted"), Some(ROWS as f64));
    assert_eq!(rig.metric("anomalies"), Some(4.0));
    assert_eq!(rig.metric("purge_batch_size"), Some(BATCH as f64));
    assert!(rig.alerts().is_empty(), "{:?}", rig.alerts());
    // The month's 4 bad dates: one warning to the webhook, the run went on.
    assert_eq!(rig.warnings().len(), 1, "{:?}", rig.webhook_posts());
    let log = stderr(&out);
    assert!(
        log.contains(&format!("purge (batch {BATCH})")),
        "the progress line shows the batch size: {log}"
    );
    if backend == Backend::Mongodb {
        assert_eq!(
            log.matches("standalone: no replication lag to watch")
                .count(),
            1,
            "{log}"
        );
        assert!(
            !log.lines()
                .any(|l| l.contains("WARN") && l.contains("repl")),
            "a standalone server is normal: {log}"
        );
    }

    let again = rig.run();
    assert_eq!(again.status.code(), Some(0));
    assert!(
        stdout(&again).contains("nothing to do"),
        "{}",
        stdout(&again)
    );
    assert_eq!(rig.warnings().len(), 1, "a re-run does not warn again");

    let file = rig.local_file();
    let file = file.to_str().unwrap();
    let v = rig.archive(&["verify", "--file", file, "--remote"]);
    assert_eq!(v.status.code(), Some(0));
    let r = rig.archive(&["restore", "--file", file, "--target", &rig.uri()]);
    assert_eq!(r.status.code(), Some(0));
    assert!(
        stdout(&r).contains(&format!("{ROWS} inserted")),
        "{}",
        stdout(&r)
    );
    assert_eq!(rig.january_ids(), rig.month_ids);
    assert_eq!(rig.counts(), rig.seeded);
}

fn kill_during_export_then_rerun_loses_nothing(backend: Backend) {
    let rig = rig(backend);
    rig.run_and_kill_at("export:records=1");
    assert_eq!(
        rig.january_ids(),
        rig.month_ids,
        "an export deletes nothing"
    );
    assert!(
        !rig.local_file().exists(),
        "an unfinished export must not look finished"
    );
    let out = rig.run();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    rig.assert_month_archived();
}

fn kill_during_upload_then_rerun_loses_nothing(backend: Backend) {
    let rig = rig(backend);
    rig.run_and_kill_at("upload:bytes=1");
    assert_eq!(rig.january_ids(), rig.month_ids);
    assert!(
        !rig.remote_file(FILE).exists(),
        "the final name appears only when verified"
    );
    let out = rig.run();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    rig.assert_month_archived();
}

fn kill_during_purge_then_rerun_resumes_and_loses_nothing(backend: Backend) {
    let rig = rig(backend);
    rig.run_and_kill_at("purge:batch=2");
    assert_eq!(
        rig.assert_nothing_lost(),
        rig.month_ids,
        "the archive was verified before the purge"
    );
    assert_eq!(
        rig.january_ids().len() as u64,
        ROWS - BATCH,
        "one batch was deleted"
    );
    let out = rig.run();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("resuming the purge"),
        "{}",
        stderr(&out)
    );
    rig.assert_month_archived();
    assert_eq!(rig.metric("documents_deleted"), Some((ROWS - BATCH) as f64));
}

/// The backup host goes down after the upload: the commit fails, nothing is deleted; once it
/// is back the re-run reuses the uploaded archive, and a document written meanwhile waits for
/// the late pass.
fn backup_host_down_after_the_upload_then_rerun_reuses_the_archive(backend: Backend) {
    let rig = rig(backend);
    let mut paused = rig.run_paused("commit:start=1", "3");
    let sshd = rig.lab.state().server("sshd").unwrap().identity();
    opskit_lab::daemon::stop(&sshd, Duration::from_secs(5)).unwrap();
    assert_eq!(paused.wait().unwrap().code(), Some(1));
    assert_eq!(rig.january_ids(), rig.month_ids, "nothing deleted");
    assert_eq!(rig.alerts().len(), 1);
    let uploaded = std::fs::read(rig.remote_file(FILE)).unwrap();

    rig.insert_late("2024-01-20 08:00:00");
    opskit_lab::lab::up(
        rig.lab.dir(),
        &[Component::Sshd],
        Some(archive_support::opskit_bin()),
    )
    .unwrap();
    let out = rig.run();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stderr(&out).contains("reusing"), "{}", stderr(&out));
    assert_eq!(std::fs::read(rig.remote_file(FILE)).unwrap(), uploaded);
    assert_eq!(rig.archived_ids(&rig.remote_file(FILE)), rig.month_ids);
    assert_eq!(rig.january_ids().len(), 1, "the late document waits");
    let late = rig.archive(&["run"]);
    assert_eq!(late.status.code(), Some(0), "{}", stderr(&late));
    assert!(rig.january_ids().is_empty());
}

on_both_sources!(
    plan_run_verify_restore_rerun_and_bad_dates_stay,
    kill_during_export_then_rerun_loses_nothing,
    kill_during_upload_then_rerun_loses_nothing,
    kill_during_purge_then_rerun_resumes_and_loses_nothing,
    backup_host_down_after_the_upload_then_rerun_reuses_the_archive,
);

/// SecantusDB answers a `delete` of thousands of ids slowly (MongoDB does not; see the
/// runbook): the month's first batch (5,000 allowed, the month's 1,000 documents sent) gets no
/// answer within the limit — which used to stop the run — and is retried smaller; the
/// adapted batches complete the month.
#[test]
fn secantusdb_slow_large_deletes_a_5000_batch_that_times_out_is_retried_smaller_and_completes() {
    const MONTH_ROWS: u64 = 1000;
    let mut rig = SourceRig::new(Backend::Mongodb, MONTH_ROWS, 5000, |c| {
        // One second (plus as much slack for the server's own time-out) for each delete batch.
        c.archive.source_timeout_secs = Positive::new(1);
    });
    rig.config.archive.purge.min_batch_size = Positive::new(10);
    std::fs::write(&rig.config_path, rig.config.to_toml()).unwrap();
    let out = rig.run();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let log = stderr(&out);
    assert!(
        log.contains("deleting a batch of 1000 documents")
            && log.contains("retrying it as batches of"),
        "{log}"
    );
    rig.assert_month_archived();
    assert!(rig.metric("purge_batch_retries").unwrap() >= 1.0);
    let size = rig.metric("purge_batch_size").unwrap();
    assert!(
        (10.0..1000.0).contains(&size),
        "the batch in use adapted: {size}"
    );
    let deleted = rig.metric("documents_deleted").unwrap();
    let gone = rig.metric("documents_already_gone").unwrap();
    assert_eq!(
        deleted + gone,
        MONTH_ROWS as f64,
        "a timed-out attempt may finish on the server: its documents count as gone"
    );
}
