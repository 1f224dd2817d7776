//! The archive plan: export → upload → commit (verify both copies; the point of no return)
//! → purge, with what `plan` observed. Observing changes nothing anywhere: not the source,
//! not the staging or state directories, not the backup host.

use std::path::Path;

use anyhow::{Context as _, bail};
use opskit_core::plan::{Plan, StepSpec};
use serde::Serialize;

use crate::commit::CommitStep;
use crate::export::ExportStep;
use crate::job::{ArchiveJob, RUNBOOK, SharedSource};
use crate::purge::PurgeStep;
use crate::sftp::{RemoteDir, remote_path, temp_name};
use crate::source::mysql::quote_ident;
use crate::source::{Anomalies, RangeStats};
use crate::staged::{ArchiveManifest, partial_path};
use crate::upload::UploadStep;

/// What `plan` observed about the month before anything runs.
#[derive(Debug, Clone, Serialize)]
pub struct Observed {
    /// Count, size, index.
    pub stats: RangeStats,
    /// Date values that no month's bounds match.
    pub anomalies: Anomalies,
    /// The estimated archive size in bytes and the free space needed for it.
    pub estimate: DiskEstimate,
    /// What is wrong with the staging directory, if anything.
    pub staging: Option<String>,
    /// The remote directory's state when the backup host answered, else why it did not.
    pub backup_host: Result<RemoteDir, String>,
    /// Why the purge's delete sessions would not fit on the source, if they would not.
    pub sessions: Option<String>,
    /// Which watched replicas do not answer or are not replicas, if any.
    pub replicas: Option<String>,
}

impl Observed {
    /// What would make a run refuse (exit 3): `plan` shows them and exits 3 too.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if !self.estimate.fits() {
            p.push("not enough free space in the staging directory".to_string());
        }
        if let Some(s) = &self.staging {
            p.push(s.clone());
        }
        if let Err(e) = &self.backup_host {
            p.push(format!("the backup host is not usable: {e}"));
        }
        if let Some(s) = &self.sessions {
            p.push(s.clone());
        }
        if let Some(s) = &self.replicas {
            p.push(s.clone());
        }
        p
    }
}

/// The free-disk estimate for the staging directory.
#[derive(Debug, Clone, Serialize)]
pub struct DiskEstimate {
    /// count × average record size.
    pub raw_bytes: u64,
    /// raw ÷ `expected_compression_ratio`.
    pub compressed_bytes: u64,
    /// compressed × `free_space_margin_pct` / 100.
    pub required_bytes: u64,
    /// Free bytes for an unprivileged writer in the staging directory.
    pub available_bytes: u64,
}

impl DiskEstimate {
    /// True when there is room.
    pub fn fits(&self) -> bool {
        self.available_bytes >= self.required_bytes
    }
}

/// Average record size assumed when the source cannot tell (the spec's 200 bytes).
const DEFAULT_RECORD_BYTES: u64 = 200;

/// Free bytes in the file system holding `dir` (the nearest existing ancestor).
pub fn available_bytes(dir: &Path) -> anyhow::Result<u64> {
    let mut probe = dir.to_path_buf();
    while !probe.exists() {
        if !probe.pop() {
            bail!("no existing ancestor of {}", dir.display());
        }
    }
    let c = std::ffi::CString::new(probe.as_os_str().as_encoded_bytes())
        .context("path with a NUL byte")?;
    // SAFETY: `c` is a valid C string and `st` a properly sized out-parameter.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("statvfs {}", probe.display()));
    }
    Ok((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

/// The disk estimate for a month of `stats` into `job`'s staging directory.
pub fn estimate_disk(job: &ArchiveJob, stats: &RangeStats) -> anyhow::Result<DiskEstimate> {
    let avg = stats.avg_record_bytes.unwrap_or(DEFAULT_RECORD_BYTES);
    let raw = stats.count.saturating_mul(avg);
    let compressed = raw / job.config.expected_compression_ratio.get();
    let required = compressed.saturating_mul(job.config.free_space_margin_pct.get()) / 100;
    Ok(DiskEstimate {
        raw_bytes: raw,
        compressed_bytes: compressed,
        required_bytes: required,
        available_bytes: available_bytes(job.config.staging_dir.path())?,
    })
}

/// Looks at the source, the staging disk and the backup host (the `plan` command), changing
/// nothing: the ssh control socket lives in a private temporary directory removed afterwards,
/// and the remote directory is only looked at.
pub fn observe(job: &ArchiveJob, source: &SharedSource) -> anyhow::Result<Observed> {
    let mut s = source.get()?;
    s.ping()?;
    let stats = s.range_stats(&job.bounds)?;
    let anomalies = s.anomalies()?;
    drop(s);
    let sessions = crate::preflight::check_connections(job, source)
        .err()
        .map(|e| format!("{e:#}"));
    let replicas = crate::preflight::check_replicas(source)
        .err()
        .map(|e| format!("{e:#}"));
    let estimate = estimate_disk(job, &stats)?;
    let staging = crate::preflight::staging_dir_problem(job.config.staging_dir.path());
    let control = std::env::temp_dir().join(format!("opskit-plan-ssh-{}", std::process::id()));
    let backup_host = job
        .backup_host_at(&control)
        .and_then(|h| h.look())
        .map_err(|e| format!("{e:#}"));
    let _ = std::fs::remove_dir_all(&control);
    Ok(Observed {
        stats,
        anomalies,
        estimate,
        staging,
        backup_host,
        sessions,
        replicas,
    })
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0))
}

