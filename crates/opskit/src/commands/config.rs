//! `opskit config show|check`.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use opskit_core::config::{Config, ConfigSource};
use opskit_core::{ExitStatus, OpsError};

use crate::app::App;
use crate::cli::{GlobalArgs, OutputFormat};

/// `opskit config` arguments.
#[derive(Debug, Args)]
pub struct ConfigArgs {
    /// What to do.
    #[command(subcommand)]
    pub action: ConfigAction,
}

/// `opskit config` actions.
#[derive(Debug, Subcommand)]
pub enum ConfigAction {
    /// Print the effective configuration as TOML (defaults filled in).
    Show,
    /// Validate a config file (default: the one opskit would use); exit 2 if invalid.
    Check {
        /// The file to check.
        file: Option<PathBuf>,
    },
}

/// Runs `opskit config`.
pub fn run(args: ConfigArgs, global: &GlobalArgs) -> Result<ExitStatus, OpsError> {
    match args.action {
        ConfigAction::Show => {
            let app = App::load(global)?;
            match global.output {
                OutputFormat::Text => {
                    crate::outln!("# effective opskit configuration (source: {})", app.source);
                    crate::out!("{}", app.config.to_toml());
                }
                OutputFormat::Json => crate::outln!(
                    "{}",
                    serde_json::to_string_pretty(&app.config).expect("config serializes")
                ),
            }
            Ok(ExitStatus::Success)
        }
        ConfigAction::Check { file } => {
            let source = match file {
                Some(f) => {
                    let config = Config::load_file(&f)?;
                    let source = ConfigSource::File(f);
                    config.check_secrets(&source)?;
                    source
                }
                None => {
                    let app = App::load(global)?;
                    app.config.check_secrets(&app.source)?;
                    app.source
                }
            };
            crate::outln!("{source}: OK");
            Ok(ExitStatus::Success)
        }
    }
}
