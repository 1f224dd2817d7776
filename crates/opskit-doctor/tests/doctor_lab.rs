//! The doctor on the lab's real HAProxy and MariaDB: every cause of "gone away" the notes show
//! as reproducible is injected, reproduced by a real PHP PDO client through HAProxy (it must
//! print `General error: 2006`), and the doctor must rank that cause first; a healthy setup
//! gives nothing above info; probe-idle finds HAProxy's cutoff within 10 %.
//!
//! One lab, one test function: the faults change the one HAProxy and must run one after the
//! other. Before each fault the HAProxy log and the replicas' error logs are emptied, so each
//! diagnosis reads the logs of its own incident, as an operator would cut them.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use opskit_core::secret::read_secret_file;
use opskit_doctor::haproxy_cfg::{HaproxyConfig, Timer};
use opskit_doctor::live::Dsn;
use opskit_doctor::probe::{ProbeOptions, probe_idle};
use opskit_doctor::{Cause, DoctorReport, Inputs, Level};
use opskit_lab::pdo::{PdoAction, PdoOutcome, run_pdo};
use opskit_lab::{Component, HaproxyLab, HaproxyTimers, Lab, LabBuilder, MysqlLab};
use opskit_mysql::session::Credentials;

const REPLICAS: [&str; 4] = ["Slave_01", "Slave_02", "Slave_03", "Slave_04"];

struct Rig {
    lab: Lab,
    mysql: MysqlLab,
    haproxy: HaproxyLab,
    config: opskit_core::config::Config,
    _dir: tempfile::TempDir,
}

impl Rig {
    fn new() -> Rig {
        let dir = tempfile::Builder::new().prefix("odoc").tempdir().unwrap();
        let lab = LabBuilder::new(dir.path().join("lab"))
            .with(Component::Mysql)
            .with(Component::Haproxy)
            .up()
            .expect("lab up");
        Rig {
            mysql: lab.view().unwrap(),
            haproxy: lab.view().unwrap(),
            config: lab.config().unwrap(),
            lab,
            _dir: dir,
        }
    }

    fn inputs(&self, app_idle: Option<u64>) -> Inputs {
        let m = &self.config.mysql;
        let creds = Credentials {
            user: m.admin_user.to_string(),
            password: read_secret_file(m.admin_password_file.path(), "admin").unwrap(),
        };
        Inputs {
            haproxy_config: Some(self.haproxy.config.clone()),
            haproxy_socket: Some(self.haproxy.admin_socket.clone()),
            haproxy_logs: vec![self.haproxy.log_file.clone()],
            replicas: REPLICAS
                .iter()
                .map(|n| {
                    let s = self.mysql.get(n).unwrap();
                    format!("mysql://opskit@{}:{}", s.address, s.port)
                        .parse()
                        .unwrap()
                })
                .collect(),
            credentials: Some(creds),
            mysql_error_logs: self.error_logs(),
            app_idle_secs: app_idle,
            timeout: Duration::from_secs(10),
        }
    }

    fn error_logs(&self) -> Vec<PathBuf> {
        self.config
            .mysql
            .doctor
            .mysql_error_logs
            .iter()
            .map(|p| p.path().to_path_buf())
            .collect()
    }

    /// Empties the HAProxy log and the error logs (both are opened for append).
    fn cut_logs(&self) {
        for f in self.error_logs().iter().chain([&self.haproxy.log_file]) {
            std::fs::write(f, "").unwrap();
        }
    }

    fn pdo(&self, action: PdoAction) -> PdoOutcome {
        run_pdo(
            self.lab.dir(),
            &self.haproxy.address,
            self.haproxy.port,
            "app",
            &self.mysql.app_password_file,
            action,
        )
        .unwrap()
    }

    /// The PDO client idles `secs` while `fault` runs `after` into the idle.
    fn pdo_with(&self, secs: f64, after: f64, fault: impl FnOnce()) -> PdoOutcome {
        std::thread::scope(|s| {
            let h = s.spawn(|| self.pdo(PdoAction::Idle(Duration::from_secs_f64(secs))));
            std::thread::sleep(Duration::from_secs_f64(after));
            fault();
            h.join().unwrap()
        })
    }

    fn set_global(&self, assignment: &str) {
        self.mysql.set_global_on_replicas(assignment).unwrap();
    }

