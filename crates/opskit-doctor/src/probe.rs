//! `opskit mysql probe-idle`: the path's real idle limit, measured through HAProxy.
//!
//! Connections are opened in parallel through the DSN (HAProxy's frontend), each runs
//! `SELECT CONNECTION_ID(), @@hostname, @@session.wait_timeout`, idles for one duration of a
//! ladder (1 s … 8 h, up to `--max`, plus `wait_timeout ± 2 s`) and runs `SELECT 1`. As soon
//! as one fails and every shorter one has answered, the longer ones are dropped. A second
//! round of 9 connections splits the interval between the longest surviving and the shortest
//! failing idle. The cut is then attributed to a timer by the HAProxy log written during the
//! probe (`cD` client/tunnel, `sD` server, `SD` the server closed) and the replicas' abort
//! reasons, or failing those by the configured value closest to it. Read-only; at most
//! `2 × max` plus connect time.

use std::io::{BufRead as _, BufReader, Seek as _, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use opskit_mysql::session::Credentials;
use serde::{Deserialize, Serialize};

use crate::errorlog::{ErrorLogStats, is_timeout_reason};
use crate::haproxy_cfg::{Route, Timer};
use crate::live::Dsn;
use crate::rank::human;
use crate::tcplog::TcplogStats;

/// The first round's idles, ms (the notes' ladder, finer at the short end).
const LADDER_MS: &[u64] = &[
    1000, 1500, 2000, 3000, 4000, 5000, 7000, 10_000, 15_000, 20_000, 25_000, 29_000, 31_000,
    45_000, 49_000, 51_000, 59_000, 61_000, 90_000, 120_000, 180_000, 300_000, 350_000, 600_000,
    900_000, 1_800_000, 3_600_000, 7_200_000, 28_800_000,
];
/// Connections of the refining round.
const REFINE: u64 = 9;

/// What the probe needs.
#[derive(Debug, Clone)]
pub struct ProbeOptions {
    /// The application's path (HAProxy's frontend).
    pub dsn: Dsn,
    /// The account.
    pub credentials: Credentials,
    /// The longest idle tried.
    pub max: Duration,
    /// Time limit of the connect and of each statement.
    pub timeout: Duration,
    /// HAProxy's routes (from haproxy.cfg), to name the timer.
    pub routes: Vec<Route>,
    /// HAProxy logs to read what was written during the probe.
    pub haproxy_logs: Vec<PathBuf>,
    /// Replica error logs, same.
    pub mysql_error_logs: Vec<PathBuf>,
}

/// One connection of the probe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Probe {
    /// The idle tried, ms.
    pub idle_ms: u64,
    /// `SELECT 1` answered after the idle (`None`: dropped because a shorter one failed).
    pub survived: Option<bool>,
    /// The error when it did not.
    pub error: Option<String>,
    /// `CONNECTION_ID()` on the replica.
    pub connection_id: Option<u64>,
    /// `@@hostname` of the replica.
    pub server: Option<String>,
}

/// The probe's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeReport {
    /// The DSN probed.
    pub dsn: String,
    /// The longest idle tried, ms.
    pub max_ms: u64,
    /// `@@session.wait_timeout` through the path, seconds.
    pub wait_timeout: Option<u64>,
    /// Every connection.
    pub probes: Vec<Probe>,
    /// The longest idle that survived, ms.
    pub longest_survived_ms: Option<u64>,
    /// The shortest idle that was cut, ms.
    pub shortest_failed_ms: Option<u64>,
    /// The estimate of the path's limit (middle of the two), ms.
    pub cutoff_ms: Option<u64>,
    /// The timer that cut it.
    pub timer: Option<Timer>,
    /// Why that timer.
    pub why: Vec<String>,
    /// Wall time, ms.
    pub elapsed_ms: u64,
}

fn one(opts: &ProbeOptions, idle: Duration, cancel: &AtomicBool) -> Probe {
    let mut p = Probe {
        idle_ms: idle.as_millis() as u64,
        survived: None,
        error: None,
        connection_id: None,
        server: None,
    };
    let mut s = match crate::live::session(&opts.dsn, &opts.credentials, opts.timeout) {
        Ok(s) => s,
        Err(e) => {
            p.error = Some(format!("{e:#}"));
            return p;
        }
    };
    match s.query("SELECT CONNECTION_ID(), @@hostname") {
        Ok(rows) => {
            let r = rows.first();
            p.connection_id = r.and_then(|r| r.at(0)?.parse().ok());
            p.server = r.and_then(|r| r.at(1).map(str::to_string));
        }
        Err(e) => {
            p.error = Some(format!("before the idle: {e:#}"));
            return p;
        }
    }
    let until = Instant::now() + idle;
    while Instant::now() < until {
        if cancel.load(Ordering::Relaxed) {
            return p;
        }
        std::thread::sleep((until - Instant::now()).min(Duration::from_millis(50)));
    }
    match s.query("SELECT 1") {
        Ok(_) => p.survived = Some(true),
        Err(e) => {
            p.survived = Some(false);
            p.error = Some(format!("{e:#}"));
        }
    }
    p
}

