//! The archive plan: export → upload → commit (verify both copies; the point of no return)
//! → purge. Every step is idempotent and resumable; see each action's docs.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use bson::Bson;
use opskit_core::plan::StepContext;
use opskit_core::plan::{Plan, StepAction, StepError, StepResult, StepSpec};
use serde::{Deserialize, Serialize};

use crate::job::{ArchiveJob, RUNBOOK, SharedSource};
use crate::sftp::{UploadOutcome, remote_path, temp_name};
use crate::source::mysql::quote_ident;
use crate::source::{Anomalies, RangeStats};
use crate::staged::{
    ArchiveIdentity, ArchiveManifest, ArchiveWriter, partial_path, sha256_file, verify_local,
};
use crate::testhook::pause_point;

/// What `plan` observed about the month before anything runs.
#[derive(Debug, Clone, Serialize)]
pub struct Observed {
    /// Count, size, index.
    pub stats: RangeStats,
    /// Date values that no month's bounds match.
    pub anomalies: Anomalies,
    /// The estimated archive size in bytes and the free space needed for it.
    pub estimate: DiskEstimate,
    /// `Ok(())` when the backup host answered, else why not.
    pub backup_host: Result<(), String>,
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
    Ok(st.f_bavail as u64 * st.f_frsize as u64)
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

/// Looks at the source, the staging disk and the backup host (the `plan` command).
pub fn observe(job: &ArchiveJob, source: &SharedSource) -> anyhow::Result<Observed> {
    let mut s = source.get()?;
    s.ping()?;
    let stats = s.range_stats(&job.bounds)?;
    let anomalies = s.anomalies()?;
    drop(s);
    let estimate = estimate_disk(job, &stats)?;
    let backup_host = job
        .backup_host()
        .and_then(|h| h.ping())
        .map_err(|e| format!("{e:#}"));
    Ok(Observed {
        stats,
        anomalies,
        estimate,
        backup_host,
    })
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0))
}

/// Builds the plan of one pass. `observed` adds the facts `plan` shows.
pub fn build_plan(job: &ArchiveJob, source: &SharedSource, observed: Option<&Observed>) -> Plan {
    let c = &job.config;
    let b = &job.bounds;
    let file = job.file_name();
    let local = job.local_path();
    let host = job.backup_host().ok();
    let remote_dir = c.sftp.remote_dir.clone();
    let remote_final = remote_path(&remote_dir, &file);
    let remote_tmp = remote_path(&remote_dir, &temp_name(&file));
    let describe = source.describe_hint();
    let title = if job.pass == 0 {
        format!("archive {}.{} for {}", c.database, c.collection, b.month)
    } else {
        format!(
            "archive {}.{} for {}: late pass {} (documents that arrived after the earlier pass)",
            c.database, c.collection, b.month, job.pass
        )
    };
    let mut plan = Plan::new(RUNBOOK, job.run_key(), title);
    plan.fact("source", &describe)
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
        .fact("archive", local.display())
        .fact("backup", format!("{}:{remote_final}", c.sftp.host));
    if let Some(o) = observed {
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
            "backup host",
            match &o.backup_host {
                Ok(()) => format!("{} answers", c.sftp.host),
                Err(e) => format!("DOES NOT ANSWER: {e}"),
            },
        );
    }

    let sql_hint = source_sql_hint(job);
    plan.step(
        StepSpec::new(
            "export",
            format!(
                "Export the month's documents to {} ({} gzip level {}), then fsync, rename and write the manifest",
                file, crate::staged::FORMAT, c.compression_level
            ),
        )
        .command(sql_hint.0)
        .command(format!(
            "write {}, fsync, rename to {}, write {}",
            partial_path(&local).display(),
            local.display(),
            ArchiveManifest::path_for(&local).display()
        ))
        .precondition("the source answers; the free space in the staging directory covers the estimated archive")
        .verification("re-read the file: size and sha256 match the manifest, every document decodes, count matches")
        .undo(vec![format!(
            "rm -f {} {} (kept once the archive is on the backup host)",
            local.display(),
            ArchiveManifest::path_for(&local).display()
        )]),
        ExportStep {
            job: job.clone(),
            source: source.clone(),
        },
    );
    let sftp_cmd = host
        .as_ref()
        .map(|h| h.operator_command())
        .unwrap_or_else(|| format!("sftp {}", c.sftp.host));
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
        UploadStep { job: job.clone() },
    );
    plan.step(
        StepSpec::new(
            "commit",
            "Re-verify both copies against the manifest before anything is deleted",
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
        CommitStep { job: job.clone() },
    );
    plan.step(
        StepSpec::new(
            "purge",
            format!(
                "Delete exactly the documents in the verified archive, {} per batch, pausing {} ms between batches",
                c.purge.batch_size, c.purge.pause_ms
            ),
        )
        .command(sql_hint.1)
        .command(format!(
            "ids are read back from {}; progress is checkpointed in {}",
            local.display(),
            job.purge_checkpoint().display()
        ))
        .precondition("the local archive still matches the verified manifest")
        .verification("every archived id was sent; deleted counts are compared per batch (shortfalls are reported as anomalies)")
        .point_of_no_return(),
        PurgeStep {
            job: job.clone(),
            source: source.clone(),
        },
    );
    plan
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
                "SELECT * FROM {t} FORCE INDEX (<index on {d}>) WHERE {d} >= '{}' AND {d} < '{}' ORDER BY {d}, <primary key>",
                b.lower, b.upper
            ),
            format!(
                "DELETE FROM {t} WHERE <primary key> IN (<ids from the archive>) AND {d} >= '{}' AND {d} < '{}'",
                b.lower, b.upper
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
                "db.{}.deleteMany({{_id: {{$in: [<ids from the archive>]}}, {f}: {{$gte: \"{}\", $lt: \"{}\"}}}}, {{writeConcern: {{w: \"majority\"}}}})",
                c.collection, b.lower, b.upper
            ),
        )
    }
}

