//! HAProxy 2.x in front of the replicas: `mysql-slave.ipo.com` of spec §4 and §5.
//!
//! A TCP frontend on `127.0.N.10` (the lab's block, see [`super::mysql::block`]) at the port
//! the MySQL servers share when it is free there; backend `mysql_slave` holds `Slave_01` …
//! `Slave_04` by address with `option mysql-check` (the `haproxy_check` account). The runtime
//! API answers on `<lab>/haproxy/admin.sock` (`level admin`); `option tcplog` lines and state
//! changes go to `<lab>/haproxy/haproxy.log` (the doctor reads both). HAProxy runs in
//! master-worker mode (`-W -db`), so [`HaproxyLab::reload`] is the operator's `systemctl
//! reload`: the master re-reads `haproxy.cfg` and runtime-only changes are lost.
//!
//! `haproxy.cfg` is written on the first start only: a switchover edits it (the old master
//! takes the new master's slot) and a restart must keep that. A restart only refreshes the
//! ports.

use std::io::{Read as _, Write as _};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use opskit_core::config::Config;

use super::mysql::{TOPOLOGY, address, free_port_on};
use super::{Endpoint, LabContext, Server, config_path, write_file};
use crate::daemon::Launch;
use crate::state::{LabState, ServerRecord};

/// The haproxy component.
pub struct Haproxy;

const KIND: &str = "haproxy";
const HAPROXY: &str = "/usr/sbin/haproxy";
/// The read pool's backend.
pub const BACKEND: &str = "mysql_slave";
const START_TIMEOUT: Duration = Duration::from_secs(15);

fn cfg_text(
    socket: &Path,
    bind: std::net::Ipv4Addr,
    port: u16,
    replicas: &[(String, String)],
) -> Result<String> {
    let socket = config_path(socket)?;
    let mut text = format!(
        "# Written by `opskit lab up`: the read pool of spec §4 (mysql-slave.ipo.com).
# A switchover edits the server lines of backend {BACKEND}; a restart keeps them.
global
    log stdout format raw local0 info
    stats socket {socket} mode 600 level admin
    maxconn 512

defaults
    mode tcp
    log global
    option tcplog
    timeout connect 2s
    timeout client 1m
    timeout server 1m

frontend mysql-slave
    bind {bind}:{port}
    default_backend {BACKEND}

backend {BACKEND}
    balance roundrobin
    option mysql-check user haproxy_check post-41
    default-server inter 1s fastinter 200ms downinter 1s fall 2 rise 1
"
    );
    for (name, addr) in replicas {
        text.push_str(&format!("    server {name} {addr} check\n"));
    }
    Ok(text)
}

