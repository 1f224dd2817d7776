//! What the doctor asks running servers: HAProxy's `show info` / `show stat` over the admin
//! socket, and each replica's timeouts and counters over SQL (read-only statements, each with
//! the configured time limit).

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use opskit_mysql::haproxy::Runtime;
use opskit_mysql::session::{Credentials, Session};
use serde::{Deserialize, Serialize};

/// One server row of `show stat`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerStat {
    /// `backend/server`.
    pub name: String,
    /// `UP`, `DOWN`, `MAINT`, …
    pub status: String,
    /// Sessions the client side aborted or timed out (`cD`, `CD`).
    pub cli_abrt: u64,
    /// Sessions the server side aborted or timed out (`sD`, `SD`).
    pub srv_abrt: u64,
    /// UP → DOWN transitions.
    pub chkdown: u64,
    /// Seconds since the last state change.
    pub lastchg: u64,
    /// The last check's status (`L4OK`, `L7STS`, `L4CON`, …).
    pub check_status: String,
}

/// HAProxy's runtime view.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HaproxyRuntime {
    /// The worker's pid.
    pub pid: String,
    /// Seconds since this worker started (a reload starts a new one; counters restart).
    pub uptime_secs: u64,
    /// Soft-stop in progress.
    pub stopping: bool,
    /// Server rows.
    pub servers: Vec<ServerStat>,
}

/// Reads `show info` and `show stat`.
pub fn haproxy_runtime(socket: &std::path::Path, timeout: Duration) -> Result<HaproxyRuntime> {
    let rt = Runtime::new(socket, timeout);
    let info = rt.show_info()?;
    let num = |m: &BTreeMap<String, String>, k: &str| {
        m.get(k)
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    let servers = rt
        .show_stat()?
        .into_iter()
        .filter(|r| {
            !matches!(
                r.get("svname").map(String::as_str),
                Some("FRONTEND" | "BACKEND")
            )
        })
        .map(|r| ServerStat {
            name: format!(
                "{}/{}",
                r.get("pxname").map_or("", String::as_str),
                r.get("svname").map_or("", String::as_str)
            ),
            status: r.get("status").cloned().unwrap_or_default(),
            cli_abrt: num(&r, "cli_abrt"),
            srv_abrt: num(&r, "srv_abrt"),
            chkdown: num(&r, "chkdown"),
            lastchg: num(&r, "lastchg"),
            check_status: r.get("check_status").cloned().unwrap_or_default(),
        })
        .collect();
    Ok(HaproxyRuntime {
        pid: info.get("Pid").cloned().unwrap_or_default(),
        uptime_secs: num(&info, "Uptime_sec"),
        stopping: info.get("Stopping").is_some_and(|v| v.trim() == "1"),
        servers,
    })
}

pub use opskit_core::config::mysql::MysqlDsn as Dsn;

/// A session to `dsn` as `creds` (the DSN's user wins over `creds.user`).
pub fn session(dsn: &Dsn, creds: &Credentials, timeout: Duration) -> Result<Session> {
    let creds = Credentials {
        user: dsn.user.clone().unwrap_or_else(|| creds.user.clone()),
        password: creds.password.clone(),
    };
    Session::new(dsn.to_string(), &dsn.host, dsn.port, &creds, timeout)
}

/// One replica's settings and counters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplicaFacts {
    /// The DSN it was read through.
    pub dsn: String,
    /// `@@hostname:@@port` (server_id).
    pub server: String,
    /// Global variables (`wait_timeout`, `interactive_timeout`, `max_allowed_packet`,
    /// `max_connections`, `net_read_timeout`, `net_write_timeout`).
    pub variables: BTreeMap<String, u64>,
    /// Global status (`Uptime`, `Aborted_clients`, `Aborted_connects`, `Com_kill`,
    /// `Threads_connected`, `Max_used_connections`).
    pub status: BTreeMap<String, u64>,
}

impl ReplicaFacts {
    /// A variable or status value.
    pub fn get(&self, name: &str) -> Option<u64> {
        self.variables
            .get(name)
            .or_else(|| self.status.get(name))
            .copied()
    }
}

const VARIABLES: &str = "'wait_timeout','interactive_timeout','max_allowed_packet',\
    'max_connections','net_read_timeout','net_write_timeout'";
const STATUS: &str = "'Uptime','Aborted_clients','Aborted_connects','Com_kill',\
    'Threads_connected','Max_used_connections'";

/// Reads one replica (read-only `SHOW GLOBAL …` and `SELECT @@…`).
pub fn replica_facts(dsn: &Dsn, creds: &Credentials, timeout: Duration) -> Result<ReplicaFacts> {
    let mut s = session(dsn, creds, timeout)?;
    let read = |s: &mut Session, sql: &str| -> Result<BTreeMap<String, u64>> {
        Ok(s.query(sql)?
            .into_iter()
            .filter_map(|r| {
                let k = r.at(0)?.to_string();
                let v = r.at(1)?.parse::<u64>().ok()?;
                Some((k, v))
            })
            .collect())
    };
    let variables = read(
        &mut s,
        &format!("SHOW GLOBAL VARIABLES WHERE Variable_name IN ({VARIABLES})"),
    )?;
    let status = read(
        &mut s,
        &format!("SHOW GLOBAL STATUS WHERE Variable_name IN ({STATUS})"),
    )?;
    if !variables.contains_key("wait_timeout") {
        bail!("{dsn}: SHOW GLOBAL VARIABLES returned no wait_timeout");
    }
    let server = s
        .value("SELECT CONCAT(@@hostname, ':', @@port, ' (server_id ', @@server_id, ')')")
        .context("reading @@hostname")?
        .unwrap_or_default();
    s.close();
    Ok(ReplicaFacts {
        dsn: dsn.to_string(),
        server,
        variables,
        status,
    })
}
