//! The firewall drill (spec §3) on the lab's Docker host: render, a dry run that changes
//! nothing, apply, the whole reachability matrix with br_netfilter off and on, an idempotent
//! re-apply, persist, a simulated reboot and a simulated Docker restart (each followed by
//! exactly what the installed unit runs), and drift caught by verify with its alert.
//! Every verdict comes from probes made inside the namespaces (the "servers" themselves).

use std::time::{Duration, Instant};

use opskit_core::config::{Config, FirewallConfig};
use opskit_core::engine::{OutcomeKind, RunSummary};
use opskit_core::plan::PlanDescription;
use opskit_core::proc;
use opskit_firewall::matrix::{self, MatrixReport};
use opskit_firewall::persist::{self, APPLY_UNIT};
use opskit_firewall::render::Rendered;
use opskit_firewall::ruleset::{Ruleset, USER_CHAIN};
use opskit_lab::lab::LabView as _;
use opskit_lab::{Component, FirewallLab, WebhookReceiver};

use crate::report::{Check, DrillReport};
use crate::run::Opskit;
use crate::{DrillContext, Section};

const RUNBOOK: &str = "firewall";
/// A denied probe waits this long.
const PROBE_TIMEOUT: Duration = Duration::from_millis(700);

/// The firewall section.
pub struct FirewallDrill;

impl Section for FirewallDrill {
    fn needs(&self) -> &'static [Component] {
        &[Component::Firewall, Component::Webhook]
    }

    fn run(&self, cx: &DrillContext, report: &mut DrillReport) {
        let setup = FirewallLab::from_state(cx.state).and_then(|fw| {
            let cfg = Config::load_file(cx.opskit.config())
                .map_err(|e| anyhow::anyhow!("{e}"))?
                .firewall;
            Ok((fw, cfg))
        });
        let (fw, cfg) = match setup {
            Ok(v) => v,
            Err(e) => {
                report.push(Check::new(RUNBOOK, "the lab's Docker host is there", false, format!("{e:#}"), 0.0));
                return;
            }
        };
        let d = Drill {
            opskit: cx.opskit,
            lab_dir: cx.state.dir.display().to_string(),
            fw,
            cfg,
        };
        d.render(report);
        d.baseline(report);
        d.dry_run(report);
        d.apply(report);
        for brnf in [false, true] {
            d.bridge_nf(brnf, report);
            d.matrix(&format!("after apply, bridge-nf-call-iptables={}", u8::from(brnf)), brnf, report);
        }
        d.reapply(report);
        d.persist(report);
        d.reboot(report);
        d.docker_restart(report);
        d.drift(cx, report);
        d.verify_probe(report);
    }
}

struct Drill<'a> {
    opskit: &'a Opskit,
    lab_dir: String,
    fw: FirewallLab,
    cfg: FirewallConfig,
}

