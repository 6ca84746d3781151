//! `kill -9` of the gateway binary at each step of a linkage story, and what the platforms'
//! streams say after the next start: every call they were shown has ended (the killed run's
//! calls with `gateway restart`), every linkage they were shown is settled, every conference
//! is over; the sequences have no gap and no event comes twice under two ids; and what a peer
//! saw before the kill (a ringing, an answer, 110's phone ringing) is on the stream: an event
//! is committed before its step is seen.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use common::platform::Platform;
use common::process::{free_port, GatewayProcess};
use common::Ua;
use hotline_gateway::workorder::pb;
use pb::command::Action;
use pb::EventType;

const LOCALHOST: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
const TOKEN_12345: &str = "token-of-the-12345-system";
const TOKEN_110: &str = "token-of-the-110-cad-system";

struct Story {
    config: std::path::PathBuf,
    grpc: SocketAddr,
    citizen: Ua,
    agent: Ua,
    police: Ua,
    /// Each platform's newest sequence checked so far.
    checked: BTreeMap<&'static str, u64>,
    _dir: tempfile::TempDir,
}

impl Story {
    async fn new() -> Story {
        let dir = match tempfile::tempdir() {
            Ok(d) => d,
            Err(e) => panic!("{e}"),
        };
        let mut citizen = Ua::bind("carrier", LOCALHOST).await;
        let mut agent = Ua::bind("hotline", LOCALHOST).await;
        let mut police = Ua::bind("police", LOCALHOST).await;
        let sip = SocketAddr::new(LOCALHOST, free_port());
        let grpc = SocketAddr::new(LOCALHOST, free_port());
        let [low, high] = common::media_block();
        let config = dir.path().join("gateway.toml");
        let text = format!(
            "[sip]\nlisten = \"{sip}\"\ntransfer_ring_timeout_secs = 30\n\n\
             [media]\naddress = \"127.0.0.1\"\nports = [{low}, {high}]\n\n\
             [store]\npath = \"{db}\"\n\n\
             [api]\ngrpc = \"{grpc}\"\nhttp = \"127.0.0.1:{http}\"\n\n\
             [[peer]]\nname = \"carrier\"\naddress = \"{carrier}\"\n\n\
             [[peer]]\nname = \"hotline\"\naddress = \"{hotline}\"\nplatform = \"12345\"\n\n\
             [[peer]]\nname = \"police\"\naddress = \"{police}\"\nplatform = \"110\"\ntrusted = true\n\n\
             [[route]]\nnumber = \"12345\"\npeers = [\"hotline\"]\n\n\
             [[route]]\nnumber = \"110\"\npeers = [\"police\"]\n\n\
             [[platform]]\nname = \"12345\"\ntoken = \"{TOKEN_12345}\"\n\n\
             [[platform]]\nname = \"110\"\ntoken = \"{TOKEN_110}\"\n",
            db = dir.path().join("gateway.db").display(),
            http = free_port(),
            carrier = citizen.address,
            hotline = agent.address,
            police = police.address,
        );
        if let Err(e) = std::fs::write(&config, text) {
            panic!("{e}");
        }
        for ua in [&mut citizen, &mut agent, &mut police] {
            ua.set_gateway(sip);
        }
        Story {
            config,
            grpc,
            citizen,
            agent,
            police,
            checked: BTreeMap::from([("12345", 0), ("110", 0)]),
            _dir: dir,
        }
    }

    /// A platform's client that gets only what comes after the last check.
    async fn follow(&self, platform: &'static str) -> Platform {
        let token = if platform == "110" {
            TOKEN_110
        } else {
            TOKEN_12345
        };
        Platform::connect(self.grpc, platform, token, Some(self.checked[platform])).await
    }

    /// A citizen's call answered at 12345, whose system transfers it to 110: returns that
    /// system's client and the INVITE 110's phone got.
    async fn transfer_to_110(&mut self) -> (Platform, hotline_gateway::sip::message::Request) {
        let mut hotline = self.follow("12345").await;
        let _call = common::establish(&mut self.citizen, &mut self.agent, &[8], &[8]).await;
        let call_id = hotline.until(EventType::CallAnswered).await.call_id;
        let transfer = hotline
            .command(Action::Transfer(pb::Transfer {
                call_id,
                target: "110".into(),
            }))
            .await;
        assert!(transfer.ok, "{transfer:?}");
        let invite = self.police.expect_request("INVITE").await;
        (hotline, invite)
    }

