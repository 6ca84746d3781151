//! What arrives from the network: a response matched to its client transaction (§17.1.3), a
//! request to its server transaction (§17.2.3) or answered on its own (CANCEL §9.2, ACK for 2xx
//! RFC 6026, merged requests §8.2.2.2, 420, 481, 401/403, the stateless 503), or handed up as a
//! new request.

use super::*;
use crate::sip::auth::Verdict;
use crate::sip::message::{self, Headers};
use crate::sip::transaction::matching;
use crate::sip::transaction::via::{request_response_target, response_target, stamp_via};
use crate::sip::transaction::ResponseAction;

impl<O: Clone> TransactionLayer<O> {
    /// A response read at `received`.
    pub fn handle_response(
        &mut self,
        now: Instant,
        received: Instant,
        response: Response,
        dialogs: &impl Dialogs<O>,
    ) {
        self.overload
            .handle_delay(now, now.saturating_duration_since(received));
        let Some(key) = ClientKey::for_response(&response) else {
            return;
        };
        let Some(entry) = self.clients.get_mut(&key) else {
            // A 2xx retransmission after the INVITE transaction ended goes to the dialog
            // (§13.2.2.4: the UAC core re-sends its ACK).
            if (200..300).contains(&response.status) && *key.method() == Method::Invite {
                let dialog = matching::dialog_of_response(&response);
                if let Some(owner) = dialogs.owner(&dialog) {
                    let branch = key.branch().to_string();
                    self.deliver(owner, SipEvent::Response { branch, response });
                }
            }
            return;
        };
        let status = response.status;
        let action = match &mut entry.machine {
            ClientTransaction::Invite(machine) => {
                let ack = (status >= 300)
                    .then(|| message::ack_for_non_2xx(&entry.request, &response).to_bytes());
                machine.handle_response(now, status, ack)
            }
            ClientTransaction::NonInvite(machine) => machine.handle_response(now, status),
        };
        if let ResponseAction::PassToTu = action {
            let owner = entry.owner.clone();
            let branch = key.branch().to_string();
            self.deliver(owner, SipEvent::Response { branch, response });
        }
        self.service_client(&key, false);
    }

    /// A request the parser rejected: answered `status` from the headers it could read.
    pub fn answer_unparsable(
        &mut self,
        source: SocketAddr,
        flow: Flow,
        status: u16,
        reason: &str,
        mut headers: Headers,
    ) {
        stamp_via(&mut headers, source);
        let response = message::response_from_headers(&headers, status, reason, Some("gw-reject"));
        let target = response_target(&response, source, flow);
        self.transmit(target, response.to_bytes());
    }

    /// A request as it arrived; `claimant` is the peer its source belongs to if that peer has
    /// credentials.
    pub fn handle_request(
        &mut self,
        now: Instant,
        mut request: Request,
        arrival: Arrival,
        claimant: Option<Claimant<'_>>,
        dialogs: &impl Dialogs<O>,
    ) {
        let Arrival {
            source,
            flow,
            received,
        } = arrival;
        let waited = now.saturating_duration_since(received);
        self.overload.handle_delay(now, waited);
        stamp_via(&mut request.headers, source);
        let Some(key) = ServerKey::for_request(&request) else {
            return;
        };
        if key.is_rfc3261() && self.servers.contains_key(&key) {
            self.existing_server_transaction(now, &key, request);
            return;
        }
        let out_of_dialog = request.to().is_some_and(|to| to.tag().is_none());
        let initial_invite = request.method == Method::Invite && out_of_dialog;
        let priority = |request: &Request| {
            self.priority
                .as_ref()
                .is_some_and(|p| p.is_priority(request, source))
        };
        if initial_invite && self.overload.should_shed(waited) && !priority(&request) {
            self.metrics.increment(Counter::SipShedOverload);
            self.answer_statelessly(&request, source, flow, answers::overloaded(&request));
            return;
        }
        let opens_nothing = request.method != Method::Ack && request.method != Method::Cancel;
        // A request in a dialog we do not have (§12.2.2: 481) is answered without a
        // transaction: whoever can send (or spoof) requests with made-up tags must not grow
        // the table, and the caps below spare in-dialog requests for the calls we carry. A
        // retransmission gets the same answer again.
        let known = |request: &Request| {
            matching::dialog_of_request(request).is_some_and(|key| dialogs.contains(&key))
        };
        if !out_of_dialog && opens_nothing && !known(&request) {
            self.metrics.increment(Counter::SipUnknownDialog);
            self.answer_statelessly(&request, source, flow, answers::unknown_dialog(&request));
            return;
        }
        // ACK and CANCEL belong to a transaction already admitted: a CANCEL refused here would
        // leave a desk ringing for a caller who is gone.
        if out_of_dialog && opens_nothing && self.servers.len() >= self.max_transactions {
            self.metrics.increment(Counter::SipRefusedTransactions);
            self.answer_statelessly(&request, source, flow, answers::overloaded(&request));
            return;
        }
        match request.method {
            Method::Ack => self.ack_without_transaction(now, request, dialogs),
            Method::Cancel => self.cancel(now, request, source, flow, key),
            _ => {
                self.new_server_transaction(now, request, arrival, key, claimant, dialogs);
            }
        }
    }

