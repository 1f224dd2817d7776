//! `[firewall]`: the Docker iptables policy of spec §3.

use serde::{Deserialize, Serialize};

use super::value::Name;

/// One container of the policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerConfig {
    /// The Docker container name.
    pub name: Name,
    /// Ports served to the outside world on the same host port number.
    #[serde(default)]
    pub published_ports: Vec<u16>,
    /// Ports the container listens on that must not be reachable from outside.
    #[serde(default)]
    pub private_ports: Vec<u16>,
}

/// The container firewall policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FirewallConfig {
    /// The containers on the host.
    pub containers: Vec<ContainerConfig>,
    /// Pairs of containers that may talk to each other (all other container pairs may not).
    pub allowed_pairs: Vec<[Name; 2]>,
    /// The LAN address range allowed to reach every container, `first-last`.
    pub lan_range: String,
}

impl Default for FirewallConfig {
    fn default() -> Self {
        let c = |n: &str, published: &[u16], private: &[u16]| ContainerConfig {
            name: n.parse().expect("valid default"),
            published_ports: published.to_vec(),
            private_ports: private.to_vec(),
        };
        FirewallConfig {
            containers: vec![
                c("Docker_A", &[8080], &[]),
                c("Docker_B", &[], &[3316]),
                c("Docker_C", &[80], &[]),
            ],
            allowed_pairs: vec![[
                "Docker_A".parse().expect("valid default"),
                "Docker_B".parse().expect("valid default"),
            ]],
            lan_range: "192.168.1.1-192.168.1.30".into(),
        }
    }
}

impl FirewallConfig {
    /// Cross-field checks: returns `(key, reason)` for the first problem.
    pub fn check(&self) -> Result<(), (String, String)> {
        let bad = || {
            (
                "firewall.lan_range".to_string(),
                format!(
                    "`{}` must be an IPv4 range `first-last` with first <= last",
                    self.lan_range
                ),
            )
        };
        let (a, b) = self.lan_range.split_once('-').ok_or_else(bad)?;
        let a: std::net::Ipv4Addr = a.trim().parse().map_err(|_| bad())?;
        let b: std::net::Ipv4Addr = b.trim().parse().map_err(|_| bad())?;
        if a > b {
            return Err(bad());
        }
        for pair in &self.allowed_pairs {
            for n in pair {
                if !self.containers.iter().any(|c| &c.name == n) {
                    return Err((
                        "firewall.allowed_pairs".into(),
                        format!("`{n}` is not one of firewall.containers"),
                    ));
                }
            }
        }
        for c in &self.containers {
            if c.published_ports
                .iter()
                .chain(&c.private_ports)
                .any(|p| *p == 0)
            {
                return Err((
                    "firewall.containers".into(),
                    format!("container `{}` has port 0", c.name),
                ));
            }
        }
        Ok(())
    }
}
