//! SRTP and SRTCP (RFC 3711) with AES-CM-128 and HMAC-SHA1, keyed by SDES (RFC 4568).
//!
//! Sans-IO and in place: a [`Sender`] protects the packets of our stream to one endpoint, a
//! [`Receiver`] authenticates, checks for replays and decrypts what that endpoint sends. Keys
//! are never rederived (key derivation rate 0, the SDES default, RFC 4568 §6.1) and MKIs are
//! not used, so a context is exactly one master key.

use aes::cipher::generic_array::GenericArray;
use aes::cipher::{BlockEncrypt, KeyInit};
use aes::Aes128;
use hmac::{Hmac, Mac};
use sha1::Sha1;

use crate::ids::IdGenerator;

/// The crypto suites we take (RFC 4568 §6.2). Both protect SRTCP with an 80-bit tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Suite {
    AesCm128HmacSha1_80,
    AesCm128HmacSha1_32,
}

impl Suite {
    /// The suite's name in `a=crypto`.
    pub fn name(self) -> &'static str {
        match self {
            Suite::AesCm128HmacSha1_80 => "AES_CM_128_HMAC_SHA1_80",
            Suite::AesCm128HmacSha1_32 => "AES_CM_128_HMAC_SHA1_32",
        }
    }

    pub fn from_name(name: &str) -> Option<Suite> {
        match name {
            "AES_CM_128_HMAC_SHA1_80" => Some(Suite::AesCm128HmacSha1_80),
            "AES_CM_128_HMAC_SHA1_32" => Some(Suite::AesCm128HmacSha1_32),
            _ => None,
        }
    }

    /// Length of the SRTP authentication tag.
    fn rtp_tag(self) -> usize {
        match self {
            Suite::AesCm128HmacSha1_80 => 10,
            Suite::AesCm128HmacSha1_32 => 4,
        }
    }
}

/// The SRTCP authentication tag, for both suites (RFC 4568 §6.2.1, §6.2.2).
const RTCP_TAG: usize = 10;
/// What protecting adds to a packet at most: an SRTCP index and tag.
pub const MAX_OVERHEAD: usize = 4 + RTCP_TAG;

/// A master key and salt: 16 + 14 bytes, as carried base64-encoded in `inline:`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct MasterKey(pub [u8; 30]);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Key material never reaches a log.
        f.write_str("MasterKey(..)")
    }
}

impl MasterKey {
    /// A fresh key from the operating system's CSPRNG (RFC 4568 §10.1 wants it unpredictable).
    pub fn generate() -> Option<MasterKey> {
        let mut bytes = [0u8; 30];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).ok()?;
        Some(MasterKey(bytes))
    }

    /// A fresh key from `ids`, the caller's ChaCha20 stream (a CSPRNG keyed from the system's
    /// at the edge): core code takes its keys from there rather than reading entropy itself.
    pub fn from_ids(ids: &mut IdGenerator) -> MasterKey {
        let mut bytes = [0u8; 30];
        for chunk in bytes.chunks_mut(8) {
            let word = ids.next_u64().to_be_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
        MasterKey(bytes)
    }

    fn key(&self) -> [u8; 16] {
        let mut key = [0u8; 16];
        key.copy_from_slice(&self.0[..16]);
        key
    }

    fn salt(&self) -> [u8; 14] {
        let mut salt = [0u8; 14];
        salt.copy_from_slice(&self.0[16..]);
        salt
    }
}

/// What one leg's SRTP needs: the suite both sides agreed on, the key we protect our stream
/// to the endpoint with, and the key it protects its stream to us with (RFC 4568 §6.1: each
/// side's own).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keys {
    pub suite: Suite,
    pub ours: MasterKey,
    pub theirs: MasterKey,
    /// The length of the MKI in the endpoint's packets (0: none); we send none.
    pub their_mki: u8,
}

/// Why a received packet was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SrtpError {
    #[error("too short for SRTP")]
    TooShort,
    #[error("authentication failed")]
    Authentication,
    #[error("replayed or too old")]
    Replay,
}

/// Session keys for one direction of RTP or RTCP (RFC 3711 §4.3).
struct SessionKeys {
    cipher: Aes128,
    salt: [u8; 14],
    /// HMAC-SHA1 keyed once; each packet's MAC starts from a copy (RustCrypto's SHA-1 uses
    /// the CPU's SHA extensions where it has them: measured 2x faster than ring's here).
    auth: Hmac<Sha1>,
}

