//! The work-order link end to end: tonic clients play the 12345 work-order system and the 110
//! CAD around real SIP calls (in-process UAs on loopback): events in order at both sides, the
//! ticket pushed to 110 with the transfer, 110's replies back to 12345, commands and their
//! refusals, and nothing lost across a client's disconnect or a gateway restart.

mod common;

use std::net::IpAddr;
use std::time::Duration;

use common::platform::Platform;
use common::{establish, Gateway, Ua, WAIT};
use hotline_gateway::config::Config;
use hotline_gateway::workorder::pb;
use pb::command::Action;
use pb::link_request::Kind as Out;
use pb::link_response::Kind as In;
use pb::EventType;

const LOCALHOST: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
const TOKEN_12345: &str = "token-of-the-12345-system";
const TOKEN_110: &str = "token-of-the-110-cad-system";

async fn setup() -> (Gateway, Ua, Ua, Ua) {
    setup_with(|_| {}).await
}

/// As [`setup`], with the configuration edited by `edit` first.
async fn setup_with(edit: impl FnOnce(&mut Config)) -> (Gateway, Ua, Ua, Ua) {
    let mut citizen = Ua::bind("carrier", LOCALHOST).await;
    let mut agent = Ua::bind("hotline", LOCALHOST).await;
    let mut police = Ua::bind("police", LOCALHOST).await;
    let gateway = Gateway::start_configured(
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
        "transfer_ring_timeout_secs = 2\n",
        "",
        &format!(
            "\n[[platform]]\nname = \"12345\"\ntoken = \"{TOKEN_12345}\"\n\
             \n[[platform]]\nname = \"110\"\ntoken = \"{TOKEN_110}\"\n\
             \n[[hotkey]]\ndtmf = \"#9\"\naction = \"transfer\"\ntarget = \"999\"\n\
             \n[screening]\nblocklist = [\"13900000000\"]\nrepeat_calls = 3\n"
        ),
        edit,
    )
    .await;
    for ua in [&mut citizen, &mut agent, &mut police] {
        ua.set_gateway(gateway.sip);
    }
    (gateway, citizen, agent, police)
}

/// A 12345 work order as its system would attach it.
fn ticket() -> pb::Ticket {
    pb::Ticket {
        number: "GD-20261201-0042".into(),
        classification_code: "110203".into(),
        classification_name: "消防安全".into(),
        request_type: pb::RequestType::Assistance as i32,
        urgency: pb::Urgency::DUrgent as i32,
        deadline: Some(prost_types::Timestamp {
            seconds: 1_800_000_000,
            nanos: 0,
        }),
        summary: "a neighbour's flat is on fire".into(),
        caller_name: "王女士".into(),
        contact_number: "13900139000".into(),
        address: Some(pb::Address {
            text: "3 Renmin Road".into(),
            district: "Xuhui".into(),
            jurisdiction: "Tianping Road police station".into(),
            coordinates: Some(pb::Coordinates {
                latitude: 31.2,
                longitude: 121.44,
                system: pb::CoordinateSystem::Gcj02 as i32,
            }),
        }),
        history: vec![pb::StatusChange {
            status: pb::TicketStatus::Received as i32,
            time: Some(prost_types::Timestamp {
                seconds: 1_795_305_600,
                nanos: 0,
            }),
            note: "agent 0815".into(),
        }],
        fields: [("caller_mood".to_string(), "frightened".to_string())].into(),
        ..pb::Ticket::default()
    }
}

/// Attaching (or updating) [`ticket`] with `summary` to `call_id`, based on any version.
fn attach_summary(call_id: &str, summary: String) -> Action {
    Action::AttachTicket(pb::AttachTicket {
        call_id: call_id.to_string(),
        ticket: Some(pb::Ticket {
            summary,
            ..ticket()
        }),
        base_version: None,
    })
}

/// `ticket` without what the gateway sets (its version, who updated it and when).
fn as_attached(ticket: &pb::Ticket) -> pb::Ticket {
    pb::Ticket {
        version: 0,
        updated_by: String::new(),
        updated_at: None,
        ..ticket.clone()
    }
}

/// A unary client of the gateway's work-order service.
async fn unary_client(
    gateway: &Gateway,
) -> pb::work_order_service_client::WorkOrderServiceClient<tonic::transport::Channel> {
    match pb::work_order_service_client::WorkOrderServiceClient::connect(format!(
        "http://{}",
        gateway.grpc
    ))
    .await
    {
        Ok(c) => c,
        Err(e) => panic!("{e}"),
    }
}

/// 12345 transfers `call_id` to 110 by command; 110 answers with media and the agent is
/// released: 110's RTP peer.
async fn transfer_to_110_by_command(
    hotline: &mut Platform,
    call_id: &str,
    police: &mut Ua,
    agent: &mut Ua,
) -> common::RtpPeer {
    let transferred = hotline
        .command(Action::Transfer(pb::Transfer {
            call_id: call_id.to_string(),
            target: "110".into(),
        }))
        .await;
    assert!(transferred.ok, "{transferred:?}");
    let invite = police.expect_request("INVITE").await;
    let rtp = common::answer_with_media(police, &invite, &[8]).await;
    let bye = agent.expect_request("BYE").await;
    agent.send_response(&agent.answer(&bye, 200, None)).await;
    rtp
}

/// An `authorization: Bearer` request.
fn bearer<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    let value = format!("Bearer {token}");
    request.metadata_mut().insert(
        "authorization",
        value.parse().unwrap_or_else(|_| unreachable!()),
    );
    request
}

