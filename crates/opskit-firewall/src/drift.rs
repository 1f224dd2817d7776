//! Drift: how the live chains differ from the compiled policy, rule by rule, in order.
//!
//! Both sides are `iptables-save` output of the same iptables (the compiled side loaded into a
//! throw-away namespace first, see [`crate::iptables::Iptables::canonical`]), so equal rules
//! are equal text. The order matters in a firewall, so the comparison is a diff (longest
//! common subsequence), not a set difference.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::iptables::SavedTable;
use crate::ruleset::{CHAINS, USER_CHAIN};

/// The rule Docker up to 28.2 appends to `DOCKER-USER`; harmless at the end of the chain.
pub const DOCKER_TRAILING_RETURN: &str = "-A DOCKER-USER -j RETURN";
/// The jump Docker puts first in `FORWARD`.
pub const FORWARD_JUMP: &str = "-A FORWARD -j DOCKER-USER";

/// Where `FORWARD` sends packets to `DOCKER-USER`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ForwardJump {
    /// The first rule of `FORWARD`, as Docker puts it.
    First,
    /// Present, but rules before it see packets first (1-based position).
    At(usize),
    /// Absent: the policy is never consulted.
    Missing,
}

/// The difference between the compiled policy and the live chains.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drift {
    /// Policy chains that do not exist live.
    pub missing_chains: Vec<String>,
    /// Compiled rules that are not live (or not in their place).
    pub missing: Vec<String>,
    /// Live rules of the policy's chains that the policy does not have.
    pub unexpected: Vec<String>,
    /// The `FORWARD` jump to `DOCKER-USER`.
    pub forward_jump: ForwardJump,
}

