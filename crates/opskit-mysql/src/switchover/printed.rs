//! The printed plan: every step's statements, DNS update and HAProxy commands, exactly as
//! they run (pure; the snapshot tests render them for MariaDB and MySQL 8).

use opskit_core::plan::{PlanDescription, StepSpec};

use super::{Layout, PoolChange, StepKind, SwitchoverInput, render_paths};
use crate::dns::DnsServer;
use crate::haproxy::{AdminState, Runtime};

/// The printed steps of the plan, each with what runs it (pure; the snapshot tests render
/// these for MariaDB and MySQL).
pub fn specs(input: &SwitchoverInput) -> Vec<(StepSpec, StepKind)> {
    let (old, new) = (input.old_master.as_str(), input.new_master.as_str());
    let s = &input.settings;
    let mut out = vec![(
        StepSpec::new(
            "preflight",
            format!("Check that {new} can safely replace {old} (read-only; nothing changes)"),
        )
        .command(format!(
            "every server answers; GTID on; binary logs (+ log_slave_updates) on {new}{}; every \
             replica running with lag ≤ {} s; no errant transactions on {new}; no write on {old} \
             older than {} s; `{}` can log in to {new} from {old}'s address; the TSIG key \
             passes a prerequisite-only update; the HAProxy admin socket answers",
            if input.layout == Layout::Mirror && !input.children.is_empty() {
                format!(" and {old}")
            } else {
                String::new()
            },
            s.max_lag_secs,
            s.long_write_limit_secs,
            s.replication_user
        ))
        .precondition("the tree on the servers is the planned one")
        .verification("every check passes, else exit 3 and nothing changed"),
        StepKind::Preflight,
    )];
    for sib in &input.siblings {
        out.push((
            move_spec(input, sib, new, true),
            StepKind::MoveUnderNew(sib.clone()),
        ));
    }
    if let Some(p) = &input.pool {
        out.push((drain_spec(input, p), StepKind::Drain));
    }
    out.push((freeze_spec(input), StepKind::Freeze));
    out.push((catch_up_spec(input), StepKind::CatchUp));
    out.push((promote_spec(input), StepKind::Promote));
    out.push((dns_spec(input), StepKind::Dns));
    out.push((attach_spec(input), StepKind::Attach));
    let kn = input.kind(new);
    out.push((
        StepSpec::new(
            format!("forget-channel-{new}"),
            format!("{new} forgets its channel to {old} (kept until now for the rollback)"),
        )
        .command(format!("{} {};", input.on(new), kn.reset_replica_all()))
        .verification(format!(
            "{} on {new} shows no channel",
            kn.show_replica_status()
        )),
        StepKind::ForgetChannel,
    ));
    for c in &input.children {
        out.push((
            move_spec(input, c, old, false),
            StepKind::MoveUnderOld(c.clone()),
        ));
    }
    if let Some(p) = &input.pool {
        out.push((pool_spec(input, p), StepKind::Pool));
    }
    out.push((verify_spec(input), StepKind::Verify));
    out
}

fn move_spec(input: &SwitchoverInput, server: &str, to: &str, before_freeze: bool) -> StepSpec {
    let k = input.kind(server);
    let from = input
        .before
        .get(server)
        .cloned()
        .flatten()
        .unwrap_or_default();
    let (host, port) = input.host_of(to);
    let (fh, fp) = input.host_of(&from);
    let mut spec = StepSpec::new(
        format!("move-{server}-under-{to}"),
        format!(
            "Move {server} (and its replicas) from {from} under {to}{}",
            if before_freeze {
                " — before the freeze, no write impact"
            } else {
                ""
            }
        ),
    )
    .command(format!("{} {};", input.on(server), k.stop_replica()))
    .command(format!(
        "{} SELECT {};   -- = P, the position {server} stopped at",
        input.on(server),
        k.replica_pos_var()
    ))
    .command(match input.kind(to).flavor {
        crate::flavor::Flavor::Mariadb => format!(
            "{} SELECT @@GLOBAL.gtid_binlog_pos;   -- repeat (≤ 30 s) until it covers P: {to}'s \
             binary log has everything {server} has",
            input.on(to)
        ),
        crate::flavor::Flavor::Mysql => format!(
            "{} {};   -- 0: {to} has everything {server} has",
            input.on(to),
            input.kind(to).wait_for_gtid("<P>", 30)
        ),
    })
    .command(format!(
        "{} {};",
        input.on(server),
        k.change_source(host, port, None, false)
    ))
    .command(format!("{} {};", input.on(server), k.start_replica()))
    .precondition(format!(
        "{server} replicates from {from} (or already from {to})"
    ))
    .verification(format!(
        "{} on {server}: source {host}:{port}, both threads running",
        k.show_replica_status()
    ));
    if before_freeze {
        spec = spec.undo(vec![
            format!("{} {};", input.on(server), k.stop_replica()),
            format!(
                "{} {};",
                input.on(server),
                k.change_source(fh, fp, None, false)
            ),
            format!("{} {};", input.on(server), k.start_replica()),
        ]);
    }
    spec
}

