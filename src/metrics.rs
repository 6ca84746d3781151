//! Prometheus counters and gauges, lock-free (relaxed atomics), rendered as text exposition
//! format 0.0.4 by [`Metrics::render`] for `GET /metrics`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// Monotonic counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counter {
    SipRequestsReceived,
    SipResponsesReceived,
    SipMessagesSent,
    /// Retransmissions the gateway sent (timers A, E, G and 2xx retransmission).
    SipRetransmissions,
    /// Retransmitted requests received (absorbed by server transactions).
    SipRetransmissionsReceived,
    SipParseErrors,
    SipRejectedUnknownPeer,
    TransactionsTotal,
    TransactionTimeouts,
    CallsRefusedOverload,
    /// New INVITEs answered 503 statelessly because they queued too long (overload control).
    SipShedOverload,
    TransfersRequested,
    TransfersAnswered,
    TransfersFailed,
    /// Sum over transfers of the milliseconds from trigger to the target ringing.
    TransferRingingMilliseconds,
    TransfersRinging,
    RtpPacketsRelayed,
    RtpPacketsDropped,
    RtcpPacketsRelayed,
    StoreWriteErrors,
    /// Conference mixer ticks (one per conference per 20 ms).
    MixerTicks,
    /// Ticks that ran more than 5 ms after they were due.
    MixerLateTicks,
    /// Sum over ticks of how late they ran, in microseconds.
    MixerLatenessMicroseconds,
    /// Packets the jitter buffers refused (late, duplicate) or frames they skipped.
    JitterDropped,
    /// Frames concealed because nothing arrived for them.
    JitterConcealed,
    ConferencesStarted,
    WorkOrderEventsStored,
    WorkOrderEventsSent,
    WorkOrderCommands,
    /// Commands that repeated a `command_id` of the window: answered from the first.
    WorkOrderCommandsRepeated,
    WorkOrderAuthFailures,
    SipDroppedUnknown,
    SipDroppedScanner,
    SipDroppedBanned,
    SipBans,
    CallsBlocked,
    CallsFlagged,
    CallsRefusedRate,
    /// New calls answered 503 because every peer of their route was down (probed).
    CallsRefusedPeersDown,
    TcpConnectionsRefused,
    /// Records given up: the memory hold was full, the store refused them for good, or the
    /// gateway stopped before the store could write again.
    StoreRecordsLost,
    /// New out-of-dialog requests answered 503: `sip.max_transactions` were in progress.
    SipRefusedTransactions,
    /// Requests failed because their TCP connection was lost before the final response.
    SipTransportErrors,
    /// 401s sent: requests from peers with credentials that brought none (or a stale nonce).
    SipAuthChallenges,
    /// 403s for wrong digest credentials.
    SipAuthFailures,
    /// TLS connections that failed their handshake (a certificate refused, either way).
    TlsHandshakeFailures,
    /// SRTP/SRTCP packets that failed authentication or were replays (RFC 3711 §3.3).
    SrtpRejected,
    /// Sockets not opened (a connection, a media port) because no descriptor was left.
    DescriptorsExhausted,
    /// Inbound TCP/TLS connections closed because a message was not whole in time.
    TcpRequestTimeouts,
    /// HTTP connections closed at once: the endpoint's connection cap was reached.
    HttpConnectionsRefused,
    /// Requests for dialogs the gateway does not have, answered 481 without a transaction.
    SipUnknownDialog,
    /// Other nodes of the cluster whose lease expired and whose open records this node closed.
    ClusterNodesLost,
    /// Calls of lost nodes this node closed.
    ClusterCallsClosed,
    /// New calls on other nodes whose caller this node counted (repeat callers).
    ClusterCallersNoted,
    /// Blocklist changes made on other nodes that this node's screening took.
    ClusterBlocklistChanges,
}

