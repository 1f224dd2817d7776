//! The checks, one method per group (request → expected, `notes/nginx.md` §3).

use std::time::Duration;

use opskit_core::config::nginx::LandingFallback;

use super::Probe;
use super::curl::{Alpn, Request, Response};
use super::fixtures::{
    INDEX_MARKER, IndexStage, IndexState, PROBE_SCRIPT, PUBLIC_MARKER, STATIC_CSS, STATIC_JS,
};
use super::shown;

/// A User-Agent that is not a bot.
pub(super) const BROWSER_UA: &str = "Mozilla/5.0 (X11; Linux x86_64) opskit-probe";
/// The fastest pace the probe drives (one curl process per request).
pub(super) const MAX_PACED_RPS: f64 = 10.0;
/// Why a check did not run.
const NEEDS_FIXTURES: &str = "opt-in: needs --stage-fixtures (writes probe files under the web and API roots, then removes them)";

pub(super) fn list(statuses: &[u16]) -> String {
    statuses
        .iter()
        .map(|s| s.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

impl Probe<'_> {
    pub(super) fn expected_hsts(&self) -> String {
        let mut v = format!("max-age={}", self.cfg.hsts_max_age_secs);
        if self.cfg.hsts_include_subdomains {
            v.push_str("; includeSubDomains");
        }
        if self.cfg.hsts_preload {
            v.push_str("; preload");
        }
        v
    }

    pub(super) fn has_hsts(&self, r: &Response) -> bool {
        r.header("strict-transport-security") == Some(self.expected_hsts().as_str())
    }

    pub(super) fn page(&self, path: &str) -> Request {
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
                "Strict-Transport-Security expected `{}`, got {} (on a {} response)",
                self.expected_hsts(),
                shown(r.header("strict-transport-security")),
                r.status
            ),
        );
        let server = r.header("server").map(str::to_string);
        self.record(
            "tls.server_version_hidden",
            !server.as_deref().unwrap_or("").contains('/'),
            format!("Server: {} (no version expected)", shown(server.as_deref())),
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
            let loc = r.header("location").map(str::to_string);
            self.record(
                name,
                r.status == 301 && loc.as_deref() == Some(want.as_str()),
                format!(
                    "{} {} → {} Location {} (expected 301 {want})",
                    req.method,
                    req.url,
                    r.status,
                    shown(loc.as_deref())
                ),
            );
        }
        Ok(())
    }

    // ---- R3 ----

    pub(super) fn bot_ua(&self) -> String {
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
                    "`{ua}` {path} → {}{}",
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
                "`{ua}` → {}{}",
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
                "upstream saw Host `{host}` SNI `{sni}` URI `{uri}` X-Forwarded-Proto `{proto}` (expected {want_host}, {}, /api/landing?q=1, https; HSTS kept)",
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
        let detail = match (&powered_by, r.status) {
            (None, 200) => "no X-Powered-By header: PHP does not announce its version".to_string(),
            (None, s) => format!("GET /api/landing → {s}, so the header could not be checked"),
            (Some(v), _) => format!(
                "X-Powered-By: `{v}` announces the PHP version (set php_admin_flag[expose_php] = off)"
            ),
        };
        self.record(
            "api.no_php_version_leak",
            r.status == 200 && powered_by.is_none(),
            detail,
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
                "{} Content-Type {} Cache-Control {} (expected `{cc}`) ETag {} HSTS {}",
                r.status,
                shown(r.header("content-type")),
                shown(r.header("cache-control")),
                shown(r.header("etag")),
                if self.has_hsts(&r) {
                    "present"
                } else {
                    "missing"
                }
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
                "Content-Encoding {}, {} bytes (the .gz file has {gz})",
                shown(r.header("content-encoding")),
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
                "{} Content-Encoding {}",
                r.status,
                shown(r.header("content-encoding"))
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