    fn answer_statelessly(
        &mut self,
        request: &Request,
        source: SocketAddr,
        flow: Flow,
        response: Response,
    ) {
        let target = request_response_target(request, source, flow);
        self.transmit(target, response.to_bytes());
    }

    fn existing_server_transaction(&mut self, now: Instant, key: &ServerKey, request: Request) {
        let Some(entry) = self.servers.get_mut(key) else {
            return;
        };
        match (&mut entry.machine, &request.method) {
            (ServerTransaction::Invite(machine), Method::Ack) => {
                // ACK for a non-2xx: absorbed by the transaction (§17.2.1).
                let _ = machine.handle_ack(now);
            }
            (ServerTransaction::Invite(machine), _) => {
                machine.handle_request_retransmission(now);
                self.metrics.increment(Counter::SipRetransmissionsReceived);
            }
            (ServerTransaction::NonInvite(machine), _) => {
                machine.handle_request_retransmission(now);
                self.metrics.increment(Counter::SipRetransmissionsReceived);
            }
        }
        self.service_server(key, true);
    }

    fn ack_without_transaction(
        &mut self,
        now: Instant,
        request: Request,
        dialogs: &impl Dialogs<O>,
    ) {
        let Some(accepted) = AcceptedKey::for_ack(&request) else {
            return;
        };
        if let Some(server_key) = self.accepted.get(&accepted).cloned() {
            if let Some(ServerEntry {
                machine: ServerTransaction::Invite(machine),
                owner,
                ..
            }) = self.servers.get_mut(&server_key).map(|entry| &mut **entry)
            {
                let first = machine.handle_ack(now);
                // The call needs nothing more of this transaction: letting go of its owner
                // frees it when the call ends, not 32 s later (Timer L).
                let owner = if first { owner.take() } else { None };
                if let Some(owner) = owner {
                    self.deliver(owner, SipEvent::Ack { request });
                }
                self.service_server(&server_key, false);
                return;
            }
        }
        // The accepted transaction is gone (late ACK, or ACK for a re-INVITE's answer in the
        // body): hand it to the dialog.
        let owner = matching::dialog_of_request(&request).and_then(|key| dialogs.owner(&key));
        if let Some(owner) = owner {
            self.deliver(owner, SipEvent::Ack { request });
        }
    }

    fn cancel(
        &mut self,
        now: Instant,
        request: Request,
        source: SocketAddr,
        flow: Flow,
        key: ServerKey,
    ) {
        let invite_key = key.cancelled_invite();
        let target = request_response_target(&request, source, flow);
        let id = self.insert_server(now, key, &request, target, None);
        let matched = match self.servers.get(&invite_key) {
            Some(entry) => {
                if let Some(owner) = entry.owner.clone() {
                    let server = entry.id;
                    self.deliver(owner, SipEvent::Cancelled { server });
                }
                true
            }
            // §9.2: no matching transaction.
            None => false,
        };
        self.respond(now, id, answers::cancel_answer(&request, matched));
    }

