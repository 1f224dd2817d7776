//! `opskit lab`: being built (the lab harness lands with the Foundation issue).

use clap::Args;
use opskit_core::{ExitStatus, OpsError};

use crate::cli::GlobalArgs;

/// `opskit lab` arguments.
#[derive(Debug, Args)]
pub struct LabArgs {
    /// Ignored for now.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
    pub rest: Vec<String>,
}

/// Runs `opskit lab`.
pub fn run(_args: LabArgs, _global: &GlobalArgs) -> Result<ExitStatus, OpsError> {
    Err(super::not_built("lab"))
}
