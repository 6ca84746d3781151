//! INVITE server transaction (§17.2.1, figure 7) with RFC 6026's `Accepted` state, which also
//! carries the UAS core's 2xx retransmission until ACK (§13.3.1.4).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::{unreliable_only, Event, State, Timer, TimerConfig, Timers};

/// Answers one INVITE.
#[derive(Debug)]
pub struct ServerInvite {
    state: State,
    reliable: bool,
    config: TimerConfig,
    timers: Timers,
    last_response: Option<Bytes>,
    retransmit_interval: Duration,
    ack_received: bool,
    transmit: VecDeque<Bytes>,
    events: VecDeque<Event>,
}

super::machine_outputs!(ServerInvite);

impl ServerInvite {
    /// Starts in `Proceeding`; the owner sends 100 Trying through [`ServerInvite::send_response`].
    pub fn new(_now: Instant, reliable: bool, config: &TimerConfig) -> ServerInvite {
        ServerInvite {
            state: State::Proceeding,
            reliable,
            config: *config,
            timers: Timers::default(),
            last_response: None,
            retransmit_interval: config.t1,
            ack_received: false,
            transmit: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    pub fn ack_received(&self) -> bool {
        self.ack_received
    }

    /// A response from the TU.
    pub fn send_response(&mut self, now: Instant, status: u16, response: Bytes) {
        match (self.state, status) {
            (State::Proceeding, 100..=199) => {
                self.transmit.push_back(response.clone());
                self.last_response = Some(response);
            }
            (State::Proceeding, 200..=299) => {
                self.state = State::Accepted;
                self.transmit.push_back(response.clone());
                self.last_response = Some(response);
                self.retransmit_interval = self.config.t1;
                self.timers.set(Timer::Retransmit2xx, now + self.config.t1);
                self.timers.set(Timer::L, now + self.config.t1 * 64);
            }
            (State::Proceeding, _) => {
                self.state = State::Completed;
                self.transmit.push_back(response.clone());
                self.last_response = Some(response);
                if !self.reliable {
                    self.retransmit_interval = self.config.t1;
                    self.timers.set(Timer::G, now + self.config.t1);
                }
                self.timers.set(Timer::H, now + self.config.t1 * 64);
            }
            (State::Accepted, 200..=299) => {
                self.transmit.push_back(response.clone());
                self.last_response = Some(response);
            }
            _ => {}
        }
    }

    /// The INVITE arrived again: re-send the last response (§17.2.1).
    pub fn handle_request_retransmission(&mut self, _now: Instant) {
        if matches!(self.state, State::Proceeding | State::Completed) {
            if let Some(response) = &self.last_response {
                self.transmit.push_back(response.clone());
            }
        }
    }

    /// An ACK matched this transaction. Returns true for the first ACK of a 2xx, which the
    /// owner must see (it completes the dialog's offer/answer).
    pub fn handle_ack(&mut self, now: Instant) -> bool {
        match self.state {
            State::Completed => {
                self.state = State::Confirmed;
                self.timers.cancel(Timer::G);
                self.timers.cancel(Timer::H);
                self.timers.set(
                    Timer::I,
                    now + unreliable_only(self.reliable, self.config.t4),
                );
                false
            }
            State::Accepted if !self.ack_received => {
                self.ack_received = true;
                self.timers.cancel(Timer::Retransmit2xx);
                true
            }
            _ => false,
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(timer) = self.timers.pop_due(now) {
            match (timer, self.state) {
                (Timer::Retransmit2xx, State::Accepted) | (Timer::G, State::Completed) => {
                    if let Some(response) = &self.last_response {
                        self.transmit.push_back(response.clone());
                    }
                    self.retransmit_interval = (self.retransmit_interval * 2).min(self.config.t2);
                    self.timers.set(timer, now + self.retransmit_interval);
                }
                (Timer::L, _) => {
                    if !self.ack_received {
                        self.events.push_back(Event::AckTimeout);
                    }
                    self.terminate();
                }
                (Timer::H, State::Completed) => {
                    self.events.push_back(Event::Timeout);
                    self.terminate();
                }
                (Timer::I, _) => self.terminate(),
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::at;
    use super::*;

    fn sent_times(machine: &mut ServerInvite, t0: Instant, end_ms: u64) -> Vec<u64> {
        let mut times = Vec::new();
        while let Some(deadline) = machine.poll_timeout() {
            if deadline > at(t0, end_ms) {
                break;
            }
            machine.handle_timeout(deadline);
            while machine.poll_transmit().is_some() {
                times.push(deadline.duration_since(t0).as_millis() as u64);
            }
        }
        times
    }

    #[test]
    fn provisional_is_resent_on_request_retransmission() {
        let t0 = Instant::now();
        let mut m = ServerInvite::new(t0, false, &TimerConfig::default());
        m.send_response(t0, 100, Bytes::from_static(b"100"));
        m.send_response(t0, 180, Bytes::from_static(b"180"));
        assert_eq!(std::iter::from_fn(|| m.poll_transmit()).count(), 2);
        m.handle_request_retransmission(at(t0, 500));
        assert_eq!(m.poll_transmit(), Some(Bytes::from_static(b"180")));
        assert_eq!(m.poll_timeout(), None);
    }

    #[test]
    fn final_error_timer_g_caps_at_t2_and_h_times_out() {
        let t0 = Instant::now();
        let mut m = ServerInvite::new(t0, false, &TimerConfig::default());
        m.send_response(t0, 486, Bytes::from_static(b"486"));
        assert!(m.poll_transmit().is_some());
        assert_eq!(m.state(), State::Completed);
        let times = sent_times(&mut m, t0, 40_000);
        assert_eq!(&times[..6], &[500, 1500, 3500, 7500, 11_500, 15_500]);
        assert_eq!(
            m.poll_event(),
            Some(Event::Timeout),
            "Timer H: no ACK in 64*T1"
        );
        assert_eq!(m.poll_event(), Some(Event::Terminated));
    }

    #[test]
    fn ack_confirms_and_timer_i_terminates() {
        let t0 = Instant::now();
        let mut m = ServerInvite::new(t0, false, &TimerConfig::default());
        m.send_response(t0, 404, Bytes::from_static(b"404"));
        let _ = m.poll_transmit();
        assert!(
            !m.handle_ack(at(t0, 100)),
            "an ACK for a non-2xx stays in the transaction"
        );
        assert_eq!(m.state(), State::Confirmed);
        assert_eq!(m.poll_timeout(), Some(at(t0, 5100)), "Timer I = T4");
        m.handle_request_retransmission(at(t0, 200));
        assert!(m.poll_transmit().is_none());
        m.handle_timeout(at(t0, 5100));
        assert!(m.is_terminated());
    }

    #[test]
    fn tcp_final_error_has_no_g_and_zero_i() {
        let t0 = Instant::now();
        let mut m = ServerInvite::new(t0, true, &TimerConfig::default());
        m.send_response(t0, 503, Bytes::from_static(b"503"));
        let _ = m.poll_transmit();
        assert_eq!(m.poll_timeout(), Some(at(t0, 32_000)), "only Timer H");
        let _ = m.handle_ack(at(t0, 10));
        m.handle_timeout(at(t0, 10));
        assert!(m.is_terminated());
    }

    #[test]
    fn two_hundred_is_retransmitted_until_ack() {
        let t0 = Instant::now();
        let mut m = ServerInvite::new(t0, false, &TimerConfig::default());
        m.send_response(t0, 200, Bytes::from_static(b"200"));
        assert!(m.poll_transmit().is_some());
        assert_eq!(m.state(), State::Accepted);
        assert_eq!(sent_times(&mut m, t0, 4000), vec![500, 1500, 3500]);
        assert!(m.handle_ack(at(t0, 4000)));
        assert!(
            !m.handle_ack(at(t0, 4100)),
            "duplicate ACKs are not passed up again"
        );
        assert!(sent_times(&mut m, t0, 31_000).is_empty());
        m.handle_timeout(at(t0, 32_000));
        assert_eq!(
            m.poll_event(),
            Some(Event::Terminated),
            "Timer L ends Accepted, no AckTimeout"
        );
    }

    #[test]
    fn two_hundred_without_ack_reports_ack_timeout() {
        let t0 = Instant::now();
        let mut m = ServerInvite::new(t0, true, &TimerConfig::default());
        m.send_response(t0, 200, Bytes::from_static(b"200"));
        assert!(m.poll_transmit().is_some());
        let times = sent_times(&mut m, t0, 32_000);
        assert_eq!(
            &times[..4],
            &[500, 1500, 3500, 7500],
            "retransmitted on TCP too (§13.3.1.4)"
        );
        assert_eq!(m.poll_event(), Some(Event::AckTimeout));
        assert_eq!(m.poll_event(), Some(Event::Terminated));
    }

    #[test]
    fn terminated_ignores_everything() {
        let t0 = Instant::now();
        let mut m = ServerInvite::new(t0, true, &TimerConfig::default());
        m.send_response(t0, 486, Bytes::from_static(b"486"));
        let _ = m.handle_ack(t0);
        m.handle_timeout(t0);
        assert!(m.is_terminated());
        let _ = std::iter::from_fn(|| m.poll_transmit()).count();
        m.send_response(t0, 200, Bytes::from_static(b"200"));
        m.handle_request_retransmission(t0);
        assert!(!m.handle_ack(t0));
        assert!(m.poll_transmit().is_none());
    }
}
