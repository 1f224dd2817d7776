//! The upload step: temp name, verify, link; idempotent when the identical file is already
//! there (see [`crate::sftp`] for the protocol). A stop request ends it between two 1 MiB
//! writes; the temporary file is continued by the next run.

use std::time::Instant;

use anyhow::{Context as _, anyhow};
use opskit_core::plan::{StepAction, StepContext, StepError, StepResult};

use crate::job::ArchiveJob;
use crate::sftp::{UploadOutcome, remote_path};
use crate::staged::sha256_file;
use crate::testhook::pause_point;

/// See the module docs.
pub struct UploadStep {
    job: ArchiveJob,
}

impl UploadStep {
    /// The upload of `job`'s staged archive.
    pub fn new(job: &ArchiveJob) -> UploadStep {
        UploadStep { job: job.clone() }
    }
}

fn failed(e: anyhow::Error) -> StepError {
    StepError::Failed(e)
}

impl StepAction for UploadStep {
    fn precondition(&mut self, _cx: &mut StepContext) -> StepResult {
        pause_point("upload", "start", 1);
        let m = self.job.load_manifest().map_err(failed)?;
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
        let job = &self.job;
        let m = job.load_manifest().map_err(failed)?;
        let host = job.backup_host().map_err(failed)?;
        let mut progress = cx.progress("upload", Some(m.compressed_bytes), "bytes");
        let month = job.bounds.month.to_string();
        let mut sent = 0u64;
        let segmented = !m.segments.is_empty();
        if segmented && job.uploaded_sha().as_deref() == Some(m.sha256.as_str()) {
            tracing::info!(
                "{} already has its final name: the segmented export linked it once its {} segments were verified",
                remote_path(host.remote_dir(), &m.file),
                m.segments.len()
            );
            cx.record("remote", remote_path(host.remote_dir(), &m.file));
            cx.record("final_bytes", m.compressed_bytes);
            cx.record("sha256", &m.sha256);
            return Ok(());
        }
        let mut on_bytes = |n: u64| {
            progress.inc(n);
            sent += n;
            opskit_core::interrupt::check(
                || {
                    format!(
                        "during the upload ({sent} of {} bytes sent); nothing was deleted",
                        m.compressed_bytes
                    )
                },
                || format!("run `opskit archive run --month {month}` again to continue the upload"),
            )?;
            Ok(())
        };
        let outcome = if segmented {
            host.finish_segments(&job.local_path(), &m, &mut on_bytes)
        } else {
            host.upload(&job.local_path(), &m, &mut on_bytes)
        }
        .with_context(|| format!("uploading {} to {}", m.file, host.describe()))
        .map_err(failed)?;
        progress.finish();
        let secs = started.elapsed().as_secs_f64();
        match outcome {
            UploadOutcome::Uploaded if segmented => tracing::info!(
                "{} is whole: its {} verified segments ({} bytes) now have the final name",
                remote_path(host.remote_dir(), &m.file),
                m.segments.len(),
                m.compressed_bytes
            ),
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
        let marker = job.uploaded_marker();
        if let Some(dir) = marker.parent() {
            opskit_core::util::create_private_dir_all(dir).map_err(failed)?;
        }
        opskit_core::util::write_atomic(&marker, m.sha256.as_bytes(), 0o600).map_err(failed)?;
        cx.gauge("upload_seconds", secs);
        cx.record("remote", remote_path(host.remote_dir(), &m.file));
        // Checked by size after the link (and by sha256 when it was already there).
        cx.record("final_bytes", m.compressed_bytes);
        cx.record("sha256", &m.sha256);
        Ok(())
    }

    fn undo(&mut self, _cx: &mut StepContext) -> StepResult {
        if self.job.purge_began() {
            return Err(failed(anyhow!("the purge has begun: the upload is kept")));
        }
        if self.job.uploaded_sha().is_some() {
            // Linked to its final name: there is no temporary file left, and the final
            // archive is never removed.
            tracing::info!("the archive is at its final name on the backup host; it is kept");
            return Ok(());
        }
        let host = self.job.backup_host().map_err(failed)?;
        host.remove_temp(&self.job.file_name()).map_err(failed)
    }
}
