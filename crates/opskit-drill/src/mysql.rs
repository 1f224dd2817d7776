//! The switchover drill (spec §4) on the lab's five MariaDB, HAProxy and BIND: the topology,
//! a dry run that changes nothing, the switchover under a writer that follows DNS and a reader
//! through HAProxy, the target tree, DNS answer and read pool checked on the servers
//! themselves (SHOW SLAVE STATUS, `dig`, the admin socket), and the switch back, so the lab
//! ends in the tree it started in.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use opskit_core::config::Config;
use opskit_core::engine::{OutcomeKind, RunSummary};
use opskit_core::plan::PlanDescription;
use opskit_core::secret::Secret;
use opskit_lab::lab::LabView;
use opskit_lab::{BindLab, Component, HaproxyLab, LabState, MysqlLab, PoolMember};
use opskit_mysql::session::Credentials;
use opskit_mysql::switchover::{Layout, target};
use opskit_mysql::topology::TopologyReport;
use opskit_mysql::workload::{Reader, ReaderOptions, Writer, WriterOptions};

use crate::report::{Check, DrillReport};
use crate::run::Opskit;
use crate::{DrillContext, Section};

const RUNBOOK: &str = "mysql";

/// The mysql section.
pub struct MysqlDrill;

impl Section for MysqlDrill {
    fn needs(&self) -> &'static [Component] {
        &[Component::Mysql, Component::Haproxy, Component::Bind]
    }

    fn run(&self, cx: &DrillContext, report: &mut DrillReport) {
        let rig = match Rig::new(cx.opskit, cx.state) {
            Ok(r) => r,
            Err(e) => {
                report.push(Check::new(RUNBOOK, "read the lab", false, format!("{e:#}"), 0.0));
                return;
            }
        };
        let mut plan: Option<(String, String)> = None;
        let mut step = |name: &str, f: &mut dyn FnMut() -> anyhow::Result<String>| {
            report.step(RUNBOOK, name, f)
        };
        if !step("topology: every server answers, one master", &mut || {
            let (old, new, detail) = rig.topology()?;
            plan = Some((old, new));
            Ok(detail)
        }) {
            return;
        }
        let (old, new) = plan.clone().expect("set by the topology step");
        let start = match rig.tree() {
            Ok(t) => t,
            Err(e) => {
                report.push(Check::new(RUNBOOK, "read the tree", false, format!("{e:#}"), 0.0));
                return;
            }
        };
        step("--dry-run prints the plan and changes nothing", &mut || {
            rig.dry_run(&new)
        });
        let switched = step(
            "switchover under a DNS-following writer and a HAProxy reader: no write lost",
            &mut || rig.switch(&old, &new),
        );
        if switched {
            step(
                "the servers, DNS and the read pool are in the target state",
                &mut || rig.check_target(&start, &old, &new),
            );
        }
        step("switch back: the tree, DNS and pool are as they started", &mut || {
            if rig.tree()? == start {
                return Ok("nothing to switch back".into());
            }
            rig.switch(&new, &old)?;
            let now = rig.tree()?;
            ensure!(now == start, "the tree is {now:?}, it started as {start:?}");
            let dns = rig.bind.dig(rig.config.mysql.write_dns_name.as_str(), "A")?;
            ensure!(dns == [rig.address(&old)?], "DNS answers {dns:?}");
            Ok(format!("{old} is the master again; DNS {}", dns.join(" ")))
        });
    }
}

struct Rig<'a> {
    opskit: &'a Opskit,
    config: Config,
    mysql: MysqlLab,
    bind: BindLab,
    haproxy: HaproxyLab,
}

/// What must not move during a dry run, read from the servers.
#[derive(Debug, PartialEq)]
struct Observed {
    tree: Vec<(String, Option<String>, bool)>,
    read_only: Vec<String>,
    master_gtid: String,
    dns: Vec<String>,
    pool: Vec<(String, String, bool)>,
    haproxy_cfg: String,
}

