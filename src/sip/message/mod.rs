//! SIP messages: framing, parsing, printing, and the few builders every layer needs. No I/O.
//!
//! This module is the only place that knows the wire grammar. It frames (Content-Length on TCP,
//! the datagram on UDP, §18.3), normalises what real peers send (compact header names, folded
//! lines, LF-only line ends, non-UTF-8 header bytes), and classifies failures so the caller can
//! answer them: [`ParseError::Reject`] carries the status (400, 416, 501, 505) and the headers
//! needed to build the response, [`ParseError::Drop`] is for input that cannot be answered.
//!
//! Why our own parser and not rsip: rsip 0.4 rejects `tel:` and `urn:` URIs, every IPv6 host,
//! compact names, folded lines, LF-only ends and unknown methods, all of which carriers send;
//! rsipstack fixes that but brings a whole SIP stack (transport, resolver, async traits) for its
//! parser. The grammar needed here is small, property-tested, and the adapter boundary stays the
//! same: nothing outside `sip::message` touches the wire format.

mod framer;
pub mod header;
pub mod uri;

use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};

use crate::routing::charset::Charset;

use framer::header_end;
pub use framer::{frame, Frame, FrameError, Framer};
pub use header::{CSeq, Header, Headers, NameAddr, Via};
pub use uri::{Host, Scheme, Uri, UriError};

/// Bounds on what we accept, so one message cannot take unbounded memory or time.
pub const MAX_HEADERS: usize = 128;
pub const MAX_HEADER_LINE: usize = 8192;

/// A SIP method. Unknown but well-formed methods parse as `Other`, so they can get 501
/// (§8.2.1) instead of a 400.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Method {
    Invite,
    Ack,
    Bye,
    Cancel,
    Options,
    Register,
    Info,
    Refer,
    Notify,
    Subscribe,
    Update,
    Prack,
    Message,
    Publish,
    Other(String),
}

impl Method {
    /// Parses a method token (case-sensitive, §7.1); `None` if it is no token at all.
    pub fn parse(text: &str) -> Option<Method> {
        Some(match text {
            "INVITE" => Method::Invite,
            "ACK" => Method::Ack,
            "BYE" => Method::Bye,
            "CANCEL" => Method::Cancel,
            "OPTIONS" => Method::Options,
            "REGISTER" => Method::Register,
            "INFO" => Method::Info,
            "REFER" => Method::Refer,
            "NOTIFY" => Method::Notify,
            "SUBSCRIBE" => Method::Subscribe,
            "UPDATE" => Method::Update,
            "PRACK" => Method::Prack,
            "MESSAGE" => Method::Message,
            "PUBLISH" => Method::Publish,
            other
                // Bounded, but long enough for RFC 4475 §3.1.1.2's 43-character method.
                if !other.is_empty()
                    && other.len() <= 64
                    && other
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b)) =>
            {
                Method::Other(other.to_string())
            }
            _ => return None,
        })
    }

    pub fn as_str(&self) -> &str {
        match self {
            Method::Invite => "INVITE",
            Method::Ack => "ACK",
            Method::Bye => "BYE",
            Method::Cancel => "CANCEL",
            Method::Options => "OPTIONS",
            Method::Register => "REGISTER",
            Method::Info => "INFO",
            Method::Refer => "REFER",
            Method::Notify => "NOTIFY",
            Method::Subscribe => "SUBSCRIBE",
            Method::Update => "UPDATE",
            Method::Prack => "PRACK",
            Method::Message => "MESSAGE",
            Method::Publish => "PUBLISH",
            Method::Other(m) => m,
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A SIP request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: Method,
    pub uri: Uri,
    pub headers: Headers,
    pub body: Bytes,
}

/// A SIP response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub reason: String,
    pub headers: Headers,
    pub body: Bytes,
}

/// Either.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Request(Request),
    Response(Response),
}

/// Why bytes are not a usable message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// A request we can answer: `status` with `reason`, built from the headers we could read.
    #[error("{status} {reason}")]
    Reject {
        status: u16,
        reason: String,
        headers: Box<Headers>,
    },
    /// Nothing answerable (a broken response, garbage, no Via): drop it.
    #[error("dropped: {0}")]
    Drop(String),
}

