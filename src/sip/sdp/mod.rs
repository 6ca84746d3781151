//! SDP (RFC 4566) for G.711 audio, and the offer/answer rules of RFC 3264 the gateway needs to
//! anchor media: answer each side's offer with its own address, and make its own offers.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use crate::media::codec::Codec;
use crate::media::srtp::{self, MasterKey, Suite};
use crate::routing::SrtpMode;

mod crypto;
mod offer_answer;

pub use crypto::Crypto;
pub use offer_answer::{accept_answer, answer, offer, set_offer_key};

/// Bounds, so one body cannot take unbounded memory.
const MAX_MEDIA: usize = 64;
const MAX_LINE: usize = 4096;

/// `a=sendrecv` and friends (RFC 4566 §6, RFC 3264 §6.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    SendRecv,
    SendOnly,
    RecvOnly,
    Inactive,
}

impl Direction {
    /// The direction an answer takes for an offer in this direction (RFC 3264 §6.1).
    pub fn reverse(self) -> Direction {
        match self {
            Direction::SendOnly => Direction::RecvOnly,
            Direction::RecvOnly => Direction::SendOnly,
            other => other,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Direction::SendRecv => "sendrecv",
            Direction::SendOnly => "sendonly",
            Direction::RecvOnly => "recvonly",
            Direction::Inactive => "inactive",
        }
    }
}

/// `o=` (RFC 4566 §5.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub username: String,
    pub session_id: u64,
    pub session_version: u64,
    pub address: IpAddr,
}

impl Origin {
    pub fn new(address: IpAddr, session_id: u64) -> Origin {
        Origin {
            username: "hotline-gateway".into(),
            session_id,
            session_version: session_id,
            address,
        }
    }

    /// A changed description gets a higher version (RFC 3264 §8).
    pub fn bump(&mut self) {
        self.session_version = self.session_version.wrapping_add(1);
    }
}

/// `a=rtpmap`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtpMap {
    pub payload_type: u8,
    pub encoding: String,
    pub clock_rate: u32,
    pub channels: Option<u8>,
}

/// One `m=` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaDescription {
    pub media: String,
    pub port: u16,
    pub protocol: String,
    /// Formats as written (payload type numbers for RTP/AVP).
    pub formats: Vec<String>,
    pub rtpmaps: Vec<RtpMap>,
    pub fmtps: Vec<(u8, String)>,
    pub direction: Option<Direction>,
    pub ptime: Option<u32>,
    pub connection: Option<IpAddr>,
    pub rtcp_port: Option<u16>,
    pub other_attributes: Vec<String>,
}

impl MediaDescription {
    /// The payload types, for RTP profiles.
    pub fn payload_types(&self) -> impl Iterator<Item = u8> + '_ {
        self.formats.iter().filter_map(|f| f.parse().ok())
    }

    /// Encoding name and clock rate of a payload type: rtpmap first, static table otherwise.
    pub fn encoding(&self, payload_type: u8) -> Option<(String, u32)> {
        if let Some(map) = self.rtpmaps.iter().find(|m| m.payload_type == payload_type) {
            return Some((map.encoding.to_ascii_uppercase(), map.clock_rate));
        }
        match payload_type {
            0 => Some(("PCMU".into(), 8000)),
            8 => Some(("PCMA".into(), 8000)),
            _ => None,
        }
    }

    /// RTP/AVP, or RTP/SAVP (RFC 3711 §12) whose keys come in `a=crypto` (RFC 4568).
    fn is_rtp(&self) -> bool {
        self.protocol.eq_ignore_ascii_case("RTP/AVP") || self.is_savp()
    }

    fn is_savp(&self) -> bool {
        self.protocol.eq_ignore_ascii_case("RTP/SAVP")
    }

    /// The first `a=crypto` line we can honour, in the offerer's order of preference (§5.1.1).
    pub fn crypto(&self) -> Option<Crypto> {
        self.other_attributes.iter().find_map(|a| Crypto::parse(a))
    }
}

/// A session description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionDescription {
    pub origin: Origin,
    pub session_name: String,
    pub connection: Option<IpAddr>,
    /// Session-level direction attribute, if any.
    pub direction: Option<Direction>,
    pub media: Vec<MediaDescription>,
}

