//! The rules: evidence in, likely causes out, each with its evidence, confidence and fix.
//!
//! A cause is `critical` when a log shows it killing sessions (a cluster of `cD` at exactly
//! `timeout client`, an `Aborted connection … (Got timeout reading communication packets)`,
//! a `K-` next to a hard-stop line), `warning` when the configuration makes it likely (the
//! application idles longer than the path allows), `info` otherwise (a setting worth knowing).
//! Findings are sorted by score, so the first one is the doctor's best explanation.

use serde::{Deserialize, Serialize};

use crate::Evidence;
use crate::errorlog::{is_kill_reason, is_timeout_reason};
use crate::haproxy_cfg::{Route, Timer};

/// The causes the doctor knows (notes/goneaway.md, cause table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    /// HAProxy `timeout client` shorter than the application's idle.
    HaproxyClientTimeout,
    /// HAProxy `timeout server` shorter than the application's idle.
    HaproxyServerTimeout,
    /// HAProxy `timeout tunnel` shorter than the application's idle.
    HaproxyTunnelTimeout,
    /// MySQL `wait_timeout` closed the idle connection.
    WaitTimeout,
    /// A statement bigger than `max_allowed_packet`.
    MaxAllowedPacket,
    /// The replica restarted or crashed.
    ReplicaRestart,
    /// A failed health check marked the server DOWN and killed its sessions.
    HealthCheckDown,
    /// A reload's `hard-stop-after` killed the old worker's sessions.
    HardStopOnReload,
    /// A `KILL` (pt-kill, an operator) ended the connection.
    Kill,
    /// Connections failed before the greeting (queue, connect, limits): `[2006]` at connect.
    ConnectPhase,
    /// The replicas disagree on a setting, so failures depend on the replica.
    ReplicasDiffer,
    /// No TCP keepalive towards clients or servers.
    NoKeepalive,
}

impl Cause {
    /// Its stable id (`haproxy_client_timeout`, …), the same as in JSON.
    pub fn id(self) -> String {
        serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default()
    }
}

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    /// Worth knowing.
    Info,
    /// The configuration makes the cause likely.
    Warning,
    /// The logs show the cause killing sessions.
    Critical,
}

/// How sure the doctor is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Confidence {
    /// A setting allows it.
    Low,
    /// One kind of evidence.
    Medium,
    /// The logs show it, matched to a setting or a reason.
    High,
}

/// One likely cause.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    /// What.
    pub cause: Cause,
    /// How bad.
    pub level: Level,
    /// How sure.
    pub confidence: Confidence,
    /// Rank key (higher first).
    pub score: u32,
    /// One line.
    pub title: String,
    /// What was seen.
    pub evidence: Vec<String>,
    /// What to change.
    pub fix: String,
}

fn finding(cause: Cause, score: u32, title: String, evidence: Vec<String>, fix: &str) -> Finding {
    let (level, confidence) = match score {
        85.. => (Level::Critical, Confidence::High),
        65..85 => (Level::Critical, Confidence::Medium),
        35..65 => (Level::Warning, Confidence::Medium),
        _ => (Level::Info, Confidence::Low),
    };
    Finding {
        cause,
        level,
        confidence,
        score,
        title,
        evidence,
        fix: fix.to_string(),
    }
}

/// `2s`, `1m 30s`, `8h`: milliseconds as an operator reads them.
pub fn human(ms: u64) -> String {
    if ms < 1000 {
        return format!("{ms}ms");
    }
    if !ms.is_multiple_of(1000) && ms < 10_000 {
        return format!("{:.1}s", ms as f64 / 1000.0);
    }
    let s = ms / 1000;
    match s {
        0..120 => format!("{s}s"),
        120..7200 if s.is_multiple_of(60) => format!("{}m", s / 60),
        7200.. if s.is_multiple_of(3600) => format!("{}h", s / 3600),
        _ => format!("{s}s"),
    }
}

const FIX_HAPROXY: &str = "Keep the application's idle below the path's limit (reconnect or ping \
    a handle idle longer than 0.8 × the limit; pools: max-idle below it), or raise HAProxy \
    `timeout client` = `timeout server` (or `timeout tunnel`) above the application's idle and \
    above `wait_timeout`, so MySQL closes first with a reason. Retry idempotent reads once on \
    2006/2013.";
