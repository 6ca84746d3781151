//! The endpoint: the loop that feeds the transaction layer sockets and time.
//!
//! The layer ([`TransactionLayer`], sans-IO) owns every transaction (RFC 3261 §17), matches
//! each inbound message to one, runs their timers and gives the answers that belong below the
//! call model (100 Trying, CANCEL's 200/481, 420, 481, 482, 401/403, the stateless 503). The
//! endpoint reads the transport, stamps the clock, puts the [`Guard`] in front of every
//! request, and carries out what the layer asks: bytes to the transport, events to the owner
//! of a transaction or dialog (a call task), new requests to the [`Dispatcher`] (the call
//! layer), which answers or takes them.
//!
//! `mod.rs` holds the owners' channels, the handle, the builder, the loop, commands and what
//! the layer hands up; `inbound.rs` the inbound path (the guard, then the layer).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use dashmap::DashMap;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::guard::{DropReason, Guard, Verdict};
use super::message::{Message, Method, ParseError, Request, Response};
use super::target::{Flow, Target};
use super::transaction::layer::{Dialogs, LayerEvent, TransactionLayer};
use super::transaction::via::{request_response_target, stamp_via};
use super::transaction::{answers, DialogKey, ServerTransactionId, SipEvent, TimerConfig};
use super::transport::{Inbound, Transport, TransportEvent};
use crate::metrics::{Counter, Metrics};
use crate::routing::Router;

/// The driver's clock, read from tokio's so that a test on `tokio::time::pause()`d time moves
/// the endpoint's timers with `tokio::time::advance`; the layer below gets it as a plain
/// `std` `Instant` and never reads a clock itself.
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
    /// The call it is (its first leg's Call-ID), for the HEP copies of the legs it opens.
    correlation: Option<Arc<crate::sip::hep::CallTag>>,
}