/// Builds the plan of one pass. `observed` adds the facts `plan` shows.
pub fn build_plan(job: &ArchiveJob, source: &SharedSource, observed: Option<&Observed>) -> Plan {
    let c = &job.config;
    let b = &job.bounds;
    let title = if job.pass == 0 {
        format!("archive {}.{} for {}", c.database, c.collection, b.month)
    } else {
        format!(
            "archive {}.{} for {}: late pass {} (documents that arrived after the earlier pass)",
            c.database, c.collection, b.month, job.pass
        )
    };
    let mut plan = Plan::new(RUNBOOK, job.run_key(), title);
    plan.fact("source", source.describe_hint())
        .fact("month", b.month)
        .fact(
            "bounds",
            format!("{} ≤ {} < {} ({})", b.lower, c.date_field, b.upper, b.zone),
        )
        .fact(
            "instants",
            format!(
                "{} → {}",
                b.lower_instant.to_rfc3339(),
                b.upper_instant.to_rfc3339()
            ),
        )
        .fact("archive", job.local_path().display())
        .fact(
            "backup",
            format!(
                "{}:{}",
                c.sftp.host,
                remote_path(&c.sftp.remote_dir, &job.file_name())
            ),
        );
    plan.fact(
        "segments",
        format!(
            "a month of more than {n} documents is archived in segments of {n}: each is appended to {tmp} on {host}, fsynced, \
             read back and matched against its sha256, and only then are its documents deleted, while the next segment is exported. \
             Point of no return: the first verified segment; until the upload step gives the file its final name, the documents \
             deleted so far live in {tmp} (and in the staged .partial). A month of at most {n} documents runs export → upload → \
             commit → purge one after the other",
            n = c.segment_docs,
            tmp = remote_path(&c.sftp.remote_dir, &temp_name(&job.file_name())),
            host = c.sftp.host
        ),
    );
    if c.source_uri.starts_with("mysql://") {
        plan.fact(
            "delete mode",
            if c.purge.delete_returning {
                format!(
                    "on MariaDB (10.0.5 or later, when the server's plan uses the date index) each segment is read by the statement that deletes it, \
                     in its own transaction: START TRANSACTION; DELETE FROM {t} WHERE <the month> AND (<date>, <key>) after the previous segment \
                     ORDER BY <date>, <key> LIMIT <segment size> RETURNING *; COMMIT only once the segment is verified on {host}. Two sessions work at once \
                     (from the 1st, and from the 16th 00:00). Any failure before a COMMIT rolls that segment back; \
                     elsewhere (MySQL) the segment is exported, then purged as below (archive.purge.delete_returning = false forces that)",
                    t = format_args!("{}.{}", quote_ident(c.database.as_str()), quote_ident(c.collection.as_str())),
                    host = c.sftp.host
                )
            } else {
                "archive.purge.delete_returning = false: each segment is exported, then purged as below".to_string()
            },
        );
    }
    if let Some(r) = replicas_fact(job) {
        plan.fact("replicas", r);
    }
    if let Some(o) = observed {
        observed_facts(&mut plan, job, o);
    }
    add_steps(&mut plan, job, source);
    plan
}

/// Which replicas' lag pauses the purge (MySQL sources with replicas configured).
fn replicas_fact(job: &ArchiveJob) -> Option<String> {
    let p = &job.config.purge;
    if p.replicas.is_empty() && !p.discover_replicas {
        return None;
    }
    let mut watched = p.replicas.clone();
    if p.discover_replicas {
        watched.push("those SHOW SLAVE HOSTS lists on the source, recursively".into());
    }
    Some(format!(
        "the purge pauses before a batch while one lags more than {}s or is not replicating \
         (Seconds_Behind_Master NULL) or does not answer, for at most {}s at a time: {}",
        p.max_lag_secs,
        p.max_lag_wait_secs,
        watched.join(", ")
    ))
}

