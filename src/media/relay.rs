//! The RTP/RTCP relay: worker threads that own the media sockets of the calls assigned to them.
//!
//! Per packet (no allocation, no lock shared between calls): receive on leg X, latch X's real
//! source (symmetric RTP, for NAT), demultiplex RTP from RTCP (RFC 5761 §4), map the payload type
//! to leg Y's (codec, RFC 4733 telephone-event), transcode PCMU<->PCMA if the legs negotiated
//! different codecs, rewrite SSRC/sequence/timestamp so Y always sees one continuous stream of
//! ours, and send it from leg Y's socket (the address Y was given in SDP) to Y's latched or
//! signalled address.
//!
//! Why worker threads and not a task per call: a packet every 12 us spread over 1,600 sockets
//! means one wake-up, one context switch and one scheduler round per packet, which cost more
//! than the relaying (measured: ~10 us per packet that way). Each worker owns its calls'
//! sockets in one level-triggered epoll set and works in two modes: under load it sleeps out the
//! rest of a 1 ms tick and then reads every socket that became readable (tens of packets per
//! wake-up, at most 1 ms of added latency); below five packets per millisecond it waits in epoll
//! instead, so a lightly loaded or idle gateway does not tick at all.
//!
//! Conferences: with three or more parties in a call's audio ([`MediaCommand::Join`]) the worker
//! stops relaying for that call and mixes instead: each party's RTP goes into its jitter buffer
//! ([`super::mixer`]), and every 20 ms the worker takes one frame from each, mixes N-1 and sends
//! each party its frame, encoded in its codec, stamped into the same continuous stream (SSRC,
//! sequence numbers, timestamps) it had while relayed. Back to two parties, relaying resumes in
//! that stream.
//!
//! SRTP (RFC 3711): a leg whose SDP carried keys has its own contexts; what it sends is
//! authenticated (a packet that fails is dropped before it can latch anything) and decrypted
//! on arrival, and everything we send it, relayed, mixed or generated, is protected last,
//! after the rewriting. So a call can be SRTP on one leg and plain on the other.
//!
//! Why level-triggered: at 50 packets/s a stream's socket holds one datagram per tick. An
//! edge-triggered set must read each socket until `EAGAIN`, a second system call per packet;
//! level-triggered, one read per reported socket per tick is enough (a socket still holding
//! data is simply reported again on the next wait).

use std::net::SocketAddr;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::mpsc as control;

use std::net::UdpSocket;
use std::os::fd::{AsFd, OwnedFd};

use rustix::event::{epoll, eventfd, EventfdFlags, Timespec};
use tokio::sync::mpsc;

use super::g711::{transcode_in_place, Transcode};
use super::mixer::{self, Arrival, JitterBuffer, Playout, FRAME};
use super::ports::LegSockets;
use super::rtp::{classify, rewrite_rtcp_ssrc, set_payload_type, PacketKind, StreamRewriter};
use super::srtp;
use super::{LegMedia, MediaCommand, Party, MAX_PARTIES};
use crate::ids::IdGenerator;
use crate::media::codec::Codec;
use crate::metrics::{Counter, Metrics};

/// Ringback as Chinese networks play it (YD/T 1970, GB 16837): 450 Hz, 1 s on, 4 s off.
const RINGBACK_HZ: f64 = 450.0;
const RINGBACK_ON_PACKETS: u64 = 50;
const RINGBACK_CYCLE_PACKETS: u64 = 250;
/// 20 ms of 8 kHz G.711; 450 Hz fits nine whole periods in it, so every tone packet is the same.
const RINGBACK_SAMPLES: usize = 160;
const PACKET_TIME: Duration = Duration::from_millis(20);

/// A ringback stream in progress towards one endpoint.
struct Ringback {
    tone: [u8; RINGBACK_SAMPLES],
    silence: u8,
    payload_type: u8,
    started: Instant,
    sent: u64,
    /// The first packet's timestamp; each next one is 160 later (one packet of samples).
    first_timestamp: Option<u32>,
}

impl Ringback {
    fn new(media: &LegMedia, now: Instant) -> Ringback {
        let encode = |sample: i16| match media.codec {
            Codec::Pcmu => super::g711::linear_to_ulaw(sample),
            Codec::Pcma => super::g711::linear_to_alaw(sample),
        };
        let mut tone = [0u8; RINGBACK_SAMPLES];
        for (n, code) in tone.iter_mut().enumerate() {
            // -10 dBm0-ish: a third of full scale.
            let phase = 2.0 * std::f64::consts::PI * RINGBACK_HZ * n as f64 / 8000.0;
            *code = encode((phase.sin() * 10_000.0) as i16);
        }
        Ringback {
            tone,
            silence: encode(0),
            payload_type: media.payload_type,
            started: now,
            sent: 0,
            first_timestamp: None,
        }
    }

    fn next_due(&self) -> Instant {
        self.started + PACKET_TIME * self.sent as u32
    }
}

/// Sends the ringback packets that are due on every side that plays one; returns when the
/// next one is due.
fn play_ringback(call: &mut CallMedia, now: Instant, tally: &mut Tally) -> Option<Instant> {
    let mut next = None;
    for (index, side) in call.sides.iter_mut().enumerate() {
        let destination = side.rtp_destination();
        let connected = side.connected;
        let Some(ringback) = side.ringback.as_mut() else {
            continue;
        };
        // After a stall, skip what is long overdue rather than burst it.
        let behind = now.saturating_duration_since(ringback.next_due());
        if behind > PACKET_TIME * 5 {
            ringback.sent += (behind.as_millis() / PACKET_TIME.as_millis()) as u64;
        }
        while ringback.next_due() <= now {
            let mut packet = [0u8; 12 + RINGBACK_SAMPLES];
            packet[0] = 0x80;
            packet[1] = ringback.payload_type;
            let on = ringback.sent % RINGBACK_CYCLE_PACKETS < RINGBACK_ON_PACKETS;
            if on {
                packet[12..].copy_from_slice(&ringback.tone);
            } else {
                packet[12..].fill(ringback.silence);
            }
            if ringback.sent == 0 {
                packet[1] |= 0x80;
            }
            let first = *ringback
                .first_timestamp
                .get_or_insert_with(|| side.towards.timestamp_at(now));
            let timestamp =
                first.wrapping_add((ringback.sent as u32).wrapping_mul(RINGBACK_SAMPLES as u32));
            side.towards.stamp_generated(&mut packet, timestamp, now);
            if let (Some(destination), Some(Some(sockets))) = (destination, call.sockets.get(index))
            {
                if send_protected(&mut side.srtp, &sockets[0], &packet, destination, connected)
                    == Outcome::Relayed
                {
                    tally.relayed += 1;
                }
            }
            ringback.sent += 1;
        }
        let due = ringback.next_due();
        next = Some(next.map_or(due, |n: Instant| n.min(due)));
    }
    next
}

/// Comfort noise (RFC 3389) passes through whatever was negotiated.
const COMFORT_NOISE: u8 = 13;

/// Packet counts of one call, readable while it runs.
#[derive(Debug, Default)]
pub struct RelayStats {
    pub a_to_b: AtomicU64,
    pub b_to_a: AtomicU64,
    pub dropped: AtomicU64,
    /// Digits sent to the call and not yet read: a party flooding RFC 4733 events fills at most
    /// [`MAX_PENDING_DIGITS`], the rest are dropped.
    pending_digits: PendingDigits,
}

/// Digits sent to a call and not yet read.
#[derive(Debug, Default)]
struct PendingDigits(AtomicUsize);

