//! The per-call media state without sockets: what each received packet becomes, and what is
//! generated when, all with `Instant`s passed in.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::side::RELATCH_AFTER;
use super::*;
use crate::media::srtp::{self, MasterKey, Suite, MAX_OVERHEAD};

const A_SDP: &str = "192.0.2.1:4000";
const B_SDP: &str = "192.0.2.2:5000";
/// Leg A's endpoint really sends from behind a NAT.
const A_NAT: &str = "198.51.100.7:40000";

fn address(text: &str) -> SocketAddr {
    text.parse()
        .unwrap_or_else(|_| panic!("bad test address {text}"))
}

fn media(remote: &str, codec: Codec, payload_type: u8, telephone_event: Option<u8>) -> LegMedia {
    LegMedia {
        remote: Some(address(remote)),
        codec,
        payload_type,
        telephone_event,
        srtp: None,
        receives: true,
    }
}

/// A call between a PCMA leg A (telephone-event 101) and `b`.
fn call(now: Instant, b: LegMedia) -> CallMedia {
    let mut call = CallMedia::new(IdGenerator::new(7), Duration::from_secs(30), now);
    call.configure(
        Party::A,
        media(A_SDP, Codec::Pcma, 8, Some(101)),
        false,
        now,
    );
    call.configure(Party::B, b, false, now);
    call
}

fn pcma_b() -> LegMedia {
    media(B_SDP, Codec::Pcma, 8, Some(101))
}

/// An RTP packet: payload type, sequence number, timestamp, SSRC, payload.
fn rtp(payload_type: u8, sequence: u16, timestamp: u32, payload: &[u8]) -> Vec<u8> {
    let mut packet = vec![0x80, payload_type];
    packet.extend_from_slice(&sequence.to_be_bytes());
    packet.extend_from_slice(&timestamp.to_be_bytes());
    packet.extend_from_slice(&0x1111_2222u32.to_be_bytes());
    packet.extend_from_slice(payload);
    packet
}

/// An RFC 4733 event packet with `code`, end bit `end`.
fn event(payload_type: u8, sequence: u16, timestamp: u32, code: u8, end: bool) -> Vec<u8> {
    rtp(
        payload_type,
        sequence,
        timestamp,
        &[code, if end { 0x8a } else { 0x0a }, 0, 160],
    )
}

/// An RTCP receiver report with one block.
fn rtcp() -> Vec<u8> {
    let mut packet = vec![0x81, 201, 0, 7];
    packet.extend_from_slice(&0x3333_4444u32.to_be_bytes());
    packet.extend_from_slice(&[0; 24]);
    packet
}

struct Run {
    call: CallMedia,
    protected: [u8; 2048 + MAX_OVERHEAD],
}

impl Run {
    fn new(call: CallMedia) -> Run {
        Run {
            call,
            protected: [0; 2048 + MAX_OVERHEAD],
        }
    }

    /// One packet received on `party`'s `socket` from `source`: the outcome and the packet as
    /// it was left (rewritten in place).
    fn receive(
        &mut self,
        now: Instant,
        party: usize,
        socket: Socket,
        source: &str,
        packet: &[u8],
    ) -> (PacketOutcome, Vec<u8>) {
        let mut buffer = packet.to_vec();
        let outcome = self.call.on_packet(
            now,
            party,
            socket,
            address(source),
            &mut buffer,
            &mut self.protected,
        );
        (outcome, buffer)
    }

    fn rtp_from(
        &mut self,
        now: Instant,
        party: usize,
        source: &str,
        packet: &[u8],
    ) -> PacketOutcome {
        self.receive(now, party, Socket::Rtp, source, packet).0
    }
}

fn sent_to(outcome: PacketOutcome) -> Option<(usize, Socket, SocketAddr)> {
    match outcome {
        PacketOutcome::Send(t, _) => Some((t.party, t.socket, t.destination)),
        _ => None,
    }
}

