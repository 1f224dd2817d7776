//! The process core: start a server detached from the caller, wait until it answers, and
//! later stop exactly that process and nothing else.
//!
//! A lab server is identified by its PID **and** its start time (field 22 of
//! `/proc/<pid>/stat`), and it must still lead its own session (we start every server with
//! `setsid`). A PID that now names another process (PID reuse) is never signalled.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};

/// How often readiness and exit are polled.
const POLL: Duration = Duration::from_millis(25);

/// A process as the lab recorded it: PID plus start time, so PID reuse is detected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessIdentity {
    /// The process ID.
    pub pid: i32,
    /// Start time in clock ticks after boot (`/proc/<pid>/stat` field 22).
    pub start_time: u64,
}

/// What `/proc` says about a recorded process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// The recorded process is running.
    Running,
    /// It has exited (or is a zombie waiting to be reaped).
    Gone,
    /// The PID now belongs to another process; it must not be touched.
    Replaced,
}

/// How [`stop`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopOutcome {
    /// It exited after SIGTERM.
    Stopped,
    /// It ignored SIGTERM for the grace period and was killed with SIGKILL.
    Killed,
    /// It was not running any more.
    AlreadyGone,
    /// The PID belongs to another process now; nothing was signalled.
    NotOurs,
}

impl std::fmt::Display for StopOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StopOutcome::Stopped => "stopped",
            StopOutcome::Killed => "killed (ignored SIGTERM)",
            StopOutcome::AlreadyGone => "was not running",
            StopOutcome::NotOurs => "PID now belongs to another process; left alone",
        })
    }
}

struct ProcStat {
    state: char,
    ppid: i32,
    session: i32,
    start_time: u64,
}

fn read_stat(pid: i32) -> io::Result<ProcStat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) is in parentheses and may hold spaces or ')'.
    let rest = text
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| io::Error::other(format!("/proc/{pid}/stat: unexpected format")))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let bad = || io::Error::other(format!("/proc/{pid}/stat: unexpected format"));
    // fields[0] is field 3 (state), so field N is fields[N - 3].
    Ok(ProcStat {
        state: fields
            .first()
            .and_then(|s| s.chars().next())
            .ok_or_else(bad)?,
        ppid: fields.get(1).and_then(|s| s.parse().ok()).ok_or_else(bad)?,
        session: fields.get(3).and_then(|s| s.parse().ok()).ok_or_else(bad)?,
        start_time: fields
            .get(19)
            .and_then(|s| s.parse().ok())
            .ok_or_else(bad)?,
    })
}

fn live_threads(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |d| d.count())
}

/// Collects the exit status of `pid` if it is our child and has exited (no-op otherwise).
fn reap(pid: i32) {
    let mut status = 0;
    // SAFETY: waitpid with WNOHANG only inspects the child table; ECHILD for non-children.
    unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
}

impl ProcessIdentity {
    /// Reads the identity of a running process.
    pub fn of(pid: i32) -> io::Result<ProcessIdentity> {
        Ok(ProcessIdentity {
            pid,
            start_time: read_stat(pid)?.start_time,
        })
    }

    /// Whether the recorded process still runs (zombies count as gone and are reaped when
    /// they are our children).
    pub fn liveness(&self) -> Liveness {
        self.liveness_as(true)
    }

    /// `session_leader`: a lab server leads its own session; its descendants need not.
    fn liveness_as(&self, session_leader: bool) -> Liveness {
        match read_stat(self.pid) {
            Err(_) => Liveness::Gone,
            Ok(s)
                if s.start_time != self.start_time || (session_leader && s.session != self.pid) =>
            {
                Liveness::Replaced
            }
            // A zombie leader whose other threads still run has not exited yet.
            Ok(s) if (s.state == 'Z' || s.state == 'X') && live_threads(self.pid) <= 1 => {
                reap(self.pid);
                Liveness::Gone
            }
            Ok(_) => Liveness::Running,
        }
    }

    /// True when the recorded process is running.
    pub fn is_alive(&self) -> bool {
        self.liveness() == Liveness::Running
    }
}

