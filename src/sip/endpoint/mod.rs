//! The endpoint: one task that joins the transport, the transaction machines and the call layer.
//!
//! It owns every transaction (RFC 3261 §17) in two tables, looks up each inbound message by the
//! key [`transaction::matching`](super::transaction::matching) gives it (§17.1.3 for responses,
//! §17.2.3 for requests, §8.2.2.2 merged requests, RFC 6026 ACK for 2xx), runs the machines'
//! timers from one deadline heap, and passes what the machines let through to the owner of the
//! transaction (a call task) or, for a new request, to the [`Dispatcher`] (the call layer) which
//! decides what to do with it.
//!
//! Beyond the machines it carries out the §8.2 / §18 duties that belong below the call model,
//! deciding when and sending through the transport, while the pure parts live in
//! [`transaction`](super::transaction): stamping the top Via and choosing where responses go
//! ([`transaction::via`](super::transaction::via), RFC 3581, §18.2.2), and the answers it gives
//! on its own ([`transaction::answers`](super::transaction::answers): 100 Trying, 200/481 to
//! CANCEL (§9.2), 420, 481 for unknown dialogs, 482, 503 + Retry-After, 401/403). Requests the
//! parser rejected get their 400/416/501/505 here too.
//!
//! `mod.rs` holds the owners' channels, the handle, the builder, the loop and commands;
//! `inbound.rs` the inbound path (matching, local answers, new requests); `service.rs` the
//! timers and what a machine asks for.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use dashmap::DashMap;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::guard::{DropReason, Guard, Verdict};
use super::message::{self, Message, Method, ParseError, Request, Response};
use super::overload::OverloadDetector;
use super::target::{Flow, Target};
use super::transaction::either::{ClientTransaction, ServerTransaction};
use super::transaction::matching::{self, AcceptedKey, ClientKey, MergeKey, ServerKey};
use super::transaction::via::{request_response_target, response_target, stamp_via};
use super::transaction::{
    answers, DialogKey, Event as MachineEvent, ResponseAction, ServerTransactionId, SipEvent,
    TimerConfig,
};
use super::transport::{Inbound, Transport, TransportEvent};
use crate::metrics::{Counter, Gauge, Metrics};
use crate::routing::Router;

/// The driver's clock, read from tokio's so that a test on `tokio::time::pause()`d time moves
/// the endpoint's timers with `tokio::time::advance`; the machines below get it as a plain
/// `std` `Instant` and never read a clock themselves.
fn driver_now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// Events a peer's traffic can multiply (requests in a dialog, provisional responses) that
/// may wait unread in one owner's inbox; beyond, requests get 503 and provisional responses
/// are dropped, so a peer flooding a dialog costs bounded memory. Final responses, timeouts,
/// ACKs and CANCELs, one per transaction, always get through.
pub const MAX_UNREAD: usize = 256;

/// Where an owner's events go. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Owner {
    events: mpsc::UnboundedSender<SipEvent>,
    unread: Arc<std::sync::atomic::AtomicUsize>,
}

/// The owner's end: its events in order.
#[derive(Debug)]
pub struct Inbox {
    events: mpsc::UnboundedReceiver<SipEvent>,
    unread: Arc<std::sync::atomic::AtomicUsize>,
}

/// A new owner's channel.
pub fn owner_channel() -> (Owner, Inbox) {
    let (events, receiver) = mpsc::unbounded_channel();
    let unread = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    (
        Owner {
            events,
            unread: Arc::clone(&unread),
        },
        Inbox {
            events: receiver,
            unread,
        },
    )
}

/// Whether a peer's traffic can repeat `event` without bound.
fn multipliable(event: &SipEvent) -> bool {
    match event {
        SipEvent::Request { .. } => true,
        SipEvent::Response { response, .. } => response.status < 200,
        _ => false,
    }
}

