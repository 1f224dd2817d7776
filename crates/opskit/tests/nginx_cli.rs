//! `opskit nginx` end to end: the committed deploy config is the default render, bad settings
//! exit 2, the dry run prints the deploy plan, and the probe passes against a real lab edge.

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use opskit::commands::history::HistoryReport;
use opskit::commands::status::StatusReport;
use opskit_core::config::Config;
use opskit_core::journal::RunResult;
use opskit_core::metrics::sample_value;
use opskit_lab::{BOT_MARKER, Component, EdgeServer, LabBuilder};

fn opskit(config: &Path) -> Command {
    let mut cmd = Command::cargo_bin("opskit").unwrap();
    cmd.env_remove("OPSKIT_CONFIG").arg("--config").arg(config);
    cmd
}

fn config_file(dir: &Path, text: &str) -> PathBuf {
    let p = dir.join("opskit.toml");
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn deploy_config_is_the_default_render() {
    let dir = tempfile::tempdir().unwrap();
    let out = opskit(&config_file(dir.path(), ""))
        .args(["nginx", "render"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let deploy = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy/nginx/ipo.com.conf");
    let committed = std::fs::read_to_string(&deploy).unwrap();
    assert!(
        committed == String::from_utf8(out.stdout).unwrap(),
        "{} is stale: regenerate it with `opskit nginx render > deploy/nginx/ipo.com.conf`",
        deploy.display()
    );
}

#[test]
fn render_follows_the_target_version() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_file(dir.path(), "");
    let new = opskit(&cfg)
        .args(["nginx", "render", "--nginx-version", "1.25.1"])
        .output()
        .unwrap();
    let new = String::from_utf8(new.stdout).unwrap();
    assert!(new.contains("http2 on;") && !new.contains("ssl http2"));
    let old = opskit(&cfg)
        .args(["nginx", "render", "--nginx-version", "1.22"])
        .output()
        .unwrap();
    let old = String::from_utf8(old.stdout).unwrap();
    assert!(old.contains("listen 443 ssl http2;") && old.contains("ssl_session_tickets off;"));
    opskit(&cfg)
        .args(["nginx", "render", "--nginx-version", "latest"])
        .assert()
        .code(2);
    opskit(&cfg)
        .args(["nginx", "render", "--nginx-version", "1.12"])
        .assert()
        .code(2);
}

#[test]
fn bad_settings_are_refused_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("domain = \"ipo com\"", "nginx.domain"),
        ("domain = \"ipo.com;\"", "nginx.domain"),
        ("bot_keyword = \"Google;Bot\"", "nginx.bot_keyword"),
        ("bot_keyword = \"Google {Bot}\"", "nginx.bot_keyword"),
        ("bot_upstream = \"bot ipo.com\"", "nginx.bot_upstream"),
        ("api_rate = 0", "nginx.api_rate"),
        ("api_rate = 1.51", "nginx.api_rate"),
        ("web_root = \"/etc/ipo\"", "nginx.web_root"),
        ("api_root = \"/tmp/api\"", "nginx.api_root"),
        (
            "php_fpm_socket = \"/run/php;fpm.sock\"",
            "nginx.php_fpm_socket",
        ),
        ("https_listen = [\"443 ssl\"]", "nginx.https_listen"),
        ("resolver = \"8.8.8.8\"", "nginx.resolver"),
    ];
    for (line, key) in cases {
        let cfg = config_file(dir.path(), &format!("[nginx]\n{line}\n"));
        let out = opskit(&cfg).args(["nginx", "render"]).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{line}: {err}");
        assert!(
            err.contains(key),
            "{line}: the error must name {key}: {err}"
        );
        assert!(out.stdout.is_empty(), "{line}: nothing may be rendered");
    }
}

#[test]
fn apply_dry_run_prints_the_deploy_plan_and_refuses_like_the_real_apply() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing runs nginx with this pid file: the real apply refuses, so the dry run does too.
    let cfg = config_file(
        dir.path(),
        &format!(
            "[nginx]\npid_file = \"{}\"\n",
            dir.path().join("nginx.pid").display()
        ),
    );
    let out = opskit(&cfg)
        .args(["--state-dir", &dir.path().to_string_lossy()])
        .args(["nginx", "apply", "--dry-run", "--nginx-version", "1.24"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("nginx is not running: its pid file")
            && !stderr.contains("No such file or directory"),
        "{stderr}"
    );
    let text = String::from_utf8(out.stdout).unwrap();
    for step in [
        "[backup]",
        "[write]",
        "[test]",
        "[reload]",
        "[quick-probe]",
        "[probe]",
    ] {
        assert!(text.contains(step), "{step} missing:\n{text}");
    }
    assert!(
        text.contains("nginx -t -q -c /etc/nginx/nginx.conf"),
        "{text}"
    );
    assert!(
        !Path::new(&dir.path().join("nginx")).exists(),
        "a dry run writes nothing"
    );
}

