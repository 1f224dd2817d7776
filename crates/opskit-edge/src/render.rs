//! Settings + target nginx version → one complete `nginx.conf` for spec §2. Pure.
//!
//! Mozilla intermediate TLS, h5bp's static-file optimisations, If-is-Evil-safe bot dispatch.
//! Every open decision of the spec is a setting of [`NginxConfig`]; the target version picks
//! the syntax (`http2`, session tickets, `ssl_reject_handshake`, `$limit_req_status`).

use std::fmt::Write as _;

use opskit_core::config::NginxConfig;
use opskit_core::config::nginx::{BotHostHeader, LandingFallback, listen_port};

/// A `(major, minor, patch)` nginx version.
pub type Version = (u32, u32, u32);

/// `http2 on;` exists from 1.25.1; `listen … http2` is deprecated there.
const HTTP2_DIRECTIVE: Version = (1, 25, 1);
/// Ticket keys rotate by themselves from 1.23.2; before that tickets must be off.
const AUTO_TICKET_KEYS: Version = (1, 23, 2);
/// `ssl_reject_handshake` appeared in 1.19.4.
const REJECT_HANDSHAKE: Version = (1, 19, 4);
/// `$limit_req_status` appeared in 1.17.6.
const LIMIT_REQ_STATUS_VAR: Version = (1, 17, 6);

/// Mozilla intermediate (guideline 6.0) TLS 1.2 ciphers: ECDHE + AEAD only.
const MOZILLA_INTERMEDIATE_CIPHERS: &str = "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305";

/// The name of the `upstream` block of the bot server (spec: `server_bot`).
pub const BOT_UPSTREAM_NAME: &str = "server_bot";

/// Renders the config for the version in `cfg.nginx_version`. Run [`NginxConfig::check`]
/// first: this function assumes valid settings.
pub fn render(cfg: &NginxConfig) -> String {
    render_for(cfg, cfg.version())
}

/// Renders the config for an explicit nginx version.
pub fn render_for(cfg: &NginxConfig, version: Version) -> String {
    let mut c = Conf::default();
    header(&mut c, cfg, version);
    main_context(&mut c, cfg);
    c.open("http");
    http_basics(&mut c, cfg, version);
    http_performance(&mut c, cfg);
    real_ip(&mut c, cfg);
    bot_map(&mut c, cfg);
    rate_zones(&mut c, cfg);
    bot_upstream(&mut c, cfg);
    tls_defaults(&mut c, cfg, version);
    redirect_server(&mut c, cfg);
    default_tls_server(&mut c, cfg, version);
    site_server(&mut c, cfg, version);
    other_sites(&mut c, cfg);
    c.close();
    c.text
}

/// An indenting text builder for nginx syntax.
#[derive(Default)]
struct Conf {
    text: String,
    depth: usize,
}

impl Conf {
    fn line(&mut self, s: &str) {
        if s.is_empty() {
            self.text.push('\n');
            return;
        }
        let _ = writeln!(self.text, "{}{s}", "    ".repeat(self.depth));
    }
    fn open(&mut self, head: &str) {
        self.line(&format!("{head} {{"));
        self.depth += 1;
    }
    fn close(&mut self) {
        self.depth -= 1;
        self.line("}");
    }
    fn blank(&mut self) {
        self.text.push('\n');
    }
}

fn version_text(v: Version) -> String {
    format!("{}.{}.{}", v.0, v.1, v.2)
}

fn header(c: &mut Conf, cfg: &NginxConfig, v: Version) {
    c.line(&format!(
        "# {} edge (spec §2), rendered by `opskit nginx render` for nginx {}.",
        cfg.domain,
        version_text(v)
    ));
    c.line(&format!(
        "# This file replaces {} as a whole. Do not edit it by hand: change [nginx] in",
        cfg.config_path
    ));
    c.line("# opskit.toml and run `opskit nginx apply` (nginx -t, reload, probe, rollback).");
    c.blank();
}

