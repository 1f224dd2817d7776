//! The lab: real servers from Debian's packages started on loopback under one directory,
//! for rehearsal (`opskit lab up|down|status`) and for every integration test of the project.
//!
//! ```no_run
//! use opskit_lab::{Component, LabBuilder};
//!
//! let dir = tempfile::tempdir()?;
//! let lab = LabBuilder::new(dir.path())
//!     .with(Component::Sshd)
//!     .with(Component::Mariadb)
//!     .up()?; // dropping `lab` stops every server
//! let db = lab.mariadb()?;
//! assert_eq!(db.sql("SELECT 1")?.trim(), "1");
//! let sftp = lab.sftp()?;
//! sftp.sftp_batch("put /etc/hostname hostname\n")?;
//! assert!(sftp.backup_dir.join("hostname").exists());
//! // `opskit --config <lab.opskit_toml()> archive ...` rehearses against these servers.
//! # Ok::<(), anyhow::Error>(())
//! ```
//!
//! - [`daemon`]: start a server detached (`setsid`, log file), wait until it answers, stop
//!   exactly the recorded process (PID + start time, so PID reuse is harmless).
//! - [`components`]: one module per server behind the [`components::Server`] trait, one
//!   registration line each (see that module to add one).
//! - [`state`]: `<lab>/lab.json` and the lab lock.
//! - [`lab`](mod@lab): `up`, `down`, `status`, `<lab>/opskit.toml`, and the [`Lab`] guard.
//! - [`webhook`]: the alert receiver behind `opskit lab webhook-receiver`, also available on
//!   a thread ([`webhook::InProcessReceiver`]) for tests that cannot run the opskit binary.
//!
//! Ports are picked by binding `127.0.0.1:0`, so many labs run in parallel (one per test).
//!
//! # A lab directory
//! ```text
//! lab.json            the servers: name, kind, address, port/socket, pid, start_time, log, details
//! opskit.toml         opskit's config pointed at the lab (`opskit --config <lab>/opskit.toml ...`)
//! ssh/                sshd_config, hostkeys/, client/id_ed25519, known_hosts, ssh_config, sshd.log
//! sftp/backup/        where SFTP uploads land
//! mariadb/            my.cnf, data/, tmp/, mysqld.sock, mariadbd.log
//! webhook/            received.jsonl (one JSON line per alert), receiver.log
//! mysql/              master/ slave_01/ … slave_04/ (one MariaDB each), *.password (0600)
//! haproxy/            haproxy.cfg, admin.sock (runtime API), haproxy.log (tcplog)
//! bind/               named.conf, db.ipo.com (+ .jnl), update.key (TSIG, 0600), named.log
//! state/ metrics/ staging/   opskit's own directories for runs against the lab
//! ```
//! `down` stops exactly the recorded processes and keeps all of this; `down --purge` deletes
//! the directory. Stopping is safe against PID reuse, and a process that an interrupted `up`
//! launched but never recorded (noted in `spawned.jsonl`) is stopped by the next `down` or
//! `up`. The [`Lab`] guard cannot help when the test process itself is killed (SIGKILL): run
//! `opskit lab down --dir <dir>` then.

#![warn(missing_docs)]

pub mod components;
pub mod daemon;
pub mod lab;
pub mod pdo;
pub mod seed;
pub mod state;
pub mod webhook;

pub use components::Component;
pub use components::bind::BindLab;
pub use components::firewall::FirewallLab;
pub use components::haproxy::{HaproxyLab, HaproxyTimers, PoolMember};
pub use components::mariadb::{MariadbInstance, MariadbServer};
pub use components::mongodb::MongodbServer;
pub use components::mysql::{MysqlInstance, MysqlLab};
pub use components::nginx::EdgeServer;
pub use components::nginx::files::BOT_MARKER;
pub use components::sshd::SftpServer;
pub use components::webhook::WebhookReceiver;
pub use lab::{
    ComponentUp, DownReport, Lab, LabBuilder, LabView, OPSKIT_TOML, StatusReport, UpAction,
    UpReport, down, status, up,
};
pub use state::{LabState, ServerRecord};

/// The default lab directory when neither `--dir` nor `$OPSKIT_LAB_DIR` is given.
pub const DEFAULT_DIR: &str = "/tmp/opskit-lab";
/// The environment variable naming the lab directory.
pub const DIR_ENV: &str = "OPSKIT_LAB_DIR";
