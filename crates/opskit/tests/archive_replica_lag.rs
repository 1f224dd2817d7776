//! Issue 14: replica lag pauses the purge of a MySQL source (like pt-archiver's
//! `--check-slave-lag`), on the lab's real replication topology (Master → Slave_01 → Slave_03,
//! Master → Slave_02 → Slave_04). A stopped SQL thread makes `Seconds_Behind_Master` NULL,
//! which counts as too much lag: the purge pauses, says so, and either goes on once the
//! replica replicates again or stops after `max_lag_wait_secs` (exit 1, alert, resumable).

mod archive_support;

use std::time::Duration;

use archive_support::*;
use opskit_core::config::value::Positive;

/// Slave_01 by name; Slave_02, Slave_03 (below Slave_01) and Slave_04 by discovery; a lag
/// above 5 s pauses the purge, a pause longer than 3 s stops it.
fn watch_the_replicas(c: &mut opskit_core::config::Config, mysql: &opskit_lab::MysqlLab) {
    let s1 = mysql.get("Slave_01").unwrap();
    c.archive.purge.replicas = vec![format!("mysql://{}:{}/", s1.address, s1.port)];
    c.archive.purge.discover_replicas = true;
    c.archive.purge.max_lag_secs = Positive::new(5);
    c.archive.purge.max_lag_wait_secs = Positive::new(3);
}

#[test]
fn a_stopped_replica_pauses_the_purge_which_stops_after_the_limit_and_resumes_once_it_replicates() {
    let mut rig = Rig::on_replicated_master(1000, watch_the_replicas);
    let mysql = rig.mysql.clone().unwrap();

    // A replica entry that cannot be watched (nothing listens there; the master is no
    // replica) is refused before the export: exit 3, nothing exported or deleted.
    let dead_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let master = mysql.get("Master").unwrap();
    let good = rig.config.archive.purge.replicas.clone();
    rig.set_config(|c| {
        c.archive
            .purge
            .replicas
            .push(format!("mysql://127.0.0.1:{dead_port}/"));
        c.archive
            .purge
            .replicas
            .push(format!("mysql://{}:{}/", master.address, master.port));
    });
    let plan = rig.archive(&["plan", "--month", MONTH]);
    assert_eq!(plan.status.code(), Some(3), "{}", stdout(&plan));
    assert!(
        stdout(&plan).contains("REFUSED")
            && stdout(&plan).contains(&format!("127.0.0.1:{dead_port}")),
        "{}",
        stdout(&plan)
    );
    let out = rig.run();
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains(&format!("127.0.0.1:{dead_port}")) && err.contains("does not answer"),
        "{err}"
    );
    assert!(err.contains("it is not a replica"), "{err}");
    rig.assert_untouched();
    let before = rig.alerts().len();
    assert_eq!(before, 1, "the refusal alerts once: {:?}", rig.alerts());
    rig.set_config(|c| c.archive.purge.replicas = good);

    let plan = rig.archive(&["plan", "--month", MONTH]);
    assert!(
        stdout(&plan).contains("SHOW SLAVE HOSTS") && stdout(&plan).contains("not replicating"),
        "the plan says which replicas pause the purge: {}",
        stdout(&plan)
    );

    // Two batches go through, then Slave_03 (a replica of a replica) stops applying.
    pause_then_resume(&mut rig, 1000, Some(1000 - 2 * 250), before, "purge");
}

/// The same pause on a segmented month read by `DELETE … RETURNING` (MariaDB): the lag is
/// looked at before each segment's `COMMIT`; what was not committed when the wait gave up is
/// rolled back, and the replicas apply every segment's delete.
#[test]
fn a_stopped_replica_pauses_the_commits_of_a_month_read_by_its_delete() {
    // Enough rows for the optimizer to walk the date index (a table of a few pages is
    // scanned and sorted instead, and the run then exports, then purges).
    let mut rig = Rig::on_replicated_master(5000, |c, mysql| {
        watch_the_replicas(c, mysql);
        c.archive.segment_docs = Positive::new(500);
    });
    // The purge of a segmented month runs inside the export step; the lanes' first two
    // segments (whichever came first) were committed.
    let err = pause_then_resume(&mut rig, 5000, None, 0, "export");
    // Two segments were committed; the third segment's delete waited, uncommitted.
    assert!(err.contains("before committing batch 3"), "{err}");
}

