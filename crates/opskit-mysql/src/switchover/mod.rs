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

pub mod preflight;
pub mod steps;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use chrono::{DateTime, Utc};
use opskit_core::config::MysqlConfig;
use opskit_core::error::refused;
use opskit_core::plan::{PlanDescription, StepSpec};
use serde::{Deserialize, Serialize};

use crate::dns::DnsServer;
use crate::flavor::ServerKind;
use crate::haproxy::{AdminState, Runtime, Slot};
use crate::topology::{Node, TopologyReport};

pub use steps::{Shared, build_plan};

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

/// The printed steps of the plan, each with what runs it (pure; the snapshot tests render
/// these for MariaDB and MySQL).
pub fn specs(input: &SwitchoverInput) -> Vec<(StepSpec, StepKind)> {
    let (old, new) = (input.old_master.as_str(), input.new_master.as_str());
    let s = &input.settings;
    let mut out = vec![(
        StepSpec::new(
            "preflight",
            format!("Check that {new} can safely replace {old} (read-only; nothing changes)"),
        )
        .command(format!(
            "every server answers; GTID on; binary logs (+ log_slave_updates) on {new}{}; every \
             replica running with lag ≤ {} s; no errant transactions on {new}; no write on {old} \
             older than {} s; `{}` can log in to {new} from {old}'s address; the TSIG key \
             passes a prerequisite-only update; the HAProxy admin socket answers",
            if input.layout == Layout::Mirror && !input.children.is_empty() {
                format!(" and {old}")
            } else {
                String::new()
            },
            s.max_lag_secs,
            s.long_write_limit_secs,
            s.replication_user
        ))
        .precondition("the tree on the servers is the planned one")
        .verification("every check passes, else exit 3 and nothing changed"),
        StepKind::Preflight,
    )];
    for sib in &input.siblings {
        out.push((
            move_spec(input, sib, new, true),
            StepKind::MoveUnderNew(sib.clone()),
        ));
    }
    if let Some(p) = &input.pool {
        out.push((drain_spec(input, p), StepKind::Drain));
    }
    out.push((freeze_spec(input), StepKind::Freeze));
    out.push((catch_up_spec(input), StepKind::CatchUp));
    out.push((promote_spec(input), StepKind::Promote));
    out.push((dns_spec(input), StepKind::Dns));
    out.push((attach_spec(input), StepKind::Attach));
    let kn = input.kind(new);
    out.push((
        StepSpec::new(
            format!("forget-channel-{new}"),
            format!("{new} forgets its channel to {old} (kept until now for the rollback)"),
        )
        .command(format!("{} {};", input.on(new), kn.reset_replica_all()))
        .verification(format!(
            "{} on {new} shows no channel",
            kn.show_replica_status()
        )),
        StepKind::ForgetChannel,
    ));
    for c in &input.children {
        out.push((
            move_spec(input, c, old, false),
            StepKind::MoveUnderOld(c.clone()),
        ));
    }
    if let Some(p) = &input.pool {
        out.push((pool_spec(input, p), StepKind::Pool));
    }
    out.push((verify_spec(input), StepKind::Verify));
    out
}

fn move_spec(input: &SwitchoverInput, server: &str, to: &str, before_freeze: bool) -> StepSpec {
    let k = input.kind(server);
    let from = input
        .before
        .get(server)
        .cloned()
        .flatten()
        .unwrap_or_default();
    let (host, port) = input.host_of(to);
    let (fh, fp) = input.host_of(&from);
    let mut spec = StepSpec::new(
        format!("move-{server}-under-{to}"),
        format!(
            "Move {server} (and its replicas) from {from} under {to}{}",
            if before_freeze {
                " — before the freeze, no write impact"
            } else {
                ""
            }
        ),
    )
    .command(format!("{} {};", input.on(server), k.stop_replica()))
    .command(format!(
        "{} SELECT {};   -- = P, the position {server} stopped at",
        input.on(server),
        k.replica_pos_var()
    ))
    .command(match input.kind(to).flavor {
        crate::flavor::Flavor::Mariadb => format!(
            "{} SELECT @@GLOBAL.gtid_binlog_pos;   -- repeat (≤ 30 s) until it covers P: {to}'s \
             binary log has everything {server} has",
            input.on(to)
        ),
        crate::flavor::Flavor::Mysql => format!(
            "{} {};   -- 0: {to} has everything {server} has",
            input.on(to),
            input.kind(to).wait_for_gtid("<P>", 30)
        ),
    })
    .command(format!(
        "{} {};",
        input.on(server),
        k.change_source(host, port, None, false)
    ))
    .command(format!("{} {};", input.on(server), k.start_replica()))
    .precondition(format!(
        "{server} replicates from {from} (or already from {to})"
    ))
    .verification(format!(
        "{} on {server}: source {host}:{port}, both threads running",
        k.show_replica_status()
    ));
    if before_freeze {
        spec = spec.undo(vec![
            format!("{} {};", input.on(server), k.stop_replica()),
            format!(
                "{} {};",
                input.on(server),
                k.change_source(fh, fp, None, false)
            ),
            format!("{} {};", input.on(server), k.start_replica()),
        ]);
    }
    spec
}

