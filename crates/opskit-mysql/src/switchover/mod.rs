//! The planned master switchover of spec §4: promote a direct replica of the master, make the
//! old master its replica, move the write name in DNS and the read pool in HAProxy.
//!
//! Planning is pure: [`prepare`] turns the discovered tree and the settings into a
//! [`SwitchoverInput`] (saved next to the journal, so a resumed run executes the same plan),
//! [`specs`] turns that into the printed steps, and [`build_plan`] pairs each with its action
//! (in [`steps`]). The order keeps the write freeze short — only fence → wait → promote → DNS
//! happen while writes are refused:
//!
//! ```text
//! preflight → move siblings under the candidate → drain the candidate from the read pool
//! → freeze the old master → candidate catches up → promote → DNS (point of no return)
//! → old master under the candidate → forget the candidate's old channel
//! → (mirror) the candidate's replicas under the old master → old master into the pool
//! → verify (marker write reaches every replica, no errant GTIDs, lag under the limit)
//! ```
//! Before the DNS move a failure undoes everything (the old master writable again, the pool and
//! the tree as they were); after it the run stops, alerts with each server's state, sets
//! `opskit_mysql_switchover_half_done` to 1, and a re-run resumes.

mod actions;
pub mod preflight;
mod printed;
mod shared;
mod steps;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use chrono::{DateTime, Utc};
use opskit_core::config::MysqlConfig;
use opskit_core::error::refused;
use serde::{Deserialize, Serialize};

use crate::flavor::ServerKind;
use crate::haproxy::Slot;
use crate::topology::{Node, TopologyReport};

pub use printed::{describe, facts, specs, title};
pub use shared::Shared;
pub use steps::build_plan;

/// Where the old master's replicas go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Layout {
    /// The old master takes the candidate's place: the candidate's replicas move under it.
    Mirror,
    /// The candidate keeps its replicas; the old master is one more of them.
    Flat,
}

/// The write name's move.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsChange {
    /// `mysql-master.ipo.com`.
    pub name: String,
    /// Its zone.
    pub zone: String,
    /// The name server, `host:port`.
    pub server: String,
    /// The old master's address (the prerequisite).
    pub old: Ipv4Addr,
    /// The new master's address.
    pub new: Ipv4Addr,
    /// The TTL written.
    pub ttl: u32,
}

/// The read pool's change: the candidate's slot gets the old master.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolChange {
    /// The backend.
    pub backend: String,
    /// The slot (server name in the backend) that held the candidate.
    pub slot: String,
    /// Its `addr:port` before (the candidate).
    pub before: String,
    /// The old master's address.
    pub addr: String,
    /// The old master's port.
    pub port: u16,
}

/// Everything a switchover run needs, decided before it starts (saved as JSON next to the
/// journal so that a resumed run does exactly the same thing).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwitchoverInput {
    /// The journal's run key.
    pub run_key: String,
    /// When it was planned.
    pub planned_at: DateTime<Utc>,
    /// The master now.
    pub old_master: String,
    /// The replica promoted.
    pub new_master: String,
    /// Mirror or flat.
    pub layout: Layout,
    /// Every server with its address.
    pub nodes: Vec<Node>,
    /// Flavour and version of every server.
    pub kinds: BTreeMap<String, ServerKind>,
    /// Server → source, before.
    pub before: BTreeMap<String, Option<String>>,
    /// Server → source, after.
    pub after: BTreeMap<String, Option<String>>,
    /// The old master's other direct replicas, moved under the candidate before the freeze.
    pub siblings: Vec<String>,
    /// The candidate's replicas, moved under the old master after (mirror only).
    pub children: Vec<String>,
    /// The DNS move.
    pub dns: DnsChange,
    /// The read pool change (none when the candidate is not in the pool).
    pub pool: Option<PoolChange>,
    /// Settings in force when planned.
    pub settings: Settings,
}

