//! `up`, `down` and `status` of a lab directory, and the [`Lab`] guard tests use.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, anyhow, bail};
use opskit_core::config::Config;
use opskit_core::config::value::AbsPath;
use opskit_core::error::refused;
use serde::Serialize;

use crate::components::{Component, LabContext};
use crate::daemon::{self, Liveness, ProcessIdentity, StopOutcome};
use crate::state::{LabLock, LabState, STATE_FILE, ServerRecord, take_spawned};

/// The opskit config `up` writes into the lab directory.
pub const OPSKIT_TOML: &str = "opskit.toml";

/// What `up` did with one component.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UpAction {
    /// It was not recorded; it was started.
    Started,
    /// It was recorded but dead or not answering; it was started again.
    Restarted,
    /// It was running and answering; nothing was done.
    AlreadyRunning,
}

/// The result of [`up`].
#[derive(Debug, Clone, Serialize)]
pub struct UpReport {
    /// The lab directory.
    pub dir: PathBuf,
    /// What happened to each requested component, in start order.
    pub components: Vec<ComponentUp>,
    /// The generated opskit config.
    pub opskit_toml: PathBuf,
    /// The lab state after `up`.
    pub state: LabState,
}

impl Serialize for Component {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

/// One component in an [`UpReport`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ComponentUp {
    /// The component.
    pub component: Component,
    /// What `up` did with it.
    pub action: UpAction,
}

/// One stopped server in a [`DownReport`].
#[derive(Debug, Clone, Serialize)]
pub struct StoppedServer {
    /// The server's name.
    pub name: String,
    /// Its PID.
    pub pid: i32,
    /// How it ended.
    pub outcome: StopOutcome,
}

/// The result of [`down`].
#[derive(Debug, Clone, Serialize)]
pub struct DownReport {
    /// The lab directory.
    pub dir: PathBuf,
    /// The servers that were recorded, in stop order.
    pub stopped: Vec<StoppedServer>,
    /// True when the directory was removed (`--purge`).
    pub purged: bool,
}

/// One server in a [`StatusReport`].
#[derive(Debug, Clone, Serialize)]
pub struct ServerStatus {
    /// The recorded server.
    #[serde(flatten)]
    pub record: ServerRecord,
    /// Its recorded process is running (same PID and start time).
    pub alive: bool,
    /// It answers its probe (a connect, a banner, `mariadb-admin ping`).
    pub answering: bool,
}

/// The result of [`status`].
#[derive(Debug, Clone, Serialize)]
pub struct StatusReport {
    /// The lab directory.
    pub dir: PathBuf,
    /// Every recorded server.
    pub servers: Vec<ServerStatus>,
}

/// Makes `dir` absolute and checks that it can be written into generated configs.
fn lab_dir(dir: &Path) -> Result<PathBuf> {
    let dir = std::path::absolute(dir)
        .with_context(|| format!("resolving the lab directory {}", dir.display()))?;
    crate::components::config_path(&dir)?;
    Ok(dir)
}

fn component_of(kind: &str) -> Option<Component> {
    Component::ALL.iter().copied().find(|c| c.name() == kind)
}

