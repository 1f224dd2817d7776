//! What the host looks like before a run: the iptables backend, Docker's view of the
//! containers, and the live `filter` table. Read-only; every problem is kept as data so a dry
//! run can show it, and [`Observation::refusal`] turns the blocking ones into the reason a run
//! refuses (exit 3, nothing changed).

use opskit_core::config::FirewallConfig;
use opskit_core::plan::Plan;

use crate::docker::{self, DockerReport};
use crate::drift::{FORWARD_JUMP, ForwardJump};
use crate::iptables::{Backend, Iptables, SavedTable};
use crate::ruleset::USER_CHAIN;

/// The host as observed.
#[derive(Debug, Clone)]
pub struct Observation {
    /// The iptables backend (or why it could not be told).
    pub backend: Result<Backend, String>,
    /// Docker's report: `Ok(None)` when there is no Docker to ask.
    pub docker: Result<Option<DockerReport>, String>,
    /// The live `filter` table.
    pub live: Result<SavedTable, String>,
}

impl Observation {
    /// Looks at the host (never changes anything).
    pub fn take(cfg: &FirewallConfig, ipt: &Iptables) -> Observation {
        let err = |e: anyhow::Error| format!("{e:#}");
        Observation {
            backend: ipt.backend().map_err(err),
            docker: docker::observe(cfg).map_err(err),
            live: ipt.filter().map_err(err),
        }
    }

    /// Where `FORWARD` jumps to `DOCKER-USER`, when the table could be read.
    pub fn forward_jump(&self) -> Option<ForwardJump> {
        let live = self.live.as_ref().ok()?;
        Some(
            match live
                .rules("FORWARD")
                .and_then(|r| r.iter().position(|l| l == FORWARD_JUMP))
            {
                Some(0) => ForwardJump::First,
                Some(i) => ForwardJump::At(i + 1),
                None => ForwardJump::Missing,
            },
        )
    }

    /// The reason a run that changes the rules must not start, if any.
    pub fn refusal(&self) -> Option<String> {
        if let Err(e) = &self.backend {
            return Some(format!("iptables cannot be used: {e}"));
        }
        match &self.docker {
            Err(e) => return Some(format!("Docker does not answer: {e}")),
            Ok(Some(d)) if d.backend != "iptables" => {
                return Some(format!(
                    "Docker {} runs with its `{}` firewall backend: there is no DOCKER-USER chain \
                     to load the policy into (set \"firewall-backend\": \"iptables\" in \
                     /etc/docker/daemon.json and restart Docker)",
                    d.version, d.backend
                ));
            }
            Ok(Some(d)) if !d.errors.is_empty() => {
                return Some(format!(
                    "the running containers do not match [firewall] in the config: {}",
                    d.errors.join("; ")
                ));
            }
            _ => {}
        }
        let live = match &self.live {
            Err(e) => return Some(format!("the live rules cannot be read: {e}")),
            Ok(live) => live,
        };
        if live.rules(USER_CHAIN).is_none() {
            return Some(format!(
                "the {USER_CHAIN} chain does not exist: Docker is not running, or runs with \
                 \"iptables\": false or its nftables backend; start Docker first"
            ));
        }
        if self.forward_jump() == Some(ForwardJump::Missing) {
            return Some(format!(
                "FORWARD does not jump to {USER_CHAIN}, so a policy there would never be \
                 consulted; restart Docker (it puts the jump back first in FORWARD)"
            ));
        }
        None
    }

