//! Prometheus textfile-collector metrics, written atomically (temp file, fsync, rename).
//!
//! Each runbook owns `<metrics_dir>/opskit_<runbook>.prom`:
//! ```text
//! opskit_last_run_timestamp_seconds{runbook="archive"} 1706749392
//! opskit_last_success_timestamp_seconds{runbook="archive"} 1706749392
//! opskit_last_run_duration_seconds{runbook="archive"} 192.4
//! opskit_last_run_success{runbook="archive"} 1
//! opskit_archive_documents_exported{runbook="archive"} 60000000
//! opskit_run_started_timestamp_seconds{runbook="archive"} 1706749200
//! opskit_run_in_progress{runbook="archive"} 0
//! ```
//! The last-success timestamp survives failed runs: it is carried over from the previous file.
//! The engine marks a run as started ([`MetricsWriter::run_started`]: in progress 1, the start
//! time) before its first step and as ended when it writes the run's metrics (in progress 0), so
//! a run that hangs or is killed stays visible as "in progress since …" to the alert rules
//! (`deploy/prometheus/opskit.rules.yml`, `docs/metrics.md`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::Context as _;
use chrono::{DateTime, Utc};

use crate::util::write_atomic;

/// What one run reports.
#[derive(Debug, Clone, PartialEq)]
pub struct RunMetrics {
    /// The runbook.
    pub runbook: String,
    /// When the run ended.
    pub finished_at: DateTime<Utc>,
    /// How long it took.
    pub duration_secs: f64,
    /// Whether it succeeded.
    pub success: bool,
    /// The runbook's own counters, named without prefix (`documents_exported`).
    pub counters: BTreeMap<String, f64>,
}

/// Unix time the current (or last) run started; written when a run starts.
pub const RUN_STARTED: &str = "opskit_run_started_timestamp_seconds";
/// 1 from a run's start until its end is written, else 0. Stays 1 when a run is killed.
pub const RUN_IN_PROGRESS: &str = "opskit_run_in_progress";

/// Writes metrics files into one directory.
pub struct MetricsWriter {
    dir: PathBuf,
    /// Runbooks whose start this writer recorded and whose end it has not written yet, with
    /// the start time: only the invocation that started a run may mark it ended (a run refused
    /// by the lock must not hide the run that holds it).
    open_runs: Mutex<BTreeMap<String, f64>>,
}

impl MetricsWriter {
    /// A writer for `dir` (created on first write).
    pub fn new(dir: &Path) -> MetricsWriter {
        MetricsWriter {
            dir: dir.to_path_buf(),
            open_runs: Mutex::new(BTreeMap::new()),
        }
    }

    /// Marks a run of `runbook` as started at `at`: the file keeps the last run's samples and
    /// gains the start time with in progress 1. A metrics failure never stops a run: it is
    /// logged, not returned.
    pub fn run_started(&self, runbook: &str, at: DateTime<Utc>) {
        let started = at.timestamp() as f64;
        let path = self.path_for(runbook);
        let result = std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("creating metrics directory {}", self.dir.display()))
            .and_then(|()| {
                let previous = std::fs::read_to_string(&path).unwrap_or_default();
                let mut text = without_metrics(&previous, &[RUN_STARTED, RUN_IN_PROGRESS]);
                text.push_str(&render_run_state(runbook, started, true));
                write_atomic(&path, text.as_bytes(), 0o644)
            });
        match result {
            Ok(()) => {
                self.open_runs
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(runbook.to_string(), started);
            }
            Err(e) => tracing::error!("the run-started metric could not be written: {e:#}"),
        }
    }

    /// The file a runbook's metrics go to.
    pub fn path_for(&self, runbook: &str) -> PathBuf {
        self.dir.join(format!("opskit_{runbook}.prom"))
    }

    /// Writes the file for one run, atomically.
    pub fn write(&self, m: &RunMetrics) -> anyhow::Result<PathBuf> {
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("creating metrics directory {}", self.dir.display()))?;
        let path = self.path_for(&m.runbook);
        let previous = std::fs::read_to_string(&path).unwrap_or_default();
        let previous_success = sample_value(&previous, "opskit_last_success_timestamp_seconds");
        let last_success = if m.success {
            Some(m.finished_at.timestamp() as f64)
        } else {
            previous_success
        };
        let mut text = render(m, last_success);
        let opened = self
            .open_runs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&m.runbook);
        // This invocation's run ends here; any other run's state is carried over unchanged.
        let run_state = match opened {
            Some(started) => Some((started, false)),
            None => sample_value(&previous, RUN_STARTED).map(|started| {
                let running = sample_value(&previous, RUN_IN_PROGRESS) == Some(1.0);
                (started, running)
            }),
        };
        if let Some((started, running)) = run_state {
            text.push_str(&render_run_state(&m.runbook, started, running));
        }
        write_atomic(&path, text.as_bytes(), 0o644)?;
        Ok(path)
    }
}

