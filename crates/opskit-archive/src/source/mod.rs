//! Where archived records come from. The pipeline never knows which source it has.
//!
//! Every record travels as one BSON document (raw bytes), so the archive file is a plain
//! concatenation of BSON documents, gzip-compressed: `mongorestore --gzip` reads it for MongoDB,
//! and `opskit archive restore` reads it for either source. For MySQL a row becomes a document
//! of its columns.
//!
//! Sources are synchronous to the pipeline; an async driver blocks on its own runtime inside
//! the adapter. Every call has a timeout.

pub mod mongodb;

pub mod mysql;

use anyhow::bail;
use bson::{Bson, RawDocument, RawDocumentBuf};
use opskit_core::config::ArchiveConfig;
use opskit_core::error::usage;

use crate::bounds::MonthBounds;

/// The config key of the source's password file, as errors name it.
pub const PASSWORD_KEY: &str = "archive.source_password_file";

/// Opens the source named by `archive.source_uri` (connecting lazily where the driver allows).
/// `time_zone` is the writers' zone (`general.timezone`).
pub fn open(config: &ArchiveConfig, time_zone: &str) -> anyhow::Result<Box<dyn Source>> {
    let uri = config.source_uri.as_str();
    if uri.starts_with("mysql://") {
        let mut s = mysql::MysqlSource::from_config(config)?;
        s.set_time_zone(time_zone);
        return Ok(Box::new(s));
    }
    if uri.starts_with("mongodb://") || uri.starts_with("mongodb+srv://") {
        return open_mongodb(config);
    }
    Err(usage(format!(
        "archive.source_uri `{uri}`: unknown scheme (mongodb:// or mysql://)"
    )))
}

/// The MongoDB adapter's entry point.
fn open_mongodb(config: &ArchiveConfig) -> anyhow::Result<Box<dyn Source>> {
    Ok(Box::new(mongodb::MongoSource::from_config(config)?))
}

/// Documents whose date field cannot be compared as a `YYYY-MM-DD HH:MM:SS` string: they are
/// never matched by a month's bounds, so they are counted and reported on every run.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Anomalies {
    /// The date field is missing or null.
    pub missing: u64,
    /// The date field has another type (BSON date, number, ...).
    pub wrong_type: u64,
    /// The date field is a string of another shape (`2024-1-5 3:03:11`, ISO `T`, fractions).
    pub malformed: u64,
    /// Up to a few example ids per kind, for the operator.
    pub examples: Vec<String>,
}

impl Anomalies {
    /// All anomalies.
    pub fn total(&self) -> u64 {
        self.missing + self.wrong_type + self.malformed
    }
}

/// What the source knows about a month before exporting it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RangeStats {
    /// Records with `lower <= date < upper`, counted through the date index.
    pub count: u64,
    /// Average raw record size in bytes, when the source can tell.
    pub avg_record_bytes: Option<u64>,
    /// The index used for the range (name), or `None` when there is no usable index.
    pub index: Option<String>,
    /// `count` is the server's estimate, not a count ([`Source::range_stats_quick`]).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub estimated: bool,
}

/// One archived document read back from the verified archive for the purge: its id and its
/// exact bytes, so the source deletes it only while it is still what was archived.
#[derive(Debug, Clone, PartialEq)]
pub struct ArchivedDoc {
    /// The id (`_id`, or the primary key).
    pub id: Bson,
    /// The document as archived.
    pub raw: RawDocumentBuf,
    /// The server's MD5 of the row as exported, used only to recognise an unchanged row
    /// (MySQL: the purge then deletes with one statement instead of locking and comparing).
    /// `None` when the document is read back from an archive file, and for MongoDB.
    pub fingerprint: Option<[u8; 16]>,
}

/// What one purge batch did with its archived documents. Every document is in exactly one of
/// the three counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DeleteOutcome {
    /// Deleted: the source held exactly the archived document.
    pub deleted: u64,
    /// Kept: the source holds a different version (changed since the export, or moved out of
    /// the month); the next late pass archives it.
    pub changed: u64,
    /// Not there any more (deleted earlier, by a purge that was interrupted after its delete,
    /// or by someone else): nothing to do, nothing lost.
    pub gone: u64,
}

impl DeleteOutcome {
    /// Adds another batch.
    pub fn add(&mut self, o: DeleteOutcome) {
        self.deleted += o.deleted;
        self.changed += o.changed;
        self.gone += o.gone;
    }

