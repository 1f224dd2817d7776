//! The remote copy of a segmented archive: `<name>.uploading` grows one segment at a time.
//! Each segment is written at its offset, fsynced (`fsync@openssh.com`), then read back over
//! SFTP and its sha256 matched against the local segment's before the caller may delete its
//! documents. The final name is given later, once the file is whole
//! ([`BackupHost::finish_segments`]).

use std::io::{Read as _, Seek as _};
use std::time::Instant;

use anyhow::{Context as _, anyhow, bail};
use bytes::BytesMut;
use openssh_sftp_client::Sftp;
use openssh_sftp_client::file::File as RemoteFile;
use sha2::{Digest, Sha256};
use tokio::io::AsyncSeek as _;

use super::{BackupHost, RemoteState, UploadOutcome, remote_path, temp_name, within};
use crate::staged::{ArchiveManifest, SegmentEntry};
use crate::testhook::pause_point;

/// The remote file segments are appended to (one SFTP session for the whole run).
pub struct RemoteAppend<'h> {
    host: &'h BackupHost,
    sftp: Option<Sftp>,
    file: Option<RemoteFile>,
    tmp_path: String,
    len: u64,
}

/// How long the last append took.
#[derive(Debug, Clone, Copy, Default)]
pub struct AppendTimes {
    /// Writing and fsync.
    pub write_secs: f64,
    /// Reading back and hashing.
    pub verify_secs: f64,
}

