//! Routes and peers: which peer a request came from, and which peers a dialled number goes to.
//! The peer's own vocabulary lives here too, below SIP: its SRTP policy ([`SrtpMode`]), its digest
//! [`credentials`], the [`charset`] of its header text and its [`health`] (down peers are
//! skipped wherever a peer is chosen: [`Router::available`]); `sip` uses them, never the reverse.
//!
//! A route's `number` is either exact (`12345`) or a pattern that starts with `_`, in the dial-plan
//! notation PBX engineers know:
//!
//! | pattern element | matches |
//! |---|---|
//! | `X` | any digit 0-9 |
//! | `Z` | any digit 1-9 |
//! | `N` | any digit 2-9 |
//! | `[1-5]`, `[159]` | one digit from the set or range |
//! | `.` | one or more further characters (only last) |
//! | `!` | zero or more further characters (only last) |
//! | anything else | itself |
//!
//! An exact route always wins; otherwise the first matching pattern in file order.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

pub use cidr::{Cidr, CidrError};

/// Which header records the diverting party of a transferred call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum DiversionHeader {
    #[default]
    HistoryInfo,
    Diversion,
    Both,
    None,
}

pub mod charset;
mod cidr;
pub mod credentials;
pub mod desks;
pub use desks::QueuePolicy;
pub mod health;
pub mod schedule;

use charset::Charset;

/// Whether a leg must be encrypted: a peer's `srtp` setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SrtpMode {
    /// Offers are plain RTP; offers with `a=crypto` (RTP/SAVP, or RTP/AVP best effort) are
    /// answered with SRTP.
    #[default]
    Optional,
    /// Offers are RTP/SAVP with `a=crypto`; plain offers are refused (488).
    Mandatory,
}

/// Signalling transport used towards a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum TransportKind {
    #[default]
    Udp,
    Tcp,
    /// TLS over TCP (needs `sip.tls_ca`).
    Tls,
}

/// A configured SIP neighbour, as the rest of the gateway sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub name: String,
    pub address: SocketAddr,
    pub platform: Option<String>,
    pub transport: TransportKind,
    /// Gets a private caller identity (RFC 3325 §2.3).
    pub trusted: bool,
    /// A load balancer in front of the gateway: its requests name their original source
    /// ([`FRONT_SOURCE_HEADER`]).
    pub front: bool,
    pub diversion: DiversionHeader,
    /// Whether its legs must be SRTP.
    pub srtp: SrtpMode,
    any_port: bool,
    /// Networks whose requests are this peer's too (beyond `address`).
    sources: Vec<Cidr>,
    /// New calls per second this peer may start (None: no limit).
    pub max_calls_per_sec: Option<u32>,
    /// Digest credentials its requests must prove (None: its address suffices).
    pub auth: Option<credentials::Credentials>,
    /// What the gateway presents when this peer challenges (None: a challenge fails the
    /// request).
    pub outbound: Option<credentials::OutboundCredentials>,
    /// How it writes header text that is not UTF-8.
    pub charset: Charset,
    /// How often it is probed with OPTIONS (None: never, and it counts as up).
    pub probe_interval: Option<std::time::Duration>,
    /// The registration the gateway keeps at it (RFC 3261 §10; None: not registered).
    pub registration: Option<Registration>,
    /// The interface it is reached on (its network).
    pub interface: InterfaceId,
    /// Calls through it are recorded (with `[recording]`).
    pub record: bool,
    /// Up or down, as its probes found (up until they find otherwise).
    liveness: health::Liveness,
    /// The calls the gateway has sent it, against `[[peer]] max_calls`.
    pub seats: desks::Seats,
}

/// One of the gateway's interfaces (`[[interface]]`, in the order configured after the
/// default): the addresses it speaks SIP and media from on one network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct InterfaceId(pub u8);

impl InterfaceId {
    /// The `[sip]`/`[media]` interface.
    pub const DEFAULT: InterfaceId = InterfaceId(0);
}

/// A registration the gateway keeps at a peer acting as registrar (RFC 3261 §10): the address
/// of record `sip:user@domain` and the expiry asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    /// The AOR's user part (the peer's `outbound_username`); a request from the peer whose
    /// Request-URI user is this one was sent to our registered contact.
    pub user: String,
    /// The AOR's host.
    pub domain: String,
    pub expires: std::time::Duration,
}

