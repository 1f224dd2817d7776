//! `[alert]`: the webhook called when a run fails.

use serde::{Deserialize, Serialize};

use super::value::{AbsPath, HttpUrl, Positive};

/// Where and how failure alerts are delivered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertConfig {
    /// The webhook that receives a JSON POST on any runbook failure. Empty string: no alert.
    #[serde(with = "optional_url")]
    pub webhook_url: Option<HttpUrl>,
    /// Seconds allowed for each delivery attempt (connect + send + response).
    pub timeout_secs: Positive,
    /// Extra attempts after the first one fails (connection error, timeout, 5xx or 429).
    pub retries: u32,
    /// Delay before the first retry in milliseconds; doubles on each further retry.
    pub backoff_ms: Positive,
    /// PEM bundle of CAs to trust for an https webhook (default: the built-in web PKI roots).
    pub ca_file: Option<AbsPath>,
}

impl Default for AlertConfig {
    fn default() -> Self {
        AlertConfig {
            webhook_url: Some(
                "https://monitor.ipo.com/webhook/mongodb"
                    .parse()
                    .expect("valid default"),
            ),
            timeout_secs: Positive::new(10),
            retries: 3,
            backoff_ms: Positive::new(500),
            ca_file: None,
        }
    }
}

/// `""` in TOML means "no webhook"; anything else must be a valid URL.
mod optional_url {
    use serde::{Deserialize, Deserializer, Serializer};

    use super::HttpUrl;

    pub fn serialize<S: Serializer>(v: &Option<HttpUrl>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(v.as_ref().map_or("", |u| u.as_str()))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<HttpUrl>, D::Error> {
        let s = String::deserialize(d)?;
        if s.is_empty() {
            return Ok(None);
        }
        HttpUrl::try_from(s)
            .map(Some)
            .map_err(serde::de::Error::custom)
    }
}
