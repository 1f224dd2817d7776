//! `[nginx]`: the ipo.com edge of spec §2.
//!
//! Every open decision of the research notes (`notes/nginx.md` §2.5, D1–D14) is a setting here
//! with the recommended default; the renderer in `opskit-edge` turns these settings into one
//! complete `nginx.conf`. Values are validated when parsed (see [`super::value`]) and across
//! fields by [`NginxConfig::check`], so a config that passes `check` renders a config that
//! `nginx -t` accepts.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::value::{AbsPath, DomainName, Rate};

/// The nginx edge's settings; the renderer turns them into a complete config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NginxConfig {
    /// D1: nginx version the config is rendered for (`X.Y` or `X.Y.Z`); decides `http2` syntax,
    /// `ssl_session_tickets`, `ssl_reject_handshake`. Default 1.24 (Rocky 8 AppStream).
    pub nginx_version: String,
    /// The site's domain (the canonical host of every redirect).
    pub domain: DomainName,
    /// Plain-HTTP listen sockets (`PORT` or `ADDR:PORT`, IPv6 as `[::]:PORT`).
    pub http_listen: Vec<String>,
    /// HTTPS listen sockets; the first one's port goes into the redirect when it is not 443.
    pub https_listen: Vec<String>,
    /// User-Agent keyword (case-insensitive substring) that routes to the bot upstream.
    pub bot_keyword: String,
    /// D2: also match the keyword without its spaces (`Googlebot`): each space becomes ` ?`.
    pub bot_keyword_space_optional: bool,
    /// The bot upstream host (proxied over TLS, verified, with SNI and Host set to it).
    pub bot_upstream: DomainName,
    /// Port of the bot upstream.
    pub bot_upstream_port: u16,
    /// D5: connect to this `IP:PORT` instead of resolving `bot_upstream` (SNI, Host and the
    /// certificate check still use `bot_upstream`). Empty: resolve the name at start/reload.
    pub bot_upstream_address: String,
    /// CA bundle that verifies the bot upstream's certificate.
    pub bot_upstream_ca: AbsPath,
    /// D4: `Host` header sent to the bot upstream.
    pub bot_host_header: BotHostHeader,
    /// D3: rate-limit bot requests too (own zone `bot`, same rate and burst). Default: no.
    pub bot_rate_limited: bool,
    /// D5/D14: a local resolver (loopback or private address). When set, the bot upstream is
    /// re-resolved at run time through it (`/etc/hosts` is then ignored by nginx).
    pub resolver: Option<IpAddr>,
    /// php-fpm's unix socket.
    pub php_fpm_socket: AbsPath,
    /// Directory of the API scripts: `/api/{name}` runs `{api_root}/{name}.php`.
    pub api_root: AbsPath,
    /// Requests per second allowed per client address on `/api/` (rendered as an integer
    /// `r/s` or `r/m`: 1.5 → `90r/m`).
    pub api_rate: Rate,
    /// D6: requests allowed above the rate before 429 (0: none).
    pub api_burst: u32,
    /// D6: with a burst, answer the burst at once (`nodelay`) instead of queueing it.
    pub api_burst_nodelay: bool,
    /// Size of the shared rate-limit zone in MiB (1 MiB ≈ 8000 client addresses).
    pub api_zone_size_mb: u32,
    /// D12: `/api/...` paths that are not a valid name get 404 instead of the site's page.
    pub api_namespace_strict: bool,
    /// D7: how the fallback reaches `/api/landing`.
    pub landing_fallback: LandingFallback,
    /// Document root of everything else; `/static/` lives under it unless `static_root` is set.
    pub web_root: AbsPath,
    /// D8: serve any existing file under `web_root` before the index chain (`try_files $uri`).
    pub serve_existing_files: bool,
    /// D9: directory served as `/static/` (with `alias`); unset: `{web_root}/static/`.
    pub static_root: Option<AbsPath>,
    /// D10: `Cache-Control: max-age` of `/static/` responses, in seconds.
    pub static_max_age_secs: u32,
    /// D10: add `immutable` (only right when static file names are fingerprinted).
    pub static_immutable: bool,
    /// D11: HSTS `max-age` in seconds.
    pub hsts_max_age_secs: u32,
    /// D11: HSTS `includeSubDomains` (binds bot.ipo.com and every other subdomain too).
    pub hsts_include_subdomains: bool,
    /// D11: HSTS `preload` (needs `includeSubDomains` and at least one year).
    pub hsts_preload: bool,
    /// D13: trusted proxy CIDRs whose `X-Forwarded-For` gives the client address. Empty: the
    /// direct peer address is the client.
    pub real_ip_from: Vec<String>,
    /// D14: OCSP stapling (needs `resolver`; useless with Let's Encrypt certificates).
    pub ocsp_stapling: bool,
    /// TLS certificate chain (PEM).
    pub tls_certificate: AbsPath,
    /// TLS private key (PEM).
    pub tls_certificate_key: AbsPath,
    /// `open_file_cache_valid` in seconds: how long a changed file on disk may go unseen.
    pub open_file_cache_valid_secs: u32,
    /// Unix user (and optional group, `user group`) of the worker processes.
    pub user: String,
    /// `worker_connections` per worker.
    pub worker_connections: u32,
    /// The master's pid file.
    pub pid_file: AbsPath,
    /// The error log.
    pub error_log: AbsPath,
    /// The access log.
    pub access_log: AbsPath,
    /// When set, every `*_temp_path` goes under this directory (for non-root and lab runs).
    pub temp_dir: Option<AbsPath>,
    /// The MIME types file to include.
    pub mime_types: AbsPath,
    /// The FastCGI params file to include (must not set `SCRIPT_FILENAME`).
    pub fastcgi_params: AbsPath,
    /// Dynamic module snippets to include (globs); empty: none.
    pub modules_include: Vec<AbsPath>,
    /// Files included at the end of the `http` block (globs): the other sites' `server`
    /// blocks. Default `/etc/nginx/conf.d/*.conf`, as Rocky's stock `nginx.conf` has, so
    /// replacing that file keeps them; empty: ipo.com only.
    pub http_includes: Vec<AbsPath>,
    /// Directories that `web_root`, `api_root` and `static_root` must lie under.
    pub allowed_roots: Vec<AbsPath>,
    /// Where `apply` writes the rendered config (it replaces the whole `nginx.conf`).
    pub config_path: AbsPath,
    /// The nginx binary used by `check` and `apply`.
    pub nginx_binary: AbsPath,
    /// `nginx -p` prefix for `apply` (unset: the binary's compiled-in prefix).
    pub nginx_prefix: Option<AbsPath>,
    /// URL the probe checks after `apply` (and the default of `opskit nginx probe --url`).
    pub probe_url: String,
    /// Port of the plain-HTTP side the probe checks.
    pub probe_http_port: u16,
    /// `HOST:PORT:ADDR` pins for the probe (like curl `--resolve`).
    pub probe_resolve: Vec<String>,
    /// CA file the probe trusts (unset: the system store).
    pub probe_cacert: Option<AbsPath>,
}

