//! What every step shares: the plan's input, one admin session per server, the name server
//! with the TSIG key, the HAProxy runtime client; and the operations several steps use (move a
//! replica with GTID positioning, wait for a channel, kill client sessions, report the state
//! of everything).

use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use opskit_core::config::MysqlConfig;
use opskit_core::secret::read_secret_file;

use super::SwitchoverInput;
use crate::dns::{DnsServer, TsigKey};
use crate::flavor::{CLIENT_SESSIONS_SQL, Flavor, ServerKind};
use crate::gtid;
use crate::haproxy::Runtime;
use crate::session::{Credentials, Session};
use crate::topology::{Cluster, ReplicaStatus, TopologyReport, discover};

/// Everything the steps share: the plan, one session per server, DNS and HAProxy.
pub struct Shared {
    /// The plan.
    pub input: SwitchoverInput,
    /// `[mysql]` now (preflight re-discovers with it).
    pub config: MysqlConfig,
    cluster: Mutex<Cluster>,
    dns: DnsServer,
    key: TsigKey,
    haproxy: Runtime,
    repl: Credentials,
    pub(crate) state_dir: PathBuf,
}

impl Shared {
    /// Reads the replication password and the TSIG key (usage errors, exit 2, when a file is
    /// wrong) and prepares the sessions (connected on first use).
    pub fn new(
        input: SwitchoverInput,
        config: &MysqlConfig,
        admin: Credentials,
        state_dir: &std::path::Path,
    ) -> anyhow::Result<Shared> {
        let timeout = Duration::from_secs(input.settings.timeout_secs);
        let repl = Credentials {
            user: input.settings.replication_user.clone(),
            password: read_secret_file(
                &input.settings.replication_password_file,
                "mysql.replication_password_file",
            )?,
        };
        let key = TsigKey::read(config.dns.tsig_key_file.path())?;
        let server: opskit_core::config::mysql::HostPort = input
            .dns
            .server
            .clone()
            .try_into()
            .map_err(|e: String| anyhow!(e))?;
        let dns = DnsServer::new(&server, &input.dns.zone, timeout)?;
        Ok(Shared {
            cluster: Mutex::new(Cluster::new(input.nodes.clone(), admin, timeout)),
            haproxy: Runtime::new(&input.settings.haproxy_socket, timeout),
            dns,
            key,
            repl,
            config: config.clone(),
            state_dir: state_dir.to_path_buf(),
            input,
        })
    }

