//! Checks made before anything is exported. Each failure is a refusal (exit 3, nothing
//! changed) that names what is wrong and what to do; `plan` shows the same findings without
//! changing anything.

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::Path;

use anyhow::Context as _;
use opskit_core::error::{Classify as _, refused};

use crate::job::{ArchiveJob, SharedSource};

/// What is wrong with the staging directory for a writer, without changing anything: `None`
/// when it is fine or does not exist yet (a run creates it 0700).
pub fn staging_dir_problem(dir: &Path) -> Option<String> {
    let meta = match std::fs::symlink_metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            return Some(format!(
                "cannot inspect the staging directory {}: {e}",
                dir.display()
            ));
        }
    };
    if meta.file_type().is_symlink() {
        return Some(format!(
            "the staging directory {} is a symlink; give archive.staging_dir its real path",
            dir.display()
        ));
    }
    if !meta.is_dir() {
        return Some(format!(
            "the staging directory {} is not a directory",
            dir.display()
        ));
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Some(format!(
            "the staging directory {} has mode {mode:04o}: others can write into it and plant \
             files or symlinks where archives are written; make it private (chmod 700 {})",
            dir.display(),
            dir.display()
        ));
    }
    // SAFETY: geteuid cannot fail.
    let euid = unsafe { libc::geteuid() };
    if meta.uid() != euid && meta.uid() != 0 {
        return Some(format!(
            "the staging directory {} belongs to uid {}, not to the user running opskit (uid {euid})",
            dir.display(),
            meta.uid()
        ));
    }
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: `c` is a valid C string. access(2) also reports a read-only file system.
    if unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) } != 0 {
        return Some(format!(
            "the staging directory {} is not writable: {}",
            dir.display(),
            std::io::Error::last_os_error()
        ));
    }
    None
}

/// Creates the staging directory (0700) if needed, refuses one that others can write or that
/// cannot be written, and proves it writable with a probe file.
pub fn prepare_staging_dir(dir: &Path) -> anyhow::Result<()> {
    if let Some(problem) = staging_dir_problem(dir) {
        return Err(refused(problem));
    }
    opskit_core::util::create_private_dir_all(dir)
        .with_context(|| "preparing archive.staging_dir".to_string())
        .refusal()?;
    if let Some(problem) = staging_dir_problem(dir) {
        return Err(refused(problem));
    }
    let probe = dir.join(format!(".opskit-probe-{}", std::process::id()));
    let _ = std::fs::remove_file(&probe);
    opskit_core::util::create_new_private(&probe, 0o600)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("the staging directory {} is not writable", dir.display()))
        .refusal()?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// The backup host answers, its key matches, and its directory can be written.
pub fn check_backup_host(job: &ArchiveJob) -> anyhow::Result<()> {
    let host = job.backup_host().refusal()?;
    host.preflight()
        .with_context(|| {
            format!(
                "the backup host {} is not usable; nothing was exported",
                host.describe()
            )
        })
        .refusal()
}

/// The delete sessions of the purge fit in what the server still accepts (MySQL
/// `max_connections` minus the sessions already open); sources without such a limit pass.
pub fn check_connections(job: &ArchiveJob, source: &SharedSource) -> anyhow::Result<()> {
    let wanted = job.config.purge.connections.get();
    let Some(free) = source.get()?.free_sessions().refusal()? else {
        return Ok(());
    };
    if wanted > free.free {
        return Err(refused(format!(
            "archive.purge.connections = {wanted} delete sessions, but the source allows max_connections = {} and {} are in use ({} free); \
             lower archive.purge.connections or raise max_connections",
            free.max, free.used, free.free
        )));
    }
    Ok(())
}

/// Every replica whose lag the purge watches answers and is a replica: a wrong entry in
/// `archive.purge.replicas` is refused before the export instead of stalling the purge.
/// (A replica that lags or whose replication is stopped is not refused: the purge waits.)
pub fn check_replicas(source: &SharedSource) -> anyhow::Result<()> {
    let bad = source.get()?.unwatchable_replicas().refusal()?;
    if bad.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = bad.iter().map(|l| l.describe()).collect();
    Err(refused(format!(
        "the purge could not watch the lag of {}; fix archive.purge.replicas (or \
         discover_replicas) or the replica, nothing was exported",
        list.join("; ")
    )))
}

/// A state directory path that was not valid UTF-8 reaches opskit as replacement characters
/// (U+FFFD): refuse it rather than write somewhere else.
pub fn check_utf8_path(what: &str, p: &Path) -> anyhow::Result<()> {
    if p.to_str().is_none_or(|s| s.contains('\u{FFFD}')) {
        return Err(opskit_core::error::usage(format!(
            "{what} {} is not valid UTF-8; use a path of UTF-8 characters",
            p.display()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use opskit_core::ExitStatus;

    #[test]
    fn a_staging_directory_others_can_write_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("staging");
        prepare_staging_dir(&d).unwrap();
        assert_eq!(std::fs::metadata(&d).unwrap().mode() & 0o777, 0o700);
        assert_eq!(
            std::fs::read_dir(&d).unwrap().count(),
            0,
            "the probe is gone"
        );
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o1777)).unwrap();
        let e = prepare_staging_dir(&d).unwrap_err();
        assert_eq!(ExitStatus::of(&e), ExitStatus::Refused);
        assert!(e.to_string().contains("mode 1777"), "{e}");
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&d, &link).unwrap();
        assert!(staging_dir_problem(&link).unwrap().contains("symlink"));
    }

    #[test]
    fn non_utf8_paths_are_usage_errors() {
        use std::os::unix::ffi::OsStrExt as _;
        let p = Path::new(std::ffi::OsStr::from_bytes(b"/tmp/st\xffate"));
        let e = check_utf8_path("--state-dir", p).unwrap_err();
        assert_eq!(ExitStatus::of(&e), ExitStatus::Usage);
        check_utf8_path("--state-dir", Path::new("/var/lib/opskit")).unwrap();
        let e = check_utf8_path("--state-dir", Path::new("/tmp/st\u{FFFD}ate")).unwrap_err();
        assert_eq!(ExitStatus::of(&e), ExitStatus::Usage);
    }
}