#[test]
fn probe_passes_against_the_lab_and_fails_on_a_wrong_expectation() {
    let lab = LabBuilder::temporary("opskit-cli-probe-")
        .unwrap()
        .with(Component::Nginx)
        .up()
        .unwrap();
    let dir = lab.dir().parent().unwrap().to_path_buf();
    let rig: EdgeServer = lab.view().unwrap();
    let mut config = Config {
        nginx: rig.settings.clone(),
        ..Config::default()
    };
    let metrics = dir.join("metrics");
    config.general.metrics_dir = metrics.to_string_lossy().parse().unwrap();
    let cfg = config_file(dir.as_path(), &config.to_toml());
    // What the OpskitNginxProbe* alert rules read (deploy/prometheus/opskit.rules.yml).
    let prom = || std::fs::read_to_string(metrics.join("opskit_nginx_probe.prom")).unwrap();
    let probe = |extra: &[&str]| {
        opskit(&cfg)
            .args([
                "--output",
                "json",
                "nginx",
                "probe",
                "--bot-marker",
                BOT_MARKER,
                "--group",
                "tls,redirect,bot,api",
            ])
            .args(extra)
            .output()
            .unwrap()
    };
    let out = probe(&[]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(0), "{v:#}");
    assert_eq!(v["passed"], true);
    assert!(v["checks"].as_array().unwrap().len() >= 20);
    let passed = prom();
    assert_eq!(
        sample_value(&passed, "opskit_last_run_success"),
        Some(1.0),
        "{passed}"
    );
    assert_eq!(
        sample_value(&passed, "opskit_nginx_probe_checks_failed"),
        Some(0.0)
    );
    assert!(sample_value(&passed, "opskit_nginx_probe_checks_passed").unwrap() >= 20.0);
    // Details are for people: no Rust debug text, and a passing check reads as a pass.
    for c in v["checks"].as_array().unwrap() {
        let detail = c["detail"].as_str().unwrap();
        for debug in ["Some(", "None", "{ "] {
            assert!(!detail.contains(debug), "{}: {detail}", c["name"]);
        }
    }
    let leak = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "api.no_php_version_leak")
        .unwrap();
    assert_eq!(leak["verdict"], "pass");
    assert!(
        leak["detail"]
            .as_str()
            .unwrap()
            .starts_with("no X-Powered-By header"),
        "{leak}"
    );
    // The same server judged against a wrong expectation (the redirect on port 1) fails.
    let out = probe(&["--http-port", "1", "--timeout", "2"]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let failed: Vec<&str> = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["verdict"] == "fail")
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert!(failed.contains(&"redirect.301_path_query"), "{failed:?}");
    assert!(!failed.iter().any(|n| n.starts_with("tls.")), "{failed:?}");
    let failing = prom();
    assert_eq!(
        sample_value(&failing, "opskit_last_run_success"),
        Some(0.0),
        "{failing}"
    );
    assert_eq!(
        sample_value(&failing, "opskit_nginx_probe_checks_failed"),
        Some(failed.len() as f64)
    );
    // The last pass is still known, for the dashboard.
    assert_eq!(
        sample_value(&failing, "opskit_last_success_timestamp_seconds"),
        sample_value(&passed, "opskit_last_success_timestamp_seconds")
    );
    lab.down().unwrap();
}

