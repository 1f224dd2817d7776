//! The nginx drill (spec §2): `nginx check` of the rendered config, then the full probe of the
//! lab's edge (rendered from the same settings as production, paths rebased into the lab) for
//! every behaviour of the spec. A failed probe is reported with the names of its failed checks.

use std::time::Instant;

use opskit_edge::probe::{ProbeReport, Verdict};
use opskit_lab::Component;

use crate::report::{Check, DrillReport};
use crate::{DrillContext, Section};

const RUNBOOK: &str = "nginx";

/// The nginx section.
pub struct NginxDrill;

impl Section for NginxDrill {
    fn needs(&self) -> &'static [Component] {
        &[Component::Nginx]
    }

    fn run(&self, cx: &DrillContext, report: &mut DrillReport) {
        report.push(cx.opskit.check(
            RUNBOOK,
            "the rendered config passes nginx -t without warnings",
            &["nginx", "check"],
            0,
        ));
        let clock = Instant::now();
        let (passed, detail) = match cx.opskit.run(&["--output", "json", "nginx", "probe"]) {
            Ok(inv) => match inv.parse::<ProbeReport>() {
                Ok(probe) => judge_probe(&probe, inv.code),
                Err(e) => (false, format!("exit {}: {e:#}", inv.code)),
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
}

/// Passed only with exit 0, at least one check and no failed check; the detail names every
/// failed check with what it saw.
fn judge_probe(probe: &ProbeReport, code: i32) -> (bool, String) {
    let failed: Vec<String> = probe
        .checks
        .iter()
        .filter(|c| c.verdict == Verdict::Fail)
        .map(|c| format!("{} ({})", c.name, c.detail))
        .collect();
    let skipped = probe
        .checks
        .iter()
        .filter(|c| c.verdict == Verdict::Skip)
        .count();
    let passed = code == 0 && !probe.checks.is_empty() && failed.is_empty();
    let detail = if failed.is_empty() {
        format!(
            "{} checks passed, {skipped} skipped (exit {code})",
            probe.checks.len() - skipped
        )
    } else {
        format!(
            "{} of {} checks failed (exit {code}): {}",
            failed.len(),
            probe.checks.len(),
            failed.join("; ")
        )
    };
    (passed, detail)
}

#[cfg(test)]
mod tests {
    use super::*;
    use opskit_edge::probe::CheckResult;

    fn report(verdicts: &[(&str, Verdict)]) -> ProbeReport {
        ProbeReport {
            url: "https://ipo.com:8443".into(),
            checks: verdicts
                .iter()
                .map(|(n, v)| CheckResult {
                    name: n.to_string(),
                    verdict: *v,
                    detail: format!("saw {n}"),
                })
                .collect(),
        }
    }

    /// Round-trips through the exact JSON `opskit nginx probe --output json` prints.
    fn as_printed(r: &ProbeReport) -> ProbeReport {
        serde_json::from_str(&serde_json::to_string(&r.printed()).unwrap()).unwrap()
    }

    #[test]
    fn a_failing_probe_is_reported_by_the_name_of_its_failed_check() {
        let r = as_printed(&report(&[
            ("tls.h2_alpn", Verdict::Pass),
            ("rate.excess_gets_429", Verdict::Fail),
            ("static.fixture", Verdict::Skip),
        ]));
        let (passed, detail) = judge_probe(&r, 1);
        assert!(!passed);
        assert!(
            detail.contains("1 of 3 checks failed")
                && detail.contains("rate.excess_gets_429 (saw rate.excess_gets_429)"),
            "{detail}"
        );
    }

    #[test]
    fn a_pass_needs_exit_0_and_at_least_one_check() {
        let ok = as_printed(&report(&[("tls.h2_alpn", Verdict::Pass)]));
        assert!(judge_probe(&ok, 0).0);
        assert!(!judge_probe(&ok, 1).0);
        assert!(!judge_probe(&as_printed(&report(&[])), 0).0);
    }
}
