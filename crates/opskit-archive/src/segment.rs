//! The segmented export: a month larger than `archive.segment_docs` documents is cut into
//! segments, and the slow stages overlap instead of running one after the other.
//!
//! Three threads, joined by channels holding at most one segment each:
//! 1. the exporting thread reads the month and writes it to `<name>.partial` (gzip members);
//!    it ends a segment after 2,000 documents, then after twice as many each time up to
//!    `segment_docs`: its members are fsynced and its offset, length and sha256 known;
//! 2. the uploader appends each segment to `<name>.uploading` on the backup host, fsyncs it,
//!    reads it back over SFTP and matches its sha256 ([`crate::sftp::RemoteAppend`]), then
//!    records it in the [`SegmentLog`] (fsynced) — only then is the segment handed on;
//! 3. the purger deletes the documents of each verified segment ([`crate::purge::Purger`]),
//!    while the next segments are exported and uploaded.
//!
//! So a document is deleted only once it is in a copy on the backup host that was read back
//! and matched byte for byte: the point of no return is the first verified segment. Until the
//! upload step gives the remote file its final name, the documents deleted so far live in
//! `<name>.uploading` on the backup host (and in the staged `.partial`); every error, the
//! status and the plan say so.
//!
//! A run killed or failed after a segment was verified resumes by closing the archive with
//! the verified segments ([`recover`]): both copies are cut back to them and checked again,
//! the file gets its manifest and final name, the purge finishes their documents, and the
//! rest of the month goes to a late pass that the same `archive run` starts right after.

use std::fs::File;
use std::io::{Read as _, Seek as _};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::time::Instant;

use anyhow::{Context as _, anyhow, bail};
use bson::{Bson, RawDocumentBuf};
use opskit_core::plan::StepContext;
use opskit_core::progress::Progress;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::job::{ArchiveJob, SharedSource};
use crate::purge::{PurgeCheckpoint, PurgeStats, Purger};
use crate::source::{ArchivedDoc, DeletingSink, PendingDelete, Record, RecordSink};
use crate::staged::{ArchiveIdentity, ArchiveManifest, SegmentEntry, partial_path};
use crate::testhook::pause_point;
use crate::writer::{ArchiveWriter, Contents, SegmentBytes};

/// The first segment's size (when `archive.segment_docs` is larger): the purge can begin
/// once it is verified; the next segments double up to `segment_docs`.
const FIRST_SEGMENT_DOCS: usize = 2_000;

/// How many documents pass between two looks at a stop request during the export.
const STOP_CHECK_EVERY: u64 = 10_000;

/// What a segmented pass has verified on the backup host, saved (atomically, fsynced) after
/// each segment and before its documents may be deleted.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SegmentLog {
    /// This pass's id: the purge checkpoint is bound to it until the file is finished.
    pub run_id: String,
    /// The archive's file name.
    pub file: String,
    /// The remote temporary file, `host:path`.
    pub remote: String,
    /// What the manifest says about the source.
    pub identity: ArchiveIdentity,
    /// The verified segments, in file order.
    pub segments: Vec<SegmentEntry>,
    /// The local file has its final name and manifest.
    pub finished: bool,
    /// The pass was closed early (after an interruption) with the segments verified by then;
    /// the rest of the month goes to the next pass.
    pub cut_short: bool,
}

