//! The lab against real servers: sshd/SFTP and MariaDB from Debian's packages.
//! Each test has its own temporary lab; the `Lab` guard stops it even when an assertion fails.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use opskit_core::proc;
use opskit_lab::daemon::{self, Launch, Liveness, ProcessIdentity, StopOutcome};
use opskit_lab::{Component, LabBuilder, LabState, UpAction};

fn lab_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("opskit-lab-test")
        .tempdir()
        .unwrap()
}

/// PIDs of processes whose command line mentions `dir` (what `ps` would show).
fn processes_mentioning(dir: &Path) -> Vec<String> {
    let out = Command::new("ps")
        .args(["-eo", "pid,stat,args"])
        .output()
        .unwrap();
    let needle = dir.to_string_lossy().to_string();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(&needle) && !l.contains(" Z"))
        .map(str::to_string)
        .collect()
}

fn assert_all_gone(dir: &Path, state: &LabState) {
    for s in &state.servers {
        assert_eq!(
            s.identity().liveness(),
            Liveness::Gone,
            "{} (pid {}) still runs",
            s.name,
            s.pid
        );
    }
    assert_eq!(processes_mentioning(dir), Vec::<String>::new());
    assert_eq!(
        opskit_lab::lab::mounts_under(dir).unwrap(),
        Vec::<String>::new()
    );
}

#[test]
fn sshd_and_mariadb_serve_then_go_down_without_a_trace() {
    let dir = lab_dir();
    let t = Instant::now();
    let lab = LabBuilder::new(dir.path())
        .with(Component::Sshd)
        .with(Component::Mariadb)
        .up()
        .unwrap();
    eprintln!(
        "lab up (sshd + mariadb, fresh) in {:.2}s",
        t.elapsed().as_secs_f64()
    );

    // SFTP through the ssh_config alias, host-key checking on.
    let sftp = lab.sftp().unwrap();
    assert_eq!(sftp.host_alias, "bak.ipo.com");
    let payload = dir.path().join("payload.txt");
    std::fs::write(&payload, "archive bytes\n").unwrap();
    sftp.sftp_batch(&format!("put {} upload.txt\n", payload.display()))
        .unwrap();
    assert_eq!(
        std::fs::read_to_string(sftp.backup_dir.join("upload.txt")).unwrap(),
        "archive bytes\n"
    );
    assert!(sftp.backup_dir.starts_with(dir.path()));
    // The login is SFTP only.
    let shell = Command::new("ssh")
        .arg("-F")
        .arg(&sftp.ssh_config)
        .args([&sftp.host_alias, "id"])
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&shell.stdout).contains("uid="));

    // SQL over the socket, and TCP on the URI's port.
    let db = lab.mariadb().unwrap();
    assert_eq!(db.uri(), format!("mysql://root@127.0.0.1:{}/", db.port));
    db.sql("CREATE TABLE test.t (id INT PRIMARY KEY, v VARCHAR(10)); INSERT INTO test.t VALUES (1,'a'),(2,'b');")
        .unwrap();
    assert_eq!(db.sql("SELECT COUNT(*) FROM test.t").unwrap().trim(), "2");
    let tcp = Command::new("mariadb")
        .arg("--no-defaults")
        .args(["-h", "127.0.0.1", "-u", "root", "-N", "-e", "SELECT @@port"])
        .arg(format!("-P{}", db.port))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&tcp.stdout).trim(),
        db.port.to_string()
    );

    // opskit.toml points the archive at the lab and is a valid config.
    let config = lab.config().unwrap();
    assert_eq!(config.archive.source_uri, db.uri());
    assert_eq!(
        config.archive.sftp.ssh_config.as_ref().unwrap().path(),
        sftp.ssh_config
    );
    assert_eq!(config.general.state_dir.path(), dir.path().join("state"));
    assert!(config.alert.webhook_url.is_none());

    // status: both alive and answering.
    let st = opskit_lab::status(dir.path()).unwrap();
    let names: Vec<_> = st.servers.iter().map(|s| s.record.name.as_str()).collect();
    assert_eq!(names, ["sshd", "mariadb"]);
    assert!(st.servers.iter().all(|s| s.alive && s.answering), "{st:?}");

    // Root's sshd runs in a private mount namespace: the host's /run is untouched.
    let sshd_pid = lab.state().server("sshd").unwrap().pid;
    let is_root = unsafe { libc::geteuid() } == 0;
    if is_root && !Path::new("/run/sshd").exists() {
        assert_ne!(
            std::fs::read_link(format!("/proc/{sshd_pid}/ns/mnt")).unwrap(),
            std::fs::read_link("/proc/self/ns/mnt").unwrap()
        );
    }

    let state = lab.state().clone();
    let t = Instant::now();
    let report = lab.down().unwrap();
    eprintln!("lab down in {:.2}s", t.elapsed().as_secs_f64());
    assert!(
        report
            .stopped
            .iter()
            .all(|s| s.outcome == StopOutcome::Stopped)
    );
    assert_all_gone(dir.path(), &state);
    // The data stays: the table is there after the next up.
    let lab = LabBuilder::new(dir.path())
        .with(Component::Mariadb)
        .up()
        .unwrap();
    assert_eq!(
        lab.mariadb()
            .unwrap()
            .sql("SELECT v FROM test.t WHERE id=2")
            .unwrap()
            .trim(),
        "b"
    );
}

