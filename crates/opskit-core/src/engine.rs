//! Executes a [`Plan`]: one step at a time, journaled, resumable, undone on early failure.
//!
//! For each step not already done (per the journal): precondition → action → verification,
//! then `step_done` is fsynced. When a step fails and no point-of-no-return step has
//! completed, the completed undoable steps are undone in reverse order. Then the alert is
//! raised and the metrics file written. A run whose journal says it succeeded is not run
//! again: it reports [`RunOutcome::AlreadyDone`].
//!
//! A panic inside a step is a failure of that step (undo, alert, journal) like any other; an
//! error of the engine itself (a read-only state directory, an unreadable journal) still
//! raises the alert before it is returned, so "exit 1" always means "the webhook was called".

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context as _;
use chrono::{DateTime, Utc};

use crate::alert::{AlertPayload, Alerter};
use crate::journal::{Event, Journal, Outcome};
use crate::metrics::{MetricsWriter, RunMetrics};
use crate::plan::{Plan, StepContext, StepError};
use crate::util;

/// How the engine runs.
pub struct EngineOptions<'a> {
    /// Where journals and locks live.
    pub state_dir: PathBuf,
    /// Delivers the failure alert, if configured.
    pub alerter: Option<&'a Alerter>,
    /// Writes the textfile metrics, if configured.
    pub metrics: Option<&'a MetricsWriter>,
    /// Show progress bars (TTY, human logs, not quiet).
    pub progress: bool,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub enum RunOutcome {
    /// Every step completed in this invocation (some possibly in earlier ones).
    Succeeded,
    /// The journal says this run already succeeded; nothing was done.
    AlreadyDone {
        /// When it finished.
        finished: Option<DateTime<Utc>>,
    },
    /// A precondition refused the run before anything changed.
    Refused {
        /// The step that refused.
        step: String,
        /// Why.
        reason: String,
    },
    /// A step failed.
    Failed {
        /// The failing step.
        step: String,
        /// The error.
        error: String,
        /// True when the completed steps were undone.
        rolled_back: bool,
    },
}

/// How a run ended, as `--output json` prints it (see [`RunSummary`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutcomeKind {
    /// Every step completed.
    Succeeded,
    /// It had already succeeded; nothing was done.
    AlreadyDone,
    /// A precondition refused it; nothing changed.
    Refused,
    /// A step failed and the completed steps were undone.
    RolledBack,
    /// A step failed after the point of no return (or an undo failed).
    Failed,
}

/// What `opskit <runbook> … --output json` prints after a run: the one report type the CLI
/// writes and the drill (or any script) reads back.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct RunSummary {
    /// The runbook.
    pub runbook: String,
    /// How it ended.
    pub outcome: OutcomeKind,
    /// The refusal or failure, if any.
    #[serde(default)]
    pub error: Option<String>,
    /// The step that refused or failed, if any.
    #[serde(default)]
    pub failed_step: Option<String>,
    /// The journal file.
    #[serde(default)]
    pub journal: PathBuf,
    /// Wall time of this invocation in seconds.
    #[serde(default)]
    pub duration_secs: f64,
    /// Steps completed by this invocation.
    #[serde(default)]
    pub executed: Vec<String>,
    /// Steps an earlier invocation had completed.
    #[serde(default)]
    pub skipped: Vec<String>,
    /// Steps undone after the failure.
    #[serde(default)]
    pub undone: Vec<String>,
    /// The run's counters (also in the metrics file).
    #[serde(default)]
    pub counters: BTreeMap<String, f64>,
}

impl RunReport {
    /// The summary of this run of `runbook`.
    pub fn summary(&self, runbook: &str) -> RunSummary {
        let (outcome, error, failed_step) = match &self.outcome {
            RunOutcome::Succeeded => (OutcomeKind::Succeeded, None, None),
            RunOutcome::AlreadyDone { .. } => (OutcomeKind::AlreadyDone, None, None),
            RunOutcome::Refused { step, reason } => (
                OutcomeKind::Refused,
                Some(reason.clone()),
                Some(step.clone()),
            ),
            RunOutcome::Failed {
                step,
                error,
                rolled_back,
            } => (
                if *rolled_back {
                    OutcomeKind::RolledBack
                } else {
                    OutcomeKind::Failed
                },
                Some(error.clone()),
                Some(step.clone()),
            ),
        };
        RunSummary {
            runbook: runbook.to_string(),
            outcome,
            error,
            failed_step,
            journal: self.journal.clone(),
            duration_secs: self.duration_secs,
            executed: self.executed.clone(),
            skipped: self.skipped.clone(),
            undone: self.undone.clone(),
            counters: self.counters.clone(),
        }
    }
}

