//! `opskit mysql topology|switchover|doctor|probe-idle`: the replication tree and the planned
//! master switchover of spec §4, the "gone away" doctor and idle probe of spec §5. The work
//! lives in `opskit-mysql` and `opskit-doctor`; this file only wires arguments to them.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Subcommand};
use opskit_core::config::mysql::MysqlDsn;
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
    /// Why "2006 MySQL server has gone away" happens through HAProxy: reads haproxy.cfg
    /// (effective timeouts per route), the runtime API, the HAProxy logs (termination codes
    /// and session durations), each replica's timeouts and counters and the error logs, then
    /// ranks the likely causes with their evidence, confidence and fix.
    ///
    /// Defaults come from [mysql.haproxy] and [mysql.doctor]. A missing input narrows the
    /// report and is named under "Not looked at"; exit 0 whatever was found (2: bad flags).
    Doctor(DoctorArgs),
    /// Measures the path's idle limit: connections through HAProxy idle for a ladder of
    /// durations in parallel, then run SELECT 1; prints the longest idle that survives and
    /// which timer cut the connection (HAProxy client/server/tunnel timeout or wait_timeout).
    /// Read-only; takes at most about twice --max.
    ProbeIdle(ProbeIdleArgs),
}

/// `opskit mysql doctor`.
#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// haproxy.cfg [default: mysql.haproxy.config_path].
    #[arg(long, value_name = "FILE")]
    pub haproxy_config: Option<PathBuf>,
    /// HAProxy's admin socket [default: mysql.haproxy.admin_socket].
    #[arg(long, value_name = "SOCKET")]
    pub haproxy_socket: Option<PathBuf>,
    /// An HAProxy log (plain, rotated or .gz); repeat for several [default:
    /// mysql.doctor.haproxy_logs].
    #[arg(long, value_name = "FILE")]
    pub haproxy_log: Vec<PathBuf>,
    /// A replica as mysql://user@host:port (no password: mysql.doctor.password_file); repeat
    /// [default: mysql.doctor.replicas, else every replica of mysql.servers].
    #[arg(long, value_name = "DSN")]
    pub replica: Vec<MysqlDsn>,
    /// A replica's error log; repeat [default: mysql.doctor.mysql_error_logs].
    #[arg(long, value_name = "FILE")]
    pub mysql_error_log: Vec<PathBuf>,
    /// The application's longest idle between two queries on one handle, in seconds
    /// [default: mysql.doctor.app_idle_secs].
    #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
    pub app_idle: Option<u64>,
}

/// `opskit mysql probe-idle`.
#[derive(Debug, Args)]
pub struct ProbeIdleArgs {
    /// The application's path as mysql://user@host:port [default: mysql.doctor.probe_dsn].
    #[arg(long, value_name = "DSN")]
    pub dsn: Option<MysqlDsn>,
    /// The longest idle to try, in seconds [default: mysql.doctor.probe_max_secs].
    #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
    pub max: Option<u64>,
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
        MysqlCommand::Doctor(a) => doctor_cmd(app, a),
        MysqlCommand::ProbeIdle(a) => probe_idle_cmd(app, a),
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

/// The doctor's account: the DSN's user (else `admin_user`) with the password of
/// `mysql.doctor.password_file` (else `admin_password_file`).
fn doctor_credentials(app: &App) -> Result<Credentials, OpsError> {
    let m = &app.config.mysql;
    let (file, key) = match &m.doctor.password_file {
        Some(f) => (f, "mysql.doctor.password_file"),
        None => (&m.admin_password_file, "mysql.admin_password_file"),
    };
    Ok(Credentials {
        user: m.admin_user.to_string(),
        password: read_secret_file(file.path(), key)?,
    })
}

fn doctor_cmd(app: &App, a: DoctorArgs) -> Result<ExitStatus, OpsError> {
    let m = &app.config.mysql;
    let d = &m.doctor;
    let paths = |given: Vec<PathBuf>, conf: &[opskit_core::config::value::AbsPath]| {
        if given.is_empty() {
            conf.iter().map(|p| p.path().to_path_buf()).collect()
        } else {
            given
        }
    };
    let replicas = if !a.replica.is_empty() {
        a.replica
    } else if !d.replicas.is_empty() {
        d.replicas.clone()
    } else {
        m.servers
            .iter()
            .filter(|s| s.replicates_from.is_some())
            .map(|s| MysqlDsn {
                user: Some(m.admin_user.to_string()),
                host: s.host.to_string(),
                port: s.port,
            })
            .collect()
    };
    // An unreadable password file narrows the report (named in it), like any missing input.
    let credentials = match doctor_credentials(app) {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::warn!("the replicas are not asked: {e}");
            None
        }
    };
    let inputs = opskit_doctor::Inputs {
        haproxy_config: Some(
            a.haproxy_config
                .unwrap_or_else(|| m.haproxy.config_path.path().to_path_buf()),
        ),
        haproxy_socket: Some(
            a.haproxy_socket
                .unwrap_or_else(|| m.haproxy.admin_socket.path().to_path_buf()),
        ),
        haproxy_logs: paths(a.haproxy_log, &d.haproxy_logs),
        replicas,
        credentials,
        mysql_error_logs: paths(a.mysql_error_log, &d.mysql_error_logs),
        app_idle_secs: a.app_idle.or(d.app_idle_secs.map(|p| p.get())),
        timeout: Duration::from_secs(m.timeout_secs.get()),
    };
    let report = opskit_doctor::diagnose(&inputs);
    match app.output {
        OutputFormat::Text => print!("{}", report.render_text()),
        OutputFormat::Json => println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("reports serialize")
        ),
    }
    Ok(ExitStatus::Success)
}

fn probe_idle_cmd(app: &App, a: ProbeIdleArgs) -> Result<ExitStatus, OpsError> {
    let m = &app.config.mysql;
    let d = &m.doctor;
    let dsn = a
        .dsn
        .or_else(|| d.probe_dsn.clone())
        .unwrap_or_else(|| MysqlDsn {
            user: Some(m.admin_user.to_string()),
            host: m.read_dns_name.to_string(),
            port: 3306,
        });
    let routes = std::fs::read_to_string(m.haproxy.config_path.path())
        .map(|t| opskit_doctor::haproxy_cfg::HaproxyConfig::parse(&t).routes())
        .unwrap_or_default();
    let opts = opskit_doctor::probe::ProbeOptions {
        dsn,
        credentials: doctor_credentials(app)?,
        max: Duration::from_secs(a.max.unwrap_or(d.probe_max_secs.get())),
        timeout: Duration::from_secs(m.timeout_secs.get()),
        routes,
        haproxy_logs: d
            .haproxy_logs
            .iter()
            .map(|p| p.path().to_path_buf())
            .collect(),
        mysql_error_logs: d
            .mysql_error_logs
            .iter()
            .map(|p| p.path().to_path_buf())
            .collect(),
    };
    let report = opskit_doctor::probe::probe_idle(&opts).map_err(OpsError::Failed)?;
    match app.output {
        OutputFormat::Text => print!("{}", report.render_text()),
        OutputFormat::Json => println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("reports serialize")
        ),
    }
    Ok(ExitStatus::Success)
}
