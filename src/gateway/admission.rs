//! Admission of new requests: who may call (403), what they may call (404), whether we have room
//! (503), and for an admitted INVITE a new call with its media and its task.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use super::driver::{self, driver_now, CallServices};
use crate::call::model::{Call, CallSettings, NewCall, ALLOW};
use crate::ids::IdGenerator;
use crate::media::ports::PortPools;
use crate::media::relay;
use crate::metrics::{Counter, Gauge, Metrics};
use crate::routing::Router;
use crate::sip::endpoint::{Dispatcher, Disposition};
use crate::sip::message::{Method, Request, Response};
use crate::sip::target::{Flow, InterfaceId};
use crate::sip::transaction::ServerTransactionId;
use crate::store::{unix_millis, CallRecord, CallStart, Changes};
use crate::workorder::{CallEvent, EventKind, LegInfo};

use crate::call::screening::{Screen, Screening};
use crate::call::transfer::CallerIdentity;
use crate::sip::guard::TokenBucket;

/// What the calls' media come from.
pub struct MediaResources {
    /// Each interface's ports.
    pub ports: Arc<PortPools>,
    pub engine: relay::MediaEngine,
    /// An answered call with no media on either leg this long is ended.
    pub inactivity: Duration,
}

/// The dispatcher behind the endpoint.
pub struct CallManager {
    router: Arc<Router>,
    settings: Arc<CallSettings>,
    media: MediaResources,
    metrics: Arc<Metrics>,
    services: OnceLock<CallServices>,
    ids: Mutex<IdGenerator>,
    max_calls: usize,
    active: Arc<AtomicUsize>,
    screening: Mutex<Screening>,
    /// Per peer with `max_calls_per_sec`: its bucket of new calls.
    call_rates: Mutex<std::collections::HashMap<String, TokenBucket>>,
    /// Blocked callers whose refusal waits for its record and event: beyond, 503 at once.
    blocked_in_flight: Arc<tokio::sync::Semaphore>,
    /// The calls and ports kept for the reserved platforms (the lane kept for 110).
    reserve: Option<Arc<super::reserve::Reserve>>,
}

/// Most blocked callers' refusals waiting for the store at once.
const BLOCKED_IN_FLIGHT: usize = 1024;

impl CallManager {
    pub fn new(
        router: Arc<Router>,
        settings: Arc<CallSettings>,
        media: MediaResources,
        metrics: Arc<Metrics>,
        ids: IdGenerator,
        max_calls: usize,
    ) -> CallManager {
        CallManager {
            router,
            settings,
            media,
            metrics,
            services: OnceLock::new(),
            ids: Mutex::new(ids),
            max_calls,
            active: Arc::new(AtomicUsize::new(0)),
            screening: Mutex::new(Screening::new(Vec::new(), 603, 0, Duration::ZERO)),
            call_rates: Mutex::new(std::collections::HashMap::new()),
            blocked_in_flight: Arc::new(tokio::sync::Semaphore::new(BLOCKED_IN_FLIGHT)),
            reserve: None,
        }
    }

    /// Keeps `reserve`'s calls and ports for its platforms' calls.
    pub fn with_reserve(mut self, reserve: Arc<super::reserve::Reserve>) -> CallManager {
        self.metrics
            .set_gauge(Gauge::ReservedCalls, reserve.calls() as i64);
        self.reserve = Some(reserve);
        self
    }

    /// Screens new calls with `screening` (blocklist, repeat callers).
    #[must_use]
    pub fn with_screening(mut self, screening: Screening) -> CallManager {
        self.screening = Mutex::new(screening);
        self
    }

    /// Completes construction once the endpoint exists (the endpoint needs the dispatcher and
    /// calls need the endpoint).
    pub fn attach(&self, services: CallServices) {
        let _ = self.services.set(services);
    }

    /// Counts a call `caller` made to another node of the cluster (repeat callers).
    pub fn note_call_elsewhere(&self, caller: &str) {
        self.screening
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .note_elsewhere(driver_now(), caller);
        self.metrics.increment(Counter::ClusterCallersNoted);
    }

    fn screening_window_minutes(&self) -> u64 {
        self.screening
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .window()
            .as_secs()
            / 60
    }

    fn next_ids(&self) -> IdGenerator {
        self.ids
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .fork()
    }

    fn reply(request: &Request, status: u16) -> Disposition {
        Disposition::Respond(Self::response(request, status))
    }

    fn response(request: &Request, status: u16) -> Response {
        let mut response = Response::for_request(request, status, Some("gw"));
        match status {
            200 | 405 => response.headers.push("Allow", ALLOW),
            503 => response.headers.push("Retry-After", "5"),
            _ => {}
        }
        if status == 200 {
            response.headers.push("Accept", "application/sdp");
        }
        response
    }