fn drain_spec(input: &SwitchoverInput, p: &PoolChange) -> StepSpec {
    let sock = &input.settings.haproxy_socket;
    let new = &input.new_master;
    StepSpec::new(
        format!("drain-{new}"),
        format!(
            "Take {new} out of the read pool ({}/{}): no new reads go to the future master",
            p.backend, p.slot
        ),
    )
    .command(Runtime::shell_line(
        sock,
        &Runtime::set_state_command(&p.backend, &p.slot, AdminState::Drain),
    ))
    .command(format!(
        "# wait (≤ 5 s) for its sessions to finish: `show stat` scur of {}/{}",
        p.backend, p.slot
    ))
    .command(Runtime::shell_line(
        sock,
        &Runtime::set_state_command(&p.backend, &p.slot, AdminState::Maint),
    ))
    .precondition(format!("{}/{} is {} ({new})", p.backend, p.slot, p.before))
    .verification(format!(
        "`show servers state {}`: {} in maintenance",
        p.backend, p.slot
    ))
    .undo(vec![Runtime::shell_line(
        sock,
        &Runtime::set_state_command(&p.backend, &p.slot, AdminState::Ready),
    )])
}

fn freeze_spec(input: &SwitchoverInput) -> StepSpec {
    let old = &input.old_master;
    let k = input.kind(old);
    let on = input.on(old);
    let mut spec = StepSpec::new(
        format!("freeze-{old}"),
        format!(
            "Freeze writes on {old}: read-only, client sessions killed{} — writes are refused \
             from here until the DNS move",
            if k.flavor == crate::flavor::Flavor::Mariadb {
                " (privileged ones too: MariaDB's read_only does not bind SUPER)"
            } else {
                ""
            }
        ),
    )
    .command(format!(
        "{on} SET SESSION lock_wait_timeout = {};",
        input.settings.freeze_timeout_secs
    ));
    for st in k.freeze() {
        spec = spec.command(format!("{on} {st};"));
    }
    let undo: Vec<String> = k.unfreeze().iter().map(|s| format!("{on} {s};")).collect();
    spec.command(format!(
        "{on} {};   -- then KILL CONNECTION <id>; for each",
        crate::flavor::CLIENT_SESSIONS_SQL
    ))
    .command(format!(
        "{on} SELECT {};   -- = G, the final GTID set; read twice 50 ms apart, must not change",
        k.executed_var()
    ))
    .precondition(format!(
        "no write transaction on {old} older than {} s",
        input.settings.long_write_limit_secs
    ))
    .verification(format!("{old} is read-only and G is stable"))
    .undo(undo)
}

fn catch_up_spec(input: &SwitchoverInput) -> StepSpec {
    let (old, new) = (&input.old_master, &input.new_master);
    let k = input.kind(new);
    let t = input.settings.freeze_timeout_secs;
    StepSpec::new(
        format!("catch-up-{new}"),
        format!("Wait (≤ {t} s) until {new} has executed G, the last transaction of {old}"),
    )
    .command(format!(
        "{} {};   -- timeout: undo everything",
        input.on(new),
        k.wait_for_gtid("<G>", t)
    ))
    .command(match k.flavor {
        crate::flavor::Flavor::Mariadb => format!(
            "{} SELECT @@GLOBAL.gtid_binlog_state;   -- no GTID {old} lacks (errant)",
            input.on(new)
        ),
        crate::flavor::Flavor::Mysql => format!(
            "{} SELECT GTID_SUBTRACT(@@GLOBAL.gtid_executed, '<G>');   -- must be ''",
            input.on(new)
        ),
    })
    .precondition(format!(
        "{old}'s GTID is still G (nothing slipped past the freeze)"
    ))
    .verification(format!("{new} executed G and has no errant transaction"))
}

