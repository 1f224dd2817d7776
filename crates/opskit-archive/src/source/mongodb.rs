//! The MongoDB source: one month of `test.user_logs` read as raw BSON through the date index,
//! deleted by the `_id`s that are in the verified archive.
//!
//! The official async driver runs on a current-thread tokio runtime owned by the adapter; the
//! [`Source`] trait is synchronous, so every call blocks on that runtime. A driver future is
//! never dropped half-way (RUST-937): each operation is spawned as a task and only its
//! `JoinHandle` is timed out. A timed-out task finishes (or is dropped with the runtime) on
//! its own; the caller gets an error naming the operation and the limit.
//!
//! Every query and command the adapter sends comes from a small pure function below
//! ([`range_filter`], [`export_find_options`], [`anomaly_filters`], [`delete_filter`], …), so
//! what is sent to the server is unit-tested without a server.

use std::future::Future;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use bson::{Bson, Document, RawDocument, RawDocumentBuf, Regex, doc};
use futures_util::StreamExt;
use mongodb::options::{
    Acknowledgment, ClientOptions, Collation, CountOptions, Credential, DeleteOptions, FindOptions,
    Hint, InsertManyOptions, WriteConcern,
};
use mongodb::{Client, Collection, Database};

use opskit_core::Classify as _;
use opskit_core::secret::read_secret_file;

use super::{Anomalies, PASSWORD_KEY, RangeStats, Record, RecordSink, Source};
use crate::bounds::MonthBounds;

/// The pattern of a well-formed date string (see [`crate::bounds::is_well_formed_date`]).
///
/// `[0-9]` rather than `\d` (which may match non-ASCII digits in Unicode mode) and `\z`
/// rather than `$` (which also matches before a trailing newline in PCRE).
pub const WELL_FORMED_DATE_PATTERN: &str =
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}\z";

/// How many example `_id`s are reported per kind of anomaly.
pub const ANOMALY_EXAMPLES: i64 = 3;

/// Tuning and time limits of the MongoDB source. Every server call has one of these limits.
#[derive(Debug, Clone, PartialEq)]
pub struct MongoSourceOptions {
    /// Documents per `find`/`getMore` batch (the server also caps a batch at 16 MiB).
    pub batch_size: u32,
    /// Connecting, server selection and small commands (`ping`, `listIndexes`, stats).
    pub command_timeout: Duration,
    /// Counts and anomaly scans over the date index (server-side `maxTimeMS` as well).
    pub scan_timeout: Duration,
    /// The first batch and every `getMore` of the export; the cursor is never idle longer
    /// than one batch takes to reach local disk.
    pub batch_timeout: Duration,
    /// One `deleteMany` batch, including its `w: "majority"` wait (`wtimeout`).
    pub delete_timeout: Duration,
}

impl Default for MongoSourceOptions {
    fn default() -> Self {
        MongoSourceOptions {
            batch_size: 10_000,
            command_timeout: Duration::from_secs(30),
            scan_timeout: Duration::from_secs(30 * 60),
            batch_timeout: Duration::from_secs(5 * 60),
            delete_timeout: Duration::from_secs(120),
        }
    }
}

/// The index the adapter hints for the month's range.
#[derive(Debug, Clone, PartialEq)]
pub struct DateIndex {
    /// The index name, as `listIndexes` reports it (the hint).
    pub name: String,
    /// Its key pattern.
    pub key: Document,
}

/// A MongoDB collection as an archive [`Source`].
pub struct MongoSource {
    // Field order matters: the client must drop before the runtime it was built on.
    client: Client,
    coll: Collection<RawDocumentBuf>,
    date_field: String,
    description: String,
    options: MongoSourceOptions,
    index: Option<DateIndex>,
    runtime: tokio::runtime::Runtime,
}

