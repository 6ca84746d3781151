//! Overload detection for new calls: is the endpoint's inbound queue a standing queue?
//!
//! A burst (a short stall of the host, a flash of calls) fills the queue for a moment and drains;
//! rejecting calls for it would turn a hiccup into failures. Sustained overload leaves a queue
//! that never drains. The test that tells them apart is CoDel's (RFC 8289 §3): if even the
//! smallest queueing delay seen over an interval stayed above the target, the queue is standing.
//! Sans-IO: the endpoint reports each message's queueing delay with the current time.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::sip::message::Request;

/// Which new calls overload control never sheds: those to or from a platform that keeps a
/// reserve of calls (`[[platform]] reserved_calls`, the lane kept for 110). The policy is the
/// gateway's (routes and peers); the transaction layer only asks.
pub trait Priority: Send + Sync {
    /// Whether the initial INVITE `request` from `source` is such a call.
    fn is_priority(&self, request: &Request, source: SocketAddr) -> bool;
}

/// How long a window of observed delays is (CoDel's interval).
const INTERVAL: Duration = Duration::from_millis(100);

#[derive(Debug)]
pub struct OverloadDetector {
    target: Duration,
    window_start: Option<Instant>,
    window_min: Duration,
    standing: bool,
}

impl OverloadDetector {
    /// `target`: the queueing delay above which new calls should be refused once it persists.
    pub fn new(target: Duration) -> OverloadDetector {
        OverloadDetector {
            target,
            window_start: None,
            window_min: Duration::MAX,
            standing: false,
        }
    }

    /// Records the queueing delay of a message handled at `now`.
    pub fn handle_delay(&mut self, now: Instant, delay: Duration) {
        let start = *self.window_start.get_or_insert(now);
        if now.duration_since(start) >= INTERVAL {
            self.standing = self.window_min > self.target;
            self.window_start = Some(now);
            self.window_min = delay;
        } else {
            self.window_min = self.window_min.min(delay);
        }
    }

    /// Whether a new call that waited `delay` should be shed: the queue was standing over the
    /// last full interval and this request itself waited longer than the target.
    pub fn should_shed(&self, delay: Duration) -> bool {
        self.standing && delay > self.target
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TARGET: Duration = Duration::from_millis(200);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_burst_that_drains_sheds_nothing() {
        let start = Instant::now();
        let mut detector = OverloadDetector::new(TARGET);
        for i in 0..50 {
            detector.handle_delay(start + ms(i * 2), ms(1));
        }
        // A 300 ms stall: the backlog then drains in 150 ms, each message waiting less.
        let resume = start + ms(400);
        for i in 0..150 {
            let delay = ms(300 - 2 * i);
            detector.handle_delay(resume + ms(i), delay);
            assert!(
                !detector.should_shed(delay),
                "shed at {i} ms into the drain"
            );
        }
    }

    #[test]
    fn a_standing_queue_sheds_until_it_drains() {
        let start = Instant::now();
        let mut detector = OverloadDetector::new(TARGET);
        // Every message waits 250-350 ms for a whole interval and more.
        for i in 0..120 {
            detector.handle_delay(start + ms(i * 2), ms(250 + i % 100));
        }
        assert!(detector.should_shed(ms(250)));
        // A request that itself waited little is never shed.
        assert!(!detector.should_shed(ms(50)));
        // The queue drains: after one interval with small delays, shedding stops.
        let later = start + ms(300);
        for i in 0..60 {
            detector.handle_delay(later + ms(i * 2), ms(5));
        }
        assert!(!detector.should_shed(ms(250)));
    }

    #[test]
    fn a_delay_above_target_alone_is_not_overload() {
        let start = Instant::now();
        let mut detector = OverloadDetector::new(TARGET);
        detector.handle_delay(start, ms(500));
        assert!(!detector.should_shed(ms(500)), "no full interval seen yet");
        detector.handle_delay(start + ms(50), ms(1));
        detector.handle_delay(start + ms(150), ms(400));
        assert!(
            !detector.should_shed(ms(400)),
            "the window's minimum was 1 ms"
        );
    }
}
