//! `opskit mysql topology|switchover`: the replication tree and the planned master switchover
//! of spec §4. The work lives in `opskit-mysql`; this file only wires arguments to it.

use std::sync::Arc;

use clap::{Args, Subcommand};
use opskit_core::metrics::MetricsWriter;
use opskit_core::secret::read_secret_file;
use opskit_core::{Classify as _, ErrorKind, ExitStatus, OpsError};
use opskit_mysql::haproxy::Runtime;
use opskit_mysql::session::Credentials;
use opskit_mysql::switchover::{self, Layout, Shared, preflight};
use opskit_mysql::topology::{self, Cluster, TopologyReport};

use crate::app::App;
use crate::cli::OutputFormat;

/// `opskit mysql` arguments.
#[derive(Debug, Args)]
pub struct MysqlArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: MysqlCommand,
}

/// The mysql sub-commands.
#[derive(Debug, Subcommand)]
pub enum MysqlCommand {
    /// Discover the replication tree from the servers: flavour and version, GTID state, lag,
    /// read_only, errant transactions; differences from the config are reported. Writes the
    /// per-replica lag to <metrics_dir>/opskit_mysql_topology.prom.
    Topology,
    /// Planned master switchover: promote a direct replica of the master (default
    /// mysql.promote), make the old master its replica, move the write DNS name (RFC 2136 +
    /// TSIG) and the read pool (HAProxy runtime API + haproxy.cfg).
    ///
    /// The whole plan is printed first. Refused (exit 3, nothing changed) unless every
    /// preflight check passes. A failure before the DNS move undoes everything; after it the
    /// run stops, alerts with each server's state, and the same command resumes it.
    Switchover(SwitchoverArgs),
}

/// `opskit mysql switchover`.
#[derive(Debug, Args)]
pub struct SwitchoverArgs {
    /// The replica to promote [default: mysql.promote]; it must replicate from the master.
    #[arg(long, value_name = "NAME")]
    pub new_master: Option<String>,
    /// Print the plan and the preflight checks, change nothing (exit 3 when a check fails).
    #[arg(long)]
    pub dry_run: bool,
    /// Keep the new master's replicas under it (default: mirror — they move under the old
    /// master, which takes the new master's place).
    #[arg(long)]
    pub flat: bool,
}

/// Runs `opskit mysql`.
pub fn run(args: MysqlArgs, app: &App) -> Result<ExitStatus, OpsError> {
    match args.command {
        MysqlCommand::Topology => topology_cmd(app),
        MysqlCommand::Switchover(a) => switchover_cmd(app, a),
    }
}

fn admin(app: &App) -> Result<Credentials, OpsError> {
    let m = &app.config.mysql;
    Ok(Credentials {
        user: m.admin_user.to_string(),
        password: read_secret_file(m.admin_password_file.path(), "mysql.admin_password_file")?,
    })
}

fn cluster(app: &App) -> Result<Cluster, OpsError> {
    let m = &app.config.mysql;
    Ok(Cluster::new(
        topology::nodes(m),
        admin(app)?,
        std::time::Duration::from_secs(m.timeout_secs.get()),
    ))
}

fn print_report(app: &App, report: &TopologyReport) {
    match app.output {
        OutputFormat::Text => print!("{}", report.render_tree()),
        OutputFormat::Json => println!(
            "{}",
            serde_json::to_string_pretty(report).expect("reports serialize")
        ),
    }
}

fn topology_cmd(app: &App) -> Result<ExitStatus, OpsError> {
    let mut c = cluster(app)?;
    let report = topology::discover(&mut c, &app.config.mysql);
    print_report(app, &report);
    let metrics = MetricsWriter::new(app.config.general.metrics_dir.path());
    let mut gauges = report.gauges();
    // When it last looked, so a timer that stopped is seen (OpskitTopologyNotRunning).
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    gauges.push(opskit_core::metrics::LabelledGauge {
        name: "opskit_last_run_timestamp_seconds".into(),
        help: "Unix time the last run ended.".into(),
        labels: vec![("runbook".into(), topology::TOPOLOGY_RUNBOOK.into())],
        value: now.floor(),
    });
    if let Err(e) = metrics.write_gauges("opskit_mysql_topology", &gauges) {
        tracing::warn!("the topology metrics could not be written: {e:#}");
    }
    Ok(ExitStatus::Success)
}

