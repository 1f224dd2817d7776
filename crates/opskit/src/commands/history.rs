//! `opskit history [RUNBOOK]`: past runs from the journals, newest first (when, runbook, run
//! key, result, duration, invocations, and the failed step or the key figures).

use clap::Args;
use opskit_core::journal::{self, RunRecord, RunResult};
use opskit_core::{ExitStatus, OpsError};
use serde::{Deserialize, Serialize};

use crate::app::App;
use crate::cli::OutputFormat;
use crate::commands::status::{figure, first_line, result_word, when};

/// `opskit history` arguments.
#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// Only this runbook's runs (archive, nginx, …).
    #[arg(value_name = "RUNBOOK")]
    pub runbook: Option<String>,
    /// At most this many runs, newest first.
    #[arg(long, default_value_t = 20, value_name = "N")]
    pub limit: usize,
}

/// What `opskit history --output json` prints.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HistoryReport {
    /// The runbook asked for, if any.
    pub runbook: Option<String>,
    /// Runs recorded in all (before `--limit`).
    pub total: usize,
    /// The runs shown, newest first.
    pub runs: Vec<RunRecord>,
}

/// Runs `opskit history`.
pub fn run(args: HistoryArgs, app: &App) -> Result<ExitStatus, OpsError> {
    if let Some(r) = &args.runbook
        && (r.is_empty()
            || !r
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'))
    {
        return Err(OpsError::Usage(format!(
            "`{r}` is not a runbook name (archive, nginx, …)"
        )));
    }
    let mut runs =
        journal::list_runs(&app.state_dir(), args.runbook.as_deref()).map_err(OpsError::Failed)?;
    let total = runs.len();
    runs.truncate(args.limit);
    let report = HistoryReport {
        runbook: args.runbook,
        total,
        runs,
    };
    match app.output {
        OutputFormat::Json => crate::outln!(
            "{}",
            serde_json::to_string_pretty(&report).expect("reports serialize")
        ),
        OutputFormat::Text => crate::out!("{}", render(&report, app)),
    }
    Ok(ExitStatus::Success)
}

fn render(r: &HistoryReport, app: &App) -> String {
    let journals = app.state_dir().join("journal");
    if r.runs.is_empty() {
        return format!(
            "no {}runs recorded in {}\n",
            r.runbook
                .as_ref()
                .map(|b| format!("{b} "))
                .unwrap_or_default(),
            journals.display()
        );
    }
    let mut out = String::new();
    for run in &r.runs {
        let at = run
            .finished_at
            .or(run.started_at)
            .map(|t| when(t, app))
            .unwrap_or_else(|| "time unknown".into());
        let took = run
            .duration_secs
            .map(|d| format!(" in {d:.1} s"))
            .unwrap_or_default();
        let again = if run.attempts > 1 {
            format!(", {} invocations", run.attempts)
        } else {
            String::new()
        };
        out.push_str(&format!(
            "{at}  {:<8} {}{took}{again}\n    {}\n",
            run.runbook,
            result_word(run.result, false),
            run.run_key
        ));
        match (&run.failed_step, &run.error) {
            (Some(step), Some(error)) if run.result != RunResult::Succeeded => {
                out.push_str(&format!("    at [{step}]: {}\n", first_line(error)));
            }
            _ if !run.figures.is_empty() => {
                let figures: Vec<String> = run
                    .figures
                    .iter()
                    .map(|(k, v)| format!("{k} {}", figure(k, *v)))
                    .collect();
                out.push_str(&format!("    {}\n", figures.join(" · ")));
            }
            _ => {}
        }
    }
    out.push_str(&format!(
        "{} of {} run{} · journals in {}\n",
        r.runs.len(),
        r.total,
        if r.total == 1 { "" } else { "s" },
        journals.display()
    ));
    out
}