/// Symmetric RTP: the first source is latched (even one the SDP did not name, behind a NAT),
/// and what the other leg sends goes there, not to the SDP's address; another source of
/// another IP is refused; another port of the signalled IP takes over (a NAT rebinding).
#[test]
fn the_first_source_is_latched_and_the_other_leg_sends_to_it() {
    let now = Instant::now();
    let mut run = Run::new(call(now, pcma_b()));
    let voice = rtp(8, 1, 160, &[0xd5; 160]);
    // Before A is heard from, B's packets go to A's SDP address.
    assert_eq!(
        sent_to(run.rtp_from(now, 1, B_SDP, &voice)),
        Some((0, Socket::Rtp, address(A_SDP)))
    );
    assert_eq!(
        sent_to(run.rtp_from(now, 0, A_NAT, &voice)),
        Some((1, Socket::Rtp, address(B_SDP)))
    );
    assert_eq!(
        sent_to(run.rtp_from(now, 1, B_SDP, &rtp(8, 2, 320, &[0xd5; 160]))),
        Some((0, Socket::Rtp, address(A_NAT))),
        "to where A really sends from"
    );
    assert_eq!(
        run.rtp_from(now, 0, "203.0.113.9:7000", &rtp(8, 2, 320, &[0xd5; 160])),
        PacketOutcome::Dropped,
        "a stranger cannot take over the latch"
    );
    assert_eq!(
        sent_to(run.rtp_from(now, 0, "192.0.2.1:4002", &rtp(8, 3, 480, &[0xd5; 160]))),
        Some((1, Socket::Rtp, address(B_SDP))),
        "the signalled IP may move its port"
    );
    assert_eq!(
        run.call.sides[0].rtp_source,
        Some(address("192.0.2.1:4002"))
    );
}

/// The RTP socket is connected to the latched source while it is heard from, and
/// disconnected after RELATCH_AFTER of its silence (so a new source can be latched); sends to
/// the connected address say so.
#[test]
fn the_latch_connection_is_let_go_after_relatch_after_of_silence() {
    let start = Instant::now();
    let mut run = Run::new(call(start, pcma_b()));
    assert_eq!(
        run.call.wanted_connection(0, start),
        None,
        "nothing latched"
    );
    assert!(run
        .rtp_from(start, 0, A_NAT, &rtp(8, 1, 160, &[0xd5; 160]))
        .passed_latch_check());
    assert_eq!(
        run.call.wanted_connection(0, start),
        Some(Some(address(A_NAT)))
    );
    run.call.connected(0, Some(address(A_NAT)));
    assert_eq!(run.call.wanted_connection(0, start), None);
    let PacketOutcome::Send(transmit, _) =
        run.rtp_from(start, 1, B_SDP, &rtp(8, 1, 160, &[0xd5; 160]))
    else {
        panic!("not relayed");
    };
    assert!(transmit.connected, "sent on the connected socket");
    // Heard again just before the limit: still connected.
    let later = start + RELATCH_AFTER - Duration::from_millis(1);
    let _ = run.rtp_from(later, 0, A_NAT, &rtp(8, 2, 320, &[0xd5; 160]));
    assert_eq!(
        run.call
            .wanted_connection(0, later + Duration::from_millis(10)),
        None
    );
    // A packet from another port of the signalled IP re-latches, but is not the heard source:
    // the connection to A_NAT is kept until RELATCH_AFTER of A_NAT's silence.
    assert_eq!(
        run.call.wanted_connection(0, later + RELATCH_AFTER),
        Some(None)
    );
    run.call.connected(0, None);
    let PacketOutcome::Send(transmit, _) = run.rtp_from(
        later + RELATCH_AFTER,
        1,
        B_SDP,
        &rtp(8, 2, 320, &[0xd5; 160]),
    ) else {
        panic!("not relayed");
    };
    assert!(!transmit.connected, "send_to once disconnected");
}

