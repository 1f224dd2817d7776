//! The replication tree as the servers report it: every configured server is asked for its
//! flavour and version, GTID state, `read_only`, binary log settings and its replica status;
//! the tree is built from who replicates from whom, errant transactions are found by comparing
//! each replica with its source, and every difference from `[mysql]` is reported.
//!
//! [`Cluster`] (one [`Session`] per server, opened lazily) is shared with the switchover, and
//! [`TopologyReport`] is what `opskit mysql topology --output json` prints and the drill (and
//! the doctor) read back.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, ToSocketAddrs as _};
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use opskit_core::config::MysqlConfig;
use opskit_core::metrics::LabelledGauge;
use serde::{Deserialize, Serialize};

use crate::flavor::{Flavor, ServerKind, sql_str};
use crate::gtid;
use crate::session::{Credentials, Row, Session};

/// The `runbook` label of the topology metrics (file `opskit_mysql_topology.prom`).
pub const TOPOLOGY_RUNBOOK: &str = "mysql_topology";

/// A configured server and the address its host resolves to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// Its name (`Master`, `Slave_01`, …).
    pub name: String,
    /// Its host as configured.
    pub host: String,
    /// Its port.
    pub port: u16,
    /// The address `host` resolves to (the host itself when it is an address).
    pub ip: Option<IpAddr>,
}

impl Node {
    /// `Slave_01 (10.0.0.12:3306)`.
    pub fn label(&self) -> String {
        format!("{} ({}:{})", self.name, self.host, self.port)
    }

    /// True when `host:port` (as a replica reports its source) is this server.
    pub fn is(&self, host: &str, port: u16) -> bool {
        port == self.port
            && (host.eq_ignore_ascii_case(&self.host)
                || self.ip.is_some() && resolve(host) == self.ip)
    }
}

/// The first address of `host` (IPv4 preferred); `None` when it does not resolve.
pub fn resolve(host: &str) -> Option<IpAddr> {
    if let Ok(ip) = host.parse() {
        return Some(ip);
    }
    let addrs: Vec<IpAddr> = (host, 0).to_socket_addrs().ok()?.map(|a| a.ip()).collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
}

/// The configured servers with their addresses.
pub fn nodes(config: &MysqlConfig) -> Vec<Node> {
    config
        .servers
        .iter()
        .map(|s| Node {
            name: s.name.to_string(),
            host: s.host.to_string(),
            port: s.port,
            ip: resolve(s.host.as_str()),
        })
        .collect()
}

/// One session per configured server, opened when first used.
pub struct Cluster {
    nodes: Vec<Node>,
    creds: Credentials,
    timeout: Duration,
    sessions: BTreeMap<String, Session>,
}

impl Cluster {
    /// A cluster of `nodes` reached as `creds`, `timeout` per connect and statement.
    pub fn new(nodes: Vec<Node>, creds: Credentials, timeout: Duration) -> Cluster {
        Cluster {
            nodes,
            creds,
            timeout,
            sessions: BTreeMap::new(),
        }
    }

    /// The servers.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// The server called `name`.
    pub fn node(&self, name: &str) -> anyhow::Result<&Node> {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .with_context(|| format!("`{name}` is not one of mysql.servers"))
    }

    /// The per-statement time limit.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The admin session to `name` (connected on first use).
    pub fn session(&mut self, name: &str) -> anyhow::Result<&mut Session> {
        if !self.sessions.contains_key(name) {
            let n = self.node(name)?.clone();
            let s = Session::new(n.label(), &n.host, n.port, &self.creds, self.timeout)?;
            self.sessions.insert(name.to_string(), s);
        }
        Ok(self.sessions.get_mut(name).expect("inserted above"))
    }

    /// Drops every connection (the next use reconnects).
    pub fn close_all(&mut self) {
        self.sessions.clear();
    }
}

/// A replica's channel as `SHOW SLAVE STATUS` / `SHOW REPLICA STATUS` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaStatus {
    /// The source as configured on the replica.
    pub source_host: String,
    /// The source port.
    pub source_port: u16,
    /// The replication account.
    pub user: String,
    /// I/O thread: `Yes`, `No`, `Connecting`.
    pub io_running: String,
    /// SQL thread: `Yes`, `No`.
    pub sql_running: String,
    /// Seconds behind the source; `None` when the SQL thread is stopped.
    pub lag_secs: Option<u64>,
    /// GTID positioning: MariaDB `Slave_Pos`/`Current_Pos`/`No`, MySQL `1`/`0` (auto position).
    pub gtid_mode: String,
    /// Last I/O error, if any.
    pub last_io_error: String,
    /// Last SQL error, if any.
    pub last_sql_error: String,
}

