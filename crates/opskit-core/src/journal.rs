//! The run journal: one JSON object per line, fsynced after every line, so a run killed at any
//! moment (even with `kill -9`) can be resumed from what it recorded.
//!
//! File: `<state_dir>/journal/<runbook>/<run_key>.jsonl`, mode 0600 in 0700 directories
//! whatever the umask. The journal never holds secrets: steps record counts, checksums, paths
//! and identifiers only.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// One line of the journal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// When it was written.
    pub ts: DateTime<Utc>,
    /// The run attempt that wrote it (a new id on each invocation).
    pub run_id: String,
    /// What happened.
    #[serde(flatten)]
    pub event: Event,
}

/// What a journal line records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// An invocation started (or resumed) the run.
    RunStarted {
        /// The step ids of the plan, in order.
        steps: Vec<String>,
        /// The process id.
        pid: u32,
        /// The host name.
        host: String,
    },
    /// A step began.
    StepStarted {
        /// The step id.
        step: String,
    },
    /// A step completed and verified; `data` is what it recorded for later steps.
    StepDone {
        /// The step id.
        step: String,
        /// Values the step recorded (counts, checksums, paths).
        #[serde(default)]
        data: BTreeMap<String, serde_json::Value>,
    },
    /// A step failed.
    StepFailed {
        /// The step id.
        step: String,
        /// The error.
        error: String,
    },
    /// A completed step was undone after a later failure.
    StepUndone {
        /// The step id.
        step: String,
    },
    /// Undoing a step failed: a human must look.
    UndoFailed {
        /// The step id.
        step: String,
        /// The error.
        error: String,
    },
    /// The invocation ended.
    RunFinished {
        /// How it ended.
        outcome: Outcome,
    },
}

/// How an invocation of a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Every step completed.
    Succeeded,
    /// A step failed after the point of no return, or an undo failed; resume to continue.
    Failed,
    /// A step failed before the point of no return and the completed steps were undone.
    RolledBack,
    /// A precondition refused the run before anything changed.
    Refused,
}

/// The state of a run as folded from its journal.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunState {
    /// Steps whose last event is `step_done`, with the data they recorded.
    pub done: BTreeMap<String, BTreeMap<String, serde_json::Value>>,
    /// The outcome of the last finished invocation, if any.
    pub last_outcome: Option<Outcome>,
    /// When the last invocation finished.
    pub last_finished: Option<DateTime<Utc>>,
    /// True when the last invocation started but never wrote `run_finished` (it crashed).
    pub interrupted: bool,
    /// Number of invocations recorded.
    pub attempts: usize,
}

/// How a run stands, as `opskit status` and `opskit history` show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunResult {
    /// Every step completed.
    Succeeded,
    /// A step failed after the point of no return (or an undo failed): resume it.
    Failed,
    /// A step failed and the completed steps were undone.
    RolledBack,
    /// A precondition refused it; nothing changed.
    Refused,
    /// The last invocation wrote no end: it is running now, or it was killed (resume it).
    Unfinished,
}

impl From<Outcome> for RunResult {
    fn from(o: Outcome) -> RunResult {
        match o {
            Outcome::Succeeded => RunResult::Succeeded,
            Outcome::Failed => RunResult::Failed,
            Outcome::RolledBack => RunResult::RolledBack,
            Outcome::Refused => RunResult::Refused,
        }
    }
}

/// One run (one journal file), summed up from its journal: when its last invocation started
/// and ended, how it ended, and the numbers its steps recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    /// The runbook (the journal's directory).
    pub runbook: String,
    /// The run key (the journal's file name).
    pub run_key: String,
    /// The journal file.
    pub journal: PathBuf,
    /// When the last invocation started.
    pub started_at: Option<DateTime<Utc>>,
    /// When the last invocation ended (`None`: unfinished).
    pub finished_at: Option<DateTime<Utc>>,
    /// How it stands.
    pub result: RunResult,
    /// Wall time of the last invocation, when it ended.
    pub duration_secs: Option<f64>,
    /// Invocations recorded (more than one: it was resumed or re-run).
    pub attempts: usize,
    /// The step that failed or refused in the last invocation.
    pub failed_step: Option<String>,
    /// Its error.
    pub error: Option<String>,
    /// The host the last invocation ran on.
    pub host: Option<String>,
    /// Numbers the completed steps recorded, as `step.key` (documents, bytes, checks).
    pub figures: BTreeMap<String, f64>,
}

