//! BIND 9 serving the zone `ipo.com` on 127.0.0.1 at a free port (named listens only on
//! addresses configured on an interface, and the lab's other `127.0.N.x` addresses are not),
//! with a TSIG key (`mysql-master-update`, HMAC-SHA256, made by
//! `tsig-keygen`) whose `update-policy` allows exactly one thing: changing the A record of
//! `mysql-master.ipo.com`. The zone holds `mysql-master` (the master's address, TTL 5 s),
//! `mysql-slave` (HAProxy's frontend) and `mysql-00` … `mysql-04` (each server), so a writer
//! that follows DNS reaches whichever server the record names.
//!
//! Files under `<lab>/bind/`: `named.conf`, `db.ipo.com` (written on the first start only:
//! dynamic updates live in its journal `db.ipo.com.jnl` and survive restarts, like the MySQL
//! data), `update.key` (0600) and `named.log`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use opskit_core::config::Config;
use opskit_core::proc;

use super::mysql::{TOPOLOGY, address};
use super::{Endpoint, LabContext, Server, config_path, write_file};
use crate::daemon::Launch;
use crate::state::{LabState, ServerRecord};

/// The bind component.
pub struct Bind;

const KIND: &str = "bind";
/// The zone served.
pub const ZONE: &str = "ipo.com";
/// The TSIG key's name.
pub const KEY_NAME: &str = "mysql-master-update";
/// The TTL of `mysql-master.ipo.com` (low, as a switchover needs it).
pub const MASTER_TTL: u32 = 5;
const START_TIMEOUT: Duration = Duration::from_secs(20);
const TOOL_TIMEOUT: Duration = Duration::from_secs(10);

/// A port free for both TCP and UDP on `addr`, preferring `preferred`.
fn free_dns_port(addr: std::net::Ipv4Addr, preferred: Option<u16>) -> Result<u16> {
    let free = |p: u16| {
        std::net::TcpListener::bind((addr, p)).is_ok()
            && std::net::UdpSocket::bind((addr, p)).is_ok()
    };
    if let Some(p) = preferred.filter(|p| free(*p)) {
        return Ok(p);
    }
    for _ in 0..50 {
        let p = std::net::UdpSocket::bind((addr, 0))?.local_addr()?.port();
        if free(p) {
            return Ok(p);
        }
    }
    bail!("no port is free for TCP and UDP on {addr}")
}

fn zone_text(dir: &Path) -> String {
    let mut text = format!(
        "; Written by `opskit lab up` on the first start; updates go to the journal.
$TTL 60
@       IN SOA ns1.{ZONE}. hostmaster.{ZONE}. ( 1 60 60 3600 60 )
        IN NS  ns1.{ZONE}.
ns1     IN A   127.0.0.1
mysql-master {MASTER_TTL} IN A {master}
mysql-slave  IN A {haproxy}
",
        master = address(dir, 11),
        haproxy = address(dir, 10),
    );
    for (i, (_, last, _)) in TOPOLOGY.iter().enumerate() {
        text.push_str(&format!("mysql-{i:02} IN A {}\n", address(dir, *last)));
    }
    text
}

fn named_conf(dir: &Path, bind: std::net::Ipv4Addr, port: u16) -> Result<String> {
    let d = config_path(dir)?;
    Ok(format!(
        "# Written by `opskit lab up`.
include \"{d}/update.key\";
options {{
    directory \"{d}\";
    pid-file \"{d}/named.pid\";
    session-keyfile \"{d}/session.key\";
    managed-keys-directory \"{d}\";
    dump-file \"{d}/named_dump.db\";
    statistics-file \"{d}/named.stats\";
    listen-on port {port} {{ {bind}; }};
    listen-on-v6 {{ none; }};
    recursion no;
    allow-query {{ 127.0.0.0/8; }};
    dnssec-validation no;
    notify no;
}};
controls {{ }};
zone \"{ZONE}\" {{
    type primary;
    file \"{d}/db.{ZONE}\";
    update-policy {{ grant {KEY_NAME}. name mysql-master.{ZONE}. A; }};
}};
"
    ))
}

