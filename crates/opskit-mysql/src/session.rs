//! One dedicated connection to one server, with a time limit on the connect and on every
//! statement.
//!
//! Session-scoped work (a `lock_wait_timeout`, a GTID wait) needs one connection held for the
//! whole job, not a pool that resets sessions. `mysql_async` runs on a current-thread tokio
//! runtime owned by the session; everything is sent with the text protocol (`SHOW`, `KILL`,
//! `CHANGE MASTER` cannot be prepared). A statement past its time limit drops the connection
//! (a half-read result leaves it unusable); the next call reconnects.

use std::fmt;
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use mysql_async::prelude::Queryable as _;
use mysql_async::{Conn, OptsBuilder, Value};
use opskit_core::secret::Secret;

/// An account and its password.
#[derive(Clone)]
pub struct Credentials {
    /// The user.
    pub user: String,
    /// The password.
    pub password: Secret,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:***", self.user)
    }
}

/// An error the server returned, with its code (`1290` read-only, `1062` duplicate key, …).
#[derive(Debug, thiserror::Error)]
#[error("ERROR {code}: {message}")]
pub struct ServerError {
    /// The MySQL error code.
    pub code: u16,
    /// The server's message.
    pub message: String,
}

/// The server error code inside an error chain, if the server sent one.
pub fn server_code(e: &anyhow::Error) -> Option<u16> {
    e.chain()
        .find_map(|c| c.downcast_ref::<ServerError>())
        .map(|s| s.code)
}

/// One row of text-protocol results: column names and values (`NULL` is `None`).
#[derive(Debug, Clone, Default)]
pub struct Row {
    columns: Vec<String>,
    values: Vec<Option<String>>,
}

impl Row {
    /// The value of `column` (`None` when NULL or missing).
    pub fn get(&self, column: &str) -> Option<&str> {
        self.columns
            .iter()
            .position(|c| c.eq_ignore_ascii_case(column))
            .and_then(|i| self.values[i].as_deref())
    }

    /// The value at `index`.
    pub fn at(&self, index: usize) -> Option<&str> {
        self.values.get(index).and_then(|v| v.as_deref())
    }

    /// Every `(column, value)` pair.
    pub fn pairs(&self) -> impl Iterator<Item = (&str, Option<&str>)> {
        self.columns
            .iter()
            .map(String::as_str)
            .zip(self.values.iter().map(|v| v.as_deref()))
    }
}

fn text(v: Value) -> Option<String> {
    match v {
        Value::NULL => None,
        Value::Bytes(b) => Some(String::from_utf8_lossy(&b).into_owned()),
        Value::Int(i) => Some(i.to_string()),
        Value::UInt(u) => Some(u.to_string()),
        Value::Float(f) => Some(f.to_string()),
        Value::Double(f) => Some(f.to_string()),
        other => Some(other.as_sql(true).trim_matches('\'').to_string()),
    }
}

/// A connection to one server (see the [module docs](self)).
pub struct Session {
    label: String,
    rt: tokio::runtime::Runtime,
    opts: mysql_async::Opts,
    conn: Option<Conn>,
    timeout: Duration,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Session({})", self.label)
    }
}

impl Session {
    /// A session to `host:port` as `creds`, named `label` in errors (`Slave_01 (10.0.0.12:3306)`).
    /// Connects lazily.
    pub fn new(
        label: impl Into<String>,
        host: &str,
        port: u16,
        creds: &Credentials,
        timeout: Duration,
    ) -> anyhow::Result<Session> {
        let opts: mysql_async::Opts = OptsBuilder::default()
            .ip_or_hostname(host)
            .tcp_port(port)
            .user(Some(creds.user.clone()))
            .pass(Some(creds.password.expose().to_string()))
            .prefer_socket(false)
            .tcp_nodelay(true)
            .stmt_cache_size(0)
            .into();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the MySQL client runtime")?;
        Ok(Session {
            label: label.into(),
            rt,
            opts,
            conn: None,
            timeout,
        })
    }

    /// The session's name in errors.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Connects now if not connected.
    pub fn connect(&mut self) -> anyhow::Result<()> {
        if self.conn.is_some() {
            return Ok(());
        }
        let (opts, timeout) = (self.opts.clone(), self.timeout);
        let conn = self
            .rt
            .block_on(async { tokio::time::timeout(timeout, Conn::new(opts)).await })
            .map_err(|_| {
                anyhow!(
                    "{}: no answer within {} s (connect)",
                    self.label,
                    timeout.as_secs_f64()
                )
            })?
            .map_err(|e| {
                self.wrap(e)
                    .context(format!("connecting to {}", self.label))
            })?;
        self.conn = Some(conn);
        Ok(())
    }

