//! The recordings' WAV format: RIFF, one `fmt ` chunk (PCM, 2 channels, 8 kHz, 16-bit) and
//! one `data` chunk, so the header is always the first 44 bytes and its two sizes sit at fixed
//! offsets. The writer appends samples first and then rewrites the sizes, so a crash leaves a
//! header that covers every sample it names (at most the last append is not counted), and
//! [`repair`] makes the sizes match the file again.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// The header's length: the samples start here.
pub const HEADER: u64 = 44;
/// Bytes per stereo sample frame (two 16-bit samples).
pub const FRAME_BYTES: u64 = 4;
const CHANNELS: u16 = 2;
const BITS: u16 = 16;

/// The header of a file holding `data_bytes` bytes of samples.
pub fn header(data_bytes: u32) -> [u8; HEADER as usize] {
    let rate = super::RATE as u32;
    let block = CHANNELS * BITS / 8;
    let mut out = [0u8; HEADER as usize];
    out[0..4].copy_from_slice(b"RIFF");
    out[4..8].copy_from_slice(&(36u32.saturating_add(data_bytes)).to_le_bytes());
    out[8..12].copy_from_slice(b"WAVE");
    out[12..16].copy_from_slice(b"fmt ");
    out[16..20].copy_from_slice(&16u32.to_le_bytes());
    out[20..22].copy_from_slice(&1u16.to_le_bytes()); // PCM
    out[22..24].copy_from_slice(&CHANNELS.to_le_bytes());
    out[24..28].copy_from_slice(&rate.to_le_bytes());
    out[28..32].copy_from_slice(&(rate * u32::from(block)).to_le_bytes());
    out[32..34].copy_from_slice(&block.to_le_bytes());
    out[34..36].copy_from_slice(&BITS.to_le_bytes());
    out[36..40].copy_from_slice(b"data");
    out[40..44].copy_from_slice(&data_bytes.to_le_bytes());
    out
}

/// Rewrites the two sizes of `file`'s header for `data_bytes` of samples.
pub fn set_sizes(file: &File, data_bytes: u32) -> io::Result<()> {
    let riff = 36u32.saturating_add(data_bytes).to_le_bytes();
    file.write_all_at(&riff, 4)?;
    file.write_all_at(&data_bytes.to_le_bytes(), 40)
}

/// Whether `head` is the header this recorder writes (whatever its sizes).
pub fn is_ours(head: &[u8]) -> bool {
    let expected = header(0);
    head.len() >= HEADER as usize && head[0..4] == expected[0..4] && head[8..40] == expected[8..40]
}

/// Makes the header's sizes match `file`'s length (whole stereo frames after the header).
/// Returns whether it changed anything; files not written by this recorder are left alone.
pub fn repair(file: &File) -> io::Result<bool> {
    let mut head = [0u8; HEADER as usize];
    if file.read_at(&mut head, 0)? < head.len() || !is_ours(&head) {
        return Ok(false);
    }
    let length = file.metadata()?.len();
    let frames = length.saturating_sub(HEADER) / FRAME_BYTES;
    let data = u32::try_from(frames * FRAME_BYTES).unwrap_or(u32::MAX - 3);
    if head[40..44] == data.to_le_bytes() && head[4..8] == 36u32.saturating_add(data).to_le_bytes()
    {
        return Ok(false);
    }
    set_sizes(file, data)?;
    Ok(true)
}