impl MongoSource {
    /// Connects to `uri` (which must not hold a password) and opens `database.collection`.
    ///
    /// The password, if any, is read from `password_file`, which must not be readable by group
    /// or others (mode 0600); it is set through the driver's `Credential` and never logged.
    /// The URI must then name the user (`mongodb://archiver@db1:27017/?authSource=admin`).
    /// Nothing is sent to the server yet (except DNS lookups for `mongodb+srv://`).
    pub fn connect(
        uri: &str,
        password_file: Option<&Path>,
        database: &str,
        collection: &str,
        date_field: &str,
        options: MongoSourceOptions,
    ) -> anyhow::Result<MongoSource> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the MongoDB adapter's tokio runtime")?;
        let password = match password_file {
            Some(path) => Some(read_secret_file(path, PASSWORD_KEY)?.expose().to_string()),
            None => None,
        };
        let uri_owned = uri.to_string();
        let parse = async move { ClientOptions::parse(uri_owned).await };
        let mut client_options = block_on_task(&runtime, options.command_timeout, parse)
            .with_context(|| format!("archive.source_uri: bad MongoDB URI `{}`", redact_uri(uri)))
            .usage_error()?;
        apply_client_settings(&mut client_options, password, &options)
            .context("archive.source_uri")
            .usage_error()?;
        let description = describe_target(&client_options, database, collection);
        let client = {
            let _guard = runtime.enter();
            Client::with_options(client_options).with_context(|| {
                format!("archive.source_uri: cannot create a MongoDB client for {description}")
            })?
        };
        let coll = client
            .database(database)
            .collection::<RawDocumentBuf>(collection);
        Ok(MongoSource {
            client,
            coll,
            date_field: date_field.to_string(),
            description,
            options,
            index: None,
            runtime,
        })
    }

    /// Connects with the `[archive]` settings of the config and default tuning.
    pub fn from_config(config: &opskit_core::config::ArchiveConfig) -> anyhow::Result<Self> {
        MongoSource::from_config_with(config, MongoSourceOptions::default())
    }

    /// Connects with the `[archive]` settings of the config and the given tuning (batch size,
    /// time limits).
    pub fn from_config_with(
        config: &opskit_core::config::ArchiveConfig,
        options: MongoSourceOptions,
    ) -> anyhow::Result<Self> {
        MongoSource::connect(
            &config.source_uri,
            config.source_password_file.as_ref().map(|p| p.as_ref()),
            config.database.as_str(),
            config.collection.as_str(),
            config.date_field.as_str(),
            options,
        )
    }

    /// The index on the date field that every range query hints, found once via `listIndexes`.
    pub fn date_index(&mut self) -> anyhow::Result<DateIndex> {
        if let Some(index) = &self.index {
            return Ok(index.clone());
        }
        let specs = self.list_indexes()?;
        let index = choose_date_index(&specs, &self.date_field).with_context(|| {
            format!(
                "{}: no usable index for the month's range",
                self.description
            )
        })?;
        self.index = Some(index.clone());
        Ok(index)
    }

    fn database(&self) -> Database {
        self.client.database(self.coll.namespace().db.as_str())
    }

    fn list_indexes(&mut self) -> anyhow::Result<Vec<Document>> {
        let db = self.database();
        let command = list_indexes_command(self.coll.name());
        let reply = self.run("listIndexes", self.options.command_timeout, async move {
            db.run_command(command).await
        });
        let reply = match reply {
            Err(e) if is_namespace_not_found(&e) => bail!(
                "{}: the collection does not exist (listIndexes: NamespaceNotFound)",
                self.description
            ),
            other => other?,
        };
        first_batch(&reply).context("listIndexes reply")
    }

    /// Spawns `fut` on the adapter's runtime and waits at most `limit` for its handle.
    fn run<T, F>(&self, what: &str, limit: Duration, fut: F) -> anyhow::Result<T>
    where
        T: Send + 'static,
        F: Future<Output = mongodb::error::Result<T>> + Send + 'static,
    {
        block_on_task(&self.runtime, limit, fut)
            .with_context(|| format!("{} on {}", what, self.description))
    }

    fn count(&mut self, filter: Document, what: &str) -> anyhow::Result<u64> {
        let index = self.date_index()?;
        let coll = self.coll.clone();
        let options = count_options(&index, self.options.scan_timeout);
        // The server's maxTimeMS fires first and says so; this limit catches a lost server.
        let limit = self.options.scan_timeout + self.options.command_timeout;
        self.run(what, limit, async move {
            coll.count_documents(filter).with_options(options).await
        })
    }

    fn example_ids(&mut self, filter: Document, what: &str) -> anyhow::Result<Vec<String>> {
        let index = self.date_index()?;
        let coll = self.coll.clone();
        let options = example_find_options(&index, self.options.scan_timeout);
        let limit = self.options.scan_timeout + self.options.command_timeout;
        let docs = self.run(what, limit, async move {
            let mut cursor = coll.find(filter).with_options(options).await?;
            let mut docs = Vec::new();
            while cursor.advance().await? {
                docs.push(cursor.current().to_raw_document_buf());
            }
            Ok(docs)
        })?;
        Ok(docs
            .iter()
            .map(|d| match d.get("_id") {
                Ok(Some(id)) => Bson::try_from(id).map_or_else(|_| "?".into(), |b| b.to_string()),
                _ => "(no _id)".into(),
            })
            .collect())
    }
}

impl Drop for MongoSource {
    /// Gives the driver a few seconds to end its sessions and kill a cursor left open by a
    /// failed export (a `noCursorTimeout` cursor would otherwise live on the server until its
    /// session expires, 30 minutes later).
    fn drop(&mut self) {
        let client = self.client.clone();
        let shutdown = self.runtime.spawn(async move { client.shutdown().await });
        let _ = self
            .runtime
            .block_on(async { tokio::time::timeout(SHUTDOWN_GRACE, shutdown).await });
    }
}

/// How long dropping a [`MongoSource`] waits for the driver's cleanup.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

impl Source for MongoSource {
    fn describe(&self) -> String {
        self.description.clone()
    }

    fn id_field(&self) -> &str {
        "_id"
    }

    /// `ping`, then `listIndexes` on the collection, which fails if it does not exist. A
    /// usable date index is found here too when there is one; every range query (counts,
    /// anomalies, export) refuses to run without it, but a restore does not need it.
    fn ping(&mut self) -> anyhow::Result<()> {
        let admin = self.client.database("admin");
        self.run("ping", self.options.command_timeout, async move {
            admin.run_command(doc! {"ping": 1}).await
        })?;
        let specs = self.list_indexes()?;
        if self.index.is_none() {
            self.index = choose_date_index(&specs, &self.date_field).ok();
        }
        Ok(())
    }

    fn range_stats(&mut self, bounds: &MonthBounds) -> anyhow::Result<RangeStats> {
        let index = self.date_index()?;
        let count = self.count(range_filter(&self.date_field, bounds), "count_documents")?;
        let db = self.database();
        let command = coll_stats_command(self.coll.name());
        let stats = self.run("collStats", self.options.command_timeout, async move {
            db.run_command(command).await
        })?;
        Ok(RangeStats {
            count,
            avg_record_bytes: avg_obj_size(&stats),
            index: Some(index.name),
        })
    }

    fn anomalies(&mut self) -> anyhow::Result<Anomalies> {
        let filters = anomaly_filters(&self.date_field);
        let mut result = Anomalies::default();
        for (kind, filter) in filters {
            let n = self.count(filter.clone(), &format!("counting {kind} dates"))?;
            match kind {
                AnomalyKind::Missing => result.missing = n,
                AnomalyKind::WrongType => result.wrong_type = n,
                AnomalyKind::Malformed => result.malformed = n,
            }
            if n > 0 {
                let ids = self.example_ids(filter, &format!("finding {kind} examples"))?;
                result
                    .examples
                    .extend(ids.into_iter().map(|id| format!("{kind}: {id}")));
            }
        }
        Ok(result)
    }

