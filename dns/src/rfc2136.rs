//! RFC 2136 dynamic updates signed with TSIG (RFC 8945), over UDP with TCP fallback, via
//! hickory-net and hickory-proto. Listing a zone uses a TSIG-signed AXFR over TCP.

use std::net::SocketAddr;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt as _;
use hickory_net::client::{Client, ClientHandle as _};
use hickory_net::runtime::TokioRuntimeProvider;
use hickory_net::tcp::TcpClientStream;
use hickory_net::udp::UdpClientStream;
use hickory_net::{DnsHandle as _, DnsMultiplexer, NetError};
use hickory_proto::op::{
    DEFAULT_MAX_PAYLOAD_LEN, DnsRequest, DnsResponse, Edns, Message, OpCode, Query, ResponseCode,
    UpdateMessage as _,
};
use hickory_proto::rr::rdata::tsig::TsigAlgorithm;
use hickory_proto::rr::rdata::{A, AAAA, TXT};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType as WireType, TSigner};

use crate::provider::{check_rrset, name_in_zone};
use crate::{DnsError, DnsProvider, RecordSet, RecordType, Zone};

/// TSIG credentials: key name, algorithm and the decoded secret.
#[derive(Clone)]
pub struct TsigKey {
    pub name: String,
    pub algorithm: TsigAlgorithmName,
    pub secret: Vec<u8>,
}

impl std::fmt::Debug for TsigKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The secret never reaches logs.
        f.debug_struct("TsigKey")
            .field("name", &self.name)
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

/// The HMAC algorithms hickory can sign with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
pub enum TsigAlgorithmName {
    #[serde(rename = "hmac-sha256")]
    HmacSha256,
    #[serde(rename = "hmac-sha384")]
    HmacSha384,
    #[serde(rename = "hmac-sha512")]
    HmacSha512,
}

impl TsigAlgorithmName {
    fn wire(self) -> TsigAlgorithm {
        match self {
            Self::HmacSha256 => TsigAlgorithm::HmacSha256,
            Self::HmacSha384 => TsigAlgorithm::HmacSha384,
            Self::HmacSha512 => TsigAlgorithm::HmacSha512,
        }
    }
}

/// An RFC 2136 primary server accepting signed updates.
#[derive(Clone)]
pub struct Rfc2136Provider {
    server: SocketAddr,
    /// Fixed zone, if configured; otherwise zones are discovered with SOA queries.
    zone: Option<String>,
    signer: Option<TSigner>,
    timeout: Duration,
}

impl std::fmt::Debug for Rfc2136Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rfc2136Provider")
            .field("server", &self.server)
            .field("zone", &self.zone)
            .field("signed", &self.signer.is_some())
            .finish_non_exhaustive()
    }
}

const PROVIDER: &str = "rfc2136";
/// TSIG fudge: the clock skew the server tolerates (RFC 8945 recommends 300 s).
const FUDGE_SECONDS: u16 = 300;

impl Rfc2136Provider {
    /// A provider for `server`; `zone` pins the zone (else discovered), `key` signs updates.
    pub fn new(
        server: SocketAddr,
        zone: Option<&str>,
        key: Option<TsigKey>,
        timeout: Duration,
    ) -> Result<Self, DnsError> {
        let zone = zone
            .map(crate::name::normalize)
            .transpose()
            .map_err(|e| DnsError::config("rfc2136.zone", e.to_string()))?;
        let signer = match key {
            None => None,
            Some(key) => {
                if key.secret.is_empty() {
                    return Err(DnsError::config(
                        "rfc2136.tsigSecretRef",
                        "the secret is empty",
                    ));
                }
                let key_name = Name::from_ascii(&key.name).map_err(|e| {
                    DnsError::config("rfc2136.tsigKeyName", format!("{:?}: {e}", key.name))
                })?;
                Some(
                    TSigner::new(key.secret, key.algorithm.wire(), key_name, FUDGE_SECONDS)
                        .map_err(|e| DnsError::config("rfc2136.tsigAlgorithm", e.to_string()))?,
                )
            }
        };
        Ok(Self {
            server,
            zone,
            signer,
            timeout,
        })
    }

    fn unreachable(&self, detail: impl std::fmt::Display) -> DnsError {
        DnsError::Unreachable {
            provider: PROVIDER.to_owned(),
            endpoint: self.server.to_string(),
            detail: detail.to_string(),
        }
    }

