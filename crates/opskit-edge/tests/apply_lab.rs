//! `apply` against a real edge: a good deploy goes live; a config that fails `nginx -t` and a
//! config that fails the probe are both rolled back to the previous config, which keeps
//! serving.

use std::path::Path;

use opskit_core::config::NginxConfig;
use opskit_core::engine::{self, EngineOptions, RunOutcome};
use opskit_edge::apply::{self, Deploy};
use opskit_edge::probe::{self, Group, ProbeOptions};
use opskit_edge::render;
use opskit_lab::components::nginx::files::RigLayout;
use opskit_lab::{BOT_MARKER, Component, EdgeServer, LabBuilder};

fn probe_options(settings: &NginxConfig) -> ProbeOptions {
    let mut o = ProbeOptions::from_settings(settings);
    o.bot_marker = Some(BOT_MARKER.into());
    // The API group alone: its first request follows the quick probe's /api/landing at once,
    // so it must wait for the rate-limit zone to drain.
    o.groups = vec![Group::Api];
    o
}

fn deploy(state: &Path, new: &NginxConfig) -> engine::RunReport {
    let now = chrono::Utc::now();
    let d = Deploy::new(new, render::render(new), state, probe_options(new), now);
    let opts = EngineOptions {
        state_dir: state.to_path_buf(),
        alerter: None,
        metrics: None,
        progress: false,
    };
    engine::run(apply::plan(&d, now), &opts).unwrap()
}

fn live_config(rig: &EdgeServer) -> String {
    std::fs::read_to_string(rig.settings.config_path.path()).unwrap()
}

fn still_serving(rig: &EdgeServer) {
    let report = probe::run(&rig.settings, &probe_options(&rig.settings)).unwrap();
    assert!(
        report.passed(),
        "the previous config no longer serves: {:?}",
        report.failed()
    );
}

#[test]
fn apply_deploys_then_rolls_back_a_bad_config_and_a_failed_probe() {
    let lab = LabBuilder::temporary("opskit-apply-test-")
        .unwrap()
        .with(Component::Nginx)
        .up()
        .unwrap();
    let dir = lab.dir().parent().unwrap().to_path_buf();
    let state = tempfile::tempdir().unwrap();
    let rig: EdgeServer = lab.view().unwrap();
    let original = live_config(&rig);

    // A good change (burst 2) goes live.
    let mut good = rig.settings.clone();
    good.api_burst = 2;
    let report = deploy(state.path(), &good);
    assert_eq!(report.outcome, RunOutcome::Succeeded, "{report:?}");
    let deployed = live_config(&rig);
    assert_eq!(deployed, render::render(&good));
    assert_ne!(deployed, original);

    // nginx -t fails (the certificate does not exist): the file is restored, nothing reloaded.
    let mut broken = good.clone();
    broken.tls_certificate = dir
        .join("pki/missing.crt")
        .to_string_lossy()
        .parse()
        .unwrap();
    let report = deploy(state.path(), &broken);
    assert_rolled_back(&report.outcome, "test", "missing.crt");
    assert_eq!(report.undone, vec!["write".to_string()]);
    assert_eq!(
        live_config(&rig),
        deployed,
        "the previous config was not restored"
    );
    still_serving(&rig);

    // nginx -t passes but php-fpm's socket is wrong: the quick probe right after the reload
    // fails (the full probe never starts), file and reload undone.
    let mut wrong_socket = good.clone();
    wrong_socket.php_fpm_socket = dir
        .join("run/nowhere.sock")
        .to_string_lossy()
        .parse()
        .unwrap();
    let report = deploy(state.path(), &wrong_socket);
    assert_rolled_back(&report.outcome, "quick-probe", "quick.api_landing_200");
    assert!(!report.executed.iter().any(|s| s == "probe"), "{report:?}");
    assert_eq!(
        report.undone,
        vec!["reload".to_string(), "write".to_string()]
    );
    assert_eq!(live_config(&rig), deployed);
    still_serving(&rig);

    // Back to the lab's own settings (burst 0): the full probe's first API request comes right
    // after the quick probe's /api/landing, so it must wait for the zone to drain instead of
    // taking that 429 for a fault.
    let report = deploy(state.path(), &rig.settings);
    assert_eq!(report.outcome, RunOutcome::Succeeded, "{report:?}");
    assert_eq!(live_config(&rig), original);
}

#[test]
fn apply_refuses_when_nginx_is_not_running() {
    let dir = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let layout = RigLayout::with_free_ports(dir.path()).unwrap();
    let settings = layout.settings(&NginxConfig::default(), "1.22.1");
    let now = chrono::Utc::now();
    let d = Deploy::new(
        &settings,
        render::render(&settings),
        state.path(),
        probe_options(&settings),
        now,
    );
    let opts = EngineOptions {
        state_dir: state.path().to_path_buf(),
        alerter: None,
        metrics: None,
        progress: false,
    };
    let report = engine::run(apply::plan(&d, now), &opts).unwrap();
    assert!(
        matches!(report.outcome, RunOutcome::Refused { ref step, .. } if step == "backup"),
        "{report:?}"
    );
    assert!(
        !settings.config_path.path().exists(),
        "a refused run must not write the config"
    );
}

/// The run failed at `step` with an error mentioning `needle`, and was rolled back.
fn assert_rolled_back(outcome: &RunOutcome, want_step: &str, needle: &str) {
    match outcome {
        RunOutcome::Failed {
            step,
            rolled_back,
            error,
        } => {
            assert_eq!(step, want_step, "{error}");
            assert!(rolled_back, "not rolled back: {error}");
            assert!(error.contains(needle), "{error}");
        }
        other => panic!("expected a rolled-back failure, got {other:?}"),
    }
}