impl Owner {
    /// Hands `event` to the owner.
    ///
    /// # Errors
    /// The event back when the owner is gone, or when it is one a peer can multiply and
    /// [`MAX_UNREAD`] such wait unread.
    pub fn send(&self, event: SipEvent) -> Result<(), Box<SipEvent>> {
        use std::sync::atomic::Ordering;
        let counted = multipliable(&event);
        if counted && self.unread.fetch_add(1, Ordering::Relaxed) >= MAX_UNREAD {
            self.unread.fetch_sub(1, Ordering::Relaxed);
            return Err(Box::new(event));
        }
        self.events.send(event).map_err(|returned| {
            if counted {
                self.unread.fetch_sub(1, Ordering::Relaxed);
            }
            Box::new(returned.0)
        })
    }
}

impl Inbox {
    /// The next event; None once every owner handle is gone.
    pub async fn recv(&mut self) -> Option<SipEvent> {
        let event = self.events.recv().await?;
        if multipliable(&event) {
            self.unread
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }
        Some(event)
    }
}

/// The call layer's answer to a request that opens no known dialog.
pub enum Disposition {
    /// Answer with this response (the dispatcher built it: 403, 404, 503, 200 for OPTIONS, ...).
    Respond(Response),
    /// The owner takes the transaction; it receives the request as [`SipEvent::Request`].
    Accept(Owner),
}

/// The call layer, as the endpoint sees it.
pub trait Dispatcher: Send + Sync + 'static {
    /// A request that is no retransmission and belongs to no known dialog.
    fn new_request(
        &self,
        request: &Request,
        server: ServerTransactionId,
        source: SocketAddr,
        flow: Flow,
    ) -> Disposition;
}

/// What call tasks ask of the endpoint.
#[derive(Debug)]
pub enum Command {
    /// Start a client transaction (or, for ACK, send statelessly). The request must carry a
    /// top Via with a unique branch (the call model writes it, see
    /// [`via_for`](super::transaction::via_for)).
    SendRequest {
        request: Request,
        /// `request` serialised by the sender, so the endpoint's task does not.
        bytes: Bytes,
        target: Target,
        owner: Owner,
    },
    /// Send a response through a server transaction.
    SendResponse {
        server: ServerTransactionId,
        response: Response,
        bytes: Bytes,
    },
    /// Answered when the endpoint's loop reads it (`/healthz`: a round trip through the loop).
    Ping(tokio::sync::oneshot::Sender<()>),
}

/// The cloneable handle call tasks hold.
#[derive(Clone)]
pub struct EndpointHandle {
    commands: mpsc::UnboundedSender<Command>,
    dialogs: Arc<DashMap<DialogKey, Owner>>,
    local: SocketAddr,
}

impl EndpointHandle {
    pub fn send(&self, command: Command) {
        // Only fails when the endpoint is gone (shutdown): nothing left to send through.
        let _ = self.commands.send(command);
    }

    /// Resolves once the endpoint's loop has read this (an error if the loop has ended).
    pub fn ping(&self) -> tokio::sync::oneshot::Receiver<()> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.send(Command::Ping(reply));
        answer
    }

    /// Starts a client transaction; serialises here, on the caller's task.
    pub fn send_request(&self, request: Request, target: Target, owner: Owner) {
        let bytes = request.to_bytes();
        self.send(Command::SendRequest {
            request,
            bytes,
            target,
            owner,
        });
    }

    /// Sends a response through a server transaction; serialises on the caller's task.
    pub fn send_response(&self, server: ServerTransactionId, response: Response) {
        let bytes = response.to_bytes();
        self.send(Command::SendResponse {
            server,
            response,
            bytes,
        });
    }

    /// Routes in-dialog requests for `key` to `owner`.
    pub fn register_dialog(&self, key: DialogKey, owner: Owner) {
        self.dialogs.insert(key, owner);
    }

    pub fn unregister_dialog(&self, key: &DialogKey) {
        self.dialogs.remove(key);
    }

    /// The address written into Via and Contact.
    pub fn local_address(&self) -> SocketAddr {
        self.local
    }
}