#[test]
fn host_key_checking_stays_on() {
    let dir = lab_dir();
    let lab = LabBuilder::new(dir.path())
        .with(Component::Sshd)
        .up()
        .unwrap();
    let sftp = lab.sftp().unwrap();
    let config = std::fs::read_to_string(&sftp.ssh_config).unwrap();
    assert!(config.contains("StrictHostKeyChecking yes"), "{config}");
    assert!(config.contains("Host bak.ipo.com"), "{config}");

    // The same config with a known_hosts that lacks the server's key must fail.
    let empty = dir.path().join("empty_known_hosts");
    std::fs::write(&empty, "").unwrap();
    let other = dir.path().join("ssh_config_unknown_host");
    std::fs::write(
        &other,
        config.replace(
            &sftp.known_hosts.display().to_string(),
            &empty.display().to_string(),
        ),
    )
    .unwrap();
    let out = proc::run_with_input(
        Command::new("sftp")
            .arg("-F")
            .arg(&other)
            .args(["-b", "-", &sftp.host_alias]),
        Some(b"ls\n"),
        Duration::from_secs(20),
    )
    .and_then(proc::Output::checked)
    .unwrap_err();
    assert!(
        format!("{out:#}").contains("Host key verification failed"),
        "{out:#}"
    );
    // And with the lab's known_hosts it works.
    sftp.sftp_batch("ls\n").unwrap();
}

fn actions(r: &opskit_lab::UpReport) -> Vec<(Component, UpAction)> {
    r.components
        .iter()
        .map(|c| (c.component, c.action))
        .collect()
}

#[test]
fn up_twice_is_idempotent_and_restarts_only_the_dead() {
    let dir = lab_dir();
    let both = [Component::Sshd, Component::Mariadb];
    let lab = LabBuilder::new(dir.path())
        .with(Component::Sshd)
        .with(Component::Mariadb)
        .up()
        .unwrap();
    let first = lab.state().clone();

    let t = Instant::now();
    let again = opskit_lab::up(dir.path(), &both, None).unwrap();
    eprintln!(
        "lab up (already running) in {:.2}s",
        t.elapsed().as_secs_f64()
    );
    assert_eq!(
        actions(&again),
        [
            (Component::Sshd, UpAction::AlreadyRunning),
            (Component::Mariadb, UpAction::AlreadyRunning)
        ]
    );
    assert_eq!(again.state.servers, first.servers);

    // MariaDB dies behind the lab's back: the next up restarts it and only it.
    let db = first.server("mariadb").unwrap();
    daemon::stop(&db.identity(), Duration::from_secs(30)).unwrap();
    let st = opskit_lab::status(dir.path()).unwrap();
    let alive: Vec<_> = st
        .servers
        .iter()
        .map(|s| (s.record.name.as_str(), s.alive, s.answering))
        .collect();
    assert_eq!(alive, [("sshd", true, true), ("mariadb", false, false)]);
    let third = opskit_lab::up(dir.path(), &both, None).unwrap();
    assert_eq!(
        actions(&third),
        [
            (Component::Sshd, UpAction::AlreadyRunning),
            (Component::Mariadb, UpAction::Restarted)
        ]
    );
    assert_eq!(third.state.server("sshd"), first.server("sshd"));
    assert_ne!(third.state.server("mariadb").unwrap().pid, db.pid);
    // The restarted server keeps its data and (when free) its port.
    let view = LabState::load(dir.path()).unwrap();
    assert_eq!(view.server("mariadb").unwrap().port, db.port);
    drop(lab);
    assert_all_gone(dir.path(), &third.state);
}