impl Drill<'_> {
    fn check(&self, report: &mut DrillReport, name: &str, passed: bool, detail: impl Into<String>, clock: Instant) {
        report.push(Check::new(RUNBOOK, name, passed, detail, clock.elapsed().as_secs_f64()));
    }

    fn probe(&self) -> anyhow::Result<MatrixReport> {
        matrix::probe(&self.cfg, matrix::rows(&self.cfg, &self.fw.testbed()), PROBE_TIMEOUT)
    }

    /// Runs `opskit --output json <args>` and reads the RunSummary it prints.
    fn run_summary(&self, args: &[&str]) -> Result<(i32, RunSummary), String> {
        let mut all = vec!["--output", "json"];
        all.extend(args);
        let inv = self.opskit.run(&all).map_err(|e| format!("{e:#}"))?;
        let s = inv
            .parse::<RunSummary>()
            .map_err(|e| format!("exit {}: {e:#}; {}", inv.code, inv.last_error()))?;
        Ok((inv.code, s))
    }

    fn render(&self, report: &mut DrillReport) {
        let clock = Instant::now();
        let (ok, detail) = match self.opskit.run(&["--output", "json", "firewall", "render"]) {
            Ok(inv) => match inv.parse::<Rendered>() {
                Ok(r) => {
                    let missing: Vec<&str> = ["§3.1", "§3.2", "§3.3", "§3.4"]
                        .into_iter()
                        .filter(|c| !r.text.contains(&format!("# {c} ")))
                        .collect();
                    let commands = r.text.lines().filter(|l| l.contains("iptables -w -A ")).count();
                    (
                        inv.code == 0 && missing.is_empty() && commands > 0,
                        format!(
                            "{commands} iptables rules, each under a comment citing its sentence; \
                             sentences not cited: {missing:?}"
                        ),
                    )
                }
                Err(e) => (false, format!("{e:#}")),
            },
            Err(e) => (false, format!("{e:#}")),
        };
        self.check(report, "render prints the spec's commands, citing all four sentences of §3", ok, detail, clock);
    }

    /// A fresh boot with Docker and no policy (also when an earlier drill left one behind).
    fn baseline(&self, report: &mut DrillReport) {
        let clock = Instant::now();
        let (ok, detail) = match self
            .fw
            .reboot()
            .and_then(|()| self.fw.docker_start())
            .and_then(|()| self.probe())
        {
            Ok(m) => {
                let open: Vec<String> = m
                    .mismatches()
                    .iter()
                    .map(|r| format!("{} → {}", r.row.from, r.row.to))
                    .collect();
                (
                    open.iter().any(|r| r.starts_with("Docker_C → host")),
                    format!("without the policy {} of {} rows differ, e.g. {:?}", open.len(), m.rows.len(), open.first()),
                )
            }
            Err(e) => (false, format!("{e:#}")),
        };
        self.check(
            report,
            "control: stock Docker 29 lets Docker_C reach Docker_A through the host's published port",
            ok,
            detail,
            clock,
        );
    }

    fn dry_run(&self, report: &mut DrillReport) {
        let clock = Instant::now();
        let before = self.fw.save_all();
        let (ok, detail) = match self.opskit.run(&["--output", "json", "firewall", "apply", "--dry-run"]) {
            Ok(inv) => match inv.parse::<PlanDescription>() {
                Ok(p) => {
                    let steps: Vec<&str> = p.steps.iter().map(|s| s.id.as_str()).collect();
                    let same = before.is_ok() && before.as_ref().ok() == self.fw.save_all().as_ref().ok();
                    (
                        inv.code == 0 && steps == ["preflight", "test", "load", "confirm"] && same,
                        format!("steps {steps:?}; rules unchanged: {same}"),
                    )
                }
                Err(e) => (false, format!("{e:#}")),
            },
            Err(e) => (false, format!("{e:#}")),
        };
        self.check(report, "apply --dry-run prints the plan and changes no rule", ok, detail, clock);
    }

    fn apply(&self, report: &mut DrillReport) {
        let clock = Instant::now();
        let (ok, detail) = match self.run_summary(&["firewall", "apply"]) {
            Ok((code, s)) => (
                code == 0 && s.outcome == OutcomeKind::Succeeded,
                format!("exit {code}, steps {:?}, {:.2}s", s.executed, s.duration_secs),
            ),
            Err(e) => (false, e),
        };
        self.check(report, "apply: preflight, test, one atomic load, confirm", ok, detail, clock);
    }

    fn bridge_nf(&self, on: bool, report: &mut DrillReport) {
        if let Err(e) = self.fw.set_bridge_nf_call_iptables(on) {
            self.check(report, "set net.bridge.bridge-nf-call-iptables", false, format!("{e:#}"), Instant::now());
        }
    }

    /// The matrix, from inside the namespaces; with `per_row`, one check per row.
    fn matrix(&self, when: &str, per_row: bool, report: &mut DrillReport) {
        let clock = Instant::now();
        match self.probe() {
            Ok(m) if per_row => {
                for r in &m.rows {
                    self.check(
                        report,
                        &format!("{when}: {} → {} is {}", r.row.from, r.row.to, r.row.expect),
                        r.pass,
                        format!("{}; {}", r.detail, r.row.why),
                        clock,
                    );
                }
            }
            Ok(m) => {
                let bad: Vec<String> = m
                    .mismatches()
                    .iter()
                    .map(|r| format!("{} → {} (want {}, saw {}: {})", r.row.from, r.row.to, r.row.expect, r.seen, r.detail))
                    .collect();
                self.check(
                    report,
                    &format!("{when}: every row of the reachability matrix holds"),
                    m.passed(),
                    if bad.is_empty() {
                        format!("{} rows probed from inside the namespaces", m.rows.len())
                    } else {
                        format!("{} of {} rows differ: {}", bad.len(), m.rows.len(), bad.join("; "))
                    },
                    clock,
                );
            }
            Err(e) => self.check(report, &format!("{when}: the matrix is probed"), false, format!("{e:#}"), clock),
        }
    }

    fn user_rules(&self) -> usize {
        self.fw
            .iptables()
            .filter()
            .ok()
            .and_then(|t| t.rules(USER_CHAIN).map(<[String]>::len))
            .unwrap_or(0)
    }

    fn one_copy(&self) -> (bool, String) {
        let want = Ruleset::compile(&self.cfg).chain_rules(USER_CHAIN).len();
        let have = self.user_rules();
        (have == want, format!("DOCKER-USER holds {have} rules, the policy has {want}"))
    }

    fn reapply(&self, report: &mut DrillReport) {
        let clock = Instant::now();
        let before = self.fw.save_all().ok();
        let (ok, detail) = match self.run_summary(&["firewall", "apply"]) {
            Ok((code, _)) => {
                let same = before.is_some() && before == self.fw.save_all().ok();
                let (one, count) = self.one_copy();
                (code == 0 && same && one, format!("exit {code}; every table unchanged: {same}; {count}"))
            }
            Err(e) => (false, e),
        };
        self.check(report, "a second apply changes nothing (one copy of the policy)", ok, detail, clock);
    }

    fn persist(&self, report: &mut DrillReport) {
        let clock = Instant::now();
        let unit = self.cfg.systemd_dir.path().join(APPLY_UNIT);
        let (ok, detail) = match self.run_summary(&["firewall", "persist"]) {
            Ok((code, _)) => match std::fs::read_to_string(&unit) {
                Ok(text) => {
                    let bound = ["Before=docker.service", "PartOf=docker.service", "WantedBy=multi-user.target docker.service"]
                        .iter()
                        .all(|l| text.lines().any(|x| x == *l));
                    (
                        code == 0 && bound && self.cfg.rules_file.path().exists(),
                        format!("exit {code}; {} bound to docker.service: {bound}", unit.display()),
                    )
                }
                Err(e) => (false, format!("exit {code}; {}: {e}", unit.display())),
            },
            Err(e) => (false, e),
        };
        self.check(report, "persist installs the rules file and the unit bound to docker.service", ok, detail, clock);
    }

    /// Runs exactly the commands of the installed unit.
    fn run_unit(&self) -> anyhow::Result<()> {
        let unit = std::fs::read_to_string(self.cfg.systemd_dir.path().join(APPLY_UNIT))?;
        for argv in persist::exec_lines(&unit) {
            let mut cmd = std::process::Command::new(&argv[0]);
            cmd.args(&argv[1..]);
            proc::run(&mut cmd, Duration::from_secs(60))?.checked()?;
        }
        Ok(())
    }

    fn reboot(&self, report: &mut DrillReport) {
        let clock = Instant::now();
        let steps = self
            .fw
            .reboot()
            .and_then(|()| self.run_unit())
            .and_then(|()| self.fw.docker_start());
        if let Err(e) = steps {
            self.check(report, "simulated reboot: no rules, the unit, then Docker", false, format!("{e:#}"), clock);
            return;
        }
        self.matrix("after a simulated reboot (every table flushed, the unit's commands, Docker started)", false, report);
    }

    fn docker_restart(&self, report: &mut DrillReport) {
        let clock = Instant::now();
        if let Err(e) = self.fw.docker_start().and_then(|()| self.run_unit()) {
            self.check(report, "simulated Docker restart", false, format!("{e:#}"), clock);
            return;
        }
        self.matrix("after a simulated Docker restart (Docker's chains rebuilt, then the unit's commands)", false, report);
        let (one, detail) = self.one_copy();
        self.check(report, "after the Docker restart the policy is there once", one, detail, clock);
    }

    fn drift(&self, cx: &DrillContext, report: &mut DrillReport) {
        let clock = Instant::now();
        let alerts_before = WebhookReceiver::from_state(cx.state)
            .and_then(|w| w.received())
            .map(|a| a.len())
            .unwrap_or(0);
        if let Err(e) = self.fw.empty_user_chain() {
            self.check(report, "drift: DOCKER-USER emptied (what a firewalld reload does)", false, format!("{e:#}"), clock);
            return;
        }
        let (ok, detail) = match self.run_summary(&["firewall", "verify"]) {
            Ok((code, s)) => {
                let drift = s.counters.get("drift_rules").copied().unwrap_or(0.0);
                let alerts = WebhookReceiver::from_state(cx.state).and_then(|w| w.received());
                let alerted = alerts.as_ref().is_ok_and(|a| {
                    a.len() > alerts_before && a.last().is_some_and(|v| v["runbook"] == RUNBOOK)
                });
                (
                    code == 1 && drift > 0.0 && alerted,
                    format!("exit {code}, drift_rules {drift}, alert received: {alerted}"),
                )
            }
            Err(e) => (false, e),
        };
        self.check(report, "verify exits 1 with the drift and raises the alert when DOCKER-USER is emptied", ok, detail, clock);
        let clock = Instant::now();
        let (ok, detail) = match self.run_unit().map_err(|e| format!("{e:#}")).and_then(|()| self.run_summary(&["firewall", "verify"])) {
            Ok((code, s)) => {
                let drift = s.counters.get("drift_rules").copied().unwrap_or(-1.0);
                (code == 0 && drift == 0.0, format!("exit {code}, drift_rules {drift}"))
            }
            Err(e) => (false, e),
        };
        self.check(report, "the unit's next run repairs it: verify exits 0 with drift 0", ok, detail, clock);
    }

    fn verify_probe(&self, report: &mut DrillReport) {
        let clock = Instant::now();
        let (ok, detail) = match self.run_summary(&["firewall", "verify", "--probe", "--lab", &self.lab_dir]) {
            Ok((code, s)) => {
                let rows = s.counters.get("matrix_rows").copied().unwrap_or(0.0);
                let bad = s.counters.get("matrix_mismatches").copied().unwrap_or(-1.0);
                (code == 0 && rows > 0.0 && bad == 0.0, format!("exit {code}, {rows} rows, {bad} mismatches"))
            }
            Err(e) => (false, e),
        };
        self.check(report, "opskit firewall verify --probe agrees", ok, detail, clock);
    }
}
