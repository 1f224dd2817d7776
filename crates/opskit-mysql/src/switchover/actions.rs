//! The bodies of the steps that do more than one statement: drain, freeze, catch-up, the DNS
//! move, attach, the pool change and the final verification.

use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use opskit_core::plan::{StepContext, StepResult};

use super::steps::{CATCH_UP_SECONDS, FREEZE_SECONDS, HALF_DONE, failed};
use super::{Layout, PoolChange, Shared};
use crate::dns::UpdateOutcome;
use crate::flavor::{Flavor, sql_str};
use crate::gtid;
use crate::haproxy::{AdminState, configured_server, replace_config, repoint_server_line};
use crate::topology::ReplicaStatus;

/// Waits until `name` replicates with lag ≤ the limit.
pub(super) fn wait_lag(sh: &Shared, name: &str, limit: Duration) -> anyhow::Result<()> {
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

pub(super) fn drain(sh: &Shared, p: &PoolChange, cx: &mut StepContext) -> StepResult {
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

pub(super) fn freeze(sh: &Shared, cx: &mut StepContext) -> StepResult {
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

pub(super) fn catch_up(sh: &Shared, g: &str, cx: &mut StepContext) -> StepResult {
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

pub(super) fn move_dns(sh: &Shared, cx: &mut StepContext) -> StepResult {
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

pub(super) fn attach(sh: &Shared) -> StepResult {
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

pub(super) fn pool(sh: &Shared, p: &PoolChange) -> StepResult {
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

pub(super) fn verify(sh: &Shared, cx: &mut StepContext) -> StepResult {
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
