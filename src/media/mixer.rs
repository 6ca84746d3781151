//! The conference mixer's pure parts: G.711 frames to and from 16-bit linear, N-1 mixing with
//! saturation, and the per-input jitter buffer. No sockets and no clock reads: the relay worker
//! ([`super::relay`]) feeds packets in with their arrival time and pulls one frame per input on
//! its 20 ms tick.
//!
//! Call order per input: [`JitterBuffer::push`] for each RTP packet as it arrives, then once per
//! tick [`JitterBuffer::pop`]; per tick [`mix_minus`] over every input's frame.

use std::time::Instant;

use super::g711;
use crate::media::codec::Codec;

/// Samples per mixer tick: 20 ms at 8 kHz.
pub const FRAME: usize = 160;

/// One tick of 16-bit linear audio.
pub type Frame = [i16; FRAME];

/// Decodes a G.711 payload into `out` (as many samples as both hold).
pub fn decode(codec: Codec, payload: &[u8], out: &mut [i16]) {
    // One loop per law, so the table lookup is inlined (through a function pointer it was a
    // call per sample).
    let pairs = out.iter_mut().zip(payload);
    match codec {
        Codec::Pcmu => pairs.for_each(|(sample, code)| *sample = g711::ulaw_to_linear(*code)),
        Codec::Pcma => pairs.for_each(|(sample, code)| *sample = g711::alaw_to_linear(*code)),
    }
}

/// Encodes linear samples into a G.711 payload (as many as both hold).
pub fn encode(codec: Codec, samples: &[i16], out: &mut [u8]) {
    let encoder: fn(i16) -> u8 = match codec {
        Codec::Pcmu => g711::linear_to_ulaw,
        Codec::Pcma => g711::linear_to_alaw,
    };
    for (code, sample) in out.iter_mut().zip(samples) {
        *code = encoder(*sample);
    }
}

/// N-1 mixing: `outputs[i]` is the sum of every contributing frame but `frames[i]`, saturated
/// to 16 bits, so each party hears everyone but themselves. A party that does not contribute
/// (on hold, muted, silent) still gets everyone else's sum.
///
/// The three slices have one entry per party; extra entries of the longer ones are ignored.
pub fn mix_minus(frames: &[Frame], contributing: &[bool], outputs: &mut [Frame]) {
    let mut total = [0i32; FRAME];
    for (frame, _) in frames.iter().zip(contributing).filter(|(_, c)| **c) {
        for (sum, sample) in total.iter_mut().zip(frame) {
            *sum += i32::from(*sample);
        }
    }
    for ((output, frame), contributes) in outputs.iter_mut().zip(frames).zip(contributing) {
        for ((out, sum), own) in output.iter_mut().zip(&total).zip(frame) {
            let others = if *contributes {
                *sum - i32::from(*own)
            } else {
                *sum
            };
            *out = others.clamp(i32::from(i16::MIN), i32::from(i16::MAX)) as i16;
        }
    }
}

/// Ring size in samples (256 ms): deeper than any delay the buffer adapts to.
const RING: usize = 2048;
const MASK: u32 = RING as u32 - 1;
/// Adaptive playout delay bounds, in samples: one frame to six (20-120 ms).
const MIN_DEPTH: u32 = FRAME as u32;
const MAX_DEPTH: u32 = 6 * FRAME as u32;
/// Lost frames concealed by repeating the last one, fading, before silence.
const CONCEALED_FRAMES: u8 = 2;
/// Consecutive late packets after which the sender's clock is taken to have moved: re-anchor.
const LATE_BEFORE_RESYNC: u8 = 3;

/// What [`JitterBuffer::push`] did with a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    Stored,
    /// Its playout time has passed.
    Late,
    /// Its sequence number was seen already.
    Duplicate,
    /// It jumped outside the ring (a new talkspurt far ahead, a restarted sender): the buffer
    /// was re-anchored on it.
    Resynced,
}

/// What [`JitterBuffer::pop`] produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Playout {
    /// Received audio (a partly received frame has silence where packets are missing).
    Audio,
    /// Nothing arrived for this frame: the last one repeated, fading (packet-loss concealment).
    Concealed,
    /// Nothing to play: silence (before the first packet, or after a longer gap).
    Silence,
}

/// Counts of what the buffer refused or made up, for the metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct JitterStats {
    pub late: u64,
    pub duplicate: u64,
    pub concealed: u64,
    /// Frames skipped to bring a grown delay back to the target.
    pub skipped: u64,
}

