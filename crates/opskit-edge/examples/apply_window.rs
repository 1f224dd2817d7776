//! How long `nginx apply` lets a broken config answer (docs/BENCHMARKS.md, "nginx apply: the
//! window of broken answers").
//!
//! Brings up a lab edge, then deploys a config that passes `nginx -t` but breaks `/api/`
//! (php-fpm's socket path is wrong, so every API call is 502) through the same plan and engine
//! `opskit nginx apply --bot-marker 'X-Bot-Upstream: lab'` runs, with every probe group. While
//! it runs, a prober sends `GET /api/landing` every 100 ms, each from the next of 40 loopback
//! source addresses (127.0.0.2–127.0.0.41, so no address comes near the 1.5 r/s limit and every
//! non-2xx answer is the broken config, not a 429). It prints the non-2xx answers and the time
//! from the first one sent to the last one answered.
//!
//! ```sh
//! cargo run --release -p opskit-edge --example apply_window -- [ROUNDS]
//! ```

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opskit_core::config::NginxConfig;
use opskit_core::engine::{self, EngineOptions, RunOutcome};
use opskit_core::proc;
use opskit_edge::apply::{self, Deploy};
use opskit_edge::probe::ProbeOptions;
use opskit_edge::render;
use opskit_lab::{Component, EdgeServer, LabBuilder};

/// One prober request: when it was sent and answered (seconds since the apply started), and
/// the HTTP status (0: no answer).
#[derive(Debug, Clone, Copy)]
struct Answer {
    sent: f64,
    answered: f64,
    status: u16,
}

fn prober(
    edge: &EdgeServer,
    t0: Instant,
    stop: Arc<AtomicBool>,
    answers: Arc<Mutex<Vec<Answer>>>,
) -> std::thread::JoinHandle<()> {
    let s = edge.settings.clone();
    std::thread::spawn(move || {
        let url = format!("{}/api/landing", s.probe_url);
        let mut i = 0u32;
        while !stop.load(Ordering::SeqCst) {
            let due = Instant::now() + Duration::from_millis(100);
            let source = format!("127.0.0.{}", 2 + i % 40);
            i += 1;
            let mut cmd = std::process::Command::new("curl");
            cmd.args([
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--max-time",
                "2",
            ])
            .args(["--interface", &source]);
            for r in &s.probe_resolve {
                cmd.arg("--resolve").arg(r);
            }
            if let Some(ca) = &s.probe_cacert {
                cmd.arg("--cacert").arg(ca.path());
            }
            cmd.arg(&url);
            let sent = t0.elapsed().as_secs_f64();
            let status = proc::run(&mut cmd, Duration::from_secs(5))
                .map(|o| o.stdout_text().trim().parse().unwrap_or(0))
                .unwrap_or(0);
            let answered = t0.elapsed().as_secs_f64();
            answers.lock().unwrap().push(Answer {
                sent,
                answered,
                status,
            });
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
    })
}

fn apply(edge: &EdgeServer, state: &std::path::Path, new: &NginxConfig) -> engine::RunReport {
    let now = chrono::Utc::now();
    let mut probe = ProbeOptions::from_settings(new);
    probe.bot_marker = Some(edge.bot_marker.clone());
    let d = Deploy::new(new, render::render(new), state, probe, now);
    let opts = EngineOptions {
        state_dir: state.to_path_buf(),
        alerter: None,
        metrics: None,
        progress: false,
    };
    engine::run(apply::plan(&d, now), &opts).expect("the engine runs")
}

fn main() -> anyhow::Result<()> {
    let rounds: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(3);
    let lab = LabBuilder::temporary("opskit-apply-window-")?
        .with(Component::Nginx)
        .up()?;
    let edge: EdgeServer = lab.view()?;
    let state = tempfile::tempdir()?;
    let mut broken = edge.settings.clone();
    broken.php_fpm_socket = lab
        .dir()
        .join("nginx/run/nowhere.sock")
        .to_string_lossy()
        .parse()
        .map_err(anyhow::Error::msg)?;
    println!(
        "round  outcome                  apply   non-2xx  of   window (first sent → last answered)"
    );
    for round in 1..=rounds {
        // Let the rate-limit zone and the previous reload's old workers settle.
        std::thread::sleep(Duration::from_secs(3));
        let answers = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let t0 = Instant::now();
        let handle = prober(&edge, t0, Arc::clone(&stop), Arc::clone(&answers));
        let report = apply(&edge, state.path(), &broken);
        let applied = t0.elapsed().as_secs_f64();
        // Keep probing a little after the rollback: late broken answers count too.
        std::thread::sleep(Duration::from_secs(2));
        stop.store(true, Ordering::SeqCst);
        handle.join().expect("the prober thread");
        let answers = answers.lock().unwrap().clone();
        let bad: Vec<&Answer> = answers
            .iter()
            .filter(|a| !(200..300).contains(&a.status))
            .collect();
        let window = match (bad.first(), bad.last()) {
            (Some(first), Some(last)) => format!(
                "{:.2} s ({:.2} → {:.2})",
                last.answered - first.sent,
                first.sent,
                last.answered
            ),
            _ => "none".into(),
        };
        let outcome = match &report.outcome {
            RunOutcome::Failed {
                step, rolled_back, ..
            } => format!(
                "failed at {step}{}",
                if *rolled_back { ", rolled back" } else { "" }
            ),
            RunOutcome::Succeeded => "succeeded (not rolled back!)".into(),
            RunOutcome::AlreadyDone { .. } => "already done".into(),
            RunOutcome::Refused { step, .. } => format!("refused at {step}"),
        };
        let mut statuses: Vec<String> = bad.iter().map(|a| a.status.to_string()).collect();
        statuses.dedup();
        println!(
            "{round:>5}  {outcome:<24} {applied:>5.2}s  {:>7}  {:>3}  {window}  statuses {}",
            bad.len(),
            answers.len(),
            statuses.join(",")
        );
    }
    lab.down()?;
    Ok(())
}
