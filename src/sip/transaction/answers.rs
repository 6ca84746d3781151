//! The answers the transaction layer gives on its own, below the call model, as plain
//! functions of the request: 100 Trying (§17.2.1), 200/481 to a CANCEL (§9.2), 401 challenge
//! and 403 refusal (§22), 420 Bad Extension (§8.2.2.3), 481 for an unknown dialog (§12.2.2),
//! 482 for a merged request (§8.2.2.2) and 503 + Retry-After when the gateway will not take
//! more (§21.5.4, RFC 6357 §4). Each copies Via, From, To, Call-ID and CSeq (§8.2.6.2); the
//! endpoint decides whether it goes through a transaction or statelessly.

use crate::sip::message::{Request, Response};

/// Seconds a peer refused for load is asked to wait (§20.33): short, as load passes quickly.
const RETRY_AFTER_SECONDS: &str = "2";

/// 100 Trying, sent at once for an INVITE so the caller's Timer A stops (§17.2.1).
pub fn trying(request: &Request) -> Response {
    Response::for_request(request, 100, None)
}

/// The answer to a CANCEL (§9.2): 200 when it matched an INVITE transaction, else 481.
pub fn cancel_answer(request: &Request, matched: bool) -> Response {
    let status = if matched { 200 } else { 481 };
    Response::for_request(request, status, Some("gw-cancel"))
}

/// 420 Bad Extension with Unsupported listing the option tags of Require that are not in
/// `supported` (§8.2.2.3, compared case-insensitively); None when every one is supported.
pub fn bad_extension(request: &Request, supported: &[&str]) -> Option<Response> {
    let unsupported: Vec<&str> = request
        .headers
        .list("Require")
        .filter(|tag| !supported.iter().any(|s| s.eq_ignore_ascii_case(tag)))
        .collect();
    if unsupported.is_empty() {
        return None;
    }
    let mut response = Response::for_request(request, 420, Some("gw-ext"));
    response.headers.push("Unsupported", unsupported.join(", "));
    Some(response)
}

/// 481 Call/Transaction Does Not Exist: a request in a dialog we do not have (§12.2.2).
pub fn unknown_dialog(request: &Request) -> Response {
    Response::for_request(request, 481, None)
}

/// 482 Loop Detected: the same request reached us by two paths (§8.2.2.2).
pub fn merged_request(request: &Request) -> Response {
    Response::for_request(request, 482, Some("gw-merged"))
}

/// 401 with one WWW-Authenticate per challenge (§22.1, §22.4).
pub fn challenge(request: &Request, challenges: impl IntoIterator<Item = String>) -> Response {
    let mut response = Response::for_request(request, 401, Some("gw-auth"));
    for value in challenges {
        response.headers.push("WWW-Authenticate", value);
    }
    response
}

/// 403 for credentials that did not prove themselves (§22).
pub fn authentication_refused(request: &Request) -> Response {
    Response::for_request(request, 403, Some("gw-auth"))
}

/// 403 for a request from an address that is no peer (the guard's refusal).
pub fn stranger_refused(request: &Request) -> Response {
    Response::for_request(request, 403, Some("gw-refused"))
}

/// The stateless 503 + Retry-After for a new request while overloaded or at the transaction
/// cap (§21.5.4; RFC 6357 §4: reject early and cheaply).
pub fn overloaded(request: &Request) -> Response {
    service_unavailable(request, "gw-overload")
}

/// 503 + Retry-After for an in-dialog request whose call has too many unread.
pub fn call_busy(request: &Request) -> Response {
    service_unavailable(request, "gw-busy")
}

/// The 503 the transaction user gets when the connection its request went over was lost
/// (§8.1.3.1: a transport error is treated as a 503).
pub fn connection_lost(request: &Request) -> Response {
    let mut response = Response::for_request(request, 503, None);
    response.reason = "Service Unavailable (connection lost)".into();
    response
}

fn service_unavailable(request: &Request, to_tag: &str) -> Response {
    let mut response = Response::for_request(request, 503, Some(to_tag));
    response.headers.push("Retry-After", RETRY_AFTER_SECONDS);
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::message::{self, Message};

    fn request(extra: &str) -> Request {
        let text = format!(
            "INVITE sip:1@gw SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.5;branch=z9hG4bK1\r\n\
From: <sip:a@10.0.0.5>;tag=caller\r\nTo: <sip:1@gw>\r\nCall-ID: c1@10.0.0.5\r\n\
CSeq: 1 INVITE\r\nMax-Forwards: 70\r\n{extra}Content-Length: 0\r\n\r\n"
        );
        match message::parse(text.as_bytes()) {
            Ok(Message::Request(request)) => request,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_420_lists_the_unsupported_option_tags() {
        let invite = request("Require: timer, 100rel\r\nRequire: foo\r\n");
        let Some(response) = bad_extension(&invite, &["TIMER"]) else {
            panic!("100rel and foo are not supported");
        };
        assert_eq!(response.status, 420);
        assert_eq!(response.headers.get("Unsupported"), Some("100rel, foo"));
        assert_eq!(
            response.to().and_then(|t| t.tag().map(str::to_string)),
            Some("gw-ext".into())
        );
    }

    #[test]
    fn a_request_requiring_only_supported_options_gets_no_420() {
        assert!(bad_extension(&request("Require: timer\r\n"), &["timer"]).is_none());
        assert!(bad_extension(&request(""), &[]).is_none());
    }

    #[test]
    fn the_503_carries_retry_after() {
        for response in [overloaded(&request("")), call_busy(&request(""))] {
            assert_eq!(response.status, 503);
            assert_eq!(response.headers.get("Retry-After"), Some("2"));
        }
    }

    #[test]
    fn a_cancel_that_matched_gets_200_and_one_that_did_not_gets_481() {
        assert_eq!(cancel_answer(&request(""), true).status, 200);
        assert_eq!(cancel_answer(&request(""), false).status, 481);
    }

    #[test]
    fn a_merged_request_gets_482_and_an_unknown_dialog_481() {
        assert_eq!(merged_request(&request("")).status, 482);
        assert_eq!(unknown_dialog(&request("")).status, 481);
    }

    #[test]
    fn the_401_carries_one_www_authenticate_per_challenge() {
        let response = challenge(
            &request(""),
            ["Digest a".to_string(), "Digest b".to_string()],
        );
        assert_eq!(response.status, 401);
        let values: Vec<&str> = response.headers.get_all("WWW-Authenticate").collect();
        assert_eq!(values, ["Digest a", "Digest b"]);
    }

    #[test]
    fn a_lost_connection_reads_as_a_503_without_retry_after() {
        let response = connection_lost(&request(""));
        assert_eq!(response.status, 503);
        assert_eq!(response.reason, "Service Unavailable (connection lost)");
        assert_eq!(response.headers.get("Retry-After"), None);
    }

    #[test]
    fn every_answer_copies_the_requests_via_call_id_and_cseq() {
        let invite = request("");
        for response in [
            trying(&invite),
            stranger_refused(&invite),
            authentication_refused(&invite),
        ] {
            assert_eq!(response.headers.get("Via"), invite.headers.get("Via"));
            assert_eq!(response.headers.get("Call-ID"), Some("c1@10.0.0.5"));
            assert_eq!(response.headers.get("CSeq"), Some("1 INVITE"));
        }
        assert_eq!(trying(&invite).status, 100);
        assert_eq!(stranger_refused(&invite).status, 403);
    }
}