/// Runs `idles` in parallel; returns when every one answered, or when one failed and every
/// shorter one answered (the longer ones are dropped).
fn round(opts: &ProbeOptions, idles: &[u64]) -> Vec<Probe> {
    let cancel = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel();
    for &ms in idles {
        let (tx, cancel, opts) = (tx.clone(), Arc::clone(&cancel), opts.clone());
        std::thread::spawn(move || {
            let _ = tx.send(one(&opts, Duration::from_millis(ms), &cancel));
        });
    }
    drop(tx);
    let mut done: Vec<Probe> = Vec::new();
    while let Ok(p) = rx.recv() {
        done.push(p);
        let failed = done
            .iter()
            .filter(|p| p.survived == Some(false))
            .map(|p| p.idle_ms)
            .min();
        if let Some(f) = failed {
            let shorter_pending = idles
                .iter()
                .filter(|&&ms| ms < f)
                .any(|ms| !done.iter().any(|p| p.idle_ms == *ms));
            if !shorter_pending {
                cancel.store(true, Ordering::Relaxed);
            }
        }
    }
    for &ms in idles {
        if !done.iter().any(|p| p.idle_ms == ms) {
            done.push(Probe {
                idle_ms: ms,
                survived: None,
                error: None,
                connection_id: None,
                server: None,
            });
        }
    }
    done.sort_by_key(|p| p.idle_ms);
    done
}

fn bracket(probes: &[Probe]) -> (Option<u64>, Option<u64>) {
    let failed = probes
        .iter()
        .filter(|p| p.survived == Some(false))
        .map(|p| p.idle_ms)
        .min();
    let ok = probes
        .iter()
        .filter(|p| p.survived == Some(true) && failed.is_none_or(|f| p.idle_ms < f))
        .map(|p| p.idle_ms)
        .max();
    (ok, failed)
}

/// File sizes now, to read only what the probe adds.
fn offsets(files: &[PathBuf]) -> Vec<u64> {
    files
        .iter()
        .map(|f| std::fs::metadata(f).map_or(0, |m| m.len()))
        .collect()
}

fn read_from(path: &Path, offset: u64, mut line: impl FnMut(&str)) -> Result<()> {
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let len = f.metadata()?.len();
    f.seek(SeekFrom::Start(if offset <= len { offset } else { 0 }))?;
    let mut r = BufReader::new(f);
    let mut buf = Vec::new();
    while r.read_until(b'\n', &mut buf)? > 0 {
        line(String::from_utf8_lossy(&buf).trim_end());
        buf.clear();
    }
    Ok(())
}

/// Runs the probe.
pub fn probe_idle(opts: &ProbeOptions) -> Result<ProbeReport> {
    let clock = Instant::now();
    let max_ms = opts.max.as_millis() as u64;
    let (hl, el) = (offsets(&opts.haproxy_logs), offsets(&opts.mysql_error_logs));
    let mut first = crate::live::session(&opts.dsn, &opts.credentials, opts.timeout)?;
    let wait_timeout = first
        .value("SELECT @@session.wait_timeout")
        .with_context(|| format!("reading wait_timeout through {}", opts.dsn))?
        .and_then(|v| v.parse::<u64>().ok());
    first.close();
    let mut ladder: Vec<u64> = LADDER_MS
        .iter()
        .copied()
        .filter(|&ms| ms < max_ms)
        .collect();
    ladder.push(max_ms);
    if let Some(w) = wait_timeout {
        for ms in [w.saturating_sub(2) * 1000, (w + 2) * 1000] {
            if ms > 0 && ms <= max_ms && !ladder.contains(&ms) {
                ladder.push(ms);
            }
        }
    }
    ladder.sort_unstable();
    let mut probes = round(opts, &ladder);
    let (lo, hi) = bracket(&probes);
    if let Some(hi) = hi {
        let lo = lo.unwrap_or(0);
        let step = (hi - lo) / (REFINE + 1);
        if step > 0 && hi - lo > hi / 20 {
            let idles: Vec<u64> = (1..=REFINE).map(|i| lo + i * step).collect();
            probes.extend(round(opts, &idles));
            probes.sort_by_key(|p| p.idle_ms);
        }
    }
    let (lo, hi) = bracket(&probes);
    let cutoff = hi.map(|h| (lo.unwrap_or(0) + h) / 2);
    let mut why = Vec::new();
    let timer =
        cutoff.and_then(|c| attribute(opts, c, lo.unwrap_or(0), wait_timeout, &hl, &el, &mut why));
    if hi.is_none() {
        why.push(format!(
            "every idle up to {} survived: the path's limit is above --max",
            human(max_ms)
        ));
    }
    Ok(ProbeReport {
        dsn: opts.dsn.to_string(),
        max_ms,
        wait_timeout,
        probes,
        longest_survived_ms: lo,
        shortest_failed_ms: hi,
        cutoff_ms: cutoff,
        timer,
        why,
        elapsed_ms: clock.elapsed().as_millis() as u64,
    })
}

