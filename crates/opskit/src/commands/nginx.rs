//! `opskit nginx`: the ipo.com edge of spec §2 (render, check, apply, probe). The work lives
//! in `opskit-edge`; this file only wires arguments to it.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use opskit_core::config::NginxConfig;
use opskit_core::config::nginx::parse_nginx_version;
use opskit_core::metrics::RunMetrics;
use opskit_core::progress::Style;
use opskit_core::{ExitStatus, OpsError};
use opskit_edge::apply::{self, Deploy};
use opskit_edge::probe::{self, Group, ProbeOptions, ProbeReport, Verdict};
use opskit_edge::{check, render};

use crate::app::App;
use crate::cli::OutputFormat;

/// `opskit nginx` arguments.
#[derive(Debug, Args)]
pub struct NginxArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: NginxCommand,
}

/// The nginx sub-commands.
#[derive(Debug, Subcommand)]
pub enum NginxCommand {
    /// Print the complete nginx.conf for spec §2 from the [nginx] settings.
    Render(RenderArgs),
    /// Test the rendered config with the installed nginx (`nginx -t` in a scratch prefix);
    /// any warning fails it.
    Check(CheckArgs),
    /// Deploy: back up the live config, write the new one, nginx -t, reload, probe; roll back
    /// automatically when any step or the probe fails.
    Apply(ApplyArgs),
    /// Check a live server against every behaviour of spec §2; exit 0 only when all pass.
    Probe(ProbeArgs),
}

/// `opskit nginx render`.
#[derive(Debug, Args)]
pub struct RenderArgs {
    /// Render for this nginx version (X.Y or X.Y.Z) [default: nginx.nginx_version].
    #[arg(long, value_name = "X.Y")]
    pub nginx_version: Option<String>,
}

/// `opskit nginx check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Render for this version [default: the installed nginx's version].
    #[arg(long, value_name = "X.Y")]
    pub nginx_version: Option<String>,
    /// Test this file instead of the rendered config.
    #[arg(long, value_name = "FILE")]
    pub file: Option<PathBuf>,
}

/// How the probe reaches and judges the server.
#[derive(Debug, Args)]
pub struct ProbeTargetArgs {
    /// The HTTPS origin to probe [default: nginx.probe_url].
    #[arg(long, value_name = "URL")]
    pub url: Option<String>,
    /// Pin HOST:PORT:ADDR like curl --resolve (repeatable) [default: nginx.probe_resolve].
    #[arg(long, value_name = "HOST:PORT:ADDR")]
    pub resolve: Vec<String>,
    /// Trust this CA file [default: nginx.probe_cacert, else the system store].
    #[arg(long, value_name = "FILE")]
    pub cacert: Option<PathBuf>,
    /// Plain-HTTP port of the same host [default: nginx.probe_http_port].
    #[arg(long, value_name = "PORT")]
    pub http_port: Option<u16>,
    /// `Name: value` header only the bot upstream sends [default: detect by a different response].
    #[arg(long, value_name = "HEADER")]
    pub bot_marker: Option<String>,
    /// Opt in to checks that write probe files under nginx.web_root and nginx.api_root (and
    /// move index.html aside for a few seconds); run on the server host. Removed afterwards.
    #[arg(long)]
    pub stage_fixtures: bool,
    /// Only these check groups (comma-separated): tls, redirect, bot, api, rate, static, fallback.
    #[arg(long, value_delimiter = ',', value_name = "GROUP")]
    pub group: Vec<String>,
    /// Second local source address for the per-client rate check (e.g. 127.0.0.2 in the lab).
    #[arg(long, value_name = "ADDR")]
    pub second_source: Option<String>,
    /// Per-request time limit in seconds.
    #[arg(long, default_value_t = 10, value_name = "SECS")]
    pub timeout: u64,
}

/// `opskit nginx apply`.
#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// Print the plan and exit; changes nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Render for this version [default: the installed nginx's version].
    #[arg(long, value_name = "X.Y")]
    pub nginx_version: Option<String>,
    /// The probe run after the reload.
    #[command(flatten)]
    pub probe: ProbeTargetArgs,
}