const COUNTERS: [(Counter, &str, &str); 55] = [
    (
        Counter::SipRequestsReceived,
        "hotline_sip_requests_received_total",
        "SIP requests received",
    ),
    (
        Counter::SipResponsesReceived,
        "hotline_sip_responses_received_total",
        "SIP responses received",
    ),
    (
        Counter::SipMessagesSent,
        "hotline_sip_messages_sent_total",
        "SIP messages sent, retransmissions included",
    ),
    (
        Counter::SipRetransmissions,
        "hotline_sip_retransmissions_total",
        "SIP retransmissions sent (timers A, E, G, 2xx)",
    ),
    (
        Counter::SipRetransmissionsReceived,
        "hotline_sip_retransmissions_received_total",
        "retransmitted requests absorbed by transactions",
    ),
    (
        Counter::SipParseErrors,
        "hotline_sip_parse_errors_total",
        "messages rejected (400/416/501/505) or dropped as malformed",
    ),
    (
        Counter::SipRejectedUnknownPeer,
        "hotline_sip_rejected_unknown_peer_total",
        "requests from addresses that are no configured peer (403)",
    ),
    (
        Counter::TransactionsTotal,
        "hotline_sip_transactions_total",
        "SIP transactions created",
    ),
    (
        Counter::TransactionTimeouts,
        "hotline_sip_transaction_timeouts_total",
        "transactions that timed out (timers B, F, H, 2xx without ACK)",
    ),
    (
        Counter::CallsRefusedOverload,
        "hotline_calls_refused_overload_total",
        "INVITEs answered 503 for lack of call slots or media ports",
    ),
    (
        Counter::SipShedOverload,
        "hotline_sip_shed_overload_total",
        "new INVITEs answered 503 statelessly because the gateway was behind (queueing delay)",
    ),
    (
        Counter::TransfersRequested,
        "hotline_transfers_requested_total",
        "transfers asked for (REFER, hotkey, API, fallback)",
    ),
    (
        Counter::TransfersAnswered,
        "hotline_transfers_answered_total",
        "transfers whose target answered",
    ),
    (
        Counter::TransfersFailed,
        "hotline_transfers_failed_total",
        "transfers that failed (the citizen stayed where they were)",
    ),
    (
        Counter::TransferRingingMilliseconds,
        "hotline_transfer_ringing_milliseconds_total",
        "sum of the times from transfer trigger to target ringing (divide by the next)",
    ),
    (
        Counter::TransfersRinging,
        "hotline_transfers_ringing_total",
        "transfers whose target rang",
    ),
    (
        Counter::RtpPacketsRelayed,
        "hotline_rtp_packets_relayed_total",
        "RTP packets relayed between legs",
    ),
    (
        Counter::RtpPacketsDropped,
        "hotline_rtp_packets_dropped_total",
        "RTP packets dropped (unknown source, unnegotiated payload, no destination)",
    ),
    (
        Counter::RtcpPacketsRelayed,
        "hotline_rtcp_packets_relayed_total",
        "RTCP packets relayed between legs",
    ),
    (
        Counter::StoreWriteErrors,
        "hotline_store_write_errors_total",
        "store commits that failed (their records are held in memory and retried)",
    ),
    (
        Counter::MixerTicks,
        "hotline_mixer_ticks_total",
        "conference mixer ticks (20 ms each)",
    ),
    (
        Counter::MixerLateTicks,
        "hotline_mixer_late_ticks_total",
        "mixer ticks run more than 5 ms late",
    ),
    (
        Counter::MixerLatenessMicroseconds,
        "hotline_mixer_lateness_microseconds_total",
        "sum of how late mixer ticks ran",
    ),
    (
        Counter::JitterDropped,
        "hotline_jitter_dropped_total",
        "packets the conference jitter buffers dropped (late, duplicate) or frames skipped",
    ),
    (
        Counter::JitterConcealed,
        "hotline_jitter_concealed_total",
        "frames concealed for lost packets",
    ),
    (
        Counter::ConferencesStarted,
        "hotline_conferences_total",
        "conferences started (a third party answered)",
    ),
    (
        Counter::WorkOrderEventsStored,
        "hotline_workorder_events_stored_total",
        "work-order events written to the outbox (one per receiving platform)",
    ),
    (
        Counter::WorkOrderEventsSent,
        "hotline_workorder_events_sent_total",
        "work-order events sent to platform clients (resends included)",
    ),
    (
        Counter::WorkOrderCommands,
        "hotline_workorder_commands_total",
        "commands received from platform clients",
    ),
    (
        Counter::WorkOrderCommandsRepeated,
        "hotline_workorder_commands_repeated_total",
        "commands that repeated a recent command_id: answered with the first one's result, not carried out again",
    ),
    (
        Counter::WorkOrderAuthFailures,
        "hotline_workorder_auth_failures_total",
        "work-order clients refused for an unknown platform or a wrong token",
    ),
    (
        Counter::SipDroppedUnknown,
        "hotline_sip_dropped_unknown_source_total",
        "requests from addresses that are no peer, dropped silently (unknown_source = drop)",
    ),
    (
        Counter::SipDroppedScanner,
        "hotline_sip_dropped_scanner_total",
        "requests from known scanners' User-Agents, dropped silently",
    ),
    (
        Counter::SipDroppedBanned,
        "hotline_sip_dropped_banned_total",
        "requests from banned sources (they flooded), dropped silently",
    ),
    (
        Counter::SipBans,
        "hotline_sip_bans_total",
        "sources banned for flooding",
    ),
    (
        Counter::CallsBlocked,
        "hotline_calls_blocked_total",
        "calls refused because the caller is on the screening blocklist",
    ),
    (
        Counter::CallsFlagged,
        "hotline_calls_flagged_total",
        "calls flagged to the platforms as a repeat caller's",
    ),
    (
        Counter::CallsRefusedRate,
        "hotline_calls_refused_rate_total",
        "new calls refused (503) because their peer was above its max_calls_per_sec",
    ),
    (
        Counter::CallsRefusedPeersDown,
        "hotline_calls_refused_peers_down_total",
        "new calls refused (503) at once because every peer of their route was down",
    ),
    (
        Counter::TcpConnectionsRefused,
        "hotline_tcp_connections_refused_total",
        "inbound TCP/TLS connections closed at once: sip.max_tcp_connections were open, the rest is kept for peers, or the address holds its max_tcp_connections_per_source",
    ),
    (
        Counter::StoreRecordsLost,
        "hotline_store_records_lost_total",
        "records given up: the memory hold was full or the gateway stopped while the store could not write",
    ),
    (
        Counter::SipRefusedTransactions,
        "hotline_sip_refused_transactions_total",
        "new requests answered 503: sip.max_transactions server transactions were in progress",
    ),
    (
        Counter::SipTransportErrors,
        "hotline_sip_transport_errors_total",
        "requests failed at once (as 503) because their TCP connection was lost before the final response",
    ),
    (
        Counter::SipAuthChallenges,
        "hotline_sip_auth_challenges_total",
        "401 digest challenges sent (no credentials yet, or a stale or replayed nonce)",
    ),
    (
        Counter::SipAuthFailures,
        "hotline_sip_auth_failures_total",
        "requests refused 403 for wrong digest credentials",
    ),
    (
        Counter::TlsHandshakeFailures,
        "hotline_sip_tls_handshake_failures_total",
        "SIP TLS connections that failed their handshake (certificate refused, timeout), either direction",
    ),
    (
        Counter::SrtpRejected,
        "hotline_srtp_rejected_total",
        "SRTP and SRTCP packets dropped: authentication failed or a replay (RFC 3711)",
    ),
    (
        Counter::DescriptorsExhausted,
        "hotline_descriptors_exhausted_total",
        "sockets not opened (TCP accept, media ports) because the process had no file descriptor left",
    ),
    (
        Counter::TcpRequestTimeouts,
        "hotline_tcp_request_timeouts_total",
        "inbound TCP/TLS connections closed: no whole message within sip.tcp_request_timeout_secs",
    ),
    (
        Counter::HttpConnectionsRefused,
        "hotline_http_connections_refused_total",
        "HTTP connections closed at once: the endpoint's connection cap was reached",
    ),
    (
        Counter::SipUnknownDialog,
        "hotline_sip_unknown_dialog_total",
        "requests for a dialog the gateway does not have, answered 481 without a transaction",
    ),
    (
        Counter::ClusterNodesLost,
        "hotline_cluster_nodes_lost_total",
        "other nodes whose lease expired and whose open calls, linkages and parties this node closed",
    ),
    (
        Counter::ClusterCallsClosed,
        "hotline_cluster_calls_closed_total",
        "calls of lost nodes this node closed (ended_by gateway, reason node lost)",
    ),
    (
        Counter::ClusterCallersNoted,
        "hotline_cluster_callers_noted_total",
        "new calls on the other nodes whose caller this node counted towards repeat callers",
    ),
    (
        Counter::ClusterBlocklistChanges,
        "hotline_cluster_blocklist_changes_total",
        "numbers blocked or unblocked through another node's API that this node's screening took",
    ),
];

