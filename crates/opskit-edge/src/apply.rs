//! The deploy plan: back up the live config → write the new one → `nginx -t` → reload →
//! probe. Any failure makes the engine undo the completed steps in reverse order: the reload
//! is undone by restoring the previous file and reloading it, the write by restoring the file.
//! That is the seeds' "deploy → automatic test → automatic rollback".

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
pub use chrono::{DateTime, Utc};
use opskit_core::config::NginxConfig;
use opskit_core::plan::StepContext;
use opskit_core::plan::{Plan, StepAction, StepError, StepResult, StepSpec};
use sha2::{Digest, Sha256};

use crate::check::{self, NGINX_TEST_TIMEOUT};
use crate::probe::{self, ProbeOptions};
use opskit_core::proc;

/// Everything the deploy needs, decided before it starts.
#[derive(Debug, Clone)]
pub struct Deploy {
    /// The settings (paths of the live config, the nginx binary and prefix).
    pub settings: NginxConfig,
    /// The rendered config that will go live.
    pub new_config: String,
    /// Where the previous config is kept.
    pub backup: PathBuf,
    /// How the probe reaches the server after the reload.
    pub probe: ProbeOptions,
}

impl Deploy {
    /// A deploy of `new_config`, keeping the backup under `<state_dir>/nginx/`.
    pub fn new(
        settings: &NginxConfig,
        new_config: String,
        state_dir: &Path,
        probe: ProbeOptions,
        now: DateTime<Utc>,
    ) -> Deploy {
        let key = run_key(&new_config, now);
        Deploy {
            settings: settings.clone(),
            backup: state_dir.join("nginx").join(format!("{key}.previous.conf")),
            new_config,
            probe,
        }
    }

    fn live(&self) -> PathBuf {
        self.settings.config_path.path().to_path_buf()
    }

    fn nginx(&self) -> Command {
        let mut cmd = Command::new(self.settings.nginx_binary.path());
        if let Some(p) = &self.settings.nginx_prefix {
            cmd.arg("-p").arg(p.path());
        }
        cmd.arg("-c").arg(self.live());
        cmd
    }

    fn reload_command(&self) -> Command {
        let mut cmd = self.nginx();
        cmd.args(["-s", "reload"]);
        cmd
    }

    fn test_command(&self) -> Command {
        check::test_command(
            self.settings.nginx_binary.path(),
            self.settings.nginx_prefix.as_ref().map(|p| p.path()),
            &self.live(),
        )
    }
}

/// `nginx-apply-<UTC time>-<first 8 hex of the config's sha256>`: unique per deploy.
pub fn run_key(config: &str, now: DateTime<Utc>) -> String {
    let hash = hex::encode(Sha256::digest(config.as_bytes()));
    format!(
        "nginx-apply-{}-{}",
        now.format("%Y%m%dT%H%M%SZ"),
        &hash[..8]
    )
}

/// Builds the deploy plan (pure: nothing is touched until the engine runs it).
pub fn plan(deploy: &Deploy, now: DateTime<Utc>) -> Plan {
    let d = deploy.clone();
    let live = d.live().display().to_string();
    let backup = d.backup.display().to_string();
    let mut plan = Plan::new(
        "nginx",
        run_key(&d.new_config, now),
        format!("deploy the {} edge config to {live}", d.settings.domain),
    );
    plan.fact("config", &live)
        .fact("backup", &backup)
        .fact("nginx", d.settings.nginx_binary.to_string())
        .fact("probe", &d.probe.url)
        .fact(
            "new config sha256",
            hex::encode(Sha256::digest(d.new_config.as_bytes())),
        );
    plan.step(
        StepSpec::new("backup", "Back up the live config")
            .command(format!("cp -p {live} {backup}"))
            .precondition(
                "the nginx binary answers `nginx -v`; nginx is running (its pid file names a live process); curl is installed",
            )
            .verification("the backup has the live config's bytes"),
        Backup(d.clone()),
    );
    plan.step(
        StepSpec::new("write", "Write the new config (atomic rename)")
            .command(format!("install -m 0644 <rendered config> {live}"))
            .verification("the live file has the new config's sha256")
            .undo(vec![format!("cp -p {backup} {live}")]),
        Write(d.clone()),
    );
    plan.step(
        StepSpec::new(
            "test",
            "Test the new config with nginx -t (a warning fails it)",
        )
        .command(proc::display(&d.test_command()))
        .verification("exit 0 and no [warn]/[emerg] lines"),
        TestConfig(d.clone()),
    );
    plan.step(
        StepSpec::new("reload", "Reload nginx")
            .command(proc::display(&d.reload_command()))
            .verification("the master started new worker processes")
            .undo(vec![
                format!("cp -p {backup} {live}"),
                proc::display(&d.reload_command()),
            ]),
        Reload(d.clone()),
    );
    plan.step(
        StepSpec::new(
            "quick-probe",
            "Quick probe right after the reload: TLS + h2, home page, bot routing, 301, /api/landing",
        )
        .command(format!("{} --quick", probe_command(&d.probe)))
        .verification("all five pass; otherwise the reload is undone within a second or two"),
        QuickProbe(d.clone()),
    );
    plan.step(
        StepSpec::new("probe", "Probe the live server against spec §2")
            .command(probe_command(&d.probe))
            .verification("every check passes"),
        Probe(d),
    );
    plan
}