const FIX_WAIT: &str = "Raise `wait_timeout` (SET GLOBAL and my.cnf, the same on every replica) \
    above the application's longest idle, or make the application reconnect before it; check \
    that no `init_connect` or ORM lowers it per session.";
const FIX_PACKET: &str = "Raise `max_allowed_packet` on every replica (and the client's) above \
    the biggest statement, or split the statement (batch the IN() list).";
const FIX_RESTART: &str = "Find why the replica stopped (its error log around the startup: \
    OOM killer, crash, a deploy); the application must reconnect after 2006.";
const FIX_DOWN: &str = "Find why the check failed (check user, lag, load); raise `fall` or \
    `inter` if the check flaps; `on-marked-down shutdown-sessions` kills every open session of \
    a DOWN server — the application must reconnect.";
const FIX_HARD_STOP: &str = "Raise `hard-stop-after` above the longest session the application \
    holds, or reload less often; long-lived handles must reconnect after a reload.";
const FIX_KILL: &str = "Find who runs KILL (pt-kill --idle-time, a cron, an operator: the audit \
    or general log) and align its idle limit with the application's.";

/// The timers on `r` whose sessions end with `codes`.
fn timer_codes(t: Timer) -> &'static [&'static str] {
    match t {
        Timer::Client => &["cD"],
        Timer::Server => &["sD"],
        Timer::Tunnel => &["cD", "sD"],
        Timer::WaitTimeout => &["SD"],
    }
}

fn haproxy_timeouts(e: &Evidence, out: &mut Vec<Finding>) {
    let min_wait = e
        .replicas
        .iter()
        .filter_map(|r| r.get("wait_timeout"))
        .min();
    let mut explained = std::collections::BTreeSet::new();
    for r in e.routes.iter().filter(|r| r.mode == "tcp") {
        let timers: &[Timer] = if r.tunnel_ms.is_some() {
            &[Timer::Tunnel]
        } else {
            &[Timer::Client, Timer::Server]
        };
        for &t in timers {
            let Some(v) = r.value(t) else { continue };
            let cause = match t {
                Timer::Client => Cause::HaproxyClientTimeout,
                Timer::Server => Cause::HaproxyServerTimeout,
                _ => Cause::HaproxyTunnelTimeout,
            };
            let title = format!(
                "HAProxy `{}` ({}) on {} → {} cuts idle connections",
                t.setting(),
                human(v),
                r.frontend,
                r.backend
            );
            if let Some(logs) = &e.logs {
                // `sD` is written when the client comes back: at the timeout or later.
                let n: u64 = timer_codes(t)
                    .iter()
                    .map(|c| match *c {
                        "sD" => logs.at_least(Some(&r.backend), c, v),
                        _ => logs.near(Some(&r.backend), c, v),
                    })
                    .sum();
                if n > 0 {
                    for c in timer_codes(t) {
                        explained.insert(*c);
                    }
                    let mut ev = vec![format!(
                        "{n} sessions of backend {} ended {} after {}{} (= {} {})",
                        r.backend,
                        timer_codes(t).join("/"),
                        if t == Timer::Server {
                            "at least "
                        } else {
                            "≈"
                        },
                        human(v),
                        t.setting(),
                        human(v)
                    )];
                    ev.extend(abort_counters(e, t));
                    out.push(finding(cause, 90 + n.min(9) as u32, title, ev, FIX_HAPROXY));
                    continue;
                }
            }
            if r.idle_limit().map(|(_, o)| o) != Some(t) {
                continue;
            }
            let mut ev = vec![format!(
                "idle limit of {} → {}: {} ({}; in TCP mode `timeout tunnel` would supersede it)",
                r.frontend,
                r.backend,
                human(v),
                t.setting()
            )];
            match (e.app_idle_secs, min_wait) {
                (Some(idle), _) if idle * 1000 >= v => {
                    ev.push(format!("the application idles up to {idle}s (--app-idle)"));
                    out.push(finding(cause, 60, title, ev, FIX_HAPROXY));
                }
                (_, Some(w)) if v < w * 1000 => {
                    ev.push(format!(
                        "HAProxy cuts before MySQL's wait_timeout ({}) would: the close has no reason on the MySQL side",
                        human(w * 1000)
                    ));
                    out.push(finding(cause, 20, title, ev, FIX_HAPROXY));
                }
                _ => {}
            }
        }
    }
    // Timeouts in the logs that no configured value explains (no config, or another hop).
    if let Some(logs) = &e.logs {
        for (code, cause, what) in [
            ("cD", Cause::HaproxyClientTimeout, "client (or tunnel)"),
            ("sD", Cause::HaproxyServerTimeout, "server"),
        ] {
            if explained.contains(code) {
                continue;
            }
            if let Some((at, n)) = logs.mode_duration(code)
                && n > 0
            {
                out.push(finding(
                    cause,
                    70 + n.min(9) as u32,
                    format!("HAProxy ended {} sessions on its {what} timeout", logs.count(None, code)),
                    vec![format!(
                        "{n} `{code}` sessions lasted ≈{} (the most common duration); no configured timeout matches it",
                        human(at)
                    )],
                    FIX_HAPROXY,
                ));
            }
        }
    }
}

