//! SIP digest authentication of peers (RFC 3261 §22, with RFC 7616's qop=auth and RFC 8760's
//! SHA-256 and SHA-512/256 beside MD5). Sans-IO: [`Digest::check`] takes a request, the peer's
//! credentials and a clock reading, and says whether to let it in, challenge it or refuse it.
//!
//! Nonces carry their own birth time and a MAC under a key of this process (no table of issued
//! nonces to fill), so expiry is checked without state. Replays are caught by the nonce count:
//! qop=auth is required, and for each nonce the highest `nc` seen is kept until the nonce
//! expires; a request with a count not above it is a replay.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::message::Request;
use sha2::{Digest as _, Sha256};

use crate::routing::credentials::{hex, Algorithm, Credentials};

/// Nonce counts remembered at most (older nonces are forgotten first; a forgotten nonce is
/// answered stale, so the client just takes a new one).
const MAX_NONCES: usize = 100_000;

/// What to do with a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    /// 401 with these WWW-Authenticate values (one per algorithm).
    Challenge(Vec<String>),
    /// 403: credentials were given and are wrong (no second guess).
    Refuse(&'static str),
}

/// The parameters of a `Digest` Authorization value.
#[derive(Debug, Default)]
struct Authorization<'a> {
    username: &'a str,
    realm: &'a str,
    nonce: &'a str,
    uri: &'a str,
    response: &'a str,
    algorithm: Option<&'a str>,
    cnonce: Option<&'a str>,
    qop: Option<&'a str>,
    nc: Option<&'a str>,
}

/// `Digest a="b", c=d, ...`: quoted or token values; None for another scheme.
fn parse_authorization(value: &str) -> Option<Authorization<'_>> {
    let value = value.trim();
    let (scheme, mut rest) = value.split_once(char::is_whitespace)?;
    if !scheme.eq_ignore_ascii_case("Digest") {
        return None;
    }
    let mut out = Authorization::default();
    loop {
        rest = rest.trim_start_matches(|c: char| c == ',' || c.is_whitespace());
        if rest.is_empty() {
            break;
        }
        let (name, after) = rest.split_once('=')?;
        let after = after.trim_start();
        let (param, next) = if let Some(quoted) = after.strip_prefix('"') {
            let end = quoted.find('"')?;
            (&quoted[..end], &quoted[end + 1..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim(), &after[end..])
        };
        match name.trim().to_ascii_lowercase().as_str() {
            "username" => out.username = param,
            "realm" => out.realm = param,
            "nonce" => out.nonce = param,
            "uri" => out.uri = param,
            "response" => out.response = param,
            "algorithm" => out.algorithm = Some(param),
            "cnonce" => out.cnonce = Some(param),
            "qop" => out.qop = Some(param),
            "nc" => out.nc = Some(param),
            _ => {}
        }
        rest = next;
    }
    Some(out)
}

/// The request digest (RFC 7616 §3.4.1, qop=auth): H(H(A1):nonce:nc:cnonce:qop:H(A2)).
#[allow(clippy::too_many_arguments)]
pub fn response_digest(
    algorithm: Algorithm,
    username: &str,
    realm: &str,
    password: &str,
    method: &str,
    uri: &str,
    nonce: &str,
    nc: &str,
    cnonce: &str,
) -> String {
    let ha1 = algorithm.hash(&format!("{username}:{realm}:{password}"));
    let ha2 = algorithm.hash(&format!("{method}:{uri}"));
    algorithm.hash(&format!("{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}"))
}

/// Compares in time independent of where the strings differ.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// The authenticator: realm, nonce key and lifetime, and the nonce counts seen.
pub struct Digest {
    realm: String,
    key: [u8; 32],
    lifetime: Duration,
    epoch: Instant,
    /// Makes every nonce unique: each is one client's, so its counts are that client's.
    serial: u64,
    /// Per nonce: the highest nonce count accepted, and when the nonce was born.
    counts: HashMap<String, (u32, u64)>,
    /// Nonces born at or before this second may have been forgotten while still live: one
    /// missing from `counts` is answered stale, never taken as unused (a replay otherwise).
    forgotten_through: Option<u64>,
    /// [`MAX_NONCES`], smaller in tests.
    max_nonces: usize,
}

impl Digest {
    /// `key` signs nonces (random per process: nonces of an earlier run are answered stale).
    pub fn new(realm: &str, key: [u8; 32], lifetime: Duration, now: Instant) -> Digest {
        Digest {
            realm: realm.to_string(),
            key,
            lifetime,
            epoch: now,
            serial: 0,
            counts: HashMap::new(),
            forgotten_through: None,
            max_nonces: MAX_NONCES,
        }
    }

