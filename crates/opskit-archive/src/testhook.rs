//! Test-only pause and panic points, so the kill -9, signal and panic tests can act on the
//! real binary at a known place.
//!
//! `OPSKIT_TEST_PAUSE_AT=<stage>:<counter>=<n>` (for example `purge:batch=3`,
//! `export:records=2000`, `upload:bytes=1`) makes the run print
//! `OPSKIT_TEST_PAUSED <stage>:<counter>=<n>` to stderr and sleep for an hour (or
//! `OPSKIT_TEST_PAUSE_SECS`) the first time that counter reaches `n` in that stage. The test
//! waits for the line, then kills the process. `OPSKIT_TEST_PANIC_AT=<stage>:<counter>=<n>`
//! panics there instead (how the "a panic still alerts" tests make a bug happen). Unset
//! (always, in production) each costs one cached environment lookup.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// The environment variable.
pub const PAUSE_ENV: &str = "OPSKIT_TEST_PAUSE_AT";
/// How long the pause lasts, in seconds (default 3600).
pub const PAUSE_SECS_ENV: &str = "OPSKIT_TEST_PAUSE_SECS";
/// The environment variable of the panic point.
pub const PANIC_ENV: &str = "OPSKIT_TEST_PANIC_AT";

struct PausePoint {
    stage: String,
    counter: String,
    at: u64,
}

fn parse(var: &str) -> Option<PausePoint> {
    let v = std::env::var(var).ok()?;
    let (stage, rest) = v.split_once(':')?;
    let (counter, at) = rest.split_once('=')?;
    Some(PausePoint {
        stage: stage.to_string(),
        counter: counter.to_string(),
        at: at.parse().ok()?,
    })
}

fn point() -> Option<&'static PausePoint> {
    static POINT: OnceLock<Option<PausePoint>> = OnceLock::new();
    POINT.get_or_init(|| parse(PAUSE_ENV)).as_ref()
}

/// Panics the first time `counter` of `stage` reaches the value of [`PANIC_ENV`].
pub fn panic_point(stage: &str, counter: &str, value: u64) {
    static POINT: OnceLock<Option<PausePoint>> = OnceLock::new();
    static FIRED: AtomicBool = AtomicBool::new(false);
    let Some(p) = POINT.get_or_init(|| parse(PANIC_ENV)).as_ref() else {
        return;
    };
    if p.stage == stage
        && p.counter == counter
        && value >= p.at
        && !FIRED.swap(true, Ordering::SeqCst)
    {
        panic!("test panic point {stage}:{counter}={}", p.at);
    }
}

/// Pauses (for an hour) the first time `counter` of `stage` reaches the configured value.
pub fn pause_point(stage: &str, counter: &str, value: u64) {
    static FIRED: AtomicBool = AtomicBool::new(false);
    let Some(p) = point() else { return };
    if p.stage == stage
        && p.counter == counter
        && value >= p.at
        && !FIRED.swap(true, Ordering::SeqCst)
    {
        eprintln!("OPSKIT_TEST_PAUSED {stage}:{counter}={}", p.at);
        let secs = std::env::var(PAUSE_SECS_ENV)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(3600);
        std::thread::sleep(Duration::from_secs(secs));
        eprintln!("OPSKIT_TEST_RESUMED {stage}:{counter}={}", p.at);
    }
}
