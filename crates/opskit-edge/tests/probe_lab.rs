//! The probe against a real edge (nginx + php-fpm + bot upstream) started by the lab.

use opskit_edge::probe::{self, ProbeOptions, Verdict};
use opskit_lab::{BOT_MARKER, Component, EdgeServer, Lab, LabBuilder};

fn start_rig() -> (Lab, EdgeServer) {
    let lab = LabBuilder::temporary("opskit-edge-test-")
        .unwrap()
        .with(Component::Nginx)
        .up()
        .unwrap();
    let edge = lab.view().unwrap();
    (lab, edge)
}

fn options(rig: &EdgeServer) -> ProbeOptions {
    let mut o = ProbeOptions::from_settings(&rig.settings);
    o.bot_marker = Some(BOT_MARKER.into());
    o.stage_fixtures = true;
    o.second_source = Some("127.0.0.2".into());
    o
}

#[test]
fn every_check_passes_against_the_lab() {
    let (_lab, rig) = start_rig();
    let report = probe::run(&rig.settings, &options(&rig)).unwrap();
    print!("{}", report.render_table());
    assert!(report.passed(), "failed: {:?}", report.failed());
    let skipped: Vec<_> = report
        .checks
        .iter()
        .filter(|c| c.verdict == Verdict::Skip)
        .collect();
    assert!(
        skipped.is_empty(),
        "with fixtures staged nothing is skipped: {skipped:?}"
    );
}

/// Reloads the lab edge with a deliberately broken variant of the rendered config and checks
/// that exactly the right probe check notices.
fn assert_breakage_is_caught(
    rig: &EdgeServer,
    from: &str,
    to: &str,
    groups: &[probe::Group],
    check: &str,
) -> probe::ProbeReport {
    let good = opskit_edge::render::render(&rig.settings);
    let broken = good.replacen(from, to, 1);
    assert_ne!(broken, good, "`{from}` is not in the rendered config");
    rig.reload_with(&broken).unwrap();
    let mut o = options(rig);
    o.groups = groups.to_vec();
    let report = probe::run(&rig.settings, &o).unwrap();
    print!("{}", report.render_table());
    assert_eq!(
        report.verdict(check),
        Some(Verdict::Fail),
        "{check} did not catch `{from}` → `{to}`"
    );
    rig.reload_with(&good).unwrap();
    report
}

#[test]
fn the_right_checks_fail_against_broken_configs() {
    use probe::Group;
    let (_lab, rig) = start_rig();
    // Upstream TLS is verified: trusting the public CAs instead of the lab CA makes nginx
    // refuse bot.ipo.com's certificate, so bots get 502 instead of the upstream's answer.
    let report = assert_breakage_is_caught(
        &rig,
        &format!(
            "proxy_ssl_trusted_certificate {};",
            rig.settings.bot_upstream_ca
        ),
        "proxy_ssl_trusted_certificate /etc/ssl/certs/ca-certificates.crt;",
        &[Group::Bot],
        "bot.routed_case_insensitive",
    );
    let routed = report
        .checks
        .iter()
        .find(|c| c.name == "bot.routed_case_insensitive")
        .unwrap();
    assert!(routed.detail.contains("→ 502 NOT bot"), "{}", routed.detail);
    assert_breakage_is_caught(
        &rig,
        "            limit_req zone=api;\n",
        "",
        &[Group::Rate],
        "rate.excess_gets_429",
    );
    assert_breakage_is_caught(
        &rig,
        "        if ($is_bot) {\n            return 418;\n        }\n",
        "",
        &[Group::Bot],
        "bot.routed_case_insensitive",
    );
    assert_breakage_is_caught(
        &rig,
        "return 301 https",
        "return 302 https",
        &[Group::Redirect],
        "redirect.301_path_query",
    );
    assert_breakage_is_caught(
        &rig,
        "try_files /index.html /public/index.html",
        "try_files /public/index.html /index.html",
        &[Group::Fallback],
        "fallback.index_first",
    );
    assert_breakage_is_caught(
        &rig,
        "/api/landing$is_args$args",
        "/api/landing",
        &[Group::Fallback],
        "fallback.landing_last_query_kept",
    );
}

#[test]
fn a_configured_burst_is_what_the_rate_checks_expect() {
    let (_lab, mut rig) = start_rig();
    rig.settings.api_burst = 2;
    rig.reload_with(&opskit_edge::render::render(&rig.settings))
        .unwrap();
    assert!(
        std::fs::read_to_string(rig.layout.edge_conf())
            .unwrap()
            .contains("limit_req zone=api burst=2 nodelay;")
    );
    let mut o = options(&rig);
    o.groups = vec![probe::Group::Rate];
    let report = probe::run(&rig.settings, &o).unwrap();
    print!("{}", report.render_table());
    assert!(report.passed(), "failed: {:?}", report.failed());
    // The same server judged as if burst were 0 fails the exact 429 check. The first probe
    // ended with its bucket drained: wait until it holds the whole burst again (3 requests at
    // 1.5 r/s refill in 2 s), or the strict check would see only one 200 and pass.
    std::thread::sleep(std::time::Duration::from_secs(3));
    let strict = opskit_core::config::NginxConfig {
        api_burst: 0,
        ..rig.settings.clone()
    };
    let report = probe::run(&strict, &o).unwrap();
    assert_eq!(report.verdict("rate.excess_gets_429"), Some(Verdict::Fail));
}