    fn export(&mut self, bounds: &MonthBounds, sink: &mut dyn RecordSink) -> anyhow::Result<()> {
        let index = self.date_index()?;
        let filter = range_filter(&self.date_field, bounds);
        let options = export_find_options(&index, &self.date_field, self.options.batch_size)?;
        let coll = self.coll.clone();
        // Two batches in flight at most: memory stays at ~2 × 16 MiB whatever the month's size.
        let (tx, mut rx) = tokio::sync::mpsc::channel::<
            mongodb::error::Result<mongodb::raw_batch_cursor::RawBatch>,
        >(2);
        let reader = self.runtime.spawn(async move {
            let mut cursor = match coll.find(filter).with_options(options).batch().await {
                Ok(cursor) => cursor,
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            };
            while let Some(batch) = cursor.next().await {
                let failed = batch.is_err();
                // A closed channel means the export stopped (sink error, timeout): the cursor
                // is dropped here, between two getMores, and the driver kills it.
                if tx.send(batch).await.is_err() || failed {
                    return;
                }
            }
        });
        let limit = self.options.batch_timeout;
        let date_field = self.date_field.clone();
        let description = self.description.clone();
        self.runtime.block_on(async move {
            let mut batches = 0u64;
            loop {
                let next = tokio::time::timeout(limit, rx.recv()).await.map_err(|_| {
                    anyhow!(
                        "export of {description}: batch {} did not arrive within {limit:?}",
                        batches + 1
                    )
                })?;
                let Some(batch) = next else { break };
                let batch = batch.with_context(|| {
                    format!(
                        "export of {description}: find/getMore for batch {} failed",
                        batches + 1
                    )
                })?;
                batches += 1;
                let docs = batch
                    .doc_slices()
                    .with_context(|| format!("export of {description}: malformed batch"))?;
                for doc in docs {
                    let raw = doc.ok().and_then(|d| d.as_document()).ok_or_else(|| {
                        anyhow!("export of {description}: a batch element is not a document")
                    })?;
                    let parts = record_of(raw, &date_field)?;
                    sink.accept(Record {
                        id: &parts.id,
                        date: parts.date,
                        raw: parts.raw,
                    })?;
                }
            }
            // The channel closed: the reader finished, or it panicked.
            tokio::time::timeout(limit, reader)
                .await
                .map_err(|_| anyhow!("export of {description}: the reader did not stop"))?
                .map_err(|e| anyhow!("export of {description}: the reader failed: {e}"))?;
            Ok(())
        })
    }

    fn delete_ids(&mut self, ids: &[Bson], bounds: &MonthBounds) -> anyhow::Result<u64> {
        if ids.is_empty() {
            return Ok(0);
        }
        let filter = delete_filter(ids, &self.date_field, bounds);
        let options = delete_options(self.options.delete_timeout);
        let coll = self.coll.clone();
        let n = ids.len();
        let result = self.run(
            &format!("deleteMany of {n} ids"),
            self.options.delete_timeout + Duration::from_secs(5),
            async move { coll.delete_many(filter).with_options(options).await },
        )?;
        Ok(result.deleted_count)
    }

    /// `replSetGetStatus` (and `replSetGetConfig`, to leave delayed members out: their lag is
    /// deliberate and would pause the purge for ever). `None` on a standalone.
    fn replication_lag(&mut self) -> anyhow::Result<Option<f64>> {
        let admin = self.client.database("admin");
        let status = self.run(
            "replSetGetStatus",
            self.options.command_timeout,
            async move {
                match admin.run_command(doc! {"replSetGetStatus": 1}).await {
                    Ok(status) => Ok(Some(status)),
                    // A standalone server has no replicas and so no lag.
                    Err(e) if error_code(&e) == Some(NO_REPLICATION_ENABLED) => Ok(None),
                    Err(e) => Err(e),
                }
            },
        )?;
        let Some(status) = status else {
            return Ok(None);
        };
        let admin = self.client.database("admin");
        let config = self.run(
            "replSetGetConfig",
            self.options.command_timeout,
            async move { admin.run_command(doc! {"replSetGetConfig": 1}).await },
        );
        let delayed = match config {
            Ok(config) => delayed_members(&config),
            Err(e) => {
                tracing::warn!("{e:#}; delayed members (if any) count towards the replication lag");
                Vec::new()
            }
        };
        replication_lag_from_status(&status, &delayed)
            .map(Some)
            .with_context(|| format!("replSetGetStatus of {}", self.description))
    }

    /// `insertMany` of the archived documents as they are (ordered: false, `w: "majority"`);
    /// a duplicate `_id` means the document is already present and is kept.
    fn insert_documents(&mut self, docs: &[&RawDocument]) -> anyhow::Result<u64> {
        if docs.is_empty() {
            return Ok(0);
        }
        let owned: Vec<RawDocumentBuf> = docs.iter().map(|d| d.to_raw_document_buf()).collect();
        let n = owned.len();
        let options = restore_insert_options(self.options.delete_timeout);
        let coll = self.coll.clone();
        self.run(
            &format!("insertMany of {n} documents"),
            self.options.delete_timeout + Duration::from_secs(5),
            async move {
                match coll.insert_many(owned).with_options(options).await {
                    Ok(result) => Ok(result.inserted_ids.len() as u64),
                    Err(e) => {
                        if let mongodb::error::ErrorKind::InsertMany(failure) = e.kind.as_ref() {
                            let codes: Vec<i32> = failure
                                .write_errors
                                .iter()
                                .flatten()
                                .map(|w| w.code)
                                .collect();
                            let wc_failed = failure.write_concern_error.is_some();
                            if let Some(inserted) =
                                inserted_despite_duplicates(n, &codes, wc_failed)
                            {
                                return Ok(inserted);
                            }
                        }
                        Err(e)
                    }
                }
            },
        )
    }
}

/// Server error code of `replSetGetStatus` on a standalone.
const NO_REPLICATION_ENABLED: i32 = 76;
/// Server error code for a missing collection.
const NAMESPACE_NOT_FOUND: i32 = 26;

fn error_code(e: &mongodb::error::Error) -> Option<i32> {
    match e.kind.as_ref() {
        mongodb::error::ErrorKind::Command(c) => Some(c.code),
        _ => None,
    }
}

fn is_namespace_not_found(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<mongodb::error::Error>()
            .is_some_and(|m| error_code(m) == Some(NAMESPACE_NOT_FOUND))
    })
}

/// Spawns `fut` on `runtime` and waits at most `limit` for its `JoinHandle` (never drops the
/// driver future itself).
fn block_on_task<T, F>(
    runtime: &tokio::runtime::Runtime,
    limit: Duration,
    fut: F,
) -> anyhow::Result<T>
where
    T: Send + 'static,
    F: Future<Output = mongodb::error::Result<T>> + Send + 'static,
{
    let handle = runtime.spawn(fut);
    runtime.block_on(async move {
        match tokio::time::timeout(limit, handle).await {
            Err(_) => Err(anyhow!("no answer within {limit:?}")),
            Ok(Err(join)) => Err(anyhow!("the driver task failed: {join}")),
            Ok(Ok(Err(e))) => Err(anyhow::Error::new(e)),
            Ok(Ok(Ok(value))) => Ok(value),
        }
    })
}

