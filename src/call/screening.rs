//! Harassment screening (滋扰治理) of new calls, sans-IO: a caller on the blocklist is refused;
//! a caller who calls again and again (`[screening] repeat_calls` calls within
//! `repeat_minutes`) is flagged, so the platforms hear of it (and 12345 can tell 110), but the
//! call goes through: a desperate citizen calling back is no reason to hang up on them.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use super::blocklist::Blocklist;
use std::time::{Duration, Instant, SystemTime};

use crate::routing::NumberPattern;
use crate::store::unix_millis;

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
    /// The API's entries, shared with the work-order service.
    listed: Arc<Blocklist>,
    blocked_status: u16,
    threshold: usize,
    window: Duration,
    recent: HashMap<String, VecDeque<Instant>>,
    /// Every call screened, oldest first, with its caller: expired callers are forgotten from
    /// the front, and a full table forgets its oldest caller, each in O(1) amortised.
    arrivals: VecDeque<(Instant, String)>,
    /// Whether a full table has had to forget callers still in their window (logged once).
    overflowed: bool,
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
            listed: Arc::default(),
            blocked_status,
            threshold,
            window,
            recent: HashMap::new(),
            arrivals: VecDeque::new(),
            overflowed: false,
        }
    }

    /// Also refuses the numbers on `listed` (the work-order API's blocklist).
    #[must_use]
    pub fn with_listed(mut self, listed: Arc<Blocklist>) -> Screening {
        self.listed = listed;
        self
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
        if self.blocklist.iter().any(|p| p.matches(caller))
            || self
                .listed
                .is_blocked(caller, unix_millis(SystemTime::now()))
        {
            return Screen::Blocked(self.blocked_status);
        }
        if self.threshold == 0 {
            return Screen::Clear;
        }
        self.forget_expired(now);
        while self.recent.len() >= MAX_CALLERS && !self.recent.contains_key(caller) {
            if !self.overflowed {
                self.overflowed = true;
                tracing::warn!(
                    callers = MAX_CALLERS,
                    "repeat-caller table full: the oldest callers are forgotten early"
                );
            }
            self.forget_oldest();
        }
        // The arrivals stay bounded too: a caller's older calls beyond its table are dropped.
        while self.arrivals.len() >= 2 * MAX_CALLERS {
            self.forget_oldest();
        }
        self.arrivals.push_back((now, caller.to_string()));
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

impl Screening {
    /// Counts a call `caller` made to another node of the cluster at `now` (so a caller
    /// spread over the nodes by the load balancer is flagged as on one node); nothing is
    /// screened or flagged here.
    pub fn note_elsewhere(&mut self, now: Instant, caller: &str) {
        if self.threshold == 0 || caller.is_empty() || caller.eq_ignore_ascii_case("anonymous") {
            return;
        }
        self.forget_expired(now);
        if self.recent.len() >= MAX_CALLERS && !self.recent.contains_key(caller) {
            self.forget_oldest();
        }
        while self.arrivals.len() >= 2 * MAX_CALLERS {
            self.forget_oldest();
        }
        self.arrivals.push_back((now, caller.to_string()));
        let calls = self.recent.entry(caller.to_string()).or_default();
        calls.push_back(now);
        while calls.len() > self.threshold {
            calls.pop_front();
        }
    }

    /// Drops the callers whose last call is out of the window, from the oldest arrival on.
    fn forget_expired(&mut self, now: Instant) {
        while self
            .arrivals
            .front()
            .is_some_and(|(at, _)| now.saturating_duration_since(*at) >= self.window)
        {
            self.forget_oldest();
        }
    }

    /// Drops the oldest arrival; its caller goes if that was its latest call.
    fn forget_oldest(&mut self) {
        let Some((at, caller)) = self.arrivals.pop_front() else {
            return;
        };
        if self
            .recent
            .get(&caller)
            .is_some_and(|calls| calls.back() == Some(&at))
        {
            self.recent.remove(&caller);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::BlockedNumberRecord;

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

    /// With the table full of callers still in their window, a new caller costs O(1) (the
    /// oldest is forgotten, not the whole table scanned) and repeat callers are still flagged.
    #[test]
    fn a_full_table_forgets_the_oldest_and_still_flags() {
        let mut s = screening();
        let start = Instant::now();
        for n in 0..MAX_CALLERS {
            let _ = s.check(start, &format!("1{n:010}"));
        }
        assert_eq!(s.recent.len(), MAX_CALLERS);
        let later = start + Duration::from_secs(1);
        for n in 0..10_000 {
            let _ = s.check(later, &format!("2{n:010}"));
        }
        assert!(s.recent.len() <= MAX_CALLERS);
        assert_eq!(s.check(later, "13800138000"), Screen::Clear);
        assert_eq!(s.check(later, "13800138000"), Screen::Clear);
        assert_eq!(s.check(later, "13800138000"), Screen::Flagged { count: 3 });
        // Expired callers go as time passes, without a scan.
        let much_later = start + Duration::from_secs(3600);
        assert_eq!(s.check(much_later, "13900139000"), Screen::Clear);
        assert_eq!(s.recent.len(), 1);
    }

    fn listed(number: &str, expires_at: Option<i64>) -> BlockedNumberRecord {
        BlockedNumberRecord {
            number: number.into(),
            platform: "12345".into(),
            reason: "harassment".into(),
            blocked_at: 1_000,
            expires_at,
        }
    }

    /// The API's entries are refused like the config's patterns.
    #[test]
    fn screening_refuses_the_apis_entries() {
        // Screening refuses them like the config's patterns.
        let shared = Arc::new(Blocklist::with(vec![listed("13700000003", None)]));
        let mut s = screening().with_listed(shared);
        assert_eq!(s.check(Instant::now(), "13700000003"), Screen::Blocked(603));
    }

    #[test]
    fn calls_to_other_nodes_count_towards_a_repeat_caller() {
        let start = Instant::now();
        let mut screening = Screening::new(Vec::new(), 603, 3, Duration::from_secs(600));
        screening.note_elsewhere(start, "13800138000");
        assert_eq!(screening.check(start, "13800138000"), Screen::Clear);
        screening.note_elsewhere(start + Duration::from_secs(1), "13800138000");
        assert_eq!(
            screening.check(start + Duration::from_secs(2), "13800138000"),
            Screen::Flagged { count: 3 }
        );
        // Out of the window, the other nodes' calls are forgotten as this node's are.
        let later = start + Duration::from_secs(700);
        screening.note_elsewhere(later, "13800138000");
        assert_eq!(screening.check(later, "13800138000"), Screen::Clear);
    }
}
