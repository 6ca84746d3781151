//! ITU-T G.711 μ-law and A-law: decode tables, encoders, and byte-to-byte transcoding tables.
//!
//! Everything is computed at compile time (`const fn`), so the per-packet path is one table
//! lookup per byte and never allocates.

/// Decodes one μ-law byte to 16-bit linear PCM.
pub const fn ulaw_to_linear(code: u8) -> i16 {
    ULAW_DECODE[code as usize]
}

/// Decodes one A-law byte to 16-bit linear PCM.
pub const fn alaw_to_linear(code: u8) -> i16 {
    ALAW_DECODE[code as usize]
}

const fn decode_ulaw(code: u8) -> i16 {
    // G.711 §2: complement, then sign, 3-bit exponent, 4-bit mantissa; bias 0x84.
    let code = !code;
    let exponent = (code >> 4) & 0x07;
    let mantissa = (code & 0x0f) as i32;
    let magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84;
    if code & 0x80 != 0 {
        -magnitude as i16
    } else {
        magnitude as i16
    }
}

const fn decode_alaw(code: u8) -> i16 {
    // G.711 §3: even bits inverted (XOR 0x55), sign bit set means positive.
    let code = code ^ 0x55;
    let exponent = (code >> 4) & 0x07;
    let mantissa = (code & 0x0f) as i32;
    let magnitude = if exponent == 0 {
        (mantissa << 4) + 8
    } else {
        ((mantissa << 4) + 0x108) << (exponent - 1)
    };
    if code & 0x80 != 0 {
        magnitude as i16
    } else {
        -magnitude as i16
    }
}

/// Encodes 16-bit linear PCM as μ-law (clipped at the G.711 maximum 32635).
pub const fn linear_to_ulaw(sample: i16) -> u8 {
    let mut value = sample as i32;
    let sign = if value < 0 {
        value = -value;
        0x80
    } else {
        0
    };
    if value > 32_635 {
        value = 32_635;
    }
    value += 0x84;
    let mut exponent = 7;
    let mut mask = 0x4000;
    while exponent > 0 && value & mask == 0 {
        exponent -= 1;
        mask >>= 1;
    }
    let mantissa = (value >> (exponent + 3)) & 0x0f;
    !((sign | (exponent << 4) | mantissa) as u8)
}

/// Encodes 16-bit linear PCM as A-law.
pub const fn linear_to_alaw(sample: i16) -> u8 {
    let mut value = sample as i32;
    let sign = if value >= 0 {
        0x80
    } else {
        value = -value - 1;
        0
    };
    if value > 32_767 {
        value = 32_767;
    }
    let code = if value < 256 {
        value >> 4
    } else {
        let mut exponent = 7;
        let mut mask = 0x4000;
        while value & mask == 0 {
            exponent -= 1;
            mask >>= 1;
        }
        (exponent << 4) | ((value >> (exponent + 3)) & 0x0f)
    };
    ((sign | code) as u8) ^ 0x55
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

/// Which way to transcode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transcode {
    UlawToAlaw,
    AlawToUlaw,
}

/// Transcodes a G.711 payload in place: one lookup per byte.
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

    #[test]
    fn known_codes() {
        assert_eq!(ulaw_to_linear(0xff), 0);
        assert_eq!(ulaw_to_linear(0x7f), 0);
        assert_eq!(ulaw_to_linear(0x80), 32_124);
        assert_eq!(ulaw_to_linear(0x00), -32_124);
        assert_eq!(alaw_to_linear(0xd5), 8);
        assert_eq!(alaw_to_linear(0x55), -8);
        assert_eq!(alaw_to_linear(0xaa), 32_256);
        assert_eq!(alaw_to_linear(0x2a), -32_256);
    }

    #[test]
    fn encode_of_decode_is_identity() {
        for code in 0..=255u8 {
            let expected = if code == 0x7f { 0xff } else { code };
            assert_eq!(
                linear_to_ulaw(ulaw_to_linear(code)),
                expected,
                "μ-law {code:#x}"
            );
            assert_eq!(
                linear_to_alaw(alaw_to_linear(code)),
                code,
                "A-law {code:#x}"
            );
        }
    }

    #[test]
    fn decode_is_monotonic_in_segment_order() {
        // Positive μ-law codes run 0xff (smallest) down to 0x80 (largest).
        let ulaw: Vec<i16> = (0x80..=0xffu8).rev().map(ulaw_to_linear).collect();
        assert!(ulaw.windows(2).all(|w| w[0] <= w[1]));
        let alaw: Vec<i16> = (0x80..=0xffu8).map(|c| alaw_to_linear(c ^ 0x55)).collect();
        assert!(alaw.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn transcoding_a_sine_keeps_its_shape() {
        for n in 0..160 {
            let sample = (10_000.0
                * (2.0 * std::f64::consts::PI * 440.0 * f64::from(n) / 8000.0).sin())
                as i16;
            let mut payload = [linear_to_ulaw(sample)];
            transcode_in_place(&mut payload, Transcode::UlawToAlaw);
            let error = (i32::from(alaw_to_linear(payload[0])) - i32::from(sample)).abs();
            // Two quantisations (μ-law, then A-law), each off by up to half a step of 1/16 of
            // the segment: within 1/16 of the level plus the smallest step.
            assert!(
                error <= i32::from(sample).abs() / 16 + 16,
                "sample {sample} error {error}"
            );
        }
    }

    #[test]
    fn round_trip_through_alaw_stays_within_one_step() {
        for code in 0..=255u8 {
            let back = ALAW_TO_ULAW[usize::from(ULAW_TO_ALAW[usize::from(code)])];
            let (a, b) = (
                i32::from(ulaw_to_linear(code)),
                i32::from(ulaw_to_linear(back)),
            );
            let step = (a.abs() / 16).max(16);
            assert!((a - b).abs() <= step, "{code:#x}: {a} vs {b}");
        }
    }
}