/// Indices of `a` and of `b` that are not in their longest common subsequence.
fn diff(a: &[String], b: &[String]) -> (Vec<usize>, Vec<usize>) {
    let (n, m) = (a.len(), b.len());
    let mut lcs = vec![vec![0usize; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j) = (0, 0);
    let (mut only_a, mut only_b) = (Vec::new(), Vec::new());
    while i < n && j < m {
        if a[i] == b[j] {
            i += 1;
            j += 1;
        } else if lcs[i + 1][j] >= lcs[i][j + 1] {
            only_a.push(i);
            i += 1;
        } else {
            only_b.push(j);
            j += 1;
        }
    }
    only_a.extend(i..n);
    only_b.extend(j..m);
    (only_a, only_b)
}

impl Drift {
    /// Compares the compiled policy (`expected`, canonical) with the `live` filter table.
    pub fn compare(expected: &SavedTable, live: &SavedTable) -> Drift {
        let mut d = Drift {
            missing_chains: Vec::new(),
            missing: Vec::new(),
            unexpected: Vec::new(),
            forward_jump: match live
                .rules("FORWARD")
                .and_then(|r| r.iter().position(|l| l == FORWARD_JUMP))
            {
                Some(0) => ForwardJump::First,
                Some(i) => ForwardJump::At(i + 1),
                None => ForwardJump::Missing,
            },
        };
        for chain in CHAINS {
            let want = expected.rules(chain).unwrap_or_default();
            let Some(have) = live.rules(chain) else {
                d.missing_chains.push(chain.to_string());
                d.missing.extend(want.iter().cloned());
                continue;
            };
            let mut have = have.to_vec();
            if chain == USER_CHAIN
                && have.last().map(String::as_str) == Some(DOCKER_TRAILING_RETURN)
                && want.last().map(String::as_str) != Some(DOCKER_TRAILING_RETURN)
            {
                have.pop();
            }
            let (only_want, only_have) = diff(want, &have);
            d.missing
                .extend(only_want.into_iter().map(|i| want[i].clone()));
            d.unexpected
                .extend(only_have.into_iter().map(|i| have[i].clone()));
        }
        d
    }

    /// The number of differences: rules missing or misplaced, rules unexpected, and 1 when the
    /// `FORWARD` jump is not first. 0 means in sync (`opskit_firewall_drift_rules`).
    pub fn count(&self) -> usize {
        self.missing.len()
            + self.unexpected.len()
            + usize::from(self.forward_jump != ForwardJump::First)
    }

    /// What differs, one item per line, for the operator.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        for c in &self.missing_chains {
            let _ = writeln!(out, "chain {c} does not exist");
        }
        for r in &self.missing {
            let _ = writeln!(out, "missing:    {r}");
        }
        for r in &self.unexpected {
            let _ = writeln!(out, "unexpected: {r}");
        }
        match self.forward_jump {
            ForwardJump::First => {}
            ForwardJump::At(i) => {
                let _ = writeln!(
                    out,
                    "FORWARD jumps to DOCKER-USER at position {i}, not first: the rules before it \
                     see packets before the policy"
                );
            }
            ForwardJump::Missing => {
                let _ = writeln!(
                    out,
                    "FORWARD does not jump to DOCKER-USER: the policy is never consulted (is \
                     Docker running with its iptables backend?)"
                );
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(forward: &[&str], user: &[&str], inbound: Option<&[&str]>) -> SavedTable {
        let mut text = String::from("*filter\n:FORWARD DROP [0:0]\n:DOCKER-USER - [0:0]\n");
        if inbound.is_some() {
            text.push_str(":OPSKIT-INBOUND - [0:0]\n");
        }
        for r in forward {
            text.push_str(&format!("-A FORWARD {r}\n"));
        }
        for r in user {
            text.push_str(&format!("-A DOCKER-USER {r}\n"));
        }
        for r in inbound.unwrap_or_default() {
            text.push_str(&format!("-A OPSKIT-INBOUND {r}\n"));
        }
        text.push_str("COMMIT\n");
        SavedTable::parse(&text, "filter")
    }

    const USER: [&str; 3] = [
        "-i x -o y -j DROP",
        "-i y -o x -j DROP",
        "-o x -j OPSKIT-INBOUND",
    ];
    const INBOUND: [&str; 2] = ["-s 10.0.0.1/32 -j RETURN", "-j DROP"];

    #[test]
    fn identical_chains_are_in_sync_and_dockers_trailing_return_is_tolerated() {
        let want = table(&[], &USER, Some(&INBOUND));
        let live = table(
            &["-j DOCKER-USER", "-j DOCKER-FORWARD"],
            &USER,
            Some(&INBOUND),
        );
        assert_eq!(Drift::compare(&want, &live).count(), 0);
        let mut with_return = USER.to_vec();
        with_return.push("-j RETURN");
        let live = table(&["-j DOCKER-USER"], &with_return, Some(&INBOUND));
        assert_eq!(Drift::compare(&want, &live).count(), 0);
    }

    #[test]
    fn missing_extra_reordered_and_jump_are_each_counted() {
        let want = table(&[], &USER, Some(&INBOUND));
        let live = table(&["-j DOCKER-USER"], &USER[..2], Some(&INBOUND));
        let d = Drift::compare(&want, &live);
        assert_eq!(d.missing, ["-A DOCKER-USER -o x -j OPSKIT-INBOUND"]);
        assert_eq!(d.count(), 1);

        let mut extra = USER.to_vec();
        extra.insert(0, "-j ACCEPT");
        let d = Drift::compare(&want, &table(&["-j DOCKER-USER"], &extra, Some(&INBOUND)));
        assert_eq!(d.unexpected, ["-A DOCKER-USER -j ACCEPT"]);

        let swapped = [USER[1], USER[0], USER[2]];
        let d = Drift::compare(&want, &table(&["-j DOCKER-USER"], &swapped, Some(&INBOUND)));
        assert_eq!(d.count(), 2, "{}", d.describe());

        let d = Drift::compare(
            &want,
            &table(&["-j ACCEPT", "-j DOCKER-USER"], &USER, Some(&INBOUND)),
        );
        assert_eq!(d.forward_jump, ForwardJump::At(2));
        assert_eq!(d.count(), 1);
        assert!(d.describe().contains("position 2"));

        let d = Drift::compare(&want, &table(&[], &[], None));
        assert_eq!(d.missing_chains, ["OPSKIT-INBOUND"]);
        assert_eq!(d.count(), USER.len() + INBOUND.len() + 1);
        assert!(d.describe().contains("never consulted"));
    }
}
