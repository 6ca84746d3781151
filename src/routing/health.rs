//! Peer health: whether a peer answers OPTIONS (RFC 3261 §11), as one sans-IO state per
//! probed peer, and the flag the router reads when it chooses peers.
//!
//! Call order: [`PeerHealth::new`]; then, whenever [`PeerHealth::poll_timeout`] is due,
//! [`PeerHealth::handle_timeout`] and, if [`PeerHealth::poll_probe`] says so, one OPTIONS out;
//! its final answer to [`PeerHealth::handle_answer`], or its transaction's timeout to
//! [`PeerHealth::handle_no_answer`]. Each `handle_*` returns the [`Change`] it made, if any.
//!
//! A probe is *answered* by any final response from 200 to 499 except 408: a peer that
//! answers 404 or 405 to OPTIONS is alive, it just does not like the request. It is *missed*
//! when answered 408 or 5xx and when no final answer came by the time the next probe is due
//! (or its transaction timed out). A driver may let an unanswered probe stand for the next
//! ones (its retransmissions go on): each deadline it is still unanswered is one miss, and its
//! late answer counts for the interval it arrives in. [`DOWN_AFTER`] misses in a row take a
//! peer down, [`UP_AFTER`] answers in a row bring it up. Every peer starts up, so calls flow
//! from the first moment; a dead one is found within the interval plus [`DOWN_AFTER`] probes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Misses in a row that take an up peer down.
pub const DOWN_AFTER: u32 = 3;
/// Answers in a row that bring a down peer up.
pub const UP_AFTER: u32 = 2;

/// A peer's state changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// [`DOWN_AFTER`] probes in a row were missed.
    Down,
    /// [`UP_AFTER`] probes in a row were answered.
    Up,
}

/// Whether a final response to OPTIONS shows the peer alive (module docs).
pub fn is_answer(status: u16) -> bool {
    (200..500).contains(&status) && status != 408
}

/// One probed peer's health: its probe deadline and the run of answers or misses.
#[derive(Debug)]
pub struct PeerHealth {
    interval: Duration,
    up: bool,
    /// Misses in a row (while up) or answers in a row (while down).
    run: u32,
    /// A probe is out and has had no final answer yet.
    awaiting: bool,
    /// A probe must be sent now ([`PeerHealth::poll_probe`]).
    probe_due: bool,
    next_probe: Instant,
    since: Instant,
}

impl PeerHealth {
    /// A peer probed every `interval` (at least a millisecond), up, its first probe due at
    /// `now`.
    pub fn new(now: Instant, interval: Duration) -> PeerHealth {
        PeerHealth {
            interval: interval.max(Duration::from_millis(1)),
            up: true,
            run: 0,
            awaiting: false,
            probe_due: false,
            next_probe: now,
            since: now,
        }
    }

    pub fn is_up(&self) -> bool {
        self.up
    }

    /// When the peer's current state (up or down) began.
    pub fn since(&self) -> Instant {
        self.since
    }

    /// When [`PeerHealth::handle_timeout`] is next due: the next probe.
    #[must_use]
    pub fn poll_timeout(&self) -> Instant {
        self.next_probe
    }

    /// The probe deadline at `now`: the probe still unanswered counts as missed, and the next
    /// probe is due ([`PeerHealth::poll_probe`]). Before the deadline, nothing.
    pub fn handle_timeout(&mut self, now: Instant) -> Option<Change> {
        if now < self.next_probe {
            return None;
        }
        let change = if std::mem::replace(&mut self.awaiting, false) {
            self.missed(now)
        } else {
            None
        };
        self.awaiting = true;
        self.probe_due = true;
        self.next_probe = now + self.interval;
        change
    }

    /// Whether an OPTIONS must go out now (once per deadline passed).
    #[must_use]
    pub fn poll_probe(&mut self) -> bool {
        std::mem::take(&mut self.probe_due)
    }

    /// The final answer `status` to the probe under way; an answer when none is awaited (a
    /// retransmitted response) changes nothing. Provisional responses are not answers.
    pub fn handle_answer(&mut self, now: Instant, status: u16) -> Option<Change> {
        if status < 200 || !std::mem::replace(&mut self.awaiting, false) {
            return None;
        }
        if is_answer(status) {
            self.answered(now)
        } else {
            self.missed(now)
        }
    }