    /// A caller on the blocklist: the refusal is a call of its own (a gateway call id, a
    /// record), whose CALL_BLOCKED is committed before the refusal goes out; while too many
    /// refusals wait for the store (a flood of them), 503 at once, as for any overload.
    fn refuse_blocked(
        &self,
        request: &Request,
        server: ServerTransactionId,
        services: &CallServices,
        caller_peer: &crate::routing::Peer,
        route_platform: Option<String>,
        (presented, number, status): (String, String, u16),
    ) -> Disposition {
        let Ok(permit) = Arc::clone(&self.blocked_in_flight).try_acquire_owned() else {
            self.metrics.increment(Counter::CallsRefusedOverload);
            return Self::reply(request, 503);
        };
        let id = self.next_ids().call_key();
        let now = SystemTime::now();
        let record = CallRecord {
            ended_at: Some(unix_millis(now)),
            ended_by: Some("gateway".into()),
            end_reason: Some("blocklist".into()),
            final_status: Some(status),
            a_interface: self
                .router
                .interface_name(caller_peer.interface)
                .to_string(),
            ..CallRecord::started(CallStart {
                id: &id,
                a_call_id: request.call_id(),
                caller: &presented,
                called: &number,
                a_peer: &caller_peer.name,
                started_at: unix_millis(now),
            })
        };
        let mut event = CallEvent::new(EventKind::CallBlocked, &id, now);
        event.platforms = route_platform
            .into_iter()
            .chain(caller_peer.platform.clone())
            .collect();
        event.citizen_number = presented;
        event.called_number = number;
        event.caller_leg = LegInfo {
            peer: caller_peer.name.clone(),
            platform: caller_peer.platform.clone(),
            number: event.citizen_number.clone(),
        };
        event.sip_status = status;
        event.reason = Some("blocklist".into());
        let response = Self::response(request, status);
        let (owner, inbox) = crate::sip::endpoint::owner_channel();
        let (events, endpoint) = (Arc::clone(&services.events), services.endpoint.clone());
        // Tracked as a call: a gateway that stops waits for it.
        services.tracker.spawn(async move {
            // The transaction stays ours until the refusal goes; what it says meanwhile (a
            // retransmission, a CANCEL) changes nothing.
            let _inbox = inbox;
            let mut changes = Changes::default();
            changes.call_ended(record);
            if let Err(error) = events.emit(&event, changes, None).await {
                tracing::error!(%error, "blocked call's record and event not written");
            }
            endpoint.send_response(server, response);
            drop(permit);
        });
        Disposition::Accept(owner)
    }

    /// Takes a token from the peer's call-rate bucket (`max_calls_per_sec`); false when it is
    /// above its rate.
    fn within_call_rate(&self, caller_peer: &crate::routing::Peer) -> bool {
        let Some(rate) = caller_peer.max_calls_per_sec else {
            return true;
        };
        let allowed = self
            .call_rates
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(caller_peer.name.clone())
            .or_insert_with(|| TokenBucket::new(rate, rate))
            .take(driver_now());
        if !allowed {
            self.metrics.increment(Counter::CallsRefusedRate);
            tracing::debug!(peer = %caller_peer.name, rate, "peer above its call rate");
        }
        allowed
    }

    /// Two legs' ports, each on its leg's interface (leg A's where the INVITE came in, leg
    /// B's the route's), and their relay, with the call's id generator and key; `None` (the
    /// call refused with 503) when ports, descriptors or the relay run short.
    /// `kept`: the port pairs to leave in each pool (the reserve's, for a call outside it).
    fn relay_for_call(
        &self,
        [interface_a, interface_b]: [InterfaceId; 2],
        kept: usize,
    ) -> Option<(IdGenerator, String, [SocketAddr; 2], relay::RelayHandle)> {
        let pools = &self.media.ports;
        let (leg_a, leg_b) = match (
            pools.of(usize::from(interface_a.0)).allocate_leaving(kept),
            pools.of(usize::from(interface_b.0)).allocate_leaving(kept),
        ) {
            (Ok(a), Ok(b)) => (a, b),
            (Err(shortage), _) | (_, Err(shortage)) => {
                tracing::warn!(%shortage, "call refused (503): overload");
                let counter = match shortage {
                    crate::media::ports::PortShortage::Reserved => Counter::CallsRefusedReserve,
                    _ => Counter::CallsRefusedOverload,
                };
                self.metrics.increment(counter);
                return None;
            }
        };
        let mut ids = self.next_ids();
        let id = ids.call_key();
        let media_a = leg_a.rtp_address();
        let media_b = leg_b.rtp_address();
        let relay = match self
            .media
            .engine
            .spawn([leg_a, leg_b], ids.fork(), self.media.inactivity)
        {
            Ok(relay) => relay,
            Err(error) => {
                let shortage = if crate::limits::is_out_of_descriptors(&error) {
                    self.metrics.increment(Counter::DescriptorsExhausted);
                    crate::media::ports::PortShortage::NoDescriptors.to_string()
                } else {
                    error.to_string()
                };
                tracing::warn!(%shortage, "call refused (503): its media cannot be relayed");
                self.metrics.increment(Counter::CallsRefusedOverload);
                return None;
            }
        };
        Some((ids, id, [media_a, media_b], relay))
    }

