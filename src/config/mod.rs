//! The configuration tree: one TOML file, parsed once into typed structs.
//!
//! [`Config::load`] reads the file, deserializes it with `deny_unknown_fields` (a misspelt key is an
//! error, not a silently ignored line) and runs [`Config::validate`]. Every error names the file, the
//! key (as a path such as `peer[2].address`) and the reason. Every key beyond the operator contract
//! has a default; the README's config reference lists them.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::call::hotkey::{Hotkey, HotkeyAction};
use crate::routing::NumberPattern;

// The vocabulary the parts own, spelled in the TOML as the parts spell it; re-exported so the
// config tree reads as one.
pub use crate::routing::DiversionHeader;
pub use crate::sip::transport::TransportKind;
pub use crate::store::Synchronous;

/// A configuration error: which file, which key, and why.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("{file}: key `{key}`: {reason}")]
    Invalid {
        file: PathBuf,
        key: String,
        reason: String,
    },
}

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub sip: SipConfig,
    pub media: MediaConfig,
    pub store: StoreConfig,
    pub api: ApiConfig,
    #[serde(default, rename = "peer")]
    pub peers: Vec<PeerConfig>,
    #[serde(default, rename = "route")]
    pub routes: Vec<RouteConfig>,
    #[serde(default, rename = "hotkey")]
    pub hotkeys: Vec<HotkeyConfig>,
    #[serde(default, rename = "platform")]
    pub platforms: Vec<PlatformConfig>,
    #[serde(default)]
    pub screening: ScreeningConfig,
}

/// `[screening]`: harassment rules for new calls (滋扰治理).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScreeningConfig {
    /// Caller numbers refused, exact or as `[[route]]` patterns (`_170X.`); default none.
    #[serde(default)]
    pub blocklist: Vec<String>,
    /// The status a blocked caller gets (default 603 Decline).
    #[serde(default = "default_blocked_status")]
    pub blocked_status: u16,
    /// A caller's call is flagged to the platforms when it is the `repeat_calls`-th within
    /// `repeat_minutes` (default 5 in 10; 0 turns it off). Flagged calls go through.
    #[serde(default = "default_repeat_calls")]
    pub repeat_calls: usize,
    #[serde(default = "default_repeat_minutes")]
    pub repeat_minutes: u64,
}

impl Default for ScreeningConfig {
    fn default() -> Self {
        ScreeningConfig {
            blocklist: Vec::new(),
            blocked_status: default_blocked_status(),
            repeat_calls: default_repeat_calls(),
            repeat_minutes: default_repeat_minutes(),
        }
    }
}

fn default_blocked_status() -> u16 {
    603
}
fn default_repeat_calls() -> usize {
    5
}
fn default_repeat_minutes() -> u64 {
    10
}

