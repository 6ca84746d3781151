//! HEP (the Homer Encapsulation Protocol), version 3: a copy of every SIP message the gateway
//! receives and sends, with its addresses, transport and time, and the call's correlation id,
//! sent over UDP to a capture server (Homer, `[hep] address`). The correlation id is the
//! Call-ID of the call's first leg (the citizen's) on every leg the gateway opened for the
//! call (the desk's, a transfer target's, a conference guest's: [`Correlations`]), so Homer
//! shows a B2BUA call as one; a message of no call (a probe, a stranger's) carries its own.
//!
//! Never in the signalling's way: a message is encoded where it passes and queued to a task
//! that sends it; a full queue or a collector that does not listen loses the copy (counted),
//! never the message.
//!
//! The chunks (HEP3 "Chunk types"): 1 IP family, 2 IP protocol, 3/4 IPv4 source and
//! destination (5/6 for IPv6), 7/8 ports, 9/10 seconds and microseconds, 11 protocol type
//! (1: SIP), 12 capture agent id, 15 payload, 17 correlation id; each `vendor 0, type,
//! length` (6 octets with the length counting them) before its value, all after "HEP3" and
//! the whole packet's length.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::metrics::{Counter, Metrics};

/// Copies waiting to be sent; beyond, new ones are dropped (a collector that cannot keep up).
const QUEUE: usize = 8192;
/// ... and the bytes they may hold (big datagrams from strangers are copied too).
const QUEUE_BYTES: usize = 16 << 20;

/// `[hep]`: where the copies go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HepSettings {
    pub collector: SocketAddr,
    /// The capture agent id the collector shows (chunk 12).
    pub capture_id: u32,
}

/// How the message travelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Carried {
    Udp,
    /// TCP, or TLS over it (the copy is the message, in the clear).
    Tcp,
}

/// A call as its legs' copies name it: its first leg's Call-ID. Its owners hold it (see
/// [`crate::sip::endpoint::Owner::of_call`]); the legs linked to it outlive it by [`GRACE`].
#[derive(Debug)]
pub struct CallTag {
    id: Arc<str>,
}

impl CallTag {
    pub fn new(call_id: &str) -> Arc<CallTag> {
        Arc::new(CallTag {
            id: Arc::from(call_id),
        })
    }
}

/// Which call each leg's Call-ID belongs to: the legs the gateway opens are linked to their
/// call as their first request goes out, before its copy is made.
#[derive(Default)]
pub struct Correlations {
    legs: dashmap::DashMap<Box<str>, Leg>,
    linked: AtomicUsize,
}

struct Leg {
    call: Arc<str>,
    /// Whether the call's owners are still there.
    alive: Weak<CallTag>,
    /// When a sweep first found them gone.
    gone_since: Option<Instant>,
}

/// Legs linked between sweeps.
const SWEEP_EVERY: usize = 1024;
/// How long a leg keeps its call's id after the call's owners are gone: the last answers and
/// their retransmissions (Timer J, 64*T1) still come.
pub const GRACE: Duration = Duration::from_secs(64);

impl Correlations {
    /// `call_id` is a leg of the call `tag` names.
    pub fn link(&self, call_id: &str, tag: &Arc<CallTag>) {
        if call_id == &*tag.id || self.legs.contains_key(call_id) {
            return;
        }
        let leg = Leg {
            call: Arc::clone(&tag.id),
            alive: Arc::downgrade(tag),
            gone_since: None,
        };
        self.legs.insert(call_id.into(), leg);
        if self.linked.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            self.sweep(Instant::now());
        }
    }

    /// Forgets the legs of calls gone for longer than [`GRACE`].
    fn sweep(&self, now: Instant) {
        self.legs.retain(|_, leg| {
            if leg.alive.strong_count() > 0 {
                return true;
            }
            let gone = *leg.gone_since.get_or_insert(now);
            now.duration_since(gone) < GRACE
        });
    }

    /// The correlation id of the call `call_id` is a leg of.
    pub fn of(&self, call_id: &[u8]) -> Option<Arc<str>> {
        let call_id = std::str::from_utf8(call_id).ok()?;
        Some(Arc::clone(&self.legs.get(call_id)?.call))
    }
}

/// Where the transport hands its copies. Cheap to clone.
#[derive(Clone)]
pub struct HepTap {
    correlations: Arc<Correlations>,
    queue: mpsc::Sender<Bytes>,
    /// The bytes of the copies queued now.
    queued: Arc<AtomicUsize>,
    capture_id: u32,
    metrics: Arc<Metrics>,
}

