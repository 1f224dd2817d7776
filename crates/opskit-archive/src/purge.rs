//! The purge step: the documents of the verified archive, read back from the local file and
//! deleted in batches, each only while the source still holds exactly the archived version.
//!
//! The local file is trusted only if it is the very file the commit step verified: before the
//! first delete, the purge opens it, hashes it through that open descriptor, compares size and
//! sha256 with what the commit step recorded in the journal, and then reads the documents
//! from the same descriptor (a file swapped in afterwards is never read). Any difference
//! fails the step (exit 1, alert) before anything is deleted.
//!
//! Batches adapt to the server ([`crate::batch`]): they aim at `archive.purge.target_batch_ms`
//! each, and a batch that times out is retried smaller. Progress is checkpointed after every
//! batch. A stop request (SIGINT/SIGTERM) ends the purge
//! at the next batch boundary with the command that resumes it.

use std::collections::VecDeque;
use std::fs::File;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use opskit_core::plan::{StepAction, StepContext, StepError, StepResult};
use opskit_core::progress::Progress;
use serde::{Deserialize, Serialize};

use crate::batch::{BatchSizer, Change};
use crate::job::{ArchiveJob, SharedSource};
use crate::source::{ArchivedDoc, DeleteOutcome, DeleteTimedOut, PendingDelete};
use crate::staged::{ArchiveManifest, documents_of, sha256_open};
use crate::testhook::{panic_point, pause_point};

/// The purge's progress, saved after every batch.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PurgeCheckpoint {
    /// The archive these counts are about.
    pub sha256: String,
    /// Documents sent so far (a prefix of the archive, in file order).
    pub sent: u64,
    /// Documents the source deleted.
    pub deleted: u64,
    /// Documents kept because they changed since the export.
    pub changed: u64,
    /// Documents that were already gone.
    pub gone: u64,
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

    /// Re-labels the checkpoint of a segmented run (`from`, its run id) with the finished
    /// archive's sha256 (`to`), so the purge step resumes it. Nothing to do without one.
    pub fn rebind(path: &Path, from: &str, to: &str) -> anyhow::Result<()> {
        if !path.exists() {
            return Ok(());
        }
        let mut ck = match PurgeCheckpoint::load(path, to) {
            Ok(ck) => return ck.save(path),
            Err(_) => PurgeCheckpoint::load(path, from)?,
        };
        ck.sha256 = to.to_string();
        ck.save(path)
    }

    fn save(&self, path: &Path) -> anyhow::Result<()> {
        if let Some(dir) = path.parent() {
            opskit_core::util::create_private_dir_all(dir)?;
        }
        opskit_core::util::write_atomic(
            path,
            serde_json::to_string(self).expect("serializes").as_bytes(),
            0o600,
        )
    }
}

/// See the module docs.
pub struct PurgeStep {
    job: ArchiveJob,
    source: SharedSource,
    /// The archive, opened and checked by the precondition.
    verified: Option<(File, ArchiveManifest)>,
    /// Set when a segmented export already sent every document.
    all_sent: Option<PurgeCheckpoint>,
}

impl PurgeStep {
    /// The purge of `job` from `source`.
    pub fn new(job: &ArchiveJob, source: &SharedSource) -> PurgeStep {
        PurgeStep {
            job: job.clone(),
            source: source.clone(),
            verified: None,
            all_sent: None,
        }
    }
}

fn failed(e: anyhow::Error) -> StepError {
    StepError::Failed(e)
}

impl PurgeStep {
    /// The checkpoint of a segmented archive whose every document was already sent by the
    /// export's purge (bound to the sha256 the commit step recorded), if so.
    fn sent_by_segments(&self, cx: &StepContext) -> Option<PurgeCheckpoint> {
        let sha = cx.recorded("commit", "sha256")?.as_str()?.to_string();
        let count = cx.recorded("commit", "count")?.as_u64()?;
        let m = self.job.load_manifest().ok()?;
        if m.segments.is_empty() || m.sha256 != sha || m.count != count {
            return None;
        }
        let ck = PurgeCheckpoint::load(&self.job.purge_checkpoint(), &sha).ok()?;
        (ck.sent == count).then_some(ck)
    }
}

