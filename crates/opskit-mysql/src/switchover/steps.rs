//! What each switchover step does, checks and undoes (the printed form is in the parent
//! module). Every action is idempotent: a resumed run repeats the step that was in progress
//! and a step whose effect is already there does nothing.
//!
//! A step that fails before the point of no return undoes its own partial work before the
//! engine undoes the completed steps (a freeze that set `read_only` and then failed must not
//! leave the master read-only). After the point of no return nothing is undone: the error
//! carries the state of every server, DNS and the pool, and the gauge
//! `switchover_half_done` is 1 until a run completes.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use opskit_core::config::MysqlConfig;
use opskit_core::plan::{Plan, StepAction, StepContext, StepError, StepResult};
use opskit_core::secret::read_secret_file;

use super::{Layout, PoolChange, StepKind, SwitchoverInput, preflight, specs};
use crate::dns::{DnsServer, TsigKey, UpdateOutcome};
use crate::flavor::{CLIENT_SESSIONS_SQL, Flavor, ServerKind, sql_str};
use crate::haproxy::{AdminState, Runtime, configured_server, replace_config, repoint_server_line};
use crate::session::{Credentials, Session};
use crate::topology::{Cluster, ReplicaStatus, TopologyReport, discover};
use crate::{gtid, testhook};

/// The gauge that says a switchover stopped after the point of no return (1) or not (0).
pub const HALF_DONE: &str = "switchover_half_done";
/// Seconds from the freeze to the DNS move (the write-unavailable window opskit controls).
pub const FREEZE_SECONDS: &str = "switchover_freeze_seconds";
/// Seconds the candidate took to execute the final GTID set.
pub const CATCH_UP_SECONDS: &str = "switchover_catch_up_seconds";

/// Everything the steps share: the plan's input, one session per server, DNS and HAProxy.
pub struct Shared {
    /// The plan.
    pub input: SwitchoverInput,
    /// `[mysql]` now (preflight re-discovers with it).
    pub config: MysqlConfig,
    cluster: Mutex<Cluster>,
    dns: DnsServer,
    key: TsigKey,
    haproxy: Runtime,
    repl: Credentials,
    state_dir: PathBuf,
}

impl Shared {
    /// Reads the replication password and the TSIG key (usage errors, exit 2, when a file is
    /// wrong) and prepares the sessions (connected on first use).
    pub fn new(
        input: SwitchoverInput,
        config: &MysqlConfig,
        admin: Credentials,
        state_dir: &std::path::Path,
    ) -> anyhow::Result<Shared> {
        let timeout = Duration::from_secs(input.settings.timeout_secs);
        let repl = Credentials {
            user: input.settings.replication_user.clone(),
            password: read_secret_file(
                &input.settings.replication_password_file,
                "mysql.replication_password_file",
            )?,
        };
        let key = TsigKey::read(config.dns.tsig_key_file.path())?;
        let server: opskit_core::config::mysql::HostPort = input
            .dns
            .server
            .clone()
            .try_into()
            .map_err(|e: String| anyhow!(e))?;
        let dns = DnsServer::new(&server, &input.dns.zone, timeout)?;
        Ok(Shared {
            cluster: Mutex::new(Cluster::new(input.nodes.clone(), admin, timeout)),
            haproxy: Runtime::new(&input.settings.haproxy_socket, timeout),
            dns,
            key,
            repl,
            config: config.clone(),
            state_dir: state_dir.to_path_buf(),
            input,
        })
    }

