//! How the transaction layer names transactions and matches messages to them, as pure
//! functions of a message: [`ClientKey`] (§17.1.3), [`ServerKey`] (§17.2.3, with ACK for a
//! non-2xx and CANCEL pointing at their INVITE), [`MergeKey`] (merged requests, §8.2.2.2),
//! [`AcceptedKey`] (an ACK for a 2xx finding the accepted INVITE, RFC 6026) and the dialog a
//! message belongs to ([`DialogKey`]). The endpoint keeps the tables; this module only says
//! which key a message has.

use crate::sip::message::{Method, Request, Response};

use super::DialogKey;

/// The magic cookie that marks an RFC 3261 branch (§8.1.1.7); without it a request comes from
/// an RFC 2543 element and its branch cannot be trusted to be unique.
const MAGIC_COOKIE: &str = "z9hG4bK";

/// The port a Via's sent-by means when it names none (§18.2.1, §19.1.1).
const DEFAULT_PORT: u16 = 5060;

/// §17.1.3: a response matches a client transaction by the branch of its top Via and the
/// method of its CSeq (so a CANCEL's 200 does not end the INVITE it cancels).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientKey {
    branch: String,
    method: Method,
}

impl ClientKey {
    /// The key of the client transaction `request` starts: its top Via branch and its
    /// method; None without a branch (the call model always writes one, see
    /// [`via_for`](super::via_for)).
    pub fn for_request(request: &Request) -> Option<ClientKey> {
        let branch = request.top_via()?.branch()?.to_string();
        Some(ClientKey {
            branch,
            method: request.method.clone(),
        })
    }

    /// The key of the client transaction `response` answers (§17.1.3): top Via branch and
    /// CSeq method; None when either is missing.
    pub fn for_response(response: &Response) -> Option<ClientKey> {
        let (via, cseq) = (response.top_via()?, response.cseq()?);
        let branch = via.branch()?.to_string();
        Some(ClientKey {
            branch,
            method: cseq.method,
        })
    }

    pub fn branch(&self) -> &str {
        &self.branch
    }

    pub fn method(&self) -> &Method {
        &self.method
    }
}

/// §17.2.3: a request matches a server transaction by the branch and sent-by of its top Via
/// and its method, where an ACK counts as the INVITE it acknowledges; a CANCEL is a
/// transaction of its own ([`ServerKey::cancelled_invite`] names the one it cancels).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServerKey {
    branch: String,
    sent_by: String,
    method: Method,
}

impl ServerKey {
    /// The key of the server transaction `request` belongs to; None without a top Via. A
    /// request without a branch gets the empty branch (see [`ServerKey::is_rfc3261`]).
    pub fn for_request(request: &Request) -> Option<ServerKey> {
        let via = request.top_via()?;
        let method = match request.method {
            // §17.2.3: the ACK for a non-2xx final response has the INVITE's branch.
            Method::Ack => Method::Invite,
            ref other => other.clone(),
        };
        Some(ServerKey {
            branch: via.branch().unwrap_or_default().to_string(),
            sent_by: format!("{}:{}", via.host, via.port.unwrap_or(DEFAULT_PORT)),
            method,
        })
    }

    /// The INVITE transaction a CANCEL with this key cancels (§9.2: same branch and sent-by,
    /// method INVITE).
    pub fn cancelled_invite(&self) -> ServerKey {
        ServerKey {
            method: Method::Invite,
            ..self.clone()
        }
    }

    /// Whether the branch carries the RFC 3261 magic cookie, so that branch matching
    /// (§17.2.3) applies. Requests from RFC 2543 elements are not matched to an existing
    /// transaction: the endpoint treats each as new, as the §17.2.3 fallback (matching on
    /// Request-URI, tags, Call-ID, CSeq and top Via) is not implemented.
    pub fn is_rfc3261(&self) -> bool {
        self.branch.starts_with(MAGIC_COOKIE)
    }

