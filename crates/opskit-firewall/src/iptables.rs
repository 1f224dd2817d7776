//! The iptables adapter: the only code that runs `iptables-restore` and `iptables-save`.
//!
//! Every load is one `iptables-restore -w 10 --noflush` transaction: the `*filter` table is
//! committed at once (nf_tables: one netlink batch; legacy: one table replace), so a load
//! either happens whole or not at all. `--noflush` keeps every chain the file does not
//! declare, which is how the policy loads on top of Docker's rules.
//!
//! Normalising: iptables prints rules in its own canonical spelling (`-m tcp` added, negation
//! moved, ranges rewritten), which differs between versions. So the compiled rules are never
//! compared with the live ones as text; they are first loaded into a throw-away network
//! namespace (`unshare --net`) with the same binaries and read back with `iptables-save`
//! ([`Iptables::canonical`]). That load is also the strictest test there is: unlike
//! `iptables-restore --test` on nf_tables, it catches a jump to a missing chain.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use opskit_core::config::FirewallConfig;
use opskit_core::proc;
use serde::{Deserialize, Serialize};

/// Time limit of one iptables call (the `-w 10` lock wait included).
pub const IPTABLES_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `iptables-restore` waits for the xtables lock (legacy backend).
pub const LOCK_WAIT_SECS: u32 = 10;

/// Which kernel interface an iptables binary drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendKind {
    /// `iptables-nft` (RHEL/Rocky 8, Debian 11+).
    NfTables,
    /// `iptables-legacy` (x_tables).
    Legacy,
}

/// What `iptables-restore --version` says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backend {
    /// `1.8.4`.
    pub version: String,
    /// nf_tables or legacy.
    pub kind: BackendKind,
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.kind {
            BackendKind::NfTables => "nf_tables",
            BackendKind::Legacy => "legacy",
        };
        write!(f, "iptables v{} ({kind})", self.version)
    }
}

/// Parses `iptables-restore v1.8.9 (nf_tables)` (any of the tools' `--version` lines).
pub fn parse_version(text: &str) -> Option<Backend> {
    let line = text.lines().find(|l| l.contains(" v"))?;
    let version = line
        .split(" v")
        .nth(1)?
        .split_whitespace()
        .next()?
        .to_string();
    let kind = if line.contains("(nf_tables)") {
        BackendKind::NfTables
    } else if line.contains("(legacy)") {
        BackendKind::Legacy
    } else {
        // iptables before 1.8 has only the legacy backend and prints no suffix.
        BackendKind::Legacy
    };
    Some(Backend { version, kind })
}

/// Finds a program in `$PATH`, then in the sbin directories (root's tools live there).
pub fn find_program(name: &str) -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .with_context(|| format!("`{name}` is not installed (looked in $PATH and /usr/sbin)"))
}

/// The host's iptables, possibly inside a network namespace.
#[derive(Debug, Clone)]
pub struct Iptables {
    restore: PathBuf,
    save: PathBuf,
    netns: Option<String>,
}

impl Iptables {
    /// The binaries and namespace of the `[firewall]` settings.
    pub fn from_config(cfg: &FirewallConfig) -> Iptables {
        Iptables {
            restore: cfg.iptables_restore.path().to_path_buf(),
            save: cfg.iptables_save.path().to_path_buf(),
            netns: cfg.netns.get().map(str::to_string),
        }
    }

    /// The namespace the commands run in, if not the host's own.
    pub fn netns(&self) -> Option<&str> {
        self.netns.as_deref()
    }

    /// The argv prefix that runs a program in the namespace (`ip netns exec NS`), absolute.
    pub fn prefix(&self) -> Result<Vec<String>> {
        Ok(match &self.netns {
            Some(ns) => vec![
                find_program("ip")?.display().to_string(),
                "netns".into(),
                "exec".into(),
                ns.clone(),
            ],
            None => Vec::new(),
        })
    }

    fn command(&self, program: &Path, args: &[&str]) -> Command {
        let mut cmd = match &self.netns {
            Some(ns) => {
                // Not installed: the command fails to start and its error names `ip`.
                let mut c = Command::new(find_program("ip").unwrap_or_else(|_| "ip".into()));
                c.args(["netns", "exec", ns]).arg(program);
                c
            }
            None => Command::new(program),
        };
        cmd.args(args);
        cmd
    }

