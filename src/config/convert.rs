//! The validated tree converted into the typed values the parts take, so that `start` only
//! assembles and no part reads the tree. Every conversion is infallible: the tree holds its
//! parsed values already (`text.rs`), and validation has checked how they fit together.
//!
//! Values known only at start (bound ports, the descriptor allowance, shared tables) are the
//! caller's: a conversion leaves them at the configured value or takes them as arguments.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;

use super::{
    ApiConfig, Config, HotkeyConfig, MediaConfig, PeerConfig, RouteConfig, ScreeningConfig,
    SipConfig, StoreConfig, TransportKind, UnknownSource,
};
use crate::call::directory::Directory;
use crate::call::hotkey::Hotkey;
use crate::call::screening::Screening;
use crate::call::CallSettings;
use crate::limits::Budget;
use crate::media::ports::{PortPool, PortPools};
use crate::metrics::Metrics;
use crate::routing::credentials::{Credentials, OutboundCredentials};
use crate::routing::{Peer, Registration, Route, Router};
use crate::sip::auth::Digest;
use crate::sip::guard::GuardConfig;
use crate::sip::sdp::MediaPolicy;
use crate::sip::session_timer::SessionTimerSettings;
use crate::sip::target::{InterfaceId, LocalAddress, LocalAddresses};
use crate::sip::tls::TlsFiles;
use crate::sip::transaction::TimerConfig;
use crate::sip::transport::{InterfaceListen, TransportConfig};
use crate::store::StoreOptions;
use crate::workorder::tail::LinkSettings;

impl From<&HotkeyConfig> for Hotkey {
    fn from(config: &HotkeyConfig) -> Hotkey {
        Hotkey {
            dtmf: config.dtmf.clone(),
            action: config.action,
            target: config.target.clone(),
        }
    }
}

impl From<&PeerConfig> for Peer {
    fn from(config: &PeerConfig) -> Peer {
        let mut peer = Peer::new(
            &config.name,
            config.address,
            config.platform.clone(),
            config.transport,
        )
        .with_any_port(config.any_port)
        .with_sources(config.sources.clone());
        peer.trusted = config.trusted;
        peer.front = config.front;
        peer.diversion = config.diversion;
        peer.srtp = config.srtp;
        peer.max_calls_per_sec = config.max_calls_per_sec;
        peer.seats = crate::routing::desks::Seats::new(config.max_calls);
        peer.charset = config.charset;
        peer.record = config.record;
        peer.probe_interval =
            (config.probe_secs > 0).then(|| Duration::from_secs(u64::from(config.probe_secs)));
        // Validation holds username and password together.
        peer.auth = match (&config.auth_username, &config.auth_password) {
            (Some(username), Some(password)) => Some(Credentials {
                username: username.clone(),
                password: password.clone(),
                algorithms: config.auth_algorithms.clone(),
            }),
            _ => None,
        };
        peer.outbound = match (&config.outbound_username, &config.outbound_password) {
            (Some(username), Some(password)) => Some(OutboundCredentials {
                username: username.clone(),
                password: password.clone(),
            }),
            _ => None,
        };
        // Validation holds `register` to peers with outbound credentials.
        peer.registration = match (&peer.outbound, config.register) {
            (Some(outbound), true) => Some(Registration {
                user: outbound.username.clone(),
                domain: config
                    .register_domain
                    .clone()
                    .unwrap_or_else(|| config.address.ip().to_string()),
                expires: Duration::from_secs(u64::from(config.register_expires_secs)),
            }),
            _ => None,
        };
        peer
    }
}

impl From<&RouteConfig> for Route {
    fn from(config: &RouteConfig) -> Route {
        Route {
            number: config.number.pattern().clone(),
            peers: config.peers.clone(),
            record: config.record,
            schedule: crate::routing::schedule::Schedule::new(
                config.hours.clone(),
                config.days.clone(),
            ),
            queue: config.queue_secs.map(|wait| crate::routing::QueuePolicy {
                wait: Duration::from_secs(u64::from(wait)),
                retry: Duration::from_secs(u64::from(config.queue_retry_secs)),
                overflow: config.overflow.clone(),
                line: Arc::new(crate::routing::desks::WaitingLine::new(
                    config.queue_max.map(|max| max as usize),
                )),
            }),
        }
    }
}

