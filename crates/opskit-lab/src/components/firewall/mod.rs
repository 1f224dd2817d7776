//! A Docker host in network namespaces for spec §3 (needs root: network namespaces, iptables).
//!
//! The namespaces, links, addresses and Docker 29's own rules ([`topology`]) are made and held
//! by one lab process, `opskit lab netns-holder --dir <lab> --prefix <p>` ([`hold`]): it
//! deletes every namespace it made when it gets SIGTERM, so `opskit lab down` removes them
//! like any other server. The listeners (one `socat` per container port, answering with the
//! container's name, and one on the Internet host) are lab processes too, started with
//! `ip netns exec`. `opskit.toml` gets `[firewall]` pointed at the host namespace (`netns`),
//! with no Docker to ask and the persist files inside the lab; tests and the drill reach the
//! rest through [`FirewallLab`].

pub mod topology;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use opskit_core::config::Config;
use opskit_core::config::FirewallConfig;
use opskit_core::proc;
use opskit_firewall::iptables::{Iptables, find_program, without_counters};
use opskit_firewall::matrix::Testbed;
use opskit_firewall::netns::{self, Connect};
use topology::Topology;

use super::{Endpoint, LabContext, Server, config_path};
use crate::daemon::Launch;
use crate::state::{LabState, ServerRecord};

/// The component.
pub struct Firewall;

const KIND: &str = "firewall";
const READY_FILE: &str = "firewall/ready";
const IP_TIMEOUT: Duration = Duration::from_secs(30);
/// `net.bridge.bridge-nf-call-iptables`: whether bridged traffic passes iptables.
pub const BRIDGE_NF: &str = "net.bridge.bridge-nf-call-iptables";

fn ip(args: &[&str], input: Option<&str>) -> Result<()> {
    let mut cmd = Command::new(find_program("ip")?);
    cmd.args(args);
    proc::run_with_input(&mut cmd, input.map(str::as_bytes), IP_TIMEOUT)?.checked()?;
    Ok(())
}

/// Makes every namespace, link, address and route of `t`, turns on forwarding and loads
/// Docker's rules. On error the caller removes what was made ([`remove`]).
pub fn create(t: &Topology) -> Result<()> {
    let adds: String = t
        .namespaces()
        .iter()
        .map(|ns| format!("netns add {ns}\n"))
        .collect();
    ip(&["-batch", "-"], Some(&adds)).context("creating the network namespaces")?;
    for (ns, lines) in t.link_scripts() {
        let script = lines.join("\n") + "\n";
        ip(&["-n", &ns, "-batch", "-"], Some(&script))
            .with_context(|| format!("setting up the links of {ns}"))?;
    }
    for ns in t.routers() {
        netns::write_sysctl(&ns, "net.ipv4.ip_forward", "1")?;
    }
    docker_start(t).context("loading Docker's rules into the host namespace")
}

/// Deletes every namespace of `t` that exists (their links go with them); returns what it
/// could not delete.
pub fn remove(t: &Topology) -> Vec<String> {
    let mut failed = Vec::new();
    for ns in t.namespaces().iter().rev() {
        if netns::exists(ns)
            && let Err(e) = ip(&["netns", "del", ns], None)
        {
            failed.push(format!("{ns}: {e:#}"));
        }
    }
    failed
}

fn host_iptables(t: &Topology) -> Iptables {
    let cfg = FirewallConfig {
        netns: t.host().try_into().expect("a valid namespace name"),
        ..FirewallConfig::default()
    };
    Iptables::from_config(&cfg)
}

/// `iptables-restore` in the host namespace *without* `--noflush`: every table named in
/// `text` is replaced whole.
fn replace_tables(t: &Topology, text: &str) -> Result<()> {
    let restore = FirewallConfig::default().iptables_restore;
    let mut cmd = Command::new(find_program("ip")?);
    cmd.args(["netns", "exec", &t.host()]).arg(restore.path()).args(["-w", "10"]);
    proc::run_with_input(&mut cmd, Some(text.as_bytes()), IP_TIMEOUT)?.checked()?;
    Ok(())
}

