//! The audio codec vocabulary the gateway relays: names as SDP spells them (RFC 4566 §6
//! `a=rtpmap`) and static payload types (RFC 3551 table 4). Media owns it; SDP negotiation and
//! the config use it.

/// Audio codecs the gateway relays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    Pcmu,
    Pcma,
}

impl Codec {
    pub fn from_name(name: &str) -> Option<Codec> {
        match name.to_ascii_uppercase().as_str() {
            "PCMU" => Some(Codec::Pcmu),
            "PCMA" => Some(Codec::Pcma),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Codec::Pcmu => "PCMU",
            Codec::Pcma => "PCMA",
        }
    }

    /// The static payload type (RFC 3551 table 4).
    pub fn static_payload_type(self) -> u8 {
        match self {
            Codec::Pcmu => 0,
            Codec::Pcma => 8,
        }
    }
}
