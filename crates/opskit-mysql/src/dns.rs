//! The write name's A record: read it, check that the TSIG key may change it, and move it with
//! one RFC 2136 UPDATE whose prerequisite is the old address (a compare-and-swap: if anyone
//! else changed the record, nothing happens and the name server answers NXRRSET).
//!
//! Messages are built and signed with `hickory-proto` (TSIG HMAC-SHA256/384/512) and sent over
//! UDP, falling back to TCP when the answer is truncated, with a time limit on every exchange.
//! The key is read from a BIND key file (`tsig-keygen` output, the file `nsupdate -k` takes)
//! through [`opskit_core::secret::read_secret_file`]; its secret never leaves this module.

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, ToSocketAddrs as _, UdpSocket};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode, UpdateMessage as _};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::rdata::tsig::TsigAlgorithm;
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType, TSigner};
use opskit_core::config::mysql::HostPort;
use opskit_core::error::usage;
use opskit_core::secret::{Secret, read_secret_file};

/// The config key of the TSIG key file (for errors).
pub const KEY_FILE_KEY: &str = "mysql.dns.tsig_key_file";

/// A TSIG key: its name, algorithm and secret.
pub struct TsigKey {
    /// The key's name (`mysql-master-update`).
    pub name: String,
    /// `hmac-sha256`, `hmac-sha384` or `hmac-sha512`.
    pub algorithm: String,
    secret: Secret,
}

impl std::fmt::Debug for TsigKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TsigKey({} {} ***)", self.name, self.algorithm)
    }
}

impl TsigKey {
    /// Reads a BIND key file: `key "NAME" { algorithm hmac-sha256; secret "BASE64"; };`.
    /// Every problem is a usage error (exit 2) naming the file.
    pub fn read(path: &Path) -> anyhow::Result<TsigKey> {
        let text = read_secret_file(path, KEY_FILE_KEY)?;
        TsigKey::parse(text.expose())
            .map_err(|e| usage(format!("{KEY_FILE_KEY}: {}: {e}", path.display())))
    }

    fn parse(text: &str) -> Result<TsigKey, String> {
        let after_key = text
            .split_once("key")
            .map(|(_, r)| r)
            .ok_or("no `key \"NAME\" { … };` block (expected tsig-keygen output)")?;
        let name = after_key
            .split('"')
            .nth(1)
            .filter(|n| !n.is_empty())
            .ok_or("the key has no quoted name")?
            .to_string();
        let field = |what: &str| -> Option<String> {
            let rest = after_key.split_once(what)?.1;
            let value = rest.split(';').next()?.trim().trim_matches('"').trim();
            (!value.is_empty()).then(|| value.to_string())
        };
        let algorithm = field("algorithm")
            .ok_or("the key has no `algorithm`")?
            .to_ascii_lowercase();
        if !["hmac-sha256", "hmac-sha384", "hmac-sha512"].contains(&algorithm.as_str()) {
            return Err(format!(
                "the algorithm `{algorithm}` is not supported: use hmac-sha256, hmac-sha384 or \
                 hmac-sha512 (`tsig-keygen -a hmac-sha256 {name}`)"
            ));
        }
        let secret = field("secret").ok_or("the key has no `secret`")?;
        data_encoding::BASE64
            .decode(secret.as_bytes())
            .map_err(|_| "the secret is not base64".to_string())?;
        Ok(TsigKey {
            name,
            algorithm,
            secret: Secret::new(secret),
        })
    }

    fn signer(&self) -> anyhow::Result<TSigner> {
        let algorithm = match self.algorithm.as_str() {
            "hmac-sha384" => TsigAlgorithm::HmacSha384,
            "hmac-sha512" => TsigAlgorithm::HmacSha512,
            _ => TsigAlgorithm::HmacSha256,
        };
        let key = data_encoding::BASE64
            .decode(self.secret.expose().as_bytes())
            .context("decoding the TSIG secret")?;
        TSigner::new(key, algorithm, Name::from_ascii(&self.name)?, 300)
            .map_err(|e| anyhow!("the TSIG key {}: {e}", self.name))
    }
}

/// What the name server said to an update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateOutcome {
    /// The prerequisite held (and the update, if any, was applied).
    Applied,
    /// The prerequisite did not hold: the record is not what was expected; nothing changed.
    PrerequisiteFailed,
}

/// The authoritative name server of the write name's zone.
#[derive(Debug)]
pub struct DnsServer {
    shown: String,
    addr: SocketAddr,
    zone: Name,
    timeout: Duration,
}

impl DnsServer {
    /// The server at `server` (a name is resolved once, here) for `zone`.
    pub fn new(server: &HostPort, zone: &str, timeout: Duration) -> anyhow::Result<DnsServer> {
        let addr = (server.host.as_str(), server.port)
            .to_socket_addrs()
            .with_context(|| format!("resolving the name server {server}"))?
            .next()
            .with_context(|| format!("the name server {server} has no address"))?;
        Ok(DnsServer {
            shown: server.to_string(),
            addr,
            zone: fqdn(zone)?,
            timeout,
        })
    }