    pub fn branch(&self) -> &str {
        &self.branch
    }
}

/// §8.2.2.2: a request without To tag is named by its From tag, Call-ID and CSeq; a second one
/// with the same name but another branch reached us by another path (a merged request, 482).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MergeKey {
    from_tag: String,
    call_id: String,
    cseq: u32,
    method: Method,
}

impl MergeKey {
    /// The key of `request` if it is out of a dialog (no To tag) and has a From tag and CSeq.
    pub fn for_request(request: &Request) -> Option<MergeKey> {
        if request.to().is_some_and(|to| to.tag().is_some()) {
            return None;
        }
        let from_tag = request.from()?.tag()?.to_string();
        let cseq = request.cseq()?;
        Some(MergeKey {
            from_tag,
            call_id: request.call_id().to_string(),
            cseq: cseq.sequence,
            method: request.method.clone(),
        })
    }
}

/// Whether a request arriving on `branch` with `merge` is a merged request (§8.2.2.2): an
/// earlier request with the same key is still in a transaction on `earlier_branch`, and the
/// branches differ (the same branch is a retransmission, not a merge).
pub fn is_merged(earlier_branch: Option<&str>, branch: &str) -> bool {
    earlier_branch.is_some_and(|earlier| earlier != branch)
}

/// An ACK for a 2xx has a branch of its own (§17.1.1.3, §13.2.2.4), so it finds the accepted
/// INVITE (RFC 6026 §7.1) by Call-ID, CSeq number and To tag instead.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AcceptedKey {
    call_id: String,
    cseq: u32,
    to_tag: String,
}

impl AcceptedKey {
    /// The key a 2xx to an INVITE leaves behind; None without CSeq or To tag.
    pub fn for_response(response: &Response) -> Option<AcceptedKey> {
        let cseq = response.cseq()?;
        let to_tag = response.to()?.tag()?.to_string();
        Some(AcceptedKey {
            call_id: response
                .headers
                .get("Call-ID")
                .unwrap_or_default()
                .to_string(),
            cseq: cseq.sequence,
            to_tag,
        })
    }

    /// The key an ACK looks for; None without CSeq or To tag.
    pub fn for_ack(ack: &Request) -> Option<AcceptedKey> {
        let to_tag = ack.to()?.tag()?.to_string();
        let cseq = ack.cseq()?;
        Some(AcceptedKey {
            call_id: ack.call_id().to_string(),
            cseq: cseq.sequence,
            to_tag,
        })
    }
}

/// The dialog an inbound request belongs to (§12.2.2): Call-ID and the To tag, which is ours;
/// None for a request outside a dialog.
pub fn dialog_of_request(request: &Request) -> Option<DialogKey> {
    let tag = request.to()?.tag()?.to_string();
    Some(DialogKey {
        call_id: request.call_id().to_string(),
        local_tag: tag,
    })
}

