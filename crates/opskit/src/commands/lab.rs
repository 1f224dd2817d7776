//! `opskit lab up|down|status|seed`: real servers on loopback for rehearsal (see `opskit_lab`).

use std::net::TcpListener;
use std::path::PathBuf;

use clap::{Args, Subcommand};
use opskit_core::{ExitStatus, OpsError};
use opskit_lab::{Component, UpAction};

use crate::cli::{GlobalArgs, OutputFormat};

/// `opskit lab` arguments.
#[derive(Debug, Args)]
pub struct LabArgs {
    /// What to do.
    #[command(subcommand)]
    pub action: LabAction,
}

/// The lab directory option every lab action takes.
#[derive(Debug, Args)]
pub struct LabDir {
    /// The lab directory (configs, data, logs, lab.json, opskit.toml).
    #[arg(long, value_name = "DIR", env = opskit_lab::DIR_ENV, default_value = opskit_lab::DEFAULT_DIR)]
    pub dir: PathBuf,
}

/// `opskit lab` actions.
#[derive(Debug, Subcommand)]
pub enum LabAction {
    /// Start the lab's servers (only the missing or dead ones) and write <DIR>/opskit.toml.
    Up {
        /// The lab directory.
        #[command(flatten)]
        dir: LabDir,
        /// Only these components, comma-separated [default: all].
        #[arg(long, value_delimiter = ',', value_name = "NAMES", value_parser = component_parser())]
        only: Vec<Component>,
    },
    /// Stop exactly the recorded server processes; keep the data unless --purge.
    Down {
        /// The lab directory.
        #[command(flatten)]
        dir: LabDir,
        /// Also delete the lab directory.
        #[arg(long)]
        purge: bool,
    },
    /// Show each recorded server: address, port or socket, PID, alive, answering.
    Status {
        /// The lab directory.
        #[command(flatten)]
        dir: LabDir,
    },
    /// Fill test.user_logs in the lab's MariaDB and MongoDB-compatible server with a realistic
    /// month (its neighbours get a tenth each, plus four documents with bad dates).
    Seed {
        /// The lab directory.
        #[command(flatten)]
        dir: LabDir,
        /// The month to fill.
        #[arg(long, value_name = "YYYY-MM", default_value = "2024-01")]
        month: opskit_core::config::value::Month,
        /// Documents in the month.
        #[arg(long, value_name = "N", default_value_t = 100_000)]
        rows: u64,
        /// Only these sources, comma-separated [default: every one the lab runs].
        #[arg(long, value_delimiter = ',', value_name = "NAMES", value_parser = component_parser())]
        only: Vec<Component>,
    },
    /// Run the lab's alert webhook receiver in the foreground (started by `lab up`).
    #[command(hide = true)]
    WebhookReceiver {
        /// The lab directory.
        #[command(flatten)]
        dir: LabDir,
        /// Port on 127.0.0.1.
        #[arg(long)]
        port: u16,
    },
    /// Create the firewall component's network namespaces and Docker-like rules, hold them,
    /// and delete every one of them on SIGTERM (started by `lab up`).
    #[command(hide = true)]
    NetnsHolder {
        /// The lab directory.
        #[command(flatten)]
        dir: LabDir,
        /// The lab's namespace name prefix.
        #[arg(long)]
        prefix: String,
    },
}

/// Accepts the registered component names (and lists them in `--help`).
fn component_parser() -> impl clap::builder::TypedValueParser<Value = Component> {
    use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser as _};
    PossibleValuesParser::new(Component::ALL.iter().map(|c| PossibleValue::new(c.name())))
        .map(|s| s.parse::<Component>().expect("a registered component"))
}