/// The settings a run uses (from `[mysql]` when planned).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    /// `mysql.freeze_timeout_secs`.
    pub freeze_timeout_secs: u64,
    /// `mysql.max_lag_secs`.
    pub max_lag_secs: u64,
    /// `mysql.long_write_limit_secs`.
    pub long_write_limit_secs: u64,
    /// `mysql.timeout_secs`.
    pub timeout_secs: u64,
    /// `mysql.marker_schema`.
    pub marker_schema: String,
    /// `mysql.replication_user`.
    pub replication_user: String,
    /// `mysql.replication_password_file`.
    pub replication_password_file: PathBuf,
    /// `mysql.haproxy.admin_socket`.
    pub haproxy_socket: PathBuf,
    /// `mysql.haproxy.config_path`.
    pub haproxy_config: PathBuf,
    /// `mysql.haproxy.binary`.
    pub haproxy_binary: PathBuf,
}

impl Settings {
    /// The settings of `config`.
    pub fn of(config: &MysqlConfig) -> Settings {
        Settings {
            freeze_timeout_secs: config.freeze_timeout_secs.get(),
            max_lag_secs: config.max_lag_secs.get(),
            long_write_limit_secs: config.long_write_limit_secs.get(),
            timeout_secs: config.timeout_secs.get(),
            marker_schema: config.marker_schema.to_string(),
            replication_user: config.replication_user.to_string(),
            replication_password_file: config.replication_password_file.path().into(),
            haproxy_socket: config.haproxy.admin_socket.path().into(),
            haproxy_config: config.haproxy.config_path.path().into(),
            haproxy_binary: config.haproxy.binary.path().into(),
        }
    }
}

/// The target tree: `(after, siblings, children)` for promoting `new` under `old`.
pub type Target = (BTreeMap<String, Option<String>>, Vec<String>, Vec<String>);

/// Computes the target tree from `before` (server → source) (pure).
pub fn target(
    before: &BTreeMap<String, Option<String>>,
    old: &str,
    new: &str,
    layout: Layout,
) -> Target {
    let children_of = |n: &str| -> Vec<String> {
        before
            .iter()
            .filter(|(_, s)| s.as_deref() == Some(n))
            .map(|(k, _)| k.clone())
            .collect()
    };
    let siblings: Vec<String> = children_of(old).into_iter().filter(|s| s != new).collect();
    let children = match layout {
        Layout::Mirror => children_of(new),
        Layout::Flat => Vec::new(),
    };
    let mut after = before.clone();
    after.insert(new.to_string(), None);
    after.insert(old.to_string(), Some(new.to_string()));
    for s in &siblings {
        after.insert(s.clone(), Some(new.to_string()));
    }
    for c in &children {
        after.insert(c.clone(), Some(old.to_string()));
    }
    (after, siblings, children)
}

/// The tree as `A → B → C; A → D` paths (for the plan's facts).
pub fn render_paths(tree: &BTreeMap<String, Option<String>>, order: &[String]) -> String {
    let children = |n: &str| -> Vec<&String> {
        order
            .iter()
            .filter(|k| tree.get(*k).and_then(|s| s.as_deref()) == Some(n))
            .collect()
    };
    fn walk<'a>(
        n: &'a str,
        path: String,
        children: &dyn Fn(&str) -> Vec<&'a String>,
        out: &mut Vec<String>,
        depth: usize,
    ) {
        let kids = children(n);
        if kids.is_empty() || depth > 16 {
            out.push(path);
            return;
        }
        for k in kids {
            walk(k, format!("{path} → {k}"), children, out, depth + 1);
        }
    }
    let mut out = Vec::new();
    for root in order
        .iter()
        .filter(|k| tree.get(*k).is_some_and(Option::is_none))
    {
        walk(root, root.clone(), &children, &mut out, 0);
    }
    out.join("; ")
}

/// A new run key: `switchover-<UTC time>-<old>-to-<new>`.
pub fn run_key(now: DateTime<Utc>, old: &str, new: &str) -> String {
    format!("switchover-{}-{old}-to-{new}", now.format("%Y%m%dT%H%M%SZ"))
}

fn ipv4(node: &Node) -> anyhow::Result<Ipv4Addr> {
    match node.ip {
        Some(std::net::IpAddr::V4(a)) => Ok(a),
        Some(other) => bail!(
            "{} has the address {other}; the A record of the write name needs an IPv4 address",
            node.label()
        ),
        None => Err(refused(format!(
            "{}: the host {} does not resolve",
            node.name, node.host
        ))),
    }
}

