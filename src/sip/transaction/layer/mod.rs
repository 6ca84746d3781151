//! The transaction layer (RFC 3261 §17) as one sans-IO state: the tables of live client and
//! server transactions, their timers in one deadline heap, and the answers the layer gives on
//! its own. The endpoint ([`crate::sip::endpoint`]) is the loop that feeds it sockets and time.
//!
//! Call order: feed inputs with `now` ([`handle_request`](TransactionLayer::handle_request),
//! [`handle_response`](TransactionLayer::handle_response),
//! [`send_request`](TransactionLayer::send_request),
//! [`send_response`](TransactionLayer::send_response),
//! [`handle_timeout`](TransactionLayer::handle_timeout), ...); then drain
//! [`poll_transmit`](TransactionLayer::poll_transmit) (bytes and where they go) and
//! [`poll_event`](TransactionLayer::poll_event) (what goes to an owner, or a new request for the
//! call layer to decide on, answered through `send_response` or taken by
//! [`accept`](TransactionLayer::accept)); sleep until
//! [`poll_timeout`](TransactionLayer::poll_timeout). Nothing here reads a clock or touches a
//! socket.
//!
//! `O` is whoever owns a transaction or a dialog (the endpoint's channel to a call task; a plain
//! number in tests). Dialogs belong to the call layer: the layer asks a [`Dialogs`] directory
//! which owner holds one.
//!
//! `mod.rs` holds the state, its inputs from the owners and its outputs; `inbound.rs` what
//! arrives from the network (matching, CANCEL, ACK for 2xx, the local answers); `service.rs`
//! the timers and what each machine asks for.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::either::{ClientTransaction, ServerTransaction};
use super::matching::{AcceptedKey, ClientKey, MergeKey, ServerKey};
use super::{answers, DialogKey, ServerTransactionId, SipEvent, TimerConfig};
use crate::metrics::{Counter, Gauge, Metrics};
use crate::routing::credentials::Credentials;
use crate::sip::auth::Digest;
use crate::sip::message::{Method, Request, Response};
use crate::sip::overload::OverloadDetector;
use crate::sip::target::{Flow, Target};

/// Bytes to send and where.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub struct Transmit {
    pub target: Target,
    pub bytes: Bytes,
}

/// What the layer hands up.
#[derive(Debug)]
#[must_use]
pub enum LayerEvent<O> {
    /// Give `event` to `owner`: the owner of the transaction, or of the dialog it belongs to.
    /// If `owner` refuses a [`SipEvent::Request`] (its inbox is full), answer through
    /// [`TransactionLayer::refuse_busy`].
    Deliver { owner: O, event: SipEvent },
    /// A request that opens no known dialog: the call layer answers it
    /// ([`TransactionLayer::send_response`]) or takes the transaction
    /// ([`TransactionLayer::accept`]).
    NewRequest {
        server: ServerTransactionId,
        request: Request,
        source: SocketAddr,
        flow: Flow,
    },
}

/// Where and when a message arrived.
#[derive(Debug, Clone, Copy)]
pub struct Arrival {
    pub source: SocketAddr,
    pub flow: Flow,
    /// When the bytes were read from the socket: the layer measures its queueing delay.
    pub received: Instant,
}

/// Which owner holds a dialog; the call layer's directory as the transaction layer sees it.
pub trait Dialogs<O> {
    fn owner(&self, key: &DialogKey) -> Option<O>;
    fn contains(&self, key: &DialogKey) -> bool;
}

impl<O: Clone> Dialogs<O> for HashMap<DialogKey, O> {
    fn owner(&self, key: &DialogKey) -> Option<O> {
        self.get(key).cloned()
    }

    fn contains(&self, key: &DialogKey) -> bool {
        self.contains_key(key)
    }
}

/// The peer a request's source address belongs to, when that peer has credentials to prove
/// (§22): the layer challenges requests that start something.
#[derive(Debug, Clone, Copy)]
pub struct Claimant<'a> {
    pub peer: &'a str,
    pub credentials: &'a Credentials,
}

struct ClientEntry<O> {
    machine: ClientTransaction,
    /// What its own ACK and lost-connection answer need ([`crate::sip::message::essentials`]).
    request: Request,
    target: Target,
    owner: O,
    /// The deadline this entry has in the heap, so each entry is in it at most once or twice.
    armed: Option<Instant>,
}