impl ReplicaStatus {
    /// Both threads run.
    pub fn running(&self) -> bool {
        self.io_running == "Yes" && self.sql_running == "Yes"
    }

    /// Positioned by GTID (not file and position).
    pub fn uses_gtid(&self) -> bool {
        matches!(self.gtid_mode.as_str(), "Slave_Pos" | "Current_Pos" | "1")
    }

    pub(crate) fn from_row(kind: &ServerKind, row: &Row) -> ReplicaStatus {
        let c = kind.columns();
        let s = |k: &str| row.get(k).unwrap_or("").to_string();
        ReplicaStatus {
            source_host: s(c.host),
            source_port: row.get(c.port).and_then(|p| p.parse().ok()).unwrap_or(0),
            user: s(c.user),
            io_running: s(c.io_running),
            sql_running: s(c.sql_running),
            lag_secs: row.get(c.lag).and_then(|v| v.parse().ok()),
            gtid_mode: s(c.gtid_mode),
            last_io_error: s(c.last_io_error),
            last_sql_error: s(c.last_sql_error),
        }
    }
}

/// One server as discovered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerState {
    /// Its configured name.
    pub name: String,
    /// `host:port` as configured.
    pub endpoint: String,
    /// Its address, when the host resolves.
    #[serde(default)]
    pub ip: Option<String>,
    /// Why it could not be read, when it could not.
    #[serde(default)]
    pub error: Option<String>,
    /// Flavour and version.
    #[serde(default)]
    pub kind: Option<ServerKind>,
    /// `@@server_id`.
    #[serde(default)]
    pub server_id: Option<u32>,
    /// `@@read_only`.
    #[serde(default)]
    pub read_only: Option<bool>,
    /// `@@super_read_only` (MySQL; MariaDB has none).
    #[serde(default)]
    pub super_read_only: Option<bool>,
    /// `@@log_bin`.
    #[serde(default)]
    pub log_bin: Option<bool>,
    /// `@@log_slave_updates` / `@@log_replica_updates`.
    #[serde(default)]
    pub log_replica_updates: Option<bool>,
    /// MySQL `@@gtid_mode` (`ON`); MariaDB always has GTIDs (`ON`).
    #[serde(default)]
    pub gtid_mode: Option<String>,
    /// MariaDB `@@gtid_strict_mode` / MySQL `@@enforce_gtid_consistency`.
    #[serde(default)]
    pub gtid_strict: Option<bool>,
    /// MariaDB `@@gtid_binlog_pos` / MySQL `@@gtid_executed`.
    #[serde(default)]
    pub executed: Option<String>,
    /// MariaDB `@@gtid_binlog_state` (empty on MySQL).
    #[serde(default)]
    pub binlog_state: Option<String>,
    /// MariaDB `@@gtid_slave_pos` / MySQL `@@gtid_executed`.
    #[serde(default)]
    pub replica_pos: Option<String>,
    /// Its replication channel, if it replicates.
    #[serde(default)]
    pub replication: Option<ReplicaStatus>,
    /// The configured server it replicates from (or the raw `host:port` when that is not a
    /// configured server).
    #[serde(default)]
    pub source: Option<String>,
    /// Transactions it has that its source does not (errant), as GTIDs or a GTID set.
    #[serde(default)]
    pub errant: Vec<String>,
}

impl ServerState {
    fn unreachable(node: &Node, error: String) -> ServerState {
        ServerState {
            name: node.name.clone(),
            endpoint: format!("{}:{}", node.host, node.port),
            ip: node.ip.map(|i| i.to_string()),
            error: Some(error),
            kind: None,
            server_id: None,
            read_only: None,
            super_read_only: None,
            log_bin: None,
            log_replica_updates: None,
            gtid_mode: None,
            gtid_strict: None,
            executed: None,
            binlog_state: None,
            replica_pos: None,
            replication: None,
            source: None,
            errant: Vec::new(),
        }
    }