    fn seconds(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_secs()
    }

    /// HMAC-SHA-256 of the nonce's birth second and serial (RFC 2104), 16 bytes of it in hex.
    fn mac(&self, born: u64, serial: u64) -> String {
        let block = |pad: u8| -> Vec<u8> {
            let mut k = [0u8; 64];
            k[..32].copy_from_slice(&self.key);
            k.iter().map(|b| b ^ pad).collect()
        };
        let mut inner = Sha256::new();
        inner.update(block(0x36));
        inner.update(born.to_be_bytes());
        inner.update(serial.to_be_bytes());
        let mut outer = Sha256::new();
        outer.update(block(0x5c));
        outer.update(inner.finalize());
        hex(&outer.finalize()[..16])
    }

    fn nonce(&mut self, now: Instant) -> String {
        let born = self.seconds(now);
        self.serial = self.serial.wrapping_add(1);
        format!("{born:x}.{:x}.{}", self.serial, self.mac(born, self.serial))
    }

    /// The birth second of a nonce we issued, None if it is not ours.
    fn born(&self, nonce: &str) -> Option<u64> {
        let mut parts = nonce.split('.');
        let (born, serial, mac) = (parts.next()?, parts.next()?, parts.next()?);
        let born = u64::from_str_radix(born, 16).ok()?;
        let serial = u64::from_str_radix(serial, 16).ok()?;
        (parts.next().is_none() && same(mac, &self.mac(born, serial))).then_some(born)
    }

    /// WWW-Authenticate values for `credentials`' algorithms (RFC 8760 §2.4: one challenge per
    /// algorithm, preferred first).
    pub fn challenge(
        &mut self,
        now: Instant,
        credentials: &Credentials,
        stale: bool,
    ) -> Vec<String> {
        let nonce = self.nonce(now);
        credentials
            .algorithms
            .iter()
            .map(|algorithm| {
                let mut value = format!(
                    "Digest realm=\"{}\", nonce=\"{nonce}\", algorithm={}, qop=\"auth\"",
                    self.realm,
                    algorithm.name()
                );
                if stale {
                    value.push_str(", stale=true");
                }
                value
            })
            .collect()
    }

    /// Whether `request` proves it knows `credentials`.
    pub fn check(&mut self, now: Instant, request: &Request, credentials: &Credentials) -> Verdict {
        let offered = request
            .headers
            .get_all("Authorization")
            .filter_map(parse_authorization)
            .find(|a| a.realm == self.realm);
        let Some(auth) = offered else {
            return Verdict::Challenge(self.challenge(now, credentials, false));
        };
        let algorithm = match auth.algorithm {
            None => Some(Algorithm::Md5),
            Some(name) => Algorithm::parse(name),
        };
        let Some(algorithm) = algorithm.filter(|a| credentials.algorithms.contains(a)) else {
            return Verdict::Challenge(self.challenge(now, credentials, false));
        };
        // qop=auth only: without its nonce count, replays could not be told apart.
        let (Some("auth"), Some(nc), Some(cnonce)) = (auth.qop, auth.nc, auth.cnonce) else {
            return Verdict::Challenge(self.challenge(now, credentials, false));
        };
        let Ok(count) = u32::from_str_radix(nc, 16) else {
            return Verdict::Refuse("malformed nonce count");
        };
        let Some(born) = self.born(auth.nonce) else {
            // Not ours (or an earlier run's): a fresh one, without asking anyone again.
            return Verdict::Challenge(self.challenge(now, credentials, true));
        };
        if self.seconds(now).saturating_sub(born) >= self.lifetime.as_secs() {
            self.counts.remove(auth.nonce);
            return Verdict::Challenge(self.challenge(now, credentials, true));
        }
        let expected = response_digest(
            algorithm,
            &credentials.username,
            &self.realm,
            &credentials.password,
            request.method.as_str(),
            auth.uri,
            auth.nonce,
            nc,
            cnonce,
        );
        if !same(auth.username, &credentials.username) || !same(auth.response, &expected) {
            return Verdict::Refuse("wrong credentials");
        }
        // The digest's `uri` is hashed in, but not held to the Request-URI: SIPp and others
        // name the gateway's address there. A captured answer stays useless all the same: its
        // nonce count is spent, and a changed count breaks the hash.
        let highest = match self.counts.get(auth.nonce) {
            Some((count, _)) => *count,
            None if self
                .forgotten_through
                .is_some_and(|through| born <= through) =>
            {
                return Verdict::Challenge(self.challenge(now, credentials, true));
            }
            None => 0,
        };
        if count <= highest {
            // The same nonce count again: a replay (or a retransmission that is not one).
            return Verdict::Challenge(self.challenge(now, credentials, true));
        }
        self.remember(now, auth.nonce, count, born);
        Verdict::Pass
    }

