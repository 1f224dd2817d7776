//! A lab rig for the switchover tests: five MariaDB in the spec's tree, HAProxy, BIND and the
//! webhook receiver, driven through the real `opskit` binary; every outcome is read from the
//! servers themselves (SHOW SLAVE STATUS, dig, the admin socket, haproxy.cfg, the rows).

#![allow(dead_code)]

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use opskit_core::config::Config;
use opskit_core::engine::RunSummary;
use opskit_core::secret::Secret;
use opskit_lab::{BindLab, Component, HaproxyLab, Lab, LabBuilder, MysqlLab, PoolMember};
use opskit_mysql::session::Credentials;
use opskit_mysql::workload::{
    Reader, ReaderOptions, ReaderReport, Writer, WriterOptions, WriterReport,
};

pub fn opskit_bin() -> PathBuf {
    assert_cmd::cargo::cargo_bin("opskit")
}

pub struct Rig {
    pub lab: Lab,
    pub mysql: MysqlLab,
    pub bind: BindLab,
    pub haproxy: HaproxyLab,
    pub config: Config,
    pub dir: tempfile::TempDir,
}

/// What a test compares before and after a run that must change nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub tree: Vec<(String, Option<String>, bool)>,
    pub read_only: Vec<(String, String)>,
    pub master_gtid: String,
    pub dns: Vec<String>,
    pub pool: Vec<PoolMember>,
    pub haproxy_cfg: String,
}

impl Rig {
    pub fn new(prefix: &str) -> Rig {
        let dir = tempfile::Builder::new().prefix(prefix).tempdir().unwrap();
        let lab = LabBuilder::new(dir.path().join("lab"))
            .with(Component::Mysql)
            .with(Component::Haproxy)
            .with(Component::Bind)
            .with(Component::Webhook)
            .opskit_exe(opskit_bin())
            .up()
            .expect("lab up");
        let mut config = lab.config().unwrap();
        config.alert.retries = 0;
        Rig {
            mysql: lab.view().unwrap(),
            bind: lab.view().unwrap(),
            haproxy: lab.view().unwrap(),
            lab,
            config,
            dir,
        }
    }

    /// Writes `config` (the lab's, changed by `tweak`) to a file and returns it.
    pub fn config_file(&self, name: &str, tweak: impl FnOnce(&mut Config)) -> PathBuf {
        let mut c = self.config.clone();
        tweak(&mut c);
        let p = self.dir.path().join(format!("{name}.toml"));
        std::fs::write(&p, c.to_toml()).unwrap();
        p
    }

    pub fn opskit(&self, config: &Path) -> Command {
        let mut c = Command::new(opskit_bin());
        c.arg("--config")
            .arg(config)
            .env_remove("OPSKIT_CONFIG")
            .env_remove(opskit_mysql::testhook::PAUSE_ENV)
            .env("NO_COLOR", "1");
        c
    }

    /// `opskit --output json mysql switchover <args>` with `config`; prints what it printed.
    pub fn switchover(&self, config: &Path, args: &[&str]) -> (Option<i32>, String, String) {
        let out = self
            .opskit(config)
            .args(["--output", "json", "mysql", "switchover"])
            .args(args)
            .output()
            .unwrap();
        show("switchover", args, &out)
    }

    /// Runs the switchover, pausing before `step`; `fault` runs during the pause.
    pub fn switchover_with_fault(
        &self,
        config: &Path,
        args: &[&str],
        step: &str,
        fault: impl FnOnce(),
    ) -> (Option<i32>, String, String) {
        let resume = self.dir.path().join(format!("resume-{step}"));
        let _ = std::fs::remove_file(&resume);
        let mut child = self
            .opskit(config)
            .args(["--output", "json", "mysql", "switchover"])
            .args(args)
            .env(opskit_mysql::testhook::PAUSE_ENV, step)
            .env(opskit_mysql::testhook::RESUME_ENV, &resume)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (rx, err) = stderr_lines(&mut child);
        let paused = rx.recv_timeout(Duration::from_secs(120));
        assert!(paused.is_ok(), "the run never paused before {step}");
        fault();
        std::fs::write(&resume, "").unwrap();
        let out = child.wait_with_output().unwrap();
        let stderr = err.join().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        eprintln!(
            "switchover {args:?} (fault before {step}) → {:?}\n--- stdout\n{stdout}--- stderr\n{stderr}",
            out.status.code()
        );
        (out.status.code(), stdout, stderr)
    }

