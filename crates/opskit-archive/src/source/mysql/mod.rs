//! The MySQL/MariaDB source: the same archive pipeline for a table with a `DATETIME`,
//! `TIMESTAMP`, `DATE` or `YYYY-MM-DD HH:MM:SS` string column, deleted by primary key.
//!
//! Each row becomes one BSON document of its columns ([`row`]), so the archive has the same
//! shape for both sources and `opskit archive restore` can put the rows back with a plain
//! `INSERT`.
//!
//! `mysql_async` runs on a current-thread tokio runtime owned by the adapter; every call is
//! wrapped in a timeout. The export is one streaming query through the date index
//! (`FORCE INDEX`), read row by row, so memory stays flat whatever the month's size.
//!
//! For a `TIMESTAMP` column every session (the main one, a reconnected one, each delete
//! session) uses the writers' zone, so the export, the purge's comparison and its `DELETE`
//! read the same instants as the same strings. The purge deletes a row only inside a
//! transaction that locked it (`SELECT … FOR UPDATE`) and found it byte-identical to the
//! archived document ([`delete`]).

use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use bson::RawDocument;
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, OptsBuilder, Row, Value};
use opskit_core::config::ArchiveConfig;

use opskit_core::error::usage;
use opskit_core::secret::read_secret_file;

mod delete;
mod fingerprint;
mod lag;
mod returning;
mod row;

pub use self::fingerprint::fingerprint_expr;
use self::row::{bson_to_mysql, encode_row};
use super::{
    Anomalies, ArchivedDoc, DeleteOutcome, DeletingSink, FreeSessions, PASSWORD_KEY, RangeStats,
    Record, RecordSink, ReplicaLag, Source,
};
use crate::bounds::MonthBounds;
use crate::rawbson::DocumentWriter;

/// The largest number of ids one `DELETE … IN (…)` carries.
const MAX_IDS_PER_STATEMENT: usize = 10_000;
/// How many example ids are reported per kind of anomaly.
const ANOMALY_EXAMPLES: usize = 3;

/// How the date column is typed, which decides how it is compared and formatted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DateKind {
    /// `DATETIME`, `DATE`: compared as values; no time zone.
    Typed,
    /// `TIMESTAMP`: shown in the session time zone, which is set to the writers' zone.
    Timestamp,
    /// `CHAR`/`VARCHAR`/`TEXT` holding `YYYY-MM-DD HH:MM:SS`: compared as strings.
    Text,
}

/// What the adapter learned about the table.
#[derive(Debug, Clone)]
struct TableInfo {
    pk: String,
    date_kind: DateKind,
    index: Option<String>,
    /// Every column and its `DATA_TYPE`, in table order (what the fingerprint covers).
    columns: Vec<(String, String)>,
}

/// A MySQL/MariaDB table as an archive source.
pub struct MysqlSource {
    rt: tokio::runtime::Runtime,
    opts: mysql_async::Opts,
    conn: Option<Conn>,
    described: String,
    database: String,
    table: String,
    date_field: String,
    time_zone: String,
    timeout: Duration,
    info: Option<TableInfo>,
    delete_connections: usize,
    delete_pool: Vec<Conn>,
    /// Replicas whose lag pauses the purge ([`lag`]).
    replicas: Vec<lag::Replica>,
    /// `archive.purge.discover_replicas`.
    discover: bool,
    /// The export selects each row's fingerprint ([`fingerprint_expr`]).
    fingerprints: bool,
    /// Discovery ran.
    discovered: bool,
    /// `archive.purge.delete_returning` ([`returning`]).
    delete_returning: bool,
    /// `archive.segment_docs`: the segment size whose `DELETE` plan is checked.
    segment_docs: usize,
    /// Sessions of committed segment transactions, for the next segments.
    returning_pool: returning::SessionPool,
}

/// Quotes an identifier with backticks.
pub fn quote_ident(s: &str) -> String {
    format!("`{}`", s.replace('`', "``"))
}