fn abort_counters(e: &Evidence, t: Timer) -> Vec<String> {
    let Some(rt) = &e.runtime else { return vec![] };
    let (cli, srv): (u64, u64) = rt
        .servers
        .iter()
        .fold((0, 0), |(c, s), r| (c + r.cli_abrt, s + r.srv_abrt));
    vec![match t {
        Timer::Server => format!("show stat: srv_abrt {srv} since the worker started"),
        _ => format!("show stat: cli_abrt {cli} since the worker started"),
    }]
}

fn wait_timeout(e: &Evidence, out: &mut Vec<Finding>) {
    let mut ev = Vec::new();
    let mut score = 0;
    for l in &e.error_logs {
        let n = l.aborted_where(is_timeout_reason);
        if n > 0 {
            ev.push(format!(
                "{}: {n} × Aborted connection (Got timeout reading communication packets / inactivity)",
                l.file
            ));
            score = score.max(92);
        }
    }
    if let Some(logs) = &e.logs {
        let mut seen = std::collections::BTreeSet::new();
        for w in e.replicas.iter().filter_map(|r| r.get("wait_timeout")) {
            if seen.insert(w) {
                let n = logs.near(None, "SD", w * 1000);
                if n > 0 {
                    ev.push(format!(
                        "{n} sessions ended SD after ≈{} (= wait_timeout)",
                        human(w * 1000)
                    ));
                    score = score.max(90);
                }
            }
        }
    }
    let waits: Vec<(String, u64)> = e
        .replicas
        .iter()
        .filter_map(|r| Some((r.server.clone(), r.get("wait_timeout")?)))
        .collect();
    let min = waits.iter().map(|(_, w)| *w).min();
    if let (Some(idle), Some(m)) = (e.app_idle_secs, min)
        && idle >= m
    {
        ev.push(format!(
            "the application idles up to {idle}s; the smallest wait_timeout is {m}s"
        ));
        score = score.max(60);
    }
    if score > 0 {
        ev.extend(waits.iter().map(|(s, w)| format!("{s}: wait_timeout {w}")));
        out.push(finding(
            Cause::WaitTimeout,
            score,
            "MySQL `wait_timeout` closes idle connections".into(),
            ev,
            FIX_WAIT,
        ));
    }
}

fn packets(e: &Evidence, out: &mut Vec<Finding>) {
    let ev: Vec<String> = e
        .error_logs
        .iter()
        .filter(|l| l.packet_too_big > 0)
        .map(|l| {
            format!(
                "{}: {} × Got a packet bigger than 'max_allowed_packet'",
                l.file, l.packet_too_big
            )
        })
        .collect();
    if !ev.is_empty() {
        let mut ev = ev;
        ev.extend(e.replicas.iter().filter_map(|r| {
            Some(format!(
                "{}: max_allowed_packet {}",
                r.server,
                r.get("max_allowed_packet")?
            ))
        }));
        out.push(finding(
            Cause::MaxAllowedPacket,
            95,
            "a statement bigger than `max_allowed_packet` made the server close the connection"
                .into(),
            ev,
            FIX_PACKET,
        ));
    }
}