fn main_context(c: &mut Conf, cfg: &NginxConfig) {
    c.line(&format!("user {};", cfg.user));
    c.line("worker_processes auto;");
    c.line(&format!(
        "worker_rlimit_nofile {};  # >= 2 x worker_connections",
        cfg.worker_connections.saturating_mul(2)
    ));
    c.line(&format!("error_log {} warn;", cfg.error_log));
    c.line(&format!("pid {};", cfg.pid_file));
    for modules in &cfg.modules_include {
        c.line(&format!("include {modules};"));
    }
    c.blank();
    c.open("events");
    c.line(&format!("worker_connections {};", cfg.worker_connections));
    c.close();
    c.blank();
}

fn http_basics(c: &mut Conf, cfg: &NginxConfig, v: Version) {
    c.line(&format!("include {};", cfg.mime_types));
    c.line("default_type application/octet-stream;");
    c.line("server_tokens off;");
    c.blank();
    let lrs = if v >= LIMIT_REQ_STATUS_VAR {
        " lrs=$limit_req_status"
    } else {
        ""
    };
    c.line(&format!(
        "log_format main '$remote_addr [$time_local] \"$request\" $status $body_bytes_sent{lrs} '"
    ));
    c.line("                '\"$http_user_agent\" up=$upstream_addr rt=$request_time';");
    c.line(&format!("access_log {} main;", cfg.access_log));
    if let Some(tmp) = &cfg.temp_dir {
        for kind in ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"] {
            c.line(&format!("{kind}_temp_path {tmp}/{kind};"));
        }
    }
    c.blank();
}

fn http_performance(c: &mut Conf, cfg: &NginxConfig) {
    c.line("sendfile on;");
    c.line("tcp_nopush on;");
    c.line("tcp_nodelay on;");
    c.line("keepalive_timeout 20s;");
    c.line("keepalive_requests 1000;");
    c.blank();
    c.line("# Descriptor and stat cache. Errors are not cached: a file created after a 404");
    c.line("# is served at once (errors cached here would keep it 404 for open_file_cache_valid).");
    c.line("open_file_cache max=1000 inactive=20s;");
    c.line(&format!(
        "open_file_cache_valid {}s;",
        cfg.open_file_cache_valid_secs
    ));
    c.line("open_file_cache_min_uses 2;");
    c.line("open_file_cache_errors off;");
    c.blank();
    c.line("gzip on;");
    c.line("gzip_comp_level 5;");
    c.line("gzip_min_length 256;");
    c.line("gzip_proxied any;");
    c.line("gzip_vary on;");
    c.line("gzip_types text/css text/plain text/xml application/javascript application/json");
    c.line("           application/xml application/manifest+json image/svg+xml font/ttf font/otf;");
    c.blank();
}

fn real_ip(c: &mut Conf, cfg: &NginxConfig) {
    if cfg.real_ip_from.is_empty() {
        return;
    }
    c.line("# real_ip_from: client address from X-Forwarded-For, trusted only from these proxies.");
    for cidr in &cfg.real_ip_from {
        c.line(&format!("set_real_ip_from {cidr};"));
    }
    c.line("real_ip_header X-Forwarded-For;");
    c.line("real_ip_recursive on;");
    c.blank();
}

/// The case-insensitive regex for the bot keyword (validated plain text, so no escaping).
pub fn bot_regex(cfg: &NginxConfig) -> String {
    let words: Vec<String> = cfg
        .bot_keyword
        .split(' ')
        .map(|w| w.to_lowercase())
        .collect();
    let sep = if cfg.bot_keyword_space_optional {
        " ?"
    } else {
        " "
    };
    format!("~*{}", words.join(sep))
}

fn bot_map(c: &mut Conf, cfg: &NginxConfig) {
    c.line(&format!(
        "# R3: User-Agent contains \"{}\" (case-insensitive) -> {}.",
        cfg.bot_keyword, cfg.bot_upstream
    ));
    c.open("map $http_user_agent $is_bot");
    c.line("default 0;");
    c.line(&format!("\"{}\" 1;", bot_regex(cfg)));
    c.close();
    c.blank();
}