/// `[sip]`: signalling transport and RFC 3261 timer values.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SipConfig {
    /// UDP and TCP are both bound here.
    pub listen: SocketAddr,
    /// Address written into Via/Contact when `listen` is a wildcard (0.0.0.0 or ::). Default: the
    /// listen address itself.
    #[serde(default)]
    pub public_address: Option<IpAddr>,
    /// SIP over TLS: accept TLS connections here (default: none; the gateway can still open
    /// TLS connections to `transport = "tls"` peers).
    #[serde(default)]
    pub tls_listen: Option<SocketAddr>,
    /// The gateway's certificate chain and private key (PEM), presented on `tls_listen` and to
    /// peers that ask for a client certificate. Both or neither; needed for `tls_listen`.
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    /// The CAs (PEM) that peers' TLS certificates must chain to; needed for any TLS.
    #[serde(default)]
    pub tls_ca: Option<PathBuf>,
    /// Peers connecting to `tls_listen` must present a certificate signed by `tls_ca`
    /// (mutual TLS; default true).
    #[serde(default = "default_true")]
    pub tls_verify_client: bool,
    /// RFC 3261 T1, the RTT estimate (default 500 ms, §17.1.1.1).
    #[serde(default = "default_t1_ms")]
    pub t1_ms: u64,
    /// RFC 3261 T2, the cap for non-INVITE and 2xx retransmission intervals (default 4 s).
    #[serde(default = "default_t2_ms")]
    pub t2_ms: u64,
    /// RFC 3261 T4, how long the network may hold a message (default 5 s).
    #[serde(default = "default_t4_ms")]
    pub t4_ms: u64,
    /// Largest SIP message accepted, in bytes (default 65535, the UDP datagram limit). Larger TCP
    /// messages close the connection after a 513 where possible.
    #[serde(default = "default_max_message_size")]
    pub max_message_size: usize,
    /// A TCP connection with no traffic for this long is closed (default 300 s).
    #[serde(default = "default_tcp_idle_timeout_secs")]
    pub tcp_idle_timeout_secs: u64,
    /// TCP connections open at once; a new inbound one beyond is closed at once (default 4096).
    #[serde(default = "default_max_tcp_connections")]
    pub max_tcp_connections: usize,
    /// Inbound TCP/TLS connections one address that is no peer's may hold open (default 32):
    /// a stranger cannot take the slots (or the descriptors) the peers need.
    #[serde(default = "default_max_tcp_connections_per_source")]
    pub max_tcp_connections_per_source: usize,
    /// Of `max_tcp_connections`, how many only peers' hosts may take (default 64, at most half
    /// of `max_tcp_connections`): strangers from many addresses still leave room for the
    /// carrier and the desks.
    #[serde(default = "default_tcp_reserved_for_peers")]
    pub tcp_reserved_for_peers: usize,
    /// An inbound TCP/TLS connection must deliver its first whole message within this long of
    /// being opened, and every message within this long of its first byte (default 10 s);
    /// otherwise it is closed. An idle connection that never spoke, or a header that never
    /// ends, holds no slot for `tcp_idle_timeout_secs`.
    #[serde(default = "default_tcp_request_timeout_secs")]
    pub tcp_request_timeout_secs: u64,
    /// How long to wait for any response from a peer before trying the route's next peer
    /// (default 4 s: well under Timer B's 32 s, so failover is quick).
    #[serde(default = "default_peer_response_timeout_ms")]
    pub peer_response_timeout_ms: u64,
    /// How long a called peer may ring before the attempt fails with 408 and the next peer is
    /// tried (default 60 s).
    #[serde(default = "default_ring_timeout_secs")]
    pub ring_timeout_secs: u64,
    /// Server transactions in progress at once (RFC 3261 keeps a finished one up to 32 s to
    /// absorb retransmissions); beyond, new requests outside dialogs get a stateless 503 +
    /// Retry-After, requests in dialogs still go through (default 400,000: at the full call
    /// rate of 2,000/s, each call's INVITE and BYE server transactions staying 32 s, about
    /// 130,000 are in progress).
    #[serde(default = "default_max_transactions")]
    pub max_transactions: usize,
    /// Concurrent calls accepted; beyond this new INVITEs get 503 (default 4000).
    #[serde(default = "default_max_calls")]
    pub max_calls: usize,
    /// Overload control: while even the shortest queueing delay of inbound messages over 100 ms
    /// stays above this (a standing queue, not a burst), new INVITEs that waited longer are
    /// answered 503 + Retry-After statelessly instead of starting calls (default 200 ms, under
    /// T1, so callers are told before they retransmit and amplify the load).
    #[serde(default = "default_overload_queue_delay_ms")]
    pub overload_queue_delay_ms: u64,
    /// A transfer target that rings this long without answering is given up (408) and the
    /// next peer of its route tried; when none is left the transfer fails and the citizen
    /// stays with the agent (default 30 s).
    #[serde(default = "default_transfer_ring_timeout_secs")]
    pub transfer_ring_timeout_secs: u64,
    /// Play a transfer target's early media (a 183 with SDP: its ringback or announcement) to
    /// the citizen instead of the agent's voice until it answers (default false: the citizen
    /// keeps talking to the agent while the target rings).
    #[serde(default)]
    pub transfer_early_media: bool,
    /// Digits of a `[[hotkey]]` sequence must follow each other within this; a held digit is
    /// then passed on to the other party (default 2000 ms).
    #[serde(default = "default_hotkey_inter_digit_ms")]
    pub hotkey_inter_digit_ms: u64,
    /// Most parties one conference holds, the call's two legs included (default 4: citizen,
    /// agent and two desks, e.g. 110 and 120; at most 8).
    #[serde(default = "default_conference_max_parties")]
    pub conference_max_parties: usize,
    /// When the caller (leg A, the citizen) leaves a conference, end it for everybody (default
    /// true); false keeps the others talking.
    #[serde(default = "default_true")]
    pub conference_ends_with_caller: bool,
    /// RFC 4028 session timers: the interval asked for and granted at most on every leg; a
    /// leg is refreshed (UPDATE, else re-INVITE) halfway, and a peer that does not answer
    /// the refresh, or that was to refresh and did not, ends the call (default 1800; 0 turns
    /// session timers off).
    #[serde(default = "default_session_expires_secs")]
    pub session_expires_secs: u64,
    /// The shortest session interval accepted; a caller asking for less gets 422 (default 90,
    /// the RFC's floor).
    #[serde(default = "default_min_se_secs")]
    pub min_se_secs: u64,
    /// The realm of digest challenges (default `hotline-gateway`).
    #[serde(default = "default_auth_realm")]
    pub auth_realm: String,
    /// How long a digest nonce is good for; then the peer is asked again (`stale=true`, so it
    /// answers without asking anyone; default 300 s).
    #[serde(default = "default_auth_nonce_secs")]
    pub auth_nonce_secs: u64,
    /// Server / User-Agent header value; empty (the default) sends none, so scanners learn nothing.
    #[serde(default)]
    pub user_agent: String,
    /// Requests from an address that is no peer: `reject` (403, the default) or `drop`
    /// (silence).
    #[serde(default)]
    pub unknown_source: UnknownSource,
    /// Drop requests whose User-Agent is a known scanner's (sipvicious & co.) without a word,
    /// even with `unknown_source = "reject"` (default true).
    #[serde(default = "default_true")]
    pub drop_scanners: bool,
    /// A source that is no peer and sends more requests than this per second (bursts of twice
    /// that allowed) is banned: everything from it is dropped (default 20).
    #[serde(default = "default_pike_requests_per_sec")]
    pub pike_requests_per_sec: u32,
    /// How long a ban lasts (default 300 s).
    #[serde(default = "default_pike_ban_secs")]
    pub pike_ban_secs: u64,
    /// Networks never refused, limited or banned, as peers are (`["10.0.0.0/8"]`; default
    /// none). Their requests still need a `[[peer]]` to place calls.
    #[serde(default)]
    pub allow: Vec<String>,
}

