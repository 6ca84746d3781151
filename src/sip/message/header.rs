//! Header storage and the typed header values the gateway reads: Via, name-addr (From, To,
//! Contact, P-Asserted-Identity, Refer-To, ...), CSeq.

use std::borrow::Cow;
use std::fmt;

use super::uri::{find_param, parse_params, write_params, Param, Uri, UriError};
use super::Method;

/// One header line, with the name in its canonical long form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub name: Cow<'static, str>,
    pub value: String,
}

/// Headers in wire order. Lookups are case-insensitive on the canonical name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers(Vec<Header>);

/// Compact forms (RFC 3261 §7.3.3 and the extensions that define one) -> canonical names.
const COMPACT: &[(&str, &str)] = &[
    ("i", "Call-ID"),
    ("m", "Contact"),
    ("e", "Content-Encoding"),
    ("l", "Content-Length"),
    ("c", "Content-Type"),
    ("f", "From"),
    ("s", "Subject"),
    ("k", "Supported"),
    ("t", "To"),
    ("v", "Via"),
    ("r", "Refer-To"),
    ("b", "Referred-By"),
    ("o", "Event"),
    ("u", "Allow-Events"),
    ("x", "Session-Expires"),
    ("y", "Identity"),
];

/// Canonical spelling of the headers we print, so output looks like every other SIP stack's.
const CANONICAL: &[&str] = &[
    "Via",
    "Max-Forwards",
    "From",
    "To",
    "Call-ID",
    "CSeq",
    "Contact",
    "Content-Type",
    "Content-Length",
    "Route",
    "Record-Route",
    "Allow",
    "Supported",
    "Require",
    "User-Agent",
    "Server",
    "P-Asserted-Identity",
    "Privacy",
    "Reason",
    "Retry-After",
    "Refer-To",
    "Referred-By",
    "Session-Expires",
    "Accept",
    "Event",
    "Subscription-State",
    "Unsupported",
];

/// Canonical name for a header name read from the wire.
pub fn canonical_name(name: &str) -> Cow<'static, str> {
    if name.len() == 1 {
        if let Some((_, long)) = COMPACT
            .iter()
            .find(|(short, _)| short.eq_ignore_ascii_case(name))
        {
            return Cow::Borrowed(long);
        }
    }
    match CANONICAL.iter().find(|c| c.eq_ignore_ascii_case(name)) {
        Some(c) => Cow::Borrowed(c),
        None => Cow::Owned(name.to_string()),
    }
}

impl Headers {
    pub fn new() -> Headers {
        Headers(Vec::new())
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Header> {
        self.0.iter()
    }

    /// Appends a header (name normalised to its canonical form).
    pub fn push(&mut self, name: &str, value: impl Into<String>) {
        self.0.push(Header {
            name: canonical_name(name),
            value: value.into(),
        });
    }

    /// Inserts a header before all others (a proxy's Via goes on top).
    pub fn push_front(&mut self, name: &str, value: impl Into<String>) {
        self.0.insert(
            0,
            Header {
                name: canonical_name(name),
                value: value.into(),
            },
        );
    }

    /// First value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value.as_str())
    }

    /// Every line of `name`, in order.
    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value.as_str())
    }

    /// Every comma-separated element of `name` across all its lines (Via, Route, Record-Route,
    /// Contact may be combined on one line, §7.3.1).
    pub fn list<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.get_all(name).flat_map(split_list)
    }

    /// Replaces every line of `name` with one line.
    pub fn set(&mut self, name: &str, value: impl Into<String>) {
        let value = value.into();
        if let Some(position) = self
            .0
            .iter()
            .position(|h| h.name.eq_ignore_ascii_case(name))
        {
            self.0[position].value = value;
            let mut index = 0;
            self.0.retain(|h| {
                let keep = index <= position || !h.name.eq_ignore_ascii_case(name);
                index += 1;
                keep
            });
        } else {
            self.push(name, value);
        }
    }

    pub fn remove(&mut self, name: &str) {
        self.0.retain(|h| !h.name.eq_ignore_ascii_case(name));
    }

    /// Keeps only the lines named in `names` (canonical names), in their order, and gives
    /// back the room the others took.
    pub fn keep_only(&mut self, names: &[&str]) {
        self.0.retain(|header| {
            names
                .iter()
                .any(|name| header.name.eq_ignore_ascii_case(name))
        });
        self.0.shrink_to_fit();
    }

    /// Copies every line of `name` from `other`.
    pub fn copy_from(&mut self, other: &Headers, name: &str) {
        for value in other.get_all(name) {
            self.push(name, value);
        }
    }
}

