//! Issue 7, "what the operator sees", on the lab's real servers, and the exit codes of
//! `opskit archive` (issue 8):
//!
//! 14. Ctrl-C / SIGTERM stops at a batch boundary and says how to resume; a resumed purge
//!     does not count documents it already deleted as lost;
//! 15. `archive status`: header, steps in run order, running runs, `--month`, warnings;
//! 16. the cron wrapper with the real opskit: one alert per failure, same schema, a log per
//!     month;
//! 17. restore described one way in `--help`, the manifest and the runbooks;
//!
//! and issue 14: date anomalies send one warning per month to the webhook.

mod archive_support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use archive_support::*;
use nix::sys::signal::Signal;
use opskit_lab::Component;

const WRAPPER: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../deploy/cron/user_logs_archive.sh"
);
const RUNBOOK_EN: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../docs/runbooks/archive.md"
);
const RUNBOOK_ZH: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../docs/runbooks/archive.zh.md"
);

#[test]
fn item14_sigterm_stops_the_purge_at_a_batch_boundary_and_the_same_command_resumes() {
    let rig = Rig::new(3000, |_| {});
    let paused = rig.run_paused("purge:batch=3", "3");
    signal(paused.child.id(), Signal::SIGTERM);
    let (status, _, err) = paused.finish_with_output();
    assert_eq!(
        status.code(),
        Some(1),
        "stopped on request is a failure (alerted)"
    );
    assert!(
        err.contains("stopped by SIGTERM before purge batch 4"),
        "{err}"
    );
    assert!(
        err.contains("run `opskit archive run --month 2024-01` again"),
        "{err}"
    );
    assert_eq!(
        rig.january_ids().len(),
        3000 - 3 * 250,
        "the batch in flight finished, no other started"
    );
    rig.assert_nothing_lost();
    let alerts = rig.alerts();
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(alerts[0]["step"], "purge");
    let out = rig.run();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("resuming the purge"),
        "{}",
        stderr(&out)
    );
    rig.assert_month_archived();
}

#[test]
fn item14_a_resumed_purge_counts_documents_it_already_deleted_as_gone_not_lost() {
    let rig = Rig::new(1000, |_| {});
    // Killed after batch 2 was deleted and before its checkpoint was saved.
    rig.run_and_kill_at("purge:deleted=2");
    assert_eq!(rig.january_ids().len(), 1000 - 500);
    let out = rig.run();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        !stderr(&out).contains("were not deleted") && !stderr(&out).contains("were kept"),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("already gone"), "{}", stderr(&out));
    assert_eq!(rig.metric("delete_shortfall"), Some(0.0));
    assert_eq!(rig.metric("documents_already_gone"), Some(250.0));
    assert_eq!(rig.metric("documents_changed_since_export"), Some(0.0));
    rig.assert_month_archived();
}

