//! The rate-limit checks (R5): 429 past the burst, the bound at twice the rate, parallel
//! HTTP/2 streams, per-client budgets, and `/static/` never limited.

use std::time::{Duration, Instant};

use super::Probe;
use super::checks::{BROWSER_UA, MAX_PACED_RPS, list};
use super::fixtures::STATIC_CSS;

impl Probe<'_> {
    // ---- R5 ----

    pub(super) fn rate_checks(&mut self) -> anyhow::Result<()> {
        let burst = self.cfg.api_burst as usize;
        let n = burst + 5;
        self.api_idle();
        let start = Instant::now();
        let mut rs = Vec::new();
        for _ in 0..n {
            rs.push(self.send_api_now(&self.page("/api/landing"))?);
        }
        let t = start.elapsed().as_secs_f64();
        let statuses: Vec<u16> = rs.iter().map(|r| r.status).collect();
        let accepted = statuses.iter().filter(|s| **s == 200).count();
        let bound = self.bound(t);
        // Exact on an idle host (200 x (burst+1), then 429s); a slow client may see a token
        // refill in between, which the bound allows.
        let ok = statuses[..=burst].iter().all(|s| *s == 200)
            && statuses[burst + 1..].iter().all(|s| *s == 200 || *s == 429)
            && statuses.contains(&429)
            && accepted <= bound;
        self.record(
            "rate.excess_gets_429",
            ok,
            format!(
                "{n} back-to-back in {t:.2} s → {} (expected {} x 200 then 429s; accepted {accepted} <= bound {bound})",
                list(&statuses),
                burst + 1
            ),
        );
        let hsts = rs
            .iter()
            .filter(|r| r.status == 429)
            .all(|r| self.has_hsts(r))
            && statuses.contains(&429);
        self.record(
            "rate.429_keeps_hsts",
            hsts,
            "429 responses carry Strict-Transport-Security",
        );
        std::thread::sleep(Duration::from_millis(1000));
        let r = self.send_api_now(&self.page("/api/landing"))?;
        self.record(
            "rate.recovers_after_1s",
            r.status == 200,
            format!("after 1 s idle → {}", r.status),
        );
        let rate = self.cfg.api_rate.per_second();
        if rate * 2.0 > MAX_PACED_RPS {
            for name in [
                "rate.paced_below_rate_all_pass",
                "rate.bound_at_twice_the_rate",
            ] {
                self.skip(
                    name,
                    format!("{rate} r/s is too fast to pace with one curl per request"),
                );
            }
        } else {
            self.paced("rate.paced_below_rate_all_pass", rate * 0.75, 6)?;
            self.paced("rate.bound_at_twice_the_rate", rate * 2.0, 12)?;
        }
        self.parallel_streams()?;
        self.per_client_address()?;
        self.static_not_limited()?;
        Ok(())
    }

    /// The most requests the limit may accept in `t` seconds: burst + 1 + ⌊rate·t⌋.
    fn bound(&self, t: f64) -> usize {
        self.cfg.api_burst as usize + 1 + (self.cfg.api_rate.per_second() * t).floor() as usize
    }

    /// Sends `count` requests at `rps` and checks accepted ≤ burst + 1 + ⌊rate·T⌋ (and, below
    /// the rate, that all pass).
    fn paced(&mut self, name: &str, rps: f64, count: usize) -> anyhow::Result<()> {
        self.api_idle();
        let interval = Duration::from_secs_f64(1.0 / rps);
        let start = Instant::now();
        let mut statuses = Vec::new();
        for i in 0..count {
            let due = start + interval * i as u32;
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            statuses.push(self.send_api_now(&self.page("/api/landing"))?.status);
        }
        let t = start.elapsed().as_secs_f64();
        let accepted = statuses.iter().filter(|s| **s == 200).count();
        let rate = self.cfg.api_rate.per_second();
        let bound = self.bound(t);
        let below_rate = rps < rate;
        let others_ok = statuses.iter().all(|s| *s == 200 || *s == 429);
        let ok = others_ok
            && if below_rate {
                accepted == count
            } else {
                accepted <= bound && accepted < count
            };
        self.record(
            name,
            ok,
            format!(
                "{count} requests at {rps} r/s over {t:.2} s → {} accepted (bound {bound}{}); {}",
                accepted,
                if below_rate {
                    ", all expected"
                } else {
                    ", some 429 expected"
                },
                list(&statuses)
            ),
        );
        Ok(())
    }

    /// Parallel HTTP/2 streams on one connection are separate requests: burst + 1 pass.
    fn parallel_streams(&mut self) -> anyhow::Result<()> {
        let n = self.cfg.api_burst as usize + 4;
        let urls: Vec<String> = (0..n)
            .map(|i| self.origin.https(&format!("/api/landing?stream={i}")))
            .collect();
        self.api_idle();
        let ua = format!("User-Agent: {BROWSER_UA}");
        let results = self.client.send_parallel(&urls, &[ua]);
        self.mark_api_request();
        let results = results?;
        let statuses: Vec<u16> = results.iter().map(|r| r.0).collect();
        let connections: u32 = results.iter().map(|r| r.1).sum();
        let accepted = statuses.iter().filter(|s| **s == 200).count();
        let limited = statuses.iter().filter(|s| **s == 429).count();
        self.record(
            "rate.parallel_h2_streams",
            statuses.len() == n && accepted == self.cfg.api_burst as usize + 1 && limited == n - accepted,
            format!(
                "{n} parallel streams over {connections} connection(s) → {} (expected {} x 200, the rest 429)",
                list(&statuses),
                self.cfg.api_burst + 1
            ),
        );
        Ok(())
    }

    /// The budget is per client address: right after one address is limited, another one
    /// still gets 200.
    fn per_client_address(&mut self) -> anyhow::Result<()> {
        let name = "rate.per_client_address";
        let Some(second) = self.opts.second_source.clone() else {
            self.skip(name, "opt-in: needs --second-source ADDR (a second local address that reaches the server)");
            return Ok(());
        };
        self.api_idle();
        let mut first = Vec::new();
        for _ in 0..=(self.cfg.api_burst + 1) {
            first.push(self.send_api_now(&self.page("/api/landing"))?.status);
        }
        let other =
            self.send_api_now(&self.page("/api/landing").args(&["--interface", &second]))?;
        self.record(
            name,
            first.last() == Some(&429) && other.status == 200,
            format!(
                "first address → {}; then from {second} → {}",
                list(&first),
                other.summary()
            ),
        );
        Ok(())
    }

    fn static_not_limited(&mut self) -> anyhow::Result<()> {
        let path = if self.opts.stage_fixtures {
            format!("/static/{STATIC_CSS}")
        } else {
            "/static/opskit-missing.css".into()
        };
        let mut statuses = Vec::new();
        for _ in 0..10 {
            statuses.push(self.send(&self.page(&path))?.status);
        }
        self.record(
            "rate.static_not_limited",
            !statuses.contains(&429) && !statuses.contains(&503),
            format!("10 rapid GET {path} → {}", list(&statuses)),
        );
        Ok(())
    }
}