impl Server for Bind {
    fn start(&self, ctx: &LabContext, previous: &[ServerRecord]) -> Result<Vec<ServerRecord>> {
        let dir = ctx.mkdir("bind")?;
        let bind = std::net::Ipv4Addr::LOCALHOST;
        let port = free_dns_port(bind, previous.iter().find_map(|r| r.port))?;
        let key = dir.join("update.key");
        if !key.exists() {
            let out = proc::run(
                Command::new("tsig-keygen").args(["-a", "hmac-sha256", KEY_NAME]),
                TOOL_TIMEOUT,
            )?
            .checked()
            .context("generating the TSIG key")?;
            write_file(&key, &out.stdout_text(), 0o600)?;
        }
        let zone = dir.join(format!("db.{ZONE}"));
        if !zone.exists() {
            write_file(&zone, &zone_text(ctx.dir()), 0o644)?;
        }
        let conf = dir.join("named.conf");
        write_file(&conf, &named_conf(&dir, bind, port)?, 0o644)?;
        proc::run(Command::new("named-checkconf").arg(&conf), TOOL_TIMEOUT)?
            .checked()
            .context("checking named.conf")?;
        let launch = Launch::new(KIND, "named", dir.join("named.log"))
            .arg("-g")
            .arg("-n")
            .arg("1")
            .arg("-c")
            .arg(&conf);
        let endpoint = Endpoint {
            address: None,
            port: Some(port),
            socket: None,
        };
        let view = BindLab {
            address: bind.to_string(),
            port,
            key_file: key.clone(),
        };
        let mut record = ctx.start_process(KIND, launch, endpoint, START_TIMEOUT, || {
            view.dig(ZONE, "SOA").and_then(|a| {
                if a.is_empty() {
                    bail!("no SOA for {ZONE} yet")
                }
                Ok(())
            })
        })?;
        record
            .details
            .insert("key_file".into(), config_path(&key)?.into());
        record.details.insert("key_name".into(), KEY_NAME.into());
        record.details.insert("zone".into(), ZONE.into());
        Ok(vec![record])
    }

    fn probe(&self, _ctx: &LabContext, record: &ServerRecord) -> Result<()> {
        let view = BindLab::from_record(record)?;
        if view.dig(ZONE, "SOA")?.is_empty() {
            bail!("named answers no SOA for {ZONE}");
        }
        Ok(())
    }

    fn configure(&self, records: &[ServerRecord], config: &mut Config) -> Result<()> {
        let r = records.first().context("no bind record")?;
        let v = BindLab::from_record(r)?;
        let dns = &mut config.mysql.dns;
        dns.server = format!("{}:{}", v.address, v.port)
            .try_into()
            .map_err(anyhow::Error::msg)?;
        dns.zone = ZONE.parse().expect("valid");
        dns.tsig_key_file = config_path(&v.key_file)?
            .parse()
            .map_err(anyhow::Error::msg)?;
        dns.ttl_secs = opskit_core::config::value::Positive::new(MASTER_TTL.into());
        Ok(())
    }
}

/// The lab's BIND as a test or drill sees it.
#[derive(Debug, Clone)]
pub struct BindLab {
    /// Its address.
    pub address: String,
    /// Its port (UDP and TCP).
    pub port: u16,
    /// The TSIG key file (`nsupdate -k`).
    pub key_file: PathBuf,
}

impl BindLab {
    fn from_record(r: &ServerRecord) -> Result<BindLab> {
        Ok(BindLab {
            address: r.address.clone().context("bind has no address")?,
            port: r.port.context("bind has no port")?,
            key_file: r.detail("key_file")?.into(),
        })
    }

    /// `dig @<address> -p <port> <name> <type> +short`: the answer's records, one per line,
    /// straight from the server.
    pub fn dig(&self, name: &str, rtype: &str) -> Result<Vec<String>> {
        let out = proc::run(
            Command::new("dig")
                .arg(format!("@{}", self.address))
                .args(["-p", &self.port.to_string(), name, rtype])
                .args(["+short", "+time=1", "+tries=2"]),
            TOOL_TIMEOUT,
        )?
        .checked()?;
        Ok(out
            .stdout_text()
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with(';'))
            .map(str::to_string)
            .collect())
    }

    /// Runs `nsupdate -k <key file>` with `script` on stdin (after a `server` line for this
    /// BIND); returns its output or the error it printed.
    pub fn nsupdate(&self, key_file: &Path, script: &str) -> Result<String> {
        let input = format!("server {} {}\n{script}", self.address, self.port);
        let out = proc::run_with_input(
            Command::new("nsupdate").arg("-k").arg(key_file),
            Some(input.as_bytes()),
            TOOL_TIMEOUT,
        )?
        .checked()?;
        Ok(out.stdout_text())
    }
}

impl crate::LabView for BindLab {
    fn from_state(state: &LabState) -> Result<BindLab> {
        let r = state
            .server(KIND)
            .with_context(|| format!("the lab in {} runs no bind", state.dir.display()))?;
        BindLab::from_record(r)
    }
}
