//! The peer prober: an OPTIONS (RFC 3261 §11) to each peer with a probe interval, every
//! interval, as a client transaction of the SIP endpoint; the answers and silences go to the
//! peer's [`PeerHealth`] (sans-IO, in `routing`), and each change it finds is applied here:
//! the peer's liveness flag (which the router reads), `hotline_peer_up{peer}`, a log line and a
//! `PEER_DOWN` / `PEER_UP` work-order event to every platform.
//!
//! One task for all probed peers, on tokio's clock (so paused test time moves it too); it
//! stops when the gateway shuts down.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::ids::IdGenerator;
use crate::metrics::Metrics;
use crate::routing::health::{Change, PeerHealth};
use crate::routing::{Peer, Router};
use crate::sip::endpoint::{owner_channel, EndpointHandle};
use crate::sip::message::{Headers, Host, Method, NameAddr, Request, Uri};
use crate::sip::target::{LocalAddresses, Target};
use crate::sip::transaction::{via_for, SipEvent};
use crate::store::Changes;
use crate::workorder::hub::EventHub;
use crate::workorder::{CallEvent, EventKind, LegInfo};

/// Peer events that may wait for the store; beyond, one is dropped (and logged). Changes come
/// at most once per probe interval per peer, so this is never reached while the store writes.
const EVENT_QUEUE: usize = 64;

/// What the prober needs of the gateway.
pub struct ProberServices {
    pub endpoint: EndpointHandle,
    /// Our SIP address on each interface (Via, Contact).
    pub local: LocalAddresses,
    pub metrics: Arc<Metrics>,
    pub events: Arc<EventHub>,
    /// Every `[[platform]]`: each hears of every peer's changes.
    pub platforms: Vec<String>,
    pub ids: IdGenerator,
}

/// One probed peer: its health and its probe under way.
struct Probed {
    peer: Arc<Peer>,
    health: PeerHealth,
    /// The branch of the probe under way (until its final answer or timeout): only its
    /// answer counts.
    branch: Option<String>,
}

/// The driver's clock, read from tokio's (as the endpoint's).
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// Probes every peer of `router` with a probe interval until `shutdown`; returns at once when
/// none has one.
pub async fn run(router: Arc<Router>, mut services: ProberServices, shutdown: CancellationToken) {
    let start = now();
    let mut probed: Vec<Probed> = router
        .peers()
        .iter()
        .filter_map(|peer| {
            let interval = peer.probe_interval?;
            services.metrics.set_peer_up(&peer.name, peer.is_up());
            Some(Probed {
                peer: Arc::clone(peer),
                health: PeerHealth::new(start, interval),
                branch: None,
            })
        })
        .collect();
    if probed.is_empty() {
        return;
    }
    let (publish, queue) = mpsc::channel(EVENT_QUEUE);
    let publisher = tokio::spawn(publish_events(Arc::clone(&services.events), queue));
    let (owner, mut inbox) = owner_channel();
    loop {
        // Answers already in count before the deadlines they came in time for.
        while let Some(event) = inbox.try_recv() {
            handle_event(&services, &publish, &mut probed, event);
        }
        let at = now();
        for probe in &mut probed {
            if let Some(change) = probe.health.handle_timeout(at) {
                apply(&services, &publish, probe, change);
            }
            // One probe at a time: while the last is unanswered (a dead desk), its own
            // retransmissions (§17.1.2.2) stand for the next ones, so a silent peer has one
            // transaction, not one per interval until Timer F; it has been scored as missed.
            if probe.health.poll_probe() && probe.branch.is_none() {
                let (request, target) = probe.next_request(&mut services);
                services
                    .endpoint
                    .send_request(request, target, owner.clone());
            }
        }
        let next = probed
            .iter()
            .map(|p| p.health.poll_timeout())
            .min()
            .unwrap_or(at);
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep_until(tokio::time::Instant::from_std(next)) => {}
            event = inbox.recv() => {
                let Some(event) = event else { break };
                handle_event(&services, &publish, &mut probed, event);
            }
        }
    }
    drop(publish);
    let _ = publisher.await;
}