impl Peer {
    /// A peer that accepts requests only from `address` exactly.
    pub fn new(
        name: &str,
        address: SocketAddr,
        platform: Option<String>,
        transport: TransportKind,
    ) -> Peer {
        Peer {
            name: name.to_string(),
            address,
            platform,
            transport,
            trusted: false,
            front: false,
            diversion: DiversionHeader::default(),
            srtp: SrtpMode::Optional,
            any_port: false,
            sources: Vec::new(),
            max_calls_per_sec: None,
            auth: None,
            outbound: None,
            charset: Charset::Utf8,
            probe_interval: None,
            registration: None,
            interface: InterfaceId::DEFAULT,
            record: true,
            liveness: health::Liveness::default(),
            seats: desks::Seats::default(),
        }
    }

    /// Whether calls may be sent to it: not found down by its probes.
    pub fn is_up(&self) -> bool {
        self.liveness.is_up()
    }

    /// Marks it up or down (the prober's finding).
    pub fn set_up(&self, up: bool) {
        self.liveness.set_up(up);
    }

    /// Also accepts requests from any source port of its address's IP.
    #[must_use]
    pub fn with_any_port(mut self, any_port: bool) -> Peer {
        self.any_port = any_port;
        self
    }

    /// Also accepts requests from these networks.
    #[must_use]
    pub fn with_sources(mut self, sources: Vec<Cidr>) -> Peer {
        self.sources = sources;
        self
    }
}

/// The header a front proxy (`[[peer]] front = true`) names a request's original source in:
/// `IP:port` (`$si:$sp` in Kamailio).
pub const FRONT_SOURCE_HEADER: &str = "X-Hotline-Source";

/// A route: a dialled number and the names of the peers tried for it, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub number: NumberPattern,
    pub peers: Vec<String>,
    /// Calls to the number are recorded (with `[recording]`).
    pub record: bool,
    /// When the route applies (always by default): of the routes for a number, the first
    /// that applies now is taken.
    pub schedule: schedule::Schedule,
    /// A caller every desk of the route turned away waits (None: the failure at once).
    pub queue: Option<QueuePolicy>,
}

/// One element of a [`NumberPattern`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PatternElement {
    Literal(char),
    /// Inclusive digit ranges, e.g. `[1-5]` or `X` = `0-9`.
    Digits(Vec<(char, char)>),
    /// `.`: one or more of anything.
    OneOrMore,
    /// `!`: zero or more of anything.
    ZeroOrMore,
}

/// A route number: exact, or a `_` pattern (module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NumberPattern {
    Exact(String),
    /// Its elements, and its text as configured (what the figures name it by).
    Pattern {
        elements: Vec<PatternElement>,
        text: String,
    },
}

impl NumberPattern {
    /// ```
    /// use hotline_gateway::routing::NumberPattern;
    ///
    /// let emergency = NumberPattern::parse("_1[12]X").unwrap_or(NumberPattern::Exact(String::new()));
    /// assert!(emergency.matches("110") && emergency.matches("122"));
    /// assert!(!emergency.matches("12345"));
    /// assert!(NumberPattern::parse("_9.1").is_err()); // '.' only at the end
    /// ```
    ///
    /// # Errors
    /// A human-readable reason when the pattern is malformed.
    pub fn parse(text: &str) -> Result<NumberPattern, String> {
        if text.is_empty() {
            return Err("must not be empty".into());
        }
        let Some(body) = text.strip_prefix('_') else {
            if text
                .chars()
                .any(|c| c.is_whitespace() || c == '@' || c == ';')
            {
                return Err(format!("{text:?} is not a dialable number"));
            }
            return Ok(NumberPattern::Exact(text.to_string()));
        };
        let mut elements = Vec::new();
        let mut chars = body.chars().peekable();
        while let Some(c) = chars.next() {
            let element = match c.to_ascii_uppercase() {
                'X' => PatternElement::Digits(vec![('0', '9')]),
                'Z' => PatternElement::Digits(vec![('1', '9')]),
                'N' => PatternElement::Digits(vec![('2', '9')]),
                '.' | '!' => {
                    if chars.peek().is_some() {
                        return Err(format!("`{c}` may only end a pattern"));
                    }
                    if c == '.' {
                        PatternElement::OneOrMore
                    } else {
                        PatternElement::ZeroOrMore
                    }
                }
                '[' => {
                    let mut set = Vec::new();
                    let mut closed = false;
                    while let Some(d) = chars.next() {
                        if d == ']' {
                            closed = true;
                            break;
                        }
                        if chars.peek() == Some(&'-') {
                            chars.next();
                            match chars.next() {
                                Some(e) if e != ']' && e >= d => set.push((d, e)),
                                _ => return Err("bad range inside [...]".into()),
                            }
                        } else {
                            set.push((d, d));
                        }
                    }
                    if !closed || set.is_empty() {
                        return Err("unclosed or empty [...]".into());
                    }
                    PatternElement::Digits(set)
                }
                _ => PatternElement::Literal(c),
            };
            elements.push(element);
        }
        if elements.is_empty() {
            return Err("`_` must be followed by a pattern".into());
        }
        Ok(NumberPattern::Pattern {
            elements,
            text: text.to_string(),
        })
    }