    /// After a kill and a new start: each platform's whole stream, checked; returns what came
    /// since the last check.
    async fn check(&mut self) -> BTreeMap<&'static str, Vec<pb::Event>> {
        let mut fresh = BTreeMap::new();
        for (platform, token) in [("12345", TOKEN_12345), ("110", TOKEN_110)] {
            let events = whole_stream(self.grpc, platform, token).await;
            check_stream(platform, &events);
            let since = self.checked[platform];
            self.checked
                .insert(platform, events.last().map_or(0, |e| e.sequence));
            fresh.insert(
                platform,
                events.into_iter().filter(|e| e.sequence > since).collect(),
            );
        }
        fresh
    }
}

/// Every event of `platform` from its first (the tests never acknowledge).
async fn whole_stream(grpc: SocketAddr, platform: &str, token: &str) -> Vec<pb::Event> {
    let mut client = Platform::connect(grpc, platform, token, Some(0)).await;
    assert_eq!(client.welcome.acknowledged, 0);
    let latest = client.welcome.latest;
    let mut events = Vec::new();
    while events.len() < latest as usize {
        let Some(pb::link_response::Kind::Event(event)) = client.receive().await.kind else {
            continue;
        };
        events.push(event);
    }
    events
}

fn kind(event: &pb::Event) -> EventType {
    EventType::try_from(event.r#type).unwrap_or(EventType::Unspecified)
}

/// No gap, no event under two ids; every call ended once and last; every linkage settled
/// once; every conference over.
fn check_stream(platform: &str, events: &[pb::Event]) {
    let mut ids = HashSet::new();
    for (index, event) in events.iter().enumerate() {
        assert_eq!(
            event.sequence,
            index as u64 + 1,
            "{platform}: a gap at {event:?}"
        );
        assert!(ids.insert(&event.event_id), "{platform}: {event:?} twice");
    }
    let mut calls: BTreeMap<&str, Vec<&pb::Event>> = BTreeMap::new();
    for event in events {
        calls.entry(&event.call_id).or_default().push(event);
    }
    for (call, events) in calls {
        let kinds: Vec<EventType> = events.iter().map(|e| kind(e)).collect();
        let ends = kinds
            .iter()
            .filter(|k| matches!(k, EventType::CallEnded | EventType::CallBlocked))
            .count();
        assert_eq!(
            ends, 1,
            "{platform}: call {call} ended {ends} times: {kinds:?}"
        );
        assert!(
            matches!(
                kinds.last(),
                Some(EventType::CallEnded | EventType::CallBlocked)
            ),
            "{platform}: call {call} goes on after its end: {kinds:?}"
        );
        let count = |k: EventType| kinds.iter().filter(|x| **x == k).count();
        assert_eq!(
            count(EventType::ConferenceStarted),
            count(EventType::ConferenceEnded),
            "{platform}: call {call}: {kinds:?}"
        );
        let mut linkages: BTreeMap<&str, Vec<EventType>> = BTreeMap::new();
        for event in events.iter().filter(|e| !e.linkage_id.is_empty()) {
            linkages
                .entry(&event.linkage_id)
                .or_default()
                .push(kind(event));
        }
        for (linkage, kinds) in linkages {
            let settled = kinds
                .iter()
                .filter(|k| matches!(k, EventType::TransferAnswered | EventType::TransferFailed))
                .count();
            assert_eq!(settled, 1, "{platform}: linkage {linkage}: {kinds:?}");
        }
    }
}

/// The kinds of `events`, in order.
fn kinds(events: &[pb::Event]) -> Vec<EventType> {
    events.iter().map(kind).collect()
}

fn ended_by_restart(events: &[pb::Event]) -> bool {
    events.last().is_some_and(|e| {
        kind(e) == EventType::CallEnded
            && e.ended_by == pb::EndedBy::Gateway as i32
            && e.reason == "gateway restart"
    })
}

#[tokio::test]
async fn kill_9_at_each_step_leaves_every_platform_a_complete_story() {
    let mut story = Story::new().await;
    let config = story.config.clone();
    let start = |config: &Path| GatewayProcess::start(config);

    // 1. Offered: the agent's phone got the INVITE.
    let gateway = start(&config);
    let sdp = common::sdp(story.citizen.address, &[8], "sendrecv");
    let invite = story.citizen.invite("12345", "13800138000", &sdp, "");
    story.citizen.send_request(&invite).await;
    let offered = story.agent.expect_request("INVITE").await;
    gateway.kill_9();
    let gateway = start(&config);
    let fresh = story.check().await;
    assert_eq!(
        kinds(&fresh["12345"]),
        [EventType::CallOffered, EventType::CallEnded]
    );
    assert!(ended_by_restart(&fresh["12345"]));
    assert_eq!(fresh["12345"][1].sip_status, 503, "never answered");
    assert!(fresh["110"].is_empty(), "110 was never involved");

    // 2. Ringing: the citizen heard the agent's phone ring.
    let invite = story.citizen.invite("12345", "13800138000", &sdp, "");
    story.citizen.send_request(&invite).await;
    let offered_again = story.agent.expect_request("INVITE").await;
    assert_ne!(offered_again.call_id(), offered.call_id());
    let ringing = story.agent.answer(&offered_again, 180, None);
    story.agent.send_response(&ringing).await;
    story.citizen.expect_response("INVITE", 180).await;
    gateway.kill_9();
    let gateway = start(&config);
    let fresh = story.check().await;
    assert_eq!(
        kinds(&fresh["12345"]),
        [
            EventType::CallOffered,
            EventType::CallRinging,
            EventType::CallEnded
        ]
    );

    // 3. Answered: the citizen got the 200.
    let _call = common::establish(&mut story.citizen, &mut story.agent, &[8], &[8]).await;
    gateway.kill_9();
    let gateway = start(&config);
    let fresh = story.check().await;
    let seen = kinds(&fresh["12345"]);
    assert!(seen.contains(&EventType::CallAnswered), "{seen:?}");
    assert_eq!(fresh["12345"].last().map(|e| e.sip_status), Some(200));

    // 4. Transfer requested: 110's phone got the INVITE; 110's CAD had the call pushed.
    let (_hotline, _to_110) = story.transfer_to_110().await;
    gateway.kill_9();
    let gateway = start(&config);
    let fresh = story.check().await;
    for platform in ["12345", "110"] {
        let seen = kinds(&fresh[platform]);
        let requested = seen.iter().position(|k| *k == EventType::TransferRequested);
        let failed = seen.iter().position(|k| *k == EventType::TransferFailed);
        assert!(
            matches!((requested, failed), (Some(r), Some(f)) if r < f),
            "{platform}: {seen:?}"
        );
        assert!(ended_by_restart(&fresh[platform]), "{platform}: {seen:?}");
    }

    // 5. Transfer ringing: 110's phone rings, both platforms heard of it.
    let (mut hotline, to_110) = story.transfer_to_110().await;
    let ringing = story.police.answer(&to_110, 180, None);
    story.police.send_response(&ringing).await;
    hotline.until(EventType::TransferRinging).await;
    gateway.kill_9();
    let gateway = start(&config);
    let fresh = story.check().await;
    let failed = fresh["110"]
        .iter()
        .find(|e| kind(e) == EventType::TransferFailed)
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        (failed.sip_status, failed.reason.as_str()),
        (503, "gateway restart")
    );

    // 6. Conference: 110 joined the three-way call.
    let mut hotline = story.follow("12345").await;
    let mut cad = story.follow("110").await;
    let _call = common::establish(&mut story.citizen, &mut story.agent, &[8], &[8]).await;
    let call_id = hotline.until(EventType::CallAnswered).await.call_id;
    let conference = hotline
        .command(Action::Conference(pb::Conference {
            call_id,
            target: "110".into(),
        }))
        .await;
    assert!(conference.ok, "{conference:?}");
    let to_110 = story.police.expect_request("INVITE").await;
    let _police_rtp = common::answer_with_media(&mut story.police, &to_110, &[8]).await;
    cad.until(EventType::ConferenceStarted).await;
    gateway.kill_9();
    let _gateway = start(&config);
    let fresh = story.check().await;
    for platform in ["12345", "110"] {
        let seen = kinds(&fresh[platform]);
        let tail = &seen[seen.len() - 2..];
        assert_eq!(
            tail,
            [EventType::ConferenceEnded, EventType::CallEnded],
            "{platform}: {seen:?}"
        );
    }
}