/// Gauges (values that go up and down).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gauge {
    CallsActive,
    TransactionsActive,
    MediaPortsInUse,
    ConferencesActive,
    WorkOrderClients,
    /// 1 while the store cannot write (disk full, read-only): the alert to page on.
    StoreDegraded,
    StoreHeldRecords,
}

const GAUGES: [(Gauge, &str, &str); 7] = [
    (
        Gauge::CallsActive,
        "hotline_calls_active",
        "calls in progress",
    ),
    (
        Gauge::TransactionsActive,
        "hotline_sip_transactions_active",
        "SIP transactions in progress",
    ),
    (
        Gauge::MediaPortsInUse,
        "hotline_media_ports_in_use",
        "RTP/RTCP ports bound",
    ),
    (
        Gauge::ConferencesActive,
        "hotline_conferences_active",
        "calls mixing three or more parties",
    ),
    (
        Gauge::WorkOrderClients,
        "hotline_workorder_clients",
        "platform clients connected to the work-order link",
    ),
    (
        Gauge::StoreDegraded,
        "hotline_store_degraded",
        "1 while the store cannot write (disk full or read-only); records are held and retried",
    ),
    (
        Gauge::StoreHeldRecords,
        "hotline_store_held_records",
        "records held in memory until the store can write them",
    ),
];

