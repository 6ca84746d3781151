//! The layer's timers and transaction service: each machine's due timers run, what a machine
//! asks for (a transmission, an event to its owner, its end) carried out, and sparse tables
//! fitted to their contents.

use super::*;
use crate::sip::transaction::Event as MachineEvent;

impl<O: Clone> TransactionLayer<O> {
    /// Runs every timer due at `now`. True when the tables were fitted to their contents just
    /// now (every [`SHRINK_EVERY`], and as they empty), so the driver can fit its own.
    pub fn handle_timeout(&mut self, now: Instant) -> bool {
        while let Some(Reverse((at, _))) = self.deadlines.peek() {
            if *at > now {
                break;
            }
            let Some(Reverse((_, owner))) = self.deadlines.pop() else {
                break;
            };
            match owner {
                TimerOwner::Client(key) => {
                    if let Some(entry) = self.clients.get_mut(&key) {
                        entry.armed = None;
                        entry.machine.handle_timeout(now);
                        self.service_client(&key, true);
                    }
                }
                TimerOwner::Server(id) => {
                    let Some(key) = self.server_keys.get(&id).cloned() else {
                        continue;
                    };
                    if let Some(entry) = self.servers.get_mut(&key) {
                        entry.armed = None;
                        entry.machine.handle_timeout(now);
                        self.service_server(&key, true);
                    }
                }
            }
        }
        // Transactions end on their timers, so this is where the tables empty after a load.
        let idle = self.servers.is_empty() && self.clients.is_empty();
        let emptied = idle && !std::mem::replace(&mut self.was_idle, idle);
        let due = emptied || now.duration_since(self.last_shrink) >= SHRINK_EVERY;
        if due {
            self.shrink_tables(now);
        }
        due
    }

    /// Fits the tables that a load fills to what they hold now (see [`shrink_sparse`]).
    fn shrink_tables(&mut self, now: Instant) {
        self.last_shrink = now;
        shrink_sparse(&mut self.clients);
        shrink_sparse(&mut self.servers);
        shrink_sparse(&mut self.server_keys);
        shrink_sparse(&mut self.merged);
        shrink_sparse(&mut self.accepted);
        shrink_sparse(&mut self.reliable_clients);
        if self.deadlines.capacity() > 64 && self.deadlines.len() * 4 < self.deadlines.capacity() {
            self.deadlines.shrink_to(self.deadlines.len() * 2);
        }
    }

    /// Drains a client machine's outputs, re-arms its timer, drops it when terminated.
    pub(super) fn service_client(&mut self, key: &ClientKey, from_timer: bool) {
        let Some(entry) = self.clients.get_mut(key) else {
            return;
        };
        let mut terminated = false;
        while let Some(bytes) = entry.machine.poll_transmit() {
            if from_timer {
                self.metrics.increment(Counter::SipRetransmissions);
            }
            self.transmits.push_back(Transmit {
                target: entry.target,
                bytes,
            });
        }
        while let Some(event) = entry.machine.poll_event() {
            match event {
                MachineEvent::Timeout => {
                    self.metrics.increment(Counter::TransactionTimeouts);
                    let event = SipEvent::Timeout {
                        branch: key.branch().to_string(),
                        method: key.method().clone(),
                    };
                    let owner = entry.owner.clone();
                    self.events.push_back(LayerEvent::Deliver { owner, event });
                }
                MachineEvent::Terminated => terminated = true,
                MachineEvent::AckTimeout => {}
            }
        }
        let deadline = entry.machine.poll_timeout();
        if terminated {
            if let Some(entry) = self.clients.remove(key) {
                self.count_reliable(entry.target, -1);
            }
            self.metrics.add_gauge(Gauge::TransactionsActive, -1);
        } else if let Some(at) = deadline {
            if entry.armed.is_none_or(|armed| at < armed) {
                entry.armed = Some(at);
                self.deadlines
                    .push(Reverse((at, TimerOwner::Client(key.clone()))));
            }
        }
    }

    /// Drains a server machine's outputs, re-arms its timer, drops it and its indexes when
    /// terminated.
    pub(super) fn service_server(&mut self, key: &ServerKey, retransmission: bool) {
        let Some(entry) = self.servers.get_mut(key) else {
            return;
        };
        let mut terminated = false;
        while let Some(bytes) = entry.machine.poll_transmit() {
            if retransmission {
                self.metrics.increment(Counter::SipRetransmissions);
            }
            self.transmits.push_back(Transmit {
                target: entry.response_target,
                bytes,
            });
        }
        while let Some(event) = entry.machine.poll_event() {
            match event {
                MachineEvent::Timeout => {
                    self.metrics.increment(Counter::TransactionTimeouts);
                }
                MachineEvent::AckTimeout => {
                    self.metrics.increment(Counter::TransactionTimeouts);
                    if let Some(owner) = entry.owner.clone() {
                        let event = SipEvent::AckTimeout { server: entry.id };
                        self.events.push_back(LayerEvent::Deliver { owner, event });
                    }
                }
                MachineEvent::Terminated => terminated = true,
            }
        }
        let deadline = entry.machine.poll_timeout();
        let id = entry.id;
        let arm = match deadline {
            Some(at) if entry.armed.is_none_or(|armed| at < armed) => {
                entry.armed = Some(at);
                Some(at)
            }
            _ => None,
        };
        if terminated {
            if let Some(entry) = self.servers.remove(key) {
                self.server_keys.remove(&entry.id);
                if let Some(merge) = entry.merge_key {
                    self.merged.remove(&merge);
                }
                if let Some(accepted) = entry.accepted_key {
                    self.accepted.remove(&accepted);
                }
            }
            self.metrics.add_gauge(Gauge::TransactionsActive, -1);
        } else if let Some(at) = arm {
            self.deadlines.push(Reverse((at, TimerOwner::Server(id))));
        }
    }
}