fn parse<T: std::str::FromStr>(s: &str) -> T
where
    T::Err: std::fmt::Debug,
{
    s.parse().expect("valid default")
}

impl Default for NginxConfig {
    fn default() -> Self {
        NginxConfig {
            nginx_version: "1.24".into(),
            domain: parse("ipo.com"),
            http_listen: vec!["80".into(), "[::]:80".into()],
            https_listen: vec!["443".into(), "[::]:443".into()],
            bot_keyword: "Google Bot".into(),
            bot_keyword_space_optional: false,
            bot_upstream: parse("bot.ipo.com"),
            bot_upstream_port: 443,
            bot_upstream_address: String::new(),
            bot_upstream_ca: parse("/etc/pki/tls/certs/ca-bundle.crt"),
            bot_host_header: BotHostHeader::Upstream,
            bot_rate_limited: false,
            resolver: None,
            php_fpm_socket: parse("/run/php-fpm/www.sock"),
            api_root: parse("/www/api"),
            api_rate: Rate::try_from(1.5).expect("valid default"),
            api_burst: 0,
            api_burst_nodelay: true,
            api_zone_size_mb: 10,
            api_namespace_strict: false,
            landing_fallback: LandingFallback::Uri,
            web_root: parse("/www/ipo"),
            serve_existing_files: false,
            static_root: None,
            static_max_age_secs: 31_536_000,
            static_immutable: true,
            hsts_max_age_secs: 63_072_000,
            hsts_include_subdomains: false,
            hsts_preload: false,
            real_ip_from: Vec::new(),
            ocsp_stapling: false,
            tls_certificate: parse("/etc/pki/tls/certs/ipo.com.fullchain.pem"),
            tls_certificate_key: parse("/etc/pki/tls/private/ipo.com.key"),
            open_file_cache_valid_secs: 30,
            user: "nginx".into(),
            worker_connections: 4096,
            pid_file: parse("/run/nginx.pid"),
            error_log: parse("/var/log/nginx/error.log"),
            access_log: parse("/var/log/nginx/access.log"),
            temp_dir: None,
            mime_types: parse("/etc/nginx/mime.types"),
            fastcgi_params: parse("/etc/nginx/fastcgi_params"),
            modules_include: vec![parse("/usr/share/nginx/modules/*.conf")],
            http_includes: vec![parse("/etc/nginx/conf.d/*.conf")],
            allowed_roots: vec![parse("/www")],
            config_path: parse("/etc/nginx/nginx.conf"),
            nginx_binary: parse("/usr/sbin/nginx"),
            nginx_prefix: None,
            probe_url: "https://ipo.com".into(),
            probe_http_port: 80,
            probe_resolve: Vec::new(),
            probe_cacert: None,
        }
    }
}