    /// Maps a transport error. A TSIG verification failure of the answer means the server did
    /// not accept our key (it answers BADKEY/BADSIG unsigned), so it is reported as such.
    fn net_error(&self, error: NetError) -> DnsError {
        let text = error.to_string();
        let lower = text.to_ascii_lowercase();
        if self.signer.is_some() && (lower.contains("tsig") || lower.contains("signature")) {
            return DnsError::Unauthorized {
                provider: self.describe(),
                detail: format!(
                    "the server did not accept the TSIG signature (check key name, secret and \
                     algorithm): {text}"
                ),
            };
        }
        match error {
            NetError::Timeout | NetError::Io(_) | NetError::NoConnections | NetError::Busy => {
                self.unreachable(text)
            }
            _ => DnsError::Protocol {
                provider: self.describe(),
                detail: text,
            },
        }
    }

    async fn send_udp(&self, message: Message) -> Result<DnsResponse, NetError> {
        let stream = UdpClientStream::builder(self.server, TokioRuntimeProvider::default())
            .with_timeout(Some(self.timeout))
            .with_signer(self.signer.clone())
            .build();
        let (client, background) = Client::<TokioRuntimeProvider>::from_sender(stream);
        let task = tokio::spawn(background);
        let result = first_response(client.send(DnsRequest::from(message))).await;
        task.abort();
        result
    }

    async fn tcp_client(&self) -> Result<(Client<TokioRuntimeProvider>, AbortOnDrop), NetError> {
        let (connect, handle) = TcpClientStream::new(
            self.server,
            None,
            Some(self.timeout),
            TokioRuntimeProvider::default(),
        );
        let stream = tokio::time::timeout(self.timeout, connect)
            .await
            .map_err(|_| NetError::Timeout)??;
        let mut multiplexer = DnsMultiplexer::new(stream, handle).with_timeout(self.timeout);
        if let Some(signer) = &self.signer {
            multiplexer = multiplexer.with_signer(signer.clone());
        }
        let (client, background) = Client::<TokioRuntimeProvider>::from_sender(multiplexer);
        Ok((client, AbortOnDrop(tokio::spawn(background))))
    }

    /// Sends over UDP and retries over TCP when the answer is truncated (TC bit).
    async fn exchange(&self, message: Message) -> Result<DnsResponse, DnsError> {
        let udp = self.send_udp(message.clone()).await;
        let needs_tcp = match &udp {
            Ok(response) => response.truncation,
            Err(_) => false,
        };
        let response = if needs_tcp {
            tracing::debug!(server = %self.server, "retrying DNS request over TCP");
            let (client, _guard) = self.tcp_client().await.map_err(|e| self.net_error(e))?;
            first_response(client.send(DnsRequest::from(message)))
                .await
                .map_err(|e| self.net_error(e))?
        } else {
            udp.map_err(|e| self.net_error(e))?
        };
        Ok(response)
    }

    /// Sends an UPDATE and turns a non-NOERROR answer into an error naming `name`.
    async fn update(&self, message: Message, name: &str) -> Result<(), DnsError> {
        let response = self.exchange(message).await?;
        match response.response_code {
            ResponseCode::NoError => Ok(()),
            code @ (ResponseCode::NotAuth
            | ResponseCode::BADSIG
            | ResponseCode::BADKEY
            | ResponseCode::BADTIME) => Err(DnsError::Unauthorized {
                provider: self.describe(),
                detail: format!("server answered {code} (TSIG key unknown, wrong or not allowed)"),
            }),
            ResponseCode::Refused => Err(DnsError::Rejected {
                provider: self.describe(),
                name: name.to_owned(),
                detail: "REFUSED: the server's update policy does not allow this change".into(),
            }),
            ResponseCode::NotZone => Err(DnsError::Rejected {
                provider: self.describe(),
                name: name.to_owned(),
                detail: "NOTZONE: the name is not in the zone the server serves".into(),
            }),
            code => Err(DnsError::Rejected {
                provider: self.describe(),
                name: name.to_owned(),
                detail: format!("server answered {code}"),
            }),
        }
    }

