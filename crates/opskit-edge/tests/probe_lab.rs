//! The probe against a real edge (nginx + php-fpm + bot upstream) started by the rig.

use opskit_core::config::NginxConfig;
use opskit_edge::probe::{self, ProbeOptions, Verdict};
use opskit_edge::rig::{BOT_MARKER, EdgeRig, RigLayout};

fn start_rig(base: &NginxConfig) -> (tempfile::TempDir, EdgeRig) {
    let dir = tempfile::Builder::new()
        .prefix("opskit-edge-test-")
        .tempdir()
        .unwrap();
    let layout = RigLayout::with_free_ports(dir.path()).unwrap();
    let rig = EdgeRig::start(layout, base).unwrap();
    (dir, rig)
}

fn options(rig: &EdgeRig) -> ProbeOptions {
    let mut o = ProbeOptions::from_settings(&rig.settings);
    o.bot_marker = Some(BOT_MARKER.into());
    o.stage_fixtures = true;
    o
}

#[test]
fn every_check_passes_against_the_lab() {
    let (_dir, rig) = start_rig(&NginxConfig::default());
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