impl From<&crate::config::StatusConfig> for crate::http::status::StatusAccess {
    fn from(config: &crate::config::StatusConfig) -> crate::http::status::StatusAccess {
        crate::http::status::StatusAccess {
            token: config.token.clone(),
            allow: config.allow.clone(),
        }
    }
}

impl crate::config::RoutingConfig {
    /// `utc_offset` in minutes (China Standard Time when it does not read; `--check` says so).
    pub fn offset_minutes(&self) -> i32 {
        utc_offset_minutes(&self.utc_offset).unwrap_or(8 * 60)
    }

    /// The calendar (checked by `--check`: what does not read is left out here).
    pub fn calendar(&self) -> crate::routing::schedule::Calendar {
        let days = |dates: &[String]| -> Vec<i64> {
            dates.iter().filter_map(|date| date_days(date)).collect()
        };
        crate::routing::schedule::Calendar::new(
            self.offset_minutes(),
            days(&self.holidays),
            days(&self.workdays),
        )
    }
}

/// `+08:00`, `-05:30`, `+00:00` as minutes east of UTC.
pub(super) fn utc_offset_minutes(text: &str) -> Option<i32> {
    let sign = match text.as_bytes().first()? {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let (hours, minutes) = text.get(1..)?.split_once(':')?;
    let (hours, minutes): (i32, i32) = (hours.parse().ok()?, minutes.parse().ok()?);
    ((0..=14).contains(&hours) && (0..60).contains(&minutes))
        .then_some(sign * (hours * 60 + minutes))
}

/// `2026-10-01` as days since 1970-01-01.
pub(super) fn date_days(text: &str) -> Option<i64> {
    let mut parts = text.trim().splitn(3, '-');
    let year = parts.next()?.parse().ok()?;
    let month = parts.next()?.parse().ok()?;
    let day = parts.next()?.parse().ok()?;
    crate::calendar::days_from_civil(year, month, day)
}

impl From<&Config> for Router {
    /// The `[[peer]]`s (each on its interface) and `[[route]]`s, in file order.
    fn from(config: &Config) -> Router {
        let peers = config
            .peers
            .iter()
            .map(|peer_config| {
                let mut peer = Peer::from(peer_config);
                peer.interface = config.interface_id(peer_config.interface.as_deref());
                peer
            })
            .collect();
        Router::new(peers, config.routes.iter().map(Route::from).collect())
            .with_interface_names(config.interfaces.iter().map(|i| i.name.clone()))
            .with_calendar(config.routing.calendar())
    }
}

impl From<&SipConfig> for TimerConfig {
    fn from(sip: &SipConfig) -> TimerConfig {
        TimerConfig {
            t1: Duration::from_millis(sip.t1_ms),
            t2: Duration::from_millis(sip.t2_ms),
            t4: Duration::from_millis(sip.t4_ms),
        }
    }
}

impl From<&SipConfig> for TransportConfig {
    /// With `max_tcp_connections` as configured; the start lowers it to what the descriptor
    /// limit holds.
    fn from(sip: &SipConfig) -> TransportConfig {
        TransportConfig {
            listen: sip.listen,
            // `[[interface]]`s are the configuration's, set beside this (`Config::transport`).
            interfaces: Vec::new(),
            max_message_size: sip.max_message_size,
            tcp_idle_timeout: Duration::from_secs(sip.tcp_idle_timeout_secs),
            max_tcp_connections: sip.max_tcp_connections,
            max_tcp_connections_per_source: sip.max_tcp_connections_per_source,
            tcp_reserved_for_peers: sip.tcp_reserved_for_peers,
            tcp_request_timeout: Duration::from_secs(sip.tcp_request_timeout_secs),
            // `[hep]` is the configuration's, set beside this (`Config::transport`).
            hep: None,
        }
    }
}

impl From<&SipConfig> for GuardConfig {
    fn from(sip: &SipConfig) -> GuardConfig {
        GuardConfig {
            reject_unknown: sip.unknown_source == UnknownSource::Reject,
            drop_scanners: sip.drop_scanners,
            requests_per_sec: sip.pike_requests_per_sec,
            ban: Duration::from_secs(sip.pike_ban_secs),
            allow: sip.allow.clone(),
        }
    }
}

impl SipConfig {
    /// The address written in Via and Contact: `public_address`, else the listen address's.
    pub fn advertised_ip(&self) -> IpAddr {
        self.public_address.unwrap_or(self.listen.ip())
    }

    /// RFC 4028 session timers, or None when `session_expires_secs` is 0.
    pub fn session_timers(&self) -> Option<SessionTimerSettings> {
        (self.session_expires_secs > 0).then(|| SessionTimerSettings {
            session_expires: Duration::from_secs(self.session_expires_secs),
            min_se: Duration::from_secs(self.min_se_secs),
        })
    }

    /// The option tags the endpoint names in `Supported`.
    pub fn supported(&self) -> &'static [&'static str] {
        if self.session_expires_secs > 0 {
            &["timer"]
        } else {
            &[]
        }
    }

    /// The queueing delay above which new INVITEs are refused (overload control).
    pub fn overload_queue_delay(&self) -> Duration {
        Duration::from_millis(self.overload_queue_delay_ms)
    }

    /// Digest authentication in `auth_realm`, its nonces signed with `key` from `now`.
    pub fn digest(&self, key: [u8; 32], now: Instant) -> Digest {
        Digest::new(
            &self.auth_realm,
            key,
            Duration::from_secs(self.auth_nonce_secs),
            now,
        )
    }
}