#[test]
fn item15_status_has_a_header_steps_in_run_order_running_runs_a_month_filter_and_warnings() {
    let rig = Rig::new(600, |_| {});
    // Nothing recorded yet: say so instead of "not run" everywhere in silence.
    let out = rig.archive(&["status", "--months", "2"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(stdout(&out).starts_with("MONTH"), "{}", stdout(&out));
    assert!(
        stderr(&out).contains("no archive journal"),
        "{}",
        stderr(&out)
    );
    let out = run_logged(
        rig.opskit().args([
            "--state-dir",
            "/nonexistent/opskit-state",
            "archive",
            "status",
        ]),
        &["status with a missing state dir"],
    );
    assert!(stderr(&out).contains("does not exist"), "{}", stderr(&out));
    if !Path::new(opskit_core::config::SYSTEM_CONFIG).exists() {
        let out = run_logged(
            Command::new(opskit_bin())
                .args(["archive", "status", "--months", "1"])
                .env_remove("OPSKIT_CONFIG"),
            &["status without a config file"],
        );
        assert!(stderr(&out).contains("no config file"), "{}", stderr(&out));
    }

    let paused = rig.run_paused("purge:batch=2", "4");
    let out = rig.archive(&["status", "--month", MONTH]);
    assert!(
        stdout(&out).contains(&format!("running (pid {})", paused.child.id())),
        "{}",
        stdout(&out)
    );
    assert!(paused.finish().success());

    let out = rig.archive(&["status", "--month", MONTH]);
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "a header and the month's one pass: {text}");
    assert!(lines[0].starts_with("MONTH") && lines[0].contains("STEPS DONE"));
    assert!(lines[1].starts_with("2024-01"), "{text}");
    assert!(lines[1].contains("succeeded"), "{text}");
    assert!(lines[1].contains("export,upload,commit,purge"), "{text}");
    let json = rig.archive(&["--output", "json", "status", "--month", MONTH]);
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(
        v["rows"][0]["steps_done"],
        serde_json::json!(["export", "upload", "commit", "purge"])
    );
}

fn wrapper(rig: &Rig, log_dir: &Path) -> Command {
    let mut c = Command::new("bash");
    c.arg(WRAPPER)
        .env("OPSKIT_BIN", opskit_bin())
        .env("OPSKIT_CONFIG", &rig.config_path)
        .env("WEBHOOK_URL", rig.lab.webhook().unwrap().url)
        .env("LOG_DIR", log_dir)
        .env("LOCK_FILE", rig.dir.path().join("wrapper.lock"))
        .env("WEBHOOK_ATTEMPTS", "1")
        .env_remove("OPSKIT_TEST_PAUSE_AT")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    c
}

/// The children of `pid` (the wrapper's opskit).
fn children(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|s| {
            s.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

#[test]
fn item16_the_cron_wrapper_with_the_real_opskit_gives_one_alert_per_failure() {
    let rig = Rig::new(600, |_| {});
    let logs = rig.dir.path().join("log");
    let log = logs.join("user_logs_archive-2024-01.log");

    // opskit is killed: it could not alert, the wrapper does, in opskit's schema.
    let mut w = wrapper(&rig, &logs)
        .args(["--month", MONTH])
        .env("OPSKIT_TEST_PAUSE_AT", "export:records=1")
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let opskit = loop {
        let paused = std::fs::read_to_string(&log).is_ok_and(|t| t.contains("OPSKIT_TEST_PAUSED"));
        if let (true, Some(pid)) = (paused, children(w.id()).first().copied()) {
            break pid;
        }
        assert!(Instant::now() < deadline, "opskit never paused");
        std::thread::sleep(Duration::from_millis(50));
    };
    signal(opskit, Signal::SIGKILL);
    assert_eq!(w.wait().unwrap().code(), Some(137));
    let alerts = rig.alerts();
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    let a = &alerts[0];
    let mut keys: Vec<&str> = a.as_object().unwrap().keys().map(|k| k.as_str()).collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "error",
            "failed_at",
            "host",
            "journal",
            "run_key",
            "runbook",
            "started_at",
            "step"
        ],
        "the same schema as opskit's own alerts"
    );
    assert_eq!(a["run_key"], "archive-test.user_logs-2024-01");
    assert!(
        a["error"].as_str().unwrap().contains("killed by signal 9"),
        "{a}"
    );
    assert!(
        a["journal"]
            .as_str()
            .unwrap()
            .ends_with("archive-test.user_logs-2024-01.jsonl")
    );
    assert_eq!(rig.january_ids(), rig.january);

    // opskit refuses (the backup host is down) and alerts itself: no second alert.
    let sshd = rig.lab.state().server("sshd").unwrap().identity();
    opskit_lab::daemon::stop(&sshd, Duration::from_secs(5)).unwrap();
    let status = wrapper(&rig, &logs)
        .args(["--month", MONTH])
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(3));
    let alerts = rig.alerts();
    assert_eq!(alerts.len(), 2, "one failure, one alert: {alerts:?}");
    assert_eq!(alerts[1]["step"], "export", "opskit's own alert");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("opskit already sent the alert"), "{text}");
    assert!(
        text.contains("refused"),
        "the log holds opskit's output: {text}"
    );

    // Success: no alert, and the month is archived.
    opskit_lab::lab::up(rig.lab.dir(), &[Component::Sshd], Some(opskit_bin())).unwrap();
    let status = wrapper(&rig, &logs)
        .args(["--month", MONTH])
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(0));
    assert_eq!(rig.alerts().len(), 2);
    rig.assert_month_archived();
}

