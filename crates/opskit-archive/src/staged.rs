//! The staged archive: `<name>.bson.gz` (concatenated BSON documents, one gzip member) plus
//! `<name>.bson.gz.manifest.json`, written so that a crash never leaves a file that looks
//! complete and is not.
//!
//! The writer streams: the exporting thread appends documents to a 1 MiB buffer; full buffers
//! go through a bounded channel to N compressor threads (pigz-style: each 1 MiB chunk becomes
//! one gzip member, so chunks compress in parallel), and one writer thread puts the members
//! back in order, hashes them and writes `<name>.partial`. A file of concatenated gzip members
//! is a valid gzip file (RFC 1952 §2.2): `gzip -d`, `pigz -d`, Go's `compress/gzip` (what
//! `mongorestore --gzip` uses) and flate2's `MultiGzDecoder` all read it whole. Memory is
//! bounded by the channels (a few MiB per thread), whatever the month's size. `finish` fsyncs,
//! renames `.partial` to the final name, fsyncs the directory and only then writes the
//! manifest atomically.
//!
//! Files are created with `O_EXCL | O_NOFOLLOW` and mode 0600 whatever the umask: a file or
//! symlink planted at the `.partial` name is removed (never written through), so the final
//! archive is always a regular file this process wrote. A writer that does not finish (an
//! export error, a full disk, a panic) removes its `.partial`, and only if it is still the
//! file it created.

use std::fs::File;
use std::io::{BufReader, Read, Seek};
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::bounds::MonthBounds;
use crate::rawbson::DocumentReader;
pub use crate::writer::ArchiveWriter;

/// The mode of staged archives and manifests.
pub const FILE_MODE: u32 = 0o600;

/// Which file a path names: device and inode, so an undo removes only the file its own run
/// created (a file put at the same name since, by another run or a person, is kept).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileIdentity {
    /// `st_dev`.
    pub dev: u64,
    /// `st_ino`.
    pub ino: u64,
}

impl FileIdentity {
    /// The identity of what `path` names (the link itself for a symlink), if anything.
    pub fn of_path(path: &Path) -> Option<FileIdentity> {
        std::fs::symlink_metadata(path).ok().map(|m| FileIdentity {
            dev: m.dev(),
            ino: m.ino(),
        })
    }

    /// The identity of an open file.
    pub fn of_file(f: &File) -> std::io::Result<FileIdentity> {
        let m = f.metadata()?;
        Ok(FileIdentity {
            dev: m.dev(),
            ino: m.ino(),
        })
    }
}

/// Removes `path` only when it is still the file `expected`; returns whether it did.
pub fn remove_if_same(path: &Path, expected: FileIdentity) -> anyhow::Result<bool> {
    match FileIdentity::of_path(path) {
        Some(found) if found == expected => {
            std::fs::remove_file(path).with_context(|| format!("removing {}", path.display()))?;
            Ok(true)
        }
        _ => Ok(false),
    }
}

/// Creates `path` as a new private file: whatever sits at that name (a leftover of a crashed
/// run, a planted file or symlink) is unlinked first, then the file is created with
/// `O_EXCL | O_NOFOLLOW`, so nothing is ever written through a link.
pub fn create_fresh(path: &Path) -> anyhow::Result<File> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => bail!("{} is a directory", path.display()),
        Ok(_) => std::fs::remove_file(path)
            .with_context(|| format!("removing the stale {}", path.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("inspecting {}", path.display())),
    }
    let f = opskit_core::util::create_new_private(path, FILE_MODE)
        .with_context(|| format!("creating {}", path.display()))?;
    f.set_permissions(std::fs::Permissions::from_mode(FILE_MODE))
        .with_context(|| format!("setting the mode of {}", path.display()))?;
    Ok(f)
}

/// The format tag written in every manifest.
pub const FORMAT: &str = "bson-concat+gzip/v1";

pub(crate) const CHUNK: usize = 1 << 20;

/// What an archive holds, written beside it and uploaded with it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArchiveManifest {
    /// [`FORMAT`].
    pub format: String,
    /// The archive's file name (no directory).
    pub file: String,
    /// The source without secrets (`mysql://root@127.0.0.1:3306/`).
    pub source: String,
    /// Database or schema.
    pub database: String,
    /// Collection or table.
    pub collection: String,
    /// The date field.
    pub date_field: String,
    /// The id field (`_id` or the primary key column).
    pub id_field: String,
    /// `YYYY-MM`.
    pub month: String,
    /// Which pass over the month (0 = the main run, k = the k-th late pass).
    pub pass: u32,
    /// The half-open bounds, strings and instants.
    pub bounds: MonthBounds,
    /// Documents in the file.
    pub count: u64,
    /// Uncompressed bytes (the BSON stream).
    pub raw_bytes: u64,
    /// Bytes of the `.bson.gz` file.
    pub compressed_bytes: u64,
    /// sha256 of the `.bson.gz` file, hex.
    pub sha256: String,
    /// Smallest date value in the file.
    pub min_date: Option<String>,
    /// Largest date value in the file.
    pub max_date: Option<String>,
    /// The first document's id (relaxed Extended JSON).
    pub first_id: Option<serde_json::Value>,
    /// The last document's id (relaxed Extended JSON).
    pub last_id: Option<serde_json::Value>,
    /// When the export finished (UTC).
    pub created_at: chrono::DateTime<chrono::Utc>,
    /// The opskit version that wrote it.
    pub opskit_version: String,
    /// How to restore it (the same words as `opskit archive restore --help` and the runbook).
    pub restore: Vec<String>,
    /// The segments of a segmented archive, in file order (empty for a classic one): each
    /// was appended to the remote file, read back and matched before its documents were
    /// deleted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub segments: Vec<SegmentEntry>,
}

