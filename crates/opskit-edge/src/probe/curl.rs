//! The probe's HTTP client: `curl`, one process per request, with a hard timeout.
//!
//! curl gives what the checks need and an operator can re-type: `--resolve` pins with SNI
//! kept, ALPN (`--http2` / `--http1.1`), TLS version and cipher limits, raw header control.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::Context as _;

use opskit_core::proc;

/// Which HTTP version the client offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alpn {
    /// Offer `h2,http/1.1` (curl `--http2`).
    H2,
    /// Offer only `http/1.1`.
    Http11,
}

/// One request.
#[derive(Debug, Clone)]
pub struct Request {
    /// `GET`, `HEAD`, `POST`.
    pub method: &'static str,
    /// The full URL.
    pub url: String,
    /// Extra headers, `Name: value`.
    pub headers: Vec<String>,
    /// Request body (POST).
    pub body: Option<String>,
    /// Offered ALPN.
    pub alpn: Alpn,
    /// Extra curl arguments (TLS limits, ciphers, `--connect-to`).
    pub extra: Vec<String>,
}

impl Request {
    /// A `GET` of `url` over h2.
    pub fn get(url: impl Into<String>) -> Request {
        Request {
            method: "GET",
            url: url.into(),
            headers: Vec::new(),
            body: None,
            alpn: Alpn::H2,
            extra: Vec::new(),
        }
    }

    /// Adds a header.
    pub fn header(mut self, h: impl Into<String>) -> Request {
        self.headers.push(h.into());
        self
    }

    /// Sets the User-Agent.
    pub fn user_agent(mut self, ua: &str) -> Request {
        self.headers
            .retain(|h| !h.to_ascii_lowercase().starts_with("user-agent:"));
        self.header(format!("User-Agent: {ua}"))
    }

    /// Sets the method.
    pub fn method(mut self, m: &'static str) -> Request {
        self.method = m;
        self
    }

    /// Adds curl arguments.
    pub fn args(mut self, a: &[&str]) -> Request {
        self.extra.extend(a.iter().map(|s| s.to_string()));
        self
    }
}

/// One response (or the transport failure in `curl_exit`).
#[derive(Debug, Clone, Default)]
pub struct Response {
    /// curl's exit code: 0 when a response arrived; 35 for a refused TLS handshake.
    pub curl_exit: i32,
    /// curl's error text, when it failed.
    pub error: String,
    /// HTTP status (0 when there was no response).
    pub status: u16,
    /// `2`, `1.1`, ...
    pub http_version: String,
    /// Response headers, names lower-cased, in order.
    pub headers: Vec<(String, String)>,
    /// The body as text.
    pub body: String,
    /// Body size in bytes.
    pub body_len: usize,
}

impl Response {
    /// The first value of a header (name case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// A one-line summary for check details.
    pub fn summary(&self) -> String {
        if self.curl_exit != 0 {
            format!(
                "no response (curl exit {}: {})",
                self.curl_exit,
                self.error.trim()
            )
        } else {
            format!("HTTP/{} {}", self.http_version, self.status)
        }
    }
}

/// How to reach the server: pins, trust, timeouts.
#[derive(Debug, Clone)]
pub struct Client {
    /// `HOST:PORT:ADDR` pins (curl `--resolve`).
    pub resolve: Vec<String>,
    /// CA file to trust instead of the system store.
    pub cacert: Option<PathBuf>,
    /// Per-request time limit.
    pub timeout: Duration,
    /// Scratch directory for headers and bodies.
    pub scratch: PathBuf,
}

impl Client {
    /// The curl command for a request.
    pub fn command(&self, req: &Request) -> Command {
        let secs = self.timeout.as_secs().max(1).to_string();
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "--max-time", &secs, "--connect-timeout", &secs]);
        for r in &self.resolve {
            cmd.arg("--resolve").arg(r);
        }
        if let Some(ca) = &self.cacert {
            cmd.arg("--cacert").arg(ca);
        }
        match req.alpn {
            Alpn::H2 => cmd.arg("--http2"),
            Alpn::Http11 => cmd.arg("--http1.1"),
        };
        match req.method {
            "HEAD" => {
                cmd.arg("--head");
            }
            "GET" => {}
            m => {
                cmd.arg("-X").arg(m);
            }
        }
        if let Some(body) = &req.body {
            cmd.arg("--data-binary").arg(body);
        }
        for h in &req.headers {
            cmd.arg("-H").arg(h);
        }
        cmd.args(&req.extra);
        cmd.arg("-D").arg(self.scratch.join("headers"));
        cmd.arg("-o").arg(self.scratch.join("body"));
        cmd.args(["-w", "%{http_code} %{http_version}"]);
        cmd.arg("--path-as-is").arg(&req.url);
        cmd
    }

    /// Sends a request and reads the response.
    pub fn send(&self, req: &Request) -> anyhow::Result<Response> {
        let _ = std::fs::remove_file(self.scratch.join("headers"));
        let _ = std::fs::remove_file(self.scratch.join("body"));
        let mut cmd = self.command(req);
        let out = proc::run(&mut cmd, self.timeout + Duration::from_secs(5))?;
        let mut resp = Response {
            curl_exit: out.code.unwrap_or(-1),
            error: out.stderr_text(),
            ..Response::default()
        };
        if resp.curl_exit != 0 {
            return Ok(resp);
        }
        let stdout = out.stdout_text();
        let mut parts = stdout.split_whitespace();
        resp.status = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        resp.http_version = parts.next().unwrap_or("").to_string();
        resp.headers = read_headers(&self.scratch.join("headers"))?;
        let body = std::fs::read(self.scratch.join("body")).unwrap_or_default();
        resp.body_len = body.len();
        resp.body = String::from_utf8_lossy(&body).into_owned();
        Ok(resp)
    }
}

impl Client {
    /// Sends GETs of `urls` as parallel HTTP/2 streams on one connection (curl `--parallel`);
    /// returns each transfer's `(status, new connections it opened)`.
    pub fn send_parallel(
        &self,
        urls: &[String],
        headers: &[String],
    ) -> anyhow::Result<Vec<(u16, u32)>> {
        let secs = self.timeout.as_secs().max(1).to_string();
        let mut cmd = Command::new("curl");
        cmd.args([
            "-sS",
            "--no-progress-meter",
            "--max-time",
            &secs,
            "--http2",
            "--parallel",
        ]);
        cmd.args(["--parallel-max", &urls.len().max(1).to_string()]);
        for r in &self.resolve {
            cmd.arg("--resolve").arg(r);
        }
        if let Some(ca) = &self.cacert {
            cmd.arg("--cacert").arg(ca);
        }
        for h in headers {
            cmd.arg("-H").arg(h);
        }
        cmd.args(["-w", "%{http_code} %{num_connects}\\n"]);
        for url in urls {
            cmd.args(["-o", "/dev/null"]).arg(url);
        }
        let out = proc::run(&mut cmd, self.timeout + Duration::from_secs(5))?;
        Ok(out
            .stdout_text()
            .lines()
            .filter_map(|l| {
                let mut it = l.split_whitespace();
                Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
            })
            .collect())
    }
}

fn read_headers(path: &Path) -> anyhow::Result<Vec<(String, String)>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(text
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect())
}
