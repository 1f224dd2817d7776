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
    /// A month with more documents than this is archived in segments of up to this many
    /// documents (the first of 2,000, doubling): each segment is appended to the remote file,
    /// fsynced, read back and matched, then its documents are deleted while the next segment
    /// is exported. A smaller month runs the classic sequence (export, upload, verify, purge).
    pub segment_docs: Positive,
    /// Seconds allowed for each call to the source (connect, count, one export batch, one
    /// delete batch).
    pub source_timeout_secs: Positive,
    /// The compression ratio assumed when estimating the archive's size for the free-disk
    /// check (raw bytes ÷ compressed bytes; user logs typically compress 5-6×).
    pub expected_compression_ratio: Positive,
    /// Free space required in `staging_dir`, as a percentage of the estimated archive size.
    pub free_space_margin_pct: Positive,
    /// Minutes after a month has ended (midnight of the 1st in `general.timezone`) before it
    /// may be archived; earlier runs are refused. Writers that buffer or whose clocks run late
    /// still write the month's last documents in this window.
    pub month_grace_minutes: u64,
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
            segment_docs: Positive::new(20_000),
            source_timeout_secs: Positive::new(300),
            expected_compression_ratio: Positive::new(4),
            free_space_margin_pct: Positive::new(200),
            month_grace_minutes: 30,
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
    /// Remote directory for the archives, relative to the SFTP login (start) directory; it
    /// cannot leave it (no leading `/`, no `..`).
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
    /// Documents in the first delete batch; later batches adapt between `min_batch_size` and
    /// `max_batch_size` to take about `target_batch_ms` each.
    pub batch_size: Positive,
    /// The duration each delete batch aims at, in milliseconds (pt-online-schema-change's
    /// `--chunk-time`): batches grow while faster than half of it and halve when slower.
    pub target_batch_ms: Positive,
    /// The smallest batch; a batch of this size that times out fails the run (resumable).
    pub min_batch_size: Positive,
    /// The largest batch.
    pub max_batch_size: Positive,
    /// Pause between batches in milliseconds.
    pub pause_ms: u64,
    /// Pause while replication lag is above this many seconds.
    pub max_lag_secs: Positive,
    /// Give up (exit 1, resumable) when the lag stays above `max_lag_secs` this long.
    pub max_lag_wait_secs: Positive,
    /// Sessions that delete parts of each batch concurrently (MySQL source).
    pub connections: Positive,
    /// MySQL source: replicas to watch (`mysql://[user@]host:port/`, no password: the
    /// source's password file is used; the user defaults to the source's). Before each batch
    /// the purge reads `Seconds_Behind_Master` on each and pauses while one lags more than
    /// `max_lag_secs`, is not replicating (NULL) or does not answer. MongoDB sources watch
    /// their secondaries by themselves.
    pub replicas: Vec<String>,
    /// MySQL source: also watch the replicas found by `SHOW SLAVE HOSTS` on the source and,
    /// recursively, on each replica found (they must set `report_host`/`report_port`).
    pub discover_replicas: bool,
    /// MySQL source, segmented months: the export also asks the server for an MD5
    /// fingerprint of each row, and the purge deletes a row only while its fingerprint is
    /// unchanged, in one statement, instead of locking, reading back and comparing it. Less
    /// client CPU and no row sent back, more server CPU (the hash is computed twice).
    pub fingerprints: bool,
    /// MariaDB source, segmented months: each segment is read by the `DELETE … RETURNING *`
    /// that removes it, in a transaction committed only once the segment is verified on the
    /// backup host (one pass over the rows instead of an export and a delete). Used when the
    /// server is MariaDB ≥ 10.0.5 and its plan for that `DELETE` uses the date index;
    /// otherwise (and when false) the export is followed by the purge above.
    pub delete_returning: bool,
}

impl Default for PurgeConfig {
    fn default() -> Self {
        PurgeConfig {
            batch_size: Positive::new(5000),
            target_batch_ms: Positive::new(500),
            min_batch_size: Positive::new(10),
            max_batch_size: Positive::new(100_000),
            pause_ms: 0,
            max_lag_secs: Positive::new(10),
            max_lag_wait_secs: Positive::new(3600),
            connections: Positive::new(2),
            replicas: Vec::new(),
            discover_replicas: false,
            fingerprints: true,
            delete_returning: true,
        }
    }
}

