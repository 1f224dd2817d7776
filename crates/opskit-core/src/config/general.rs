//! `[general]`: where opskit keeps its state and metrics, and the operators' time zone.

use serde::{Deserialize, Serialize};

use super::value::{AbsPath, TimeZoneName};

/// Settings shared by every runbook.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GeneralConfig {
    /// Journals and locks of runs live here.
    pub state_dir: AbsPath,
    /// node_exporter's textfile-collector directory; each run writes `opskit_<runbook>.prom`.
    pub metrics_dir: AbsPath,
    /// The time zone of the writers and of the schedules (month bounds are computed in it).
    pub timezone: TimeZoneName,
}

impl Default for GeneralConfig {
    fn default() -> Self {
        GeneralConfig {
            state_dir: "/var/lib/opskit".parse().expect("valid default"),
            metrics_dir: "/var/lib/node_exporter/textfile_collector"
                .parse()
                .expect("valid default"),
            timezone: "Asia/Shanghai".parse().expect("valid default"),
        }
    }
}
