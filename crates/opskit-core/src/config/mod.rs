//! The configuration: one TOML file, every default of the spec in one place.
//!
//! Lookup order: `--config FILE`, else `$OPSKIT_CONFIG`, else `/etc/opskit/opskit.toml` when it
//! exists, else the built-in defaults. Unknown keys, wrong types and bad values are rejected with
//! the file, line, key and reason ([`ConfigError`]).

pub mod alert;
pub mod archive;
pub mod firewall;
pub mod general;
pub mod mysql;
pub mod nginx;
pub mod value;

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use alert::AlertConfig;
pub use archive::{ArchiveConfig, PurgeConfig, SftpConfig};
pub use firewall::{ContainerConfig, FirewallConfig, Ipv4Range, Reading};
pub use general::GeneralConfig;
pub use mysql::{MysqlConfig, MysqlServer};
pub use nginx::NginxConfig;

/// The system-wide config file, used when neither `--config` nor `$OPSKIT_CONFIG` is given.
pub const SYSTEM_CONFIG: &str = "/etc/opskit/opskit.toml";
/// The environment variable naming a config file.
pub const CONFIG_ENV: &str = "OPSKIT_CONFIG";

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Shared settings: state and metrics directories, time zone.
    pub general: GeneralConfig,
    /// The failure webhook.
    pub alert: AlertConfig,
    /// Spec §1: the monthly archive.
    pub archive: ArchiveConfig,
    /// Spec §2: the nginx edge.
    pub nginx: NginxConfig,
    /// Spec §3: the Docker firewall.
    pub firewall: FirewallConfig,
    /// Spec §4 and §5: MySQL topology.
    pub mysql: MysqlConfig,
}

/// Where the effective configuration came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigSource {
    /// A file (from `--config`, `$OPSKIT_CONFIG` or the system path).
    File(PathBuf),
    /// No file: the built-in defaults.
    Defaults,
}

impl fmt::Display for ConfigSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigSource::File(p) => write!(f, "{}", p.display()),
            ConfigSource::Defaults => f.write_str("built-in defaults"),
        }
    }
}

/// A configuration problem, located as precisely as the input allows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// The file, if the config came from one.
    pub file: Option<PathBuf>,
    /// 1-based line of the offending key or value.
    pub line: Option<usize>,
    /// Dotted key path, such as `nginx.api_rate`.
    pub key: Option<String>,
    /// What is wrong and what is expected.
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("config error")?;
        if let Some(file) = &self.file {
            write!(f, " in {}", file.display())?;
            if let Some(line) = self.line {
                write!(f, ":{line}")?;
            }
        }
        if let Some(key) = &self.key {
            write!(f, ": key `{key}`")?;
        }
        write!(f, ": {}", self.reason)
    }
}

impl Config {
    /// Finds and loads the configuration following the documented lookup order.
    pub fn discover(explicit: Option<&Path>) -> Result<(Config, ConfigSource), ConfigError> {
        if let Some(p) = explicit {
            return Ok((Config::load_file(p)?, ConfigSource::File(p.to_path_buf())));
        }
        if let Some(p) = std::env::var_os(CONFIG_ENV).filter(|v| !v.is_empty()) {
            let p = PathBuf::from(p);
            return Ok((Config::load_file(&p)?, ConfigSource::File(p)));
        }
        let system = Path::new(SYSTEM_CONFIG);
        if system.exists() {
            return Ok((
                Config::load_file(system)?,
                ConfigSource::File(system.into()),
            ));
        }
        Ok((Config::default(), ConfigSource::Defaults))
    }

