//! One rig for both archive sources: the lab's MariaDB (`mysql://`) or its MongoDB-compatible
//! server (`mongodb://`; SecantusDB — a wire-protocol server with real storage and queries,
//! not MongoDB), seeded by `opskit_lab::seed` with the same shape of data (a month, a tenth as
//! many documents in each neighbour, four bad dates), plus the lab's sshd/SFTP and webhook.
//!
//! Ids are compared as text: the MariaDB primary key as a number, the MongoDB `_id` as the
//! ObjectId's hex.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use opskit_core::config::Config;
use opskit_core::config::value::Positive;
use opskit_lab::seed::{SeedCounts, SeedSpec};
use opskit_lab::{Component, Lab, LabBuilder, MariadbServer, MongodbServer, SftpServer};

use super::{
    MONTH, anomaly_warnings, archive_metric, failure_alerts, opskit_bin, opskit_with,
    run_and_kill_at, run_logged, wait_for_pause, webhook_posts,
};

/// The source a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The lab's MariaDB.
    Mysql,
    /// The lab's SecantusDB.
    Mongodb,
}

impl Backend {
    /// The document id field in archives.
    pub fn id_field(self) -> &'static str {
        match self {
            Backend::Mysql => "id",
            Backend::Mongodb => "_id",
        }
    }
}

enum Db {
    Mysql(MariadbServer),
    Mongodb(MongodbServer),
}

/// A lab, its seeded source and the config pointing opskit at it.
pub struct SourceRig {
    pub backend: Backend,
    pub lab: Lab,
    db: Db,
    pub sftp: SftpServer,
    pub config: Config,
    pub config_path: PathBuf,
    pub spec: SeedSpec,
    /// What the seed left.
    pub seeded: SeedCounts,
    /// The month's ids as seeded.
    pub month_ids: BTreeSet<String>,
    _dir: tempfile::TempDir,
}

/// `{'create_on': {'$gte': …, '$lt': …}, 'action': {'$ne': 'anomaly'}}` of January.
const JANUARY: &str = "{'create_on': {'$gte': '2024-01-01 00:00:00', '$lt': '2024-02-01 00:00:00'}, 'action': {'$ne': 'anomaly'}}";

impl SourceRig {
    /// A lab with `rows` documents in January on `backend`, fixed purge batches of `batch`
    /// (adaptive batches are tested on their own), then `tweak` applied to the config.
    pub fn new(
        backend: Backend,
        rows: u64,
        batch: u64,
        tweak: impl FnOnce(&mut Config),
    ) -> SourceRig {
        let dir = tempfile::Builder::new().prefix("os").tempdir().unwrap();
        let db_component = match backend {
            Backend::Mysql => Component::Mariadb,
            Backend::Mongodb => Component::Mongodb,
        };
        let lab = LabBuilder::new(dir.path().join("lab"))
            .with(db_component)
            .with(Component::Sshd)
            .with(Component::Webhook)
            .opskit_exe(opskit_bin())
            .up()
            .expect("lab up (SecantusDB, MariaDB and sshd are installed by scripts/install-deps)");
        let spec = SeedSpec::new(MONTH.parse().unwrap(), rows).unwrap();
        let mut config = lab.config().unwrap();
        let (db, seeded) = match backend {
            Backend::Mysql => {
                let db = lab.mariadb().unwrap();
                let seeded = spec.into_mariadb(&db).unwrap();
                config.archive.source_uri = db.uri();
                (Db::Mysql(db), seeded)
            }
            Backend::Mongodb => {
                let db: MongodbServer = lab.view().unwrap();
                let seeded = spec.into_mongodb(&db).unwrap();
                config.archive.source_uri = db.uri.clone();
                (Db::Mongodb(db), seeded)
            }
        };
        assert_eq!(seeded, spec.counts());
        config.archive.purge.batch_size = Positive::new(batch);
        config.archive.purge.min_batch_size = Positive::new(batch);
        config.archive.purge.max_batch_size = Positive::new(batch);
        config.archive.sftp.timeout_secs = Positive::new(10);
        config.alert.retries = 0;
        tweak(&mut config);
        let config_path = dir.path().join("archive-test.toml");
        std::fs::write(&config_path, config.to_toml()).unwrap();
        let sftp = lab.sftp().unwrap();
        let mut rig = SourceRig {
            backend,
            lab,
            db,
            sftp,
            config,
            config_path,
            spec,
            seeded,
            month_ids: BTreeSet::new(),
            _dir: dir,
        };
        rig.month_ids = rig.january_ids();
        assert_eq!(rig.month_ids.len() as u64, rows);
        rig
    }

    /// The source's URI.
    pub fn uri(&self) -> String {
        match &self.db {
            Db::Mysql(db) => db.uri(),
            Db::Mongodb(db) => db.uri.clone(),
        }
    }

    /// What the source holds now, counted as the seed laid it out.
    pub fn counts(&self) -> SeedCounts {
        match &self.db {
            Db::Mysql(db) => self.spec.count_mariadb(db).unwrap(),
            Db::Mongodb(db) => self.spec.count_mongodb(db).unwrap(),
        }
    }

