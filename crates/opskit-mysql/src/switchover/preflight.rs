//! The checks before anything changes. Every check runs (the operator sees all problems at
//! once); any failure refuses the run with exit 3. All of them are read-only: the DNS check is
//! an UPDATE made of a prerequisite only, which changes nothing.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Layout, Shared};
use crate::dns::UpdateOutcome;
use crate::flavor::{Flavor, sql_str};
use crate::session::{Session, server_code};
use crate::topology::TopologyReport;

/// One preflight check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    /// Its name (`servers answer`, `replica lag`, …).
    pub name: String,
    /// It passed.
    pub ok: bool,
    /// What was seen (a warning may come with a pass).
    pub detail: String,
}

fn check(name: &str, problems: Vec<String>, ok_detail: impl Into<String>) -> Check {
    Check {
        name: name.into(),
        ok: problems.is_empty(),
        detail: if problems.is_empty() {
            ok_detail.into()
        } else {
            problems.join("; ")
        },
    }
}

/// Runs every check against the servers, DNS and HAProxy as they are now.
pub fn run(sh: &Shared) -> Vec<Check> {
    let report = sh.discover();
    let mut out = vec![
        answers(&report),
        tree_unchanged(sh, &report),
        versions(sh, &report),
        gtid(&report),
        binlogs(sh, &report),
        lag(&report),
        errant(sh, &report),
    ];
    out.push(long_writes(sh));
    out.push(replication_account(sh));
    out.push(dns(sh));
    out.push(haproxy(sh));
    out
}

fn answers(r: &TopologyReport) -> Check {
    let p = r
        .servers
        .iter()
        .filter_map(|s| {
            s.error
                .as_ref()
                .map(|e| format!("{} does not answer: {e}", s.name))
        })
        .collect();
    check("servers answer", p, format!("{} servers", r.servers.len()))
}

fn tree_unchanged(sh: &Shared, r: &TopologyReport) -> Check {
    let now = r.tree_map();
    let p = sh
        .input
        .before
        .iter()
        .filter(|(k, v)| now.get(*k) != Some(v))
        .map(|(k, v)| {
            format!(
                "{k} replicates from {}, the plan was made for {}",
                now.get(k)
                    .cloned()
                    .flatten()
                    .unwrap_or_else(|| "nobody".into()),
                v.as_deref().unwrap_or("nobody")
            )
        })
        .collect();
    check(
        "tree as planned",
        p,
        super::render_paths(&sh.input.before, &sh.input.order()),
    )
}

fn versions(sh: &Shared, r: &TopologyReport) -> Check {
    let mut p = Vec::new();
    let kinds: Vec<_> = r
        .servers
        .iter()
        .filter_map(|s| s.kind.map(|k| (s, k)))
        .collect();
    for (s, k) in &kinds {
        if let Some(why) = k.unsupported() {
            p.push(format!("{}: {why}", s.name));
        }
    }
    if kinds.windows(2).any(|w| w[0].1.flavor != w[1].1.flavor) {
        p.push("the servers mix MySQL and MariaDB".into());
    }
    let (old, new) = (&sh.input.old_master, &sh.input.new_master);
    let mut detail = kinds
        .first()
        .map(|(_, k)| k.flavor.to_string())
        .unwrap_or_default();
    if let (Some(o), Some(n)) = (
        r.get(old).and_then(|s| s.kind),
        r.get(new).and_then(|s| s.kind),
    ) && n.version > o.version
    {
        detail = format!(
            "{detail}; warning: {new} ({n}) is newer than {old} ({o}), which will replicate \
             from it"
        );
    }
    check("versions", p, detail)
}

fn gtid(r: &TopologyReport) -> Check {
    let mut p = Vec::new();
    let mut warn = Vec::new();
    for s in r.servers.iter().filter(|s| s.reachable()) {
        if s.kind.is_some_and(|k| k.flavor == Flavor::Mysql) && s.gtid_mode.as_deref() != Some("ON")
        {
            p.push(format!(
                "{}: gtid_mode is {:?}, not ON",
                s.name, s.gtid_mode
            ));
        }
        if let Some(rep) = &s.replication
            && !rep.uses_gtid()
        {
            p.push(format!(
                "{} replicates by file and position ({}), not GTID",
                s.name, rep.gtid_mode
            ));
        }
        if s.gtid_strict == Some(false) {
            warn.push(s.name.clone());
        }
    }
    let detail = if warn.is_empty() {
        "every replica positions by GTID".to_string()
    } else {
        format!(
            "every replica positions by GTID; warning: gtid_strict_mode / \
             enforce_gtid_consistency is off on {}",
            warn.join(", ")
        )
    };
    check("GTID", p, detail)
}

