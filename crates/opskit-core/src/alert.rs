//! Failure alerts: a JSON POST to the configured webhook, with a timeout per attempt and
//! retries with exponential backoff.
//!
//! The payload (documented in `docs/alerts.md`):
//! ```json
//! {"runbook":"archive","run_key":"archive-2024-01","step":"upload",
//!  "error":"sftp: connection refused","host":"db1","started_at":"2024-02-01T01:00:00Z",
//!  "failed_at":"2024-02-01T01:03:12Z","journal":"/var/lib/opskit/journal/archive/archive-2024-01.jsonl"}
//! ```
//! Delivery failure never hides the run's own failure: the caller logs it and keeps exit 1.
//!
//! A wrapper that alerts only when opskit could not (the cron script) sets
//! [`RECEIPT_ENV`] to a file: each delivered alert appends one line to it.

use std::time::Duration;

use anyhow::{Context as _, bail};
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::config::AlertConfig;
use crate::config::value::HttpUrl;

/// The environment variable naming a file that gets one line per delivered alert
/// (`<run_key> <step>`), so a wrapper knows opskit already alerted.
pub const RECEIPT_ENV: &str = "OPSKIT_ALERT_RECEIPT";

/// The JSON body POSTed to the webhook.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AlertPayload {
    /// Which runbook failed (`archive`, `nginx`, ...).
    pub runbook: String,
    /// The run key (`archive-2024-01`), also the journal's name.
    pub run_key: String,
    /// The step that failed or refused.
    pub step: String,
    /// The error, as printed to the operator (never contains secrets).
    pub error: String,
    /// The host the run was on.
    pub host: String,
    /// When the run started (RFC 3339, UTC).
    pub started_at: DateTime<Utc>,
    /// When it failed (RFC 3339, UTC).
    pub failed_at: DateTime<Utc>,
    /// The journal file, for the on-call engineer.
    pub journal: String,
}

impl AlertPayload {
    /// A payload for a failure of `run_key` at `step`, now, on this host.
    pub fn now(
        runbook: &str,
        run_key: &str,
        step: &str,
        error: &str,
        started_at: DateTime<Utc>,
        journal: &str,
    ) -> AlertPayload {
        AlertPayload {
            runbook: runbook.to_string(),
            run_key: run_key.to_string(),
            step: step.to_string(),
            error: error.to_string(),
            host: crate::util::hostname(),
            started_at,
            failed_at: Utc::now(),
            journal: journal.to_string(),
        }
    }

    /// The `Idempotency-Key` header: the same on every retry of this alert.
    pub fn idempotency_key(&self) -> String {
        format!("{}-{}", self.run_key, self.failed_at.timestamp())
    }
}

/// Sends `payload` with the alert settings of `cfg` (nothing when no webhook is configured)
/// and logs what happened; never fails, so the caller's own error is what the operator sees.
/// For failures outside the engine (a refusal before a plan exists, a panic).
pub fn send_best_effort(cfg: &AlertConfig, payload: &AlertPayload) {
    match Alerter::from_config(cfg) {
        Ok(Some(alerter)) => {
            if let Err(e) = alerter.send(payload) {
                tracing::error!("the failure alert could not be delivered: {e:#}");
            }
        }
        Ok(None) => tracing::debug!("no alert.webhook_url: not alerting"),
        Err(e) => tracing::error!("the failure alert could not be sent: {e:#}"),
    }
}

/// Sends a warning (the run goes on) in the alert schema, best effort, and says whether it was
/// delivered. Unlike a failure alert it is not written to the receipt file of
/// [`RECEIPT_ENV`]: a wrapper must still alert when the run itself later fails.
pub fn send_warning_best_effort(cfg: &AlertConfig, payload: &AlertPayload) -> bool {
    match Alerter::from_config(cfg) {
        Ok(Some(alerter)) => match alerter.deliver(payload, false) {
            Ok(()) => true,
            Err(e) => {
                tracing::error!("the warning could not be delivered: {e:#}");
                false
            }
        },
        Ok(None) => {
            tracing::debug!("no alert.webhook_url: not sending the warning");
            false
        }
        Err(e) => {
            tracing::error!("the warning could not be sent: {e:#}");
            false
        }
    }
}