fn failed(e: anyhow::Error) -> StepError {
    StepError::Failed(e)
}

fn load_manifest(job: &ArchiveJob) -> anyhow::Result<ArchiveManifest> {
    ArchiveManifest::load(&ArchiveManifest::path_for(&job.local_path()))
}

/// True once the purge of this job has sent at least one batch: from then on the staged
/// and uploaded archives are the only copy of those documents and are never undone.
fn purge_began(job: &ArchiveJob) -> bool {
    job.purge_checkpoint().exists()
}

/// The sha256 of the archive already at its final remote name, if the upload got that far.
fn uploaded_sha(job: &ArchiveJob) -> Option<String> {
    std::fs::read_to_string(job.uploaded_marker())
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// Export: the month into a staged `.bson.gz` + manifest. A resumed export starts over,
/// except when that archive already reached the backup host: then it is reused as it is.
struct ExportStep {
    job: ArchiveJob,
    source: SharedSource,
}

impl StepAction for ExportStep {
    fn precondition(&mut self, cx: &mut StepContext) -> StepResult {
        let job = &self.job;
        let mut s = self
            .source
            .get()
            .map_err(|e| StepError::refused(format!("{e:#}")))?;
        s.ping()
            .map_err(|e| StepError::refused(format!("the source does not answer: {e:#}")))?;
        let stats = s
            .range_stats(&job.bounds)
            .map_err(|e| StepError::refused(format!("{e:#}")))?;
        if stats.index.is_none() {
            tracing::warn!(
                "no index on {} : the export and the anomaly scan read the whole collection",
                job.config.date_field
            );
        }
        let anomalies = s
            .anomalies()
            .map_err(|e| StepError::refused(format!("{e:#}")))?;
        drop(s);
        cx.gauge("anomalies", anomalies.total() as f64);
        if anomalies.total() > 0 {
            tracing::warn!(
                missing = anomalies.missing,
                wrong_type = anomalies.wrong_type,
                malformed = anomalies.malformed,
                examples = ?anomalies.examples,
                "documents whose {} is not a well-formed date are never archived nor deleted",
                job.config.date_field
            );
        }
        let staging = job.config.staging_dir.path();
        std::fs::create_dir_all(staging).map_err(|e| {
            StepError::refused(format!(
                "cannot create the staging directory {}: {e}",
                staging.display()
            ))
        })?;
        let est = estimate_disk(job, &stats).map_err(|e| StepError::refused(format!("{e:#}")))?;
        if !est.fits() {
            return Err(StepError::refused(format!(
                "not enough free space in {}: {} free, {} needed for ≈ {} of archive ({} documents)",
                staging.display(),
                mib(est.available_bytes),
                mib(est.required_bytes),
                mib(est.compressed_bytes),
                stats.count
            )));
        }
        tracing::info!(
            count = stats.count,
            index = stats.index.as_deref().unwrap_or("none"),
            "{} ≤ {} < {} ({})",
            job.bounds.lower,
            job.config.date_field,
            job.bounds.upper,
            job.bounds.zone
        );
        cx.record("expected_count", stats.count);
        Ok(())
    }

    fn execute(&mut self, cx: &mut StepContext) -> StepResult {
        let job = &self.job;
        let started = Instant::now();
        let local = job.local_path();
        if let Some(sha) = uploaded_sha(job) {
            // A later step failed after the upload: the backup host holds this very file, so a
            // new export (which could differ) must not replace it.
            let m = load_manifest(job)
                .and_then(|m| verify_local(&local, &m).map(|_| m))
                .map_err(|e| {
                    failed(e.context(format!(
                        "the archive with sha256 {sha} is already on the backup host but the staged copy is unusable; restore {} from the backup host",
                        local.display()
                    )))
                })?;
            if m.sha256 != sha {
                return Err(failed(anyhow!(
                    "{} (sha256 {}) is not the archive already on the backup host (sha256 {sha}); restore it from the backup host",
                    local.display(),
                    m.sha256
                )));
            }
            tracing::info!(
                "reusing {}: it is already on the backup host; documents written since go to a late pass",
                local.display()
            );
            cx.record("file", local.display().to_string());
            cx.record("count", m.count);
            cx.record("sha256", &m.sha256);
            cx.record("compressed_bytes", m.compressed_bytes);
            return Ok(());
        }
        let mut s = self.source.get().map_err(failed)?;
        let identity = ArchiveIdentity {
            source: s.describe(),
            database: job.config.database.to_string(),
            collection: job.config.collection.to_string(),
            date_field: job.config.date_field.to_string(),
            id_field: s.id_field().to_string(),
            pass: job.pass,
            bounds: job.bounds.clone(),
        };
        let expected = s.range_stats(&job.bounds).map(|r| r.count).ok();
        let mut writer = ArchiveWriter::create(
            &local,
            job.config.compression_level,
            job.config.compression_threads as usize,
            identity,
        )
        .map_err(failed)?;
        let progress = std::sync::Arc::new(std::sync::Mutex::new(
            cx.progress("export", expected, "docs"),
        ));
        let p2 = progress.clone();
        let mut last = 0u64;
        writer.on_chunk(move |docs, _raw| {
            if let Ok(mut p) = p2.lock() {
                p.inc(docs - last);
            }
            last = docs;
            pause_point("export", "records", docs);
        });
        let exported = s.export(&job.bounds, &mut writer);
        drop(s);
        if let Err(e) = exported {
            writer.abandon();
            return Err(failed(
                e.context(format!("exporting to {}", local.display())),
            ));
        }
        let m = writer
            .finish()
            .with_context(|| format!("finishing {}", local.display()))
            .map_err(failed)?;
        if let Ok(Ok(p)) = std::sync::Arc::try_unwrap(progress).map(|m| m.into_inner()) {
            p.finish();
        }
        let secs = started.elapsed().as_secs_f64();
        tracing::info!(
            count = m.count,
            raw = m.raw_bytes,
            compressed = m.compressed_bytes,
            sha256 = %m.sha256,
            "exported {} documents in {secs:.1}s ({:.0} docs/s, ratio {:.2})",
            m.count,
            m.count as f64 / secs.max(1e-9),
            m.raw_bytes as f64 / (m.compressed_bytes.max(1)) as f64
        );
        if let Some(e) = expected
            && e != m.count
        {
            tracing::warn!(
                "the source counted {e} documents in the month just before the export and the export read {}: writers are still touching the month",
                m.count
            );
        }
        cx.count("documents_exported", m.count as f64);
        cx.count("bytes_raw", m.raw_bytes as f64);
        cx.count("bytes_compressed", m.compressed_bytes as f64);
        cx.gauge("export_seconds", secs);
        cx.record("file", local.display().to_string());
        cx.record("count", m.count);
        cx.record("sha256", &m.sha256);
        cx.record("compressed_bytes", m.compressed_bytes);
        Ok(())
    }

    fn verify(&mut self, _cx: &mut StepContext) -> StepResult {
        let m = load_manifest(&self.job).map_err(failed)?;
        verify_local(&self.job.local_path(), &m).map_err(failed)?;
        Ok(())
    }

    fn undo(&mut self, _cx: &mut StepContext) -> StepResult {
        if purge_began(&self.job) {
            return Err(failed(anyhow!(
                "the purge has begun: keeping {} (it is the only local copy of deleted documents)",
                self.job.local_path().display()
            )));
        }
        let local = self.job.local_path();
        if uploaded_sha(&self.job).is_some() {
            tracing::info!(
                "keeping {}: it is already on the backup host and a re-run reuses it",
                local.display()
            );
            return Ok(());
        }
        for p in [
            ArchiveManifest::path_for(&local),
            local.clone(),
            partial_path(&local),
        ] {
            match std::fs::remove_file(&p) {
                Ok(()) => tracing::info!("removed {}", p.display()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(failed(anyhow!("removing {}: {e}", p.display()))),
            }
        }
        Ok(())
    }
}

/// Upload: temp name, verify, link; idempotent when the identical file is already there.
struct UploadStep {
    job: ArchiveJob,
}

impl StepAction for UploadStep {
    fn precondition(&mut self, _cx: &mut StepContext) -> StepResult {
        let m = load_manifest(&self.job).map_err(failed)?;
        let (sha, len) = sha256_file(&self.job.local_path()).map_err(failed)?;
        if sha != m.sha256 || len != m.compressed_bytes {
            return Err(failed(anyhow!(
                "{} changed since the export (sha256 {sha}, manifest {}); re-run after removing it",
                self.job.local_path().display(),
                m.sha256
            )));
        }
        Ok(())
    }

    fn execute(&mut self, cx: &mut StepContext) -> StepResult {
        let started = Instant::now();
        let m = load_manifest(&self.job).map_err(failed)?;
        let host = self.job.backup_host().map_err(failed)?;
        let mut progress = cx.progress("upload", Some(m.compressed_bytes), "bytes");
        let outcome = host
            .upload(&self.job.local_path(), &m, &mut |n| progress.inc(n))
            .with_context(|| format!("uploading {} to {}", m.file, host.describe()))
            .map_err(failed)?;
        progress.finish();
        let secs = started.elapsed().as_secs_f64();
        match outcome {
            UploadOutcome::Uploaded => tracing::info!(
                "uploaded and verified {} ({} bytes) in {secs:.1}s",
                remote_path(host.remote_dir(), &m.file),
                m.compressed_bytes
            ),
            UploadOutcome::AlreadyThere => tracing::info!(
                "{} is already on the backup host with the same sha256; nothing to upload",
                remote_path(host.remote_dir(), &m.file)
            ),
        }
        let marker = self.job.uploaded_marker();
        if let Some(dir) = marker.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("creating {}", dir.display()))
                .map_err(failed)?;
        }
        opskit_core::util::write_atomic(&marker, m.sha256.as_bytes(), 0o644).map_err(failed)?;
        cx.gauge("upload_seconds", secs);
        cx.record("remote", remote_path(host.remote_dir(), &m.file));
        cx.record("sha256", &m.sha256);
        Ok(())
    }

    fn undo(&mut self, _cx: &mut StepContext) -> StepResult {
        if purge_began(&self.job) {
            return Err(failed(anyhow!("the purge has begun: the upload is kept")));
        }
        if uploaded_sha(&self.job).is_some() {
            // Linked to its final name: there is no temporary file left, and the final
            // archive is never removed.
            tracing::info!("the archive is at its final name on the backup host; it is kept");
            return Ok(());
        }
        let host = self.job.backup_host().map_err(failed)?;
        host.remove_temp(&self.job.file_name()).map_err(failed)
    }
}

