//! The drill: bring up the lab and run every runbook against it through the real `opskit`
//! command line, exactly as an operator would, then check the outcome on the servers
//! themselves (rows in MariaDB, files on the SFTP host, alerts at the webhook, answers from
//! nginx). One report, exit 0 only when every check passed.
//!
//! Each runbook is one module ([`archive`], [`edge`]); each adds [`Check`]s to the report.

mod archive;
mod edge;
mod report;
mod run;

use std::path::PathBuf;
use std::time::Instant;

use opskit_lab::Component;

pub use report::{Check, DrillReport};
use run::Opskit;

/// What the drill runs and where.
#[derive(Debug, Clone)]
pub struct DrillOptions {
    /// The lab directory (created and brought up when needed; left running afterwards).
    pub lab_dir: PathBuf,
    /// The `opskit` binary to drive.
    pub opskit: PathBuf,
    /// Only these runbooks (`archive`, `nginx`); all when empty.
    pub only: Vec<String>,
    /// Rows seeded into the archived month.
    pub rows: u64,
}

/// The runbooks the drill knows, in the order it runs them.
pub const RUNBOOKS: &[&str] = &["archive", "nginx"];

/// Runs the drill. `Err` only when the lab itself cannot be brought up.
pub fn run(opts: &DrillOptions) -> anyhow::Result<DrillReport> {
    let mut report = DrillReport::new(&opts.lab_dir);
    let clock = Instant::now();
    let up = opskit_lab::up(&opts.lab_dir, &[], Some(opts.opskit.clone()))?;
    // `up` returns only when every server it started answered its readiness probe.
    let missing: Vec<&str> = Component::ALL
        .iter()
        .map(|c| c.name())
        .filter(|kind| up.state.of_kind(kind).next().is_none())
        .collect();
    report.push(Check::new(
        "lab",
        "every lab server starts and answers",
        missing.is_empty(),
        if missing.is_empty() {
            format!(
                "{} processes for {} components in {}",
                up.state.servers.len(),
                Component::ALL.len(),
                up.dir.display()
            )
        } else {
            format!("not running: {}", missing.join(", "))
        },
        clock.elapsed().as_secs_f64(),
    ));
    let opskit = Opskit::new(&opts.opskit, &up.opskit_toml);
    report.push(opskit.check(
        "config",
        "the lab's opskit.toml passes `opskit config check`",
        &["config", "check"],
        0,
    ));
    let wanted = |r: &str| opts.only.is_empty() || opts.only.iter().any(|o| o == r);
    if wanted("archive") {
        archive::drill(&opskit, &up.state, opts.rows, &mut report);
    }
    if wanted("nginx") {
        edge::drill(&opskit, &up.state, &mut report);
    }
    Ok(report)
}
