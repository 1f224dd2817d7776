//! Snapshot tests of the printed switchover plan (`opskit mysql switchover --dry-run`): every
//! SQL statement per flavour, the DNS update and every HAProxy command, for MariaDB 10.11
//! (mirror, flat, the reverse switchover), MariaDB 10.6 (no MASTER_DEMOTE_TO_SLAVE) and
//! MySQL 8.4. The plans are built by `prepare` from a discovered tree, as the command does.
//! `UPDATE_SNAPSHOTS=1 cargo test` rewrites them; review the diff before committing.

use std::path::PathBuf;

use chrono::TimeZone as _;
use opskit_core::config::MysqlConfig;
use opskit_mysql::haproxy::Slot;
use opskit_mysql::switchover::{Layout, SwitchoverInput, describe, prepare};
use opskit_mysql::topology::{Node, TopologyReport};

const NAMES: [&str; 5] = ["Master", "Slave_01", "Slave_02", "Slave_03", "Slave_04"];
const SPEC: [Option<&str>; 5] = [
    None,
    Some("Master"),
    Some("Master"),
    Some("Slave_01"),
    Some("Slave_02"),
];
const MIRRORED: [Option<&str>; 5] = [
    Some("Slave_01"),
    None,
    Some("Slave_01"),
    Some("Master"),
    Some("Slave_02"),
];

fn config() -> MysqlConfig {
    let mut c = MysqlConfig::default();
    for (i, s) in c.servers.iter_mut().enumerate() {
        s.host = format!("10.0.0.{}", 11 + i).parse().unwrap();
    }
    c.dns.server = "10.0.0.53:53".to_string().try_into().unwrap();
    c
}

fn nodes() -> Vec<Node> {
    NAMES
        .iter()
        .enumerate()
        .map(|(i, n)| Node {
            name: n.to_string(),
            host: format!("10.0.0.{}", 11 + i),
            port: 3306,
            ip: Some(format!("10.0.0.{}", 11 + i).parse().unwrap()),
        })
        .collect()
}

/// A discovered tree: every server answers, `version` is what `SELECT VERSION()` said.
fn report(version: &str, tree: [Option<&str>; 5]) -> TopologyReport {
    let kind = opskit_mysql::flavor::ServerKind::parse(version).unwrap();
    let servers: Vec<serde_json::Value> = NAMES
        .iter()
        .zip(tree)
        .enumerate()
        .map(|(i, (n, src))| {
            serde_json::json!({
                "name": n,
                "endpoint": format!("10.0.0.{}:3306", 11 + i),
                "kind": kind,
                "server_id": i + 1,
                "read_only": src.is_some(),
                "source": src,
                "replication": src.map(|s| serde_json::json!({
                    "source_host": format!("10.0.0.{}", 11 + NAMES.iter().position(|x| *x == s).unwrap()),
                    "source_port": 3306, "user": "repl", "io_running": "Yes", "sql_running": "Yes",
                    "lag_secs": 0, "gtid_mode": "Slave_Pos", "last_io_error": "", "last_sql_error": ""
                })),
            })
        })
        .collect();
    let roots: Vec<&str> = NAMES
        .iter()
        .zip(tree)
        .filter(|(_, s)| s.is_none())
        .map(|(n, _)| *n)
        .collect();
    serde_json::from_value(serde_json::json!({
        "servers": servers, "roots": roots, "differences": [], "max_lag_secs": 10
    }))
    .unwrap()
}

fn slots(addr_of_slave_01: &str) -> Vec<Slot> {
    ["Slave_01", "Slave_02", "Slave_03", "Slave_04"]
        .iter()
        .enumerate()
        .map(|(i, n)| Slot {
            backend: "mysql_slave".into(),
            name: n.to_string(),
            addr: if i == 0 {
                addr_of_slave_01.into()
            } else {
                format!("10.0.0.{}", 12 + i)
            },
            port: 3306,
            op_state: 2,
            admin_state: 0,
        })
        .collect()
}

fn plan(
    version: &str,
    tree: [Option<&str>; 5],
    new: Option<&str>,
    layout: Layout,
    slot_01: &str,
) -> SwitchoverInput {
    let now = chrono::Utc.with_ymd_and_hms(2026, 11, 23, 2, 0, 0).unwrap();
    prepare(
        &config(),
        &report(version, tree),
        &nodes(),
        new,
        layout,
        Some(&slots(slot_01)),
        now,
    )
    .unwrap()
}

