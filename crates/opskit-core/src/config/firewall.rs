//! `[firewall]`: the Docker iptables policy of spec §3.
//!
//! Every value that ends up in an iptables rule, a shell command or a systemd unit is a
//! validated type here (an IPv4 range, an interface name, a namespace name), so a config that
//! deserializes is safe to render. [`FirewallConfig::check`] adds the rules that span fields:
//! unique names and addresses, known names in `allowed_pairs`, one owner per host port, and a
//! policy that iptables can actually enforce on the given bridges.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::value::{AbsPath, Name, Positive};

/// An inclusive IPv4 address range, written `first-last` (`192.168.1.1-192.168.1.30`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Ipv4Range {
    first: Ipv4Addr,
    last: Ipv4Addr,
}

impl Ipv4Range {
    /// The range from `first` to `last`; `Err` when `first > last`.
    pub fn new(first: Ipv4Addr, last: Ipv4Addr) -> Result<Ipv4Range, String> {
        if first > last {
            return Err(format!(
                "`{first}-{last}` is not an IPv4 range: the first address is above the last"
            ));
        }
        Ok(Ipv4Range { first, last })
    }

    /// The lowest address.
    pub fn first(&self) -> Ipv4Addr {
        self.first
    }

    /// The highest address.
    pub fn last(&self) -> Ipv4Addr {
        self.last
    }

    /// True when `a` is inside the range.
    pub fn contains(&self, a: Ipv4Addr) -> bool {
        self.first <= a && a <= self.last
    }
}

impl FromStr for Ipv4Range {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "`{s}` is not an IPv4 range: write it `first-last` with dotted addresses, for \
                 example 192.168.1.1-192.168.1.30"
            )
        };
        let (a, b) = s.split_once('-').ok_or_else(bad)?;
        // Parsed strictly: no spaces, no leading zeros, no CIDR suffix.
        let a: Ipv4Addr = a.parse().map_err(|_| bad())?;
        let b: Ipv4Addr = b.parse().map_err(|_| bad())?;
        Ipv4Range::new(a, b)
    }
}

impl TryFrom<String> for Ipv4Range {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<Ipv4Range> for String {
    fn from(r: Ipv4Range) -> String {
        r.to_string()
    }
}

impl fmt::Display for Ipv4Range {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

/// A network interface name as the kernel accepts it: 1-15 bytes of letters, digits, `_`, `.`
/// and `-`, not starting with `-` (so it can never read as an iptables option).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct InterfaceName(String);

impl InterfaceName {
    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for InterfaceName {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let ok_chars = s
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
        if s.is_empty() || s.len() > 15 || !ok_chars || s.starts_with('-') || s == "." || s == ".."
        {
            return Err(format!(
                "`{s}` is not an interface name: use 1-15 letters, digits, '_', '.' or '-', not \
                 starting with '-' (Docker bridges are named like br-ab or docker0)"
            ));
        }
        Ok(InterfaceName(s))
    }
}

impl FromStr for InterfaceName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::try_from(s.to_string())
    }
}

impl From<InterfaceName> for String {
    fn from(v: InterfaceName) -> String {
        v.0
    }
}

impl fmt::Display for InterfaceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A named network namespace (`ip netns`), or empty for the host's own network stack.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct NetnsName(String);

impl NetnsName {
    /// The namespace, or `None` for the host itself.
    pub fn get(&self) -> Option<&str> {
        (!self.0.is_empty()).then_some(self.0.as_str())
    }
}

impl TryFrom<String> for NetnsName {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let ok_chars = s
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
        if s.len() > 64 || !ok_chars || s.starts_with(['-', '.']) {
            return Err(format!(
                "`{s}` is not a network namespace name: use up to 64 letters, digits, '_', '.' or \
                 '-', not starting with '-' or '.' (empty: the host itself)"
            ));
        }
        Ok(NetnsName(s))
    }
}

