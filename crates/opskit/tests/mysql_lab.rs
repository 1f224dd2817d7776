//! `opskit mysql switchover` end to end on the lab's real MariaDB, HAProxy and BIND.
//!
//! Two labs, one per test (they run in parallel): one switches over and back under a writer
//! that follows DNS and a reader through HAProxy (mirror, reverse, `--flat`); the other
//! injects every fault of the issue and checks that nothing changed, or that everything was
//! put back, or — after the DNS move — that the run stopped, alerted, said where each server
//! is, and resumes.

mod mysql_support;

use std::time::Duration;

use mysql_support::{Rig, Stopped, assert_no_read_errors, hold, metric, release, summary};
use opskit_core::engine::OutcomeKind;

const M: &str = "Master";
const S1: &str = "Slave_01";

const SPEC_TREE: [(&str, Option<&str>); 5] = [
    ("Master", None),
    ("Slave_01", Some("Master")),
    ("Slave_02", Some("Master")),
    ("Slave_03", Some("Slave_01")),
    ("Slave_04", Some("Slave_02")),
];
const MIRROR_TREE: [(&str, Option<&str>); 5] = [
    ("Slave_01", None),
    ("Master", Some("Slave_01")),
    ("Slave_02", Some("Slave_01")),
    ("Slave_03", Some("Master")),
    ("Slave_04", Some("Slave_02")),
];
const FLAT_TREE: [(&str, Option<&str>); 5] = [
    ("Slave_01", None),
    ("Master", Some("Slave_01")),
    ("Slave_02", Some("Slave_01")),
    ("Slave_03", Some("Slave_01")),
    ("Slave_04", Some("Slave_02")),
];

/// One switchover under load: returns the writer's window in seconds.
fn switch_under_load(rig: &Rig, args: &[&str], writer: &str, old: &str, new: &str) -> f64 {
    let cfg = rig.lab_config();
    let w = rig.writer(writer);
    let r = rig.reader();
    std::thread::sleep(Duration::from_millis(700));
    let (code, out, err) = rig.switchover(&cfg, args);
    std::thread::sleep(Duration::from_millis(700));
    let wr = w.stop();
    let rr = r.stop();
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(summary(&out).outcome, OutcomeKind::Succeeded);
    assert_no_read_errors(&rr);
    rig.assert_no_lost_or_duplicated_write(writer, &wr, new);
    let (old_id, new_id) = (server_id(rig, old), server_id(rig, new));
    let window = wr
        .window(old_id, new_id)
        .unwrap_or_else(|| panic!("the writer saw no move from {old} to {new}: {wr:?}"));
    eprintln!(
        "{args:?}: write-unavailable window {:.3} s, writer errors {:?}, reads {} by server {:?}",
        window.secs(),
        wr.errors,
        rr.reads,
        rr.by_server
    );
    window.secs()
}

fn server_id(rig: &Rig, name: &str) -> u32 {
    rig.sql(name, "SELECT @@server_id").trim().parse().unwrap()
}

#[test]
fn switchover_mirror_reverse_and_flat_under_load_lose_no_write() {
    let rig = Rig::new("osw");
    rig.assert_tree(&SPEC_TREE);
    let (m, s1) = (rig.address(M), rig.address(S1));

    // The default: Slave_01 promoted, mirror layout.
    let w = switch_under_load(&rig, &[], "mirror", M, S1);
    assert!(w < 5.0, "window {w} s");
    rig.assert_tree(&MIRROR_TREE);
    assert_eq!(rig.dns(), std::slice::from_ref(&s1));
    rig.assert_slot("Slave_01", &m);
    assert!(
        rig.cfg_has("Slave_01", &m),
        "haproxy.cfg keeps the pool change"
    );
    // A reload re-reads haproxy.cfg: the old master is still in the slot.
    rig.haproxy.reload().unwrap();
    rig.assert_slot("Slave_01", &m);
    assert_eq!(metric(&rig, "opskit_mysql_switchover_half_done"), Some(0.0));
    assert!(metric(&rig, "opskit_mysql_switchover_freeze_seconds").is_some());
    // The marker written on the new master reached every server.
    for s in &rig.mysql.servers {
        let n = rig.sql(&s.name, "SELECT COUNT(*) FROM opskit.switchover_marker");
        assert_eq!(n.trim(), "1", "{}", s.name);
    }

    // The reverse switchover brings back the spec's tree, DNS and pool.
    switch_under_load(&rig, &["--new-master", M], "reverse", S1, M);
    rig.assert_tree(&SPEC_TREE);
    assert_eq!(rig.dns(), std::slice::from_ref(&m));
    rig.assert_slot("Slave_01", &s1);
    assert!(rig.cfg_has("Slave_01", &s1));

    // --flat keeps Slave_03 under the new master.
    switch_under_load(&rig, &["--flat"], "flat", M, S1);
    rig.assert_tree(&FLAT_TREE);
    assert_eq!(rig.dns(), [s1]);
    rig.assert_slot("Slave_01", &m);
}