impl MysqlSource {
    /// A source for `[archive]` with a `mysql://user@host:port/` URI. Connects lazily.
    pub fn from_config(config: &ArchiveConfig) -> anyhow::Result<MysqlSource> {
        let password = match &config.source_password_file {
            Some(p) => Some(
                read_secret_file(p.path(), PASSWORD_KEY)?
                    .expose()
                    .to_string(),
            ),
            None => None,
        };
        let mut source = Self::new(
            &config.source_uri,
            password,
            config.database.as_str(),
            config.collection.as_str(),
            config.date_field.as_str(),
            "UTC",
            Duration::from_secs(config.source_timeout_secs.get()),
        )?;
        source.delete_connections = config.purge.connections.get() as usize;
        for uri in &config.purge.replicas {
            let r =
                lag::Replica::from_uri(uri, &source.opts).map_err(|e| usage(format!("{e:#}")))?;
            source.replicas.push(r);
        }
        source.discover = config.purge.discover_replicas;
        source.delete_returning = config.purge.delete_returning;
        source.segment_docs = config.segment_docs.get() as usize;
        Ok(source)
    }

    /// A source from its parts; `time_zone` is the writers' zone (used for `TIMESTAMP`).
    pub fn new(
        uri: &str,
        password: Option<String>,
        database: &str,
        table: &str,
        date_field: &str,
        time_zone: &str,
        timeout: Duration,
    ) -> anyhow::Result<MysqlSource> {
        let parsed = mysql_async::Opts::from_url(uri).map_err(|e| {
            usage(format!(
                "archive.source_uri is not a valid mysql:// URI: {e}"
            ))
        })?;
        let described = format!(
            "mysql://{}{}:{}/",
            parsed.user().map(|u| format!("{u}@")).unwrap_or_default(),
            parsed.ip_or_hostname(),
            parsed.tcp_port()
        );
        let opts: mysql_async::Opts = OptsBuilder::from_opts(parsed)
            .pass(password)
            .db_name(None::<String>)
            .prefer_socket(false)
            .into();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the MySQL adapter's runtime")?;
        Ok(MysqlSource {
            rt,
            opts,
            conn: None,
            described,
            database: database.to_string(),
            table: table.to_string(),
            date_field: date_field.to_string(),
            time_zone: time_zone.to_string(),
            timeout,
            info: None,
            delete_connections: 1,
            delete_pool: Vec::new(),
            replicas: Vec::new(),
            discover: false,
            discovered: false,
            fingerprints: true,
            delete_returning: true,
            segment_docs: 20_000,
            returning_pool: Default::default(),
        })
    }

    /// Sets how many sessions share each purge batch (`archive.purge.connections`).
    pub fn set_delete_connections(&mut self, n: usize) {
        self.delete_connections = n.max(1);
    }

    /// Sets the writers' time zone (the session zone for `TIMESTAMP` columns).
    pub fn set_time_zone(&mut self, tz: &str) {
        self.time_zone = tz.to_string();
    }

    fn table_ref(&self) -> String {
        format!(
            "{}.{}",
            quote_ident(&self.database),
            quote_ident(&self.table)
        )
    }

    /// A new session, within the source's time limit. Once the date column is known to be a
    /// `TIMESTAMP`, the session gets the writers' zone before anything else runs on it.
    fn connect(&self) -> anyhow::Result<Conn> {
        self.connector().connect(&self.rt)
    }

