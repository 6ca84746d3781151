//! The per-packet media path: G.711 transcoding, RTP stream rewriting and RTP/RTCP
//! classification, each run on one 20 ms G.711 packet (160 payload bytes, 172 with the header).
//! Kept short for a 2-core machine: `cargo bench --bench media`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use hotline_gateway::media::g711::{transcode_in_place, Transcode};
use hotline_gateway::media::rtp::{classify, StreamRewriter};

const FAR_SSRC: u32 = 0x1234_5678;

/// One 172-byte PCMA packet from the far party.
fn packet(sequence: u16, timestamp: u32) -> Vec<u8> {
    let mut p = vec![0x80, 8];
    p.extend_from_slice(&sequence.to_be_bytes());
    p.extend_from_slice(&timestamp.to_be_bytes());
    p.extend_from_slice(&FAR_SSRC.to_be_bytes());
    p.extend_from_slice(&[0xd5; 160]);
    p
}

fn media(c: &mut Criterion) {
    let mut group = c.benchmark_group("media");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));

    let mut payload: [u8; 160] = std::array::from_fn(|i| i as u8);
    group.bench_function("transcode 160 bytes ulaw->alaw", |b| {
        b.iter(|| transcode_in_place(black_box(&mut payload), Transcode::UlawToAlaw))
    });

    // Steady state of one stream: each iteration restores the far party's header (as the next
    // datagram off the socket would be) and rewrites it, 20 ms of media clock later.
    let mut rewriter = StreamRewriter::new(0xcafe_f00d, 1, 1, 8000);
    let mut p = packet(0, 0);
    let start = Instant::now();
    let mut sequence = 0u16;
    group.bench_function("rewrite 172-byte RTP packet", |b| {
        b.iter(|| {
            sequence = sequence.wrapping_add(1);
            p[2..4].copy_from_slice(&sequence.to_be_bytes());
            p[4..8].copy_from_slice(&(u32::from(sequence) * 160).to_be_bytes());
            p[8..12].copy_from_slice(&FAR_SSRC.to_be_bytes());
            rewriter.rewrite(black_box(&mut p), start)
        })
    });

    let p = packet(1, 160);
    group.bench_function("classify RTP", |b| b.iter(|| classify(black_box(&p))));
    group.finish();
}

criterion_group!(benches, media);
criterion_main!(benches);