    fn new_call(
        &self,
        request: &Request,
        server: ServerTransactionId,
        source: SocketAddr,
        flow: Flow,
        caller_peer: Arc<crate::routing::Peer>,
    ) -> Disposition {
        let Some(services) = self.services.get() else {
            return Self::reply(request, 503);
        };
        if services.shutdown.is_cancelled() {
            return Self::reply(request, 503);
        }
        if request.max_forwards() == 0 {
            return Self::reply(request, 483);
        }
        let Some(number) = dialed_number(request, &caller_peer).filter(|n| !n.is_empty()) else {
            return Self::reply(request, 404);
        };
        // One reading of the clock for the whole decision (routes by time).
        let at = self.router.now_ms();
        let Some(route) = self.router.route_at(&number, at) else {
            tracing::info!(%number, peer = %caller_peer.name, "no route");
            return Self::reply(request, 404);
        };
        if let Some(why) = CallerIdentity::refused(request) {
            tracing::info!(peer = %caller_peer.name, why, "new call refused (400)");
            return Self::reply(request, 400);
        }
        let presented = CallerIdentity::of(request).number;
        let screen = self
            .screening
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .check(driver_now(), &presented);
        let flag = match screen {
            Screen::Clear => None,
            Screen::Blocked(status) => {
                self.metrics.increment(Counter::CallsBlocked);
                tracing::info!(caller = %presented, %number, status, "caller on the blocklist refused");
                return self.refuse_blocked(
                    request,
                    server,
                    services,
                    &caller_peer,
                    route.first().and_then(|p| p.platform.clone()),
                    (presented, number, status),
                );
            }
            Screen::Flagged { count } => {
                self.metrics.increment(Counter::CallsFlagged);
                tracing::info!(caller = %presented, count, "repeat caller flagged");
                Some(format!(
                    "repeat caller: {count} calls within {} minutes",
                    self.screening_window_minutes()
                ))
            }
        };
        let peers = self.router.available_at(&number, at).unwrap_or_default();
        if peers.is_empty() {
            // Every peer of the route is down: at once, not after each one's response timeout.
            self.metrics.increment(Counter::CallsRefusedPeersDown);
            tracing::info!(%number, peer = %caller_peer.name, "every peer of the route is down (503)");
            return Self::reply(request, 503);
        }
        if !self.within_call_rate(&caller_peer) {
            return Self::reply(request, 503);
        }
        // One slot per call, released by the call task's ActiveGuard; a call outside the
        // reserve leaves the reserved platforms theirs.
        let reserved = self
            .reserve
            .as_ref()
            .filter(|reserve| reserve.covers(&caller_peer, &peers));
        let (kept_calls, kept_ports) = match (&self.reserve, reserved) {
            (Some(reserve), None) => (reserve.calls(), reserve.port_pairs()),
            _ => (0, 0),
        };
        let active = self.active.load(Ordering::Relaxed);
        if active >= self.max_calls {
            self.metrics.increment(Counter::CallsRefusedOverload);
            return Self::reply(request, 503);
        }
        if active + kept_calls >= self.max_calls {
            self.metrics.increment(Counter::CallsRefusedReserve);
            tracing::info!(%number, active, kept_calls, "call refused (503): only the reserve is left");
            return Self::reply(request, 503);
        }
        // The route's peers share one interface (the configuration's checks).
        let interfaces = [
            flow.interface(),
            peers.first().map_or(InterfaceId::DEFAULT, |p| p.interface),
        ];
        let Some((ids, id, [media_a, media_b], relay)) =
            self.relay_for_call(interfaces, kept_ports)
        else {
            return Self::reply(request, 503);
        };
        let mut record = call_record(request, id.clone(), &number, &caller_peer.name);
        record.a_interface = self.router.interface_name(flow.interface()).to_string();
        let queue = self.router.queue_at(&number, at);
        let call = Call::new(
            driver_now(),
            Arc::clone(&self.settings),
            NewCall {
                id,
                invite: request.clone(),
                server,
                source,
                flow,
                caller_peer,
                number,
                route: peers,
                queue,
                media_a,
                media_b,
                ids,
            },
        );
        let (owner, inbox) = crate::sip::endpoint::owner_channel();
        // The call is its first leg's Call-ID, in Homer.
        let owner = owner.of_call(request.call_id());
        let active = Arc::clone(&self.active);
        active.fetch_add(1, Ordering::Relaxed);
        let reserved = reserved.is_some().then(|| {
            self.metrics.add_gauge(Gauge::ReservedCallsActive, 1);
            Arc::clone(&self.metrics)
        });
        let guard = ActiveGuard(active, reserved);
        driver::spawn(
            call,
            inbox,
            owner.clone(),
            relay,
            record,
            services.clone(),
            driver::Admission { guard, flag },
        );
        Disposition::Accept(owner)
    }
}