#[test]
fn apply_succeeds_then_rolls_back_with_exit_1() {
    let lab = LabBuilder::temporary("opskit-cli-apply-")
        .unwrap()
        .with(Component::Nginx)
        .up()
        .unwrap();
    let dir = lab.dir().parent().unwrap().to_path_buf();
    let rig: EdgeServer = lab.view().unwrap();
    let state = dir.as_path().join("state");
    let receiver = opskit_lab::webhook::InProcessReceiver::start(&dir).unwrap();
    let apply = |nginx: &opskit_core::config::NginxConfig| {
        let mut config = Config {
            nginx: nginx.clone(),
            ..Config::default()
        };
        config.general.state_dir = state.to_string_lossy().parse().unwrap();
        config.general.metrics_dir = state.join("metrics").to_string_lossy().parse().unwrap();
        config.alert.webhook_url = Some(receiver.url().parse().unwrap());
        let cfg = config_file(dir.as_path(), &config.to_toml());
        let out = opskit(&cfg)
            .args([
                "--output",
                "json",
                "nginx",
                "apply",
                "--group",
                "redirect,api",
            ])
            .args(["--bot-marker", BOT_MARKER])
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
        (out.status.code(), v)
    };
    let mut good = rig.settings.clone();
    good.api_burst = 1;
    let before = std::fs::read_to_string(rig.settings.config_path.path()).unwrap();
    let dry = {
        let mut config = Config {
            nginx: good.clone(),
            ..Config::default()
        };
        config.general.state_dir = state.to_string_lossy().parse().unwrap();
        let cfg = config_file(dir.as_path(), &config.to_toml());
        opskit(&cfg)
            .args(["nginx", "apply", "--dry-run"])
            .output()
            .unwrap()
    };
    let text = String::from_utf8_lossy(&dry.stdout);
    assert_eq!(dry.status.code(), Some(0), "{text}");
    assert!(
        text.contains(
            "-            limit_req zone=api;\n+            limit_req zone=api burst=1 nodelay;\n"
        ),
        "the dry run shows the change as a unified diff:\n{text}"
    );
    assert_eq!(
        std::fs::read_to_string(rig.settings.config_path.path()).unwrap(),
        before,
        "a dry run writes nothing"
    );
    let (code, v) = apply(&good);
    assert_eq!(code, Some(0), "{v:#}");
    assert_eq!(v["outcome"], "succeeded");
    let live = std::fs::read_to_string(rig.settings.config_path.path()).unwrap();
    assert!(live.contains("limit_req zone=api burst=1 nodelay;"));
    assert!(
        receiver.received().unwrap().is_empty(),
        "a good deploy never alerts"
    );

    let mut broken = good.clone();
    broken.user = "no-such-user-opskit".into();
    let (code, v) = apply(&broken);
    assert_eq!(code, Some(1), "{v:#}");
    assert_eq!(v["outcome"], "rolled_back");
    assert_eq!(v["failed_step"], "test");
    assert!(
        v["error"].as_str().unwrap().contains("no-such-user-opskit"),
        "{v:#}"
    );
    assert_eq!(
        std::fs::read_to_string(rig.settings.config_path.path()).unwrap(),
        live
    );
    let alerts = receiver.received().unwrap();
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(
        (&alerts[0]["runbook"], &alerts[0]["step"]),
        (&"nginx".into(), &"test".into())
    );

    // status and history read both runs back from the journals.
    let cfg = dir.as_path().join("opskit.toml");
    let out = opskit(&cfg)
        .args(["--output", "json", "status"])
        .output()
        .unwrap();
    let status: StatusReport = serde_json::from_slice(&out.stdout).unwrap();
    let nginx = status
        .runbooks
        .iter()
        .find(|r| r.runbook == "nginx")
        .unwrap();
    let last = nginx.last_run.as_ref().unwrap();
    assert_eq!(last.result, RunResult::RolledBack);
    assert_eq!(last.failed_step.as_deref(), Some("test"));
    assert!(nginx.metrics_file.is_some(), "{nginx:?}");
    assert!(!nginx.lock.as_ref().unwrap().held);
    let out = opskit(&cfg).args(["status"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("nginx     FAILED, rolled back in ") && text.contains("at [test]: "),
        "{text}"
    );
    let out = opskit(&cfg)
        .args(["--output", "json", "history", "nginx"])
        .output()
        .unwrap();
    let history: HistoryReport = serde_json::from_slice(&out.stdout).unwrap();
    let results: Vec<RunResult> = history.runs.iter().map(|r| r.result).collect();
    assert_eq!(results, [RunResult::RolledBack, RunResult::Succeeded]);
    assert!(history.runs[1].figures["probe.probe_checks_total"] >= 10.0);
    assert_eq!(history.runs[1].figures["probe.probe_checks_failed"], 0.0);
    lab.down().unwrap();
}