impl From<NetnsName> for String {
    fn from(v: NetnsName) -> String {
        v.0
    }
}

impl fmt::Display for NetnsName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The Docker command line client, or empty when the host has no Docker to ask (the lab).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DockerCli(Option<AbsPath>);

impl DockerCli {
    /// The client's path, or `None` when Docker is not to be asked.
    pub fn path(&self) -> Option<&AbsPath> {
        self.0.as_ref()
    }
}

impl TryFrom<String> for DockerCli {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        if s.is_empty() {
            return Ok(DockerCli(None));
        }
        Ok(DockerCli(Some(s.try_into()?)))
    }
}

impl From<DockerCli> for String {
    fn from(v: DockerCli) -> String {
        v.0.map(String::from).unwrap_or_default()
    }
}

/// How spec §3's "only 192.168.1.1-30 may reach all containers" meets "A:8080 and C:80 are
/// served to the outside world" (the two readings of `notes/firewall.md` §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Reading {
    /// R1: the LAN range reaches every port of every container; everyone else reaches only the
    /// published ports (A:8080, C:80); B's private port only from the LAN range.
    #[default]
    Tiered,
    /// R2: only the LAN range reaches anything, and only the published ports.
    Strict,
}

impl fmt::Display for Reading {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Reading::Tiered => "tiered",
            Reading::Strict => "strict",
        })
    }
}

/// One container of the policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerConfig {
    /// The Docker container name.
    pub name: Name,
    /// Its fixed IPv4 address on its Docker network (`--ip`).
    pub address: Ipv4Addr,
    /// The bridge interface of its Docker network (`com.docker.network.bridge.name`).
    pub bridge: InterfaceName,
    /// TCP ports served to the outside world on the same host port number.
    #[serde(default)]
    pub published_ports: Vec<u16>,
    /// TCP ports it listens on that the outside world must not reach.
    #[serde(default)]
    pub private_ports: Vec<u16>,
}

impl ContainerConfig {
    /// Every port it serves, published first.
    pub fn ports(&self) -> impl Iterator<Item = u16> + '_ {
        self.published_ports
            .iter()
            .chain(&self.private_ports)
            .copied()
    }
}

/// The container firewall policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FirewallConfig {
    /// R1 (`tiered`, default) or R2 (`strict`).
    pub reading: Reading,
    /// The LAN address range allowed to reach every container.
    pub lan_range: Ipv4Range,
    /// Pairs of containers that may talk to each other (all other container pairs may not).
    pub allowed_pairs: Vec<[Name; 2]>,
    /// The containers on the host.
    pub containers: Vec<ContainerConfig>,
    /// The Docker client used to check names, addresses and bridges against the running
    /// containers and to detect Docker's firewall backend; empty: no Docker to ask.
    pub docker: DockerCli,
    /// Run every iptables command inside this network namespace; empty: the host itself.
    pub netns: NetnsName,
    /// The `iptables-restore` of the host's backend.
    pub iptables_restore: AbsPath,
    /// The `iptables-save` of the same backend.
    pub iptables_save: AbsPath,
    /// Where `persist` keeps the ruleset the boot unit loads.
    pub rules_file: AbsPath,
    /// Where `persist` installs its systemd units (`/etc/systemd/system`, or
    /// `<root>/etc/systemd/system` to prepare an image or chroot offline).
    pub systemd_dir: AbsPath,
    /// Seconds between two runs of the verify timer.
    pub verify_interval_secs: Positive,
}

/// The system's unit directory (`persist` enables units there with a live systemd).
pub const SYSTEM_UNIT_DIR: &str = "/etc/systemd/system";

fn abs(p: &str) -> AbsPath {
    p.parse().expect("valid default path")
}

