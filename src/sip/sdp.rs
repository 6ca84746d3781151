//! SDP (RFC 4566) for G.711 audio, and the offer/answer rules of RFC 3264 the gateway needs to
//! anchor media: answer each side's offer with its own address, and make its own offers.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use crate::media::codec::Codec;
use crate::media::srtp::{self, MasterKey, Suite};
use crate::routing::SrtpMode;

mod crypto;
pub use crypto::Crypto;

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
            "o" => {
                let parts: Vec<&str> = value.split_ascii_whitespace().collect();
                if parts.len() != 6 || parts[3] != "IN" {
                    return Err(invalid("malformed o= line"));
                }
                origin = Some(Origin {
                    username: parts[0].to_string(),
                    session_id: parts[1]
                        .parse()
                        .map_err(|_| invalid("o= session id is not a number"))?,
                    session_version: parts[2]
                        .parse()
                        .map_err(|_| invalid("o= version is not a number"))?,
                    address: parts[5].parse().unwrap_or(IpAddr::from([0, 0, 0, 0])),
                });
            }
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
                media.push(MediaDescription {
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
                });
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
                match (name, attribute_value) {
                    ("rtpmap", Some(v)) => {
                        let (pt, encoding) =
                            v.split_once(' ').ok_or(invalid("malformed rtpmap"))?;
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

fn is_telephone_event(media: &MediaDescription, payload_type: u8) -> bool {
    media
        .encoding(payload_type)
        .is_some_and(|(name, rate)| name == "TELEPHONE-EVENT" && rate == 8000)
}

fn codec_of(media: &MediaDescription, payload_type: u8) -> Option<Codec> {
    media
        .encoding(payload_type)
        .filter(|(_, rate)| *rate == 8000)
        .and_then(|(name, _)| Codec::from_name(&name))
}

/// Our offer: one audio stream with the policy's codecs and telephone-event.
/// Plain RTP; [`set_offer_key`] makes it SRTP.
pub fn offer(
    policy: &MediaPolicy,
    local: SocketAddr,
    origin: &Origin,
    direction: Direction,
) -> SessionDescription {
    let mut formats: Vec<String> = policy
        .codecs
        .iter()
        .map(|c| c.static_payload_type().to_string())
        .collect();
    let mut rtpmaps: Vec<RtpMap> = policy
        .codecs
        .iter()
        .map(|c| RtpMap {
            payload_type: c.static_payload_type(),
            encoding: c.name().into(),
            clock_rate: 8000,
            channels: None,
        })
        .collect();
    let event = policy.telephone_event_payload_type;
    formats.push(event.to_string());
    rtpmaps.push(RtpMap {
        payload_type: event,
        encoding: "telephone-event".into(),
        clock_rate: 8000,
        channels: None,
    });
    SessionDescription {
        origin: origin.clone(),
        session_name: "-".into(),
        connection: Some(local.ip()),
        direction: None,
        media: vec![MediaDescription {
            media: "audio".into(),
            port: local.port(),
            protocol: "RTP/AVP".into(),
            formats,
            rtpmaps,
            fmtps: vec![(event, "0-16".into())],
            direction: Some(direction),
            ptime: Some(policy.ptime),
            connection: None,
            rtcp_port: None,
            other_attributes: Vec::new(),
        }],
    }
}

/// Makes `offer` SRTP with `key` (RTP/SAVP and one `a=crypto` line of AES_CM_128_HMAC_SHA1_80,
/// the suite every SDES implementation has, RFC 4568 §6.2.1) or plain RTP without: an offer
/// is made once per leg and then sent to whichever peer of the route is tried, each as its
/// `srtp` setting asks.
pub fn set_offer_key(offer: &mut SessionDescription, key: Option<MasterKey>) {
    for media in offer.media.iter_mut().filter(|m| m.media == "audio") {
        media.other_attributes.retain(|a| !a.starts_with("crypto:"));
        media.protocol = if key.is_some() { "RTP/SAVP" } else { "RTP/AVP" }.into();
        if let Some(key) = key {
            media.other_attributes.push(
                Crypto {
                    tag: 1,
                    suite: Suite::AesCm128HmacSha1_80,
                    key,
                    mki_length: 0,
                }
                .attribute(),
            );
        }
    }
}

/// Where the remote of a media section receives RTP, None when held (RFC 2543 `c=0.0.0.0`)
/// or rejected (port 0).
fn remote_address(session: &SessionDescription, media: &MediaDescription) -> Option<SocketAddr> {
    let ip = media.connection.or(session.connection)?;
    if ip.is_unspecified() || media.port == 0 {
        return None;
    }
    Some(SocketAddr::new(ip, media.port))
}

fn remote_direction(session: &SessionDescription, media: &MediaDescription) -> Direction {
    let declared = media
        .direction
        .or(session.direction)
        .unwrap_or(Direction::SendRecv);
    let held = media
        .connection
        .or(session.connection)
        .is_some_and(|ip| ip.is_unspecified());
    // RFC 3264 §8.4 and the older RFC 2543 hold (c=0.0.0.0): the remote only sends.
    if held && declared == Direction::SendRecv {
        Direction::SendOnly
    } else {
        declared
    }
}

/// Answers an offer (RFC 3264 §6): the first usable audio stream gets the codec the offerer
/// listed first among ours; every other stream is rejected with port 0. A stream with an
/// `a=crypto` line we can use is answered with SRTP (RFC 4568 §7.1.2): the offer's tag and
/// suite, our own key. RTP/SAVP without one is not usable.
///
/// # Errors
/// [`NegotiationError::NoAcceptableMedia`] (the caller answers 488), `SrtpRequired` (also
/// 488) or `NoMedia`.
pub fn answer(
    offer: &SessionDescription,
    policy: &MediaPolicy,
    local: SocketAddr,
    origin: &Origin,
    terms: SrtpTerms,
) -> Result<(SessionDescription, Negotiated), NegotiationError> {
    if offer.media.is_empty() {
        return Err(NegotiationError::NoMedia);
    }
    let mut chosen: Option<(usize, Negotiated, Option<Crypto>)> = None;
    let mut wanted_srtp = false;
    for (index, media) in offer.media.iter().enumerate() {
        if media.media != "audio" || !media.is_rtp() || media.port == 0 {
            continue;
        }
        // Ours: the key the caller hands us (the one this endpoint already has, or a fresh one
        // from its IdGenerator); sdp never draws entropy itself.
        let crypto = media.crypto().and_then(|theirs| {
            Some(Crypto {
                key: terms.key?,
                mki_length: 0,
                ..theirs
            })
            .zip(Some(theirs))
        });
        if crypto.is_none() && (media.is_savp() || terms.mode == SrtpMode::Mandatory) {
            wanted_srtp |= terms.mode == SrtpMode::Mandatory;
            continue;
        }
        let codec = media.payload_types().find_map(|pt| {
            codec_of(media, pt)
                .filter(|c| policy.codecs.contains(c))
                .map(|c| (pt, c))
        });
        let Some((payload_type, codec)) = codec else {
            continue;
        };
        let telephone_event = media
            .payload_types()
            .find(|pt| is_telephone_event(media, *pt));
        chosen = Some((
            index,
            Negotiated {
                codec,
                payload_type,
                telephone_event,
                remote: remote_address(offer, media),
                direction: remote_direction(offer, media),
                ptime: media.ptime.unwrap_or(policy.ptime),
                srtp: crypto.map(|(ours, theirs)| srtp::Keys {
                    suite: theirs.suite,
                    ours: ours.key,
                    theirs: theirs.key,
                    their_mki: theirs.mki_length,
                }),
            },
            crypto.map(|(ours, _)| ours),
        ));
        break;
    }
    let Some((chosen_index, negotiated, ours)) = chosen else {
        return Err(if wanted_srtp {
            NegotiationError::SrtpRequired
        } else {
            NegotiationError::NoAcceptableMedia
        });
    };
    let mut media = Vec::with_capacity(offer.media.len());
    for (index, offered) in offer.media.iter().enumerate() {
        if index != chosen_index {
            media.push(MediaDescription {
                media: offered.media.clone(),
                port: 0,
                protocol: offered.protocol.clone(),
                formats: offered.formats.iter().take(1).cloned().collect(),
                rtpmaps: Vec::new(),
                fmtps: Vec::new(),
                direction: None,
                ptime: None,
                connection: None,
                rtcp_port: None,
                other_attributes: Vec::new(),
            });
            continue;
        }
        let mut formats = vec![negotiated.payload_type.to_string()];
        let mut rtpmaps = vec![RtpMap {
            payload_type: negotiated.payload_type,
            encoding: negotiated.codec.name().into(),
            clock_rate: 8000,
            channels: None,
        }];
        let mut fmtps = Vec::new();
        if let Some(event) = negotiated.telephone_event {
            formats.push(event.to_string());
            rtpmaps.push(RtpMap {
                payload_type: event,
                encoding: "telephone-event".into(),
                clock_rate: 8000,
                channels: None,
            });
            fmtps.push((event, "0-16".to_string()));
        }
        media.push(MediaDescription {
            media: "audio".into(),
            port: local.port(),
            protocol: offered.protocol.clone(),
            formats,
            rtpmaps,
            fmtps,
            direction: Some(negotiated.direction.reverse()),
            ptime: Some(negotiated.ptime),
            connection: None,
            rtcp_port: None,
            other_attributes: ours.map(|c| c.attribute()).into_iter().collect(),
        });
    }
    let description = SessionDescription {
        origin: origin.clone(),
        session_name: "-".into(),
        connection: Some(local.ip()),
        direction: None,
        media,
    };
    Ok((description, negotiated))
}

/// Reads the answer to our offer.
///
/// # Errors
/// [`NegotiationError`] when the answer rejected the stream or chose a codec we did not offer.
pub fn accept_answer(
    offer: &SessionDescription,
    answer: &SessionDescription,
    policy: &MediaPolicy,
) -> Result<Negotiated, NegotiationError> {
    let media = answer
        .media
        .iter()
        .find(|m| m.media == "audio")
        .ok_or(NegotiationError::NoMedia)?;
    if media.port == 0 {
        return Err(NegotiationError::Rejected);
    }
    let offered = offer
        .media
        .iter()
        .find(|m| m.media == "audio")
        .ok_or(NegotiationError::NoMedia)?;
    let (payload_type, codec) = media
        .payload_types()
        .find_map(|pt| {
            codec_of(media, pt)
                .filter(|c| policy.codecs.contains(c))
                .map(|c| (pt, c))
        })
        .ok_or(NegotiationError::NoAcceptableMedia)?;
    if !offered
        .payload_types()
        .any(|pt| codec_of(offered, pt) == Some(codec))
    {
        return Err(NegotiationError::AnswerNotInOffer);
    }
    // Our offer's key, and the answer's for the line it took (same tag and suite, §7.1.3).
    // SRTP in answer to plain RTP would have us send what the endpoint cannot play.
    let srtp = match offered.crypto() {
        None if media.is_savp() || media.crypto().is_some() => {
            return Err(NegotiationError::AnswerNotInOffer)
        }
        None => None,
        Some(ours) => {
            let theirs = media
                .crypto()
                .filter(|c| c.tag == ours.tag && c.suite == ours.suite)
                .ok_or(NegotiationError::NoCryptoInAnswer)?;
            Some(srtp::Keys {
                suite: ours.suite,
                ours: ours.key,
                theirs: theirs.key,
                their_mki: theirs.mki_length,
            })
        }
    };
    Ok(Negotiated {
        codec,
        payload_type,
        telephone_event: media
            .payload_types()
            .find(|pt| is_telephone_event(media, *pt)),
        remote: remote_address(answer, media),
        direction: remote_direction(answer, media),
        ptime: media.ptime.unwrap_or(policy.ptime),
        srtp,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine;

    const BARESIP: &str = "v=0\r\no=- 1234 5678 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\n\
m=audio 40000 RTP/AVP 9 0 8 96 101\r\na=rtpmap:9 G722/8000\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n\
a=rtpmap:96 telephone-event/8000\r\na=fmtp:96 0-15\r\na=rtpmap:101 opus/48000/2\r\na=ptime:20\r\na=sendrecv\r\n";

    /// An SDES offer as a softphone with SRTP mandatory makes it: RTP/SAVP, two suites.
    const SRTP_OFFER: &str = "v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\n\
m=audio 5004 RTP/SAVP 0 101\r\na=rtpmap:101 telephone-event/8000\r\n\
a=crypto:3 AES_256_CM_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBRPS1uQCVeeCFCanVmcjkpPyw=\r\n\
a=crypto:5 AES_CM_128_HMAC_SHA1_32 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR\r\n\
a=crypto:7 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR|2^20|1:4\r\n";

    /// Terms with a fresh key, as the call model draws one from its IdGenerator.
    fn fresh_key() -> SrtpTerms {
        SrtpTerms {
            mode: SrtpMode::Optional,
            key: Some(MasterKey::from_ids(&mut crate::ids::IdGenerator::new(7))),
        }
    }

    /// sdp draws no key itself: with none given, an RTP/SAVP offer is not usable.
    #[test]
    fn without_a_key_an_sdes_offer_is_not_taken() {
        assert!(answer(
            &parsed(SRTP_OFFER),
            &MediaPolicy::default(),
            local(),
            &origin(),
            SrtpTerms::default(),
        )
        .is_err());
    }

    #[test]
    fn an_sdes_offer_is_answered_with_its_first_usable_line_and_our_own_key() {
        let offer = parsed(SRTP_OFFER);
        let (answer, negotiated) = answer(
            &offer,
            &MediaPolicy::default(),
            local(),
            &origin(),
            fresh_key(),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let keys = negotiated.srtp.unwrap_or_else(|| panic!("no SRTP"));
        assert_eq!(keys.suite, Suite::AesCm128HmacSha1_32);
        assert_eq!(offer.media[0].crypto().map(|c| c.key), Some(keys.theirs));
        assert_ne!(keys.ours, keys.theirs, "our key is our own");
        let text = answer.to_string();
        assert!(text.contains("m=audio 20000 RTP/SAVP 0 101\r\n"), "{text}");
        let line = format!(
            "a=crypto:5 AES_CM_128_HMAC_SHA1_32 inline:{}\r\n",
            STANDARD.encode(keys.ours.0)
        );
        assert!(text.contains(&line), "{text}");
        assert_eq!(text.matches("a=crypto").count(), 1);

        // A re-answer with the key given keeps it.
        let (again, n) = super::answer(
            &offer,
            &MediaPolicy::default(),
            local(),
            &origin(),
            SrtpTerms {
                mode: SrtpMode::Optional,
                key: Some(keys.ours),
            },
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(again.to_string(), text);
        assert_eq!(n.srtp, Some(keys));
        assert_eq!(key_in(&text), Some(keys.ours));
    }

    #[test]
    fn best_effort_srtp_in_rtp_avp_is_taken_and_mandatory_refuses_plain() {
        let best_effort = SRTP_OFFER.replace("RTP/SAVP", "RTP/AVP");
        let (answer_sdp, n) = answer(
            &parsed(&best_effort),
            &MediaPolicy::default(),
            local(),
            &origin(),
            fresh_key(),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(n.srtp.is_some());
        assert!(answer_sdp.to_string().contains("RTP/AVP 0 101"));
        let mandatory = SrtpTerms {
            mode: SrtpMode::Mandatory,
            ..fresh_key()
        };
        let plain = "v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\nm=audio 5004 RTP/AVP 0\r\n";
        assert_eq!(
            answer(
                &parsed(plain),
                &MediaPolicy::default(),
                local(),
                &origin(),
                mandatory
            )
            .err(),
            Some(NegotiationError::SrtpRequired)
        );
        let (_, n) = answer(
            &parsed(SRTP_OFFER),
            &MediaPolicy::default(),
            local(),
            &origin(),
            mandatory,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(n.srtp.is_some());
        // Only suites and keys we cannot use: RTP/SAVP is refused.
        let unusable = SRTP_OFFER
            .lines()
            .filter(|l| !l.contains("AES_CM_128"))
            .collect::<Vec<_>>()
            .join("\r\n");
        assert_eq!(
            answer(
                &parsed(&unusable),
                &MediaPolicy::default(),
                local(),
                &origin(),
                SrtpTerms::default()
            )
            .err(),
            Some(NegotiationError::NoAcceptableMedia)
        );
    }

    #[test]
    fn our_srtp_offer_takes_only_an_answer_with_its_tag_and_suite() {
        let mut ours = offer(
            &MediaPolicy::default(),
            local(),
            &origin(),
            Direction::SendRecv,
        );
        let key = MasterKey([9; 30]);
        set_offer_key(&mut ours, Some(key));
        let text = ours.to_string();
        assert!(text.contains("RTP/SAVP 8 0 101"), "{text}");
        assert!(
            text.contains("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:"),
            "{text}"
        );
        let theirs = "PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR";
        let reply = |crypto: &str| {
            format!("v=0\r\no=- 1 1 IN IP4 10.0.0.2\r\ns=-\r\nc=IN IP4 10.0.0.2\r\nt=0 0\r\nm=audio 6000 RTP/SAVP 8\r\n{crypto}")
        };
        let good = reply(&format!(
            "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{theirs}\r\n"
        ));
        let n = accept_answer(&ours, &parsed(&good), &MediaPolicy::default())
            .unwrap_or_else(|e| panic!("{e}"));
        let keys = n.srtp.unwrap_or_else(|| panic!("no SRTP"));
        assert_eq!((keys.suite, keys.ours), (Suite::AesCm128HmacSha1_80, key));
        for bad in [
            String::new(),
            format!("a=crypto:2 AES_CM_128_HMAC_SHA1_80 inline:{theirs}\r\n"),
            format!("a=crypto:1 AES_CM_128_HMAC_SHA1_32 inline:{theirs}\r\n"),
        ] {
            assert_eq!(
                accept_answer(&ours, &parsed(&reply(&bad)), &MediaPolicy::default()).err(),
                Some(NegotiationError::NoCryptoInAnswer),
                "{bad}"
            );
        }
        // Made plain again for a peer that takes RTP.
        set_offer_key(&mut ours, None);
        let text = ours.to_string();
        assert!(
            text.contains("RTP/AVP") && !text.contains("crypto"),
            "{text}"
        );
    }

    fn parsed(text: &str) -> SessionDescription {
        parse(text).unwrap_or_else(|e| panic!("{e}\n{text}"))
    }

    fn local() -> SocketAddr {
        "127.0.0.1:20000".parse().unwrap_or_else(|_| unreachable!())
    }

    fn origin() -> Origin {
        Origin::new(
            "127.0.0.1".parse().unwrap_or(IpAddr::from([127, 0, 0, 1])),
            7,
        )
    }

    #[test]
    fn answer_takes_offerers_first_supported_codec_and_its_event_type() {
        let (answer, negotiated) = answer(
            &parsed(BARESIP),
            &MediaPolicy::default(),
            local(),
            &origin(),
            SrtpTerms::default(),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            negotiated.codec,
            Codec::Pcmu,
            "offerer listed PCMU before PCMA"
        );
        assert_eq!(negotiated.payload_type, 0);
        assert_eq!(
            negotiated.telephone_event,
            Some(96),
            "the offer's number, not ours"
        );
        assert_eq!(
            negotiated.remote,
            Some(
                "192.0.2.10:40000"
                    .parse()
                    .unwrap_or_else(|_| unreachable!())
            )
        );
        let text = answer.to_string();
        assert!(text.contains("m=audio 20000 RTP/AVP 0 96\r\n"), "{text}");
        assert!(text.contains("c=IN IP4 127.0.0.1\r\n"));
        assert!(text.contains("a=rtpmap:96 telephone-event/8000\r\n"));
        assert!(text.contains("a=sendrecv"));
    }

    #[test]
    fn no_telephone_event_unless_offered() {
        let offer = "v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\nm=audio 5004 RTP/AVP 8\r\n";
        let (answer, negotiated) = answer(
            &parsed(offer),
            &MediaPolicy::default(),
            local(),
            &origin(),
            SrtpTerms::default(),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(negotiated.telephone_event, None);
        assert!(!answer.to_string().contains("telephone-event"));
    }

    #[test]
    fn g729_only_or_video_only_is_not_acceptable() {
        let g729 = "v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\nm=audio 5004 RTP/AVP 18\r\na=rtpmap:18 G729/8000\r\n";
        assert_eq!(
            answer(
                &parsed(g729),
                &MediaPolicy::default(),
                local(),
                &origin(),
                SrtpTerms::default()
            )
            .err(),
            Some(NegotiationError::NoAcceptableMedia)
        );
        let video = "v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\nm=video 5006 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n";
        assert_eq!(
            answer(
                &parsed(video),
                &MediaPolicy::default(),
                local(),
                &origin(),
                SrtpTerms::default()
            )
            .err(),
            Some(NegotiationError::NoAcceptableMedia)
        );
        let srtp = "v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\nm=audio 5004 RTP/SAVP 0\r\n";
        assert!(answer(
            &parsed(srtp),
            &MediaPolicy::default(),
            local(),
            &origin(),
            SrtpTerms::default()
        )
        .is_err());
    }

    #[test]
    fn other_streams_are_rejected_with_port_zero() {
        let offer = "v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\n\
m=video 5006 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\nm=audio 5004 RTP/AVP 8\r\nm=audio 5008 RTP/AVP 0\r\n";
        let (answer, _) = answer(
            &parsed(offer),
            &MediaPolicy::default(),
            local(),
            &origin(),
            SrtpTerms::default(),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let ports: Vec<u16> = answer.media.iter().map(|m| m.port).collect();
        assert_eq!(ports, vec![0, 20000, 0]);
        assert_eq!(answer.media[0].formats, vec!["96"]);
    }

    #[test]
    fn hold_directions() {
        let base = "v=0\r\no=- 1 2 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\nm=audio 5004 RTP/AVP 8\r\n";
        for (attribute, theirs, ours) in [
            ("a=sendonly\r\n", Direction::SendOnly, "a=recvonly"),
            ("a=recvonly\r\n", Direction::RecvOnly, "a=sendonly"),
            ("a=inactive\r\n", Direction::Inactive, "a=inactive"),
        ] {
            let (answer, n) = answer(
                &parsed(&format!("{base}{attribute}")),
                &MediaPolicy::default(),
                local(),
                &origin(),
                SrtpTerms::default(),
            )
            .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(n.direction, theirs);
            assert!(answer.to_string().contains(ours));
        }
        let old_hold = base.replace("c=IN IP4 10.0.0.1", "c=IN IP4 0.0.0.0");
        let (answer, n) = answer(
            &parsed(&old_hold),
            &MediaPolicy::default(),
            local(),
            &origin(),
            SrtpTerms::default(),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((n.direction, n.remote), (Direction::SendOnly, None));
        assert!(answer.to_string().contains("a=recvonly"));
    }

    #[test]
    fn ipv6_lf_only_and_round_trip() {
        let text = "v=0\no=- 1 1 IN IP6 2001:db8::1\ns=-\nc=IN IP6 2001:db8::1\nt=0 0\nm=audio 5004 RTP/AVP 0 101\na=rtpmap:101 telephone-event/8000\na=fmtp:101 0-15\na=ptime:20\na=rtcp:5005\na=sendrecv\n";
        let sdp = parsed(text);
        assert_eq!(sdp.media[0].rtcp_port, Some(5005));
        let printed = sdp.to_string();
        assert!(printed.contains("c=IN IP6 2001:db8::1\r\n"));
        assert_eq!(parsed(&printed), sdp);
        let ours = offer(
            &MediaPolicy::default(),
            "[::1]:20000".parse().unwrap_or_else(|_| unreachable!()),
            &origin(),
            Direction::SendRecv,
        );
        assert_eq!(parsed(&ours.to_string()), ours);
        assert!(ours
            .to_string()
            .contains("m=audio 20000 RTP/AVP 8 0 101\r\n"));
    }

    #[test]
    fn accept_answer_checks_the_answer() {
        let ours = offer(
            &MediaPolicy::default(),
            local(),
            &origin(),
            Direction::SendRecv,
        );
        let good = "v=0\r\no=- 1 1 IN IP4 10.0.0.2\r\ns=-\r\nc=IN IP4 10.0.0.2\r\nt=0 0\r\nm=audio 6000 RTP/AVP 8 101\r\na=rtpmap:101 telephone-event/8000\r\n";
        let n = accept_answer(&ours, &parsed(good), &MediaPolicy::default())
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((n.codec, n.telephone_event), (Codec::Pcma, Some(101)));
        let rejected = good.replace("6000", "0");
        assert_eq!(
            accept_answer(&ours, &parsed(&rejected), &MediaPolicy::default()).err(),
            Some(NegotiationError::Rejected)
        );
        let only_pcmu = MediaPolicy {
            codecs: vec![Codec::Pcmu],
            ..MediaPolicy::default()
        };
        let ours = offer(&only_pcmu, local(), &origin(), Direction::SendRecv);
        assert_eq!(
            accept_answer(&ours, &parsed(good), &MediaPolicy::default()).err(),
            Some(NegotiationError::AnswerNotInOffer)
        );
    }

    #[test]
    fn malformed_sdp_names_the_line() {
        assert_eq!(
            parse("o=x"),
            Err(SdpError::Invalid {
                line: 1,
                reason: "SDP must start with v=0"
            })
        );
        assert!(matches!(
            parse("v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\nc=IN IP4 nowhere\r\n"),
            Err(SdpError::Invalid { line: 3, .. })
        ));
        assert!(matches!(
            parse("v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\nm=audio x RTP/AVP 0\r\n"),
            Err(SdpError::Invalid { line: 3, .. })
        ));
        assert!(parse("v=0\r\n").is_err());
    }

    mod property {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]
            #[test]
            fn arbitrary_text_never_panics(text in ".{0,400}") {
                if let Ok(sdp) = parse(&text) {
                    let _ = answer(&sdp, &MediaPolicy::default(), local(), &origin(), SrtpTerms::default());
                }
            }

            #[test]
            fn mutated_offers_never_panic(position in 0usize..BARESIP.len(), byte in 32u8..127) {
                let mut bytes = BARESIP.as_bytes().to_vec();
                bytes[position] = byte;
                let text = String::from_utf8_lossy(&bytes).to_string();
                if let Ok(sdp) = parse(&text) {
                    let _ = answer(&sdp, &MediaPolicy::default(), local(), &origin(), SrtpTerms::default());
                    let _ = parse(&sdp.to_string());
                }
            }
        }
    }
}