fn burst_args(cfg: &NginxConfig) -> String {
    match (cfg.api_burst, cfg.api_burst_nodelay) {
        (0, _) => String::new(),
        (b, true) => format!(" burst={b} nodelay"),
        (b, false) => format!(" burst={b}"),
    }
}

fn rate_zones(c: &mut Conf, cfg: &NginxConfig) {
    let rate = cfg.api_rate_directive().unwrap_or_else(|| "90r/m".into());
    c.line(&format!(
        "# R5: {} r/s per client address = {rate} (nginx takes whole r/s or r/m only).",
        cfg.api_rate.per_second()
    ));
    c.line(&format!(
        "limit_req_zone $binary_remote_addr zone=api:{}m rate={rate};",
        cfg.api_zone_size_mb
    ));
    if cfg.bot_rate_limited {
        c.line(&format!(
            "limit_req_zone $binary_remote_addr zone=bot:{}m rate={rate};",
            cfg.api_zone_size_mb
        ));
    }
    c.line("limit_req_log_level warn;");
    c.blank();
}

fn bot_upstream(c: &mut Conf, cfg: &NginxConfig) {
    if let Some(resolver) = &cfg.resolver {
        c.line("# resolver: the bot upstream is re-resolved at run time through a local resolver.");
        let addr = match resolver {
            std::net::IpAddr::V6(v6) => format!("[{v6}]"),
            std::net::IpAddr::V4(v4) => v4.to_string(),
        };
        c.line(&format!("resolver {addr} valid=30s;"));
        c.line("resolver_timeout 2s;");
        c.blank();
        return;
    }
    let server = if cfg.bot_upstream_address.is_empty() {
        format!("{}:{}", cfg.bot_upstream, cfg.bot_upstream_port)
    } else {
        cfg.bot_upstream_address.clone()
    };
    c.line(
        "# Resolved at start and reload (so /etc/hosts works); start fails if it does not resolve.",
    );
    c.open(&format!("upstream {BOT_UPSTREAM_NAME}"));
    c.line(&format!("server {server};"));
    c.line("keepalive 16;");
    c.close();
    c.blank();
}

fn tls_defaults(c: &mut Conf, cfg: &NginxConfig, v: Version) {
    c.line("# Mozilla intermediate (guideline 6.0) for OpenSSL 1.1.1 (Rocky 8).");
    c.line("ssl_protocols TLSv1.2 TLSv1.3;");
    c.line("ssl_ecdh_curve X25519:prime256v1:secp384r1;");
    c.line(&format!("ssl_ciphers {MOZILLA_INTERMEDIATE_CIPHERS};"));
    c.line("ssl_prefer_server_ciphers off;");
    c.line("ssl_session_timeout 1d;");
    c.line("ssl_session_cache shared:MozSSL:10m;");
    if v < AUTO_TICKET_KEYS {
        c.line("ssl_session_tickets off;  # ticket keys rotate by themselves only from 1.23.2");
    }
    if cfg.ocsp_stapling {
        c.line("ssl_stapling on;");
        c.line("ssl_stapling_verify on;");
    }
    c.blank();
}

fn https_port(cfg: &NginxConfig) -> u16 {
    cfg.https_listen
        .first()
        .and_then(|l| listen_port(l).ok())
        .unwrap_or(443)
}

/// `https://<domain>[:port]`: the canonical origin every redirect points to.
pub fn canonical_origin(cfg: &NginxConfig) -> String {
    match https_port(cfg) {
        443 => format!("https://{}", cfg.domain),
        p => format!("https://{}:{p}", cfg.domain),
    }
}

fn redirect_server(c: &mut Conf, cfg: &NginxConfig) {
    c.line("# R2: every plain-HTTP request -> 301 to https, path and query kept, fixed host.");
    c.open("server");
    for l in &cfg.http_listen {
        c.line(&format!("listen {l} default_server;"));
    }
    c.line(&format!("server_name {};", cfg.domain));
    c.line(&format!(
        "return 301 {}$request_uri;",
        canonical_origin(cfg)
    ));
    c.close();
    c.blank();
}

