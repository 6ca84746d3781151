//! The tree's text values (networks, number patterns, codecs, digest algorithms, TLS names)
//! read into the parts' types while the file is deserialized: each is parsed once, and a bad
//! one is reported at its key (`sip.allow[1]`) with the part's reason.

use rustls::pki_types::ServerName;
use serde::{Deserialize, Deserializer};

use crate::media::codec::Codec;
use crate::routing::credentials::Algorithm;
use crate::routing::{Cidr, NumberPattern};

/// A part's type read from a TOML string; the error is the reason the key is refused.
pub(super) trait FromText: Sized {
    fn from_text(text: &str) -> Result<Self, String>;
}

impl FromText for Cidr {
    fn from_text(text: &str) -> Result<Cidr, String> {
        Cidr::parse(text).map_err(|error| error.to_string())
    }
}

impl FromText for NumberPattern {
    fn from_text(text: &str) -> Result<NumberPattern, String> {
        NumberPattern::parse(text)
    }
}

impl FromText for Codec {
    fn from_text(text: &str) -> Result<Codec, String> {
        Codec::from_name(text)
            .ok_or_else(|| format!("unknown codec {text:?}; supported: PCMA, PCMU"))
    }
}

impl FromText for Algorithm {
    fn from_text(text: &str) -> Result<Algorithm, String> {
        Algorithm::parse(text)
            .ok_or_else(|| format!("{text:?} is none of SHA-512-256, SHA-256, MD5"))
    }
}

impl FromText for ServerName<'static> {
    fn from_text(text: &str) -> Result<ServerName<'static>, String> {
        ServerName::try_from(text.to_string()).map_err(|error| error.to_string())
    }
}

/// One value read through [`FromText`]. Deserialized through the caller's deserializer, so
/// `serde_path_to_error` still records the key (and the index within a list).
struct Text<T>(T);

impl<'de, T: FromText> Deserialize<'de> for Text<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Text<T>, D::Error> {
        let text = String::deserialize(deserializer)?;
        T::from_text(&text)
            .map(Text)
            .map_err(serde::de::Error::custom)
    }
}

/// A list of strings, each read through [`FromText`].
pub(super) fn list<'de, D: Deserializer<'de>, T: FromText>(
    deserializer: D,
) -> Result<Vec<T>, D::Error> {
    let values = Vec::<Text<T>>::deserialize(deserializer)?;
    Ok(values.into_iter().map(|Text(value)| value).collect())
}

/// An optional string read through [`FromText`] (with `#[serde(default)]` for a missing key).
pub(super) fn optional<'de, D: Deserializer<'de>, T: FromText>(
    deserializer: D,
) -> Result<Option<T>, D::Error> {
    let value = Option::<Text<T>>::deserialize(deserializer)?;
    Ok(value.map(|Text(value)| value))
}