impl HepTap {
    /// Binds a UDP socket towards the collector and starts the task that sends the copies.
    ///
    /// # Errors
    /// The socket cannot be bound.
    pub async fn start(
        settings: HepSettings,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) -> std::io::Result<HepTap> {
        let any: SocketAddr = match settings.collector {
            SocketAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let socket = UdpSocket::bind(any).await?;
        let (queue, mut copies) = mpsc::channel::<Bytes>(QUEUE);
        let queued = Arc::new(AtomicUsize::new(0));
        let sent = Arc::clone(&queued);
        let sender_metrics = Arc::clone(&metrics);
        tokio::spawn(async move {
            loop {
                let copy = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    copy = copies.recv() => copy,
                };
                let Some(copy) = copy else { return };
                sent.fetch_sub(copy.len(), Ordering::Relaxed);
                match socket.send_to(&copy, settings.collector).await {
                    Ok(_) => sender_metrics.increment(Counter::HepSent),
                    // An unreachable collector (ICMP) or a full buffer: the copy is lost.
                    Err(_) => sender_metrics.increment(Counter::HepDropped),
                }
            }
        });
        Ok(HepTap {
            correlations: Arc::default(),
            queue,
            queued,
            capture_id: settings.capture_id,
            metrics,
        })
    }

    /// Where the legs of calls are linked to their call.
    pub fn correlations(&self) -> Arc<Correlations> {
        Arc::clone(&self.correlations)
    }

    /// A copy of `message`, which went from `source` to `destination`, for the collector.
    pub fn capture(
        &self,
        source: SocketAddr,
        destination: SocketAddr,
        carried: Carried,
        message: &[u8],
    ) {
        let own = call_id(message);
        let call = own.and_then(|id| self.correlations.of(id));
        let packet = encode(
            (source, destination, carried),
            SystemTime::now(),
            self.capture_id,
            message,
            call.as_deref().map(str::as_bytes).or(own),
        );
        let size = packet.len();
        if self.queued.fetch_add(size, Ordering::Relaxed) + size > QUEUE_BYTES
            || self.queue.try_send(Bytes::from(packet)).is_err()
        {
            self.queued.fetch_sub(size, Ordering::Relaxed);
            self.metrics.increment(Counter::HepDropped);
        }
    }
}

/// The HEPv3 packet of `message` as it passed at `time`; its correlation id `correlation`, or
/// when None its Call-ID.
pub fn encode(
    (source, destination, carried): (SocketAddr, SocketAddr, Carried),
    time: SystemTime,
    capture_id: u32,
    message: &[u8],
    correlation: Option<&[u8]>,
) -> Vec<u8> {
    let mut packet = Vec::with_capacity(message.len() + 128);
    packet.extend_from_slice(b"HEP3");
    packet.extend_from_slice(&[0, 0]); // the total length, set below
    let family = match (source.ip(), destination.ip()) {
        (IpAddr::V4(_), IpAddr::V4(_)) => 2u8,
        _ => 10,
    };
    chunk(&mut packet, 1, &[family]);
    let protocol = match carried {
        Carried::Udp => 17u8,
        Carried::Tcp => 6,
    };
    chunk(&mut packet, 2, &[protocol]);
    match (source.ip(), destination.ip()) {
        (IpAddr::V4(from), IpAddr::V4(to)) => {
            chunk(&mut packet, 3, &from.octets());
            chunk(&mut packet, 4, &to.octets());
        }
        (from, to) => {
            chunk(&mut packet, 5, &v6(from).octets());
            chunk(&mut packet, 6, &v6(to).octets());
        }
    }
    chunk(&mut packet, 7, &source.port().to_be_bytes());
    chunk(&mut packet, 8, &destination.port().to_be_bytes());
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let seconds = u32::try_from(since.as_secs()).unwrap_or(u32::MAX);
    chunk(&mut packet, 9, &seconds.to_be_bytes());
    chunk(&mut packet, 10, &since.subsec_micros().to_be_bytes());
    chunk(&mut packet, 11, &[1]); // SIP
    chunk(&mut packet, 12, &capture_id.to_be_bytes());
    // A message too big for one UDP datagram (65,507 octets) with its chunks is cut.
    let room = 65_000 - packet.len() - 6 * 2 - 256;
    chunk(&mut packet, 15, &message[..message.len().min(room)]);
    if let Some(correlation) = correlation.or_else(|| call_id(message)) {
        chunk(&mut packet, 17, &correlation[..correlation.len().min(255)]);
    }
    let length = u16::try_from(packet.len()).unwrap_or(u16::MAX);
    packet[4..6].copy_from_slice(&length.to_be_bytes());
    packet
}

fn v6(ip: IpAddr) -> std::net::Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

/// One chunk: vendor 0 (generic), `kind`, its length with the 6-octet header, the value.
fn chunk(packet: &mut Vec<u8>, kind: u16, value: &[u8]) {
    let length = u16::try_from(value.len() + 6).unwrap_or(u16::MAX);
    packet.extend_from_slice(&0u16.to_be_bytes());
    packet.extend_from_slice(&kind.to_be_bytes());
    packet.extend_from_slice(&length.to_be_bytes());
    packet.extend_from_slice(value);
}

