//! The archive writer: records in, `<name>.partial` out, then the final name and manifest.
//!
//! The exporting thread appends documents to a 1 MiB buffer; full buffers go through a bounded
//! channel to N compressor threads (pigz-style: each chunk becomes one gzip member), and one
//! writer thread puts the members back in order, hashes them and writes the file. A segmented
//! export ends a segment with [`ArchiveWriter::end_segment`]: every member of the segment is on
//! disk and fsynced, and the segment's offset, length and sha256 come back, so it can be
//! appended to the remote copy and checked there before its documents are deleted.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

use anyhow::{Context as _, bail};
use bson::Bson;
use sha2::{Digest, Sha256};

use crate::source::{Record, RecordSink};
use crate::staged::{
    ArchiveIdentity, ArchiveManifest, CHUNK, FILE_MODE, FORMAT, FileIdentity, create_fresh,
    partial_path, remove_if_same,
};

/// A writer that counts and hashes what passes through it.
struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    bytes: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

struct Compressed {
    sha256: String,
    bytes: u64,
    /// Every segment ended, in order.
    segments: Vec<SegmentBytes>,
}

/// Where one segment lies in the local file, and its sha256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentBytes {
    /// Its first byte.
    pub offset: u64,
    /// Its length in bytes.
    pub len: u64,
    /// sha256 of those bytes, hex.
    pub sha256: String,
}

/// What the writer thread receives: compressed members, and requests to end a segment once
/// every member sent before the request is written.
enum ToWriter {
    Member(u64, Vec<u8>),
    SegmentEnd {
        after: u64,
        reply: SyncSender<SegmentBytes>,
    },
}

/// Streams records into `<path>.partial`; [`ArchiveWriter::finish`] makes it final.
pub struct ArchiveWriter {
    path: PathBuf,
    partial: PathBuf,
    partial_id: FileIdentity,
    finished: bool,
    identity: ArchiveIdentity,
    buf: Vec<u8>,
    tx: Option<SyncSender<(u64, Vec<u8>)>>,
    to_writer: Option<SyncSender<ToWriter>>,
    seq: u64,
    recycled: Receiver<Vec<u8>>,
    worker: Option<JoinHandle<anyhow::Result<Compressed>>>,
    count: u64,
    raw_bytes: u64,
    min_date: Option<String>,
    max_date: Option<String>,
    first_id: Option<Bson>,
    last_id: Option<Bson>,
    on_chunk: Option<Box<dyn FnMut(u64, u64) + Send>>,
    segments: Vec<crate::staged::SegmentEntry>,
}

