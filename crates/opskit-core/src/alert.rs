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

use std::time::Duration;

use anyhow::{Context as _, bail};
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::config::AlertConfig;
use crate::config::value::HttpUrl;

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
                .header(
                    "Idempotency-Key",
                    format!("{}-{}", payload.run_key, payload.failed_at.timestamp()),
                )
                .send(body.as_str())
            {
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    if (200..300).contains(&status) {
                        tracing::info!(
                            webhook = %self.url.redacted(),
                            attempt = attempt + 1,
                            "failure alert delivered"
                        );
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