impl SegmentLog {
    /// The log of `job`'s pass, if it ran segmented.
    pub fn load(job: &ArchiveJob) -> anyhow::Result<Option<SegmentLog>> {
        let path = job.segment_log_path();
        match std::fs::read_to_string(&path) {
            Ok(t) => serde_json::from_str(&t)
                .map(Some)
                .with_context(|| format!("parsing {}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Saves it durably.
    pub fn save(&self, job: &ArchiveJob) -> anyhow::Result<()> {
        let path = job.segment_log_path();
        if let Some(dir) = path.parent() {
            opskit_core::util::create_private_dir_all(dir)?;
        }
        opskit_core::util::write_atomic(
            &path,
            serde_json::to_string_pretty(self)
                .expect("serializes")
                .as_bytes(),
            0o600,
        )
    }

    /// Documents in the verified segments.
    pub fn docs(&self) -> u64 {
        self.segments.iter().map(|s| s.docs).sum()
    }

    /// Bytes of the verified segments.
    pub fn bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.len).sum()
    }

    /// Where the documents deleted so far live, in an operator's words.
    pub fn whereabouts(&self, job: &ArchiveJob) -> String {
        format!(
            "the {} documents of the {} verified segments (those deleted so far among them) are in {} on the backup host \
             (not yet at its final name) and in {}",
            self.docs(),
            self.segments.len(),
            self.remote,
            {
                let partial = partial_path(&job.local_path());
                if partial.exists() {
                    partial
                } else {
                    job.local_path()
                }
            }
            .display()
        )
    }
}

/// A segment on its way from the export to the purge.
struct Segment {
    /// Its entry; offset, length and sha256 come from `bytes`.
    entry: SegmentEntry,
    /// Where the writer put the segment, once it is on disk.
    bytes: Receiver<SegmentBytes>,
    /// Its documents, for the purge; empty when the source deleted them as it read them.
    docs: Vec<ArchivedDoc>,
    /// The source's uncommitted delete of the segment, when it deletes as it reads
    /// ([`crate::source::Source::export_deleting`]): the purger commits it.
    delete: Option<Box<dyn PendingDelete>>,
}

/// What the uploader did.
#[derive(Debug, Default)]
struct UploadStats {
    write_secs: f64,
    verify_secs: f64,
}

/// The error the exporting thread returns when a later stage stopped first (that stage's
/// error says why).
#[derive(Debug, thiserror::Error)]
#[error("the upload or the purge stopped")]
struct PipelineStopped;

/// Exports, uploads, verifies and purges `job`'s month segment by segment (module docs).
/// `expected` is the count the source gave just before. Returns the finished manifest.
pub fn export_segmented(
    job: &ArchiveJob,
    source: &SharedSource,
    identity: ArchiveIdentity,
    expected: Option<u64>,
    cx: &mut StepContext,
) -> anyhow::Result<ArchiveManifest> {
    let started = Instant::now();
    let local = job.local_path();
    let partial = partial_path(&local);
    let run_id = format!(
        "{}-{}-{}",
        job.run_key(),
        std::process::id(),
        chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default()
    );
    let host = job.backup_host()?;
    let writer = ArchiveWriter::create(
        &local,
        job.config.compression_level,
        job.config.compression_threads as usize,
        identity.clone(),
    )?;
    let mut log = SegmentLog {
        run_id: run_id.clone(),
        file: job.file_name(),
        remote: format!(
            "{}:{}",
            job.config.sftp.host,
            crate::sftp::remote_path(
                &job.config.sftp.remote_dir,
                &crate::sftp::temp_name(&job.file_name())
            )
        ),
        identity,
        segments: Vec::new(),
        finished: false,
        cut_short: false,
    };
    log.save(job)?;
    let deleting = {
        let mut s = source.get()?;
        match s.export_deleting_refused(&job.bounds)? {
            None => {
                tracing::info!(
                    "each segment is read by the DELETE that removes it, committed only once the segment is verified on the backup host"
                );
                true
            }
            Some(why) => {
                tracing::info!("segments are exported, then purged: {why}");
                false
            }
        }
    };
    let purge_source = SharedSource::new(job);
    let export_progress = cx.progress("export", expected, "docs");
    let purge_progress = cx.progress("purge", expected, "docs");
    let total = expected.unwrap_or(u64::MAX);
    let mut writer = Some(writer);
    let (exported, uploaded, purged) = std::thread::scope(|scope| {
        let (up_tx, up_rx) = sync_channel::<Segment>(1);
        let (purge_tx, purge_rx) = sync_channel::<Segment>(1);
        let (final_tx, final_rx) = sync_channel::<ArchiveManifest>(1);
        let uploader =
            scope.spawn(|| upload_segments(job, &host, &partial, up_rx, purge_tx, final_rx));
        let purger = scope
            .spawn(|| purge_segments(job, &purge_source, &run_id, total, purge_progress, purge_rx));
        let mut w = writer.take().expect("set above");
        let mut sink = SegmentSink {
            writer: &mut w,
            up_tx: Some(up_tx),
            docs: Vec::new(),
            deleting,
            in_segment: 0,
            stats: SegmentStats::default(),
            cut: Vec::new(),
            index: 0,
            first_doc: 0,
            segment_docs: (job.config.segment_docs.get() as usize).min(FIRST_SEGMENT_DOCS),
            max_segment_docs: job.config.segment_docs.get() as usize,
            progress: Some(export_progress),
            month: job.bounds.month.to_string(),
        };
        let exported = source
            .get()
            .and_then(|mut s| {
                if deleting {
                    s.export_deleting(&job.bounds, &mut sink)
                } else {
                    s.export(&job.bounds, &mut sink)
                }
            })
            .and_then(|()| sink.cut_last());
        // No more segments: the uploader ends after the queued ones, then the purger.
        sink.up_tx.take();
        if let Some(p) = sink.progress.take() {
            p.finish();
        }
        let cut = std::mem::take(&mut sink.cut);
        drop(sink);
        // The whole file is written: it gets its manifest here, and its final name on the
        // backup host from the uploader once every segment is verified there (while the
        // purger finishes the last segments).
        let exported = match exported {
            Ok(()) => match w.finish_segments(cut) {
                Ok(m) => {
                    let _ = final_tx.send(m.clone());
                    Ok(m)
                }
                Err(e) => Err(e.context(format!("finishing {}", local.display()))),
            },
            Err(e) => {
                writer = Some(w);
                Err(e)
            }
        };
        drop(final_tx);
        let uploaded = join(uploader);
        let purged = join(purger);
        (exported, uploaded, purged)
    });
    let (purge_result, purge_stats) = purged;
    purge_stats.record(cx);
    let (upload_result, upload_stats) = uploaded;
    if let Ok(l) = SegmentLog::load(job).map(|l| l.unwrap_or(log.clone())) {
        log = l;
    }
    cx.gauge("upload_seconds", upload_stats.write_secs);
    cx.gauge("verify_seconds", upload_stats.verify_secs);
    cx.gauge("segments", log.segments.len() as f64);
    let (m, export_error) = match exported {
        Ok(m) => (Some(m), None),
        Err(e) => (None, Some(e)),
    };
    let failure = purge_result
        .err()
        .or(upload_result.err())
        .or(export_error.filter(|e| e.downcast_ref::<PipelineStopped>().is_none()));
    if let Some(e) = failure {
        if log.segments.is_empty() {
            // Nothing was verified, so nothing was deleted: the writer removes its partial.
            drop(writer);
            return Err(e.context("nothing was deleted"));
        }
        if let Some(w) = writer {
            w.keep_partial();
        }
        if let Some(m) = &m
            && job.uploaded_marker().exists()
        {
            // The file is whole on both sides; only the purge stopped (a replica's lag, the
            // source lost): the purge step of the re-run resumes it from its checkpoint.
            PurgeCheckpoint::rebind(&job.purge_checkpoint(), &log.run_id, &m.sha256)?;
            log.finished = true;
            log.save(job)?;
        }
        return Err(e.context(format!(
            "{}; run `opskit archive run --month {}` again: it closes the archive with the verified segments, \
             finishes their purge, and archives the rest of the month in a late pass",
            log.whereabouts(job),
            job.bounds.month
        )));
    }
    let m = m.ok_or_else(|| anyhow!("internal: the segmented export ended without a manifest"))?;
    PurgeCheckpoint::rebind(&job.purge_checkpoint(), &log.run_id, &m.sha256)?;
    log.finished = true;
    log.save(job)?;
    let secs = started.elapsed().as_secs_f64();
    tracing::info!(
        count = m.count,
        segments = log.segments.len(),
        compressed = m.compressed_bytes,
        sha256 = %m.sha256,
        "exported, uploaded, verified and purged {} documents in {} segments in {secs:.1}s ({:.0} docs/s)",
        m.count,
        log.segments.len(),
        m.count as f64 / secs.max(1e-9)
    );
    cx.count("documents_exported", m.count as f64);
    cx.count("bytes_raw", m.raw_bytes as f64);
    cx.count("bytes_compressed", m.compressed_bytes as f64);
    cx.gauge("export_seconds", secs);
    Ok(m)
}

/// Joins a stage's thread; a panic goes on unwinding in the caller (the run reports it).
fn join<T>(h: std::thread::ScopedJoinHandle<'_, T>) -> T {
    match h.join() {
        Ok(v) => v,
        Err(payload) => std::panic::resume_unwind(payload),
    }
}

/// Per-segment facts for its [`SegmentEntry`].
#[derive(Default)]
struct SegmentStats {
    raw_bytes: u64,
    min_date: Option<String>,
    max_date: Option<String>,
    first_id: Option<Bson>,
    last_id: Option<Bson>,
}

/// The exporting thread's sink: documents into the writer and into the current segment.
struct SegmentSink<'w> {
    writer: &'w mut ArchiveWriter,
    up_tx: Option<SyncSender<Segment>>,
    docs: Vec<ArchivedDoc>,
    /// The source deletes as it reads and says where each segment ends: documents are not
    /// kept for the purge.
    deleting: bool,
    /// Documents in the current segment.
    in_segment: u64,
    stats: SegmentStats,
    /// The segments handed to the uploader so far.
    cut: Vec<SegmentEntry>,
    index: u32,
    first_doc: u64,
    /// The size of the segment being filled: [`FIRST_SEGMENT_DOCS`], doubling up to
    /// `max_segment_docs`, so the purge starts early.
    segment_docs: usize,
    max_segment_docs: usize,
    progress: Option<Progress>,
    month: String,
}

impl RecordSink for SegmentSink<'_> {
    fn accept(&mut self, record: Record<'_>) -> anyhow::Result<()> {
        let n = self.writer.count();
        if n.is_multiple_of(STOP_CHECK_EVERY) {
            opskit_core::interrupt::check(
                || format!("during the segmented export ({n} documents read)"),
                || {
                    format!(
                        "run `opskit archive run --month {}` again: verified segments are kept and purged, the rest goes to a late pass",
                        self.month
                    )
                },
            )?;
        }
        self.writer.accept(Record {
            id: record.id,
            date: record.date,
            raw: record.raw,
            fingerprint: record.fingerprint,
        })?;
        let s = &mut self.stats;
        s.raw_bytes += record.raw.len() as u64;
        if s.first_id.is_none() {
            s.first_id = Some(record.id.clone());
        }
        s.last_id = Some(record.id.clone());
        if s.min_date.as_deref().is_none_or(|m| record.date < m) {
            s.min_date = Some(record.date.to_string());
        }
        if s.max_date.as_deref().is_none_or(|m| record.date > m) {
            s.max_date = Some(record.date.to_string());
        }
        self.in_segment += 1;
        if let Some(p) = self.progress.as_mut() {
            p.inc(1);
        }
        if self.deleting {
            // The source ends the segment, with its delete.
            return Ok(());
        }
        // A document the server fingerprinted is purged by that fingerprint: its bytes stay
        // only in the file (without them, a fallback compare could only keep the row).
        let raw = match record.fingerprint {
            Some(_) => RawDocumentBuf::new(),
            None => RawDocumentBuf::from_bytes(record.raw.to_vec())
                .context("an exported document is not valid BSON")?,
        };
        self.docs.push(ArchivedDoc {
            id: record.id.clone(),
            raw,
            fingerprint: record.fingerprint,
        });
        if self.docs.len() >= self.segment_docs {
            self.cut(None)?;
        }
        Ok(())
    }
}

