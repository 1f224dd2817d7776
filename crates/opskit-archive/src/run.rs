//! `opskit archive run` and `plan`: which months to visit, and what to do with each.
//!
//! With `--month`, that month only. Without (the scheduled run), first every earlier month of
//! this collection that has a journal here (late passes for documents that arrived since, and
//! unfinished runs to resume), then the previous calendar month of `general.timezone`. Only
//! months that have ended (plus `archive.month_grace_minutes`) may run. A month restored into
//! its source is skipped by scheduled runs and refused without `--rearchive`.
//!
//! Every failure of `run` raises the alert: the engine does it for what happens in a plan,
//! this module for what happens before one exists (a refusal, a bad month, a panic), so exit
//! 1, 2 (after the config loaded) and 3 all mean "the webhook was called".

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use chrono::{DateTime, Duration, Utc};
use opskit_core::alert::{AlertPayload, send_best_effort};
use opskit_core::config::Config;
use opskit_core::config::value::Month;
use opskit_core::error::{Classify as _, ErrorKind, refused};
use opskit_core::plan::Plan;
use opskit_core::{ExitStatus, OpsError};

use crate::bounds::check_month_ended;
use crate::job::{ArchiveJob, RUNBOOK, SharedSource, default_month, journaled_months};
use crate::lock::MonthLock;
use crate::plan::{Observed, build_plan, observe};
use crate::restore::RestoredMark;
use crate::testhook::panic_point;

/// The current time (the `now` every entry point takes, so tests can move the clock).
pub fn now() -> DateTime<Utc> {
    Utc::now()
}

/// What `archive run` or `plan` was asked.
#[derive(Debug, Clone, Default)]
pub struct RunRequest {
    /// `--month`; `None` is the scheduled run.
    pub month: Option<Month>,
    /// `--rearchive`: archive a restored month again.
    pub rearchive: bool,
}

/// A month that was not run, and why (printed; `outcome` is the JSON `outcome`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Skipped {
    /// The month.
    pub month: String,
    /// `already_done` or `restored`.
    pub outcome: &'static str,
    /// What to tell the operator.
    pub message: String,
    /// The journal of the pass that finished the month, if any.
    pub journal: Option<PathBuf>,
}

/// Runs a plan (the engine, with alerts and metrics) and says how it ended.
pub type Execute<'a> = dyn FnMut(Plan) -> Result<ExitStatus, OpsError> + 'a;

/// A failure of one month: already alerted (inside the engine) or not yet.
enum Fail {
    Alerted(OpsError),
    Before(anyhow::Error),
}

impl From<anyhow::Error> for Fail {
    fn from(e: anyhow::Error) -> Fail {
        Fail::Before(e)
    }
}

/// The month a request targets, checked: an explicit month that has not ended is a usage
/// error (exit 2); the default month inside its grace period is refused (exit 3).
pub fn target_month(
    config: &Config,
    req: &RunRequest,
    now: DateTime<Utc>,
) -> anyhow::Result<Month> {
    let tz = config.general.timezone.tz();
    let grace = Duration::minutes(config.archive.month_grace_minutes as i64);
    match req.month {
        Some(m) => {
            check_month_ended(m, tz, now, grace)?;
            Ok(m)
        }
        None => {
            let m = default_month(config, now);
            check_month_ended(m, tz, now, grace).map_err(|e| {
                refused(format!(
                    "{e:#}; the scheduled run archives the previous month only"
                ))
            })?;
            Ok(m)
        }
    }
}