fn canonical_is(name: &str, canonical: &str) -> bool {
    header::canonical_name(name).eq_ignore_ascii_case(canonical)
}

/// Parses one whole message (a UDP datagram, or a framed TCP message).
///
/// # Errors
/// [`ParseError::Reject`] for a request that deserves an error response,
/// [`ParseError::Drop`] for everything else.
pub fn parse(datagram: &[u8]) -> Result<Message, ParseError> {
    parse_with(datagram, || Charset::Utf8)
}

/// As [`parse`], header lines that are not UTF-8 decoded in `charset()` (asked only then).
///
/// # Errors
/// As [`parse`].
pub fn parse_with(datagram: &[u8], charset: impl Fn() -> Charset) -> Result<Message, ParseError> {
    let drop = |reason: &str| ParseError::Drop(reason.to_string());
    let start = datagram
        .iter()
        .take_while(|b| **b == b'\r' || **b == b'\n')
        .count();
    let datagram = &datagram[start..];
    let end = header_end(datagram).ok_or_else(|| drop("no end of headers"))?;
    let head = &datagram[..end];
    let mut lines = head
        .split(|b| *b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let start_line = lines.next().ok_or_else(|| drop("empty message"))?;
    let start_line =
        std::str::from_utf8(start_line).map_err(|_| drop("start line is not UTF-8"))?;
    let is_response = start_line.starts_with("SIP/");

    // Headers: unfold continuation lines (§7.3.1); non-UTF-8 lines in the peer's charset.
    let (headers, mut header_error) = parse_headers(lines, &charset);

    // Body: Content-Length bytes after the blank line; on UDP a shorter datagram is malformed
    // and extra bytes are ignored (§18.3).
    let body = read_body(&headers, &datagram[end..], &mut header_error);

    if is_response {
        return parse_response(start_line, headers, body, header_error);
    }
    parse_request(start_line, headers, body, header_error)
}

/// The header lines up to the blank line, continuation lines unfolded; the first reason the
/// header block is malformed, if any.
fn parse_headers<'a>(
    lines: impl Iterator<Item = &'a [u8]>,
    charset: &impl Fn() -> Charset,
) -> (Headers, Option<&'static str>) {
    let mut headers = Headers::new();
    let mut pending: Option<(String, String)> = None;
    let mut header_error: Option<&'static str> = None;
    for raw in lines {
        if raw.is_empty() {
            break;
        }
        if raw.len() > MAX_HEADER_LINE {
            header_error.get_or_insert("header line too long");
            continue;
        }
        if has_bare_control(raw) {
            // A bare CR, NUL or other control inside a header line smuggles structure.
            header_error.get_or_insert("control character in a header");
            continue;
        }
        let line = match std::str::from_utf8(raw) {
            Ok(text) => std::borrow::Cow::Borrowed(text),
            Err(_) => charset().decode(raw),
        };
        if line.starts_with(' ') || line.starts_with('\t') {
            match pending.as_mut() {
                Some((_, value)) => {
                    value.push(' ');
                    value.push_str(line.trim());
                }
                None => {
                    header_error.get_or_insert("continuation line before any header");
                }
            }
            continue;
        }
        if let Some((name, value)) = pending.take() {
            headers.push(&name, value);
        }
        match line.split_once(':') {
            Some((name, value))
                if !name.trim().is_empty() && name.trim().bytes().all(|b| b.is_ascii_graphic()) =>
            {
                pending = Some((name.trim().to_string(), value.trim().to_string()));
            }
            _ => {
                header_error.get_or_insert("header line without a name");
            }
        }
        if headers.len() >= MAX_HEADERS {
            header_error.get_or_insert("too many headers");
            break;
        }
    }
    if let Some((name, value)) = pending.take() {
        headers.push(&name, value);
    }
    (headers, header_error)
}

