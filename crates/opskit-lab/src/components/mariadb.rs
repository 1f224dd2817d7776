//! MariaDB in the lab: the `mariadb` component (the archive's `mysql://` source, with database
//! `test`), and [`MariadbInstance`], the per-instance helper every MariaDB of the lab is started
//! with (the replication topology starts five).
//!
//! An instance keeps everything under its directory (`<lab>/mariadb/` for the component):
//! `my.cnf` (passed as `--defaults-file` to `mariadb-install-db`, `mariadbd` and every client,
//! so `/etc/mysql` is never read), `data/`, `tmp/`, the socket `mysqld.sock`, `mysqld.pid` and
//! the server log `mariadbd.log`. It listens on its own loopback address only (127.0.0.1 for the
//! component); `root` has no password (loopback only). Memory settings are the small ones
//! measured in `notes/lab.md` (16 MB buffer pool, virtual size capped).
//!
//! A new datadir is a copy of a template that `mariadb-install-db` made once per user and
//! MariaDB version in `$TMPDIR/opskit-lab-cache-<uid>/` (a copy takes well under 0.1 s, the
//! install 0.5-3 s). Set `OPSKIT_LAB_NO_CACHE=1` to install every datadir afresh; delete
//! that directory if a template is ever damaged.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use opskit_core::config::Config;
use opskit_core::proc;

use super::{Endpoint, LOOPBACK, LabContext, Server, config_path, with_free_port, write_file};
use crate::daemon::{Launch, StartError};
use crate::state::{LabState, ServerRecord};

/// The MariaDB component.
pub struct Mariadb;

const KIND: &str = "mariadb";
const START_TIMEOUT: Duration = Duration::from_secs(60);
const INSTALL_TIMEOUT: Duration = Duration::from_secs(120);
const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);
/// Written once `mariadb-install-db` finished, so a half-initialised datadir is redone.
const INSTALLED_MARKER: &str = ".installed";
/// The database user of the lab (no password, loopback only).
pub const USER: &str = "root";

impl Server for Mariadb {
    fn start(&self, ctx: &LabContext, previous: &[ServerRecord]) -> Result<Vec<ServerRecord>> {
        let mut record = MariadbInstance::new(KIND, "mariadb").start(ctx, KIND, previous.first())?;
        let server = MariadbServer::from_record(&record)?;
        server
            .sql("CREATE DATABASE IF NOT EXISTS test")
            .context("creating database `test`")?;
        record.details.insert("uri".into(), server.uri());
        Ok(vec![record])
    }

    fn probe(&self, _ctx: &LabContext, record: &ServerRecord) -> Result<()> {
        ping(Path::new(record.detail("defaults_file")?))
    }

    fn configure(&self, records: &[ServerRecord], config: &mut Config) -> Result<()> {
        let r = records.first().context("no mariadb record")?;
        config.archive.source_uri = MariadbServer::from_record(r)?.uri();
        Ok(())
    }

    fn stop_grace(&self) -> Duration {
        STOP_GRACE
    }
}

/// How long `down` waits for a MariaDB server to shut down cleanly before SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(60);

/// One MariaDB server of the lab: the archive's source, or one server of the replication
/// topology (which starts five, each with its own address, server id and binary log).
/// [`MariadbInstance::start`] prepares its directory, installs or copies a datadir, starts
/// `mariadbd` through the lab's `daemon` and waits until it answers.
#[derive(Debug, Clone)]
pub struct MariadbInstance {
    /// The record's name in `lab.json` (`mariadb`, `Master`, `Slave_01`, …).
    pub name: String,
    /// Its directory, relative to the lab directory (`mariadb`, `mysql/master`, …).
    pub dir: String,
    /// The address it listens on.
    pub address: Ipv4Addr,
    /// A fixed port, or `None` for a free one (the previous record's port when still free).
    pub port: Option<u16>,
    /// `server-id`.
    pub server_id: u32,
    /// Extra `[mariadbd]` lines (`log-bin`, GTID settings, `read_only`, …).
    pub extra_cnf: String,
}