/// How a call ended, for `hotline_calls_total{result=...}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallResult {
    Answered,
    Rejected,
    Failed,
    Cancelled,
}

const RESULTS: [(CallResult, &str); 4] = [
    (CallResult::Answered, "answered"),
    (CallResult::Rejected, "rejected"),
    (CallResult::Failed, "failed"),
    (CallResult::Cancelled, "cancelled"),
];

/// Every metric of the gateway. One instance, shared by `Arc`.
#[derive(Debug)]
pub struct Metrics {
    counters: [AtomicU64; COUNTERS.len()],
    gauges: [AtomicI64; GAUGES.len()],
    calls: [AtomicU64; RESULTS.len()],
    /// `hotline_peer_up{peer}`: each probed peer, in the order first set. Written at each
    /// change of a peer's state, read per scrape: a lock is cheap here (no call path takes it).
    peers_up: Mutex<Vec<(String, bool)>>,
    /// `hotline_peer_registered{peer}` and `hotline_peer_registrations_total{peer,result}`:
    /// each registering peer, in the order first set (written per REGISTER answer).
    registrations: Mutex<Vec<PeerRegistration>>,
    /// `hotline_interface_*{interface}`: each interface's media figures, in the order
    /// registered (at start, by the port pools that update them).
    interfaces: Mutex<Vec<(String, Arc<InterfaceMetrics>)>>,
}

/// One network interface's media figures, updated by its port pool without a lock.
#[derive(Debug, Default)]
pub struct InterfaceMetrics {
    /// RTP and RTCP ports bound now.
    pub ports_in_use: AtomicI64,
    /// Legs given a port pair there (callers, desks, transfer targets, conference guests).
    pub legs: AtomicU64,
}