    /// Reads and validates one file.
    pub fn load_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: Some(path.to_path_buf()),
            line: None,
            key: None,
            reason: format!("cannot read the file: {e}"),
        })?;
        Config::parse(&text).map_err(|mut e| {
            e.file = Some(path.to_path_buf());
            e
        })
    }

    /// Parses and validates TOML text (the error has no file; [`Config::load_file`] adds it).
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| from_toml_error(text, &e))?;
        config.check().map_err(|(key, reason)| ConfigError {
            file: None,
            line: locate_key(text, &key),
            key: Some(key),
            reason,
        })?;
        Ok(config)
    }

    /// Checks the secret files a runbook reads (today the archive's password file) as it
    /// reads them; `source` names the config file in the error. Called by `config check` and
    /// the commands of the runbook that reads them, not by [`Config::parse`].
    pub fn check_secrets(&self, source: &ConfigSource) -> Result<(), ConfigError> {
        self.archive
            .check_secrets()
            .map_err(|(key, reason)| ConfigError {
                file: match source {
                    ConfigSource::File(p) => Some(p.clone()),
                    ConfigSource::Defaults => None,
                },
                line: None,
                key: Some(key),
                reason,
            })
    }

    /// Cross-field validation of every section (reads no file: see [`Config::check_secrets`]).
    pub fn check(&self) -> Result<(), (String, String)> {
        self.archive.check()?;
        self.nginx.check()?;
        self.firewall.check()?;
        self.mysql.check()?;
        Ok(())
    }

    /// The effective configuration as TOML.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("config always serializes")
    }
}

fn from_toml_error(text: &str, e: &toml::de::Error) -> ConfigError {
    let line = e
        .span()
        .map(|span| text[..span.start.min(text.len())].matches('\n').count() + 1);
    let key = line.and_then(|l| key_at_line(text, l));
    let mut reason = e.message().trim().to_string();
    if reason.starts_with("unknown field") {
        reason = reason.replace(", expected", "; the known keys are");
    }
    ConfigError {
        file: None,
        line,
        key,
        reason,
    }
}

/// Parses a `[table]` or `[[array]]` header line into its dotted path.
fn header_of(line: &str) -> Option<String> {
    let t = line.trim();
    let inner = t
        .strip_prefix("[[")
        .and_then(|r| r.split("]]").next())
        .or_else(|| t.strip_prefix('[').and_then(|r| r.split(']').next()))?;
    Some(
        inner
            .split('.')
            .map(|p| p.trim().trim_matches('"'))
            .collect::<Vec<_>>()
            .join("."),
    )
}

/// Parses the key of a `key = value` line.
fn key_of(line: &str) -> Option<String> {
    let t = line.trim();
    if t.starts_with('#') || t.starts_with('[') {
        return None;
    }
    let (k, _) = t.split_once('=')?;
    let k = k.trim();
    if k.is_empty() {
        return None;
    }
    Some(
        k.split('.')
            .map(|p| p.trim().trim_matches('"'))
            .collect::<Vec<_>>()
            .join("."),
    )
}

/// The dotted key path that line `line` (1-based) assigns or opens.
fn key_at_line(text: &str, line: usize) -> Option<String> {
    let mut table = String::new();
    for (i, l) in text.lines().enumerate() {
        if let Some(h) = header_of(l) {
            table = h;
            if i + 1 == line {
                return Some(table);
            }
            continue;
        }
        if i + 1 == line {
            let k = key_of(l)?;
            return Some(if table.is_empty() {
                k
            } else {
                format!("{table}.{k}")
            });
        }
    }
    None
}

