//! A test-only pause before a step, so lab tests can inject a fault at a known moment (hold a
//! lock on the new master while the switchover waits for it, break an account after the DNS
//! move).
//!
//! `OPSKIT_TEST_PAUSE_BEFORE=<step id>` makes the run print `OPSKIT_TEST_PAUSED <step id>` to
//! stderr before that step's precondition and wait until the file named by
//! `OPSKIT_TEST_RESUME_FILE` exists (at most two minutes). Unset (always, in production) it
//! costs one cached environment lookup and never changes what the run does.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The step to pause before.
pub const PAUSE_ENV: &str = "OPSKIT_TEST_PAUSE_BEFORE";
/// The file whose existence ends the pause.
pub const RESUME_ENV: &str = "OPSKIT_TEST_RESUME_FILE";

/// Pauses when `step` is the configured one (see the [module docs](self)).
pub fn pause_before(step: &str) {
    static POINT: OnceLock<Option<(String, String)>> = OnceLock::new();
    let Some((at, resume)) = POINT
        .get_or_init(|| {
            Some((
                std::env::var(PAUSE_ENV).ok()?,
                std::env::var(RESUME_ENV).ok()?,
            ))
        })
        .as_ref()
    else {
        return;
    };
    if at != step {
        return;
    }
    eprintln!("OPSKIT_TEST_PAUSED {step}");
    let deadline = Instant::now() + Duration::from_secs(120);
    while !std::path::Path::new(resume).exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!("OPSKIT_TEST_RESUMED {step}");
}