/// One segment of a segmented archive: where its bytes lie, their sha256, and what it holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SegmentEntry {
    /// 1, 2, … in file order.
    pub index: u32,
    /// How many documents of the file come before it.
    pub first_doc: u64,
    /// Documents in it.
    pub docs: u64,
    /// Uncompressed bytes of its documents.
    pub raw_bytes: u64,
    /// Its first byte in the file.
    pub offset: u64,
    /// Its length in bytes.
    pub len: u64,
    /// sha256 of its bytes, hex.
    pub sha256: String,
    /// Smallest date value in it.
    pub min_date: Option<String>,
    /// Largest date value in it.
    pub max_date: Option<String>,
    /// Its first document's id (relaxed Extended JSON).
    pub first_id: Option<serde_json::Value>,
    /// Its last document's id (relaxed Extended JSON).
    pub last_id: Option<serde_json::Value>,
}

impl ArchiveManifest {
    /// The manifest path for an archive path.
    pub fn path_for(archive: &Path) -> PathBuf {
        let mut s = archive.as_os_str().to_owned();
        s.push(".manifest.json");
        PathBuf::from(s)
    }

    /// Reads and parses a manifest file.
    pub fn load(path: &Path) -> anyhow::Result<ArchiveManifest> {
        if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
            bail!(
                "manifest {} is a symlink; refusing to trust it",
                path.display()
            );
        }
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading manifest {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("parsing manifest {}", path.display()))
    }

    /// The manifest as pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("manifests serialize") + "\n"
    }
}

/// Identity of the archive being written, for the manifest.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ArchiveIdentity {
    /// See [`ArchiveManifest::source`].
    pub source: String,
    /// See [`ArchiveManifest::database`].
    pub database: String,
    /// See [`ArchiveManifest::collection`].
    pub collection: String,
    /// See [`ArchiveManifest::date_field`].
    pub date_field: String,
    /// See [`ArchiveManifest::id_field`].
    pub id_field: String,
    /// See [`ArchiveManifest::pass`].
    pub pass: u32,
    /// See [`ArchiveManifest::bounds`].
    pub bounds: MonthBounds,
}

/// `<path>.partial`.
pub fn partial_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".partial");
    PathBuf::from(s)
}

/// sha256 (hex) and size of a file, read in 1 MiB blocks.
pub fn sha256_file(path: &Path) -> anyhow::Result<(String, u64)> {
    let mut f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    sha256_open(&mut f, path)
}

/// What a full check of a local archive found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalCheck {
    /// sha256 of the file.
    pub sha256: String,
    /// Its size.
    pub bytes: u64,
    /// Documents decoded from it.
    pub count: u64,
}

/// Checks a local archive against its manifest: size and sha256 of the file, and every
/// document decoded (gzip CRC included) and counted. `Err` names what differs.
pub fn verify_local(path: &Path, manifest: &ArchiveManifest) -> anyhow::Result<LocalCheck> {
    let (sha256, bytes) = sha256_file(path)?;
    if bytes != manifest.compressed_bytes || sha256 != manifest.sha256 {
        bail!(
            "{} does not match its manifest: {bytes} bytes sha256 {sha256}, the manifest says {} bytes sha256 {}",
            path.display(),
            manifest.compressed_bytes,
            manifest.sha256
        );
    }
    let count = count_documents(path)?;
    if count != manifest.count {
        bail!(
            "{} holds {count} documents, its manifest says {}",
            path.display(),
            manifest.count
        );
    }
    Ok(LocalCheck {
        sha256,
        bytes,
        count,
    })
}

/// Opens an archive for reading documents back.
pub fn open_documents(path: &Path) -> anyhow::Result<DocumentReader<impl Read + use<>>> {
    let f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    Ok(documents_of(f))
}

/// Reads documents from an already open archive, from its start.
pub fn documents_of(f: File) -> DocumentReader<impl Read> {
    DocumentReader::new(flate2::read::MultiGzDecoder::new(BufReader::with_capacity(
        CHUNK, f,
    )))
}

