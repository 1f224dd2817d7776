//! The alert webhook receiver ([`crate::webhook`]) as a lab server, run as
//! `opskit lab webhook-receiver --dir <lab> --port <port>`. `opskit.toml` gets
//! `alert.webhook_url = "http://127.0.0.1:<port>/webhook"`.

use std::io::{Read as _, Write as _};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use opskit_core::config::Config;

use super::{Endpoint, LOOPBACK, LabContext, Server, config_path, tcp_connect, with_free_port};
use crate::daemon::Launch;
use crate::state::{LabState, ServerRecord};
use crate::webhook::{PATH, RECEIVED_FILE};

/// The webhook receiver component.
pub struct Webhook;

const KIND: &str = "webhook";

impl Server for Webhook {
    fn start(&self, ctx: &LabContext, previous: &[ServerRecord]) -> Result<Vec<ServerRecord>> {
        let dir = ctx.mkdir("webhook")?;
        let log = dir.join("receiver.log");
        let exe = ctx.opskit_exe()?;
        let preferred = previous.iter().find_map(|r| r.port);
        let mut record = with_free_port(preferred, |port| {
            let launch = Launch::new(KIND, &exe, &log)
                .arg("lab")
                .arg("webhook-receiver")
                .arg("--dir")
                .arg(ctx.dir())
                .arg("--port")
                .arg(port.to_string());
            ctx.start_process(
                KIND,
                launch,
                Endpoint {
                    address: None,
                    port: Some(port),
                    socket: None,
                },
                Duration::from_secs(10),
                || get(port),
            )
        })?;
        let port = record.port.expect("webhook has a port");
        record
            .details
            .insert("url".into(), format!("http://{LOOPBACK}:{port}{PATH}"));
        record.details.insert(
            "received".into(),
            config_path(&ctx.path(RECEIVED_FILE))?.into(),
        );
        Ok(vec![record])
    }

    fn probe(&self, _ctx: &LabContext, record: &ServerRecord) -> Result<()> {
        get(record.port.context("webhook has no port in lab.json")?)
    }

    fn configure(&self, records: &[ServerRecord], config: &mut Config) -> Result<()> {
        let r = records.first().context("no webhook record")?;
        config.alert.webhook_url = Some(r.detail("url")?.parse().map_err(anyhow::Error::msg)?);
        Ok(())
    }
}

/// A GET that must answer 200: the receiver is up.
fn get(port: u16) -> Result<()> {
    let mut s = tcp_connect(port)?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: lab\r\nConnection: close\r\n\r\n")?;
    let mut buf = [0u8; 12];
    s.read_exact(&mut buf)?;
    if &buf != b"HTTP/1.1 200" {
        bail!("unexpected answer {:?}", String::from_utf8_lossy(&buf));
    }
    Ok(())
}

/// The lab's webhook receiver as a test or drill sees it.
#[derive(Debug, Clone)]
pub struct WebhookReceiver {
    /// Its TCP port on 127.0.0.1.
    pub port: u16,
    /// The URL alerts should be posted to.
    pub url: String,
    /// The JSON-lines file each received body is appended to.
    pub received_file: PathBuf,
}

impl crate::LabView for WebhookReceiver {
    fn from_state(state: &LabState) -> Result<WebhookReceiver> {
        let r = state
            .server(KIND)
            .with_context(|| format!("the lab in {} runs no webhook receiver", state.dir.display()))?;
        Ok(WebhookReceiver {
            port: r.port.context("webhook has no port in lab.json")?,
            url: r.detail("url")?.into(),
            received_file: r.detail("received")?.into(),
        })
    }
}

impl WebhookReceiver {
    /// The bodies received so far, one JSON value per POST.
    pub fn received(&self) -> Result<Vec<serde_json::Value>> {
        let dir = self
            .received_file
            .parent()
            .and_then(|p| p.parent())
            .context("received file has no lab directory")?;
        crate::webhook::received(dir)
    }
}