#[tokio::test]
async fn a_ticket_travels_with_the_transfer_and_110_answers_back() {
    let (mut gateway, mut citizen, mut agent, mut police) = setup().await;
    let mut hotline = Platform::connect(gateway.grpc, "12345", TOKEN_12345, None).await;
    let mut cad = Platform::connect(gateway.grpc, "110", TOKEN_110, None).await;

    // The citizen calls 12345: its system sees the call offered, ringing and answered.
    let call = establish(&mut citizen, &mut agent, &[8], &[8]).await;
    let offered = hotline.expect(EventType::CallOffered).await;
    assert_eq!(offered.citizen_number, "13800138000");
    assert_eq!(offered.called_number, "12345");
    assert_eq!(offered.sequence, 1);
    assert_eq!(
        offered
            .called_leg
            .as_ref()
            .map(|b| (b.peer.as_str(), b.platform.as_str())),
        Some(("hotline", "12345"))
    );
    let call_id = offered.call_id.clone();
    hotline.expect(EventType::CallRinging).await;
    hotline.expect(EventType::CallAnswered).await;

    // It attaches a ticket, then asks for the transfer to 110 (the same operation as REFER).
    let attached = hotline
        .command(Action::AttachTicket(pb::AttachTicket {
            call_id: call_id.clone(),
            ticket: Some(ticket()),
            base_version: None,
        }))
        .await;
    assert!(attached.ok, "{attached:?}");
    let event = hotline.expect(EventType::TicketAttached).await;
    assert_eq!(event.ticket.map(|t| t.number), Some(ticket().number));
    let transferred = hotline
        .command(Action::Transfer(pb::Transfer {
            call_id: call_id.clone(),
            target: "110".into(),
        }))
        .await;
    assert!(transferred.ok, "{transferred:?}");

    // 110's CAD gets the call with the ticket and the linkage as its phone rings.
    let invite = police.expect_request("INVITE").await;
    assert_eq!(
        invite.from().and_then(|f| f.uri.user),
        Some("13800138000".into())
    );
    let pushed = cad.expect(EventType::TransferRequested).await;
    assert_eq!(pushed.call_id, call_id);
    assert_eq!(pushed.citizen_number, "13800138000");
    assert_eq!(pushed.sequence, 1, "110's own sequence");
    let linkage_id = pushed.linkage_id.clone();
    assert_eq!(
        invite.headers.get("X-Hotline-Linkage"),
        Some(linkage_id.as_str())
    );
    let pushed_ticket = pushed.ticket.clone().unwrap_or_default();
    assert_eq!(
        as_attached(&pushed_ticket),
        ticket(),
        "the ticket exactly as 12345 attached it"
    );
    assert_eq!(
        (pushed_ticket.version, pushed_ticket.updated_by.as_str()),
        (1, "12345")
    );
    assert_eq!(
        pushed.agent.as_ref().map(|a| a.platform.as_str()),
        Some("12345"),
        "who sent it"
    );
    hotline.expect(EventType::TransferRequested).await;

    police
        .send_response(&police.answer(&invite, 180, None))
        .await;
    let _police_rtp = common::answer_with_media(&mut police, &invite, &[8]).await;
    let bye = agent.expect_request("BYE").await;
    agent.send_response(&agent.answer(&bye, 200, None)).await;
    for platform in [&mut cad, &mut hotline] {
        platform.expect(EventType::TransferRinging).await;
        let answered = platform.expect(EventType::TransferAnswered).await;
        assert_eq!(answered.linkage_id, linkage_id);
    }

    // 110 opens an incident and later closes it: 12345 hears both.
    let reply_of = |incident: &str, disposition: &str| {
        Action::Reply(pb::Reply {
            linkage_id: linkage_id.clone(),
            incident_number: incident.into(),
            disposition: disposition.into(),
            fields: Default::default(),
        })
    };
    let mut first_reply = None;
    for (id, incident, disposition) in [
        ("reply-1", "JJ-2026-000731", ""),
        ("reply-2", "JJ-2026-000731", "fire put out"),
    ] {
        let replied = cad
            .command_with_id(id, reply_of(incident, disposition))
            .await;
        assert!(replied.ok, "{replied:?}");
        let reply = hotline.expect(EventType::PeerReply).await;
        assert_eq!(reply.linkage_id, linkage_id);
        first_reply.get_or_insert(reply.event_id.clone());
        let reply = reply.reply.unwrap_or_default();
        assert_eq!(
            (reply.incident_number.as_str(), reply.disposition.as_str()),
            (incident, disposition)
        );
    }

    // The unary calls: the linkage as 110 may see it; the call among 110's active ones.
    let mut unary = unary_client(&gateway).await;
    let request = bearer(
        pb::GetLinkageRequest {
            linkage_id: linkage_id.clone(),
        },
        TOKEN_110,
    );
    let linkage = match unary.get_linkage(request).await {
        Ok(r) => r.into_inner().linkage.unwrap_or_default(),
        Err(e) => panic!("{e}"),
    };
    assert_eq!(
        (linkage.kind, linkage.trigger, linkage.outcome),
        (
            pb::LinkageKind::Transfer as i32,
            pb::LinkageTrigger::Api as i32,
            pb::LinkageOutcome::Answered as i32
        )
    );
    // 110's incident number and disposition are in the linkage's record.
    assert_eq!(
        (
            linkage.incident_number.as_str(),
            linkage.disposition.as_str()
        ),
        ("JJ-2026-000731", "fire put out")
    );
    assert!(linkage.replied_at.is_some());
    let active = match unary
        .list_active_calls(bearer(pb::ListActiveCallsRequest::default(), TOKEN_110))
        .await
    {
        Ok(r) => r.into_inner(),
        Err(e) => panic!("{e}"),
    };
    assert_eq!(active.calls.len(), 1);
    assert_eq!(active.next_page_token, "");
    assert_eq!(
        active.calls[0].ticket.as_ref().map(as_attached),
        Some(ticket())
    );
    let request = bearer(
        pb::GetCallRequest {
            call_id: call_id.clone(),
        },
        TOKEN_110,
    );
    let info = match unary.get_call(request).await {
        Ok(r) => r.into_inner().call.unwrap_or_default(),
        Err(e) => panic!("{e}"),
    };
    assert!(info.answered_at.is_some());
    assert_eq!(
        info.called_leg.map(|b| (b.peer, b.platform)),
        Some(("police".to_string(), "110".to_string())),
        "leg B is 110's now"
    );
    let request = bearer(
        pb::GetCallRequest {
            call_id: call_id.clone(),
        },
        "not-a-token",
    );
    assert_eq!(
        unary.get_call(request).await.err().map(|s| s.code()),
        Some(tonic::Code::Unauthenticated)
    );

    // The citizen hangs up: both sides see the end.
    let bye = citizen.in_dialog(&call.invite, &call.ok, "BYE", 2, "");
    citizen.send_request(&bye).await;
    citizen.expect_response("BYE", 200).await;
    let bye = police.expect_request("BYE").await;
    police.send_response(&police.answer(&bye, 200, None)).await;
    let mut ended_at_12345 = 0;
    for platform in [&mut cad, &mut hotline] {
        let ended = platform.expect(EventType::CallEnded).await;
        assert_eq!(ended.ended_by, pb::EndedBy::Caller as i32);
        ended_at_12345 = ended.sequence;
    }

    // After a restart (the command window is gone) 110 sends its first reply again: 12345
    // gets it under the same event id, a duplicate it drops.
    gateway.restart().await;
    let mut cad = Platform::connect(gateway.grpc, "110", TOKEN_110, None).await;
    let again = cad
        .command_with_id("reply-1", reply_of("JJ-2026-000731", ""))
        .await;
    assert!(again.ok && !again.replayed, "{again:?}");
    let mut hotline = Platform::connect(gateway.grpc, "12345", TOKEN_12345, None).await;
    let repeated = loop {
        let reply = hotline.until(EventType::PeerReply).await;
        if reply.sequence > ended_at_12345 {
            break reply;
        }
    };
    assert_eq!(Some(repeated.event_id), first_reply);
    gateway.stop().await;
}

/// A source guessing tokens is answered UNAUTHENTICATED ten times, then RESOURCE_EXHAUSTED for
/// the rest of the minute (its logins are not even checked), and says so.
#[tokio::test]
async fn a_source_guessing_tokens_is_throttled() {
    let (mut gateway, _citizen, _agent, _police) = setup().await;
    for n in 0..10 {
        let refused = Platform::try_connect(gateway.grpc, "110", &format!("guess-{n}"), None).await;
        assert_eq!(
            refused.err().map(|s| s.code()),
            Some(tonic::Code::Unauthenticated)
        );
    }
    let throttled = Platform::try_connect(gateway.grpc, "110", TOKEN_110, None).await;
    let status = throttled.err();
    assert_eq!(
        status.as_ref().map(|s| s.code()),
        Some(tonic::Code::ResourceExhausted),
        "{status:?}"
    );
    assert!(status.is_some_and(|s| s.message().contains("too many wrong tokens")));
    gateway.stop().await;
}

#[tokio::test]
async fn commands_are_refused_with_clear_errors() {
    let (mut gateway, mut citizen, mut agent, _police) = setup().await;
    let refused = Platform::try_connect(gateway.grpc, "110", TOKEN_12345, None).await;
    assert_eq!(
        refused.err().map(|s| s.code()),
        Some(tonic::Code::Unauthenticated),
        "12345's token does not open 110's stream"
    );
    let mut hotline = Platform::connect(gateway.grpc, "12345", TOKEN_12345, None).await;
    let mut cad = Platform::connect(gateway.grpc, "110", TOKEN_110, None).await;
    let call = establish(&mut citizen, &mut agent, &[8], &[8]).await;
    let call_id = hotline.expect(EventType::CallOffered).await.call_id;
    // The agent keys #9 (a hotkey to a number no route reaches): the platform hears of it.
    for (cseq, digit) in [(2, '#'), (3, '9')] {
        let info = common::dtmf_info(&mut agent, &call, cseq, digit);
        agent.send_request(&info).await;
        agent.expect_response("INFO", 200).await;
    }
    let pressed = hotline.until(EventType::HotkeyPressed).await;
    assert_eq!(pressed.hotkey, "#9 transfer 999");
    // Incomplete or oversized commands are refused before anything is tried.
    for action in [
        Action::Mute(pb::Mute {
            call_id: call_id.clone(),
            party: None,
            muted: true,
        }),
        Action::Transfer(pb::Transfer {
            call_id: call_id.clone(),
            target: "1".repeat(100_000),
        }),
        Action::HangUp(pb::HangUp {
            call_id: "c".repeat(100_000),
            party: None,
        }),
    ] {
        let result = hotline.command(action).await;
        assert_eq!(result.error, pb::ErrorCode::Invalid as i32, "{result:?}");
        assert!(result.message.len() < 200, "{}", result.message.len());
    }

    let result = cad
        .command(Action::HangUp(pb::HangUp {
            call_id: call_id.clone(),
            party: None,
        }))
        .await;
    assert_eq!(
        (result.ok, result.error),
        (false, pb::ErrorCode::NotPermitted as i32),
        "110 may not command a call it is not in: {result:?}"
    );
    let result = hotline
        .command(Action::Transfer(pb::Transfer {
            call_id: "no-such-call".into(),
            target: "110".into(),
        }))
        .await;
    assert_eq!(result.error, pb::ErrorCode::UnknownCall as i32);
    let result = hotline
        .command(Action::Transfer(pb::Transfer {
            call_id: call_id.clone(),
            target: "999".into(),
        }))
        .await;
    assert_eq!(result.error, pb::ErrorCode::NoRoute as i32, "{result:?}");
    let result = hotline
        .command(Action::Mute(pb::Mute {
            call_id: call_id.clone(),
            party: Some(5),
            muted: true,
        }))
        .await;
    assert_eq!(result.error, pb::ErrorCode::NotAllowedNow as i32);
    // 12345 hangs the call up: both UAs get a BYE.
    let result = hotline
        .command(Action::HangUp(pb::HangUp {
            call_id: call_id.clone(),
            party: None,
        }))
        .await;
    assert!(result.ok, "{result:?}");
    for ua in [&mut citizen, &mut agent] {
        let bye = ua.expect_request("BYE").await;
        ua.send_response(&ua.answer(&bye, 200, None)).await;
    }
    let ended = hotline.until(EventType::CallEnded).await;
    assert_eq!(ended.ended_by, pb::EndedBy::Gateway as i32);
    gateway.stop().await;
}