impl StepAction for PurgeStep {
    fn precondition(&mut self, cx: &mut StepContext) -> StepResult {
        if let Some(ck) = self.sent_by_segments(cx) {
            self.all_sent = Some(ck);
            return Ok(());
        }
        let local = self.job.local_path();
        let committed = |key: &str| cx.recorded("commit", key).cloned();
        let (Some(sha), Some(len)) = (
            committed("sha256").and_then(|v| v.as_str().map(str::to_string)),
            committed("compressed_bytes").and_then(|v| v.as_u64()),
        ) else {
            return Err(failed(anyhow!(
                "the journal holds no size and sha256 from the commit step; nothing is deleted (re-run after removing {} to start the month over)",
                self.job.journal_path().display()
            )));
        };
        let mut file = File::open(&local)
            .with_context(|| format!("opening {}", local.display()))
            .map_err(failed)?;
        let (found_sha, found_len) = sha256_open(&mut file, &local).map_err(failed)?;
        if found_sha != sha || found_len != len {
            return Err(failed(anyhow!(
                "{} is not the archive the commit step verified: it has {found_len} bytes, sha256 {found_sha}; \
                 the journal says {len} bytes, sha256 {sha}. Nothing is deleted. Put back the verified archive \
                 (fetch it from the backup host) and re-run",
                local.display()
            )));
        }
        let m = self.job.load_manifest().map_err(failed)?;
        if m.sha256 != sha || m.compressed_bytes != len {
            return Err(failed(anyhow!(
                "the manifest beside {} (sha256 {}) does not describe the archive the commit step verified (sha256 {sha}); nothing is deleted",
                local.display(),
                m.sha256
            )));
        }
        self.verified = Some((file, m));
        Ok(())
    }

    fn execute(&mut self, cx: &mut StepContext) -> StepResult {
        if let Some(ck) = self.all_sent.take() {
            tracing::info!(
                deleted = ck.deleted,
                changed = ck.changed,
                gone = ck.gone,
                batches = ck.batches,
                "nothing left to purge: the segmented export purged every verified segment"
            );
            cx.record("deleted", ck.deleted);
            cx.record("changed", ck.changed);
            cx.record("gone", ck.gone);
            cx.record("batches", ck.batches);
            return Ok(());
        }
        let (file, m) = self.verified.take().ok_or_else(|| {
            failed(anyhow!(
                "internal: the purge ran without its checked archive"
            ))
        })?;
        let ck = purge(&self.job, &self.source, file, &m, cx).map_err(failed)?;
        cx.record("deleted", ck.deleted);
        cx.record("changed", ck.changed);
        cx.record("gone", ck.gone);
        cx.record("batches", ck.batches);
        Ok(())
    }
}

/// Deletes the archive's documents in batches from `file` (already checked).
fn purge(
    job: &ArchiveJob,
    source: &SharedSource,
    file: File,
    m: &ArchiveManifest,
    cx: &mut StepContext,
) -> anyhow::Result<PurgeCheckpoint> {
    let progress = cx.progress("purge", Some(m.count), "docs");
    let mut purger = Purger::new(job, source, &m.sha256, m.count, progress)?;
    let fed = feed_from_file(job, &mut purger, file, m);
    let (ck, stats) = purger.finish();
    stats.record(cx);
    fed?;
    if ck.sent != m.count {
        bail!(
            "the purge sent {} documents but the archive holds {}",
            ck.sent,
            m.count
        );
    }
    Ok(ck)
}

/// Reads the documents the checkpoint does not hold back from `file` and purges them.
fn feed_from_file(
    job: &ArchiveJob,
    purger: &mut Purger<'_>,
    file: File,
    m: &ArchiveManifest,
) -> anyhow::Result<()> {
    if purger.done() < m.count {
        let mut reader = documents_of(file);
        let mut position = 0u64;
        while let Some(doc) = reader.next_document().with_context(|| {
            format!("reading documents back from {}", job.local_path().display())
        })? {
            position += 1;
            if position <= purger.done() {
                purger.queued += 1;
                continue;
            }
            let id = doc
                .get(&m.id_field)
                .with_context(|| format!("document {position}: reading `{}`", m.id_field))?
                .with_context(|| format!("document {position} has no `{}`", m.id_field))?;
            purger.push(ArchivedDoc {
                id: id.to_raw_bson().try_into().map_err(|e| {
                    anyhow!(
                        "document {position}: `{}` is not a valid id: {e}",
                        m.id_field
                    )
                })?,
                raw: doc.to_owned(),
                fingerprint: None,
            });
            purger.run(false)?;
        }
    }
    purger.run(true)
}

/// What a purge did, for the metrics.
#[derive(Debug, Clone, Default)]
pub struct PurgeStats {
    /// What this process's batches found (not the checkpoint's totals across runs).
    pub now: DeleteOutcome,
    /// Batches retried smaller after a timeout.
    pub retries: u64,
    /// Seconds paused for replica lag.
    pub paused_secs: f64,
    /// Seconds from the first to the last batch.
    pub secs: f64,
    /// The batch size the next batch would use.
    pub batch_size: usize,
}