impl SessionKeys {
    /// Derives the session keys with labels `first`, `first + 1`, `first + 2`: 0 for SRTP,
    /// 3 for SRTCP (§4.3.1, §4.3.2; key derivation rate 0, so r = 0).
    fn derive(master: &MasterKey, first: u8) -> SessionKeys {
        let kdf = Aes128::new(&GenericArray::from(master.key()));
        let prf = |label: u8, out: &mut [u8]| {
            // x = key_id XOR master_salt, with key_id = label || r (48 bits of 0) aligned
            // to the salt's right; the IV is x * 2^16.
            let mut iv = [0u8; 16];
            iv[..14].copy_from_slice(&master.salt());
            iv[7] ^= label;
            keystream(&kdf, iv, out);
        };
        let mut key = [0u8; 16];
        let mut auth = [0u8; 20];
        let mut salt = [0u8; 14];
        prf(first, &mut key);
        prf(first + 1, &mut auth);
        prf(first + 2, &mut salt);
        SessionKeys {
            cipher: Aes128::new(&GenericArray::from(key)),
            salt,
            // A 20-byte key always fits HMAC.
            auth: match <Hmac<Sha1> as Mac>::new_from_slice(&auth) {
                Ok(mac) => mac,
                Err(_) => unreachable!("HMAC takes keys of any length"),
            },
        }
    }

    /// XORs `data` with the AES-CM keystream of `ssrc` and `index` (§4.1.1).
    fn crypt(&self, ssrc: u32, index: u64, data: &mut [u8]) {
        let mut iv = [0u8; 16];
        iv[..14].copy_from_slice(&self.salt);
        for (byte, s) in iv[4..8].iter_mut().zip(ssrc.to_be_bytes()) {
            *byte ^= s;
        }
        for (byte, i) in iv[8..14].iter_mut().zip(&index.to_be_bytes()[2..]) {
            *byte ^= i;
        }
        let mut block = [0u8; 16 * 8];
        for chunk in data.chunks_mut(block.len()) {
            keystream(&self.cipher, iv, &mut block[..chunk.len()]);
            for (byte, k) in chunk.iter_mut().zip(&block) {
                *byte ^= k;
            }
            // Eight blocks on: the counter is the IV's low 16 bits and up (§4.1.1).
            iv = (u128::from_be_bytes(iv).wrapping_add(8)).to_be_bytes();
        }
    }

    /// HMAC-SHA1 over `parts`, truncated into `tag`.
    fn sign(&self, parts: &[&[u8]], tag: &mut [u8]) {
        let mut mac = self.auth.clone();
        for part in parts {
            mac.update(part);
        }
        let full = mac.finalize().into_bytes();
        let length = tag.len();
        tag.copy_from_slice(&full[..length]);
    }

    fn verify(&self, parts: &[&[u8]], tag: &[u8]) -> bool {
        let mut expected = [0u8; 20];
        let expected = &mut expected[..tag.len()];
        self.sign(parts, expected);
        // Constant time: a timing oracle would let a forger guess the tag byte by byte.
        expected.iter().zip(tag).fold(0u8, |d, (a, b)| d | (a ^ b)) == 0
    }
}

/// AES in counter mode from `iv`: `out.len()` bytes of keystream (at most 8 blocks at a time,
/// so the cipher can run them in parallel).
fn keystream(cipher: &Aes128, iv: [u8; 16], out: &mut [u8]) {
    let counter = u128::from_be_bytes(iv);
    let mut blocks = [GenericArray::from([0u8; 16]); 8];
    for (n, chunk) in out.chunks_mut(16 * 8).enumerate() {
        let count = chunk.len().div_ceil(16);
        for (i, block) in blocks.iter_mut().take(count).enumerate() {
            let value = counter.wrapping_add((n * 8 + i) as u128);
            *block = GenericArray::from(value.to_be_bytes());
        }
        cipher.encrypt_blocks(&mut blocks[..count]);
        for (bytes, block) in chunk.chunks_mut(16).zip(&blocks) {
            bytes.copy_from_slice(&block[..bytes.len()]);
        }
    }
}

