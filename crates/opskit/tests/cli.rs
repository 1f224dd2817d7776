//! The command line as an operator meets it: help, config show/check, exit codes.

use assert_cmd::Command;
use predicates::prelude::*;

fn opskit() -> Command {
    let mut c = Command::cargo_bin("opskit").unwrap();
    c.env_remove("OPSKIT_CONFIG");
    c
}

#[test]
fn help_lists_every_runbook() {
    let out = opskit().arg("--help").assert().success();
    let text = String::from_utf8(out.get_output().stdout.clone()).unwrap();
    for cmd in [
        "archive", "nginx", "firewall", "mysql", "lab", "drill", "config",
    ] {
        assert!(
            text.contains(&format!("  {cmd} ")),
            "--help misses {cmd}:\n{text}"
        );
    }
}

#[test]
fn unbuilt_subcommands_say_so_and_exit_2() {
    opskit()
        .args(["firewall", "render"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("not built yet"));
}

#[test]
fn unknown_flag_is_usage_error() {
    opskit()
        .args(["config", "show", "--bogus"])
        .assert()
        .code(2);
}

#[test]
fn config_show_prints_the_spec_defaults_as_valid_toml() {
    let dir = tempfile::tempdir().unwrap();
    let out = opskit()
        .args(["config", "show"])
        .env("OPSKIT_CONFIG", "")
        .assert()
        .success();
    let text = String::from_utf8(out.get_output().stdout.clone()).unwrap();
    assert!(text.contains("webhook_url = \"https://monitor.ipo.com/webhook/mongodb\""));
    assert!(text.contains("bot_keyword = \"Google Bot\""));
    // What `show` prints is itself a valid config.
    let p = dir.path().join("shown.toml");
    std::fs::write(&p, &text).unwrap();
    opskit()
        .args(["config", "check"])
        .arg(&p)
        .assert()
        .success()
        .stdout(predicate::str::contains("OK"));
}

#[test]
fn config_check_names_file_line_key_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.toml");
    std::fs::write(
        &p,
        "[general]\ntimezone = \"UTC\"\n\n[nginx]\ndomain = \"ipo.com; evil\"\n",
    )
    .unwrap();
    opskit()
        .args(["config", "check"])
        .arg(&p)
        .assert()
        .code(2)
        .stderr(predicate::str::contains("bad.toml:5"))
        .stderr(predicate::str::contains("key `nginx.domain`"))
        .stderr(predicate::str::contains("not a domain name"));
}

#[test]
fn config_file_comes_from_flag_then_env() {
    let dir = tempfile::tempdir().unwrap();
    let env_file = dir.path().join("env.toml");
    std::fs::write(&env_file, "[general]\ntimezone = \"UTC\"\n").unwrap();
    let flag_file = dir.path().join("flag.toml");
    std::fs::write(&flag_file, "[general]\ntimezone = \"Europe/Berlin\"\n").unwrap();
    opskit()
        .args(["config", "show"])
        .env("OPSKIT_CONFIG", &env_file)
        .assert()
        .success()
        .stdout(predicate::str::contains("timezone = \"UTC\""));
    opskit()
        .args(["config", "show", "--config"])
        .arg(&flag_file)
        .env("OPSKIT_CONFIG", &env_file)
        .assert()
        .success()
        .stdout(predicate::str::contains("timezone = \"Europe/Berlin\""));
}

#[test]
fn a_missing_config_file_is_exit_2() {
    opskit()
        .args(["config", "show", "--config", "/nonexistent/opskit.toml"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("/nonexistent/opskit.toml"))
        .stderr(predicate::str::contains("cannot read"));
}

#[test]
fn the_example_config_documents_every_key_and_is_valid() {
    let example = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../deploy/opskit.example.toml"
    );
    opskit()
        .args(["config", "check", example])
        .assert()
        .success();
    let text = std::fs::read_to_string(example).unwrap();
    let shown = opskit()
        .args(["config", "show", "--config", example, "--output", "json"])
        .assert()
        .success();
    let v: serde_json::Value = serde_json::from_slice(&shown.get_output().stdout).unwrap();
    let mut missing = Vec::new();
    collect_keys(&v, "", &mut missing, &text);
    assert!(
        missing.is_empty(),
        "deploy/opskit.example.toml does not mention: {missing:?}"
    );
}

/// Every leaf key of the effective config must appear in the example (set or commented).
fn collect_keys(v: &serde_json::Value, path: &str, missing: &mut Vec<String>, text: &str) {
    if let serde_json::Value::Object(map) = v {
        for (k, child) in map {
            let full = if path.is_empty() {
                k.clone()
            } else {
                format!("{path}.{k}")
            };
            if child.is_object() {
                collect_keys(child, &full, missing, text);
            } else if child
                .as_array()
                .is_some_and(|a| a.iter().any(|e| e.is_object()))
            {
                if !text.contains(&format!("[[{full}]]")) {
                    missing.push(full.clone());
                }
                for element in child.as_array().unwrap() {
                    collect_keys(element, &full, missing, text);
                }
            } else if !text.lines().any(|l| {
                let l = l.trim_start_matches(['#', ' ']);
                l.starts_with(&format!("{k} =")) || l.starts_with(&format!("{k}="))
            }) {
                missing.push(full);
            }
        }
    }
}

#[test]
fn completions_and_man_page_come_from_the_cli_definition() {
    let out = opskit()
        .args(["generate", "completions", "bash"])
        .assert()
        .success();
    let text = String::from_utf8(out.get_output().stdout.clone()).unwrap();
    assert!(text.contains("archive") && text.contains("--log-format"));
    let out = opskit().args(["generate", "man"]).assert().success();
    let text = String::from_utf8(out.get_output().stdout.clone()).unwrap();
    assert!(
        text.starts_with(".ie") || text.contains(".TH opskit"),
        "{}",
        &text[..80]
    );
}

#[test]
fn json_logs_are_one_object_per_line_and_quiet_silences_info() {
    let out = opskit()
        .args(["--log-format", "json", "-v", "config", "show"])
        .assert()
        .success();
    let stderr = String::from_utf8(out.get_output().stderr.clone()).unwrap();
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
        .collect();
    let loaded = lines
        .iter()
        .find(|v| v["message"] == "configuration loaded")
        .expect("the debug line is there with -v");
    assert_eq!(loaded["level"], "DEBUG");
    assert_eq!(loaded["source"], "built-in defaults");
    let out = opskit().args(["-q", "config", "show"]).assert().success();
    assert!(out.get_output().stderr.is_empty());
}