/// The `opskit nginx probe` command line equivalent to the probe step.
fn probe_command(p: &ProbeOptions) -> String {
    let mut cmd = format!(
        "opskit nginx probe --url {} --http-port {}",
        p.url, p.http_port
    );
    for r in &p.resolve {
        cmd.push_str(&format!(" --resolve {r}"));
    }
    if let Some(ca) = &p.cacert {
        cmd.push_str(&format!(" --cacert {}", ca.display()));
    }
    if let Some(m) = &p.bot_marker {
        cmd.push_str(&format!(" --bot-marker '{m}'"));
    }
    if p.stage_fixtures {
        cmd.push_str(" --stage-fixtures");
    }
    if !p.groups.is_empty() {
        let groups: Vec<&str> = p.groups.iter().map(|g| g.name()).collect();
        cmd.push_str(&format!(" --group {}", groups.join(",")));
    }
    cmd
}

fn master_pid(settings: &NginxConfig) -> anyhow::Result<i32> {
    let pid_file = settings.pid_file.path();
    let text = match std::fs::read_to_string(pid_file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "nginx is not running: its pid file {} does not exist (start it with `systemctl start nginx`, or set nginx.pid_file)",
            pid_file.display()
        ),
        Err(e) => {
            return Err(e)
                .with_context(|| format!("reading nginx's pid file {}", pid_file.display()));
        }
    };
    let pid: i32 = text
        .trim()
        .parse()
        .with_context(|| format!("{} holds no pid", pid_file.display()))?;
    // SAFETY: signal 0 only tests whether the process exists.
    if pid <= 1 || unsafe { libc::kill(pid, 0) } != 0 {
        bail!(
            "nginx is not running: {} names pid {pid}, which does not exist (start it with `systemctl start nginx`)",
            pid_file.display()
        );
    }
    Ok(pid)
}

/// What must hold before `apply` touches anything: nginx runs (its pid file names a live
/// master) and curl, which the probes after the reload need, is installed. The first step's
/// precondition and `apply --dry-run` both run it, so a dry run refuses (exit 3) exactly where
/// the real apply would. `Err` is the reason.
pub fn preflight(d: &Deploy) -> Result<(), String> {
    check::installed_version(d.settings.nginx_binary.path()).map_err(|e| format!("{e:#}"))?;
    master_pid(&d.settings).map_err(|e| format!("{e:#}"))?;
    let curl = proc::run(
        Command::new("curl").arg("--version"),
        Duration::from_secs(5),
    );
    if !curl.as_ref().is_ok_and(|o| o.success()) {
        return Err(
            "curl is not installed: the probe after the reload needs it (dnf install curl)".into(),
        );
    }
    Ok(())
}

/// `diff -u` of the live config and the one `apply` would write (the whole file as added
/// when there is no live config yet); empty when they are the same.
pub fn diff_against_live(d: &Deploy) -> anyhow::Result<String> {
    let live = d.live();
    let current = match std::fs::read_to_string(&live) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", live.display())),
    };
    Ok(crate::diff::unified(
        &current,
        &d.new_config,
        &live.display().to_string(),
        &format!("{} (rendered)", live.display()),
    ))
}

