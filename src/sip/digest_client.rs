//! The client side of SIP digest authentication (RFC 3261 §22.2, RFC 7616 §3.3-3.4, RFC 8760):
//! what the gateway answers when a peer challenges one of its requests with 401
//! (WWW-Authenticate) or 407 (Proxy-Authenticate). Sans-IO: the caller hands in the challenge
//! values, the credentials and a fresh cnonce (from its IdGenerator), and gets the header to
//! add.

use std::collections::HashMap;

use super::auth::response_digest;
use super::message::Response;
use crate::routing::credentials::{Algorithm, OutboundCredentials};

/// Nonces whose counts are kept at most (the oldest go first).
const MAX_NONCES: usize = 64;

/// One `Digest` challenge, as far as the gateway can answer it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub realm: String,
    pub nonce: String,
    pub opaque: Option<String>,
    pub algorithm: Algorithm,
    /// `qop` offered with `auth` among its values (RFC 7616 §3.3); false: no qop at all, the
    /// RFC 2617 compatibility form.
    pub qop_auth: bool,
    /// RFC 7616 §3.3: the previous nonce was merely stale, the credentials were right.
    pub stale: bool,
}

/// `name=value` parameters of a challenge: values quoted (with `\` escapes, RFC 3261 §25.1)
/// or tokens. None for another scheme or broken quoting.
fn params(value: &str) -> Option<Vec<(String, String)>> {
    let value = value.trim();
    let (scheme, mut rest) = value.split_once(char::is_whitespace)?;
    if !scheme.eq_ignore_ascii_case("Digest") {
        return None;
    }
    let mut out = Vec::new();
    loop {
        rest = rest.trim_start_matches(|c: char| c == ',' || c.is_whitespace());
        if rest.is_empty() {
            return Some(out);
        }
        let (name, after) = rest.split_once('=')?;
        let after = after.trim_start();
        let mut param = String::new();
        if let Some(quoted) = after.strip_prefix('"') {
            let mut chars = quoted.char_indices();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => param.push(chars.next()?.1),
                    '"' => {
                        end = Some(i + 1);
                        break;
                    }
                    c => param.push(c),
                }
            }
            rest = &quoted[end?..];
        } else {
            let end = after.find(',').unwrap_or(after.len());
            param.push_str(after[..end].trim());
            rest = &after[end..];
        }
        out.push((name.trim().to_ascii_lowercase(), param));
    }
}

/// Parses one challenge value; None if it is not Digest, lacks realm or nonce, names an
/// algorithm we do not know (the `-sess` ones too), or offers qop without `auth`.
pub fn parse_challenge(value: &str) -> Option<Challenge> {
    let mut realm = None;
    let mut nonce = None;
    let mut opaque = None;
    let mut algorithm = Algorithm::Md5;
    let mut qop = None;
    let mut stale = false;
    for (name, param) in params(value)? {
        match name.as_str() {
            "realm" => realm = Some(param),
            "nonce" => nonce = Some(param),
            "opaque" => opaque = Some(param),
            "algorithm" => algorithm = Algorithm::parse(&param)?,
            "qop" => qop = Some(param),
            "stale" => stale = param.eq_ignore_ascii_case("true"),
            _ => {}
        }
    }
    let qop_auth = qop.is_some();
    if qop.is_some_and(|list| {
        !list
            .split(',')
            .any(|q| q.trim().eq_ignore_ascii_case("auth"))
    }) {
        return None;
    }
    Some(Challenge {
        realm: realm?,
        nonce: nonce?,
        opaque,
        algorithm,
        qop_auth,
        stale,
    })
}

fn strength(algorithm: Algorithm) -> u8 {
    match algorithm {
        Algorithm::Md5 => 0,
        Algorithm::Sha256 => 1,
        Algorithm::Sha512_256 => 2,
    }
}

/// RFC 8760 §2.4: of several challenges, the strongest algorithm we know (the first of equals).
pub fn strongest<'a>(values: impl IntoIterator<Item = &'a str>) -> Option<Challenge> {
    values
        .into_iter()
        .filter_map(parse_challenge)
        .fold(None, |best: Option<Challenge>, c| match best {
            Some(b) if strength(b.algorithm) >= strength(c.algorithm) => Some(b),
            _ => Some(c),
        })
}

/// The challenge a 401 or 407 carries, and the header its answer goes in (§22.2-22.3).
pub fn challenge_of(response: &Response) -> Option<(Challenge, &'static str)> {
    let (asked, answer) = match response.status {
        401 => ("WWW-Authenticate", "Authorization"),
        407 => ("Proxy-Authenticate", "Proxy-Authorization"),
        _ => return None,
    };
    strongest(response.headers.get_all(asked)).map(|c| (c, answer))
}

