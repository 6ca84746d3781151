//! Identifiers the gateway invents: tags, branches, Call-IDs, SSRCs and call ids.
//!
//! Core code never reads entropy itself: it is handed an [`IdGenerator`], seeded once at the edge
//! ([`IdGenerator::from_entropy`]) or with a fixed seed in tests, so runs are reproducible.

use std::hash::{BuildHasher, Hasher};

/// SplitMix64: tiny, fast, and good enough for unguessable-per-run protocol identifiers
/// (RFC 3261 asks for global uniqueness and 32 bits of randomness in tags, §19.3).
#[derive(Debug, Clone)]
pub struct IdGenerator {
    state: u64,
}

impl IdGenerator {
    pub fn new(seed: u64) -> IdGenerator {
        IdGenerator { state: seed }
    }

    /// Seeded from the OS's randomness (the std hasher's per-process random keys) and the clock.
    pub fn from_entropy() -> IdGenerator {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        hasher.write_u64(nanos);
        hasher.write_u32(std::process::id());
        IdGenerator::new(hasher.finish())
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A new generator for a child (one per call), so calls do not share state.
    pub fn fork(&mut self) -> IdGenerator {
        IdGenerator::new(self.next_u64())
    }

    /// A From/To tag.
    pub fn tag(&mut self) -> String {
        format!("{:012x}", self.next_u64() & 0xffff_ffff_ffff)
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
}