/// Decides the switchover from the discovered tree: the candidate (`new`, default
/// `mysql.promote`) must be a direct replica of the master (a server that replicates from
/// nobody). The read pool slot is found by address in `slots` (the runtime API), else in
/// `haproxy.cfg`. Refusals (exit 3) name what is wrong.
pub fn prepare(
    config: &MysqlConfig,
    report: &TopologyReport,
    nodes: &[Node],
    new: Option<&str>,
    layout: Layout,
    slots: Option<&[Slot]>,
    now: DateTime<Utc>,
) -> anyhow::Result<SwitchoverInput> {
    let new = new.unwrap_or(config.promote.as_str()).to_string();
    let candidate = report
        .get(&new)
        .ok_or_else(|| refused(format!("`{new}` is not one of mysql.servers")))?;
    if let Some(e) = &candidate.error {
        return Err(refused(format!("the candidate {new} does not answer: {e}")));
    }
    let Some(old) = candidate.source.clone() else {
        return Err(refused(format!(
            "{new} replicates from nobody: it is already a master (the tree now: {})",
            render_paths(&report.tree_map(), &names(report))
        )));
    };
    let old_state = report.get(&old).ok_or_else(|| {
        refused(format!(
            "{new} replicates from {old}, which is not one of mysql.servers"
        ))
    })?;
    if let Some(src) = &old_state.source {
        return Err(refused(format!(
            "{new} replicates from {old}, which itself replicates from {src}: only a direct \
             replica of the master can be promoted"
        )));
    }
    let node = |n: &str| -> anyhow::Result<&Node> {
        nodes
            .iter()
            .find(|x| x.name == n)
            .with_context(|| format!("{n} is not one of mysql.servers"))
    };
    let (old_node, new_node) = (node(&old)?, node(&new)?);
    let before = report.tree_map();
    let (after, siblings, children) = target(&before, &old, &new, layout);
    let mut kinds = BTreeMap::new();
    for s in &report.servers {
        if let Some(k) = s.kind {
            kinds.insert(s.name.clone(), k);
        }
    }
    let settings = Settings::of(config);
    let pool = pool_change(config, &settings, new_node, old_node, slots)?;
    Ok(SwitchoverInput {
        run_key: run_key(now, &old, &new),
        planned_at: now,
        old_master: old.clone(),
        new_master: new.clone(),
        layout,
        nodes: nodes.to_vec(),
        kinds,
        before,
        after,
        siblings,
        children,
        dns: DnsChange {
            name: config.write_dns_name.to_string(),
            zone: config.dns.zone.to_string(),
            server: config.dns.server.to_string(),
            old: ipv4(old_node)?,
            new: ipv4(new_node)?,
            ttl: config.dns.ttl_secs.get().min(u32::MAX.into()) as u32,
        },
        pool,
        settings,
    })
}

fn names(report: &TopologyReport) -> Vec<String> {
    report.servers.iter().map(|s| s.name.clone()).collect()
}

fn pool_change(
    config: &MysqlConfig,
    settings: &Settings,
    candidate: &Node,
    old: &Node,
    slots: Option<&[Slot]>,
) -> anyhow::Result<Option<PoolChange>> {
    let backend = config.haproxy.read_backend.to_string();
    let matches = |addr: &str, port: u16| {
        port == candidate.port
            && (candidate.ip.map(|i| i.to_string()).as_deref() == Some(addr)
                || addr == candidate.host)
    };
    let slot = match slots {
        Some(slots) => slots
            .iter()
            .find(|s| s.backend == backend && matches(&s.addr, s.port))
            .map(|s| (s.name.clone(), s.endpoint())),
        None => std::fs::read_to_string(&settings.haproxy_config)
            .ok()
            .and_then(|text| configured_slot(&text, &backend, &matches)),
    };
    let Some((slot, before)) = slot else {
        return Ok(None);
    };
    let addr = old
        .ip
        .map(|i| i.to_string())
        .with_context(|| format!("{}: the host does not resolve", old.label()))?;
    Ok(Some(PoolChange {
        backend,
        slot,
        before,
        addr,
        port: old.port,
    }))
}

