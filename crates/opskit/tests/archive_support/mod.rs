//! Shared by the `archive_*` lab tests: a lab (MariaDB + sshd + webhook receiver) built by the
//! same `LabBuilder` as `opskit lab up`, a seeded `test.user_logs`, the real `opskit` binary,
//! and the checks every test needs (nothing lost, month archived, alerts, metrics).
//!
//! The kill and signal tests use the test-only pause point `OPSKIT_TEST_PAUSE_AT` (see
//! `opskit_archive::testhook`) to act at a known place.

#![allow(dead_code)]

pub mod sources;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use opskit_core::config::Config;
use opskit_core::config::value::Positive;
use opskit_lab::{Component, Lab, LabBuilder, MariadbServer, MysqlLab, SftpServer};

/// The archived month of every test.
pub const MONTH: &str = "2024-01";
/// Its staged and uploaded archive.
pub const FILE: &str = "test.user_logs.2024-01.bson.gz";

/// The binary under test.
pub fn opskit_bin() -> PathBuf {
    assert_cmd::cargo::cargo_bin("opskit")
}

/// The default table: a VARCHAR date, as the MongoDB collection has strings.
pub const VARCHAR_TABLE: &str = "CREATE TABLE test.user_logs (id BIGINT AUTO_INCREMENT PRIMARY KEY, create_on VARCHAR(32) NULL, \
     user_id INT NOT NULL, action VARCHAR(32) NOT NULL, payload VARCHAR(200) NOT NULL, \
     KEY idx_create_on (create_on)) ENGINE=InnoDB";

/// A lab, its seeded table and the config pointing opskit at it.
pub struct Rig {
    pub lab: Lab,
    pub db: MariadbServer,
    pub sftp: SftpServer,
    pub config: Config,
    pub config_path: PathBuf,
    /// The January ids seeded.
    pub january: BTreeSet<i64>,
    /// Rows outside January (neighbours and anomalies).
    pub others: u64,
    pub dir: tempfile::TempDir,
    /// The replication topology, when the rig runs on it ([`Rig::on_replicated_master`]).
    pub mysql: Option<MysqlLab>,
}

impl Rig {
    /// A lab with `rows` January rows, rows on both sides of the month and two anomalies.
    pub fn new(rows: u64, tweak: impl FnOnce(&mut Config)) -> Rig {
        Rig::with_table(VARCHAR_TABLE, rows, tweak)
    }

    /// Like [`Rig::new`] with another `CREATE TABLE` (its date column is `create_on`).
    pub fn with_table(create: &str, rows: u64, tweak: impl FnOnce(&mut Config)) -> Rig {
        let dir = tempfile::Builder::new().prefix("oa").tempdir().unwrap();
        let lab = LabBuilder::new(dir.path().join("lab"))
            .with(Component::Mariadb)
            .with(Component::Sshd)
            .with(Component::Webhook)
            .opskit_exe(opskit_bin())
            .up()
            .expect("lab up");
        let db = lab.mariadb().unwrap();
        let config = lab.config().unwrap();
        Rig::seeded(dir, lab, db, None, config, create, rows, tweak)
    }

    /// Like [`Rig::new`] on the lab's replication topology (spec §4): the table lives on
    /// `Master`, which replicates it to the four replicas, and opskit archives it through
    /// the admin account.
    pub fn on_replicated_master(rows: u64, tweak: impl FnOnce(&mut Config, &MysqlLab)) -> Rig {
        let dir = tempfile::Builder::new().prefix("oa").tempdir().unwrap();
        let lab = LabBuilder::new(dir.path().join("lab"))
            .with(Component::Mysql)
            .with(Component::Sshd)
            .with(Component::Webhook)
            .opskit_exe(opskit_bin())
            .up()
            .expect("lab up");
        let mysql: MysqlLab = lab.view().unwrap();
        let master = mysql.get("Master").unwrap();
        master
            .server
            .sql("CREATE DATABASE IF NOT EXISTS test")
            .unwrap();
        let mut config = lab.config().unwrap();
        config.archive.source_uri = format!(
            "mysql://{}@{}:{}/",
            "opskit", // the lab's admin account (components::mysql::ADMIN_USER)
            master.address,
            master.port
        );
        config.archive.source_password_file =
            Some(mysql.admin_password_file.to_str().unwrap().parse().unwrap());
        let db = master.server.clone();
        let mut rig = Rig::seeded(
            dir,
            lab,
            db,
            Some(mysql.clone()),
            config,
            VARCHAR_TABLE,
            rows,
            |c| tweak(c, &mysql),
        );
        rig.mysql = Some(mysql);
        rig
    }

