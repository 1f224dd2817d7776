//! The replication topology of spec §4: five MariaDB servers, `Master → Slave_01 → Slave_03`
//! and `Master → Slave_02 → Slave_04`, with GTID (`gtid_strict_mode`, `slave_pos`), binary logs
//! and `log_slave_updates` on every server, row format, small memory.
//!
//! Addressing (notes/lab.md §9): every server has its own loopback address and all share one
//! port, as in production where each has its own host on 3306. A lab takes the block
//! `127.0.N.0/24` with `N` derived from its directory ([`block`]), so labs side by side get
//! different blocks; the port is one that is free on all five addresses. HAProxy's frontend
//! (`haproxy` component) sits on `.10`, BIND (`bind`) on `.53`, the servers on `.11`–`.15`.
//!
//! Accounts, created once on the master and replicated: `opskit` (the admin opskit connects
//! with, ALL PRIVILEGES), `repl` (REPLICATION SLAVE), `app` (DML on schema `lab`, no SUPER:
//! what an application has; the test writers use it) and `haproxy_check` (no password, for
//! `option mysql-check`), all `@'127.%'`. Their passwords are random and sit in 0600 files
//! under `<lab>/mysql/`. Every server starts `read_only=ON` (my.cnf); the lab makes the
//! current master writable after each start, so a restarted lab keeps whatever topology a
//! switchover left.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use opskit_core::config::Config;
use opskit_core::config::mysql::MysqlServer;

use super::mariadb::{MariadbInstance, MariadbServer, STOP_GRACE};
use super::{LabContext, Server, config_path, write_file};
use crate::state::{LabState, ServerRecord};

/// The mysql component.
pub struct Mysql;

const KIND: &str = "mysql";
/// The servers in start order: name, last octet of the address, source (spec §4).
pub const TOPOLOGY: [(&str, u8, Option<&str>); 5] = [
    ("Master", 11, None),
    ("Slave_01", 12, Some("Master")),
    ("Slave_02", 13, Some("Master")),
    ("Slave_03", 14, Some("Slave_01")),
    ("Slave_04", 15, Some("Slave_02")),
];
/// The admin account opskit connects with.
pub const ADMIN_USER: &str = "opskit";
/// The replication account.
pub const REPL_USER: &str = "repl";
/// The application account (DML on `lab`).
pub const APP_USER: &str = "app";
/// The schema the application account writes.
pub const APP_SCHEMA: &str = "lab";
/// Written once the topology was set up, so a restart does not set it up again.
const SETUP_MARKER: &str = "mysql/.topology";
const SETUP_TIMEOUT: Duration = Duration::from_secs(60);

/// The lab's `/24` block on loopback: `127.0.N.0`, `N` in 2..=251 from a hash of the lab
/// directory (labs in different directories get different blocks unless the hash collides;
/// ports are picked free on every address, so even then nothing clashes).
pub fn block(dir: &Path) -> u8 {
    // FNV-1a: stable across Rust versions, unlike DefaultHasher.
    let mut h: u32 = 0x811c_9dc5;
    for b in dir.as_os_str().as_encoded_bytes() {
        h = (h ^ u32::from(*b)).wrapping_mul(0x0100_0193);
    }
    2 + (h % 250) as u8
}

/// The loopback address `127.0.N.<last>` of the lab in `dir`.
pub fn address(dir: &Path, last: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, block(dir), last)
}

/// A port free on every one of `addrs` (TCP), preferring `preferred`.
pub fn free_port_on(addrs: &[Ipv4Addr], preferred: Option<u16>) -> Result<u16> {
    let free_everywhere = |p: u16| {
        addrs
            .iter()
            .all(|a| std::net::TcpListener::bind((*a, p)).is_ok())
    };
    if let Some(p) = preferred.filter(|p| free_everywhere(*p)) {
        return Ok(p);
    }
    for _ in 0..50 {
        let l = std::net::TcpListener::bind((addrs[0], 0))
            .with_context(|| format!("binding {}:0", addrs[0]))?;
        let p = l.local_addr()?.port();
        drop(l);
        if free_everywhere(p) {
            return Ok(p);
        }
    }
    bail!("no TCP port is free on all of {addrs:?}")
}

fn instance(ctx: &LabContext, name: &str, last: u8, server_id: u32, port: u16) -> MariadbInstance {
    let address = address(ctx.dir(), last);
    MariadbInstance {
        name: name.to_string(),
        dir: format!("mysql/{}", name.to_ascii_lowercase()),
        address,
        port: Some(port),
        server_id,
        extra_cnf: format!(
            "log-bin=binlog\nrelay-log=relay\nlog-slave-updates=ON\ngtid-strict-mode=ON\n\
             binlog-format=ROW\nread-only=ON\nreport-host={address}\nreport-port={port}\n\
             max_connections=80\n"
        ),
    }
}