impl<'a> Rig<'a> {
    fn new(opskit: &'a Opskit, state: &LabState) -> anyhow::Result<Rig<'a>> {
        let config = Config::load_file(opskit.config())?;
        // A switchover journal of an earlier drill would be resumed instead of a new plan.
        let journals = config.general.state_dir.path().join("journal").join(RUNBOOK);
        if journals.exists() {
            std::fs::remove_dir_all(&journals)
                .with_context(|| format!("clearing {}", journals.display()))?;
        }
        Ok(Rig {
            opskit,
            config,
            mysql: MysqlLab::from_state(state)?,
            bind: BindLab::from_state(state)?,
            haproxy: HaproxyLab::from_state(state)?,
        })
    }

    fn address(&self, name: &str) -> anyhow::Result<String> {
        Ok(self.mysql.get(name)?.address.to_string())
    }

    /// `(server, source)` as SHOW SLAVE STATUS on each server says.
    fn tree(&self) -> anyhow::Result<BTreeMap<String, Option<String>>> {
        Ok(self
            .mysql
            .tree()?
            .into_iter()
            .map(|(n, s, _)| (n, s))
            .collect())
    }

    /// Reads `opskit mysql topology --output json`; picks the master and the replica to
    /// promote (mysql.promote when it is a direct replica of the master).
    fn topology(&self) -> anyhow::Result<(String, String, String)> {
        let inv = self.opskit.run(&["--output", "json", "mysql", "topology"])?;
        ensure!(inv.code == 0, "exit {}: {}", inv.code, inv.last_error());
        let report: TopologyReport = inv.parse()?;
        let down: Vec<&str> = report
            .servers
            .iter()
            .filter(|s| !s.reachable())
            .map(|s| s.name.as_str())
            .collect();
        ensure!(down.is_empty(), "not answering: {down:?}");
        let [old] = report.roots.as_slice() else {
            bail!("the tree has {} masters: {:?}", report.roots.len(), report.roots);
        };
        let promote = self.config.mysql.promote.to_string();
        let new = if report.get(&promote).and_then(|s| s.source.as_ref()) == Some(old) {
            promote
        } else {
            report
                .children(old)
                .first()
                .map(|s| s.name.clone())
                .context("the master has no replica")?
        };
        // The tool's view must be the servers' own.
        let servers = self.tree()?;
        ensure!(
            servers == report.tree_map(),
            "opskit says {:?}, the servers say {servers:?}",
            report.tree_map()
        );
        Ok((
            old.clone(),
            new.clone(),
            format!(
                "master {old}, {} servers, worst lag {} s; promoting {new}",
                report.servers.len(),
                report.servers.iter().filter_map(|s| s.lag()).max().unwrap_or(0)
            ),
        ))
    }

    fn pool(&self) -> anyhow::Result<Vec<PoolMember>> {
        self.haproxy.pool()
    }

    fn observe(&self) -> anyhow::Result<Observed> {
        let master = self
            .tree()?
            .into_iter()
            .find(|(_, s)| s.is_none())
            .map(|(n, _)| n)
            .context("no master")?;
        Ok(Observed {
            tree: self.mysql.tree()?,
            read_only: self
                .mysql
                .servers
                .iter()
                .map(|s| s.server.sql("SELECT @@read_only"))
                .collect::<anyhow::Result<_>>()?,
            master_gtid: self.mysql.sql(&master, "SELECT @@gtid_binlog_pos")?,
            dns: self.bind.dig(self.config.mysql.write_dns_name.as_str(), "A")?,
            pool: self
                .pool()?
                .into_iter()
                .map(|m| (m.name, m.addr, m.maintenance))
                .collect(),
            haproxy_cfg: std::fs::read_to_string(&self.haproxy.config)?,
        })
    }

    fn dry_run(&self, new: &str) -> anyhow::Result<String> {
        let before = self.observe()?;
        let inv = self.opskit.run(&[
            "--output",
            "json",
            "mysql",
            "switchover",
            "--dry-run",
            "--new-master",
            new,
        ])?;
        ensure!(inv.code == 0, "exit {}: {}", inv.code, inv.last_error());
        let plan: PlanDescription = inv.parse()?;
        let ponr: Vec<&str> = plan
            .steps
            .iter()
            .filter(|s| s.point_of_no_return)
            .map(|s| s.id.as_str())
            .collect();
        ensure!(ponr == ["dns"], "the point of no return is {ponr:?}");
        let failed: Vec<&str> = plan
            .facts
            .iter()
            .filter(|f| f.name == "preflight FAIL")
            .map(|f| f.value.as_str())
            .collect();
        ensure!(failed.is_empty(), "preflight would refuse: {failed:?}");
        let after = self.observe()?;
        ensure!(before == after, "the dry run changed something: {before:?} → {after:?}");
        Ok(format!(
            "{} steps, {} commands; nothing changed on the servers, DNS or HAProxy",
            plan.steps.len(),
            plan.steps.iter().map(|s| s.commands.len()).sum::<usize>()
        ))
    }

    fn app(&self) -> anyhow::Result<Credentials> {
        Ok(Credentials {
            user: opskit_lab::components::mysql::APP_USER.into(),
            password: Secret::new(self.mysql.app_password()?),
        })
    }

    /// Switches `old` → `new` while a writer and a reader run; checks every committed row is
    /// on every server and no read failed.
    fn switch(&self, old: &str, new: &str) -> anyhow::Result<String> {
        let writer_name = format!("drill-{}", chrono::Utc::now().format("%H%M%S%3f"));
        let writer = Writer::start(WriterOptions {
            dns_server: self.config.mysql.dns.server.clone(),
            zone: self.config.mysql.dns.zone.to_string(),
            name: self.config.mysql.write_dns_name.to_string(),
            port: self.mysql.port,
            creds: self.app()?,
            writer: writer_name.clone(),
            table: opskit_mysql::workload::DEFAULT_TABLE.into(),
            interval: Duration::from_millis(5),
            retry: Duration::from_millis(5),
            timeout: Duration::from_secs(2),
        })?;
        let reader = Reader::start(ReaderOptions {
            host: self.haproxy.address.clone(),
            port: self.haproxy.port,
            creds: self.app()?,
            query: "SELECT @@server_id, COUNT(*) FROM lab.writes".into(),
            interval: Duration::from_millis(10),
            reconnect_every: 5,
            timeout: Duration::from_secs(2),
        })?;
        std::thread::sleep(Duration::from_millis(800));
        let inv = self
            .opskit
            .run(&["--output", "json", "mysql", "switchover", "--new-master", new]);
        std::thread::sleep(Duration::from_millis(800));
        let w = writer.stop();
        let r = reader.stop();
        let inv = inv?;
        let summary: RunSummary = inv.parse()?;
        ensure!(
            inv.code == 0 && summary.outcome == OutcomeKind::Succeeded,
            "exit {}, {:?}: {}",
            inv.code,
            summary.outcome,
            summary.error.unwrap_or_default()
        );
        // Every committed row, on every server, once.
        let gtid = self.mysql.sql(new, "SELECT @@gtid_binlog_pos")?.trim().to_string();
        let committed = w.committed_seqs();
        ensure!(committed.len() > 20, "the writer committed only {} rows", committed.len());
        for s in &self.mysql.servers {
            if s.name != new {
                let reached = s.server.sql(&format!("SELECT MASTER_GTID_WAIT('{gtid}', 30)"))?;
                ensure!(reached.trim() == "0", "{} did not reach {gtid}", s.name);
            }
            let rows: Vec<u64> = s
                .server
                .sql(&format!(
                    "SELECT seq FROM lab.writes WHERE writer = '{writer_name}' ORDER BY seq"
                ))?
                .lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect();
            let mut want = committed.clone();
            if let Some(u) = w.unknown.filter(|u| rows.contains(u)) {
                want.push(u);
            }
            ensure!(rows == want, "{}: {} rows, the writer committed {}", s.name, rows.len(), want.len());
        }
        ensure!(r.errors.is_empty() && r.reads > 0, "reads through HAProxy: {} ok, errors {:?}", r.reads, r.errors);
        let id = |n: &str| -> anyhow::Result<u32> {
            Ok(self.mysql.sql(n, "SELECT @@server_id")?.trim().parse()?)
        };
        let window = w
            .window(id(old)?, id(new)?)
            .map_or("?".to_string(), |w| format!("{:.3} s", w.secs()));
        Ok(format!(
            "{old} → {new} in {:.1} s; {} rows committed, all on all 5 servers; write-unavailable window {window}; {} reads, 0 errors",
            summary.duration_secs,
            committed.len(),
            r.reads
        ))
    }

    fn check_target(
        &self,
        start: &BTreeMap<String, Option<String>>,
        old: &str,
        new: &str,
    ) -> anyhow::Result<String> {
        let (want, _, _) = target(start, old, new, Layout::Mirror);
        let states = self.mysql.tree()?;
        for (name, source, running) in &states {
            ensure!(
                want.get(name) == Some(source),
                "{name} replicates from {source:?}, the target is {:?}",
                want.get(name)
            );
            ensure!(source.is_none() || *running, "{name} is not replicating");
        }
        for s in &self.mysql.servers {
            let ro = s.server.sql("SELECT @@read_only")?;
            ensure!(
                (ro.trim() == "0") == (s.name == new),
                "{} has read_only={}",
                s.name,
                ro.trim()
            );
        }
        let dns = self.bind.dig(self.config.mysql.write_dns_name.as_str(), "A")?;
        ensure!(dns == [self.address(new)?], "DNS answers {dns:?}");
        let old_at = format!("{}:{}", self.address(old)?, self.mysql.port);
        let new_at = format!("{}:{}", self.address(new)?, self.mysql.port);
        let pool = self.pool()?;
        ensure!(
            pool.iter().any(|m| m.addr == old_at && m.up && !m.maintenance),
            "{old} is not serving in the read pool: {pool:?}"
        );
        ensure!(
            !pool.iter().any(|m| m.addr == new_at),
            "the new master {new} is still in the read pool: {pool:?}"
        );
        let cfg = std::fs::read_to_string(&self.haproxy.config)?;
        ensure!(cfg.contains(&format!(" {old_at} ")), "haproxy.cfg does not have {old_at}");
        Ok(format!(
            "tree {}; DNS {}; pool has {old} at {old_at}",
            opskit_mysql::switchover::render_paths(
                &want,
                &self.mysql.servers.iter().map(|s| s.name.clone()).collect::<Vec<_>>()
            ),
            dns.join(" ")
        ))
    }
}
