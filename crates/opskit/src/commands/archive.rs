//! `opskit archive`: the monthly archive and purge of spec §1 (plan, run, verify, restore,
//! status). The work lives in `opskit-archive`; this file only wires arguments to it.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use opskit_archive::job::{ArchiveJob, SharedSource};
use opskit_archive::runbook::{build_plan, observe};
use opskit_core::config::value::Month;
use opskit_core::journal::Journal;
use opskit_core::{Classify as _, ErrorKind, ExitStatus, OpsError};

use crate::app::App;
use crate::cli::OutputFormat;

/// `opskit archive` arguments.
#[derive(Debug, Args)]
pub struct ArchiveArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: ArchiveCommand,
}

/// The archive sub-commands.
#[derive(Debug, Subcommand)]
pub enum ArchiveCommand {
    /// Show what a run would do (bounds, count, anomalies, size, free disk, backup host); changes nothing.
    Plan(MonthArgs),
    /// Export the month, upload it over SFTP, verify it, then delete exactly what was archived.
    ///
    /// Resumes a crashed run of the same month; a finished month is not run again (documents
    /// that arrived later are taken by a "late" pass into a separate file). Without --month,
    /// earlier archived months that received documents since get their late pass first.
    Run(RunArgs),
    /// Check an archive against its manifest (size, sha256, every document decoded and counted).
    Verify(VerifyArgs),
    /// Put an archive's documents back into a database (rows already present are kept).
    Restore(RestoreArgs),
    /// Show the state of recent months: journal outcome and staged files.
    Status(StatusArgs),
}

/// Choosing the month.
#[derive(Debug, Args)]
pub struct MonthArgs {
    /// The month, YYYY-MM [default: the previous calendar month in general.timezone].
    #[arg(long, value_name = "YYYY-MM")]
    pub month: Option<Month>,
}

/// `opskit archive run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The month.
    #[command(flatten)]
    pub month: MonthArgs,
    /// Print the plan with what was observed and exit; never exports, uploads or deletes.
    #[arg(long)]
    pub dry_run: bool,
}

/// `opskit archive verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The `.bson.gz` archive (its manifest is `<file>.manifest.json`).
    #[arg(long, value_name = "FILE")]
    pub file: PathBuf,
    /// Also re-read the uploaded copy on the backup host and compare it.
    #[arg(long)]
    pub remote: bool,
}

/// `opskit archive restore`.
#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The `.bson.gz` archive (verified against its manifest first).
    #[arg(long, value_name = "FILE")]
    pub file: PathBuf,
    /// Where to restore: `mysql://user@host:port/` (password from archive.source_password_file).
    /// For MongoDB use `mongorestore --gzip` as printed in the manifest.
    #[arg(long, value_name = "URI")]
    pub target: String,
}

/// `opskit archive status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// How many months back to show.
    #[arg(long, default_value_t = 6)]
    pub months: u32,
}

/// Runs `opskit archive`.
pub fn run(args: ArchiveArgs, app: &App) -> Result<ExitStatus, OpsError> {
    match args.command {
        ArchiveCommand::Plan(m) => plan(app, m.month),
        ArchiveCommand::Run(r) if r.dry_run => plan(app, r.month.month),
        ArchiveCommand::Run(r) => run_month(app, r.month.month),
        ArchiveCommand::Verify(v) => verify(app, v),
        ArchiveCommand::Restore(r) => restore(app, r),
        ArchiveCommand::Status(s) => status(app, s),
    }
}

fn job_for(app: &App, month: Option<Month>) -> ArchiveJob {
    ArchiveJob::new(&app.config, month, &app.state_dir())
}

/// A source or SSH error before anything changed: exit 3 with the reason (a config error
/// inside keeps its exit 2).
fn refused(what: &str, e: anyhow::Error) -> OpsError {
    OpsError::from(
        e.context(what.to_string())
            .classify_untagged(ErrorKind::Refused),
    )
}

