//! What each switchover step does, checks and undoes (the printed form is in the parent
//! module). Every action is idempotent: a resumed run repeats the step that was in progress
//! and a step whose effect is already there does nothing.
//!
//! A step that fails before the point of no return undoes its own partial work before the
//! engine undoes the completed steps (a freeze that set `read_only` and then failed must not
//! leave the master read-only). After the point of no return nothing is undone: the error
//! carries the state of every server, DNS and the pool, and the gauge
//! `switchover_half_done` is 1 until a run completes.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use opskit_core::plan::{Plan, StepAction, StepContext, StepError, StepResult};

use super::actions::{attach, catch_up, drain, freeze, move_dns, pool, verify, wait_lag};
use super::{Shared, StepKind, preflight, specs};
use crate::flavor::Flavor;
use crate::haproxy::AdminState;
use crate::testhook;

/// The gauge that says a switchover stopped after the point of no return (1) or not (0).
pub const HALF_DONE: &str = "switchover_half_done";
/// Seconds from the freeze to the DNS move (the write-unavailable window opskit controls).
pub const FREEZE_SECONDS: &str = "switchover_freeze_seconds";
/// Seconds the candidate took to execute the final GTID set.
pub const CATCH_UP_SECONDS: &str = "switchover_catch_up_seconds";

/// Builds the engine plan: the printed steps of [`specs`] with their actions.
pub fn build_plan(shared: Arc<Shared>) -> Plan {
    let input = &shared.input;
    let mut plan = Plan::new(crate::RUNBOOK, &input.run_key, super::title(input));
    for (name, value) in super::facts(input) {
        plan.fact(name, value);
    }
    let mut after_ponr = false;
    for (spec, kind) in specs(input) {
        let undoable = spec.undo.is_some();
        let action = Act {
            shared: Arc::clone(&shared),
            id: spec.id.clone(),
            kind,
            after_ponr,
            undoable,
            memo: None,
        };
        after_ponr |= spec.point_of_no_return;
        plan.step(spec, action);
    }
    plan
}

/// One step's behaviour.
struct Act {
    shared: Arc<Shared>,
    id: String,
    kind: StepKind,
    after_ponr: bool,
    undoable: bool,
    /// What `execute` saw that its undo needs (the promoted server's GTID position).
    memo: Option<String>,
}

pub(super) fn failed(e: anyhow::Error) -> StepError {
    StepError::Failed(e)
}

impl Act {
    /// After the point of no return an error carries the state of everything.
    fn explain(&self, r: StepResult) -> StepResult {
        match r {
            Err(StepError::Failed(e)) if self.after_ponr => Err(StepError::Failed(anyhow!(
                "{e:#}\n{}",
                self.shared.state_now()
            ))),
            other => other,
        }
    }

    /// Before the point of no return a failed step undoes its own partial work.
    fn undo_own(&mut self, r: StepResult, cx: &mut StepContext) -> StepResult {
        if r.is_err()
            && !self.after_ponr
            && self.undoable
            && let Err(e) = self.undo(cx)
        {
            tracing::error!(step = %self.id, "undoing the failed step's own work failed: {e}");
        }
        r
    }

    fn final_gtid(&self, cx: &StepContext) -> anyhow::Result<String> {
        let id = format!("freeze-{}", self.shared.input.old_master);
        cx.recorded(&id, "final_gtid")
            .and_then(|v| v.as_str())
            .map(str::to_string)
            .with_context(|| format!("the journal has no final GTID from step {id}"))
    }

    /// The old master still has exactly the frozen GTID set: nothing was written after it.
    fn old_master_unchanged(&self, cx: &StepContext) -> anyhow::Result<()> {
        let old = &self.shared.input.old_master;
        let g = self.final_gtid(cx)?;
        let now = self.shared.executed(old)?;
        if now != g {
            bail!(
                "{old} executed transactions after the freeze (GTID {g} → {now}): a client \
                 still wrote (a privileged account, or an event); find it in {old}'s binary log"
            );
        }
        Ok(())
    }
}

