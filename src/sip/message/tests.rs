use super::*;

const INVITE: &str = "INVITE sip:12345@127.0.0.1:5060 SIP/2.0\r\n\
Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-1-0;rport\r\n\
From: \"Citizen\" <sip:13800138000@127.0.0.1:5070>;tag=1\r\n\
To: <sip:12345@127.0.0.1:5060>\r\n\
Call-ID: 1-100@127.0.0.1\r\n\
CSeq: 1 INVITE\r\n\
Contact: <sip:13800138000@127.0.0.1:5070>\r\n\
Max-Forwards: 70\r\n\
Content-Type: application/sdp\r\n\
Content-Length: 10\r\n\
\r\n\
v=0\r\no=- 1";

fn request(text: &str) -> Request {
    match parse(text.as_bytes()) {
        Ok(Message::Request(r)) => r,
        other => panic!("expected a request, got {other:?}"),
    }
}

fn rejected(text: &str) -> u16 {
    match parse(text.as_bytes()) {
        Err(ParseError::Reject { status, .. }) => status,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

#[test]
fn parses_invite_and_honours_content_length() {
    let r = request(INVITE);
    assert_eq!(r.method, Method::Invite);
    assert_eq!(r.uri.user.as_deref(), Some("12345"));
    assert_eq!(r.call_id(), "1-100@127.0.0.1");
    assert_eq!(r.cseq().map(|c| c.sequence), Some(1));
    assert_eq!(
        r.from()
            .and_then(|f| f.tag().map(str::to_string))
            .as_deref(),
        Some("1")
    );
    assert_eq!(r.body.as_ref(), b"v=0\r\no=- 1");
    assert_eq!(r.sdp(), Some("v=0\r\no=- 1"));
    assert_eq!(r.max_forwards(), 70);
}

#[test]
fn print_then_parse_round_trips() {
    let r = request(INVITE);
    let again = request(std::str::from_utf8(&r.to_bytes()).unwrap_or_default());
    assert_eq!(again, r);
}

#[test]
fn compact_folded_and_lf_only_forms() {
    let text = "OPTIONS tel:+8613800138000 SIP/2.0\n\
v: SIP/2.0/UDP [2001:db8::1]:5070;branch=z9hG4bKc\n\
f: <tel:+8613800138000>;tag=a\n\
t: <sip:gw@[2001:db8::2]>\n\
i: compact@h\n\
CSeq: 7\n OPTIONS\n\
l: 0\n\n";
    let r = request(text);
    assert_eq!(r.method, Method::Options);
    assert_eq!(r.uri.scheme, Scheme::Tel);
    assert_eq!(r.headers.get("Call-ID"), Some("compact@h"));
    assert_eq!(r.cseq().map(|c| c.method), Some(Method::Options));
    let via = r.top_via().unwrap_or_else(|| panic!("via"));
    assert_eq!(via.host, Host::Ip("2001:db8::1".parse().unwrap()));
    assert!(r
        .to_bytes()
        .starts_with(b"OPTIONS tel:+8613800138000 SIP/2.0\r\nVia: "));
}

/// An invalid byte in a header becomes one `?`: the message is kept, and does not grow.
#[test]
fn non_utf8_header_value_is_kept_lossily() {
    let mut bytes = INVITE.replace("\"Citizen\"", "\"XX\"").into_bytes();
    let at = bytes.windows(2).position(|w| w == b"XX").unwrap_or(0);
    bytes[at] = 0xff;
    match parse(&bytes) {
        Ok(Message::Request(r)) => assert!(r
            .headers
            .get("From")
            .is_some_and(|f| f.starts_with("\"?X\""))),
        other => panic!("{other:?}"),
    }
}

#[test]
fn rejections_carry_the_right_status() {
    assert_eq!(
        rejected(
            &INVITE
                .replace("INVITE sip:", "FOO sip:")
                .replace("1 INVITE", "1 FOO")
        ),
        501
    );
    assert_eq!(
        rejected(&INVITE.replace("sip:12345@127.0.0.1:5060 SIP", "urn:service:sos SIP")),
        416
    );
    assert_eq!(
        rejected(&INVITE.replace("SIP/2.0\r\nVia", "SIP/3.0\r\nVia")),
        505
    );
    assert_eq!(
        rejected(&INVITE.replace("Call-ID: 1-100@127.0.0.1\r\n", "")),
        400
    );
    assert_eq!(
        rejected(&INVITE.replace("CSeq: 1 INVITE", "CSeq: 1 BYE")),
        400
    );
    assert_eq!(
        rejected(&INVITE.replace("Content-Length: 10", "Content-Length: 99")),
        400
    );
    assert_eq!(
        rejected(&INVITE.replace("Content-Length: 10", "Content-Length: ten")),
        400
    );
    assert_eq!(
        rejected(&INVITE.replace("Max-Forwards: 70", "Max-Forwards: 700")),
        400
    );
    assert_eq!(
        rejected(&INVITE.replace("From: ", "From: <sip:broken")),
        400
    );
}

#[test]
fn rejection_keeps_headers_for_the_response() {
    match parse(INVITE.replace("CSeq: 1 INVITE", "CSeq: x").as_bytes()) {
        Err(ParseError::Reject { headers, .. }) => {
            let response = response_from_headers(&headers, 400, "Bad Request", Some("t"));
            let text = String::from_utf8_lossy(&response.to_bytes()).to_string();
            assert!(text.starts_with("SIP/2.0 400 Bad Request\r\nVia: SIP/2.0/UDP 127.0.0.1:5070"));
            assert!(text.contains("To: <sip:12345@127.0.0.1:5060>;tag=t\r\n"));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn unanswerable_input_is_dropped() {
    assert!(matches!(
        parse(b"\x00\x01\x02garbage"),
        Err(ParseError::Drop(_))
    ));
    assert!(matches!(
        parse(INVITE.replace("Via: ", "X-Via: ").as_bytes()),
        Err(ParseError::Drop(_))
    ));
    assert!(matches!(
        parse(b"SIP/2.0 999 Weird\r\n\r\n"),
        Err(ParseError::Drop(_))
    ));
    assert!(matches!(
        parse(&INVITE.as_bytes()[..60]),
        Err(ParseError::Drop(_))
    ));
}

#[test]
fn too_many_headers_is_a_400() {
    let mut text = INVITE.replace("Content-Length: 10\r\n\r\nv=0\r\no=- 1", "");
    for i in 0..200 {
        text.push_str(&format!("X-Pad-{i}: {i}\r\n"));
    }
    text.push_str("Content-Length: 0\r\n\r\n");
    assert_eq!(rejected(&text), 400);
}

#[test]
fn framing_partial_pipelined_and_oversized() {
    let one = INVITE.as_bytes();
    let max = 65_535;
    assert_eq!(frame(&one[..40], max), Ok(Frame::Incomplete));
    assert_eq!(frame(&one[..one.len() - 1], max), Ok(Frame::Incomplete));
    assert_eq!(frame(one, max), Ok(Frame::Message { length: one.len() }));
    let mut two = one.to_vec();
    two.extend_from_slice(one);
    assert_eq!(frame(&two, max), Ok(Frame::Message { length: one.len() }));
    assert_eq!(
        frame(b"\r\n\r\nINVITE", max),
        Ok(Frame::KeepAlive {
            length: 4,
            ping: true
        })
    );
    assert_eq!(
        frame(b"\r\n", max),
        Ok(Frame::KeepAlive {
            length: 2,
            ping: false
        })
    );
    assert_eq!(frame(one, 100), Err(FrameError::TooLarge(100)));
    assert_eq!(frame(&[b'a'; 200], 100), Err(FrameError::TooLarge(100)));
    let bad = INVITE.replace("Content-Length: 10", "Content-Length: -1");
    assert_eq!(
        frame(bad.as_bytes(), max),
        Err(FrameError::BadContentLength)
    );
}

/// A stream read a few bytes at a time (an attacker dripping a header) costs each byte about
/// once: the search for the blank line goes on where it stopped, and whole messages still come
/// out the same, pipelined ones included.
#[test]
fn framing_a_dripped_stream_looks_at_each_byte_once() {
    let mut stream = Vec::new();
    let mut header = String::from("OPTIONS sip:a@b SIP/2.0\r\n");
    for i in 0..2_000 {
        header.push_str(&format!("X-Drip-{i}: {i}\r\n"));
    }
    header.push_str("Content-Length: 4\r\n\r\nbody");
    stream.extend_from_slice(header.as_bytes());
    stream.extend_from_slice(b"\r\n\r\n");
    stream.extend_from_slice(INVITE.as_bytes());
    let mut framer = Framer::default();
    let mut buffer: Vec<u8> = Vec::new();
    let mut frames = Vec::new();
    let mut keep_alive = 0;
    for piece in stream.chunks(4) {
        buffer.extend_from_slice(piece);
        loop {
            match framer.next(&buffer, 1 << 20) {
                Ok(Frame::Incomplete) => break,
                Ok(Frame::KeepAlive { length, .. }) => {
                    // Split across reads, a ping may come as two pongs: the bytes are what count.
                    keep_alive += length;
                    buffer.drain(..length);
                }
                Ok(Frame::Message { length }) => {
                    frames.push(format!("message {length}"));
                    buffer.drain(..length);
                }
                Err(e) => panic!("{e}"),
            }
        }
    }
    assert_eq!(
        frames,
        vec![
            format!("message {}", header.len()),
            format!("message {}", INVITE.len()),
        ]
    );
    assert_eq!(keep_alive, 4);
    assert!(buffer.is_empty());
    assert!(
        framer.examined() < 2 * stream.len(),
        "{} bytes examined for a {}-byte stream",
        framer.examined(),
        stream.len()
    );
}

#[test]
fn ack_and_cancel_reuse_the_invite_branch() {
    let invite = request(INVITE);
    let mut response = Response::for_request(&invite, 486, Some("callee"));
    response.headers.push("Contact", "<sip:x@y>");
    let ack = ack_for_non_2xx(&invite, &response);
    assert_eq!(
        ack.top_via()
            .and_then(|v| v.branch().map(str::to_string))
            .as_deref(),
        Some("z9hG4bK-1-0")
    );
    assert_eq!(
        ack.to()
            .and_then(|t| t.tag().map(str::to_string))
            .as_deref(),
        Some("callee")
    );
    assert_eq!(ack.cseq().map(|c| c.to_string()).as_deref(), Some("1 ACK"));
    let cancel = cancel_for(&invite);
    assert_eq!(
        cancel.cseq().map(|c| c.to_string()).as_deref(),
        Some("1 CANCEL")
    );
    assert_eq!(cancel.uri, invite.uri);
    assert!(cancel.to().is_some_and(|t| t.tag().is_none()));
}

mod property {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = parse(&bytes);
            let _ = frame(&bytes, 4096);
        }

        #[test]
        fn mutated_invite_never_panics(position in 0usize..INVITE.len(), byte in any::<u8>(), cut in 0usize..INVITE.len()) {
            let mut bytes = INVITE.as_bytes().to_vec();
            bytes[position] = byte;
            bytes.truncate(cut.max(position + 1));
            if let Ok(Message::Request(mut r)) = parse(&bytes) {
                // Whatever parsed must print into something that parses the same way (printing
                // always writes Content-Length, so compare without it).
                let printed = r.to_bytes();
                let again = parse(&printed);
                r.headers.remove("Content-Length");
                match again {
                    Ok(Message::Request(mut again)) => {
                        again.headers.remove("Content-Length");
                        prop_assert_eq!(again, r);
                    }
                    other => prop_assert!(false, "reparse failed: {:?}", other),
                }
            }
        }
    }
}

/// Every code the gateway answers on its own carries its RFC phrase (a 401 challenge once
/// went out as "401 Unknown").
#[test]
fn the_gateways_own_answers_carry_their_rfc_reason_phrases() {
    for (status, phrase) in [
        (401, "Unauthorized"),
        (407, "Proxy Authentication Required"),
        (422, "Session Interval Too Small"),
        (480, "Temporarily Unavailable"),
        (489, "Bad Event"),
        (604, "Does Not Exist Anywhere"),
    ] {
        assert_eq!(reason_phrase(status), phrase, "{status}");
    }
}

#[test]
fn responses_that_establish_a_dialog_carry_the_record_route_in_order() {
    let mut invite = request(INVITE);
    invite
        .headers
        .push("Record-Route", "<sip:10.2.0.10;lr;ftag=abc>");
    invite.headers.push("Record-Route", "<sip:10.9.9.9;lr>");
    let record_route = |response: &Response| -> Vec<String> {
        response
            .headers
            .list("Record-Route")
            .map(str::to_string)
            .collect()
    };
    let both = vec![
        "<sip:10.2.0.10;lr;ftag=abc>".to_string(),
        "<sip:10.9.9.9;lr>".to_string(),
    ];
    // RFC 3261 §12.1.1: the 2xx and the 1xx with a tag create the dialog.
    for status in [180, 183, 200] {
        let response = Response::for_request(&invite, status, Some("gw"));
        assert_eq!(record_route(&response), both, "{status}");
    }
    // Nothing to copy where no dialog is made: 100, failures, an in-dialog request.
    assert!(record_route(&Response::for_request(&invite, 100, None)).is_empty());
    assert!(record_route(&Response::for_request(&invite, 486, Some("gw"))).is_empty());
    let mut reinvite = invite.clone();
    reinvite.headers.set("To", "<sip:110@gw>;tag=gw");
    assert!(record_route(&Response::for_request(&reinvite, 200, None)).is_empty());
}

/// What a client transaction keeps of its INVITE makes the same ACK for a non-2xx and the
/// same answer for a lost connection as the whole INVITE, without its body or other headers.
#[test]
fn a_transactions_essentials_make_its_own_messages() {
    let mut invite = request(INVITE);
    invite.headers.push("Route", "<sip:proxy.example;lr>");
    invite
        .headers
        .push("P-Asserted-Identity", "<sip:13800138000@127.0.0.1>");
    let kept = essentials(invite.clone());
    assert!(kept.body.is_empty());
    assert_eq!(kept.headers.get("Contact"), None);
    assert_eq!(kept.headers.get("P-Asserted-Identity"), None);
    let response = Response::for_request(&invite, 486, Some("callee"));
    assert_eq!(
        ack_for_non_2xx(&kept, &response).to_bytes(),
        ack_for_non_2xx(&invite, &response).to_bytes()
    );
    assert_eq!(
        Response::for_request(&kept, 503, None).to_bytes(),
        Response::for_request(&invite, 503, None).to_bytes()
    );
}
