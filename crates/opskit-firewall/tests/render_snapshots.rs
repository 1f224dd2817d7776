//! Snapshot tests of everything the firewall prints: the ruleset and the spec's commands under
//! each reading, and the systemd units (the committed `deploy/systemd/opskit-firewall*` files
//! are exactly what `persist` installs for the defaults). `UPDATE_SNAPSHOTS=1 cargo test`
//! rewrites them; review the diff before committing.

use std::path::PathBuf;
use std::process::Command;

use opskit_core::config::{FirewallConfig, Reading};
use opskit_firewall::persist::{APPLY_UNIT, Install, VERIFY_TIMER, VERIFY_UNIT};
use opskit_firewall::render;
use opskit_firewall::ruleset::Ruleset;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn snapshot(path: PathBuf, text: &str) {
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
        std::fs::write(&path, text).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run with UPDATE_SNAPSHOTS=1 to create it)",
            path.display()
        )
    });
    if want != text {
        let line = want
            .lines()
            .zip(text.lines())
            .position(|(a, b)| a != b)
            .map_or_else(
                || "line counts differ".to_string(),
                |i| format!("line {}", i + 1),
            );
        panic!(
            "{} differs from what is rendered now ({line}; UPDATE_SNAPSHOTS=1 to accept)",
            path.display()
        );
    }
}

fn config(reading: Reading) -> FirewallConfig {
    FirewallConfig {
        reading,
        ..FirewallConfig::default()
    }
}

/// The install of the packaged binary with the system config (`/etc/opskit/opskit.toml`).
fn packaged(cfg: &FirewallConfig) -> Install {
    Install {
        cfg: cfg.clone(),
        opskit: "/usr/local/bin/opskit".into(),
        config_file: None,
    }
}

#[test]
fn rulesets_and_commands_per_reading() {
    for reading in [Reading::Tiered, Reading::Strict] {
        let cfg = config(reading);
        cfg.check().unwrap();
        let rules = Ruleset::compile(&cfg);
        snapshot(
            root().join(format!("tests/snapshots/restore-{reading}.rules")),
            &render::restore(&rules),
        );
        snapshot(
            root().join(format!("tests/snapshots/commands-{reading}.sh")),
            &render::commands(&cfg, &rules, &packaged(&cfg)).unwrap(),
        );
    }
}

#[test]
fn the_commands_serve_every_sentence_and_touch_only_the_policy_chains() {
    let cfg = FirewallConfig::default();
    let rules = Ruleset::compile(&cfg);
    let text = render::commands(&cfg, &rules, &packaged(&cfg)).unwrap();
    for cite in ["§3.1", "§3.2", "§3.3", "§3.4"] {
        assert!(text.contains(&format!("# {cite} ")), "{cite} is not cited");
    }
    // Every iptables command is under a comment, and none touches a chain of Docker's.
    let lines: Vec<&str> = text.lines().collect();
    for (i, l) in lines.iter().enumerate() {
        if l.starts_with("iptables ") {
            assert!(lines[i - 1].starts_with('#'), "no comment above: {l}");
            assert!(
                l.contains(" DOCKER-USER") || l.contains(" OPSKIT-INBOUND"),
                "{l}"
            );
            assert!(!l.contains(" -j ACCEPT"), "{l}");
        }
    }
    let restore = render::restore(&rules);
    assert!(restore.starts_with("# opskit firewall policy"));
    assert_eq!(restore.matches("*filter").count(), 1);
    assert!(!restore.contains("*nat") && !restore.contains(":FORWARD"));
}

#[test]
fn the_deploy_units_are_what_persist_installs() {
    let cfg = FirewallConfig::default();
    let install = packaged(&cfg);
    let deploy = root().join("../../deploy/systemd");
    snapshot(deploy.join(APPLY_UNIT), &install.apply_unit().unwrap());
    snapshot(deploy.join(VERIFY_UNIT), &install.verify_unit());
    snapshot(deploy.join(VERIFY_TIMER), &install.verify_timer());
}

#[test]
fn systemd_accepts_the_units() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = FirewallConfig::default();
    // An opskit path that exists here (systemd checks that every ExecStart= is executable).
    let install = Install {
        opskit: std::env::current_exe().unwrap(),
        ..packaged(&cfg)
    };
    let mut paths = Vec::new();
    for (name, text) in [
        (APPLY_UNIT, install.apply_unit().unwrap()),
        (VERIFY_UNIT, install.verify_unit()),
        (VERIFY_TIMER, install.verify_timer()),
    ] {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        paths.push(p);
    }
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .args(&paths)
        .output()
        .expect("systemd-analyze is installed (systemd)");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && said.trim().is_empty(), "{said}");
}