    /// Runs `f` on the connection (connecting first) with the adapter's timeout.
    fn with_conn<T>(
        &mut self,
        what: &str,
        f: impl for<'c> FnOnce(
            &'c mut Conn,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = mysql_async::Result<T>> + 'c>,
        >,
    ) -> anyhow::Result<T> {
        let timeout = self.timeout;
        let server = self.described.clone();
        if self.conn.is_none() {
            self.conn = Some(self.connect()?);
        }
        let conn = self.conn.as_mut().expect("connected above");
        let result = self
            .rt
            .block_on(async { tokio::time::timeout(timeout, f(conn)).await });
        match result {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                if matches!(e, mysql_async::Error::Io(_) | mysql_async::Error::Driver(_)) {
                    self.conn = None;
                }
                Err(anyhow!("{what} on {server}: {e}"))
            }
            Err(_) => {
                // A half-finished query leaves the connection unusable: drop it.
                self.conn = None;
                Err(anyhow!("{what} on {server}: no answer within {timeout:?}"))
            }
        }
    }

    fn info(&mut self) -> anyhow::Result<TableInfo> {
        if let Some(info) = &self.info {
            return Ok(info.clone());
        }
        let (db, table, date) = (
            self.database.clone(),
            self.table.clone(),
            self.date_field.clone(),
        );
        let target = format!("{db}.{table}");
        let exists: Option<u64> = {
            let (db, table) = (db.clone(), table.clone());
            self.with_conn("looking up the table", move |c| {
                Box::pin(c.exec_first(
                    "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?",
                    (db, table),
                ))
            })?
        };
        if exists.unwrap_or(0) == 0 {
            bail!("table {target} does not exist on {}", self.described);
        }
        let pk: Vec<String> = {
            let (db, table) = (db.clone(), table.clone());
            self.with_conn("reading the primary key", move |c| {
                Box::pin(c.exec(
                    "SELECT COLUMN_NAME FROM information_schema.KEY_COLUMN_USAGE \
                     WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? AND CONSTRAINT_NAME = 'PRIMARY' \
                     ORDER BY ORDINAL_POSITION",
                    (db, table),
                ))
            })?
        };
        let pk = match pk.as_slice() {
            [one] => one.clone(),
            [] => bail!(
                "table {target} has no primary key; the archive deletes by primary key and refuses tables without one"
            ),
            many => bail!(
                "table {target} has a composite primary key ({}); only single-column keys are supported",
                many.join(", ")
            ),
        };
        let data_type: Option<String> = {
            let (db, table, date) = (db.clone(), table.clone(), date.clone());
            self.with_conn("reading the date column", move |c| {
                Box::pin(c.exec_first(
                    "SELECT DATA_TYPE FROM information_schema.COLUMNS \
                     WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? AND COLUMN_NAME = ?",
                    (db, table, date),
                ))
            })?
        };
        let Some(data_type) = data_type else {
            bail!("table {target} has no column `{date}` (archive.date_field)");
        };
        let date_kind = match data_type.to_ascii_lowercase().as_str() {
            "datetime" | "date" => DateKind::Typed,
            "timestamp" => DateKind::Timestamp,
            "char" | "varchar" | "tinytext" | "text" | "mediumtext" | "longtext" => DateKind::Text,
            other => bail!(
                "column {target}.{date} is {other}; the date field must be DATETIME, TIMESTAMP, DATE or a YYYY-MM-DD HH:MM:SS string"
            ),
        };
        let index: Option<String> = self.with_conn("looking for the date index", move |c| {
            Box::pin(c.exec_first(
                "SELECT INDEX_NAME FROM information_schema.STATISTICS \
                 WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? AND COLUMN_NAME = ? AND SEQ_IN_INDEX = 1 \
                 ORDER BY INDEX_NAME = 'PRIMARY' DESC, INDEX_NAME LIMIT 1",
                (db, table, date),
            ))
        })?;
        if date_kind == DateKind::Timestamp {
            let tz = self.time_zone.clone();
            self.with_conn("setting the session time zone", move |c| {
                Box::pin(c.exec_drop("SET time_zone = ?", (tz,)))
            })
            .context(
                "the date column is a TIMESTAMP, which MySQL shows in the session time zone; \
                 load the zone tables (mariadb-tzinfo-to-sql) so the writers' zone can be set",
            )?;
        }
        let columns = self.read_columns()?;
        let info = TableInfo {
            pk,
            date_kind,
            index,
            columns,
        };
        self.info = Some(info.clone());
        Ok(info)
    }

    /// Every column of the table and its `DATA_TYPE`, in table order.
    fn read_columns(&mut self) -> anyhow::Result<Vec<(String, String)>> {
        let (db, table) = (self.database.clone(), self.table.clone());
        self.with_conn("reading the columns", move |c| {
            Box::pin(c.exec(
                "SELECT COLUMN_NAME, DATA_TYPE FROM information_schema.COLUMNS \
                 WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? ORDER BY ORDINAL_POSITION",
                (db, table),
            ))
        })
    }

    fn table_with_hint(&self, info: &TableInfo) -> String {
        match &info.index {
            Some(idx) => format!("{} FORCE INDEX ({})", self.table_ref(), quote_ident(idx)),
            None => self.table_ref(),
        }
    }

    /// The export query: the month through the date index, in (date, key) order; every
    /// column, then (unless turned off) the row's fingerprint ([`fingerprint_expr`]) under a
    /// reserved alias.
    pub fn export_sql(&mut self) -> anyhow::Result<String> {
        let info = self.info()?;
        let fingerprint = if self.fingerprints {
            format!(
                ", {} AS {}",
                fingerprint_expr(&info.columns),
                quote_ident(fingerprint::ALIAS)
            )
        } else {
            String::new()
        };
        Ok(format!(
            "SELECT *{fingerprint} FROM {} WHERE {} ORDER BY {d}, {pk}",
            self.table_with_hint(&info),
            month_predicate(&self.date_field, info.date_kind),
            d = quote_ident(&self.date_field),
            pk = quote_ident(&info.pk)
        ))
    }

    /// Inserts archived documents back (`INSERT IGNORE`: rows already present are kept).
    /// Returns the number of rows inserted.
    pub fn insert_documents(&mut self, docs: &[&RawDocument]) -> anyhow::Result<u64> {
        let Some(first) = docs.first() else {
            return Ok(0);
        };
        let columns: Vec<String> = first
            .iter()
            .map(|e| e.map(|(k, _)| k.to_string()))
            .collect::<Result<_, _>>()
            .context("reading an archived document")?;
        let mut params: Vec<Value> = Vec::with_capacity(docs.len() * columns.len());
        for doc in docs {
            for col in &columns {
                let v = doc
                    .get(col)
                    .context("reading an archived document")?
                    .map(bson_to_mysql)
                    .transpose()?
                    .unwrap_or(Value::NULL);
                params.push(v);
            }
        }
        let row = format!("({})", vec!["?"; columns.len()].join(","));
        let sql = format!(
            "INSERT IGNORE INTO {} ({}) VALUES {}",
            self.table_ref(),
            columns
                .iter()
                .map(|c| quote_ident(c))
                .collect::<Vec<_>>()
                .join(","),
            vec![row; docs.len()].join(",")
        );
        self.with_conn("inserting restored rows", move |c| {
            Box::pin(async move {
                c.exec_drop(sql, params).await?;
                Ok(c.affected_rows())
            })
        })
    }
}

