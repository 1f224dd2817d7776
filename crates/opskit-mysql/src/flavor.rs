//! Server flavour and version, and the SQL each flavour speaks.
//!
//! MariaDB 10.11 keeps the `MASTER`/`SLAVE` statements and has its own GTID (`domain-server-seq`
//! positions, `MASTER_GTID_WAIT`, `MASTER_USE_GTID=slave_pos`, `MASTER_DEMOTE_TO_SLAVE` from
//! 10.10). MySQL 8.0.23+ uses `CHANGE REPLICATION SOURCE`, `SHOW REPLICA STATUS`, GTID sets
//! (`WAIT_FOR_EXECUTED_GTID_SET`, `GTID_SUBTRACT`) and `super_read_only` (8.4 removed the old
//! statements). Every statement the switchover runs comes from here, so the plan printed for
//! each flavour is exactly what runs (see the snapshot tests).

use std::fmt;

use serde::{Deserialize, Serialize};

/// The server software.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Flavor {
    /// MariaDB (10.x, 11.x).
    Mariadb,
    /// Oracle MySQL or Percona Server (8.x).
    Mysql,
}

impl fmt::Display for Flavor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Flavor::Mariadb => "MariaDB",
            Flavor::Mysql => "MySQL",
        })
    }
}

/// `major.minor.patch` of a server (serialized as `"10.11.19"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct Version(pub u32, pub u32, pub u32);

impl From<Version> for String {
    fn from(v: Version) -> String {
        v.to_string()
    }
}

impl TryFrom<String> for Version {
    type Error = String;
    fn try_from(s: String) -> Result<Version, String> {
        let mut n = s.split('.').map(|p| p.parse::<u32>());
        match (n.next(), n.next(), n.next(), n.next()) {
            (Some(Ok(a)), Some(Ok(b)), Some(Ok(c)), None) => Ok(Version(a, b, c)),
            _ => Err(format!("`{s}` is not a version (major.minor.patch)")),
        }
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

/// Flavour and version, read from `SELECT VERSION()`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerKind {
    /// MariaDB or MySQL.
    pub flavor: Flavor,
    /// Its version.
    pub version: Version,
}

impl fmt::Display for ServerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.flavor, self.version)
    }
}

impl ServerKind {
    /// Parses `VERSION()`: `10.11.19-MariaDB-0+deb12u1`, `8.0.36`, `8.4.3-commercial`.
    pub fn parse(version: &str) -> Option<ServerKind> {
        let flavor = if version.contains("MariaDB") {
            Flavor::Mariadb
        } else {
            Flavor::Mysql
        };
        // MariaDB 10 replication-compatible builds once printed `5.5.5-10.x`.
        let v = version.strip_prefix("5.5.5-").unwrap_or(version);
        let mut nums = v
            .split(|c: char| !c.is_ascii_digit())
            .take(3)
            .map(|n| n.parse::<u32>().ok());
        let version = Version(nums.next()??, nums.next()??, nums.next()?.unwrap_or(0));
        Some(ServerKind { flavor, version })
    }

    /// Why opskit cannot switch this server over, if it cannot.
    pub fn unsupported(&self) -> Option<String> {
        match self.flavor {
            Flavor::Mariadb if self.version < Version(10, 5, 0) => Some(format!(
                "{self} is too old: MariaDB 10.5 or later is needed (GTID with slave_pos and \
                 SLAVE MONITOR)"
            )),
            Flavor::Mysql if self.version < Version(8, 0, 23) => Some(format!(
                "{self} is too old: MySQL 8.0.23 or later is needed (CHANGE REPLICATION SOURCE)"
            )),
            _ => None,
        }
    }