impl PurgeStats {
    /// Writes the purge metrics of this run.
    pub fn record(&self, cx: &mut StepContext) {
        cx.gauge("purge_batch_size", self.batch_size as f64);
        cx.count("purge_batch_retries", self.retries as f64);
        cx.count("documents_deleted", self.now.deleted as f64);
        cx.count("documents_changed_since_export", self.now.changed as f64);
        cx.count("documents_already_gone", self.now.gone as f64);
        // Archived documents still in the source after the purge: only those changed since.
        cx.count("delete_shortfall", self.now.changed as f64);
        cx.gauge("purge_seconds", self.secs);
        cx.count("purge_paused_seconds", self.paused_secs);
    }
}

/// Deletes archived documents, in file order, in adaptive batches, checkpointing after every
/// batch; shared by the purge step (documents read back from the verified file) and the
/// segmented export (documents of each verified segment). A batch is the front of the queue,
/// removed once deleted; a timed-out batch stays and is retried smaller.
pub struct Purger<'a> {
    job: &'a ArchiveJob,
    source: &'a SharedSource,
    ck_path: std::path::PathBuf,
    ck: PurgeCheckpoint,
    /// Documents queued so far, counting those the checkpoint says were already sent.
    queued: u64,
    total: u64,
    sizer: BatchSizer,
    pause: Duration,
    pending: VecDeque<ArchivedDoc>,
    progress: Progress,
    started: Instant,
    smallest: usize,
    largest: usize,
    stats: PurgeStats,
}

