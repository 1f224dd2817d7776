//! Every flag and sub-command, declared once. `--help`, completions and the man page all come
//! from these definitions.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::commands::{
    archive, config, drill, firewall, generate, history, lab, mysql, nginx, status,
};

/// Run, rehearse and check the operations of the ipo.com platform.
///
/// Exit codes: 0 done, 1 failed, 2 bad usage or config, 3 a precondition refused the run and
/// nothing was changed. Runs (archive run, nginx apply) call the alert webhook on 1 and 3.
#[derive(Debug, Parser)]
#[command(
    name = "opskit",
    version,
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    /// Options every sub-command takes.
    #[command(flatten)]
    pub global: GlobalArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The help heading of the options every command takes, listed apart from its own.
const GLOBAL: &str = "Global options";

/// Options shared by every sub-command.
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Config file [default: $OPSKIT_CONFIG, else /etc/opskit/opskit.toml, else built-in defaults].
    #[arg(long, global = true, value_name = "FILE", help_heading = GLOBAL)]
    pub config: Option<PathBuf>,
    /// State directory for journals and locks (overrides general.state_dir).
    #[arg(long, global = true, value_name = "DIR", help_heading = GLOBAL)]
    pub state_dir: Option<PathBuf>,
    /// Log line format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormatArg::Human, help_heading = GLOBAL)]
    pub log_format: LogFormatArg,
    /// Result format on stdout.
    #[arg(long, global = true, value_enum, default_value_t = OutputFormat::Text, help_heading = GLOBAL)]
    pub output: OutputFormat,
    /// More log detail (-v debug, -vv trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count, help_heading = GLOBAL)]
    pub verbose: u8,
    /// Only warnings and errors.
    #[arg(short, long, global = true, conflicts_with = "verbose", help_heading = GLOBAL)]
    pub quiet: bool,
}

impl GlobalArgs {
    /// -1 quiet, 0 normal, 1+ verbose.
    pub fn verbosity(&self) -> i8 {
        if self.quiet {
            -1
        } else {
            self.verbose.min(3) as i8
        }
    }
}

/// Log format choices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormatArg {
    /// Readable lines, progress bars on a TTY.
    Human,
    /// JSON lines for log shippers.
    Json,
}

impl From<LogFormatArg> for opskit_core::logging::LogFormat {
    fn from(v: LogFormatArg) -> Self {
        match v {
            LogFormatArg::Human => opskit_core::logging::LogFormat::Human,
            LogFormatArg::Json => opskit_core::logging::LogFormat::Json,
        }
    }
}

/// Result format choices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// For people.
    Text,
    /// For programs.
    Json,
}

/// The sub-commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Monthly MongoDB archive and purge (spec §1): plan, run, verify, restore, status.
    Archive(archive::ArchiveArgs),
    /// The ipo.com nginx edge (spec §2): render, check, apply with rollback, probe.
    Nginx(nginx::NginxArgs),
    /// The Docker iptables policy (spec §3): render, apply, persist, verify.
    Firewall(firewall::FirewallArgs),
    /// MySQL topology and planned master switchover (spec §4).
    Mysql(mysql::MysqlArgs),
    /// Real servers on this machine for rehearsal and tests: up, down, status.
    Lab(lab::LabArgs),
    /// Every runbook against the lab, one report.
    Drill(drill::DrillArgs),
    /// Show or check the configuration.
    Config(config::ConfigArgs),
    /// The last run of every runbook, the locks held, where journals, metrics and logs are.
    Status(status::StatusArgs),
    /// Past runs from the journals, newest first.
    History(history::HistoryArgs),
    /// Shell completions and the man page, generated from these definitions.
    Generate(generate::GenerateArgs),
}