/// One registering peer's rows.
#[derive(Debug)]
struct PeerRegistration {
    peer: String,
    registered: bool,
    ok: u64,
    failed: u64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            counters: std::array::from_fn(|_| AtomicU64::new(0)),
            gauges: std::array::from_fn(|_| AtomicI64::new(0)),
            calls: std::array::from_fn(|_| AtomicU64::new(0)),
            peers_up: Mutex::new(Vec::new()),
            registrations: Mutex::new(Vec::new()),
            interfaces: Mutex::new(Vec::new()),
        }
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics::default()
    }

    pub fn increment(&self, counter: Counter) {
        self.add(counter, 1);
    }

    pub fn add(&self, counter: Counter, value: u64) {
        if value > 0 {
            self.counters[counter_index(counter)].fetch_add(value, Ordering::Relaxed);
        }
    }

    pub fn add_gauge(&self, gauge: Gauge, delta: i64) {
        self.gauges[gauge_index(gauge)].fetch_add(delta, Ordering::Relaxed);
    }

    pub fn set_gauge(&self, gauge: Gauge, value: i64) {
        self.gauges[gauge_index(gauge)].store(value, Ordering::Relaxed);
    }

    pub fn count_call(&self, result: CallResult) {
        self.calls[RESULTS.iter().position(|(r, _)| *r == result).unwrap_or(0)]
            .fetch_add(1, Ordering::Relaxed);
    }

    /// The figures of interface `name` (registered on first ask), for its port pool.
    pub fn interface(&self, name: &str) -> Arc<InterfaceMetrics> {
        let mut interfaces = self
            .interfaces
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some((_, figures)) = interfaces.iter().find(|(n, _)| n == name) {
            return Arc::clone(figures);
        }
        let figures = Arc::new(InterfaceMetrics::default());
        interfaces.push((name.to_string(), Arc::clone(&figures)));
        figures
    }

    /// Sets `hotline_peer_up{peer="name"}` (a probed peer: 1 up, 0 down).
    pub fn set_peer_up(&self, peer: &str, up: bool) {
        let mut peers = self.peers_up.lock().unwrap_or_else(PoisonError::into_inner);
        match peers.iter_mut().find(|(name, _)| name == peer) {
            Some(entry) => entry.1 = up,
            None => peers.push((peer.to_string(), up)),
        }
    }

    /// Sets `hotline_peer_registered{peer="name"}` (a registering peer: 1 bound, 0 not) and
    /// counts the REGISTER answer that set it, if any (`Some(true)` a success, `Some(false)` a
    /// failure).
    pub fn set_peer_registered(&self, peer: &str, registered: bool, answer: Option<bool>) {
        let mut peers = self
            .registrations
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let index = match peers.iter().position(|p| p.peer == peer) {
            Some(index) => index,
            None => {
                peers.push(PeerRegistration {
                    peer: peer.to_string(),
                    registered,
                    ok: 0,
                    failed: 0,
                });
                peers.len() - 1
            }
        };
        let entry = &mut peers[index];
        entry.registered = registered;
        match answer {
            Some(true) => entry.ok += 1,
            Some(false) => entry.failed += 1,
            None => {}
        }
    }

    pub fn counter(&self, counter: Counter) -> u64 {
        self.counters[counter_index(counter)].load(Ordering::Relaxed)
    }

    pub fn gauge(&self, gauge: Gauge) -> i64 {
        self.gauges[gauge_index(gauge)].load(Ordering::Relaxed)
    }

    /// Prometheus text exposition format 0.0.4.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        let _ = writeln!(out, "# HELP hotline_calls_total calls ended, by result");
        let _ = writeln!(out, "# TYPE hotline_calls_total counter");
        for (index, (_, label)) in RESULTS.iter().enumerate() {
            let value = self.calls[index].load(Ordering::Relaxed);
            let _ = writeln!(out, "hotline_calls_total{{result=\"{label}\"}} {value}");
        }
        for (index, (_, name, help)) in GAUGES.iter().enumerate() {
            let value = self.gauges[index].load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
            );
        }
        self.render_peers_up(&mut out);
        self.render_registrations(&mut out);
        self.render_interfaces(&mut out);
        for (index, (_, name, help)) in COUNTERS.iter().enumerate() {
            let value = self.counters[index].load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
            );
        }
        out
    }
}

impl Metrics {
    /// `hotline_peer_up{peer}`, when some peer is probed.
    fn render_peers_up(&self, out: &mut String) {
        let peers = self.peers_up.lock().unwrap_or_else(PoisonError::into_inner);
        if peers.is_empty() {
            return;
        }
        let _ = writeln!(
            out,
            "# HELP hotline_peer_up whether a probed peer answers its OPTIONS probes (1) or is down (0)\n# TYPE hotline_peer_up gauge"
        );
        for (peer, up) in peers.iter() {
            let _ = writeln!(
                out,
                "hotline_peer_up{{peer=\"{}\"}} {}",
                label_value(peer),
                u8::from(*up)
            );
        }
    }
}

