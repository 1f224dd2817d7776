//! Issue 7, "fail early, fail clearly", on the lab's real servers:
//!
//! 8. the backup host is checked before the export (answers, host key, writable directory);
//! 9. no panics: DST gaps at midnight, huge `--months`, huge config values, and a panic
//!    anywhere still alerts and exits 1;
//! 10. `plan` and `--dry-run` change nothing anywhere; `remote_dir` cannot leave the SFTP home;
//! 11. private files whatever the umask; passwords in URIs; password-file permissions in
//!     `config check`; non-UTF-8 paths; delete sessions against `max_connections`;
//! 12. a read-only state dir still alerts, a read-only staging dir is refused;
//! 13. months outside the documented range.

mod archive_support;

use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use archive_support::*;
use opskit_core::config::value::Positive;

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

fn config_check(rig: &Rig, text: &str) -> std::process::Output {
    let path = rig.dir.path().join("check.toml");
    std::fs::write(&path, text).unwrap();
    run_logged(
        Command::new(opskit_bin())
            .args(["config", "check"])
            .arg(&path),
        &["config check"],
    )
}

#[test]
fn item8_the_backup_host_is_checked_before_anything_is_exported() {
    let rig = Rig::new(300, |_| {});
    // The remote directory cannot be written (a file sits at its name).
    std::fs::create_dir_all(&rig.sftp.backup_dir).unwrap();
    std::fs::write(rig.remote_dir(), b"not a directory").unwrap();
    let out = rig.run();
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("probe file"), "{}", stderr(&out));
    rig.assert_untouched();
    std::fs::remove_file(rig.remote_dir()).unwrap();

    // The host presents another key than known_hosts holds.
    let known = std::fs::read_to_string(&rig.sftp.known_hosts).unwrap();
    let key = rig.dir.path().join("other_key");
    let made = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key)
        .status()
        .unwrap();
    assert!(made.success());
    let other = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    let host = known.split_whitespace().next().unwrap();
    let mut parts = other.split_whitespace();
    let forged = format!(
        "{host} {} {}\n",
        parts.next().unwrap(),
        parts.next().unwrap()
    );
    std::fs::write(&rig.sftp.known_hosts, forged).unwrap();
    let out = rig.run();
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("host key mismatch"),
        "{}",
        stderr(&out)
    );
    assert!(
        !stderr(&out).contains("failed to connect"),
        "a changed key is not a connection failure: {}",
        stderr(&out)
    );
    rig.assert_untouched();
    std::fs::write(&rig.sftp.known_hosts, known).unwrap();

    // The host is down: the run and the plan both refuse, and nothing is exported.
    let sshd = rig.lab.state().server("sshd").unwrap().identity();
    opskit_lab::daemon::stop(&sshd, Duration::from_secs(5)).unwrap();
    let out = rig.run();
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("bak.ipo.com"), "{}", stderr(&out));
    rig.assert_untouched();
    let plan = rig.archive(&["plan", "--month", MONTH]);
    assert_eq!(plan.status.code(), Some(3), "{}", stderr(&plan));
    assert!(stdout(&plan).contains("NOT USABLE"), "{}", stdout(&plan));
    let alerts = rig.alerts();
    assert_eq!(alerts.len(), 3, "each refused run alerted: {alerts:?}");
    assert!(alerts.iter().all(|a| a["step"] == "export"), "{alerts:?}");
}

