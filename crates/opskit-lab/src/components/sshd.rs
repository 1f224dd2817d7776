//! OpenSSH sshd serving SFTP only: the backup host `bak.ipo.com` of spec §1.
//!
//! Files under `<lab>/ssh/`: `hostkeys/` (the server's own ed25519 key), `client/id_ed25519`
//! (the login key), `authorized_keys`, `sshd_config`, `known_hosts` (the
//! `[127.0.0.1]:PORT` entry, so host-key checking stays on) and `ssh_config` with the
//! `Host bak.ipo.com` alias. Uploads land in `<lab>/sftp/backup`.
//!
//! The login user is the user running the lab, so no system account is created. As root,
//! sshd needs its compiled-in privilege-separation directory `/run/sshd`; it runs in a private
//! mount namespace (`unshare -m`) with a tmpfs on `/run`, so the host's `/run` is untouched
//! and the mount disappears with the process. When `/run/sshd` already exists, or the lab
//! runs as another user (no privilege separation then), sshd runs directly. A non-root lab
//! needs a normal account: sshd refuses locked ones such as `nobody`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use opskit_core::config::Config;
use opskit_core::proc::{self, Output};
use opskit_core::config::value::AbsPath;

use super::{
    Endpoint, LOOPBACK, LabContext, Server, config_path, tcp_connect, with_free_port, write_file,
};
use crate::daemon::{self, Launch};
use crate::state::{LabState, ServerRecord};

/// The sshd component.
pub struct Sshd;

const KIND: &str = "sshd";
const SSHD: &str = "/usr/sbin/sshd";
const START_TIMEOUT: Duration = Duration::from_secs(15);
const KEYGEN_TIMEOUT: Duration = Duration::from_secs(30);

/// The ssh_config `Host` alias: the spec's backup host, as opskit's config names it.
pub fn host_alias() -> String {
    Config::default().archive.sftp.host.as_str().to_string()
}

impl Server for Sshd {
    fn start(&self, ctx: &LabContext, previous: &[ServerRecord]) -> Result<Vec<ServerRecord>> {
        let ssh = ctx.mkdir("ssh")?;
        ctx.mkdir("ssh/hostkeys")?;
        ctx.mkdir("ssh/client")?;
        let backup = ctx.mkdir("sftp/backup")?;
        let host_key = ssh.join("hostkeys/ssh_host_ed25519_key");
        let client_key = ssh.join("client/id_ed25519");
        keygen(&host_key, "opskit-lab sshd host key")?;
        keygen(&client_key, "opskit-lab client")?;
        let client_pub = read_pub(&client_key)?;
        // `restrict` turns off forwarding, pty and agent for this key whatever sshd_config says.
        write_file(
            &ssh.join("authorized_keys"),
            &format!("restrict {client_pub}\n"),
            0o600,
        )?;
        let sshd_config = ssh.join("sshd_config");
        let log = ssh.join("sshd.log");
        let preferred = previous.iter().find_map(|r| r.port);
        let mut record = with_free_port(preferred, |port| {
            let text = sshd_config_text(ctx, port, &host_key, &backup).map_err(|e| {
                start_error(&log, format!("could not be configured: {e:#}"))
            })?;
            write_file(&sshd_config, &text, 0o600)
                .map_err(|e| start_error(&log, format!("could not be configured: {e:#}")))?;
            let launch = launch(ctx, &sshd_config, &log)
                .map_err(|e| start_error(&log, format!("could not be configured: {e:#}")))?;
            ctx.start_process(
                KIND,
                launch,
                Endpoint {
                    address: None,
                    port: Some(port),
                    socket: None,
                },
                START_TIMEOUT,
                || banner(port),
            )
        })?;
        let port = record.port.expect("sshd has a port");
        let known_hosts = ssh.join("known_hosts");
        write_file(
            &known_hosts,
            &format!("[{LOOPBACK}]:{port} {}\n", read_pub(&host_key)?),
            0o644,
        )?;
        let ssh_config = ssh.join("ssh_config");
        let alias = host_alias();
        write_file(
            &ssh_config,
            &ssh_config_text(&alias, port, ctx.user(), &client_key, &known_hosts)?,
            0o600,
        )?;
        for (k, v) in [
            ("ssh_config", config_path(&ssh_config)?),
            ("host_alias", alias.as_str()),
            ("user", ctx.user()),
            ("backup_dir", config_path(&backup)?),
            ("known_hosts", config_path(&known_hosts)?),
            ("identity_file", config_path(&client_key)?),
        ] {
            record.details.insert(k.into(), v.into());
        }
        Ok(vec![record])
    }

