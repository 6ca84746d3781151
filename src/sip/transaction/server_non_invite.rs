//! Non-INVITE server transaction (§17.2.2, figure 8).

use std::collections::VecDeque;
use std::time::Instant;

use bytes::Bytes;

use super::{unreliable_only, Event, State, Timer, TimerConfig, Timers};

/// Answers one BYE, CANCEL, OPTIONS, ...
#[derive(Debug)]
pub struct ServerNonInvite {
    state: State,
    reliable: bool,
    config: TimerConfig,
    timers: Timers,
    last_response: Option<Bytes>,
    transmit: VecDeque<Bytes>,
    events: VecDeque<Event>,
}

super::machine_outputs!(ServerNonInvite);

impl ServerNonInvite {
    pub fn new(_now: Instant, reliable: bool, config: &TimerConfig) -> ServerNonInvite {
        ServerNonInvite {
            state: State::Trying,
            reliable,
            config: *config,
            timers: Timers::default(),
            last_response: None,
            transmit: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    pub fn send_response(&mut self, now: Instant, status: u16, response: Bytes) {
        if !matches!(self.state, State::Trying | State::Proceeding) {
            return;
        }
        self.transmit.push_back(response.clone());
        self.last_response = Some(response);
        if status < 200 {
            self.state = State::Proceeding;
        } else {
            self.state = State::Completed;
            self.timers.set(
                Timer::J,
                now + unreliable_only(self.reliable, self.config.t1 * 64),
            );
        }
    }

    /// In `Trying` a retransmission is absorbed; later the last response is re-sent.
    pub fn handle_request_retransmission(&mut self, _now: Instant) {
        if matches!(self.state, State::Proceeding | State::Completed) {
            if let Some(response) = &self.last_response {
                self.transmit.push_back(response.clone());
            }
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(timer) = self.timers.pop_due(now) {
            if timer == Timer::J {
                self.terminate();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::at;
    use super::*;

    #[test]
    fn trying_absorbs_then_last_response_is_resent_until_j() {
        let t0 = Instant::now();
        let mut m = ServerNonInvite::new(t0, false, &TimerConfig::default());
        m.handle_request_retransmission(at(t0, 1));
        assert!(m.poll_transmit().is_none(), "Trying: absorbed");
        m.send_response(at(t0, 2), 100, Bytes::from_static(b"100"));
        assert_eq!(m.state(), State::Proceeding);
        let _ = m.poll_transmit();
        m.handle_request_retransmission(at(t0, 3));
        assert_eq!(m.poll_transmit(), Some(Bytes::from_static(b"100")));
        m.send_response(at(t0, 10), 200, Bytes::from_static(b"200"));
        let _ = m.poll_transmit();
        m.handle_request_retransmission(at(t0, 500));
        assert_eq!(m.poll_transmit(), Some(Bytes::from_static(b"200")));
        assert_eq!(m.poll_timeout(), Some(at(t0, 32_010)), "Timer J = 64*T1");
        m.handle_timeout(at(t0, 32_009));
        assert!(!m.is_terminated());
        m.handle_timeout(at(t0, 32_010));
        assert_eq!(m.poll_event(), Some(Event::Terminated));
        m.send_response(at(t0, 40_000), 500, Bytes::from_static(b"500"));
        assert!(m.poll_transmit().is_none());
    }

    #[test]
    fn timer_j_is_zero_on_tcp() {
        let t0 = Instant::now();
        let mut m = ServerNonInvite::new(t0, true, &TimerConfig::default());
        m.send_response(t0, 200, Bytes::from_static(b"200"));
        assert_eq!(m.poll_timeout(), Some(t0));
        m.handle_timeout(t0);
        assert!(m.is_terminated());
    }
}