impl Metrics {
    /// Each interface's media figures.
    fn render_interfaces(&self, out: &mut String) {
        let interfaces = self
            .interfaces
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if interfaces.is_empty() {
            return;
        }
        let _ = writeln!(
            out,
            "# HELP hotline_interface_media_ports_in_use RTP and RTCP ports bound on the interface\n# TYPE hotline_interface_media_ports_in_use gauge"
        );
        for (name, figures) in interfaces.iter() {
            let _ = writeln!(
                out,
                "hotline_interface_media_ports_in_use{{interface=\"{}\"}} {}",
                label_value(name),
                figures.ports_in_use.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP hotline_interface_legs_total call legs given media on the interface (callers, desks, transfer targets, conference guests)\n# TYPE hotline_interface_legs_total counter"
        );
        for (name, figures) in interfaces.iter() {
            let _ = writeln!(
                out,
                "hotline_interface_legs_total{{interface=\"{}\"}} {}",
                label_value(name),
                figures.legs.load(Ordering::Relaxed)
            );
        }
    }

    /// The registering peers' rows, when some peer registers.
    fn render_registrations(&self, out: &mut String) {
        let peers = self
            .registrations
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if peers.is_empty() {
            return;
        }
        let _ = writeln!(
            out,
            "# HELP hotline_peer_registered whether the gateway's registration at the peer holds (1) or not (0)\n# TYPE hotline_peer_registered gauge"
        );
        for entry in peers.iter() {
            let _ = writeln!(
                out,
                "hotline_peer_registered{{peer=\"{}\"}} {}",
                label_value(&entry.peer),
                u8::from(entry.registered)
            );
        }
        let _ = writeln!(
            out,
            "# HELP hotline_peer_registrations_total REGISTER attempts at a peer, by result (ok: bound or refreshed; failed: refused, wrong credentials or unanswered)\n# TYPE hotline_peer_registrations_total counter"
        );
        for entry in peers.iter() {
            let peer = label_value(&entry.peer);
            for (result, value) in [("ok", entry.ok), ("failed", entry.failed)] {
                let _ = writeln!(
                    out,
                    "hotline_peer_registrations_total{{peer=\"{peer}\",result=\"{result}\"}} {value}"
                );
            }
        }
    }
}

/// A label value escaped as the exposition format wants (backslash, quote, newline).
fn label_value(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn counter_index(counter: Counter) -> usize {
    COUNTERS
        .iter()
        .position(|(c, _, _)| *c == counter)
        .unwrap_or(0)
}

fn gauge_index(gauge: Gauge) -> usize {
    GAUGES.iter().position(|(g, _, _)| *g == gauge).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_shows_values_in_exposition_format() {
        let metrics = Metrics::new();
        metrics.increment(Counter::SipParseErrors);
        metrics.add(Counter::RtpPacketsRelayed, 500);
        metrics.add_gauge(Gauge::CallsActive, 3);
        metrics.add_gauge(Gauge::CallsActive, -1);
        metrics.count_call(CallResult::Answered);
        metrics.count_call(CallResult::Cancelled);
        let text = metrics.render();
        assert!(text.contains("hotline_sip_parse_errors_total 1\n"));
        assert!(text.contains("hotline_rtp_packets_relayed_total 500\n"));
        assert!(text.contains("hotline_calls_active 2\n"));
        assert!(text.contains("hotline_calls_total{result=\"answered\"} 1\n"));
        assert!(text.contains("hotline_calls_total{result=\"rejected\"} 0\n"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (name, value) = line.rsplit_once(' ').unwrap_or_default();
            assert!(
                !name.is_empty() && value.parse::<f64>().is_ok(),
                "bad line {line:?}"
            );
        }
        // Each enum variant has its own row.
        let names: std::collections::HashSet<&str> = COUNTERS.iter().map(|(_, n, _)| *n).collect();
        assert_eq!(names.len(), COUNTERS.len());
        assert_eq!(metrics.counter(Counter::RtpPacketsRelayed), 500);
        assert!(!text.contains("hotline_peer_up"), "no probed peer: no rows");
    }

    #[test]
    fn registering_peers_have_a_gauge_and_counters_each() {
        let metrics = Metrics::new();
        assert!(!metrics.render().contains("hotline_peer_registered"));
        metrics.set_peer_registered("carrier", false, None);
        metrics.set_peer_registered("carrier", false, Some(false));
        metrics.set_peer_registered("carrier", true, Some(true));
        metrics.set_peer_registered("ims", false, Some(false));
        let text = metrics.render();
        for row in [
            "# TYPE hotline_peer_registered gauge\n",
            "hotline_peer_registered{peer=\"carrier\"} 1\n",
            "hotline_peer_registered{peer=\"ims\"} 0\n",
            "# TYPE hotline_peer_registrations_total counter\n",
            "hotline_peer_registrations_total{peer=\"carrier\",result=\"ok\"} 1\n",
            "hotline_peer_registrations_total{peer=\"carrier\",result=\"failed\"} 1\n",
            "hotline_peer_registrations_total{peer=\"ims\",result=\"ok\"} 0\n",
        ] {
            assert!(text.contains(row), "{row} not in {text}");
        }
    }

    #[test]
    fn probed_peers_have_a_labelled_row_each() {
        let metrics = Metrics::new();
        metrics.set_peer_up("police-a", true);
        metrics.set_peer_up("police-b", true);
        metrics.set_peer_up("police-a", false);
        metrics.set_peer_up("odd\"name", true);
        let text = metrics.render();
        assert!(text.contains("# TYPE hotline_peer_up gauge\n"), "{text}");
        assert!(
            text.contains("hotline_peer_up{peer=\"police-a\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains("hotline_peer_up{peer=\"police-b\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("hotline_peer_up{peer=\"odd\\\"name\"} 1\n"),
            "{text}"
        );
    }
}
