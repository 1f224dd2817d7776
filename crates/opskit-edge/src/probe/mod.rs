//! Checks a live server against every behaviour of spec §2, as the settings chose it.
//!
//! Each check has a name (`group.what`), a result and a detail that says what was seen. The
//! checks are the request → expected checklist of `notes/nginx.md` §3. Checks that need files
//! changed on the server (a probe PHP script, static fixtures, moving `index.html` aside) run
//! only with [`ProbeOptions::stage_fixtures`]; without it they are reported as skipped.

mod checks;
pub mod curl;
mod fixtures;
mod quick;
mod rate;

pub use fixtures::{gzip_stored, static_text};

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use opskit_core::Classify as _;
use opskit_core::config::NginxConfig;
use opskit_core::progress::{Progress, Style};
use serde::{Deserialize, Serialize};

use curl::{Client, Request, Response};

/// The check groups, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Group {
    /// R1: certificate, TLS versions and ciphers, ALPN h2, unknown names, HSTS.
    Tls,
    /// R2: plain HTTP → 301 with path and query.
    Redirect,
    /// R3: bot routing by User-Agent.
    Bot,
    /// R4: `/api/{name}` → php-fpm, 404 for unknown names.
    Api,
    /// R5: 429 and the 1.5 r/s bound.
    Rate,
    /// R6: `/static/` headers, gzip, 304, denials.
    Static,
    /// R7: index.html → public/index.html → /api/landing.
    Fallback,
}

impl Group {
    /// Every group, in run order.
    pub const ALL: [Group; 7] = [
        Group::Tls,
        Group::Redirect,
        Group::Bot,
        Group::Api,
        Group::Rate,
        Group::Static,
        Group::Fallback,
    ];

    /// The group's name as used in check names and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Group::Tls => "tls",
            Group::Redirect => "redirect",
            Group::Bot => "bot",
            Group::Api => "api",
            Group::Rate => "rate",
            Group::Static => "static",
            Group::Fallback => "fallback",
        }
    }

    /// Parses a group name.
    pub fn parse(s: &str) -> Option<Group> {
        Group::ALL.into_iter().find(|g| g.name() == s)
    }
}

/// What to probe and how.
#[derive(Debug, Clone)]
pub struct ProbeOptions {
    /// `https://host[:port]`.
    pub url: String,
    /// The plain-HTTP port of the same host.
    pub http_port: u16,
    /// `HOST:PORT:ADDR` pins; a pin for the HTTPS port is also used for the HTTP port.
    pub resolve: Vec<String>,
    /// CA file to trust (else the system store).
    pub cacert: Option<PathBuf>,
    /// `Name: value` header that only the bot upstream's responses carry. Without it, bot
    /// routing is detected by the response differing from the normal one.
    pub bot_marker: Option<String>,
    /// Allow the probe to write (and afterwards remove) fixtures under the web and API roots
    /// of the settings: needs to run on the server host with write access.
    pub stage_fixtures: bool,
    /// Only these groups (empty: all).
    pub groups: Vec<Group>,
    /// Per-request time limit.
    pub timeout: Duration,
    /// A second local source address (curl `--interface`) for the per-client check: its
    /// requests must not share the first address's budget. Unset: that check is skipped.
    pub second_source: Option<String>,
    /// Show which group runs (a bar on a TTY, a log line every 10 s otherwise).
    pub progress: bool,
}

impl ProbeOptions {
    /// The groups that run, in run order (all when none were chosen).
    pub fn selected_groups(&self) -> Vec<Group> {
        Group::ALL
            .into_iter()
            .filter(|g| self.groups.is_empty() || self.groups.contains(g))
            .collect()
    }

