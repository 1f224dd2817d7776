//! The monthly archive of spec §1: read one month of records from a [`source::Source`],
//! write them as a mongorestore-compatible `.bson.gz` with a manifest, upload it over SFTP,
//! verify it, and delete exactly the records that are in the verified file and unchanged
//! since.
//!
//! The pipeline is a [`opskit_core::plan::Plan`] built by [`plan::build_plan`]:
//! [`export`] → [`upload`] → [`commit`] (point of no return) → [`purge`]. [`run`] decides which
//! months a run visits and holds each month's [`lock`]; [`status`] reads what runs left.
//! See `docs/BENCHMARKS.md` for the measured speed and memory.

#![warn(missing_docs)]

pub mod anomalies;
pub mod batch;
pub mod bounds;
pub mod commit;
pub mod export;
pub mod job;
pub mod lock;
pub mod plan;
pub mod preflight;
pub mod purge;
pub mod rawbson;
pub mod restore;
pub mod run;
pub mod segment;
pub mod sftp;
pub mod source;
pub mod staged;
pub mod status;
pub mod testhook;
pub mod upload;
pub mod writer;