/// A settings problem: `(dotted key, reason)`.
pub type SettingError = (String, String);

fn bad(key: &str, reason: impl Into<String>) -> SettingError {
    (format!("nginx.{key}"), reason.into())
}

fn check_cidr(s: &str) -> Result<(), String> {
    let (addr, len) = s.split_once('/').unwrap_or((s, ""));
    let ip: IpAddr = addr
        .parse()
        .map_err(|_| format!("`{s}` is not a CIDR (like 10.0.0.0/8)"))?;
    if !len.is_empty() {
        let max = if ip.is_ipv4() { 32 } else { 128 };
        match len.parse::<u8>() {
            Ok(n) if n <= max => {}
            _ => return Err(format!("`{s}`: prefix length must be 0-{max}")),
        }
    }
    Ok(())
}

fn is_local(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback() || v4.is_private(),
        IpAddr::V6(v6) => v6.is_loopback() || (v6.segments()[0] & 0xfe00) == 0xfc00,
    }
}

impl NginxConfig {
    /// The `(major, minor, patch)` of `nginx_version` (valid after [`NginxConfig::check`]).
    pub fn version(&self) -> (u32, u32, u32) {
        parse_nginx_version(&self.nginx_version).unwrap_or((1, 24, 0))
    }

    /// The API rate in nginx's syntax: `Nr/s` when whole, else `Nr/m` (1.5 r/s → `90r/m`).
    /// `None` when the rate is neither a whole number per second nor per minute.
    pub fn api_rate_directive(&self) -> Option<String> {
        let per_s = self.api_rate.per_second();
        let per_m = per_s * 60.0;
        if (per_s - per_s.round()).abs() < 1e-9 {
            Some(format!("{}r/s", per_s.round() as u64))
        } else if (per_m - per_m.round()).abs() < 1e-6 && per_m.round() >= 1.0 {
            Some(format!("{}r/m", per_m.round() as u64))
        } else {
            None
        }
    }

    /// Cross-field checks: returns `(key, reason)` for the first problem.
    pub fn check(&self) -> Result<(), SettingError> {
        self.check_version()?;
        self.check_bot()?;
        self.check_listen()?;
        self.check_api()?;
        self.check_roots()?;
        self.check_headers()?;
        self.check_misc()?;
        Ok(())
    }

    fn check_version(&self) -> Result<(), SettingError> {
        match parse_nginx_version(&self.nginx_version) {
            Some(v) if ((1, 14, 0)..(2, 0, 0)).contains(&v) => Ok(()),
            Some(_) => Err(bad(
                "nginx_version",
                format!(
                    "`{}` is not supported: opskit renders for nginx 1.14 to 1.x",
                    self.nginx_version
                ),
            )),
            None => Err(bad(
                "nginx_version",
                format!(
                    "`{}` is not a version like 1.24 or 1.22.1",
                    self.nginx_version
                ),
            )),
        }
    }