fn binlogs(sh: &Shared, r: &TopologyReport) -> Check {
    let (old, new) = (&sh.input.old_master, &sh.input.new_master);
    let mut p = Vec::new();
    let mut need = |name: &str, what: &str, v: Option<bool>| {
        if v != Some(true) {
            p.push(format!(
                "{name} has {what} off (it is needed: {name} will serve replicas)"
            ));
        }
    };
    if let Some(s) = r.get(new) {
        need(new, "log_bin", s.log_bin);
        need(new, "log_slave_updates", s.log_replica_updates);
    }
    if let Some(s) = r.get(old) {
        need(old, "log_bin", s.log_bin);
        if sh.input.layout == Layout::Mirror && !sh.input.children.is_empty() {
            need(old, "log_slave_updates", s.log_replica_updates);
        }
    }
    check("binary logs", p, format!("on {new} and {old}"))
}

fn lag(r: &TopologyReport) -> Check {
    let max = r.max_lag_secs;
    let mut p = Vec::new();
    let mut worst = 0;
    for s in &r.servers {
        let Some(rep) = &s.replication else { continue };
        if !rep.running() {
            p.push(format!(
                "{}: replication is not running (IO {}, SQL {}{})",
                s.name,
                rep.io_running,
                rep.sql_running,
                [&rep.last_io_error, &rep.last_sql_error]
                    .iter()
                    .filter(|e| !e.is_empty())
                    .map(|e| format!("; {e}"))
                    .collect::<String>()
            ));
        } else {
            match rep.lag_secs {
                Some(l) if l > max => p.push(format!("{} lags {l} s (limit {max} s)", s.name)),
                Some(l) => worst = worst.max(l),
                None => p.push(format!("{}: lag unknown", s.name)),
            }
        }
    }
    check(
        "replicas running, lag",
        p,
        format!("every replica running, worst lag {worst} s (limit {max} s)"),
    )
}

fn errant(sh: &Shared, r: &TopologyReport) -> Check {
    let input = &sh.input;
    let moving: Vec<&String> = std::iter::once(&input.new_master)
        .chain(&input.siblings)
        .chain(&input.children)
        .collect();
    let mut p = Vec::new();
    let mut warn = Vec::new();
    for s in &r.servers {
        if s.errant.is_empty() {
            continue;
        }
        let line = format!(
            "{} has transactions its source lacks: {}",
            s.name,
            s.errant.join(",")
        );
        if moving.contains(&&s.name) {
            p.push(line);
        } else {
            warn.push(line);
        }
    }
    let detail = if warn.is_empty() {
        "none".to_string()
    } else {
        format!(
            "none on the servers that move; warning: {}",
            warn.join("; ")
        )
    };
    check("errant transactions", p, detail)
}

fn long_writes(sh: &Shared) -> Check {
    let old = &sh.input.old_master;
    let n = sh.input.settings.long_write_limit_secs;
    let sql = format!(
        "SELECT t.trx_mysql_thread_id, TIMESTAMPDIFF(SECOND, t.trx_started, NOW()), \
         COALESCE(p.USER, ''), COALESCE(LEFT(p.INFO, 80), '') \
         FROM information_schema.INNODB_TRX t \
         LEFT JOIN information_schema.PROCESSLIST p ON p.ID = t.trx_mysql_thread_id \
         WHERE t.trx_started < NOW() - INTERVAL {n} SECOND \
         AND (t.trx_rows_modified > 0 OR t.trx_tables_locked > 0)"
    );
    let ddl = format!(
        "SELECT ID, TIME, USER, LEFT(INFO, 80) FROM information_schema.PROCESSLIST \
         WHERE COMMAND = 'Query' AND TIME > {n} AND USER <> 'system user' \
         AND INFO REGEXP '^[[:space:]]*(ALTER|CREATE|DROP|RENAME|TRUNCATE|OPTIMIZE|INSERT|UPDATE|DELETE|REPLACE|LOAD)'"
    );
    let r = sh.on(old, |s| Ok((s.query(&sql)?, s.query(&ddl)?)));
    match r {
        Ok((trx, stmts)) => {
            let p = trx
                .iter()
                .chain(&stmts)
                .map(|row| {
                    format!(
                        "{old}: session {} ({}) has written for {} s: {}",
                        row.at(0).unwrap_or("?"),
                        row.at(2).unwrap_or("?"),
                        row.at(1).unwrap_or("?"),
                        row.at(3).unwrap_or("")
                    )
                })
                .collect();
            check(
                "no long write on the master",
                p,
                format!("no write on {old} older than {n} s"),
            )
        }
        Err(e) => check("no long write on the master", vec![format!("{e:#}")], ""),
    }
}