    /// Documents accounted for.
    pub fn total(&self) -> u64 {
        self.deleted + self.changed + self.gone
    }
}

/// A delete batch that got no answer within the source's time limit. The purge retries the
/// batch smaller (see [`crate::batch`]); the server may still finish the first attempt, which
/// is harmless: deleting by id is idempotent and the retry counts those documents as gone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeleteTimedOut {
    /// The server, as [`Source::describe`] says.
    pub server: String,
    /// Documents in the batch.
    pub documents: usize,
    /// The limit it exceeded.
    pub limit: std::time::Duration,
}

impl std::fmt::Display for DeleteTimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "deleting a batch of {} documents on {}: no answer within {:?}",
            self.documents, self.server, self.limit
        )
    }
}

impl std::error::Error for DeleteTimedOut {}

impl DeleteTimedOut {
    /// The [`DeleteTimedOut`] somewhere in `e`'s chain.
    pub fn find(e: &anyhow::Error) -> Option<&DeleteTimedOut> {
        e.chain().find_map(|c| c.downcast_ref::<DeleteTimedOut>())
    }
}

/// How many more sessions the source accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FreeSessions {
    /// The server's limit (`max_connections`).
    pub max: u64,
    /// Sessions open now.
    pub used: u64,
    /// `max - used`.
    pub free: u64,
}

/// The replica that holds the purge back the most, as the lag pause reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplicaLag {
    /// Which replica (`127.0.0.12:3306`), or which set of them.
    pub replica: String,
    /// Its lag in seconds; `None` when it is unknown: the replica is not replicating
    /// (`Seconds_Behind_Master` NULL: a replication thread stopped) or does not answer.
    /// Unknown counts as too much.
    pub seconds: Option<f64>,
    /// Why the lag is unknown, for the operator.
    pub reason: String,
    /// True when the replica cannot be watched at all: it does not answer, or it is not a
    /// replica. A run refuses it before the export (a wrong entry in `archive.purge.replicas`
    /// would otherwise stall the purge after the point of no return).
    pub unwatchable: bool,
}

impl ReplicaLag {
    /// True when the purge must wait for this replica.
    pub fn exceeds(&self, max_secs: f64) -> bool {
        self.seconds.is_none_or(|s| s > max_secs)
    }

    /// `replica 127.0.0.12:3306 lags 37s` / `replica …: lag unknown, not replicating (…)`.
    pub fn describe(&self) -> String {
        match self.seconds {
            Some(s) => format!("{} lags {s:.0}s", self.replica),
            None => format!("{}: lag unknown, {}", self.replica, self.reason),
        }
    }
}

/// One exported record: its identity, its date and its raw BSON bytes.
pub struct Record<'a> {
    /// The record's unique key (`_id` for MongoDB, the primary key for MySQL).
    pub id: &'a Bson,
    /// The date field's string value.
    pub date: &'a str,
    /// The whole record as one BSON document.
    pub raw: &'a [u8],
    /// The server's MD5 of the row as exported, used only to recognise an unchanged row
    /// (never part of `raw`); `None` when the source computes none (MongoDB).
    pub fingerprint: Option<[u8; 16]>,
}

/// Receives records in export order. Returning an error stops the export.
pub trait RecordSink {
    /// Takes one record.
    fn accept(&mut self, record: Record<'_>) -> anyhow::Result<()>;
}

/// Receives the records of an export that deletes as it reads
/// ([`Source::export_deleting`]): the records of one segment, then the segment's end with the
/// transaction that deleted them, still open.
pub trait DeletingSink: RecordSink {
    /// How many documents the next segment should hold.
    fn next_segment_docs(&self) -> usize;

    /// The most documents a segment may hold (`archive.segment_docs`).
    fn max_segment_docs(&self) -> usize;

    /// Ends the segment whose records were just accepted. `delete` commits their delete; it
    /// is committed only once the segment is verified on the backup host, and dropping it
    /// (any failure) rolls the delete back.
    fn end_segment(&mut self, delete: Box<dyn PendingDelete>) -> anyhow::Result<()>;
}

/// The uncommitted delete of one segment's documents, in its own transaction and session.
/// Dropping it rolls the delete back (the session is closed).
pub trait PendingDelete: Send {
    /// How many documents it deleted.
    fn docs(&self) -> u64;

    /// Commits the delete, within the source's time limit. An error leaves it unknown
    /// whether the server committed; the re-run's purge tells (deleted or already gone).
    fn commit(self: Box<Self>) -> anyhow::Result<()>;
}

/// A source of monthly records.
pub trait Source: Send {
    /// A description without secrets, for manifests and logs (`mongodb://db1:27017/test.user_logs`).
    fn describe(&self) -> String;