/// What the gateway does with requests from addresses that are no peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum UnknownSource {
    #[default]
    Reject,
    Drop,
}

/// `[media]`: where RTP is anchored.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MediaConfig {
    /// RTP sockets are bound to, and SDP `c=` lines advertise, this address.
    pub address: IpAddr,
    /// Inclusive port range; each leg takes an even RTP port and the odd RTCP port above it.
    pub ports: [u16; 2],
    /// Codecs offered, in preference order (default `["PCMA", "PCMU"]`).
    #[serde(default = "default_codecs")]
    pub codecs: Vec<String>,
    /// Dynamic payload type offered for RFC 4733 telephone-event (default 101).
    #[serde(default = "default_telephone_event")]
    pub telephone_event: u8,
    /// Packetisation time offered, in ms (default 20).
    #[serde(default = "default_ptime")]
    pub ptime: u32,
    /// An answered call whose legs send no RTP or RTCP for this long is ended (default 60 s).
    #[serde(default = "default_inactivity_timeout_secs")]
    pub inactivity_timeout_secs: u64,
}

/// `[store]`: the embedded database.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// SQLite file; its directory is created if missing. Relative paths are relative to the
    /// working directory.
    pub path: PathBuf,
    /// Largest the file may grow, in MB (default: no cap but the disk's). At the cap the store
    /// behaves as on a full disk: calls go on, records are held in memory and retried, and
    /// `hotline_store_degraded` is 1, until space is freed (e.g. old records archived).
    #[serde(default)]
    pub max_size_mb: Option<u64>,
    /// What "committed" means (default `full`): `full` syncs the write-ahead log to disk at
    /// every commit, so a record the gateway acted on survives a power cut or kernel crash;
    /// `normal` syncs only at checkpoints, faster on slow disks, and a power cut may lose the
    /// commits since the last checkpoint (a process crash or `kill -9` loses nothing either way).
    #[serde(default)]
    pub synchronous: Synchronous,
}

/// `[api]`: operator and platform interfaces.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// Work-order gRPC interface (`proto/workorder.proto`), for the `[[platform]]` clients.
    pub grpc: SocketAddr,
    /// `GET /healthz` and `GET /metrics`.
    pub http: SocketAddr,
    /// Outbox events older than this are deleted, acknowledged or not (default 168 h: a week
    /// for a platform's system to come back and catch up).
    #[serde(default = "default_outbox_retention_hours")]
    pub outbox_retention_hours: u64,
    /// TLS on the gRPC endpoint (rustls): the server's certificate chain and private key, PEM
    /// files. Both or neither (default: plain TCP, for a trusted network).
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    /// The name in `tls_cert` that the `events` tool checks when it connects (default
    /// `localhost`).
    #[serde(default = "default_tls_name")]
    pub tls_name: String,
}