/// After a Replace, the previous endpoint's source is refused for RELATCH_AFTER: the new
/// endpoint latches; after it, the old source is an unlatched one like any other.
#[test]
fn a_replaced_endpoints_source_is_refused_for_relatch_after() {
    let now = Instant::now();
    let mut run = Run::new(call(now, pcma_b()));
    let _ = run.rtp_from(now, 1, B_SDP, &rtp(8, 1, 160, &[0xd5; 160]));
    let target = media("192.0.2.3:6000", Codec::Pcma, 8, Some(101));
    run.call.configure(Party::B, target, true, now);
    let soon = now + Duration::from_secs(1);
    assert_eq!(
        run.rtp_from(soon, 1, B_SDP, &rtp(8, 2, 320, &[0xd5; 160])),
        PacketOutcome::Dropped
    );
    assert_eq!(run.call.sides[1].rtp_source, None);
    let after = now + RELATCH_AFTER;
    assert!(sent_to(run.rtp_from(after, 1, B_SDP, &rtp(8, 3, 480, &[0xd5; 160]))).is_some());
}

/// Each leg gets its own payload types: the codec's, the telephone-event's; comfort noise
/// passes as it is; a type the leg did not negotiate, or events to a leg without them, are
/// dropped. The marker bit stays.
#[test]
fn payload_types_are_mapped_to_the_other_legs() {
    let now = Instant::now();
    let mut run = Run::new(call(now, media(B_SDP, Codec::Pcma, 110, Some(96))));
    let (outcome, packet) = run.receive(now, 0, Socket::Rtp, A_SDP, &rtp(8, 1, 160, &[0xd5; 160]));
    assert_eq!(
        outcome,
        PacketOutcome::Send(
            Transmit {
                party: 1,
                socket: Socket::Rtp,
                destination: address(B_SDP),
                connected: false
            },
            Payload::Plain(172),
        )
    );
    assert_eq!(packet[1] & 0x7f, 110);
    assert_eq!(
        packet[12..],
        [0xd5; 160],
        "same codec: the payload untouched"
    );
    let mut marked = event(101, 2, 320, 5, false);
    marked[1] |= 0x80;
    let (outcome, packet) = run.receive(now, 0, Socket::Rtp, A_SDP, &marked);
    assert!(sent_to(outcome).is_some());
    assert_eq!(packet[1], 0x80 | 96);
    let (outcome, packet) = run.receive(now, 0, Socket::Rtp, A_SDP, &rtp(13, 3, 480, &[40]));
    assert!(sent_to(outcome).is_some(), "comfort noise");
    assert_eq!(packet[1] & 0x7f, 13);
    assert_eq!(
        run.rtp_from(now, 0, A_SDP, &rtp(18, 4, 640, &[0; 20])),
        PacketOutcome::Dropped,
        "G.729 was not negotiated"
    );
    // B takes no telephone-events: A's are dropped.
    run.call
        .configure(Party::B, media(B_SDP, Codec::Pcma, 8, None), false, now);
    assert_eq!(
        run.rtp_from(now, 0, A_SDP, &event(101, 5, 800, 5, false)),
        PacketOutcome::Dropped
    );
}

/// Legs that negotiated different G.711 laws are transcoded in place, both ways, by the
/// G.711 tables (A-law 0xD5 is +8, mu-law 0xFE; mu-law 0xFF is 0, A-law 0xD5).
#[test]
fn pcmu_and_pcma_legs_are_transcoded() {
    use crate::media::g711::{alaw_to_linear, linear_to_alaw, linear_to_ulaw, ulaw_to_linear};
    let now = Instant::now();
    let mut run = Run::new(call(now, media(B_SDP, Codec::Pcmu, 0, Some(101))));
    let (outcome, packet) = run.receive(now, 0, Socket::Rtp, A_SDP, &rtp(8, 1, 160, &[0xd5; 160]));
    assert!(sent_to(outcome).is_some());
    assert_eq!(packet[1] & 0x7f, 0);
    assert_eq!(packet[12..], [linear_to_ulaw(alaw_to_linear(0xd5)); 160]);
    assert_eq!(packet[12], 0xfe);
    let (outcome, packet) = run.receive(now, 1, Socket::Rtp, B_SDP, &rtp(0, 1, 160, &[0xff; 160]));
    assert!(sent_to(outcome).is_some());
    assert_eq!(packet[1] & 0x7f, 8);
    assert_eq!(packet[12..], [linear_to_alaw(ulaw_to_linear(0xff)); 160]);
    assert_eq!(packet[12], 0xd5);
    // The same law on both legs: untouched.
    run.call.configure(Party::B, pcma_b(), false, now);
    let (_, packet) = run.receive(now, 0, Socket::Rtp, A_SDP, &rtp(8, 2, 320, &[0xd5; 160]));
    assert_eq!(packet[12..], [0xd5; 160]);
}

