//! Who may talk to us, and how much. Sans-IO: the endpoint asks [`Guard::check`] about every
//! inbound request before any transaction exists for it, with the current time.
//!
//! Peers and the `sip.allow` networks pass, always: they are never rate-limited or banned
//! here (their load is the overload control's and `max_calls`'s). Anyone else is refused: with
//! a stateless 403 (`sip.unknown_source = "reject"`, the default) or silently (`"drop"`);
//! requests from known scanners' User-Agents are dropped silently either way (unless
//! `sip.drop_scanners = false`), so the scanner learns nothing. A non-peer source that keeps
//! sending beyond `sip.pike_requests_per_sec` (a token bucket with twice that as burst) is
//! banned for `sip.pike_ban_secs`: everything from it is dropped, not even a 403 goes back
//! (pike-style; no reflection of floods). The table of sources is bounded.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::routing::Cidr;

/// What to do with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    /// Answer 403 statelessly.
    Reject,
    /// Say nothing.
    Drop(DropReason),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// `sip.unknown_source = "drop"`.
    Unknown,
    Scanner,
    /// The source is banned (it flooded).
    Banned,
    /// The table of sources is full of live entries: new strangers are dropped.
    Full,
}

/// How the guard treats strangers.
#[derive(Debug, Clone)]
pub struct GuardConfig {
    /// Answer strangers 403 (else drop them).
    pub reject_unknown: bool,
    pub drop_scanners: bool,
    pub requests_per_sec: u32,
    pub ban: Duration,
    /// Networks treated as peers here (never limited, never banned).
    pub allow: Vec<Cidr>,
}

/// User-Agent fragments of SIP scanners (sipvicious and its descendants, common toolkits).
const SCANNERS: [&str; 10] = [
    "friendly-scanner",
    "sipvicious",
    "sipcli",
    "sip-scan",
    "sipsak",
    "sundayddr",
    "iWar",
    "VaxSIPUserAgent",
    "pplsip",
    "SIVuS",
];

/// Most strangers tracked at once; beyond, idle ones are forgotten first.
const MAX_SOURCES: usize = 65_536;

struct Source {
    tokens: f64,
    updated: Instant,
    banned_until: Option<Instant>,
}

/// A token bucket: `rate` per second, bursts of `burst`. Sans-IO (the caller gives the time).
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    updated: Option<Instant>,
}

impl TokenBucket {
    pub fn new(rate: u32, burst: u32) -> TokenBucket {
        TokenBucket {
            rate: f64::from(rate.max(1)),
            burst: f64::from(burst.max(1)),
            tokens: f64::from(burst.max(1)),
            updated: None,
        }
    }

    /// Takes one token if there is one.
    pub fn take(&mut self, now: Instant) -> bool {
        if let Some(updated) = self.updated {
            let elapsed = now.saturating_duration_since(updated).as_secs_f64();
            self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        }
        self.updated = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// A newly banned source, for the log and the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ban {
    pub source: IpAddr,
    pub until: Instant,
}

pub struct Guard {
    config: GuardConfig,
    sources: HashMap<IpAddr, Source>,
    banned: Option<Ban>,
    /// Strangers' requests checked, to forget idle sources now and then.
    checks: u64,
}

impl Guard {
    pub fn new(config: GuardConfig) -> Guard {
        Guard {
            config,
            sources: HashMap::new(),
            banned: None,
            checks: 0,
        }
    }

    /// The verdict on a request from `source`; `is_peer` says whether a `[[peer]]` claims it.
    pub fn check(
        &mut self,
        now: Instant,
        source: IpAddr,
        is_peer: bool,
        user_agent: Option<&str>,
    ) -> Verdict {
        if is_peer || self.config.allow.iter().any(|c| c.contains(source)) {
            return Verdict::Pass;
        }
        self.checks += 1;
        if self.checks % 4096 == 0 {
            self.forget_idle(now);
        }
        if self.sources.len() >= MAX_SOURCES && !self.sources.contains_key(&source) {
            self.forget_idle(now);
            if self.sources.len() >= MAX_SOURCES {
                return Verdict::Drop(DropReason::Full);
            }
        }
        let rate = f64::from(self.config.requests_per_sec.max(1));
        let burst = rate * 2.0;
        let entry = self.sources.entry(source).or_insert(Source {
            tokens: burst,
            updated: now,
            banned_until: None,
        });
        if let Some(until) = entry.banned_until {
            if now < until {
                return Verdict::Drop(DropReason::Banned);
            }
            entry.banned_until = None;
            entry.tokens = burst;
        }
        let elapsed = now.saturating_duration_since(entry.updated).as_secs_f64();
        entry.tokens = (entry.tokens + elapsed * rate).min(burst);
        entry.updated = now;
        if entry.tokens < 1.0 {
            let until = now + self.config.ban;
            entry.banned_until = Some(until);
            self.banned = Some(Ban { source, until });
            return Verdict::Drop(DropReason::Banned);
        }
        entry.tokens -= 1.0;
        if self.config.drop_scanners && user_agent.is_some_and(is_scanner) {
            return Verdict::Drop(DropReason::Scanner);
        }
        if self.config.reject_unknown {
            Verdict::Reject
        } else {
            Verdict::Drop(DropReason::Unknown)
        }
    }

