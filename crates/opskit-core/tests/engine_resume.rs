//! A run killed with SIGKILL in the middle of a step resumes from its journal: completed steps
//! are not run again, the interrupted step is re-run, and the run then finishes.
//!
//! Runs without the libtest harness: the same binary is re-executed as the child that gets
//! killed (`OPSKIT_ENGINE_CHILD=<dir>`).

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{read_trace, trace_plan};
use opskit_core::engine::{self, EngineOptions, RunOutcome};
use opskit_core::journal::Journal;

const CHILD_ENV: &str = "OPSKIT_ENGINE_CHILD";

fn run_plan(dir: &Path) -> engine::RunReport {
    let plan = trace_plan(dir, &["one", "two", "three"], "", "", "");
    let opts = EngineOptions {
        state_dir: dir.join("state"),
        alerter: None,
        metrics: None,
        progress: false,
    };
    engine::run(plan, &opts).unwrap()
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn resumes_after_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("block-two"), "").unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .env(CHILD_ENV, d)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("step two to start", || {
        read_trace(d).contains(&"run two".into())
    });
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    let journal = Journal::path_for(&d.join("state"), "demo", "demo-run");
    let state = Journal::read_state(&journal).unwrap();
    assert!(state.interrupted, "the killed run left an open journal");
    assert!(state.done.contains_key("one") && !state.done.contains_key("two"));

    std::fs::remove_file(d.join("block-two")).unwrap();
    let report = run_plan(d);
    assert_eq!(report.outcome, RunOutcome::Succeeded);
    assert_eq!(report.skipped, ["one"]);
    assert_eq!(report.executed, ["two", "three"]);
    assert_eq!(
        read_trace(d),
        ["run one", "run two", "run two", "run three"]
    );
    assert!(!Journal::read_state(&journal).unwrap().interrupted);
}

fn main() {
    if let Some(dir) = std::env::var_os(CHILD_ENV) {
        run_plan(Path::new(&dir));
        return;
    }
    resumes_after_kill_9();
    println!("test resumes_after_kill_9 ... ok");
    println!("\ntest result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out");
}
