//! A SIP dialog (RFC 3261 §12): the state two user agents share, and the in-dialog requests built
//! from it. Pure data; the call model owns one per leg.

use bytes::Bytes;

use super::message::{Headers, Method, NameAddr, Request, Response, Uri};

/// One dialog, seen from the gateway's side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dialog {
    call_id: String,
    local_tag: String,
    remote_tag: String,
    /// Our From (UAC) or To (UAS) URI, without tag.
    local: NameAddr,
    /// The other side's, without tag.
    remote: NameAddr,
    /// The Request-URI of in-dialog requests: the remote Contact (§12.1.1, §12.1.2).
    remote_target: Uri,
    /// Route headers of in-dialog requests, from Record-Route (§12.1).
    route_set: Vec<String>,
    local_sequence: u32,
    remote_sequence: Option<u32>,
}

impl Dialog {
    /// UAS side (§12.1.1): from the request we answer with `local_tag`.
    pub fn new_uas(request: &Request, local_tag: &str, initial_sequence: u32) -> Option<Dialog> {
        let from = request.from()?;
        let to = request.to()?;
        Some(Dialog {
            call_id: request.call_id().to_string(),
            local_tag: local_tag.to_string(),
            remote_tag: from.tag().unwrap_or_default().to_string(),
            local: without_tag(to),
            remote: without_tag(from),
            remote_target: request
                .contact()
                .map(|c| c.uri)
                .unwrap_or_else(|| request.uri.clone()),
            route_set: request
                .headers
                .list("Record-Route")
                .map(str::to_string)
                .collect(),
            local_sequence: initial_sequence,
            remote_sequence: request.cseq().map(|c| c.sequence),
        })
    }

    /// UAC side (§12.1.2): from our request and the response that created the dialog.
    pub fn new_uac(request: &Request, response: &Response) -> Option<Dialog> {
        let from = request.from()?;
        let to = response.to()?;
        let mut route_set: Vec<String> = response
            .headers
            .list("Record-Route")
            .map(str::to_string)
            .collect();
        route_set.reverse();
        Some(Dialog {
            call_id: request.call_id().to_string(),
            local_tag: from.tag().unwrap_or_default().to_string(),
            remote_tag: to.tag().unwrap_or_default().to_string(),
            local: without_tag(from),
            remote: without_tag(to),
            remote_target: response
                .contact()
                .map(|c| c.uri)
                .unwrap_or_else(|| request.uri.clone()),
            route_set,
            local_sequence: request.cseq().map_or(1, |c| c.sequence),
            remote_sequence: None,
        })
    }

    pub fn call_id(&self) -> &str {
        &self.call_id
    }

    pub fn local_tag(&self) -> &str {
        &self.local_tag
    }

    pub fn remote_tag(&self) -> &str {
        &self.remote_tag
    }

    /// Whether `request` belongs to this dialog (Call-ID and both tags, §12.2.2).
    pub fn matches(&self, request: &Request) -> bool {
        request.call_id() == self.call_id
            && request
                .to()
                .is_some_and(|t| t.tag() == Some(self.local_tag.as_str()))
            && request
                .from()
                .is_some_and(|f| f.tag().unwrap_or_default() == self.remote_tag)
    }

    /// §12.2.2: a remote CSeq lower than the last one is out of order (500). Returns false then.
    pub fn accept_remote_sequence(&mut self, request: &Request) -> bool {
        let Some(sequence) = request.cseq().map(|c| c.sequence) else {
            return false;
        };
        if request.method == Method::Ack || request.method == Method::Cancel {
            return true;
        }
        match self.remote_sequence {
            Some(last) if sequence < last => false,
            _ => {
                self.remote_sequence = Some(sequence);
                true
            }
        }
    }

    /// Updates the remote target from a target-refresh request or its 2xx (§12.2.1.2, §12.2.2).
    pub fn refresh_target(&mut self, contact: Option<NameAddr>) {
        if let Some(contact) = contact {
            self.remote_target = contact.uri;
        }
    }

    /// A new in-dialog request (§12.2.1.1) with the next local CSeq. The caller adds Via, Contact
    /// and a body.
    pub fn request(&mut self, method: Method) -> Request {
        let sequence = self.next_sequence();
        self.build(method, sequence)
    }

