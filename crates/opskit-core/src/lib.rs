//! opskit's shared core.
//!
//! Everything a runbook needs that is not specific to one runbook: the typed and validated
//! configuration ([`config`]), the Plan → Step engine with its journal ([`plan`], [`engine`],
//! [`journal`]), failure alerts ([`alert`]), Prometheus textfile metrics ([`metrics`]),
//! logging and progress ([`logging`], [`progress`]), stop requests ([`interrupt`]) and the
//! exit-code contract ([`error`]).
//! Data flows one way: config → planner (in a runbook crate) → [`plan::Plan`] → [`engine`] →
//! journal, metrics and alert.

#![warn(missing_docs)]

pub mod alert;
pub mod config;
pub mod engine;
pub mod error;
pub mod interrupt;
pub mod journal;
pub mod logging;
pub mod metrics;
pub mod plan;
pub mod proc;
pub mod progress;
pub mod secret;
pub mod util;

pub use error::{Classify, ErrorKind, ExitStatus, OpsError};
