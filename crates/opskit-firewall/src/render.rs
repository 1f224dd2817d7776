//! The two printed forms of the policy (pure).
//!
//! - [`restore`]: `iptables-restore --noflush` input, what `apply` loads and `persist` keeps.
//! - [`commands`]: the spec's deliverable, a shell script of plain `iptables` commands in order,
//!   each under a comment citing the sentence of spec §3 it serves, then the commands that make
//!   it persistent. Running it leaves the same rules as `apply`.

use std::fmt::Write as _;
use std::path::Path;

use opskit_core::config::{FirewallConfig, Reading};
use opskit_core::proc::shell_quote;

use crate::persist::{APPLY_UNIT, Install, Target};
use crate::ruleset::{INBOUND_CHAIN, Ruleset, USER_CHAIN};

/// The `iptables-restore --noflush` input, with a comment before every rule.
pub fn restore(ruleset: &Ruleset) -> String {
    ruleset.restore_text(true)
}

/// The `iptables` binary next to the configured `iptables-restore` (`iptables-legacy-restore`
/// → `iptables-legacy`), by its bare name when it lives in root's usual `PATH`.
fn iptables_program(cfg: &FirewallConfig) -> String {
    let restore = cfg.iptables_restore.path();
    let name = restore
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("iptables-restore")
        .replace("-restore", "");
    match restore.parent() {
        Some(d) if d == Path::new("/usr/sbin") || d == Path::new("/sbin") => name,
        Some(d) => d.join(name).display().to_string(),
        None => name,
    }
}

fn words(argv: &[String]) -> String {
    argv.iter()
        .map(|a| shell_quote(a))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The spec's deliverable: the commands, in order, each with the sentence it serves.
pub fn commands(
    cfg: &FirewallConfig,
    ruleset: &Ruleset,
    install: &Install,
) -> anyhow::Result<String> {
    let mut ipt = Vec::new();
    if let Some(ns) = cfg.netns.get() {
        ipt.extend(["ip", "netns", "exec", ns].map(String::from));
    }
    ipt.push(iptables_program(cfg));
    ipt.push("-w".into());
    let ipt = words(&ipt);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "#!/bin/sh\n\
         # Spec §3: iptables for the three Docker containers (opskit firewall render --format commands).\n\
         # Reading: {} ({}). LAN range: {}.\n\
         #\n\
         # What the rules rely on: each container on a fixed address, on a Docker network whose bridge\n\
         # has a fixed name, publishing its ports on IPv4 only (0.0.0.0):",
        cfg.reading,
        match cfg.reading {
            Reading::Tiered =>
                "R1: the LAN range reaches every port, everyone reaches the published ones",
            Reading::Strict =>
                "R2: only the LAN range reaches anything, and only the published ports",
        },
        cfg.lan_range
    );
    for c in &cfg.containers {
        let publish: Vec<String> = match cfg.reading {
            Reading::Tiered => c.ports().collect(),
            Reading::Strict => c.published_ports.clone(),
        }
        .iter()
        .map(|p| format!("-p 0.0.0.0:{p}:{p}"))
        .collect();
        let _ = writeln!(
            out,
            "#   {:<10} {:<15} bridge {:<6} docker run --network <network with bridge {}> --ip {} {}",
            c.name.as_str(),
            c.address.to_string(),
            c.bridge.as_str(),
            c.bridge,
            c.address,
            publish.join(" ")
        );
    }
    let _ = writeln!(
        out,
        "#   (docker network create -o com.docker.network.bridge.name=<bridge> --subnet <subnet> <network>)\n\
         #\n\
         # These commands change the rules one at a time, so for a moment only part of the policy is in\n\
         # place. `opskit firewall apply` loads the same rules in one atomic iptables-restore.\n\
         set -e\n\
         \n\
         # Start from an empty {INBOUND_CHAIN} (opskit's own chain): create it, or empty it.\n\
         {ipt} -N {INBOUND_CHAIN} 2>/dev/null || {ipt} -F {INBOUND_CHAIN}\n\
         # Start from an empty {USER_CHAIN} (Docker creates it and never touches its rules).\n\
         {ipt} -N {USER_CHAIN} 2>/dev/null || {ipt} -F {USER_CHAIN}"
    );
    for r in &ruleset.rules {
        let _ = writeln!(
            out,
            "\n# {} {}\n{ipt} -A {} {}",
            r.serves.cite(),
            r.why,
            r.chain,
            words(&r.args)
        );
    }
    let rules_file = cfg.rules_file.to_string();
    let unit_path = cfg.systemd_dir.path().join(APPLY_UNIT);
    let dir = cfg
        .rules_file
        .path()
        .parent()
        .map(|d| d.display().to_string())
        .unwrap_or_else(|| "/".into());
    let _ = writeln!(
        out,
        "\n# §3.4 Persistent: keep the policy in a file and load it with iptables-restore --noflush before\n\
         # Docker starts, at every boot and with every start or restart of docker.service. Not\n\
         # iptables-services: its restore flushes Docker's chains. (`opskit firewall persist` does the\n\
         # same and adds a verify timer.)\n\
         install -d -m 0755 {dir} {units}\n\
         cat > {rules} <<'EOF'\n{}EOF\n\
         chmod 0600 {rules}\n\
         cat > {unit} <<'EOF'\n{}EOF",
        restore(ruleset),
        install.apply_unit()?,
        dir = shell_quote(&dir),
        units = shell_quote(&cfg.systemd_dir.to_string()),
        rules = shell_quote(&rules_file),
        unit = shell_quote(&unit_path.display().to_string()),
    );
    match Target::of(cfg.systemd_dir.path()) {
        Some(Target::Offline(root)) => {
            let _ = writeln!(
                out,
                "systemctl --root={} enable {APPLY_UNIT}",
                shell_quote(&root.display().to_string())
            );
        }
        _ => {
            let _ = writeln!(
                out,
                "systemctl daemon-reload\nsystemctl enable {APPLY_UNIT}\n\
                 # restart, not start: an active oneshot would not load a changed file\n\
                 systemctl restart {APPLY_UNIT}"
            );
        }
    }
    Ok(out)
}

/// What `opskit firewall render --output json` prints.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Rendered {
    /// `commands` or `restore`.
    pub format: String,
    /// The reading the rules follow.
    pub reading: Reading,
    /// The sha256 of what `apply` loads (comments excluded).
    pub sha256: String,
    /// The printed text.
    pub text: String,
}