    fn wait_pool_up(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if self.haproxy.pool().is_ok_and(|p| p.iter().all(|m| m.up)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("the read pool did not come back: {:?}", self.haproxy.pool());
    }

    fn diagnose(&self, app_idle: Option<u64>) -> DoctorReport {
        let r = opskit_doctor::diagnose(&self.inputs(app_idle));
        eprintln!("{}", r.render_text());
        r
    }
}

fn assert_gone_away(what: &str, o: &PdoOutcome) {
    eprintln!("{what}: PDO said {o:?}");
    assert!(
        !o.ok && o.gone_away(),
        "{what}: PDO did not get 2006: {o:?}"
    );
    assert_eq!(
        o.phase, "after",
        "{what}: the established handle must fail: {o:?}"
    );
    assert!(
        o.error.as_deref().unwrap().contains("General error: 2006"),
        "{what}: {o:?}"
    );
}

fn assert_first(what: &str, r: &DoctorReport, cause: Cause) {
    let top = r
        .top()
        .unwrap_or_else(|| panic!("{what}: nothing above info"));
    assert_eq!(top.cause, cause, "{what}: ranked first: {top:?}");
}

#[test]
fn each_cause_is_reproduced_with_pdo_and_ranked_first() {
    let rig = Rig::new();
    let hp = &rig.haproxy;

    // Healthy: a short idle passes, nothing above info.
    rig.cut_logs();
    let o = rig.pdo(PdoAction::Idle(Duration::from_secs(1)));
    assert!(o.ok, "{o:?}");
    let r = rig.diagnose(Some(1));
    assert!(r.worst <= Level::Info, "healthy lab: {:?}", r.findings);
    assert!(
        r.evidence.not_looked_at.is_empty(),
        "{:?}",
        r.evidence.not_looked_at
    );

    // probe-idle finds the cutoff within 10 % and names the timer: timeout client, timeout
    // server, then MySQL's wait_timeout.
    let timers = |client: &str, server: &str, tunnel: Option<&str>| HaproxyTimers {
        client: client.into(),
        server: server.into(),
        tunnel: tunnel.map(str::to_string),
        ..HaproxyTimers::default()
    };
    let probe = |what: &str, timer: Timer| {
        let opts = ProbeOptions {
            dsn: rig.config.mysql.doctor.probe_dsn.clone().unwrap(),
            credentials: rig.inputs(None).credentials.unwrap(),
            max: Duration::from_secs(8),
            timeout: Duration::from_secs(10),
            routes: HaproxyConfig::parse(&std::fs::read_to_string(&hp.config).unwrap()).routes(),
            haproxy_logs: vec![hp.log_file.clone()],
            mysql_error_logs: rig.error_logs(),
        };
        let p = probe_idle(&opts).unwrap();
        eprintln!("{what}: {}", p.render_text());
        let cut = p.cutoff_ms.expect("a cutoff") as f64;
        assert!(
            (cut - 3000.0).abs() <= 300.0,
            "{what}: cutoff {cut} ms, not 3 s ± 10 %"
        );
        assert_eq!(p.timer, Some(timer), "{what}: {:?}", p.why);
        assert!(p.elapsed_ms < 20_000, "{what}: took {} ms", p.elapsed_ms);
    };
    hp.set_timers(&timers("3s", "1m", None)).unwrap();
    probe("probe timeout client", Timer::Client);
    hp.set_timers(&timers("1m", "3s", None)).unwrap();
    probe("probe timeout server", Timer::Server);
    hp.set_timers(&HaproxyTimers::default()).unwrap();
    rig.set_global("wait_timeout=3");
    probe("probe wait_timeout", Timer::WaitTimeout);
    rig.set_global("wait_timeout=28800");

    // HAProxy timeouts: client, server, tunnel.
    for (what, t, cause) in [
        (
            "timeout client",
            timers("2s", "1m", None),
            Cause::HaproxyClientTimeout,
        ),
        (
            "timeout server",
            timers("1m", "2s", None),
            Cause::HaproxyServerTimeout,
        ),
        (
            "timeout tunnel",
            timers("1m", "1m", Some("2s")),
            Cause::HaproxyTunnelTimeout,
        ),
    ] {
        hp.set_timers(&t).unwrap();
        rig.cut_logs();
        assert_gone_away(what, &rig.pdo(PdoAction::Idle(Duration::from_secs(3))));
        assert_first(what, &rig.diagnose(Some(3)), cause);
    }
    hp.set_timers(&HaproxyTimers::default()).unwrap();

    // wait_timeout.
    rig.set_global("wait_timeout=2");
    rig.cut_logs();
    let o = rig.pdo(PdoAction::Idle(Duration::from_millis(3500)));
    rig.set_global("wait_timeout=28800");
    assert_gone_away("wait_timeout", &o);
    assert_first("wait_timeout", &rig.diagnose(None), Cause::WaitTimeout);

    // max_allowed_packet.
    rig.set_global("max_allowed_packet=16384");
    rig.cut_logs();
    let o = rig.pdo(PdoAction::Big(65536));
    rig.set_global("max_allowed_packet=16777216");
    assert_gone_away("max_allowed_packet", &o);
    assert_first(
        "max_allowed_packet",
        &rig.diagnose(None),
        Cause::MaxAllowedPacket,
    );

    // Health check DOWN with on-marked-down shutdown-sessions: the check user disappears.
    hp.set_timers(&HaproxyTimers {
        shutdown_sessions: true,
        ..HaproxyTimers::default()
    })
    .unwrap();
    rig.cut_logs();
    let o = rig.pdo_with(5.0, 0.5, || {
        rig.mysql
            .sql("Master", "DROP USER 'haproxy_check'@'127.%'")
            .unwrap();
    });
    rig.mysql
        .sql("Master", "CREATE USER 'haproxy_check'@'127.%'")
        .unwrap();
    rig.wait_pool_up();
    assert_gone_away("health check DOWN", &o);
    assert_first(
        "health check DOWN",
        &rig.diagnose(None),
        Cause::HealthCheckDown,
    );

    // Hard-stop on reload: the session outlives hard-stop-after on the old worker.
    hp.set_timers(&HaproxyTimers {
        hard_stop_after: Some("1s".into()),
        ..HaproxyTimers::default()
    })
    .unwrap();
    rig.cut_logs();
    let o = rig.pdo_with(4.0, 0.5, || hp.reload().unwrap());
    assert_gone_away("hard-stop", &o);
    assert_first("hard-stop", &rig.diagnose(None), Cause::HardStopOnReload);
    hp.set_timers(&HaproxyTimers::default()).unwrap();

    // KILL.
    rig.cut_logs();
    let o = rig.pdo_with(3.0, 0.7, || {
        for n in REPLICAS {
            let ids = rig
                .mysql
                .sql(
                    n,
                    "SELECT id FROM information_schema.processlist WHERE user = 'app'",
                )
                .unwrap();
            for id in ids.split_whitespace() {
                rig.mysql.sql(n, &format!("KILL {id}")).unwrap();
            }
        }
    });
    assert_gone_away("KILL", &o);
    assert_first("KILL", &rig.diagnose(None), Cause::Kill);

    // Replica restart (last: it resets every counter).
    rig.cut_logs();
    let o = rig.pdo_with(3.0, 0.5, || {
        for n in REPLICAS {
            rig.mysql.sql(n, "SHUTDOWN").unwrap();
        }
    });
    assert_gone_away("restart", &o);
    opskit_lab::up(rig.lab.dir(), &[Component::Mysql], None).unwrap();
    rig.wait_pool_up();
    assert_first("restart", &rig.diagnose(None), Cause::ReplicaRestart);
}

#[test]
fn a_missing_input_narrows_the_report_and_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let r = opskit_doctor::diagnose(&Inputs {
        haproxy_config: Some(dir.path().join("haproxy.cfg")),
        haproxy_socket: Some(dir.path().join("admin.sock")),
        haproxy_logs: vec![dir.path().join("haproxy.log")],
        replicas: vec!["mysql://opskit@127.0.0.1:1".parse::<Dsn>().unwrap()],
        credentials: None,
        mysql_error_logs: vec![],
        app_idle_secs: None,
        timeout: Duration::from_secs(2),
    });
    let skipped = r.evidence.not_looked_at.join("\n");
    for want in [
        "haproxy.cfg",
        "runtime API",
        "HAProxy log",
        "replicas",
        "MySQL error logs",
        "--app-idle",
    ] {
        assert!(skipped.contains(want), "{want} not named:\n{skipped}");
    }
    assert!(r.findings.is_empty());
    assert!(r.render_text().contains("Not looked at:"));
}