/// The result of [`run`].
#[derive(Debug, Clone)]
pub struct RunReport {
    /// How it ended.
    pub outcome: RunOutcome,
    /// The journal file.
    pub journal: PathBuf,
    /// Wall time of this invocation in seconds.
    pub duration_secs: f64,
    /// Counters the steps reported.
    pub counters: BTreeMap<String, f64>,
    /// Step ids completed by this invocation.
    pub executed: Vec<String>,
    /// Step ids skipped because an earlier invocation completed them.
    pub skipped: Vec<String>,
    /// Step ids undone after the failure.
    pub undone: Vec<String>,
}

/// An exclusive per-runbook lock; released when dropped.
pub struct RunLock {
    _file: File,
}

impl RunLock {
    /// Takes `<state_dir>/locks/<runbook>.lock` (0600 in a 0700 directory) without waiting;
    /// `Err` names the holder.
    pub fn acquire(state_dir: &Path, runbook: &str) -> anyhow::Result<Result<RunLock, String>> {
        use std::os::unix::fs::OpenOptionsExt as _;
        let dir = state_dir.join("locks");
        util::create_private_dir_all(&dir)
            .with_context(|| format!("creating lock directory {}", dir.display()))?;
        let path = dir.join(format!("{runbook}.lock"));
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .with_context(|| format!("opening lock {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {
                file.set_len(0)?;
                writeln!(file, "{}", std::process::id())?;
                Ok(Ok(RunLock { _file: file }))
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                let holder = std::fs::read_to_string(&path).unwrap_or_default();
                Ok(Err(format!(
                    "another opskit {runbook} run holds {} (pid {}); runs never overlap",
                    path.display(),
                    holder.trim()
                )))
            }
            Err(std::fs::TryLockError::Error(e)) => {
                Err(e).with_context(|| format!("locking {}", path.display()))
            }
        }
    }
}

/// Runs a plan to completion, failure or refusal. `Err` means the engine itself could not
/// work (state directory unwritable, lock error); the alert has been raised for it too. Step
/// failures (panics included) are a [`RunOutcome`].
pub fn run(plan: Plan, opts: &EngineOptions) -> anyhow::Result<RunReport> {
    let started_at = Utc::now();
    let (runbook, run_key) = (plan.runbook.clone(), plan.run_key.clone());
    let journal = Journal::path_for(&opts.state_dir, &runbook, &run_key);
    run_journaled(plan, opts, started_at).inspect_err(|e| {
        tracing::error!("the run could not go on: {e:#}");
        if let Some(alerter) = opts.alerter {
            let payload = AlertPayload::now(
                &runbook,
                &run_key,
                "run",
                &format!("{e:#}"),
                started_at,
                &journal.display().to_string(),
            );
            if let Err(e) = alerter.send(&payload) {
                tracing::error!("the failure alert could not be delivered: {e:#}");
            }
        }
    })
}

fn run_journaled(
    plan: Plan,
    opts: &EngineOptions,
    started_at: DateTime<Utc>,
) -> anyhow::Result<RunReport> {
    let clock = Instant::now();
    let journal_path = Journal::path_for(&opts.state_dir, &plan.runbook, &plan.run_key);
    let mut report = RunReport {
        outcome: RunOutcome::Succeeded,
        journal: journal_path.clone(),
        duration_secs: 0.0,
        counters: BTreeMap::new(),
        executed: Vec::new(),
        skipped: Vec::new(),
        undone: Vec::new(),
    };

    let _lock = match RunLock::acquire(&opts.state_dir, &plan.runbook)? {
        Ok(lock) => lock,
        Err(reason) => {
            report.outcome = RunOutcome::Refused {
                step: "lock".into(),
                reason,
            };
            finish(&plan, opts, &mut report, started_at, clock);
            return Ok(report);
        }
    };

    let state = Journal::read_state(&journal_path)?;
    if state.last_outcome == Some(Outcome::Succeeded) && !state.interrupted {
        tracing::info!(
            run_key = %plan.run_key,
            journal = %journal_path.display(),
            "this run already succeeded; nothing to do"
        );
        report.outcome = RunOutcome::AlreadyDone {
            finished: state.last_finished,
        };
        report.duration_secs = clock.elapsed().as_secs_f64();
        return Ok(report);
    }
    if state.interrupted {
        tracing::warn!(
            journal = %journal_path.display(),
            done = state.done.len(),
            "resuming a run that was interrupted"
        );
    }

    let started_steps = started_step_ids(&journal_path)?;
    let mut journal = Journal::open(&journal_path, &util::new_run_id())?;
    journal.record(Event::RunStarted {
        steps: plan.steps.iter().map(|s| s.spec.id.clone()).collect(),
        pid: std::process::id(),
        host: util::hostname(),
    })?;
    if let Some(metrics) = opts.metrics {
        metrics.run_started(&plan.runbook, started_at);
    }
    let mut runner = Runner {
        plan,
        opts,
        journal,
        done: state.done,
        started_steps,
        report,
    };
    runner.report.outcome = runner.execute()?;
    let Runner {
        plan, mut report, ..
    } = runner;
    finish(&plan, opts, &mut report, started_at, clock);
    Ok(report)
}