    pub fn lab_config(&self) -> PathBuf {
        self.config_file("lab", |_| {})
    }

    pub fn sql(&self, server: &str, sql: &str) -> String {
        self.mysql
            .sql(server, sql)
            .unwrap_or_else(|e| panic!("{server}: {e:#}"))
    }

    pub fn address(&self, server: &str) -> String {
        self.mysql.get(server).unwrap().address.to_string()
    }

    pub fn dns(&self) -> Vec<String> {
        self.bind.dig("mysql-master.ipo.com", "A").unwrap()
    }

    /// The tree as the servers report it, with every replica's threads running.
    pub fn assert_tree(&self, want: &[(&str, Option<&str>)]) {
        let tree = self.mysql.tree().unwrap();
        for (name, source) in want {
            let (_, have, running) = tree.iter().find(|(n, _, _)| n == name).unwrap();
            assert_eq!(have.as_deref(), *source, "{name}'s source; tree {tree:?}");
            if source.is_some() {
                assert!(running, "{name} is not replicating: {tree:?}");
            }
        }
        for (name, _) in want {
            let ro = self.sql(name, "SELECT @@read_only");
            let want_ro = if want.iter().any(|(n, s)| n == name && s.is_none()) {
                "0"
            } else {
                "1"
            };
            assert_eq!(ro.trim(), want_ro, "{name} read_only");
        }
    }

    /// The read pool member `slot` as the admin socket shows it.
    pub fn slot(&self, slot: &str) -> PoolMember {
        self.haproxy
            .pool()
            .unwrap()
            .into_iter()
            .find(|m| m.name == slot)
            .unwrap()
    }

