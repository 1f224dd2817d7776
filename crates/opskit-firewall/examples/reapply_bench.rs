//! Benchmark of `opskit firewall apply` on the lab's Docker host (docs/BENCHMARKS.md, firewall).
//!
//! ```text
//! cargo build --release -p opskit
//! cargo run --release -p opskit-firewall --example reapply_bench -- target/release/opskit [REAPPLIES]
//! ```
//! 1. Apply time: `opskit firewall apply` end to end (process start to exit) 20 times, and the
//!    atomic `iptables-restore --noflush` transaction alone 100 times.
//! 2. No window: one prober thread per row of the reachability matrix connects again and again
//!    from inside its namespace while `opskit firewall apply` re-applies the policy REAPPLIES
//!    times (default 100). A probe whose result differs from what the policy says is a flip
//!    (allowed→denied or denied→allowed). The same prober then watches the spec's plain
//!    `iptables` commands re-run 20 times: they flush and re-add rules one by one, so this
//!    control shows that the prober does see a window when there is one.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use opskit_core::config::Config;
use opskit_core::proc;
use opskit_firewall::matrix::{self, Reach, Row};
use opskit_firewall::netns;
use opskit_lab::{Component, FirewallLab, LabBuilder};

const PROBE_TIMEOUT: Duration = Duration::from_millis(200);

#[derive(Default)]
struct Counts {
    probes: AtomicU64,
    allowed_to_denied: AtomicU64,
    denied_to_allowed: AtomicU64,
}

fn stats(mut v: Vec<f64>) -> String {
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize] * 1000.0;
    format!(
        "n={} min {:.1} ms, median {:.1} ms, p95 {:.1} ms, max {:.1} ms",
        v.len(),
        at(0.0),
        at(0.5),
        at(0.95),
        at(1.0)
    )
}

fn run(cmd: &mut Command) -> f64 {
    let t = Instant::now();
    proc::run(cmd, Duration::from_secs(60))
        .unwrap()
        .checked()
        .unwrap();
    t.elapsed().as_secs_f64()
}

