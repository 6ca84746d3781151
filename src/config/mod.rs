//! The configuration tree: one TOML file, parsed once into typed structs.
//!
//! [`Config::load`] reads the file, deserializes it with `deny_unknown_fields` (a misspelt key is an
//! error, not a silently ignored line) and runs [`Config::validate`]. Every error names the file, the
//! key (as a path such as `peer[2].address`) and the reason. Every key beyond the operator contract
//! has a default; the README's config reference lists them.
//!
//! Values the parts parse (networks, number patterns, codecs, digest algorithms, TLS names) are
//! read into the parts' types as the file is deserialized (`text.rs`), so the tree holds them
//! typed and nothing parses them again.
//!
//! This file holds the tree and its defaults; `validate.rs` loading and the checks, `convert.rs`
//! the conversions into the parts' typed values, `tests.rs` the tests.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use rustls::pki_types::ServerName;
use serde::Deserialize;

use crate::call::hotkey::HotkeyAction;
use crate::media::codec::Codec;
use crate::routing::credentials::Algorithm;
use crate::routing::{Cidr, NumberPattern};

// The vocabulary the parts own, spelled in the TOML as the parts spell it; re-exported so the
// config tree reads as one.
pub use crate::routing::DiversionHeader;
pub use crate::routing::TransportKind;
pub use crate::store::Synchronous;
pub use crate::store::{DatabaseCa, DatabaseUrl, StoreLocation};

mod convert;
pub use convert::CallContext;
mod sections;
pub use sections::{
    AnnouncementsConfig, CdrConfig, HepConfig, StatsConfig, StatusConfig, WhisperConfig,
};
#[cfg(test)]
mod tests;
mod text;
mod validate;

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
    /// `[cluster]`: with `[store] url`, this node's name and lease.
    #[serde(default)]
    pub cluster: Option<ClusterConfig>,
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
    /// `[[interface]]`s: the networks beside the default one (`[sip]`/`[media]`), in order.
    #[serde(default, rename = "interface")]
    pub interfaces: Vec<InterfaceConfig>,
    /// `[recording]`: a stereo WAV of every answered call (off without it).
    #[serde(default)]
    pub recording: Option<RecordingConfig>,
    /// `[announcements]`: prompts the operator recorded, played in place of tones.
    #[serde(default)]
    pub announcements: AnnouncementsConfig,
    /// `[routing]`: the local time and days the routes' `hours` and `days` are read in.
    #[serde(default)]
    pub routing: RoutingConfig,
    /// `[hep]`: a copy of every SIP message to a Homer capture server (HEPv3 over UDP).
    #[serde(default)]
    pub hep: Option<HepConfig>,
    /// `[cdr]`: each ended call's detail record appended to a JSON Lines file a day.
    #[serde(default)]
    pub cdr: Option<CdrConfig>,
    /// `[stats]`: how the figures are counted.
    #[serde(default)]
    pub stats: StatsConfig,
    /// `[status]`: who may see the live status page.
    #[serde(default)]
    pub status: StatusConfig,
}

/// `[recording]`: one stereo WAV per answered call (left: the caller; right: what the caller
/// heard), with a JSON file of the call's steps, under `path/YYYY/MM/DD/`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordingConfig {
    /// The directory (made 0750 if missing; relative to the working directory).
    pub path: PathBuf,
    /// Days a recording is kept; older day directories are deleted by the gateway, hourly
    /// (default: kept until deleted by the operator).
    #[serde(default)]
    pub retention_days: Option<u32>,
    /// New calls are not recorded while the recordings take this many MB (calls go on;
    /// `hotline_recording_full` is 1). Default: no cap.
    #[serde(default)]
    pub max_disk_mb: Option<u64>,
    /// ... or while the file system has less than this many MB free. Default: no floor.
    #[serde(default)]
    pub min_free_mb: Option<u64>,
    /// The `[[peer]]` that is a SIPREC recording server (RFC 7866): each recorded call also
    /// goes there as a recording session, its two streams and its metadata. Default: none.
    #[serde(default)]
    pub siprec: Option<String>,
}