    fn remember(&mut self, now: Instant, nonce: &str, count: u32, born: u64) {
        if self.counts.len() >= self.max_nonces && !self.counts.contains_key(nonce) {
            // Expired ones first: they are refused on their age anyway.
            let (seconds, lifetime) = (self.seconds(now), self.lifetime.as_secs());
            self.counts
                .retain(|_, (_, b)| seconds.saturating_sub(*b) < lifetime);
            if self.counts.len() >= self.max_nonces {
                // Still full of live nonces: forget the oldest half (they will be answered stale).
                let mut births: Vec<u64> = self.counts.values().map(|(_, b)| *b).collect();
                births.sort_unstable();
                let cut = births[births.len() / 2];
                self.counts.retain(|_, (_, b)| *b > cut);
                self.forgotten_through = Some(self.forgotten_through.map_or(cut, |f| f.max(cut)));
            }
        }
        self.counts.insert(nonce.to_string(), (count, born));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::message::{parse, Message};

    #[test]
    fn rfc_7616_example_digests() {
        // RFC 7616 §3.9.1 (HTTP, but the same computation).
        let digest = |algorithm| {
            response_digest(
                algorithm,
                "Mufasa",
                "http-auth@example.org",
                "Circle of Life",
                "GET",
                "/dir/index.html",
                "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",
                "00000001",
                "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ",
            )
        };
        assert_eq!(digest(Algorithm::Md5), "8ca523f5e9506fed4657c9700eebdbec");
        assert_eq!(
            digest(Algorithm::Sha256),
            "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"
        );
        assert_eq!(digest(Algorithm::Sha512_256).len(), 64);
    }

    fn credentials() -> Credentials {
        Credentials {
            username: "carrier".into(),
            password: "s3cret-trunk".into(),
            algorithms: vec![Algorithm::Sha256, Algorithm::Md5],
        }
    }

    fn invite(authorization: Option<String>) -> Request {
        let header = authorization
            .map(|a| format!("Authorization: {a}\r\n"))
            .unwrap_or_default();
        let text = format!(
            "INVITE sip:12345@10.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.2;branch=z9hG4bK1\r\n\
             From: <sip:c@10.0.0.2>;tag=1\r\nTo: <sip:12345@10.0.0.1>\r\nCall-ID: x\r\n\
             CSeq: 2 INVITE\r\n{header}Content-Length: 0\r\n\r\n"
        );
        match parse(text.as_bytes()) {
            Ok(Message::Request(r)) => r,
            other => panic!("{other:?}"),
        }
    }

    /// What a client answers to `challenge` (its nonce), with `password` and count `nc`.
    fn answer(challenge: &str, algorithm: Algorithm, password: &str, nc: u32) -> String {
        let nonce = challenge
            .split("nonce=\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .unwrap_or_default();
        let nc = format!("{nc:08x}");
        let response = response_digest(
            algorithm,
            "carrier",
            "gw",
            password,
            "INVITE",
            "sip:12345@10.0.0.1",
            nonce,
            &nc,
            "c0ffee",
        );
        format!(
            "Digest username=\"carrier\", realm=\"gw\", nonce=\"{nonce}\", uri=\"sip:12345@10.0.0.1\", \
             response=\"{response}\", algorithm={}, cnonce=\"c0ffee\", qop=auth, nc={nc}",
            algorithm.name()
        )
    }

    fn first_challenge(verdict: Verdict) -> String {
        match verdict {
            Verdict::Challenge(values) => values.first().cloned().unwrap_or_default(),
            other => panic!("expected a challenge, got {other:?}"),
        }
    }

    #[test]
    fn challenge_answer_replay_and_wrong_password() {
        let t0 = Instant::now();
        let mut digest = Digest::new("gw", [7; 32], Duration::from_secs(300), t0);
        let creds = credentials();
        let Verdict::Challenge(values) = digest.check(t0, &invite(None), &creds) else {
            panic!("no challenge");
        };
        assert_eq!(values.len(), 2);
        assert!(values[0].contains("algorithm=SHA-256") && values[0].contains("qop=\"auth\""));
        assert!(values[1].contains("algorithm=MD5"));

        // One challenge, two ways to answer it: a client picks one algorithm per nonce.
        let md5_values = match digest.check(t0, &invite(None), &creds) {
            Verdict::Challenge(values) => values,
            other => panic!("{other:?}"),
        };
        assert_ne!(
            md5_values[1], values[1],
            "every challenge has a nonce of its own"
        );
        for (algorithm, value) in [
            (Algorithm::Sha256, &values[0]),
            (Algorithm::Md5, &md5_values[1]),
        ] {
            let good = answer(value, algorithm, "s3cret-trunk", 1);
            assert_eq!(
                digest.check(t0, &invite(Some(good.clone())), &creds),
                Verdict::Pass
            );
            // The same count again is a replay: a fresh nonce, nothing let in.
            let replay = digest.check(t0, &invite(Some(good)), &creds);
            assert!(first_challenge(replay).contains("stale=true"));
            // The next count is fine.
            let next = answer(value, algorithm, "s3cret-trunk", 2);
            assert_eq!(digest.check(t0, &invite(Some(next)), &creds), Verdict::Pass);
        }
        let wrong = answer(&values[0], Algorithm::Sha256, "guess", 9);
        assert_eq!(
            digest.check(t0, &invite(Some(wrong)), &creds),
            Verdict::Refuse("wrong credentials")
        );
    }

    #[test]
    fn nonces_expire_and_forged_ones_are_stale() {
        let t0 = Instant::now();
        let mut digest = Digest::new("gw", [7; 32], Duration::from_secs(300), t0);
        let creds = credentials();
        let value = first_challenge(digest.check(t0, &invite(None), &creds));
        let late = t0 + Duration::from_secs(299);
        let good = answer(&value, Algorithm::Sha256, "s3cret-trunk", 1);
        assert_eq!(
            digest.check(late, &invite(Some(good)), &creds),
            Verdict::Pass
        );
        let expired = t0 + Duration::from_secs(300);
        let again = answer(&value, Algorithm::Sha256, "s3cret-trunk", 2);
        assert!(
            first_challenge(digest.check(expired, &invite(Some(again)), &creds))
                .contains("stale=true")
        );
        // Another process's nonce (another key) is not ours: stale, not a refusal.
        let mut other = Digest::new("gw", [8; 32], Duration::from_secs(300), t0);
        let foreign = other.challenge(t0, &creds, false);
        let forged = answer(&foreign[0], Algorithm::Sha256, "s3cret-trunk", 1);
        assert!(
            first_challenge(digest.check(t0, &invite(Some(forged)), &creds)).contains("stale=true")
        );
    }

    #[test]
    fn a_nonce_forgotten_while_live_is_stale_not_new() {
        let t0 = Instant::now();
        let mut digest = Digest::new("gw", [7; 32], Duration::from_secs(300), t0);
        digest.max_nonces = 1000;
        let creds = credentials();
        let value = first_challenge(digest.check(t0, &invite(None), &creds));
        let used = answer(&value, Algorithm::Sha256, "s3cret-trunk", 1);
        assert_eq!(
            digest.check(t0, &invite(Some(used.clone())), &creds),
            Verdict::Pass
        );
        // A busy trunk fills the table with newer live nonces: the oldest are forgotten.
        for n in 0..1000 {
            let later = t0 + Duration::from_millis(1 + n * 200);
            let fresh = first_challenge(digest.check(later, &invite(None), &creds));
            let ok = answer(&fresh, Algorithm::Sha256, "s3cret-trunk", 1);
            assert_eq!(
                digest.check(later, &invite(Some(ok)), &creds),
                Verdict::Pass
            );
        }
        assert!(digest.counts.len() < 1000);
        // The first answer again: its nonce is still live but forgotten, so not let in.
        let replay = digest.check(t0 + Duration::from_secs(200), &invite(Some(used)), &creds);
        assert!(first_challenge(replay).contains("stale=true"));
    }

    #[test]
    fn algorithms_not_offered_and_requests_without_qop_are_challenged() {
        let t0 = Instant::now();
        let mut digest = Digest::new("gw", [7; 32], Duration::from_secs(300), t0);
        let md5_only = Credentials {
            algorithms: vec![Algorithm::Md5],
            ..credentials()
        };
        let value = first_challenge(digest.check(t0, &invite(None), &md5_only));
        let sha = answer(&value, Algorithm::Sha256, "s3cret-trunk", 1);
        assert!(matches!(
            digest.check(t0, &invite(Some(sha)), &md5_only),
            Verdict::Challenge(_)
        ));
        let no_qop = answer(&value, Algorithm::Md5, "s3cret-trunk", 1).replace(", qop=auth", "");
        assert!(matches!(
            digest.check(t0, &invite(Some(no_qop)), &md5_only),
            Verdict::Challenge(_)
        ));
        assert!(parse_authorization("Basic abc").is_none());
    }
}