impl DeletingSink for SegmentSink<'_> {
    fn next_segment_docs(&self) -> usize {
        self.segment_docs
    }

    fn max_segment_docs(&self) -> usize {
        self.max_segment_docs
    }

    fn end_segment(&mut self, delete: Box<dyn PendingDelete>) -> anyhow::Result<()> {
        if delete.docs() != self.in_segment {
            bail!(
                "internal: the source deleted {} documents for a segment of {}",
                delete.docs(),
                self.in_segment
            );
        }
        self.cut(Some(delete))
    }
}

impl SegmentSink<'_> {
    /// Ends the current segment and hands it to the uploader, with the source's delete of
    /// its documents when it deletes as it reads.
    fn cut(&mut self, delete: Option<Box<dyn PendingDelete>>) -> anyhow::Result<()> {
        let index = self.index + 1;
        pause_point("export", "segment", index as u64);
        // The next segment is read while the writer finishes this one.
        let bytes = self.writer.end_segment()?;
        let docs = std::mem::take(&mut self.docs);
        let s = std::mem::take(&mut self.stats);
        let entry = SegmentEntry {
            index,
            first_doc: self.first_doc,
            docs: std::mem::take(&mut self.in_segment),
            raw_bytes: s.raw_bytes,
            offset: 0,
            len: 0,
            sha256: String::new(),
            min_date: s.min_date,
            max_date: s.max_date,
            first_id: s.first_id.map(|b| b.into_relaxed_extjson()),
            last_id: s.last_id.map(|b| b.into_relaxed_extjson()),
        };
        self.index = index;
        self.first_doc += entry.docs;
        self.cut.push(entry.clone());
        self.segment_docs = (self.segment_docs * 2).min(self.max_segment_docs);
        let sent = self.up_tx.as_ref().is_some_and(|tx| {
            tx.send(Segment {
                entry,
                bytes,
                docs,
                delete,
            })
            .is_ok()
        });
        if !sent {
            return Err(PipelineStopped.into());
        }
        Ok(())
    }

    /// Ends the last segment (also the only, empty one of an empty export).
    fn cut_last(&mut self) -> anyhow::Result<()> {
        if self.deleting && self.in_segment > 0 {
            bail!(
                "internal: the source read {} documents after its last segment",
                self.in_segment
            );
        }
        if self.in_segment > 0 || self.index == 0 {
            self.cut(None)?;
        }
        Ok(())
    }
}

