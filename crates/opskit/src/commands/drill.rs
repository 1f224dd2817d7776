//! `opskit drill`: every runbook against the lab, one report.

use std::path::PathBuf;

use clap::Args;
use opskit_core::{ExitStatus, OpsError};
use opskit_drill::{DrillOptions, RUNBOOKS};

use crate::cli::{GlobalArgs, OutputFormat};

/// `opskit drill` arguments.
#[derive(Debug, Args)]
pub struct DrillArgs {
    /// The lab directory (brought up when needed, left running) [default: $OPSKIT_LAB_DIR, else /tmp/opskit-lab].
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Only these runbooks (comma-separated): archive, nginx.
    #[arg(long, value_delimiter = ',', value_name = "RUNBOOK")]
    pub only: Vec<String>,
    /// Rows seeded into the archived month (its neighbours get a tenth each).
    #[arg(long, default_value_t = 100_000, value_name = "N")]
    pub rows: u64,
}

/// Runs `opskit drill`: exit 0 when every check passed, 1 otherwise.
pub fn run(args: DrillArgs, global: &GlobalArgs) -> Result<ExitStatus, OpsError> {
    if global.config.is_some() {
        return Err(OpsError::Usage(
            "opskit drill uses the lab's own opskit.toml; drop --config".into(),
        ));
    }
    if let Some(bad) = args.only.iter().find(|r| !RUNBOOKS.contains(&r.as_str())) {
        return Err(OpsError::Usage(format!(
            "--only: unknown runbook `{bad}`; the drill knows {}",
            RUNBOOKS.join(", ")
        )));
    }
    if args.rows < 10 {
        return Err(OpsError::Usage("--rows must be at least 10".into()));
    }
    let dir = args
        .dir
        .or_else(|| std::env::var_os(opskit_lab::DIR_ENV).map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(opskit_lab::DEFAULT_DIR));
    let opskit = std::env::current_exe()
        .map_err(|e| OpsError::failed(format!("locating the opskit binary: {e}")))?;
    let report = opskit_drill::run(&DrillOptions {
        lab_dir: dir,
        opskit,
        only: args.only,
        rows: args.rows,
    })
    .map_err(|e| OpsError::Failed(e.context("bringing up the lab")))?;
    match global.output {
        OutputFormat::Text => print!("{}", report.render_text()),
        OutputFormat::Json => println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("reports serialize")
        ),
    }
    Ok(if report.passed() {
        ExitStatus::Success
    } else {
        ExitStatus::Failed
    })
}
