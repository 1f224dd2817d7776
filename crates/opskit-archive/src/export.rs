//! The export step: the month into a staged `.bson.gz` + manifest.
//!
//! Its precondition is the run's preflight: nothing is exported unless the source answers,
//! the staging directory is private, writable and large enough, the purge's delete sessions
//! fit on the source, and the backup host answers with its known key and a writable
//! directory. A resumed export starts over, except when that archive already reached the
//! backup host: then it is reused as it is. An undo removes only the files this run created
//! (checked by inode, not by name).

use std::time::Instant;

use anyhow::{Context as _, anyhow};
use opskit_core::plan::{StepAction, StepContext, StepError, StepResult};

use crate::job::{ArchiveJob, SharedSource};
use crate::segment::SegmentLog;
use crate::source::{Anomalies, RangeStats, Record, RecordSink};
use crate::staged::{
    ArchiveIdentity, ArchiveManifest, ArchiveWriter, FileIdentity, remove_if_same, verify_local,
};
use crate::testhook::{panic_point, pause_point};

/// How many documents pass between two looks at a stop request during the export.
const STOP_CHECK_EVERY: u64 = 10_000;

/// See the module docs.
pub struct ExportStep {
    job: ArchiveJob,
    source: SharedSource,
    /// The month's count, as the precondition found it.
    expected: Option<u64>,
    /// `expected` is the server's estimate (a large month): progress shows no total.
    estimated: bool,
}

impl ExportStep {
    /// The export of `job` from `source`.
    pub fn new(job: &ArchiveJob, source: &SharedSource) -> ExportStep {
        ExportStep {
            job: job.clone(),
            source: source.clone(),
            expected: None,
            estimated: false,
        }
    }
}

fn refused(e: anyhow::Error) -> StepError {
    StepError::refused(format!("{e:#}"))
}

fn failed(e: anyhow::Error) -> StepError {
    StepError::Failed(e)
}

impl StepAction for ExportStep {
    fn precondition(&mut self, cx: &mut StepContext) -> StepResult {
        let job = self.job.clone();
        let job = &job;
        // The backup host is checked while the source is: the run waits for the slower
        // check, not for their sum. Errors come in the same order as one after the other.
        std::thread::scope(|scope| {
            let backup = scope.spawn(|| crate::preflight::check_backup_host(job));
            let checked = self.check_source(cx);
            let backup = join_check(backup);
            let stats = checked?;
            backup.map_err(refused)?;
            self.report(&stats);
            Ok(())
        })
    }

    fn execute(&mut self, cx: &mut StepContext) -> StepResult {
        let job = &self.job;
        if let Some(sha) = job.uploaded_sha() {
            return reuse_uploaded(job, &sha, cx);
        }
        if let Some(log) = SegmentLog::load(job).map_err(failed)? {
            if log.finished {
                return reuse_finished(job, cx);
            }
            if !log.segments.is_empty() {
                let m = crate::segment::recover(job, log).map_err(failed)?;
                record_archive(cx, job, &m);
                return Ok(());
            }
            // Nothing was verified by the interrupted run: start over.
            let _ = std::fs::remove_file(job.segment_log_path());
        }
        // The anomaly scan reads the whole collection: it runs, on its own session, while
        // the month is exported, and is reported once the export succeeded.
        let scan_source = SharedSource::new(job);
        std::thread::scope(|scope| {
            let scan = scope.spawn(move || scan_source.get().and_then(|mut s| s.anomalies()));
            let exported = self.export_fresh(cx);
            let anomalies = join_check(scan);
            if exported.is_ok() {
                match anomalies {
                    Ok(a) => self.report_anomalies(cx, &a),
                    Err(e) => tracing::warn!(
                        "the scan for documents with a missing or malformed {} failed: {e:#}; the next run scans again",
                        self.job.config.date_field
                    ),
                }
            }
            exported
        })
    }

    fn verify(&mut self, _cx: &mut StepContext) -> StepResult {
        let m = self.job.load_manifest().map_err(failed)?;
        if m.segments.is_empty() {
            verify_local(&self.job.local_path(), &m).map_err(failed)?;
        } else {
            // Every segment was hashed as written and matched on the backup host: the file
            // must still be those bytes.
            check_sha(&self.job.local_path(), &m).map_err(failed)?;
        }
        Ok(())
    }

