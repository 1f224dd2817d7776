//! The verify plan: chains → (matrix) → verdict.
//!
//! `chains` compares the live chains with the compiled policy (normalised through
//! `iptables-save`) and sets `opskit_firewall_drift_rules` (0 = in sync). With a testbed,
//! `matrix` probes every path of the reachability matrix from inside the namespaces and sets
//! `opskit_firewall_matrix_mismatches`. `verdict` fails the run (exit 1, alert) on any drift or
//! mismatch. Verify changes nothing.

use std::time::Duration;

use anyhow::anyhow;
use chrono::{DateTime, Utc};
use opskit_core::plan::{Plan, StepAction, StepContext, StepResult, StepSpec};
use opskit_core::proc;

use crate::apply::{Job, RUNBOOK, heredoc, policy_facts, run_key};
use crate::drift::Drift;
use crate::matrix::{self, Testbed};

/// How verify runs.
#[derive(Debug, Clone)]
pub struct VerifyOptions {
    /// Probe the reachability matrix on this testbed (the lab).
    pub testbed: Option<Testbed>,
    /// Connect time limit of one probe.
    pub probe_timeout: Duration,
    /// Print the drift and the matrix table to stdout as the steps run (text output).
    pub print: bool,
}

/// Builds the verify plan (pure).
pub fn plan(job: &Job, opts: &VerifyOptions, now: DateTime<Utc>) -> Plan {
    let mut plan = Plan::new(
        RUNBOOK,
        run_key("verify", &job.ruleset, now),
        "compare the live firewall with the policy of spec §3".to_string(),
    );
    policy_facts(&mut plan, job);
    let canonical = job
        .iptables
        .canonical_command()
        .map(|c| heredoc(&c, &job.ruleset.restore_text(false)))
        .unwrap_or_else(|e| format!("(unavailable: {e:#})"));
    plan.step(
        StepSpec::new(
            "chains",
            "Compare DOCKER-USER and OPSKIT-INBOUND with the compiled policy, and FORWARD's jump",
        )
        .command(proc::display(&job.iptables.save_command("filter")))
        .command(canonical)
        .verification("sets opskit_firewall_drift_rules (0 = in sync)"),
        Chains {
            job: job.clone(),
            print: opts.print,
        },
    );
    if let Some(tb) = &opts.testbed {
        plan.fact("testbed", format!("host namespace {}", tb.host.netns));
        plan.step(
            StepSpec::new(
                "matrix",
                "Probe every path of the reachability matrix from inside the testbed's namespaces",
            )
            .command(format!(
                "ip netns exec <source> <TCP connect to each destination, {} ms limit>",
                opts.probe_timeout.as_millis()
            ))
            .verification(
                "sets opskit_firewall_matrix_mismatches (0 = every path as the policy says)",
            ),
            Matrix {
                job: job.clone(),
                testbed: tb.clone(),
                timeout: opts.probe_timeout,
                print: opts.print,
            },
        );
    }
    plan.step(
        StepSpec::new("verdict", "Fail on any drift or matrix mismatch")
            .verification("drift 0 and no mismatch, else exit 1 and the alert"),
        Verdict,
    );
    plan
}

struct Chains {
    job: Job,
    print: bool,
}

impl StepAction for Chains {
    fn execute(&mut self, cx: &mut StepContext) -> StepResult {
        let drift: Drift = self.job.drift()?;
        cx.gauge("drift_rules", drift.count() as f64);
        cx.record("drift", drift.count());
        cx.record("drift_detail", drift.describe());
        if self.print {
            if drift.count() == 0 {
                println!(
                    "chains: in sync ({} rules in {})",
                    self.job.ruleset.rules.len(),
                    self.job.ruleset.chains.join(", ")
                );
            } else {
                print!(
                    "chains: {} difference(s)\n{}",
                    drift.count(),
                    drift.describe()
                );
            }
        }
        Ok(())
    }
}

struct Matrix {
    job: Job,
    testbed: Testbed,
    timeout: Duration,
    print: bool,
}

impl StepAction for Matrix {
    fn execute(&mut self, cx: &mut StepContext) -> StepResult {
        let rows = matrix::rows(&self.job.cfg, &self.testbed);
        let report = matrix::probe(&self.job.cfg, rows, self.timeout)?;
        let bad: Vec<String> = report
            .mismatches()
            .iter()
            .map(|r| {
                format!(
                    "{} → {} (want {}, saw {})",
                    r.row.from, r.row.to, r.row.expect, r.seen
                )
            })
            .collect();
        cx.gauge("matrix_rows", report.rows.len() as f64);
        cx.gauge("matrix_mismatches", bad.len() as f64);
        cx.record("mismatches", &bad);
        if self.print {
            print!("{}", report.render_table());
        }
        Ok(())
    }
}

struct Verdict;

impl StepAction for Verdict {
    fn execute(&mut self, cx: &mut StepContext) -> StepResult {
        let drift = cx
            .recorded("chains", "drift")
            .and_then(|v| v.as_u64())
            .unwrap_or(0);
        let first = cx
            .recorded("chains", "drift_detail")
            .and_then(|v| v.as_str())
            .and_then(|d| d.lines().next())
            .unwrap_or("")
            .trim()
            .to_string();
        let mismatches: Vec<String> = cx
            .recorded("matrix", "mismatches")
            .and_then(|v| serde_json::from_value(v.clone()).ok())
            .unwrap_or_default();
        let mut problems = Vec::new();
        if drift > 0 {
            problems.push(format!("{drift} rule difference(s) (first: {first})"));
        }
        if let Some(first) = mismatches.first() {
            problems.push(format!(
                "{} matrix row(s) differ from the policy (first: {first})",
                mismatches.len()
            ));
        }
        if problems.is_empty() {
            return Ok(());
        }
        Err(anyhow!(
            "the live firewall drifted from the policy: {}",
            problems.join(" | ")
        )
        .into())
    }
}
