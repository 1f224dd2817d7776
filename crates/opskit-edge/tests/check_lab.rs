//! `nginx -t` with the installed nginx on rendered configs (paths rebased into a rig
//! directory so certificates and sockets exist): every setting alternative is valid nginx,
//! a warning alone fails the check, and a config for a newer nginx fails on this one.

use opskit_core::config::NginxConfig;
use opskit_core::config::nginx::{BotHostHeader, LandingFallback};
use opskit_edge::check::{self, installed_version};
use opskit_edge::render;
use opskit_lab::{Component, EdgeServer, Lab, LabBuilder};

fn rig() -> (Lab, EdgeServer) {
    let lab = LabBuilder::temporary("opskit-check-test-")
        .unwrap()
        .with(Component::Nginx)
        .up()
        .unwrap();
    let edge = lab.view().unwrap();
    (lab, edge)
}

fn nginx() -> std::path::PathBuf {
    NginxConfig::default().nginx_binary.path().to_path_buf()
}

/// The rig's settings with every alternative of D2–D13 switched on.
fn alternatives(rig: &EdgeServer) -> NginxConfig {
    let mut c = rig.settings.clone();
    c.bot_keyword_space_optional = true;
    c.bot_rate_limited = true;
    c.bot_host_header = BotHostHeader::Site;
    c.bot_upstream_address = String::new();
    c.resolver = Some("127.0.0.1".parse().unwrap());
    c.api_burst = 2;
    c.api_namespace_strict = true;
    c.landing_fallback = LandingFallback::Named;
    c.serve_existing_files = true;
    c.static_root = Some(
        rig.layout
            .dir
            .join("www/static")
            .to_string_lossy()
            .parse()
            .unwrap(),
    );
    c.static_immutable = false;
    c.hsts_include_subdomains = true;
    c.real_ip_from = vec!["10.0.0.0/8".into()];
    c
}

#[test]
fn default_and_alternative_configs_pass_nginx_t_without_warnings() {
    let (_lab, rig) = rig();
    for (what, settings) in [
        ("default", rig.settings.clone()),
        ("alternatives", alternatives(&rig)),
    ] {
        settings.check().unwrap();
        let report = check::check_rendered(&nginx(), &render::render(&settings)).unwrap();
        assert!(report.ok, "{what}: {}\n{}", report.command, report.output);
    }
}

#[test]
fn a_warning_alone_fails_the_check() {
    let (_lab, rig) = rig();
    // Stapling with a certificate that names no OCSP responder: nginx -t exits 0 with a [warn].
    let mut s = alternatives(&rig);
    s.ocsp_stapling = true;
    s.check().unwrap();
    let report = check::check_rendered(&nginx(), &render::render(&s)).unwrap();
    assert!(!report.ok, "{}", report.output);
    assert!(!report.warnings.is_empty(), "{}", report.output);
    assert!(report.errors.is_empty(), "{}", report.output);
}

#[test]
fn syntax_for_a_newer_nginx_fails_on_the_installed_one() {
    let (_lab, rig) = rig();
    let (major, minor, _) = installed_version(&nginx()).unwrap();
    assert!(
        (major, minor) < (1, 25),
        "this test expects nginx < 1.25.1 installed"
    );
    let mut s = rig.settings.clone();
    s.nginx_version = "1.26".into();
    let report = check::check_rendered(&nginx(), &render::render(&s)).unwrap();
    assert!(!report.ok);
    assert!(
        report.errors.iter().any(|e| e.contains("http2")),
        "{}",
        report.output
    );
    // The scratch copy is gone: the message names the rendered config and quotes the line.
    assert!(
        !report.output.contains("opskit-nginx-check-"),
        "{}",
        report.output
    );
    assert!(
        report.output.contains("in rendered nginx.conf:"),
        "{}",
        report.output
    );
    let cited = report.cited.first().expect("the offending line is quoted");
    assert_eq!(
        render::render(&s).lines().nth(cited.line - 1),
        Some(cited.text.as_str())
    );
    assert!(cited.text.contains("http2 on;"), "{cited:?}");
    assert!(
        report
            .render_text()
            .contains(&format!("    {} | http2 on;", cited.line)),
        "{}",
        report.render_text()
    );
}

#[test]
fn other_sites_in_conf_d_keep_serving_and_a_clashing_default_server_fails_the_check() {
    let (_lab, rig) = rig();
    let conf_d = rig.layout.dir.join("edge/conf.d");
    let port = rig.layout.https_port;
    let pki = rig.layout.dir.join("pki");
    let site = |extra: &str| {
        format!(
            "server {{\n    listen 127.0.0.1:{port} ssl{extra};\n    server_name other.test;\n    \
             ssl_certificate {0}/ipo.com.crt;\n    ssl_certificate_key {0}/ipo.com.key;\n    \
             location / {{ return 200 \"other site\\n\"; }}\n}}\n",
            pki.display()
        )
    };
    std::fs::write(conf_d.join("other.conf"), site("")).unwrap();
    let text = render::render(&rig.settings);
    let report = check::check_rendered(&nginx(), &text).unwrap();
    assert!(report.ok, "{}", report.output);
    rig.reload_with(&text).unwrap();
    let mut curl = std::process::Command::new("curl");
    curl.args(["-sk", "--max-time", "5", "--resolve"])
        .arg(format!("other.test:{port}:127.0.0.1"))
        .arg(format!("https://other.test:{port}/"));
    let out = opskit_core::proc::run(&mut curl, std::time::Duration::from_secs(10)).unwrap();
    assert_eq!(out.stdout_text(), "other site\n", "{}", out.stderr_text());

    std::fs::write(conf_d.join("other.conf"), site(" default_server")).unwrap();
    let report = check::check_rendered(&nginx(), &text).unwrap();
    assert!(!report.ok, "{}", report.output);
    assert!(
        report.output.contains("duplicate default server"),
        "{}",
        report.output
    );
}
