//! Outbound registration's I/O: one [`Registrant`] (sans-IO, in `sip::registration`) per peer
//! with `register = true`, its REGISTERs sent as client transactions of the SIP endpoint, the
//! answers and timeouts fed back, and each [`Event`] applied here: the peer's
//! `hotline_peer_registered{peer}` gauge and `hotline_peer_registrations_total` counters, and a
//! log line. At shutdown each binding is removed (`Expires: 0`) within [`UNREGISTER_GRACE`].
//!
//! One task for all registering peers, on tokio's clock (as the endpoint's); it is tracked with
//! the calls, so the endpoint still runs while the un-REGISTERs go out.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::ids::IdGenerator;
use crate::metrics::Metrics;
use crate::routing::{Peer, Router};
use crate::sip::endpoint::{owner_channel, EndpointHandle};
use crate::sip::registration::{Binding, Event, Registrant};
use crate::sip::target::{LocalAddresses, Target};
use crate::sip::transaction::SipEvent;

/// How long the un-REGISTERs get at shutdown (within the calls' grace, `shutdown.rs`).
const UNREGISTER_GRACE: Duration = Duration::from_secs(2);

/// What the registrar needs of the gateway.
pub struct RegistrarServices {
    pub endpoint: EndpointHandle,
    /// Our SIP address on each interface (Via, Contact).
    pub local: LocalAddresses,
    pub metrics: Arc<Metrics>,
    pub ids: IdGenerator,
}

/// One registering peer: its registration and the branch of the REGISTER under way.
struct Registering {
    peer: Arc<Peer>,
    registrant: Registrant,
    branch: Option<String>,
}

/// The driver's clock, read from tokio's (as the endpoint's).
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// Keeps every `register = true` peer of `router` registered until `shutdown`, then removes
/// the bindings; returns at once when no peer registers.
pub async fn run(
    router: Arc<Router>,
    mut services: RegistrarServices,
    shutdown: CancellationToken,
) {
    let start = now();
    let mut peers: Vec<Registering> = router
        .peers()
        .iter()
        .filter_map(|peer| {
            let registration = peer.registration.clone()?;
            let credentials = peer.outbound.clone()?;
            let target = Target::for_peer(peer);
            let local = services.local.for_target(target);
            let binding = Binding {
                registration,
                credentials,
                local,
                target,
                call_id: services.ids.call_id("register"),
                from_tag: services.ids.tag(),
            };
            services
                .metrics
                .set_peer_registered(&peer.name, false, None);
            Some(Registering {
                peer: Arc::clone(peer),
                registrant: Registrant::new(start, binding),
                branch: None,
            })
        })
        .collect();
    if peers.is_empty() {
        return;
    }
    let (owner, mut inbox) = owner_channel();
    let mut stopping: Option<Instant> = None;
    loop {
        let at = now();
        for registering in &mut peers {
            if let Some(event) = registering.registrant.handle_timeout(at) {
                apply(&services, registering, at, event);
            }
            let ids = &mut services.ids;
            let mut sent = None;
            let request = registering.registrant.poll_request(at, || {
                let branch = ids.branch();
                sent = Some(branch.clone());
                (branch, ids.cnonce())
            });
            if let Some(request) = request {
                let target = Target::for_peer(&registering.peer);
                registering.branch = sent;
                services
                    .endpoint
                    .send_request(request, target, owner.clone());
            }
        }
        if stopping.is_some() && peers.iter().all(|p| p.registrant.is_done()) {
            break;
        }
        let deadline = peers
            .iter()
            .filter_map(|p| p.registrant.poll_timeout())
            .chain(stopping)
            .min();
        let sleep = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = shutdown.cancelled(), if stopping.is_none() => {
                let at = now();
                stopping = Some(at + UNREGISTER_GRACE);
                for registering in &mut peers {
                    registering.registrant.unregister(at);
                }
            }
            _ = sleep => {
                if stopping.is_some_and(|end| now() >= end) {
                    tracing::warn!("un-REGISTER unanswered within the grace; stopping anyway");
                    break;
                }
            }
            event = inbox.recv() => {
                let Some(event) = event else { break };
                handle_event(&services, &mut peers, event);
            }
        }
    }
}

/// A REGISTER's final answer or its transaction's timeout, to the peer it was sent to.
fn handle_event(services: &RegistrarServices, peers: &mut [Registering], event: SipEvent) {
    let at = now();
    let (branch, found) = match &event {
        SipEvent::Response { branch, response } if response.status >= 200 => {
            (branch, Some(response))
        }
        SipEvent::Timeout { branch, .. } => (branch, None),
        _ => return,
    };
    let Some(registering) = peers
        .iter_mut()
        .find(|p| p.branch.as_deref() == Some(branch.as_str()))
    else {
        return;
    };
    registering.branch = None;
    let event = match found {
        Some(response) => registering.registrant.handle_response(at, branch, response),
        None => registering.registrant.handle_no_answer(at, branch),
    };
    if let Some(event) = event {
        apply(services, registering, at, event);
    }
}

/// An event of `registering`'s registration: its gauge, its counters and the log.
fn apply(services: &RegistrarServices, registering: &Registering, at: Instant, event: Event) {
    let peer = &registering.peer;
    let registered = registering.registrant.is_registered(at);
    let metrics = &services.metrics;
    match event {
        Event::Registered { expires, refresh } => {
            metrics.set_peer_registered(&peer.name, registered, Some(true));
            if refresh {
                tracing::debug!(peer = %peer.name, expires = expires.as_secs(), "registration refreshed");
            } else {
                tracing::info!(peer = %peer.name, address = %peer.address, expires = expires.as_secs(), "registered at the peer");
            }
        }
        Event::Failed { failure, retry_in } => {
            metrics.set_peer_registered(&peer.name, registered, Some(false));
            tracing::warn!(peer = %peer.name, address = %peer.address, retry_in = retry_in.as_secs(), still_registered = registered, "registration failed: {failure}");
        }
        Event::Expired => {
            metrics.set_peer_registered(&peer.name, false, None);
            tracing::warn!(peer = %peer.name, "registration expired: no refresh succeeded in time; calls for our contact no longer reach us");
        }
        Event::Unregistered => {
            metrics.set_peer_registered(&peer.name, false, None);
            tracing::info!(peer = %peer.name, "registration removed");
        }
    }
}
