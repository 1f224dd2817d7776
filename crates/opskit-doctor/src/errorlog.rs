//! The MySQL/MariaDB error log: why connections were aborted (`Aborted connection N to db: …
//! (Got timeout reading communication packets)`), packets over `max_allowed_packet`, and the
//! server's own shutdowns and startups. Streamed like the HAProxy log (plain or gzip).

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader};
use std::path::Path;

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};

use crate::tcplog::read_maybe_gz;

/// How many connection ids are kept per reason (the newest).
const IDS_KEPT: usize = 20;

/// What one error log says.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ErrorLogStats {
    /// The file.
    pub file: String,
    /// `Aborted connection` lines per reason (the text in the last parentheses).
    pub aborted: BTreeMap<String, u64>,
    /// The newest connection ids per reason (to match an application's `CONNECTION_ID()`).
    pub aborted_ids: BTreeMap<String, Vec<u64>>,
    /// Lines about a packet bigger than `max_allowed_packet`.
    pub packet_too_big: u64,
    /// Shutdown lines (`Normal shutdown`, `Shutdown complete`).
    pub shutdowns: u64,
    /// Startup lines (`ready for connections`).
    pub startups: u64,
    /// Crash lines (`got signal`).
    pub crashes: u64,
    /// The last startup line's timestamp (the line's first two words).
    pub last_startup: Option<String>,
}

/// The reason of an `Aborted connection` line, with its connection id.
pub fn aborted(line: &str) -> Option<(u64, &str)> {
    let i = line.find("Aborted connection ")?;
    let rest = &line[i + "Aborted connection ".len()..];
    let id = rest.split(' ').next()?.parse().ok()?;
    let open = rest.rfind('(')?;
    let close = rest.rfind(')')?;
    (close > open).then(|| (id, &rest[open + 1..close]))
}

/// Lower-cased reasons sorted into the doctor's causes.
pub fn is_timeout_reason(reason: &str) -> bool {
    let r = reason.to_ascii_lowercase();
    r.contains("timeout reading") || r.contains("disconnected by the server because of inactivity")
}

/// A reason that says the thread was killed.
pub fn is_kill_reason(reason: &str) -> bool {
    let r = reason.to_ascii_lowercase();
    r.contains("killed")
}

impl ErrorLogStats {
    /// Counts one line.
    pub fn add_line(&mut self, line: &str) {
        if let Some((id, reason)) = aborted(line) {
            let reason = reason.trim_end_matches('.').to_string();
            if reason.contains("max_allowed_packet") {
                self.packet_too_big += 1;
            }
            let ids = self.aborted_ids.entry(reason.clone()).or_default();
            ids.push(id);
            if ids.len() > IDS_KEPT {
                ids.remove(0);
            }
            *self.aborted.entry(reason).or_default() += 1;
        } else if line.contains("max_allowed_packet") && line.contains("bigger than") {
            self.packet_too_big += 1;
        } else if line.contains("Normal shutdown") || line.contains("Shutdown complete") {
            self.shutdowns += 1;
        } else if line.contains("ready for connections") {
            self.startups += 1;
            let ts: Vec<&str> = line.split_whitespace().take(2).collect();
            self.last_startup = Some(ts.join(" "));
        } else if line.contains("got signal") {
            self.crashes += 1;
        }
    }

    /// Reads a whole file.
    pub fn read(path: &Path) -> Result<ErrorLogStats> {
        let mut s = ErrorLogStats {
            file: path.display().to_string(),
            ..ErrorLogStats::default()
        };
        read_maybe_gz(path, |r| {
            let mut r = BufReader::new(r);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                if r.read_until(b'\n', &mut buf)? == 0 {
                    return Ok(());
                }
                s.add_line(String::from_utf8_lossy(&buf).trim_end());
            }
        })
        .with_context(|| format!("reading {}", path.display()))?;
        Ok(s)
    }

    /// Aborted connections whose reason satisfies `pred`.
    pub fn aborted_where(&self, pred: impl Fn(&str) -> bool) -> u64 {
        self.aborted
            .iter()
            .filter(|(r, _)| pred(r))
            .map(|(_, n)| n)
            .sum()
    }

    /// The server was stopped or crashed and started again within this log.
    pub fn restarted(&self) -> bool {
        (self.shutdowns > 0 || self.crashes > 0) && self.startups > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "\
2026-11-23 18:40:00 0 [Note] /usr/sbin/mariadbd: ready for connections.
2026-11-23 18:40:19 5 [Warning] Aborted connection 5 to db: 'unconnected' user: 'app' host: '127.0.0.1' (Got timeout reading communication packets)
2026-11-23 18:40:25 6 [Warning] Aborted connection 6 to db: 'lab' user: 'app' host: '127.0.0.1' (Got an error reading communication packets)
2026-11-23 18:41:02 7 [Warning] Aborted connection 7 to db: 'lab' user: 'app' host: '127.0.0.1' (Got a packet bigger than 'max_allowed_packet' bytes)
2026-11-23T18:42:00.123456Z 12 [Note] [MY-010914] [Server] Aborted connection 12 to db: 'lab' user: 'app' host: '10.0.0.5' (The client was disconnected by the server because of inactivity. See wait_timeout and interactive_timeout for configuring this behavior.).
2026-11-23 18:43:00 0 [Note] /usr/sbin/mariadbd (initiated by: unknown): Normal shutdown
2026-11-23 18:43:01 0 [Note] /usr/sbin/mariadbd: Shutdown complete
2026-11-23 18:43:03 0 [Note] /usr/sbin/mariadbd: ready for connections.
";

    #[test]
    fn abort_reasons_restarts_and_packets_are_counted() {
        let mut s = ErrorLogStats::default();
        for l in LOG.lines() {
            s.add_line(l);
        }
        assert_eq!(s.aborted["Got timeout reading communication packets"], 1);
        assert_eq!(
            s.aborted_ids["Got an error reading communication packets"],
            [6]
        );
        assert_eq!(s.packet_too_big, 1);
        assert_eq!(s.aborted_where(is_timeout_reason), 2);
        assert_eq!((s.shutdowns, s.startups), (2, 2));
        assert!(s.restarted());
        assert_eq!(s.last_startup.as_deref(), Some("2026-11-23 18:43:03"));
        assert_eq!(aborted("Aborted connection x"), None);
    }
}