impl PendingDigits {
    /// Whether one more may be sent ([`MAX_PENDING_DIGITS`] at most unread); counts it if so.
    fn admit(&self) -> bool {
        if self.0.fetch_add(1, Ordering::Relaxed) >= MAX_PENDING_DIGITS {
            self.0.fetch_sub(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// One was read (or could not be sent).
    fn read(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Digits a call may have waiting (a person keys a few a second; the call task reads them in
/// microseconds).
pub const MAX_PENDING_DIGITS: usize = 64;

impl CallMedia {
    /// Tells the call a digit began, unless it has [`MAX_PENDING_DIGITS`] unread.
    fn report_digit(&self, from: Party, digit: char) {
        if !self.stats.pending_digits.admit() {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if self.events.send(MediaEvent::Digit(from, digit)).is_err() {
            self.stats.pending_digits.read();
        }
    }
}

/// What the relay tells its call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaEvent {
    /// No RTP or RTCP on either leg for the inactivity timeout.
    Inactive,
    /// An RFC 4733 event began from a party that detects digits, or from any party of a
    /// conference (reported once per event).
    Digit(Party, char),
}

/// A worker's control queue and the eventfd that interrupts its epoll wait.
#[derive(Clone)]
struct WorkerQueue {
    sender: control::Sender<Control>,
    waker: Arc<OwnedFd>,
}

impl WorkerQueue {
    fn send(&self, control: Control) {
        if self.sender.send(control).is_ok() {
            wake(&self.waker);
        }
    }
}

fn wake(eventfd: &OwnedFd) {
    // Only fails when the counter is saturated, and then the worker is awake anyway.
    let _ = rustix::io::write(eventfd, &1u64.to_ne_bytes());
}

/// The epoll data of the waker (socket data is slot * [`SOCKETS_PER_CALL`] + party * 2 + 0 for
/// RTP, 1 for RTCP).
const WAKER: u64 = u64::MAX;
const SOCKETS_PER_CALL: u64 = 2 * MAX_PARTIES as u64;

/// The call's handle on its relay. Dropping it stops the relay and frees the ports.
pub struct RelayHandle {
    id: u64,
    control: WorkerQueue,
    events: mpsc::UnboundedReceiver<MediaEvent>,
    stats: Arc<RelayStats>,
    addresses: [SocketAddr; 2],
    /// Parties the relay holds (legs A and B, then guests added).
    parties: AtomicUsize,
    /// Parties given back, to be used again before new ones.
    returned: std::sync::Mutex<Vec<Party>>,
}

impl RelayHandle {
    pub fn command(&self, command: MediaCommand) {
        self.control.send(Control::Command(self.id, command));
    }

    /// Waits for the next relay event (pending forever once the relay has stopped).
    pub async fn event(&mut self) -> MediaEvent {
        match self.events.recv().await {
            Some(event) => {
                if matches!(event, MediaEvent::Digit(..)) {
                    self.stats.pending_digits.read();
                }
                event
            }
            None => std::future::pending().await,
        }
    }

    pub fn stats(&self) -> &RelayStats {
        &self.stats
    }

    /// The local RTP address of `leg` (what SDP advertises).
    pub fn address(&self, leg: super::Leg) -> SocketAddr {
        self.addresses[leg.index()]
    }

    /// Adds a conference guest's port pair to the call's media; returns its party and RTP
    /// address, or None when the call holds [`MAX_PARTIES`] already or the sockets cannot be
    /// duplicated.
    pub fn add_party(&self, lease: LegSockets) -> Option<(Party, SocketAddr)> {
        let (Ok(rtp), Ok(rtcp)) = (lease.rtp.try_clone(), lease.rtcp.try_clone()) else {
            return None;
        };
        let returned = self
            .returned
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop();
        let party = match returned {
            Some(party) => party,
            None => {
                let index = self.parties.load(Ordering::Relaxed);
                let party = Party::guest(index.checked_sub(2)?)?;
                self.parties.store(index + 1, Ordering::Relaxed);
                party
            }
        };
        let address = lease.rtp_address();
        self.control.send(Control::AddParty(
            self.id,
            Box::new(NewParty {
                party,
                sockets: [rtp, rtcp],
                lease,
            }),
        ));
        Some((party, address))
    }
}

impl RelayHandle {
    /// Gives a party's ports back (a guest that failed or left, a leg whose party left): the
    /// party number may be used again by [`RelayHandle::add_party`].
    pub fn remove_party(&self, party: Party) {
        self.control.send(Control::RemoveParty(self.id, party));
        self.returned
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(party);
    }
}

/// A guest's sockets on their way to the worker.
struct NewParty {
    party: Party,
    sockets: [UdpSocket; 2],
    lease: LegSockets,
}

impl Drop for RelayHandle {
    fn drop(&mut self) {
        self.control.send(Control::Remove(self.id));
    }
}

/// A leg's RTP socket stays connected to its latched source while RTP keeps coming from it;
/// after this long without any, it is disconnected so that a new source port (a NAT rebinding)
/// can be latched.
const RELATCH_AFTER: Duration = Duration::from_secs(2);

/// Per-leg state: what the endpoint negotiated, where it really sends from, and the stream we
/// send it.
struct Side {
    media: Option<LegMedia>,
    rtp_source: Option<SocketAddr>,
    rtcp_source: Option<SocketAddr>,
    /// The address the leg's RTP socket is connected to, if any.
    connected: Option<SocketAddr>,
    /// When RTP last arrived on this leg.
    heard: Instant,
    /// Telephone-events from this endpoint are detected, not relayed.
    detect_digits: bool,
    /// RTP timestamp and code of the last telephone-event seen: its repeats are the same event.
    last_event: Option<(u32, u8)>,
    /// Ringback we play to this endpoint.
    ringback: Option<Ringback>,
    /// The party is in the call's audio (legs A and B from the start, guests once they join).
    in_call: bool,
    /// Not heard by the others.
    muted: bool,
    /// While mixing: the party's input, and the timestamp of our next mixed packet to it.
    jitter: Option<Box<JitterBuffer>>,
    mix_timestamp: u32,
    /// The next mixed packet is the first since relaying: marked (RFC 3550 §5.1).
    mix_fresh: bool,
    /// The previous endpoint's source after a [`MediaCommand::Replace`], refused until the
    /// instant given: its stream must not take over the leg from the new endpoint.
    refused: Option<(SocketAddr, Instant)>,
    towards: StreamRewriter,
    /// The leg's SRTP contexts, when it is encrypted.
    srtp: Option<Box<SrtpSession>>,
}

/// One leg's SRTP: a sender context for each key we protected our stream to it with and a
/// receiver context for each key its endpoint used, kept for the side's life and the newest
/// in use. A key that comes back (the agent's, after a transfer target's early media) goes on
/// with its indexes and replay window: a key, SSRC and index never encrypt twice
/// (RFC 3711 §9.1), and a re-INVITE repeating the keys continues the streams (RFC 4568 §7.1.4).
struct SrtpSession {
    /// The leg's last negotiation had keys (a plain one keeps the contexts, unused).
    active: bool,
    senders: Vec<(srtp::MasterKey, srtp::Sender)>,
    /// By the endpoint's key alone: its MKI is not authenticated, so a change of MKI length
    /// keeps the replay window.
    receivers: Vec<(srtp::MasterKey, srtp::Receiver)>,
    /// Our keys whose contexts were given up for room: never used again.
    retired: Vec<srtp::MasterKey>,
    /// The key in use is a retired one: nothing is sent.
    muted: bool,
}

/// Contexts kept per side and direction (each new key is a signalling exchange: a transfer
/// attempt, a re-INVITE), the least recently used given up first.
const MAX_KEYS: usize = 16;
/// Retired keys remembered per side, the oldest forgotten first (our keys are fresh from the
/// CSPRNG, so only a key the call model keeps, like an agent's, can come back).
const MAX_RETIRED: usize = 64;

impl SrtpSession {
    /// The contexts for the leg's new negotiation.
    fn update(current: Option<Box<SrtpSession>>, keys: Option<srtp::Keys>) -> Option<Box<Self>> {
        let Some(keys) = keys else {
            return current.map(|mut session| {
                session.active = false;
                session
            });
        };
        let mut session = current.unwrap_or_else(|| {
            Box::new(SrtpSession {
                active: true,
                senders: Vec::new(),
                receivers: Vec::new(),
                retired: Vec::new(),
                muted: false,
            })
        });
        session.active = true;
        session.muted = false;
        match session.senders.iter().position(|(k, _)| *k == keys.ours) {
            Some(at) => {
                let (key, mut sender) = session.senders.remove(at);
                sender.set_suite(keys.suite);
                session.senders.push((key, sender));
            }
            None if session.retired.contains(&keys.ours) => {
                tracing::warn!("an SRTP key whose indexes are forgotten; not sending with it");
                session.muted = true;
            }
            None => {
                if session.senders.len() == MAX_KEYS {
                    let (old, _) = session.senders.remove(0);
                    if session.retired.len() == MAX_RETIRED {
                        session.retired.remove(0);
                    }
                    session.retired.push(old);
                }
                let sender = srtp::Sender::new(keys.suite, &keys.ours);
                session.senders.push((keys.ours, sender));
            }
        }
        match session
            .receivers
            .iter()
            .position(|(k, _)| *k == keys.theirs)
        {
            Some(at) => {
                let entry = session.receivers.remove(at);
                session.receivers.push(entry);
            }
            None => {
                if session.receivers.len() == MAX_KEYS {
                    session.receivers.remove(0);
                }
                let receiver = srtp::Receiver::new(keys.suite, &keys.theirs, keys.their_mki);
                session.receivers.push((keys.theirs, receiver));
            }
        }
        if let Some((_, receiver)) = session.receivers.last_mut() {
            receiver.set_suite(keys.suite);
            receiver.set_mki(keys.their_mki);
        }
        Some(session)
    }

    /// Authenticates and decrypts a packet from the endpoint in place: its plaintext length.
    fn unprotect(&mut self, packet: &mut [u8]) -> Result<usize, srtp::SrtpError> {
        let Some((_, receiver)) = self.receivers.last_mut() else {
            return Err(srtp::SrtpError::Authentication);
        };
        if is_rtcp(packet) {
            receiver.unprotect_rtcp(packet)
        } else {
            receiver.unprotect_rtp(packet)
        }
    }

    /// The context our stream to the endpoint is protected with now.
    fn sender(&mut self) -> Option<&mut srtp::Sender> {
        if self.muted {
            return None;
        }
        self.senders.last_mut().map(|(_, sender)| sender)
    }
}

/// RTCP by its packet type (RFC 5761 §4), read from the header SRTP leaves in the clear.
fn is_rtcp(packet: &[u8]) -> bool {
    packet.get(1).is_some_and(|t| (192..=223).contains(t))
}

impl Side {
    fn new(ids: &mut IdGenerator) -> Side {
        Side {
            media: None,
            rtp_source: None,
            rtcp_source: None,
            connected: None,
            heard: Instant::now(),
            detect_digits: false,
            last_event: None,
            ringback: None,
            in_call: true,
            muted: false,
            jitter: None,
            mix_timestamp: 0,
            mix_fresh: false,
            refused: None,
            towards: StreamRewriter::new(ids.ssrc(), ids.u16(), ids.next_u64() as u32, 8000),
            srtp: None,
        }
    }

    /// Connects or disconnects the leg's RTP socket so that it is connected exactly while a
    /// source is latched and heard from. Why connect at all: the kernel then sends with the
    /// route it cached at connect time instead of looking one up per datagram (about 10 % of
    /// the relay's CPU per packet, measured), and it turns away datagrams from any other
    /// source before they reach us.
    fn follow_latch(&mut self, socket: &UdpSocket, now: Instant) {
        let wanted = self
            .rtp_source
            .filter(|_| now.duration_since(self.heard) < RELATCH_AFTER);
        if wanted == self.connected {
            return;
        }
        let done = match wanted {
            Some(source) => socket.connect(source).is_ok(),
            None => rustix::net::connect_unspec(socket).is_ok(),
        };
        if done {
            self.connected = wanted;
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
        self.srtp = SrtpSession::update(self.srtp.take(), media.srtp);
        self.media = Some(media);
    }

    /// A new endpoint on this leg: forget the old one's sources.
    fn replace(&mut self, media: LegMedia, now: Instant) {
        self.refused = self.rtp_source.map(|source| (source, now + RELATCH_AFTER));
        self.rtp_source = None;
        self.rtcp_source = None;
        self.last_event = None;
        self.srtp = SrtpSession::update(self.srtp.take(), media.srtp);
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

/// Counts flushed to the shared metrics in batches, so the packet path touches no shared
/// cache line per packet.
#[derive(Default)]
struct Tally {
    relayed: u64,
    rtcp: u64,
    dropped: u64,
    mixer_ticks: u64,
    mixer_late_ticks: u64,
    mixer_lateness_micros: u64,
    jitter_dropped: u64,
    jitter_concealed: u64,
    srtp_rejected: u64,
}

impl Tally {
    fn flush(&mut self, metrics: &Metrics) {
        for (counter, value) in [
            (Counter::MixerTicks, &mut self.mixer_ticks),
            (Counter::MixerLateTicks, &mut self.mixer_late_ticks),
            (
                Counter::MixerLatenessMicroseconds,
                &mut self.mixer_lateness_micros,
            ),
            (Counter::JitterDropped, &mut self.jitter_dropped),
            (Counter::JitterConcealed, &mut self.jitter_concealed),
            (Counter::SrtpRejected, &mut self.srtp_rejected),
        ] {
            if *value > 0 {
                metrics.add(counter, std::mem::take(value));
            }
        }
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

enum Control {
    /// Answered when the worker reads it: proof that its loop runs (`/healthz`).
    Ping(tokio::sync::oneshot::Sender<()>),
    Add(Box<CallMedia>),
    AddParty(u64, Box<NewParty>),
    RemoveParty(u64, Party),
    Command(u64, MediaCommand),
    Remove(u64),
}

/// One call's media on a worker: per party its RTP and RTCP sockets, then the port leases,
/// which are released after the sockets close (fields drop in order).
struct CallMedia {
    id: u64,
    /// None where a party was given back ([`RelayHandle::remove_party`]).
    sockets: Vec<Option<[UdpSocket; 2]>>,
    _leases: Vec<Option<LegSockets>>,
    sides: Vec<Side>,
    /// For guests' streams (random SSRC, first sequence number and timestamp).
    ids: IdGenerator,
    /// The two parties relayed to each other (exactly two in the call's audio).
    pair: Option<(usize, usize)>,
    /// Mixing (three or more in): when the next tick is due.
    next_tick: Option<Instant>,
    stats: Arc<RelayStats>,
    events: mpsc::UnboundedSender<MediaEvent>,
    answered: bool,
    last_activity: Instant,
    inactivity: Duration,
}

impl CallMedia {
    fn side_mut(&mut self, party: Party) -> Option<&mut Side> {
        self.sides.get_mut(party.index())
    }

    /// Relays between the two parties in, or mixes when three or more are: returns true when
    /// mixing has just started.
    fn update_mode(&mut self, now: Instant) -> bool {
        let mut members = self
            .sides
            .iter()
            .enumerate()
            .filter(|(_, s)| s.in_call)
            .map(|(i, _)| i);
        let (first, second, third) = (members.next(), members.next(), members.next());
        if third.is_some() {
            for side in self.sides.iter_mut().filter(|s| s.in_call) {
                if side.jitter.is_none() {
                    side.jitter = Some(Box::new(JitterBuffer::new()));
                    side.mix_timestamp = side.towards.timestamp_at(now);
                    side.mix_fresh = true;
                    side.ringback = None;
                }
            }
            self.pair = None;
            let started = self.next_tick.is_none();
            if started {
                self.next_tick = Some(now + PACKET_TIME);
            }
            return started;
        }
        if self.next_tick.take().is_some() {
            for side in &mut self.sides {
                side.jitter = None;
                // Muting is a conference's: relayed again, everyone is heard.
                side.muted = false;
                // Relayed packets continue our stream from the last mixed one.
                side.towards.mark_source_change();
            }
        }
        self.pair = first.zip(second);
        false
    }
}

/// Asks each relay worker whether its loop runs.
#[derive(Clone)]
pub struct MediaProbe {
    workers: Vec<WorkerQueue>,
}

impl MediaProbe {
    /// The workers (by index) that did not answer within `within`: stuck, or stopped.
    pub async fn silent(&self, within: Duration) -> Vec<usize> {
        let answers: Vec<_> = self
            .workers
            .iter()
            .map(|worker| {
                let (reply, answer) = tokio::sync::oneshot::channel();
                worker.send(Control::Ping(reply));
                answer
            })
            .collect();
        // One deadline for all: k stuck workers cost `within`, not k times it.
        let deadline = tokio::time::Instant::now() + within;
        let mut silent = Vec::new();
        for (index, answer) in answers.into_iter().enumerate() {
            if !matches!(tokio::time::timeout_at(deadline, answer).await, Ok(Ok(()))) {
                silent.push(index);
            }
        }
        silent
    }
}

/// The relay workers.
pub struct MediaEngine {
    workers: Vec<WorkerQueue>,
    next_worker: AtomicUsize,
    next_id: AtomicU64,
    stop: Arc<AtomicBool>,
}

const TICK: Duration = Duration::from_millis(1);

impl MediaEngine {
    /// Starts `threads` relay workers.
    ///
    /// # Errors
    /// The OS error if a worker thread cannot be started.
    pub fn start(threads: usize, metrics: Arc<Metrics>) -> std::io::Result<MediaEngine> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut workers = Vec::new();
        for index in 0..threads.max(1) {
            let (sender, receiver) = control::channel();
            let poll = epoll::create(epoll::CreateFlags::CLOEXEC)?;
            let waker = Arc::new(eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?);
            epoll::add(
                &poll,
                &*waker,
                epoll::EventData::new_u64(WAKER),
                epoll::EventFlags::IN,
            )?;
            let (stop, metrics, eventfd) =
                (Arc::clone(&stop), Arc::clone(&metrics), Arc::clone(&waker));
            std::thread::Builder::new()
                .name(format!("media-{index}"))
                .spawn(move || {
                    if let Err(error) = worker(&poll, &eventfd, &receiver, &stop, &metrics) {
                        tracing::error!(%error, "media worker stopped");
                    }
                })?;
            workers.push(WorkerQueue { sender, waker });
        }
        Ok(MediaEngine {
            workers,
            next_worker: AtomicUsize::new(0),
            next_id: AtomicU64::new(1),
            stop,
        })
    }

    /// What `/healthz` asks the workers through.
    pub fn probe(&self) -> MediaProbe {
        MediaProbe {
            workers: self.workers.clone(),
        }
    }

    /// Hands a call's two legs to a worker and returns the call's handle.
    ///
    /// # Errors
    /// The OS error when the sockets cannot be duplicated for the worker (no descriptor
    /// left): the call must be refused, not carried without media; the legs go back.
    pub fn spawn(
        &self,
        legs: [LegSockets; 2],
        mut ids: IdGenerator,
        inactivity: Duration,
    ) -> std::io::Result<RelayHandle> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let worker = self.next_worker.fetch_add(1, Ordering::Relaxed) % self.workers.len();
        let control = self.workers[worker].clone();
        let (event_sender, events) = mpsc::unbounded_channel();
        let stats = Arc::new(RelayStats::default());
        let addresses = [legs[0].rtp_address(), legs[1].rtp_address()];
        let handle = RelayHandle {
            id,
            control: control.clone(),
            events,
            stats: Arc::clone(&stats),
            addresses,
            parties: AtomicUsize::new(2),
            returned: std::sync::Mutex::new(Vec::new()),
        };
        let clone = |s: &UdpSocket| s.try_clone();
        let sockets = [
            clone(&legs[0].rtp),
            clone(&legs[1].rtp),
            clone(&legs[0].rtcp),
            clone(&legs[1].rtcp),
        ];
        let [a_rtp, b_rtp, a_rtcp, b_rtcp] = sockets;
        let (a_rtp, b_rtp, a_rtcp, b_rtcp) = (a_rtp?, b_rtp?, a_rtcp?, b_rtcp?);
        // Two parties; guests' sides are added with their sockets (most calls never have one).
        let sides = vec![Side::new(&mut ids), Side::new(&mut ids)];
        let call = CallMedia {
            id,
            sockets: vec![Some([a_rtp, a_rtcp]), Some([b_rtp, b_rtcp])],
            _leases: legs.into_iter().map(Some).collect(),
            sides,
            ids,
            pair: Some((0, 1)),
            next_tick: None,
            stats,
            events: event_sender,
            answered: false,
            last_activity: Instant::now(),
            inactivity,
        };
        control.send(Control::Add(Box::new(call)));
        Ok(handle)
    }
}

impl Drop for MediaEngine {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for worker in &self.workers {
            wake(&worker.waker);
        }
    }
}

/// Above this many packets per millisecond (measured over [`RATE_WINDOW`]) a worker batches:
/// below it, waking per packet costs less than the fixed cost of ticking 1,000 times a second
/// (measured: 50 calls cost 7 % of a core event-driven, 15 % ticking).
const BATCH_PACKETS_PER_MS: u64 = 5;
const RATE_WINDOW: Duration = Duration::from_millis(20);

/// One worker: its calls in slots; epoll data = slot * [`SOCKETS_PER_CALL`] + party * 2 + 0 for
/// RTP, 1 for RTCP.
fn worker(
    poll: &OwnedFd,
    waker: &OwnedFd,
    queue: &control::Receiver<Control>,
    stop: &AtomicBool,
    metrics: &Metrics,
) -> std::io::Result<()> {
    let mut events: Vec<epoll::Event> = Vec::with_capacity(4096);
    let mut slots: Vec<Option<CallMedia>> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    let mut by_id: HashMap<u64, usize> = HashMap::new();
    let mut buffer = [0u8; 2048];
    let mut tally = Tally::default();
    let mut last_housekeeping = Instant::now();
    let mut batch_mode = false;
    // Calls playing ringback, and when the next packet of any is due.
    let mut ringing: Vec<u64> = Vec::new();
    let mut next_ringback: Option<Instant> = None;
    // Calls mixing a conference, and when the next tick of any is due.
    let mut mixing: Vec<u64> = Vec::new();
    let mut next_mix: Option<Instant> = None;
    let (mut window_start, mut window_packets) = (Instant::now(), 0u64);
    while !stop.load(Ordering::Relaxed) {
        let tick_start = Instant::now();
        // Batch mode: collect what arrived during the sleep. Otherwise wait for the first
        // packet, a control message (the waker) or the next housekeeping.
        let wait = if batch_mode {
            Duration::ZERO
        } else {
            let housekeeping = Duration::from_secs(1).saturating_sub(last_housekeeping.elapsed());
            [next_ringback, next_mix]
                .into_iter()
                .flatten()
                .map(|at| at.saturating_duration_since(Instant::now()))
                .fold(housekeeping, Duration::min)
        };
        let timeout = Timespec {
            tv_sec: wait.as_secs() as _,
            tv_nsec: wait.subsec_nanos().into(),
        };
        events.clear();
        match epoll::wait(
            poll,
            rustix::buffer::spare_capacity(&mut events),
            Some(&timeout),
        ) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(error) => return Err(error.into()),
        }
        // Controls after the wait and before the packets: a command enqueued before a packet
        // was sent (a hold's Configure, then the 200 OK, then RTP) takes effect first.
        loop {
            let control = match queue.try_recv() {
                Ok(c) => c,
                Err(control::TryRecvError::Empty) => break,
                Err(control::TryRecvError::Disconnected) => return Ok(()),
            };
            match control {
                Control::Ping(reply) => {
                    if crate::faults::injected(crate::faults::Fault::RelayPanic) {
                        panic!("injected fault: a relay worker panics");
                    }
                    let _ = reply.send(());
                }
                Control::Add(mut call) => {
                    let slot = free.pop().unwrap_or_else(|| {
                        slots.push(None);
                        slots.len() - 1
                    });
                    let mut registered = true;
                    for (party, pair) in call.sockets.iter().enumerate() {
                        if let Some(pair) = pair {
                            registered &= register(poll, slot, party, pair);
                        }
                    }
                    if !registered {
                        tracing::error!("cannot register media sockets; call has no media");
                    }
                    call.last_activity = Instant::now();
                    by_id.insert(call.id, slot);
                    slots[slot] = Some(*call);
                }
                Control::AddParty(id, new) => {
                    let Some(&slot) = by_id.get(&id) else {
                        continue;
                    };
                    let Some(call) = slots[slot].as_mut() else {
                        continue;
                    };
                    // A new party is the next socket pair, or one given back earlier.
                    let index = new.party.index();
                    let reused = call.sockets.get(index).is_some_and(Option::is_none);
                    if !reused && index != call.sockets.len() {
                        continue;
                    }
                    if !register(poll, slot, index, &new.sockets) {
                        tracing::error!("cannot register a guest's media sockets");
                    }
                    let NewParty { sockets, lease, .. } = *new;
                    // Out of the call's audio until it joins.
                    let mut side = Side::new(&mut call.ids);
                    side.in_call = false;
                    if reused {
                        call.sockets[index] = Some(sockets);
                        call._leases[index] = Some(lease);
                        call.sides[index] = side;
                    } else {
                        call.sockets.push(Some(sockets));
                        call._leases.push(Some(lease));
                        call.sides.push(side);
                    }
                }
                Control::RemoveParty(id, party) => {
                    let Some(call) = by_id.get(&id).and_then(|s| slots[*s].as_mut()) else {
                        continue;
                    };
                    let index = party.index();
                    if let Some(pair) = call.sockets.get_mut(index).and_then(Option::take) {
                        for socket in &pair {
                            let _ = epoll::delete(poll, socket.as_fd());
                        }
                    }
                    // The ports go back to the pool once both descriptors are closed.
                    if let Some(lease) = call._leases.get_mut(index) {
                        *lease = None;
                    }
                    if let Some(side) = call.sides.get_mut(index) {
                        side.in_call = false;
                        side.media = None;
                        side.jitter = None;
                        side.ringback = None;
                    }
                    call.update_mode(Instant::now());
                }
                Control::Command(id, command) => {
                    let Some(call) = by_id.get(&id).and_then(|s| slots[*s].as_mut()) else {
                        continue;
                    };
                    let now = Instant::now();
                    if let Some(party) = command_party(&command) {
                        if !call.sockets.get(party.index()).is_some_and(Option::is_some) {
                            continue;
                        }
                    }
                    match command {
                        MediaCommand::Configure(party, media)
                        | MediaCommand::Replace(party, media) => {
                            let replace = matches!(command, MediaCommand::Replace(..));
                            let index = party.index();
                            let (Some(Some(sockets)), Some(side)) =
                                (call.sockets.get(index), call.sides.get_mut(index))
                            else {
                                continue;
                            };
                            if replace {
                                side.replace(media, now);
                            } else {
                                side.configure(media);
                            }
                            side.follow_latch(&sockets[0], now);
                        }
                        MediaCommand::Answered => {
                            call.answered = true;
                            call.last_activity = now;
                        }
                        MediaCommand::DetectDigits(party, on) => {
                            if let Some(side) = call.side_mut(party) {
                                side.detect_digits = on;
                            }
                        }
                        MediaCommand::SendDigit(party, digit) => {
                            send_digit(call, party, digit, now, &mut tally);
                        }
                        MediaCommand::Ringback(party, on) => {
                            if let Some(side) = call.side_mut(party) {
                                side.ringback = match (on, side.media) {
                                    (true, Some(media)) => Some(Ringback::new(&media, now)),
                                    _ => None,
                                };
                            }
                            if on && !ringing.contains(&id) {
                                ringing.push(id);
                            }
                        }
                        MediaCommand::Join(party) | MediaCommand::Leave(party) => {
                            let join = matches!(command, MediaCommand::Join(_));
                            if let Some(side) = call.side_mut(party) {
                                side.in_call = join;
                                if !join {
                                    side.ringback = None;
                                }
                            }
                            if call.update_mode(now) && !mixing.contains(&id) {
                                mixing.push(id);
                                next_mix = Some(next_mix.map_or(now, |n: Instant| n.min(now)));
                            }
                        }
                        MediaCommand::Mute(party, on) => {
                            if let Some(side) = call.side_mut(party) {
                                side.muted = on;
                            }
                        }
                    }
                }
                Control::Remove(id) => {
                    if let Some(slot) = by_id.remove(&id) {
                        if let Some(call) = slots[slot].take() {
                            // Explicitly: the leases hold other descriptors of the same
                            // sockets, which would keep them in the set after ours close.
                            for socket in call.sockets.iter().flatten().flatten() {
                                let _ = epoll::delete(poll, socket.as_fd());
                            }
                        }
                        free.push(slot);
                    }
                }
            }
        }
        let now = Instant::now();
        let before = tally.relayed + tally.dropped + tally.rtcp;
        for event in &events {
            let data = event.data.u64();
            if data == WAKER {
                // Level-triggered: reset the counter or it is reported on every wait.
                let _ = rustix::io::read(waker, &mut [0u8; 8]);
                continue;
            }
            let (slot, index) = (
                (data / SOCKETS_PER_CALL) as usize,
                (data % SOCKETS_PER_CALL) as usize,
            );
            let Some(Some(call)) = slots.get_mut(slot) else {
                continue;
            };
            receive(call, index, &mut buffer, now, &mut tally);
        }
        // Generated ringback, for the few calls that play one.
        next_ringback = None;
        ringing.retain(|id| {
            let Some(call) = by_id.get(id).and_then(|slot| slots[*slot].as_mut()) else {
                return false;
            };
            match play_ringback(call, now, &mut tally) {
                Some(at) => {
                    next_ringback = Some(next_ringback.map_or(at, |n: Instant| n.min(at)));
                    true
                }
                None => false,
            }
        });
        // Conference mixing, for the calls that mix.
        next_mix = None;
        mixing.retain(|id| {
            let Some(call) = by_id.get(id).and_then(|slot| slots[*slot].as_mut()) else {
                return false;
            };
            match mix_due(call, now, &mut tally) {
                Some(at) => {
                    next_mix = Some(next_mix.map_or(at, |n: Instant| n.min(at)));
                    true
                }
                None => false,
            }
        });
        window_packets += tally.relayed + tally.dropped + tally.rtcp - before;
        let window = now.duration_since(window_start);
        if window >= RATE_WINDOW {
            batch_mode = window_packets >= BATCH_PACKETS_PER_MS * window.as_millis() as u64;
            (window_start, window_packets) = (now, 0);
        }
        if now.duration_since(last_housekeeping) >= Duration::from_secs(1) {
            last_housekeeping = now;
            tally.flush(metrics);
            for call in slots.iter_mut().flatten() {
                for (side, sockets) in call.sides.iter_mut().zip(&call.sockets) {
                    if let Some(sockets) = sockets {
                        side.follow_latch(&sockets[0], now);
                    }
                }
                if call.answered && now.duration_since(call.last_activity) >= call.inactivity {
                    call.answered = false;
                    let _ = call.events.send(MediaEvent::Inactive);
                }
            }
        }
        // Under load, sleep out the rest of the tick so the next wake-up collects many packets.
        if batch_mode {
            if let Some(rest) = TICK.checked_sub(tick_start.elapsed()) {
                std::thread::sleep(rest);
            }
        }
    }
    tally.flush(metrics);
    Ok(())
}

/// Registers a party's RTP and RTCP sockets with the worker's epoll set.
fn register(poll: &OwnedFd, slot: usize, party: usize, sockets: &[UdpSocket; 2]) -> bool {
    let mut registered = true;
    for (kind, socket) in sockets.iter().enumerate() {
        let data = slot as u64 * SOCKETS_PER_CALL + (party * 2 + kind) as u64;
        registered &= socket.set_nonblocking(true).is_ok()
            && epoll::add(
                poll,
                socket,
                epoll::EventData::new_u64(data),
                epoll::EventFlags::IN,
            )
            .is_ok();
    }
    registered
}

/// The party a command addresses, if any.
fn command_party(command: &MediaCommand) -> Option<Party> {
    match command {
        MediaCommand::Configure(party, _)
        | MediaCommand::Replace(party, _)
        | MediaCommand::DetectDigits(party, _)
        | MediaCommand::SendDigit(party, _)
        | MediaCommand::Ringback(party, _)
        | MediaCommand::Join(party)
        | MediaCommand::Leave(party)
        | MediaCommand::Mute(party, _) => Some(*party),
        MediaCommand::Answered => None,
    }
}

/// Two distinct sides, mutably.
fn pair_mut(sides: &mut [Side], first: usize, second: usize) -> Option<(&mut Side, &mut Side)> {
    if first == second || first.max(second) >= sides.len() {
        return None;
    }
    if first < second {
        let (low, high) = sides.split_at_mut(second);
        Some((&mut low[first], &mut high[0]))
    } else {
        let (low, high) = sides.split_at_mut(first);
        Some((&mut high[0], &mut low[second]))
    }
}

/// Reads one datagram from a socket epoll reported readable and relays it (or, in a
/// conference, hands it to the mixer). A socket holding more is reported again by the next
/// wait.
fn receive(
    call: &mut CallMedia,
    index: usize,
    buffer: &mut [u8; 2048],
    now: Instant,
    tally: &mut Tally,
) {
    let (party, is_rtp) = (index / 2, index % 2 == 0);
    let Some(Some(sockets)) = call.sockets.get(party) else {
        return;
    };
    let (mut length, source) = match sockets[index % 2].recv_from(buffer) {
        Ok(received) => received,
        // WouldBlock (spurious report), or an ICMP error from a gone peer, which the read
        // has now cleared.
        Err(_) => return,
    };
    let Some(from) = Party::from_index(party) else {
        return;
    };
    if let Some(srtp) = call
        .sides
        .get_mut(party)
        .and_then(|s| s.srtp.as_mut())
        .filter(|s| s.active)
    {
        match srtp.unprotect(&mut buffer[..length]) {
            Ok(plain) => length = plain,
            // Forged, replayed or not SRTP at all (baresip's plain RTCP "PING" before its
            // SRTCP starts): not media, so it neither counts as activity nor latches.
            Err(error) => {
                if error != srtp::SrtpError::TooShort {
                    tally.srtp_rejected += 1;
                }
                // The call's packet counts are RTP's (RTCP drops never counted there).
                if is_rtp && !is_rtcp(&buffer[..length]) {
                    count(&call.stats, tally, from, Outcome::Dropped);
                }
                return;
            }
        }
    }
    call.last_activity = now;
    if call.next_tick.is_some() {
        if is_rtp {
            let outcome = conference_rtp(call, party, &mut buffer[..length], source, now, tally);
            if let Outcome::Digit(digit) = outcome {
                call.report_digit(from, digit);
            }
            count(&call.stats, tally, from, outcome);
            follow(call, party, source, now);
        }
        // A mixer terminates RTCP (RFC 3550 §7.3): the parties' reports are not passed on.
        return;
    }
    let to = match call.pair {
        Some((a, b)) if a == party => b,
        Some((a, b)) if b == party => a,
        // Not one of the two relayed parties (a guest that has not joined, or has left).
        _ => {
            tally.dropped += 1;
            return;
        }
    };
    let Some((incoming, outgoing)) = pair_mut(&mut call.sides, party, to) else {
        return;
    };
    let Some(Some(out)) = call.sockets.get(to) else {
        return;
    };
    let out = &out[index % 2];
    if is_rtp {
        let outcome = relay_rtp(incoming, outgoing, &mut buffer[..length], source, out, now);
        if let Outcome::Digit(digit) = outcome {
            call.report_digit(from, digit);
        }
        count(&call.stats, tally, from, outcome);
        follow(call, party, source, now);
    } else if relay_rtcp(incoming, outgoing, &mut buffer[..length], source, out) {
        tally.rtcp += 1;
    }
}

/// After an RTP packet from `source` on `party`: note it was heard, keep the socket's
/// connection with the latch.
fn follow(call: &mut CallMedia, party: usize, source: SocketAddr, now: Instant) {
    let (Some(side), Some(Some(sockets))) = (call.sides.get_mut(party), call.sockets.get(party))
    else {
        return;
    };
    if side.rtp_source == Some(source) {
        side.heard = now;
    }
    side.follow_latch(&sockets[0], now);
}

/// An RTP packet from a conference party: into its jitter buffer, or, for a telephone-event,
/// reported as a digit (in a conference every party's digits go through the call model:
/// hotkeys from the agent, the rest played to the other parties).
fn conference_rtp(
    call: &mut CallMedia,
    party: usize,
    packet: &mut [u8],
    source: SocketAddr,
    now: Instant,
    tally: &mut Tally,
) -> Outcome {
    let Some(side) = call.sides.get_mut(party) else {
        return Outcome::Dropped;
    };
    let Some(media) = side.media else {
        return Outcome::Dropped;
    };
    if side
        .refused
        .is_some_and(|(refused, until)| refused == source && now < until)
        || !Side::latch(&mut side.rtp_source, &media, source)
    {
        return Outcome::Dropped;
    }
    match classify(packet) {
        PacketKind::Rtp => {}
        PacketKind::Rtcp => return Outcome::Consumed,
        PacketKind::Unknown => return Outcome::Dropped,
    }
    if !side.in_call {
        // A party that left (or has not joined) is neither heard nor lets digits through.
        return Outcome::Consumed;
    }
    let payload_type = packet[1] & 0x7f;
    if Some(payload_type) == media.telephone_event {
        return detect_digit(side, packet);
    }
    if payload_type != media.payload_type {
        return if payload_type == COMFORT_NOISE {
            Outcome::Consumed
        } else {
            Outcome::Dropped
        };
    }
    let (Some(jitter), Some(range)) = (side.jitter.as_mut(), payload_range(packet)) else {
        return Outcome::Consumed;
    };
    let mut samples = [0i16; 1024];
    let payload = &packet[range];
    let count = payload.len().min(samples.len());
    mixer::decode(media.codec, &payload[..count], &mut samples[..count]);
    let sequence = u16::from_be_bytes([packet[2], packet[3]]);
    let timestamp = u32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]);
    match jitter.push(now, sequence, timestamp, &samples[..count]) {
        Arrival::Stored | Arrival::Resynced => Outcome::Relayed,
        Arrival::Late | Arrival::Duplicate => {
            tally.jitter_dropped += 1;
            Outcome::Consumed
        }
    }
}

/// Runs the mixer ticks that are due; returns when the next one is, or None once the call no
/// longer mixes.
fn mix_due(call: &mut CallMedia, now: Instant, tally: &mut Tally) -> Option<Instant> {
    let mut due = call.next_tick?;
    // After a stall, skip what is long overdue rather than burst it.
    let behind = now.saturating_duration_since(due);
    if behind > PACKET_TIME * 5 {
        let missed = (behind.as_micros() / PACKET_TIME.as_micros()) as u32;
        due += PACKET_TIME * missed;
        tally.mixer_late_ticks += u64::from(missed);
    }
    while due <= now {
        let lateness = now.duration_since(due);
        tally.mixer_ticks += 1;
        tally.mixer_lateness_micros += lateness.as_micros() as u64;
        if lateness > Duration::from_millis(5) {
            tally.mixer_late_ticks += 1;
        }
        mix_once(call, now, tally);
        due += PACKET_TIME;
    }
    call.next_tick = Some(due);
    Some(due)
}

/// One 20 ms tick of a conference: a frame from every party's jitter buffer, N-1 mixing, and
/// each party's frame sent in its codec in its continuous stream.
fn mix_once(call: &mut CallMedia, now: Instant, tally: &mut Tally) {
    let mut frames = [[0i16; FRAME]; MAX_PARTIES];
    let mut contributing = [false; MAX_PARTIES];
    let mut members = [0usize; MAX_PARTIES];
    let mut count = 0;
    for (index, side) in call.sides.iter_mut().enumerate() {
        if !side.in_call || !call.sockets.get(index).is_some_and(Option::is_some) {
            continue;
        }
        let playout = match side.jitter.as_mut() {
            Some(jitter) => {
                let skipped = jitter.stats().skipped;
                let playout = jitter.pop(&mut frames[count]);
                tally.jitter_dropped += jitter.stats().skipped - skipped;
                playout
            }
            None => Playout::Silence,
        };
        if playout == Playout::Concealed {
            tally.jitter_concealed += 1;
        }
        // On hold (sendonly or inactive, RFC 3264 §8.4) or muted: not heard.
        contributing[count] =
            playout != Playout::Silence && !side.muted && side.media.is_some_and(|m| m.receives);
        members[count] = index;
        count += 1;
    }
    let mut outputs = [[0i16; FRAME]; MAX_PARTIES];
    mixer::mix_minus(
        &frames[..count],
        &contributing[..count],
        &mut outputs[..count],
    );
    for (output, index) in outputs.iter().zip(members).take(count) {
        let side = &mut call.sides[index];
        let timestamp = side.mix_timestamp;
        // The stream's clock runs on while the party is on hold.
        side.mix_timestamp = timestamp.wrapping_add(FRAME as u32);
        let (Some(media), Some(destination)) = (side.media, side.rtp_destination()) else {
            continue;
        };
        let mut packet = [0u8; 12 + FRAME];
        packet[0] = 0x80;
        packet[1] = media.payload_type;
        if std::mem::take(&mut side.mix_fresh) {
            packet[1] |= 0x80;
        }
        mixer::encode(media.codec, output, &mut packet[12..]);
        side.towards.stamp_generated(&mut packet, timestamp, now);
        let Some(Some(sockets)) = call.sockets.get(index) else {
            continue;
        };
        match send_protected(
            &mut side.srtp,
            &sockets[0],
            &packet,
            destination,
            side.connected,
        ) {
            Outcome::Relayed => tally.relayed += 1,
            _ => tally.dropped += 1,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Relayed,
    Dropped,
    /// A telephone-event taken out of the stream; the first packet of an event names its digit.
    Digit(char),
    Consumed,
}

fn count(stats: &RelayStats, tally: &mut Tally, from: Party, outcome: Outcome) {
    match outcome {
        Outcome::Relayed => {
            tally.relayed += 1;
            let counter = if from == Party::A {
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
        Outcome::Digit(_) | Outcome::Consumed => {}
    }
}

/// Forwards one RTP packet received from `incoming` out of `outgoing`'s socket `out`.
fn relay_rtp(
    incoming: &mut Side,
    outgoing: &mut Side,
    packet: &mut [u8],
    source: SocketAddr,
    out: &UdpSocket,
    now: Instant,
) -> Outcome {
    let Some(in_media) = incoming.media else {
        return Outcome::Dropped;
    };
    if incoming
        .refused
        .is_some_and(|(refused, until)| refused == source && now < until)
    {
        return Outcome::Dropped;
    }
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
                    send_protected(
                        &mut outgoing.srtp,
                        out,
                        packet,
                        destination,
                        outgoing.connected,
                    )
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
    if incoming.detect_digits && Some(payload_type) == in_media.telephone_event {
        return detect_digit(incoming, packet);
    }
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
    // Real media for this endpoint takes over from any ringback we were playing it.
    outgoing.ringback = None;
    send_protected(
        &mut outgoing.srtp,
        out,
        packet,
        destination,
        outgoing.connected,
    )
}

/// An RFC 4733 event packet from a leg that detects digits: the first packet of each event
/// (a new RTP timestamp, §2.5.1.2) reports its digit; repeats and end packets are consumed.
fn detect_digit(side: &mut Side, packet: &[u8]) -> Outcome {
    let Some(code) = payload_range(packet).and_then(|r| packet.get(r.start).copied()) else {
        return Outcome::Dropped;
    };
    let timestamp = u32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]);
    // A new event has a new timestamp; a new code under the same one is taken as new too
    // (senders that replay recorded events reuse their timestamps).
    if side.last_event == Some((timestamp, code)) {
        return Outcome::Consumed;
    }
    side.last_event = Some((timestamp, code));
    match digit_of_event(code) {
        Some(digit) => Outcome::Digit(digit),
        None => Outcome::Consumed,
    }
}

/// The DTMF digit of an RFC 4733 event code (§3.2), if it is one.
fn digit_of_event(code: u8) -> Option<char> {
    match code {
        0..=9 => Some(char::from(b'0' + code)),
        10 => Some('*'),
        11 => Some('#'),
        12..=15 => Some(char::from(b'A' + code - 12)),
        _ => None,
    }
}

/// RFC 4733 event code of a DTMF digit (§3.2).
fn event_code(digit: char) -> Option<u8> {
    match digit {
        '0'..='9' => Some(digit as u8 - b'0'),
        '*' => Some(10),
        '#' => Some(11),
        'A'..='D' => Some(digit as u8 - b'A' + 12),
        _ => None,
    }
}

/// Plays `digit` to `leg`'s endpoint as one RFC 4733 event of 100 ms in our stream to it: a
/// start packet (marker set, §2.5.1.3) and the end packet three times (§2.5.1.4), all with the
/// event's timestamp, numbered into the stream so the endpoint sees no gap or repeat.
fn send_digit(call: &mut CallMedia, party: Party, digit: char, now: Instant, tally: &mut Tally) {
    let (Some(side), Some(Some(sockets))) = (
        call.sides.get_mut(party.index()),
        call.sockets.get(party.index()),
    ) else {
        return;
    };
    let (Some(code), Some(media), Some(destination)) =
        (event_code(digit), side.media, side.rtp_destination())
    else {
        return;
    };
    let Some(payload_type) = media.telephone_event else {
        return;
    };
    let timestamp = side.towards.timestamp_at(now);
    let socket = &sockets[0];
    const VOLUME: u8 = 10;
    for (marker, end, duration) in [
        (true, false, 160u16),
        (false, true, 800),
        (false, true, 800),
        (false, true, 800),
    ] {
        let mut packet = [0u8; 16];
        packet[0] = 0x80;
        packet[1] = payload_type | if marker { 0x80 } else { 0 };
        packet[12] = code;
        packet[13] = VOLUME | if end { 0x80 } else { 0 };
        packet[14..16].copy_from_slice(&duration.to_be_bytes());
        side.towards.stamp_generated(&mut packet, timestamp, now);
        match send_protected(&mut side.srtp, socket, &packet, destination, side.connected) {
            Outcome::Relayed => tally.relayed += 1,
            _ => tally.dropped += 1,
        }
    }
}

fn relay_rtcp(
    incoming: &mut Side,
    outgoing: &mut Side,
    packet: &mut [u8],
    source: SocketAddr,
    out: &UdpSocket,
) -> bool {
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
    send_protected(&mut outgoing.srtp, out, packet, destination, None) == Outcome::Relayed
}

/// [`send`], protected first with the side's SRTP sender when its leg is encrypted.
fn send_protected(
    srtp: &mut Option<Box<SrtpSession>>,
    socket: &UdpSocket,
    packet: &[u8],
    destination: SocketAddr,
    connected: Option<SocketAddr>,
) -> Outcome {
    let Some(session) = srtp.as_mut().filter(|s| s.active) else {
        return send(socket, packet, destination, connected);
    };
    let Some(sender) = session.sender() else {
        return Outcome::Dropped;
    };
    let mut buffer = [0u8; 2048 + srtp::MAX_OVERHEAD];
    let Some(room) = buffer.get_mut(..packet.len()) else {
        return Outcome::Dropped;
    };
    room.copy_from_slice(packet);
    let protected = if is_rtcp(packet) {
        sender.protect_rtcp(&mut buffer, packet.len())
    } else {
        sender.protect_rtp(&mut buffer, packet.len())
    };
    match protected {
        Some(length) => send(socket, &buffer[..length], destination, connected),
        None => Outcome::Dropped,
    }
}

/// Sends one packet to `destination`: with `send` when the socket is connected to it (the
/// kernel's cached route, see [`Side::follow_latch`]), else with `send_to`.
fn send(
    socket: &UdpSocket,
    packet: &[u8],
    destination: SocketAddr,
    connected: Option<SocketAddr>,
) -> Outcome {
    let sent = if connected == Some(destination) {
        socket.send(packet)
    } else {
        socket.send_to(packet, destination)
    };
    match sent {
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

    fn keys(ours: u8, theirs: u8, suite: srtp::Suite) -> Option<srtp::Keys> {
        Some(srtp::Keys {
            suite,
            ours: srtp::MasterKey([ours; 30]),
            theirs: srtp::MasterKey([theirs; 30]),
            their_mki: 0,
        })
    }

    /// Sends sequence number `sequence` of our stream through the side's sender.
    fn protect(session: &mut SrtpSession, sequence: u16) -> Option<usize> {
        let mut buffer = [0u8; 256];
        buffer[..12].copy_from_slice(&[0x80, 8, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4]);
        buffer[2..4].copy_from_slice(&sequence.to_be_bytes());
        session.sender()?.protect_rtp(&mut buffer, 172)
    }

    /// The agent's key comes back after a transfer target's (early media, then the target
    /// failed), and after a plain spell and a suite change: its context goes on, so the
    /// indexes it used stay used.
    /// A party flooding RFC 4733 events fills its call's queue to MAX_PENDING_DIGITS and no
    /// further; each digit read makes room for one more.
    #[test]
    fn a_flood_of_digits_is_bounded() {
        let pending = PendingDigits::default();
        for _ in 0..MAX_PENDING_DIGITS {
            assert!(pending.admit());
        }
        assert!(!pending.admit());
        pending.read();
        assert!(pending.admit());
        assert!(!pending.admit());
    }

    #[test]
    fn a_key_that_comes_back_keeps_its_indexes() {
        use srtp::Suite::{AesCm128HmacSha1_32, AesCm128HmacSha1_80};
        let mut session = SrtpSession::update(None, keys(1, 2, AesCm128HmacSha1_80));
        let Some(s) = session.as_deref_mut() else {
            panic!("no session");
        };
        assert!(protect(s, 10).is_some());
        session = SrtpSession::update(session, keys(5, 6, AesCm128HmacSha1_80));
        let Some(s) = session.as_deref_mut() else {
            panic!("no session");
        };
        assert!(protect(s, 10).is_some(), "another key: its own indexes");
        session = SrtpSession::update(session, None);
        assert!(session.as_ref().is_some_and(|s| !s.active));
        session = SrtpSession::update(session, keys(1, 2, AesCm128HmacSha1_32));
        let Some(s) = session.as_deref_mut() else {
            panic!("no session");
        };
        assert!(s.active);
        assert_eq!(protect(s, 10), None, "10 was sent under key 1");
        assert_eq!(protect(s, 11), Some(172 + 4), "the 32-bit tag now");
        assert_eq!(s.senders.len(), 2);
        assert_eq!(s.receivers.len(), 2);
    }

    /// Beyond the contexts kept, the oldest of our keys is retired: it never protects again.
    #[test]
    fn a_retired_key_sends_nothing() {
        use srtp::Suite::AesCm128HmacSha1_80;
        let mut session = None;
        for key in 0..=MAX_KEYS as u8 {
            session = SrtpSession::update(session, keys(key, 200, AesCm128HmacSha1_80));
        }
        session = SrtpSession::update(session, keys(0, 200, AesCm128HmacSha1_80));
        let Some(s) = session.as_deref_mut() else {
            panic!("no session");
        };
        assert_eq!(protect(s, 1), None);
        session = SrtpSession::update(session, keys(99, 200, AesCm128HmacSha1_80));
        assert!(session
            .as_deref_mut()
            .is_some_and(|s| protect(s, 1).is_some()));
    }

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
