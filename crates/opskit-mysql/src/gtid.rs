//! MariaDB GTID positions (`domain-server-seq`, comma-separated) and the two questions a
//! switchover asks of them: does one position cover another, and which transactions does a
//! replica have that its source never had (errant transactions).
//!
//! MariaDB has no `GTID_SUBTRACT`. With `gtid_strict_mode` the sequence numbers of a domain
//! only grow, so `@@gtid_binlog_state` (the last GTID of every `(domain, server_id)` pair in
//! the binary log) answers the errant question: an entry of the replica that the source has
//! with a lower sequence number, or not at all, is a transaction the source never wrote or
//! relayed. MySQL's GTID sets are compared on the server (`GTID_SUBTRACT`).

use std::collections::BTreeMap;
use std::fmt;

/// One MariaDB GTID.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Gtid {
    /// Replication domain.
    pub domain: u32,
    /// Server id of the server that wrote it.
    pub server: u32,
    /// Sequence number within the domain.
    pub seq: u64,
}

impl fmt::Display for Gtid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}-{}", self.domain, self.server, self.seq)
    }
}

/// Parses a comma-separated GTID list (`0-1-9,1-2-5`); empty text is an empty list.
pub fn parse_list(text: &str) -> Result<Vec<Gtid>, String> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            let mut parts = s.split('-');
            let bad = || format!("`{s}` is not a MariaDB GTID (domain-server-seq)");
            let g = Gtid {
                domain: parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?,
                server: parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?,
                seq: parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?,
            };
            if parts.next().is_some() {
                return Err(bad());
            }
            Ok(g)
        })
        .collect()
}

/// A position: the last GTID of each domain (`@@gtid_binlog_pos`, `@@gtid_slave_pos`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Position(BTreeMap<u32, Gtid>);

impl Position {
    /// Parses a position (one GTID per domain; a later duplicate domain wins).
    pub fn parse(text: &str) -> Result<Position, String> {
        Ok(Position(
            parse_list(text)?
                .into_iter()
                .map(|g| (g.domain, g))
                .collect(),
        ))
    }

    /// True when this position has reached `other` in every domain of `other`.
    pub fn covers(&self, other: &Position) -> bool {
        other
            .0
            .values()
            .all(|g| self.0.get(&g.domain).is_some_and(|mine| mine.seq >= g.seq))
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.values().map(Gtid::to_string).collect();
        f.write_str(&parts.join(","))
    }
}

/// The entries of a replica's `@@gtid_binlog_state` its source's state does not cover:
/// transactions the source never had. Empty when there are none.
pub fn errant(replica_state: &str, source_state: &str) -> Result<Vec<Gtid>, String> {
    let source = parse_list(source_state)?;
    Ok(parse_list(replica_state)?
        .into_iter()
        .filter(|r| {
            !source
                .iter()
                .any(|s| s.domain == r.domain && s.server == r.server && s.seq >= r.seq)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_cover_per_domain() {
        let a = Position::parse("0-1-10,1-5-3").unwrap();
        assert!(a.covers(&Position::parse("0-2-9").unwrap()));
        assert!(a.covers(&Position::parse("").unwrap()));
        assert!(!a.covers(&Position::parse("0-1-11").unwrap()));
        assert!(!a.covers(&Position::parse("2-1-1").unwrap()));
        assert_eq!(a.to_string(), "0-1-10,1-5-3");
        assert!(Position::parse("0-1").is_err());
        assert!(Position::parse("0-1-2-3").is_err());
    }

    #[test]
    fn a_local_write_on_a_replica_is_errant_and_relayed_history_is_not() {
        // The source relayed master 1's writes and later became master itself (server 2).
        let source = "0-1-100,0-2-140";
        assert!(errant("0-1-100,0-2-140", source).unwrap().is_empty());
        assert!(errant("0-1-90", source).unwrap().is_empty());
        // A write made on the replica itself (server 3), and one past the source's state.
        let e = errant("0-1-100,0-3-101", source).unwrap();
        assert_eq!(
            e.iter().map(|g| g.to_string()).collect::<Vec<_>>(),
            ["0-3-101"]
        );
        assert_eq!(errant("0-2-141", source).unwrap().len(), 1);
    }
}
