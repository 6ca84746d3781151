//! Harassment screening (滋扰治理) of new calls, sans-IO: a caller on the blocklist is refused;
//! a caller who calls again and again (`[screening] repeat_calls` calls within
//! `repeat_minutes`) is flagged, so the platforms hear of it (and 12345 can tell 110), but the
//! call goes through: a desperate citizen calling back is no reason to hang up on them.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::routing::NumberPattern;

/// What screening says of a new call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Screen {
    Clear,
    /// The caller is on the blocklist: refuse with this status.
    Blocked(u16),
    /// The caller's `count`-th call within the window.
    Flagged {
        count: usize,
    },
}

/// Most callers remembered for repeat detection; beyond, the oldest are forgotten.
const MAX_CALLERS: usize = 100_000;

pub struct Screening {
    blocklist: Vec<NumberPattern>,
    blocked_status: u16,
    threshold: usize,
    window: Duration,
    recent: HashMap<String, VecDeque<Instant>>,
}

impl Screening {
    /// `threshold` 0 turns repeat detection off.
    pub fn new(
        blocklist: Vec<NumberPattern>,
        blocked_status: u16,
        threshold: usize,
        window: Duration,
    ) -> Screening {
        Screening {
            blocklist,
            blocked_status,
            threshold,
            window,
            recent: HashMap::new(),
        }
    }

    /// The repeat-caller window.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// Screens a new call from `caller` (the number it presents) at `now`.
    pub fn check(&mut self, now: Instant, caller: &str) -> Screen {
        if caller.is_empty() || caller.eq_ignore_ascii_case("anonymous") {
            return Screen::Clear;
        }
        if self.blocklist.iter().any(|p| p.matches(caller)) {
            return Screen::Blocked(self.blocked_status);
        }
        if self.threshold == 0 {
            return Screen::Clear;
        }
        if self.recent.len() >= MAX_CALLERS && !self.recent.contains_key(caller) {
            let window = self.window;
            self.recent.retain(|_, calls| {
                calls
                    .back()
                    .is_some_and(|t| now.duration_since(*t) < window)
            });
            if self.recent.len() >= MAX_CALLERS {
                return Screen::Clear;
            }
        }
        let calls = self.recent.entry(caller.to_string()).or_default();
        while calls
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= self.window)
        {
            calls.pop_front();
        }
        calls.push_back(now);
        // Bounded per caller too: only the last `threshold` calls matter.
        while calls.len() > self.threshold {
            calls.pop_front();
        }
        if calls.len() >= self.threshold {
            Screen::Flagged { count: calls.len() }
        } else {
            Screen::Clear
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn screening() -> Screening {
        let pattern = |s: &str| NumberPattern::parse(s).unwrap_or_else(|e| panic!("{e}"));
        Screening::new(
            vec![pattern("13900000000"), pattern("_170X.")],
            603,
            3,
            Duration::from_secs(600),
        )
    }

    #[test]
    fn blocked_numbers_are_refused_with_the_configured_status() {
        let mut s = screening();
        let now = Instant::now();
        assert_eq!(s.check(now, "13900000000"), Screen::Blocked(603));
        assert_eq!(s.check(now, "17012345678"), Screen::Blocked(603));
        assert_eq!(s.check(now, "13800138000"), Screen::Clear);
        assert_eq!(s.check(now, "anonymous"), Screen::Clear);
    }

    #[test]
    fn the_third_call_within_ten_minutes_is_flagged_and_calm_resets_it() {
        let mut s = screening();
        let start = Instant::now();
        let at = |m: u64| start + Duration::from_secs(m * 60);
        assert_eq!(s.check(at(0), "13800138000"), Screen::Clear);
        assert_eq!(s.check(at(4), "13800138000"), Screen::Clear);
        assert_eq!(s.check(at(8), "13800138000"), Screen::Flagged { count: 3 });
        assert_eq!(s.check(at(9), "13800138000"), Screen::Flagged { count: 3 });
        assert_eq!(s.check(at(9), "13900139000"), Screen::Clear, "per caller");
        // After twenty quiet minutes the window is empty again.
        assert_eq!(s.check(at(30), "13800138000"), Screen::Clear);
    }
}