    fn probe(&self, _ctx: &LabContext, record: &ServerRecord) -> Result<()> {
        banner(record.port.context("sshd has no port in lab.json")?)
    }

    fn configure(&self, records: &[ServerRecord], config: &mut Config) -> Result<()> {
        let r = records.first().context("no sshd record")?;
        config.archive.sftp.ssh_config = Some(
            r.detail("ssh_config")?
                .parse::<AbsPath>()
                .map_err(anyhow::Error::msg)?,
        );
        Ok(())
    }
}

fn start_error(log: &Path, reason: String) -> daemon::StartError {
    daemon::StartError {
        name: KIND.into(),
        reason,
        log: log.to_path_buf(),
        log_tail: String::new(),
        address_in_use: false,
    }
}

/// Generates an ed25519 key without a passphrase unless it already exists.
fn keygen(path: &Path, comment: &str) -> Result<()> {
    if path.exists() && path.with_extension("pub").exists() {
        return Ok(());
    }
    let _ = std::fs::remove_file(path);
    proc::run(
        Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
            .arg(path),
        KEYGEN_TIMEOUT,
    )
    .and_then(proc::Output::checked)
    .with_context(|| format!("generating the key {}", path.display()))?;
    Ok(())
}

/// `type base64` of a key's `.pub` file (the comment dropped).
fn read_pub(key: &Path) -> Result<String> {
    let p = key.with_extension("pub");
    let text = std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
    let mut parts = text.split_whitespace();
    match (parts.next(), parts.next()) {
        (Some(t), Some(k)) => Ok(format!("{t} {k}")),
        _ => bail!("{} is not an OpenSSH public key", p.display()),
    }
}

fn sshd_config_text(ctx: &LabContext, port: u16, host_key: &Path, backup: &Path) -> Result<String> {
    let dir = config_path(ctx.dir())?;
    let host_key = config_path(host_key)?;
    let backup = config_path(backup)?;
    let user = ctx.user();
    Ok(format!(
        "# Written by `opskit lab up`: the lab's SFTP backup host. Regenerated on every start.
ListenAddress {LOOPBACK}:{port}
HostKey {host_key}
PidFile {dir}/ssh/sshd.pid
AuthorizedKeysFile {dir}/ssh/authorized_keys
# The lab usually lives under /tmp (mode 1777), which StrictModes rejects for key files.
StrictModes no
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
UsePAM no
AllowUsers {user}
AllowTcpForwarding no
AllowAgentForwarding no
AllowStreamLocalForwarding no
X11Forwarding no
PermitTTY no
PermitTunnel no
PermitUserEnvironment no
LogLevel VERBOSE
Subsystem sftp internal-sftp
# SFTP only, starting in the backup directory.
ForceCommand internal-sftp -d {backup}
"
    ))
}

fn ssh_config_text(
    alias: &str,
    port: u16,
    user: &str,
    identity: &Path,
    known_hosts: &Path,
) -> Result<String> {
    Ok(format!(
        "# Written by `opskit lab up`: the backup host {alias} of the lab. Use with `ssh -F`.
Host {alias}
    HostName {LOOPBACK}
    Port {port}
    User {user}
    IdentityFile {identity}
    IdentitiesOnly yes
    UserKnownHostsFile {known_hosts}
    GlobalKnownHostsFile /dev/null
    StrictHostKeyChecking yes
    BatchMode yes
    PasswordAuthentication no
    ConnectTimeout 10
    LogLevel ERROR
",
        identity = config_path(identity)?,
        known_hosts = config_path(known_hosts)?,
    ))
}