/// `[[interface]]`: one more network the gateway sits on (a boundary host: the police network,
/// the e-government network, the carrier's). Its peers (`[[peer]] interface`) are sent to from
/// these addresses and see only them, in Via, Contact, SDP `c=` and the source of their RTP.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InterfaceConfig {
    pub name: String,
    /// SIP over UDP and TCP is bound here.
    pub sip: SocketAddr,
    /// SIP over TLS is accepted here (needs `sip.tls_cert`, `sip.tls_key`, `sip.tls_ca`).
    #[serde(default)]
    pub tls: Option<SocketAddr>,
    /// RTP/RTCP sockets of this interface's legs are bound here and advertised in their SDP.
    pub media: IpAddr,
    /// Inclusive RTP/RTCP port range on `media`.
    pub ports: [u16; 2],
    /// Written in Via, Contact and SDP instead of `sip`'s and `media`'s address, when this side
    /// reaches the gateway through NAT (default: none, the bound addresses).
    #[serde(default)]
    pub advertise: Option<IpAddr>,
}

/// `[screening]`: harassment rules for new calls (滋扰治理).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScreeningConfig {
    /// Caller numbers refused, exact or as `[[route]]` patterns (`_170X.`); default none.
    #[serde(default, deserialize_with = "text::list")]
    pub blocklist: Vec<NumberPattern>,
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
    #[serde(default, deserialize_with = "text::list")]
    pub allow: Vec<Cidr>,
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
    #[serde(default = "default_codecs", deserialize_with = "text::list")]
    pub codecs: Vec<Codec>,
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
    /// SQLite file (the embedded store); its directory is created if missing. Relative paths
    /// are relative to the working directory.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// Instead of `path`: a PostgreSQL database (`postgresql://user:password@host:port/db`)
    /// that the nodes of a cluster share, each with its own `[cluster] node`.
    #[serde(default)]
    pub url: Option<DatabaseUrl>,
    /// With `url`: the CAs (PEM) the database's certificate must chain to; the connection is
    /// then TLS, required (default: plain TCP, for a database on the nodes' own network).
    #[serde(default)]
    pub ca_file: Option<DatabaseCa>,
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

impl StoreConfig {
    /// Where the store is (validation has made sure one of `path` and `url` is given).
    pub fn location(&self) -> StoreLocation {
        match (&self.url, &self.path) {
            (Some(url), _) => StoreLocation::Database(url.clone().with_ca(self.ca_file.clone())),
            (None, Some(path)) => StoreLocation::File(path.clone()),
            (None, None) => StoreLocation::File(PathBuf::from("data/gateway.db")),
        }
    }
}

/// `[cluster]`: this node among the gateways sharing a `[store] url`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// This node's name, unique among the nodes sharing the store: its calls are recorded
    /// under it, and its lease is held under it.
    pub node: String,
    /// How long this node's lease lasts unrenewed (default 10 s, renewed every third of it):
    /// a node silent for longer is taken for lost, and a survivor closes its open calls.
    #[serde(default = "default_lease_secs")]
    pub lease_secs: u64,
}

