//! What the gateway sends on its own: the INVITEs it places (leg B, transfer targets,
//! conference guests, as RFC 3325 lets each peer see the caller), the ACKs for 2xx
//! (§13.2.2.4, again for every retransmission), BYEs (with RFC 3326 Reason when the gateway
//! ends the call), and the one rule for a 2xx that comes late or from another fork: ACK it,
//! then release the dialog it made with BYE.

use bytes::Bytes;

use crate::media::Leg;
use crate::routing::credentials::OutboundCredentials;
use crate::routing::Peer;
use crate::sip::dialog::Dialog;
use crate::sip::message::{self, Headers, Host, Method, NameAddr, Request, Response, Uri};
use crate::sip::sdp::SessionDescription;
use crate::sip::target::Target;
use crate::sip::transaction::via_for;

use super::{Action, Call, ALLOW};
use crate::call::transfer::{self as identity, CallerIdentity};

/// What differs between the INVITEs the gateway places for a call.
pub(super) struct InviteTo<'a> {
    pub(super) peer: &'a Peer,
    pub(super) target: Target,
    pub(super) branch: &'a str,
    pub(super) number: &'a str,
    pub(super) call_id: &'a str,
    pub(super) tag: &'a str,
    pub(super) offer: &'a SessionDescription,
    /// Who the call is placed for: the caller, or a transfer's transferee.
    pub(super) identity: &'a CallerIdentity,
    /// Assert the number in P-Asserted-Identity when the caller sent none.
    pub(super) assert: bool,
}

impl Call {
    pub(super) fn contact(&self, target: Target) -> String {
        let local = self.settings.local_for(target);
        let host = Host::Ip(local.ip());
        format!("<sip:gw@{host}:{}{}>", local.port(), target.uri_transport())
    }

    /// Leg B's INVITE to `peer` with our offer (None once leg B has no offer of ours).
    pub(super) fn build_b_invite(
        &mut self,
        peer: &Peer,
        target: Target,
        branch: &str,
    ) -> Option<Request> {
        let leg = &self.legs[Leg::B];
        let offer = leg.offer.as_ref()?;
        let mut invite = self.build_invite(&InviteTo {
            peer,
            target,
            branch,
            number: &self.number,
            call_id: &leg.call_id,
            tag: &leg.tag,
            offer,
            identity: &self.legs[Leg::A].identity,
            assert: false,
        });
        self.offer_session_timer(&mut invite.headers);
        Some(invite)
    }

    /// An INVITE to `to.peer` on behalf of `to.identity`, as RFC 3325 lets this peer see it,
    /// to `sip:<number>@<peer address>` (the contract), with our SDP offer.
    pub(super) fn build_invite(&self, to: &InviteTo<'_>) -> Request {
        let local = Host::Ip(self.local_ip(to.peer));
        let mut headers = Headers::new();
        headers.push(
            "Via",
            via_for(self.settings.local_for(to.target), to.target, to.branch),
        );
        headers.push(
            "Max-Forwards",
            self.caller
                .invite
                .max_forwards()
                .saturating_sub(1)
                .to_string(),
        );
        let mut identity = Headers::new();
        let from = to
            .identity
            .present(to.peer, local, to.assert, &mut identity)
            .with_tag(to.tag);
        let uri = Uri::sip(
            Some(to.number),
            Host::Ip(to.peer.address.ip()),
            Some(to.peer.address.port()),
        );
        headers.push("From", from.to_string());
        headers.push("To", NameAddr::new(uri.clone()).to_string());
        headers.push("Call-ID", to.call_id);
        headers.push("CSeq", "1 INVITE");
        headers.push("Contact", self.contact(to.target));
        for header in identity.iter() {
            headers.push(&header.name, header.value.clone());
        }
        headers.push("Allow", ALLOW);
        if let Some(agent) = &self.settings.user_agent {
            headers.push("User-Agent", agent.clone());
        }
        headers.push("Content-Type", "application/sdp");
        Request {
            method: Method::Invite,
            uri,
            headers,
            body: Bytes::from(to.offer.to_string()),
        }
    }

    /// The INVITE to a transfer target or a conference guest: on behalf of the party across
    /// from the agent's leg `from` (`to.identity`, never the agent's), with the agent's line as
    /// the diverting party (RFC 7044/5806, as the peer reads it) and the linkage id.
    pub(super) fn third_party_invite(
        &self,
        to: &InviteTo<'_>,
        from: Leg,
        linkage_id: &str,
    ) -> Request {
        let mut invite = self.build_invite(to);
        identity::add_diversion(
            &mut invite.headers,
            to.peer,
            &self.legs[from].identity.number,
            Host::Ip(self.local_ip(to.peer)),
            &invite.uri,
        );
        invite
            .headers
            .push(identity::LINKAGE_HEADER, linkage_id.to_string());
        invite
    }