    fn check_bot(&self) -> Result<(), SettingError> {
        let kw = &self.bot_keyword;
        if kw.trim().is_empty()
            || kw.trim() != kw
            || kw.contains("  ")
            || kw
                .chars()
                .any(|c| c.is_control() || "\"'`;{}$\\^|()[]*+?.#<>".contains(c))
        {
            return Err(bad(
                "bot_keyword",
                format!(
                    "`{kw}` must be non-empty plain text with single inner spaces: no quotes, ';', braces, '$', '\\', '#' or regex characters"
                ),
            ));
        }
        if !self.bot_upstream_address.is_empty() {
            listen_port(&self.bot_upstream_address)
                .map_err(|e| bad("bot_upstream_address", format!("{e} (use IP:PORT)")))?;
            if !self.bot_upstream_address.contains(':') {
                return Err(bad(
                    "bot_upstream_address",
                    format!("`{}` must be IP:PORT", self.bot_upstream_address),
                ));
            }
        }
        if self.bot_upstream_port == 0 {
            return Err(bad("bot_upstream_port", "the port must be 1-65535"));
        }
        if let Some(ip) = &self.resolver
            && !is_local(ip)
        {
            return Err(bad(
                "resolver",
                format!(
                    "{ip} is not a loopback or private address: a public resolver lets DNS spoofing redirect the proxy (gixy resolver_external)"
                ),
            ));
        }
        if self.resolver.is_some() && !self.bot_upstream_address.is_empty() {
            return Err(bad(
                "resolver",
                "set either resolver (re-resolve bot_upstream at run time) or bot_upstream_address (fixed address), not both",
            ));
        }
        Ok(())
    }

    fn check_listen(&self) -> Result<(), SettingError> {
        for (key, list) in [
            ("http_listen", &self.http_listen),
            ("https_listen", &self.https_listen),
        ] {
            if list.is_empty() {
                return Err(bad(key, "at least one listen socket is needed"));
            }
            for l in list {
                listen_port(l).map_err(|e| bad(key, e))?;
            }
        }
        let http: Vec<&String> = self.http_listen.iter().collect();
        if let Some(clash) = self.https_listen.iter().find(|l| http.contains(l)) {
            return Err(bad(
                "https_listen",
                format!("`{clash}` is also in http_listen"),
            ));
        }
        Ok(())
    }

    fn check_api(&self) -> Result<(), SettingError> {
        if self.api_rate_directive().is_none() {
            return Err(bad(
                "api_rate",
                format!(
                    "{} r/s cannot be written for nginx: it must be a whole number per second or per minute (1.5 r/s = 90 r/m)",
                    self.api_rate.per_second()
                ),
            ));
        }
        if self.api_burst > 10_000 {
            return Err(bad("api_burst", "at most 10000"));
        }
        if !(1..=1024).contains(&self.api_zone_size_mb) {
            return Err(bad("api_zone_size_mb", "must be 1 to 1024"));
        }
        Ok(())
    }

    fn check_roots(&self) -> Result<(), SettingError> {
        if self.allowed_roots.is_empty() {
            return Err(bad("allowed_roots", "at least one allowed root is needed"));
        }
        let mut content = vec![("web_root", &self.web_root), ("api_root", &self.api_root)];
        if let Some(s) = &self.static_root {
            content.push(("static_root", s));
        }
        for (key, path) in content {
            let inside = self
                .allowed_roots
                .iter()
                .any(|root| path.path().starts_with(root.path()) && path.path() != root.path());
            if !inside {
                let roots: Vec<String> = self.allowed_roots.iter().map(|r| r.to_string()).collect();
                return Err(bad(
                    key,
                    format!(
                        "`{path}` is outside the allowed roots [{}] (set nginx.allowed_roots to allow it)",
                        roots.join(", ")
                    ),
                ));
            }
        }
        if self.web_root.path().starts_with(self.api_root.path())
            || (self.api_root.path().starts_with(self.web_root.path()) && self.serve_existing_files)
        {
            return Err(bad(
                "api_root",
                format!(
                    "`{}` and web_root `{}` overlap: PHP sources could be served as files",
                    self.api_root, self.web_root
                ),
            ));
        }
        Ok(())
    }