/// Runs the month (`rows` documents) paused before its third purge batch (or segment commit), stops Slave_03's
/// SQL thread: the purge pauses, gives up after `max_lag_wait_secs` with `left` January rows
/// in the source (by default: the month less the first two segments of the segment log) (exit 1, one more alert than `before`, from `step`); the re-run pauses until the replica
/// applies again, then completes the month, and every replica applied every delete. Returns
/// the stderr of the run that paused (from the pause on).
fn pause_then_resume(
    rig: &mut Rig,
    rows: usize,
    left: Option<usize>,
    before: usize,
    step: &str,
) -> String {
    let mysql = rig.mysql.clone().unwrap();
    let s3 = mysql.get("Slave_03").unwrap();
    let s3_name = format!("{}:{}", s3.address, s3.port);
    let paused = rig.run_paused("purge:batch=3", "3");
    mysql.sql("Slave_03", "STOP SLAVE SQL_THREAD").unwrap();
    let (status, _, err) = paused.finish_with_output();
    let paused_err = err.clone();
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("purge paused"), "{err}");
    assert!(
        err.contains(&s3_name) && err.contains("not replicating"),
        "the operator sees which replica and why: {err}"
    );
    assert_eq!(
        rig.january_ids().len(),
        left.unwrap_or_else(|| rows - first_two_segments(rig)),
        "no batch after the pause began"
    );
    rig.assert_nothing_lost();
    let alerts = rig.alerts();
    assert_eq!(alerts.len(), before + 1, "{alerts:?}");
    assert_eq!(alerts[before]["step"], step);
    let text = alerts[before]["error"].as_str().unwrap();
    assert!(
        text.contains(&s3_name) && text.contains("max_lag_wait_secs") && text.contains("resume"),
        "{text}"
    );
    let waited = rig.metric("purge_paused_seconds").unwrap();
    assert!(waited >= 3.0, "paused {waited}s");

    // The re-run pauses too until the replica applies again, then finishes the month.
    rig.set_config(|c| c.archive.purge.max_lag_wait_secs = Positive::new(120));
    let restart = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(4));
        mysql.sql("Slave_03", "START SLAVE SQL_THREAD").unwrap();
    });
    let out = rig.run();
    restart.join().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("resuming the purge"), "{err}");
    assert!(
        err.contains("purge paused") && err.contains(&s3_name),
        "{err}"
    );
    assert!(err.contains("the purge goes on"), "{err}");
    // A segmented re-run ends with the late pass of what the stopped run had not verified:
    // its metrics replace those of the pass that paused.
    if step == "purge" {
        let waited = rig.metric("purge_paused_seconds").unwrap();
        assert!(waited > 0.5, "paused {waited}s");
    }
    rig.assert_month_archived();
    assert_eq!(
        rig.alerts().len(),
        before + 1,
        "a pause that ends is no failure"
    );
    // The replicas applied every delete.
    for name in ["Slave_01", "Slave_02", "Slave_03", "Slave_04"] {
        let s = &rig.mysql.as_ref().unwrap().get(name).unwrap().server;
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let left = s
                .sql("SELECT COUNT(*) FROM test.user_logs WHERE create_on >= '2024-01-01' AND create_on < '2024-02-01'")
                .unwrap();
            if left.trim() == "0" {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{name} still has {left} January rows"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    paused_err
}

/// Documents in the first two verified segments of the month's segment log.
fn first_two_segments(rig: &Rig) -> usize {
    let path = rig
        .state_dir()
        .join("archive")
        .join("archive-test.user_logs-2024-01.segments.json");
    let log: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    log["segments"].as_array().unwrap()[..2]
        .iter()
        .map(|s| s["docs"].as_u64().unwrap() as usize)
        .sum()
}