struct ServerEntry<O> {
    id: ServerTransactionId,
    machine: ServerTransaction,
    response_target: Target,
    owner: Option<O>,
    /// For merged-request detection and ACK matching.
    merge_key: Option<MergeKey>,
    accepted_key: Option<AcceptedKey>,
    armed: Option<Instant>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum TimerOwner {
    Client(ClientKey),
    Server(ServerTransactionId),
}

/// Every live transaction and what the layer has to send and hand up.
pub struct TransactionLayer<O> {
    timers: TimerConfig,
    metrics: Arc<Metrics>,
    // Boxed: a table holds up to twice the slots it fills, and an entry is a few hundred bytes.
    clients: HashMap<ClientKey, Box<ClientEntry<O>>>,
    servers: HashMap<ServerKey, Box<ServerEntry<O>>>,
    server_keys: HashMap<ServerTransactionId, ServerKey>,
    merged: HashMap<MergeKey, String>,
    accepted: HashMap<AcceptedKey, ServerKey>,
    deadlines: BinaryHeap<Reverse<(Instant, TimerOwner)>>,
    next_server: u64,
    overload: OverloadDetector,
    /// Initial INVITEs overload control never sheds (a reserved platform's calls).
    priority: Option<Arc<dyn crate::sip::overload::Priority>>,
    supported: Vec<&'static str>,
    max_transactions: usize,
    /// Digest authentication of peers that have credentials ([`TransactionLayer::with_auth`]).
    auth: Option<Digest>,
    /// Client transactions over TCP/TLS per peer address: a lost connection to an address
    /// with none costs no scan (strangers' connections come and go).
    reliable_clients: HashMap<SocketAddr, usize>,
    /// When the tables were last fitted to their contents ([`TransactionLayer::shrink_tables`]).
    last_shrink: Instant,
    /// Both transaction tables were empty at the last timer (fitted then, not again).
    was_idle: bool,
    transmits: VecDeque<Transmit>,
    events: VecDeque<LayerEvent<O>>,
}

/// How often the transaction tables are fitted to their contents (at once when they empty).
pub const SHRINK_EVERY: Duration = Duration::from_secs(10);

/// Gives back most of a table's room once it is less than a quarter full: a hash table keeps
/// the capacity of its busiest moment, and ours hold transactions inline (600-700 bytes
/// each), so after a peak of 100,000 the empty tables alone held about 170 MB.
pub fn shrink_sparse<K: std::hash::Hash + Eq, V>(table: &mut HashMap<K, V>) {
    if table.capacity() > 64 && table.len() * 4 < table.capacity() {
        table.shrink_to(table.len() * 2);
    }
}

impl<O: Clone> TransactionLayer<O> {
    /// A layer that limits nothing until told (the `with_*` builders).
    pub fn new(now: Instant, timers: TimerConfig, metrics: Arc<Metrics>) -> TransactionLayer<O> {
        TransactionLayer {
            timers,
            metrics,
            clients: HashMap::new(),
            servers: HashMap::new(),
            server_keys: HashMap::new(),
            merged: HashMap::new(),
            accepted: HashMap::new(),
            deadlines: BinaryHeap::new(),
            next_server: 1,
            overload: OverloadDetector::new(Duration::MAX),
            priority: None,
            supported: Vec::new(),
            max_transactions: usize::MAX,
            auth: None,
            reliable_clients: HashMap::new(),
            last_shrink: now,
            was_idle: true,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// Overload control: while the inbound queue stands above `delay` (see
    /// [`OverloadDetector`]), new INVITEs that waited longer than it are answered 503 +
    /// Retry-After statelessly ([`answers::overloaded`]).
    #[must_use]
    pub fn with_overload_delay(mut self, delay: Duration) -> TransactionLayer<O> {
        self.overload = OverloadDetector::new(delay);
        self
    }

    /// Calls overload control never sheds ([`crate::sip::overload::Priority`]): they still
    /// meet admission's limits.
    #[must_use]
    pub fn with_priority(
        mut self,
        priority: Arc<dyn crate::sip::overload::Priority>,
    ) -> TransactionLayer<O> {
        self.priority = Some(priority);
        self
    }

    /// The option tags requests may Require (`timer` with session timers on); a request
    /// requiring any other gets 420 Bad Extension with Unsupported (§8.2.2.3).
    #[must_use]
    pub fn with_supported(mut self, tags: &[&'static str]) -> TransactionLayer<O> {
        self.supported = tags.to_vec();
        self
    }

    /// At most `max` server transactions: beyond, new requests outside dialogs get a
    /// stateless 503 + Retry-After, while requests in dialogs (BYE, re-INVITE) still get
    /// theirs, so calls in progress end cleanly.
    #[must_use]
    pub fn with_max_transactions(mut self, max: usize) -> TransactionLayer<O> {
        self.max_transactions = max;
        self
    }

    /// Requests that start something, from a peer with credentials, must prove them (§22).
    #[must_use]
    pub fn with_auth(mut self, digest: Digest) -> TransactionLayer<O> {
        self.auth = Some(digest);
        self
    }

    /// The next bytes to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next event for an owner or the call layer.
    pub fn poll_event(&mut self) -> Option<LayerEvent<O>> {
        self.events.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) must next be called.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.deadlines.peek().map(|Reverse((at, _))| *at)
    }

    /// Live client and server transactions.
    #[must_use]
    pub fn len(&self) -> (usize, usize) {
        (self.clients.len(), self.servers.len())
    }

    /// Whether any client transaction runs over TCP/TLS to `address`: only then can a lost
    /// connection there fail one ([`handle_connection_lost`](Self::handle_connection_lost)).
    #[must_use]
    pub fn has_reliable_clients(&self, address: SocketAddr) -> bool {
        self.reliable_clients.get(&address).copied().unwrap_or(0) > 0
    }

    fn transmit(&mut self, target: Target, bytes: Bytes) {
        self.transmits.push_back(Transmit { target, bytes });
    }

    fn deliver(&mut self, owner: O, event: SipEvent) {
        self.events.push_back(LayerEvent::Deliver { owner, event });
    }

    /// An owner starts a client transaction (ACK goes statelessly, §17.1.1.3). The request
    /// carries a top Via with a unique branch; `bytes` is it serialised.
    pub fn send_request(
        &mut self,
        now: Instant,
        request: Request,
        bytes: Bytes,
        target: Target,
        owner: O,
    ) {
        if request.method == Method::Ack {
            self.transmit(target, bytes);
            return;
        }
        let Some(key) = ClientKey::for_request(&request) else {
            tracing::error!(method = %request.method, "request without branch not sent");
            return;
        };
        let reliable = target.is_reliable();
        let machine = ClientTransaction::new(now, &request.method, bytes, reliable, &self.timers);
        self.metrics.increment(Counter::TransactionsTotal);
        self.metrics.add_gauge(Gauge::TransactionsActive, 1);
        self.count_reliable(target, 1);
        let entry = ClientEntry {
            machine,
            request: crate::sip::message::essentials(request),
            target,
            owner,
            armed: None,
        };
        if let Some(old) = self.clients.insert(key.clone(), Box::new(entry)) {
            self.count_reliable(old.target, -1);
            self.metrics.add_gauge(Gauge::TransactionsActive, -1);
        }
        self.service_client(&key, false);
    }

    /// An owner's (or the call layer's) response through server transaction `server`;
    /// `bytes` is it serialised.
    pub fn send_response(
        &mut self,
        now: Instant,
        server: ServerTransactionId,
        response: &Response,
        bytes: Bytes,
    ) {
        let Some(key) = self.server_keys.get(&server).cloned() else {
            return;
        };
        let Some(entry) = self.servers.get_mut(&key) else {
            return;
        };
        match &mut entry.machine {
            ServerTransaction::Invite(machine) => {
                let accepted = (200..300)
                    .contains(&response.status)
                    .then(|| AcceptedKey::for_response(response))
                    .flatten();
                if let Some(accepted) = accepted {
                    self.accepted.insert(accepted.clone(), key.clone());
                    entry.accepted_key = Some(accepted);
                }
                machine.send_response(now, response.status, bytes);
            }
            ServerTransaction::NonInvite(machine) => {
                machine.send_response(now, response.status, bytes);
                if response.status >= 200 {
                    // Retransmissions are answered from here on (Timer J): no owner needed.
                    entry.owner = None;
                }
            }
        }
        self.service_server(&key, false);
    }

    fn respond(&mut self, now: Instant, server: ServerTransactionId, response: Response) {
        let bytes = response.to_bytes();
        self.send_response(now, server, &response, bytes);
    }

    /// The call layer takes the transaction of a [`LayerEvent::NewRequest`]: what follows
    /// (CANCEL, ACK, the ACK timeout) goes to `owner`.
    pub fn accept(&mut self, server: ServerTransactionId, owner: O) {
        let Some(key) = self.server_keys.get(&server) else {
            return;
        };
        if let Some(entry) = self.servers.get_mut(key) {
            entry.owner = Some(owner);
        }
    }

    /// The owner had too many of the peer's requests unread to take `request`: 503, try later.
    pub fn refuse_busy(&mut self, now: Instant, server: ServerTransactionId, request: &Request) {
        self.metrics.increment(Counter::SipRefusedTransactions);
        self.respond(now, server, answers::call_busy(request));
    }

    /// A TCP/TLS connection to `address` failed and no newer one is up: requests sent over it
    /// and still unanswered get a 503 at once (§8.1.3.1) instead of waiting for Timer B/F, so
    /// a call fails over or ends now rather than 32 s later.
    pub fn handle_connection_lost(&mut self, address: SocketAddr, secure: bool) {
        if !self.has_reliable_clients(address) {
            return;
        }
        let failed: Vec<ClientKey> = self
            .clients
            .iter_mut()
            .filter(|(_, entry)| {
                entry.target.is_reliable()
                    && entry.target.is_secure() == secure
                    && entry.target.address() == address
            })
            .filter_map(|(key, entry)| entry.machine.handle_transport_error().then(|| key.clone()))
            .collect();
        for key in failed {
            self.metrics.increment(Counter::SipTransportErrors);
            if let Some(entry) = self.clients.get(&key) {
                tracing::info!(%address, method = %key.method(), "TCP connection lost: request failed");
                let event = SipEvent::Response {
                    branch: key.branch().to_string(),
                    response: answers::connection_lost(&entry.request),
                };
                let owner = entry.owner.clone();
                self.deliver(owner, event);
            }
            self.service_client(&key, false);
        }
    }

    fn count_reliable(&mut self, target: Target, delta: isize) {
        if !target.is_reliable() {
            return;
        }
        let count = self.reliable_clients.entry(target.address()).or_insert(0);
        *count = count.saturating_add_signed(delta);
        if *count == 0 {
            self.reliable_clients.remove(&target.address());
        }
    }
}

mod inbound;
mod service;
#[cfg(test)]
mod tests;