/// Returns whether a restart explains server DOWN events.
fn restarts(e: &Evidence, out: &mut Vec<Finding>) -> bool {
    let mut ev = Vec::new();
    let mut score = 0;
    for l in e.error_logs.iter().filter(|l| l.restarted()) {
        ev.push(format!(
            "{}: {} shutdown, {} crash and {} startup lines (last startup {})",
            l.file,
            l.shutdowns,
            l.crashes,
            l.startups,
            l.last_startup.as_deref().unwrap_or("?")
        ));
        score = 88;
    }
    let uptimes: Vec<(String, u64)> = e
        .replicas
        .iter()
        .filter_map(|r| Some((r.server.clone(), r.get("Uptime")?)))
        .collect();
    let max = uptimes.iter().map(|(_, u)| *u).max().unwrap_or(0);
    for (s, u) in &uptimes {
        if *u < 3600 && max >= 2 * u + 60 {
            ev.push(format!(
                "{s}: Uptime {u}s while another replica is up {max}s"
            ));
            score = score.max(55);
        }
    }
    if score > 0 {
        out.push(finding(
            Cause::ReplicaRestart,
            score,
            "a replica restarted: every connection to it died".into(),
            ev,
            FIX_RESTART,
        ));
    }
    score >= 85
}

fn health_checks(e: &Evidence, restarted: bool, out: &mut Vec<Finding>) {
    let shutdown = e.routes.iter().any(|r| r.shutdown_sessions_on_down);
    let Some(logs) = &e.logs else {
        if shutdown {
            out.push(finding(
                Cause::HealthCheckDown,
                15,
                "`on-marked-down shutdown-sessions`: a failed check kills open sessions".into(),
                vec!["set in haproxy.cfg; no log was read to see whether it happened".into()],
                FIX_DOWN,
            ));
        }
        return;
    };
    let killed: u64 = ["D-", "DD", "DC"].iter().map(|c| logs.count(None, c)).sum();
    let downs: u64 = logs.down_events.values().sum();
    if downs == 0 && killed == 0 {
        return;
    }
    let mut ev: Vec<String> = logs
        .down_events
        .iter()
        .map(|(s, n)| format!("{s} marked DOWN {n} time(s)"))
        .collect();
    if killed > 0 {
        ev.push(format!(
            "{killed} sessions ended D (killed because their server went DOWN); the DOWN lines counted {} active",
            logs.down_sessions_active
        ));
    }
    if shutdown {
        ev.push("haproxy.cfg sets `on-marked-down shutdown-sessions`".into());
    }
    let score = match (killed > 0, restarted) {
        (_, true) => {
            ev.push("a replica restart explains the DOWN".into());
            50
        }
        (true, false) => 86,
        (false, false) => 45,
    };
    out.push(finding(
        Cause::HealthCheckDown,
        score,
        "health checks marked servers DOWN".into(),
        ev,
        FIX_DOWN,
    ));
}

fn hard_stop(e: &Evidence, out: &mut Vec<Finding>) {
    let hsa = e.haproxy.as_ref().and_then(|c| c.hard_stop_after_ms);
    let (killed, stops, reloads) = e.logs.as_ref().map_or((0, 0, 0), |l| {
        let k: u64 = ["K-", "KD", "KC", "KR"]
            .iter()
            .map(|c| l.count(None, c))
            .sum();
        (k, l.hard_stops, l.reloads)
    });
    let mut ev = Vec::new();
    if killed > 0 {
        ev.push(format!(
            "{killed} sessions ended K (killed by HAProxy: hard-stop or admin)"
        ));
    }
    if stops > 0 {
        ev.push(format!(
            "{stops} hard-stop line(s): soft-stop ran too long after a reload"
        ));
    }
    if reloads > 0 {
        ev.push(format!("{reloads} reload(s) in the log"));
    }
    if let Some(h) = hsa {
        ev.push(format!("global hard-stop-after {}", human(h)));
    }
    if let Some(rt) = &e.runtime {
        ev.push(format!(
            "the current worker (pid {}) is up {}s",
            rt.pid, rt.uptime_secs
        ));
    }
    let score = match (killed > 0, stops > 0 || hsa.is_some()) {
        (true, true) => 90,
        (true, false) => 70,
        (false, _) if stops > 0 => 45,
        (false, _) if hsa.is_some() => 10,
        _ => return,
    };
    out.push(finding(
        Cause::HardStopOnReload,
        score,
        "HAProxy killed sessions of an old worker after a reload (hard-stop-after)".into(),
        ev,
        FIX_HARD_STOP,
    ));
}