/// One input's small adaptive jitter buffer, indexed by RTP timestamp: packets of any size
/// land where their samples belong, so reordering needs nothing special; duplicates are caught
/// by sequence number; a packet whose time has passed is dropped. The playout delay follows the
/// measured interarrival jitter (RFC 3550 §6.4.1, A.8) between one and six frames.
pub struct JitterBuffer {
    samples: Box<[i16; RING]>,
    filled: Box<[bool; RING]>,
    /// RTP timestamp of the next sample to play.
    playout: Option<u32>,
    /// Highest sequence number seen, and a bitmap of the 64 below it (bit n: highest - n).
    highest: Option<u16>,
    seen: u64,
    /// End (timestamp after the last sample) of the newest packet.
    newest_end: u32,
    /// Playout delay in samples.
    depth: u32,
    /// RFC 3550 interarrival jitter, in samples, times 16 (A.8's fixed point).
    jitter16: u32,
    /// Arrival (in samples since `epoch`) minus timestamp of the previous packet.
    transit: Option<i64>,
    epoch: Option<Instant>,
    last_frame: Frame,
    /// Frames in a row without audio.
    missing_run: u8,
    late_run: u8,
    /// The next pop waits a frame instead of playing (the delay grows towards `depth`).
    stretch: bool,
    stats: JitterStats,
}

impl Default for JitterBuffer {
    fn default() -> Self {
        Self::new()
    }
}

impl JitterBuffer {
    pub fn new() -> JitterBuffer {
        JitterBuffer {
            samples: Box::new([0; RING]),
            filled: Box::new([false; RING]),
            playout: None,
            highest: None,
            seen: 0,
            newest_end: 0,
            depth: 2 * FRAME as u32,
            jitter16: 0,
            transit: None,
            epoch: None,
            last_frame: [0; FRAME],
            missing_run: CONCEALED_FRAMES,
            late_run: 0,
            stretch: false,
            stats: JitterStats::default(),
        }
    }

    pub fn stats(&self) -> JitterStats {
        self.stats
    }

    /// The current playout delay in samples.
    pub fn depth(&self) -> u32 {
        self.depth
    }

    /// Stores the decoded `samples` of the packet numbered `sequence` with RTP `timestamp`,
    /// received at `now`.
    pub fn push(
        &mut self,
        now: Instant,
        sequence: u16,
        timestamp: u32,
        samples: &[i16],
    ) -> Arrival {
        if self.is_duplicate(sequence) {
            self.stats.duplicate += 1;
            return Arrival::Duplicate;
        }
        let length = samples.len().min(RING) as u32;
        let end = timestamp.wrapping_add(length);
        let first = self.playout.is_none();
        let playout = *self
            .playout
            .get_or_insert_with(|| timestamp.wrapping_sub(self.depth));
        let mut arrival = Arrival::Stored;
        let ahead = distance(playout, end);
        if ahead > 0 && ahead <= (RING - FRAME) as i64 {
            // Late packets count too: they are what the delay must grow for. A jump (below)
            // is no jitter.
            self.track_jitter(now, timestamp);
        }
        if ahead <= 0 {
            self.track_jitter(now, timestamp);
            self.stats.late += 1;
            self.late_run += 1;
            if self.late_run < LATE_BEFORE_RESYNC {
                return Arrival::Late;
            }
            // The sender's timeline moved behind us (a clock step, a new source): follow it.
            self.resync(timestamp);
            arrival = Arrival::Resynced;
        } else if distance(playout, end) > (RING - FRAME) as i64 {
            self.resync(timestamp);
            arrival = Arrival::Resynced;
        }
        self.late_run = 0;
        if arrival == Arrival::Resynced {
            // The transit time starts afresh from the new timeline.
            self.track_jitter(now, timestamp);
        }
        let playout = self.playout.unwrap_or(timestamp);
        for (offset, sample) in samples.iter().take(RING).enumerate() {
            let at = timestamp.wrapping_add(offset as u32);
            if distance(playout, at) < 0 {
                continue;
            }
            let index = (at & MASK) as usize;
            self.samples[index] = *sample;
            self.filled[index] = true;
        }
        if first || distance(self.newest_end, end) > 0 {
            self.newest_end = end;
        }
        arrival
    }