impl MariadbInstance {
    /// An instance on 127.0.0.1 with a free port, server id 1 and no extra settings.
    pub fn new(name: &str, dir: &str) -> MariadbInstance {
        MariadbInstance {
            name: name.to_string(),
            dir: dir.to_string(),
            address: Ipv4Addr::LOCALHOST,
            port: None,
            server_id: 1,
            extra_cnf: String::new(),
        }
    }

    /// Starts it (installing its datadir the first time) and returns its record, whose
    /// details hold `defaults_file`, `user` and `server_id`. `kind` is the component's name;
    /// `previous` is this instance's record from an earlier `up`, to reuse its port.
    pub fn start(
        &self,
        ctx: &LabContext,
        kind: &str,
        previous: Option<&ServerRecord>,
    ) -> Result<ServerRecord> {
        let dir = ctx.mkdir(&self.dir)?;
        ctx.mkdir(&format!("{}/tmp", self.dir))?;
        let cnf = dir.join("my.cnf");
        let socket = dir.join("mysqld.sock");
        // sun_path holds 108 bytes including the NUL.
        if socket.as_os_str().len() > 107 {
            bail!(
                "the MariaDB socket path {} is longer than 107 bytes; use a shorter lab directory",
                socket.display()
            );
        }
        let log = dir.join("mariadbd.log");
        let mut installed = dir.join(INSTALLED_MARKER).exists();
        let mut start_on = |port: u16| {
            let fail = |e: anyhow::Error| StartError {
                name: self.name.clone(),
                reason: format!("could not be prepared: {e:#}"),
                log: log.clone(),
                log_tail: String::new(),
                address_in_use: false,
            };
            write_file(&cnf, &self.my_cnf(ctx, &dir, port).map_err(fail)?, 0o644)
                .map_err(fail)?;
            if !installed {
                install_db(ctx, &dir, &cnf).map_err(fail)?;
                installed = true;
            }
            let mut launch = Launch::new(&self.name, "mariadbd", &log)
                .arg(format!("--defaults-file={}", cnf.display()));
            if ctx.is_root() {
                launch = launch.arg("--user=root");
            }
            ctx.start_process(
                kind,
                launch,
                Endpoint {
                    address: Some(self.address),
                    port: Some(port),
                    socket: Some(socket.clone()),
                },
                START_TIMEOUT,
                || ping(&cnf),
            )
        };
        let mut record = match self.port {
            Some(port) => start_on(port)?,
            None => with_free_port(previous.and_then(|r| r.port), start_on)?,
        };
        record
            .details
            .insert("defaults_file".into(), config_path(&cnf)?.into());
        record.details.insert("user".into(), USER.into());
        record
            .details
            .insert("server_id".into(), self.server_id.to_string());
        Ok(record)
    }

    fn my_cnf(&self, ctx: &LabContext, dir: &Path, port: u16) -> Result<String> {
        let mut text = my_cnf(ctx, dir, port)?;
        text.push_str(&format!(
            "server-id={}\nbind-address={}\n",
            self.server_id, self.address
        ));
        if !self.extra_cnf.is_empty() {
            text.push_str("# Instance settings:\n");
            text.push_str(self.extra_cnf.trim_end());
            text.push('\n');
        }
        Ok(text)
    }
}

