//! The drill's report: one line per check, grouped by runbook.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// One verified expectation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Check {
    /// The runbook (or `lab`, `config`).
    pub runbook: String,
    /// What was expected, in words.
    pub name: String,
    /// Whether it held.
    pub passed: bool,
    /// What was observed.
    pub detail: String,
    /// How long it took.
    pub secs: f64,
}

impl Check {
    /// A check result.
    pub fn new(
        runbook: &str,
        name: &str,
        passed: bool,
        detail: impl Into<String>,
        secs: f64,
    ) -> Check {
        Check {
            runbook: runbook.into(),
            name: name.into(),
            passed,
            detail: detail.into(),
            secs,
        }
    }
}

/// Every check of one drill.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DrillReport {
    /// The lab the drill ran against.
    pub lab_dir: PathBuf,
    /// The checks, in order.
    pub checks: Vec<Check>,
}

impl DrillReport {
    /// An empty report.
    pub fn new(lab_dir: &Path) -> DrillReport {
        DrillReport {
            lab_dir: lab_dir.to_path_buf(),
            checks: Vec::new(),
        }
    }

    /// Runs one timed check: `f` returns what it observed, or why it failed. Returns whether
    /// it passed, so a section can stop at a check the next ones depend on.
    pub fn step(
        &mut self,
        runbook: &str,
        name: &str,
        f: &mut dyn FnMut() -> anyhow::Result<String>,
    ) -> bool {
        let clock = std::time::Instant::now();
        let r = f();
        let ok = r.is_ok();
        self.push(Check::new(
            runbook,
            name,
            ok,
            r.unwrap_or_else(|e| format!("{e:#}")),
            clock.elapsed().as_secs_f64(),
        ));
        ok
    }

    /// Adds a check (and logs it).
    pub fn push(&mut self, c: Check) {
        if c.passed {
            tracing::info!(runbook = %c.runbook, "PASS {}: {}", c.name, c.detail);
        } else {
            tracing::error!(runbook = %c.runbook, "FAIL {}: {}", c.name, c.detail);
        }
        self.checks.push(c);
    }

    /// True when every check passed.
    pub fn passed(&self) -> bool {
        !self.checks.is_empty() && self.checks.iter().all(|c| c.passed)
    }

    /// The report as Markdown (`--report FILE`): a summary line, then one table per runbook.
    pub fn render_markdown(&self) -> String {
        let mut out = String::new();
        let failed = self.checks.iter().filter(|c| !c.passed).count();
        let _ = writeln!(out, "# opskit drill\n");
        let _ = writeln!(
            out,
            "- lab: `{}`\n- host: `{}`\n- finished: {}\n- result: **{}** ({} passed, {} failed)\n",
            self.lab_dir.display(),
            opskit_core::util::hostname(),
            chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            if self.passed() { "PASS" } else { "FAIL" },
            self.checks.len() - failed,
            failed
        );
        let mut runbook = "";
        for c in &self.checks {
            if c.runbook != runbook {
                runbook = &c.runbook;
                let _ = writeln!(
                    out,
                    "\n## {runbook}\n\n| result | check | seconds | observed |\n|---|---|---:|---|"
                );
            }
            let _ = writeln!(
                out,
                "| {} | {} | {:.1} | {} |",
                if c.passed { "PASS" } else { "**FAIL**" },
                md_cell(&c.name),
                c.secs,
                md_cell(&c.detail)
            );
        }
        out
    }

    /// The report as a table for people.
    pub fn render_text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "DRILL  against the lab in {}\n",
            self.lab_dir.display()
        );
        let width = self.checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
        let mut runbook = "";
        for c in &self.checks {
            if c.runbook != runbook {
                runbook = &c.runbook;
                let _ = writeln!(out, "{runbook}");
            }
            let _ = writeln!(
                out,
                "  {}  {:<width$}  {:>6.1}s  {}",
                if c.passed { "PASS" } else { "FAIL" },
                c.name,
                c.secs,
                c.detail
            );
        }
        let failed = self.checks.iter().filter(|c| !c.passed).count();
        let _ = writeln!(
            out,
            "\n{} passed, {} failed",
            self.checks.len() - failed,
            failed
        );
        out
    }
}

/// Text safe inside a Markdown table cell.
fn md_cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_groups_by_runbook_and_counts() {
        let mut r = DrillReport::new(Path::new("/tmp/lab"));
        r.push(Check::new("archive", "exports", true, "100 rows", 1.0));
        r.push(Check::new("archive", "purges", false, "3 rows left", 2.0));
        r.push(Check::new("nginx", "probe", true, "22 checks", 3.0));
        let t = r.render_text();
        assert!(t.contains("archive\n  PASS  exports"));
        assert!(t.contains("  FAIL  purges"));
        assert!(t.contains("nginx\n  PASS  probe"));
        assert!(t.ends_with("2 passed, 1 failed\n"));
        assert!(!r.passed());
        let md = r.render_markdown();
        assert!(md.contains("result: **FAIL** (2 passed, 1 failed)"), "{md}");
        assert!(md.contains("## archive\n\n| result |"), "{md}");
        assert!(
            md.contains("| **FAIL** | purges | 2.0 | 3 rows left |"),
            "{md}"
        );
    }
}
