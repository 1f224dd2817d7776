//! Replica lag of a MySQL source, like pt-archiver's `--check-slave-lag`: the replicas of
//! `archive.purge.replicas`, plus (with `archive.purge.discover_replicas`) those `SHOW SLAVE
//! HOSTS` lists on the source and, recursively, on each replica found. Before each purge batch
//! every one is asked `SHOW SLAVE STATUS`; the worst one decides.
//!
//! A lag that cannot be read counts as too much, so the purge pauses: `Seconds_Behind_Master`
//! NULL (the IO or SQL thread stopped, as `STOP SLAVE SQL_THREAD` does), a server that is no
//! replica at all, or one that does not answer within [`REPLICA_TIMEOUT`]. The purge's wait
//! is bounded by `archive.purge.max_lag_wait_secs`.
//!
//! Replicas are reached with the source's account (the URI may name another user) and
//! password file, never with a password in the URI.

use std::time::Duration;

use anyhow::{Context as _, anyhow};
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts, OptsBuilder, Row};

use super::MysqlSource;
use crate::source::ReplicaLag;

/// How long one replica may take to answer a lag check: the pause loop stays responsive.
pub const REPLICA_TIMEOUT: Duration = Duration::from_secs(10);
/// The most replicas watched, discovered ones included.
const MAX_REPLICAS: usize = 64;

/// A replica the purge watches.
pub(super) struct Replica {
    /// `host:port`.
    name: String,
    opts: Opts,
    conn: Option<Conn>,
}

/// `host:port` of connection options.
fn name_of(opts: &Opts) -> String {
    format!("{}:{}", opts.ip_or_hostname(), opts.tcp_port())
}

impl Replica {
    /// A replica from `archive.purge.replicas`: its host, port and (optional) user; the
    /// password and the rest from the source's options.
    pub(super) fn from_uri(uri: &str, source: &Opts) -> anyhow::Result<Replica> {
        let parsed = Opts::from_url(uri).map_err(|e| {
            anyhow!("archive.purge.replicas: `{uri}` is not a valid mysql:// URI: {e}")
        })?;
        let user = parsed.user().or(source.user()).map(str::to_string);
        Ok(Replica::at(
            source,
            parsed.ip_or_hostname().to_string(),
            parsed.tcp_port(),
            user,
        ))
    }

    /// A replica at `host:port` with the source's account (or `user`).
    fn at(source: &Opts, host: String, port: u16, user: Option<String>) -> Replica {
        let opts: Opts = OptsBuilder::from_opts(source.clone())
            .ip_or_hostname(host)
            .tcp_port(port)
            .user(user)
            .db_name(None::<String>)
            .prefer_socket(false)
            .into();
        Replica {
            name: name_of(&opts),
            opts,
            conn: None,
        }
    }

    /// Runs `SHOW SLAVE STATUS` (connecting first) and reads the lag from it.
    async fn lag(&mut self) -> ReplicaLag {
        let unknown = |name: &str, reason: String| ReplicaLag {
            replica: format!("replica {name}"),
            seconds: None,
            reason,
            unwatchable: true,
        };
        let rows = tokio::time::timeout(REPLICA_TIMEOUT, async {
            if self.conn.is_none() {
                self.conn = Some(Conn::new(self.opts.clone()).await?);
            }
            let c = self.conn.as_mut().expect("connected above");
            c.query::<Row, _>("SHOW SLAVE STATUS").await
        })
        .await;
        match rows {
            Ok(Ok(rows)) => lag_of_status(&self.name, &rows),
            Ok(Err(e)) => {
                self.conn = None;
                unknown(&self.name, format!("does not answer: {e}"))
            }
            Err(_) => {
                self.conn = None;
                unknown(
                    &self.name,
                    format!("does not answer within {REPLICA_TIMEOUT:?}"),
                )
            }
        }
    }

    /// `SHOW SLAVE HOSTS` on this replica: the replicas below it.
    async fn replicas_below(&mut self) -> anyhow::Result<Vec<(String, u16)>> {
        let result = tokio::time::timeout(REPLICA_TIMEOUT, async {
            if self.conn.is_none() {
                self.conn = Some(Conn::new(self.opts.clone()).await?);
            }
            let c = self.conn.as_mut().expect("connected above");
            c.query::<Row, _>("SHOW SLAVE HOSTS").await
        })
        .await;
        match result {
            Ok(Ok(rows)) => Ok(slave_hosts(&rows)),
            Ok(Err(e)) => {
                self.conn = None;
                Err(anyhow!("SHOW SLAVE HOSTS on {}: {e}", self.name))
            }
            Err(_) => {
                self.conn = None;
                Err(anyhow!(
                    "SHOW SLAVE HOSTS on {}: no answer within {REPLICA_TIMEOUT:?}",
                    self.name
                ))
            }
        }
    }
}