/// Starts the given components (all when empty) in the lab at `dir`, creating it if needed.
/// Idempotent: a component whose processes all run and answer is left alone; one with a dead
/// or silent process is stopped and started again. Writes `lab.json` after each component and
/// `opskit.toml` at the end. `opskit_exe` is the binary that runs `opskit lab
/// webhook-receiver` (see [`LabContext::opskit_exe`]).
pub fn up(dir: &Path, components: &[Component], opskit_exe: Option<PathBuf>) -> Result<UpReport> {
    let dir = lab_dir(dir)?;
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("creating the lab directory {}", dir.display()))?;
    let _lock = LabLock::acquire(&dir)?;
    let ctx = LabContext::new(&dir, opskit_exe)?;
    let mut state = LabState::load(&dir)?;
    state.dir.clone_from(&dir);
    stop_unrecorded(&state)?;
    let mut actions = Vec::new();
    for &c in Component::ALL {
        if !components.is_empty() && !components.contains(&c) {
            continue;
        }
        let previous: Vec<ServerRecord> = state.of_kind(c.name()).cloned().collect();
        let healthy = !previous.is_empty()
            && previous
                .iter()
                .all(|r| r.identity().is_alive() && c.server().probe(&ctx, r).is_ok());
        if healthy {
            actions.push(ComponentUp {
                component: c,
                action: UpAction::AlreadyRunning,
            });
            continue;
        }
        for r in previous.iter().rev() {
            daemon::stop(&r.identity(), c.server().stop_grace())
                .with_context(|| format!("stopping the old {} (pid {})", r.name, r.pid))?;
        }
        state.servers.retain(|r| r.kind != c.name());
        state.save()?;
        let started = match c.server().start(&ctx, &previous) {
            Ok(started) => started,
            Err(e) => {
                // A component with several processes may have started some of them.
                if let Err(e2) = stop_unrecorded(&state) {
                    tracing::warn!("stopping what {c} started before it failed: {e2:#}");
                }
                return Err(e.context(format!("lab component {c} in {}", dir.display())));
            }
        };
        tracing::info!(component = %c, "lab server started");
        state.servers.extend(started);
        state.save()?;
        let action = if previous.is_empty() {
            UpAction::Started
        } else {
            UpAction::Restarted
        };
        actions.push(ComponentUp {
            component: c,
            action,
        });
    }
    // Everything launched is now in lab.json (or was stopped when it failed to answer).
    take_spawned(&dir)?;
    let opskit_toml = write_opskit_toml(&state)?;
    Ok(UpReport {
        dir,
        components: actions,
        opskit_toml,
        state,
    })
}

/// Stops every recorded server of the lab at `dir` (exactly the recorded processes, last
/// started first) and forgets them in `lab.json`. Data stays unless `purge`, which removes the
/// directory (refused when it does not look like a lab or has a mount under it).
pub fn down(dir: &Path, purge: bool) -> Result<DownReport> {
    let dir = lab_dir(dir)?;
    let mut report = DownReport {
        dir: dir.clone(),
        stopped: Vec::new(),
        purged: false,
    };
    if !dir.exists() {
        return Ok(report);
    }
    {
        let _lock = LabLock::acquire(&dir)?;
        let mut state = LabState::load(&dir)?;
        let mut failed = Vec::new();
        for r in std::mem::take(&mut state.servers).into_iter().rev() {
            let grace = component_of(&r.kind).map_or(std::time::Duration::from_secs(30), |c| {
                c.server().stop_grace()
            });
            match daemon::stop(&r.identity(), grace) {
                Ok(outcome) => report.stopped.push(StoppedServer {
                    name: r.name.clone(),
                    pid: r.pid,
                    outcome,
                }),
                Err(e) => failed.push((r, e)),
            }
        }
        if !failed.is_empty() {
            let msg = failed
                .iter()
                .map(|(r, e)| format!("{} (pid {}): {e:#}", r.name, r.pid))
                .collect::<Vec<_>>()
                .join("; ");
            state.servers = failed.into_iter().rev().map(|(r, _)| r).collect();
            state.save()?;
            bail!("could not stop lab servers in {}: {msg}", dir.display());
        }
        if dir.join(STATE_FILE).exists() {
            state.save()?;
        }
        for (name, id) in stop_unrecorded(&state)? {
            report.stopped.push(StoppedServer {
                name,
                pid: id.pid,
                outcome: StopOutcome::Stopped,
            });
        }
    }
    if purge {
        purge_dir(&dir)?;
        report.purged = true;
    }
    Ok(report)
}

/// Stops processes an interrupted `up` launched but never recorded in `lab.json` (identity
/// checked, so a reused PID is left alone); returns the ones it stopped.
fn stop_unrecorded(state: &LabState) -> Result<Vec<(String, ProcessIdentity)>> {
    let mut stopped = Vec::new();
    for (name, id) in take_spawned(&state.dir)? {
        let recorded = state.servers.iter().any(|r| r.identity() == id);
        if !recorded && id.is_alive() {
            tracing::warn!(server = %name, pid = id.pid, "stopping a lab server that an interrupted `up` left behind");
            let grace = component_of(&name).map_or(std::time::Duration::from_secs(30), |c| {
                c.server().stop_grace()
            });
            daemon::stop(&id, grace)
                .with_context(|| format!("stopping the unrecorded {name} (pid {})", id.pid))?;
            stopped.push((name, id));
        }
    }
    Ok(stopped)
}