/// Sets the password (into the credential whose user the URI names), the app name and the
/// connection time limits.
pub fn apply_client_settings(
    client_options: &mut ClientOptions,
    password: Option<String>,
    options: &MongoSourceOptions,
) -> anyhow::Result<()> {
    if client_options
        .credential
        .as_ref()
        .is_some_and(|c| c.password.is_some())
    {
        // Config validation refuses this too; a URI password would end up in ps, logs and shells.
        bail!(
            "the URI holds a password; put it in archive.source_password_file (mode 0600) instead"
        );
    }
    if let Some(password) = password {
        let credential = client_options
            .credential
            .get_or_insert_with(Credential::default);
        if credential.username.is_none() {
            bail!(
                "a MongoDB password file is set but the URI names no user; write it as mongodb://USER@host/..."
            );
        }
        credential.password = Some(password);
    }
    client_options
        .app_name
        .get_or_insert_with(|| "opskit-archive".into());
    client_options.connect_timeout = Some(options.command_timeout);
    client_options.server_selection_timeout = Some(options.command_timeout);
    Ok(())
}

/// `mongodb://host1:27017,host2:27017/db.collection`: no user, no password, no options.
pub fn describe_target(options: &ClientOptions, database: &str, collection: &str) -> String {
    let hosts: Vec<String> = options.hosts.iter().map(|h| h.to_string()).collect();
    format!("mongodb://{}/{database}.{collection}", hosts.join(","))
}

/// The URI with any user info removed, for error messages.
pub fn redact_uri(uri: &str) -> String {
    let Some((scheme, rest)) = uri.split_once("://") else {
        return "(unparsable URI)".into();
    };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let hosts = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    format!("{scheme}://{hosts}{tail}")
}

/// `{date: {$gte: lower, $lt: upper, $regex: well-formed}}`: the half-open month as strings,
/// of the exact `YYYY-MM-DD HH:MM:SS` shape only. A malformed string that sorts inside the
/// month (`2024-01-05T03:03:11`) is an anomaly to report, never archived nor deleted. The
/// range still bounds the index scan; the pattern is checked on the index keys.
pub fn range_filter(date_field: &str, bounds: &MonthBounds) -> Document {
    doc! { date_field: {
        "$gte": bounds.lower.as_str(),
        "$lt": bounds.upper.as_str(),
        "$regex": WELL_FORMED_DATE_PATTERN,
    } }
}

/// `{locale: "simple"}`: binary string comparison, whatever the collection's default.
pub fn simple_collation() -> Collation {
    Collation::builder().locale("simple").build()
}

/// The export's sort: the hinted index's key pattern, walked in the direction that makes the
/// date ascending (an index walks both ways, so the sort never blocks in memory).
pub fn export_sort(index: &DateIndex, date_field: &str) -> anyhow::Result<Document> {
    let first = index
        .key
        .get(date_field)
        .and_then(key_direction)
        .ok_or_else(|| {
            anyhow!(
                "index `{}` has no ascending/descending key on `{date_field}`",
                index.name
            )
        })?;
    let mut sort = Document::new();
    for (field, value) in &index.key {
        let dir = key_direction(value)
            .ok_or_else(|| anyhow!("index `{}` key `{field}` is not 1 or -1", index.name))?;
        sort.insert(field.clone(), dir * first);
    }
    Ok(sort)
}

/// The `find` options of the export: hint by name, index-order sort, simple collation, the
/// batch size, and a cursor the server does not time out.
pub fn export_find_options(
    index: &DateIndex,
    date_field: &str,
    batch_size: u32,
) -> anyhow::Result<FindOptions> {
    Ok(FindOptions::builder()
        .hint(Hint::Name(index.name.clone()))
        .sort(export_sort(index, date_field)?)
        .collation(simple_collation())
        .batch_size(batch_size)
        .no_cursor_timeout(true)
        .comment(Bson::String("opskit archive export".into()))
        .build())
}

/// `count_documents` options: the same hint and collation as the export, and `maxTimeMS`.
pub fn count_options(index: &DateIndex, max_time: Duration) -> CountOptions {
    CountOptions::builder()
        .hint(Hint::Name(index.name.clone()))
        .collation(simple_collation())
        .max_time(max_time)
        .build()
}

/// `find` options for a few example `_id`s of an anomaly.
pub fn example_find_options(index: &DateIndex, max_time: Duration) -> FindOptions {
    FindOptions::builder()
        .hint(Hint::Name(index.name.clone()))
        .collation(simple_collation())
        .projection(doc! {"_id": 1})
        .limit(ANOMALY_EXAMPLES)
        .max_time(max_time)
        .build()
}

/// The kinds of date anomaly of [`Anomalies`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnomalyKind {
    /// Missing or null.
    Missing,
    /// Not a string (BSON date, number, array, ...).
    WrongType,
    /// A string of another shape.
    Malformed,
}

impl std::fmt::Display for AnomalyKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AnomalyKind::Missing => "missing",
            AnomalyKind::WrongType => "wrong-type",
            AnomalyKind::Malformed => "malformed",
        })
    }
}

/// One disjoint filter per anomaly kind. Arrays count as the wrong type even when they hold
/// strings (`$type: "string"` matches such arrays, and a range would match any element).
pub fn anomaly_filters(date_field: &str) -> Vec<(AnomalyKind, Document)> {
    vec![
        (
            AnomalyKind::Missing,
            doc! {"$or": [
                { date_field: {"$exists": false} },
                { date_field: {"$type": "null"} },
            ]},
        ),
        (
            AnomalyKind::WrongType,
            doc! {"$or": [
                { date_field: {"$exists": true, "$not": {"$type": ["string", "null"]}} },
                { date_field: {"$type": "array"} },
            ]},
        ),
        (
            AnomalyKind::Malformed,
            doc! {
                date_field: {
                    "$type": "string",
                    "$not": Regex { pattern: WELL_FORMED_DATE_PATTERN.into(), options: String::new() },
                },
                // Arrays are reported as the wrong type, not here.
                "$nor": [ { date_field: {"$type": "array"} } ],
            },
        ),
    ]
}

/// `{_id: {$in: ids}, date: {$gte: lower, $lt: upper}}`: only archived ids, and only while
/// their date is still in the month (a document rewritten since the export stays).
pub fn delete_filter(ids: &[Bson], date_field: &str, bounds: &MonthBounds) -> Document {
    // The ids come from the verified archive; the bounds guard against a document whose date
    // was changed since (it then belongs to another month and stays).
    doc! {
        "_id": { "$in": ids.to_vec() },
        date_field: { "$gte": bounds.lower.as_str(), "$lt": bounds.upper.as_str() },
    }
}

