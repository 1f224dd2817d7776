//! `opskit nginx`: not built yet (issue 4).

use clap::Args;
use opskit_core::{ExitStatus, OpsError};

use crate::app::App;

/// `opskit nginx` arguments.
#[derive(Debug, Args)]
pub struct NginxArgs {
    /// Ignored until the nginx runbook lands.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
    pub rest: Vec<String>,
}

/// Runs `opskit nginx`.
pub fn run(_args: NginxArgs, _app: &App) -> Result<ExitStatus, OpsError> {
    Err(super::not_built("nginx"))
}