fn purge_dir(dir: &Path) -> Result<()> {
    let is_lab = dir.join(STATE_FILE).exists()
        || std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_none());
    if !is_lab || dir.parent().is_none() {
        return Err(refused(format!(
            "{} has no {STATE_FILE}: it does not look like a lab directory, so --purge will not \
             delete it",
            dir.display()
        )));
    }
    if let Some(m) = mounts_under(dir)?.first() {
        return Err(refused(format!(
            "{m} is mounted inside the lab directory; unmount it before --purge"
        )));
    }
    std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))
}

/// Mount points at or under `dir` in this process's mount namespace.
pub fn mounts_under(dir: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").context("reading mountinfo")?;
    let dir = dir.to_string_lossy();
    let prefix = format!("{}/", dir.trim_end_matches('/'));
    Ok(text
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        // mountinfo escapes spaces and such as \040; lab paths have none.
        .filter(|m| *m == dir || m.starts_with(&prefix))
        .map(str::to_string)
        .collect())
}

/// Reports every recorded server of the lab at `dir`: alive (the same process still runs)
/// and answering.
pub fn status(dir: &Path) -> Result<StatusReport> {
    let dir = lab_dir(dir)?;
    let state = LabState::load(&dir)?;
    let ctx = LabContext::new(&dir, None)?;
    let servers = state
        .servers
        .into_iter()
        .map(|record| {
            let alive = record.identity().liveness() == Liveness::Running;
            let answering = alive
                && component_of(&record.kind)
                    .is_some_and(|c| c.server().probe(&ctx, &record).is_ok());
            ServerStatus {
                record,
                alive,
                answering,
            }
        })
        .collect();
    Ok(StatusReport { dir, servers })
}

fn abs(p: &Path) -> Result<AbsPath> {
    p.to_string_lossy()
        .parse()
        .map_err(|e: String| anyhow!("{}: {e}", p.display()))
}

/// Writes `<lab>/opskit.toml`: the defaults with state, metrics and staging in the lab, no
/// webhook unless the lab runs one, and each running component's settings.
fn write_opskit_toml(state: &LabState) -> Result<PathBuf> {
    let dir = &state.dir;
    let mut config = Config::default();
    for (sub, field) in [
        ("state", &mut config.general.state_dir),
        ("metrics", &mut config.general.metrics_dir),
        ("staging", &mut config.archive.staging_dir),
    ] {
        let p = dir.join(sub);
        std::fs::create_dir_all(&p).with_context(|| format!("creating {}", p.display()))?;
        *field = abs(&p)?;
    }
    config.alert.webhook_url = None;
    for &c in Component::ALL {
        let records: Vec<ServerRecord> = state.of_kind(c.name()).cloned().collect();
        if !records.is_empty() {
            c.server()
                .configure(&records, &mut config)
                .with_context(|| format!("configuring opskit for lab component {c}"))?;
        }
    }
    let text = format!(
        "# Written by `opskit lab up`: every runbook pointed at the lab in {}.\n\
         # Use: opskit --config {}/{OPSKIT_TOML} <command>\n{}",
        dir.display(),
        dir.display(),
        config.to_toml()
    );
    Config::parse(&text).map_err(|e| anyhow!("the generated {OPSKIT_TOML} is invalid: {e}"))?;
    let path = dir.join(OPSKIT_TOML);
    crate::components::write_file(&path, &text, 0o644)?;
    Ok(path)
}

/// A typed view of one component in a running lab (its ports and paths), read from
/// `lab.json`. Each component module defines one, e.g. [`crate::SftpServer`].
pub trait LabView: Sized {
    /// Builds the view, or an error naming the missing server or field.
    fn from_state(state: &LabState) -> Result<Self>;
}

/// Builds a lab for a test: `LabBuilder::new(dir).with(Component::Sshd).up()?`.
#[derive(Debug, Clone)]
pub struct LabBuilder {
    dir: PathBuf,
    components: Vec<Component>,
    opskit_exe: Option<PathBuf>,
    temp: Option<std::sync::Arc<tempfile::TempDir>>,
}

