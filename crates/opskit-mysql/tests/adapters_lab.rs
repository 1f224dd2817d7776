//! The adapters against the lab's real servers: the RFC 2136 + TSIG client against BIND
//! (checked with `dig`), the HAProxy runtime client against HAProxy's admin socket (checked
//! through the lab's own socket reader), and topology discovery against the five MariaDB
//! (replica stopped, config differences, an errant transaction).

use std::path::Path;
use std::time::Duration;

use opskit_core::secret::{Secret, read_secret_file};
use opskit_lab::{BindLab, Component, HaproxyLab, LabBuilder, MysqlLab};
use opskit_mysql::dns::{DnsServer, TsigKey, UpdateOutcome};
use opskit_mysql::haproxy::{AdminState, Runtime, replace_config};
use opskit_mysql::session::Credentials;
use opskit_mysql::topology::{self, Cluster};

#[test]
fn dns_haproxy_and_topology_adapters_against_the_lab() {
    let dir = tempfile::Builder::new().prefix("oma").tempdir().unwrap();
    let lab = LabBuilder::new(dir.path().join("lab"))
        .with(Component::Mysql)
        .with(Component::Haproxy)
        .with(Component::Bind)
        .up()
        .unwrap();
    let config = lab.config().unwrap();
    let mysql: MysqlLab = lab.view().unwrap();
    let bind: BindLab = lab.view().unwrap();
    let haproxy: HaproxyLab = lab.view().unwrap();
    let addr = |n: &str| mysql.get(n).unwrap().address;
    let (m, s1, s2) = (addr("Master"), addr("Slave_01"), addr("Slave_02"));
    let name = "mysql-master.ipo.com";

    // DNS: prerequisite-only update, compare-and-swap, a stale prerequisite, a wrong key.
    let dns = DnsServer::new(&config.mysql.dns.server, "ipo.com", Duration::from_secs(2)).unwrap();
    let key = TsigKey::read(config.mysql.dns.tsig_key_file.path()).unwrap();
    assert_eq!(dns.query_a(name).unwrap(), [m]);
    assert_eq!(
        dns.check_prerequisite(&key, name, m).unwrap(),
        UpdateOutcome::Applied
    );
    assert_eq!(
        dns.check_prerequisite(&key, name, s1).unwrap(),
        UpdateOutcome::PrerequisiteFailed
    );
    assert_eq!(
        bind.dig(name, "A").unwrap(),
        [m.to_string()],
        "a prerequisite changed it"
    );
    assert_eq!(
        dns.compare_and_swap(&key, name, m, s1, 5).unwrap(),
        UpdateOutcome::Applied
    );
    assert_eq!(bind.dig(name, "A").unwrap(), [s1.to_string()]);
    assert_eq!(
        dns.compare_and_swap(&key, name, m, s2, 5).unwrap(),
        UpdateOutcome::PrerequisiteFailed,
        "the prerequisite is the old address"
    );
    assert_eq!(bind.dig(name, "A").unwrap(), [s1.to_string()]);
    let e = dns
        .compare_and_swap(&key, "mysql-slave.ipo.com", m, s2, 5)
        .unwrap_err();
    assert!(e.to_string().contains("REFUSED"), "update-policy: {e}");
    assert_eq!(
        dns.compare_and_swap(&key, name, s1, m, 5).unwrap(),
        UpdateOutcome::Applied
    );
    let wrong = dir.path().join("wrong.key");
    let out = std::process::Command::new("tsig-keygen")
        .args(["-a", "hmac-sha256", "mysql-master-update"])
        .output()
        .unwrap();
    std::fs::write(&wrong, out.stdout).unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&wrong, std::fs::Permissions::from_mode(0o600)).unwrap();
    let e = dns
        .check_prerequisite(&TsigKey::read(&wrong).unwrap(), name, m)
        .unwrap_err();
    assert!(e.to_string().contains("rejected the TSIG key"), "{e}");
    std::fs::set_permissions(&wrong, std::fs::Permissions::from_mode(0o644)).unwrap();
    let e = TsigKey::read(&wrong).unwrap_err();
    assert_eq!(opskit_core::ExitStatus::of(&e).code(), 2, "{e:#}");
    assert_eq!(bind.dig(name, "A").unwrap(), [m.to_string()]);

    // HAProxy runtime API.
    let rt = Runtime::new(&haproxy.admin_socket, Duration::from_secs(2));
    assert!(rt.show_info().unwrap().contains_key("Pid"));
    let stat = rt.show_stat().unwrap();
    assert!(
        stat.iter()
            .any(|r| r["pxname"] == "mysql_slave" && r["svname"] == "Slave_04")
    );
    let slots = rt.servers_state("mysql_slave").unwrap();
    assert_eq!(slots.len(), 4);
    assert_eq!(slots[1].endpoint(), format!("{s2}:{}", mysql.port));
    rt.set_state("mysql_slave", "Slave_02", AdminState::Maint)
        .unwrap();
    let seen = haproxy.pool().unwrap();
    assert!(
        seen.iter().any(|p| p.name == "Slave_02" && p.maintenance),
        "{seen:?}"
    );
    assert!(rt.servers_state("mysql_slave").unwrap()[1].in_maintenance());
    rt.set_state("mysql_slave", "Slave_02", AdminState::Ready)
        .unwrap();
    assert!(!haproxy.pool().unwrap()[1].maintenance);
    assert!(
        rt.set_state("mysql_slave", "Slave_09", AdminState::Ready)
            .is_err()
    );
    assert!(rt.command("bogus command").is_err());
    let missing = Runtime::new(&dir.path().join("none.sock"), Duration::from_secs(1));
    assert!(missing.show_info().is_err());
    let cfg_before = std::fs::read_to_string(&haproxy.config).unwrap();
    let broken = cfg_before.replace("balance roundrobin", "balance nonsense");
    assert!(replace_config(Path::new("/usr/sbin/haproxy"), &haproxy.config, &broken).is_err());
    assert_eq!(
        std::fs::read_to_string(&haproxy.config).unwrap(),
        cfg_before
    );

    // Topology: the tree, a stopped replica, differences from the config, an errant write.
    let admin = Credentials {
        user: config.mysql.admin_user.to_string(),
        password: read_secret_file(config.mysql.admin_password_file.path(), "k").unwrap(),
    };
    let mut c = Cluster::new(
        topology::nodes(&config.mysql),
        admin.clone(),
        Duration::from_secs(5),
    );
    let r = topology::discover(&mut c, &config.mysql);
    assert_eq!(r.roots, ["Master"]);
    assert!(r.differences.is_empty(), "{:?}", r.differences);
    assert_eq!(
        r.get("Slave_04").unwrap().source.as_deref(),
        Some("Slave_02")
    );
    assert!(r.servers.iter().all(|s| s.errant.is_empty()));
    let tree = r.render_tree();
    assert!(tree.contains("└─ Slave_04"), "{tree}");

    mysql.sql("Slave_04", "STOP SLAVE SQL_THREAD").unwrap();
    let mut cfg = config.mysql.clone();
    cfg.servers[3].replicates_from = Some("Slave_02".parse().unwrap());
    let r = topology::discover(&mut c, &cfg);
    let s4 = r.get("Slave_04").unwrap().replication.clone().unwrap();
    assert_eq!(
        (s4.io_running.as_str(), s4.sql_running.as_str()),
        ("Yes", "No")
    );
    assert_eq!(s4.lag_secs, None);
    assert_eq!(
        r.differences,
        ["Slave_03 replicates from Slave_01; the config says Slave_02"]
    );
    let text = opskit_core::metrics::render_gauges(&r.gauges());
    assert!(
        text.contains(
            "opskit_mysql_replication_running{runbook=\"mysql_topology\",server=\"Slave_04\",source=\"Slave_02\"} 0"
        ),
        "{text}"
    );
    assert!(
        text.contains("opskit_mysql_replica_lag_seconds{runbook=\"mysql_topology\",server=\"Slave_01\",source=\"Master\"} 0"),
        "{text}"
    );
    mysql.sql("Slave_04", "START SLAVE SQL_THREAD").unwrap();

    // A privileged write on a replica (read_only does not bind root) is errant.
    mysql
        .sql("Slave_03", "CREATE DATABASE errant_here")
        .unwrap();
    let r = topology::discover(&mut c, &config.mysql);
    let s3 = r.get("Slave_03").unwrap();
    assert_eq!(s3.errant.len(), 1, "{s3:?}");
    assert!(s3.errant[0].starts_with("0-4-"), "{:?}", s3.errant);
    assert!(r.render_tree().contains("ERRANT 0-4-"));

    // A wrong admin password: the server is reported as not answering, with the reason.
    let bad = Credentials {
        user: admin.user.clone(),
        password: Secret::new("wrong"),
    };
    let mut c = Cluster::new(topology::nodes(&config.mysql), bad, Duration::from_secs(5));
    let r = topology::discover(&mut c, &config.mysql);
    assert!(r.servers.iter().all(|s| !s.reachable()));
    assert!(
        r.get("Master")
            .unwrap()
            .error
            .as_deref()
            .unwrap()
            .contains("1045")
    );
    lab.down().unwrap();
}