/// The number a new call dials: the Request-URI's user part; but a registrar forwards calls to
/// our registered contact (RFC 3261 §10, §16.5), whose user is the registration's, and keeps
/// the dialed number in To: from a peer we register at, an R-URI naming the registration user
/// is read from To's user part.
fn dialed_number(request: &Request, peer: &crate::routing::Peer) -> Option<String> {
    match &peer.registration {
        Some(registration) if request.uri.user.as_deref() == Some(registration.user.as_str()) => {
            request.to().and_then(|to| to.uri.number())
        }
        _ => request.uri.number(),
    }
}

/// The call's record as it starts: who called whom, through which peer, when.
fn call_record(request: &Request, id: String, number: &str, a_peer: &str) -> CallRecord {
    let caller = request
        .from()
        .and_then(|f| f.uri.number())
        .unwrap_or_default();
    CallRecord::started(CallStart {
        id: &id,
        a_call_id: request.call_id(),
        caller: &caller,
        called: number,
        a_peer,
        started_at: unix_millis(SystemTime::now()),
    })
}

/// Decrements the active-call count when the call task ends, however it ends (and the
/// reserved platforms' count, for one of their calls).
pub struct ActiveGuard(Arc<AtomicUsize>, Option<Arc<Metrics>>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
        if let Some(metrics) = &self.1 {
            metrics.add_gauge(Gauge::ReservedCallsActive, -1);
        }
    }
}

impl Dispatcher for CallManager {
    fn new_request(
        &self,
        request: &Request,
        server: ServerTransactionId,
        source: SocketAddr,
        flow: Flow,
    ) -> Disposition {
        let Some(peer) = self.router.attributed_peer(
            source,
            || request.headers.get(crate::routing::FRONT_SOURCE_HEADER),
            request.method == Method::Options,
        ) else {
            self.metrics.increment(Counter::SipRejectedUnknownPeer);
            let via_front = request.headers.get(crate::routing::FRONT_SOURCE_HEADER);
            tracing::info!(%source, ?via_front, method = %request.method, "request from an address that is no peer");
            return Self::reply(request, 403);
        };
        if peer.interface != flow.interface() {
            // A peer's address seen on another network is someone else there (private
            // address plans repeat across networks): a stranger.
            self.metrics.increment(Counter::SipRejectedUnknownPeer);
            tracing::info!(%source, peer = %peer.name, method = %request.method, interface = self.router.interface_name(flow.interface()), "request from a peer's address on another interface than the peer's");
            return Self::reply(request, 403);
        }
        match request.method {
            Method::Invite => self.new_call(request, server, source, flow, peer),
            Method::Options => Self::reply(request, 200),
            Method::Bye
            | Method::Cancel
            | Method::Info
            | Method::Update
            | Method::Refer
            | Method::Notify => Self::reply(request, 481),
            _ => Self::reply(request, 405),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::{Peer, Registration, TransportKind};
    use crate::sip::message::{parse, Message};

    fn invite(uri_user: &str, to_user: &str) -> Request {
        let text = format!(
            "INVITE sip:{uri_user}@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK1\r\n\
             From: <sip:13800138000@carrier>;tag=1\r\nTo: <sip:{to_user}@carrier>\r\nCall-ID: x\r\n\
             CSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
        );
        match parse(text.as_bytes()) {
            Ok(Message::Request(request)) => request,
            other => panic!("unparsed: {other:?}"),
        }
    }

    #[test]
    fn a_call_to_the_registered_contact_dials_the_to_user() {
        let address = "127.0.0.1:5070".parse().unwrap_or_else(|e| panic!("{e}"));
        let plain = Peer::new("carrier", address, None, TransportKind::Udp);
        let mut registering = plain.clone();
        registering.registration = Some(Registration {
            user: "gw".into(),
            domain: "carrier".into(),
            expires: Duration::from_secs(3600),
        });
        assert_eq!(
            dialed_number(&invite("gw", "12345"), &registering).as_deref(),
            Some("12345")
        );
        assert_eq!(
            dialed_number(&invite("110", "12345"), &registering).as_deref(),
            Some("110"),
            "another R-URI user is the dialed number"
        );
        assert_eq!(
            dialed_number(&invite("gw", "12345"), &plain).as_deref(),
            Some("gw"),
            "a peer we do not register at: the R-URI as ever"
        );
    }
}
