//! Several gateway nodes on one PostgreSQL store (`[store] url`, `[cluster] node`): a real
//! server of the test's own (Debian's `postgresql`), the store as the gateway opens it, and
//! gateways in this process and as processes of their own.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::postgres::Postgres;
use hotline_gateway::store::{
    CallRecord, CallStart, Changes, ClusterOptions, DatabaseUrl, NewEvent, OutboxReader, Store,
    StoreLocation, StoreOptions,
};

fn location(url: &str) -> StoreLocation {
    StoreLocation::Database(DatabaseUrl::parse(url).unwrap_or_else(|e| panic!("{url}: {e}")))
}

/// A node's store, as a gateway named `node` opens it (in a blocking task: the client blocks).
async fn node(url: &str, node: &str, lease: Duration) -> Store {
    let location = location(url);
    let options = StoreOptions {
        cluster: Some(ClusterOptions {
            node: node.into(),
            lease,
        }),
        recovery: Some(hotline_gateway::workorder::recovery::recovery(
            hotline_gateway::ids::IdGenerator::new(7),
            ["12345".to_string(), "110".to_string()].into(),
        )),
        ..StoreOptions::default()
    };
    tokio::task::spawn_blocking(move || Store::connect(&location, options))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|e| panic!("node {node}: {e}"))
}

fn call(id: &str) -> CallRecord {
    CallRecord::started(CallStart {
        id,
        a_call_id: &format!("a-{id}"),
        caller: "13800138000",
        called: "12345",
        a_peer: "carrier",
        started_at: 1_700_000_000_000,
    })
}

fn event(platform: &str, id: &str, call_id: &str) -> NewEvent {
    NewEvent {
        platform: platform.into(),
        event_id: id.into(),
        call_id: call_id.into(),
        created_at: 1_700_000_000_000,
        body: id.as_bytes().into(),
    }
}

