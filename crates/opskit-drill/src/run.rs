//! Driving the real `opskit` binary with the lab's config, with a time limit.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use opskit_core::proc;

use crate::report::Check;

/// The opskit binary plus the lab's config.
pub struct Opskit {
    exe: PathBuf,
    config: PathBuf,
}

/// One finished invocation.
pub struct Invocation {
    /// Exit code (-1 when killed by a signal or the time limit).
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
    /// Wall time.
    pub secs: f64,
}

impl Invocation {
    /// stdout parsed as one of the runbooks' report types.
    pub fn parse<T: serde::de::DeserializeOwned>(&self) -> anyhow::Result<T> {
        serde_json::from_str(&self.stdout).with_context(|| {
            format!(
                "stdout is not the expected report ({}): {}",
                std::any::type_name::<T>(),
                self.stdout.chars().take(300).collect::<String>()
            )
        })
    }

    /// The last non-empty stderr line (the error an operator would read).
    pub fn last_error(&self) -> String {
        self.stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("")
            .chars()
            .take(300)
            .collect()
    }
}

/// The time limit of one opskit invocation in the drill.
const LIMIT: Duration = Duration::from_secs(600);

impl Opskit {
    /// Drives `exe --config config …`.
    pub fn new(exe: &Path, config: &Path) -> Opskit {
        Opskit {
            exe: exe.to_path_buf(),
            config: config.to_path_buf(),
        }
    }

    /// The same binary with another config file.
    pub fn with_config(&self, config: &Path) -> Opskit {
        Opskit::new(&self.exe, config)
    }

    /// The lab config.
    pub fn config(&self) -> &Path {
        &self.config
    }

    /// Runs `opskit --config <lab> --log-format json <args>` and waits (killed at the limit).
    pub fn run(&self, args: &[&str]) -> anyhow::Result<Invocation> {
        let mut cmd = Command::new(&self.exe);
        cmd.arg("--config")
            .arg(&self.config)
            .args(["--log-format", "json"])
            .args(args)
            .env_remove("OPSKIT_CONFIG");
        let clock = Instant::now();
        let (code, stdout, stderr) = match proc::run(&mut cmd, LIMIT) {
            Ok(out) => (out.code.unwrap_or(-1), out.stdout_text(), out.stderr_text()),
            // Past the limit: killed, reported as exit -1 with the reason.
            Err(e) if clock.elapsed() >= LIMIT => (-1, String::new(), format!("{e:#}")),
            Err(e) => return Err(e),
        };
        Ok(Invocation {
            code,
            stdout,
            stderr,
            secs: clock.elapsed().as_secs_f64(),
        })
    }

    /// Runs and checks only the exit code.
    pub fn check(&self, runbook: &str, name: &str, args: &[&str], want: i32) -> Check {
        match self.run(args) {
            Ok(inv) => Check::new(
                runbook,
                name,
                inv.code == want,
                format!(
                    "`opskit {}` exit {}{}",
                    args.join(" "),
                    inv.code,
                    if inv.code == want {
                        String::new()
                    } else {
                        format!(" (want {want}): {}", inv.last_error())
                    }
                ),
                inv.secs,
            ),
            Err(e) => Check::new(runbook, name, false, format!("{e:#}"), 0.0),
        }
    }
}