    #[allow(clippy::too_many_arguments)]
    fn seeded(
        dir: tempfile::TempDir,
        lab: Lab,
        db: MariadbServer,
        mysql: Option<MysqlLab>,
        mut config: Config,
        create: &str,
        rows: u64,
        tweak: impl FnOnce(&mut Config),
    ) -> Rig {
        let sftp = lab.sftp().unwrap();
        db.sql(&format!(
            "{create};
             USE test;
             INSERT INTO user_logs (create_on, user_id, action, payload)
               SELECT DATE_FORMAT(TIMESTAMP('2024-01-01') + INTERVAL (seq * 2678399 DIV {rows}) SECOND, '%Y-%m-%d %H:%i:%s'),
                      seq % 1000, 'login', CONCAT(MD5(seq), MD5(seq + 1), MD5(RAND()))
               FROM seq_0_to_{last};
             INSERT INTO user_logs (create_on, user_id, action, payload) VALUES
               ('2023-12-31 23:59:59', 1, 'edge', 'december'),
               ('2024-02-01 00:00:00', 1, 'edge', 'february');",
            last = rows - 1
        ))
        .unwrap();
        let mut others = 2;
        if create.contains("VARCHAR(32) NULL") {
            db.sql(
                "INSERT INTO test.user_logs (create_on, user_id, action, payload) VALUES
                   (NULL, 1, 'anomaly', 'no date'), ('2024-1-5 3:03:11', 1, 'anomaly', 'unpadded date');",
            )
            .unwrap();
            others += 2;
        }
        // Fixed batches (the tests count them); adaptive batches are tested in archive_sources.
        config.archive.purge.batch_size = Positive::new(250);
        config.archive.purge.min_batch_size = Positive::new(250);
        config.archive.purge.max_batch_size = Positive::new(250);
        config.archive.sftp.timeout_secs = Positive::new(10);
        config.alert.retries = 0;
        tweak(&mut config);
        let config_path = dir.path().join("archive-test.toml");
        std::fs::write(&config_path, config.to_toml()).unwrap();
        let mut rig = Rig {
            lab,
            db,
            sftp,
            config,
            config_path,
            january: BTreeSet::new(),
            others,
            dir,
            mysql,
        };
        rig.january = rig.january_ids();
        assert_eq!(rig.january.len() as u64, rows);
        rig
    }

    /// Rewrites the config file after changing the config.
    pub fn set_config(&mut self, f: impl FnOnce(&mut Config)) {
        f(&mut self.config);
        std::fs::write(&self.config_path, self.config.to_toml()).unwrap();
    }

    pub fn sql(&self, q: &str) -> String {
        self.db.sql(q).unwrap()
    }

    /// The ids whose date is in January (string comparison: every column type casts).
    pub fn january_ids(&self) -> BTreeSet<i64> {
        self.ids_between("2024-01-01 00:00:00", "2024-02-01 00:00:00")
    }

    pub fn ids_between(&self, lo: &str, hi: &str) -> BTreeSet<i64> {
        self.sql(&format!(
            "SET time_zone = '{tz}'; SELECT id FROM test.user_logs WHERE create_on >= '{lo}' AND create_on < '{hi}'",
            tz = self.tz_for_sql()
        ))
        .lines()
        .map(|l| l.trim().parse().unwrap())
        .collect()
    }

