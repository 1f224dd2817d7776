//! The purge of a MySQL table: each batch is split over `archive.purge.connections`
//! sessions. A row changed since the export stays for the next late pass; a row already gone
//! is counted, not an error. Each part of a batch takes one of two paths:
//!
//! - **Fingerprinted** (every document of the part carries the fingerprint the server computed
//!   at export time, [`super::fingerprint`]): one autocommit statement,
//!   `DELETE FROM t WHERE pk IN (…) AND <month> AND <fingerprint expression> IN (…)`; if it
//!   deleted fewer rows than the part holds, `SELECT COUNT(*) … WHERE pk IN (…)` tells the
//!   changed rows (still there) from the gone ones. This is safe because the fingerprint
//!   covers every column, the key included: a row is deleted only if its current content, at
//!   the moment the `DELETE` reads it under its own row lock, hashes to the value the server
//!   computed for the very row version that was written into the archive. A server upgrade
//!   that changes how values are formatted can only make rows look changed: they are kept
//!   and a late pass archives them again, nothing is lost. The column list (names and types)
//!   is checked against the table before each batch; if a column was added, removed or
//!   retyped since the export, the batch takes the locked path instead. The `DELETE` checks it
//!   again itself, under its own metadata lock, so an `ALTER TABLE` between that check and the
//!   statement makes it delete nothing (the rows stay, counted changed).
//! - **Locked compare** (any document without a fingerprint, e.g. read back from an archive
//!   file): in one transaction the session locks its rows (`SELECT * … FOR UPDATE`), encodes
//!   them exactly as the export did, deletes only the rows byte-identical to the archived
//!   documents (still inside the month), then commits.
//!
//! Two sessions deleting neighbouring parts of a batch can deadlock on the date index's gap
//! locks; InnoDB then rolls one transaction back (error 1213). That part, and a part whose
//! lock wait timed out (1205), is rolled back and sent again (up to [`MAX_RETRIES`] times), as
//! pt-archiver's `--retries` does: nothing of it was deleted, so nothing is counted twice.

use std::collections::HashMap;

use anyhow::{anyhow, bail};
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Row, Value};

use super::fingerprint::{columns_guard, columns_guard_params};
use super::row::{IdKey, encode_row};
use super::{MAX_IDS_PER_STATEMENT, MysqlSource, fingerprint_expr, month_predicate, quote_ident};
use crate::bounds::MonthBounds;
use crate::rawbson::DocumentWriter;
use crate::source::{ArchivedDoc, DeleteOutcome, DeleteTimedOut};

impl MysqlSource {
    /// `SELECT * FROM t WHERE pk IN (?,…) FOR UPDATE`: the current rows, locked.
    pub fn lock_sql(&mut self, n: usize) -> anyhow::Result<String> {
        let info = self.info()?;
        Ok(format!(
            "SELECT * FROM {} WHERE {} IN ({}) FOR UPDATE",
            self.table_ref(),
            quote_ident(&info.pk),
            vec!["?"; n].join(",")
        ))
    }

