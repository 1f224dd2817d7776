//! Snapshot tests of the rendered config: one file per nginx version for the defaults, one
//! for every alternative setting turned on. `UPDATE_SNAPSHOTS=1 cargo test` rewrites them;
//! review the diff before committing.

use std::path::PathBuf;

use opskit_core::config::NginxConfig;
use opskit_core::config::nginx::{BotHostHeader, LandingFallback};
use opskit_core::config::value::Rate;
use opskit_edge::render;

fn snapshot(name: &str, text: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/snapshots")
        .join(name);
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
        std::fs::write(&path, text).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run with UPDATE_SNAPSHOTS=1 to create it)",
            path.display()
        )
    });
    assert!(
        want == text,
        "{} differs from the rendered config (UPDATE_SNAPSHOTS=1 to accept):\n{}",
        path.display(),
        first_difference(&want, text)
    );
}

fn first_difference(a: &str, b: &str) -> String {
    for (i, (x, y)) in a.lines().zip(b.lines()).enumerate() {
        if x != y {
            return format!("line {}:\n- {x}\n+ {y}", i + 1);
        }
    }
    format!(
        "line counts differ: {} vs {}",
        a.lines().count(),
        b.lines().count()
    )
}

/// Every alternative of D2–D14 switched away from its default.
pub fn alternatives() -> NginxConfig {
    NginxConfig {
        bot_keyword_space_optional: true,
        bot_rate_limited: true,
        bot_host_header: BotHostHeader::Site,
        resolver: Some("127.0.0.1".parse().unwrap()),
        api_burst: 2,
        api_namespace_strict: true,
        landing_fallback: LandingFallback::Named,
        serve_existing_files: true,
        static_root: Some("/www/static".parse().unwrap()),
        static_max_age_secs: 604_800,
        static_immutable: false,
        hsts_include_subdomains: true,
        hsts_preload: true,
        real_ip_from: vec!["10.0.0.0/8".into(), "192.168.1.0/24".into()],
        ocsp_stapling: true,
        api_rate: Rate::try_from(2.0).unwrap(),
        ..NginxConfig::default()
    }
}

#[test]
fn default_config_per_nginx_version() {
    for v in ["1.14", "1.16", "1.18", "1.20", "1.22", "1.24", "1.26"] {
        let c = NginxConfig {
            nginx_version: v.into(),
            ..NginxConfig::default()
        };
        c.check().unwrap();
        snapshot(&format!("default-{v}.conf"), &render::render(&c));
    }
}

#[test]
fn every_alternative_setting() {
    let c = alternatives();
    c.check().unwrap();
    snapshot("alternatives-1.24.conf", &render::render(&c));
    let mut newer = c.clone();
    newer.nginx_version = "1.27.3".into();
    snapshot("alternatives-1.27.conf", &render::render(&newer));
}
