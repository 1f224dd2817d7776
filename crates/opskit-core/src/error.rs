//! The exit-code contract shared by every command.
//!
//! | code | meaning |
//! |------|---------|
//! | 0 | done (or nothing to do) |
//! | 1 | a run failed; the alert was raised |
//! | 2 | bad usage or bad config; nothing was changed |
//! | 3 | a precondition refused the run; nothing was changed |
//!
//! Library code returns `anyhow::Error`s. An error that means "bad usage or config" or
//! "refused, nothing changed" is made with [`usage`] or [`refused`] (or tagged with
//! [`Classify`]); the binary reads the tag with [`ExitStatus::of`], never the message text.
//! Anything untagged is a failure (exit 1).

use std::fmt;

use crate::config::ConfigError;

/// What a command ended with, as the process exit code an operator and cron see.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitStatus {
    /// 0: done, or nothing to do.
    Success,
    /// 1: failed; the alert was raised.
    Failed,
    /// 2: bad usage or config; nothing changed.
    Usage,
    /// 3: a precondition refused the run; nothing changed.
    Refused,
}

impl ExitStatus {
    /// The exit status an error means: the outermost [`ErrorKind`] tag in its chain (a
    /// [`ConfigError`] anywhere counts as usage), else [`ExitStatus::Failed`].
    pub fn of(e: &anyhow::Error) -> ExitStatus {
        for cause in e.chain() {
            if let Some(c) = cause.downcast_ref::<Classified>() {
                return c.kind.into();
            }
            if cause.downcast_ref::<ConfigError>().is_some() {
                return ExitStatus::Usage;
            }
        }
        ExitStatus::Failed
    }

    /// The numeric process exit code.
    pub fn code(self) -> u8 {
        match self {
            ExitStatus::Success => 0,
            ExitStatus::Failed => 1,
            ExitStatus::Usage => 2,
            ExitStatus::Refused => 3,
        }
    }
}

/// What an error means for the exit code (see the [module docs](self)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Bad usage, flags or config: exit 2, nothing changed.
    Usage,
    /// A precondition refused the work before anything changed: exit 3.
    Refused,
}

impl From<ErrorKind> for ExitStatus {
    fn from(k: ErrorKind) -> ExitStatus {
        match k {
            ErrorKind::Usage => ExitStatus::Usage,
            ErrorKind::Refused => ExitStatus::Refused,
        }
    }
}

/// An error tagged with its [`ErrorKind`]. It prints exactly as the error it wraps.
#[derive(Debug)]
pub struct Classified {
    /// The tag.
    pub kind: ErrorKind,
    inner: anyhow::Error,
}

impl fmt::Display for Classified {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Only the wrapped error's own message: its causes follow through `source`.
        fmt::Display::fmt(self.inner.chain().next().expect("a chain has a head"), f)
    }
}

impl std::error::Error for Classified {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.inner.chain().nth(1)
    }
}

/// A "bad usage or config" error (exit 2).
pub fn usage(msg: impl fmt::Display) -> anyhow::Error {
    anyhow::Error::msg(msg.to_string()).classify(ErrorKind::Usage)
}

/// A "refused, nothing changed" error (exit 3).
pub fn refused(msg: impl fmt::Display) -> anyhow::Error {
    anyhow::Error::msg(msg.to_string()).classify(ErrorKind::Refused)
}

/// Tags an error (or the error of a `Result`) with an [`ErrorKind`].
pub trait Classify {
    /// The tagged value.
    type Output;
    /// Tags with `kind`.
    fn classify(self, kind: ErrorKind) -> Self::Output;
    /// Tags as bad usage or config (exit 2).
    fn usage_error(self) -> Self::Output
    where
        Self: Sized,
    {
        self.classify(ErrorKind::Usage)
    }
    /// Tags as a refusal before any change (exit 3).
    fn refusal(self) -> Self::Output
    where
        Self: Sized,
    {
        self.classify(ErrorKind::Refused)
    }
    /// Tags with `kind` only when the error carries no tag yet (a bad password file inside
    /// a failed connect stays a usage error).
    fn classify_untagged(self, kind: ErrorKind) -> Self::Output;
}

impl Classify for anyhow::Error {
    type Output = anyhow::Error;
    fn classify(self, kind: ErrorKind) -> anyhow::Error {
        anyhow::Error::new(Classified { kind, inner: self })
    }
    fn classify_untagged(self, kind: ErrorKind) -> anyhow::Error {
        match ExitStatus::of(&self) {
            ExitStatus::Failed => self.classify(kind),
            _ => self,
        }
    }
}

impl<T, E: Into<anyhow::Error>> Classify for Result<T, E> {
    type Output = anyhow::Result<T>;
    fn classify(self, kind: ErrorKind) -> anyhow::Result<T> {
        self.map_err(|e| e.into().classify(kind))
    }
    fn classify_untagged(self, kind: ErrorKind) -> anyhow::Result<T> {
        self.map_err(|e| e.into().classify_untagged(kind))
    }
}

/// An error that reaches the operator. Its variant decides the exit code.
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    /// Bad command-line usage, or a sub-command that is not built yet (exit 2).
    #[error("{0}")]
    Usage(String),
    /// The configuration file is invalid (exit 2).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A precondition refused the run before anything changed (exit 3).
    #[error("{0}")]
    Refused(String),
    /// The operation failed (exit 1).
    #[error("{0:#}")]
    Failed(anyhow::Error),
}

impl OpsError {
    /// The exit status this error maps to.
    pub fn status(&self) -> ExitStatus {
        match self {
            OpsError::Usage(_) | OpsError::Config(_) => ExitStatus::Usage,
            OpsError::Refused(_) => ExitStatus::Refused,
            OpsError::Failed(_) => ExitStatus::Failed,
        }
    }

    /// Shorthand for a [`OpsError::Failed`] from anything printable.
    pub fn failed(msg: impl std::fmt::Display) -> Self {
        OpsError::Failed(anyhow::anyhow!("{msg}"))
    }
}

impl From<anyhow::Error> for OpsError {
    /// Keeps the error's [`ErrorKind`] tag: usage → exit 2, refused → exit 3, else exit 1.
    fn from(e: anyhow::Error) -> Self {
        match ExitStatus::of(&e) {
            ExitStatus::Usage => OpsError::Usage(format!("{e:#}")),
            ExitStatus::Refused => OpsError::Refused(format!("{e:#}")),
            _ => OpsError::Failed(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_the_documented_ones() {
        assert_eq!(ExitStatus::Success.code(), 0);
        assert_eq!(OpsError::failed("x").status().code(), 1);
        assert_eq!(OpsError::Usage("x".into()).status().code(), 2);
        assert_eq!(OpsError::Refused("x".into()).status().code(), 3);
    }

    #[test]
    fn the_tag_decides_the_code_wherever_it_sits_and_the_text_is_unchanged() {
        use anyhow::Context as _;
        let e = Err::<(), _>(std::io::Error::other("mode 0644"))
            .context("the password file /etc/pw")
            .usage_error()
            .context("connecting to the source")
            .unwrap_err();
        assert_eq!(ExitStatus::of(&e), ExitStatus::Usage);
        assert_eq!(
            format!("{e:#}"),
            "connecting to the source: the password file /etc/pw: mode 0644"
        );
        assert_eq!(OpsError::from(e).status().code(), 2);

        let r = refused("the backup host does not answer");
        assert_eq!(OpsError::from(r).status().code(), 3);
        // Text that merely mentions a config key is not a usage error.
        let f = anyhow::anyhow!("archive.source_uri timed out");
        assert_eq!(OpsError::from(f).status().code(), 1);
    }
}
