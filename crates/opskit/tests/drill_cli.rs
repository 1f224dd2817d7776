//! `opskit drill` end to end on a real lab: a section the selection leaves out is not run, a
//! failed probe check is reported by name (text, JSON and the Markdown `--report`), exit 1;
//! once the edge serves the right config again, the same drill passes with exit 0.

use assert_cmd::Command;
use opskit_drill::DrillReport;
use opskit_lab::{Component, EdgeServer, LabBuilder};

fn drill(lab: &std::path::Path, report: &std::path::Path) -> (Option<i32>, serde_json::Value) {
    let out = Command::cargo_bin("opskit")
        .unwrap()
        .env_remove("OPSKIT_CONFIG")
        .args(["--output", "json", "drill", "--only", "nginx", "--dir"])
        .arg(lab)
        .arg("--report")
        .arg(report)
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code(), v)
}

#[test]
fn a_failed_probe_check_is_named_in_the_drill_report() {
    let lab = LabBuilder::temporary("opskit-drill-cli-")
        .unwrap()
        .with(Component::Nginx)
        .up()
        .unwrap();
    let dir = lab.dir().parent().unwrap().to_path_buf();
    let edge: EdgeServer = lab.view().unwrap();
    let good = opskit_edge::render::render(&edge.settings);
    let broken = good.replacen("return 301 ", "return 302 ", 1);
    assert_ne!(broken, good);
    edge.reload_with(&broken).unwrap();

    let md = dir.as_path().join("report.md");
    let (code, v) = drill(lab.dir(), &md);
    assert_eq!(code, Some(1), "{v:#}");
    let report: DrillReport = serde_json::from_value(v).unwrap();
    let runbooks: Vec<&str> = report.checks.iter().map(|c| c.runbook.as_str()).collect();
    assert!(
        !runbooks.contains(&"archive"),
        "--only nginx ran the archive: {runbooks:?}"
    );
    let probe = report
        .checks
        .iter()
        .find(|c| c.name.contains("probe check"))
        .expect("a probe check");
    assert!(!probe.passed);
    assert!(
        probe.detail.contains("redirect.301_path_query"),
        "{}",
        probe.detail
    );
    let text = std::fs::read_to_string(&md).unwrap();
    assert!(text.contains("result: **FAIL**"), "{text}");
    assert!(text.contains("redirect.301_path_query"), "{text}");

    edge.reload_with(&good).unwrap();
    let (code, v) = drill(lab.dir(), &md);
    assert_eq!(code, Some(0), "{v:#}");
    assert!(
        std::fs::read_to_string(&md)
            .unwrap()
            .contains("result: **PASS**")
    );
    lab.down().unwrap();
}
