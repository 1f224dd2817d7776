//! What the doctor asks running servers: HAProxy's `show info` / `show stat` over the admin
//! socket, and each replica's timeouts and counters over SQL (read-only statements, each with
//! the configured time limit).

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use opskit_mysql::haproxy::Runtime;
use opskit_mysql::session::{Credentials, Session};
use serde::Serialize;

/// One server row of `show stat`.
#[derive(Debug, Clone, PartialEq, Serialize)]
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
#[derive(Debug, Clone, PartialEq, Serialize)]
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

/// `mysql://user@host:port` without a password (the password comes from a file).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Dsn {
    /// The user, when the DSN names one.
    pub user: Option<String>,
    /// Host name or address.
    pub host: String,
    /// Port (3306 when not written).
    pub port: u16,
}

impl std::str::FromStr for Dsn {
    type Err = String;
    fn from_str(s: &str) -> Result<Dsn, String> {
        let rest = s
            .strip_prefix("mysql://")
            .unwrap_or(s)
            .trim_end_matches('/');
        let (user, hostport) = match rest.rsplit_once('@') {
            Some((u, h)) => {
                if u.contains(':') {
                    return Err(format!(
                        "`{s}`: a DSN carries no password (it is read from the configured password file)"
                    ));
                }
                (Some(u.to_string()), h)
            }
            None => (None, rest),
        };
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) => (
                h,
                p.parse::<u16>()
                    .ok()
                    .filter(|p| *p > 0)
                    .ok_or_else(|| format!("`{s}`: `{p}` is not a port"))?,
            ),
            None => (hostport, 3306),
        };
        let ok = |c: char| c.is_ascii_alphanumeric() || "-._".contains(c);
        if host.is_empty() || !host.chars().all(ok) {
            return Err(format!("`{s}`: expected mysql://user@host:port"));
        }
        if user
            .as_deref()
            .is_some_and(|u| u.is_empty() || !u.chars().all(ok))
        {
            return Err(format!(
                "`{s}`: the user has characters outside [A-Za-z0-9._-]"
            ));
        }
        Ok(Dsn {
            user,
            host: host.to_string(),
            port,
        })
    }
}

impl std::fmt::Display for Dsn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.user {
            Some(u) => write!(f, "mysql://{u}@{}:{}", self.host, self.port),
            None => write!(f, "mysql://{}:{}", self.host, self.port),
        }
    }
}

impl Dsn {
    /// A session as `creds` (the DSN's user wins over `creds.user`).
    pub fn session(&self, creds: &Credentials, timeout: Duration) -> Result<Session> {
        let creds = Credentials {
            user: self.user.clone().unwrap_or_else(|| creds.user.clone()),
            password: creds.password.clone(),
        };
        Session::new(self.to_string(), &self.host, self.port, &creds, timeout)
    }
}

/// One replica's settings and counters.
#[derive(Debug, Clone, PartialEq, Serialize)]
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
    let mut s = dsn.session(creds, timeout)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dsns_carry_no_password() {
        let d: Dsn = "mysql://opskit@10.0.0.12:3307".parse().unwrap();
        assert_eq!(
            (d.user.as_deref(), d.host.as_str(), d.port),
            (Some("opskit"), "10.0.0.12", 3307)
        );
        assert_eq!(d.to_string(), "mysql://opskit@10.0.0.12:3307");
        let d: Dsn = "mysql-01.ipo.com".parse().unwrap();
        assert_eq!((d.user, d.port), (None, 3306));
        assert!(
            "mysql://u:secret@h:1"
                .parse::<Dsn>()
                .unwrap_err()
                .contains("no password")
        );
        assert!("mysql://u@h:0".parse::<Dsn>().is_err());
        assert!("mysql://u@h;drop:1".parse::<Dsn>().is_err());
    }
}