    /// `iptables-restore -w 10 [--test] --noflush` reading the ruleset on stdin.
    pub fn restore_command(&self, test: bool) -> Command {
        let wait = LOCK_WAIT_SECS.to_string();
        let mut args = vec!["-w", wait.as_str()];
        if test {
            args.push("--test");
        }
        args.push("--noflush");
        self.command(&self.restore, &args)
    }

    /// `iptables-save -t <table>`.
    pub fn save_command(&self, table: &str) -> Command {
        self.command(&self.save, &["-t", table])
    }

    /// Loads `text` in one transaction. On error nothing was changed.
    pub fn load(&self, text: &str) -> Result<()> {
        proc::run_with_input(
            &mut self.restore_command(false),
            Some(text.as_bytes()),
            IPTABLES_TIMEOUT,
        )?
        .checked()?;
        Ok(())
    }

    /// Parses and checks `text` without committing it (`--test`).
    pub fn test(&self, text: &str) -> Result<()> {
        proc::run_with_input(
            &mut self.restore_command(true),
            Some(text.as_bytes()),
            IPTABLES_TIMEOUT,
        )?
        .checked()?;
        Ok(())
    }

    /// `iptables-save -t <table>` as text.
    pub fn save(&self, table: &str) -> Result<String> {
        Ok(proc::run(&mut self.save_command(table), IPTABLES_TIMEOUT)?
            .checked()?
            .stdout_text())
    }

    /// The live `filter` table, parsed.
    pub fn filter(&self) -> Result<SavedTable> {
        let text = self.save("filter")?;
        Ok(SavedTable::parse(&text, "filter"))
    }

    /// The backend of `iptables-restore` and `iptables-save`; an error when they differ (a
    /// policy loaded through one would be invisible to the other).
    pub fn backend(&self) -> Result<Backend> {
        let version = |p: &Path| -> Result<Backend> {
            let out = proc::run(Command::new(p).arg("--version"), IPTABLES_TIMEOUT)?.checked()?;
            let text = format!("{}{}", out.stdout_text(), out.stderr_text());
            parse_version(&text)
                .with_context(|| format!("`{} --version` printed no version: {text}", p.display()))
        };
        let restore = version(&self.restore)?;
        let save = version(&self.save)?;
        if restore.kind != save.kind {
            bail!(
                "{} is {restore} but {} is {save}: the two must drive the same backend",
                self.restore.display(),
                self.save.display()
            );
        }
        Ok(restore)
    }

    /// The scratch-namespace command of [`Iptables::canonical`], for plans.
    pub fn canonical_command(&self) -> Result<Command> {
        let mut cmd = Command::new(find_program("unshare")?);
        cmd.args(["--net", "--"])
            .arg(find_program("sh")?)
            .args(["-c", r#""$1" -w 10 && "$2" -t filter"#, "sh"])
            .arg(&self.restore)
            .arg(&self.save);
        Ok(cmd)
    }

    /// Loads `text` into a fresh, empty network namespace that disappears with the command,
    /// and returns that namespace's `filter` table: the rules exactly as this iptables prints
    /// them. Fails when the kernel refuses the ruleset.
    pub fn canonical(&self, text: &str) -> Result<SavedTable> {
        let out = proc::run_with_input(
            &mut self.canonical_command()?,
            Some(text.as_bytes()),
            IPTABLES_TIMEOUT,
        )?
        .checked()
        .context("loading the ruleset into a throw-away network namespace")?;
        Ok(SavedTable::parse(&out.stdout_text(), "filter"))
    }
}

/// One chain of an `iptables-save` dump.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedChain {
    /// `ACCEPT`/`DROP` for a built-in chain, `-` for a user chain.
    pub policy: String,
    /// Its rules as `-A CHAIN …` lines, in order.
    pub rules: Vec<String>,
}

/// One table of an `iptables-save` dump.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedTable {
    /// Chain name → chain.
    pub chains: BTreeMap<String, SavedChain>,
    /// `iptables-nft-save` warned that legacy tables exist beside it.
    pub legacy_tables_present: bool,
}

impl SavedTable {
    /// Parses the `*<table>` section of `iptables-save` output (an absent table is empty).
    pub fn parse(text: &str, table: &str) -> SavedTable {
        let mut t = SavedTable {
            legacy_tables_present: text.contains("iptables-legacy tables present"),
            ..SavedTable::default()
        };
        let mut inside = false;
        for line in text.lines() {
            let line = line.trim_end();
            if let Some(name) = line.strip_prefix('*') {
                inside = name == table;
                continue;
            }
            if !inside || line.starts_with('#') {
                continue;
            }
            if line == "COMMIT" {
                inside = false;
            } else if let Some(decl) = line.strip_prefix(':') {
                let mut parts = decl.split_whitespace();
                if let Some(name) = parts.next() {
                    t.chains.entry(name.to_string()).or_default().policy =
                        parts.next().unwrap_or("-").to_string();
                }
            } else if let Some(rest) = line.strip_prefix("-A ")
                && let Some(chain) = rest.split_whitespace().next()
            {
                t.chains
                    .entry(chain.to_string())
                    .or_default()
                    .rules
                    .push(line.to_string());
            }
        }
        t
    }

