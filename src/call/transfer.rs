//! The pure parts of a transfer that the call model uses: what a REFER asks for (RFC 3515 §2.1),
//! the NOTIFYs of its implicit subscription (RFC 3515 §2.4.4, RFC 6665 §4.1.3), and the
//! identity a transferred call carries to its target (RFC 3325, RFC 3323, RFC 7044, RFC 5806).

use bytes::Bytes;

use crate::routing::{DiversionHeader, Peer};
use crate::sip::dialog::Dialog;
use crate::sip::message::{self, Headers, Host, Method, NameAddr, Request, Uri};

/// The header that carries the linkage id to the transfer target, so its PBX or CAD can show it
/// and later quote it back.
pub const LINKAGE_HEADER: &str = "X-Hotline-Linkage";

/// What started a transfer. REFER, hotkeys and the work-order API all reach
/// [`crate::call::model::Call::transfer`]; this only says which door was used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Refer,
    /// REFER with Replaces: the agent consulted the target first (RFC 5589 §7).
    Attended,
    Hotkey,
    Api,
    /// The agent had left and the transfer failed: the citizen is sent back to the number
    /// they first called.
    Fallback,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Refer => "refer",
            Trigger::Attended => "attended",
            Trigger::Hotkey => "hotkey",
            Trigger::Api => "api",
            Trigger::Fallback => "fallback",
        }
    }
}

/// Why a REFER cannot be honoured as asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferError {
    #[error("no Refer-To header")]
    Missing,
    #[error("more than one Refer-To header")]
    Several,
    #[error("Refer-To is not a URI: {0}")]
    Malformed(String),
    #[error("Refer-To names no number")]
    NoNumber,
}

/// The target a REFER names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReferTarget {
    /// The user part as a dialled number; routed through `[[route]]` whatever host it names.
    pub number: String,
    /// The `Replaces` header embedded in Refer-To (RFC 3891 §5): an attended transfer.
    pub replaces: Option<String>,
}

/// Reads the Refer-To of a REFER (§2.1; the compact form `r` is normalised by the parser).
///
/// ```
/// use hotline_gateway::call::transfer::refer_target;
/// use hotline_gateway::sip::message::{parse, Message};
///
/// let text = "REFER sip:gw@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5080;branch=z9hG4bKr1\r\n\
/// From: <sip:agent@127.0.0.1>;tag=a\r\nTo: <sip:13800138000@127.0.0.1>;tag=b\r\nCall-ID: r1\r\n\
/// CSeq: 2 REFER\r\nr: <sip:110@gateway.example;user=phone>\r\nContent-Length: 0\r\n\r\n";
/// let Ok(Message::Request(refer)) = parse(text.as_bytes()) else { panic!() };
/// assert_eq!(refer_target(&refer).map(|t| t.number).as_deref(), Ok("110"));
/// ```
///
/// # Errors
/// [`ReferError`] for a missing, repeated, unparsable or number-less Refer-To (all 400).
pub fn refer_target(refer: &Request) -> Result<ReferTarget, ReferError> {
    let mut values = refer.headers.get_all("Refer-To");
    let value = values.next().ok_or(ReferError::Missing)?;
    if values.next().is_some() {
        return Err(ReferError::Several);
    }
    let target = NameAddr::parse(value).map_err(|e| ReferError::Malformed(e.to_string()))?;
    let number = target
        .uri
        .number()
        .filter(|n| !n.is_empty() && n.chars().all(is_dial_character))
        .ok_or(ReferError::NoNumber)?;
    let replaces = target.uri.headers.as_deref().and_then(|headers| {
        headers.split('&').find_map(|h| {
            let (name, value) = h.split_once('=')?;
            name.eq_ignore_ascii_case("Replaces")
                .then(|| percent_decode(value))
        })
    });
    Ok(ReferTarget { number, replaces })
}

fn is_dial_character(c: char) -> bool {
    c.is_ascii_digit() || matches!(c, '+' | '*' | '#')
}