    /// Options from the `[nginx]` probe settings.
    pub fn from_settings(cfg: &NginxConfig) -> ProbeOptions {
        ProbeOptions {
            url: cfg.probe_url.clone(),
            http_port: cfg.probe_http_port,
            resolve: cfg.probe_resolve.clone(),
            cacert: cfg.probe_cacert.as_ref().map(|p| p.path().to_path_buf()),
            bot_marker: None,
            stage_fixtures: false,
            groups: Vec::new(),
            timeout: Duration::from_secs(10),
            second_source: None,
            progress: false,
        }
    }
}

/// A check's result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// The server behaves as required.
    Pass,
    /// It does not.
    Fail,
    /// Not run (opt-in, or not applicable to these settings); the detail says why.
    Skip,
}

/// One check's outcome.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckResult {
    /// `group.what`, stable across versions.
    pub name: String,
    /// Pass, fail or skip.
    pub verdict: Verdict,
    /// What was expected and what was seen.
    pub detail: String,
}

/// Every check's outcome; `opskit nginx probe --output json` prints it (with `passed`, see
/// [`ProbeReport::printed`]) and the drill reads it back.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProbeReport {
    /// The probed origin.
    pub url: String,
    /// The checks, in run order.
    pub checks: Vec<CheckResult>,
}

/// The JSON form of a [`ProbeReport`]: the report plus its overall verdict.
#[derive(Debug, Serialize)]
pub struct PrintedProbeReport<'a> {
    /// True when no check failed.
    pub passed: bool,
    /// The report.
    #[serde(flatten)]
    pub report: &'a ProbeReport,
}

impl ProbeReport {
    /// What `--output json` prints.
    pub fn printed(&self) -> PrintedProbeReport<'_> {
        PrintedProbeReport {
            passed: self.passed(),
            report: self,
        }
    }

    /// True when no check failed.
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.verdict != Verdict::Fail)
    }

    /// The names of the failed checks.
    pub fn failed(&self) -> Vec<&str> {
        self.checks
            .iter()
            .filter(|c| c.verdict == Verdict::Fail)
            .map(|c| c.name.as_str())
            .collect()
    }

    /// The verdict of one check by name.
    pub fn verdict(&self, name: &str) -> Option<Verdict> {
        self.checks
            .iter()
            .find(|c| c.name == name)
            .map(|c| c.verdict)
    }

    /// The pass/fail table an operator reads (no colour).
    pub fn render_table(&self) -> String {
        self.render_table_styled(Style::Plain)
    }

    /// The table with PASS green and FAIL red when `style` says colour (a TTY without
    /// `NO_COLOR`; see [`Style::for_stdout`]).
    pub fn render_table_styled(&self, style: Style) -> String {
        let width = self.checks.iter().map(|c| c.name.len()).max().unwrap_or(10);
        let mut out = format!("probe {}\n", self.url);
        for c in &self.checks {
            let v = match c.verdict {
                Verdict::Pass => style.pass("PASS"),
                Verdict::Fail => style.fail("FAIL"),
                Verdict::Skip => style.dim("skip"),
            };
            out.push_str(&format!("  {v}  {:<width$}  {}\n", c.name, c.detail));
        }
        let count = |v| self.checks.iter().filter(|c| c.verdict == v).count();
        out.push_str(&format!(
            "{} passed, {} failed, {} skipped\n",
            count(Verdict::Pass),
            count(Verdict::Fail),
            count(Verdict::Skip)
        ));
        out
    }
}

/// The probed origin, split.
#[derive(Debug, Clone)]
pub(crate) struct Origin {
    pub host: String,
    pub https_port: u16,
    pub http_port: u16,
}

