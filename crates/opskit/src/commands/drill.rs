//! `opskit drill`: every runbook against the lab, one report.

use std::path::PathBuf;

use clap::Args;
use opskit_core::{ExitStatus, OpsError};
use opskit_drill::{DrillOptions, SectionId};

use crate::cli::{GlobalArgs, OutputFormat};

/// `opskit drill` arguments.
#[derive(Debug, Args)]
pub struct DrillArgs {
    /// The lab directory (brought up when needed, left running) [default: $OPSKIT_LAB_DIR, else /tmp/opskit-lab].
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Only these sections (comma-separated); the lab brings up only what they need.
    #[arg(long, value_delimiter = ',', value_name = "SECTION", value_parser = section_parser())]
    pub only: Vec<SectionId>,
    /// Rows seeded into the archived month (its neighbours get a tenth each).
    #[arg(long, default_value_t = 100_000, value_name = "N")]
    pub rows: u64,
    /// Also write the report as Markdown to FILE (evidence to keep with a change).
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
}

/// Accepts the registered section names (and lists them in `--help`).
fn section_parser() -> impl clap::builder::TypedValueParser<Value = SectionId> {
    use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser as _};
    PossibleValuesParser::new(SectionId::ALL.iter().map(|c| PossibleValue::new(c.name())))
        .map(|s| s.parse::<SectionId>().expect("a registered section"))
}

/// Runs `opskit drill`: exit 0 when every check passed, 1 otherwise.
pub fn run(args: DrillArgs, global: &GlobalArgs) -> Result<ExitStatus, OpsError> {
    if global.config.is_some() {
        return Err(OpsError::Usage(
            "opskit drill uses the lab's own opskit.toml; drop --config".into(),
        ));
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
    if let Some(path) = &args.report {
        opskit_core::util::write_atomic(path, report.render_markdown().as_bytes(), 0o644)
            .map_err(|e| OpsError::Failed(e.context("writing the drill report")))?;
    }
    match global.output {
        OutputFormat::Text => crate::out!("{}", report.render_text()),
        OutputFormat::Json => crate::outln!(
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