/// `archive run`: see the module docs. `execute` runs a plan; `say` prints a skipped month.
pub fn run(
    config: &Config,
    state_dir: &Path,
    req: &RunRequest,
    now: DateTime<Utc>,
    execute: &mut Execute<'_>,
    say: &mut dyn FnMut(&Skipped),
) -> Result<ExitStatus, OpsError> {
    opskit_core::interrupt::install();
    let started = Utc::now();
    let asked = req.month.unwrap_or_else(|| default_month(config, now));
    if let Err(e) = crate::preflight::check_utf8_path("the state directory", state_dir) {
        alert(config, state_dir, asked, "preflight", &e, started);
        return Err(e.into());
    }
    let target = match target_month(config, req, now) {
        Ok(m) => m,
        Err(e) => {
            alert(config, state_dir, asked, "month", &e, started);
            return Err(e.into());
        }
    };
    let mut visits: Vec<(Month, Visit)> = Vec::new();
    if req.month.is_none() {
        for m in journaled_months(&config.archive, state_dir)
            .into_iter()
            .filter(|m| *m < target)
        {
            visits.push((m, Visit::Sweep));
        }
        visits.push((target, Visit::Scheduled));
    } else {
        visits.push((target, Visit::Explicit));
    }
    let mut worst = ExitStatus::Success;
    for (month, visit) in visits {
        if let Some(signal) = opskit_core::interrupt::requested() {
            let e = anyhow::anyhow!(
                "stopped by {signal} before {month}; run the same command again to go on"
            );
            alert(config, state_dir, month, "run", &e, started);
            return Err(e.into());
        }
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            visit_month(config, state_dir, month, visit, req.rearchive, execute, say)
        }));
        let status = match outcome {
            Ok(Ok(status)) => status,
            Ok(Err(Fail::Alerted(e))) => return Err(e),
            Ok(Err(Fail::Before(e))) => {
                alert(config, state_dir, month, "preflight", &e, started);
                return Err(e.into());
            }
            Err(payload) => {
                let e = anyhow::anyhow!(
                    "internal error (panic) while running {month}: {}",
                    opskit_core::engine::panic_message(payload.as_ref())
                );
                alert(config, state_dir, month, "panic", &e, started);
                return Err(OpsError::Failed(e));
            }
        };
        if status.code() > worst.code() {
            worst = status;
        }
    }
    Ok(worst)
}

/// Why a month is visited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Visit {
    /// `--month`.
    Explicit,
    /// The scheduled run's month.
    Scheduled,
    /// An earlier month with a journal: only late passes and resumes.
    Sweep,
}

fn visit_month(
    config: &Config,
    state_dir: &Path,
    month: Month,
    visit: Visit,
    rearchive: bool,
    execute: &mut Execute<'_>,
    say: &mut dyn FnMut(&Skipped),
) -> Result<ExitStatus, Fail> {
    let (job, done) = ArchiveJob::new(config, Some(month), state_dir)?.current_pass()?;
    if visit == Visit::Sweep && done.is_none() && !job.journal_path().exists() {
        return Ok(ExitStatus::Success);
    }
    if let Some(mark) = RestoredMark::read(&job) {
        let again = format!("opskit archive run --month {month} --rearchive");
        match visit {
            Visit::Explicit if rearchive => {
                tracing::warn!(
                    "{month} was restored on {} from {}; archiving it again as asked (--rearchive)",
                    mark.restored_at,
                    mark.file
                );
                RestoredMark::clear(&job)?;
            }
            Visit::Explicit => {
                return Err(refused(format!(
                    "{month} was restored on {} from {} into {}; it is not archived again by accident. \
                     To archive it again (its documents are then deleted from the source once more): {again}",
                    mark.restored_at, mark.file, mark.target
                ))
                .into());
            }
            Visit::Scheduled | Visit::Sweep => {
                say(&Skipped {
                    month: month.to_string(),
                    outcome: "restored",
                    message: format!(
                        "archive {month}: skipped: it was restored on {} from {}; scheduled runs leave it alone (archive it again with: {again})",
                        mark.restored_at, mark.file
                    ),
                    journal: None,
                });
                return Ok(ExitStatus::Success);
            }
        }
    } else if rearchive {
        tracing::warn!("{month} is not marked restored; --rearchive changes nothing");
    }
    let _lock = match MonthLock::acquire(&job, "run") {
        Ok(lock) => lock,
        // An earlier month being run by hand must not stop the scheduled month: its late
        // pass waits for the next scheduled run.
        Err(e) if visit == Visit::Sweep && ExitStatus::of(&e) == ExitStatus::Refused => {
            tracing::warn!("{month}: skipped this time: {e:#}");
            return Ok(ExitStatus::Success);
        }
        Err(e) => return Err(e.into()),
    };
    let source = SharedSource::new(&job);
    source
        .get()
        .map(drop)
        .classify_untagged(ErrorKind::Refused)?;
    if let Some(done) = &done
        && !job.journal_path().exists()
    {
        let count = {
            let mut s = source.get().refusal()?;
            s.ping()
                .context("the source does not answer")
                .classify_untagged(ErrorKind::Refused)?;
            s.range_stats(&job.bounds)
                .classify_untagged(ErrorKind::Refused)?
                .count
        };
        if count == 0 {
            if visit == Visit::Sweep {
                tracing::debug!("{month}: nothing arrived since it was archived");
            } else {
                say(&Skipped {
                    month: month.to_string(),
                    outcome: "already_done",
                    message: format!(
                        "archive {month}: nothing to do: the month was already archived and purged (journal {})",
                        done.journal_path().display()
                    ),
                    journal: Some(done.journal_path()),
                });
            }
            return Ok(ExitStatus::Success);
        }
        tracing::warn!(
            "{count} documents arrived in {month} after it was archived: running late pass {}",
            job.pass
        );
    }
    panic_point("plan", "build", 1);
    let plan = build_plan(&job, &source, None);
    let status = execute(plan).map_err(Fail::Alerted)?;
    let cut_short = crate::segment::SegmentLog::load(&job)
        .ok()
        .flatten()
        .is_some_and(|l| l.cut_short);
    if status.code() == 0 && cut_short {
        // Closed early with the segments an interrupted run had verified: the month's other
        // documents are archived now, by the next pass.
        drop(_lock);
        drop(source);
        tracing::info!(
            "{month}: archiving the rest of the month in late pass {}",
            job.pass + 1
        );
        return visit_month(config, state_dir, month, Visit::Sweep, false, execute, say);
    }
    Ok(status)
}

