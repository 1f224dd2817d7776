//! The archive drill (spec §1) on the lab's SFTP host, once per source: the lab's MariaDB
//! (`mysql://`) and its MongoDB-compatible server (`mongodb://`; SecantusDB, not MongoDB — its
//! speed says nothing about MongoDB's, so that pass seeds at most [`MONGODB_ROWS`]). Each pass
//! seeds a month, plans it, proves that a dry run and a failed upload delete nothing and
//! alert, archives it, verifies the upload, re-runs (nothing to do), and restores.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use opskit_core::config::Config;
use opskit_core::engine::{OutcomeKind, RunSummary};
use opskit_core::plan::PlanDescription;
use opskit_lab::lab::LabView;
use opskit_lab::seed::{SeedCounts, SeedSpec};
use opskit_lab::{Component, LabState, MariadbServer, MongodbServer, SftpServer, WebhookReceiver};

use crate::report::{Check, DrillReport};
use crate::run::Opskit;
use crate::{DrillContext, Section};

const RUNBOOK: &str = "archive";
/// The drilled month; its neighbours are seeded too and must survive.
const MONTH: &str = "2024-01";
/// The most documents the `mongodb://` pass seeds: the lab's SecantusDB deletes a few hundred
/// documents a second.
pub const MONGODB_ROWS: u64 = 2_000;

/// The source a pass drills.
enum Db {
    Mariadb(MariadbServer),
    Mongodb(MongodbServer),
}

impl Db {
    /// The check names' prefix.
    fn label(&self) -> &'static str {
        match self {
            Db::Mariadb(_) => "mysql://",
            Db::Mongodb(_) => "mongodb:// (SecantusDB)",
        }
    }

    fn uri(&self) -> String {
        match self {
            Db::Mariadb(db) => db.uri(),
            Db::Mongodb(db) => db.uri.clone(),
        }
    }

    fn seed(&self, spec: &SeedSpec) -> anyhow::Result<SeedCounts> {
        match self {
            Db::Mariadb(db) => spec.into_mariadb(db),
            Db::Mongodb(db) => spec.into_mongodb(db),
        }
    }

    fn count(&self, spec: &SeedSpec) -> anyhow::Result<SeedCounts> {
        match self {
            Db::Mariadb(db) => spec.count_mariadb(db),
            Db::Mongodb(db) => spec.count_mongodb(db),
        }
    }
}

/// The drill's data: `rows` in the month, a tenth in each neighbour, four bad dates.
fn seed(rows: u64) -> anyhow::Result<SeedSpec> {
    SeedSpec::new(MONTH.parse().map_err(anyhow::Error::msg)?, rows)
}

/// Resets what earlier drills left: journals, staged files and uploaded archives.
fn reset(config: &Config, sftp: &SftpServer) -> anyhow::Result<()> {
    for dir in [
        config.general.state_dir.path(),
        config.archive.staging_dir.path(),
        &sftp.backup_dir.join(&config.archive.sftp.remote_dir),
    ] {
        match std::fs::remove_dir_all(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("clearing {}", dir.display())),
        }
    }
    std::fs::create_dir_all(config.archive.staging_dir.path())?;
    std::fs::create_dir_all(config.general.state_dir.path())?;
    Ok(())
}

/// One scenario of the drill: what it observed, or why it failed.
type Scenario = fn(&Opskit, &Rig, &LabState) -> anyhow::Result<String>;

/// Everything the archive drill needs from the lab.
struct Rig {
    db: Db,
    sftp: SftpServer,
    webhook: WebhookReceiver,
    config: Config,
    spec: SeedSpec,
    seeded: SeedCounts,
}

