//! The switchover benchmark of `docs/BENCHMARKS.md`: N switchovers on a fresh lab (five
//! MariaDB, HAProxy, BIND), alternating Master → Slave_01 and back, each under a writer that
//! follows `mysql-master.ipo.com` (one insert every 5 ms, re-resolving on every reconnect)
//! and a reader through HAProxy (one read every 10 ms, a new connection every 5 reads).
//!
//! Per run it prints the write-unavailable window the writer saw (last commit on the old
//! master → first commit on the new one), opskit's own freeze→DNS time (the metric
//! `opskit_mysql_switchover_freeze_seconds`), the run's wall time and the read errors; then the
//! median and max. Every committed row is checked on every server after each run.
//!
//! ```sh
//! cargo build --release -p opskit
//! cargo run --release -p opskit-mysql --example switchover_bench -- target/release/opskit 10
//! ```

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use opskit_core::secret::Secret;
use opskit_lab::{Component, HaproxyLab, LabBuilder, MysqlLab};
use opskit_mysql::session::Credentials;
use opskit_mysql::workload::{Reader, ReaderOptions, Writer, WriterOptions};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let opskit = PathBuf::from(
        args.next()
            .unwrap_or_else(|| "target/release/opskit".into()),
    );
    let runs: usize = args.next().map_or(Ok(10), |a| a.parse())?;
    let opskit = std::path::absolute(&opskit)?;
    let dir = tempfile::Builder::new().prefix("osb").tempdir()?;
    let lab = LabBuilder::new(dir.path().join("lab"))
        .with(Component::Mysql)
        .with(Component::Haproxy)
        .with(Component::Bind)
        .opskit_exe(&opskit)
        .up()?;
    let config = lab.config()?;
    let mysql: MysqlLab = lab.view()?;
    let haproxy: HaproxyLab = lab.view()?;
    let app = Credentials {
        user: opskit_lab::components::mysql::APP_USER.into(),
        password: Secret::new(mysql.app_password()?),
    };
    let id = |n: &str| -> anyhow::Result<u32> {
        Ok(mysql.sql(n, "SELECT @@server_id")?.trim().parse()?)
    };
    let metrics = config.general.metrics_dir.path().join("opskit_mysql.prom");
    println!(
        "| run | switch | window (writer) | freeze→DNS (opskit) | run wall time | writer errors | reads | read errors |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let (mut windows, mut read_errors) = (Vec::new(), 0usize);
    for i in 0..runs {
        let (old, new) = if i % 2 == 0 {
            ("Master", "Slave_01")
        } else {
            ("Slave_01", "Master")
        };
        let writer = format!("bench-{i}");
        let w = Writer::start(WriterOptions {
            dns_server: config.mysql.dns.server.clone(),
            zone: config.mysql.dns.zone.to_string(),
            name: config.mysql.write_dns_name.to_string(),
            port: mysql.port,
            creds: app.clone(),
            writer: writer.clone(),
            table: opskit_mysql::workload::DEFAULT_TABLE.into(),
            interval: Duration::from_millis(5),
            retry: Duration::from_millis(5),
            timeout: Duration::from_secs(2),
        })?;
        let r = Reader::start(ReaderOptions {
            host: haproxy.address.clone(),
            port: haproxy.port,
            creds: app.clone(),
            query: "SELECT @@server_id, COUNT(*) FROM lab.writes".into(),
            interval: Duration::from_millis(10),
            reconnect_every: 5,
            timeout: Duration::from_secs(2),
        })?;
        std::thread::sleep(Duration::from_secs(1));
        let out = Command::new(&opskit)
            .arg("--config")
            .arg(lab.opskit_toml())
            .args([
                "--output",
                "json",
                "mysql",
                "switchover",
                "--new-master",
                new,
            ])
            .env_remove("OPSKIT_CONFIG")
            .output()?;
        std::thread::sleep(Duration::from_secs(1));
        let wr = w.stop();
        let rr = r.stop();
        anyhow::ensure!(
            out.status.success(),
            "run {i} failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let summary: opskit_core::engine::RunSummary = serde_json::from_slice(&out.stdout)?;
        let freeze = std::fs::read_to_string(&metrics)
            .ok()
            .and_then(|t| {
                opskit_core::metrics::sample_value(&t, "opskit_mysql_switchover_freeze_seconds")
            })
            .unwrap_or(f64::NAN);
        // Every committed row on every server.
        let gtid = mysql
            .sql(new, "SELECT @@gtid_binlog_pos")?
            .trim()
            .to_string();
        let committed = wr.committed_seqs();
        for s in &mysql.servers {
            if s.name != new {
                s.server
                    .sql(&format!("SELECT MASTER_GTID_WAIT('{gtid}', 30)"))?;
            }
            let n: usize = s
                .server
                .sql(&format!(
                    "SELECT COUNT(*) FROM lab.writes WHERE writer = '{writer}'"
                ))?
                .trim()
                .parse()?;
            let extra = usize::from(wr.unknown.is_some());
            anyhow::ensure!(
                n == committed.len() || n == committed.len() + extra,
                "run {i}: {} has {n} rows, the writer committed {}",
                s.name,
                committed.len()
            );
        }
        let window = wr
            .window(id(old)?, id(new)?)
            .map(|w| w.secs())
            .unwrap_or(f64::NAN);
        windows.push(window);
        read_errors += rr.errors.len();
        println!(
            "| {} | {old} → {new} | {:.3} s | {:.3} s | {:.2} s | {} | {} | {} |",
            i + 1,
            window,
            freeze,
            summary.duration_secs,
            wr.errors.values().sum::<u64>(),
            rr.reads,
            rr.errors.len()
        );
    }
    windows.sort_by(f64::total_cmp);
    let median = if windows.len() % 2 == 1 {
        windows[windows.len() / 2]
    } else {
        (windows[windows.len() / 2 - 1] + windows[windows.len() / 2]) / 2.0
    };
    println!(
        "\nwindow over {runs} runs: median {median:.3} s, max {:.3} s; read errors through HAProxy: {read_errors}",
        windows.last().copied().unwrap_or(f64::NAN)
    );
    lab.down()?;
    Ok(())
}