fn tls_listen(c: &mut Conf, cfg: &NginxConfig, v: Version, default_server: bool) {
    let def = if default_server {
        " default_server"
    } else {
        ""
    };
    let legacy_h2 = if v >= HTTP2_DIRECTIVE { "" } else { " http2" };
    for l in &cfg.https_listen {
        c.line(&format!("listen {l} ssl{legacy_h2}{def};"));
    }
    if v >= HTTP2_DIRECTIVE {
        c.line("http2 on;");
    }
}

fn default_tls_server(c: &mut Conf, cfg: &NginxConfig, v: Version) {
    c.line("# Unknown names: TLS handshake refused; misdirected HTTP/2 requests get 421.");
    c.open("server");
    tls_listen(c, cfg, v, true);
    c.line("server_name _;");
    if v >= REJECT_HANDSHAKE {
        c.line("ssl_reject_handshake on;");
    } else {
        c.line(&format!("ssl_certificate {};", cfg.tls_certificate));
        c.line(&format!("ssl_certificate_key {};", cfg.tls_certificate_key));
    }
    c.open("location /");
    c.line("return 421;");
    c.close();
    c.close();
    c.blank();
}

fn security_headers(c: &mut Conf, cfg: &NginxConfig) {
    let mut hsts = format!("max-age={}", cfg.hsts_max_age_secs);
    if cfg.hsts_include_subdomains {
        hsts.push_str("; includeSubDomains");
    }
    if cfg.hsts_preload {
        hsts.push_str("; preload");
    }
    c.line(&format!(
        "add_header Strict-Transport-Security \"{hsts}\" always;"
    ));
    c.line("add_header X-Content-Type-Options \"nosniff\" always;");
    c.line("add_header Referrer-Policy \"strict-origin-when-cross-origin\" always;");
}

fn site_server(c: &mut Conf, cfg: &NginxConfig, v: Version) {
    c.line(&format!("# R1: {} over HTTPS and HTTP/2.", cfg.domain));
    c.open("server");
    tls_listen(c, cfg, v, false);
    c.line(&format!("server_name {};", cfg.domain));
    c.line(&format!("ssl_certificate {};", cfg.tls_certificate));
    c.line(&format!("ssl_certificate_key {};", cfg.tls_certificate_key));
    c.blank();
    c.line(&format!("root {};", cfg.web_root));
    security_headers(c, cfg);
    c.blank();
    c.line("# Plain HTTP sent to the TLS port (else 400).");
    c.line(&format!(
        "error_page 497 =301 {}$request_uri;",
        canonical_origin(cfg)
    ));
    c.blank();
    c.line("# R3: dispatched before location matching, so bots bypass /api and /static.");
    c.line("# Only `return` inside `if` (If-is-Evil safe).");
    c.line("error_page 418 = @bot;");
    c.line("if ($is_bot) {");
    c.line("    return 418;");
    c.line("}");
    c.blank();
    fallback_location(c, cfg);
    static_location(c, cfg);
    api_location(c, cfg);
    if cfg.landing_fallback == LandingFallback::Named {
        landing_location(c, cfg);
    }
    bot_location(c, cfg);
    c.close();
}

fn other_sites(c: &mut Conf, cfg: &NginxConfig) {
    if cfg.http_includes.is_empty() {
        return;
    }
    c.blank();
    c.line("# Other sites' server blocks (as Rocky's stock nginx.conf includes them). Their");
    c.line("# `listen` must not say default_server on our ports: nginx -t then fails.");
    for include in &cfg.http_includes {
        c.line(&format!("include {include};"));
    }
}

fn fallback_location(c: &mut Conf, cfg: &NginxConfig) {
    let first = if cfg.serve_existing_files {
        "$uri "
    } else {
        ""
    };
    let last = match cfg.landing_fallback {
        LandingFallback::Uri => "/api/landing$is_args$args",
        LandingFallback::Named => "@landing",
    };
    c.line("# R7: index.html -> public/index.html -> /api/landing, query string kept.");
    c.open("location /");
    c.line(&format!(
        "try_files {first}/index.html /public/index.html {last};"
    ));
    c.close();
    if cfg.serve_existing_files {
        c.line("# serve_existing_files: files are served from the root, so hide dotfiles and scripts there too.");
        deny_hidden_and_scripts(c, "/");
    }
    c.blank();
}