/// The month's predicate (two placeholders: lower, upper). For a text column it also requires
/// the exact `YYYY-MM-DD HH:MM:SS` shape: a malformed string that happens to sort inside the
/// month (`2024-01-05T03:03:11`) is an anomaly to report, never archived nor deleted.
fn month_predicate(date_field: &str, kind: DateKind) -> String {
    let d = quote_ident(date_field);
    match kind {
        DateKind::Text => format!(
            "{d} >= ? AND {d} < ? AND CHAR_LENGTH({d}) = 19 AND {d} REGEXP '{WELL_FORMED_DATE_REGEXP}'"
        ),
        DateKind::Typed | DateKind::Timestamp => format!("{d} >= ? AND {d} < ?"),
    }
}

/// A well-formed date string, in MariaDB/MySQL `REGEXP` syntax (the length is checked apart).
const WELL_FORMED_DATE_REGEXP: &str = "^[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}$";

impl MysqlSource {
    /// The export, optionally stopped after `limit` records (used to sample record sizes).
    fn export_limited(
        &mut self,
        bounds: &MonthBounds,
        sink: &mut dyn RecordSink,
        limit: Option<u64>,
    ) -> anyhow::Result<()> {
        let info = self.info()?;
        let mut sql = self.export_sql()?;
        if let Some(l) = limit {
            sql.push_str(&format!(" LIMIT {l}"));
        }
        let timeout = self.timeout;
        let server = self.described.clone();
        let date_field = self.date_field.clone();
        let (lo, hi) = (bounds.lower.clone(), bounds.upper.clone());
        let with_fingerprint = self.fingerprints;
        // Connect (or reconnect) through with_conn, then stream on the raw connection.
        self.with_conn("preparing the export", |c| {
            Box::pin(c.query_drop("SET SESSION net_write_timeout = 600"))
        })?;
        let conn = self.conn.as_mut().expect("connected by with_conn");
        let result: anyhow::Result<()> = self.rt.block_on(async {
            let mut rows = tokio::time::timeout(timeout, conn.exec_iter(sql.as_str(), (lo, hi)))
                .await
                .map_err(|_| anyhow!("export query on {server}: no answer within {timeout:?}"))?
                .with_context(|| format!("export query on {server}"))?;
            let mut doc = DocumentWriter::default();
            // The fingerprint is kept only while `*` returned exactly the columns it covers
            // (a column added since the table was read would escape it).
            let mut covered = None;
            loop {
                let row = tokio::time::timeout(timeout, rows.next())
                    .await
                    .map_err(|_| anyhow!("reading rows from {server}: no row within {timeout:?}"))?
                    .with_context(|| format!("reading rows from {server}"))?;
                let Some(row) = row else { break };
                let n = row.columns_ref().len() - usize::from(with_fingerprint);
                let covered = with_fingerprint
                    && *covered.get_or_insert_with(|| {
                        let names = row.columns_ref()[..n].iter().map(|c| c.name_str());
                        names.eq(info
                            .columns
                            .iter()
                            .map(|(c, _)| std::borrow::Cow::Borrowed(c.as_str())))
                    });
                let (id, date) = encode_row(&row, n, &info.pk, &date_field, &mut doc)?;
                let fingerprint = covered
                    .then(|| fingerprint::fingerprint_of(row.as_ref(n)))
                    .flatten();
                sink.accept(Record {
                    id: &id,
                    date: &date,
                    raw: doc.finish(),
                    fingerprint,
                })?;
            }
            Ok(())
        });
        if result.is_err() {
            // A half-read result set leaves the connection unusable.
            self.conn = None;
        }
        result
    }
}

