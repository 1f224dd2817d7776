//! The ranking rules on fixtures: real log lines (the notes' lab, HAProxy 2.6.12 and MariaDB
//! 10.11) and small configs, no servers. Each cause must come first on its own evidence, and
//! a healthy setup must give nothing above info.

use std::collections::BTreeMap;

use opskit_doctor::errorlog::ErrorLogStats;
use opskit_doctor::haproxy_cfg::HaproxyConfig;
use opskit_doctor::live::ReplicaFacts;
use opskit_doctor::tcplog::TcplogStats;
use opskit_doctor::{Cause, DoctorReport, Evidence, Level};

fn cfg(client: &str, server: &str, extra: &str) -> HaproxyConfig {
    HaproxyConfig::parse(&format!(
        "global\n    {extra}\ndefaults\n    mode tcp\n    timeout client {client}\n    timeout server {server}\n\
         frontend fe_mysql_ro\n    bind :3307\n    default_backend be_slaves\n\
         backend be_slaves\n    server Slave_01 10.0.0.12:3306 check\n"
    ))
}

fn replica(wait: u64, uptime: u64, kills: u64) -> ReplicaFacts {
    ReplicaFacts {
        dsn: "mysql://opskit@10.0.0.12:3306".into(),
        server: "slave01:3306".into(),
        variables: BTreeMap::from([
            ("wait_timeout".into(), wait),
            ("max_allowed_packet".into(), 16 << 20),
        ]),
        status: BTreeMap::from([("Uptime".into(), uptime), ("Com_kill".into(), kills)]),
    }
}

fn evidence(c: HaproxyConfig, log: &str, errlog: &str, replicas: Vec<ReplicaFacts>) -> Evidence {
    let mut logs = TcplogStats::default();
    logs.add_reader(log.as_bytes()).unwrap();
    let mut el = ErrorLogStats::default();
    for l in errlog.lines() {
        el.add_line(l);
    }
    Evidence {
        routes: c.routes(),
        haproxy: Some(c),
        logs: Some(logs),
        error_logs: vec![el],
        replicas,
        ..Evidence::default()
    }
}

fn top(e: Evidence) -> Cause {
    let r = DoctorReport::new(e);
    eprintln!("{}", r.render_text());
    r.top().expect("a finding above info").cause
}

const CD_5S: &str = "127.0.0.1:56586 [23/Nov/2026:18:40:14.201] fe_mysql_ro be_slaves/Slave_01 1/0/5002 186 cD 1/1/0/0/0 0/0\n";
const SD_LATE: &str = "127.0.0.1:56590 [23/Nov/2026:18:41:14.201] fe_mysql_ro be_slaves/Slave_01 1/0/7004 186 sD 1/1/0/0/0 0/0\n";
const SD_WAIT: &str = "127.0.0.1:56592 [23/Nov/2026:18:42:14.201] fe_mysql_ro be_slaves/Slave_01 1/0/3008 186 SD 1/1/0/0/0 0/0\n";
const NORMAL: &str = "127.0.0.1:56594 [23/Nov/2026:18:43:14.201] fe_mysql_ro be_slaves/Slave_01 1/0/120 186 -- 1/1/0/0/0 0/0\n";
const WAIT_ABORT: &str = "2026-11-23 18:42:17 5 [Warning] Aborted connection 5 to db: 'unconnected' user: 'app' host: '127.0.0.1' (Got timeout reading communication packets)\n";

#[test]
fn haproxy_timeouts_are_told_apart_by_code_and_value() {
    let healthy = vec![replica(28800, 86400, 0)];
    assert_eq!(
        top(evidence(cfg("5s", "1m", ""), CD_5S, "", healthy.clone())),
        Cause::HaproxyClientTimeout
    );
    // sD is written when the client comes back: 7 s after a 5 s timeout server.
    assert_eq!(
        top(evidence(cfg("1m", "5s", ""), SD_LATE, "", healthy.clone())),
        Cause::HaproxyServerTimeout
    );
    let tunnel = HaproxyConfig::parse(
        "defaults\n mode tcp\n timeout client 1m\n timeout server 1m\n timeout tunnel 5s\n\
         frontend fe_mysql_ro\n bind :1\n default_backend be_slaves\nbackend be_slaves\n server s 1.2.3.4:3306\n",
    );
    assert_eq!(
        top(evidence(tunnel, CD_5S, "", healthy.clone())),
        Cause::HaproxyTunnelTimeout
    );
    // No log: an application idle above the limit is a warning on the config alone.
    let mut e = evidence(cfg("50s", "50s", ""), "", "", healthy);
    e.app_idle_secs = Some(120);
    let r = DoctorReport::new(e);
    assert_eq!(r.findings[0].cause, Cause::HaproxyClientTimeout);
    assert_eq!(r.findings[0].level, Level::Warning);
}

