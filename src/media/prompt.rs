//! Announcements the operator records (提示音): WAV files read and checked once, at start and
//! by `--check`, into linear samples the relay plays from memory (no file I/O on the packet
//! path), encoded for each leg as it plays.
//!
//! A prompt file is RIFF/WAVE, 8000 Hz, mono, 16-bit PCM or G.711 (format 6 A-law, 7 µ-law),
//! between 20 ms and [`MAX_SECONDS`] long: what a telephone announcement is recorded as.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::g711;

/// The longest prompt: a queue announcement, not a programme.
pub const MAX_SECONDS: usize = 120;
const RATE: usize = 8000;
/// The largest prompt file: the longest prompt in 16-bit PCM, and room for other chunks.
const MAX_FILE_BYTES: u64 = (MAX_SECONDS * RATE * 2) as u64 + 65_536;
/// The shortest: one packet.
const MIN_SAMPLES: usize = 160;

/// One announcement's audio, 8 kHz linear.
#[derive(Clone, PartialEq, Eq)]
pub struct Prompt {
    samples: Arc<[i16]>,
    /// Silence after each play before the next (the announcement repeats while it is on).
    gap_samples: usize,
}

impl std::fmt::Debug for Prompt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Prompt({} samples)", self.samples.len())
    }
}

/// What the relay plays to a party in place of the other side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Announcement {
    /// The ringback tone (450 Hz, 1 s on, 4 s off).
    Ringback,
    /// A recorded prompt, repeated.
    Prompt(Prompt),
}

/// Why a prompt file cannot be played.
#[derive(Debug, thiserror::Error)]
pub enum PromptError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Format { path: PathBuf, reason: String },
}

impl Prompt {
    /// Reads and checks the WAV file at `path`; `gap_ms` of silence follow each play.
    ///
    /// # Errors
    /// The file cannot be read, or is not a prompt (the reason says what is wrong with it).
    pub fn load(path: &Path, gap_ms: u32) -> Result<Prompt, PromptError> {
        let read = |source| PromptError::Read {
            path: path.to_path_buf(),
            source,
        };
        // A file pointed to by mistake (a recording, an image) is not read whole first.
        let size = std::fs::metadata(path).map_err(read)?.len();
        if size > MAX_FILE_BYTES {
            return Err(PromptError::Format {
                path: path.to_path_buf(),
                reason: format!(
                    "{size} bytes; a prompt of {MAX_SECONDS} s takes at most {MAX_FILE_BYTES}"
                ),
            });
        }
        let bytes = std::fs::read(path).map_err(read)?;
        let samples = parse(&bytes).map_err(|reason| PromptError::Format {
            path: path.to_path_buf(),
            reason,
        })?;
        Ok(Prompt::from_samples(samples, gap_ms))
    }

    /// A prompt of these samples (8 kHz).
    pub fn from_samples(samples: Vec<i16>, gap_ms: u32) -> Prompt {
        Prompt {
            samples: samples.into(),
            gap_samples: gap_ms as usize * RATE / 1000,
        }
    }

    /// The sample at `position` of the repeating play (silence in the gaps).
    pub fn sample(&self, position: u64) -> i16 {
        let cycle = (self.samples.len() + self.gap_samples).max(1) as u64;
        let at = (position % cycle) as usize;
        self.samples.get(at).copied().unwrap_or(0)
    }

    /// Its length without the gap, in ms.
    pub fn duration_ms(&self) -> u64 {
        (self.samples.len() * 1000 / RATE) as u64
    }
}

/// The samples of a prompt WAV, or what is wrong with it.
fn parse(bytes: &[u8]) -> Result<Vec<i16>, String> {
    if bytes.len() < 12 || &bytes[0..4] != b"RIFF" || &bytes[8..12] != b"WAVE" {
        return Err("not a WAV file (no RIFF/WAVE header)".into());
    }
    let mut format: Option<(u16, u16, u32, u16)> = None;
    let mut at = 12;
    while at + 8 <= bytes.len() {
        let id = &bytes[at..at + 4];
        let size = u32::from_le_bytes([bytes[at + 4], bytes[at + 5], bytes[at + 6], bytes[at + 7]])
            as usize;
        let body = at + 8;
        // A header written before its data's length was known (a crash) says more than is
        // there: the data chunk runs to the end of the file.
        let end = body.saturating_add(size).min(bytes.len());
        let chunk = &bytes[body..end];
        match id {
            b"fmt " => {
                if chunk.len() < 16 {
                    return Err("its fmt chunk is too short".into());
                }
                let word = |i: usize| u16::from_le_bytes([chunk[i], chunk[i + 1]]);
                let rate = u32::from_le_bytes([chunk[4], chunk[5], chunk[6], chunk[7]]);
                format = Some((word(0), word(2), rate, word(14)));
            }
            b"data" => {
                let Some((tag, channels, rate, bits)) = format else {
                    return Err("its data comes before its fmt chunk".into());
                };
                if channels != 1 {
                    return Err(format!("{channels} channels; a prompt is mono"));
                }
                if rate != RATE as u32 {
                    return Err(format!("{rate} Hz; a prompt is 8000 Hz"));
                }
                let samples: Vec<i16> = match (tag, bits) {
                    (1, 16) => chunk
                        .chunks_exact(2)
                        .map(|b| i16::from_le_bytes([b[0], b[1]]))
                        .collect(),
                    (6, 8) => chunk.iter().map(|c| g711::alaw_to_linear(*c)).collect(),
                    (7, 8) => chunk.iter().map(|c| g711::ulaw_to_linear(*c)).collect(),
                    _ => {
                        return Err(format!(
                            "format {tag} with {bits} bits a sample; a prompt is 16-bit PCM (1), A-law (6) or µ-law (7)"
                        ))
                    }
                };
                if samples.len() < MIN_SAMPLES {
                    return Err("shorter than 20 ms".into());
                }
                if samples.len() > MAX_SECONDS * RATE {
                    return Err(format!(
                        "{} s long; a prompt is at most {MAX_SECONDS} s",
                        samples.len() / RATE
                    ));
                }
                return Ok(samples);
            }
            _ => {}
        }
        // Chunks are padded to an even length (RIFF).
        at = body.saturating_add(size).saturating_add(size & 1);
    }
    Err("no data chunk".into())
}

