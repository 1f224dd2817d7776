//! `opskit firewall` against the lab's Docker host: real iptables (nf_tables) in real network
//! namespaces, Docker 29's own rules, and listeners in every container. Each test has its own
//! lab (its own namespaces); the `Lab` guard deletes them even when an assertion fails.
//! Every verdict comes from probes made inside the namespaces, never from opskit's say-so.

use std::path::{Path, PathBuf};
use std::time::Duration;

use assert_cmd::Command;
use opskit_core::config::{Config, FirewallConfig, Reading};
use opskit_core::engine::{self, EngineOptions, OutcomeKind, RunOutcome, RunSummary};
use opskit_core::plan::{StepAction, StepContext, StepResult, StepSpec};
use opskit_core::proc;
use opskit_firewall::apply::{self, Job};
use opskit_firewall::matrix::{self, MatrixReport};
use opskit_firewall::persist::{self, APPLY_UNIT};
use opskit_firewall::ruleset::Ruleset;
use opskit_lab::{Component, FirewallLab, Lab, LabBuilder};

const PROBE: Duration = Duration::from_millis(700);

struct FwLab {
    lab: Lab,
    fw: FirewallLab,
}

fn up(extra: &[Component]) -> FwLab {
    let mut b = LabBuilder::temporary("opskit-fw-test")
        .unwrap()
        .with(Component::Firewall)
        .opskit_exe(assert_cmd::cargo::cargo_bin("opskit"));
    for c in extra {
        b = b.with(*c);
    }
    let lab = b.up().unwrap();
    let fw: FirewallLab = lab.view().unwrap();
    FwLab { lab, fw }
}

impl FwLab {
    /// The lab's `opskit.toml` with another reading, written beside it.
    fn config(&self, reading: Reading) -> PathBuf {
        let text = std::fs::read_to_string(self.lab.opskit_toml()).unwrap();
        let path = self.lab.dir().join(format!("opskit-{reading}.toml"));
        std::fs::write(
            &path,
            text.replace("reading = \"tiered\"", &format!("reading = \"{reading}\"")),
        )
        .unwrap();
        path
    }

    fn policy(&self, config: &Path) -> FirewallConfig {
        Config::load_file(config).unwrap().firewall
    }

    fn matrix(&self, config: &Path) -> MatrixReport {
        let cfg = self.policy(config);
        matrix::probe(&cfg, matrix::rows(&cfg, &self.fw.testbed()), PROBE).unwrap()
    }

    fn assert_matrix(&self, config: &Path, when: &str) {
        let m = self.matrix(config);
        assert!(m.passed(), "{when}:\n{}", m.render_table());
    }

    /// Runs exactly what the installed `opskit-firewall.service` runs.
    fn run_unit(&self, config: &Path) {
        let cfg = self.policy(config);
        let unit = std::fs::read_to_string(cfg.systemd_dir.path().join(APPLY_UNIT)).unwrap();
        let lines = persist::exec_lines(&unit);
        assert_eq!(lines.len(), 2, "{unit}");
        for argv in lines {
            let mut cmd = std::process::Command::new(&argv[0]);
            cmd.args(&argv[1..]);
            proc::run(&mut cmd, Duration::from_secs(30))
                .unwrap()
                .checked()
                .unwrap();
        }
    }

    fn user_rules(&self) -> usize {
        self.fw
            .iptables()
            .filter()
            .unwrap()
            .rules("DOCKER-USER")
            .map_or(0, <[String]>::len)
    }
}

fn opskit(config: &Path) -> Command {
    let mut cmd = Command::cargo_bin("opskit").unwrap();
    cmd.env_remove("OPSKIT_CONFIG").arg("--config").arg(config);
    cmd
}

