//! The endpoint's inbound path: the guard's verdict on each request, then the message to the
//! transaction layer, which matches it, answers it or hands it up.

use super::*;
use crate::sip::transaction::layer::{Arrival, Claimant};

impl Endpoint {
    pub(super) fn handle_inbound(&mut self, now: Instant, inbound: Inbound) {
        let arrival = Arrival {
            source: inbound.source,
            flow: inbound.flow,
            received: inbound.received,
        };
        match inbound.message {
            Ok(Message::Request(request)) => {
                self.metrics.increment(Counter::SipRequestsReceived);
                // Through a front proxy, the request is the original source's peer's: its
                // credentials answer the challenge.
                let peer = self.attributed_peer(arrival.source, &request);
                if !self.admit(
                    now,
                    Some(&request),
                    arrival.source,
                    arrival.flow,
                    peer.is_some(),
                ) {
                    return;
                }
                inject_faults(&request);
                let claimant = peer.as_deref().and_then(|peer| {
                    let credentials = peer.auth.as_ref()?;
                    Some(Claimant {
                        peer: &peer.name,
                        credentials,
                    })
                });
                self.layer
                    .handle_request(now, request, arrival, claimant, &*self.dialogs);
            }
            Ok(Message::Response(response)) => {
                self.metrics.increment(Counter::SipResponsesReceived);
                self.layer
                    .handle_response(now, arrival.received, response, &*self.dialogs);
            }
            Err(ParseError::Reject {
                status,
                reason,
                headers,
            }) => {
                self.metrics.increment(Counter::SipParseErrors);
                let is_peer = self.peer_of(arrival.source).is_some();
                if !self.admit(now, None, arrival.source, arrival.flow, is_peer) {
                    return;
                }
                tracing::info!(source = %arrival.source, status, %reason, "rejected malformed request");
                self.layer.answer_unparsable(
                    arrival.source,
                    arrival.flow,
                    status,
                    &reason,
                    *headers,
                );
            }
            Err(ParseError::Drop(reason)) => {
                self.metrics.increment(Counter::SipParseErrors);
                tracing::debug!(source = %arrival.source, %reason, "dropped unparsable message");
            }
        }
    }

    /// The peer a request from `source` is attributed to ([`crate::routing::Router::attributed_peer`]).
    fn attributed_peer(
        &self,
        source: SocketAddr,
        request: &Request,
    ) -> Option<Arc<crate::routing::Peer>> {
        let (_, router) = self.guard.as_ref()?;
        router.attributed_peer(
            source,
            || request.headers.get(crate::routing::FRONT_SOURCE_HEADER),
            request.method == Method::Options,
        )
    }

    /// The configured peer `source` belongs to (known only with the guard, which has the
    /// router).
    fn peer_of(&self, source: SocketAddr) -> Option<Arc<crate::routing::Peer>> {
        let (_, router) = self.guard.as_ref()?;
        router.peer_for_source(source)
    }

    /// The guard's verdict on a request (or malformed message, `request` None) from `source`:
    /// true if it may go on (`is_peer`: the source is a
    /// configured peer's). Refusals are answered or dropped here.
    pub(super) fn admit(
        &mut self,
        now: Instant,
        request: Option<&Request>,
        source: SocketAddr,
        flow: Flow,
        is_peer: bool,
    ) -> bool {
        let Some((guard, _)) = self.guard.as_mut() else {
            return true;
        };
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
}