/// Opening the source: a bad URI or password file is exit 2; anything else refuses (exit 3).
fn open_source(job: &ArchiveJob) -> Result<SharedSource, OpsError> {
    let source = SharedSource::new(job);
    source
        .get()
        .map_err(|e| OpsError::from(e.classify_untagged(ErrorKind::Refused)))?;
    Ok(source)
}

fn plan(app: &App, month: Option<Month>) -> Result<ExitStatus, OpsError> {
    let (job, done) = job_for(app, month)
        .current_pass()
        .map_err(OpsError::Failed)?;
    let source = open_source(&job)?;
    let observed = observe(&job, &source).map_err(|e| refused("the source", e))?;
    if let Some(done) = &done
        && observed.stats.count == 0
    {
        println!(
            "{}: already archived and purged (journal {}); nothing left in the month",
            job.bounds.month,
            done.journal_path().display()
        );
        return Ok(ExitStatus::Success);
    }
    let plan = build_plan(&job, &source, Some(&observed));
    app.print_plan(&plan);
    Ok(ExitStatus::Success)
}

/// `run`: the month asked for; without `--month`, first every earlier month that was already
/// archived and has received documents since (late passes), then the previous month. This is
/// how "documents inserted after the export are taken by the next run" holds for the monthly
/// cron job.
fn run_month(app: &App, month: Option<Month>) -> Result<ExitStatus, OpsError> {
    if month.is_some() {
        return run_one(app, month, false);
    }
    let target = job_for(app, None).bounds.month;
    let mut worst = ExitStatus::Success;
    for earlier in archived_months(app).into_iter().filter(|m| *m < target) {
        let status = run_one(app, Some(earlier), true)?;
        if status.code() > worst.code() {
            worst = status;
        }
    }
    let status = run_one(app, None, false)?;
    Ok(if status.code() > worst.code() {
        status
    } else {
        worst
    })
}

/// Months with a journal of this collection in the state directory.
fn archived_months(app: &App) -> Vec<Month> {
    let c = &app.config.archive;
    let prefix = format!("archive-{}.{}-", c.database, c.collection);
    let dir = app.state_dir().join("journal").join("archive");
    let mut months: Vec<Month> = std::fs::read_dir(&dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    let rest = name.strip_prefix(&prefix)?;
                    rest.get(..7)?.parse().ok()
                })
                .collect()
        })
        .unwrap_or_default();
    months.sort();
    months.dedup();
    months
}

/// One month: its current pass, or nothing when it is done and nothing arrived since.
/// `sweep`: only late passes (a month never archived is left alone).
fn run_one(app: &App, month: Option<Month>, sweep: bool) -> Result<ExitStatus, OpsError> {
    let (job, done) = job_for(app, month)
        .current_pass()
        .map_err(OpsError::Failed)?;
    if sweep && done.is_none() && !job.journal_path().exists() {
        return Ok(ExitStatus::Success);
    }
    let source = open_source(&job)?;
    if let Some(done) = &done {
        // An earlier pass finished this month. Run a late pass only if documents arrived since.
        let journal_exists = job.journal_path().exists();
        if !journal_exists {
            let count = {
                let mut s = source.get().map_err(|e| refused("the source", e))?;
                s.ping()
                    .map_err(|e| refused("the source does not answer", e))?;
                s.range_stats(&job.bounds)
                    .map_err(|e| refused("the source", e))?
                    .count
            };
            if count == 0 && sweep {
                tracing::debug!(
                    "{}: nothing arrived since it was archived",
                    job.bounds.month
                );
                return Ok(ExitStatus::Success);
            }
            if count == 0 {
                let msg = format!(
                    "archive {}: nothing to do: the month was already archived and purged (journal {})",
                    job.bounds.month,
                    done.journal_path().display()
                );
                if app.output == OutputFormat::Json {
                    println!(
                        "{}",
                        serde_json::json!({"runbook": "archive", "outcome": "already_done",
                            "month": job.bounds.month.to_string(),
                            "journal": done.journal_path()})
                    );
                } else {
                    println!("{msg}");
                }
                return Ok(ExitStatus::Success);
            }
            tracing::warn!(
                "{count} documents arrived in {} after it was archived: running late pass {}",
                job.bounds.month,
                job.pass
            );
        }
    }
    let plan = build_plan(&job, &source, None);
    app.run_plan(plan, false)
}