/// The pass on `db`: the lab config with `archive.source_uri` pointing at it, written next to
/// the lab's config (the `mysql://` pass uses the lab's config as it is).
fn rig(opskit: &Opskit, state: &LabState, db: Db, rows: u64) -> anyhow::Result<(Rig, Opskit)> {
    let sftp = SftpServer::from_state(state)?;
    let webhook = WebhookReceiver::from_state(state)?;
    let mut config = Config::load_file(opskit.config())?;
    let opskit = if config.archive.source_uri == db.uri() {
        opskit.with_config(opskit.config())
    } else {
        config.archive.source_uri = db.uri();
        // A few segments, so this pass goes through the segmented pipeline too.
        config.archive.segment_docs =
            opskit_core::config::value::Positive::new((rows / 4).max(1));
        let path = opskit.config().with_file_name("opskit-archive-mongodb.toml");
        std::fs::write(&path, config.to_toml())
            .with_context(|| format!("writing {}", path.display()))?;
        opskit.with_config(&path)
    };
    reset(&config, &sftp)?;
    let spec = seed(rows)?;
    let seeded = db.seed(&spec)?;
    Ok((
        Rig {
            db,
            sftp,
            webhook,
            config,
            spec,
            seeded,
        },
        opskit,
    ))
}

/// The archive section.
pub struct ArchiveDrill;

impl Section for ArchiveDrill {
    fn needs(&self) -> &'static [Component] {
        &[
            Component::Sshd,
            Component::Mariadb,
            Component::Mongodb,
            Component::Webhook,
        ]
    }

    fn run(&self, cx: &DrillContext, report: &mut DrillReport) {
        let rows = cx.options.rows.max(10);
        match MariadbServer::from_state(cx.state) {
            Ok(db) => drill(cx.opskit, cx.state, Db::Mariadb(db), rows, report),
            Err(e) => report.push(Check::new(
                RUNBOOK,
                "mysql://: the lab's MariaDB",
                false,
                format!("{e:#}"),
                0.0,
            )),
        }
        match MongodbServer::from_state(cx.state) {
            Ok(db) => drill(
                cx.opskit,
                cx.state,
                Db::Mongodb(db),
                rows.min(MONGODB_ROWS),
                report,
            ),
            Err(e) => report.push(Check::new(
                RUNBOOK,
                "mongodb://: the lab's MongoDB-compatible server (SecantusDB)",
                false,
                format!("{e:#}"),
                0.0,
            )),
        }
    }
}

/// Runs the archive drill on `db` and adds its checks to `report`.
fn drill(opskit: &Opskit, state: &LabState, db: Db, rows: u64, report: &mut DrillReport) {
    let clock = Instant::now();
    let label = db.label();
    let (rig, opskit) = match rig(opskit, state, db, rows) {
        Ok(r) => r,
        Err(e) => {
            report.push(Check::new(
                RUNBOOK,
                &format!("{label}: seed the lab"),
                false,
                format!("{e:#}"),
                0.0,
            ));
            return;
        }
    };
    let opskit = &opskit;
    report.push(Check::new(
        RUNBOOK,
        &format!("{label}: seed test.user_logs"),
        rig.seeded == rig.spec.counts(),
        rig.seeded.to_string(),
        clock.elapsed().as_secs_f64(),
    ));
    let steps: [(&str, Scenario); 7] = [
        ("plan shows the month's count and the anomalies", plan),
        ("--dry-run deletes nothing", dry_run),
        (
            "SFTP down: refused before the export (exit 3), nothing exported or deleted, webhook called",
            sftp_down,
        ),
        (
            "run archives, uploads, verifies and purges the month",
            run_month,
        ),
        ("the upload verifies against the manifest", verify_remote),
        ("a re-run of a finished month does nothing", rerun),
        ("restore puts every archived row back", restore),
    ];
    for (name, f) in steps {
        let clock = Instant::now();
        let result = f(opskit, &rig, state);
        report.push(Check::new(
            RUNBOOK,
            &format!("{label}: {name}"),
            result.is_ok(),
            match result {
                Ok(detail) => detail,
                Err(e) => format!("{e:#}"),
            },
            clock.elapsed().as_secs_f64(),
        ));
    }
}

fn expect_code(inv: &crate::run::Invocation, want: i32, what: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        inv.code == want,
        "{what}: exit {} (want {want}): {}",
        inv.code,
        inv.last_error()
    );
    Ok(())
}