/// A server to start: program, arguments and the log file that gets its stdout and stderr.
#[derive(Debug, Clone)]
pub struct Launch {
    /// The lab server's name, for messages ("sshd", "mariadb").
    pub name: String,
    /// The program.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<OsString>,
    /// stdout and stderr are appended here.
    pub log: PathBuf,
    /// Working directory (default: the caller's).
    pub cwd: Option<PathBuf>,
}

impl Launch {
    /// A launch of `program` logging to `log`.
    pub fn new(name: &str, program: impl Into<PathBuf>, log: impl Into<PathBuf>) -> Launch {
        Launch {
            name: name.to_string(),
            program: program.into(),
            args: Vec::new(),
            log: log.into(),
            cwd: None,
        }
    }

    /// Adds one argument.
    pub fn arg(mut self, a: impl Into<OsString>) -> Launch {
        self.args.push(a.into());
        self
    }

    /// Sets the working directory.
    pub fn cwd(mut self, dir: impl Into<PathBuf>) -> Launch {
        self.cwd = Some(dir.into());
        self
    }

    /// The command line as one string, for messages (no secrets are ever passed in argv).
    pub fn display(&self) -> String {
        std::iter::once(self.program.as_os_str())
            .chain(self.args.iter().map(|a| a.as_os_str()))
            .map(|s| s.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// A server process that was started and may not answer yet.
#[derive(Debug)]
pub struct Spawned {
    /// Its identity.
    pub identity: ProcessIdentity,
    /// The launch it came from.
    pub launch: Launch,
    /// Where its log was when it started: the tail shown on failure begins here.
    log_offset: u64,
}

/// A server failed to start or to answer in time.
#[derive(Debug)]
pub struct StartError {
    /// The server's name.
    pub name: String,
    /// What went wrong.
    pub reason: String,
    /// The log file.
    pub log: PathBuf,
    /// The last lines it logged in this attempt.
    pub log_tail: String,
    /// The log says its port was taken (the caller may retry on another port).
    pub address_in_use: bool,
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "lab server {} {}; last lines of {}:\n{}",
            self.name,
            self.reason,
            self.log.display(),
            if self.log_tail.trim().is_empty() {
                "(empty)"
            } else {
                self.log_tail.trim_end()
            }
        )
    }
}

impl std::error::Error for StartError {}

/// Starts `launch` in its own session (`setsid`), stdin from /dev/null, stdout and stderr
/// appended to its log file. Returns at once; see [`Spawned::wait_ready`].
pub fn spawn(launch: Launch) -> Result<Spawned> {
    if let Some(parent) = launch.log.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating the log directory {}", parent.display()))?;
    }
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&launch.log)
        .with_context(|| format!("opening the log {}", launch.log.display()))?;
    let log_offset = log.metadata().map(|m| m.len()).unwrap_or(0);
    let mut cmd = Command::new(&launch.program);
    cmd.args(&launch.args)
        .stdin(Stdio::null())
        .stdout(log.try_clone().context("duplicating the log handle")?)
        .stderr(log);
    if let Some(dir) = &launch.cwd {
        cmd.current_dir(dir);
    }
    // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() == -1 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().with_context(|| {
        format!(
            "starting lab server {}: `{}`",
            launch.name,
            launch.program.display()
        )
    })?;
    let pid = child.id() as i32;
    // The child is ours and unreaped, so /proc/<pid> exists even if it already exited.
    let identity = ProcessIdentity::of(pid)
        .with_context(|| format!("reading /proc/{pid}/stat of lab server {}", launch.name))?;
    Ok(Spawned {
        identity,
        launch,
        log_offset,
    })
}

impl Spawned {
    /// Polls `probe` until it succeeds, the process exits, or `timeout` passes. On failure
    /// the process is stopped and the error carries the tail of its log.
    pub fn wait_ready(
        &self,
        timeout: Duration,
        mut probe: impl FnMut() -> Result<()>,
    ) -> Result<(), StartError> {
        let deadline = Instant::now() + timeout;
        let mut last_err = None;
        loop {
            if !self.identity.is_alive() {
                return Err(self.error(match &last_err {
                    Some(e) => format!("exited before it answered (last probe: {e:#})"),
                    None => "exited before it answered".to_string(),
                }));
            }
            match probe() {
                Ok(()) => return Ok(()),
                Err(e) => last_err = Some(e),
            }
            if Instant::now() >= deadline {
                let _ = stop(&self.identity, Duration::from_secs(5));
                return Err(self.error(format!(
                    "did not answer within {:.1}s (last probe: {:#}); it was stopped",
                    timeout.as_secs_f64(),
                    last_err.expect("probed at least once")
                )));
            }
            std::thread::sleep(POLL);
        }
    }

