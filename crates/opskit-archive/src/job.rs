//! One archive job: which month, which pass, and every name derived from them.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::Context as _;
use opskit_core::config::value::Month;
use opskit_core::config::{AlertConfig, ArchiveConfig, Config};
use opskit_core::journal::{Journal, Outcome};

use crate::bounds::MonthBounds;
use crate::sftp::BackupHost;
use crate::source::{self, Source};

/// The runbook name (journal directory, lock, metrics file).
pub const RUNBOOK: &str = "archive";

/// Everything a run of one month needs.
#[derive(Debug, Clone)]
pub struct ArchiveJob {
    /// `[archive]`.
    pub config: ArchiveConfig,
    /// `[alert]`: where warnings that do not stop the run go (date anomalies).
    pub alert: AlertConfig,
    /// `general.timezone`, the writers' zone.
    pub tz: chrono_tz::Tz,
    /// `general.state_dir`.
    pub state_dir: PathBuf,
    /// The month's bounds.
    pub bounds: MonthBounds,
    /// 0 for the month's main run; k ≥ 1 for the k-th late pass (documents that arrived
    /// after the main run had exported the month).
    pub pass: u32,
}

/// The month a run without `--month` archives: the previous calendar month in the writers'
/// zone (`general.timezone`) at `now`.
pub fn default_month(config: &Config, now: chrono::DateTime<chrono::Utc>) -> Month {
    Month::previous_in(config.general.timezone.tz(), now)
}

impl ArchiveJob {
    /// The job for `month` (default: [`default_month`] now). A month outside the archivable
    /// range is a usage error (see [`MonthBounds::new`]).
    pub fn new(
        config: &Config,
        month: Option<Month>,
        state_dir: &Path,
    ) -> anyhow::Result<ArchiveJob> {
        let tz = config.general.timezone.tz();
        let month = month.unwrap_or_else(|| default_month(config, chrono::Utc::now()));
        Ok(ArchiveJob {
            config: config.archive.clone(),
            alert: config.alert.clone(),
            tz,
            state_dir: state_dir.to_path_buf(),
            bounds: MonthBounds::new(month, tz)?,
            pass: 0,
        })
    }

    /// The same job for another pass.
    pub fn with_pass(mut self, pass: u32) -> ArchiveJob {
        self.pass = pass;
        self
    }

    fn suffix(&self) -> String {
        if self.pass == 0 {
            String::new()
        } else {
            format!(".late{}", self.pass)
        }
    }

    /// `test.user_logs.2024-01.bson.gz` (late passes: `test.user_logs.2024-01.late1.bson.gz`).
    pub fn file_name(&self) -> String {
        format!(
            "{}.{}.{}{}.bson.gz",
            self.config.database,
            self.config.collection,
            self.bounds.month,
            self.suffix()
        )
    }

    /// The staged archive.
    pub fn local_path(&self) -> PathBuf {
        self.config.staging_dir.path().join(self.file_name())
    }

    /// The journal key: `archive-test.user_logs-2024-01` (`…-late1` for late passes).
    pub fn run_key(&self) -> String {
        let late = if self.pass == 0 {
            String::new()
        } else {
            format!("-late{}", self.pass)
        };
        format!("{}{late}", self.month_key())
    }

    /// The key of the month, whatever the pass: `archive-test.user_logs-2024-01`.
    pub fn month_key(&self) -> String {
        format!("{}{}", journal_prefix(&self.config), self.bounds.month)
    }

    /// `test.user_logs.2024-01`: what the month's files are named after.
    pub fn month_name(&self) -> String {
        format!(
            "{}.{}.{}",
            self.config.database, self.config.collection, self.bounds.month
        )
    }

    /// The month's run lock, in the staging directory beside the files it protects (so runs
    /// with different state directories still exclude each other).
    pub fn month_lock_path(&self) -> PathBuf {
        self.config
            .staging_dir
            .path()
            .join(format!(".{}.lock", self.month_name()))
    }

    /// Written by a restore into the archived source: scheduled runs skip the month.
    pub fn restored_mark(&self) -> PathBuf {
        self.state_dir
            .join("archive")
            .join(format!("{}.restored.json", self.month_key()))
    }

    /// Remembers that the date-anomaly warning of this month was delivered (any pass), so
    /// re-runs and late passes of the month do not send it again.
    pub fn anomalies_warned_marker(&self) -> PathBuf {
        self.state_dir
            .join("archive")
            .join(format!("{}.anomalies-warned.json", self.month_key()))
    }