impl Origin {
    fn parse(url: &str, http_port: u16) -> anyhow::Result<Origin> {
        let rest = url
            .strip_prefix("https://")
            .with_context(|| format!("--url `{url}` must start with https://"))?;
        let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) => (
                h,
                p.parse::<u16>()
                    .with_context(|| format!("--url `{url}`: bad port `{p}`"))?,
            ),
            None => (authority, 443),
        };
        if host.is_empty() {
            bail!("--url `{url}` has no host");
        }
        Ok(Origin {
            host: host.to_string(),
            https_port: port,
            http_port,
        })
    }

    /// `https://host[:port]` + path.
    pub fn https(&self, path: &str) -> String {
        match self.https_port {
            443 => format!("https://{}{path}", self.host),
            p => format!("https://{}:{p}{path}", self.host),
        }
    }

    /// `http://host[:port]` + path.
    pub fn http(&self, path: &str) -> String {
        match self.http_port {
            80 => format!("http://{}{path}", self.host),
            p => format!("http://{}:{p}{path}", self.host),
        }
    }

    /// `http://host:<https port>` + path: plain HTTP to the TLS port.
    pub fn http_on_tls_port(&self, path: &str) -> String {
        format!("http://{}:{}{path}", self.host, self.https_port)
    }
}

/// Adds pins for the HTTP port wherever the HTTPS port of the host is pinned.
fn complete_pins(origin: &Origin, pins: &[String]) -> Vec<String> {
    let mut out = pins.to_vec();
    for pin in pins {
        let parts: Vec<&str> = pin.splitn(3, ':').collect();
        if parts.len() == 3 && parts[0] == origin.host {
            let http_pin = format!("{}:{}:{}", parts[0], origin.http_port, parts[2]);
            if !out.contains(&http_pin) {
                out.push(http_pin);
            }
        }
    }
    out
}

/// A header value (or any optional text) for a check's detail: `` `value` `` or `none`.
pub(crate) fn shown(v: Option<&str>) -> String {
    match v {
        Some(v) => format!("`{v}`"),
        None => "none".into(),
    }
}

/// Runs the checks and collects their results. `Err` only when the probe itself cannot run
/// (no curl, bad URL, fixtures cannot be written); a misbehaving server is a failed check.
pub fn run(cfg: &NginxConfig, opts: &ProbeOptions) -> anyhow::Result<ProbeReport> {
    let groups = opts.selected_groups().len() as u64;
    run_reporting(
        cfg,
        opts,
        Progress::new("probe", Some(groups), "groups", opts.progress),
    )
}

/// [`run`], reporting each group to `progress` (one unit per group of
/// [`ProbeOptions::selected_groups`]).
pub fn run_reporting(
    cfg: &NginxConfig,
    opts: &ProbeOptions,
    progress: Progress,
) -> anyhow::Result<ProbeReport> {
    let mut probe = Probe::new(cfg, opts)?;
    // The zone may be busy from just before (apply's quick probe, an operator's request from
    // this address): the first request that counts against it waits until it has drained.
    probe.mark_api_request();
    let _staged = if opts.stage_fixtures {
        Some(fixtures::Staged::write(cfg)?)
    } else {
        None
    };
    let mut progress = progress.without_rate();
    for group in opts.selected_groups() {
        progress.set_message(&format!("probe: {} checks", group.name()));
        probe.run_group(group)?;
        progress.inc(1);
    }
    progress.set_message("probe");
    progress.finish();
    Ok(ProbeReport {
        url: opts.url.clone(),
        checks: probe.results,
    })
}

/// The quick probe (`quick.*`): TLS with h2, the home page, bot routing, the 301 and
/// `/api/landing`, a handful of requests that show a broken site within a second. `apply`
/// runs it right after the reload, before the full probe. Never writes fixtures.
pub fn quick(cfg: &NginxConfig, opts: &ProbeOptions) -> anyhow::Result<ProbeReport> {
    let mut probe = Probe::new(cfg, opts)?;
    probe.quick_checks()?;
    Ok(ProbeReport {
        url: opts.url.clone(),
        checks: probe.results,
    })
}