/// The dialog an inbound response belongs to (§12.1.2): Call-ID and the From tag, which is
/// ours; an absent tag is the empty one, which names no dialog.
pub fn dialog_of_response(response: &Response) -> DialogKey {
    let call_id = response
        .headers
        .get("Call-ID")
        .unwrap_or_default()
        .to_string();
    let local_tag = response
        .headers
        .get("From")
        .and_then(|f| crate::sip::message::NameAddr::parse(f).ok())
        .and_then(|f| f.tag().map(str::to_string))
        .unwrap_or_default();
    DialogKey { call_id, local_tag }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::message::{self, Message};

    /// A request from 10.0.0.5 with the given start line, top Via branch, To and CSeq.
    fn request(start: &str, branch: &str, to: &str, cseq: &str) -> Request {
        let text = format!(
            "{start} SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.5:5070;branch={branch}\r\n\
From: <sip:a@10.0.0.5>;tag=caller\r\nTo: {to}\r\nCall-ID: c1@10.0.0.5\r\nCSeq: {cseq}\r\n\
Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
        );
        match message::parse(text.as_bytes()) {
            Ok(Message::Request(request)) => request,
            other => panic!("{other:?}"),
        }
    }

    fn invite(branch: &str) -> Request {
        request("INVITE sip:1@gw", branch, "<sip:1@gw>", "1 INVITE")
    }

    #[test]
    fn a_retransmitted_invite_maps_to_the_same_server_key() {
        let first = ServerKey::for_request(&invite("z9hG4bK1"));
        assert!(first.is_some());
        assert_eq!(first, ServerKey::for_request(&invite("z9hG4bK1")));
        assert_ne!(first, ServerKey::for_request(&invite("z9hG4bK2")));
    }

    #[test]
    fn the_ack_for_a_non_2xx_maps_to_the_invites_server_transaction() {
        let ack = request("ACK sip:1@gw", "z9hG4bK1", "<sip:1@gw>;tag=gw", "1 ACK");
        assert_eq!(
            ServerKey::for_request(&ack),
            ServerKey::for_request(&invite("z9hG4bK1"))
        );
    }

    #[test]
    fn an_ack_for_a_2xx_with_its_own_branch_does_not_map_to_the_invite() {
        let ack = request("ACK sip:1@gw", "z9hG4bKack", "<sip:1@gw>;tag=gw", "1 ACK");
        assert_ne!(
            ServerKey::for_request(&ack),
            ServerKey::for_request(&invite("z9hG4bK1"))
        );
    }

    #[test]
    fn an_ack_for_a_2xx_finds_the_accepted_invite_by_call_id_cseq_and_to_tag() {
        let invite = invite("z9hG4bK1");
        let mut ok = Response::for_request(&invite, 200, Some("gw"));
        ok.headers.push("Contact", "<sip:gw@192.0.2.1>");
        let accepted = AcceptedKey::for_response(&ok);
        assert!(accepted.is_some());
        let ack = request("ACK sip:1@gw", "z9hG4bKack", "<sip:1@gw>;tag=gw", "1 ACK");
        assert_eq!(AcceptedKey::for_ack(&ack), accepted);
        let other_tag = request("ACK sip:1@gw", "z9hG4bKack", "<sip:1@gw>;tag=fork", "1 ACK");
        assert_ne!(AcceptedKey::for_ack(&other_tag), accepted);
        let no_tag = request("ACK sip:1@gw", "z9hG4bKack", "<sip:1@gw>", "1 ACK");
        assert_eq!(AcceptedKey::for_ack(&no_tag), None);
    }

    #[test]
    fn a_cancel_is_its_own_transaction_and_names_the_invite_it_cancels() {
        let cancel = request("CANCEL sip:1@gw", "z9hG4bK1", "<sip:1@gw>", "1 CANCEL");
        let Some(cancel_key) = ServerKey::for_request(&cancel) else {
            panic!("no key");
        };
        let invite_key = ServerKey::for_request(&invite("z9hG4bK1"));
        assert_ne!(Some(cancel_key.clone()), invite_key);
        assert_eq!(Some(cancel_key.cancelled_invite()), invite_key);
        let stray = request("CANCEL sip:1@gw", "z9hG4bK9", "<sip:1@gw>", "1 CANCEL");
        let stray_target = ServerKey::for_request(&stray).map(|k| k.cancelled_invite());
        assert_ne!(stray_target, invite_key);
    }

    #[test]
    fn the_same_branch_from_another_sent_by_is_another_server_transaction() {
        let text = "INVITE sip:1@gw SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.6:5070;branch=z9hG4bK1\r\n\
From: <sip:a@10.0.0.5>;tag=caller\r\nTo: <sip:1@gw>\r\nCall-ID: c1@10.0.0.5\r\nCSeq: 1 INVITE\r\n\
Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n";
        let Ok(Message::Request(other_host)) = message::parse(text.as_bytes()) else {
            panic!("parse");
        };
        assert_ne!(
            ServerKey::for_request(&other_host),
            ServerKey::for_request(&invite("z9hG4bK1"))
        );
    }

    #[test]
    fn only_a_branch_with_the_magic_cookie_is_matched_rfc3261_style() {
        let keys = [invite("z9hG4bK1"), invite("1234")].map(|r| ServerKey::for_request(&r));
        assert_eq!(
            keys.map(|k| k.is_some_and(|k| k.is_rfc3261())),
            [true, false]
        );
    }

    #[test]
    fn a_response_maps_to_the_client_transaction_by_top_via_branch_and_cseq_method() {
        let invite = invite("z9hG4bK1");
        let sent = ClientKey::for_request(&invite);
        assert!(sent.is_some());
        let ringing = Response::for_request(&invite, 180, Some("b"));
        assert_eq!(ClientKey::for_response(&ringing), sent);
        let cancel = request("CANCEL sip:1@gw", "z9hG4bK1", "<sip:1@gw>", "1 CANCEL");
        let cancelled = Response::for_request(&cancel, 200, Some("b"));
        assert_ne!(
            ClientKey::for_response(&cancelled),
            sent,
            "the CANCEL's 200 does not answer the INVITE"
        );
        assert_eq!(
            ClientKey::for_response(&cancelled),
            ClientKey::for_request(&cancel)
        );
        assert_eq!(
            sent.map(|k| k.branch().to_string()),
            Some("z9hG4bK1".into())
        );
    }

    #[test]
    fn a_request_without_branch_starts_no_client_transaction() {
        let text = "OPTIONS sip:1@gw SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.5\r\n\
From: <sip:a@10.0.0.5>;tag=caller\r\nTo: <sip:1@gw>\r\nCall-ID: c1@10.0.0.5\r\nCSeq: 1 OPTIONS\r\n\
Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n";
        let Ok(Message::Request(options)) = message::parse(text.as_bytes()) else {
            panic!("parse");
        };
        assert_eq!(ClientKey::for_request(&options), None);
    }

    #[test]
    fn two_requests_with_the_same_from_tag_call_id_and_cseq_but_different_branches_are_merged() {
        let (first, second) = (invite("z9hG4bK1"), invite("z9hG4bK2"));
        let key = MergeKey::for_request(&first);
        assert!(key.is_some());
        assert_eq!(MergeKey::for_request(&second), key);
        assert!(is_merged(Some("z9hG4bK1"), "z9hG4bK2"));
        assert!(!is_merged(Some("z9hG4bK1"), "z9hG4bK1"), "a retransmission");
        assert!(!is_merged(None, "z9hG4bK2"), "the first of its name");
    }

    #[test]
    fn a_request_in_a_dialog_has_no_merge_key() {
        let bye = request("BYE sip:1@gw", "z9hG4bK1", "<sip:1@gw>;tag=gw", "2 BYE");
        assert_eq!(MergeKey::for_request(&bye), None);
        let next = request("INVITE sip:1@gw", "z9hG4bK1", "<sip:1@gw>", "2 INVITE");
        assert_ne!(
            MergeKey::for_request(&next),
            MergeKey::for_request(&invite("z9hG4bK1"))
        );
    }

    #[test]
    fn a_request_names_its_dialog_by_call_id_and_to_tag_a_response_by_from_tag() {
        let bye = request("BYE sip:1@gw", "z9hG4bK1", "<sip:1@gw>;tag=gw", "2 BYE");
        let expected = DialogKey {
            call_id: "c1@10.0.0.5".into(),
            local_tag: "gw".into(),
        };
        assert_eq!(dialog_of_request(&bye), Some(expected));
        assert_eq!(dialog_of_request(&invite("z9hG4bK1")), None);
        let ok = Response::for_request(&invite("z9hG4bK1"), 200, Some("b"));
        assert_eq!(
            dialog_of_response(&ok),
            DialogKey {
                call_id: "c1@10.0.0.5".into(),
                local_tag: "caller".into(),
            }
        );
    }
}