    /// It answered.
    pub fn reachable(&self) -> bool {
        self.error.is_none()
    }

    /// Writable (neither read_only nor super_read_only).
    pub fn writable(&self) -> bool {
        self.read_only == Some(false) && self.super_read_only != Some(true)
    }

    /// Its lag, when it replicates and the SQL thread runs.
    pub fn lag(&self) -> Option<u64> {
        self.replication.as_ref().and_then(|r| r.lag_secs)
    }
}

/// What `opskit mysql topology` reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopologyReport {
    /// Every configured server, in config order.
    pub servers: Vec<ServerState>,
    /// The server(s) that replicate from nobody and answered (one in a healthy tree).
    pub roots: Vec<String>,
    /// Every way the real tree differs from `[mysql]` (sources, unreachable servers).
    pub differences: Vec<String>,
    /// `mysql.max_lag_secs`, for judging the lag.
    pub max_lag_secs: u64,
}

fn flag(row: &Row, col: &str) -> Option<bool> {
    row.get(col)
        .map(|v| v == "1" || v.eq_ignore_ascii_case("ON"))
}

/// Reads one server (its session is opened if needed).
fn read_server(cluster: &mut Cluster, node: &Node) -> anyhow::Result<ServerState> {
    let s = cluster.session(&node.name)?;
    let version = s.value("SELECT VERSION()")?.unwrap_or_default();
    let kind = ServerKind::parse(&version)
        .ok_or_else(|| anyhow!("cannot read the version `{version}`"))?;
    let vars = s
        .query(&kind.variables_query())?
        .into_iter()
        .next()
        .context("the variables query returned no row")?;
    let status = s.query(kind.show_replica_status())?;
    let replication = status.first().map(|r| ReplicaStatus::from_row(&kind, r));
    let mut st = ServerState::unreachable(node, String::new());
    st.error = None;
    st.kind = Some(kind);
    st.server_id = vars.get("server_id").and_then(|v| v.parse().ok());
    st.read_only = flag(&vars, "read_only");
    st.super_read_only = match kind.flavor {
        Flavor::Mysql => flag(&vars, "super_read_only"),
        Flavor::Mariadb => None,
    };
    st.log_bin = flag(&vars, "log_bin");
    st.log_replica_updates = flag(&vars, "log_replica_updates");
    st.gtid_mode = vars.get("gtid_mode").map(str::to_string);
    st.gtid_strict = flag(&vars, "gtid_strict");
    st.executed = vars.get("executed").map(|v| v.replace('\n', ""));
    st.binlog_state = vars.get("binlog_state").map(str::to_string);
    st.replica_pos = vars.get("replica_pos").map(|v| v.replace('\n', ""));
    st.replication = replication;
    Ok(st)
}

/// Discovers the tree. Servers that do not answer are reported, not fatal.
pub fn discover(cluster: &mut Cluster, config: &MysqlConfig) -> TopologyReport {
    let nodes = cluster.nodes().to_vec();
    let mut servers: Vec<ServerState> = nodes
        .iter()
        .map(|n| {
            read_server(cluster, n)
                .unwrap_or_else(|e| ServerState::unreachable(n, format!("{e:#}")))
        })
        .collect();
    for st in &mut servers {
        st.source = st.replication.as_ref().map(|r| {
            nodes
                .iter()
                .find(|n| n.is(&r.source_host, r.source_port))
                .map_or_else(
                    || format!("{}:{}", r.source_host, r.source_port),
                    |n| n.name.clone(),
                )
        });
    }
    let snapshot = servers.clone();
    for st in &mut servers {
        if let Some(src) = st
            .source
            .as_ref()
            .and_then(|s| snapshot.iter().find(|o| &o.name == s))
        {
            st.errant = errant_against(cluster, st, src)
                .unwrap_or_else(|e| vec![format!("(could not compare with {}: {e:#})", src.name)]);
        }
    }
    let roots = servers
        .iter()
        .filter(|s| s.reachable() && s.replication.is_none())
        .map(|s| s.name.clone())
        .collect();
    let differences = differences(config, &servers);
    TopologyReport {
        servers,
        roots,
        differences,
        max_lag_secs: config.max_lag_secs.get(),
    }
}

