//! The month's run lock: `<staging_dir>/.<db>.<collection>.<YYYY-MM>.lock`.
//!
//! It lives beside the files it protects, not in the state directory, so two runs of the same
//! month exclude each other whatever `--state-dir` they were given; `restore` takes it too. It
//! is an `flock` held for the whole run (every pass, the purge included) and released by the
//! kernel when the process ends, however it ends. The file says who holds it; `status` reads
//! the holder from `/proc/locks` without taking the lock, so looking never disturbs a run.

use std::fs::File;
use std::io::{Read as _, Seek as _, Write as _};
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use opskit_core::error::{Classify as _, refused};
use serde::{Deserialize, Serialize};

use crate::job::ArchiveJob;
use crate::preflight;

/// Who holds a month's lock (the lock file's content).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    /// The process.
    pub pid: u32,
    /// `run` or `restore`.
    pub what: String,
    /// Its state directory.
    pub state_dir: PathBuf,
    /// Its host.
    pub host: String,
    /// When it took the lock (RFC 3339).
    pub since: String,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "opskit archive {} (pid {} on {}, state dir {}, since {})",
            self.what,
            self.pid,
            self.host,
            self.state_dir.display(),
            self.since
        )
    }
}

/// A held month lock; released when dropped (or when the process ends).
#[derive(Debug)]
pub struct MonthLock {
    _file: File,
    path: PathBuf,
}

impl MonthLock {
    /// Takes the lock of `job`'s month for `what` (`run`, `restore`) without waiting. The
    /// staging directory is prepared first (created 0700, refused when others can write it or
    /// it is read-only). Every failure is a refusal (exit 3): nothing was changed.
    pub fn acquire(job: &ArchiveJob, what: &str) -> anyhow::Result<MonthLock> {
        preflight::prepare_staging_dir(job.config.staging_dir.path())?;
        let path = job.month_lock_path();
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)
            .with_context(|| format!("opening the month lock {}", path.display()))
            .refusal()?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let who = read_holder(&mut file)
                    .map(|h| h.to_string())
                    .unwrap_or_else(|| "another opskit archive process".into());
                return Err(refused(format!(
                    "{who} holds {}: runs of {} never overlap, whatever their state directory; \
                     wait for it to end (opskit archive status shows it)",
                    path.display(),
                    job.bounds.month
                )));
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(e)
                    .with_context(|| format!("locking {}", path.display()))
                    .refusal();
            }
        }
        let me = Holder {
            pid: std::process::id(),
            what: what.to_string(),
            state_dir: job.state_dir.clone(),
            host: opskit_core::util::hostname(),
            since: chrono::Utc::now().to_rfc3339(),
        };
        let text = serde_json::to_string(&me).expect("holders serialize") + "\n";
        file.set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| file.write_all(text.as_bytes()))
            .and_then(|()| file.sync_data())
            .with_context(|| format!("writing {}", path.display()))
            .refusal()?;
        Ok(MonthLock { _file: file, path })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn read_holder(f: &mut File) -> Option<Holder> {
    let mut text = String::new();
    f.rewind().ok()?;
    f.read_to_string(&mut text).ok()?;
    serde_json::from_str(text.trim()).ok()
}

/// Who holds the lock at `path` right now, read without taking it: the file's `flock` entry in
/// `/proc/locks`, then the holder it recorded. `None` when nobody holds it.
pub fn holder(path: &Path) -> Option<Holder> {
    let meta = std::fs::symlink_metadata(path).ok()?;
    let (major, minor) = (libc::major(meta.dev()), libc::minor(meta.dev()));
    let id = format!("{major:02x}:{minor:02x}:{}", meta.ino());
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    let pid: u32 = locks
        .lines()
        // `->` marks a process waiting for the lock, not holding it.
        .filter(|l| !l.contains("->"))
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|w| w.len() > 5 && w[1] == "FLOCK" && w[5] == id)
        .and_then(|w| w[4].parse().ok())?;
    let mut f = File::open(path).ok()?;
    Some(read_holder(&mut f).unwrap_or(Holder {
        pid,
        what: "run".into(),
        state_dir: PathBuf::new(),
        host: String::new(),
        since: String::new(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use opskit_core::ExitStatus;
    use opskit_core::config::Config;

    fn job(staging: &Path, state: &Path) -> ArchiveJob {
        let mut config = Config::default();
        config.archive.staging_dir = staging.to_str().unwrap().parse().unwrap();
        ArchiveJob::new(&config, Some("2024-01".parse().unwrap()), state).unwrap()
    }

    #[test]
    fn one_month_one_run_whatever_the_state_directory() {
        let dir = tempfile::tempdir().unwrap();
        let staging = dir.path().join("staging");
        let a = job(&staging, &dir.path().join("state-a"));
        let b = job(&staging, &dir.path().join("state-b"));
        let held = MonthLock::acquire(&a, "run").unwrap();
        let mode = std::fs::metadata(&staging).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o700, "the staging directory is created private");
        let e = MonthLock::acquire(&b, "restore").unwrap_err();
        assert_eq!(ExitStatus::of(&e), ExitStatus::Refused);
        let text = e.to_string();
        assert!(
            text.contains(&format!("pid {}", std::process::id())),
            "{text}"
        );
        assert!(text.contains("state-a"), "{text}");
        let h = holder(held.path()).expect("held");
        assert_eq!(h.pid, std::process::id());
        assert_eq!(h.what, "run");
        drop(held);
        assert_eq!(holder(&a.month_lock_path()), None);
        let _b = MonthLock::acquire(&b, "restore").unwrap();
    }
}