    fn undo(&mut self, cx: &mut StepContext) -> StepResult {
        let job = &self.job;
        if job.purge_began() {
            return Err(failed(anyhow!(
                "the purge has begun: keeping {} (it is the only local copy of deleted documents)",
                job.local_path().display()
            )));
        }
        let local = job.local_path();
        if job.uploaded_sha().is_some() {
            tracing::info!(
                "keeping {}: it is already on the backup host and a re-run reuses it",
                local.display()
            );
            return Ok(());
        }
        let ours = |key: &str| -> Option<FileIdentity> {
            cx.recorded("export", key)
                .and_then(|v| serde_json::from_value(v.clone()).ok())
        };
        for (path, id) in [
            (ArchiveManifest::path_for(&local), ours("manifest_id")),
            (local.clone(), ours("archive_id")),
        ] {
            let Some(id) = id else {
                tracing::warn!(
                    "not removing {}: this run did not record creating it",
                    path.display()
                );
                continue;
            };
            match remove_if_same(&path, id).map_err(failed)? {
                true => tracing::info!("removed {}", path.display()),
                false if path.exists() => tracing::warn!(
                    "not removing {}: it is not the file this run created (another run or a person put it there)",
                    path.display()
                ),
                false => {}
            }
        }
        Ok(())
    }
}

impl ExportStep {
    /// A new export of the month: in one piece, or in segments for a large month.
    fn export_fresh(&mut self, cx: &mut StepContext) -> StepResult {
        let job = &self.job;
        let started = Instant::now();
        let local = job.local_path();
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
        let expected = match self.expected {
            Some(n) => Some(n),
            None => s.range_stats(&job.bounds).map(|r| r.count).ok(),
        };
        let segmented = expected.is_some_and(|n| n > job.config.segment_docs.get());
        // Only a segmented purge is handed the exported records (the classic one reads the
        // verified file back): fingerprints would cost the server for nothing otherwise.
        s.set_fingerprints(segmented && job.config.purge.fingerprints);
        if segmented {
            drop(s);
            // An estimate can be off by half: better no total than a wrong ETA.
            let total = expected.filter(|_| !self.estimated);
            let m = crate::segment::export_segmented(job, &self.source, identity, total, cx)
                .map_err(failed)?;
            record_archive(cx, job, &m);
            return Ok(());
        }
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
            panic_point("export", "records", docs);
        });
        let mut sink = StopAware {
            inner: &mut writer,
            month: job.bounds.month.to_string(),
        };
        let exported = s.export(&job.bounds, &mut sink);
        drop(s);
        if let Err(e) = exported {
            // Dropping the writer removes its .partial.
            drop(writer);
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
        record_archive(cx, job, &m);
        Ok(())
    }
}

impl ExportStep {
    /// The source's own checks: it answers, the month's count and index, the staging
    /// directory, its free space, the delete sessions and the replicas.
    fn check_source(&mut self, cx: &mut StepContext) -> Result<RangeStats, StepError> {
        let job = &self.job;
        let mut s = self.source.get().map_err(refused)?;
        s.ping()
            .map_err(|e| refused(e.context("the source does not answer")))?;
        // A month that will be segmented gets the server's estimate, not a count: counting
        // would read the whole month once more before the run begins (the plan counts).
        let mut stats = s
            .range_stats_quick(&job.bounds, job.config.segment_docs.get())
            .map_err(refused)?;
        if stats.index.is_none() {
            tracing::warn!(
                "no index on {}: the export and the anomaly scan read the whole collection",
                job.config.date_field
            );
        }
        drop(s);
        let staging = job.config.staging_dir.path();
        crate::preflight::prepare_staging_dir(staging).map_err(refused)?;
        // An estimate counts twice (the server's range estimate can be off by half); when that
        // does not fit, the month is counted before anything is refused.
        let doubled = RangeStats {
            count: stats
                .count
                .saturating_mul(if stats.estimated { 2 } else { 1 }),
            ..stats.clone()
        };
        let mut est = crate::plan::estimate_disk(job, &doubled).map_err(refused)?;
        if !est.fits() && stats.estimated {
            stats = self
                .source
                .get()
                .and_then(|mut s| s.range_stats(&job.bounds))
                .map_err(refused)?;
            est = crate::plan::estimate_disk(job, &stats).map_err(refused)?;
        }
        if !est.fits() {
            let mib = |b: u64| format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0));
            return Err(StepError::refused(format!(
                "not enough free space in {}: {} free, {} needed for ≈ {} of archive ({} documents)",
                staging.display(),
                mib(est.available_bytes),
                mib(est.required_bytes),
                mib(est.compressed_bytes),
                stats.count
            )));
        }
        crate::preflight::check_connections(job, &self.source).map_err(refused)?;
        crate::preflight::check_replicas(&self.source).map_err(refused)?;
        cx.record(
            if stats.estimated {
                "estimated_count"
            } else {
                "expected_count"
            },
            stats.count,
        );
        self.expected = Some(stats.count);
        self.estimated = stats.estimated;
        Ok(stats)
    }

    /// Logs the month about to be exported.
    fn report(&self, stats: &RangeStats) {
        let job = &self.job;
        tracing::info!(
            count = stats.count,
            estimated = stats.estimated,
            index = stats.index.as_deref().unwrap_or("none"),
            "{} ≤ {} < {} ({}){}",
            job.bounds.lower,
            job.config.date_field,
            job.bounds.upper,
            job.bounds.zone,
            if stats.estimated {
                format!(
                    ": about {} documents (the server's estimate; `archive plan` counts them)",
                    stats.count
                )
            } else {
                format!(": {} documents", stats.count)
            }
        );
    }

    /// Logs the month's anomalies and warns about them once (only after an export that
    /// succeeded: a refused or failed run gives one alert, its own).
    fn report_anomalies(&self, cx: &mut StepContext, anomalies: &Anomalies) {
        let job = &self.job;
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
        let sent = crate::anomalies::warn_once(job, anomalies);
        cx.count("anomaly_warnings_sent", if sent { 1.0 } else { 0.0 });
    }
}

