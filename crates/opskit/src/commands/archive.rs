//! `opskit archive`: the monthly archive and purge of spec §1 (plan, run, verify, restore,
//! status, month). The work lives in `opskit-archive`; this file only wires arguments to it
//! and prints what it returns.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use opskit_archive::job::{ArchiveJob, default_month};
use opskit_archive::run::{PlanView, RunRequest, Skipped};
use opskit_archive::status::{MAX_MONTHS, Months};
use opskit_core::config::ConfigSource;
use opskit_core::config::value::Month;
use opskit_core::{ExitStatus, OpsError};

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
    /// Show what a run would do (bounds, count, anomalies, size, free disk, backup host);
    /// changes nothing anywhere. Exits 3 when the run would be refused.
    Plan(MonthArgs),
    /// Export the month, upload it over SFTP, verify it, then delete exactly what was archived.
    ///
    /// Resumes a crashed run of the same month; a finished month is not run again (documents
    /// that arrived later are taken by a "late" pass into a separate file). Without --month,
    /// earlier archived months that received documents since get their late pass first, and
    /// months restored into their source are skipped. Only months that have ended in
    /// general.timezone (plus archive.month_grace_minutes) can run. Ctrl-C or SIGTERM stops at
    /// the next batch boundary; the same command resumes.
    Run(RunArgs),
    /// Check an archive against its manifest (size, sha256, every document decoded and counted).
    Verify(VerifyArgs),
    /// Put an archive's documents back into its database (documents already present are kept).
    #[command(after_help = restore_help())]
    Restore(RestoreArgs),
    /// Show the state of recent months: each pass's outcome, steps done, staged file.
    Status(StatusArgs),
    /// Print the month a run would archive, its run key and its journal (for scripts).
    Month(MonthArgs),
}

fn restore_help() -> String {
    format!(
        "The one way to restore, for MongoDB and MySQL alike:\n  {}\n{}",
        opskit_archive::restore::HOWTO,
        opskit_archive::restore::WHY
    )
}

/// Choosing the month.
#[derive(Debug, Args)]
pub struct MonthArgs {
    /// The month, YYYY-MM, from 1970-01 to the last month that has ended [default: the
    /// previous calendar month in general.timezone].
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
    /// Archive a month that was restored into its source again (needs --month).
    #[arg(long, requires = "month")]
    pub rearchive: bool,
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
    /// The database to restore into: mongodb://USER@HOST:PORT/ or mysql://USER@HOST:PORT/
    /// (password from archive.source_password_file; database and collection from the manifest).
    #[arg(long, value_name = "URI")]
    pub target: String,
}

/// `opskit archive status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// How many months back to show.
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u32).range(1..=MAX_MONTHS as i64), conflicts_with = "month")]
    pub months: u32,
    /// Only this month.
    #[arg(long, value_name = "YYYY-MM")]
    pub month: Option<Month>,
}

/// Runs `opskit archive`.
pub fn run(args: ArchiveArgs, app: &App) -> Result<ExitStatus, OpsError> {
    app.config.check_secrets(&app.source)?;
    match args.command {
        ArchiveCommand::Plan(m) => plan(app, m.month),
        ArchiveCommand::Run(r) if r.dry_run => plan(app, r.month.month),
        ArchiveCommand::Run(r) => run_months(app, r),
        ArchiveCommand::Verify(v) => verify(app, v),
        ArchiveCommand::Restore(r) => restore(app, r),
        ArchiveCommand::Status(s) => status(app, s),
        ArchiveCommand::Month(m) => month(app, m.month),
    }
}

fn print_skipped(app: &App, s: &Skipped) {
    if app.output == OutputFormat::Json {
        let mut v = serde_json::to_value(s).expect("serializes");
        v["runbook"] = "archive".into();
        println!("{v}");
    } else {
        println!("{}", s.message);
    }
}

fn plan(app: &App, month: Option<Month>) -> Result<ExitStatus, OpsError> {
    let req = RunRequest {
        month,
        rearchive: false,
    };
    match opskit_archive::run::plan(
        &app.config,
        &app.state_dir(),
        &req,
        opskit_archive::run::now(),
    )? {
        PlanView::AlreadyDone(s) => {
            print_skipped(app, &s);
            Ok(ExitStatus::Success)
        }
        PlanView::Plan(plan, observed) => {
            app.print_plan(&plan);
            let problems = observed.problems();
            if problems.is_empty() {
                return Ok(ExitStatus::Success);
            }
            for p in &problems {
                eprintln!("opskit: the run would be refused: {p}");
            }
            Ok(ExitStatus::Refused)
        }
    }
}