impl LabBuilder {
    /// A lab in `dir` (created if missing; a fresh temporary directory per test is best).
    pub fn new(dir: impl AsRef<Path>) -> LabBuilder {
        LabBuilder {
            dir: dir.as_ref().to_path_buf(),
            components: Vec::new(),
            opskit_exe: None,
            temp: None,
        }
    }

    /// A lab in a new temporary directory (`$TMPDIR/<prefix>XXXXXX/lab`), deleted when the
    /// [`Lab`] is dropped, after its servers are stopped. What most tests want.
    pub fn temporary(prefix: &str) -> Result<LabBuilder> {
        let temp = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir()
            .context("creating a temporary lab directory")?;
        let mut b = LabBuilder::new(temp.path().join("lab"));
        b.temp = Some(std::sync::Arc::new(temp));
        Ok(b)
    }

    /// Adds a component (none added: all of them).
    pub fn with(mut self, c: Component) -> LabBuilder {
        if !self.components.contains(&c) {
            self.components.push(c);
        }
        self
    }

    /// The opskit binary for components that run as an opskit sub-command (the webhook
    /// receiver); default `$OPSKIT_BIN`.
    pub fn opskit_exe(mut self, exe: impl Into<PathBuf>) -> LabBuilder {
        self.opskit_exe = Some(exe.into());
        self
    }

    /// Starts the lab and returns the guard that brings it down when dropped. On failure the
    /// lab is brought down again (every server recorded in the directory is stopped).
    pub fn up(self) -> Result<Lab> {
        match up(&self.dir, &self.components, self.opskit_exe) {
            Ok(report) => Ok(Lab {
                dir: report.dir,
                state: report.state,
                opskit_toml: report.opskit_toml,
                armed: true,
                _temp: self.temp,
            }),
            Err(e) => {
                if let Err(e2) = down(&self.dir, false) {
                    eprintln!("opskit-lab: cleaning up after a failed up: {e2:#}");
                }
                Err(e)
            }
        }
    }
}

/// A running lab. Dropping it stops every server of the lab (see [`down`]); the directory
/// and its data stay.
#[derive(Debug)]
pub struct Lab {
    dir: PathBuf,
    state: LabState,
    opskit_toml: PathBuf,
    armed: bool,
    /// The temporary directory of [`LabBuilder::temporary`]; dropped after `Drop::drop` ran,
    /// so the servers are down before their files go.
    _temp: Option<std::sync::Arc<tempfile::TempDir>>,
}

impl Lab {
    /// The lab directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The recorded servers (the contents of `lab.json`).
    pub fn state(&self) -> &LabState {
        &self.state
    }

    /// `<lab>/opskit.toml`, for `opskit --config`.
    pub fn opskit_toml(&self) -> &Path {
        &self.opskit_toml
    }

    /// The generated opskit config, parsed.
    pub fn config(&self) -> Result<Config> {
        Config::load_file(&self.opskit_toml).map_err(|e| anyhow!("{e}"))
    }

    /// A component's view, e.g. `lab.view::<MariadbServer>()`.
    pub fn view<T: LabView>(&self) -> Result<T> {
        T::from_state(&self.state)
    }

    /// The MariaDB server (port, socket, URI, SQL).
    pub fn mariadb(&self) -> Result<crate::MariadbServer> {
        self.view()
    }

    /// The SFTP server (ssh_config, alias, backup directory).
    pub fn sftp(&self) -> Result<crate::SftpServer> {
        self.view()
    }

    /// The webhook receiver (URL, received bodies).
    pub fn webhook(&self) -> Result<crate::WebhookReceiver> {
        self.view()
    }

    /// Brings the lab down now and reports errors (instead of printing them on drop).
    pub fn down(mut self) -> Result<DownReport> {
        self.armed = false;
        down(&self.dir, false)
    }

    /// Leaves the servers running when the guard goes away (stop them with `opskit lab down`).
    pub fn keep_running(mut self) -> PathBuf {
        self.armed = false;
        // A temporary directory stays too: the servers run from it.
        if let Some(temp) = self._temp.take() {
            std::mem::forget(temp);
        }
        self.dir.clone()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if self.armed
            && let Err(e) = down(&self.dir, false)
        {
            eprintln!("opskit-lab: bringing down {}: {e:#}", self.dir.display());
        }
    }
}
