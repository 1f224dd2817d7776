//! The export that deletes as it reads (MariaDB, segmented months): each segment is read by
//! the `DELETE … RETURNING *` that removes it, in a transaction left open until the segment
//! is verified on the backup host ([`crate::source::PendingDelete`]).
//!
//! The rows a `DELETE … RETURNING` sends are exactly the rows it deleted, so the archive and
//! the delete cannot differ, and the server reads each row once (an export followed by a
//! purge reads it twice and compares it). Nothing is deleted for good before the commit: a
//! failure anywhere rolls the open transactions back (their session is closed), and a run
//! killed before a commit leaves its rows in the table (the server rolls back when the session
//! dies); the re-run's purge of the verified segments deletes them then.
//!
//! A segment is a lane's next `n` rows in (date, key) order:
//! `DELETE … WHERE <month> <lane> AND (date, key) > <the lane's previous segment's last row>
//! ORDER BY date, key LIMIT n RETURNING *`. The `LIMIT` stops the scan at the segment's last
//! row, so the lane's next segment's first row is not locked by this one's open transaction
//! (a range with an upper end would lock the row just past it until the commit). With
//! `binlog_format = MIXED` (MariaDB's default) the server logs the statement by rows; with
//! `STATEMENT` a replica replays the same ordered delete. The run uses this only when `EXPLAIN`
//! shows the delete walks the date index in order (no filesort).
//!
//! Two lanes, each on its own thread and sessions, keep the server busy on two cores (one
//! session deletes no faster than the server's single-threaded `DELETE` loop): the first from
//! the month's start to the 16th 00:00, the second after the first row at or after that
//! instant. That row (the split) is deleted last, by a third pass: the first lane's final scan
//! stops on it without waiting for a lock of the second lane, and the split's own `DELETE`
//! waits at most for segments that commit without it. Each lane hands its segments, whole,
//! to the sink in the order they are read (the file interleaves the lanes' segments).
//!
//! Each open transaction has its own session, and each session its own current-thread
//! runtime ([`TxnSession`]), so the session can move to the thread that commits it.

use std::sync::mpsc::{SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use bson::Bson;
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Row, Value};

use super::row::encode_row;
use super::{DateKind, MysqlSource, month_predicate, quote_ident};
use crate::bounds::MonthBounds;
use crate::rawbson::DocumentWriter;
use crate::source::{DeletingSink, PendingDelete, Record};

/// One session with its own runtime: whoever holds it can drive it, on any thread.
pub(super) struct TxnSession {
    rt: tokio::runtime::Runtime,
    conn: Conn,
}

impl TxnSession {
    /// Closes the session (an open transaction is rolled back by the server).
    fn close(self) {
        let TxnSession { rt, conn } = self;
        let _ = rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(5), conn.disconnect()).await
        });
    }
}

/// Sessions whose transaction was committed, for the next segments.
pub(super) type SessionPool = Arc<Mutex<Vec<TxnSession>>>;

/// What opens a session, on any thread.
#[derive(Clone)]
pub(super) struct Connector {
    pub(super) opts: mysql_async::Opts,
    pub(super) server: String,
    pub(super) timeout: Duration,
    /// The session time zone to set first (a `TIMESTAMP` date column).
    pub(super) zone: Option<String>,
    pub(super) pool: SessionPool,
}

impl Connector {
    /// A new session driven by `rt`, within the time limit.
    pub(super) fn connect(&self, rt: &tokio::runtime::Runtime) -> anyhow::Result<Conn> {
        let (timeout, server, opts) = (self.timeout, &self.server, self.opts.clone());
        let zone = self.zone.clone();
        rt.block_on(async {
            tokio::time::timeout(timeout, async move {
                let mut c = Conn::new(opts).await?;
                if let Some(tz) = zone {
                    c.exec_drop("SET time_zone = ?", (tz,)).await?;
                }
                Ok::<Conn, mysql_async::Error>(c)
            })
            .await
        })
        .map_err(|_| anyhow!("connecting to {server}: no answer within {timeout:?}"))?
        .with_context(|| format!("connecting to {server}"))
    }