/// The worker pids of an nginx master (from `/proc/<pid>/task/<pid>/children`).
fn workers(master: i32) -> Vec<String> {
    std::fs::read_to_string(format!("/proc/{master}/task/{master}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// nginx configs are world-readable (the workers read them after dropping privileges).
fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    opskit_core::util::write_atomic(path, bytes, 0o644)
}

/// Restores the backup over the live file (no backup file: there was no live config).
fn restore(d: &Deploy) -> anyhow::Result<()> {
    let live = d.live();
    match std::fs::read(&d.backup) {
        Ok(bytes) => write_atomic(&live, &bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let _ = std::fs::remove_file(&live);
            Ok(())
        }
        Err(e) => Err(e).with_context(|| format!("reading the backup {}", d.backup.display())),
    }
}

fn run_nginx(mut cmd: Command, what: &str) -> anyhow::Result<()> {
    proc::run(&mut cmd, NGINX_TEST_TIMEOUT)?
        .checked()
        .with_context(|| format!("{what} failed"))?;
    Ok(())
}

/// Sends the reload and waits until the master has new workers.
fn reload(d: &Deploy) -> anyhow::Result<()> {
    let master = master_pid(&d.settings)?;
    let before = workers(master);
    run_nginx(d.reload_command(), "nginx reload")?;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        let now = workers(master);
        if !now.is_empty() && now.iter().any(|w| !before.contains(w)) {
            // Old workers finish their requests; give the new ones a moment to accept.
            std::thread::sleep(Duration::from_millis(200));
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if before.is_empty() {
        return Ok(());
    }
    bail!(
        "nginx (pid {master}) started no new workers within 10 s of the reload; see its error log {}",
        d.settings.error_log
    )
}

struct Backup(Deploy);

impl StepAction for Backup {
    fn precondition(&mut self, _cx: &mut StepContext) -> StepResult {
        preflight(&self.0).map_err(StepError::refused)
    }

    fn execute(&mut self, cx: &mut StepContext) -> StepResult {
        let d = &self.0;
        if let Some(dir) = d.backup.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        match std::fs::read(d.live()) {
            Ok(bytes) => {
                write_atomic(&d.backup, &bytes)?;
                cx.record("backup", d.backup.display().to_string());
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                cx.record("backup", "none: no live config yet");
            }
            Err(e) => {
                return Err(anyhow!(e)
                    .context(format!("reading {}", d.live().display()))
                    .into());
            }
        }
        Ok(())
    }

    fn verify(&mut self, _cx: &mut StepContext) -> StepResult {
        let d = &self.0;
        if let Ok(live) = std::fs::read(d.live())
            && std::fs::read(&d.backup).ok().as_deref() != Some(&live[..])
        {
            return Err(anyhow!(
                "the backup {} differs from the live config",
                d.backup.display()
            )
            .into());
        }
        Ok(())
    }
}

struct Write(Deploy);

impl StepAction for Write {
    fn execute(&mut self, _cx: &mut StepContext) -> StepResult {
        write_atomic(&self.0.live(), self.0.new_config.as_bytes())?;
        Ok(())
    }

    fn verify(&mut self, _cx: &mut StepContext) -> StepResult {
        let on_disk = std::fs::read(self.0.live()).unwrap_or_default();
        if on_disk != self.0.new_config.as_bytes() {
            return Err(anyhow!(
                "{} does not hold the new config after writing it",
                self.0.live().display()
            )
            .into());
        }
        Ok(())
    }

    fn undo(&mut self, _cx: &mut StepContext) -> StepResult {
        restore(&self.0)?;
        Ok(())
    }
}

struct TestConfig(Deploy);

impl StepAction for TestConfig {
    fn execute(&mut self, _cx: &mut StepContext) -> StepResult {
        let d = &self.0;
        let mut report = check::test_config(
            d.settings.nginx_binary.path(),
            d.settings.nginx_prefix.as_ref().map(|p| p.path()),
            &d.live(),
        )?;
        if !report.ok {
            report.cite(&d.live(), &d.new_config, None);
            let mut lines = report.problems();
            if lines.is_empty() {
                lines.push(report.output.trim().to_string());
            }
            return Err(anyhow!(
                "`{}` rejected the new config: {}",
                report.command,
                lines.join(" | ")
            )
            .into());
        }
        Ok(())
    }
}

struct Reload(Deploy);

impl StepAction for Reload {
    fn execute(&mut self, _cx: &mut StepContext) -> StepResult {
        reload(&self.0)?;
        Ok(())
    }

    fn undo(&mut self, _cx: &mut StepContext) -> StepResult {
        restore(&self.0)?;
        reload(&self.0)?;
        Ok(())
    }
}

/// The failed checks of a probe as one error (`name: what was seen | …`).
fn probe_failure(what: &str, report: &probe::ProbeReport) -> StepResult {
    let details: Vec<String> = report
        .checks
        .iter()
        .filter(|c| c.verdict == probe::Verdict::Fail)
        .map(|c| format!("{}: {}", c.name, c.detail))
        .collect();
    if details.is_empty() {
        return Ok(());
    }
    let n = details.len();
    Err(anyhow!(
        "the {what} failed {n} check{}: {}",
        if n == 1 { "" } else { "s" },
        details.join(" | ")
    )
    .into())
}

struct QuickProbe(Deploy);

impl StepAction for QuickProbe {
    fn execute(&mut self, cx: &mut StepContext) -> StepResult {
        let d = &self.0;
        let report = probe::quick(&d.settings, &d.probe)?;
        cx.record("quick_checks_failed", report.failed().len());
        probe_failure("quick probe", &report)
    }
}

struct Probe(Deploy);

impl StepAction for Probe {
    fn execute(&mut self, cx: &mut StepContext) -> StepResult {
        let d = &self.0;
        let groups = d.probe.selected_groups().len() as u64;
        let progress = cx.progress("probe", Some(groups), "groups");
        let report = probe::run_reporting(&d.settings, &d.probe, progress)?;
        let failed = report.failed().len();
        cx.gauge("probe_checks_failed", failed as f64);
        cx.gauge("probe_checks_total", report.checks.len() as f64);
        cx.record("probe_checks_total", report.checks.len());
        cx.record("probe_checks_failed", failed);
        probe_failure("probe", &report)
    }
}
