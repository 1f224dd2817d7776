//! The doctor's report: ranked findings, then what was looked at and what was not.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::Evidence;
use crate::rank::{Finding, Level, human, rank};

/// What `opskit mysql doctor` prints (text or `--output json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DoctorReport {
    /// Likely causes, best first.
    pub findings: Vec<Finding>,
    /// The worst level among the findings (`info` when there are none).
    pub worst: Level,
    /// What was read.
    pub evidence: Evidence,
}

impl DoctorReport {
    /// Ranks `evidence`.
    pub fn new(evidence: Evidence) -> DoctorReport {
        let findings = rank(&evidence);
        let worst = findings
            .iter()
            .map(|f| f.level)
            .max()
            .unwrap_or(Level::Info);
        DoctorReport {
            findings,
            worst,
            evidence,
        }
    }

    /// The first finding's cause id (`None` when nothing was found above info).
    pub fn top(&self) -> Option<&Finding> {
        self.findings.first().filter(|f| f.level > Level::Info)
    }

    /// The report for people.
    pub fn render_text(&self) -> String {
        let mut t = String::new();
        let above: Vec<&Finding> = self
            .findings
            .iter()
            .filter(|f| f.level > Level::Info)
            .collect();
        match above.first() {
            Some(f) => {
                let _ = writeln!(t, "Most likely: {} ({})\n", f.title, f.cause.id());
            }
            None => {
                let _ = writeln!(
                    t,
                    "Nothing above info: no cause of 2006 found in what was read.\n"
                );
            }
        }
        for (i, f) in self.findings.iter().enumerate() {
            let _ = writeln!(
                t,
                "{}. [{:?}, confidence {:?}] {} ({})",
                i + 1,
                f.level,
                f.confidence,
                f.title,
                f.cause.id()
            );
            for ev in &f.evidence {
                let _ = writeln!(t, "     - {ev}");
            }
            let _ = writeln!(t, "     fix: {}", f.fix);
        }
        let e = &self.evidence;
        let _ = writeln!(t, "\nLooked at:");
        for r in &e.routes {
            let opt = |v: Option<u64>| v.map_or("infinite".to_string(), human);
            let _ = writeln!(
                t,
                "  route {} → {} ({}): timeout client {}, server {}, tunnel {}; idle limit {}; clitcpka {}, srvtcpka {}",
                r.frontend,
                r.backend,
                r.mode,
                opt(r.client_ms),
                opt(r.server_ms),
                r.tunnel_ms.map_or("-".into(), human),
                r.idle_limit().map_or("none".into(), |(v, tm)| format!(
                    "{} ({})",
                    human(v),
                    tm.setting()
                )),
                r.clitcpka,
                r.srvtcpka
            );
            for c in &r.checks {
                let _ = writeln!(t, "    check {c}");
            }
        }
        if let Some(h) = e.haproxy.as_ref().and_then(|c| c.hard_stop_after_ms) {
            let _ = writeln!(t, "  hard-stop-after {}", human(h));
        }
        if let Some(rt) = &e.runtime {
            let _ = writeln!(
                t,
                "  HAProxy worker pid {} up {}s{}",
                rt.pid,
                rt.uptime_secs,
                if rt.stopping { " (stopping)" } else { "" }
            );
            for s in &rt.servers {
                let _ = writeln!(
                    t,
                    "    {} {} check {} cli_abrt {} srv_abrt {} chkdown {}",
                    s.name, s.status, s.check_status, s.cli_abrt, s.srv_abrt, s.chkdown
                );
            }
        }
        if let Some(l) = &e.logs {
            let files: Vec<String> = l
                .files
                .iter()
                .map(|(f, n)| format!("{f} ({n} lines)"))
                .collect();
            let _ = writeln!(t, "  HAProxy log: {}", files.join(", "));
            let codes: Vec<String> = l.codes.iter().map(|(c, n)| format!("{c} {n}")).collect();
            let _ = writeln!(
                t,
                "    {} sessions ({} … {}): {}",
                l.sessions,
                l.first.as_deref().unwrap_or("-"),
                l.last.as_deref().unwrap_or("-"),
                codes.join(", ")
            );
            // Where the abnormal endings cluster (a timeout ends its sessions at one value).
            for (backend, by_code) in &l.durations {
                for (code, d) in by_code.iter().filter(|(c, _)| c.as_str() != "--") {
                    let mut top: Vec<(&u64, &u64)> = d.iter().collect();
                    top.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
                    let shown: Vec<String> = top
                        .iter()
                        .take(3)
                        .map(|(b, n)| format!("{n} at {}", human(**b)))
                        .collect();
                    let _ = writeln!(t, "    {backend} {code} durations: {}", shown.join(", "));
                }
            }
        }
        for r in &e.replicas {
            let g = |k: &str| r.get(k).map_or("?".into(), |v| v.to_string());
            let _ = writeln!(
                t,
                "  replica {} ({}): wait_timeout {} interactive_timeout {} max_allowed_packet {} max_connections {} Uptime {} Aborted_clients {} Aborted_connects {} Com_kill {}",
                r.server,
                r.dsn,
                g("wait_timeout"),
                g("interactive_timeout"),
                g("max_allowed_packet"),
                g("max_connections"),
                g("Uptime"),
                g("Aborted_clients"),
                g("Aborted_connects"),
                g("Com_kill")
            );
        }
        for l in &e.error_logs {
            let reasons: Vec<String> = l
                .aborted
                .iter()
                .map(|(r, n)| {
                    // The newest ids, to match the CONNECTION_ID() the application logged.
                    let ids = l.aborted_ids.get(r).map_or(String::new(), |ids| {
                        let last: Vec<String> =
                            ids.iter().rev().take(5).map(u64::to_string).collect();
                        format!(" [last ids {}]", last.join(", "))
                    });
                    format!("{n} × ({r}){ids}")
                })
                .collect();
            let _ = writeln!(
                t,
                "  error log {}: aborted {}; startups {} shutdowns {}",
                l.file,
                if reasons.is_empty() {
                    "none".into()
                } else {
                    reasons.join(", ")
                },
                l.startups,
                l.shutdowns
            );
        }
        if !e.not_looked_at.is_empty() {
            let _ = writeln!(t, "\nNot looked at:");
            for n in &e.not_looked_at {
                let _ = writeln!(t, "  - {n}");
            }
        }
        t
    }
}