impl PurgeConfig {
    /// `min_batch_size <= batch_size <= max_batch_size`.
    fn check_batch_bounds(&self) -> Result<(), (String, String)> {
        let (min, start, max) = (
            self.min_batch_size.get(),
            self.batch_size.get(),
            self.max_batch_size.get(),
        );
        if min > max {
            return Err((
                "archive.purge.min_batch_size".into(),
                format!("{min} is above archive.purge.max_batch_size ({max})"),
            ));
        }
        if start < min || start > max {
            return Err((
                "archive.purge.batch_size".into(),
                format!(
                    "{start} is outside min_batch_size..=max_batch_size ({min}..={max}): the first batch must be one the purge may use"
                ),
            ));
        }
        Ok(())
    }
}

/// The largest accepted value of each bounded `[archive]` number: beyond these a value is a
/// typo, and arithmetic on durations and counts stays far from overflowing.
pub const LIMITS: &[(&str, u64)] = &[
    ("archive.compression_threads", 64),
    ("archive.segment_docs", 10_000_000),
    ("archive.source_timeout_secs", 86_400),
    ("archive.expected_compression_ratio", 1_000),
    ("archive.free_space_margin_pct", 10_000),
    ("archive.month_grace_minutes", 10_080),
    ("archive.sftp.timeout_secs", 3_600),
    ("archive.purge.batch_size", 100_000),
    ("archive.purge.target_batch_ms", 600_000),
    ("archive.purge.min_batch_size", 100_000),
    ("archive.purge.max_batch_size", 100_000),
    ("archive.purge.pause_ms", 600_000),
    ("archive.purge.max_lag_secs", 86_400),
    ("archive.purge.max_lag_wait_secs", 604_800),
    ("archive.purge.connections", 64),
    ("archive.purge.replicas", 64),
];

fn within(key: &str, value: u64) -> Result<(), (String, String)> {
    let max = LIMITS
        .iter()
        .find(|(k, _)| *k == key)
        .map_or(u64::MAX, |(_, m)| *m);
    if value > max {
        return Err((key.into(), format!("{value} is above the limit of {max}")));
    }
    Ok(())
}

/// The `mongodb://` / `mysql://` source URI must name a user at most, never a password.
fn check_source_uri(uri: &str) -> Result<(), (String, String)> {
    let key = || "archive.source_uri".to_string();
    if !(uri.starts_with("mongodb://")
        || uri.starts_with("mongodb+srv://")
        || uri.starts_with("mysql://"))
    {
        return Err((
            key(),
            format!("`{uri}` must start with mongodb://, mongodb+srv:// or mysql://"),
        ));
    }
    let rest = uri.split_once("://").map_or("", |(_, r)| r);
    // A password may hold '/', '?' or '#', which a URI parser takes as the end of the host
    // part: so any ':' before the first '@' is read as `user:password`.
    if let Some((userinfo, _)) = rest.split_once('@')
        && userinfo.contains(':')
    {
        return Err((
            key(),
            "the URI holds a password (a ':' before '@'); put it in archive.source_password_file \
             (mode 0600) instead (an '@' inside a query value is written %40)"
                .into(),
        ));
    }
    let query = rest
        .split_once('?')
        .map_or("", |(_, q)| q)
        .to_ascii_lowercase();
    if query
        .split('&')
        .any(|kv| kv.split('=').next().is_some_and(|k| k.contains("password")))
    {
        return Err((
            key(),
            "the URI query holds a password option; put the password in archive.source_password_file instead".into(),
        ));
    }
    Ok(())
}

/// `archive.purge.replicas`: only for a MySQL source, each a `mysql://` URI without a
/// password.
fn check_replicas(c: &ArchiveConfig) -> Result<(), (String, String)> {
    let key = || "archive.purge.replicas".to_string();
    let mysql = c.source_uri.starts_with("mysql://");
    if !mysql && (!c.purge.replicas.is_empty() || c.purge.discover_replicas) {
        return Err((
            key(),
            "replicas are watched for a mysql:// source only (a MongoDB source watches its secondaries itself); \
             remove archive.purge.replicas and archive.purge.discover_replicas"
                .into(),
        ));
    }
    within("archive.purge.replicas", c.purge.replicas.len() as u64)?;
    for r in &c.purge.replicas {
        if !r.starts_with("mysql://") {
            return Err((key(), format!("`{r}` must be a mysql:// URI")));
        }
        check_source_uri(r).map_err(|(_, reason)| (key(), reason))?;
    }
    Ok(())
}

/// `remote_dir` stays under the SFTP login directory: relative, no `..`, no shell specials.
fn check_remote_dir(dir: &str) -> Result<(), (String, String)> {
    let key = || "archive.sftp.remote_dir".to_string();
    if dir.is_empty()
        || dir
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || "'\"`$;\\".contains(c))
    {
        return Err((
            key(),
            format!(
                "`{dir}` must be a non-empty path without whitespace, quotes, '$', ';' or '\\'"
            ),
        ));
    }
    if dir.starts_with('/') || dir.starts_with('~') {
        return Err((
            key(),
            format!(
                "`{dir}` leaves the SFTP login directory: write it relative to it (for example user_logs)"
            ),
        ));
    }
    if dir.split('/').any(|c| c == "..") {
        return Err((
            key(),
            format!(
                "`{dir}` contains '..': the archive directory cannot leave the SFTP login directory"
            ),
        ));
    }
    Ok(())
}