fn random_secret() -> Result<String> {
    use std::io::Read as _;
    let mut b = [0u8; 12];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .context("reading /dev/urandom")?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// The password in `file`, creating it (0600, random) the first time.
fn secret_file(file: &Path) -> Result<String> {
    if let Ok(s) = std::fs::read_to_string(file) {
        return Ok(s.trim().to_string());
    }
    let s = random_secret()?;
    write_file(file, &format!("{s}\n"), 0o600)?;
    Ok(s)
}

impl Server for Mysql {
    fn start(&self, ctx: &LabContext, previous: &[ServerRecord]) -> Result<Vec<ServerRecord>> {
        let dir = ctx.mkdir("mysql")?;
        let addrs: Vec<Ipv4Addr> = TOPOLOGY
            .iter()
            .map(|(_, last, _)| address(ctx.dir(), *last))
            .collect();
        let port = free_port_on(&addrs, previous.iter().find_map(|r| r.port))?;
        let secrets = [
            ("admin_password_file", dir.join("admin.password")),
            ("replication_password_file", dir.join("repl.password")),
            ("app_password_file", dir.join("app.password")),
        ];
        for (_, f) in &secrets {
            secret_file(f)?;
        }
        let mut records = Vec::new();
        for (i, (name, last, _)) in TOPOLOGY.iter().enumerate() {
            let prev = previous.iter().find(|r| r.name == *name);
            let mut r = instance(ctx, name, *last, i as u32 + 1, port).start(ctx, KIND, prev)?;
            for (k, f) in &secrets {
                r.details.insert((*k).into(), config_path(f)?.into());
            }
            records.push(r);
        }
        let servers: Vec<MariadbServer> = records
            .iter()
            .map(MariadbServer::from_record)
            .collect::<Result<_>>()?;
        if ctx.path(SETUP_MARKER).exists() {
            resume_topology(&servers, port)?;
        } else {
            set_up_topology(&servers, &dir, port)?;
            write_file(&ctx.path(SETUP_MARKER), "", 0o644)?;
        }
        Ok(records)
    }

    fn probe(&self, _ctx: &LabContext, record: &ServerRecord) -> Result<()> {
        MariadbServer::from_record(record)?.sql("SELECT 1")?;
        Ok(())
    }

    fn configure(&self, records: &[ServerRecord], config: &mut Config) -> Result<()> {
        let view = MysqlLab::from_records(records)?;
        let m = &mut config.mysql;
        m.servers = view
            .servers
            .iter()
            .map(|s| MysqlServer {
                name: s.name.parse().expect("topology names are valid"),
                host: s.address.to_string().parse().expect("an address"),
                port: s.port,
                replicates_from: s.spec_source.map(|n| n.parse().expect("valid")),
            })
            .collect();
        m.admin_user = ADMIN_USER.parse().expect("valid");
        m.admin_password_file = abs(&view.admin_password_file)?;
        m.replication_user = REPL_USER.parse().expect("valid");
        m.replication_password_file = abs(&view.replication_password_file)?;
        // The doctor reads the replicas' error logs (mariadbd writes them to its lab log).
        m.doctor.mysql_error_logs = records
            .iter()
            .filter(|r| TOPOLOGY.iter().any(|(n, _, src)| *n == r.name && src.is_some()))
            .map(|r| abs(&r.log))
            .collect::<Result<_>>()?;
        Ok(())
    }

    fn stop_grace(&self) -> Duration {
        STOP_GRACE
    }
}

fn abs(p: &Path) -> Result<opskit_core::config::value::AbsPath> {
    config_path(p)?.parse().map_err(anyhow::Error::msg)
}

/// First start: accounts and schema on the master, then every replica pointed at its source.
fn set_up_topology(servers: &[MariadbServer], dir: &Path, port: u16) -> Result<()> {
    let pw = |f: &str| secret_file(&dir.join(f));
    let (admin, repl, app) = (pw("admin.password")?, pw("repl.password")?, pw("app.password")?);
    let master = &servers[0];
    master
        .sql(&format!(
            "SET GLOBAL read_only=OFF;
             CREATE USER '{REPL_USER}'@'127.%' IDENTIFIED BY '{repl}';
             GRANT REPLICATION SLAVE, SLAVE MONITOR ON *.* TO '{REPL_USER}'@'127.%';
             CREATE USER '{ADMIN_USER}'@'127.%' IDENTIFIED BY '{admin}';
             GRANT ALL PRIVILEGES ON *.* TO '{ADMIN_USER}'@'127.%' WITH GRANT OPTION;
             CREATE USER 'haproxy_check'@'127.%';
             CREATE USER '{APP_USER}'@'127.%' IDENTIFIED BY '{app}';
             CREATE DATABASE {APP_SCHEMA};
             GRANT SELECT, INSERT, UPDATE, DELETE, CREATE, DROP ON {APP_SCHEMA}.* TO '{APP_USER}'@'127.%';
             CREATE TABLE {APP_SCHEMA}.writes (writer VARCHAR(32) NOT NULL, seq BIGINT NOT NULL,
               server_id INT NOT NULL, ts TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
               PRIMARY KEY (writer, seq)) ENGINE=InnoDB;"
        ))
        .context("creating the accounts and schema on Master")?;
    for (i, (name, _, source)) in TOPOLOGY.iter().enumerate().skip(1) {
        let src = TOPOLOGY
            .iter()
            .position(|(n, _, _)| Some(*n) == *source)
            .expect("a known source");
        servers[i]
            .sql(&format!(
                "CHANGE MASTER TO MASTER_HOST='{}', MASTER_PORT={port}, MASTER_USER='{REPL_USER}',
                   MASTER_PASSWORD='{repl}', MASTER_USE_GTID=slave_pos, MASTER_CONNECT_RETRY=1;
                 START SLAVE;",
                servers[src].address
            ))
            .with_context(|| format!("pointing {name} at {}", TOPOLOGY[src].0))?;
    }
    wait_in_sync(servers)
}

/// A restart: fix the source port if the port changed, make the current master writable.
fn resume_topology(servers: &[MariadbServer], port: u16) -> Result<()> {
    let mut masters = Vec::new();
    for s in servers {
        let Some(status) = slave_status(s)? else {
            masters.push(s);
            continue;
        };
        let master_port = status.get("Master_Port").cloned();
        if master_port.and_then(|p| p.parse::<u16>().ok()) != Some(port) {
            s.sql(&format!(
                "STOP SLAVE; CHANGE MASTER TO MASTER_PORT={port}; START SLAVE;"
            ))?;
        }
    }
    if let [master] = masters.as_slice() {
        master.sql("SET GLOBAL read_only=OFF")?;
    } else {
        tracing::warn!(
            "the lab topology has {} servers without a source; none was made writable",
            masters.len()
        );
    }
    Ok(())
}

/// `SHOW SLAVE STATUS` as column → value, or `None` when the server replicates from nobody.
pub fn slave_status(s: &MariadbServer) -> Result<Option<std::collections::BTreeMap<String, String>>> {
    let out = opskit_core::proc::run_with_input(
        s.client_command().arg("--batch"),
        Some(b"SHOW SLAVE STATUS"),
        Duration::from_secs(30),
    )
    .and_then(opskit_core::proc::Output::checked)
    .with_context(|| format!("SHOW SLAVE STATUS on {}", s.address))?;
    let text = out.stdout_text();
    let mut lines = text.lines();
    let (Some(header), Some(row)) = (lines.next(), lines.next()) else {
        return Ok(None);
    };
    Ok(Some(
        header
            .split('\t')
            .zip(row.split('\t'))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    ))
}

/// Waits until every replica runs and has what the master has.
fn wait_in_sync(servers: &[MariadbServer]) -> Result<()> {
    let target = servers[0].sql("SELECT @@gtid_binlog_pos")?.trim().to_string();
    let deadline = Instant::now() + SETUP_TIMEOUT;
    for (s, (name, _, _)) in servers.iter().zip(TOPOLOGY).skip(1) {
        loop {
            let out = s.sql(&format!(
                "SELECT MASTER_GTID_WAIT('{target}', 1), \
                 (SELECT COUNT(*) FROM information_schema.processlist WHERE command = 'Slave_IO')"
            ))?;
            if out.split_whitespace().collect::<Vec<_>>() == ["0", "1"] {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "{name} did not catch up with Master ({target}) within {}s: {}",
                    SETUP_TIMEOUT.as_secs(),
                    s.sql("SHOW SLAVE STATUS\\G").unwrap_or_default()
                );
            }
        }
    }
    Ok(())
}