impl From<&MediaConfig> for MediaPolicy {
    fn from(media: &MediaConfig) -> MediaPolicy {
        MediaPolicy {
            codecs: media.codecs.clone(),
            telephone_event_payload_type: media.telephone_event,
            ptime: media.ptime,
        }
    }
}

impl MediaConfig {
    /// How long an answered call may go without RTP or RTCP.
    pub fn inactivity_timeout(&self) -> Duration {
        Duration::from_secs(self.inactivity_timeout_secs)
    }
}

impl From<&ScreeningConfig> for Screening {
    /// Without the work-order API's blocklist ([`Screening::with_listed`] adds it).
    fn from(screening: &ScreeningConfig) -> Screening {
        Screening::new(
            screening.blocklist.clone(),
            screening.blocked_status,
            screening.repeat_calls,
            Duration::from_secs(screening.repeat_minutes * 60),
        )
    }
}

impl From<&StoreConfig> for StoreOptions {
    /// Without metrics or recovery, which the start supplies.
    fn from(store: &StoreConfig) -> StoreOptions {
        StoreOptions {
            max_size_bytes: store.max_size_mb.map(|mb| mb * 1024 * 1024),
            synchronous: store.synchronous,
            ..StoreOptions::default()
        }
    }
}

impl ApiConfig {
    /// How long outbox events are kept.
    pub fn outbox_retention(&self) -> Duration {
        Duration::from_secs(self.outbox_retention_hours * 3600)
    }
}

impl From<&Config> for Budget {
    /// With every interface's media ports.
    fn from(config: &Config) -> Budget {
        let range = |[low, high]: [u16; 2]| u64::from(high.saturating_sub(low)) + 1;
        let ports = std::iter::once(config.media.ports)
            .chain(config.interfaces.iter().map(|i| i.ports))
            .map(range)
            .sum();
        Budget::with_ports(ports, config.sip.max_calls, config.sip.max_tcp_connections)
    }
}

impl From<&Config> for LinkSettings {
    fn from(config: &Config) -> LinkSettings {
        LinkSettings {
            address: config.api.grpc,
            tls: config
                .api
                .tls_cert
                .clone()
                .map(|cert| (cert, config.api.tls_name.clone())),
            platforms: config.platform_tokens(),
        }
    }
}

/// What the call settings take beyond the configuration: where the gateway is reached, and
/// the tables every call shares.
pub struct CallContext {
    /// The advertised SIP address on each interface, with the bound ports.
    pub local: LocalAddresses,
    pub router: Arc<Router>,
    pub directory: Arc<Directory>,
}

