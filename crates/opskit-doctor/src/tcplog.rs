//! A streaming reader of HAProxy logs (`option tcplog`, raw or with a syslog prefix; plain,
//! rotated or gzip-compressed): termination state codes counted per backend and server,
//! session durations (`Tt`) per backend and code, and the events that kill sessions (server
//! DOWN, hard-stop, reloads). Memory depends on the number of backends, servers and distinct
//! durations, never on the size of the log.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};

/// Counts of one termination code.
pub type CodeCounts = BTreeMap<String, u64>;

/// Durations of sessions that ended with one code: bucket start (ms) → sessions.
///
/// Buckets are 100 ms wide up to 10 s, 1 s up to 1000 s, then 1 min, so a cluster of sessions
/// ending at a timeout stays visible while memory stays bounded.
pub type Durations = BTreeMap<u64, u64>;

/// The bucket a session of `ms` falls in.
pub fn bucket(ms: u64) -> u64 {
    match ms {
        0..10_000 => ms / 100 * 100,
        10_000..1_000_000 => ms / 1000 * 1000,
        _ => ms / 60_000 * 60_000,
    }
}

/// What the logs say.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TcplogStats {
    /// Files read (with their line counts).
    pub files: Vec<(String, u64)>,
    /// Session lines understood.
    pub sessions: u64,
    /// Lines that were neither sessions nor known events.
    pub other_lines: u64,
    /// Codes per total (every backend).
    pub codes: CodeCounts,
    /// backend → server → code → sessions.
    pub by_server: BTreeMap<String, BTreeMap<String, CodeCounts>>,
    /// backend → code → durations.
    pub durations: BTreeMap<String, BTreeMap<String, Durations>>,
    /// `Server <be>/<srv> is DOWN` lines, per `be/srv`.
    pub down_events: BTreeMap<String, u64>,
    /// Sessions the DOWN lines said were active (killed with `shutdown-sessions`).
    pub down_sessions_active: u64,
    /// hard-stop lines (`soft-stop running for too long, performing a hard-stop`).
    pub hard_stops: u64,
    /// Master re-executions and proxy (re)starts (`Reexecuting Master process`, `Proxy … started`).
    pub reloads: u64,
    /// Accept date of the first and the last session (as written).
    pub first: Option<String>,
    /// See `first`.
    pub last: Option<String>,
}

/// One session line.
#[derive(Debug, Clone, PartialEq)]
pub struct Session<'a> {
    /// Client `ip:port`.
    pub client: &'a str,
    /// Accept date as written (`23/Nov/2026:18:40:14.201`).
    pub date: &'a str,
    /// Frontend.
    pub frontend: &'a str,
    /// Backend.
    pub backend: &'a str,
    /// Server (`<NOSRV>` when none).
    pub server: &'a str,
    /// Total session time `Tt`, ms (`None` when `-1`).
    pub total_ms: Option<u64>,
    /// Termination state, 2 characters.
    pub code: &'a str,
}

/// Parses a tcplog session line (`ip:port [date] fe be/srv Tw/Tc/Tt bytes ts …`), with or
/// without a syslog prefix.
pub fn parse_session(line: &str) -> Option<Session<'_>> {
    let open = line.find(" [")?;
    let client = line[..open].rsplit(' ').next()?;
    if !client.contains(':') {
        return None;
    }
    let rest = &line[open + 2..];
    let close = rest.find("] ")?;
    let date = &rest[..close];
    let mut w = rest[close + 2..].split_ascii_whitespace();
    let frontend = w.next()?;
    let (backend, server) = w.next()?.split_once('/')?;
    let timers = w.next()?;
    let total = timers.rsplit('/').next()?;
    if timers.matches('/').count() != 2 {
        return None;
    }
    let bytes = w.next()?;
    if !bytes
        .trim_start_matches('+')
        .bytes()
        .all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let code = w.next()?;
    if code.len() != 2 {
        return None;
    }
    let total_ms = total.trim_start_matches('+').parse::<u64>().ok();
    Some(Session {
        client,
        date,
        frontend,
        backend,
        server,
        total_ms,
        code,
    })
}

fn entry<'m, V: Default>(map: &'m mut BTreeMap<String, V>, key: &str) -> &'m mut V {
    if !map.contains_key(key) {
        map.insert(key.to_string(), V::default());
    }
    map.get_mut(key).expect("inserted above")
}