/// `[[platform]]`: a platform's system (12345's work-order system, 110's CAD) allowed on the
/// work-order link. `name` is the `platform` of its `[[peer]]`s.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlatformConfig {
    pub name: String,
    /// The client's shared secret (`Hello.token`, or `authorization: Bearer <token>`).
    pub token: String,
}

/// `[[peer]]`: a SIP neighbour. Requests from its address are attributed to it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    pub name: String,
    /// `IP:port` (requests to the peer go here; requests from this IP and port are the peer's).
    pub address: SocketAddr,
    /// The public line this peer belongs to (`12345`, `110`, ...), if any.
    #[serde(default)]
    pub platform: Option<String>,
    /// The name the peer's TLS certificate must carry (default: its IP address).
    #[serde(default)]
    pub tls_name: Option<String>,
    /// `udp` (default), `tcp` or `tls` for requests the gateway sends to this peer.
    #[serde(default)]
    pub transport: TransportKind,
    /// Accept requests from any source port of the peer's IP (default false: IP and port must
    /// match, as the contract's sample runs several peers on one host).
    #[serde(default)]
    pub any_port: bool,
    /// More networks whose requests are this peer's (`["203.0.113.0/24"]`: a carrier's
    /// signalling range), beyond `address` (default none).
    #[serde(default)]
    pub sources: Vec<String>,
    /// New calls this peer may start per second (bursts of as many); beyond, 503 with
    /// Retry-After (default: no limit, the peer is trusted to send what it must).
    #[serde(default)]
    pub max_calls_per_sec: Option<u32>,
    /// SIP digest authentication (RFC 3261 §22): requests from this peer that start something
    /// (not ACK, CANCEL or requests inside a dialog) must prove these credentials, or get 401
    /// (403 for wrong ones). Both or neither (default: none, its address suffices).
    #[serde(default)]
    pub auth_username: Option<String>,
    #[serde(default)]
    pub auth_password: Option<String>,
    /// Algorithms it is challenged with, preferred first (RFC 8760: `SHA-512-256`, `SHA-256`,
    /// `MD5`; default `["SHA-256", "MD5"]`: MD5 for the many phones and trunks that know no
    /// other).
    #[serde(default = "default_auth_algorithms")]
    pub auth_algorithms: Vec<String>,
    /// Trusted for identity (RFC 3325 §2.3): a caller's identity asked private (`Privacy: id`)
    /// is still sent to this peer in P-Asserted-Identity; to others it is removed (default
    /// false; the 110 desk is trusted).
    #[serde(default)]
    pub trusted: bool,
    /// How a transferred call names the line it was transferred from: `history-info`
    /// (RFC 7044, the default), `diversion` (RFC 5806, what many carriers and PBXs read),
    /// `both` or `none`.
    #[serde(default)]
    pub diversion: DiversionHeader,
    /// Media encryption on this peer's legs (RFC 3711 SRTP keyed by RFC 4568 SDES):
    /// `optional` (the default: offers with `a=crypto` are answered with SRTP, our offers are
    /// plain RTP) or `mandatory` (our offers are RTP/SAVP; plain offers get 488).
    #[serde(default)]
    pub srtp: crate::sip::sdp::SrtpMode,
    /// How the peer writes header text that is not UTF-8 (the caller's display name from an
    /// older PBX): `utf-8` (the default, RFC 3261 §25.1; invalid bytes become `?`) or
    /// `gb18030` (also `gbk`, `gb2312`). Lines that are valid UTF-8 are read as UTF-8 either
    /// way.
    #[serde(default)]
    pub charset: crate::sip::message::Charset,
}

/// `[[route]]`: dialled number -> peers tried in order.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// An exact number (`12345`) or a pattern starting with `_` (see [`NumberPattern`]).
    pub number: String,
    pub peers: Vec<String>,
}

/// `[[hotkey]]`: a DTMF sequence from an agent's leg and what it does.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HotkeyConfig {
    pub dtmf: String,
    pub action: HotkeyAction,
    pub target: String,
}

