//! The alert rules, their unit tests and the Grafana dashboard, checked with promtool and
//! against the metrics the real `opskit` writes (docs/metrics.md, "How the rules and the
//! dashboard are kept true to the code").
//!
//! `promtool` comes from Debian's `prometheus` package, which `./scripts/install-deps`
//! installs: its absence fails the tests.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use opskit_lab::{BOT_MARKER, Component, EdgeServer, LabBuilder};

const RULES: &str = "deploy/prometheus/opskit.rules.yml";
const RULE_TESTS: &str = "deploy/prometheus/opskit.rules.test.yml";
const DASHBOARD: &str = "deploy/grafana/opskit.json";
const DOC: &str = "docs/metrics.md";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap()
}

fn promtool() -> Command {
    let found = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .any(|d| d.join("promtool").is_file());
    assert!(
        found,
        "promtool is not installed: ./scripts/install-deps installs it (Debian package prometheus)"
    );
    let mut c = Command::new("promtool");
    c.stdin(Stdio::null());
    c
}

fn show(out: &Output) -> String {
    format!(
        "{:?}\n--- stdout\n{}--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The alert names of the rules file (`- alert: Name` lines).
fn alerts(rules: &str) -> Vec<String> {
    rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert:"))
        .map(|n| n.trim().to_string())
        .collect()
}

#[test]
fn the_rules_pass_promtool_and_their_tests_cover_each_alert_firing_and_not() {
    let out = promtool()
        .args(["check", "rules"])
        .arg(repo().join(RULES))
        .output()
        .unwrap();
    assert!(out.status.success(), "promtool check rules: {}", show(&out));
    let names = alerts(&read(RULES));
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains(&format!("SUCCESS: {} rules found", names.len())),
        "{}",
        show(&out)
    );

    let out = promtool()
        .args(["test", "rules"])
        .arg(repo().join(RULE_TESTS))
        .output()
        .unwrap();
    assert!(out.status.success(), "promtool test rules: {}", show(&out));

    // Each alert has a case where it fires and one where it does not: after an
    // `alertname: X` line, `exp_alerts: []` expects silence and `exp_alerts:` alerts.
    let tests = read(RULE_TESTS);
    let lines: Vec<&str> = tests.lines().map(str::trim).collect();
    let mut firing = BTreeSet::new();
    let mut silent = BTreeSet::new();
    for (i, line) in lines.iter().enumerate() {
        if let Some(name) = line.strip_prefix("alertname:") {
            let name = name.trim().to_string();
            match lines.get(i + 1) {
                Some(&"exp_alerts: []") => silent.insert(name),
                Some(&"exp_alerts:") => firing.insert(name),
                other => panic!("{RULE_TESTS}: alertname {name} followed by {other:?}"),
            };
        }
    }
    for name in &names {
        assert!(firing.contains(name), "no test where {name} fires");
        assert!(silent.contains(name), "no test where {name} stays silent");
    }
    let known: BTreeSet<&String> = names.iter().collect();
    for tested in firing.iter().chain(&silent) {
        assert!(
            known.contains(tested),
            "{RULE_TESTS} tests {tested}, which is no rule"
        );
    }
}

/// Every `targets[].expr` of the dashboard, with the panel it belongs to.
fn dashboard_queries(dashboard: &serde_json::Value) -> Vec<(String, String)> {
    fn walk(panels: &serde_json::Value, out: &mut Vec<(String, String)>) {
        for p in panels.as_array().into_iter().flatten() {
            let title = p["title"].as_str().unwrap_or("?").to_string();
            for t in p["targets"].as_array().into_iter().flatten() {
                out.push((title.clone(), t["expr"].as_str().unwrap_or("").to_string()));
            }
            walk(&p["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

#[test]
fn the_dashboard_is_well_formed_and_its_queries_are_valid_promql() {
    let dashboard: serde_json::Value = serde_json::from_str(&read(DASHBOARD)).unwrap();
    assert_eq!(dashboard["uid"], "opskit");
    let panels = dashboard["panels"].as_array().unwrap();
    let mut ids = BTreeSet::new();
    let mut cells = BTreeSet::new();
    for p in panels {
        let title = p["title"].as_str().unwrap();
        assert!(
            ids.insert(p["id"].as_u64().unwrap()),
            "duplicate id: {title}"
        );
        let g = &p["gridPos"];
        let (x, y, w, h) = (
            g["x"].as_u64().unwrap(),
            g["y"].as_u64().unwrap(),
            g["w"].as_u64().unwrap(),
            g["h"].as_u64().unwrap(),
        );
        assert!(x + w <= 24 && w > 0 && h > 0, "{title}: {g}");
        for cx in x..x + w {
            for cy in y..y + h {
                assert!(cells.insert((cx, cy)), "{title} overlaps another panel");
            }
        }
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(p["datasource"]["uid"], "${DS_PROMETHEUS}", "{title}");
        assert!(
            !p["description"].as_str().unwrap_or("").is_empty(),
            "{title}"
        );
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{title} has no query");
    }

    // promtool parses each query as a recording rule's expression.
    let queries = dashboard_queries(&dashboard);
    assert!(queries.len() >= 10, "{queries:?}");
    let rules: Vec<serde_json::Value> = queries
        .iter()
        .enumerate()
        .map(|(i, (title, expr))| {
            assert!(!expr.is_empty(), "{title}: empty query");
            serde_json::json!({
                "record": format!("opskit_dashboard:query_{i}"),
                "expr": expr.replace("$instance", ".*"),
            })
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dashboard-queries.yml");
    // JSON is YAML: promtool reads it as a rules file.
    std::fs::write(
        &file,
        serde_json::json!({ "groups": [{ "name": "dashboard", "rules": rules }] }).to_string(),
    )
    .unwrap();
    let out = promtool()
        .args(["check", "rules"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "a dashboard query is not valid PromQL: {}",
        show(&out)
    );
}

/// `opskit_…` metric names in `text` (not the `opskit_<runbook>.prom` file names).
fn metric_names(text: &str) -> BTreeSet<String> {
    let is_name = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut names = BTreeSet::new();
    for (at, _) in text.match_indices("opskit_") {
        if text[..at]
            .chars()
            .next_back()
            .is_some_and(|c| is_name(c) || c == ':')
        {
            continue;
        }
        let rest = &text[at..];
        let end = rest.find(|c: char| !is_name(c)).unwrap_or(rest.len());
        let name = &rest[..end];
        if name.ends_with('_') || rest[end..].starts_with(".prom") {
            continue;
        }
        names.insert(name.to_string());
    }
    names
}

/// The `runbook` label values that PromQL in `text` selects on (`=`, `!=`, `=~`, `!~`).
fn runbook_selectors(text: &str) -> BTreeSet<String> {
    let mut values = BTreeSet::new();
    for (at, key) in text.match_indices("runbook") {
        let rest = &text[at + key.len()..];
        let Some(rest) = ["=~\"", "!~\"", "!=\"", "=\""]
            .iter()
            .find_map(|op| rest.strip_prefix(op))
        else {
            continue;
        };
        let value = &rest[..rest.find('"').unwrap()];
        values.extend(value.split('|').map(String::from));
    }
    values
}

#[test]
fn the_name_scanners_find_what_promql_and_prose_name() {
    let names = metric_names(
        "time() - opskit_last_success_timestamp_seconds{runbook=\"archive\"} > 1 and \
         opskit_run_in_progress == 1; file opskit_archive.prom, opskit_<runbook>.prom, \
         record opskit_dashboard:query_1, crate opskit_core_x",
    );
    assert_eq!(
        names,
        [
            "opskit_core_x",
            "opskit_dashboard",
            "opskit_last_success_timestamp_seconds",
            "opskit_run_in_progress"
        ]
        .map(String::from)
        .into()
    );
    assert_eq!(
        runbook_selectors("a{runbook=\"archive\"} or b{runbook!~\"archive|nginx\", x=\"y\"}"),
        ["archive", "nginx"].map(String::from).into()
    );
}

/// What the `.prom` files in `dir` hold: metric name → runbook label values. Also checks
/// that every sample has its HELP and TYPE lines.
fn written(dir: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut metrics: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        assert!(
            path.extension().is_some_and(|e| e == "prom"),
            "{} in the metrics directory",
            path.display()
        );
        let text = std::fs::read_to_string(&path).unwrap();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (name, rest) = line.split_at(line.find(['{', ' ']).unwrap());
            assert!(
                text.contains(&format!("# TYPE {name} gauge\n"))
                    && text.contains(&format!("# HELP {name} ")),
                "{}: {name} lacks HELP/TYPE",
                path.display()
            );
            let runbook = rest
                .strip_prefix("{runbook=\"")
                .and_then(|r| r.split_once('"'))
                .map(|(v, _)| v.to_string())
                .unwrap_or_else(|| panic!("{}: {line} has no runbook label", path.display()));
            metrics.entry(name.to_string()).or_default().insert(runbook);
        }
    }
    metrics
}

fn opskit(config: &Path, args: &[&str]) -> Output {
    let out = Command::new(assert_cmd::cargo::cargo_bin("opskit"))
        .env_remove("OPSKIT_CONFIG")
        .env("NO_COLOR", "1")
        .arg("--config")
        .arg(config)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "opskit {args:?}: {}",
        show(&out)
    );
    out
}

/// Runs every command that writes metrics, as the timers do, against the servers of one lab:
/// `archive run` (MariaDB + sshd/SFTP), `nginx apply` and `nginx probe` (nginx + php-fpm),
/// `firewall apply` and `firewall verify --probe` (network namespaces), `mysql switchover` and
/// `mysql topology` (five MariaDB, HAProxy, BIND). Returns what they wrote.
fn run_every_metric_writer(dir: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let metrics = dir.join("metrics");
    let lab = LabBuilder::temporary("opskit-metrics-lab")
        .unwrap()
        .with(Component::Mariadb)
        .with(Component::Sshd)
        .with(Component::Nginx)
        .with(Component::Firewall)
        .with(Component::Mysql)
        .with(Component::Haproxy)
        .with(Component::Bind)
        .opskit_exe(assert_cmd::cargo::cargo_bin("opskit"))
        .up()
        .expect("lab up");
    lab.mariadb()
        .unwrap()
        .sql(
            "CREATE TABLE test.user_logs (id BIGINT AUTO_INCREMENT PRIMARY KEY, create_on VARCHAR(32) NULL, \
               user_id INT NOT NULL, action VARCHAR(32) NOT NULL, payload VARCHAR(200) NOT NULL, \
               KEY idx_create_on (create_on)) ENGINE=InnoDB;
             USE test;
             INSERT INTO user_logs (create_on, user_id, action, payload)
               SELECT DATE_FORMAT(TIMESTAMP('2024-01-01') + INTERVAL (seq * 26784) SECOND, '%Y-%m-%d %H:%i:%s'),
                      seq, 'login', MD5(seq) FROM seq_0_to_99;
             INSERT INTO user_logs (create_on, user_id, action, payload) VALUES
               ('2024-02-01 00:00:00', 1, 'edge', 'february'), ('2024-1-5 3:03:11', 1, 'anomaly', 'unpadded');",
        )
        .unwrap();
    let edge: EdgeServer = lab.view().unwrap();
    let mut config = lab.config().unwrap();
    config.nginx = edge.settings.clone();
    // A real change for apply to deploy.
    config.nginx.api_burst = 1;
    config.general.metrics_dir = metrics.to_string_lossy().parse().unwrap();
    config.alert.webhook_url = None;
    // The month (~100 rows) in segments of 40, so the segmented pipeline writes its metrics.
    config.archive.segment_docs = opskit_core::config::value::Positive::new(40);
    let toml = dir.join("opskit.toml");
    std::fs::write(&toml, config.to_toml()).unwrap();

    // Commands that share a label rewrite the same file (firewall apply and verify): what each
    // wrote is read right after it ran.
    let mut seen: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut run = |args: &[&str]| {
        opskit(&toml, args);
        for (name, runbooks) in written(&metrics) {
            seen.entry(name).or_default().extend(runbooks);
        }
    };
    run(&["archive", "run", "--month", "2024-01"]);
    // One check group is enough to write every metric (the groups' own behaviour is tested in
    // nginx_cli.rs and opskit-edge); the rate-limit group alone would add ~10 s per run.
    let probe = ["--bot-marker", BOT_MARKER, "--group", "redirect"];
    run(&[&["nginx", "apply"][..], &probe].concat());
    run(&[&["nginx", "probe"][..], &probe].concat());
    run(&["firewall", "apply"]);
    let lab_dir = lab.dir().to_string_lossy().into_owned();
    run(&["firewall", "verify", "--probe", "--lab", &lab_dir]);
    run(&["mysql", "switchover"]);
    run(&["mysql", "topology"]);
    lab.down().unwrap();
    seen
}

#[test]
fn every_metric_in_the_rules_and_the_dashboard_is_one_opskit_writes() {
    let dir = tempfile::Builder::new()
        .prefix("opskit-metrics-")
        .tempdir()
        .unwrap();
    let written = run_every_metric_writer(dir.path());
    let written_names: BTreeSet<String> = written.keys().cloned().collect();
    let written_runbooks: BTreeSet<String> = written.values().flatten().cloned().collect();
    assert_eq!(
        written_runbooks,
        [
            "archive",
            "firewall",
            "mysql",
            "mysql_topology",
            "nginx",
            "nginx_probe"
        ]
        .map(String::from)
        .into(),
        "{written:#?}"
    );

    let rules = read(RULES);
    let dashboard: serde_json::Value = serde_json::from_str(&read(DASHBOARD)).unwrap();
    let dashboard_promql = dashboard_queries(&dashboard)
        .into_iter()
        .map(|(_, e)| e)
        .chain(
            dashboard["templating"]["list"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v["definition"].as_str().unwrap().to_string()),
        )
        .collect::<Vec<_>>()
        .join("\n");
    let doc = read(DOC);
    let doc_today = doc.as_str();

    for (what, text) in [
        (RULES, rules.as_str()),
        (RULE_TESTS, read(RULE_TESTS).as_str()),
        (DASHBOARD, dashboard_promql.as_str()),
        (DOC, doc_today),
    ] {
        let named = metric_names(text);
        assert!(!named.is_empty(), "{what} names no metric");
        let unknown: Vec<&String> = named.difference(&written_names).collect();
        assert!(
            unknown.is_empty(),
            "{what} names metrics opskit does not write: {unknown:?}\nwritten: {written_names:#?}"
        );
    }
    for (what, text) in [
        (RULES, rules.as_str()),
        (DASHBOARD, dashboard_promql.as_str()),
    ] {
        let selected = runbook_selectors(text);
        let unknown: Vec<&String> = selected.difference(&written_runbooks).collect();
        assert!(
            unknown.is_empty(),
            "{what} selects runbook labels opskit does not write: {unknown:?}"
        );
    }
    let documented = metric_names(doc_today);
    let undocumented: Vec<&String> = written_names.difference(&documented).collect();
    assert!(
        undocumented.is_empty(),
        "{DOC} does not document {undocumented:?}"
    );
}