impl<'a> Purger<'a> {
    /// A purge of the archive `identity` (its sha256, or a segmented run's id) holding
    /// `total` documents, resuming from its checkpoint.
    pub fn new(
        job: &'a ArchiveJob,
        source: &'a SharedSource,
        identity: &str,
        total: u64,
        mut progress: Progress,
    ) -> anyhow::Result<Purger<'a>> {
        let ck_path = job.purge_checkpoint();
        let ck = PurgeCheckpoint::load(&ck_path, identity)?;
        if ck.sent > 0 {
            tracing::info!(
                sent = ck.sent,
                deleted = ck.deleted,
                batches = ck.batches,
                "resuming the purge from {}",
                ck_path.display()
            );
        }
        let sizer = BatchSizer::from_config(&job.config.purge);
        progress.set_message(&batch_label(sizer.size()));
        progress.inc(ck.sent);
        Ok(Purger {
            job,
            source,
            ck_path,
            queued: 0,
            ck,
            total,
            pause: Duration::from_millis(job.config.purge.pause_ms),
            stats: PurgeStats {
                batch_size: sizer.size(),
                ..Default::default()
            },
            sizer,
            pending: VecDeque::new(),
            progress,
            started: Instant::now(),
            smallest: usize::MAX,
            largest: 0,
        })
    }

    /// Documents sent so far (the checkpoint): a prefix of the file.
    pub fn done(&self) -> u64 {
        self.ck.sent
    }

    /// Queues the next document of the file (skipped when the checkpoint holds it).
    pub fn push(&mut self, doc: ArchivedDoc) {
        self.queued += 1;
        if self.queued > self.ck.sent {
            self.pending.push_back(doc);
        }
    }

    /// Queues the documents at file positions `first + 1 ..` (`first` must be the number of
    /// documents queued so far); those the checkpoint already holds are skipped.
    pub fn push_from(&mut self, first: u64, docs: Vec<ArchivedDoc>) -> anyhow::Result<()> {
        if first != self.queued {
            bail!(
                "internal: documents from position {} queued after position {}",
                first + 1,
                self.queued
            );
        }
        for doc in docs {
            self.push(doc);
        }
        Ok(())
    }

    /// Commits the source's delete of the documents at file positions `first + 1 ..`
    /// ([`crate::source::Source::export_deleting`]), as one batch: after the same stop,
    /// test and replica-lag checks as a batch, and checkpointed the same way. A stop or a
    /// failure before the commit drops `delete`, which rolls it back.
    pub fn commit_segment(
        &mut self,
        first: u64,
        delete: Box<dyn PendingDelete>,
    ) -> anyhow::Result<()> {
        if first != self.queued {
            bail!(
                "internal: documents from position {} committed after position {}",
                first + 1,
                self.queued
            );
        }
        let n = delete.docs();
        self.queued += n;
        let number = self.ck.batches + 1;
        // Stopping here drops `delete`: the server rolls it back.
        self.before_batch(
            &format!("committing batch {number}"),
            "the uncommitted delete is rolled back",
        )?;
        delete
            .commit()
            .with_context(|| format!("committing batch {number} ({n} documents)"))?;
        pause_point("purge", "deleted", number);
        let ck = &mut self.ck;
        ck.sent += n;
        ck.deleted += n;
        ck.batches += 1;
        ck.save(&self.ck_path)?;
        self.stats.now.deleted += n;
        self.progress.inc(n);
        self.smallest = self.smallest.min(n as usize);
        self.largest = self.largest.max(n as usize);
        // The metric: the largest segment committed (the last one is often a remainder).
        self.stats.batch_size = self.largest;
        Ok(())
    }

    /// What precedes every batch (and every segment commit), `what` naming it in messages:
    /// a stop request ends the purge here (`on_stop` says what becomes of the batch); the
    /// test pause and panic points; the wait while a replica lags.
    fn before_batch(&mut self, what: &str, on_stop: &str) -> anyhow::Result<()> {
        let (job, total) = (self.job, of_total(self.total));
        let number = self.ck.batches + 1;
        let ck = &self.ck;
        opskit_core::interrupt::check(
            || {
                format!(
                    "before {what}: {}{total} documents done ({} deleted)",
                    ck.sent, ck.deleted
                )
            },
            || {
                format!(
                    "{on_stop}: run `opskit archive run --month {}` again",
                    job.bounds.month
                )
            },
        )?;
        pause_point("purge", "batch", number);
        panic_point("purge", "batch", number);
        wait_for_lag(
            job,
            self.source,
            &mut self.progress,
            &mut self.stats.paused_secs,
        )
        .map_err(|e| {
            e.context(format!(
                "the purge stopped before {}: {}{total} documents done ({} deleted), nothing lost; \
                 run `opskit archive run --month {}` again to resume",
                what.strip_prefix("purge ").unwrap_or(what),
                self.ck.sent,
                self.ck.deleted,
                job.bounds.month
            ))
        })
    }

    /// Deletes full batches; with `all`, also the last, shorter one.
    pub fn run(&mut self, all: bool) -> anyhow::Result<()> {
        while !self.pending.is_empty() && (all || self.pending.len() >= self.sizer.size()) {
            self.batch()?;
        }
        Ok(())
    }

    fn batch(&mut self) -> anyhow::Result<()> {
        let job = self.job;
        let n = self.sizer.size().min(self.pending.len());
        let number = self.ck.batches + 1;
        self.before_batch(
            &format!("purge batch {number}"),
            "the purge resumes from its checkpoint",
        )?;
        // The lag wait may have written its own message: show the batch size again.
        self.progress.set_message(&batch_label(self.sizer.size()));
        let batch = &self.pending.make_contiguous()[..n];
        let started_batch = Instant::now();
        let result = self.source.get()?.delete_archived(batch, &job.bounds);
        let took = started_batch.elapsed();
        let o = match result {
            Ok(o) => o,
            Err(e) => {
                let Some(t) = DeleteTimedOut::find(&e) else {
                    return Err(e.context(format!("deleting batch {number} ({n} documents)")));
                };
                let Some(next) = self.sizer.timed_out(n, t.limit) else {
                    return Err(e.context(format!(
                        "deleting batch {number} ({n} documents, archive.purge.min_batch_size): \
                         it timed out at the smallest batch allowed; re-run to resume the purge"
                    )));
                };
                self.stats.retries += 1;
                self.stats.batch_size = next;
                tracing::warn!(
                    batch = number,
                    "{t}: retrying it as batches of {next} (deleting by id is idempotent)"
                );
                self.progress.set_message(&batch_label(next));
                return Ok(());
            }
        };
        if o.total() != n as u64 {
            bail!(
                "batch {number}: {n} documents sent but {} deleted, {} changed and {} gone reported: stopping",
                o.deleted,
                o.changed,
                o.gone
            );
        }
        pause_point("purge", "deleted", number);
        if o.changed > 0 {
            tracing::warn!(
                batch = number,
                "{} of {n} archived documents changed since the export and were kept (the next late pass archives their new version)",
                o.changed
            );
        }
        if o.gone > 0 {
            tracing::info!(
                batch = number,
                "{} of {n} archived documents were already gone (deleted by an earlier, interrupted run or a timed-out attempt)",
                o.gone
            );
        }
        let ck = &mut self.ck;
        ck.sent += n as u64;
        ck.deleted += o.deleted;
        ck.changed += o.changed;
        ck.gone += o.gone;
        ck.batches += 1;
        ck.save(&self.ck_path)?;
        self.stats.now.add(o);
        self.progress.inc(n as u64);
        self.pending.drain(..n);
        self.smallest = self.smallest.min(n);
        self.largest = self.largest.max(n);
        match self.sizer.finished(n, took) {
            Change::Kept => {}
            Change::Grew(next) | Change::Shrank(next) => {
                tracing::debug!(
                    batch = number,
                    "{n} documents in {took:.2?} (target {:?}): next batch {next}",
                    self.sizer.target()
                );
                self.progress.set_message(&batch_label(next));
            }
        }
        self.stats.batch_size = self.sizer.size();
        let last = self.pending.is_empty() && self.queued >= self.total;
        if !self.pause.is_zero() && !last {
            std::thread::sleep(self.pause);
        }
        Ok(())
    }

    /// Ends the purge: its checkpoint and what this run did.
    pub fn finish(self) -> (PurgeCheckpoint, PurgeStats) {
        self.progress.finish();
        let mut stats = self.stats;
        stats.secs = self.started.elapsed().as_secs_f64();
        let ck = self.ck;
        let sizes = if self.largest == 0 {
            "no batch".to_string()
        } else if self.smallest == self.largest {
            format!("batches of {}", self.largest)
        } else {
            format!("batches of {} to {}", self.smallest, self.largest)
        };
        tracing::info!(
            deleted = ck.deleted,
            changed = ck.changed,
            gone = ck.gone,
            batches = ck.batches,
            retries = stats.retries,
            "purge done in {:.1}s ({sizes}, next {})",
            stats.secs,
            stats.batch_size
        );
        (ck, stats)
    }
}