/// Why a body is not SDP we can read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SdpError {
    #[error("SDP line {line}: {reason}")]
    Invalid { line: usize, reason: &'static str },
}

/// Why an offer or answer cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NegotiationError {
    #[error("no media stream")]
    NoMedia,
    #[error("no audio stream with a codec we support (PCMU, PCMA)")]
    NoAcceptableMedia,
    #[error("the answer picked a codec we did not offer")]
    AnswerNotInOffer,
    #[error("the answer rejected the audio stream")]
    Rejected,
    #[error("the peer must use SRTP and the offer has no a=crypto line we can use")]
    SrtpRequired,
    #[error("we offered SRTP and the answer has no matching a=crypto line")]
    NoCryptoInAnswer,
}

/// SRTP for one answer: the leg's mode and the key we give this endpoint: the one we already
/// gave it (a re-offer keeps it, so the crypto context goes on, RFC 4568 §7.1.4) or a fresh one
/// the caller drew (`MasterKey::from_ids`). Without a key an `a=crypto` offer is answered as
/// if it had none (a plain answer, or 488 for RTP/SAVP).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SrtpTerms {
    pub mode: SrtpMode,
    pub key: Option<MasterKey>,
}

/// The key in the first `a=crypto` line of SDP we sent, to keep it in a new answer.
pub fn key_in(text: &str) -> Option<MasterKey> {
    text.lines()
        .filter_map(|l| l.trim_end().strip_prefix("a="))
        .find_map(Crypto::parse)
        .map(|c| c.key)
}

/// What the gateway offers and accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaPolicy {
    /// Preference order of our offers.
    pub codecs: Vec<Codec>,
    pub telephone_event_payload_type: u8,
    pub ptime: u32,
}

impl Default for MediaPolicy {
    /// PCMA, PCMU, telephone-event 101, 20 ms: what most PBXs and phones expect.
    fn default() -> Self {
        MediaPolicy {
            codecs: vec![Codec::Pcma, Codec::Pcmu],
            telephone_event_payload_type: 101,
            ptime: 20,
        }
    }
}

/// The outcome of offer/answer for one leg.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Negotiated {
    pub codec: Codec,
    /// The remote's payload type for `codec`.
    pub payload_type: u8,
    /// The remote's payload type for telephone-event, if both sides have it.
    pub telephone_event: Option<u8>,
    /// Where the remote receives RTP; None when on hold by `c=0.0.0.0` or port 0.
    pub remote: Option<SocketAddr>,
    /// The remote's direction (what it will do).
    pub direction: Direction,
    pub ptime: u32,
    /// The leg's SRTP keys, when both sides put them in `a=crypto`.
    pub srtp: Option<srtp::Keys>,
}

fn parse_direction(value: &str) -> Option<Direction> {
    match value {
        "sendrecv" => Some(Direction::SendRecv),
        "sendonly" => Some(Direction::SendOnly),
        "recvonly" => Some(Direction::RecvOnly),
        "inactive" => Some(Direction::Inactive),
        _ => None,
    }
}

fn parse_connection(value: &str, line: usize) -> Result<IpAddr, SdpError> {
    let invalid = |reason| SdpError::Invalid { line, reason };
    let mut parts = value.split_ascii_whitespace();
    if parts.next() != Some("IN") {
        return Err(invalid("c= network type is not IN"));
    }
    let kind = parts.next().ok_or(invalid("c= without address type"))?;
    let address = parts.next().ok_or(invalid("c= without address"))?;
    // A multicast TTL suffix (/127) is not for us, but strip it rather than fail.
    let address = address.split('/').next().unwrap_or_default();
    let ip: IpAddr = address
        .parse()
        .map_err(|_| invalid("c= address is no IP address"))?;
    match (kind, ip) {
        ("IP4", IpAddr::V4(_)) | ("IP6", IpAddr::V6(_)) => Ok(ip),
        _ => Err(invalid("c= address type does not match the address")),
    }
}