#[test]
fn down_never_signals_a_process_that_is_not_the_labs() {
    let dir = lab_dir();
    // A bystander that looks like a lab server (its own session) but was not recorded.
    let bystander = daemon::spawn(
        Launch::new("bystander", "/bin/sleep", dir.path().join("bystander.log")).arg("60"),
    )
    .unwrap();
    let lab = LabBuilder::new(dir.path())
        .with(Component::Sshd)
        .up()
        .unwrap();
    // Pretend sshd died and its PID was reused by the bystander: lab.json names the
    // bystander's PID with sshd's start time.
    let mut state = LabState::load(dir.path()).unwrap();
    let sshd = state.servers[0].clone();
    state.servers[0].pid = bystander.identity.pid;
    // And a record naming this test process itself.
    let mut me = sshd.clone();
    me.name = "self".into();
    me.pid = std::process::id() as i32;
    state.servers.push(me);
    state.save().unwrap();

    let report = opskit_lab::down(dir.path(), false).unwrap();
    assert!(
        report
            .stopped
            .iter()
            .all(|s| s.outcome == StopOutcome::NotOurs),
        "{report:?}"
    );
    assert!(bystander.identity.is_alive(), "the bystander was signalled");
    // Clean up for real: the real sshd and the bystander, by identity.
    daemon::stop(&sshd.identity(), Duration::from_secs(10)).unwrap();
    assert_eq!(
        daemon::stop(&bystander.identity, Duration::from_secs(10)).unwrap(),
        StopOutcome::Stopped
    );
    drop(lab);
    assert_eq!(
        ProcessIdentity::of(sshd.pid)
            .map(|_| sshd.identity().liveness())
            .unwrap_or(Liveness::Gone),
        Liveness::Gone
    );
}

#[test]
fn a_failing_server_reports_its_log() {
    let dir = lab_dir();
    // A broken my.cnf cannot be fixed by up (it is regenerated), so break the datadir instead:
    // a file where the datadir should be makes install-db fail with a clear error.
    std::fs::create_dir_all(dir.path().join("mariadb")).unwrap();
    std::fs::write(dir.path().join("mariadb/.installed"), "").unwrap();
    std::fs::write(dir.path().join("mariadb/data"), "not a directory").unwrap();
    let err = LabBuilder::new(dir.path())
        .with(Component::Mariadb)
        .up()
        .unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("lab component mariadb"), "{msg}");
    assert!(msg.contains("mariadbd.log"), "{msg}");
    assert!(msg.contains("last lines"), "{msg}");
    assert!(LabState::load(dir.path()).unwrap().servers.is_empty());
    assert_eq!(processes_mentioning(dir.path()), Vec::<String>::new());
}

