//! The signalling path: parsing and printing an INVITE with SDP, answering its offer.
//! `cargo bench --bench sip`

use std::time::Duration;

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use hotline_gateway::sip::message::{self, Message};
use hotline_gateway::sip::sdp::{self, MediaPolicy, Origin};

const INVITE: &str = "INVITE sip:12345@127.0.0.1:5060 SIP/2.0\r\n\
Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-1-0;rport\r\n\
From: \"Citizen\" <sip:13800138000@127.0.0.1:5070>;tag=1\r\n\
To: <sip:12345@127.0.0.1:5060>\r\n\
Call-ID: 1-100@127.0.0.1\r\n\
CSeq: 1 INVITE\r\n\
Contact: <sip:13800138000@127.0.0.1:5070>\r\n\
Max-Forwards: 70\r\n\
Content-Type: application/sdp\r\n\
Content-Length: 166\r\n\
\r\n\
v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
m=audio 16070 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n\
a=fmtp:101 0-15\r\n";

fn sip(c: &mut Criterion) {
    let mut group = c.benchmark_group("sip");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(2));
    group.bench_function("parse INVITE with SDP", |b| {
        b.iter(|| message::parse(black_box(INVITE.as_bytes())))
    });
    let Ok(Message::Request(request)) = message::parse(INVITE.as_bytes()) else {
        return;
    };
    group.bench_function("print INVITE", |b| {
        b.iter(|| black_box(&request).to_bytes())
    });
    let offer = sdp::parse(request.sdp().unwrap_or_default());
    if let Ok(offer) = offer {
        let origin = Origin::new(
            "127.0.0.1"
                .parse()
                .unwrap_or(std::net::IpAddr::from([127, 0, 0, 1])),
            1,
        );
        let local = "127.0.0.1:20000"
            .parse()
            .unwrap_or(std::net::SocketAddr::from(([127, 0, 0, 1], 20000)));
        group.bench_function("answer SDP offer", |b| {
            b.iter(|| {
                sdp::answer(
                    black_box(&offer),
                    &MediaPolicy::default(),
                    local,
                    &origin,
                    Default::default(),
                )
            })
        });
    }
    group.finish();
}

criterion_group!(benches, sip);
criterion_main!(benches);