    /// A session for a segment's transaction: one the pool holds, or a new one.
    fn session(&self) -> anyhow::Result<TxnSession> {
        if let Some(s) = self.pool.lock().ok().and_then(|mut p| p.pop()) {
            return Ok(s);
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting a segment session's runtime")?;
        let mut conn = self.connect(&rt)?;
        let (timeout, server) = (self.timeout, &self.server);
        rt.block_on(async {
            tokio::time::timeout(
                timeout,
                conn.query_drop("SET SESSION net_write_timeout = 600"),
            )
            .await
        })
        .map_err(|_| {
            anyhow!("preparing a segment session on {server}: no answer within {timeout:?}")
        })?
        .with_context(|| format!("preparing a segment session on {server}"))?;
        Ok(TxnSession { rt, conn })
    }
}

/// The oldest MariaDB with `DELETE … RETURNING`.
const MIN_MARIADB: (u32, u32, u32) = (10, 0, 5);

/// `(major, minor, patch)` of a MariaDB `VERSION()` string; `None` for anything else (MySQL).
fn mariadb_version(v: &str) -> Option<(u32, u32, u32)> {
    if !v.contains("MariaDB") {
        return None;
    }
    let v = v.strip_prefix("5.5.5-").unwrap_or(v);
    let mut parts = v
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().ok());
    Some((parts.next()??, parts.next()??, parts.next()??))
}

/// The `DELETE` of one lane: the month, the lane's own condition, then the rows after the
/// previous segment's last, in (date, key) order.
#[derive(Clone)]
struct LaneSql {
    /// `DELETE FROM t WHERE <month> <lane condition>`.
    head: String,
    params: Vec<Value>,
    d: String,
    pk: String,
    date_field: String,
    pk_field: String,
}

impl LaneSql {
    /// The statement deleting (and returning) the next `n` rows after `after`.
    fn sql(&self, after: Option<&(Value, Value)>, n: usize) -> (String, Vec<Value>) {
        let (d, pk) = (&self.d, &self.pk);
        let mut sql = self.head.clone();
        let mut params = self.params.clone();
        if let Some((date, key)) = after {
            sql.push_str(&format!(" AND ({d} > ? OR ({d} = ? AND {pk} > ?))"));
            params.extend([date.clone(), date.clone(), key.clone()]);
        }
        sql.push_str(&format!(" ORDER BY {d}, {pk} LIMIT {n} RETURNING *"));
        (sql, params)
    }
}

/// One segment read by a lane: its documents' bytes and where each ends, with its delete.
struct LaneSegment {
    bytes: Vec<u8>,
    /// Id, date and end offset in `bytes` of each document.
    docs: Vec<(Bson, String, usize)>,
    delete: Box<dyn PendingDelete>,
}