    fn check_headers(&self) -> Result<(), SettingError> {
        if self.hsts_max_age_secs < 86_400 {
            return Err(bad(
                "hsts_max_age_secs",
                "must be at least 86400 (one day); Mozilla recommends 63072000",
            ));
        }
        if self.hsts_preload
            && (!self.hsts_include_subdomains || self.hsts_max_age_secs < 31_536_000)
        {
            return Err(bad(
                "hsts_preload",
                "preload needs hsts_include_subdomains = true and hsts_max_age_secs >= 31536000",
            ));
        }
        if self.ocsp_stapling && self.resolver.is_none() {
            return Err(bad(
                "ocsp_stapling",
                "stapling needs a local `resolver`, otherwise it silently does nothing",
            ));
        }
        for cidr in &self.real_ip_from {
            check_cidr(cidr).map_err(|e| bad("real_ip_from", e))?;
        }
        Ok(())
    }

    fn check_misc(&self) -> Result<(), SettingError> {
        let user_ok = !self.user.is_empty()
            && self.user.split(' ').count() <= 2
            && self.user.split(' ').all(|w| {
                !w.is_empty()
                    && w.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            });
        if !user_ok {
            return Err(bad(
                "user",
                format!(
                    "`{}` must be `user` or `user group` (letters, digits, _ -)",
                    self.user
                ),
            ));
        }
        if !(64..=1_000_000).contains(&self.worker_connections) {
            return Err(bad("worker_connections", "must be 64 to 1000000"));
        }
        if !(1..=3600).contains(&self.open_file_cache_valid_secs) {
            return Err(bad("open_file_cache_valid_secs", "must be 1 to 3600"));
        }
        if !(self.probe_url.starts_with("https://")
            && self.probe_url.len() > 8
            && !self
                .probe_url
                .chars()
                .any(|c| c.is_whitespace() || c.is_control()))
        {
            return Err(bad(
                "probe_url",
                format!("`{}` must be an https:// URL", self.probe_url),
            ));
        }
        for r in &self.probe_resolve {
            let parts: Vec<&str> = r.splitn(3, ':').collect();
            if parts.len() != 3 || parts[1].parse::<u16>().is_err() || parts[2].is_empty() {
                return Err(bad(
                    "probe_resolve",
                    format!("`{r}` must be HOST:PORT:ADDR like ipo.com:443:127.0.0.1"),
                ));
            }
        }
        Ok(())
    }
}

// ---- value types of [nginx] only ----

/// D4: which `Host` header the bot upstream receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BotHostHeader {
    /// `Host: <bot_upstream>`, matching SNI and the upstream certificate (default).
    Upstream,
    /// `Host: $host` (the site's name), for a bot server that renders by Host.
    Site,
}

/// D7: how the last `try_files` fallback reaches `/api/landing`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LandingFallback {
    /// Internal redirect to the URI `/api/landing?args`: shares the API rate limit (default).
    Uri,
    /// A named location `@landing` with its own FastCGI block and no rate limit.
    Named,
}

/// Parses `X.Y` or `X.Y.Z` into `(major, minor, patch)`.
pub fn parse_nginx_version(s: &str) -> Option<(u32, u32, u32)> {
    let parts: Vec<&str> = s.trim().split('.').collect();
    if !(2..=3).contains(&parts.len()) {
        return None;
    }
    let num = |p: &str| -> Option<u32> {
        if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        p.parse().ok()
    };
    Some((
        num(parts[0])?,
        num(parts[1])?,
        num(parts.get(2).unwrap_or(&"0"))?,
    ))
}

