//! `opskit firewall`: the Docker iptables policy of spec §3 (render, apply, persist, verify).
//! The work lives in `opskit-firewall`; this file only wires arguments to it.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};
use opskit_core::config::ConfigSource;
use opskit_core::config::FirewallConfig;
use opskit_core::journal::{Journal, Outcome};
use opskit_core::{ExitStatus, OpsError};
use opskit_firewall::apply::{self, Job, RUNBOOK};
use opskit_firewall::observe::Observation;
use opskit_firewall::persist::{self, Install};
use opskit_firewall::render::{self, Rendered};
use opskit_firewall::verify::{self, VerifyOptions};
use opskit_lab::lab::LabView as _;
use opskit_lab::{FirewallLab, LabState};

use crate::app::App;
use crate::cli::OutputFormat;

/// `opskit firewall` arguments.
#[derive(Debug, Args)]
pub struct FirewallArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: FirewallCommand,
}

/// The firewall sub-commands.
#[derive(Debug, Subcommand)]
pub enum FirewallCommand {
    /// Print the policy: the plain iptables commands of spec §3 (default), or the
    /// iptables-restore input that apply loads.
    Render(RenderArgs),
    /// Load the policy into DOCKER-USER in one atomic iptables-restore --noflush, after a
    /// --test and a trial load in a throw-away network namespace; undone if the check fails.
    Apply(PlanArgs),
    /// Install the rules file and the systemd units that load it before Docker at every boot
    /// and Docker restart, plus a verify timer.
    Persist(PlanArgs),
    /// Compare the live chains with the policy (exit 1 and the alert on drift); --probe also
    /// probes the reachability matrix in the lab.
    Verify(VerifyArgs),
}

/// The printed forms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RenderFormat {
    /// Plain iptables commands, each with the spec sentence it serves, then persistence.
    Commands,
    /// iptables-restore --noflush input (what apply loads and persist keeps).
    Restore,
}

/// `opskit firewall render`.
#[derive(Debug, Args)]
pub struct RenderArgs {
    /// What to print.
    #[arg(long, value_enum, default_value_t = RenderFormat::Commands)]
    pub format: RenderFormat,
}

/// `opskit firewall apply` and `persist`.
#[derive(Debug, Args)]
pub struct PlanArgs {
    /// Print the plan (with what was observed on the host) and exit; changes nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// `opskit firewall verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Also probe every path of the reachability matrix from inside the lab's namespaces.
    #[arg(long)]
    pub probe: bool,
    /// The lab whose firewall component --probe uses.
    #[arg(long, value_name = "DIR", env = opskit_lab::DIR_ENV, default_value = opskit_lab::DEFAULT_DIR)]
    pub lab: PathBuf,
    /// Connect time limit of one probe, in milliseconds (a denied path waits this long).
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    pub probe_timeout_ms: u64,
}

/// Runs `opskit firewall`.
pub fn run(args: FirewallArgs, app: &App) -> Result<ExitStatus, OpsError> {
    let cfg = app.config.firewall.clone();
    cfg.check()
        .map_err(|(key, reason)| OpsError::Usage(format!("config error: key `{key}`: {reason}")))?;
    match args.command {
        FirewallCommand::Render(a) => render_cmd(a, &cfg, app),
        FirewallCommand::Apply(a) => {
            let job = Job::new(&cfg);
            let observed = Observation::take(&cfg, &job.iptables);
            let plan = apply::plan(&job, Some(&observed), &app.state_dir(), chrono::Utc::now());
            app.run_plan(plan, a.dry_run)
        }
        FirewallCommand::Persist(a) => {
            let job = Job::new(&cfg);
            let plan = persist::plan(&job, &install(&cfg, app)?, chrono::Utc::now())
                .map_err(|e| OpsError::Usage(format!("{e:#}")))?;
            app.run_plan(plan, a.dry_run)
        }
        FirewallCommand::Verify(a) => verify_cmd(a, &cfg, app),
    }
}

