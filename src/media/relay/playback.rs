//! What we play to an endpoint in our stream to it in place of the other side (the ringback
//! tone, or an announcement the operator recorded), and when each of its packets is due.
//! Pure: `now` is passed in.

use std::time::Instant;

use super::PACKET_TIME;
use crate::media::codec::Codec;
use crate::media::g711::{linear_to_alaw, linear_to_ulaw};
use crate::media::prompt::{Announcement, Prompt};
use crate::media::rtp::StreamRewriter;
use crate::media::LegMedia;

/// Ringback as Chinese networks play it (YD/T 1970, GB 16837): 450 Hz, 1 s on, 4 s off.
const RINGBACK_HZ: f64 = 450.0;
const RINGBACK_ON_PACKETS: u64 = 50;
const RINGBACK_CYCLE_PACKETS: u64 = 250;
/// 20 ms of 8 kHz G.711; 450 Hz fits nine whole periods in it, so every tone packet is the same.
const RINGBACK_SAMPLES: usize = 160;
/// One generated packet: the RTP header and 20 ms of samples.
pub(super) const PLAYBACK_PACKET: usize = 12 + RINGBACK_SAMPLES;

/// What is played.
enum Sound {
    /// The ringback tone, one packet encoded once.
    Tone {
        tone: [u8; RINGBACK_SAMPLES],
        silence: u8,
    },
    /// A prompt, encoded a packet at a time as it plays.
    Prompt { prompt: Prompt, codec: Codec },
}

/// A stream in progress towards one endpoint.
pub(super) struct Playback {
    sound: Sound,
    payload_type: u8,
    started: Instant,
    sent: u64,
    /// The first packet's timestamp; each next one is 160 later (one packet of samples).
    first_timestamp: Option<u32>,
}

fn encode(codec: Codec, sample: i16) -> u8 {
    match codec {
        Codec::Pcmu => linear_to_ulaw(sample),
        Codec::Pcma => linear_to_alaw(sample),
    }
}

impl Playback {
    pub(super) fn new(media: &LegMedia, announcement: &Announcement, now: Instant) -> Playback {
        let codec = media.codec;
        let sound = match announcement {
            Announcement::Ringback => {
                let mut tone = [0u8; RINGBACK_SAMPLES];
                for (n, code) in tone.iter_mut().enumerate() {
                    // -10 dBm0-ish: a third of full scale.
                    let phase = 2.0 * std::f64::consts::PI * RINGBACK_HZ * n as f64 / 8000.0;
                    *code = encode(codec, (phase.sin() * 10_000.0) as i16);
                }
                Sound::Tone {
                    tone,
                    silence: encode(codec, 0),
                }
            }
            Announcement::Prompt(prompt) => Sound::Prompt {
                prompt: prompt.clone(),
                codec,
            },
        };
        Playback {
            sound,
            payload_type: media.payload_type,
            started: now,
            sent: 0,
            first_timestamp: None,
        }
    }

    /// When the next packet is due.
    pub(super) fn next_due(&self) -> Instant {
        self.started + PACKET_TIME * self.sent as u32
    }

