//! A **MongoDB-compatible** server for the archive's `mongodb://` path: SecantusDB (PyPI), a
//! wire-protocol server over WiredTiger that reports version 8.2. It is *not* MongoDB: it has
//! real storage and query semantics, so the archive's export, anomaly scan, purge and restore
//! run end to end, but its speed says nothing about MongoDB's and it differs in places (the
//! archive runbook lists where). MongoDB itself cannot be installed here; the opt-in test
//! against a real server stays (`OPSKIT_TEST_MONGODB_URI`).
//!
//! It runs standalone (not a replica set) on 127.0.0.1 with its data under `<lab>/mongodb/`.
//! The server and its Python come from a virtualenv that `scripts/install-deps` creates
//! (`/opt/opskit-lab/secantusdb`, or `$OPSKIT_SECANTUSD` naming the `secantusd-py` script);
//! it is a test tool, never shipped with opskit.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};

use super::{Endpoint, LOOPBACK, LabContext, Server, config_path, tcp_connect, with_free_port};
use crate::daemon::Launch;
use crate::state::{LabState, ServerRecord};

/// The MongoDB-compatible server component.
pub struct Mongodb;

const KIND: &str = "mongodb";
/// The server's name in reports: say what it is.
pub const SERVER_NAME: &str = "SecantusDB (MongoDB-compatible, not MongoDB)";
/// Names the `secantusd-py` script when it is not in the default virtualenv.
pub const SECANTUSD_ENV: &str = "OPSKIT_SECANTUSD";
/// Where `scripts/install-deps` puts the virtualenv.
pub const DEFAULT_VENV: &str = "/opt/opskit-lab/secantusdb";

/// The `secantusd-py` script: `$OPSKIT_SECANTUSD`, else the default virtualenv's, else
/// the one on `PATH`.
pub fn secantusd() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os(SECANTUSD_ENV) {
        let p = PathBuf::from(p);
        if !p.is_file() {
            bail!("${SECANTUSD_ENV} names {}, which does not exist", p.display());
        }
        return Ok(p);
    }
    let venv = Path::new(DEFAULT_VENV).join("bin/secantusd-py");
    if venv.is_file() {
        return Ok(venv);
    }
    std::env::var_os("PATH")
        .and_then(|path| {
            std::env::split_paths(&path)
                .map(|d| d.join("secantusd-py"))
                .find(|p| p.is_file())
        })
        .with_context(|| {
            format!(
                "the MongoDB-compatible lab server (SecantusDB) is not installed: run \
                 scripts/install-deps (it creates {DEFAULT_VENV}), or set ${SECANTUSD_ENV}"
            )
        })
}

impl Server for Mongodb {
    fn start(&self, ctx: &LabContext, previous: &[ServerRecord]) -> Result<Vec<ServerRecord>> {
        let server = secantusd()?;
        // The virtualenv's own python runs the server script and the seeding client (pymongo
        // comes with SecantusDB).
        let python = server
            .parent()
            .map(|bin| bin.join("python3"))
            .filter(|p| p.exists())
            .context("no python3 next to secantusd-py")?;
        let dir = ctx.mkdir("mongodb")?;
        let data = dir.join("data");
        let log = dir.join("secantusd.log");
        let preferred = previous.iter().find_map(|r| r.port);
        let mut record = with_free_port(preferred, |port| {
            let launch = Launch::new(KIND, &python, &log)
                .arg(&server)
                .arg("--host")
                .arg(LOOPBACK)
                .arg("--port")
                .arg(port.to_string())
                .arg("--storage-path")
                .arg(&data)
                .arg("--standalone")
                .arg("--log-level")
                .arg("WARNING");
            ctx.start_process(
                KIND,
                launch,
                Endpoint {
                    address: None,
                    port: Some(port),
                    socket: None,
                },
                Duration::from_secs(30),
                || tcp_connect(port).map(drop),
            )
        })?;
        let port = record.port.expect("the server has a port");
        for (k, v) in [
            ("uri", format!("mongodb://{LOOPBACK}:{port}/")),
            ("python", config_path(&python)?.to_string()),
            ("server", SERVER_NAME.to_string()),
        ] {
            record.details.insert(k.into(), v);
        }
        Ok(vec![record])
    }
}

/// The lab's MongoDB-compatible server as a test or drill sees it.
#[derive(Debug, Clone)]
pub struct MongodbServer {
    /// Its TCP port on 127.0.0.1.
    pub port: u16,
    /// `mongodb://127.0.0.1:<port>/`, the form of `archive.source_uri`.
    pub uri: String,
    /// The virtualenv's python (with pymongo), for seeding and checks.
    pub python: PathBuf,
}

impl crate::LabView for MongodbServer {
    fn from_state(state: &LabState) -> Result<MongodbServer> {
        let r = state.server(KIND).with_context(|| {
            format!(
                "the lab in {} runs no MongoDB-compatible server",
                state.dir.display()
            )
        })?;
        Ok(MongodbServer {
            port: r.port.context("mongodb has no port in lab.json")?,
            uri: r.detail("uri")?.into(),
            python: r.detail("python")?.into(),
        })
    }
}

impl MongodbServer {
    /// Runs a Python script (on stdin, never in argv) with pymongo imported and `db` bound to
    /// database `database`; returns what it printed.
    pub fn python(&self, database: &str, script: &str) -> Result<String> {
        let program = format!(
            "import sys, json, datetime, pymongo\n\
             client = pymongo.MongoClient({uri:?}, serverSelectionTimeoutMS=10000)\n\
             db = client[{database:?}]\n{script}\n",
            uri = self.uri,
        );
        let out = opskit_core::proc::run_with_input(
            std::process::Command::new(&self.python).arg("-"),
            Some(program.as_bytes()),
            Duration::from_secs(600),
        )
        .and_then(opskit_core::proc::Output::checked)
        .with_context(|| format!("running a pymongo script against {}", self.uri))?;
        Ok(out.stdout_text())
    }
}
