//! `opskit archive restore` and `opskit archive verify`: put an archive's documents back, or
//! check an archive against its manifest.

use std::path::Path;

use anyhow::{Context as _, bail};
use opskit_core::config::ArchiveConfig;

use crate::source;
use crate::staged::{ArchiveManifest, LocalCheck, verify_local};

/// Documents inserted per statement during a restore.
const RESTORE_BATCH: usize = 1000;

/// What a restore did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RestoreReport {
    /// Documents in the archive.
    pub documents: u64,
    /// Documents inserted.
    pub inserted: u64,
    /// Documents already present (kept as they are).
    pub already_present: u64,
}

/// Loads the manifest beside `file` and checks the file against it.
pub fn verify_file(file: &Path) -> anyhow::Result<(ArchiveManifest, LocalCheck)> {
    let manifest = ArchiveManifest::load(&ArchiveManifest::path_for(file))?;
    let check = verify_local(file, &manifest)?;
    Ok((manifest, check))
}

/// Restores `file` (after verifying it) into `target`, a `mysql://` or `mongodb://` URI of
/// the same kind of source it came from. The database and table default to the manifest's.
pub fn restore(
    file: &Path,
    target: &str,
    base: &ArchiveConfig,
    time_zone: &str,
) -> anyhow::Result<RestoreReport> {
    let (manifest, check) = verify_file(file)?;
    let mut config = base.clone();
    config.source_uri = target.to_string();
    config.database = manifest
        .database
        .parse()
        .map_err(|e| anyhow::anyhow!("manifest database: {e}"))?;
    config.collection = manifest
        .collection
        .parse()
        .map_err(|e| anyhow::anyhow!("manifest collection: {e}"))?;
    if let Err((key, reason)) = config.check() {
        bail!("--target: {reason} ({key})");
    }
    let mut target_source = source::open(&config, time_zone)?;
    target_source.ping().with_context(|| {
        format!(
            "the restore target {} does not answer",
            target_source.describe()
        )
    })?;
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
    Ok(RestoreReport {
        documents: check.count,
        inserted,
        already_present: check.count - inserted.min(check.count),
    })
}
