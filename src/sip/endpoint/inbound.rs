//! The endpoint's inbound path: a message from the transport matched to its transaction
//! (§17.1.3, §17.2.3) or answered on its own (CANCEL, ACK for 2xx, merged requests, 420,
//! 401, the stateless 503), or handed to the dispatcher as a new request.

use super::*;

impl Endpoint {
    pub(super) fn handle_inbound(&mut self, now: Instant, inbound: Inbound) {
        match inbound.message {
            Ok(Message::Request(request)) => {
                self.metrics.increment(Counter::SipRequestsReceived);
                if !self.admit(now, Some(&request), inbound.source, inbound.flow) {
                    return;
                }
                inject_faults(&request);
                let waited = now.saturating_duration_since(inbound.received);
                self.overload.handle_delay(now, waited);
                self.handle_request(now, request, inbound.source, inbound.flow, waited);
            }
            Ok(Message::Response(response)) => {
                let waited = now.saturating_duration_since(inbound.received);
                self.overload.handle_delay(now, waited);
                self.metrics.increment(Counter::SipResponsesReceived);
                self.handle_response(now, response);
            }
            Err(ParseError::Reject {
                status,
                reason,
                headers,
            }) => {
                self.metrics.increment(Counter::SipParseErrors);
                if !self.admit(now, None, inbound.source, inbound.flow) {
                    return;
                }
                tracing::info!(source = %inbound.source, status, %reason, "rejected malformed request");
                let mut headers = *headers;
                stamp_via(&mut headers, inbound.source);
                let response =
                    message::response_from_headers(&headers, status, &reason, Some("gw-reject"));
                let target = response_target(&response, inbound.source, inbound.flow);
                self.transport.send(target, response.to_bytes());
            }
            Err(ParseError::Drop(reason)) => {
                self.metrics.increment(Counter::SipParseErrors);
                tracing::debug!(source = %inbound.source, %reason, "dropped unparsable message");
            }
        }
    }

