//! The "run in progress" metrics the stuck-run alert reads (`deploy/prometheus/opskit.rules.yml`):
//! the engine marks a run as started before its first step and as ended when it finishes, and
//! a second invocation refused by the lock never hides the run that holds it.

mod common;

use std::time::{Duration, Instant};

use common::{read_trace, trace_plan};
use opskit_core::engine::{self, EngineOptions, RunOutcome};
use opskit_core::metrics::{MetricsWriter, RUN_IN_PROGRESS, RUN_STARTED, sample_value};

fn options<'a>(dir: &std::path::Path, metrics: &'a MetricsWriter) -> EngineOptions<'a> {
    EngineOptions {
        state_dir: dir.join("state"),
        alerter: None,
        metrics: Some(metrics),
        progress: false,
    }
}

fn wait_for_trace(dir: &std::path::Path, line: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !read_trace(dir).iter().any(|l| l == line) {
        assert!(Instant::now() < deadline, "the step never started");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_running_plan_is_in_progress_until_it_ends() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    let prom = d.join("metrics").join("opskit_demo.prom");
    // Step b blocks while this file exists.
    std::fs::write(d.join("block-b"), "").unwrap();
    let before = chrono::Utc::now().timestamp() as f64;
    let runner = {
        let d = d.clone();
        std::thread::spawn(move || {
            let metrics = MetricsWriter::new(&d.join("metrics"));
            engine::run(
                trace_plan(&d, &["a", "b"], "", "", ""),
                &options(&d, &metrics),
            )
            .unwrap()
            .outcome
        })
    };
    wait_for_trace(&d, "run b");
    let during = std::fs::read_to_string(&prom).unwrap();
    assert_eq!(
        sample_value(&during, RUN_IN_PROGRESS),
        Some(1.0),
        "{during}"
    );
    let started = sample_value(&during, RUN_STARTED).unwrap();
    assert!(started >= before.floor(), "{during}");
    // Nothing of a finished run is claimed while the first run is still going.
    assert_eq!(sample_value(&during, "opskit_last_run_success"), None);

    // A second invocation meanwhile is refused by the lock; the run it did not start stays
    // in progress in the file it rewrites.
    let metrics = MetricsWriter::new(&d.join("metrics"));
    let refused = engine::run(
        trace_plan(&d, &["a", "b"], "", "", ""),
        &options(&d, &metrics),
    )
    .unwrap();
    assert!(matches!(refused.outcome, RunOutcome::Refused { .. }));
    let after_refusal = std::fs::read_to_string(&prom).unwrap();
    assert_eq!(
        sample_value(&after_refusal, RUN_IN_PROGRESS),
        Some(1.0),
        "{after_refusal}"
    );
    assert_eq!(sample_value(&after_refusal, RUN_STARTED), Some(started));

    std::fs::remove_file(d.join("block-b")).unwrap();
    assert_eq!(runner.join().unwrap(), RunOutcome::Succeeded);
    let after = std::fs::read_to_string(&prom).unwrap();
    assert_eq!(sample_value(&after, RUN_IN_PROGRESS), Some(0.0), "{after}");
    assert_eq!(sample_value(&after, RUN_STARTED), Some(started));
    assert_eq!(sample_value(&after, "opskit_last_run_success"), Some(1.0));
}

#[test]
fn a_failed_run_is_no_longer_in_progress() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let metrics = MetricsWriter::new(&d.join("metrics"));
    let report = engine::run(
        trace_plan(d, &["a", "b"], "b", "", ""),
        &options(d, &metrics),
    )
    .unwrap();
    assert!(matches!(report.outcome, RunOutcome::Failed { .. }));
    let text = std::fs::read_to_string(metrics.path_for("demo")).unwrap();
    assert_eq!(sample_value(&text, RUN_IN_PROGRESS), Some(0.0), "{text}");
    assert!(sample_value(&text, RUN_STARTED).is_some(), "{text}");
    assert_eq!(sample_value(&text, "opskit_last_run_success"), Some(0.0));
}
