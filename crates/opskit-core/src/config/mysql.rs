//! `[mysql]`: the replication topology of spec §4 and §5, the accounts the switchover uses,
//! the DNS name it moves (RFC 2136 + TSIG) and the HAProxy read pool it changes.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::value::{AbsPath, DomainName, Ident, Name, Positive};

/// A server's host: a DNS name (`mysql-01.ipo.com`) or an IP address (`10.0.0.11`, `fd00::11`).
///
/// Validated on parse, so it is safe inside SQL string literals (`MASTER_HOST='…'`), DNS
/// records and HAProxy commands: letters, digits, `-`, `.` and `:` only.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ServerHost(String);

impl ServerHost {
    /// The validated text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The address, when the host is an IP literal.
    pub fn ip(&self) -> Option<IpAddr> {
        self.0.parse().ok()
    }
}

impl TryFrom<String> for ServerHost {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        if s.parse::<IpAddr>().is_ok() {
            return Ok(ServerHost(s));
        }
        let all_digits_and_dots = s.chars().all(|c| c.is_ascii_digit() || c == '.');
        if all_digits_and_dots || s.parse::<DomainName>().is_err() {
            return Err(format!(
                "`{s}` is neither an IP address nor a host name (letters, digits, '-' and dots; \
                 no spaces, quotes or ';')"
            ));
        }
        Ok(ServerHost(s))
    }
}

impl FromStr for ServerHost {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::try_from(s.to_string())
    }
}

impl From<ServerHost> for String {
    fn from(v: ServerHost) -> String {
        v.0
    }
}

impl fmt::Display for ServerHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A `host[:port]` (IPv6 as `[addr]:port`): where a name server answers.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct HostPort {
    /// The host.
    pub host: ServerHost,
    /// The port.
    pub port: u16,
    text: String,
}

impl HostPort {
    /// `host` on `port`.
    pub fn new(host: ServerHost, port: u16) -> HostPort {
        let text = match host.ip() {
            Some(IpAddr::V6(_)) => format!("[{host}]:{port}"),
            _ => format!("{host}:{port}"),
        };
        HostPort { host, port, text }
    }
}

impl TryFrom<String> for HostPort {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let bad_port = |p: &str| format!("`{s}`: the port `{p}` is not a number from 1 to 65535");
        let parse_port = |p: &str| match p.parse::<u16>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(bad_port(p)),
        };
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (h, after) = rest
                .split_once(']')
                .ok_or_else(|| format!("`{s}`: an IPv6 address must be written [addr]:port"))?;
            match after.strip_prefix(':') {
                Some(p) => (h.to_string(), parse_port(p)?),
                None if after.is_empty() => (h.to_string(), 53),
                None => return Err(format!("`{s}`: expected [addr]:port")),
            }
        } else if s.matches(':').count() == 1 {
            let (h, p) = s.split_once(':').expect("one colon");
            (h.to_string(), parse_port(p)?)
        } else {
            (s.clone(), 53)
        };
        Ok(HostPort::new(host.parse()?, port))
    }
}

impl From<HostPort> for String {
    fn from(v: HostPort) -> String {
        v.text
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// One MySQL server of the topology.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MysqlServer {
    /// The server's name in the topology (`Master`, `Slave_01`, ...).
    pub name: Name,
    /// Its host name or address.
    pub host: ServerHost,
    /// Its port.
    #[serde(default = "default_port")]
    pub port: u16,
    /// The server it replicates from (none for the master): what the operator expects; the
    /// real tree is discovered from the servers and a difference is reported.
    #[serde(default)]
    pub replicates_from: Option<Name>,
}

fn default_port() -> u16 {
    3306
}

/// Where the write name lives: the authoritative server that takes RFC 2136 updates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MysqlDnsConfig {
    /// The primary name server of the zone (`host[:port]`, port 53 by default).
    pub server: HostPort,
    /// The zone that holds `write_dns_name`.
    pub zone: DomainName,
    /// A 0600 file with the TSIG key in BIND's format (`tsig-keygen` output, the same file
    /// `nsupdate -k` takes); HMAC-SHA256/384/512 only.
    pub tsig_key_file: AbsPath,
    /// The TTL of the A record written by a switchover (lower it ahead of time: clients cache
    /// the old address for the old TTL).
    pub ttl_secs: Positive,
}

impl Default for MysqlDnsConfig {
    fn default() -> Self {
        MysqlDnsConfig {
            server: "ns1.ipo.com:53"
                .to_string()
                .try_into()
                .expect("valid default"),
            zone: "ipo.com".parse().expect("valid default"),
            tsig_key_file: "/etc/opskit/mysql-master.tsig.key"
                .parse()
                .expect("valid default"),
            ttl_secs: Positive::new(60),
        }
    }
}