/// One invocation of a plan: its journal, what is done, and the report being built.
struct Runner<'a> {
    plan: Plan,
    opts: &'a EngineOptions<'a>,
    journal: Journal,
    done: BTreeMap<String, BTreeMap<String, serde_json::Value>>,
    started_steps: Vec<String>,
    report: RunReport,
}

impl Runner<'_> {
    /// Runs the steps that are not done yet; on failure, undoes or keeps work as the point of
    /// no return says. Returns the outcome (already journaled).
    fn execute(&mut self) -> anyhow::Result<RunOutcome> {
        let mut changed = !self.done.is_empty();
        let mut completed: Vec<usize> = Vec::new();
        let total = self.plan.steps.len();
        for i in 0..total {
            let id = self.plan.steps[i].spec.id.clone();
            if self.done.contains_key(&id) {
                tracing::info!(step = %id, "step {}/{total} already done (journal); skipping", i + 1);
                self.report.skipped.push(id);
                completed.push(i);
                continue;
            }
            let description = self.plan.steps[i].spec.description.clone();
            tracing::info!(step = %id, "step {}/{total}: {description}", i + 1);
            self.journal
                .record(Event::StepStarted { step: id.clone() })?;
            match self.run_step(i, &mut changed) {
                Ok(recorded) => {
                    self.journal.record(Event::StepDone {
                        step: id.clone(),
                        data: recorded.clone(),
                    })?;
                    self.done.insert(id.clone(), recorded);
                    self.report.executed.push(id);
                    completed.push(i);
                }
                Err(e) => {
                    self.journal.record(Event::StepFailed {
                        step: id.clone(),
                        error: e.to_string(),
                    })?;
                    return self.fail(i, e, changed, &completed);
                }
            }
        }
        self.journal.record(Event::RunFinished {
            outcome: Outcome::Succeeded,
        })?;
        Ok(RunOutcome::Succeeded)
    }

    /// A context for step `resumed`-ness and the shared run data.
    fn context(&mut self, resumed: bool) -> StepContext<'_> {
        StepContext::new(
            &self.plan.run_key,
            &self.opts.state_dir,
            &self.done,
            &mut self.report.counters,
            self.opts.progress,
            resumed,
        )
    }

    /// precondition → action → verification of step `i`; returns what it recorded.
    fn run_step(
        &mut self,
        i: usize,
        changed: &mut bool,
    ) -> Result<BTreeMap<String, serde_json::Value>, StepError> {
        let resumed = self.started_steps.contains(&self.plan.steps[i].spec.id);
        let mut action = std::mem::replace(&mut self.plan.steps[i].action, Box::new(Placeholder));
        let mut cx = self.context(resumed);
        let result = catch_panic(|| {
            action
                .precondition(&mut cx)
                .and_then(|()| {
                    *changed = true;
                    action.execute(&mut cx)
                })
                .and_then(|()| action.verify(&mut cx))
        });
        let recorded = cx.take_recorded();
        self.plan.steps[i].action = action;
        result.map(|()| recorded)
    }

    /// Ends a failed run: a refusal before any change, else undo (before the point of no
    /// return) or keep (after it).
    fn fail(
        &mut self,
        i: usize,
        err: StepError,
        changed: bool,
        completed: &[usize],
    ) -> anyhow::Result<RunOutcome> {
        let step = self.plan.steps[i].spec.id.clone();
        if let StepError::Refused(reason) = &err
            && !changed
        {
            self.journal.record(Event::RunFinished {
                outcome: Outcome::Refused,
            })?;
            return Ok(RunOutcome::Refused {
                step,
                reason: reason.clone(),
            });
        }
        let error = err.to_string();
        tracing::error!(step = %step, "step failed: {error}");
        let passed_ponr = completed
            .iter()
            .any(|&j| self.plan.steps[j].spec.point_of_no_return);
        let rolled_back = if passed_ponr {
            tracing::warn!(
                "the point of no return was passed: nothing is undone; fix the cause and re-run to resume"
            );
            false
        } else {
            self.undo(completed)?
        };
        self.journal.record(Event::RunFinished {
            outcome: if rolled_back {
                Outcome::RolledBack
            } else {
                Outcome::Failed
            },
        })?;
        Ok(RunOutcome::Failed {
            step,
            error,
            rolled_back,
        })
    }

    /// Undoes the completed undoable steps in reverse; false when an undo failed.
    fn undo(&mut self, completed: &[usize]) -> anyhow::Result<bool> {
        for &j in completed.iter().rev() {
            if self.plan.steps[j].spec.undo.is_none() {
                continue;
            }
            let id = self.plan.steps[j].spec.id.clone();
            tracing::warn!(step = %id, "undoing");
            let mut action =
                std::mem::replace(&mut self.plan.steps[j].action, Box::new(Placeholder));
            let result = catch_panic(|| action.undo(&mut self.context(false)));
            self.plan.steps[j].action = action;
            match result {
                Ok(()) => {
                    self.journal
                        .record(Event::StepUndone { step: id.clone() })?;
                    self.report.undone.push(id);
                }
                Err(e) => {
                    tracing::error!(step = %id, "undo failed: {e}");
                    self.journal.record(Event::UndoFailed {
                        step: id,
                        error: e.to_string(),
                    })?;
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }
}

/// Runs a step phase; a panic in it becomes that step's failure (the message kept), so the
/// run is journaled, undone and alerted like any other failure.
fn catch_panic(f: impl FnOnce() -> crate::plan::StepResult) -> crate::plan::StepResult {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|payload| {
        Err(StepError::Failed(anyhow::anyhow!(
            "internal error (panic): {}",
            panic_message(payload.as_ref())
        )))
    })
}

/// The text of a panic payload (`panic!("...")` gives a `&str` or a `String`).
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

/// Stands in for a step's action while it runs (the action needs `&mut self` of the runner).
struct Placeholder;

impl crate::plan::StepAction for Placeholder {
    fn execute(&mut self, _cx: &mut StepContext) -> crate::plan::StepResult {
        Err(StepError::Failed(anyhow::anyhow!(
            "internal: step action taken"
        )))
    }
}

/// Step ids that some earlier invocation started (to tell a step it is being resumed).
fn started_step_ids(path: &Path) -> anyhow::Result<Vec<String>> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(Vec::new());
    };
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str::<crate::journal::Entry>(l).ok())
        .filter_map(|e| match e.event {
            Event::StepStarted { step } => Some(step),
            _ => None,
        })
        .collect())
}

