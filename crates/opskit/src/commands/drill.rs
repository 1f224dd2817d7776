//! `opskit drill`: being built (the lab harness lands with the Foundation issue).

use clap::Args;
use opskit_core::{ExitStatus, OpsError};

use crate::cli::GlobalArgs;

/// `opskit drill` arguments.
#[derive(Debug, Args)]
pub struct DrillArgs {
    /// Ignored for now.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
    pub rest: Vec<String>,
}

/// Runs `opskit drill`.
pub fn run(_args: DrillArgs, _global: &GlobalArgs) -> Result<ExitStatus, OpsError> {
    Err(super::not_built("drill"))
}
