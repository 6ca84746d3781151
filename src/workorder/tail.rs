//! `hotline-gateway events --platform 110`: an operator's view of a platform's stream, one line
//! per event, for watching the link during integration. It connects like a platform client but
//! never acknowledges, so the platform's own client still gets everything. With `--delay`
//! each line says how long the event took to arrive (the work-order benchmark reads that).

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

use super::pb;
use crate::store::format_time;

/// Where the gateway's work-order endpoint is and what the platforms prove there (`[api]` and
/// the `[[platform]]`s).
#[derive(Debug, Clone)]
pub struct LinkSettings {
    /// The endpoint's address (a wildcard is reached on loopback).
    pub address: SocketAddr,
    /// The endpoint's certificate (trusted as is) and the name to check in it, for TLS.
    pub tls: Option<(PathBuf, String)>,
    /// Each platform's name and token.
    pub platforms: Vec<(String, String)>,
}

/// Why the tail could not run.
#[derive(Debug, thiserror::Error)]
pub enum TailError {
    #[error("no [[platform]] named {0:?} in the configuration")]
    UnknownPlatform(String),
    #[error("cannot reach the gateway's work-order endpoint {address}: {source}")]
    Connect {
        address: String,
        source: tonic::transport::Error,
    },
    #[error("the gateway refused the stream: {0}")]
    Refused(tonic::Status),
    #[error("cannot read the TLS certificate {path}: {source}")]
    Certificate {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write the output: {0}")]
    Output(std::io::Error),
}

/// What to print.
#[derive(Debug, Clone, Copy, Default)]
pub struct TailOptions {
    /// Start after this sequence (0: from the first kept; None: after the last acknowledged).
    pub from: Option<u64>,
    /// Add each event's delay from its time at the gateway to its arrival.
    pub delay: bool,
}

/// Prints `platform`'s events to `out`, one line each, until the gateway ends the stream (or
/// says it is stopping).
///
/// # Errors
/// [`TailError`] for an unknown platform, an unreachable or refusing gateway, or a broken
/// output.
pub async fn tail(
    link: &LinkSettings,
    platform: &str,
    options: TailOptions,
    out: &mut impl Write,
) -> Result<(), TailError> {
    let token = link
        .platforms
        .iter()
        .find(|(name, _)| name == platform)
        .map(|(_, token)| token.clone())
        .ok_or_else(|| TailError::UnknownPlatform(platform.to_string()))?;
    let address = reachable(link.address);
    let scheme = if link.tls.is_some() { "https" } else { "http" };
    let url = format!("{scheme}://{address}");
    let connect_error = |source| TailError::Connect {
        address: url.clone(),
        source,
    };
    let mut endpoint =
        tonic::transport::Endpoint::from_shared(url.clone()).map_err(connect_error)?;
    if let Some((path, name)) = &link.tls {
        // The gateway's own certificate is the one to trust (often self-signed).
        let pem = std::fs::read(path).map_err(|source| TailError::Certificate {
            path: path.clone(),
            source,
        })?;
        let tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(pem))
            .domain_name(name.clone());
        endpoint = endpoint.tls_config(tls).map_err(connect_error)?;
    }
    let channel = endpoint.connect().await.map_err(connect_error)?;
    let mut client = pb::work_order_service_client::WorkOrderServiceClient::new(channel)
        .max_decoding_message_size(super::MAX_MESSAGE_BYTES);
    let hello = pb::LinkRequest {
        kind: Some(pb::link_request::Kind::Hello(pb::Hello {
            platform: platform.to_string(),
            token,
            resume_after: options.from,
        })),
    };
    // Only the Hello, and the sending side kept open (a half-closed stream would work too).
    let (keep, requests) = tokio::sync::mpsc::channel(1);
    let _ = keep.send(hello).await;
    let mut stream = client
        .link(tokio_stream::wrappers::ReceiverStream::new(requests))
        .await
        .map_err(TailError::Refused)?
        .into_inner();
    loop {
        let message = stream.message().await;
        let arrived = std::time::SystemTime::now();
        let line = match message {
            Ok(Some(message)) => match message.kind {
                Some(pb::link_response::Kind::Event(event)) => {
                    let mut text = line(&event);
                    if options.delay {
                        text.push_str(&format!(" delay_us={}", delay_us(&event, arrived)));
                    }
                    text
                }
                Some(pb::link_response::Kind::Welcome(welcome)) => format!(
                    "-- platform {}: newest event {}, acknowledged {}, oldest kept {}",
                    welcome.platform, welcome.latest, welcome.acknowledged, welcome.oldest
                ),
                Some(pb::link_response::Kind::Notice(notice)) => {
                    format!("-- notice: {}", notice.message)
                }
                _ => continue,
            },
            Ok(None) => return Ok(()),
            Err(status) if status.code() == tonic::Code::Unavailable => {
                format!("-- {}", status.message())
            }
            Err(status) => return Err(TailError::Refused(status)),
        };
        writeln!(out, "{line}").map_err(TailError::Output)?;
        out.flush().map_err(TailError::Output)?;
        if line.starts_with("-- the gateway is stopping") {
            return Ok(());
        }
    }
}