/// The HAProxy that spreads reads (`read_dns_name`) over the replicas.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MysqlHaproxyConfig {
    /// Its runtime API socket (`stats socket … level admin`).
    pub admin_socket: AbsPath,
    /// Its configuration file: the read pool change is written here too, so a reload keeps it.
    pub config_path: AbsPath,
    /// The backend of the read pool; its servers are matched to the topology by address and
    /// port.
    pub read_backend: Ident,
    /// The haproxy binary (`haproxy -c -f` checks the changed file before it replaces the old).
    pub binary: AbsPath,
}

impl Default for MysqlHaproxyConfig {
    fn default() -> Self {
        MysqlHaproxyConfig {
            admin_socket: "/var/lib/haproxy/admin.sock"
                .parse()
                .expect("valid default"),
            config_path: "/etc/haproxy/haproxy.cfg".parse().expect("valid default"),
            read_backend: "mysql_slave".parse().expect("valid default"),
            binary: "/usr/sbin/haproxy".parse().expect("valid default"),
        }
    }
}

/// `mysql://user@host:port` with no password (passwords come from a 0600 file): a replica the
/// doctor asks or the path `probe-idle` measures.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MysqlDsn {
    /// The user, when the DSN names one.
    pub user: Option<String>,
    /// Host name or address.
    pub host: String,
    /// Port (3306 when not written).
    pub port: u16,
}

impl TryFrom<String> for MysqlDsn {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let rest = s
            .strip_prefix("mysql://")
            .unwrap_or(&s)
            .trim_end_matches('/');
        let (user, hostport) = match rest.rsplit_once('@') {
            Some((u, _)) if u.contains(':') => {
                return Err(format!(
                    "`{s}`: a DSN carries no password (it is read from the configured password file)"
                ));
            }
            Some((u, h)) => (Some(u.to_string()), h),
            None => (None, rest),
        };
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) => (
                h,
                p.parse::<u16>()
                    .ok()
                    .filter(|p| *p > 0)
                    .ok_or_else(|| format!("`{s}`: `{p}` is not a port from 1 to 65535"))?,
            ),
            None => (hostport, 3306),
        };
        host.parse::<ServerHost>()
            .map_err(|e| format!("`{s}`: expected mysql://user@host:port ({e})"))?;
        let ok = |c: char| c.is_ascii_alphanumeric() || "-._".contains(c);
        if user
            .as_deref()
            .is_some_and(|u| u.is_empty() || !u.chars().all(ok))
        {
            return Err(format!(
                "`{s}`: the user has characters outside [A-Za-z0-9._-]"
            ));
        }
        Ok(MysqlDsn {
            user,
            host: host.to_string(),
            port,
        })
    }
}

impl FromStr for MysqlDsn {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::try_from(s.to_string())
    }
}

impl From<MysqlDsn> for String {
    fn from(v: MysqlDsn) -> String {
        v.to_string()
    }
}

impl fmt::Display for MysqlDsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.user {
            Some(u) => write!(f, "mysql://{u}@{}:{}", self.host, self.port),
            None => write!(f, "mysql://{}:{}", self.host, self.port),
        }
    }
}

/// `[mysql.doctor]`: where `opskit mysql doctor` and `probe-idle` look by default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MysqlDoctorConfig {
    /// HAProxy logs (tcplog; plain, rotated or `.gz`), read in full.
    pub haproxy_logs: Vec<AbsPath>,
    /// The replicas' MySQL/MariaDB error logs.
    pub mysql_error_logs: Vec<AbsPath>,
    /// The replicas to ask; empty: every server of `mysql.servers` that replicates, as
    /// `admin_user`.
    pub replicas: Vec<MysqlDsn>,
    /// The path `probe-idle` measures (HAProxy's frontend); unset:
    /// `mysql://<admin_user>@<read_dns_name>:3306`.
    pub probe_dsn: Option<MysqlDsn>,
    /// A 0600 file with the password of the DSNs' user; unset: `mysql.admin_password_file`.
    pub password_file: Option<AbsPath>,
    /// The application's longest idle between two queries on one handle (`--app-idle`).
    pub app_idle_secs: Option<Positive>,
    /// The longest idle `probe-idle` tries (`--max`).
    pub probe_max_secs: Positive,
}

impl Default for MysqlDoctorConfig {
    fn default() -> Self {
        MysqlDoctorConfig {
            haproxy_logs: vec!["/var/log/haproxy.log".parse().expect("valid default")],
            mysql_error_logs: Vec::new(),
            replicas: Vec::new(),
            probe_dsn: None,
            password_file: None,
            app_idle_secs: None,
            probe_max_secs: Positive::new(120),
        }
    }
}

