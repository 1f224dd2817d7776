//! The date-anomaly warning. Documents whose date field is missing, of another type or
//! malformed match no month's bounds, so no run ever archives or deletes them. Besides the
//! `anomalies` gauge, the webhook gets one warning per month (step `anomalies`, same schema as
//! a failure alert; the run goes on), so someone looks at them.
//!
//! The delivery is remembered in the state directory
//! ([`ArchiveJob::anomalies_warned_marker`]): re-runs, resumed runs and late passes of the
//! same month do not send it again; a warning that could not be delivered is tried again by
//! the next run. It is not written to the alert receipt (`OPSKIT_ALERT_RECEIPT`), so the cron
//! wrapper still alerts when the run later dies.

use chrono::Utc;
use opskit_core::alert::{AlertPayload, send_warning_best_effort};
use serde::{Deserialize, Serialize};

use crate::job::{ArchiveJob, RUNBOOK};
use crate::source::Anomalies;

/// The alert `step` of the warning.
pub const STEP: &str = "anomalies";

/// What the marker file holds: when the warning went out and what it said.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WarnedMarker {
    /// When the warning was delivered (RFC 3339, UTC).
    pub sent_at: chrono::DateTime<Utc>,
    /// The counts it reported.
    pub missing: u64,
    /// See [`Anomalies::wrong_type`].
    pub wrong_type: u64,
    /// See [`Anomalies::malformed`].
    pub malformed: u64,
}

/// The warning's text.
pub fn message(job: &ArchiveJob, a: &Anomalies) -> String {
    let c = &job.config;
    let examples = if a.examples.is_empty() {
        String::new()
    } else {
        format!("; e.g. {}", a.examples.join(", "))
    };
    format!(
        "warning (the run goes on): {} documents of {}.{} have a `{}` that no month will ever match \
         (missing {}, other type {}, malformed {}){examples}; they are never archived nor deleted. \
         Fix them by hand (docs/runbooks/archive.md, \"What can go wrong\"). Sent once for {}",
        a.total(),
        c.database,
        c.collection,
        c.date_field,
        a.missing,
        a.wrong_type,
        a.malformed,
        job.bounds.month
    )
}

/// Sends the month's warning unless it was already delivered for this month; returns true
/// when it was delivered now. Never fails the run: a state directory it cannot write only
/// means the warning may come again.
pub fn warn_once(job: &ArchiveJob, a: &Anomalies) -> bool {
    if a.total() == 0 {
        return false;
    }
    let marker = job.anomalies_warned_marker();
    if marker.exists() {
        tracing::debug!(
            "the date-anomaly warning of {} was already sent ({})",
            job.bounds.month,
            marker.display()
        );
        return false;
    }
    let payload = AlertPayload::now(
        RUNBOOK,
        &job.run_key(),
        STEP,
        &message(job, a),
        Utc::now(),
        &job.journal_path().display().to_string(),
    );
    if !send_warning_best_effort(&job.alert, &payload) {
        return false;
    }
    let record = WarnedMarker {
        sent_at: payload.failed_at,
        missing: a.missing,
        wrong_type: a.wrong_type,
        malformed: a.malformed,
    };
    let written = marker
        .parent()
        .map_or(Ok(()), opskit_core::util::create_private_dir_all)
        .and_then(|()| {
            opskit_core::util::write_atomic(
                &marker,
                serde_json::to_string(&record)
                    .expect("serializes")
                    .as_bytes(),
                0o600,
            )
        });
    if let Err(e) = written {
        tracing::warn!(
            "the date-anomaly warning was sent but {} could not be written (it may be sent again): {e:#}",
            marker.display()
        );
    }
    true
}