fn drain_spec(input: &SwitchoverInput, p: &PoolChange) -> StepSpec {
    let sock = &input.settings.haproxy_socket;
    let new = &input.new_master;
    StepSpec::new(
        format!("drain-{new}"),
        format!(
            "Take {new} out of the read pool ({}/{}): no new reads go to the future master",
            p.backend, p.slot
        ),
    )
    .command(Runtime::shell_line(
        sock,
        &Runtime::set_state_command(&p.backend, &p.slot, AdminState::Drain),
    ))
    .command(format!(
        "# wait (≤ 5 s) for its sessions to finish: `show stat` scur of {}/{}",
        p.backend, p.slot
    ))
    .command(Runtime::shell_line(
        sock,
        &Runtime::set_state_command(&p.backend, &p.slot, AdminState::Maint),
    ))
    .precondition(format!("{}/{} is {} ({new})", p.backend, p.slot, p.before))
    .verification(format!(
        "`show servers state {}`: {} in maintenance",
        p.backend, p.slot
    ))
    .undo(vec![Runtime::shell_line(
        sock,
        &Runtime::set_state_command(&p.backend, &p.slot, AdminState::Ready),
    )])
}

fn freeze_spec(input: &SwitchoverInput) -> StepSpec {
    let old = &input.old_master;
    let k = input.kind(old);
    let on = input.on(old);
    let mut spec = StepSpec::new(
        format!("freeze-{old}"),
        format!(
            "Freeze writes on {old}: read-only, client sessions killed{} — writes are refused \
             from here until the DNS move",
            if k.flavor == crate::flavor::Flavor::Mariadb {
                " (privileged ones too: MariaDB's read_only does not bind SUPER)"
            } else {
                ""
            }
        ),
    )
    .command(format!(
        "{on} SET SESSION lock_wait_timeout = {};",
        input.settings.freeze_timeout_secs
    ));
    for st in k.freeze() {
        spec = spec.command(format!("{on} {st};"));
    }
    let undo: Vec<String> = k.unfreeze().iter().map(|s| format!("{on} {s};")).collect();
    spec.command(format!(
        "{on} {};   -- then KILL CONNECTION <id>; for each",
        crate::flavor::CLIENT_SESSIONS_SQL
    ))
    .command(format!(
        "{on} SELECT {};   -- = G, the final GTID set; read twice 50 ms apart, must not change",
        k.executed_var()
    ))
    .precondition(format!(
        "no write transaction on {old} older than {} s",
        input.settings.long_write_limit_secs
    ))
    .verification(format!("{old} is read-only and G is stable"))
    .undo(undo)
}

fn catch_up_spec(input: &SwitchoverInput) -> StepSpec {
    let (old, new) = (&input.old_master, &input.new_master);
    let k = input.kind(new);
    let t = input.settings.freeze_timeout_secs;
    StepSpec::new(
        format!("catch-up-{new}"),
        format!("Wait (≤ {t} s) until {new} has executed G, the last transaction of {old}"),
    )
    .command(format!(
        "{} {};   -- timeout: undo everything",
        input.on(new),
        k.wait_for_gtid("<G>", t)
    ))
    .command(match k.flavor {
        crate::flavor::Flavor::Mariadb => format!(
            "{} SELECT @@GLOBAL.gtid_binlog_state;   -- no GTID {old} lacks (errant)",
            input.on(new)
        ),
        crate::flavor::Flavor::Mysql => format!(
            "{} SELECT GTID_SUBTRACT(@@GLOBAL.gtid_executed, '<G>');   -- must be ''",
            input.on(new)
        ),
    })
    .precondition(format!(
        "{old}'s GTID is still G (nothing slipped past the freeze)"
    ))
    .verification(format!("{new} executed G and has no errant transaction"))
}