    pub(crate) fn cluster(&self) -> MutexGuard<'_, Cluster> {
        self.cluster.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` on the admin session of `name`.
    pub(crate) fn on<T>(
        &self,
        name: &str,
        f: impl FnOnce(&mut Session) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        let mut c = self.cluster();
        f(c.session(name)?)
    }

    pub(crate) fn kind(&self, name: &str) -> ServerKind {
        self.input.kind(name)
    }

    pub(crate) fn dns(&self) -> (&DnsServer, &TsigKey) {
        (&self.dns, &self.key)
    }

    pub(crate) fn haproxy(&self) -> &Runtime {
        &self.haproxy
    }

    pub(crate) fn repl(&self) -> &Credentials {
        &self.repl
    }

    /// The tree now, read from the servers.
    pub fn discover(&self) -> TopologyReport {
        let mut c = self.cluster();
        discover(&mut c, &self.config)
    }

    fn timeout(&self) -> Duration {
        Duration::from_secs(self.input.settings.timeout_secs)
    }

    /// The replica status of `name` (`None`: it replicates from nobody).
    fn status(&self, name: &str) -> anyhow::Result<Option<ReplicaStatus>> {
        let k = self.kind(name);
        let rows = self.on(name, |s| s.query(k.show_replica_status()))?;
        Ok(rows.first().map(|r| ReplicaStatus::from_row(&k, r)))
    }

    fn replicates_from(&self, status: &ReplicaStatus, source: &str) -> bool {
        self.input
            .node(source)
            .is(&status.source_host, status.source_port)
    }

    /// `gtid_binlog_pos` / `gtid_executed` of `name`.
    fn executed(&self, name: &str) -> anyhow::Result<String> {
        let k = self.kind(name);
        Ok(self
            .on(name, |s| s.value(&format!("SELECT {}", k.executed_var())))?
            .unwrap_or_default()
            .replace('\n', ""))
    }

    /// Waits until `name` replicates from `source` with both threads running.
    fn wait_running(&self, name: &str, source: &str, limit: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            let st = self.status(name)?;
            match &st {
                Some(s) if s.running() && self.replicates_from(s, source) => return Ok(()),
                _ if Instant::now() >= deadline => {
                    let detail = st.map_or("no replication configured".to_string(), |s| {
                        format!(
                            "source {}:{}, IO {}, SQL {}{}{}",
                            s.source_host,
                            s.source_port,
                            s.io_running,
                            s.sql_running,
                            non_empty("; IO error: ", &s.last_io_error),
                            non_empty("; SQL error: ", &s.last_sql_error)
                        )
                    });
                    bail!(
                        "{name} does not replicate from {source} with both threads running \
                         after {} s: {detail}",
                        limit.as_secs_f64()
                    );
                }
                _ => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// Kills every client session on `name` (not ours, not the replication threads).
    fn kill_clients(&self, name: &str) -> anyhow::Result<usize> {
        self.on(name, |s| {
            let ids: Vec<String> = s
                .query(CLIENT_SESSIONS_SQL)?
                .iter()
                .filter_map(|r| r.at(0).map(str::to_string))
                .collect();
            let mut killed = 0;
            for id in ids {
                match s.exec(&format!("KILL CONNECTION {id}")) {
                    Ok(()) => killed += 1,
                    // 1094: the session ended by itself in between.
                    Err(e) if crate::session::server_code(&e) == Some(1094) => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(killed)
        })
    }

    /// Moves `server` under `to` with GTID positioning (see the parent module's step text).
    fn move_replica(&self, server: &str, to: &str) -> anyhow::Result<()> {
        let k = self.kind(server);
        if let Some(st) = self.status(server)?
            && st.running()
            && self.replicates_from(&st, to)
        {
            return Ok(());
        }
        self.on(server, |s| s.exec(k.stop_replica()))?;
        let pos = self
            .on(server, |s| {
                s.value(&format!("SELECT {}", k.replica_pos_var()))
            })?
            .unwrap_or_default()
            .replace('\n', "");
        let reached = self.wait_has(to, &pos, Duration::from_secs(30));
        if let Err(e) = reached {
            let _ = self.on(server, |s| s.exec(k.start_replica()));
            bail!("{e:#}; {server} was left under its old source");
        }
        let (host, port) = self.input.host_of(to);
        self.on(server, |s| {
            s.exec(&k.change_source(host, port, None, false))?;
            s.exec(k.start_replica())
        })?;
        self.wait_running(server, to, Duration::from_secs(10).max(self.timeout()))
    }

    /// Waits until the binary log of `to` holds every transaction of `pos` (it can then serve a
    /// replica stopped at `pos`). MariaDB: `@@gtid_binlog_pos` covers it (`MASTER_GTID_WAIT`
    /// only looks at a replica's applied position and never returns on a master); MySQL:
    /// `WAIT_FOR_EXECUTED_GTID_SET`.
    fn wait_has(&self, to: &str, pos: &str, limit: Duration) -> anyhow::Result<()> {
        let k = self.kind(to);
        match k.flavor {
            Flavor::Mysql => {
                let v = self.on(to, |s| {
                    s.query_within(
                        &k.wait_for_gtid(pos, limit.as_secs()),
                        limit + self.timeout(),
                    )
                })?;
                match v.first().and_then(|r| r.at(0)) {
                    Some(v) if !k.wait_timed_out(v) => Ok(()),
                    other => {
                        bail!("{to} did not reach {pos} within {limit:?} (wait returned {other:?})")
                    }
                }
            }
            Flavor::Mariadb => {
                let want = gtid::Position::parse(pos).map_err(|e| anyhow!(e))?;
                let deadline = Instant::now() + limit;
                loop {
                    let have = self.executed(to)?;
                    if gtid::Position::parse(&have)
                        .map_err(|e| anyhow!(e))?
                        .covers(&want)
                    {
                        return Ok(());
                    }
                    if Instant::now() >= deadline {
                        bail!(
                            "{to}'s binary log did not reach {pos} within {limit:?} (it has {have})"
                        );
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
    }

    /// The state of every server, DNS and the pool, for an error after the point of no return.
    pub fn state_now(&self) -> String {
        let report = self.discover();
        let mut out = String::from("state now:");
        for s in &report.servers {
            out.push_str(&format!("\n  {}: ", s.name));
            if let Some(e) = &s.error {
                out.push_str(&format!("DOES NOT ANSWER ({e})"));
                continue;
            }
            out.push_str(if s.writable() {
                "read-write"
            } else {
                "read-only"
            });
            match (&s.source, &s.replication) {
                (Some(src), Some(r)) => out.push_str(&format!(
                    ", replicates from {src} (IO {}, SQL {}{}{})",
                    r.io_running,
                    r.sql_running,
                    non_empty(", IO error: ", &r.last_io_error),
                    non_empty(", SQL error: ", &r.last_sql_error)
                )),
                _ => out.push_str(", replicates from nobody"),
            }
            if let Some(want) = self.input.after.get(&s.name) {
                let want = want.as_deref().unwrap_or("nobody");
                if s.source.as_deref().unwrap_or("nobody") != want {
                    out.push_str(&format!(" — planned: from {want}"));
                }
            }
        }
        let d = &self.input.dns;
        match self.dns.query_a(&d.name) {
            Ok(a) => out.push_str(&format!(
                "\n  DNS {} A {} (planned {})",
                d.name,
                a.iter()
                    .map(|x| x.to_string())
                    .collect::<Vec<_>>()
                    .join(" "),
                d.new
            )),
            Err(e) => out.push_str(&format!("\n  DNS {}: {e:#}", d.name)),
        }
        if let Some(p) = &self.input.pool {
            match self.haproxy.servers_state(&p.backend) {
                Ok(slots) => {
                    if let Some(s) = slots.iter().find(|s| s.name == p.slot) {
                        out.push_str(&format!(
                            "\n  HAProxy {}/{}: {} {} (planned {}:{})",
                            p.backend,
                            p.slot,
                            s.endpoint(),
                            s.state_word(),
                            p.addr,
                            p.port
                        ));
                    }
                }
                Err(e) => out.push_str(&format!("\n  HAProxy: {e:#}")),
            }
        }
        out.push_str(
            "\nfix the cause, then run the same `opskit mysql switchover` again: it resumes \
             from the failed step",
        );
        out
    }
}

fn non_empty(prefix: &str, s: &str) -> String {
    if s.is_empty() {
        String::new()
    } else {
        format!("{prefix}{s}")
    }
}

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

fn failed(e: anyhow::Error) -> StepError {
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

/// Waits until `name` replicates with lag ≤ the limit.
fn wait_lag(sh: &Shared, name: &str, limit: Duration) -> anyhow::Result<()> {
    let max = sh.input.settings.max_lag_secs;
    let deadline = Instant::now() + limit;
    loop {
        let st = sh.status(name)?;
        let lag = st.as_ref().and_then(|s| s.lag_secs);
        if st.as_ref().is_some_and(ReplicaStatus::running) && lag.is_some_and(|l| l <= max) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "{name} is not replicating with lag ≤ {max} s after {} s (lag {})",
                limit.as_secs(),
                lag.map_or("unknown".into(), |l| format!("{l} s"))
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn drain(sh: &Shared, p: &PoolChange, cx: &mut StepContext) -> StepResult {
    let h = sh.haproxy();
    h.set_state(&p.backend, &p.slot, AdminState::Drain)
        .map_err(failed)?;
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut left = h.sessions(&p.backend, &p.slot).unwrap_or(0);
    while left > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        left = h.sessions(&p.backend, &p.slot).unwrap_or(0);
    }
    cx.record("sessions_left", left);
    if left > 0 {
        tracing::info!(
            "{}/{}: {left} session(s) still open after the drain; they keep reading from {} \
             (it stays readable) until their clients reconnect",
            p.backend,
            p.slot,
            sh.input.new_master
        );
    }
    h.set_state(&p.backend, &p.slot, AdminState::Maint)
        .map_err(failed)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

fn freeze(sh: &Shared, cx: &mut StepContext) -> StepResult {
    let old = sh.input.old_master.as_str();
    let k = sh.kind(old);
    let t = sh.input.settings.freeze_timeout_secs;
    sh.on(old, |s| {
        s.exec(&format!("SET SESSION lock_wait_timeout = {t}"))?;
        for st in k.freeze() {
            s.query_within(st, Duration::from_secs(t) + sh.timeout())?;
        }
        Ok(())
    })
    .map_err(failed)?;
    cx.record("frozen_at_ms", now_ms());
    let mut killed = sh.kill_clients(old).map_err(failed)?;
    // A write already past read_only's check may still commit: the set must hold still.
    let mut last = sh.executed(old).map_err(failed)?;
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(50));
        killed += sh.kill_clients(old).map_err(failed)?;
        let now = sh.executed(old).map_err(failed)?;
        if now == last {
            cx.record("final_gtid", &now);
            cx.record("sessions_killed", killed);
            return Ok(());
        }
        last = now;
    }
    Err(failed(anyhow!(
        "{old} kept executing transactions after read_only was set ({last}): a privileged \
         writer is still connected"
    )))
}

fn catch_up(sh: &Shared, g: &str, cx: &mut StepContext) -> StepResult {
    let (old, new) = (sh.input.old_master.as_str(), sh.input.new_master.as_str());
    let k = sh.kind(new);
    let t = sh.input.settings.freeze_timeout_secs;
    let clock = Instant::now();
    let v = sh
        .on(new, |s| {
            s.query_within(
                &k.wait_for_gtid(g, t),
                Duration::from_secs(t) + sh.timeout(),
            )
        })
        .map_err(failed)?
        .first()
        .and_then(|r| r.at(0).map(str::to_string));
    match v.as_deref() {
        Some(v) if !k.wait_timed_out(v) => {}
        other => {
            return Err(failed(anyhow!(
                "{new} did not execute {old}'s last transaction ({g}) within {t} s \
                 (mysql.freeze_timeout_secs; wait returned {}); it has {}",
                other.unwrap_or("NULL: its SQL thread stopped"),
                sh.executed(new).unwrap_or_default()
            )));
        }
    }
    cx.gauge(CATCH_UP_SECONDS, clock.elapsed().as_secs_f64());
    // Errant: nothing on the candidate that the frozen master does not have.
    let errant = match k.flavor {
        Flavor::Mariadb => {
            let state = |n: &str| {
                sh.on(n, |s| s.value("SELECT @@GLOBAL.gtid_binlog_state"))
                    .map(|v| v.unwrap_or_default())
            };
            let (mine, theirs) = (state(new).map_err(failed)?, state(old).map_err(failed)?);
            gtid::errant(&mine, &theirs)
                .map_err(|e| failed(anyhow!(e)))?
                .iter()
                .map(|g| g.to_string())
                .collect::<Vec<_>>()
                .join(",")
        }
        Flavor::Mysql => sh
            .on(new, |s| {
                s.value(&format!(
                    "SELECT GTID_SUBTRACT(@@GLOBAL.gtid_executed, '{}')",
                    sql_str(g)
                ))
            })
            .map_err(failed)?
            .unwrap_or_default(),
    };
    if !errant.trim().is_empty() {
        return Err(failed(anyhow!(
            "{new} has transactions {old} never had (errant: {errant}); promoting it would \
             lose them on {old}"
        )));
    }
    Ok(())
}

fn move_dns(sh: &Shared, cx: &mut StepContext) -> StepResult {
    let d = &sh.input.dns;
    let (dns, key) = sh.dns();
    let now = dns.query_a(&d.name).map_err(failed)?;
    if now != [d.new] {
        match dns
            .compare_and_swap(key, &d.name, d.old, d.new, d.ttl)
            .map_err(failed)?
        {
            UpdateOutcome::Applied => {}
            UpdateOutcome::PrerequisiteFailed => {
                let seen = dns.query_a(&d.name).unwrap_or_default();
                if seen != [d.new] {
                    return Err(failed(anyhow!(
                        "{} is not {} any more ({:?}): someone else changed it; the update \
                         was not applied",
                        d.name,
                        d.old,
                        seen
                    )));
                }
            }
        }
    }
    let seen = dns.query_a(&d.name).map_err(failed)?;
    if seen != [d.new] {
        // Put it back before the engine makes the old master writable again.
        let back = dns.compare_and_swap(key, &d.name, d.new, d.old, d.ttl);
        return Err(failed(anyhow!(
            "after the update {} answers {seen:?} for {}, not {}; moving it back: {back:?}",
            d.server,
            d.name,
            d.new
        )));
    }
    if let Some(at) = cx
        .recorded(&format!("freeze-{}", sh.input.old_master), "frozen_at_ms")
        .and_then(|v| v.as_u64())
    {
        cx.gauge(FREEZE_SECONDS, now_ms().saturating_sub(at) as f64 / 1000.0);
    }
    Ok(())
}

fn attach(sh: &Shared) -> StepResult {
    let (old, new) = (sh.input.old_master.as_str(), sh.input.new_master.as_str());
    let k = sh.kind(old);
    sh.kill_clients(old).map_err(failed)?;
    if let Some(st) = sh.status(old).map_err(failed)?
        && sh.replicates_from(&st, new)
        && st.running()
    {
        return Ok(());
    }
    let (host, port) = sh.input.host_of(new);
    let repl = sh.repl();
    let pw = crate::flavor::sql_str(repl.password.expose());
    sh.on(old, |s| {
        if !s.query(k.show_replica_status())?.is_empty() {
            s.exec(k.stop_replica())?;
        }
        if let Some(p) = k.pre_demote() {
            s.exec(p)?;
        }
        s.exec_with_secret(
            &k.change_source(host, port, Some((&repl.user, &pw)), true),
            &pw,
        )?;
        s.exec(k.start_replica())?;
        for st in k.make_read_only() {
            s.exec(st)?;
        }
        Ok(())
    })
    .map_err(failed)
}

fn pool(sh: &Shared, p: &PoolChange) -> StepResult {
    let h = sh.haproxy();
    h.set_addr(&p.backend, &p.slot, &p.addr, p.port)
        .map_err(failed)?;
    h.set_state(&p.backend, &p.slot, AdminState::Ready)
        .map_err(failed)?;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let slots = h.servers_state(&p.backend).map_err(failed)?;
        let s = slots
            .iter()
            .find(|s| s.name == p.slot)
            .ok_or_else(|| failed(anyhow!("{}/{} is gone", p.backend, p.slot)))?;
        if s.serving() && s.addr == p.addr && s.port == p.port {
            break;
        }
        if Instant::now() >= deadline {
            return Err(failed(anyhow!(
                "{}/{} is {} {} 15 s after it was pointed at {}:{} (the health check fails?)",
                p.backend,
                p.slot,
                s.endpoint(),
                s.state_word(),
                p.addr,
                p.port
            )));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let cfg = &sh.input.settings.haproxy_config;
    let text = std::fs::read_to_string(cfg)
        .with_context(|| format!("reading {}", cfg.display()))
        .map_err(failed)?;
    let want = format!("{}:{}", p.addr, p.port);
    if configured_server(&text, &p.backend, &p.slot).as_deref() != Some(want.as_str()) {
        let backup = sh
            .state_dir
            .join("mysql")
            .join(format!("{}.haproxy.cfg", sh.input.run_key));
        if !backup.exists() {
            opskit_core::util::write_atomic(&backup, text.as_bytes(), 0o600).map_err(failed)?;
        }
        let new_text =
            repoint_server_line(&text, &p.backend, &p.slot, &p.addr, p.port).map_err(failed)?;
        replace_config(&sh.input.settings.haproxy_binary, cfg, &new_text).map_err(failed)?;
    }
    Ok(())
}

fn verify(sh: &Shared, cx: &mut StepContext) -> StepResult {
    let input = &sh.input;
    let new = input.new_master.as_str();
    let k = sh.kind(new);
    let schema = &input.settings.marker_schema;
    let key = sql_str(&input.run_key);
    let marker = sh
        .on(new, |s| {
            s.exec(&format!("CREATE DATABASE IF NOT EXISTS `{schema}`"))?;
            s.exec(&format!(
                "CREATE TABLE IF NOT EXISTS `{schema}`.switchover_marker (run_key VARCHAR(128) \
                 PRIMARY KEY, written_at TIMESTAMP(6) NOT NULL, server_id INT UNSIGNED NOT NULL)"
            ))?;
            s.exec(&format!(
                "REPLACE INTO `{schema}`.switchover_marker VALUES ('{key}', NOW(6), @@server_id)"
            ))?;
            Ok(s.value(&format!("SELECT {}", k.executed_var()))?
                .unwrap_or_default()
                .replace('\n', ""))
        })
        .map_err(failed)?;
    let limit = input.settings.timeout_secs.max(10);
    let mut problems = Vec::new();
    for n in input.order().iter().filter(|n| n.as_str() != new) {
        let kn = sh.kind(n);
        let r = sh.on(n, |s| {
            let v = s
                .query_within(
                    &kn.wait_for_gtid(&marker, limit),
                    Duration::from_secs(limit) + sh.timeout(),
                )?
                .first()
                .and_then(|r| r.at(0).map(str::to_string));
            let seen = s.value(&format!(
                "SELECT COUNT(*) FROM `{schema}`.switchover_marker WHERE run_key = '{key}'"
            ))?;
            Ok((v, seen))
        });
        match r {
            Ok((v, seen))
                if v.as_deref().is_some_and(|v| !kn.wait_timed_out(v))
                    && seen.as_deref() == Some("1") => {}
            Ok((v, seen)) => problems.push(format!(
                "{n}: the marker did not arrive within {limit} s (wait {}, rows {})",
                v.unwrap_or_else(|| "NULL".into()),
                seen.unwrap_or_default()
            )),
            Err(e) => problems.push(format!("{n}: {e:#}")),
        }
    }
    let max = input.settings.max_lag_secs;
    let report = sh.discover();
    for s in &report.servers {
        let want = input.after.get(&s.name).cloned().flatten();
        if s.source != want {
            problems.push(format!(
                "{} replicates from {}, planned {}",
                s.name,
                s.source.as_deref().unwrap_or("nobody"),
                want.as_deref().unwrap_or("nobody")
            ));
        }
        if let Some(r) = &s.replication
            && (!r.running() || r.lag_secs.is_none_or(|l| l > max))
        {
            problems.push(format!(
                "{}: IO {} SQL {} lag {:?} (limit {max} s)",
                s.name, r.io_running, r.sql_running, r.lag_secs
            ));
        }
        if !s.errant.is_empty() {
            problems.push(format!("{}: errant {}", s.name, s.errant.join(",")));
        }
        if s.writable() != (s.name == new) {
            problems.push(format!(
                "{} is {}",
                s.name,
                if s.writable() {
                    "writable"
                } else {
                    "read-only"
                }
            ));
        }
    }
    let (dns, _) = sh.dns();
    match dns.query_a(&input.dns.name) {
        Ok(a) if a == [input.dns.new] => {}
        Ok(a) => problems.push(format!("DNS {} answers {a:?}", input.dns.name)),
        Err(e) => problems.push(format!("DNS: {e:#}")),
    }
    if let Some(p) = &input.pool {
        match sh.haproxy().servers_state(&p.backend) {
            Ok(slots) => match slots.iter().find(|s| s.name == p.slot) {
                Some(s) if s.addr == p.addr && s.port == p.port && s.serving() => {}
                Some(s) => problems.push(format!(
                    "{}/{} is {} {}",
                    p.backend,
                    p.slot,
                    s.endpoint(),
                    s.state_word()
                )),
                None => problems.push(format!("{}/{} is gone", p.backend, p.slot)),
            },
            Err(e) => problems.push(format!("HAProxy: {e:#}")),
        }
    }
    if !problems.is_empty() {
        return Err(failed(anyhow!(
            "the new topology is not as planned: {}",
            problems.join("; ")
        )));
    }
    cx.gauge(HALF_DONE, 0.0);
    if input.layout == Layout::Mirror {
        tracing::info!(
            "mirror layout in place: {}",
            super::render_paths(&input.after, &input.order())
        );
    }
    Ok(())
}