/// The sshd launch: directly as a normal user; as root in a private mount namespace that
/// gives sshd a `/run/sshd` of its own.
fn launch(ctx: &LabContext, sshd_config: &Path, log: &Path) -> Result<Launch> {
    // Not root: no privilege separation, so no /run/sshd. Root on a host that already has
    // /run/sshd (where the system sshd ran once): nothing to provide either.
    if !ctx.is_root() || Path::new("/run/sshd").is_dir() {
        return Ok(Launch::new(KIND, SSHD, log)
            .arg("-D")
            .arg("-e")
            .arg("-f")
            .arg(sshd_config));
    }
    let script = ctx.path("ssh/start-sshd.sh");
    write_file(
        &script,
        &format!(
            "#!/bin/sh
# Written by `opskit lab up`; runs under `unshare -m` (a private mount namespace).
# sshd run by root needs its compiled-in /run/sshd: a tmpfs on /run provides it here without
# touching the host's /run. The mount goes away with this namespace when sshd exits.
set -e
mount -t tmpfs -o mode=0755,size=1m opskit-lab-run /run
mkdir -m 0755 /run/sshd
exec {SSHD} -D -e -f {}
",
            config_path(sshd_config)?
        ),
        0o700,
    )?;
    Ok(Launch::new(KIND, "unshare", log)
        .arg("--mount")
        .arg("--propagation")
        .arg("private")
        .arg("/bin/sh")
        .arg(script))
}

/// Reads the SSH identification line: sshd is listening and serving.
fn banner(port: u16) -> Result<()> {
    use std::io::Read as _;
    let mut s = tcp_connect(port)?;
    let mut buf = [0u8; 8];
    s.read_exact(&mut buf)
        .with_context(|| format!("reading the SSH banner on port {port}"))?;
    if &buf != b"SSH-2.0-" {
        bail!("port {port} answered {:?}, not an SSH banner", String::from_utf8_lossy(&buf));
    }
    Ok(())
}

/// The lab's SFTP server as a test or drill sees it.
#[derive(Debug, Clone)]
pub struct SftpServer {
    /// Its TCP port on 127.0.0.1.
    pub port: u16,
    /// The ssh_config to pass with `-F` (the alias with port, key and known_hosts).
    pub ssh_config: PathBuf,
    /// The `Host` alias (`bak.ipo.com`).
    pub host_alias: String,
    /// The login user.
    pub user: String,
    /// Where uploads land (the SFTP start directory).
    pub backup_dir: PathBuf,
    /// The known_hosts file with the server's key.
    pub known_hosts: PathBuf,
    /// The client's private key.
    pub identity_file: PathBuf,
}

impl crate::LabView for SftpServer {
    fn from_state(state: &LabState) -> Result<SftpServer> {
        let r = state
            .server(KIND)
            .with_context(|| format!("the lab in {} runs no sshd", state.dir.display()))?;
        Ok(SftpServer {
            port: r.port.context("sshd has no port in lab.json")?,
            ssh_config: r.detail("ssh_config")?.into(),
            host_alias: r.detail("host_alias")?.into(),
            user: r.detail("user")?.into(),
            backup_dir: r.detail("backup_dir")?.into(),
            known_hosts: r.detail("known_hosts")?.into(),
            identity_file: r.detail("identity_file")?.into(),
        })
    }
}

impl SftpServer {
    /// `sftp -F <ssh_config>`: add arguments and the host alias yourself.
    pub fn sftp_command(&self) -> Command {
        let mut c = Command::new("sftp");
        c.arg("-F").arg(&self.ssh_config);
        c
    }

    /// Runs an `sftp -b -` batch (commands on stdin) against the alias; fails with sftp's
    /// output when any command fails.
    pub fn sftp_batch(&self, commands: &str) -> Result<Output> {
        proc::run_with_input(
            self.sftp_command()
                .arg("-b")
                .arg("-")
                .arg(&self.host_alias),
            Some(commands.as_bytes()),
            Duration::from_secs(30),
        )?
        .checked()
    }
}