/// ` of 1000` when the purge knows how many documents it has (a count), else nothing.
fn of_total(total: u64) -> String {
    if total == u64::MAX {
        String::new()
    } else {
        format!(" of {total}")
    }
}

/// The purge's progress label: `purge (batch 250)`.
fn batch_label(size: usize) -> String {
    format!("purge (batch {size})")
}

/// Waits while a watched replica lags more than `max_lag_secs` or its lag is unknown
/// (stopped replication, no answer): polls with pauses doubling from 0.5 s to 5 s, and the
/// progress line and the log say why the purge waits. One wait longer than
/// `max_lag_wait_secs` fails the step; the checkpoint holds every batch done, so a re-run
/// resumes. Adds the seconds paused to `paused_secs`.
fn wait_for_lag(
    job: &ArchiveJob,
    source: &SharedSource,
    progress: &mut Progress,
    paused_secs: &mut f64,
) -> anyhow::Result<()> {
    let max = job.config.purge.max_lag_secs.get() as f64;
    let give_up = Duration::from_secs(job.config.purge.max_lag_wait_secs.get());
    let started = Instant::now();
    let mut backoff = Duration::from_millis(500);
    let mut paused = false;
    let result = loop {
        let worst = match source.get().and_then(|mut s| s.worst_replica()) {
            Ok(w) => w,
            Err(e) => break Err(e.context("reading the replicas' lag")),
        };
        let Some(w) = worst.filter(|w| w.exceeds(max)) else {
            if paused {
                tracing::info!(
                    "the replicas are within {max:.0}s again after {:.1}s: the purge goes on",
                    started.elapsed().as_secs_f64()
                );
            }
            break Ok(());
        };
        if let Err(e) = opskit_core::interrupt::check(
            || format!("while waiting for the replicas ({})", w.describe()),
            || {
                format!(
                    "the purge resumes from its checkpoint: run `opskit archive run --month {}` again",
                    job.bounds.month
                )
            },
        ) {
            break Err(e.into());
        }
        let waited = started.elapsed();
        if waited >= give_up {
            break Err(anyhow!(
                "{} (limit archive.purge.max_lag_secs = {max:.0}s) for {:.0}s, the limit of archive.purge.max_lag_wait_secs",
                w.describe(),
                waited.as_secs_f64()
            ));
        }
        let why = format!("purge paused: {} (limit {max:.0}s)", w.describe());
        tracing::warn!("{why}; looking again in {backoff:?}");
        progress.set_message(&why);
        paused = true;
        std::thread::sleep(backoff.min(give_up - waited));
        backoff = (backoff * 2).min(Duration::from_secs(5));
    };
    if paused {
        *paused_secs += started.elapsed().as_secs_f64();
        progress.set_message("purge");
    }
    result
}
