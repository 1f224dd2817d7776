//! `[archive]`: the monthly export, upload and purge of spec §1.

use serde::{Deserialize, Serialize};

use super::value::{AbsPath, CalendarSpec, CronSchedule, Ident, Name, Positive};

/// The archive runbook's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ArchiveConfig {
    /// Where the documents come from: a `mongodb://` or `mysql://` URI without a password.
    pub source_uri: String,
    /// A 0600 file holding the source password (kept out of argv, logs and this file).
    pub source_password_file: Option<AbsPath>,
    /// The database (MongoDB) or schema (MySQL).
    pub database: Ident,
    /// The collection (MongoDB) or table (MySQL).
    pub collection: Ident,
    /// The date field, a `YYYY-MM-DD HH:MM:SS` string in the writers' time zone.
    pub date_field: Ident,
    /// The cron line of the Bash wrapper (`deploy/cron`).
    pub schedule: CronSchedule,
    /// The systemd timer's `OnCalendar=`.
    pub on_calendar: CalendarSpec,
    /// Local staging directory for archives and manifests.
    pub staging_dir: AbsPath,
    /// gzip level, 1 (fastest) to 9 (smallest).
    pub compression_level: u32,
    /// Compressor threads (each 1 MiB chunk is its own gzip member, pigz-style); 0 = one per
    /// core.
    pub compression_threads: u32,
    /// Seconds allowed for each call to the source (connect, count, one export batch, one
    /// delete batch).
    pub source_timeout_secs: Positive,
    /// The compression ratio assumed when estimating the archive's size for the free-disk
    /// check (raw bytes ÷ compressed bytes; user logs typically compress 5-6×).
    pub expected_compression_ratio: Positive,
    /// Free space required in `staging_dir`, as a percentage of the estimated archive size.
    pub free_space_margin_pct: Positive,
    /// The SFTP destination.
    pub sftp: SftpConfig,
    /// How the purge paces itself.
    pub purge: PurgeConfig,
}

impl Default for ArchiveConfig {
    fn default() -> Self {
        ArchiveConfig {
            source_uri: "mongodb://127.0.0.1:27017/".into(),
            source_password_file: None,
            database: "test".parse().expect("valid default"),
            collection: "user_logs".parse().expect("valid default"),
            date_field: "create_on".parse().expect("valid default"),
            schedule: "0 1 1 * *".parse().expect("valid default"),
            on_calendar: "*-*-01 01:00:00".parse().expect("valid default"),
            staging_dir: "/var/lib/opskit/archive".parse().expect("valid default"),
            compression_level: 6,
            compression_threads: 0,
            source_timeout_secs: Positive::new(300),
            expected_compression_ratio: Positive::new(4),
            free_space_margin_pct: Positive::new(200),
            sftp: SftpConfig::default(),
            purge: PurgeConfig::default(),
        }
    }
}

/// The backup host, as an alias of the operator's `~/.ssh/config`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SftpConfig {
    /// The `Host` alias in ssh_config (its HostName, User, Port and key apply).
    pub host: Name,
    /// An ssh_config file to use instead of `~/.ssh/config`.
    pub ssh_config: Option<AbsPath>,
    /// Remote directory for the archives, relative to the login directory or absolute.
    pub remote_dir: String,
    /// Seconds allowed to connect and for each SFTP request.
    pub timeout_secs: Positive,
}

impl Default for SftpConfig {
    fn default() -> Self {
        SftpConfig {
            host: "bak.ipo.com".parse().expect("valid default"),
            ssh_config: None,
            remote_dir: "user_logs".into(),
            timeout_secs: Positive::new(60),
        }
    }
}

/// Batching and throttling of the delete phase.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PurgeConfig {
    /// Documents deleted per batch.
    pub batch_size: Positive,
    /// Pause between batches in milliseconds.
    pub pause_ms: u64,
    /// Pause while replication lag is above this many seconds.
    pub max_lag_secs: Positive,
    /// Give up (exit 1, resumable) when the lag stays above `max_lag_secs` this long.
    pub max_lag_wait_secs: Positive,
    /// Sessions that delete parts of each batch concurrently (MySQL source).
    pub connections: Positive,
}

impl Default for PurgeConfig {
    fn default() -> Self {
        PurgeConfig {
            batch_size: Positive::new(5000),
            pause_ms: 0,
            max_lag_secs: Positive::new(10),
            max_lag_wait_secs: Positive::new(3600),
            connections: Positive::new(2),
        }
    }
}

impl ArchiveConfig {
    /// Cross-field checks: returns `(key, reason)` for the first problem.
    pub fn check(&self) -> Result<(), (String, String)> {
        let uri = &self.source_uri;
        if !(uri.starts_with("mongodb://")
            || uri.starts_with("mongodb+srv://")
            || uri.starts_with("mysql://"))
        {
            return Err((
                "archive.source_uri".into(),
                format!("`{uri}` must start with mongodb://, mongodb+srv:// or mysql://"),
            ));
        }
        let authority = uri.split_once("://").map_or("", |(_, r)| r);
        let authority = authority.split(['/', '?']).next().unwrap_or("");
        if let Some((userinfo, _)) = authority.rsplit_once('@')
            && userinfo.contains(':')
        {
            return Err((
                "archive.source_uri".into(),
                "the URI holds a password; put it in archive.source_password_file (mode 0600) instead"
                    .into(),
            ));
        }
        if !(1..=9).contains(&self.compression_level) {
            return Err((
                "archive.compression_level".into(),
                format!("{} is not a gzip level (1 to 9)", self.compression_level),
            ));
        }
        if self.compression_threads > 64 {
            return Err((
                "archive.compression_threads".into(),
                format!(
                    "{} threads is too many (0 = one per core, at most 64)",
                    self.compression_threads
                ),
            ));
        }
        if self.sftp.remote_dir.is_empty()
            || self
                .sftp
                .remote_dir
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || "'\"`$;\\".contains(c))
        {
            return Err((
                "archive.sftp.remote_dir".into(),
                format!(
                    "`{}` must be a non-empty path without whitespace, quotes, '$', ';' or '\\'",
                    self.sftp.remote_dir
                ),
            ));
        }
        Ok(())
    }
}