fn kills(e: &Evidence, out: &mut Vec<Finding>) {
    let mut ev = Vec::new();
    let mut score = 0;
    for l in &e.error_logs {
        let n = l.aborted_where(is_kill_reason);
        if n > 0 {
            ev.push(format!("{}: {n} connection(s) aborted as killed", l.file));
            score = 88;
        }
    }
    for r in &e.replicas {
        if let Some(k) = r.get("Com_kill").filter(|k| *k > 0) {
            ev.push(format!(
                "{}: Com_kill {k} (KILL statements run since its start {}s ago)",
                r.server,
                r.get("Uptime").unwrap_or(0)
            ));
            score = score.max(72);
        }
    }
    if score > 0 {
        out.push(finding(
            Cause::Kill,
            score,
            "connections were ended with KILL".into(),
            ev,
            FIX_KILL,
        ));
    }
}

fn connect_phase(e: &Evidence, out: &mut Vec<Finding>) {
    let Some(logs) = &e.logs else { return };
    let bad: Vec<String> = logs
        .codes
        .iter()
        .filter(|(c, _)| {
            c.ends_with('C') || c.ends_with('Q') || c.starts_with('P') || c.starts_with('R')
        })
        .map(|(c, n)| format!("{n} × {c}"))
        .collect();
    if !bad.is_empty() {
        out.push(finding(
            Cause::ConnectPhase,
            40,
            "sessions failed before the MySQL greeting (queue, connect or limits)".into(),
            vec![
                bad.join(", "),
                "these give `SQLSTATE[HY000] [2006]` at `new PDO`, not `General error: 2006`"
                    .into(),
            ],
            "Check maxconn against max_connections, the queue timeout, and the servers' state.",
        ));
    }
}

fn settings(e: &Evidence, out: &mut Vec<Finding>) {
    for var in ["wait_timeout", "max_allowed_packet", "interactive_timeout"] {
        let vals: std::collections::BTreeSet<u64> =
            e.replicas.iter().filter_map(|r| r.get(var)).collect();
        if vals.len() > 1 {
            out.push(finding(
                Cause::ReplicasDiffer,
                if var == "interactive_timeout" { 10 } else { 40 },
                format!("the replicas differ in {var}"),
                e.replicas
                    .iter()
                    .filter_map(|r| Some(format!("{}: {var} {}", r.server, r.get(var)?)))
                    .collect(),
                "Use the same value on every replica: a failure then depends on the replica a connection landed on.",
            ));
        }
    }
    let no_ka: Vec<&Route> = e
        .routes
        .iter()
        .filter(|r| r.mode == "tcp" && !(r.clitcpka && r.srvtcpka))
        .collect();
    if !no_ka.is_empty() {
        out.push(finding(
            Cause::NoKeepalive,
            5,
            "no TCP keepalive on some HAProxy side".into(),
            no_ka
                .iter()
                .map(|r| format!("{} → {}: clitcpka {}, srvtcpka {}", r.frontend, r.backend, r.clitcpka, r.srvtcpka))
                .collect(),
            "`option clitcpka` and `option srvtcpka` keep middleboxes (conntrack, LB) from dropping idle sessions; they do not reset HAProxy's own timeouts.",
        ));
    }
}

/// Every finding the evidence supports, best explanation first.
pub fn rank(e: &Evidence) -> Vec<Finding> {
    let mut out = Vec::new();
    haproxy_timeouts(e, &mut out);
    wait_timeout(e, &mut out);
    packets(e, &mut out);
    let restarted = restarts(e, &mut out);
    health_checks(e, restarted, &mut out);
    hard_stop(e, &mut out);
    kills(e, &mut out);
    connect_phase(e, &mut out);
    settings(e, &mut out);
    out.sort_by(|a, b| b.score.cmp(&a.score).then(a.cause.cmp(&b.cause)));
    out
}
