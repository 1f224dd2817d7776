//! The Bash cron wrapper `deploy/cron/user_logs_archive.sh`, run for real: a fake `opskit` on
//! PATH (failing, killed by SIGKILL, slow, succeeding, alerting itself) and a real local HTTP
//! listener as the webhook that records headers too. Checks that each failure gives exactly
//! one alert (the wrapper's only when opskit did not send its own), in opskit's alert schema
//! with an Idempotency-Key, that success gives none, that runs never overlap (flock), the log
//! file per month, the terminal output, and that the script passes `bash -n` and shellcheck.
//! `crates/opskit/tests/archive_operator.rs` runs the wrapper with the real opskit on the lab.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

const WRAPPER: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../deploy/cron/user_logs_archive.sh"
);
const CRON_FILE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../deploy/cron/opskit-archive.cron"
);
const STOP_ALERT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../deploy/systemd/opskit-archive-stop-alert.sh"
);
const SYSTEMD_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/systemd");

/// One request the webhook listener received.
#[derive(Debug, Clone)]
struct Hook {
    method: String,
    path: String,
    content_type: String,
    idempotency_key: String,
    body: Value,
}

/// A real HTTP listener on loopback that answers 200 and records what it got.
struct Webhook {
    port: u16,
    hooks: Arc<Mutex<Vec<Hook>>>,
}

impl Webhook {
    fn start() -> Webhook {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let hooks = Arc::new(Mutex::new(Vec::new()));
        let seen = hooks.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                if let Some(hook) = serve(stream) {
                    seen.lock().unwrap().push(hook);
                }
            }
        });
        Webhook { port, hooks }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook", self.port)
    }

    fn hooks(&self) -> Vec<Hook> {
        self.hooks.lock().unwrap().clone()
    }
}

fn serve(stream: TcpStream) -> Option<Hook> {
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line).ok()?;
    let mut parts = request_line.split_whitespace();
    let method = parts.next()?.to_string();
    let path = parts.next()?.to_string();
    let mut length = 0usize;
    let mut content_type = String::new();
    let mut idempotency_key = String::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).ok()?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            match name.to_ascii_lowercase().as_str() {
                "content-length" => length = value.trim().parse().ok()?,
                "content-type" => content_type = value.trim().to_string(),
                "idempotency-key" => idempotency_key = value.trim().to_string(),
                _ => {}
            }
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    let mut stream = stream;
    let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    Some(Hook {
        method,
        path,
        content_type,
        idempotency_key,
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
    })
}

/// A scratch directory with a fake `opskit` in `bin/`.
struct Scene {
    dir: PathBuf,
}

