//! Persistence on Rocky Linux 8 without `iptables-services`: the ruleset in a file, a oneshot
//! unit that loads it with `iptables-restore --noflush`, and a verify service and timer.
//!
//! Why not `iptables-services` (`iptables-save > /etc/sysconfig/iptables`): its unit restores
//! *without* `--noflush`, so a `systemctl restart iptables` wipes Docker's chains, and the saved
//! file freezes Docker's dynamic rules (container addresses, DNATs) into the next boot.
//!
//! `opskit-firewall.service` is ordered `Before=docker.service`: the policy is in place before
//! dockerd starts the restart-policy containers, so they are never reachable unfiltered at boot
//! (Docker keeps an existing `DOCKER-USER` and puts its `FORWARD` jump first). `PartOf=` and
//! `WantedBy=docker.service` bind it to Docker: every start, stop or restart of docker.service
//! runs it again. `opskit-firewall-verify.service` runs after every Docker start and from the
//! timer: drift exits 1, raises the alert and sets `opskit_firewall_drift_rules`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use chrono::{DateTime, Utc};
use opskit_core::config::FirewallConfig;
use opskit_core::plan::{Plan, StepAction, StepContext, StepError, StepResult, StepSpec};
use opskit_core::proc::{self, shell_quote};
use opskit_core::util::write_atomic;

use crate::apply::{Job, RUNBOOK, policy_facts, run_key};
use crate::iptables::find_program;

/// The unit that loads the policy.
pub const APPLY_UNIT: &str = "opskit-firewall.service";
/// The unit that verifies it.
pub const VERIFY_UNIT: &str = "opskit-firewall-verify.service";
/// The timer of [`VERIFY_UNIT`].
pub const VERIFY_TIMER: &str = "opskit-firewall-verify.timer";
pub use opskit_core::config::firewall::SYSTEM_UNIT_DIR;
/// Time limit of one systemctl call.
const SYSTEMCTL_TIMEOUT: Duration = Duration::from_secs(90);

/// Where and how the units are installed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The running system: `systemctl daemon-reload`, `enable`, `start`.
    Live,
    /// An image or chroot at this root: `systemctl --root=<root> enable` only.
    Offline(PathBuf),
}

impl Target {
    /// The target of a unit directory (`None` unless it ends in `/etc/systemd/system`).
    pub fn of(systemd_dir: &Path) -> Option<Target> {
        if systemd_dir == Path::new(SYSTEM_UNIT_DIR) {
            return Some(Target::Live);
        }
        let s = systemd_dir.to_str()?;
        let root = s.strip_suffix(SYSTEM_UNIT_DIR)?;
        (!root.is_empty()).then(|| Target::Offline(PathBuf::from(root)))
    }
}

/// What the units run: the opskit binary and config for verify, the rules file for the load.
#[derive(Debug, Clone)]
pub struct Install {
    /// The checked settings.
    pub cfg: FirewallConfig,
    /// The `opskit` binary the verify unit runs.
    pub opskit: PathBuf,
    /// The config file the verify unit passes (`None`: opskit's own lookup order).
    pub config_file: Option<PathBuf>,
}

impl Install {
    /// The argv (absolute) that loads the rules file, `--test` or for real.
    pub fn load_argv(&self, test: bool) -> anyhow::Result<Vec<String>> {
        let mut argv = Vec::new();
        if let Some(ns) = self.cfg.netns.get() {
            argv.push(find_program("ip")?.display().to_string());
            argv.extend(["netns".into(), "exec".into(), ns.to_string()]);
        }
        argv.push(self.cfg.iptables_restore.to_string());
        argv.extend(["-w".into(), "10".into()]);
        if test {
            argv.push("--test".into());
        }
        argv.push("--noflush".into());
        argv.push(self.cfg.rules_file.to_string());
        Ok(argv)
    }

    /// `opskit-firewall.service`.
    pub fn apply_unit(&self) -> anyhow::Result<String> {
        let line = |argv: Vec<String>| {
            argv.iter()
                .map(|a| shell_quote(a))
                .collect::<Vec<_>>()
                .join(" ")
        };
        Ok(format!(
            "# Installed by `opskit firewall persist`: spec §3, the policy survives reboots and\n\
             # Docker restarts. Docs: docs/runbooks/firewall.md\n\
             [Unit]\n\
             Description=opskit Docker firewall policy (DOCKER-USER, OPSKIT-INBOUND)\n\
             # Before dockerd: its restart-policy containers are never reachable unfiltered.\n\
             # Docker keeps an existing DOCKER-USER and puts its FORWARD jump first.\n\
             Before=docker.service\n\
             After=network-pre.target\n\
             Wants=network-pre.target\n\
             # Stopped and started again with every stop, start and restart of Docker.\n\
             PartOf=docker.service\n\
             \n\
             [Service]\n\
             Type=oneshot\n\
             RemainAfterExit=yes\n\
             ExecStartPre={}\n\
             ExecStart={}\n\
             \n\
             [Install]\n\
             WantedBy=multi-user.target docker.service\n",
            line(self.load_argv(true)?),
            line(self.load_argv(false)?)
        ))
    }