impl Config {
    /// This node's name and lease in a cluster (`[cluster]`, with `[store] url`).
    pub fn cluster_options(&self) -> Option<crate::store::ClusterOptions> {
        self.cluster
            .as_ref()
            .map(|cluster| crate::store::ClusterOptions {
                node: cluster.node.clone(),
                lease: Duration::from_secs(cluster.lease_secs),
            })
    }

    /// The id of the `[[interface]]` named `name`: 1, 2, … in file order; the default
    /// interface (`[sip]`/`[media]`) for none, "default" or a name not configured (the
    /// configuration's checks rule that out).
    pub fn interface_id(&self, name: Option<&str>) -> InterfaceId {
        name.and_then(|name| self.interfaces.iter().position(|i| i.name == name))
            .and_then(|index| u8::try_from(index + 1).ok())
            .map_or(InterfaceId::DEFAULT, InterfaceId)
    }

    /// The interface's name, for logs, metrics and records ("default" for `[sip]`/`[media]`).
    pub fn interface_name(&self, interface: InterfaceId) -> &str {
        usize::from(interface.0)
            .checked_sub(1)
            .and_then(|index| self.interfaces.get(index))
            .map_or("default", |i| i.name.as_str())
    }

    /// Transport settings with every `[[interface]]`'s listeners.
    pub fn transport(&self) -> TransportConfig {
        let mut transport = TransportConfig::from(&self.sip);
        transport.interfaces = self
            .interfaces
            .iter()
            .map(|i| InterfaceListen {
                sip: i.sip,
                tls: i.tls,
            })
            .collect();
        transport.hep = self.hep.map(|hep| crate::sip::hep::HepSettings {
            collector: hep.address,
            capture_id: hep.capture_id,
        });
        transport
    }

    /// Each interface's media ports: `[media]`'s, then the `[[interface]]`s'.
    pub fn port_pools(&self, metrics: &Arc<Metrics>) -> Arc<PortPools> {
        PortPools::new(
            PortPool::new(self.media.address, self.media.ports, Arc::clone(metrics)),
            self.interfaces.iter().map(|i| {
                let advertised = i.advertise.unwrap_or(i.media);
                PortPool::on_interface(&i.name, i.media, advertised, i.ports, Arc::clone(metrics))
            }),
        )
    }

    /// Our SIP address on each interface as its peers are to see it: the advertised IP (else
    /// the bound one) with the port bound there (`bound`: each interface's SIP and TLS
    /// address, the default's first); the TLS address likewise (an interface's own TLS IP
    /// unless it advertises one; the default's is `[sip]`'s advertised IP, as always).
    pub fn local_addresses(&self, bound: &[(SocketAddr, Option<SocketAddr>)]) -> LocalAddresses {
        let local = |advertised: Option<IpAddr>, index: usize, configured: SocketAddr| {
            let (sip, tls) = bound.get(index).copied().unwrap_or((configured, None));
            let sip_ip = advertised.unwrap_or(configured.ip());
            LocalAddress {
                sip: SocketAddr::new(sip_ip, sip.port()),
                tls: tls.map(|tls| {
                    let ip = match advertised {
                        Some(ip) => ip,
                        None if tls.ip().is_unspecified() => sip_ip,
                        None => tls.ip(),
                    };
                    SocketAddr::new(ip, tls.port())
                }),
            }
        };
        LocalAddresses::new(
            local(Some(self.sip.advertised_ip()), 0, self.sip.listen),
            self.interfaces
                .iter()
                .enumerate()
                .map(|(index, i)| local(i.advertise, index + 1, i.sip)),
        )
    }

