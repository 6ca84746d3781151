//! Offer/answer (RFC 3264) and SDES keying (RFC 4568) on parsed descriptions: our offers,
//! our answers to theirs, and reading the answer to ours.

use std::net::SocketAddr;

use super::*;

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
    let media = offer
        .media
        .iter()
        .enumerate()
        .map(|(index, offered)| {
            if index == chosen_index {
                answered_stream(offered, &negotiated, local, ours)
            } else {
                rejected_stream(offered)
            }
        })
        .collect();
    let description = SessionDescription {
        origin: origin.clone(),
        session_name: "-".into(),
        connection: Some(local.ip()),
        direction: None,
        media,
    };
    Ok((description, negotiated))
}

/// An offered stream we do not take, rejected with port 0 (RFC 3264 §6).
fn rejected_stream(offered: &MediaDescription) -> MediaDescription {
    MediaDescription {
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
    }
}

/// The stream we take: the negotiated codec (and telephone-event), our port, the direction
/// reversed, our `a=crypto` when SRTP was agreed.
fn answered_stream(
    offered: &MediaDescription,
    negotiated: &Negotiated,
    local: SocketAddr,
    ours: Option<Crypto>,
) -> MediaDescription {
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
    MediaDescription {
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
    }
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