/// The uploader: appends, fsyncs, reads back and matches each segment, records it in the
/// log, then hands it to the purger.
fn upload_segments(
    job: &ArchiveJob,
    host: &crate::sftp::BackupHost,
    partial: &Path,
    rx: Receiver<Segment>,
    purge_tx: SyncSender<Segment>,
    final_rx: Receiver<ArchiveManifest>,
) -> (anyhow::Result<()>, UploadStats) {
    let mut stats = UploadStats::default();
    let r = (|| {
        pause_point("upload", "start", 1);
        let mut remote = host.start_segments(&job.file_name())?;
        let mut local =
            File::open(partial).with_context(|| format!("opening {}", partial.display()))?;
        let result = (|| {
            for mut seg in rx {
                let Ok(b) = seg.bytes.recv() else {
                    // The export's error says why.
                    bail!(
                        "the archive writer stopped before segment {} was on disk",
                        seg.entry.index
                    );
                };
                (seg.entry.offset, seg.entry.len, seg.entry.sha256) = (b.offset, b.len, b.sha256);
                let e = &seg.entry;
                let t =
                    remote.append(&mut local, e.index, e.offset, e.len, &e.sha256, &mut |_| {})?;
                stats.write_secs += t.write_secs;
                stats.verify_secs += t.verify_secs;
                // Durable before any of its documents may be deleted.
                let mut log = SegmentLog::load(job)?
                    .ok_or_else(|| anyhow!("{} disappeared", job.segment_log_path().display()))?;
                log.segments.push(e.clone());
                log.save(job)?;
                tracing::debug!(
                    segment = e.index,
                    docs = e.docs,
                    bytes = e.len,
                    "segment verified on the backup host"
                );
                if purge_tx.send(seg).is_err() {
                    // The purger stopped: its error says why.
                    return Ok(());
                }
            }
            drop(purge_tx);
            // Every segment is verified: the whole file gets its final name.
            if let Ok(m) = final_rx.recv() {
                remote.finish(&m)?;
                let marker = job.uploaded_marker();
                if let Some(dir) = marker.parent() {
                    opskit_core::util::create_private_dir_all(dir)?;
                }
                opskit_core::util::write_atomic(&marker, m.sha256.as_bytes(), 0o600)?;
            }
            Ok::<(), anyhow::Error>(())
        })();
        remote.close();
        result
    })();
    (r, stats)
}