/// Probes `rows` continuously until `stop`; counts probes and flips.
fn probers(
    rows: Vec<Row>,
    stop: Arc<AtomicBool>,
    counts: Arc<Counts>,
) -> Vec<std::thread::JoinHandle<()>> {
    rows.into_iter()
        .map(|row| {
            let stop = stop.clone();
            let counts = counts.clone();
            std::thread::spawn(move || {
                netns::enter(&row.netns).unwrap();
                while !stop.load(Ordering::Relaxed) {
                    let seen = match std::net::TcpStream::connect_timeout(
                        &SocketAddr::V4(row.dst),
                        PROBE_TIMEOUT,
                    ) {
                        Ok(_) => Reach::Allow,
                        Err(_) => Reach::Deny,
                    };
                    counts.probes.fetch_add(1, Ordering::Relaxed);
                    match (row.expect, seen) {
                        (Reach::Allow, Reach::Deny) => {
                            counts.allowed_to_denied.fetch_add(1, Ordering::Relaxed);
                        }
                        (Reach::Deny, Reach::Allow) => {
                            counts.denied_to_allowed.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => {}
                    }
                    // Pace the allowed rows: the listeners fork per connection.
                    std::thread::sleep(Duration::from_millis(25));
                }
            })
        })
        .collect()
}

/// Runs `work` while every row is probed; returns (probes, allowed→denied, denied→allowed).
fn watched(rows: &[Row], work: impl FnOnce()) -> (u64, u64, u64) {
    let stop = Arc::new(AtomicBool::new(false));
    let counts = Arc::new(Counts::default());
    let handles = probers(rows.to_vec(), stop.clone(), counts.clone());
    std::thread::sleep(Duration::from_millis(500));
    work();
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.join().unwrap();
    }
    (
        counts.probes.load(Ordering::Relaxed),
        counts.allowed_to_denied.load(Ordering::Relaxed),
        counts.denied_to_allowed.load(Ordering::Relaxed),
    )
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let opskit = PathBuf::from(
        args.get(1)
            .expect("usage: reapply_bench <opskit binary> [REAPPLIES]"),
    );
    let reapplies: usize = args.get(2).map_or(100, |n| n.parse().unwrap());
    let lab = LabBuilder::temporary("opskit-fw-bench")
        .unwrap()
        .with(Component::Firewall)
        .opskit_exe(std::path::absolute(&opskit).unwrap())
        .up()
        .unwrap();
    let fw: FirewallLab = lab.view().unwrap();
    let config = lab.opskit_toml().to_path_buf();
    let cfg = Config::load_file(&config).unwrap().firewall;
    let apply = || {
        let mut c = Command::new(&opskit);
        c.arg("--config")
            .arg(&config)
            .args(["-q", "firewall", "apply"]);
        c
    };
    println!(
        "# {} on {} cores; {}; bridge-nf-call-iptables={} in the host namespace",
        chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ"),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        String::from_utf8_lossy(&Command::new("iptables").arg("-V").output().unwrap().stdout)
            .trim(),
        netns::read_sysctl(&fw.host_netns(), "net.bridge.bridge-nf-call-iptables").unwrap()
    );

    let cli: Vec<f64> = (0..20).map(|_| run(&mut apply())).collect();
    println!(
        "opskit firewall apply (end to end, 4 steps): {}",
        stats(cli)
    );
    let job = opskit_firewall::apply::Job::new(&cfg);
    let text = job.ruleset.restore_text(true);
    let ipt = fw.iptables();
    let restore: Vec<f64> = (0..100)
        .map(|_| {
            let t = Instant::now();
            ipt.load(&text).unwrap();
            t.elapsed().as_secs_f64()
        })
        .collect();
    println!(
        "the atomic iptables-restore -w 10 --noflush alone: {}",
        stats(restore)
    );

    let rows = matrix::rows(&cfg, &fw.testbed());
    let allowed = rows.iter().filter(|r| r.expect == Reach::Allow).count();
    println!(
        "prober: {} rows ({allowed} allowed, {} denied), {} ms connect limit",
        rows.len(),
        rows.len() - allowed,
        PROBE_TIMEOUT.as_millis()
    );
    let t = Instant::now();
    let (probes, a2d, d2a) = watched(&rows, || std::thread::sleep(Duration::from_secs(15)));
    println!(
        "idle: the prober alone, no change to the rules ({:.1} s): {probes} probes, {} flips \
         ({a2d} allowed→denied, {d2a} denied→allowed)",
        t.elapsed().as_secs_f64(),
        a2d + d2a
    );
    let mut times = Vec::new();
    let t = Instant::now();
    let (probes, a2d, d2a) = watched(&rows, || {
        for _ in 0..reapplies {
            times.push(run(&mut apply()));
        }
    });
    println!(
        "{reapplies} re-applies under the prober ({:.1} s): {probes} probes, {} flips \
         ({a2d} allowed→denied, {d2a} denied→allowed); apply {}",
        t.elapsed().as_secs_f64(),
        a2d + d2a,
        stats(times)
    );

    let script = lab.dir().join("commands.sh");
    let out = proc::run(
        Command::new(&opskit)
            .arg("--config")
            .arg(&config)
            .args(["firewall", "render"]),
        Duration::from_secs(30),
    )
    .unwrap()
    .checked()
    .unwrap();
    // Only the iptables part: persistence is not what is measured here.
    let text = out.stdout_text();
    let iptables_part = text.split("\n# §3.4").next().unwrap();
    std::fs::write(&script, iptables_part).unwrap();
    let t = Instant::now();
    let (probes, a2d, d2a) = watched(&rows, || {
        for _ in 0..20 {
            run(Command::new("sh").arg(&script));
        }
    });
    println!(
        "control: 20 runs of the plain iptables commands under the prober ({:.1} s): {probes} \
         probes, {} flips ({a2d} allowed→denied, {d2a} denied→allowed)",
        t.elapsed().as_secs_f64(),
        a2d + d2a
    );
    lab.down().unwrap();
}
