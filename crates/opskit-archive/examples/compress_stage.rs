//! Benchmark helper: pushes a raw BSON stream (concatenated documents, e.g. `pigz -dc` of an
//! archive) through the archive's own writer (1 MiB chunks → compressor thread → gzip level
//! N + sha256 → file) and prints the input rate. Used by `bench/archive/run.sh` to compare
//! the compression stage with `pigz -p 2 -6` on the same bytes.
//!
//! `cargo run --release -p opskit-archive --example compress_stage -- RAW.bson OUT.bson.gz [LEVEL]`

use std::time::Instant;

use bson::Bson;
use opskit_archive::bounds::MonthBounds;
use opskit_archive::rawbson::DocumentReader;
use opskit_archive::source::{Record, RecordSink};
use opskit_archive::staged::{ArchiveIdentity, ArchiveWriter};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (raw, out) = (&args[1], &args[2]);
    let level: u32 = args.get(3).map(|l| l.parse()).transpose()?.unwrap_or(6);
    let identity = ArchiveIdentity {
        source: "bench".into(),
        database: "test".into(),
        collection: "user_logs".into(),
        date_field: "create_on".into(),
        id_field: "id".into(),
        pass: 0,
        bounds: MonthBounds::new(
            "2024-01".parse().map_err(anyhow::Error::msg)?,
            chrono_tz::UTC,
        )?,
    };
    let mut reader = DocumentReader::new(std::io::BufReader::with_capacity(
        1 << 20,
        std::fs::File::open(raw)?,
    ));
    let started = Instant::now();
    let threads: usize = std::env::var("THREADS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(0);
    let mut writer = ArchiveWriter::create(std::path::Path::new(out), level, threads, identity)?;
    let id = Bson::Null;
    while let Some(doc) = reader.next_document()? {
        writer.accept(Record {
            id: &id,
            date: "2024-01-01 00:00:00",
            raw: doc.as_bytes(),
            fingerprint: None,
        })?;
    }
    let m = writer.finish()?;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "compress_stage level {level}: {} bytes in {secs:.2}s = {:.1} MB/s, {} bytes out (ratio {:.2})",
        m.raw_bytes,
        m.raw_bytes as f64 / secs / 1e6,
        m.compressed_bytes,
        m.raw_bytes as f64 / m.compressed_bytes as f64
    );
    Ok(())
}
