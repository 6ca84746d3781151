//! The per-packet media path: G.711 transcoding, RTP stream rewriting and RTP/RTCP
//! classification, each run on one 20 ms G.711 packet (160 payload bytes, 172 with the header);
//! and the conference mixer: one party's packet into its jitter buffer, and one 20 ms tick of a
//! three-way call (a frame from each jitter buffer, N-1 mixing, three frames encoded); and SRTP
//! (AES_CM_128_HMAC_SHA1_80): protecting one packet of our stream, and checking and decrypting
//! one from the endpoint.
//! Kept short for a 2-core machine: `cargo bench --bench media`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use hotline_gateway::media::codec::Codec;
use hotline_gateway::media::g711::{transcode_in_place, Transcode};
use hotline_gateway::media::mixer::{self, JitterBuffer, FRAME};
use hotline_gateway::media::rtp::{classify, StreamRewriter};
use hotline_gateway::media::srtp::{MasterKey, Receiver, Sender, Suite};

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

/// The mixer's two paths, as the relay worker runs them for a three-way call.
fn conference(c: &mut Criterion) {
    let mut group = c.benchmark_group("conference");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    let start = Instant::now();
    let tone: Vec<u8> = (0..160u32)
        .map(|n| {
            let sample = (8000.0 * (n as f64 * 0.345).sin()) as i16;
            hotline_gateway::media::g711::linear_to_alaw(sample)
        })
        .collect();

    // One packet in: decode 160 A-law bytes and store them (each iteration is the next packet,
    // 20 ms later, and the buffer is drained as the tick would).
    let mut buffer = JitterBuffer::new();
    let mut n = 0u32;
    let mut frame = [0i16; FRAME];
    group.bench_function("packet into the jitter buffer (decode + store)", |b| {
        b.iter(|| {
            let mut samples = [0i16; FRAME];
            mixer::decode(Codec::Pcma, black_box(&tone), &mut samples);
            let at = start + Duration::from_millis(u64::from(n) * 20);
            buffer.push(at, n as u16, n * 160, &samples);
            buffer.pop(&mut frame);
            n += 1;
        })
    });

    // One tick of three parties with the packets that fed it: store three frames (decoded
    // already), pop three, mix N-1, encode three.
    let mut buffers: Vec<JitterBuffer> = (0..3).map(|_| JitterBuffer::new()).collect();
    for (party, buffer) in buffers.iter_mut().enumerate() {
        for k in 0..4u32 {
            let samples = [(party as i16 + 1) * 1000; FRAME];
            buffer.push(start, k as u16, k * 160, &samples);
        }
    }
    let mut frames = [[0i16; FRAME]; 3];
    let mut outputs = [[0i16; FRAME]; 3];
    let mut encoded = [[0u8; FRAME]; 3];
    let mut k = 4u32;
    group.bench_function(
        "three-way tick with its packets (3 stores, 3 pops, N-1 mix, 3 encodes)",
        |b| {
            b.iter(|| {
                for (buffer, frame) in buffers.iter_mut().zip(frames.iter_mut()) {
                    // Keep each buffer fed so every pop plays audio.
                    let samples = [1000i16; FRAME];
                    buffer.push(start, k as u16, k * 160, &samples);
                    buffer.pop(frame);
                }
                k += 1;
                mixer::mix_minus(black_box(&frames), &[true; 3], &mut outputs);
                for (output, out) in outputs.iter().zip(encoded.iter_mut()) {
                    mixer::encode(Codec::Pcma, output, out);
                }
                black_box(&encoded);
            })
        },
    );
    group.finish();
}

/// SRTP per packet, both ways, on the 172-byte packet: the sender numbers its stream on, so
/// the receiver's replay window sees each packet once.
fn srtp(c: &mut Criterion) {
    let mut group = c.benchmark_group("srtp");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    let key = MasterKey([0x5a; 30]);
    let mut sender = Sender::new(Suite::AesCm128HmacSha1_80, &key);
    let mut buffer = [0u8; 256];
    let mut sequence = 0u16;
    group.bench_function("protect 172-byte RTP packet", |b| {
        b.iter(|| {
            sequence = sequence.wrapping_add(1);
            let plain = packet(sequence, u32::from(sequence) * 160);
            buffer[..plain.len()].copy_from_slice(&plain);
            sender.protect_rtp(black_box(&mut buffer), plain.len())
        })
    });
    // A stream of protected packets, made beforehand, taken in order.
    let mut sender = Sender::new(Suite::AesCm128HmacSha1_80, &key);
    let protected: Vec<Vec<u8>> = (0..u16::MAX)
        .map(|n| {
            let plain = packet(n, u32::from(n) * 160);
            let mut buffer = [0u8; 256];
            buffer[..plain.len()].copy_from_slice(&plain);
            let length = sender.protect_rtp(&mut buffer, plain.len()).unwrap_or(0);
            buffer[..length].to_vec()
        })
        .collect();
    let mut receiver = Receiver::new(Suite::AesCm128HmacSha1_80, &key, 0);
    let mut next = 0usize;
    let mut scratch = [0u8; 256];
    group.bench_function("unprotect 182-byte SRTP packet", |b| {
        b.iter(|| {
            // Past the prepared stream, a fresh receiver starts it again.
            if next == protected.len() {
                receiver = Receiver::new(Suite::AesCm128HmacSha1_80, &key, 0);
                next = 0;
            }
            let srtp = &protected[next];
            next += 1;
            scratch[..srtp.len()].copy_from_slice(srtp);
            receiver.unprotect_rtp(black_box(&mut scratch[..srtp.len()]))
        })
    });
    group.finish();
}

criterion_group!(benches, media, conference, srtp);
criterion_main!(benches);