/// The body: Content-Length bytes of `available`, all of it without one.
fn read_body(
    headers: &Headers,
    available: &[u8],
    header_error: &mut Option<&'static str>,
) -> Bytes {
    match headers.get("Content-Length") {
        Some(value) => match value.trim().parse::<usize>() {
            Ok(n) if n <= available.len() => Bytes::copy_from_slice(&available[..n]),
            Ok(_) => {
                header_error.get_or_insert("Content-Length larger than the message");
                Bytes::new()
            }
            Err(_) => {
                header_error.get_or_insert("bad Content-Length");
                Bytes::new()
            }
        },
        None => Bytes::copy_from_slice(available),
    }
}

/// A request's start line, checked in the order its error responses rank, then its headers.
fn parse_request(
    start_line: &str,
    headers: Headers,
    body: Bytes,
    header_error: Option<&'static str>,
) -> Result<Message, ParseError> {
    let drop = |reason: &str| ParseError::Drop(reason.to_string());
    let reject = |status: u16, reason: &str, headers: &Headers| ParseError::Reject {
        status,
        reason: reason.to_string(),
        headers: Box::new(headers.clone()),
    };
    // A request must at least carry a Via we can answer to.
    let has_via = headers
        .get("Via")
        .and_then(|v| header::split_list(v).next().map(Via::parse))
        .is_some_and(|v| v.is_ok());
    // RFC 4475 §3.1.2.16: a request of another SIP version has a Via of that version, which we
    // cannot parse; it still deserves its 505 (sent to the source address).
    let other_version = start_line
        .rsplit(' ')
        .next()
        .is_some_and(|v| v.starts_with("SIP/") && v != "SIP/2.0");
    let answerable = has_via || (other_version && headers.get("Via").is_some());
    if !answerable {
        return Err(drop("request without a usable Via"));
    }
    let mut parts = start_line.split(' ');
    let (method, uri_text, version) = match (parts.next(), parts.next(), parts.next(), parts.next())
    {
        (Some(m), Some(u), Some(v), None) => (m, u, v),
        _ => return Err(reject(400, "Bad Request Line", &headers)),
    };
    if version != "SIP/2.0" {
        return Err(reject(505, "Version Not Supported", &headers));
    }
    let Some(method) = Method::parse(method) else {
        return Err(reject(400, "Bad Method", &headers));
    };
    if let Some(reason) = header_error {
        return Err(reject(400, reason, &headers));
    }
    let uri = match Uri::parse(uri_text) {
        Ok(uri) => uri,
        Err(UriError::UnsupportedScheme(_)) => {
            return Err(reject(416, "Unsupported URI Scheme", &headers))
        }
        Err(_) => return Err(reject(400, "Bad Request-URI", &headers)),
    };
    let request = Request {
        method,
        uri,
        headers,
        body,
    };
    if let Err(reason) = check_mandatory(&request.headers, Some(&request.method)) {
        return Err(reject(400, reason, &request.headers));
    }
    if let Method::Other(_) = request.method {
        return Err(reject(501, "Not Implemented", &request.headers));
    }
    Ok(Message::Request(request))
}

/// True if a header line holds a control character (HTAB aside) outside a quoted-pair. Inside a
/// quoted string a backslash may escape any octet but CR and LF (§25.1 quoted-pair), as RFC 4475
/// §3.1.1.2 does with NUL, BEL and DEL in a display name.
fn has_bare_control(line: &[u8]) -> bool {
    let mut quoted = false;
    let mut index = 0;
    while index < line.len() {
        let byte = line[index];
        if quoted
            && byte == b'\\'
            && line
                .get(index + 1)
                .is_some_and(|next| *next != b'\r' && *next != b'\n')
        {
            index += 2;
            continue;
        }
        if byte == b'"' {
            quoted = !quoted;
        } else if (byte < 0x20 && byte != b'\t') || byte == 0x7f {
            return true;
        }
        index += 1;
    }
    false
}

