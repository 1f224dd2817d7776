//! The checks, one method per group (request → expected, `notes/nginx.md` §3).

use std::time::{Duration, Instant};

use opskit_core::config::nginx::LandingFallback;

use super::Probe;
use super::curl::{Alpn, Request, Response};
use super::fixtures::{
    INDEX_MARKER, IndexStage, IndexState, PROBE_SCRIPT, PUBLIC_MARKER, STATIC_CSS, STATIC_JS,
};

/// A User-Agent that is not a bot.
const BROWSER_UA: &str = "Mozilla/5.0 (X11; Linux x86_64) opskit-probe";
/// The fastest pace the probe drives (one curl process per request).
const MAX_PACED_RPS: f64 = 10.0;
/// Why a check did not run.
const NEEDS_FIXTURES: &str = "opt-in: needs --stage-fixtures (writes probe files under the web and API roots, then removes them)";

fn list(statuses: &[u16]) -> String {
    statuses
        .iter()
        .map(|s| s.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

impl Probe<'_> {
    fn expected_hsts(&self) -> String {
        let mut v = format!("max-age={}", self.cfg.hsts_max_age_secs);
        if self.cfg.hsts_include_subdomains {
            v.push_str("; includeSubDomains");
        }
        if self.cfg.hsts_preload {
            v.push_str("; preload");
        }
        v
    }

    fn has_hsts(&self, r: &Response) -> bool {
        r.header("strict-transport-security") == Some(self.expected_hsts().as_str())
    }

    fn page(&self, path: &str) -> Request {
        Request::get(self.origin.https(path)).user_agent(BROWSER_UA)
    }

    // ---- R1 ----

    pub(super) fn tls_checks(&mut self) -> anyhow::Result<()> {
        let r = self.send(&self.page("/static/"))?;
        self.record(
            "tls.certificate_verified",
            r.curl_exit == 0,
            format!(
                "TLS to {} with chain verification: {}",
                self.origin.host,
                r.summary()
            ),
        );
        self.record(
            "tls.h2_by_alpn",
            r.http_version == "2",
            format!("offered h2,http/1.1 → {}", r.summary()),
        );
        let mut h1 = self.page("/static/");
        h1.alpn = Alpn::Http11;
        let r1 = self.send(&h1)?;
        self.record(
            "tls.http1_fallback",
            r1.http_version == "1.1",
            format!("offered http/1.1 only → {}", r1.summary()),
        );
        self.tls_version_checks()?;
        self.unknown_name_checks()?;
        let hsts_ok = self.has_hsts(&r);
        self.record(
            "tls.hsts",
            hsts_ok,
            format!(
                "Strict-Transport-Security expected `{}`, got {:?} (on a {} response)",
                self.expected_hsts(),
                r.header("strict-transport-security"),
                r.status
            ),
        );
        let server = r.header("server").unwrap_or("").to_string();
        self.record(
            "tls.server_version_hidden",
            !server.contains('/'),
            format!("Server: {server:?} (no version expected)"),
        );
        Ok(())
    }

    fn tls_version_checks(&mut self) -> anyhow::Result<()> {
        let cases: [(&str, &[&str], bool); 4] = [
            (
                "tls.tls12_accepted",
                &["--tlsv1.2", "--tls-max", "1.2"],
                true,
            ),
            ("tls.tls13_accepted", &["--tlsv1.3"], true),
            (
                "tls.tls10_tls11_refused",
                &[
                    "--tlsv1.0",
                    "--tls-max",
                    "1.1",
                    "--ciphers",
                    "DEFAULT@SECLEVEL=0",
                ],
                false,
            ),
            (
                "tls.weak_cipher_refused",
                &[
                    "--tls-max",
                    "1.2",
                    "--ciphers",
                    "AES128-SHA:AES256-SHA:AES128-SHA256",
                ],
                false,
            ),
        ];
        for (name, args, accept) in cases {
            let r = self.send(&self.page("/static/").args(args))?;
            let accepted = r.curl_exit == 0;
            let detail = format!(
                "curl {} → {} (expected {})",
                args.join(" "),
                r.summary(),
                if accept {
                    "a handshake"
                } else {
                    "the server to refuse the handshake with a TLS alert"
                }
            );
            // A refusal only counts when the server sent it: a client whose own policy cannot
            // offer TLS 1.0 or these ciphers has not tested the server at all.
            if !accept && !accepted && !r.error.contains("alert") {
                self.skip(
                    name,
                    format!("this client could not make the offer: {detail}"),
                );
                continue;
            }
            self.record(name, accepted == accept, detail);
        }
        Ok(())
    }

    fn unknown_name_checks(&mut self) -> anyhow::Result<()> {
        let port = self.origin.https_port;
        let other = "unknown-name.invalid";
        let connect_to = format!("{other}:{port}:{}:{port}", self.origin.host);
        let req = Request::get(format!("https://{other}:{port}/")).args(&[
            "--connect-to",
            &connect_to,
            "--insecure",
        ]);
        let r = self.send(&req)?;
        // ssl_reject_handshake exists from 1.19.4; older targets answer 421 instead.
        let can_reject = self.cfg.version() >= (1, 19, 4);
        let (ok, want) = if can_reject {
            (r.curl_exit != 0, "a refused handshake")
        } else {
            (
                r.curl_exit != 0 || r.status == 421,
                "a refused handshake or 421",
            )
        };
        self.record(
            "tls.unknown_name_refused",
            ok,
            format!("SNI {other} → {} (expected {want})", r.summary()),
        );
        let r = self.send(&self.page("/").header(format!("Host: {other}")))?;
        self.record(
            "tls.misdirected_host_421",
            r.status == 421,
            format!(
                "SNI {} with Host {other} → {} (expected 421)",
                self.origin.host,
                r.summary()
            ),
        );
        Ok(())
    }

    // ---- R2 ----

    pub(super) fn redirect_checks(&mut self) -> anyhow::Result<()> {
        let path = "/some/path?x=1&y=2";
        let want = self.origin.https(path);
        let cases: Vec<(&str, Request)> = vec![
            (
                "redirect.301_path_query",
                Request::get(self.origin.http(path)),
            ),
            (
                "redirect.head_301",
                Request::get(self.origin.http(path)).method("HEAD"),
            ),
            (
                "redirect.post_301",
                Request::get(self.origin.http(path)).method("POST"),
            ),
            (
                "redirect.bot_ua_301_first",
                Request::get(self.origin.http(path)).user_agent(&self.bot_ua()),
            ),
            (
                "redirect.unknown_host_301",
                Request::get(self.origin.http(path)).header("Host: unknown-name.invalid"),
            ),
            (
                "redirect.http_on_tls_port_301",
                Request::get(self.origin.http_on_tls_port(path)),
            ),
        ];
        for (name, mut req) in cases {
            req.alpn = Alpn::Http11;
            let r = self.send(&req)?;
            let loc = r.header("location").unwrap_or("").to_string();
            self.record(
                name,
                r.status == 301 && loc == want,
                format!(
                    "{} {} → {} Location {loc:?} (expected 301 {want})",
                    req.method, req.url, r.status
                ),
            );
        }
        Ok(())
    }

    // ---- R3 ----

    fn bot_ua(&self) -> String {
        format!("Mozilla/5.0 (compatible; {}/2.1)", self.cfg.bot_keyword)
    }

    pub(super) fn bot_checks(&mut self) -> anyhow::Result<()> {
        let normal = self.send(&self.page("/static/"))?;
        let kw = self.cfg.bot_keyword.clone();
        let uas = [
            self.bot_ua(),
            kw.to_lowercase(),
            format!("{} x", kw.to_uppercase()),
        ];
        let mut seen = Vec::new();
        let mut all = true;
        for ua in &uas {
            for path in ["/static/", "/api/landing?q=1", "/"] {
                let req = self.page(path).user_agent(ua);
                // If routing is broken these requests count against the API zone.
                let r = if path.starts_with("/api/") {
                    self.send_api(&req)?
                } else {
                    self.send(&req)?
                };
                let routed = self.served_by_bot(&r, &normal);
                all &= routed;
                seen.push(format!(
                    "{ua:?} {path} → {}{}",
                    r.status,
                    if routed { " bot" } else { " NOT bot" }
                ));
            }
        }
        self.record("bot.routed_case_insensitive", all, seen.join("; "));
        self.bot_negative_checks(&normal)?;
        self.bot_upstream_checks()?;
        Ok(())
    }

    fn bot_negative_checks(&mut self, normal: &Response) -> anyhow::Result<()> {
        let kw = &self.cfg.bot_keyword;
        let mut uas = vec![kw.replace(' ', "  ")];
        if !self.cfg.bot_keyword_space_optional && kw.contains(' ') {
            uas.push(format!(
                "Mozilla/5.0 (compatible; {}/2.1)",
                kw.replace(' ', "")
            ));
        }
        let mut none = true;
        let mut seen = Vec::new();
        for ua in &uas {
            let r = self.send(&self.page("/static/").user_agent(ua))?;
            let routed = self.served_by_bot(&r, normal);
            none &= !routed;
            seen.push(format!(
                "{ua:?} → {}{}",
                r.status,
                if routed { " bot" } else { " site" }
            ));
        }
        self.record("bot.other_agents_not_routed", none, seen.join("; "));
        let ua = self.bot_ua();
        self.api_idle();
        let mut statuses = Vec::new();
        for _ in 0..(self.cfg.api_burst + 4) {
            statuses.push(
                self.send_api_now(&self.page("/api/landing").user_agent(&ua))?
                    .status,
            );
        }
        let limited = statuses.contains(&429);
        self.record(
            "bot.rate_limit_as_configured",
            limited == self.cfg.bot_rate_limited,
            format!(
                "{} rapid bot requests → {} (bot_rate_limited = {})",
                statuses.len(),
                list(&statuses),
                self.cfg.bot_rate_limited
            ),
        );
        Ok(())
    }

    fn bot_upstream_checks(&mut self) -> anyhow::Result<()> {
        let r = self.send_api(&self.page("/api/landing?q=1").user_agent(&self.bot_ua()))?;
        let Some(host) = r.header("x-echo-host").map(str::to_string) else {
            self.skip(
                "bot.upstream_host_sni_uri",
                "the bot upstream does not echo X-Echo-Host/X-Echo-SNI (the lab's does)",
            );
            return Ok(());
        };
        let want_host = match self.cfg.bot_host_header {
            opskit_core::config::nginx::BotHostHeader::Upstream => {
                self.cfg.bot_upstream.to_string()
            }
            opskit_core::config::nginx::BotHostHeader::Site => self.origin.host.clone(),
        };
        let sni = r.header("x-echo-sni").unwrap_or("").to_string();
        let uri = r.header("x-echo-uri").unwrap_or("").to_string();
        let proto = r.header("x-echo-proto").unwrap_or("").to_string();
        let ok = host == want_host
            && sni == self.cfg.bot_upstream.as_str()
            && uri == "/api/landing?q=1"
            && proto == "https"
            && self.has_hsts(&r);
        self.record(
            "bot.upstream_host_sni_uri",
            ok,
            format!(
                "upstream saw Host {host:?} SNI {sni:?} URI {uri:?} X-Forwarded-Proto {proto:?} (expected {want_host}, {}, /api/landing?q=1, https; HSTS kept)",
                self.cfg.bot_upstream
            ),
        );
        Ok(())
    }

    // ---- R4 ----

    pub(super) fn api_checks(&mut self) -> anyhow::Result<()> {
        let r = self.send_api(&self.page("/api/landing"))?;
        self.record(
            "api.landing_200",
            r.status == 200,
            format!("GET /api/landing → {}", r.summary()),
        );
        let powered_by = r.header("x-powered-by").map(str::to_string);
        self.record(
            "api.no_php_version_leak",
            r.status == 200 && powered_by.is_none(),
            format!("X-Powered-By: {powered_by:?} (expected none: expose_php = off)"),
        );
        let r = self.send_api(&self.page("/api/opskit-no-such-name"))?;
        let from_nginx = r.body.contains("<center>nginx</center>");
        self.record(
            "api.unknown_name_404_by_nginx",
            r.status == 404 && from_nginx && !r.body.contains("File not found"),
            format!(
                "GET /api/opskit-no-such-name → {} ({})",
                r.status,
                if from_nginx {
                    "nginx's page"
                } else {
                    "not nginx's page"
                }
            ),
        );
        let r = self.send_api(&self.page("/api/..%2F..%2F..%2Fetc%2Fpasswd"))?;
        self.record(
            "api.no_traversal",
            !r.body.contains("root:"),
            format!("GET /api/..%2F..%2F..%2Fetc%2Fpasswd → {}", r.status),
        );
        if self.opts.stage_fixtures {
            self.api_fixture_checks()?;
        } else {
            for name in [
                "api.script_filename",
                "api.post_body",
                "api.strict_name_pattern",
            ] {
                self.skip(name, NEEDS_FIXTURES);
            }
        }
        Ok(())
    }

    fn api_fixture_checks(&mut self) -> anyhow::Result<()> {
        let want = format!("{}/{PROBE_SCRIPT}.php", self.cfg.api_root);
        let r = self.send_api(&self.page(&format!("/api/{PROBE_SCRIPT}?a=1")))?;
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap_or_default();
        let ok = v["SCRIPT_FILENAME"] == want.as_str()
            && v["QUERY_STRING"] == "a=1"
            && v["HTTPS"] == "on";
        self.record(
            "api.script_filename",
            ok,
            format!(
                "SCRIPT_FILENAME {} QUERY_STRING {} HTTPS {} (expected {want}, a=1, on); {}",
                v["SCRIPT_FILENAME"],
                v["QUERY_STRING"],
                v["HTTPS"],
                r.summary()
            ),
        );
        let mut post = self.page(&format!("/api/{PROBE_SCRIPT}")).method("POST");
        post.body = Some("opskit=probe".into());
        let r = self.send_api(&post)?;
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap_or_default();
        self.record(
            "api.post_body",
            v["REQUEST_METHOD"] == "POST" && v["BODY_LENGTH"] == 12,
            format!(
                "POST 12 bytes → method {} body length {}",
                v["REQUEST_METHOD"], v["BODY_LENGTH"]
            ),
        );
        let mut seen = Vec::new();
        let mut ok = true;
        for bad in [
            "/api/__opskit_probe.php",
            "/api/__opskit_probe/",
            "/api/__opskit_probe%0A",
            "/API/__opskit_probe",
            "/api/__opskit.probe",
        ] {
            let r = self.send_api(&self.page(bad))?;
            let ran = r.body.contains("\"probe\":\"opskit\"");
            let strict_ok =
                !self.cfg.api_namespace_strict || !bad.starts_with("/api/") || r.status == 404;
            ok &= !ran && strict_ok;
            seen.push(format!(
                "{bad} → {}{}",
                r.status,
                if ran { " RAN the script" } else { "" }
            ));
        }
        self.record("api.strict_name_pattern", ok, seen.join("; "));
        Ok(())
    }

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

    // ---- R6 ----

    pub(super) fn static_checks(&mut self) -> anyhow::Result<()> {
        self.static_denials()?;
        if !self.opts.stage_fixtures {
            for name in [
                "static.headers",
                "static.gzip_static",
                "static.gzip_on_the_fly",
                "static.conditional_304",
            ] {
                self.skip(name, NEEDS_FIXTURES);
            }
            return Ok(());
        }
        let css = format!("/static/{STATIC_CSS}");
        let r = self.send(&self.page(&css))?;
        let cc = self.expected_cache_control();
        let ok = r.status == 200
            && r.header("content-type")
                .is_some_and(|v| v.starts_with("text/css"))
            && r.header("cache-control") == Some(cc.as_str())
            && r.header("etag").is_some()
            && r.header("last-modified").is_some()
            && r.header("x-content-type-options") == Some("nosniff")
            && self.has_hsts(&r);
        self.record(
            "static.headers",
            ok,
            format!(
                "{} Content-Type {:?} Cache-Control {:?} (expected {cc:?}) ETag {:?} HSTS {}",
                r.status,
                r.header("content-type"),
                r.header("cache-control"),
                r.header("etag"),
                self.has_hsts(&r)
            ),
        );
        self.static_compression(&css)?;
        let etag = r.header("etag").unwrap_or("").to_string();
        let r304 = self.send(&self.page(&css).header(format!("If-None-Match: {etag}")))?;
        self.record(
            "static.conditional_304",
            r304.status == 304,
            format!("If-None-Match {etag} → {}", r304.status),
        );
        Ok(())
    }

    fn expected_cache_control(&self) -> String {
        let imm = if self.cfg.static_immutable {
            ", immutable"
        } else {
            ""
        };
        format!("public, max-age={}{imm}", self.cfg.static_max_age_secs)
    }

    fn static_compression(&mut self, css: &str) -> anyhow::Result<()> {
        let gz = std::fs::metadata(
            super::fixtures::static_dir(self.cfg).join(format!("{STATIC_CSS}.gz")),
        )
        .map(|m| m.len() as usize)
        .unwrap_or(0);
        let r = self.send(&self.page(css).header("Accept-Encoding: gzip"))?;
        self.record(
            "static.gzip_static",
            r.header("content-encoding") == Some("gzip") && r.body_len == gz,
            format!(
                "Content-Encoding {:?}, {} bytes (the .gz file has {gz})",
                r.header("content-encoding"),
                r.body_len
            ),
        );
        let r = self.send(
            &self
                .page(&format!("/static/{STATIC_JS}"))
                .header("Accept-Encoding: gzip"),
        )?;
        self.record(
            "static.gzip_on_the_fly",
            r.status == 200 && r.header("content-encoding") == Some("gzip"),
            format!(
                "{} Content-Encoding {:?}",
                r.status,
                r.header("content-encoding")
            ),
        );
        Ok(())
    }

    fn static_denials(&mut self) -> anyhow::Result<()> {
        let cases: [(&str, &str, u16); 5] = [
            ("static.missing_404", "/static/opskit-missing.css", 404),
            ("static.directory_404", "/static/", 404),
            ("static.dotfile_403", "/static/.env", 403),
            ("static.dot_dir_403", "/static/.git/config", 403),
            ("static.script_403", "/static/opskit.php", 403),
        ];
        for (name, path, want) in cases {
            let r = self.send(&self.page(path))?;
            self.record(
                name,
                r.status == want && !r.body.contains(INDEX_MARKER),
                format!("GET {path} → {} (expected {want})", r.summary()),
            );
        }
        Ok(())
    }

    // ---- R7 ----

    pub(super) fn fallback_checks(&mut self) -> anyhow::Result<()> {
        if !self.opts.stage_fixtures {
            for name in [
                "fallback.index_first",
                "fallback.public_second",
                "fallback.landing_last_query_kept",
            ] {
                self.skip(name, NEEDS_FIXTURES);
            }
            return Ok(());
        }
        let stage = IndexStage::new(self.cfg)?;
        let settle = Duration::from_secs(u64::from(self.cfg.open_file_cache_valid_secs) + 1);
        for (state, name, marker) in [
            (IndexState::Both, "fallback.index_first", INDEX_MARKER),
            (
                IndexState::PublicOnly,
                "fallback.public_second",
                PUBLIC_MARKER,
            ),
        ] {
            stage.set(state)?;
            std::thread::sleep(settle);
            let mut seen = Vec::new();
            let mut ok = true;
            for path in ["/", "/deep/link?z=9"] {
                let r = self.send_api(&self.page(path))?;
                let hit = r.status == 200 && r.body.contains(marker);
                ok &= hit;
                seen.push(format!(
                    "{path} → {} {}",
                    r.status,
                    if hit { marker } else { "other page" }
                ));
            }
            self.record(name, ok, seen.join("; "));
        }
        stage.set(IndexState::Neither)?;
        std::thread::sleep(settle);
        self.landing_fallback_check()?;
        drop(stage);
        Ok(())
    }

    fn landing_fallback_check(&mut self) -> anyhow::Result<()> {
        let direct = self.send_api(&self.page("/api/landing?z=9"))?;
        let plain = self.send_api(&self.page("/api/landing"))?;
        let via = self.send_api(&self.page("/deep/link?z=9"))?;
        let query_visible = direct.body != plain.body;
        let ok = via.status == 200 && via.body == direct.body;
        let fallback = match self.cfg.landing_fallback {
            LandingFallback::Uri => "/api/landing$is_args$args",
            LandingFallback::Named => "@landing",
        };
        self.record(
            "fallback.landing_last_query_kept",
            ok,
            format!(
                "/deep/link?z=9 with no index files → {} {} GET /api/landing?z=9 (via {fallback}){}",
                via.status,
                if via.body == direct.body { "same body as" } else { "DIFFERENT body from" },
                if query_visible { "" } else { "; landing.php ignores the query, so the query is not verified" }
            ),
        );
        Ok(())
    }
}