/// `deleteMany` options: majority write concern with a `wtimeout`, simple collation.
pub fn delete_options(wtimeout: Duration) -> DeleteOptions {
    DeleteOptions::builder()
        .write_concern(
            WriteConcern::builder()
                .w(Acknowledgment::Majority)
                .w_timeout(wtimeout)
                .build(),
        )
        .collation(simple_collation())
        .comment(Bson::String("opskit archive purge".into()))
        .build()
}

/// `insertMany` options of a restore: every document is tried (`ordered: false`), majority
/// write concern with a `wtimeout`.
pub fn restore_insert_options(wtimeout: Duration) -> InsertManyOptions {
    InsertManyOptions::builder()
        .ordered(false)
        .write_concern(
            WriteConcern::builder()
                .w(Acknowledgment::Majority)
                .w_timeout(wtimeout)
                .build(),
        )
        .comment(Bson::String("opskit archive restore".into()))
        .build()
}

/// Server code of a duplicate key.
pub const DUPLICATE_KEY: i32 = 11000;

/// How many of `n` documents were inserted when the only errors were duplicate keys (already
/// present, kept); `None` when another error or a write concern failure happened.
pub fn inserted_despite_duplicates(
    n: usize,
    codes: &[i32],
    write_concern_failed: bool,
) -> Option<u64> {
    if write_concern_failed || codes.iter().any(|c| *c != DUPLICATE_KEY) {
        return None;
    }
    Some(n.saturating_sub(codes.len()) as u64)
}

/// `{listIndexes: collection}`.
pub fn list_indexes_command(collection: &str) -> Document {
    doc! { "listIndexes": collection, "cursor": {} }
}

/// `{collStats: collection}` (needs the `collStats` action on the collection).
pub fn coll_stats_command(collection: &str) -> Document {
    doc! { "collStats": collection, "scale": 1 }
}

/// `avgObjSize` of a `collStats` reply (absent for an empty collection).
pub fn avg_obj_size(stats: &Document) -> Option<u64> {
    match stats.get("avgObjSize")? {
        Bson::Int32(n) => u64::try_from(*n).ok(),
        Bson::Int64(n) => u64::try_from(*n).ok(),
        Bson::Double(x) if *x >= 0.0 => Some(x.round() as u64),
        _ => None,
    }
}

/// The documents of a command reply's `cursor.firstBatch`.
pub fn first_batch(reply: &Document) -> anyhow::Result<Vec<Document>> {
    let batch = reply
        .get_document("cursor")
        .and_then(|c| c.get_array("firstBatch"))
        .map_err(|e| anyhow!("no cursor.firstBatch in the reply: {e}"))?;
    batch
        .iter()
        .map(|b| {
            b.as_document()
                .cloned()
                .ok_or_else(|| anyhow!("cursor.firstBatch holds a non-document"))
        })
        .collect()
}

fn key_direction(value: &Bson) -> Option<i32> {
    let x = match value {
        Bson::Int32(n) => f64::from(*n),
        Bson::Int64(n) => *n as f64,
        Bson::Double(x) => *x,
        _ => return None,
    };
    if x > 0.0 {
        Some(1)
    } else if x < 0.0 {
        Some(-1)
    } else {
        None
    }
}

/// Picks the index to hint from `listIndexes` specs: its first key is the date field with a
/// direction, and it sees every document with the simple collation (not partial, not sparse,
/// not hidden, no other collation). Among several, the one with the fewest keys wins.
pub fn choose_date_index(specs: &[Document], date_field: &str) -> anyhow::Result<DateIndex> {
    let mut rejected = Vec::new();
    let mut best: Option<DateIndex> = None;
    for spec in specs {
        let (Ok(name), Ok(key)) = (spec.get_str("name"), spec.get_document("key")) else {
            continue;
        };
        let Some((first, dir)) = key.iter().next() else {
            continue;
        };
        if first != date_field {
            continue;
        }
        let why_not = if key_direction(dir).is_none() {
            Some("its key is not 1 or -1 (text, hashed, ...)".to_string())
        } else if key.values().any(|v| key_direction(v).is_none()) {
            Some("a later key is not 1 or -1".to_string())
        } else if spec.contains_key("partialFilterExpression") {
            Some("it is partial".to_string())
        } else if spec.get_bool("sparse").unwrap_or(false) {
            Some("it is sparse".to_string())
        } else if spec.get_bool("hidden").unwrap_or(false) {
            Some("it is hidden".to_string())
        } else if let Ok(collation) = spec.get_document("collation")
            && collation.get_str("locale").unwrap_or("") != "simple"
        {
            Some(format!("it has collation {collation}"))
        } else {
            None
        };
        if let Some(why) = why_not {
            rejected.push(format!("`{name}` ({why})"));
            continue;
        }
        if best.as_ref().is_none_or(|b| key.len() < b.key.len()) {
            best = Some(DateIndex {
                name: name.to_string(),
                key: key.clone(),
            });
        }
    }
    best.ok_or_else(|| {
        let mut msg = format!(
            "no index on `{date_field}`: create one with db.<collection>.createIndex({{{date_field}: 1}}) \
             (without it the export and counts scan every month)"
        );
        if !rejected.is_empty() {
            msg.push_str(&format!("; not usable: {}", rejected.join(", ")));
        }
        anyhow!(msg)
    })
}

/// The hosts of a `replSetGetConfig` reply whose replication is delayed on purpose
/// (`secondaryDelaySecs`, or `slaveDelay` before 5.0, above 0).
pub fn delayed_members(reply: &Document) -> Vec<String> {
    let Ok(members) = reply
        .get_document("config")
        .and_then(|c| c.get_array("members"))
    else {
        return Vec::new();
    };
    members
        .iter()
        .filter_map(Bson::as_document)
        .filter(|m| {
            ["secondaryDelaySecs", "slaveDelay"]
                .iter()
                .any(|k| match m.get(*k) {
                    Some(Bson::Int32(n)) => *n > 0,
                    Some(Bson::Int64(n)) => *n > 0,
                    Some(Bson::Double(x)) => *x > 0.0,
                    _ => false,
                })
        })
        .filter_map(|m| m.get_str("host").ok().map(str::to_string))
        .collect()
}