    /// Takes the next local CSeq (§12.2.1.1) for a request built elsewhere: one sent again
    /// with credentials after a challenge (§8.1.3.5), so later requests keep counting up.
    pub fn next_sequence(&mut self) -> u32 {
        self.local_sequence = self.local_sequence.wrapping_add(1) & 0x7fff_ffff;
        self.local_sequence
    }

    /// The ACK for a 2xx to our INVITE with CSeq `invite_sequence` (§13.2.2.4).
    pub fn ack(&self, invite_sequence: u32) -> Request {
        self.build(Method::Ack, invite_sequence)
    }

    fn build(&self, method: Method, sequence: u32) -> Request {
        let mut headers = Headers::new();
        headers.push("Max-Forwards", "70");
        headers.push(
            "From",
            self.local.clone().with_tag(&self.local_tag).to_string(),
        );
        let to = if self.remote_tag.is_empty() {
            self.remote.to_string()
        } else {
            self.remote.clone().with_tag(&self.remote_tag).to_string()
        };
        headers.push("To", to);
        headers.push("Call-ID", self.call_id.clone());
        headers.push("CSeq", format!("{sequence} {method}"));
        for route in &self.route_set {
            headers.push("Route", route.clone());
        }
        Request {
            method,
            uri: self.remote_target.clone(),
            headers,
            body: Bytes::new(),
        }
    }
}

fn without_tag(mut name_addr: NameAddr) -> NameAddr {
    name_addr
        .params
        .retain(|(n, _)| !n.eq_ignore_ascii_case("tag"));
    name_addr
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::message::{parse, Message};

    fn invite() -> Request {
        let text = "INVITE sip:12345@gw SIP/2.0\r\n\
Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKa\r\n\
Record-Route: <sip:p1;lr>, <sip:p2;lr>\r\n\
From: <sip:13800138000@carrier>;tag=caller\r\n\
To: <sip:12345@gw>\r\n\
Call-ID: c1\r\n\
CSeq: 5 INVITE\r\n\
Contact: <sip:13800138000@127.0.0.1:5070>\r\n\
Content-Length: 0\r\n\r\n";
        match parse(text.as_bytes()) {
            Ok(Message::Request(r)) => r,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn uas_dialog_builds_bye_per_12_2_1_1() {
        let request = invite();
        let mut dialog = Dialog::new_uas(&request, "gw1", 100).unwrap_or_else(|| panic!("dialog"));
        let bye = dialog.request(Method::Bye);
        assert_eq!(bye.uri.to_string(), "sip:13800138000@127.0.0.1:5070");
        assert_eq!(bye.headers.get("From"), Some("<sip:12345@gw>;tag=gw1"));
        assert_eq!(
            bye.headers.get("To"),
            Some("<sip:13800138000@carrier>;tag=caller")
        );
        assert_eq!(bye.headers.get("CSeq"), Some("101 BYE"));
        assert_eq!(
            bye.headers.get_all("Route").collect::<Vec<_>>(),
            vec!["<sip:p1;lr>", "<sip:p2;lr>"]
        );
    }

    #[test]
    fn uac_dialog_reverses_route_set_and_acks_with_invite_cseq() {
        let request = invite();
        let mut response = Response::for_request(&request, 200, Some("callee"));
        // The request's Record-Route, copied (§12.1.1), is what the proxies on the path put.
        response
            .headers
            .set("Record-Route", "<sip:p1;lr>, <sip:p2;lr>");
        response
            .headers
            .push("Contact", "<sip:agent@127.0.0.1:5080>");
        let dialog = Dialog::new_uac(&request, &response).unwrap_or_else(|| panic!("dialog"));
        let ack = dialog.ack(5);
        assert_eq!(ack.uri.to_string(), "sip:agent@127.0.0.1:5080");
        assert_eq!(ack.headers.get("CSeq"), Some("5 ACK"));
        assert_eq!(
            ack.headers.get_all("Route").collect::<Vec<_>>(),
            vec!["<sip:p2;lr>", "<sip:p1;lr>"]
        );
        assert_eq!(dialog.remote_tag(), "callee");
    }

    #[test]
    fn remote_sequence_must_not_go_back() {
        let request = invite();
        let mut dialog = Dialog::new_uas(&request, "gw1", 1).unwrap_or_else(|| panic!("dialog"));
        let mut older = request.clone();
        older.headers.set("CSeq", "4 BYE");
        older.method = Method::Bye;
        assert!(!dialog.accept_remote_sequence(&older));
        older.headers.set("CSeq", "6 BYE");
        assert!(dialog.accept_remote_sequence(&older));
    }
}
