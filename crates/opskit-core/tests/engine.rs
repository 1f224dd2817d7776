//! The engine's promises: undo before the point of no return, resume after it, refuse without
//! changing anything, alert on failure even when the webhook is down, metrics every run.

mod common;

use common::{read_trace, trace_plan, webhook};
use opskit_core::alert::Alerter;
use opskit_core::config::AlertConfig;
use opskit_core::engine::{self, EngineOptions, RunOutcome};
use opskit_core::journal::{Journal, Outcome};
use opskit_core::metrics::{MetricsWriter, sample_value};

fn options<'a>(
    dir: &std::path::Path,
    alerter: Option<&'a Alerter>,
    metrics: Option<&'a MetricsWriter>,
) -> EngineOptions<'a> {
    EngineOptions {
        state_dir: dir.join("state"),
        alerter,
        metrics,
        progress: false,
    }
}

fn alerter(url: &str, retries: u32) -> Alerter {
    let cfg = AlertConfig {
        webhook_url: Some(url.parse().unwrap()),
        timeout_secs: opskit_core::config::value::Positive::new(2),
        retries,
        backoff_ms: opskit_core::config::value::Positive::new(10),
        ca_file: None,
    };
    Alerter::from_config(&cfg).unwrap().unwrap()
}

#[test]
fn failure_before_point_of_no_return_undoes_in_reverse() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let plan = trace_plan(d, &["a", "b", "c"], "c", "", "");
    let report = engine::run(plan, &options(d, None, None)).unwrap();
    assert!(matches!(
        report.outcome,
        RunOutcome::Failed { ref step, rolled_back: true, .. } if step == "c"
    ));
    assert_eq!(
        read_trace(d),
        ["run a", "run b", "run c", "undo b", "undo a"]
    );
    let state = Journal::read_state(&report.journal).unwrap();
    assert_eq!(state.last_outcome, Some(Outcome::RolledBack));
    assert!(state.done.is_empty(), "undone steps are not done");
}

#[test]
fn failure_after_point_of_no_return_keeps_work_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let plan = trace_plan(d, &["a", "b", "c"], "c", "", "b");
    let report = engine::run(plan, &options(d, None, None)).unwrap();
    assert!(matches!(
        report.outcome,
        RunOutcome::Failed {
            rolled_back: false,
            ..
        }
    ));
    assert_eq!(read_trace(d), ["run a", "run b", "run c"]);

    // The cause is fixed; the same run resumes at c.
    let plan = trace_plan(d, &["a", "b", "c"], "", "", "b");
    let report = engine::run(plan, &options(d, None, None)).unwrap();
    assert_eq!(report.outcome, RunOutcome::Succeeded);
    assert_eq!(report.skipped, ["a", "b"]);
    assert_eq!(report.executed, ["c"]);
    assert_eq!(read_trace(d), ["run a", "run b", "run c", "run c"]);

    // And a finished run is not run again.
    let plan = trace_plan(d, &["a", "b", "c"], "", "", "b");
    let report = engine::run(plan, &options(d, None, None)).unwrap();
    assert!(matches!(report.outcome, RunOutcome::AlreadyDone { .. }));
    assert_eq!(read_trace(d).len(), 4);
}

#[test]
fn refusal_changes_nothing_and_alerts() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let hook = webhook(vec![200]);
    let a = alerter(&hook.url, 0);
    let plan = trace_plan(d, &["a", "b"], "", "a", "");
    let report = engine::run(plan, &options(d, Some(&a), None)).unwrap();
    assert!(matches!(report.outcome, RunOutcome::Refused { ref step, .. } if step == "a"));
    assert!(read_trace(d).is_empty(), "nothing ran");
    let bodies = hook.bodies.lock().unwrap();
    assert_eq!(bodies.len(), 1);
    assert!(bodies[0].contains("a says no"), "{}", bodies[0]);
}

#[test]
fn webhook_retries_with_backoff_then_delivers_the_payload() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let hook = webhook(vec![500, 503, 200]);
    let a = alerter(&hook.url, 3);
    let plan = trace_plan(d, &["a", "b"], "b", "", "");
    let report = engine::run(plan, &options(d, Some(&a), None)).unwrap();
    assert!(matches!(report.outcome, RunOutcome::Failed { .. }));
    let bodies = hook.bodies.lock().unwrap();
    assert_eq!(bodies.len(), 3, "two failures then the delivery");
    let v: serde_json::Value = serde_json::from_str(&bodies[2]).unwrap();
    assert_eq!(v["runbook"], "demo");
    assert_eq!(v["run_key"], "demo-run");
    assert_eq!(v["step"], "b");
    assert!(v["error"].as_str().unwrap().contains("b broke"));
    assert!(!v["host"].as_str().unwrap().is_empty());
    assert!(v["started_at"].as_str().unwrap() <= v["failed_at"].as_str().unwrap());
    assert!(v["journal"].as_str().unwrap().ends_with("demo-run.jsonl"));
}