/// One server of the lab's topology.
#[derive(Debug, Clone)]
pub struct MysqlInstance {
    /// Its spec name (`Master`, `Slave_01`, …).
    pub name: String,
    /// Its own loopback address.
    pub address: Ipv4Addr,
    /// The port every server shares.
    pub port: u16,
    /// The source it has in spec §4 (the lab's starting tree).
    pub spec_source: Option<&'static str>,
    /// SQL as root over its socket.
    pub server: MariadbServer,
    /// Its `mariadbd` process id (tests stop and continue it).
    pub pid: i32,
}

/// The lab's five servers as a test or drill sees them.
#[derive(Debug, Clone)]
pub struct MysqlLab {
    /// In [`TOPOLOGY`] order.
    pub servers: Vec<MysqlInstance>,
    /// The port they share.
    pub port: u16,
    /// `opskit`'s password file.
    pub admin_password_file: PathBuf,
    /// `repl`'s password file.
    pub replication_password_file: PathBuf,
    /// `app`'s password file.
    pub app_password_file: PathBuf,
}

impl MysqlLab {
    fn from_records(records: &[ServerRecord]) -> Result<MysqlLab> {
        let mut servers = Vec::new();
        for (name, _, source) in TOPOLOGY {
            let r = records
                .iter()
                .find(|r| r.name == name)
                .with_context(|| format!("the lab runs no {name}"))?;
            let server = MariadbServer::from_record(r)?;
            servers.push(MysqlInstance {
                name: name.to_string(),
                address: server.address.parse().context("a server address")?,
                port: server.port,
                spec_source: source,
                server,
                pid: r.pid,
            });
        }
        let first = records.first().context("no mysql records")?;
        Ok(MysqlLab {
            port: servers[0].port,
            servers,
            admin_password_file: first.detail("admin_password_file")?.into(),
            replication_password_file: first.detail("replication_password_file")?.into(),
            app_password_file: first.detail("app_password_file")?.into(),
        })
    }