/// A WAV file's bytes for `samples` (8 kHz, mono, 16-bit PCM): what the tests record their
/// prompts as.
pub fn wav_bytes(samples: &[i16]) -> Vec<u8> {
    let data = (samples.len() * 2) as u32;
    let mut bytes = Vec::with_capacity(44 + data as usize);
    bytes.extend_from_slice(b"RIFF");
    bytes.extend_from_slice(&(36 + data).to_le_bytes());
    bytes.extend_from_slice(b"WAVEfmt ");
    bytes.extend_from_slice(&16u32.to_le_bytes());
    bytes.extend_from_slice(&1u16.to_le_bytes());
    bytes.extend_from_slice(&1u16.to_le_bytes());
    bytes.extend_from_slice(&(RATE as u32).to_le_bytes());
    bytes.extend_from_slice(&(RATE as u32 * 2).to_le_bytes());
    bytes.extend_from_slice(&2u16.to_le_bytes());
    bytes.extend_from_slice(&16u16.to_le_bytes());
    bytes.extend_from_slice(b"data");
    bytes.extend_from_slice(&data.to_le_bytes());
    for sample in samples {
        bytes.extend_from_slice(&sample.to_le_bytes());
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(count: usize) -> Vec<i16> {
        (0..count).map(|n| ((n % 16) as i16 - 8) * 1000).collect()
    }

    #[test]
    fn a_pcm_prompt_loads_and_repeats_after_its_gap() {
        let samples = tone(800);
        let prompt = Prompt::from_samples(parse(&wav_bytes(&samples)).unwrap(), 50);
        assert_eq!(prompt.duration_ms(), 100);
        assert_eq!(prompt.sample(3), samples[3]);
        assert_eq!(prompt.sample(800), 0, "the gap");
        assert_eq!(prompt.sample(800 + 399), 0);
        assert_eq!(prompt.sample(1200 + 3), samples[3], "again");
    }

    #[test]
    fn g711_prompts_load() {
        let mut bytes = wav_bytes(&[0; 400]);
        // Rewritten as 8-bit A-law: format 6, 8 bits, 400 bytes of data.
        bytes[20..22].copy_from_slice(&6u16.to_le_bytes());
        bytes[34..36].copy_from_slice(&8u16.to_le_bytes());
        bytes[40..44].copy_from_slice(&400u32.to_le_bytes());
        bytes.truncate(44 + 400);
        bytes[44..].fill(g711::linear_to_alaw(1000));
        let samples = parse(&bytes).unwrap();
        assert_eq!(samples.len(), 400);
        assert!((samples[0] - 1000).abs() < 40);
    }

    #[test]
    fn what_is_not_a_prompt_says_why() {
        let reason = |bytes: &[u8]| parse(bytes).err().unwrap_or_default();
        assert!(reason(b"not a wav").contains("RIFF"));
        let mut stereo = wav_bytes(&tone(800));
        stereo[22..24].copy_from_slice(&2u16.to_le_bytes());
        assert!(reason(&stereo).contains("mono"));
        let mut fast = wav_bytes(&tone(800));
        fast[24..28].copy_from_slice(&16_000u32.to_le_bytes());
        assert!(reason(&fast).contains("8000 Hz"));
        assert!(reason(&wav_bytes(&tone(100))).contains("20 ms"));
        assert!(reason(&wav_bytes(&vec![0; (MAX_SECONDS + 1) * RATE])).contains("at most"));
        let mut float = wav_bytes(&tone(800));
        float[20..22].copy_from_slice(&3u16.to_le_bytes());
        assert!(reason(&float).contains("format 3"));
        let path = Path::new("/nonexistent/prompt.wav");
        let error = Prompt::load(path, 0).err().map(|e| e.to_string());
        assert!(error.is_some_and(|e| e.contains("/nonexistent/prompt.wav")));
    }
}