/// What dockerd does to the rules when it starts: its `raw` and `nat` rules and its own
/// `filter` chains rebuilt, `DOCKER-USER` created only if missing (its rules are kept), and
/// `FORWARD` jumping to `DOCKER-USER` first, then to `DOCKER-FORWARD`.
pub fn docker_start(t: &Topology) -> Result<()> {
    let d = t.docker_tables();
    replace_tables(t, &format!("{}{}", d.raw, d.nat))?;
    let ipt = host_iptables(t);
    let live = ipt.filter()?;
    let mut filter = d.filter_chains.clone();
    if live.rules("DOCKER-USER").is_none() {
        filter.push_str(":DOCKER-USER - [0:0]\n");
    }
    for r in live.rules("FORWARD").unwrap_or_default() {
        if r == "-A FORWARD -j DOCKER-USER" || r == "-A FORWARD -j DOCKER-FORWARD" {
            filter.push_str(&format!("-D {}\n", &r[3..]));
        }
    }
    filter.push_str("-I FORWARD 1 -j DOCKER-FORWARD\n-I FORWARD 1 -j DOCKER-USER\nCOMMIT\n");
    ipt.load(&filter)
}

/// Runs as `opskit lab netns-holder`: makes the namespaces of the lab in `lab_dir`, says so
/// in `<lab>/firewall/ready`, and waits; on SIGTERM, SIGINT or SIGHUP deletes them and returns.
pub fn hold(lab_dir: &Path, prefix: &str) -> Result<()> {
    // Blocked before any thread exists, so every thread inherits the mask and the signal
    // waits for sigwait below instead of killing the process half-way.
    // SAFETY: plain signal-set calls on a local set.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            libc::sigaddset(&mut set, s);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    };
    let t = Topology::with_prefix(prefix);
    let ready = lab_dir.join(READY_FILE);
    let _ = std::fs::remove_file(&ready);
    // Left over by a holder that was killed with SIGKILL.
    let stale = remove(&t);
    if !stale.is_empty() {
        bail!("stale namespaces could not be removed: {}", stale.join("; "));
    }
    let clock = Instant::now();
    if let Err(e) = create(&t) {
        let left = remove(&t);
        bail!("{e:#}{}", if left.is_empty() { String::new() } else { format!("; and could not remove: {}", left.join("; ")) });
    }
    std::fs::write(&ready, format!("{}\n", t.namespaces().join(" ")))
        .with_context(|| format!("writing {}", ready.display()))?;
    eprintln!(
        "netns-holder: {} namespaces ready in {:.2}s: {}",
        t.namespaces().len(),
        clock.elapsed().as_secs_f64(),
        t.namespaces().join(" ")
    );
    let mut sig = 0;
    // SAFETY: waits for one of the blocked signals.
    unsafe { libc::sigwait(&set, &mut sig) };
    eprintln!("netns-holder: signal {sig}: deleting the namespaces");
    let _ = std::fs::remove_file(&ready);
    let left = remove(&t);
    if !left.is_empty() {
        bail!("could not delete: {}", left.join("; "));
    }
    Ok(())
}

fn ready_probe(ready: &Path, t: &Topology) -> Result<()> {
    if !ready.exists() {
        bail!("{} not written yet", ready.display());
    }
    for ns in t.namespaces() {
        if !netns::exists(&ns) {
            bail!("network namespace {ns} does not exist");
        }
    }
    Ok(())
}

fn listener_probe(ns: &str, port: u16, banner: &str) -> Result<()> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    match netns::connect(ns, addr, Duration::from_secs(1), true)? {
        Connect::Open(b) if b == banner => Ok(()),
        other => bail!("{ns} 127.0.0.1:{port}: {other:?}"),
    }
}