    /// The probe under way got no final answer (its transaction timed out, §17.1.2.2).
    pub fn handle_no_answer(&mut self, now: Instant) -> Option<Change> {
        if !std::mem::replace(&mut self.awaiting, false) {
            return None;
        }
        self.missed(now)
    }

    fn missed(&mut self, now: Instant) -> Option<Change> {
        if !self.up {
            self.run = 0;
            return None;
        }
        self.run += 1;
        (self.run >= DOWN_AFTER).then(|| self.turn(now, false, Change::Down))
    }

    fn answered(&mut self, now: Instant) -> Option<Change> {
        if self.up {
            self.run = 0;
            return None;
        }
        self.run += 1;
        (self.run >= UP_AFTER).then(|| self.turn(now, true, Change::Up))
    }

    fn turn(&mut self, now: Instant, up: bool, change: Change) -> Change {
        self.up = up;
        self.run = 0;
        self.since = now;
        change
    }
}

/// The flag a [`Peer`](super::Peer) carries: down or not, set by the prober, read wherever a
/// peer is chosen. Starts up. Clones and comparisons take the value it holds.
#[derive(Debug, Default)]
pub struct Liveness(AtomicBool);

impl Liveness {
    pub fn is_up(&self) -> bool {
        !self.0.load(Ordering::Relaxed)
    }

    pub fn set_up(&self, up: bool) {
        self.0.store(!up, Ordering::Relaxed);
    }
}

impl Clone for Liveness {
    fn clone(&self) -> Liveness {
        Liveness(AtomicBool::new(self.0.load(Ordering::Relaxed)))
    }
}

impl PartialEq for Liveness {
    fn eq(&self, other: &Liveness) -> bool {
        self.is_up() == other.is_up()
    }
}