    fn error(&self, reason: String) -> StartError {
        let log_tail = log_tail(&self.launch.log, self.log_offset, 20);
        StartError {
            name: self.launch.name.clone(),
            reason: format!("(`{}`) {reason}", self.launch.display()),
            log: self.launch.log.clone(),
            address_in_use: log_tail.contains("Address already in use"),
            log_tail,
        }
    }
}

/// The last `lines` lines written to `path` after byte `offset`.
pub fn log_tail(path: &Path, offset: u64, lines: usize) -> String {
    const MAX: u64 = 16 * 1024;
    let Ok(mut f) = File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let start = offset.max(len.saturating_sub(MAX)).min(len);
    let mut buf = Vec::new();
    if f.seek(SeekFrom::Start(start)).is_err() || f.read_to_end(&mut buf).is_err() {
        return String::new();
    }
    let text = String::from_utf8_lossy(&buf);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Stops exactly the recorded process: SIGTERM, up to `grace` for it to exit, then SIGKILL.
/// A PID that now names another process is left alone ([`StopOutcome::NotOurs`]).
///
/// Processes the server forked and left running when it exited (an sshd session whose client
/// is still connected) are stopped too: its descendants are listed before the signal, by PID
/// and start time, and whichever of them outlive it get the same treatment.
pub fn stop(id: &ProcessIdentity, grace: Duration) -> Result<StopOutcome> {
    if id.liveness() != Liveness::Running {
        return stop_one(id, grace, true);
    }
    let descendants = descendants_of(id.pid);
    let outcome = stop_one(id, grace, true)?;
    for d in &descendants {
        stop_one(d, Duration::from_secs(5), false)
            .with_context(|| format!("stopping process {} left behind by {}", d.pid, id.pid))?;
    }
    Ok(outcome)
}

fn stop_one(id: &ProcessIdentity, grace: Duration, session_leader: bool) -> Result<StopOutcome> {
    match id.liveness_as(session_leader) {
        Liveness::Gone => return Ok(StopOutcome::AlreadyGone),
        Liveness::Replaced => return Ok(StopOutcome::NotOurs),
        Liveness::Running => {}
    }
    signal(id.pid, libc::SIGTERM)?;
    if wait_gone(id, grace, session_leader) {
        return Ok(StopOutcome::Stopped);
    }
    // Check again right before the second signal: the PID must still be ours.
    if id.liveness_as(session_leader) != Liveness::Running {
        return Ok(StopOutcome::Stopped);
    }
    signal(id.pid, libc::SIGKILL)?;
    if wait_gone(id, Duration::from_secs(5), session_leader) {
        Ok(StopOutcome::Killed)
    } else {
        bail!(
            "process {} is still there 5s after SIGKILL (state D?)",
            id.pid
        )
    }
}

/// Every running descendant of `pid` (children first), from one scan of `/proc`.
fn descendants_of(pid: i32) -> Vec<ProcessIdentity> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let procs: Vec<(i32, ProcStat)> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|p| Some((p, read_stat(p).ok()?)))
        .collect();
    let mut out: Vec<ProcessIdentity> = Vec::new();
    let mut next = 0;
    let mut parent = pid;
    loop {
        for (p, st) in &procs {
            if st.ppid == parent && st.state != 'Z' && !out.iter().any(|o| o.pid == *p) {
                out.push(ProcessIdentity {
                    pid: *p,
                    start_time: st.start_time,
                });
            }
        }
        let Some(d) = out.get(next) else { break };
        parent = d.pid;
        next += 1;
    }
    out
}

fn signal(pid: i32, sig: i32) -> Result<()> {
    // SAFETY: kill(2) on a single positive PID that was just verified to be ours.
    if pid > 0 && unsafe { libc::kill(pid, sig) } == -1 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ESRCH) {
            return Err(e).with_context(|| format!("sending signal {sig} to process {pid}"));
        }
    }
    Ok(())
}