fn summary(out: &std::process::Output) -> RunSummary {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not a RunSummary ({e}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[test]
fn the_matrix_holds_under_each_reading_with_bridge_netfilter_off_and_on() {
    let l = up(&[]);
    // Stock Docker 29 lets C reach A through the host's published port: the probes see it.
    let tiered = l.config(Reading::Tiered);
    let before = l.matrix(&tiered);
    let open: Vec<String> = before
        .mismatches()
        .iter()
        .map(|r| format!("{} → {}", r.row.from, r.row.to))
        .collect();
    assert!(
        open.iter()
            .any(|r| r.starts_with("Docker_C → host 192.168.1.100:8080")),
        "{}",
        before.render_table()
    );
    for reading in [Reading::Tiered, Reading::Strict] {
        let config = l.config(reading);
        opskit(&config).args(["firewall", "apply"]).assert().code(0);
        for brnf in [false, true] {
            l.fw.set_bridge_nf_call_iptables(brnf).unwrap();
            l.assert_matrix(
                &config,
                &format!("{reading}, bridge-nf-call-iptables={brnf}"),
            );
        }
        let out = opskit(&config)
            .args(["--output", "json", "firewall", "verify", "--probe", "--lab"])
            .arg(l.lab.dir())
            .output()
            .unwrap();
        let s = summary(&out);
        assert_eq!(out.status.code(), Some(0), "{s:?}");
        assert_eq!(s.counters["drift_rules"], 0.0);
        assert_eq!(s.counters["matrix_mismatches"], 0.0);
        assert!(s.counters["matrix_rows"] >= 27.0, "{s:?}");
    }
}

#[test]
fn the_policy_survives_a_reboot_and_a_docker_restart() {
    let l = up(&[]);
    let config = l.lab.opskit_toml().to_path_buf();
    opskit(&config)
        .args(["firewall", "persist"])
        .assert()
        .code(0);
    let rules = Ruleset::compile(&l.policy(&config))
        .chain_rules("DOCKER-USER")
        .len();
    for brnf in [false, true] {
        l.fw.set_bridge_nf_call_iptables(brnf).unwrap();
        // Reboot: no rules at all; the unit runs before Docker, then Docker starts.
        l.fw.reboot().unwrap();
        assert_eq!(l.fw.iptables().filter().unwrap().rules("DOCKER-USER"), None);
        l.run_unit(&config);
        l.fw.docker_start().unwrap();
        l.assert_matrix(&config, &format!("after a reboot, bridge-nf={brnf}"));
        opskit(&config)
            .args(["firewall", "verify"])
            .assert()
            .code(0);
        // Docker restart: Docker rebuilds its chains, then the unit runs again.
        l.fw.docker_start().unwrap();
        l.run_unit(&config);
        l.assert_matrix(
            &config,
            &format!("after a Docker restart, bridge-nf={brnf}"),
        );
        assert_eq!(l.user_rules(), rules, "one copy of the policy");
    }
    // A firewalld reload on EL8: Docker recreates DOCKER-USER empty. Verify sees the drift,
    // the next run of the unit (the next Docker start) repairs it.
    l.fw.empty_user_chain().unwrap();
    assert!(!l.matrix(&config).passed());
    opskit(&config)
        .args(["firewall", "verify"])
        .assert()
        .code(1);
    l.run_unit(&config);
    opskit(&config)
        .args(["firewall", "verify"])
        .assert()
        .code(0);
}

#[test]
fn apply_is_idempotent_its_dry_run_changes_nothing_and_it_refuses_without_docker_user() {
    let l = up(&[]);
    let config = l.lab.opskit_toml().to_path_buf();
    let untouched = l.fw.save_all().unwrap();
    let dry = opskit(&config)
        .args(["firewall", "apply", "--dry-run"])
        .assert()
        .code(0);
    let plan = String::from_utf8(dry.get_output().stdout.clone()).unwrap();
    for step in ["[preflight]", "[test]", "[load]", "[confirm]"] {
        assert!(plan.contains(step), "{plan}");
    }
    assert!(plan.contains("--test --noflush") && plan.contains("-w 10 --noflush <<'EOF'"));
    assert_eq!(
        l.fw.save_all().unwrap(),
        untouched,
        "the dry run changed the rules"
    );

    opskit(&config).args(["firewall", "apply"]).assert().code(0);
    let once = l.fw.save_all().unwrap();
    assert_ne!(once, untouched);
    opskit(&config).args(["firewall", "apply"]).assert().code(0);
    assert_eq!(
        l.fw.save_all().unwrap(),
        once,
        "a second apply changed the rules"
    );
    assert_eq!(l.user_rules(), 8);

    // No DOCKER-USER (Docker not running): refused, exit 3, nothing changed.
    l.fw.reboot().unwrap();
    let empty = l.fw.save_all().unwrap();
    let out = opskit(&config).args(["firewall", "apply"]).assert().code(3);
    let err = String::from_utf8_lossy(&out.get_output().stderr).to_string();
    assert!(err.contains("DOCKER-USER chain does not exist"), "{err}");
    assert_eq!(l.fw.save_all().unwrap(), empty);

    // restore and save of two different backends: refused before anything is read.
    l.fw.docker_start().unwrap();
    let mixed = l.lab.dir().join("mixed.toml");
    std::fs::write(
        &mixed,
        std::fs::read_to_string(&config).unwrap().replace(
            "iptables_restore = \"/usr/sbin/iptables-restore\"",
            "iptables_restore = \"/usr/sbin/iptables-legacy-restore\"",
        ),
    )
    .unwrap();
    let out = opskit(&mixed).args(["firewall", "apply"]).assert().code(3);
    let err = String::from_utf8_lossy(&out.get_output().stderr).to_string();
    assert!(err.contains("must drive the same backend"), "{err}");
}

/// A step that fails after the load: the engine must undo the load.
struct FailAfterLoad;

impl StepAction for FailAfterLoad {
    fn execute(&mut self, _cx: &mut StepContext) -> StepResult {
        Err(anyhow::anyhow!("injected failure after the load").into())
    }
}

fn run_with_failure(job: &Job, state: &Path) -> RunOutcome {
    let mut plan = apply::plan(job, None, state, chrono::Utc::now());
    plan.step(StepSpec::new("fail", "fail on purpose"), FailAfterLoad);
    let opts = EngineOptions {
        state_dir: state.to_path_buf(),
        alerter: None,
        metrics: None,
        progress: false,
    };
    engine::run(plan, &opts).unwrap().outcome
}

#[test]
fn a_failed_apply_leaves_the_chains_byte_identical() {
    let l = up(&[]);
    let state = tempfile::tempdir().unwrap();
    let cfg = l.policy(l.lab.opskit_toml());
    let job = Job::new(&cfg);
    let ipt = l.fw.iptables();

    // 1. The kernel refuses the transaction: nothing of it is applied. (On nf_tables,
    //    --test passes a jump to a missing chain; the throw-away namespace load does not.)
    let bad = job
        .ruleset
        .restore_text(false)
        .replace("COMMIT\n", "-A DOCKER-USER -j OPSKIT-MISSING\nCOMMIT\n");
    let before = l.fw.save_all().unwrap();
    assert!(ipt.load(&bad).is_err());
    assert_eq!(l.fw.save_all().unwrap(), before);
    ipt.test(&bad)
        .expect("nf_tables --test does not see the missing chain");
    assert!(ipt.canonical(&bad).is_err(), "the trial load must catch it");

    // 2. A failure after the load, when OPSKIT-INBOUND did not exist yet: undone.
    let outcome = run_with_failure(&job, state.path());
    assert!(
        matches!(&outcome, RunOutcome::Failed { rolled_back: true, step, .. } if step == "fail"),
        "{outcome:?}"
    );
    assert_eq!(l.fw.save_all().unwrap(), before);

    // 3. The same over an existing (strict) policy: back to exactly that policy.
    let strict = l.config(Reading::Strict);
    opskit(&strict).args(["firewall", "apply"]).assert().code(0);
    let strict_rules = l.fw.save_all().unwrap();
    let outcome = run_with_failure(&job, state.path());
    assert!(
        matches!(
            outcome,
            RunOutcome::Failed {
                rolled_back: true,
                ..
            }
        ),
        "{outcome:?}"
    );
    assert_eq!(l.fw.save_all().unwrap(), strict_rules);
    l.assert_matrix(&strict, "after the rollback to the strict policy");
}

#[test]
fn verify_exits_1_alerts_and_exports_the_drift() {
    let l = up(&[Component::Webhook]);
    let config = l.lab.opskit_toml().to_path_buf();
    opskit(&config).args(["firewall", "apply"]).assert().code(0);
    // Someone deletes the rule that keeps C away from A and B.
    l.fw.run_in_host(
        &[
            "iptables",
            "-w",
            "-D",
            "DOCKER-USER",
            "-i",
            "br-c",
            "-o",
            "br-ab",
            "-j",
            "DROP",
        ],
        None,
    )
    .unwrap()
    .checked()
    .unwrap();
    let out = opskit(&config)
        .args(["--output", "json", "firewall", "verify", "--probe", "--lab"])
        .arg(l.lab.dir())
        .output()
        .unwrap();
    let s = summary(&out);
    assert_eq!(out.status.code(), Some(1));
    assert_ne!(s.outcome, OutcomeKind::Succeeded);
    assert_eq!(s.failed_step.as_deref(), Some("verdict"));
    assert_eq!(s.counters["drift_rules"], 1.0);
    // C reaches A through the host's published port and the br-ab gateway again; direct
    // routing stays blocked by Docker, and B's private port by OPSKIT-INBOUND.
    assert_eq!(s.counters["matrix_mismatches"], 2.0, "{s:?}");
    let prom = std::fs::read_to_string(l.lab.dir().join("metrics/opskit_firewall.prom")).unwrap();
    assert!(
        prom.contains("opskit_firewall_drift_rules{runbook=\"firewall\"} 1\n"),
        "{prom}"
    );
    assert!(
        prom.contains("opskit_last_run_success{runbook=\"firewall\"} 0\n"),
        "{prom}"
    );
    let alerts = l.lab.webhook().unwrap().received().unwrap();
    let alert = alerts.last().expect("an alert was posted");
    assert_eq!(alert["runbook"], "firewall");
    assert_eq!(alert["step"], "verdict");
    assert!(
        alert["error"]
            .as_str()
            .unwrap()
            .contains("-A DOCKER-USER -i br-c -o br-ab -j DROP"),
        "{alert}"
    );
    opskit(&config).args(["firewall", "apply"]).assert().code(0);
    opskit(&config)
        .args(["firewall", "verify"])
        .assert()
        .code(0);
    let prom = std::fs::read_to_string(l.lab.dir().join("metrics/opskit_firewall.prom")).unwrap();
    assert!(
        prom.contains("opskit_firewall_drift_rules{runbook=\"firewall\"} 0\n"),
        "{prom}"
    );
}

#[test]
fn the_spec_commands_leave_the_same_rules_as_apply() {
    let l = up(&[]);
    let config = l.lab.opskit_toml().to_path_buf();
    let script = l.lab.dir().join("commands.sh");
    let out = opskit(&config)
        .args(["firewall", "render"])
        .assert()
        .code(0);
    std::fs::write(&script, &out.get_output().stdout).unwrap();
    let run = || {
        proc::run(
            std::process::Command::new("sh").arg(&script),
            Duration::from_secs(60),
        )
        .unwrap()
        .checked()
        .unwrap();
    };
    run();
    let by_commands = l.fw.save_all().unwrap();
    l.assert_matrix(&config, "after the plain commands");
    run();
    assert_eq!(
        l.fw.save_all().unwrap(),
        by_commands,
        "running them twice differs"
    );
    opskit(&config).args(["firewall", "apply"]).assert().code(0);
    assert_eq!(
        l.fw.save_all().unwrap(),
        by_commands,
        "apply differs from the commands"
    );
    // The persistence part wrote the rules file and enabled the unit in the lab's root.
    let cfg = l.policy(&config);
    assert!(cfg.rules_file.path().exists());
    // (The link points into the offline root, so it is looked at, not followed.)
    let wants = cfg
        .systemd_dir
        .path()
        .join("multi-user.target.wants")
        .join(APPLY_UNIT);
    assert!(
        std::fs::symlink_metadata(&wants).is_ok(),
        "{} missing",
        wants.display()
    );
}

#[test]
fn lab_down_removes_every_namespace_even_after_the_holder_was_killed() {
    let l = up(&[]);
    let names = l.fw.namespaces();
    assert_eq!(l.fw.existing_namespaces(), names);
    // SIGKILL: the holder cannot clean up. The next `up` replaces it and removes the stale ones.
    let holder = l.lab.state().server("firewall").unwrap().identity();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(holder.pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    while holder.is_alive() {
        std::thread::sleep(Duration::from_millis(20));
    }
    let again = opskit_lab::up(
        l.lab.dir(),
        &[Component::Firewall],
        Some(assert_cmd::cargo::cargo_bin("opskit")),
    )
    .unwrap();
    assert_ne!(again.state.server("firewall").unwrap().pid, holder.pid);
    assert_eq!(l.fw.existing_namespaces(), names);
    let listed = String::from_utf8(
        std::process::Command::new("ip")
            .args(["netns", "list"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    for n in &names {
        assert!(listed.contains(n.as_str()), "{n} not in {listed}");
    }
    let FwLab { lab, fw } = l;
    lab.down().unwrap();
    assert_eq!(fw.existing_namespaces(), Vec::<String>::new());
}

#[test]
fn apply_and_verify_work_on_the_legacy_backend_too() {
    let l = up(&[]);
    let config = l.lab.opskit_toml().to_path_buf();
    // A legacy (x_tables) ruleset beside Docker's nf_tables one, as when Docker drives
    // iptables-legacy: DOCKER-USER and FORWARD's jump to it in the legacy tables. Packets pass
    // both rulesets, so the matrix judges the legacy policy together with Docker's rules.
    let legacy_base =
        "*filter\n:FORWARD ACCEPT [0:0]\n:DOCKER-USER - [0:0]\n-A FORWARD -j DOCKER-USER\nCOMMIT\n";
    l.fw.run_in_host(
        &["/usr/sbin/iptables-legacy-restore", "-w", "10"],
        Some(legacy_base),
    )
    .unwrap()
    .checked()
    .unwrap();
    let legacy = l.lab.dir().join("legacy.toml");
    std::fs::write(
        &legacy,
        std::fs::read_to_string(&config)
            .unwrap()
            .replace(
                "/usr/sbin/iptables-restore",
                "/usr/sbin/iptables-legacy-restore",
            )
            .replace("/usr/sbin/iptables-save", "/usr/sbin/iptables-legacy-save"),
    )
    .unwrap();
    let nft_before = l.fw.save_all().unwrap();
    opskit(&legacy)
        .args(["firewall", "verify"])
        .assert()
        .code(1);
    opskit(&legacy).args(["firewall", "apply"]).assert().code(0);
    opskit(&legacy).args(["firewall", "apply"]).assert().code(0);
    opskit(&legacy)
        .args(["firewall", "verify"])
        .assert()
        .code(0);
    assert_eq!(
        l.fw.save_all().unwrap(),
        nft_before,
        "the nf_tables rules were touched"
    );
    l.assert_matrix(&legacy, "with the policy in the legacy tables");
    // Unlike nf_tables, legacy --test does catch a jump to a missing chain.
    let cfg = l.policy(&legacy);
    let ipt = opskit_firewall::iptables::Iptables::from_config(&cfg);
    let bad = Ruleset::compile(&cfg)
        .restore_text(false)
        .replace("COMMIT\n", "-A DOCKER-USER -j OPSKIT-MISSING\nCOMMIT\n");
    assert!(ipt.test(&bad).is_err());
}