#[test]
fn down_stops_what_an_interrupted_up_left_behind() {
    let dir = lab_dir();
    // What `up` leaves when it is killed after launching a server but before lab.json.
    let orphan = daemon::spawn(
        Launch::new("mariadb", "/bin/sleep", dir.path().join("orphan.log")).arg("60"),
    )
    .unwrap();
    opskit_lab::state::note_spawned(dir.path(), "mariadb", orphan.identity).unwrap();
    let report = opskit_lab::down(dir.path(), false).unwrap();
    assert_eq!(report.stopped.len(), 1, "{report:?}");
    assert_eq!(orphan.identity.liveness(), Liveness::Gone);
    // The next up does the same before it starts anything.
    let orphan =
        daemon::spawn(Launch::new("sshd", "/bin/sleep", dir.path().join("orphan.log")).arg("60"))
            .unwrap();
    opskit_lab::state::note_spawned(dir.path(), "sshd", orphan.identity).unwrap();
    let lab = LabBuilder::new(dir.path())
        .with(Component::Sshd)
        .up()
        .unwrap();
    assert_eq!(orphan.identity.liveness(), Liveness::Gone);
    lab.sftp().unwrap().sftp_batch("ls\n").unwrap();
}

/// PIDs whose parent is `pid` (from /proc).
fn children_of(pid: i32) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat")).is_ok_and(|s| {
                let f: Vec<&str> = s.rsplit_once(')').unwrap().1.split_whitespace().collect();
                f[1] == pid.to_string() && f[0] != "Z"
            })
        })
        .collect()
}

#[test]
fn down_ends_open_sftp_sessions_too() {
    let dir = lab_dir();
    let lab = LabBuilder::new(dir.path())
        .with(Component::Sshd)
        .up()
        .unwrap();
    let sftp = lab.sftp().unwrap();
    let sshd = lab.state().server("sshd").unwrap().pid;
    // An interactive session that stays open (its stdin is never closed).
    let mut client = sftp
        .sftp_command()
        .arg(&sftp.host_alias)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let sessions = loop {
        let c = children_of(sshd);
        if !c.is_empty() || Instant::now() > deadline {
            break c;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(!sessions.is_empty(), "no sshd session process appeared");
    lab.down().unwrap();
    for p in sessions {
        let alive = std::fs::read_to_string(format!("/proc/{p}/stat"))
            .is_ok_and(|s| !s.rsplit_once(')').unwrap().1.trim_start().starts_with('Z'));
        assert!(!alive, "session process {p} survived down");
    }
    let _ = client.kill();
    let _ = client.wait();
}

#[test]
fn mariadb_instances_each_have_their_own_address_server_id_and_settings() {
    use opskit_lab::components::LabContext;
    use opskit_lab::{MariadbInstance, MariadbServer};
    let dir = lab_dir();
    let ctx = LabContext::new(dir.path(), None).unwrap();
    // Two instances on one port, told apart by their loopback addresses (as the switchover
    // topology runs five), with their own server ids and my.cnf extras.
    let port = opskit_lab::components::free_port().unwrap();
    let mut records = Vec::new();
    for (i, addr) in ["127.0.0.1", "127.0.0.21"].iter().enumerate() {
        let instance = MariadbInstance {
            port: Some(port),
            address: addr.parse().unwrap(),
            server_id: 10 + i as u32,
            extra_cnf: "log-bin=binlog\nlog-slave-updates=ON\n".into(),
            ..MariadbInstance::new(&format!("db{i}"), &format!("mysql/db{i}"))
        };
        records.push(instance.start(&ctx, "mysql", None).unwrap());
    }
    let result = std::panic::catch_unwind(|| {
        for (i, r) in records.iter().enumerate() {
            let server = MariadbServer::from_record(r).unwrap();
            assert_eq!(server.port, port);
            // Through TCP on its own address, not the socket: the address is really its own.
            let out = proc::run_with_input(
                Command::new("mariadb")
                    .arg("--no-defaults")
                    .args(["-h", &server.address, "-P", &port.to_string(), "-u", "root"])
                    .args(["--batch", "--skip-column-names"]),
                Some(b"SELECT @@server_id, @@log_bin, @@bind_address"),
                Duration::from_secs(20),
            )
            .unwrap()
            .checked()
            .unwrap();
            assert_eq!(
                out.stdout_text().trim(),
                format!("{}\t1\t{}", 10 + i, server.address)
            );
        }
    });
    for r in records.iter().rev() {
        daemon::stop(&r.identity(), opskit_lab::components::mariadb::STOP_GRACE).unwrap();
    }
    result.unwrap();
}