fn deny_hidden_and_scripts(c: &mut Conf, prefix: &str) {
    c.open(&format!("location ~ ^{prefix}(?:.*/)?\\."));
    c.line("deny all;");
    c.close();
    c.open("location ~* \\.(?:php|phar|phtml|pl|py|cgi|sh)\\z");
    c.line("deny all;");
    c.close();
}

fn static_location(c: &mut Conf, cfg: &NginxConfig) {
    let immutable = if cfg.static_immutable {
        ", immutable"
    } else {
        ""
    };
    c.line("# R6: static files only; ^~ keeps every regex location (and the API) out.");
    c.open("location ^~ /static/");
    if let Some(dir) = &cfg.static_root {
        c.line(&format!(
            "alias {}/;",
            dir.to_string().trim_end_matches('/')
        ));
    }
    c.line("# add_header here drops every add_header of the server (HSTS too): repeat them.");
    security_headers(c, cfg);
    c.line(&format!(
        "add_header Cache-Control \"public, max-age={}{immutable}\" always;",
        cfg.static_max_age_secs
    ));
    c.line("gzip_static on;");
    c.line("access_log off;");
    c.line("log_not_found off;");
    deny_hidden_and_scripts(c, "/static/");
    c.line("try_files $uri =404;");
    c.close();
    c.blank();
}

fn fastcgi_lines(c: &mut Conf, cfg: &NginxConfig, script: &str, name: &str) {
    c.line(&format!("include {};", cfg.fastcgi_params));
    c.line(&format!("fastcgi_param SCRIPT_FILENAME {script};"));
    c.line(&format!("fastcgi_param SCRIPT_NAME {name};"));
    c.line(&format!("fastcgi_pass unix:{};", cfg.php_fpm_socket));
}

fn api_location(c: &mut Conf, cfg: &NginxConfig) {
    if cfg.api_namespace_strict {
        c.line("# api_namespace_strict: anything under /api/ that is not a valid name is 404.");
        c.open("location /api/");
        c.line("return 404;");
        c.close();
    }
    c.line(&format!(
        "# R4 + R5: /api/{{name}} -> {}/{{name}}.php over php-fpm's unix socket, rate limited.",
        cfg.api_root
    ));
    c.line("# \\z, not $: `$` also matches before a trailing newline (/api/x%0A).");
    c.open("location ~ ^/api/(?<api_name>[A-Za-z0-9_-]+)\\z");
    c.line(&format!("limit_req zone=api{};", burst_args(cfg)));
    c.line("limit_req_status 429;");
    c.line(&format!("root {};", cfg.api_root));
    c.line("try_files /$api_name.php =404;  # unknown names: 404 from nginx, never reach PHP");
    fastcgi_lines(c, cfg, "$document_root/$api_name.php", "/api/$api_name");
    c.close();
    c.blank();
}

fn landing_location(c: &mut Conf, cfg: &NginxConfig) {
    c.line("# landing_fallback = named: the fallback runs landing.php outside the API rate limit.");
    c.open("location @landing");
    fastcgi_lines(
        c,
        cfg,
        &format!("{}/landing.php", cfg.api_root),
        "/api/landing",
    );
    c.close();
    c.blank();
}