/// Checks a listen value: `PORT`, `IPv4:PORT` or `[IPv6]:PORT`; returns the port.
pub fn listen_port(s: &str) -> Result<u16, String> {
    let port = match s.rsplit_once(':') {
        None => s,
        Some((addr, port)) => {
            let addr_ok = match addr.strip_prefix('[').and_then(|a| a.strip_suffix(']')) {
                Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok(),
                None => addr.parse::<std::net::Ipv4Addr>().is_ok(),
            };
            if !addr_ok {
                return Err(format!(
                    "`{s}`: the address must be an IPv4 address or [IPv6] address"
                ));
            }
            port
        }
    };
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(format!("`{s}`: the port must be 1-65535")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(f: impl FnOnce(&mut NginxConfig)) -> Result<(), SettingError> {
        let mut c = NginxConfig::default();
        f(&mut c);
        c.check()
    }

    #[test]
    fn defaults_pass_and_rate_is_90_per_minute() {
        let c = NginxConfig::default();
        c.check().unwrap();
        assert_eq!(c.api_rate_directive().as_deref(), Some("90r/m"));
        assert_eq!(c.version(), (1, 24, 0));
    }

    #[test]
    fn unsafe_settings_are_refused_with_their_key() {
        type Edit = Box<dyn FnOnce(&mut NginxConfig)>;
        let cases: Vec<(&str, Edit)> = vec![
            (
                "nginx.bot_keyword",
                Box::new(|c| c.bot_keyword = "Google;Bot".into()),
            ),
            (
                "nginx.bot_keyword",
                Box::new(|c| c.bot_keyword = "Google {Bot}".into()),
            ),
            (
                "nginx.bot_keyword",
                Box::new(|c| c.bot_keyword = " ".into()),
            ),
            (
                "nginx.api_rate",
                Box::new(|c| c.api_rate = Rate::try_from(1.51).unwrap()),
            ),
            (
                "nginx.web_root",
                Box::new(|c| c.web_root = "/etc/ipo".parse().unwrap()),
            ),
            (
                "nginx.web_root",
                Box::new(|c| c.web_root = "/www".parse().unwrap()),
            ),
            (
                "nginx.api_root",
                Box::new(|c| c.api_root = "/srv/api".parse().unwrap()),
            ),
            (
                "nginx.nginx_version",
                Box::new(|c| c.nginx_version = "1.12".into()),
            ),
            (
                "nginx.nginx_version",
                Box::new(|c| c.nginx_version = "latest".into()),
            ),
            (
                "nginx.https_listen",
                Box::new(|c| c.https_listen = vec!["44 3".into()]),
            ),
            ("nginx.http_listen", Box::new(|c| c.http_listen = vec![])),
            (
                "nginx.resolver",
                Box::new(|c| c.resolver = Some("8.8.8.8".parse().unwrap())),
            ),
            ("nginx.hsts_preload", Box::new(|c| c.hsts_preload = true)),
            (
                "nginx.real_ip_from",
                Box::new(|c| c.real_ip_from = vec!["10.0.0.0/99".into()]),
            ),
            ("nginx.user", Box::new(|c| c.user = "nginx;".into())),
            (
                "nginx.probe_url",
                Box::new(|c| c.probe_url = "http://ipo.com".into()),
            ),
            ("nginx.ocsp_stapling", Box::new(|c| c.ocsp_stapling = true)),
        ];
        for (key, f) in cases {
            let (k, reason) = with(f).unwrap_err();
            assert_eq!(k, key, "{reason}");
            assert!(!reason.is_empty());
        }
    }

    #[test]
    fn whole_rates_render_per_second() {
        let mut c = NginxConfig {
            api_rate: Rate::try_from(10.0).unwrap(),
            ..NginxConfig::default()
        };
        assert_eq!(c.api_rate_directive().as_deref(), Some("10r/s"));
        c.api_rate = Rate::try_from(0.5).unwrap();
        assert_eq!(c.api_rate_directive().as_deref(), Some("30r/m"));
    }

    #[test]
    fn every_setting_round_trips_through_toml() {
        let nginx = NginxConfig {
            modules_include: Vec::new(),
            resolver: Some("127.0.0.1".parse().unwrap()),
            static_root: Some("/www/static".parse().unwrap()),
            temp_dir: Some("/var/lib/nginx/tmp".parse().unwrap()),
            bot_host_header: BotHostHeader::Site,
            landing_fallback: LandingFallback::Named,
            real_ip_from: vec!["10.0.0.0/8".into()],
            ..NginxConfig::default()
        };
        let config = super::super::Config {
            nginx,
            ..Default::default()
        };
        let back = super::super::Config::parse(&config.to_toml()).unwrap();
        assert_eq!(back.nginx, config.nginx);
    }

    #[test]
    fn listen_values() {
        assert_eq!(listen_port("443"), Ok(443));
        assert_eq!(listen_port("127.0.0.1:8443"), Ok(8443));
        assert_eq!(listen_port("[::]:80"), Ok(80));
        assert!(listen_port("ipo.com:80").is_err());
        assert!(listen_port("0").is_err());
    }
}
