//! `opskit lab seed` on a real lab: the lab's MariaDB and its MongoDB-compatible server
//! (SecantusDB, not MongoDB) get the same realistic month, so `archive plan` finds it in
//! either; seeding again starts over rather than adding; a source the lab does not run is
//! exit 1 naming it, bad flags exit 2.

use assert_cmd::Command;
use opskit_lab::seed::{SeedReport, SeedSpec};
use opskit_lab::{Component, LabBuilder};

fn opskit() -> Command {
    let mut c = Command::cargo_bin("opskit").unwrap();
    c.env_remove("OPSKIT_CONFIG");
    c
}

#[test]
fn both_sources_get_the_same_month_and_archive_plan_finds_it() {
    let lab = LabBuilder::temporary("opskit-seed-")
        .unwrap()
        .with(Component::Mariadb)
        .with(Component::Mongodb)
        .up()
        .unwrap();
    let seed = |rows: &str| {
        let out = opskit()
            .args(["--output", "json", "lab", "seed", "--rows", rows, "--dir"])
            .arg(lab.dir())
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<SeedReport>(&out.stdout).unwrap()
    };
    // Twice: the second seed replaces the first, it does not add to it.
    seed("500");
    let report = seed("300");
    let want = SeedSpec::new("2024-01".parse().unwrap(), 300)
        .unwrap()
        .counts();
    let names: Vec<&str> = report
        .sources
        .iter()
        .map(|s| s.component.as_str())
        .collect();
    assert_eq!(names, ["mariadb", "mongodb"]);
    for s in &report.sources {
        assert_eq!(s.counts, want, "{}", s.component);
    }

    // The README's first archive command works on the seeded lab.
    let out = opskit()
        .arg("--config")
        .arg(lab.opskit_toml())
        .args(["archive", "plan", "--month", "2024-01"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    // This lab runs no sshd: the plan shows the month and says the run would be refused
    // because the backup host does not answer (exit 3, issue 7 item 8).
    assert_eq!(out.status.code(), Some(3), "{text}");
    assert!(text.contains("300 documents"), "{text}");
    assert!(text.contains("backup host  NOT USABLE"), "{text}");
    lab.down().unwrap();
}

#[test]
fn a_source_the_lab_does_not_run_and_bad_flags_are_refused() {
    let lab = LabBuilder::temporary("opskit-seed-none-")
        .unwrap()
        .with(Component::Sshd)
        .up()
        .unwrap();
    let out = opskit()
        .args(["lab", "seed", "--only", "mongodb", "--dir"])
        .arg(lab.dir())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("runs no MongoDB-compatible server"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for bad in [["--rows", "5"], ["--month", "2024-13"], ["--only", "nginx"]] {
        let out = opskit()
            .args(["lab", "seed"])
            .args(bad)
            .arg("--dir")
            .arg(lab.dir())
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(if bad[0] == "--only" { 1 } else { 2 }),
            "{bad:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    lab.down().unwrap();
}
