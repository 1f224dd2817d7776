//! `opskit status`: one screen with the last run of every runbook (when, result, duration,
//! key figures), the locks held now, and where journals, metrics and logs are. Read-only: it
//! reads the journals, `/proc/locks` and the metrics files, and never takes a lock.

use std::collections::BTreeMap;
use std::path::PathBuf;

use chrono::{DateTime, Utc};
use clap::Args;
use opskit_core::journal::{self, LockState, RunRecord, RunResult};
use opskit_core::progress::{Style, human_bytes, human_count};
use opskit_core::{ExitStatus, OpsError};
use serde::{Deserialize, Serialize};

use crate::app::App;
use crate::cli::OutputFormat;

/// The runbooks that always get a line, run or not.
const RUNBOOKS: [&str; 2] = ["archive", "nginx"];

/// Where each command's log lines go (opskit itself writes logs to stderr only).
const LOGS: [&str; 3] = [
    "every command: stderr (--log-format json for log shippers)",
    "the monthly archive from cron: $LOG_DIR/user_logs_archive-<YYYY-MM>.log (LOG_DIR default /var/log/opskit)",
    "the monthly archive from systemd: journalctl -u opskit-archive.service",
];

/// `opskit status` arguments (none of its own).
#[derive(Debug, Args)]
pub struct StatusArgs {}

/// What `opskit status` shows (`--output json` prints exactly this).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusReport {
    /// Where the configuration came from.
    pub config: String,
    /// `general.state_dir`.
    pub state_dir: PathBuf,
    /// The journals: `<journal_dir>/<runbook>/<run key>.jsonl`.
    pub journal_dir: PathBuf,
    /// The run locks: `<locks_dir>/<runbook>.lock`.
    pub locks_dir: PathBuf,
    /// `general.metrics_dir`: `opskit_<runbook>.prom`.
    pub metrics_dir: PathBuf,
    /// Where log lines go.
    pub logs: Vec<String>,
    /// One entry per runbook.
    pub runbooks: Vec<RunbookStatus>,
}

/// One runbook on the status screen.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunbookStatus {
    /// The runbook.
    pub runbook: String,
    /// Its most recent run, if it ever ran here.
    pub last_run: Option<RunRecord>,
    /// Its lock, if it has one.
    pub lock: Option<LockState>,
    /// Its metrics file, when it exists.
    pub metrics_file: Option<PathBuf>,
    /// The counters of its metrics file (the last run's key figures).
    pub counters: BTreeMap<String, f64>,
}

/// Runs `opskit status`.
pub fn run(_args: StatusArgs, app: &App) -> Result<ExitStatus, OpsError> {
    let report = build(app).map_err(OpsError::Failed)?;
    match app.output {
        OutputFormat::Json => crate::outln!(
            "{}",
            serde_json::to_string_pretty(&report).expect("reports serialize")
        ),
        OutputFormat::Text => crate::out!("{}", render(&report, app)),
    }
    Ok(ExitStatus::Success)
}

fn build(app: &App) -> anyhow::Result<StatusReport> {
    let state = app.state_dir();
    let metrics_dir = app.config.general.metrics_dir.path().to_path_buf();
    let runs = journal::list_runs(&state, None)?;
    let locks = journal::lock_states(&state)?;
    let mut names: Vec<String> = RUNBOOKS.iter().map(|s| s.to_string()).collect();
    for n in runs
        .iter()
        .map(|r| &r.runbook)
        .chain(locks.iter().map(|l| &l.runbook))
    {
        if !names.contains(n) {
            names.push(n.clone());
        }
    }
    let runbooks = names
        .into_iter()
        .map(|runbook| {
            let file = metrics_dir.join(format!("opskit_{runbook}.prom"));
            let counters = std::fs::read_to_string(&file)
                .map(|t| counters(&t, &runbook))
                .unwrap_or_default();
            RunbookStatus {
                last_run: runs.iter().find(|r| r.runbook == runbook).cloned(),
                lock: locks.iter().find(|l| l.runbook == runbook).cloned(),
                metrics_file: file.exists().then_some(file),
                counters,
                runbook,
            }
        })
        .collect();
    Ok(StatusReport {
        config: app.source.to_string(),
        journal_dir: state.join("journal"),
        locks_dir: state.join("locks"),
        state_dir: state,
        metrics_dir,
        logs: LOGS.iter().map(|s| s.to_string()).collect(),
        runbooks,
    })
}

/// The runbook's own counters in a metrics file (`opskit_<runbook>_<name>{…} value`).
fn counters(text: &str, runbook: &str) -> BTreeMap<String, f64> {
    let prefix = format!("opskit_{runbook}_");
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(&prefix)?;
            let name = rest.split(['{', ' ']).next()?;
            let value = l.rsplit(' ').next()?.parse().ok()?;
            Some((name.to_string(), value))
        })
        .collect()
}

