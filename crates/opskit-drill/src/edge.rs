//! The nginx drill (spec §2): probe the lab's nginx (rendered from the same settings as
//! production, paths rebased into the lab) for every behaviour of the spec.

use std::time::Instant;

use opskit_lab::LabState;

use crate::report::{Check, DrillReport};
use crate::run::Opskit;

const RUNBOOK: &str = "nginx";

/// Runs the nginx drill and adds its checks to `report`.
pub fn drill(opskit: &Opskit, state: &LabState, report: &mut DrillReport) {
    if state.server("nginx").is_none() {
        report.push(Check::new(
            RUNBOOK,
            "the lab runs nginx",
            false,
            format!("no nginx in {}/lab.json", state.dir.display()),
            0.0,
        ));
        return;
    }
    report.push(opskit.check(
        RUNBOOK,
        "the rendered config passes nginx -t without warnings",
        &["nginx", "check"],
        0,
    ));
    let clock = Instant::now();
    let (passed, detail) = match opskit.run(&["--output", "json", "nginx", "probe"]) {
        Ok(inv) => match inv.json() {
            Ok(v) => summarize_probe(&v, inv.code),
            Err(e) => (
                false,
                format!("exit {}: {e:#}; {}", inv.code, inv.last_error()),
            ),
        },
        Err(e) => (false, format!("{e:#}")),
    };
    report.push(Check::new(
        RUNBOOK,
        "the live server passes every probe check of spec §2",
        passed,
        detail,
        clock.elapsed().as_secs_f64(),
    ));
}

/// Reads the probe's JSON: an object with a `checks` array of `{name, passed, detail}`, or
/// the array itself.
fn summarize_probe(v: &serde_json::Value, code: i32) -> (bool, String) {
    let checks = v
        .get("checks")
        .and_then(|c| c.as_array())
        .or_else(|| v.as_array())
        .cloned()
        .unwrap_or_default();
    let failed: Vec<String> = checks
        .iter()
        .filter(|c| c["passed"] == false || c["status"] == "fail")
        .map(|c| c["name"].as_str().unwrap_or("?").to_string())
        .collect();
    let passed = code == 0 && !checks.is_empty() && failed.is_empty();
    let detail = if failed.is_empty() {
        format!("{} checks passed (exit {code})", checks.len())
    } else {
        format!(
            "{} of {} checks failed (exit {code}): {}",
            failed.len(),
            checks.len(),
            failed.join(", ")
        )
    };
    (passed, detail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_summary_needs_exit_0_and_every_check() {
        let ok = serde_json::json!({"checks": [{"name": "a", "passed": true}]});
        assert!(summarize_probe(&ok, 0).0);
        assert!(!summarize_probe(&ok, 1).0);
        let bad = serde_json::json!({"checks": [{"name": "a", "passed": true}, {"name": "b", "passed": false}]});
        let (p, d) = summarize_probe(&bad, 1);
        assert!(!p && d.contains("1 of 2") && d.contains('b'));
        assert!(!summarize_probe(&serde_json::json!({"checks": []}), 0).0);
    }
}
