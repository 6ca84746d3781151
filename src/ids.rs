//! Identifiers the gateway invents: tags, branches, Call-IDs, SSRCs and call ids.
//!
//! Core code never reads entropy itself: it is handed an [`IdGenerator`], keyed once at the edge
//! ([`IdGenerator::from_entropy`]) or with a fixed seed in tests, so runs are reproducible.

use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};

/// The system's random number generator could not be read.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the system's random number generator failed")]
pub struct EntropyError;

/// ChaCha20 as a keystream generator: a CSPRNG, so no number of observed tags, branches or
/// Call-IDs tells the next one. Peers are known by their source address; whoever could predict
/// a dialog's identifiers could forge a BYE or a REFER for a call it never saw (RFC 3261 §19.3
/// asks for cryptographically random tags, §8.1.1.4 for unguessable Call-IDs).
#[derive(Debug, Clone)]
pub struct IdGenerator {
    stream: ChaCha20Rng,
}

impl IdGenerator {
    /// A fixed seed: the same identifiers every run (tests).
    pub fn new(seed: u64) -> IdGenerator {
        IdGenerator {
            stream: ChaCha20Rng::seed_from_u64(seed),
        }
    }

    /// Keyed from the system's CSPRNG (getrandom).
    ///
    /// # Errors
    /// [`EntropyError`] when the system's generator cannot be read.
    pub fn from_entropy() -> Result<IdGenerator, EntropyError> {
        use ring::rand::SecureRandom as _;
        let mut key = [0u8; 32];
        ring::rand::SystemRandom::new()
            .fill(&mut key)
            .map_err(|_| EntropyError)?;
        Ok(IdGenerator {
            stream: ChaCha20Rng::from_seed(key),
        })
    }

    pub fn next_u64(&mut self) -> u64 {
        self.stream.next_u64()
    }

    /// A new generator for a child (one per call), so calls do not share state; its key is
    /// 256 bits of this one's keystream.
    pub fn fork(&mut self) -> IdGenerator {
        let mut key = [0u8; 32];
        self.stream.fill_bytes(&mut key);
        IdGenerator {
            stream: ChaCha20Rng::from_seed(key),
        }
    }

    /// A From/To tag.
    pub fn tag(&mut self) -> String {
        format!("{:012x}", self.next_u64() & 0xffff_ffff_ffff)
    }

    /// A digest client nonce (RFC 7616 §3.4): 128 bits in hex.
    pub fn cnonce(&mut self) -> String {
        format!("{:016x}{:016x}", self.next_u64(), self.next_u64())
    }

    /// A Via branch with the RFC 3261 magic cookie (§8.1.1.7).
    pub fn branch(&mut self) -> String {
        format!("z9hG4bK{:016x}", self.next_u64())
    }

    /// A Call-ID (§8.1.1.4), `host` being the gateway's address.
    pub fn call_id(&mut self, host: &str) -> String {
        format!(
            "{:016x}{:08x}@{host}",
            self.next_u64(),
            self.next_u64() as u32
        )
    }

    /// The gateway's own call identifier (the call record's key).
    pub fn call_key(&mut self) -> String {
        format!("{:016x}", self.next_u64())
    }

    pub fn ssrc(&mut self) -> u32 {
        (self.next_u64() >> 32) as u32
    }

    pub fn u16(&mut self) -> u16 {
        (self.next_u64() >> 48) as u16
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_ids_and_formats() {
        let mut a = IdGenerator::new(7);
        let mut b = IdGenerator::new(7);
        assert_eq!(a.branch(), b.branch());
        let branch = a.branch();
        assert!(branch.starts_with("z9hG4bK") && branch.len() == 23);
        assert_eq!(a.tag().len(), 12);
        assert!(a.call_id("127.0.0.1").ends_with("@127.0.0.1"));
        assert_ne!(a.next_u64(), a.next_u64());
    }

    /// What an attacker does with SplitMix64 (the generator before this one): invert its
    /// output mix to the state, and so every identifier that follows. With ChaCha20 the same
    /// attack predicts nothing.
    #[test]
    fn one_observed_call_id_does_not_predict_the_next() {
        fn inverse(odd: u64) -> u64 {
            let mut x = odd;
            for _ in 0..6 {
                x = x.wrapping_mul(2u64.wrapping_sub(odd.wrapping_mul(x)));
            }
            x
        }
        /// The SplitMix64 state that produced `output`.
        fn state_of(output: u64) -> u64 {
            let mut z = output;
            z = unshift_exact(z, 31);
            z = z.wrapping_mul(inverse(0x94d0_49bb_1331_11eb));
            z = unshift_exact(z, 27);
            z = z.wrapping_mul(inverse(0xbf58_476d_1ce4_e5b9));
            unshift_exact(z, 30)
        }
        fn unshift_exact(y: u64, shift: u32) -> u64 {
            let mut x = y;
            for _ in 0..64 {
                x = y ^ (x >> shift);
            }
            x
        }
        fn splitmix(state: &mut u64) -> u64 {
            *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = *state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }
        // The attack works on SplitMix64 itself: a Call-ID is two outputs, so the next
        // Call-ID is the third and fourth after the one seen.
        let mut victim = 0x1234_5678_9abc_def0u64;
        let seen = splitmix(&mut victim);
        let mut attacker = state_of(seen);
        assert_eq!(splitmix(&mut attacker), splitmix(&mut victim));
        assert_eq!(splitmix(&mut attacker), splitmix(&mut victim));

        let mut ids = IdGenerator::from_entropy().unwrap_or_else(|e| panic!("{e}"));
        let mut predicted = 0;
        for _ in 0..1000 {
            let call_id = ids.call_id("gw");
            let seen = u64::from_str_radix(&call_id[..16], 16).unwrap_or_default();
            let mut attacker = state_of(seen);
            let _second_half = splitmix(&mut attacker);
            let guess = format!(
                "{:016x}{:08x}@gw",
                splitmix(&mut attacker),
                splitmix(&mut attacker) as u32
            );
            let next = ids.call_id("gw");
            predicted += usize::from(guess == next);
        }
        assert_eq!(predicted, 0);
    }
}