/// Joins a check's thread; a panic goes on unwinding in the caller.
fn join_check<T>(h: std::thread::ScopedJoinHandle<'_, T>) -> T {
    match h.join() {
        Ok(v) => v,
        Err(payload) => std::panic::resume_unwind(payload),
    }
}

/// Records what the later steps and an undo need: counts, checksum, and which files these
/// are (device and inode).
fn record_archive(cx: &mut StepContext, job: &ArchiveJob, m: &ArchiveManifest) {
    let local = job.local_path();
    cx.record("file", local.display().to_string());
    cx.record("count", m.count);
    cx.record("sha256", &m.sha256);
    cx.record("compressed_bytes", m.compressed_bytes);
    if let Some(id) = FileIdentity::of_path(&local) {
        cx.record("archive_id", id);
    }
    if let Some(id) = FileIdentity::of_path(&ArchiveManifest::path_for(&local)) {
        cx.record("manifest_id", id);
    }
}

/// A later step failed after the upload: the backup host holds this very file, so a new
/// export (which could differ) must not replace it.
fn reuse_uploaded(job: &ArchiveJob, sha: &str, cx: &mut StepContext) -> StepResult {
    let local = job.local_path();
    let m = job
        .load_manifest()
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
    record_archive(cx, job, &m);
    Ok(())
}

/// The local file of a finished segmented pass, checked against its manifest, for a
/// resumed run (its documents were being purged; the upload step may not have run).
fn reuse_finished(job: &ArchiveJob, cx: &mut StepContext) -> StepResult {
    let local = job.local_path();
    let m = job
        .load_manifest()
        .and_then(|m| check_sha(&local, &m).map(|()| m))
        .map_err(failed)?;
    tracing::info!(
        "reusing {}: its {} segments were verified on the backup host",
        local.display(),
        m.segments.len()
    );
    record_archive(cx, job, &m);
    Ok(())
}

/// The file at `path` has the manifest's size and sha256.
pub fn check_sha(path: &std::path::Path, m: &ArchiveManifest) -> anyhow::Result<()> {
    let (sha, len) = crate::staged::sha256_file(path)?;
    if sha != m.sha256 || len != m.compressed_bytes {
        anyhow::bail!(
            "{} has {len} bytes, sha256 {sha}; its manifest says {} bytes, sha256 {}",
            path.display(),
            m.compressed_bytes,
            m.sha256
        );
    }
    Ok(())
}

/// Passes records on, and stops the export at a chunk boundary when SIGINT/SIGTERM arrived.
struct StopAware<'a> {
    inner: &'a mut ArchiveWriter,
    month: String,
}

impl RecordSink for StopAware<'_> {
    fn accept(&mut self, record: Record<'_>) -> anyhow::Result<()> {
        let n = self.inner.count();
        if n.is_multiple_of(STOP_CHECK_EVERY) {
            opskit_core::interrupt::check(
                || format!("during the export ({n} documents read); nothing was deleted"),
                || {
                    format!(
                        "the unfinished archive is removed; run `opskit archive run --month {}` again to start the export over",
                        self.month
                    )
                },
            )?;
        }
        self.inner.accept(record)
    }
}