    /// The session zone the test's own SQL uses: the writers' zone when the lab has the
    /// zone tables, else the server's (fine for DATETIME and string columns).
    fn tz_for_sql(&self) -> String {
        let loaded = self
            .db
            .sql("SELECT COUNT(*) FROM mysql.time_zone_name")
            .map(|s| s.trim() != "0")
            .unwrap_or(false);
        if loaded {
            self.config.general.timezone.to_string()
        } else {
            "SYSTEM".into()
        }
    }

    pub fn total(&self) -> u64 {
        self.sql("SELECT COUNT(*) FROM test.user_logs")
            .trim()
            .parse()
            .unwrap()
    }

    pub fn opskit(&self) -> Command {
        opskit_with(&self.config_path)
    }

    pub fn archive(&self, args: &[&str]) -> Output {
        run_logged(self.opskit().arg("archive").args(args), args)
    }

    pub fn run(&self) -> Output {
        self.archive(&["run", "--month", MONTH])
    }

    /// Runs `opskit archive run` until it prints the pause line, then kills it with SIGKILL.
    pub fn run_and_kill_at(&self, pause_at: &str) {
        run_and_kill_at(&self.config_path, pause_at);
    }

    /// Starts `opskit archive <args>` that pauses for `secs` at `pause_at`, and returns once
    /// it has reached the pause.
    pub fn start_paused(&self, args: &[&str], pause_at: &str, secs: &str) -> PausedRun {
        let mut child = self
            .opskit()
            .arg("archive")
            .args(args)
            .env("OPSKIT_TEST_PAUSE_AT", pause_at)
            .env("OPSKIT_TEST_PAUSE_SECS", secs)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let out = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = std::io::Read::read_to_string(&mut BufReader::new(stdout), &mut s);
            s
        });
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        for line in lines.by_ref() {
            let line = line.unwrap();
            eprintln!("[child] {line}");
            if line.starts_with("OPSKIT_TEST_PAUSED") {
                return PausedRun {
                    child,
                    lines,
                    stdout: Some(out),
                };
            }
        }
        let status = child.wait().unwrap();
        panic!("opskit ended ({status}) before the pause point {pause_at}");
    }

    /// [`Rig::start_paused`] for `archive run --month 2024-01`.
    pub fn run_paused(&self, pause_at: &str, secs: &str) -> PausedRun {
        self.start_paused(&["run", "--month", MONTH], pause_at, secs)
    }

    pub fn state_dir(&self) -> PathBuf {
        self.config.general.state_dir.path().to_path_buf()
    }

    pub fn staging_dir(&self) -> PathBuf {
        self.config.archive.staging_dir.path().to_path_buf()
    }

    pub fn local_file(&self) -> PathBuf {
        self.staging_dir().join(FILE)
    }

    pub fn remote_dir(&self) -> PathBuf {
        self.sftp
            .backup_dir
            .join(&self.config.archive.sftp.remote_dir)
    }

    pub fn remote_file(&self, name: &str) -> PathBuf {
        self.remote_dir().join(name)
    }

    /// The failure alerts the webhook received (the date-anomaly warnings left out: the run
    /// goes on after them; see [`Rig::warnings`]).
    pub fn alerts(&self) -> Vec<serde_json::Value> {
        failure_alerts(&self.lab)
    }

    /// The date-anomaly warnings the webhook received.
    pub fn warnings(&self) -> Vec<serde_json::Value> {
        anomaly_warnings(&self.lab)
    }

    /// Everything the webhook received, in order.
    pub fn webhook_posts(&self) -> Vec<serde_json::Value> {
        webhook_posts(&self.lab)
    }

    /// A metric of the last run, from the Prometheus textfile.
    pub fn metric(&self, name: &str) -> Option<f64> {
        archive_metric(&self.config, name)
    }

    /// Every January row is in the table or in the remote archive (or, before it has its
    /// final name, in its `.uploading` file: a segmented run); returns the archived ids.
    pub fn assert_nothing_lost(&self) -> BTreeSet<i64> {
        let remaining = self.january_ids();
        let final_file = self.remote_file(FILE);
        let mut archived = if final_file.exists() {
            archived_ids(&final_file)
        } else {
            archived_ids(&self.remote_file(&format!("{FILE}.uploading")))
        };
        // A segmented run cut short archives the rest of the month in late passes.
        for late in ["late1", "late2"] {
            let name = FILE.replace(".bson.gz", &format!(".{late}.bson.gz"));
            for id in archived_ids(&self.remote_file(&name)) {
                assert!(archived.insert(id), "{id} is archived twice");
            }
        }
        for id in &self.january {
            assert!(
                remaining.contains(id) || archived.contains(id),
                "row {id} is neither in the table nor in the uploaded archive"
            );
        }
        for id in &archived {
            assert!(
                self.january.contains(id),
                "the archive holds {id}, not a January row"
            );
        }
        archived
    }

    /// After a successful run: January is gone from the table, entirely in the archive, and
    /// every other row is untouched.
    pub fn assert_month_archived(&self) {
        let archived = self.assert_nothing_lost();
        assert!(self.january_ids().is_empty(), "January rows are left");
        assert_eq!(archived, self.january, "the archive is not exactly January");
        assert_eq!(self.total(), self.others);
        assert!(!self.remote_file(&format!("{FILE}.uploading")).exists());
        assert_eq!(
            std::fs::read(self.remote_file(FILE)).unwrap(),
            std::fs::read(self.local_file()).unwrap(),
            "remote and local archives differ"
        );
    }

    /// Nothing of the month changed: rows, staged files, journal.
    pub fn assert_untouched(&self) {
        assert_eq!(self.january_ids(), self.january, "January rows changed");
        assert!(!self.local_file().exists(), "an archive was staged");
        assert!(
            !opskit_archive::staged::partial_path(&self.local_file()).exists(),
            "a partial archive was left"
        );
        assert!(!self.remote_file(FILE).exists(), "an archive was uploaded");
    }
}