    /// The server called `name`.
    pub fn get(&self, name: &str) -> Result<&MysqlInstance> {
        self.servers
            .iter()
            .find(|s| s.name == name)
            .with_context(|| format!("the lab has no server {name}"))
    }

    /// Runs SQL as root on the server called `name` (see [`MariadbServer::sql`]).
    pub fn sql(&self, name: &str, sql: &str) -> Result<String> {
        self.get(name)?.server.sql(sql)
    }

    /// A fault switch for the doctor's tests and drill: `SET GLOBAL <assignment>` (e.g.
    /// `wait_timeout=2`, `max_allowed_packet=16384`) on every replica (the servers with a
    /// source in spec §4, the ones HAProxy fronts); new connections get the new value.
    pub fn set_global_on_replicas(&self, assignment: &str) -> Result<()> {
        for s in self.servers.iter().filter(|s| s.spec_source.is_some()) {
            s.server
                .sql(&format!("SET GLOBAL {assignment}"))
                .with_context(|| format!("SET GLOBAL {assignment} on {}", s.name))?;
        }
        Ok(())
    }

    /// The application account's password.
    pub fn app_password(&self) -> Result<String> {
        Ok(std::fs::read_to_string(&self.app_password_file)
            .with_context(|| format!("reading {}", self.app_password_file.display()))?
            .trim()
            .to_string())
    }

    /// Who each server replicates from right now (`SHOW SLAVE STATUS` on the servers
    /// themselves): `(name, Some(source name) | None, IO and SQL threads running)`.
    pub fn tree(&self) -> Result<Vec<(String, Option<String>, bool)>> {
        let mut out = Vec::new();
        for s in &self.servers {
            let status = slave_status(&s.server)?;
            let running = status.as_ref().is_some_and(|st| {
                st.get("Slave_IO_Running").map(String::as_str) == Some("Yes")
                    && st.get("Slave_SQL_Running").map(String::as_str) == Some("Yes")
            });
            let source = status.and_then(|st| st.get("Master_Host").cloned()).map(|host| {
                self.servers
                    .iter()
                    .find(|o| o.address.to_string() == host)
                    .map_or_else(|| host.to_string(), |o| o.name.clone())
            });
            out.push((s.name.clone(), source, running));
        }
        Ok(out)
    }
}

impl crate::LabView for MysqlLab {
    fn from_state(state: &LabState) -> Result<MysqlLab> {
        let records: Vec<ServerRecord> = state.of_kind(KIND).cloned().collect();
        MysqlLab::from_records(&records)
            .with_context(|| format!("the lab in {}", state.dir.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_differ_by_directory_and_stay_in_range() {
        let a = block(Path::new("/tmp/lab-a"));
        let b = block(Path::new("/tmp/lab-b"));
        assert_ne!(a, b);
        for i in 0..500 {
            let n = block(Path::new(&format!("/tmp/x{i}")));
            assert!((2..=251).contains(&n));
        }
        assert_eq!(address(Path::new("/tmp/lab-a"), 11).octets()[3], 11);
    }
}
