//! `opskit archive restore` and `opskit archive verify`: put an archive's documents back, or
//! check an archive against its manifest.
//!
//! A restore holds the month's run lock (no run of that month can purge while documents go
//! back) and, when it restores into the very source the archive came from, first marks the
//! month restored: scheduled runs then skip it and say so, and archiving it again is an
//! explicit `opskit archive run --month YYYY-MM --rearchive`.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use opskit_core::config::Config;
use serde::{Deserialize, Serialize};

use crate::job::ArchiveJob;
use crate::lock::MonthLock;
use crate::source;
use crate::staged::{ArchiveManifest, LocalCheck, verify_local};

/// Documents inserted per statement during a restore.
const RESTORE_BATCH: usize = 1000;

/// The one way to restore an archive, for every source (MongoDB included): the same words in
/// `opskit archive restore --help`, the runbook and every manifest.
pub const HOWTO: &str = "opskit archive restore --file <archive.bson.gz> --target <mongodb://USER@HOST:PORT/ or mysql://USER@HOST:PORT/>";

/// Why restores go through opskit (printed with [`HOWTO`]).
pub const WHY: &str = "It verifies the archive against its manifest, holds the month's run lock, keeps documents already present, and marks the month restored so that scheduled runs do not archive and delete it again (archive it again with: opskit archive run --month YYYY-MM --rearchive). mongorestore would load the file too but does none of this: do not use it to restore.";

/// The restore instructions of a manifest for `file`.
pub fn instructions(file: &str) -> Vec<String> {
    vec![HOWTO.replace("<archive.bson.gz>", file), WHY.to_string()]
}

/// What a restore did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RestoreReport {
    /// Documents in the archive.
    pub documents: u64,
    /// Documents inserted.
    pub inserted: u64,
    /// Documents already present (kept as they are).
    pub already_present: u64,
    /// The restored mark written (when the target is the archived source).
    pub marked: Option<PathBuf>,
}

/// The mark a restore into the archived source leaves in the state directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoredMark {
    /// When the restore started (RFC 3339).
    pub restored_at: String,
    /// The archive restored.
    pub file: String,
    /// The target, without secrets.
    pub target: String,
}

impl RestoredMark {
    /// The mark of `job`'s month, if there is one.
    pub fn read(job: &ArchiveJob) -> Option<RestoredMark> {
        let text = std::fs::read_to_string(job.restored_mark()).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Removes the mark (the operator asked to archive the month again).
    pub fn clear(job: &ArchiveJob) -> anyhow::Result<()> {
        match std::fs::remove_file(job.restored_mark()) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).with_context(|| format!("removing {}", job.restored_mark().display())),
        }
    }
}

/// Loads the manifest beside `file` and checks the file against it.
pub fn verify_file(file: &Path) -> anyhow::Result<(ArchiveManifest, LocalCheck)> {
    let manifest = ArchiveManifest::load(&ArchiveManifest::path_for(file))?;
    let check = verify_local(file, &manifest)?;
    Ok((manifest, check))
}

/// `scheme://user@rest` → `scheme://rest`: the same server whoever logs in.
fn without_user(described: &str) -> String {
    match described.split_once("://") {
        Some((scheme, rest)) => {
            let rest = rest.split_once('@').map_or(rest, |(_, r)| r);
            format!("{scheme}://{rest}")
        }
        None => described.to_string(),
    }
}

/// Restores `file` (after verifying it) into `target`, a `mysql://` or `mongodb://` URI of
/// the same kind of source it came from, holding the month's lock. The database and table are
/// the manifest's; the password comes from `archive.source_password_file`.
pub fn restore(
    file: &Path,
    target: &str,
    config: &Config,
    state_dir: &Path,
) -> anyhow::Result<RestoreReport> {
    let (manifest, check) = verify_file(file)?;
    let mut cfg = config.clone();
    cfg.archive.source_uri = target.to_string();
    cfg.archive.database = manifest
        .database
        .parse()
        .map_err(|e| anyhow::anyhow!("manifest database: {e}"))?;
    cfg.archive.collection = manifest
        .collection
        .parse()
        .map_err(|e| anyhow::anyhow!("manifest collection: {e}"))?;
    if let Err((key, reason)) = cfg.archive.check() {
        return Err(opskit_core::error::usage(format!(
            "--target: {reason} ({key})"
        )));
    }
    let job = ArchiveJob::new(&cfg, Some(manifest.bounds.month), state_dir)?;
    let _lock = MonthLock::acquire(&job, "restore")?;
    let tz = config.general.timezone.tz();
    let mut target_source = source::open(&cfg.archive, tz.name())?;
    target_source.ping().with_context(|| {
        format!(
            "the restore target {} does not answer",
            target_source.describe()
        )
    })?;
    let marked = if without_user(&target_source.describe()) == without_user(&manifest.source) {
        let mark = RestoredMark {
            restored_at: chrono::Utc::now().to_rfc3339(),
            file: file.display().to_string(),
            target: target_source.describe(),
        };
        let path = job.restored_mark();
        if let Some(dir) = path.parent() {
            opskit_core::util::create_private_dir_all(dir)?;
        }
        // Marked before the first insert: even a restore that stops half-way is protected.
        opskit_core::util::write_atomic(
            &path,
            (serde_json::to_string_pretty(&mark).expect("marks serialize") + "\n").as_bytes(),
            0o600,
        )?;
        tracing::info!(
            "{} is marked restored ({}): scheduled runs skip it",
            job.bounds.month,
            path.display()
        );
        Some(path)
    } else {
        tracing::info!(
            "{} is not the archived source {}: the month is not marked restored",
            target_source.describe(),
            manifest.source
        );
        None
    };
    let mut reader = crate::staged::open_documents(file)?;
    let mut batch: Vec<bson::RawDocumentBuf> = Vec::with_capacity(RESTORE_BATCH);
    let mut inserted = 0;
    loop {
        let doc = reader.next_document()?;
        let end = doc.is_none();
        if let Some(doc) = doc {
            batch.push(doc.to_owned());
        }
        if batch.len() >= RESTORE_BATCH || (end && !batch.is_empty()) {
            let refs: Vec<&bson::RawDocument> = batch.iter().map(|d| d.as_ref()).collect();
            inserted += target_source.insert_documents(&refs)?;
            batch.clear();
        }
        if end {
            break;
        }
    }
    if inserted > check.count {
        bail!(
            "{inserted} documents inserted from an archive of {}",
            check.count
        );
    }
    Ok(RestoreReport {
        documents: check.count,
        inserted,
        already_present: check.count - inserted,
        marked,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_server_is_recognised_whoever_logs_in() {
        assert_eq!(
            without_user("mysql://restorer@127.0.0.1:3306/test.user_logs"),
            without_user("mysql://root@127.0.0.1:3306/test.user_logs")
        );
        assert_ne!(
            without_user("mysql://root@127.0.0.1:3307/test.user_logs"),
            without_user("mysql://root@127.0.0.1:3306/test.user_logs")
        );
        assert_eq!(
            without_user("mongodb://db1:27017/test.user_logs"),
            "mongodb://db1:27017/test.user_logs"
        );
    }

    #[test]
    fn the_instructions_are_one_way_for_every_source() {
        let i = instructions("test.user_logs.2024-01.bson.gz");
        assert!(i[0].starts_with(
            "opskit archive restore --file test.user_logs.2024-01.bson.gz --target <mongodb://"
        ));
        assert!(i[1].contains("do not use it to restore"));
    }
}