impl ArchiveConfig {
    /// Checks the password file as a run reads it (it exists, is a regular file of mode 0600
    /// or 0400 owned by the user running opskit, and is not empty), so `config check` and
    /// every archive command refuse what the run would. Apart from [`ArchiveConfig::check`]: a
    /// host that runs other runbooks from the same config need not hold the file.
    pub fn check_secrets(&self) -> Result<(), (String, String)> {
        if let Some(p) = &self.source_password_file {
            const KEY: &str = "archive.source_password_file";
            crate::secret::read_secret_file(p.path(), KEY).map_err(|e| {
                let text = format!("{e:#}");
                let reason = text
                    .strip_prefix(&format!("{KEY}: "))
                    .unwrap_or(&text)
                    .to_string();
                (KEY.to_string(), reason)
            })?;
        }
        Ok(())
    }

    /// Cross-field checks: returns `(key, reason)` for the first problem. Reads no file.
    pub fn check(&self) -> Result<(), (String, String)> {
        check_source_uri(&self.source_uri)?;
        if !(1..=9).contains(&self.compression_level) {
            return Err((
                "archive.compression_level".into(),
                format!("{} is not a gzip level (1 to 9)", self.compression_level),
            ));
        }
        if self.free_space_margin_pct.get() < 100 {
            return Err((
                "archive.free_space_margin_pct".into(),
                format!(
                    "{}% is less than the estimated archive itself: use 100 or more",
                    self.free_space_margin_pct
                ),
            ));
        }
        for (key, value) in [
            (
                "archive.compression_threads",
                u64::from(self.compression_threads),
            ),
            ("archive.segment_docs", self.segment_docs.get()),
            (
                "archive.source_timeout_secs",
                self.source_timeout_secs.get(),
            ),
            (
                "archive.expected_compression_ratio",
                self.expected_compression_ratio.get(),
            ),
            (
                "archive.free_space_margin_pct",
                self.free_space_margin_pct.get(),
            ),
            ("archive.month_grace_minutes", self.month_grace_minutes),
            ("archive.sftp.timeout_secs", self.sftp.timeout_secs.get()),
            ("archive.purge.batch_size", self.purge.batch_size.get()),
            (
                "archive.purge.target_batch_ms",
                self.purge.target_batch_ms.get(),
            ),
            (
                "archive.purge.min_batch_size",
                self.purge.min_batch_size.get(),
            ),
            (
                "archive.purge.max_batch_size",
                self.purge.max_batch_size.get(),
            ),
            ("archive.purge.pause_ms", self.purge.pause_ms),
            ("archive.purge.max_lag_secs", self.purge.max_lag_secs.get()),
            (
                "archive.purge.max_lag_wait_secs",
                self.purge.max_lag_wait_secs.get(),
            ),
            ("archive.purge.connections", self.purge.connections.get()),
        ] {
            within(key, value)?;
        }
        self.purge.check_batch_bounds()?;
        check_remote_dir(&self.sftp.remote_dir)?;
        check_replicas(self)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(f: impl FnOnce(&mut ArchiveConfig)) -> Result<(), (String, String)> {
        let mut c = ArchiveConfig::default();
        f(&mut c);
        c.check().and_then(|()| c.check_secrets())
    }

    fn key_of(r: Result<(), (String, String)>) -> String {
        r.expect_err("refused").0
    }

    #[test]
    fn the_defaults_pass() {
        ArchiveConfig::default().check().unwrap();
    }

    #[test]
    fn passwords_never_live_in_the_uri_even_with_slashes_or_question_marks() {
        for uri in [
            "mysql://root:secret@127.0.0.1:3306/",
            "mysql://root:pa/ss@127.0.0.1:3306/",
            "mysql://root:pa?ss@127.0.0.1:3306/",
            "mongodb://u:p#w@db1/",
            "mongodb://u@db1/?authSource=admin&tlsCertificateKeyFilePassword=x",
        ] {
            let (key, reason) = with(|c| c.source_uri = uri.into()).unwrap_err();
            assert_eq!(key, "archive.source_uri", "{uri}");
            assert!(reason.contains("password"), "{uri}: {reason}");
            assert!(
                !reason.contains("secret") && !reason.contains("pa/ss"),
                "{reason}"
            );
        }
        with(|c| c.source_uri = "mongodb://archiver@db1:27017,db2:27017/?replicaSet=rs0".into())
            .unwrap();
    }

    #[test]
    fn numbers_have_sane_bounds() {
        assert_eq!(
            key_of(with(|c| c.purge.batch_size = Positive::new(1 << 40))),
            "archive.purge.batch_size"
        );
        assert_eq!(
            key_of(with(|c| c.purge.connections = Positive::new(1000))),
            "archive.purge.connections"
        );
        assert_eq!(
            key_of(with(
                |c| c.source_timeout_secs = Positive::new(u64::MAX >> 2)
            )),
            "archive.source_timeout_secs"
        );
        assert_eq!(
            key_of(with(|c| c.sftp.timeout_secs = Positive::new(1 << 50))),
            "archive.sftp.timeout_secs"
        );
        assert_eq!(
            key_of(with(|c| c.purge.max_lag_wait_secs = Positive::new(1 << 40))),
            "archive.purge.max_lag_wait_secs"
        );
        assert_eq!(
            key_of(with(|c| c.free_space_margin_pct = Positive::new(50))),
            "archive.free_space_margin_pct"
        );
        with(|c| c.purge.batch_size = Positive::new(100_000)).unwrap();
    }

    #[test]
    fn purge_batch_bounds_are_ordered() {
        assert_eq!(
            key_of(with(|c| {
                c.purge.min_batch_size = Positive::new(600);
                c.purge.max_batch_size = Positive::new(500);
                c.purge.batch_size = Positive::new(550);
            })),
            "archive.purge.min_batch_size"
        );
        let (key, reason) = with(|c| c.purge.batch_size = Positive::new(5)).unwrap_err();
        assert_eq!(key, "archive.purge.batch_size");
        assert!(reason.contains("10..=100000"), "{reason}");
        assert_eq!(
            key_of(with(|c| c.purge.max_batch_size = Positive::new(1000))),
            "archive.purge.batch_size",
            "the default first batch (5000) is above a max of 1000"
        );
        assert_eq!(
            key_of(with(|c| c.purge.target_batch_ms = Positive::new(1 << 30))),
            "archive.purge.target_batch_ms"
        );
        with(|c| {
            c.purge.min_batch_size = Positive::new(250);
            c.purge.max_batch_size = Positive::new(250);
            c.purge.batch_size = Positive::new(250);
        })
        .unwrap();
    }

    #[test]
    fn replicas_are_mysql_uris_without_passwords_for_a_mysql_source() {
        let mysql = |c: &mut ArchiveConfig| c.source_uri = "mysql://archiver@db1:3306/".into();
        with(|c| {
            mysql(c);
            c.purge.replicas = vec!["mysql://db2:3306/".into(), "mysql://mon@db3:3306/".into()];
            c.purge.discover_replicas = true;
        })
        .unwrap();
        for bad in ["mysql://u:secret@db2:3306/", "db2:3306", "mongodb://db2/"] {
            let (key, reason) = with(|c| {
                mysql(c);
                c.purge.replicas = vec![bad.into()];
            })
            .unwrap_err();
            assert_eq!(key, "archive.purge.replicas", "{bad}");
            assert!(!reason.contains("secret"), "{reason}");
        }
        assert_eq!(
            key_of(with(|c| c.purge.discover_replicas = true)),
            "archive.purge.replicas",
            "the default source is MongoDB"
        );
    }

    #[test]
    fn the_remote_dir_cannot_leave_the_sftp_home() {
        for dir in [
            "..",
            "../etc",
            "user_logs/../../x",
            "/etc/opskit",
            "~root/x",
            "a b",
        ] {
            let (key, _) = with(|c| c.sftp.remote_dir = dir.into()).unwrap_err();
            assert_eq!(key, "archive.sftp.remote_dir", "{dir}");
        }
        with(|c| c.sftp.remote_dir = "backups/user_logs".into()).unwrap();
    }

    #[test]
    fn the_password_file_is_checked_as_the_run_reads_it() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pw");
        std::fs::write(&p, "s3cret\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let set = |c: &mut ArchiveConfig| {
            c.source_password_file = Some(p.to_str().unwrap().parse().unwrap())
        };
        let mut c = ArchiveConfig::default();
        set(&mut c);
        c.check().expect("the plain check reads no file");
        let (key, reason) = with(set).unwrap_err();
        assert_eq!(key, "archive.source_password_file");
        assert!(
            reason.contains("0644") && reason.contains("chmod 600"),
            "{reason}"
        );
        assert!(!reason.contains("s3cret"));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        with(set).unwrap();
        std::fs::remove_file(&p).unwrap();
        assert_eq!(key_of(with(set)), "archive.source_password_file");
    }
}