/// `%XX` escapes of a URI header value (RFC 3261 §19.1.1), decoded byte-wise; anything
/// malformed is kept as it is.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            if let Some(value) = text
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(value);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A NOTIFY of the REFER's implicit subscription carrying the target's `status` as a
/// `message/sipfrag` status line (RFC 3515 §2.4.5). A final status terminates the subscription;
/// until then it lasts `expires` seconds (RFC 3515 §2.4.4 leaves the duration to the notifier).
/// The caller adds Via and Contact.
pub fn notify(dialog: &mut Dialog, refer_sequence: u32, status: u16, expires: u32) -> Request {
    let mut request = dialog.request(Method::Notify);
    request
        .headers
        .push("Event", format!("refer;id={refer_sequence}"));
    let state = if status >= 200 {
        "terminated;reason=noresource".to_string()
    } else {
        format!("active;expires={expires}")
    };
    request.headers.push("Subscription-State", state);
    request
        .headers
        .push("Content-Type", "message/sipfrag;version=2.0");
    request.body = Bytes::from(format!(
        "SIP/2.0 {status} {}\r\n",
        message::reason_phrase(status)
    ));
    request
}

/// The longest display name passed on, in bytes (about 40 Chinese characters): longer ones are
/// cut at a character boundary. A caller's name reaches every desk and comes back in their
/// answers; a 6 KiB one made the desk's own responses too long to read.
pub const MAX_DISPLAY_NAME: usize = 128;
/// The longest From user part (a number) a new call may present; longer is refused 400.
pub const MAX_USER_PART: usize = 64;
/// P-Asserted-Identity values passed on: at most two (RFC 3325 §9.1: one sip/sips and one
/// tel URI), each at most this long; others are dropped.
pub const MAX_ASSERTED_LENGTH: usize = 256;

/// `text` cut to at most `max` bytes, at a character boundary.
fn bounded(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

/// Who the citizen is, as their INVITE presented them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallerIdentity {
    /// The number shown: the From user part, or the asserted one when From is anonymous.
    pub number: String,
    pub display_name: Option<String>,
    /// The From user part as sent (may be `anonymous`).
    pub from_user: String,
    /// P-Asserted-Identity values as received.
    pub asserted: Vec<String>,
    /// The caller asked that its identity be withheld (`Privacy: id`, RFC 3325 §9.3).
    pub private: bool,
    /// The Privacy header as received.
    pub privacy: Option<String>,
}

impl CallerIdentity {
    pub fn of(invite: &Request) -> CallerIdentity {
        let from = invite.from();
        let from_user = from
            .as_ref()
            .and_then(|f| f.uri.user.clone())
            .unwrap_or_else(|| "anonymous".into());
        let asserted: Vec<String> = invite
            .headers
            .get_all("P-Asserted-Identity")
            .flat_map(message::header::split_list)
            .filter(|value| value.len() <= MAX_ASSERTED_LENGTH)
            .take(2)
            .map(str::to_string)
            .collect();
        let asserted_number = asserted
            .iter()
            .filter_map(|v| NameAddr::parse(v).ok())
            .find_map(|n| n.uri.number().filter(|n| !n.is_empty()));
        let from_number = from.as_ref().and_then(|f| f.uri.number());
        let anonymous = from_user.eq_ignore_ascii_case("anonymous");
        let number = match (anonymous, asserted_number, from_number) {
            (true, Some(asserted), _) => asserted,
            (_, _, Some(from)) => from,
            (_, Some(asserted), None) => asserted,
            _ => "anonymous".into(),
        };
        let privacy = invite.headers.get("Privacy").map(str::to_string);
        let private = privacy.as_deref().is_some_and(|p| {
            p.split(';')
                .map(str::trim)
                .any(|token| token.eq_ignore_ascii_case("id"))
        });
        CallerIdentity {
            number,
            display_name: from
                .and_then(|f| f.display_name)
                .map(|name| bounded(name, MAX_DISPLAY_NAME)),
            from_user,
            asserted,
            private,
            privacy,
        }
    }

