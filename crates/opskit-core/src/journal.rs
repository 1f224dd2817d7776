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