fn default_t1_ms() -> u64 {
    500
}
fn default_t2_ms() -> u64 {
    4000
}
fn default_t4_ms() -> u64 {
    5000
}
fn default_max_message_size() -> usize {
    65_535
}
fn default_tcp_idle_timeout_secs() -> u64 {
    300
}
fn default_peer_response_timeout_ms() -> u64 {
    4000
}
fn default_ring_timeout_secs() -> u64 {
    60
}
fn default_max_calls() -> usize {
    4000
}
fn default_auth_algorithms() -> Vec<String> {
    vec!["SHA-256".into(), "MD5".into()]
}
fn default_auth_realm() -> String {
    "hotline-gateway".into()
}
fn default_auth_nonce_secs() -> u64 {
    300
}
fn default_max_transactions() -> usize {
    400_000
}
fn default_session_expires_secs() -> u64 {
    1800
}
fn default_min_se_secs() -> u64 {
    90
}
fn default_overload_queue_delay_ms() -> u64 {
    200
}
fn default_transfer_ring_timeout_secs() -> u64 {
    30
}
fn default_hotkey_inter_digit_ms() -> u64 {
    2000
}
fn default_max_tcp_connections() -> usize {
    4096
}
fn default_max_tcp_connections_per_source() -> usize {
    32
}
fn default_tcp_reserved_for_peers() -> usize {
    64
}
fn default_tcp_request_timeout_secs() -> u64 {
    10
}
fn default_pike_requests_per_sec() -> u32 {
    20
}
fn default_pike_ban_secs() -> u64 {
    300
}
fn default_outbox_retention_hours() -> u64 {
    168
}
fn default_tls_name() -> String {
    "localhost".into()
}
fn default_conference_max_parties() -> usize {
    4
}
fn default_true() -> bool {
    true
}
fn default_codecs() -> Vec<String> {
    vec!["PCMA".into(), "PCMU".into()]
}
fn default_telephone_event() -> u8 {
    101
}
fn default_ptime() -> u32 {
    20
}
fn default_inactivity_timeout_secs() -> u64 {
    60
}

impl Config {
    /// Reads, parses and validates `path`.
    ///
    /// # Errors
    /// [`ConfigError`] naming the file, the key and the reason.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: path.to_path_buf(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Parses and validates `text`; `file` is only used in error messages.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the file, the key and the reason.
    pub fn parse(file: &Path, text: &str) -> Result<Config, ConfigError> {
        let deserializer = toml::Deserializer::new(text);
        let config: Config = serde_path_to_error::deserialize(deserializer).map_err(|e| {
            let key = e.path().to_string();
            let inner = e.into_inner();
            ConfigError::Invalid {
                file: file.to_path_buf(),
                key: if key == "." {
                    "(top level)".into()
                } else {
                    key
                },
                reason: inner.message().trim().to_string(),
            }
        })?;
        config.validate(file)?;
        Ok(config)
    }

