//! What Docker says about the host: its firewall backend, and each container's address,
//! bridge and published ports (`docker info`, `docker inspect`, `docker network inspect`).
//!
//! The config is the source of truth for the rules; Docker is asked only to confirm it. A
//! container that is missing, or sits on another address or bridge than the config says, is an
//! error (the rules would protect the wrong thing). Port bindings that weaken the policy
//! outside iptables (a publish on `[::]`, served by docker-proxy from the host itself) are
//! warnings.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use opskit_core::config::{FirewallConfig, Reading};
use opskit_core::proc;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Time limit of one docker call.
pub const DOCKER_TIMEOUT: Duration = Duration::from_secs(30);

/// A container as Docker runs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObservedContainer {
    /// Its name (without Docker's leading `/`).
    pub name: String,
    /// `(network name, IPv4 address, bridge interface)` for each network it is on.
    pub networks: Vec<(String, String, String)>,
    /// `(container port/proto, host address, host port)` for each published port.
    pub published: Vec<(String, String, String)>,
}

/// What Docker said, and how it compares with the config.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DockerReport {
    /// `ServerVersion` of `docker info`.
    pub version: String,
    /// The firewall backend (`iptables`, or `nftables` on Docker 29+ when chosen).
    pub backend: String,
    /// Differences that make the rules wrong for this host.
    pub errors: Vec<String>,
    /// Differences that weaken the policy outside iptables.
    pub warnings: Vec<String>,
}

fn docker(cli: &Path, args: &[&str]) -> Result<proc::Output> {
    proc::run(Command::new(cli).args(args), DOCKER_TIMEOUT)
}

/// Parses `docker info --format '{{json .}}'`: `(version, firewall backend)`.
pub fn parse_info(text: &str) -> Result<(String, String)> {
    let v: Value = serde_json::from_str(text.trim()).context("`docker info` printed no JSON")?;
    let Some(version) = v.get("ServerVersion").and_then(Value::as_str) else {
        bail!(
            "`docker info` does not describe a Docker Engine (no ServerVersion: Podman's docker \
             command?); Podman has no DOCKER-USER chain"
        )
    };
    // Docker before 28.1 does not report its backend: it only had iptables.
    let backend = v
        .pointer("/FirewallBackend/Driver")
        .and_then(Value::as_str)
        .unwrap_or("iptables");
    Ok((version.to_string(), backend.to_string()))
}

/// Parses `docker inspect --type container …` (a JSON array).
pub fn parse_containers(text: &str) -> Result<Vec<(ObservedContainer, Vec<String>)>> {
    let v: Value =
        serde_json::from_str(text.trim()).context("`docker inspect` printed no JSON array")?;
    let mut out = Vec::new();
    for c in v
        .as_array()
        .context("`docker inspect` printed no JSON array")?
    {
        let name = c
            .get("Name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .trim_start_matches('/')
            .to_string();
        let mut networks = Vec::new();
        let mut network_ids = Vec::new();
        if let Some(nets) = c
            .pointer("/NetworkSettings/Networks")
            .and_then(Value::as_object)
        {
            for (net, n) in nets {
                let ip = n.get("IPAddress").and_then(Value::as_str).unwrap_or("");
                let id = n.get("NetworkID").and_then(Value::as_str).unwrap_or("");
                networks.push((net.clone(), ip.to_string(), String::new()));
                network_ids.push(id.to_string());
            }
        }
        let mut published = Vec::new();
        if let Some(ports) = c
            .pointer("/NetworkSettings/Ports")
            .and_then(Value::as_object)
        {
            for (port, bindings) in ports {
                for b in bindings.as_array().into_iter().flatten() {
                    published.push((
                        port.clone(),
                        b.get("HostIp").and_then(Value::as_str).unwrap_or("").into(),
                        b.get("HostPort")
                            .and_then(Value::as_str)
                            .unwrap_or("")
                            .into(),
                    ));
                }
            }
        }
        out.push((
            ObservedContainer {
                name,
                networks,
                published,
            },
            network_ids,
        ));
    }
    Ok(out)
}

/// Parses `docker network inspect …`: `(id, bridge interface)` per network.
pub fn parse_networks(text: &str) -> Result<Vec<(String, String)>> {
    let v: Value = serde_json::from_str(text.trim())
        .context("`docker network inspect` printed no JSON array")?;
    let mut out = Vec::new();
    for n in v.as_array().into_iter().flatten() {
        let id = n
            .get("Id")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let name = n.get("Name").and_then(Value::as_str).unwrap_or("");
        let bridge = n
            .pointer("/Options/com.docker.network.bridge.name")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| {
                // Docker's own naming when no bridge name was pinned.
                if name == "bridge" {
                    "docker0".to_string()
                } else {
                    format!("br-{}", id.get(..12).unwrap_or(&id))
                }
            });
        out.push((id, bridge));
    }
    Ok(out)
}

