//! MySQL and MariaDB for spec §4 (and the parts §5's doctor shares): the real replication
//! tree discovered from the servers ([`topology`]), and the planned master switchover
//! ([`switchover`]) that promotes a replica, demotes the old master under it, moves the write
//! name with a TSIG-signed RFC 2136 update ([`dns`]) and the read pool through HAProxy's
//! runtime API and its config file ([`haproxy`]), with no committed write lost.
//!
//! The switchover is an [`opskit_core::plan::Plan`]: every SQL statement, the DNS update and
//! every HAProxy command are printed before anything runs (`--dry-run`); the engine journals,
//! resumes, undoes before the point of no return (the DNS move) and alerts.

#![warn(missing_docs)]

pub mod dns;
pub mod flavor;
pub mod gtid;
pub mod haproxy;
pub mod session;
pub mod switchover;
pub mod testhook;
pub mod topology;
pub mod workload;

/// The runbook name: journals under `<state>/journal/mysql/`, metrics in `opskit_mysql.prom`.
pub const RUNBOOK: &str = "mysql";