#[tokio::test]
async fn nothing_is_lost_across_a_disconnect_or_a_gateway_restart() {
    let (mut gateway, mut citizen, mut agent, _police) = setup().await;
    let mut hotline = Platform::connect(gateway.grpc, "12345", TOKEN_12345, None).await;
    let call = establish(&mut citizen, &mut agent, &[8], &[8]).await;
    let offered = hotline.expect(EventType::CallOffered).await;
    let ringing = hotline.expect(EventType::CallRinging).await;
    hotline.ack(offered.sequence).await;
    // The stream is handled in order: once a later command is answered, the ack is taken.
    let probe = hotline
        .command(Action::HangUp(pb::HangUp {
            call_id: "none".into(),
            party: None,
        }))
        .await;
    assert!(!probe.ok);
    // Seen but not acknowledged: it comes again, with the same id.
    let answered = hotline.expect(EventType::CallAnswered).await;
    drop(hotline);

    // While 12345's system is away, the call ends.
    common::caller_hangs_up(&mut citizen, &call, &mut [&mut agent]).await;
    gateway.ended_record(call.invite.call_id()).await;

    let mut hotline = Platform::connect(gateway.grpc, "12345", TOKEN_12345, None).await;
    assert_eq!(hotline.welcome.acknowledged, offered.sequence);
    let again = hotline.expect(EventType::CallRinging).await;
    assert_eq!(
        (again.sequence, &again.event_id),
        (ringing.sequence, &ringing.event_id)
    );
    let again = hotline.expect(EventType::CallAnswered).await;
    assert_eq!(
        again.event_id, answered.event_id,
        "a duplicate keeps its id"
    );
    let ended = hotline.expect(EventType::CallEnded).await;
    assert_eq!(ended.sequence, answered.sequence + 1, "no gap");
    hotline.ack(answered.sequence).await;
    // The acknowledgement is stored before the gateway goes down (the stream is in order).
    let probe = hotline
        .command(Action::HangUp(pb::HangUp {
            call_id: "none".into(),
            party: None,
        }))
        .await;
    assert!(!probe.ok);
    drop(hotline);

    // The gateway restarts: the outbox and the acknowledgements survive.
    gateway.restart().await;
    let mut hotline = Platform::connect(gateway.grpc, "12345", TOKEN_12345, None).await;
    assert_eq!(hotline.welcome.latest, ended.sequence);
    assert_eq!(hotline.welcome.acknowledged, answered.sequence);
    let after_restart = hotline.expect(EventType::CallEnded).await;
    assert_eq!(after_restart.event_id, ended.event_id);
    // New events continue the same sequence.
    citizen.set_gateway(gateway.sip);
    agent.set_gateway(gateway.sip);
    let _second = establish(&mut citizen, &mut agent, &[8], &[8]).await;
    let offered = hotline.expect(EventType::CallOffered).await;
    assert_eq!(offered.sequence, ended.sequence + 1);
    // A client may also start from any sequence it still has to read.
    let mut from_start = Platform::connect(gateway.grpc, "12345", TOKEN_12345, Some(1)).await;
    let first = from_start.expect(EventType::CallRinging).await;
    assert_eq!(first.sequence, 2);
    gateway.stop().await;
}

#[tokio::test]
async fn a_conference_by_command_pushes_the_ticket_and_reports_its_parties() {
    let (mut gateway, mut citizen, mut agent, mut police) = setup().await;
    let mut hotline = Platform::connect(gateway.grpc, "12345", TOKEN_12345, None).await;
    let mut cad = Platform::connect(gateway.grpc, "110", TOKEN_110, None).await;
    let call = establish(&mut citizen, &mut agent, &[8], &[8]).await;
    let call_id = hotline.until(EventType::CallAnswered).await.call_id;
    let result = hotline
        .command(Action::AttachTicket(pb::AttachTicket {
            call_id: call_id.clone(),
            ticket: Some(ticket()),
            base_version: None,
        }))
        .await;
    assert!(result.ok);
    let result = hotline
        .command(Action::Conference(pb::Conference {
            call_id: call_id.clone(),
            target: "110".into(),
        }))
        .await;
    assert!(result.ok, "{result:?}");
    let invite = police.expect_request("INVITE").await;
    let pushed = cad.expect(EventType::ConferenceRequested).await;
    assert_eq!(pushed.ticket.as_ref().map(as_attached), Some(ticket()));
    let _police_rtp = common::answer_with_media(&mut police, &invite, &[8]).await;
    cad.expect(EventType::TransferAnswered).await;
    cad.expect(EventType::ConferenceStarted).await;
    let mut joined = Vec::new();
    for _ in 0..3 {
        let event = cad.expect(EventType::PartyJoined).await;
        let party = event.party.unwrap_or_default();
        joined.push((party.party, party.peer));
    }
    assert_eq!(
        joined,
        vec![
            (0, "carrier".to_string()),
            (1, "hotline".to_string()),
            (2, "police".to_string())
        ]
    );
    // 12345 mutes its agent: accepted (party 1 is in the call).
    let result = hotline
        .command(Action::Mute(pb::Mute {
            call_id: call_id.clone(),
            party: Some(1),
            muted: true,
        }))
        .await;
    assert!(result.ok, "{result:?}");
    // 12345 hangs up 110's party: 110 gets a BYE, citizen and agent stay.
    let result = hotline
        .command(Action::HangUp(pb::HangUp {
            call_id: call_id.clone(),
            party: Some(2),
        }))
        .await;
    assert!(result.ok, "{result:?}");
    let bye = police.expect_request("BYE").await;
    police.send_response(&police.answer(&bye, 200, None)).await;
    let left = cad.until(EventType::PartyLeft).await;
    assert_eq!(left.party.map(|p| p.party), Some(2));
    cad.expect(EventType::ConferenceEnded).await;
    common::caller_hangs_up(&mut citizen, &call, &mut [&mut agent]).await;
    cad.expect(EventType::CallEnded).await;
    // GetStats: 12345's call held one conference, from the parties joining to 110 leaving.
    let mut unary = unary_client(&gateway).await;
    let request = pb::GetStatsRequest {
        since: None,
        service_level_secs: 0,
    };
    let stats = match unary.get_stats(bearer(request, TOKEN_12345)).await {
        Ok(r) => r.into_inner(),
        Err(e) => panic!("{e}"),
    };
    let conferences = stats.conferences.unwrap_or_default();
    assert_eq!(conferences.held, 1, "{conferences:?}");
    assert!(conferences.total_length_ms > 0, "{conferences:?}");
    assert_eq!(conferences.median_length_ms, conferences.total_length_ms);
    gateway.stop().await;
}

#[tokio::test]
async fn a_client_that_does_not_read_stalls_nobody() {
    let (mut gateway, mut citizen, mut agent, _police) = setup().await;
    // A second client of 12345 that never reads its stream.
    let _stuck = Platform::connect(gateway.grpc, "12345", TOKEN_12345, None).await;
    let mut hotline = Platform::connect(gateway.grpc, "12345", TOKEN_12345, None).await;
    let call = establish(&mut citizen, &mut agent, &[8], &[8]).await;
    let call_id = hotline.until(EventType::CallAnswered).await.call_id;
    // Far more events than any buffer holds.
    for n in 0..400 {
        let result = hotline
            .command(attach_summary(&call_id, format!("update {n}")))
            .await;
        assert!(result.ok);
    }
    let last = hotline.until(EventType::TicketUpdated).await;
    let mut last = last;
    while last.ticket.as_ref().map(|t| t.summary.as_str()) != Some("update 399") {
        last = hotline.expect(EventType::TicketUpdated).await;
    }
    // And calls go on: the citizen's BYE is answered, the agent gets its BYE.
    common::caller_hangs_up(&mut citizen, &call, &mut [&mut agent]).await;
    hotline.expect(EventType::CallEnded).await;
    gateway.stop().await;
}