fn unchanged(rig: &Rig) -> anyhow::Result<()> {
    let now = rig.db.count(&rig.spec)?;
    anyhow::ensure!(
        now == rig.seeded,
        "rows changed: seeded {}, now {now}",
        rig.seeded
    );
    Ok(())
}

fn plan(opskit: &Opskit, rig: &Rig, _: &LabState) -> anyhow::Result<String> {
    let inv = opskit.run(&["--output", "json", "archive", "plan", "--month", MONTH])?;
    expect_code(&inv, 0, "archive plan")?;
    let text = inv.stdout.clone();
    let count = rig.seeded.month.to_string();
    anyhow::ensure!(
        text.contains(&count),
        "the plan does not show the count {count}"
    );
    unchanged(rig)?;
    let plan: PlanDescription = inv.parse()?;
    let steps: Vec<&str> = plan.steps.iter().map(|s| s.id.as_str()).collect();
    anyhow::ensure!(
        steps.contains(&"purge"),
        "the plan has no purge step: {steps:?}"
    );
    Ok(format!("{count} documents; steps {}", steps.join(" → ")))
}

fn dry_run(opskit: &Opskit, rig: &Rig, _: &LabState) -> anyhow::Result<String> {
    let inv = opskit.run(&["archive", "run", "--month", MONTH, "--dry-run"])?;
    expect_code(&inv, 0, "archive run --dry-run")?;
    unchanged(rig)?;
    Ok("plan printed, 0 rows deleted".into())
}

fn sftp_down(opskit: &Opskit, rig: &Rig, state: &LabState) -> anyhow::Result<String> {
    let before = rig.webhook.received()?.len();
    // Read lab.json again: an earlier pass restarted sshd under another pid.
    let state = &LabState::load(&state.dir)?;
    for r in state.of_kind(Component::Sshd.name()) {
        opskit_lab::daemon::stop(&r.identity(), Duration::from_secs(5))?;
    }
    let inv = opskit.run(&["archive", "run", "--month", MONTH]);
    // Bring the backup host back whatever happened.
    let restarted = opskit_lab::up(&state.dir, &[Component::Sshd], None);
    let inv = inv?;
    restarted.context("restarting the lab sshd")?;
    expect_code(&inv, 3, "archive run with the backup host down")?;
    unchanged(rig)?;
    anyhow::ensure!(
        staged_file(opskit).is_err(),
        "a refused run left an archive in the staging directory"
    );
    let alerts = rig.webhook.received()?;
    let alert = alerts
        .get(before..)
        .and_then(|new| {
            new.iter().find(|a| {
                a["runbook"] == RUNBOOK && a["step"] != "anomalies"
            })
        })
        // The date-anomaly warning (step `anomalies`) is not the refusal alert.
        .context("no archive alert reached the lab webhook")?;
    Ok(format!(
        "exit 3, nothing exported, rows intact, alert for step `{}`: {}",
        alert["step"].as_str().unwrap_or("?"),
        alert["error"]
            .as_str()
            .unwrap_or("")
            .chars()
            .take(100)
            .collect::<String>()
    ))
}

fn staged_file(opskit: &Opskit) -> anyhow::Result<std::path::PathBuf> {
    let cfg = Config::load_file(opskit.config())?;
    let dir = cfg.archive.staging_dir.path().to_path_buf();
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let n = p.file_name().map(|n| n.to_string_lossy().into_owned());
            n.is_some_and(|n| n.contains(MONTH) && n.ends_with(".bson.gz"))
        })
        .collect();
    files.sort();
    files
        .into_iter()
        .next()
        .with_context(|| format!("no staged {MONTH} archive in {}", dir.display()))
}

