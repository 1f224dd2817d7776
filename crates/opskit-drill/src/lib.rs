//! The drill: bring up the lab and run every runbook against it through the real `opskit`
//! command line, exactly as an operator would, then check the outcome on the servers
//! themselves (rows in MariaDB, files on the SFTP host, alerts at the webhook, answers from
//! nginx). One report, exit 0 only when every check passed.
//!
//! # Adding a section
//! Each runbook is one module with a unit struct implementing [`Section`]: it names the lab
//! components it needs and runs its scenarios, adding one [`Check`] per expectation. It reads
//! what `opskit` prints through the runbooks' own report types (`RunSummary`,
//! `PlanDescription`, `ProbeReport`, …), never by guessing at JSON keys. Then add one line to
//! the `sections!` call below: `Variant("name") => module::Type,`. That declares the module,
//! makes `--only name` work and fixes the order sections run in.

#![warn(missing_docs)]

mod report;
mod run;

use std::path::PathBuf;
use std::time::Instant;

use opskit_lab::{Component, LabState};

pub use report::{Check, DrillReport};
pub use run::{Invocation, Opskit};

/// What a section gets: the `opskit` binary with the lab's config, the lab, the options.
pub struct DrillContext<'a> {
    /// Drives the real binary with the lab's `opskit.toml`.
    pub opskit: &'a Opskit,
    /// The lab's servers.
    pub state: &'a LabState,
    /// The drill's options.
    pub options: &'a DrillOptions,
}

/// One runbook's part of the drill.
pub trait Section: Sync {
    /// The lab components it needs (brought up before it runs).
    fn needs(&self) -> &'static [Component];
    /// Runs its scenarios and adds their checks to `report`.
    fn run(&self, cx: &DrillContext, report: &mut DrillReport);
}

/// Declares the section modules, the [`SectionId`] enum and the registry in one list.
macro_rules! sections {
    ($( $(#[$doc:meta])* $variant:ident($name:literal) => $module:ident :: $ty:ident, )*) => {
        $( mod $module; )*

        /// A section of the drill (see the [crate docs](crate) to add one).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum SectionId {
            $( $(#[$doc])* $variant, )*
        }

        impl SectionId {
            /// Every section, in the order the drill runs them.
            pub const ALL: &'static [SectionId] = &[$(SectionId::$variant),*];

            /// Its name in `--only` and in the report (the runbook's name).
            pub fn name(self) -> &'static str {
                match self { $( SectionId::$variant => $name, )* }
            }

            /// Its implementation.
            pub fn section(self) -> &'static dyn Section {
                match self { $( SectionId::$variant => &$module::$ty, )* }
            }
        }
    };
}

sections! {
    /// Spec §1: the monthly archive on the lab's SFTP host, from its MariaDB and from its
    /// MongoDB-compatible server (SecantusDB).
    Archive("archive") => archive::ArchiveDrill,
    /// Spec §2: the nginx edge, checked and probed live.
    Nginx("nginx") => nginx::NginxDrill,
    /// Spec §3: the Docker firewall on the lab's namespace host, checked by probes from inside.
    Firewall("firewall") => firewall::FirewallDrill,
    /// Spec §4: the MySQL switchover under load and back, on five MariaDB, HAProxy and BIND.
    Mysql("mysql") => mysql::MysqlDrill,
    /// Spec §5: "gone away" reproduced with PHP PDO through HAProxy, diagnosed and probed.
    Doctor("doctor") => doctor::DoctorDrill,
}

impl std::str::FromStr for SectionId {
    type Err = String;
    fn from_str(s: &str) -> Result<SectionId, String> {
        SectionId::ALL
            .iter()
            .copied()
            .find(|c| c.name() == s)
            .ok_or_else(|| {
                format!(
                    "unknown drill section `{s}`; the sections are: {}",
                    SectionId::ALL
                        .iter()
                        .map(|c| c.name())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })
    }
}

impl std::fmt::Display for SectionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What the drill runs and where.
#[derive(Debug, Clone)]
pub struct DrillOptions {
    /// The lab directory (created and brought up when needed; left running afterwards).
    pub lab_dir: PathBuf,
    /// The `opskit` binary to drive.
    pub opskit: PathBuf,
    /// Only these sections; all when empty.
    pub only: Vec<SectionId>,
    /// Rows seeded into the archived month.
    pub rows: u64,
}

impl DrillOptions {
    /// The selected sections, in run order.
    pub fn sections(&self) -> Vec<SectionId> {
        SectionId::ALL
            .iter()
            .copied()
            .filter(|s| self.only.is_empty() || self.only.contains(s))
            .collect()
    }
}

/// Runs the drill. `Err` only when the lab itself cannot be brought up.
pub fn run(opts: &DrillOptions) -> anyhow::Result<DrillReport> {
    let mut report = DrillReport::new(&opts.lab_dir);
    let clock = Instant::now();
    let sections = opts.sections();
    let mut needed: Vec<Component> = Vec::new();
    for s in &sections {
        for c in s.section().needs() {
            if !needed.contains(c) {
                needed.push(*c);
            }
        }
    }
    let up = opskit_lab::up(&opts.lab_dir, &needed, Some(opts.opskit.clone()))?;
    // `up` returns only when every server it started answered its readiness probe.
    let missing: Vec<&str> = needed
        .iter()
        .map(|c| c.name())
        .filter(|kind| up.state.of_kind(kind).next().is_none())
        .collect();
    report.push(Check::new(
        "lab",
        "every lab server the drill needs starts and answers",
        missing.is_empty(),
        if missing.is_empty() {
            format!(
                "{} processes for {} components in {}",
                up.state.servers.len(),
                needed.len(),
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
    let cx = DrillContext {
        opskit: &opskit,
        state: &up.state,
        options: opts,
    };
    for s in sections {
        s.section().run(&cx, &mut report);
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_are_named_and_selected_in_run_order() {
        assert_eq!(
            SectionId::ALL.iter().map(|s| s.name()).collect::<Vec<_>>(),
            ["archive", "nginx", "firewall", "mysql", "doctor"]
        );
        let opts = DrillOptions {
            lab_dir: "/tmp/x".into(),
            opskit: "/bin/true".into(),
            only: vec![SectionId::Nginx, SectionId::Archive],
            rows: 10,
        };
        assert_eq!(opts.sections(), [SectionId::Archive, SectionId::Nginx]);
        assert!(
            "mongodb"
                .parse::<SectionId>()
                .unwrap_err()
                .contains("archive, nginx, firewall, mysql, doctor")
        );
    }
}
