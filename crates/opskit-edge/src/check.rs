//! `nginx -t` of a rendered config in a scratch prefix; any `[warn]` or `[emerg]` fails.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use opskit_core::proc;

/// How long `nginx -t` may take (it resolves upstream names).
pub const NGINX_TEST_TIMEOUT: Duration = Duration::from_secs(20);

/// How a rendered config that was tested in a scratch prefix is named in messages (the
/// scratch copy is deleted afterwards, so its path would lead nowhere).
pub const RENDERED: &str = "rendered nginx.conf";

/// A line of the tested config that one of nginx's messages points at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CitedLine {
    /// 1-based line number.
    pub line: usize,
    /// The line as it is in the config.
    pub text: String,
}

/// The result of testing one config with one nginx binary.
#[derive(Debug, Clone, Serialize, Deserialize)]
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
    /// The config lines nginx's messages point at, in the order first cited.
    #[serde(default)]
    pub cited: Vec<CitedLine>,
}

impl CheckReport {
    /// Everything nginx printed, each message that points at a line of the tested config
    /// followed by that line (`    57 | http2 on;`).
    pub fn render_text(&self) -> String {
        let mut out = String::new();
        for l in self.output.lines() {
            out.push_str(l);
            out.push('\n');
            for c in &self.cited {
                if l.ends_with(&format!(":{}", c.line)) {
                    out.push_str(&format!("    {} | {}\n", c.line, c.text.trim()));
                }
            }
        }
        out
    }

    /// Points nginx's messages about `path` at `text` (the config as tested): records the
    /// cited lines and, when `name` is given, calls the file `name` instead of `path`.
    pub fn cite(&mut self, path: &Path, text: &str, name: Option<&str>) {
        let path_s = path.display().to_string();
        let lines: Vec<&str> = text.lines().collect();
        for msg in self.output.lines() {
            let Some(at) = msg.rfind(&format!("{path_s}:")) else {
                continue;
            };
            let num = &msg[at + path_s.len() + 1..];
            if let Ok(n) = num.trim().parse::<usize>()
                && let Some(line) = lines.get(n.wrapping_sub(1))
                && !self.cited.iter().any(|c| c.line == n)
            {
                self.cited.push(CitedLine {
                    line: n,
                    text: line.to_string(),
                });
            }
        }
        if let Some(name) = name {
            let rename = |s: &str| s.replace(&path_s, name);
            self.output = rename(&self.output);
            self.command = rename(&self.command);
            self.errors = self.errors.iter().map(|e| rename(e)).collect();
            self.warnings = self.warnings.iter().map(|e| rename(e)).collect();
        }
    }

    /// The errors and warnings as one line each, with the cited config line after each one
    /// that points at it (for the `apply` step's error).
    pub fn problems(&self) -> Vec<String> {
        self.errors
            .iter()
            .chain(&self.warnings)
            .map(|m| {
                match self
                    .cited
                    .iter()
                    .find(|c| m.ends_with(&format!(":{}", c.line)))
                {
                    Some(c) => format!("{m} → `{}`", c.text.trim()),
                    None => m.clone(),
                }
            })
            .collect()
    }
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
        cited: Vec::new(),
    })
}

/// Writes `text` into a fresh scratch prefix (`<tmp>/conf/nginx.conf`, with `logs/`) and
/// tests it with `nginx -t -p <scratch>`. The scratch directory is removed afterwards, so the
/// report calls the file [`RENDERED`] and quotes the lines nginx points at.
pub fn check_rendered(nginx: &Path, text: &str) -> anyhow::Result<CheckReport> {
    let scratch = tempfile::Builder::new()
        .prefix("opskit-nginx-check-")
        .tempdir()
        .context("creating a scratch prefix for nginx -t")?;
    let conf = write_scratch(scratch.path(), text)?;
    let mut report = test_config(nginx, Some(scratch.path()), &conf)?;
    report.cite(&conf, text, Some(RENDERED));
    let prefix = scratch.path().display().to_string();
    report.command = report.command.replace(&prefix, "<scratch prefix>");
    Ok(report)
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