fn my_cnf(ctx: &LabContext, dir: &Path, port: u16) -> Result<String> {
    let d = config_path(dir)?;
    let user = if ctx.is_root() { "user=root\n" } else { "" };
    Ok(format!(
        "# Written by `opskit lab up`. Always pass --defaults-file={d}/my.cnf.
[client]
socket={d}/mysqld.sock
port={port}
user={USER}

[mariadbd]
{user}datadir={d}/data
tmpdir={d}/tmp
socket={d}/mysqld.sock
port={port}
pid-file={d}/mysqld.pid
skip-name-resolve
character-set-server=utf8mb4
collation-server=utf8mb4_general_ci
# Small memory (notes/lab.md): 16M pool; the _max cap keeps VmSize near 1 GB instead of 8 TB.
innodb_buffer_pool_size=16M
innodb_buffer_pool_size_max=32M
innodb_log_file_size=8M
innodb_log_buffer_size=2M
innodb_buffer_pool_dump_at_shutdown=OFF
innodb_buffer_pool_load_at_startup=OFF
performance_schema=OFF
max_connections=40
key_buffer_size=1M
table_open_cache=128
table_definition_cache=400
thread_cache_size=4
aria_pagecache_buffer_size=1M
query_cache_size=0
query_cache_type=0
"
    ))
}

fn install_db(ctx: &LabContext, dir: &Path, cnf: &Path) -> Result<()> {
    let data = dir.join("data");
    if data.exists() {
        // A previous install did not finish: start over.
        std::fs::remove_dir_all(&data)
            .with_context(|| format!("removing the half-initialised {}", data.display()))?;
    }
    let template = match cached_template(ctx) {
        Ok(t) => t,
        Err(e) => {
            tracing::debug!("no MariaDB datadir template ({e:#}); running mariadb-install-db");
            None
        }
    };
    match template {
        Some(t) => {
            proc::run(
                Command::new("cp").arg("-a").arg(&t).arg(&data),
                INSTALL_TIMEOUT,
            )
            .and_then(proc::Output::checked)
            .with_context(|| format!("copying the datadir template {}", t.display()))?;
        }
        None => run_install_db(ctx, dir, cnf)?,
    }
    std::fs::write(dir.join(INSTALLED_MARKER), b"")
        .with_context(|| format!("writing {}/{INSTALLED_MARKER}", dir.display()))
}

/// `mariadb-install-db` into `<dir>/data`, its output in `<dir>/install.log`.
fn run_install_db(ctx: &LabContext, dir: &Path, cnf: &Path) -> Result<()> {
    let mut cmd = Command::new("mariadb-install-db");
    cmd.arg(format!("--defaults-file={}", cnf.display()))
        .arg("--auth-root-authentication-method=normal")
        .arg("--skip-test-db");
    if ctx.is_root() {
        cmd.arg("--user=root");
    }
    let out = proc::run(&mut cmd, INSTALL_TIMEOUT)
        .and_then(proc::Output::checked)
        .context("initialising the MariaDB datadir")?;
    let log = dir.join("install.log");
    std::fs::write(&log, [out.stdout, out.stderr].concat())
        .with_context(|| format!("writing {}", log.display()))
}

/// Bump when `my_cnf` or the install options change what a fresh datadir holds.
const TEMPLATE_FORMAT: u32 = 1;
/// Set (to anything) to run `mariadb-install-db` for every lab instead of copying a template.
pub const NO_CACHE_ENV: &str = "OPSKIT_LAB_NO_CACHE";