/// `opskit --config <config_path>`, free of the test hooks and config the environment may hold.
pub fn opskit_with(config_path: &Path) -> Command {
    let mut c = Command::new(opskit_bin());
    c.arg("--config")
        .arg(config_path)
        .env_remove("OPSKIT_TEST_PAUSE_AT")
        .env_remove("OPSKIT_TEST_PANIC_AT")
        .env_remove("OPSKIT_ALERT_RECEIPT")
        .env_remove("OPSKIT_CONFIG")
        .env("NO_COLOR", "1");
    c
}

/// Echoes the child's stderr and waits until it prints its pause line; false after 180 s.
pub fn wait_for_pause(child: &mut std::process::Child) -> bool {
    let (tx, rx) = mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("[child] {line}");
            if line.starts_with("OPSKIT_TEST_PAUSED") {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(180)).is_ok()
}

/// Runs `opskit archive run --month MONTH` until it reaches `pause_at`, then kills it with
/// SIGKILL.
pub fn run_and_kill_at(config_path: &Path, pause_at: &str) {
    let mut child = opskit_with(config_path)
        .args(["archive", "run", "--month", MONTH])
        .env("OPSKIT_TEST_PAUSE_AT", pause_at)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let paused = wait_for_pause(&mut child);
    signal(child.id(), nix::sys::signal::Signal::SIGKILL);
    let status = child.wait().unwrap();
    assert!(paused, "opskit never reached the pause point {pause_at}");
    assert!(!status.success());
}

/// Everything the lab's webhook receiver got, in order.
pub fn webhook_posts(lab: &Lab) -> Vec<serde_json::Value> {
    lab.webhook().unwrap().received().unwrap()
}

/// The failure alerts the webhook got (the date-anomaly warnings left out).
pub fn failure_alerts(lab: &Lab) -> Vec<serde_json::Value> {
    webhook_posts(lab)
        .into_iter()
        .filter(|a| a["step"] != opskit_archive::anomalies::STEP)
        .collect()
}