/// The purger: deletes the documents of each verified segment, in file order.
fn purge_segments(
    job: &ArchiveJob,
    source: &SharedSource,
    run_id: &str,
    total: u64,
    progress: Progress,
    rx: Receiver<Segment>,
) -> (anyhow::Result<()>, PurgeStats) {
    let mut purger = match Purger::new(job, source, run_id, total, progress) {
        Ok(p) => p,
        Err(e) => return (Err(e), PurgeStats::default()),
    };
    let r = (|| {
        for seg in rx {
            if let Some(delete) = seg.delete {
                purger.commit_segment(seg.entry.first_doc, delete)?;
                continue;
            }
            purger.push_from(seg.entry.first_doc, seg.docs)?;
            // A verified segment is purged at once, its last batch shorter if need be:
            // waiting for the next segment to fill a batch would only leave work for the end.
            purger.run(true)?;
        }
        Ok(())
    })();
    let (_, stats) = purger.finish();
    (r, stats)
}

/// Closes a pass interrupted after some segments were verified (module docs): both copies
/// are cut back to the verified segments and checked again, and the local file gets its
/// manifest and final name. Returns the manifest.
pub fn recover(job: &ArchiveJob, mut log: SegmentLog) -> anyhow::Result<ArchiveManifest> {
    let local = job.local_path();
    let partial = partial_path(&local);
    let keep = log.bytes();
    // A run killed after the local rename left the file at its final name.
    let src = if partial.exists() || !local.exists() {
        partial.clone()
    } else {
        local.clone()
    };
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&src)
        .with_context(|| {
            format!(
                "opening {}: {}; fetch the remote file to continue by hand",
                partial.display(),
                log.whereabouts(job)
            )
        })?;
    let mut whole = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    for s in &log.segments {
        f.seek(std::io::SeekFrom::Start(s.offset))?;
        let mut seg = Sha256::new();
        let mut left = s.len;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            f.read_exact(&mut buf[..n])
                .with_context(|| format!("reading segment {} of {}", s.index, src.display()))?;
            seg.update(&buf[..n]);
            whole.update(&buf[..n]);
            left -= n as u64;
        }
        let sha = hex::encode(seg.finalize());
        if sha != s.sha256 {
            bail!(
                "segment {} of {} has sha256 {sha}, verified as {} when it was uploaded: the local copy changed; \
                 {}",
                s.index,
                src.display(),
                s.sha256,
                log.whereabouts(job)
            );
        }
    }
    f.set_len(keep)
        .and_then(|()| f.sync_all())
        .with_context(|| {
            format!(
                "cutting {} back to its verified segments",
                partial.display()
            )
        })?;
    drop(f);
    let host = job.backup_host()?;
    if host.final_len(&log.file)? == Some(keep) {
        // Killed right after the final link: the upload step checks that file whole.
        tracing::info!("{} already has its final name", log.remote);
    } else {
        host.resume_segments(&log.file, &log.segments)
            .with_context(|| format!("checking the verified segments of {}", log.remote))?
            .close();
    }
    let first = log.segments.first();
    let last = log.segments.last();
    let contents = Contents {
        count: log.docs(),
        raw_bytes: log.segments.iter().map(|s| s.raw_bytes).sum(),
        compressed_bytes: keep,
        sha256: hex::encode(whole.finalize()),
        min_date: log.segments.iter().filter_map(|s| s.min_date.clone()).min(),
        max_date: log.segments.iter().filter_map(|s| s.max_date.clone()).max(),
        first_id: first.and_then(|s| s.first_id.clone()),
        last_id: last.and_then(|s| s.last_id.clone()),
    };
    let m = ArchiveManifest::describe(
        &log.identity,
        log.file.clone(),
        contents,
        log.segments.clone(),
    );
    if src != local {
        std::fs::rename(&src, &local)
            .with_context(|| format!("renaming {} to {}", src.display(), local.display()))?;
    }
    if let Some(dir) = local.parent() {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("fsync of directory {}", dir.display()))?;
    }
    opskit_core::util::write_atomic(
        &ArchiveManifest::path_for(&local),
        m.to_json().as_bytes(),
        crate::staged::FILE_MODE,
    )?;
    PurgeCheckpoint::rebind(&job.purge_checkpoint(), &log.run_id, &m.sha256)?;
    log.finished = true;
    log.cut_short = true;
    log.save(job)?;
    tracing::warn!(
        "the interrupted run had verified {} segments ({} documents) on the backup host: {} is closed with them; \
         the rest of {} goes to a late pass right after this one",
        log.segments.len(),
        m.count,
        local.display(),
        job.bounds.month
    );
    Ok(m)
}

