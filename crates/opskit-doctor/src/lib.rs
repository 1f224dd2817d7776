//! `opskit mysql doctor` and `opskit mysql probe-idle` (spec §5): why PHP gets
//! `SQLSTATE[HY000]: General error: 2006 MySQL server has gone away` through HAProxy.
//!
//! The doctor reads what is there — `haproxy.cfg` ([`haproxy_cfg`]), HAProxy's runtime API
//! and tcplog ([`live`], [`tcplog`]), each replica's settings and counters and its error log
//! ([`live`], [`errorlog`]) — into an [`Evidence`], and [`rank`] turns it into likely causes.
//! A missing input narrows the report and is named in it ("not looked at"); it never makes
//! the doctor fail. [`probe`] measures the path's real idle limit through HAProxy.

#![warn(missing_docs)]

pub mod errorlog;
pub mod haproxy_cfg;
pub mod live;
pub mod probe;
pub mod rank;
pub mod report;
pub mod tcplog;

use std::path::PathBuf;
use std::time::Duration;

use opskit_mysql::session::Credentials;
use serde::{Deserialize, Serialize};

use errorlog::ErrorLogStats;
use haproxy_cfg::{HaproxyConfig, Route};
use live::{Dsn, HaproxyRuntime, ReplicaFacts};
use tcplog::TcplogStats;

pub use rank::{Cause, Confidence, Finding, Level};
pub use report::DoctorReport;

/// Where the doctor looks.
#[derive(Debug, Clone, Default)]
pub struct Inputs {
    /// `haproxy.cfg`.
    pub haproxy_config: Option<PathBuf>,
    /// HAProxy's admin socket.
    pub haproxy_socket: Option<PathBuf>,
    /// HAProxy logs (plain, rotated, `.gz`).
    pub haproxy_logs: Vec<PathBuf>,
    /// The replicas to ask.
    pub replicas: Vec<Dsn>,
    /// Their password (the DSNs carry none); `None` skips the replicas.
    pub credentials: Option<Credentials>,
    /// MySQL/MariaDB error logs.
    pub mysql_error_logs: Vec<PathBuf>,
    /// The application's longest idle between two queries on one handle, seconds.
    pub app_idle_secs: Option<u64>,
    /// Time limit of each SQL statement and socket command.
    pub timeout: Duration,
}

/// Everything the doctor read.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Evidence {
    /// The parsed configuration.
    #[serde(skip)]
    pub haproxy: Option<HaproxyConfig>,
    /// Its routes with their effective timers.
    pub routes: Vec<Route>,
    /// `show info` / `show stat`.
    pub runtime: Option<HaproxyRuntime>,
    /// The HAProxy logs.
    pub logs: Option<TcplogStats>,
    /// The replicas.
    pub replicas: Vec<ReplicaFacts>,
    /// The error logs.
    pub error_logs: Vec<ErrorLogStats>,
    /// `--app-idle`.
    pub app_idle_secs: Option<u64>,
    /// What could not be read, and why.
    pub not_looked_at: Vec<String>,
}

/// Reads every input it can; what fails is named in `not_looked_at`.
pub fn collect(inputs: &Inputs) -> Evidence {
    let mut e = Evidence {
        app_idle_secs: inputs.app_idle_secs,
        ..Evidence::default()
    };
    let mut skip = |what: String| e.not_looked_at.push(what);
    match &inputs.haproxy_config {
        None => skip("haproxy.cfg: none given".into()),
        Some(p) => match std::fs::read_to_string(p) {
            Ok(text) => {
                let cfg = HaproxyConfig::parse(&text);
                e.routes = cfg.routes();
                e.haproxy = Some(cfg);
            }
            Err(err) => skip(format!("haproxy.cfg {}: {err}", p.display())),
        },
    }
    match &inputs.haproxy_socket {
        None => skip("HAProxy runtime API: no socket given".into()),
        Some(s) => match live::haproxy_runtime(s, inputs.timeout) {
            Ok(rt) => e.runtime = Some(rt),
            Err(err) => skip(format!("HAProxy runtime API {}: {err:#}", s.display())),
        },
    }
    if inputs.haproxy_logs.is_empty() {
        skip("HAProxy log: none given".into());
    }
    let mut logs = TcplogStats::default();
    for p in &inputs.haproxy_logs {
        if let Err(err) = logs.add_file(p) {
            skip(format!("HAProxy log {}: {err:#}", p.display()));
        }
    }
    if !logs.files.is_empty() {
        e.logs = Some(logs);
    }
    match &inputs.credentials {
        None if !inputs.replicas.is_empty() => {
            skip("replicas: no password file could be read".into())
        }
        None => skip("replicas: none given".into()),
        Some(_) if inputs.replicas.is_empty() => skip("replicas: none given".into()),
        Some(creds) => {
            for d in &inputs.replicas {
                match live::replica_facts(d, creds, inputs.timeout) {
                    Ok(f) => e.replicas.push(f),
                    Err(err) => skip(format!("replica {d}: {err:#}")),
                }
            }
        }
    }
    if inputs.mysql_error_logs.is_empty() {
        skip("MySQL error logs: none given".into());
    }
    for p in &inputs.mysql_error_logs {
        match ErrorLogStats::read(p) {
            Ok(s) => e.error_logs.push(s),
            Err(err) => skip(format!("MySQL error log {}: {err:#}", p.display())),
        }
    }
    if inputs.app_idle_secs.is_none() {
        skip("the application's idle (--app-idle not given): timeouts are compared with wait_timeout only".into());
    }
    e
}

/// Collects and ranks.
pub fn diagnose(inputs: &Inputs) -> DoctorReport {
    let evidence = collect(inputs);
    DoctorReport::new(evidence)
}