impl Server for Firewall {
    fn start(&self, ctx: &LabContext, _previous: &[ServerRecord]) -> Result<Vec<ServerRecord>> {
        if !ctx.is_root() {
            bail!("the firewall component needs root (network namespaces and iptables)");
        }
        for tool in ["ip", "socat", "unshare", "iptables-restore", "iptables-save"] {
            find_program(tool).with_context(|| {
                format!("the firewall component needs `{tool}` (scripts/install-deps installs it)")
            })?;
        }
        let dir = ctx.mkdir("firewall")?;
        let t = Topology::for_lab(ctx.dir());
        let ready = ctx.path(READY_FILE);
        let _ = std::fs::remove_file(&ready);
        let launch = Launch::new(KIND, ctx.opskit_exe()?, dir.join("netns-holder.log"))
            .arg("lab")
            .arg("netns-holder")
            .arg("--dir")
            .arg(ctx.dir())
            .arg("--prefix")
            .arg(&t.prefix);
        let mut holder = ctx.start_process(KIND, launch, Endpoint::default(), IP_TIMEOUT, || {
            ready_probe(&ready, &t)
        })?;
        holder.details.insert("prefix".into(), t.prefix.clone());
        holder.details.insert("dir".into(), config_path(&dir)?.to_string());
        holder.details.insert("namespaces".into(), t.namespaces().join(" "));
        holder
            .details
            .insert("host_netns".into(), t.host());
        for (role, name, address) in t.machines() {
            holder.details.insert(format!("netns.{name}"), t.ns(&role));
            holder.details.insert(format!("address.{name}"), address.to_string());
        }
        holder.details.insert(
            "bridges".into(),
            t.bridges()
                .iter()
                .map(|(b, gw)| format!("{b}={gw}/24"))
                .collect::<Vec<_>>()
                .join(" "),
        );
        let mut records = vec![holder];
        let ip = find_program("ip")?;
        let echo = find_program("echo")?;
        let addresses = t.machines();
        for (ns, port, banner) in t.listeners() {
            let name = format!("firewall-{banner}-{port}");
            let launch = Launch::new(&name, &ip, dir.join(format!("{name}.log")))
                .arg("netns")
                .arg("exec")
                .arg(&ns)
                .arg("socat")
                .arg(format!("TCP-LISTEN:{port},fork,reuseaddr,backlog=512"))
                .arg(format!("EXEC:{} {banner}", echo.display()));
            let address = addresses
                .iter()
                .find(|(_, n, _)| *n == banner)
                .map(|(_, _, a)| *a);
            let mut r = ctx.start_process(
                KIND,
                launch,
                Endpoint {
                    address,
                    port: Some(port),
                    socket: None,
                },
                Duration::from_secs(10),
                || listener_probe(&ns, port, &banner),
            )?;
            r.details.insert("netns".into(), ns.clone());
            records.push(r);
        }
        Ok(records)
    }

    fn probe(&self, _ctx: &LabContext, record: &ServerRecord) -> Result<()> {
        if record.name == KIND {
            let t = Topology::with_prefix(record.detail("prefix")?);
            return ready_probe(&PathBuf::from(record.detail("dir")?).join("ready"), &t);
        }
        let port = record.port.context("a listener without a port")?;
        let banner = record
            .name
            .strip_prefix("firewall-")
            .and_then(|r| r.rsplit_once('-'))
            .map(|(b, _)| b)
            .context("a listener with an unexpected name")?;
        listener_probe(record.detail("netns")?, port, banner)
    }

    fn configure(&self, records: &[ServerRecord], config: &mut Config) -> Result<()> {
        let holder = records
            .iter()
            .find(|r| r.name == KIND)
            .context("no netns-holder record")?;
        let t = Topology::with_prefix(holder.detail("prefix")?);
        let dir = PathBuf::from(holder.detail("dir")?);
        let fw = &mut config.firewall;
        fw.containers.clone_from(&t.containers);
        fw.netns = t.host().try_into().map_err(anyhow::Error::msg)?;
        fw.docker = String::new().try_into().map_err(anyhow::Error::msg)?;
        fw.rules_file = config_path(&dir.join("persist/firewall.rules"))?
            .parse()
            .map_err(anyhow::Error::msg)?;
        fw.systemd_dir = config_path(&dir.join("root/etc/systemd/system"))?
            .parse()
            .map_err(anyhow::Error::msg)?;
        Ok(())
    }
}