/// `(Host, Port)` of each row of `SHOW SLAVE HOSTS` (rows without a reported host skipped).
fn slave_hosts(rows: &[Row]) -> Vec<(String, u16)> {
    let mut out = Vec::new();
    for row in rows {
        let host: Option<String> = row.get::<Option<String>, _>("Host").flatten();
        let port: Option<u16> = row.get::<Option<u16>, _>("Port").flatten();
        match (host, port) {
            (Some(h), Some(p)) if !h.is_empty() && p != 0 => out.push((h, p)),
            _ => tracing::warn!(
                "SHOW SLAVE HOSTS lists a replica without report_host/report_port: it is not watched"
            ),
        }
    }
    out
}

/// The lag `SHOW SLAVE STATUS` shows (the worst channel when there are several).
fn lag_of_status(name: &str, rows: &[Row]) -> ReplicaLag {
    let replica = format!("replica {name}");
    if rows.is_empty() {
        return ReplicaLag {
            replica,
            seconds: None,
            reason: "it is not a replica (SHOW SLAVE STATUS is empty)".into(),
            unwatchable: true,
        };
    }
    let text = |row: &Row, col: &str| row.get::<Option<String>, _>(col).flatten();
    let mut worst: Option<f64> = Some(0.0);
    let mut reason = String::new();
    for row in rows {
        match text(row, "Seconds_Behind_Master").and_then(|s| s.parse::<f64>().ok()) {
            Some(s) => worst = worst.map(|w| w.max(s)),
            None => {
                worst = None;
                let error = text(row, "Last_SQL_Error")
                    .filter(|e| !e.is_empty())
                    .or_else(|| text(row, "Last_IO_Error").filter(|e| !e.is_empty()))
                    .map(|e| format!("; last error: {e}"))
                    .unwrap_or_default();
                reason = format!(
                    "not replicating (Slave_IO_Running={}, Slave_SQL_Running={}, Seconds_Behind_Master NULL){error}",
                    text(row, "Slave_IO_Running").unwrap_or_default(),
                    text(row, "Slave_SQL_Running").unwrap_or_default()
                );
            }
        }
    }
    ReplicaLag {
        replica,
        seconds: worst,
        reason,
        unwatchable: false,
    }
}

/// The worse of two: unknown beats known, then the larger lag.
fn worse(a: ReplicaLag, b: ReplicaLag) -> ReplicaLag {
    match (a.seconds, b.seconds) {
        (None, _) => a,
        (_, None) => b,
        (Some(x), Some(y)) if y > x => b,
        _ => a,
    }
}

impl MysqlSource {
    /// Adds what `SHOW SLAVE HOSTS` lists on the source and on every replica found, once.
    fn discover_replicas(&mut self) -> anyhow::Result<()> {
        let found: Vec<Row> = self
            .with_conn("SHOW SLAVE HOSTS", |c| {
                Box::pin(c.query("SHOW SLAVE HOSTS"))
            })
            .context("discovering the replicas (archive.purge.discover_replicas)")?;
        let mut queue = slave_hosts(&found);
        // Below the replicas listed by name too (a replica of a replica).
        for i in 0..self.replicas.len() {
            queue.extend(self.below(i));
        }
        let user = self.opts.user().map(str::to_string);
        while let Some((host, port)) = queue.pop() {
            let r = Replica::at(&self.opts, host, port, user.clone());
            if self.replicas.iter().any(|o| o.name == r.name) {
                continue;
            }
            if self.replicas.len() >= MAX_REPLICAS {
                tracing::warn!(
                    "more than {MAX_REPLICAS} replicas: {} is not watched",
                    r.name
                );
                continue;
            }
            self.replicas.push(r);
            queue.extend(self.below(self.replicas.len() - 1));
        }
        Ok(())
    }

    /// The replicas below watched replica `i` (none, with a warning, when it does not answer).
    fn below(&mut self, i: usize) -> Vec<(String, u16)> {
        self.rt
            .block_on(self.replicas[i].replicas_below())
            .unwrap_or_else(|e| {
                tracing::warn!("{e:#}: the replicas below it (if any) are not watched");
                Vec::new()
            })
    }

    /// Every watched replica's lag (discovering them first when configured to).
    fn replica_lags(&mut self) -> anyhow::Result<Vec<ReplicaLag>> {
        if self.discover && !self.discovered {
            self.discover_replicas()?;
            self.discovered = true;
            tracing::info!(
                "the purge watches the lag of {} replica(s): {}",
                self.replicas.len(),
                self.replicas
                    .iter()
                    .map(|r| r.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        let (rt, replicas) = (&self.rt, &mut self.replicas);
        Ok(rt.block_on(futures_util::future::join_all(
            replicas.iter_mut().map(|r| r.lag()),
        )))
    }

    /// The replica lagging most, or `None` when no replica is watched.
    pub(super) fn worst_replica_lag(&mut self) -> anyhow::Result<Option<ReplicaLag>> {
        Ok(self.replica_lags()?.into_iter().reduce(worse))
    }

    /// The watched replicas that do not answer or are not replicas.
    pub(super) fn unwatchable_replica_lags(&mut self) -> anyhow::Result<Vec<ReplicaLag>> {
        Ok(self
            .replica_lags()?
            .into_iter()
            .filter(|l| l.unwatchable)
            .collect())
    }
}