struct ClientEntry {
    machine: ClientTransaction,
    request: Request,
    target: Target,
    owner: Owner,
    /// The deadline this entry has in the heap, so each entry is in it at most once or twice.
    armed: Option<Instant>,
}

struct ServerEntry {
    id: ServerTransactionId,
    machine: ServerTransaction,
    response_target: Target,
    owner: Option<Owner>,
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

/// The endpoint's state; [`Endpoint::run`] drives it.
pub struct Endpoint {
    transport: Transport,
    timers: TimerConfig,
    dispatcher: Arc<dyn Dispatcher>,
    dialogs: Arc<DashMap<DialogKey, Owner>>,
    metrics: Arc<Metrics>,
    clients: HashMap<ClientKey, ClientEntry>,
    servers: HashMap<ServerKey, ServerEntry>,
    server_keys: HashMap<ServerTransactionId, ServerKey>,
    merged: HashMap<MergeKey, String>,
    accepted: HashMap<AcceptedKey, ServerKey>,
    deadlines: BinaryHeap<Reverse<(Instant, TimerOwner)>>,
    next_server: u64,
    overload: OverloadDetector,
    /// Who may talk to us ([`Endpoint::with_guard`]).
    guard: Option<(Guard, Arc<Router>)>,
    /// Option tags a request may Require (§8.2.2.3); anything else gets 420.
    supported: Vec<&'static str>,
    /// Server transactions beyond which new out-of-dialog requests get 503.
    max_transactions: usize,
    /// Digest authentication of peers that have credentials ([`Endpoint::with_auth`]).
    auth: Option<super::auth::Digest>,
    /// Client transactions over TCP/TLS per peer address: a lost connection to an address
    /// with none costs no scan (strangers' connections come and go).
    reliable_clients: HashMap<SocketAddr, usize>,
    /// When the tables were last fitted to their contents ([`Endpoint::shrink_tables`]).
    last_shrink: Instant,
    /// Both transaction tables were empty at the last timer (fitted then, not again).
    was_idle: bool,
}

/// How often the transaction tables are fitted to their contents (at once when they empty).
const SHRINK_EVERY: Duration = Duration::from_secs(10);

/// Gives back most of a table's room once it is less than a quarter full: a hash table keeps
/// the capacity of its busiest moment, and ours hold transactions inline (600-700 bytes
/// each), so after a peak of 100,000 the empty tables alone held about 170 MB.
fn shrink_sparse<K: std::hash::Hash + Eq, V>(table: &mut HashMap<K, V>) {
    if table.capacity() > 64 && table.len() * 4 < table.capacity() {
        table.shrink_to(table.len() * 2);
    }
}

impl Endpoint {
    /// Creates the endpoint and the handle call tasks use.
    pub fn new(
        transport: Transport,
        timers: TimerConfig,
        dispatcher: Arc<dyn Dispatcher>,
        metrics: Arc<Metrics>,
        public_address: SocketAddr,
    ) -> (Endpoint, EndpointHandle, mpsc::UnboundedReceiver<Command>) {
        let (commands, command_queue) = mpsc::unbounded_channel();
        let dialogs = Arc::new(DashMap::new());
        let handle = EndpointHandle {
            commands,
            dialogs: Arc::clone(&dialogs),
            local: public_address,
        };
        let endpoint = Endpoint {
            transport,
            timers,
            dispatcher,
            dialogs,
            metrics,
            clients: HashMap::new(),
            servers: HashMap::new(),
            server_keys: HashMap::new(),
            merged: HashMap::new(),
            accepted: HashMap::new(),
            deadlines: BinaryHeap::new(),
            next_server: 1,
            overload: OverloadDetector::new(Duration::MAX),
            guard: None,
            supported: Vec::new(),
            max_transactions: usize::MAX,
            auth: None,
            reliable_clients: HashMap::new(),
            last_shrink: driver_now(),
            was_idle: true,
        };
        (endpoint, handle, command_queue)
    }