    /// The purge checkpoint (ids already sent), in the state directory.
    pub fn purge_checkpoint(&self) -> PathBuf {
        self.state_dir
            .join("archive")
            .join(format!("{}.purge.json", self.run_key()))
    }

    /// The segment log of a segmented pass (see [`crate::segment::SegmentLog`]).
    pub fn segment_log_path(&self) -> PathBuf {
        self.state_dir
            .join("archive")
            .join(format!("{}.segments.json", self.run_key()))
    }

    /// Written once the archive is at its final name on the backup host (holds its sha256).
    /// From then on the staged archive is never removed nor re-exported: the remote copy and
    /// the local one must stay the same file.
    pub fn uploaded_marker(&self) -> PathBuf {
        self.state_dir
            .join("archive")
            .join(format!("{}.uploaded", self.run_key()))
    }

    /// The manifest of the staged archive.
    pub fn load_manifest(&self) -> anyhow::Result<crate::staged::ArchiveManifest> {
        let m = crate::staged::ArchiveManifest::load(&crate::staged::ArchiveManifest::path_for(
            &self.local_path(),
        ))?;
        anyhow::ensure!(
            m.file == self.file_name(),
            "the manifest beside {} describes {}, not this archive",
            self.local_path().display(),
            m.file
        );
        Ok(m)
    }

    /// True once the purge of this job has sent at least one batch: from then on the staged
    /// and uploaded archives are the only copy of those documents and are never undone.
    pub fn purge_began(&self) -> bool {
        self.purge_checkpoint().exists()
    }

    /// The sha256 of the archive already at its final remote name, if the upload got that far.
    pub fn uploaded_sha(&self) -> Option<String> {
        std::fs::read_to_string(self.uploaded_marker())
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    }

    /// The journal file of this job.
    pub fn journal_path(&self) -> PathBuf {
        Journal::path_for(&self.state_dir, RUNBOOK, &self.run_key())
    }

    /// Whether this job's journal says it finished successfully.
    pub fn succeeded(&self) -> anyhow::Result<bool> {
        let s = Journal::read_state(&self.journal_path())?;
        Ok(s.last_outcome == Some(Outcome::Succeeded) && !s.interrupted)
    }

    /// Where the ssh control socket lives (kept short: unix sockets are limited to 108 bytes).
    pub fn ssh_control_dir(&self) -> PathBuf {
        let preferred = self.state_dir.join("ssh");
        if preferred.as_os_str().len() < 60 {
            preferred
        } else {
            std::env::temp_dir()
        }
    }

    /// The backup host.
    pub fn backup_host(&self) -> anyhow::Result<BackupHost> {
        BackupHost::new(&self.config.sftp, &self.ssh_control_dir())
    }

    /// The backup host with its ssh control socket in `control_dir` (for `plan`, which must
    /// not create anything in the state directory).
    pub fn backup_host_at(&self, control_dir: &Path) -> anyhow::Result<BackupHost> {
        BackupHost::new(&self.config.sftp, control_dir)
    }

    /// The first pass of this month that has not succeeded, and the last one that did.
    pub fn current_pass(&self) -> anyhow::Result<(ArchiveJob, Option<ArchiveJob>)> {
        let mut pass = 0;
        let mut last_done = None;
        loop {
            let job = self.clone().with_pass(pass);
            if !job.succeeded()? {
                return Ok((job, last_done));
            }
            last_done = Some(job);
            pass += 1;
        }
    }
}

/// `archive-test.user_logs-`: every journal of this collection starts with it.
pub fn journal_prefix(config: &ArchiveConfig) -> String {
    format!("archive-{}.{}-", config.database, config.collection)
}

/// The directory of the archive journals.
pub fn journal_dir(state_dir: &Path) -> PathBuf {
    Journal::path_for(state_dir, RUNBOOK, "x")
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| state_dir.join("journal").join(RUNBOOK))
}