#[test]
fn faults_abort_safely_and_dry_run_changes_nothing() {
    let rig = Rig::new("osf");
    let lab_cfg = rig.lab_config();
    let before = rig.snapshot();

    // `topology`: the tree from the servers, the same as JSON, the lag for Prometheus.
    let out = rig
        .opskit(&lab_cfg)
        .args(["mysql", "topology"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.starts_with("Master  ") && text.contains("   └─ Slave_04  "),
        "{text}"
    );
    let out = rig
        .opskit(&lab_cfg)
        .args(["--output", "json", "mysql", "topology"])
        .output()
        .unwrap();
    let report: opskit_mysql::topology::TopologyReport =
        serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report.roots, ["Master"]);
    assert!(report.differences.is_empty(), "{:?}", report.differences);
    let prom = std::fs::read_to_string(
        rig.config
            .general
            .metrics_dir
            .path()
            .join("opskit_mysql_topology.prom"),
    )
    .unwrap();
    assert!(
        prom.contains(
            "opskit_mysql_replica_lag_seconds{runbook=\"mysql_topology\",server=\"Slave_03\",source=\"Slave_01\"} 0"
        ),
        "{prom}"
    );

    // `lab status --output json` names every server of the topology and where to reach it.
    let out = rig
        .opskit(&lab_cfg)
        .args(["--output", "json", "lab", "status", "--dir"])
        .arg(rig.lab.dir())
        .output()
        .unwrap();
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let servers = status["servers"].as_array().unwrap();
    let find = |n: &str| {
        servers
            .iter()
            .find(|s| s["name"] == n)
            .unwrap_or_else(|| panic!("{n}"))
    };
    for n in ["Master", "Slave_01", "Slave_02", "Slave_03", "Slave_04"] {
        assert_eq!(find(n)["port"], rig.mysql.port);
        assert_eq!(find(n)["answering"], true);
    }
    assert!(find("haproxy")["details"]["admin_socket"].is_string());
    assert!(find("bind")["details"]["key_file"].is_string());

    // A password file anyone may read is bad config: exit 2, nothing contacted.
    let open_pw = rig.dir.path().join("open.password");
    std::fs::write(&open_pw, "x\n").unwrap();
    let cfg = rig.config_file("open-pw", |c| {
        c.mysql.admin_password_file = open_pw.to_str().unwrap().parse().unwrap();
    });
    let out = rig
        .opskit(&cfg)
        .args(["mysql", "switchover"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("mysql.admin_password_file"));

    // --dry-run prints every statement, the DNS update and the HAProxy commands; nothing moves.
    let out = rig
        .opskit(&lab_cfg)
        .args(["mysql", "switchover", "--dry-run"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    for needle in [
        "SET GLOBAL read_only = ON",
        "MASTER_GTID_WAIT",
        "MASTER_DEMOTE_TO_SLAVE=1",
        "prereq yxrrset mysql-master.ipo.com. A",
        "set server mysql_slave/Slave_01 addr",
        "POINT OF NO RETURN",
        "preflight PASS",
    ] {
        assert!(text.contains(needle), "the plan lacks {needle}:\n{text}");
    }
    let repl_pw = std::fs::read_to_string(&rig.mysql.replication_password_file).unwrap();
    assert!(
        !text.contains(repl_pw.trim()),
        "the plan shows the replication password"
    );
    assert_eq!(rig.snapshot(), before, "--dry-run changed something");

    // Refusals (exit 3): each leaves everything as it was.
    let refuse =
        |name: &str, cfg: &std::path::Path, want: &str, before: &mysql_support::Snapshot| {
            let (code, out, err) = rig.switchover(cfg, &[]);
            assert_eq!(code, Some(3), "{name}: {err}");
            let said = format!("{out}{err}");
            assert!(
                said.contains(want),
                "{name}: the output lacks {want:?}: {said}"
            );
            assert_eq!(&rig.snapshot(), before, "{name} changed something");
        };

    let wrong_key = rig.dir.path().join("wrong.key");
    let key = std::process::Command::new("tsig-keygen")
        .args(["-a", "hmac-sha256", "mysql-master-update"])
        .output()
        .unwrap();
    std::fs::write(&wrong_key, &key.stdout).unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&wrong_key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let cfg = rig.config_file("wrong-key", |c| {
        c.mysql.dns.tsig_key_file = wrong_key.to_str().unwrap().parse().unwrap();
    });
    refuse("wrong TSIG key", &cfg, "rejected the TSIG key", &before);

    let cfg = rig.config_file("no-socket", |c| {
        c.mysql.haproxy.admin_socket = "/nonexistent/haproxy.sock".parse().unwrap();
    });
    refuse(
        "HAProxy socket missing",
        &cfg,
        "/nonexistent/haproxy.sock",
        &before,
    );

    let fast = rig.config_file("fast", |c| {
        c.mysql.timeout_secs = opskit_core::config::value::Positive::new(2);
        c.mysql.max_lag_secs = opskit_core::config::value::Positive::new(1);
        c.mysql.long_write_limit_secs = opskit_core::config::value::Positive::new(1);
        c.mysql.freeze_timeout_secs = opskit_core::config::value::Positive::new(2);
    });
    let (code, out, err) = {
        let _stopped = Stopped::new(rig.mysql.get(S1).unwrap().pid);
        rig.switchover(&fast, &[])
    };
    assert_eq!(code, Some(3), "{err}");
    assert!(err.contains("Slave_01 does not answer"), "{err}");
    let _ = out;
    assert_eq!(
        rig.snapshot(),
        before,
        "candidate stopped: something changed"
    );

    rig.sql(S1, "STOP SLAVE");
    let stopped = rig.snapshot();
    refuse(
        "candidate replication stopped",
        &fast,
        "Slave_01: replication is not running",
        &stopped,
    );
    rig.sql(S1, "START SLAVE");

    // The candidate lags: its SQL thread waits behind a lock while the master takes writes.
    let lock = hold(&rig, S1, "FLUSH TABLES WITH READ LOCK; SELECT SLEEP(30);");
    std::thread::sleep(Duration::from_millis(300));
    for i in 0..5 {
        rig.sql(
            M,
            &format!(
                "INSERT INTO lab.writes (seq, writer, server_id) VALUES ({i}, 'lag', @@server_id)"
            ),
        );
        std::thread::sleep(Duration::from_millis(600));
    }
    let (code, out, err) = rig.switchover(&fast, &[]);
    assert_eq!(code, Some(3), "{err}");
    assert!(out.contains("Slave_01 lags"), "{out}");
    release(&rig, S1, lock);
    let gtid = rig.sql(M, "SELECT @@gtid_binlog_pos").trim().to_string();
    assert_eq!(
        rig.sql(S1, &format!("SELECT MASTER_GTID_WAIT('{gtid}', 20)"))
            .trim(),
        "0"
    );
    let before = rig.snapshot();

    // A write transaction open longer than the limit on the master.
    let trx = hold(
        &rig,
        M,
        "START TRANSACTION; INSERT INTO lab.writes (seq, writer, server_id) VALUES (100, 'long', 1); SELECT SLEEP(30); ROLLBACK;",
    );
    std::thread::sleep(Duration::from_millis(2200));
    refuse("long write", &fast, "has written for", &before);
    release(&rig, M, trx);

    // A failure during the wait: just before the freeze the master takes a write that the
    // candidate cannot apply in time (its SQL thread waits behind a lock). Everything is undone:
    // the master writable, Slave_02 back under it, the pool restored.
    let mut lock = None;
    let (code, out, err) = rig.switchover_with_fault(&fast, &[], "freeze-Master", || {
        lock = Some(hold(
            &rig,
            S1,
            "FLUSH TABLES WITH READ LOCK; SELECT SLEEP(30);",
        ));
        std::thread::sleep(Duration::from_millis(300));
        rig.sql(
            M,
            "INSERT INTO lab.writes (seq, writer, server_id) VALUES (1, 'wait', 1)",
        );
    });
    release(&rig, S1, lock.unwrap());
    assert_eq!(code, Some(1), "{err}");
    let s = summary(&out);
    assert_eq!(s.outcome, OutcomeKind::RolledBack);
    assert_eq!(s.failed_step.as_deref(), Some("catch-up-Slave_01"));
    assert!(
        s.error
            .clone()
            .unwrap_or_default()
            .contains("did not execute"),
        "{s:?}"
    );
    assert_eq!(
        s.undone,
        [
            "freeze-Master",
            "drain-Slave_01",
            "move-Slave_02-under-Slave_01"
        ],
        "{s:?}"
    );
    rig.assert_tree(&SPEC_TREE);
    assert_eq!(rig.dns(), [rig.address(M)]);
    rig.assert_slot("Slave_01", &rig.address(S1));
    assert!(rig.cfg_has("Slave_01", &rig.address(S1)));
    assert_eq!(metric(&rig, "opskit_mysql_switchover_half_done"), Some(0.0));
    let alerts = rig.lab.webhook().unwrap().received().unwrap();
    assert!(
        alerts
            .iter()
            .any(|a| a["runbook"] == "mysql" && a["step"] == "catch-up-Slave_01"),
        "{alerts:?}"
    );

    // A failure after the DNS move: the demoted master cannot log in to the new one. The run
    // stops, alerts, says where each server is; once fixed, the same command resumes it.
    let gtid = rig.sql(M, "SELECT @@gtid_binlog_pos").trim().to_string();
    rig.sql(S1, &format!("SELECT MASTER_GTID_WAIT('{gtid}', 20)"));
    let (code, out, err) = rig.switchover_with_fault(&fast, &[], "attach-Master", || {
        rig.sql(
            S1,
            "SET sql_log_bin = 0; RENAME USER 'repl'@'127.%' TO 'repl_off'@'127.%';",
        );
    });
    assert_eq!(code, Some(1), "{err}");
    let s = summary(&out);
    assert_eq!(s.outcome, OutcomeKind::Failed);
    let e = s.error.unwrap_or_default();
    for needle in [
        "state now:",
        "Master: read-only",
        "Slave_01: read-write",
        "DNS mysql-master.ipo.com A",
    ] {
        assert!(e.contains(needle), "the error lacks {needle:?}: {e}");
    }
    assert_eq!(metric(&rig, "opskit_mysql_switchover_half_done"), Some(1.0));
    assert_eq!(rig.dns(), [rig.address(S1)], "DNS already moved");
    let alerts = rig.lab.webhook().unwrap().received().unwrap();
    assert!(
        alerts.iter().any(|a| a["step"] == "attach-Master"
            && a["error"].as_str().unwrap_or("").contains("state now:")),
        "{alerts:?}"
    );
    // A dry run shows the unfinished plan it would resume, and changes nothing.
    let halfway = rig.snapshot();
    let out = rig
        .opskit(&fast)
        .args(["mysql", "switchover", "--dry-run"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("resuming"));
    assert_eq!(rig.snapshot(), halfway);
    // A different switchover is refused while this one is unfinished.
    let (code, _, err) = rig.switchover(&fast, &["--new-master", "Slave_02"]);
    assert_eq!(code, Some(3), "{err}");
    assert!(err.contains("did not finish"), "{err}");
    rig.sql(
        S1,
        "SET sql_log_bin = 0; RENAME USER 'repl_off'@'127.%' TO 'repl'@'127.%';",
    );
    let (code, out, err) = rig.switchover(&fast, &[]);
    assert_eq!(code, Some(0), "{err}");
    let s = summary(&out);
    assert_eq!(s.outcome, OutcomeKind::Succeeded);
    assert!(s.skipped.contains(&"dns".to_string()), "{:?}", s.skipped);
    rig.assert_tree(&MIRROR_TREE);
    assert_eq!(metric(&rig, "opskit_mysql_switchover_half_done"), Some(0.0));
}