/// The RTP header's length (fixed part, CSRCs, extension), which SRTP leaves in the clear.
fn rtp_header_length(packet: &[u8]) -> Option<usize> {
    let first = *packet.first()?;
    let mut length = 12 + 4 * usize::from(first & 0x0f);
    if first & 0x10 != 0 {
        let words = packet.get(length + 2..length + 4)?;
        length += 4 + 4 * usize::from(u16::from_be_bytes([words[0], words[1]]));
    }
    (length <= packet.len()).then_some(length)
}

fn ssrc_at(packet: &[u8], at: usize) -> Option<u32> {
    let bytes = packet.get(at..at + 4)?;
    Some(u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
}

/// The packet index a sequence number most likely has, given the highest one seen
/// (§3.3.1, Appendix A): returns the rollover counter to use.
fn estimate_roc(roc: u32, highest: u16, sequence: u16) -> u32 {
    if highest < 0x8000 {
        if sequence > highest && sequence - highest > 0x8000 {
            // Before the stream's first index, there is no earlier rollover: ROC 0 stays.
            return roc.saturating_sub(1);
        }
    } else if sequence < highest - 0x8000 {
        return roc.wrapping_add(1);
    }
    roc
}

/// Protects our stream to one endpoint.
pub struct Sender {
    suite: Suite,
    rtp: SessionKeys,
    rtcp: SessionKeys,
    /// The indexes sent: the highest (its rollover counter and sequence number) and the 64
    /// below it. None before the first packet.
    sent: Option<ReplayWindow>,
    /// The last SRTCP index used (31 bits, §3.4).
    rtcp_index: u32,
}

impl Sender {
    pub fn new(suite: Suite, key: &MasterKey) -> Sender {
        Sender {
            suite,
            rtp: SessionKeys::derive(key, 0),
            rtcp: SessionKeys::derive(key, 3),
            sent: None,
            rtcp_index: 0,
        }
    }

    /// Another suite on the same key (a re-offer that picked another line): the session keys
    /// do not depend on the suite (§4.3), so the indexes used stay used.
    pub fn set_suite(&mut self, suite: Suite) {
        self.suite = suite;
    }

    /// Encrypts the RTP packet in `buffer[..length]` and appends its tag: returns the SRTP
    /// packet's length. None if it is no RTP packet, `buffer` has no room for the tag, or its
    /// index was used already or is too far behind to tell: a key, SSRC and index must never
    /// encrypt twice (§9.1), so such a packet (a late one relayed after ones we generated) is
    /// not sent.
    pub fn protect_rtp(&mut self, buffer: &mut [u8], length: usize) -> Option<usize> {
        let tag = self.suite.rtp_tag();
        if buffer.len() < length + tag {
            return None;
        }
        let packet = &mut buffer[..length];
        let header = rtp_header_length(packet)?;
        let sequence = u16::from_be_bytes([packet[2], packet[3]]);
        let ssrc = ssrc_at(packet, 8)?;
        let roc = match self.sent {
            None => 0,
            Some(sent) => estimate_roc((sent.highest >> 16) as u32, sent.highest as u16, sequence),
        };
        let index = (u64::from(roc) << 16) | u64::from(sequence);
        let mut sent = self.sent.unwrap_or(ReplayWindow {
            highest: index,
            seen: 0,
        });
        if !sent.check(index) {
            return None;
        }
        sent.accept(index);
        self.sent = Some(sent);
        self.rtp.crypt(ssrc, index, &mut packet[header..]);
        let (packet, rest) = buffer.split_at_mut(length);
        self.rtp
            .sign(&[packet, &roc.to_be_bytes()], &mut rest[..tag]);
        Some(length + tag)
    }

    /// Encrypts the compound RTCP packet in `buffer[..length]` and appends the E flag, the
    /// SRTCP index and the tag (§3.4): returns the SRTCP packet's length.
    pub fn protect_rtcp(&mut self, buffer: &mut [u8], length: usize) -> Option<usize> {
        if length < 8 || buffer.len() < length + MAX_OVERHEAD {
            return None;
        }
        let ssrc = ssrc_at(buffer, 4)?;
        // Counted before use, as libsrtp does: the first packet has index 1.
        let index = (self.rtcp_index + 1) & 0x7fff_ffff;
        self.rtcp_index = index;
        self.rtcp
            .crypt(ssrc, u64::from(index), &mut buffer[8..length]);
        let e_index = (0x8000_0000 | index).to_be_bytes();
        buffer[length..length + 4].copy_from_slice(&e_index);
        let (packet, rest) = buffer.split_at_mut(length + 4);
        self.rtcp.sign(&[packet], &mut rest[..RTCP_TAG]);
        Some(length + MAX_OVERHEAD)
    }
}

/// The replay window's width in packets (§3.3.2 asks for at least 64).
const WINDOW: u64 = 64;
/// SSRCs one endpoint's receiver keeps state for; a new one beyond evicts the oldest.
const MAX_SOURCES: usize = 4;

/// Replay state of one source: the highest index accepted and a bitmap of the 64 below it.
#[derive(Clone, Copy)]
struct ReplayWindow {
    highest: u64,
    seen: u64,
}

impl ReplayWindow {
    fn check(&self, index: u64) -> bool {
        if index > self.highest {
            return true;
        }
        let behind = self.highest - index;
        behind < WINDOW && self.seen & (1 << behind) == 0
    }

    fn accept(&mut self, index: u64) {
        if index > self.highest {
            let ahead = index - self.highest;
            self.seen = if ahead >= WINDOW {
                1
            } else {
                (self.seen << ahead) | 1
            };
            self.highest = index;
        } else {
            self.seen |= 1 << (self.highest - index);
        }
    }
}

struct Source {
    ssrc: u32,
    /// SRTP: the rollover counter and the window over 48-bit packet indexes.
    rtp: Option<(u32, ReplayWindow)>,
    /// SRTCP: the window over 31-bit SRTCP indexes.
    rtcp: Option<ReplayWindow>,
}

/// Authenticates and decrypts what one endpoint sends.
pub struct Receiver {
    suite: Suite,
    /// Bytes of MKI between the packet and its tag (we hold one key, so it is not read).
    mki: usize,
    rtp: SessionKeys,
    rtcp: SessionKeys,
    sources: Vec<Source>,
}

impl Receiver {
    pub fn new(suite: Suite, key: &MasterKey, mki: u8) -> Receiver {
        Receiver {
            suite,
            mki: usize::from(mki),
            rtp: SessionKeys::derive(key, 0),
            rtcp: SessionKeys::derive(key, 3),
            sources: Vec::new(),
        }
    }

    /// Another suite on the same key: the replay windows and rollover counters go on.
    pub fn set_suite(&mut self, suite: Suite) {
        self.suite = suite;
    }

    /// The endpoint's MKI length changed (RFC 4568 lets a re-offer say so); same key, same
    /// windows.
    pub fn set_mki(&mut self, mki: u8) {
        self.mki = usize::from(mki);
    }

    fn source(&mut self, ssrc: u32) -> usize {
        if let Some(at) = self.sources.iter().position(|s| s.ssrc == ssrc) {
            return at;
        }
        if self.sources.len() == MAX_SOURCES {
            self.sources.remove(0);
        }
        self.sources.push(Source {
            ssrc,
            rtp: None,
            rtcp: None,
        });
        self.sources.len() - 1
    }

    /// Checks and decrypts the SRTP packet in `packet`: returns the RTP packet's length (the
    /// tag cut off). Nothing changes for a packet that fails: a forged one costs no state.
    pub fn unprotect_rtp(&mut self, packet: &mut [u8]) -> Result<usize, SrtpError> {
        let tag = self.suite.rtp_tag();
        let length = packet
            .len()
            .checked_sub(tag + self.mki)
            .filter(|l| *l >= 12)
            .ok_or(SrtpError::TooShort)?;
        let header = rtp_header_length(&packet[..length]).ok_or(SrtpError::TooShort)?;
        let sequence = u16::from_be_bytes([packet[2], packet[3]]);
        let ssrc = ssrc_at(packet, 8).ok_or(SrtpError::TooShort)?;
        let known = self
            .sources
            .iter()
            .find(|s| s.ssrc == ssrc)
            .and_then(|s| s.rtp);
        // A new source starts at ROC 0 (§3.3.1).
        let roc = match known {
            Some((roc, window)) => estimate_roc(roc, window.highest as u16, sequence),
            None => 0,
        };
        let index = (u64::from(roc) << 16) | u64::from(sequence);
        if known.is_some_and(|(_, window)| !window.check(index)) {
            return Err(SrtpError::Replay);
        }
        let (body, received) = packet.split_at_mut(length);
        if !self
            .rtp
            .verify(&[body, &roc.to_be_bytes()], &received[self.mki..])
        {
            return Err(SrtpError::Authentication);
        }
        self.rtp.crypt(ssrc, index, &mut body[header..]);
        let at = self.source(ssrc);
        let source = &mut self.sources[at];
        let mut window = source.rtp.map_or(
            ReplayWindow {
                highest: index,
                seen: 0,
            },
            |(_, w)| w,
        );
        window.accept(index);
        source.rtp = Some(((window.highest >> 16) as u32, window));
        Ok(length)
    }

    /// Checks and decrypts the SRTCP packet in `packet`: returns the RTCP packet's length.
    pub fn unprotect_rtcp(&mut self, packet: &mut [u8]) -> Result<usize, SrtpError> {
        let length = packet
            .len()
            .checked_sub(MAX_OVERHEAD + self.mki)
            .filter(|l| *l >= 8)
            .ok_or(SrtpError::TooShort)?;
        let ssrc = ssrc_at(packet, 4).ok_or(SrtpError::TooShort)?;
        let e_index = ssrc_at(packet, length).ok_or(SrtpError::TooShort)?;
        let index = u64::from(e_index & 0x7fff_ffff);
        let window = self
            .sources
            .iter()
            .find(|s| s.ssrc == ssrc)
            .and_then(|s| s.rtcp);
        if window.is_some_and(|w| !w.check(index)) {
            return Err(SrtpError::Replay);
        }
        let (body, received) = packet.split_at_mut(length + 4);
        if !self.rtcp.verify(&[body], &received[self.mki..]) {
            return Err(SrtpError::Authentication);
        }
        // E = 0: the sender left the payload in the clear.
        if e_index & 0x8000_0000 != 0 {
            self.rtcp.crypt(ssrc, index, &mut body[8..length]);
        }
        let at = self.source(ssrc);
        let mut window = window.unwrap_or(ReplayWindow {
            highest: index,
            seen: 0,
        });
        window.accept(index);
        self.sources[at].rtcp = Some(window);
        Ok(length)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(text: &str) -> Vec<u8> {
        let digits: Vec<u8> = text
            .bytes()
            .filter(u8::is_ascii_hexdigit)
            .map(|b| (b as char).to_digit(16).unwrap_or(0) as u8)
            .collect();
        digits.chunks(2).map(|p| p[0] << 4 | p[1]).collect()
    }

    /// The master key and salt of RFC 3711 appendix B.3, also libsrtp's reference packet's.
    fn reference_key() -> MasterKey {
        let mut key = [0u8; 30];
        key.copy_from_slice(&hex(
            "E1F97A0D3E018BE0D64FA32C06DE4139 0EC675AD498AFEEBB6960B3AABE6",
        ));
        MasterKey(key)
    }

    #[test]
    fn aes_cm_keystream_is_rfc_3711_appendix_b2() {
        let cipher = Aes128::new(&GenericArray::from(
            <[u8; 16]>::try_from(hex("2B7E151628AED2A6ABF7158809CF4F3C")).unwrap_or_default(),
        ));
        let mut iv = [0u8; 16];
        iv[..14].copy_from_slice(&hex("F0F1F2F3F4F5F6F7F8F9FAFBFCFD"));
        let mut out = [0u8; 32];
        keystream(&cipher, iv, &mut out);
        assert_eq!(
            out.to_vec(),
            hex("E03EAD0935C95E80E166B16DD92B4EB4 D23513162B02D0F72A43A2FE4A5F97AB")
        );
    }

    #[test]
    fn session_keys_are_rfc_3711_appendix_b3() {
        let master = reference_key();
        let kdf = Aes128::new(&GenericArray::from(master.key()));
        let derive = |label: u8, length: usize| {
            let mut iv = [0u8; 16];
            iv[..14].copy_from_slice(&master.salt());
            iv[7] ^= label;
            let mut out = vec![0u8; length];
            keystream(&kdf, iv, &mut out);
            out
        };
        assert_eq!(derive(0, 16), hex("C61E7A93744F39EE10734AFE3FF7A087"));
        assert_eq!(derive(2, 14), hex("30CBBC08863D8C85D49DB34A9AE1"));
        assert_eq!(
            derive(1, 20),
            hex("CEBE321F6FF7716B6FD4AB49AF256A156D38BAA4")
        );
    }

    const PLAIN_RTP: &str = "800f1234decafbadcafebabe abababababababababababababababab";
    const PLAIN_RTCP: &str = "81c8000bcafebabe abababababababababababababababab";

    #[test]
    fn protects_libsrtps_reference_packets() {
        let mut sender = Sender::new(Suite::AesCm128HmacSha1_80, &reference_key());
        let mut buffer = [0u8; 64];
        let plain = hex(PLAIN_RTP);
        buffer[..plain.len()].copy_from_slice(&plain);
        let length = sender.protect_rtp(&mut buffer, plain.len());
        assert_eq!(
            buffer[..length.unwrap_or(0)].to_vec(),
            hex("800f1234decafbadcafebabe 4e55dc4ce79978d88ca4d215949d2402 b78d6acc99ea179b8dbb")
        );
        let plain = hex(PLAIN_RTCP);
        buffer[..plain.len()].copy_from_slice(&plain);
        let length = sender.protect_rtcp(&mut buffer, plain.len());
        assert_eq!(
            buffer[..length.unwrap_or(0)].to_vec(),
            hex("81c8000bcafebabe 7128035be487b9bdbef89041f977a5a8 80000001 993e08cd54d6c1230798")
        );
    }

    #[test]
    fn unprotects_libsrtps_reference_packets_once() {
        let mut receiver = Receiver::new(Suite::AesCm128HmacSha1_80, &reference_key(), 0);
        let srtp =
            hex("800f1234decafbadcafebabe4e55dc4ce79978d88ca4d215949d2402b78d6acc99ea179b8dbb");
        let mut packet = srtp.clone();
        assert_eq!(receiver.unprotect_rtp(&mut packet), Ok(28));
        assert_eq!(packet[..28].to_vec(), hex(PLAIN_RTP));
        let mut again = srtp.clone();
        assert_eq!(receiver.unprotect_rtp(&mut again), Err(SrtpError::Replay));

        let srtcp =
            hex("81c8000bcafebabe7128035be487b9bdbef89041f977a5a880000001993e08cd54d6c1230798");
        let mut packet = srtcp.clone();
        assert_eq!(receiver.unprotect_rtcp(&mut packet), Ok(24));
        assert_eq!(packet[..24].to_vec(), hex(PLAIN_RTCP));
        let mut again = srtcp;
        assert_eq!(receiver.unprotect_rtcp(&mut again), Err(SrtpError::Replay));
    }

    #[test]
    fn a_flipped_bit_or_another_key_fails_authentication_and_costs_no_state() {
        let mut receiver = Receiver::new(Suite::AesCm128HmacSha1_80, &reference_key(), 0);
        let srtp =
            hex("800f1234decafbadcafebabe4e55dc4ce79978d88ca4d215949d2402b78d6acc99ea179b8dbb");
        for at in [1, 3, 12, 20, 30] {
            let mut forged = srtp.clone();
            forged[at] ^= 0x01;
            assert_eq!(
                receiver.unprotect_rtp(&mut forged),
                Err(SrtpError::Authentication)
            );
        }
        let mut other = Receiver::new(Suite::AesCm128HmacSha1_80, &MasterKey([7; 30]), 0);
        assert_eq!(
            other.unprotect_rtp(&mut srtp.clone()),
            Err(SrtpError::Authentication)
        );
        assert_eq!(receiver.unprotect_rtp(&mut srtp.clone()), Ok(28));
        assert_eq!(
            receiver.unprotect_rtp(&mut srtp[..5].to_vec()),
            Err(SrtpError::TooShort)
        );
    }

    /// A sender's MKI (RFC 3711 §3.1) sits between the packet and its tag, unauthenticated.
    #[test]
    fn an_mki_before_the_tag_is_skipped() {
        let mut receiver = Receiver::new(Suite::AesCm128HmacSha1_80, &reference_key(), 4);
        let mut srtp = hex("800f1234decafbadcafebabe4e55dc4ce79978d88ca4d215949d2402");
        srtp.extend_from_slice(&[0, 0, 0, 1]);
        srtp.extend_from_slice(&hex("b78d6acc99ea179b8dbb"));
        assert_eq!(receiver.unprotect_rtp(&mut srtp), Ok(28));
        let mut srtcp = hex("81c8000bcafebabe7128035be487b9bdbef89041f977a5a880000001");
        srtcp.extend_from_slice(&[0, 0, 0, 1]);
        srtcp.extend_from_slice(&hex("993e08cd54d6c1230798"));
        assert_eq!(receiver.unprotect_rtcp(&mut srtcp), Ok(24));
    }

    fn rtp(sequence: u16, payload: u8) -> Vec<u8> {
        let mut packet = vec![0x80, 0, 0, 0, 0, 0, 0, 160, 0x11, 0x22, 0x33, 0x44];
        packet[2..4].copy_from_slice(&sequence.to_be_bytes());
        packet.extend_from_slice(&[payload; 160]);
        packet
    }

    /// Our sender and our receiver agree across a sequence-number wrap (the ROC goes to 1),
    /// with packets reordered within the window and a replay refused, for both suites.
    #[test]
    fn a_stream_survives_the_rollover_and_reordering() {
        for suite in [Suite::AesCm128HmacSha1_80, Suite::AesCm128HmacSha1_32] {
            let key = MasterKey([0x42; 30]);
            let mut sender = Sender::new(suite, &key);
            let mut receiver = Receiver::new(suite, &key, 0);
            let mut protected = Vec::new();
            for sequence in (65_500u16..=65_535).chain(0..40) {
                let plain = rtp(sequence, sequence as u8);
                let mut buffer = [0u8; 256];
                buffer[..plain.len()].copy_from_slice(&plain);
                let length = sender.protect_rtp(&mut buffer, plain.len()).unwrap_or(0);
                assert_eq!(length, plain.len() + suite.rtp_tag());
                assert_ne!(buffer[12..172], plain[12..], "the payload is encrypted");
                protected.push((buffer[..length].to_vec(), plain));
            }
            // Swap neighbours around the wrap: 65535 after 0.
            protected.swap(35, 36);
            for (srtp, plain) in &protected {
                let mut packet = srtp.clone();
                assert_eq!(receiver.unprotect_rtp(&mut packet), Ok(plain.len()));
                assert_eq!(&packet[..plain.len()], &plain[..]);
            }
            let mut replay = protected[30].0.clone();
            assert_eq!(receiver.unprotect_rtp(&mut replay), Err(SrtpError::Replay));
        }
    }

    /// A late packet relayed after ones we generated would get an index already used: it is
    /// not sent, and neither is one too far behind. The suite may change; the indexes stay used.
    #[test]
    fn the_sender_never_encrypts_an_index_twice() {
        let mut sender = Sender::new(Suite::AesCm128HmacSha1_80, &MasterKey([3; 30]));
        let mut buffer = [0u8; 256];
        let mut protect = |sender: &mut Sender, sequence: u16| {
            let plain = rtp(sequence, 1);
            buffer[..plain.len()].copy_from_slice(&plain);
            sender.protect_rtp(&mut buffer, plain.len())
        };
        assert!(protect(&mut sender, 100).is_some());
        assert!(protect(&mut sender, 102).is_some());
        assert!(
            protect(&mut sender, 101).is_some(),
            "a late one not sent before"
        );
        assert_eq!(protect(&mut sender, 102), None, "102 again");
        sender.set_suite(Suite::AesCm128HmacSha1_32);
        assert_eq!(
            protect(&mut sender, 101),
            None,
            "still used under the other suite"
        );
        assert!(protect(&mut sender, 200).is_some());
        assert_eq!(protect(&mut sender, 136), None, "64 behind");
        assert!(protect(&mut sender, 137).is_some());
    }

    #[test]
    fn the_replay_window_slides() {
        let mut window = ReplayWindow {
            highest: 100,
            seen: 1,
        };
        assert!(!window.check(100));
        assert!(window.check(99));
        window.accept(99);
        assert!(!window.check(99));
        window.accept(200);
        assert!(!window.check(136), "64 behind the highest is too old");
        assert!(window.check(137));
        assert!(window.check(201));
    }

    #[test]
    fn the_rollover_counter_is_estimated_as_rfc_3711_says() {
        assert_eq!(estimate_roc(5, 100, 101), 5);
        assert_eq!(
            estimate_roc(5, 100, 65_000),
            4,
            "a late packet from before the wrap"
        );
        assert_eq!(estimate_roc(5, 65_000, 3), 6, "just after the wrap");
        assert_eq!(estimate_roc(5, 65_000, 64_000), 5);
    }
}