impl ArchiveWriter {
    /// Creates `<path>.partial` afresh (see [`create_fresh`]) and starts `threads` compressor
    /// threads (0: one per core) at gzip `level`.
    pub fn create(
        path: &Path,
        level: u32,
        threads: usize,
        identity: ArchiveIdentity,
    ) -> anyhow::Result<Self> {
        let partial = partial_path(path);
        let file = create_fresh(&partial)?;
        let partial_id = FileIdentity::of_file(&file)
            .with_context(|| format!("inspecting {}", partial.display()))?;
        let threads = if threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            threads
        };
        let (tx, rx) = sync_channel::<(u64, Vec<u8>)>(threads + 2);
        let (back_tx, recycled) = sync_channel::<Vec<u8>>(threads + 4);
        let (member_tx, member_rx) = sync_channel::<ToWriter>(threads + 2);
        let rx = std::sync::Arc::new(std::sync::Mutex::new(rx));
        for i in 0..threads {
            let (rx, member_tx, back_tx) = (rx.clone(), member_tx.clone(), back_tx.clone());
            std::thread::Builder::new()
                .name(format!("archive-gzip-{i}"))
                .spawn(move || compress_members(&rx, &member_tx, &back_tx, level))
                .context("starting a compressor thread")?;
        }
        let to_writer = Some(member_tx);
        let name = partial.display().to_string();
        let worker = std::thread::Builder::new()
            .name("archive-write".into())
            .spawn(move || write_members(member_rx, file, &name))
            .context("starting the archive writer thread")?;
        Ok(ArchiveWriter {
            path: path.to_path_buf(),
            partial,
            partial_id,
            finished: false,
            identity,
            buf: Vec::with_capacity(CHUNK + 64 * 1024),
            tx: Some(tx),
            to_writer,
            seq: 0,
            recycled,
            worker: Some(worker),
            count: 0,
            raw_bytes: 0,
            min_date: None,
            max_date: None,
            first_id: None,
            last_id: None,
            on_chunk: None,
            segments: Vec::new(),
        })
    }

    /// Calls `f(documents, raw_bytes)` each time a chunk is handed to the compressor
    /// (progress, test pause points).
    pub fn on_chunk(&mut self, f: impl FnMut(u64, u64) + Send + 'static) {
        self.on_chunk = Some(Box::new(f));
    }

    /// Documents accepted so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    fn send_chunk(&mut self) -> anyhow::Result<()> {
        let next = self
            .recycled
            .try_recv()
            .map(|mut v| {
                v.clear();
                v
            })
            .unwrap_or_else(|_| Vec::with_capacity(CHUNK + 64 * 1024));
        let chunk = std::mem::replace(&mut self.buf, next);
        let seq = self.seq;
        self.seq += 1;
        let sent = self
            .tx
            .as_ref()
            .map(|tx| tx.send((seq, chunk)).is_ok())
            .unwrap_or(false);
        if !sent {
            // The compressor stopped: its error says why (disk full, I/O error).
            return Err(self
                .join_worker()
                .err()
                .unwrap_or_else(|| anyhow::anyhow!("the compressor thread stopped unexpectedly")));
        }
        if let Some(f) = self.on_chunk.as_mut() {
            f(self.count, self.raw_bytes);
        }
        Ok(())
    }

    fn join_worker(&mut self) -> anyhow::Result<Compressed> {
        self.tx.take();
        self.to_writer.take();
        match self.worker.take() {
            Some(h) => h
                .join()
                .map_err(|_| anyhow::anyhow!("the compressor thread panicked"))?,
            None => bail!("the compressor thread already stopped"),
        }
    }

    /// Ends the current segment without waiting for it: once every document accepted so far
    /// is compressed, written and fsynced, the returned channel gets where the segment's bytes
    /// lie (from the end of the previous segment) and their sha256; the channel closes
    /// without an answer if writing fails. An empty file gets the empty gzip member first, so
    /// a segment is never zero bytes.
    pub fn end_segment(&mut self) -> anyhow::Result<Receiver<SegmentBytes>> {
        if !self.buf.is_empty() {
            self.send_chunk()?;
        }
        let (reply, answer) = sync_channel(1);
        let asked = self.to_writer.as_ref().is_some_and(|tx| {
            tx.send(ToWriter::SegmentEnd {
                after: self.seq,
                reply,
            })
            .is_ok()
        });
        if !asked {
            return Err(self.join_worker().err().unwrap_or_else(|| {
                anyhow::anyhow!("the archive writer thread stopped unexpectedly")
            }));
        }
        Ok(answer)
    }

    /// Stops writing and keeps `<path>.partial` as it is on disk (every ended segment is
    /// complete and fsynced): once a segment's documents were deleted, this file is a copy of
    /// them and must survive the failure. Returns the partial file's path.
    pub fn keep_partial(mut self) -> PathBuf {
        let _ = self.join_worker();
        self.finished = true;
        self.partial.clone()
    }

    /// Like [`ArchiveWriter::finish`], with the segments the manifest lists (their offset,
    /// length and sha256 are filled in from what the writer thread wrote).
    pub fn finish_segments(
        mut self,
        segments: Vec<crate::staged::SegmentEntry>,
    ) -> anyhow::Result<ArchiveManifest> {
        self.segments = segments;
        self.finish()
    }

    /// Flushes, fsyncs, renames `.partial` to the final name, fsyncs the directory and
    /// writes the manifest atomically. Returns the manifest.
    pub fn finish(mut self) -> anyhow::Result<ArchiveManifest> {
        if !self.buf.is_empty() {
            self.send_chunk()?;
        }
        let compressed = self.join_worker()?;
        if !self.segments.is_empty() {
            if self.segments.len() != compressed.segments.len() {
                bail!(
                    "internal: {} segments ended but {} written",
                    self.segments.len(),
                    compressed.segments.len()
                );
            }
            for (entry, bytes) in self.segments.iter_mut().zip(&compressed.segments) {
                entry.offset = bytes.offset;
                entry.len = bytes.len;
                entry.sha256 = bytes.sha256.clone();
            }
        }
        if FileIdentity::of_path(&self.partial) != Some(self.partial_id) {
            bail!(
                "{} was replaced while the export wrote it; not using it",
                self.partial.display()
            );
        }
        std::fs::rename(&self.partial, &self.path).with_context(|| {
            format!(
                "renaming {} to {}",
                self.partial.display(),
                self.path.display()
            )
        })?;
        if let Some(dir) = self.path.parent() {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .with_context(|| format!("fsync of directory {}", dir.display()))?;
        }
        let file = self
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let manifest = ArchiveManifest::describe(
            &self.identity,
            file,
            Contents {
                count: self.count,
                raw_bytes: self.raw_bytes,
                compressed_bytes: compressed.bytes,
                sha256: compressed.sha256,
                min_date: self.min_date.take(),
                max_date: self.max_date.take(),
                first_id: self.first_id.take().map(|b| b.into_relaxed_extjson()),
                last_id: self.last_id.take().map(|b| b.into_relaxed_extjson()),
            },
            std::mem::take(&mut self.segments),
        );
        // The archive is at its final name now: from here on it is not a partial file.
        self.finished = true;
        opskit_core::util::write_atomic(
            &ArchiveManifest::path_for(&self.path),
            manifest.to_json().as_bytes(),
            FILE_MODE,
        )?;
        Ok(manifest)
    }

    /// Stops writing and removes the partial file (used when the export fails).
    pub fn abandon(self) {
        drop(self);
    }
}