/// The verified segments of an unfinished segmented archive, checked on both copies.
#[derive(Debug, Clone, Serialize)]
pub struct UnfinishedCheck {
    /// The staged partial file.
    pub local: PathBuf,
    /// The remote temporary file, `host:path`.
    pub remote: String,
    /// Segments verified on both.
    pub segments: usize,
    /// Their documents.
    pub docs: u64,
    /// Their bytes.
    pub bytes: u64,
}

/// The segment log of an archive named `name` (or `<name>.partial`) whose remote file has
/// no final name yet, if `state_dir` records one.
pub fn unfinished_log(
    config: &opskit_core::config::Config,
    state_dir: &Path,
    file: &Path,
) -> Option<SegmentLog> {
    let name = file.file_name()?.to_str()?;
    let name = name.strip_suffix(".partial").unwrap_or(name);
    let dir = state_dir.join("archive");
    std::fs::read_dir(&dir)
        .ok()?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".segments.json"))
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter_map(|t| serde_json::from_str::<SegmentLog>(&t).ok())
        .filter(|l| l.file == name && !l.segments.is_empty())
        .find(|l| {
            ArchiveJob::new(config, Some(l.identity.bounds.month), state_dir)
                .map(|j| !j.with_pass(l.identity.pass).uploaded_marker().exists())
                .unwrap_or(false)
        })
}

