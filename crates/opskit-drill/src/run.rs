//! Driving the real `opskit` binary with the lab's config, with a time limit.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;

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
    /// stdout parsed as JSON.
    pub fn json(&self) -> anyhow::Result<serde_json::Value> {
        serde_json::from_str(&self.stdout).with_context(|| {
            format!(
                "stdout is not JSON: {}",
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

    /// The lab config.
    pub fn config(&self) -> &Path {
        &self.config
    }

    /// Runs `opskit --config <lab> --log-format json <args>` and waits (killed at the limit).
    pub fn run(&self, args: &[&str]) -> anyhow::Result<Invocation> {
        let clock = Instant::now();
        let dir = tempdir()?;
        let out_path = dir.join("stdout");
        let err_path = dir.join("stderr");
        let mut child = Command::new(&self.exe)
            .arg("--config")
            .arg(&self.config)
            .args(["--log-format", "json"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out_path)?)
            .stderr(std::fs::File::create(&err_path)?)
            .env_remove("OPSKIT_CONFIG")
            .spawn()
            .with_context(|| format!("starting {}", self.exe.display()))?;
        let code = loop {
            if let Some(status) = child.try_wait()? {
                break status.code().unwrap_or(-1);
            }
            if clock.elapsed() > LIMIT {
                let _ = child.kill();
                let _ = child.wait();
                break -1;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let inv = Invocation {
            code,
            stdout: std::fs::read_to_string(&out_path).unwrap_or_default(),
            stderr: std::fs::read_to_string(&err_path).unwrap_or_default(),
            secs: clock.elapsed().as_secs_f64(),
        };
        let _ = std::fs::remove_dir_all(&dir);
        Ok(inv)
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

fn tempdir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!(
        "opskit-drill-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_nanos()
    ));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