    pub fn matches(&self, number: &str) -> bool {
        match self {
            NumberPattern::Exact(exact) => exact == number,
            NumberPattern::Pattern { elements, .. } => {
                let mut chars = number.chars();
                for element in elements {
                    match element {
                        PatternElement::OneOrMore => return chars.next().is_some(),
                        PatternElement::ZeroOrMore => return true,
                        PatternElement::Literal(l) => {
                            if chars.next() != Some(*l) {
                                return false;
                            }
                        }
                        PatternElement::Digits(set) => match chars.next() {
                            Some(c) if set.iter().any(|(lo, hi)| (*lo..=*hi).contains(&c)) => {}
                            _ => return false,
                        },
                    }
                }
                chars.next().is_none()
            }
        }
    }
}

/// As configured: `12345`, `_1[12]X`, `_9.`.
impl std::fmt::Display for NumberPattern {
    fn fmt(&self, out: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NumberPattern::Exact(number) => out.write_str(number),
            NumberPattern::Pattern { text, .. } => out.write_str(text),
        }
    }
}

/// Number -> ordered peers, and source address -> peer. Built once, from the peers and routes.
#[derive(Debug)]
pub struct Router {
    peers: Vec<Arc<Peer>>,
    by_address: HashMap<SocketAddr, Arc<Peer>>,
    by_ip: HashMap<IpAddr, Arc<Peer>>,
    /// Each exact number's routes in file order, each when it applies.
    exact: HashMap<String, Vec<RouteEntry>>,
    patterns: Vec<(NumberPattern, RouteEntry)>,
    /// The operator's local time and days, for the routes' schedules.
    calendar: schedule::Calendar,
    /// Unix ms now: the system clock, or a test's.
    clock: schedule::Clock,
    /// The routes with `record = false`.
    unrecorded: Vec<NumberPattern>,
    /// The interfaces' names by [`InterfaceId`] (the default's first), for records and logs.
    interfaces: Vec<String>,
    /// Raised when a desk frees a seat or a queued caller leaves a line.
    desks: Arc<desks::DeskSignal>,
}

impl Router {
    /// Names the interfaces after the default one, in order (`[[interface]] name`).
    #[must_use]
    pub fn with_interface_names(mut self, names: impl IntoIterator<Item = String>) -> Router {
        self.interfaces.truncate(1);
        self.interfaces.extend(names);
        self
    }

    /// Raised when a desk frees a seat or a queued caller leaves a line: queued calls wait on
    /// it.
    pub fn desk_signal(&self) -> &Arc<desks::DeskSignal> {
        &self.desks
    }

    /// The name of an interface: "default" for `[sip]`/`[media]`'s (or one not configured).
    pub fn interface_name(&self, interface: InterfaceId) -> &str {
        self.interfaces
            .get(usize::from(interface.0))
            .map_or("default", String::as_str)
    }

    /// The operator's calendar (`[routing]`) for the routes' schedules.
    #[must_use]
    pub fn with_calendar(mut self, calendar: schedule::Calendar) -> Router {
        self.calendar = calendar;
        self
    }

    /// Reads the time from `clock` (Unix ms) instead of the system's: a test's fake clock.
    #[must_use]
    pub fn with_clock(mut self, clock: Arc<dyn Fn() -> i64 + Send + Sync>) -> Router {
        self.clock = schedule::Clock(clock);
        self
    }