    fn wrap(&self, e: mysql_async::Error) -> anyhow::Error {
        match e {
            mysql_async::Error::Server(s) => anyhow::Error::new(ServerError {
                code: s.code,
                message: s.message,
            }),
            other => anyhow!("{other}"),
        }
    }

    /// Runs `sql` and returns its rows (the session's time limit).
    pub fn query(&mut self, sql: &str) -> anyhow::Result<Vec<Row>> {
        self.query_within(sql, self.timeout)
    }

    /// Runs `sql` with its own time limit (for statements that wait on purpose).
    pub fn query_within(&mut self, sql: &str, limit: Duration) -> anyhow::Result<Vec<Row>> {
        self.connect()?;
        let conn = self.conn.as_mut().expect("connected above");
        let sql_owned = sql.to_string();
        let result = self.rt.block_on(async {
            tokio::time::timeout(limit, async {
                let rows: Vec<mysql_async::Row> = conn.query(sql_owned).await?;
                Ok::<_, mysql_async::Error>(
                    rows.into_iter()
                        .map(|r| {
                            let columns = r
                                .columns_ref()
                                .iter()
                                .map(|c| c.name_str().into_owned())
                                .collect();
                            let values = r.unwrap().into_iter().map(text).collect();
                            Row { columns, values }
                        })
                        .collect::<Vec<_>>(),
                )
            })
            .await
        });
        let shown = first_line(sql);
        match result {
            Ok(Ok(rows)) => Ok(rows),
            Ok(Err(e)) => {
                if !matches!(e, mysql_async::Error::Server(_)) {
                    self.conn = None;
                }
                Err(self.wrap(e).context(format!("`{shown}` on {}", self.label)))
            }
            Err(_) => {
                self.conn = None;
                Err(anyhow!(
                    "`{shown}` on {}: no answer within {} s",
                    self.label,
                    limit.as_secs_f64()
                ))
            }
        }
    }

    /// Runs a statement that returns nothing interesting.
    pub fn exec(&mut self, sql: &str) -> anyhow::Result<()> {
        self.query(sql).map(drop)
    }

    /// Runs a statement that carries `secret` (a password): on error, the secret is blanked
    /// out of whatever the server echoed back (a syntax error quotes the statement).
    pub fn exec_with_secret(&mut self, sql: &str, secret: &str) -> anyhow::Result<()> {
        self.exec(sql).map_err(|e| {
            let code = server_code(&e);
            let text = format!("{e:#}").replace(secret, "***");
            match code {
                Some(code) => anyhow::Error::new(ServerError {
                    code,
                    message: text,
                }),
                None => anyhow!(text),
            }
        })
    }

    /// The first column of the first row (`None` when NULL or no row).
    pub fn value(&mut self, sql: &str) -> anyhow::Result<Option<String>> {
        Ok(self
            .query(sql)?
            .into_iter()
            .next()
            .and_then(|r| r.at(0).map(str::to_string)))
    }

    /// Closes the connection (the next call reconnects).
    pub fn close(&mut self) {
        if let Some(conn) = self.conn.take() {
            let _ = self.rt.block_on(async {
                tokio::time::timeout(Duration::from_secs(2), conn.disconnect()).await
            });
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.close();
    }
}

/// The first line of a statement, cut to 120 characters, for errors (never holds a password:
/// statements with one are shown by the caller from their printable form).
fn first_line(sql: &str) -> String {
    let line = sql.lines().next().unwrap_or("").trim();
    if let Some(i) = line.find("PASSWORD=") {
        return format!("{}PASSWORD=***…", &line[..i]);
    }
    line.chars().take(120).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_never_show_a_password() {
        assert_eq!(
            first_line("CHANGE MASTER TO MASTER_USER='r', MASTER_PASSWORD='s3cret'"),
            "CHANGE MASTER TO MASTER_USER='r', MASTER_PASSWORD=***…"
        );
        assert_eq!(
            first_line("CHANGE REPLICATION SOURCE TO SOURCE_PASSWORD='x'"),
            "CHANGE REPLICATION SOURCE TO SOURCE_PASSWORD=***…"
        );
    }
}
