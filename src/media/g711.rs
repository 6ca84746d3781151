//! ITU-T G.711 μ-law and A-law: decoders, encoders, and byte-to-byte transcoding tables.
//!
//! The gateway relays G.711 between endpoints that may have negotiated different laws (RTP/AVP
//! static payload types 0 PCMU and 8 PCMA, RFC 3551 §4.5.14). When they differ, each payload is
//! transcoded in place on the relay path, 50 times a second per stream, so everything here is
//! computed at compile time by `const fn` and the per-packet work is one table lookup per byte:
//! no lazy initialisation, no allocation, no branches per sample.
//!
//! The encoders follow the ITU-T G.191 reference implementation of G.711 (`ulaw_compress`,
//! `alaw_compress`, the same segment algorithm as Sun's `g711.c`): a sign bit, a 3-bit segment
//! (exponent) and a 4-bit step within the segment; negative samples are folded by one's
//! complement so -1 and 0 land on the two zero codes. On the wire μ-law is sent with all bits
//! inverted and A-law with the even bits inverted (XOR 0x55), G.711 §2 and §3.

/// Decodes one μ-law byte to 16-bit linear PCM (range ±32124).
pub const fn ulaw_to_linear(code: u8) -> i16 {
    ULAW_DECODE[code as usize]
}

/// Decodes one A-law byte to 16-bit linear PCM (range ±32256).
pub const fn alaw_to_linear(code: u8) -> i16 {
    ALAW_DECODE[code as usize]
}

/// Encodes 16-bit linear PCM as μ-law; samples beyond the μ-law range clip to full scale.
pub const fn linear_to_ulaw(sample: i16) -> u8 {
    // μ-law quantises 14-bit magnitudes; the bias of 33 makes every segment boundary a power of
    // two, so the segment is just the position of the highest set bit above bit 5.
    let folded = if sample < 0 { !sample } else { sample };
    let mut biased = (folded >> 2) as i32 + 33;
    if biased > 0x1fff {
        biased = 0x1fff;
    }
    let mut segment = 0;
    let mut rest = biased >> 6;
    while rest != 0 {
        segment += 1;
        rest >>= 1;
    }
    let step = (biased >> (segment + 1)) & 0x0f;
    let code = ((segment << 4) | step) as u8;
    // Transmitted inverted; after inversion a set top bit means positive.
    if sample < 0 {
        !code & 0x7f
    } else {
        !code
    }
}

/// Encodes 16-bit linear PCM as A-law.
pub const fn linear_to_alaw(sample: i16) -> u8 {
    // A-law quantises 12-bit magnitudes (the sample shifted right by 4 after folding).
    // Segments 0 and 1 share one step size; each later segment doubles it.
    let folded = if sample < 0 { !sample } else { sample };
    let mut magnitude = (folded >> 4) as i32;
    if magnitude > 15 {
        let mut segment = 1;
        while magnitude > 31 {
            magnitude >>= 1;
            segment += 1;
        }
        // Drop the implicit leading one; the segment number replaces it.
        magnitude = (magnitude - 16) + (segment << 4);
    }
    let code = if sample < 0 {
        magnitude as u8
    } else {
        magnitude as u8 | 0x80
    };
    code ^ 0x55
}

const fn decode_ulaw(code: u8) -> i16 {
    // Reconstruct at the middle of the quantisation interval, then remove the bias (4 * 33).
    let inverted = !code;
    let exponent = ((inverted >> 4) & 0x07) as i32;
    let step_index = (inverted & 0x0f) as i32;
    let step = 4 << (exponent + 1);
    let magnitude = (0x80 << exponent) + step * step_index + step / 2 - 4 * 33;
    if code < 0x80 {
        -magnitude as i16
    } else {
        magnitude as i16
    }
}

const fn decode_alaw(code: u8) -> i16 {
    let raw = (code ^ 0x55) & 0x7f;
    let exponent = (raw >> 4) as i32;
    let mut magnitude = (raw & 0x0f) as i32;
    if exponent > 0 {
        // Restore the implicit leading one of segments 1..=7.
        magnitude += 16;
    }
    // Middle of the interval.
    magnitude = (magnitude << 4) + 8;
    if exponent > 1 {
        magnitude <<= exponent - 1;
    }
    if code < 0x80 {
        -magnitude as i16
    } else {
        magnitude as i16
    }
}

const fn decode_table(alaw: bool) -> [i16; 256] {
    let mut table = [0i16; 256];
    let mut index = 0;
    while index < 256 {
        table[index] = if alaw {
            decode_alaw(index as u8)
        } else {
            decode_ulaw(index as u8)
        };
        index += 1;
    }
    table
}