/// The months of this collection that have a journal in `state_dir` (any pass), ascending.
/// Journal names are `<prefix><YYYY-MM>[-lateN].jsonl`.
pub fn journaled_months(config: &ArchiveConfig, state_dir: &Path) -> Vec<Month> {
    let prefix = journal_prefix(config);
    let mut months: Vec<Month> = std::fs::read_dir(journal_dir(state_dir))
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .filter_map(|e| {
                    let name = e.file_name().to_str()?.to_string();
                    let rest = name.strip_prefix(&prefix)?.strip_suffix(".jsonl")?;
                    let (month, late) = rest.split_at_checked(7)?;
                    let pass_ok = late.is_empty()
                        || late.strip_prefix("-late").is_some_and(|n| {
                            !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())
                        });
                    pass_ok.then(|| month.parse().ok()).flatten()
                })
                .collect()
        })
        .unwrap_or_default();
    months.sort();
    months.dedup();
    months
}

/// A source opened on first use and shared by the steps of one run.
#[derive(Clone)]
pub struct SharedSource {
    config: ArchiveConfig,
    tz: String,
    inner: Arc<Mutex<Option<Box<dyn Source>>>>,
}

impl SharedSource {
    /// A source for `job` (not connected yet).
    pub fn new(job: &ArchiveJob) -> SharedSource {
        SharedSource {
            config: job.config.clone(),
            tz: job.tz.name().to_string(),
            inner: Arc::new(Mutex::new(None)),
        }
    }

    /// The source as an operator names it, without connecting (the URI holds no password).
    pub fn describe_hint(&self) -> String {
        format!(
            "{}{}.{}",
            self.config.source_uri, self.config.database, self.config.collection
        )
    }

    /// The source, opened if needed.
    pub fn get(&self) -> anyhow::Result<SourceGuard<'_>> {
        let mut g = self
            .inner
            .lock()
            .map_err(|_| anyhow::anyhow!("the source lock is poisoned"))?;
        if g.is_none() {
            *g = Some(source::open(&self.config, &self.tz).context("opening the source")?);
        }
        Ok(SourceGuard(g))
    }
}

/// Access to the opened source.
pub struct SourceGuard<'a>(MutexGuard<'a, Option<Box<dyn Source>>>);

impl std::ops::Deref for SourceGuard<'_> {
    type Target = dyn Source;
    fn deref(&self) -> &Self::Target {
        self.0.as_deref().expect("opened in get")
    }
}

impl std::ops::DerefMut for SourceGuard<'_> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        self.0.as_deref_mut().expect("opened in get")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_month_and_pass() {
        let config = Config::default();
        let job = ArchiveJob::new(
            &config,
            Some("2024-01".parse().unwrap()),
            Path::new("/var/lib/opskit"),
        )
        .unwrap();
        assert_eq!(job.file_name(), "test.user_logs.2024-01.bson.gz");
        assert_eq!(job.run_key(), "archive-test.user_logs-2024-01");
        let late = job.with_pass(2);
        assert_eq!(late.file_name(), "test.user_logs.2024-01.late2.bson.gz");
        assert_eq!(late.run_key(), "archive-test.user_logs-2024-01-late2");
        assert_eq!(
            late.purge_checkpoint(),
            Path::new("/var/lib/opskit/archive/archive-test.user_logs-2024-01-late2.purge.json")
        );
        assert_eq!(late.month_key(), "archive-test.user_logs-2024-01");
        assert_eq!(
            late.month_lock_path(),
            Path::new("/var/lib/opskit/archive/.test.user_logs.2024-01.lock")
        );
    }

    #[test]
    fn journaled_months_are_read_back_from_journal_names() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config::default();
        let jd = journal_dir(dir.path());
        std::fs::create_dir_all(&jd).unwrap();
        for name in [
            "archive-test.user_logs-2024-01.jsonl",
            "archive-test.user_logs-2024-01-late1.jsonl",
            "archive-test.user_logs-2023-11-late12.jsonl",
            "archive-test.user_logs-2023-10-latex.jsonl",
            "archive-test.user_logs_old-2023-09.jsonl",
            "archive-other.coll-2023-08.jsonl",
            "archive-test.user_logs-2023-07.jsonl.tmp",
        ] {
            std::fs::write(jd.join(name), "").unwrap();
        }
        let months: Vec<String> = journaled_months(&config.archive, dir.path())
            .iter()
            .map(|m| m.to_string())
            .collect();
        assert_eq!(months, ["2023-11", "2024-01"]);
    }

    #[test]
    fn default_month_is_the_previous_one_in_the_writers_zone() {
        let config = Config::default();
        let job = ArchiveJob::new(&config, None, Path::new("/x")).unwrap();
        let expected = Month::previous_in(config.general.timezone.tz(), chrono::Utc::now());
        assert_eq!(job.bounds.month, expected);
    }
}