    /// The rules of `chain` (`None` when the chain does not exist).
    pub fn rules(&self, chain: &str) -> Option<&[String]> {
        self.chains.get(chain).map(|c| c.rules.as_slice())
    }

    /// `iptables-restore --noflush` text that puts `chains` back exactly as they are here; a
    /// chain that does not exist here is emptied (see [`SavedTable::missing`]).
    pub fn restore_text_for(&self, chains: &[&str]) -> String {
        let mut out = String::from("*filter\n");
        for c in chains {
            out.push_str(&format!(":{c} - [0:0]\n"));
        }
        for c in chains {
            for r in self.rules(c).unwrap_or_default() {
                out.push_str(r);
                out.push('\n');
            }
        }
        out.push_str("COMMIT\n");
        out
    }

    /// Which of `chains` do not exist here.
    pub fn missing<'a>(&self, chains: &[&'a str]) -> Vec<&'a str> {
        chains
            .iter()
            .copied()
            .filter(|c| !self.chains.contains_key(*c))
            .collect()
    }
}

/// `iptables-save` output without what changes by itself: comment lines (they carry the time)
/// and packet/byte counters. Two dumps with equal canonical text hold the same rules in the
/// same order.
pub fn without_counters(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let line = match (line.starts_with(':'), line.rfind(" [")) {
            (true, Some(i)) if line.ends_with(']') => &line[..i],
            _ => line,
        };
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAVE: &str = "# Generated by iptables-save v1.8.9 (nf_tables) on Wed Dec  2 18:33:37 2026
*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [12:720]
:OUTPUT ACCEPT [0:0]
:DOCKER-USER - [0:0]
-A FORWARD -j DOCKER-USER
-A DOCKER-USER -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN
COMMIT
# Completed on Wed Dec  2 18:33:37 2026
*nat
:PREROUTING ACCEPT [0:0]
-A PREROUTING -j DOCKER
COMMIT
";

    #[test]
    fn saves_parse_by_table_and_chain() {
        let t = SavedTable::parse(SAVE, "filter");
        assert_eq!(t.chains["FORWARD"].policy, "DROP");
        assert_eq!(t.rules("FORWARD").unwrap(), ["-A FORWARD -j DOCKER-USER"]);
        assert_eq!(t.rules("DOCKER-USER").unwrap().len(), 1);
        assert!(t.rules("PREROUTING").is_none());
        assert_eq!(
            t.missing(&["DOCKER-USER", "OPSKIT-INBOUND"]),
            ["OPSKIT-INBOUND"]
        );
        let back = t.restore_text_for(&["DOCKER-USER", "OPSKIT-INBOUND"]);
        assert_eq!(
            back,
            "*filter\n:DOCKER-USER - [0:0]\n:OPSKIT-INBOUND - [0:0]\n\
             -A DOCKER-USER -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN\nCOMMIT\n"
        );
    }

    #[test]
    fn counters_and_timestamps_are_not_part_of_a_ruleset() {
        let later = SAVE
            .replace("[12:720]", "[99:5940]")
            .replace("18:33:37", "19:00:00");
        assert_eq!(without_counters(SAVE), without_counters(&later));
        assert!(without_counters(SAVE).contains(":FORWARD DROP\n"));
        let changed = SAVE.replace("RELATED,ESTABLISHED", "ESTABLISHED");
        assert_ne!(without_counters(SAVE), without_counters(&changed));
    }

    #[test]
    fn versions_name_the_backend() {
        let nft = parse_version("iptables-restore v1.8.4 (nf_tables)\n").unwrap();
        assert_eq!(nft.kind, BackendKind::NfTables);
        assert_eq!(nft.version, "1.8.4");
        let legacy = parse_version("iptables-restore v1.8.9 (legacy)").unwrap();
        assert_eq!(legacy.kind, BackendKind::Legacy);
        assert_eq!(legacy.to_string(), "iptables v1.8.9 (legacy)");
        assert!(parse_version("nonsense").is_none());
    }
}