fn default_lease_secs() -> u64 {
    10
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
    /// Calls to or from this platform's peers keep this many of `sip.max_calls` (and the media
    /// ports they need) for themselves: other calls are refused once only the reserve is left,
    /// and overload control never sheds this platform's calls (the lane kept for 110).
    /// Default 0: none.
    #[serde(default)]
    pub reserved_calls: usize,
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
    /// The `[[interface]]` (by name) it is reached on (default: the default interface,
    /// `[sip]`/`[media]`).
    #[serde(default)]
    pub interface: Option<String>,
    /// The name the peer's TLS certificate must carry (default: its IP address).
    #[serde(default, deserialize_with = "text::optional")]
    pub tls_name: Option<ServerName<'static>>,
    /// `udp` (default), `tcp` or `tls` for requests the gateway sends to this peer.
    #[serde(default)]
    pub transport: TransportKind,
    /// Accept requests from any source port of the peer's IP (default false: IP and port must
    /// match, as the contract's sample runs several peers on one host).
    #[serde(default)]
    pub any_port: bool,
    /// More networks whose requests are this peer's (`["203.0.113.0/24"]`: a carrier's
    /// signalling range), beyond `address` (default none).
    #[serde(default, deserialize_with = "text::list")]
    pub sources: Vec<Cidr>,
    /// New calls this peer may start per second (bursts of as many); beyond, 503 with
    /// Retry-After (default: no limit, the peer is trusted to send what it must).
    #[serde(default)]
    pub max_calls_per_sec: Option<u32>,
    /// The calls this peer takes from the gateway at once (a desk's capacity: its agents, or
    /// its trunk's channels); a call beyond finds it busy without an INVITE, as if it had
    /// answered 486, and a queued call is offered to it as soon as one of its calls ends.
    /// Default: no limit (its own busy answers say when it is full).
    #[serde(default)]
    pub max_calls: Option<u32>,
    /// SIP digest authentication (RFC 3261 §22): requests from this peer that start something
    /// (not ACK, CANCEL or requests inside a dialog) must prove these credentials, or get 401
    /// (403 for wrong ones). Both or neither (default: none, its address suffices).
    #[serde(default)]
    pub auth_username: Option<String>,
    #[serde(default)]
    pub auth_password: Option<String>,
    /// What the gateway presents when this peer challenges (401/407, RFC 3261 §22.2): each
    /// INVITE it answers once with these. Both or neither (default: none, a challenge fails
    /// the request).
    #[serde(default)]
    pub outbound_username: Option<String>,
    #[serde(default)]
    pub outbound_password: Option<String>,
    /// Algorithms it is challenged with, preferred first (RFC 8760: `SHA-512-256`, `SHA-256`,
    /// `MD5`; default `["SHA-256", "MD5"]`: MD5 for the many phones and trunks that know no
    /// other).
    #[serde(default = "default_auth_algorithms", deserialize_with = "text::list")]
    pub auth_algorithms: Vec<Algorithm>,
    /// Trusted for identity (RFC 3325 §2.3): a caller's identity asked private (`Privacy: id`)
    /// is still sent to this peer in P-Asserted-Identity; to others it is removed (default
    /// false; the 110 desk is trusted).
    #[serde(default)]
    pub trusted: bool,
    /// The SIP load balancer in front of a cluster's nodes (Kamailio's dispatcher): it tells
    /// the original source of each request it relays in `X-Hotline-Source: IP:port`, and the
    /// request is then the peer's at that address (platform, trust, authentication, call
    /// rate); from anyone else the header is ignored (default false).
    #[serde(default)]
    pub front: bool,
    /// How a transferred call names the line it was transferred from: `history-info`
    /// (RFC 7044, the default), `diversion` (RFC 5806, what many carriers and PBXs read),
    /// `both` or `none`.
    #[serde(default)]
    pub diversion: DiversionHeader,
    /// Media encryption on this peer's legs (RFC 3711 SRTP keyed by RFC 4568 SDES):
    /// `optional` (the default: offers with `a=crypto` are answered with SRTP, our offers are
    /// plain RTP) or `mandatory` (our offers are RTP/SAVP; plain offers get 488).
    #[serde(default)]
    pub srtp: crate::routing::SrtpMode,
    /// How the peer writes header text that is not UTF-8 (the caller's display name from an
    /// older PBX): `utf-8` (the default, RFC 3261 §25.1; invalid bytes become `?`) or
    /// `gb18030` (also `gbk`, `gb2312`). Lines that are valid UTF-8 are read as UTF-8 either
    /// way.
    #[serde(default)]
    pub charset: crate::routing::charset::Charset,
    /// Seconds between OPTIONS probes (RFC 3261 §11) to this peer: after 3 unanswered (or
    /// answered 408 or 5xx) in a row it is down and skipped by routes, transfers and
    /// conference guests; after 2 answered it is up again. 0 or absent (the default): not
    /// probed, always up. At most 3600.
    #[serde(default)]
    pub probe_secs: u32,
    /// Keep a registration at this peer as registrar (RFC 3261 §10), as
    /// `sip:outbound_username@register_domain` with our SIP address as the contact; needs
    /// `outbound_username` and `outbound_password` (default false).
    #[serde(default)]
    pub register: bool,
    /// The registration's expiry asked for, in seconds (default 3600; 2 to 86400, small values
    /// for tests and registrars that want short bindings).
    #[serde(default = "default_register_expires_secs")]
    pub register_expires_secs: u32,
    /// The host of the registered address of record (default: the peer's address's IP).
    #[serde(default)]
    pub register_domain: Option<String>,
    /// With `[recording]`: false for a line that must not be recorded; a call through this
    /// peer (as caller, desk or transfer target at the answer) is not (default true).
    #[serde(default = "yes")]
    pub record: bool,
}

