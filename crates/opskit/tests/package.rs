//! The artefacts of `./scripts/package`, checked as a Rocky Linux 8 host would meet them: the
//! binary needs no glibc newer than 2.28 and runs; the RPM holds every file with the owner,
//! mode and flags it must have, requires nothing Rocky 8 lacks, unpacks into a scratch root
//! where the binary, the units, the scripts and the config work together; rpmlint finds nothing
//! that `deploy/rpm/rpmlint-explained.md` does not explain.
//!
//! The artefacts are built once per suite by `./scripts/package` (`./scripts/test` runs it
//! before `cargo test`) into `<target>/package/`; these tests read them and never build them.
//! Missing artefacts or tools fail the tests: `./scripts/install-deps` installs the tools.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// Rocky Linux 8's glibc.
const ROCKY8_GLIBC: (u32, u32) = (2, 28);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `<target>/package`, where `./scripts/package` writes (the test binary is
/// `<target>/<profile>/deps/package-<hash>`).
fn artefacts() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let target = exe.ancestors().nth(3).unwrap().to_path_buf();
    let dir = target.join("package");
    assert!(
        dir.join("opskit").is_file(),
        "{} has no opskit binary: run ./scripts/package first (./scripts/test does)",
        dir.display()
    );
    dir
}

fn binary() -> PathBuf {
    artefacts().join("opskit")
}

fn rpm_file() -> PathBuf {
    let dir = artefacts();
    let rpms: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "rpm"))
        .collect();
    assert_eq!(
        rpms.len(),
        1,
        "exactly one RPM in {}: {rpms:?}",
        dir.display()
    );
    rpms.into_iter().next().unwrap()
}

/// Runs a tool that `./scripts/install-deps` installs; its absence is a failure.
fn tool(name: &str) -> Command {
    let found = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .any(|d| d.join(name).is_file());
    assert!(
        found,
        "`{name}` is not installed: ./scripts/install-deps installs it"
    );
    Command::new(name)
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.stdin(Stdio::null()).output().unwrap();
    assert!(out.status.success(), "{cmd:?} failed: {}", show(&out));
    String::from_utf8(out.stdout).unwrap()
}

