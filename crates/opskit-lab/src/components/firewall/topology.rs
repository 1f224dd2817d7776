//! The emulated Docker host: which namespaces, links, addresses and routes, and the rules
//! Docker 29 writes for the containers (`notes/firewall.md` §1.1, §7; `notes/lab.md` §6).
//!
//! ```text
//!   ct0 (Docker_A 172.30.1.10) ┐
//!   ct1 (Docker_B 172.30.1.11) ┴ br-ab 172.30.1.1 ┐
//!   ct2 (Docker_C 172.30.2.10) ── br-c 172.30.2.1 ┴ host ── eth0 192.168.1.100 ─┐
//!                                                                              sw (LAN switch)
//!   rtr 192.168.1.1 (the gateway, a LAN host in the range) ──────────────────────┤
//!   l30 192.168.1.30 (last address in the range) ────────────────────────────────┤
//!   l31 192.168.1.31 (first address outside it) ─────────────────────────────────┘
//!   out 203.0.113.10 (the Internet) ── wan0 203.0.113.1 on rtr, routed without NAT
//! ```
//! Every name is `<prefix>-<role>` with a prefix unique to the lab directory, so labs run side
//! by side; every interface and address lives inside these namespaces, none in the root one.
//! LAN hosts and the router route 172.30.0.0/16 through the host, so direct routing to a
//! container address is tried too.

use std::net::Ipv4Addr;
use std::path::Path;

use opskit_core::config::{ContainerConfig, FirewallConfig};
use opskit_firewall::matrix::{Machine, Testbed};

/// The host's LAN address ("H").
pub const HOST_LAN: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 100);
/// The router: the LAN's gateway, and the first address of the LAN range.
pub const ROUTER_LAN: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 1);
/// The router's Internet side.
pub const ROUTER_WAN: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
/// The last address of the LAN range.
pub const LAN_LAST_IN: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 30);
/// The first LAN address outside the range.
pub const LAN_FIRST_OUT: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 31);
/// The Internet host.
pub const OUTSIDE: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
/// The port of the Internet host's listener (container egress).
pub const EGRESS_PORT: u16 = 9999;
/// The banner of the Internet host's listener.
pub const EGRESS_NAME: &str = "outside";

/// The namespaces of one lab.
#[derive(Debug, Clone, PartialEq)]
pub struct Topology {
    /// `ofw<8 hex>`: unique to the lab directory.
    pub prefix: String,
    /// The containers (the default policy's: the lab's `opskit.toml` repeats them).
    pub containers: Vec<ContainerConfig>,
}

/// FNV-1a: a hash that stays the same across builds (the prefix must not change under a lab).
fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    })
}

/// The gateway of a container's bridge: `.1` of its /24.
pub fn gateway_of(a: Ipv4Addr) -> Ipv4Addr {
    let [x, y, z, _] = a.octets();
    Ipv4Addr::new(x, y, z, 1)
}

impl Topology {
    /// The topology of the lab in `dir`.
    pub fn for_lab(dir: &Path) -> Topology {
        Topology::with_prefix(&format!(
            "ofw{:08x}",
            fnv1a(dir.as_os_str().as_encoded_bytes())
        ))
    }

    /// The topology with a given prefix (read back from `lab.json`).
    pub fn with_prefix(prefix: &str) -> Topology {
        Topology {
            prefix: prefix.to_string(),
            containers: FirewallConfig::default().containers,
        }
    }

    /// The namespace of a role (`host`, `ct0`, `sw`, …).
    pub fn ns(&self, role: &str) -> String {
        format!("{}-{role}", self.prefix)
    }

    /// The Docker host's namespace.
    pub fn host(&self) -> String {
        self.ns("host")
    }