#[tokio::test]
async fn the_events_tool_prints_a_platforms_stream_one_line_per_event() {
    let (mut gateway, mut citizen, mut agent, _police) = setup().await;
    let mut config = gateway.config().clone();
    config.api.grpc = gateway.grpc;
    let tail = tokio::spawn(async move {
        let mut out = Vec::new();
        let options = hotline_gateway::workorder::tail::TailOptions::default();
        let link = hotline_gateway::workorder::tail::LinkSettings::from(&config);
        let result =
            hotline_gateway::workorder::tail::tail(&link, "12345", options, &mut out).await;
        (result.is_ok(), String::from_utf8_lossy(&out).to_string())
    });
    let mut hotline = Platform::connect(gateway.grpc, "12345", TOKEN_12345, None).await;
    let call = establish(&mut citizen, &mut agent, &[8], &[8]).await;
    hotline.until(EventType::CallAnswered).await;
    common::caller_hangs_up(&mut citizen, &call, &mut [&mut agent]).await;
    hotline.until(EventType::CallEnded).await;
    // Stopping the gateway ends the stream, and the tool with it.
    gateway.stop().await;
    let (ended_cleanly, output) = match tokio::time::timeout(WAIT, tail).await {
        Ok(Ok(done)) => done,
        other => panic!("the tool did not end: {other:?}"),
    };
    assert!(ended_cleanly, "{output}");
    let lines: Vec<&str> = output.lines().collect();
    assert!(lines[0].starts_with("-- platform 12345"), "{output}");
    assert!(
        lines[1].starts_with("#1 ") && lines[1].contains(" CALL_OFFERED call="),
        "{output}"
    );
    assert!(
        lines[1].contains("citizen=13800138000 called=12345"),
        "{output}"
    );
    // The gateway says it is stopping, after the last event.
    assert_eq!(
        lines.last(),
        Some(&"-- the gateway is stopping"),
        "{output}"
    );
    assert!(
        lines[lines.len() - 2].contains("CALL_ENDED")
            && lines[lines.len() - 2].contains("ended_by=caller"),
        "{output}"
    );
}

/// gRPC server reflection is on: tools like grpcurl find the service without the proto file.
#[tokio::test]
async fn server_reflection_lists_the_work_order_service() {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    let (mut gateway, _citizen, _agent, _police) = setup().await;
    let channel = match tonic::transport::Endpoint::from_shared(format!("http://{}", gateway.grpc))
    {
        Ok(endpoint) => match endpoint.connect().await {
            Ok(channel) => channel,
            Err(e) => panic!("{e}"),
        },
        Err(e) => panic!("{e}"),
    };
    let mut client = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = match client
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
    {
        Ok(r) => r.into_inner(),
        Err(e) => panic!("{e}"),
    };
    let services = match responses.message().await {
        Ok(Some(response)) => match response.message_response {
            Some(MessageResponse::ListServicesResponse(list)) => {
                list.service.into_iter().map(|s| s.name).collect::<Vec<_>>()
            }
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    };
    assert!(
        services.contains(&"hotline.workorder.v1.WorkOrderService".to_string()),
        "{services:?}"
    );
    gateway.stop().await;
}

/// With `api.tls_cert` and `api.tls_key`, the endpoint speaks TLS (rustls): a client that
/// trusts the certificate gets its stream, a plain-text client gets nothing.
#[tokio::test]
async fn the_endpoint_can_require_tls() {
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => panic!("{e}"),
    };
    let certified = match rcgen::generate_simple_self_signed(vec!["localhost".to_string()]) {
        Ok(c) => c,
        Err(e) => panic!("{e}"),
    };
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let cert_pem = certified.cert.pem();
    for (path, pem) in [
        (&cert, cert_pem.clone()),
        (&key, certified.signing_key.serialize_pem()),
    ] {
        if let Err(e) = std::fs::write(path, pem) {
            panic!("{e}");
        }
    }
    let citizen = Ua::bind("carrier", LOCALHOST).await;
    let mut gateway = Gateway::start_configured(
        &[("carrier", citizen.address, "")],
        &[],
        "",
        "",
        &format!("\n[[platform]]\nname = \"110\"\ntoken = \"{TOKEN_110}\"\n"),
        |config| {
            config.api.tls_cert = Some(cert.clone());
            config.api.tls_key = Some(key.clone());
        },
    )
    .await;
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(cert_pem))
        .domain_name("localhost");
    let endpoint = tonic::transport::Endpoint::from_shared(format!("https://{}", gateway.grpc))
        .and_then(|e| e.tls_config(tls));
    let channel = match endpoint {
        Ok(e) => match e.connect().await {
            Ok(c) => c,
            Err(e) => panic!("TLS connect: {e}"),
        },
        Err(e) => panic!("{e}"),
    };
    let mut client = pb::work_order_service_client::WorkOrderServiceClient::new(channel);
    let hello = pb::LinkRequest {
        kind: Some(Out::Hello(pb::Hello {
            platform: "110".into(),
            token: TOKEN_110.into(),
            resume_after: None,
        })),
    };
    let mut stream = match client.link(tokio_stream::iter(vec![hello])).await {
        Ok(r) => r.into_inner(),
        Err(e) => panic!("{e}"),
    };
    assert!(matches!(
        stream.message().await,
        Ok(Some(pb::LinkResponse {
            kind: Some(In::Welcome(_))
        }))
    ));
    // Plain text to the TLS port does not get through.
    let plain = pb::work_order_service_client::WorkOrderServiceClient::connect(format!(
        "http://{}",
        gateway.grpc
    ))
    .await;
    let refused = match plain {
        Err(_) => true,
        Ok(mut client) => client
            .list_active_calls(pb::ListActiveCallsRequest::default())
            .await
            .is_err(),
    };
    assert!(refused);
    drop(stream);
    gateway.stop().await;
}

