//! Writes an HAProxy tcplog file of about SIZE bytes for the doctor's benchmark
//! (`docs/BENCHMARKS.md`): syslog-prefixed lines (the form `halog` reads), four servers, the
//! termination codes of spec §5 in fixed shares, `Tt` spread, `cD` clustered at 50 s.
//!
//! `cargo run --release -p opskit-doctor --example gen_tcplog -- OUT SIZE_MB`

use std::io::{BufWriter, Write as _};

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (out, mb) = match args.as_slice() {
        [_, out, mb] => (out.clone(), mb.parse::<u64>().expect("SIZE_MB is a number")),
        _ => {
            eprintln!("usage: gen_tcplog OUT SIZE_MB");
            std::process::exit(2);
        }
    };
    let limit = mb << 20;
    let mut w = BufWriter::with_capacity(1 << 20, std::fs::File::create(&out)?);
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        seed >> 33
    };
    let (mut written, mut lines) = (0u64, 0u64);
    while written < limit {
        let r = next() % 1000;
        let (code, tt) = match r {
            0..900 => ("--", next() % 3000),
            900..940 => ("cD", 50_000 + next() % 5),
            940..960 => ("sD", 50_000 + next() % 20_000),
            960..980 => ("SD", next() % 28_800_000),
            980..985 => ("D-", next() % 600_000),
            985..990 => ("K-", next() % 600_000),
            _ => ("CD", next() % 10_000),
        };
        let s = lines % 60;
        let line = format!(
            "Nov 23 18:{:02}:{s:02} lb1 haproxy[812]: 10.1.{}.{}:{} [23/Nov/2026:18:{:02}:{s:02}.{:03}] fe_mysql_ro be_slaves/Slave_0{} 0/0/{tt} {} {code} 12/12/11/3/0 0/0\n",
            (lines / 60) % 60,
            next() % 256,
            next() % 256,
            1024 + next() % 60000,
            (lines / 60) % 60,
            next() % 1000,
            1 + next() % 4,
            next() % 5000,
        );
        w.write_all(line.as_bytes())?;
        written += line.len() as u64;
        lines += 1;
    }
    w.flush()?;
    eprintln!("{out}: {lines} lines, {written} bytes");
    Ok(())
}
