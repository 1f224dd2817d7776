//! `[nginx]`: the ipo.com edge of spec §2.

use serde::{Deserialize, Serialize};

use super::value::{AbsPath, DomainName, Rate};

/// The nginx edge's settings; the renderer turns them into a complete config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NginxConfig {
    /// The site's domain.
    pub domain: DomainName,
    /// User-Agent keyword (case-insensitive substring) that routes to the bot upstream.
    pub bot_keyword: String,
    /// The bot upstream host (proxied over TLS, verified, with SNI and Host set to it).
    pub bot_upstream: DomainName,
    /// php-fpm's unix socket.
    pub php_fpm_socket: AbsPath,
    /// Directory of the API scripts: `/api/{name}` runs `{api_root}/{name}.php`.
    pub api_root: AbsPath,
    /// Requests per second allowed per client address on `/api/`.
    pub api_rate: Rate,
    /// Requests allowed above the rate without delay before 429 (0: none).
    pub api_burst: u32,
    /// Document root of everything else; `/static/` lives under it.
    pub web_root: AbsPath,
    /// TLS certificate chain (PEM).
    pub tls_certificate: AbsPath,
    /// TLS private key (PEM).
    pub tls_certificate_key: AbsPath,
    /// Where `apply` writes the rendered config.
    pub config_path: AbsPath,
}

impl Default for NginxConfig {
    fn default() -> Self {
        NginxConfig {
            domain: "ipo.com".parse().expect("valid default"),
            bot_keyword: "Google Bot".into(),
            bot_upstream: "bot.ipo.com".parse().expect("valid default"),
            php_fpm_socket: "/run/php-fpm/www.sock".parse().expect("valid default"),
            api_root: "/www/api".parse().expect("valid default"),
            api_rate: Rate::try_from(1.5).expect("valid default"),
            api_burst: 0,
            web_root: "/www/ipo".parse().expect("valid default"),
            tls_certificate: "/etc/pki/tls/certs/ipo.com.crt"
                .parse()
                .expect("valid default"),
            tls_certificate_key: "/etc/pki/tls/private/ipo.com.key"
                .parse()
                .expect("valid default"),
            config_path: "/etc/nginx/conf.d/ipo.com.conf"
                .parse()
                .expect("valid default"),
        }
    }
}

impl NginxConfig {
    /// Cross-field checks: returns `(key, reason)` for the first problem.
    pub fn check(&self) -> Result<(), (String, String)> {
        let kw = &self.bot_keyword;
        if kw.trim().is_empty()
            || kw
                .chars()
                .any(|c| c.is_control() || "\"'`;{}$\\^|()[]*+?.".contains(c))
        {
            return Err((
                "nginx.bot_keyword".into(),
                format!(
                    "`{kw}` must be non-empty plain text: no quotes, ';', braces, '$', '\\' or regex characters"
                ),
            ));
        }
        Ok(())
    }
}
