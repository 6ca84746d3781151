//! A peer's digest credentials and the hash algorithms it may be challenged with (RFC 8760 §2).
//! The peer owns them; `sip::auth` checks requests against them.

use md5::Md5;
use sha2::{Digest as _, Sha256, Sha512_256};

/// RFC 8760 §2: the algorithms, by their names in `algorithm=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Sha512_256,
    Sha256,
    Md5,
}

impl Algorithm {
    pub fn parse(name: &str) -> Option<Algorithm> {
        match name.trim().to_ascii_uppercase().as_str() {
            "MD5" => Some(Algorithm::Md5),
            "SHA-256" => Some(Algorithm::Sha256),
            "SHA-512-256" => Some(Algorithm::Sha512_256),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Md5 => "MD5",
            Algorithm::Sha256 => "SHA-256",
            Algorithm::Sha512_256 => "SHA-512-256",
        }
    }

    /// The lowercase hex digest of `data`.
    pub fn hash(self, data: &str) -> String {
        match self {
            Algorithm::Md5 => hex(&Md5::digest(data.as_bytes())),
            Algorithm::Sha256 => hex(&Sha256::digest(data.as_bytes())),
            Algorithm::Sha512_256 => hex(&Sha512_256::digest(data.as_bytes())),
        }
    }
}

/// Lowercase hex, as digest responses (RFC 7616 §3.4.1) and `sip::auth`'s nonce MACs spell
/// bytes.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

/// A peer's credentials and the algorithms it is challenged with, in preference order.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
    pub algorithms: Vec<Algorithm>,
}

/// Never the password in a log line.
impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .field("algorithms", &self.algorithms)
            .finish()
    }
}

/// What the gateway presents when a peer challenges it (401/407, RFC 3261 §22.2).
#[derive(Clone, PartialEq, Eq)]
pub struct OutboundCredentials {
    pub username: String,
    pub password: String,
}

/// Never the password in a log line.
impl std::fmt::Debug for OutboundCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutboundCredentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_a_password() {
        let outbound = OutboundCredentials {
            username: "gw".into(),
            password: "secret-secret".into(),
        };
        let inbound = Credentials {
            username: "carrier".into(),
            password: "s3cret-trunk".into(),
            algorithms: vec![Algorithm::Md5],
        };
        let text = format!("{outbound:?} {inbound:?}");
        assert!(text.contains("gw") && text.contains("<redacted>"));
        assert!(!text.contains("secret-secret") && !text.contains("s3cret-trunk"));
    }
}