    /// See the module docs.
    pub(super) fn delete_unchanged(
        &mut self,
        docs: &[ArchivedDoc],
        bounds: &MonthBounds,
    ) -> anyhow::Result<DeleteOutcome> {
        if docs.is_empty() {
            return Ok(DeleteOutcome::default());
        }
        let info = self.info()?;
        // The fast path only while the table still has exactly the columns (names and types)
        // the export's fingerprints cover.
        let fingerprint = if docs.iter().any(|d| d.fingerprint.is_some()) {
            let now = self.read_columns()?;
            if now == info.columns {
                Some(Fingerprint {
                    expr: fingerprint_expr(&info.columns),
                    guard: columns_guard(info.columns.len()),
                    guard_params: columns_guard_params(&self.database, &self.table, &info.columns),
                })
            } else {
                tracing::warn!(
                    "the columns of {} changed since the export: the purge compares each row \
                     under a lock instead of by fingerprint",
                    self.table_ref()
                );
                None
            }
        } else {
            None
        };
        // Concurrent sessions: a single session leaves the server's other cores idle.
        let parts = self.delete_connections.max(1).min(docs.len());
        let per_part = docs.len().div_ceil(parts).min(MAX_IDS_PER_STATEMENT);
        let chunks: Vec<&[ArchivedDoc]> = docs.chunks(per_part).collect();
        let mut sqls = Vec::with_capacity(chunks.len());
        for chunk in &chunks {
            sqls.push(self.lock_sql(chunk.len())?);
        }
        let wanted = chunks.len().min(parts);
        while self.delete_pool.len() < wanted {
            let conn = self.connect()?;
            self.delete_pool.push(conn);
        }
        let (timeout, server) = (self.timeout, self.described.clone());
        let (lo, hi) = (bounds.lower.clone(), bounds.upper.clone());
        let mut total = DeleteOutcome::default();
        let table = self.table_ref();
        let date_field = self.date_field.clone();
        let predicate = month_predicate(&date_field, info.date_kind);
        let pk = info.pk.as_str();
        for (wave, wave_sql) in chunks.chunks(wanted).zip(sqls.chunks(wanted)) {
            // Indices (into `wave`) of the parts still to do: a part whose session InnoDB chose
            // as a deadlock victim (or whose lock wait timed out) is rolled back and sent again.
            let mut pending: Vec<usize> = (0..wave.len()).collect();
            let mut attempt = 0;
            while !pending.is_empty() {
                let pool = &mut self.delete_pool;
                let date_field = date_field.as_str();
                let fingerprint = fingerprint.as_ref();
                let result = self.rt.block_on(async {
                    let futures = pending.iter().zip(pool.iter_mut()).map(|(&i, c)| {
                        let part = Part {
                            pk,
                            date_field,
                            table: &table,
                            predicate: &predicate,
                            lo: &lo,
                            hi: &hi,
                            fingerprint,
                        };
                        let (chunk, sql) = (wave[i], &wave_sql[i]);
                        async move { part.run(c, sql, chunk).await }
                    });
                    tokio::time::timeout(timeout, futures_util::future::join_all(futures)).await
                });
                let Ok(outcomes) = result else {
                    self.delete_pool.clear();
                    return Err(anyhow::Error::new(DeleteTimedOut {
                        server,
                        documents: docs.len(),
                        limit: timeout,
                    }));
                };
                let mut again = Vec::new();
                let mut retry_conns = Vec::new();
                for ((&i, outcome), slot) in pending.iter().zip(outcomes).zip(0..) {
                    match outcome {
                        Ok(o) => total.add(o),
                        Err(e) if attempt < MAX_RETRIES && retryable(&e) => {
                            tracing::warn!(
                                "a delete session of the batch was rolled back by the server ({e:#}); \
                                 nothing of its part was deleted: retrying it ({}/{MAX_RETRIES})",
                                attempt + 1
                            );
                            again.push(i);
                            retry_conns.push(slot);
                        }
                        Err(e) => {
                            // An open transaction is rolled back when its session goes away.
                            self.delete_pool.clear();
                            return Err(e.context(format!("deleting a batch on {server}")));
                        }
                    }
                }
                if !again.is_empty() {
                    // A deadlock rolled the whole transaction back; a lock wait timeout only
                    // the statement: end the transaction either way before the part runs again.
                    for slot in retry_conns {
                        let c = &mut self.delete_pool[slot];
                        let rolled_back = self.rt.block_on(async {
                            tokio::time::timeout(timeout, c.query_drop("ROLLBACK")).await
                        });
                        if !matches!(rolled_back, Ok(Ok(()))) {
                            self.delete_pool.clear();
                            bail!(
                                "deleting a batch on {server}: a retried session could not roll back"
                            );
                        }
                    }
                    // Every session is now outside a transaction (the others committed), so
                    // the parts to redo may run on any of them.
                    attempt += 1;
                    std::thread::sleep(std::time::Duration::from_millis(100 * attempt as u64));
                }
                pending = again;
            }
        }
        Ok(total)
    }
}

/// How often one part of a batch is sent again after a deadlock or a lock wait timeout.
const MAX_RETRIES: u32 = 5;

/// True for the errors after which the server rolled the part back and it can simply run
/// again: 1213 (deadlock, this session chosen as the victim) and 1205 (lock wait timeout).
fn retryable(e: &anyhow::Error) -> bool {
    matches!(
        e.downcast_ref::<mysql_async::Error>(),
        Some(mysql_async::Error::Server(se)) if se.code == 1213 || se.code == 1205
    )
}

/// What one session needs to purge its part of a batch.
struct Part<'a> {
    pk: &'a str,
    date_field: &'a str,
    table: &'a str,
    predicate: &'a str,
    lo: &'a str,
    hi: &'a str,
    /// The fingerprint expression, when the table still has the columns it covers.
    fingerprint: Option<&'a Fingerprint>,
}

/// What a fingerprinted delete adds to its statement.
struct Fingerprint {
    /// The fingerprint of a row ([`fingerprint_expr`]).
    expr: String,
    /// The check that the table still has the columns `expr` covers, and its parameters.
    guard: String,
    guard_params: Vec<Value>,
}

