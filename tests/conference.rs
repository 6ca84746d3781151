//! The three-way call (三方通话) end to end over loopback: a citizen calls 12345, the agent keys
//! `*3`, 110 is invited with the citizen's number and joins; each of the three sends its own
//! tone and must hear the other two and not itself, in one continuous stream.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use common::{
    dtmf_info, establish, sdp_address, tone_level, Established, Gateway, RtpPeer, RtpSeen, Ua,
};
use hotline_gateway::media::g711;
use hotline_gateway::sip::message::Request;

const LOCALHOST: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

/// The flows that mix live audio take the machine one at a time: each runs a gateway, its
/// mixer on a 20 ms clock and three or four talkers paced at 20 ms in one thread. Two of them
/// at once on the 2-core CI machine once both found a party unheard for most of a one-second
/// window; the contention is the tests' own (the mixer under load is measured by
/// `bench/conference.sh`).
static LIVE_AUDIO: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Each party's tone and its peak level.
const CITIZEN_HZ: f64 = 440.0;
const AGENT_HZ: f64 = 880.0;
const POLICE_HZ: f64 = 1320.0;
const LEVEL: f64 = 8000.0;

/// Carrier (the citizen), hotline (12345's agent) and police (110), routes 12345 -> hotline and
/// 110 -> police, and the hotkey `*3` = conference with 110.
async fn setup(sip_extra: &str) -> (Gateway, Ua, Ua, Ua) {
    let mut citizen = Ua::bind("carrier", LOCALHOST).await;
    let mut agent = Ua::bind("hotline", LOCALHOST).await;
    let mut police = Ua::bind("police", LOCALHOST).await;
    let gateway = Gateway::start_with_tables(
        &[
            ("carrier", citizen.address, ""),
            ("hotline", agent.address, "platform = \"12345\""),
            (
                "police",
                police.address,
                "platform = \"110\"\ntrusted = true",
            ),
        ],
        &[("12345", &["hotline"]), ("110", &["police"])],
        &format!("transfer_ring_timeout_secs = 2\nhotkey_inter_digit_ms = 500\n{sip_extra}"),
        "",
        "\n[[hotkey]]\ndtmf = \"*3\"\naction = \"conference\"\ntarget = \"110\"\n",
    )
    .await;
    for ua in [&mut citizen, &mut agent, &mut police] {
        ua.set_gateway(gateway.sip);
    }
    (gateway, citizen, agent, police)
}

/// As [`setup`], with a fire desk (120, route 120 -> fire) and the hotkey `*4` = conference
/// with 120.
async fn setup_with_fire() -> (Gateway, [Ua; 4]) {
    let mut uas = [
        Ua::bind("carrier", LOCALHOST).await,
        Ua::bind("hotline", LOCALHOST).await,
        Ua::bind("police", LOCALHOST).await,
        Ua::bind("fire", LOCALHOST).await,
    ];
    let gateway = Gateway::start_with_tables(
        &[
            ("carrier", uas[0].address, ""),
            ("hotline", uas[1].address, "platform = \"12345\""),
            (
                "police",
                uas[2].address,
                "platform = \"110\"\ntrusted = true",
            ),
            ("fire", uas[3].address, "platform = \"119\"\ntrusted = true"),
        ],
        &[
            ("12345", &["hotline"]),
            ("110", &["police"]),
            ("120", &["fire"]),
        ],
        "hotkey_inter_digit_ms = 500\n",
        "",
        "\n[[hotkey]]\ndtmf = \"*3\"\naction = \"conference\"\ntarget = \"110\"\n\
         \n[[hotkey]]\ndtmf = \"*4\"\naction = \"conference\"\ntarget = \"120\"\n",
    )
    .await;
    for ua in uas.iter_mut() {
        ua.set_gateway(gateway.sip);
    }
    (gateway, uas)
}

/// The agent keys `*3` (INFOs numbered from `cseq`); 110 is invited, answers, and is in the
/// call: 110's INVITE, its RTP peer and the gateway's address for it.
async fn three_way(
    agent: &mut Ua,
    call: &Established,
    police: &mut Ua,
    cseq: u32,
) -> (Request, RtpPeer, SocketAddr) {
    join(agent, call, police, cseq, '3').await
}