    /// `(role, machine name, address)` of every machine but the switch.
    pub fn machines(&self) -> Vec<(String, String, Ipv4Addr)> {
        let mut out = vec![("host".to_string(), "host".to_string(), HOST_LAN)];
        for (i, c) in self.containers.iter().enumerate() {
            out.push((format!("ct{i}"), c.name.to_string(), c.address));
        }
        out.extend([
            ("rtr".to_string(), "lan-gateway".to_string(), ROUTER_LAN),
            ("l30".to_string(), "lan-30".to_string(), LAN_LAST_IN),
            ("l31".to_string(), "lan-31".to_string(), LAN_FIRST_OUT),
            ("out".to_string(), EGRESS_NAME.to_string(), OUTSIDE),
        ]);
        out
    }

    /// Every namespace, in creation order (deleted in reverse).
    pub fn namespaces(&self) -> Vec<String> {
        let mut roles: Vec<String> = self.machines().into_iter().map(|(r, _, _)| r).collect();
        roles.push("sw".into());
        roles.iter().map(|r| self.ns(r)).collect()
    }

    /// The bridges with their gateway addresses.
    pub fn bridges(&self) -> Vec<(String, Ipv4Addr)> {
        let mut out: Vec<(String, Ipv4Addr)> = Vec::new();
        for c in &self.containers {
            if !out.iter().any(|(b, _)| b == c.bridge.as_str()) {
                out.push((c.bridge.to_string(), gateway_of(c.address)));
            }
        }
        out
    }

    /// `ip -n <ns> -batch -` scripts, in order: `(namespace, lines)`. Run after every
    /// namespace exists (the peers of veth pairs are created straight into them).
    pub fn link_scripts(&self) -> Vec<(String, Vec<String>)> {
        let host = self.host();
        let sw = self.ns("sw");
        let mut h = vec!["link set lo up".to_string()];
        for (b, gw) in self.bridges() {
            h.push(format!("link add {b} type bridge"));
            h.push(format!("addr add {gw}/24 dev {b}"));
            h.push(format!("link set {b} up"));
        }
        let mut scripts = Vec::new();
        for (i, c) in self.containers.iter().enumerate() {
            let ct = self.ns(&format!("ct{i}"));
            h.push(format!("link add vct{i} type veth peer name eth0 netns {ct}"));
            h.push(format!("link set vct{i} master {} up", c.bridge));
            scripts.push((
                ct,
                vec![
                    "link set lo up".into(),
                    format!("addr add {}/24 dev eth0", c.address),
                    "link set eth0 up".into(),
                    format!("route add default via {}", gateway_of(c.address)),
                ],
            ));
        }
        h.push(format!("link add eth0 type veth peer name p-host netns {sw}"));
        h.push(format!("addr add {HOST_LAN}/24 dev eth0"));
        h.push("link set eth0 up".into());
        h.push(format!("route add default via {ROUTER_LAN}"));
        let mut s = vec![
            "link set lo up".to_string(),
            "link add lan type bridge".into(),
            "link set lan up".into(),
            "link set p-host master lan up".into(),
        ];
        let out_ns = self.ns("out");
        let rtr = vec![
            "link set lo up".to_string(),
            format!("link add eth0 type veth peer name p-rtr netns {sw}"),
            format!("addr add {ROUTER_LAN}/24 dev eth0"),
            "link set eth0 up".into(),
            format!("link add wan0 type veth peer name eth0 netns {out_ns}"),
            format!("addr add {ROUTER_WAN}/24 dev wan0"),
            "link set wan0 up".into(),
            format!("route add 172.30.0.0/16 via {HOST_LAN}"),
        ];
        s.push("link set p-rtr master lan up".into());
        let mut lans = Vec::new();
        for (role, addr) in [("l30", LAN_LAST_IN), ("l31", LAN_FIRST_OUT)] {
            lans.push((
                self.ns(role),
                vec![
                    "link set lo up".to_string(),
                    format!("link add eth0 type veth peer name p-{role} netns {sw}"),
                    format!("addr add {addr}/24 dev eth0"),
                    "link set eth0 up".into(),
                    format!("route add default via {ROUTER_LAN}"),
                    format!("route add 172.30.0.0/16 via {HOST_LAN}"),
                ],
            ));
            s.push(format!("link set p-{role} master lan up"));
        }
        let outside = vec![
            "link set lo up".to_string(),
            format!("addr add {OUTSIDE}/24 dev eth0"),
            "link set eth0 up".into(),
            format!("route add default via {ROUTER_WAN}"),
        ];
        // Creation order: each script's veth peers land in namespaces whose own script runs
        // later, and the switch ports are enslaved once they all exist.
        let mut ordered = vec![(host, h)];
        ordered.extend(scripts);
        ordered.push((self.ns("rtr"), rtr));
        ordered.extend(lans);
        ordered.push((out_ns, outside));
        ordered.push((sw, s));
        ordered
    }

