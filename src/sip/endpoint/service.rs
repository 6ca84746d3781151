//! The endpoint's timers and transaction service: each machine's due timers run, what a
//! machine asks for (a transmission, an event to its owner, its end) carried out, and sparse
//! tables shrunk.

use super::*;

impl Endpoint {
    pub(super) fn handle_timers(&mut self, now: Instant) {
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
                        self.service_client(now, &key, true);
                    }
                }
                TimerOwner::Server(id) => {
                    if let Some(key) = self.server_keys.get(&id).cloned() {
                        if let Some(entry) = self.servers.get_mut(&key) {
                            entry.armed = None;
                            entry.machine.handle_timeout(now);
                            self.service_server(now, &key, true);
                        }
                    }
                }
            }
        }
        // Transactions end on their timers, so this is where the tables empty after a load.
        let idle = self.servers.is_empty() && self.clients.is_empty();
        let emptied = idle && !std::mem::replace(&mut self.was_idle, idle);
        if emptied || now.duration_since(self.last_shrink) >= SHRINK_EVERY {
            self.shrink_tables(now);
        }
    }

    /// Fits the tables that a load fills to what they hold now (see [`shrink_sparse`]).
    pub(super) fn shrink_tables(&mut self, now: Instant) {
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
        if self.dialogs.capacity() > 64 && self.dialogs.len() * 4 < self.dialogs.capacity() {
            self.dialogs.shrink_to_fit();
        }
    }

    /// Drains a client machine's outputs, re-arms its timer, drops it when terminated.
    pub(super) fn service_client(&mut self, _now: Instant, key: &ClientKey, from_timer: bool) {
        let Some(entry) = self.clients.get_mut(key) else {
            return;
        };
        let mut terminated = false;
        loop {
            let transmit = entry.machine.poll_transmit();
            let Some(bytes) = transmit else { break };
            if from_timer {
                self.metrics.increment(Counter::SipRetransmissions);
            }
            self.transport.send(entry.target, bytes);
        }
        loop {
            let event = entry.machine.poll_event();
            match event {
                Some(MachineEvent::Timeout) => {
                    self.metrics.increment(Counter::TransactionTimeouts);
                    let _ = entry.owner.send(SipEvent::Timeout {
                        branch: key.branch().to_string(),
                        method: key.method().clone(),
                    });
                }
                Some(MachineEvent::Terminated) => terminated = true,
                Some(MachineEvent::AckTimeout) => {}
                None => break,
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

    pub(super) fn service_server(&mut self, _now: Instant, key: &ServerKey, retransmission: bool) {
        let Some(entry) = self.servers.get_mut(key) else {
            return;
        };
        let mut terminated = false;
        loop {
            let transmit = entry.machine.poll_transmit();
            let Some(bytes) = transmit else { break };
            if retransmission {
                self.metrics.increment(Counter::SipRetransmissions);
            }
            self.transport.send(entry.response_target, bytes);
        }
        loop {
            let event = entry.machine.poll_event();
            match event {
                Some(MachineEvent::Timeout) => {
                    self.metrics.increment(Counter::TransactionTimeouts);
                }
                Some(MachineEvent::AckTimeout) => {
                    self.metrics.increment(Counter::TransactionTimeouts);
                    if let Some(owner) = &entry.owner {
                        let _ = owner.send(SipEvent::AckTimeout { server: entry.id });
                    }
                }
                Some(MachineEvent::Terminated) => terminated = true,
                None => break,
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
