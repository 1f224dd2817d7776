//! `opskit archive` with a `mongodb://` source: the lab's MongoDB-compatible server
//! (SecantusDB, a wire-protocol server with real storage and queries — not MongoDB: it shows
//! the queries and commands work end to end, not how MongoDB itself behaves or performs),
//! its sshd/SFTP and its webhook receiver.
//!
//! - issue 7 item 5: a document changed between the export and the purge stays (the
//!   per-document `delete` matches `$$ROOT` against the archived document) and the next late
//!   pass archives its new version;
//! - issue 7 item 14: a resumed purge counts documents it already deleted as gone, not lost.

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use opskit_core::config::Config;
use opskit_core::config::value::Positive;
use opskit_lab::seed::SeedSpec;
use opskit_lab::{Component, Lab, LabBuilder, MongodbServer, SftpServer};

const MONTH: &str = "2024-01";
const FILE: &str = "test.user_logs.2024-01.bson.gz";
const JANUARY: &str = "{'create_on': {'$gte': '2024-01-01 00:00:00', '$lt': '2024-02-01 00:00:00'}, 'action': {'$ne': 'anomaly'}}";

fn opskit_bin() -> std::path::PathBuf {
    assert_cmd::cargo::cargo_bin("opskit")
}

struct MongoRig {
    lab: Lab,
    db: MongodbServer,
    sftp: SftpServer,
    config: Config,
    config_path: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl MongoRig {
    fn new(rows: u64) -> MongoRig {
        let dir = tempfile::Builder::new().prefix("om").tempdir().unwrap();
        let lab = LabBuilder::new(dir.path().join("lab"))
            .with(Component::Mongodb)
            .with(Component::Sshd)
            .with(Component::Webhook)
            .opskit_exe(opskit_bin())
            .up()
            .expect("lab up (the MongoDB-compatible server is installed by scripts/install-deps)");
        let db: MongodbServer = lab.view().unwrap();
        let sftp = lab.sftp().unwrap();
        SeedSpec::new(MONTH.parse().unwrap(), rows)
            .unwrap()
            .into_mongodb(&db)
            .unwrap();
        let mut config = lab.config().unwrap();
        config.archive.source_uri = db.uri.clone();
        config.archive.purge.batch_size = Positive::new(250);
        config.archive.purge.min_batch_size = Positive::new(250);
        config.archive.purge.max_batch_size = Positive::new(250);
        config.alert.retries = 0;
        let config_path = dir.path().join("mongo.toml");
        std::fs::write(&config_path, config.to_toml()).unwrap();
        MongoRig {
            lab,
            db,
            sftp,
            config,
            config_path,
            _dir: dir,
        }
    }

    fn py(&self, script: &str) -> String {
        self.db
            .python("test", &format!("coll = db['user_logs']\n{script}"))
            .unwrap()
    }

    fn january_count(&self) -> u64 {
        self.py(&format!("print(coll.count_documents({JANUARY}))"))
            .trim()
            .parse()
            .unwrap()
    }

    fn opskit(&self) -> Command {
        let mut c = Command::new(opskit_bin());
        c.arg("--config")
            .arg(&self.config_path)
            .env_remove("OPSKIT_TEST_PAUSE_AT")
            .env_remove("OPSKIT_CONFIG");
        c
    }

    fn archive(&self, args: &[&str]) -> Output {
        let out = self.opskit().arg("archive").args(args).output().unwrap();
        eprintln!(
            "opskit archive {args:?} → {:?}\n{}{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    fn metric(&self, name: &str) -> Option<f64> {
        let text = std::fs::read_to_string(
            self.config
                .general
                .metrics_dir
                .path()
                .join("opskit_archive.prom"),
        )
        .ok()?;
        opskit_core::metrics::sample_value(&text, &format!("opskit_archive_{name}"))
    }

    fn remote(&self, name: &str) -> std::path::PathBuf {
        self.sftp
            .backup_dir
            .join(&self.config.archive.sftp.remote_dir)
            .join(name)
    }

    /// Starts a run paused at `pause_at` for `secs`; returns once it paused.
    fn paused(&self, pause_at: &str, secs: &str) -> std::process::Child {
        use std::io::BufRead as _;
        let mut child = self
            .opskit()
            .args(["archive", "run", "--month", MONTH])
            .env("OPSKIT_TEST_PAUSE_AT", pause_at)
            .env("OPSKIT_TEST_PAUSE_SECS", secs)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
        for line in lines.by_ref() {
            let line = line.unwrap();
            eprintln!("[child] {line}");
            if line.starts_with("OPSKIT_TEST_PAUSED") {
                std::thread::spawn(move || {
                    for line in lines.map_while(Result::ok) {
                        eprintln!("[child] {line}");
                    }
                });
                return child;
            }
        }
        let status = child.wait().unwrap();
        panic!("opskit ended ({status}) before {pause_at}");
    }
}

/// `(payload)` of every document of an archive whose `_id` prints as `id`.
fn payloads(path: &std::path::Path) -> Vec<String> {
    let mut r = opskit_archive::staged::open_documents(path).unwrap();
    let mut v = Vec::new();
    while let Some(doc) = r.next_document().unwrap() {
        v.push(doc.get_str("payload").unwrap().to_string());
    }
    v
}

#[test]
fn item5_on_secantusdb_a_document_changed_after_the_export_stays_and_the_next_late_pass_archives_it()
 {
    let rig = MongoRig::new(600);
    assert_eq!(rig.january_count(), 600);
    let mut run = rig.paused("purge:batch=1", "4");
    // The month's last document is in the last batch: a writer edits it now.
    rig.py(&format!(
        "d = coll.find({JANUARY}).sort('create_on', -1).limit(1)[0]\n\
         coll.update_one({{'_id': d['_id']}}, {{'$set': {{'payload': 'edited after the export'}}}})"
    ));
    assert!(run.wait().unwrap().success());
    assert_eq!(rig.january_count(), 1, "only the changed document stays");
    let left = rig.py(&format!("print(coll.find_one({JANUARY})['payload'])"));
    assert_eq!(left.trim(), "edited after the export");
    assert!(
        !payloads(&rig.remote(FILE)).contains(&"edited after the export".to_string()),
        "the archive holds the version of the export"
    );
    assert_eq!(rig.metric("documents_changed_since_export"), Some(1.0));
    assert_eq!(rig.metric("documents_deleted"), Some(599.0));
    let anomalies = rig.py("print(coll.count_documents({'action': 'anomaly'}))");
    assert_eq!(
        anomalies.trim(),
        "4",
        "documents with bad dates are never deleted"
    );

    let out = rig.archive(&["run"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(rig.january_count(), 0);
    assert_eq!(
        payloads(&rig.remote("test.user_logs.2024-01.late1.bson.gz")),
        ["edited after the export"]
    );
    // No failure alert; the documents with bad dates gave one warning per month visited
    // (January once for its two passes, and the scheduled run's own previous month).
    let posts = rig.lab.webhook().unwrap().received().unwrap();
    assert!(
        posts.iter().all(|a| a["step"] == "anomalies"),
        "no failure alert: {posts:?}"
    );
    let mut keys: Vec<&str> = posts
        .iter()
        .map(|a| a["run_key"].as_str().unwrap())
        .collect();
    keys.sort();
    let visited = keys.len();
    keys.dedup();
    assert_eq!(keys.len(), visited, "one warning per month: {posts:?}");
    assert!(
        keys.contains(&"archive-test.user_logs-2024-01"),
        "{posts:?}"
    );
}

#[test]
fn item14_on_secantusdb_a_resumed_purge_counts_documents_already_deleted_as_gone() {
    let rig = MongoRig::new(1000);
    let mut run = rig.paused("purge:deleted=2", "60");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(run.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let _ = run.wait();
    assert_eq!(rig.january_count(), 500);
    std::thread::sleep(Duration::from_millis(200));
    let out = rig.archive(&["run", "--month", MONTH]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(rig.january_count(), 0);
    assert_eq!(rig.metric("documents_already_gone"), Some(250.0));
    assert_eq!(rig.metric("delete_shortfall"), Some(0.0));
    assert_eq!(rig.metric("documents_deleted"), Some(500.0));
}