/// Harassment screening (滋扰治理): a caller on the blocklist is refused (603) and 12345 hears
/// of it; a caller's third call within ten minutes is flagged to 12345 and still goes through.
#[tokio::test]
async fn blocked_callers_are_refused_and_repeat_callers_flagged() {
    let (mut gateway, mut citizen, mut agent, _police) = setup().await;
    let mut hotline = Platform::connect(gateway.grpc, "12345", TOKEN_12345, None).await;
    let invite = citizen.invite(
        "12345",
        "13900000000",
        &common::sdp(citizen.address, &[8], "sendrecv"),
        "",
    );
    citizen.send_request(&invite).await;
    citizen.expect_response("INVITE", 603).await;
    let blocked = hotline.expect(EventType::CallBlocked).await;
    assert_eq!(
        (blocked.citizen_number.as_str(), blocked.sip_status),
        ("13900000000", 603)
    );
    // Its call id is the gateway's, as for every event: the refusal has a record of its own.
    assert_ne!(blocked.call_id, invite.call_id());
    let record = gateway
        .calls()
        .into_iter()
        .find(|c| c.id == blocked.call_id)
        .unwrap_or_else(|| panic!("no record {}", blocked.call_id));
    assert_eq!(
        (
            record.a_call_id.as_str(),
            record.end_reason.as_deref(),
            record.final_status
        ),
        (invite.call_id(), Some("blocklist"), Some(603))
    );
    agent
        .expect_nothing_then_marker(Duration::from_millis(200), "the agent's phone rang")
        .await;

    for n in 1..=3 {
        let call = establish(&mut citizen, &mut agent, &[8], &[8]).await;
        hotline.expect(EventType::CallOffered).await;
        if n == 3 {
            let flagged = hotline.expect(EventType::CallFlagged).await;
            assert_eq!(flagged.citizen_number, "13800138000");
            assert_eq!(flagged.reason, "repeat caller: 3 calls within 10 minutes");
        }
        hotline.expect(EventType::CallRinging).await;
        hotline.expect(EventType::CallAnswered).await;
        common::caller_hangs_up(&mut citizen, &call, &mut [&mut agent]).await;
        hotline.expect(EventType::CallEnded).await;
    }
    let (_, metrics) = gateway.http_get("/metrics").await;
    assert!(
        metrics.contains("hotline_calls_blocked_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("hotline_calls_flagged_total 1"),
        "{metrics}"
    );
    gateway.stop().await;
}

/// The store's disk is full while calls go on: their events are held, not lost, and reach the
/// platform in order and without a gap as soon as the store can write again.
#[tokio::test]
async fn events_of_calls_while_the_disk_is_full_arrive_once_there_is_space() {
    let (mut gateway, mut citizen, mut agent, _police) = setup_with(|config| {
        config.store.max_size_mb = Some(1);
        common::fill_store(
            config
                .store
                .path
                .as_deref()
                .unwrap_or_else(|| panic!("the test config has a store path")),
        );
    })
    .await;
    let mut hotline = Platform::connect(gateway.grpc, "12345", TOKEN_12345, None).await;
    for _ in 0..40 {
        let call = establish(&mut citizen, &mut agent, &[8], &[8]).await;
        common::caller_hangs_up(&mut citizen, &call, &mut [&mut agent]).await;
    }
    assert_eq!(gateway.metric("hotline_store_degraded").await, Some(1.0));

    common::free_store(&gateway.db);
    let (mut sequence, mut offered, mut ended) = (0, 0, 0);
    while ended < 40 {
        let Some(In::Event(event)) = hotline.receive().await.kind else {
            continue;
        };
        assert_eq!(event.sequence, sequence + 1, "{event:?}");
        sequence = event.sequence;
        match EventType::try_from(event.r#type).ok() {
            Some(EventType::CallOffered) => offered += 1,
            Some(EventType::CallEnded) => ended += 1,
            _ => {}
        }
    }
    assert_eq!(offered, 40);
    assert_eq!(
        gateway.metric("hotline_store_records_lost_total").await,
        Some(0.0)
    );
    gateway.stop().await;
}

/// A platform blocks a harasser's number through the API: the number's calls are refused (603,
/// CALL_BLOCKED) until it is unblocked, also after a gateway restart (the store keeps it).
#[tokio::test]
async fn a_platform_blocks_a_number_until_it_unblocks_it_across_a_restart() {
    let (mut gateway, mut citizen, mut agent, _police) = setup().await;
    let mut hotline = Platform::connect(gateway.grpc, "12345", TOKEN_12345, None).await;
    let block = |number: &str| {
        Action::Block(pb::Block {
            number: number.into(),
            reason: "harassing calls".into(),
            duration: Some(prost_types::Duration {
                seconds: 3600,
                nanos: 0,
            }),
        })
    };
    for number in ["not a number", "+", ""] {
        let refused = hotline.command(block(number)).await;
        assert_eq!(
            (refused.ok, pb::ErrorCode::try_from(refused.error).ok()),
            (false, Some(pb::ErrorCode::Invalid)),
            "{number:?}"
        );
    }
    assert!(hotline.command(block("13700000000")).await.ok);

    let harasser = |citizen: &mut Ua| {
        citizen.invite(
            "12345",
            "13700000000",
            &common::sdp(citizen.address, &[8], "sendrecv"),
            "",
        )
    };
    let invite = harasser(&mut citizen);
    citizen.send_request(&invite).await;
    citizen.expect_response("INVITE", 603).await;
    let blocked = hotline.until(EventType::CallBlocked).await;
    assert_eq!(blocked.citizen_number, "13700000000");

    // The store keeps it: still blocked after a restart.
    gateway.restart().await;
    for ua in [&mut citizen, &mut agent] {
        ua.set_gateway(gateway.sip);
    }
    let invite = harasser(&mut citizen);
    citizen.send_request(&invite).await;
    citizen.expect_response("INVITE", 603).await;
    agent
        .expect_nothing_then_marker(Duration::from_millis(200), "the agent's phone rang")
        .await;

    // Unblocked: the next call goes through; unblocking again is refused.
    let mut hotline = Platform::connect(gateway.grpc, "12345", TOKEN_12345, None).await;
    let unblock = || {
        Action::Unblock(pb::Unblock {
            number: "13700000000".into(),
        })
    };
    assert!(hotline.command(unblock()).await.ok);
    assert!(!hotline.command(unblock()).await.ok);
    let call =
        common::establish_to("12345", "13700000000", &mut citizen, &mut agent, &[8], &[8]).await;
    common::caller_hangs_up(&mut citizen, &call, &mut [&mut agent]).await;
    gateway.stop().await;
}

/// A client message over the 1 MiB limit ends its stream with RESOURCE_EXHAUSTED naming the
/// limit, at once: never a stream that stays open dropping every later command and Ack.
#[tokio::test]
async fn a_message_over_the_limit_ends_the_stream_with_a_status() {
    let (mut gateway, mut citizen, mut agent, _police) = setup().await;
    let call = establish(&mut citizen, &mut agent, &[8], &[8]).await;
    for size in [10_000_000, 4 * 1024 * 1024 + 1024] {
        let mut hotline = Platform::connect(gateway.grpc, "12345", TOKEN_12345, None).await;
        let call_id = hotline.until(EventType::CallAnswered).await.call_id;
        let mut huge = ticket();
        huge.summary = "x".repeat(size);
        hotline
            .send(Out::Command(pb::Command {
                command_id: "huge".into(),
                action: Some(Action::AttachTicket(pb::AttachTicket {
                    call_id,
                    ticket: Some(huge),
                    base_version: None,
                })),
            }))
            .await;
        let status = hotline.status().await;
        assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
        assert!(status.message().contains("1048576"), "{status:?}");
    }
    // The gateway is none the worse: a new stream works.
    let mut hotline = Platform::connect(gateway.grpc, "12345", TOKEN_12345, None).await;
    hotline.until(EventType::CallAnswered).await;
    common::caller_hangs_up(&mut citizen, &call, &mut [&mut agent]).await;
    hotline.until(EventType::CallEnded).await;
    gateway.stop().await;
}

/// A ticket over 256 KiB is refused with INVALID naming the limit, and the stream goes on; a
/// ticket at the limit reaches 110, with default client limits, before its phone rings.
#[tokio::test]
async fn a_ticket_over_its_limit_is_refused_and_one_at_the_limit_travels() {
    let (mut gateway, mut citizen, mut agent, mut police) = setup().await;
    let mut hotline = Platform::connect(gateway.grpc, "12345", TOKEN_12345, None).await;
    let mut cad = Platform::connect(gateway.grpc, "110", TOKEN_110, None).await;
    let _call = establish(&mut citizen, &mut agent, &[8], &[8]).await;
    let call_id = hotline.until(EventType::CallAnswered).await.call_id;
    let attach = |summary: String| attach_summary(&call_id, summary);
    let refused = hotline.command(attach("x".repeat(300 * 1024))).await;
    assert_eq!(
        (refused.ok, refused.error),
        (false, pb::ErrorCode::Invalid as i32)
    );
    assert!(refused.message.contains("262144"), "{refused:?}");
    let big = "y".repeat(255 * 1024);
    let attached = hotline.command(attach(big.clone())).await;
    assert!(attached.ok, "{attached:?}");
    assert_eq!(attached.ticket_version, 1, "the first version");
    let transferred = hotline
        .command(Action::Transfer(pb::Transfer {
            call_id: call_id.clone(),
            target: "110".into(),
        }))
        .await;
    assert!(transferred.ok, "{transferred:?}");
    let pushed = cad.expect(EventType::TransferRequested).await;
    assert_eq!(pushed.ticket.map(|t| t.summary.len()), Some(big.len()));
    let _invite = police.expect_request("INVITE").await;
    gateway.stop().await;
}

/// An Ack past the newest event ends the stream with OUT_OF_RANGE and acknowledges nothing,
/// so delivery goes on after a reconnect; a resume past the newest is refused the same way;
/// an Ack behind the last one is ignored, and a Notice says so.
#[tokio::test]
async fn acks_and_resumes_past_the_newest_event_are_refused_and_delivery_goes_on() {
    let (mut gateway, mut citizen, mut agent, _police) = setup().await;
    let mut hotline = Platform::connect(gateway.grpc, "12345", TOKEN_12345, None).await;
    let call = establish(&mut citizen, &mut agent, &[8], &[8]).await;
    let answered = hotline.until(EventType::CallAnswered).await;
    hotline.ack(answered.sequence).await;
    hotline.ack(1).await;
    let notice = loop {
        match hotline.receive().await.kind {
            Some(In::Notice(notice)) => break notice,
            Some(In::Event(event)) => hotline.events.push_back(event),
            _ => {}
        }
    };
    assert_eq!(notice.code, pb::NoticeCode::AckBehind as i32);
    assert!(notice.message.contains(&answered.sequence.to_string()));

    hotline.ack(answered.sequence + 1000).await;
    let status = hotline.status().await;
    assert_eq!(status.code(), tonic::Code::OutOfRange, "{status:?}");
    let refused = Platform::try_connect(gateway.grpc, "12345", TOKEN_12345, Some(5000)).await;
    assert_eq!(
        refused.err().map(|s| s.code()),
        Some(tonic::Code::OutOfRange)
    );

    // Nothing was acknowledged past what was handled: new events come as before.
    let mut hotline = Platform::connect(gateway.grpc, "12345", TOKEN_12345, None).await;
    assert_eq!(hotline.welcome.acknowledged, answered.sequence);
    common::caller_hangs_up(&mut citizen, &call, &mut [&mut agent]).await;
    let ended = hotline.expect(EventType::CallEnded).await;
    assert_eq!(ended.sequence, answered.sequence + 1);
    let _second = establish(&mut citizen, &mut agent, &[8], &[8]).await;
    let offered = hotline.expect(EventType::CallOffered).await;
    assert_eq!(offered.sequence, ended.sequence + 1);
    gateway.stop().await;
}

/// A Transfer repeated with its command_id (the result was lost, the client reconnected) is
/// answered as the first one was and not carried out again: 110 is called once.
#[tokio::test]
async fn a_repeated_transfer_is_answered_as_the_first_and_carried_out_once() {
    let (mut gateway, mut citizen, mut agent, mut police) = setup().await;
    let mut hotline = Platform::connect(gateway.grpc, "12345", TOKEN_12345, None).await;
    let call = establish(&mut citizen, &mut agent, &[8], &[8]).await;
    let call_id = hotline.until(EventType::CallAnswered).await.call_id;
    let transfer = || {
        Action::Transfer(pb::Transfer {
            call_id: call_id.clone(),
            target: "110".into(),
        })
    };
    let first = hotline.command_with_id("transfer-1", transfer()).await;
    assert!(first.ok && !first.replayed, "{first:?}");
    let invite = police.expect_request("INVITE").await;
    drop(hotline);
    let mut hotline = Platform::connect(gateway.grpc, "12345", TOKEN_12345, None).await;
    let again = hotline.command_with_id("transfer-1", transfer()).await;
    assert_eq!(
        (again.ok, again.replayed, again.error),
        (true, true, first.error)
    );
    // The same id for another command is refused; no id at all too.
    let reused = hotline
        .command_with_id(
            "transfer-1",
            Action::Transfer(pb::Transfer {
                call_id: call_id.clone(),
                target: "12345".into(),
            }),
        )
        .await;
    assert_eq!(reused.error, pb::ErrorCode::Invalid as i32, "{reused:?}");
    let anonymous = hotline.command_with_id("", transfer()).await;
    assert_eq!(anonymous.error, pb::ErrorCode::Invalid as i32);
    assert!(anonymous.message.contains("command_id"), "{anonymous:?}");

    // 110 answers the one INVITE; the next thing it gets is the citizen's BYE, not another
    // INVITE.
    let _police_rtp = common::answer_with_media(&mut police, &invite, &[8]).await;
    let bye = agent.expect_request("BYE").await;
    agent.send_response(&agent.answer(&bye, 200, None)).await;
    hotline.until(EventType::TransferAnswered).await;
    let bye = citizen.in_dialog(&call.invite, &call.ok, "BYE", 2, "");
    citizen.send_request(&bye).await;
    loop {
        match police.recv().await {
            hotline_gateway::sip::message::Message::Request(r) if r.method.as_str() == "BYE" => {
                police.send_response(&police.answer(&r, 200, None)).await;
                break;
            }
            hotline_gateway::sip::message::Message::Request(r) => assert!(
                r.method.as_str() != "INVITE" || r.call_id() == invite.call_id(),
                "a second INVITE: {r:?}"
            ),
            _ => {}
        }
    }
    assert_eq!(gateway.linkages(&call_id).len(), 1, "one linkage");
    gateway.stop().await;
}

/// The ticket's version goes up with each update, and an update based on an old version is
/// refused (another platform updated it first).
#[tokio::test]
async fn ticket_updates_carry_their_version_and_stale_ones_are_refused() {
    let (mut gateway, mut citizen, mut agent, _police) = setup().await;
    let mut hotline = Platform::connect(gateway.grpc, "12345", TOKEN_12345, None).await;
    let _call = establish(&mut citizen, &mut agent, &[8], &[8]).await;
    let call_id = hotline.until(EventType::CallAnswered).await.call_id;
    let attach = |base_version: u64, summary: &str| {
        let mut ticket = ticket();
        ticket.summary = summary.into();
        Action::AttachTicket(pb::AttachTicket {
            call_id: call_id.clone(),
            ticket: Some(ticket),
            base_version: Some(base_version),
        })
    };
    assert_eq!(hotline.command(attach(0, "first")).await.ticket_version, 1);
    hotline.expect(EventType::TicketAttached).await;
    let updated = hotline.command(attach(1, "second")).await;
    assert_eq!((updated.ok, updated.ticket_version), (true, 2));
    let event = hotline.expect(EventType::TicketUpdated).await;
    assert_eq!(
        event.ticket.map(|t| (t.version, t.summary, t.updated_by)),
        Some((2, "second".to_string(), "12345".to_string()))
    );
    let stale = hotline.command(attach(1, "stale")).await;
    assert_eq!(stale.error, pb::ErrorCode::Conflict as i32, "{stale:?}");
    // Based on none attached: refused, one is.
    let second_first = hotline.command(attach(0, "another first")).await;
    assert_eq!(second_first.error, pb::ErrorCode::Conflict as i32);
    gateway.stop().await;
}

/// `ListActiveCalls` pages: oldest first, a token for the next page, none after the last.
#[tokio::test]
async fn active_calls_come_a_page_at_a_time() {
    let (mut gateway, mut citizen, mut agent, _police) = setup().await;
    let mut hotline = Platform::connect(gateway.grpc, "12345", TOKEN_12345, None).await;
    let mut ids = Vec::new();
    let mut calls = Vec::new();
    for _ in 0..3 {
        calls.push(establish(&mut citizen, &mut agent, &[8], &[8]).await);
        ids.push(hotline.until(EventType::CallAnswered).await.call_id);
    }
    let mut unary = unary_client(&gateway).await;
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let request = pb::ListActiveCallsRequest {
            page_size: 2,
            page_token: token.clone(),
        };
        let page = match unary.list_active_calls(bearer(request, TOKEN_12345)).await {
            Ok(r) => r.into_inner(),
            Err(e) => panic!("{e}"),
        };
        pages += 1;
        seen.extend(page.calls.into_iter().map(|c| c.call_id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(pages, 2);
    seen.sort();
    ids.sort();
    assert_eq!(seen, ids, "each call once");
    let bad = pb::ListActiveCallsRequest {
        page_size: 2,
        page_token: "forged".into(),
    };
    assert_eq!(
        unary
            .list_active_calls(bearer(bad, TOKEN_12345))
            .await
            .err()
            .map(|s| s.code()),
        Some(tonic::Code::InvalidArgument)
    );
    gateway.stop().await;
}

/// Python stubs generated from `proto/` with the stock tools (grpcio-tools' protoc).
fn python_stubs() -> tempfile::TempDir {
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => panic!("{e}"),
    };
    let out = dir.path().display().to_string();
    let status = std::process::Command::new("python3")
        .args(["-m", "grpc_tools.protoc", "-I", "proto"])
        .arg(format!("--python_out={out}"))
        .arg(format!("--grpc_python_out={out}"))
        .arg("proto/hotline/workorder/v1/workorder.proto")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status();
    match status {
        Ok(s) if s.success() => dir,
        other => panic!(
            "python3 -m grpc_tools.protoc failed ({other:?}): pip install grpcio grpcio-tools \
             grpcio-reflection (.ci/run does)"
        ),
    }
}

/// Runs a script of `examples/python/` to its end; returns its exit status and output.
fn python(
    stubs: &std::path::Path,
    script: &str,
    args: &[String],
) -> tokio::task::JoinHandle<(bool, String)> {
    let child = std::process::Command::new("python3")
        .arg(format!("examples/python/{script}"))
        .args(args)
        .env("PYTHONPATH", stubs)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let child = match child {
        Ok(c) => c,
        Err(e) => panic!("python3: {e}"),
    };
    tokio::task::spawn_blocking(move || match child.wait_with_output() {
        Ok(output) => (
            output.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ),
        ),
        Err(e) => (false, e.to_string()),
    })
}

/// The Python client of `examples/python/`, on stubs from `proto/`: it follows 12345's
/// stream, acknowledges, attaches a ticket and transfers the answered call to 110, which gets
/// it with the citizen's number; the gateway keeps its acknowledgements.
#[tokio::test]
async fn a_python_client_from_the_proto_follows_acknowledges_and_transfers() {
    let stubs = python_stubs();
    let (mut gateway, mut citizen, mut agent, mut police) = setup().await;
    let client = python(
        stubs.path(),
        "client.py",
        &[
            "--target".into(),
            gateway.grpc.to_string(),
            "--platform".into(),
            "12345".into(),
            "--token".into(),
            TOKEN_12345.into(),
            "--transfer-to".into(),
            "110".into(),
            "--ticket-number".into(),
            "GD-PY-0001".into(),
            "--exit-after".into(),
            "TRANSFER_ANSWERED".into(),
            "--timeout".into(),
            "30".into(),
        ],
    );
    let call = establish(&mut citizen, &mut agent, &[8], &[8]).await;
    // Python takes its time to start: the INVITE comes once it has seen the answer.
    let invite = loop {
        match police.recv_within(Duration::from_secs(30)).await {
            Some(hotline_gateway::sip::message::Message::Request(r))
                if r.method.as_str() == "INVITE" =>
            {
                break r
            }
            Some(_) => continue,
            None => panic!("110 was never called"),
        }
    };
    assert_eq!(
        invite.from().and_then(|f| f.uri.user),
        Some("13800138000".into()),
        "the citizen's number"
    );
    let _police_rtp = common::answer_with_media(&mut police, &invite, &[8]).await;
    let bye = agent.expect_request("BYE").await;
    agent.send_response(&agent.answer(&bye, 200, None)).await;
    let (success, output) = match tokio::time::timeout(Duration::from_secs(40), client).await {
        Ok(Ok(done)) => done,
        other => panic!("the Python client did not finish: {other:?}"),
    };
    assert!(success, "{output}");
    assert!(output.contains("welcome latest="), "{output}");
    assert!(output.contains(" CALL_ANSWERED call="), "{output}");
    assert_eq!(
        output.matches("result ok=True error=UNSPECIFIED").count(),
        2,
        "the ticket and the transfer: {output}"
    );
    assert!(
        output
            .lines()
            .any(|l| l.contains(" TRANSFER_REQUESTED ") && l.contains("ticket=GD-PY-0001 v1")),
        "{output}"
    );
    let acknowledged: u64 = output
        .lines()
        .find_map(|l| l.strip_prefix("done acknowledged="))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("{output}"));
    let mut hotline = Platform::connect(gateway.grpc, "12345", TOKEN_12345, None).await;
    assert_eq!(
        hotline.welcome.acknowledged, acknowledged,
        "its acks were kept"
    );
    common::caller_hangs_up(&mut citizen, &call, &mut [&mut police]).await;
    hotline.until(EventType::CallEnded).await;
    gateway.stop().await;
}