/// Commit: both copies re-verified against the manifest; after this nothing is undone.
struct CommitStep {
    job: ArchiveJob,
}

impl StepAction for CommitStep {
    fn execute(&mut self, cx: &mut StepContext) -> StepResult {
        pause_point("commit", "start", 1);
        let started = Instant::now();
        let m = load_manifest(&self.job).map_err(failed)?;
        let check = verify_local(&self.job.local_path(), &m).map_err(failed)?;
        let host = self.job.backup_host().map_err(failed)?;
        host.verify(&m)
            .with_context(|| format!("verifying the uploaded archive on {}", host.describe()))
            .map_err(failed)?;
        tracing::info!(
            count = check.count,
            sha256 = %check.sha256,
            "local and remote archives verified"
        );
        cx.gauge("verify_seconds", started.elapsed().as_secs_f64());
        cx.record("sha256", &m.sha256);
        cx.record("count", m.count);
        Ok(())
    }
}

/// The purge's progress, saved after every batch.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PurgeCheckpoint {
    /// The archive these counts are about.
    pub sha256: String,
    /// Ids sent so far (a prefix of the archive, in file order).
    pub sent: u64,
    /// Documents the source reported deleted.
    pub deleted: u64,
    /// Ids sent whose documents were not deleted (already gone, or moved out of the month).
    pub shortfall: u64,
    /// Batches completed.
    pub batches: u64,
}

