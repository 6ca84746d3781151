//! The work-order link end to end: tonic clients play the 12345 work-order system and the 110
//! CAD around real SIP calls (in-process UAs on loopback): events in order at both sides, the
//! ticket pushed to 110 with the transfer, 110's replies back to 12345, commands and their
//! refusals, and nothing lost across a client's disconnect or a gateway restart.

mod common;

use std::net::IpAddr;

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

/// `ticket` without what the gateway sets (its version, who updated it and when).
fn as_attached(ticket: &pb::Ticket) -> pb::Ticket {
    pb::Ticket {
        version: 0,
        updated_by: String::new(),
        updated_at: None,
        ..ticket.clone()
    }
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
    let mut hotline = Platform::connect(gateway.grpc, "12345", TOKEN_12345, 0).await;
    let mut cad = Platform::connect(gateway.grpc, "110", TOKEN_110, 0).await;

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
            base_version: 0,
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
    for (incident, disposition) in [("JJ-2026-000731", ""), ("JJ-2026-000731", "fire put out")] {
        let replied = cad
            .command(Action::Reply(pb::Reply {
                linkage_id: linkage_id.clone(),
                incident_number: incident.into(),
                disposition: disposition.into(),
                fields: Default::default(),
            }))
            .await;
        assert!(replied.ok, "{replied:?}");
        let reply = hotline.expect(EventType::PeerReply).await;
        assert_eq!(reply.linkage_id, linkage_id);
        let reply = reply.reply.unwrap_or_default();
        assert_eq!(
            (reply.incident_number.as_str(), reply.disposition.as_str()),
            (incident, disposition)
        );
    }

    // The unary calls: the linkage as 110 may see it; the call among 110's active ones.
    let mut unary = match pb::work_order_service_client::WorkOrderServiceClient::connect(format!(
        "http://{}",
        gateway.grpc
    ))
    .await
    {
        Ok(c) => c,
        Err(e) => panic!("{e}"),
    };
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
    for platform in [&mut cad, &mut hotline] {
        let ended = platform.expect(EventType::CallEnded).await;
        assert_eq!(ended.ended_by, pb::EndedBy::Caller as i32);
    }
    gateway.stop().await;
}

#[tokio::test]
async fn commands_are_refused_with_clear_errors() {
    let (mut gateway, mut citizen, mut agent, _police) = setup().await;
    let refused = Platform::try_connect(gateway.grpc, "110", TOKEN_12345, 0).await;
    assert_eq!(
        refused.err().map(|s| s.code()),
        Some(tonic::Code::Unauthenticated),
        "12345's token does not open 110's stream"
    );
    let mut hotline = Platform::connect(gateway.grpc, "12345", TOKEN_12345, 0).await;
    let mut cad = Platform::connect(gateway.grpc, "110", TOKEN_110, 0).await;
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
            party: 5,
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
    let mut hotline = Platform::connect(gateway.grpc, "12345", TOKEN_12345, 0).await;
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

    let mut hotline = Platform::connect(gateway.grpc, "12345", TOKEN_12345, 0).await;
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
    let mut hotline = Platform::connect(gateway.grpc, "12345", TOKEN_12345, 0).await;
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
    let mut from_start = Platform::connect(gateway.grpc, "12345", TOKEN_12345, 1).await;
    let first = from_start.expect(EventType::CallRinging).await;
    assert_eq!(first.sequence, 2);
    gateway.stop().await;
}

#[tokio::test]
async fn a_conference_by_command_pushes_the_ticket_and_reports_its_parties() {
    let (mut gateway, mut citizen, mut agent, mut police) = setup().await;
    let mut hotline = Platform::connect(gateway.grpc, "12345", TOKEN_12345, 0).await;
    let mut cad = Platform::connect(gateway.grpc, "110", TOKEN_110, 0).await;
    let call = establish(&mut citizen, &mut agent, &[8], &[8]).await;
    let call_id = hotline.until(EventType::CallAnswered).await.call_id;
    let result = hotline
        .command(Action::AttachTicket(pb::AttachTicket {
            call_id: call_id.clone(),
            ticket: Some(ticket()),
            base_version: 0,
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
            party: 1,
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
    gateway.stop().await;
}

#[tokio::test]
async fn a_client_that_does_not_read_stalls_nobody() {
    let (mut gateway, mut citizen, mut agent, _police) = setup().await;
    // A second client of 12345 that never reads its stream.
    let _stuck = Platform::connect(gateway.grpc, "12345", TOKEN_12345, 0).await;
    let mut hotline = Platform::connect(gateway.grpc, "12345", TOKEN_12345, 0).await;
    let call = establish(&mut citizen, &mut agent, &[8], &[8]).await;
    let call_id = hotline.until(EventType::CallAnswered).await.call_id;
    // Far more events than any buffer holds.
    for n in 0..400 {
        let mut updated = ticket();
        updated.summary = format!("update {n}");
        let result = hotline
            .command(Action::AttachTicket(pb::AttachTicket {
                call_id: call_id.clone(),
                ticket: Some(updated),
                base_version: 0,
            }))
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
        let result =
            hotline_gateway::workorder::tail::tail(&config, "12345", options, &mut out).await;
        (result.is_ok(), String::from_utf8_lossy(&out).to_string())
    });
    let mut hotline = Platform::connect(gateway.grpc, "12345", TOKEN_12345, 0).await;
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
            resume_after: 0,
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
    let mut hotline = Platform::connect(gateway.grpc, "12345", TOKEN_12345, 0).await;
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
    assert!(
        agent
            .recv_within(std::time::Duration::from_millis(200))
            .await
            .is_none(),
        "the agent's phone never rang"
    );

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
        common::fill_store(&config.store.path);
    })
    .await;
    let mut hotline = Platform::connect(gateway.grpc, "12345", TOKEN_12345, 0).await;
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
    let mut hotline = Platform::connect(gateway.grpc, "12345", TOKEN_12345, 0).await;
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
    let refused = hotline.command(block("not a number")).await;
    assert_eq!(
        (refused.ok, pb::ErrorCode::try_from(refused.error).ok()),
        (false, Some(pb::ErrorCode::Invalid))
    );
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
    assert!(
        agent
            .recv_within(std::time::Duration::from_millis(200))
            .await
            .is_none(),
        "the agent's phone never rang"
    );

    // Unblocked: the next call goes through; unblocking again is refused.
    let mut hotline = Platform::connect(gateway.grpc, "12345", TOKEN_12345, 0).await;
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