fn verify(app: &App, v: VerifyArgs) -> Result<ExitStatus, OpsError> {
    let (manifest, check) = opskit_archive::restore::verify_file(&v.file)
        .map_err(|e| OpsError::Failed(e.context("verification failed")))?;
    let mut remote = None;
    if v.remote {
        let job = job_for(app, Some(manifest.bounds.month));
        let host = job.backup_host().map_err(OpsError::Failed)?;
        host.verify(&manifest)
            .map_err(|e| OpsError::Failed(e.context("remote verification failed")))?;
        remote = Some(host.describe());
    }
    if app.output == OutputFormat::Json {
        println!(
            "{}",
            serde_json::json!({"file": v.file, "ok": true, "count": check.count,
                "sha256": check.sha256, "bytes": check.bytes, "remote": remote})
        );
    } else {
        println!(
            "{}: ok: {} documents, {} bytes, sha256 {} match the manifest{}",
            v.file.display(),
            check.count,
            check.bytes,
            check.sha256,
            remote
                .map(|r| format!("; the copy on {r} is identical"))
                .unwrap_or_default()
        );
    }
    Ok(ExitStatus::Success)
}

fn restore(app: &App, r: RestoreArgs) -> Result<ExitStatus, OpsError> {
    let tz = app.config.general.timezone.tz();
    let report =
        opskit_archive::restore::restore(&r.file, &r.target, &app.config.archive, tz.name())
            .map_err(|e| OpsError::Failed(e.context(format!("restoring {}", r.file.display()))))?;
    if app.output == OutputFormat::Json {
        println!("{}", serde_json::to_string(&report).expect("serializes"));
    } else {
        println!(
            "{}: {} documents: {} inserted, {} already present",
            r.file.display(),
            report.documents,
            report.inserted,
            report.already_present
        );
    }
    Ok(ExitStatus::Success)
}

fn status(app: &App, s: StatusArgs) -> Result<ExitStatus, OpsError> {
    let base = job_for(app, None);
    let mut month = base.bounds.month;
    let mut rows = Vec::new();
    for _ in 0..s.months.max(1) {
        let job = job_for(app, Some(month));
        let mut pass = 0;
        loop {
            let j = job.clone().with_pass(pass);
            let path = j.journal_path();
            if !path.exists() && pass > 0 {
                break;
            }
            let state = Journal::read_state(&path).map_err(OpsError::Failed)?;
            let outcome = if !path.exists() {
                "not run".to_string()
            } else if state.interrupted {
                "interrupted (re-run to resume)".to_string()
            } else {
                state
                    .last_outcome
                    .map(|o| format!("{o:?}").to_lowercase())
                    .unwrap_or_else(|| "unknown".into())
            };
            rows.push(serde_json::json!({
                "month": month.to_string(),
                "pass": pass,
                "run_key": j.run_key(),
                "outcome": outcome,
                "steps_done": state.done.keys().collect::<Vec<_>>(),
                "staged": j.local_path().exists().then(|| j.local_path()),
            }));
            pass += 1;
        }
        month = month.prev();
    }
    if app.output == OutputFormat::Json {
        println!("{}", serde_json::Value::Array(rows));
    } else {
        for r in rows {
            println!(
                "{}  pass {}  {:<32}  done {}  {}",
                r["month"].as_str().unwrap_or(""),
                r["pass"],
                r["outcome"].as_str().unwrap_or(""),
                r["steps_done"],
                r["staged"].as_str().unwrap_or("")
            );
        }
    }
    Ok(ExitStatus::Success)
}