    /// `opskit-firewall-verify.service`.
    pub fn verify_unit(&self) -> String {
        let mut argv = vec![self.opskit.display().to_string()];
        if let Some(c) = &self.config_file {
            argv.extend(["--config".into(), c.display().to_string()]);
        }
        argv.extend(["--log-format", "json", "firewall", "verify"].map(String::from));
        format!(
            "# Installed by `opskit firewall persist`: compares the live chains with the policy;\n\
             # drift exits 1, calls the alert webhook and sets opskit_firewall_drift_rules.\n\
             [Unit]\n\
             Description=opskit: verify the Docker firewall policy\n\
             After=docker.service {APPLY_UNIT}\n\
             \n\
             [Service]\n\
             Type=oneshot\n\
             ExecStart={}\n\
             NoNewPrivileges=yes\n\
             PrivateTmp=yes\n\
             \n\
             [Install]\n\
             # Runs after every start of Docker, and from {VERIFY_TIMER}.\n\
             WantedBy=docker.service\n",
            argv.iter()
                .map(|a| shell_quote(a))
                .collect::<Vec<_>>()
                .join(" ")
        )
    }

    /// `opskit-firewall-verify.timer`.
    pub fn verify_timer(&self) -> String {
        let every = self.cfg.verify_interval_secs.get();
        format!(
            "# Installed by `opskit firewall persist`.\n\
             [Unit]\n\
             Description=opskit: verify the Docker firewall policy every {every} s\n\
             \n\
             [Timer]\n\
             OnBootSec=120\n\
             OnUnitActiveSec={every}\n\
             AccuracySec=10\n\
             \n\
             [Install]\n\
             WantedBy=timers.target\n"
        )
    }

    /// Every file persist writes: `(path, contents, mode)`.
    pub fn files(&self, ruleset_text: &str) -> anyhow::Result<Vec<(PathBuf, String, u32)>> {
        let dir = self.cfg.systemd_dir.path();
        Ok(vec![
            (
                self.cfg.rules_file.path().to_path_buf(),
                ruleset_text.to_string(),
                0o600,
            ),
            (dir.join(APPLY_UNIT), self.apply_unit()?, 0o644),
            (dir.join(VERIFY_UNIT), self.verify_unit(), 0o644),
            (dir.join(VERIFY_TIMER), self.verify_timer(), 0o644),
        ])
    }

    fn target(&self) -> anyhow::Result<Target> {
        Target::of(self.cfg.systemd_dir.path()).ok_or_else(|| {
            anyhow!(
                "firewall.systemd_dir {} is neither {SYSTEM_UNIT_DIR} nor <root>{SYSTEM_UNIT_DIR}",
                self.cfg.systemd_dir
            )
        })
    }

    /// `systemctl [--root=R] <args…> <units>`.
    fn systemctl(&self, args: &[&str], units: &[&str]) -> anyhow::Result<Command> {
        let mut cmd = Command::new(find_program("systemctl")?);
        if let Target::Offline(root) = self.target()? {
            cmd.arg(format!("--root={}", root.display()));
        }
        cmd.args(args).args(units);
        Ok(cmd)
    }
}

/// The commands a unit runs when it starts, in order (`ExecStartPre=` lines, then
/// `ExecStart=`), split into words as systemd does for the units persist writes (plain words,
/// or single-quoted ones). This is how the drill and the tests run "exactly what the unit runs".
pub fn exec_lines(unit: &str) -> Vec<Vec<String>> {
    let words = |line: &str| -> Vec<String> {
        line.split_whitespace()
            .map(|w| {
                w.strip_prefix('\'')
                    .and_then(|w| w.strip_suffix('\''))
                    .unwrap_or(w)
                    .to_string()
            })
            .collect()
    };
    let pre = unit.lines().filter_map(|l| l.strip_prefix("ExecStartPre="));
    let main = unit.lines().filter_map(|l| l.strip_prefix("ExecStart="));
    pre.chain(main).map(words).collect()
}

/// The units persist enables.
pub const UNITS: [&str; 3] = [APPLY_UNIT, VERIFY_UNIT, VERIFY_TIMER];

fn show(cmd: anyhow::Result<Command>) -> String {
    cmd.map(|c| proc::display(&c))
        .unwrap_or_else(|e| format!("(unavailable: {e:#})"))
}

