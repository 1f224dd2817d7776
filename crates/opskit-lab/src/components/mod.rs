//! The servers a lab can run: one module per component, one line per component in
//! [`registry!`](self) below.
//!
//! # Adding a component
//! 1. Write `components/<name>.rs` with a unit struct implementing [`Server`]: `start`
//!    prepares its files under [`LabContext::path`], launches each process with
//!    [`LabContext::start_process`] (which waits until it answers and returns its
//!    [`ServerRecord`]), and `configure` points the generated `opskit.toml` at it. Put a small
//!    view type next to it (like [`sshd::SftpServer`]) so tests can read ports and paths from
//!    a [`crate::Lab`] with [`crate::Lab::view`].
//! 2. Add one line to the `registry!` call below: `Variant("cli-name") => module::Type,`.
//!    That declares the module, adds the [`Component`] variant, makes `--only cli-name` work
//!    and fixes the start order (stop order is the reverse).
//!
//! Nothing else changes: `up`, `down`, `status`, `lab.json` and the CLI are generic.
//!
//! A component with several processes (nginx + php-fpm + a bot upstream) calls
//! [`LabContext::start_process`] once per process, dependencies first, and returns one
//! [`ServerRecord`] per process with distinct `name`s (`kind` is the component's name). `up`
//! treats the component as one unit: if any of its processes is dead or silent, all of them are
//! stopped and `start` runs again; if `start` fails half-way, the processes it did start are
//! stopped. Pick ports with [`with_free_port`] (it retries when another lab grabbed the port),
//! write configs with [`write_file`] and paths with [`config_path`], and record what tests
//! need in `ServerRecord::details`.
//!
//! ```ignore
//! // components/echo.rs: a minimal component.
//! pub struct Echo;
//! impl Server for Echo {
//!     fn start(&self, ctx: &LabContext, previous: &[ServerRecord]) -> Result<Vec<ServerRecord>> {
//!         let log = ctx.mkdir("echo")?.join("echo.log");
//!         let record = with_free_port(previous.iter().find_map(|r| r.port), |port| {
//!             let launch = Launch::new("echo", "socat", &log)
//!                 .arg(format!("TCP-LISTEN:{port},bind=127.0.0.1,fork,reuseaddr"))
//!                 .arg("EXEC:cat");
//!             let at = Endpoint { address: None, port: Some(port), socket: None };
//!             ctx.start_process("echo", launch, at, Duration::from_secs(10), || {
//!                 tcp_connect(port).map(drop)
//!             })
//!         })?;
//!         Ok(vec![record])
//!     }
//! }
//! // and in registry! below:  Echo("echo") => echo::Echo,
//! ```

use std::net::{TcpStream, ToSocketAddrs as _};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use opskit_core::config::Config;

use crate::daemon::{self, Launch, StartError};
use crate::state::ServerRecord;

/// One kind of server the lab can run. Implemented by a unit struct per component module.
pub trait Server: Sync {
    /// Prepares the component's files and starts its processes (each answering when this
    /// returns), in start order. `previous` holds its records from an earlier `up` (dead or
    /// stopped now), e.g. to reuse a port.
    fn start(&self, ctx: &LabContext, previous: &[ServerRecord]) -> Result<Vec<ServerRecord>>;

    /// Checks that a started process answers. Default: a TCP connect to its port, or a
    /// connect to its unix socket.
    fn probe(&self, _ctx: &LabContext, record: &ServerRecord) -> Result<()> {
        default_probe(record)
    }

    /// Points the lab's `opskit.toml` at this component.
    fn configure(&self, _records: &[ServerRecord], _config: &mut Config) -> Result<()> {
        Ok(())
    }

    /// How long `down` waits after SIGTERM before SIGKILL.
    fn stop_grace(&self) -> Duration {
        Duration::from_secs(10)
    }
}