/// The Call-ID header's value (`Call-ID:` or its compact form `i:`, RFC 3261 §7.3.3) among
/// the message's headers, without parsing the rest.
fn call_id(message: &[u8]) -> Option<&[u8]> {
    let head = message
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(message, |end| &message[..end]);
    head.split(|b| *b == b'\n').skip(1).find_map(|line| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let colon = line.iter().position(|b| *b == b':')?;
        let name = line[..colon].trim_ascii();
        (name.eq_ignore_ascii_case(b"call-id") || name.eq_ignore_ascii_case(b"i"))
            .then(|| line[colon + 1..].trim_ascii())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The chunks of a HEPv3 packet by type, after checking its header and lengths.
    pub(crate) fn decode(packet: &[u8]) -> Option<Vec<(u16, Vec<u8>)>> {
        if packet.get(..4)? != b"HEP3" {
            return None;
        }
        let total = usize::from(u16::from_be_bytes([*packet.get(4)?, *packet.get(5)?]));
        if total != packet.len() {
            return None;
        }
        let mut chunks = Vec::new();
        let mut at = 6;
        while at < packet.len() {
            let header = packet.get(at..at + 6)?;
            let kind = u16::from_be_bytes([header[2], header[3]]);
            let length = usize::from(u16::from_be_bytes([header[4], header[5]]));
            chunks.push((kind, packet.get(at + 6..at + length)?.to_vec()));
            at += length;
        }
        Some(chunks)
    }

    #[test]
    fn a_message_is_encoded_with_its_addresses_time_and_call_id() {
        let message = b"INVITE sip:110@gw SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1\r\ni: abc@host\r\n\r\nv=0\r\nCall-ID: not-this\r\n";
        let time = UNIX_EPOCH + Duration::from_micros(1_795_305_600_123_456);
        let packet = encode(
            (
                "10.0.0.1:5070".parse().unwrap_or_else(|_| unreachable!()),
                "10.0.0.2:5060".parse().unwrap_or_else(|_| unreachable!()),
                Carried::Udp,
            ),
            time,
            2001,
            message,
            None,
        );
        let chunks = decode(&packet).unwrap_or_else(|| panic!("not HEPv3"));
        let value = |kind| {
            chunks
                .iter()
                .find(|(k, _)| *k == kind)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        assert_eq!(value(1), [2], "IPv4");
        assert_eq!(value(2), [17], "UDP");
        assert_eq!(value(3), [10, 0, 0, 1]);
        assert_eq!(value(4), [10, 0, 0, 2]);
        assert_eq!(value(7), 5070u16.to_be_bytes());
        assert_eq!(value(8), 5060u16.to_be_bytes());
        assert_eq!(value(9), 1_795_305_600u32.to_be_bytes());
        assert_eq!(value(10), 123_456u32.to_be_bytes());
        assert_eq!(value(11), [1], "SIP");
        assert_eq!(value(12), 2001u32.to_be_bytes());
        assert_eq!(value(15), message.to_vec());
        assert_eq!(
            value(17),
            b"abc@host".to_vec(),
            "the header's, not the body's"
        );
    }

    #[test]
    fn ipv6_and_tcp_and_a_message_without_call_id() {
        let packet = encode(
            (
                "[2001:db8::1]:5061"
                    .parse()
                    .unwrap_or_else(|_| unreachable!()),
                "[2001:db8::2]:5060"
                    .parse()
                    .unwrap_or_else(|_| unreachable!()),
                Carried::Tcp,
            ),
            UNIX_EPOCH,
            1,
            b"garbage",
            None,
        );
        let chunks = decode(&packet).unwrap_or_else(|| panic!("not HEPv3"));
        let kinds: Vec<u16> = chunks.iter().map(|(k, _)| *k).collect();
        assert_eq!(kinds, vec![1, 2, 5, 6, 7, 8, 9, 10, 11, 12, 15]);
        assert_eq!(chunks[0].1, [10]);
        assert_eq!(chunks[1].1, [6]);
    }

    /// A leg linked to its call carries the call's correlation id, for a while after the call's
    /// owners are gone too; then a sweep forgets it.
    #[test]
    fn legs_carry_their_calls_correlation_id() {
        let correlations = Correlations::default();
        let call = CallTag::new("citizen-leg@carrier");
        correlations.link("desk-leg@gw", &call);
        correlations.link("citizen-leg@carrier", &call);
        assert_eq!(
            correlations.of(b"desk-leg@gw").as_deref(),
            Some("citizen-leg@carrier")
        );
        assert_eq!(
            correlations.of(b"citizen-leg@carrier"),
            None,
            "its own Call-ID"
        );
        let packet = encode(
            (
                "10.0.0.1:5060".parse().unwrap_or_else(|_| unreachable!()),
                "10.0.0.2:5060".parse().unwrap_or_else(|_| unreachable!()),
                Carried::Udp,
            ),
            UNIX_EPOCH,
            1,
            b"BYE sip:x SIP/2.0\r\nCall-ID: desk-leg@gw\r\n\r\n",
            correlations
                .of(b"desk-leg@gw")
                .as_deref()
                .map(str::as_bytes),
        );
        let chunks = decode(&packet).unwrap_or_else(|| panic!("not HEPv3"));
        assert!(chunks.contains(&(17, b"citizen-leg@carrier".to_vec())));
        drop(call);
        let now = Instant::now();
        correlations.sweep(now);
        assert!(
            correlations.of(b"desk-leg@gw").is_some(),
            "its last answers still come"
        );
        correlations.sweep(now + GRACE);
        assert_eq!(correlations.of(b"desk-leg@gw"), None, "forgotten");
    }
}
