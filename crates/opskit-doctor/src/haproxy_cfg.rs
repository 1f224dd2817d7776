//! `haproxy.cfg` as the doctor needs it: the effective timeouts of every frontend → backend
//! route (with `defaults` inheritance, named `defaults … from`), keepalive options, health
//! checks and `on-marked-down`, and the global `hard-stop-after`.
//!
//! An unset timeout is infinite (HAProxy warns about it at start). In TCP mode `timeout tunnel`
//! supersedes `timeout client` and `timeout server` once data flows, so the idle limit of a
//! TCP route is the tunnel timeout when set, else the smaller of client and server.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The timers that can end an idle connection on the path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Timer {
    /// HAProxy `timeout client` (frontend side).
    Client,
    /// HAProxy `timeout server` (backend side).
    Server,
    /// HAProxy `timeout tunnel` (TCP mode, once data flows).
    Tunnel,
    /// MySQL `wait_timeout` on the replica.
    WaitTimeout,
}

impl Timer {
    /// The setting's name as an operator writes it.
    pub fn setting(self) -> &'static str {
        match self {
            Timer::Client => "timeout client",
            Timer::Server => "timeout server",
            Timer::Tunnel => "timeout tunnel",
            Timer::WaitTimeout => "wait_timeout",
        }
    }
}

/// Settings a proxy inherits from its `defaults` section.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    /// `mode` (`tcp` when unset).
    pub mode: Option<String>,
    /// `timeout <name>` in milliseconds (`client`, `server`, `tunnel`, `connect`, …).
    pub timeouts: BTreeMap<String, u64>,
    /// `option <name>` set (`true`) or unset with `no option` (`false`).
    pub options: BTreeMap<String, bool>,
    /// `default-server` parameters (`inter`, `fall`, `rise`, `on-marked-down`, …).
    pub default_server: BTreeMap<String, String>,
}

impl Settings {
    fn option(&self, name: &str) -> bool {
        self.options.get(name).copied().unwrap_or(false)
    }
}

/// One `server` line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerLine {
    /// Its name.
    pub name: String,
    /// `address:port`.
    pub address: String,
    /// Health-checked (`check`).
    pub check: bool,
    /// Its parameters after `default-server` (`inter`, `fall`, `rise`, `on-marked-down`, …).
    pub params: BTreeMap<String, String>,
}

impl ServerLine {
    /// `on-marked-down shutdown-sessions`: a DOWN check kills its open sessions.
    pub fn shuts_down_sessions(&self) -> bool {
        self.params.get("on-marked-down").map(String::as_str) == Some("shutdown-sessions")
    }
}

/// `frontend`, `backend` or `listen`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProxyKind {
    /// Accepts connections.
    Frontend,
    /// Holds servers.
    Backend,
    /// Both.
    Listen,
}

/// One proxy section with what it inherited.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Proxy {
    /// Section kind.
    pub kind: ProxyKind,
    /// Its name.
    pub name: String,
    /// The line it starts on.
    pub line: usize,
    /// Effective settings (defaults, then its own lines).
    pub settings: Settings,
    /// `default_backend` and every `use_backend` target.
    pub backends: Vec<String>,
    /// Its servers.
    pub servers: Vec<ServerLine>,
}

/// A parsed configuration.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HaproxyConfig {
    /// Every frontend, backend and listen section in file order.
    pub proxies: Vec<Proxy>,
    /// `hard-stop-after` of `global`, in milliseconds.
    pub hard_stop_after_ms: Option<u64>,
}

/// The effective timers of one frontend → backend path.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Route {
    /// The frontend (or listen) the application connects to.
    pub frontend: String,
    /// The backend holding the replicas.
    pub backend: String,
    /// `tcp` or `http`.
    pub mode: String,
    /// `timeout client` (frontend), ms; `None` = infinite.
    pub client_ms: Option<u64>,
    /// `timeout server` (backend), ms.
    pub server_ms: Option<u64>,
    /// `timeout tunnel` (backend), ms.
    pub tunnel_ms: Option<u64>,
    /// `option clitcpka` or `tcpka` on the frontend.
    pub clitcpka: bool,
    /// `option srvtcpka` or `tcpka` on the backend.
    pub srvtcpka: bool,
    /// Servers with `check`, `inter`/`fall`/`rise` and `on-marked-down` as `name: …`.
    pub checks: Vec<String>,
    /// Some server kills its sessions when marked DOWN.
    pub shutdown_sessions_on_down: bool,
}

