//! The per-packet media path: G.711 transcoding, RTP stream rewriting, RTP/RTCP classification.
//! `cargo bench --bench media`

use std::time::{Duration, Instant};

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use hotline_gateway::media::g711::{transcode_in_place, Transcode};
use hotline_gateway::media::rtp::{classify, StreamRewriter};

fn packet() -> Vec<u8> {
    let mut p = vec![0x80, 8, 0, 1, 0, 0, 0, 160, 0, 0, 0xAA, 0xAA];
    p.extend_from_slice(&[0xD5; 160]);
    p
}

fn media(c: &mut Criterion) {
    let mut group = c.benchmark_group("media");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(2));
    let mut payload = [0x55u8; 160];
    group.bench_function("transcode 160 bytes ulaw->alaw", |b| {
        b.iter(|| transcode_in_place(black_box(&mut payload), Transcode::UlawToAlaw))
    });
    let mut rewriter = StreamRewriter::new(1, 1, 1, 8000);
    let mut p = packet();
    let now = Instant::now();
    group.bench_function("rewrite 172-byte RTP packet", |b| {
        b.iter(|| rewriter.rewrite(black_box(&mut p), now))
    });
    let p = packet();
    group.bench_function("classify", |b| b.iter(|| classify(black_box(&p))));
    group.finish();
}

criterion_group!(benches, media);
criterion_main!(benches);
