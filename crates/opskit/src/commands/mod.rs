//! One module per sub-command; [`dispatch`] routes the parsed command line to it.

pub mod archive;
pub mod config;
pub mod drill;
pub mod firewall;
pub mod generate;
pub mod history;
pub mod lab;
pub mod mysql;
pub mod nginx;
pub mod status;

use opskit_core::{ExitStatus, OpsError};

use crate::app::App;
use crate::cli::{Cli, Command};

/// Runs the parsed command.
pub fn dispatch(cli: Cli) -> Result<ExitStatus, OpsError> {
    match cli.command {
        Command::Config(args) => config::run(args, &cli.global),
        Command::Lab(args) => lab::run(args, &cli.global),
        Command::Archive(args) => archive::run(args, &App::load(&cli.global)?),
        Command::Nginx(args) => nginx::run(args, &App::load(&cli.global)?),
        Command::Drill(args) => drill::run(args, &cli.global),
        Command::Generate(args) => generate::run(args),
        Command::Status(args) => status::run(args, &App::load(&cli.global)?),
        Command::History(args) => history::run(args, &App::load(&cli.global)?),
        Command::Firewall(args) => firewall::run(args, &App::load(&cli.global)?),
        Command::Mysql(args) => mysql::run(args, &App::load(&cli.global)?),
    }
}
