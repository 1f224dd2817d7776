//! Secrets read from files (database and TSIG passwords): one reader with one set of rules,
//! and a type that never prints its value.

use std::fmt;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::Path;

use anyhow::Context as _;

use crate::error::{Classify as _, usage};

/// A secret value. `Debug` and `Display` print `***`; read it with [`Secret::expose`].
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The value itself, for the one call that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        // Best effort: overwrite the bytes before the allocation is freed.
        // SAFETY: zero bytes are valid UTF-8.
        unsafe { self.0.as_bytes_mut() }.fill(0);
    }
}

/// Reads the secret in `path`, named `key` (the config key) in errors. The rules, the same for
/// every secret opskit reads:
/// - a regular file, not readable or writable by group or others (mode 0600 or 0400);
/// - one trailing line ending (`\n` or `\r\n`) is not part of the secret; anything else is;
/// - an empty secret is an error.
///
/// Every error is a usage error (exit 2) naming the key and the file.
pub fn read_secret_file(path: &Path, key: &str) -> anyhow::Result<Secret> {
    let shown = path.display();
    let meta = std::fs::metadata(path)
        .with_context(|| format!("{key}: cannot read {shown}"))
        .usage_error()?;
    if !meta.is_file() {
        return Err(usage(format!("{key}: {shown} is not a regular file")));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(usage(format!(
            "{key}: {shown} has mode {mode:04o}; it holds a secret and must be readable by its owner only (0600: chmod 600 {shown})"
        )));
    }
    // SAFETY: geteuid cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 && meta.uid() != euid {
        return Err(usage(format!(
            "{key}: {shown} belongs to uid {}, not to the user running opskit (uid {euid})",
            meta.uid()
        )));
    }
    let bytes = std::fs::read(path)
        .with_context(|| format!("{key}: cannot read {shown}"))
        .usage_error()?;
    let text =
        String::from_utf8(bytes).map_err(|_| usage(format!("{key}: {shown} is not UTF-8 text")))?;
    let value = text
        .strip_suffix("\r\n")
        .or_else(|| text.strip_suffix('\n'))
        .unwrap_or(&text);
    if value.is_empty() {
        return Err(usage(format!("{key}: {shown} is empty")));
    }
    Ok(Secret::new(value))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ExitStatus;

    fn file(dir: &Path, name: &str, body: &[u8], mode: u32) -> std::path::PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, body).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    #[test]
    fn one_line_ending_is_dropped_and_nothing_else() {
        let d = tempfile::tempdir().unwrap();
        for (body, want) in [
            (&b"pw\n"[..], "pw"),
            (b"pw\r\n", "pw"),
            (b"pw", "pw"),
            (b" pw \n\n", " pw \n"),
        ] {
            let p = file(d.path(), "s", body, 0o600);
            assert_eq!(read_secret_file(&p, "k").unwrap().expose(), want);
        }
    }

    #[test]
    fn bad_files_are_usage_errors_naming_the_key() {
        let d = tempfile::tempdir().unwrap();
        let cases = [
            (file(d.path(), "open", b"pw", 0o644), "mode 0644"),
            (file(d.path(), "empty", b"\n", 0o600), "is empty"),
            (d.path().join("missing"), "cannot read"),
        ];
        for (p, want) in cases {
            let e = read_secret_file(&p, "mysql.password_file").unwrap_err();
            assert_eq!(ExitStatus::of(&e), ExitStatus::Usage);
            let text = format!("{e:#}");
            assert!(text.starts_with("mysql.password_file: "), "{text}");
            assert!(text.contains(want), "{text}");
        }
    }

    #[test]
    fn a_secret_never_prints() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s} {s:?}"), "*** Secret(***)");
    }
}
