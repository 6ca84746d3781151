//! The gateway's counters and gauges: each one's Prometheus name and help text.

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
    /// New calls refused (503) because only the reserved platforms' calls or ports were left.
    CallsRefusedReserve,
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
    /// Answered calls whose recording began.
    RecordingsStarted,
    /// Answered calls not recorded although recording is on: the disk budget was reached or
    /// the file could not be made.
    RecordingsRefused,
    /// 20 ms frames left out of recordings (silence in their place): the writer's queue was
    /// full, or they came after the writer had moved on.
    RecordingFramesDropped,
    RecordingBytesWritten,
    /// Recordings (WAV and JSON pair) deleted after `retention_days`.
    RecordingsDeleted,
    /// Writes to recordings that failed (the recording is closed where it stands).
    RecordingWriteErrors,
    /// Calls queued: every desk of their route turned the caller away (`queue_secs`).
    QueueCalls,
    /// Queued calls a desk (or an overflow peer) answered.
    QueueAnswered,
    /// Offers of queued calls to their desks again (a desk freed a seat, or the retry).
    QueueOffers,
    /// Queued calls that went to the overflow peers at the end of the wait.
    QueueOverflows,
    /// Queued callers who hung up while waiting.
    QueueAbandons,
    /// Queued calls the gateway hung up (the wait over, no overflow, or the overflow failed).
    QueueGaveUp,
    /// The waits of queued calls as each ended (answered, overflowed, abandoned, given up).
    QueueWaitMilliseconds,
    /// SIPREC recording sessions a recording server answered (`[recording] siprec`).
    SiprecSessions,
    /// SIPREC sessions that failed: refused or unanswered INVITEs, dialogs lost, answers with
    /// no stream to send (the calls went on).
    SiprecFailures,
    /// Copies of SIP messages sent to the HEP collector (`[hep]`).
    HepSent,
    /// Copies of SIP messages the HEP collector did not get (queue full, send failed).
    HepDropped,
    /// Call detail records appended to `[cdr]`'s daily files.
    CdrWritten,
    /// Call detail records not appended (queue full, write failed; the store has them).
    CdrLost,
}

pub(super) const COUNTERS: [(Counter, &str, &str); 75] = [
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
        Counter::CallsRefusedReserve,
        "hotline_calls_refused_reserve_total",
        "new calls refused (503) because only the calls and media ports reserved for a platform ([[platform]] reserved_calls) were left",
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
    (
        Counter::RecordingsStarted,
        "hotline_recording_started_total",
        "answered calls whose recording began",
    ),
    (
        Counter::RecordingsRefused,
        "hotline_recording_refused_total",
        "answered calls not recorded although recording is on: disk budget reached (max_disk_mb, min_free_mb) or the file could not be made",
    ),
    (
        Counter::RecordingFramesDropped,
        "hotline_recording_frames_dropped_total",
        "20 ms frames left out of recordings as silence: the writer's queue was full or they came too late",
    ),
    (
        Counter::RecordingBytesWritten,
        "hotline_recording_bytes_written_total",
        "bytes written to recording files (WAV)",
    ),
    (
        Counter::RecordingsDeleted,
        "hotline_recording_deleted_total",
        "recordings deleted after recording.retention_days",
    ),
    (
        Counter::RecordingWriteErrors,
        "hotline_recording_write_errors_total",
        "writes to recording files that failed (the recording is closed where it stands)",
    ),
    (
        Counter::QueueCalls,
        "hotline_queue_calls_total",
        "calls queued: every desk of their route turned the caller away (route queue_secs)",
    ),
    (
        Counter::QueueAnswered,
        "hotline_queue_answered_total",
        "queued calls a desk or an overflow peer answered",
    ),
    (
        Counter::QueueOffers,
        "hotline_queue_offers_total",
        "offers of queued calls to their route's desks again (a desk freed a seat, or queue_retry_secs passed)",
    ),
    (
        Counter::QueueOverflows,
        "hotline_queue_overflows_total",
        "queued calls sent to the route's overflow peers: the wait over, or the line full (queue_max)",
    ),
    (
        Counter::QueueAbandons,
        "hotline_queue_abandons_total",
        "queued callers who hung up while waiting",
    ),
    (
        Counter::QueueGaveUp,
        "hotline_queue_gave_up_total",
        "queued calls the gateway hung up: the wait over with no overflow, or the overflow failed",
    ),
    (
        Counter::QueueWaitMilliseconds,
        "hotline_queue_wait_milliseconds_total",
        "the waits of queued calls, summed as each ended (divide by the answered, overflowed, abandoned and given-up counts)",
    ),
    (
        Counter::SiprecSessions,
        "hotline_recording_siprec_sessions_total",
        "SIPREC recording sessions the recording server (recording.siprec) answered",
    ),
    (
        Counter::SiprecFailures,
        "hotline_recording_siprec_failures_total",
        "SIPREC recording sessions refused, unanswered or lost (the calls went on)",
    ),
    (
        Counter::HepSent,
        "hotline_hep_sent_total",
        "copies of SIP messages sent to the HEP collector ([hep])",
    ),
    (
        Counter::HepDropped,
        "hotline_hep_dropped_total",
        "copies of SIP messages the HEP collector did not get (queue full or send failed; the messages themselves went)",
    ),
    (
        Counter::CdrWritten,
        "hotline_cdr_written_total",
        "call detail records appended to the [cdr] files",
    ),
    (
        Counter::CdrLost,
        "hotline_cdr_lost_total",
        "call detail records not appended to the [cdr] files (queue full or write failed; the store has them)",
    ),
];

/// Gauges (values that go up and down).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gauge {
    CallsActive,
    /// Calls to or from a reserved platform in progress.
    ReservedCallsActive,
    /// Calls waiting in a route's queue now.
    QueueWaiting,
    /// The calls the platforms keep (`reserved_calls`, together).
    ReservedCalls,
    TransactionsActive,
    MediaPortsInUse,
    ConferencesActive,
    WorkOrderClients,
    /// 1 while the store cannot write (disk full, read-only): the alert to page on.
    StoreDegraded,
    StoreHeldRecords,
    RecordingsActive,
    RecordingDiskBytes,
    /// 1 while new calls are not recorded: the disk budget is reached.
    RecordingFull,
}

pub(super) const GAUGES: [(Gauge, &str, &str); 13] = [
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
        Gauge::QueueWaiting,
        "hotline_queue_waiting",
        "calls waiting in a route's queue now (an overflowed call until a remote seat answers)",
    ),
    (
        Gauge::ReservedCallsActive,
        "hotline_reserve_calls_active",
        "calls to or from a platform with reserved_calls in progress",
    ),
    (
        Gauge::ReservedCalls,
        "hotline_reserve_calls",
        "the calls of sip.max_calls the platforms keep for themselves (reserved_calls together)",
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
    (
        Gauge::RecordingsActive,
        "hotline_recording_active",
        "calls being recorded now",
    ),
    (
        Gauge::RecordingDiskBytes,
        "hotline_recording_disk_bytes",
        "bytes the recordings directory holds (WAV and JSON)",
    ),
    (
        Gauge::RecordingFull,
        "hotline_recording_full",
        "1 while new calls are not recorded: recording.max_disk_mb or recording.min_free_mb reached",
    ),
];