/// `archive verify --file <name>[.partial] [--remote]` of an archive whose remote file has no
/// final name yet: checks its verified segments in the local file (and, with `remote`, in the
/// remote temporary file), from the segment log in `state_dir`. Changes nothing.
pub fn verify_unfinished(
    config: &opskit_core::config::Config,
    state_dir: &Path,
    file: &Path,
    remote: bool,
) -> anyhow::Result<UnfinishedCheck> {
    let log = unfinished_log(config, state_dir, file).ok_or_else(|| {
        anyhow!(
            "no unfinished segmented run of {} is recorded in {} (is --state-dir right?)",
            file.display(),
            state_dir.join("archive").display()
        )
    })?;
    let mut f = File::open(file).with_context(|| format!("opening {}", file.display()))?;
    let mut buf = vec![0u8; 1 << 20];
    for s in &log.segments {
        f.seek(std::io::SeekFrom::Start(s.offset))?;
        let mut h = Sha256::new();
        let mut left = s.len;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            f.read_exact(&mut buf[..n])
                .with_context(|| format!("reading segment {} of {}", s.index, file.display()))?;
            h.update(&buf[..n]);
            left -= n as u64;
        }
        let sha = hex::encode(h.finalize());
        if sha != s.sha256 {
            bail!(
                "segment {} of {} has sha256 {sha}, verified as {} when it was uploaded",
                s.index,
                file.display(),
                s.sha256
            );
        }
    }
    if remote {
        let job = ArchiveJob::new(config, Some(log.identity.bounds.month), state_dir)?
            .with_pass(log.identity.pass);
        job.backup_host()?
            .check_segments(&log.file, &log.segments)
            .with_context(|| format!("checking {}", log.remote))?;
    }
    Ok(UnfinishedCheck {
        local: file.to_path_buf(),
        remote: log.remote.clone(),
        segments: log.segments.len(),
        docs: log.docs(),
        bytes: log.bytes(),
    })
}