    /// The statement that shows a replica's channel.
    pub fn show_replica_status(&self) -> &'static str {
        match self.flavor {
            Flavor::Mariadb => "SHOW SLAVE STATUS",
            Flavor::Mysql => "SHOW REPLICA STATUS",
        }
    }

    /// Stops the replication threads.
    pub fn stop_replica(&self) -> &'static str {
        match self.flavor {
            Flavor::Mariadb => "STOP SLAVE",
            Flavor::Mysql => "STOP REPLICA",
        }
    }

    /// Starts the replication threads.
    pub fn start_replica(&self) -> &'static str {
        match self.flavor {
            Flavor::Mariadb => "START SLAVE",
            Flavor::Mysql => "START REPLICA",
        }
    }

    /// Forgets the replication channel (on the new master, once no revert needs it).
    pub fn reset_replica_all(&self) -> &'static str {
        match self.flavor {
            Flavor::Mariadb => "RESET SLAVE ALL",
            Flavor::Mysql => "RESET REPLICA ALL",
        }
    }

    /// The variable holding every transaction this server has (its own and replicated) in the
    /// form replicas compare against: `gtid_binlog_pos` / `gtid_executed`.
    pub fn executed_var(&self) -> &'static str {
        match self.flavor {
            Flavor::Mariadb => "@@GLOBAL.gtid_binlog_pos",
            Flavor::Mysql => "@@GLOBAL.gtid_executed",
        }
    }

    /// The variable a replica's GTID position is in: `gtid_slave_pos` / `gtid_executed`.
    pub fn replica_pos_var(&self) -> &'static str {
        match self.flavor {
            Flavor::Mariadb => "@@GLOBAL.gtid_slave_pos",
            Flavor::Mysql => "@@GLOBAL.gtid_executed",
        }
    }

    /// Waits up to `secs` until this replica has executed `gtid`; returns 0 when it has.
    pub fn wait_for_gtid(&self, gtid: &str, secs: u64) -> String {
        match self.flavor {
            Flavor::Mariadb => format!("SELECT MASTER_GTID_WAIT('{}', {secs})", sql_str(gtid)),
            Flavor::Mysql => format!(
                "SELECT WAIT_FOR_EXECUTED_GTID_SET('{}', {secs})",
                sql_str(gtid)
            ),
        }
    }

    /// The value [`ServerKind::wait_for_gtid`] returns on a timeout.
    pub fn wait_timed_out(&self, value: &str) -> bool {
        match self.flavor {
            Flavor::Mariadb => value == "-1",
            Flavor::Mysql => value == "1",
        }
    }

    /// Points this server at a new source with GTID positioning. `credentials` is
    /// `(user, password as SQL text)`; without it the channel keeps its account.
    pub fn change_source(
        &self,
        host: &str,
        port: u16,
        credentials: Option<(&str, &str)>,
        demote: bool,
    ) -> String {
        let host = sql_str(host);
        match self.flavor {
            Flavor::Mariadb => {
                let mut s = format!("CHANGE MASTER TO MASTER_HOST='{host}', MASTER_PORT={port}");
                if let Some((user, pw)) = credentials {
                    s.push_str(&format!(
                        ", MASTER_USER='{}', MASTER_PASSWORD='{pw}'",
                        sql_str(user)
                    ));
                }
                s.push_str(", MASTER_USE_GTID=slave_pos, MASTER_CONNECT_RETRY=1");
                // 10.10+: merges the old master's own binlog GTIDs into gtid_slave_pos once,
                // so gtid_strict_mode accepts the new master's stream (orchestrator #1146).
                if demote && self.version >= Version(10, 10, 0) {
                    s.push_str(", MASTER_DEMOTE_TO_SLAVE=1");
                }
                s
            }
            Flavor::Mysql => {
                let mut s = format!(
                    "CHANGE REPLICATION SOURCE TO SOURCE_HOST='{host}', SOURCE_PORT={port}"
                );
                if let Some((user, pw)) = credentials {
                    s.push_str(&format!(
                        ", SOURCE_USER='{}', SOURCE_PASSWORD='{pw}', GET_SOURCE_PUBLIC_KEY=1",
                        sql_str(user)
                    ));
                }
                s.push_str(", SOURCE_AUTO_POSITION=1, SOURCE_CONNECT_RETRY=1");
                s
            }
        }
    }

    /// Before [`ServerKind::change_source`] on a demoted MariaDB older than 10.10 (no
    /// `MASTER_DEMOTE_TO_SLAVE`): the same merge done by hand.
    pub fn pre_demote(&self) -> Option<&'static str> {
        (self.flavor == Flavor::Mariadb && self.version < Version(10, 10, 0))
            .then_some("SET GLOBAL gtid_slave_pos = @@GLOBAL.gtid_binlog_pos")
    }

    /// Stops writes: `read_only` (MariaDB: its SUPER/READ_ONLY ADMIN users can still write,
    /// so their sessions are killed too) or `super_read_only` (MySQL: binds everyone).
    pub fn freeze(&self) -> Vec<&'static str> {
        match self.flavor {
            Flavor::Mariadb => vec!["SET GLOBAL read_only = ON"],
            Flavor::Mysql => vec!["SET GLOBAL super_read_only = ON"],
        }
    }

    /// Undoes [`ServerKind::freeze`] (as it was: not persisted).
    pub fn unfreeze(&self) -> Vec<&'static str> {
        match self.flavor {
            Flavor::Mariadb => vec!["SET GLOBAL read_only = OFF"],
            Flavor::Mysql => vec![
                "SET GLOBAL super_read_only = OFF",
                "SET GLOBAL read_only = OFF",
            ],
        }
    }

    /// Allows writes on a promoted server. MySQL persists it across restarts.
    pub fn make_writable(&self) -> Vec<&'static str> {
        match self.flavor {
            Flavor::Mariadb => vec!["SET GLOBAL read_only = OFF"],
            Flavor::Mysql => vec![
                "SET PERSIST super_read_only = OFF",
                "SET PERSIST read_only = OFF",
            ],
        }
    }

    /// Keeps a replica read-only across restarts where the server can persist it.
    pub fn make_read_only(&self) -> Vec<&'static str> {
        match self.flavor {
            Flavor::Mariadb => vec!["SET GLOBAL read_only = ON"],
            Flavor::Mysql => vec!["SET PERSIST super_read_only = ON"],
        }
    }

    /// Column names of the replica status for this flavour.
    pub fn columns(&self) -> StatusColumns {
        match self.flavor {
            Flavor::Mariadb => StatusColumns {
                host: "Master_Host",
                port: "Master_Port",
                user: "Master_User",
                io_running: "Slave_IO_Running",
                sql_running: "Slave_SQL_Running",
                lag: "Seconds_Behind_Master",
                last_io_error: "Last_IO_Error",
                last_sql_error: "Last_SQL_Error",
                gtid_mode: "Using_Gtid",
                retrieved: "Gtid_IO_Pos",
            },
            Flavor::Mysql => StatusColumns {
                host: "Source_Host",
                port: "Source_Port",
                user: "Source_User",
                io_running: "Replica_IO_Running",
                sql_running: "Replica_SQL_Running",
                lag: "Seconds_Behind_Source",
                last_io_error: "Last_IO_Error",
                last_sql_error: "Last_SQL_Error",
                gtid_mode: "Auto_Position",
                retrieved: "Retrieved_Gtid_Set",
            },
        }
    }

    /// The server variables topology discovery reads (one row; names as aliases).
    pub fn variables_query(&self) -> String {
        match self.flavor {
            Flavor::Mariadb => "SELECT @@server_id AS server_id, @@read_only AS read_only, \
                 0 AS super_read_only, @@log_bin AS log_bin, \
                 @@log_slave_updates AS log_replica_updates, @@gtid_strict_mode AS gtid_strict, \
                 @@GLOBAL.gtid_binlog_pos AS executed, @@GLOBAL.gtid_binlog_state AS binlog_state, \
                 @@GLOBAL.gtid_slave_pos AS replica_pos, 'ON' AS gtid_mode"
                .into(),
            Flavor::Mysql => {
                let updates = if self.version >= Version(8, 0, 26) {
                    "@@log_replica_updates"
                } else {
                    "@@log_slave_updates"
                };
                format!(
                    "SELECT @@server_id AS server_id, @@read_only AS read_only, \
                     @@super_read_only AS super_read_only, @@log_bin AS log_bin, \
                     {updates} AS log_replica_updates, @@enforce_gtid_consistency AS gtid_strict, \
                     @@GLOBAL.gtid_executed AS executed, '' AS binlog_state, \
                     @@GLOBAL.gtid_executed AS replica_pos, @@gtid_mode AS gtid_mode"
                )
            }
        }
    }
}

