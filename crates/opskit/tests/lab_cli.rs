//! `opskit lab up|status|down` end to end, against the real servers.
//! Every test brings its lab down in a guard, so a failed assertion leaves nothing running.

use std::path::{Path, PathBuf};
use std::process::Command;

use assert_cmd::cargo::CommandCargoExt as _;
use opskit_core::alert::{AlertPayload, Alerter};
use opskit_core::config::Config;

fn opskit() -> Command {
    let mut c = Command::cargo_bin("opskit").unwrap();
    c.env_remove("OPSKIT_LAB_DIR").env_remove("OPSKIT_CONFIG");
    c
}

/// Runs `opskit lab down --dir` when dropped.
struct LabDown(PathBuf);

impl Drop for LabDown {
    fn drop(&mut self) {
        let _ = opskit()
            .args(["lab", "down", "--dir"])
            .arg(&self.0)
            .output();
    }
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn status_json(dir: &Path) -> serde_json::Value {
    let text = run_ok(
        opskit()
            .args(["--output", "json", "lab", "status", "--dir"])
            .arg(dir),
    );
    serde_json::from_str(&text).unwrap()
}

fn pid_alive(pid: i64) -> bool {
    // Running, not a zombie waiting for its reaper.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !matches!(
                s.rsplit_once(')')
                    .map(|(_, r)| r.trim_start().as_bytes()[0]),
                Some(b'Z')
            )
        })
        .unwrap_or(false)
}

#[test]
fn up_status_down_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("lab");
    let _guard = LabDown(dir.clone());

    let out = run_ok(
        opskit()
            .args(["lab", "up", "--only", "sshd,mariadb,webhook", "--dir"])
            .arg(&dir),
    );
    assert!(out.contains("sshd: started"), "{out}");
    assert!(out.contains("mariadb: started"), "{out}");
    assert!(out.contains("webhook: started"), "{out}");

    // status --output json: every server with address, port or socket, PID, alive.
    let st = status_json(&dir);
    let servers = st["servers"].as_array().unwrap();
    let names: Vec<_> = servers
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["sshd", "mariadb", "webhook"]);
    for s in servers {
        assert_eq!(s["address"], "127.0.0.1", "{s}");
        assert!(s["port"].as_u64().unwrap() > 0, "{s}");
        assert_eq!(s["alive"], true, "{s}");
        assert_eq!(s["answering"], true, "{s}");
        assert!(pid_alive(s["pid"].as_i64().unwrap()), "{s}");
    }
    assert!(
        servers[1]["socket"]
            .as_str()
            .unwrap()
            .ends_with("mysqld.sock")
    );
    let pids: Vec<i64> = servers.iter().map(|s| s["pid"].as_i64().unwrap()).collect();

    // SFTP through the alias in the lab's ssh_config lands in the backup dir.
    let payload = tmp.path().join("payload.txt");
    std::fs::write(&payload, "hello backup\n").unwrap();
    let batch = tmp.path().join("batch");
    std::fs::write(&batch, format!("put {} payload.txt\n", payload.display())).unwrap();
    run_ok(
        Command::new("sftp")
            .arg("-F")
            .arg(dir.join("ssh/ssh_config"))
            .arg("-b")
            .arg(&batch)
            .arg("bak.ipo.com"),
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("sftp/backup/payload.txt")).unwrap(),
        "hello backup\n"
    );

    // SQL through the lab's my.cnf.
    let out = run_ok(
        Command::new("mariadb")
            .arg(format!(
                "--defaults-file={}",
                dir.join("mariadb/my.cnf").display()
            ))
            .args([
                "-N",
                "-e",
                "SELECT SCHEMA_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME='test'",
            ]),
    );
    assert_eq!(out.trim(), "test");

    // opskit.toml is valid and points at the lab; an alert sent with it arrives.
    run_ok(
        opskit()
            .arg("--config")
            .arg(dir.join("opskit.toml"))
            .args(["config", "check"]),
    );
    let config = Config::load_file(&dir.join("opskit.toml")).unwrap();
    assert_eq!(
        config.archive.source_uri,
        format!("mysql://root@127.0.0.1:{}/", servers[1]["port"])
    );
    let alerter = Alerter::from_config(&config.alert).unwrap().unwrap();
    let now = chrono::Utc::now();
    alerter
        .send(&AlertPayload {
            runbook: "archive".into(),
            run_key: "archive-2026-10".into(),
            step: "upload".into(),
            error: "lab drill".into(),
            host: "lab".into(),
            started_at: now,
            failed_at: now,
            journal: "/dev/null".into(),
        })
        .unwrap();
    let received = opskit_lab::webhook::received(&dir).unwrap();
    assert_eq!(received.len(), 1, "{received:?}");
    assert_eq!(received[0]["run_key"], "archive-2026-10");

    // up again: nothing restarted.
    let out = run_ok(
        opskit()
            .args(["lab", "up", "--only", "sshd,mariadb,webhook", "--dir"])
            .arg(&dir),
    );
    assert_eq!(out.matches("already running").count(), 3, "{out}");
    let again: Vec<i64> = status_json(&dir)["servers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["pid"].as_i64().unwrap())
        .collect();
    assert_eq!(again, pids);

    // down: the recorded processes are gone, nothing of the lab runs, nothing is mounted.
    let out = run_ok(
        opskit()
            .args(["--output", "json", "lab", "down", "--dir"])
            .arg(&dir),
    );
    let down: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(down["stopped"].as_array().unwrap().len(), 3, "{down}");
    for pid in &pids {
        assert!(!pid_alive(*pid), "pid {pid} still runs");
    }
    let ps = run_ok(Command::new("ps").args(["-eo", "pid,stat,args"]));
    let dir_s = dir.display().to_string();
    let left: Vec<_> = ps.lines().filter(|l| l.contains(&dir_s)).collect();
    assert!(left.is_empty(), "{left:?}");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(&dir_s), "{mounts}");
    assert!(status_json(&dir)["servers"].as_array().unwrap().is_empty());
    assert!(dir.join("mariadb/data").is_dir(), "down keeps the data");

    run_ok(opskit().args(["lab", "down", "--purge", "--dir"]).arg(&dir));
    assert!(!dir.exists());
}