/// A quoted-string (RFC 3261 §25.1).
fn quoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// What is needed besides the challenge and credentials to answer it.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub method: &'a str,
    /// The Request-URI as sent (the digest-uri, §22.4).
    pub uri: &'a str,
    /// This nonce's count (from 1, [`NonceCounts::next`]).
    pub nc: u32,
    pub cnonce: &'a str,
}

/// The Authorization / Proxy-Authorization value answering `challenge` (RFC 7616 §3.4;
/// without qop, RFC 2617 §3.2.2.1's H(HA1:nonce:HA2), with no nc or cnonce).
pub fn authorization(
    challenge: &Challenge,
    credentials: &OutboundCredentials,
    request: Request<'_>,
) -> String {
    let algorithm = challenge.algorithm;
    let nc = format!("{:08x}", request.nc);
    let response = if challenge.qop_auth {
        response_digest(
            algorithm,
            &credentials.username,
            &challenge.realm,
            &credentials.password,
            request.method,
            request.uri,
            &challenge.nonce,
            &nc,
            request.cnonce,
        )
    } else {
        let ha1 = algorithm.hash(&format!(
            "{}:{}:{}",
            credentials.username, challenge.realm, credentials.password
        ));
        let ha2 = algorithm.hash(&format!("{}:{}", request.method, request.uri));
        algorithm.hash(&format!("{ha1}:{}:{ha2}", challenge.nonce))
    };
    let mut value = format!(
        "Digest username={}, realm={}, nonce={}, uri={}, response=\"{response}\", algorithm={}",
        quoted(&credentials.username),
        quoted(&challenge.realm),
        quoted(&challenge.nonce),
        quoted(request.uri),
        algorithm.name()
    );
    if let Some(opaque) = &challenge.opaque {
        value.push_str(&format!(", opaque={}", quoted(opaque)));
    }
    if challenge.qop_auth {
        value.push_str(&format!(
            ", qop=auth, nc={nc}, cnonce={}",
            quoted(request.cnonce)
        ));
    }
    value
}

/// RFC 7616 §3.4: the nonce count, per nonce, of the requests answered with it.
#[derive(Debug, Default)]
pub struct NonceCounts {
    counts: HashMap<String, (u32, u64)>,
    serial: u64,
}

impl NonceCounts {
    /// The next count for `nonce` (1 for a new one).
    pub fn next(&mut self, nonce: &str) -> u32 {
        self.serial += 1;
        if !self.counts.contains_key(nonce) && self.counts.len() >= MAX_NONCES {
            let oldest = self
                .counts
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(n, _)| n.clone());
            if let Some(oldest) = oldest {
                self.counts.remove(&oldest);
            }
        }
        let entry = self.counts.entry(nonce.to_string()).or_insert((0, 0));
        entry.0 = entry.0.saturating_add(1);
        entry.1 = self.serial;
        entry.0
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::routing::credentials::Credentials;
    use crate::sip::auth::{Digest, Verdict};
    use crate::sip::message::{parse, Message};

    const NONCE: &str = "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v";
    const OPAQUE: &str = "FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS";
    const CNONCE: &str = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ";

    fn mufasa() -> OutboundCredentials {
        OutboundCredentials {
            username: "Mufasa".into(),
            password: "Circle of Life".into(),
        }
    }

    fn rfc_challenge(algorithm: &str) -> String {
        format!(
            "Digest realm=\"http-auth@example.org\", qop=\"auth, auth-int\", \
             algorithm={algorithm}, nonce=\"{NONCE}\", opaque=\"{OPAQUE}\""
        )
    }

    #[test]
    fn rfc_7616_example_answers_and_the_strongest_challenge() {
        // RFC 7616 §3.9.1: the server offers SHA-256 and MD5; a client takes SHA-256.
        let (sha, md5) = (rfc_challenge("SHA-256"), rfc_challenge("MD5"));
        let chosen = strongest([md5.as_str(), sha.as_str()]);
        assert_eq!(
            chosen.as_ref().map(|c| c.algorithm),
            Some(Algorithm::Sha256)
        );
        let request = Request {
            method: "GET",
            uri: "/dir/index.html",
            nc: 1,
            cnonce: CNONCE,
        };
        let expected = [
            (
                sha,
                "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1",
            ),
            (md5, "8ca523f5e9506fed4657c9700eebdbec"),
        ];
        for (value, response) in expected {
            let challenge = parse_challenge(&value);
            let Some(challenge) = challenge else {
                panic!("unparsed: {value}");
            };
            assert!(challenge.qop_auth && !challenge.stale);
            let answer = authorization(&challenge, &mufasa(), request);
            assert!(
                answer.contains(&format!("response=\"{response}\"")),
                "{answer}"
            );
            assert!(answer.contains("qop=auth, nc=00000001"), "{answer}");
            assert!(answer.contains(&format!("opaque=\"{OPAQUE}\"")), "{answer}");
            assert!(answer.contains("username=\"Mufasa\""), "{answer}");
        }
    }

