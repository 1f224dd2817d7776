//! A real PHP PDO client (Debian's `php-cli` + `php-mysql`, mysqlnd) for reproducing spec §5's
//! "2006 MySQL server has gone away" through the lab's HAProxy: it connects, idles (or sends a
//! statement over `max_allowed_packet`), queries again and says what PDO said.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, Result};
use serde::Deserialize;

use crate::components::write_file;

/// The script (written next to the lab's files on first use).
pub const CLIENT_PHP: &str = include_str!("client.php");

/// What the PDO client printed.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct PdoOutcome {
    /// The last query answered.
    pub ok: bool,
    /// Where it stopped: `connect`, `first`, `big`, `after`.
    pub phase: String,
    /// PDO's message (`SQLSTATE[HY000]: General error: 2006 MySQL server has gone away`).
    pub error: Option<String>,
    /// The big statement's own error (`1153 Got a packet bigger than 'max_allowed_packet'`).
    #[serde(default)]
    pub big_error: Option<String>,
    /// `CONNECTION_ID()` on the replica that served it.
    pub connection_id: Option<u64>,
    /// `@@server_id` of that replica.
    pub server_id: Option<u64>,
}

impl PdoOutcome {
    /// PDO reported error 2006 on an established handle.
    pub fn gone_away(&self) -> bool {
        self.error
            .as_deref()
            .is_some_and(|e| e.contains("2006") && e.contains("gone away"))
    }
}

/// What the client does after connecting.
#[derive(Debug, Clone, Copy)]
pub enum PdoAction {
    /// Idle this long, then `SELECT 1`.
    Idle(Duration),
    /// Send a statement this many bytes long, then `SELECT 1`.
    Big(usize),
}

/// Runs the client against `host:port` as `user` (password in `password_file`); the script
/// is written under `dir`. Waits at most the idle plus 30 s.
pub fn run_pdo(
    dir: &Path,
    host: &str,
    port: u16,
    user: &str,
    password_file: &Path,
    action: PdoAction,
) -> Result<PdoOutcome> {
    let script = dir.join("pdo_client.php");
    write_file(&script, CLIENT_PHP, 0o644)?;
    let mut cmd = Command::new("php");
    cmd.arg(&script)
        .arg(host)
        .arg(port.to_string())
        .arg(user)
        .arg(password_file);
    let limit = match action {
        PdoAction::Idle(d) => {
            cmd.arg("idle").arg(format!("{:.3}", d.as_secs_f64()));
            d + Duration::from_secs(30)
        }
        PdoAction::Big(n) => {
            cmd.arg("big").arg("0").arg(n.to_string());
            Duration::from_secs(30)
        }
    };
    let out = opskit_core::proc::run(&mut cmd, limit)
        .context("running the PHP PDO client (php-cli and php-mysql are needed)")?;
    let text = out.stdout_text();
    let line = text.lines().last().unwrap_or("");
    serde_json::from_str(line).with_context(|| {
        format!(
            "the PDO client printed no result: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}
