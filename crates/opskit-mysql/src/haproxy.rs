//! HAProxy: its runtime API over the admin socket (`show info`, `show stat`, `show servers
//! state`, `set server …`), and the one edit a switchover makes to `haproxy.cfg` so that a
//! reload keeps what the runtime API changed (runtime changes are lost on reload).
//!
//! The runtime API is line based: one command per connection, HAProxy answers and closes.
//! Every exchange has a time limit. An answer that is an error (`No such server.`, `Unknown
//! command`, …) is an error here.

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, bail};
use opskit_core::proc;
use serde::{Deserialize, Serialize};

/// A client of one HAProxy's runtime API.
#[derive(Debug, Clone)]
pub struct Runtime {
    socket: PathBuf,
    timeout: Duration,
}

/// One server of a backend, from `show servers state` (and `show stat` for sessions).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Slot {
    /// The backend.
    pub backend: String,
    /// The server's name in the backend.
    pub name: String,
    /// Its address.
    pub addr: String,
    /// Its port.
    pub port: u16,
    /// `srv_op_state`: 0 stopped, 1 starting, 2 running, 3 stopping.
    pub op_state: u8,
    /// `srv_admin_state` bits: 0x01 forced maintenance, 0x08 forced drain, …
    pub admin_state: u32,
}

impl Slot {
    /// Running and taking new connections (no maintenance or drain flag).
    pub fn serving(&self) -> bool {
        self.op_state == 2 && self.admin_state == 0
    }

    /// In maintenance (forced, inherited, or from a resolver/config).
    pub fn in_maintenance(&self) -> bool {
        self.admin_state & 0x27 != 0
    }

    /// Draining (forced or inherited).
    pub fn draining(&self) -> bool {
        self.admin_state & 0x18 != 0
    }

    /// `addr:port`.
    pub fn endpoint(&self) -> String {
        format!("{}:{}", self.addr, self.port)
    }

    /// A one-word state for reports.
    pub fn state_word(&self) -> &'static str {
        if self.in_maintenance() {
            "MAINT"
        } else if self.draining() {
            "DRAIN"
        } else if self.op_state == 2 {
            "UP"
        } else {
            "DOWN"
        }
    }
}

/// The states `set server … state` takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminState {
    /// Back in service.
    Ready,
    /// No new connections; existing ones finish.
    Drain,
    /// Out of service.
    Maint,
}

impl AdminState {
    fn word(self) -> &'static str {
        match self {
            AdminState::Ready => "ready",
            AdminState::Drain => "drain",
            AdminState::Maint => "maint",
        }
    }
}

impl Runtime {
    /// A client of the socket at `socket`.
    pub fn new(socket: &Path, timeout: Duration) -> Runtime {
        Runtime {
            socket: socket.to_path_buf(),
            timeout,
        }
    }

    /// The socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The shell line an operator types for `command` (the plan prints these).
    pub fn shell_line(socket: &Path, command: &str) -> String {
        format!(
            "echo '{command}' | socat stdio unix-connect:{}",
            socket.display()
        )
    }

    /// Sends one command; returns the answer, or an error when HAProxy answered with one.
    pub fn command(&self, command: &str) -> anyhow::Result<String> {
        let shown = self.socket.display();
        let mut s = UnixStream::connect(&self.socket).with_context(|| {
            format!("the HAProxy admin socket {shown} does not answer (is HAProxy running, is the path right?)")
        })?;
        s.set_read_timeout(Some(self.timeout))?;
        s.set_write_timeout(Some(self.timeout))?;
        s.write_all(format!("{command}\n").as_bytes())
            .with_context(|| format!("sending `{command}` to {shown}"))?;
        let mut out = String::new();
        s.read_to_string(&mut out)
            .with_context(|| format!("reading the answer to `{command}` from {shown}"))?;
        let first = out.lines().next().unwrap_or("").trim();
        let error_starts = [
            "Unknown command",
            "No such",
            "Require ",
            "Permission denied",
            "Can't find",
            "Invalid",
            "'set server",
            "Missing",
        ];
        if error_starts.iter().any(|p| first.starts_with(p)) {
            bail!("HAProxy ({shown}) refused `{command}`: {}", out.trim());
        }
        Ok(out)
    }

    /// `show info` as key → value.
    pub fn show_info(&self) -> anyhow::Result<BTreeMap<String, String>> {
        Ok(self
            .command("show info")?
            .lines()
            .filter_map(|l| l.split_once(": "))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect())
    }

