//! What `opskit status` and `opskit history` read: runs summed up from real engine journals
//! (result, failed step, invocations, figures) and locks held right now, seen without taking
//! them.

mod common;

use opskit_core::engine::{self, EngineOptions, RunLock};
use opskit_core::journal::{self, RunResult};

fn run(state: &std::path::Path, plan: opskit_core::plan::Plan) {
    let opts = EngineOptions {
        state_dir: state.to_path_buf(),
        alerter: None,
        metrics: None,
        progress: false,
    };
    engine::run(plan, &opts).unwrap();
}

#[test]
fn runs_read_back_from_their_journals() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    // A run that fails at b and is undone, then the same run again after the fix.
    run(
        &state,
        common::trace_plan(dir.path(), &["a", "b"], "b", "", ""),
    );
    let r = journal::list_runs(&state, None).unwrap();
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].result, RunResult::RolledBack);
    assert_eq!(r[0].failed_step.as_deref(), Some("b"));
    assert!(r[0].error.as_deref().unwrap().contains("b broke"));
    run(
        &state,
        common::trace_plan(dir.path(), &["a", "b"], "", "", ""),
    );
    let r = journal::list_runs(&state, Some("demo")).unwrap();
    assert_eq!(r.len(), 1, "one run key, one record");
    let r = &r[0];
    assert_eq!(
        (r.runbook.as_str(), r.run_key.as_str()),
        ("demo", "demo-run")
    );
    assert_eq!(r.result, RunResult::Succeeded);
    assert_eq!(r.attempts, 2);
    assert_eq!(r.failed_step, None, "the last invocation did not fail");
    assert!(r.duration_secs.unwrap() >= 0.0);
    assert!(r.finished_at >= r.started_at);
    assert!(
        journal::list_runs(&state, Some("nginx"))
            .unwrap()
            .is_empty()
    );
    assert!(
        journal::list_runs(&dir.path().join("none"), None)
            .unwrap()
            .is_empty()
    );
}

#[test]
fn a_held_lock_shows_as_held_without_being_taken() {
    let dir = tempfile::tempdir().unwrap();
    let lock = RunLock::acquire(dir.path(), "nginx").unwrap().unwrap();
    let states = journal::lock_states(dir.path()).unwrap();
    assert_eq!(states.len(), 1);
    assert!(states[0].held, "{states:?}");
    assert_eq!(states[0].pid, Some(std::process::id()));
    // Looking did not take it: it is still ours, and another taker is still refused.
    assert!(RunLock::acquire(dir.path(), "nginx").unwrap().is_err());
    drop(lock);
    assert!(!journal::lock_states(dir.path()).unwrap()[0].held);
}