    /// The ban the last [`Guard::check`] started, if it started one.
    pub fn take_ban(&mut self) -> Option<Ban> {
        self.banned.take()
    }

    /// Strangers tracked now (bounded).
    pub fn tracked(&self) -> usize {
        self.sources.len()
    }

    /// Forgets sources that are neither banned nor seen for a while (their bucket is full
    /// again anyway). Call now and then; [`Guard::check`] also does when the table is full.
    pub fn forget_idle(&mut self, now: Instant) {
        // A bucket refills in burst / rate = 2 s; one idle for twice that is full anyway.
        let refill = Duration::from_secs(4);
        self.sources.retain(|_, s| {
            s.banned_until.is_some_and(|until| until > now)
                || now.saturating_duration_since(s.updated) < refill
        });
    }
}

/// Whether a User-Agent is a known scanner's.
pub fn is_scanner(user_agent: &str) -> bool {
    let agent = user_agent.to_ascii_lowercase();
    SCANNERS
        .iter()
        .any(|s| agent.contains(&s.to_ascii_lowercase()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(reject_unknown: bool) -> Guard {
        Guard::new(GuardConfig {
            reject_unknown,
            drop_scanners: true,
            requests_per_sec: 10,
            ban: Duration::from_secs(300),
            allow: vec![Cidr::parse("10.1.0.0/16").unwrap_or_else(|e| panic!("{e}"))],
        })
    }

    const STRANGER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(198, 51, 100, 7));

    #[test]
    fn peers_and_allowed_networks_pass_however_much_they_send() {
        let mut g = guard(true);
        let now = Instant::now();
        for _ in 0..10_000 {
            assert_eq!(g.check(now, STRANGER, true, None), Verdict::Pass);
            assert_eq!(
                g.check(now, "10.1.2.3".parse().unwrap_or(STRANGER), false, None),
                Verdict::Pass
            );
        }
        assert_eq!(g.tracked(), 0);
    }

    #[test]
    fn strangers_get_403_or_nothing_and_scanners_nothing() {
        let now = Instant::now();
        let mut g = guard(true);
        assert_eq!(
            g.check(now, STRANGER, false, Some("Linphone/5")),
            Verdict::Reject
        );
        assert_eq!(
            g.check(now, STRANGER, false, Some("friendly-scanner")),
            Verdict::Drop(DropReason::Scanner)
        );
        assert_eq!(
            g.check(now, STRANGER, false, Some("sipvicious 0.3.3")),
            Verdict::Drop(DropReason::Scanner)
        );
        let mut quiet = guard(false);
        assert_eq!(
            quiet.check(now, STRANGER, false, None),
            Verdict::Drop(DropReason::Unknown)
        );
    }

    #[test]
    fn a_flooding_stranger_is_banned_then_forgiven() {
        let mut g = guard(true);
        let start = Instant::now();
        // The burst (twice the rate) is answered, then the ban starts.
        let answered = (0..100)
            .filter(|_| g.check(start, STRANGER, false, None) == Verdict::Reject)
            .count();
        assert_eq!(answered, 20);
        assert!(g.take_ban().is_some_and(|b| b.source == STRANGER));
        assert_eq!(g.take_ban(), None, "reported once");
        // Even at a polite rate, nothing while banned.
        let later = start + Duration::from_secs(299);
        assert_eq!(
            g.check(later, STRANGER, false, None),
            Verdict::Drop(DropReason::Banned)
        );
        let after = start + Duration::from_secs(300);
        assert_eq!(g.check(after, STRANGER, false, None), Verdict::Reject);
    }

    #[test]
    fn a_token_bucket_allows_its_burst_then_its_rate() {
        let mut bucket = TokenBucket::new(2, 2);
        let start = Instant::now();
        assert!(bucket.take(start) && bucket.take(start));
        assert!(!bucket.take(start));
        assert!(!bucket.take(start + Duration::from_millis(400)));
        assert!(bucket.take(start + Duration::from_millis(500)));
        assert!(bucket.take(start + Duration::from_secs(10)));
        assert!(bucket.take(start + Duration::from_secs(10)));
        assert!(
            !bucket.take(start + Duration::from_secs(10)),
            "the burst caps the savings"
        );
    }

    #[test]
    fn a_polite_stranger_is_never_banned() {
        let mut g = guard(true);
        let start = Instant::now();
        for n in 0..1000u64 {
            let at = start + Duration::from_millis(n * 150);
            assert_eq!(g.check(at, STRANGER, false, None), Verdict::Reject);
        }
    }

    #[test]
    fn the_table_of_strangers_stays_bounded() {
        let mut g = guard(true);
        let start = Instant::now();
        for n in 0..(MAX_SOURCES as u32 + 1000) {
            let source = IpAddr::V4(std::net::Ipv4Addr::from(0xc000_0000 + n));
            let _ = g.check(start, source, false, None);
        }
        assert!(g.tracked() <= MAX_SOURCES);
        g.forget_idle(start + Duration::from_secs(60));
        assert_eq!(g.tracked(), 0, "idle strangers are forgotten");
    }
}