fn switchover_cmd(app: &App, a: SwitchoverArgs) -> Result<ExitStatus, OpsError> {
    let layout = if a.flat { Layout::Flat } else { Layout::Mirror };
    let state_dir = app.state_dir();
    let admin = admin(app)?;
    let unfinished = switchover::unfinished(&state_dir).map_err(OpsError::Failed)?;
    let resuming = unfinished.is_some();
    let input = match unfinished {
        Some(saved) => {
            let asked_other = a
                .new_master
                .as_ref()
                .is_some_and(|n| *n != saved.new_master)
                || (a.flat && saved.layout != Layout::Flat);
            if asked_other {
                return Err(OpsError::Refused(format!(
                    "the switchover {} ({} → {}) did not finish; finish it first: run `opskit \
                     mysql switchover` without options to resume it",
                    saved.run_key, saved.old_master, saved.new_master
                )));
            }
            tracing::warn!(
                run_key = %saved.run_key,
                "resuming the unfinished switchover {} → {}",
                saved.old_master,
                saved.new_master
            );
            saved
        }
        None => {
            let mut c = cluster(app)?;
            let report = topology::discover(&mut c, &app.config.mysql);
            let m = &app.config.mysql;
            let slots = Runtime::new(
                m.haproxy.admin_socket.path(),
                std::time::Duration::from_secs(m.timeout_secs.get()),
            )
            .servers_state(m.haproxy.read_backend.as_str())
            .ok();
            switchover::prepare(
                m,
                &report,
                c.nodes(),
                a.new_master.as_deref(),
                layout,
                slots.as_deref(),
                chrono::Utc::now(),
            )
            .map_err(|e| OpsError::from(e.classify_untagged(ErrorKind::Refused)))?
        }
    };
    let shared = Arc::new(Shared::new(
        input.clone(),
        &app.config.mysql,
        admin,
        &state_dir,
    )?);
    let mut plan = switchover::build_plan(Arc::clone(&shared));
    if a.dry_run && resuming {
        plan.fact(
            "resuming",
            "this switchover did not finish: a real run skips the steps its journal has done \
             and continues from the first one that is not",
        );
        app.print_plan(&plan);
        return Ok(ExitStatus::Success);
    }
    if a.dry_run {
        let checks = preflight::run(&shared);
        for c in &checks {
            plan.fact(
                format!("preflight {}", if c.ok { "PASS" } else { "FAIL" }),
                format!("{}: {}", c.name, c.detail),
            );
        }
        app.print_plan(&plan);
        let failed: Vec<&preflight::Check> = checks.iter().filter(|c| !c.ok).collect();
        if !failed.is_empty() {
            return Err(OpsError::Refused(format!(
                "a real run would be refused: {}",
                failed
                    .iter()
                    .map(|c| format!("{}: {}", c.name, c.detail))
                    .collect::<Vec<_>>()
                    .join("; ")
            )));
        }
        return Ok(ExitStatus::Success);
    }
    // The whole plan first: on stdout for people, on stderr when stdout carries the JSON summary.
    match app.output {
        OutputFormat::Text => println!("{}", plan.render_text()),
        OutputFormat::Json => eprintln!("{}", plan.render_text()),
    }
    switchover::save_input(&state_dir, &input).map_err(OpsError::Failed)?;
    let status = app.run_plan(plan, false)?;
    if status == ExitStatus::Success && app.output == OutputFormat::Text {
        println!("{}", shared.discover().render_tree());
    }
    Ok(status)
}