/// A leg whose digits are detected: each event reported once (its start), its repeats and
/// end packets taken out of the stream; not detected, the events are relayed.
#[test]
fn detected_digits_are_reported_once_and_not_relayed() {
    let now = Instant::now();
    let mut run = Run::new(call(now, pcma_b()));
    assert!(sent_to(run.rtp_from(now, 0, A_SDP, &event(101, 1, 800, 5, false))).is_some());
    run.call.detect_digits(Party::A, true);
    assert_eq!(
        run.rtp_from(now, 0, A_SDP, &event(101, 2, 1600, 7, false)),
        PacketOutcome::Digit(Party::A, '7')
    );
    for sequence in 3..6 {
        assert_eq!(
            run.rtp_from(now, 0, A_SDP, &event(101, sequence, 1600, 7, true)),
            PacketOutcome::Consumed
        );
    }
    assert_eq!(
        run.rtp_from(now, 0, A_SDP, &event(101, 6, 2400, 11, true)),
        PacketOutcome::Digit(Party::A, '#'),
        "an event whose start was lost: its first end packet"
    );
    // B's digits are not detected: relayed.
    assert!(sent_to(run.rtp_from(now, 1, B_SDP, &event(101, 1, 800, 1, false))).is_some());
}

fn keys(ours: u8, theirs: u8) -> srtp::Keys {
    srtp::Keys {
        suite: Suite::AesCm128HmacSha1_80,
        ours: MasterKey([ours; 30]),
        theirs: MasterKey([theirs; 30]),
        their_mki: 0,
    }
}

/// An SRTP leg A and a plain leg B: A's packets are authenticated and decrypted, relayed
/// plain; B's are protected for A last, into the protection buffer, and A's endpoint can
/// decrypt them with our key. A forged packet is rejected before it can latch anything.
#[test]
fn srtp_round_trips_through_the_call() {
    let now = Instant::now();
    let mut run = Run::new(call(now, pcma_b()));
    let mut a = media(A_SDP, Codec::Pcma, 8, Some(101));
    a.srtp = Some(keys(1, 2));
    run.call.configure(Party::A, a, false, now);
    let mut endpoint_sends = srtp::Sender::new(Suite::AesCm128HmacSha1_80, &MasterKey([2; 30]));
    let mut endpoint_receives =
        srtp::Receiver::new(Suite::AesCm128HmacSha1_80, &MasterKey([1; 30]), 0);

    let mut packet = rtp(8, 1, 160, &[0xd5; 160]);
    packet.resize(172 + 10, 0);
    assert_eq!(endpoint_sends.protect_rtp(&mut packet, 172), Some(182));
    let mut forged = packet.clone();
    forged[20] ^= 1;
    assert_eq!(
        run.rtp_from(now, 0, A_NAT, &forged),
        PacketOutcome::SrtpRejected {
            error: SrtpError::Authentication,
            rtp: true
        }
    );
    assert_eq!(
        run.call.sides[0].rtp_source, None,
        "a forged packet latches nothing"
    );
    let (outcome, plain) = run.receive(now, 0, Socket::Rtp, A_NAT, &packet);
    let PacketOutcome::Send(transmit, Payload::Plain(length)) = outcome else {
        panic!("not relayed plain: {outcome:?}");
    };
    assert_eq!((transmit.party, length), (1, 172));
    assert_eq!(plain[12..172], [0xd5; 160], "decrypted");
    assert_eq!(
        run.rtp_from(now, 0, A_NAT, &packet),
        PacketOutcome::SrtpRejected {
            error: SrtpError::Replay,
            rtp: true
        }
    );
    assert!(matches!(
        run.rtp_from(now, 0, A_NAT, &[0x80, 8, 0]),
        PacketOutcome::SrtpRejected {
            error: SrtpError::TooShort,
            ..
        }
    ));

    let outcome = run.rtp_from(now, 1, B_SDP, &rtp(8, 1, 160, &[0x55; 160]));
    let PacketOutcome::Send(transmit, Payload::Protected(length)) = outcome else {
        panic!("not protected: {outcome:?}");
    };
    assert_eq!(
        (transmit.party, transmit.destination, length),
        (0, address(A_NAT), 182)
    );
    let mut received = run.protected[..length].to_vec();
    assert_eq!(endpoint_receives.unprotect_rtp(&mut received), Ok(172));
    assert_eq!(received[12..172], [0x55; 160]);
}