impl Default for FirewallConfig {
    fn default() -> Self {
        let c = |n: &str, address: [u8; 4], bridge: &str, published: &[u16], private: &[u16]| {
            ContainerConfig {
                name: n.parse().expect("valid default"),
                address: Ipv4Addr::from(address),
                bridge: bridge.parse().expect("valid default"),
                published_ports: published.to_vec(),
                private_ports: private.to_vec(),
            }
        };
        FirewallConfig {
            reading: Reading::Tiered,
            lan_range: "192.168.1.1-192.168.1.30".parse().expect("valid default"),
            allowed_pairs: vec![[
                "Docker_A".parse().expect("valid default"),
                "Docker_B".parse().expect("valid default"),
            ]],
            containers: vec![
                c("Docker_A", [172, 30, 1, 10], "br-ab", &[8080], &[]),
                c("Docker_B", [172, 30, 1, 11], "br-ab", &[], &[3316]),
                c("Docker_C", [172, 30, 2, 10], "br-c", &[80], &[]),
            ],
            docker: DockerCli(Some(abs("/usr/bin/docker"))),
            netns: NetnsName::default(),
            iptables_restore: abs("/usr/sbin/iptables-restore"),
            iptables_save: abs("/usr/sbin/iptables-save"),
            rules_file: abs("/etc/opskit/firewall.rules"),
            systemd_dir: abs("/etc/systemd/system"),
            verify_interval_secs: Positive::new(300),
        }
    }
}

type Problem = (String, String);

fn problem(key: &str, reason: impl Into<String>) -> Problem {
    (format!("firewall.{key}"), reason.into())
}

impl FirewallConfig {
    /// The container called `name`.
    pub fn container(&self, name: &Name) -> Option<&ContainerConfig> {
        self.containers.iter().find(|c| &c.name == name)
    }

    /// True when `a` and `b` are listed together in `allowed_pairs` (either order).
    pub fn allowed(&self, a: &Name, b: &Name) -> bool {
        self.allowed_pairs
            .iter()
            .any(|[x, y]| (x == a && y == b) || (x == b && y == a))
    }

    /// The bridges, in the order their first container appears.
    pub fn bridges(&self) -> Vec<&InterfaceName> {
        let mut out: Vec<&InterfaceName> = Vec::new();
        for c in &self.containers {
            if !out.contains(&&c.bridge) {
                out.push(&c.bridge);
            }
        }
        out
    }

    /// Cross-field checks: returns `(key, reason)` for the first problem.
    pub fn check(&self) -> Result<(), Problem> {
        self.check_containers()?;
        self.check_pairs()?;
        self.check_bridges()?;
        let units = self.systemd_dir.to_string();
        if units != SYSTEM_UNIT_DIR && !units.ends_with(SYSTEM_UNIT_DIR) {
            return Err(problem(
                "systemd_dir",
                format!(
                    "`{units}` must be {SYSTEM_UNIT_DIR} (this system) or <root>{SYSTEM_UNIT_DIR} \
                     (an image or chroot prepared offline)"
                ),
            ));
        }
        Ok(())
    }