impl Route {
    /// The idle limit of this path and the timer that owns it (`None`: no HAProxy limit).
    pub fn idle_limit(&self) -> Option<(u64, Timer)> {
        if self.mode == "tcp"
            && let Some(t) = self.tunnel_ms
        {
            return Some((t, Timer::Tunnel));
        }
        match (self.client_ms, self.server_ms) {
            (Some(c), Some(s)) if s < c => Some((s, Timer::Server)),
            (Some(c), _) => Some((c, Timer::Client)),
            (None, Some(s)) => Some((s, Timer::Server)),
            (None, None) => None,
        }
    }

    /// The configured value of `timer` on this route, ms.
    pub fn value(&self, timer: Timer) -> Option<u64> {
        match timer {
            Timer::Client => self.client_ms,
            Timer::Server => self.server_ms,
            Timer::Tunnel => self.tunnel_ms,
            Timer::WaitTimeout => None,
        }
    }
}

/// Parses an HAProxy time (`50000`, `50s`, `1m`, `500ms`, `2h`, `1d`; bare numbers are ms).
pub fn parse_time(s: &str) -> Option<u64> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mult = match unit {
        "" | "ms" => 1,
        "us" => return Some(n / 1000),
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return None,
    };
    n.checked_mul(mult)
}

/// Server parameters that take one value (the rest are flags like `check`, `backup`).
const VALUED: &[&str] = &[
    "inter",
    "fastinter",
    "downinter",
    "fall",
    "rise",
    "on-marked-down",
    "on-marked-up",
    "on-error",
    "observe",
    "weight",
    "maxconn",
    "port",
    "addr",
    "slowstart",
    "error-limit",
];

fn read_params(words: &[&str], into: &mut BTreeMap<String, String>) -> bool {
    let mut check = false;
    let mut i = 0;
    while i < words.len() {
        let w = words[i];
        if VALUED.contains(&w) && i + 1 < words.len() {
            into.insert(w.to_string(), words[i + 1].to_string());
            i += 2;
            continue;
        }
        if w == "check" {
            check = true;
        }
        i += 1;
    }
    check
}