/// Splits a header value on commas that are outside quotes and angle brackets.
pub fn split_list(value: &str) -> impl Iterator<Item = &str> {
    let mut pieces = Vec::new();
    let (mut depth, mut quoted, mut start) = (0i32, false, 0usize);
    let bytes = value.as_bytes();
    let mut index = 0;
    while index < bytes.len() {
        match bytes[index] {
            b'\\' if quoted => index += 1,
            b'"' => quoted = !quoted,
            b'<' if !quoted => depth += 1,
            b'>' if !quoted => depth -= 1,
            b',' if !quoted && depth <= 0 => {
                pieces.push(value[start..index].trim());
                start = index + 1;
            }
            _ => {}
        }
        index += 1;
    }
    pieces.push(value[start.min(value.len())..].trim());
    pieces.into_iter().filter(|p| !p.is_empty())
}

/// A Via value (§20.42): `SIP/2.0/UDP host:port;branch=...;rport`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Via {
    pub transport: String,
    pub host: super::uri::Host,
    pub port: Option<u16>,
    pub params: Vec<Param>,
}

impl Via {
    /// # Errors
    /// [`UriError::Malformed`] on a malformed value.
    pub fn parse(text: &str) -> Result<Via, UriError> {
        let not_sip = UriError::Malformed("Via protocol is not SIP/2.0/transport");
        // sent-protocol is three tokens joined by SLASH = SWS "/" SWS (§25.1), so
        // "SIP  /   2.0 /UDP" is valid (RFC 4475 §3.1.1.1); a token ends at '/' or whitespace.
        let mut rest = text.trim();
        let mut protocol = [""; 3];
        for (index, field) in protocol.iter_mut().enumerate() {
            if index > 0 {
                rest = rest
                    .trim_start()
                    .strip_prefix('/')
                    .ok_or(not_sip.clone())?
                    .trim_start();
            }
            let end = rest
                .find(|c: char| c == '/' || c.is_ascii_whitespace())
                .unwrap_or(rest.len());
            *field = &rest[..end];
            rest = &rest[end..];
        }
        let [name, version, transport] = protocol;
        if !name.eq_ignore_ascii_case("SIP") || version != "2.0" || transport.is_empty() {
            return Err(not_sip);
        }
        if !rest.starts_with(|c: char| c.is_ascii_whitespace()) || rest.trim().is_empty() {
            return Err(UriError::Malformed("Via without sent-by"));
        }
        let mut parts = rest.trim().split(';');
        let sent_by = parts.next().unwrap_or_default().trim();
        let (host, port) = super::uri::parse_hostport(sent_by)?;
        Ok(Via {
            transport: transport.to_ascii_uppercase(),
            host,
            port,
            params: parse_params(parts)?,
        })
    }

    pub fn param(&self, name: &str) -> Option<Option<&str>> {
        find_param(&self.params, name)
    }

    pub fn branch(&self) -> Option<&str> {
        self.param("branch").flatten()
    }

    /// Sets or adds a parameter.
    pub fn set_param(&mut self, name: &str, value: Option<String>) {
        match self
            .params
            .iter_mut()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
        {
            Some(param) => param.1 = value,
            None => self.params.push((name.to_string(), value)),
        }
    }
}

impl fmt::Display for Via {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SIP/2.0/{} {}", self.transport, self.host)?;
        if let Some(port) = self.port {
            write!(f, ":{port}")?;
        }
        write_params(f, &self.params)
    }
}

/// `"Display" <uri>;params` or `uri;params` (§20.10, §25.1 name-addr / addr-spec).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameAddr {
    pub display_name: Option<String>,
    pub uri: Uri,
    pub params: Vec<Param>,
}

