//! The apply plan: preflight → test → load → confirm.
//!
//! 1. `preflight` refuses (exit 3, nothing changed) when the host cannot take the policy
//!    (two iptables backends, Docker on nftables, containers that differ from the config, no
//!    `DOCKER-USER` or no jump to it), then keeps the current chains for undo.
//! 2. `test` runs `iptables-restore --test` and loads the ruleset into a throw-away network
//!    namespace, which catches what `--test` misses on nf_tables.
//! 3. `load` is one `iptables-restore -w 10 --noflush` transaction: it happens whole or not at
//!    all. Undo puts the saved chains back (and removes `OPSKIT-INBOUND` if it was new).
//! 4. `confirm` reads the chains back and compares them with the compiled policy; a difference
//!    makes the engine undo `load`.
//!
//! Applying twice leaves one copy: declaring a chain in `--noflush` input empties it first.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, anyhow};
use chrono::{DateTime, Utc};
use opskit_core::config::FirewallConfig;
use opskit_core::plan::{Plan, StepAction, StepContext, StepError, StepResult, StepSpec};
use opskit_core::proc;
use opskit_core::util::write_atomic;

use crate::drift::Drift;
use crate::iptables::{Iptables, SavedTable};
use crate::observe::Observation;
use crate::ruleset::{CHAINS, INBOUND_CHAIN, Ruleset};

/// The runbook name: the lock, the journal directory and `opskit_firewall.prom`.
pub const RUNBOOK: &str = "firewall";

/// Everything a firewall run needs, decided before it starts.
#[derive(Debug, Clone)]
pub struct Job {
    /// The checked `[firewall]` settings.
    pub cfg: FirewallConfig,
    /// The compiled policy.
    pub ruleset: Ruleset,
    /// The host's iptables.
    pub iptables: Iptables,
}

impl Job {
    /// A job for checked settings.
    pub fn new(cfg: &FirewallConfig) -> Job {
        Job {
            cfg: cfg.clone(),
            ruleset: Ruleset::compile(cfg),
            iptables: Iptables::from_config(cfg),
        }
    }

    /// The canonical (as this iptables prints it) form of the compiled policy.
    pub fn canonical(&self) -> anyhow::Result<SavedTable> {
        self.iptables.canonical(&self.ruleset.restore_text(false))
    }

    /// Compares the live chains with the compiled policy.
    pub fn drift(&self) -> anyhow::Result<Drift> {
        let want = self.canonical()?;
        let live = self.iptables.filter().context("reading the live rules")?;
        Ok(Drift::compare(&want, &live))
    }
}

/// `firewall-<verb>-<UTC time>-<first 8 hex of the ruleset's sha256>`: one journal per run.
pub fn run_key(verb: &str, ruleset: &Ruleset, now: DateTime<Utc>) -> String {
    format!(
        "firewall-{verb}-{}-{}",
        now.format("%Y%m%dT%H%M%S%.3fZ"),
        &ruleset.sha256()[..8]
    )
}

/// A command with the ruleset as a here-document, as an operator would type it.
pub fn heredoc(cmd: &Command, text: &str) -> String {
    format!("{} <<'EOF'\n{}EOF", proc::display(cmd), text)
}

/// The title shared by the plans.
fn describe_policy(cfg: &FirewallConfig) -> String {
    format!(
        "reading {}, LAN {}, {} containers on {} bridges",
        cfg.reading,
        cfg.lan_range,
        cfg.containers.len(),
        cfg.bridges().len()
    )
}

/// Adds the policy's own facts to a plan.
pub fn policy_facts(plan: &mut Plan, job: &Job) {
    plan.fact("policy", describe_policy(&job.cfg));
    for c in &job.cfg.containers {
        let ports = |ps: &[u16]| ps.iter().map(u16::to_string).collect::<Vec<_>>().join(",");
        plan.fact(
            format!("container {}", c.name),
            format!(
                "{} on {}; published [{}], private [{}]",
                c.address,
                c.bridge,
                ports(&c.published_ports),
                ports(&c.private_ports)
            ),
        );
    }
    if let Some(ns) = job.iptables.netns() {
        plan.fact("network namespace", ns);
    }
    plan.fact(
        "ruleset",
        format!(
            "{} rules in {}; sha256 {}",
            job.ruleset.rules.len(),
            job.ruleset.chains.join(", "),
            job.ruleset.sha256()
        ),
    );
}