/// The largest lag, in seconds, between the primary's optime and a secondary's, from a
/// `replSetGetStatus` reply. Only members in state SECONDARY and not in `excluded` (delayed
/// members) count; no such secondary gives 0.
pub fn replication_lag_from_status(status: &Document, excluded: &[String]) -> anyhow::Result<f64> {
    let members = status
        .get_array("members")
        .map_err(|_| anyhow!("no members array"))?;
    let optime_ms = |m: &Document| -> Option<i64> {
        match m.get("optimeDate") {
            Some(Bson::DateTime(d)) => Some(d.timestamp_millis()),
            _ => match m.get_document("optime").ok()?.get("ts") {
                Some(Bson::Timestamp(ts)) => Some(i64::from(ts.time) * 1000),
                _ => None,
            },
        }
    };
    let state = |m: &Document| m.get_i32("state").ok();
    let members: Vec<&Document> = members.iter().filter_map(Bson::as_document).collect();
    let primary = members
        .iter()
        .find(|m| state(m) == Some(1))
        .ok_or_else(|| anyhow!("the replica set has no primary"))?;
    let primary_ms = optime_ms(primary).ok_or_else(|| anyhow!("the primary reports no optime"))?;
    let mut lag_ms = 0i64;
    for m in members.iter().filter(|m| state(m) == Some(2)) {
        let name = m.get_str("name").unwrap_or("?");
        if excluded.iter().any(|e| e == name) {
            continue;
        }
        let ms = optime_ms(m).ok_or_else(|| anyhow!("secondary {name} reports no optime"))?;
        lag_ms = lag_ms.max(primary_ms - ms);
    }
    Ok(lag_ms as f64 / 1000.0)
}

/// The parts of the [`Record`] of one exported document: its `_id`, its date string and its exact bytes.
fn record_of<'a>(raw: &'a RawDocument, date_field: &str) -> anyhow::Result<RecordParts<'a>> {
    let id = raw
        .get("_id")
        .ok()
        .flatten()
        .ok_or_else(|| anyhow!("an exported document has no _id"))?;
    let id = Bson::try_from(id).map_err(|e| anyhow!("an exported _id cannot be read: {e}"))?;
    let date = raw.get_str(date_field).map_err(|e| {
        anyhow!("document {id}: `{date_field}` is not a string although the range matched it: {e}")
    })?;
    Ok(RecordParts {
        id,
        date,
        raw: raw.as_bytes(),
    })
}