impl Drop for ArchiveWriter {
    /// An unfinished archive (export error, full disk, stop request, panic) leaves nothing
    /// behind: the `.partial` is removed, if it is still the file this writer created.
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let _ = self.join_worker();
        match remove_if_same(&self.partial, self.partial_id) {
            Ok(true) => tracing::debug!("removed the unfinished {}", self.partial.display()),
            Ok(false) => {}
            Err(e) => tracing::warn!("{e:#}"),
        }
    }
}

impl RecordSink for ArchiveWriter {
    fn accept(&mut self, record: Record<'_>) -> anyhow::Result<()> {
        self.buf.extend_from_slice(record.raw);
        self.count += 1;
        self.raw_bytes += record.raw.len() as u64;
        if self.first_id.is_none() {
            self.first_id = Some(record.id.clone());
        }
        // Ids are cheap to clone except for huge strings; the last one is kept for the manifest.
        self.last_id = Some(record.id.clone());
        if self.min_date.as_deref().is_none_or(|m| record.date < m) {
            self.min_date = Some(record.date.to_string());
        }
        if self.max_date.as_deref().is_none_or(|m| record.date > m) {
            self.max_date = Some(record.date.to_string());
        }
        if self.buf.len() >= CHUNK {
            self.send_chunk()?;
        }
        Ok(())
    }
}

/// A compressor thread: each chunk becomes one complete gzip member, compressed in one call
/// by libdeflate (the chunk is whole in memory: no streaming state is needed).
fn compress_members(
    rx: &std::sync::Mutex<Receiver<(u64, Vec<u8>)>>,
    out: &SyncSender<ToWriter>,
    back: &SyncSender<Vec<u8>>,
    level: u32,
) {
    let mut deflate = libdeflater::CompressionLvl::new(level as i32)
        .ok()
        .map(libdeflater::Compressor::new);
    loop {
        let job = match rx.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        let Ok((seq, chunk)) = job else { return };
        let member = match deflate.as_mut() {
            Some(c) => {
                let mut member = vec![0u8; c.gzip_compress_bound(chunk.len())];
                match c.gzip_compress(&chunk, &mut member) {
                    Ok(n) => {
                        member.truncate(n);
                        member
                    }
                    // The bound always fits; zlib would do it anyway.
                    Err(_) => gzip_member(&chunk, level),
                }
            }
            None => gzip_member(&chunk, level),
        };
        let _ = back.try_send(chunk);
        if out.send(ToWriter::Member(seq, member)).is_err() {
            return;
        }
    }
}

