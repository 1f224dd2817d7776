//! The backup host over SFTP, reached through the system `ssh` and an alias of the
//! operator's ssh_config (so its HostName, User, Port, IdentityFile, ProxyJump and
//! known_hosts apply unchanged). Host keys are always checked strictly.
//!
//! Upload protocol, so the final name only ever holds a complete, verified archive:
//! 1. if `<name>` already exists, hash it: identical → done (idempotent); different → refuse;
//! 2. write `<name>.uploading`, fsync it (a leftover of a crashed run is continued when its
//!    last MiB matches ours, else truncated);
//! 3. check its size and re-read it over SFTP to compare its sha256 with the manifest (works
//!    against `internal-sftp`-only servers where no command can be run);
//! 4. hard-link it to `<name>` (fails if `<name>` appeared meanwhile: never overwrites), or
//!    posix-rename when the server lacks hard links, then remove the temporary name;
//! 5. upload the manifest beside it.
//!
//! Before anything is exported, [`BackupHost::preflight`] proves the host usable (it answers,
//! its host key matches known_hosts, the remote directory exists or is created, and a probe
//! file can be written and removed there). [`BackupHost::look`] is the read-only variant for
//! `plan`: it creates nothing, neither remotely nor locally. A changed host key is reported as
//! [`HostKeyMismatch`], never as a plain connection failure.

use std::io::{Read as _, Seek as _};
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use bytes::BytesMut;
use openssh::{ControlPersist, KnownHosts, SessionBuilder};
use openssh_sftp_client::{Sftp, SftpOptions};
use opskit_core::config::SftpConfig;
use sha2::{Digest, Sha256};
use tokio::io::AsyncSeek as _;

use crate::staged::ArchiveManifest;
use crate::testhook::pause_point;

mod append;
pub use append::{AppendTimes, RemoteAppend};

/// The backup host presented a key that known_hosts does not hold for it: a changed server
/// (reinstalled, or someone in the middle). ssh refuses, and so does opskit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "host key mismatch: the key of the backup host `{host}` does not match the one in known_hosts \
     (ssh: {ssh}); if the host was legitimately reinstalled, check its new key out of band and update \
     known_hosts (ssh-keygen -R, then ssh {host} once); host-key checking is never turned off"
)]
pub struct HostKeyMismatch {
    /// The ssh_config alias.
    pub host: String,
    /// What ssh said.
    pub ssh: String,
}

/// What ssh says when the host key is not the known one (mismatch, or unknown with strict
/// checking); OpenSSH's own wording since 5.x.
const HOST_KEY_SIGNS: &[&str] = &[
    "Host key verification failed",
    "REMOTE HOST IDENTIFICATION HAS CHANGED",
    "host key for",
];

/// What `look` found on the backup host.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RemoteDir {
    /// The remote directory exists.
    Exists,
    /// It does not exist yet; the run creates it.
    WillBeCreated,
}

/// What is at the final remote name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RemoteState {
    /// Nothing.
    Absent,
    /// A file with the expected size and sha256.
    Same,
    /// A different file (size, sha256).
    Different(u64, String),
}

/// How an upload ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UploadOutcome {
    /// The archive was uploaded and verified.
    Uploaded,
    /// The identical archive was already there.
    AlreadyThere,
}

/// The backup host.
pub struct BackupHost {
    rt: tokio::runtime::Runtime,
    host: String,
    ssh_config: Option<PathBuf>,
    remote_dir: String,
    timeout: Duration,
    control_dir: PathBuf,
}

/// The remote path of `name` in `dir`.
pub fn remote_path(dir: &str, name: &str) -> String {
    format!("{}/{name}", dir.trim_end_matches('/'))
}

/// `<name>.uploading`.
pub fn temp_name(name: &str) -> String {
    format!("{name}.uploading")
}

async fn within<T, E: std::fmt::Display>(
    timeout: Duration,
    what: &str,
    fut: impl std::future::Future<Output = Result<T, E>>,
) -> anyhow::Result<T> {
    match tokio::time::timeout(timeout, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(anyhow!("{what}: {e}")),
        Err(_) => Err(anyhow!("{what}: no answer within {timeout:?}")),
    }
}

