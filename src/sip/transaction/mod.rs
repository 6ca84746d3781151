//! RFC 3261 §17 transactions as sans-IO state machines (with the RFC 6026 `Accepted` state),
//! and the pure parts of the transaction layer around them.
//!
//! What lives where:
//! - the four machines: [`ClientInvite`], [`ClientNonInvite`], [`ServerInvite`],
//!   [`ServerNonInvite`]; their timers ([`Timer`], [`TimerConfig`]) in this file;
//! - [`matching`]: the keys that name transactions and which key a message has (§17.1.3,
//!   §17.2.3, merged requests §8.2.2.2, CANCEL's INVITE §9.2, ACK for 2xx);
//! - [`answers`]: the responses the layer gives on its own (100, 420, 481, 482, 503, ...);
//! - [`via`]: `received`/`rport` on the top Via and where responses go (RFC 3581, §18.2.2);
//! - [`either`]: a client or server transaction of either kind, for the layer's tables;
//! - `events`: what goes up to transaction and dialog owners ([`SipEvent`], [`DialogKey`]);
//! - [`layer`]: the transaction layer, the tables of live transactions and their timers,
//!   sans-IO like the machines.
//!
//! The sockets and the clock are the endpoint's ([`crate::sip::endpoint`]).
//!
//! Call order, for every machine: construct it with `now`; feed inputs (`handle_response`,
//! `send_response`, `handle_request_retransmission`, `handle_ack`); then drain
//! [`poll_transmit`](ClientInvite::poll_transmit) (bytes to send to the transaction's peer) and
//! `poll_event` ([`Event`]); sleep until `poll_timeout` and call `handle_timeout(now)`. The
//! machines never read a clock or touch a socket: they hold already-serialised messages as
//! `Bytes` and decide when to (re)send them.
//!
//! Timers are data: each machine keeps a small table indexed by [`Timer`]; the next deadline is
//! the minimum of the table. On a reliable transport (TCP) there are no retransmission timers
//! (A, E, G) and the wait timers D, I, J, K are zero (§17.1.1.2, §17.1.2.2, §17.2.1, §17.2.2).

use std::time::{Duration, Instant};

pub use client_invite::ClientInvite;
pub use client_non_invite::ClientNonInvite;
pub use events::{via_for, DialogKey, ServerTransactionId, SipEvent};
pub use server_invite::ServerInvite;
pub use server_non_invite::ServerNonInvite;

/// RFC 3261 timer values (§17.1.1.1, table 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimerConfig {
    /// RTT estimate; default 500 ms. Retransmissions start here and double.
    pub t1: Duration,
    /// Cap on non-INVITE and 2xx retransmission intervals; default 4 s.
    pub t2: Duration,
    /// How long the network may keep a message; default 5 s.
    pub t4: Duration,
}

impl Default for TimerConfig {
    fn default() -> Self {
        TimerConfig {
            t1: Duration::from_millis(500),
            t2: Duration::from_secs(4),
            t4: Duration::from_secs(5),
        }
    }
}

/// The timers of §17 and RFC 6026.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timer {
    /// INVITE request retransmission, UDP only (§17.1.1.2): T1, doubling.
    A,
    /// INVITE transaction timeout in `Calling` (§17.1.1.2): 64*T1.
    B,
    /// Wait for response retransmissions in `Completed` (§17.1.1.2): ≥32 s UDP, 0 TCP.
    D,
    /// Non-INVITE request retransmission, UDP only (§17.1.2.2): T1 doubling to T2.
    E,
    /// Non-INVITE transaction timeout (§17.1.2.2): 64*T1.
    F,
    /// INVITE final response retransmission, UDP only (§17.2.1): T1 doubling to T2.
    G,
    /// Wait for ACK in `Completed` (§17.2.1): 64*T1.
    H,
    /// Absorb ACK retransmissions in `Confirmed` (§17.2.1): T4 UDP, 0 TCP.
    I,
    /// Absorb request retransmissions in `Completed` (§17.2.2): 64*T1 UDP, 0 TCP.
    J,
    /// Absorb response retransmissions in `Completed` (§17.1.2.2): T4 UDP, 0 TCP.
    K,
    /// Server `Accepted` lifetime (RFC 6026 §8.7): 64*T1; also ends 2xx retransmission.
    L,
    /// Client `Accepted` lifetime (RFC 6026 §8.4): 64*T1.
    M,
    /// 2xx retransmission by the UAS core (§13.3.1.4): T1 doubling to T2 until ACK.
    Retransmit2xx,
}