    /// Cross-field checks serde cannot express.
    fn validate(&self, file: &Path) -> Result<(), ConfigError> {
        let invalid = |key: String, reason: String| ConfigError::Invalid {
            file: file.to_path_buf(),
            key,
            reason,
        };
        for (index, number) in self.screening.blocklist.iter().enumerate() {
            if let Err(reason) = crate::routing::NumberPattern::parse(number) {
                return Err(invalid(format!("screening.blocklist[{index}]"), reason));
            }
        }
        if !(400..700).contains(&self.screening.blocked_status) {
            return Err(invalid(
                "screening.blocked_status".into(),
                format!(
                    "{} is no final failure status (400-699)",
                    self.screening.blocked_status
                ),
            ));
        }
        for (index, network) in self.sip.allow.iter().enumerate() {
            if let Err(error) = crate::routing::Cidr::parse(network) {
                return Err(invalid(format!("sip.allow[{index}]"), error.to_string()));
            }
        }
        for (index, peer) in self.peers.iter().enumerate() {
            if peer.auth_username.is_some() != peer.auth_password.is_some() {
                return Err(invalid(
                    format!("peer[{index}].auth_password"),
                    "auth_username and auth_password go together: give both or neither".into(),
                ));
            }
            if peer.auth_password.as_ref().is_some_and(|p| p.len() < 8) {
                return Err(invalid(
                    format!("peer[{index}].auth_password"),
                    "must be at least 8 characters".into(),
                ));
            }
            if peer.auth_algorithms.is_empty() {
                return Err(invalid(
                    format!("peer[{index}].auth_algorithms"),
                    "must name at least one algorithm".into(),
                ));
            }
            for (n, algorithm) in peer.auth_algorithms.iter().enumerate() {
                if crate::sip::auth::Algorithm::parse(algorithm).is_none() {
                    return Err(invalid(
                        format!("peer[{index}].auth_algorithms[{n}]"),
                        format!("{algorithm:?} is none of SHA-512-256, SHA-256, MD5"),
                    ));
                }
            }
            for (n, network) in peer.sources.iter().enumerate() {
                if let Err(error) = crate::routing::Cidr::parse(network) {
                    return Err(invalid(
                        format!("peer[{index}].sources[{n}]"),
                        error.to_string(),
                    ));
                }
            }
        }
        if self.sip.tls_cert.is_some() != self.sip.tls_key.is_some() {
            return Err(invalid(
                "sip.tls_key".into(),
                "tls_cert and tls_key go together: give both or neither".into(),
            ));
        }
        if self.sip.tls_listen.is_some() && self.sip.tls_cert.is_none() {
            return Err(invalid(
                "sip.tls_cert".into(),
                "tls_listen needs the gateway's certificate (tls_cert and tls_key)".into(),
            ));
        }
        let tls_peer = self
            .peers
            .iter()
            .position(|p| p.transport == TransportKind::Tls);
        if let (Some(index), None) = (tls_peer, self.sip.tls_listen) {
            // Its requests in the dialog (a BYE) may come on a connection of its own, to the
            // port our Contact names: that must speak TLS.
            return Err(invalid(
                format!("peer[{index}].transport"),
                "a tls peer needs sip.tls_listen (and tls_cert, tls_key): its requests come back over TLS".into(),
            ));
        }
        if (self.sip.tls_listen.is_some() || tls_peer.is_some()) && self.sip.tls_ca.is_none() {
            let key = match tls_peer {
                Some(index) if self.sip.tls_listen.is_none() => format!("peer[{index}].transport"),
                _ => "sip.tls_ca".into(),
            };
            return Err(invalid(
                key,
                "TLS needs sip.tls_ca, the CAs peers' certificates must chain to".into(),
            ));
        }
        for (index, peer) in self.peers.iter().enumerate() {
            if let Err(reason) =
                crate::sip::tls::server_name(peer.tls_name.as_deref(), peer.address)
            {
                return Err(invalid(format!("peer[{index}].tls_name"), reason));
            }
        }
        if self.sip.min_se_secs < 90 {
            return Err(invalid(
                "sip.min_se_secs".into(),
                format!("{} is below RFC 4028's floor of 90 s", self.sip.min_se_secs),
            ));
        }
        if self.sip.session_expires_secs != 0
            && self.sip.session_expires_secs < self.sip.min_se_secs
        {
            return Err(invalid(
                "sip.session_expires_secs".into(),
                format!(
                    "{} is below sip.min_se_secs ({}); 0 turns session timers off",
                    self.sip.session_expires_secs, self.sip.min_se_secs
                ),
            ));
        }
        if self.store.max_size_mb == Some(0) {
            return Err(invalid(
                "store.max_size_mb".into(),
                "must be at least 1 (leave it out for no cap)".into(),
            ));
        }
        if self.api.tls_cert.is_some() != self.api.tls_key.is_some() {
            return Err(invalid(
                "api.tls_key".into(),
                "tls_cert and tls_key go together: give both or neither".into(),
            ));
        }
        for (key, value) in [
            (
                "sip.tcp_request_timeout_secs",
                self.sip.tcp_request_timeout_secs,
            ),
            (
                "sip.max_tcp_connections_per_source",
                self.sip.max_tcp_connections_per_source as u64,
            ),
        ] {
            if value == 0 {
                return Err(invalid(
                    key.into(),
                    "must be at least 1 (0 would close every inbound connection)".into(),
                ));
            }
        }
        for (index, platform) in self.platforms.iter().enumerate() {
            if platform.name.is_empty() {
                return Err(invalid(
                    format!("platform[{index}].name"),
                    "must not be empty".into(),
                ));
            }
            if platform.token.len() < 16 {
                return Err(invalid(
                    format!("platform[{index}].token"),
                    "must be at least 16 characters: it is the platform's only credential".into(),
                ));
            }
            if self.platforms[..index]
                .iter()
                .any(|p| p.token == platform.token)
            {
                return Err(invalid(
                    format!("platform[{index}].token"),
                    "is another platform's token too: each platform needs its own".into(),
                ));
            }
            if self.platforms[..index]
                .iter()
                .any(|p| p.name == platform.name)
            {
                return Err(invalid(
                    format!("platform[{index}].name"),
                    format!("platform {:?} is configured twice", platform.name),
                ));
            }
        }
        if !(3..=crate::media::MAX_PARTIES).contains(&self.sip.conference_max_parties) {
            return Err(invalid(
                "sip.conference_max_parties".into(),
                format!(
                    "{} is out of range: a conference has 3 to {} parties",
                    self.sip.conference_max_parties,
                    crate::media::MAX_PARTIES
                ),
            ));
        }
        let [low, high] = self.media.ports;
        if low > high {
            return Err(invalid(
                "media.ports".into(),
                format!("first port {low} is above last port {high}"),
            ));
        }
        if u32::from(high) - u32::from(low) < 3 {
            return Err(invalid(
                "media.ports".into(),
                "range must hold at least two RTP/RTCP pairs".into(),
            ));
        }
        if self.media.address.is_unspecified() {
            return Err(invalid(
                "media.address".into(),
                "must be a concrete address: it is advertised in SDP c= lines".into(),
            ));
        }
        for (index, codec) in self.media.codecs.iter().enumerate() {
            if !matches!(codec.to_ascii_uppercase().as_str(), "PCMA" | "PCMU") {
                return Err(invalid(
                    format!("media.codecs[{index}]"),
                    format!("unknown codec {codec:?}; supported: PCMA, PCMU"),
                ));
            }
        }
        if self.media.codecs.is_empty() {
            return Err(invalid(
                "media.codecs".into(),
                "at least one codec is needed".into(),
            ));
        }
        if !(96..=127).contains(&self.media.telephone_event) {
            return Err(invalid(
                "media.telephone_event".into(),
                "must be a dynamic payload type (96-127)".into(),
            ));
        }
        if !(10..=120).contains(&self.media.ptime) || self.media.ptime % 10 != 0 {
            return Err(invalid(
                "media.ptime".into(),
                "must be 10, 20, ... 120 ms".into(),
            ));
        }
        if self.sip.t1_ms == 0 || self.sip.t2_ms < self.sip.t1_ms {
            return Err(invalid(
                "sip.t2_ms".into(),
                "T1 must be positive and T2 at least T1".into(),
            ));
        }
        if self.sip.max_message_size < 1024 {
            return Err(invalid(
                "sip.max_message_size".into(),
                "must be at least 1024 bytes".into(),
            ));
        }
        let mut names = HashSet::new();
        for (index, peer) in self.peers.iter().enumerate() {
            if peer.name.trim().is_empty() {
                return Err(invalid(
                    format!("peer[{index}].name"),
                    "must not be empty".into(),
                ));
            }
            if !names.insert(peer.name.as_str()) {
                return Err(invalid(
                    format!("peer[{index}].name"),
                    format!("duplicate peer name {:?}", peer.name),
                ));
            }
            if peer.address.port() == 0 || peer.address.ip().is_unspecified() {
                return Err(invalid(
                    format!("peer[{index}].address"),
                    "must be a concrete IP:port".into(),
                ));
            }
        }
        let mut numbers = HashSet::new();
        for (index, route) in self.routes.iter().enumerate() {
            if let Err(reason) = NumberPattern::parse(&route.number) {
                return Err(invalid(format!("route[{index}].number"), reason));
            }
            if !numbers.insert(route.number.as_str()) {
                return Err(invalid(
                    format!("route[{index}].number"),
                    format!("duplicate route for {:?}", route.number),
                ));
            }
            if route.peers.is_empty() {
                return Err(invalid(
                    format!("route[{index}].peers"),
                    "must name at least one peer".into(),
                ));
            }
            for (peer_index, name) in route.peers.iter().enumerate() {
                if !names.contains(name.as_str()) {
                    return Err(invalid(
                        format!("route[{index}].peers[{peer_index}]"),
                        format!("no [[peer]] is named {name:?}"),
                    ));
                }
            }
        }
        for (index, hotkey) in self.hotkeys.iter().enumerate() {
            if hotkey.dtmf.is_empty()
                || !hotkey
                    .dtmf
                    .chars()
                    .all(|c| c.is_ascii_digit() || matches!(c, '*' | '#' | 'A'..='D'))
            {
                return Err(invalid(
                    format!("hotkey[{index}].dtmf"),
                    "must be DTMF digits (0-9, *, #, A-D)".into(),
                ));
            }
            if hotkey.target.is_empty() {
                return Err(invalid(
                    format!("hotkey[{index}].target"),
                    "must not be empty".into(),
                ));
            }
        }
        Ok(())
    }
}