/// Server reflection v1alpha, as grpcio-reflection's stock client (and older grpcurl,
/// Postman, Kreya) speak it, finds the service, its methods and the well-known types.
#[tokio::test]
async fn reflection_v1alpha_answers_a_stock_client() {
    let stubs = python_stubs();
    let (mut gateway, _citizen, _agent, _police) = setup().await;
    let run = python(
        stubs.path(),
        "reflection.py",
        &["--target".into(), gateway.grpc.to_string()],
    );
    let (success, output) = match tokio::time::timeout(Duration::from_secs(30), run).await {
        Ok(Ok(done)) => done,
        other => panic!("reflection.py did not finish: {other:?}"),
    };
    assert!(success, "{output}");
    for line in [
        "service hotline.workorder.v1.WorkOrderService",
        "method Link hotline.workorder.v1.LinkRequest hotline.workorder.v1.LinkResponse",
        "method GetCall hotline.workorder.v1.GetCallRequest hotline.workorder.v1.GetCallResponse",
        "field Event.time google.protobuf.Timestamp",
    ] {
        assert!(output.lines().any(|l| l == line), "{line}: {output}");
    }
    gateway.stop().await;
}

/// An event is on disk before the step it reports is seen: while another process holds the
/// store's write lock, the agent's phone does not ring and the citizen hears no ringing;
/// when the lock goes, each arrives with its event already committed.
#[tokio::test]
async fn a_step_is_seen_only_once_its_event_is_committed() {
    let (mut gateway, mut citizen, mut agent, _police) = setup().await;
    let events_of_12345 = |db: &std::path::Path| -> i64 {
        rusqlite::Connection::open(db)
            .and_then(|c| {
                c.query_row(
                    "SELECT COUNT(*) FROM outbox WHERE platform = '12345'",
                    [],
                    |row| row.get(0),
                )
            })
            .unwrap_or_else(|e| panic!("{e}"))
    };
    let lock = |db: &std::path::Path| {
        let other = rusqlite::Connection::open(db).unwrap_or_else(|e| panic!("{e}"));
        other
            .execute_batch("BEGIN IMMEDIATE")
            .unwrap_or_else(|e| panic!("{e}"));
        other
    };
    let window = Duration::from_millis(300);

    let holder = lock(&gateway.db);
    let invite = citizen.invite(
        "12345",
        "13800138000",
        &common::sdp(citizen.address, &[8], "sendrecv"),
        "",
    );
    citizen.send_request(&invite).await;
    agent
        .expect_nothing_then_marker(
            window,
            "the agent's phone rang before CALL_OFFERED was committed",
        )
        .await;
    drop(holder);
    let offered = agent.expect_request("INVITE").await;
    assert_eq!(
        events_of_12345(&gateway.db),
        1,
        "CALL_OFFERED on disk first"
    );

    let holder = lock(&gateway.db);
    agent
        .send_response(&agent.answer(&offered, 180, None))
        .await;
    citizen
        .expect_none_then_marker(
            window,
            "the citizen heard ringing before CALL_RINGING was committed",
            |m| matches!(m, hotline_gateway::sip::message::Message::Response(r) if r.status == 180),
        )
        .await;
    drop(holder);
    citizen.expect_response("INVITE", 180).await;
    assert_eq!(
        events_of_12345(&gateway.db),
        2,
        "CALL_RINGING on disk first"
    );
    agent
        .send_response(&agent.answer(&offered, 486, None))
        .await;
    citizen.expect_response("INVITE", 486).await;
    gateway.stop().await;
}

