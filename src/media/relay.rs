//! The RTP/RTCP relay of one call: one task owning both legs' socket pairs.
//!
//! Per packet (no allocation, no lock shared between calls): receive on leg X, latch X's real
//! source (symmetric RTP, for NAT), demultiplex RTP from RTCP (RFC 5761 §4), map the payload type
//! to leg Y's (codec, RFC 4733 telephone-event), transcode PCMU<->PCMA if the legs negotiated
//! different codecs, rewrite SSRC/sequence/timestamp so Y always sees one continuous stream of
//! ours, and send it from leg Y's socket (the address Y was given in SDP) to Y's latched or
//! signalled address.

use std::net::SocketAddr;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use super::g711::{transcode_in_place, Transcode};
use super::ports::LegSockets;
use super::rtp::{classify, rewrite_rtcp_ssrc, set_payload_type, PacketKind, StreamRewriter};
use super::{Leg, LegMedia, MediaCommand};
use crate::ids::IdGenerator;
use crate::metrics::{Counter, Metrics};
use crate::sip::sdp::Codec;

/// Comfort noise (RFC 3389) passes through whatever was negotiated.
const COMFORT_NOISE: u8 = 13;

/// Packet counts of one call, readable while it runs.
#[derive(Debug, Default)]
pub struct RelayStats {
    pub a_to_b: AtomicU64,
    pub b_to_a: AtomicU64,
    pub dropped: AtomicU64,
}

/// What the relay tells its call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaEvent {
    /// No RTP or RTCP on either leg for the inactivity timeout.
    Inactive,
}

/// The call's handle on its relay. Dropping it stops the relay and frees the ports.
pub struct RelayHandle {
    commands: mpsc::UnboundedSender<MediaCommand>,
    events: mpsc::UnboundedReceiver<MediaEvent>,
    stats: Arc<RelayStats>,
    addresses: [SocketAddr; 2],
}

impl RelayHandle {
    pub fn command(&self, command: MediaCommand) {
        let _ = self.commands.send(command);
    }

    /// Waits for the next relay event (pending forever once the relay has stopped).
    pub async fn event(&mut self) -> MediaEvent {
        match self.events.recv().await {
            Some(event) => event,
            None => std::future::pending().await,
        }
    }

    pub fn stats(&self) -> &RelayStats {
        &self.stats
    }

    /// The local RTP address of `leg` (what SDP advertises).
    pub fn address(&self, leg: Leg) -> SocketAddr {
        self.addresses[leg.index()]
    }
}

/// Per-leg state: what the endpoint negotiated, where it really sends from, and the stream we
/// send it.
struct Side {
    media: Option<LegMedia>,
    rtp_source: Option<SocketAddr>,
    rtcp_source: Option<SocketAddr>,
    towards: StreamRewriter,
}

impl Side {
    fn new(ids: &mut IdGenerator) -> Side {
        Side {
            media: None,
            rtp_source: None,
            rtcp_source: None,
            towards: StreamRewriter::new(ids.ssrc(), ids.u16(), ids.next_u64() as u32, 8000),
        }
    }

    fn configure(&mut self, media: LegMedia) {
        let moved =
            self.media.and_then(|m| m.remote).map(|a| a.ip()) != media.remote.map(|a| a.ip());
        if moved {
            // A new address in SDP (re-INVITE from elsewhere): latch afresh.
            self.rtp_source = None;
            self.rtcp_source = None;
        }
        self.media = Some(media);
    }

    /// Symmetric RTP: the first source is latched; a later one only if it has the signalled
    /// IP (the port may change behind NAT). Returns whether to accept the packet.
    fn latch(latched: &mut Option<SocketAddr>, media: &LegMedia, source: SocketAddr) -> bool {
        match *latched {
            Some(current) if current == source => true,
            None => {
                *latched = Some(source);
                true
            }
            Some(_) if media.remote.is_some_and(|r| r.ip() == source.ip()) => {
                *latched = Some(source);
                true
            }
            Some(_) => false,
        }
    }

    fn rtp_destination(&self) -> Option<SocketAddr> {
        let media = self.media?;
        if !media.receives {
            return None;
        }
        self.rtp_source.or(media.remote)
    }

    fn rtcp_destination(&self) -> Option<SocketAddr> {
        let media = self.media?;
        self.rtcp_source.or_else(|| {
            media
                .remote
                .map(|r| SocketAddr::new(r.ip(), r.port().wrapping_add(1)))
        })
    }
}