/// What a machine reports to its owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// Timer B, F or H fired: no (final) response, or no ACK.
    Timeout,
    /// A 2xx was retransmitted for 64*T1 without an ACK (§13.3.1.4): end the session.
    AckTimeout,
    /// The machine reached `Terminated`; drop it.
    Terminated,
}

/// Whether a response goes up to the transaction user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum ResponseAction {
    PassToTu,
    Absorb,
}

/// The RFC state names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Calling,
    Trying,
    Proceeding,
    Completed,
    Confirmed,
    Accepted,
    Terminated,
}

const ALL_TIMERS: [Timer; 13] = [
    Timer::A,
    Timer::B,
    Timer::D,
    Timer::E,
    Timer::F,
    Timer::G,
    Timer::H,
    Timer::I,
    Timer::J,
    Timer::K,
    Timer::L,
    Timer::M,
    Timer::Retransmit2xx,
];

/// A fixed table of armed timers, indexed by [`Timer`].
#[derive(Debug, Clone, Default)]
struct Timers {
    slots: [Option<Instant>; 13],
}

impl Timers {
    fn set(&mut self, timer: Timer, at: Instant) {
        self.slots[timer as usize] = Some(at);
    }

    fn cancel(&mut self, timer: Timer) {
        self.slots[timer as usize] = None;
    }

    fn clear(&mut self) {
        self.slots = [None; 13];
    }

    fn next(&self) -> Option<Instant> {
        self.slots.iter().flatten().min().copied()
    }

    /// Disarms and returns the earliest timer due at `now`.
    fn pop_due(&mut self, now: Instant) -> Option<Timer> {
        let (index, _) = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(index, at)| at.filter(|at| *at <= now).map(|at| (index, at)))
            .min_by_key(|(_, at)| *at)?;
        self.slots[index] = None;
        Some(ALL_TIMERS[index])
    }
}

/// The part every machine shares: state queries, the output queues its driver polls, and the
/// move to `Terminated`. Each machine has the fields `state`, `timers`, `transmit` and `events`.
macro_rules! machine_outputs {
    ($machine:ty) => {
        impl $machine {
            pub fn state(&self) -> State {
                self.state
            }

            pub fn is_terminated(&self) -> bool {
                self.state == State::Terminated
            }

            /// The next message to send to the transaction's peer.
            #[must_use]
            pub fn poll_transmit(&mut self) -> Option<Bytes> {
                self.transmit.pop_front()
            }

            #[must_use]
            pub fn poll_event(&mut self) -> Option<Event> {
                self.events.pop_front()
            }

            /// When [`handle_timeout`](Self::handle_timeout) must next be called.
            #[must_use]
            pub fn poll_timeout(&self) -> Option<Instant> {
                self.timers.next()
            }

            /// The transport failed (§17.1.1.2, §17.1.2.2): a transaction still waiting for
            /// its final response ends; true if so (the TU treats it as a 503, §8.1.3.1).
            pub fn handle_transport_error(&mut self) -> bool {
                let waiting = matches!(
                    self.state,
                    State::Calling | State::Trying | State::Proceeding
                );
                if waiting {
                    self.terminate();
                }
                waiting
            }

            fn terminate(&mut self) {
                if self.state != State::Terminated {
                    self.state = State::Terminated;
                    self.timers.clear();
                    self.events.push_back(Event::Terminated);
                }
            }
        }
    };
}
use machine_outputs;

pub mod answers;
mod client_invite;
mod client_non_invite;
pub mod either;
mod events;
pub mod layer;
pub mod matching;
mod server_invite;
mod server_non_invite;
pub mod via;

/// Zero on reliable transports, `duration` otherwise.
fn unreliable_only(reliable: bool, duration: Duration) -> Duration {
    if reliable {
        Duration::ZERO
    } else {
        duration
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Milliseconds after `t0`.
    pub(super) fn at(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    #[test]
    fn timer_table_pops_in_deadline_order() {
        let t0 = Instant::now();
        let mut timers = Timers::default();
        timers.set(Timer::B, at(t0, 32_000));
        timers.set(Timer::A, at(t0, 500));
        timers.set(Timer::A, at(t0, 1000));
        assert_eq!(timers.next(), Some(at(t0, 1000)));
        assert_eq!(timers.pop_due(at(t0, 999)), None);
        assert_eq!(timers.pop_due(at(t0, 40_000)), Some(Timer::A));
        assert_eq!(timers.pop_due(at(t0, 40_000)), Some(Timer::B));
        assert_eq!(timers.next(), None);
    }
}