    #[test]
    fn odd_challenges() {
        let stale = "Digest realm=\"a \\\"b\\\"\", nonce=\"n\", stale=TRUE, algorithm=SHA-512-256";
        let challenge = parse_challenge(stale);
        assert_eq!(
            challenge
                .as_ref()
                .map(|c| (c.realm.as_str(), c.stale, c.qop_auth)),
            Some(("a \"b\"", true, false))
        );
        assert_eq!(
            strongest([stale, rfc_challenge("SHA-256").as_str()]).map(|c| c.algorithm),
            Some(Algorithm::Sha512_256)
        );
        assert!(parse_challenge("Basic realm=\"x\"").is_none());
        assert!(parse_challenge("Digest realm=\"x\", nonce=\"n\", qop=\"auth-int\"").is_none());
        assert!(parse_challenge("Digest realm=\"x\", nonce=\"n\", algorithm=MD5-sess").is_none());
        assert!(parse_challenge("Digest realm=\"x\"").is_none());
        assert!(parse_challenge("Digest realm=\"x, nonce=n").is_none());
        // RFC 2617 compatibility: no qop, no nc or cnonce; H(HA1:nonce:HA2).
        let Some(old) = parse_challenge("Digest realm=\"r\", nonce=\"n\"") else {
            panic!("unparsed");
        };
        let request = Request {
            method: "INVITE",
            uri: "sip:110@10.0.0.1",
            nc: 1,
            cnonce: "c",
        };
        let answer = authorization(&old, &mufasa(), request);
        let ha1 = Algorithm::Md5.hash("Mufasa:r:Circle of Life");
        let ha2 = Algorithm::Md5.hash("INVITE:sip:110@10.0.0.1");
        let expected = Algorithm::Md5.hash(&format!("{ha1}:n:{ha2}"));
        assert!(
            answer.contains(&expected) && !answer.contains("nc="),
            "{answer}"
        );
    }

    #[test]
    fn nonce_counts_are_per_nonce() {
        let mut counts = NonceCounts::default();
        assert_eq!(counts.next("a"), 1);
        assert_eq!(counts.next("a"), 2);
        assert_eq!(counts.next("b"), 1);
        for i in 0..2 * MAX_NONCES {
            counts.next(&i.to_string());
        }
        assert!(counts.counts.len() <= MAX_NONCES);
    }

    #[test]
    fn the_gateways_own_server_lets_the_answer_in() {
        let t0 = Instant::now();
        let mut server = Digest::new("gw", [7; 32], Duration::from_secs(300), t0);
        let expected = Credentials {
            username: "carrier".into(),
            password: "s3cret-trunk".into(),
            algorithms: vec![Algorithm::Sha256, Algorithm::Md5],
        };
        let values = server.challenge(t0, &expected, false);
        let Some(challenge) = strongest(values.iter().map(String::as_str)) else {
            panic!("no challenge in {values:?}");
        };
        assert_eq!(challenge.algorithm, Algorithm::Sha256);
        let mut counts = NonceCounts::default();
        for (password, verdict) in [
            ("s3cret-trunk", Verdict::Pass),
            ("s3cret-trunk", Verdict::Pass),
            ("guess", Verdict::Refuse("wrong credentials")),
        ] {
            let credentials = OutboundCredentials {
                username: "carrier".into(),
                password: password.into(),
            };
            let request = Request {
                method: "INVITE",
                uri: "sip:12345@10.0.0.1",
                nc: counts.next(&challenge.nonce),
                cnonce: "0a4f113b",
            };
            let header = authorization(&challenge, &credentials, request);
            let text = format!(
                "INVITE sip:12345@10.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.2;branch=z9hG4bK1\r\n\
                 From: <sip:c@10.0.0.2>;tag=1\r\nTo: <sip:12345@10.0.0.1>\r\nCall-ID: x\r\n\
                 CSeq: 2 INVITE\r\nAuthorization: {header}\r\nContent-Length: 0\r\n\r\n"
            );
            let Ok(Message::Request(invite)) = parse(text.as_bytes()) else {
                panic!("unparsed: {text}");
            };
            assert_eq!(server.check(t0, &invite, &expected), verdict);
        }
    }
}