    fn new_server_transaction(
        &mut self,
        now: Instant,
        request: Request,
        Arrival { source, flow, .. }: Arrival,
        key: ServerKey,
        claimant: Option<Claimant<'_>>,
        dialogs: &impl Dialogs<O>,
    ) {
        let target = request_response_target(&request, source, flow);
        let dialog = matching::dialog_of_request(&request);
        let merge_key = MergeKey::for_request(&request);
        let earlier = merge_key.as_ref().and_then(|merge| self.merged.get(merge));
        if matching::is_merged(earlier.map(String::as_str), key.branch()) {
            // §8.2.2.2: the same request reached us by two paths.
            let response = answers::merged_request(&request);
            self.transmit(target, response.to_bytes());
            return;
        }
        let id = self.insert_server(now, key.clone(), &request, target, merge_key);
        if let Some(response) = answers::bad_extension(&request, &self.supported) {
            // §8.2.2.3: an extension we do not do was required.
            self.respond(now, id, response);
            return;
        }
        if dialog.is_none() && !self.authenticated(now, id, &request, source, claimant) {
            return;
        }
        if request.method == Method::Invite {
            // §17.2.1: 100 Trying at once, so the caller's Timer A stops.
            self.respond(now, id, answers::trying(&request));
        }
        let Some(dialog) = dialog else {
            let server = id;
            self.events.push_back(LayerEvent::NewRequest {
                server,
                request,
                source,
                flow,
            });
            return;
        };
        match dialogs.owner(&dialog) {
            Some(owner) => {
                if let Some(entry) = self.servers.get_mut(&key) {
                    entry.owner = Some(owner.clone());
                }
                let server = id;
                let event = SipEvent::Request {
                    server,
                    request,
                    source,
                };
                self.deliver(owner, event);
            }
            None => self.respond(now, id, answers::unknown_dialog(&request)),
        }
    }

    /// §22: a request that starts something, from a peer with credentials, must prove them;
    /// otherwise it is answered 401 (a challenge) or 403 here and false returned. ACK and
    /// CANCEL cannot be challenged (§22.1); requests inside a dialog belong to a call that
    /// was authenticated.
    fn authenticated(
        &mut self,
        now: Instant,
        id: ServerTransactionId,
        request: &Request,
        source: SocketAddr,
        claimant: Option<Claimant<'_>>,
    ) -> bool {
        let (Some(digest), Some(claimant)) = (self.auth.as_mut(), claimant) else {
            return true;
        };
        let response = match digest.check(now, request, claimant.credentials) {
            Verdict::Pass => return true,
            Verdict::Challenge(values) => {
                self.metrics.increment(Counter::SipAuthChallenges);
                answers::challenge(request, values)
            }
            Verdict::Refuse(why) => {
                self.metrics.increment(Counter::SipAuthFailures);
                tracing::warn!(%source, peer = %claimant.peer, method = %request.method, why, "digest authentication failed");
                answers::authentication_refused(request)
            }
        };
        self.respond(now, id, response);
        false
    }

    fn insert_server(
        &mut self,
        now: Instant,
        key: ServerKey,
        request: &Request,
        response_target: Target,
        merge_key: Option<MergeKey>,
    ) -> ServerTransactionId {
        let id = ServerTransactionId::new(self.next_server);
        self.next_server += 1;
        let reliable = response_target.is_reliable();
        let machine = ServerTransaction::new(now, &request.method, reliable, &self.timers);
        if let Some(merge) = &merge_key {
            self.merged.insert(merge.clone(), key.branch().to_string());
        }
        let new_merge = merge_key.clone();
        self.metrics.increment(Counter::TransactionsTotal);
        self.metrics.add_gauge(Gauge::TransactionsActive, 1);
        self.server_keys.insert(id, key.clone());
        let entry = ServerEntry {
            id,
            machine,
            response_target,
            owner: None,
            merge_key,
            accepted_key: None,
            armed: None,
        };
        // Only requests without an RFC 3261 branch can collide: the older entry's indexes go.
        if let Some(old) = self.servers.insert(key, Box::new(entry)) {
            self.server_keys.remove(&old.id);
            if let Some(merge) = old.merge_key.filter(|m| Some(m) != new_merge.as_ref()) {
                self.merged.remove(&merge);
            }
            if let Some(accepted) = old.accepted_key {
                self.accepted.remove(&accepted);
            }
            self.metrics.add_gauge(Gauge::TransactionsActive, -1);
        }
        id
    }
}