/// Parses an SDP body (CRLF or LF line ends).
///
/// # Errors
/// [`SdpError::Invalid`] with the line number and the reason.
pub fn parse(text: &str) -> Result<SessionDescription, SdpError> {
    let mut origin = None;
    let mut session_name = String::new();
    let mut connection = None;
    let mut direction = None;
    let mut media: Vec<MediaDescription> = Vec::new();
    let mut saw_version = false;
    for (index, raw) in text.lines().enumerate() {
        let number = index + 1;
        let invalid = |reason| SdpError::Invalid {
            line: number,
            reason,
        };
        let line = raw.trim_end();
        if line.is_empty() {
            continue;
        }
        if line.len() > MAX_LINE {
            return Err(invalid("line too long"));
        }
        let Some((kind, value)) = line.split_once('=') else {
            return Err(invalid("not a type=value line"));
        };
        if !saw_version {
            if kind != "v" || value != "0" {
                return Err(invalid("SDP must start with v=0"));
            }
            saw_version = true;
            continue;
        }
        match kind {
            "o" => origin = Some(parse_origin(value, number)?),
            "s" => session_name = value.to_string(),
            "c" => {
                let address = parse_connection(value, number)?;
                match media.last_mut() {
                    Some(m) => m.connection = Some(address),
                    None => connection = Some(address),
                }
            }
            "m" => {
                if media.len() >= MAX_MEDIA {
                    return Err(invalid("too many m= lines"));
                }
                media.push(parse_media_line(value, number)?);
            }
            "a" => {
                let (name, attribute_value) = match value.split_once(':') {
                    Some((n, v)) => (n, Some(v)),
                    None => (value, None),
                };
                if let Some(d) = parse_direction(name) {
                    match media.last_mut() {
                        Some(m) => m.direction = Some(d),
                        None => direction = Some(d),
                    }
                    continue;
                }
                let Some(m) = media.last_mut() else { continue };
                parse_media_attribute(m, name, attribute_value, value, number)?;
            }
            // v= again, t=, b=, k=, r=, z=, i=, u=, e=, p=: nothing we use.
            _ => {}
        }
    }
    if !saw_version {
        return Err(SdpError::Invalid {
            line: 1,
            reason: "empty SDP",
        });
    }
    let origin = origin.ok_or(SdpError::Invalid {
        line: 2,
        reason: "no o= line",
    })?;
    Ok(SessionDescription {
        origin,
        session_name,
        connection,
        direction,
        media,
    })
}

/// The `o=` line on line `number` (RFC 4566 §5.2).
fn parse_origin(value: &str, number: usize) -> Result<Origin, SdpError> {
    let invalid = |reason| SdpError::Invalid {
        line: number,
        reason,
    };
    let parts: Vec<&str> = value.split_ascii_whitespace().collect();
    if parts.len() != 6 || parts[3] != "IN" {
        return Err(invalid("malformed o= line"));
    }
    Ok(Origin {
        username: parts[0].to_string(),
        session_id: parts[1]
            .parse()
            .map_err(|_| invalid("o= session id is not a number"))?,
        session_version: parts[2]
            .parse()
            .map_err(|_| invalid("o= version is not a number"))?,
        address: parts[5].parse().unwrap_or(IpAddr::from([0, 0, 0, 0])),
    })
}

/// The `m=` line on line `number` (RFC 4566 §5.14), its attributes still to come.
fn parse_media_line(value: &str, number: usize) -> Result<MediaDescription, SdpError> {
    let invalid = |reason| SdpError::Invalid {
        line: number,
        reason,
    };
    let mut parts = value.split_ascii_whitespace();
    let kind = parts.next().ok_or(invalid("m= without media"))?;
    let port_text = parts.next().ok_or(invalid("m= without port"))?;
    let port = port_text
        .split('/')
        .next()
        .and_then(|p| p.parse::<u16>().ok())
        .ok_or(invalid("m= port is not a number"))?;
    let protocol = parts.next().ok_or(invalid("m= without protocol"))?;
    let formats: Vec<String> = parts.map(str::to_string).collect();
    if formats.is_empty() {
        return Err(invalid("m= without formats"));
    }
    Ok(MediaDescription {
        media: kind.to_string(),
        port,
        protocol: protocol.to_string(),
        formats,
        rtpmaps: Vec::new(),
        fmtps: Vec::new(),
        direction: None,
        ptime: None,
        connection: None,
        rtcp_port: None,
        other_attributes: Vec::new(),
    })
}