    /// The A records of `name`, asked of this server (no cache in between).
    pub fn query_a(&self, name: &str) -> anyhow::Result<Vec<Ipv4Addr>> {
        let mut m = Message::query();
        m.add_query(Query::query(fqdn(name)?, RecordType::A));
        let r = self.exchange(&m, None)?;
        if r.response_code != ResponseCode::NoError && r.response_code != ResponseCode::NXDomain {
            bail!("{} answered {} to `{name} A`", self.shown, r.response_code);
        }
        Ok(r.answers
            .iter()
            .filter_map(|rec| match &rec.data {
                RData::A(a) => Some(a.0),
                _ => None,
            })
            .collect())
    }

    /// An UPDATE that only states the prerequisite `name A current` (RFC 2136 §2.4.2): proves
    /// that `key` is accepted for this zone and that the record is `current`, changing nothing.
    pub fn check_prerequisite(
        &self,
        key: &TsigKey,
        name: &str,
        current: Ipv4Addr,
    ) -> anyhow::Result<UpdateOutcome> {
        let m = self.update_message(name, current, None)?;
        self.send_update(key, m, name)
    }

    /// The compare-and-swap: prerequisite `name A current`, delete it, add `name ttl A new`,
    /// in one signed message.
    pub fn compare_and_swap(
        &self,
        key: &TsigKey,
        name: &str,
        current: Ipv4Addr,
        new: Ipv4Addr,
        ttl: u32,
    ) -> anyhow::Result<UpdateOutcome> {
        let m = self.update_message(name, current, Some((new, ttl)))?;
        self.send_update(key, m, name)
    }

    /// The `nsupdate` script equivalent to [`DnsServer::compare_and_swap`] (for the plan).
    pub fn nsupdate_script(
        server: &HostPort,
        zone: &str,
        name: &str,
        current: Ipv4Addr,
        new: Ipv4Addr,
        ttl: u32,
    ) -> String {
        format!(
            "server {} {}\nzone {zone}\nprereq yxrrset {name}. A {current}\n\
             update delete {name}. A {current}\nupdate add {name}. {ttl} A {new}\nsend",
            server.host, server.port
        )
    }

    fn update_message(
        &self,
        name: &str,
        current: Ipv4Addr,
        new: Option<(Ipv4Addr, u32)>,
    ) -> anyhow::Result<Message> {
        let owner = fqdn(name)?;
        if !self.zone.zone_of(&owner) {
            bail!("{name} is not in the zone {}", self.zone);
        }
        let mut zone = Query::new();
        zone.set_name(self.zone.clone())
            .set_query_class(DNSClass::IN)
            .set_query_type(RecordType::SOA);
        let mut m = Message::query();
        m.metadata.op_code = OpCode::Update;
        m.metadata.recursion_desired = false;
        m.add_zone(zone);
        // Value-dependent prerequisite: class IN, TTL 0, the exact rdata.
        m.add_pre_requisites(vec![Record::from_rdata(
            owner.clone(),
            0,
            RData::A(A(current)),
        )]);
        if let Some((new, ttl)) = new {
            let mut delete = Record::from_rdata(owner.clone(), 0, RData::A(A(current)));
            delete.dns_class = DNSClass::NONE;
            m.add_updates(vec![
                delete,
                Record::from_rdata(owner, ttl, RData::A(A(new))),
            ]);
        }
        Ok(m)
    }

    fn send_update(&self, key: &TsigKey, m: Message, name: &str) -> anyhow::Result<UpdateOutcome> {
        let r = self.exchange(&m, Some(key))?;
        match r.response_code {
            ResponseCode::NoError => Ok(UpdateOutcome::Applied),
            ResponseCode::NXRRSet => Ok(UpdateOutcome::PrerequisiteFailed),
            ResponseCode::NotAuth => bail!(
                "{} rejected the TSIG key `{}` (NOTAUTH{}): the key in {KEY_FILE_KEY} is not the \
                 one the server knows, or the clocks differ by more than 5 minutes",
                self.shown,
                key.name,
                r.signature()
                    .and_then(|s| s.data.error)
                    .map(|e| format!(", {e:?}"))
                    .unwrap_or_default()
            ),
            ResponseCode::Refused => bail!(
                "{} refused the update of {name} (REFUSED): the key `{}` has no update-policy \
                 grant for it, or the zone takes no updates",
                self.shown,
                key.name
            ),
            other => bail!("{} answered {other} to the update of {name}", self.shown),
        }
    }