fn parse_response(
    start_line: &str,
    headers: Headers,
    body: Bytes,
    header_error: Option<&'static str>,
) -> Result<Message, ParseError> {
    let drop = |reason: &str| Err(ParseError::Drop(reason.to_string()));
    let mut parts = start_line.splitn(3, ' ');
    let (version, code, reason) = (parts.next(), parts.next(), parts.next());
    if version != Some("SIP/2.0") {
        return drop("unsupported version in status line");
    }
    let status = match code.and_then(|c| c.parse::<u16>().ok()) {
        Some(s) if (100..=699).contains(&s) => s,
        _ => return drop("bad status code"),
    };
    if let Some(reason) = header_error {
        return drop(reason);
    }
    if let Err(reason) = check_mandatory(&headers, None) {
        return drop(reason);
    }
    Ok(Message::Response(Response {
        status,
        reason: reason.unwrap_or_default().to_string(),
        headers,
        body,
    }))
}

/// §8.1.1: To, From, CSeq, Call-ID, Max-Forwards (requests) and Via must be present and valid.
fn check_mandatory(headers: &Headers, method: Option<&Method>) -> Result<(), &'static str> {
    // These appear once (§7.3.1: only comma-list headers may repeat); two of them make the
    // message ambiguous (RFC 4475 §3.3.8 multiple values, §3.3.9 two Content-Lengths).
    for (name, error) in [
        ("From", "more than one From"),
        ("To", "more than one To"),
        ("Call-ID", "more than one Call-ID"),
        ("CSeq", "more than one CSeq"),
        ("Max-Forwards", "more than one Max-Forwards"),
        ("Content-Length", "more than one Content-Length"),
    ] {
        if headers.get_all(name).nth(1).is_some() {
            return Err(error);
        }
    }
    let from = headers.get("From").ok_or("missing From")?;
    NameAddr::parse(from).map_err(|_| "bad From")?;
    let to = headers.get("To").ok_or("missing To")?;
    NameAddr::parse(to).map_err(|_| "bad To")?;
    let call_id = headers.get("Call-ID").ok_or("missing Call-ID")?;
    if call_id.is_empty() || call_id.contains(char::is_whitespace) {
        return Err("bad Call-ID");
    }
    let cseq = CSeq::parse(headers.get("CSeq").ok_or("missing CSeq")?).map_err(|_| "bad CSeq")?;
    if let Some(method) = method {
        // ACK and CANCEL carry the INVITE's number with their own method (§17.1.1.3, §9.1).
        if &cseq.method != method {
            return Err("CSeq method does not match the request method");
        }
        if let Some(value) = headers.get("Max-Forwards") {
            value.trim().parse::<u8>().map_err(|_| "bad Max-Forwards")?;
        }
    }
    for via in headers.list("Via") {
        Via::parse(via).map_err(|_| "bad Via")?;
    }
    Ok(())
}

impl Request {
    /// Serialises with a freshly computed Content-Length.
    pub fn to_bytes(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(512 + self.body.len());
        out.put_slice(format!("{} {} SIP/2.0\r\n", self.method, self.uri).as_bytes());
        write_headers_and_body(&mut out, &self.headers, &self.body);
        out.freeze()
    }

    /// The top Via, parsed (the parser checked it exists and is valid).
    pub fn top_via(&self) -> Option<Via> {
        self.headers
            .list("Via")
            .next()
            .and_then(|v| Via::parse(v).ok())
    }

    pub fn call_id(&self) -> &str {
        self.headers.get("Call-ID").unwrap_or_default()
    }

    pub fn cseq(&self) -> Option<CSeq> {
        self.headers.get("CSeq").and_then(|c| CSeq::parse(c).ok())
    }

    pub fn from(&self) -> Option<NameAddr> {
        self.headers
            .get("From")
            .and_then(|v| NameAddr::parse(v).ok())
    }

    pub fn to(&self) -> Option<NameAddr> {
        self.headers.get("To").and_then(|v| NameAddr::parse(v).ok())
    }

    pub fn contact(&self) -> Option<NameAddr> {
        self.headers
            .list("Contact")
            .next()
            .and_then(|v| NameAddr::parse(v).ok())
    }