    /// Why a new call's INVITE presents an identity no desk should get, if it does: a From
    /// user part longer than any number ([`MAX_USER_PART`]).
    pub fn refused(invite: &Request) -> Option<&'static str> {
        let from = invite.from()?;
        from.uri
            .user
            .as_ref()
            .is_some_and(|user| user.len() > MAX_USER_PART)
            .then_some("From user part too long")
    }

    /// A party known only by the number the gateway reached it at (a called party, a transfer
    /// target): shown as that number, asserted by the gateway, no privacy asked.
    pub fn reached_at(number: &str) -> CallerIdentity {
        CallerIdentity {
            number: number.to_string(),
            display_name: None,
            from_user: number.to_string(),
            asserted: Vec::new(),
            private: false,
            privacy: None,
        }
    }

    /// Whether `peer` may learn the identity (RFC 3325 §5: only inside the trust domain when
    /// privacy was asked for).
    pub fn shown_to(&self, peer: &Peer) -> bool {
        !self.private || peer.trusted
    }

    /// From, P-Asserted-Identity and Privacy of a call the gateway places to `peer` on the
    /// caller's behalf. `assert` makes the gateway assert the number itself when the caller's
    /// INVITE carried no P-Asserted-Identity (transfers: the target must see the citizen's
    /// number, never the agent's). Returns the From value without tag.
    pub fn present(
        &self,
        peer: &Peer,
        local: Host,
        assert: bool,
        headers: &mut Headers,
    ) -> NameAddr {
        if !self.shown_to(peer) {
            // RFC 3323 §4.1.1: an anonymous From; the identity is not passed on.
            if let Some(privacy) = &self.privacy {
                headers.push("Privacy", privacy.clone());
            }
            return NameAddr {
                display_name: Some("Anonymous".into()),
                uri: Uri::sip(
                    Some("anonymous"),
                    Host::Name("anonymous.invalid".into()),
                    None,
                ),
                params: Vec::new(),
            };
        }
        let user = if assert && self.from_user.eq_ignore_ascii_case("anonymous") && !self.private {
            self.number.clone()
        } else {
            self.from_user.clone()
        };
        let mut from_uri = Uri::sip(Some(&user), local.clone(), None);
        if user.starts_with('+') {
            from_uri.params.push(("user".into(), Some("phone".into())));
        }
        if self.asserted.is_empty() {
            if assert && self.number != "anonymous" {
                let mut uri = Uri::sip(Some(&self.number), local, None);
                if self.number.starts_with('+') {
                    uri.params.push(("user".into(), Some("phone".into())));
                }
                headers.push("P-Asserted-Identity", NameAddr::new(uri).to_string());
            }
        } else {
            for value in &self.asserted {
                headers.push("P-Asserted-Identity", with_local_host(value, &local));
            }
        }
        if let Some(privacy) = &self.privacy {
            headers.push("Privacy", privacy.clone());
        }
        NameAddr {
            display_name: self.display_name.clone(),
            uri: from_uri,
            params: Vec::new(),
        }
    }
}

/// A name-addr passed on to a peer (P-Asserted-Identity, Referred-By) with an IP address as
/// its host rewritten to ours on the peer's network (`local`): the address of a party on
/// another network is none the peer could reach, nor one it should learn. A domain, a `tel:`
/// URI, or a value that does not parse goes on as it was.
pub fn with_local_host(value: &str, local: &Host) -> String {
    match NameAddr::parse(value) {
        Ok(mut address) if matches!(address.uri.host, Host::Ip(_)) => {
            address.uri.host = local.clone();
            address.uri.port = None;
            address.to_string()
        }
        _ => value.to_string(),
    }
}