/// The agent keys `*<key>`; the hotkey's target (`desk`) is invited, answers and joins.
async fn join(
    agent: &mut Ua,
    call: &Established,
    desk: &mut Ua,
    cseq: u32,
    key: char,
) -> (Request, RtpPeer, SocketAddr) {
    for (cseq, digit) in [(cseq, '*'), (cseq + 1, key)] {
        let info = dtmf_info(agent, call, cseq, digit);
        agent.send_request(&info).await;
        agent.expect_response("INFO", 200).await;
    }
    let invite = desk.expect_request("INVITE").await;
    let guest_media = sdp_address(invite.sdp().unwrap_or_default());
    desk.send_response(&desk.answer(&invite, 180, None)).await;
    let desk_rtp = common::answer_with_media(desk, &invite, &[8, 101]).await;
    (invite, desk_rtp, guest_media)
}

/// One party streaming its tone to the gateway every 20 ms, and what it hears back.
struct Talker<'a> {
    rtp: &'a RtpPeer,
    to: SocketAddr,
    payload_type: u8,
    frequency: f64,
    ssrc: u32,
    sent: u32,
    heard: Vec<i16>,
    received: Vec<RtpSeen>,
    /// RFC 4733 event codes received (start packets).
    events: Vec<u8>,
}

impl<'a> Talker<'a> {
    fn new(rtp: &'a RtpPeer, to: SocketAddr, payload_type: u8, frequency: f64) -> Talker<'a> {
        Talker {
            rtp,
            to,
            payload_type,
            frequency,
            ssrc: frequency as u32,
            sent: 0,
            heard: Vec::new(),
            received: Vec::new(),
            events: Vec::new(),
        }
    }

    async fn send(&mut self) {
        let mut payload = [0u8; 160];
        for (n, code) in payload.iter_mut().enumerate() {
            let t = f64::from(self.sent * 160 + n as u32) / 8000.0;
            let sample = (LEVEL * (2.0 * std::f64::consts::PI * self.frequency * t).sin()) as i16;
            *code = if self.payload_type == 0 {
                g711::linear_to_ulaw(sample)
            } else {
                g711::linear_to_alaw(sample)
            };
        }
        let sequence = self.sent as u16;
        self.rtp
            .send(
                self.to,
                self.payload_type,
                sequence,
                self.sent * 160,
                self.ssrc,
                &payload,
            )
            .await;
        self.sent += 1;
    }

    fn hear(&mut self, packet: RtpSeen) {
        self.received.push(packet.clone());
        let decode = match packet.payload_type {
            0 => g711::ulaw_to_linear,
            8 => g711::alaw_to_linear,
            101 => {
                if packet.marker {
                    self.events.extend(packet.payload.first());
                }
                return;
            }
            _ => return,
        };
        self.heard.extend(packet.payload.iter().map(|c| decode(*c)));
    }

    /// Level of `frequency` in what was heard.
    fn level(&self, frequency: f64) -> f64 {
        tone_level(&self.heard, frequency)
    }
}

/// Every talker sends `packets` packets, 20 ms apart, hearing whatever comes meanwhile.
async fn talk(talkers: &mut [&mut Talker<'_>], packets: u32) {
    let mut pace = tokio::time::interval(Duration::from_millis(20));
    for _ in 0..packets {
        pace.tick().await;
        for talker in talkers.iter_mut() {
            talker.send().await;
        }
        for talker in talkers.iter_mut() {
            while let Some(packet) = talker.rtp.recv_within(Duration::from_millis(1)).await {
                talker.hear(packet);
            }
        }
    }
}

/// Forgets what was heard (after a warm-up, or a change of parties).
fn forget(talkers: &mut [&mut Talker<'_>]) {
    for talker in talkers.iter_mut() {
        talker.heard.clear();
    }
}

fn assert_hears(talker: &Talker<'_>, who: &str, hears: &[f64], not: &[f64]) {
    assert!(
        talker.heard.len() >= 40 * 160,
        "{who} heard only {} samples",
        talker.heard.len()
    );
    for frequency in hears {
        let level = talker.level(*frequency);
        assert!(
            level > 0.5 * LEVEL,
            "{who} should hear {frequency} Hz: level {level:.0}"
        );
    }
    for frequency in not {
        let level = talker.level(*frequency);
        assert!(
            level < 0.05 * LEVEL,
            "{who} should not hear {frequency} Hz: level {level:.0}"
        );
    }
}

/// The stream a party received kept one SSRC and consecutive sequence numbers.
fn assert_one_stream(talker: &Talker<'_>, who: &str) {
    let Some(first) = talker.received.first() else {
        panic!("{who} received nothing");
    };
    for pair in talker.received.windows(2) {
        assert_eq!(pair[1].ssrc, first.ssrc, "{who}: one SSRC throughout");
        let step = pair[1].sequence.wrapping_sub(pair[0].sequence);
        assert!(
            (1..=3).contains(&step),
            "{who}: sequence {} after {}",
            pair[1].sequence,
            pair[0].sequence
        );
    }
}

#[tokio::test]
async fn three_parties_hear_each_other_and_the_agent_can_leave() {
    let _live_audio = LIVE_AUDIO.lock().await;
    let (mut gateway, mut citizen, mut agent, mut police) = setup("").await;
    // The citizen speaks PCMU, the agent and 110 PCMA: the mixer decodes and encodes each.
    let call = establish(&mut citizen, &mut agent, &[0], &[8]).await;
    let mut citizen_talks = Talker::new(&call.caller_rtp, call.gateway_a_media, 0, CITIZEN_HZ);
    let mut agent_talks = Talker::new(&call.callee_rtp, call.gateway_b_media, 8, AGENT_HZ);
    talk(&mut [&mut citizen_talks, &mut agent_talks], 10).await;

    let (invite, police_rtp, guest_media) = three_way(&mut agent, &call, &mut police, 2).await;
    assert_eq!(
        invite.from().and_then(|f| f.uri.user),
        Some("13800138000".into()),
        "110 is invited with the citizen's number"
    );
    assert_eq!(
        invite.headers.get("P-Asserted-Identity"),
        Some(format!("<sip:13800138000@{}>", gateway.sip.ip()).as_str())
    );
    assert!(invite.headers.get("X-Hotline-Linkage").is_some());
    assert!(
        guest_media != call.gateway_a_media && guest_media != call.gateway_b_media,
        "110 gets a port of its own"
    );
    let mut police_talks = Talker::new(&police_rtp, guest_media, 8, POLICE_HZ);
    {
        let mut all = [&mut citizen_talks, &mut agent_talks, &mut police_talks];
        talk(&mut all, 15).await;
        forget(&mut all);
        talk(&mut all, 50).await;
    }
    assert_hears(
        &citizen_talks,
        "the citizen",
        &[AGENT_HZ, POLICE_HZ],
        &[CITIZEN_HZ],
    );
    assert_hears(
        &agent_talks,
        "the agent",
        &[CITIZEN_HZ, POLICE_HZ],
        &[AGENT_HZ],
    );
    assert_hears(&police_talks, "110", &[CITIZEN_HZ, AGENT_HZ], &[POLICE_HZ]);

    // The agent hangs up: citizen and 110 stay, relayed to each other.
    let bye = agent.uas_request(&call.incoming, "BYE", 4);
    agent.send_request(&bye).await;
    agent.expect_response("BYE", 200).await;
    {
        let mut both = [&mut citizen_talks, &mut police_talks];
        talk(&mut both, 10).await;
        forget(&mut both);
        talk(&mut both, 50).await;
    }
    assert_hears(&citizen_talks, "the citizen", &[POLICE_HZ], &[CITIZEN_HZ]);
    assert_hears(&police_talks, "110", &[CITIZEN_HZ], &[POLICE_HZ]);
    assert_one_stream(&citizen_talks, "the citizen");
    assert_one_stream(&police_talks, "110");
    for ua in [&mut citizen, &mut police] {
        ua.expect_nothing_then_marker(Duration::from_millis(100), "somebody was re-INVITEd")
            .await;
    }

    // The citizen hangs up: 110 gets the BYE in the dialog the gateway made with it.
    let bye = citizen.in_dialog(&call.invite, &call.ok, "BYE", 2, "");
    citizen.send_request(&bye).await;
    citizen.expect_response("BYE", 200).await;
    let bye = police.expect_request("BYE").await;
    assert_eq!(bye.call_id(), invite.call_id());
    police.send_response(&police.answer(&bye, 200, None)).await;

    let record = gateway.ended_record(call.invite.call_id()).await;
    let parties = gateway.conference_parties(&record.id);
    let who: Vec<(u8, &str, &str)> = parties
        .iter()
        .map(|p| (p.party, p.peer.as_str(), p.number.as_str()))
        .collect();
    assert_eq!(
        who,
        vec![
            (0, "carrier", "13800138000"),
            (1, "hotline", "12345"),
            (2, "police", "110")
        ]
    );
    assert!(parties.iter().all(|p| p.left_at >= Some(p.joined_at)));
    assert!(
        parties[1].left_at <= parties[0].left_at,
        "the agent left first"
    );
    let linkages = gateway.linkages(&record.id);
    assert_eq!(linkages.len(), 1, "{linkages:?}");
    assert_eq!(
        (
            linkages[0].kind.as_str(),
            linkages[0].trigger.as_str(),
            linkages[0].outcome.as_deref(),
            linkages[0].to_platform.as_deref()
        ),
        ("conference", "hotkey", Some("answered"), Some("110"))
    );
    let (_, metrics) = gateway.http_get("/metrics").await;
    assert!(metrics.contains("hotline_conferences_total 1"), "{metrics}");
    assert!(
        metrics.contains("hotline_conferences_active 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains("hotline_transfers_requested_total 0"),
        "a conference is no transfer: {metrics}"
    );
    gateway.stop().await;
}

#[tokio::test]
async fn when_110_leaves_citizen_and_agent_stay_and_the_citizen_leaving_ends_the_call() {
    let _live_audio = LIVE_AUDIO.lock().await;
    let (mut gateway, mut citizen, mut agent, mut police) = setup("").await;
    let call = establish(&mut citizen, &mut agent, &[8, 101], &[8, 101]).await;
    let (invite, police_rtp, guest_media) = three_way(&mut agent, &call, &mut police, 2).await;
    let mut citizen_talks = Talker::new(&call.caller_rtp, call.gateway_a_media, 8, CITIZEN_HZ);
    let mut agent_talks = Talker::new(&call.callee_rtp, call.gateway_b_media, 8, AGENT_HZ);
    let mut police_talks = Talker::new(&police_rtp, guest_media, 8, POLICE_HZ);
    {
        let mut all = [&mut citizen_talks, &mut agent_talks, &mut police_talks];
        talk(&mut all, 20).await;
        // The citizen presses 5: an RFC 4733 event, not mixed as audio but played to the others
        // as events.
        for (end, duration) in [(false, 160u16), (false, 320), (true, 480)] {
            let mut payload = vec![5, if end { 0x8a } else { 0x0a }];
            payload.extend_from_slice(&duration.to_be_bytes());
            call.caller_rtp
                .send(call.gateway_a_media, 101, 900, 8000 * 3, 440, &payload)
                .await;
        }
        talk(&mut all, 10).await;
    }
    assert_eq!(
        agent_talks.events,
        vec![5],
        "the agent gets the citizen's digit"
    );
    assert_eq!(police_talks.events, vec![5], "110 gets the citizen's digit");
    assert!(citizen_talks.events.is_empty());

    // 110 hangs up.
    let bye = police.uas_request(&invite, "BYE", 1);
    police.send_request(&bye).await;
    police.expect_response("BYE", 200).await;
    {
        let mut both = [&mut citizen_talks, &mut agent_talks];
        talk(&mut both, 10).await;
        forget(&mut both);
        talk(&mut both, 50).await;
    }
    assert_hears(&citizen_talks, "the citizen", &[AGENT_HZ], &[CITIZEN_HZ]);
    assert_hears(&agent_talks, "the agent", &[CITIZEN_HZ], &[AGENT_HZ]);
    assert_one_stream(&citizen_talks, "the citizen");
    assert_one_stream(&agent_talks, "the agent");

    // A second *3: 110 can be brought back.
    let (second, _, _) = three_way(&mut agent, &call, &mut police, 4).await;
    assert_ne!(second.call_id(), invite.call_id());

    // The citizen hangs up: the call ends for everybody (the default).
    common::caller_hangs_up(&mut citizen, &call, &mut [&mut agent, &mut police]).await;
    let record = gateway.ended_record(call.invite.call_id()).await;
    assert_eq!(record.ended_by.as_deref(), Some("caller"));
    gateway.stop().await;
}

/// A fourth party: after 110, the agent brings in 120 (`*4`); each of the four hears the other
/// three and not itself; when 120 leaves, the other three are still mixed.
#[tokio::test]
async fn a_fourth_party_joins_and_each_hears_the_other_three() {
    let _live_audio = LIVE_AUDIO.lock().await;
    let (mut gateway, [mut citizen, mut agent, mut police, mut fire]) = setup_with_fire().await;
    let call = establish(&mut citizen, &mut agent, &[8], &[8]).await;
    let (_, police_rtp, police_media) = join(&mut agent, &call, &mut police, 2, '3').await;
    let (fire_invite, fire_rtp, fire_media) = join(&mut agent, &call, &mut fire, 4, '4').await;
    assert_eq!(
        fire_invite.from().and_then(|f| f.uri.user),
        Some("13800138000".into()),
        "120 is invited with the citizen's number too"
    );
    const FIRE_HZ: f64 = 1760.0;
    let mut citizen_talks = Talker::new(&call.caller_rtp, call.gateway_a_media, 8, CITIZEN_HZ);
    let mut agent_talks = Talker::new(&call.callee_rtp, call.gateway_b_media, 8, AGENT_HZ);
    let mut police_talks = Talker::new(&police_rtp, police_media, 8, POLICE_HZ);
    let mut fire_talks = Talker::new(&fire_rtp, fire_media, 8, FIRE_HZ);
    {
        let mut all = [
            &mut citizen_talks,
            &mut agent_talks,
            &mut police_talks,
            &mut fire_talks,
        ];
        talk(&mut all, 15).await;
        forget(&mut all);
        talk(&mut all, 50).await;
    }
    let tones = [CITIZEN_HZ, AGENT_HZ, POLICE_HZ, FIRE_HZ];
    for (i, (talker, who)) in [
        (&citizen_talks, "the citizen"),
        (&agent_talks, "the agent"),
        (&police_talks, "110"),
        (&fire_talks, "120"),
    ]
    .into_iter()
    .enumerate()
    {
        let others: Vec<f64> = tones
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, t)| *t)
            .collect();
        assert_hears(talker, who, &others, &[tones[i]]);
    }

    // 120 hangs up: three are left, still mixed.
    let bye = fire.uas_request(&fire_invite, "BYE", 1);
    fire.send_request(&bye).await;
    fire.expect_response("BYE", 200).await;
    {
        let mut three = [&mut citizen_talks, &mut agent_talks, &mut police_talks];
        talk(&mut three, 10).await;
        forget(&mut three);
        talk(&mut three, 50).await;
    }
    assert_hears(
        &citizen_talks,
        "the citizen",
        &[AGENT_HZ, POLICE_HZ],
        &[CITIZEN_HZ, FIRE_HZ],
    );
    let record_id = gateway
        .calls()
        .into_iter()
        .next()
        .map(|r| r.id)
        .unwrap_or_default();
    let parties = gateway.conference_parties(&record_id);
    let fire_party = parties.iter().find(|p| p.peer == "fire");
    assert!(
        fire_party.is_some_and(|p| p.left_at.is_some()),
        "{parties:?}"
    );
    common::caller_hangs_up(&mut citizen, &call, &mut [&mut agent, &mut police]).await;
    gateway.stop().await;
}

/// 110 puts the call on hold (re-INVITE sendonly, answered by the gateway itself): its music on
/// hold is not mixed in and it is sent nothing; when it resumes, it hears and is heard again.
#[tokio::test]
async fn a_party_on_hold_neither_contributes_nor_receives() {
    let _live_audio = LIVE_AUDIO.lock().await;
    let (mut gateway, mut citizen, mut agent, mut police) = setup("").await;
    let call = establish(&mut citizen, &mut agent, &[8], &[8]).await;
    let (invite, police_rtp, guest_media) = three_way(&mut agent, &call, &mut police, 2).await;
    let mut citizen_talks = Talker::new(&call.caller_rtp, call.gateway_a_media, 8, CITIZEN_HZ);
    let mut agent_talks = Talker::new(&call.callee_rtp, call.gateway_b_media, 8, AGENT_HZ);
    let mut police_talks = Talker::new(&police_rtp, guest_media, 8, POLICE_HZ);
    let reinvite = |police: &mut Ua, cseq: u32, direction: &str| {
        let mut request = police.uas_request(&invite, "INVITE", cseq);
        request.headers.set("Content-Type", "application/sdp");
        request.headers.push(
            "Contact",
            format!("<sip:police@{}>", common::host_port(police.address)),
        );
        request.body = bytes::Bytes::from(common::sdp(police_rtp.address, &[8], direction));
        request
    };
    let hold = reinvite(&mut police, 1, "sendonly");
    police.send_request(&hold).await;
    let ok = police.expect_response("INVITE", 200).await;
    assert!(
        ok.sdp().is_some_and(|s| s.contains("a=recvonly")),
        "the gateway answers hold itself"
    );
    let ack = police.uas_request(&invite, "ACK", 1);
    police.send_request(&ack).await;
    {
        let mut all = [&mut citizen_talks, &mut agent_talks, &mut police_talks];
        talk(&mut all, 10).await;
        forget(&mut all);
        talk(&mut all, 50).await;
    }
    assert_hears(&citizen_talks, "the citizen", &[AGENT_HZ], &[POLICE_HZ]);
    assert_hears(&agent_talks, "the agent", &[CITIZEN_HZ], &[POLICE_HZ]);
    assert!(
        police_talks.heard.is_empty(),
        "110 on hold is sent nothing ({} samples)",
        police_talks.heard.len()
    );

    let resume = reinvite(&mut police, 2, "sendrecv");
    police.send_request(&resume).await;
    police.expect_response("INVITE", 200).await;
    let ack = police.uas_request(&invite, "ACK", 2);
    police.send_request(&ack).await;
    {
        let mut all = [&mut citizen_talks, &mut agent_talks, &mut police_talks];
        talk(&mut all, 10).await;
        forget(&mut all);
        talk(&mut all, 50).await;
    }
    assert_hears(
        &citizen_talks,
        "the citizen",
        &[AGENT_HZ, POLICE_HZ],
        &[CITIZEN_HZ],
    );
    assert_hears(&police_talks, "110", &[CITIZEN_HZ, AGENT_HZ], &[POLICE_HZ]);
    common::caller_hangs_up(&mut citizen, &call, &mut [&mut agent, &mut police]).await;
    gateway.stop().await;
}

/// A desk that is busy again and again does not use up the call's parties or ports: after
/// eight refused invitations the ninth joins.
#[tokio::test]
async fn refused_invitations_give_their_ports_back() {
    let (mut gateway, mut citizen, mut agent, mut police) = setup("").await;
    let call = establish(&mut citizen, &mut agent, &[8], &[8]).await;
    let mut cseq = 2;
    for _ in 0..8 {
        for digit in ['*', '3'] {
            let info = dtmf_info(&mut agent, &call, cseq, digit);
            agent.send_request(&info).await;
            agent.expect_response("INFO", 200).await;
            cseq += 1;
        }
        let invite = police.expect_request("INVITE").await;
        police
            .send_response(&police.answer(&invite, 486, None))
            .await;
        police.expect_request("ACK").await;
    }
    let (_, police_rtp, guest_media) = three_way(&mut agent, &call, &mut police, cseq).await;
    let mut citizen_talks = Talker::new(&call.caller_rtp, call.gateway_a_media, 8, CITIZEN_HZ);
    let mut agent_talks = Talker::new(&call.callee_rtp, call.gateway_b_media, 8, AGENT_HZ);
    let mut police_talks = Talker::new(&police_rtp, guest_media, 8, POLICE_HZ);
    {
        let mut all = [&mut citizen_talks, &mut agent_talks, &mut police_talks];
        talk(&mut all, 10).await;
        forget(&mut all);
        talk(&mut all, 50).await;
    }
    assert_hears(&police_talks, "110", &[CITIZEN_HZ, AGENT_HZ], &[POLICE_HZ]);
    common::caller_hangs_up(&mut citizen, &call, &mut [&mut agent, &mut police]).await;
    gateway.stop().await;
}
