//! `opskit mysql doctor` and `probe-idle` without a lab: missing inputs narrow the report and
//! are named (exit 0), a DSN with a password or a bad flag is refused (exit 2), and the JSON
//! report reads back as the doctor's own type. The lab tests are in `opskit-doctor/tests`.

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use opskit_doctor::DoctorReport;

fn opskit(config: &Path) -> Command {
    let mut cmd = Command::cargo_bin("opskit").unwrap();
    cmd.env_remove("OPSKIT_CONFIG").arg("--config").arg(config);
    cmd
}

fn config(dir: &Path, text: &str) -> PathBuf {
    let p = dir.join("opskit.toml");
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn missing_inputs_are_named_and_the_doctor_still_answers() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    // A log with a cluster of client timeouts and no config: the cause is still found.
    let log = dir.path().join("haproxy.log.1");
    let line = "127.0.0.1:56586 [23/Nov/2026:18:40:14.201] fe_mysql_ro be_slaves/Slave_01 1/0/5002 186 cD 1/1/0/0/0 0/0\n";
    std::fs::write(&log, line.repeat(3)).unwrap();
    let cfg = config(
        dir.path(),
        &format!(
            "[mysql]\nadmin_password_file = \"{d}/none.password\"\n\
             [mysql.haproxy]\nadmin_socket = \"{d}/admin.sock\"\nconfig_path = \"{d}/haproxy.cfg\"\n\
             [mysql.doctor]\nhaproxy_logs = [\"{d}/haproxy.log.1\", \"{d}/haproxy.log.2.gz\"]\n"
        ),
    );
    let out = opskit(&cfg).args(["mysql", "doctor"]).assert().success();
    let text = String::from_utf8_lossy(&out.get_output().stdout).into_owned();
    for want in [
        "Most likely: HAProxy ended 3 sessions on its client (or tunnel) timeout",
        "Not looked at:",
        "haproxy.cfg",
        "admin.sock",
        "haproxy.log.2.gz",
        "no password file could be read",
        "--app-idle not given",
    ] {
        assert!(text.contains(want), "{want} missing from:\n{text}");
    }
    let out = opskit(&cfg)
        .args(["--output", "json", "mysql", "doctor", "--app-idle", "10"])
        .assert()
        .success();
    let r: DoctorReport = serde_json::from_slice(&out.get_output().stdout).unwrap();
    assert_eq!(
        r.top().map(|f| f.cause),
        Some(opskit_doctor::Cause::HaproxyClientTimeout)
    );
    assert_eq!(r.evidence.logs.unwrap().codes["cD"], 3);
}

#[test]
fn passwords_in_dsns_and_bad_flags_are_refused_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "");
    opskit(&cfg)
        .args(["mysql", "doctor", "--replica", "mysql://app:s3cret@db:3306"])
        .assert()
        .code(2)
        .stderr(predicates::str::contains("carries no password"));
    opskit(&cfg)
        .args(["mysql", "doctor", "--app-idle", "0"])
        .assert()
        .code(2);
    opskit(&cfg)
        .args(["mysql", "probe-idle", "--dsn", "mysql://app@db:0"])
        .assert()
        .code(2);
    let bad = config(
        dir.path(),
        "[mysql.doctor]\nprobe_dsn = \"mysql://a:b@h\"\n",
    );
    opskit(&bad)
        .args(["mysql", "probe-idle"])
        .assert()
        .code(2)
        .stderr(predicates::str::contains("mysql.doctor.probe_dsn"));
}