/// Transactions `replica` has that `source` does not.
pub fn errant_against(
    cluster: &mut Cluster,
    replica: &ServerState,
    source: &ServerState,
) -> anyhow::Result<Vec<String>> {
    let (Some(kind), Some(_)) = (replica.kind, source.kind) else {
        return Ok(Vec::new());
    };
    match kind.flavor {
        Flavor::Mariadb => {
            let mine = replica.binlog_state.as_deref().unwrap_or("");
            // Read the source now, after the replica: under writes a source read earlier
            // would lack what the replica has received since and look "errant".
            let theirs = cluster
                .session(&source.name)?
                .value("SELECT @@GLOBAL.gtid_binlog_state")?
                .unwrap_or_default();
            Ok(gtid::errant(mine, &theirs)
                .map_err(|e| anyhow!(e))?
                .into_iter()
                .map(|g| g.to_string())
                .collect())
        }
        Flavor::Mysql => {
            let mine = replica.executed.as_deref().unwrap_or("");
            let diff = cluster
                .session(&source.name)?
                .value(&format!(
                    "SELECT GTID_SUBTRACT('{}', @@GLOBAL.gtid_executed)",
                    sql_str(mine)
                ))?
                .unwrap_or_default();
            Ok(if diff.trim().is_empty() {
                Vec::new()
            } else {
                vec![diff.replace('\n', "")]
            })
        }
    }
}

fn differences(config: &MysqlConfig, servers: &[ServerState]) -> Vec<String> {
    let mut out = Vec::new();
    for (c, st) in config.servers.iter().zip(servers) {
        if let Some(e) = &st.error {
            out.push(format!("{} does not answer: {e}", st.name));
            continue;
        }
        let want = c.replicates_from.as_ref().map(|n| n.to_string());
        if st.source != want {
            let have = st.source.as_deref().unwrap_or("nobody");
            let want = want.as_deref().unwrap_or("nobody");
            out.push(format!(
                "{} replicates from {have}; the config says {want}",
                st.name
            ));
        }
    }
    let mut ids: BTreeMap<u32, Vec<&str>> = BTreeMap::new();
    for st in servers {
        if let Some(id) = st.server_id {
            ids.entry(id).or_default().push(&st.name);
        }
    }
    for (id, names) in ids.into_iter().filter(|(_, n)| n.len() > 1) {
        out.push(format!("server_id {id} is used by {}", names.join(" and ")));
    }
    out
}

impl TopologyReport {
    /// The server called `name`.
    pub fn get(&self, name: &str) -> Option<&ServerState> {
        self.servers.iter().find(|s| s.name == name)
    }

    /// The servers replicating from `name`, in config order.
    pub fn children(&self, name: &str) -> Vec<&ServerState> {
        self.servers
            .iter()
            .filter(|s| s.source.as_deref() == Some(name))
            .collect()
    }

    /// Name → source name, for every server.
    pub fn tree_map(&self) -> BTreeMap<String, Option<String>> {
        self.servers
            .iter()
            .map(|s| (s.name.clone(), s.source.clone()))
            .collect()
    }

    /// The tree as text, one server per line, children indented under their source.
    pub fn render_tree(&self) -> String {
        let mut out = String::new();
        let mut shown = Vec::new();
        for root in &self.roots {
            self.render_node(root, "", "", &mut out, &mut shown);
        }
        let orphans: Vec<&ServerState> = self
            .servers
            .iter()
            .filter(|s| !shown.contains(&s.name))
            .collect();
        if !orphans.is_empty() {
            let _ = writeln!(out, "not in the tree:");
            for s in orphans {
                let _ = writeln!(out, "  {}", self.line(s));
            }
        }
        if !self.differences.is_empty() {
            let _ = writeln!(out, "differences from the config:");
            for d in &self.differences {
                let _ = writeln!(out, "  - {d}");
            }
        }
        out
    }

    fn render_node(
        &self,
        name: &str,
        prefix: &str,
        branch: &str,
        out: &mut String,
        shown: &mut Vec<String>,
    ) {
        let Some(s) = self.get(name) else { return };
        if shown.contains(&s.name) {
            return;
        }
        shown.push(s.name.clone());
        let _ = writeln!(out, "{prefix}{branch}{}", self.line(s));
        let children = self.children(name);
        let child_prefix = format!(
            "{prefix}{}",
            match branch {
                "" => "",
                "├─ " => "│  ",
                _ => "   ",
            }
        );
        for (i, c) in children.iter().enumerate() {
            let b = if i + 1 == children.len() {
                "└─ "
            } else {
                "├─ "
            };
            self.render_node(&c.name, &child_prefix, b, out, shown);
        }
    }