/// Every event of `platform` in the shared outbox, in sequence order.
async fn outbox(url: &str, platform: &str) -> Vec<(u64, String)> {
    let (location, platform) = (location(url), platform.to_string());
    tokio::task::spawn_blocking(move || {
        let mut reader = OutboxReader::at(&location).unwrap_or_else(|e| panic!("{e}"));
        reader
            .read(&platform, 0, 100_000)
            .unwrap_or_else(|e| panic!("{e}"))
            .into_iter()
            .map(|r| (r.sequence, r.event_id))
            .collect()
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"))
}

/// Waits until `store`'s stream position of `platform` reaches `sequence`: the other node's
/// commits are announced by the database (LISTEN/NOTIFY).
async fn announced(store: &Store, platform: &str, sequence: u64) {
    let mut latest = store.outbox().subscribe(platform);
    let reached = tokio::time::timeout(common::WAIT, latest.wait_for(|l| *l >= sequence)).await;
    assert!(
        matches!(reached, Ok(Ok(_))),
        "{platform} not announced up to {sequence}: at {}",
        store.outbox().latest(platform)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_nodes_write_one_gapless_stream_per_platform_in_commit_order() {
    let postgres = Postgres::start();
    let url = postgres.database("hotline");
    let a = node(&url, "gw-a", Duration::from_secs(10)).await;
    let b = node(&url, "gw-b", Duration::from_secs(10)).await;
    // Both nodes commit at once, each a call and its events for both platforms.
    let write = |store: Store, name: &'static str| async move {
        for i in 0..60 {
            let id = format!("{name}-{i}");
            let mut changes = Changes::default();
            changes.call_started(call(&id));
            changes.events([
                event("12345", &format!("{id}-offered"), &id),
                event("110", &format!("{id}-110"), &id),
                event("12345", &format!("{id}-answered"), &id),
            ]);
            store.write(changes).await.unwrap_or_else(|e| panic!("{e}"));
        }
    };
    let (done_a, done_b) = tokio::join!(
        tokio::spawn(write(a.clone(), "a")),
        tokio::spawn(write(b.clone(), "b"))
    );
    done_a.unwrap_or_else(|e| panic!("{e}"));
    done_b.unwrap_or_else(|e| panic!("{e}"));
    let stream = outbox(&url, "12345").await;
    let sequences: Vec<u64> = stream.iter().map(|(s, _)| *s).collect();
    assert_eq!(
        sequences,
        (1..=240).collect::<Vec<u64>>(),
        "gapless, from 1"
    );
    let ids: HashSet<&str> = stream.iter().map(|(_, id)| id.as_str()).collect();
    assert_eq!(ids.len(), 240, "every event once");
    // Each node's own events keep their order within the stream, and both nodes are in it.
    for name in ["a", "b"] {
        let own: Vec<&str> = stream
            .iter()
            .map(|(_, id)| id.as_str())
            .filter(|id| id.starts_with(&format!("{name}-")))
            .collect();
        let expected: Vec<String> = (0..60)
            .flat_map(|i| {
                [
                    format!("{name}-{i}-offered"),
                    format!("{name}-{i}-answered"),
                ]
            })
            .collect();
        assert_eq!(own, expected, "node {name}'s events in its commit order");
    }
    assert_eq!(
        outbox(&url, "110")
            .await
            .iter()
            .map(|(s, _)| *s)
            .collect::<Vec<_>>(),
        (1..=120).collect::<Vec<u64>>()
    );
    // Each node's streams are told of the other's commits.
    announced(&a, "12345", 240).await;
    announced(&b, "12345", 240).await;
    announced(&b, "110", 120).await;
    // An acknowledgement taken on one node is the platform's position on the other.
    a.acknowledge("12345", 200)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    a.flush().await.unwrap_or_else(|e| panic!("{e}"));
    let deadline = tokio::time::Instant::now() + common::WAIT;
    while b.outbox().acknowledged("12345") < 200 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "node b never heard of node a's Ack"
        );
        // The notification has no event to await from outside the store: look again shortly.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let rows = postgres.sql(
        "hotline",
        "SELECT node, count(*) FROM calls GROUP BY node ORDER BY node",
    );
    assert_eq!(
        rows,
        vec![
            vec![Some("gw-a".into()), Some("60".into())],
            vec![Some("gw-b".into()), Some("60".into())]
        ]
    );
    a.shutdown().await.unwrap_or_else(|e| panic!("{e}"));
    b.shutdown().await.unwrap_or_else(|e| panic!("{e}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_nodes_open_calls_are_closed_once_by_one_survivor_with_their_ending_events() {
    let postgres = Postgres::start();
    let url = postgres.database("hotline");
    let lease = Duration::from_secs(3);
    // Node c carries two calls that 12345 was shown, the second with a transfer to 110 under
    // way and a conference party in, then goes silent.
    let c = node(&url, "gw-c", lease).await;
    for id in ["c-1", "c-2"] {
        let mut changes = Changes::default();
        changes.call_started(call(id));
        if id == "c-2" {
            changes.linkage(hotline_gateway::store::LinkageRecord {
                id: "l-1".into(),
                call_id: id.into(),
                from_platform: Some("12345".into()),
                from_peer: "hotline".into(),
                to_platform: Some("110".into()),
                to_peer: Some("police".into()),
                target: "110".into(),
                trigger: "api".into(),
                kind: "transfer".into(),
                requested_at: 1_700_000_001_000,
                ..Default::default()
            });
            changes.conference_party(hotline_gateway::store::ConferencePartyRecord {
                call_id: id.into(),
                party: 2,
                peer: "water".into(),
                number: "96116".into(),
                joined_at: 1_700_000_001_000,
                left_at: None,
            });
        }
        let offered = hotline_gateway::workorder::pb::Event {
            r#type: hotline_gateway::workorder::pb::EventType::CallOffered as i32,
            call_id: id.into(),
            citizen_number: "13800138000".into(),
            ..Default::default()
        };
        changes.events([NewEvent {
            body: prost::Message::encode_to_vec(&offered).into(),
            ..event("12345", &format!("{id}-offered"), id)
        }]);
        c.write(changes).await.unwrap_or_else(|e| panic!("{e}"));
    }
    c.shutdown().await.unwrap_or_else(|e| panic!("{e}"));
    // As a node killed mid-call leaves it: its lease unrenewed, nothing released.
    postgres.sql(
        "hotline",
        "UPDATE nodes SET closed_at = NULL, closed_by = NULL,
             expires_at = now() + interval '1 second' WHERE name = 'gw-c'",
    );
    // Two survivors, both looking for lost nodes at every renewal.
    let a = node(&url, "gw-a", lease).await;
    let b = node(&url, "gw-b", lease).await;
    // Two offers and, once, the ending of each call.
    announced(&a, "12345", 4).await;
    announced(&b, "12345", 4).await;
    let rows = postgres.sql(
        "hotline",
        "SELECT id, ended_by, end_reason, final_status FROM calls ORDER BY id",
    );
    assert_eq!(
        rows,
        ["c-1", "c-2"]
            .iter()
            .map(|id| vec![
                Some(id.to_string()),
                Some("gateway".into()),
                Some("node lost".into()),
                Some("503".into())
            ])
            .collect::<Vec<_>>()
    );
    let closer = postgres.sql("hotline", "SELECT closed_by FROM nodes WHERE name = 'gw-c'");
    assert!(
        matches!(
            closer
                .first()
                .and_then(|r| r.first())
                .cloned()
                .flatten()
                .as_deref(),
            Some("gw-a" | "gw-b")
        ),
        "{closer:?}"
    );
    // The proof that the window passed: each survivor has renewed its lease twice since the
    // close (a renewal is followed by its look for lost nodes, done before the next), and
    // then a new event still numbers fifth.
    let deadline = tokio::time::Instant::now() + 4 * lease;
    loop {
        let renewed = postgres.sql(
            "hotline",
            "SELECT count(*) FROM nodes n, nodes c WHERE c.name = 'gw-c'
                 AND n.name IN ('gw-a', 'gw-b')
                 AND n.expires_at > c.closed_at + interval '4 seconds'",
        );
        if renewed == vec![vec![Some("2".to_string())]] {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the survivors stopped renewing"
        );
        // A renewal has no event to await from outside: look again shortly.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut changes = Changes::default();
    changes.call_started(call("a-1"));
    changes.events([event("12345", "a-1-offered", "a-1")]);
    a.write(changes).await.unwrap_or_else(|e| panic!("{e}"));
    let stream = outbox(&url, "12345").await;
    assert_eq!(
        stream.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        (1..=7).collect::<Vec<u64>>(),
        "two offers, the endings once (not once per survivor), then a's: {stream:?}"
    );
    let events: Vec<hotline_gateway::workorder::pb::Event> = {
        let location = location(&url);
        tokio::task::spawn_blocking(move || {
            let mut reader = OutboxReader::at(&location).unwrap_or_else(|e| panic!("{e}"));
            reader
                .read("12345", 2, 4)
                .unwrap_or_else(|e| panic!("{e}"))
                .into_iter()
                .map(|r| prost::Message::decode(&*r.body).unwrap_or_else(|e| panic!("{e}")))
                .collect()
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"))
    };
    use hotline_gateway::workorder::pb::EventType as T;
    let mut endings: Vec<(String, i32)> = events
        .iter()
        .map(|e| (e.call_id.clone(), e.r#type))
        .collect();
    endings.sort();
    assert_eq!(
        endings,
        vec![
            ("c-1".to_string(), T::CallEnded as i32),
            ("c-2".to_string(), T::TransferFailed as i32),
            ("c-2".to_string(), T::ConferenceEnded as i32),
            ("c-2".to_string(), T::CallEnded as i32),
        ]
        .into_iter()
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect::<Vec<_>>()
    );
    for event in &events {
        if event.r#type != T::ConferenceEnded as i32 {
            assert_eq!(event.reason, "node lost", "{event:?}");
        }
        assert_eq!(event.citizen_number, "13800138000");
    }
    assert_eq!(
        postgres.sql(
            "hotline",
            "SELECT outcome, sip_status, ended_at IS NOT NULL FROM linkages"
        ),
        vec![vec![
            Some("failed".into()),
            Some("503".into()),
            Some("t".into())
        ]]
    );
    assert_eq!(
        postgres.sql(
            "hotline",
            "SELECT left_at IS NOT NULL FROM conference_parties"
        ),
        vec![vec![Some("t".into())]]
    );
    a.shutdown().await.unwrap_or_else(|e| panic!("{e}"));
    b.shutdown().await.unwrap_or_else(|e| panic!("{e}"));
}

const LOCALHOST: std::net::IpAddr = std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
const TOKEN_12345: &str = "token-of-the-12345-system";

const TOKEN_110: &str = "token-of-the-110-cad-system";

/// A gateway in this process on the shared store, as node `name`, with the citizen's carrier,
/// 12345's ACD and the 110 desk as its peers.
async fn gateway_node(
    url: &str,
    name: &str,
    carrier: std::net::SocketAddr,
    hotline: std::net::SocketAddr,
) -> common::Gateway {
    gateway_node_with(url, name, &[("carrier", carrier), ("hotline", hotline)]).await
}

async fn gateway_node_with(
    url: &str,
    name: &str,
    peers: &[(&str, std::net::SocketAddr)],
) -> common::Gateway {
    gateway_node_edited(url, name, peers, |_| {}).await
}

async fn gateway_node_edited(
    url: &str,
    name: &str,
    peers: &[(&str, std::net::SocketAddr)],
    edit: impl FnOnce(&mut hotline_gateway::config::Config),
) -> common::Gateway {
    let url = DatabaseUrl::parse(url).unwrap_or_else(|e| panic!("{e}"));
    let name = name.to_string();
    let peers: Vec<(&str, std::net::SocketAddr, &str)> = peers
        .iter()
        .map(|(peer, address)| {
            let extra = match *peer {
                "hotline" => "platform = \"12345\"",
                "police" => "platform = \"110\"\ntrusted = true",
                _ => "",
            };
            (*peer, *address, extra)
        })
        .collect();
    common::Gateway::start_configured(
        &peers,
        &[("12345", &["hotline"] as &[&str]), ("110", &["police"])]
            .into_iter()
            .filter(|(_, to)| peers.iter().any(|(peer, _, _)| to.contains(peer)))
            .collect::<Vec<_>>(),
        "transfer_ring_timeout_secs = 5\n",
        "",
        &format!(
            "\n[[platform]]\nname = \"12345\"\ntoken = \"{TOKEN_12345}\"\n\
             \n[[platform]]\nname = \"110\"\ntoken = \"{TOKEN_110}\"\n"
        ),
        move |config| {
            config.store.path = None;
            config.store.url = Some(url);
            config.cluster = Some(hotline_gateway::config::ClusterConfig {
                node: name,
                lease_secs: 3,
            });
            edit(config);
        },
    )
    .await
}

/// Two gateways in this process on one new database, gw-a and gw-b, with the citizen's
/// carrier and 12345's agent as their peers.
struct Pair {
    postgres: Postgres,
    citizen: common::Ua,
    agent: common::Ua,
    a: common::Gateway,
    b: common::Gateway,
}

impl Pair {
    async fn start() -> Pair {
        let postgres = Postgres::start();
        let url = postgres.database("hotline");
        let citizen = common::Ua::bind("carrier", LOCALHOST).await;
        let agent = common::Ua::bind("hotline", LOCALHOST).await;
        let a = gateway_node(&url, "gw-a", citizen.address, agent.address).await;
        let b = gateway_node(&url, "gw-b", citizen.address, agent.address).await;
        Pair {
            postgres,
            citizen,
            agent,
            a,
            b,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_platform_on_one_node_sees_every_nodes_calls_in_one_ordered_stream() {
    use common::platform::Platform;
    use hotline_gateway::workorder::pb::EventType;
    let Pair {
        postgres,
        mut citizen,
        mut agent,
        mut a,
        mut b,
    } = Pair::start().await;
    // 12345's system is connected to node a only.
    let mut hotline = Platform::connect(a.grpc, "12345", TOKEN_12345, None).await;
    // A citizen's call lands on node b.
    for ua in [&mut citizen, &mut agent] {
        ua.set_gateway(b.sip);
    }
    let on_b = common::establish(&mut citizen, &mut agent, &[8], &[8]).await;
    let offered = hotline.expect(EventType::CallOffered).await;
    assert_eq!(offered.sequence, 1);
    assert_eq!(offered.citizen_number, "13800138000");
    assert_eq!(hotline.expect(EventType::CallRinging).await.sequence, 2);
    let answered = hotline.expect(EventType::CallAnswered).await;
    assert_eq!(answered.sequence, 3);
    common::caller_hangs_up(&mut citizen, &on_b, &mut [&mut agent]).await;
    let ended = hotline.expect(EventType::CallEnded).await;
    assert_eq!((ended.sequence, &ended.call_id), (4, &offered.call_id));
    // The next call lands on node a and goes on numbering the same stream.
    for ua in [&mut citizen, &mut agent] {
        ua.set_gateway(a.sip);
    }
    let on_a = common::establish(&mut citizen, &mut agent, &[8], &[8]).await;
    let offered_a = hotline.expect(EventType::CallOffered).await;
    assert_eq!(offered_a.sequence, 5);
    assert_ne!(offered_a.call_id, offered.call_id);
    hotline.ack(answered.sequence).await;
    // The stream is handled in order: once a later command is answered, the Ack is taken.
    let probe = hotline
        .command(hotline_gateway::workorder::pb::command::Action::HangUp(
            hotline_gateway::workorder::pb::HangUp {
                call_id: "none".into(),
                party: None,
            },
        ))
        .await;
    assert!(!probe.ok);
    drop(hotline);
    common::caller_hangs_up(&mut citizen, &on_a, &mut [&mut agent]).await;
    // Each call is recorded under the node that carried it.
    let nodes = postgres.sql(
        "hotline",
        "SELECT node, ended_by FROM calls ORDER BY started_at",
    );
    assert_eq!(
        nodes,
        vec![
            vec![Some("gw-b".into()), Some("caller".into())],
            vec![Some("gw-a".into()), Some("caller".into())]
        ]
    );
    // 12345's system comes back on node b: it resumes after its last Ack, taken on node a.
    let mut again = Platform::connect(b.grpc, "12345", TOKEN_12345, None).await;
    assert_eq!(again.welcome.acknowledged, answered.sequence);
    let next = again.expect(EventType::CallEnded).await;
    assert_eq!((next.sequence, &next.event_id), (4, &ended.event_id));
    assert_eq!(again.expect(EventType::CallOffered).await.sequence, 5);
    assert_eq!(again.expect(EventType::CallRinging).await.sequence, 6);
    assert_eq!(again.expect(EventType::CallAnswered).await.sequence, 7);
    assert_eq!(again.expect(EventType::CallEnded).await.sequence, 8);
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn commands_sent_to_one_node_reach_the_call_on_another_and_the_list_shows_every_node() {
    use common::platform::Platform;
    use hotline_gateway::workorder::pb::{self, command::Action, EventType};
    let postgres = Postgres::start();
    let url = postgres.database("hotline");
    let mut citizen = common::Ua::bind("carrier", LOCALHOST).await;
    let mut agent = common::Ua::bind("hotline", LOCALHOST).await;
    let mut police = common::Ua::bind("police", LOCALHOST).await;
    let peers = [
        ("carrier", citizen.address),
        ("hotline", agent.address),
        ("police", police.address),
    ];
    let mut a = gateway_node_with(&url, "gw-a", &peers).await;
    let mut b = gateway_node_with(&url, "gw-b", &peers).await;
    let mut hotline = Platform::connect(a.grpc, "12345", TOKEN_12345, None).await;
    let mut cad = Platform::connect(a.grpc, "110", TOKEN_110, None).await;
    for ua in [&mut citizen, &mut agent, &mut police] {
        ua.set_gateway(b.sip);
    }
    let _on_b = common::establish(&mut citizen, &mut agent, &[8], &[8]).await;
    let offered = hotline.expect(EventType::CallOffered).await;
    let call_id = offered.call_id.clone();
    hotline.expect(EventType::CallRinging).await;
    hotline.expect(EventType::CallAnswered).await;

    // A's list shows the call B carries.
    let mut unary = pb::work_order_service_client::WorkOrderServiceClient::connect(format!(
        "http://{}",
        a.grpc
    ))
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let mut request = tonic::Request::new(pb::ListActiveCallsRequest::default());
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {TOKEN_12345}")
            .parse()
            .unwrap_or_else(|e| panic!("{e:?}")),
    );
    let listed = unary
        .list_active_calls(request)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_inner();
    assert_eq!(
        listed
            .calls
            .iter()
            .map(|c| c.call_id.as_str())
            .collect::<Vec<_>>(),
        vec![call_id.as_str()]
    );
    assert_eq!(listed.calls[0].citizen_number, "13800138000");
    // A's GetCall for it is b's answer; a platform the call does not involve is refused.
    let get = |token: &str| {
        let mut request = tonic::Request::new(pb::GetCallRequest {
            call_id: call_id.clone(),
        });
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {token}")
                .parse()
                .unwrap_or_else(|e| panic!("{e:?}")),
        );
        request
    };
    let got = unary
        .get_call(get(TOKEN_12345))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_inner();
    assert_eq!(
        got.call.map(|c| (c.call_id, c.citizen_number)),
        Some((call_id.clone(), "13800138000".to_string()))
    );
    let refused = unary.get_call(get(TOKEN_110)).await.err();
    assert_eq!(
        refused.map(|status| status.code()),
        Some(tonic::Code::PermissionDenied)
    );

    // A ticket attached on A is the call's on B: its result comes back on A's stream.
    let attached = hotline
        .command(Action::AttachTicket(pb::AttachTicket {
            call_id: call_id.clone(),
            ticket: Some(pb::Ticket {
                number: "GD-20261203-0001".into(),
                summary: "a gas smell on the stairs".into(),
                ..pb::Ticket::default()
            }),
            base_version: None,
        }))
        .await;
    assert!(attached.ok, "{attached:?}");
    assert_eq!(attached.ticket_version, 1);
    hotline.expect(EventType::TicketAttached).await;
    // The transfer commanded on A happens on B: 110's desk gets B's INVITE with the citizen's
    // number, and the ticket reaches 110's system connected to A.
    let transferred = hotline
        .command(Action::Transfer(pb::Transfer {
            call_id: call_id.clone(),
            target: "110".into(),
        }))
        .await;
    assert!(transferred.ok, "{transferred:?}");
    let invite = police.expect_request("INVITE").await;
    assert_eq!(
        invite.from().and_then(|f| f.uri.user),
        Some("13800138000".into())
    );
    let pushed = cad.expect(EventType::TransferRequested).await;
    assert_eq!(pushed.call_id, call_id);
    assert_eq!(
        pushed.ticket.map(|t| t.number),
        Some("GD-20261203-0001".into())
    );
    police
        .send_response(&police.answer(&invite, 180, None))
        .await;
    let _police_rtp = common::answer_with_media(&mut police, &invite, &[8]).await;
    let bye = agent.expect_request("BYE").await;
    agent.send_response(&agent.answer(&bye, 200, None)).await;
    cad.expect(EventType::TransferRinging).await;
    cad.expect(EventType::TransferAnswered).await;

    // 110 hangs the call up from A: B ends it.
    let hung_up = cad
        .command(Action::HangUp(pb::HangUp {
            call_id: call_id.clone(),
            party: None,
        }))
        .await;
    assert!(hung_up.ok, "{hung_up:?}");
    for ua in [&mut citizen, &mut police] {
        let bye = ua.expect_request("BYE").await;
        ua.send_response(&ua.answer(&bye, 200, None)).await;
    }
    let ended = cad.until(EventType::CallEnded).await;
    assert_eq!(ended.call_id, call_id);
    // Once ended, a command for it says so wherever it is sent.
    let late = hotline
        .command(Action::HangUp(pb::HangUp {
            call_id: call_id.clone(),
            party: None,
        }))
        .await;
    assert!(!late.ok);
    assert_eq!(late.error, pb::ErrorCode::UnknownCall as i32);
    assert_eq!(late.message, format!("call {call_id} has ended"));
    a.stop().await;
    b.stop().await;
}

/// Where `kamcmd dispatcher.list` says `node` is: its FLAGS (`AP` active, `IP` inactive).
fn dispatcher_flags(kamailio: &common::kamailio::Kamailio, node: std::net::SocketAddr) -> String {
    let output = std::process::Command::new("kamcmd")
        .arg("-s")
        .arg(format!("unix:{}/ctl", kamailio.dir.path().display()))
        .arg("dispatcher.list")
        .output()
        .unwrap_or_else(|e| panic!("kamcmd: {e}"));
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let uri = format!("URI: sip:{node}");
    text.split_once(&uri)
        .and_then(|(_, rest)| rest.split_once("FLAGS:"))
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .map(str::to_string)
        .unwrap_or_else(|| panic!("{node} not in the dispatcher's list:\n{text}"))
}

/// Waits until the dispatcher's FLAGS for `node` start with `flag` (`I` out, `A` active).
async fn dispatcher_marks(
    kamailio: &common::kamailio::Kamailio,
    node: std::net::SocketAddr,
    flag: char,
    what: &str,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !dispatcher_flags(kamailio, node).starts_with(flag) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the dispatcher never {what}:\n{}",
            kamailio.log()
        );
        // The dispatcher's state has no event to await from here: look again shortly.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A node's config: its SIP, gRPC and HTTP on fixed loopback ports (Kamailio's list names
/// them), the shared store, Kamailio as its front, the carrier and 12345's desk.
fn node_config(
    dir: &std::path::Path,
    node: &str,
    (sip, grpc, http): (u16, u16, u16),
    url: &str,
    kamailio: std::net::SocketAddr,
    (carrier, desk): (std::net::SocketAddr, std::net::SocketAddr),
) -> std::path::PathBuf {
    let [low, high] = common::media_block();
    let text = format!(
        "[sip]\nlisten = \"127.0.0.1:{sip}\"\n\
         [media]\naddress = \"127.0.0.1\"\nports = [{low}, {high}]\n\
         [store]\nurl = \"{url}\"\n\
         [cluster]\nnode = \"{node}\"\nlease_secs = 3\n\
         [api]\ngrpc = \"127.0.0.1:{grpc}\"\nhttp = \"127.0.0.1:{http}\"\n\
         [[peer]]\nname = \"kamailio\"\naddress = \"{kamailio}\"\nfront = true\n\
         [[peer]]\nname = \"carrier\"\naddress = \"{carrier}\"\n\
         [[peer]]\nname = \"hotline\"\naddress = \"{desk}\"\nplatform = \"12345\"\n\
         [[route]]\nnumber = \"12345\"\npeers = [\"hotline\"]\n\
         [[platform]]\nname = \"12345\"\ntoken = \"{TOKEN_12345}\"\n"
    );
    let path = dir.join(format!("{node}.toml"));
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("{e}"));
    path
}

/// A citizen's call through Kamailio, answered by the desk at whichever node it reached;
/// returns the node's SIP address, the citizen's INVITE and its 200.
async fn call_through_the_front(
    citizen: &mut common::Ua,
    desk: &mut common::Ua,
) -> (
    std::net::SocketAddr,
    hotline_gateway::sip::message::Request,
    hotline_gateway::sip::message::Response,
) {
    let offer = common::sdp(
        std::net::SocketAddr::new(LOCALHOST, 40000),
        &[8],
        "sendrecv",
    );
    let invite = citizen.invite("12345", "13800138000", &offer, "");
    citizen.send_request(&invite).await;
    let offered = desk.expect_request("INVITE").await;
    assert_eq!(
        offered.from().and_then(|f| f.uri.number()).as_deref(),
        Some("13800138000"),
        "the citizen's own number, through the front"
    );
    assert_eq!(
        offered.headers.get("X-Hotline-Source"),
        None,
        "never passed on"
    );
    let node = common::via_sent_by(&offered).unwrap_or_else(|| panic!("no Via: {offered:?}"));
    desk.set_gateway(node);
    let answer = common::sdp(
        std::net::SocketAddr::new(LOCALHOST, 40002),
        &[8],
        "sendrecv",
    );
    desk.send_response(&desk.answer(&offered, 200, Some(&answer)))
        .await;
    let ok = citizen.expect_response("INVITE", 200).await;
    // The node's answer carries Kamailio's Record-Route (RFC 3261 §12.1.1): the dialog's
    // requests go through the front both ways.
    let route = ok
        .headers
        .get("Record-Route")
        .unwrap_or_else(|| panic!("no Record-Route in the node's 200: {ok:?}"))
        .to_string();
    let mut ack = citizen.ack(&invite, &ok, "");
    ack.headers.push_front("Route", route);
    citizen.send_request(&ack).await;
    desk.expect_request("ACK").await;
    (node, invite, ok)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn behind_kamailio_a_killed_nodes_calls_are_closed_by_the_survivor_and_new_calls_go_on() {
    use common::platform::Platform;
    use common::process::{free_port, GatewayProcess};
    use hotline_gateway::workorder::pb::{self, EventType};
    let postgres = Postgres::start();
    let url = postgres.database("hotline");
    let mut citizen = common::Ua::bind("carrier", LOCALHOST).await;
    let mut desk = common::Ua::bind("hotline", LOCALHOST).await;
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let ports = |_| (free_port(), free_port(), free_port());
    let (a_ports, b_ports) = (ports(0), ports(1));
    let (a_sip, b_sip) = (
        std::net::SocketAddr::new(LOCALHOST, a_ports.0),
        std::net::SocketAddr::new(LOCALHOST, b_ports.0),
    );
    let list = dir.path().join("nodes.list");
    std::fs::write(&list, format!("1 sip:{a_sip}\n1 sip:{b_sip}\n"))
        .unwrap_or_else(|e| panic!("{e}"));
    let config =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy/kamailio/dispatcher.cfg");
    let kamailio = common::kamailio::Kamailio::start(
        &config,
        vec![
            format!("DS_LIST=\"{}\"", list.display()),
            "CTL=\"unix:{dir}/ctl\"".to_string(),
        ],
    )
    .await;
    let peers = (citizen.address, desk.address);
    let a_config = node_config(dir.path(), "gw-a", a_ports, &url, kamailio.address, peers);
    let b_config = node_config(dir.path(), "gw-b", b_ports, &url, kamailio.address, peers);
    let _a = GatewayProcess::start(&a_config);
    let b = GatewayProcess::start(&b_config);
    citizen.set_gateway(kamailio.address);
    let a_grpc = std::net::SocketAddr::new(LOCALHOST, a_ports.1);
    let b_grpc = std::net::SocketAddr::new(LOCALHOST, b_ports.1);
    // 12345's system: one client on each node.
    let mut on_a = Platform::connect(a_grpc, "12345", TOKEN_12345, None).await;
    let mut on_b = Platform::connect(b_grpc, "12345", TOKEN_12345, None).await;

    // Kamailio spreads four calls over the two nodes, two each.
    let mut calls = Vec::new();
    for _ in 0..4 {
        calls.push(call_through_the_front(&mut citizen, &mut desk).await);
    }
    let landed: Vec<std::net::SocketAddr> = calls.iter().map(|(node, _, _)| *node).collect();
    assert_eq!(
        landed.iter().filter(|n| **n == a_sip).count(),
        2,
        "{landed:?}"
    );
    assert_eq!(
        landed.iter().filter(|n| **n == b_sip).count(),
        2,
        "{landed:?}"
    );
    let nodes = postgres.sql(
        "hotline",
        "SELECT node, a_peer FROM calls ORDER BY node, started_at",
    );
    let expected: Vec<Vec<Option<String>>> = ["gw-a", "gw-a", "gw-b", "gw-b"]
        .iter()
        .map(|n| vec![Some(n.to_string()), Some("carrier".into())])
        .collect();
    assert_eq!(
        nodes, expected,
        "each call the carrier's, on the node that took it"
    );

    // The client on b has read and acknowledged everything so far (each call's events are
    // committed before its answer is passed on).
    let so_far: u64 = postgres.sql("hotline", "SELECT latest FROM outbox_sequences")[0][0]
        .as_deref()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no sequence"));
    assert_eq!(so_far, 8, "offered and answered, four times");
    let mut last = 0;
    while last < so_far {
        let event = on_b.receive().await;
        if let Some(pb::link_response::Kind::Event(event)) = event.kind {
            assert_eq!(event.sequence, last + 1, "in order, no gap");
            last = event.sequence;
        }
    }
    on_b.ack(so_far).await;
    let deadline = tokio::time::Instant::now() + common::WAIT;
    while postgres.sql("hotline", "SELECT sequence FROM outbox_acks")
        != vec![vec![Some(so_far.to_string())]]
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "b never stored the Ack"
        );
        // The store's commit has no event to await from here: look again shortly.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Node b dies with its two calls up.
    b.kill_9();
    drop(on_b);
    // Kamailio's probes find it gone...
    dispatcher_marks(&kamailio, b_sip, 'I', "took b out").await;
    // ...and every new call succeeds, on a.
    let mut on_a_calls = Vec::new();
    for _ in 0..3 {
        let call = call_through_the_front(&mut citizen, &mut desk).await;
        assert_eq!(call.0, a_sip);
        on_a_calls.push(call);
    }
    // The citizen hangs one up: the BYE goes by the route set, through Kamailio, to a.
    let (_, invite, ok) = &on_a_calls[0];
    let mut bye = citizen.in_dialog(invite, ok, "BYE", 2, "");
    if let Some(route) = ok.headers.get("Record-Route") {
        bye.headers.push_front("Route", route.to_string());
    }
    citizen.send_request(&bye).await;
    citizen.expect_response("BYE", 200).await;
    let bye = desk.expect_request("BYE").await;
    desk.send_response(&desk.answer(&bye, 200, None)).await;
    // Node a takes b's lease for lost and closes b's two calls, with their ending events.
    let mut closed = HashSet::new();
    while closed.len() < 2 {
        let ended = on_a.until(EventType::CallEnded).await;
        if ended.reason == "node lost" {
            assert_eq!(ended.ended_by, pb::EndedBy::Gateway as i32);
            closed.insert(ended.call_id);
        }
    }
    let rows = postgres.sql(
        "hotline",
        "SELECT ended_by, end_reason FROM calls WHERE node = 'gw-b'",
    );
    assert_eq!(
        rows,
        vec![vec![Some("gateway".into()), Some("node lost".into())]; 2]
    );
    // The client that was on b comes back on a: it resumes after its Ack, taken on b, and
    // gets everything since in order, the lost calls' endings among it.
    let mut back = Platform::connect(a_grpc, "12345", TOKEN_12345, None).await;
    assert_eq!(back.welcome.acknowledged, so_far);
    let mut next = so_far + 1;
    let mut endings = HashSet::new();
    while next <= back.welcome.latest {
        let event = back.receive().await;
        if let Some(pb::link_response::Kind::Event(event)) = event.kind {
            assert_eq!(
                event.sequence, next,
                "nothing missing, nothing out of order"
            );
            if event.reason == "node lost" {
                endings.insert(event.call_id);
            }
            next += 1;
        }
    }
    assert_eq!(endings, closed);

    // b comes back under its name: it starts clean (nothing of it left open to close again),
    // the dispatcher's probes bring it back, and calls land on both nodes again.
    let _b = GatewayProcess::start(&b_config);
    dispatcher_marks(&kamailio, b_sip, 'A', "took b back").await;
    let mut landed = HashSet::new();
    for _ in 0..2 {
        landed.insert(call_through_the_front(&mut citizen, &mut desk).await.0);
    }
    assert_eq!(landed, [a_sip, b_sip].into_iter().collect());
    assert_eq!(
        postgres.sql(
            "hotline",
            "SELECT count(*) FROM calls WHERE node = 'gw-b' AND end_reason = 'gateway restart'"
        ),
        vec![vec![Some("0".into())]]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_database_outage_is_a_degraded_store_calls_go_on_and_their_records_land_after() {
    use common::platform::Platform;
    use hotline_gateway::workorder::pb::EventType;
    let mut postgres = Postgres::start();
    let url = postgres.database("hotline");
    let mut citizen = common::Ua::bind("carrier", LOCALHOST).await;
    let mut agent = common::Ua::bind("hotline", LOCALHOST).await;
    let mut gateway = gateway_node(&url, "gw-a", citizen.address, agent.address).await;
    for ua in [&mut citizen, &mut agent] {
        ua.set_gateway(gateway.sip);
    }
    let mut hotline = Platform::connect(gateway.grpc, "12345", TOKEN_12345, None).await;
    let first = common::establish(&mut citizen, &mut agent, &[8], &[8]).await;
    common::caller_hangs_up(&mut citizen, &first, &mut [&mut agent]).await;
    assert_eq!(hotline.until(EventType::CallEnded).await.sequence, 4);
    gateway.metric_reaches("hotline_store_degraded", 0.0).await;

    // The database goes down: a citizen's call is still carried, end to end.
    postgres.stop();
    let second = common::establish(&mut citizen, &mut agent, &[8], &[8]).await;
    gateway.metric_reaches("hotline_store_degraded", 1.0).await;
    common::caller_hangs_up(&mut citizen, &second, &mut [&mut agent]).await;

    // It comes back: what was held lands, in order, and the platform gets it late but whole.
    postgres.spawn();
    gateway.metric_reaches("hotline_store_degraded", 0.0).await;
    let offered = hotline.expect(EventType::CallOffered).await;
    assert_eq!(offered.sequence, 5);
    assert_eq!(offered.citizen_number, "13800138000");
    hotline.expect(EventType::CallRinging).await;
    hotline.expect(EventType::CallAnswered).await;
    let ended = hotline.expect(EventType::CallEnded).await;
    assert_eq!((ended.sequence, &ended.call_id), (8, &offered.call_id));
    let rows = postgres.sql(
        "hotline",
        "SELECT count(*), count(ended_at), count(answered_at) FROM calls",
    );
    assert_eq!(
        rows,
        vec![vec![Some("2".into()), Some("2".into()), Some("2".into())]]
    );
    assert_eq!(
        gateway.metric("hotline_store_records_lost_total").await,
        Some(0.0)
    );
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_calls_command_lists_every_nodes_calls_with_their_node() {
    let postgres = Postgres::start();
    let url = postgres.database("hotline");
    for name in ["gw-a", "gw-b"] {
        let store = node(&url, name, Duration::from_secs(10)).await;
        let mut ended = call(&format!("{name}-1"));
        ended.ended_at = Some(1_700_000_060_000);
        ended.ended_by = Some("caller".into());
        let mut changes = Changes::default();
        changes.call_ended(ended);
        store.write(changes).await.unwrap_or_else(|e| panic!("{e}"));
        store.shutdown().await.unwrap_or_else(|e| panic!("{e}"));
    }
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let config = dir.path().join("gateway.toml");
    let sample =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/gateway.toml"))
            .unwrap_or_else(|e| panic!("{e}"));
    let text = sample.replace(
        "path = \"data/gateway.db\"",
        &format!(
            "url = \"{}\"",
            url.replace("gateway@", "gateway:not-shown@")
        ),
    ) + "\n[cluster]\nnode = \"gw-c\"\n";
    std::fs::write(&config, text).unwrap_or_else(|e| panic!("{e}"));
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_hotline-gateway"))
        .arg("--config")
        .arg(&config)
        .arg("calls")
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{table}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "{table}");
    assert!(lines[0].starts_with("node "), "{table}");
    let mut nodes: Vec<&str> = lines[1..]
        .iter()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    nodes.sort();
    assert_eq!(nodes, vec!["gw-a", "gw-b"]);
    // The CDR export reads the shared store too: every node's call, with its node.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_hotline-gateway"))
        .arg("--config")
        .arg(&config)
        .args(["calls", "--format", "json", "--since", "0"])
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    let json = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut nodes: Vec<String> = json
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter_map(|record| record["node"].as_str().map(str::to_string))
        .collect();
    nodes.sort();
    assert_eq!(nodes, vec!["gw-a", "gw-b"], "{json}");
    // A database it cannot reach is named, without its password.
    postgres.sql("postgres", "SELECT 1");
    drop(postgres);
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_hotline-gateway"))
        .arg("--config")
        .arg(&config)
        .arg("calls")
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    let error = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(error.contains("postgresql://gateway@127.0.0.1:"), "{error}");
    assert!(!error.contains("not-shown"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_caller_spread_over_the_nodes_is_still_flagged_as_a_repeat_caller() {
    use common::platform::Platform;
    use hotline_gateway::workorder::pb::EventType;
    let postgres = Postgres::start();
    let url = postgres.database("hotline");
    let mut citizen = common::Ua::bind("carrier", LOCALHOST).await;
    let mut agent = common::Ua::bind("hotline", LOCALHOST).await;
    let peers = [("carrier", citizen.address), ("hotline", agent.address)];
    let three = |config: &mut hotline_gateway::config::Config| config.screening.repeat_calls = 3;
    let mut a = gateway_node_edited(&url, "gw-a", &peers, three).await;
    let mut b = gateway_node_edited(&url, "gw-b", &peers, three).await;
    let mut hotline = Platform::connect(a.grpc, "12345", TOKEN_12345, None).await;
    // Calls one and two on b, the third on a: a has counted b's two.
    for node in [b.sip, b.sip] {
        for ua in [&mut citizen, &mut agent] {
            ua.set_gateway(node);
        }
        let call = common::establish(&mut citizen, &mut agent, &[8], &[8]).await;
        common::caller_hangs_up(&mut citizen, &call, &mut [&mut agent]).await;
        hotline.until(EventType::CallEnded).await;
    }
    a.metric_reaches("hotline_cluster_callers_noted_total", 2.0)
        .await;
    for ua in [&mut citizen, &mut agent] {
        ua.set_gateway(a.sip);
    }
    let third = common::establish(&mut citizen, &mut agent, &[8], &[8]).await;
    hotline.expect(EventType::CallOffered).await;
    let flagged = hotline.expect(EventType::CallFlagged).await;
    assert_eq!(flagged.citizen_number, "13800138000");
    assert_eq!(flagged.reason, "repeat caller: 3 calls within 10 minutes");
    common::caller_hangs_up(&mut citizen, &third, &mut [&mut agent]).await;
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_number_blocked_on_one_node_is_refused_on_the_other_until_unblocked() {
    use common::platform::Platform;
    use hotline_gateway::workorder::pb::{self, command::Action, EventType};
    let Pair {
        // Held to the end: dropped, the server stops.
        postgres: _postgres,
        mut citizen,
        mut agent,
        mut a,
        mut b,
    } = Pair::start().await;
    let mut hotline = Platform::connect(a.grpc, "12345", TOKEN_12345, None).await;
    let blocked = hotline
        .command(Action::Block(pb::Block {
            number: "13700000000".into(),
            reason: "harassing calls".into(),
            duration: None,
        }))
        .await;
    assert!(blocked.ok, "{blocked:?}");
    b.metric_reaches("hotline_cluster_blocklist_changes_total", 1.0)
        .await;
    // The harasser's call reaches b: refused there too.
    citizen.set_gateway(b.sip);
    let offer = common::sdp(citizen.address, &[8], "sendrecv");
    let invite = citizen.invite("12345", "13700000000", &offer, "");
    citizen.send_request(&invite).await;
    let refused = citizen.expect_response("INVITE", 603).await;
    citizen
        .send_request(&hotline_gateway::sip::message::ack_for_non_2xx(
            &invite, &refused,
        ))
        .await;
    assert_eq!(
        hotline.until(EventType::CallBlocked).await.citizen_number,
        "13700000000"
    );
    // Unblocked on a: b lets the next call through.
    let unblocked = hotline
        .command(Action::Unblock(pb::Unblock {
            number: "13700000000".into(),
        }))
        .await;
    assert!(unblocked.ok, "{unblocked:?}");
    b.metric_reaches("hotline_cluster_blocklist_changes_total", 2.0)
        .await;
    agent.set_gateway(b.sip);
    let call =
        common::establish_to("12345", "13700000000", &mut citizen, &mut agent, &[8], &[8]).await;
    common::caller_hangs_up(&mut citizen, &call, &mut [&mut agent]).await;
    // a's own change was not taken twice.
    assert_eq!(
        a.metric("hotline_cluster_blocklist_changes_total").await,
        Some(0.0)
    );
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn over_tls_the_store_checks_the_databases_certificate_and_plain_text_is_refused() {
    use hotline_gateway::store::DatabaseCa;
    let authority = common::pki::ca("hotline database CA");
    let server = common::pki::leaf(&authority);
    let postgres = Postgres::start_tls(&server.cert_pem, &server.key_pem);
    let url = postgres.database("hotline");
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let write = |name: &str, pem: String| {
        let path = dir.path().join(name);
        std::fs::write(&path, pem).unwrap_or_else(|e| panic!("{e}"));
        path
    };
    let ours = write("ca.pem", authority.pem());
    let theirs = write("other-ca.pem", common::pki::ca("someone else").pem());
    let open = |ca: Option<std::path::PathBuf>| {
        let url = url.clone();
        async move {
            let ca = ca.map(|path| DatabaseCa::read(&path).unwrap_or_else(|e| panic!("{e}")));
            let location = StoreLocation::Database(
                DatabaseUrl::parse(&url)
                    .unwrap_or_else(|e| panic!("{e}"))
                    .with_ca(ca),
            );
            let options = StoreOptions {
                cluster: Some(ClusterOptions {
                    node: "gw-a".into(),
                    lease: Duration::from_secs(10),
                }),
                ..StoreOptions::default()
            };
            tokio::task::spawn_blocking(move || Store::connect(&location, options))
                .await
                .unwrap_or_else(|e| panic!("{e}"))
        }
    };
    // Plain text: the server takes none.
    let plain = open(None)
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(plain.contains("no encryption"), "{plain}");
    // A certificate no configured CA signed: refused by the gateway.
    let stranger = open(Some(theirs))
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        stranger.to_lowercase().contains("certificate"),
        "{stranger}"
    );
    // With the database's CA: the store opens over TLS and writes.
    let store = open(Some(ours)).await.unwrap_or_else(|e| panic!("{e}"));
    let mut changes = Changes::default();
    changes.call_started(call("tls-1"));
    changes.events([event("12345", "tls-1-offered", "tls-1")]);
    store.write(changes).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        postgres.sql(
            "hotline",
            "SELECT c.id, s.ssl FROM calls c, pg_stat_ssl s
             JOIN pg_stat_activity a ON a.pid = s.pid
             WHERE a.application_name = 'hotline-gateway' LIMIT 1"
        ),
        vec![vec![Some("tls-1".into()), Some("t".into())]]
    );
    store.shutdown().await.unwrap_or_else(|e| panic!("{e}"));
}