/// Starts the relay task for a call's two legs.
pub fn spawn(
    legs: [LegSockets; 2],
    mut ids: IdGenerator,
    inactivity: Duration,
    metrics: Arc<Metrics>,
) -> RelayHandle {
    let (commands, command_queue) = mpsc::unbounded_channel();
    let (event_sender, events) = mpsc::unbounded_channel();
    let stats = Arc::new(RelayStats::default());
    let addresses = [legs[0].rtp_address(), legs[1].rtp_address()];
    let sides = [Side::new(&mut ids), Side::new(&mut ids)];
    tokio::spawn(run(
        legs,
        sides,
        command_queue,
        event_sender,
        Arc::clone(&stats),
        inactivity,
        metrics,
    ));
    RelayHandle {
        commands,
        events,
        stats,
        addresses,
    }
}

/// Counts flushed to the shared metrics in batches, so the packet path touches no shared
/// cache line per packet.
struct Tally {
    relayed: u64,
    rtcp: u64,
    dropped: u64,
}

impl Tally {
    fn flush(&mut self, metrics: &Metrics) {
        metrics.add(
            Counter::RtpPacketsRelayed,
            std::mem::take(&mut self.relayed),
        );
        metrics.add(Counter::RtcpPacketsRelayed, std::mem::take(&mut self.rtcp));
        metrics.add(
            Counter::RtpPacketsDropped,
            std::mem::take(&mut self.dropped),
        );
    }
}