/// Raises the alert for a failure outside the engine.
fn alert(
    config: &Config,
    state_dir: &Path,
    month: Month,
    step: &str,
    e: &anyhow::Error,
    started: DateTime<Utc>,
) {
    let (run_key, journal) = match ArchiveJob::new(config, Some(month), state_dir) {
        Ok(job) => (job.run_key(), job.journal_path().display().to_string()),
        Err(_) => (format!("archive-{month}"), String::new()),
    };
    let payload = AlertPayload::now(
        RUNBOOK,
        &run_key,
        step,
        &format!("{e:#}"),
        started,
        &journal,
    );
    send_best_effort(&config.alert, &payload);
}

/// What `plan` shows for a month.
pub enum PlanView {
    /// The month is done and nothing arrived since.
    AlreadyDone(Skipped),
    /// The plan of the next pass, with what was observed.
    Plan(Box<Plan>, Box<Observed>),
}

/// `archive plan` (and `run --dry-run`): the next pass of the month with what was observed;
/// changes nothing anywhere. The caller exits 3 when [`Observed::problems`] is not empty.
pub fn plan(
    config: &Config,
    state_dir: &Path,
    req: &RunRequest,
    now: DateTime<Utc>,
) -> anyhow::Result<PlanView> {
    crate::preflight::check_utf8_path("the state directory", state_dir)?;
    let month = target_month(config, req, now)?;
    let (job, done) = ArchiveJob::new(config, Some(month), state_dir)?.current_pass()?;
    let source = SharedSource::new(&job);
    let observed = observe(&job, &source)
        .context("observing the source")
        .classify_untagged(ErrorKind::Refused)?;
    if let Some(done) = &done
        && observed.stats.count == 0
    {
        return Ok(PlanView::AlreadyDone(Skipped {
            month: month.to_string(),
            outcome: "already_done",
            message: format!(
                "{month}: already archived and purged (journal {}); nothing left in the month",
                done.journal_path().display()
            ),
            journal: Some(done.journal_path()),
        }));
    }
    let plan = build_plan(&job, &source, Some(&observed));
    Ok(PlanView::Plan(Box::new(plan), Box::new(observed)))
}