impl Eq for Liveness {}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    /// Runs one probe period from `at`: the deadline, the probe, then `answer` (None: silence).
    fn period(
        health: &mut PeerHealth,
        at: Instant,
        answer: Option<u16>,
    ) -> (Option<Change>, Option<Change>) {
        let on_deadline = health.handle_timeout(at);
        assert!(health.poll_probe(), "a probe is due at each deadline");
        assert!(!health.poll_probe(), "once");
        let on_answer = answer.and_then(|status| health.handle_answer(at, status));
        (on_deadline, on_answer)
    }

    #[test]
    fn starts_up_and_probes_at_once_then_every_interval() {
        let start = Instant::now();
        let mut health = PeerHealth::new(start, SECOND);
        assert!(health.is_up());
        assert_eq!(health.poll_timeout(), start);
        assert_eq!(health.handle_timeout(start), None);
        assert!(health.poll_probe());
        assert_eq!(health.poll_timeout(), start + SECOND);
        // Early: nothing happens, no probe.
        assert_eq!(health.handle_timeout(start + SECOND / 2), None);
        assert!(!health.poll_probe());
    }

    #[test]
    fn down_after_three_misses_up_after_two_answers() {
        let start = Instant::now();
        let mut health = PeerHealth::new(start, SECOND);
        let at = |n: u32| start + SECOND * n;
        // Probe 0 goes unanswered; the deadlines of probes 1 and 2 count misses 1 and 2.
        assert_eq!(period(&mut health, at(0), None), (None, None));
        assert_eq!(period(&mut health, at(1), None), (None, None));
        assert_eq!(period(&mut health, at(2), None), (None, None));
        assert!(health.is_up());
        // The third miss, at probe 3's deadline.
        assert_eq!(period(&mut health, at(3), None), (Some(Change::Down), None));
        assert!(!health.is_up());
        assert_eq!(health.since(), at(3));
        // Still down: more misses change nothing; one answer is not enough.
        assert_eq!(period(&mut health, at(4), Some(200)), (None, None));
        assert!(!health.is_up());
        assert_eq!(
            period(&mut health, at(5), Some(200)),
            (None, Some(Change::Up))
        );
        assert!(health.is_up());
        assert_eq!(health.since(), at(5));
    }

    /// A dead desk gets one probe that stands (the prober sends no other while it is
    /// unanswered): each deadline scores it missed once, and when the desk returns, the answer
    /// to that probe's retransmission counts for the interval it arrives in.
    #[test]
    fn a_standing_probe_is_missed_once_a_deadline_and_its_late_answer_counts() {
        let start = Instant::now();
        let mut health = PeerHealth::new(start, SECOND);
        let at = |n: u32| start + SECOND * n;
        for n in 0..3 {
            assert_eq!(period(&mut health, at(n), None), (None, None));
        }
        assert_eq!(period(&mut health, at(3), None), (Some(Change::Down), None));
        // Still down, still missing: a run of misses while down counts for nothing.
        assert_eq!(period(&mut health, at(4), None), (None, None));
        // The standing probe is answered late, within interval 4; the next is answered too.
        let late = at(4) + SECOND / 2;
        assert_eq!(health.handle_answer(late, 200), None);
        assert_eq!(
            health.handle_answer(late, 200),
            None,
            "a retransmitted 200 counts once"
        );
        assert_eq!(
            period(&mut health, at(5), Some(200)),
            (None, Some(Change::Up))
        );
    }

    #[test]
    fn an_answer_breaks_a_run_of_misses() {
        let start = Instant::now();
        let mut health = PeerHealth::new(start, SECOND);
        let at = |n: u32| start + SECOND * n;
        for (n, answer) in [None, None, Some(200), None, None].into_iter().enumerate() {
            assert_eq!(period(&mut health, at(n as u32), answer), (None, None));
        }
        assert!(health.is_up(), "two misses, an answer, two misses");
    }

    #[test]
    fn server_errors_and_408_are_misses_other_answers_are_alive() {
        for status in [200, 202, 302, 404, 405, 481, 499] {
            assert!(is_answer(status), "{status}");
        }
        for status in [100, 180, 408, 500, 503, 600, 603] {
            assert!(!is_answer(status), "{status}");
        }
        let start = Instant::now();
        let mut health = PeerHealth::new(start, SECOND);
        let at = |n: u32| start + SECOND * n;
        assert_eq!(period(&mut health, at(0), Some(503)), (None, None));
        assert_eq!(period(&mut health, at(1), Some(408)), (None, None));
        assert_eq!(
            period(&mut health, at(2), Some(500)),
            (None, Some(Change::Down)),
            "the third 5xx/408 in a row takes it down at once"
        );
        assert_eq!(period(&mut health, at(3), Some(405)), (None, None));
        assert_eq!(
            period(&mut health, at(4), Some(404)),
            (None, Some(Change::Up))
        );
    }

    #[test]
    fn answers_count_once_and_provisional_ones_not_at_all() {
        let start = Instant::now();
        let mut health = PeerHealth::new(start, SECOND);
        let _ = health.handle_timeout(start);
        let _ = health.poll_probe();
        assert_eq!(health.handle_answer(start, 100), None);
        assert_eq!(health.handle_answer(start, 503), None);
        // A retransmitted final answer, and a timeout after the answer: not awaited any more.
        assert_eq!(health.handle_answer(start, 503), None);
        assert_eq!(health.handle_no_answer(start), None);
        // So the next deadline does not count that probe a second time: miss 1 was the 503,
        // miss 2 is probe 1's silence (at probe 2's deadline), miss 3 probe 2's.
        for n in 1..=3u32 {
            let change = health.handle_timeout(start + SECOND * n);
            let _ = health.poll_probe();
            assert_eq!(change, (n == 3).then_some(Change::Down), "deadline {n}");
        }
    }

    #[test]
    fn a_timed_out_transaction_is_a_miss_before_the_deadline() {
        let start = Instant::now();
        let mut health = PeerHealth::new(start, Duration::from_secs(10));
        for n in 0..3u32 {
            let at = start + Duration::from_secs(10) * n;
            let _ = health.handle_timeout(at);
            let _ = health.poll_probe();
            let change = health.handle_no_answer(at + Duration::from_secs(5));
            assert_eq!(change, (n == 2).then_some(Change::Down));
        }
    }

    #[test]
    fn liveness_starts_up_and_follows_its_setter() {
        let flag = Liveness::default();
        assert!(flag.is_up());
        flag.set_up(false);
        assert!(!flag.is_up());
        assert!(!flag.clone().is_up());
        assert_ne!(flag, Liveness::default());
        flag.set_up(true);
        assert_eq!(flag, Liveness::default());
    }
}