/// Builds the persist plan (pure).
pub fn plan(job: &Job, install: &Install, now: DateTime<Utc>) -> anyhow::Result<Plan> {
    let target = install.target()?;
    let mut plan = Plan::new(
        RUNBOOK,
        run_key("persist", &job.ruleset, now),
        format!(
            "make the Docker firewall policy of spec §3 load at every boot and Docker start ({})",
            match &target {
                Target::Live => "this system".to_string(),
                Target::Offline(root) => format!("offline root {}", root.display()),
            }
        ),
    );
    policy_facts(&mut plan, job);
    plan.fact("rules file", &install.cfg.rules_file);
    plan.fact(
        "units",
        format!("{} in {}", UNITS.join(", "), install.cfg.systemd_dir),
    );
    let files = install.files(&job.ruleset.restore_text(true))?;
    let mut write = StepSpec::new(
        "write",
        "Write the rules file (0600) and the three units (0644), atomically",
    )
    .verification("each file holds exactly the new contents")
    .undo(vec![
        "(each file back to its previous contents, or removed when it was new)".into(),
    ]);
    for (path, text, mode) in &files {
        write = write.command(format!(
            "install -D -m {mode:04o} /dev/stdin {} <<'EOF'\n{text}EOF",
            path.display()
        ));
    }
    plan.step(
        StepSpec::new(
            "preflight",
            "Check systemd and keep the files persist replaces",
        )
        .precondition(match &target {
            Target::Live => {
                "systemctl is installed and systemd runs this host (/run/systemd/system)"
            }
            Target::Offline(_) => "systemctl is installed (it enables units offline with --root)",
        })
        .verification("the previous contents of every file are recorded in the journal"),
        Preflight {
            install: install.clone(),
            job: job.clone(),
            paths: files.iter().map(|(p, _, _)| p.clone()).collect(),
        },
    );
    plan.step(
        StepSpec::new(
            "test",
            "Test the ruleset: iptables-restore --test, then a real load in a throw-away network namespace",
        )
        .command(crate::apply::heredoc(
            &job.iptables.restore_command(true),
            &job.ruleset.restore_text(false),
        ))
        .verification("both exit 0"),
        TestRuleset(job.clone()),
    );
    plan.step(write, Write(files));
    let mut enable = StepSpec::new("enable", "Enable the units");
    match target {
        Target::Live => {
            enable = enable
                .command(show(install.systemctl(&["daemon-reload"], &[])))
                .command(show(install.systemctl(&["enable"], &UNITS)))
                .command(show(
                    install.systemctl(&["start"], &[APPLY_UNIT, VERIFY_TIMER]),
                ));
        }
        Target::Offline(_) => {
            enable = enable.command(show(install.systemctl(&["enable"], &UNITS)));
        }
    }
    plan.step(
        enable
            .verification(format!(
                "`systemctl is-enabled` says enabled for {}",
                UNITS.join(", ")
            ))
            .undo(vec![show(install.systemctl(&["disable"], &UNITS))]),
        Enable(install.clone()),
    );
    Ok(plan)
}

struct Preflight {
    install: Install,
    job: Job,
    paths: Vec<PathBuf>,
}

impl StepAction for Preflight {
    fn precondition(&mut self, _cx: &mut StepContext) -> StepResult {
        let refuse = |e: anyhow::Error| StepError::refused(format!("{e:#}"));
        let target = self.install.target().map_err(refuse)?;
        find_program("systemctl").map_err(refuse)?;
        if target == Target::Live {
            if !Path::new("/run/systemd/system").exists() {
                return Err(StepError::refused(format!(
                    "systemd does not run this host (no /run/systemd/system); to prepare an image \
                     or chroot, set firewall.systemd_dir = \"<root>{SYSTEM_UNIT_DIR}\""
                )));
            }
            let firewalld = self
                .install
                .systemctl(&["is-active"], &["firewalld.service"])
                .and_then(|mut c| proc::run(&mut c, SYSTEMCTL_TIMEOUT));
            if firewalld.is_ok_and(|o| o.success()) {
                tracing::warn!(
                    "firewalld is active: on EL8 `firewall-cmd --reload` flushes the iptables \
                     tables, this policy included, until Docker or this unit runs again; see \
                     docs/runbooks/firewall.md (firewalld)"
                );
            }
        }
        Ok(())
    }

    fn execute(&mut self, cx: &mut StepContext) -> StepResult {
        let mut previous = Vec::new();
        for p in &self.paths {
            previous.push(match std::fs::read_to_string(p) {
                Ok(text) => Some(text),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => {
                    return Err(anyhow!(e)
                        .context(format!("reading {}", p.display()))
                        .into());
                }
            });
        }
        cx.record("previous", &previous);
        // The live drift, when there are live rules to compare (not on an offline image).
        if let Ok(d) = self.job.drift() {
            cx.gauge("drift_rules", d.count() as f64);
        }
        Ok(())
    }
}