impl Owner {
    /// The owner of the call whose first leg is `call_id`: the requests it sends on other
    /// legs go to Homer under that id ([`crate::sip::hep::Correlations`]).
    #[must_use]
    pub fn of_call(mut self, call_id: &str) -> Owner {
        self.correlation = Some(crate::sip::hep::CallTag::new(call_id));
        self
    }
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
            correlation: None,
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
        Some(self.taken(event))
    }

    /// The next event if one is waiting now.
    pub fn try_recv(&mut self) -> Option<SipEvent> {
        let event = self.events.try_recv().ok()?;
        Some(self.taken(event))
    }

    fn taken(&self, event: SipEvent) -> SipEvent {
        if multipliable(&event) {
            self.unread
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }
        event
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

impl Dialogs<Owner> for DashMap<DialogKey, Owner> {
    fn owner(&self, key: &DialogKey) -> Option<Owner> {
        self.get(key).map(|owner| owner.clone())
    }

    fn contains(&self, key: &DialogKey) -> bool {
        self.contains_key(key)
    }
}

/// What woke the endpoint's loop.
enum Wake {
    Command(Option<Command>),
    Transport(Option<TransportEvent>),
    Timer,
}

/// The endpoint's state; [`Endpoint::run`] drives it.
pub struct Endpoint {
    transport: Transport,
    layer: TransactionLayer<Owner>,
    dispatcher: Arc<dyn Dispatcher>,
    dialogs: Arc<DashMap<DialogKey, Owner>>,
    metrics: Arc<Metrics>,
    /// Who may talk to us ([`Endpoint::with_guard`]).
    guard: Option<(Guard, Arc<Router>)>,
    /// With `[hep]`: the legs each call opens, linked to it as their first request goes.
    correlations: Option<Arc<crate::sip::hep::Correlations>>,
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
        let layer = TransactionLayer::new(driver_now(), timers, Arc::clone(&metrics));
        let endpoint = Endpoint {
            correlations: transport.hep_correlations(),
            transport,
            layer,
            dispatcher,
            dialogs,
            metrics,
            guard: None,
        };
        (endpoint, handle, command_queue)
    }

    /// Overload control: while the inbound queue stands above `delay` (see
    /// [`OverloadDetector`](crate::sip::overload::OverloadDetector)),
    /// new INVITEs that waited longer than it are answered 503 + Retry-After statelessly
    /// ([`answers::overloaded`]). Off unless set.
    #[must_use]
    pub fn with_overload_delay(mut self, delay: Duration) -> Endpoint {
        self.layer = self.layer.with_overload_delay(delay);
        self
    }

    /// Calls overload control never sheds ([`crate::sip::overload::Priority`]).
    #[must_use]
    pub fn with_priority(mut self, priority: Arc<dyn crate::sip::overload::Priority>) -> Endpoint {
        self.layer = self.layer.with_priority(priority);
        self
    }

    /// The option tags requests may Require (`timer` with session timers on); a request
    /// requiring any other gets 420 Bad Extension with Unsupported (§8.2.2.3).
    #[must_use]
    pub fn with_supported(mut self, tags: &[&'static str]) -> Endpoint {
        self.layer = self.layer.with_supported(tags);
        self
    }

    /// At most `max` server transactions: beyond, new requests outside dialogs get a
    /// stateless 503 + Retry-After, while requests in dialogs (BYE, re-INVITE) still get
    /// theirs, so calls in progress end cleanly. Unlimited unless set.
    #[must_use]
    pub fn with_max_transactions(mut self, max: usize) -> Endpoint {
        self.layer = self.layer.with_max_transactions(max);
        self
    }

    /// Requests from peers with credentials (`[[peer]] auth_username`) must prove them
    /// (needs the guard, which knows the peers).
    #[must_use]
    pub fn with_auth(mut self, digest: super::auth::Digest) -> Endpoint {
        self.layer = self.layer.with_auth(digest);
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

    /// Runs until `stop` is cancelled.
    pub async fn run(
        mut self,
        mut inbound: mpsc::Receiver<TransportEvent>,
        mut commands: mpsc::UnboundedReceiver<Command>,
        stop: CancellationToken,
    ) {
        loop {
            let next = self.layer.poll_timeout();
            let sleep = async {
                match next {
                    Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
                    None => std::future::pending().await,
                }
            };
            let wake = tokio::select! {
                biased;
                command = commands.recv() => Wake::Command(command),
                item = inbound.recv() => Wake::Transport(item),
                _ = sleep => Wake::Timer,
                // Cancelled by the gateway once calls have ended (their BYEs answered).
                _ = stop.cancelled() => return,
            };
            // One reading of the clock per wake: what the layer asks next happens at the same
            // instant as the input that caused it.
            let now = driver_now();
            match wake {
                Wake::Command(Some(command)) => self.handle_command(now, command),
                Wake::Transport(Some(TransportEvent::Inbound(item))) => {
                    self.handle_inbound(now, item);
                }
                Wake::Transport(Some(TransportEvent::ConnectionLost { address, secure })) => {
                    self.connection_lost(address, secure);
                }
                Wake::Timer => self.handle_timeout(now),
                Wake::Command(None) | Wake::Transport(None) => return,
            }
            self.carry_out(now);
        }
    }

    /// A TCP connection to `address` failed: the layer fails what was sent over it, unless a
    /// newer connection to the peer is up (the lost one was an older or a failed attempt), so
    /// requests in flight went, or go, over that one.
    fn connection_lost(&mut self, address: SocketAddr, secure: bool) {
        if self.layer.has_reliable_clients(address) && !self.transport.is_connected(address, secure)
        {
            self.layer.handle_connection_lost(address, secure);
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
        if self.layer.handle_timeout(now)
            && self.dialogs.capacity() > 64
            && self.dialogs.len() * 4 < self.dialogs.capacity()
        {
            // The layer fitted its tables; the dialog directory, filled by the same load, too.
            self.dialogs.shrink_to_fit();
        }
    }

    fn handle_command(&mut self, now: Instant, command: Command) {
        match command {
            Command::SendRequest {
                request,
                bytes,
                target,
                owner,
            } => {
                // Linked before the request's copy is made.
                if let (Some(correlations), Some(call)) = (&self.correlations, &owner.correlation) {
                    correlations.link(request.call_id(), call);
                }
                self.layer.send_request(now, request, bytes, target, owner);
            }
            Command::SendResponse {
                server,
                response,
                bytes,
            } => self.layer.send_response(now, server, &response, bytes),
            Command::Ping(reply) => {
                let _ = reply.send(());
            }
        }
    }

    /// Does what the layer asks: bytes to the transport, events to their owners, new requests
    /// to the dispatcher (whose answers the layer may turn into more of both).
    fn carry_out(&mut self, now: Instant) {
        loop {
            if let Some(transmit) = self.layer.poll_transmit() {
                self.transport.send(transmit.target, transmit.bytes);
            } else if let Some(event) = self.layer.poll_event() {
                self.hand_up(now, event);
            } else {
                return;
            }
        }
    }

    fn hand_up(&mut self, now: Instant, event: LayerEvent<Owner>) {
        match event {
            LayerEvent::Deliver { owner, event } => {
                if let Err(SipEvent::Request {
                    server, request, ..
                }) = owner.send(event).map_err(|e| *e)
                {
                    // The call has MAX_UNREAD of the peer's requests unread: try later.
                    self.layer.refuse_busy(now, server, &request);
                }
            }
            LayerEvent::NewRequest {
                server,
                request,
                source,
                flow,
            } => match self.dispatcher.new_request(&request, server, source, flow) {
                Disposition::Respond(response) => {
                    let bytes = response.to_bytes();
                    self.layer.send_response(now, server, &response, bytes);
                }
                Disposition::Accept(owner) => {
                    self.layer.accept(server, owner.clone());
                    let _ = owner.send(SipEvent::Request {
                        server,
                        request,
                        source,
                    });
                }
            },
        }
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
#[cfg(test)]
mod tests;
