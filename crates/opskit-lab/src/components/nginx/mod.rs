//! The ipo.com edge of spec §2 as lab servers: php-fpm on a unix socket in the lab, a bot
//! upstream (`bot.ipo.com`, its own certificate from the lab CA) and nginx running the config
//! `opskit nginx render` produces, with every path rebased into `<lab>/nginx` and loopback
//! ports. The files (PKI, `/www` fixtures, configs) are written by [`files`]; the three
//! processes are started and stopped by the lab's `daemon` like every lab server.
//! `opskit.toml` gets the rebased `[nginx]` section, so `opskit nginx check|apply|probe` work
//! against the lab as they would on the host; tests reach it through [`EdgeServer`].

pub mod files;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, Result};
use opskit_core::config::{Config, NginxConfig};
use files::RigLayout;
use opskit_core::proc;

use super::{Endpoint, LabContext, Server, config_path, tcp_connect};
use crate::daemon::Launch;
use crate::state::{LabState, ServerRecord};

/// The edge component (three processes: php-fpm, bot upstream, nginx).
pub struct Nginx;

const KIND: &str = "nginx";
const START_TIMEOUT: Duration = Duration::from_secs(15);

fn layout(ctx: &LabContext, previous: &[ServerRecord]) -> Result<RigLayout> {
    let dir = ctx.mkdir("nginx")?;
    let port = |key: &str| -> Option<u16> {
        previous
            .iter()
            .find(|r| r.name == KIND)
            .and_then(|r| r.details.get(key))
            .and_then(|v| v.parse().ok())
    };
    let fresh = RigLayout::with_free_ports(&dir)?;
    Ok(RigLayout {
        http_port: port("http_port").unwrap_or(fresh.http_port),
        https_port: port("https_port").unwrap_or(fresh.https_port),
        bot_port: port("bot_port").unwrap_or(fresh.bot_port),
        dir,
    })
}

fn nginx_launch(name: &str, prefix: PathBuf, conf: PathBuf) -> Launch {
    let nginx = NginxConfig::default().nginx_binary.path().to_path_buf();
    Launch::new(name, nginx, prefix.join("logs/stdout.log"))
        .arg("-p")
        .arg(&prefix)
        .arg("-c")
        .arg(conf)
        .arg("-e")
        .arg(prefix.join("logs/error.log"))
        .arg("-g")
        .arg("daemon off;")
}

impl Server for Nginx {
    fn start(&self, ctx: &LabContext, previous: &[ServerRecord]) -> Result<Vec<ServerRecord>> {
        let l = layout(ctx, previous)?;
        let settings = files::prepare(&l, &NginxConfig::default())?;
        let socket = l.php_fpm_socket();
        let _ = std::fs::remove_file(&socket);
        let fpm = Launch::new(
            "php-fpm",
            files::php_fpm_binary()?,
            l.dir.join("run/php-fpm.stdout.log"),
        )
        .arg("-F")
        .arg("-y")
        .arg(l.php_fpm_conf());
        let fpm_endpoint = Endpoint {
            address: None,
            port: None,
            socket: Some(socket.clone()),
        };
        let fpm = ctx.start_process(KIND, fpm, fpm_endpoint, START_TIMEOUT, || {
            std::os::unix::net::UnixStream::connect(&socket)
                .map(|_| ())
                .context("php-fpm socket")
        })?;
        let bot_port = l.bot_port;
        let bot = ctx.start_process(
            KIND,
            nginx_launch("bot-upstream", l.bot_prefix(), l.bot_conf()),
            Endpoint {
                address: None,
                port: Some(bot_port),
                socket: None,
            },
            START_TIMEOUT,
            || tcp_connect(bot_port).map(|_| ()),
        )?;
        let https_port = l.https_port;
        let mut edge = ctx.start_process(
            KIND,
            nginx_launch(KIND, l.edge_prefix(), l.edge_conf()),
            Endpoint {
                address: None,
                port: Some(https_port),
                socket: None,
            },
            START_TIMEOUT,
            || tcp_connect(https_port).map(|_| ()),
        )?;
        for (k, v) in [
            ("http_port", l.http_port.to_string()),
            ("https_port", l.https_port.to_string()),
            ("bot_port", l.bot_port.to_string()),
            ("nginx_version", settings.nginx_version.clone()),
            ("dir", config_path(&l.dir)?.to_string()),
            ("url", settings.probe_url.clone()),
            ("bot_marker", files::BOT_MARKER.to_string()),
        ] {
            edge.details.insert(k.into(), v);
        }
        Ok(vec![fpm, bot, edge])
    }