    fn update_message(zone: &Zone) -> Result<Message, DnsError> {
        let mut message = Message::query();
        message.metadata.op_code = OpCode::Update;
        message.metadata.recursion_desired = false;
        let mut query = Query::new();
        query
            .set_name(wire_name(&zone.name)?)
            .set_query_class(DNSClass::IN)
            .set_query_type(WireType::SOA);
        message.add_zone(query);
        message
            .edns
            .get_or_insert_with(Edns::new)
            .set_max_payload(DEFAULT_MAX_PAYLOAD_LEN)
            .set_version(0);
        Ok(message)
    }

    /// Asks the server for the SOA of `name`: an authoritative server answers with the SOA in
    /// the answer section (apex) or the authority section (below the apex).
    async fn discover_zone(&self, name: &str) -> Result<Option<String>, DnsError> {
        let mut message = Message::query();
        message.metadata.recursion_desired = false;
        message.add_query(Query::query(wire_name(name)?, WireType::SOA));
        let response = self.exchange(message).await?;
        let soa = response
            .answers
            .iter()
            .chain(response.authorities.iter())
            .find(|record| record.record_type() == WireType::SOA);
        Ok(match soa {
            Some(record) => Some(crate::name::normalize(&record.name.to_ascii())?),
            None => None,
        })
    }
}

/// Aborts a spawned background task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn first_response<S>(mut responses: S) -> Result<DnsResponse, NetError>
where
    S: futures::Stream<Item = Result<DnsResponse, NetError>> + Unpin,
{
    responses.next().await.unwrap_or(Err(NetError::Timeout))
}

fn wire_name(name: &str) -> Result<Name, DnsError> {
    let mut wire = Name::from_ascii(name).map_err(|e| DnsError::InvalidName {
        name: name.to_owned(),
        reason: e.to_string(),
    })?;
    wire.set_fqdn(true);
    Ok(wire)
}

/// TXT rdata for `value`, split into 255-byte character-strings as RFC 1035 requires.
fn txt_rdata(value: &str) -> RData {
    let chunks: Vec<&[u8]> = value.as_bytes().chunks(255).collect();
    RData::TXT(TXT::from_bytes(if chunks.is_empty() {
        vec![&b""[..]]
    } else {
        chunks
    }))
}

fn rdata_for(rtype: &RecordType, value: &str) -> Result<RData, DnsError> {
    let rejected = |detail: String| DnsError::Rejected {
        provider: PROVIDER.to_owned(),
        name: value.to_owned(),
        detail,
    };
    match rtype {
        RecordType::A => value
            .parse()
            .map(|ip| RData::A(A(ip)))
            .map_err(|_| rejected(format!("{value:?} is not an IPv4 address"))),
        RecordType::Aaaa => value
            .parse()
            .map(|ip| RData::AAAA(AAAA(ip)))
            .map_err(|_| rejected(format!("{value:?} is not an IPv6 address"))),
        RecordType::Txt => Ok(txt_rdata(value)),
        other => Err(rejected(format!("record type {other} cannot be written"))),
    }
}

fn wire_type(rtype: &RecordType) -> Result<WireType, DnsError> {
    rtype
        .as_str()
        .parse::<WireType>()
        .map_err(|e| DnsError::Protocol {
            provider: PROVIDER.to_owned(),
            detail: format!("record type {rtype}: {e}"),
        })
}

/// The provider-neutral value of a record; `None` for types torhaus does not model.
fn value_of(data: &RData) -> Option<(RecordType, String)> {
    match data {
        RData::A(a) => Some((RecordType::A, a.0.to_string())),
        RData::AAAA(aaaa) => Some((RecordType::Aaaa, aaaa.0.to_string())),
        RData::TXT(txt) => Some((
            RecordType::Txt,
            txt.txt_data
                .iter()
                .map(|part| String::from_utf8_lossy(part).into_owned())
                .collect(),
        )),
        RData::CNAME(target) => Some((
            RecordType::Cname,
            target
                .0
                .to_ascii()
                .trim_end_matches('.')
                .to_ascii_lowercase(),
        )),
        _ => None,
    }
}

#[async_trait]
impl DnsProvider for Rfc2136Provider {
    fn describe(&self) -> String {
        format!("rfc2136 {}", self.server)
    }