/// sha256 (hex) and size of an open file, read from its start; the file is left at its start.
pub fn sha256_open(f: &mut File, name: &Path) -> anyhow::Result<(String, u64)> {
    f.rewind()
        .with_context(|| format!("seeking in {}", name.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0u64;
    loop {
        let n = f
            .read(&mut buf)
            .with_context(|| format!("reading {}", name.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        total += n as u64;
    }
    f.rewind()
        .with_context(|| format!("seeking in {}", name.display()))?;
    Ok((hex::encode(hasher.finalize()), total))
}

/// Decodes every document of an archive and counts them.
pub fn count_documents(path: &Path) -> anyhow::Result<u64> {
    let mut r = open_documents(path)?;
    while r
        .next_document()
        .with_context(|| format!("decoding {}", path.display()))?
        .is_some()
    {}
    Ok(r.count)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::rawbson::DocumentWriter;
    use crate::source::{Record, RecordSink};
    use bson::Bson;

    /// The identity of a test archive of January 2024.
    pub(crate) fn identity() -> ArchiveIdentity {
        ArchiveIdentity {
            source: "mysql://root@127.0.0.1:3306/".into(),
            database: "test".into(),
            collection: "user_logs".into(),
            date_field: "create_on".into(),
            id_field: "id".into(),
            pass: 0,
            bounds: MonthBounds::new("2024-01".parse().unwrap(), chrono_tz::Asia::Shanghai)
                .unwrap(),
        }
    }

    fn write(dir: &Path, n: i64) -> (PathBuf, ArchiveManifest) {
        let path = dir.join("test.user_logs.2024-01.bson.gz");
        let mut w = ArchiveWriter::create(&path, 6, 2, identity()).unwrap();
        let mut doc = DocumentWriter::default();
        for i in 0..n {
            let date = format!("2024-01-{:02} 00:00:00", 1 + (i % 28));
            doc.begin();
            doc.int64("id", i);
            doc.string("create_on", &date);
            doc.string("msg", &"x".repeat(150));
            let id = Bson::Int64(i);
            w.accept(Record {
                id: &id,
                date: &date,
                raw: doc.finish(),
                fingerprint: None,
            })
            .unwrap();
        }
        let m = w.finish().unwrap();
        (path, m)
    }

    #[test]
    fn finished_archive_matches_its_manifest() {
        let dir = tempfile::tempdir().unwrap();
        let (path, m) = write(dir.path(), 20_000);
        assert!(!partial_path(&path).exists());
        assert_eq!(m.count, 20_000);
        assert_eq!(m.min_date.as_deref(), Some("2024-01-01 00:00:00"));
        assert_eq!(m.max_date.as_deref(), Some("2024-01-28 00:00:00"));
        assert_eq!(m.first_id, Some(serde_json::json!(0)));
        assert_eq!(m.last_id, Some(serde_json::json!(19_999)));
        let check = verify_local(&path, &m).unwrap();
        assert_eq!(check.count, 20_000);
        assert_eq!(
            ArchiveManifest::load(&ArchiveManifest::path_for(&path)).unwrap(),
            m
        );
        // gzip -t agrees that this is one valid gzip stream.
        let st = std::process::Command::new("gzip")
            .arg("-t")
            .arg(&path)
            .status();
        if let Ok(st) = st {
            assert!(st.success());
        }
    }

    #[test]
    fn a_changed_byte_fails_verification() {
        let dir = tempfile::tempdir().unwrap();
        let (path, m) = write(dir.path(), 100);
        let mut bytes = std::fs::read(&path).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        let e = verify_local(&path, &m).unwrap_err().to_string();
        assert!(e.contains("does not match its manifest"), "{e}");
    }

    #[test]
    fn staged_files_are_private_regular_files_even_with_a_planted_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"keep me").unwrap();
        let path = dir.path().join("test.user_logs.2024-01.bson.gz");
        std::os::unix::fs::symlink(&victim, partial_path(&path)).unwrap();
        // SAFETY: umask only changes this process's file creation mask.
        let old = unsafe { libc::umask(0) };
        let (path, m) = write(dir.path(), 10);
        unsafe { libc::umask(old) };
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep me");
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert!(meta.file_type().is_file());
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let mm = std::fs::metadata(ArchiveManifest::path_for(&path)).unwrap();
        assert_eq!(mm.permissions().mode() & 0o777, 0o600);
        verify_local(&path, &m).unwrap();
    }

    #[test]
    fn an_unfinished_writer_leaves_no_partial_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.bson.gz");
        let w = ArchiveWriter::create(&path, 1, 1, identity()).unwrap();
        assert!(partial_path(&path).exists());
        drop(w);
        assert!(!partial_path(&path).exists());
        // A file put at the partial name by someone else is not ours to remove.
        let w = ArchiveWriter::create(&path, 1, 1, identity()).unwrap();
        std::fs::remove_file(partial_path(&path)).unwrap();
        std::fs::write(partial_path(&path), b"other").unwrap();
        drop(w);
        assert_eq!(std::fs::read(partial_path(&path)).unwrap(), b"other");
    }

    #[test]
    fn an_empty_month_is_a_valid_empty_archive() {
        let dir = tempfile::tempdir().unwrap();
        let (path, m) = write(dir.path(), 0);
        assert_eq!(m.count, 0);
        assert_eq!(verify_local(&path, &m).unwrap().count, 0);
    }
}
