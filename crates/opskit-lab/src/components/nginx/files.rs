//! The files of the lab's edge: the rendered config (paths rebased into one directory),
//! php-fpm's config and socket path, a bot upstream (a second nginx) with its own certificate
//! from a lab CA, and the `/www` fixtures. The processes are started by the component
//! ([`super::Nginx`]) through the lab's `daemon`, like every lab server.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, bail};
use opskit_core::config::NginxConfig;
use opskit_core::proc;
use opskit_edge::{check, render};
use serde::{Deserialize, Serialize};

/// Header the lab's bot upstream puts on every response (`--bot-marker`).
pub const BOT_MARKER: &str = "X-Bot-Upstream: lab";
/// Time limit of every helper command (openssl, gzip).
const CMD_TIMEOUT: Duration = Duration::from_secs(20);

/// Where the rig's pieces live and listen.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RigLayout {
    /// The rig's directory.
    pub dir: PathBuf,
    /// Plain-HTTP port of the edge.
    pub http_port: u16,
    /// HTTPS port of the edge.
    pub https_port: u16,
    /// HTTPS port of the bot upstream.
    pub bot_port: u16,
}

impl RigLayout {
    /// A layout in `dir` with free loopback ports.
    pub fn with_free_ports(dir: &Path) -> anyhow::Result<RigLayout> {
        Ok(RigLayout {
            dir: dir.to_path_buf(),
            http_port: free_port()?,
            https_port: free_port()?,
            bot_port: free_port()?,
        })
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    /// php-fpm's config (`daemonize = yes`; run with `-F` to keep it in the foreground).
    pub fn php_fpm_conf(&self) -> PathBuf {
        self.path("php-fpm.conf")
    }

    /// php-fpm's socket.
    pub fn php_fpm_socket(&self) -> PathBuf {
        self.path("run/php-fpm.sock")
    }

    /// The bot upstream's nginx prefix (its config is `nginx.conf` in it, logs in `logs/`).
    pub fn bot_prefix(&self) -> PathBuf {
        self.path("bot")
    }

    /// The bot upstream's nginx config.
    pub fn bot_conf(&self) -> PathBuf {
        self.path("bot/nginx.conf")
    }

    /// The edge's nginx prefix.
    pub fn edge_prefix(&self) -> PathBuf {
        self.path("edge")
    }

    /// The edge's nginx config (the rendered spec §2 config).
    pub fn edge_conf(&self) -> PathBuf {
        self.path("edge/nginx.conf")
    }

    fn abs(&self, rel: &str) -> opskit_core::config::value::AbsPath {
        self.path(rel)
            .to_string_lossy()
            .parse()
            .expect("the rig directory is a safe absolute path")
    }

    /// The spec §2 settings with every path rebased into the rig directory and loopback ports;
    /// the rest (rate, burst, headers, routing) stays at `base`.
    pub fn settings(&self, base: &NginxConfig, nginx_version: &str) -> NginxConfig {
        let mut c = base.clone();
        c.nginx_version = nginx_version.to_string();
        c.http_listen = vec![format!("127.0.0.1:{}", self.http_port)];
        c.https_listen = vec![format!("127.0.0.1:{}", self.https_port)];
        c.bot_upstream_address = format!("127.0.0.1:{}", self.bot_port);
        c.bot_upstream_ca = self.abs("pki/ca.crt");
        c.resolver = None;
        c.php_fpm_socket = self.abs("run/php-fpm.sock");
        c.api_root = self.abs("www/api");
        c.web_root = self.abs("www/ipo");
        c.static_root = None;
        c.tls_certificate = self.abs("pki/ipo.com.crt");
        c.tls_certificate_key = self.abs("pki/ipo.com.key");
        c.open_file_cache_valid_secs = 1;
        c.user = "nobody nogroup".into();
        c.worker_connections = 1024;
        c.pid_file = self.abs("edge/nginx.pid");
        c.error_log = self.abs("edge/logs/error.log");
        c.access_log = self.abs("edge/logs/access.log");
        c.temp_dir = Some(self.abs("edge/tmp"));
        c.modules_include = Vec::new();
        c.http_includes = vec![self.abs("edge/conf.d/*.conf")];
        c.allowed_roots = vec![self.abs("www")];
        c.config_path = self.abs("edge/nginx.conf");
        c.nginx_prefix = Some(self.abs("edge"));
        c.probe_url = format!("https://{}:{}", c.domain, self.https_port);
        c.probe_http_port = self.http_port;
        c.probe_resolve = vec![format!("{}:{}:127.0.0.1", c.domain, self.https_port)];
        c.probe_cacert = Some(self.abs("pki/ca.crt"));
        c
    }
}

/// Writes everything the rig's processes need (tree, PKI, fixtures, php-fpm, bot and edge
/// configs) and returns the edge settings, rendered for the installed nginx.
pub fn prepare(layout: &RigLayout, base: &NginxConfig) -> anyhow::Result<NginxConfig> {
    let (a, b, c) = check::installed_version(base.nginx_binary.path())?;
    let settings = layout.settings(base, &format!("{a}.{b}.{c}"));
    prepare_tree(layout)?;
    make_pki(layout, &settings)?;
    write_fixtures(layout)?;
    write_php_fpm_conf(layout)?;
    std::fs::write(layout.bot_conf(), bot_config(layout))?;
    std::fs::write(layout.edge_conf(), render::render(&settings))?;
    Ok(settings)
}

fn free_port() -> anyhow::Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("finding a free loopback port")?;
    Ok(l.local_addr()?.port())
}