/// RTCP on the RTCP port goes to the other leg's RTCP port (its RTP port + 1 until latched)
/// with our SSRC as the sender's, by send_to; RTCP multiplexed on the RTP port (RFC 5761)
/// goes to the other's RTP address. A conference's mixer terminates RTCP.
#[test]
fn rtcp_is_relayed_with_our_ssrc_or_terminated_by_the_mixer() {
    let now = Instant::now();
    let mut run = Run::new(call(now, pcma_b()));
    let (outcome, packet) = run.receive(now, 0, Socket::Rtcp, "192.0.2.1:4001", &rtcp());
    assert_eq!(
        outcome,
        PacketOutcome::Send(
            Transmit {
                party: 1,
                socket: Socket::Rtcp,
                destination: address("192.0.2.2:5001"),
                connected: false
            },
            Payload::Plain(32),
        )
    );
    assert_eq!(packet[4..8], run.call.sides[1].towards.ssrc().to_be_bytes());
    assert_eq!(
        run.receive(now, 0, Socket::Rtcp, "192.0.2.1:4001", &[0x80, 8, 0, 1])
            .0,
        PacketOutcome::Ignored,
        "no RTCP"
    );
    assert_eq!(
        sent_to(run.rtp_from(now, 0, A_SDP, &rtcp())),
        Some((1, Socket::Rtp, address(B_SDP))),
        "rtcp-mux"
    );
    // A guest joins: three parties, mixing.
    run.call.add_party(2, now);
    run.call.configure(
        Party::from_index(2).unwrap_or(Party::A),
        media("192.0.2.4:7000", Codec::Pcma, 8, None),
        false,
        now,
    );
    assert_eq!(
        run.rtp_from(now, 2, "192.0.2.4:7000", &rtp(8, 1, 160, &[0xd5; 160])),
        PacketOutcome::Unpaired,
        "not in the call's audio yet"
    );
    run.call
        .join(Party::from_index(2).unwrap_or(Party::A), true, now);
    assert_eq!(
        run.receive(now, 0, Socket::Rtcp, "192.0.2.1:4001", &rtcp())
            .0,
        PacketOutcome::Ignored
    );
    assert_eq!(
        run.rtp_from(now, 0, A_SDP, &rtcp()),
        PacketOutcome::Consumed
    );
}