fn observed_facts(plan: &mut Plan, job: &ArchiveJob, o: &Observed) {
    let c = &job.config;
    plan.fact(
        "matching",
        format!(
            "{} documents (index {})",
            o.stats.count,
            o.stats.index.as_deref().unwrap_or("NONE: full scan")
        ),
    );
    let a = &o.anomalies;
    plan.fact(
        "anomalies",
        if a.total() == 0 {
            "none: every date is a well-formed YYYY-MM-DD HH:MM:SS".to_string()
        } else {
            format!(
                "{} documents no month will ever match (missing {}, other type {}, malformed {}){}",
                a.total(),
                a.missing,
                a.wrong_type,
                a.malformed,
                if a.examples.is_empty() {
                    String::new()
                } else {
                    format!("; e.g. {}", a.examples.join(", "))
                }
            )
        },
    );
    let e = &o.estimate;
    plan.fact(
        "size",
        format!(
            "≈ {} raw, ≈ {} compressed (ratio {} assumed)",
            mib(e.raw_bytes),
            mib(e.compressed_bytes),
            c.expected_compression_ratio
        ),
    );
    plan.fact(
        "free disk",
        format!(
            "{} free in {}, {} needed: {}",
            mib(e.available_bytes),
            c.staging_dir,
            mib(e.required_bytes),
            if e.fits() {
                "ok"
            } else {
                "TOO LOW: the run will refuse"
            }
        ),
    );
    plan.fact(
        "staging",
        match &o.staging {
            None => "ok (private to the user running opskit)".to_string(),
            Some(p) => format!("REFUSED: {p}"),
        },
    );
    plan.fact(
        "backup host",
        match &o.backup_host {
            Ok(RemoteDir::Exists) => {
                format!("{} answers; {} exists", c.sftp.host, c.sftp.remote_dir)
            }
            Ok(RemoteDir::WillBeCreated) => format!(
                "{} answers; {} does not exist yet (the run creates it)",
                c.sftp.host, c.sftp.remote_dir
            ),
            Err(e) => format!("NOT USABLE (does not answer, or refused): {e}"),
        },
    );
    if let Some(s) = &o.sessions {
        plan.fact("delete sessions", format!("REFUSED: {s}"));
    }
    if let Some(s) = &o.replicas {
        plan.fact("replica lag", format!("REFUSED: {s}"));
    }
}

fn add_steps(plan: &mut Plan, job: &ArchiveJob, source: &SharedSource) {
    let c = &job.config;
    let file = job.file_name();
    let local = job.local_path();
    let remote_final = remote_path(&c.sftp.remote_dir, &file);
    let remote_tmp = remote_path(&c.sftp.remote_dir, &temp_name(&file));
    let (export_sql, delete_sql) = source_sql_hint(job);
    plan.step(
        StepSpec::new(
            "export",
            format!(
                "Export the month's documents to {} ({} gzip level {}), then fsync, rename and write the manifest; \
                 a month of more than {} documents is exported in segments, each uploaded, read back, matched and then purged \
                 while the next one is exported (see `segments` above)",
                file, crate::staged::FORMAT, c.compression_level, c.segment_docs
            ),
        )
        .command(export_sql)
        .command(format!(
            "write {} (new file, O_EXCL|O_NOFOLLOW, mode 0600), fsync, rename to {}, write {}",
            partial_path(&local).display(),
            local.display(),
            ArchiveManifest::path_for(&local).display()
        ))
        .precondition(format!(
            "the month's lock {} is held; the source answers; the staging directory is private and writable and has room for the estimated archive; \
             the backup host answers with its known host key and {} is writable; the delete sessions fit in the source's max_connections",
            job.month_lock_path().display(),
            c.sftp.remote_dir
        ))
        .verification("re-read the file: size and sha256 match the manifest, every document decodes, count matches")
        .undo(vec![format!(
            "rm -f {} {} (only the files this run created, by inode; kept once the archive is on the backup host)",
            local.display(),
            ArchiveManifest::path_for(&local).display()
        )]),
        ExportStep::new(job, source),
    );
    let sftp_cmd = match &c.sftp.ssh_config {
        Some(cfg) => format!("sftp -F {cfg} {}:{}", c.sftp.host, c.sftp.remote_dir),
        None => format!("sftp {}:{}", c.sftp.host, c.sftp.remote_dir),
    };
    plan.step(
        StepSpec::new(
            "upload",
            format!("Upload the archive to {} over SFTP and verify it", c.sftp.host),
        )
        .command(format!("{sftp_cmd}  # put {file} {remote_tmp}; fsync"))
        .command(format!(
            "re-read {remote_tmp} over SFTP: size and sha256 = manifest; then link {remote_tmp} → {remote_final} (never overwrites), rm {remote_tmp}; put {file}.manifest.json"
        ))
        .precondition("the local archive still matches its manifest; the final name is absent or holds the identical file")
        .verification("the final remote file has the manifest's size and sha256")
        .undo(vec![format!(
            "rm {remote_tmp} on {} (the final archive is never removed)",
            c.sftp.host
        )]),
        UploadStep::new(job),
    );
    plan.step(
        StepSpec::new(
            "commit",
            "Re-verify both copies against the manifest before anything is deleted; record their size and sha256 in the journal",
        )
        .command(format!(
            "sha256sum {}; decode and count every document",
            local.display()
        ))
        .command(format!(
            "re-read {remote_final} over SFTP and compare size and sha256"
        ))
        .verification("local and remote archives are identical to the manifest")
        .point_of_no_return(),
        CommitStep::new(job),
    );
    plan.step(
        StepSpec::new(
            "purge",
            format!(
                "Delete exactly the documents in the verified archive that are unchanged since the export, in batches of {} to start, adapting between {} and {} to take about {} ms each, pausing {} ms between batches",
                c.purge.batch_size,
                c.purge.min_batch_size,
                c.purge.max_batch_size,
                c.purge.target_batch_ms,
                c.purge.pause_ms
            ),
        )
        .command(delete_sql)
        .command(format!(
            "documents are read back from {} (the file whose size and sha256 the commit step recorded); progress is checkpointed in {}",
            local.display(),
            job.purge_checkpoint().display()
        ))
        .precondition("the local archive has exactly the size and sha256 the commit step recorded in the journal (checked on the open file the ids are then read from)")
        .verification("every archived document was sent; each is counted as deleted, changed since the export (kept for the next late pass: documents_changed_since_export) or already gone")
        .point_of_no_return(),
        PurgeStep::new(job, source),
    );
}