/// The replica status columns of one flavour.
#[derive(Debug, Clone, Copy)]
pub struct StatusColumns {
    /// Source host.
    pub host: &'static str,
    /// Source port.
    pub port: &'static str,
    /// Replication account.
    pub user: &'static str,
    /// I/O thread running (`Yes`, `No`, `Connecting`).
    pub io_running: &'static str,
    /// SQL thread running.
    pub sql_running: &'static str,
    /// Seconds behind the source (NULL when the SQL thread stopped).
    pub lag: &'static str,
    /// Last I/O error.
    pub last_io_error: &'static str,
    /// Last SQL error.
    pub last_sql_error: &'static str,
    /// GTID positioning (`Slave_Pos` / `Current_Pos` / `No`; MySQL `Auto_Position` 1/0).
    pub gtid_mode: &'static str,
    /// GTIDs received.
    pub retrieved: &'static str,
}

/// Escapes text for a single-quoted SQL string literal (`'` and `\`).
pub fn sql_str(s: &str) -> String {
    s.replace('\\', "\\\\").replace('\'', "''")
}

/// The SQL that lists the sessions a freeze kills: every client session but this one and the
/// replication threads (`Binlog Dump` serves the replicas).
pub const CLIENT_SESSIONS_SQL: &str = "SELECT ID, USER, HOST FROM information_schema.PROCESSLIST \
     WHERE ID <> CONNECTION_ID() AND USER NOT IN ('system user', 'event_scheduler') \
     AND COMMAND NOT IN ('Binlog Dump', 'Binlog Dump GTID', 'Daemon', 'Killed', \
     'Slave_IO', 'Slave_SQL', 'Slave_worker')";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_read_from_either_flavour() {
        let k = ServerKind::parse("10.11.19-MariaDB-0+deb12u1").unwrap();
        assert_eq!(
            (k.flavor, k.version),
            (Flavor::Mariadb, Version(10, 11, 19))
        );
        let k = ServerKind::parse("8.0.36").unwrap();
        assert_eq!((k.flavor, k.version), (Flavor::Mysql, Version(8, 0, 36)));
        let k = ServerKind::parse("5.5.5-10.3.39-MariaDB").unwrap();
        assert_eq!(k.version, Version(10, 3, 39));
        assert!(k.unsupported().is_some());
        assert!(ServerKind::parse("8.0.22").unwrap().unsupported().is_some());
        assert!(ServerKind::parse("garbage").is_none());
        let json = serde_json::to_string(&k).unwrap();
        assert_eq!(json, r#"{"flavor":"mariadb","version":"10.3.39"}"#);
        assert_eq!(serde_json::from_str::<ServerKind>(&json).unwrap(), k);
    }

    #[test]
    fn change_source_per_flavour_and_version() {
        let maria = ServerKind::parse("10.11.6-MariaDB").unwrap();
        assert_eq!(
            maria.change_source("10.0.0.12", 3306, Some(("repl", "p'w")), true),
            "CHANGE MASTER TO MASTER_HOST='10.0.0.12', MASTER_PORT=3306, MASTER_USER='repl', \
             MASTER_PASSWORD='p'w', MASTER_USE_GTID=slave_pos, MASTER_CONNECT_RETRY=1, \
             MASTER_DEMOTE_TO_SLAVE=1"
        );
        let old = ServerKind::parse("10.6.16-MariaDB").unwrap();
        assert!(!old.change_source("h", 1, None, true).contains("DEMOTE"));
        assert!(old.pre_demote().is_some() && maria.pre_demote().is_none());
        let mysql = ServerKind::parse("8.4.3").unwrap();
        assert_eq!(
            mysql.change_source("10.0.0.12", 3306, None, false),
            "CHANGE REPLICATION SOURCE TO SOURCE_HOST='10.0.0.12', SOURCE_PORT=3306, \
             SOURCE_AUTO_POSITION=1, SOURCE_CONNECT_RETRY=1"
        );
        assert_eq!(
            mysql.wait_for_gtid("uuid:1-5", 10),
            "SELECT WAIT_FOR_EXECUTED_GTID_SET('uuid:1-5', 10)"
        );
        assert!(mysql.wait_timed_out("1") && maria.wait_timed_out("-1"));
        assert!(!maria.wait_timed_out("0"));
    }

    #[test]
    fn sql_strings_are_escaped() {
        assert_eq!(sql_str(r"a'b\c"), r"a''b\\c");
    }
}