/// MySQL host pattern matching: `%` any run, `_` one character, `addr/mask` netmasks.
pub fn host_matches(pattern: &str, host: &str) -> bool {
    if let Some((net, mask)) = pattern.split_once('/')
        && let (Ok(net), Ok(mask), Ok(ip)) = (
            net.parse::<std::net::Ipv4Addr>(),
            mask.parse::<std::net::Ipv4Addr>(),
            host.parse::<std::net::Ipv4Addr>(),
        )
    {
        let m = u32::from(mask);
        return u32::from(ip) & m == u32::from(net) & m;
    }
    fn go(p: &[u8], h: &[u8]) -> bool {
        match p.split_first() {
            None => h.is_empty(),
            Some((b'%', rest)) => (0..=h.len()).any(|i| go(rest, &h[i..])),
            Some((b'_', rest)) => !h.is_empty() && go(rest, &h[1..]),
            Some((c, rest)) => {
                h.first().is_some_and(|x| x.eq_ignore_ascii_case(c)) && go(rest, &h[1..])
            }
        }
    }
    go(pattern.as_bytes(), host.as_bytes())
}

fn replication_account(sh: &Shared) -> Check {
    let (old, new) = (&sh.input.old_master, &sh.input.new_master);
    let user = &sh.input.settings.replication_user;
    let old_node = sh.input.node(old);
    let old_addrs: Vec<String> = old_node
        .ip
        .map(|i| i.to_string())
        .into_iter()
        .chain(std::iter::once(old_node.host.clone()))
        .collect();
    let name = "replication account";
    let accounts = sh.on(new, |s| {
        let hosts: Vec<String> = s
            .query(&format!(
                "SELECT Host FROM mysql.user WHERE User = '{}'",
                sql_str(user)
            ))?
            .iter()
            .filter_map(|r| r.at(0).map(str::to_string))
            .collect();
        let me = s
            .value("SELECT SUBSTRING_INDEX(USER(), '@', -1)")?
            .unwrap_or_default();
        Ok((hosts, me))
    });
    let (hosts, me) = match accounts {
        Ok(v) => v,
        Err(e) => return check(name, vec![format!("{e:#}")], ""),
    };
    if !hosts
        .iter()
        .any(|h| old_addrs.iter().any(|a| host_matches(h, a)))
    {
        return check(
            name,
            vec![format!(
                "{new} has no account `{user}`@<host> that admits {old} ({}): accounts {:?}",
                old_addrs.join(", "),
                hosts
            )],
            "",
        );
    }
    // Prove the password: log in as that account from here.
    let (host, port) = sh.input.host_of(new);
    let login = Session::new(
        format!("{new} as {user}"),
        host,
        port,
        sh.repl(),
        Duration::from_secs(sh.input.settings.timeout_secs),
    )
    .and_then(|mut s| s.query("SHOW GRANTS"));
    match login {
        Ok(grants) => {
            let text: String = grants
                .iter()
                .filter_map(|r| r.at(0))
                .collect::<Vec<_>>()
                .join(" ");
            if text.contains("REPLICATION SLAVE") || text.contains("ALL PRIVILEGES") {
                check(
                    name,
                    vec![],
                    format!("`{user}` logs in to {new} and may replicate"),
                )
            } else {
                check(
                    name,
                    vec![format!("`{user}` on {new} lacks REPLICATION SLAVE: {text}")],
                    "",
                )
            }
        }
        Err(e) if server_code(&e) == Some(1045) && !hosts.iter().any(|h| host_matches(h, &me)) => {
            check(
                name,
                vec![],
                format!(
                    "`{user}` admits {old}; its password could not be tried from here ({me} is \
                     not admitted)"
                ),
            )
        }
        Err(e) => check(
            name,
            vec![format!(
                "`{user}` cannot log in to {new} with mysql.replication_password_file: {e:#}"
            )],
            "",
        ),
    }
}