    fn check_containers(&self) -> Result<(), Problem> {
        if self.containers.is_empty() {
            return Err(problem("containers", "no container is listed"));
        }
        let mut names = BTreeSet::new();
        let mut addresses: BTreeMap<Ipv4Addr, &Name> = BTreeMap::new();
        let mut host_ports: BTreeMap<u16, &Name> = BTreeMap::new();
        for c in &self.containers {
            if !names.insert(&c.name) {
                return Err(problem(
                    "containers.name",
                    format!("the container `{}` is listed twice", c.name),
                ));
            }
            if let Some(other) = addresses.insert(c.address, &c.name) {
                return Err(problem(
                    "containers.address",
                    format!(
                        "`{}` and `{other}` both have the address {}",
                        c.name, c.address
                    ),
                ));
            }
            let a = c.address;
            if a.is_unspecified() || a.is_loopback() || a.is_multicast() || a.is_broadcast() {
                return Err(problem(
                    "containers.address",
                    format!("{a} (container `{}`) cannot be a container address", c.name),
                ));
            }
            if self.lan_range.contains(a) {
                return Err(problem(
                    "containers.address",
                    format!(
                        "{a} (container `{}`) lies inside lan_range {}: a Docker subnet must not \
                         overlap the LAN",
                        c.name, self.lan_range
                    ),
                ));
            }
            let key = if c.published_ports.contains(&0) {
                "containers.published_ports"
            } else {
                "containers.private_ports"
            };
            if c.ports().any(|p| p == 0) {
                return Err(problem(key, format!("container `{}` lists port 0", c.name)));
            }
            // Docker publishes every port of the policy on the host (the LAN reaches the
            // private ones under the tiered reading), so one host port has one owner.
            for p in c.ports() {
                if let Some(owner) = host_ports.insert(p, &c.name) {
                    let key = if c.published_ports.contains(&p) {
                        "containers.published_ports"
                    } else {
                        "containers.private_ports"
                    };
                    return Err(problem(
                        key,
                        if owner == &c.name {
                            format!("container `{}` lists port {p} twice", c.name)
                        } else {
                            format!(
                                "host port {p} is published twice: by `{owner}` and by `{}`",
                                c.name
                            )
                        },
                    ));
                }
            }
        }
        Ok(())
    }

    fn check_pairs(&self) -> Result<(), Problem> {
        for [a, b] in &self.allowed_pairs {
            for n in [a, b] {
                if self.container(n).is_none() {
                    return Err(problem(
                        "allowed_pairs",
                        format!("`{n}` is not one of firewall.containers"),
                    ));
                }
            }
            if a == b {
                return Err(problem(
                    "allowed_pairs",
                    format!("the pair [`{a}`, `{b}`] names one container twice"),
                ));
            }
        }
        Ok(())
    }