/// The lab's Docker host as a test or drill sees it.
#[derive(Debug, Clone)]
pub struct FirewallLab {
    /// `<lab>/firewall`.
    pub dir: PathBuf,
    /// The namespaces and addresses.
    pub topology: Topology,
}

impl crate::LabView for FirewallLab {
    fn from_state(state: &LabState) -> Result<FirewallLab> {
        let r = state.server(KIND).with_context(|| {
            format!(
                "the lab in {} runs no firewall component",
                state.dir.display()
            )
        })?;
        Ok(FirewallLab {
            dir: r.detail("dir")?.into(),
            topology: Topology::with_prefix(r.detail("prefix")?),
        })
    }
}

impl FirewallLab {
    /// The Docker host's namespace.
    pub fn host_netns(&self) -> String {
        self.topology.host()
    }

    /// Every namespace the lab made.
    pub fn namespaces(&self) -> Vec<String> {
        self.topology.namespaces()
    }

    /// The machines the reachability matrix probes from.
    pub fn testbed(&self) -> Testbed {
        self.topology.testbed()
    }

    /// The host namespace's iptables.
    pub fn iptables(&self) -> Iptables {
        host_iptables(&self.topology)
    }

    /// `raw`, `nat` and `filter` of the host namespace, without counters and timestamps:
    /// equal text means the same rules in the same order.
    pub fn save_all(&self) -> Result<String> {
        let ipt = self.iptables();
        let mut out = String::new();
        for table in ["raw", "nat", "filter"] {
            out.push_str(&without_counters(&ipt.save(table)?));
        }
        Ok(out)
    }

    /// What dockerd does when it (re)starts (see [`docker_start`]).
    pub fn docker_start(&self) -> Result<()> {
        docker_start(&self.topology)
    }

    /// What a reboot leaves: no rules at all in any table.
    pub fn reboot(&self) -> Result<()> {
        replace_tables(
            &self.topology,
            "*raw\nCOMMIT\n*nat\nCOMMIT\n*mangle\nCOMMIT\n*filter\nCOMMIT\n",
        )
    }

    /// What Docker does on a firewalld reload: `DOCKER-USER` recreated empty.
    pub fn empty_user_chain(&self) -> Result<()> {
        self.iptables().load("*filter\n:DOCKER-USER - [0:0]\nCOMMIT\n")
    }

    /// Sets `net.bridge.bridge-nf-call-iptables` in the host namespace.
    pub fn set_bridge_nf_call_iptables(&self, on: bool) -> Result<()> {
        netns::write_sysctl(&self.host_netns(), BRIDGE_NF, if on { "1" } else { "0" })?;
        let now = netns::read_sysctl(&self.host_netns(), BRIDGE_NF)?;
        if now != if on { "1" } else { "0" } {
            bail!("{BRIDGE_NF} is {now} after setting it");
        }
        Ok(())
    }

    /// The namespaces of this lab that exist now.
    pub fn existing_namespaces(&self) -> Vec<String> {
        self.namespaces()
            .into_iter()
            .filter(|n| netns::exists(n))
            .collect()
    }

    /// Runs a program inside the host namespace (`ip netns exec`), with a time limit.
    pub fn run_in_host(&self, argv: &[&str], input: Option<&str>) -> Result<proc::Output> {
        let mut cmd = Command::new(find_program("ip")?);
        cmd.args(["netns", "exec", &self.host_netns()]).args(argv);
        proc::run_with_input(&mut cmd, input.map(str::as_bytes), Duration::from_secs(60))
    }
}