fn bot_location(c: &mut Conf, cfg: &NginxConfig) {
    let host = match cfg.bot_host_header {
        BotHostHeader::Upstream => cfg.bot_upstream.to_string(),
        BotHostHeader::Site => "$host".into(),
    };
    c.line(&format!(
        "# R3: reverse proxy to {} over verified TLS with SNI.",
        cfg.bot_upstream
    ));
    c.open("location @bot");
    if cfg.bot_rate_limited {
        c.line(&format!("limit_req zone=bot{};", burst_args(cfg)));
        c.line("limit_req_status 429;");
    }
    if cfg.resolver.is_some() {
        c.line(&format!("set $bot_upstream {};", cfg.bot_upstream));
        c.line(&format!(
            "proxy_pass https://$bot_upstream:{};",
            cfg.bot_upstream_port
        ));
    } else {
        c.line(&format!("proxy_pass https://{BOT_UPSTREAM_NAME};"));
        c.line("proxy_set_header Connection \"\";  # upstream keepalive");
    }
    c.line("proxy_http_version 1.1;");
    c.line(&format!("proxy_set_header Host {host};"));
    c.line("proxy_set_header X-Real-IP $remote_addr;");
    c.line("proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;");
    c.line("proxy_set_header X-Forwarded-Proto $scheme;");
    c.line("proxy_ssl_server_name on;");
    c.line(&format!("proxy_ssl_name {};", cfg.bot_upstream));
    c.line("proxy_ssl_protocols TLSv1.2 TLSv1.3;");
    c.line("proxy_ssl_verify on;");
    c.line("proxy_ssl_verify_depth 2;");
    c.line(&format!(
        "proxy_ssl_trusted_certificate {};",
        cfg.bot_upstream_ca
    ));
    c.line("proxy_ssl_session_reuse on;");
    c.line("proxy_connect_timeout 5s;");
    c.line("proxy_read_timeout 30s;");
    c.close();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http2_syntax_follows_the_version() {
        let cfg = NginxConfig::default();
        let old = render_for(&cfg, (1, 24, 0));
        assert!(old.contains("listen 443 ssl http2;"));
        assert!(!old.contains("http2 on;"));
        let new = render_for(&cfg, (1, 25, 1));
        assert!(new.contains("listen 443 ssl;"));
        assert!(new.contains("http2 on;"));
        assert!(!new.contains("ssl http2"));
    }

    #[test]
    fn session_tickets_off_only_before_1_23_2() {
        let cfg = NginxConfig::default();
        assert!(render_for(&cfg, (1, 22, 1)).contains("ssl_session_tickets off;"));
        assert!(!render_for(&cfg, (1, 23, 2)).contains("ssl_session_tickets"));
    }

    #[test]
    fn reject_handshake_only_from_1_19_4() {
        let cfg = NginxConfig::default();
        assert!(render_for(&cfg, (1, 20, 0)).contains("ssl_reject_handshake on;"));
        let old = render_for(&cfg, (1, 18, 0));
        assert!(!old.contains("ssl_reject_handshake"));
        assert!(old.contains("lrs=$limit_req_status"));
        assert!(!render_for(&cfg, (1, 16, 1)).contains("$limit_req_status"));
    }

    #[test]
    fn redirect_keeps_port_when_not_443() {
        let mut cfg = NginxConfig::default();
        assert!(render(&cfg).contains("return 301 https://ipo.com$request_uri;"));
        cfg.https_listen = vec!["127.0.0.1:8443".into()];
        assert!(render(&cfg).contains("return 301 https://ipo.com:8443$request_uri;"));
    }

    #[test]
    fn bot_regex_is_case_insensitive_and_literal_by_default() {
        let mut cfg = NginxConfig::default();
        assert_eq!(bot_regex(&cfg), "~*google bot");
        cfg.bot_keyword_space_optional = true;
        assert_eq!(bot_regex(&cfg), "~*google ?bot");
    }

    #[test]
    fn other_sites_are_included_at_the_end_of_http_unless_switched_off() {
        let mut cfg = NginxConfig::default();
        let text = render(&cfg);
        assert!(
            text.ends_with("    include /etc/nginx/conf.d/*.conf;\n}\n"),
            "{}",
            &text[text.len() - 200..]
        );
        cfg.http_includes.clear();
        assert!(!render(&cfg).contains("conf.d"));
    }

    #[test]
    fn burst_and_fallback_options() {
        let mut cfg = NginxConfig::default();
        assert!(render(&cfg).contains("limit_req zone=api;"));
        cfg.api_burst = 3;
        assert!(render(&cfg).contains("limit_req zone=api burst=3 nodelay;"));
        cfg.landing_fallback = LandingFallback::Named;
        let text = render(&cfg);
        assert!(text.contains("try_files /index.html /public/index.html @landing;"));
        assert!(text.contains("location @landing {"));
    }
}