impl HaproxyConfig {
    /// Parses the text of `haproxy.cfg`. Unknown keywords are ignored: the doctor only needs
    /// timeouts, options, servers and routes.
    pub fn parse(text: &str) -> HaproxyConfig {
        let mut cfg = HaproxyConfig::default();
        let mut named: BTreeMap<String, Settings> = BTreeMap::new();
        let mut last_defaults = Settings::default();
        // What the current section writes into.
        enum Cur {
            None,
            Global,
            Defaults(Option<String>),
            Proxy,
        }
        let mut cur = Cur::None;
        for (n, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or("").trim();
            let words: Vec<&str> = line.split_whitespace().collect();
            let Some(&kw) = words.first() else { continue };
            let from = |words: &[&str]| {
                words
                    .iter()
                    .position(|w| *w == "from")
                    .and_then(|i| words.get(i + 1))
                    .map(|s| s.to_string())
            };
            match kw {
                "global" => {
                    cur = Cur::Global;
                    continue;
                }
                "defaults" => {
                    let name = words
                        .get(1)
                        .filter(|w| **w != "from")
                        .map(|s| s.to_string());
                    // A new defaults section starts from scratch (or from its `from`).
                    last_defaults = from(&words)
                        .and_then(|f| named.get(&f).cloned())
                        .unwrap_or_default();
                    cur = Cur::Defaults(name);
                    continue;
                }
                "frontend" | "backend" | "listen" => {
                    let kind = match kw {
                        "frontend" => ProxyKind::Frontend,
                        "backend" => ProxyKind::Backend,
                        _ => ProxyKind::Listen,
                    };
                    let settings = from(&words)
                        .and_then(|f| named.get(&f).cloned())
                        .unwrap_or_else(|| last_defaults.clone());
                    cfg.proxies.push(Proxy {
                        kind,
                        name: words.get(1).unwrap_or(&"").to_string(),
                        line: n + 1,
                        settings,
                        backends: Vec::new(),
                        servers: Vec::new(),
                    });
                    cur = Cur::Proxy;
                    continue;
                }
                "peers" | "resolvers" | "userlist" | "program" | "cache" | "mailers"
                | "http-errors" | "ring" => {
                    cur = Cur::None;
                    continue;
                }
                _ => {}
            }
            match &cur {
                Cur::None => {}
                Cur::Global => {
                    if kw == "hard-stop-after" {
                        cfg.hard_stop_after_ms = words.get(1).and_then(|w| parse_time(w));
                    }
                }
                Cur::Defaults(name) => {
                    apply(&mut last_defaults, &words);
                    if let Some(name) = name {
                        named.insert(name.clone(), last_defaults.clone());
                    }
                }
                Cur::Proxy => {
                    let p = cfg.proxies.last_mut().expect("a proxy section is open");
                    match kw {
                        "default_backend" | "use_backend" => {
                            if let Some(b) = words.get(1)
                                && !p.backends.iter().any(|x| x == b)
                            {
                                p.backends.push(b.to_string());
                            }
                        }
                        "server" if words.len() >= 3 => {
                            let mut params = p.settings.default_server.clone();
                            let check = read_params(&words[3..], &mut params);
                            p.servers.push(ServerLine {
                                name: words[1].to_string(),
                                address: words[2].to_string(),
                                check,
                                params,
                            });
                        }
                        _ => apply(&mut p.settings, &words),
                    }
                }
            }
        }
        cfg
    }

    /// The proxy called `name` that can hold servers.
    pub fn backend(&self, name: &str) -> Option<&Proxy> {
        self.proxies
            .iter()
            .find(|p| p.name == name && p.kind != ProxyKind::Frontend)
    }

    /// Every path from a frontend (or listen) to a backend, with its effective timers.
    pub fn routes(&self) -> Vec<Route> {
        let mut out = Vec::new();
        for fe in self.proxies.iter().filter(|p| p.kind != ProxyKind::Backend) {
            let mut targets: Vec<&Proxy> =
                fe.backends.iter().filter_map(|b| self.backend(b)).collect();
            if fe.kind == ProxyKind::Listen {
                targets.insert(0, fe);
            }
            for be in targets {
                let t = |p: &Proxy, k: &str| p.settings.timeouts.get(k).copied();
                let checks = be
                    .servers
                    .iter()
                    .filter(|s| s.check)
                    .map(|s| {
                        let g = |k: &str| s.params.get(k).map_or("default", String::as_str);
                        format!(
                            "{}: inter {} fall {} rise {} on-marked-down {}",
                            s.name,
                            g("inter"),
                            g("fall"),
                            g("rise"),
                            s.params
                                .get("on-marked-down")
                                .map_or("(none)", String::as_str)
                        )
                    })
                    .collect();
                out.push(Route {
                    frontend: fe.name.clone(),
                    backend: be.name.clone(),
                    mode: fe.settings.mode.clone().unwrap_or_else(|| "tcp".into()),
                    client_ms: t(fe, "client"),
                    server_ms: t(be, "server"),
                    tunnel_ms: t(be, "tunnel"),
                    clitcpka: fe.settings.option("clitcpka") || fe.settings.option("tcpka"),
                    srvtcpka: be.settings.option("srvtcpka") || be.settings.option("tcpka"),
                    checks,
                    shutdown_sessions_on_down: be
                        .servers
                        .iter()
                        .any(ServerLine::shuts_down_sessions),
                });
            }
        }
        out
    }
}