/// Names the timer that cut at ≈`cutoff` ms.
fn attribute(
    opts: &ProbeOptions,
    cutoff: u64,
    lo: u64,
    wait_timeout: Option<u64>,
    hl: &[u64],
    el: &[u64],
    why: &mut Vec<String>,
) -> Option<Timer> {
    let mut logs = TcplogStats::default();
    for (p, off) in opts.haproxy_logs.iter().zip(hl) {
        if let Err(e) = read_from(p, *off, |l| logs.add_line(l)) {
            why.push(format!("HAProxy log not read: {e:#}"));
        }
    }
    let mut timeouts = 0;
    for (p, off) in opts.mysql_error_logs.iter().zip(el) {
        let mut s = ErrorLogStats::default();
        if read_from(p, *off, |l| s.add_line(l)).is_ok() {
            timeouts += s.aborted_where(is_timeout_reason);
        }
    }
    let tunnel = opts
        .routes
        .iter()
        .any(|r| r.mode == "tcp" && r.tunnel_ms.is_some());
    let long = |code: &str| -> u64 {
        logs.durations
            .values()
            .filter_map(|c| c.get(code))
            .flat_map(|d| d.range(crate::tcplog::bucket(lo)..))
            .map(|(_, n)| n)
            .sum()
    };
    let (cd, sd, big_sd) = (long("cD"), long("sD"), long("SD"));
    let by_log = if cd > 0 && cd >= sd && cd >= big_sd {
        why.push(format!(
            "HAProxy logged {cd} probe session(s) cD (its client-side timer)"
        ));
        Some(if tunnel { Timer::Tunnel } else { Timer::Client })
    } else if sd > 0 && sd >= big_sd {
        why.push(format!(
            "HAProxy logged {sd} probe session(s) sD (timeout server)"
        ));
        Some(Timer::Server)
    } else if big_sd > 0 || timeouts > 0 {
        why.push(format!(
            "HAProxy logged {big_sd} probe session(s) SD (the server closed) and the error logs {timeouts} × 'Got timeout reading communication packets'"
        ));
        Some(Timer::WaitTimeout)
    } else {
        None
    };
    // The configured value closest to the cut, within 10 %.
    let mut candidates: Vec<(Timer, u64)> = Vec::new();
    for r in opts.routes.iter().filter(|r| r.mode == "tcp") {
        for t in [Timer::Client, Timer::Server, Timer::Tunnel] {
            if let Some(v) = r.value(t) {
                candidates.push((t, v));
            }
        }
    }
    if let Some(w) = wait_timeout {
        candidates.push((Timer::WaitTimeout, w * 1000));
    }
    let by_value = candidates
        .iter()
        .filter(|(_, v)| cutoff.abs_diff(*v) * 10 <= *v)
        .min_by_key(|(_, v)| cutoff.abs_diff(*v))
        .copied();
    if let Some((t, v)) = by_value {
        why.push(format!(
            "the cut (≈{}) matches {} = {}",
            human(cutoff),
            t.setting(),
            human(v)
        ));
    }
    match (by_log, by_value) {
        (Some(t), _) => Some(t),
        (None, Some((t, _))) => Some(t),
        (None, None) => {
            why.push(format!(
                "no HAProxy or MySQL timer matches ≈{}: look for a middlebox (conntrack, LB, IPVS) or a KILL",
                human(cutoff)
            ));
            None
        }
    }
}

impl ProbeReport {
    /// The report for people.
    pub fn render_text(&self) -> String {
        let mut t = format!(
            "probe-idle through {} (up to {})\n",
            self.dsn,
            human(self.max_ms)
        );
        for p in &self.probes {
            let state = match p.survived {
                Some(true) => "survived".to_string(),
                Some(false) => format!("cut: {}", p.error.as_deref().unwrap_or("")),
                None if p.error.is_some() => {
                    format!("not run: {}", p.error.as_deref().unwrap_or(""))
                }
                None => "dropped (a shorter idle was already cut)".into(),
            };
            t.push_str(&format!("  idle {:>8}  {state}\n", human(p.idle_ms)));
        }
        match (self.longest_survived_ms, self.shortest_failed_ms) {
            (lo, Some(hi)) => t.push_str(&format!(
                "longest idle that survived: {}; shortest that was cut: {}; the path cuts idle connections at ≈{}\n",
                lo.map_or("none".into(), human),
                human(hi),
                human(self.cutoff_ms.unwrap_or(hi))
            )),
            (Some(lo), None) => t.push_str(&format!("longest idle that survived: {}\n", human(lo))),
            (None, None) => t.push_str("no probe completed\n"),
        }
        match self.timer {
            Some(tm) => t.push_str(&format!("cut by: {}\n", tm.setting())),
            None => t.push_str("cut by: not identified\n"),
        }
        for w in &self.why {
            t.push_str(&format!("  - {w}\n"));
        }
        t.push_str(&format!("took {:.1}s\n", self.elapsed_ms as f64 / 1000.0));
        t
    }
}