    /// Writes the next packet into `packet`, stamped into `towards`, if it is due by `now`.
    pub(super) fn poll_packet(
        &mut self,
        now: Instant,
        towards: &mut StreamRewriter,
        packet: &mut [u8; PLAYBACK_PACKET],
    ) -> bool {
        // After a stall, skip what is long overdue rather than burst it.
        let behind = now.saturating_duration_since(self.next_due());
        if behind > PACKET_TIME * 5 {
            self.sent += (behind.as_millis() / PACKET_TIME.as_millis()) as u64;
        }
        if self.next_due() > now {
            return false;
        }
        packet[0] = 0x80;
        packet[1] = self.payload_type;
        match &self.sound {
            Sound::Tone { tone, silence } => {
                if self.sent % RINGBACK_CYCLE_PACKETS < RINGBACK_ON_PACKETS {
                    packet[12..].copy_from_slice(tone);
                } else {
                    packet[12..].fill(*silence);
                }
            }
            Sound::Prompt { prompt, codec } => {
                let first = self.sent * RINGBACK_SAMPLES as u64;
                for (n, code) in packet[12..].iter_mut().enumerate() {
                    *code = encode(*codec, prompt.sample(first + n as u64));
                }
            }
        }
        if self.sent == 0 {
            packet[1] |= 0x80;
        }
        let first = *self
            .first_timestamp
            .get_or_insert_with(|| towards.timestamp_at(now));
        let timestamp =
            first.wrapping_add((self.sent as u32).wrapping_mul(RINGBACK_SAMPLES as u32));
        towards.stamp_generated(packet, timestamp, now);
        self.sent += 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn media() -> LegMedia {
        LegMedia {
            remote: None,
            codec: Codec::Pcma,
            payload_type: 8,
            telephone_event: None,
            srtp: None,
            receives: true,
        }
    }

    /// One packet per 20 ms, the first marked, timestamps 160 apart, 1 s of tone then 4 s of
    /// silence; after a stall the overdue packets are skipped, not burst.
    #[test]
    fn ringback_is_paced_and_cadenced() {
        let start = Instant::now();
        let mut ringback = Playback::new(&media(), &Announcement::Ringback, start);
        let mut towards = StreamRewriter::new(7, 100, 1000, 8000);
        let mut packet = [0u8; PLAYBACK_PACKET];
        assert!(ringback.poll_packet(start, &mut towards, &mut packet));
        assert_eq!(packet[1], 0x80 | 8);
        assert_ne!(
            packet[12..],
            [linear_to_alaw(0); RINGBACK_SAMPLES],
            "tone first"
        );
        let first = u32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]);
        assert!(
            !ringback.poll_packet(start, &mut towards, &mut packet),
            "not due yet"
        );
        assert_eq!(ringback.next_due(), start + PACKET_TIME);
        let mut now = start;
        for n in 1..60u32 {
            now = start + PACKET_TIME * n;
            assert!(ringback.poll_packet(now, &mut towards, &mut packet));
            assert_eq!(packet[1], 8);
            let timestamp = u32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]);
            assert_eq!(timestamp, first.wrapping_add(160 * n));
        }
        assert_eq!(
            packet[12..],
            [linear_to_alaw(0); RINGBACK_SAMPLES],
            "silence after 1 s"
        );
        // A stall of one second: packets 60..109 are skipped.
        now += Duration::from_secs(1);
        assert!(ringback.poll_packet(now, &mut towards, &mut packet));
        assert!(!ringback.poll_packet(now, &mut towards, &mut packet));
        let timestamp = u32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]);
        assert_eq!(timestamp, first.wrapping_add(160 * 109));
    }

    /// A prompt plays its samples in the leg's codec, then its gap of silence, then again.
    #[test]
    fn a_prompt_plays_then_repeats_after_its_gap() {
        let start = Instant::now();
        let samples: Vec<i16> = (0..320).map(|n| (n as i16 - 160) * 50).collect();
        let prompt = Prompt::from_samples(samples.clone(), 20);
        let mut playback = Playback::new(&media(), &Announcement::Prompt(prompt), start);
        let mut towards = StreamRewriter::new(7, 100, 1000, 8000);
        let mut packet = [0u8; PLAYBACK_PACKET];
        let mut payloads = Vec::new();
        for n in 0..4u32 {
            assert!(playback.poll_packet(start + PACKET_TIME * n, &mut towards, &mut packet));
            payloads.push(packet[12..].to_vec());
        }
        let encoded: Vec<u8> = samples.iter().map(|s| linear_to_alaw(*s)).collect();
        assert_eq!(payloads[0], encoded[..160]);
        assert_eq!(payloads[1], encoded[160..]);
        assert_eq!(payloads[2], [linear_to_alaw(0); 160], "the gap");
        assert_eq!(payloads[3], encoded[..160], "again");
    }
}
