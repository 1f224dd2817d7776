//! The MongoDB source: one month of `test.user_logs` read as raw BSON through the date index,
//! deleted by the `_id`s that are in the verified archive.
//!
//! The official async driver runs on a current-thread tokio runtime owned by the adapter; the
//! [`Source`] trait is synchronous, so every call blocks on that runtime. A driver future is
//! never dropped half-way (RUST-937): each operation is spawned as a task and only its
//! `JoinHandle` is timed out. A timed-out task finishes (or is dropped with the runtime) on
//! its own; the caller gets an error naming the operation and the limit.
//!
//! Every query and command the adapter sends comes from a small pure function in [`query`]
//! ([`range_filter`], [`export_find_options`], [`anomaly_filters`], [`delete_commands`], …),
//! so what is sent to the server is unit-tested without a server.
//!
//! The purge deletes a document only while it is byte for byte what was archived (one
//! `delete` statement per document matching `$$ROOT` against the archived document), then
//! looks up which of the batch's ids are still there: those changed since the export and are
//! kept for the next late pass.

use std::future::Future;
use std::path::Path;
use std::time::Duration;

pub mod query;

pub use query::*;

use anyhow::{Context, anyhow, bail};
use bson::{Bson, Document, RawDocument, RawDocumentBuf, doc};
use futures_util::StreamExt;
use mongodb::options::{ClientOptions, Credential};
use mongodb::{Client, Collection, Database};

use opskit_core::Classify as _;
use opskit_core::secret::read_secret_file;

use super::{
    Anomalies, ArchivedDoc, DeleteOutcome, DeleteTimedOut, PASSWORD_KEY, RangeStats, Record,
    RecordSink, Source,
};
use crate::bounds::MonthBounds;

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

/// A MongoDB collection as an archive [`Source`].
pub struct MongoSource {
    // Field order matters: the client must drop before the runtime it was built on.
    client: Client,
    coll: Collection<RawDocumentBuf>,
    date_field: String,
    description: String,
    options: MongoSourceOptions,
    index: Option<DateIndex>,
    /// "standalone: no replication lag to watch" was logged (once per run).
    standalone_noted: bool,
    /// A failed `replSetGetConfig` was reported (once per run).
    config_warned: bool,
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
            standalone_noted: false,
            config_warned: false,
            runtime,
        })
    }

    /// Connects with the `[archive]` settings of the config and default tuning.
    /// `archive.source_timeout_secs` limits each delete batch (and its lookup of the
    /// documents kept).
    pub fn from_config(config: &opskit_core::config::ArchiveConfig) -> anyhow::Result<Self> {
        let options = MongoSourceOptions {
            delete_timeout: Duration::from_secs(config.source_timeout_secs.get()),
            ..MongoSourceOptions::default()
        };
        MongoSource::from_config_with(config, options)
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
            estimated: false,
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
                        fingerprint: None,
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

    fn delete_archived(
        &mut self,
        docs: &[ArchivedDoc],
        bounds: &MonthBounds,
    ) -> anyhow::Result<DeleteOutcome> {
        if docs.is_empty() {
            return Ok(DeleteOutcome::default());
        }
        // Slack for the server's own `wtimeout`/`maxTimeMS` to answer first (at most 5 s, and
        // no more than the limit itself, so a short limit stays short).
        let limit =
            self.options.delete_timeout + self.options.delete_timeout.min(Duration::from_secs(5));
        let commands = delete_commands(
            self.coll.name(),
            docs,
            &self.date_field,
            bounds,
            self.options.delete_timeout,
        )?;
        // A time-out of the batch (its deletes or the lookup after them) is typed: the purge
        // retries the batch smaller.
        let timed_out = |e: anyhow::Error, description: &str| {
            if e.chain().any(|c| {
                c.downcast_ref::<TaskTimedOut>().is_some()
                    || c.downcast_ref::<mongodb::error::Error>()
                        .is_some_and(|m| error_code(m) == Some(MAX_TIME_MS_EXPIRED))
            }) {
                anyhow::Error::new(DeleteTimedOut {
                    server: description.to_string(),
                    documents: docs.len(),
                    limit,
                })
            } else {
                e
            }
        };
        let mut deleted = 0;
        for command in commands {
            let db = self.database();
            let n = command.get_array("deletes").map_or(0, Vec::len);
            let reply = self
                .run(&format!("delete of {n} documents"), limit, async move {
                    db.run_command(command).await
                })
                .map_err(|e| timed_out(e, &self.description))?;
            deleted += deleted_count(&reply)
                .with_context(|| format!("delete of {n} documents on {}", self.description))?;
        }
        let ids: Vec<Bson> = docs.iter().map(|d| d.id.clone()).collect();
        let coll = self.coll.clone();
        let options = remaining_find_options(self.options.delete_timeout);
        let present = self
            .run("looking up the documents kept", limit, async move {
                let mut cursor = coll
                    .find(remaining_filter(&ids))
                    .with_options(options)
                    .await?;
                let mut n = 0u64;
                while cursor.advance().await? {
                    n += 1;
                }
                Ok(n)
            })
            .map_err(|e| timed_out(e, &self.description))?;
        let n = docs.len() as u64;
        if deleted > n {
            bail!("the delete of {n} documents reported {deleted} deleted: stopping");
        }
        Ok(DeleteOutcome {
            deleted,
            changed: present.min(n - deleted),
            gone: n - deleted - present.min(n - deleted),
        })
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
            if !self.standalone_noted {
                self.standalone_noted = true;
                tracing::info!("standalone: no replication lag to watch");
            }
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
                if !self.config_warned {
                    self.config_warned = true;
                    tracing::warn!(
                        "replSetGetConfig on {} failed ({}); delayed members (if any) count towards the replication lag",
                        self.description,
                        short_error(&e)
                    );
                }
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
/// Server error code of an operation that exceeded its `maxTimeMS`.
const MAX_TIME_MS_EXPIRED: i32 = 50;
/// Server error code for a missing collection.
const NAMESPACE_NOT_FOUND: i32 = 26;

fn error_code(e: &mongodb::error::Error) -> Option<i32> {
    match e.kind.as_ref() {
        mongodb::error::ErrorKind::Command(c) => Some(c.code),
        _ => None,
    }
}

/// A one-line account of a failed command: `code 59 (CommandNotFound): no such command`
/// for a server error, else the first line of the message, cut at 160 characters (never a
/// raw reply dump).
fn short_error(e: &anyhow::Error) -> String {
    for cause in e.chain() {
        if let Some(m) = cause.downcast_ref::<mongodb::error::Error>()
            && let mongodb::error::ErrorKind::Command(c) = m.kind.as_ref()
        {
            return format!("code {} ({}): {}", c.code, c.code_name, c.message);
        }
    }
    let text = e.to_string();
    let line = text.lines().next().unwrap_or("");
    let mut out: String = line.chars().take(160).collect();
    if out.len() < line.len() {
        out.push('…');
    }
    out
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
            Err(_) => Err(anyhow::Error::new(TaskTimedOut(limit))),
            Ok(Err(join)) => Err(anyhow!("the driver task failed: {join}")),
            Ok(Ok(Err(e))) => Err(anyhow::Error::new(e)),
            Ok(Ok(Ok(value))) => Ok(value),
        }
    })
}

/// A driver task that did not finish within its limit.
#[derive(Debug)]
struct TaskTimedOut(Duration);

impl std::fmt::Display for TaskTimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "no answer within {:?}", self.0)
    }
}

impl std::error::Error for TaskTimedOut {}

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
mod tests;