#[test]
fn only_env_dir_and_exit_codes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("lab");
    let _guard = LabDown(dir.clone());

    // $OPSKIT_LAB_DIR chooses the lab; --only starts just sshd.
    let out = run_ok(
        opskit()
            .env("OPSKIT_LAB_DIR", &dir)
            .args(["lab", "up", "--only", "sshd"]),
    );
    assert!(
        out.contains("sshd: started") && !out.contains("mariadb"),
        "{out}"
    );
    let st = status_json(&dir);
    assert_eq!(st["servers"].as_array().unwrap().len(), 1, "{st}");
    let toml = std::fs::read_to_string(dir.join("opskit.toml")).unwrap();
    assert!(toml.contains(&format!(
        "ssh_config = \"{}/ssh/ssh_config\"",
        dir.display()
    )));
    assert!(toml.contains("webhook_url = \"\""), "{toml}");

    // Bad usage: exit 2.
    let out = opskit()
        .args(["lab", "up", "--only", "oracle", "--dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("[possible values: sshd, mariadb, mongodb, webhook")
    );

    // --purge of a directory that is not a lab: refused, exit 3, nothing deleted.
    let not_lab = tmp.path().join("precious");
    std::fs::create_dir_all(&not_lab).unwrap();
    std::fs::write(not_lab.join("keep.txt"), "x").unwrap();
    let out = opskit()
        .args(["lab", "down", "--purge", "--dir"])
        .arg(&not_lab)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(not_lab.join("keep.txt").exists());

    run_ok(opskit().env("OPSKIT_LAB_DIR", &dir).args(["lab", "down"]));
    assert!(status_json(&dir)["servers"].as_array().unwrap().is_empty());
}