    /// Sends `m` (signed with `key` when given) and returns the answer, verified when signed.
    fn exchange(&self, m: &Message, key: Option<&TsigKey>) -> anyhow::Result<Message> {
        let mut m = m.clone();
        let mut verifier = None;
        if let Some(key) = key {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs();
            verifier = m
                .finalize(&key.signer()?, now)
                .map_err(|e| anyhow!("signing the update: {e}"))?;
        }
        let bytes = m
            .to_vec()
            .map_err(|e| anyhow!("encoding the message: {e}"))?;
        let mut answer = self.udp(&bytes, m.metadata.id)?;
        if Message::from_vec(&answer)
            .map(|r| r.metadata.truncation)
            .unwrap_or(false)
        {
            answer = self.tcp(&bytes)?;
        }
        let response = Message::from_vec(&answer)
            .map_err(|e| anyhow!("{} sent an answer that does not decode: {e}", self.shown))?;
        if response.metadata.message_type != MessageType::Response {
            bail!("{} sent a query instead of an answer", self.shown);
        }
        // A refusal of the key itself comes back unsigned; anything else must verify.
        if let Some(mut v) = verifier
            && response.response_code != ResponseCode::NotAuth
        {
            v.verify(&answer).map_err(|e| {
                anyhow!(
                    "the answer from {} does not carry a valid TSIG signature: {e}",
                    self.shown
                )
            })?;
        }
        Ok(response)
    }

    fn udp(&self, bytes: &[u8], id: u16) -> anyhow::Result<Vec<u8>> {
        let bind: SocketAddr = if self.addr.is_ipv4() {
            "0.0.0.0:0".parse().expect("valid")
        } else {
            "[::]:0".parse().expect("valid")
        };
        let sock = UdpSocket::bind(bind).context("opening a UDP socket")?;
        sock.set_read_timeout(Some(self.timeout))?;
        sock.connect(self.addr)
            .with_context(|| format!("reaching the name server {}", self.shown))?;
        sock.send(bytes)
            .with_context(|| format!("sending to the name server {}", self.shown))?;
        let mut buf = vec![0u8; 65535];
        loop {
            let n = sock.recv(&mut buf).map_err(|e| {
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) {
                    anyhow!(
                        "the name server {} did not answer within {} s",
                        self.shown,
                        self.timeout.as_secs_f64()
                    )
                } else {
                    anyhow!("reading from the name server {}: {e}", self.shown)
                }
            })?;
            // Ignore stray datagrams that are not the answer to this message.
            if n >= 2 && u16::from_be_bytes([buf[0], buf[1]]) == id {
                buf.truncate(n);
                return Ok(buf);
            }
        }
    }

    fn tcp(&self, bytes: &[u8]) -> anyhow::Result<Vec<u8>> {
        let mut s = TcpStream::connect_timeout(&self.addr, self.timeout)
            .with_context(|| format!("connecting to the name server {} (TCP)", self.shown))?;
        s.set_read_timeout(Some(self.timeout))?;
        s.set_write_timeout(Some(self.timeout))?;
        let len = u16::try_from(bytes.len()).context("the message is too long")?;
        s.write_all(&len.to_be_bytes())?;
        s.write_all(bytes)?;
        let mut len = [0u8; 2];
        s.read_exact(&mut len)?;
        let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
        s.read_exact(&mut buf)
            .with_context(|| format!("reading from the name server {} (TCP)", self.shown))?;
        Ok(buf)
    }
}

fn fqdn(name: &str) -> anyhow::Result<Name> {
    let mut n = Name::from_ascii(name).with_context(|| format!("`{name}` is not a DNS name"))?;
    n.set_fqdn(true);
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEYGEN: &str = "key \"mysql-master-update\" {\n\talgorithm hmac-sha256;\n\tsecret \"V3o8zbJ6ICEL1Ouw/sr4B4RQCu1IewSus8sN1xSWUPc=\";\n};\n";

    #[test]
    fn reads_tsig_keygen_output() {
        let k = TsigKey::parse(KEYGEN).unwrap();
        assert_eq!(k.name, "mysql-master-update");
        assert_eq!(k.algorithm, "hmac-sha256");
        assert!(k.signer().is_ok());
        assert!(!format!("{k:?}").contains("V3o8"));
    }

    #[test]
    fn refuses_keys_it_cannot_sign_with() {
        let md5 = KEYGEN.replace("hmac-sha256", "hmac-md5");
        assert!(TsigKey::parse(&md5).unwrap_err().contains("not supported"));
        let bad = KEYGEN.replace("V3o8", "!!!!");
        assert!(TsigKey::parse(&bad).unwrap_err().contains("base64"));
        assert!(TsigKey::parse("secret \"x\";").is_err());
    }

    #[test]
    fn the_printed_script_is_a_compare_and_swap() {
        let server: HostPort = "127.0.0.1:5353".to_string().try_into().unwrap();
        let s = DnsServer::nsupdate_script(
            &server,
            "ipo.com",
            "mysql-master.ipo.com",
            "10.0.0.11".parse().unwrap(),
            "10.0.0.12".parse().unwrap(),
            5,
        );
        assert!(s.contains("prereq yxrrset mysql-master.ipo.com. A 10.0.0.11"));
        assert!(s.contains("update delete mysql-master.ipo.com. A 10.0.0.11"));
        assert!(s.contains("update add mysql-master.ipo.com. 5 A 10.0.0.12"));
    }
}