fn run_months(app: &App, r: RunArgs) -> Result<ExitStatus, OpsError> {
    let req = RunRequest {
        month: r.month.month,
        rearchive: r.rearchive,
    };
    opskit_archive::run::run(
        &app.config,
        &app.state_dir(),
        &req,
        opskit_archive::run::now(),
        &mut |plan| app.run_plan(plan, false),
        &mut |s| print_skipped(app, s),
    )
}

fn verify(app: &App, v: VerifyArgs) -> Result<ExitStatus, OpsError> {
    opskit_archive::preflight::check_utf8_path("--file", &v.file)?;
    if v.file.to_string_lossy().ends_with(".partial")
        || opskit_archive::segment::unfinished_log(&app.config, &app.state_dir(), &v.file).is_some()
    {
        return verify_unfinished(app, &v);
    }
    let (manifest, check) = opskit_archive::restore::verify_file(&v.file)
        .map_err(|e| OpsError::Failed(e.context("verification failed")))?;
    let mut remote = None;
    if v.remote {
        let job = ArchiveJob::new(&app.config, Some(manifest.bounds.month), &app.state_dir())?;
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

/// `verify --file` of an archive whose remote file has no final name yet (a segmented run
/// that stopped): the verified segments.
fn verify_unfinished(app: &App, v: &VerifyArgs) -> Result<ExitStatus, OpsError> {
    let check = opskit_archive::segment::verify_unfinished(
        &app.config,
        &app.state_dir(),
        &v.file,
        v.remote,
    )
    .map_err(|e| OpsError::Failed(e.context("verification failed")))?;
    if app.output == OutputFormat::Json {
        println!(
            "{}",
            serde_json::json!({"file": v.file, "ok": true, "unfinished": true,
                "segments": check.segments, "count": check.docs, "bytes": check.bytes,
                "remote": v.remote.then_some(&check.remote)})
        );
    } else {
        println!(
            "{}: unfinished segmented archive: ok: {} verified segments, {} documents, {} bytes match the segment log{}; \
             the next `opskit archive run` for its month gives it its final name",
            v.file.display(),
            check.segments,
            check.docs,
            check.bytes,
            if v.remote {
                format!(", and so do they in {}", check.remote)
            } else {
                String::new()
            }
        );
    }
    Ok(ExitStatus::Success)
}

fn restore(app: &App, r: RestoreArgs) -> Result<ExitStatus, OpsError> {
    opskit_archive::preflight::check_utf8_path("--file", &r.file)?;
    let report =
        opskit_archive::restore::restore(&r.file, &r.target, &app.config, &app.state_dir())
            .map_err(|e| OpsError::from(e.context(format!("restoring {}", r.file.display()))))?;
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
        if let Some(mark) = &report.marked {
            println!(
                "the month is marked restored ({}): scheduled runs skip it",
                mark.display()
            );
        }
    }
    Ok(ExitStatus::Success)
}

fn status(app: &App, s: StatusArgs) -> Result<ExitStatus, OpsError> {
    let months = match s.month {
        Some(m) => Months::One(m),
        None => Months::Last(s.months),
    };
    let report = opskit_archive::status::status(
        &app.config,
        &app.state_dir(),
        app.source == ConfigSource::Defaults,
        months,
    )?;
    for w in &report.warnings {
        eprintln!("opskit: warning: {w}");
    }
    if app.output == OutputFormat::Json {
        println!("{}", serde_json::to_string(&report).expect("serializes"));
        return Ok(ExitStatus::Success);
    }
    println!(
        "{:<7}  {:>4}  {:<32}  {:<29}  STAGED",
        "MONTH", "PASS", "OUTCOME", "STEPS DONE"
    );
    for r in &report.rows {
        println!(
            "{:<7}  {:>4}  {:<32}  {:<29}  {}{}",
            r.month,
            r.pass,
            r.outcome,
            if r.steps_done.is_empty() {
                "-".to_string()
            } else {
                r.steps_done.join(",")
            },
            r.staged
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "-".into()),
            r.note
                .as_ref()
                .map(|n| format!("  ({n})"))
                .unwrap_or_default()
        );
    }
    Ok(ExitStatus::Success)
}

fn month(app: &App, month: Option<Month>) -> Result<ExitStatus, OpsError> {
    let m = month.unwrap_or_else(|| default_month(&app.config, opskit_archive::run::now()));
    let job = ArchiveJob::new(&app.config, Some(m), &app.state_dir())?;
    if app.output == OutputFormat::Json {
        println!(
            "{}",
            serde_json::json!({"month": m.to_string(), "run_key": job.run_key(),
                "journal": job.journal_path()})
        );
    } else {
        println!("{m} {} {}", job.run_key(), job.journal_path().display());
    }
    Ok(ExitStatus::Success)
}
