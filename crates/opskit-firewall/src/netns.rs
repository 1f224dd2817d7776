//! Talking from inside a named network namespace (`ip netns add` makes `/run/netns/<name>`).
//!
//! A thread that joins a namespace (`setns`) creates its sockets there; the socket stays in
//! that namespace for its whole life, whichever thread uses it later. So a probe runs on a
//! short-lived thread that joins the namespace, connects and ends, and many probes from many
//! namespaces run at once without a process per probe.

use std::io::{self, Read as _};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, Result};

/// Where `ip netns` keeps named namespaces.
pub const NETNS_DIR: &str = "/run/netns";

/// The file of a named namespace.
pub fn path(name: &str) -> PathBuf {
    PathBuf::from(NETNS_DIR).join(name)
}

/// True when the named namespace exists.
pub fn exists(name: &str) -> bool {
    path(name).exists()
}

/// Moves the calling thread into the named network namespace (for good).
pub fn enter(name: &str) -> io::Result<()> {
    let f = std::fs::File::open(path(name))?;
    // SAFETY: setns on an open namespace file; it only changes this thread's network namespace.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Runs `f` on a new thread inside the named namespace and returns its result.
pub fn run_in<T: Send + 'static>(name: &str, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    let ns = name.to_string();
    std::thread::Builder::new()
        .name(format!("netns {name}"))
        .spawn(move || -> io::Result<T> {
            enter(&ns)?;
            Ok(f())
        })
        .context("starting a thread")?
        .join()
        .map_err(|_| anyhow::anyhow!("the thread in network namespace {name} panicked"))?
        .with_context(|| {
            format!(
                "entering network namespace {name} ({})",
                path(name).display()
            )
        })
}

/// Writes a sysctl of the named namespace (`net.bridge.bridge-nf-call-iptables` → its file
/// under `/proc/sys`); `/proc/sys/net` shows the namespace of the thread that opens it.
pub fn write_sysctl(name: &str, key: &str, value: &str) -> Result<()> {
    let file = PathBuf::from("/proc/sys").join(key.replace('.', "/"));
    let value = value.to_string();
    let shown = file.display().to_string();
    run_in(name, move || std::fs::write(&file, value))?
        .with_context(|| format!("writing {shown} in network namespace {name}"))
}

/// Reads a sysctl of the named namespace.
pub fn read_sysctl(name: &str, key: &str) -> Result<String> {
    let file = PathBuf::from("/proc/sys").join(key.replace('.', "/"));
    let shown = file.display().to_string();
    Ok(run_in(name, move || std::fs::read_to_string(&file))?
        .with_context(|| format!("reading {shown} in network namespace {name}"))?
        .trim()
        .to_string())
}

/// What one connection attempt saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Connect {
    /// The handshake completed; the first line the server sent (empty when it sent none).
    Open(String),
    /// No answer within the time limit (a DROP).
    TimedOut,
    /// Refused or unreachable (a REJECT, no listener, no route).
    Refused(String),
}

/// Connects from inside `netns` to `addr`; reads the server's first line when `banner`.
pub fn connect(netns: &str, addr: SocketAddr, timeout: Duration, banner: bool) -> Result<Connect> {
    run_in(netns, move || {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(mut s) => {
                if !banner {
                    return Connect::Open(String::new());
                }
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                let mut buf = [0u8; 128];
                let mut got = Vec::new();
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    got.extend_from_slice(&buf[..n]);
                    if got.contains(&b'\n') || got.len() >= 128 {
                        break;
                    }
                }
                let text = String::from_utf8_lossy(&got);
                Connect::Open(text.lines().next().unwrap_or("").trim().to_string())
            }
            Err(e)
                if e.kind() == io::ErrorKind::TimedOut || e.kind() == io::ErrorKind::WouldBlock =>
            {
                Connect::TimedOut
            }
            Err(e) => Connect::Refused(e.to_string()),
        }
    })
}
