//! A route's queue against SIPp desks (Debian's sip-tester): a desk with a capacity
//! (`[[peer]] max_calls`) gets the queued citizen the moment its call ends; a full line
//! (`queue_max`) overflows at once to another centre's remote seat, which checks the
//! citizen's number; a citizen who hangs up waiting is recorded and reported as abandoned.
//! The citizens are in-process user agents with RTP sockets, so the test hears what they hear.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use common::process::free_port;
use common::sipp::{sipp_available, sipp_side, SippSide};
use common::{sdp, Gateway, RtpPeer, Ua};
use hotline_gateway::sip::message::{Request, Response};
use hotline_gateway::workorder::pb::EventType;

const LOCALHOST: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
const PROMPT_HZ: f64 = 660.0;
const PLATFORM: &str =
    "\n[[platform]]\nname = \"12345\"\ntoken = \"token-of-the-12345-platform\"\n";

/// A citizen on the line: its INVITE, the gateway's 200 and its RTP socket.
struct Citizen {
    invite: Request,
    ok: Response,
    rtp: RtpPeer,
}

impl Citizen {
    /// The citizen calls 12345 and is answered (by a desk, or by the queue); it ACKs.
    async fn calls(ua: &mut Ua) -> Citizen {
        let rtp = RtpPeer::bind(LOCALHOST).await;
        let invite = ua.invite(
            "12345",
            "13800138000",
            &sdp(rtp.address, &[8], "sendrecv"),
            "",
        );
        ua.send_request(&invite).await;
        let ok = ua.expect_response("INVITE", 200).await;
        let ack = ua.in_dialog(&invite, &ok, "ACK", 1, "");
        ua.send_request(&ack).await;
        Citizen { invite, ok, rtp }
    }

    /// The gateway's media address for the citizen (in its 200).
    fn gateway_media(&self) -> SocketAddr {
        hotline_gateway::sip::sdp::parse(self.ok.sdp().unwrap_or_default())
            .ok()
            .and_then(|s| Some(SocketAddr::new(s.connection?, s.media.first()?.port)))
            .unwrap_or_else(|| panic!("no media in the 200"))
    }

    /// Half a second of what the citizen hears, decoded (A-law).
    async fn hears(&self) -> Vec<i16> {
        let mut heard = Vec::new();
        while heard.len() < 4000 {
            let packet = self.rtp.recv().await;
            heard.extend(
                packet
                    .payload
                    .iter()
                    .map(|c| hotline_gateway::media::g711::alaw_to_linear(*c)),
            );
        }
        heard
    }

    /// The citizen speaks until it has heard itself back through the echoing SIPp desk.
    async fn hears_itself_through_the_desk(&self) -> usize {
        hears_itself(&self.rtp, self.gateway_media()).await
    }

    async fn hangs_up(&self, ua: &mut Ua) {
        let bye = ua.in_dialog(&self.invite, &self.ok, "BYE", 2, "");
        ua.send_request(&bye).await;
        ua.expect_response("BYE", 200).await;
    }
}

/// A citizen on `rtp` speaks to the gateway at `to` (a marked payload every 20 ms) until it
/// has heard itself back 10 times from an echoing SIPp desk (at most 4 s): how many times it
/// did.
async fn hears_itself(rtp: &RtpPeer, to: SocketAddr) -> usize {
    let mut pace = tokio::time::interval(Duration::from_millis(20));
    let mut heard = 0;
    for sequence in 0..200u16 {
        pace.tick().await;
        let timestamp = u32::from(sequence) * 160;
        rtp.send(to, 8, sequence, timestamp, 0xc171, &[0x3c; 160])
            .await;
        while let Some(packet) = rtp.recv_within(Duration::from_millis(1)).await {
            if packet.payload == [0x3c; 160] {
                heard += 1;
            }
        }
        if heard >= 10 {
            break;
        }
    }
    heard
}

/// Waits for a SIPp side to finish, off the runtime the gateway runs on.
async fn succeeds(side: SippSide, role: &'static str) {
    if let Err(e) = tokio::task::spawn_blocking(move || side.succeeds(role)).await {
        panic!("SIPp {role}: {e}");
    }
}