    /// What every call is set up with.
    pub fn call_settings(&self, context: CallContext) -> CallSettings {
        let sip = &self.sip;
        CallSettings {
            local: context.local,
            policy: MediaPolicy::from(&self.media),
            peer_response_timeout: Duration::from_millis(sip.peer_response_timeout_ms),
            ring_timeout: Duration::from_secs(sip.ring_timeout_secs),
            // RFC 3261 §17.1.1.2's Timer B: 64*T1.
            cleanup_timeout: TimerConfig::from(sip).t1 * 64,
            user_agent: (!sip.user_agent.is_empty()).then(|| sip.user_agent.clone()),
            router: context.router,
            transfer_ring_timeout: Duration::from_secs(sip.transfer_ring_timeout_secs),
            transfer_early_media: sip.transfer_early_media,
            hotkeys: self.hotkeys.iter().map(Hotkey::from).collect(),
            hotkey_inter_digit: Duration::from_millis(sip.hotkey_inter_digit_ms),
            directory: context.directory,
            conference_max_parties: sip.conference_max_parties,
            conference_ends_with_caller: sip.conference_ends_with_caller,
            session_timers: sip.session_timers(),
            transfer_announcement: self
                .announcements
                .prompt("transfer", &self.announcements.transfer),
            no_desk_announcement: self
                .announcements
                .prompt("no_desk", &self.announcements.no_desk),
            queue_announcement: self
                .announcements
                .prompt("queue", &self.announcements.queue),
            whispers: self.announcements.whispers(),
        }
    }

    /// The SIP TLS files and choices, when `sip.tls_ca` is set (TLS is off without it).
    pub fn tls_files(&self) -> Option<TlsFiles<'_>> {
        let sip = &self.sip;
        Some(TlsFiles {
            listen: sip.tls_listen,
            cert: sip.tls_cert.as_deref(),
            key: sip.tls_key.as_deref(),
            ca: sip.tls_ca.as_deref()?,
            verify_client: sip.tls_verify_client,
            peers: self.tls_peer_names(),
        })
    }

    /// The `transport = "tls"` peers: address and the name their certificate must carry
    /// (`tls_name`, else the peer's IP address).
    pub fn tls_peer_names(&self) -> Vec<(SocketAddr, ServerName<'static>)> {
        self.peers
            .iter()
            .filter(|peer| peer.transport == TransportKind::Tls)
            .map(|peer| {
                let name = peer
                    .tls_name
                    .clone()
                    .unwrap_or_else(|| ServerName::IpAddress(peer.address.ip().into()));
                (peer.address, name)
            })
            .collect()
    }

    /// The `[[platform]]`s' names.
    pub fn platform_names<C: FromIterator<String>>(&self) -> C {
        self.platforms.iter().map(|p| p.name.clone()).collect()
    }

    /// Each `[[platform]]`'s name and token.
    pub fn platform_tokens<C: FromIterator<(String, String)>>(&self) -> C {
        self.platforms
            .iter()
            .map(|p| (p.name.clone(), p.token.clone()))
            .collect()
    }
}

impl super::RecordingConfig {
    /// The recorder's settings.
    pub fn settings(&self) -> crate::media::recording::RecordingSettings {
        const MB: u64 = 1024 * 1024;
        crate::media::recording::RecordingSettings {
            path: self.path.clone(),
            retention_days: self.retention_days,
            max_disk_bytes: self.max_disk_mb.map(|mb| mb.saturating_mul(MB)),
            min_free_bytes: self.min_free_mb.map(|mb| mb.saturating_mul(MB)),
            // About 800 ms of 800 calls' two directions (about 23 MB).
            queue_frames: 65_536,
        }
    }
}

impl crate::config::AnnouncementsConfig {
    /// `[announcements.whisper]`'s prompts, read from their files.
    fn whispers(&self) -> crate::call::model::Whispers {
        let whisper = &self.whisper;
        crate::call::model::Whispers {
            platforms: whisper.platforms.clone(),
            class_d: self.prompt("whisper.class_d", &whisper.class_d),
            class_a: self.prompt("whisper.class_a", &whisper.class_a),
            class_b: self.prompt("whisper.class_b", &whisper.class_b),
            class_c: self.prompt("whisper.class_c", &whisper.class_c),
            unclassified: self.prompt("whisper.unclassified", &whisper.unclassified),
        }
    }

    /// The announcement `key` at `path`, read from its file (checked by `--check`; a file
    /// gone since is logged and the tone or the plain failure goes instead).
    pub fn prompt(
        &self,
        key: &str,
        path: &Option<std::path::PathBuf>,
    ) -> Option<crate::media::prompt::Prompt> {
        let path = path.as_ref()?;
        match crate::media::prompt::Prompt::load(path, self.gap_ms) {
            Ok(prompt) => Some(prompt),
            Err(error) => {
                tracing::error!(%error, key, "announcement not played");
                None
            }
        }
    }
}
