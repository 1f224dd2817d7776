//! Plans and steps: what a runbook will do, in words and in the exact commands an operator
//! could type, before it does it.
//!
//! A planner (pure: config + observed state in, [`Plan`] out) builds the plan; `--dry-run`
//! prints it ([`Plan::render_text`], or JSON through [`Plan::describe`]); the
//! [`engine`](crate::engine) executes it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::progress::Progress;

/// The printable description of one step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepSpec {
    /// A stable identifier, used as the key in the journal (`export`, `upload`, ...).
    pub id: String,
    /// What the step does, in one sentence.
    pub description: String,
    /// The exact commands, SQL or requests the step runs, as an operator could type them.
    pub commands: Vec<String>,
    /// What must hold before the step runs.
    pub precondition: String,
    /// What is checked after the step ran.
    pub verification: String,
    /// How the step is undone (its commands), or `None` when it cannot be undone.
    pub undo: Option<Vec<String>>,
    /// Once this step has completed, failures no longer undo earlier steps.
    pub point_of_no_return: bool,
}

impl StepSpec {
    /// A step spec with a description and nothing else; fill in the rest with the builders.
    pub fn new(id: impl Into<String>, description: impl Into<String>) -> StepSpec {
        StepSpec {
            id: id.into(),
            description: description.into(),
            commands: Vec::new(),
            precondition: String::new(),
            verification: String::new(),
            undo: None,
            point_of_no_return: false,
        }
    }

    /// Adds a command the step runs.
    pub fn command(mut self, c: impl Into<String>) -> Self {
        self.commands.push(c.into());
        self
    }

    /// Sets the precondition text.
    pub fn precondition(mut self, p: impl Into<String>) -> Self {
        self.precondition = p.into();
        self
    }

    /// Sets the verification text.
    pub fn verification(mut self, v: impl Into<String>) -> Self {
        self.verification = v.into();
        self
    }

    /// Declares the step undoable with these commands.
    pub fn undo(mut self, commands: Vec<String>) -> Self {
        self.undo = Some(commands);
        self
    }

    /// Marks the step as the point of no return.
    pub fn point_of_no_return(mut self) -> Self {
        self.point_of_no_return = true;
        self
    }
}

/// What a step can see and record while it runs.
pub struct StepContext<'a> {
    run_key: &'a str,
    state_dir: &'a Path,
    done: &'a BTreeMap<String, BTreeMap<String, serde_json::Value>>,
    recorded: BTreeMap<String, serde_json::Value>,
    counters: &'a mut BTreeMap<String, f64>,
    progress_enabled: bool,
    resumed: bool,
}

impl<'a> StepContext<'a> {
    /// The context the engine hands a step.
    pub(crate) fn new(
        run_key: &'a str,
        state_dir: &'a Path,
        done: &'a BTreeMap<String, BTreeMap<String, serde_json::Value>>,
        counters: &'a mut BTreeMap<String, f64>,
        progress_enabled: bool,
        resumed: bool,
    ) -> StepContext<'a> {
        StepContext {
            run_key,
            state_dir,
            done,
            recorded: BTreeMap::new(),
            counters,
            progress_enabled,
            resumed,
        }
    }

    /// What the step recorded (taken once the step ends).
    pub(crate) fn take_recorded(&mut self) -> BTreeMap<String, serde_json::Value> {
        std::mem::take(&mut self.recorded)
    }

    /// Records a value in this step's journal entry, visible to later steps and resumed runs.
    pub fn record(&mut self, key: &str, value: impl serde::Serialize) {
        self.recorded.insert(
            key.to_string(),
            serde_json::to_value(value).expect("recorded values serialize"),
        );
    }

    /// A value recorded by an earlier, completed step.
    pub fn recorded(&self, step: &str, key: &str) -> Option<&serde_json::Value> {
        self.done.get(step).and_then(|d| d.get(key))
    }

    /// Adds to a run counter; it is written to the metrics file as `opskit_<runbook>_<name>`.
    pub fn count(&mut self, name: &str, value: f64) {
        *self.counters.entry(name.to_string()).or_insert(0.0) += value;
    }

    /// Sets a run gauge (overwrites), written like counters.
    pub fn gauge(&mut self, name: &str, value: f64) {
        self.counters.insert(name.to_string(), value);
    }

    /// A progress reporter (a bar on a TTY, periodic log lines otherwise).
    pub fn progress(&self, label: &str, total: Option<u64>, unit: &'static str) -> Progress {
        Progress::new(label, total, unit, self.progress_enabled)
    }

    /// The run key.
    pub fn run_key(&self) -> &str {
        self.run_key
    }

    /// The state directory.
    pub fn state_dir(&self) -> &Path {
        self.state_dir
    }

    /// True when this step was started by an earlier invocation that did not finish it.
    pub fn resumed(&self) -> bool {
        self.resumed
    }
}