/// The MySQL topology, the names applications use and how a switchover reaches them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MysqlConfig {
    /// DNS name applications write through.
    pub write_dns_name: DomainName,
    /// DNS name of the HAProxy that spreads reads over the replicas.
    pub read_dns_name: DomainName,
    /// The server to promote in a switchover (`--new-master` overrides it).
    pub promote: Name,
    /// The account opskit connects with (needs SUPER or the admin privileges listed in
    /// `docs/runbooks/switchover.md`).
    pub admin_user: Name,
    /// A 0600 file holding `admin_user`'s password.
    pub admin_password_file: AbsPath,
    /// The replication account the old master uses to replicate from the new one.
    pub replication_user: Name,
    /// A 0600 file holding `replication_user`'s password.
    pub replication_password_file: AbsPath,
    /// Seconds allowed to connect and for each statement.
    pub timeout_secs: Positive,
    /// A switchover is refused when a replica lags more than this many seconds, and waits
    /// for the lag to come back under it at the end.
    pub max_lag_secs: Positive,
    /// Seconds the new master may take to execute the frozen master's last transaction;
    /// past it the freeze is undone (writes stay unavailable at most this long).
    pub freeze_timeout_secs: Positive,
    /// A switchover is refused while a write transaction on the master is older than this.
    pub long_write_limit_secs: Positive,
    /// The schema of the marker table the last step writes on the new master and finds on
    /// every replica (`<schema>.switchover_marker`, created if missing).
    pub marker_schema: Ident,
    /// The write name's zone and name server.
    pub dns: MysqlDnsConfig,
    /// The read pool.
    pub haproxy: MysqlHaproxyConfig,
    /// Defaults of `opskit mysql doctor` and `probe-idle`.
    pub doctor: MysqlDoctorConfig,
    /// Every server of the topology.
    pub servers: Vec<MysqlServer>,
}

impl Default for MysqlConfig {
    fn default() -> Self {
        let s = |name: &str, host: &str, from: Option<&str>| MysqlServer {
            name: name.parse().expect("valid default"),
            host: host.parse().expect("valid default"),
            port: 3306,
            replicates_from: from.map(|f| f.parse().expect("valid default")),
        };
        MysqlConfig {
            write_dns_name: "mysql-master.ipo.com".parse().expect("valid default"),
            read_dns_name: "mysql-slave.ipo.com".parse().expect("valid default"),
            promote: "Slave_01".parse().expect("valid default"),
            admin_user: "opskit".parse().expect("valid default"),
            admin_password_file: "/etc/opskit/mysql-admin.password"
                .parse()
                .expect("valid default"),
            replication_user: "repl".parse().expect("valid default"),
            replication_password_file: "/etc/opskit/mysql-repl.password"
                .parse()
                .expect("valid default"),
            timeout_secs: Positive::new(10),
            max_lag_secs: Positive::new(10),
            freeze_timeout_secs: Positive::new(10),
            long_write_limit_secs: Positive::new(5),
            marker_schema: "opskit".parse().expect("valid default"),
            dns: MysqlDnsConfig::default(),
            haproxy: MysqlHaproxyConfig::default(),
            doctor: MysqlDoctorConfig::default(),
            servers: vec![
                s("Master", "mysql-00.ipo.com", None),
                s("Slave_01", "mysql-01.ipo.com", Some("Master")),
                s("Slave_02", "mysql-02.ipo.com", Some("Master")),
                s("Slave_03", "mysql-03.ipo.com", Some("Slave_01")),
                s("Slave_04", "mysql-04.ipo.com", Some("Slave_02")),
            ],
        }
    }
}

impl MysqlConfig {
    /// The configured server called `name`.
    pub fn server(&self, name: &str) -> Option<&MysqlServer> {
        self.servers.iter().find(|s| s.name.as_str() == name)
    }