/// Appends `<run_key> <step>` to the receipt file of [`RECEIPT_ENV`], if one is set.
fn write_receipt(payload: &AlertPayload) {
    let Some(path) = std::env::var_os(RECEIPT_ENV).filter(|p| !p.is_empty()) else {
        return;
    };
    use std::io::Write as _;
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut f| writeln!(f, "{} {}", payload.run_key, payload.step));
    if let Err(e) = written {
        tracing::warn!(
            "cannot write the alert receipt {}: {e}",
            path.to_string_lossy()
        );
    }
}

/// Sends alerts to one webhook.
pub struct Alerter {
    url: HttpUrl,
    agent: ureq::Agent,
    retries: u32,
    backoff: Duration,
}

impl Alerter {
    /// An alerter from config, or `None` when no webhook is configured.
    pub fn from_config(cfg: &AlertConfig) -> anyhow::Result<Option<Alerter>> {
        let Some(url) = cfg.webhook_url.clone() else {
            return Ok(None);
        };
        let mut builder = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(cfg.timeout_secs.get())))
            .http_status_as_error(false)
            .user_agent(concat!("opskit/", env!("CARGO_PKG_VERSION")));
        if let Some(ca) = &cfg.ca_file {
            let pem =
                std::fs::read(ca.path()).with_context(|| format!("reading alert.ca_file {ca}"))?;
            let certs: Vec<_> = ureq::tls::parse_pem(&pem)
                .filter_map(|item| match item {
                    Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                    _ => None,
                })
                .collect();
            if certs.is_empty() {
                bail!("alert.ca_file {ca} holds no PEM certificate");
            }
            builder = builder.tls_config(
                ureq::tls::TlsConfig::builder()
                    .root_certs(ureq::tls::RootCerts::new_with_certs(&certs))
                    .build(),
            );
        }
        Ok(Some(Alerter {
            url,
            agent: builder.build().into(),
            retries: cfg.retries,
            backoff: Duration::from_millis(cfg.backoff_ms.get()),
        }))
    }

    /// POSTs the payload; retries connection errors, timeouts, 5xx and 429.
    pub fn send(&self, payload: &AlertPayload) -> anyhow::Result<()> {
        self.deliver(payload, true)
    }

    /// POSTs the payload; `receipt`: record the delivery in the [`RECEIPT_ENV`] file.
    fn deliver(&self, payload: &AlertPayload, receipt: bool) -> anyhow::Result<()> {
        let body = serde_json::to_string(payload).expect("payload serializes");
        let mut delay = self.backoff;
        let mut last_error = String::new();
        for attempt in 0..=self.retries {
            if attempt > 0 {
                std::thread::sleep(delay);
                delay = delay.saturating_mul(2);
            }
            match self
                .agent
                .post(self.url.as_str())
                .header("Content-Type", "application/json")
                .header("Idempotency-Key", payload.idempotency_key())
                .send(body.as_str())
            {
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    if (200..300).contains(&status) {
                        tracing::info!(
                            webhook = %self.url.redacted(),
                            attempt = attempt + 1,
                            step = %payload.step,
                            "alert delivered"
                        );
                        if receipt {
                            write_receipt(payload);
                        }
                        return Ok(());
                    }
                    last_error = format!("HTTP {status}");
                    if !(status >= 500 || status == 429 || status == 408) {
                        break;
                    }
                }
                Err(e) => last_error = e.to_string(),
            }
            tracing::warn!(
                webhook = %self.url.redacted(),
                attempt = attempt + 1,
                "alert delivery failed: {last_error}"
            );
        }
        bail!(
            "webhook {} did not accept the alert: {last_error}",
            self.url.redacted()
        )
    }
}