/// The installed php-fpm binary.
pub fn php_fpm_binary() -> anyhow::Result<PathBuf> {
    for candidate in [
        "/usr/sbin/php-fpm8.2",
        "/usr/sbin/php-fpm",
        "/usr/sbin/php-fpm8.3",
        "/usr/sbin/php-fpm8.1",
    ] {
        if Path::new(candidate).exists() {
            return Ok(candidate.into());
        }
    }
    bail!("no php-fpm binary found in /usr/sbin (install php-fpm)")
}

fn set_mode(path: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {mode:o} {}", path.display()))
}

fn prepare_tree(l: &RigLayout) -> anyhow::Result<()> {
    for d in [
        "",
        "pki",
        "run",
        "edge/logs",
        "edge/conf.d",
        "edge/tmp",
        "bot/logs",
        "bot/tmp",
        "www/api",
        "www/ipo/public",
        "www/ipo/static",
    ] {
        std::fs::create_dir_all(l.path(d))?;
        set_mode(&l.path(d), 0o755)?;
    }
    // Workers run as nobody: every parent of the rig must be traversable.
    let mut p = l.dir.parent();
    while let Some(dir) = p {
        if dir.starts_with(std::env::temp_dir()) && dir != std::env::temp_dir() {
            set_mode(dir, 0o755)?;
        }
        p = dir.parent();
    }
    Ok(())
}

fn openssl(args: &[&str], cwd: &Path) -> anyhow::Result<()> {
    let mut cmd = Command::new("openssl");
    cmd.args(args).current_dir(cwd);
    proc::run(&mut cmd, CMD_TIMEOUT)?.checked()?;
    Ok(())
}