impl StepAction for Act {
    fn precondition(&mut self, cx: &mut StepContext) -> StepResult {
        testhook::pause_before(&self.id);
        if self.after_ponr {
            cx.gauge(HALF_DONE, 1.0);
        }
        let sh = Arc::clone(&self.shared);
        let r = match &self.kind {
            StepKind::Preflight => {
                cx.gauge(HALF_DONE, 0.0);
                let checks = preflight::run(&sh);
                let failed: Vec<String> = checks
                    .iter()
                    .filter(|c| !c.ok)
                    .map(|c| format!("{}: {}", c.name, c.detail))
                    .collect();
                if failed.is_empty() {
                    Ok(())
                } else {
                    Err(StepError::refused(failed.join("; ")))
                }
            }
            StepKind::CatchUp | StepKind::Promote | StepKind::Attach => {
                self.old_master_unchanged(cx).map_err(failed)
            }
            StepKind::Pool => {
                let old = &sh.input.old_master;
                let limit = Duration::from_secs(sh.input.settings.max_lag_secs.max(10) * 3);
                wait_lag(&sh, old, limit).map_err(failed)
            }
            _ => Ok(()),
        };
        self.explain(r)
    }

    fn execute(&mut self, cx: &mut StepContext) -> StepResult {
        let r = self.run(cx);
        let r = self.undo_own(r, cx);
        self.explain(r)
    }

    fn verify(&mut self, cx: &mut StepContext) -> StepResult {
        let r = self.check(cx);
        let r = self.undo_own(r, cx);
        self.explain(r)
    }

    fn undo(&mut self, cx: &mut StepContext) -> StepResult {
        let r = self.revert(cx);
        if r.is_err() {
            cx.gauge(HALF_DONE, 1.0);
        }
        r
    }
}

impl Act {
    fn run(&mut self, cx: &mut StepContext) -> StepResult {
        let sh = Arc::clone(&self.shared);
        let input = &sh.input;
        let (old, new) = (input.old_master.as_str(), input.new_master.as_str());
        match &self.kind {
            StepKind::Preflight => {
                cx.record("before", &input.before);
                Ok(())
            }
            StepKind::MoveUnderNew(s) => sh.move_replica(s, new).map_err(failed),
            StepKind::MoveUnderOld(s) => sh.move_replica(s, old).map_err(failed),
            StepKind::Drain => drain(&sh, input.pool.as_ref().expect("planned"), cx),
            StepKind::Freeze => freeze(&sh, cx),
            StepKind::CatchUp => {
                let g = self.final_gtid(cx).map_err(failed)?;
                catch_up(&sh, &g, cx)
            }
            StepKind::Promote => {
                let k = sh.kind(new);
                sh.on(new, |s| s.exec(k.stop_replica())).map_err(failed)?;
                self.memo = Some(sh.executed(new).map_err(failed)?);
                cx.record("executed", self.memo.clone());
                sh.on(new, |s| {
                    for st in k.make_writable() {
                        s.exec(st)?;
                    }
                    Ok(())
                })
                .map_err(failed)
            }
            StepKind::Dns => move_dns(&sh, cx),
            StepKind::Attach => attach(&sh),
            StepKind::ForgetChannel => {
                let k = sh.kind(new);
                if sh.status(new).map_err(failed)?.is_some() {
                    sh.on(new, |s| {
                        s.exec(k.stop_replica())?;
                        s.exec(k.reset_replica_all())
                    })
                    .map_err(failed)?;
                }
                Ok(())
            }
            StepKind::Pool => pool(&sh, input.pool.as_ref().expect("planned")),
            StepKind::Verify => Ok(()),
        }
    }