/// A probe's answer or its transaction's timeout, to the peer whose probe under way it is.
fn handle_event(
    services: &ProberServices,
    publish: &mpsc::Sender<CallEvent>,
    probed: &mut [Probed],
    event: SipEvent,
) {
    let (branch, status) = match &event {
        SipEvent::Response { branch, response } if response.status >= 200 => {
            (branch, Some(response.status))
        }
        SipEvent::Timeout { branch, .. } => (branch, None),
        _ => return,
    };
    let Some(probe) = probed
        .iter_mut()
        .find(|p| p.branch.as_deref() == Some(branch.as_str()))
    else {
        // A late answer to an earlier probe: that one was counted as missed already.
        return;
    };
    probe.branch = None;
    let at = now();
    let change = match status {
        Some(status) => probe.health.handle_answer(at, status),
        None => probe.health.handle_no_answer(at),
    };
    if let Some(change) = change {
        apply(services, publish, probe, change);
    }
}

impl Probed {
    /// The next OPTIONS to the peer, outside any dialog (§11.1), and where it goes.
    fn next_request(&mut self, services: &mut ProberServices) -> (Request, Target) {
        let target = Target::for_peer(&self.peer);
        let branch = services.ids.branch();
        let local = services.local.for_target(target);
        let address = self.peer.address;
        let uri = Uri::sip(None, Host::Ip(address.ip()), Some(address.port()));
        let from = NameAddr::new(Uri::sip(
            Some("gateway"),
            Host::Ip(local.ip()),
            Some(local.port()),
        ))
        .with_tag(&services.ids.tag());
        let mut headers = Headers::new();
        headers.push("Via", via_for(local, target, &branch));
        headers.push("Max-Forwards", "70");
        headers.push("From", from.to_string());
        headers.push("To", NameAddr::new(uri.clone()).to_string());
        // §8.1.1.4: each request outside a dialog has a Call-ID of its own (only REGISTER
        // keeps one), so no peer takes the probes for a dialog.
        headers.push("Call-ID", services.ids.call_id("probe"));
        headers.push("CSeq", "1 OPTIONS");
        // §11.1: what the answer's body may be, were the peer to send one.
        headers.push("Accept", "application/sdp");
        self.branch = Some(branch);
        let request = Request {
            method: Method::Options,
            uri,
            headers,
            body: bytes::Bytes::new(),
        };
        (request, target)
    }
}

/// A change of `probe`'s peer: its flag, its gauge, the log and the platforms' event.
fn apply(
    services: &ProberServices,
    publish: &mpsc::Sender<CallEvent>,
    probe: &Probed,
    change: Change,
) {
    let peer = &probe.peer;
    let up = change == Change::Up;
    peer.set_up(up);
    services.metrics.set_peer_up(&peer.name, up);
    let reason = match change {
        Change::Down => {
            tracing::warn!(peer = %peer.name, address = %peer.address, "peer down: its OPTIONS probes go unanswered; routes skip it");
            "3 OPTIONS probes in a row unanswered (or answered 408 or 5xx)"
        }
        Change::Up => {
            tracing::info!(peer = %peer.name, address = %peer.address, "peer up again: it answers its OPTIONS probes");
            "2 OPTIONS probes in a row answered"
        }
    };
    let kind = if up {
        EventKind::PeerUp
    } else {
        EventKind::PeerDown
    };
    let mut event = CallEvent::new(kind, "", SystemTime::now());
    event.platforms = services.platforms.clone();
    event.target = Some(LegInfo {
        peer: peer.name.clone(),
        platform: peer.platform.clone(),
        number: String::new(),
    });
    event.reason = Some(reason.to_string());
    if publish.try_send(event).is_err() {
        tracing::warn!(peer = %peer.name, "peer event dropped: the store is not keeping up");
    }
}

/// Commits the peer events in the order they came, each on its own (no call step carries them).
async fn publish_events(events: Arc<EventHub>, mut queue: mpsc::Receiver<CallEvent>) {
    while let Some(event) = queue.recv().await {
        if let Err(error) = events.emit(&event, Changes::default(), None).await {
            tracing::error!(%error, "peer event not written");
        }
    }
}