    fn configure(&self, records: &[ServerRecord], config: &mut Config) -> Result<()> {
        let view = EdgeServer::from_records(records)?;
        config.nginx = view.settings;
        Ok(())
    }
}

/// The lab's edge as a test or drill sees it.
#[derive(Debug, Clone)]
pub struct EdgeServer {
    /// Where its files live and which ports it uses.
    pub layout: RigLayout,
    /// The `[nginx]` settings pointing at it (also in the lab's `opskit.toml`).
    pub settings: NginxConfig,
    /// `--bot-marker` for the probe: the header only the lab's bot upstream sends.
    pub bot_marker: String,
}

impl EdgeServer {
    fn from_records(records: &[ServerRecord]) -> Result<EdgeServer> {
        let r = records
            .iter()
            .find(|r| r.name == KIND)
            .context("the lab runs no nginx edge")?;
        let port = |k: &str| -> Result<u16> {
            r.detail(k)?
                .parse()
                .with_context(|| format!("nginx detail {k} is not a port"))
        };
        let layout = RigLayout {
            dir: r.detail("dir")?.into(),
            http_port: port("http_port")?,
            https_port: port("https_port")?,
            bot_port: port("bot_port")?,
        };
        let settings = layout.settings(&NginxConfig::default(), r.detail("nginx_version")?);
        Ok(EdgeServer {
            layout,
            settings,
            bot_marker: r.detail("bot_marker")?.to_string(),
        })
    }
}

impl EdgeServer {
    /// Replaces the edge's config with `text` and reloads nginx (`nginx -s reload`, as an
    /// operator would), then waits for the new workers (tests of broken configs).
    pub fn reload_with(&self, text: &str) -> Result<()> {
        let conf = self.layout.edge_conf();
        std::fs::write(&conf, text).with_context(|| format!("writing {}", conf.display()))?;
        let mut cmd = std::process::Command::new(self.settings.nginx_binary.path());
        cmd.arg("-p")
            .arg(self.layout.edge_prefix())
            .arg("-c")
            .arg(&conf)
            .args(["-s", "reload"]);
        proc::run(&mut cmd, START_TIMEOUT)?.checked()?;
        // The master re-reads the config and replaces its workers asynchronously.
        std::thread::sleep(Duration::from_millis(700));
        Ok(())
    }
}

impl crate::LabView for EdgeServer {
    fn from_state(state: &LabState) -> Result<EdgeServer> {
        let records: Vec<ServerRecord> = state.of_kind(KIND).cloned().collect();
        EdgeServer::from_records(&records)
            .with_context(|| format!("the lab in {}", state.dir.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Component, LabBuilder};
    use opskit_edge::probe::{self, Group, ProbeOptions};

    #[test]
    fn lab_edge_serves_spec_2_and_its_opskit_toml_points_at_it() {
        let lab = LabBuilder::temporary("opskit-lab-nginx-")
            .unwrap()
            .with(Component::Nginx)
            .up()
            .unwrap();
        let edge: EdgeServer = lab.view().unwrap();
        assert_eq!(lab.config().unwrap().nginx, edge.settings);
        let mut opts = ProbeOptions::from_settings(&edge.settings);
        opts.bot_marker = Some(edge.bot_marker.clone());
        opts.groups = vec![Group::Tls, Group::Redirect, Group::Bot, Group::Api];
        let report = probe::run(&edge.settings, &opts).unwrap();
        assert!(report.passed(), "{}", report.render_table());
        lab.down().unwrap();
    }
}