impl BackupHost {
    /// Starts the remote copy of segmented archive `name`: `<name>.uploading`, created empty
    /// (a leftover is truncated: no segment of it was ever verified by this pass). Refuses
    /// when the final name already exists: nothing was deleted.
    pub fn start_segments(&self, name: &str) -> anyhow::Result<RemoteAppend<'_>> {
        self.open_segments(name, &[])
    }

    /// Re-opens the remote copy after an interruption: keeps exactly the bytes of `segments`
    /// (each read back and matched again), truncating whatever a killed run wrote after them.
    pub fn resume_segments(
        &self,
        name: &str,
        segments: &[SegmentEntry],
    ) -> anyhow::Result<RemoteAppend<'_>> {
        self.open_segments(name, segments)
    }

    fn open_segments(
        &self,
        name: &str,
        segments: &[SegmentEntry],
    ) -> anyhow::Result<RemoteAppend<'_>> {
        let final_path = remote_path(&self.remote_dir, name);
        let tmp_path = remote_path(&self.remote_dir, &temp_name(name));
        let keep: u64 = segments.iter().map(|s| s.len).sum();
        let (sftp, file) = self.rt.block_on(async {
            let sftp = self.connect().await?;
            let opened = async {
                self.ensure_dir(&sftp).await?;
                if self.remote_len(&sftp, &final_path).await.is_some() {
                    bail!(
                        "{final_path} on {} already exists; refusing to write a new archive of the same name — nothing was deleted",
                        self.host
                    );
                }
                if keep > 0 {
                    match self.remote_len(&sftp, &tmp_path).await {
                        Some(len) if len >= keep => {}
                        found => bail!(
                            "{tmp_path} on {} holds {} bytes, fewer than the {keep} bytes of its {} verified segments: \
                             the remote copy of deleted documents is damaged; the local copy is the staged .partial file",
                            self.host,
                            found.map_or("no".to_string(), |l| l.to_string()),
                            segments.len()
                        ),
                    }
                }
                let what = format!("opening {tmp_path} on {}", self.host);
                let mut file = within(
                    self.timeout,
                    &what,
                    sftp.options()
                        .write(true)
                        .create(true)
                        .truncate(keep == 0)
                        .open(&tmp_path),
                )
                .await?;
                if keep > 0 {
                    within(self.timeout, &what, file.set_len(keep)).await?;
                    if sftp.support_fsync() {
                        within(self.timeout, &what, file.sync_all()).await?;
                    }
                    std::pin::Pin::new(&mut file)
                        .start_seek(std::io::SeekFrom::Start(keep))
                        .with_context(|| format!("seeking in {tmp_path}"))?;
                    for s in segments {
                        let sha = self.range_sha256(&sftp, &tmp_path, s.offset, s.len).await?;
                        if sha != s.sha256 {
                            bail!(
                                "segment {} of {tmp_path} on {} (bytes {}..{}) has sha256 {sha}, verified earlier as {}: \
                                 the remote copy was changed since",
                                s.index,
                                self.host,
                                s.offset,
                                s.offset + s.len,
                                s.sha256
                            );
                        }
                    }
                }
                Ok(file)
            }
            .await;
            match opened {
                Ok(file) => Ok((sftp, file)),
                Err(e) => {
                    self.close(sftp).await;
                    Err(e)
                }
            }
        })?;
        Ok(RemoteAppend {
            host: self,
            sftp: Some(sftp),
            file: Some(file),
            tmp_path,
            len: keep,
        })
    }

    /// sha256 of bytes `offset..offset + len` of a remote file.
    async fn range_sha256(
        &self,
        sftp: &Sftp,
        path: &str,
        offset: u64,
        len: u64,
    ) -> anyhow::Result<String> {
        let what = format!("reading {path} back on {}", self.host);
        let mut f = within(self.timeout, &what, sftp.open(path)).await?;
        std::pin::Pin::new(&mut f)
            .start_seek(std::io::SeekFrom::Start(offset))
            .with_context(|| format!("seeking in {path}"))?;
        let mut hasher = Sha256::new();
        let mut left = len;
        while left > 0 {
            let n = left.min(1 << 20) as u32;
            let chunk = within(
                self.timeout,
                &what,
                f.read(n, BytesMut::with_capacity(n as usize)),
            )
            .await?;
            let Some(chunk) = chunk else {
                bail!(
                    "{path} on {} ends {left} bytes before the end of bytes {offset}..{}",
                    self.host,
                    offset + len
                );
            };
            hasher.update(&chunk);
            left = left.saturating_sub(chunk.len() as u64);
        }
        let _ = within(self.timeout, &what, f.close()).await;
        Ok(hex::encode(hasher.finalize()))
    }

    /// Gives a segmented archive its final name once whole: `<name>.uploading` must hold
    /// exactly the manifest's bytes (every segment was verified when appended; the size
    /// shows nothing was added since), then it is hard-linked (or renamed) to the final
    /// name, never overwriting, and the manifest is put beside it. Idempotent: a final file
    /// identical to the manifest is accepted. Without a usable temporary file (removed by
    /// someone) the whole file is uploaded and verified the classic way.
    pub fn finish_segments(
        &self,
        local: &std::path::Path,
        m: &ArchiveManifest,
        on_bytes: &mut dyn FnMut(u64) -> anyhow::Result<()>,
    ) -> anyhow::Result<UploadOutcome> {
        let final_path = remote_path(&self.remote_dir, &m.file);
        let tmp_path = remote_path(&self.remote_dir, &temp_name(&m.file));
        let done = self.rt.block_on(async {
            let sftp = self.connect().await?;
            let r = async {
                if self.remote_len(&sftp, &final_path).await.is_some() {
                    return match self.state_of(&sftp, &final_path, m).await? {
                        RemoteState::Same => {
                            // Killed between the link and the removal of the temporary name.
                            if self.remote_len(&sftp, &tmp_path).await.is_some() {
                                let mut fs = sftp.fs();
                                within(
                                    self.timeout,
                                    &format!("removing {tmp_path} on {}", self.host),
                                    fs.remove_file(&tmp_path),
                                )
                                .await?;
                            }
                            self.put_manifest(&sftp, m).await?;
                            Ok(Some(UploadOutcome::AlreadyThere))
                        }
                        RemoteState::Different(len, sha) => Err(anyhow!(
                            "{final_path} on {} already exists and is a different file ({len} bytes, sha256 {sha}; ours is {} bytes, sha256 {}); refusing to overwrite it",
                            self.host,
                            m.compressed_bytes,
                            m.sha256
                        )),
                        RemoteState::Absent => Ok(None),
                    };
                }
                if self.remote_len(&sftp, &tmp_path).await != Some(m.compressed_bytes) {
                    return Ok(None);
                }
                pause_point("upload", "link", 1);
                self.link_final(&sftp, &tmp_path, &final_path, m).await?;
                self.put_manifest(&sftp, m).await?;
                Ok(Some(UploadOutcome::Uploaded))
            }
            .await;
            self.close(sftp).await;
            r
        })?;
        match done {
            Some(outcome) => Ok(outcome),
            None => {
                tracing::warn!(
                    "{tmp_path} on {} is missing or does not have the archive's {} bytes: uploading the whole file again",
                    self.host,
                    m.compressed_bytes
                );
                self.upload(local, m, on_bytes)
            }
        }
    }
}

impl BackupHost {
    /// The size of the file at `name`'s final remote path, if it exists.
    pub fn final_len(&self, name: &str) -> anyhow::Result<Option<u64>> {
        let path = remote_path(&self.remote_dir, name);
        self.rt.block_on(async {
            let sftp = self.connect().await?;
            let len = self.remote_len(&sftp, &path).await;
            self.close(sftp).await;
            Ok(len)
        })
    }