/// The export and delete statements an operator would read, per source kind.
fn source_sql_hint(job: &ArchiveJob) -> (String, String) {
    let c = &job.config;
    let b = &job.bounds;
    if c.source_uri.starts_with("mysql://") {
        let t = format!(
            "{}.{}",
            quote_ident(c.database.as_str()),
            quote_ident(c.collection.as_str())
        );
        let d = quote_ident(c.date_field.as_str());
        (
            format!(
                "SELECT *, UNHEX(MD5(CONCAT(QUOTE(CAST(<each column> AS BINARY)), ',', …))) AS `__opskit_fingerprint` FROM {t} FORCE INDEX (<index on {d}>) \
                 WHERE {d} >= '{}' AND {d} < '{}' ORDER BY {d}, <primary key>  -- the fingerprint is never written into the archive",
                b.lower, b.upper
            ),
            format!(
                "per session and batch part, when every archived row of the part carries the fingerprint the server computed at export time: one autocommit \
                 DELETE FROM {t} WHERE <primary key> IN (<ids>) AND {d} >= '{lo}' AND {d} < '{hi}' AND UNHEX(MD5(CONCAT(QUOTE(CAST(<each column; FLOAT as DOUBLE, TIMESTAMP as UNIX_TIMESTAMP> AS BINARY)), ',', …))) IN (<their fingerprints>) \
                 (then SELECT COUNT(*) FROM {t} WHERE <primary key> IN (<ids>) when fewer rows went: those are kept as changed); \
                 otherwise (documents read back from the archive file carry no fingerprint), in one transaction: START TRANSACTION; SELECT * FROM {t} WHERE <primary key> IN (<ids from the archive>) FOR UPDATE; \
                 (keep the rows that are byte-identical to the archived documents) DELETE FROM {t} WHERE <primary key> IN (<those ids>) AND {d} >= '{lo}' AND {d} < '{hi}'; COMMIT",
                lo = b.lower,
                hi = b.upper
            ),
        )
    } else {
        let f = c.date_field.as_str();
        (
            format!(
                "db.{}.find({{{f}: {{$gte: \"{}\", $lt: \"{}\"}}}}).hint({{{f}: 1}})  // raw BSON, cursor drained continuously",
                c.collection, b.lower, b.upper
            ),
            format!(
                "db.runCommand({{delete: \"{}\", ordered: false, writeConcern: {{w: \"majority\"}}, deletes: [{{q: {{_id: <id>, {f}: {{$gte: \"{}\", $lt: \"{}\"}}, $expr: {{$eq: [\"$$ROOT\", {{$literal: <the archived document>}}]}}}}, limit: 1}}, …]}})  // one statement per archived document",
                c.collection, b.lower, b.upper
            ),
        )
    }
}