fn promote_spec(input: &SwitchoverInput) -> StepSpec {
    let (old, new) = (&input.old_master, &input.new_master);
    let k = input.kind(new);
    let on = input.on(new);
    let mut spec = StepSpec::new(
        format!("promote-{new}"),
        format!("Promote {new}: stop replicating from {old}, accept writes"),
    )
    .command(format!("{on} {};", k.stop_replica()));
    for st in k.make_writable() {
        spec = spec.command(format!("{on} {st};"));
    }
    let mut undo: Vec<String> = k
        .make_read_only()
        .iter()
        .map(|s| format!("{on} {s};"))
        .collect();
    undo.push(format!("{on} {};", k.start_replica()));
    spec.precondition(format!("{old}'s GTID is still G"))
        .verification(format!("{new} is writable, its replication stopped"))
        .undo(undo)
}

fn dns_spec(input: &SwitchoverInput) -> StepSpec {
    let d = &input.dns;
    let server: opskit_core::config::mysql::HostPort = d
        .server
        .clone()
        .try_into()
        .expect("the server came from a validated config");
    StepSpec::new(
        "dns",
        format!(
            "Move {} from {} ({}) to {} ({}): one RFC 2136 update signed with TSIG whose \
             prerequisite is the old address",
            d.name, input.old_master, d.old, input.new_master, d.new
        ),
    )
    .command(format!(
        "nsupdate -k <mysql.dns.tsig_key_file> <<'EOF'\n{}\nEOF",
        DnsServer::nsupdate_script(&server, &d.zone, &d.name, d.old, d.new, d.ttl)
    ))
    .precondition(format!(
        "{} answers {} (or already {})",
        d.server, d.old, d.new
    ))
    .verification(format!(
        "`dig @{} -p {} {} A +short` answers exactly {}",
        server.host, server.port, d.name, d.new
    ))
    .point_of_no_return()
}

fn attach_spec(input: &SwitchoverInput) -> StepSpec {
    let (old, new) = (&input.old_master, &input.new_master);
    let k = input.kind(old);
    let on = input.on(old);
    let (host, port) = input.host_of(new);
    let pw = format!(
        "<contents of {}>",
        input.settings.replication_password_file.display()
    );
    let mut spec = StepSpec::new(
        format!("attach-{old}"),
        format!("Make {old} a replica of {new} (GTID positioning), read-only"),
    )
    .command(format!(
        "{on} {};   -- then KILL CONNECTION <id>; for each (clients with a stale DNS answer)",
        crate::flavor::CLIENT_SESSIONS_SQL
    ));
    if let Some(p) = k.pre_demote() {
        spec = spec.command(format!("{on} {p};"));
    }
    spec = spec
        .command(format!(
            "{on} {};",
            k.change_source(
                host,
                port,
                Some((&input.settings.replication_user, &pw)),
                true
            )
        ))
        .command(format!("{on} {};", k.start_replica()));
    for st in k.make_read_only() {
        spec = spec.command(format!("{on} {st};"));
    }
    spec.precondition(format!(
        "{old}'s GTID is still G (no transaction of its own after the freeze)"
    ))
    .verification(format!(
        "{} on {old}: source {host}:{port}, both threads running",
        k.show_replica_status()
    ))
}

