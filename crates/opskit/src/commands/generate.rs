//! `opskit generate completions <SHELL>` and `opskit generate man`: generated from the same
//! clap definitions as `--help`, so they never disagree with it.

use clap::{Args, CommandFactory, Subcommand};
use clap_complete::Shell;
use opskit_core::{ExitStatus, OpsError};

use crate::cli::Cli;

/// `opskit generate` arguments.
#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// What to generate.
    #[command(subcommand)]
    pub what: Generated,
}

/// Things that can be generated.
#[derive(Debug, Subcommand)]
pub enum Generated {
    /// Shell completion script on stdout.
    Completions {
        /// The shell.
        shell: Shell,
    },
    /// The roff man page on stdout (`opskit generate man > /usr/share/man/man1/opskit.1`).
    Man,
}

/// Runs `opskit generate`.
pub fn run(args: GenerateArgs) -> Result<ExitStatus, OpsError> {
    let mut cmd = Cli::command();
    let mut out = std::io::stdout();
    match args.what {
        Generated::Completions { shell } => {
            clap_complete::generate(shell, &mut cmd, "opskit", &mut out);
        }
        Generated::Man => clap_mangen::Man::new(cmd)
            .render(&mut out)
            .map_err(|e| OpsError::failed(format!("writing the man page: {e}")))?,
    }
    Ok(ExitStatus::Success)
}
