//! `nginx -t` of a rendered config in a scratch prefix; any `[warn]` or `[emerg]` fails.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::Context as _;
use serde::Serialize;

use opskit_core::proc;

/// How long `nginx -t` may take (it resolves upstream names).
pub const NGINX_TEST_TIMEOUT: Duration = Duration::from_secs(20);

/// The result of testing one config with one nginx binary.
#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    /// The exact command that was run.
    pub command: String,
    /// True when nginx accepted the config without a single warning.
    pub ok: bool,
    /// nginx's `[warn]` lines.
    pub warnings: Vec<String>,
    /// nginx's `[emerg]`, `[alert]`, `[crit]` and `[error]` lines.
    pub errors: Vec<String>,
    /// Everything nginx printed.
    pub output: String,
}

/// The `nginx -t` command for a config file, with an optional prefix.
pub fn test_command(nginx: &Path, prefix: Option<&Path>, config: &Path) -> Command {
    let mut cmd = Command::new(nginx);
    cmd.arg("-t").arg("-q");
    if let Some(p) = prefix {
        cmd.arg("-p").arg(p);
    }
    cmd.arg("-c").arg(config);
    cmd
}

/// Runs `nginx -t` on `config` and classifies what it printed.
pub fn test_config(
    nginx: &Path,
    prefix: Option<&Path>,
    config: &Path,
) -> anyhow::Result<CheckReport> {
    let mut cmd = test_command(nginx, prefix, config);
    let command = proc::display(&cmd);
    let out = proc::run(&mut cmd, NGINX_TEST_TIMEOUT)?;
    let output = format!("{}{}", out.stdout_text(), out.stderr_text());
    let pick = |tags: &[&str]| -> Vec<String> {
        output
            .lines()
            .filter(|l| tags.iter().any(|t| l.contains(t)))
            .map(|l| l.trim().to_string())
            .collect()
    };
    let warnings = pick(&["[warn]"]);
    let errors = pick(&["[emerg]", "[alert]", "[crit]", "[error]"]);
    Ok(CheckReport {
        command,
        ok: out.success() && warnings.is_empty() && errors.is_empty(),
        warnings,
        errors,
        output,
    })
}

/// Writes `text` into a fresh scratch prefix (`<tmp>/conf/nginx.conf`, with `logs/`) and
/// tests it with `nginx -t -p <scratch>`. The scratch directory is removed afterwards.
pub fn check_rendered(nginx: &Path, text: &str) -> anyhow::Result<CheckReport> {
    let scratch = tempfile::Builder::new()
        .prefix("opskit-nginx-check-")
        .tempdir()
        .context("creating a scratch prefix for nginx -t")?;
    let conf = write_scratch(scratch.path(), text)?;
    test_config(nginx, Some(scratch.path()), &conf)
}

fn write_scratch(dir: &Path, text: &str) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir.join("conf"))?;
    std::fs::create_dir_all(dir.join("logs"))?;
    let conf = dir.join("conf/nginx.conf");
    std::fs::write(&conf, text).with_context(|| format!("writing {}", conf.display()))?;
    Ok(conf)
}

/// The installed nginx's version, from `nginx -v`.
pub fn installed_version(nginx: &Path) -> anyhow::Result<(u32, u32, u32)> {
    let out = proc::run(Command::new(nginx).arg("-v"), Duration::from_secs(10))?;
    let text = format!("{}{}", out.stdout_text(), out.stderr_text());
    let v = text
        .split("nginx/")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(opskit_core::config::nginx::parse_nginx_version)
        .with_context(|| format!("`{} -v` printed no version: {text}", nginx.display()))?;
    Ok(v)
}
