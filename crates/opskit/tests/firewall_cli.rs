//! `opskit firewall` without a lab: what it prints, and bad policies refused with exit 2 and
//! the key that is wrong, before anything is looked at or changed.

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use opskit_firewall::render::Rendered;

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

const CONTAINERS: &str = r#"
[[firewall.containers]]
name = "Docker_A"
address = "172.30.1.10"
bridge = "br-ab"
published_ports = [8080]

[[firewall.containers]]
name = "Docker_B"
address = "172.30.1.11"
bridge = "br-ab"
private_ports = [3316]

[[firewall.containers]]
name = "Docker_C"
address = "172.30.2.10"
bridge = "br-c"
published_ports = [80]
"#;

#[test]
fn bad_policies_exit_2_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    // (top-level line, then one replacement in the containers, and the key named).
    let cases = [
        (
            "lan_range = \"192.168.1.30-192.168.1.1\"",
            ("", ""),
            "firewall.lan_range",
        ),
        (
            "lan_range = \"192.168.1.1-192.168.1.300\"",
            ("", ""),
            "firewall.lan_range",
        ),
        (
            "lan_range = \"192.168.1.0/24\"",
            ("", ""),
            "firewall.lan_range",
        ),
        ("reading = \"loose\"", ("", ""), "firewall.reading"),
        (
            "allowed_pairs = [[\"Docker_A\", \"Docker_X\"]]",
            ("", ""),
            "firewall.allowed_pairs",
        ),
        ("netns = \"../etc\"", ("", ""), "firewall.netns"),
        (
            "systemd_dir = \"/lib/systemd/system\"",
            ("", ""),
            "firewall.systemd_dir",
        ),
        (
            "",
            ("\"172.30.1.10\"", "\"172.30.1.300\""),
            "firewall.containers.address",
        ),
        (
            "",
            ("\"172.30.2.10\"", "\"192.168.1.20\""),
            "firewall.containers.address",
        ),
        (
            "",
            ("\"br-c\"", "\"a-bridge-name-too-long\""),
            "firewall.containers.bridge",
        ),
        ("", ("\"br-c\"", "\"br c\""), "firewall.containers.bridge"),
        ("", ("\"br-c\"", "\"br-ab\""), "firewall.containers.bridge"),
        ("", ("[8080]", "[0]"), "firewall.containers.published_ports"),
        (
            "",
            ("[80]", "[8080]"),
            "firewall.containers.published_ports",
        ),
        (
            "",
            ("\"Docker_C\"", "\"Docker_A\""),
            "firewall.containers.name",
        ),
    ];
    for (top, (from, to), key) in cases {
        let containers = CONTAINERS.replacen(from, to, 1);
        let cfg = config_file(dir.path(), &format!("[firewall]\n{top}\n{containers}"));
        for cmd in [["firewall", "render"], ["firewall", "apply"]] {
            let out = opskit(&cfg).args(cmd).assert().code(2);
            let err = String::from_utf8_lossy(&out.get_output().stderr).to_string();
            assert!(err.contains(&format!("key `{key}`")), "{top} {to}: {err}");
        }
    }
}

#[test]
fn render_prints_the_commands_by_default_and_the_restore_input_on_request() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_file(dir.path(), "");
    let out = opskit(&cfg).args(["firewall", "render"]).assert().success();
    let commands = String::from_utf8(out.get_output().stdout.clone()).unwrap();
    assert!(commands.starts_with("#!/bin/sh\n"));
    assert!(commands.contains("iptables -w -A DOCKER-USER -i br-c -o br-ab -j DROP"));
    assert!(commands.contains("systemctl restart opskit-firewall.service\n"));
    let out = opskit(&cfg)
        .args([
            "firewall", "render", "--format", "restore", "--output", "json",
        ])
        .assert()
        .success();
    let r: Rendered = serde_json::from_slice(&out.get_output().stdout).unwrap();
    assert_eq!(r.format, "restore");
    assert!(
        r.text
            .contains("*filter\n:DOCKER-USER - [0:0]\n:OPSKIT-INBOUND - [0:0]\n")
    );
    assert_eq!(r.sha256.len(), 64);
    let strict = config_file(dir.path(), "[firewall]\nreading = \"strict\"\n");
    let out = opskit(&strict)
        .args(["firewall", "render", "--format", "restore"])
        .assert()
        .success();
    let text = String::from_utf8(out.get_output().stdout.clone()).unwrap();
    assert!(text.contains("-m iprange ! --src-range 192.168.1.1-192.168.1.30 -j DROP"));
    opskit(&cfg)
        .args(["firewall", "render", "--format", "nft"])
        .assert()
        .code(2);
}

#[test]
fn verify_probe_without_a_firewall_lab_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_file(dir.path(), "");
    let out = opskit(&cfg)
        .args(["firewall", "verify", "--probe", "--lab"])
        .arg(dir.path().join("no-lab"))
        .assert()
        .code(2);
    let err = String::from_utf8_lossy(&out.get_output().stderr).to_string();
    assert!(err.contains("opskit lab up --only firewall"), "{err}");
}