impl MysqlSource {
    /// The month's stats for `count` documents: table statistics lag behind bulk inserts, so
    /// a sample of the month's own rows, encoded exactly as the export encodes them, gives
    /// the archive's raw size per record.
    fn month_stats(
        &mut self,
        bounds: &MonthBounds,
        info: TableInfo,
        count: u64,
        estimated: bool,
    ) -> anyhow::Result<RangeStats> {
        let mut sample = SizeSample::default();
        if count > 0 {
            self.export_limited(bounds, &mut sample, Some(1000))?;
        }
        Ok(RangeStats {
            count,
            avg_record_bytes: (sample.count > 0).then(|| sample.bytes / sample.count),
            index: info.index,
            estimated,
        })
    }
}

/// Measures the average encoded record size of a sample.
#[derive(Default)]
struct SizeSample {
    count: u64,
    bytes: u64,
}

impl RecordSink for SizeSample {
    fn accept(&mut self, record: Record<'_>) -> anyhow::Result<()> {
        self.count += 1;
        self.bytes += record.raw.len() as u64;
        Ok(())
    }
}

impl Source for MysqlSource {
    fn describe(&self) -> String {
        format!("{}{}.{}", self.described, self.database, self.table)
    }

    fn id_field(&self) -> &str {
        self.info.as_ref().map_or("id", |i| i.pk.as_str())
    }

    fn ping(&mut self) -> anyhow::Result<()> {
        self.with_conn("ping", |c| Box::pin(c.ping()))?;
        self.info()?;
        Ok(())
    }

    fn range_stats(&mut self, bounds: &MonthBounds) -> anyhow::Result<RangeStats> {
        let info = self.info()?;
        let sql = format!(
            "SELECT COUNT(*) FROM {} WHERE {}",
            self.table_with_hint(&info),
            month_predicate(&self.date_field, info.date_kind)
        );
        let (lo, hi) = (bounds.lower.clone(), bounds.upper.clone());
        let count: Option<u64> = self.with_conn("counting the month", move |c| {
            Box::pin(c.exec_first(sql, (lo, hi)))
        })?;
        self.month_stats(bounds, info, count.unwrap_or(0), false)
    }

    /// Counts at most `exact_up_to + 1` rows through the date index; a larger month gets the
    /// optimizer's row estimate for the range (`EXPLAIN`, index dives: what
    /// pt-online-schema-change shows its progress against), at least that bounded count.
    fn range_stats_quick(
        &mut self,
        bounds: &MonthBounds,
        exact_up_to: u64,
    ) -> anyhow::Result<RangeStats> {
        let info = self.info()?;
        let predicate = month_predicate(&self.date_field, info.date_kind);
        let from = self.table_with_hint(&info);
        let bounded_sql = format!(
            "SELECT COUNT(*) FROM (SELECT 1 FROM {from} WHERE {predicate} LIMIT {}) AS month",
            exact_up_to.saturating_add(1)
        );
        let (lo, hi) = (bounds.lower.clone(), bounds.upper.clone());
        let bounded: Option<u64> = self.with_conn("counting the month", move |c| {
            Box::pin(c.exec_first(bounded_sql, (lo, hi)))
        })?;
        let bounded = bounded.unwrap_or(0);
        if bounded <= exact_up_to {
            return self.month_stats(bounds, info, bounded, false);
        }
        let explain = format!("EXPLAIN SELECT * FROM {from} WHERE {predicate}");
        let (lo, hi) = (bounds.lower.clone(), bounds.upper.clone());
        let rows: Vec<Row> = self.with_conn("estimating the month", move |c| {
            Box::pin(c.exec(explain, (lo, hi)))
        })?;
        let estimate = rows
            .first()
            .and_then(|r| r.get_opt::<Option<u64>, _>("rows"))
            .and_then(|v| v.ok())
            .flatten()
            .unwrap_or(0);
        self.month_stats(bounds, info, estimate.max(bounded), true)
    }