/// The owned id and the borrowed rest of a [`Record`].
#[derive(Debug)]
struct RecordParts<'a> {
    id: Bson,
    date: &'a str,
    raw: &'a [u8],
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::{Timestamp, oid::ObjectId, rawdoc};
    use mongodb::options::ServerAddress;

    fn bounds() -> MonthBounds {
        MonthBounds::new("2024-01".parse().unwrap(), "Asia/Shanghai".parse().unwrap())
    }

    fn index(name: &str, key: Document) -> DateIndex {
        DateIndex {
            name: name.into(),
            key,
        }
    }

    #[test]
    fn range_filter_is_the_half_open_month_as_strings() {
        assert_eq!(
            range_filter("create_on", &bounds()),
            doc! {"create_on": {
                "$gte": "2024-01-01 00:00:00",
                "$lt": "2024-02-01 00:00:00",
                "$regex": WELL_FORMED_DATE_PATTERN,
            }}
        );
    }

    #[test]
    fn export_options_hint_sort_collation_batch_and_no_timeout() {
        let idx = index("create_on_1", doc! {"create_on": 1});
        let o = export_find_options(&idx, "create_on", 7_000).unwrap();
        assert_eq!(o.hint, Some(Hint::Name("create_on_1".into())));
        assert_eq!(o.sort, Some(doc! {"create_on": 1}));
        assert_eq!(
            o.collation.as_ref().map(|c| c.locale.as_str()),
            Some("simple")
        );
        assert_eq!(o.batch_size, Some(7_000));
        assert_eq!(o.no_cursor_timeout, Some(true));
        assert_eq!(o.limit, None);
        assert_eq!(o.max_time, None, "maxTimeMS is cumulative over getMores");
        // What goes on the wire, in the driver's own serialisation.
        let wire = bson::to_document(&o).unwrap();
        assert_eq!(
            wire.get_document("collation").unwrap(),
            &doc! {"locale": "simple"}
        );
        assert_eq!(wire.get_str("hint").unwrap(), "create_on_1");
    }

    #[test]
    fn export_sort_follows_a_compound_index_and_makes_the_date_ascending() {
        let asc = index("c_id", doc! {"create_on": 1, "_id": 1});
        assert_eq!(
            export_sort(&asc, "create_on").unwrap(),
            doc! {"create_on": 1, "_id": 1}
        );
        let desc = index("c_desc", doc! {"create_on": -1, "_id": 1});
        assert_eq!(
            export_sort(&desc, "create_on").unwrap(),
            doc! {"create_on": 1, "_id": -1}
        );
        let hashed = index("h", doc! {"create_on": "hashed"});
        assert!(export_sort(&hashed, "create_on").is_err());
    }

    #[test]
    fn counts_use_the_same_hint_and_collation_with_a_server_time_limit() {
        let idx = index("create_on_1", doc! {"create_on": 1});
        let o = count_options(&idx, Duration::from_secs(90));
        assert_eq!(o.hint, Some(Hint::Name("create_on_1".into())));
        assert_eq!(o.collation.unwrap().locale, "simple");
        assert_eq!(o.max_time, Some(Duration::from_secs(90)));
        let e = example_find_options(&idx, Duration::from_secs(5));
        assert_eq!(e.projection, Some(doc! {"_id": 1}));
        assert_eq!(e.limit, Some(ANOMALY_EXAMPLES));
        assert_eq!(e.hint, Some(Hint::Name("create_on_1".into())));
    }

    #[test]
    fn anomaly_filters_are_exact_and_disjoint_by_construction() {
        let f = anomaly_filters("create_on");
        let kinds: Vec<AnomalyKind> = f.iter().map(|(k, _)| *k).collect();
        assert_eq!(
            kinds,
            [
                AnomalyKind::Missing,
                AnomalyKind::WrongType,
                AnomalyKind::Malformed
            ]
        );
        assert_eq!(
            f[0].1,
            doc! {"$or": [{"create_on": {"$exists": false}}, {"create_on": {"$type": "null"}}]}
        );
        assert_eq!(
            f[1].1,
            doc! {"$or": [
                {"create_on": {"$exists": true, "$not": {"$type": ["string", "null"]}}},
                {"create_on": {"$type": "array"}},
            ]}
        );
        assert_eq!(
            f[2].1,
            doc! {
                "create_on": {"$type": "string", "$not": Regex {
                    pattern: r"^[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}\z".into(),
                    options: String::new(),
                }},
                "$nor": [{"create_on": {"$type": "array"}}],
            }
        );
        assert_eq!(AnomalyKind::WrongType.to_string(), "wrong-type");
    }

    #[test]
    fn delete_is_by_archived_ids_within_the_month_with_majority_write_concern() {
        let a = ObjectId::parse_str("65920080aaaaaaaaaaaaaaaa").unwrap();
        let ids = vec![Bson::ObjectId(a), Bson::Int64(7)];
        assert_eq!(
            delete_filter(&ids, "create_on", &bounds()),
            doc! {
                "_id": {"$in": [a, 7_i64]},
                "create_on": {"$gte": "2024-01-01 00:00:00", "$lt": "2024-02-01 00:00:00"},
            }
        );
        let o = delete_options(Duration::from_secs(60));
        let wc = o.write_concern.unwrap();
        assert_eq!(wc.w, Some(Acknowledgment::Majority));
        assert_eq!(wc.w_timeout, Some(Duration::from_secs(60)));
        assert_eq!(o.collation.unwrap().locale, "simple");
        assert_eq!(o.hint, None, "the planner picks the _id index for $in");
    }

    #[test]
    fn restore_inserts_unordered_with_majority_and_keeps_duplicates() {
        let o = restore_insert_options(Duration::from_secs(30));
        assert_eq!(o.ordered, Some(false));
        let wc = o.write_concern.unwrap();
        assert_eq!(wc.w, Some(Acknowledgment::Majority));
        assert_eq!(wc.w_timeout, Some(Duration::from_secs(30)));
        assert_eq!(inserted_despite_duplicates(10, &[], false), Some(10));
        assert_eq!(
            inserted_despite_duplicates(10, &[11000, 11000], false),
            Some(8)
        );
        assert_eq!(inserted_despite_duplicates(10, &[11000, 121], false), None);
        assert_eq!(inserted_despite_duplicates(10, &[11000], true), None);
    }

    #[test]
    fn commands() {
        assert_eq!(
            list_indexes_command("user_logs"),
            doc! {"listIndexes": "user_logs", "cursor": {}}
        );
        assert_eq!(
            coll_stats_command("user_logs"),
            doc! {"collStats": "user_logs", "scale": 1}
        );
        assert_eq!(avg_obj_size(&doc! {"avgObjSize": 201}), Some(201));
        assert_eq!(avg_obj_size(&doc! {"avgObjSize": 200.6}), Some(201));
        assert_eq!(avg_obj_size(&doc! {"count": 0}), None);
        let reply = doc! {"cursor": {"id": 0_i64, "ns": "test.user_logs", "firstBatch": [{"a": 1}]}, "ok": 1};
        assert_eq!(first_batch(&reply).unwrap(), vec![doc! {"a": 1}]);
        assert!(first_batch(&doc! {"ok": 1}).is_err());
    }

    fn spec(name: &str, key: Document) -> Document {
        doc! {"v": 2, "key": key, "name": name}
    }

    #[test]
    fn the_date_index_is_found_and_unusable_ones_are_named() {
        let id = spec("_id_", doc! {"_id": 1});
        let plain = spec("create_on_1", doc! {"create_on": 1});
        let compound = spec("create_on_1_uid_1", doc! {"create_on": 1, "uid": 1});
        let other = spec("uid_1_create_on_1", doc! {"uid": 1, "create_on": 1});
        let chosen =
            choose_date_index(&[id.clone(), compound.clone(), plain, other], "create_on").unwrap();
        assert_eq!(chosen.name, "create_on_1");
        let chosen = choose_date_index(&[id.clone(), compound], "create_on").unwrap();
        assert_eq!(chosen.name, "create_on_1_uid_1");

        let err = choose_date_index(std::slice::from_ref(&id), "create_on").unwrap_err();
        assert!(
            err.to_string().contains("createIndex({create_on: 1})"),
            "{err}"
        );

        let mut partial = spec("p", doc! {"create_on": 1});
        partial.insert("partialFilterExpression", doc! {"x": 1});
        let mut sparse = spec("s", doc! {"create_on": 1});
        sparse.insert("sparse", true);
        let mut hidden = spec("h", doc! {"create_on": 1});
        hidden.insert("hidden", true);
        let mut icu = spec("c", doc! {"create_on": 1});
        icu.insert("collation", doc! {"locale": "en", "strength": 2});
        let mut simple = spec("ok", doc! {"create_on": -1});
        simple.insert("collation", doc! {"locale": "simple"});
        let text = spec("t", doc! {"create_on": "text"});
        let err = choose_date_index(
            &[
                id.clone(),
                partial.clone(),
                sparse.clone(),
                hidden.clone(),
                icu.clone(),
                text,
            ],
            "create_on",
        )
        .unwrap_err()
        .to_string();
        for why in [
            "`p` (it is partial)",
            "`s` (it is sparse)",
            "`h` (it is hidden)",
            "`c` (it has collation",
            "`t` (its key",
        ] {
            assert!(err.contains(why), "{why} missing in: {err}");
        }
        let chosen =
            choose_date_index(&[id, partial, sparse, hidden, icu, simple], "create_on").unwrap();
        assert_eq!(chosen, index("ok", doc! {"create_on": -1}));
    }

    fn member(name: &str, state: i32, ms: i64) -> Document {
        doc! {"name": name, "state": state, "optimeDate": bson::DateTime::from_millis(ms)}
    }

    #[test]
    fn replication_lag_is_the_slowest_secondary_behind_the_primary() {
        let status = doc! {"set": "rs0", "ok": 1, "members": [
            member("a:27017", 1, 1_000_000),
            member("b:27017", 2, 999_500),
            member("c:27017", 2, 996_750),
            // An arbiter and a recovering member have no meaningful optime.
            {"name": "d:27017", "state": 7},
            member("e:27017", 3, 0),
        ]};
        assert_eq!(replication_lag_from_status(&status, &[]).unwrap(), 3.25);
        // c is a delayed member on purpose: it does not hold the purge back.
        assert_eq!(
            replication_lag_from_status(&status, &["c:27017".to_string()]).unwrap(),
            0.5
        );

        let alone = doc! {"members": [member("a", 1, 5)]};
        assert_eq!(replication_lag_from_status(&alone, &[]).unwrap(), 0.0);

        let by_ts = doc! {"members": [
            {"name": "a", "state": 1, "optime": {"ts": Timestamp { time: 100, increment: 1 }, "t": 1_i64}},
            {"name": "b", "state": 2, "optime": {"ts": Timestamp { time: 90, increment: 3 }, "t": 1_i64}},
        ]};
        assert_eq!(replication_lag_from_status(&by_ts, &[]).unwrap(), 10.0);

        let no_primary = doc! {"members": [member("b", 2, 5)]};
        let err = replication_lag_from_status(&no_primary, &[]).unwrap_err();
        assert!(err.to_string().contains("no primary"));
        let blind = doc! {"members": [member("a", 1, 5), {"name": "b", "state": 2}]};
        assert!(
            replication_lag_from_status(&blind, &[])
                .unwrap_err()
                .to_string()
                .contains("b reports no optime")
        );
    }

    #[test]
    fn delayed_members_are_read_from_the_replica_set_config() {
        let reply = doc! {"config": {"_id": "rs0", "members": [
            {"_id": 0, "host": "a:27017", "secondaryDelaySecs": 0_i64},
            {"_id": 1, "host": "b:27017", "secondaryDelaySecs": 3600_i64, "hidden": true, "priority": 0},
            {"_id": 2, "host": "c:27017", "slaveDelay": 600},
            {"_id": 3, "host": "d:27017", "hidden": true},
        ]}, "ok": 1};
        assert_eq!(delayed_members(&reply), ["b:27017", "c:27017"]);
        assert!(delayed_members(&doc! {"ok": 1}).is_empty());
    }

    #[test]
    fn a_record_is_the_exact_bytes_with_its_id_and_date() {
        let doc = rawdoc! {"_id": 42_i32, "create_on": "2024-01-05 03:33:11", "msg": "hi"};
        let parts = record_of(&doc, "create_on").unwrap();
        assert_eq!(parts.id, Bson::Int32(42));
        assert_eq!(parts.date, "2024-01-05 03:33:11");
        assert_eq!(parts.raw, doc.as_bytes());

        let dated = rawdoc! {"_id": 1_i32, "create_on": bson::DateTime::from_millis(0)};
        let err = record_of(&dated, "create_on").unwrap_err().to_string();
        assert!(
            err.contains("document 1") && err.contains("not a string"),
            "{err}"
        );
        assert!(record_of(&rawdoc! {"create_on": "x"}, "create_on").is_err());
    }

    #[test]
    fn the_password_goes_into_the_credential_the_uri_names() {
        let tuning = MongoSourceOptions::default();
        let mut anonymous = ClientOptions::builder()
            .hosts(vec![ServerAddress::parse("db1:27017").unwrap()])
            .build();
        let err = apply_client_settings(&mut anonymous, Some("pw".into()), &tuning).unwrap_err();
        assert!(err.to_string().contains("names no user"));

        let mut named = ClientOptions::builder()
            .hosts(vec![ServerAddress::parse("db1:27017").unwrap()])
            .credential(
                Credential::builder()
                    .username("archiver".to_string())
                    .build(),
            )
            .build();
        apply_client_settings(&mut named, Some("pw".into()), &tuning).unwrap();
        let cred = named.credential.as_ref().unwrap();
        assert_eq!(cred.password.as_deref(), Some("pw"));
        assert_eq!(named.connect_timeout, Some(tuning.command_timeout));
        assert_eq!(named.server_selection_timeout, Some(tuning.command_timeout));
        assert!(
            !format!("{:?}", named.credential).contains("pw\""),
            "Debug must redact"
        );
        assert_eq!(
            describe_target(&named, "test", "user_logs"),
            "mongodb://db1:27017/test.user_logs"
        );
    }

    #[test]
    fn connect_errors_name_the_config_key_and_never_the_password() {
        let err = |uri: &str, pw: Option<&Path>| {
            let e = MongoSource::connect(
                uri,
                pw,
                "test",
                "user_logs",
                "create_on",
                Default::default(),
            )
            .err()
            .expect("refused");
            format!("{e:#}")
        };
        let e = err("mongodb://archiver@db1:notaport/", None);
        assert!(
            e.starts_with("archive.source_uri: bad MongoDB URI `mongodb://db1:notaport/`"),
            "{e}"
        );
        let e = err(
            "mongodb://archiver@db1/",
            Some(Path::new("/nonexistent/opskit-pw")),
        );
        assert!(e.starts_with("archive.source_password_file: "), "{e}");
        let dir = std::env::temp_dir().join(format!("opskit-mongo-conn-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("pw");
        std::fs::write(&file, "hunter2\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let e = err("mongodb://archiver:hunter2@db1/", None);
        assert!(
            e.starts_with("archive.source_uri: ") && e.contains("holds a password"),
            "{e}"
        );
        assert!(!e.contains("hunter2"), "{e}");
        let e = err("mongodb://db1/", Some(&file));
        assert!(
            e.starts_with("archive.source_uri: ") && e.contains("names no user"),
            "{e}"
        );
        assert!(!e.contains("hunter2"));
        // With a user, the client is built without contacting the server.
        let source = MongoSource::connect(
            "mongodb://archiver@db1:27017,db2:27017/?replicaSet=rs0",
            Some(&file),
            "test",
            "user_logs",
            "create_on",
            Default::default(),
        )
        .unwrap();
        assert_eq!(
            source.describe(),
            "mongodb://db1:27017,db2:27017/test.user_logs"
        );
        assert_eq!(source.id_field(), "_id");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn uris_are_redacted_in_messages() {
        assert_eq!(
            redact_uri("mongodb://archiver@db1:27017,db2/?authSource=admin"),
            "mongodb://db1:27017,db2/?authSource=admin"
        );
        assert_eq!(redact_uri("mongodb://u:p@h"), "mongodb://h");
        assert_eq!(redact_uri("nonsense"), "(unparsable URI)");
    }
}
