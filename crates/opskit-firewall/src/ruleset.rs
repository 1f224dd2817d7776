//! The policy compiled into iptables rules (pure: config in, rules out).
//!
//! Everything lives in Docker's `DOCKER-USER` chain (Docker jumps to it first from `FORWARD`
//! and never flushes it) and in opskit's own `OPSKIT-INBOUND`. Every rule ends in `RETURN` or
//! `DROP`, never `ACCEPT`: Docker's own chains still run after a `RETURN`, so the policy can
//! only narrow what Docker allows, never open an unpublished port. Published ports are matched
//! by the container's address and port *and* the original host port (`--ctorigdstport`),
//! because Docker rewrites the destination (DNAT) before the filter table sees the packet.

use std::fmt::Write as _;

use opskit_core::config::{ContainerConfig, FirewallConfig, Reading};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Docker's chain for user rules.
pub const USER_CHAIN: &str = "DOCKER-USER";
/// opskit's chain for traffic entering a container bridge from outside the containers.
pub const INBOUND_CHAIN: &str = "OPSKIT-INBOUND";
/// The chains the policy owns (declared, and so flushed, by every load).
pub const CHAINS: [&str; 2] = [USER_CHAIN, INBOUND_CHAIN];

/// The sentence of spec §3 a rule serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Sentence {
    /// Connection tracking that every other rule relies on.
    Tracking,
    /// §3.1: only A and B talk; C reaches neither.
    Isolation,
    /// §3.2: only the LAN range reaches all containers.
    LanRange,
    /// §3.3: A:8080 and C:80 served outside on the same ports; B:3316 not.
    Published,
}

impl Sentence {
    /// How the rule comments cite it.
    pub fn cite(self) -> &'static str {
        match self {
            Sentence::Tracking => "§3 (all)",
            Sentence::Isolation => "§3.1",
            Sentence::LanRange => "§3.2",
            Sentence::Published => "§3.3",
        }
    }
}

/// One rule: `-A <chain> <args…>`, with why it is there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    /// The chain it is appended to.
    pub chain: String,
    /// The match and target, as iptables arguments.
    pub args: Vec<String>,
    /// The spec sentence it serves.
    pub serves: Sentence,
    /// One line saying what it does, for comments and plans.
    pub why: String,
}

impl Rule {
    fn new(chain: &str, args: &str, serves: Sentence, why: String) -> Rule {
        Rule {
            chain: chain.to_string(),
            args: args.split_whitespace().map(str::to_string).collect(),
            serves,
            why,
        }
    }

    /// The rule as `iptables-restore` and `iptables-save` write it: `-A CHAIN args…`.
    pub fn spec(&self) -> String {
        format!("-A {} {}", self.chain, self.args.join(" "))
    }
}

/// The compiled policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ruleset {
    /// The reading it was compiled for.
    pub reading: Reading,
    /// The chains it declares (and so replaces), in order.
    pub chains: Vec<String>,
    /// The rules, in order.
    pub rules: Vec<Rule>,
}