/// Deletes one lane segment by segment (sizes from `n` doubling up to `max`), sending each
/// segment with its open transaction to `tx`; stops when a `DELETE` returns fewer rows than
/// asked, or when nobody receives any more (what was not sent is rolled back).
fn run_lane(
    sql: &LaneSql,
    connector: &Connector,
    mut n: usize,
    max: usize,
    mut after: Option<(Value, Value)>,
    tx: &SyncSender<anyhow::Result<LaneSegment>>,
) -> anyhow::Result<()> {
    let (timeout, server) = (connector.timeout, connector.server.clone());
    let mut doc = DocumentWriter::default();
    loop {
        let (delete, params) = sql.sql(after.as_ref(), n);
        let mut session = connector.session()?;
        let TxnSession { rt, conn } = &mut session;
        let mut seg = (Vec::with_capacity(n * 256), Vec::with_capacity(n));
        let mut last = None;
        let read: anyhow::Result<()> = rt.block_on(async {
            let step = |what: &'static str| {
                let server = server.clone();
                move |_| anyhow!("{what} on {server}: no answer within {timeout:?}")
            };
            tokio::time::timeout(timeout, conn.query_drop("START TRANSACTION"))
                .await
                .map_err(step("starting a segment's transaction"))?
                .with_context(|| format!("starting a segment's transaction on {server}"))?;
            let mut rows = tokio::time::timeout(timeout, conn.exec_iter(delete, params))
                .await
                .map_err(step("deleting a segment"))?
                .with_context(|| format!("deleting a segment on {server}"))?;
            let mut at = None;
            loop {
                let row = tokio::time::timeout(timeout, rows.next())
                    .await
                    .map_err(step("reading a segment's deleted rows"))?
                    .with_context(|| format!("reading a segment's deleted rows from {server}"))?;
                let Some(row) = row else { break };
                let cols = row.columns_ref().len();
                let (id, date) = encode_row(&row, cols, &sql.pk_field, &sql.date_field, &mut doc)?;
                seg.0.extend_from_slice(doc.finish());
                seg.1.push((id, date, seg.0.len()));
                let (d, k) = *at.get_or_insert_with(|| {
                    let names = row.columns_ref();
                    let find = |c: &str| names.iter().position(|x| x.name_str() == c);
                    (find(&sql.date_field), find(&sql.pk_field))
                });
                if let (Some(d), Some(k)) = (d, k) {
                    last = Some((row[d].clone(), row[k].clone()));
                }
            }
            Ok(())
        });
        if let Err(e) = read {
            // Rolls the segment's delete back.
            session.close();
            return Err(e);
        }
        let count = seg.1.len();
        if count == 0 {
            session.close();
            return Ok(());
        }
        let delete = Box::new(MysqlPendingDelete {
            session: Some(session),
            pool: connector.pool.clone(),
            docs: count as u64,
            timeout,
            server: server.clone(),
        });
        let sent = tx.send(Ok(LaneSegment {
            bytes: seg.0,
            docs: seg.1,
            delete,
        }));
        if sent.is_err() || count < n {
            return Ok(());
        }
        // Rows come in (date, key) order: the last one is where the next segment starts.
        after = Some(last.ok_or_else(|| anyhow!("the deleted rows have no key and date columns"))?);
        n = (n * 2).min(max.max(1));
    }
}

impl MysqlSource {
    /// What the lanes open their sessions with.
    pub(super) fn connector(&self) -> Connector {
        Connector {
            opts: self.opts.clone(),
            server: self.described.clone(),
            timeout: self.timeout,
            zone: self
                .info
                .as_ref()
                .is_some_and(|i| i.date_kind == DateKind::Timestamp)
                .then(|| self.time_zone.clone()),
            pool: self.returning_pool.clone(),
        }
    }

    /// A lane over the month with the extra condition `extra` (` AND …`) and its parameters.
    fn lane_sql(
        &mut self,
        bounds: &MonthBounds,
        extra: &str,
        extra_params: Vec<Value>,
    ) -> anyhow::Result<LaneSql> {
        let info = self.info()?;
        let mut params = vec![
            Value::from(bounds.lower.as_str()),
            Value::from(bounds.upper.as_str()),
        ];
        params.extend(extra_params);
        Ok(LaneSql {
            head: format!(
                "DELETE FROM {} WHERE {}{extra}",
                self.table_ref(),
                month_predicate(&self.date_field, info.date_kind)
            ),
            params,
            d: quote_ident(&self.date_field),
            pk: quote_ident(&info.pk),
            date_field: self.date_field.clone(),
            pk_field: info.pk.clone(),
        })
    }