impl NameAddr {
    pub fn new(uri: Uri) -> NameAddr {
        NameAddr {
            display_name: None,
            uri,
            params: Vec::new(),
        }
    }

    /// # Errors
    /// [`UriError`] when the value has no parsable URI.
    pub fn parse(text: &str) -> Result<NameAddr, UriError> {
        let text = text.trim();
        if let Some(open) = find_unquoted(text, b'<') {
            let close = text[open..]
                .find('>')
                .map(|c| c + open)
                .ok_or(UriError::Malformed("missing '>'"))?;
            let display = text[..open].trim();
            let display_name = if display.is_empty() {
                None
            } else if display.len() >= 2 && display.starts_with('"') && display.ends_with('"') {
                // §25.1 quoted-string: `\"` and `\\` stand for `"` and `\`.
                Some(unquote(&display[1..display.len() - 1]))
            } else {
                Some(display.to_string())
            };
            let uri = Uri::parse(&text[open + 1..close])?;
            let rest = &text[close + 1..];
            if !rest.trim_start().is_empty() && !rest.trim_start().starts_with(';') {
                return Err(UriError::Malformed("text after '>' that is no parameter"));
            }
            let params = parse_params(rest.split(';'))?;
            Ok(NameAddr {
                display_name,
                uri,
                params,
            })
        } else {
            // addr-spec: parameters after the URI belong to the header, not the URI (§20.10).
            let mut parts = text.splitn(2, ';');
            let uri = Uri::parse(parts.next().unwrap_or_default())?;
            let params = parse_params(parts.next().unwrap_or_default().split(';'))?;
            Ok(NameAddr {
                display_name: None,
                uri,
                params,
            })
        }
    }

    pub fn tag(&self) -> Option<&str> {
        find_param(&self.params, "tag").flatten()
    }

    /// A header parameter (after the `>`), e.g. a Contact's `expires` (§20.10).
    pub fn param(&self, name: &str) -> Option<Option<&str>> {
        find_param(&self.params, name)
    }

    pub fn with_tag(mut self, tag: &str) -> NameAddr {
        self.params.retain(|(n, _)| !n.eq_ignore_ascii_case("tag"));
        self.params.push(("tag".into(), Some(tag.to_string())));
        self
    }
}

impl fmt::Display for NameAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(name) = &self.display_name {
            let escaped = name.replace('\\', "\\\\").replace('"', "\\\"");
            write!(f, "\"{escaped}\" ")?;
        }
        write!(f, "<{}>", self.uri)?;
        write_params(f, &self.params)
    }
}

/// The text of a quoted-string's inside, its quoted-pairs (`\x`) undone.
fn unquote(inside: &str) -> String {
    let mut text = String::with_capacity(inside.len());
    let mut chars = inside.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(escaped) = chars.next() {
                text.push(escaped);
            }
        } else {
            text.push(c);
        }
    }
    text
}

fn find_unquoted(text: &str, needle: u8) -> Option<usize> {
    let mut quoted = false;
    let bytes = text.as_bytes();
    let mut index = 0;
    while index < bytes.len() {
        match bytes[index] {
            b'\\' if quoted => index += 1,
            b'"' => quoted = !quoted,
            b if b == needle && !quoted => return Some(index),
            _ => {}
        }
        index += 1;
    }
    None
}

/// `CSeq: 4711 INVITE` (§20.16).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CSeq {
    pub sequence: u32,
    pub method: Method,
}

impl CSeq {
    /// # Errors
    /// [`UriError::Malformed`] (reused as the header error) on a malformed value.
    pub fn parse(text: &str) -> Result<CSeq, UriError> {
        let mut parts = text.split_ascii_whitespace();
        let sequence = parts
            .next()
            .and_then(|n| n.parse::<u32>().ok())
            .filter(|n| *n < 1 << 31)
            .ok_or(UriError::Malformed("bad CSeq number"))?;
        let method = Method::parse(
            parts
                .next()
                .ok_or(UriError::Malformed("CSeq without method"))?,
        )
        .ok_or(UriError::Malformed("bad CSeq method"))?;
        if parts.next().is_some() {
            return Err(UriError::Malformed("junk after CSeq method"));
        }
        Ok(CSeq { sequence, method })
    }
}