/// Microseconds from the event's time at the gateway to `arrived` (0 if the clocks disagree).
fn delay_us(event: &pb::Event, arrived: std::time::SystemTime) -> u128 {
    let Some(time) = &event.time else {
        return 0;
    };
    let at = std::time::UNIX_EPOCH
        + std::time::Duration::new(time.seconds.max(0) as u64, time.nanos.max(0) as u32);
    arrived.duration_since(at).map_or(0, |d| d.as_micros())
}

/// A listen address one can connect to (a wildcard means this host).
fn reachable(address: SocketAddr) -> SocketAddr {
    if address.ip().is_unspecified() {
        SocketAddr::new([127, 0, 0, 1].into(), address.port())
    } else {
        address
    }
}

/// One readable line: sequence, time, type, the call and what the event adds.
pub fn line(event: &pb::Event) -> String {
    let kind = pb::EventType::try_from(event.r#type)
        .map(|t| t.as_str_name())
        .unwrap_or("UNKNOWN");
    let leg = |leg: &Option<pb::Leg>| {
        leg.as_ref().map_or_else(String::new, |l| {
            if l.platform.is_empty() {
                l.peer.clone()
            } else {
                format!("{}({})", l.peer, l.platform)
            }
        })
    };
    let kind = kind.trim_start_matches("EVENT_TYPE_");
    let mut text = format!(
        "#{} {} {} call={} citizen={} called={} a={} b={}",
        event.sequence,
        format_time(super::convert::unix_ms(event.time.as_ref())),
        kind,
        event.call_id,
        event.citizen_number,
        event.called_number,
        leg(&event.caller_leg),
        leg(&event.called_leg),
    );
    if !event.linkage_id.is_empty() {
        text.push_str(&format!(" linkage={}", event.linkage_id));
    }
    if event.target.is_some() {
        text.push_str(&format!(" target={}", leg(&event.target)));
    }
    if event.sip_status > 0 {
        text.push_str(&format!(" status={}", event.sip_status));
    }
    if let Some(ticket) = &event.ticket {
        let urgency = pb::Urgency::try_from(ticket.urgency)
            .map(|u| u.as_str_name().trim_start_matches("URGENCY_").to_string())
            .unwrap_or_default();
        text.push_str(&format!(
            " ticket={} v{} [{urgency}] {:?}",
            ticket.number, ticket.version, ticket.summary
        ));
    }
    if let Some(reply) = &event.reply {
        text.push_str(&format!(
            " incident={} disposition={:?}",
            reply.incident_number, reply.disposition
        ));
    }
    if let Some(party) = &event.party {
        text.push_str(&format!(" party={} {}", party.party, party.peer));
    }
    if !event.hotkey.is_empty() {
        text.push_str(&format!(" hotkey={:?}", event.hotkey));
    }
    if let Ok(ended_by) = pb::EndedBy::try_from(event.ended_by) {
        if ended_by != pb::EndedBy::Unspecified {
            let by = ended_by.as_str_name().trim_start_matches("ENDED_BY_");
            text.push_str(&format!(
                " ended_by={} reason={:?}",
                by.to_ascii_lowercase(),
                event.reason
            ));
        }
    }
    text
}