    /// Max-Forwards, 70 when absent (§8.1.1.6 says a UAC must send it; be liberal).
    pub fn max_forwards(&self) -> u8 {
        self.headers
            .get("Max-Forwards")
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(70)
    }

    pub fn content_type(&self) -> Option<&str> {
        self.headers.get("Content-Type")
    }

    /// The SDP body, if the body is SDP.
    pub fn sdp(&self) -> Option<&str> {
        sdp_body(&self.headers, &self.body)
    }
}

impl Response {
    /// A response to `request` per §8.2.6.2: Via, From, To, Call-ID, CSeq copied; `to_tag` is
    /// added to To unless it already has one.
    pub fn for_request(request: &Request, status: u16, to_tag: Option<&str>) -> Response {
        response_from_headers(&request.headers, status, reason_phrase(status), to_tag)
    }

    pub fn to_bytes(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(512 + self.body.len());
        out.put_slice(format!("SIP/2.0 {} {}\r\n", self.status, self.reason).as_bytes());
        write_headers_and_body(&mut out, &self.headers, &self.body);
        out.freeze()
    }

    pub fn cseq(&self) -> Option<CSeq> {
        self.headers.get("CSeq").and_then(|c| CSeq::parse(c).ok())
    }

    pub fn to(&self) -> Option<NameAddr> {
        self.headers.get("To").and_then(|v| NameAddr::parse(v).ok())
    }

    pub fn contact(&self) -> Option<NameAddr> {
        self.headers
            .list("Contact")
            .next()
            .and_then(|v| NameAddr::parse(v).ok())
    }

    pub fn top_via(&self) -> Option<Via> {
        self.headers
            .list("Via")
            .next()
            .and_then(|v| Via::parse(v).ok())
    }

    pub fn sdp(&self) -> Option<&str> {
        sdp_body(&self.headers, &self.body)
    }
}

/// A response built from a request's headers; also used for requests that failed to parse.
pub fn response_from_headers(
    headers: &Headers,
    status: u16,
    reason: &str,
    to_tag: Option<&str>,
) -> Response {
    let mut out = Headers::new();
    out.copy_from(headers, "Via");
    out.copy_from(headers, "From");
    match (headers.get("To"), to_tag) {
        (Some(to), Some(tag)) if status != 100 => match NameAddr::parse(to) {
            Ok(na) if na.tag().is_none() => out.push("To", na.with_tag(tag).to_string()),
            _ => out.push("To", to),
        },
        (Some(to), _) => out.push("To", to),
        (None, _) => {}
    }
    out.copy_from(headers, "Call-ID");
    out.copy_from(headers, "CSeq");
    // A response that establishes a dialog carries the request's Record-Route, in order
    // (RFC 3261 §12.1.1): the proxies that record-routed stay on the dialog's path.
    let establishes = (101..300).contains(&status)
        && headers.get("Record-Route").is_some()
        && headers
            .get("CSeq")
            .and_then(|c| CSeq::parse(c).ok())
            .is_some_and(|c| c.method == Method::Invite)
        && headers
            .get("To")
            .and_then(|to| NameAddr::parse(to).ok())
            .is_some_and(|to| to.tag().is_none());
    if establishes {
        out.copy_from(headers, "Record-Route");
    }
    Response {
        status,
        reason: reason.to_string(),
        headers: out,
        body: Bytes::new(),
    }
}

fn sdp_body<'a>(headers: &Headers, body: &'a Bytes) -> Option<&'a str> {
    let is_sdp = headers
        .get("Content-Type")
        .is_some_and(|t| t.trim().to_ascii_lowercase().starts_with("application/sdp"));
    if !is_sdp || body.is_empty() {
        return None;
    }
    std::str::from_utf8(body).ok()
}

fn write_headers_and_body(out: &mut BytesMut, headers: &Headers, body: &[u8]) {
    for header in headers.iter() {
        if header.name.eq_ignore_ascii_case("Content-Length") {
            continue;
        }
        out.put_slice(header.name.as_bytes());
        out.put_slice(b": ");
        out.put_slice(header.value.as_bytes());
        out.put_slice(b"\r\n");
    }
    out.put_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
    out.put_slice(body);
}