/// The start time and in-progress gauge of a runbook's run.
fn render_run_state(runbook: &str, started: f64, in_progress: bool) -> String {
    let label = format!("{{runbook=\"{}\"}}", escape_label(runbook));
    let mut out = String::new();
    for (name, help, value) in [
        (
            RUN_STARTED,
            "Unix time the current or last run started.",
            started,
        ),
        (
            RUN_IN_PROGRESS,
            "1 while a run is in progress (stays 1 if it was killed), else 0.",
            if in_progress { 1.0 } else { 0.0 },
        ),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} gauge");
        let _ = writeln!(out, "{name}{label} {value}");
    }
    out
}

/// The exposition text without the HELP, TYPE and sample lines of `names`.
fn without_metrics(text: &str, names: &[&str]) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let name = match line
            .strip_prefix("# HELP ")
            .or(line.strip_prefix("# TYPE "))
        {
            Some(rest) => rest.split(' ').next().unwrap_or(""),
            None => line.split(['{', ' ']).next().unwrap_or(""),
        };
        if !names.contains(&name) {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// One sample of a labelled gauge, for reports that are not runs of a plan (the per-replica
/// lag `opskit mysql topology` reports).
#[derive(Debug, Clone, PartialEq)]
pub struct LabelledGauge {
    /// The full metric name (`opskit_mysql_replica_lag_seconds`).
    pub name: String,
    /// The `# HELP` text.
    pub help: String,
    /// Label names and values.
    pub labels: Vec<(String, String)>,
    /// The value.
    pub value: f64,
}

impl MetricsWriter {
    /// Writes `<dir>/<file>.prom` holding exactly `gauges`, atomically. A separate file per
    /// report, so it never overwrites a runbook's run metrics.
    pub fn write_gauges(&self, file: &str, gauges: &[LabelledGauge]) -> anyhow::Result<PathBuf> {
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("creating metrics directory {}", self.dir.display()))?;
        let path = self.dir.join(format!("{}.prom", metric_name(file)));
        write_atomic(&path, render_gauges(gauges).as_bytes(), 0o644)?;
        Ok(path)
    }
}

/// Renders labelled gauges (`# HELP` and `# TYPE` once per name, in first-seen order).
pub fn render_gauges(gauges: &[LabelledGauge]) -> String {
    let mut out = String::new();
    let mut names: Vec<&str> = Vec::new();
    for g in gauges {
        if !names.contains(&g.name.as_str()) {
            names.push(&g.name);
        }
    }
    for name in names {
        let name_ok = metric_name(name);
        let mut first = true;
        for g in gauges.iter().filter(|g| g.name == name) {
            if first {
                let _ = writeln!(out, "# HELP {name_ok} {}", g.help);
                let _ = writeln!(out, "# TYPE {name_ok} gauge");
                first = false;
            }
            let labels: Vec<String> = g
                .labels
                .iter()
                .map(|(k, v)| format!("{}=\"{}\"", metric_name(k), escape_label(v)))
                .collect();
            if labels.is_empty() {
                let _ = writeln!(out, "{name_ok} {}", g.value);
            } else {
                let _ = writeln!(out, "{name_ok}{{{}}} {}", labels.join(","), g.value);
            }
        }
    }
    out
}

fn metric_name(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn escape_label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Renders the text exposition format.
pub fn render(m: &RunMetrics, last_success: Option<f64>) -> String {
    let label = format!("{{runbook=\"{}\"}}", escape_label(&m.runbook));
    let mut out = String::new();
    let mut gauge = |name: &str, help: &str, value: f64| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} gauge");
        let _ = writeln!(out, "{name}{label} {value}");
    };
    gauge(
        "opskit_last_run_timestamp_seconds",
        "Unix time the last run ended.",
        m.finished_at.timestamp() as f64,
    );
    if let Some(ts) = last_success {
        gauge(
            "opskit_last_success_timestamp_seconds",
            "Unix time the last successful run ended.",
            ts,
        );
    }
    gauge(
        "opskit_last_run_duration_seconds",
        "Wall time of the last run.",
        m.duration_secs,
    );
    gauge(
        "opskit_last_run_success",
        "1 if the last run succeeded, 0 if it failed.",
        if m.success { 1.0 } else { 0.0 },
    );
    for (name, value) in &m.counters {
        let full = format!("opskit_{}_{}", metric_name(&m.runbook), metric_name(name));
        gauge(&full, "Reported by the last run.", *value);
    }
    out
}