/// Builds the apply plan (pure; `observed` only adds facts). The ruleset is kept beside the
/// run's journal as `<state_dir>/firewall/<run key>.rules`: the file the commands name.
pub fn plan(
    job: &Job,
    observed: Option<&Observation>,
    state_dir: &Path,
    now: DateTime<Utc>,
) -> Plan {
    let ipt = &job.iptables;
    let key = run_key("apply", &job.ruleset, now);
    let kept = state_dir.join(RUNBOOK).join(format!("{key}.rules"));
    let from_file = |cmd: &Command| format!("{} < {}", proc::display(cmd), kept.display());
    let mut plan = Plan::new(
        RUNBOOK,
        key.clone(),
        format!(
            "load the Docker firewall policy of spec §3 into {}",
            job.ruleset.chains.join(" and ")
        ),
    );
    policy_facts(&mut plan, job);
    if let Some(o) = observed {
        o.add_facts(&mut plan);
    }
    let saved = observed
        .and_then(|o| o.live.as_ref().ok())
        .map(|live| live.restore_text_for(&CHAINS))
        .unwrap_or_else(|| "(the chains as step 1 saved them)\n".into());
    let canonical = ipt
        .canonical_command()
        .map(|c| from_file(&c))
        .unwrap_or_else(|e| format!("(unavailable: {e:#})"));
    plan.fact("ruleset file", kept.display());
    plan.step(
        StepSpec::new(
            "preflight",
            "Check the host, keep the current DOCKER-USER and OPSKIT-INBOUND for undo, and \
             write the ruleset file (the rules of step 3)",
        )
        .command(format!("{} --version", job.cfg.iptables_restore))
        .command(proc::display(&ipt.save_command("filter")))
        .command(format!(
            "install -m 0600 /dev/stdin {} <<'EOF' (the rules of step 3) EOF",
            kept.display()
        ))
        .precondition(
            "iptables-restore and iptables-save drive one backend; Docker (when asked) uses its \
             iptables backend and runs the containers on the configured addresses and bridges; \
             DOCKER-USER exists and FORWARD jumps to it",
        )
        .verification("the current chains are recorded in the journal"),
        Preflight {
            job: job.clone(),
            kept: kept.clone(),
        },
    );
    plan.step(
        StepSpec::new(
            "test",
            "Test the ruleset: iptables-restore --test, then a real load in a throw-away network namespace",
        )
        .command(from_file(&ipt.restore_command(true)))
        .command(canonical)
        .verification("both exit 0 (the namespace load also catches jumps to missing chains)"),
        Test(job.clone()),
    );
    plan.step(
        StepSpec::new(
            "load",
            "Load the policy in one atomic transaction on top of Docker's rules",
        )
        .command(heredoc(
            &ipt.restore_command(false),
            &job.ruleset.restore_text(true),
        ))
        .verification("exit 0; a failed load changes nothing")
        .undo(undo_commands(ipt, &saved, observed)),
        Load(job.clone()),
    );
    plan.step(
        StepSpec::new(
            "confirm",
            "Read the chains back and compare them with the compiled policy",
        )
        .command(proc::display(&ipt.save_command("filter")))
        .verification(
            "DOCKER-USER and OPSKIT-INBOUND hold exactly the compiled rules, in order \
             (normalised through iptables-save); a difference undoes the load",
        ),
        Confirm(job.clone()),
    );
    plan
}

fn undo_commands(ipt: &Iptables, saved: &str, observed: Option<&Observation>) -> Vec<String> {
    let mut cmds = vec![heredoc(&ipt.restore_command(false), saved)];
    let inbound_was_missing = observed
        .and_then(|o| o.live.as_ref().ok())
        .is_none_or(|l| l.rules(INBOUND_CHAIN).is_none());
    if inbound_was_missing {
        cmds.push(heredoc(
            &ipt.restore_command(false),
            &delete_chain_text(INBOUND_CHAIN),
        ));
    }
    cmds
}