fn pool_spec(input: &SwitchoverInput, p: &PoolChange) -> StepSpec {
    let sock = &input.settings.haproxy_socket;
    let old = &input.old_master;
    StepSpec::new(
        format!("pool-{old}"),
        format!(
            "Put {old} into the read pool in {}'s slot ({}/{}): runtime API, then haproxy.cfg \
             so a reload keeps it",
            input.new_master, p.backend, p.slot
        ),
    )
    .command(Runtime::shell_line(
        sock,
        &Runtime::set_addr_command(&p.backend, &p.slot, &p.addr, p.port),
    ))
    .command(Runtime::shell_line(
        sock,
        &Runtime::set_state_command(&p.backend, &p.slot, AdminState::Ready),
    ))
    .command(format!(
        "{}: `server {} {}` → `server {} {}:{}` (checked with {} -c first)",
        input.settings.haproxy_config.display(),
        p.slot,
        p.before,
        p.slot,
        p.addr,
        p.port,
        input.settings.haproxy_binary.display()
    ))
    .precondition(format!(
        "{old} replicates with lag ≤ {} s",
        input.settings.max_lag_secs
    ))
    .verification(format!(
        "`show servers state {}`: {} is {}:{} and UP; haproxy.cfg says the same",
        p.backend, p.slot, p.addr, p.port
    ))
}

fn verify_spec(input: &SwitchoverInput) -> StepSpec {
    let new = &input.new_master;
    let k = input.kind(new);
    let schema = &input.settings.marker_schema;
    StepSpec::new(
        "verify",
        format!(
            "Check the new tree: a marker written on {new} reaches every replica, no errant \
             transactions, lag ≤ {} s, DNS and pool as planned",
            input.settings.max_lag_secs
        ),
    )
    .command(format!(
        "{} CREATE DATABASE IF NOT EXISTS {schema};",
        input.on(new)
    ))
    .command(format!(
        "{} CREATE TABLE IF NOT EXISTS {schema}.switchover_marker (run_key VARCHAR(128) PRIMARY KEY, written_at TIMESTAMP(6) NOT NULL, server_id INT UNSIGNED NOT NULL);",
        input.on(new)
    ))
    .command(format!(
        "{} REPLACE INTO {schema}.switchover_marker VALUES ('{}', NOW(6), @@server_id); SELECT {};   -- = M",
        input.on(new),
        input.run_key,
        k.executed_var()
    ))
    .command(format!(
        "[every replica] {}; SELECT COUNT(*) FROM {schema}.switchover_marker WHERE run_key = '{}';",
        k.wait_for_gtid("<M>", input.settings.timeout_secs),
        input.run_key
    ))
    .verification(format!(
        "the tree is {}; only {new} is writable",
        render_paths(&input.after, &input.order())
    ))
}

/// The printed plan of `input` (what `--dry-run` shows, without preflight results).
pub fn describe(input: &SwitchoverInput) -> PlanDescription {
    let mut plan = opskit_core::plan::Plan::new(crate::RUNBOOK, &input.run_key, title(input));
    for (name, value) in facts(input) {
        plan.fact(name, value);
    }
    let mut d = plan.describe();
    d.steps = specs(input).into_iter().map(|(s, _)| s).collect();
    d
}

/// The plan's title.
pub fn title(input: &SwitchoverInput) -> String {
    format!(
        "switch the master from {} to {} ({})",
        input.old_master,
        input.new_master,
        match input.layout {
            Layout::Mirror => "mirror",
            Layout::Flat => "flat",
        }
    )
}

/// The plan's facts: servers, trees, DNS and pool changes.
pub fn facts(input: &SwitchoverInput) -> Vec<(String, String)> {
    let order = input.order();
    let mut kinds: Vec<String> = input.kinds.values().map(|k| k.to_string()).collect();
    kinds.dedup();
    let mut f = vec![
        ("servers".to_string(), kinds.join(", ")),
        ("before".to_string(), render_paths(&input.before, &order)),
        ("after".to_string(), render_paths(&input.after, &order)),
        (
            "writes".to_string(),
            format!(
                "{} A {} → {} (TTL {} s, via {})",
                input.dns.name, input.dns.old, input.dns.new, input.dns.ttl, input.dns.server
            ),
        ),
    ];
    f.push((
        "reads".to_string(),
        match &input.pool {
            Some(p) => format!(
                "{}/{}: {} ({}) → {}:{} ({})",
                p.backend, p.slot, p.before, input.new_master, p.addr, p.port, input.old_master
            ),
            None => format!(
                "{} is not in the read pool: the pool is left as it is",
                input.new_master
            ),
        },
    ));
    f.push((
        "write freeze".to_string(),
        format!(
            "at most {} s of waiting for {} (mysql.freeze_timeout_secs), then undone",
            input.settings.freeze_timeout_secs, input.new_master
        ),
    ));
    f
}
