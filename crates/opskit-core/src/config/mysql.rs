//! `[mysql]`: the replication topology of spec §4 and §5.

use serde::{Deserialize, Serialize};

use super::value::{DomainName, Name};

/// One MySQL server of the topology.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MysqlServer {
    /// The server's name in the topology (`Master`, `Slave_01`, ...).
    pub name: Name,
    /// Its host name or address.
    pub host: String,
    /// Its port.
    #[serde(default = "default_port")]
    pub port: u16,
    /// The server it replicates from (none for the master).
    #[serde(default)]
    pub replicates_from: Option<Name>,
}

fn default_port() -> u16 {
    3306
}

/// The MySQL topology and the names applications use.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MysqlConfig {
    /// DNS name applications write through.
    pub write_dns_name: DomainName,
    /// DNS name of the HAProxy that spreads reads over the replicas.
    pub read_dns_name: DomainName,
    /// The server to promote in a switchover.
    pub promote: Name,
    /// Every server of the topology.
    pub servers: Vec<MysqlServer>,
}

impl Default for MysqlConfig {
    fn default() -> Self {
        let s = |name: &str, host: &str, from: Option<&str>| MysqlServer {
            name: name.parse().expect("valid default"),
            host: host.into(),
            port: 3306,
            replicates_from: from.map(|f| f.parse().expect("valid default")),
        };
        MysqlConfig {
            write_dns_name: "mysql-master.ipo.com".parse().expect("valid default"),
            read_dns_name: "mysql-slave.ipo.com".parse().expect("valid default"),
            promote: "Slave_01".parse().expect("valid default"),
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
    /// Cross-field checks: returns `(key, reason)` for the first problem.
    pub fn check(&self) -> Result<(), (String, String)> {
        let known = |n: &Name| self.servers.iter().any(|s| &s.name == n);
        if !known(&self.promote) {
            return Err((
                "mysql.promote".into(),
                format!("`{}` is not one of mysql.servers", self.promote),
            ));
        }
        for s in &self.servers {
            if let Some(from) = &s.replicates_from
                && !known(from)
            {
                return Err((
                    "mysql.servers".into(),
                    format!("`{}` replicates from unknown server `{from}`", s.name),
                ));
            }
        }
        Ok(())
    }
}