/// Reads the value of a sample from exposition text (first sample of that name).
pub fn sample_value(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(success: bool, at: i64) -> RunMetrics {
        let mut counters = BTreeMap::new();
        counters.insert("documents_exported".into(), 42.0);
        RunMetrics {
            runbook: "archive".into(),
            finished_at: DateTime::from_timestamp(at, 0).unwrap(),
            duration_secs: 1.5,
            success,
            counters,
        }
    }

    #[test]
    fn labelled_gauges_get_one_header_per_name_and_escaped_labels() {
        let dir = tempfile::tempdir().unwrap();
        let g = |server: &str, v: f64| LabelledGauge {
            name: "opskit_mysql_replica_lag_seconds".into(),
            help: "Replication lag.".into(),
            labels: vec![("server".into(), server.into())],
            value: v,
        };
        let p = MetricsWriter::new(dir.path())
            .write_gauges(
                "opskit_mysql_topology",
                &[g("Slave_01", 0.0), g("a\"b", 3.0)],
            )
            .unwrap();
        assert!(p.ends_with("opskit_mysql_topology.prom"));
        let text = std::fs::read_to_string(&p).unwrap();
        assert_eq!(text.matches("# TYPE").count(), 1, "{text}");
        assert!(text.contains("opskit_mysql_replica_lag_seconds{server=\"Slave_01\"} 0\n"));
        assert!(text.contains("{server=\"a\\\"b\"} 3\n"), "{text}");
    }

    #[test]
    fn writes_parses_back_and_keeps_last_success() {
        let dir = tempfile::tempdir().unwrap();
        let w = MetricsWriter::new(dir.path());
        let p = w.write(&run(true, 1000)).unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        assert_eq!(sample_value(&text, "opskit_last_run_success"), Some(1.0));
        assert_eq!(
            sample_value(&text, "opskit_archive_documents_exported"),
            Some(42.0)
        );
        w.write(&run(false, 2000)).unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        assert_eq!(
            sample_value(&text, "opskit_last_run_timestamp_seconds"),
            Some(2000.0)
        );
        assert_eq!(
            sample_value(&text, "opskit_last_success_timestamp_seconds"),
            Some(1000.0)
        );
        assert_eq!(sample_value(&text, "opskit_last_run_success"), Some(0.0));
        // No temp file is left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_started_run_is_in_progress_until_its_end_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let w = MetricsWriter::new(dir.path());
        w.write(&run(true, 1000)).unwrap();
        w.run_started("archive", DateTime::from_timestamp(1500, 0).unwrap());
        let text = std::fs::read_to_string(w.path_for("archive")).unwrap();
        assert_eq!(sample_value(&text, RUN_IN_PROGRESS), Some(1.0));
        assert_eq!(sample_value(&text, RUN_STARTED), Some(1500.0));
        // The last run's samples stay visible while the next one runs.
        assert_eq!(
            sample_value(&text, "opskit_last_success_timestamp_seconds"),
            Some(1000.0)
        );
        assert_eq!(
            sample_value(&text, "opskit_archive_documents_exported"),
            Some(42.0)
        );
        // Starting twice replaces the samples; it never duplicates them.
        w.run_started("archive", DateTime::from_timestamp(1600, 0).unwrap());
        let text = std::fs::read_to_string(w.path_for("archive")).unwrap();
        assert_eq!(text.matches("opskit_run_in_progress{").count(), 1, "{text}");
        assert_eq!(
            text.matches("# TYPE opskit_run_started").count(),
            1,
            "{text}"
        );
        assert_eq!(sample_value(&text, RUN_STARTED), Some(1600.0));

        w.write(&run(false, 2000)).unwrap();
        let text = std::fs::read_to_string(w.path_for("archive")).unwrap();
        assert_eq!(sample_value(&text, RUN_IN_PROGRESS), Some(0.0));
        assert_eq!(sample_value(&text, RUN_STARTED), Some(1600.0));
        assert_eq!(sample_value(&text, "opskit_last_run_success"), Some(0.0));
    }

    #[test]
    fn an_invocation_that_did_not_start_the_run_leaves_it_in_progress() {
        let dir = tempfile::tempdir().unwrap();
        // A run started and was killed (its writer never wrote the end).
        MetricsWriter::new(dir.path())
            .run_started("archive", DateTime::from_timestamp(1500, 0).unwrap());
        // Another invocation (refused by the lock) writes its own outcome.
        let other = MetricsWriter::new(dir.path());
        other.write(&run(false, 2000)).unwrap();
        let text = std::fs::read_to_string(other.path_for("archive")).unwrap();
        assert_eq!(sample_value(&text, RUN_IN_PROGRESS), Some(1.0));
        assert_eq!(sample_value(&text, RUN_STARTED), Some(1500.0));
        assert_eq!(sample_value(&text, "opskit_last_run_success"), Some(0.0));
    }

    #[test]
    fn a_runbook_that_never_started_a_run_writes_no_run_state() {
        let dir = tempfile::tempdir().unwrap();
        let w = MetricsWriter::new(dir.path());
        w.write(&run(true, 1000)).unwrap();
        let text = std::fs::read_to_string(w.path_for("archive")).unwrap();
        assert!(!text.contains(RUN_STARTED), "{text}");
        assert!(!text.contains(RUN_IN_PROGRESS), "{text}");
    }
}