impl Part<'_> {
    /// Purges `chunk`: by fingerprint when every document has one, else under a lock.
    async fn run(
        &self,
        c: &mut Conn,
        select: &str,
        chunk: &[ArchivedDoc],
    ) -> anyhow::Result<DeleteOutcome> {
        let hashes: Option<Vec<[u8; 16]>> = chunk.iter().map(|d| d.fingerprint).collect();
        match (self.fingerprint, hashes) {
            (Some(fp), Some(hashes)) => self.run_fingerprinted(c, fp, chunk, hashes).await,
            _ => self.run_locked(c, select, chunk).await,
        }
    }

    /// One autocommit `DELETE … AND <fingerprint> IN (…)`, then a count if some rows stayed.
    async fn run_fingerprinted(
        &self,
        c: &mut Conn,
        fp: &Fingerprint,
        chunk: &[ArchivedDoc],
        hashes: Vec<[u8; 16]>,
    ) -> anyhow::Result<DeleteOutcome> {
        let n = chunk.len();
        let mut keys = Vec::with_capacity(n);
        for d in chunk {
            keys.push(IdKey::of(&d.id)?.value());
        }
        let marks = vec!["?"; n].join(",");
        let sql = format!(
            "DELETE FROM {t} WHERE {pk} IN ({marks}) AND {} AND {} IN ({marks}) AND {}",
            self.predicate,
            fp.expr,
            fp.guard,
            t = self.table,
            pk = quote_ident(self.pk),
        );
        let mut params = Vec::with_capacity(2 * n + 2);
        params.extend(keys.iter().cloned());
        params.push(Value::Bytes(self.lo.as_bytes().to_vec()));
        params.push(Value::Bytes(self.hi.as_bytes().to_vec()));
        params.extend(hashes.iter().map(|h| Value::Bytes(h.to_vec())));
        params.extend(fp.guard_params.iter().cloned());
        c.exec_drop(sql, params).await?;
        let deleted = c.affected_rows();
        let n = n as u64;
        if deleted > n {
            return Err(anyhow!(
                "deleted {deleted} rows for {n} keys: stopping (is the key unique?)"
            ));
        }
        let present = if deleted < n {
            let count = format!(
                "SELECT COUNT(*) FROM {} WHERE {} IN ({marks})",
                self.table,
                quote_ident(self.pk)
            );
            let present: Option<u64> = c.exec_first(count, keys).await?;
            present.unwrap_or(0)
        } else {
            0
        };
        Ok(DeleteOutcome {
            deleted,
            changed: present.min(n - deleted),
            gone: (n - deleted).saturating_sub(present),
        })
    }

    /// In one transaction: lock the rows, delete those byte-identical to the archive.
    async fn run_locked(
        &self,
        c: &mut Conn,
        select: &str,
        chunk: &[ArchivedDoc],
    ) -> anyhow::Result<DeleteOutcome> {
        let mut archived: HashMap<IdKey, &[u8]> = HashMap::with_capacity(chunk.len());
        let mut keys = Vec::with_capacity(chunk.len());
        for d in chunk {
            let key = IdKey::of(&d.id)?;
            keys.push(key.value());
            archived.insert(key, d.raw.as_bytes());
        }
        c.query_drop("START TRANSACTION").await?;
        let rows: Vec<Row> = c.exec(select, keys).await?;
        let mut doc = DocumentWriter::default();
        let mut unchanged: Vec<Value> = Vec::new();
        for row in &rows {
            let (id, _) = encode_row(row, usize::MAX, self.pk, self.date_field, &mut doc)?;
            let key = IdKey::of(&id)?;
            if archived.get(&key).is_some_and(|a| *a == doc.finish()) {
                unchanged.push(key.value());
            }
        }
        let deleted = if unchanged.is_empty() {
            0
        } else {
            let sql = format!(
                "DELETE FROM {} WHERE {} IN ({}) AND {}",
                self.table,
                quote_ident(self.pk),
                vec!["?"; unchanged.len()].join(","),
                self.predicate
            );
            let n = unchanged.len() as u64;
            let mut params = unchanged;
            params.push(Value::Bytes(self.lo.as_bytes().to_vec()));
            params.push(Value::Bytes(self.hi.as_bytes().to_vec()));
            c.exec_drop(sql, params).await?;
            let deleted = c.affected_rows();
            if deleted > n {
                return Err(anyhow!(
                    "deleted {deleted} rows for {n} keys: stopping (is the key unique?)"
                ));
            }
            deleted
        };
        c.query_drop("COMMIT").await?;
        let present = rows.len() as u64;
        Ok(DeleteOutcome {
            deleted,
            changed: present.saturating_sub(deleted),
            gone: (chunk.len() as u64).saturating_sub(present),
        })
    }
}