async fn run(
    legs: [LegSockets; 2],
    mut sides: [Side; 2],
    mut commands: mpsc::UnboundedReceiver<MediaCommand>,
    events: mpsc::UnboundedSender<MediaEvent>,
    stats: Arc<RelayStats>,
    inactivity: Duration,
    metrics: Arc<Metrics>,
) {
    let [a, b] = &legs;
    let mut buffers = [[0u8; 2048]; 4];
    let [rtp_a, rtp_b, rtcp_a, rtcp_b] = &mut buffers;
    let mut answered = false;
    let mut last_activity = Instant::now();
    let mut tick = tokio::time::interval(inactivity.min(Duration::from_secs(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut tally = Tally {
        relayed: 0,
        rtcp: 0,
        dropped: 0,
    };
    loop {
        tokio::select! {
            command = commands.recv() => match command {
                Some(MediaCommand::Configure(leg, media)) => sides[leg.index()].configure(media),
                Some(MediaCommand::Answered) => {
                    answered = true;
                    last_activity = Instant::now();
                }
                None => break,
            },
            received = a.rtp.recv_from(rtp_a) => if let Ok((length, source)) = received {
                last_activity = Instant::now();
                let outcome = relay_rtp(&mut sides, Leg::A, &mut rtp_a[..length], source, &b.rtp, last_activity);
                count(&stats, &mut tally, Leg::A, outcome);
            },
            received = b.rtp.recv_from(rtp_b) => if let Ok((length, source)) = received {
                last_activity = Instant::now();
                let outcome = relay_rtp(&mut sides, Leg::B, &mut rtp_b[..length], source, &a.rtp, last_activity);
                count(&stats, &mut tally, Leg::B, outcome);
            },
            received = a.rtcp.recv_from(rtcp_a) => if let Ok((length, source)) = received {
                last_activity = Instant::now();
                if relay_rtcp(&mut sides, Leg::A, &mut rtcp_a[..length], source, &b.rtcp) {
                    tally.rtcp += 1;
                }
            },
            received = b.rtcp.recv_from(rtcp_b) => if let Ok((length, source)) = received {
                last_activity = Instant::now();
                if relay_rtcp(&mut sides, Leg::B, &mut rtcp_b[..length], source, &a.rtcp) {
                    tally.rtcp += 1;
                }
            },
            _ = tick.tick() => {
                tally.flush(&metrics);
                if answered && last_activity.elapsed() >= inactivity {
                    answered = false;
                    let _ = events.send(MediaEvent::Inactive);
                }
            }
        }
    }
    tally.flush(&metrics);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Relayed,
    Dropped,
}

fn count(stats: &RelayStats, tally: &mut Tally, from: Leg, outcome: Outcome) {
    match outcome {
        Outcome::Relayed => {
            tally.relayed += 1;
            let counter = if from == Leg::A {
                &stats.a_to_b
            } else {
                &stats.b_to_a
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
        Outcome::Dropped => {
            tally.dropped += 1;
            stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Forwards one RTP packet received on `from` out of the other leg's socket.
fn relay_rtp(
    sides: &mut [Side; 2],
    from: Leg,
    packet: &mut [u8],
    source: SocketAddr,
    out: &UdpSocket,
    now: Instant,
) -> Outcome {
    let [a, b] = sides;
    let (incoming, outgoing) = match from {
        Leg::A => (a, b),
        Leg::B => (b, a),
    };
    let Some(in_media) = incoming.media else {
        return Outcome::Dropped;
    };
    if !Side::latch(&mut incoming.rtp_source, &in_media, source) {
        return Outcome::Dropped;
    }
    match classify(packet) {
        PacketKind::Rtp => {}
        // RFC 5761 rtcp-mux on the RTP port.
        PacketKind::Rtcp => {
            return match outgoing.rtp_destination() {
                Some(destination) => {
                    rewrite_rtcp_ssrc(packet, outgoing.towards.ssrc());
                    send(out, packet, destination)
                }
                None => Outcome::Dropped,
            };
        }
        PacketKind::Unknown => return Outcome::Dropped,
    }
    let (Some(out_media), Some(destination)) = (outgoing.media, outgoing.rtp_destination()) else {
        return Outcome::Dropped;
    };
    let payload_type = packet[1] & 0x7f;
    if Some(payload_type) == in_media.telephone_event {
        match out_media.telephone_event {
            Some(out_type) => set_payload_type(packet, out_type),
            None => return Outcome::Dropped,
        }
    } else if payload_type == in_media.payload_type {
        if in_media.codec != out_media.codec {
            let Some(range) = payload_range(packet) else {
                return Outcome::Dropped;
            };
            let direction = match in_media.codec {
                Codec::Pcmu => Transcode::UlawToAlaw,
                Codec::Pcma => Transcode::AlawToUlaw,
            };
            transcode_in_place(&mut packet[range], direction);
        }
        set_payload_type(packet, out_media.payload_type);
    } else if payload_type != COMFORT_NOISE {
        return Outcome::Dropped;
    }
    if outgoing.towards.rewrite(packet, now).is_err() {
        return Outcome::Dropped;
    }
    send(out, packet, destination)
}

fn relay_rtcp(
    sides: &mut [Side; 2],
    from: Leg,
    packet: &mut [u8],
    source: SocketAddr,
    out: &UdpSocket,
) -> bool {
    let [a, b] = sides;
    let (incoming, outgoing) = match from {
        Leg::A => (a, b),
        Leg::B => (b, a),
    };
    let Some(in_media) = incoming.media else {
        return false;
    };
    if classify(packet) != PacketKind::Rtcp
        || !Side::latch(&mut incoming.rtcp_source, &in_media, source)
    {
        return false;
    }
    let Some(destination) = outgoing.rtcp_destination() else {
        return false;
    };
    rewrite_rtcp_ssrc(packet, outgoing.towards.ssrc());
    send(out, packet, destination) == Outcome::Relayed
}

fn send(socket: &UdpSocket, packet: &[u8], destination: SocketAddr) -> Outcome {
    match socket.try_send_to(packet, destination) {
        Ok(_) => Outcome::Relayed,
        // A full socket buffer drops the packet, as the network would; never wait on media.
        Err(_) => Outcome::Dropped,
    }
}

/// The payload bytes of an RTP packet: after CSRCs and header extension, before padding
/// (RFC 3550 §5.1, §5.3.1).
fn payload_range(packet: &[u8]) -> Option<Range<usize>> {
    let first = *packet.first()?;
    let csrc_count = usize::from(first & 0x0f);
    let mut start = 12 + 4 * csrc_count;
    if first & 0x10 != 0 {
        let words = packet.get(start + 2..start + 4)?;
        start += 4 + 4 * usize::from(u16::from_be_bytes([words[0], words[1]]));
    }
    let mut end = packet.len();
    if first & 0x20 != 0 {
        let padding = usize::from(*packet.last()?);
        end = end.checked_sub(padding)?;
    }
    (start <= end).then_some(start..end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_range_skips_csrc_extension_and_padding() {
        let mut packet = vec![0x80, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1];
        packet.extend_from_slice(&[0xaa; 160]);
        assert_eq!(payload_range(&packet), Some(12..172));
        // one CSRC, an extension of one word, two bytes of padding
        let mut packet = vec![0xb1, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1];
        packet.extend_from_slice(&[0, 0, 0, 9]);
        packet.extend_from_slice(&[0xbe, 0xde, 0, 1, 1, 2, 3, 4]);
        packet.extend_from_slice(&[0x55; 10]);
        packet.extend_from_slice(&[0, 2]);
        assert_eq!(payload_range(&packet), Some(24..34));
        assert_eq!(
            payload_range(&[0x90, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1]),
            None
        );
        assert_eq!(
            payload_range(&[0xa0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 200]),
            None
        );
    }
}