fn wait_gone(id: &ProcessIdentity, timeout: Duration, session_leader: bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if id.liveness_as(session_leader) != Liveness::Running {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(POLL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reused_pid_is_never_signalled() {
        let dir = tempfile::tempdir().unwrap();
        let s =
            spawn(Launch::new("sleeper", "/bin/sleep", dir.path().join("l")).arg("30")).unwrap();
        // Same PID, another start time: what /proc shows after the PID was reused.
        let other = ProcessIdentity {
            start_time: s.identity.start_time + 1,
            ..s.identity
        };
        assert_eq!(other.liveness(), Liveness::Replaced);
        assert_eq!(
            stop(&other, Duration::from_millis(10)).unwrap(),
            StopOutcome::NotOurs
        );
        assert!(
            s.identity.is_alive(),
            "the real process must not be touched"
        );
        stop(&s.identity, Duration::from_secs(5)).unwrap();
    }

    #[test]
    fn spawn_stop_and_reuse_guard() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("sleep.log");
        let s = spawn(Launch::new("sleeper", "/bin/sleep", &log).arg("30")).unwrap();
        assert!(s.identity.is_alive());
        s.wait_ready(Duration::from_secs(1), || Ok(())).unwrap();
        let t = Instant::now();
        assert_eq!(
            stop(&s.identity, Duration::from_secs(5)).unwrap(),
            StopOutcome::Stopped
        );
        assert!(t.elapsed() < Duration::from_secs(2));
        assert_eq!(s.identity.liveness(), Liveness::Gone);
        assert_eq!(
            stop(&s.identity, Duration::from_secs(1)).unwrap(),
            StopOutcome::AlreadyGone
        );
    }

    #[test]
    fn what_a_server_leaves_behind_is_stopped_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("parent.log");
        // A "server" that forks a session of its own (like sshd per connection).
        let s = spawn(
            Launch::new("parent", "/bin/sh", &log)
                .arg("-c")
                .arg("setsid sleep 60 & echo $! > child.pid; exec sleep 60")
                .cwd(dir.path()),
        )
        .unwrap();
        let pid_file = dir.path().join("child.pid");
        s.wait_ready(Duration::from_secs(5), || {
            std::fs::read_to_string(&pid_file)?.trim().parse::<i32>()?;
            Ok(())
        })
        .unwrap();
        let child: i32 = std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let child = ProcessIdentity::of(child).unwrap();
        assert_eq!(child.liveness_as(false), Liveness::Running);
        stop(&s.identity, Duration::from_secs(5)).unwrap();
        assert_eq!(child.liveness_as(false), Liveness::Gone);
    }

    #[test]
    fn sigterm_ignored_means_sigkill() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("stubborn.log");
        let s = spawn(
            Launch::new("stubborn", "/bin/sh", &log)
                .arg("-c")
                .arg("trap '' TERM; echo ready; while :; do sleep 0.05; done"),
        )
        .unwrap();
        s.wait_ready(Duration::from_secs(5), || {
            if std::fs::read_to_string(&log)?.contains("ready") {
                Ok(())
            } else {
                bail!("not yet")
            }
        })
        .unwrap();
        assert_eq!(
            stop(&s.identity, Duration::from_millis(300)).unwrap(),
            StopOutcome::Killed
        );
    }

    #[test]
    fn early_exit_reports_log_tail() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("bad.log");
        let s = spawn(
            Launch::new("bad", "/bin/sh", &log)
                .arg("-c")
                .arg("echo 'bind: Address already in use' >&2; exit 3"),
        )
        .unwrap();
        let e = s
            .wait_ready(Duration::from_secs(5), || bail!("no answer"))
            .unwrap_err();
        assert!(e.address_in_use, "{e}");
        let msg = e.to_string();
        assert!(msg.contains("lab server bad"), "{msg}");
        assert!(msg.contains("Address already in use"), "{msg}");
    }

    #[test]
    fn timeout_stops_and_reports() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("slow.log");
        let s = spawn(
            Launch::new("slow", "/bin/sh", &log)
                .arg("-c")
                .arg("echo starting; exec sleep 30"),
        )
        .unwrap();
        let e = s
            .wait_ready(Duration::from_millis(200), || bail!("refused"))
            .unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("did not answer"), "{msg}");
        assert!(msg.contains("starting"), "{msg}");
        assert!(!s.identity.is_alive());
    }
}