    /// Reads back each of `segments` from `<name>.uploading` and matches its sha256; changes
    /// nothing (for `archive verify --remote` of an unfinished archive).
    pub fn check_segments(&self, name: &str, segments: &[SegmentEntry]) -> anyhow::Result<()> {
        let tmp_path = remote_path(&self.remote_dir, &temp_name(name));
        self.rt.block_on(async {
            let sftp = self.connect().await?;
            let r = async {
                for s in segments {
                    let sha = self.range_sha256(&sftp, &tmp_path, s.offset, s.len).await?;
                    if sha != s.sha256 {
                        bail!(
                            "segment {} of {tmp_path} on {} has sha256 {sha}, verified as {} when it was uploaded",
                            s.index,
                            self.host,
                            s.sha256
                        );
                    }
                }
                Ok(())
            }
            .await;
            self.close(sftp).await;
            r
        })
    }
}

impl RemoteAppend<'_> {
    /// The remote temporary file, as `host:path`.
    pub fn remote_name(&self) -> String {
        format!("{}:{}", self.host.host, self.tmp_path)
    }

    /// Appends bytes `offset..offset + len` of `local` (one segment, already fsynced
    /// locally), fsyncs the remote file, reads the segment back over SFTP and matches its
    /// sha256. Only after this returns may the segment's documents be deleted.
    pub fn append(
        &mut self,
        local: &mut std::fs::File,
        index: u32,
        offset: u64,
        len: u64,
        sha256: &str,
        on_bytes: &mut dyn FnMut(u64),
    ) -> anyhow::Result<AppendTimes> {
        if offset != self.len {
            bail!(
                "segment {index} starts at byte {offset} but {} holds {} bytes",
                self.tmp_path,
                self.len
            );
        }
        let (host, tmp) = (self.host, self.tmp_path.clone());
        let (Some(sftp), Some(file)) = (self.sftp.as_ref(), self.file.as_mut()) else {
            bail!("internal: {tmp} is closed");
        };
        local
            .seek(std::io::SeekFrom::Start(offset))
            .context("seeking in the staged archive")?;
        let started = Instant::now();
        let what = format!("appending segment {index} to {tmp} on {}", host.host);
        let mut times = AppendTimes::default();
        host.rt.block_on(async {
            let mut buf = vec![0u8; 1 << 20];
            let mut left = len;
            while left > 0 {
                let n = left.min(buf.len() as u64) as usize;
                local
                    .read_exact(&mut buf[..n])
                    .context("reading the staged archive")?;
                within(host.timeout, &what, file.write_all(&buf[..n])).await?;
                left -= n as u64;
                on_bytes(n as u64);
                pause_point("upload", "bytes", offset + len - left);
            }
            if sftp.support_fsync() {
                within(host.timeout, &format!("fsync of {tmp}"), file.sync_all()).await?;
            }
            times.write_secs = started.elapsed().as_secs_f64();
            pause_point("upload", "segment", index as u64);
            let verify = Instant::now();
            let sha = host.range_sha256(sftp, &tmp, offset, len).await?;
            if sha != sha256 {
                bail!(
                    "segment {index} read back from {tmp} on {} (bytes {offset}..{}) has sha256 {sha}, expected {sha256}: \
                     the remote copy is damaged; its documents were not deleted",
                    host.host,
                    offset + len
                );
            }
            times.verify_secs = verify.elapsed().as_secs_f64();
            Ok::<(), anyhow::Error>(())
        })?;
        self.len += len;
        Ok(times)
    }

    /// Gives the remote file its final name once every segment of `m` was appended and
    /// verified: its size must be the manifest's; then link (never overwriting) and the
    /// manifest beside it. Ends the session.
    pub fn finish(&mut self, m: &ArchiveManifest) -> anyhow::Result<()> {
        if self.len != m.compressed_bytes {
            bail!(
                "{} holds {} verified bytes but the archive has {}",
                self.tmp_path,
                self.len,
                m.compressed_bytes
            );
        }
        let host = self.host;
        let final_path = remote_path(&host.remote_dir, &m.file);
        let (file, sftp) = (self.file.take(), self.sftp.take());
        let tmp = self.tmp_path.clone();
        host.rt.block_on(async {
            let r = async {
                if let Some(f) = file {
                    within(host.timeout, &format!("closing {tmp}"), f.close()).await?;
                }
                let Some(sftp) = sftp.as_ref() else {
                    bail!("internal: the session to {} is closed", host.host);
                };
                pause_point("upload", "link", 1);
                host.link_final(sftp, &tmp, &final_path, m).await?;
                host.put_manifest(sftp, m).await
            }
            .await;
            if let Some(s) = sftp {
                host.close(s).await;
            }
            r
        })
    }

    /// Closes the file and the session.
    pub fn close(mut self) {
        let (host, file, sftp) = (self.host, self.file.take(), self.sftp.take());
        host.rt.block_on(async {
            if let Some(f) = file {
                let _ = within(host.timeout, "close", f.close()).await;
            }
            if let Some(s) = sftp {
                host.close(s).await;
            }
        });
    }
}
