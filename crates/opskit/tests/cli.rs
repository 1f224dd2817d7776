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
        "archive", "nginx", "firewall", "mysql", "lab", "drill", "config", "generate", "status",
        "history",
    ] {
        assert!(
            text.contains(&format!("  {cmd} ")),
            "--help misses {cmd}:\n{text}"
        );
    }
}

#[test]
fn global_options_are_listed_apart_and_no_command_is_unbuilt() {
    let out = opskit()
        .args(["nginx", "apply", "--help"])
        .assert()
        .success();
    let text = String::from_utf8(out.get_output().stdout.clone()).unwrap();
    let (own, global) = text.split_once("Global options:").expect(&text);
    assert!(
        own.contains("--dry-run") && !own.contains("--config"),
        "{text}"
    );
    for flag in [
        "--config",
        "--state-dir",
        "--output",
        "--log-format",
        "--quiet",
    ] {
        assert!(
            global.contains(flag),
            "{flag} not under Global options:\n{text}"
        );
    }
    // Every runbook is built: `--help` lists each with its verbs, none as "not built yet".
    let out = opskit().arg("--help").assert().success();
    let text = String::from_utf8(out.get_output().stdout.clone()).unwrap();
    assert!(!text.contains("not built"), "{text}");
}

/// Runs opskit with stdout a pipe whose reader is already gone.
fn with_closed_stdout(args: &[&str]) -> std::process::Output {
    use std::os::fd::{FromRawFd, OwnedFd};
    let mut fds = [0; 2];
    // SAFETY: a fresh pipe; both ends are owned below.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    drop(read);
    std::process::Command::new(assert_cmd::cargo::cargo_bin("opskit"))
        .env_remove("OPSKIT_CONFIG")
        .args(args)
        .stdout(std::process::Stdio::from(write))
        .output()
        .unwrap()
}

#[test]
fn a_closed_pipe_never_panics() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().to_string_lossy().to_string();
    for args in [
        vec!["--help"],
        vec!["nginx", "--help"],
        vec!["generate", "man"],
        vec!["generate", "completions", "bash"],
        vec!["config", "show"],
        vec!["nginx", "render"],
        vec!["--state-dir", &state, "status"],
        vec!["--state-dir", &state, "history"],
    ] {
        let out = with_closed_stdout(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}");
    }
}

#[test]
fn man_pages_name_only_pages_that_exist() {
    let dir = tempfile::tempdir().unwrap();
    opskit()
        .args(["generate", "man", "--dir"])
        .arg(dir.path())
        .assert()
        .success();
    let pages: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        pages.contains(&"opskit-nginx-apply.1".to_string()),
        "{pages:?}"
    );
    for page in &pages {
        let text = std::fs::read_to_string(dir.path().join(page)).unwrap();
        for cited in man_refs(&text) {
            assert!(
                pages.contains(&cited),
                "{page} names {cited}, which is not there"
            );
        }
    }
    let out = opskit().args(["generate", "man"]).assert().success();
    let single = String::from_utf8(out.get_output().stdout.clone()).unwrap();
    assert!(man_refs(&single).is_empty(), "{single}");
    assert!(single.contains(".SH \"SEE ALSO\""), "{single}");
}

/// The `name(1)` references of a roff page, as file names (`name.1`).
fn man_refs(text: &str) -> Vec<String> {
    text.split(|c: char| c.is_whitespace())
        .filter_map(|w| w.strip_suffix("(1)"))
        .map(|name| format!("{}.1", name.replace("\\-", "-")))
        .collect()
}

/// Runs opskit on a terminal (util-linux `script`), returning what the terminal showed.
fn on_a_tty(args: &str, no_color: bool) -> String {
    let bin = assert_cmd::cargo::cargo_bin("opskit");
    let mut cmd = std::process::Command::new("script");
    cmd.args(["-qec", &format!("{} {args}", bin.display()), "/dev/null"])
        .env_remove("OPSKIT_CONFIG");
    if no_color {
        cmd.env("NO_COLOR", "1");
    } else {
        cmd.env_remove("NO_COLOR");
    }
    let out = cmd.output().expect("script(1) from util-linux");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn verdicts_are_coloured_on_a_terminal_only_without_no_color() {
    let args = "nginx check --file /nonexistent/nginx.conf";
    let tty = on_a_tty(args, false);
    assert!(tty.contains("\x1b[1;31mFAILED\x1b[0m"), "{tty:?}");
    assert!(!on_a_tty(args, true).contains('\x1b'));
    let piped = opskit().args(args.split(' ')).output().unwrap();
    assert_eq!(piped.status.code(), Some(1));
    assert!(!String::from_utf8_lossy(&piped.stdout).contains('\x1b'));
}

#[test]
fn an_unknown_subcommand_of_a_runbook_is_usage_error() {
    for args in [["mysql", "render"], ["firewall", "switchover"]] {
        opskit()
            .args(args)
            .assert()
            .code(2)
            .stderr(predicate::str::contains("unrecognized subcommand"));
    }
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
