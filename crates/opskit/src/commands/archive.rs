//! `opskit archive`: not built yet (issue 3).

use clap::Args;
use opskit_core::{ExitStatus, OpsError};

use crate::app::App;

/// `opskit archive` arguments.
#[derive(Debug, Args)]
pub struct ArchiveArgs {
    /// Ignored until the archive runbook lands.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
    pub rest: Vec<String>,
}

/// Runs `opskit archive`.
pub fn run(_args: ArchiveArgs, _app: &App) -> Result<ExitStatus, OpsError> {
    Err(super::not_built("archive"))
}