/// The ACK for a non-2xx final response, built by the client transaction's owner (§17.1.1.3):
/// same Request-URI, Call-ID, From, CSeq number and top Via as the INVITE, To from the response,
/// Route copied.
pub fn ack_for_non_2xx(invite: &Request, response: &Response) -> Request {
    let mut headers = Headers::new();
    if let Some(via) = invite.headers.list("Via").next() {
        headers.push("Via", via);
    }
    headers.push("Max-Forwards", "70");
    headers.copy_from(&invite.headers, "From");
    headers.copy_from(&response.headers, "To");
    headers.copy_from(&invite.headers, "Call-ID");
    let sequence = invite.cseq().map_or(1, |c| c.sequence);
    headers.push("CSeq", format!("{sequence} ACK"));
    headers.copy_from(&invite.headers, "Route");
    Request {
        method: Method::Ack,
        uri: invite.uri.clone(),
        headers,
        body: Bytes::new(),
    }
}

/// What a client transaction keeps of its request for the messages it makes itself: the ACK
/// for a non-2xx final response (§17.1.1.3) and its answer when the connection is lost need
/// the Request-URI, Via, From, To, Call-ID, CSeq and Route, not the body nor the rest (the
/// bytes a retransmission needs are kept apart, serialised).
pub fn essentials(mut request: Request) -> Request {
    request
        .headers
        .keep_only(&["Via", "From", "To", "Call-ID", "CSeq", "Route"]);
    request.body = Bytes::new();
    request
}

/// The CANCEL for a pending INVITE (§9.1): same Request-URI, Call-ID, To, From, CSeq number,
/// top Via (so the same branch) and Route.
pub fn cancel_for(invite: &Request) -> Request {
    let mut headers = Headers::new();
    if let Some(via) = invite.headers.list("Via").next() {
        headers.push("Via", via);
    }
    headers.push("Max-Forwards", "70");
    headers.copy_from(&invite.headers, "From");
    headers.copy_from(&invite.headers, "To");
    headers.copy_from(&invite.headers, "Call-ID");
    let sequence = invite.cseq().map_or(1, |c| c.sequence);
    headers.push("CSeq", format!("{sequence} CANCEL"));
    headers.copy_from(&invite.headers, "Route");
    Request {
        method: Method::Cancel,
        uri: invite.uri.clone(),
        headers,
        body: Bytes::new(),
    }
}

/// The reason phrases of RFC 3261 §21 (with 422 of RFC 4028 and 489 of RFC 6665) for the codes
/// the gateway sends or relays.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Trying",
        180 => "Ringing",
        181 => "Call Is Being Forwarded",
        182 => "Queued",
        183 => "Session Progress",
        200 => "OK",
        202 => "Accepted",
        300 => "Multiple Choices",
        301 => "Moved Permanently",
        302 => "Moved Temporarily",
        305 => "Use Proxy",
        380 => "Alternative Service",
        400 => "Bad Request",
        401 => "Unauthorized",
        402 => "Payment Required",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        410 => "Gone",
        413 => "Request Entity Too Large",
        414 => "Request-URI Too Long",
        415 => "Unsupported Media Type",
        416 => "Unsupported URI Scheme",
        420 => "Bad Extension",
        421 => "Extension Required",
        422 => "Session Interval Too Small",
        423 => "Interval Too Brief",
        480 => "Temporarily Unavailable",
        481 => "Call/Transaction Does Not Exist",
        482 => "Loop Detected",
        483 => "Too Many Hops",
        484 => "Address Incomplete",
        485 => "Ambiguous",
        486 => "Busy Here",
        487 => "Request Terminated",
        488 => "Not Acceptable Here",
        489 => "Bad Event",
        491 => "Request Pending",
        493 => "Undecipherable",
        500 => "Server Internal Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Server Time-out",
        505 => "Version Not Supported",
        513 => "Message Too Large",
        600 => "Busy Everywhere",
        603 => "Decline",
        604 => "Does Not Exist Anywhere",
        606 => "Not Acceptable",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests;