#[test]
fn item17_restore_is_described_one_way_in_help_manifest_and_runbooks() {
    let rig = Rig::new(200, |_| {});
    let help = rig.archive(&["restore", "--help"]);
    // clap wraps long lines: compare with whitespace normalised.
    let help = stdout(&help)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    let howto = opskit_archive::restore::HOWTO;
    assert!(help.contains(howto), "{help}");
    assert!(
        !help.contains("mongorestore --gzip"),
        "one way only: {help}"
    );
    assert_eq!(rig.run().status.code(), Some(0));
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(rig.remote_file(&format!("{FILE}.manifest.json"))).unwrap(),
    )
    .unwrap();
    assert_eq!(
        manifest["restore"],
        serde_json::json!(opskit_archive::restore::instructions(FILE))
    );
    for page in [RUNBOOK_EN, RUNBOOK_ZH] {
        let text = std::fs::read_to_string(page).unwrap();
        assert!(text.contains(howto), "{page} must show: {howto}");
        assert!(
            !text.contains("mongorestore --gzip --nsInclude"),
            "{page} describes a second way to restore"
        );
    }
}

#[test]
fn exit_codes_of_archive_are_0_1_2_and_3() {
    let rig = Rig::new(200, |_| {});
    // 0: done.
    assert_eq!(rig.run().status.code(), Some(0));
    assert_eq!(rig.alerts().len(), 0);
    // 1: failed (a different file sits at December's remote name), alerted.
    std::fs::write(
        rig.remote_file("test.user_logs.2023-12.bson.gz"),
        b"someone else's archive",
    )
    .unwrap();
    let out = rig.archive(&["run", "--month", "2023-12"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(rig.alerts().len(), 1);
    // 2: bad usage (a month that has not ended; a malformed month) and bad config.
    let out = rig.archive(&["run", "--month", "2999-01"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert_eq!(
        rig.alerts().len(),
        2,
        "after the config loaded, opskit alerts"
    );
    let out = rig.archive(&["run", "--month", "2024-13"]);
    assert_eq!(out.status.code(), Some(2));
    let bad = rig.dir.path().join("bad.toml");
    std::fs::write(&bad, "[archive]\ncompression_level = 42\n").unwrap();
    let out = run_logged(
        Command::new(opskit_bin())
            .arg("--config")
            .arg(&bad)
            .args(["archive", "run", "--month", MONTH]),
        &["bad config"],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("archive.compression_level"),
        "{}",
        stderr(&out)
    );
    // 3: refused, nothing changed (the staging directory is open to everyone), alerted.
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(rig.staging_dir(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = rig.archive(&["run", "--month", "2023-12"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert_eq!(rig.alerts().len(), 3);
}

#[test]
fn date_anomalies_send_one_warning_per_month_and_the_run_goes_on() {
    // The rig seeds two rows no month matches: a NULL date and an unpadded one.
    let rig = Rig::new(300, |_| {});
    let receipt = rig.dir.path().join("receipt");
    let out = run_logged(
        rig.opskit()
            .env("OPSKIT_ALERT_RECEIPT", &receipt)
            .args(["archive", "run", "--month", MONTH]),
        &["run with a receipt file"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    rig.assert_month_archived();
    assert_eq!(rig.metric("anomalies"), Some(2.0));
    assert_eq!(rig.metric("anomaly_warnings_sent"), Some(1.0));
    let w = rig.warnings();
    assert_eq!(w.len(), 1, "{w:?}");
    assert_eq!(w[0]["runbook"], "archive");
    assert_eq!(w[0]["run_key"], "archive-test.user_logs-2024-01");
    let text = w[0]["error"].as_str().unwrap();
    for part in [
        "2 documents",
        "missing 1",
        "malformed 1",
        "create_on",
        "goes on",
    ] {
        assert!(text.contains(part), "{part}: {text}");
    }
    assert!(rig.alerts().is_empty(), "a warning is not a failure alert");
    assert!(
        std::fs::read_to_string(&receipt)
            .unwrap_or_default()
            .is_empty(),
        "a warning is no receipt: the cron wrapper must still alert if the run dies later"
    );

    // A late pass of the same month: no second warning.
    rig.sql(
        "INSERT INTO test.user_logs (create_on, user_id, action, payload) \
         VALUES ('2024-01-20 10:00:00', 1, 'late', 'late')",
    );
    let out = rig.run();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("late pass 1"),
        "the late pass ran: {}",
        stderr(&out)
    );
    assert_eq!(rig.warnings().len(), 1, "one warning per month");
    assert_eq!(rig.metric("anomalies"), Some(2.0), "the gauge stays");

    // Another month gets its own warning.
    let out = rig.archive(&["run", "--month", "2023-12"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let w = rig.warnings();
    assert_eq!(w.len(), 2, "{w:?}");
    assert_eq!(w[1]["run_key"], "archive-test.user_logs-2023-12");
    assert!(rig.alerts().is_empty());
}
