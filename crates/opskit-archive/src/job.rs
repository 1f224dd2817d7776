//! One archive job: which month, which pass, and every name derived from them.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::Context as _;
use opskit_core::config::value::Month;
use opskit_core::config::{ArchiveConfig, Config};
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

impl ArchiveJob {
    /// The job for `month` (default: the previous calendar month in the writers' zone).
    pub fn new(config: &Config, month: Option<Month>, state_dir: &Path) -> ArchiveJob {
        let tz = config.general.timezone.tz();
        let month = month.unwrap_or_else(|| Month::previous_in(tz, chrono::Utc::now()));
        ArchiveJob {
            config: config.archive.clone(),
            tz,
            state_dir: state_dir.to_path_buf(),
            bounds: MonthBounds::new(month, tz),
            pass: 0,
        }
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
        format!(
            "archive-{}.{}-{}{late}",
            self.config.database, self.config.collection, self.bounds.month
        )
    }

    /// The purge checkpoint (ids already sent), in the state directory.
    pub fn purge_checkpoint(&self) -> PathBuf {
        self.state_dir
            .join("archive")
            .join(format!("{}.purge.json", self.run_key()))
    }

    /// Written once the archive is at its final name on the backup host (holds its sha256).
    /// From then on the staged archive is never removed nor re-exported: the remote copy and
    /// the local one must stay the same file.
    pub fn uploaded_marker(&self) -> PathBuf {
        self.state_dir
            .join("archive")
            .join(format!("{}.uploaded", self.run_key()))
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
        );
        assert_eq!(job.file_name(), "test.user_logs.2024-01.bson.gz");
        assert_eq!(job.run_key(), "archive-test.user_logs-2024-01");
        let late = job.with_pass(2);
        assert_eq!(late.file_name(), "test.user_logs.2024-01.late2.bson.gz");
        assert_eq!(late.run_key(), "archive-test.user_logs-2024-01-late2");
        assert_eq!(
            late.purge_checkpoint(),
            Path::new("/var/lib/opskit/archive/archive-test.user_logs-2024-01-late2.purge.json")
        );
    }

    #[test]
    fn default_month_is_the_previous_one_in_the_writers_zone() {
        let config = Config::default();
        let job = ArchiveJob::new(&config, None, Path::new("/x"));
        let expected = Month::previous_in(config.general.timezone.tz(), chrono::Utc::now());
        assert_eq!(job.bounds.month, expected);
    }
}