impl<'a> Probe<'a> {
    fn new(cfg: &'a NginxConfig, opts: &'a ProbeOptions) -> anyhow::Result<Probe<'a>> {
        let origin = Origin::parse(&opts.url, opts.http_port).usage_error()?;
        let scratch = tempfile::Builder::new()
            .prefix("opskit-probe-")
            .tempdir()
            .context("creating the probe's scratch directory")?;
        let client = Client {
            resolve: complete_pins(&origin, &opts.resolve),
            cacert: opts.cacert.clone(),
            timeout: opts.timeout,
            scratch: scratch.path().to_path_buf(),
        };
        Ok(Probe {
            cfg,
            opts,
            origin,
            client,
            results: Vec::new(),
            last_api_request: None,
            _scratch: scratch,
        })
    }
}

/// The running probe: settings, client and the results so far.
pub(crate) struct Probe<'a> {
    pub cfg: &'a NginxConfig,
    pub opts: &'a ProbeOptions,
    pub origin: Origin,
    pub client: Client,
    pub results: Vec<CheckResult>,
    last_api_request: Option<Instant>,
    /// Holds the curl scratch directory for as long as the probe runs.
    _scratch: tempfile::TempDir,
}

/// Least idle time before a request that counts against the API zone (notes P22).
const MIN_API_IDLE: Duration = Duration::from_millis(1100);

impl Probe<'_> {
    fn run_group(&mut self, group: Group) -> anyhow::Result<()> {
        match group {
            Group::Tls => self.tls_checks(),
            Group::Redirect => self.redirect_checks(),
            Group::Bot => self.bot_checks(),
            Group::Api => self.api_checks(),
            Group::Rate => self.rate_checks(),
            Group::Static => self.static_checks(),
            Group::Fallback => self.fallback_checks(),
        }
    }

    /// Records a check result.
    pub fn record(&mut self, name: &str, pass: bool, detail: impl Into<String>) {
        self.results.push(CheckResult {
            name: name.into(),
            verdict: if pass { Verdict::Pass } else { Verdict::Fail },
            detail: detail.into(),
        });
    }

    /// Records a skipped check.
    pub fn skip(&mut self, name: &str, why: impl Into<String>) {
        self.results.push(CheckResult {
            name: name.into(),
            verdict: Verdict::Skip,
            detail: why.into(),
        });
    }

    /// Sends a request that does not touch the API zone.
    pub fn send(&mut self, req: &Request) -> anyhow::Result<Response> {
        self.client.send(req)
    }

    /// Waits until the API zone has drained, then sends a request that may count against it.
    pub fn send_api(&mut self, req: &Request) -> anyhow::Result<Response> {
        self.api_idle();
        self.send_api_now(req)
    }

    /// Sends a request that may count against the API zone without waiting first.
    pub fn send_api_now(&mut self, req: &Request) -> anyhow::Result<Response> {
        let resp = self.client.send(req);
        self.last_api_request = Some(Instant::now());
        resp
    }

    /// Notes a request that counted against the API zone.
    pub fn mark_api_request(&mut self) {
        self.last_api_request = Some(Instant::now());
    }

    /// How long the API zone needs to drain completely: a full burst + 1 at the configured
    /// rate (90r/m drains one request per 667 ms), and never less than [`MIN_API_IDLE`].
    fn api_idle_time(&self) -> Duration {
        let drain = (f64::from(self.cfg.api_burst) + 1.0) / self.cfg.api_rate.per_second() + 0.2;
        MIN_API_IDLE.max(Duration::from_secs_f64(drain))
    }

    /// Sleeps until the API zone has been idle long enough to be fully drained.
    pub fn api_idle(&mut self) {
        if let Some(last) = self.last_api_request {
            let since = last.elapsed();
            let idle = self.api_idle_time();
            if since < idle {
                std::thread::sleep(idle - since);
            }
        }
    }

    /// True when `resp` came from the bot upstream.
    pub fn served_by_bot(&self, resp: &Response, normal: &Response) -> bool {
        match &self.opts.bot_marker {
            Some(marker) => {
                let (name, value) = marker.split_once(':').unwrap_or((marker, ""));
                resp.header(name.trim())
                    .is_some_and(|v| v.contains(value.trim()))
            }
            None => resp.status != normal.status || resp.body != normal.body,
        }
    }
}
