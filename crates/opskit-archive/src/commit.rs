//! The commit step: both copies re-verified against the manifest; their size and sha256 go
//! into the journal, and the purge deletes only what the file with exactly that size and
//! sha256 holds. After this step nothing is undone.

use std::time::Instant;

use anyhow::Context as _;
use opskit_core::plan::{StepAction, StepContext, StepError, StepResult};

use crate::job::ArchiveJob;
use crate::staged::verify_local;
use crate::testhook::pause_point;

/// See the module docs.
pub struct CommitStep {
    job: ArchiveJob,
}

impl CommitStep {
    /// The commit of `job`'s archive.
    pub fn new(job: &ArchiveJob) -> CommitStep {
        CommitStep { job: job.clone() }
    }
}

fn failed(e: anyhow::Error) -> StepError {
    StepError::Failed(e)
}

impl StepAction for CommitStep {
    fn execute(&mut self, cx: &mut StepContext) -> StepResult {
        pause_point("commit", "start", 1);
        let started = Instant::now();
        let m = self.job.load_manifest().map_err(failed)?;
        if !m.segments.is_empty() {
            return commit_segmented(&self.job, &m, cx, started);
        }
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
        cx.record("sha256", &check.sha256);
        cx.record("compressed_bytes", check.bytes);
        cx.record("count", check.count);
        Ok(())
    }
}

/// A segmented archive: every segment was read back from the backup host and matched before
/// its documents were deleted; here the local file must still hash to the manifest and the
/// remote file must have its size at the final name.
fn commit_segmented(
    job: &ArchiveJob,
    m: &crate::staged::ArchiveManifest,
    cx: &mut StepContext,
    started: Instant,
) -> StepResult {
    crate::export::check_sha(&job.local_path(), m).map_err(failed)?;
    let host = job.backup_host().map_err(failed)?;
    let linked = cx
        .recorded("upload", "final_bytes")
        .and_then(|v| v.as_u64());
    // The upload step checked the size right after giving the final name in this run.
    let len = match linked {
        Some(n) if n == m.compressed_bytes => Some(n),
        _ => host.final_len(&m.file).map_err(failed)?,
    };
    if len != Some(m.compressed_bytes) {
        return Err(failed(anyhow::anyhow!(
            "{} on {} has {} bytes; the manifest says {}",
            crate::sftp::remote_path(host.remote_dir(), &m.file),
            host.describe(),
            len.map_or("no file:".into(), |l| l.to_string()),
            m.compressed_bytes
        )));
    }
    tracing::info!(
        count = m.count,
        sha256 = %m.sha256,
        segments = m.segments.len(),
        "local archive matches its manifest; each segment was verified on the backup host when uploaded"
    );
    cx.gauge("verify_seconds", started.elapsed().as_secs_f64());
    cx.record("sha256", &m.sha256);
    cx.record("compressed_bytes", m.compressed_bytes);
    cx.record("count", m.count);
    Ok(())
}