    /// `show stat` as one map per line (CSV columns: `pxname`, `svname`, `scur`, `status`, …).
    pub fn show_stat(&self) -> anyhow::Result<Vec<BTreeMap<String, String>>> {
        let text = self.command("show stat")?;
        let mut lines = text.lines().filter(|l| !l.trim().is_empty());
        let header: Vec<String> = lines
            .next()
            .context("`show stat` printed no header")?
            .trim_start_matches("# ")
            .split(',')
            .map(str::to_string)
            .collect();
        Ok(lines
            .map(|l| {
                header
                    .iter()
                    .cloned()
                    .zip(l.split(',').map(str::to_string))
                    .collect()
            })
            .collect())
    }

    /// `show servers state <backend>`.
    pub fn servers_state(&self, backend: &str) -> anyhow::Result<Vec<Slot>> {
        parse_servers_state(&self.command(&format!("show servers state {backend}"))?)
    }

    /// Current sessions on one server (`scur` of `show stat`).
    pub fn sessions(&self, backend: &str, server: &str) -> anyhow::Result<u64> {
        let stat = self.show_stat()?;
        let row = stat
            .iter()
            .find(|r| {
                r.get("pxname").map(String::as_str) == Some(backend)
                    && r.get("svname").map(String::as_str) == Some(server)
            })
            .with_context(|| format!("`show stat` has no {backend}/{server}"))?;
        Ok(row.get("scur").and_then(|v| v.parse().ok()).unwrap_or(0))
    }

    /// The command for [`Runtime::set_state`].
    pub fn set_state_command(backend: &str, server: &str, state: AdminState) -> String {
        format!("set server {backend}/{server} state {}", state.word())
    }

    /// `set server <backend>/<server> state ready|drain|maint`.
    pub fn set_state(&self, backend: &str, server: &str, state: AdminState) -> anyhow::Result<()> {
        self.command(&Self::set_state_command(backend, server, state))
            .map(drop)
    }

    /// The command for [`Runtime::set_addr`].
    pub fn set_addr_command(backend: &str, server: &str, addr: &str, port: u16) -> String {
        format!("set server {backend}/{server} addr {addr} port {port}")
    }

    /// `set server <backend>/<server> addr <addr> port <port>`.
    pub fn set_addr(
        &self,
        backend: &str,
        server: &str,
        addr: &str,
        port: u16,
    ) -> anyhow::Result<()> {
        let answer = self.command(&Self::set_addr_command(backend, server, addr, port))?;
        // A success says "IP changed from …" or "no need to change the addr"; anything else
        // is HAProxy refusing.
        let a = answer.trim();
        if !(a.is_empty() || a.contains("changed") || a.contains("no need")) {
            bail!("HAProxy refused to change {backend}/{server} to {addr}:{port}: {a}");
        }
        Ok(())
    }
}

/// Parses `show servers state` (format 1: a version line, a `#` header, one line per server).
pub fn parse_servers_state(text: &str) -> anyhow::Result<Vec<Slot>> {
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let _version = lines
        .next()
        .context("`show servers state` printed nothing")?;
    let header: Vec<&str> = lines
        .next()
        .context("`show servers state` printed no header")?
        .trim_start_matches('#')
        .split_whitespace()
        .collect();
    let col = |name: &str| {
        header
            .iter()
            .position(|h| *h == name)
            .with_context(|| format!("`show servers state` has no column {name}"))
    };
    let (be, n, a, p, op, admin) = (
        col("be_name")?,
        col("srv_name")?,
        col("srv_addr")?,
        col("srv_port")?,
        col("srv_op_state")?,
        col("srv_admin_state")?,
    );
    let mut slots = Vec::new();
    for l in lines {
        let w: Vec<&str> = l.split_whitespace().collect();
        if w.len() < header.len().min(admin.max(p) + 1) {
            continue;
        }
        slots.push(Slot {
            backend: w[be].to_string(),
            name: w[n].to_string(),
            addr: w[a].to_string(),
            port: w[p].parse().unwrap_or(0),
            op_state: w[op].parse().unwrap_or(0),
            admin_state: w[admin].parse().unwrap_or(0),
        });
    }
    Ok(slots)
}