#[test]
fn item9_a_month_whose_first_midnight_does_not_exist_runs_in_its_zone() {
    let rig = Rig::new(100, |c| {
        c.general.timezone = "America/Asuncion".parse().unwrap();
    });
    rig.sql(
        "INSERT INTO test.user_logs (create_on, user_id, action, payload)
           SELECT DATE_FORMAT(TIMESTAMP('2023-09-01') + INTERVAL (seq * 86399) SECOND, '%Y-%m-%d %H:%i:%s'),
                  seq, 'sept', MD5(seq) FROM test.seq_0_to_29",
    );
    let sept = rig.ids_between("2023-09-01 00:00:00", "2023-10-01 00:00:00");
    assert_eq!(sept.len(), 30);
    let out = rig.archive(&["run", "--month", "2023-09"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
    assert!(
        rig.ids_between("2023-09-01 00:00:00", "2023-10-01 00:00:00")
            .is_empty()
    );
    assert_eq!(
        archived_ids(&rig.remote_file("test.user_logs.2023-09.bson.gz")),
        sept
    );
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(rig.remote_file("test.user_logs.2023-09.bson.gz.manifest.json")).unwrap(),
    )
    .unwrap();
    // Midnight of 2023-10-01 does not exist there: the month ends at 01:00 local (04:00 UTC).
    assert_eq!(
        manifest["bounds"]["upper_instant"], "2023-10-01T04:00:00Z",
        "{manifest}"
    );
}

#[test]
fn item9_no_panics_on_huge_values_and_a_panic_anywhere_still_alerts_and_exits_1() {
    let rig = Rig::new(600, |_| {});
    let status = rig.archive(&["status", "--months", "1000"]);
    assert_eq!(status.status.code(), Some(0), "{}", stderr(&status));
    assert!(!stderr(&status).contains("panicked"));
    for bad in ["0", "5000", "99999999999"] {
        let out = rig.archive(&["status", "--months", bad]);
        assert_eq!(out.status.code(), Some(2), "--months {bad}");
    }
    // Huge config values are bounded by `config check` (exit 2, key named).
    let base = std::fs::read_to_string(&rig.config_path).unwrap();
    for (key, line) in [
        ("archive.purge.batch_size", "batch_size = 1000000000000"),
        ("archive.purge.connections", "connections = 100000"),
        (
            "archive.source_timeout_secs",
            "source_timeout_secs = 9223372036854775807",
        ),
        (
            "archive.sftp.timeout_secs",
            "timeout_secs = 9223372036854775807",
        ),
        (
            "archive.purge.max_lag_wait_secs",
            "max_lag_wait_secs = 9223372036854775807",
        ),
    ] {
        let (field, value) = line.split_once(" = ").unwrap();
        let text = base
            .lines()
            .map(|l| {
                if l.starts_with(&format!("{field} = ")) {
                    format!("{field} = {value}")
                } else {
                    l.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        let out = config_check(&rig, &text);
        assert_eq!(out.status.code(), Some(2), "{key}: {}", stderr(&out));
        assert!(stderr(&out).contains(key), "{key}: {}", stderr(&out));
    }

    // A bug inside a step: the run alerts, exits 1, and the same command resumes.
    let out = run_logged(
        rig.opskit()
            .args(["archive", "run", "--month", MONTH])
            .env("OPSKIT_TEST_PANIC_AT", "purge:batch=2"),
        &["run with a panic in the purge"],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let alerts = rig.alerts();
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(alerts[0]["step"], "purge");
    assert!(
        alerts[0]["error"].as_str().unwrap().contains("panic"),
        "{alerts:?}"
    );
    rig.assert_nothing_lost();
    let out = rig.run();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    rig.assert_month_archived();

    // A bug before any plan exists: alerted too.
    let out = run_logged(
        rig.opskit()
            .args(["archive", "run", "--month", "2023-12"])
            .env("OPSKIT_TEST_PANIC_AT", "plan:build=1"),
        &["run with a panic while planning"],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let alerts = rig.alerts();
    assert_eq!(alerts.len(), 2, "{alerts:?}");
    assert_eq!(alerts[1]["step"], "panic");
}

#[test]
fn item10_plan_and_dry_run_change_nothing_anywhere_and_the_remote_dir_stays_under_the_sftp_home() {
    let rig = Rig::new(500, |_| {});
    let listing = |p: &Path| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(p)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    };
    let before = (
        listing(&rig.state_dir()),
        listing(&rig.staging_dir()),
        listing(&rig.sftp.backup_dir),
    );
    for args in [
        &["run", "--month", MONTH, "--dry-run"][..],
        &["plan", "--month", MONTH][..],
    ] {
        let out = rig.archive(args);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        assert!(stdout(&out).contains("POINT OF NO RETURN"));
        assert!(
            stdout(&out).contains("does not exist yet (the run creates it)"),
            "{}",
            stdout(&out)
        );
    }
    assert_eq!(rig.january_ids(), rig.january);
    assert_eq!(rig.total(), 504);
    assert_eq!(
        (
            listing(&rig.state_dir()),
            listing(&rig.staging_dir()),
            listing(&rig.sftp.backup_dir),
        ),
        before,
        "plan wrote into the state, staging or remote directory"
    );
    assert!(
        !rig.remote_dir().exists(),
        "the remote directory was created"
    );

    // `..` or an absolute path cannot take the archive out of the SFTP home: exit 2 everywhere.
    for escape in ["../escape", "/tmp/escape", "user_logs/../../escape"] {
        let text = std::fs::read_to_string(&rig.config_path).unwrap().replace(
            "remote_dir = \"user_logs\"",
            &format!("remote_dir = \"{escape}\""),
        );
        let out = config_check(&rig, &text);
        assert_eq!(out.status.code(), Some(2), "{escape}");
        assert!(
            stderr(&out).contains("archive.sftp.remote_dir"),
            "{}",
            stderr(&out)
        );
        let path = rig.dir.path().join("check.toml");
        for args in [
            &["run", "--month", MONTH][..],
            &["plan", "--month", MONTH][..],
        ] {
            let out = run_logged(
                Command::new(opskit_bin())
                    .arg("--config")
                    .arg(&path)
                    .arg("archive")
                    .args(args),
                args,
            );
            assert_eq!(out.status.code(), Some(2), "{escape} {args:?}");
        }
    }
    assert!(!rig.sftp.backup_dir.join("../escape").exists());
    assert_eq!(rig.january_ids(), rig.january);
}

#[test]
fn item11_files_are_private_whatever_the_umask() {
    let rig = Rig::new(300, |_| {});
    let out = run_logged(
        Command::new("sh")
            .args([
                "-c",
                "umask 000; exec \"$0\" --config \"$1\" archive run --month 2024-01",
            ])
            .arg(opskit_bin())
            .arg(&rig.config_path)
            .env_remove("OPSKIT_TEST_PAUSE_AT"),
        &["run under umask 000"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let local = rig.local_file();
    let journal_dir = rig.state_dir().join("journal/archive");
    let journal = journal_dir.join("archive-test.user_logs-2024-01.jsonl");
    for (file, want) in [
        (local.clone(), 0o600),
        (
            opskit_archive::staged::ArchiveManifest::path_for(&local),
            0o600,
        ),
        (journal.clone(), 0o600),
        (journal_dir.clone(), 0o700),
        (rig.state_dir().join("archive"), 0o700),
        (
            rig.state_dir()
                .join("archive/archive-test.user_logs-2024-01.purge.json"),
            0o600,
        ),
        (
            rig.state_dir()
                .join("archive/archive-test.user_logs-2024-01.uploaded"),
            0o600,
        ),
        (rig.state_dir().join("locks"), 0o700),
    ] {
        assert_eq!(mode(&file), want, "{}", file.display());
    }
}

#[test]
fn item11_secrets_and_paths_are_checked_like_the_run_does_and_sessions_against_max_connections() {
    let rig = Rig::new(200, |_| {});
    let base = std::fs::read_to_string(&rig.config_path).unwrap();
    // A password with '/' or '?' in the URI: a clear error, the secret never printed.
    for uri in [
        "mysql://root:pa/ss@127.0.0.1:1/",
        "mysql://root:pa?ss@127.0.0.1:1/",
    ] {
        let text = base.replace(
            &format!("source_uri = \"{}\"", rig.db.uri()),
            &format!("source_uri = \"{uri}\""),
        );
        let out = config_check(&rig, &text);
        assert_eq!(out.status.code(), Some(2), "{uri}");
        assert!(stderr(&out).contains("password"), "{}", stderr(&out));
        assert!(!stderr(&out).contains("pa/ss") && !stderr(&out).contains("pa?ss"));
    }
    // `config check` reads the password file as the run does.
    let pw = rig.dir.path().join("pw");
    std::fs::write(&pw, "s3cret\n").unwrap();
    std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o644)).unwrap();
    let with_pw = base.replace(
        "[archive]\n",
        &format!("[archive]\nsource_password_file = \"{}\"\n", pw.display()),
    );
    let out = config_check(&rig, &with_pw);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("chmod 600"), "{}", stderr(&out));
    assert!(!stderr(&out).contains("s3cret"));
    std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(config_check(&rig, &with_pw).status.code(), Some(0));
    // Only the archive needs the file: a host that runs the other runbooks from the same
    // config does not hold it, and their commands work; the archive's refuse (exit 2).
    std::fs::remove_file(&pw).unwrap();
    let shared = rig.dir.path().join("shared.toml");
    std::fs::write(&shared, &with_pw).unwrap();
    let opskit_with = |args: &[&str]| {
        run_logged(
            Command::new(opskit_bin())
                .env_remove("OPSKIT_CONFIG")
                .arg("--config")
                .arg(&shared)
                .args(args),
            args,
        )
    };
    let out = opskit_with(&["firewall", "render"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let out = opskit_with(&["archive", "plan", "--month", MONTH]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("archive.source_password_file"),
        "{}",
        stderr(&out)
    );
    assert_eq!(config_check(&rig, &with_pw).status.code(), Some(2));

    // A state directory that is not UTF-8: exit 2, nothing written anywhere.
    let weird = std::ffi::OsStr::from_bytes(b"/tmp/opskit-st\xffate");
    let out = run_logged(
        rig.opskit()
            .arg("--state-dir")
            .arg(weird)
            .args(["archive", "run", "--month", MONTH]),
        &["--state-dir <non-UTF-8>"],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("UTF-8"), "{}", stderr(&out));
    rig.assert_untouched();

    // More delete sessions than the server accepts (the lab has max_connections = 40).
    let mut rig = rig;
    rig.set_config(|c| c.archive.purge.connections = Positive::new(45));
    let out = rig.run();
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("max_connections"), "{}", stderr(&out));
    rig.assert_untouched();
}

#[test]
fn item12_a_read_only_state_dir_still_alerts_and_a_read_only_staging_dir_is_refused() {
    assert!(
        can_unshare(),
        "this test needs `unshare -m` (mount namespaces) and root"
    );
    let rig = Rig::new(200, |_| {});
    let ro = |dir: &Path| {
        format!(
            "mount --bind {d} {d} && mount -o remount,bind,ro {d}",
            d = dir.display()
        )
    };
    std::fs::create_dir_all(rig.state_dir()).unwrap();
    let out = run_in_namespace(
        &rig,
        &ro(&rig.state_dir()),
        &["archive", "run", "--month", MONTH],
        "true",
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let alerts = rig.alerts();
    assert_eq!(
        alerts.len(),
        1,
        "exit 1 means the webhook was called: {alerts:?}"
    );
    assert!(
        alerts[0]["error"].as_str().unwrap().contains("Read-only"),
        "{alerts:?}"
    );
    rig.assert_untouched();

    let out = run_in_namespace(
        &rig,
        &ro(&rig.staging_dir()),
        &["archive", "run", "--month", MONTH],
        "true",
    );
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("not writable"), "{}", stderr(&out));
    assert_eq!(rig.alerts().len(), 2);
    rig.assert_untouched();
}

#[test]
fn item13_months_outside_the_documented_range_exit_2() {
    let rig = Rig::new(50, |_| {});
    for month in [
        "9999-12", "1969-12", "0000-01", "2024-13", "10000-01", "2024-1",
    ] {
        let out = rig.archive(&["run", "--month", month]);
        assert_eq!(out.status.code(), Some(2), "{month}: {}", stderr(&out));
    }
    let out = rig.archive(&["run", "--month", "1970-01"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    rig.assert_untouched();
}