/// An error from a step's precondition, action, verification or undo.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// The precondition does not hold: the step refused to run.
    #[error("precondition not met: {0}")]
    Refused(String),
    /// The step (or its verification) failed.
    #[error("{0:#}")]
    Failed(#[from] anyhow::Error),
}

impl StepError {
    /// A refusal with a reason.
    pub fn refused(reason: impl Into<String>) -> StepError {
        StepError::Refused(reason.into())
    }
}

/// Shorthand for the result of a step phase.
pub type StepResult = Result<(), StepError>;

/// The behaviour of a step. Only `execute` is required.
///
/// Actions must be idempotent: a crashed run re-runs the step that was in progress.
pub trait StepAction: Send {
    /// Checks what must hold before the step runs.
    fn precondition(&mut self, _cx: &mut StepContext) -> StepResult {
        Ok(())
    }
    /// Does the work.
    fn execute(&mut self, cx: &mut StepContext) -> StepResult;
    /// Checks that the work is done.
    fn verify(&mut self, _cx: &mut StepContext) -> StepResult {
        Ok(())
    }
    /// Reverses the work (called only when [`StepSpec::undo`] is `Some`).
    fn undo(&mut self, _cx: &mut StepContext) -> StepResult {
        Err(StepError::Failed(anyhow::anyhow!(
            "this step cannot be undone"
        )))
    }
}

/// A step: its description plus its behaviour.
pub struct Step {
    /// What is printed and journaled.
    pub spec: StepSpec,
    /// What is run.
    pub action: Box<dyn StepAction>,
}

impl Step {
    /// Pairs a spec with an action.
    pub fn new(spec: StepSpec, action: impl StepAction + 'static) -> Step {
        Step {
            spec,
            action: Box::new(action),
        }
    }
}

/// An ordered list of steps for one run of one runbook.
pub struct Plan {
    /// The runbook (`archive`, `nginx`, ...): names the metrics file and the lock.
    pub runbook: String,
    /// Identifies the run for resuming (`archive-2024-01`): the journal file name.
    pub run_key: String,
    /// A one-line title.
    pub title: String,
    /// Facts the planner observed or computed (bounds, counts, sizes), printed with the plan.
    pub facts: Vec<(String, String)>,
    /// The steps, in order.
    pub steps: Vec<Step>,
}

/// The serializable form of a plan (`--dry-run --output json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlanDescription {
    /// See [`Plan::runbook`].
    pub runbook: String,
    /// See [`Plan::run_key`].
    pub run_key: String,
    /// See [`Plan::title`].
    pub title: String,
    /// See [`Plan::facts`].
    pub facts: Vec<Fact>,
    /// The steps' specs.
    pub steps: Vec<StepSpec>,
}

/// One named fact of a plan.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Fact {
    /// What it is.
    pub name: String,
    /// Its value.
    pub value: String,
}

impl Plan {
    /// An empty plan.
    pub fn new(
        runbook: impl Into<String>,
        run_key: impl Into<String>,
        title: impl Into<String>,
    ) -> Plan {
        Plan {
            runbook: runbook.into(),
            run_key: run_key.into(),
            title: title.into(),
            facts: Vec::new(),
            steps: Vec::new(),
        }
    }

    /// Adds a fact.
    pub fn fact(&mut self, name: impl Into<String>, value: impl ToString) -> &mut Self {
        self.facts.push((name.into(), value.to_string()));
        self
    }

    /// Appends a step.
    pub fn step(&mut self, spec: StepSpec, action: impl StepAction + 'static) -> &mut Self {
        self.steps.push(Step::new(spec, action));
        self
    }

    /// The serializable description.
    pub fn describe(&self) -> PlanDescription {
        PlanDescription {
            runbook: self.runbook.clone(),
            run_key: self.run_key.clone(),
            title: self.title.clone(),
            facts: self
                .facts
                .iter()
                .map(|(n, v)| Fact {
                    name: n.clone(),
                    value: v.clone(),
                })
                .collect(),
            steps: self.steps.iter().map(|s| s.spec.clone()).collect(),
        }
    }

