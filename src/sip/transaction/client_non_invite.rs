//! Non-INVITE client transaction (§17.1.2, figure 6).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::{unreliable_only, Event, ResponseAction, State, Timer, TimerConfig, Timers};

/// Sends a BYE, CANCEL, OPTIONS, ... and follows its responses.
#[derive(Debug)]
pub struct ClientNonInvite {
    state: State,
    request: Bytes,
    reliable: bool,
    config: TimerConfig,
    timers: Timers,
    retransmit_interval: Duration,
    transmit: VecDeque<Bytes>,
    events: VecDeque<Event>,
}

super::machine_outputs!(ClientNonInvite);

impl ClientNonInvite {
    /// Queues the request and arms Timer E (UDP) and Timer F.
    pub fn new(
        now: Instant,
        request: Bytes,
        reliable: bool,
        config: &TimerConfig,
    ) -> ClientNonInvite {
        let mut machine = ClientNonInvite {
            state: State::Trying,
            request: request.clone(),
            reliable,
            config: *config,
            timers: Timers::default(),
            retransmit_interval: config.t1,
            transmit: VecDeque::from([request]),
            events: VecDeque::new(),
        };
        if !reliable {
            machine.timers.set(Timer::E, now + config.t1);
        }
        machine.timers.set(Timer::F, now + config.t1 * 64);
        machine
    }

    pub fn handle_response(&mut self, now: Instant, status: u16) -> ResponseAction {
        match (self.state, status) {
            (State::Trying | State::Proceeding, 100..=199) => {
                self.state = State::Proceeding;
                ResponseAction::PassToTu
            }
            (State::Trying | State::Proceeding, _) => {
                self.state = State::Completed;
                self.timers.clear();
                self.timers.set(
                    Timer::K,
                    now + unreliable_only(self.reliable, self.config.t4),
                );
                ResponseAction::PassToTu
            }
            _ => ResponseAction::Absorb,
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(timer) = self.timers.pop_due(now) {
            match (timer, self.state) {
                (Timer::E, State::Trying) => {
                    self.transmit.push_back(self.request.clone());
                    self.retransmit_interval = (self.retransmit_interval * 2).min(self.config.t2);
                    self.timers.set(Timer::E, now + self.retransmit_interval);
                }
                (Timer::E, State::Proceeding) => {
                    // §17.1.2.2: in Proceeding, retransmit every T2.
                    self.transmit.push_back(self.request.clone());
                    self.timers.set(Timer::E, now + self.config.t2);
                }
                (Timer::F, State::Trying | State::Proceeding) => {
                    self.events.push_back(Event::Timeout);
                    self.terminate();
                }
                (Timer::K, _) => self.terminate(),
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::at;
    use super::*;

    fn sent_times(machine: &mut ClientNonInvite, t0: Instant, end_ms: u64) -> Vec<u64> {
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
    fn timer_e_doubles_to_t2_and_f_times_out() {
        let t0 = Instant::now();
        let mut m = ClientNonInvite::new(
            t0,
            Bytes::from_static(b"BYE"),
            false,
            &TimerConfig::default(),
        );
        assert!(m.poll_transmit().is_some());
        let times = sent_times(&mut m, t0, 40_000);
        assert_eq!(&times[..6], &[500, 1500, 3500, 7500, 11_500, 15_500]);
        assert_eq!(times.last(), Some(&31_500));
        assert_eq!(m.poll_event(), Some(Event::Timeout));
        assert_eq!(m.poll_event(), Some(Event::Terminated));
    }

    #[test]
    fn proceeding_retransmits_every_t2() {
        let t0 = Instant::now();
        let mut m = ClientNonInvite::new(
            t0,
            Bytes::from_static(b"BYE"),
            false,
            &TimerConfig::default(),
        );
        let _ = m.poll_transmit();
        assert_eq!(
            m.handle_response(at(t0, 100), 100),
            ResponseAction::PassToTu
        );
        assert_eq!(m.state(), State::Proceeding);
        let times = sent_times(&mut m, t0, 10_000);
        assert_eq!(times, vec![500, 4500, 8500]);
    }

    #[test]
    fn final_response_then_timer_k() {
        let t0 = Instant::now();
        let mut m = ClientNonInvite::new(
            t0,
            Bytes::from_static(b"BYE"),
            false,
            &TimerConfig::default(),
        );
        assert_eq!(m.handle_response(at(t0, 20), 200), ResponseAction::PassToTu);
        assert_eq!(m.handle_response(at(t0, 30), 200), ResponseAction::Absorb);
        assert_eq!(m.poll_timeout(), Some(at(t0, 5020)), "Timer K = T4 on UDP");
        m.handle_timeout(at(t0, 5020));
        assert!(m.is_terminated());
    }

    #[test]
    fn tcp_no_e_and_zero_k() {
        let t0 = Instant::now();
        let mut m = ClientNonInvite::new(
            t0,
            Bytes::from_static(b"BYE"),
            true,
            &TimerConfig::default(),
        );
        let _ = m.poll_transmit();
        assert_eq!(m.poll_timeout(), Some(at(t0, 32_000)));
        let _ = m.handle_response(at(t0, 5), 481);
        assert_eq!(m.poll_timeout(), Some(at(t0, 5)));
        m.handle_timeout(at(t0, 5));
        assert!(m.is_terminated());
        assert!(m.poll_transmit().is_none());
    }
}