    pub(super) fn with_via(&mut self, mut request: Request, target: Target) -> Request {
        let branch = self.ids.branch();
        request.headers.push_front(
            "Via",
            via_for(self.settings.local_for(target), target, &branch),
        );
        request
    }

    /// The dialog a 2xx to our `invite` makes, acknowledged with the INVITE's own CSeq (2
    /// after a 422 retry; §13.2.2.4).
    pub(super) fn acknowledge(
        &mut self,
        invite: &Request,
        target: Target,
        response: &Response,
    ) -> Option<Dialog> {
        let dialog = Dialog::new_uac(invite, response)?;
        let sequence = invite.cseq().map_or(1, |c| c.sequence);
        let ack = self.with_via(dialog.ack(sequence), target);
        self.actions.push_back(Action::SendRequest {
            request: ack,
            target,
        });
        Some(dialog)
    }

    /// A 2xx to an INVITE whose answer was taken already, or given up on: the same ACK again;
    /// the dialog it makes is released with BYE (a challenge to it answered with
    /// `credentials`) unless `keep` says it is the one in use (a retransmission of the answer
    /// we took). True if it was released.
    pub(super) fn answer_again(
        &mut self,
        invite: &Request,
        target: Target,
        response: &Response,
        credentials: Option<OutboundCredentials>,
        keep: impl FnOnce(&Dialog) -> bool,
        why: &str,
    ) -> bool {
        if !(200..300).contains(&response.status) {
            return false;
        }
        let Some(dialog) = self.acknowledge(invite, target, response) else {
            return false;
        };
        if keep(&dialog) {
            return false;
        }
        self.bye_dialog(dialog, target, credentials, why);
        true
    }

    /// A 2xx again for the INVITE that made `leg`'s dialog (ours as its UAC).
    pub(super) fn leg_answered_again(&mut self, leg: Leg, response: &Response) {
        let Some(attempt) = self.legs[leg].uac_invite.as_ref() else {
            return;
        };
        let (invite, target) = (attempt.invite.clone(), attempt.target);
        let ours = self.legs[leg]
            .dialog
            .as_ref()
            .map(|d| d.remote_tag().to_string());
        let credentials = self.leg_outbound(leg);
        self.answer_again(
            &invite,
            target,
            response,
            credentials,
            |d| ours.as_deref() == Some(d.remote_tag()),
            "forked answer not used",
        );
    }

    /// A response to an INVITE the call gave up on: a 2xx is ACKed (each time it reaches the
    /// call) and released (once); a late ringing is cancelled.
    pub(super) fn handle_stale_response(&mut self, branch: &str, response: &Response) {
        let Some(attempt) = self.retired.get_mut(branch) else {
            return;
        };
        let (invite, target, released) = (attempt.invite.clone(), attempt.target, attempt.released);
        if (200..300).contains(&response.status) {
            // The peer of an attempt given up on is not kept: a challenge to this BYE fails
            // it (the dialog was never used).
            let released_now = self.answer_again(
                &invite,
                target,
                response,
                None,
                |_| released,
                "answer to an attempt given up",
            );
            if released_now {
                if let Some(attempt) = self.retired.get_mut(branch) {
                    attempt.released = true;
                }
            }
        } else if (101..200).contains(&response.status) {
            // A peer we gave up on is ringing after all: cancel it.
            self.actions.push_back(Action::SendRequest {
                request: message::cancel_for(&invite),
                target,
            });
        }
        if response.status >= 200 {
            self.retired.settled(branch);
        }
    }

    /// BYE to `dialog` (one the call does not use), answering a challenge with `credentials`.
    pub(super) fn bye_dialog(
        &mut self,
        dialog: Dialog,
        target: Target,
        credentials: Option<OutboundCredentials>,
        why: &str,
    ) {
        tracing::debug!(call = %self.id, why, "releasing dialog");
        self.bye_dialog_with_reason(dialog, target, credentials, None);
    }

    /// BYE to `dialog`, with RFC 3326 Reason `reason`; the call waits for its final answer
    /// (bounded by the cleanup timer), a challenge to it answered with `credentials`.
    pub(super) fn bye_dialog_with_reason(
        &mut self,
        mut dialog: Dialog,
        target: Target,
        credentials: Option<OutboundCredentials>,
        reason: Option<&str>,
    ) {
        let mut bye = self.with_via(dialog.request(Method::Bye), target);
        if let Some(text) = reason {
            // RFC 3326: say why the gateway ended the call.
            bye.headers
                .push("Reason", format!("SIP;cause=200;text=\"{text}\""));
        }
        if let Some(branch) = bye.top_via().and_then(|v| v.branch().map(str::to_string)) {
            self.pending.insert(branch);
        }
        self.send_in_dialog(bye, target, credentials);
    }
}