    /// The plan as an operator reads it.
    pub fn render_text(&self) -> String {
        self.describe().render_text()
    }
}

impl PlanDescription {
    /// The plan as an operator reads it.
    pub fn render_text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "PLAN  {}", self.title);
        let _ = writeln!(
            out,
            "      runbook {} · run key {}",
            self.runbook, self.run_key
        );
        if !self.facts.is_empty() {
            let width = self.facts.iter().map(|f| f.name.len()).max().unwrap_or(0);
            out.push('\n');
            for f in &self.facts {
                let _ = writeln!(out, "  {:<width$}  {}", f.name, f.value);
            }
        }
        let total = self.steps.len();
        for (i, s) in self.steps.iter().enumerate() {
            out.push('\n');
            let _ = writeln!(
                out,
                "STEP {}/{}  [{}]  {}",
                i + 1,
                total,
                s.id,
                s.description
            );
            if !s.precondition.is_empty() {
                let _ = writeln!(out, "  before:  {}", s.precondition);
            }
            for (j, c) in s.commands.iter().enumerate() {
                let label = if j == 0 { "  run:     " } else { "           " };
                for (k, line) in c.lines().enumerate() {
                    let prefix = if k == 0 { label } else { "           " };
                    let _ = writeln!(out, "{prefix}{line}");
                }
            }
            if !s.verification.is_empty() {
                let _ = writeln!(out, "  verify:  {}", s.verification);
            }
            match &s.undo {
                Some(cmds) if cmds.is_empty() => {
                    let _ = writeln!(out, "  undo:    (automatic)");
                }
                Some(cmds) => {
                    for (j, c) in cmds.iter().enumerate() {
                        let label = if j == 0 { "  undo:    " } else { "           " };
                        let _ = writeln!(out, "{label}{c}");
                    }
                }
                None => {
                    let _ = writeln!(out, "  undo:    none");
                }
            }
            if s.point_of_no_return {
                let _ = writeln!(
                    out,
                    "  !! POINT OF NO RETURN: after this step a failure is not rolled back"
                );
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Nothing;
    impl StepAction for Nothing {
        fn execute(&mut self, _cx: &mut StepContext) -> StepResult {
            Ok(())
        }
    }

    fn sample() -> Plan {
        let mut p = Plan::new("demo", "demo-1", "demo plan");
        p.fact("month", "2024-01");
        p.step(
            StepSpec::new("write", "Write the file")
                .command("install -m 0644 new.conf /etc/demo.conf")
                .precondition("/etc is writable")
                .verification("the file has the new checksum")
                .undo(vec!["mv /etc/demo.conf.bak /etc/demo.conf".into()]),
            Nothing,
        );
        p.step(
            StepSpec::new("purge", "Delete the old rows")
                .command("DELETE FROM t WHERE id IN (...)")
                .point_of_no_return(),
            Nothing,
        );
        p
    }

    #[test]
    fn text_lists_every_part_of_every_step() {
        let text = sample().render_text();
        assert!(text.contains("PLAN  demo plan"));
        assert!(text.contains("month  2024-01"));
        assert!(text.contains("STEP 1/2  [write]  Write the file"));
        assert!(text.contains("run:     install -m 0644 new.conf /etc/demo.conf"));
        assert!(text.contains("before:  /etc is writable"));
        assert!(text.contains("verify:  the file has the new checksum"));
        assert!(text.contains("undo:    mv /etc/demo.conf.bak /etc/demo.conf"));
        assert!(text.contains("STEP 2/2  [purge]"));
        assert!(text.contains("undo:    none"));
        assert!(text.contains("POINT OF NO RETURN"));
    }

    #[test]
    fn json_has_every_field() {
        let v = serde_json::to_value(sample().describe()).unwrap();
        assert_eq!(v["run_key"], "demo-1");
        assert_eq!(v["facts"][0]["name"], "month");
        assert_eq!(v["steps"][0]["id"], "write");
        assert_eq!(
            v["steps"][0]["undo"][0],
            "mv /etc/demo.conf.bak /etc/demo.conf"
        );
        assert_eq!(v["steps"][1]["point_of_no_return"], true);
        assert!(v["steps"][1]["undo"].is_null());
    }
}