    fn anomalies(&mut self) -> anyhow::Result<Anomalies> {
        let info = self.info()?;
        let d = quote_ident(&self.date_field);
        let pk = quote_ident(&info.pk);
        let t = self.table_ref();
        let mut out = Anomalies::default();
        let missing_where = format!("{d} IS NULL");
        let malformed_where = match info.date_kind {
            DateKind::Text => Some(format!(
                "{d} IS NOT NULL AND (CHAR_LENGTH({d}) <> 19 OR {d} NOT REGEXP '{WELL_FORMED_DATE_REGEXP}')"
            )),
            // Zero dates (`0000-00-00`) sort before every month and are never archived.
            DateKind::Typed | DateKind::Timestamp => Some(format!("{d} < '1000-01-01'")),
        };
        let mut kinds = vec![("missing", missing_where)];
        if let Some(m) = malformed_where {
            kinds.push(("malformed", m));
        }
        for (kind, cond) in kinds {
            let count_sql = format!("SELECT COUNT(*) FROM {t} WHERE {cond}");
            let n: Option<u64> = self.with_conn("counting date anomalies", move |c| {
                Box::pin(c.query_first(count_sql))
            })?;
            let n = n.unwrap_or(0);
            if n > 0 {
                let ex_sql = format!(
                    "SELECT CAST({pk} AS CHAR) FROM {t} WHERE {cond} LIMIT {ANOMALY_EXAMPLES}"
                );
                let ids: Vec<String> =
                    self.with_conn("listing date anomalies", move |c| Box::pin(c.query(ex_sql)))?;
                out.examples.extend(
                    ids.into_iter()
                        .map(|id| format!("{kind}: {}={id}", info.pk)),
                );
            }
            match kind {
                "missing" => out.missing = n,
                _ => out.malformed = n,
            }
        }
        Ok(out)
    }

    fn export(&mut self, bounds: &MonthBounds, sink: &mut dyn RecordSink) -> anyhow::Result<()> {
        self.export_limited(bounds, sink, None)
    }

    fn delete_archived(
        &mut self,
        docs: &[ArchivedDoc],
        bounds: &MonthBounds,
    ) -> anyhow::Result<DeleteOutcome> {
        self.delete_unchanged(docs, bounds)
    }

    fn free_sessions(&mut self) -> anyhow::Result<Option<FreeSessions>> {
        let row: Option<(u64, u64)> = self.with_conn("reading max_connections", |c| {
            Box::pin(c.query_first(
                "SELECT @@max_connections, (SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS WHERE VARIABLE_NAME = 'THREADS_CONNECTED')",
            ))
        })?;
        Ok(row.map(|(max, used)| FreeSessions {
            max,
            used,
            free: max.saturating_sub(used),
        }))
    }

    /// The worst lag of the watched replicas; unknown (stopped, not answering) is infinite.
    fn replication_lag(&mut self) -> anyhow::Result<Option<f64>> {
        Ok(self
            .worst_replica_lag()?
            .map(|l| l.seconds.unwrap_or(f64::INFINITY)))
    }

    fn worst_replica(&mut self) -> anyhow::Result<Option<ReplicaLag>> {
        self.worst_replica_lag()
    }

    fn unwatchable_replicas(&mut self) -> anyhow::Result<Vec<ReplicaLag>> {
        self.unwatchable_replica_lags()
    }

    fn set_fingerprints(&mut self, on: bool) {
        self.fingerprints = on;
    }

    fn export_deleting_refused(&mut self, bounds: &MonthBounds) -> anyhow::Result<Option<String>> {
        let n = self.segment_docs;
        self.returning_refused(bounds, n)
    }

    fn export_deleting(
        &mut self,
        bounds: &MonthBounds,
        sink: &mut dyn DeletingSink,
    ) -> anyhow::Result<()> {
        self.export_deleting_segments(bounds, sink)
    }

    fn insert_documents(&mut self, docs: &[&RawDocument]) -> anyhow::Result<u64> {
        MysqlSource::insert_documents(self, docs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_ident("user_logs"), "`user_logs`");
        assert_eq!(quote_ident("a`b"), "`a``b`");
    }

    #[test]
    fn the_uri_is_described_without_a_password() {
        let s = MysqlSource::new(
            "mysql://root@127.0.0.1:3307/",
            Some("secret".into()),
            "test",
            "user_logs",
            "create_on",
            "UTC",
            Duration::from_secs(1),
        )
        .unwrap();
        assert_eq!(s.describe(), "mysql://root@127.0.0.1:3307/test.user_logs");
        assert!(!s.describe().contains("secret"));
    }
}
