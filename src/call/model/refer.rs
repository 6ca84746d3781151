//! REFER (RFC 3515) on the call model: the request that asks for a transfer, answered 202 or
//! with the reason it cannot start, and the NOTIFYs of its implicit subscription that tell
//! the agent the transfer's progress (RFC 6665 §4.2.2).

use std::sync::Arc;
use std::time::Instant;

use crate::media::Leg;
use crate::routing::Peer;
use crate::sip::message::{Request, Response};
use crate::sip::transaction::ServerTransactionId;

use super::{Action, Call, TransferError};
use crate::call::directory::DialogId;
use crate::call::transfer::{self as refer, Trigger};

/// What a REFER adds to a transfer.
pub(super) struct Refer {
    /// CSeq of the REFER: its implicit subscription's id (RFC 3515 §2.4.6).
    pub(super) sequence: u32,
    /// RFC 3892: passed on to the target.
    pub(super) referred_by: Option<String>,
    /// Attended transfer: the consultation call's dialog at the target, and its peer.
    pub(super) consultation: Option<(DialogId, Arc<Peer>)>,
}

/// The answer a REFER gets when the transfer cannot start.
fn refer_refusal(error: &TransferError) -> (u16, &'static str) {
    match error {
        TransferError::NotAnswered => (481, "Call Does Not Exist"),
        TransferError::InProgress => (491, "Request Pending"),
        TransferError::Conference | TransferError::ConferenceFull(_) => {
            (403, "Transfer Not Possible During A Conference")
        }
        TransferError::NoRoute(_) => (403, "No Route To Transfer Target"),
        TransferError::PeersDown(_) => (503, "Transfer Target Unavailable"),
    }
}

impl Call {
    /// 182 Queued to the agent: its transfer waits for a desk (RFC 3515 §2.4.5).
    pub(super) fn notify_transfer_queued(&mut self) {
        self.notify_transfer_progress(182);
    }

    /// An in-dialog REFER (RFC 3515): 202 and the transfer, or the error that says why not.
    pub(super) fn handle_refer(
        &mut self,
        now: Instant,
        leg: Leg,
        server: ServerTransactionId,
        request: &Request,
    ) {
        let reject = |call: &mut Call, status: u16, reason: &str| {
            let mut response = Response::for_request(request, status, None);
            response.reason = reason.to_string();
            call.actions
                .push_back(Action::SendResponse { server, response });
        };
        let target = match refer::refer_target(request) {
            Ok(target) => target,
            Err(error) => {
                tracing::info!(call = %self.id, %error, "REFER rejected");
                reject(self, 400, &format!("Bad Refer-To ({error})"));
                return;
            }
        };
        let consultation = match &target.replaces {
            None => None,
            Some(value) => {
                let peer_side = DialogId::from_replaces(value)
                    .and_then(|id| self.settings.directory.peer_side(&id));
                let peer = peer_side
                    .as_ref()
                    .and_then(|p| self.settings.router.peer_by_name(&p.peer));
                match (peer_side, peer) {
                    (Some(peer_side), Some(peer)) => Some((peer_side.dialog, peer)),
                    _ => {
                        // Not a call through this gateway: nothing we could replace.
                        reject(self, 403, "Consultation Call Unknown");
                        return;
                    }
                }
            }
        };
        if let Err(error) =
            self.transfer_route(&target.number, consultation.as_ref().map(|(_, peer)| peer))
        {
            let (status, reason) = refer_refusal(&error);
            reject(self, status, reason);
            return;
        }
        let referred_by = request
            .headers
            .get("Referred-By")
            .map(str::to_string)
            .or_else(|| {
                request.from().map(|mut from| {
                    from.params.clear();
                    from.to_string()
                })
            });
        let mut accepted = Response::for_request(request, 202, None);
        accepted
            .headers
            .push("Contact", self.contact(self.legs[leg].target));
        self.actions.push_back(Action::SendResponse {
            server,
            response: accepted,
        });
        let sequence = request.cseq().map_or(0, |c| c.sequence);
        let trigger = if consultation.is_some() {
            Trigger::Attended
        } else {
            Trigger::Refer
        };
        let refer = Refer {
            sequence,
            referred_by,
            consultation,
        };
        match self.start_transfer(now, leg, &target.number, trigger, Some(refer)) {
            // Its 100 went with the start.
            Ok(()) => {}
            Err(error) => {
                // Checked above, by the same function.
                tracing::warn!(call = %self.id, %error, "transfer not started");
                self.notify_agent(leg, sequence, 503);
            }
        }
    }

    /// A NOTIFY of the REFER's subscription to the agent on `leg`, while its dialog lasts;
    /// returns the NOTIFY's branch.
    pub(super) fn notify_agent(
        &mut self,
        leg: Leg,
        refer_sequence: u32,
        status: u16,
    ) -> Option<String> {
        let target = self.legs[leg].target;
        let contact = self.contact(target);
        // Long enough for every peer of the target's route to be tried (RFC 6665 §4.2.2: a
        // subscription that expired would need `terminated;reason=timeout`).
        let peers = self.transfer.as_ref().map_or(1, |t| t.fork.route().len()) as u32;
        let per_peer = self.settings.peer_response_timeout + self.settings.transfer_ring_timeout;
        // ... and, for a route with a queue, its wait and the pass over its overflow peers.
        let queue_wait = self
            .transfer
            .as_ref()
            .and_then(|t| t.queue.as_ref())
            .map_or(std::time::Duration::ZERO, |q| {
                q.wait + per_peer * q.overflow.len() as u32
            });
        let expires = (per_peer * peers + queue_wait).as_secs() as u32 + 32;
        let dialog = self.legs[leg].dialog.as_mut()?;
        let mut notify = refer::notify(dialog, refer_sequence, status, expires);
        notify.headers.push("Contact", contact);
        let notify = self.with_via(notify, target);
        let branch = notify
            .top_via()
            .and_then(|v| v.branch().map(str::to_string));
        let credentials = self.leg_outbound(leg);
        self.send_in_dialog(notify, target, credentials);
        branch
    }

    /// The transfer's progress to the agent, if it asked by REFER; returns the NOTIFY's branch.
    pub(super) fn notify_transfer_progress(&mut self, status: u16) -> Option<String> {
        let transfer = self.transfer.as_ref()?;
        let (leg, sequence) = (transfer.from, transfer.refer_sequence?);
        self.notify_agent(leg, sequence, status)
    }
}