/// A freshly installed datadir, made once per user and MariaDB version under
/// `$TMPDIR/opskit-lab-cache-<uid>/` and copied into each new lab: `mariadb-install-db` takes
/// 0.5-3 s, a copy of its 26 MB result well under 0.1 s. The datadir holds no absolute paths.
fn cached_template(ctx: &LabContext) -> Result<Option<PathBuf>> {
    use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _};
    if std::env::var_os(NO_CACHE_ENV).is_some() {
        return Ok(None);
    }
    let out = proc::run(Command::new("mariadbd").arg("--version"), CLIENT_TIMEOUT)?.checked()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let version: String = text
        .split_whitespace()
        .skip_while(|w| *w != "Ver")
        .nth(1)
        .context("no version in `mariadbd --version`")?
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || ".+-_".contains(*c))
        .collect();
    // SAFETY: geteuid cannot fail.
    let uid = unsafe { libc::geteuid() };
    let cache = std::env::temp_dir().join(format!("opskit-lab-cache-{uid}"));
    let _ = std::fs::DirBuilder::new().mode(0o700).create(&cache);
    // A shared /tmp: use the cache only if it is ours and private.
    let meta = std::fs::symlink_metadata(&cache)
        .with_context(|| format!("inspecting {}", cache.display()))?;
    if !meta.is_dir() || meta.uid() != uid || meta.mode() & 0o077 != 0 {
        bail!("{} is not a private directory of uid {uid}", cache.display());
    }
    let template = cache.join(format!("mariadb-{version}-f{TEMPLATE_FORMAT}"));
    if template.is_dir() {
        return Ok(Some(template));
    }
    let _lock = crate::state::LabLock::acquire(&cache)?;
    if template.is_dir() {
        return Ok(Some(template));
    }
    let work = cache.join(format!("build-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(work.join("tmp"))
        .with_context(|| format!("creating {}", work.display()))?;
    let cnf = work.join("my.cnf");
    write_file(&cnf, &my_cnf(ctx, &work, 0)?, 0o644)?;
    let built = run_install_db(ctx, &work, &cnf).and_then(|()| {
        std::fs::rename(work.join("data"), &template)
            .with_context(|| format!("moving the template to {}", template.display()))
    });
    let _ = std::fs::remove_dir_all(&work);
    built?;
    Ok(Some(template))
}

fn ping(cnf: &Path) -> Result<()> {
    proc::run(
        Command::new("mariadb-admin")
            .arg(format!("--defaults-file={}", cnf.display()))
            .arg("--connect-timeout=1")
            .arg("ping"),
        Duration::from_secs(5),
    )?
    .checked()?;
    Ok(())
}

/// The lab's MariaDB as a test or drill sees it.
#[derive(Debug, Clone)]
pub struct MariadbServer {
    /// The address it listens on.
    pub address: String,
    /// Its TCP port.
    pub port: u16,
    /// The unix socket.
    pub socket: PathBuf,
    /// The `my.cnf` to pass as `--defaults-file` to every client.
    pub defaults_file: PathBuf,
    /// The database user (no password, loopback only).
    pub user: String,
}

impl crate::LabView for MariadbServer {
    fn from_state(state: &LabState) -> Result<MariadbServer> {
        let r = state
            .server(KIND)
            .with_context(|| format!("the lab in {} runs no mariadb", state.dir.display()))?;
        MariadbServer::from_record(r)
    }
}

impl MariadbServer {
    /// The view of a record made by [`MariadbInstance::start`].
    pub fn from_record(r: &ServerRecord) -> Result<MariadbServer> {
        Ok(MariadbServer {
            address: r.address.clone().unwrap_or_else(|| LOOPBACK.to_string()),
            port: r.port.context("mariadb has no port in lab.json")?,
            socket: r.socket.clone().context("mariadb has no socket in lab.json")?,
            defaults_file: r.detail("defaults_file")?.into(),
            user: r.detail("user")?.into(),
        })
    }

    /// `mysql://root@<address>:<port>/`, the form of `archive.source_uri`.
    pub fn uri(&self) -> String {
        format!("mysql://{}@{}:{}/", self.user, self.address, self.port)
    }

    /// `mariadb --defaults-file=<my.cnf>` (connects over the socket as root); add arguments.
    pub fn client_command(&self) -> Command {
        let mut c = Command::new("mariadb");
        c.arg(format!("--defaults-file={}", self.defaults_file.display()));
        c
    }

    /// Runs SQL (given on stdin, not in argv) with `mariadb --batch --skip-column-names`
    /// and returns its output: one line per row, tab-separated columns.
    pub fn sql(&self, sql: &str) -> Result<String> {
        let out = proc::run_with_input(
            self.client_command()
                .arg("--batch")
                .arg("--skip-column-names"),
            Some(sql.as_bytes()),
            CLIENT_TIMEOUT,
        )
        .and_then(proc::Output::checked)
        .with_context(|| format!("running SQL on the lab MariaDB {}:{}", self.address, self.port))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}
