//! What every command gets: the loaded config and the global options, plus the standard way
//! to print or run a plan.

use std::path::PathBuf;

use opskit_core::alert::Alerter;
use opskit_core::config::{Config, ConfigSource};
use opskit_core::engine::{self, EngineOptions, RunOutcome, RunReport};
use opskit_core::logging::LogFormat;
use opskit_core::metrics::{MetricsWriter, RunMetrics};
use opskit_core::plan::Plan;
use opskit_core::progress::Style;
use opskit_core::{ExitStatus, OpsError};

use crate::cli::{GlobalArgs, OutputFormat};

/// `1 step`, `3 steps`: a count with its noun, never "1 steps".
pub fn plural(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// The loaded configuration and global options.
pub struct App {
    /// The effective config.
    pub config: Config,
    /// Where it came from.
    pub source: ConfigSource,
    /// `--output`.
    pub output: OutputFormat,
    /// `--log-format`.
    pub log_format: LogFormat,
    /// -1 quiet, 0 normal, 1+ verbose.
    pub verbosity: i8,
}

impl App {
    /// Loads the config following the lookup order and applies global overrides.
    pub fn load(global: &GlobalArgs) -> Result<App, OpsError> {
        let (mut config, source) = Config::discover(global.config.as_deref())?;
        if let Some(dir) = &global.state_dir {
            let dir = std::path::absolute(dir)
                .map_err(|e| OpsError::Usage(format!("--state-dir {}: {e}", dir.display())))?;
            let text = dir.to_str().ok_or_else(|| {
                OpsError::Usage(format!(
                    "--state-dir {}: the path is not valid UTF-8",
                    dir.display()
                ))
            })?;
            config.general.state_dir = text
                .parse()
                .map_err(|e| OpsError::Usage(format!("--state-dir: {e}")))?;
        }
        tracing::debug!(source = %source, state_dir = %config.general.state_dir, "configuration loaded");
        Ok(App {
            config,
            source,
            output: global.output,
            log_format: global.log_format.into(),
            verbosity: global.verbosity(),
        })
    }

    /// The state directory.
    pub fn state_dir(&self) -> PathBuf {
        self.config.general.state_dir.path().to_path_buf()
    }

    /// True when progress bars may be drawn.
    pub fn progress_enabled(&self) -> bool {
        self.log_format == LogFormat::Human && self.verbosity >= 0
    }

    /// Prints a plan in the chosen output format (the dry run).
    pub fn print_plan(&self, plan: &Plan) {
        match self.output {
            OutputFormat::Text => crate::out!("{}", plan.render_text()),
            OutputFormat::Json => crate::outln!(
                "{}",
                serde_json::to_string_pretty(&plan.describe()).expect("plans serialize")
            ),
        }
    }

    /// Runs a plan with the configured alert and metrics, prints the summary and returns the
    /// exit status. With `dry_run` it only prints the plan.
    pub fn run_plan(&self, plan: Plan, dry_run: bool) -> Result<ExitStatus, OpsError> {
        if dry_run {
            self.print_plan(&plan);
            return Ok(ExitStatus::Success);
        }
        let alerter = Alerter::from_config(&self.config.alert)
            .map_err(|e| OpsError::Usage(format!("{e:#}")))?;
        let metrics = MetricsWriter::new(self.config.general.metrics_dir.path());
        let opts = EngineOptions {
            state_dir: self.state_dir(),
            alerter: alerter.as_ref(),
            metrics: Some(&metrics),
            progress: self.progress_enabled(),
        };
        let runbook = plan.runbook.clone();
        // An engine that cannot work at all (state directory unwritable) has raised the alert
        // itself (step `run`) before returning the error.
        let report = engine::run(plan, &opts).map_err(OpsError::Failed)?;
        self.print_report(&runbook, &report);
        Ok(match report.outcome {
            RunOutcome::Succeeded | RunOutcome::AlreadyDone { .. } => ExitStatus::Success,
            RunOutcome::Refused { .. } => ExitStatus::Refused,
            RunOutcome::Failed { .. } => ExitStatus::Failed,
        })
    }

    /// Writes the metrics of a command that does not run through the engine (the nginx
    /// probe) to the configured metrics directory. A metrics failure never changes the
    /// command's outcome: it is logged.
    pub fn write_metrics(&self, m: RunMetrics) {
        let writer = MetricsWriter::new(self.config.general.metrics_dir.path());
        if let Err(e) = writer.write(&m) {
            tracing::error!("the metrics file could not be written: {e:#}");
        }
    }

    fn print_report(&self, runbook: &str, r: &RunReport) {
        if self.output == OutputFormat::Json {
            crate::outln!(
                "{}",
                serde_json::to_string_pretty(&r.summary(runbook)).expect("summaries serialize")
            );
            return;
        }
        match &r.outcome {
            RunOutcome::Succeeded => crate::outln!(
                "{runbook}: {} in {:.1}s ({} run, {} already done); journal {}",
                Style::for_stdout().pass("succeeded"),
                r.duration_secs,
                plural(r.executed.len(), "step"),
                r.skipped.len(),
                r.journal.display()
            ),
            RunOutcome::AlreadyDone { finished } => crate::outln!(
                "{runbook}: nothing to do: this run already succeeded{}; journal {}",
                finished
                    .map(|t| format!(" at {}", t.to_rfc3339()))
                    .unwrap_or_default(),
                r.journal.display()
            ),
            RunOutcome::Refused { step, reason } => eprintln!(
                "opskit: refused: {runbook} [{step}]: {reason}\nnothing was changed; journal {}",
                r.journal.display()
            ),
            RunOutcome::Failed {
                step,
                error,
                rolled_back,
            } => {
                eprintln!("opskit: failed: {runbook} [{step}]: {error}");
                if *rolled_back && r.undone.is_empty() {
                    eprintln!("nothing had been changed, so nothing was undone");
                } else if *rolled_back {
                    eprintln!("undone, newest first: {}", r.undone.join(", "));
                } else {
                    eprintln!("re-run the same command to resume from the journal");
                }
                eprintln!("journal {}", r.journal.display());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn counts_read_as_english() {
        assert_eq!(super::plural(1, "step"), "1 step");
        assert_eq!(super::plural(0, "step"), "0 steps");
        assert_eq!(super::plural(6, "step"), "6 steps");
    }
}
