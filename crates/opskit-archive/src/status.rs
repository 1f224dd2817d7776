//! `opskit archive status`: one row per pass of each month, read from the journals, the
//! month locks and the restored marks, plus warnings when what is shown cannot be right (no
//! config file, no state directory).

use std::path::{Path, PathBuf};

use opskit_core::config::Config;
use opskit_core::config::value::Month;
use opskit_core::journal::Journal;
use serde::Serialize;

use crate::bounds::FIRST_MONTH;
use crate::job::{ArchiveJob, default_month, journal_dir};
use crate::restore::RestoredMark;

/// The steps of a pass, in run order.
pub const STEPS: [&str; 4] = ["export", "upload", "commit", "purge"];

/// The most months `--months` may ask for (100 years).
pub const MAX_MONTHS: u32 = 1200;

/// One pass of one month.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StatusRow {
    /// `YYYY-MM`.
    pub month: String,
    /// 0 for the main run, k for the k-th late pass.
    pub pass: u32,
    /// The journal key.
    pub run_key: String,
    /// `not run`, `running (pid N)`, `interrupted (re-run to resume)`, or the journal's last
    /// outcome (`succeeded`, `failed`, `rolled_back`, `refused`).
    pub outcome: String,
    /// The completed steps, in run order.
    pub steps_done: Vec<String>,
    /// The staged archive, when it exists.
    pub staged: Option<PathBuf>,
    /// `restored <when> from <file>` when the month was restored into its source.
    pub note: Option<String>,
}

/// Which months to show.
#[derive(Debug, Clone, Copy)]
pub enum Months {
    /// This one.
    One(Month),
    /// The last N, from the month a run without `--month` would archive, backwards (never
    /// before [`FIRST_MONTH`]).
    Last(u32),
}

/// What `status` prints.
#[derive(Debug, Clone, Serialize)]
pub struct StatusReport {
    /// Reasons the rows may not show the real state.
    pub warnings: Vec<String>,
    /// Newest month first; passes in order.
    pub rows: Vec<StatusRow>,
}

/// Builds the report. `no_config_file` is true when opskit runs on its built-in defaults.
pub fn status(
    config: &Config,
    state_dir: &Path,
    no_config_file: bool,
    months: Months,
) -> anyhow::Result<StatusReport> {
    let mut warnings = Vec::new();
    if no_config_file {
        warnings.push(format!(
            "no config file was found (--config, $OPSKIT_CONFIG, {}): this shows the built-in defaults, \
             probably not where the scheduled runs write",
            opskit_core::config::SYSTEM_CONFIG
        ));
    }
    if !state_dir.is_dir() {
        warnings.push(format!(
            "the state directory {} does not exist: no run was ever recorded there (check --state-dir or general.state_dir)",
            state_dir.display()
        ));
    } else if !journal_dir(state_dir).is_dir() {
        warnings.push(format!(
            "no archive journal in {}: no archive run was recorded there yet",
            state_dir.display()
        ));
    }
    let list: Vec<Month> = match months {
        Months::One(m) => vec![m],
        Months::Last(n) => {
            let mut m = default_month(config, chrono::Utc::now());
            let mut v = Vec::new();
            for _ in 0..n.clamp(1, MAX_MONTHS) {
                v.push(m);
                if m <= FIRST_MONTH {
                    break;
                }
                m = m.prev();
            }
            v
        }
    };
    let mut rows = Vec::new();
    for month in list {
        let base = ArchiveJob::new(config, Some(month), state_dir)?;
        let holder = crate::lock::holder(&base.month_lock_path());
        let note = RestoredMark::read(&base)
            .map(|m| format!("restored {} from {}", m.restored_at, m.file));
        let mut pass = 0;
        loop {
            let j = base.clone().with_pass(pass);
            let path = j.journal_path();
            if !path.exists() && pass > 0 {
                break;
            }
            let state = Journal::read_state(&path)?;
            let next_exists = base.clone().with_pass(pass + 1).journal_path().exists();
            let outcome = match &holder {
                // The lock covers the month; it is the newest pass that is running.
                Some(h) if !next_exists => format!("running (pid {})", h.pid),
                _ if !path.exists() => "not run".to_string(),
                _ if state.interrupted => "interrupted (re-run to resume)".to_string(),
                _ => state
                    .last_outcome
                    .map(|o| {
                        serde_json::to_value(o)
                            .ok()
                            .and_then(|v| v.as_str().map(str::to_string))
                            .unwrap_or_default()
                    })
                    .unwrap_or_else(|| "unknown".into()),
            };
            rows.push(StatusRow {
                month: month.to_string(),
                pass,
                run_key: j.run_key(),
                outcome,
                steps_done: STEPS
                    .iter()
                    .filter(|s| state.done.contains_key(**s))
                    .map(|s| s.to_string())
                    .collect(),
                staged: j.local_path().exists().then(|| j.local_path()),
                note: unfinished_note(&j).or_else(|| note.clone()),
            });
            pass += 1;
        }
    }
    Ok(StatusReport { warnings, rows })
}

/// For a segmented pass whose remote file has no final name yet: where the documents
/// deleted so far are.
fn unfinished_note(job: &ArchiveJob) -> Option<String> {
    let log = crate::segment::SegmentLog::load(job).ok().flatten()?;
    if log.segments.is_empty() || job.uploaded_marker().exists() {
        return None;
    }
    Some(format!(
        "unfinished segmented archive: {}; a re-run closes it",
        log.whereabouts(job)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thousand_months_stop_at_the_first_archivable_month_and_warn_about_a_missing_state_dir() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        config.general.timezone = "Asia/Shanghai".parse().unwrap();
        let state = dir.path().join("missing");
        let r = status(&config, &state, true, Months::Last(1000)).unwrap();
        assert_eq!(r.warnings.len(), 2, "{:?}", r.warnings);
        assert!(r.warnings[1].contains("does not exist"));
        assert_eq!(r.rows.len(), 1000.min(r.rows.len()));
        assert!(r.rows.iter().all(|row| row.outcome == "not run"));
        let last = r.rows.last().unwrap();
        assert!(last.month.as_str() >= "1970-01", "{}", last.month);
        let r = status(&config, &state, false, Months::Last(u32::MAX)).unwrap();
        assert_eq!(r.rows.last().unwrap().month, "1970-01");
    }
}