/// The 1-based line where a dotted key path is set, or where its table starts.
pub fn locate_key(text: &str, key: &str) -> Option<usize> {
    let mut table = String::new();
    let mut table_line = None;
    for (i, l) in text.lines().enumerate() {
        if let Some(h) = header_of(l) {
            table = h;
            if key == table || key.starts_with(&format!("{table}.")) && table_line.is_none() {
                table_line = Some(i + 1);
            }
            continue;
        }
        if let Some(k) = key_of(l) {
            let full = if table.is_empty() {
                k
            } else {
                format!("{table}.{k}")
            };
            if full == key {
                return Some(i + 1);
            }
        }
    }
    table_line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_spec() {
        let c = Config::default();
        assert_eq!(c.archive.database.as_str(), "test");
        assert_eq!(c.archive.collection.as_str(), "user_logs");
        assert_eq!(c.archive.date_field.as_str(), "create_on");
        assert_eq!(c.archive.schedule.as_str(), "0 1 1 * *");
        assert_eq!(c.archive.sftp.host.as_str(), "bak.ipo.com");
        assert_eq!(
            c.alert.webhook_url.as_ref().unwrap().as_str(),
            "https://monitor.ipo.com/webhook/mongodb"
        );
        assert_eq!(c.nginx.domain.as_str(), "ipo.com");
        assert_eq!(c.nginx.bot_keyword, "Google Bot");
        assert_eq!(c.nginx.api_rate.per_second(), 1.5);
        assert_eq!(c.firewall.lan_range.to_string(), "192.168.1.1-192.168.1.30");
        assert_eq!(c.mysql.write_dns_name.as_str(), "mysql-master.ipo.com");
        assert_eq!(c.mysql.promote.as_str(), "Slave_01");
        c.check().unwrap();
    }

    #[test]
    fn round_trips_through_toml() {
        let c = Config::default();
        assert_eq!(Config::parse(&c.to_toml()).unwrap(), c);
    }

    #[test]
    fn unknown_key_names_line_and_key() {
        let e = Config::parse("[general]\nstate_dir = \"/x\"\nstate_dri = \"/y\"\n").unwrap_err();
        assert_eq!(e.line, Some(3), "{e}");
        assert_eq!(e.key.as_deref(), Some("general.state_dri"), "{e}");
        assert!(e.reason.contains("unknown field"), "{e}");
    }

    #[test]
    fn wrong_type_names_line_and_key() {
        let e = Config::parse("[nginx]\n\napi_rate = \"fast\"\n").unwrap_err();
        assert_eq!(e.line, Some(3), "{e}");
        assert_eq!(e.key.as_deref(), Some("nginx.api_rate"));
    }

    #[test]
    fn bad_values_are_refused() {
        let cases = [
            ("[nginx]\ndomain = \"ipo .com\"\n", "nginx.domain", 2),
            ("[nginx]\ndomain = \"ipo.com;\"\n", "nginx.domain", 2),
            ("[nginx]\napi_rate = 0\n", "nginx.api_rate", 2),
            ("[nginx]\napi_rate = 0.0\n", "nginx.api_rate", 2),
            ("[nginx]\nweb_root = \"www/ipo\"\n", "nginx.web_root", 2),
            (
                "[general]\ntimezone = \"Nowhere/Land\"\n",
                "general.timezone",
                2,
            ),
            (
                "[archive]\nschedule = \"0 25 1 * *\"\n",
                "archive.schedule",
                2,
            ),
            (
                "[archive.purge]\nbatch_size = 0\n",
                "archive.purge.batch_size",
                2,
            ),
            (
                "[archive]\nsource_uri = \"mongodb://u:pw@h/\"\n",
                "archive.source_uri",
                2,
            ),
            (
                "[firewall]\nlan_range = \"192.168.1.30-192.168.1.1\"\n",
                "firewall.lan_range",
                2,
            ),
            (
                "[nginx]\nbot_keyword = \"Google;Bot\"\n",
                "nginx.bot_keyword",
                2,
            ),
        ];
        for (text, key, line) in cases {
            let e = Config::parse(text).unwrap_err();
            assert_eq!(e.key.as_deref(), Some(key), "{text}: {e}");
            assert_eq!(e.line, Some(line), "{text}: {e}");
        }
    }

    #[test]
    fn error_display_has_file_line_key_reason() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("opskit.toml");
        std::fs::write(&p, "[nginx]\napi_rate = -1\n").unwrap();
        let msg = Config::load_file(&p).unwrap_err().to_string();
        assert!(msg.contains("opskit.toml:2"), "{msg}");
        assert!(msg.contains("key `nginx.api_rate`"), "{msg}");
        assert!(msg.contains("greater than 0"), "{msg}");
    }
}