/// `chunk` as one gzip member, by zlib.
fn gzip_member(chunk: &[u8], level: u32) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(
        Vec::with_capacity(chunk.len() / 3 + 1024),
        flate2::Compression::new(level),
    );
    // Writing into a Vec cannot fail.
    gz.write_all(chunk)
        .and_then(|()| gz.finish())
        .unwrap_or_default()
}

/// The empty gzip member: what an empty month's file (or first segment) holds.
fn empty_member() -> Vec<u8> {
    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(1))
        .finish()
        .unwrap_or_default()
}

/// The writer thread: members back in order, hashed, written, fsynced; a segment end is
/// answered once every member before it is on disk.
fn write_members(rx: Receiver<ToWriter>, file: File, name: &str) -> anyhow::Result<Compressed> {
    let mut out = HashingWriter {
        inner: BufWriter::with_capacity(CHUNK, file),
        hasher: Sha256::new(),
        bytes: 0,
    };
    let mut pending = std::collections::BTreeMap::new();
    let mut ends: Vec<(u64, SyncSender<SegmentBytes>)> = Vec::new();
    let mut segment = Sha256::new();
    let mut segment_start = 0u64;
    let mut segments = Vec::new();
    let mut next = 0u64;
    for msg in rx {
        match msg {
            ToWriter::Member(seq, member) => {
                pending.insert(seq, member);
            }
            ToWriter::SegmentEnd { after, reply } => ends.push((after, reply)),
        }
        // Members in order; each segment end is answered exactly once every member before
        // it is written (several ends may be pending: the export does not wait for them).
        loop {
            while let Some(i) = ends.iter().position(|(after, _)| *after == next) {
                let (_, reply) = ends.swap_remove(i);
                if out.bytes == 0 {
                    let empty = empty_member();
                    out.write_all(&empty)
                        .with_context(|| format!("writing {name}"))?;
                    segment.update(&empty);
                }
                out.flush().with_context(|| format!("writing {name}"))?;
                out.inner
                    .get_ref()
                    .sync_data()
                    .with_context(|| format!("fsync of {name}"))?;
                let bytes = SegmentBytes {
                    offset: segment_start,
                    len: out.bytes - segment_start,
                    sha256: hex::encode(segment.finalize_reset()),
                };
                segment_start = out.bytes;
                segments.push(bytes.clone());
                let _ = reply.send(bytes);
            }
            let Some(member) = pending.remove(&next) else {
                break;
            };
            out.write_all(&member)
                .with_context(|| format!("writing {name}"))?;
            segment.update(&member);
            next += 1;
        }
    }
    if !pending.is_empty() {
        bail!("writing {name}: a compressor thread stopped early");
    }
    if out.bytes == 0 {
        // An empty month still gets a valid (empty) gzip file.
        out.write_all(&empty_member())
            .with_context(|| format!("writing {name}"))?;
    }
    out.flush().with_context(|| format!("writing {name}"))?;
    let HashingWriter {
        inner,
        hasher,
        bytes,
    } = out;
    let file = inner
        .into_inner()
        .map_err(|e| anyhow::anyhow!("writing {name}: {}", e.error()))?;
    file.sync_all()
        .with_context(|| format!("fsync of {name}"))?;
    Ok(Compressed {
        sha256: hex::encode(hasher.finalize()),
        bytes,
        segments,
    })
}

/// What a finished archive holds, for its manifest.
#[derive(Debug, Clone, Default)]
pub struct Contents {
    /// Documents.
    pub count: u64,
    /// Uncompressed bytes.
    pub raw_bytes: u64,
    /// Bytes of the file.
    pub compressed_bytes: u64,
    /// sha256 of the file, hex.
    pub sha256: String,
    /// Smallest date value.
    pub min_date: Option<String>,
    /// Largest date value.
    pub max_date: Option<String>,
    /// First document's id (relaxed Extended JSON).
    pub first_id: Option<serde_json::Value>,
    /// Last document's id (relaxed Extended JSON).
    pub last_id: Option<serde_json::Value>,
}

