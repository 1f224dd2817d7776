//! The exit codes and alerts of `docs/alerts.md`, command by command (nginx, config, lab,
//! drill, generate, status, history, and the engine-level rule), against a real webhook
//! receiver: a run that ends with 1 or 3 alerts once; nothing else ever alerts.

use std::path::{Path, PathBuf};

use opskit_archive::job::ArchiveJob;
use opskit_core::config::Config;
use opskit_core::journal::Journal;
use opskit_lab::webhook::InProcessReceiver;

struct Fixture {
    dir: tempfile::TempDir,
    receiver: InProcessReceiver,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let receiver = InProcessReceiver::start(dir.path()).unwrap();
        Fixture { dir, receiver }
    }

    /// A config with the receiver as webhook, state and metrics in the fixture, and `nginx`
    /// lines added to `[nginx]`.
    fn config(&self, state: &Path, nginx: &str) -> PathBuf {
        let mut c = Config::default();
        c.alert.webhook_url = Some(self.receiver.url().parse().unwrap());
        c.alert.retries = 0;
        c.general.state_dir = state.to_string_lossy().parse().unwrap();
        c.general.metrics_dir = self
            .dir
            .path()
            .join("metrics")
            .to_string_lossy()
            .parse()
            .unwrap();
        c.nginx.pid_file = self
            .dir
            .path()
            .join("no-nginx.pid")
            .to_string_lossy()
            .parse()
            .unwrap();
        let text = c
            .to_toml()
            .replace("[nginx]\n", &format!("[nginx]\n{nginx}\n"));
        let p = self.dir.path().join("opskit.toml");
        std::fs::write(&p, text).unwrap();
        p
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// Runs opskit; returns the exit code and the alerts that arrived during the call.
    fn run(&self, config: &Path, args: &[&str]) -> (i32, Vec<serde_json::Value>) {
        let before = self.receiver.received().unwrap().len();
        let out = std::process::Command::new(assert_cmd::cargo::cargo_bin("opskit"))
            .env_remove("OPSKIT_CONFIG")
            .arg("--config")
            .arg(config)
            .args(args)
            .output()
            .unwrap();
        let alerts = self.receiver.received().unwrap()[before..].to_vec();
        (out.status.code().unwrap_or(-1), alerts)
    }
}

#[test]
fn read_only_commands_never_alert() {
    let f = Fixture::new();
    let cfg = f.config(&f.state(), "");
    let lab = f.dir.path().join("no-lab").to_string_lossy().to_string();
    let cases: Vec<(Vec<&str>, i32)> = vec![
        (vec!["nginx", "render"], 0),
        // nginx -t rejects the default config here: its certificate does not exist.
        (vec!["nginx", "check"], 1),
        (
            vec!["nginx", "check", "--file", "/nonexistent/nginx.conf"],
            1,
        ),
        (
            vec![
                "nginx",
                "probe",
                "--url",
                "https://ipo.com:1",
                "--resolve",
                "ipo.com:1:127.0.0.1",
                "--group",
                "redirect",
                "--timeout",
                "1",
            ],
            1,
        ),
        (vec!["nginx", "probe", "--group", "nosuch"], 2),
        (vec!["nginx", "apply", "--dry-run"], 3),
        (vec!["config", "show"], 0),
        (vec!["status"], 0),
        (vec!["history"], 0),
        (vec!["history", "no/such"], 2),
        (vec!["generate", "completions", "zsh"], 0),
        (vec!["lab", "status", "--dir", &lab], 0),
        (vec!["drill", "--dir", &lab], 2),
        (vec!["firewall", "render"], 0),
        // Every input missing here (no HAProxy, no replicas): the doctor still reports, exit 0.
        (vec!["mysql", "doctor"], 0),
        // The admin password file does not exist: exit 2 before any connection.
        (
            vec!["mysql", "probe-idle", "--dsn", "mysql://app@127.0.0.1:1"],
            2,
        ),
    ];
    for (args, code) in cases {
        let (got, alerts) = f.run(&cfg, &args);
        assert_eq!(got, code, "opskit {}", args.join(" "));
        assert!(
            alerts.is_empty(),
            "opskit {} alerted: {alerts:?}",
            args.join(" ")
        );
    }
    let bad = f.config(&f.state(), "api_rate = 0");
    for args in [["nginx", "apply"], ["nginx", "render"]] {
        let (got, alerts) = f.run(&bad, &args);
        assert_eq!(
            (got, alerts.len()),
            (2, 0),
            "bad config, opskit {}",
            args.join(" ")
        );
    }
}

#[test]
fn a_run_alerts_once_on_exit_3_and_on_exit_1() {
    let f = Fixture::new();
    // nginx is not running: the apply is refused by its first step (exit 3) and alerts.
    let cfg = f.config(&f.state(), "");
    let (code, alerts) = f.run(&cfg, &["nginx", "apply"]);
    assert_eq!(code, 3);
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    let a = &alerts[0];
    assert_eq!(a["runbook"], "nginx");
    assert_eq!(a["step"], "backup");
    assert!(
        a["error"]
            .as_str()
            .unwrap()
            .contains("nginx is not running"),
        "{a}"
    );
    let key = a["run_key"].as_str().unwrap();
    assert!(key.starts_with("nginx-apply-"), "{key}");
    let journal = Journal::path_for(&f.state(), "nginx", key);
    assert_eq!(a["journal"], journal.display().to_string());
    assert!(journal.exists());

    // The engine cannot even create its state directory (a file is in the way): exit 1, and
    // the alert still goes out.
    let blocked = f.dir.path().join("a-file");
    std::fs::write(&blocked, "").unwrap();
    let cfg = f.config(&blocked.join("state"), "");
    let (code, alerts) = f.run(&cfg, &["nginx", "apply"]);
    assert_eq!(code, 1);
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(alerts[0]["step"], "run");
}

#[test]
fn the_docs_example_run_keys_and_journals_are_real_ones() {
    let defaults = Config::default();
    let state = defaults.general.state_dir.path();
    let job = ArchiveJob::new(&defaults, Some("2024-01".parse().unwrap()), state).unwrap();
    let run_key = job.run_key();
    let journal = Journal::path_for(state, "archive", &run_key);
    for doc in ["docs/alerts.md", "docs/alerts.zh.md"] {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../..")
            .join(doc);
        let text = std::fs::read_to_string(&path).unwrap();
        let example = text
            .split("```json")
            .nth(1)
            .and_then(|t| t.split("```").next())
            .unwrap_or_else(|| panic!("{doc} has no JSON example"));
        let v: serde_json::Value = serde_json::from_str(example).unwrap();
        assert_eq!(v["run_key"], run_key.as_str(), "{doc}");
        assert_eq!(v["journal"], journal.display().to_string(), "{doc}");
    }
}