struct TestRuleset(Job);

impl StepAction for TestRuleset {
    fn execute(&mut self, _cx: &mut StepContext) -> StepResult {
        self.0
            .iptables
            .test(&self.0.ruleset.restore_text(false))
            .context("iptables-restore --test rejected the ruleset")?;
        self.0.canonical()?;
        Ok(())
    }
}

struct Write(Vec<(PathBuf, String, u32)>);

impl StepAction for Write {
    fn execute(&mut self, _cx: &mut StepContext) -> StepResult {
        for (path, text, mode) in &self.0 {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
            }
            write_atomic(path, text.as_bytes(), *mode)?;
        }
        Ok(())
    }

    fn verify(&mut self, _cx: &mut StepContext) -> StepResult {
        for (path, text, _) in &self.0 {
            if std::fs::read_to_string(path).ok().as_deref() != Some(text.as_str()) {
                return Err(anyhow!("{} does not hold the new contents", path.display()).into());
            }
        }
        Ok(())
    }

    fn undo(&mut self, cx: &mut StepContext) -> StepResult {
        let previous: Vec<Option<String>> = cx
            .recorded("preflight", "previous")
            .and_then(|v| serde_json::from_value(v.clone()).ok())
            .ok_or_else(|| anyhow!("the journal holds no previous contents"))?;
        for ((path, _, mode), old) in self.0.iter().zip(previous) {
            match old {
                Some(text) => write_atomic(path, text.as_bytes(), *mode)?,
                None => {
                    let _ = std::fs::remove_file(path);
                }
            }
        }
        Ok(())
    }
}

struct Enable(Install);

impl Enable {
    fn run(&self, args: &[&str], units: &[&str]) -> anyhow::Result<proc::Output> {
        proc::run(&mut self.0.systemctl(args, units)?, SYSTEMCTL_TIMEOUT)?.checked()
    }
}

impl StepAction for Enable {
    fn execute(&mut self, _cx: &mut StepContext) -> StepResult {
        if self.0.target()? == Target::Live {
            self.run(&["daemon-reload"], &[])?;
            self.run(&["enable"], &UNITS)?;
            // restart, not start: an active oneshot would not load a changed rules file.
            self.run(&["restart"], &[APPLY_UNIT])?;
            self.run(&["start"], &[VERIFY_TIMER])?;
        } else {
            self.run(&["enable"], &UNITS)?;
        }
        Ok(())
    }

    fn verify(&mut self, _cx: &mut StepContext) -> StepResult {
        for unit in UNITS {
            let out = proc::run(
                &mut self.0.systemctl(&["is-enabled"], &[unit])?,
                SYSTEMCTL_TIMEOUT,
            )?;
            let state = out.stdout_text().trim().to_string();
            if state != "enabled" {
                return Err(anyhow!("{unit} is `{state}` after enabling it, not `enabled`").into());
            }
        }
        Ok(())
    }

    fn undo(&mut self, _cx: &mut StepContext) -> StepResult {
        self.run(&["disable"], &UNITS)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn install() -> Install {
        Install {
            cfg: FirewallConfig::default(),
            opskit: "/usr/local/bin/opskit".into(),
            config_file: None,
        }
    }

    #[test]
    fn the_apply_unit_loads_the_rules_file_before_docker_and_follows_it() {
        let unit = install().apply_unit().unwrap();
        for line in [
            "Before=docker.service",
            "PartOf=docker.service",
            "Type=oneshot",
            "RemainAfterExit=yes",
            "WantedBy=multi-user.target docker.service",
        ] {
            assert!(unit.lines().any(|l| l == line), "{line} missing:\n{unit}");
        }
        assert_eq!(
            exec_lines(&unit),
            [
                "/usr/sbin/iptables-restore -w 10 --test --noflush /etc/opskit/firewall.rules",
                "/usr/sbin/iptables-restore -w 10 --noflush /etc/opskit/firewall.rules",
            ]
            .map(|l| l.split(' ').map(String::from).collect::<Vec<_>>())
        );
        let verify = install().verify_unit();
        assert_eq!(
            exec_lines(&verify),
            [[
                "/usr/local/bin/opskit",
                "--log-format",
                "json",
                "firewall",
                "verify"
            ]
            .map(String::from)
            .to_vec()]
        );
        assert!(install().verify_timer().contains("OnUnitActiveSec=300\n"));
    }

    #[test]
    fn the_unit_directory_names_the_target() {
        assert_eq!(
            Target::of(Path::new("/etc/systemd/system")),
            Some(Target::Live)
        );
        assert_eq!(
            Target::of(Path::new("/srv/img/etc/systemd/system")),
            Some(Target::Offline("/srv/img".into()))
        );
        assert_eq!(Target::of(Path::new("/usr/lib/systemd/system")), None);
    }
}
