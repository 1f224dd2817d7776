//! Application-like load for rehearsals, tests and the benchmark: a writer that follows the
//! write name in DNS (it resolves again on every reconnect, as an application's pool does
//! after an error) and a reader that goes through HAProxy.
//!
//! The writer inserts numbered rows (`seq`, the writer's name, `@@server_id` of the server
//! that committed it) into a table with `seq` as primary key, one at a time. A row counts as
//! committed when the server acknowledged it; when the connection broke during an insert the
//! row is *ambiguous* until the retry tells (`1062` duplicate key: it had committed). So after
//! a switchover every committed or ambiguous-then-found row must be on every server exactly
//! once, and the write-unavailable window is the gap between the last commit on the old master
//! and the first on the new one, as the client saw it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use opskit_core::config::mysql::HostPort;
use serde::{Deserialize, Serialize};

use crate::dns::DnsServer;
use crate::session::{Credentials, Session, server_code};

/// The table the writer fills (created by the lab: `seq BIGINT PRIMARY KEY, writer, server_id,
/// ts`).
pub const DEFAULT_TABLE: &str = "lab.writes";

/// How the writer reaches the master.
#[derive(Debug, Clone)]
pub struct WriterOptions {
    /// The name server to ask (the zone's primary: no cache in between).
    pub dns_server: HostPort,
    /// The zone.
    pub zone: String,
    /// The write name (`mysql-master.ipo.com`).
    pub name: String,
    /// The MySQL port the servers share.
    pub port: u16,
    /// The application account.
    pub creds: Credentials,
    /// This writer's name in the `writer` column (several writers may share a table).
    pub writer: String,
    /// The table.
    pub table: String,
    /// Pause between two inserts.
    pub interval: Duration,
    /// Pause before reconnecting after an error.
    pub retry: Duration,
    /// Limit on connect and on each statement.
    pub timeout: Duration,
}

/// One acknowledged insert.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Commit {
    /// The row's `seq`.
    pub seq: u64,
    /// `@@server_id` of the server that acknowledged it.
    pub server_id: u32,
    /// Milliseconds since the writer started.
    pub at_ms: f64,
}

/// What the writer saw.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WriterReport {
    /// Acknowledged inserts, in order.
    pub commits: Vec<Commit>,
    /// Rows whose insert broke off and whose retry found them committed (duplicate key).
    pub found_on_retry: Vec<u64>,
    /// The last row, if its insert broke off and the writer stopped before retrying.
    pub unknown: Option<u64>,
    /// Errors by kind (`1290 read-only`, `connect`, `dns`, …) with counts.
    pub errors: BTreeMap<String, u64>,
    /// `(ms since start, address)` each time the write name resolved to a new address.
    pub resolved: Vec<(f64, String)>,
}

/// The gap in acknowledged writes around a switchover.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Window {
    /// The last commit acknowledged by the old master (ms since start).
    pub last_old_ms: f64,
    /// The first commit acknowledged by the new master (ms since start).
    pub first_new_ms: f64,
}

impl Window {
    /// The write-unavailable window in seconds.
    pub fn secs(&self) -> f64 {
        (self.first_new_ms - self.last_old_ms) / 1000.0
    }
}

impl WriterReport {
    /// Every row that is committed (acknowledged, or found on retry).
    pub fn committed_seqs(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self
            .commits
            .iter()
            .map(|c| c.seq)
            .chain(self.found_on_retry.iter().copied())
            .collect();
        v.sort_unstable();
        v
    }

    /// The gap between the last commit on `old` and the first on `new` after it.
    pub fn window(&self, old_server_id: u32, new_server_id: u32) -> Option<Window> {
        let first_new = self.commits.iter().find(|c| c.server_id == new_server_id)?;
        let last_old = self
            .commits
            .iter()
            .rev()
            .find(|c| c.server_id == old_server_id && c.at_ms <= first_new.at_ms)?;
        Some(Window {
            last_old_ms: last_old.at_ms,
            first_new_ms: first_new.at_ms,
        })
    }

    fn error(&mut self, kind: impl Into<String>) {
        *self.errors.entry(kind.into()).or_default() += 1;
    }
}

fn kind_of(e: &anyhow::Error) -> String {
    match server_code(e) {
        Some(1290) => "1290 read-only".into(),
        Some(1062) => "1062 duplicate".into(),
        Some(c) => format!("{c} server error"),
        None => {
            let t = format!("{e:#}");
            if t.contains("connect") {
                "connect".into()
            } else {
                "connection lost".into()
            }
        }
    }
}

/// A writer running on its own thread.
pub struct Writer {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<WriterReport>,
}

impl Writer {
    /// Starts writing at once.
    pub fn start(opts: WriterOptions) -> anyhow::Result<Writer> {
        let dns = DnsServer::new(&opts.dns_server, &opts.zone, opts.timeout)?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let handle = std::thread::Builder::new()
            .name(format!("writer-{}", opts.writer))
            .spawn(move || write_loop(&opts, &dns, &flag))?;
        Ok(Writer { stop, handle })
    }

    /// Stops and returns what it saw.
    pub fn stop(self) -> WriterReport {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.join().unwrap_or_default()
    }
}