/// With three parties in, packets go into the jitter buffers (a duplicate is late), comfort
/// noise is consumed, every party's digits are reported, and each 20 ms tick sends every
/// party its mix, marked first.
#[test]
fn a_conference_mixes_on_a_20_ms_clock() {
    let now = Instant::now();
    let mut run = Run::new(call(now, pcma_b()));
    let guest = Party::from_index(2).unwrap_or(Party::A);
    run.call.add_party(2, now);
    run.call.configure(
        guest,
        media("192.0.2.4:7000", Codec::Pcmu, 0, Some(101)),
        false,
        now,
    );
    assert_eq!(run.call.poll_timeout(), None);
    run.call.join(guest, true, now);
    assert_eq!(run.call.poll_timeout(), Some(now + PACKET_TIME));
    let voice = rtp(8, 1, 160, &[0xd5; 160]);
    assert_eq!(run.rtp_from(now, 0, A_SDP, &voice), PacketOutcome::Mixed);
    assert_eq!(run.rtp_from(now, 0, A_SDP, &voice), PacketOutcome::Late);
    assert_eq!(
        run.rtp_from(now, 0, A_SDP, &rtp(13, 2, 320, &[40])),
        PacketOutcome::Consumed
    );
    assert_eq!(
        run.rtp_from(now, 1, B_SDP, &event(101, 1, 800, 3, false)),
        PacketOutcome::Digit(Party::B, '3')
    );
    let mut sent = Vec::new();
    let mut tally = Tally::default();
    let tick = now + PACKET_TIME;
    run.call.handle_timeout(
        tick,
        &mut run.protected,
        &mut |transmit: &Transmit, bytes: &[u8]| {
            sent.push((transmit.party, transmit.destination, bytes[1], bytes.len()));
            true
        },
        &mut tally,
    );
    assert_eq!(
        sent,
        vec![
            (0, address(A_SDP), 0x80 | 8, 172),
            (1, address(B_SDP), 0x80 | 8, 172),
            (2, address("192.0.2.4:7000"), 0x80, 172),
        ]
    );
    assert_eq!((tally.mixer_ticks, tally.relayed), (1, 3));
    assert_eq!(run.call.poll_timeout(), Some(tick + PACKET_TIME));
    // Back to two: relayed again, no more ticks.
    run.call.join(guest, false, tick);
    assert_eq!(run.call.poll_timeout(), None);
    assert!(sent_to(run.rtp_from(tick, 0, A_SDP, &rtp(8, 3, 480, &[0xd5; 160]))).is_some());
}

/// Ringback is due at once and every 20 ms; real media for the party ends it.
#[test]
fn ringback_plays_until_real_media_comes() {
    let now = Instant::now();
    let mut run = Run::new(call(now, pcma_b()));
    run.call
        .announce(Party::A, Some(&Announcement::Ringback), now);
    assert_eq!(run.call.poll_timeout(), Some(now));
    let mut sent = Vec::new();
    let mut tally = Tally::default();
    let mut send = |transmit: &Transmit, bytes: &[u8]| {
        sent.push((transmit.party, bytes[1]));
        true
    };
    run.call
        .handle_timeout(now, &mut run.protected, &mut send, &mut tally);
    run.call
        .handle_timeout(now + PACKET_TIME, &mut run.protected, &mut send, &mut tally);
    assert_eq!(sent, vec![(0, 0x80 | 8), (0, 8)]);
    assert_eq!(tally.relayed, 2);
    assert_eq!(run.call.poll_timeout(), Some(now + PACKET_TIME * 2));
    assert!(sent_to(run.rtp_from(now, 1, B_SDP, &rtp(8, 1, 160, &[0xd5; 160]))).is_some());
    assert_eq!(run.call.poll_timeout(), None);
}

/// An isolated party hears only what we play it: the other side's audio is dropped and
/// does not end the playback; once it is not isolated, real media takes over again.
#[test]
fn an_isolated_party_hears_only_its_playback() {
    let now = Instant::now();
    let mut run = Run::new(call(now, pcma_b()));
    run.call
        .announce(Party::A, Some(&Announcement::Ringback), now);
    run.call.isolate(Party::A, true);
    assert!(sent_to(run.rtp_from(now, 1, B_SDP, &rtp(8, 1, 160, &[0xd5; 160]))).is_none());
    assert_eq!(run.call.poll_timeout(), Some(now), "the ringback plays on");
    assert!(
        sent_to(run.rtp_from(now, 0, A_SDP, &rtp(8, 1, 160, &[0xd5; 160]))).is_some(),
        "what it says still reaches the other side"
    );
    run.call.isolate(Party::A, false);
    assert!(sent_to(run.rtp_from(now, 1, B_SDP, &rtp(8, 2, 320, &[0xd5; 160]))).is_some());
    assert_eq!(run.call.poll_timeout(), None);
}