    fn line(&self, s: &ServerState) -> String {
        let Some(kind) = s.kind else {
            return format!(
                "{}  {}  DOES NOT ANSWER: {}",
                s.name,
                s.endpoint,
                s.error.as_deref().unwrap_or("")
            );
        };
        let mut l = format!(
            "{}  {}  {kind}  id {}  {}",
            s.name,
            s.endpoint,
            s.server_id.map_or("?".into(), |i| i.to_string()),
            if s.writable() {
                "read-write"
            } else {
                "read-only"
            }
        );
        if let Some(r) = &s.replication {
            let lag = r
                .lag_secs
                .map_or("lag ?".to_string(), |l| format!("lag {l}s"));
            let over = match r.lag_secs {
                Some(l) if l > self.max_lag_secs => " (OVER THE LIMIT)",
                _ => "",
            };
            let _ = write!(
                l,
                "  IO {} SQL {}  {lag}{over}  gtid {}",
                r.io_running,
                r.sql_running,
                if r.uses_gtid() { &r.gtid_mode } else { "OFF" }
            );
            for e in [&r.last_io_error, &r.last_sql_error] {
                if !e.is_empty() {
                    let _ = write!(l, "  error: {e}");
                }
            }
        }
        let _ = write!(l, "  executed {}", s.executed.as_deref().unwrap_or("?"));
        if !s.errant.is_empty() {
            let _ = write!(l, "  ERRANT {}", s.errant.join(","));
        }
        if s.log_bin == Some(false) {
            l.push_str("  NO BINLOG");
        }
        l
    }

    /// The gauges `opskit mysql topology` writes to `opskit_mysql_topology.prom`:
    /// `opskit_mysql_server_up`, `opskit_mysql_replication_running`,
    /// `opskit_mysql_replica_lag_seconds` (absent when unknown),
    /// `opskit_mysql_errant_transactions` per server, and `opskit_mysql_topology_differences`;
    /// every sample carries `runbook="mysql_topology"` ([`TOPOLOGY_RUNBOOK`]).
    pub fn gauges(&self) -> Vec<LabelledGauge> {
        let mut out = Vec::new();
        let g = |name: &str, help: &str, labels: Vec<(String, String)>, value: f64| {
            let mut all = vec![("runbook".to_string(), TOPOLOGY_RUNBOOK.to_string())];
            all.extend(labels);
            LabelledGauge {
                name: name.into(),
                help: help.into(),
                labels: all,
                value,
            }
        };
        for s in &self.servers {
            let server = vec![("server".to_string(), s.name.clone())];
            out.push(g(
                "opskit_mysql_server_up",
                "1 when the server answered opskit mysql topology.",
                server.clone(),
                if s.reachable() { 1.0 } else { 0.0 },
            ));
            if let Some(r) = &s.replication {
                let labels = vec![
                    ("server".to_string(), s.name.clone()),
                    ("source".to_string(), s.source.clone().unwrap_or_default()),
                ];
                out.push(g(
                    "opskit_mysql_replication_running",
                    "1 when both replication threads run.",
                    labels.clone(),
                    if r.running() { 1.0 } else { 0.0 },
                ));
                if let Some(lag) = r.lag_secs {
                    out.push(g(
                        "opskit_mysql_replica_lag_seconds",
                        "Seconds_Behind_Master of the replica.",
                        labels,
                        lag as f64,
                    ));
                }
            }
            if s.reachable() {
                out.push(g(
                    "opskit_mysql_errant_transactions",
                    "GTIDs the server has that its source does not.",
                    server,
                    s.errant.len() as f64,
                ));
            }
        }
        out.push(g(
            "opskit_mysql_replica_lag_limit_seconds",
            "mysql.max_lag_secs.",
            Vec::new(),
            self.max_lag_secs as f64,
        ));
        out.push(g(
            "opskit_mysql_topology_differences",
            "Differences between the discovered tree and the config.",
            Vec::new(),
            self.differences.len() as f64,
        ));
        out
    }
}
