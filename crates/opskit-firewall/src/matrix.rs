//! The reachability matrix (notes §5): every path the spec speaks about, probed from the
//! machines themselves, each with the verdict the policy demands.
//!
//! The expectations come from the policy, not from the rules: the containers, the allowed
//! pairs, the LAN range, the published and private ports and the reading say who may reach
//! what. A probe is a TCP connect from inside the source's network namespace; an allowed path
//! must also answer with the right container's name (the listener's banner), which proves the
//! DNAT went where it should.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use anyhow::Result;
use opskit_core::config::{FirewallConfig, Reading};
use serde::{Deserialize, Serialize};

use crate::netns::{self, Connect};

/// A machine of the testbed: a network namespace with one address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Machine {
    /// Its name (a container's name for a container).
    pub name: String,
    /// Its network namespace.
    pub netns: String,
    /// Its address.
    pub address: Ipv4Addr,
}

/// A Docker host emulated in network namespaces (the lab's `firewall` component).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Testbed {
    /// The Docker host; `address` is its LAN address (the "H" of the notes).
    pub host: Machine,
    /// One machine per container of the config (same names).
    pub containers: Vec<Machine>,
    /// LAN hosts and outside hosts that are not containers.
    pub clients: Vec<Machine>,
    /// Each bridge's gateway address on the host (`(bridge, address)`).
    pub gateways: Vec<(String, Ipv4Addr)>,
    /// A listener outside the host that containers may reach (egress), and its port.
    pub egress: (Machine, u16),
    /// The host ports Docker publishes.
    pub published: Vec<u16>,
}

/// Allowed or denied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reach {
    /// The connection opens (and answers with the expected name).
    Allow,
    /// The connection does not open.
    Deny,
}

impl std::fmt::Display for Reach {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Reach::Allow => "ALLOW",
            Reach::Deny => "DENY",
        })
    }
}

/// One path to probe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Row {
    /// The source machine's name.
    pub from: String,
    /// Its namespace.
    pub netns: String,
    /// What is probed, in words (`host 192.168.1.100:8080 → Docker_A`).
    pub to: String,
    /// The address connected to.
    pub dst: SocketAddrV4,
    /// What the policy demands.
    pub expect: Reach,
    /// The name an allowed connection must answer with.
    pub banner: String,
    /// Why, citing the spec.
    pub why: String,
}

/// One probed row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RowResult {
    /// The row.
    #[serde(flatten)]
    pub row: Row,
    /// What the probe saw.
    pub seen: Reach,
    /// Details: the banner, or timeout / refused.
    pub detail: String,
    /// Whether it matched the expectation.
    pub pass: bool,
}

/// The probed matrix.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MatrixReport {
    /// The reading the expectations follow.
    pub reading: Reading,
    /// Every row, in order.
    pub rows: Vec<RowResult>,
    /// Wall time of the probes.
    pub secs: f64,
}

impl MatrixReport {
    /// Rows whose probe did not match the policy.
    pub fn mismatches(&self) -> Vec<&RowResult> {
        self.rows.iter().filter(|r| !r.pass).collect()
    }

    /// True when there are rows and every one matched.
    pub fn passed(&self) -> bool {
        !self.rows.is_empty() && self.rows.iter().all(|r| r.pass)
    }