    /// Why the month cannot be read by `DELETE … RETURNING`, or `None` when it can (module
    /// docs): turned on, MariaDB ≥ 10.0.5, a date index, and the server's plan for a
    /// segment's `DELETE` goes through that index (a full scan per segment would be
    /// quadratic).
    pub(super) fn returning_refused(
        &mut self,
        bounds: &MonthBounds,
        segment_docs: usize,
    ) -> anyhow::Result<Option<String>> {
        if !self.delete_returning {
            return Ok(Some("archive.purge.delete_returning is false".into()));
        }
        let info = self.info()?;
        let Some(index) = info.index.clone() else {
            return Ok(Some(format!("no index starts with `{}`", self.date_field)));
        };
        let version: Option<String> = self.with_conn("reading the server version", |c| {
            Box::pin(c.query_first("SELECT VERSION()"))
        })?;
        let version = version.unwrap_or_default();
        match mariadb_version(&version) {
            Some(v) if v >= MIN_MARIADB => {}
            Some(_) => {
                return Ok(Some(format!(
                    "MariaDB {version} has no DELETE … RETURNING (10.0.5 or later)"
                )));
            }
            None => {
                return Ok(Some(format!(
                    "the server ({version}) is not MariaDB: no DELETE … RETURNING"
                )));
            }
        }
        // The plan of a full-size segment's DELETE, as the run would send it.
        let (delete, params) = self
            .lane_sql(bounds, "", Vec::new())?
            .sql(None, segment_docs);
        let explain = format!("EXPLAIN {delete}");
        let rows: Vec<Row> = self.with_conn("explaining a segment's delete", move |c| {
            Box::pin(c.exec(explain, params))
        })?;
        let text = |r: &Row, col: &str| match r.get_opt::<Option<String>, _>(col) {
            Some(Ok(v)) => v.unwrap_or_default(),
            _ => String::new(),
        };
        let plans: Vec<(String, String)> = rows
            .iter()
            .map(|r| (text(r, "key"), text(r, "Extra")))
            .collect();
        if plans.is_empty()
            || plans
                .iter()
                .any(|(key, extra)| *key != index || extra.contains("filesort"))
        {
            return Ok(Some(format!(
                "the server would not delete a segment in the order of the index `{index}` (EXPLAIN: {})",
                plans
                    .iter()
                    .map(|(k, e)| format!("key {k:?}, {e}"))
                    .collect::<Vec<_>>()
                    .join("; ")
            )));
        }
        Ok(None)
    }

    /// See the module docs.
    pub(super) fn export_deleting_segments(
        &mut self,
        bounds: &MonthBounds,
        sink: &mut dyn DeletingSink,
    ) -> anyhow::Result<()> {
        let info = self.info()?;
        let d = quote_ident(&self.date_field);
        let pk = quote_ident(&info.pk);
        // The first row at or after the middle of the month (the 16th, 00:00) splits it.
        let mid = format!(
            "{:04}-{:02}-16 00:00:00",
            bounds.month.year, bounds.month.month
        );
        let split_sql = format!(
            "SELECT {d}, {pk} FROM {} WHERE {} AND {d} >= ? ORDER BY {d}, {pk} LIMIT 1",
            self.table_with_hint(&info),
            month_predicate(&self.date_field, info.date_kind)
        );
        let params = (bounds.lower.clone(), bounds.upper.clone(), mid.clone());
        let split: Option<(Value, Value)> = self.with_conn("splitting the month", move |c| {
            Box::pin(c.exec_first(split_sql, params))
        })?;
        let whole = self.lane_sql(bounds, "", Vec::new())?;
        let Some((x, y)) = split else {
            return run_lanes(&self.connector(), vec![(whole, None)], sink);
        };
        let first_half = self.lane_sql(
            bounds,
            &format!(" AND {d} < ?"),
            vec![Value::from(mid.as_str())],
        )?;
        run_lanes(
            &self.connector(),
            vec![(first_half, None), (whole, Some((x.clone(), y.clone())))],
            sink,
        )?;
        // The row at the split (and any that arrived between the middle and it) last: the
        // first half's final scan stops on it without waiting for the second half.
        let at_split = self.lane_sql(
            bounds,
            &format!(" AND {d} >= ? AND ({d} < ? OR ({d} = ? AND {pk} <= ?))"),
            vec![Value::from(mid.as_str()), x.clone(), x, y],
        )?;
        run_lanes(&self.connector(), vec![(at_split, None)], sink)
    }
}