/// Reads one journal into a [`RunRecord`]; `runbook` and `run_key` come from its path.
/// Unreadable lines are skipped (the record is for people; resuming uses
/// [`Journal::read_state`], which is strict).
pub fn read_run(path: &Path) -> anyhow::Result<RunRecord> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading journal {}", path.display()))?;
    let name = |p: Option<&std::ffi::OsStr>| p.map(|s| s.to_string_lossy().into_owned());
    let mut r = RunRecord {
        runbook: name(path.parent().and_then(|d| d.file_name())).unwrap_or_default(),
        run_key: name(path.file_stem()).unwrap_or_default(),
        journal: path.to_path_buf(),
        started_at: None,
        finished_at: None,
        result: RunResult::Unfinished,
        duration_secs: None,
        attempts: 0,
        failed_step: None,
        error: None,
        host: None,
        figures: BTreeMap::new(),
    };
    for entry in text
        .lines()
        .filter_map(|l| serde_json::from_str::<Entry>(l).ok())
    {
        match entry.event {
            Event::RunStarted { host, .. } => {
                r.attempts += 1;
                r.started_at = Some(entry.ts);
                r.finished_at = None;
                r.duration_secs = None;
                r.result = RunResult::Unfinished;
                r.failed_step = None;
                r.error = None;
                r.host = Some(host);
            }
            Event::StepDone { step, data } => {
                for (k, v) in data {
                    if let Some(n) = v.as_f64() {
                        r.figures.insert(format!("{step}.{k}"), n);
                    }
                }
            }
            Event::StepFailed { step, error } | Event::UndoFailed { step, error } => {
                r.failed_step = Some(step);
                r.error = Some(error);
            }
            Event::StepStarted { .. } | Event::StepUndone { .. } => {}
            Event::RunFinished { outcome } => {
                r.result = outcome.into();
                r.finished_at = Some(entry.ts);
                r.duration_secs = r
                    .started_at
                    .map(|s| (entry.ts - s).num_milliseconds() as f64 / 1000.0);
            }
        }
    }
    Ok(r)
}

/// Every run recorded under `<state_dir>/journal/` (only `runbook`'s when given), the most
/// recently active first. A missing journal directory is no runs.
pub fn list_runs(state_dir: &Path, runbook: Option<&str>) -> anyhow::Result<Vec<RunRecord>> {
    let root = state_dir.join("journal");
    let mut dirs = Vec::new();
    match std::fs::read_dir(&root) {
        Ok(entries) => {
            for e in entries {
                let e = e.with_context(|| format!("listing {}", root.display()))?;
                let name = e.file_name().to_string_lossy().into_owned();
                if e.path().is_dir() && runbook.is_none_or(|r| r == name) {
                    dirs.push(e.path());
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("listing {}", root.display())),
    }
    let mut runs = Vec::new();
    for dir in dirs {
        for e in std::fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
            let path = e?.path();
            if path.extension().is_some_and(|x| x == "jsonl") {
                runs.push(read_run(&path)?);
            }
        }
    }
    runs.sort_by_key(|r| std::cmp::Reverse(r.finished_at.or(r.started_at)));
    Ok(runs)
}

/// A runbook lock (`<state_dir>/locks/<runbook>.lock`) and whether a process holds it now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockState {
    /// The runbook.
    pub runbook: String,
    /// The lock file.
    pub path: PathBuf,
    /// True when a process holds it (a run is going on).
    pub held: bool,
    /// The pid the last holder wrote into it.
    pub pid: Option<u32>,
}

/// The runbook locks under `<state_dir>/locks/`. Whether one is held is read from
/// `/proc/locks`, never by trying to take it (that could refuse a run starting that moment).
pub fn lock_states(state_dir: &Path) -> anyhow::Result<Vec<LockState>> {
    use std::os::unix::fs::MetadataExt as _;
    let dir = state_dir.join("locks");
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
    };
    let proc_locks = std::fs::read_to_string("/proc/locks").unwrap_or_default();
    let mut out = Vec::new();
    for e in entries {
        let path = e?.path();
        let Some(runbook) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".lock"))
            .map(str::to_string)
        else {
            continue;
        };
        let meta = std::fs::metadata(&path)?;
        // /proc/locks: `1: FLOCK ADVISORY WRITE <pid> <major>:<minor>:<inode> 0 EOF`.
        let held = proc_locks.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.get(1) == Some(&"FLOCK")
                && f.get(5).and_then(|id| id.rsplit(':').next()) == Some(&meta.ino().to_string())
                && f.get(5).is_some_and(|id| same_device(id, meta.dev()))
        });
        let pid = std::fs::read_to_string(&path)
            .ok()
            .and_then(|t| t.trim().parse().ok());
        out.push(LockState {
            runbook,
            path,
            held,
            pid,
        });
    }
    out.sort_by(|a, b| a.runbook.cmp(&b.runbook));
    Ok(out)
}

/// True when `/proc/locks`' `major:minor:inode` (hex device numbers) names device `dev`.
fn same_device(id: &str, dev: u64) -> bool {
    let mut parts = id.split(':');
    let (Some(major), Some(minor)) = (parts.next(), parts.next()) else {
        return false;
    };
    let (Ok(major), Ok(minor)) = (
        u64::from_str_radix(major, 16),
        u64::from_str_radix(minor, 16),
    ) else {
        return false;
    };
    let (m, n) = (u64::from(libc::major(dev)), u64::from(libc::minor(dev)));
    major == m && minor == n
}