    /// The matrix as a table for the operator.
    pub fn render_table(&self) -> String {
        let w_from = self
            .rows
            .iter()
            .map(|r| r.row.from.len())
            .max()
            .unwrap_or(4)
            .max(4);
        let w_to = self
            .rows
            .iter()
            .map(|r| r.row.to.chars().count())
            .max()
            .unwrap_or(2)
            .max(2);
        let mut out = String::new();
        let _ = writeln!(
            out,
            "REACHABILITY MATRIX (reading {}, {} rows, {:.1}s)",
            self.reading,
            self.rows.len(),
            self.secs
        );
        let _ = writeln!(
            out,
            "  #  {:<w_from$}  {:<w_to$}  want   seen   ok    why",
            "from", "to"
        );
        for (i, r) in self.rows.iter().enumerate() {
            let to_pad = w_to - r.row.to.chars().count();
            let _ = writeln!(
                out,
                "{:>3}  {:<w_from$}  {}{}  {:<5}  {:<5}  {:<4}  {}{}",
                i + 1,
                r.row.from,
                r.row.to,
                " ".repeat(to_pad),
                r.row.expect.to_string(),
                r.seen.to_string(),
                if r.pass { "ok" } else { "FAIL" },
                r.row.why,
                if r.pass {
                    String::new()
                } else {
                    format!(" [saw: {}]", r.detail)
                }
            );
        }
        let bad = self.mismatches().len();
        let _ = writeln!(
            out,
            "{}",
            if bad == 0 {
                format!("all {} rows match the policy", self.rows.len())
            } else {
                format!("{bad} of {} rows do NOT match the policy", self.rows.len())
            }
        );
        out
    }
}

/// The rows the policy `cfg` demands on `tb`.
pub fn rows(cfg: &FirewallConfig, tb: &Testbed) -> Vec<Row> {
    let mut out = Vec::new();
    let owner = |p: u16| cfg.containers.iter().find(|c| c.ports().any(|q| q == p));
    let mut row =
        |from: &Machine, to: String, dst: SocketAddrV4, expect, banner: &str, why: String| {
            out.push(Row {
                from: from.name.clone(),
                netns: from.netns.clone(),
                to,
                dst,
                expect,
                banner: banner.to_string(),
                why,
            });
        };
    for m in &tb.containers {
        let Some(x) = cfg.containers.iter().find(|c| c.name.as_str() == m.name) else {
            continue;
        };
        for y in cfg.containers.iter().filter(|y| y.name != x.name) {
            let allowed = cfg.allowed(&x.name, &y.name);
            for p in y.ports() {
                row(
                    m,
                    format!("{} {}:{p}", y.name, y.address),
                    SocketAddrV4::new(y.address, p),
                    if allowed { Reach::Allow } else { Reach::Deny },
                    y.name.as_str(),
                    if allowed {
                        format!("§3.1 {} and {} may talk", x.name, y.name)
                    } else {
                        format!("§3.1 {} may not reach {}", x.name, y.name)
                    },
                );
            }
        }
        for &p in &tb.published {
            let Some(y) = owner(p) else { continue };
            // Same bridge: Docker leaves that hairpin to docker-proxy, outside DOCKER-USER.
            if y.bridge == x.bridge {
                continue;
            }
            row(
                m,
                format!("host {}:{p} → {}", tb.host.address, y.name),
                SocketAddrV4::new(tb.host.address, p),
                Reach::Deny,
                y.name.as_str(),
                format!(
                    "§3.1 {} may not reach {} through a published port",
                    x.name, y.name
                ),
            );
            if let Some((b, gw)) = tb.gateways.iter().find(|(b, _)| b == y.bridge.as_str()) {
                row(
                    m,
                    format!("gateway {gw}:{p} ({b}) → {}", y.name),
                    SocketAddrV4::new(*gw, p),
                    Reach::Deny,
                    y.name.as_str(),
                    format!(
                        "§3.1 {} may not reach {} through a gateway address",
                        x.name, y.name
                    ),
                );
            }
        }
        let (echo, port) = &tb.egress;
        row(
            m,
            format!("{} {}:{port}", echo.name, echo.address),
            SocketAddrV4::new(echo.address, *port),
            Reach::Allow,
            &echo.name,
            "containers keep their own outbound connections".into(),
        );
    }
    for m in &tb.clients {
        let trusted = cfg.lan_range.contains(m.address);
        for &p in &tb.published {
            let Some(y) = owner(p) else { continue };
            let public = y.published_ports.contains(&p);
            let (allow, why) = match (cfg.reading, trusted, public) {
                (Reading::Tiered, true, _) => {
                    (true, format!("§3.2 {} is in the LAN range", m.address))
                }
                (Reading::Tiered, false, true) => (
                    true,
                    format!("§3.3 {}:{p} is served to the outside world", y.name),
                ),
                (Reading::Tiered, false, false) => (
                    false,
                    format!("§3.3 {}:{p} is not served outside the LAN range", y.name),
                ),
                (Reading::Strict, true, true) => {
                    (true, format!("§3.2 {} is in the LAN range", m.address))
                }
                (Reading::Strict, true, false) => (
                    false,
                    format!("§3.3 {}:{p} is not served (strict reading)", y.name),
                ),
                (Reading::Strict, false, _) => (
                    false,
                    format!(
                        "§3.2 {} is outside the LAN range (strict reading)",
                        m.address
                    ),
                ),
            };
            row(
                m,
                format!("host {}:{p} → {}", tb.host.address, y.name),
                SocketAddrV4::new(tb.host.address, p),
                if allow { Reach::Allow } else { Reach::Deny },
                y.name.as_str(),
                why,
            );
        }
        for y in &cfg.containers {
            let Some(p) = y.ports().next() else { continue };
            row(
                m,
                format!("{} {}:{p} directly", y.name, y.address),
                SocketAddrV4::new(y.address, p),
                Reach::Deny,
                y.name.as_str(),
                "containers are reached only through published ports (Docker drops direct routing)"
                    .into(),
            );
        }
    }
    out
}