/// The date-anomaly warnings the webhook got (one per month).
pub fn anomaly_warnings(lab: &Lab) -> Vec<serde_json::Value> {
    webhook_posts(lab)
        .into_iter()
        .filter(|a| a["step"] == opskit_archive::anomalies::STEP)
        .collect()
}

/// A metric of the last archive run, from `<metrics_dir>/opskit_archive.prom`.
pub fn archive_metric(config: &Config, name: &str) -> Option<f64> {
    let text = std::fs::read_to_string(
        config
            .general
            .metrics_dir
            .path()
            .join("opskit_archive.prom"),
    )
    .ok()?;
    opskit_core::metrics::sample_value(&text, &format!("opskit_archive_{name}"))
}

/// Runs a command, prints what it said (for failing tests), returns its output.
pub fn run_logged(cmd: &mut Command, what: &[&str]) -> Output {
    let out = cmd.output().unwrap();
    eprintln!(
        "opskit {what:?} → {:?}\n--- stdout\n{}--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Sends `sig` to `pid`.
pub fn signal(pid: u32, sig: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig).unwrap();
}

/// A run paused at a test hook; [`PausedRun::finish`] lets it go on and waits for it.
pub struct PausedRun {
    pub child: std::process::Child,
    lines: std::io::Lines<BufReader<std::process::ChildStderr>>,
    stdout: Option<std::thread::JoinHandle<String>>,
}

impl PausedRun {
    /// Waits for the end; returns the exit status and everything printed after the pause.
    pub fn finish_with_output(mut self) -> (std::process::ExitStatus, String, String) {
        let mut err = String::new();
        for line in self.lines.by_ref() {
            let line = line.unwrap();
            eprintln!("[child] {line}");
            err.push_str(&line);
            err.push('\n');
        }
        let status = self.child.wait().unwrap();
        let out = self
            .stdout
            .take()
            .map(|h| h.join().unwrap())
            .unwrap_or_default();
        (status, out, err)
    }

    pub fn finish(self) -> std::process::ExitStatus {
        self.finish_with_output().0
    }
}

/// The ids in an archive file (empty when it does not exist).
pub fn archived_ids(path: &Path) -> BTreeSet<i64> {
    archived_rows(path).into_iter().map(|(id, _)| id).collect()
}

/// `(id, payload)` of every document of an archive file (empty when it does not exist).
pub fn archived_rows(path: &Path) -> Vec<(i64, String)> {
    if !path.exists() {
        return Vec::new();
    }
    let mut r = opskit_archive::staged::open_documents(path).unwrap();
    let mut rows = Vec::new();
    let mut seen = BTreeSet::new();
    while let Some(doc) = r.next_document().unwrap() {
        let id = doc.get_i64("id").unwrap();
        assert!(seen.insert(id), "duplicate id {id} in archive");
        let payload = doc.get_str("payload").unwrap_or("").to_string();
        rows.push((id, payload));
    }
    rows
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// True when this machine can make private mount namespaces (the tmpfs and read-only tests).
pub fn can_unshare() -> bool {
    Command::new("unshare")
        .args(["-m", "true"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Runs `opskit --config <rig> <args…>` in a private mount namespace after `setup` (shell
/// commands, e.g. mounts); `after` runs in the same namespace once opskit ended (its exit
/// code is kept).
pub fn run_in_namespace(rig: &Rig, setup: &str, args: &[&str], after: &str) -> Output {
    let script = format!(
        "set -e; {setup}; set +e; \"$0\" --config \"$1\" {}; rc=$?; {after}; exit $rc",
        args.join(" ")
    );
    let mut cmd = Command::new("unshare");
    cmd.args(["-m", "--propagation", "private", "sh", "-c", &script])
        .arg(opskit_bin())
        .arg(&rig.config_path)
        .env_remove("OPSKIT_TEST_PAUSE_AT")
        .env_remove("OPSKIT_CONFIG");
    run_logged(&mut cmd, args)
}