    async fn find_zone(&self, name: &str) -> Result<Zone, DnsError> {
        let name = crate::name::normalize(name)?;
        if let Some(zone) = &self.zone {
            if crate::name::is_within(&name, zone) {
                return Ok(Zone {
                    name: zone.clone(),
                    id: zone.clone(),
                });
            }
            return Err(DnsError::ZoneNotFound {
                provider: self.describe(),
                name,
            });
        }
        match self.discover_zone(&name).await? {
            Some(zone) if crate::name::is_within(&name, &zone) => Ok(Zone {
                id: zone.clone(),
                name: zone,
            }),
            _ => Err(DnsError::ZoneNotFound {
                provider: self.describe(),
                name,
            }),
        }
    }

    async fn list_records(&self, zone: &Zone) -> Result<Vec<RecordSet>, DnsError> {
        let (mut client, _guard) = self.tcp_client().await.map_err(|e| self.net_error(e))?;
        let mut transfer = client.zone_transfer(wire_name(&zone.name)?, None);
        let mut sets: Vec<RecordSet> = Vec::new();
        while let Some(response) = transfer.next().await {
            let response = response.map_err(|e| match self.net_error(e) {
                DnsError::Protocol { provider, detail } => DnsError::Protocol {
                    provider,
                    detail: format!("zone transfer of {} failed: {detail}", zone.name),
                },
                other => other,
            })?;
            if response.response_code != ResponseCode::NoError {
                return Err(DnsError::Rejected {
                    provider: self.describe(),
                    name: zone.name.clone(),
                    detail: format!(
                        "zone transfer answered {} (the key needs transfer permission to list \
                         records)",
                        response.response_code
                    ),
                });
            }
            for record in &response.answers {
                let Some((rtype, value)) = value_of(&record.data) else {
                    continue;
                };
                let name = crate::name::normalize(&record.name.to_ascii())?;
                RecordSet::collect_into(&mut sets, name, rtype, record.ttl, value);
            }
        }
        Ok(sets)
    }

    async fn add_txt(
        &self,
        zone: &Zone,
        name: &str,
        value: &str,
        ttl: u32,
    ) -> Result<(), DnsError> {
        let name = name_in_zone(&self.describe(), zone, name)?;
        let mut message = Self::update_message(zone)?;
        // RFC 2136 §2.5.1 "add to an RRset": duplicates are ignored by the server and other
        // values stay, so apex and wildcard challenges coexist.
        message.add_update(Record::from_rdata(wire_name(&name)?, ttl, txt_rdata(value)));
        self.update(message, &name).await
    }

    async fn remove_txt(&self, zone: &Zone, name: &str, value: &str) -> Result<(), DnsError> {
        let name = name_in_zone(&self.describe(), zone, name)?;
        let mut message = Self::update_message(zone)?;
        // RFC 2136 §2.5.4 "delete an RR from an RRset": class NONE, TTL 0, matching rdata.
        let mut record = Record::from_rdata(wire_name(&name)?, 0, txt_rdata(value));
        record.dns_class = DNSClass::NONE;
        message.add_update(record);
        self.update(message, &name).await
    }

    async fn upsert_rrset(&self, zone: &Zone, rrset: &RecordSet) -> Result<(), DnsError> {
        let name = name_in_zone(&self.describe(), zone, &rrset.name)?;
        check_rrset(&self.describe(), rrset)?;
        let owner = wire_name(&name)?;
        let mut message = Self::update_message(zone)?;
        // One message, applied atomically by the server: delete the set (§2.5.2), then add the
        // new values (§2.5.1).
        let mut delete = Record::update0(owner.clone(), 0, wire_type(&rrset.rtype)?);
        delete.dns_class = DNSClass::ANY;
        message.add_update(delete.into_record_of_rdata());
        for value in &rrset.values {
            message.add_update(Record::from_rdata(
                owner.clone(),
                rrset.ttl,
                rdata_for(&rrset.rtype, value)?,
            ));
        }
        self.update(message, &name).await
    }

    async fn delete_rrset(
        &self,
        zone: &Zone,
        name: &str,
        rtype: &RecordType,
    ) -> Result<(), DnsError> {
        let name = name_in_zone(&self.describe(), zone, name)?;
        let mut message = Self::update_message(zone)?;
        let mut delete = Record::update0(wire_name(&name)?, 0, wire_type(rtype)?);
        delete.dns_class = DNSClass::ANY;
        message.add_update(delete.into_record_of_rdata());
        self.update(message, &name).await
    }
}