/// Compares what Docker runs with the config.
pub fn compare(cfg: &FirewallConfig, observed: &[ObservedContainer]) -> (Vec<String>, Vec<String>) {
    let (mut errors, mut warnings) = (Vec::new(), Vec::new());
    for c in &cfg.containers {
        let Some(o) = observed.iter().find(|o| o.name == c.name.as_str()) else {
            errors.push(format!(
                "container `{}` does not exist on this host",
                c.name
            ));
            continue;
        };
        let address = c.address.to_string();
        match o.networks.iter().find(|(_, ip, _)| *ip == address) {
            None => errors.push(format!(
                "container `{}` has {} but the config says {address}",
                c.name,
                if o.networks.is_empty() {
                    "no IPv4 address".to_string()
                } else {
                    o.networks
                        .iter()
                        .map(|(n, ip, _)| format!("{ip} on {n}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            )),
            Some((net, _, bridge)) if bridge != c.bridge.as_str() => errors.push(format!(
                "container `{}`'s network {net} uses bridge {bridge} but the config says {}",
                c.name, c.bridge
            )),
            Some(_) => {}
        }
        let exposed_by_policy: Vec<u16> = match cfg.reading {
            Reading::Tiered => c.ports().collect(),
            Reading::Strict => c.published_ports.clone(),
        };
        for p in &exposed_by_policy {
            let key = format!("{p}/tcp");
            let bindings: Vec<_> = o.published.iter().filter(|(k, _, _)| *k == key).collect();
            if bindings.is_empty() {
                warnings.push(format!(
                    "`{}` does not publish {key}: nobody outside the host reaches it (docker run \
                     -p 0.0.0.0:{p}:{p})",
                    c.name
                ));
            }
            for (_, host_ip, host_port) in bindings {
                if host_port != &p.to_string() {
                    warnings.push(format!(
                        "`{}` publishes {key} on host port {host_port}, not {p}",
                        c.name
                    ));
                }
                if host_ip.is_empty() || host_ip.contains(':') {
                    warnings.push(format!(
                        "`{}` publishes {key} on `{}`: with the default userland-proxy, IPv6 \
                         clients reach it through docker-proxy on the host, which DOCKER-USER \
                         never sees; publish on 0.0.0.0 (-p 0.0.0.0:{p}:{p})",
                        c.name,
                        if host_ip.is_empty() {
                            "all addresses"
                        } else {
                            host_ip
                        }
                    ));
                }
            }
        }
    }
    (errors, warnings)
}

/// Asks Docker (when `[firewall] docker` names a client that exists). `Ok(None)`: no Docker to
/// ask, the config alone describes the host.
pub fn observe(cfg: &FirewallConfig) -> Result<Option<DockerReport>> {
    let Some(cli) = cfg.docker.path() else {
        return Ok(None);
    };
    let cli = cli.path();
    if !cli.exists() {
        return Ok(None);
    }
    let info = docker(cli, &["info", "--format", "{{json .}}"])?
        .checked()
        .context("asking Docker for its firewall backend (is the daemon running?)")?;
    let (version, backend) = parse_info(&info.stdout_text())?;
    let mut report = DockerReport {
        version,
        backend,
        ..DockerReport::default()
    };
    let names: Vec<&str> = cfg.containers.iter().map(|c| c.name.as_str()).collect();
    let mut args = vec!["inspect", "--type", "container"];
    args.extend(&names);
    // A missing name makes docker exit 1 but still print the others.
    let out = docker(cli, &args)?;
    let mut observed = parse_containers(&out.stdout_text()).or_else(|e| {
        if out.success() {
            Err(e)
        } else {
            Ok(Vec::new())
        }
    })?;
    let ids: Vec<String> = {
        let mut ids: Vec<String> = observed.iter().flat_map(|(_, ids)| ids.clone()).collect();
        ids.sort();
        ids.dedup();
        ids.retain(|i| !i.is_empty());
        ids
    };
    if !ids.is_empty() {
        let mut args = vec!["network", "inspect"];
        args.extend(ids.iter().map(String::as_str));
        let nets = docker(cli, &args)?.checked()?;
        let bridges = parse_networks(&nets.stdout_text())?;
        for (c, ids) in &mut observed {
            for (net, id) in c.networks.iter_mut().zip(ids.iter()) {
                if let Some((_, b)) = bridges.iter().find(|(i, _)| i == id) {
                    net.2.clone_from(b);
                }
            }
        }
    }
    let observed: Vec<ObservedContainer> = observed.into_iter().map(|(c, _)| c).collect();
    (report.errors, report.warnings) = compare(cfg, &observed);
    Ok(Some(report))
}

#[cfg(test)]
mod tests {
    use super::*;

    const INSPECT: &str = r#"[
      {"Name": "/Docker_A",
       "NetworkSettings": {
         "Ports": {"8080/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8080"}]},
         "Networks": {"net_ab": {"IPAddress": "172.30.1.10", "NetworkID": "aaaaaaaaaaaaaaaa"}}}},
      {"Name": "/Docker_B",
       "NetworkSettings": {
         "Ports": {"3316/tcp": [{"HostIp": "", "HostPort": "3316"}]},
         "Networks": {"net_ab": {"IPAddress": "172.30.1.99", "NetworkID": "aaaaaaaaaaaaaaaa"}}}},
      {"Name": "/Docker_C",
       "NetworkSettings": {
         "Ports": {"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "80"}]},
         "Networks": {"net_c": {"IPAddress": "172.30.2.10", "NetworkID": "cccccccccccccccccc"}}}}
    ]"#;
    const NETWORKS: &str = r#"[
      {"Name": "net_ab", "Id": "aaaaaaaaaaaaaaaa", "Options": {"com.docker.network.bridge.name": "br-ab"}},
      {"Name": "net_c", "Id": "cccccccccccccccccc", "Options": {}}
    ]"#;

    fn observed() -> Vec<ObservedContainer> {
        let bridges = parse_networks(NETWORKS).unwrap();
        parse_containers(INSPECT)
            .unwrap()
            .into_iter()
            .map(|(mut c, ids)| {
                for (net, id) in c.networks.iter_mut().zip(&ids) {
                    net.2 = bridges.iter().find(|(i, _)| i == id).unwrap().1.clone();
                }
                c
            })
            .collect()
    }

    #[test]
    fn info_names_the_backend_and_refuses_podman() {
        let (v, b) =
            parse_info(r#"{"ServerVersion":"29.1.0","FirewallBackend":{"Driver":"nftables"}}"#)
                .unwrap();
        assert_eq!((v.as_str(), b.as_str()), ("29.1.0", "nftables"));
        let (_, b) = parse_info(r#"{"ServerVersion":"26.1.3"}"#).unwrap();
        assert_eq!(b, "iptables");
        let e = parse_info(r#"{"host":{"arch":"amd64"},"version":{"Version":"4.9"}}"#).unwrap_err();
        assert!(e.to_string().contains("Podman"), "{e}");
    }

    #[test]
    fn unpinned_bridges_get_dockers_own_names() {
        let b = parse_networks(NETWORKS).unwrap();
        assert_eq!(b[0].1, "br-ab");
        assert_eq!(b[1].1, "br-cccccccccccc");
        let d = parse_networks(r#"[{"Name":"bridge","Id":"x","Options":{}}]"#).unwrap();
        assert_eq!(d[0].1, "docker0");
    }

    #[test]
    fn a_wrong_address_or_bridge_is_an_error_and_a_v6_publish_a_warning() {
        let (errors, warnings) = compare(&FirewallConfig::default(), &observed());
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(
            errors[0].contains("`Docker_B` has 172.30.1.99 on net_ab"),
            "{errors:?}"
        );
        assert!(
            errors[1].contains("bridge br-cccccccccccc but the config says br-c"),
            "{errors:?}"
        );
        assert!(
            warnings.iter().any(|w| w.contains("docker-proxy")),
            "{warnings:?}"
        );
        let mut missing = observed();
        missing.remove(0);
        let (errors, _) = compare(&FirewallConfig::default(), &missing);
        assert!(
            errors[0].contains("`Docker_A` does not exist"),
            "{errors:?}"
        );
    }
}
