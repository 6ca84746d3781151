//! RFC 4733 telephone-events: detecting the digits a party keys (one report per event) and
//! building the packets of a digit we play, with the DTMF digit <-> event code table (§3.2).
//! Pure: no sockets, no clock.

use super::call_media::payload_range;

/// What one telephone-event packet from a party is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Detected {
    /// The first packet of an event: its digit.
    Digit(char),
    /// A repeat of the event in progress (its updates and end packets, §2.5.1.4), or an event
    /// that is no DTMF digit.
    Continued,
    /// No event in it.
    Malformed,
}

/// Detection state of one party's telephone-events.
#[derive(Debug, Default)]
pub(super) struct Detector {
    /// RTP timestamp and code of the last event seen: its repeats are the same event.
    last_event: Option<(u32, u8)>,
}

impl Detector {
    /// A new endpoint: what the previous one sent says nothing about its events.
    pub(super) fn reset(&mut self) {
        self.last_event = None;
    }

    /// An RFC 4733 event packet: the first packet of each event (a new RTP timestamp,
    /// §2.5.1.2) reports its digit; repeats and end packets are taken as the same event.
    pub(super) fn detect(&mut self, packet: &[u8]) -> Detected {
        let Some(code) = payload_range(packet).and_then(|r| packet.get(r.start).copied()) else {
            return Detected::Malformed;
        };
        let timestamp = u32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]);
        // A new event has a new timestamp; a new code under the same one is taken as new too
        // (senders that replay recorded events reuse their timestamps).
        if self.last_event == Some((timestamp, code)) {
            return Detected::Continued;
        }
        self.last_event = Some((timestamp, code));
        match digit_of_event(code) {
            Some(digit) => Detected::Digit(digit),
            None => Detected::Continued,
        }
    }
}

/// The DTMF digit of an RFC 4733 event code (§3.2), if it is one.
pub(super) fn digit_of_event(code: u8) -> Option<char> {
    match code {
        0..=9 => Some(char::from(b'0' + code)),
        10 => Some('*'),
        11 => Some('#'),
        12..=15 => Some(char::from(b'A' + code - 12)),
        _ => None,
    }
}

/// RFC 4733 event code of a DTMF digit (§3.2).
pub(super) fn event_code(digit: char) -> Option<u8> {
    match digit {
        '0'..='9' => Some(digit as u8 - b'0'),
        '*' => Some(10),
        '#' => Some(11),
        'A'..='D' => Some(digit as u8 - b'A' + 12),
        _ => None,
    }
}

/// The length of one event packet: the RTP header and the four bytes of §2.3.
pub(super) const EVENT_PACKET: usize = 16;

/// The packets of one 100 ms event of `code` with payload type `payload_type`: a start packet
/// (marker set, §2.5.1.3) and the end packet three times (§2.5.1.4). Sequence number,
/// timestamp and SSRC are left for the stream to stamp (all four carry the event's timestamp).
pub(super) fn event_packets(payload_type: u8, code: u8) -> [[u8; EVENT_PACKET]; 4] {
    const VOLUME: u8 = 10;
    [
        (true, false, 160u16),
        (false, true, 800),
        (false, true, 800),
        (false, true, 800),
    ]
    .map(|(marker, end, duration)| {
        let mut packet = [0u8; EVENT_PACKET];
        packet[0] = 0x80;
        packet[1] = payload_type | if marker { 0x80 } else { 0 };
        packet[12] = code;
        packet[13] = VOLUME | if end { 0x80 } else { 0 };
        packet[14..16].copy_from_slice(&duration.to_be_bytes());
        packet
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An event packet from a party: payload type 101, `timestamp`, `code`, end bit `end`.
    fn event(timestamp: u32, code: u8, end: bool) -> [u8; EVENT_PACKET] {
        let mut packet = [0u8; EVENT_PACKET];
        packet[0] = 0x80;
        packet[1] = 101;
        packet[4..8].copy_from_slice(&timestamp.to_be_bytes());
        packet[12] = code;
        packet[13] = if end { 0x8a } else { 0x0a };
        packet
    }

    #[test]
    fn codes_and_digits_round_trip() {
        for digit in "0123456789*#ABCD".chars() {
            let code = event_code(digit);
            assert_eq!(code.and_then(digit_of_event), Some(digit));
        }
        assert_eq!(event_code('x'), None);
        assert_eq!(digit_of_event(16), None, "flash is no DTMF digit");
    }

    /// One event: start, updates and three end packets, all one timestamp: reported once.
    #[test]
    fn an_event_is_reported_once_however_many_end_packets() {
        let mut detector = Detector::default();
        assert_eq!(detector.detect(&event(800, 5, false)), Detected::Digit('5'));
        assert_eq!(detector.detect(&event(800, 5, false)), Detected::Continued);
        for _ in 0..3 {
            assert_eq!(detector.detect(&event(800, 5, true)), Detected::Continued);
        }
        // The same digit again is a new event: a new timestamp.
        assert_eq!(
            detector.detect(&event(2400, 5, false)),
            Detected::Digit('5')
        );
        // Its start lost: the first end packet reports it, its repeats do not.
        assert_eq!(
            detector.detect(&event(4000, 11, true)),
            Detected::Digit('#')
        );
        assert_eq!(detector.detect(&event(4000, 11, true)), Detected::Continued);
        // A replayed recording reuses a timestamp with another code: a new event.
        assert_eq!(
            detector.detect(&event(4000, 1, false)),
            Detected::Digit('1')
        );
        // No payload: nothing to detect.
        assert_eq!(
            detector.detect(&event(4000, 1, false)[..12]),
            Detected::Malformed
        );
        detector.reset();
        assert_eq!(
            detector.detect(&event(4000, 1, false)),
            Detected::Digit('1')
        );
    }

    #[test]
    fn a_played_digit_is_a_start_and_three_ends() {
        let packets = event_packets(101, 11);
        assert_eq!(packets[0][1], 0x80 | 101, "the start is marked");
        assert_eq!(packets[0][13] & 0x80, 0);
        assert_eq!(u16::from_be_bytes([packets[0][14], packets[0][15]]), 160);
        for packet in &packets[1..] {
            assert_eq!(packet[1], 101);
            assert_eq!(packet[12], 11);
            assert_eq!(packet[13], 0x80 | 10, "end bit, volume 10");
            assert_eq!(u16::from_be_bytes([packet[14], packet[15]]), 800);
        }
    }
}