fn promote_spec(input: &SwitchoverInput) -> StepSpec {
    let (old, new) = (&input.old_master, &input.new_master);
    let k = input.kind(new);
    let on = input.on(new);
    let mut spec = StepSpec::new(
        format!("promote-{new}"),
        format!("Promote {new}: stop replicating from {old}, accept writes"),
    )
    .command(format!("{on} {};", k.stop_replica()));
    for st in k.make_writable() {
        spec = spec.command(format!("{on} {st};"));
    }
    let mut undo: Vec<String> = k
        .make_read_only()
        .iter()
        .map(|s| format!("{on} {s};"))
        .collect();
    undo.push(format!("{on} {};", k.start_replica()));
    spec.precondition(format!("{old}'s GTID is still G"))
        .verification(format!("{new} is writable, its replication stopped"))
        .undo(undo)
}

fn dns_spec(input: &SwitchoverInput) -> StepSpec {
    let d = &input.dns;
    let server: opskit_core::config::mysql::HostPort = d
        .server
        .clone()
        .try_into()
        .expect("the server came from a validated config");
    StepSpec::new(
        "dns",
        format!(
            "Move {} from {} ({}) to {} ({}): one RFC 2136 update signed with TSIG whose \
             prerequisite is the old address",
            d.name, input.old_master, d.old, input.new_master, d.new
        ),
    )
    .command(format!(
        "nsupdate -k <mysql.dns.tsig_key_file> <<'EOF'\n{}\nEOF",
        DnsServer::nsupdate_script(&server, &d.zone, &d.name, d.old, d.new, d.ttl)
    ))
    .precondition(format!(
        "{} answers {} (or already {})",
        d.server, d.old, d.new
    ))
    .verification(format!(
        "dig @{} {} A answers exactly {}",
        d.server, d.name, d.new
    ))
    .point_of_no_return()
}

fn attach_spec(input: &SwitchoverInput) -> StepSpec {
    let (old, new) = (&input.old_master, &input.new_master);
    let k = input.kind(old);
    let on = input.on(old);
    let (host, port) = input.host_of(new);
    let pw = format!(
        "<contents of {}>",
        input.settings.replication_password_file.display()
    );
    let mut spec = StepSpec::new(
        format!("attach-{old}"),
        format!("Make {old} a replica of {new} (GTID positioning), read-only"),
    )
    .command(format!(
        "{on} {};   -- then KILL CONNECTION <id>; for each (clients with a stale DNS answer)",
        crate::flavor::CLIENT_SESSIONS_SQL
    ));
    if let Some(p) = k.pre_demote() {
        spec = spec.command(format!("{on} {p};"));
    }
    spec = spec
        .command(format!(
            "{on} {};",
            k.change_source(
                host,
                port,
                Some((&input.settings.replication_user, &pw)),
                true
            )
        ))
        .command(format!("{on} {};", k.start_replica()));
    for st in k.make_read_only() {
        spec = spec.command(format!("{on} {st};"));
    }
    spec.precondition(format!(
        "{old}'s GTID is still G (no transaction of its own after the freeze)"
    ))
    .verification(format!(
        "{} on {old}: source {host}:{port}, both threads running",
        k.show_replica_status()
    ))
}