impl BackupHost {
    /// A backup host from `[archive.sftp]`. The ssh control socket lives under
    /// `control_dir` (short path: sockets are limited to 108 bytes).
    pub fn new(cfg: &SftpConfig, control_dir: &Path) -> anyhow::Result<BackupHost> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the SFTP runtime")?;
        Ok(BackupHost {
            rt,
            host: cfg.host.as_str().to_string(),
            ssh_config: cfg.ssh_config.as_ref().map(|p| p.path().to_path_buf()),
            remote_dir: cfg.remote_dir.clone(),
            timeout: Duration::from_secs(cfg.timeout_secs.get()),
            control_dir: control_dir.to_path_buf(),
        })
    }

    /// `host:dir` for messages.
    pub fn describe(&self) -> String {
        format!("sftp://{}/{}", self.host, self.remote_dir)
    }

    /// The remote directory.
    pub fn remote_dir(&self) -> &str {
        &self.remote_dir
    }

    /// The `sftp` command an operator would type to look at the destination.
    pub fn operator_command(&self) -> String {
        match &self.ssh_config {
            Some(c) => format!("sftp -F {} {}:{}", c.display(), self.host, self.remote_dir),
            None => format!("sftp {}:{}", self.host, self.remote_dir),
        }
    }

    async fn connect(&self) -> anyhow::Result<Sftp> {
        opskit_core::util::create_private_dir_all(&self.control_dir)?;
        let mut b = SessionBuilder::default();
        b.known_hosts_check(KnownHosts::Strict)
            .connect_timeout(self.timeout)
            .server_alive_interval(Duration::from_secs(15))
            .control_directory(&self.control_dir)
            // If opskit is killed, the ssh master exits on its own once idle.
            .control_persist(ControlPersist::IdleFor(
                NonZeroUsize::new(30).expect("non-zero"),
            ));
        if let Some(c) = &self.ssh_config {
            b.config_file(c);
        }
        let what = format!("connecting to the backup host `{}` over ssh", self.host);
        let session = match tokio::time::timeout(
            self.timeout + Duration::from_secs(5),
            b.connect(&self.host),
        )
        .await
        {
            Ok(Ok(session)) => session,
            Ok(Err(e)) => {
                let said = std::error::Error::source(&e)
                    .map(|s| s.to_string())
                    .unwrap_or_default();
                if HOST_KEY_SIGNS.iter().any(|sign| said.contains(sign)) {
                    return Err(HostKeyMismatch {
                        host: self.host.clone(),
                        ssh: said.lines().last().unwrap_or("").trim().to_string(),
                    }
                    .into());
                }
                bail!("{what}: {e}: {said}");
            }
            Err(_) => bail!("{what}: no answer within {:?}", self.timeout),
        };
        let sftp = within(
            self.timeout,
            &format!("starting sftp on `{}`", self.host),
            Sftp::from_session(session, SftpOptions::new()),
        )
        .await?;
        Ok(sftp)
    }

    /// Read-only look (for `plan`): connects and checks whether the remote directory exists.
    /// Creates nothing on the host (the ssh control socket lives where the caller said).
    pub fn look(&self) -> anyhow::Result<RemoteDir> {
        self.rt.block_on(async {
            let sftp = self.connect().await?;
            let found = {
                // Closing waits for every handle of the session: this one ends here.
                let mut fs = sftp.fs();
                within(self.timeout, "stat", fs.metadata(&self.remote_dir)).await
            };
            self.close(sftp).await;
            Ok(match found {
                Ok(m) if m.file_type().is_some_and(|t| !t.is_dir()) => bail!(
                    "{} on {} exists and is not a directory",
                    self.remote_dir,
                    self.host
                ),
                Ok(_) => RemoteDir::Exists,
                Err(_) => RemoteDir::WillBeCreated,
            })
        })
    }

    /// Before the export: connects (host key checked), makes sure the remote directory exists,
    /// then writes and removes a probe file in it, so an unwritable destination refuses the
    /// run before anything was exported.
    pub fn preflight(&self) -> anyhow::Result<()> {
        self.rt.block_on(async {
            let sftp = self.connect().await?;
            let r = async {
                self.ensure_dir(&sftp).await?;
                let probe = remote_path(
                    &self.remote_dir,
                    &format!(".opskit-probe-{}", std::process::id()),
                );
                let what = format!(
                    "writing a probe file in {} on {} (is the directory writable?)",
                    self.remote_dir, self.host
                );
                let mut f = within(
                    self.timeout,
                    &what,
                    sftp.options()
                        .write(true)
                        .create(true)
                        .truncate(true)
                        .open(&probe),
                )
                .await?;
                within(self.timeout, &what, f.write_all(b"opskit")).await?;
                within(self.timeout, &what, f.close()).await?;
                let mut fs = sftp.fs();
                within(
                    self.timeout,
                    &format!("removing the probe file {probe} on {}", self.host),
                    fs.remove_file(&probe),
                )
                .await?;
                Ok::<(), anyhow::Error>(())
            }
            .await;
            self.close(sftp).await;
            r
        })
    }

    /// Closes the SFTP session, waiting at most the request timeout (a session whose server
    /// went away must not hang the run).
    async fn close(&self, sftp: Sftp) {
        if tokio::time::timeout(self.timeout, sftp.close())
            .await
            .is_err()
        {
            tracing::debug!("closing the SFTP session to {} timed out", self.host);
        }
    }

    async fn ensure_dir(&self, sftp: &Sftp) -> anyhow::Result<()> {
        let mut fs = sftp.fs();
        if within(self.timeout, "stat", fs.metadata(&self.remote_dir))
            .await
            .is_ok()
        {
            return Ok(());
        }
        let mut path = String::new();
        for part in self.remote_dir.split('/') {
            if part.is_empty() {
                path.push('/');
                continue;
            }
            if !path.is_empty() && !path.ends_with('/') {
                path.push('/');
            }
            path.push_str(part);
            if within(self.timeout, "stat", fs.metadata(&path))
                .await
                .is_err()
            {
                within(
                    self.timeout,
                    &format!("creating remote directory {path} on {}", self.host),
                    fs.create_dir(&path),
                )
                .await?;
            }
        }
        Ok(())
    }

    async fn remote_len(&self, sftp: &Sftp, path: &str) -> Option<u64> {
        let mut fs = sftp.fs();
        within(self.timeout, "stat", fs.metadata(path))
            .await
            .ok()
            .and_then(|m| m.len())
    }

    /// sha256 and size of a remote file, re-read over SFTP.
    async fn remote_sha256(&self, sftp: &Sftp, path: &str) -> anyhow::Result<(String, u64)> {
        let what = format!("reading {path} on {}", self.host);
        let mut f = within(self.timeout, &what, sftp.open(path)).await?;
        let mut hasher = Sha256::new();
        let mut total = 0u64;
        let n: u32 = 1 << 20; // capped by the server's limits@openssh.com read length
        loop {
            let chunk = within(
                self.timeout,
                &what,
                f.read(n, BytesMut::with_capacity(n as usize)),
            )
            .await?;
            let Some(chunk) = chunk else { break };
            hasher.update(&chunk);
            total += chunk.len() as u64;
        }
        let _ = within(self.timeout, &what, f.close()).await;
        Ok((hex::encode(hasher.finalize()), total))
    }

    async fn state_of(
        &self,
        sftp: &Sftp,
        path: &str,
        m: &ArchiveManifest,
    ) -> anyhow::Result<RemoteState> {
        if self.remote_len(sftp, path).await.is_none() {
            return Ok(RemoteState::Absent);
        }
        let (sha, len) = self.remote_sha256(sftp, path).await?;
        if sha == m.sha256 && len == m.compressed_bytes {
            Ok(RemoteState::Same)
        } else {
            Ok(RemoteState::Different(len, sha))
        }
    }

    /// What is at the archive's final remote name (hashing it when present).
    pub fn check(&self, m: &ArchiveManifest) -> anyhow::Result<RemoteState> {
        self.rt.block_on(async {
            let sftp = self.connect().await?;
            let r = self
                .state_of(&sftp, &remote_path(&self.remote_dir, &m.file), m)
                .await;
            self.close(sftp).await;
            r
        })
    }

    /// Uploads `local` (described by `m`) with the protocol in the module docs.
    /// `on_bytes(n)` is called as bytes are sent; an error from it (a stop request) ends the
    /// upload there, leaving the temporary file to be continued or removed.
    pub fn upload(
        &self,
        local: &Path,
        m: &ArchiveManifest,
        on_bytes: &mut dyn FnMut(u64) -> anyhow::Result<()>,
    ) -> anyhow::Result<UploadOutcome> {
        self.rt.block_on(async {
            let sftp = self.connect().await?;
            let r = self.upload_inner(&sftp, local, m, on_bytes).await;
            self.close(sftp).await;
            r
        })
    }

    async fn upload_inner(
        &self,
        sftp: &Sftp,
        local: &Path,
        m: &ArchiveManifest,
        on_bytes: &mut dyn FnMut(u64) -> anyhow::Result<()>,
    ) -> anyhow::Result<UploadOutcome> {
        self.ensure_dir(sftp).await?;
        let final_path = remote_path(&self.remote_dir, &m.file);
        let tmp_path = remote_path(&self.remote_dir, &temp_name(&m.file));
        match self.state_of(sftp, &final_path, m).await? {
            RemoteState::Same => {
                self.put_manifest(sftp, m).await?;
                return Ok(UploadOutcome::AlreadyThere);
            }
            RemoteState::Different(len, sha) => bail!(
                "{final_path} on {} already exists and is a different file ({len} bytes, sha256 {sha}; ours is {} bytes, sha256 {}); refusing to overwrite it — nothing was deleted",
                self.host,
                m.compressed_bytes,
                m.sha256
            ),
            RemoteState::Absent => {}
        }
        let what = format!("writing {tmp_path} on {}", self.host);
        let mut file =
            std::fs::File::open(local).with_context(|| format!("opening {}", local.display()))?;
        // A crashed upload left part of the file: continue after it when its last MiB matches
        // ours (the full sha256 check below catches anything else, and removes the temp file).
        let resume_at = self.resumable_prefix(sftp, &tmp_path, &mut file, m).await;
        let mut remote = within(
            self.timeout,
            &what,
            sftp.options()
                .write(true)
                .create(true)
                .truncate(resume_at == 0)
                .open(&tmp_path),
        )
        .await?;
        file.seek(std::io::SeekFrom::Start(resume_at))
            .with_context(|| format!("seeking in {}", local.display()))?;
        if resume_at > 0 {
            tracing::info!(
                "resuming the upload of {tmp_path} at byte {resume_at} of {}",
                m.compressed_bytes
            );
            std::pin::Pin::new(&mut remote)
                .start_seek(std::io::SeekFrom::Start(resume_at))
                .with_context(|| format!("seeking in {tmp_path}"))?;

            on_bytes(resume_at)?;
        }
        let mut buf = vec![0u8; 1 << 20];
        let mut sent = resume_at;
        loop {
            let n = file
                .read(&mut buf)
                .with_context(|| format!("reading {}", local.display()))?;
            if n == 0 {
                break;
            }
            within(self.timeout, &what, remote.write_all(&buf[..n])).await?;
            sent += n as u64;
            pause_point("upload", "bytes", sent);
            on_bytes(n as u64)?;
        }
        if sftp.support_fsync() {
            within(
                self.timeout,
                &format!("fsync of {tmp_path}"),
                remote.sync_all(),
            )
            .await?;
        }
        within(self.timeout, &what, remote.close()).await?;

        let (sha, len) = self.remote_sha256(sftp, &tmp_path).await?;
        if len != m.compressed_bytes || sha != m.sha256 {
            let mut fs = sftp.fs();
            let _ = within(self.timeout, "remove", fs.remove_file(&tmp_path)).await;
            bail!(
                "the uploaded {tmp_path} on {} does not match: {len} bytes sha256 {sha}, expected {} bytes sha256 {}",
                self.host,
                m.compressed_bytes,
                m.sha256
            );
        }
        if let Some(outcome) = self.link_final(sftp, &tmp_path, &final_path, m).await? {
            return Ok(outcome);
        }
        self.put_manifest(sftp, m).await?;
        Ok(UploadOutcome::Uploaded)
    }

    /// Hard-links (or renames, without hard links) the verified temporary file to the final
    /// name, never overwriting; removes the temporary name; checks the final size. Returns
    /// `Some(AlreadyThere)` when an identical final file appeared meanwhile.
    async fn link_final(
        &self,
        sftp: &Sftp,
        tmp_path: &str,
        final_path: &str,
        m: &ArchiveManifest,
    ) -> anyhow::Result<Option<UploadOutcome>> {
        let mut fs = sftp.fs();
        if sftp.support_hardlink() {
            // link(2) never replaces an existing name: the final name cannot be clobbered.
            if let Err(e) = within(self.timeout, "link", fs.hard_link(tmp_path, final_path)).await {
                return match self.state_of(sftp, final_path, m).await? {
                    RemoteState::Same => {
                        let _ = within(self.timeout, "remove", fs.remove_file(tmp_path)).await;
                        Ok(Some(UploadOutcome::AlreadyThere))
                    }
                    _ => Err(e.context(format!(
                        "linking {tmp_path} to {final_path} on {}",
                        self.host
                    ))),
                };
            }
            within(
                self.timeout,
                &format!("removing {tmp_path} on {}", self.host),
                fs.remove_file(tmp_path),
            )
            .await?;
        } else {
            if self.remote_len(sftp, final_path).await.is_some() {
                bail!(
                    "{final_path} on {} appeared during the upload; refusing to overwrite it",
                    self.host
                );
            }
            within(
                self.timeout,
                &format!("renaming {tmp_path} to {final_path} on {}", self.host),
                fs.rename(tmp_path, final_path),
            )
            .await?;
        }
        match self.remote_len(sftp, final_path).await {
            Some(l) if l == m.compressed_bytes => {}
            other => bail!(
                "{final_path} on {} has size {other:?} after the rename, expected {}",
                self.host,
                m.compressed_bytes
            ),
        }
        Ok(None)
    }

    /// How many bytes of a leftover temp file can be kept: its size when it is no longer
    /// than ours and its last MiB equals ours at the same offset, else 0.
    async fn resumable_prefix(
        &self,
        sftp: &Sftp,
        tmp_path: &str,
        local: &mut std::fs::File,
        m: &ArchiveManifest,
    ) -> u64 {
        let Some(len) = self.remote_len(sftp, tmp_path).await else {
            return 0;
        };
        if len == 0 || len > m.compressed_bytes {
            return 0;
        }
        let tail = len.min(1 << 20);
        let start = len - tail;
        let mut ours = vec![0u8; tail as usize];
        if local
            .seek(std::io::SeekFrom::Start(start))
            .and_then(|_| local.read_exact(&mut ours))
            .is_err()
        {
            return 0;
        }
        let theirs = async {
            let mut f = sftp.open(tmp_path).await?;
            std::pin::Pin::new(&mut f).start_seek(std::io::SeekFrom::Start(start))?;
            let buf = f.read_all(tail as usize, BytesMut::new()).await?;
            let _ = f.close().await;
            Ok::<_, openssh_sftp_client::Error>(buf)
        };
        match within(self.timeout, "reading the temp file's tail", theirs).await {
            Ok(buf) if buf[..] == ours[..] => len,
            _ => 0,
        }
    }

    async fn put_manifest(&self, sftp: &Sftp, m: &ArchiveManifest) -> anyhow::Result<()> {
        let name = format!("{}.manifest.json", m.file);
        let final_path = remote_path(&self.remote_dir, &name);
        let tmp_path = remote_path(&self.remote_dir, &temp_name(&name));
        let what = format!("writing {final_path} on {}", self.host);
        let mut f = within(
            self.timeout,
            &what,
            sftp.options()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&tmp_path),
        )
        .await?;
        within(self.timeout, &what, f.write_all(m.to_json().as_bytes())).await?;
        if sftp.support_fsync() {
            within(self.timeout, &what, f.sync_all()).await?;
        }
        within(self.timeout, &what, f.close()).await?;
        let mut fs = sftp.fs();
        within(self.timeout, &what, fs.rename(&tmp_path, &final_path)).await?;
        Ok(())
    }

    /// Verifies the final remote archive: size and sha256 against the manifest.
    pub fn verify(&self, m: &ArchiveManifest) -> anyhow::Result<()> {
        match self.check(m)? {
            RemoteState::Same => Ok(()),
            RemoteState::Absent => bail!(
                "{} is missing on {}",
                remote_path(&self.remote_dir, &m.file),
                self.host
            ),
            RemoteState::Different(len, sha) => bail!(
                "{} on {} is {len} bytes sha256 {sha}; the manifest says {} bytes sha256 {}",
                remote_path(&self.remote_dir, &m.file),
                self.host,
                m.compressed_bytes,
                m.sha256
            ),
        }
    }

    /// Removes the temporary upload name (never the final archive).
    pub fn remove_temp(&self, file: &str) -> anyhow::Result<()> {
        self.rt.block_on(async {
            let sftp = self.connect().await?;
            let tmp = remote_path(&self.remote_dir, &temp_name(file));
            if self.remote_len(&sftp, &tmp).await.is_some() {
                let mut fs = sftp.fs();
                within(
                    self.timeout,
                    &format!("removing {tmp} on {}", self.host),
                    fs.remove_file(&tmp),
                )
                .await?;
            }
            self.close(sftp).await;
            Ok(())
        })
    }
}
