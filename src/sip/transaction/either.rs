//! One client or server transaction of either kind (§17.1 / §17.2: INVITE or non-INVITE), so
//! the endpoint's tables hold one type and drive its common inputs and outputs without
//! matching on the kind; the kind-specific inputs stay on the variants.

use std::time::Instant;

use bytes::Bytes;

use crate::sip::message::Method;

use super::{ClientInvite, ClientNonInvite, Event, ServerInvite, ServerNonInvite, TimerConfig};

/// A client transaction (§17.1).
#[derive(Debug)]
pub enum ClientTransaction {
    Invite(ClientInvite),
    NonInvite(ClientNonInvite),
}

/// Forwards a method that both variants have.
macro_rules! either {
    ($self:expr, $machine:ident => $call:expr) => {
        match $self {
            Self::Invite($machine) => $call,
            Self::NonInvite($machine) => $call,
        }
    };
}

impl ClientTransaction {
    /// The machine for `method` (§17.1.1 for INVITE, §17.1.2 otherwise), sending `request`.
    pub fn new(
        now: Instant,
        method: &Method,
        request: Bytes,
        reliable: bool,
        config: &TimerConfig,
    ) -> ClientTransaction {
        if *method == Method::Invite {
            ClientTransaction::Invite(ClientInvite::new(now, request, reliable, config))
        } else {
            ClientTransaction::NonInvite(ClientNonInvite::new(now, request, reliable, config))
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        either!(self, machine => machine.handle_timeout(now))
    }

    /// See the machines' `handle_transport_error`.
    pub fn handle_transport_error(&mut self) -> bool {
        either!(self, machine => machine.handle_transport_error())
    }

    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        either!(self, machine => machine.poll_transmit())
    }

    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event> {
        either!(self, machine => machine.poll_event())
    }

    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        either!(self, machine => machine.poll_timeout())
    }
}

/// A server transaction (§17.2).
#[derive(Debug)]
pub enum ServerTransaction {
    Invite(ServerInvite),
    NonInvite(ServerNonInvite),
}

impl ServerTransaction {
    /// The machine for a request of `method` (§17.2.1 for INVITE, §17.2.2 otherwise).
    pub fn new(
        now: Instant,
        method: &Method,
        reliable: bool,
        config: &TimerConfig,
    ) -> ServerTransaction {
        if *method == Method::Invite {
            ServerTransaction::Invite(ServerInvite::new(now, reliable, config))
        } else {
            ServerTransaction::NonInvite(ServerNonInvite::new(now, reliable, config))
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        either!(self, machine => machine.handle_timeout(now))
    }

    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        either!(self, machine => machine.poll_transmit())
    }

    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event> {
        either!(self, machine => machine.poll_event())
    }

    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        either!(self, machine => machine.poll_timeout())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::transaction::State;

    #[test]
    fn an_invite_gets_the_invite_machines_and_anything_else_the_non_invite_ones() {
        let (now, config) = (Instant::now(), TimerConfig::default());
        let bytes = Bytes::from_static(b"request");
        let client = ClientTransaction::new(now, &Method::Invite, bytes.clone(), false, &config);
        assert!(matches!(client, ClientTransaction::Invite(_)));
        let client = ClientTransaction::new(now, &Method::Options, bytes, false, &config);
        assert!(matches!(client, ClientTransaction::NonInvite(_)));
        let server = ServerTransaction::new(now, &Method::Invite, false, &config);
        assert!(matches!(server, ServerTransaction::Invite(_)));
        let server = ServerTransaction::new(now, &Method::Bye, false, &config);
        assert!(matches!(server, ServerTransaction::NonInvite(_)));
    }

    #[test]
    fn a_client_transaction_sends_its_request_and_arms_a_timer() {
        let (now, config) = (Instant::now(), TimerConfig::default());
        let bytes = Bytes::from_static(b"request");
        let mut client =
            ClientTransaction::new(now, &Method::Invite, bytes.clone(), false, &config);
        assert_eq!(client.poll_transmit(), Some(bytes));
        assert_eq!(
            client.poll_timeout(),
            Some(now + config.t1),
            "Timer A (§17.1.1.2)"
        );
        client.handle_timeout(now + config.t1);
        assert!(client.poll_transmit().is_some(), "the first retransmission");
    }

    #[test]
    fn a_transport_error_ends_a_client_transaction_still_waiting() {
        let (now, config) = (Instant::now(), TimerConfig::default());
        let bytes = Bytes::from_static(b"request");
        let mut client = ClientTransaction::new(now, &Method::Options, bytes, true, &config);
        assert!(client.handle_transport_error());
        assert_eq!(client.poll_event(), Some(Event::Terminated));
        let ClientTransaction::NonInvite(machine) = &client else {
            panic!("non-INVITE");
        };
        assert_eq!(machine.state(), State::Terminated);
    }
}
