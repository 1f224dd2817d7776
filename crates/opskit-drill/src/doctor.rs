//! The "gone away" drill (spec §5) on the lab's HAProxy and replicas: inject one fault
//! (HAProxy `timeout client 2s`), reproduce `General error: 2006` with a real PHP PDO client
//! through HAProxy, run the real `opskit mysql doctor` and check it ranks `timeout client`
//! first, run `opskit mysql probe-idle` and check it finds the 2 s cutoff (±10 %) and names
//! the timer, then restore HAProxy's config.
//!
//! The HAProxy log is emptied before the fault (the lab owns it), so the doctor reads this
//! incident only, as an operator would cut the log around an incident.

use std::time::Duration;

use anyhow::{Context as _, ensure};
use opskit_doctor::DoctorReport;
use opskit_doctor::haproxy_cfg::Timer;
use opskit_doctor::probe::ProbeReport;
use opskit_lab::lab::LabView;
use opskit_lab::pdo::{PdoAction, run_pdo};
use opskit_lab::{Component, HaproxyLab, HaproxyTimers, MysqlLab};

use crate::report::{Check, DrillReport};
use crate::{DrillContext, Section};

const RUNBOOK: &str = "doctor";
const CUTOFF_MS: f64 = 2000.0;

/// The doctor section.
pub struct DoctorDrill;

impl Section for DoctorDrill {
    fn needs(&self) -> &'static [Component] {
        &[Component::Mysql, Component::Haproxy]
    }

    fn run(&self, cx: &DrillContext, report: &mut DrillReport) {
        let views = HaproxyLab::from_state(cx.state)
            .and_then(|h| Ok((h, MysqlLab::from_state(cx.state)?)));
        let (hp, mysql) = match views {
            Ok(v) => v,
            Err(e) => {
                report.push(Check::new(RUNBOOK, "read the lab", false, format!("{e:#}"), 0.0));
                return;
            }
        };
        let mut step = |name: &str, f: &mut dyn FnMut() -> anyhow::Result<String>| {
            report.step(RUNBOOK, name, f)
        };
        let injected = step("inject HAProxy `timeout client 2s` (reload)", &mut || {
            std::fs::write(&hp.log_file, "").context("emptying the HAProxy log")?;
            hp.set_timers(&HaproxyTimers {
                client: "2s".into(),
                ..HaproxyTimers::default()
            })?;
            Ok(format!("{} rewritten and reloaded", hp.config.display()))
        });
        if injected {
            step("a PHP PDO client idle 3 s through HAProxy gets General error: 2006", &mut || {
                let o = run_pdo(
                    &cx.state.dir,
                    &hp.address,
                    hp.port,
                    "app",
                    &mysql.app_password_file,
                    PdoAction::Idle(Duration::from_secs(3)),
                )?;
                ensure!(o.gone_away() && o.phase == "after", "PDO said {o:?}");
                Ok(o.error.unwrap_or_default())
            });
            step("`opskit mysql doctor` ranks HAProxy timeout client first", &mut || {
                let inv = cx
                    .opskit
                    .run(&["--output", "json", "mysql", "doctor", "--app-idle", "3"])?;
                ensure!(inv.code == 0, "exit {}: {}", inv.code, inv.last_error());
                let r: DoctorReport = inv.parse()?;
                let top = r.top().context("nothing above info")?;
                ensure!(
                    top.cause == opskit_doctor::Cause::HaproxyClientTimeout,
                    "ranked first: {} ({})",
                    top.title,
                    top.cause.id()
                );
                Ok(format!("{}: {}", top.title, top.evidence.join("; ")))
            });
            step("`opskit mysql probe-idle` finds the 2 s cutoff and names timeout client", &mut || {
                let inv = cx
                    .opskit
                    .run(&["--output", "json", "mysql", "probe-idle", "--max", "5"])?;
                ensure!(inv.code == 0, "exit {}: {}", inv.code, inv.last_error());
                let p: ProbeReport = inv.parse()?;
                let cut = p.cutoff_ms.context("no cutoff found")? as f64;
                ensure!(
                    (cut - CUTOFF_MS).abs() <= CUTOFF_MS / 10.0,
                    "cutoff {cut} ms is not 2 s ± 10 %"
                );
                ensure!(
                    p.timer == Some(Timer::Client),
                    "cut by {}: {}",
                    p.timer.map_or("no timer named".to_string(), |t| format!("{t:?}")),
                    p.why.join("; ")
                );
                let ms = |v: Option<u64>| v.map_or("none".to_string(), |v| format!("{v} ms"));
                Ok(format!(
                    "cutoff ≈{cut} ms (longest idle that survived {}, shortest cut {}) by timeout client in {:.1} s",
                    ms(p.longest_survived_ms),
                    ms(p.shortest_failed_ms),
                    p.elapsed_ms as f64 / 1000.0
                ))
            });
        }
        step("restore HAProxy's config (reload)", &mut || {
            hp.set_timers(&HaproxyTimers::default())?;
            let pool = hp.pool()?;
            Ok(format!("{} servers in the read pool", pool.len()))
        });
    }
}