fn make_pki(l: &RigLayout, s: &NginxConfig) -> anyhow::Result<()> {
    let pki = l.path("pki");
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec![
        "req", "-x509", "-days", "30", "-keyout", "ca.key", "-out", "ca.crt",
    ];
    ca.extend(ec);
    ca.extend([
        "-subj",
        "/CN=opskit lab CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    openssl(&ca, &pki)?;
    for (name, host) in [
        ("ipo.com", s.domain.to_string()),
        ("bot", s.bot_upstream.to_string()),
    ] {
        let key = format!("{name}.key");
        let csr = format!("{name}.csr");
        let crt = format!("{name}.crt");
        let ext = format!("{name}.ext");
        std::fs::write(
            pki.join(&ext),
            format!(
                "subjectAltName=DNS:{host}\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n"
            ),
        )?;
        let mut req = vec!["req", "-keyout", &key, "-out", &csr];
        req.extend(ec);
        let subj = format!("/CN={host}");
        req.extend(["-subj", &subj]);
        openssl(&req, &pki)?;
        openssl(
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "30",
                "-out",
                &crt,
                "-extfile",
                &ext,
            ],
            &pki,
        )?;
    }
    for f in ["ipo.com.key", "bot.key", "ca.key"] {
        set_mode(&pki.join(f), 0o600)?;
    }
    Ok(())
}

/// The lab's landing page: says what it is and echoes the query string.
const LANDING_PHP: &str = r#"<?php
header('Content-Type: application/json');
echo json_encode(['page' => 'landing', 'query' => $_SERVER['QUERY_STRING'] ?? '']), "\n";
"#;

fn write_fixtures(l: &RigLayout) -> anyhow::Result<()> {
    let css = opskit_edge::probe::static_text("css");
    let files: [(&str, Vec<u8>); 5] = [
        ("www/api/landing.php", LANDING_PHP.into()),
        (
            "www/ipo/index.html",
            b"<!doctype html><title>ipo.com</title>ipo.com lab index\n".to_vec(),
        ),
        (
            "www/ipo/public/index.html",
            b"<!doctype html><title>ipo.com</title>ipo.com lab public index\n".to_vec(),
        ),
        ("www/ipo/static/app.css", css.clone().into_bytes()),
        (
            "www/ipo/static/app.css.gz",
            opskit_edge::probe::gzip_stored(css.as_bytes()),
        ),
    ];
    for (rel, bytes) in files {
        std::fs::write(l.path(rel), bytes)?;
        set_mode(&l.path(rel), 0o644)?;
    }
    compress_best_effort(&l.path("www/ipo/static/app.css"));
    Ok(())
}

/// Replaces `<file>.gz` by `gzip -9 -n` output, as a build step would (the stored `.gz`
/// stays when gzip is not installed).
fn compress_best_effort(file: &Path) {
    let mut cmd = Command::new("gzip");
    cmd.args(["-9", "-n", "-k", "-f"]).arg(file);
    match proc::run(&mut cmd, CMD_TIMEOUT) {
        Ok(out) if out.success() => {
            let _ = set_mode(&file.with_extension("css.gz"), 0o644);
        }
        _ => tracing::debug!(
            "gzip unavailable; keeping the stored .gz of {}",
            file.display()
        ),
    }
}

fn write_php_fpm_conf(l: &RigLayout) -> anyhow::Result<()> {
    let d = l.dir.display();
    let text = format!(
        "[global]\npid = {d}/run/php-fpm.pid\nerror_log = {d}/run/php-fpm.log\ndaemonize = yes\n\n\
         [www]\nuser = nobody\ngroup = nogroup\nlisten = {d}/run/php-fpm.sock\n\
         listen.owner = nobody\nlisten.group = nogroup\nlisten.mode = 0660\n\
         pm = static\npm.max_children = 4\nsecurity.limit_extensions = .php\n\
         php_admin_value[cgi.fix_pathinfo] = 0\nphp_admin_flag[expose_php] = off\n\
         catch_workers_output = yes\n"
    );
    std::fs::write(l.path("php-fpm.conf"), text)?;
    Ok(())
}

fn bot_config(l: &RigLayout) -> String {
    let d = l.dir.display();
    let mut temp = String::new();
    for kind in ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"] {
        temp.push_str(&format!("    {kind}_temp_path {d}/bot/tmp/{kind};\n"));
    }
    format!(
        "# The lab's bot.ipo.com: echoes what the edge sent.\n\
         user nobody nogroup;\nworker_processes 1;\npid {d}/bot/nginx.pid;\nerror_log {d}/bot/logs/error.log warn;\n\
         events {{ worker_connections 256; }}\n\
         http {{\n    access_log off;\n{temp}    server {{\n        listen 127.0.0.1:{port} ssl;\n        server_name bot.ipo.com;\n\
         ssl_certificate {d}/pki/bot.crt;\n        ssl_certificate_key {d}/pki/bot.key;\n\
         location / {{\n            default_type text/plain;\n\
         add_header X-Bot-Upstream lab always;\n            add_header X-Echo-Host $host always;\n\
         add_header X-Echo-SNI $ssl_server_name always;\n            add_header X-Echo-URI $request_uri always;\n\
         add_header X-Echo-Proto $http_x_forwarded_proto always;\n            add_header X-Echo-XFF $http_x_forwarded_for always;\n\
         return 200 \"bot upstream\\n\";\n        }}\n    }}\n}}\n",
        port = l.bot_port
    )
}