    /// Builds the tables. A route's peer that is none of `peers` is skipped (validation
    /// refuses such a configuration). Routes for one number are kept in file order, each
    /// with its schedule.
    pub fn new(peers: Vec<Peer>, routes: Vec<Route>) -> Router {
        let desks = Arc::new(desks::DeskSignal::default());
        let peers: Vec<Arc<Peer>> = peers
            .into_iter()
            .map(|mut peer| {
                peer.seats.connect(&desks);
                Arc::new(peer)
            })
            .collect();
        let by_name: HashMap<&str, Arc<Peer>> = peers
            .iter()
            .map(|p| (p.name.as_str(), Arc::clone(p)))
            .collect();
        let mut by_address = HashMap::new();
        let mut by_ip = HashMap::new();
        for peer in &peers {
            by_address
                .entry(peer.address)
                .or_insert_with(|| Arc::clone(peer));
            if peer.any_port {
                by_ip
                    .entry(peer.address.ip())
                    .or_insert_with(|| Arc::clone(peer));
            }
        }
        let mut exact = HashMap::new();
        let mut patterns = Vec::new();
        let mut unrecorded = Vec::new();
        for mut route in routes {
            if let Some(policy) = route.queue.as_mut() {
                let mut line = desks::WaitingLine::new(policy.line.max());
                line.connect(&desks);
                policy.line = Arc::new(line);
            }
            if !route.record {
                unrecorded.push(route.number.clone());
            }
            let targets: Vec<Arc<Peer>> = route
                .peers
                .iter()
                .filter_map(|name| by_name.get(name.as_str()).cloned())
                .collect();
            let entry = RouteEntry {
                name: route.number.to_string(),
                schedule: route.schedule,
                peers: targets,
                queue: route.queue,
            };
            match route.number {
                NumberPattern::Exact(number) => {
                    exact.entry(number).or_insert_with(Vec::new).push(entry)
                }
                pattern => patterns.push((pattern, entry)),
            }
        }
        Router {
            peers,
            by_address,
            by_ip,
            exact,
            patterns,
            unrecorded,
            interfaces: vec!["default".to_string()],
            desks,
            calendar: schedule::Calendar::default(),
            clock: schedule::Clock(Arc::new(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as i64)
            })),
        }
    }

    /// The peer a request from `source` is attributed to: the source's peer, or, when that is
    /// a front proxy and the request names its original source (`front_source`, the value of
    /// its [`FRONT_SOURCE_HEADER`]), the peer at that source (None: a stranger, or a stranger
    /// relayed by the front). A front's OPTIONS without the header (its probes) is its own;
    /// any other request of a front must name its source (None: the front relays in-dialog
    /// requests too, and one it relayed unnamed could be anyone's). Anyone else's header is
    /// ignored.
    pub fn attributed_peer<'a>(
        &self,
        source: SocketAddr,
        front_source: impl FnOnce() -> Option<&'a str>,
        is_options: bool,
    ) -> Option<Arc<Peer>> {
        let peer = self.peer_for_source(source)?;
        if !peer.front {
            return Some(peer);
        }
        // Looked for only on a front's requests: every other request's path is as before.
        let Some(original) = front_source() else {
            return is_options.then_some(peer);
        };
        let original = original.trim();
        let original = original.parse::<SocketAddr>().ok().or_else(|| {
            original
                .parse::<IpAddr>()
                .ok()
                .map(|ip| SocketAddr::new(ip, 5060))
        })?;
        // A front relaying for itself (or another front) is no original source.
        self.peer_for_source(original).filter(|p| !p.front)
    }

    /// The peer a request from `source` belongs to: exact IP:port first, then peers marked
    /// `any_port` by IP, then peers' `sources` networks in file order. IPv4-mapped IPv6
    /// sources are compared as IPv4.
    pub fn peer_for_source(&self, source: SocketAddr) -> Option<Arc<Peer>> {
        let source = canonical(source);
        self.by_address
            .get(&source)
            .or_else(|| self.by_ip.get(&source.ip()))
            .cloned()
            .or_else(|| {
                self.peers
                    .iter()
                    .find(|p| p.sources.iter().any(|c| c.contains(source.ip())))
                    .cloned()
            })
    }

    /// Whether `ip` is a peer's host, on any port: a TCP connection from it (whose address
    /// a handshake proved) may take the slots kept for peers.
    pub fn is_peer_host(&self, ip: IpAddr) -> bool {
        let ip = canonical(SocketAddr::new(ip, 0)).ip();
        self.by_ip.contains_key(&ip)
            || self.peers.iter().any(|p| {
                canonical(p.address).ip() == ip || p.sources.iter().any(|c| c.contains(ip))
            })
    }

    /// The route's peers that are up, in order, for a dialled number: what a new call, a
    /// transfer or a conference guest tries (None: no route; empty: every peer is down).
    pub fn available(&self, number: &str) -> Option<Vec<Arc<Peer>>> {
        self.available_at(number, self.now_ms())
    }

    /// As [`Router::available`], at `unix_ms` (one decision, one reading of the clock).
    pub fn available_at(&self, number: &str, unix_ms: i64) -> Option<Vec<Arc<Peer>>> {
        self.route_at(number, unix_ms)
            .map(|peers| peers.iter().filter(|p| p.is_up()).cloned().collect())
    }

    /// The router's clock, Unix ms.
    pub fn now_ms(&self) -> i64 {
        (self.clock.0)()
    }

    /// The names of the peers found down, in file order.
    pub fn peers_down(&self) -> Vec<&str> {
        self.peers
            .iter()
            .filter(|p| !p.is_up())
            .map(|p| p.name.as_str())
            .collect()
    }

    /// The peers to try, in order, for a dialled number, up or down: of its routes, the
    /// first that applies now (exact numbers before patterns).
    pub fn route(&self, number: &str) -> Option<&[Arc<Peer>]> {
        self.route_at(number, self.now_ms())
    }

    /// As [`Router::route`], at `unix_ms`.
    pub fn route_at(&self, number: &str, unix_ms: i64) -> Option<&[Arc<Peer>]> {
        self.entry_at(number, unix_ms)
            .map(|entry| entry.peers.as_slice())
    }

    /// How callers of the route that applies to `number` at `unix_ms` wait, if they do.
    pub fn queue_at(&self, number: &str, unix_ms: i64) -> Option<QueuePolicy> {
        self.entry_at(number, unix_ms)
            .and_then(|entry| entry.queue.clone())
    }

    fn entry_at(&self, number: &str, unix_ms: i64) -> Option<&RouteEntry> {
        let open = |entry: &RouteEntry| entry.schedule.is_open(&self.calendar, unix_ms);
        if let Some(entry) = self
            .exact
            .get(number)
            .and_then(|routes| routes.iter().find(|entry| open(entry)))
        {
            return Some(entry);
        }
        self.patterns
            .iter()
            .find(|(pattern, entry)| pattern.matches(number) && open(entry))
            .map(|(_, entry)| entry)
    }

    /// Whether calls to `number` may be recorded: no route for it says `record = false`.
    pub fn records(&self, number: &str) -> bool {
        !self
            .unrecorded
            .iter()
            .any(|pattern| pattern.matches(number))
    }

    /// The route a call to `number` at `unix_ms` takes, named as configured (`12345`,
    /// `_1[12]X`): the figures' `route` (from the configuration, never the number itself
    /// unless a route names it exactly).
    pub fn route_name_at(&self, number: &str, unix_ms: i64) -> Option<String> {
        self.entry_at(number, unix_ms)
            .map(|entry| entry.name.clone())
    }

    pub fn peer_by_name(&self, name: &str) -> Option<Arc<Peer>> {
        self.peers.iter().find(|p| p.name == name).cloned()
    }

    pub fn peers(&self) -> &[Arc<Peer>] {
        &self.peers
    }
}

/// A route as the router keeps it: when it applies, its peers, how its callers wait.
#[derive(Debug)]
struct RouteEntry {
    /// Its number as configured.
    name: String,
    schedule: schedule::Schedule,
    peers: Vec<Arc<Peer>>,
    queue: Option<QueuePolicy>,
}

/// `::ffff:a.b.c.d` -> `a.b.c.d`, so a dual-stack socket still finds IPv4 peers.
pub fn canonical(address: SocketAddr) -> SocketAddr {
    match address {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => address,
        },
        SocketAddr::V4(_) => address,
    }
}

#[cfg(test)]
mod tests;