#[test]
fn server_side_causes_come_first_on_their_reasons() {
    assert_eq!(
        top(evidence(
            cfg("1m", "1m", ""),
            SD_WAIT,
            WAIT_ABORT,
            vec![replica(3, 86400, 0)]
        )),
        Cause::WaitTimeout
    );
    let packet = "2026-11-23 18:41:02 7 [Warning] Aborted connection 7 to db: 'lab' user: 'app' host: '127.0.0.1' (Got a packet bigger than 'max_allowed_packet' bytes)\n";
    assert_eq!(
        top(evidence(
            cfg("1m", "1m", ""),
            SD_WAIT,
            packet,
            vec![replica(28800, 86400, 0)]
        )),
        Cause::MaxAllowedPacket
    );
    assert_eq!(
        top(evidence(
            cfg("1m", "1m", ""),
            NORMAL,
            "",
            vec![replica(28800, 86400, 2)]
        )),
        Cause::Kill
    );
    let restart = "2026-11-23 18:43:00 0 [Note] /usr/sbin/mariadbd (initiated by: root[root] @ localhost []): Normal shutdown\n\
                   2026-11-23 18:43:01 0 [Note] /usr/sbin/mariadbd: Shutdown complete\n\
                   2026-11-23 18:43:03 0 [Note] /usr/sbin/mariadbd: ready for connections.\n";
    let down = "[WARNING]  (4321) : Server be_slaves/Slave_01 is DOWN, reason: Layer4 connection problem, info: \"Connection refused\", check duration: 0ms. 0 active and 0 backup servers left. 1 sessions active, 0 requeued, 0 remaining in queue.\n";
    assert_eq!(
        top(evidence(
            cfg("1m", "1m", ""),
            &format!("{down}{SD_WAIT}"),
            restart,
            vec![replica(28800, 5, 0)]
        )),
        Cause::ReplicaRestart
    );
}

#[test]
fn haproxy_kills_are_health_checks_or_hard_stops() {
    let healthy = vec![replica(28800, 86400, 0)];
    let down = "[WARNING]  (4321) : Server be_slaves/Slave_01 is DOWN, reason: Layer7 wrong status, code: 1045, info: \"Access denied\", check duration: 1ms. 0 active and 0 backup servers left. 1 sessions active, 0 requeued, 0 remaining in queue.\n\
                127.0.0.1:56600 [23/Nov/2026:18:44:00.000] fe_mysql_ro be_slaves/Slave_01 0/0/2100 90 D- 1/1/0/0/0 0/0\n";
    assert_eq!(
        top(evidence(cfg("1m", "1m", ""), down, "", healthy.clone())),
        Cause::HealthCheckDown
    );
    let hard = "[WARNING]  (4300) : Reexecuting Master process\n\
                [WARNING]  (4321) : soft-stop running for too long, performing a hard-stop.\n\
                127.0.0.1:56610 [23/Nov/2026:18:45:00.000] fe_mysql_ro be_slaves/Slave_01 0/0/1500 90 K- 1/1/0/0/0 0/0\n";
    assert_eq!(
        top(evidence(
            cfg("1m", "1m", "hard-stop-after 1s"),
            hard,
            "",
            healthy
        )),
        Cause::HardStopOnReload
    );
}

#[test]
fn a_healthy_setup_reports_nothing_above_info() {
    let mut e = evidence(
        cfg("8h1s", "8h1s", ""),
        &NORMAL.repeat(50),
        "2026-11-23 18:40:00 0 [Note] /usr/sbin/mariadbd: ready for connections.\n",
        vec![replica(28800, 86400, 0)],
    );
    e.app_idle_secs = Some(60);
    let r = DoctorReport::new(e);
    assert!(r.worst <= Level::Info, "{:?}", r.findings);
    assert!(r.top().is_none());
    assert!(r.render_text().starts_with("Nothing above info"));
}