/// Applies one line of a defaults or proxy section.
fn apply(s: &mut Settings, words: &[&str]) {
    match words {
        ["mode", m, ..] => s.mode = Some(m.to_string()),
        ["timeout", name, value, ..] => {
            if let Some(ms) = parse_time(value) {
                s.timeouts.insert(name.to_string(), ms);
            }
        }
        // The pre-1.5 spellings still seen in old configs.
        ["clitimeout" | "srvtimeout" | "contimeout", value, ..] => {
            let name = match words[0] {
                "clitimeout" => "client",
                "srvtimeout" => "server",
                _ => "connect",
            };
            if let Some(ms) = parse_time(value) {
                s.timeouts.insert(name.into(), ms);
            }
        }
        ["option", name, ..] => {
            s.options.insert(name.to_string(), true);
        }
        ["no", "option", name, ..] => {
            s.options.insert(name.to_string(), false);
        }
        ["default-server", rest @ ..] => {
            read_params(rest, &mut s.default_server);
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CFG: &str = "
global
    log stdout format raw local0 info
    hard-stop-after 3s

defaults
    mode tcp
    timeout connect 2s
    timeout client 50000
    timeout server 1m
    option clitcpka

frontend fe_ro
    bind 127.0.0.1:3307
    default_backend be_slaves

backend be_slaves
    option mysql-check user haproxy_check post-41
    default-server inter 1s fall 2 rise 1
    server Slave_01 10.0.0.12:3306 check on-marked-down shutdown-sessions
    server Slave_02 10.0.0.13:3306 check

defaults long from unnamed_is_not_a_name
    mode tcp
    timeout client 8h
    timeout server 8h
    timeout tunnel 28800s

frontend fe_tunnel from long
    bind :3308
    timeout client 30s # a comment
    use_backend be_long

backend be_long from long
    no option clitcpka
    server s1 10.0.0.12:3306
";

    #[test]
    fn times_follow_haproxy_units() {
        assert_eq!(parse_time("50000"), Some(50_000));
        assert_eq!(parse_time("50s"), Some(50_000));
        assert_eq!(parse_time("1m"), Some(60_000));
        assert_eq!(parse_time("2h"), Some(7_200_000));
        assert_eq!(parse_time("1d"), Some(86_400_000));
        assert_eq!(parse_time("1500us"), Some(1));
        assert_eq!(parse_time("5x"), None);
    }

    #[test]
    fn routes_inherit_defaults_and_the_tunnel_supersedes_client_and_server() {
        let cfg = HaproxyConfig::parse(CFG);
        assert_eq!(cfg.hard_stop_after_ms, Some(3000));
        let routes = cfg.routes();
        assert_eq!(routes.len(), 2);
        let ro = &routes[0];
        assert_eq!(
            (ro.frontend.as_str(), ro.backend.as_str()),
            ("fe_ro", "be_slaves")
        );
        assert_eq!(
            (ro.client_ms, ro.server_ms, ro.tunnel_ms),
            (Some(50_000), Some(60_000), None)
        );
        assert_eq!(ro.idle_limit(), Some((50_000, Timer::Client)));
        assert!(ro.clitcpka && !ro.srvtcpka);
        assert!(ro.shutdown_sessions_on_down);
        assert_eq!(
            ro.checks[0],
            "Slave_01: inter 1s fall 2 rise 1 on-marked-down shutdown-sessions"
        );
        assert!(ro.checks[1].ends_with("on-marked-down (none)"));
        // Named defaults: the frontend's own client timeout, the backend's tunnel wins.
        let long = &routes[1];
        assert_eq!(long.client_ms, Some(30_000));
        assert_eq!(long.tunnel_ms, Some(28_800_000));
        assert_eq!(long.idle_limit(), Some((28_800_000, Timer::Tunnel)));
        assert!(!long.clitcpka, "the named defaults have no clitcpka");
    }

    #[test]
    fn the_shorter_of_client_and_server_owns_the_limit_and_unset_is_infinite() {
        let cfg = HaproxyConfig::parse(
            "defaults\n mode tcp\n timeout client 30s\nlisten db\n bind :1\n timeout server 5s\n server a 1.2.3.4:3306\n",
        );
        let r = &cfg.routes()[0];
        assert_eq!(r.idle_limit(), Some((5000, Timer::Server)));
        let none = HaproxyConfig::parse("listen db\n bind :1\n server a 1.2.3.4:3306\n");
        assert_eq!(none.routes()[0].idle_limit(), None);
    }
}