fn snapshot(name: &str, text: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/snapshots")
        .join(name);
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
        std::fs::write(&path, text).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run with UPDATE_SNAPSHOTS=1 to create it)",
            path.display()
        )
    });
    if want != text {
        let line = want
            .lines()
            .zip(text.lines())
            .position(|(a, b)| a != b)
            .map_or("the line counts differ".to_string(), |i| {
                format!(
                    "line {}:\n- {}\n+ {}",
                    i + 1,
                    want.lines().nth(i).unwrap(),
                    text.lines().nth(i).unwrap()
                )
            });
        panic!(
            "{} differs (UPDATE_SNAPSHOTS=1 to accept):\n{line}",
            path.display()
        );
    }
}

#[test]
fn mariadb_mirror() {
    let p = plan("10.11.19-MariaDB", SPEC, None, Layout::Mirror, "10.0.0.12");
    assert_eq!(
        (p.old_master.as_str(), p.new_master.as_str()),
        ("Master", "Slave_01")
    );
    assert_eq!(p.siblings, ["Slave_02"]);
    assert_eq!(p.children, ["Slave_03"]);
    snapshot("mariadb-10.11-mirror.txt", &describe(&p).render_text());
}

#[test]
fn mariadb_flat() {
    let p = plan("10.11.19-MariaDB", SPEC, None, Layout::Flat, "10.0.0.12");
    assert!(p.children.is_empty());
    assert_eq!(p.after["Slave_03"].as_deref(), Some("Slave_01"));
    snapshot("mariadb-10.11-flat.txt", &describe(&p).render_text());
}

#[test]
fn mariadb_reverse_puts_everything_back() {
    // After the mirror switchover the pool slot Slave_01 holds the old master (10.0.0.11).
    let p = plan(
        "10.11.19-MariaDB",
        MIRRORED,
        Some("Master"),
        Layout::Mirror,
        "10.0.0.11",
    );
    let want: Vec<(String, Option<String>)> = NAMES
        .iter()
        .zip(SPEC)
        .map(|(n, s)| (n.to_string(), s.map(str::to_string)))
        .collect();
    assert_eq!(p.after.clone().into_iter().collect::<Vec<_>>(), want);
    let pool = p.pool.as_ref().unwrap();
    assert_eq!(
        (pool.slot.as_str(), pool.addr.as_str()),
        ("Slave_01", "10.0.0.12")
    );
    snapshot("mariadb-10.11-reverse.txt", &describe(&p).render_text());
}

#[test]
fn mariadb_before_10_10_merges_the_gtid_position_by_hand() {
    let p = plan("10.6.16-MariaDB", SPEC, None, Layout::Mirror, "10.0.0.12");
    let text = describe(&p).render_text();
    assert!(text.contains("SET GLOBAL gtid_slave_pos = @@GLOBAL.gtid_binlog_pos"));
    assert!(!text.contains("MASTER_DEMOTE_TO_SLAVE"));
    snapshot("mariadb-10.6-mirror.txt", &text);
}

#[test]
fn mysql_8_mirror() {
    let p = plan("8.4.3", SPEC, None, Layout::Mirror, "10.0.0.12");
    let text = describe(&p).render_text();
    for gone in ["SLAVE", "MASTER_"] {
        assert!(
            !text.contains(gone),
            "MySQL 8.4 has no {gone} statements:\n{text}"
        );
    }
    snapshot("mysql-8.4-mirror.txt", &text);
}

#[test]
fn only_a_direct_replica_of_the_master_is_promoted() {
    let now = chrono::Utc::now();
    let cfg = config();
    let r = report("10.11.19-MariaDB", SPEC);
    let e = prepare(
        &cfg,
        &r,
        &nodes(),
        Some("Slave_03"),
        Layout::Mirror,
        None,
        now,
    )
    .unwrap_err();
    assert!(e.to_string().contains("only a direct replica"), "{e}");
    assert_eq!(opskit_core::ExitStatus::of(&e).code(), 3);
    let e = prepare(
        &cfg,
        &r,
        &nodes(),
        Some("Master"),
        Layout::Mirror,
        None,
        now,
    )
    .unwrap_err();
    assert!(e.to_string().contains("already a master"), "{e}");
    let e = prepare(
        &cfg,
        &r,
        &nodes(),
        Some("Slave_09"),
        Layout::Mirror,
        None,
        now,
    )
    .unwrap_err();
    assert!(e.to_string().contains("not one of mysql.servers"), "{e}");
}

#[test]
fn a_candidate_outside_the_pool_leaves_the_pool_alone() {
    let p = plan("10.11.19-MariaDB", SPEC, None, Layout::Mirror, "10.0.0.99");
    assert!(p.pool.is_none());
    let text = describe(&p).render_text();
    assert!(!text.contains("set server"), "{text}");
    assert!(text.contains("is not in the read pool"));
}