    /// The next frame into `out`.
    pub fn pop(&mut self, out: &mut Frame) -> Playout {
        let Some(playout) = self.playout else {
            out.fill(0);
            return Playout::Silence;
        };
        if std::mem::take(&mut self.stretch) {
            // Hold the playout point one frame: the delay grows by 20 ms.
            return self.conceal(out);
        }
        let mut heard = 0;
        for (offset, sample) in out.iter_mut().enumerate() {
            let index = (playout.wrapping_add(offset as u32) & MASK) as usize;
            if std::mem::take(&mut self.filled[index]) {
                *sample = self.samples[index];
                heard += 1;
            } else {
                *sample = 0;
            }
        }
        self.playout = Some(playout.wrapping_add(FRAME as u32));
        let result = if heard > 0 {
            self.last_frame = *out;
            self.missing_run = 0;
            Playout::Audio
        } else {
            self.conceal(out)
        };
        self.adapt();
        result
    }

    /// A frame for one that did not arrive: the last one repeated at half, then a quarter, of
    /// its level, then silence.
    fn conceal(&mut self, out: &mut Frame) -> Playout {
        if self.missing_run < CONCEALED_FRAMES {
            self.missing_run += 1;
            let shift = self.missing_run;
            for (sample, last) in out.iter_mut().zip(&self.last_frame) {
                *sample = last >> shift;
            }
            self.stats.concealed += 1;
            Playout::Concealed
        } else {
            out.fill(0);
            Playout::Silence
        }
    }

    /// Keeps the delay near the target: lets it grow a frame when what is queued ahead of the
    /// playout point falls short of the target (packets come later than the delay allows), and
    /// skips a frame when more than two frames beyond it are queued (the sender's clock runs
    /// fast, or the jitter that grew the delay has gone).
    fn adapt(&mut self) {
        let target = (MIN_DEPTH + 3 * (self.jitter16 / 16)).clamp(MIN_DEPTH, MAX_DEPTH);
        // Whole 10 ms steps, so the depth does not wander by single samples.
        self.depth = target.div_ceil(80) * 80;
        let Some(playout) = self.playout else {
            return;
        };
        let queued = distance(playout, self.newest_end);
        if queued + (FRAME as i64) < i64::from(self.depth) {
            self.stretch = true;
        } else if queued > i64::from(self.depth) + 2 * FRAME as i64 {
            for offset in 0..FRAME as u32 {
                self.filled[(playout.wrapping_add(offset) & MASK) as usize] = false;
            }
            self.playout = Some(playout.wrapping_add(FRAME as u32));
            self.stats.skipped += 1;
        }
    }

    fn resync(&mut self, timestamp: u32) {
        self.transit = None;
        self.filled.fill(false);
        self.playout = Some(timestamp.wrapping_sub(self.depth));
        self.newest_end = timestamp;
        self.late_run = 0;
    }

    /// Marks `sequence` seen; true if it was already.
    fn is_duplicate(&mut self, sequence: u16) -> bool {
        let Some(highest) = self.highest else {
            self.highest = Some(sequence);
            self.seen = 1;
            return false;
        };
        let ahead = sequence.wrapping_sub(highest) as i16;
        if ahead > 0 {
            self.seen = if ahead >= 64 { 0 } else { self.seen << ahead } | 1;
            self.highest = Some(sequence);
            return false;
        }
        let behind = u32::from(ahead.unsigned_abs());
        if behind >= 64 {
            // Too old to tell; its timestamp will be late anyway.
            return false;
        }
        let bit = 1u64 << behind;
        let seen = self.seen & bit != 0;
        self.seen |= bit;
        seen
    }

    /// RFC 3550 A.8: J += (|D| - J) / 16, in samples (8 kHz).
    fn track_jitter(&mut self, now: Instant, timestamp: u32) {
        let epoch = *self.epoch.get_or_insert(now);
        let arrival = (now.saturating_duration_since(epoch).as_micros() * 8 / 1000) as i64;
        let transit = arrival - i64::from(timestamp);
        if let Some(previous) = self.transit.replace(transit) {
            // Timestamps wrap: the difference is taken modulo 2^32.
            let d = (transit - previous) as i32 as i64;
            let d = d.unsigned_abs().min(u64::from(u32::MAX / 32)) as u32;
            self.jitter16 = self.jitter16 + d - (self.jitter16 + 8) / 16;
        }
    }
}

