//! The monthly archive of spec §1: read one month of records from a [`source::Source`],
//! write them as a mongorestore-compatible `.bson.gz` with a manifest, upload it over SFTP,
//! verify it, and delete exactly the records that are in the verified file.
//!
//! The pipeline is a [`opskit_core::plan::Plan`] built by [`runbook::build_plan`]:
//! `export` → `upload` → `commit` (point of no return) → `purge`. See `docs/BENCHMARKS.md`
//! for its measured speed and memory.

#![warn(missing_docs)]

pub mod bounds;
pub mod job;
pub mod rawbson;
pub mod restore;
pub mod runbook;
pub mod sftp;
pub mod source;
pub mod staged;
pub mod testhook;