    /// The namespaces that forward packets.
    pub fn routers(&self) -> Vec<String> {
        vec![self.host(), self.ns("rtr")]
    }

    /// The listeners: `(namespace, port, banner)`.
    pub fn listeners(&self) -> Vec<(String, u16, String)> {
        let mut out = Vec::new();
        for (i, c) in self.containers.iter().enumerate() {
            for p in c.ports() {
                out.push((self.ns(&format!("ct{i}")), p, c.name.to_string()));
            }
        }
        out.push((self.ns("out"), EGRESS_PORT, EGRESS_NAME.to_string()));
        out
    }

    /// The host ports the emulated Docker publishes: every port of every container (the LAN
    /// reaches the private ones under the tiered reading; the strict policy must still hold
    /// when one is published by mistake).
    pub fn published(&self) -> Vec<u16> {
        self.containers.iter().flat_map(|c| c.ports()).collect()
    }

    /// The testbed the reachability matrix probes.
    pub fn testbed(&self) -> Testbed {
        let machine = |role: &str, name: &str, address| Machine {
            name: name.to_string(),
            netns: self.ns(role),
            address,
        };
        let all = self.machines();
        let find = |role: &str| {
            let (r, n, a) = all.iter().find(|(r, _, _)| r == role).expect("a known role");
            machine(r, n, *a)
        };
        Testbed {
            host: find("host"),
            containers: (0..self.containers.len())
                .map(|i| find(&format!("ct{i}")))
                .collect(),
            clients: ["rtr", "l30", "l31", "out"].iter().map(|r| find(r)).collect(),
            gateways: self.bridges(),
            egress: (find("out"), EGRESS_PORT),
            published: self.published(),
        }
    }

