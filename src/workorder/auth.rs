//! Who a work-order client is: its bearer token checked against every platform's, in time
//! that tells nothing about how close a guess came, and sources that keep guessing throttled.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};

/// Failed logins one address may make per [`THROTTLE_WINDOW`]; beyond, its logins are refused
/// (RESOURCE_EXHAUSTED) until the window ends, whatever token they bring.
pub const MAX_FAILURES: u32 = 10;
pub const THROTTLE_WINDOW: Duration = Duration::from_secs(60);
/// Addresses followed at once (beyond, the oldest windows are forgotten first).
const TRACKED: usize = 4096;

/// The platforms' tokens, kept as SHA-256 digests: comparing digests of equal length leaks
/// neither a token's length nor the length of a matching prefix.
pub struct Tokens {
    platforms: Vec<(String, [u8; 32])>,
}

impl Tokens {
    pub fn new(tokens: impl IntoIterator<Item = (String, String)>) -> Tokens {
        Tokens {
            platforms: tokens
                .into_iter()
                .map(|(name, token)| (name, Sha256::digest(token.as_bytes()).into()))
                .collect(),
        }
    }

    /// The platform whose token `token` is. Every platform is compared, all the way.
    pub fn platform_of(&self, token: &str) -> Option<&str> {
        let given: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found = None;
        for (name, expected) in &self.platforms {
            let difference = expected
                .iter()
                .zip(&given)
                .fold(0u8, |difference, (a, b)| difference | (a ^ b));
            if difference == 0 && found.is_none() {
                found = Some(name.as_str());
            }
        }
        found
    }
}

/// Failed logins per source address, in fixed windows.
#[derive(Default)]
pub struct LoginThrottle {
    failures: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

impl LoginThrottle {
    /// Whether `source` may try to log in at `now`.
    pub fn allows(&self, source: IpAddr, now: Instant) -> bool {
        let failures = self
            .failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match failures.get(&source) {
            Some((since, count)) => {
                now.duration_since(*since) >= THROTTLE_WINDOW || *count < MAX_FAILURES
            }
            None => true,
        }
    }

    /// `source` brought a wrong token at `now`.
    pub fn failed(&self, source: IpAddr, now: Instant) {
        let mut failures = self
            .failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if failures.len() >= TRACKED && !failures.contains_key(&source) {
            failures.retain(|_, (since, _)| now.duration_since(*since) < THROTTLE_WINDOW);
            if failures.len() >= TRACKED {
                // Still full of live windows: forget the oldest one.
                if let Some(oldest) = failures.iter().min_by_key(|(_, (since, _))| *since) {
                    let oldest = *oldest.0;
                    failures.remove(&oldest);
                }
            }
        }
        let entry = failures.entry(source).or_insert((now, 0));
        if now.duration_since(entry.0) >= THROTTLE_WINDOW {
            *entry = (now, 0);
        }
        entry.1 = entry.1.saturating_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_platform_is_compared_and_lengths_tell_nothing() {
        let tokens = Tokens::new([
            ("12345".to_string(), "token-of-the-12345-system".to_string()),
            ("110".to_string(), "token-of-the-110-cad-system".to_string()),
        ]);
        assert_eq!(
            tokens.platform_of("token-of-the-110-cad-system"),
            Some("110")
        );
        assert_eq!(
            tokens.platform_of("token-of-the-12345-system"),
            Some("12345")
        );
        assert_eq!(tokens.platform_of("token-of-the-12345-syste"), None);
        assert_eq!(tokens.platform_of(""), None);
    }

    #[test]
    fn a_guessing_source_is_throttled_for_the_window_and_others_are_not() {
        let throttle = LoginThrottle::default();
        let guesser: IpAddr = [192, 0, 2, 7].into();
        let platform: IpAddr = [10, 0, 0, 5].into();
        let start = Instant::now();
        for _ in 0..MAX_FAILURES {
            assert!(throttle.allows(guesser, start));
            throttle.failed(guesser, start);
        }
        assert!(!throttle.allows(guesser, start + Duration::from_secs(30)));
        assert!(throttle.allows(platform, start + Duration::from_secs(30)));
        assert!(throttle.allows(guesser, start + THROTTLE_WINDOW));
    }
}