fn write_loop(o: &WriterOptions, dns: &DnsServer, stop: &AtomicBool) -> WriterReport {
    let clock = Instant::now();
    let ms = || clock.elapsed().as_secs_f64() * 1000.0;
    let mut r = WriterReport::default();
    let mut conn: Option<(Session, u32)> = None;
    let mut seq: u64 = 1;
    // The insert of `seq` broke off: it may have committed.
    let mut pending = false;
    let mut last_addr = String::new();
    while !stop.load(Ordering::SeqCst) {
        if conn.is_none() {
            let addr = match dns.query_a(&o.name) {
                Ok(a) if !a.is_empty() => a[0].to_string(),
                _ => {
                    r.error("dns");
                    std::thread::sleep(o.retry);
                    continue;
                }
            };
            if addr != last_addr {
                r.resolved.push((ms(), addr.clone()));
                last_addr.clone_from(&addr);
            }
            let opened = Session::new(
                format!("{}:{}", addr, o.port),
                &addr,
                o.port,
                &o.creds,
                o.timeout,
            )
            .and_then(|mut s| {
                let id = s.value("SELECT @@server_id")?.unwrap_or_default();
                Ok((s, id.parse().unwrap_or(0)))
            });
            match opened {
                Ok(c) => conn = Some(c),
                Err(e) => {
                    r.error(kind_of(&e));
                    std::thread::sleep(o.retry);
                    continue;
                }
            }
        }
        let (s, server_id) = conn.as_mut().expect("connected above");
        let sql = format!(
            "INSERT INTO {} (seq, writer, server_id) VALUES ({seq}, '{}', @@server_id)",
            o.table,
            crate::flavor::sql_str(&o.writer)
        );
        match s.exec(&sql) {
            Ok(()) => {
                r.commits.push(Commit {
                    seq,
                    server_id: *server_id,
                    at_ms: ms(),
                });
                seq += 1;
                pending = false;
                std::thread::sleep(o.interval);
            }
            Err(e) if pending && server_code(&e) == Some(1062) => {
                r.found_on_retry.push(seq);
                seq += 1;
                pending = false;
            }
            Err(e) => {
                r.error(kind_of(&e));
                // A server error means the insert did not commit; anything else may have.
                pending = server_code(&e).is_none() || pending;
                conn = None;
                std::thread::sleep(o.retry);
            }
        }
    }
    if pending {
        r.unknown = Some(seq);
    }
    r
}

/// How the reader reaches the read pool.
#[derive(Debug, Clone)]
pub struct ReaderOptions {
    /// HAProxy's frontend address.
    pub host: String,
    /// Its port.
    pub port: u16,
    /// The application account.
    pub creds: Credentials,
    /// The query (default: `SELECT @@server_id, COUNT(*) FROM lab.writes`).
    pub query: String,
    /// Pause between reads.
    pub interval: Duration,
    /// A new connection every this many reads (so the balancing is exercised).
    pub reconnect_every: u32,
    /// Limit on connect and on each statement.
    pub timeout: Duration,
}

/// What the reader saw.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ReaderReport {
    /// Successful reads.
    pub reads: u64,
    /// Failed reads or connects: `(ms since start, error)`.
    pub errors: Vec<(f64, String)>,
    /// Reads answered per `@@server_id`.
    pub by_server: BTreeMap<u32, u64>,
}

/// A reader running on its own thread.
pub struct Reader {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<ReaderReport>,
}

impl Reader {
    /// Starts reading at once.
    pub fn start(opts: ReaderOptions) -> anyhow::Result<Reader> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let handle = std::thread::Builder::new()
            .name("reader".into())
            .spawn(move || read_loop(&opts, &flag))?;
        Ok(Reader { stop, handle })
    }

    /// Stops and returns what it saw.
    pub fn stop(self) -> ReaderReport {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.join().unwrap_or_default()
    }
}

fn read_loop(o: &ReaderOptions, stop: &AtomicBool) -> ReaderReport {
    let clock = Instant::now();
    let mut r = ReaderReport::default();
    let mut conn: Option<Session> = None;
    let mut used = 0;
    while !stop.load(Ordering::SeqCst) {
        if conn.is_none() || used >= o.reconnect_every {
            conn = None;
            used = 0;
            let mut s = match Session::new("read pool", &o.host, o.port, &o.creds, o.timeout) {
                Ok(s) => s,
                Err(e) => {
                    r.errors
                        .push((clock.elapsed().as_secs_f64() * 1000.0, format!("{e:#}")));
                    std::thread::sleep(o.interval);
                    continue;
                }
            };
            if let Err(e) = s.connect() {
                r.errors
                    .push((clock.elapsed().as_secs_f64() * 1000.0, format!("{e:#}")));
                std::thread::sleep(o.interval);
                continue;
            }
            conn = Some(s);
        }
        let s = conn.as_mut().expect("connected above");
        match s.query(&o.query) {
            Ok(rows) => {
                r.reads += 1;
                used += 1;
                let id = rows
                    .first()
                    .and_then(|row| row.at(0))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                *r.by_server.entry(id).or_default() += 1;
            }
            Err(e) => {
                r.errors
                    .push((clock.elapsed().as_secs_f64() * 1000.0, format!("{e:#}")));
                conn = None;
            }
        }
        std::thread::sleep(o.interval);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(seq: u64, server_id: u32, at_ms: f64) -> Commit {
        Commit {
            seq,
            server_id,
            at_ms,
        }
    }

    #[test]
    fn the_window_is_last_old_to_first_new() {
        let r = WriterReport {
            commits: vec![c(1, 1, 0.0), c(2, 1, 10.0), c(3, 2, 350.0), c(4, 2, 360.0)],
            found_on_retry: vec![5],
            ..Default::default()
        };
        let w = r.window(1, 2).unwrap();
        assert_eq!((w.last_old_ms, w.first_new_ms), (10.0, 350.0));
        assert!((w.secs() - 0.34).abs() < 1e-9);
        assert!(r.window(2, 1).is_none());
        assert_eq!(r.committed_seqs(), [1, 2, 3, 4, 5]);
    }
}