/// An open journal file.
pub struct Journal {
    path: PathBuf,
    file: File,
    run_id: String,
}

impl Journal {
    /// The journal path of a run.
    pub fn path_for(state_dir: &Path, runbook: &str, run_key: &str) -> PathBuf {
        state_dir
            .join("journal")
            .join(runbook)
            .join(format!("{run_key}.jsonl"))
    }

    /// Reads a journal (missing file: empty state). A torn last line (crash mid-write) is
    /// ignored; any other unreadable line is an error.
    pub fn read_state(path: &Path) -> anyhow::Result<RunState> {
        let mut state = RunState::default();
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(state),
            Err(e) => return Err(e).with_context(|| format!("reading journal {}", path.display())),
        };
        let lines: Vec<String> = BufReader::new(file)
            .lines()
            .collect::<Result<_, _>>()
            .with_context(|| format!("reading journal {}", path.display()))?;
        let last = lines.len();
        for (i, line) in lines.iter().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let entry: Entry = match serde_json::from_str(line) {
                Ok(e) => e,
                Err(_) if i + 1 == last => break,
                Err(e) => {
                    anyhow::bail!("journal {} line {}: {e}", path.display(), i + 1)
                }
            };
            match entry.event {
                Event::RunStarted { .. } => {
                    state.attempts += 1;
                    state.interrupted = true;
                }
                Event::StepStarted { .. } | Event::StepFailed { .. } | Event::UndoFailed { .. } => {
                }
                Event::StepDone { step, data } => {
                    state.done.insert(step, data);
                }
                Event::StepUndone { step } => {
                    state.done.remove(&step);
                }
                Event::RunFinished { outcome } => {
                    state.interrupted = false;
                    state.last_outcome = Some(outcome);
                    state.last_finished = Some(entry.ts);
                }
            }
        }
        Ok(state)
    }

    /// Opens (creating 0700 directories) a journal for appending; the file is 0600.
    pub fn open(path: &Path, run_id: &str) -> anyhow::Result<Journal> {
        use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
        if let Some(dir) = path.parent() {
            crate::util::create_private_dir_all(dir)
                .with_context(|| format!("creating journal directory {}", dir.display()))?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
            .with_context(|| format!("opening journal {}", path.display()))?;
        // A journal written by an older version (or under another umask) becomes 0600 too.
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("setting the mode of journal {}", path.display()))?;
        Ok(Journal {
            path: path.to_path_buf(),
            file,
            run_id: run_id.to_string(),
        })
    }

    /// Appends one event and fsyncs it.
    pub fn record(&mut self, event: Event) -> anyhow::Result<()> {
        let entry = Entry {
            ts: Utc::now(),
            run_id: self.run_id.clone(),
            event,
        };
        let mut line = serde_json::to_string(&entry).expect("entries serialize");
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .and_then(|_| self.file.sync_data())
            .with_context(|| format!("writing journal {}", self.path.display()))
    }

    /// The file path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folds_done_undone_and_torn_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("j.jsonl");
        let mut j = Journal::open(&p, "r1").unwrap();
        j.record(Event::RunStarted {
            steps: vec!["a".into(), "b".into()],
            pid: 1,
            host: "h".into(),
        })
        .unwrap();
        let mut data = BTreeMap::new();
        data.insert("count".into(), serde_json::json!(7));
        j.record(Event::StepDone {
            step: "a".into(),
            data,
        })
        .unwrap();
        j.record(Event::StepDone {
            step: "b".into(),
            data: BTreeMap::new(),
        })
        .unwrap();
        j.record(Event::StepUndone { step: "b".into() }).unwrap();
        drop(j);
        // A crash in the middle of a write leaves a torn last line.
        let mut f = OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(b"{\"ts\":\"2024").unwrap();
        let s = Journal::read_state(&p).unwrap();
        assert!(s.interrupted);
        assert_eq!(s.attempts, 1);
        assert_eq!(s.done.len(), 1);
        assert_eq!(s.done["a"]["count"], 7);
    }

    #[test]
    fn journals_are_private_whatever_the_umask() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("journal/archive/j.jsonl");
        // SAFETY: umask only changes this process's file creation mask.
        let old = unsafe { libc::umask(0) };
        let opened = Journal::open(&p, "r1");
        unsafe { libc::umask(old) };
        opened.unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&p), 0o600);
        assert_eq!(mode(p.parent().unwrap()), 0o700);
    }

    #[test]
    fn missing_journal_is_a_fresh_run() {
        let s = Journal::read_state(Path::new("/nonexistent/j.jsonl")).unwrap();
        assert_eq!(s, RunState::default());
    }
}