/// A figure as people read it: sizes for `*bytes*`, whole numbers with separators.
pub fn figure(name: &str, v: f64) -> String {
    if v.fract() != 0.0 || v < 0.0 {
        return format!("{v:.1}");
    }
    if name.contains("bytes") {
        human_bytes(v as u64)
    } else {
        human_count(v as u64)
    }
}

/// `2026-12-02 19:10:04 CST (5 min ago)` in `general.timezone`.
pub fn when(t: DateTime<Utc>, app: &App) -> String {
    let local = t.with_timezone(&app.config.general.timezone.tz());
    let ago = (Utc::now() - t).num_seconds().max(0);
    let ago = match ago {
        0..=59 => format!("{ago} s ago"),
        60..=3599 => format!("{} min ago", ago / 60),
        3600..=86_399 => format!("{} h ago", ago / 3600),
        _ => format!("{} days ago", ago / 86_400),
    };
    format!("{} ({ago})", local.format("%Y-%m-%d %H:%M:%S %Z"))
}

/// The result word, coloured on a TTY.
pub fn result_word(r: RunResult, locked: bool) -> String {
    let style = Style::for_stdout();
    match r {
        RunResult::Succeeded => style.pass("succeeded"),
        RunResult::Failed => style.fail("FAILED (re-run to resume)"),
        RunResult::RolledBack => style.fail("FAILED, rolled back"),
        RunResult::Refused => style.fail("REFUSED (nothing changed)"),
        RunResult::Unfinished if locked => "running now".into(),
        RunResult::Unfinished => style.fail("INTERRUPTED (re-run to resume)"),
    }
}

fn render(r: &StatusReport, app: &App) -> String {
    let mut out = format!(
        "opskit status · config {} · state {}\n\n",
        r.config,
        r.state_dir.display()
    );
    for rb in &r.runbooks {
        let held = rb.lock.as_ref().is_some_and(|l| l.held);
        let Some(run) = &rb.last_run else {
            out.push_str(&format!("{:<9} never run here\n", rb.runbook));
            continue;
        };
        let at = run.finished_at.or(run.started_at).map(|t| when(t, app));
        let took = run
            .duration_secs
            .map(|d| format!(" in {d:.1} s"))
            .unwrap_or_default();
        out.push_str(&format!(
            "{:<9} {}{took} · {}\n",
            rb.runbook,
            result_word(run.result, held),
            at.unwrap_or_else(|| "time unknown".into())
        ));
        out.push_str(&format!("          run {}", run.run_key));
        if run.attempts > 1 {
            out.push_str(&format!(" ({} invocations)", run.attempts));
        }
        out.push('\n');
        if let (Some(step), Some(error)) = (&run.failed_step, &run.error)
            && run.result != RunResult::Succeeded
        {
            out.push_str(&format!("          at [{step}]: {}\n", first_line(error)));
        }
        let figures = key_figures(rb, run);
        if !figures.is_empty() {
            out.push_str(&format!("          {}\n", figures.join(" · ")));
        }
        out.push_str(&format!("          journal {}\n", run.journal.display()));
    }
    out.push('\n');
    let held: Vec<String> = r
        .runbooks
        .iter()
        .filter_map(|rb| rb.lock.as_ref().filter(|l| l.held))
        .map(|l| match l.pid {
            Some(pid) => format!("{} (pid {pid})", l.runbook),
            None => l.runbook.clone(),
        })
        .collect();
    out.push_str(&format!(
        "locks     {} ({})\n",
        if held.is_empty() {
            "none held".to_string()
        } else {
            format!("held: {}", held.join(", "))
        },
        r.locks_dir.display()
    ));
    out.push_str(&format!(
        "journals  {}/<runbook>/<run key>.jsonl (opskit history lists them)\n",
        r.journal_dir.display()
    ));
    out.push_str(&format!(
        "metrics   {}/opskit_<runbook>.prom\n",
        r.metrics_dir.display()
    ));
    for (i, l) in r.logs.iter().enumerate() {
        out.push_str(&format!(
            "{}{l}\n",
            if i == 0 { "logs      " } else { "          " }
        ));
    }
    out
}

/// The metrics file's counters (written at the end of the last run), else the numbers the
/// run's steps journaled.
fn key_figures(rb: &RunbookStatus, run: &RunRecord) -> Vec<String> {
    let source: Vec<(&String, &f64)> = if rb.counters.is_empty() {
        run.figures.iter().collect()
    } else {
        rb.counters.iter().collect()
    };
    source
        .into_iter()
        .map(|(k, v)| format!("{} {}", k.replace('_', " "), figure(k, *v)))
        .collect()
}

/// The first line of an error, cut to fit a screen line.
pub fn first_line(s: &str) -> String {
    let line = s.lines().next().unwrap_or("");
    match line.char_indices().nth(160) {
        Some((i, _)) => format!("{}…", &line[..i]),
        None => line.to_string(),
    }
}