impl Scene {
    fn new(tag: &str, fake_opskit: &str) -> Scene {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let dir =
            std::env::temp_dir().join(format!("opskit-cron-{tag}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(dir.join("bin")).unwrap();
        let bin = dir.join("bin/opskit");
        // Like the real one, `opskit archive month` names the month, run key and journal.
        let month = r#"case "$*" in *"archive month"*)
    m=2026-11; case "$*" in *"--month "*) m="${*##*--month }";; esac
    echo "$m archive-test.user_logs-$m /var/lib/opskit/journal/archive/archive-test.user_logs-$m.jsonl"; exit 0;;
esac"#;
        std::fs::write(&bin, format!("#!/bin/sh\n{month}\n{fake_opskit}\n")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        Scene { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn command(&self, webhook_url: &str) -> Command {
        let mut c = Command::new("bash");
        c.arg(WRAPPER)
            .env(
                "PATH",
                format!(
                    "{}:{}",
                    self.dir.join("bin").display(),
                    std::env::var("PATH").unwrap_or_default()
                ),
            )
            .env("OPSKIT_CONFIG", self.path("opskit.toml"))
            .env("WEBHOOK_URL", webhook_url)
            .env("LOG_DIR", self.path("log"))
            .env("LOCK_FILE", self.path("lock/archive.lock"))
            .env("SCENE", &self.dir)
            .env("WEBHOOK_TIMEOUT_SECS", "5")
            .env("STOP_GRACE_SECS", "5")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    }

    fn run(&self, webhook_url: &str, args: &[&str]) -> ExitStatus {
        let out = self.command(webhook_url).args(args).output().unwrap();
        assert!(
            out.stdout.is_empty(),
            "everything goes to the log file, not stdout: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        out.status
    }

    fn log(&self) -> (PathBuf, String) {
        let entry = std::fs::read_dir(self.path("log"))
            .unwrap()
            .flatten()
            .next()
            .expect("a log file");
        let text = std::fs::read_to_string(entry.path()).unwrap();
        (entry.path(), text)
    }
}

impl Drop for Scene {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn wait_for(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn only_hook(webhook: &Webhook) -> Hook {
    // curl has returned before the wrapper exits, but give the listener thread a moment.
    wait_for("the webhook POST", Duration::from_secs(5), || {
        !webhook.hooks().is_empty()
    });
    let hooks = webhook.hooks();
    assert_eq!(hooks.len(), 1, "{hooks:#?}");
    hooks.into_iter().next().unwrap()
}

/// The wrapper's alert has exactly opskit's schema (docs/alerts.md) and an Idempotency-Key.
fn assert_alert(hook: &Hook, scene: &Scene, code: i64) {
    assert_eq!(hook.method, "POST");
    assert_eq!(hook.path, "/hook");
    assert_eq!(hook.content_type, "application/json");
    let keys: Vec<&str> = hook
        .body
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.as_str())
        .collect();
    let mut keys = keys;
    keys.sort();
    assert_eq!(
        keys,
        [
            "error",
            "failed_at",
            "host",
            "journal",
            "run_key",
            "runbook",
            "started_at",
            "step"
        ],
        "{:#}",
        hook.body
    );
    assert_eq!(hook.body["runbook"], "archive");
    assert_eq!(hook.body["step"], "wrapper");
    let run_key = hook.body["run_key"].as_str().unwrap();
    assert!(run_key.starts_with("archive-test.user_logs-"), "{run_key}");
    assert!(!hook.body["host"].as_str().unwrap_or("").is_empty());
    let failed_at = hook.body["failed_at"].as_str().unwrap();
    assert!(hook.body["started_at"].as_str().unwrap() <= failed_at);
    let error = hook.body["error"].as_str().unwrap();
    assert!(error.contains(&format!("exit code {code}")), "{error}");
    let (log_path, _) = scene.log();
    assert!(error.contains(log_path.to_str().unwrap()), "{error}");
    let epoch = chrono::DateTime::parse_from_rfc3339(failed_at)
        .unwrap()
        .timestamp();
    assert_eq!(hook.idempotency_key, format!("{run_key}-{epoch}"));
}

#[test]
fn a_failing_opskit_calls_the_webhook_with_host_exit_code_and_log() {
    let webhook = Webhook::start();
    let scene = Scene::new(
        "fail",
        r#"echo "$@" > "$SCENE/args"; echo "archive: export failed: \"quoted\" reason" >&2; exit 1"#,
    );
    let status = scene.run(&webhook.url(), &["--month", "2024-01"]);
    assert_eq!(status.code(), Some(1));
    let hook = only_hook(&webhook);
    assert_alert(&hook, &scene, 1);
    assert!(hook.body["error"].as_str().unwrap().contains("exited 1"));
    // The log tail travels with the alert, JSON-escaped.
    assert!(
        hook.body["error"]
            .as_str()
            .unwrap()
            .contains("export failed: \"quoted\" reason"),
        "{:#}",
        hook.body
    );
    let args = std::fs::read_to_string(scene.path("args")).unwrap();
    assert_eq!(
        args.trim(),
        format!(
            "--config {} archive run --month 2024-01",
            scene.path("opskit.toml").display()
        )
    );
    let (_, log) = scene.log();
    assert!(log.contains("FAILED: opskit archive run exited 1"), "{log}");
    assert!(log.contains("webhook called (exit code 1)"), "{log}");
}

#[test]
fn an_opskit_killed_by_sigkill_is_reported() {
    let webhook = Webhook::start();
    let scene = Scene::new("kill", "echo started; kill -KILL $$; sleep 10");
    let status = scene.run(&webhook.url(), &[]);
    assert_eq!(status.code(), Some(137));
    let hook = only_hook(&webhook);
    assert_alert(&hook, &scene, 137);
    assert!(
        hook.body["error"]
            .as_str()
            .unwrap()
            .contains("killed by signal 9"),
        "{:#}",
        hook.body
    );
}

#[test]
fn an_opskit_that_sent_its_own_alert_gets_no_second_one() {
    let webhook = Webhook::start();
    let scene = Scene::new(
        "alerted",
        r#"echo "archive-test.user_logs-2026-11 export" >> "$OPSKIT_ALERT_RECEIPT"; echo "refused" >&2; exit 3"#,
    );
    let status = scene.run(&webhook.url(), &[]);
    assert_eq!(status.code(), Some(3));
    std::thread::sleep(Duration::from_millis(300));
    assert!(webhook.hooks().is_empty(), "{:#?}", webhook.hooks());
    let (_, log) = scene.log();
    assert!(log.contains("opskit already sent the alert"), "{log}");

    // Exit codes above 3 are not opskit's: the wrapper alerts.
    let scene = Scene::new("weird", "exit 7");
    assert_eq!(scene.run(&webhook.url(), &[]).code(), Some(7));
    let hook = only_hook(&webhook);
    assert_alert(&hook, &scene, 7);
}

#[test]
fn the_log_is_named_after_the_archived_month_and_a_terminal_sees_it_too() {
    let webhook = Webhook::start();
    let scene = Scene::new("month", "echo archiving; exit 0");
    assert_eq!(
        scene.run(&webhook.url(), &["--month", "2024-01"]).code(),
        Some(0)
    );
    let (path, log) = scene.log();
    assert_eq!(
        path.file_name().unwrap().to_str().unwrap(),
        "user_logs_archive-2024-01.log"
    );
    assert!(log.contains("archiving"), "{log}");
    std::fs::remove_file(&path).unwrap();
    // Without --month: the month opskit names (the fake says 2026-11).
    assert_eq!(scene.run(&webhook.url(), &[]).code(), Some(0));
    assert_eq!(
        scene.log().0.file_name().unwrap().to_str().unwrap(),
        "user_logs_archive-2026-11.log"
    );

    // From a terminal (script(1) gives the wrapper a pty): printed there as well.
    let settings = scene.command(&webhook.url());
    let out = Command::new("script")
        .args([
            "-qec",
            &format!("bash {WRAPPER} --month 2024-02"),
            "/dev/null",
        ])
        .envs(settings.get_envs().filter_map(|(k, v)| Some((k, v?))))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(shown.contains("archiving"), "not on the terminal: {shown}");
    let log = std::fs::read_to_string(scene.path("log/user_logs_archive-2024-02.log")).unwrap();
    assert!(log.contains("archiving"), "{log}");
}

#[test]
fn a_successful_run_calls_no_webhook() {
    let webhook = Webhook::start();
    let scene = Scene::new("ok", "exit 0");
    let status = scene.run(&webhook.url(), &[]);
    assert_eq!(status.code(), Some(0));
    std::thread::sleep(Duration::from_millis(300));
    assert!(webhook.hooks().is_empty(), "{:#?}", webhook.hooks());
    let (_, log) = scene.log();
    assert!(log.contains("done"), "{log}");
}

#[test]
fn a_missing_opskit_binary_is_reported() {
    let webhook = Webhook::start();
    let scene = Scene::new("missing", "exit 0");
    std::fs::remove_file(scene.path("bin/opskit")).unwrap();
    let mut c = scene.command(&webhook.url());
    c.env("OPSKIT_BIN", "opskit-not-installed");
    let status = c.output().unwrap().status;
    assert_eq!(status.code(), Some(127));
    let hook = only_hook(&webhook);
    assert!(
        hook.body["error"]
            .as_str()
            .unwrap()
            .contains("opskit-not-installed not found"),
        "{:#}",
        hook.body
    );
}

#[test]
fn a_second_concurrent_run_is_refused_by_flock() {
    let webhook = Webhook::start();
    let scene = Scene::new(
        "lock",
        r#"touch "$SCENE/running"; sleep 3; echo finished >> "$SCENE/finished"; exit 0"#,
    );
    let mut first = scene.command(&webhook.url()).spawn().unwrap();
    wait_for("the first run to start", Duration::from_secs(10), || {
        scene.path("running").exists()
    });
    let second = scene.run(&webhook.url(), &[]);
    assert_eq!(second.code(), Some(3), "the second run is refused");
    let hook = only_hook(&webhook);
    assert_alert(&hook, &scene, 3);
    assert!(
        hook.body["error"]
            .as_str()
            .unwrap()
            .contains("another run holds"),
        "{:#}",
        hook.body
    );
    assert!(
        !scene.path("finished").exists(),
        "the first run was still going"
    );
    assert_eq!(first.wait().unwrap().code(), Some(0));
    // The lock is released with the first run: a third run goes ahead.
    assert_eq!(scene.run(&webhook.url(), &[]).code(), Some(0));
    let finished = std::fs::read_to_string(scene.path("finished")).unwrap();
    assert_eq!(finished.lines().count(), 2, "only the first and third ran");
    assert_eq!(webhook.hooks().len(), 1);
}

#[test]
fn sigterm_to_the_wrapper_stops_opskit_and_alerts() {
    let webhook = Webhook::start();
    let scene = Scene::new("term", r#"echo $$ > "$SCENE/pid"; exec sleep 60"#);
    let mut wrapper = scene.command(&webhook.url()).spawn().unwrap();
    wait_for("opskit to start", Duration::from_secs(10), || {
        std::fs::read_to_string(scene.path("pid")).is_ok_and(|p| !p.trim().is_empty())
    });
    let child: i32 = std::fs::read_to_string(scene.path("pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let started = Instant::now();
    let kill = Command::new("kill")
        .args(["-TERM", &wrapper.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = wrapper.wait().unwrap();
    assert_eq!(status.code(), Some(143));
    assert!(started.elapsed() < Duration::from_secs(20));
    let hook = only_hook(&webhook);
    assert_alert(&hook, &scene, 143);
    assert!(
        hook.body["error"]
            .as_str()
            .unwrap()
            .contains("received SIGTERM")
    );
    wait_for("opskit to be stopped", Duration::from_secs(5), || {
        !Path::new(&format!("/proc/{child}")).exists()
            || std::fs::read_to_string(format!("/proc/{child}/stat"))
                .is_ok_and(|s| s.contains(") Z "))
    });
}

#[test]
fn an_unreachable_webhook_neither_hangs_nor_changes_the_exit_code() {
    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!(
        "http://127.0.0.1:{}/hook",
        closed.local_addr().unwrap().port()
    );
    drop(closed);
    let scene = Scene::new("nohook", "exit 1");
    let started = Instant::now();
    let mut c = scene.command(&url);
    c.env("WEBHOOK_ATTEMPTS", "2");
    let status = c.output().unwrap().status;
    assert_eq!(status.code(), Some(1));
    assert!(started.elapsed() < Duration::from_secs(30));
    let (_, log) = scene.log();
    assert!(log.contains("webhook attempt 2/2 failed"), "{log}");
    assert!(log.contains("ALERT NOT DELIVERED"), "{log}");
}

#[test]
fn the_scripts_pass_bash_n_and_shellcheck_and_the_schedules_match_the_spec() {
    for script in [WRAPPER, STOP_ALERT] {
        let out = Command::new("bash").args(["-n", script]).output().unwrap();
        assert!(
            out.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        match Command::new("shellcheck").args(["-x", script]).output() {
            Ok(out) => assert!(
                out.status.success(),
                "shellcheck {script}:\n{}",
                String::from_utf8_lossy(&out.stdout)
            ),
            Err(e) => panic!("shellcheck: {e}; scripts/install-deps installs it"),
        }
    }
    let cron = std::fs::read_to_string(CRON_FILE).unwrap();
    let job: Vec<&str> = cron
        .lines()
        .filter(|l| !l.trim_start().starts_with('#') && l.contains("user_logs_archive.sh"))
        .collect();
    assert_eq!(job.len(), 1, "{cron}");
    assert!(job[0].starts_with("0 1 1 * * "), "{}", job[0]);
    assert!(cron.contains("CRON_TZ="), "{cron}");

    let timer = std::fs::read_to_string(format!("{SYSTEMD_DIR}/opskit-archive.timer")).unwrap();
    assert!(timer.contains("OnCalendar=*-*-01 01:00:00"), "{timer}");
    assert!(timer.contains("Persistent=true"), "{timer}");
    let service = std::fs::read_to_string(format!("{SYSTEMD_DIR}/opskit-archive.service")).unwrap();
    assert!(service.contains("user_logs_archive.sh"), "{service}");
    if let Ok(out) = Command::new("systemd-analyze")
        .args(["calendar", "*-*-01 01:00:00"])
        .output()
    {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Every key and value parses (the ExecStart binaries are not installed here, so only
        // parse complaints count).
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .arg(format!("{SYSTEMD_DIR}/opskit-archive.service"))
            .arg(format!("{SYSTEMD_DIR}/opskit-archive.timer"))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stderr).to_string()
            + &String::from_utf8_lossy(&out.stdout);
        for complaint in [
            "Failed to parse",
            "Unknown key",
            "Unknown section",
            "Invalid",
            "ignoring",
        ] {
            assert!(!text.contains(complaint), "systemd-analyze verify:\n{text}");
        }
    } else {
        panic!("systemd-analyze is not installed; scripts/install-deps installs it (systemd)");
    }
}

#[test]
fn systemd_stop_post_alerts_only_when_systemd_ended_the_run() {
    let webhook = Webhook::start();
    let run = |result: &str, code: &str, status: &str| {
        let out = Command::new("bash")
            .arg(STOP_ALERT)
            .env("WEBHOOK_URL", webhook.url())
            .env("SERVICE_RESULT", result)
            .env("EXIT_CODE", code)
            .env("EXIT_STATUS", status)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    // The wrapper reported these itself.
    run("success", "exited", "0");
    run("exit-code", "exited", "1");
    std::thread::sleep(Duration::from_millis(300));
    assert!(webhook.hooks().is_empty(), "{:#?}", webhook.hooks());
    // systemd killed the wrapper: only this hook can tell.
    run("signal", "killed", "KILL");
    let hook = only_hook(&webhook);
    assert_eq!(hook.method, "POST");
    let mut keys: Vec<&str> = hook
        .body
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.as_str())
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "error",
            "failed_at",
            "host",
            "journal",
            "run_key",
            "runbook",
            "started_at",
            "step"
        ]
    );
    assert_eq!(hook.body["step"], "systemd");
    let error = hook.body["error"].as_str().unwrap();
    assert!(
        error.contains("'signal'") && error.contains("KILL"),
        "{error}"
    );
    assert_eq!(hook.body["runbook"], "archive");
    assert!(!hook.body["host"].as_str().unwrap_or("").is_empty());
    assert!(
        hook.idempotency_key.starts_with("archive"),
        "{}",
        hook.idempotency_key
    );
}