    /// Warnings worth a log line: Docker's port warnings, legacy tables, a misplaced jump.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Ok(Some(d)) = &self.docker {
            out.extend(d.warnings.iter().cloned());
        }
        if let Ok(live) = &self.live
            && live.legacy_tables_present
        {
            out.push(
                "iptables-legacy tables exist beside the nf_tables ones: a tool or container \
                 uses the other backend, and its rules apply too (iptables-legacy-save shows \
                 them)"
                    .into(),
            );
        }
        if let Some(ForwardJump::At(i)) = self.forward_jump() {
            out.push(format!(
                "FORWARD jumps to {USER_CHAIN} at position {i}: the {} rule(s) before it see \
                 packets before the policy",
                i - 1
            ));
        }
        out
    }

    /// Adds what was observed to a plan's facts.
    pub fn add_facts(&self, plan: &mut Plan) {
        plan.fact(
            "iptables",
            match &self.backend {
                Ok(b) => b.to_string(),
                Err(e) => format!("UNUSABLE: {e}"),
            },
        );
        plan.fact(
            "docker",
            match &self.docker {
                Ok(None) => "not asked (no Docker client configured or installed)".to_string(),
                Ok(Some(d)) if d.errors.is_empty() => format!(
                    "Docker {} ({} backend): the containers match the config",
                    d.version, d.backend
                ),
                Ok(Some(d)) => format!(
                    "Docker {} ({} backend): MISMATCH: {}",
                    d.version,
                    d.backend,
                    d.errors.join("; ")
                ),
                Err(e) => format!("does not answer: {e}"),
            },
        );
        plan.fact(
            "DOCKER-USER",
            match (&self.live, self.forward_jump()) {
                (Err(e), _) => format!("unreadable: {e}"),
                (Ok(live), _) if live.rules(USER_CHAIN).is_none() => {
                    "MISSING (the run will refuse)".to_string()
                }
                (Ok(live), jump) => format!(
                    "{} rule(s) now; FORWARD jump: {}",
                    live.rules(USER_CHAIN).map_or(0, <[String]>::len),
                    match jump {
                        Some(ForwardJump::First) => "first".to_string(),
                        Some(ForwardJump::At(i)) => format!("position {i}"),
                        _ => "MISSING (the run will refuse)".to_string(),
                    }
                ),
            },
        );
        for w in self.warnings() {
            plan.fact("warning", w);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iptables::BackendKind;

    fn host(docker: Option<DockerReport>, filter: &str) -> Observation {
        Observation {
            backend: Ok(Backend {
                version: "1.8.4".into(),
                kind: BackendKind::NfTables,
            }),
            docker: Ok(docker),
            live: Ok(SavedTable::parse(filter, "filter")),
        }
    }

    const DOCKER: &str = "*filter\n:FORWARD DROP [0:0]\n:DOCKER-USER - [0:0]\n\
                          -A FORWARD -j DOCKER-USER\n-A FORWARD -j DOCKER-FORWARD\nCOMMIT\n";

    fn docker(backend: &str, errors: &[&str]) -> Option<DockerReport> {
        Some(DockerReport {
            version: "29.1.0".into(),
            backend: backend.into(),
            errors: errors.iter().map(|e| e.to_string()).collect(),
            warnings: vec!["publishes 3316/tcp on `all addresses`".into()],
        })
    }

    #[test]
    fn a_host_ready_for_the_policy_is_not_refused() {
        assert_eq!(host(None, DOCKER).refusal(), None);
        let o = host(docker("iptables", &[]), DOCKER);
        assert_eq!(o.refusal(), None);
        assert_eq!(o.warnings().len(), 1);
    }

    #[test]
    fn every_blocking_problem_is_a_refusal_that_says_what_to_do() {
        let cases = [
            (
                host(docker("nftables", &[]), DOCKER),
                "nftables` firewall backend",
            ),
            (
                host(
                    docker("iptables", &["container `Docker_A` does not exist"]),
                    DOCKER,
                ),
                "Docker_A` does not exist",
            ),
            (
                host(None, "*filter\n:FORWARD DROP [0:0]\nCOMMIT\n"),
                "DOCKER-USER chain does not exist",
            ),
            (
                host(
                    None,
                    "*filter\n:FORWARD DROP [0:0]\n:DOCKER-USER - [0:0]\nCOMMIT\n",
                ),
                "FORWARD does not jump to DOCKER-USER",
            ),
            (
                Observation {
                    backend: Err("iptables-restore is legacy but iptables-save is nf_tables".into()),
                    ..host(None, DOCKER)
                },
                "iptables cannot be used",
            ),
        ];
        for (o, want) in cases {
            let r = o.refusal().expect("refused");
            assert!(r.contains(want), "{r}");
        }
    }

    #[test]
    fn a_jump_that_is_not_first_is_a_warning() {
        let o = host(
            None,
            "*filter\n:FORWARD DROP [0:0]\n:DOCKER-USER - [0:0]\n-A FORWARD -j ACCEPT\n\
             -A FORWARD -j DOCKER-USER\nCOMMIT\n",
        );
        assert_eq!(o.refusal(), None);
        assert!(o.warnings()[0].contains("position 2"), "{:?}", o.warnings());
    }
}
