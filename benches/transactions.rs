//! The heap a held transaction costs (issue 21: about 2 KB or less): 10,000 client INVITE
//! transactions as the gateway sends leg B's (SDP, identity, History-Info, the linkage header),
//! then 10,000 server INVITE transactions as a carrier's INVITEs arrive and get their 180, each
//! counted by a counting allocator around the system's. Bytes, not seconds: repeatable.
//! `cargo bench --bench transactions`

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use hotline_gateway::metrics::Metrics;
use hotline_gateway::routing::InterfaceId;
use hotline_gateway::sip::message::{self, Message};
use hotline_gateway::sip::target::{Flow, Target};
use hotline_gateway::sip::transaction::layer::{Arrival, LayerEvent, TransactionLayer};
use hotline_gateway::sip::transaction::{DialogKey, TimerConfig};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call goes to the system allocator unchanged; only the sizes are counted.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: as the caller's contract with GlobalAlloc.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: as the caller's contract with GlobalAlloc.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        // SAFETY: as the caller's contract with GlobalAlloc.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const TRANSACTIONS: usize = 10_000;

const SDP: &str = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
m=audio 20000 RTP/AVP 8 0 101\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:0 PCMU/8000\r\n\
a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\na=ptime:20\r\na=sendrecv\r\n";

/// Leg B's INVITE number `n`, as the gateway sends it towards 110.
fn leg_b_invite(n: usize) -> String {
    format!(
        "INVITE sip:110@127.0.0.1:5090 SIP/2.0\r\n\
Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK-b-{n};rport\r\n\
Max-Forwards: 70\r\n\
From: <sip:13800138000@127.0.0.1>;tag=gw-{n}\r\n\
To: <sip:110@127.0.0.1:5090>\r\n\
Call-ID: b-{n}@127.0.0.1\r\n\
CSeq: 1 INVITE\r\n\
Contact: <sip:gw@127.0.0.1:5060>\r\n\
P-Asserted-Identity: <sip:13800138000@127.0.0.1>\r\n\
History-Info: <sip:12345@127.0.0.1?Reason=SIP%3Bcause%3D302>;index=1\r\n\
History-Info: <sip:110@127.0.0.1>;index=1.1;rc=1\r\n\
X-Hotline-Linkage: l-{n}\r\n\
Supported: timer, replaces\r\n\
Allow: INVITE, ACK, CANCEL, BYE, OPTIONS, REFER, NOTIFY, INFO, UPDATE\r\n\
Session-Expires: 1800;refresher=uac\r\n\
Content-Type: application/sdp\r\n\
Content-Length: {}\r\n\r\n{SDP}",
        SDP.len()
    )
}

/// A carrier's INVITE number `n` to 12345.
fn carrier_invite(n: usize) -> String {
    format!(
        "INVITE sip:12345@127.0.0.1:5060 SIP/2.0\r\n\
Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-a-{n};rport\r\n\
Max-Forwards: 70\r\n\
From: \"Citizen\" <sip:13800138000@127.0.0.1:5070>;tag=c-{n}\r\n\
To: <sip:12345@127.0.0.1:5060>\r\n\
Call-ID: a-{n}@127.0.0.1\r\n\
CSeq: 1 INVITE\r\n\
Contact: <sip:13800138000@127.0.0.1:5070>\r\n\
Supported: timer\r\n\
Allow: INVITE, ACK, CANCEL, BYE, OPTIONS\r\n\
Content-Type: application/sdp\r\n\
Content-Length: {}\r\n\r\n{SDP}",
        SDP.len()
    )
}

fn request(text: &str) -> message::Request {
    match message::parse(text.as_bytes()) {
        Ok(Message::Request(request)) => request,
        other => panic!("{other:?}"),
    }
}

fn main() {
    let now = Instant::now();
    let metrics = Arc::new(Metrics::new());
    let peer: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 5090));
    let carrier: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 5070));
    let mut layer: TransactionLayer<()> =
        TransactionLayer::new(now, TimerConfig::default(), Arc::clone(&metrics));
    // Counted from before the requests are made: what the layer keeps of what it is handed
    // (the request and its bytes) is its cost; what it drops is not.
    let before = LIVE.load(Ordering::Relaxed);
    let invites: Vec<(message::Request, bytes::Bytes)> = (0..TRANSACTIONS)
        .map(|n| {
            let request = request(&leg_b_invite(n));
            let bytes = request.to_bytes();
            (request, bytes)
        })
        .collect();
    for (request, bytes) in invites {
        layer.send_request(
            now,
            request,
            bytes,
            Target::Udp(InterfaceId::DEFAULT, peer),
            (),
        );
    }
    while layer.poll_transmit().is_some() {}
    let clients = LIVE.load(Ordering::Relaxed) - before;
    println!(
        "client INVITE transactions: {} bytes each ({TRANSACTIONS} held)",
        clients / TRANSACTIONS as isize
    );

    let dialogs: std::collections::HashMap<DialogKey, ()> = std::collections::HashMap::new();
    let before = LIVE.load(Ordering::Relaxed);
    let arrivals: Vec<message::Request> = (0..TRANSACTIONS)
        .map(|n| request(&carrier_invite(n)))
        .collect();
    for invite in arrivals {
        let arrival = Arrival {
            source: carrier,
            flow: Flow::Udp(InterfaceId::DEFAULT),
            received: now,
        };
        layer.handle_request(now, invite, arrival, None, &dialogs);
        while let Some(event) = layer.poll_event() {
            // The call layer takes the request; the layer keeps its transaction.
            if let LayerEvent::NewRequest {
                server, request, ..
            } = event
            {
                let ringing = message::Response::for_request(&request, 180, Some("desk"));
                let bytes = ringing.to_bytes();
                layer.send_response(now, server, &ringing, bytes);
            }
        }
        while layer.poll_transmit().is_some() {}
    }
    let servers = LIVE.load(Ordering::Relaxed) - before;
    println!(
        "server INVITE transactions (answered 180): {} bytes each ({TRANSACTIONS} held)",
        servers / TRANSACTIONS as isize
    );
    std::hint::black_box(&layer);
}