/// `to - from` in RTP timestamp arithmetic (modulo 2^32, as a signed distance).
fn distance(from: u32, to: u32) -> i64 {
    i64::from(to.wrapping_sub(from) as i32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn frame_of(value: i16) -> Frame {
        [value; FRAME]
    }

    #[test]
    fn each_party_hears_the_others_and_not_itself() {
        let frames = [frame_of(1000), frame_of(200), frame_of(30)];
        let mut out = [[0i16; FRAME]; 3];
        mix_minus(&frames, &[true, true, true], &mut out);
        assert_eq!(out[0][0], 230);
        assert_eq!(out[1][0], 1030);
        assert_eq!(out[2][0], 1200);
        // On hold or muted: contributes nothing, still hears the others.
        mix_minus(&frames, &[true, false, true], &mut out);
        assert_eq!(out[0][0], 30);
        assert_eq!(out[1][0], 1030);
        assert_eq!(out[2][0], 1000);
    }

    #[test]
    fn mixing_saturates_instead_of_wrapping() {
        let frames = [
            frame_of(30_000),
            frame_of(20_000),
            frame_of(-30_000),
            frame_of(-20_000),
        ];
        let mut out = [[0i16; FRAME]; 4];
        mix_minus(&frames[..3], &[true; 3], &mut out[..3]);
        assert_eq!(out[2][0], i16::MAX, "30000 + 20000 clips");
        assert_eq!(out[0][0], -10_000);
        let negative = [frame_of(-30_000), frame_of(-20_000), frame_of(0)];
        mix_minus(&negative, &[true; 3], &mut out[..3]);
        assert_eq!(out[2][0], i16::MIN);
    }

    #[test]
    fn g711_round_trip_through_the_mixer_keeps_the_codes() {
        for codec in [Codec::Pcmu, Codec::Pcma] {
            let codes: Vec<u8> = (0..=255).collect();
            let mut linear = [0i16; 256];
            decode(codec, &codes, &mut linear);
            let mut back = [0u8; 256];
            encode(codec, &linear, &mut back);
            // G.711 has two codes for zero in mu-law (0x7f and 0xff): both decode to 0.
            for (code, again) in codes.iter().zip(&back) {
                let (a, b) = match codec {
                    Codec::Pcmu => (g711::ulaw_to_linear(*code), g711::ulaw_to_linear(*again)),
                    Codec::Pcma => (g711::alaw_to_linear(*code), g711::alaw_to_linear(*again)),
                };
                assert_eq!(a, b, "{codec:?} {code:#x}");
            }
        }
    }

    /// A packet of 160 samples all equal to `value`.
    fn packet(value: i16) -> Frame {
        [value; FRAME]
    }

    struct Feed {
        buffer: JitterBuffer,
        start: Instant,
    }

    impl Feed {
        fn new() -> Feed {
            Feed {
                buffer: JitterBuffer::new(),
                start: Instant::now(),
            }
        }

        /// Packet n (sequence n, timestamp 160 n, value n) arriving at `at_ms`.
        fn push(&mut self, n: u16, at_ms: u64) -> Arrival {
            let at = self.start + Duration::from_millis(at_ms);
            self.buffer
                .push(at, n, u32::from(n) * FRAME as u32, &packet(n as i16 + 1))
        }

        fn pop(&mut self) -> (Playout, i16) {
            let mut out = [0i16; FRAME];
            let kind = self.buffer.pop(&mut out);
            (kind, out[0])
        }
    }

    #[test]
    fn a_steady_stream_plays_out_after_the_initial_delay_in_order() {
        let mut feed = Feed::new();
        assert_eq!(feed.pop().0, Playout::Silence, "nothing yet");
        let mut played = Vec::new();
        for n in 0..10u16 {
            feed.push(n, u64::from(n) * 20);
            played.push(feed.pop());
        }
        // Two frames of initial delay, then packets 0, 1, 2, ... (values n + 1).
        assert_eq!(played[0], (Playout::Silence, 0));
        assert_eq!(played[1], (Playout::Silence, 0));
        assert_eq!(played[2], (Playout::Audio, 1));
        assert_eq!(played[9], (Playout::Audio, 8));
    }

    #[test]
    fn reordered_packets_are_played_in_timestamp_order_and_duplicates_dropped() {
        let mut feed = Feed::new();
        feed.push(0, 0);
        feed.push(2, 20);
        assert_eq!(feed.push(1, 21), Arrival::Stored);
        assert_eq!(feed.push(1, 22), Arrival::Duplicate);
        assert_eq!(feed.push(2, 23), Arrival::Duplicate);
        let values: Vec<i16> = (0..6)
            .map(|_| feed.pop())
            .filter(|(kind, _)| *kind == Playout::Audio)
            .map(|(_, value)| value)
            .collect();
        assert_eq!(values, vec![1, 2, 3]);
        assert_eq!(feed.buffer.stats().duplicate, 2);
    }

    #[test]
    fn a_lost_packet_is_concealed_then_silence_and_late_ones_are_dropped() {
        let mut feed = Feed::new();
        feed.push(0, 0);
        feed.push(1, 20);
        feed.pop();
        feed.pop();
        assert_eq!(feed.pop(), (Playout::Audio, 1));
        assert_eq!(feed.pop(), (Playout::Audio, 2));
        // Packets 2.. never come: half, a quarter of the last frame, then silence.
        assert_eq!(feed.pop(), (Playout::Concealed, 1));
        assert_eq!(feed.pop(), (Playout::Concealed, 0));
        assert_eq!(feed.pop().0, Playout::Silence);
        // Packet 2 turns up after its time: dropped, not played.
        assert_eq!(feed.push(2, 200), Arrival::Late);
        assert_eq!(feed.buffer.stats().late, 1);
        assert_eq!(feed.buffer.stats().concealed, 2);
    }

    #[test]
    fn jitter_grows_the_delay_and_calm_brings_it_back() {
        let mut feed = Feed::new();
        let mut n = 0u16;
        // 20 ms packets arriving up to 40 ms off their time.
        for round in 0..200u64 {
            let wobble = if round % 2 == 0 { 0 } else { 40 };
            feed.push(n, round * 20 + wobble);
            feed.pop();
            n += 1;
        }
        let jittery = feed.buffer.depth();
        assert!(jittery > 2 * FRAME as u32, "depth {jittery}");
        assert!(jittery <= MAX_DEPTH);
        for round in 200..1200u64 {
            feed.push(n, round * 20 + 40);
            feed.pop();
            n += 1;
        }
        assert!(
            feed.buffer.depth() < jittery,
            "depth {}",
            feed.buffer.depth()
        );
        assert_eq!(feed.pop().0, Playout::Audio, "still playing");
    }

    /// Every other packet 70 ms late, played on a real 20 ms clock: the delay grows until the
    /// late ones arrive in time, and then nothing more is lost.
    #[test]
    fn the_delay_grows_until_late_packets_are_in_time() {
        let start = Instant::now();
        let mut buffer = JitterBuffer::new();
        let mut out = [0i16; FRAME];
        // (arrival ms, sequence) for 400 packets sent every 20 ms.
        let mut arrivals: Vec<(u64, u16)> = (0..400u16)
            .map(|n| (u64::from(n) * 20 + if n % 2 == 1 { 70 } else { 0 }, n))
            .collect();
        arrivals.sort();
        let mut next = 0;
        let mut late_at_the_end = 0;
        let mut audio_at_the_end = 0;
        for ms in 0..8000u64 {
            while next < arrivals.len() && arrivals[next].0 <= ms {
                let n = arrivals[next].1;
                let outcome = buffer.push(
                    start + Duration::from_millis(ms),
                    n,
                    u32::from(n) * FRAME as u32,
                    &packet(1000),
                );
                if n >= 300 && outcome == Arrival::Late {
                    late_at_the_end += 1;
                }
                next += 1;
            }
            if ms % 20 == 10 {
                let played = buffer.pop(&mut out);
                if (6400..7800).contains(&ms) && played == Playout::Audio {
                    audio_at_the_end += 1;
                }
            }
        }
        assert!(
            buffer.depth() >= 3 * FRAME as u32,
            "depth {}",
            buffer.depth()
        );
        assert_eq!(late_at_the_end, 0, "late packets once the delay has grown");
        assert!(
            audio_at_the_end >= 65,
            "{audio_at_the_end} of 70 frames played audio"
        );
    }

    #[test]
    fn a_sender_far_ahead_or_behind_is_followed() {
        let mut feed = Feed::new();
        feed.push(0, 0);
        // A timestamp jump of ten seconds (a restarted sender keeping its sequence).
        let far = 80_000u32;
        let at = feed.start + Duration::from_millis(20);
        assert_eq!(feed.buffer.push(at, 1, far, &packet(7)), Arrival::Resynced);
        let mut out = [0i16; FRAME];
        let mut kinds = Vec::new();
        for _ in 0..3 {
            kinds.push(feed.buffer.pop(&mut out));
        }
        assert_eq!(kinds[2], Playout::Audio);
        assert_eq!(out[0], 7);
        // A timeline that moved backwards: three late packets in a row re-anchor on it.
        let back = far - 8000;
        let outcomes: Vec<Arrival> = (0..3u16)
            .map(|i| {
                feed.buffer
                    .push(at, 10 + i, back + u32::from(i) * 160, &packet(9))
            })
            .collect();
        assert_eq!(
            outcomes,
            vec![Arrival::Late, Arrival::Late, Arrival::Resynced]
        );
    }
}