    /// Waits (≤ 10 s) until the pool member `slot` is `addr` and up.
    pub fn assert_slot(&self, slot: &str, addr: &str) {
        let want = format!("{addr}:{}", self.mysql.port);
        for _ in 0..100 {
            let m = self.slot(slot);
            if m.addr == want && m.up && !m.maintenance {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("{slot} is {:?}, want {want} up", self.slot(slot));
    }

    pub fn cfg_has(&self, slot: &str, addr: &str) -> bool {
        let text = std::fs::read_to_string(&self.haproxy.config).unwrap();
        text.contains(&format!("server {slot} {addr}:{} ", self.mysql.port))
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            tree: self.mysql.tree().unwrap(),
            read_only: self
                .mysql
                .servers
                .iter()
                .map(|s| (s.name.clone(), self.sql(&s.name, "SELECT @@read_only")))
                .collect(),
            master_gtid: self.sql("Master", "SELECT @@gtid_binlog_pos"),
            dns: self.dns(),
            pool: self
                .haproxy
                .pool()
                .unwrap()
                .into_iter()
                .map(|mut m| {
                    // Health checks may flap the op state; what a run changes is the rest.
                    m.up = true;
                    m
                })
                .collect(),
            haproxy_cfg: std::fs::read_to_string(&self.haproxy.config).unwrap(),
        }
    }

    fn app_creds(&self) -> Credentials {
        Credentials {
            user: opskit_lab::components::mysql::APP_USER.into(),
            password: Secret::new(self.mysql.app_password().unwrap()),
        }
    }

    /// A writer following mysql-master.ipo.com, one insert every 5 ms.
    pub fn writer(&self, name: &str) -> Writer {
        Writer::start(WriterOptions {
            dns_server: self.config.mysql.dns.server.clone(),
            zone: "ipo.com".into(),
            name: "mysql-master.ipo.com".into(),
            port: self.mysql.port,
            creds: self.app_creds(),
            writer: name.into(),
            table: opskit_mysql::workload::DEFAULT_TABLE.into(),
            interval: Duration::from_millis(5),
            retry: Duration::from_millis(5),
            timeout: Duration::from_secs(2),
        })
        .unwrap()
    }

    /// A reader through HAProxy, a new connection every 5 reads.
    pub fn reader(&self) -> Reader {
        Reader::start(ReaderOptions {
            host: self.haproxy.address.clone(),
            port: self.haproxy.port,
            creds: self.app_creds(),
            query: "SELECT @@server_id, COUNT(*) FROM lab.writes".into(),
            interval: Duration::from_millis(10),
            reconnect_every: 5,
            timeout: Duration::from_secs(2),
        })
        .unwrap()
    }

    /// Every committed row of `w` is on every server exactly once, and no server has a row
    /// of that writer that was not committed or found on retry.
    pub fn assert_no_lost_or_duplicated_write(&self, writer: &str, w: &WriterReport, master: &str) {
        let gtid = self
            .sql(master, "SELECT @@gtid_binlog_pos")
            .trim()
            .to_string();
        let committed = w.committed_seqs();
        assert!(
            committed.len() > 50,
            "the writer committed only {}",
            committed.len()
        );
        for s in &self.mysql.servers {
            if s.name != master {
                let r = self.sql(&s.name, &format!("SELECT MASTER_GTID_WAIT('{gtid}', 30)"));
                assert_eq!(r.trim(), "0", "{} did not reach {gtid}", s.name);
            }
            let rows: Vec<u64> = self
                .sql(
                    &s.name,
                    &format!("SELECT seq FROM lab.writes WHERE writer = '{writer}' ORDER BY seq"),
                )
                .lines()
                .map(|l| l.trim().parse().unwrap())
                .collect();
            let mut expected = committed.clone();
            if let Some(u) = w.unknown
                && rows.contains(&u)
            {
                expected.push(u);
            }
            assert_eq!(
                rows, expected,
                "{}: rows of writer {writer} differ from what it committed",
                s.name
            );
        }
    }
}

pub fn assert_no_read_errors(r: &ReaderReport) {
    assert!(r.reads > 50, "the reader read only {} times", r.reads);
    assert!(
        r.errors.is_empty(),
        "read errors through HAProxy: {:?}",
        r.errors
    );
}

pub fn summary(stdout: &str) -> RunSummary {
    serde_json::from_str(stdout).unwrap_or_else(|e| panic!("not a RunSummary ({e}): {stdout}"))
}

fn show(what: &str, args: &[&str], out: &Output) -> (Option<i32>, String, String) {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    eprintln!(
        "{what} {args:?} → {:?}\n--- stdout\n{stdout}--- stderr\n{stderr}",
        out.status.code()
    );
    (out.status.code(), stdout, stderr)
}

/// Reads the child's stderr on a thread: a signal when it paused, and all of it at the end.
fn stderr_lines(child: &mut Child) -> (mpsc::Receiver<()>, std::thread::JoinHandle<String>) {
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let handle = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.starts_with("OPSKIT_TEST_PAUSED") {
                let _ = tx.send(());
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    (rx, handle)
}

/// A `mariadb` client holding `sql` (e.g. a lock and a SLEEP) on `server` in the background.
pub fn hold(rig: &Rig, server: &str, sql: &str) -> Child {
    let s = &rig.mysql.get(server).unwrap().server;
    let mut c = s
        .client_command()
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    c.stdin.take().unwrap().write_all(sql.as_bytes()).unwrap();
    c
}

/// Ends a [`hold`]: the client and its session on the server (a server does not notice a
/// vanished client while it sleeps, and would keep the lock or transaction).
pub fn release(rig: &Rig, server: &str, mut held: Child) {
    let _ = held.kill();
    let _ = held.wait();
    let ids = rig.sql(
        server,
        "SELECT ID FROM information_schema.PROCESSLIST WHERE INFO LIKE 'SELECT SLEEP%' AND ID <> CONNECTION_ID()",
    );
    for id in ids.split_whitespace() {
        let _ = rig.mysql.sql(server, &format!("KILL {id}"));
    }
}

/// SIGSTOPs a process and SIGCONTs it when dropped (even when the test panics).
pub struct Stopped(pub i32);

impl Stopped {
    pub fn new(pid: i32) -> Stopped {
        // SAFETY: a signal to the lab's own recorded process.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
        Stopped(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        // SAFETY: as above.
        unsafe { libc::kill(self.0, libc::SIGCONT) };
    }
}

/// The value of a sample in the mysql runbook's metrics file.
pub fn metric(rig: &Rig, name: &str) -> Option<f64> {
    let p = rig
        .config
        .general
        .metrics_dir
        .path()
        .join("opskit_mysql.prom");
    let text = std::fs::read_to_string(p).ok()?;
    opskit_core::metrics::sample_value(&text, name)
}