fn dns(sh: &Shared) -> Check {
    let d = &sh.input.dns;
    let (server, key) = sh.dns();
    let name = "DNS update (TSIG)";
    match server.check_prerequisite(key, &d.name, d.old) {
        Ok(UpdateOutcome::Applied) => check(
            name,
            vec![],
            format!(
                "key `{}` accepted by {}; {} is {}",
                key.name, d.server, d.name, d.old
            ),
        ),
        Ok(UpdateOutcome::PrerequisiteFailed) => {
            let seen = server
                .query_a(&d.name)
                .map(|a| format!("{a:?}"))
                .unwrap_or_else(|e| format!("{e:#}"));
            check(
                name,
                vec![format!(
                    "{} is not {} ({}'s address) on {}: it answers {seen}",
                    d.name, d.old, sh.input.old_master, d.server
                )],
                "",
            )
        }
        Err(e) => check(name, vec![format!("{e:#}")], ""),
    }
}

fn haproxy(sh: &Shared) -> Check {
    let name = "HAProxy admin socket";
    let backend = &sh.config.haproxy.read_backend;
    let slots = match sh.haproxy().servers_state(backend.as_str()) {
        Ok(s) => s,
        Err(e) => return check(name, vec![format!("{e:#}")], ""),
    };
    let mut p = Vec::new();
    if slots.is_empty() {
        p.push(format!(
            "backend {backend} has no servers (or does not exist)"
        ));
    }
    let cfg = &sh.input.settings.haproxy_config;
    if let Some(pc) = &sh.input.pool {
        match slots.iter().find(|s| s.name == pc.slot) {
            Some(s) if s.endpoint() == pc.before => {}
            Some(s) => p.push(format!(
                "{}/{} is {}, the plan expected {}",
                pc.backend,
                pc.slot,
                s.endpoint(),
                pc.before
            )),
            None => p.push(format!("{}/{} is not in the backend", pc.backend, pc.slot)),
        }
        match std::fs::read_to_string(cfg) {
            Ok(text) => {
                if crate::haproxy::configured_server(&text, &pc.backend, &pc.slot).is_none() {
                    p.push(format!(
                        "{} has no `server {}` line in backend {}",
                        cfg.display(),
                        pc.slot,
                        pc.backend
                    ));
                }
            }
            Err(e) => p.push(format!("{}: {e}", cfg.display())),
        }
        let dir = cfg.parent().unwrap_or(std::path::Path::new("/"));
        let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).unwrap_or_default();
        // SAFETY: access() only reads the path.
        if unsafe { libc::access(c.as_ptr(), libc::W_OK) } != 0 {
            p.push(format!(
                "{} is not writable: the pool change could not be saved in {}",
                dir.display(),
                cfg.display()
            ));
        }
        if !sh.input.settings.haproxy_binary.exists() {
            p.push(format!(
                "{} (mysql.haproxy.binary) does not exist: the changed config could not be checked",
                sh.input.settings.haproxy_binary.display()
            ));
        }
    }
    let detail = format!(
        "{} answers; backend {backend}: {}",
        sh.haproxy().socket().display(),
        slots
            .iter()
            .map(|s| format!("{} {} {}", s.name, s.endpoint(), s.state_word()))
            .collect::<Vec<_>>()
            .join(", ")
    );
    check(name, p, detail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mysql_host_patterns() {
        assert!(host_matches("127.%", "127.0.60.11"));
        assert!(host_matches("10.0.0._1", "10.0.0.11"));
        assert!(!host_matches("10.0.0._1", "10.0.0.111"));
        assert!(host_matches("%", "anything"));
        assert!(host_matches("%.ipo.com", "MYSQL-00.ipo.com"));
        assert!(host_matches("10.0.0.0/255.255.255.0", "10.0.0.42"));
        assert!(!host_matches("10.0.0.0/255.255.255.0", "10.0.1.42"));
        assert!(!host_matches("localhost", "127.0.0.1"));
    }
}