/// Declares the component modules, the [`Component`] enum and the registry in one list.
macro_rules! registry {
    ($( $(#[$doc:meta])* $variant:ident($name:literal) => $module:ident :: $ty:ident, )*) => {
        $( pub mod $module; )*

        /// A component of the lab (see the [module docs](self) to add one).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Component {
            $( $(#[$doc])* $variant, )*
        }

        impl Component {
            /// Every component, in start order.
            pub const ALL: &'static [Component] = &[$(Component::$variant),*];

            /// Its name in `lab.json` (`kind`) and in `--only`.
            pub fn name(self) -> &'static str {
                match self { $( Component::$variant => $name, )* }
            }

            /// Its implementation.
            pub fn server(self) -> &'static dyn Server {
                match self { $( Component::$variant => &$module::$ty, )* }
            }
        }
    };
}

registry! {
    /// OpenSSH sshd serving SFTP: the backup host `bak.ipo.com` of spec §1.
    Sshd("sshd") => sshd::Sshd,
    /// One MariaDB server with database `test`: the archive's MySQL source.
    Mariadb("mariadb") => mariadb::Mariadb,
    /// A MongoDB-compatible server (SecantusDB, not MongoDB): the archive's `mongodb://` source.
    Mongodb("mongodb") => mongodb::Mongodb,
    /// A tiny HTTP server recording every alert POST to `<lab>/webhook/received.jsonl`.
    Webhook("webhook") => webhook::Webhook,
    /// The ipo.com edge (spec §2): nginx with the rendered config, php-fpm, a bot upstream.
    Nginx("nginx") => nginx::Nginx,
    /// A Docker host in network namespaces, with Docker's rules and the containers' listeners (spec §3; root).
    Firewall("firewall") => firewall::Firewall,
    /// Five MariaDB servers in the replication topology of spec §4 (GTID, own addresses).
    Mysql("mysql") => mysql::Mysql,
    /// HAProxy in front of the replicas (`mysql-slave.ipo.com`) with a runtime API socket.
    Haproxy("haproxy") => haproxy::Haproxy,
    /// BIND serving `ipo.com` with a TSIG key that may move `mysql-master.ipo.com`.
    Bind("bind") => bind::Bind,
}

impl std::str::FromStr for Component {
    type Err = String;
    fn from_str(s: &str) -> Result<Component, String> {
        Component::ALL
            .iter()
            .copied()
            .find(|c| c.name() == s)
            .ok_or_else(|| {
                format!(
                    "unknown lab component `{s}`; the components are: {}",
                    Component::ALL
                        .iter()
                        .map(|c| c.name())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })
    }
}

impl std::fmt::Display for Component {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What a component gets to start its servers: the lab directory and who runs the lab.
#[derive(Debug, Clone)]
pub struct LabContext {
    dir: PathBuf,
    user: String,
    uid: u32,
    opskit_exe: Option<PathBuf>,
}

impl LabContext {
    /// A context for the lab in `dir` (absolute), run by the current user.
    pub fn new(dir: &Path, opskit_exe: Option<PathBuf>) -> Result<LabContext> {
        // SAFETY: geteuid cannot fail.
        let uid = unsafe { libc::geteuid() };
        let user = user_name(uid)?;
        Ok(LabContext {
            dir: dir.to_path_buf(),
            user,
            uid,
            opskit_exe,
        })
    }

    /// The lab directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A path inside the lab directory.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    /// Creates (if needed) and returns a directory inside the lab.
    pub fn mkdir(&self, rel: &str) -> Result<PathBuf> {
        let p = self.path(rel);
        std::fs::create_dir_all(&p).with_context(|| format!("creating {}", p.display()))?;
        Ok(p)
    }

    /// True when the lab runs as root.
    pub fn is_root(&self) -> bool {
        self.uid == 0
    }

    /// The name of the user running the lab (servers log in / run as this user).
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The `opskit` binary, for components that run as `opskit lab <hidden command>`:
    /// the one given to the builder, else `$OPSKIT_BIN`.
    pub fn opskit_exe(&self) -> Result<PathBuf> {
        if let Some(p) = &self.opskit_exe {
            return Ok(p.clone());
        }
        match std::env::var_os("OPSKIT_BIN") {
            Some(p) if !p.is_empty() => Ok(PathBuf::from(p)),
            _ => bail!(
                "this component runs as `opskit lab webhook-receiver`, but the opskit binary is \
                 unknown: use LabBuilder::opskit_exe or set $OPSKIT_BIN"
            ),
        }
    }

    /// Starts one server process and waits (up to `timeout`) until `probe` succeeds; returns
    /// its record (fill in `details` afterwards). On failure the error names the server and
    /// shows the tail of its log; the process is stopped.
    pub fn start_process(
        &self,
        kind: &str,
        launch: Launch,
        endpoint: Endpoint,
        timeout: Duration,
        probe: impl FnMut() -> Result<()>,
    ) -> Result<ServerRecord, StartError> {
        let name = launch.name.clone();
        let log = launch.log.clone();
        let spawned = daemon::spawn(launch).map_err(|e| StartError {
            name: name.clone(),
            reason: format!("could not be started: {e:#}"),
            log: log.clone(),
            log_tail: String::new(),
            address_in_use: false,
        })?;
        if let Err(e) = crate::state::note_spawned(&self.dir, &name, spawned.identity) {
            let _ = daemon::stop(&spawned.identity, Duration::from_secs(10));
            return Err(StartError {
                name,
                reason: format!("could not be noted: {e:#}"),
                log,
                log_tail: String::new(),
                address_in_use: false,
            });
        }
        spawned.wait_ready(timeout, probe)?;
        Ok(ServerRecord {
            name,
            kind: kind.to_string(),
            address: endpoint.port.map(|_| {
                endpoint
                    .address
                    .map_or_else(|| LOOPBACK.to_string(), |a| a.to_string())
            }),
            port: endpoint.port,
            socket: endpoint.socket,
            pid: spawned.identity.pid,
            start_time: spawned.identity.start_time,
            log,
            details: Default::default(),
        })
    }
}

/// The loopback address every lab server listens on.
pub const LOOPBACK: &str = "127.0.0.1";

/// Where a server answers: a TCP port (on [`LOOPBACK`] unless `address` says otherwise)
/// and/or a unix socket.
#[derive(Debug, Clone, Default)]
pub struct Endpoint {
    /// The address of the TCP port, when not [`LOOPBACK`] (each server of the switchover
    /// topology has its own loopback address).
    pub address: Option<std::net::Ipv4Addr>,
    /// TCP port.
    pub port: Option<u16>,
    /// Unix socket.
    pub socket: Option<PathBuf>,
}

/// A free TCP port on 127.0.0.1 (bind to port 0, read it, release it).
pub fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind((LOOPBACK, 0)).context("binding 127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// Runs `start` on `preferred` when that port is free, else on a fresh free port; when the
/// server reports the port taken (another lab grabbed it in between), retries on a new one.
pub fn with_free_port<T>(
    preferred: Option<u16>,
    mut start: impl FnMut(u16) -> Result<T, StartError>,
) -> Result<T> {
    let mut port = match preferred {
        Some(p) if std::net::TcpListener::bind((LOOPBACK, p)).is_ok() => p,
        _ => free_port()?,
    };
    for attempt in 1.. {
        match start(port) {
            Ok(v) => return Ok(v),
            Err(e) if e.address_in_use && attempt < 4 => {
                tracing::debug!(server = %e.name, port, "port taken, retrying on another one");
                port = free_port()?;
            }
            Err(e) => return Err(e.into()),
        }
    }
    unreachable!("the loop returns")
}

/// Connects to the record's TCP port (or unix socket) with a one-second timeout.
pub fn default_probe(record: &ServerRecord) -> Result<()> {
    if let Some(port) = record.port {
        tcp_connect(port)?;
    } else if let Some(sock) = &record.socket {
        UnixStream::connect(sock).with_context(|| format!("connecting to {}", sock.display()))?;
    }
    Ok(())
}

/// A TCP connection to 127.0.0.1:`port` with short timeouts.
pub fn tcp_connect(port: u16) -> Result<TcpStream> {
    let addr = (LOOPBACK, port)
        .to_socket_addrs()?
        .next()
        .expect("an address");
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(1))
        .with_context(|| format!("connecting to {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.set_write_timeout(Some(Duration::from_secs(2)))?;
    Ok(s)
}

/// Writes a generated file with the given mode (configs 0644, keys and scripts as needed).
pub fn write_file(path: &Path, text: &str, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", path.display()))
}

/// A path as UTF-8 text for a generated config, refusing characters that would break it.
pub fn config_path(path: &Path) -> Result<&str> {
    let s = path
        .to_str()
        .with_context(|| format!("the lab path {} is not UTF-8", path.display()))?;
    if let Some(c) = s
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || "\"'`$\\#;".contains(*c))
    {
        bail!(
            "the lab path `{s}` contains {c:?}; use a lab directory without spaces, quotes or \
             shell characters"
        );
    }
    Ok(s)
}

fn user_name(uid: u32) -> Result<String> {
    let mut buf = vec![0u8; 4096];
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: getpwuid_r writes into `pwd` and `buf`, both live for the call.
    let rc = unsafe {
        libc::getpwuid_r(
            uid,
            &mut pwd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut result,
        )
    };
    if rc != 0 || result.is_null() {
        bail!("the current user (uid {uid}) has no passwd entry; sshd needs one to log in");
    }
    // SAFETY: pw_name points into `buf` and is NUL-terminated.
    let name = unsafe { std::ffi::CStr::from_ptr(pwd.pw_name) }
        .to_str()
        .context("the user name is not UTF-8")?
        .to_string();
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
    {
        bail!("the user name `{name}` cannot be used in sshd_config");
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn component_names_are_unique_and_parse() {
        let mut names: Vec<_> = Component::ALL.iter().map(|c| c.name()).collect();
        for c in Component::ALL {
            assert_eq!(c.name().parse::<Component>().unwrap(), *c);
        }
        names.sort();
        names.dedup();
        assert_eq!(
            names.len(),
            Component::ALL.len(),
            "duplicate component name"
        );
        let e = "oracle".parse::<Component>().unwrap_err();
        assert!(e.contains("sshd, mariadb, mongodb"), "{e}");
    }

    #[test]
    fn a_taken_port_is_retried_on_another() {
        let mut tried = Vec::new();
        let port = with_free_port(None, |port| {
            tried.push(port);
            if tried.len() < 3 {
                Err(StartError {
                    name: "x".into(),
                    reason: "exited".into(),
                    log: "/dev/null".into(),
                    log_tail: "bind: Address already in use".into(),
                    address_in_use: true,
                })
            } else {
                Ok(port)
            }
        })
        .unwrap();
        assert_eq!(tried.len(), 3);
        assert_eq!(port, tried[2]);
        // Other failures are not retried.
        let mut calls = 0;
        let e = with_free_port(None, |_| -> Result<(), StartError> {
            calls += 1;
            Err(StartError {
                name: "x".into(),
                reason: "exited".into(),
                log: "/dev/null".into(),
                log_tail: "config error".into(),
                address_in_use: false,
            })
        })
        .unwrap_err();
        assert_eq!(calls, 1);
        assert!(e.to_string().contains("config error"), "{e}");
    }
}