fn run_month(opskit: &Opskit, rig: &Rig, _: &LabState) -> anyhow::Result<String> {
    let inv = opskit.run(&["--output", "json", "archive", "run", "--month", MONTH])?;
    expect_code(&inv, 0, "archive run")?;
    let now = rig.db.count(&rig.spec)?;
    anyhow::ensure!(now.month == 0, "{} rows of {MONTH} remain", now.month);
    anyhow::ensure!(
        now.before == rig.seeded.before
            && now.after == rig.seeded.after
            && now.anomalies == rig.seeded.anomalies,
        "rows outside the month changed: seeded {}, now {now}",
        rig.seeded
    );
    let staged = staged_file(opskit)?;
    let name = staged.file_name().context("staged file name")?;
    let remote = rig
        .sftp
        .backup_dir
        .join(&rig.config.archive.sftp.remote_dir)
        .join(name);
    let (local_len, remote_len) = (
        std::fs::metadata(&staged)?.len(),
        std::fs::metadata(&remote)
            .with_context(|| format!("no uploaded archive at {}", remote.display()))?
            .len(),
    );
    anyhow::ensure!(
        local_len == remote_len,
        "local {local_len} B, remote {remote_len} B"
    );
    let run: RunSummary = inv.parse()?;
    anyhow::ensure!(
        run.outcome == OutcomeKind::Succeeded,
        "outcome {:?}",
        run.outcome
    );
    let manifest_path = format!("{}.manifest.json", staged.display());
    let manifest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&manifest_path)
            .with_context(|| format!("reading {manifest_path}"))?,
    )
    .with_context(|| format!("parsing {manifest_path}"))?;
    let segment_docs = rig.config.archive.segment_docs.get();
    let segments = manifest["segments"].as_array().map_or(0, |a| a.len()) as u64;
    anyhow::ensure!(
        (rig.seeded.month > segment_docs) == (segments > 0)
            && (segments == 0 || segments >= rig.seeded.month.div_ceil(segment_docs)),
        "{} rows with archive.segment_docs = {segment_docs}, but the manifest lists {segments} segments",
        rig.seeded.month
    );
    let counters = run
        .counters
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ");
    Ok(format!(
        "{} rows archived and deleted in {:.1}s ({}); {} B on the backup host; neighbours and {} anomalies untouched; {counters}",
        rig.seeded.month,
        inv.secs,
        if segments == 0 {
            "one piece: export, upload, verify, purge".to_string()
        } else {
            format!("{segments} segments, each verified on the backup host before its purge")
        },
        remote_len,
        now.anomalies
    ))
}

fn verify_remote(opskit: &Opskit, _: &Rig, _: &LabState) -> anyhow::Result<String> {
    let staged = staged_file(opskit)?;
    let file = staged.to_string_lossy().into_owned();
    let inv = opskit.run(&["archive", "verify", "--file", &file, "--remote"])?;
    expect_code(&inv, 0, "archive verify --remote")?;
    Ok(inv.stdout.trim().chars().take(200).collect())
}

fn rerun(opskit: &Opskit, _: &Rig, _: &LabState) -> anyhow::Result<String> {
    let inv = opskit.run(&["--output", "json", "archive", "run", "--month", MONTH])?;
    expect_code(&inv, 0, "archive run (again)")?;
    let run: RunSummary = inv.parse()?;
    anyhow::ensure!(
        run.outcome == OutcomeKind::AlreadyDone,
        "outcome {:?} (want already_done)",
        run.outcome
    );
    Ok("outcome already_done".into())
}

fn restore(opskit: &Opskit, rig: &Rig, _: &LabState) -> anyhow::Result<String> {
    let staged = staged_file(opskit)?;
    let file = staged.to_string_lossy().into_owned();
    let inv = opskit.run(&[
        "archive",
        "restore",
        "--file",
        &file,
        "--target",
        &rig.db.uri(),
    ])?;
    expect_code(&inv, 0, "archive restore")?;
    let now = rig.db.count(&rig.spec)?;
    anyhow::ensure!(
        now == rig.seeded,
        "after restore {now}, seeded {}",
        rig.seeded
    );
    Ok(format!("{} rows back; {}", now.month, inv.stdout.trim()))
}