/// A digit played to a party: four event packets in its stream, with its telephone-event type.
#[test]
fn a_played_digit_is_four_packets_in_the_stream() {
    let now = Instant::now();
    let mut run = Run::new(call(now, media(B_SDP, Codec::Pcma, 8, Some(96))));
    let mut sent = Vec::new();
    let mut tally = Tally::default();
    run.call.send_digit(
        Party::B,
        '9',
        now,
        &mut run.protected,
        &mut |transmit: &Transmit, bytes: &[u8]| {
            sent.push((transmit.party, bytes[1] & 0x7f, bytes[12], bytes.len()));
            true
        },
        &mut tally,
    );
    assert_eq!(sent, vec![(1, 96, 9, 16); 4]);
    assert_eq!((tally.relayed, tally.dropped), (4, 0));
}

/// Answered and silent for the inactivity timeout: reported once.
#[test]
fn inactivity_is_reported_once() {
    let now = Instant::now();
    let mut run = Run::new(call(now, pcma_b()));
    assert!(
        !run.call.poll_inactive(now + Duration::from_secs(60)),
        "not answered"
    );
    run.call.answered(now);
    let _ = run.rtp_from(
        now + Duration::from_secs(10),
        0,
        A_SDP,
        &rtp(8, 1, 160, &[0xd5; 160]),
    );
    assert!(!run.call.poll_inactive(now + Duration::from_secs(39)));
    assert!(run.call.poll_inactive(now + Duration::from_secs(40)));
    assert!(!run.call.poll_inactive(now + Duration::from_secs(41)));
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

/// A recorded call: party A's packets on the left, what is sent to A on the right, decoded
/// (PCMA 0xd5 is a small positive sample); A speaking while nobody is paired with it (the agent
/// gone, the target still ringing) is recorded all the same, but a stranger's packet is not.
#[test]
fn the_callers_two_directions_are_recorded() {
    let now = Instant::now();
    let mut run = Run::new(call(now, pcma_b()));
    let (sink, frames) = crate::media::recording::test_sink(now, 64);
    run.call.record(sink);
    let said = rtp(8, 1, 160, &[0xd5; 160]);
    let heard = rtp(8, 1, 160, &[0x55; 160]);
    assert!(sent_to(run.rtp_from(now, 0, A_NAT, &said)).is_some());
    assert!(sent_to(run.rtp_from(now, 1, B_SDP, &heard)).is_some());
    let channels: Vec<(Channel, i16)> = frames
        .try_iter()
        .map(|c| (c.channel(), c.samples()[0]))
        .collect();
    let (said_sample, heard_sample) = (
        crate::media::g711::alaw_to_linear(0xd5),
        crate::media::g711::alaw_to_linear(0x55),
    );
    assert_eq!(
        channels,
        [(Channel::Said, said_sample), (Channel::Heard, heard_sample)]
    );
    run.call.join(Party::B, false, now);
    let later = now + Duration::from_millis(20);
    let outcome = run.rtp_from(later, 0, A_NAT, &rtp(8, 2, 320, &[0xd5; 160]));
    assert_eq!(outcome, PacketOutcome::Unpaired);
    let _ = run.rtp_from(later, 0, "203.0.113.9:7000", &rtp(8, 9, 320, &[0x55; 160]));
    let alone: Vec<(Channel, i16)> = frames
        .try_iter()
        .map(|c| (c.channel(), c.samples()[0]))
        .collect();
    assert_eq!(alone, [(Channel::Said, said_sample)]);
}