    pub(crate) fn cluster(&self) -> MutexGuard<'_, Cluster> {
        self.cluster.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` on the admin session of `name`.
    pub(crate) fn on<T>(
        &self,
        name: &str,
        f: impl FnOnce(&mut Session) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        let mut c = self.cluster();
        f(c.session(name)?)
    }

    pub(crate) fn kind(&self, name: &str) -> ServerKind {
        self.input.kind(name)
    }

    pub(crate) fn dns(&self) -> (&DnsServer, &TsigKey) {
        (&self.dns, &self.key)
    }

    pub(crate) fn haproxy(&self) -> &Runtime {
        &self.haproxy
    }

    pub(crate) fn repl(&self) -> &Credentials {
        &self.repl
    }

    /// The tree now, read from the servers.
    pub fn discover(&self) -> TopologyReport {
        let mut c = self.cluster();
        discover(&mut c, &self.config)
    }

    pub(crate) fn timeout(&self) -> Duration {
        Duration::from_secs(self.input.settings.timeout_secs)
    }

    /// The replica status of `name` (`None`: it replicates from nobody).
    pub(crate) fn status(&self, name: &str) -> anyhow::Result<Option<ReplicaStatus>> {
        let k = self.kind(name);
        let rows = self.on(name, |s| s.query(k.show_replica_status()))?;
        Ok(rows.first().map(|r| ReplicaStatus::from_row(&k, r)))
    }

    pub(crate) fn replicates_from(&self, status: &ReplicaStatus, source: &str) -> bool {
        self.input
            .node(source)
            .is(&status.source_host, status.source_port)
    }

    /// `gtid_binlog_pos` / `gtid_executed` of `name`.
    pub(crate) fn executed(&self, name: &str) -> anyhow::Result<String> {
        let k = self.kind(name);
        Ok(self
            .on(name, |s| s.value(&format!("SELECT {}", k.executed_var())))?
            .unwrap_or_default()
            .replace('\n', ""))
    }

    /// Waits until `name` replicates from `source` with both threads running.
    pub(crate) fn wait_running(
        &self,
        name: &str,
        source: &str,
        limit: Duration,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            let st = self.status(name)?;
            match &st {
                Some(s) if s.running() && self.replicates_from(s, source) => return Ok(()),
                _ if Instant::now() >= deadline => {
                    let detail = st.map_or("no replication configured".to_string(), |s| {
                        format!(
                            "source {}:{}, IO {}, SQL {}{}{}",
                            s.source_host,
                            s.source_port,
                            s.io_running,
                            s.sql_running,
                            non_empty("; IO error: ", &s.last_io_error),
                            non_empty("; SQL error: ", &s.last_sql_error)
                        )
                    });
                    bail!(
                        "{name} does not replicate from {source} with both threads running \
                         after {} s: {detail}",
                        limit.as_secs_f64()
                    );
                }
                _ => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// Kills every client session on `name` (not ours, not the replication threads).
    pub(crate) fn kill_clients(&self, name: &str) -> anyhow::Result<usize> {
        self.on(name, |s| {
            let ids: Vec<String> = s
                .query(CLIENT_SESSIONS_SQL)?
                .iter()
                .filter_map(|r| r.at(0).map(str::to_string))
                .collect();
            let mut killed = 0;
            for id in ids {
                match s.exec(&format!("KILL CONNECTION {id}")) {
                    Ok(()) => killed += 1,
                    // 1094: the session ended by itself in between.
                    Err(e) if crate::session::server_code(&e) == Some(1094) => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(killed)
        })
    }

    /// Moves `server` under `to` with GTID positioning (see the parent module's step text).
    pub(crate) fn move_replica(&self, server: &str, to: &str) -> anyhow::Result<()> {
        let k = self.kind(server);
        if let Some(st) = self.status(server)?
            && st.running()
            && self.replicates_from(&st, to)
        {
            return Ok(());
        }
        self.on(server, |s| s.exec(k.stop_replica()))?;
        let pos = self
            .on(server, |s| {
                s.value(&format!("SELECT {}", k.replica_pos_var()))
            })?
            .unwrap_or_default()
            .replace('\n', "");
        let reached = self.wait_has(to, &pos, Duration::from_secs(30));
        if let Err(e) = reached {
            let _ = self.on(server, |s| s.exec(k.start_replica()));
            bail!("{e:#}; {server} was left under its old source");
        }
        let (host, port) = self.input.host_of(to);
        self.on(server, |s| {
            s.exec(&k.change_source(host, port, None, false))?;
            s.exec(k.start_replica())
        })?;
        self.wait_running(server, to, Duration::from_secs(10).max(self.timeout()))
    }

    /// Waits until the binary log of `to` holds every transaction of `pos` (it can then serve a
    /// replica stopped at `pos`). MariaDB: `@@gtid_binlog_pos` covers it (`MASTER_GTID_WAIT`
    /// only looks at a replica's applied position and never returns on a master); MySQL:
    /// `WAIT_FOR_EXECUTED_GTID_SET`.
    pub(crate) fn wait_has(&self, to: &str, pos: &str, limit: Duration) -> anyhow::Result<()> {
        let k = self.kind(to);
        match k.flavor {
            Flavor::Mysql => {
                let v = self.on(to, |s| {
                    s.query_within(
                        &k.wait_for_gtid(pos, limit.as_secs()),
                        limit + self.timeout(),
                    )
                })?;
                match v.first().and_then(|r| r.at(0)) {
                    Some(v) if !k.wait_timed_out(v) => Ok(()),
                    other => {
                        bail!("{to} did not reach {pos} within {limit:?} (wait returned {other:?})")
                    }
                }
            }
            Flavor::Mariadb => {
                let want = gtid::Position::parse(pos).map_err(|e| anyhow!(e))?;
                let deadline = Instant::now() + limit;
                loop {
                    let have = self.executed(to)?;
                    if gtid::Position::parse(&have)
                        .map_err(|e| anyhow!(e))?
                        .covers(&want)
                    {
                        return Ok(());
                    }
                    if Instant::now() >= deadline {
                        bail!(
                            "{to}'s binary log did not reach {pos} within {limit:?} (it has {have})"
                        );
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
    }

    /// The state of every server, DNS and the pool, for an error after the point of no return.
    pub fn state_now(&self) -> String {
        let report = self.discover();
        let mut out = String::from("state now:");
        for s in &report.servers {
            out.push_str(&format!("\n  {}: ", s.name));
            if let Some(e) = &s.error {
                out.push_str(&format!("DOES NOT ANSWER ({e})"));
                continue;
            }
            out.push_str(if s.writable() {
                "read-write"
            } else {
                "read-only"
            });
            match (&s.source, &s.replication) {
                (Some(src), Some(r)) => out.push_str(&format!(
                    ", replicates from {src} (IO {}, SQL {}{}{})",
                    r.io_running,
                    r.sql_running,
                    non_empty(", IO error: ", &r.last_io_error),
                    non_empty(", SQL error: ", &r.last_sql_error)
                )),
                _ => out.push_str(", replicates from nobody"),
            }
            if let Some(want) = self.input.after.get(&s.name) {
                let want = want.as_deref().unwrap_or("nobody");
                if s.source.as_deref().unwrap_or("nobody") != want {
                    out.push_str(&format!(" — planned: from {want}"));
                }
            }
        }
        let d = &self.input.dns;
        match self.dns.query_a(&d.name) {
            Ok(a) => out.push_str(&format!(
                "\n  DNS {} A {} (planned {})",
                d.name,
                a.iter()
                    .map(|x| x.to_string())
                    .collect::<Vec<_>>()
                    .join(" "),
                d.new
            )),
            Err(e) => out.push_str(&format!("\n  DNS {}: {e:#}", d.name)),
        }
        if let Some(p) = &self.input.pool {
            match self.haproxy.servers_state(&p.backend) {
                Ok(slots) => {
                    if let Some(s) = slots.iter().find(|s| s.name == p.slot) {
                        out.push_str(&format!(
                            "\n  HAProxy {}/{}: {} {} (planned {}:{})",
                            p.backend,
                            p.slot,
                            s.endpoint(),
                            s.state_word(),
                            p.addr,
                            p.port
                        ));
                    }
                }
                Err(e) => out.push_str(&format!("\n  HAProxy: {e:#}")),
            }
        }
        out.push_str(
            "\nfix the cause, then run the same `opskit mysql switchover` again: it resumes \
             from the failed step",
        );
        out
    }
}

fn non_empty(prefix: &str, s: &str) -> String {
    if s.is_empty() {
        String::new()
    } else {
        format!("{prefix}{s}")
    }
}