#[test]
fn a_down_webhook_never_hides_the_failure() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // A port nobody listens on: bind, take the address, close.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let a = alerter(&format!("http://{addr}/hook"), 2);
    let metrics = MetricsWriter::new(&d.join("metrics"));
    let plan = trace_plan(d, &["a"], "a", "", "");
    let report = engine::run(plan, &options(d, Some(&a), Some(&metrics))).unwrap();
    assert!(matches!(report.outcome, RunOutcome::Failed { .. }));
    let text = std::fs::read_to_string(metrics.path_for("demo")).unwrap();
    assert_eq!(sample_value(&text, "opskit_last_run_success"), Some(0.0));
}

#[test]
fn success_writes_metrics_with_the_runbook_counters() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let metrics = MetricsWriter::new(&d.join("metrics"));
    let plan = trace_plan(d, &["a", "b"], "", "", "");
    engine::run(plan, &options(d, None, Some(&metrics))).unwrap();
    let text = std::fs::read_to_string(metrics.path_for("demo")).unwrap();
    assert_eq!(sample_value(&text, "opskit_last_run_success"), Some(1.0));
    assert_eq!(sample_value(&text, "opskit_demo_steps"), Some(2.0));
    assert!(sample_value(&text, "opskit_last_success_timestamp_seconds").unwrap() > 1.7e9);
}

#[test]
fn a_second_run_is_refused_while_the_lock_is_held() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let _held = engine::RunLock::acquire(&d.join("state"), "demo")
        .unwrap()
        .unwrap();
    let plan = trace_plan(d, &["a"], "", "", "");
    let report = engine::run(plan, &options(d, None, None)).unwrap();
    assert!(
        matches!(report.outcome, RunOutcome::Refused { ref reason, .. } if reason.contains("runs never overlap"))
    );
    assert!(read_trace(d).is_empty());
}

/// A step that panics (a bug anywhere in a runbook).
struct Panics;

impl opskit_core::plan::StepAction for Panics {
    fn execute(
        &mut self,
        _cx: &mut opskit_core::plan::StepContext,
    ) -> opskit_core::plan::StepResult {
        panic!("index out of bounds in a runbook");
    }
}

#[test]
fn a_panicking_step_is_a_failure_that_undoes_journals_and_alerts() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let hook = webhook(vec![200]);
    let a = alerter(&hook.url, 0);
    let mut plan = trace_plan(d, &["a"], "", "", "");
    plan.step(opskit_core::plan::StepSpec::new("boom", "panics"), Panics);
    let report = engine::run(plan, &options(d, Some(&a), None)).unwrap();
    assert!(
        matches!(
            report.outcome,
            RunOutcome::Failed { ref step, ref error, rolled_back: true } if step == "boom" && error.contains("index out of bounds")
        ),
        "{:?}",
        report.outcome
    );
    assert_eq!(read_trace(d), ["run a", "undo a"]);
    let state = Journal::read_state(&report.journal).unwrap();
    assert_eq!(state.last_outcome, Some(Outcome::RolledBack));
    let bodies = hook.bodies.lock().unwrap();
    assert_eq!(bodies.len(), 1);
    assert!(bodies[0].contains("panic"), "{}", bodies[0]);
}

#[test]
fn an_unusable_state_directory_still_alerts() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let hook = webhook(vec![200]);
    let a = alerter(&hook.url, 0);
    // A regular file where the state directory should be: nothing can be created in it,
    // whoever runs the test (root ignores permission bits, not file types).
    std::fs::write(d.join("state"), b"not a directory").unwrap();
    let plan = trace_plan(d, &["a"], "", "", "");
    let e = engine::run(plan, &options(d, Some(&a), None)).unwrap_err();
    assert!(format!("{e:#}").contains("lock directory"), "{e:#}");
    assert!(read_trace(d).is_empty());
    let bodies = hook.bodies.lock().unwrap();
    assert_eq!(bodies.len(), 1, "the engine's own failure is alerted");
    let v: serde_json::Value = serde_json::from_str(&bodies[0]).unwrap();
    assert_eq!(v["step"], "run");
    assert!(
        v["error"].as_str().unwrap().contains("lock directory"),
        "{v}"
    );
}