/// The first `server NAME ADDR:PORT` of `backend` in `haproxy.cfg` that `matches`.
fn configured_slot(
    text: &str,
    backend: &str,
    matches: &dyn Fn(&str, u16) -> bool,
) -> Option<(String, String)> {
    let mut inside = false;
    for line in text.lines() {
        let w: Vec<&str> = line.split_whitespace().collect();
        if !line.starts_with([' ', '\t']) && !w.is_empty() {
            inside = matches!(w.as_slice(), ["backend" | "listen", b, ..] if *b == backend);
        }
        if inside
            && let ["server", name, addr, ..] = w.as_slice()
            && let Some((a, p)) = addr.rsplit_once(':')
            && let Ok(p) = p.parse::<u16>()
            && matches(a, p)
        {
            return Some((name.to_string(), addr.to_string()));
        }
    }
    None
}

/// What each step does when run (see [`steps`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepKind {
    /// Every check; refuses (exit 3) when one fails.
    Preflight,
    /// Move this sibling under the candidate.
    MoveUnderNew(String),
    /// Drain the candidate's slot.
    Drain,
    /// Freeze writes on the old master.
    Freeze,
    /// The candidate executes the final GTID set.
    CatchUp,
    /// The candidate becomes writable.
    Promote,
    /// The write name moves (point of no return).
    Dns,
    /// The old master replicates from the candidate.
    Attach,
    /// The candidate forgets its old channel.
    ForgetChannel,
    /// Move this replica of the candidate under the old master (mirror).
    MoveUnderOld(String),
    /// The old master takes the candidate's slot.
    Pool,
    /// Marker write, tree, lag, DNS, pool.
    Verify,
}

impl SwitchoverInput {
    /// The node called `name`.
    pub fn node(&self, name: &str) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .expect("every name in the input is a node")
    }

    /// The flavour and version of `name`.
    pub fn kind(&self, name: &str) -> ServerKind {
        *self
            .kinds
            .get(name)
            .expect("every server of the input was read")
    }

    /// Every server name in config order.
    pub fn order(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.name.clone()).collect()
    }

    /// `[Slave_02 127.0.0.13:3306]` prefix of a printed statement.
    fn on(&self, name: &str) -> String {
        let n = self.node(name);
        format!("[{} {}:{}]", n.name, n.host, n.port)
    }

    /// The host other servers use to reach `name` (as configured).
    pub fn host_of(&self, name: &str) -> (&str, u16) {
        let n = self.node(name);
        (&n.host, n.port)
    }
}

/// Where the saved input of a run lives: `<state>/mysql/<run_key>.json`.
pub fn input_path(state_dir: &Path, run_key: &str) -> PathBuf {
    state_dir.join("mysql").join(format!("{run_key}.json"))
}

/// Saves the input (0600: it names files, never secrets).
pub fn save_input(state_dir: &Path, input: &SwitchoverInput) -> anyhow::Result<PathBuf> {
    let path = input_path(state_dir, &input.run_key);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let text = serde_json::to_string_pretty(input).expect("inputs serialize");
    opskit_core::util::write_atomic(&path, text.as_bytes(), 0o600)?;
    Ok(path)
}

/// A switchover whose journal says it did not finish (interrupted, or stopped after a step
/// failed without being rolled back): its saved input.
pub fn unfinished(state_dir: &Path) -> anyhow::Result<Option<SwitchoverInput>> {
    use opskit_core::journal::{Journal, Outcome};
    let dir = state_dir.join("journal").join(crate::RUNBOOK);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Ok(None);
    };
    let mut keys: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_suffix(".jsonl")
                .filter(|k| k.starts_with("switchover-"))
                .map(str::to_string)
        })
        .collect();
    keys.sort();
    for key in keys.into_iter().rev() {
        let state = Journal::read_state(&dir.join(format!("{key}.jsonl")))?;
        if state.interrupted || state.last_outcome == Some(Outcome::Failed) {
            let path = input_path(state_dir, &key);
            let text = std::fs::read_to_string(&path).with_context(|| {
                format!(
                    "the unfinished switchover {key} has no saved plan {}",
                    path.display()
                )
            })?;
            let input = serde_json::from_str(&text)
                .with_context(|| format!("reading the saved plan {}", path.display()))?;
            return Ok(Some(input));
        }
    }
    Ok(None)
}