impl TcplogStats {
    /// Counts one line.
    pub fn add_line(&mut self, line: &str) {
        if let Some(s) = parse_session(line) {
            self.sessions += 1;
            *entry(&mut self.codes, s.code) += 1;
            let servers = entry(&mut self.by_server, s.backend);
            *entry(entry(servers, s.server), s.code) += 1;
            if let Some(ms) = s.total_ms {
                let d = entry(entry(&mut self.durations, s.backend), s.code);
                *d.entry(bucket(ms)).or_default() += 1;
            }
            if self.first.is_none() {
                self.first = Some(s.date.to_string());
            }
            self.last = Some(s.date.to_string());
            return;
        }
        if let Some(i) = line.find(" is DOWN") {
            let head = &line[..i];
            let who = head.rsplit(' ').next().unwrap_or(head);
            *entry(&mut self.down_events, who) += 1;
            if let Some(j) = line.find(" sessions active") {
                let n = line[..j]
                    .rsplit(' ')
                    .next()
                    .and_then(|n| n.parse::<u64>().ok());
                self.down_sessions_active += n.unwrap_or(0);
            }
        } else if line.contains("performing a hard-stop") {
            self.hard_stops += 1;
        } else if line.contains("Reexecuting Master process") {
            self.reloads += 1;
        } else {
            self.other_lines += 1;
        }
    }

    /// Reads a whole stream line by line (bytes that are not UTF-8 are replaced).
    pub fn add_reader(&mut self, reader: impl Read) -> std::io::Result<u64> {
        let mut r = BufReader::with_capacity(256 * 1024, reader);
        let mut buf = Vec::with_capacity(512);
        let mut lines = 0;
        loop {
            buf.clear();
            if r.read_until(b'\n', &mut buf)? == 0 {
                return Ok(lines);
            }
            lines += 1;
            let text = String::from_utf8_lossy(&buf);
            self.add_line(text.trim_end());
        }
    }

    /// Reads a log file: plain or gzip (by its magic bytes, so `haproxy.log.2.gz` and a
    /// compressed file without the suffix both work).
    pub fn add_file(&mut self, path: &Path) -> Result<()> {
        let lines = read_maybe_gz(path, |r| self.add_reader(r))
            .with_context(|| format!("reading {}", path.display()))?;
        self.files.push((path.display().to_string(), lines));
        Ok(())
    }

    /// Sessions of `backend` that ended with `code` and lasted `target_ms` within `tolerance`
    /// (a timeout fires once, so its sessions cluster at the timeout's value).
    pub fn near(&self, backend: Option<&str>, code: &str, target_ms: u64) -> u64 {
        let tol = (target_ms / 20).max(300);
        let lo = bucket(target_ms.saturating_sub(tol));
        let hi = target_ms + tol;
        self.durations
            .iter()
            .filter(|(b, _)| backend.is_none_or(|x| x == b.as_str()))
            .filter_map(|(_, codes)| codes.get(code))
            .flat_map(|d| d.range(lo..=hi))
            .map(|(_, n)| n)
            .sum()
    }

    /// Sessions of `backend` that ended with `code` after at least `min_ms` (less 5 %): an
    /// `sD` is logged when the client comes back, so it lasts the timeout *or longer*.
    pub fn at_least(&self, backend: Option<&str>, code: &str, min_ms: u64) -> u64 {
        let lo = bucket(min_ms - min_ms / 20);
        self.durations
            .iter()
            .filter(|(b, _)| backend.is_none_or(|x| x == b.as_str()))
            .filter_map(|(_, codes)| codes.get(code))
            .flat_map(|d| d.range(lo..))
            .map(|(_, n)| n)
            .sum()
    }

    /// Sessions with `code` in `backend` (every backend when `None`).
    pub fn count(&self, backend: Option<&str>, code: &str) -> u64 {
        match backend {
            None => self.codes.get(code).copied().unwrap_or(0),
            Some(b) => self
                .by_server
                .get(b)
                .map(|s| s.values().filter_map(|c| c.get(code)).sum())
                .unwrap_or(0),
        }
    }

    /// The most common duration bucket of `code` sessions (the cluster), ms, and its size.
    pub fn mode_duration(&self, code: &str) -> Option<(u64, u64)> {
        let mut all: HashMap<u64, u64> = HashMap::new();
        for codes in self.durations.values() {
            if let Some(d) = codes.get(code) {
                for (b, n) in d {
                    *all.entry(*b).or_default() += n;
                }
            }
        }
        all.into_iter().max_by_key(|(b, n)| (*n, *b))
    }

    /// Servers of `backend` that ended sessions with `code`, with how many.
    pub fn servers_with(&self, code: &str) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        for (be, servers) in &self.by_server {
            for (srv, codes) in servers {
                if let Some(n) = codes.get(code) {
                    out.push((format!("{be}/{srv}"), *n));
                }
            }
        }
        out
    }
}