/// `opskit nginx probe`.
#[derive(Debug, Args)]
pub struct ProbeArgs {
    /// What to probe.
    #[command(flatten)]
    pub target: ProbeTargetArgs,
    /// Only the quick checks `apply` runs right after the reload (TLS + h2, home page, bot
    /// routing, 301, /api/landing): under a second.
    #[arg(long, conflicts_with_all = ["group", "stage_fixtures"])]
    pub quick: bool,
}

/// Runs `opskit nginx`.
pub fn run(args: NginxArgs, app: &App) -> Result<ExitStatus, OpsError> {
    let settings = checked_settings(&app.config.nginx)?;
    match args.command {
        NginxCommand::Render(a) => render_cmd(a, &settings, app),
        NginxCommand::Check(a) => check_cmd(a, &settings, app),
        NginxCommand::Apply(a) => apply_cmd(a, &settings, app),
        NginxCommand::Probe(a) => probe_cmd(a, &settings, app),
    }
}

/// The settings after [`NginxConfig::check`]; a problem is a usage error (exit 2).
fn checked_settings(cfg: &NginxConfig) -> Result<NginxConfig, OpsError> {
    cfg.check()
        .map_err(|(key, reason)| OpsError::Usage(format!("config error: key `{key}`: {reason}")))?;
    Ok(cfg.clone())
}

/// The settings for an explicit version, else for the installed nginx (check, apply).
fn with_version(
    settings: &NginxConfig,
    version: Option<&str>,
    installed: bool,
) -> Result<NginxConfig, OpsError> {
    let mut s = settings.clone();
    match version {
        Some(v) => {
            if parse_nginx_version(v).is_none() {
                return Err(OpsError::Usage(format!(
                    "--nginx-version `{v}` is not a version like 1.24 or 1.22.1"
                )));
            }
            s.nginx_version = v.to_string();
        }
        None if installed => {
            let (a, b, c) = check::installed_version(s.nginx_binary.path())
                .map_err(|e| OpsError::Refused(format!("{e:#}")))?;
            s.nginx_version = format!("{a}.{b}.{c}");
        }
        None => {}
    }
    checked_settings(&s)
}

fn render_cmd(a: RenderArgs, settings: &NginxConfig, app: &App) -> Result<ExitStatus, OpsError> {
    let s = with_version(settings, a.nginx_version.as_deref(), false)?;
    let text = render::render(&s);
    match app.output {
        OutputFormat::Text => crate::out!("{text}"),
        OutputFormat::Json => crate::outln!(
            "{}",
            serde_json::json!({ "nginx_version": s.nginx_version, "config": text })
        ),
    }
    Ok(ExitStatus::Success)
}

fn check_cmd(a: CheckArgs, settings: &NginxConfig, app: &App) -> Result<ExitStatus, OpsError> {
    let nginx = settings.nginx_binary.path();
    let report = match &a.file {
        Some(file) => check::test_config(nginx, None, file),
        None => {
            let s = with_version(settings, a.nginx_version.as_deref(), true)?;
            check::check_rendered(nginx, &render::render(&s))
        }
    }?;
    match app.output {
        OutputFormat::Json => crate::outln!(
            "{}",
            serde_json::to_string_pretty(&report).expect("reports serialize")
        ),
        OutputFormat::Text => {
            crate::outln!("{}", report.command);
            crate::out!("{}", report.render_text());
            let style = Style::for_stdout();
            crate::outln!(
                "{}",
                if report.ok {
                    style.pass("OK: no errors, no warnings")
                } else {
                    style.fail("FAILED")
                }
            );
        }
    }
    Ok(if report.ok {
        ExitStatus::Success
    } else {
        ExitStatus::Failed
    })
}