/// A client that stops reading while far more than its connection's window waits for it
/// cannot hold the gateway's shutdown: the streams get a grace to send what is committed,
/// then the connection is closed.
#[tokio::test]
async fn a_client_that_does_not_read_cannot_hold_the_shutdown() {
    let (mut gateway, mut citizen, mut agent, _police) = setup().await;
    let _stuck = Platform::connect(gateway.grpc, "12345", TOKEN_12345, None).await;
    let mut hotline = Platform::connect(gateway.grpc, "12345", TOKEN_12345, None).await;
    let _call = establish(&mut citizen, &mut agent, &[8], &[8]).await;
    let call_id = hotline.until(EventType::CallAnswered).await.call_id;
    // 40 tickets of 200 KiB: 8 MB for a client that reads nothing.
    for n in 0..40 {
        let big = format!("{n} {}", "z".repeat(200 * 1024));
        let result = hotline.command(attach_summary(&call_id, big)).await;
        assert!(result.ok, "{}", result.message);
    }
    let started = std::time::Instant::now();
    // `stop` fails the test if the gateway takes more than 15 s.
    gateway.stop().await;
    assert!(
        started.elapsed() < Duration::from_secs(12),
        "{:?}",
        started.elapsed()
    );
}

/// `ListActiveCalls` keeps a page within a message: calls with large tickets come a few to
/// the page, never an answer over the limit.
#[tokio::test]
async fn a_page_of_calls_with_large_tickets_stays_within_a_message() {
    let (mut gateway, mut citizen, mut agent, _police) = setup().await;
    let mut hotline = Platform::connect(gateway.grpc, "12345", TOKEN_12345, None).await;
    let mut calls = Vec::new();
    for n in 0..5 {
        calls.push(establish(&mut citizen, &mut agent, &[8], &[8]).await);
        let call_id = hotline.until(EventType::CallAnswered).await.call_id;
        let big = format!("{n} {}", "q".repeat(250 * 1024));
        let result = hotline.command(attach_summary(&call_id, big)).await;
        assert!(result.ok, "{}", result.message);
    }
    let mut unary = unary_client(&gateway).await;
    let (mut seen, mut token, mut pages) = (0, String::new(), 0);
    loop {
        let request = pb::ListActiveCallsRequest {
            page_size: 0,
            page_token: token.clone(),
        };
        let page = match unary.list_active_calls(bearer(request, TOKEN_12345)).await {
            Ok(r) => r.into_inner(),
            Err(e) => panic!("{e}"),
        };
        assert!(prost::Message::encoded_len(&page) <= 1024 * 1024);
        pages += 1;
        seen += page.calls.len();
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!((seen, pages), (5, 2));
    gateway.stop().await;
}

/// `[announcements.whisper]`: 12345 attaches a class D ticket and transfers the call to 110;
/// 110's operator, answering, first hears the class D prompt (a 880 Hz test prompt of 500 ms;
/// the class B one is 440 Hz), none of the citizen, and then the citizen's voice (1320 Hz).
#[tokio::test]
async fn the_110_operator_hears_the_tickets_urgency_class_before_the_citizen() {
    const CLASS_D_HZ: f64 = 880.0;
    const CLASS_B_HZ: f64 = 440.0;
    const CITIZEN_HZ: f64 = 1320.0;
    let prompts = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (class_d, class_b) = (
        prompts.path().join("class-d.wav"),
        prompts.path().join("class-b.wav"),
    );
    common::tone_wav(&class_d, CLASS_D_HZ, 4000);
    common::tone_wav(&class_b, CLASS_B_HZ, 4000);
    let (d, b) = (class_d.clone(), class_b.clone());
    let (gateway, mut citizen, mut agent, mut police) = setup_with(move |config| {
        let whisper = &mut config.announcements.whisper;
        whisper.platforms = vec!["110".into()];
        whisper.class_d = Some(d);
        whisper.class_b = Some(b);
    })
    .await;
    let mut hotline = Platform::connect(gateway.grpc, "12345", TOKEN_12345, None).await;
    let call = establish(&mut citizen, &mut agent, &[8], &[8]).await;
    let call_id = hotline.expect(EventType::CallOffered).await.call_id;
    let attached = hotline
        .command(attach_summary(&call_id, "fire".into()))
        .await;
    assert!(attached.ok, "{attached:?}");
    let police_rtp =
        transfer_to_110_by_command(&mut hotline, &call_id, &mut police, &mut agent).await;

    // The citizen talks all along; each 20 ms packet 110 gets is told by its tone.
    let tone = |frequency: f64, from: u32| -> Vec<u8> {
        (from..from + 160)
            .map(|n| {
                let t = f64::from(n) / 8000.0;
                let sample = (8000.0 * (2.0 * std::f64::consts::PI * frequency * t).sin()) as i16;
                hotline_gateway::media::g711::linear_to_alaw(sample)
            })
            .collect()
    };
    let (mut heard, mut stamps) = (Vec::new(), Vec::new());
    let mut pace = tokio::time::interval(Duration::from_millis(20));
    let mut sent = 0u32;
    while heard.iter().filter(|h| **h == "citizen").count() < 10 {
        pace.tick().await;
        call.caller_rtp
            .send(
                call.gateway_a_media,
                8,
                sent as u16,
                sent * 160,
                0xc1,
                &tone(CITIZEN_HZ, sent * 160),
            )
            .await;
        sent += 1;
        while let Some(packet) = police_rtp.recv_within(Duration::from_millis(1)).await {
            let samples: Vec<i16> = packet
                .payload
                .iter()
                .map(|&c| hotline_gateway::media::g711::alaw_to_linear(c))
                .collect();
            let level = |f| common::tone_level(&samples, f);
            stamps.push(packet.timestamp);
            heard.push(if level(CLASS_D_HZ) > 4000.0 {
                "class D"
            } else if level(CLASS_B_HZ) > 4000.0 {
                "class B"
            } else if level(CITIZEN_HZ) > 4000.0 {
                "citizen"
            } else {
                "other"
            });
        }
        assert!(sent < 250, "110 never heard the citizen: {heard:?}");
    }
    let first_citizen = heard.iter().position(|h| *h == "citizen").unwrap_or(0);
    let first_whisper = heard.iter().position(|h| *h == "class D");
    assert_eq!(first_whisper, Some(0), "the prompt first: {heard:?}");
    // By the stream's own clock (a stalled test skips no time): 500 ms of the prompt.
    let whispered = stamps[first_citizen].wrapping_sub(stamps[0]);
    assert!(
        (3840..=4800).contains(&whispered),
        "{whispered} samples of the class D prompt before the citizen: {heard:?}"
    );
    assert!(!heard.contains(&"class B"), "only the ticket's class");
    assert!(
        heard[first_citizen..].iter().all(|h| *h != "class D"),
        "then only the citizen: {heard:?}"
    );
}

/// `GetStats`: after a call 12345's desk answered and transferred to 110 by command, 12345 sees
/// its desk's call (offered, answered within the service level) and the transfer 12345 → 110
/// connected; 110 sees the same transfer and no desk of its own; a service level over an hour
/// is INVALID_ARGUMENT and a wrong token UNAUTHENTICATED.
#[tokio::test]
async fn get_stats_gives_each_platform_its_figures() {
    let (mut gateway, mut citizen, mut agent, mut police) = setup().await;
    let mut hotline = Platform::connect(gateway.grpc, "12345", TOKEN_12345, None).await;
    let call = establish(&mut citizen, &mut agent, &[8], &[8]).await;
    let call_id = hotline.until(EventType::CallAnswered).await.call_id;
    let _police_rtp =
        transfer_to_110_by_command(&mut hotline, &call_id, &mut police, &mut agent).await;
    common::caller_hangs_up(&mut citizen, &call, &mut [&mut police]).await;
    hotline.until(EventType::CallEnded).await;

    let mut unary = unary_client(&gateway).await;
    let ask = |token: &str, secs: u32| {
        bearer(
            pb::GetStatsRequest {
                since: None,
                service_level_secs: secs,
            },
            token,
        )
    };
    let stats = match unary.get_stats(ask(TOKEN_12345, 0)).await {
        Ok(r) => r.into_inner(),
        Err(e) => panic!("{e}"),
    };
    assert_eq!(stats.service_level_secs, 20);
    let mine = stats.platform.unwrap_or_default();
    assert_eq!(
        (
            mine.offered,
            mine.answered,
            mine.abandoned,
            mine.answered_within
        ),
        (1, 1, 0, 1)
    );
    assert_eq!(
        stats
            .desks
            .iter()
            .map(|d| d.desk.as_str())
            .collect::<Vec<_>>(),
        vec!["hotline"]
    );
    let transfer = |linkages: &[pb::LinkageFigures]| {
        linkages
            .iter()
            .map(|l| {
                (
                    l.kind.clone(),
                    l.from_platform.clone(),
                    l.to.clone(),
                    l.requested,
                    l.connected,
                )
            })
            .collect::<Vec<_>>()
    };
    let expected = vec![(
        "transfer".to_string(),
        "12345".to_string(),
        "110".to_string(),
        1,
        1,
    )];
    assert_eq!(transfer(&stats.linkages), expected);
    assert!(stats.linkages[0].median_answer_ms > 0);

    let theirs = match unary.get_stats(ask(TOKEN_110, 0)).await {
        Ok(r) => r.into_inner(),
        Err(e) => panic!("{e}"),
    };
    assert_eq!(theirs.platform, None, "no call was offered to 110's desks");
    assert!(theirs.desks.is_empty());
    assert_eq!(
        transfer(&theirs.linkages),
        expected,
        "the transfer it received"
    );

    assert_eq!(
        unary
            .get_stats(ask(TOKEN_12345, 3601))
            .await
            .err()
            .map(|s| s.code()),
        Some(tonic::Code::InvalidArgument)
    );
    let all_time = bearer(
        pb::GetStatsRequest {
            since: Some(prost_types::Timestamp::default()),
            service_level_secs: 0,
        },
        TOKEN_12345,
    );
    assert_eq!(
        unary.get_stats(all_time).await.err().map(|s| s.code()),
        Some(tonic::Code::InvalidArgument),
        "a span over 31 days"
    );
    assert_eq!(
        unary
            .get_stats(ask("not-a-token", 0))
            .await
            .err()
            .map(|s| s.code()),
        Some(tonic::Code::Unauthenticated)
    );
    gateway.stop().await;
}
