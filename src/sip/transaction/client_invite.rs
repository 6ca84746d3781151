//! INVITE client transaction (§17.1.1, figure 5) with RFC 6026's `Accepted` state.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::{Event, ResponseAction, State, Timer, TimerConfig, Timers};

/// Sends an INVITE and follows its responses.
#[derive(Debug)]
pub struct ClientInvite {
    state: State,
    request: Bytes,
    ack: Option<Bytes>,
    reliable: bool,
    config: TimerConfig,
    timers: Timers,
    retransmit_interval: Duration,
    transmit: VecDeque<Bytes>,
    events: VecDeque<Event>,
}

super::machine_outputs!(ClientInvite);

impl ClientInvite {
    /// Queues the INVITE and arms Timer A (UDP) and Timer B.
    pub fn new(now: Instant, request: Bytes, reliable: bool, config: &TimerConfig) -> ClientInvite {
        let mut machine = ClientInvite {
            state: State::Calling,
            request: request.clone(),
            ack: None,
            reliable,
            config: *config,
            timers: Timers::default(),
            retransmit_interval: config.t1,
            transmit: VecDeque::from([request]),
            events: VecDeque::new(),
        };
        if !reliable {
            machine.timers.set(Timer::A, now + config.t1);
        }
        machine.timers.set(Timer::B, now + config.t1 * 64);
        machine
    }