    /// Overload control: while the inbound queue stands above `delay` (see [`OverloadDetector`]),
    /// new INVITEs that waited longer than it are answered 503 + Retry-After statelessly
    /// ([`answers::overloaded`]). Off unless set.
    #[must_use]
    pub fn with_overload_delay(mut self, delay: Duration) -> Endpoint {
        self.overload = OverloadDetector::new(delay);
        self
    }

    /// The option tags requests may Require (`timer` with session timers on); a request
    /// requiring any other gets 420 Bad Extension with Unsupported (§8.2.2.3).
    #[must_use]
    pub fn with_supported(mut self, tags: &[&'static str]) -> Endpoint {
        self.supported = tags.to_vec();
        self
    }

    /// At most `max` server transactions: beyond, new requests outside dialogs get a
    /// stateless 503 + Retry-After, while requests in dialogs (BYE, re-INVITE) still get
    /// theirs, so calls in progress end cleanly. Unlimited unless set.
    #[must_use]
    pub fn with_max_transactions(mut self, max: usize) -> Endpoint {
        self.max_transactions = max;
        self
    }

    /// Requests from peers with credentials (`[[peer]] auth_username`) must prove them
    /// (needs the guard, which knows the peers).
    #[must_use]
    pub fn with_auth(mut self, digest: super::auth::Digest) -> Endpoint {
        self.auth = Some(digest);
        self
    }

    /// Puts the guard in front of every inbound request: strangers refused or dropped, floods
    /// banned ([`super::guard`]). Without it every source reaches the dispatcher.
    #[must_use]
    pub fn with_guard(mut self, guard: Guard, router: Arc<Router>) -> Endpoint {
        self.transport.bans().know_peers(Arc::clone(&router));
        self.guard = Some((guard, router));
        self
    }

    /// The guard's verdict on a request (or malformed message, `request` None) from `source`:
    /// true if it may go on. Refusals are answered or dropped here.
    fn admit(
        &mut self,
        now: Instant,
        request: Option<&Request>,
        source: SocketAddr,
        flow: Flow,
    ) -> bool {
        let Some((guard, router)) = self.guard.as_mut() else {
            return true;
        };
        let is_peer = router.peer_for_source(source).is_some();
        let user_agent = request.and_then(|r| r.headers.get("User-Agent"));
        let verdict = guard.check(now, source.ip(), is_peer, user_agent);
        if let Some(ban) = guard.take_ban() {
            self.metrics.increment(Counter::SipBans);
            self.transport.bans().ban(ban.source, ban.until);
            tracing::warn!(source = %ban.source, "source banned for flooding");
        }
        match verdict {
            Verdict::Pass => true,
            Verdict::Reject => {
                self.metrics.increment(Counter::SipRejectedUnknownPeer);
                if let Some(request) = request.filter(|r| r.method != Method::Ack) {
                    tracing::info!(%source, method = %request.method, "request from an address that is no peer");
                    let mut request = request.clone();
                    stamp_via(&mut request.headers, source);
                    let response = answers::stranger_refused(&request);
                    let target = request_response_target(&request, source, flow);
                    self.transport.send(target, response.to_bytes());
                }
                false
            }
            Verdict::Drop(reason) => {
                let counter = match reason {
                    DropReason::Scanner => Counter::SipDroppedScanner,
                    DropReason::Banned => Counter::SipDroppedBanned,
                    DropReason::Unknown | DropReason::Full => Counter::SipDroppedUnknown,
                };
                self.metrics.increment(counter);
                false
            }
        }
    }
    /// Runs until `stop` is cancelled.
    pub async fn run(
        mut self,
        mut inbound: mpsc::Receiver<TransportEvent>,
        mut commands: mpsc::UnboundedReceiver<Command>,
        stop: CancellationToken,
    ) {
        loop {
            let next = self.deadlines.peek().map(|Reverse((at, _))| *at);
            let sleep = async {
                match next {
                    Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                command = commands.recv() => match command {
                    Some(command) => self.handle_command(driver_now(), command),
                    None => return,
                },
                item = inbound.recv() => match item {
                    Some(TransportEvent::Inbound(item)) => self.handle_inbound(driver_now(), item),
                    Some(TransportEvent::ConnectionLost { address, secure }) => {
                        self.connection_lost(driver_now(), address, secure);
                    }
                    None => return,
                },
                _ = sleep => self.handle_timers(driver_now()),
                // Cancelled by the gateway once calls have ended (their BYEs answered).
                _ = stop.cancelled() => return,
            }
        }
    }

    /// A TCP connection to `address` failed: requests sent over it and still unanswered get a
    /// 503 at once (§8.1.3.1) instead of waiting for Timer B/F, so a call fails over or ends
    /// now rather than 32 s later.
    fn connection_lost(&mut self, now: Instant, address: SocketAddr, secure: bool) {
        if self.reliable_clients.get(&address).copied().unwrap_or(0) == 0 {
            return;
        }
        if self.transport.is_connected(address, secure) {
            // A newer connection to the peer is up (the lost one was an older or a failed
            // attempt): requests in flight went, or go, over that one.
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
                let response = answers::connection_lost(&entry.request);
                let _ = entry.owner.send(SipEvent::Response {
                    branch: key.branch().to_string(),
                    response,
                });
            }
            self.service_client(now, &key, false);
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

    fn handle_command(&mut self, now: Instant, command: Command) {
        match command {
            Command::SendRequest {
                request,
                bytes,
                target,
                owner,
            } => self.start_client(now, request, bytes, target, owner),
            Command::SendResponse {
                server,
                response,
                bytes,
            } => self.respond_with(now, server, &response, bytes),
            Command::Ping(reply) => {
                let _ = reply.send(());
            }
        }
    }

    fn start_client(
        &mut self,
        now: Instant,
        request: Request,
        bytes: Bytes,
        target: Target,
        owner: Owner,
    ) {
        if request.method == Method::Ack {
            self.transport.send(target, bytes);
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
        let replaced = self.clients.insert(
            key.clone(),
            ClientEntry {
                machine,
                request,
                target,
                owner,
                armed: None,
            },
        );
        if let Some(old) = replaced {
            self.count_reliable(old.target, -1);
            self.metrics.add_gauge(Gauge::TransactionsActive, -1);
        }
        self.service_client(now, &key, false);
    }

    fn respond(&mut self, now: Instant, server: ServerTransactionId, response: Response) {
        let bytes = response.to_bytes();
        self.respond_with(now, server, &response, bytes);
    }

    fn respond_with(
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
                    // Retransmissions are answered from here on (Timer J): no call needed.
                    entry.owner = None;
                }
            }
        }
        self.service_server(now, &key, false);
    }
}

/// The fault tests' probe ([`crate::faults`]; nothing in a release build).
fn inject_faults(request: &Request) {
    use crate::faults::{injected, Fault};
    let probe = request.method == Method::Options && request.uri.user.as_deref() == Some("fault");
    if probe && injected(Fault::EndpointPanic) {
        panic!("injected fault: the endpoint's loop panics");
    }
    if probe && injected(Fault::EndpointStall) {
        let stall = || std::thread::sleep(Duration::from_secs(30));
        // The loop's thread blocks, as a loop stuck in a computation would; block_in_place
        // first hands the thread's other tasks (the HTTP server's among them, which could
        // sit in its LIFO slot, where no other worker steals from) to the rest of the runtime.
        match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
            Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(stall),
            _ => stall(),
        }
    }
}

mod inbound;
mod service;
#[cfg(test)]
mod tests;