    /// The policy separates containers by bridge: traffic inside one bridge is switched (it
    /// reaches iptables only when br_netfilter is on), and Docker itself drops direct traffic
    /// between two networks. So containers that may talk share a bridge, and containers that
    /// may not never do.
    fn check_bridges(&self) -> Result<(), Problem> {
        for (i, x) in self.containers.iter().enumerate() {
            for y in &self.containers[i + 1..] {
                let allowed = self.allowed(&x.name, &y.name);
                if x.bridge == y.bridge && !allowed {
                    return Err(problem(
                        "containers.bridge",
                        format!(
                            "`{}` and `{}` share the bridge {} but are not an allowed pair: \
                             iptables cannot separate containers on one bridge reliably (it sees \
                             that traffic only with br_netfilter on); put them on different Docker \
                             networks",
                            x.name, y.name, x.bridge
                        ),
                    ));
                }
                if x.bridge != y.bridge && allowed {
                    return Err(problem(
                        "allowed_pairs",
                        format!(
                            "`{}` ({}) and `{}` ({}) may talk but sit on different bridges: Docker \
                             drops direct traffic between networks; put them on one network",
                            x.name, x.bridge, y.name, y.bridge
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_strictly() {
        let r: Ipv4Range = "192.168.1.1-192.168.1.30".parse().unwrap();
        assert!(r.contains("192.168.1.1".parse().unwrap()));
        assert!(r.contains("192.168.1.30".parse().unwrap()));
        assert!(!r.contains("192.168.1.31".parse().unwrap()));
        assert!(!r.contains("192.168.0.255".parse().unwrap()));
        assert_eq!(r.to_string(), "192.168.1.1-192.168.1.30");
        for bad in [
            "192.168.1.30-192.168.1.1",
            "192.168.1.1",
            "192.168.1.0/24",
            "192.168.1.1 - 192.168.1.30",
            "192.168.1.1-192.168.1.300",
            "192.168.1.1-192.168.1.30;",
            "192.168.1.1-",
            "",
        ] {
            let e = bad.parse::<Ipv4Range>().unwrap_err();
            assert!(e.contains(&format!("`{bad}`")), "{bad}: {e}");
        }
    }

    #[test]
    fn interface_and_namespace_names() {
        assert!("br-ab".parse::<InterfaceName>().is_ok());
        assert!("docker0".parse::<InterfaceName>().is_ok());
        assert!("a-very-long-bridge".parse::<InterfaceName>().is_err());
        assert!("-j".parse::<InterfaceName>().is_err());
        assert!("br ab".parse::<InterfaceName>().is_err());
        assert!("br;ab".parse::<InterfaceName>().is_err());
        assert!(NetnsName::try_from(String::new()).unwrap().get().is_none());
        assert_eq!(
            NetnsName::try_from("ofw-1-host".to_string()).unwrap().get(),
            Some("ofw-1-host")
        );
        assert!(NetnsName::try_from("../x".to_string()).is_err());
        assert!(DockerCli::try_from(String::new()).unwrap().path().is_none());
        assert!(DockerCli::try_from("docker".to_string()).is_err());
    }

    /// A change to the default policy, the key it must be refused under, and part of the reason.
    type Case = (
        Box<dyn FnOnce(&mut FirewallConfig)>,
        &'static str,
        &'static str,
    );

    fn with(f: impl FnOnce(&mut FirewallConfig)) -> Result<(), Problem> {
        let mut c = FirewallConfig::default();
        f(&mut c);
        c.check()
    }

    #[test]
    fn the_default_is_the_spec_and_passes() {
        let c = FirewallConfig::default();
        c.check().unwrap();
        assert_eq!(c.reading, Reading::Tiered);
        assert_eq!(c.bridges().len(), 2);
        assert!(c.allowed(&"Docker_B".parse().unwrap(), &"Docker_A".parse().unwrap()));
    }

    #[test]
    fn bad_policies_name_the_key() {
        let cases: Vec<Case> = vec![
            (
                Box::new(|c| c.containers[1].name = "Docker_A".parse().unwrap()),
                "firewall.containers.name",
                "listed twice",
            ),
            (
                Box::new(|c| c.allowed_pairs[0][1] = "Docker_X".parse().unwrap()),
                "firewall.allowed_pairs",
                "`Docker_X` is not one of",
            ),
            (
                Box::new(|c| c.containers[0].published_ports = vec![0]),
                "firewall.containers.published_ports",
                "port 0",
            ),
            (
                Box::new(|c| c.containers[2].published_ports = vec![8080]),
                "firewall.containers.published_ports",
                "host port 8080 is published twice",
            ),
            (
                Box::new(|c| c.containers[2].private_ports = vec![3316]),
                "firewall.containers.private_ports",
                "host port 3316",
            ),
            (
                Box::new(|c| c.containers[2].address = "172.30.1.10".parse().unwrap()),
                "firewall.containers.address",
                "both have the address",
            ),
            (
                Box::new(|c| c.containers[2].address = "192.168.1.20".parse().unwrap()),
                "firewall.containers.address",
                "inside lan_range",
            ),
            (
                Box::new(|c| c.containers[2].bridge = "br-ab".parse().unwrap()),
                "firewall.containers.bridge",
                "share the bridge br-ab",
            ),
            (
                Box::new(|c| c.containers[1].bridge = "br-b".parse().unwrap()),
                "firewall.allowed_pairs",
                "different bridges",
            ),
            (
                Box::new(|c| c.systemd_dir = "/usr/lib/systemd/system".parse().unwrap()),
                "firewall.systemd_dir",
                "must be /etc/systemd/system",
            ),
            (
                Box::new(|c| c.containers.clear()),
                "firewall.containers",
                "no container",
            ),
        ];
        for (f, key, reason) in cases {
            let (k, r) = with(f).unwrap_err();
            assert_eq!(k, key, "{r}");
            assert!(r.contains(reason), "{key}: {r}");
        }
    }
}
