//! The exit-code contract shared by every command.
//!
//! | code | meaning |
//! |------|---------|
//! | 0 | done (or nothing to do) |
//! | 1 | a run failed; the alert was raised |
//! | 2 | bad usage or bad config; nothing was changed |
//! | 3 | a precondition refused the run; nothing was changed |

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
    fn from(e: anyhow::Error) -> Self {
        OpsError::Failed(e)
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
}