    /// Docker's own chains for these containers, as Docker 29 writes them: the `raw` drop of
    /// direct routing, the `nat` DNATs and MASQUERADEs, and the `filter` chains behind
    /// `DOCKER-FORWARD`. `DOCKER-USER` and the `FORWARD` jumps are not in it (see
    /// [`super::docker_start`]).
    pub fn docker_tables(&self) -> DockerTables {
        let mut raw = String::from("*raw\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n");
        for c in &self.containers {
            raw.push_str(&format!(
                "-A PREROUTING -d {}/32 ! -i {} -j DROP\n",
                c.address, c.bridge
            ));
        }
        raw.push_str("COMMIT\n");
        let mut nat = String::from(
            "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n\
             :POSTROUTING ACCEPT [0:0]\n:DOCKER - [0:0]\n\
             -A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER\n\
             -A OUTPUT ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j DOCKER\n",
        );
        for (b, gw) in self.bridges() {
            let [x, y, z, _] = gw.octets();
            nat.push_str(&format!(
                "-A POSTROUTING -s {x}.{y}.{z}.0/24 ! -o {b} -j MASQUERADE\n"
            ));
        }
        let mut filter_docker = String::new();
        for c in &self.containers {
            for p in c.ports() {
                nat.push_str(&format!(
                    "-A DOCKER ! -i {b} -p tcp -m tcp --dport {p} -j DNAT --to-destination {a}:{p}\n",
                    b = c.bridge,
                    a = c.address
                ));
                filter_docker.push_str(&format!(
                    "-A DOCKER -d {a}/32 ! -i {b} -o {b} -p tcp -m tcp --dport {p} -j ACCEPT\n",
                    b = c.bridge,
                    a = c.address
                ));
            }
        }
        nat.push_str("COMMIT\n");
        let mut filter = String::from(
            "*filter\n:FORWARD DROP [0:0]\n:DOCKER - [0:0]\n:DOCKER-BRIDGE - [0:0]\n\
             :DOCKER-CT - [0:0]\n:DOCKER-FORWARD - [0:0]\n:DOCKER-INTERNAL - [0:0]\n",
        );
        filter.push_str(&filter_docker);
        let bridges = self.bridges();
        for (b, _) in &bridges {
            filter.push_str(&format!("-A DOCKER ! -i {b} -o {b} -j DROP\n"));
        }
        for (b, _) in &bridges {
            filter.push_str(&format!("-A DOCKER-BRIDGE -o {b} -j DOCKER\n"));
        }
        for (b, _) in &bridges {
            filter.push_str(&format!(
                "-A DOCKER-CT -o {b} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n"
            ));
        }
        filter.push_str(
            "-A DOCKER-FORWARD -j DOCKER-CT\n-A DOCKER-FORWARD -j DOCKER-INTERNAL\n\
             -A DOCKER-FORWARD -j DOCKER-BRIDGE\n",
        );
        for (b, _) in &bridges {
            filter.push_str(&format!("-A DOCKER-FORWARD -i {b} -j ACCEPT\n"));
        }
        DockerTables {
            raw,
            nat,
            filter_chains: filter,
        }
    }
}

/// Docker's rules, by table (see [`Topology::docker_tables`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DockerTables {
    /// The whole `raw` table.
    pub raw: String,
    /// The whole `nat` table.
    pub nat: String,
    /// Docker's `filter` chains (declared, so a `--noflush` load rebuilds exactly them), without
    /// the `COMMIT` (the caller adds the `FORWARD` jumps).
    pub filter_chains: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_per_lab_and_interfaces_fit_the_kernel() {
        let a = Topology::for_lab(Path::new("/tmp/lab-a"));
        let b = Topology::for_lab(Path::new("/tmp/lab-b"));
        assert_ne!(a.prefix, b.prefix);
        assert_eq!(a, Topology::for_lab(Path::new("/tmp/lab-a")));
        assert_eq!(a.namespaces().len(), 9);
        for (_, lines) in a.link_scripts() {
            for l in lines {
                let words: Vec<&str> = l.split_whitespace().collect();
                for w in words.windows(2) {
                    if ["add", "name", "dev", "set", "master"].contains(&w[0])
                        && !w[1].contains('.')
                        && !w[1].contains('/')
                        && w[1] != "lo"
                    {
                        assert!(w[1].len() <= 15, "{l}");
                    }
                }
            }
        }
    }

    #[test]
    fn dockers_rules_publish_every_port_and_drop_direct_routing() {
        let t = Topology::with_prefix("t");
        let d = t.docker_tables();
        assert!(d.raw.contains("-A PREROUTING -d 172.30.1.11/32 ! -i br-ab -j DROP"));
        assert!(d.nat.contains("--dport 3316 -j DNAT --to-destination 172.30.1.11:3316"));
        assert!(d.filter_chains.contains("-A DOCKER ! -i br-c -o br-c -j DROP"));
        assert!(!d.filter_chains.contains("DOCKER-USER"));
        assert_eq!(t.published(), [8080, 3316, 80]);
        let tb = t.testbed();
        assert_eq!(tb.clients.len(), 4);
        assert_eq!(tb.containers[2].name, "Docker_C");
    }
}