/// Runs `lanes` (each a statement and where it starts) on their own threads and sessions,
/// handing each segment to `sink` as it arrives. The first error stops every lane; the
/// segments not handed over are rolled back.
fn run_lanes(
    connector: &Connector,
    lanes: Vec<(LaneSql, Option<(Value, Value)>)>,
    sink: &mut dyn DeletingSink,
) -> anyhow::Result<()> {
    let (first, max) = (sink.next_segment_docs().max(1), sink.max_segment_docs());
    let (tx, rx) = sync_channel::<anyhow::Result<LaneSegment>>(lanes.len());
    std::thread::scope(|scope| {
        for (i, (sql, after)) in lanes.into_iter().enumerate() {
            let tx = tx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("archive-lane-{i}"))
                .spawn_scoped(scope, move || {
                    if let Err(e) = run_lane(&sql, connector, first, max, after, &tx) {
                        let _ = tx.send(Err(e));
                    }
                });
            if let Err(e) = spawned {
                return Err(anyhow!("starting a delete lane: {e}"));
            }
        }
        drop(tx);
        let mut result = Ok(());
        for msg in rx.iter() {
            let fed = msg.and_then(|seg| {
                let mut start = 0;
                for (id, date, end) in &seg.docs {
                    sink.accept(Record {
                        id,
                        date,
                        raw: &seg.bytes[start..*end],
                        fingerprint: None,
                    })?;
                    start = *end;
                }
                sink.end_segment(seg.delete)
            });
            if let Err(e) = fed {
                result = Err(e);
                break;
            }
        }
        // The lanes see nobody receives and stop; what they hold is rolled back.
        drop(rx);
        result
    })
}

/// A segment's delete, uncommitted, with its session.
struct MysqlPendingDelete {
    session: Option<TxnSession>,
    pool: SessionPool,
    docs: u64,
    timeout: Duration,
    server: String,
}

impl PendingDelete for MysqlPendingDelete {
    fn docs(&self) -> u64 {
        self.docs
    }

    fn commit(mut self: Box<Self>) -> anyhow::Result<()> {
        let mut s = self
            .session
            .take()
            .expect("a pending delete has its session");
        let timeout = self.timeout;
        match s
            .rt
            .block_on(async { tokio::time::timeout(timeout, s.conn.query_drop("COMMIT")).await })
        {
            Ok(Ok(())) => {
                if let Ok(mut pool) = self.pool.lock() {
                    pool.push(s);
                }
                Ok(())
            }
            Ok(Err(e)) => {
                s.close();
                Err(anyhow!(
                    "committing the delete of a segment ({} documents) on {}: {e}",
                    self.docs,
                    self.server
                ))
            }
            Err(_) => {
                s.close();
                Err(anyhow!(
                    "committing the delete of a segment ({} documents) on {}: no answer within {timeout:?}",
                    self.docs,
                    self.server
                ))
            }
        }
    }
}

impl Drop for MysqlPendingDelete {
    fn drop(&mut self) {
        if let Some(s) = self.session.take() {
            tracing::debug!(
                docs = self.docs,
                "rolling back an uncommitted segment delete"
            );
            s.close();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_mariadb_versions_are_read() {
        assert_eq!(
            mariadb_version("10.11.19-MariaDB-0+deb12u1"),
            Some((10, 11, 19))
        );
        assert_eq!(mariadb_version("5.5.5-10.3.39-MariaDB"), Some((10, 3, 39)));
        assert_eq!(mariadb_version("8.0.36"), None);
        assert!(mariadb_version("10.0.4-MariaDB").unwrap() < MIN_MARIADB);
    }
}