/// Probes every row at once (one short thread per row), each with `timeout` for the connect.
pub fn probe(cfg: &FirewallConfig, rows: Vec<Row>, timeout: Duration) -> Result<MatrixReport> {
    let clock = Instant::now();
    let handles: Vec<_> = rows
        .into_iter()
        .map(|row| {
            std::thread::spawn(move || {
                let seen = netns::connect(&row.netns, SocketAddr::V4(row.dst), timeout, true);
                (row, seen)
            })
        })
        .collect();
    let mut results = Vec::new();
    for h in handles {
        let (row, seen) = h
            .join()
            .map_err(|_| anyhow::anyhow!("a probe thread panicked"))?;
        let seen = seen?;
        let (reach, detail) = match &seen {
            Connect::Open(banner) => (Reach::Allow, format!("answered `{banner}`")),
            Connect::TimedOut => (
                Reach::Deny,
                format!("no answer in {} ms", timeout.as_millis()),
            ),
            Connect::Refused(e) => (Reach::Deny, e.clone()),
        };
        let pass = match (row.expect, &seen) {
            (Reach::Allow, Connect::Open(banner)) => *banner == row.banner,
            (Reach::Deny, Connect::TimedOut | Connect::Refused(_)) => true,
            _ => false,
        };
        results.push(RowResult {
            row,
            seen: reach,
            detail,
            pass,
        });
    }
    Ok(MatrixReport {
        reading: cfg.reading,
        rows: results,
        secs: clock.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine(name: &str, a: [u8; 4]) -> Machine {
        Machine {
            name: name.into(),
            netns: format!("t-{name}"),
            address: Ipv4Addr::from(a),
        }
    }

    fn testbed() -> Testbed {
        Testbed {
            host: machine("host", [192, 168, 1, 100]),
            containers: vec![
                machine("Docker_A", [172, 30, 1, 10]),
                machine("Docker_B", [172, 30, 1, 11]),
                machine("Docker_C", [172, 30, 2, 10]),
            ],
            clients: vec![
                machine("lan-1", [192, 168, 1, 1]),
                machine("lan-30", [192, 168, 1, 30]),
                machine("lan-31", [192, 168, 1, 31]),
                machine("outside", [203, 0, 113, 10]),
            ],
            gateways: vec![
                ("br-ab".into(), Ipv4Addr::new(172, 30, 1, 1)),
                ("br-c".into(), Ipv4Addr::new(172, 30, 2, 1)),
            ],
            egress: (machine("outside", [203, 0, 113, 10]), 9999),
            published: vec![8080, 3316, 80],
        }
    }

    fn expect(rows: &[Row], from: &str, dst: &str) -> Reach {
        let dst: SocketAddrV4 = dst.parse().unwrap();
        rows.iter()
            .find(|r| r.from == from && r.dst == dst)
            .unwrap_or_else(|| panic!("no row {from} → {dst}"))
            .expect
    }

    #[test]
    fn the_notes_matrix_under_both_readings() {
        let tiered = FirewallConfig::default();
        let strict = FirewallConfig {
            reading: Reading::Strict,
            ..FirewallConfig::default()
        };
        let tb = testbed();
        let r1 = rows(&tiered, &tb);
        let r2 = rows(&strict, &tb);
        use Reach::{Allow, Deny};
        // (from, to, R1, R2): rows of notes §5.
        for (from, to, want1, want2) in [
            ("lan-30", "192.168.1.100:8080", Allow, Allow),
            ("lan-30", "192.168.1.100:80", Allow, Allow),
            ("lan-30", "192.168.1.100:3316", Allow, Deny),
            ("lan-1", "192.168.1.100:3316", Allow, Deny),
            ("lan-1", "192.168.1.100:8080", Allow, Allow),
            ("lan-31", "192.168.1.100:8080", Allow, Deny),
            ("lan-31", "192.168.1.100:80", Allow, Deny),
            ("lan-31", "192.168.1.100:3316", Deny, Deny),
            ("outside", "192.168.1.100:8080", Allow, Deny),
            ("outside", "192.168.1.100:80", Allow, Deny),
            ("outside", "192.168.1.100:3316", Deny, Deny),
            ("lan-30", "172.30.1.10:8080", Deny, Deny),
            ("lan-31", "172.30.1.11:3316", Deny, Deny),
            ("Docker_A", "172.30.1.11:3316", Allow, Allow),
            ("Docker_B", "172.30.1.10:8080", Allow, Allow),
            ("Docker_A", "172.30.2.10:80", Deny, Deny),
            ("Docker_A", "192.168.1.100:80", Deny, Deny),
            ("Docker_B", "192.168.1.100:80", Deny, Deny),
            ("Docker_C", "172.30.1.10:8080", Deny, Deny),
            ("Docker_C", "172.30.1.11:3316", Deny, Deny),
            ("Docker_C", "192.168.1.100:8080", Deny, Deny),
            ("Docker_C", "192.168.1.100:3316", Deny, Deny),
            ("Docker_C", "172.30.1.1:8080", Deny, Deny),
            ("Docker_A", "203.0.113.10:9999", Allow, Allow),
            ("Docker_C", "203.0.113.10:9999", Allow, Allow),
        ] {
            assert_eq!(expect(&r1, from, to), want1, "R1 {from} → {to}");
            assert_eq!(expect(&r2, from, to), want2, "R2 {from} → {to}");
        }
        // The same-bridge hairpin (A → host:3316 → B) is docker-proxy's, not probed.
        assert!(!r1.iter().any(|r| r.from == "Docker_A"
            && r.dst.port() == 3316
            && *r.dst.ip() == tb.host.address));
        assert_eq!(r1.len(), r2.len());
    }

    #[test]
    fn the_table_names_every_failed_row() {
        let cfg = FirewallConfig::default();
        let rows = rows(&cfg, &testbed());
        let report = MatrixReport {
            reading: Reading::Tiered,
            rows: rows
                .into_iter()
                .take(3)
                .enumerate()
                .map(|(i, row)| RowResult {
                    seen: if i == 1 { Reach::Deny } else { row.expect },
                    detail: if i == 1 {
                        "no answer in 500 ms".into()
                    } else {
                        "answered".into()
                    },
                    pass: i != 1,
                    row,
                })
                .collect(),
            secs: 0.5,
        };
        assert!(!report.passed());
        let t = report.render_table();
        assert!(t.contains("1 of 3 rows do NOT match"), "{t}");
        assert!(
            t.contains("FAIL") && t.contains("[saw: no answer in 500 ms]"),
            "{t}"
        );
    }
}