    fn check(&mut self, cx: &mut StepContext) -> StepResult {
        let sh = Arc::clone(&self.shared);
        let input = &sh.input;
        let (old, new) = (input.old_master.as_str(), input.new_master.as_str());
        match &self.kind {
            StepKind::Drain => {
                let p = input.pool.as_ref().expect("planned");
                let slots = sh.haproxy().servers_state(&p.backend).map_err(failed)?;
                match slots.iter().find(|s| s.name == p.slot) {
                    Some(s) if s.in_maintenance() => Ok(()),
                    Some(s) => Err(failed(anyhow!(
                        "{}/{} is {} after `state maint`",
                        p.backend,
                        p.slot,
                        s.state_word()
                    ))),
                    None => Err(failed(anyhow!("{}/{} is gone", p.backend, p.slot))),
                }
            }
            StepKind::Freeze => {
                let k = sh.kind(old);
                let ro = sh
                    .on(old, |s| {
                        s.value(match k.flavor {
                            Flavor::Mariadb => "SELECT @@read_only",
                            Flavor::Mysql => "SELECT @@super_read_only",
                        })
                    })
                    .map_err(failed)?;
                if ro.as_deref() != Some("1") {
                    return Err(failed(anyhow!("{old} is not read-only after the freeze")));
                }
                Ok(())
            }
            StepKind::Promote => {
                let ro = sh
                    .on(new, |s| s.value("SELECT @@read_only"))
                    .map_err(failed)?;
                let running = sh
                    .status(new)
                    .map_err(failed)?
                    .is_some_and(|s| s.sql_running == "Yes");
                if ro.as_deref() != Some("0") || running {
                    return Err(failed(anyhow!(
                        "{new} is not promoted: read_only={}, replication {}",
                        ro.unwrap_or_default(),
                        if running { "still running" } else { "stopped" }
                    )));
                }
                Ok(())
            }
            StepKind::Attach => {
                let limit = Duration::from_secs(10).max(sh.timeout() * 2);
                sh.wait_running(old, new, limit).map_err(failed)
            }
            StepKind::ForgetChannel => match sh.status(new).map_err(failed)? {
                None => Ok(()),
                Some(_) => Err(failed(anyhow!("{new} still has a replication channel"))),
            },
            StepKind::Verify => verify(&sh, cx),
            _ => Ok(()),
        }
    }

    fn revert(&mut self, cx: &mut StepContext) -> StepResult {
        let sh = Arc::clone(&self.shared);
        let input = &sh.input;
        let (old, new) = (input.old_master.as_str(), input.new_master.as_str());
        match &self.kind {
            StepKind::MoveUnderNew(s) => {
                let from = input.before.get(s).cloned().flatten().unwrap_or_default();
                sh.move_replica(s, &from).map_err(failed)
            }
            StepKind::Drain => {
                let p = input.pool.as_ref().expect("planned");
                sh.haproxy()
                    .set_state(&p.backend, &p.slot, AdminState::Ready)
                    .map_err(failed)
            }
            StepKind::Freeze => {
                let k = sh.kind(old);
                sh.on(old, |s| {
                    for st in k.unfreeze() {
                        s.exec(st)?;
                    }
                    Ok(())
                })
                .map_err(failed)
            }
            StepKind::Promote => {
                let k = sh.kind(new);
                let at_promote = self.memo.clone().or_else(|| {
                    cx.recorded(&self.id, "executed")
                        .and_then(|v| v.as_str())
                        .map(str::to_string)
                });
                let now = sh.executed(new).map_err(failed)?;
                sh.on(new, |s| {
                    for st in k.make_read_only() {
                        s.exec(st)?;
                    }
                    Ok(())
                })
                .map_err(failed)?;
                if let Some(then) = at_promote
                    && then != now
                {
                    return Err(failed(anyhow!(
                        "{new} took writes while it was the master ({then} → {now}): it is \
                         read-only again, but its replication is left stopped for a human — \
                         those transactions are not on {old}"
                    )));
                }
                sh.on(new, |s| s.exec(k.start_replica())).map_err(failed)?;
                sh.wait_running(new, old, Duration::from_secs(10))
                    .map_err(failed)
            }
            _ => Ok(()),
        }
    }
}