impl ArchiveManifest {
    /// The manifest of archive `file` written for `id`.
    pub fn describe(
        id: &ArchiveIdentity,
        file: String,
        c: Contents,
        segments: Vec<crate::staged::SegmentEntry>,
    ) -> ArchiveManifest {
        ArchiveManifest {
            format: FORMAT.into(),
            restore: crate::restore::instructions(&file),
            file,
            source: id.source.clone(),
            database: id.database.clone(),
            collection: id.collection.clone(),
            date_field: id.date_field.clone(),
            id_field: id.id_field.clone(),
            month: id.bounds.month.to_string(),
            pass: id.pass,
            bounds: id.bounds.clone(),
            count: c.count,
            raw_bytes: c.raw_bytes,
            compressed_bytes: c.compressed_bytes,
            sha256: c.sha256,
            min_date: c.min_date,
            max_date: c.max_date,
            first_id: c.first_id,
            last_id: c.last_id,
            created_at: chrono::Utc::now(),
            opskit_version: env!("CARGO_PKG_VERSION").into(),
            segments,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;

    use super::*;
    use crate::rawbson::DocumentWriter;
    use crate::staged::SegmentEntry;

    /// Documents in a stretch of concatenated BSON.
    fn count_docs(mut raw: &[u8]) -> u64 {
        let mut n = 0;
        while raw.len() >= 4 {
            let len = u32::from_le_bytes(raw[..4].try_into().unwrap()) as usize;
            raw = &raw[len..];
            n += 1;
        }
        n
    }

    /// Segments ended one after the other without waiting for the writer (as a segmented
    /// export does) each get their own bytes: contiguous, hashed apart, and holding exactly
    /// their documents, also when several chunks of later segments are written first.
    #[test]
    fn segments_ended_without_waiting_keep_their_own_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.bson.gz");
        let mut w = ArchiveWriter::create(&path, 1, 2, crate::staged::tests::identity()).unwrap();
        let mut doc = DocumentWriter::default();
        let sizes = [12_000u64, 7, 30_000, 1, 5_000];
        let mut answers = Vec::new();
        let mut id = 0i64;
        for n in sizes {
            for _ in 0..n {
                doc.begin();
                doc.int64("id", id);
                doc.string("msg", &format!("{id:0>150}"));
                let key = Bson::Int64(id);
                w.accept(Record {
                    id: &key,
                    date: "2024-01-01 00:00:00",
                    raw: doc.finish(),
                    fingerprint: None,
                })
                .unwrap();
                id += 1;
            }
            answers.push(w.end_segment().unwrap());
        }
        let bytes: Vec<SegmentBytes> = answers.iter().map(|a| a.recv().unwrap()).collect();
        let entries = bytes
            .iter()
            .zip(sizes)
            .enumerate()
            .map(|(i, (_, docs))| SegmentEntry {
                index: i as u32 + 1,
                first_doc: 0,
                docs,
                raw_bytes: 0,
                offset: 0,
                len: 0,
                sha256: String::new(),
                min_date: None,
                max_date: None,
                first_id: None,
                last_id: None,
            })
            .collect();
        let m = w.finish_segments(entries).unwrap();
        let file = std::fs::read(&path).unwrap();
        let mut at = 0;
        for ((b, entry), docs) in bytes.iter().zip(&m.segments).zip(sizes) {
            assert_eq!(b.offset, at, "segments are contiguous");
            assert_eq!((entry.offset, entry.len), (b.offset, b.len));
            assert_eq!(entry.sha256, b.sha256);
            let slice = &file[b.offset as usize..(b.offset + b.len) as usize];
            assert_eq!(hex::encode(Sha256::digest(slice)), b.sha256);
            let mut raw = Vec::new();
            flate2::read::MultiGzDecoder::new(slice)
                .read_to_end(&mut raw)
                .unwrap();
            assert_eq!(count_docs(&raw), docs);
            at += b.len;
        }
        assert_eq!(at, file.len() as u64);
    }
}