fn pool_spec(input: &SwitchoverInput, p: &PoolChange) -> StepSpec {
    let sock = &input.settings.haproxy_socket;
    let old = &input.old_master;
    StepSpec::new(
        format!("pool-{old}"),
        format!(
            "Put {old} into the read pool in {}'s slot ({}/{}): runtime API, then haproxy.cfg \
             so a reload keeps it",
            input.new_master, p.backend, p.slot
        ),
    )
    .command(Runtime::shell_line(
        sock,
        &Runtime::set_addr_command(&p.backend, &p.slot, &p.addr, p.port),
    ))
    .command(Runtime::shell_line(
        sock,
        &Runtime::set_state_command(&p.backend, &p.slot, AdminState::Ready),
    ))
    .command(format!(
        "{}: `server {} {}` → `server {} {}:{}` (checked with {} -c first)",
        input.settings.haproxy_config.display(),
        p.slot,
        p.before,
        p.slot,
        p.addr,
        p.port,
        input.settings.haproxy_binary.display()
    ))
    .precondition(format!(
        "{old} replicates with lag ≤ {} s",
        input.settings.max_lag_secs
    ))
    .verification(format!(
        "`show servers state {}`: {} is {}:{} and UP; haproxy.cfg says the same",
        p.backend, p.slot, p.addr, p.port
    ))
}

fn verify_spec(input: &SwitchoverInput) -> StepSpec {
    let new = &input.new_master;
    let k = input.kind(new);
    let schema = &input.settings.marker_schema;
    StepSpec::new(
        "verify",
        format!(
            "Check the new tree: a marker written on {new} reaches every replica, no errant \
             transactions, lag ≤ {} s, DNS and pool as planned",
            input.settings.max_lag_secs
        ),
    )
    .command(format!(
        "{} CREATE TABLE IF NOT EXISTS {schema}.switchover_marker (run_key VARCHAR(128) PRIMARY KEY, written_at TIMESTAMP(6) NOT NULL, server_id INT UNSIGNED NOT NULL);",
        input.on(new)
    ))
    .command(format!(
        "{} REPLACE INTO {schema}.switchover_marker VALUES ('{}', NOW(6), @@server_id); SELECT {};   -- = M",
        input.on(new),
        input.run_key,
        k.executed_var()
    ))
    .command(format!(
        "[every replica] {}; SELECT COUNT(*) FROM {schema}.switchover_marker WHERE run_key = '{}';",
        k.wait_for_gtid("<M>", input.settings.timeout_secs),
        input.run_key
    ))
    .verification(format!(
        "the tree is {}; only {new} is writable",
        render_paths(&input.after, &input.order())
    ))
}

/// The printed plan of `input` (what `--dry-run` shows, without preflight results).
pub fn describe(input: &SwitchoverInput) -> PlanDescription {
    let mut plan = opskit_core::plan::Plan::new(crate::RUNBOOK, &input.run_key, title(input));
    for (name, value) in facts(input) {
        plan.fact(name, value);
    }
    let mut d = plan.describe();
    d.steps = specs(input).into_iter().map(|(s, _)| s).collect();
    d
}

/// The plan's title.
pub fn title(input: &SwitchoverInput) -> String {
    format!(
        "switch the master from {} to {} ({})",
        input.old_master,
        input.new_master,
        match input.layout {
            Layout::Mirror => "mirror",
            Layout::Flat => "flat",
        }
    )
}

/// The plan's facts: servers, trees, DNS and pool changes.
pub fn facts(input: &SwitchoverInput) -> Vec<(String, String)> {
    let order = input.order();
    let mut kinds: Vec<String> = input.kinds.values().map(|k| k.to_string()).collect();
    kinds.dedup();
    let mut f = vec![
        ("servers".to_string(), kinds.join(", ")),
        ("before".to_string(), render_paths(&input.before, &order)),
        ("after".to_string(), render_paths(&input.after, &order)),
        (
            "writes".to_string(),
            format!(
                "{} A {} → {} (TTL {} s, via {})",
                input.dns.name, input.dns.old, input.dns.new, input.dns.ttl, input.dns.server
            ),
        ),
    ];
    f.push((
        "reads".to_string(),
        match &input.pool {
            Some(p) => format!(
                "{}/{}: {} ({}) → {}:{} ({})",
                p.backend, p.slot, p.before, input.new_master, p.addr, p.port, input.old_master
            ),
            None => format!(
                "{} is not in the read pool: the pool is left as it is",
                input.new_master
            ),
        },
    ));
    f.push((
        "write freeze".to_string(),
        format!(
            "at most {} s of waiting for {} (mysql.freeze_timeout_secs), then undone",
            input.settings.freeze_timeout_secs, input.new_master
        ),
    ));
    f
}