const ULAW_DECODE: [i16; 256] = decode_table(false);
const ALAW_DECODE: [i16; 256] = decode_table(true);

const fn transcode_table(from_alaw: bool) -> [u8; 256] {
    // Decode to linear and re-encode in the other law: the result is the other law's interval
    // that holds the reconstructed value, so each pass adds at most half a step of error.
    let mut table = [0u8; 256];
    let mut index = 0;
    while index < 256 {
        table[index] = if from_alaw {
            linear_to_ulaw(ALAW_DECODE[index])
        } else {
            linear_to_alaw(ULAW_DECODE[index])
        };
        index += 1;
    }
    table
}

/// μ-law byte -> A-law byte.
pub const ULAW_TO_ALAW: [u8; 256] = transcode_table(false);
/// A-law byte -> μ-law byte.
pub const ALAW_TO_ULAW: [u8; 256] = transcode_table(true);

/// Which way to transcode a payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transcode {
    UlawToAlaw,
    AlawToUlaw,
}

/// Transcodes a G.711 payload in place: one table lookup per byte, no allocation.
pub fn transcode_in_place(payload: &mut [u8], direction: Transcode) {
    let table = match direction {
        Transcode::UlawToAlaw => &ULAW_TO_ALAW,
        Transcode::AlawToUlaw => &ALAW_TO_ULAW,
    };
    for byte in payload {
        *byte = table[usize::from(*byte)];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// All μ-law codes from the most negative level to the most positive one.
    fn ulaw_in_level_order() -> Vec<u8> {
        (0x00..=0x7fu8).chain((0x80..=0xffu8).rev()).collect()
    }

    /// All A-law codes from the most negative level to the most positive one.
    fn alaw_in_level_order() -> Vec<u8> {
        (0x00..=0x7fu8)
            .rev()
            .chain(0x80..=0xffu8)
            .map(|raw| raw ^ 0x55)
            .collect()
    }

    /// Width of the quantisation interval a μ-law code stands for, in 16-bit units.
    fn ulaw_step(code: u8) -> i32 {
        8 << ((!code >> 4) & 0x07)
    }

    /// Width of the quantisation interval an A-law code stands for, in 16-bit units.
    fn alaw_step(code: u8) -> i32 {
        let segment = ((code ^ 0x55) >> 4) & 0x07;
        16 << segment.saturating_sub(1)
    }

    #[test]
    fn known_codes() {
        assert_eq!(ulaw_to_linear(0xff), 0);
        assert_eq!(ulaw_to_linear(0x7f), 0);
        assert_eq!(ulaw_to_linear(0xfe), 8);
        assert_eq!(ulaw_to_linear(0x7e), -8);
        assert_eq!(ulaw_to_linear(0x80), 32_124);
        assert_eq!(ulaw_to_linear(0x00), -32_124);
        assert_eq!(alaw_to_linear(0xd5), 8);
        assert_eq!(alaw_to_linear(0x55), -8);
        assert_eq!(alaw_to_linear(0xaa), 32_256);
        assert_eq!(alaw_to_linear(0x2a), -32_256);
        assert_eq!(linear_to_ulaw(0), 0xff);
        assert_eq!(linear_to_ulaw(-1), 0x7f);
        assert_eq!(linear_to_ulaw(i16::MAX), 0x80);
        assert_eq!(linear_to_ulaw(i16::MIN), 0x00);
        assert_eq!(linear_to_alaw(0), 0xd5);
        assert_eq!(linear_to_alaw(-1), 0x55);
        assert_eq!(linear_to_alaw(i16::MAX), 0xaa);
        assert_eq!(linear_to_alaw(i16::MIN), 0x2a);
    }

    #[test]
    fn encode_of_decode_is_identity() {
        for code in 0..=255u8 {
            // μ-law has two zeros; the encoder gives +0 for a decoded 0.
            let expected = if code == 0x7f { 0xff } else { code };
            assert_eq!(
                linear_to_ulaw(ulaw_to_linear(code)),
                expected,
                "μ-law {code:#04x}"
            );
            assert_eq!(
                linear_to_alaw(alaw_to_linear(code)),
                code,
                "A-law {code:#04x}"
            );
        }
    }

    #[test]
    fn decode_is_monotonic_in_segment_order() {
        let ulaw: Vec<i16> = ulaw_in_level_order()
            .into_iter()
            .map(ulaw_to_linear)
            .collect();
        for pair in ulaw.windows(2) {
            // Only the two zeros (0x7f, 0xff) are equal.
            assert!(pair[0] < pair[1] || pair == [0, 0], "μ-law {pair:?}");
        }
        let alaw: Vec<i16> = alaw_in_level_order()
            .into_iter()
            .map(alaw_to_linear)
            .collect();
        assert!(alaw.windows(2).all(|pair| pair[0] < pair[1]));
    }

    #[test]
    fn encoders_stay_within_half_a_step_over_the_whole_range() {
        for sample in i16::MIN..=i16::MAX {
            let value = i32::from(sample);
            let u = linear_to_ulaw(sample);
            let decoded = i32::from(ulaw_to_linear(u));
            // Half a step, plus the 2 bits μ-law drops before quantising; beyond full scale
            // the encoder clips.
            let bound = ulaw_step(u) / 2 + 4 + (value.abs() - 32_124 - 4).max(0);
            assert!(
                (decoded - value).abs() <= bound,
                "μ-law {sample} -> {decoded}"
            );
            let a = linear_to_alaw(sample);
            let decoded = i32::from(alaw_to_linear(a));
            let bound = alaw_step(a) / 2 + (value.abs() - 32_256 - 512).max(0);
            assert!(
                (decoded - value).abs() <= bound,
                "A-law {sample} -> {decoded}"
            );
        }
    }

    #[test]
    fn transcoding_a_sine_keeps_it_within_quantisation_error() {
        for amplitude in [300.0, 3_000.0, 30_000.0] {
            let mut ulaw = [0u8; 160];
            for (n, code) in ulaw.iter_mut().enumerate() {
                let phase = 2.0 * std::f64::consts::PI * 1_004.0 * n as f64 / 8_000.0;
                *code = linear_to_ulaw((amplitude * phase.sin()).round() as i16);
            }
            let mut alaw = ulaw;
            transcode_in_place(&mut alaw, Transcode::UlawToAlaw);
            for (&u, &a) in ulaw.iter().zip(&alaw) {
                let (from, to) = (i32::from(ulaw_to_linear(u)), i32::from(alaw_to_linear(a)));
                // A-law re-quantises the μ-law level: off by at most half an A-law step.
                assert!(
                    (from - to).abs() <= alaw_step(a) / 2,
                    "amplitude {amplitude}: μ-law {from} became A-law {to}"
                );
            }
            let mut back = alaw;
            transcode_in_place(&mut back, Transcode::AlawToUlaw);
            for (&a, &u) in alaw.iter().zip(&back) {
                let (from, to) = (i32::from(alaw_to_linear(a)), i32::from(ulaw_to_linear(u)));
                assert!(
                    (from - to).abs() <= ulaw_step(u) / 2,
                    "amplitude {amplitude}: A-law {from} became μ-law {to}"
                );
            }
        }
    }

    #[test]
    fn ulaw_alaw_ulaw_round_trip_stays_within_one_step() {
        let order = ulaw_in_level_order();
        let position = |code: u8| {
            // The two zeros count as one level.
            let code = if code == 0x7f { 0xff } else { code };
            order.iter().position(|&c| c == code).unwrap_or(usize::MAX) as i64
        };
        for code in 0..=255u8 {
            let back = ALAW_TO_ULAW[usize::from(ULAW_TO_ALAW[usize::from(code)])];
            assert!(
                (position(code) - position(back)).abs() <= 1,
                "{code:#04x} came back as {back:#04x}"
            );
        }
        // And A-law -> μ-law -> A-law likewise.
        let order = alaw_in_level_order();
        let position =
            |code: u8| order.iter().position(|&c| c == code).unwrap_or(usize::MAX) as i64;
        for code in 0..=255u8 {
            let back = ULAW_TO_ALAW[usize::from(ALAW_TO_ULAW[usize::from(code)])];
            assert!(
                (position(code) - position(back)).abs() <= 1,
                "{code:#04x} came back as {back:#04x}"
            );
        }
    }

    #[test]
    fn transcode_in_place_uses_the_tables() {
        let mut payload: Vec<u8> = (0..=255u8).collect();
        transcode_in_place(&mut payload, Transcode::UlawToAlaw);
        for (code, &out) in (0..=255u8).zip(&payload) {
            assert_eq!(out, linear_to_alaw(ulaw_to_linear(code)));
        }
        transcode_in_place(&mut payload, Transcode::AlawToUlaw);
        for (code, &out) in (0..=255u8).zip(&payload) {
            assert_eq!(
                out,
                ALAW_TO_ULAW[usize::from(ULAW_TO_ALAW[usize::from(code)])]
            );
        }
        transcode_in_place(&mut [], Transcode::AlawToUlaw);
    }
}