fn delete_chain_text(chain: &str) -> String {
    format!("*filter\n-F {chain}\n-X {chain}\nCOMMIT\n")
}

fn refused(e: impl std::fmt::Display) -> StepError {
    StepError::refused(e.to_string())
}

struct Preflight {
    job: Job,
    kept: PathBuf,
}

impl StepAction for Preflight {
    fn precondition(&mut self, _cx: &mut StepContext) -> StepResult {
        let o = Observation::take(&self.job.cfg, &self.job.iptables);
        if let Some(reason) = o.refusal() {
            return Err(refused(reason));
        }
        for w in o.warnings() {
            tracing::warn!("{w}");
        }
        Ok(())
    }

    fn execute(&mut self, cx: &mut StepContext) -> StepResult {
        if let Some(dir) = self.kept.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        write_atomic(
            &self.kept,
            self.job.ruleset.restore_text(true).as_bytes(),
            0o600,
        )?;
        cx.record("ruleset", self.kept.display().to_string());
        let live = self
            .job
            .iptables
            .filter()
            .context("reading the live rules")?;
        cx.record("backup", live.restore_text_for(&CHAINS));
        cx.record(
            "existed",
            CHAINS
                .iter()
                .filter(|c| live.rules(c).is_some())
                .collect::<Vec<_>>(),
        );
        // The drift before the load: what the metrics keep if the run fails.
        if let Ok(want) = self.job.canonical() {
            cx.gauge("drift_rules", Drift::compare(&want, &live).count() as f64);
        }
        Ok(())
    }
}

struct Test(Job);

impl StepAction for Test {
    fn execute(&mut self, _cx: &mut StepContext) -> StepResult {
        let text = self.0.ruleset.restore_text(false);
        self.0
            .iptables
            .test(&text)
            .context("iptables-restore --test rejected the ruleset")?;
        self.0.canonical()?;
        Ok(())
    }
}

struct Load(Job);

impl StepAction for Load {
    fn execute(&mut self, cx: &mut StepContext) -> StepResult {
        self.0
            .iptables
            .load(&self.0.ruleset.restore_text(true))
            .context("loading the policy (nothing was changed: the load is one transaction)")?;
        cx.gauge("rules_loaded", self.0.ruleset.rules.len() as f64);
        Ok(())
    }

    fn undo(&mut self, cx: &mut StepContext) -> StepResult {
        let backup = cx
            .recorded("preflight", "backup")
            .and_then(|v| v.as_str())
            .map(str::to_string)
            .ok_or_else(|| anyhow!("the journal holds no saved chains to put back"))?;
        let existed: Vec<String> = cx
            .recorded("preflight", "existed")
            .and_then(|v| serde_json::from_value(v.clone()).ok())
            .unwrap_or_default();
        self.0
            .iptables
            .load(&backup)
            .context("putting the saved chains back")?;
        if !existed.iter().any(|c| c == INBOUND_CHAIN) {
            // Its own transaction: nf_tables refuses to delete a chain in the batch that
            // also removes the last jump to it.
            self.0
                .iptables
                .load(&delete_chain_text(INBOUND_CHAIN))
                .context("removing OPSKIT-INBOUND, which did not exist before")?;
        }
        Ok(())
    }
}

struct Confirm(Job);

impl StepAction for Confirm {
    fn execute(&mut self, cx: &mut StepContext) -> StepResult {
        let drift = self.0.drift()?;
        cx.gauge("drift_rules", drift.count() as f64);
        if !drift.missing.is_empty() || !drift.unexpected.is_empty() {
            return Err(anyhow!(
                "the live chains differ from the compiled policy after the load: {}",
                drift.describe().trim_end().replace('\n', "; ")
            )
            .into());
        }
        if drift.count() > 0 {
            tracing::warn!("{}", drift.describe().trim_end());
        }
        Ok(())
    }
}