/// Runs `opskit lab`.
pub fn run(args: LabArgs, global: &GlobalArgs) -> Result<ExitStatus, OpsError> {
    let json = global.output == OutputFormat::Json;
    match args.action {
        LabAction::Up { dir, only } => {
            let exe = std::env::current_exe().ok();
            let report = opskit_lab::up(&dir.dir, &only, exe).map_err(|e| {
                OpsError::from(e.context(format!(
                    "opskit lab up (servers that did start keep running: `opskit lab status --dir \
                     {0}`; stop them with `opskit lab down --dir {0}`)",
                    dir.dir.display()
                )))
            })?;
            if json {
                print_json(&report);
            } else {
                for c in &report.components {
                    let what = match c.action {
                        UpAction::Started => "started",
                        UpAction::Restarted => "restarted",
                        UpAction::AlreadyRunning => "already running",
                    };
                    crate::outln!("{}: {what}", c.component);
                }
                for s in &report.state.servers {
                    crate::outln!("  {}", describe(s));
                }
                crate::outln!(
                    "lab up in {}; rehearse with: opskit --config {} <command>",
                    report.dir.display(),
                    report.opskit_toml.display()
                );
            }
            Ok(ExitStatus::Success)
        }
        LabAction::Down { dir, purge } => {
            let report = opskit_lab::down(&dir.dir, purge)?;
            if json {
                print_json(&report);
            } else {
                for s in &report.stopped {
                    crate::outln!("{} (pid {}): {}", s.name, s.pid, s.outcome);
                }
                crate::outln!(
                    "lab down in {}{}",
                    report.dir.display(),
                    if report.purged {
                        "; directory removed"
                    } else {
                        "; data kept (--purge removes it)"
                    }
                );
            }
            Ok(ExitStatus::Success)
        }
        LabAction::Status { dir } => {
            let report = opskit_lab::status(&dir.dir)?;
            if json {
                print_json(&report);
            } else if report.servers.is_empty() {
                crate::outln!("no lab servers recorded in {}", report.dir.display());
            } else {
                for s in &report.servers {
                    crate::outln!(
                        "{}  {}",
                        describe(&s.record),
                        match (s.alive, s.answering) {
                            (true, true) => "alive, answering",
                            (true, false) => "alive, NOT answering",
                            _ => "DEAD",
                        }
                    );
                }
            }
            Ok(ExitStatus::Success)
        }
        LabAction::Seed {
            dir,
            month,
            rows,
            only,
        } => {
            let spec = opskit_lab::seed::SeedSpec::new(month, rows)
                .map_err(|e| OpsError::Usage(format!("--rows: {e}")))?;
            let state = opskit_lab::LabState::load(
                &std::path::absolute(&dir.dir)
                    .map_err(|e| OpsError::Usage(format!("--dir {}: {e}", dir.dir.display())))?,
            )?;
            let report = opskit_lab::seed::seed_lab(&state, &spec, &only)?;
            if json {
                print_json(&report);
            } else {
                for s in &report.sources {
                    crate::outln!("{}: test.user_logs in {}: {}", s.component, s.uri, s.counts);
                }
            }
            Ok(ExitStatus::Success)
        }
        LabAction::WebhookReceiver { dir, port } => {
            let listener = TcpListener::bind(("127.0.0.1", port)).map_err(|e| {
                OpsError::failed(format!("webhook receiver: binding 127.0.0.1:{port}: {e}"))
            })?;
            let out = std::path::absolute(&dir.dir)
                .map_err(|e| OpsError::Usage(format!("--dir {}: {e}", dir.dir.display())))?
                .join(opskit_lab::webhook::RECEIVED_FILE);
            opskit_lab::webhook::serve(listener, out)?;
            Ok(ExitStatus::Success)
        }
        LabAction::NetnsHolder { dir, prefix } => {
            if prefix.is_empty() || !prefix.chars().all(|c| c.is_ascii_alphanumeric()) {
                return Err(OpsError::Usage(format!(
                    "--prefix `{prefix}` must be letters and digits"
                )));
            }
            let dir = std::path::absolute(&dir.dir)
                .map_err(|e| OpsError::Usage(format!("--dir {}: {e}", dir.dir.display())))?;
            opskit_lab::components::firewall::hold(&dir, &prefix)?;
            Ok(ExitStatus::Success)
        }
    }
}

fn describe(s: &opskit_lab::ServerRecord) -> String {
    let mut at = Vec::new();
    if let (Some(a), Some(p)) = (&s.address, s.port) {
        at.push(format!("{a}:{p}"));
    }
    if let Some(sock) = &s.socket {
        at.push(sock.display().to_string());
    }
    format!(
        "{:<8} pid {:<7} {}  log {}",
        s.name,
        s.pid,
        at.join(" "),
        s.log.display()
    )
}

fn print_json(v: &impl serde::Serialize) {
    crate::outln!(
        "{}",
        serde_json::to_string_pretty(v).expect("reports serialize")
    );
}