/// The 12345 desk (SIPp, echoing RTP) takes one call at a time (`max_calls = 1`); the retry
/// interval (60 s) is longer than the wait (30 s), so only a freed seat can put a queued
/// citizen through. Citizen 1 talks at the desk; citizen 2 is queued without an INVITE to
/// the full desk (QUEUED, 486) and hears the queue prompt (660 Hz); citizen 1 hangs up, and
/// citizen 2 is offered to the desk at once (QUEUE_OFFERED), with its number, and hears
/// itself through the desk. The wait is in the histogram.
#[tokio::test]
async fn a_desk_at_its_capacity_takes_the_queued_citizen_as_soon_as_its_call_ends() {
    assert!(sipp_available(), "sipp is not installed");
    let sipp_dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let prompts = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let prompt = prompts.path().join("queue.wav");
    common::tone_wav(&prompt, PROMPT_HZ, 8000);
    let desk_port = free_port();
    let desk = sipp_side(
        sipp_dir.path(),
        desk_port,
        "uas.xml",
        &["-rtp_echo", "-m", "2"],
    );
    let mut citizens = Ua::bind("carrier", LOCALHOST).await;
    let desk_address = SocketAddr::new(LOCALHOST, desk_port);
    let mut gateway = Gateway::start_with_tables(
        &[
            ("carrier", citizens.address, ""),
            ("hotline", desk_address, "platform = \"12345\"\nmax_calls = 1"),
        ],
        &[],
        "",
        "",
        &format!(
            "\n[[route]]\nnumber = \"12345\"\npeers = [\"hotline\"]\nqueue_secs = 30\nqueue_retry_secs = 60\n\
             \n[announcements]\nqueue = \"{}\"\n{PLATFORM}",
            prompt.display()
        ),
    )
    .await;
    citizens.set_gateway(gateway.sip);
    let mut platform = common::platform::Platform::connect(
        gateway.grpc,
        "12345",
        "token-of-the-12345-platform",
        None,
    )
    .await;

    let first = Citizen::calls(&mut citizens).await;
    assert!(
        first.hears_itself_through_the_desk().await >= 10,
        "citizen 1 at the desk"
    );
    let second = Citizen::calls(&mut citizens).await;
    let queued = platform.until(EventType::Queued).await;
    assert_eq!(queued.sip_status, 486, "the full desk counts as busy");
    // The status page shows one citizen talking at the desk and one waiting.
    let call_in = |state: &'static str| {
        move |board: &serde_json::Value| {
            board["calls"]
                .as_array()
                .is_some_and(|calls| calls.iter().any(|c| c["state"] == state))
        }
    };
    let board = gateway
        .board_until("a citizen queued", call_in("queued"))
        .await;
    let waiting = board["calls"]
        .as_array()
        .and_then(|calls| calls.iter().find(|c| c["state"] == "queued"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(waiting["id"], queued.call_id.as_str(), "{board}");
    assert!(waiting["queued_since"].is_i64(), "{board}");
    assert!(
        common::tone_level(&second.hears().await, PROMPT_HZ) > 6000.0,
        "citizen 2 hears the queue prompt"
    );
    first.hangs_up(&mut citizens).await;
    let offered = platform.until(EventType::QueueOffered).await;
    assert_eq!(offered.call_id, queued.call_id);
    assert_eq!(offered.target.map(|t| t.peer).as_deref(), Some("hotline"));
    assert!(
        offered.queue_wait_ms < 30_000,
        "offered by the freed seat, not at the end of the wait: {}",
        offered.queue_wait_ms
    );
    let answered = platform.until(EventType::CallAnswered).await;
    assert_eq!(answered.call_id, queued.call_id);
    assert!(answered.queue_wait_ms > 0);
    let queued_id = queued.call_id.clone();
    gateway
        .board_until("the queued citizen talking, nobody waiting", move |board| {
            board["calls"].as_array().is_some_and(|calls| {
                calls.iter().all(|c| c["state"] != "queued")
                    && calls
                        .iter()
                        .any(|c| c["id"] == queued_id.as_str() && c["state"] == "talking")
            })
        })
        .await;
    assert!(
        second.hears_itself_through_the_desk().await >= 10,
        "citizen 2 at the desk"
    );
    assert_eq!(
        gateway.metric("hotline_queue_answered_total").await,
        Some(1.0)
    );
    assert_eq!(
        gateway.metric("hotline_queue_wait_seconds_count").await,
        Some(1.0)
    );
    assert_eq!(gateway.metric("hotline_queue_waiting").await, Some(0.0));
    second.hangs_up(&mut citizens).await;
    succeeds(desk, "desk").await;
    let record = gateway.ended_record(second.invite.call_id()).await;
    assert!(record.answered_at.is_some(), "answered by the desk");
    assert_eq!(record.b_peer.as_deref(), Some("hotline"));
    gateway.stop().await;
}

/// The only desk (SIPp) answers every INVITE 486 and checks the citizen's number; the line
/// holds one caller (`queue_max = 1`). Citizen 1 waits in it; citizen 2 finds it full and
/// goes at once (QUEUE_OVERFLOWED, wait 0) to the remote seat (SIPp, checking the number
/// and the dialled 12345), and hears itself through it. Citizen 1 hangs up waiting:
/// QUEUE_ABANDONED with the wait, then CALL_ENDED; the record has no answer, ended by the
/// caller; the figures count one overflow and one abandon.
#[tokio::test]
async fn a_full_line_overflows_to_a_remote_seat_and_a_waiting_citizen_abandons() {
    assert!(sipp_available(), "sipp is not installed");
    let sipp_dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (desk_port, remote_port) = (free_port(), free_port());
    let busy_desk = sipp_side(sipp_dir.path(), desk_port, "desk_busy.xml", &[]);
    let remote = sipp_side(
        sipp_dir.path(),
        remote_port,
        "remote_seat_uas.xml",
        &["-rtp_echo", "-m", "1"],
    );
    let mut citizens = Ua::bind("carrier", LOCALHOST).await;
    let mut gateway = Gateway::start_with_tables(
        &[
            ("carrier", citizens.address, ""),
            ("hotline", SocketAddr::new(LOCALHOST, desk_port), "platform = \"12345\""),
            ("remote", SocketAddr::new(LOCALHOST, remote_port), "platform = \"12345\""),
        ],
        &[],
        "",
        "",
        &format!(
            "\n[[route]]\nnumber = \"12345\"\npeers = [\"hotline\"]\nqueue_secs = 60\nqueue_retry_secs = 1\n\
             queue_max = 1\noverflow = [\"remote\"]\n{PLATFORM}"
        ),
    )
    .await;
    citizens.set_gateway(gateway.sip);
    let mut platform = common::platform::Platform::connect(
        gateway.grpc,
        "12345",
        "token-of-the-12345-platform",
        None,
    )
    .await;

    let waiting = Citizen::calls(&mut citizens).await;
    let queued = platform.until(EventType::Queued).await;
    assert_eq!(queued.sip_status, 486);
    gateway.metric_reaches("hotline_queue_waiting", 1.0).await;
    let overflowing = Citizen::calls(&mut citizens).await;
    let overflowed = platform.until(EventType::QueueOverflowed).await;
    assert_ne!(overflowed.call_id, queued.call_id, "the newcomer overflows");
    assert_eq!(overflowed.queue_wait_ms, 0, "at once: the line is full");
    assert_eq!(overflowed.target.map(|t| t.peer).as_deref(), Some("remote"));
    assert!(
        overflowing.hears_itself_through_the_desk().await >= 10,
        "citizen 2 at the remote seat"
    );
    overflowing.hangs_up(&mut citizens).await;
    succeeds(remote, "remote seat").await;

    waiting.hangs_up(&mut citizens).await;
    let abandoned = platform.until(EventType::QueueAbandoned).await;
    assert_eq!(abandoned.call_id, queued.call_id);
    assert!(abandoned.queue_wait_ms > 0, "with the wait");
    let record = gateway.ended_record(waiting.invite.call_id()).await;
    assert_eq!(record.answered_at, None, "no desk answered");
    assert_eq!(record.ended_by.as_deref(), Some("caller"));
    gateway.metric_reaches("hotline_queue_waiting", 0.0).await;
    assert_eq!(
        gateway.metric("hotline_queue_abandons_total").await,
        Some(1.0)
    );
    assert_eq!(
        gateway.metric("hotline_queue_overflows_total").await,
        Some(1.0)
    );
    gateway.stop().await;
    drop(busy_desk);
}

/// A citizen (in-process UA) and a 110 operator (in-process UA) on a gateway whose route to
/// 12345 has a 2 s queue (offered again each second) over one desk that answers 486 to every
/// INVITE (SIPp, `desk_busy.xml`), overflowing to a remote seat (SIPp,
/// `remote_seat_linkage_uas.xml` run with `remote_args`); `tables` adds to the configuration.
struct BusyDeskBehind110 {
    gateway: Gateway,
    citizen: Ua,
    police: Ua,
    busy_desk: SippSide,
    remote: SippSide,
    _sipp_dir: tempfile::TempDir,
}

impl BusyDeskBehind110 {
    async fn start(remote_args: &[&str], tables: &str) -> BusyDeskBehind110 {
        assert!(sipp_available(), "sipp is not installed");
        let sipp_dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let (desk_port, remote_port) = (free_port(), free_port());
        let busy_desk = sipp_side(sipp_dir.path(), desk_port, "desk_busy.xml", &[]);
        let remote = sipp_side(
            sipp_dir.path(),
            remote_port,
            "remote_seat_linkage_uas.xml",
            remote_args,
        );
        let mut citizen = Ua::bind("carrier", LOCALHOST).await;
        let mut police = Ua::bind("police", LOCALHOST).await;
        let gateway = Gateway::start_with_tables(
            &[
                ("carrier", citizen.address, ""),
                ("police", police.address, "platform = \"110\""),
                (
                    "hotline",
                    SocketAddr::new(LOCALHOST, desk_port),
                    "platform = \"12345\"",
                ),
                (
                    "remote",
                    SocketAddr::new(LOCALHOST, remote_port),
                    "platform = \"12345\"",
                ),
            ],
            &[("110", &["police"])],
            "",
            "",
            &format!(
                "\n[[route]]\nnumber = \"12345\"\npeers = [\"hotline\"]\nqueue_secs = 2\n\
                 queue_retry_secs = 1\noverflow = [\"remote\"]\n{tables}"
            ),
        )
        .await;
        for ua in [&mut citizen, &mut police] {
            ua.set_gateway(gateway.sip);
        }
        BusyDeskBehind110 {
            gateway,
            citizen,
            police,
            busy_desk,
            remote,
            _sipp_dir: sipp_dir,
        }
    }
}

/// A 110 operator transfers the citizen to 12345, whose only desk (SIPp) answers 486 to
/// every INVITE: the transfer waits in 12345's queue (the operator's NOTIFY says 182 Queued,
/// 12345's stream QUEUED with the transfer's linkage id) while the citizen stays with the
/// operator; the wait (2 s, offered again each second) over, it overflows to the remote seat
/// (SIPp), which checks the citizen's number, the dialled 12345 and the linkage header, and
/// answers: the operator's NOTIFY says 200 and it is released, 12345's stream says
/// TRANSFER_ANSWERED with the wait, and the citizen hears itself through the seat.
#[tokio::test]
async fn a_transfer_to_busy_desks_waits_in_their_queue_and_overflows_with_the_linkage() {
    let BusyDeskBehind110 {
        mut gateway,
        mut citizen,
        mut police,
        busy_desk,
        remote,
        _sipp_dir,
    } = BusyDeskBehind110::start(&["-rtp_echo", "-m", "1"], PLATFORM).await;
    let mut platform = common::platform::Platform::connect(
        gateway.grpc,
        "12345",
        "token-of-the-12345-platform",
        None,
    )
    .await;
    // Followed from before the transfer: the few seconds it waits are all seen.
    let mut feed = gateway.status_feed().await;
    let call =
        common::establish_to("110", "13800138000", &mut citizen, &mut police, &[8], &[8]).await;
    let mut refer = police.uas_request(&call.incoming, "REFER", 2);
    refer.headers.push("Refer-To", "<sip:12345@gw>");
    police.send_request(&refer).await;
    police.expect_response("REFER", 202).await;

    let requested = platform.until(EventType::TransferRequested).await;
    let queued = platform.until(EventType::Queued).await;
    assert_eq!(queued.sip_status, 486);
    assert_eq!(
        queued.linkage_id, requested.linkage_id,
        "the transfer waits"
    );
    // The status page: the call talking with 110, its transfer queued at 12345.
    let linkage = requested.linkage_id.clone();
    feed.until("the transfer queued", move |board| {
        board["calls"].as_array().is_some_and(|calls| {
            calls.iter().any(|c| {
                c["linking"]["id"] == linkage.as_str() && c["linking"]["state"] == "queued"
            })
        })
    })
    .await;
    let mut notified = Vec::new();
    while notified.last().is_none_or(|status| *status < 200) {
        let notify = police.expect_request("NOTIFY").await;
        police
            .send_response(&police.answer(&notify, 200, None))
            .await;
        let body = String::from_utf8_lossy(&notify.body).to_string();
        notified.push(
            body.split_whitespace()
                .nth(1)
                .and_then(|s| s.parse::<u16>().ok())
                .unwrap_or_default(),
        );
    }
    assert_eq!(notified.first(), Some(&100));
    assert!(notified.contains(&182), "182 Queued: {notified:?}");
    assert_eq!(notified.last(), Some(&200), "the remote seat answered");
    let bye = police.expect_request("BYE").await;
    police.send_response(&police.answer(&bye, 200, None)).await;

    let overflowed = platform.until(EventType::QueueOverflowed).await;
    assert_eq!(overflowed.linkage_id, requested.linkage_id);
    assert!(overflowed.queue_wait_ms >= 2000, "after the wait");
    assert_eq!(overflowed.target.map(|t| t.peer).as_deref(), Some("remote"));
    let answered = platform.until(EventType::TransferAnswered).await;
    assert_eq!(answered.linkage_id, requested.linkage_id);
    assert!(answered.queue_wait_ms >= 2000, "with the wait");
    assert!(
        hears_itself(&call.caller_rtp, call.gateway_a_media).await >= 10,
        "the citizen at the remote seat"
    );
    let bye = citizen.in_dialog(&call.invite, &call.ok, "BYE", 2, "");
    citizen.send_request(&bye).await;
    citizen.expect_response("BYE", 200).await;
    succeeds(remote, "remote seat").await;
    gateway.stop().await;
    drop(busy_desk);
}

/// 110 (by command) conferences 12345 into a citizen's call, and 12345's only desk (SIPp)
/// answers 486: the guest waits in 12345's queue (`QUEUED` with the guest's linkage id) while
/// citizen and operator talk on; after the 2 s wait it overflows to the remote seat (SIPp,
/// checking the citizen's number, the dialled 12345 and the linkage), which answers:
/// `TRANSFER_ANSWERED` with the wait, then the conference starts with three parties.
#[tokio::test]
async fn a_conference_guest_waits_in_the_queue_and_joins_from_the_remote_seat() {
    let BusyDeskBehind110 {
        mut gateway,
        mut citizen,
        mut police,
        busy_desk,
        remote,
        _sipp_dir,
    } = BusyDeskBehind110::start(
        &["-m", "1"],
        "\n[[platform]]\nname = \"110\"\ntoken = \"token-of-the-110-platform\"\n",
    )
    .await;
    let mut cad =
        common::platform::Platform::connect(gateway.grpc, "110", "token-of-the-110-platform", None)
            .await;
    let call =
        common::establish_to("110", "13800138000", &mut citizen, &mut police, &[8], &[8]).await;
    let call_id = cad.until(EventType::CallAnswered).await.call_id;
    let result = cad
        .command(hotline_gateway::workorder::pb::command::Action::Conference(
            hotline_gateway::workorder::pb::Conference {
                call_id: call_id.clone(),
                target: "12345".into(),
            },
        ))
        .await;
    assert!(result.ok, "{result:?}");
    let requested = cad.until(EventType::ConferenceRequested).await;
    let queued = cad.until(EventType::Queued).await;
    assert_eq!(queued.sip_status, 486);
    assert_eq!(queued.linkage_id, requested.linkage_id, "the guest waits");
    let overflowed = cad.until(EventType::QueueOverflowed).await;
    assert_eq!(overflowed.linkage_id, requested.linkage_id);
    assert!(overflowed.queue_wait_ms >= 2000, "after the wait");
    let answered = cad.until(EventType::TransferAnswered).await;
    assert_eq!(answered.linkage_id, requested.linkage_id);
    assert!(answered.queue_wait_ms >= 2000, "with the wait");
    cad.until(EventType::ConferenceStarted).await;
    common::caller_hangs_up(&mut citizen, &call, &mut [&mut police]).await;
    succeeds(remote, "remote seat").await;
    gateway.stop().await;
    drop(busy_desk);
}