fn names(cs: &[&ContainerConfig]) -> String {
    cs.iter()
        .map(|c| c.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

impl Ruleset {
    /// Compiles a checked policy ([`FirewallConfig::check`] passed).
    pub fn compile(cfg: &FirewallConfig) -> Ruleset {
        let mut rules = Vec::new();
        let mut push = |chain: &str, args: String, serves, why: String| {
            rules.push(Rule::new(chain, &args, serves, why));
        };
        let user = USER_CHAIN;
        let inbound = INBOUND_CHAIN;
        push(
            user,
            "-m conntrack --ctstate RELATED,ESTABLISHED -j RETURN".into(),
            Sentence::Tracking,
            "replies of connections already allowed, both ways; Docker's rules decide the rest"
                .into(),
        );
        push(
            user,
            "-m conntrack --ctstate INVALID -j DROP".into(),
            Sentence::Tracking,
            "packets conntrack cannot place never reach a container".into(),
        );
        let bridges = cfg.bridges();
        let on = |b: &opskit_core::config::firewall::InterfaceName| -> Vec<&ContainerConfig> {
            cfg.containers.iter().filter(|c| &c.bridge == b).collect()
        };
        for from in &bridges {
            for to in &bridges {
                if from == to {
                    continue;
                }
                push(
                    user,
                    format!("-i {from} -o {to} -j DROP"),
                    Sentence::Isolation,
                    format!(
                        "{} may not reach {}: directly, through a published host port or a \
                         gateway address (both DNAT'd before this chain)",
                        names(&on(from)),
                        names(&on(to))
                    ),
                );
            }
        }
        for b in &bridges {
            let members = on(b);
            let why = if members.len() > 1 {
                format!(
                    "{} talk to each other on {b} (seen here only with br_netfilter on)",
                    names(&members)
                )
            } else {
                format!(
                    "traffic inside {b} ({} alone) is left to Docker",
                    names(&members)
                )
            };
            push(
                user,
                format!("-i {b} -o {b} -j RETURN"),
                Sentence::Isolation,
                why,
            );
        }
        for b in &bridges {
            push(
                user,
                format!("-o {b} -j {inbound}"),
                Sentence::LanRange,
                format!(
                    "anything else entering {b} comes from outside the containers: {inbound} \
                     judges it"
                ),
            );
        }
        let range = cfg.lan_range;
        match cfg.reading {
            Reading::Tiered => push(
                inbound,
                format!("-m iprange --src-range {range} -j RETURN"),
                Sentence::LanRange,
                format!(
                    "the LAN {range} reaches every container (Docker still drops unpublished \
                     ports)"
                ),
            ),
            Reading::Strict => push(
                inbound,
                format!("-m iprange ! --src-range {range} -j DROP"),
                Sentence::LanRange,
                format!("nobody outside {range} reaches any container"),
            ),
        }
        for c in &cfg.containers {
            for p in &c.published_ports {
                let who = match cfg.reading {
                    Reading::Tiered => "the outside world",
                    Reading::Strict => "the LAN range",
                };
                push(
                    inbound,
                    format!(
                        "-d {}/32 -p tcp -m tcp --dport {p} -m conntrack --ctorigdstport {p} \
                         -j RETURN",
                        c.address
                    ),
                    Sentence::Published,
                    format!("{}:{p} is served to {who} on host port {p}", c.name),
                );
            }
        }
        let private: Vec<String> = cfg
            .containers
            .iter()
            .flat_map(|c| {
                c.private_ports
                    .iter()
                    .map(move |p| format!("{}:{p}", c.name))
            })
            .collect();
        push(
            inbound,
            "-j DROP".into(),
            Sentence::Published,
            if private.is_empty() {
                "nothing else from outside reaches a container".into()
            } else {
                format!(
                    "nothing else: {} is not served to the outside world",
                    private.join(", ")
                )
            },
        );
        Ruleset {
            reading: cfg.reading,
            chains: CHAINS.iter().map(|c| c.to_string()).collect(),
            rules,
        }
    }

    /// The rules of one chain as `-A` lines, in order.
    pub fn chain_rules(&self, chain: &str) -> Vec<String> {
        self.rules
            .iter()
            .filter(|r| r.chain == chain)
            .map(Rule::spec)
            .collect()
    }

    /// `iptables-restore --noflush` input: one `*filter` transaction that declares (and so
    /// empties) only the policy's chains, then appends every rule. `comments` adds a `#` line
    /// before each rule.
    pub fn restore_text(&self, comments: bool) -> String {
        let mut out = String::new();
        if comments {
            let _ = writeln!(
                out,
                "# opskit firewall policy (spec §3, reading: {}). Load with\n\
                 #   iptables-restore -w 10 --noflush <this file>\n\
                 # Only {} are replaced; Docker's own chains and rules stay as they are.",
                self.reading,
                self.chains.join(" and ")
            );
        }
        out.push_str("*filter\n");
        for c in &self.chains {
            let _ = writeln!(out, ":{c} - [0:0]");
        }
        for r in &self.rules {
            if comments {
                let _ = writeln!(out, "# {} {}", r.serves.cite(), r.why);
            }
            let _ = writeln!(out, "{}", r.spec());
        }
        out.push_str("COMMIT\n");
        out
    }

    /// The sha256 of the uncommented restore text: what is loaded, independent of comments.
    pub fn sha256(&self) -> String {
        hex::encode(Sha256::digest(self.restore_text(false).as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rule_returns_or_drops_and_never_accepts() {
        for reading in [Reading::Tiered, Reading::Strict] {
            let cfg = FirewallConfig {
                reading,
                ..FirewallConfig::default()
            };
            let r = Ruleset::compile(&cfg);
            for rule in &r.rules {
                let target = rule.args.last().unwrap();
                assert!(
                    ["RETURN", "DROP", INBOUND_CHAIN].contains(&target.as_str()),
                    "{}",
                    rule.spec()
                );
            }
        }
    }

    #[test]
    fn the_tiered_ruleset_is_the_tested_one_of_the_notes() {
        let r = Ruleset::compile(&FirewallConfig::default());
        assert_eq!(
            r.chain_rules(USER_CHAIN),
            [
                "-A DOCKER-USER -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN",
                "-A DOCKER-USER -m conntrack --ctstate INVALID -j DROP",
                "-A DOCKER-USER -i br-ab -o br-c -j DROP",
                "-A DOCKER-USER -i br-c -o br-ab -j DROP",
                "-A DOCKER-USER -i br-ab -o br-ab -j RETURN",
                "-A DOCKER-USER -i br-c -o br-c -j RETURN",
                "-A DOCKER-USER -o br-ab -j OPSKIT-INBOUND",
                "-A DOCKER-USER -o br-c -j OPSKIT-INBOUND",
            ]
        );
        assert_eq!(
            r.chain_rules(INBOUND_CHAIN),
            [
                "-A OPSKIT-INBOUND -m iprange --src-range 192.168.1.1-192.168.1.30 -j RETURN",
                "-A OPSKIT-INBOUND -d 172.30.1.10/32 -p tcp -m tcp --dport 8080 -m conntrack --ctorigdstport 8080 -j RETURN",
                "-A OPSKIT-INBOUND -d 172.30.2.10/32 -p tcp -m tcp --dport 80 -m conntrack --ctorigdstport 80 -j RETURN",
                "-A OPSKIT-INBOUND -j DROP",
            ]
        );
    }

    #[test]
    fn strict_drops_everyone_outside_the_range_first() {
        let cfg = FirewallConfig {
            reading: Reading::Strict,
            ..FirewallConfig::default()
        };
        let rules = Ruleset::compile(&cfg).chain_rules(INBOUND_CHAIN);
        assert_eq!(
            rules[0],
            "-A OPSKIT-INBOUND -m iprange ! --src-range 192.168.1.1-192.168.1.30 -j DROP"
        );
        assert_eq!(rules.last().unwrap(), "-A OPSKIT-INBOUND -j DROP");
    }

    #[test]
    fn comments_do_not_change_what_is_loaded() {
        let r = Ruleset::compile(&FirewallConfig::default());
        let strip = |t: String| {
            t.lines()
                .filter(|l| !l.starts_with('#'))
                .collect::<Vec<_>>()
                .join("\n")
        };
        assert_eq!(strip(r.restore_text(true)), strip(r.restore_text(false)));
        assert!(
            r.restore_text(true)
                .contains("# §3.3 Docker_A:8080 is served")
        );
    }
}