fn probe_options(t: &ProbeTargetArgs, settings: &NginxConfig) -> Result<ProbeOptions, OpsError> {
    let mut o = ProbeOptions::from_settings(settings);
    if let Some(url) = &t.url {
        o.url = url.clone();
    }
    if !t.resolve.is_empty() {
        o.resolve = t.resolve.clone();
    }
    for r in &o.resolve {
        if r.splitn(3, ':').count() != 3 {
            return Err(OpsError::Usage(format!(
                "--resolve `{r}` must be HOST:PORT:ADDR like ipo.com:443:127.0.0.1"
            )));
        }
    }
    if let Some(ca) = &t.cacert {
        o.cacert = Some(ca.clone());
    }
    if let Some(p) = t.http_port {
        o.http_port = p;
    }
    o.bot_marker = t.bot_marker.clone();
    o.stage_fixtures = t.stage_fixtures;
    o.second_source = t.second_source.clone();
    o.timeout = Duration::from_secs(t.timeout.clamp(1, 120));
    for g in &t.group {
        let group = Group::parse(g).ok_or_else(|| {
            OpsError::Usage(format!(
                "--group `{g}` is not one of tls, redirect, bot, api, rate, static, fallback"
            ))
        })?;
        o.groups.push(group);
    }
    Ok(o)
}

fn probe_cmd(a: ProbeArgs, settings: &NginxConfig, app: &App) -> Result<ExitStatus, OpsError> {
    let mut opts = probe_options(&a.target, settings)?;
    opts.progress = app.progress_enabled();
    let clock = Instant::now();
    let report = if a.quick {
        probe::quick(settings, &opts)?
    } else {
        probe::run(settings, &opts)?
    };
    write_probe_metrics(app, &report, clock.elapsed());
    match app.output {
        OutputFormat::Json => crate::outln!(
            "{}",
            serde_json::to_string_pretty(&report.printed()).expect("reports serialize")
        ),
        OutputFormat::Text => crate::out!("{}", report.render_table_styled(Style::for_stdout())),
    }
    Ok(if report.passed() {
        ExitStatus::Success
    } else {
        ExitStatus::Failed
    })
}

/// The runbook label of the probe's metrics (`opskit_nginx_probe.prom`), which the
/// `OpskitNginxProbe*` alert rules read. A probe that could not run (bad usage, no curl) writes
/// nothing: its absence is what `OpskitNginxProbeNotRunning` reports.
const PROBE_RUNBOOK: &str = "nginx_probe";

fn write_probe_metrics(app: &App, report: &ProbeReport, took: Duration) {
    let count = |v: Verdict| report.checks.iter().filter(|c| c.verdict == v).count() as f64;
    let counters = [
        ("checks_passed", count(Verdict::Pass)),
        ("checks_failed", count(Verdict::Fail)),
        ("checks_skipped", count(Verdict::Skip)),
    ];
    app.write_metrics(RunMetrics {
        runbook: PROBE_RUNBOOK.into(),
        finished_at: apply::Utc::now(),
        duration_secs: took.as_secs_f64(),
        success: report.passed(),
        counters: counters.map(|(k, v)| (k.to_string(), v)).into(),
    });
}

fn apply_cmd(a: ApplyArgs, settings: &NginxConfig, app: &App) -> Result<ExitStatus, OpsError> {
    // Without a working nginx binary, render for the configured version: the preflight then
    // refuses inside the engine, so the refusal is journaled and alerted like any other.
    let s = match with_version(settings, a.nginx_version.as_deref(), true) {
        Err(OpsError::Refused(_)) => with_version(settings, a.nginx_version.as_deref(), false)?,
        other => other?,
    };
    let opts = probe_options(&a.probe, &s)?;
    let now = apply::Utc::now();
    let deploy = Deploy::new(&s, render::render(&s), &app.state_dir(), opts, now);
    let plan = apply::plan(&deploy, now);
    if !a.dry_run {
        return app.run_plan(plan, false);
    }
    app.print_plan(&plan);
    if app.output == OutputFormat::Text {
        let diff = apply::diff_against_live(&deploy)?;
        if diff.is_empty() {
            crate::outln!("\nno change: {} already holds this config", s.config_path);
        } else {
            crate::outln!("\nchanges to {}:\n{diff}", s.config_path);
        }
    }
    // The same preflight the real apply runs first: a dry run refuses where it would.
    match apply::preflight(&deploy) {
        Ok(()) => Ok(ExitStatus::Success),
        Err(reason) => {
            eprintln!(
                "opskit: refused: nginx [backup]: {reason}\nthe real apply would refuse too; nothing was changed"
            );
            Ok(ExitStatus::Refused)
        }
    }
}
