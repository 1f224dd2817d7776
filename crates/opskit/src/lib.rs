//! The `opskit` command line: argument definitions ([`cli`]) and one module per command
//! ([`commands`]). Exit codes: 0 done, 1 failed (alert raised), 2 bad usage or config,
//! 3 a precondition refused the run (nothing changed).

#![warn(missing_docs)]

pub mod app;
pub mod cli;
pub mod commands;

use std::ffi::OsString;
use std::process::ExitCode;

use clap::Parser as _;
use opskit_core::{ExitStatus, OpsError};

/// Runs opskit with these arguments and returns the process exit code.
pub fn run(args: impl IntoIterator<Item = OsString>) -> ExitCode {
    let cli = match cli::Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    opskit_core::logging::init(cli.global.log_format.into(), cli.global.verbosity());
    let status = match commands::dispatch(cli) {
        Ok(status) => status,
        Err(e) => {
            report_error(&e);
            e.status()
        }
    };
    ExitCode::from(status.code())
}

fn report_error(e: &OpsError) {
    let kind = match e.status() {
        ExitStatus::Usage => "error",
        ExitStatus::Refused => "refused",
        _ => "failed",
    };
    eprintln!("opskit: {kind}: {e}");
}