/// `haproxy.cfg` with the `server <name>` line of `backend <backend>` pointed at `addr:port`
/// (everything after the address is kept). Errors when the backend or server is not there.
pub fn repoint_server_line(
    text: &str,
    backend: &str,
    server: &str,
    addr: &str,
    port: u16,
) -> anyhow::Result<String> {
    let mut out = String::with_capacity(text.len());
    let mut in_backend = false;
    let mut done = false;
    for line in text.split_inclusive('\n') {
        let t = line.trim_start();
        let words: Vec<&str> = t.split_whitespace().collect();
        let section = [
            "global",
            "defaults",
            "frontend",
            "backend",
            "listen",
            "resolvers",
            "peers",
            "userlist",
            "program",
            "cache",
            "ring",
            "mailers",
            "http-errors",
        ];
        if let Some(first) = words.first()
            && section.contains(first)
            && !line.starts_with([' ', '\t'])
        {
            in_backend =
                matches!(words.as_slice(), ["backend" | "listen", name, ..] if *name == backend);
        }
        if in_backend
            && !done
            && let ["server", name, _old, rest @ ..] = words.as_slice()
            && *name == server
        {
            let indent = &line[..line.len() - t.len()];
            let mut new = format!("{indent}server {name} {addr}:{port}");
            for r in rest {
                new.push(' ');
                new.push_str(r);
            }
            if line.ends_with('\n') {
                new.push('\n');
            }
            out.push_str(&new);
            done = true;
            continue;
        }
        out.push_str(line);
    }
    if !done {
        bail!("haproxy.cfg has no `server {server}` line in `backend {backend}`");
    }
    Ok(out)
}

/// The address of `server` in `backend` as `haproxy.cfg` has it.
pub fn configured_server(text: &str, backend: &str, server: &str) -> Option<String> {
    let marker = "\u{1}";
    let changed = repoint_server_line(text, backend, server, marker, 1).ok()?;
    // The line that differs holds the configured address.
    text.lines()
        .zip(changed.lines())
        .find_map(|(a, b)| (a != b).then(|| a.split_whitespace().nth(2).unwrap_or("").to_string()))
}

/// Writes `new_text` over the config at `path` after `haproxy -c` accepted it: a temporary
/// file next to it is checked, then renamed over the old one (same mode).
pub fn replace_config(binary: &Path, path: &Path, new_text: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(path)
        .with_context(|| format!("reading {}", path.display()))?
        .permissions()
        .mode()
        & 0o777;
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.opskit-check.{}",
        path.file_name()
            .map(|f| f.to_string_lossy())
            .unwrap_or_default(),
        std::process::id()
    ));
    opskit_core::util::write_atomic(&tmp, new_text.as_bytes(), mode)?;
    let checked = proc::run(
        Command::new(binary).arg("-c").arg("-q").arg("-f").arg(&tmp),
        Duration::from_secs(20),
    )
    .and_then(proc::Output::checked);
    if let Err(e) = checked {
        let _ = std::fs::remove_file(&tmp);
        return Err(e.context(format!(
            "`haproxy -c` rejected the changed {}",
            path.display()
        )));
    }
    let _ = std::fs::remove_file(&tmp);
    opskit_core::util::write_atomic(path, new_text.as_bytes(), mode)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CFG: &str = "global\n    stats socket /run/h.sock level admin\n\nbackend other\n    server Slave_01 10.9.9.9:3306 check\n\nbackend mysql_slave\n    balance roundrobin\n    server Slave_01 10.0.0.12:3306 check inter 1s\n    server Slave_02 10.0.0.13:3306 check\n";

    #[test]
    fn only_the_named_server_of_the_named_backend_moves() {
        let out = repoint_server_line(CFG, "mysql_slave", "Slave_01", "10.0.0.11", 3306).unwrap();
        assert!(out.contains("    server Slave_01 10.0.0.11:3306 check inter 1s\n"));
        assert!(out.contains("server Slave_01 10.9.9.9:3306 check"));
        assert!(out.contains("server Slave_02 10.0.0.13:3306 check"));
        assert_eq!(out.lines().count(), CFG.lines().count());
        assert_eq!(
            configured_server(&out, "mysql_slave", "Slave_01").as_deref(),
            Some("10.0.0.11:3306")
        );
        let e = repoint_server_line(CFG, "mysql_slave", "Slave_09", "x", 1).unwrap_err();
        assert!(e.to_string().contains("Slave_09"));
    }

    #[test]
    fn servers_state_is_read_by_column_name() {
        let text = "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord\n3 mysql_slave 1 Slave_01 127.0.60.12 2 1 1 1 54 15 3 2 6 0 0 0 - 45451 -\n";
        let s = parse_servers_state(text).unwrap();
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].endpoint(), "127.0.60.12:45451");
        assert!(s[0].in_maintenance() && !s[0].serving());
        assert_eq!(s[0].state_word(), "MAINT");
    }
}