    /// The name of the id field in exported documents (`_id`, or the MySQL primary key column).
    fn id_field(&self) -> &str;

    /// Checks that the source answers and the collection/table exists (exit 3 material).
    fn ping(&mut self) -> anyhow::Result<()>;

    /// Count and size of the month, through the date index.
    fn range_stats(&mut self, bounds: &MonthBounds) -> anyhow::Result<RangeStats>;

    /// Like [`Source::range_stats`], but a month of more than `exact_up_to` records may get
    /// the server's estimate instead of a count (`estimated`), when counting would read the
    /// whole month before the run can begin. A month of at most `exact_up_to` records, and
    /// whether it has more, is always counted exactly. By default: the exact count.
    fn range_stats_quick(
        &mut self,
        bounds: &MonthBounds,
        exact_up_to: u64,
    ) -> anyhow::Result<RangeStats> {
        let _ = exact_up_to;
        self.range_stats(bounds)
    }

    /// Records whose date field is missing, of another type or malformed.
    fn anomalies(&mut self) -> anyhow::Result<Anomalies>;

    /// Streams every record of the month in index order into `sink`, without leaving the
    /// server cursor idle.
    fn export(&mut self, bounds: &MonthBounds, sink: &mut dyn RecordSink) -> anyhow::Result<()>;

    /// Deletes each archived document whose current version in the source is exactly the
    /// archived one (and whose date is still inside `bounds`), atomically per document: a
    /// document changed since the export stays. Documents already gone are not an error
    /// (resumed purges re-send them).
    fn delete_archived(
        &mut self,
        docs: &[ArchivedDoc],
        bounds: &MonthBounds,
    ) -> anyhow::Result<DeleteOutcome>;

    /// How many more sessions the server accepts, when it has such a limit (checked against
    /// `archive.purge.connections` before the export).
    fn free_sessions(&mut self) -> anyhow::Result<Option<FreeSessions>> {
        Ok(None)
    }

    /// The largest replication lag of the source's replicas in seconds, if it can tell.
    fn replication_lag(&mut self) -> anyhow::Result<Option<f64>>;

    /// The replica lagging most (the purge pauses while it exceeds `max_lag_secs`), or
    /// `None` when the source has no replicas to watch. By default from
    /// [`Source::replication_lag`].
    fn worst_replica(&mut self) -> anyhow::Result<Option<ReplicaLag>> {
        Ok(self.replication_lag()?.map(|s| ReplicaLag {
            replica: "the slowest replica".into(),
            seconds: Some(s),
            reason: String::new(),
            unwatchable: false,
        }))
    }

    /// The watched replicas that cannot be watched (they do not answer or are not replicas),
    /// checked before the export; empty when the source has none to watch.
    fn unwatchable_replicas(&mut self) -> anyhow::Result<Vec<ReplicaLag>> {
        Ok(Vec::new())
    }

    /// Whether the export computes each record's fingerprint ([`Record::fingerprint`]), for a
    /// purge that is handed the exported records. Sources without fingerprints ignore it.
    /// MySQL computes them unless told not to; they cost the server an MD5 of every row.
    fn set_fingerprints(&mut self, on: bool) {
        let _ = on;
    }

    /// Whether [`Source::export_deleting`] can read `bounds`' month (when `None`), or why not
    /// (the segmented export then exports, verifies, and purges with
    /// [`Source::delete_archived`]). By default: not supported.
    fn export_deleting_refused(&mut self, bounds: &MonthBounds) -> anyhow::Result<Option<String>> {
        let _ = bounds;
        Ok(Some("this source cannot delete as it reads".into()))
    }

    /// Reads the month by deleting it, segment by segment, each in a transaction left open
    /// and handed to `sink` ([`DeletingSink::end_segment`]): every document read is exactly a
    /// document deleted, and none is deleted for good before its transaction commits.
    fn export_deleting(
        &mut self,
        bounds: &MonthBounds,
        sink: &mut dyn DeletingSink,
    ) -> anyhow::Result<()> {
        let _ = (bounds, sink);
        bail!("internal: this source cannot delete as it reads")
    }

    /// Inserts archived documents back, keeping documents already present (restore).
    /// Returns how many were inserted.
    fn insert_documents(&mut self, docs: &[&RawDocument]) -> anyhow::Result<u64>;
}
