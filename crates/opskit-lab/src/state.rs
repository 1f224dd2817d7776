//! `<lab>/lab.json`: what runs in a lab, and the lock that serialises `up`, `down` and
//! `status` on one lab directory.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::AsRawFd as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};

use crate::daemon::ProcessIdentity;

/// The state file's name inside the lab directory.
pub const STATE_FILE: &str = "lab.json";
const LOCK_FILE: &str = ".lab.lock";
const LOCK_TIMEOUT: Duration = Duration::from_secs(120);

/// One server process of the lab, as recorded in `lab.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerRecord {
    /// The process's name in the lab ("sshd", "mariadb", "php-fpm", ...).
    pub name: String,
    /// The component that started it (its name in `--only`).
    pub kind: String,
    /// The address it listens on, if it has a TCP port.
    pub address: Option<String>,
    /// Its TCP port.
    pub port: Option<u16>,
    /// Its unix socket.
    pub socket: Option<PathBuf>,
    /// The process ID.
    pub pid: i32,
    /// Start time of the process (clock ticks after boot), to recognise PID reuse.
    pub start_time: u64,
    /// Its stdout/stderr log.
    pub log: PathBuf,
    /// Component-specific facts (config files, client paths, URIs).
    #[serde(default)]
    pub details: BTreeMap<String, String>,
}

impl ServerRecord {
    /// The recorded process identity.
    pub fn identity(&self) -> ProcessIdentity {
        ProcessIdentity {
            pid: self.pid,
            start_time: self.start_time,
        }
    }

    /// A detail the component recorded, or an error naming the server and key.
    pub fn detail(&self, key: &str) -> Result<&str> {
        self.details.get(key).map(String::as_str).with_context(|| {
            format!(
                "lab server {} has no `{key}` in lab.json (recorded by an older opskit?)",
                self.name
            )
        })
    }
}

/// The contents of `lab.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct LabState {
    /// Format version.
    pub version: u32,
    /// The lab directory (absolute).
    pub dir: PathBuf,
    /// The servers, in start order.
    pub servers: Vec<ServerRecord>,
}

impl LabState {
    /// An empty state for `dir`.
    pub fn new(dir: &Path) -> LabState {
        LabState {
            version: 1,
            dir: dir.to_path_buf(),
            servers: Vec::new(),
        }
    }

    /// Reads `<dir>/lab.json`; a missing file is an empty lab.
    pub fn load(dir: &Path) -> Result<LabState> {
        let path = dir.join(STATE_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text)
                .with_context(|| format!("{} is not a valid lab state file", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(LabState::new(dir)),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Writes `<dir>/lab.json` atomically (temporary file + rename).
    pub fn save(&self) -> Result<()> {
        let path = self.dir.join(STATE_FILE);
        let tmp = self.dir.join(format!("{STATE_FILE}.tmp"));
        let text = serde_json::to_string_pretty(self).expect("state serializes") + "\n";
        std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))
    }

    /// The records of one component.
    pub fn of_kind<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a ServerRecord> + 'a {
        self.servers.iter().filter(move |s| s.kind == kind)
    }

    /// The record of the process called `name`.
    pub fn server(&self, name: &str) -> Option<&ServerRecord> {
        self.servers.iter().find(|s| s.name == name)
    }
}

/// Every process `up` launches is noted here before it is waited for, so a `down` (or the
/// next `up`) can stop it even when `up` was interrupted before writing `lab.json`.
const SPAWNED_FILE: &str = "spawned.jsonl";

#[derive(Serialize, Deserialize)]
struct SpawnedNote {
    name: String,
    #[serde(flatten)]
    identity: ProcessIdentity,
}

/// Notes a just-launched process in `<dir>/spawned.jsonl`.
pub fn note_spawned(dir: &Path, name: &str, identity: ProcessIdentity) -> Result<()> {
    use std::io::Write as _;
    let path = dir.join(SPAWNED_FILE);
    let line = serde_json::to_string(&SpawnedNote {
        name: name.to_string(),
        identity,
    })
    .expect("note serializes");
    File::options()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut f| writeln!(f, "{line}"))
        .with_context(|| format!("writing {}", path.display()))
}

/// Reads and clears `<dir>/spawned.jsonl`: `(name, identity)` of every process launched since.
pub fn take_spawned(dir: &Path) -> Result<Vec<(String, ProcessIdentity)>> {
    let path = dir.join(SPAWNED_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let notes = text
        .lines()
        .filter_map(|l| serde_json::from_str::<SpawnedNote>(l).ok())
        .map(|n| (n.name, n.identity))
        .collect();
    std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
    Ok(notes)
}

/// An exclusive `flock` on `<dir>/.lab.lock`, released on drop.
#[derive(Debug)]
pub struct LabLock {
    _file: File,
}

impl LabLock {
    /// Waits (up to two minutes) for the lab lock of `dir`.
    pub fn acquire(dir: &Path) -> Result<LabLock> {
        let path = dir.join(LOCK_FILE);
        // std opens with O_CLOEXEC, so the servers started under the lock do not inherit it.
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening the lab lock {}", path.display()))?;
        let deadline = Instant::now() + LOCK_TIMEOUT;
        loop {
            // SAFETY: flock on a file descriptor we own.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                return Ok(LabLock { _file: file });
            }
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(e).with_context(|| format!("locking {}", path.display()));
            }
            if Instant::now() >= deadline {
                bail!(
                    "another opskit lab command holds {} for more than {}s",
                    path.display(),
                    LOCK_TIMEOUT.as_secs()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