/// Records the line the call was transferred from (`diverted_from`, the number the citizen
/// called) as the diverting party, in the header(s) `peer` reads.
pub fn add_diversion(
    headers: &mut Headers,
    peer: &Peer,
    diverted_from: &str,
    local: Host,
    target: &Uri,
) {
    let from = Uri::sip(Some(diverted_from), local, None);
    if matches!(
        peer.diversion,
        DiversionHeader::HistoryInfo | DiversionHeader::Both
    ) {
        // RFC 7044 §9-10: entry 1 is the number first called, carrying why it was retargeted
        // (cause 480, "deflection immediate response" in RFC 4458's mapping, as the Diversion
        // below); 1.1 the new target, `mp` when the user changed, `rc` when only the host did.
        let tag = if target.user.as_deref() == Some(diverted_from) {
            "rc"
        } else {
            "mp"
        };
        headers.push(
            "History-Info",
            format!("<{from}?Reason=SIP%3Bcause%3D480>;index=1, <{target}>;index=1.1;{tag}=1"),
        );
    }
    if matches!(
        peer.diversion,
        DiversionHeader::Diversion | DiversionHeader::Both
    ) {
        // RFC 5806 §4: the user deflected the call.
        headers.push("Diversion", format!("<{from}>;reason=deflection;counter=1"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::TransportKind;
    use crate::sip::message::{parse, Message};

    fn request(extra: &str) -> Request {
        let text = format!(
            "INVITE sip:12345@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKi\r\n\
{extra}To: <sip:12345@127.0.0.1>\r\nCall-ID: t1\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
        );
        match parse(text.as_bytes()) {
            Ok(Message::Request(r)) => r,
            other => panic!("{other:?}"),
        }
    }

    fn peer(trusted: bool, diversion: DiversionHeader) -> Peer {
        let mut peer = Peer::new(
            "police",
            "127.0.0.1:5090".parse().unwrap_or_else(|_| unreachable!()),
            Some("110".into()),
            TransportKind::Udp,
        );
        peer.trusted = trusted;
        peer.diversion = diversion;
        peer
    }

    fn local() -> Host {
        Host::Ip([127, 0, 0, 1].into())
    }

    #[test]
    fn refer_to_forms() {
        let refer =
            |value: &str| request(&format!("From: <sip:a@h>;tag=1\r\nRefer-To: {value}\r\n"));
        assert_eq!(
            refer_target(&refer("<sip:110@10.0.0.1:5060>")),
            Ok(ReferTarget {
                number: "110".into(),
                replaces: None
            })
        );
        assert_eq!(
            refer_target(&refer("sip:119@gw")).map(|t| t.number),
            Ok("119".into())
        );
        assert_eq!(
            refer_target(&refer("<tel:+86-10-110>")).map(|t| t.number),
            Ok("+8610110".into())
        );
        let attended = refer_target(&refer(
            "<sip:110@gw?Replaces=abc%40host%3Bto-tag%3D1%3Bfrom-tag%3D2>",
        ));
        assert_eq!(
            attended.map(|t| t.replaces),
            Ok(Some("abc@host;to-tag=1;from-tag=2".into()))
        );
        assert_eq!(
            refer_target(&refer("<sip:gw.example>")),
            Err(ReferError::NoNumber)
        );
        assert_eq!(
            refer_target(&refer("<sip:police@gw>")),
            Err(ReferError::NoNumber)
        );
        assert!(matches!(
            refer_target(&refer("<garbage")),
            Err(ReferError::Malformed(_))
        ));
        assert_eq!(
            refer_target(&request("From: <sip:a@h>;tag=1\r\n")),
            Err(ReferError::Missing)
        );
        let twice = request(
            "From: <sip:a@h>;tag=1\r\nRefer-To: <sip:110@gw>\r\nRefer-To: <sip:119@gw>\r\n",
        );
        assert_eq!(refer_target(&twice), Err(ReferError::Several));
    }

    #[test]
    fn the_citizens_number_is_presented_and_asserted() {
        let identity = CallerIdentity::of(&request(
            "From: \"Zhang\" <sip:13800138000@carrier>;tag=c\r\n",
        ));
        let mut headers = Headers::new();
        let from = identity.present(
            &peer(false, DiversionHeader::None),
            local(),
            true,
            &mut headers,
        );
        assert_eq!(from.uri.user.as_deref(), Some("13800138000"));
        assert_eq!(from.display_name.as_deref(), Some("Zhang"));
        assert_eq!(
            headers.get("P-Asserted-Identity"),
            Some("<sip:13800138000@127.0.0.1>")
        );
        // A plain call passes on what the caller sent and asserts nothing itself.
        let mut headers = Headers::new();
        identity.present(
            &peer(false, DiversionHeader::None),
            local(),
            false,
            &mut headers,
        );
        assert_eq!(headers.get("P-Asserted-Identity"), None);
    }

    /// The caller's own P-Asserted-Identity goes on, but an IP address in it is the
    /// carrier's network's: the peer is given ours on its network instead. A domain and a
    /// `tel:` URI go on unchanged.
    #[test]
    fn an_address_in_a_passed_on_identity_becomes_ours_on_the_peers_network() {
        let identity = CallerIdentity::of(&request(
            "From: <sip:13800138000@carrier>;tag=c\r\n\
             P-Asserted-Identity: \"Zhang\" <sip:+8613800138000@203.0.113.9:5060;user=phone>\r\n\
             P-Asserted-Identity: <tel:+8613800138000>\r\n",
        ));
        let mut headers = Headers::new();
        let ours = Host::Ip("10.1.0.5".parse().unwrap_or_else(|_| unreachable!()));
        identity.present(
            &peer(false, DiversionHeader::None),
            ours.clone(),
            false,
            &mut headers,
        );
        let passed: Vec<&str> = headers.get_all("P-Asserted-Identity").collect();
        assert_eq!(
            passed,
            [
                "\"Zhang\" <sip:+8613800138000@10.1.0.5;user=phone>",
                "<tel:+8613800138000>"
            ]
        );
        assert_eq!(
            with_local_host("<sip:8001@carrier.example>", &ours),
            "<sip:8001@carrier.example>"
        );
        assert_eq!(
            with_local_host("not a name-addr <", &ours),
            "not a name-addr <"
        );
    }

    #[test]
    fn a_private_identity_reaches_trusted_peers_only() {
        let identity = CallerIdentity::of(&request(
            "From: <sip:anonymous@anonymous.invalid>;tag=c\r\n\
P-Asserted-Identity: <tel:+8613800138000>\r\nPrivacy: id\r\n",
        ));
        assert!(identity.private);
        assert_eq!(identity.number, "+8613800138000");
        let mut trusted = Headers::new();
        let from = identity.present(
            &peer(true, DiversionHeader::None),
            local(),
            true,
            &mut trusted,
        );
        assert_eq!(
            trusted.get("P-Asserted-Identity"),
            Some("<tel:+8613800138000>")
        );
        assert_eq!(trusted.get("Privacy"), Some("id"));
        assert_eq!(from.uri.user.as_deref(), Some("anonymous"));
        let mut untrusted = Headers::new();
        let from = identity.present(
            &peer(false, DiversionHeader::None),
            local(),
            true,
            &mut untrusted,
        );
        assert_eq!(untrusted.get("P-Asserted-Identity"), None);
        assert_eq!(from.uri.user.as_deref(), Some("anonymous"));
        assert!(!from.to_string().contains("8613800138000"));
    }

    #[test]
    fn diversion_headers_follow_the_peer() {
        let target = Uri::sip(Some("110"), local(), Some(5090));
        let mut headers = Headers::new();
        add_diversion(
            &mut headers,
            &peer(true, DiversionHeader::Both),
            "12345",
            local(),
            &target,
        );
        assert_eq!(
            headers.get("History-Info"),
            Some("<sip:12345@127.0.0.1?Reason=SIP%3Bcause%3D480>;index=1, <sip:110@127.0.0.1:5090>;index=1.1;mp=1")
        );
        assert_eq!(
            headers.get("Diversion"),
            Some("<sip:12345@127.0.0.1>;reason=deflection;counter=1")
        );
        let mut none = Headers::new();
        add_diversion(
            &mut none,
            &peer(true, DiversionHeader::None),
            "12345",
            local(),
            &target,
        );
        assert!(none.is_empty());
    }

    #[test]
    fn notify_bodies_and_subscription_states() {
        let invite = request("From: <sip:13800138000@carrier>;tag=c\r\n");
        let Some(mut dialog) = Dialog::new_uas(&invite, "g1", 1) else {
            panic!("no dialog")
        };
        let trying = notify(&mut dialog, 2, 100, 60);
        assert_eq!(trying.method, Method::Notify);
        assert_eq!(trying.headers.get("Event"), Some("refer;id=2"));
        assert_eq!(
            trying.headers.get("Subscription-State"),
            Some("active;expires=60")
        );
        assert_eq!(&trying.body[..], b"SIP/2.0 100 Trying\r\n");
        let busy = notify(&mut dialog, 2, 486, 60);
        assert_eq!(
            busy.headers.get("Subscription-State"),
            Some("terminated;reason=noresource")
        );
        assert_eq!(&busy.body[..], b"SIP/2.0 486 Busy Here\r\n");
        assert!(busy.cseq().map(|c| c.sequence) > trying.cseq().map(|c| c.sequence));
    }
}