    /// Cross-field checks: returns `(key, reason)` for the first problem.
    pub fn check(&self) -> Result<(), (String, String)> {
        let known = |n: &Name| self.servers.iter().any(|s| &s.name == n);
        if self.servers.is_empty() {
            return Err((
                "mysql.servers".into(),
                "at least one server is needed".into(),
            ));
        }
        if !known(&self.promote) {
            return Err((
                "mysql.promote".into(),
                format!("`{}` is not one of mysql.servers", self.promote),
            ));
        }
        for (i, s) in self.servers.iter().enumerate() {
            if s.port == 0 {
                return Err(("mysql.servers".into(), format!("`{}` has port 0", s.name)));
            }
            if let Some(from) = &s.replicates_from {
                if !known(from) {
                    return Err((
                        "mysql.servers".into(),
                        format!("`{}` replicates from unknown server `{from}`", s.name),
                    ));
                }
                if from == &s.name {
                    return Err((
                        "mysql.servers".into(),
                        format!("`{}` cannot replicate from itself", s.name),
                    ));
                }
            }
            for other in &self.servers[..i] {
                if other.name == s.name {
                    return Err((
                        "mysql.servers".into(),
                        format!("the name `{}` is used twice", s.name),
                    ));
                }
                if other.host == s.host && other.port == s.port {
                    return Err((
                        "mysql.servers".into(),
                        format!(
                            "`{}` and `{}` are both {}:{}",
                            other.name, s.name, s.host, s.port
                        ),
                    ));
                }
            }
        }
        let zone = self.dns.zone.as_str().trim_end_matches('.');
        let name = self.write_dns_name.as_str().trim_end_matches('.');
        if !(name == zone || name.ends_with(&format!(".{zone}"))) {
            return Err((
                "mysql.dns.zone".into(),
                format!("`{name}` (mysql.write_dns_name) is not inside the zone `{zone}`"),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn hosts_are_names_or_addresses_and_nothing_that_breaks_sql() {
        for ok in ["mysql-01.ipo.com", "10.0.0.11", "fd00::11", "db1"] {
            assert!(ok.parse::<ServerHost>().is_ok(), "{ok}");
        }
        for bad in [
            "",
            "10.0.0.300",
            "x'; DROP USER repl; --",
            "a b",
            "host:3306",
            "1.2.3",
        ] {
            assert!(bad.parse::<ServerHost>().is_err(), "{bad}");
        }
    }

    #[test]
    fn host_port_defaults_to_53_and_reads_ipv6() {
        let p: HostPort = "127.0.0.1:5353".to_string().try_into().unwrap();
        assert_eq!((p.host.as_str(), p.port), ("127.0.0.1", 5353));
        let p: HostPort = "ns1.ipo.com".to_string().try_into().unwrap();
        assert_eq!(p.port, 53);
        let p: HostPort = "[fd00::53]:5353".to_string().try_into().unwrap();
        assert_eq!((p.host.as_str(), p.port), ("fd00::53", 5353));
        assert_eq!(p.to_string(), "[fd00::53]:5353");
        assert!(HostPort::try_from("ns1:0".to_string()).is_err());
        assert!(HostPort::try_from("ns1:x".to_string()).is_err());
    }

    #[test]
    fn bad_mysql_values_name_their_key_and_line() {
        let cases = [
            (
                "[[mysql.servers]]\nname = \"Master\"\nhost = \"db'1\"\n",
                "mysql.servers.host",
                3,
            ),
            ("[mysql]\nmax_lag_secs = 0\n", "mysql.max_lag_secs", 2),
            (
                "[mysql]\nfreeze_timeout_secs = -1\n",
                "mysql.freeze_timeout_secs",
                2,
            ),
            (
                "[mysql.dns]\nserver = \"ns1:99999\"\n",
                "mysql.dns.server",
                2,
            ),
            ("[mysql.dns]\nzone = \"example.org\"\n", "mysql.dns.zone", 2),
            (
                "[mysql.haproxy]\nadmin_socket = \"run/haproxy.sock\"\n",
                "mysql.haproxy.admin_socket",
                2,
            ),
            (
                "[mysql]\nadmin_password_file = \"pw\"\n",
                "mysql.admin_password_file",
                2,
            ),
            ("[mysql]\npromote = \"Slave_09\"\n", "mysql.promote", 2),
            (
                "[mysql.doctor]\nprobe_dsn = \"mysql://app:pw@h:3306\"\n",
                "mysql.doctor.probe_dsn",
                2,
            ),
            (
                "[mysql.doctor]\nreplicas = [\"mysql://u@h:0\"]\n",
                "mysql.doctor.replicas",
                2,
            ),
        ];
        for (text, key, line) in cases {
            let e = Config::parse(text).unwrap_err();
            assert_eq!(e.key.as_deref(), Some(key), "{text}: {e}");
            assert_eq!(e.line, Some(line), "{text}: {e}");
        }
    }

    #[test]
    fn duplicate_servers_are_refused() {
        let mut c = MysqlConfig::default();
        c.servers[2].host = c.servers[1].host.clone();
        let (key, reason) = c.check().unwrap_err();
        assert_eq!(key, "mysql.servers");
        assert!(
            reason.contains("Slave_01") && reason.contains("Slave_02"),
            "{reason}"
        );
    }
}