/// Opens `path`, decompressing gzip, and hands the stream to `f`.
pub fn read_maybe_gz<T>(
    path: &Path,
    f: impl FnOnce(&mut dyn Read) -> std::io::Result<T>,
) -> std::io::Result<T> {
    let mut file = File::open(path)?;
    let mut magic = [0u8; 2];
    let n = file.read(&mut magic)?;
    let head = std::io::Cursor::new(magic[..n].to_vec());
    let chained = head.chain(file);
    if n == 2 && magic == [0x1f, 0x8b] {
        f(&mut flate2::read::MultiGzDecoder::new(chained))
    } else {
        f(&mut { chained })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    // Real lines from the notes' lab (HAProxy 2.6.12) and the opskit lab.
    const LOG: &str = "\
127.0.0.1:56586 [23/Nov/2026:18:40:14.201] fe_mysql_ro be_slaves/Slave_01 1/0/5002 186 cD 1/1/0/0/0 0/0
127.0.0.1:56590 [23/Nov/2026:18:41:00.000] fe_mysql_ro be_slaves/Slave_02 1/0/5010 186 cD 1/1/0/0/0 0/0
Nov 23 18:42:00 db1 haproxy[812]: 10.1.2.3:40000 [23/Nov/2026:18:41:30.000] fe_mysql_ro be_slaves/Slave_02 0/0/3004 120 SD 1/1/0/0/0 0/0
127.0.0.1:56600 [23/Nov/2026:18:43:00.000] fe_mysql_ro be_slaves/Slave_01 0/0/700 90 -- 1/1/0/0/0 0/0
[WARNING]  (4321) : Server be_slaves/Slave_01 is DOWN, reason: Layer7 wrong status, code: 1045, info: \"Access denied\", check duration: 1ms. 1 active and 0 backup servers left. 2 sessions active, 0 requeued, 0 remaining in queue.
[WARNING]  (4321) : soft-stop running for too long, performing a hard-stop.
[WARNING]  (4300) : Reexecuting Master process
127.0.0.1:56610 [23/Nov/2026:18:44:00.000] fe_mysql_ro be_slaves/<NOSRV> -1/-1/0 0 SC 1/1/0/0/0 0/0
";

    #[test]
    fn sessions_and_events_are_counted_per_backend_and_server() {
        let mut s = TcplogStats::default();
        assert_eq!(s.add_reader(LOG.as_bytes()).unwrap(), 8);
        assert_eq!(s.sessions, 5);
        assert_eq!(s.codes["cD"], 2);
        assert_eq!(s.codes["SD"], 1);
        assert_eq!(s.by_server["be_slaves"]["Slave_02"]["cD"], 1);
        assert_eq!(s.by_server["be_slaves"]["<NOSRV>"]["SC"], 1);
        assert_eq!(s.down_events["be_slaves/Slave_01"], 1);
        assert_eq!(s.down_sessions_active, 2);
        assert_eq!((s.hard_stops, s.reloads, s.other_lines), (1, 1, 0));
        assert_eq!(s.near(Some("be_slaves"), "cD", 5000), 2);
        assert_eq!(s.near(None, "cD", 3000), 0);
        assert_eq!(s.near(None, "SD", 3000), 1);
        assert_eq!(s.at_least(None, "cD", 5000), 2);
        assert_eq!(s.at_least(None, "cD", 6000), 0);
        assert_eq!(s.mode_duration("cD"), Some((5000, 2)));
        assert_eq!(s.first.as_deref(), Some("23/Nov/2026:18:40:14.201"));
        assert_eq!(s.last.as_deref(), Some("23/Nov/2026:18:44:00.000"));
    }

    #[test]
    fn gzip_and_plain_files_give_the_same_counts() {
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("haproxy.log.1");
        std::fs::write(&plain, LOG).unwrap();
        let gz = dir.path().join("haproxy.log.2.gz");
        let mut e =
            flate2::write::GzEncoder::new(File::create(&gz).unwrap(), flate2::Compression::fast());
        e.write_all(LOG.as_bytes()).unwrap();
        e.finish().unwrap();
        let (mut a, mut b) = (TcplogStats::default(), TcplogStats::default());
        a.add_file(&plain).unwrap();
        b.add_file(&gz).unwrap();
        assert_eq!(a.codes, b.codes);
        assert_eq!(a.durations, b.durations);
        assert!(b.add_file(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn buckets_keep_timeouts_apart_and_bounded() {
        assert_eq!(bucket(2049), 2000);
        assert_eq!(bucket(50_400), 50_000);
        assert_eq!(bucket(28_800_100), 28_800_000);
        assert!(parse_session("not a log line [x] y").is_none());
    }
}