fn yes() -> bool {
    true
}

/// `[[route]]`: dialled number -> peers tried in order.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// An exact number (`12345`) or a pattern starting with `_` (see [`NumberPattern`]).
    pub number: RouteNumber,
    pub peers: Vec<String>,
    /// With `[recording]`: false and calls to this number are not recorded (default true).
    #[serde(default = "yes")]
    pub record: bool,
    /// Local times the route applies (`"08:30-17:30"`; `"22:00-06:00"` runs over midnight);
    /// default: all day. Of the routes for one number, the first that applies is taken.
    #[serde(default)]
    pub hours: Vec<crate::routing::schedule::TimeWindow>,
    /// Days the route applies: `mon` ... `sun`, `workday` (Monday to Friday but the
    /// holidays, and the make-up working days), `restday` (the rest); default: every day.
    #[serde(default)]
    pub days: Vec<crate::routing::schedule::Day>,
    /// With it, a caller every desk of the route turns away (busy, unavailable, failed) is
    /// answered and waits up to this many seconds, hearing `[announcements] queue` (or
    /// ringback), while the desks are offered the call again every `queue_retry_secs`; then
    /// the gateway hangs up. Default: no queue (the failure at once). At most 3600.
    #[serde(default)]
    pub queue_secs: Option<u32>,
    /// How often a queued call is offered to the route's desks again (default 5; 1 to 60).
    #[serde(default = "default_queue_retry_secs")]
    pub queue_retry_secs: u32,
    /// At most this many callers wait in the route's queue at once; one more goes straight to
    /// `overflow` (hearing the queue announcement while it rings), or, with no overflow, is
    /// turned away as when no desk answers. Needs `queue_secs`. Default: no limit.
    #[serde(default)]
    pub queue_max: Option<u32>,
    /// Peers (another centre's remote seats, 远程座席) a queued call goes to, tried in order,
    /// once `queue_secs` is over (or at once when `queue_max` callers wait already); if they
    /// turn it away too, the gateway plays `[announcements] no_desk` and hangs up. Needs
    /// `queue_secs`. Default: none.
    #[serde(default)]
    pub overflow: Vec<String>,
}

fn default_queue_retry_secs() -> u32 {
    5
}

/// `[routing]`: the operator's calendar for routes with `hours` or `days`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutingConfig {
    /// Local time as an offset from UTC, `+08:00` (China Standard Time, the default: China
    /// keeps no daylight saving time).
    #[serde(default = "default_utc_offset")]
    pub utc_offset: String,
    /// Dates (`2026-10-01`) off although weekdays: not `workday`s.
    #[serde(default)]
    pub holidays: Vec<String>,
    /// Dates worked although at a weekend (调休): `workday`s.
    #[serde(default)]
    pub workdays: Vec<String>,
}

impl Default for RoutingConfig {
    fn default() -> RoutingConfig {
        RoutingConfig {
            utc_offset: default_utc_offset(),
            holidays: Vec::new(),
            workdays: Vec::new(),
        }
    }
}

fn default_utc_offset() -> String {
    "+08:00".into()
}

/// A route's `number`, as written (two routes are told apart by it) and as the pattern it is.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct RouteNumber {
    text: String,
    pattern: NumberPattern,
}

impl RouteNumber {
    /// The number as the file spells it.
    pub fn text(&self) -> &str {
        &self.text
    }

    pub fn pattern(&self) -> &NumberPattern {
        &self.pattern
    }
}

impl TryFrom<String> for RouteNumber {
    type Error = String;

    /// # Errors
    /// The reason [`NumberPattern::parse`] refuses `text`.
    fn try_from(text: String) -> Result<RouteNumber, String> {
        let pattern = NumberPattern::parse(&text)?;
        Ok(RouteNumber { text, pattern })
    }
}

/// `[[hotkey]]`: a DTMF sequence from an agent's leg and what it does.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HotkeyConfig {
    pub dtmf: String,
    pub action: HotkeyAction,
    pub target: String,
}

fn default_register_expires_secs() -> u32 {
    3600
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
fn default_auth_algorithms() -> Vec<Algorithm> {
    vec![Algorithm::Sha256, Algorithm::Md5]
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
fn default_codecs() -> Vec<Codec> {
    vec![Codec::Pcma, Codec::Pcmu]
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