    /// The ids of January's well-formed documents in the source now.
    pub fn january_ids(&self) -> BTreeSet<String> {
        let out = match &self.db {
            Db::Mysql(db) => db
                .sql(
                    "SELECT id FROM test.user_logs WHERE create_on >= '2024-01-01 00:00:00' \
                     AND create_on < '2024-02-01 00:00:00' AND action <> 'anomaly'",
                )
                .unwrap(),
            Db::Mongodb(db) => db
                .python(
                    "test",
                    &format!(
                        "for d in db['user_logs'].find({JANUARY}, {{'_id': 1}}):\n    print(str(d['_id']))"
                    ),
                )
                .unwrap(),
        };
        out.lines()
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect()
    }

    /// Inserts a January document written late (after the export).
    pub fn insert_late(&self, date: &str) {
        match &self.db {
            Db::Mysql(db) => {
                db.sql(&format!(
                    "INSERT INTO test.user_logs (create_on, user_id, action, payload) VALUES ('{date}', 9, 'late', 'late')"
                ))
                .unwrap();
            }
            Db::Mongodb(db) => {
                db.python(
                    "test",
                    &format!(
                        "db['user_logs'].insert_one({{'create_on': {date:?}, 'user_id': 9, 'action': 'late', 'payload': 'late'}})"
                    ),
                )
                .unwrap();
            }
        }
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

    /// Runs `opskit archive run` until it reaches `pause_at`, then kills it with SIGKILL.
    pub fn run_and_kill_at(&self, pause_at: &str) {
        run_and_kill_at(&self.config_path, pause_at);
    }

    /// Starts `opskit archive run` paused for `secs` at `pause_at`; returns once it paused.
    pub fn run_paused(&self, pause_at: &str, secs: &str) -> std::process::Child {
        let mut child = self
            .opskit()
            .args(["archive", "run", "--month", MONTH])
            .env("OPSKIT_TEST_PAUSE_AT", pause_at)
            .env("OPSKIT_TEST_PAUSE_SECS", secs)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        assert!(wait_for_pause(&mut child), "never paused at {pause_at}");
        child
    }

    pub fn state_dir(&self) -> PathBuf {
        self.config.general.state_dir.path().to_path_buf()
    }

    pub fn staging_dir(&self) -> PathBuf {
        self.config.archive.staging_dir.path().to_path_buf()
    }

    pub fn local_file(&self) -> PathBuf {
        self.staging_dir().join(super::FILE)
    }

    pub fn remote_file(&self, name: &str) -> PathBuf {
        self.sftp
            .backup_dir
            .join(&self.config.archive.sftp.remote_dir)
            .join(name)
    }

    /// The failure alerts the webhook received (the date-anomaly warnings left out).
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

    /// The ids in an archive file of this source (empty when it does not exist).
    pub fn archived_ids(&self, path: &Path) -> BTreeSet<String> {
        let mut ids = BTreeSet::new();
        if !path.exists() {
            return ids;
        }
        let mut r = opskit_archive::staged::open_documents(path).unwrap();
        while let Some(doc) = r.next_document().unwrap() {
            let id = match self.backend {
                Backend::Mysql => doc.get_i64("id").unwrap().to_string(),
                Backend::Mongodb => doc.get_object_id("_id").unwrap().to_hex(),
            };
            assert!(ids.insert(id.clone()), "duplicate id {id} in the archive");
        }
        ids
    }

    /// Every January document is in the source or in the uploaded archive — never neither —
    /// and the archive holds only January documents.
    pub fn assert_nothing_lost(&self) -> BTreeSet<String> {
        let remaining = self.january_ids();
        let archived = self.archived_ids(&self.remote_file(super::FILE));
        for id in &self.month_ids {
            assert!(
                remaining.contains(id) || archived.contains(id),
                "{id} is neither in the source nor in the uploaded archive"
            );
        }
        assert!(
            archived.is_subset(&self.month_ids),
            "the archive holds documents from outside the month"
        );
        archived
    }

    /// After a successful run: January is gone from the source, entirely in the archive
    /// (remote = local), and the neighbours and anomalies are untouched.
    pub fn assert_month_archived(&self) {
        let archived = self.assert_nothing_lost();
        assert!(self.january_ids().is_empty(), "January documents are left");
        assert_eq!(
            archived, self.month_ids,
            "the archive is not exactly January"
        );
        let now = self.counts();
        assert_eq!(
            (now.before, now.after, now.anomalies),
            (self.seeded.before, self.seeded.after, self.seeded.anomalies),
            "documents outside the month changed"
        );
        assert!(
            !self
                .remote_file(&format!("{}.uploading", super::FILE))
                .exists()
        );
        assert_eq!(
            std::fs::read(self.remote_file(super::FILE)).unwrap(),
            std::fs::read(self.local_file()).unwrap(),
            "remote and local archives differ"
        );
    }
}

/// One `#[test]` per scenario and source: `scenario(Backend)` runs on the lab's MariaDB and on
/// its MongoDB-compatible server (the calling file imports `Backend`).
#[allow(unused_macros)] // not every test file that shares this module runs on both sources
macro_rules! on_both_sources {
    ($($scenario:ident),* $(,)?) => {
        /// On the lab's MariaDB.
        mod mysql {
            $( #[test] fn $scenario() { super::$scenario(super::Backend::Mysql) } )*
        }
        /// On the lab's MongoDB-compatible server (SecantusDB, not MongoDB).
        mod mongodb_secantusdb {
            $( #[test] fn $scenario() { super::$scenario(super::Backend::Mongodb) } )*
        }
    };
}
#[allow(unused_imports)]
pub(crate) use on_both_sources;