impl From<&HotkeyConfig> for Hotkey {
    fn from(config: &HotkeyConfig) -> Hotkey {
        Hotkey {
            dtmf: config.dtmf.clone(),
            action: config.action,
            target: config.target.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> String {
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/gateway.toml"))
            .unwrap_or_default()
    }

    fn error_of(text: &str) -> String {
        match Config::parse(Path::new("test.toml"), text) {
            Ok(_) => String::from("(loaded)"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn contract_sample_loads_unchanged_with_defaults() {
        let config = Config::parse(Path::new("config/gateway.toml"), &sample());
        let config = match config {
            Ok(c) => c,
            Err(e) => panic!("sample must load: {e}"),
        };
        assert_eq!(config.sip.listen, "127.0.0.1:5060".parse().unwrap());
        assert_eq!(config.media.ports, [20000, 20999]);
        assert_eq!(config.peers.len(), 3);
        assert_eq!(config.peers[2].platform.as_deref(), Some("110"));
        assert_eq!(config.routes[0].peers, vec!["hotline".to_string()]);
        assert_eq!(config.hotkeys[1].action, HotkeyAction::Conference);
        assert_eq!(config.sip.t1_ms, 500);
        assert_eq!(config.media.codecs, vec!["PCMA", "PCMU"]);
        assert_eq!(config.media.telephone_event, 101);
        assert_eq!(config.peers[0].transport, TransportKind::Udp);
    }

    #[test]
    fn unknown_key_names_the_key() {
        let text = sample().replace("[sip]\n", "[sip]\nlisten_port = 5\n");
        let message = error_of(&text);
        assert!(message.starts_with("test.toml: key `sip"), "{message}");
        assert!(message.contains("listen_port"), "{message}");
    }

    #[test]
    fn bad_address_names_file_key_and_reason() {
        let text = sample().replace("address = \"127.0.0.1:5090\"", "address = \"police.local\"");
        let message = error_of(&text);
        assert!(message.contains("test.toml"), "{message}");
        assert!(message.contains("peer[2].address"), "{message}");
        assert!(message.contains("invalid"), "{message}");
    }

    #[test]
    fn platforms_need_a_real_token_and_a_name_of_their_own() {
        let good = format!(
            "{}\n[[platform]]\nname = \"110\"\ntoken = \"a-token-long-enough\"\n",
            sample()
        );
        let config = Config::parse(Path::new("test.toml"), &good);
        assert!(config.is_ok_and(|c| c.platforms.len() == 1 && c.api.outbox_retention_hours == 168));
        let short = format!(
            "{}\n[[platform]]\nname = \"110\"\ntoken = \"secret\"\n",
            sample()
        );
        assert!(error_of(&short).starts_with("test.toml: key `platform[0].token`"));
        let twice =
            format!("{good}\n[[platform]]\nname = \"110\"\ntoken = \"another-long-token\"\n");
        assert!(
            error_of(&twice).contains("platform[1].name"),
            "{}",
            error_of(&twice)
        );
        let shared =
            format!("{good}\n[[platform]]\nname = \"12345\"\ntoken = \"a-token-long-enough\"\n");
        assert_eq!(
            error_of(&shared),
            "test.toml: key `platform[1].token`: is another platform's token too: each platform needs its own"
        );
    }

    #[test]
    fn route_to_unknown_peer_is_refused() {
        let text = sample().replace("peers = [\"police\"]", "peers = [\"polise\"]");
        assert_eq!(
            error_of(&text),
            "test.toml: key `route[1].peers[0]`: no [[peer]] is named \"polise\""
        );
    }

    #[test]
    fn reversed_port_range_is_refused() {
        let text = sample().replace("[20000, 20999]", "[20999, 20000]");
        assert!(error_of(&text).contains("key `media.ports`"));
    }

    #[test]
    fn duplicate_peer_and_bad_hotkey_are_refused() {
        let text = sample().replace("name = \"police\"", "name = \"hotline\"");
        assert!(error_of(&text).contains("duplicate peer name"));
        let text = sample().replace("dtmf = \"*1\"", "dtmf = \"*x\"");
        assert!(error_of(&text).contains("hotkey[0].dtmf"));
    }

    #[test]
    fn toml_syntax_error_is_reported_with_file() {
        let message = error_of("[sip\nlisten = 1");
        assert!(
            message.starts_with("test.toml: key `(top level)`"),
            "{message}"
        );
    }
}