fn show(out: &Output) -> String {
    format!(
        "{:?}\n--- stdout\n{}--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The GLIBC symbol versions named in `text`: `objdump -T` lines like
/// `0000000000000000      DF *UND*  0000000000000000 (GLIBC_2.34) __libc_start_main`, or rpm
/// requirements like `libc.so.6(GLIBC_2.28)(64bit)`.
fn glibc_versions(text: &str) -> BTreeSet<(u32, u32, u32)> {
    text.match_indices("GLIBC_")
        .filter_map(|(at, tag)| {
            let rest = &text[at + tag.len()..];
            let end = rest
                .find(|c: char| !c.is_ascii_digit() && c != '.')
                .unwrap_or(rest.len());
            let parts: Vec<u32> = rest[..end]
                .split('.')
                .map(|p| p.parse().ok())
                .collect::<Option<_>>()?;
            Some((
                parts[0],
                parts.get(1).copied().unwrap_or(0),
                parts.get(2).copied().unwrap_or(0),
            ))
        })
        .collect()
}

fn newer_than_rocky8(versions: &BTreeSet<(u32, u32, u32)>) -> Vec<String> {
    versions
        .iter()
        .filter(|(a, b, _)| (*a, *b) > ROCKY8_GLIBC)
        .map(|(a, b, c)| format!("GLIBC_{a}.{b}.{c}"))
        .collect()
}

#[test]
fn the_glibc_check_rejects_a_symbol_newer_than_2_28() {
    let text = "\
0000000000000000      DF *UND*\t0000000000000000 (GLIBC_2.2.5) memmove
0000000000000000      DF *UND*\t0000000000000000 (GLIBC_2.28) fcntl64
0000000000000000      DF *UND*\t0000000000000000 (GLIBC_2.34) __libc_start_main
";
    let v = glibc_versions(text);
    assert_eq!(v.len(), 3);
    assert_eq!(newer_than_rocky8(&v), ["GLIBC_2.34.0"]);
    assert!(newer_than_rocky8(&glibc_versions(&text.replace("2.34", "2.17"))).is_empty());
    // The same in rpm's requirement syntax; GLIBC_PRIVATE is no version.
    let requires = "libc.so.6(GLIBC_2.29)(64bit)\nlibc.so.6(GLIBC_PRIVATE)(64bit)\n";
    assert_eq!(
        newer_than_rocky8(&glibc_versions(requires)),
        ["GLIBC_2.29.0"]
    );
}

#[test]
fn the_binary_needs_no_glibc_newer_than_rocky_8s() {
    let bin = binary();
    let header = run_ok(tool("objdump").arg("-f").arg(&bin));
    assert!(header.contains("architecture: i386:x86-64"), "{header}");
    let private = run_ok(tool("objdump").arg("-p").arg(&bin));
    let needed: Vec<&str> = private
        .lines()
        .filter_map(|l| l.trim().strip_prefix("NEEDED"))
        .map(str::trim)
        .collect();
    if needed.is_empty() {
        // A static binary: no interpreter, nothing to resolve on the host.
        assert!(!private.contains("INTERP"), "{private}");
        return;
    }
    // Linked against glibc: only glibc's own libraries, which Rocky 8 has in /lib64.
    for lib in &needed {
        assert!(
            [
                "libc.so.6",
                "libm.so.6",
                "libpthread.so.0",
                "libdl.so.2",
                "librt.so.1",
                "ld-linux-x86-64.so.2"
            ]
            .contains(lib),
            "the binary needs {lib}, which is not part of glibc: {needed:?}"
        );
    }
    let versions = glibc_versions(&run_ok(tool("objdump").arg("-T").arg(&bin)));
    assert!(!versions.is_empty(), "no GLIBC symbol versions found");
    let newer = newer_than_rocky8(&versions);
    assert!(
        newer.is_empty(),
        "{} needs {newer:?}, newer than Rocky 8's glibc 2.28",
        bin.display()
    );

    // The same check on the binary cargo built for this machine (Debian 12, glibc 2.36) finds
    // newer symbols: the check can fail, and the packaged binary is not that one.
    let host = run_ok(tool("getconf").arg("GNU_LIBC_VERSION"));
    let host = host.trim().trim_start_matches("glibc ").to_string();
    let (major, minor) = host.split_once('.').unwrap();
    if (major.parse::<u32>().unwrap(), minor.parse::<u32>().unwrap()) >= (2, 34) {
        let native = assert_cmd::cargo::cargo_bin("opskit");
        let native_versions = glibc_versions(&run_ok(tool("objdump").arg("-T").arg(&native)));
        assert!(
            !newer_than_rocky8(&native_versions).is_empty(),
            "the host build {} should need glibc {host} symbols",
            native.display()
        );
    }
}

#[test]
fn the_binary_runs_version_and_config_show() {
    let bin = binary();
    let version = run_ok(Command::new(&bin).arg("--version"));
    assert_eq!(
        version.trim(),
        format!("opskit {}", env!("CARGO_PKG_VERSION"))
    );
    let shown = run_ok(
        Command::new(&bin)
            .args(["config", "show"])
            .env("OPSKIT_CONFIG", ""),
    );
    assert!(
        shown.contains("webhook_url = \"https://monitor.ipo.com/webhook/mongodb\""),
        "{shown}"
    );
    assert!(shown.contains("metrics_dir = \"/var/lib/node_exporter/textfile_collector\""));
}

/// One file of the RPM: `perms user group flags`.
fn rpm_files(rpm: &Path) -> BTreeMap<String, String> {
    run_ok(tool("rpm").args(["-qp", "--qf"]).arg(
        "[%{FILEMODES:perms} %{FILEUSERNAME} %{FILEGROUPNAME} %{FILEFLAGS:fflags}|%{FILENAMES}\n]",
    ).arg(rpm))
    .lines()
    .map(|l| {
        let (attrs, path) = l.split_once('|').unwrap();
        (path.to_string(), attrs.trim_end().to_string())
    })
    .collect()
}

#[test]
fn the_rpm_holds_every_file_with_its_owner_mode_and_flags() {
    let rpm = rpm_file();
    let meta = run_ok(
        tool("rpm")
            .args([
                "-qp",
                "--qf",
                "%{NAME} %{VERSION} %{RELEASE} %{ARCH} %{PAYLOADCOMPRESSOR}",
            ])
            .arg(&rpm),
    );
    assert_eq!(
        meta,
        format!("opskit {} 1.el8 x86_64 xz", env!("CARGO_PKG_VERSION"))
    );
    let d = "drwxr-xr-x root root";
    let f = "-rw-r--r-- root root";
    let x = "-rwxr-xr-x root root";
    let doc = "-rw-r--r-- root root d";
    let mut expected: BTreeMap<&str, &str> = [
        ("/usr/bin/opskit", x),
        // Root edits the config, the services' opskit user reads it, nobody else: it names
        // the secret files, hosts and accounts. An upgrade never overwrites a local edit.
        ("/etc/opskit", "drwxr-x--- root opskit"),
        ("/etc/opskit/opskit.toml", "-rw-r----- root opskit cn"),
        ("/var/lib/opskit", "drwxr-x--- opskit opskit"),
        ("/var/lib/opskit/archive", "drwxr-x--- opskit opskit"),
        ("/var/log/opskit", "drwxr-x--- opskit opskit"),
        ("/usr/lib/systemd/system/opskit-archive.service", f),
        ("/usr/lib/systemd/system/opskit-archive.timer", f),
        ("/usr/lib/systemd/system/opskit-nginx-probe.service", f),
        ("/usr/lib/systemd/system/opskit-nginx-probe.timer", f),
        ("/usr/lib/systemd/system/opskit-mysql-topology.service", f),
        ("/usr/lib/systemd/system/opskit-mysql-topology.timer", f),
        ("/usr/lib/tmpfiles.d/opskit.conf", f),
        ("/usr/libexec/opskit", d),
        ("/usr/libexec/opskit/user_logs_archive.sh", x),
        ("/usr/libexec/opskit/opskit-archive-stop-alert.sh", x),
        ("/usr/share/opskit", d),
        ("/usr/share/opskit/cron", d),
        ("/usr/share/opskit/cron/opskit-archive.cron", f),
        ("/usr/share/opskit/prometheus", d),
        ("/usr/share/opskit/prometheus/opskit.rules.yml", f),
        ("/usr/share/opskit/grafana", d),
        ("/usr/share/opskit/grafana/opskit.json", f),
        ("/usr/share/bash-completion", d),
        ("/usr/share/bash-completion/completions", d),
        ("/usr/share/bash-completion/completions/opskit", f),
        ("/usr/share/zsh", d),
        ("/usr/share/zsh/site-functions", d),
        ("/usr/share/zsh/site-functions/_opskit", f),
        ("/usr/share/fish", d),
        ("/usr/share/fish/vendor_completions.d", d),
        ("/usr/share/fish/vendor_completions.d/opskit.fish", f),
        ("/usr/share/man/man1/opskit.1.gz", doc),
        ("/usr/share/doc/opskit", d),
        ("/usr/share/doc/opskit/README.md", doc),
        ("/usr/share/doc/opskit/alerts.md", doc),
        ("/usr/share/doc/opskit/metrics.md", doc),
        ("/usr/share/doc/opskit/architecture.md", doc),
        ("/usr/share/doc/opskit/runbooks", d),
    ]
    .into_iter()
    .collect();
    // Every runbook document of the repository, English and Chinese.
    let runbooks: Vec<String> = std::fs::read_dir(repo().join("docs/runbooks"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".md"))
        .map(|n| format!("/usr/share/doc/opskit/runbooks/{n}"))
        .collect();
    assert!(runbooks.len() >= 4, "{runbooks:?}");
    for r in &runbooks {
        expected.insert(r, doc);
    }

    let listed: BTreeSet<String> = run_ok(tool("rpm").arg("-qlp").arg(&rpm))
        .lines()
        .map(String::from)
        .collect();
    let expected_paths: BTreeSet<String> = expected.keys().map(|k| k.to_string()).collect();
    assert_eq!(listed, expected_paths, "rpm -qlp");
    let actual = rpm_files(&rpm);
    for (path, attrs) in &expected {
        assert_eq!(
            actual.get(*path).map(String::as_str),
            Some(*attrs),
            "{path}"
        );
    }
}

#[test]
fn the_rpm_requires_only_what_rocky_8_provides() {
    let requires = run_ok(tool("rpm").args(["-qp", "--requires"]).arg(rpm_file()));
    let requires: BTreeSet<&str> = requires.lines().map(str::trim).collect();
    // The programs opskit and its scripts run.
    for r in [
        "openssh-clients",
        "curl",
        "util-linux",
        "shadow-utils",
        "/usr/bin/bash",
    ] {
        assert!(requires.contains(r), "{r} missing from {requires:#?}");
    }
    // Shared libraries: glibc's, at versions Rocky 8's glibc 2.28 provides.
    let libs = requires
        .iter()
        .filter(|r| r.contains(".so"))
        .copied()
        .collect::<Vec<_>>()
        .join("\n");
    assert!(libs.contains("libc.so.6()(64bit)"), "{libs}");
    assert!(!glibc_versions(&libs).is_empty(), "{libs}");
    let newer = newer_than_rocky8(&glibc_versions(&libs));
    assert!(newer.is_empty(), "requires {newer:?}: {libs}");
    // rpmlib features: only ones rpm 4.14 (Rocky 8) has; zstd payloads are avoided (xz).
    let known = [
        "rpmlib(CompressedFileNames) <= 3.0.4-1",
        "rpmlib(FileDigests) <= 4.6.0-1",
        "rpmlib(PayloadFilesHavePrefix) <= 4.0-1",
        "rpmlib(PayloadIsXz) <= 5.2-1",
    ];
    for r in requires.iter().filter(|r| r.starts_with("rpmlib(")) {
        assert!(
            known.contains(r),
            "{r} is not a feature of Rocky 8's rpm 4.14"
        );
    }
    let scripts = run_ok(tool("rpm").args(["-qp", "--scripts"]).arg(rpm_file()));
    assert!(scripts.contains("preinstall scriptlet"), "{scripts}");
    assert!(
        scripts.contains("useradd -r -g opskit -d /home/opskit -m"),
        "{scripts}"
    );
    assert!(
        scripts.contains("disable --now opskit-archive.timer opskit-nginx-probe.timer opskit-mysql-topology.timer"),
        "{scripts}"
    );
}

/// The RPM's payload unpacked with `rpm2cpio | cpio` into a fresh directory.
fn unpack(rpm: &Path) -> tempfile::TempDir {
    let root = tempfile::Builder::new()
        .prefix("opskit-rpm-root-")
        .tempdir()
        .unwrap();
    let cpio_archive = root.path().join("payload.cpio");
    let out = tool("rpm2cpio").arg(rpm).output().unwrap();
    assert!(out.status.success(), "rpm2cpio: {}", show(&out));
    std::fs::write(&cpio_archive, &out.stdout).unwrap();
    run_ok(
        tool("cpio")
            .args(["-idm", "--quiet", "--no-absolute-filenames", "-F"])
            .arg(&cpio_archive)
            .current_dir(root.path()),
    );
    std::fs::remove_file(&cpio_archive).unwrap();
    root
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[test]
fn the_unpacked_rpm_runs_from_a_scratch_root() {
    let rpm = rpm_file();
    let root = unpack(&rpm);
    let r = root.path();
    let bin = r.join("usr/bin/opskit");
    assert_eq!(
        std::fs::read(&bin).unwrap(),
        std::fs::read(binary()).unwrap(),
        "the RPM holds the checked binary"
    );
    let version = run_ok(Command::new(&bin).arg("--version"));
    assert_eq!(
        version.trim(),
        format!("opskit {}", env!("CARGO_PKG_VERSION"))
    );

    // The packaged config is valid, and it is the one the binary shows.
    let config = r.join("etc/opskit/opskit.toml");
    run_ok(Command::new(&bin).args(["config", "check"]).arg(&config));
    let shown = run_ok(
        Command::new(&bin)
            .arg("--config")
            .arg(&config)
            .args(["config", "show"]),
    );
    assert!(shown.contains("state_dir = \"/var/lib/opskit\""), "{shown}");
    assert!(
        std::fs::read_to_string(&config).unwrap()
            == std::fs::read_to_string(repo().join("deploy/opskit.example.toml")).unwrap(),
        "the RPM's opskit.toml is not deploy/opskit.example.toml: re-run ./scripts/package"
    );

    // Every program a unit or the cron file runs is in the package and executable, and every
    // documentation link resolves inside it.
    let units_dir = r.join("usr/lib/systemd/system");
    let mut units: Vec<PathBuf> = std::fs::read_dir(&units_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    units.sort();
    let mut commands = BTreeSet::new();
    for unit in &units {
        let text = std::fs::read_to_string(unit).unwrap();
        for line in text.lines() {
            if let Some((key, value)) = line.split_once('=') {
                if key.starts_with("Exec") {
                    let program = value.trim_start_matches(['-', '@', '+', '!', ':']);
                    commands.insert(program.split_whitespace().next().unwrap().to_string());
                }
                if key == "Documentation" {
                    let doc = value.strip_prefix("file://").unwrap();
                    assert!(r.join(&doc[1..]).is_file(), "{}: {doc}", unit.display());
                }
            }
        }
        let settings = text.lines().filter(|l| !l.starts_with('#'));
        assert!(
            !settings.clone().any(|l| l.contains("/usr/local/")),
            "{} still points into /usr/local",
            unit.display()
        );
        assert!(
            text.starts_with("# Installed by the opskit RPM"),
            "{}",
            unit.display()
        );
    }
    let cron =
        std::fs::read_to_string(r.join("usr/share/opskit/cron/opskit-archive.cron")).unwrap();
    let cron_line = cron
        .lines()
        .find(|l| l.starts_with("0 1 1 * *"))
        .expect("the schedule line");
    commands.insert(cron_line.split_whitespace().nth(6).unwrap().to_string());
    assert_eq!(
        commands,
        [
            "/usr/bin/opskit",
            "/usr/libexec/opskit/opskit-archive-stop-alert.sh",
            "/usr/libexec/opskit/user_logs_archive.sh",
        ]
        .map(String::from)
        .into(),
    );
    for c in &commands {
        assert!(
            is_executable(&r.join(&c[1..])),
            "{c} is not an executable of the package"
        );
    }

    // systemd itself reads the units: no unknown key or section. (It cannot see the package's
    // programs, which are not installed on this machine: those were checked above.)
    let out = tool("systemd-analyze")
        .arg("verify")
        .args(&units)
        .output()
        .unwrap();
    let complaints: Vec<String> = String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| {
            !commands.iter().any(|c| {
                l.ends_with(&format!(
                    "Command {c} is not executable: No such file or directory"
                ))
            })
        })
        .map(String::from)
        .collect();
    assert!(
        complaints.is_empty(),
        "systemd-analyze verify: {complaints:#?}"
    );

    // The scripts run by bash (not env), and parse.
    for script in [
        "usr/libexec/opskit/user_logs_archive.sh",
        "usr/libexec/opskit/opskit-archive-stop-alert.sh",
    ] {
        let text = std::fs::read_to_string(r.join(script)).unwrap();
        assert!(text.starts_with("#!/usr/bin/bash\n"), "{script}");
        run_ok(tool("bash").arg("-n").arg(r.join(script)));
    }
    run_ok(
        tool("bash")
            .arg("-n")
            .arg(r.join("usr/share/bash-completion/completions/opskit")),
    );
    // The wrapper starts the packaged binary: with opskit on PATH, a dry run gets as far as
    // opskit's own config check (exit 2 for the config we hand it), never "command not found".
    let bad = r.join("bad.toml");
    std::fs::write(&bad, "[general]\nstate_dir = \"relative\"\n").unwrap();
    // Its failure alert goes to a loopback port nobody listens on (an empty WEBHOOK_URL would
    // mean the default, the real monitor).
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let out = Command::new(r.join("usr/libexec/opskit/user_logs_archive.sh"))
        .arg("--dry-run")
        .env(
            "PATH",
            format!("{}:/usr/bin:/bin", r.join("usr/bin").display()),
        )
        .env("OPSKIT_CONFIG", &bad)
        .env("WEBHOOK_URL", format!("http://{closed}/webhook"))
        .env("WEBHOOK_ATTEMPTS", "1")
        .env("LOG_DIR", r.join("log"))
        .env("LOCK_FILE", r.join("wrapper.lock"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    let log = std::fs::read_dir(r.join("log"))
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .collect::<String>();
    assert!(log.contains("state_dir"), "{log}");
    assert!(log.contains("webhook attempt 1/1 failed"), "{log}");

    // The man page is roff, from `opskit generate man`.
    let man = Command::new("gzip")
        .args(["-dc"])
        .arg(r.join("usr/share/man/man1/opskit.1.gz"))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&man.stdout).contains(".TH opskit 1"));
}

/// `name: W|E: check detail` lines of an rpmlint run.
fn rpmlint_findings(target: &Path) -> Vec<String> {
    let out = tool("rpmlint")
        .arg("-c")
        .arg(repo().join("deploy/rpm/rpmlint.toml"))
        .arg(target)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        text.contains("packages and") && text.contains("checked;"),
        "rpmlint did not run: {}",
        show(&out)
    );
    text.lines()
        .filter(|l| l.contains(": W: ") || l.contains(": E: "))
        .map(|l| l.split_once(": ").unwrap().1.to_string())
        .collect()
}

#[test]
fn rpmlint_finds_nothing_that_is_not_explained() {
    let mut findings = rpmlint_findings(&rpm_file());
    findings.extend(rpmlint_findings(&repo().join("deploy/rpm/opskit.spec")));
    let explained_md =
        std::fs::read_to_string(repo().join("deploy/rpm/rpmlint-explained.md")).unwrap();
    // Table rows: | `W: check detail` | why |
    let explained: BTreeSet<String> = explained_md
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split_once("` |"))
        .map(|(finding, _)| finding.to_string())
        .collect();
    let found: BTreeSet<String> = findings.into_iter().collect();
    let unexplained: Vec<&String> = found.difference(&explained).collect();
    assert!(
        unexplained.is_empty(),
        "rpmlint findings not explained in deploy/rpm/rpmlint-explained.md: {unexplained:#?}"
    );
    let stale: Vec<&String> = explained.difference(&found).collect();
    assert!(
        stale.is_empty(),
        "deploy/rpm/rpmlint-explained.md explains findings rpmlint no longer reports: {stale:#?}"
    );
}