impl fmt::Display for CSeq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.sequence, self.method)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::message::uri::Host;

    #[test]
    fn compact_names_expand() {
        assert_eq!(canonical_name("v"), "Via");
        assert_eq!(canonical_name("I"), "Call-ID");
        assert_eq!(canonical_name("call-id"), "Call-ID");
        assert_eq!(canonical_name("X-Linkage-Id"), "X-Linkage-Id");
    }

    #[test]
    fn via_round_trip_and_params() {
        let text = "SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-1;rport";
        let via = Via::parse(text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(via.branch(), Some("z9hG4bK-1"));
        assert_eq!(via.param("rport"), Some(None));
        assert_eq!(via.to_string(), text);
        let v6 = Via::parse("SIP/2.0/TCP [2001:db8::2]:5080;branch=z9hG4bKx")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(v6.host, Host::Ip("2001:db8::2".parse().unwrap()));
        assert!(Via::parse("SIP/3.0/UDP h").is_err());
        assert!(Via::parse("SIP/2.0/UDP").is_err());
    }

    #[test]
    fn name_addr_forms() {
        let a = NameAddr::parse("\"Citizen, Li\" <sip:13800138000@10.0.0.1>;tag=abc")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(a.display_name.as_deref(), Some("Citizen, Li"));
        assert_eq!(a.tag(), Some("abc"));
        assert_eq!(a.uri.user.as_deref(), Some("13800138000"));
        let b = NameAddr::parse("sip:12345@gw;tag=9").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(b.tag(), Some("9"));
        assert!(b.uri.params.is_empty());
        let tel = NameAddr::parse("<tel:+8613800138000>").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(tel.uri.number().as_deref(), Some("+8613800138000"));
        assert!(NameAddr::parse("<sip:x@y").is_err());
        // Junk after '>' is no parameter.
        assert!(NameAddr::parse("<sip:x@y>junk;tag=1").is_err());
        assert!(NameAddr::parse("<sip:x@y> ;tag=1").is_ok());
    }

    /// A display name's quoted-pairs are undone when read and done again when written, so a
    /// name crosses any number of hops unchanged (backslashes do not double per hop).
    #[test]
    fn display_names_round_trip_their_escapes() {
        // On the wire: "Li \"the\" 3\\4" <sip:1@h>;tag=t
        let text = "\"Li \\\"the\\\" 3\\\\4\" <sip:1@h>;tag=t";
        let mut hop = NameAddr::parse(text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(hop.display_name.as_deref(), Some("Li \"the\" 3\\4"));
        for _ in 0..3 {
            hop = NameAddr::parse(&hop.to_string()).unwrap_or_else(|e| panic!("{e}"));
        }
        assert_eq!(hop.display_name.as_deref(), Some("Li \"the\" 3\\4"));
        assert_eq!(hop.to_string(), text);
    }

    #[test]
    fn list_splitting_respects_quotes_and_brackets() {
        let items: Vec<&str> =
            split_list("\"a, b\" <sip:a@h;lr>, <sip:b@h?x=1,2>, sip:c@h").collect();
        assert_eq!(
            items,
            vec!["\"a, b\" <sip:a@h;lr>", "<sip:b@h?x=1,2>", "sip:c@h"]
        );
    }

    #[test]
    fn cseq_parse() {
        let c = CSeq::parse("4711 INVITE").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.sequence, 4711);
        assert_eq!(c.method, Method::Invite);
        assert!(CSeq::parse("x INVITE").is_err());
        assert!(CSeq::parse("1").is_err());
        assert!(CSeq::parse("4294967295 BYE").is_err());
    }

    #[test]
    fn set_replaces_all_lines() {
        let mut h = Headers::new();
        h.push("Max-Forwards", "70");
        h.push("Via", "a");
        h.push("max-forwards", "3");
        h.set("Max-Forwards", "69");
        assert_eq!(h.get_all("Max-Forwards").collect::<Vec<_>>(), vec!["69"]);
        assert_eq!(h.len(), 2);
    }
}
