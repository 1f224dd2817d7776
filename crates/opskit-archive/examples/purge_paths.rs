//! The MySQL purge alone, by path (issue 14; `bench/archive/purge_paths.sh` runs it): exports
//! January 2024 of a table into memory with `MysqlSource::export`, then deletes it in fixed
//! batches through `delete_archived`, either with the export's fingerprints (`fp`) or without
//! them (`locked`: an export that computes none, and documents as the purge reads them back
//! from the archive file), so `export_s` also shows what the fingerprints cost the export.
//!
//! ```text
//! cargo build --release -p opskit-archive --example purge_paths
//! purge_paths <mysql-uri> <database> <table> <fp|locked> [batch=10000] [connections=2]
//! ```
//!
//! Prints one line: `mode=… rows=… export_s=… purge_s=… purge_rows_per_s=… deleted=… changed=… gone=…`,
//! plus the CPU seconds the purge cost this process (`client_cpu_s`) and, when `SERVER_PID`
//! names the mariadbd process, the server (`server_cpu_s`): steadier than wall time on a
//! shared machine.

use std::time::{Duration, Instant};

use bson::RawDocumentBuf;
use opskit_archive::bounds::MonthBounds;
use opskit_archive::source::mysql::MysqlSource;
use opskit_archive::source::{ArchivedDoc, DeleteOutcome, Record, RecordSink, Source};

/// Keeps every exported record as the purge would receive it.
struct Keep {
    docs: Vec<ArchivedDoc>,
    fingerprints: bool,
}

impl RecordSink for Keep {
    fn accept(&mut self, record: Record<'_>) -> anyhow::Result<()> {
        self.docs.push(ArchivedDoc {
            id: record.id.clone(),
            raw: RawDocumentBuf::from_bytes(record.raw.to_vec())?,
            fingerprint: record.fingerprint.filter(|_| self.fingerprints),
        });
        Ok(())
    }
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [uri, database, table, mode, rest @ ..] = args.as_slice() else {
        anyhow::bail!(
            "usage: purge_paths <mysql-uri> <database> <table> <fp|locked> [batch] [connections]"
        );
    };
    let fingerprints = match mode.as_str() {
        "fp" => true,
        "locked" => false,
        other => anyhow::bail!("mode `{other}`: fp or locked"),
    };
    let batch: usize = rest.first().map_or(Ok(10_000), |s| s.parse())?;
    let connections: usize = rest.get(1).map_or(Ok(2), |s| s.parse())?;
    let mut source = MysqlSource::new(
        uri,
        None,
        database,
        table,
        "create_on",
        "UTC",
        Duration::from_secs(600),
    )?;
    source.set_delete_connections(connections);
    source.set_fingerprints(fingerprints);
    let bounds = MonthBounds::new(
        "2024-01".parse().map_err(anyhow::Error::msg)?,
        chrono_tz::UTC,
    )?;
    let mut keep = Keep {
        docs: Vec::new(),
        fingerprints,
    };
    let started = Instant::now();
    source.export(&bounds, &mut keep)?;
    let export_s = started.elapsed().as_secs_f64();
    let server: Option<u32> = std::env::var("SERVER_PID")
        .ok()
        .and_then(|p| p.parse().ok());
    let (server0, client0) = (server.and_then(cpu_of), own_cpu());
    let started = Instant::now();
    let mut total = DeleteOutcome::default();
    for part in keep.docs.chunks(batch) {
        total.add(source.delete_archived(part, &bounds)?);
    }
    let purge_s = started.elapsed().as_secs_f64();
    let client_s = own_cpu() - client0;
    let server_s = match (server0, server.and_then(cpu_of)) {
        (Some(a), Some(b)) => format!(" server_cpu_s={:.2}", b - a),
        _ => String::new(),
    };
    let rows = keep.docs.len();
    println!(
        "mode={mode} rows={rows} batch={batch} connections={connections} export_s={export_s:.2} purge_s={purge_s:.2} \
         purge_rows_per_s={:.0} deleted={} changed={} gone={} client_cpu_s={client_s:.2}{server_s}",
        rows as f64 / purge_s,
        total.deleted,
        total.changed,
        total.gone
    );
    Ok(())
}

/// User + system CPU seconds of process `pid` so far (`/proc/<pid>/stat`).
fn cpu_of(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces): state is field 3, utime 14, stime 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let per_s = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some(ticks / per_s)
}

/// This process's user + system CPU seconds so far.
fn own_cpu() -> f64 {
    // SAFETY: getrusage writes into the zeroed struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(u.ru_utime) + secs(u.ru_stime)
}
