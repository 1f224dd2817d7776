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
    Hint, WriteConcern,
};
use mongodb::{Client, Collection, Database};

use super::{Anomalies, RangeStats, Record, RecordSink, Source};
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
    /// The password, if any, is read from `password_file`, which must be owned by the
    /// caller's account conventions and not readable by group or others (mode 0600); it is
    /// set through the driver's `Credential` and never logged. The URI must then name the
    /// user (`mongodb://archiver@db1:27017/?authSource=admin`).
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
            Some(path) => Some(read_password_file(path)?),
            None => None,
        };
        let uri_owned = uri.to_string();
        let parse = async move { ClientOptions::parse(uri_owned).await };
        let mut client_options = block_on_task(
            &runtime,
            "parsing the MongoDB URI",
            options.command_timeout,
            parse,
        )
        .with_context(|| format!("bad MongoDB URI `{}`", redact_uri(uri)))?;
        apply_client_settings(&mut client_options, password, &options)?;
        let description = describe_target(&client_options, database, collection);
        let client = {
            let _guard = runtime.enter();
            Client::with_options(client_options)
                .with_context(|| format!("cannot create a MongoDB client for {description}"))?
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
        MongoSource::connect(
            &config.source_uri,
            config.source_password_file.as_ref().map(|p| p.as_ref()),
            config.database.as_str(),
            config.collection.as_str(),
            config.date_field.as_str(),
            MongoSourceOptions::default(),
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
        block_on_task(&self.runtime, what, limit, fut)
            .with_context(|| format!("{} on {}", what, self.description))
    }

    fn count(&mut self, filter: Document, what: &str) -> anyhow::Result<u64> {
        let index = self.date_index()?;
        let coll = self.coll.clone();
        let options = count_options(&index, self.options.scan_timeout);
        self.run(what, self.options.scan_timeout, async move {
            coll.count_documents(filter).with_options(options).await
        })
    }

    fn example_ids(&mut self, filter: Document, what: &str) -> anyhow::Result<Vec<String>> {
        let index = self.date_index()?;
        let coll = self.coll.clone();
        let options = example_find_options(&index, self.options.scan_timeout);
        let docs = self.run(what, self.options.scan_timeout, async move {
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

impl Source for MongoSource {
    fn describe(&self) -> String {
        self.description.clone()
    }

    fn id_field(&self) -> &str {
        "_id"
    }

    /// `ping`, then `listIndexes` on the collection: it must exist and have a usable index on
    /// the date field (both are preconditions of every later call).
    fn ping(&mut self) -> anyhow::Result<()> {
        let admin = self.client.database("admin");
        self.run("ping", self.options.command_timeout, async move {
            admin.run_command(doc! {"ping": 1}).await
        })?;
        self.date_index()?;
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
        match status {
            None => Ok(None),
            Some(status) => replication_lag_from_status(&status)
                .map(Some)
                .with_context(|| format!("replSetGetStatus of {}", self.description)),
        }
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
    what: &str,
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
            Err(_) => Err(anyhow!("{what}: no answer within {limit:?}")),
            Ok(Err(join)) => Err(anyhow!("{what}: the driver task failed: {join}")),
            Ok(Ok(Err(e))) => Err(anyhow::Error::new(e).context(format!("{what} failed"))),
            Ok(Ok(Ok(value))) => Ok(value),
        }
    })
}

/// Reads a password file: it must not be readable by group or others; one trailing newline is
/// not part of the password.
pub fn read_password_file(path: &Path) -> anyhow::Result<String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path)
        .with_context(|| format!("cannot read the MongoDB password file {}", path.display()))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        bail!(
            "the MongoDB password file {} has mode {mode:04o}; it must be 0600 (chmod 600 {})",
            path.display(),
            path.display()
        );
    }
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the MongoDB password file {}", path.display()))?;
    let password = text.strip_suffix('\n').unwrap_or(&text);
    let password = password.strip_suffix('\r').unwrap_or(password);
    if password.is_empty() {
        bail!("the MongoDB password file {} is empty", path.display());
    }
    Ok(password.to_string())
}

/// Sets the password (into the credential whose user the URI names), the app name and the
/// connection time limits.
pub fn apply_client_settings(
    client_options: &mut ClientOptions,
    password: Option<String>,
    options: &MongoSourceOptions,
) -> anyhow::Result<()> {
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

/// `{date: {$gte: lower, $lt: upper}}`: the half-open month as strings.
pub fn range_filter(date_field: &str, bounds: &MonthBounds) -> Document {
    doc! { date_field: { "$gte": bounds.lower.as_str(), "$lt": bounds.upper.as_str() } }
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
    let mut filter = doc! { "_id": { "$in": ids.to_vec() } };
    filter.extend(range_filter(date_field, bounds));
    filter
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

/// The largest lag, in seconds, between the primary's optime and a secondary's, from a
/// `replSetGetStatus` reply. Only members in state SECONDARY count; no secondaries gives 0.
pub fn replication_lag_from_status(status: &Document) -> anyhow::Result<f64> {
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
struct RecordParts<'a> {
    id: Bson,
    date: &'a str,
    raw: &'a [u8],
}