/// A media-level `a=` line on line `number` (other than a direction) into `m`.
fn parse_media_attribute(
    m: &mut MediaDescription,
    name: &str,
    attribute_value: Option<&str>,
    value: &str,
    number: usize,
) -> Result<(), SdpError> {
    let invalid = |reason| SdpError::Invalid {
        line: number,
        reason,
    };
    match (name, attribute_value) {
        ("rtpmap", Some(v)) => {
            let (pt, encoding) = v.split_once(' ').ok_or(invalid("malformed rtpmap"))?;
            let payload_type = pt
                .parse::<u8>()
                .ok()
                .filter(|p| *p < 128)
                .ok_or(invalid("rtpmap payload type"))?;
            let mut pieces = encoding.trim().split('/');
            let name = pieces.next().unwrap_or_default().to_string();
            let clock_rate = pieces
                .next()
                .and_then(|c| c.parse().ok())
                .ok_or(invalid("rtpmap clock rate"))?;
            let channels = pieces.next().and_then(|c| c.parse().ok());
            m.rtpmaps.push(RtpMap {
                payload_type,
                encoding: name,
                clock_rate,
                channels,
            });
        }
        ("fmtp", Some(v)) => {
            if let Some((pt, parameters)) = v.split_once(' ') {
                if let Ok(pt) = pt.parse::<u8>() {
                    m.fmtps.push((pt, parameters.trim().to_string()));
                }
            }
        }
        ("ptime", Some(v)) => m.ptime = v.trim().parse().ok(),
        ("rtcp", Some(v)) => {
            m.rtcp_port = v
                .split_ascii_whitespace()
                .next()
                .and_then(|p| p.parse().ok())
        }
        _ => m.other_attributes.push(value.to_string()),
    }
    Ok(())
}

impl fmt::Display for SessionDescription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = |ip: &IpAddr| if ip.is_ipv6() { "IP6" } else { "IP4" };
        write!(f, "v=0\r\n")?;
        let o = &self.origin;
        write!(
            f,
            "o={} {} {} IN {} {}\r\n",
            o.username,
            o.session_id,
            o.session_version,
            kind(&o.address),
            o.address
        )?;
        let name = if self.session_name.is_empty() {
            "-"
        } else {
            &self.session_name
        };
        write!(f, "s={name}\r\n")?;
        if let Some(c) = &self.connection {
            write!(f, "c=IN {} {c}\r\n", kind(c))?;
        }
        write!(f, "t=0 0\r\n")?;
        if let Some(d) = self.direction {
            write!(f, "a={}\r\n", d.as_str())?;
        }
        for m in &self.media {
            write!(
                f,
                "m={} {} {} {}\r\n",
                m.media,
                m.port,
                m.protocol,
                m.formats.join(" ")
            )?;
            if let Some(c) = &m.connection {
                write!(f, "c=IN {} {c}\r\n", kind(c))?;
            }
            for map in &m.rtpmaps {
                write!(
                    f,
                    "a=rtpmap:{} {}/{}",
                    map.payload_type, map.encoding, map.clock_rate
                )?;
                if let Some(ch) = map.channels {
                    write!(f, "/{ch}")?;
                }
                write!(f, "\r\n")?;
            }
            for (pt, parameters) in &m.fmtps {
                write!(f, "a=fmtp:{pt} {parameters}\r\n")?;
            }
            if let Some(port) = m.rtcp_port {
                write!(f, "a=rtcp:{port}\r\n")?;
            }
            if let Some(ptime) = m.ptime {
                write!(f, "a=ptime:{ptime}\r\n")?;
            }
            for attribute in &m.other_attributes {
                write!(f, "a={attribute}\r\n")?;
            }
            if let Some(d) = m.direction {
                write!(f, "a={}\r\n", d.as_str())?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