/// Rewrites the frontend's `bind` and every server's port of an existing config.
fn refresh_ports(text: &str, bind: std::net::Ipv4Addr, port: u16, mysql_port: u16) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let t = line.trim_start();
        let indent = &line[..line.len() - t.len()];
        let words: Vec<&str> = t.split_whitespace().collect();
        match words.as_slice() {
            ["bind", _] => out.push_str(&format!("{indent}bind {bind}:{port}")),
            ["server", name, addr, rest @ ..] => {
                let host = addr.rsplit_once(':').map_or(*addr, |(h, _)| h);
                out.push_str(&format!("{indent}server {name} {host}:{mysql_port}"));
                for r in rest {
                    out.push(' ');
                    out.push_str(r);
                }
            }
            _ => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// The mysql records of this lab (HAProxy fronts them).
fn mysql_records(ctx: &LabContext) -> Result<Vec<ServerRecord>> {
    let state = LabState::load(ctx.dir())?;
    let records: Vec<ServerRecord> = state.of_kind("mysql").cloned().collect();
    if records.is_empty() {
        bail!("the haproxy component fronts the mysql component: start it too (--only mysql,haproxy)");
    }
    Ok(records)
}

impl Server for Haproxy {
    fn start(&self, ctx: &LabContext, previous: &[ServerRecord]) -> Result<Vec<ServerRecord>> {
        let dir = ctx.mkdir("haproxy")?;
        let mysql = mysql_records(ctx)?;
        let mysql_port = mysql[0].port.context("mysql has no port")?;
        let bind = address(ctx.dir(), 10);
        let port = free_port_on(
            &[bind],
            previous.iter().find_map(|r| r.port).or(Some(mysql_port)),
        )?;
        let cfg = dir.join("haproxy.cfg");
        let socket = dir.join("admin.sock");
        let text = match std::fs::read_to_string(&cfg) {
            Ok(old) => refresh_ports(&old, bind, port, mysql_port),
            Err(_) => {
                let replicas: Vec<(String, String)> = TOPOLOGY
                    .iter()
                    .filter(|(_, _, source)| source.is_some())
                    .map(|(name, last, _)| {
                        (name.to_string(), format!("{}:{mysql_port}", address(ctx.dir(), *last)))
                    })
                    .collect();
                cfg_text(&socket, bind, port, &replicas)?
            }
        };
        write_file(&cfg, &text, 0o644)?;
        let _ = std::fs::remove_file(&socket);
        let log = dir.join("haproxy.log");
        let launch = Launch::new(KIND, HAPROXY, &log)
            .arg("-W")
            .arg("-db")
            .arg("-f")
            .arg(&cfg);
        let endpoint = Endpoint {
            address: Some(bind),
            port: Some(port),
            socket: Some(socket.clone()),
        };
        let mut record = ctx.start_process(KIND, launch, endpoint, START_TIMEOUT, || {
            runtime(&socket, "show info").map(drop)
        })?;
        for (k, v) in [
            ("admin_socket", config_path(&socket)?),
            ("config", config_path(&cfg)?),
            ("backend", BACKEND),
            ("binary", HAPROXY),
            ("log_file", config_path(&log)?),
        ] {
            record.details.insert(k.into(), v.into());
        }
        Ok(vec![record])
    }

    fn probe(&self, _ctx: &LabContext, record: &ServerRecord) -> Result<()> {
        runtime(Path::new(record.detail("admin_socket")?), "show info").map(drop)
    }

    fn configure(&self, records: &[ServerRecord], config: &mut Config) -> Result<()> {
        let h = HaproxyLab::from_records(records)?;
        let parse = |p: &Path| config_path(p)?.parse().map_err(anyhow::Error::msg);
        config.mysql.haproxy.admin_socket = parse(&h.admin_socket)?;
        config.mysql.haproxy.config_path = parse(&h.config)?;
        config.mysql.haproxy.read_backend = BACKEND.parse().expect("valid");
        config.mysql.haproxy.binary = HAPROXY.parse().expect("valid");
        let d = &mut config.mysql.doctor;
        d.haproxy_logs = vec![parse(&h.log_file)?];
        d.probe_dsn = Some(
            format!("mysql://{}@{}:{}", super::mysql::ADMIN_USER, h.address, h.port)
                .parse()
                .map_err(anyhow::Error::msg)?,
        );
        Ok(())
    }
}

/// Sends one runtime API command and returns the answer (HAProxy closes after it).
pub fn runtime(socket: &Path, command: &str) -> Result<String> {
    let mut s = UnixStream::connect(socket)
        .with_context(|| format!("connecting to {}", socket.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.set_write_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(format!("{command}\n").as_bytes())?;
    let mut out = String::new();
    s.read_to_string(&mut out)
        .with_context(|| format!("reading the answer to `{command}`"))?;
    Ok(out)
}

/// The lab's HAProxy as a test, drill or the doctor sees it.
#[derive(Debug, Clone)]
pub struct HaproxyLab {
    /// The frontend address (`mysql-slave.ipo.com` resolves to it in the lab's BIND).
    pub address: String,
    /// The frontend port.
    pub port: u16,
    /// The runtime API socket.
    pub admin_socket: PathBuf,
    /// `haproxy.cfg`.
    pub config: PathBuf,
    /// The tcplog file.
    pub log_file: PathBuf,
    /// The master process (signal it to reload).
    pub pid: i32,
}

impl HaproxyLab {
    fn from_records(records: &[ServerRecord]) -> Result<HaproxyLab> {
        let r = records
            .iter()
            .find(|r| r.name == KIND)
            .context("the lab runs no haproxy")?;
        Ok(HaproxyLab {
            address: r.address.clone().context("haproxy has no address")?,
            port: r.port.context("haproxy has no port")?,
            admin_socket: r.detail("admin_socket")?.into(),
            config: r.detail("config")?.into(),
            log_file: r.detail("log_file")?.into(),
            pid: r.pid,
        })
    }

    /// One runtime API command, straight to the socket.
    pub fn runtime(&self, command: &str) -> Result<String> {
        runtime(&self.admin_socket, command)
    }

    /// The read pool as HAProxy has it: `(server name, address:port, operational state)`,
    /// from `show servers state` (op state 2 = running, admin state 1 = forced maintenance).
    pub fn pool(&self) -> Result<Vec<PoolMember>> {
        let text = self.runtime(&format!("show servers state {BACKEND}"))?;
        let mut lines = text.lines().filter(|l| !l.trim().is_empty());
        let _version = lines.next();
        let header: Vec<&str> = lines
            .next()
            .context("`show servers state` printed no header")?
            .trim_start_matches('#')
            .split_whitespace()
            .collect();
        let col = |name: &str| header.iter().position(|h| *h == name);
        let (n, a, p, op, admin) = (
            col("srv_name").context("no srv_name")?,
            col("srv_addr").context("no srv_addr")?,
            col("srv_port").context("no srv_port")?,
            col("srv_op_state").context("no srv_op_state")?,
            col("srv_admin_state").context("no srv_admin_state")?,
        );
        Ok(lines
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .filter(|w| w.len() > n.max(a).max(p).max(op).max(admin))
            .map(|w| PoolMember {
                name: w[n].to_string(),
                addr: format!("{}:{}", w[a], w[p]),
                up: w[op] == "2",
                maintenance: w[admin].parse::<u32>().unwrap_or(0) & 0x01 != 0,
            })
            .collect())
    }

    /// Reloads HAProxy as `systemctl reload` does (SIGUSR2 to the master) and waits until the
    /// new worker answers with the re-read config.
    pub fn reload(&self) -> Result<()> {
        let before = self.worker_pid()?;
        // SAFETY: a signal to the lab's own recorded HAProxy master.
        if unsafe { libc::kill(self.pid, libc::SIGUSR2) } != 0 {
            bail!("signalling haproxy (pid {}): {}", self.pid, std::io::Error::last_os_error());
        }
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(pid) = self.worker_pid()
                && pid != before
            {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("haproxy did not start a new worker within {START_TIMEOUT:?} of the reload")
    }

    fn worker_pid(&self) -> Result<String> {
        let info = self.runtime("show info")?;
        info.lines()
            .find_map(|l| l.strip_prefix("Pid: "))
            .map(str::to_string)
            .context("`show info` has no Pid")
    }
}

/// The settings the doctor's tests and drill switch to reproduce a cause of "gone away";
/// [`HaproxyTimers::default`] is what `lab up` writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HaproxyTimers {
    /// `timeout client` of `defaults`.
    pub client: String,
    /// `timeout server` of `defaults`.
    pub server: String,
    /// `timeout tunnel` of `defaults` (none by default).
    pub tunnel: Option<String>,
    /// `hard-stop-after` of `global` (none by default).
    pub hard_stop_after: Option<String>,
    /// `on-marked-down shutdown-sessions` on the backend's `default-server`.
    pub shutdown_sessions: bool,
}

impl Default for HaproxyTimers {
    fn default() -> Self {
        HaproxyTimers {
            client: "1m".into(),
            server: "1m".into(),
            tunnel: None,
            hard_stop_after: None,
            shutdown_sessions: false,
        }
    }
}

/// `text` with `t` applied: the `defaults` timeouts, `global` hard-stop-after and the
/// backend's `default-server` on-marked-down (server lines are left as a switchover wrote them).
fn apply_timers(text: &str, t: &HaproxyTimers) -> String {
    let mut out = String::new();
    let mut section = "";
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        if !line.starts_with(' ') && !words.is_empty() {
            section = match words[0] {
                "global" => "global",
                "defaults" => "defaults",
                "backend" => "backend",
                _ => "other",
            };
        }
        match (section, words.as_slice()) {
            ("global", ["hard-stop-after", ..]) | ("defaults", ["timeout", "tunnel", ..]) => {
                continue;
            }
            ("global", ["global"]) => {
                out.push_str("global\n");
                if let Some(h) = &t.hard_stop_after {
                    out.push_str(&format!("    hard-stop-after {h}\n"));
                }
                continue;
            }
            ("defaults", ["timeout", "client", ..]) => {
                out.push_str(&format!("    timeout client {}\n", t.client));
                continue;
            }
            ("defaults", ["timeout", "server", ..]) => {
                out.push_str(&format!("    timeout server {}\n", t.server));
                if let Some(tun) = &t.tunnel {
                    out.push_str(&format!("    timeout tunnel {tun}\n"));
                }
                continue;
            }
            ("backend", ["default-server", ..]) => {
                let base = line.replace(" on-marked-down shutdown-sessions", "");
                out.push_str(&base);
                if t.shutdown_sessions {
                    out.push_str(" on-marked-down shutdown-sessions");
                }
                out.push('\n');
                continue;
            }
            _ => {}
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

impl HaproxyLab {
    /// Rewrites `haproxy.cfg` with `timers` and reloads (a fault switch for the doctor's tests
    /// and drill; `HaproxyTimers::default()` restores what `lab up` wrote).
    pub fn set_timers(&self, timers: &HaproxyTimers) -> Result<()> {
        let text = std::fs::read_to_string(&self.config)
            .with_context(|| format!("reading {}", self.config.display()))?;
        write_file(&self.config, &apply_timers(&text, timers), 0o644)?;
        self.reload()
    }
}

/// One server of the read pool, as the runtime API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolMember {
    /// Its name in the backend.
    pub name: String,
    /// `address:port`.
    pub addr: String,
    /// Operational state is running (health checks pass).
    pub up: bool,
    /// In forced maintenance (`set server … state maint`).
    pub maintenance: bool,
}

impl crate::LabView for HaproxyLab {
    fn from_state(state: &LabState) -> Result<HaproxyLab> {
        let records: Vec<ServerRecord> = state.of_kind(KIND).cloned().collect();
        HaproxyLab::from_records(&records)
            .with_context(|| format!("the lab in {}", state.dir.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timers_switch_and_restore_the_written_config() {
        let text = cfg_text(
            Path::new("/tmp/l/haproxy/admin.sock"),
            "127.0.5.10".parse().unwrap(),
            4000,
            &[("Slave_01".into(), "127.0.5.12:4000".into())],
        )
        .unwrap();
        let fault = HaproxyTimers {
            client: "2s".into(),
            server: "3s".into(),
            tunnel: Some("4s".into()),
            hard_stop_after: Some("1s".into()),
            shutdown_sessions: true,
        };
        let changed = apply_timers(&text, &fault);
        for want in [
            "global\n    hard-stop-after 1s\n",
            "    timeout client 2s\n    timeout server 3s\n    timeout tunnel 4s\n",
            "fall 2 rise 1 on-marked-down shutdown-sessions\n",
            "    server Slave_01 127.0.5.12:4000 check\n",
        ] {
            assert!(changed.contains(want), "{want}\n{changed}");
        }
        assert_eq!(apply_timers(&changed, &HaproxyTimers::default()), text);
    }

    #[test]
    fn a_restart_refreshes_ports_and_keeps_the_servers_a_switchover_wrote() {
        let old = "frontend f\n    bind 127.0.5.10:4000\nbackend b\n    server Slave_01 127.0.5.11:4000 check\n";
        let new = refresh_ports(old, "127.0.5.10".parse().unwrap(), 4100, 4200);
        assert_eq!(
            new,
            "frontend f\n    bind 127.0.5.10:4100\nbackend b\n    server Slave_01 127.0.5.11:4200 check\n"
        );
    }
}