    pub(super) fn handle_response(&mut self, now: Instant, response: Response) {
        let Some(key) = ClientKey::for_response(&response) else {
            return;
        };
        let Some(entry) = self.clients.get_mut(&key) else {
            // A 2xx retransmission after the INVITE transaction ended goes to the dialog
            // (§13.2.2.4: the UAC core re-sends its ACK).
            if (200..300).contains(&response.status) && *key.method() == Method::Invite {
                self.response_to_dialog(key.branch().to_string(), response);
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
            let _ = entry.owner.send(SipEvent::Response {
                branch: key.branch().to_string(),
                response,
            });
        }
        self.service_client(now, &key, false);
    }

    pub(super) fn response_to_dialog(&self, branch: String, response: Response) {
        let key = matching::dialog_of_response(&response);
        if let Some(owner) = self.dialogs.get(&key) {
            let _ = owner.send(SipEvent::Response { branch, response });
        }
    }

    pub(super) fn handle_request(
        &mut self,
        now: Instant,
        mut request: Request,
        source: SocketAddr,
        flow: Flow,
        waited: Duration,
    ) {
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
        if initial_invite && self.overload.should_shed(waited) {
            self.shed(&request, source, flow);
            return;
        }
        // A request in a dialog we do not have (§12.2.2: 481) is answered without a
        // transaction: whoever can send (or spoof) requests with made-up tags must not grow
        // the table, and the caps below spare in-dialog requests for the calls we carry. A
        // retransmission gets the same answer again.
        if !out_of_dialog
            && request.method != Method::Ack
            && request.method != Method::Cancel
            && !self.in_known_dialog(&request)
        {
            self.metrics.increment(Counter::SipUnknownDialog);
            let response = answers::unknown_dialog(&request);
            let target = request_response_target(&request, source, flow);
            self.transport.send(target, response.to_bytes());
            return;
        }
        // ACK and CANCEL belong to a transaction already admitted: a CANCEL refused here would
        // leave a desk ringing for a caller who is gone.
        if out_of_dialog
            && request.method != Method::Ack
            && request.method != Method::Cancel
            && self.servers.len() >= self.max_transactions
        {
            self.metrics.increment(Counter::SipRefusedTransactions);
            self.shed_response(&request, source, flow);
            return;
        }
        match request.method {
            Method::Ack => self.ack_without_transaction(now, request),
            Method::Cancel => self.cancel(now, request, source, flow, key),
            _ => self.new_server_transaction(now, request, source, flow, key),
        }
    }

    /// Whether a request with a To tag belongs to a dialog a call holds.
    pub(super) fn in_known_dialog(&self, request: &Request) -> bool {
        matching::dialog_of_request(request).is_some_and(|key| self.dialogs.contains_key(&key))
    }

    /// §22: a request that starts something, from a peer with credentials, must prove them;
    /// otherwise it is answered 401 (a challenge) or 403 here and false returned. ACK and
    /// CANCEL cannot be challenged (§22.1); requests inside a dialog belong to a call that
    /// was authenticated.
    pub(super) fn authenticated(
        &mut self,
        now: Instant,
        id: ServerTransactionId,
        request: &Request,
        source: SocketAddr,
    ) -> bool {
        let (Some(digest), Some((_, router))) = (self.auth.as_mut(), self.guard.as_ref()) else {
            return true;
        };
        let Some(peer) = router.peer_for_source(source) else {
            return true;
        };
        let Some(credentials) = peer.auth.as_ref() else {
            return true;
        };
        let response = match digest.check(now, request, credentials) {
            crate::sip::auth::Verdict::Pass => return true,
            crate::sip::auth::Verdict::Challenge(values) => {
                self.metrics.increment(Counter::SipAuthChallenges);
                answers::challenge(request, values)
            }
            crate::sip::auth::Verdict::Refuse(why) => {
                self.metrics.increment(Counter::SipAuthFailures);
                tracing::warn!(%source, peer = %peer.name, method = %request.method, why, "digest authentication failed");
                answers::authentication_refused(request)
            }
        };
        self.respond(now, id, response);
        false
    }

    /// Answers a new INVITE 503 + Retry-After without a transaction, timer or call. When the
    /// endpoint falls behind, starting more calls only deepens the queue until responses and
    /// retransmissions are lost with it (congestion collapse); shedding new calls while
    /// retransmissions, responses and in-dialog requests go on keeps the calls in progress
    /// alive (RFC 6357 §4: reject early and cheaply). Stateless (§8.2.7 of RFC 3261 allows it):
    /// a lost 503 is recovered by the caller's retransmission, which gets a fresh decision.
    pub(super) fn shed(&mut self, request: &Request, source: SocketAddr, flow: Flow) {
        self.metrics.increment(Counter::SipShedOverload);
        self.shed_response(request, source, flow);
    }

    /// A stateless 503 + Retry-After.
    pub(super) fn shed_response(&mut self, request: &Request, source: SocketAddr, flow: Flow) {
        let response = answers::overloaded(request);
        let target = request_response_target(request, source, flow);
        self.transport.send(target, response.to_bytes());
    }

    pub(super) fn existing_server_transaction(
        &mut self,
        now: Instant,
        key: &ServerKey,
        request: Request,
    ) {
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
        self.service_server(now, key, true);
    }

    pub(super) fn ack_without_transaction(&mut self, now: Instant, request: Request) {
        let Some(accepted) = AcceptedKey::for_ack(&request) else {
            return;
        };
        if let Some(server_key) = self.accepted.get(&accepted).cloned() {
            if let Some(ServerEntry {
                machine: ServerTransaction::Invite(machine),
                owner,
                ..
            }) = self.servers.get_mut(&server_key)
            {
                let first = machine.handle_ack(now);
                if first {
                    // The call needs nothing more of this transaction: letting go of its
                    // channel frees it when the call ends, not 32 s later (Timer L).
                    if let Some(owner) = owner.take() {
                        let _ = owner.send(SipEvent::Ack { request });
                    }
                }
                self.service_server(now, &server_key, false);
                return;
            }
        }
        // The accepted transaction is gone (late ACK, or ACK for a re-INVITE's answer in the
        // body): hand it to the dialog.
        let Some(key) = matching::dialog_of_request(&request) else {
            return;
        };
        if let Some(owner) = self.dialogs.get(&key) {
            let _ = owner.send(SipEvent::Ack { request });
        }
    }

    pub(super) fn cancel(
        &mut self,
        now: Instant,
        request: Request,
        source: SocketAddr,
        flow: Flow,
        key: ServerKey,
    ) {
        let invite_key = key.cancelled_invite();
        let target = request_response_target(&request, source, flow);
        let id = self.insert_server(now, key.clone(), &request, target, None);
        let matched = match self.servers.get(&invite_key) {
            Some(entry) => {
                if let Some(owner) = &entry.owner {
                    let _ = owner.send(SipEvent::Cancelled { server: entry.id });
                }
                true
            }
            // §9.2: no matching transaction.
            None => false,
        };
        self.respond(now, id, answers::cancel_answer(&request, matched));
    }

    pub(super) fn new_server_transaction(
        &mut self,
        now: Instant,
        request: Request,
        source: SocketAddr,
        flow: Flow,
        key: ServerKey,
    ) {
        let target = request_response_target(&request, source, flow);
        let dialog = matching::dialog_of_request(&request);
        let merge_key = MergeKey::for_request(&request);
        let earlier = merge_key.as_ref().and_then(|merge| self.merged.get(merge));
        if matching::is_merged(earlier.map(String::as_str), key.branch()) {
            // §8.2.2.2: the same request reached us by two paths.
            let response = answers::merged_request(&request);
            self.transport.send(target, response.to_bytes());
            return;
        }
        let id = self.insert_server(now, key.clone(), &request, target, merge_key);
        if let Some(response) = answers::bad_extension(&request, &self.supported) {
            // §8.2.2.3: an extension we do not do was required.
            self.respond(now, id, response);
            return;
        }
        if dialog.is_none() && !self.authenticated(now, id, &request, source) {
            return;
        }
        if request.method == Method::Invite {
            // §17.2.1: 100 Trying at once, so the caller's Timer A stops.
            self.respond(now, id, answers::trying(&request));
        }
        if let Some(dialog) = dialog {
            let owner = self.dialogs.get(&dialog).map(|o| o.clone());
            match owner {
                Some(owner) => {
                    if let Some(entry) = self.servers.get_mut(&key) {
                        entry.owner = Some(owner.clone());
                    }
                    let sent = owner.send(SipEvent::Request {
                        server: id,
                        request,
                        source,
                    });
                    if let Err(SipEvent::Request { request, .. }) = sent.map_err(|e| *e) {
                        // The call has MAX_UNREAD of the peer's requests unread: try later.
                        self.metrics.increment(Counter::SipRefusedTransactions);
                        self.respond(now, id, answers::call_busy(&request));
                    }
                }
                None => self.respond(now, id, answers::unknown_dialog(&request)),
            }
            return;
        }
        match self.dispatcher.new_request(&request, id, source, flow) {
            Disposition::Respond(response) => self.respond(now, id, response),
            Disposition::Accept(owner) => {
                if let Some(entry) = self.servers.get_mut(&key) {
                    entry.owner = Some(owner.clone());
                }
                let _ = owner.send(SipEvent::Request {
                    server: id,
                    request,
                    source,
                });
            }
        }
    }

    pub(super) fn insert_server(
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
        let replaced = self.servers.insert(
            key,
            ServerEntry {
                id,
                machine,
                response_target,
                owner: None,
                merge_key,
                accepted_key: None,
                armed: None,
            },
        );
        // Only requests without an RFC 3261 branch can collide: the older entry's indexes go.
        if let Some(old) = replaced {
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