    /// A response matched to this transaction. `ack` is the ACK the owner built for a
    /// 300-699 response (§17.1.1.3); it is re-sent for each retransmitted final response.
    pub fn handle_response(
        &mut self,
        now: Instant,
        status: u16,
        ack: Option<Bytes>,
    ) -> ResponseAction {
        match (self.state, status) {
            (State::Calling | State::Proceeding, 100..=199) => {
                self.state = State::Proceeding;
                self.timers.cancel(Timer::A);
                self.timers.cancel(Timer::B);
                ResponseAction::PassToTu
            }
            (State::Calling | State::Proceeding, 200..=299) => {
                // RFC 6026 §8.4: stay to absorb nothing but pass 2xx retransmissions up.
                self.state = State::Accepted;
                self.timers.clear();
                self.timers.set(Timer::M, now + self.config.t1 * 64);
                ResponseAction::PassToTu
            }
            (State::Calling | State::Proceeding, _) => {
                self.state = State::Completed;
                self.timers.clear();
                self.ack = ack;
                if let Some(ack) = &self.ack {
                    self.transmit.push_back(ack.clone());
                }
                let wait = if self.reliable {
                    Duration::ZERO
                } else {
                    Duration::from_secs(32).max(self.config.t1 * 64)
                };
                self.timers.set(Timer::D, now + wait);
                ResponseAction::PassToTu
            }
            (State::Accepted, 200..=299) => ResponseAction::PassToTu,
            (State::Completed, 300..=699) => {
                if let Some(ack) = &self.ack {
                    self.transmit.push_back(ack.clone());
                }
                ResponseAction::Absorb
            }
            _ => ResponseAction::Absorb,
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(timer) = self.timers.pop_due(now) {
            match timer {
                Timer::A if self.state == State::Calling => {
                    self.transmit.push_back(self.request.clone());
                    self.retransmit_interval *= 2;
                    self.timers.set(Timer::A, now + self.retransmit_interval);
                }
                Timer::B if self.state == State::Calling => {
                    self.events.push_back(Event::Timeout);
                    self.terminate();
                }
                Timer::D | Timer::M => self.terminate(),
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::at;
    use super::*;

    fn drain(machine: &mut ClientInvite) -> usize {
        std::iter::from_fn(|| machine.poll_transmit()).count()
    }

    fn run_until(machine: &mut ClientInvite, t0: Instant, end_ms: u64) -> Vec<u64> {
        // Fires every deadline up to end_ms and records when something was sent.
        let mut sent_at = Vec::new();
        while let Some(deadline) = machine.poll_timeout() {
            if deadline > at(t0, end_ms) {
                break;
            }
            machine.handle_timeout(deadline);
            if drain(machine) > 0 {
                sent_at.push(deadline.duration_since(t0).as_millis() as u64);
            }
        }
        sent_at
    }

    #[test]
    fn timer_a_doubles_and_timer_b_times_out_at_64_t1() {
        let t0 = Instant::now();
        let mut m = ClientInvite::new(
            t0,
            Bytes::from_static(b"INVITE"),
            false,
            &TimerConfig::default(),
        );
        assert_eq!(drain(&mut m), 1);
        let retransmissions = run_until(&mut m, t0, 40_000);
        assert_eq!(retransmissions, vec![500, 1500, 3500, 7500, 15_500, 31_500]);
        assert_eq!(m.poll_event(), Some(Event::Timeout));
        assert_eq!(m.poll_event(), Some(Event::Terminated));
        assert!(m.is_terminated());
    }

    #[test]
    fn tcp_has_no_retransmission_but_timer_b() {
        let t0 = Instant::now();
        let mut m = ClientInvite::new(
            t0,
            Bytes::from_static(b"INVITE"),
            true,
            &TimerConfig::default(),
        );
        assert_eq!(drain(&mut m), 1);
        assert_eq!(m.poll_timeout(), Some(at(t0, 32_000)));
        assert!(run_until(&mut m, t0, 40_000).is_empty());
        assert_eq!(m.poll_event(), Some(Event::Timeout));
    }

    #[test]
    fn a_transport_error_ends_a_waiting_transaction_but_not_an_answered_one() {
        let t0 = Instant::now();
        let config = TimerConfig::default();
        let mut waiting = ClientInvite::new(t0, Bytes::from_static(b"INVITE"), true, &config);
        drain(&mut waiting);
        assert_eq!(
            waiting.handle_response(at(t0, 10), 100, None),
            ResponseAction::PassToTu
        );
        assert!(waiting.handle_transport_error());
        assert!(waiting.is_terminated());
        assert_eq!(waiting.poll_timeout(), None);

        let mut answered = ClientInvite::new(t0, Bytes::from_static(b"INVITE"), true, &config);
        drain(&mut answered);
        assert_eq!(
            answered.handle_response(at(t0, 10), 200, None),
            ResponseAction::PassToTu
        );
        assert!(!answered.handle_transport_error());
        assert_eq!(answered.state(), State::Accepted);
    }

    #[test]
    fn provisional_stops_a_and_b() {
        let t0 = Instant::now();
        let mut m = ClientInvite::new(
            t0,
            Bytes::from_static(b"INVITE"),
            false,
            &TimerConfig::default(),
        );
        let _ = drain(&mut m);
        assert_eq!(
            m.handle_response(at(t0, 100), 180, None),
            ResponseAction::PassToTu
        );
        assert_eq!(m.state(), State::Proceeding);
        assert_eq!(
            m.poll_timeout(),
            None,
            "Proceeding waits for the TU (Timer C is a proxy's)"
        );
        assert_eq!(
            m.handle_response(at(t0, 200), 183, None),
            ResponseAction::PassToTu
        );
    }

    #[test]
    fn non_2xx_final_is_acked_and_retransmissions_re_acked_until_d() {
        let t0 = Instant::now();
        let mut m = ClientInvite::new(
            t0,
            Bytes::from_static(b"INVITE"),
            false,
            &TimerConfig::default(),
        );
        let _ = drain(&mut m);
        let ack = Bytes::from_static(b"ACK");
        assert_eq!(
            m.handle_response(at(t0, 100), 486, Some(ack.clone())),
            ResponseAction::PassToTu
        );
        assert_eq!(m.poll_transmit(), Some(ack.clone()));
        assert_eq!(m.state(), State::Completed);
        assert_eq!(
            m.handle_response(at(t0, 600), 486, Some(ack.clone())),
            ResponseAction::Absorb
        );
        assert_eq!(m.poll_transmit(), Some(ack));
        assert_eq!(
            m.poll_timeout(),
            Some(at(t0, 32_100)),
            "Timer D: 32 s on UDP"
        );
        m.handle_timeout(at(t0, 32_100));
        assert!(m.is_terminated());
    }

    #[test]
    fn timer_d_is_zero_on_tcp() {
        let t0 = Instant::now();
        let mut m = ClientInvite::new(
            t0,
            Bytes::from_static(b"INVITE"),
            true,
            &TimerConfig::default(),
        );
        let _ = m.handle_response(at(t0, 10), 503, Some(Bytes::from_static(b"ACK")));
        assert_eq!(m.poll_timeout(), Some(at(t0, 10)));
        m.handle_timeout(at(t0, 10));
        assert!(m.is_terminated());
    }

    #[test]
    fn accepted_passes_2xx_retransmissions_until_timer_m() {
        let t0 = Instant::now();
        let mut m = ClientInvite::new(
            t0,
            Bytes::from_static(b"INVITE"),
            false,
            &TimerConfig::default(),
        );
        let _ = drain(&mut m);
        assert_eq!(
            m.handle_response(at(t0, 50), 200, None),
            ResponseAction::PassToTu
        );
        assert_eq!(m.state(), State::Accepted);
        assert_eq!(
            m.handle_response(at(t0, 550), 200, None),
            ResponseAction::PassToTu
        );
        assert_eq!(
            m.handle_response(at(t0, 560), 180, None),
            ResponseAction::Absorb
        );
        assert_eq!(drain(&mut m), 0, "the TU sends the ACK for a 2xx");
        assert_eq!(m.poll_timeout(), Some(at(t0, 32_050)));
        m.handle_timeout(at(t0, 32_050));
        assert!(m.is_terminated());
        assert_eq!(
            m.handle_response(at(t0, 40_000), 200, None),
            ResponseAction::Absorb
        );
    }
}