/// Alert on failure or refusal, then write metrics.
fn finish(
    plan: &Plan,
    opts: &EngineOptions,
    report: &mut RunReport,
    started_at: DateTime<Utc>,
    clock: Instant,
) {
    report.duration_secs = clock.elapsed().as_secs_f64();
    let failed_at = Utc::now();
    let (step, error) = match &report.outcome {
        RunOutcome::Refused { step, reason } => (step.clone(), reason.clone()),
        RunOutcome::Failed {
            step,
            error,
            rolled_back,
        } => (
            step.clone(),
            if *rolled_back {
                format!("{error} (completed steps were rolled back)")
            } else {
                error.clone()
            },
        ),
        _ => (String::new(), String::new()),
    };
    if !step.is_empty()
        && let Some(alerter) = opts.alerter
    {
        let payload = AlertPayload {
            runbook: plan.runbook.clone(),
            run_key: plan.run_key.clone(),
            step,
            error,
            host: util::hostname(),
            started_at,
            failed_at,
            journal: report.journal.display().to_string(),
        };
        if let Err(e) = alerter.send(&payload) {
            tracing::error!("the failure alert could not be delivered: {e:#}");
        }
    }
    if let Some(metrics) = opts.metrics {
        let m = RunMetrics {
            runbook: plan.runbook.clone(),
            finished_at: failed_at,
            duration_secs: report.duration_secs,
            success: matches!(report.outcome, RunOutcome::Succeeded),
            counters: report.counters.clone(),
        };
        if let Err(e) = metrics.write(&m) {
            tracing::error!("the metrics file could not be written: {e:#}");
        }
    }
}