impl PurgeCheckpoint {
    fn load(path: &Path, sha256: &str) -> anyhow::Result<PurgeCheckpoint> {
        match std::fs::read_to_string(path) {
            Ok(t) => {
                let ck: PurgeCheckpoint = serde_json::from_str(&t)
                    .with_context(|| format!("parsing {}", path.display()))?;
                if ck.sha256 != sha256 {
                    bail!(
                        "{} belongs to another archive (sha256 {}); this one is {sha256}",
                        path.display(),
                        ck.sha256
                    );
                }
                Ok(ck)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(PurgeCheckpoint {
                sha256: sha256.to_string(),
                ..Default::default()
            }),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    fn save(&self, path: &Path) -> anyhow::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        opskit_core::util::write_atomic(
            path,
            serde_json::to_string(self).expect("serializes").as_bytes(),
            0o644,
        )
    }
}

/// Purge: ids streamed back from the verified local archive, deleted in batches.
struct PurgeStep {
    job: ArchiveJob,
    source: SharedSource,
}

impl StepAction for PurgeStep {
    fn precondition(&mut self, _cx: &mut StepContext) -> StepResult {
        let m = load_manifest(&self.job).map_err(failed)?;
        let (sha, len) = sha256_file(&self.job.local_path()).map_err(failed)?;
        if sha != m.sha256 || len != m.compressed_bytes {
            return Err(failed(anyhow!(
                "{} no longer matches the verified manifest (sha256 {sha}); nothing is deleted",
                self.job.local_path().display()
            )));
        }
        Ok(())
    }

    fn execute(&mut self, cx: &mut StepContext) -> StepResult {
        let m = load_manifest(&self.job).map_err(failed)?;
        let out = purge(&self.job, &self.source, &m, cx).map_err(failed)?;
        cx.record("deleted", out.deleted);
        cx.record("shortfall", out.shortfall);
        cx.record("batches", out.batches);
        Ok(())
    }
}

fn purge(
    job: &ArchiveJob,
    source: &SharedSource,
    m: &ArchiveManifest,
    cx: &mut StepContext,
) -> anyhow::Result<PurgeCheckpoint> {
    let started = Instant::now();
    let ck_path = job.purge_checkpoint();
    let mut ck = PurgeCheckpoint::load(&ck_path, &m.sha256)?;
    if ck.sent > 0 {
        tracing::info!(
            sent = ck.sent,
            deleted = ck.deleted,
            batches = ck.batches,
            "resuming the purge from {}",
            ck_path.display()
        );
    }
    let batch_size = job.config.purge.batch_size.get() as usize;
    let pause = Duration::from_millis(job.config.purge.pause_ms);
    let mut reader = crate::staged::open_documents(&job.local_path())?;
    let mut progress = cx.progress("purge", Some(m.count), "docs");
    progress.inc(ck.sent);
    let mut ids: Vec<Bson> = Vec::with_capacity(batch_size);
    let mut position = 0u64;
    let mut deleted_now = 0u64;
    let mut shortfall_now = 0u64;
    loop {
        let doc = reader
            .next_document()
            .with_context(|| format!("reading ids back from {}", job.local_path().display()))?;
        let end = doc.is_none();
        if let Some(doc) = doc {
            position += 1;
            if position > ck.sent {
                let id = doc
                    .get(&m.id_field)
                    .with_context(|| format!("document {position}: reading `{}`", m.id_field))?
                    .with_context(|| format!("document {position} has no `{}`", m.id_field))?;
                ids.push(id.to_raw_bson().try_into().map_err(|e| {
                    anyhow!(
                        "document {position}: `{}` is not a valid id: {e}",
                        m.id_field
                    )
                })?);
            }
        }
        if ids.len() >= batch_size || (end && !ids.is_empty()) {
            pause_point("purge", "batch", ck.batches + 1);
            wait_for_lag(job, source)?;
            let n = ids.len() as u64;
            let deleted = source
                .get()?
                .delete_ids(&ids, &job.bounds)
                .with_context(|| format!("deleting batch {} ({} ids)", ck.batches + 1, n))?;
            if deleted > n {
                bail!(
                    "batch {} deleted {deleted} documents for {n} ids: stopping (the key is not unique?)",
                    ck.batches + 1
                );
            }
            if deleted < n {
                tracing::warn!(
                    batch = ck.batches + 1,
                    "{} of {n} archived documents were not deleted (already gone, or their date moved out of the month)",
                    n - deleted
                );
            }
            ck.sent += n;
            ck.deleted += deleted;
            ck.shortfall += n - deleted;
            ck.batches += 1;
            ck.save(&ck_path)?;
            deleted_now += deleted;
            shortfall_now += n - deleted;
            progress.inc(n);
            ids.clear();
            if !pause.is_zero() && !end {
                std::thread::sleep(pause);
            }
        }
        if end {
            break;
        }
    }
    progress.finish();
    if ck.sent != m.count {
        bail!(
            "the purge sent {} ids but the archive holds {} documents",
            ck.sent,
            m.count
        );
    }
    let secs = started.elapsed().as_secs_f64();
    tracing::info!(
        deleted = ck.deleted,
        shortfall = ck.shortfall,
        batches = ck.batches,
        "purge done in {secs:.1}s"
    );
    cx.count("documents_deleted", deleted_now as f64);
    cx.count("delete_shortfall", shortfall_now as f64);
    if shortfall_now > 0 {
        cx.count("anomalies", shortfall_now as f64);
    }
    cx.gauge("purge_seconds", secs);
    Ok(ck)
}

/// Waits while the replicas lag more than `max_lag_secs` (doubling pauses up to 30 s),
/// failing (resumably) after `max_lag_wait_secs`.
fn wait_for_lag(job: &ArchiveJob, source: &SharedSource) -> anyhow::Result<()> {
    let max = job.config.purge.max_lag_secs.get() as f64;
    let give_up = Duration::from_secs(job.config.purge.max_lag_wait_secs.get());
    let started = Instant::now();
    let mut backoff = Duration::from_millis(500);
    loop {
        let lag = source.get()?.replication_lag()?;
        match lag {
            Some(l) if l > max => {
                if started.elapsed() >= give_up {
                    bail!(
                        "replication lag {l:.0}s stayed above {max:.0}s for {give_up:?}; re-run to resume the purge"
                    );
                }
                tracing::warn!(
                    "replication lag {l:.1}s > {max:.0}s: pausing the purge {backoff:?}"
                );
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
            _ => return Ok(()),
        }
    }
}

/// The run key and the path of the staged archive, for `status`.
pub fn describe_job(job: &ArchiveJob) -> (String, PathBuf) {
    (job.run_key(), job.local_path())
}