/// What the units run: this binary, with the config file this run read.
fn install(cfg: &FirewallConfig, app: &App) -> Result<Install, OpsError> {
    let opskit = std::env::current_exe()
        .map_err(|e| OpsError::failed(format!("locating the opskit binary: {e}")))?;
    let config_file = match &app.source {
        ConfigSource::File(p) => Some(
            std::path::absolute(p).map_err(|e| OpsError::Usage(format!("{}: {e}", p.display())))?,
        ),
        ConfigSource::Defaults => None,
    };
    Ok(Install {
        cfg: cfg.clone(),
        opskit,
        config_file,
    })
}

fn render_cmd(a: RenderArgs, cfg: &FirewallConfig, app: &App) -> Result<ExitStatus, OpsError> {
    let job = Job::new(cfg);
    let (format, text) = match a.format {
        RenderFormat::Restore => ("restore", render::restore(&job.ruleset)),
        RenderFormat::Commands => (
            "commands",
            render::commands(cfg, &job.ruleset, &install(cfg, app)?)
                .map_err(|e| OpsError::Failed(e.context("rendering the commands")))?,
        ),
    };
    match app.output {
        OutputFormat::Text => print!("{text}"),
        OutputFormat::Json => println!(
            "{}",
            serde_json::to_string_pretty(&Rendered {
                format: format.into(),
                reading: cfg.reading,
                sha256: job.ruleset.sha256(),
                text,
            })
            .expect("reports serialize")
        ),
    }
    Ok(ExitStatus::Success)
}

fn verify_cmd(a: VerifyArgs, cfg: &FirewallConfig, app: &App) -> Result<ExitStatus, OpsError> {
    let testbed = if a.probe {
        let lab = LabState::load(&a.lab)
            .and_then(|s| FirewallLab::from_state(&s))
            .map_err(|e| {
                OpsError::Usage(format!(
                    "--probe needs a lab with the firewall component (opskit lab up --only \
                     firewall --dir {}): {e:#}",
                    a.lab.display()
                ))
            })?;
        if cfg.netns.get() != Some(lab.host_netns().as_str()) {
            return Err(OpsError::Usage(format!(
                "the lab's Docker host is network namespace {}, but firewall.netns is `{}`: \
                 probe the lab with its own config (--config {}/opskit.toml)",
                lab.host_netns(),
                cfg.netns,
                a.lab.display()
            )));
        }
        Some(lab.testbed())
    } else {
        None
    };
    let opts = VerifyOptions {
        testbed,
        probe_timeout: Duration::from_millis(a.probe_timeout_ms.clamp(50, 30_000)),
        print: app.output == OutputFormat::Text,
    };
    let plan = verify::plan(&Job::new(cfg), &opts, chrono::Utc::now());
    let journal = Journal::path_for(&app.state_dir(), RUNBOOK, &plan.run_key);
    let status = app.run_plan(plan, false)?;
    prune_verify_journals(&journal);
    Ok(status)
}

/// The verify timer runs every few minutes and verify changes nothing, so older verify
/// journals are pruned: passing ones go, the newest failing ones stay as evidence.
fn prune_verify_journals(current: &std::path::Path) {
    const KEEP_FAILED: usize = 50;
    let Some(dir) = current.parent() else { return };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut failed = Vec::new();
    let mut names: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.as_path() != current
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("firewall-verify-") && n.ends_with(".jsonl"))
        })
        .collect();
    names.sort();
    for p in names {
        match Journal::read_state(&p) {
            Ok(s) if s.last_outcome == Some(Outcome::Succeeded) => {
                let _ = std::fs::remove_file(&p);
            }
            _ => failed.push(p),
        }
    }
    let excess = failed.len().saturating_sub(KEEP_FAILED);
    for p in &failed[..excess] {
        let _ = std::fs::remove_file(p);
    }
}
